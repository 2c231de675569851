#!/usr/bin/env bash
# The daemon under load: soak (N launch+stop one after another: RSS, descriptors,
# leaked cgroups, ports, mounts, records, logs) and scale (M sandboxes at once,
# each a small HTTP server, all healthy through their brokers):
#   sudo benches/daemon.sh [N] [M]      e.g. benches/daemon.sh 1000 1001
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x "$HOME/.cargo/bin/cargo" ] && export PATH="$HOME/.cargo/bin:$PATH"
cargo build --release --quiet
exec target/release/swarmcell bench daemon --soak "${1:-1000}" --scale "${2:-1001}"
