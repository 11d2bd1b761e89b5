#!/usr/bin/env bash
# bench/marathon: the Marathon figures of issue 14 on hollow nodes
# (bench/fleet's hollow-nodes: NODES fake agents that report every
# placement RUNNING at once; nothing runs, so this measures the scheduler
# and etcd). One etcd (tmpfs), one gleaner-scheduler, then client.py:
# an app of INSTANCES to all running, its rolling restart, and SSE events
# delivered to SUBSCRIBERS /v2/events clients during that restart.
# Marathon itself is not installable here: no peer figure.
set -euo pipefail
cd "$(dirname "$0")/../.."
NODES=${NODES:-3} INSTANCES=${INSTANCES:-100} SUBSCRIBERS=${SUBSCRIBERS:-10}
PROFILE=${PROFILE:-dev}
cargo build -q --profile "$PROFILE" -p gleaner-scheduler -p gleaner-bench-fleet --bin hollow-nodes --bin gleaner-scheduler
bin=target/$([ "$PROFILE" = dev ] && echo debug || echo "$PROFILE")
tmp=$(mktemp -d /tmp/gleaner-bench-marathon.XXXXXX)
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
etcd --data-dir "$etcd_dir" --listen-client-urls "$ETCD" --advertise-client-urls "$ETCD" \
  --listen-peer-urls "$PEER" --initial-advertise-peer-urls "$PEER" --initial-cluster "default=$PEER" \
  >"$tmp/etcd.log" 2>&1 &
pids+=($!)
until ETCDCTL_API=3 etcdctl --endpoints "$ETCD" endpoint health >/dev/null 2>&1; do sleep 0.1; done
# Instances run "for ever" (an hour) on 8-cpu hollow nodes.
"$bin/hollow-nodes" --etcd "$ETCD" --nodes "$NODES" --run-ms 3600000 2>"$tmp/hollow.log" &
pids+=($!)
GLEANER_LOG=${GLEANER_LOG:-warn} "$bin/gleaner-scheduler" --etcd "$ETCD" --listen "$API" 2>"$tmp/scheduler.log" &
pids+=($!)
until curl -sf "http://$API/v1/leader" >/dev/null; do sleep 0.1; done
sleep 2
python3 bench/marathon/client.py "http://$API" "$INSTANCES" "$SUBSCRIBERS" \
  || { tail -n 20 "$tmp/scheduler.log" "$tmp/hollow.log"; exit 1; }
