#!/usr/bin/env bash
# deploy/gpu/gpu_check.sh's label and sanitizer steps on a stand-in install tree: gtest-like
# binaries (listing, filters, shards) that record which tests ran under which tool, and
# fake_compute_sanitizer.sh, which reports an error for tests named *Bad* and counts how
# many of its runs overlap. CPU only: the real sanitizer runs on the GPU host.
set -uo pipefail
script="${1:?usage: test_gpu_check.sh PATH/gpu_check.sh}"
. "$(dirname "${BASH_SOURCE[0]}")/harness.sh"

tree="$work/tree"
mkdir -p "$tree/bin" "$tree/lib"
cp "$script" "$(dirname "$script")/run_gpu_tests.sh" "$(dirname "$script")/sanitizer_run.sh" "$tree/bin/"

# fake_test NAME TEST...: a binary whose tests are TEST... (Suite.Name). It lists those
# matching --gtest_filter (':'-separated globs), runs its GTEST_SHARD_INDEX-th share of
# them, appends "TOOL TEST" per test run to $FAKE_STATE/ran and says PASSED like gtest.
fake_test() {
  local name="$1"
  shift
  {
    echo '#!/usr/bin/env bash'
    echo "tests=($*)"
    cat <<'BIN'
filter='*'
for a in "$@"; do
  case "$a" in
    --gtest_list_tests) list=1 ;;
    --gtest_filter=*) filter="${a#--gtest_filter=}" ;;
  esac
done
matched=()
for t in "${tests[@]}"; do
  IFS=':' read -ra pats <<<"$filter"
  for p in "${pats[@]}"; do
    # shellcheck disable=SC2053
    if [[ "$t" == $p ]]; then matched+=("$t"); break; fi
  done
done
if [ -n "${list:-}" ]; then
  for t in "${matched[@]}"; do echo "${t%%.*}."; echo "  ${t#*.}"; done
  exit 0
fi
n=0
for i in "${!matched[@]}"; do
  [ $((i % ${GTEST_TOTAL_SHARDS:-1})) -eq "${GTEST_SHARD_INDEX:-0}" ] || continue
  echo "${FAKE_TOOL:-plain} ${matched[$i]}" >>"$FAKE_STATE/ran"
  [[ "${matched[$i]}" == *Bad* ]] && echo "FAKE_FINDING"
  n=$((n + 1))
done
echo "[  PASSED  ] $n tests."
BIN
  } >"$tree/bin/$name"
  chmod +x "$tree/bin/$name"
}
big=()
for i in $(seq 1 300); do big+=("KnBigGpu.T$i"); done
fake_test test_big "${big[@]}" OpsGpu.Rope KnBigArgs.Cpu
fake_test test_small SmallGpu.Fine SmallGpu.Bad
fake_test test_cpu_only CpuArgs.One

export COMPUTE_SANITIZER="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/fake_compute_sanitizer.sh"

run() { # name args...: the script's output in $out, its exit status in $rc, fresh state
  local name="$1"
  shift
  export FAKE_STATE="$work/state-$name"
  rm -rf "$FAKE_STATE"
  mkdir -p "$FAKE_STATE"
  out="$(LOG_DIR="$work/logs-$name" "$tree/bin/gpu_check.sh" "$@" 2>&1)"
  rc=$?
}
expect_rc() { [ "$rc" -eq "$1" ] || fail "$2: exit $rc, expected $1; output:"$'\n'"$out"; }
expect_out() { grep -qE -- "$1" <<<"$out" || fail "$2: no line matching '$1' in:"$'\n'"$out"; }
summary() { sed -n '/^== gpu_check summary/,$p' <<<"$out"; }
ran() { grep -c "^$1 " "$FAKE_STATE/ran" 2>/dev/null || true; } # tool: tests run under it

# 1. Three at a time: test_big's memcheck in three shards of its 300 *Gpu* tests, each test
#    once (OpsGpu.Rope is a *Gpu* test too: 301); the racecheck filter on its RoPE test; test_small's error fails its run and the
#    exit status; the summary holds every run's verdict, background runs' too.
FAKE_SLEEP=1 run jobs --sanitize --jobs 3
expect_rc 1 "--jobs 3"
expect_out "^test_big +PASS \(301 tests" "--jobs 3 label"
expect_out "^test_small +PASS \(2 tests" "--jobs 3 label"
for k in 1 2 3; do
  grep -qE "^memcheck test_big \(Gpu shard $k/3\): ERROR SUMMARY: 0 errors, $([ $k = 1 ] && echo 101 || echo 100) tests\.$" <<<"$(summary)" ||
    fail "--jobs 3: shard $k's verdict not in the summary:"$'\n'"$(summary)"
done
grep -qE "^racecheck test_big \(racecheck filter\): RACECHECK SUMMARY: 0 hazards.*, 1 tests\.$" <<<"$(summary)" ||
  fail "--jobs 3: no racecheck verdict in the summary:"$'\n'"$(summary)"
grep -qE "^memcheck test_small \(Gpu\): FAIL rc=1 ERROR SUMMARY: 1 error" <<<"$(summary)" ||
  fail "--jobs 3: test_small's error not in the summary:"$'\n'"$(summary)"
[ "$(grep '^memcheck KnBigGpu' "$FAKE_STATE/ran" | sort -u | wc -l)" = 300 ] ||
  fail "--jobs 3: $(grep -c '^memcheck KnBigGpu' "$FAKE_STATE/ran") memcheck runs of KnBigGpu, expected each of 300 once"
[ "$(ran memcheck)" = 303 ] || fail "--jobs 3: $(ran memcheck) tests under memcheck, expected 303"
[ "$(cat "$FAKE_STATE/max")" = 3 ] || fail "--jobs 3: $(cat "$FAKE_STATE/max") sanitizers at once, expected 3"
[ -f "$work/logs-jobs/memcheck-test_big-Gpu_shard_2_3.log" ] || fail "--jobs 3: no log for shard 2/3"
grep -q "CpuArgs" "$FAKE_STATE/ran" && fail "--jobs 3: test_cpu_only's tests ran"

# 2. One at a time (the default): one memcheck run per binary, never two sanitizers at once.
run serial --sanitize
expect_rc 1 "serial"
expect_out "^memcheck test_big \(Gpu\): ERROR SUMMARY: 0 errors, 301 tests\.$" "serial"
[ "$(cat "$FAKE_STATE/max")" = 1 ] || fail "serial: $(cat "$FAKE_STATE/max") sanitizers at once, expected 1"

# 3. Nothing wrong: exit 0, the verdict lines without their status prefix.
rm "$tree/bin/test_small"
run clean --sanitize --jobs 4
expect_rc 0 "clean"
summary | grep -qE '^(ok|FAIL) ' && fail "clean: a status prefix in the summary:"$'\n'"$(summary)"
[ "$(summary | grep -c '^memcheck test_big')" = 3 ] || fail "clean: not three memcheck verdicts:"$'\n'"$(summary)"

# 4. Bad --jobs: exit 2 before anything runs.
for j in 0 x ""; do
  run "bad$j" --sanitize --jobs "$j"
  expect_rc 2 "--jobs '$j'"
  expect_out "--jobs needs a positive count" "--jobs '$j'"
  [ -s "$FAKE_STATE/ran" ] && fail "--jobs '$j': tests ran"
done

finish gpu_check
