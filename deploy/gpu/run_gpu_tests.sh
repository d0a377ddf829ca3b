#!/usr/bin/env bash
# run_gpu_tests.sh: runs the GPU tests of an install tree (scripts/make_install_tree.sh
# copies this file into DIR/bin/): every bin/test_* binary that has tests matching
# the filter (default '*Gpu*', the suites the ctest label `gpu` marks) runs once,
# and one line per binary says PASS, FAIL or skip; failures show gtest's FAILED lines
# and the end of the log. Exit status 1 when any binary failed.
#
#   bin/run_gpu_tests.sh [--filter PATTERN] [--all] [gtest args...]
#
#   --filter PATTERN  a gtest filter instead of '*Gpu*'
#   --all             every test ('*'): tests that read the model or golden files
#                     look for them at the build machine's paths and fail elsewhere
#   LOG_DIR=DIR       keep each binary's full log there (default: a temporary dir)
set -uo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
filter='*Gpu*'
pass_args=()
while [ $# -gt 0 ]; do
  case "$1" in
    --filter) filter="$2"; shift ;;
    --all) filter='*' ;;
    *) pass_args+=("$1") ;;
  esac
  shift
done
log_dir="${LOG_DIR:-$(mktemp -d)}"
mkdir -p "$log_dir"

echo "== devices"
nvidia-smi -L 2>&1 || echo "(nvidia-smi failed: no driver?)"
echo "== tests matching '$filter' (logs in $log_dir)"
n_pass=0
n_fail=0
for t in "$here"/test_*; do
  [ -x "$t" ] || continue
  name="$(basename "$t")"
  log="$log_dir/$name.log"
  if ! list="$("$t" --gtest_list_tests --gtest_filter="$filter" 2>&1)"; then
    printf '%-28s FAIL (cannot list its tests)\n' "$name"
    echo "$list" | tail -n 5 | sed 's/^/    /'
    n_fail=$((n_fail + 1))
    continue
  fi
  n_tests="$(echo "$list" | grep -c '^  ' || true)"
  if [ "$n_tests" -eq 0 ]; then
    printf '%-28s skip (no matching tests)\n' "$name"
    continue
  fi
  t0="$(date +%s.%N)"
  "$t" --gtest_filter="$filter" "${pass_args[@]+"${pass_args[@]}"}" >"$log" 2>&1
  rc=$?
  secs="$(awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }')"
  if [ $rc -eq 0 ]; then
    printf '%-28s PASS (%d tests, %s s)\n' "$name" "$n_tests" "$secs"
    n_pass=$((n_pass + 1))
  else
    printf '%-28s FAIL (exit %d, %d tests, %s s)\n' "$name" "$rc" "$n_tests" "$secs"
    # The first assertions that failed, with their messages, then the failed tests.
    grep -m 3 -A 4 ': Failure$' "$log" | sed 's/^/    /'
    failed="$(grep -E '^\[  FAILED  \] [^ ]+' "$log" | grep -Ev ' ms\)$|listed below' | sed 's/, where GetParam.*//' | sort -u)"
    echo "    $(echo "$failed" | grep -c . || true) failed tests, the first:"
    echo "$failed" | head -n 12 | sed 's/^/    /'
    [ -n "$failed" ] || tail -n 25 "$log" | sed 's/^/    /' # a crash: the end of the log
    n_fail=$((n_fail + 1))
  fi
done
echo "== $n_pass binaries passed, $n_fail failed"
[ "$n_fail" -eq 0 ]
