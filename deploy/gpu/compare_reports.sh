#!/usr/bin/env bash
# compare_reports.sh: one line saying how two bench reports of the same run on two
# devices differ (gpu_check.sh --benches; usable on its own).
#
#   compare_reports.sh passkey REF NEW    the "Per depth" cells (1 right, 0 wrong) of
#       every policy x budget x context in both: how many differ, and where
#   compare_reports.sh estimator A B      the "mean k=1..K" rows (mean top-k accuracy
#       per digest kind): the largest absolute difference
# Exit status 2 for bad arguments or a report without the table, else 0.
set -uo pipefail
# join needs its inputs in the order it compares keys. Under a locale whose collation
# skips punctuation and blanks (the GPU host's), a whole-line sort put "quest/128/1024/10 0"
# before "quest/128/1024/1 1", and join warned "not sorted" (session 13): sort on the key
# alone, bytewise, and join bytewise too.
export LC_ALL=C
die() { echo "compare_reports: $*" >&2; exit 2; }
[ $# -eq 3 ] || die "usage: compare_reports.sh passkey|estimator A B"
kind="$1" a="$2" b="$3"
[ -f "$a" ] || die "$a: no such file"
[ -f "$b" ] || die "$b: no such file"

case "$kind" in
passkey)
  # Rows of the per-depth table: | policy | budget | `bits` | `bits` | ...; the header
  # row names the contexts. Prints "policy budget ctx i a b" per depth cell.
  cells() {
    awk -F'|' '
      /^## Per depth/ { on = 1; next }
      /^## / { on = 0 }
      on && /^\| policy/ { for (i = 4; i < NF; i++) { c = $i; gsub(/ /, "", c); ctx[i] = c } next }
      on && /^\| *[a-z]/ {
        p = $2; gsub(/ /, "", p); bud = $3; gsub(/ /, "", bud)
        for (i = 4; i < NF; i++) {
          v = $i; gsub(/[ `]/, "", v)
          n = length(v)
          for (j = 1; j <= n; j++) print p, bud, ctx[i], j - 1, substr(v, j, 1)
        }
      }' "$1"
  }
  ca="$(cells "$a")" cb="$(cells "$b")"
  [ -n "$ca" ] || die "$a: no per-depth table"
  [ -n "$cb" ] || die "$b: no per-depth table"
  join -j1 <(awk '{print $1"/"$2"/"$3"/"$4, $5}' <<<"$ca" | sort -k1,1) \
    <(awk '{print $1"/"$2"/"$3"/"$4, $5}' <<<"$cb" | sort -k1,1) |
    awk -v a="$a" '
      { n++; if ($2 != $3) { d++; if (d <= 6) where = where (where ? ", " : "") $1 " " $2 "->" $3 } }
      END {
        if (!n) { print "no cells in common with " a; exit }
        printf "%d of %d depth cells differ from %s%s\n", d, n, a, d ? " (policy/budget/ctx/depth: " where (d > 6 ? ", ..." : "") ")" : ""
      }'
  ;;
estimator)
  means() { grep -E '^\| mean k=' "$1" | tr '|' '\n' | grep -E '^ *[0-9]+\.[0-9]+ *$'; }
  ma="$(means "$a")" mb="$(means "$b")"
  [ -n "$ma" ] || die "$a: no mean rows"
  [ -n "$mb" ] || die "$b: no mean rows"
  paste <(echo "$ma") <(echo "$mb") | awk '
    { n++; d = $1 - $2; if (d < 0) d = -d; if (d > m) m = d }
    END { printf "largest difference of the %d mean accuracies: %.3f\n", n, m }'
  [ "$(wc -l <<<"$ma")" = "$(wc -l <<<"$mb")" ] || echo "(the reports have different numbers of mean values)"
  ;;
*) die "unknown kind $kind (passkey, estimator)" ;;
esac
