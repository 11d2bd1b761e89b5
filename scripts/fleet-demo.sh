#!/usr/bin/env bash
# README "Run a fleet": etcd, two gleaner-scheduler replicas and three
# agents (n1..n3, each its own data dir, cgroup root and port) on this one
# machine. Prints a fair-share table (queues with priority factors 1 and 2,
# more work than fits) and a drain that moves a task: `etcdctl del` of an
# attribute on the task's node, the task RUNNING on another node that still
# has it. Root (agents use cgroups). Everything is removed at the end.
set -euo pipefail
cd "$(dirname "$0")/.."
command -v etcd >/dev/null || bash scripts/setup.sh
PROFILE=${PROFILE:-release}
cargo build -q --profile "$PROFILE" -p gleaner-agent -p gleaner-scheduler
bin=target/$([ "$PROFILE" = dev ] && echo debug || echo "$PROFILE")
work=$(mktemp -d /tmp/gleaner-fleet-demo.XXXXXX)
pids=() agents=() apids=()
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
# The agent API wants the agent's token when it has one.
acurl() { local a=$1; shift; local t="$work/$a/api.token"
  if [ -f "$t" ]; then curl -s -H "Authorization: Bearer $(cat "$t")" "$@"; else curl -s "$@"; fi; }
cleanup() {
  # Cancel every job (their placements go, the agents kill the tasks),
  # then stop schedulers, agents, etcd; kill what is left in the cgroups.
  if [ -n "${api:-}" ]; then
    for j in $(curl -s "$api/v1/jobs" | python3 -c 'import json,sys; [print(j["id"]) for j in json.load(sys.stdin)]' 2>/dev/null); do
      curl -s -X DELETE "$api/v1/jobs/$j" >/dev/null || true
    done
    sleep 3
  fi
  for p in "${apids[@]}" "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  for a in "${agents[@]}"; do for c in cpu cpuacct memory pids; do
    d=/sys/fs/cgroup/$c/gleaner-demo-$a
    [ -d "$d" ] || continue
    find "$d" -name cgroup.procs -exec cat {} + 2>/dev/null | xargs -r kill -9 2>/dev/null || true
    sleep 0.2
    find "$d" -depth -type d -exec rmdir {} + 2>/dev/null || true
  done; done
  # Each agent made its tasks dir a nosuid,nodev bind mount.
  for a in "${agents[@]}"; do umount -l "$work/$a/tasks" 2>/dev/null || true; done
  # The agents' tasks dirs are bind mounts that outlive them.
  for a in "${agents[@]}"; do umount -l "$work/$a/tasks" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT
bash scripts/make-busybox-rootfs.sh "$work/rootfs"

ETCD=http://127.0.0.1:$(port) PEER=http://127.0.0.1:$(port)
etcd --data-dir "$work/etcd" --listen-client-urls "$ETCD" --advertise-client-urls "$ETCD" \
  --listen-peer-urls "$PEER" --initial-advertise-peer-urls "$PEER" --initial-cluster "default=$PEER" \
  >"$work/etcd.log" 2>&1 &
pids+=($!)
ctl() { ETCDCTL_API=3 etcdctl --endpoints "$ETCD" "$@"; }
until ctl endpoint health >/dev/null 2>&1; do sleep 0.1; done

for a in n1 n2 n3; do
  p=$(port)
  cat >"$work/$a.toml" <<TOML
listen = "127.0.0.1:$p"
data_dir = "$work/$a"
cgroup_root = "gleaner-demo-$a"
node_id = "$a"
etcd = ["$ETCD"]
default_rootfs = "$work/rootfs"
[initial_reservation]
cpus = 1.0
mem_mb = 512.0
TOML
  echo "http://127.0.0.1:$p" >"$work/$a.url"
  GLEANER_LOG=warn "$bin/gleaner-agent" --config "$work/$a.toml" >"$work/$a.log" 2>&1 &
  apids+=($!) agents+=($a)
done
# ssd on n1 and n2, in etcd (an operator's etcdctl).
ctl put /gleaner/nodes/n1/attributes/ssd true >/dev/null
ctl put /gleaner/nodes/n2/attributes/ssd true >/dev/null
S=()
for i in 1 2; do
  p=$(port)
  GLEANER_LOG=warn "$bin/gleaner-scheduler" --etcd "$ETCD" --listen "127.0.0.1:$p" >"$work/scheduler$i.log" 2>&1 &
  pids+=($!) S+=("http://127.0.0.1:$p")
done
for s in "${S[@]}"; do until curl -sf "$s/v1/leader" >/dev/null; do sleep 0.1; done; done
until [ "$(ctl get --prefix /gleaner/nodes/ --keys-only | grep -c /info)" = 3 ]; do sleep 0.1; done
api=${S[1]}   # any replica serves the API
echo "== the fleet: 3 agents x 1 cpu for batch, 2 scheduler replicas; leader:"
curl -s "$api/v1/leader"; echo

echo "== fair share: queue a (priority_factor 1) and b (2), 40 jobs of 3 s and 0.25 cpu each, 12 slots"
echo "   (a is submitted first and fills the fleet; as jobs end, the shares converge to 2:1 for a,"
echo "   FLEET.md: a queue's share is divided by its weight 1/priority_factor)"
curl -sf --retry 5 -X PUT "$api/v1/queues/a" -d '{"priority_factor": 1}' -H 'content-type: application/json' >/dev/null
curl -sf --retry 5 -X PUT "$api/v1/queues/b" -d '{"priority_factor": 2}' -H 'content-type: application/json' >/dev/null
jobs=$(python3 -c 'import json; print(json.dumps([{"spec": {"cmd": "sleep 3", "kill_grace_s": 1, "resources": {"cpus": 0.25, "mem_mb": 16}}}]*40))')
for q in a b; do
  curl -sf --retry 5 -X POST "$api/v1/jobs" -H 'content-type: application/json' -d "{\"queue\": \"$q\", \"jobs\": $jobs}" >/dev/null
done
sleep 10
curl -s "$api/v1/queues" | python3 -c '
import json, sys
print("%-6s %7s %8s %8s %6s" % ("queue", "factor", "running", "pending", "share"))
for q in json.load(sys.stdin):
    print("%-6s %7.1f %8d %8d %6.2f" % (q["name"], q["priority_factor"], q["running"], q["pending"], q["share"]))'
for j in $(curl -s "$api/v1/jobs" | python3 -c 'import json,sys; [print(j["id"]) for j in json.load(sys.stdin)]'); do
  curl -s -X DELETE "$api/v1/jobs/$j" >/dev/null
done
sleep 3

echo "== drain: a job that needs ssd=true"
id=$(curl -sf --retry 5 -X POST "$api/v1/jobs" -H 'content-type: application/json' \
  -d '{"queue": "a", "jobs": [{"spec": {"cmd": "sleep 600", "kill_grace_s": 1, "resources": {"cpus": 0.25, "mem_mb": 16}, "constraints": [["ssd", "IS", "true"]]}}]}' |
  python3 -c 'import json,sys; print(json.load(sys.stdin)["jobs"][0])')
node=""
for _ in $(seq 100); do
  node=$(curl -s "$api/v1/jobs/$id" | python3 -c 'import json,sys; j=json.load(sys.stdin); print(j.get("node") or "" if j["state"]=="RUNNING" else "")')
  [ -n "$node" ] && break; sleep 0.1
done
echo "job $id RUNNING on $node"
echo "\$ etcdctl del /gleaner/nodes/$node/attributes/ssd"
t0=$(date +%s.%N)
ctl del "/gleaner/nodes/$node/attributes/ssd" >/dev/null
for _ in $(seq 300); do
  now=$(curl -s "$api/v1/jobs/$id" | python3 -c 'import json,sys; j=json.load(sys.stdin); print(j.get("node") or "" if j["state"]=="RUNNING" else "")')
  [ -n "$now" ] && [ "$now" != "$node" ] && break; sleep 0.05
done
t1=$(date +%s.%N)
echo "job $id RUNNING on $now after $(python3 -c "print('%.2f s' % ($t1 - $t0))") (attempt $(curl -s "$api/v1/jobs/$id" | python3 -c 'import json,sys; print(json.load(sys.stdin)["attempt"])'))"
echo "its attempt on $node: $(acurl "$node" "$(cat "$work/$node.url")/v1/tasks" | python3 -c "import json,sys; print([(t['id'], t['state']) for t in json.load(sys.stdin) if t['id'].startswith('$id.')])")"
