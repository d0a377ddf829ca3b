#!/usr/bin/env bash
# The tests: set up (packages, model, build) and run every test with ctest.
# Tests labelled `gpu` need a CUDA device and are excluded unless ARKVALE_GPU_TESTS=1.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
"$root/scripts/setup.sh"
cd "$root/build"
label_args=(-LE gpu)
[ "${ARKVALE_GPU_TESTS:-0}" = "1" ] && label_args=()
ctest --output-on-failure -j "$(nproc)" "${label_args[@]}"
