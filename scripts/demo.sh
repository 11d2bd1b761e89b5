#!/usr/bin/env bash
# The README's first command: install, build, start the agent on its
# embedded defaults, run a sample task in a busybox rootfs, print its status.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
cargo build --release -q
bin=target/release
work=$(mktemp -d /tmp/gleaner-demo.XXXXXX)
bash scripts/make-busybox-rootfs.sh "$work/rootfs"

# One config for the agent and the CLI: the CLI finds the agent's Unix socket
# (<data_dir>/run/api.sock) through it; TCP would need the token.
# A task's rootfs.path must lie under rootfs_dirs. The defaults otherwise,
# but for the cgroup root: a cgroup root of its own, so that on a host with
# a real install (root `gleaner`) the demo's agent neither recovers nor
# removes that install's cgroups, and the demo removes only its own after.
croot=gleaner-demo-${work##*.}
printf 'data_dir = "%s/data"\nrootfs_dirs = ["%s"]\ncgroup_root = "%s"\n' "$work" "$work" "$croot" >"$work/agent.toml"
export GLEANER_CONFIG=$work/agent.toml
monitor=
"$bin/gleaner-agent" --config "$work/agent.toml" >"$work/agent.log" 2>&1 &
agent=$!
cleanup() {
  "$bin/gleaner" kill demo-sleeper >/dev/null 2>&1 || true
  kill -TERM $monitor "$agent" 2>/dev/null; wait $monitor "$agent" 2>/dev/null || true
  umount -l "$work/data/tasks" 2>/dev/null || true # the agent's nosuid,nodev bind
  rm -rf "$work"
  # The agent keeps its cgroups when it stops (tasks outlive it). rmdir
  # only: a cgroup that still holds a process stays.
  for d in "/sys/fs/cgroup/$croot" /sys/fs/cgroup/*/"$croot"; do
    [ -d "$d" ] && { find "$d" -depth -type d -exec rmdir {} + 2>/dev/null || true; }
  done
  return 0
}
trap cleanup EXIT
"$bin/gleaner" wait-healthy --timeout 10 >/dev/null
printf 'agent_socket = "%s"\ncgroup_root = "%s"\n' "$work/data/run/api.sock" "$croot" >"$work/monitor.toml"
"$bin/gleaner-monitor" --config "$work/monitor.toml" --interval 500ms >"$work/monitor.log" 2>&1 &
monitor=$!
sleep 1.5
echo "== the monitor has sized the batch reservation to the idle capacity"
"$bin/gleaner" reservations

echo "== a sample task: 0.5 cpu (CFS), 64 MB, in the busybox rootfs"
"$bin/gleaner" run --id demo-hello --rootfs "$work/rootfs" --cpus 0.5 --mem 64 --wait -- \
  'echo "hello from gleaner: $(id)"; echo "rootfs: $(ls / | tr "\n" " ")"; cat /proc/self/cgroup | grep -E "cpu|memory"'
echo "== its output"
"$bin/gleaner" logs demo-hello
echo "== its status"
"$bin/gleaner" status demo-hello
echo "== a long task, listed while it runs"
"$bin/gleaner" run --id demo-sleeper --rootfs "$work/rootfs" --cpus 0.25 --mem 16 -- sleep 300
"$bin/gleaner" ps
echo "== node state"
"$bin/gleaner" state
echo "== monitor log"
sed 's/\x1b\[[0-9;]*m//g' "$work/monitor.log"
