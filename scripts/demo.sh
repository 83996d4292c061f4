#!/usr/bin/env bash
# The main job: installs missing system packages, builds metrodr and runs the demo.
# Extra arguments go to `metrodr demo` (e.g. `--output json`).
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/install-deps.sh >&2
cargo build --release --locked -p metrodr >&2
exec ./target/release/metrodr demo "$@"
