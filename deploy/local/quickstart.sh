#!/usr/bin/env bash
# The quickstart (the main job): set up (packages, model, build) and have SmolLM2-135M-Instruct answer
# a chat prompt, computed by arkvale's own C engine. Extra arguments go to
# `arkvale generate` (e.g. -p "your question", -n 200, --temp 0.7).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
"$root/scripts/setup.sh"
prompt="What is the capital of France? Answer in one sentence."
args=("$@")
exec "$root/build/tools/arkvale" generate -m "$root/models/SmolLM2-135M-Instruct.Q4_1.gguf" --chat \
  -p "$prompt" -n 96 "${args[@]}"
