#!/bin/sh
# install.sh [--prefix /opt/gleaner] [--root /] [--no-start] [--init systemd|sysv|none]
#
# Puts gleaner under PREFIX (resolved: symlinks and trailing slashes), creates
# the data dir there, copies the units into the init system's folder, and
# starts the agent then the monitor. Idempotent. Run from an unpacked tarball
# of a newer version over an installed one, it upgrades: config and state are
# kept, and the restarted agent re-adopts running tasks.
# Refuses /, system folders, and any existing non-empty folder that is not
# gleaner's (no PREFIX/.gleaner-prefix marker). Every file it writes is
# listed in PREFIX/.gleaner-manifest: uninstall.sh removes those only.
# --root installs into a directory standing for / (no start, for tests).
set -eu

prefix=/opt/gleaner
root=
start=yes
init=auto
while [ $# -gt 0 ]; do
    case "$1" in
        --prefix) prefix=${2:?--prefix needs a directory}; shift 2 ;;
        --prefix=*) prefix=${1#--prefix=}; shift ;;
        --root) root=${2:?--root needs a directory}; shift 2 ;;
        --root=*) root=${1#--root=}; shift ;;
        --no-start) start=no; shift ;;
        --init) init=${2:?--init needs systemd, sysv or none}; shift 2 ;;
        --init=*) init=${1#--init=}; shift ;;
        -h|--help) sed -n '2,13p' "$0"; exit 0 ;;
        *) echo "install.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
    esac
