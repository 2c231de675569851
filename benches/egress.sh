#!/usr/bin/env bash
# Outbound forward and egress proxy against direct loopback, in one run:
#   sudo benches/egress.sh [BYTES]      e.g. benches/egress.sh 1G
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x "$HOME/.cargo/bin/cargo" ] && export PATH="$HOME/.cargo/bin:$PATH"
cargo build --release --quiet
exec target/release/swarmcell bench egress --bytes "${1:-1G}"
