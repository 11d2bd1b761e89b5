#!/bin/sh
# install.sh [--prefix /opt/gleaner] [--root /] [--no-start] [--init systemd|sysv|none]
#
# Puts gleaner under PREFIX (nothing else is written but the init system's
# links to the units inside it), creates the data dir there, links the
# units, and starts the agent then the monitor. Idempotent. Run from an
# unpacked tarball of a newer version over an installed one, it upgrades:
# config and state are kept, and the restarted agent re-adopts running tasks.
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
        -h|--help) sed -n '2,10p' "$0"; exit 0 ;;
        *) echo "install.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
    esac
done
case "$prefix" in /*) ;; *) echo "install.sh: --prefix must be absolute, got $prefix" >&2; exit 2 ;; esac
case "$prefix" in /|/usr|/usr/local|/etc|/var|/opt) echo "install.sh: refusing prefix $prefix: give gleaner a folder of its own" >&2; exit 2 ;; esac
[ "$(id -u)" = 0 ] || { echo "install.sh: run as root" >&2; exit 1; }
[ -n "$root" ] && start=no

src=$(cd "$(dirname "$0")" && pwd)
dest=$root$prefix
[ -x "$src/bin/gleaner-agent" ] || { echo "install.sh: $src is not an unpacked gleaner tarball" >&2; exit 1; }

if [ "$init" = auto ]; then
    if [ -d /run/systemd/system ] && [ -z "$root" ]; then init=systemd
    elif [ -n "$root" ] && [ -d "$root/etc/systemd/system" ]; then init=systemd
    elif command -v systemctl >/dev/null 2>&1 && [ -d /run/systemd/system ]; then init=systemd
    else init=sysv
    fi
fi
case "$init" in systemd|sysv|none) ;; *) echo "install.sh: --init must be systemd, sysv or none" >&2; exit 2 ;; esac

render() { # template output
    sed -e "s|@PREFIX@|$prefix|g" -e "s|@NAME@|${3:-}|g" "$1" >"$2.tmp" && mv "$2.tmp" "$2"
}

mkdir -p "$dest/bin" "$dest/etc" "$dest/systemd" "$dest/init.d" "$dest/share" "$dest/var/lib" "$dest/var/log" "$dest/var/run"
chmod 755 "$dest"
if [ "$src" != "$dest" ]; then
    # New binaries land beside the old and are renamed over them: a running
    # old agent keeps its file, the restart picks up the new one.
    for b in "$src"/bin/*; do
        cp "$b" "$dest/bin/.$(basename "$b").new" && mv -f "$dest/bin/.$(basename "$b").new" "$dest/bin/$(basename "$b")"
    done
    cp "$src"/share/* "$dest/share/"
    for f in install.sh uninstall.sh demo.sh README VERSION; do
        cp "$src/$f" "$dest/.$f.new" && mv -f "$dest/.$f.new" "$dest/$f"
    done
fi
# Config: the first install writes it (the tarball's copy is for
# /opt/gleaner; an unedited one is written again for this prefix), upgrades
# keep the operator's.
for c in agent monitor scheduler; do
    [ -f "$dest/share/$c.toml.in" ] || continue
    if [ ! -f "$dest/etc/$c.toml" ] || cmp -s "$dest/etc/$c.toml" "$dest/share/$c.toml.pristine"; then
        render "$dest/share/$c.toml.in" "$dest/etc/$c.toml"
    fi
done
render "$dest/share/gleaner-agent.service.in" "$dest/systemd/gleaner-agent.service"
render "$dest/share/gleaner-monitor.service.in" "$dest/systemd/gleaner-monitor.service"
# The scheduler runs on a few hosts only: its unit and init script are
# rendered, not enabled (systemctl enable --now $prefix/systemd/gleaner-scheduler.service).
if [ -f "$dest/share/gleaner-scheduler.service.in" ]; then
    render "$dest/share/gleaner-scheduler.service.in" "$dest/systemd/gleaner-scheduler.service"
    render "$dest/share/gleaner.init.in" "$dest/init.d/gleaner-scheduler" gleaner-scheduler
    chmod 755 "$dest/init.d/gleaner-scheduler"
fi
for n in gleaner-agent gleaner-monitor; do
    render "$dest/share/gleaner.init.in" "$dest/init.d/$n" "$n"
    chmod 755 "$dest/init.d/$n"
done

case "$init" in
    systemd)
        units=$root/etc/systemd/system
        mkdir -p "$units/multi-user.target.wants"
        for n in gleaner-agent gleaner-monitor; do
            ln -sfn "$prefix/systemd/$n.service" "$units/$n.service"
            ln -sfn "$prefix/systemd/$n.service" "$units/multi-user.target.wants/$n.service"
        done
        [ "$start" = yes ] && systemctl daemon-reload
        ;;
    sysv)
        mkdir -p "$root/etc/init.d"
        for n in gleaner-agent gleaner-monitor; do
            ln -sfn "$prefix/init.d/$n" "$root/etc/init.d/$n"
        done
        ;;
esac
echo "$init" >"$dest/var/init-system"

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
