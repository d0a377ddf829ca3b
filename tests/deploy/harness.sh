# Sourced by tests/deploy/test_*.sh: a scratch dir removed at exit, fail to count a
# failed check and go on, finish to report and set the exit status.
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
fails=0
fail() { echo "FAIL: $*"; fails=$((fails + 1)); }
finish() { # name
  if [ "$fails" -gt 0 ]; then
    echo "$fails check(s) failed"
    exit 1
  fi
  echo "$1: all checks passed"
}
