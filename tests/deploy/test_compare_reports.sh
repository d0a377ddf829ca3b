#!/usr/bin/env bash
# deploy/gpu/compare_reports.sh on small reports in the benches' formats: the passkey
# per-depth cells and the estimator's mean rows, differences counted and located.
set -uo pipefail
script="${1:?usage: test_compare_reports.sh PATH/compare_reports.sh}"
. "$(dirname "${BASH_SOURCE[0]}")/harness.sh"
expect() { # name expected-regex command...
  local name="$1" re="$2"
  shift 2
  out="$("$@" 2>&1)"
  rc=$?
  grep -qE -- "$re" <<<"$out" || fail "$name: '$out' does not match '$re'"
}

passkey() { # file, then rows "policy budget bits1024 bits2048"
  local f="$1"
  shift
  {
    echo "# passkey retrieval"
    echo
    echo "| policy | budget | 1024 | 2048 |"
    echo "|---|---:|---:|---:|"
    echo "| full | – | 100 | 90 |"
    echo
    echo "## Per depth"
    echo
    echo "| policy | budget | 1024 | 2048 |"
    echo "|---|---:|---|---|"
    for r in "$@"; do
      set -- $r
      echo "| $1 | $2 | \`$3\` | \`$4\` |"
    done
    echo
    echo "## Prompts"
    echo "| 1024 | 20 | 1012–1015 | 4.48 |"
  } >"$f"
}
passkey "$work/cpu.md" "full – 1111 1101" "arkvale16 128 1111 1101" "h2o 128 1000 0000"
passkey "$work/same.md" "full – 1111 1101" "arkvale16 128 1111 1101"
passkey "$work/gpu.md" "full – 1111 1111" "arkvale16 128 0111 1100" "quest 128 1111 1111"

# Rows in both only (h2o and quest are in one each), 4 depths x 2 contexts a row.
expect "same cells" "^0 of 16 depth cells differ from $work/cpu.md$" "$script" passkey "$work/cpu.md" "$work/same.md"
expect "three cells" "^3 of 16 depth cells differ from $work/cpu.md \(policy/budget/ctx/depth: " \
  "$script" passkey "$work/cpu.md" "$work/gpu.md"
for cell in "full/–/2048/2 0->1" "arkvale16/128/1024/0 1->0" "arkvale16/128/2048/3 1->0"; do
  grep -qF "$cell" <<<"$out" || fail "three cells: '$cell' not named in '$out'"
done

# Depths 1 and 10 share a key prefix: a whole-line sort under a collation that skips
# blanks and punctuation (en_US.UTF-8, the GPU host's) ordered "…/10 0" before "…/1 1",
# and join warned "not sorted" and could drop cells. Run where the locale can be built.
passkey "$work/long-a.md" "full – 111111111111 111111111111" "quest 128 111111111111 101111111110"
passkey "$work/long-b.md" "full – 111111111111 111111111111" "quest 128 101111111111 111111111111"
expect "twelve depths" "^3 of 48 depth cells differ from $work/long-a.md " "$script" passkey "$work/long-a.md" "$work/long-b.md"
if command -v localedef >/dev/null && [ -f /usr/share/i18n/locales/en_US ] &&
  mkdir -p "$work/loc" && localedef -i en_US -f UTF-8 "$work/loc/en_US.UTF-8" >/dev/null 2>&1; then
  out="$(LOCPATH="$work/loc" LC_ALL=en_US.UTF-8 "$script" passkey "$work/long-a.md" "$work/long-b.md" 2>&1)"
  [ "$(wc -l <<<"$out")" -eq 1 ] || fail "en_US collation: more than the verdict: '$out'"
  grep -qE "^3 of 48 depth cells differ" <<<"$out" || fail "en_US collation: '$out'"
  for cell in "quest/128/1024/1 1->0" "quest/128/2048/1 0->1" "quest/128/2048/11 0->1"; do
    grep -qF "$cell" <<<"$out" || fail "en_US collation: '$cell' not named in '$out'"
  done
else
  echo "test_compare_reports: no en_US locale source here; the collation case is skipped"
fi

estimator() { # file, mean values of the two tables
  {
    echo "| k | centroid | cuboid-mean | random |"
    echo "| 1 | 0.135 | 0.410 | 0.016 |"
    echo "| mean k=1..40 | $1 | $2 | |"
    echo "Order by mean accuracy: cuboid-mean $2 > centroid $1"
    echo "| mean k=1..40 | $3 | $4 | |"
  } >"$5"
}
estimator 0.651 0.732 0.607 0.730 "$work/e1.md"
estimator 0.652 0.732 0.607 0.726 "$work/e2.md"
expect "estimator" "^largest difference of the 4 mean accuracies: 0\.004$" "$script" estimator "$work/e1.md" "$work/e2.md"
expect "estimator same" "^largest difference of the 4 mean accuracies: 0\.000$" "$script" estimator "$work/e1.md" "$work/e1.md"

# Bad input: exit 2 and what is wrong.
expect "no table" "no per-depth table" "$script" passkey "$work/e1.md" "$work/cpu.md"
[ "$rc" -eq 2 ] || fail "no table: exit $rc, expected 2"
expect "no means" "no mean rows" "$script" estimator "$work/cpu.md" "$work/e1.md"
[ "$rc" -eq 2 ] || fail "no means: exit $rc, expected 2"
expect "missing file" "nope.md: no such file" "$script" passkey "$work/cpu.md" "$work/nope.md"
[ "$rc" -eq 2 ] || fail "missing file: exit $rc, expected 2"
expect "unknown kind" "unknown kind fidelity" "$script" fidelity "$work/cpu.md" "$work/cpu.md"
[ "$rc" -eq 2 ] || fail "unknown kind: exit $rc, expected 2"

finish compare_reports
