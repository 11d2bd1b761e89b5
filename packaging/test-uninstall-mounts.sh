#!/bin/sh
# packaging/test-uninstall-mounts.sh: uninstall.sh and the mounts under a
# prefix, without a tarball (stub binaries, --root, --init none), in a
# private mount namespace. An operator's mount under PREFIX/var (a disk
# for images, a bind of another folder) makes uninstall refuse and stays
# mounted with its files; only the agent's own tasks bind is unmounted;
# a prefix with a space or a newline is refused; a
# manifest entry leading out of the prefix removes nothing. Root.
set -eu
if [ "${GLEANER_IN_NS:-}" != 1 ]; then
    exec env GLEANER_IN_NS=1 unshare --mount --propagation private sh "$0" "$@"
fi
here=$(cd "$(dirname "$0")" && pwd -P)
fail() { echo "FAIL: $*"; exit 1; }
ok() { echo "ok: $*"; }
work=$(mktemp -d /tmp/gleaner-uninstall-test.XXXXXX)
# One file system for everything (a bind mount of it has the same device:
# rm --one-file-system would cross it).
mount -t tmpfs gleaner-test "$work"
trap 'umount -R "$work" 2>/dev/null; rmdir "$work"' EXIT
src=$work/src
mkdir -p "$src/bin" "$src/share"
printf '#!/bin/sh\nexit 0\n' >"$src/bin/gleaner-agent"
# The CLI: healthy, no tasks.
printf '#!/bin/sh\nexit 0\n' >"$src/bin/gleaner"
chmod 755 "$src/bin/gleaner-agent" "$src/bin/gleaner"
echo x >"$src/share/readme.txt"
cp "$here/install.sh" "$here/uninstall.sh" "$src/"
echo '#!/bin/sh' >"$src/demo.sh"
echo readme >"$src/README"
echo 0.0.0-test >"$src/VERSION"
chmod 755 "$src"/*.sh

root=$work/root
mkdir -p "$root/opt"
install() { # prefix
    sh "$src/install.sh" --root "$root" --prefix "$1" --init none >"$work/install.log" 2>&1 || { cat "$work/install.log"; fail "install $1"; }
    printf 'cgroup_root = "gleaner-uninstall-test-%s"\n' "$$" >"$root$1/etc/agent.toml"
}
uninstall() { # prefix
    sh "$root$1/uninstall.sh" --root "$root" --prefix "$1" >"$work/uninstall.log" 2>&1
}
mounted() { awk '{print $5}' /proc/self/mountinfo | grep -c "^$1\$" || true; }

# Refused (nothing written): a prefix with a space or a newline, which
# mountinfo escapes and the scripts would split.
for p in "/opt/my gleaner" "/opt/a
b"; do
    if sh "$src/install.sh" --root "$root" --prefix "$p" --init none >"$work/install.log" 2>&1; then
        fail "install.sh --prefix '$p' was accepted"
    fi
    grep -q "refusing prefix" "$work/install.log" || { cat "$work/install.log"; fail "'$p': no reason"; }
done
[ -z "$(ls -A "$root/opt")" ] || fail "a refused install wrote $(ls -A "$root/opt")"
ok "prefixes with a space or a newline refused"

for p in /opt/gleaner; do
    install "$p"
    dest=$root$p
    esc=$(printf '%s' "$dest" | sed 's/ /\\040/g')
    # An operator's disk for images, standing in: a bind of another folder
    # of the same file system.
    mkdir -p "$work/disk" "$dest/var/lib/images" "$dest/var/lib/tasks"
    echo precious >"$work/disk/keep.txt"
    mount --bind "$work/disk" "$dest/var/lib/images"
    # The agent's own: the tasks dir bound onto itself, and run/netns (a
    # private bind of itself) holding a group's network namespace.
    mount --bind "$dest/var/lib/tasks" "$dest/var/lib/tasks"
    mkdir -p "$dest/var/lib/run/netns"
    mount --bind "$dest/var/lib/run/netns" "$dest/var/lib/run/netns"
    mount --make-private "$dest/var/lib/run/netns"
    touch "$dest/var/lib/run/netns/g1"
    mount --bind /proc/self/ns/net "$dest/var/lib/run/netns/g1"
    if uninstall "$p"; then
        cat "$work/uninstall.log"
        [ -f "$work/disk/keep.txt" ] || fail "prefix '$p': an operator's mount under var/ was removed through"
        fail "prefix '$p': uninstall went on with an operator's mount under var/"
    fi
    grep -q "mounts left" "$work/uninstall.log" || { cat "$work/uninstall.log"; fail "prefix '$p': no reason given"; }
    [ "$(mounted "$esc/var/lib/images")" = 1 ] || fail "prefix '$p': the operator's mount was unmounted"
    [ -f "$work/disk/keep.txt" ] || fail "prefix '$p': the operator's file is gone"
    [ -x "$dest/bin/gleaner-agent" ] || fail "prefix '$p': files removed although it refused"
    ok "prefix '$p': an operator's mount under var/ stops uninstall: $(cat "$work/uninstall.log")"

    # Without it, the tasks bind is unmounted and everything goes.
    umount "$dest/var/lib/images"
    uninstall "$p" || { cat "$work/uninstall.log"; fail "prefix '$p': uninstall"; }
    [ "$(mounted "$esc/var/lib/tasks")" = 0 ] || fail "prefix '$p': the tasks bind is still mounted"
    [ "$(mounted "$esc/var/lib/run/netns/g1")" = 0 ] && [ "$(mounted "$esc/var/lib/run/netns")" = 0 ] || fail "prefix '$p': a group namespace or run/netns is still mounted"
    [ ! -e "$dest" ] || fail "prefix '$p': left $(find "$dest")"
    [ -f "$work/disk/keep.txt" ] || fail "prefix '$p': the operator's file is gone"
    ok "prefix '$p': the tasks bind and the group namespaces unmounted, the prefix removed"
done

# A manifest entry leading out of the prefix (tampered with, or a bug):
# nothing outside is removed.
install /opt/gleaner
echo victim >"$root/opt/victim.txt"
echo victim >"$root/victim.txt"
mkdir "$root/opt/empty-foreign"
printf '../victim.txt\nbin/../../../victim.txt\n../empty-foreign/\n' >>"$root/opt/gleaner/.gleaner-manifest"
uninstall /opt/gleaner || true
[ -f "$root/opt/victim.txt" ] && [ -f "$root/victim.txt" ] && [ -d "$root/opt/empty-foreign" ] || { cat "$work/uninstall.log"; fail "a manifest entry with .. removed a file outside the prefix"; }
ok "manifest entries with .. remove nothing outside the prefix: $(cat "$work/uninstall.log")"
echo ok
