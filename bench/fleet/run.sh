#!/usr/bin/env bash
# bench/fleet, hollow nodes: one etcd, one gleaner-scheduler and N hollow
# nodes (bench/fleet/src/bin/hollow-nodes.rs) on this machine; fleet-bench
# submits JOBS jobs over QUEUES queues and prints one JSON line: sustained
# placements/s, submit->RUNNING p50/p99, scheduler peak RSS and CPU, etcd
# db size. Sizes: NODES JOBS QUEUES RUN_MS RATE (0 = burst) BATCH.
# SCHEDULER_BIN=path runs another build of the scheduler (A/B figures);
# SKIP_BUILD=1 uses the binaries as they are.
set -euo pipefail
cd "$(dirname "$0")/../.."
NODES=${NODES:-5000} JOBS=${JOBS:-50000} QUEUES=${QUEUES:-10}
RUN_MS=${RUN_MS:-5000} RATE=${RATE:-0} BATCH=${BATCH:-100}
PROFILE=${PROFILE:-release}
[ -n "${SKIP_BUILD:-}" ] || cargo build -q --profile "$PROFILE" -p gleaner-scheduler -p gleaner-bench-fleet
bin=target/$([ "$PROFILE" = dev ] && echo debug || echo "$PROFILE")
tmp=$(mktemp -d /tmp/gleaner-bench-fleet.XXXXXX)
etcd_dir=$(mktemp -d /dev/shm/gleaner-bench-etcd.XXXXXX 2>/dev/null || mktemp -d "$tmp/etcd.XXXXXX")
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$tmp" "$etcd_dir"
}
trap cleanup EXIT
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
ETCD=http://127.0.0.1:$(port) PEER=http://127.0.0.1:$(port) API=127.0.0.1:$(port)
# etcd on tmpfs: a stand-in for its own disk (fsyncs on the shared disk
# here take up to seconds).
etcd --data-dir "$etcd_dir"  --listen-client-urls "$ETCD" --advertise-client-urls "$ETCD" \
  --listen-peer-urls "$PEER" --initial-advertise-peer-urls "$PEER" --initial-cluster "default=$PEER" \
  --quota-backend-bytes $((8 << 30)) >"$tmp/etcd.log" 2>&1 &
pids+=($!)
until ETCDCTL_API=3 etcdctl --endpoints "$ETCD" endpoint health >/dev/null 2>&1; do sleep 0.1; done
"$bin/hollow-nodes" --etcd "$ETCD" --nodes "$NODES" --run-ms "$RUN_MS" 2>"$tmp/hollow.log" &
pids+=($!)
GLEANER_LOG=${GLEANER_LOG:-warn} "${SCHEDULER_BIN:-$bin/gleaner-scheduler}" --etcd "$ETCD" --listen "$API" 2>"$tmp/scheduler.log" &
sched=$!
pids+=($sched)
until curl -sf "http://$API/v1/leader" >/dev/null; do sleep 0.1; done
sleep 2
"$bin/fleet-bench" --etcd "$ETCD" --scheduler "http://$API" --scheduler-pid "$sched" \
  --jobs "$JOBS" --queues "$QUEUES" --rate "$RATE" --batch "$BATCH" --timeout-s "${TIMEOUT_S:-600}" || { tail -n 20 "$tmp/scheduler.log" "$tmp/hollow.log"; exit 1; }
