#!/bin/sh
# uninstall.sh [--prefix /opt/gleaner] [--root /] [--keep-data] [--force]
#
# Stops the monitor and the agent, then removes what install.sh listed in
# PREFIX/.gleaner-manifest (binaries, units, scripts) plus gleaner's own
# PREFIX/var and PREFIX/etc; nothing else. Refuses while tasks are unfinished
# unless --force, which kills them cleanly first (through the agent: SIGTERM,
# then SIGKILL after their grace; their supervisors remove cgroups and
# mounts). Removes nothing unless it has proved that no gleaner process is
# left (and refuses when it cannot tell). --keep-data keeps PREFIX/var
# (state, sandboxes, images) and PREFIX/etc.
set -eu

prefix=
root=
keep=no
force=no
while [ $# -gt 0 ]; do
    case "$1" in
        --prefix) prefix=${2:?--prefix needs a directory}; shift 2 ;;
        --prefix=*) prefix=${1#--prefix=}; shift ;;
        --root) root=${2:?--root needs a directory}; shift 2 ;;
        --root=*) root=${1#--root=}; shift ;;
        --keep-data) keep=yes; shift ;;
        --force) force=yes; shift ;;
        -h|--help) sed -n '2,11p' "$0"; exit 0 ;;
        *) echo "uninstall.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
    esac
done
die() { echo "uninstall.sh: $*" >&2; exit 1; }
[ "$(id -u)" = 0 ] || die "run as root"
[ -n "$root" ] && root=$(realpath -m -- "$root")
if [ -z "$prefix" ]; then
    here=$(cd "$(dirname "$0")" && pwd -P)
    prefix=${here#"$root"}
fi
# Resolved as install.sh did, so that it names what /proc/PID/exe shows.
if [ -n "$root" ]; then prefix=$(realpath -m -s -- "$prefix"); else prefix=$(realpath -m -- "$prefix"); fi
case "$prefix" in *[!A-Za-z0-9._/@+,:=-]*) die "prefix $prefix: only letters, digits and ._/@+,:=- (install.sh refuses others)" ;; esac
dest=$root$prefix
marker=$dest/.gleaner-prefix
manifest=$dest/.gleaner-manifest
[ -x "$dest/bin/gleaner-agent" ] || die "no gleaner installed in $dest"
[ -f "$marker" ] && [ -f "$manifest" ] || die "$dest has no .gleaner-prefix and .gleaner-manifest (installed by an older install.sh?): not removing anything; run this version's install.sh --no-start over it first"
[ -r /proc/self/exe ] || die "/proc is not readable: cannot tell whether gleaner processes are alive; not removing anything"
init=$(cat "$dest/var/init-system" 2>/dev/null || echo none)
cli="$dest/bin/gleaner --config $dest/etc/agent.toml"

service() { # name action
    case "$init" in
        systemd) [ -n "$root" ] || systemctl "$2" "$1.service" 2>/dev/null || true ;;
        sysv|none) "$dest/init.d/$1" "$2" >/dev/null 2>&1 || true ;;
    esac
}

# The agent answers for its tasks; if it is down, a temporary one started
# from this tree re-adopts them first (it refuses to start beside a live
# agent that does not answer: then nothing is removed).
temp=
stop_temp() {
    if [ -n "$temp" ]; then
        kill -TERM "$temp" 2>/dev/null || true
        wait "$temp" 2>/dev/null || true
        temp=
    fi
}
if ! $cli wait-healthy --timeout 0 >/dev/null 2>&1; then
    mkdir -p "$dest/var/log"
    "$dest/bin/gleaner-agent" --config "$dest/etc/agent.toml" >>"$dest/var/log/gleaner-agent.uninstall.log" 2>&1 &
    temp=$!
    $cli wait-healthy --timeout 30 >/dev/null 2>&1 || { stop_temp; die "cannot start the agent to check for tasks (see $dest/var/log/gleaner-agent.uninstall.log); not removing anything"; }
fi
# A failing `gleaner ps` is not "no tasks".
unfinished_tasks() { $cli ps --unfinished --quiet; }
list=$(unfinished_tasks) || { stop_temp; die "cannot list the agent's tasks; not removing anything"; }
count=$(printf '%s\n' "$list" | grep -c . || true)
if [ "$count" -gt 0 ]; then
    if [ "$force" != yes ]; then
        stop_temp
        die "$count task(s) unfinished; stop them or use --force"
    fi
    for id in $list; do $cli kill "$id" >/dev/null 2>&1 || true; done
    # Each ends after its grace at most; the agent says when.
    i=0
    while :; do
        list=$(unfinished_tasks) || { stop_temp; die "cannot list the agent's tasks after killing them; not removing anything"; }
        [ -z "$list" ] && break
        [ $i -ge 3000 ] && { stop_temp; die "tasks still unfinished after 300 s: $(echo $list); not removing anything"; }
        sleep 0.1
        i=$((i + 1))
    done
fi

service gleaner-scheduler stop
service gleaner-monitor stop
service gleaner-agent stop
stop_temp

