#!/usr/bin/env bash
# expect.sh RC REGEX -- CMD...: runs CMD, asserts its exit code is RC and that its
# combined stdout+stderr matches the extended regex REGEX. Prints the output on failure.
set -u
want_rc="$1"; regex="$2"; shift 2
[ "$1" = "--" ] && shift
out="$("$@" 2>&1)"; rc=$?
if [ "$rc" -ne "$want_rc" ]; then
  printf 'expected exit %s, got %s\n--- output ---\n%s\n' "$want_rc" "$rc" "$out"; exit 1
fi
if ! printf '%s' "$out" | grep -Eq -- "$regex"; then
  printf 'output does not match /%s/\n--- output ---\n%s\n' "$regex" "$out"; exit 1
fi
echo "ok: exit $rc, matched /$regex/"
