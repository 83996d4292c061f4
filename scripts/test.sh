#!/usr/bin/env bash
# The test command: installs missing system packages, then runs formatting, lints and
# every test of the workspace. CI runs exactly this (see .ci/run).
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/install-deps.sh
# The agent tests drive real QEMU guests through the machine's libvirtd.
bash scripts/start-libvirtd.sh

echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings
echo "== cargo test"
cargo test --workspace --locked --no-fail-fast
