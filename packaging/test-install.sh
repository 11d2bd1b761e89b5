#!/bin/sh
# packaging/test-install.sh TARBALL: installs the tarball as a user would,
# inside a private mount namespace where /opt, /srv, /etc/init.d and
# /etc/systemd/system are scratch directories holding another
# application's files (which must survive everything), then: refuses the
# prefixes that are not gleaner's own, installs through a symlinked prefix
# with a trailing slash, runs the demo, upgrades over a running task,
# drives the SysV script through a symlinked prefix and a stale pid file,
# refuses to uninstall while a task runs or when the tasks cannot be
# listed, uninstalls with --force, and checks that nothing of gleaner is
# left and nothing else is gone. Root. Re-executes itself under unshare;
# prints "ok" lines, exits 1 on a failure.
set -eu
tarball=$(readlink -f "${1:?usage: test-install.sh TARBALL}")
if [ "${GLEANER_IN_NS:-}" != 1 ]; then
    exec env GLEANER_IN_NS=1 unshare --mount --propagation private sh "$0" "$tarball"
fi

fail() { echo "FAIL: $*"; exit 1; }
ok() { echo "ok: $*"; }
for d in /opt /srv /etc/init.d /etc/systemd/system; do mount -t tmpfs gleaner-test "$d"; done
work=$(mktemp -d /tmp/gleaner-install-test.XXXXXX)
# On a failure, what was started is stopped and killed all the same.
cleanup() {
    [ -x /opt/gleaner/bin/gleaner.real ] && mv -f /opt/gleaner/bin/gleaner.real /opt/gleaner/bin/gleaner
    [ -x /opt/gleaner/uninstall.sh ] && /opt/gleaner/uninstall.sh --force >/dev/null 2>&1
    rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 1' INT TERM
mkdir "$work/a" "$work/b"
tar -xzf "$tarball" -C "$work/a"
tar -xzf "$tarball" -C "$work/b"

# Another application's files, beside and above the prefix.
mkdir -p /opt/other-app /srv/www
echo data >/opt/other-app/data.txt
echo notes >/opt/notes.txt
echo page >/srv/www/index.html
printf '#!/bin/sh\necho other\n' >/etc/init.d/other-service
foreign() { find /opt/other-app /opt/notes.txt /srv /etc/init.d/other-service | sort | xargs md5sum 2>/dev/null || true; }
foreign_before=$(foreign)
check_foreign() {
    [ "$(foreign)" = "$foreign_before" ] || fail "another application's files changed ($1): $(foreign)"
}
snapshot() { find /opt /srv /etc/init.d /etc/systemd/system | sort; }

# Refused: / and system folders however spelled, and folders that are not
# gleaner's. Nothing is written. Tried with the host's root read-only (a
# nested namespace), so that an install.sh that accepts one harms nothing.
before=$(snapshot)
readonly_root() { unshare --mount --propagation private sh -c 'mount -o remount,bind,ro / && exec "$@"' sh "$@"; }
for p in / // /opt/ /opt/gleaner/.. /srv /usr/local /etc /var/lib /opt/other-app /opt/other-app/ /opt/notes.txt; do
    if readonly_root "$work/a/gleaner/install.sh" --prefix "$p" --init sysv --no-start >"$work/refuse.log" 2>&1; then
        fail "install.sh --prefix $p was accepted"
    fi
    grep -q "refusing prefix" "$work/refuse.log" || { cat "$work/refuse.log"; fail "--prefix $p: no refusal message"; }
done
[ "$(snapshot)" = "$before" ] || fail "a refused install wrote files: $(snapshot)"
ok "refused prefixes /, //, /opt/, /opt/gleaner/.., /srv, /usr/local, /etc, /var/lib and another application's folder: $(cat "$work/refuse.log")"

# Installed through a symlink with a trailing slash: the resolved folder is
# used everywhere. Configured (a free port, a cgroup root of the test's
# own) before the first start.
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
port=${GLEANER_TEST_PORT:-$(free_port)}
mport=${GLEANER_TEST_MONITOR_PORT:-$(free_port)}
croot=gleaner-install-test-$$
ln -s /opt/gleaner /opt/glink
"$work/a/gleaner/install.sh" --prefix /opt/glink/ --init sysv --no-start >"$work/install0.log" 2>&1 || { cat "$work/install0.log"; fail "install.sh --no-start"; }
grep -q "installed in /opt/gleaner " "$work/install0.log" || { cat "$work/install0.log"; fail "prefix not resolved"; }
grep -q '^PREFIX=/opt/gleaner$' /etc/init.d/gleaner-agent || fail "init script names an unresolved prefix"
printf 'listen = "127.0.0.1:%s"\ncgroup_root = "%s"\n' "$port" "$croot" >>/opt/gleaner/etc/agent.toml
# Top-level keys go before the [policy] table.
{ printf 'agent = "http://127.0.0.1:%s"\nlisten = "127.0.0.1:%s"\ncgroup_root = "%s"\n' "$port" "$mport" "$croot"; cat /opt/gleaner/etc/monitor.toml; } >"$work/monitor.toml"
# The host is shared (builds, other tests): the monitor keeps at least one
# CPU for the test's tasks.
sed 's/^#min = .*/min = { cpus = 1.0, mem_mb = 512.0 }/' "$work/monitor.toml" >/opt/gleaner/etc/monitor.toml
cli="/opt/gleaner/bin/gleaner --config /opt/gleaner/etc/agent.toml"

t0=$(date +%s.%N)
/opt/gleaner/install.sh --init sysv >"$work/install.log" 2>&1 || { cat "$work/install.log"; fail "install.sh"; }
t1=$(date +%s.%N)
cat "$work/install.log"
ok "install.sh with start took $(echo "$t0 $t1" | awk '{printf "%.2f", $2 - $1}') s"

# Every file created is under the prefix or is one of the two init scripts,
# which are copies (not links) stamped with the prefix.
stray=$(find /opt /srv /etc/init.d /etc/systemd/system -mindepth 1 \
    ! -path '/opt/gleaner' ! -path '/opt/gleaner/*' ! -path /opt/glink \
    ! -path '/opt/other-app' ! -path '/opt/other-app/*' ! -path /opt/notes.txt \
    ! -path '/srv/*' ! -path /etc/init.d/other-service \
    ! -path /etc/init.d/gleaner-agent ! -path /etc/init.d/gleaner-monitor)
[ -z "$stray" ] || fail "files outside the prefix: $stray"
for n in gleaner-agent gleaner-monitor; do
    [ -f /etc/init.d/$n ] && [ ! -L /etc/init.d/$n ] || fail "/etc/init.d/$n is not a copy"
    grep -q '^# gleaner-prefix: /opt/gleaner$' /etc/init.d/$n || fail "/etc/init.d/$n is not stamped"
    grep -qx "/etc/init.d/$n" /opt/gleaner/.gleaner-manifest || fail "/etc/init.d/$n not in the manifest"
done
[ -f /opt/gleaner/.gleaner-prefix ] || fail "no marker"
ok "only the prefix (with its marker and manifest) and two init scripts were created"
/etc/init.d/gleaner-agent status >/dev/null || fail "agent not running"
/etc/init.d/gleaner-monitor status >/dev/null || fail "monitor not running"
ok "agent and monitor running"

# Idempotent: a second run changes no file (config included).
sums() { (cd /opt/gleaner && find . -path ./var -prune -o -type f -print | sort | xargs md5sum); }
before=$(sums)
/opt/gleaner/install.sh --init sysv --no-start >/dev/null
[ "$before" = "$(sums)" ] || fail "a second install.sh changed files"
ok "install.sh is idempotent"

# The demo runs from the installed tree.
timeout 120 /opt/gleaner/demo.sh >"$work/demo.log" 2>&1 || { cat "$work/demo.log"; fail "demo.sh"; }
grep -q "hello from gleaner" "$work/demo.log" || { cat "$work/demo.log"; fail "demo output"; }
grep -q '"state": "FINISHED"' "$work/demo.log" || { cat "$work/demo.log"; fail "demo status"; }
ok "demo.sh ran a task in a busybox image"

# Upgrade over a running task: the agent restarts and re-adopts it.
image=/opt/gleaner/var/demo/busybox.tar.gz
$cli run --id keeper --image "file://$image" --sha256 "$(sha256sum "$image" | cut -d' ' -f1)" -- sleep 600 >/dev/null
pid=$($cli status keeper | sed -n 's/.*"pid": \([0-9]*\).*/\1/p')
[ -n "$pid" ] || fail "keeper has no pid"
agent_before=$(cut -d' ' -f1 /opt/gleaner/var/run/gleaner-agent.pid)
"$work/b/gleaner/install.sh" --prefix /opt/gleaner --init sysv >"$work/upgrade.log" 2>&1 || { cat "$work/upgrade.log"; fail "upgrade install.sh"; }
agent_after=$(cut -d' ' -f1 /opt/gleaner/var/run/gleaner-agent.pid)
[ "$agent_before" != "$agent_after" ] || fail "the agent was not restarted"
$cli status keeper | grep -q '"state": "RUNNING"' || fail "keeper not running after the upgrade"
pid2=$($cli status keeper | sed -n 's/.*"pid": \([0-9]*\).*/\1/p')
[ "$pid" = "$pid2" ] || fail "keeper was restarted ($pid -> $pid2), not re-adopted"
kill -0 "$pid" || fail "keeper's process is gone"
ok "upgrade restarted the agent, which re-adopted the running task (pid $pid)"

# The SysV script with a symlink in its PREFIX (as an older install wrote
# it): status, restart and stop act on the one agent.
agents() { for p in /proc/[0-9]*; do
    [ "$(readlink "$p/exe" 2>/dev/null)" = /opt/gleaner/bin/gleaner-agent ] && tr '\0' ' ' <"$p/cmdline" | grep -q -- ' --config ' && echo "${p#/proc/}"
done; return 0; }
sed 's|^PREFIX=.*|PREFIX=/opt/glink|' /etc/init.d/gleaner-agent >"$work/via-link"
sh "$work/via-link" status >/dev/null || fail "status through a symlinked prefix: not running"
sh "$work/via-link" restart >"$work/restart.log" 2>&1 || { cat "$work/restart.log"; fail "restart through a symlinked prefix"; }
$cli wait-healthy --timeout 30 >/dev/null || fail "agent not healthy after the restart"
[ "$(agents | wc -l)" = 1 ] || fail "agents after a restart through a symlinked prefix: $(agents)"
# A stale pid file naming a live process of the same binary (the task's
# supervisor) after the agent stopped: not taken for the agent.
sh "$work/via-link" stop >/dev/null
[ -z "$(agents)" ] || fail "stop through a symlinked prefix left $(agents)"
sup=$(for p in /proc/[0-9]*; do case "$(readlink "$p/exe" 2>/dev/null)" in /opt/gleaner/bin/gleaner-agent*) echo "${p#/proc/}" ;; esac; done | head -n 1)
[ -n "$sup" ] || fail "no supervisor of keeper"
echo "$sup" >/opt/gleaner/var/run/gleaner-agent.pid
if /etc/init.d/gleaner-agent status >/dev/null; then fail "a stale pid file ($sup, a supervisor) reads as the running agent"; fi
echo "$sup 1" >/opt/gleaner/var/run/gleaner-agent.pid
if /etc/init.d/gleaner-agent status >/dev/null; then fail "a pid file with another start time reads as running"; fi
/etc/init.d/gleaner-agent start >/dev/null || fail "start after a stale pid file"
$cli wait-healthy --timeout 30 >/dev/null || fail "agent not healthy after start"
$cli status keeper | grep -q '"state": "RUNNING"' || fail "keeper lost"
ok "SysV script: status, restart and stop through a symlinked prefix act on the one agent; a stale pid file of a supervisor is not the agent"

