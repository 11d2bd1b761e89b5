#!/usr/bin/env bash
# Installs what building, the demo and the tests need, on Debian, as root.
# Idempotent; safe to run on every invocation.
set -euo pipefail
pkgs=(protobuf-compiler etcd-server etcd-client busybox-static runc curl ca-certificates gcc libc6-dev binutils pkg-config python3 python3-venv util-linux mount e2fsprogs chromium chromium-driver)
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q >/dev/null
  apt-get install -y -q "${missing[@]}" >/dev/null
fi
# The Debian etcd-server package starts a system etcd on :2379; the tests
# start their own on free ports and do not need it.
systemctl disable --now etcd >/dev/null 2>&1 || true
if ! command -v cargo >/dev/null; then
  [ -x "$HOME/.cargo/bin/cargo" ] && export PATH="$HOME/.cargo/bin:$PATH"
fi
command -v cargo >/dev/null || { echo "setup: cargo (Rust toolchain) is required" >&2; exit 1; }
# schemathesis (PyPI) for scripts/schemathesis.sh, in a venv of its own.
venv=/var/cache/gleaner/venv
if [ ! -x "$venv/bin/schemathesis" ]; then
  echo "setup: installing schemathesis into $venv"
  mkdir -p "$(dirname "$venv")"
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q schemathesis
fi
