# sanitizer_run.sh: one compute-sanitizer run of a gtest binary and its verdict, for
# gpu_check.sh and racecheck_slices.sh (sourced from beside them; make_install_tree.sh
# copies it into install trees' bin/). Needs $cs, the sanitizer's path.
#
#   sanitizer_run TOOL TIMEOUT_S LOG BINARY FILTER [VAR=value ...]
#
# Runs `$cs --tool TOOL BINARY --gtest_filter=FILTER` under timeout with the VARs in its
# environment, its output to LOG, and sets:
#   san_verdict  pass (rc 0 and "SUMMARY: 0 errors|hazards"), fail, or none (past
#                TIMEOUT_S: no verdict on the code)
#   san_rc       the exit status
#   san_summary  the sanitizer's SUMMARY line ("ERROR SUMMARY: 0 errors", ...)
#   san_passed   gtest's PASSED count ("4 tests.")
sanitizer_run() {
  local tool="$1" t="$2" log="$3" bin="$4" filter="$5"
  shift 5
  # timeout signals its whole process group: the sanitizer and the test under it.
  env "$@" timeout -k 15 "$t" "$cs" --tool "$tool" "$bin" --gtest_filter="$filter" >"$log" 2>&1
  san_rc=$?
  san_summary="$(grep -E "(ERROR|RACECHECK) SUMMARY" "$log" | tail -n 1 | sed 's/^========= //')"
  san_passed="$(grep -E '^\[  PASSED  \]' "$log" | tail -n 1 | sed 's/\[  PASSED  \] //')"
  if [ "$san_rc" -eq 124 ] || [ "$san_rc" -eq 137 ]; then # 137: it ignored TERM for 15 s
    san_verdict=none
  elif [ "$san_rc" -ne 0 ] || ! grep -qE "SUMMARY: 0 (errors|hazards)" <<<"$san_summary"; then
    san_verdict=fail
  else
    san_verdict=pass
  fi
}
