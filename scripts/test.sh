#!/usr/bin/env bash
# Runs every test of the workspace (unit, property, stress, end-to-end and doc
# tests). Installs the system packages the tests need when they are missing.
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
command -v redis-server >/dev/null 2>&1 || need+=(redis-server)
if [ ${#need[@]} -gt 0 ]; then
  echo "installing missing test dependencies: ${need[*]}"
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need[@]}"
fi

cargo test --workspace --all-features "$@"

# The loom models of the lock-free paths (a few minutes: mostly building the
# dependencies once more under the loom cfg). PALISADE_SKIP_LOOM=1 skips them.
if [ "${PALISADE_SKIP_LOOM:-0}" != "1" ]; then
  scripts/loom.sh
fi
