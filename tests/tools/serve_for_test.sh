#!/usr/bin/env bash
# serve_for_test.sh: `arkvale serve` (a real arkvale-worker and arkvale-coordinator
# process on loopback) behind co_test_server's protocol, so test_arkvale_client.py can
# run against the processes users start: prints "port N" once the server reports
# SERVING, serves until stdin reaches end of file, then SIGTERM (serve drains and stops
# both children) and exits with serve's status. Exit 77 (skip) when the model is absent.
#   ARKVALE_BIN=path/to/arkvale ARKVALE_MODEL=path/to/model.gguf serve_for_test.sh
set -u
bin=${ARKVALE_BIN:?set ARKVALE_BIN to the arkvale binary}
model=${ARKVALE_MODEL:-}
if [ -z "$model" ] || [ ! -f "$model" ]; then
  echo "serve_for_test: the model (ARKVALE_MODEL='$model') is absent" >&2
  exit 77
fi
log=$(mktemp -t arkvale-serve-test.XXXXXX)
# the worker shaped as co_test_server's (256-token context, 16-token pages)
"$bin" serve --model "$model" --listen 127.0.0.1:0 --worker-max-seq-tokens 256 --worker-page-tokens 16 >"$log" 2>&1 &
pid=$!
# however this script ends (the harness may kill it), serve must not outlive it
trap 'kill -TERM "$pid" 2>/dev/null' EXIT
addr=""
for _ in $(seq 1 600); do  # up to 60 s: the worker loads the model, the coordinator warms up
  addr=$(sed -n 's/^serving on \([^ ]*\).*/\1/p' "$log" | head -n 1)
  [ -n "$addr" ] && break
  if ! kill -0 "$pid" 2>/dev/null; then
    cat "$log" >&2
    rm -f "$log"
    exit 1
  fi
  sleep 0.1
done
if [ -z "$addr" ]; then
  echo "serve_for_test: no 'serving on' within 60 s" >&2
  cat "$log" >&2
  kill -TERM "$pid" 2>/dev/null
  wait "$pid"
  rm -f "$log"
  exit 1
fi
echo "port ${addr##*:}"
cat >/dev/null
kill -TERM "$pid"
wait "$pid"
rc=$?
if [ "$rc" -ne 0 ]; then cat "$log" >&2; fi
rm -f "$log"
exit "$rc"
