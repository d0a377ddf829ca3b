#!/usr/bin/env bash
# A compute-sanitizer stand-in for tests/deploy: `--tool memcheck|racecheck BINARY ARGS...`
# runs the binary with FAKE_TOOL set to the tool, records how many of its runs overlap
# (the most in $FAKE_STATE/max), sleeps $FAKE_SLEEP first so that runs meant to overlap
# do, and turns a FAKE_FINDING line of the binary's into the tool's summary of a
# finding (exit 1). FAKE_EXPECT_TOOL=T: any other tool is an error (exit 9).
tool="${2:-}"
if [ "${1:-}" != "--tool" ] || { [ "$tool" != memcheck ] && [ "$tool" != racecheck ]; } ||
  { [ -n "${FAKE_EXPECT_TOOL:-}" ] && [ "$tool" != "$FAKE_EXPECT_TOOL" ]; }; then
  echo "fake_compute_sanitizer: expected --tool ${FAKE_EXPECT_TOOL:-memcheck|racecheck}, got '$*'"
  exit 9
fi
shift 2
touch "$FAKE_STATE/run.$$"
now=$(ls "$FAKE_STATE" | grep -c '^run\.')
max=$(cat "$FAKE_STATE/max" 2>/dev/null || echo 0)
[ "$now" -gt "$max" ] && echo "$now" >"$FAKE_STATE/max"
sleep "${FAKE_SLEEP:-0}"
out="$(FAKE_TOOL="$tool" "$@")"
rc=$?
rm -f "$FAKE_STATE/run.$$"
grep -vx FAKE_FINDING <<<"$out"
if grep -qx FAKE_FINDING <<<"$out"; then
  if [ "$tool" = racecheck ]; then echo "========= RACECHECK SUMMARY: 2 hazards displayed (1 error, 1 warning)"
  else echo "========= ERROR SUMMARY: 1 error"; fi
  exit 1
fi
if [ "$tool" = racecheck ]; then echo "========= RACECHECK SUMMARY: 0 hazards displayed (0 errors, 0 warnings)"
else echo "========= ERROR SUMMARY: 0 errors"; fi
exit $rc
