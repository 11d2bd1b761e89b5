#!/bin/sh
# uninstall.sh [--prefix /opt/gleaner] [--root /] [--keep-data] [--force]
#
# Stops the monitor and the agent, removes the init system's links and the
# prefix. Refuses while tasks are unfinished unless --force, which kills them
# cleanly first (through the agent: SIGTERM, then SIGKILL after their grace;
# their supervisors remove cgroups and mounts). --keep-data keeps
# PREFIX/var (state, sandboxes, images) and PREFIX/etc.
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
        -h|--help) sed -n '2,9p' "$0"; exit 0 ;;
        *) echo "uninstall.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
    esac
done
if [ -z "$prefix" ]; then
    here=$(cd "$(dirname "$0")" && pwd)
    prefix=${here#"$root"}
fi
dest=$root$prefix
[ -x "$dest/bin/gleaner-agent" ] || { echo "uninstall.sh: no gleaner installed in $dest" >&2; exit 1; }
[ "$(id -u)" = 0 ] || { echo "uninstall.sh: run as root" >&2; exit 1; }
init=$(cat "$dest/var/init-system" 2>/dev/null || echo none)
cli="$dest/bin/gleaner --config $dest/etc/agent.toml"

service() { # name action
    case "$init" in
        systemd) [ -n "$root" ] || systemctl "$2" "$1.service" 2>/dev/null || true ;;
        sysv|none) "$dest/init.d/$1" "$2" >/dev/null 2>&1 || true ;;
    esac
}

# The agent answers for its tasks; if it is down, a temporary one started
# from this tree re-adopts them first.
temp=
if ! $cli wait-healthy --timeout 0 >/dev/null 2>&1; then
    mkdir -p "$dest/var/log"
    "$dest/bin/gleaner-agent" --config "$dest/etc/agent.toml" >>"$dest/var/log/gleaner-agent.uninstall.log" 2>&1 &
    temp=$!
    $cli wait-healthy --timeout 30 >/dev/null || { echo "uninstall.sh: cannot start the agent to check for tasks" >&2; kill "$temp"; exit 1; }
fi
unfinished=$($cli ps --unfinished --quiet | wc -l)
if [ "$unfinished" -gt 0 ]; then
    if [ "$force" != yes ]; then
        echo "uninstall.sh: $unfinished task(s) unfinished; stop them or use --force" >&2
        [ -n "$temp" ] && kill -TERM "$temp"
        exit 1
    fi
    $cli ps --unfinished --quiet | while read -r id; do $cli kill "$id" >/dev/null || true; done
fi

service gleaner-scheduler stop
service gleaner-monitor stop
service gleaner-agent stop
if [ -n "$temp" ]; then kill -TERM "$temp" 2>/dev/null || true; wait "$temp" 2>/dev/null || true; fi

# Supervisors finish their clean-up (cgroup removal) just after their task.
i=0
while [ $i -lt 100 ]; do
    busy=no
    for p in /proc/[0-9]*; do
        case "$(readlink "$p/exe" 2>/dev/null)" in "$dest"/bin/*) busy=yes; break ;; esac
    done
    [ "$busy" = no ] && break
    sleep 0.1
    i=$((i + 1))
done

# The agent leaves its (now empty) root and role cgroups for the next start.
croot=$(sed -n 's/^[[:space:]]*cgroup_root[[:space:]]*=[[:space:]]*"\(.*\)".*/\1/p' "$dest/etc/agent.toml" | tail -n 1)
croot=${croot:-gleaner}
for c in /sys/fs/cgroup/*/"$croot" /sys/fs/cgroup/"$croot"; do
    [ -d "$c" ] && find "$c" -depth -type d -exec rmdir {} + 2>/dev/null || true
done

for n in gleaner-agent gleaner-monitor gleaner-scheduler; do
    for l in "$root/etc/systemd/system/$n.service" "$root/etc/systemd/system/multi-user.target.wants/$n.service" "$root/etc/init.d/$n"; do
        if [ -L "$l" ] && case "$(readlink "$l")" in "$prefix"/*) true ;; *) false ;; esac; then rm -f "$l"; fi
    done
done
[ "$init" = systemd ] && [ -z "$root" ] && systemctl daemon-reload 2>/dev/null || true

# The agent makes its tasks dir a nosuid,nodev bind mount: undo every mount
# under the prefix before removing files (deepest first).
awk -v d="$dest/" 'index($5, d) == 1 { print $5 }' /proc/self/mountinfo | sort -r |
    while read -r m; do umount -l "$m" 2>/dev/null || true; done

if [ "$keep" = yes ]; then
    find "$dest" -mindepth 1 -maxdepth 1 ! -name var ! -name etc -exec rm -rf {} +
    echo "gleaner removed from $prefix (kept $prefix/var and $prefix/etc)"
else
    rm -rf "$dest"
    echo "gleaner removed from $prefix"
fi
