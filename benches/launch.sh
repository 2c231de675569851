#!/usr/bin/env bash
# Launch cost: `swarmcell run -- /bin/true` against `bwrap --unshare-all` doing
# comparable work (/usr read-only, /proc, /dev, tmpfs /tmp, the worktree bound),
# side by side in one hyperfine run. Prints both medians and the ratio.
#
#   sudo benches/launch.sh [RUNS]
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${1:-300}
[ -x "$HOME/.cargo/bin/cargo" ] && export PATH="$HOME/.cargo/bin:$PATH"
command -v hyperfine >/dev/null && command -v bwrap >/dev/null || scripts/setup
cargo build --release --quiet
bin=$PWD/target/release/swarmcell

dir=$(mktemp -d /tmp/swarmcell-bench.XXXXXXXX)
trap 'rm -rf "$dir"' EXIT
# swarmcell needs an unprivileged owner; bwrap (root mapped to root) gets a
# root-owned worktree it can enter.
mkdir "$dir/wt" "$dir/wt-bwrap" && chown 10000:10000 "$dir/wt" && chmod 0700 "$dir/wt" "$dir/wt-bwrap"
wt=$dir/wt

links=""
for l in bin sbin lib lib64; do
  [ -L "/$l" ] && links="$links --symlink $(readlink /$l) /$l"
done
bwrap_cmd="bwrap --unshare-all --die-with-parent --new-session --ro-bind /usr /usr$links --proc /proc --dev /dev --tmpfs /tmp --bind $dir/wt-bwrap $dir/wt-bwrap --chdir $dir/wt-bwrap /bin/true"
swarmcell_cmd="$bin run --worktree $wt -- /bin/true"

hyperfine --warmup 20 --runs "$runs" -N --export-csv "$dir/result.csv" \
  -n swarmcell "$swarmcell_cmd" -n bwrap "$bwrap_cmd" >&2
# csv columns: command,mean,stddev,median,user,system,min,max
awk -F, 'NR>1 { med[$1]=$4*1000 } END {
  printf "swarmcell median %.2f ms\nbwrap median %.2f ms\nratio swarmcell/bwrap %.2f\n", med["swarmcell"], med["bwrap"], med["swarmcell"]/med["bwrap"] }' "$dir/result.csv"
