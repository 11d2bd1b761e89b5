#!/bin/sh
# In-guest suite (busybox sh): the real static gleaner binaries against this
# kernel's cgroups. One line per check: "VMTEST PASS|FAIL <profile> <check>",
# figures as "VMTEST FIGURE <profile> <name> <value>". Exit code: failures.
P=${1:?profile}
CFG=/etc/gleaner/agent.toml
G="gleaner --config $CFG"
FAILS=0
# Figures go to the console even from inside a check's captured output.
exec 3>&1
CG=/sys/fs/cgroup
SVC_REL=system.slice/gleaner-agent.service
case $P in
    v2) VER=v2 ROOT_REL=gleaner ;;
    v2-delegated) VER=v2 ROOT_REL=$SVC_REL/gleaner ;;
    *) VER=v1 ROOT_REL=gleaner ;;
esac
case $P in hybrid|ramroot) [ -d $CG/unified ] && UNIFIED=$CG/unified ;; esac

pass() { echo "VMTEST PASS $P $1 - $2"; }
fail() { echo "VMTEST FAIL $P $1 - $2"; FAILS=$((FAILS + 1)); }
figure() { echo "VMTEST FIGURE $P $1 $2" >&3; }
# check NAME FUNC: FUNC's status decides, its last output lines are the detail.
check() {
    c0=$(uptime_cs)
    out=$("$2" 2>&1)
    rc=$?
    out="$(echo "$out" | tail -n 4 | tr '\n' ' ')[$(($(uptime_cs) - c0))0 ms]"
    if [ $rc = 0 ]; then pass "$1" "$out"; else fail "$1" "$out"; fi
}

# "key": value of the first such line of pretty JSON.
field() {
    echo "$1" | sed -n "s/^ *\"$2\": *\"\{0,1\}\([^\",]*\)\"\{0,1\},\{0,1\} *$/\1/p" | head -n 1
}
# RFC 3339 time to ms since midnight (the suite never spans midnight... nearly).
ts_ms() { echo "$1" | awk -F'[T:Z+]' '{ printf "%d\n", ($2 * 3600 + $3 * 60 + $4) * 1000 }'; }
uptime_cs() { awk '{ sub(/\./, "", $1); print $1 + 0 }' /proc/uptime; }
# The directory of cgroup REL (relative to the mount) for CONTROLLER.
cgdir() {
    if [ $VER = v2 ]; then echo "$CG/$2"; else echo "$CG/$1/$2"; fi
}
lower() { echo "$1" | tr 'A-Z' 'a-z'; }
state_of() { lower "$(field "$($G status "$1" 2>/dev/null)" state)"; }
# wait_state ID REGEX [SECONDS]
wait_state() {
    n=0
    while [ $n -lt $((${3:-60} * 5)) ]; do
        s=$(state_of "$1")
        echo "$s" | grep -Eq "^($2)\$" && return 0
        sleep 0.2
        n=$((n + 1))
    done
    echo "task $1 stayed $s (wanted $2)"
    return 1
}

agent_pid() { cat /tmp/agent.pid; }
start_agent() {
    if [ $P = v2-delegated ]; then
        # As systemd's Delegate=yes: the agent starts in its own service
        # cgroup; once the agent enabled controllers there, a restart goes
        # into the leaf (DelegateSubgroup=gleaner-agent, systemd 254+).
        dst=$CG/$SVC_REL
        [ -d $dst/gleaner-agent ] && dst=$dst/gleaner-agent
        sh -c "echo \$\$ > $dst/cgroup.procs && exec gleaner-agent --config $CFG" >>/tmp/agent.log 2>&1 &
    else
        gleaner-agent --config $CFG >>/tmp/agent.log 2>&1 &
    fi
    # A file, not a variable: checks run in subshells.
    echo $! >/tmp/agent.pid
    $G wait-healthy --timeout 120 >/tmp/healthy.log 2>&1
}

