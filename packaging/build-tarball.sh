#!/usr/bin/env bash
# packaging/build-tarball.sh [--bins DIR] [--out FILE]: fully static,
# stripped release binaries and dist/gleaner-<version>-x86_64-linux.tar.gz
# with one top folder gleaner/. --bins packs the binaries found in DIR
# instead of building (e.g. target/debug: not static, for trying the
# scripts quickly).
set -euo pipefail
bins=
out=
while [ $# -gt 0 ]; do
    case "$1" in
        --bins) bins=$(readlink -f "$2"); shift 2 ;;
        --out) out=$(readlink -m "$2"); shift 2 ;;
        *) echo "build-tarball.sh: unknown argument $1" >&2; exit 2 ;;
    esac
done
cd "$(dirname "$0")/.."
version=$(sed -n '/^\[workspace.package\]/,/^\[/s/^version = "\(.*\)"/\1/p' Cargo.toml)
target=x86_64-unknown-linux-gnu
if [ -z "$bins" ]; then
    # crt-static + a non-PIE relocation model: no interpreter and no dynamic
    # section at all (static-pie would keep one for self-relocation). The dist
    # profile is release with whole-program LTO, for size.
    RUSTFLAGS="-C target-feature=+crt-static -C relocation-model=static" \
        cargo build --profile dist --target "$target" --workspace --bins -q
    bins=target/$target/dist
fi

stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
top=$stage/gleaner
mkdir -p "$top"/{bin,etc,systemd,init.d,share}
for b in gleaner-agent gleaner-monitor gleaner-scheduler gleaner-rootfs gleaner; do
    install -m 755 "$bins/$b" "$top/bin/$b"
done
# Templates for any prefix (install.sh renders them), and the files
# rendered for the default prefix so the tree reads as installed.
cp packaging/etc/agent.toml.in packaging/etc/monitor.toml.in packaging/etc/scheduler.toml.in "$top/share/"
cp systemd/gleaner-agent.service.in systemd/gleaner-monitor.service.in systemd/gleaner-scheduler.service.in "$top/share/"
cp packaging/init.d/gleaner.in "$top/share/gleaner.init.in"
render() { sed -e "s|@PREFIX@|/opt/gleaner|g" -e "s|@NAME@|${3:-}|g" "$1" >"$2"; }
for c in agent monitor scheduler; do
    render "packaging/etc/$c.toml.in" "$top/etc/$c.toml"
    cp "$top/etc/$c.toml" "$top/share/$c.toml.pristine"
done
for n in gleaner-agent gleaner-monitor gleaner-scheduler; do
    render "systemd/$n.service.in" "$top/systemd/$n.service"
    render packaging/init.d/gleaner.in "$top/init.d/$n" "$n"
    chmod 755 "$top/init.d/$n"
done
install -m 755 packaging/install.sh packaging/uninstall.sh packaging/demo.sh "$top/"
cp packaging/README "$top/README"
echo "$version" >"$top/VERSION"

mkdir -p dist
out=${out:-dist/gleaner-$version-x86_64-linux.tar.gz}
tar --sort=name --owner=0 --group=0 --numeric-owner --mtime=@0 -C "$stage" -cf - gleaner | gzip -9n >"$out"
echo "$out"