# Uninstall refuses while a task runs; and when the tasks cannot be listed
# (a failing `gleaner ps` used to count as none).
if /opt/gleaner/uninstall.sh >"$work/un.log" 2>&1; then fail "uninstall.sh did not refuse"; fi
grep -q "unfinished" "$work/un.log" || { cat "$work/un.log"; fail "refusal message"; }
[ -x /opt/gleaner/bin/gleaner-agent ] || fail "a refused uninstall removed files"
ok "uninstall.sh refuses while a task runs: $(cat "$work/un.log")"
mv /opt/gleaner/bin/gleaner /opt/gleaner/bin/gleaner.real
printf '#!/bin/sh\ncase " $* " in *" ps "*) echo "ps: broken" >&2; exit 1 ;; esac\nexec /opt/gleaner/bin/gleaner.real "$@"\n' >/opt/gleaner/bin/gleaner
chmod 755 /opt/gleaner/bin/gleaner
for f in "" --force; do
    if /opt/gleaner/uninstall.sh $f >"$work/un.log" 2>&1; then fail "uninstall.sh $f went on without a task list"; fi
    grep -q "cannot list" "$work/un.log" || { cat "$work/un.log"; fail "refusal message without a task list"; }
done
mv -f /opt/gleaner/bin/gleaner.real /opt/gleaner/bin/gleaner
kill -0 "$pid" || fail "keeper was killed by a refused uninstall"
[ -d /opt/gleaner/var/lib ] || fail "a refused uninstall removed data"
ok "uninstall.sh refuses when it cannot list the tasks: $(cat "$work/un.log")"

