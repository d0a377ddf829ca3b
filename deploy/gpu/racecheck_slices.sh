#!/usr/bin/env bash
# racecheck_slices.sh: compute-sanitizer racecheck over a parametrized gtest suite in
# slices of a few parameters, one sanitizer run each, for suites too slow under racecheck
# to give a verdict within one device call (the attention's Mixed, Prefill and
# LongPrefill tests: notes/cuda-backend-status.md). Each slice's verdict is printed as
# it ends, so a call cut off from outside still shows what finished; --from resumes a
# later call where the last one stopped. Copied into install trees' bin/ beside
# gpu_check.sh (scripts/make_install_tree.sh).
#
#   bin/racecheck_slices.sh BINARY TEST [--size N] [--from K] [--timeout S] [--budget S]
#
#   TEST       a parametrized test without its parameter, e.g. Shapes/KnCudaAttentionGpu.Mixed
#              (its instances in gtest's listing order, N a slice)
#   --size N   parameters a slice (default 8)
#   --from K   start at slice K (default 0)
#   --timeout  seconds a slice may run (default 240): past it, "no verdict"
#   --budget   seconds for all slices (default 540): a slice is not started with less
#              than 30 s left; the next --from is printed
#   LOG_DIR=DIR  keep each slice's log there (default: a temporary dir)
# Exit status 1 when a slice reported a hazard or failed, else 0 (no verdict is not a
# failure of the code).
set -uo pipefail

if [ $# -lt 2 ] || [ "$1" = "-h" ] || [ "$1" = "--help" ]; then
  sed -n '2,/^set -uo/p' "$0" | sed '$d; s/^# \{0,1\}//'
  exit 2
fi
bin="$1"
test_name="$2"
shift 2
from=0
size=8
timeout_s=240
budget_s=540
while [ $# -gt 0 ]; do
  case "$1" in
    --from) from="${2:?--from needs a slice number}"; shift ;;
    --size) size="${2:?--size needs a count}"; shift ;;
    --timeout) timeout_s="${2:?--timeout needs seconds}"; shift ;;
    --budget) budget_s="${2:?--budget needs seconds}"; shift ;;
    *) echo "racecheck_slices: unknown option $1" >&2; exit 2 ;;
  esac
  shift
done
[ -x "$bin" ] || { echo "racecheck_slices: $bin is not an executable" >&2; exit 2; }
cs="$(command -v compute-sanitizer || ls /usr/local/cuda*/bin/compute-sanitizer 2>/dev/null | tail -n 1)"
[ -n "$cs" ] || { echo "racecheck_slices: compute-sanitizer not found" >&2; exit 2; }
log_dir="${LOG_DIR:-$(mktemp -d)}"
mkdir -p "$log_dir"

# The instances, in gtest's listing order: "Suite." then "  Name/<param>  # GetParam() = ...".
suite="${test_name%.*}"
name="${test_name##*.}"
mapfile -t params < <("$bin" --gtest_list_tests --gtest_filter="$test_name/*" 2>/dev/null |
  grep -E "^  $name/" | sed -E 's/^  ([^ ]+).*/\1/')
if [ "${#params[@]}" -eq 0 ]; then
  echo "racecheck_slices: no tests match $test_name/* in $bin" >&2
  exit 2
fi
n_slices=$(((${#params[@]} + size - 1) / size))
echo "racecheck_slices: $test_name, ${#params[@]} instances, slices $from..$((n_slices - 1)) of $size (logs in $log_dir)"

failed=0
SECONDS=0
for ((k = from; k < n_slices; k++)); do
  left=$((budget_s - SECONDS))
  if [ "$left" -lt 30 ]; then
    echo "racecheck_slices: budget spent; go on with --from $k"
    break
  fi
  filter=""
  for ((i = k * size; i < (k + 1) * size && i < ${#params[@]}; i++)); do filter+="${filter:+:}$suite.${params[i]}"; done
  t=$((timeout_s < left ? timeout_s : left))
  log="$log_dir/racecheck-slice-$k.log"
  timeout "$t" "$cs" --tool racecheck "$bin" --gtest_filter="$filter" >"$log" 2>&1
  rc=$?
  line="$(grep -E "RACECHECK SUMMARY" "$log" | tail -n 1 | sed 's/^========= //')"
  passed="$(grep -E '^\[  PASSED  \]' "$log" | tail -n 1 | sed 's/\[  PASSED  \] //')"
  if [ $rc -eq 124 ]; then
    echo "slice $k (${params[k * size]} ..): past ${t} s, no verdict"
  elif [ $rc -ne 0 ] || ! grep -qE "SUMMARY: 0 hazards" <<<"$line"; then
    echo "slice $k (${params[k * size]} ..): FAIL rc=$rc ${line:-no summary} (log $log)"
    failed=1
  else
    echo "slice $k (${params[k * size]} ..): $line, $passed [${SECONDS}s]"
  fi
done
exit "$failed"
