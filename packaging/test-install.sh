#!/bin/sh
# packaging/test-install.sh TARBALL: installs the tarball as a user would,
# inside a private mount namespace where /opt, /etc/init.d and
# /etc/systemd/system are empty scratch directories (so nothing of the host
# is touched and every file created can be listed), then: runs the demo,
# upgrades over a running task, refuses to uninstall while it runs,
# uninstalls with --force, and checks that nothing is left. Root.
# Re-executes itself under unshare; prints "ok" lines, exits 1 on a failure.
set -eu
tarball=$(readlink -f "${1:?usage: test-install.sh TARBALL}")
if [ "${GLEANER_IN_NS:-}" != 1 ]; then
    exec env GLEANER_IN_NS=1 unshare --mount --propagation private sh "$0" "$tarball"
fi

fail() { echo "FAIL: $*"; exit 1; }
ok() { echo "ok: $*"; }
for d in /opt /etc/init.d /etc/systemd/system; do mount -t tmpfs gleaner-test "$d"; done
work=$(mktemp -d /tmp/gleaner-install-test.XXXXXX)
# On a failure, what was started is stopped and killed all the same.
cleanup() {
    [ -x /opt/gleaner/uninstall.sh ] && /opt/gleaner/uninstall.sh --force >/dev/null 2>&1
    rm -rf "$work"
}
trap cleanup EXIT
mkdir "$work/a" "$work/b"
tar -xzf "$tarball" -C "$work/a"
tar -xzf "$tarball" -C "$work/b"

# An operator's config, written before the install: a free port and a
# cgroup root of the test's own. install.sh keeps it.
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
port=${GLEANER_TEST_PORT:-$(free_port)}
mport=${GLEANER_TEST_MONITOR_PORT:-$(free_port)}
croot=gleaner-install-test-$$
mkdir -p /opt/gleaner/etc
sed -e "s|@PREFIX@|/opt/gleaner|g" "$work/a/gleaner/share/agent.toml.in" >/opt/gleaner/etc/agent.toml
printf 'listen = "127.0.0.1:%s"\ncgroup_root = "%s"\n' "$port" "$croot" >>/opt/gleaner/etc/agent.toml
printf 'agent = "http://127.0.0.1:%s"\nlisten = "127.0.0.1:%s"\ncgroup_root = "%s"\n' "$port" "$mport" "$croot" >/opt/gleaner/etc/monitor.toml
cli="/opt/gleaner/bin/gleaner --config /opt/gleaner/etc/agent.toml"

t0=$(date +%s.%N)
"$work/a/gleaner/install.sh" --init sysv >"$work/install.log" 2>&1 || { cat "$work/install.log"; fail "install.sh"; }
t1=$(date +%s.%N)
cat "$work/install.log"
ok "install.sh with start took $(echo "$t0 $t1" | awk '{printf "%.2f", $2 - $1}') s"

# Every file created is under the prefix or is one of the unit links.
stray=$(find /opt /etc/init.d /etc/systemd/system -mindepth 1 \
    ! -path '/opt/gleaner' ! -path '/opt/gleaner/*' \
    ! -path /etc/init.d/gleaner-agent ! -path /etc/init.d/gleaner-monitor)
[ -z "$stray" ] || fail "files outside the prefix: $stray"
for n in gleaner-agent gleaner-monitor; do
    [ "$(readlink /etc/init.d/$n)" = "/opt/gleaner/init.d/$n" ] || fail "/etc/init.d/$n is not a link into the prefix"
done
ok "only the prefix and two links were created"
/etc/init.d/gleaner-agent status >/dev/null || fail "agent not running"
/etc/init.d/gleaner-monitor status >/dev/null || fail "monitor not running"
ok "agent and monitor running"

# Idempotent: a second run changes no file (config included).
before=$(cd /opt/gleaner && find . -path ./var -prune -o -type f -print | sort | xargs md5sum)
/opt/gleaner/install.sh --init sysv --no-start >/dev/null
after=$(cd /opt/gleaner && find . -path ./var -prune -o -type f -print | sort | xargs md5sum)
[ "$before" = "$after" ] || fail "a second install.sh changed files"
ok "install.sh is idempotent"

# The demo runs from the installed tree.
/opt/gleaner/demo.sh >"$work/demo.log" 2>&1 || { cat "$work/demo.log"; fail "demo.sh"; }
grep -q "hello from gleaner" "$work/demo.log" || { cat "$work/demo.log"; fail "demo output"; }
grep -q '"state": "FINISHED"' "$work/demo.log" || { cat "$work/demo.log"; fail "demo status"; }
ok "demo.sh ran a task in a busybox image"

