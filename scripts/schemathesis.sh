#!/usr/bin/env bash
# Runs schemathesis (PyPI) against a live agent of the debug build, with its
# admin token, for every operation of docs/openapi.json: no 5xx, every
# response as documented. The agent is a private one (own data dir, own
# cgroup root); every task the run created is killed and everything is
# removed afterwards. Root. Needs `cargo build --workspace` first and the
# venv of scripts/setup.sh.
#   MAX_EXAMPLES (default 20): hypothesis examples per operation and phase.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
st=${SCHEMATHESIS:-/var/cache/gleaner/venv/bin/schemathesis}
bin=$root/target/debug
work=$(mktemp -d /tmp/gleaner-schemathesis.XXXXXX)
cgroot=gleaner-schema-$$
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
bash scripts/make-busybox-rootfs.sh "$work/rootfs"
cat >"$work/agent.toml" <<TOML
listen = "127.0.0.1:$port"
data_dir = "$work/data"
cgroup_root = "$cgroot"
default_rootfs = "$work/rootfs"
TOML
cli() { "$bin/gleaner" --config "$work/agent.toml" "$@"; }
"$bin/gleaner-agent" --config "$work/agent.toml" >"$work/agent.log" 2>&1 &
agent=$!
cleanup() {
    # Tasks it created are killed through the API, then the agent stops;
    # whatever is left (supervisors, cgroups) goes too.
    local left
    left=$(cli ps --unfinished -q 2>/dev/null || true)
    for id in $left; do cli kill --no-wait "$id" >/dev/null 2>&1 || true; done
    for _ in $(seq 100); do [ -z "$(cli ps --unfinished -q 2>/dev/null)" ] && break; sleep 0.1; done
    echo "schemathesis: killed $(echo "$left" | grep -c . || true) task(s) it had created"
    kill -TERM "$agent" 2>/dev/null; wait "$agent" 2>/dev/null || true
    for c in cpu cpuacct memory pids freezer; do
        [ -d "/sys/fs/cgroup/$c/$cgroot" ] && find "/sys/fs/cgroup/$c/$cgroot" -depth -type d -exec rmdir {} + 2>/dev/null
    done
    # The agent's own bind mount of <data_dir>/tasks (nosuid,nodev) stays
    # after it stops: unmount what lies under $work, deepest first.
    for m in $(awk -v w="$work/" 'index($5, w) == 1 {print $5}' /proc/self/mountinfo | sort -r); do
        umount "$m" 2>/dev/null || umount -l "$m" 2>/dev/null || true
    done
    rm -rf "$work" || true
}
trap cleanup EXIT
cli wait-healthy --timeout 20 >/dev/null
token=$(cat "$work/data/api.token")
# The served document is the kept one (a unit test checks the code side).
curl -sf -H "Authorization: Bearer $token" "http://127.0.0.1:$port/v1/openapi.json" | cmp -s - docs/openapi.json \
    || { echo "schemathesis: /v1/openapi.json differs from docs/openapi.json" >&2; exit 1; }
# From the work dir: schemathesis leaves a .schemathesis/ cache where it runs.
cd "$work"
"$st" run "$root/docs/openapi.json" --url "http://127.0.0.1:$port" \
    -H "Authorization: Bearer $token" \
    --checks not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance \
    --max-examples "${MAX_EXAMPLES:-20}" --seed "${SEED:-1}" --request-timeout 30 \
    --generation-database none --no-color 2>&1 | tee "$work/schemathesis.log"
status=${PIPESTATUS[0]}
exit "$status"
