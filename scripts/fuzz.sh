#!/usr/bin/env bash
# scripts/fuzz.sh [SECONDS]: fuzzes the rootfs unpacker (cargo-fuzz,
# libFuzzer) for SECONDS (default 300). The repo keeps only the seed corpus
# (rootfs-tools/fuzz/corpus/unpack); what the run finds goes to a temp dir.
# The toolchain is stable: RUSTC_BOOTSTRAP lets cargo-fuzz pass its -Z
# flags, and -s none skips the sanitizer (ASan needs a nightly std).
set -euo pipefail
cd "$(dirname "$0")/../rootfs-tools"
secs=${1:-300}
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz -q
work=$(mktemp -d /tmp/gleaner-fuzz.XXXXXX)
trap 'rm -rf "$work"; rm -rf /dev/shm/gleaner-fuzz-*' EXIT
RUSTC_BOOTSTRAP=1 cargo fuzz run unpack -s none "$work" fuzz/corpus/unpack -- \
    -max_total_time="$secs" -max_len=8192 -print_final_stats=1 2>&1 | grep -E "^(#[0-9]+\s+DONE|stat::|INFO: Running|==|SUMMARY|Done)" || true
echo "fuzz: corpus grew to $(ls "$work" | wc -l) inputs; crashes would be in rootfs-tools/fuzz/artifacts/unpack/"
ls fuzz/artifacts/unpack 2>/dev/null | head