setup() {
    mkdir -p /etc/gleaner /var/lib/gleaner
    echo "vm-test-token-$P" >/etc/gleaner/token
    chmod 600 /etc/gleaner/token
    cat >$CFG <<CONF
listen = "127.0.0.1:5051"
data_dir = "/var/lib/gleaner"
cgroup_root = "gleaner"
token_file = "/etc/gleaner/token"
default_rootfs = "/srv/rootfs"
pids_limit = 64
liveness_interval_s = 1.0

[initial_reservation]
cpus = 1.5
mem_mb = 384.0
disk_mb = 0.0
CONF
    if [ $P = v2-delegated ]; then
        mkdir -p $CG/$SVC_REL
        echo "+cpu +memory +pids" >$CG/cgroup.subtree_control
        echo "+cpu +memory +pids" >$CG/system.slice/cgroup.subtree_control
    fi
}

c_features() {
    s=$($G state) || return 1
    v=$(field "$s" cgroup_version)
    p=$(field "$s" pids) o=$(field "$s" oom_kill_counter) i=$(field "$s" cpu_idle)
    echo "cgroup_version=$v pids=$p oom_kill_counter=$o cpu_idle=$i"
    # Kernel 6.1 offers all three in both versions.
    [ "$v" = $VER ] && [ "$p" = true ] && [ "$o" = true ] && [ "$i" = true ]
}

# The root switch the agent detected: only ramroot runs on the initramfs.
c_root_switch() {
    r=$(field "$($G state)" root_switch)
    want=pivot_root
    [ $P = ramroot ] && want=move_chroot
    echo "root_switch=$r (root fs: $(awk '$2 == "/" { print $3 }' /proc/mounts | tail -n 1))"
    [ "$r" = $want ]
}

c_psi() {
    if [ $P = v1-nopsi ]; then
        echo "/proc/pressure: $(ls /proc/pressure 2>&1 | head -n 1)"
        [ ! -e /proc/pressure ]
    else
        echo "/proc/pressure/cpu: $(head -n 1 /proc/pressure/cpu)"
        [ -r /proc/pressure/cpu ]
    fi
}

# Delegation: agent in its leaf, tasks below the service, nothing at the root.
c_delegation() {
    own=$(cat /proc/"$(agent_pid)"/cgroup)
    procs=$(cat $CG/$SVC_REL/cgroup.procs | tr '\n' ' ')
    sub=$(cat $CG/$SVC_REL/cgroup.subtree_control)
    echo "agent in $own; service procs [$procs]; subtree_control [$sub]"
    [ "$own" = "0::/$SVC_REL/gleaner-agent" ] && [ -z "$procs" ] &&
        echo "$sub" | grep -q memory && [ ! -e $CG/gleaner ] && [ -d $CG/$ROOT_REL/batch ]
}

c_isolated() {
    $G run --id iso --wait -- 'echo "pid=$$ uid=$(id -u) opt=$(ls -d /opt 2>/dev/null || echo none) host=$(ls /opt/gleaner 2>&1 | wc -l)"' >/dev/null
    rc=$?
    s=$($G status iso)
    cgp=$(field "$s" cgroup)
    line=$($G logs iso | tail -n 1)
    echo "exit=$rc cgroup=$cgp $line"
    [ $rc = 0 ] || return 1
    case $cgp in "$ROOT_REL"/batch/*) ;; *) return 1 ;; esac
    pid=$(echo "$line" | sed -n 's/.*pid=\([0-9]*\).*/\1/p')
    [ -n "$pid" ] && [ "$pid" -lt 10 ] && echo "$line" | grep -q 'uid=65534 opt=none'
}

usage_us() {
    if [ $VER = v2 ]; then
        awk '/^usage_usec/ { print $2 }' "$CG/$1/cpu.stat"
    else
        echo $(($(cat "$CG/cpuacct/$1/cpuacct.usage") / 1000))
    fi
}
c_cfs() {
    $G run --id cfs --cpus 0.5 --cpu-limit cfs -- 'while :; do :; done' >/dev/null || return 1
    wait_state cfs running || return 1
    cgp=$(field "$($G status cfs)" cgroup)
    sleep 2
    u0=$(usage_us "$cgp") t0=$(uptime_cs)
    sleep 10
    u1=$(usage_us "$cgp") t1=$(uptime_cs)
    $G kill cfs >/dev/null
    pm=$(((u1 - u0) / ((t1 - t0) * 10)))
    echo "usage $((pm / 10)).$((pm % 10)) % of one cpu over $((t1 - t0)) cs (limit 50 %)"
    figure cfs_usage_permille $pm
    [ $pm -ge 450 ] && [ $pm -le 550 ]
}

