#!/usr/bin/env bash
# Temporal's overhead on agent launches: 4 simulated hosts (daemon + worker
# each) and Temporal's dev server on this machine; AGENTS small-HTTP agents
# launched and stopped through the control sockets directly, then through
# Temporal on the hosts' own queues, then through the shared queue
# (benches/temporal_bench.py; bounded to 10 minutes):
#   sudo benches/temporal.sh [AGENTS] [HOSTS]      e.g. benches/temporal.sh 200 4
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x "$HOME/.cargo/bin/cargo" ] && export PATH="$HOME/.cargo/bin:$PATH"
[ -x /opt/swarmcell/temporal-venv/bin/temporal ] || scripts/setup
cargo build --release --quiet --workspace
exec /opt/swarmcell/temporal-venv/bin/python benches/temporal_bench.py "$PWD/target/release/swarmcell" "$PWD/target/release/swarmcell-worker" "${1:-200}" "${2:-4}"
