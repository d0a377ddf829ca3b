#!/usr/bin/env bash
# deploy/gpu/racecheck_slices.sh against stand-ins: a gtest-like binary that lists
# parametrized instances (a hazard for instances named *Hazard*, a long sleep for *Slow*),
# and fake_compute_sanitizer.sh, which runs it, prints a racecheck summary and records how
# many of its runs overlap. CPU only: the real sanitizer runs on the GPU host.
set -uo pipefail
script="${1:?usage: test_racecheck_slices.sh PATH/racecheck_slices.sh}"
. "$(dirname "${BASH_SOURCE[0]}")/harness.sh"

# The stand-in test binary: suites S/A.T (10 instances p0..p9, p7 named Hazard7) and
# S/B.U (3 instances, q1 named Slow1).
cat >"$work/fake_test" <<'BIN'
#!/usr/bin/env bash
for a in "$@"; do
  case "$a" in
    --gtest_list_tests) list=1 ;;
    --gtest_filter=*) filter="${a#--gtest_filter=}" ;;
  esac
done
if [ -n "${list:-}" ]; then
  case "$filter" in
    S/A.T/*) echo "S/A."
             for i in 0 1 2 3 4 5 6 7 8 9; do echo "  T/$([ $i = 7 ] && echo Hazard || echo p)$i  # GetParam() = $i"; done ;;
    S/B.U/*) echo "S/B."; echo "  U/q0  # GetParam() = 0"; echo "  U/Slow1  # GetParam() = 1"; echo "  U/q2  # GetParam() = 2" ;;
  esac
  exit 0
fi
echo "$filter" >>"$FAKE_STATE/filters"
n=$(tr ':' '\n' <<<"$filter" | wc -l)
[[ "$filter" == *Slow* ]] && sleep 30
echo "[  PASSED  ] $n tests."
[[ "$filter" == *Hazard* ]] && echo "FAKE_FINDING"
exit 0
BIN
chmod +x "$work/fake_test"
export COMPUTE_SANITIZER="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/fake_compute_sanitizer.sh" FAKE_EXPECT_TOOL=racecheck

# run NAME ARGS...: the script's output in $out, its exit status in $rc, fresh state.
run() {
  local name="$1"
  shift
  export FAKE_STATE="$work/state-$name"
  rm -rf "$FAKE_STATE"
  mkdir -p "$FAKE_STATE"
  out="$(LOG_DIR="$work/logs-$name" "$script" "$work/fake_test" "$@" 2>&1)"
  rc=$?
}
expect_rc() { [ "$rc" -eq "$1" ] || fail "$2: exit $rc, expected $1; output:"$'\n'"$out"; }
expect_out() { grep -qE -- "$1" <<<"$out" || fail "$2: no line matching '$1' in:"$'\n'"$out"; }
expect_no_out() { ! grep -qE -- "$1" <<<"$out" || fail "$2: a line matches '$1' in:"$'\n'"$out"; }

# 1. The passing slices of a suite (slice 3 holds the hazard), three at a time: each verdict, and no more than
#    three sanitizers at once (with 1 s runs, exactly three overlap).
FAKE_SLEEP=1 run pass S/A.T --size 2 --jobs 3 --slices 0-2,4
expect_rc 0 "passing slices"
for k in 0 1 2 4; do expect_out "^slice $k \(S/A.T/p$((2 * k)) \.\.\): RACECHECK SUMMARY: 0 hazards.*, 2 tests\." "passing slices"; done
expect_out "every slice asked for has a verdict" "passing slices"
[ "$(cat "$FAKE_STATE/max")" = 3 ] || fail "passing slices: $(cat "$FAKE_STATE/max") sanitizers at once, expected 3"
[ "$(wc -l <"$FAKE_STATE/filters")" = 4 ] || fail "passing slices: $(wc -l <"$FAKE_STATE/filters") runs, expected 4"
grep -qx "S/A.T/p2:S/A.T/p3" "$FAKE_STATE/filters" || fail "passing slices: slice 1's filter is not p2:p3"

# 2. One at a time by default.
FAKE_SLEEP=0.3 run serial S/A.T --size 4
expect_rc 1 "serial"
[ "$(cat "$FAKE_STATE/max")" = 1 ] || fail "serial: $(cat "$FAKE_STATE/max") sanitizers at once, expected 1"

# 3. A hazard fails its slice and the run; the other slices still report.
run hazard S/A.T --size 4 --jobs 2
expect_rc 1 "hazard"
expect_out "^slice 1 \(S/A.T/p4 \.\.\): FAIL rc=1 RACECHECK SUMMARY: 2 hazards" "hazard"
expect_out "^slice 0 .*0 hazards" "hazard"
expect_out "^slice 2 .*0 hazards" "hazard"
expect_out "every slice asked for has a verdict" "hazard"

# 4. Two suites in one numbering; a slow slice past --timeout has no verdict and is
#    named in the --slices to go on with; the picked slices only, each once.
run timeout S/A.T S/B.U --size 3 --jobs 2 --timeout 2 --slices 3,1,3-
expect_rc 0 "timeout"
expect_out "^slice 3 \(S/A.T/p9 \.\.\): past 2 s, no verdict" "timeout"
expect_out "^slice 1 \(S/A.T/p3 \.\.\): .*0 hazards" "timeout"
expect_out "^slice 4 \(S/B.U/q2 \.\.\): .*0 hazards.*, 1 tests\." "timeout"
expect_out "go on with --slices 3$" "timeout"
[ "$(wc -l <"$FAKE_STATE/filters")" = 3 ] || fail "timeout: $(wc -l <"$FAKE_STATE/filters") runs, expected 3 (slices 3, 1 and 4 once)"
grep -qx "S/A.T/p9:S/B.U/q0:S/B.U/Slow1" "$FAKE_STATE/filters" || fail "timeout: slice 3 should be p9:q0:Slow1 (13 instances, slices of 3)"

# 5. The budget: no slice starts with less than 30 s left; the rest is named.
FAKE_SLEEP=2 run budget S/A.T --size 3 --budget 31
expect_rc 0 "budget"
expect_out "^slice 0 .*0 hazards" "budget"
expect_no_out "^slice 1 " "budget"
expect_out "3 slice\(s\) without a verdict; go on with --slices 1,2,3$" "budget"

# 6. Bad arguments: exit 2 and a message naming the problem, no sanitizer run.
run badjobs S/A.T --jobs 0
expect_rc 2 "--jobs 0"; expect_out "--jobs needs a positive count" "--jobs 0"
run badslice S/A.T --slices 9
expect_rc 2 "--slices 9"; expect_out "slice 9 does not exist \(slices 0\.\.1\)" "--slices 9"
run badspec S/A.T --slices 1-x
expect_rc 2 "--slices 1-x"; expect_out "'1-x' is not K, K-M or K-" "--slices 1-x"
run unknown S/A.Nope
expect_rc 2 "unknown test"; expect_out "no tests match S/A.Nope/\*" "unknown test"
run nosuite Mixed
expect_rc 2 "test without a suite"; expect_out "expected Suite.Name" "test without a suite"
run badopt S/A.T --bogus
expect_rc 2 "unknown option"; expect_out "unknown option --bogus" "unknown option"
[ ! -e "$work/state-badjobs/filters" ] || fail "bad arguments ran the sanitizer"

finish racecheck_slices
