#!/bin/sh
# demo.sh: through the installed agent, run a sample task in a busybox
# rootfs image (built here from the host's static busybox) and print its
# status. Needs the agent running (install.sh starts it) and busybox.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
cli="$here/bin/gleaner --config $here/etc/agent.toml"
$cli wait-healthy --timeout 30 >/dev/null
mkdir -p "$here/var/demo"
image=$here/var/demo/busybox.tar.gz
sha=$("$here/bin/gleaner-rootfs" build --from busybox --output "$image")
id=demo-$(date +%s)
echo "== a sample task: 0.5 cpu, 64 MB, in a busybox image (sha256 $sha)"
$cli run --id "$id" --image "file://$image" --sha256 "$sha" --cpus 0.5 --mem 64 --wait -- \
    'echo "hello from gleaner: $(id)"; echo "rootfs: $(ls / | tr "\n" " ")"'
echo "== its output"
$cli logs "$id"
echo "== its status"
$cli status "$id"
echo "== reservations"
$cli reservations