oom_events() {
    [ $VER = v2 ] || { echo 0; return; }
    awk '/^oom_kill / { print $2 }' "$CG/$ROOT_REL/batch/memory.events"
}
c_oom() {
    e0=$(oom_events)
    $G run --id hog --mem 32 --wait -- 'tail /dev/zero' >/dev/null
    s=$($G status hog)
    r=$(field "$s" reason) st=$(lower "$(field "$s" state)")
    a=$(ts_ms "$(field "$s" started_at)") b=$(ts_ms "$(field "$s" finished_at)")
    e1=$(oom_events)
    echo "state=$st reason=$r started->reported $((b - a)) ms; batch oom_kill $e0 -> $e1"
    figure oom_report_ms $((b - a))
    [ "$r" = memory_limit ] || return 1
    [ $VER = v1 ] || [ "$e1" -gt "$e0" ]
}

c_forkbomb() {
    # Every fork that succeeds prints one line; pids_limit is 64.
    $G run --id bomb --wait -- 'while :; do sleep 120 & echo $!; done' >/dev/null
    rc=$?
    n=$($G logs bomb | wc -l)
    err=$($G logs bomb --stream stderr | tail -n 1)
    echo "exit=$rc forks=$n stderr: $err"
    [ "$n" -ge 40 ] && [ "$n" -lt 64 ] && echo "$err" | grep -q fork
}

c_reserve() {
    $G run --id res --cpus 0.5 --mem 64 -- 'sleep 1000' >/dev/null || return 1
    wait_state res running || return 1
    out=$($G reserve batch --cpus 0.25 --mem 128 | tr '\n' ' ')
    role=$CG/$ROOT_REL/batch
    if [ $VER = v2 ]; then
        cpu=$(cat $role/cpu.max) mem=$(cat $role/memory.max)
        want_cpu="25000 100000"
    else
        cpu=$(cat $CG/cpu/$ROOT_REL/batch/cpu.cfs_quota_us)
        mem=$(cat $CG/memory/$ROOT_REL/batch/memory.limit_in_bytes)
        want_cpu=25000
    fi
    wait_state res 'killed|preempted|failed' 30
    st=$(state_of res) r=$(field "$($G status res)" reason)
    echo "reserve said: $out; cpu=[$cpu] mem=$mem; task $st/$r"
    $G reserve batch --cpus 1.5 --mem 384 >/dev/null
    [ "$cpu" = "$want_cpu" ] && [ "$mem" = 134217728 ] && echo "$out" | grep -q 'preempted res' &&
        [ "$r" = preempted ]
}

c_readopt() {
    $G run --id keep -- 'sleep 1000' >/dev/null || return 1
    wait_state keep running || return 1
    p0=$(field "$($G status keep)" pid)
    kill -9 "$(agent_pid)"
    wait "$(agent_pid)" 2>/dev/null
    kill -0 "$p0" || { echo "task died with the agent"; return 1; }
    start_agent || { echo "agent did not come back"; return 1; }
    s=$($G status keep)
    st=$(lower "$(field "$s" state)") p1=$(field "$s" pid)
    $G kill keep >/dev/null
    st2=$(state_of keep)
    echo "pid $p0 before, $st pid $p1 after the restart; then $st2"
    [ "$st" = running ] && [ "$p0" = "$p1" ] && [ "$st2" = killed ]
}

c_weight() {
    root=$(cgdir cpu "$ROOT_REL")
    idle=$(cat $root/cpu.idle 2>/dev/null)
    if [ $VER = v2 ]; then w=$(cat $root/cpu.weight); else w=$(cat $root/cpu.shares); fi
    echo "$root: cpu.idle=$idle weight/shares=$w"
    [ "$idle" = 1 ]
}

