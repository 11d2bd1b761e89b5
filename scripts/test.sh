#!/usr/bin/env bash
# The README's second command: install what is needed and run every test.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
cargo build --workspace --all-targets -q
# The static tarball, for the packaging tests (a release build of its own).
GLEANER_TARBALL=$(pwd)/$(bash packaging/build-tarball.sh)
export GLEANER_TARBALL
log=$(mktemp)
trap 'rm -f "$log"' EXIT
# No doc-tests: the crates have none, and an empty run would close the log.
set +e
cargo test --workspace --no-fail-fast --lib --bins --tests -- --test-threads=4 2>&1 | tee "$log"
status=${PIPESTATUS[0]}
set -e
# The API against its OpenAPI document, with schemathesis (one more test).
if bash scripts/schemathesis.sh >"$log.st" 2>&1; then st_ok=1; else st_ok=0; status=1; fi
tail -25 "$log.st"; rm -f "$log.st"
# The kernel-profile suite in VMs (v2, v2 delegated, v1 without PSI, hybrid)
# on the tarball's binaries: about 4 min on the 2-core CI host, 2 VMs at a
# time. GLEANER_VM_TESTS=0 skips it.
vm_status=0
if [ "${GLEANER_VM_TESTS:-1}" != 0 ]; then
    bash scripts/vm-test.sh || vm_status=1
fi
passed=$(grep -Eo '^test result: .* ([0-9]+) passed' "$log" | grep -Eo '[0-9]+ passed' | awk '{s+=$1} END {print s+0}')
failed=$(grep -Eo '; [0-9]+ failed' "$log" | grep -Eo '[0-9]+' | awk '{s+=$1} END {print s+0}')
passed=$((passed + st_ok)); failed=$((failed + 1 - st_ok))
echo "tests: $passed passed, $failed failed"
[ "$status" != 0 ] && exit "$status"
exit "$vm_status"
