#!/usr/bin/env bash
# Runs the loom models of the lock-free paths: every interleaving of a few
# threads, bounded by LOOM_MAX_PREEMPTIONS (3 by default in the models).
# Built in its own target directory: `--cfg loom` rebuilds every dependency.
set -euo pipefail
cd "$(dirname "$0")/.."
export RUSTFLAGS="--cfg loom ${RUSTFLAGS:-}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-target}/loom"
cargo test --release -p palisade-breaker --lib loom "$@"