done
case "$prefix" in /*) ;; *) echo "install.sh: --prefix must be absolute, got $prefix" >&2; exit 2 ;; esac
[ "$(id -u)" = 0 ] || { echo "install.sh: run as root" >&2; exit 1; }
[ -n "$root" ] && start=no
command -v realpath >/dev/null 2>&1 || { echo "install.sh: needs realpath (coreutils)" >&2; exit 1; }

# The prefix as the kernel sees it: /opt/ and /opt/x/.. are /opt, and a
# symlinked prefix is its target (what /proc/PID/exe will show). Under
# --root, resolved inside the root.
if [ -n "$root" ]; then
    root=$(realpath -m -- "$root")
    prefix=$(realpath -m -s -- "$prefix")
else
    prefix=$(realpath -m -- "$prefix")
fi
# Spaces, newlines, quotes or globs in the prefix would be split or matched
# by the scripts, the init files and mountinfo (which escapes them).
case "$prefix" in *[!A-Za-z0-9._/@+,:=-]*)
    echo "install.sh: refusing prefix $prefix: only letters, digits and ._/@+,:=- are allowed" >&2; exit 2 ;; esac
case "$prefix" in
    /|/bin|/boot|/dev|/etc|/etc/*|/home|/lib|/lib32|/lib64|/libx32|/media|/mnt|/opt|/proc|/root|/run|/run/*|/sbin|/srv|/sys|/sys/*|/proc/*|/dev/*|/tmp|/usr|/usr/*|/var|/var/lib|/var/log|/var/tmp|/var/cache|/var/spool|/var/run|/var/opt|/var/local|/boot/*|/snap)
        echo "install.sh: refusing prefix $prefix: a system folder; give gleaner a folder of its own (e.g. /opt/gleaner)" >&2
        exit 2 ;;
esac

src=$(cd "$(dirname "$0")" && pwd -P)
dest=$root$prefix
marker=$dest/.gleaner-prefix
manifest=$dest/.gleaner-manifest
[ -x "$src/bin/gleaner-agent" ] || { echo "install.sh: $src is not an unpacked gleaner tarball" >&2; exit 1; }
if [ -e "$dest" ] && [ ! -d "$dest" ]; then
    echo "install.sh: refusing prefix $prefix: it exists and is not a folder" >&2
    exit 2
fi
if [ -d "$dest" ] && [ ! -f "$marker" ] && [ -n "$(ls -A "$dest")" ]; then
    # A tree of a version before the marker: the same layout, adopted.
    if [ -x "$dest/bin/gleaner-agent" ] && [ -f "$dest/VERSION" ] && [ -f "$dest/var/init-system" ]; then
        :
    else
        echo "install.sh: refusing prefix $prefix: it holds files that are not gleaner's (no $prefix/.gleaner-prefix); use an empty or new folder" >&2
        exit 2
    fi
fi

if [ "$init" = auto ]; then
    if [ -d /run/systemd/system ] && [ -z "$root" ]; then init=systemd
    elif [ -n "$root" ] && [ -d "$root/etc/systemd/system" ]; then init=systemd
    else init=sysv
    fi
fi
case "$init" in systemd|sysv|none) ;; *) echo "install.sh: --init must be systemd, sysv or none" >&2; exit 2 ;; esac

# A unit of the same name that is not ours (another install) is not replaced.
units=$root/etc/systemd/system
initd=$root/etc/init.d
ours() { # file: ours if absent, a link into the prefix, or a file naming it
    [ ! -e "$1" ] && [ ! -L "$1" ] && return 0
    if [ -L "$1" ]; then case "$(readlink "$1")" in "$prefix"/*) return 0 ;; esac; fi
    [ -f "$1" ] && grep -q "^# gleaner-prefix: $prefix\$" "$1" 2>/dev/null
}
for n in gleaner-agent gleaner-monitor; do
    case "$init" in
        systemd) f=$units/$n.service ;;
        sysv) f=$initd/$n ;;
        none) continue ;;
    esac
    ours "$f" || { echo "install.sh: $f exists and belongs to another gleaner (not $prefix); remove it first" >&2; exit 1; }
done

# The marker says whether the folder was made here: uninstall removes it
# then, and leaves it (a mount point, an operator's folder) otherwise.
if [ ! -f "$marker" ]; then
    made=no
    [ -e "$dest" ] || made=yes
    mkdir -p "$dest"
    printf 'gleaner install prefix: uninstall.sh removes what .gleaner-manifest lists, var/ and etc/\nmade-by-install=%s\n' "$made" >"$marker"
fi
# What this run writes, relative to the prefix (or absolute outside it).
written=$(mktemp)
trap 'rm -f "$written"' EXIT
put() { echo "$1" >>"$written"; }
put .gleaner-prefix
put .gleaner-manifest

for d in bin etc systemd init.d share var var/lib var/log var/run; do
    mkdir -p "$dest/$d"
    put "$d/"
done
chmod 755 "$dest"
if [ "$src" != "$dest" ]; then
    # New binaries land beside the old and are renamed over them: a running
    # old agent keeps its file, the restart picks up the new one.
    for b in "$src"/bin/*; do
        n=$(basename "$b")
        cp "$b" "$dest/bin/.$n.new" && mv -f "$dest/bin/.$n.new" "$dest/bin/$n"
    done
    for f in "$src"/share/*; do cp "$f" "$dest/share/"; done
    for f in install.sh uninstall.sh demo.sh README VERSION; do
        cp "$src/$f" "$dest/.$f.new" && mv -f "$dest/.$f.new" "$dest/$f"
    done
fi
for b in "$src"/bin/*; do put "bin/$(basename "$b")"; done
for f in "$src"/share/*; do put "share/$(basename "$f")"; done
for f in install.sh uninstall.sh demo.sh README VERSION; do put "$f"; done

render() { # template output [name]
    sed -e "s|@PREFIX@|$prefix|g" -e "s|@NAME@|${3:-}|g" "$1" >"$2.tmp" && mv "$2.tmp" "$2"
}
# Config: the first install writes it (the tarball's copy is for
# /opt/gleaner; an unedited one is written again for this prefix), upgrades
# keep the operator's.
for c in agent monitor scheduler; do
    [ -f "$dest/share/$c.toml.in" ] || continue
    if [ ! -f "$dest/etc/$c.toml" ] || cmp -s "$dest/etc/$c.toml" "$dest/share/$c.toml.pristine"; then
        render "$dest/share/$c.toml.in" "$dest/etc/$c.toml"
    fi
done
# The scheduler runs on a few hosts only: its unit and init script are
# rendered, not enabled (systemctl enable --now $prefix/systemd/gleaner-scheduler.service).
# DelegateSubgroup= (systemd 254+) is an unknown key to older systemd, whose
# `systemd-analyze verify` rejects the unit: leave it out there.
sd_version=$(systemctl --version 2>/dev/null | awk 'NR == 1 { print $2 + 0 }')
for n in gleaner-agent gleaner-monitor gleaner-scheduler; do
    [ -f "$dest/share/$n.service.in" ] || continue
    render "$dest/share/$n.service.in" "$dest/systemd/$n.service"
    if [ "${sd_version:-0}" -lt 254 ]; then
        sed -i '/^DelegateSubgroup=/d' "$dest/systemd/$n.service"
    fi
    render "$dest/share/gleaner.init.in" "$dest/init.d/$n" "$n"
    chmod 755 "$dest/init.d/$n"
    put "systemd/$n.service"
    put "init.d/$n"
done

# Copies, not links: on a prefix of its own mount, the init system reads its
# folder before that mount is there. The first line names the prefix, so
# that uninstall and a later install know the file is this install's.
stamp() { # src dest
    { head -n 1 "$1"; echo "# gleaner-prefix: $prefix"; tail -n +2 "$1"; } >"$2.tmp" && mv -f "$2.tmp" "$2"
}
case "$init" in
    systemd)
        mkdir -p "$units/multi-user.target.wants"
        for n in gleaner-agent gleaner-monitor; do
            rm -f "$units/$n.service"
            { echo "# gleaner-prefix: $prefix"; cat "$dest/systemd/$n.service"; } >"$units/.$n.service.tmp"
            mv -f "$units/.$n.service.tmp" "$units/$n.service"
            ln -sfn "/etc/systemd/system/$n.service" "$units/multi-user.target.wants/$n.service"
            put "/etc/systemd/system/$n.service"
            put "/etc/systemd/system/multi-user.target.wants/$n.service"
        done
        [ "$start" = yes ] && systemctl daemon-reload
        ;;
    sysv)
        mkdir -p "$initd"
        for n in gleaner-agent gleaner-monitor; do
            rm -f "$initd/$n"
            stamp "$dest/init.d/$n" "$initd/$n"
            chmod 755 "$initd/$n"
            put "/etc/init.d/$n"
        done
        ;;
esac
echo "$init" >"$dest/var/init-system"

# The manifest: this run's list joined with earlier ones (an upgrade keeps
# what an older version installed listed, for uninstall).
{ [ -f "$manifest" ] && cat "$manifest"; cat "$written"; } | sort -u >"$manifest.tmp"
mv -f "$manifest.tmp" "$manifest"

if [ "$start" = yes ]; then
    t0=$(date +%s.%N)
    for n in gleaner-agent gleaner-monitor; do
        case "$init" in
            systemd) systemctl restart "$n.service" ;;
            sysv) "/etc/init.d/$n" restart ;;
            none) ;;
        esac
        if [ "$n" = gleaner-agent ] && [ "$init" != none ]; then
            if ! "$dest/bin/gleaner" --config "$dest/etc/agent.toml" wait-healthy --timeout 30 >/dev/null; then
                echo "install.sh: the agent did not become healthy; see $dest/var/log/gleaner-agent.log or journalctl -u gleaner-agent" >&2
                exit 1
            fi
            t1=$(date +%s.%N)
            echo "gleaner-agent healthy $(echo "$t1 - $t0" | awk '{printf "%.2f", $1 - $3}') s after the start"
        fi
    done
fi
echo "gleaner $(cat "$dest/VERSION") installed in $prefix (init: $init)"
echo "API: as root, $dest/bin/gleaner --config $dest/etc/agent.toml (Unix socket); over TCP, the bearer token in $dest/var/lib/api.token"
