#!/bin/sh
# packaging/test-sysv-legacy.sh: the SysV script and a pid file written by
# the release before it (the pid alone, no start time). An upgrade's
# restart must stop that agent, not start a second beside it; a legacy pid
# file naming a supervisor or the zygote (the same binary) is not the
# agent. A stub program (cc) stands for the binary. Root not needed.
set -eu
command -v cc >/dev/null 2>&1 || { echo "skip: no cc"; exit 0; }
here=$(cd "$(dirname "$0")" && pwd -P)
fail() { echo "FAIL: $*"; exit 1; }
ok() { echo "ok: $*"; }
work=$(mktemp -d /tmp/gleaner-sysv-test.XXXXXX)
pids=
cleanup() { for p in $pids; do kill -KILL "$p" 2>/dev/null || true; done; rm -rf "$work"; }
trap cleanup EXIT
P=$work/prefix
mkdir -p "$P/bin" "$P/etc" "$P/var/run" "$P/var/log"
printf '#include <unistd.h>\nint main(void) { for (;;) pause(); }\n' >"$work/stub.c"
cc -o "$P/bin/gleaner-agent" "$work/stub.c"
sed -e "s|@PREFIX@|$P|g" -e "s|@NAME@|gleaner-agent|g" "$here/init.d/gleaner.in" >"$work/init"
init() { sh "$work/init" "$@"; }
alive() { [ -d "/proc/$1" ] && [ "$(sed -n 's/.*) //p' "/proc/$1/stat" | cut -d' ' -f1)" != Z ]; }

# The agent as the previous release's script started it, and its pid file.
setsid "$P/bin/gleaner-agent" --config "$P/etc/agent.toml" </dev/null >/dev/null 2>&1 &
old=$!
pids="$pids $old"
# A supervisor of the same binary.
"$P/bin/gleaner-agent" zygote </dev/null >/dev/null 2>&1 &
sup=$!
pids="$pids $sup"
sleep 0.2

echo "$sup" >"$P/var/run/gleaner-agent.pid"
init status >"$work/out" 2>&1 && { cat "$work/out"; fail "a legacy pid file naming a supervisor reads as the agent"; }
init stop >/dev/null 2>&1
alive "$sup" || fail "stop killed a supervisor named by a legacy pid file"
ok "a legacy pid file naming a supervisor: not the agent, not killed"

echo "$old" >"$P/var/run/gleaner-agent.pid"
init status >"$work/out" 2>&1 || { cat "$work/out"; fail "the agent of a legacy pid file reads as stopped"; }
init restart >"$work/out" 2>&1 || { cat "$work/out"; fail "restart"; }
alive "$old" && { cat "$work/out"; fail "restart left the old agent running (a second one started beside it)"; }
read -r new _ <"$P/var/run/gleaner-agent.pid"
pids="$pids $new"
[ "$new" != "$old" ] && alive "$new" || fail "restart: no new agent"
init stop >/dev/null 2>&1
alive "$new" && fail "stop left the agent running"
alive "$sup" || fail "a supervisor was killed"
ok "a legacy pid file's agent is stopped by restart, and a new one started"
echo ok