/opt/gleaner/uninstall.sh --force || fail "uninstall.sh --force"
kill -0 "$pid" 2>/dev/null && fail "keeper still runs"
[ ! -e /opt/gleaner ] || fail "/opt/gleaner left: $(find /opt/gleaner)"
rm /opt/glink
left=$(find /opt /srv /etc/init.d /etc/systemd/system -mindepth 1 \
    ! -path '/opt/other-app' ! -path '/opt/other-app/*' ! -path /opt/notes.txt \
    ! -path '/srv/*' ! -path /etc/init.d/other-service)
[ -z "$left" ] || fail "left: $left"
check_foreign "after uninstall --force"
for p in /proc/[0-9]*; do
    case "$(readlink "$p/exe" 2>/dev/null)" in /opt/gleaner/*) fail "process left: $p $(tr '\0' ' ' <"$p/cmdline")" ;; esac
done
for c in /sys/fs/cgroup/*/"$croot"; do [ -e "$c" ] && fail "cgroup left: $c"; done
grep -q " /opt/gleaner" /proc/self/mountinfo && fail "mount left"
ok "uninstall.sh --force: no file, unit, process, cgroup or mount of gleaner left; another application's files intact"

# The systemd flavour (not started: this host's init is not systemd): units
# copied (a prefix on its own mount is not there when systemd loads them),
# an operator's file in the prefix survives the uninstall with its folder,
# and the uninstall runs with the agent down (a temporary agent answers).
"$work/a/gleaner/install.sh" --init systemd --no-start >/dev/null || fail "install.sh --init systemd"
printf 'listen = "127.0.0.1:%s"\ncgroup_root = "%s"\n' "$port" "$croot" >>/opt/gleaner/etc/agent.toml
for n in gleaner-agent gleaner-monitor; do
    u=/etc/systemd/system/$n.service
    [ -f "$u" ] && [ ! -L "$u" ] || fail "$u is not a copy"
    [ "$(readlink /etc/systemd/system/multi-user.target.wants/$n.service)" = "$u" ] || fail "$n not enabled"
