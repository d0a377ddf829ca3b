#!/usr/bin/env bash
# gpu_check.sh: what a change to the CUDA backend must pass on the GPU host, in one go,
# from an install tree (scripts/make_install_tree.sh copies this file into DIR/bin/):
#   1. the `gpu` label: run_gpu_tests.sh (every bin/test_* with *Gpu* tests);
#   2. --sanitize: compute-sanitizer memcheck over each of those binaries' *Gpu* tests,
#      and racecheck over --racecheck's filter (default: the per-row sampling at a real
#      vocabulary size, greedy sampling, RMSNorm and RoPE tests, and the GEMVs' fused
#      RoPE, whose kernels share memory between warps; the other per-row sampling tests
#      launch thousands of times and give no verdict in 150 s under racecheck; tests
#      that run cuBLASLt are left out: its nvjet kernels report hazards of their own);
#   3. --model PATH: the tests that need the default model (ARKVALE_MODEL=PATH):
#      test_wk_forward_cuda and test_wk_service_cuda whole (memcheck too with
#      --sanitize), and `arkvale generate --device cuda` on the quickstart's question;
#   4. --benches DIR (with --model; run from the repository root): bench_passkey
#      --device cuda at the committed CPU run's size (ctx 1024,2048, 20 depths, budgets
#      128,256,512), its per-depth cells compared with --passkey-ref's (default
#      bench/results/passkey-2026-11-25.md, the CPU run), and bench_estimator --forced
#      (the same tokens on both) on cuda and on cpu over the repository's docs, their
#      mean-accuracy rows compared; the three reports go to DIR.
# Then one summary line per check. Exit status 1 when any check failed (a passkey or
# estimator difference is reported, not failed: bf16 on the GPU, Q4_1 on the CPU).
#
#   bin/gpu_check.sh [--sanitize] [--jobs J] [--racecheck FILTER] [--model PATH]
#                    [--model-only] [--benches DIR] [--passkey-ref FILE] [--timeout S]
#
#   --jobs J      run J sanitizer runs of step 2 at once (default 1), a binary's memcheck
#                 cut into gtest shards of at most 128 tests: one at a time, step 2 does not
#                 fit a device call after the label (session 13: the label alone took 560 s
#                 beside a racecheck); at 12 on the 16-core host it took 66 s
#   --model-only  skip 1. and 2. (the second call of a two-call check, deploy/gpu/README.md,
#                 after the first ran them): only 3., with memcheck when --sanitize
#   --timeout S   per sanitizer run (default 240): a run past it is reported as such,
#                 not as a failure of the code
#   LOG_DIR=DIR   keep every log there (default: a temporary dir; $OUT on the device tool)
#   COMPUTE_SANITIZER=PATH  the sanitizer (default: on PATH, else /usr/local/cuda*/bin)
# A tree made with --gzip is unpacked first. The model is ~98 MiB, over the device
# tool's carry limit with the tree: deploy/gpu/README.md says how it goes in two parts.
set -uo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
tree="$(dirname "$here")"
sanitize=0
racecheck_filter='*Gpu*SampleRowsLogprob*:*Gpu*SampleRowsEqualScalarLaunchesOnce*:*Gpu*Greedy*:*Gpu*Rmsnorm*:*OpsGpu*Rope*:*GemmCacheGpu.RopeInTheGemv*'
model_only=0
model=""
benches=""
passkey_ref="bench/results/passkey-2026-11-25.md"
timeout_s=240
jobs=1
while [ $# -gt 0 ]; do
  case "$1" in
    --sanitize) sanitize=1 ;;
    --racecheck) racecheck_filter="${2:?--racecheck needs a gtest filter}"; shift ;;
    --model) model="${2:?--model needs a path}"; shift ;;
    --model-only) model_only=1 ;;
    --benches) benches="${2:?--benches needs a directory}"; shift ;;
    --passkey-ref) passkey_ref="${2:?--passkey-ref needs a file}"; shift ;;
    --timeout) timeout_s="${2:?--timeout needs seconds}"; shift ;;
    --jobs) jobs="${2:-}"; [[ "$jobs" =~ ^[1-9][0-9]*$ ]] || { echo "gpu_check: --jobs needs a positive count" >&2; exit 2; }; shift ;;
    -h|--help) sed -n '2,/^set -uo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) echo "gpu_check: unknown option $1" >&2; exit 2 ;;
  esac
  shift
