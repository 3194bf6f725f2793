#!/usr/bin/env bash
# Runs the loom models of the lock-free paths: every interleaving of two
# threads, with the preemption bound each model sets (2 or 3). Models: the
# breaker's windows (clear and bucket advance against recorders), its closed
# path against transitions and reset, its half-open probe slots; the GCRA
# compare-and-swap with reservations and refunds; the drain counter against
# drain(); the adaptive limit's admission, release and queue hand-off. Built in its own target directory, since a cfg in RUSTFLAGS
# rebuilds every dependency. The cfg is `palisade_loom`, not `loom`: tokio
# reads `loom` itself and drops its `net` module under it, which hyper-util
# (a dependency of the crates' tests) needs.
set -euo pipefail
cd "$(dirname "$0")/.."
export RUSTFLAGS="--cfg palisade_loom ${RUSTFLAGS:-}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-target}/loom"
cargo test --release -p palisade-breaker -p palisade-ratelimit -p palisade-shutdown -p palisade-limit --lib loom "$@"
