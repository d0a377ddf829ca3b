#!/usr/bin/env bash
# Create (once, cached) the Python venv holding the independent reference
# implementation (llama.cpp via llama-cpp-python) used by tests/reference/
# and bench/cpu_generate/.  Idempotent: does nothing if the venv already
# imports the pinned packages.
#
#   tests/reference/setup_venv.sh          # -> prints the venv path on stdout
#   VENV=$(tests/reference/setup_venv.sh)  # then: "$VENV/bin/python" ...
#
# llama-cpp-python is built from source with -DGGML_NATIVE=ON, so the venv
# is specific to the machine (CPU features) it was built on.
set -euo pipefail

LLAMA_CPP_PYTHON_VERSION=0.3.36
CACHE="${ARKVALE_CACHE:-$HOME/.cache/arkvale}"
VENV="$CACHE/refvenv"
PY="${PYTHON:-python3}"

check() {
    [ -x "$VENV/bin/python" ] &&
    "$VENV/bin/python" - "$LLAMA_CPP_PYTHON_VERSION" >/dev/null 2>&1 <<'PYEOF'
import sys
import llama_cpp, gguf, numpy  # noqa: F401
sys.exit(0 if llama_cpp.__version__ == sys.argv[1] else 1)
PYEOF
}

if check; then
    echo "$VENV"
    exit 0
fi

echo "setup_venv: creating/updating $VENV (llama-cpp-python==$LLAMA_CPP_PYTHON_VERSION, built from source; takes a few minutes)" >&2
mkdir -p "$CACHE"
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
"$VENV/bin/python" -m pip install --quiet --upgrade pip >&2
CMAKE_ARGS="${CMAKE_ARGS:--DGGML_NATIVE=ON}" \
    "$VENV/bin/python" -m pip install --no-binary llama-cpp-python \
    "llama-cpp-python==$LLAMA_CPP_PYTHON_VERSION" gguf numpy >&2

if ! check; then
    echo "setup_venv: ERROR: $VENV still cannot import llama_cpp==$LLAMA_CPP_PYTHON_VERSION, gguf, numpy" >&2
    exit 1
fi
echo "$VENV"