done
if [ "$model_only" -eq 1 ] && [ -z "$model" ]; then
  echo "gpu_check: --model-only needs --model PATH" >&2
  exit 2
fi
if [ -n "$benches" ] && [ -z "$model" ]; then
  echo "gpu_check: --benches needs --model PATH" >&2
  exit 2
fi
if [ -n "$model" ] && [ ! -f "$model" ]; then
  echo "gpu_check: --model $model: no such file" >&2
  exit 2
fi
log_dir="${LOG_DIR:-$(mktemp -d)}"
mkdir -p "$log_dir"

# a --gzip tree: unpack in place (idempotent)
if find "$tree/bin" "$tree/lib" -name '*.gz' -print -quit 2>/dev/null | grep -q .; then
  find "$tree/bin" "$tree/lib" -name '*.gz' -exec gunzip -f {} +
  chmod +x "$tree"/bin/* 2>/dev/null
fi

# Each verdict is printed as it comes, so a run stopped from outside (the device tool's
# per-call limit) still shows what finished, and kept in a file, so that sanitizer runs
# in the background (--jobs) add theirs to the summary too.
verdicts="$log_dir/verdicts.txt"
: >"$verdicts"
note() { echo "ok $1" >>"$verdicts"; echo "-- $1"; }
fail() { echo "FAIL $1" >>"$verdicts"; echo "-- $1"; }

cs="${COMPUTE_SANITIZER:-$(command -v compute-sanitizer || ls /usr/local/cuda*/bin/compute-sanitizer 2>/dev/null | tail -n 1)}"

# One sanitizer run (sanitizer_run.sh) and its verdict line.
. "$here/sanitizer_run.sh" || exit 2
sanitized() { # tool binary filter label [env...]
  local tool="$1" bin="$2" filter="$3" label="$4"
  shift 4
  local log="$log_dir/$tool-$(basename "$bin")-${label//[ \/]/_}.log" what
  what="$tool $(basename "$bin") ($label)"
  sanitizer_run "$tool" "$timeout_s" "$log" "$bin" "$filter" "$@"
  case "$san_verdict" in
    none) note "$what: past ${timeout_s} s, no verdict ($san_summary)" ;;
    fail) fail "$what: FAIL rc=$san_rc ${san_summary:-no summary} (log $log)" ;;
    *) note "$what: $san_summary, $san_passed" ;;
  esac
}

if [ "$model_only" -eq 0 ]; then # steps 1 and 2 (not indented: long)
# 1. the gpu label
if LOG_DIR="$log_dir" "$here/run_gpu_tests.sh" >"$log_dir/run_gpu_tests.txt" 2>&1; then
  note "gpu label: $(grep -E '^== [0-9]+ binaries' "$log_dir/run_gpu_tests.txt" | sed 's/^== //')"
else
  fail "gpu label: FAIL (see run_gpu_tests.txt)"
fi
grep -E "^test_" "$log_dir/run_gpu_tests.txt"

# 2. sanitizers over the *Gpu* tests
if [ "$sanitize" -eq 1 ]; then
  if [ -z "$cs" ]; then
    fail "sanitizers: compute-sanitizer not found"
  else
    # One slot of --jobs for each run; with one job, each runs in the foreground.
    in_slot() {
      if [ "$jobs" -eq 1 ]; then "$@"; return; fi
      while [ "$(jobs -rp | wc -l)" -ge "$jobs" ]; do wait -n; done
      "$@" &
    }
    for t in "$here"/test_*; do
      [ -x "$t" ] || continue
      n_gpu="$("$t" --gtest_list_tests --gtest_filter='*Gpu*' 2>/dev/null | grep -c '^  ')"
      [ "$n_gpu" -gt 0 ] || continue
      shards=1
      [ "$jobs" -gt 1 ] && shards=$(((n_gpu + 127) / 128))
      if [ "$shards" -eq 1 ]; then
        in_slot sanitized memcheck "$t" '*Gpu*' 'Gpu'
      else
        for ((i = 0; i < shards; i++)); do
          in_slot sanitized memcheck "$t" '*Gpu*' "Gpu shard $((i + 1))/$shards" \
            GTEST_TOTAL_SHARDS="$shards" GTEST_SHARD_INDEX="$i"
        done
      fi
      if "$t" --gtest_list_tests --gtest_filter="$racecheck_filter" 2>/dev/null | grep -q '^  '; then
        in_slot sanitized racecheck "$t" "$racecheck_filter" 'racecheck filter'
      fi
    done
    wait
  fi
