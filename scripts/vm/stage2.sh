#!/bin/sh
# The VM's real init (on a tmpfs root; on the initramfs itself for ramroot): mounts the cgroup layout of the
# profile named on the kernel command line (gleaner.profile=), runs the
# suite, prints its result lines on the console and powers off.
export PATH=/bin:/opt/gleaner/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null
mkdir -p /dev/pts /dev/shm /tmp /run
mount -t tmpfs tmpfs /tmp
chmod 1777 /tmp
ip link set lo up 2>/dev/null || ifconfig lo 127.0.0.1 up
hostname gleaner-vm
profile=$(sed -n 's/.*gleaner\.profile=\([a-z0-9-]*\).*/\1/p' /proc/cmdline)

v1_mounts() {
    mount -t tmpfs -o mode=755 cgroup /sys/fs/cgroup
    mkdir -p /sys/fs/cgroup/cpu,cpuacct /sys/fs/cgroup/memory /sys/fs/cgroup/pids
    mount -t cgroup -o cpu,cpuacct cgroup /sys/fs/cgroup/cpu,cpuacct
    ln -s cpu,cpuacct /sys/fs/cgroup/cpu
    ln -s cpu,cpuacct /sys/fs/cgroup/cpuacct
    mount -t cgroup -o memory cgroup /sys/fs/cgroup/memory
    mount -t cgroup -o pids cgroup /sys/fs/cgroup/pids
}
case $profile in
    v2|v2-delegated)
        mount -t cgroup2 -o nsdelegate cgroup2 /sys/fs/cgroup ;;
    v1-nopsi)
        v1_mounts ;;
    hybrid|ramroot)
        v1_mounts
        mkdir -p /sys/fs/cgroup/unified
        mount -t cgroup2 -o nsdelegate cgroup2 /sys/fs/cgroup/unified ;;
    *)
        echo "VMTEST FAIL ${profile:-none} boot: unknown profile" ;;
esac
echo "VMTEST BOOTED $profile $(uname -r) up $(cut -d' ' -f1 /proc/uptime)s"
sh /vm/suite.sh "$profile"
echo "VMTEST DONE $profile rc=$? up $(cut -d' ' -f1 /proc/uptime)s"
sync
poweroff -f
