#!/usr/bin/env bash
# Replay one seed of the deterministic simulation (witness/tests/sim.rs)
# exactly: tokio's own randomness (the branch order of `select!`) is seeded
# by turmoil only in a `--cfg tokio_unstable` build, which lives in its own
# target dir so it does not invalidate the normal one.
#
#   witness/tests/sim/replay.sh SEED [RUST_LOG filter]
#
# Runs the seed twice and says whether both runs produced the same trace.
set -euo pipefail
seed="${1:?usage: witness/tests/sim/replay.sh SEED [RUST_LOG]}"
cd "$(dirname "$0")/../../.."
export RUSTFLAGS="${RUSTFLAGS:-} --cfg tokio_unstable"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-target/sim-replay}"
if [[ -n "${2:-}" ]]; then export RUST_LOG="$2"; fi
WITNESS_SIM_SEED="$seed" exec cargo test -p witness --test sim -- --nocapture
