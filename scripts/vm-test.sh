#!/usr/bin/env bash
# scripts/vm-test.sh [PROFILE...]: the in-guest suite (scripts/vm/suite.sh)
# against the real static binaries, in qemu (TCG: nested KVM hangs here) on
# Debian's 6.1 kernel, once per kernel profile:
#   v2            cgroup_no_v1=all, the agent in the root cgroup
#   v2-delegated  cgroup_no_v1=all, the agent started in a delegated
#                 system.slice/gleaner-agent.service as systemd's Delegate=yes
#   v1-nopsi      v1 hierarchies only (no cgroup2 mounted), psi=0
#   hybrid        v1 controllers + an empty cgroup2 at unified/ (as the CI host)
#   ramroot       hybrid, but the guest never leaves its initramfs (diskless
#                 hosts): pivot_root is refused, the agent must move + chroot
# Prints one PASS/FAIL line per check per profile; exits 1 on any FAIL or a
# VM that did not finish. Binaries: GLEANER_VM_BIN=dir, else GLEANER_TARBALL's
# bin/, else a static release build into target/x86_64-unknown-linux-gnu.
set -euo pipefail
cd "$(dirname "$0")/.."
profiles=("$@")
[ ${#profiles[@]} -gt 0 ] || profiles=(v2 v2-delegated v1-nopsi hybrid ramroot)
timeout_s=${GLEANER_VM_TIMEOUT_S:-900}

pkgs=(qemu-system-x86 linux-image-amd64 busybox-static cpio)
missing=()
for p in "${pkgs[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
    echo "vm-test: installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q >/dev/null
    apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null
fi
kernel=$(ls /boot/vmlinuz-*-amd64 | sort -V | tail -n 1)
[ -r "$kernel" ] || { echo "vm-test: no Debian kernel under /boot" >&2; exit 1; }

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
if [ -n "${GLEANER_VM_BIN:-}" ]; then
    bin=$GLEANER_VM_BIN
elif [ -n "${GLEANER_TARBALL:-}" ]; then
    tar -xzf "$GLEANER_TARBALL" -C "$work"
    bin=$work/gleaner/bin
else
    target=x86_64-unknown-linux-gnu
    RUSTFLAGS="-C target-feature=+crt-static -C relocation-model=static" \
        cargo build --release --target $target -p gleaner-agent -p gleaner-monitor --bins -q
    bin=target/$target/release
fi

# The initramfs: busybox, the binaries, the suite, and a task rootfs.
root=$work/root
bash scripts/make-busybox-rootfs.sh "$root"
bash scripts/make-busybox-rootfs.sh "$root/srv/rootfs"
mkdir -p "$root"/{sys,run,var,opt/gleaner/bin,vm,etc/gleaner}
for b in gleaner-agent gleaner-monitor gleaner; do
    install -m 755 "$bin/$b" "$root/opt/gleaner/bin/$b"
done
install -m 755 scripts/vm/init "$root/init"
install -m 644 scripts/vm/stage2.sh scripts/vm/suite.sh "$root/vm/"
mknod -m 600 "$root/dev/console" c 5 1
# Binaries from before issue 18 panicked without a CA store; harmless since.
mkdir -p "$root/etc/ssl/certs"
cp /etc/ssl/certs/ca-certificates.crt "$root/etc/ssl/certs/"
(cd "$root" && find . | cpio -o -H newc --quiet) >"$work/initrd.cpio"

declare -A args=(
    [v2]="cgroup_no_v1=all psi=1"
    [v2-delegated]="cgroup_no_v1=all psi=1"
    [v1-nopsi]="psi=0"
    [hybrid]="psi=1"
    [ramroot]="psi=1 gleaner.ramroot"
)
for p in "${profiles[@]}"; do
    [ -n "${args[$p]+x}" ] || { echo "vm-test: unknown profile $p" >&2; exit 2; }
done

# One VM: its console log, and "passed failed seconds" in $work/$p.res.
run_profile() {
    local p=$1 log=$work/$1.log start took
    start=$(date +%s)
    timeout "$timeout_s" qemu-system-x86_64 -accel tcg -cpu max -m 1024 -smp 2 \
        -display none -serial stdio -monitor none -no-reboot \
        -kernel "$kernel" -initrd "$work/initrd.cpio" \
        -append "console=ttyS0 panic=-1 quiet gleaner.profile=$p ${args[$p]}" \
        </dev/null 2>&1 | sed -u 's/\r$//' >"$log" || true
    took=$(($(date +%s) - start))
    if ! grep -q "^VMTEST DONE $p" "$log"; then
        echo "VMTEST FAIL $p vm - did not finish in ${timeout_s}s" >>"$log"
    fi
    echo "$(grep -c '^VMTEST PASS' "$log") $(grep -c '^VMTEST FAIL' "$log") $took" >"$work/$p.res"
}

# VMs in parallel (each is one emulated 2-cpu guest): GLEANER_VM_JOBS, 2 by default.
jobs_max=${GLEANER_VM_JOBS:-2}
t0=$(date +%s)
for p in "${profiles[@]}"; do
    while [ "$(jobs -rp | wc -l)" -ge "$jobs_max" ]; do wait -n || true; done
    run_profile "$p" &
done
wait
fails=0
summary=()
for p in "${profiles[@]}"; do
    log=$work/$p.log
    grep '^VMTEST' "$log" || true
    read -r n_pass n_fail took <"$work/$p.res"
    if grep -q "^VMTEST FAIL $p vm " "$log"; then
        echo "console tail of $p:"
        grep -v '^VMTEST' "$log" | tail -n 20
    fi
    if [ -n "${GLEANER_VM_LOG_DIR:-}" ]; then
        mkdir -p "$GLEANER_VM_LOG_DIR" && cp "$log" "$GLEANER_VM_LOG_DIR/"
    fi
    fails=$((fails + n_fail))
    summary+=("$p: $n_pass passed, $n_fail failed, ${took}s")
done
printf 'vm-test: %s\n' "${summary[@]}"
echo "vm-test: $((fails)) failed, $(($(date +%s) - t0))s for ${#profiles[@]} profiles, $jobs_max at a time"
[ "$fails" = 0 ]
