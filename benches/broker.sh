#!/usr/bin/env bash
# The broker against direct loopback and socat, and the relay with its uid check
# against the relay without it, in one run (see src/bench/mod.rs):
#   sudo benches/broker.sh [BYTES] [PINGS] [LAUNCHES] [CONNECTIONS]     e.g. benches/broker.sh 2G 20000 20 5000
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x "$HOME/.cargo/bin/cargo" ] && export PATH="$HOME/.cargo/bin:$PATH"
command -v socat >/dev/null || scripts/setup
cargo build --release --quiet
exec target/release/swarmcell bench broker --bytes "${1:-2G}" --pings "${2:-20000}" --launches "${3:-20}" --connections "${4:-5000}"