# Proof that nothing of this tree runs: no process whose executable is in
# PREFIX/bin (agent, zygote, supervisors, monitor; "(deleted)" after an
# upgrade). Supervisors finish their clean-up just after their task.
alive() {
    for p in /proc/[0-9]*; do
        case "$(readlink "$p/exe" 2>/dev/null)" in "$dest"/bin/*) echo "${p#/proc/}" ;; esac
    done
}
i=0
while [ -n "$(alive)" ]; do
    [ $i -ge 300 ] && die "gleaner processes still alive after 30 s (pids $(echo $(alive))); not removing anything"
    sleep 0.1
    i=$((i + 1))
done
# The agent's own mounts (its tasks folder, a nosuid,nodev bind of itself;
# run/netns and the group namespaces in it) go once nothing runs; anything else mounted under the prefix (an
# operator's disk for images, a bind of another folder: rm would go through
# it) stops us. Mount points compared as fields, not patterns.
under_prefix() { awk -v d="$dest/" 'index($5, d) == 1 { print $5 }' /proc/self/mountinfo; }
data=$(sed -n 's/^[[:space:]]*data_dir[[:space:]]*=[[:space:]]*"\(.*\)".*/\1/p' "$dest/etc/agent.toml" 2>/dev/null | tail -n 1)
tasks=$root${data:-$prefix/var/lib}/tasks
i=0
while [ $i -lt 5 ] && awk -v t="$tasks" '$5 == t { f = 1 } END { exit !f }' /proc/self/mountinfo; do
    umount "$tasks" 2>/dev/null || true
    i=$((i + 1))
done
# The agent's group network namespaces: each held by a bind mount at
# run/netns/<group>, the folder a private bind of itself. Only those exact
# mount points, deepest first (a crash can leave a namespace held).
netns=$root${data:-$prefix/var/lib}/run/netns
i=0
while [ $i -lt 5 ] && awk -v n="$netns" '$5 == n || (index($5, n "/") == 1 && index(substr($5, length(n) + 2), "/") == 0) { f = 1 } END { exit !f }' /proc/self/mountinfo; do
    awk -v n="$netns" '$5 == n || (index($5, n "/") == 1 && index(substr($5, length(n) + 2), "/") == 0) { print $5 }' /proc/self/mountinfo |
        sort -r | while read -r m; do umount "$m" 2>/dev/null || true; done
    i=$((i + 1))
done
if [ -n "$(under_prefix)" ]; then
    die "mounts left under $dest: $(under_prefix | tr '\n' ' '); not removing anything"
fi

# The agent leaves its (now empty) root and role cgroups for the next start.
croot=$(sed -n 's/^[[:space:]]*cgroup_root[[:space:]]*=[[:space:]]*"\(.*\)".*/\1/p' "$dest/etc/agent.toml" | tail -n 1)
croot=${croot:-gleaner}
for c in /sys/fs/cgroup/*/"$croot" /sys/fs/cgroup/"$croot"; do
    [ -d "$c" ] && find "$c" -depth -type d -exec rmdir {} + 2>/dev/null || true
done

# What the manifest lists. Files outside the prefix only when they are
# still this install's (they name the prefix, or link to its unit).
own_unit() {
    if [ -L "$1" ]; then
        case "$(readlink "$1")" in "$prefix"/*|/etc/systemd/system/gleaner-*.service) return 0 ;; esac
        return 1
    fi
    [ -f "$1" ] && grep -q "^# gleaner-prefix: $prefix\$" "$1"
}
while read -r e; do
    case "$e" in
        # Never out of the prefix or its units' folders, whatever it lists.
        ..|../*|*/../*|*/..) echo "uninstall.sh: skipping manifest entry $e (leads out of $prefix)" >&2 ;;
        */) ;;
        /*) if own_unit "$root$e"; then rm -f "$root$e"; fi ;;
        .gleaner-prefix|.gleaner-manifest) ;;
        *) if [ -L "$dest/$e" ] || [ ! -d "$dest/$e" ]; then rm -f "$dest/$e"; fi ;;
    esac
done <"$manifest"
# The scheduler is enabled by hand (packaging/README: a link to its unit or
# init script in the prefix): those links go too.
for l in "$root/etc/systemd/system/gleaner-scheduler.service" "$root/etc/systemd/system/multi-user.target.wants/gleaner-scheduler.service" "$root/etc/init.d/gleaner-scheduler"; do
    if [ -L "$l" ]; then case "$(readlink "$l")" in "$prefix"/*) rm -f "$l" ;; esac; fi
done
if [ "$init" = systemd ] && [ -z "$root" ]; then systemctl daemon-reload 2>/dev/null || true; fi

# The agent makes its tasks dir a nosuid,nodev bind mount: undo every mount
# under the prefix before removing files (deepest first).
awk -v d="$dest/" 'index($5, d) == 1 { print $5 }' /proc/self/mountinfo | sort -r |
    while read -r m; do umount -l "$m" 2>/dev/null || true; done

if [ "$keep" = yes ]; then
    kept=" (kept $prefix/var and $prefix/etc)"
else
    rm -rf --one-file-system "$dest/var" "$dest/etc"
    kept=
fi
# Folders last, deepest first, only when empty: an operator's file in one
# keeps it.
grep '/$' "$manifest" | grep -v -e '^\.\./' -e '/\.\./' | sort -r | while read -r d; do rmdir "$dest/$d" 2>/dev/null || true; done
if [ "$keep" != yes ]; then
    made=$(sed -n 's/^made-by-install=//p' "$marker")
    rm -f "$manifest" "$marker"
    if [ "$made" = yes ]; then
        rmdir "$dest" 2>/dev/null || kept=" (left $prefix: it holds files gleaner did not install: $(ls -A "$dest" | tr '\n' ' '))"
    fi
fi
echo "gleaner removed from $prefix$kept"
