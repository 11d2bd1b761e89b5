#!/usr/bin/env bash
# make-busybox-rootfs.sh DIR: a minimal rootfs from the host's static busybox.
set -euo pipefail
dir=${1:?usage: make-busybox-rootfs.sh DIR}
bb=$(command -v busybox)
mkdir -p "$dir"/{bin,etc,proc,dev,tmp,sandbox}
cp "$bb" "$dir/bin/busybox"
for a in $("$bb" --list); do [ "$a" = busybox ] || ln -sf busybox "$dir/bin/$a"; done
printf 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n' > "$dir/etc/passwd"
printf 'root:x:0:\nnogroup:x:65534:\n' > "$dir/etc/group"
chmod 755 "$dir"; chmod 1777 "$dir/tmp"