done
grep -q '^ExecStart=/opt/gleaner/bin/gleaner-agent --config /opt/gleaner/etc/agent.toml$' /etc/systemd/system/gleaner-agent.service || fail "agent unit ExecStart"
if command -v systemd-analyze >/dev/null 2>&1; then
    out=$(systemd-analyze verify /etc/systemd/system/gleaner-agent.service /etc/systemd/system/gleaner-monitor.service 2>&1 | grep gleaner || true)
    [ -z "$out" ] || fail "systemd-analyze verify: $out"
    ok "units copied and enabled; systemd-analyze verify has nothing to say about them"
else
    ok "units copied and enabled (systemd-analyze not installed)"
fi
echo mine >/opt/gleaner/operator-notes.txt
/opt/gleaner/uninstall.sh >"$work/un2.log" 2>&1 || { cat "$work/un2.log"; fail "uninstall.sh with the agent down"; }
[ "$(find /opt/gleaner)" = "$(printf '/opt/gleaner\n/opt/gleaner/operator-notes.txt')" ] || fail "prefix after the systemd uninstall: $(find /opt/gleaner)"
rm -r /opt/gleaner
left=$(find /opt /srv /etc/init.d /etc/systemd/system -mindepth 1 \
    ! -path /etc/systemd/system/multi-user.target.wants \
    ! -path '/opt/other-app' ! -path '/opt/other-app/*' ! -path /opt/notes.txt \
    ! -path '/srv/*' ! -path /etc/init.d/other-service)
[ -z "$left" ] || fail "left after the systemd uninstall: $left"
for c in /sys/fs/cgroup/*/"$croot"; do [ -e "$c" ] && fail "cgroup left: $c"; done
check_foreign "after the systemd uninstall"
ok "systemd flavour: installed, uninstalled with the agent down; only the operator's file is left in the prefix: $(cat "$work/un2.log")"
