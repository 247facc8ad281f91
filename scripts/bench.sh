#!/usr/bin/env bash
# `make bench` (after `make release`): runs target/release/rbee-bench, which starts its own nats-server,
# queen, hive and workers, measures every hop against its floor, prints each figure with its baseline and
# ratio, and writes BENCHMARKS.md and BENCHMARKS.json at the repository root. Logs of the processes it
# starts go to target/bench/, its output to target/bench.log.
#   ./scripts/bench.sh [--quick]      (or BENCH_ARGS=--quick make bench)
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
export PATH="$HOME/.cargo/bin:$PATH"

for bin in rbee-bench rbee-queen rbee-hive rbee-worker; do
  if [ ! -x "target/release/$bin" ]; then
    echo "bench: target/release/$bin is missing, building the release binaries"
    cargo build --release --workspace --bins
    break
  fi
done
if [ ! -x .venv/bin/nats-server ] || [ ! -f .rbee/models/SmolLM2-135M-Instruct.Q4_1.gguf ]; then
  echo "bench: nats-server or the default model is missing: run \`make setup\` first" >&2
  exit 1
fi

mkdir -p target
# The hive starts workers with GOMP_SPINCOUNT=10000 (llama.cpp's OpenMP threads spin briefly, then
# sleep); the direct llama.cpp baseline inside rbee-bench gets the same, so both sides run alike.
export GOMP_SPINCOUNT="${GOMP_SPINCOUNT:-10000}"
start=$(date +%s)
# shellcheck disable=SC2086
target/release/rbee-bench --root "$root" ${BENCH_ARGS:-} "$@" 2>&1 | tee target/bench.log
status=${PIPESTATUS[0]}
echo "bench: finished in $(( $(date +%s) - start )) s (exit $status)"
exit "$status"
