#!/usr/bin/env bash
# The README's second command: install what is needed and run every test.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
cargo build --workspace --all-targets -q
cargo test --workspace -- --test-threads=4
