#!/usr/bin/env bash
# The quickstart (the main job): set up (packages, model, build), start the services on
# this machine (`arkvale serve`: one arkvale-worker with SmolLM2-135M-Instruct and one
# arkvale-coordinator), send a chat prompt through the coordinator's gRPC API
# (`arkvale generate --server`) and stream the answer, then stop the services (SIGTERM:
# the coordinator drains, the worker exits). Extra arguments go to `arkvale generate`
# (e.g. -p "your question", -n 200, --temp 0.7).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
"$root/scripts/setup.sh"
prompt="What is the capital of France? Answer in one sentence."
model="$root/models/SmolLM2-135M-Instruct.Q4_1.gguf"
log="$(mktemp -t arkvale-serve.XXXXXX)"
serve_pid=""
stop() {
  if [ -n "$serve_pid" ] && kill -0 "$serve_pid" 2>/dev/null; then
    kill -TERM "$serve_pid" 2>/dev/null || true
    wait "$serve_pid" 2>/dev/null || true
  fi
  rm -f "$log"
}
trap stop EXIT
# port 0: free ports, printed as "serving on HOST:PORT ..." once health says SERVING
"$root/build/tools/arkvale" serve --model "$model" --listen 127.0.0.1:0 >"$log" 2>&1 &
serve_pid=$!
addr=""
for _ in $(seq 1 600); do  # up to 60 s: the worker loads the model, the coordinator warms up
  addr="$(sed -n 's/^serving on \([^ ]*\).*/\1/p' "$log" | head -n 1)"
  [ -n "$addr" ] && break
  if ! kill -0 "$serve_pid" 2>/dev/null; then
    echo "quickstart: arkvale serve exited before serving:" >&2
    cat "$log" >&2
    exit 1
  fi
  sleep 0.1
done
if [ -z "$addr" ]; then
  echo "quickstart: arkvale serve did not report SERVING within 60 s:" >&2
  cat "$log" >&2
  exit 1
fi
echo "quickstart: $(sed -n 's/^\(serving on .*\)/\1/p' "$log" | head -n 1)" >&2
"$root/build/tools/arkvale" generate --server "$addr" --chat -p "$prompt" -n 96 "$@"