c_monitor() {
    cat >/etc/gleaner/monitor.toml <<CONF
agent = "http://127.0.0.1:5051"
role = "batch"
interval_s = 1.0
listen = "127.0.0.1:5052"
cgroup_root = "$ROOT_REL"
token_file = "/etc/gleaner/token"
CONF
    before=$($G reservations | awk '$1 == "batch" { print $2 "/" $5 }')
    gleaner-monitor --config /etc/gleaner/monitor.toml >/tmp/monitor.log 2>&1 &
    mp=$!
    # A task that uses the batch cgroup, so that the monitor's sample of
    # gleaner's own use is not empty.
    $G run --id mon --cpus 0.5 --cpu-limit cfs -- 'while :; do :; done' >/dev/null
    n=0 after=$before
    while [ $n -lt 60 ] && [ "$after" = "$before" ]; do
        sleep 1
        after=$($G reservations | awk '$1 == "batch" { print $2 "/" $5 }')
        n=$((n + 1))
    done
    m=$(wget -q -O - http://127.0.0.1:5052/metrics 2>/dev/null | grep -E '^gleaner_monitor_(agent_cpus|psi_cpu)' | tr '\n' ' ')
    kill $mp
    wait $mp 2>/dev/null
    $G kill mon >/dev/null
    psi=$(grep -io 'psi[^"]*' /tmp/monitor.log | head -n 1)
    echo "reservation cpus/mem $before -> $after after ${n}s; $m; log: $psi"
    [ "$after" != "$before" ] || return 1
    agent=$(echo "$m" | sed -n 's/.*gleaner_monitor_agent_cpus \([0-9.]*\).*/\1/p')
    # The monitor saw the task in gleaner's root cgroup.
    awk -v a="${agent:-0}" 'BEGIN { exit !(a > 0.2) }' || return 1
    if [ $P = v1-nopsi ]; then
        grep -q 'PSI unavailable' /tmp/monitor.log
    else
        ! grep -q 'PSI unavailable' /tmp/monitor.log
    fi
}

f_launch() {
    i=0 all=""
    while [ $i -lt 9 ]; do
        $G run --id "l$i" --wait -- true >/dev/null
        s=$($G status "l$i")
        a=$(ts_ms "$(field "$s" submitted_at)") b=$(ts_ms "$(field "$s" started_at)")
        all="$all $((b - a))"
        i=$((i + 1))
    done
    p50=$(echo $all | tr ' ' '\n' | sort -n | sed -n 5p)
    figure launch_p50_ms "$p50"
    echo "launch ms:$all (p50 $p50)"
}

c_cleanup() {
    for id in $($G ps --unfinished -q); do $G kill "$id" >/dev/null; done
    left=""
    for ctl in cpu memory pids; do
        [ $VER = v2 ] && [ $ctl != cpu ] && continue
        d=$(cgdir $ctl "$ROOT_REL")
        for role in $(ls $d 2>/dev/null); do
            [ -d "$d/$role" ] || continue
            for t in $(ls "$d/$role"); do [ -d "$d/$role/$t" ] && left="$left $ctl:$role/$t"; done
        done
    done
    a=$(agent_pid)
    kill "$a"
    n=0
    while kill -0 "$a" 2>/dev/null && [ $n -lt 100 ]; do sleep 0.1; n=$((n + 1)); done
    # Nothing is left running in the tree: it removes bottom-up.
    for ctl in cpu memory pids; do
        [ $VER = v2 ] && [ $ctl != cpu ] && continue
        d=$(cgdir $ctl "$ROOT_REL")
        find "$d" -depth -type d -exec rmdir {} \; 2>/dev/null
        [ -e "$d" ] && left="$left $d"
    done
    if [ $P = v2-delegated ]; then
        rmdir $CG/$SVC_REL/gleaner-agent $CG/$SVC_REL 2>/dev/null
        [ -e $CG/$SVC_REL ] && left="$left $CG/$SVC_REL"
    fi
    echo "task cgroups left after the tasks ended:${left:- none}"
    [ -z "$left" ]
}

t0=$(uptime_cs)
setup
check psi c_psi
if ! start_agent; then
    fail agent_start "$(cat /tmp/healthy.log; tail -n 3 /tmp/agent.log | tr '\n' ' ')"
    exit 1
fi
check features c_features
check root_switch c_root_switch
[ $P = v2-delegated ] && check delegation c_delegation
check isolated c_isolated
check weight c_weight
check cfs_0.5 c_cfs
check oom c_oom
check forkbomb c_forkbomb
check reserve c_reserve
check readopt c_readopt
check monitor c_monitor
f_launch
check cleanup c_cleanup
figure suite_s "$((($(uptime_cs) - t0) / 100))"
grep -iE 'error|panic|warn' /tmp/agent.log | tail -n 5 | sed "s/^/VMTEST LOG $P agent: /"
exit $FAILS
