#!/usr/bin/env bash
# racecheck_slices.sh: compute-sanitizer racecheck over parametrized gtest suites in
# slices of a few parameters, one sanitizer run each, for suites too slow under racecheck
# to give a verdict within one device call (the attention's Mixed, Prefill and
# LongPrefill tests: notes/cuda-backend-status.md). Slices run several at a time (the
# tests' grids leave most of the GPU idle, and the sanitizer's host side wants a core
# each); each slice's verdict is printed as it ends, so a call cut off from outside still
# shows what finished, and the last line names the --slices that a later call must still
# run. Copied into install trees' bin/ beside gpu_check.sh (scripts/make_install_tree.sh).
#
#   bin/racecheck_slices.sh BINARY TEST [TEST ...] [--size N] [--jobs J] [--slices SPEC]
#                           [--timeout S] [--budget S]
#
#   TEST       a parametrized test without its parameter, e.g. Shapes/KnCudaAttentionGpu.Mixed;
#              the instances of all TESTs, in order and each in gtest's listing order,
#              are cut into slices numbered from 0
#   --size N   instances a slice (default 8)
#   --jobs J   slices run at once (default 1)
#   --slices SPEC  which slices: K, K-M, K- (to the last), comma-separated (default 0-)
#   --from K   the same as --slices K-
#   --timeout  seconds a slice may run (default 240): past it, "no verdict"
#   --budget   seconds for all slices (default 540): a slice is not started with less
#              than 30 s left, and none runs past it
#   LOG_DIR=DIR  keep each slice's log there (default: a temporary dir)
#   COMPUTE_SANITIZER=PATH  the sanitizer (default: on PATH, else /usr/local/cuda*/bin)
# Exit status 1 when a slice reported a hazard or failed, else 0 (no verdict is not a
# failure of the code); 2 for bad arguments.
set -uo pipefail

usage() { sed -n '2,/^set -uo/p' "$0" | sed '$d; s/^# \{0,1\}//'; }
die() { echo "racecheck_slices: $*" >&2; exit 2; }
is_count() { [[ "$1" =~ ^[0-9]+$ ]]; }

if [ $# -lt 2 ] || [ "$1" = "-h" ] || [ "$1" = "--help" ]; then
  usage
  exit 2
fi
bin="$1"
shift
tests=()
size=8
jobs=1
spec="0-"
timeout_s=240
budget_s=540
while [ $# -gt 0 ]; do
  case "$1" in
    --size) size="${2:-}"; is_count "$size" && [ "$size" -gt 0 ] || die "--size needs a positive count"; shift ;;
    --jobs) jobs="${2:-}"; is_count "$jobs" && [ "$jobs" -gt 0 ] || die "--jobs needs a positive count"; shift ;;
    --slices) spec="${2:-}"; [ -n "$spec" ] || die "--slices needs a list such as 0,3-5,9-"; shift ;;
    --from) is_count "${2:-}" || die "--from needs a slice number"; spec="$2-"; shift ;;
    --timeout) timeout_s="${2:-}"; is_count "$timeout_s" || die "--timeout needs seconds"; shift ;;
    --budget) budget_s="${2:-}"; is_count "$budget_s" || die "--budget needs seconds"; shift ;;
    -*) die "unknown option $1" ;;
    *) tests+=("$1") ;;
  esac
  shift
done
[ "${#tests[@]}" -gt 0 ] || die "no TEST given"
[ -x "$bin" ] || die "$bin is not an executable"
cs="${COMPUTE_SANITIZER:-$(command -v compute-sanitizer || ls /usr/local/cuda*/bin/compute-sanitizer 2>/dev/null | tail -n 1)}"
. "$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/sanitizer_run.sh" || exit 2
[ -n "$cs" ] && [ -x "$cs" ] || die "compute-sanitizer not found"
log_dir="${LOG_DIR:-$(mktemp -d)}"
mkdir -p "$log_dir" || die "cannot make $log_dir"