fi
fi

# 3. with the model
if [ -n "$model" ]; then
  for t in test_wk_forward_cuda test_wk_service_cuda; do
    [ -x "$here/$t" ] || { fail "$t: not in the tree"; continue; }
    if ARKVALE_MODEL="$model" "$here/$t" >"$log_dir/$t-model.log" 2>&1; then
      note "$t with the model: $(grep -E '^\[  PASSED  \]' "$log_dir/$t-model.log" | sed 's/\[  PASSED  \] //')"
    else
      fail "$t with the model: FAIL ($(grep -oE '^\[  FAILED  \] [0-9]+ tests?' "$log_dir/$t-model.log" | grep -oE '[0-9]+' || echo "?") failed; log $log_dir/$t-model.log)"
    fi
    if [ "$sanitize" -eq 1 ] && [ -n "$cs" ]; then sanitized memcheck "$here/$t" '*' 'model' ARKVALE_MODEL="$model"; fi
  done
  if [ -x "$here/arkvale" ]; then
    out="$("$here/arkvale" generate -m "$model" --device cuda --chat -p "What is the capital of France?" --temp 0 \
      -n 16 2>"$log_dir/generate.err")"
    if grep -q "Paris" <<<"$out"; then note "arkvale generate --device cuda: $(head -n 1 <<<"$out")"
    else fail "arkvale generate --device cuda: no 'Paris' in: $out $(tail -n 2 "$log_dir/generate.err")"; fi
  fi
fi

# 4. the quality benches on the GPU against the CPU
if [ -n "$benches" ]; then
  mkdir -p "$benches"
  pk="$benches/passkey-cuda.md"
  if "$here/bench_passkey" --model "$model" --device cuda --ctx 1024,2048 --depths 20 --budgets 128,256,512 \
    --out "$pk" >"$log_dir/passkey.log" 2>&1; then
    if [ -f "$passkey_ref" ]; then
      note "bench_passkey --device cuda: $("$here/compare_reports.sh" passkey "$passkey_ref" "$pk")"
    else
      note "bench_passkey --device cuda: $pk (no $passkey_ref to compare with)"
    fi
  else
    fail "bench_passkey --device cuda: FAIL ($(tail -n 1 "$log_dir/passkey.log"))"
  fi
  texts=()
  for f in README.md bench/README.md bench/passkey/README.md bench/estimator/README.md deploy/gpu/README.md \
    notes/cuda-backend-status.md; do
    [ -f "$f" ] && texts+=(--text "$f")
  done
  ok=1
  for dev in cuda cpu; do
    "$here/bench_estimator" --model "$model" --device "$dev" --forced --threads 0 "${texts[@]}" \
      --out "$benches/estimator-$dev-forced.md" >"$log_dir/estimator-$dev.log" 2>&1 ||
      { ok=0; fail "bench_estimator --device $dev: FAIL ($(tail -n 1 "$log_dir/estimator-$dev.log"))"; }
  done
  [ "$ok" -eq 1 ] && note "bench_estimator --forced, cuda vs cpu: $("$here/compare_reports.sh" estimator \
    "$benches/estimator-cpu-forced.md" "$benches/estimator-cuda-forced.md")"
fi

echo "== gpu_check summary ($(nvidia-smi --query-gpu=name,driver_version --format=csv,noheader 2>/dev/null | head -n 1); logs in $log_dir)"
sed -E 's/^(ok|FAIL) //' "$verdicts"
! grep -q '^FAIL ' "$verdicts"
