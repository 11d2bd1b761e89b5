# Sourced by bench/launch and bench/throughput: where their agents' data
# dirs (and runc's bundle) live.
#   BENCH_FS=journal (default): a fresh ext4 *with* a journal on a sparse
#     loop file under /var/tmp, mounted for the run and removed after, as a
#     host's data dir would be (ext4 or xfs, journaled).
#   BENCH_FS=host: $TMPDIR (or /tmp) as it is.
# Why: this VM's root file system is ext4 without a journal, where every
# file creation steps over each inode of its group deleted in the last
# 60-360 s (ext4's recently_deleted(), skipped when there is a journal).
# Measured here: 2 s after 5,000 deletions a create took 1.41 ms on the
# root fs and 14 us on a journaled ext4 (bench/RESULTS.md). A benchmark
# that creates and deletes task files then measures its own churn (and
# the previous test run's): the launch's file steps went 0.2 -> 1.6 ms
# between two runs of the same code.
bench_fs_probe() {
    python3 - "${TMPDIR:-/tmp}" <<'PY'
import os, sys, tempfile, time
d = tempfile.mkdtemp(dir=sys.argv[1])
ts = []
for i in range(200):
    t = time.perf_counter()
    os.close(os.open(f"{d}/f{i}", os.O_CREAT | os.O_WRONLY, 0o600))
    ts.append(time.perf_counter() - t)
for i in range(200):
    os.unlink(f"{d}/f{i}")
os.rmdir(d)
ts.sort()
print(f"{ts[100] * 1e6:.1f}")
PY
}

bench_fs_teardown() {
    [ -n "${BENCH_FS_DIR:-}" ] || return 0
    echo "file create p50 in the data dirs' fs after the run: $(bench_fs_probe) us"
    # Whatever a killed run left mounted below (a task bind) goes first.
    { grep -oE " ${BENCH_FS_DIR}/[^ ]*" /proc/mounts || true; } | sort -r | while read -r m; do
        umount -l "$m" || true
    done
    umount "$BENCH_FS_DIR" 2>/dev/null || umount -l "$BENCH_FS_DIR" || true
    rmdir "$BENCH_FS_DIR" 2>/dev/null || true
    rm -f "$BENCH_FS_IMG"
    rmdir "$BENCH_FS_HOME" 2>/dev/null || true
    BENCH_FS_DIR=
    return 0
}

bench_fs_setup() {
    case "${BENCH_FS:-journal}" in
        host) ;;
        journal)
            # A dir of its own (made by mktemp, root's; 0755 so that task
            # users can reach their sandboxes below) holds the image and
            # the mount point: no name in /var/tmp another user could plant.
            BENCH_FS_HOME=$(mktemp -d /var/tmp/gleaner-benchfs.XXXXXX)
            chmod 755 "$BENCH_FS_HOME"
            BENCH_FS_IMG="$BENCH_FS_HOME/fs.img"
            BENCH_FS_DIR="$BENCH_FS_HOME/mnt"
            trap bench_fs_teardown EXIT
            truncate -s 8G "$BENCH_FS_IMG"
            mkfs.ext4 -q -F "$BENCH_FS_IMG"
            mkdir "$BENCH_FS_DIR"
            mount -o loop "$BENCH_FS_IMG" "$BENCH_FS_DIR"
            chmod 1777 "$BENCH_FS_DIR"
            export TMPDIR="$BENCH_FS_DIR"
            ;;
        *)
            echo "BENCH_FS: journal or host, not ${BENCH_FS}" >&2
            exit 2
            ;;
    esac
    echo "data dirs in ${TMPDIR:-/tmp} (BENCH_FS=${BENCH_FS:-journal}); file create p50 there before the run: $(bench_fs_probe) us"
}