# The instances, in gtest's listing order: "Suite." then "  Name/<param>  # GetParam() = ...".
names=()
for t in "${tests[@]}"; do
  [[ "$t" == *.* ]] || die "$t: expected Suite.Name, e.g. Shapes/KnCudaAttentionGpu.Mixed"
  suite="${t%.*}"
  name="${t##*.}"
  mapfile -t params < <("$bin" --gtest_list_tests --gtest_filter="$t/*" 2>/dev/null |
    grep -E "^  $name/" | sed -E 's/^  ([^ ]+).*/\1/')
  [ "${#params[@]}" -gt 0 ] || die "no tests match $t/* in $bin"
  for p in "${params[@]}"; do names+=("$suite.$p"); done
done
n_slices=$(((${#names[@]} + size - 1) / size))

# --slices: K, K-M and K- items, in the order given, each slice once.
todo=()
declare -A picked=()
IFS=',' read -r -a items <<<"$spec"
for it in "${items[@]}"; do
  if [[ "$it" =~ ^([0-9]+)$ ]]; then lo="${BASH_REMATCH[1]}" hi="$lo"
  elif [[ "$it" =~ ^([0-9]+)-([0-9]*)$ ]]; then lo="${BASH_REMATCH[1]}" hi="${BASH_REMATCH[2]:-$((n_slices - 1))}"
  else die "--slices: '$it' is not K, K-M or K-"
  fi
  [ "$lo" -lt "$n_slices" ] || die "--slices: slice $lo does not exist (slices 0..$((n_slices - 1)))"
  [ "$hi" -lt "$n_slices" ] || hi=$((n_slices - 1))
  for ((k = lo; k <= hi; k++)); do
    [ -n "${picked[$k]:-}" ] || { picked[$k]=1; todo+=("$k"); }
  done
done
echo "racecheck_slices: ${tests[*]}: ${#names[@]} instances in $n_slices slices of $size;" \
  "running ${#todo[@]} slice(s), $jobs at a time (logs in $log_dir)"

# One slice: the sanitizer over its filter, then its verdict, printed and kept in
# $log_dir/slice-K.verdict (pass, hazard or none) for the summary.
run_slice() {
  local k="$1" t="$2" filter="" i
  for ((i = k * size; i < (k + 1) * size && i < ${#names[@]}; i++)); do filter+="${filter:+:}${names[i]}"; done
  local log="$log_dir/racecheck-slice-$k.log" first="${names[k * size]}"
  local t0=$SECONDS
  sanitizer_run racecheck "$t" "$log" "$bin" "$filter"
  case "$san_verdict" in
    none) echo "slice $k ($first ..): past ${t} s, no verdict" ;;
    fail) echo "slice $k ($first ..): FAIL rc=$san_rc ${san_summary:-no summary} (log $log)" ;;
    *) echo "slice $k ($first ..): $san_summary, $san_passed [$((SECONDS - t0)) s]" ;;
  esac
  echo "${san_verdict/fail/hazard}" >"$log_dir/slice-$k.verdict"
}

SECONDS=0
running=0
next=0
while [ "$next" -lt "${#todo[@]}" ] || [ "$running" -gt 0 ]; do
  left=$((budget_s - SECONDS))
  if [ "$next" -lt "${#todo[@]}" ] && [ "$running" -lt "$jobs" ] && [ "$left" -ge 30 ]; then
    k="${todo[next]}"
    rm -f "$log_dir/slice-$k.verdict"
    run_slice "$k" "$((timeout_s < left ? timeout_s : left))" &
    next=$((next + 1))
    running=$((running + 1))
    continue
  fi
  [ "$running" -gt 0 ] || break # budget spent, nothing in flight
  wait -n
  running=$((running - 1))
done
wait

failed=0
rest=()
for k in "${todo[@]}"; do
  v="$(cat "$log_dir/slice-$k.verdict" 2>/dev/null || echo unstarted)"
  case "$v" in
    hazard) failed=1 ;;
    none | unstarted) rest+=("$k") ;;
  esac
done
if [ "${#rest[@]}" -gt 0 ]; then
  list="$(IFS=,; echo "${rest[*]}")"
  echo "racecheck_slices: ${#rest[@]} slice(s) without a verdict; go on with --slices $list"
else
  echo "racecheck_slices: every slice asked for has a verdict"
fi
exit "$failed"