# Upgrade over a running task: the agent restarts and re-adopts it.
image=/opt/gleaner/var/demo/busybox.tar.gz
$cli run --id keeper --image "file://$image" --sha256 "$(sha256sum "$image" | cut -d' ' -f1)" -- sleep 600 >/dev/null
pid=$($cli status keeper | sed -n 's/.*"pid": \([0-9]*\).*/\1/p')
[ -n "$pid" ] || fail "keeper has no pid"
agent_before=$(cat /opt/gleaner/var/run/gleaner-agent.pid)
"$work/b/gleaner/install.sh" --init sysv >"$work/upgrade.log" 2>&1 || { cat "$work/upgrade.log"; fail "upgrade install.sh"; }
agent_after=$(cat /opt/gleaner/var/run/gleaner-agent.pid)
[ "$agent_before" != "$agent_after" ] || fail "the agent was not restarted"
$cli status keeper | grep -q '"state": "RUNNING"' || fail "keeper not running after the upgrade"
pid2=$($cli status keeper | sed -n 's/.*"pid": \([0-9]*\).*/\1/p')
[ "$pid" = "$pid2" ] || fail "keeper was restarted ($pid -> $pid2), not re-adopted"
kill -0 "$pid" || fail "keeper's process is gone"
ok "upgrade restarted the agent, which re-adopted the running task (pid $pid)"

# Uninstall refuses while a task runs; --force kills it cleanly.
if /opt/gleaner/uninstall.sh >"$work/un.log" 2>&1; then fail "uninstall.sh did not refuse"; fi
grep -q "unfinished" "$work/un.log" || { cat "$work/un.log"; fail "refusal message"; }
[ -x /opt/gleaner/bin/gleaner-agent ] || fail "a refused uninstall removed files"
ok "uninstall.sh refuses while a task runs: $(cat "$work/un.log")"
/opt/gleaner/uninstall.sh --force || fail "uninstall.sh --force"
kill -0 "$pid" 2>/dev/null && fail "keeper still runs"
[ ! -e /opt/gleaner ] || fail "/opt/gleaner left"
left=$(find /opt /etc/init.d /etc/systemd/system -mindepth 1)
[ -z "$left" ] || fail "left: $left"
for p in /proc/[0-9]*; do
    case "$(readlink "$p/exe" 2>/dev/null)" in /opt/gleaner/*) fail "process left: $p $(cat "$p/cmdline" | tr '\0' ' ')" ;; esac
done
for c in /sys/fs/cgroup/*/"$croot"; do [ -e "$c" ] && fail "cgroup left: $c"; done
grep -q " /opt/gleaner" /proc/self/mountinfo && fail "mount left"
ok "uninstall.sh --force: no file, link, process, cgroup or mount left"

# The systemd flavour (not started: this host's init is not systemd): the
# links, the units as systemd reads them, and an uninstall with the agent
# down (a temporary agent answers for the tasks).
mkdir -p /opt/gleaner/etc
sed -e "s|@PREFIX@|/opt/gleaner|g" "$work/a/gleaner/share/agent.toml.in" >/opt/gleaner/etc/agent.toml
printf 'listen = "127.0.0.1:%s"\ncgroup_root = "%s"\n' "$port" "$croot" >>/opt/gleaner/etc/agent.toml
"$work/a/gleaner/install.sh" --init systemd --no-start >/dev/null || fail "install.sh --init systemd"
for n in gleaner-agent gleaner-monitor; do
    for l in /etc/systemd/system/$n.service /etc/systemd/system/multi-user.target.wants/$n.service; do
        [ "$(readlink "$l")" = "/opt/gleaner/systemd/$n.service" ] || fail "$l is not a link into the prefix"
    done
done
grep -q '^ExecStart=/opt/gleaner/bin/gleaner-agent --config /opt/gleaner/etc/agent.toml$' /opt/gleaner/systemd/gleaner-agent.service || fail "agent unit ExecStart"
if command -v systemd-analyze >/dev/null 2>&1; then
    out=$(systemd-analyze verify /etc/systemd/system/gleaner-agent.service /etc/systemd/system/gleaner-monitor.service 2>&1 | grep gleaner || true)
    [ -z "$out" ] || fail "systemd-analyze verify: $out"
    ok "units linked; systemd-analyze verify has nothing to say about them"
else
    ok "units linked (systemd-analyze not installed)"
fi
/opt/gleaner/uninstall.sh >/dev/null || fail "uninstall.sh with the agent down"
left=$(find /opt /etc/init.d /etc/systemd/system -mindepth 1 ! -path /etc/systemd/system/multi-user.target.wants)
[ -z "$left" ] || fail "left after the systemd uninstall: $left"
for c in /sys/fs/cgroup/*/"$croot"; do [ -e "$c" ] && fail "cgroup left: $c"; done
ok "systemd flavour: installed, uninstalled with the agent down, nothing left"
