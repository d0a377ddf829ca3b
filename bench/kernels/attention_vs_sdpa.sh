#!/usr/bin/env bash
# attention_vs_sdpa: kn_cuda_attention (bench_cuda_attention) against PyTorch's
# scaled_dot_product_attention (sdpa_decode.py) on the same decode shapes, in one
# invocation on the GPU machine, and one markdown results file (issue 4).
#
#   bench/kernels/attention_vs_sdpa.sh BENCH_BIN [--out FILE.md] [--shape S,S] [--batch B]
#                                      [--ctx C,C,...] [--iters N] [--backends default,flash,...]
#
# BENCH_BIN: the bench_cuda_attention executable (dist/<dir>/bin/bench_cuda_attention).
# --out defaults to bench/results/attention-vs-sdpa-<UTC date>.md; the raw output of both
# benchmarks goes beside it (FILE.raw.txt). Other flags go to both benchmarks
# (--backends to sdpa_decode.py only). PYTHON picks the interpreter (default python3).
# Without torch the table has our columns only and says so. Exit status: that of
# bench_cuda_attention (SDPA failing does not fail the run: its error is in the file).
set -u -o pipefail

usage() { sed -n '2,14p' "$0" | sed 's/^# \{0,1\}//'; }

if [ $# -lt 1 ] || [ "$1" = "-h" ] || [ "$1" = "--help" ]; then
  usage
  exit 2
fi
bin=$1
shift
if [ ! -x "$bin" ]; then
  echo "attention_vs_sdpa: $bin is not an executable (build bench_cuda_attention first)" >&2
  exit 2
fi
here=$(cd "$(dirname "$0")" && pwd)
date_day=$(date -u +%Y-%m-%d)
date_full=$(date -u +"%Y-%m-%d %H:%M UTC")
out="bench/results/attention-vs-sdpa-$date_day.md"
common=() # flags both benchmarks take
sdpa_only=()
while [ $# -gt 0 ]; do
  case "$1" in
    --out) out=${2:?--out needs a file}; shift 2 ;;
    --shape|--batch|--ctx|--iters) common+=("$1" "${2:?$1 needs a value}"); shift 2 ;;
    --backends) sdpa_only+=("$1" "${2:?$1 needs a value}"); shift 2 ;;
    *) echo "attention_vs_sdpa: unknown argument $1" >&2; usage >&2; exit 2 ;;
  esac
done
mkdir -p "$(dirname "$out")"
raw="$out.raw.txt"
py=${PYTHON:-python3}
cmd="bench/kernels/attention_vs_sdpa.sh $bin --out $out${common[*]:+ ${common[*]}}${sdpa_only[*]:+ ${sdpa_only[*]}}"

card=$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -n 1)
card=${card:-unknown (nvidia-smi failed)}
torch_version=$("$py" -c 'import torch; print(torch.__version__ + " (CUDA " + str(torch.version.cuda) + ")")' 2>/dev/null)

ours_txt=$(mktemp)
sdpa_txt=$(mktemp)
trap 'rm -f "$ours_txt" "$sdpa_txt"' EXIT

# One after the other, never at once: each wants the whole card's bandwidth.
echo "== $bin ${common[*]}" >&2
"$bin" "${common[@]}" | tee "$ours_txt"
ours_rc=$?
if [ -n "$torch_version" ]; then
  echo "== $py $here/sdpa_decode.py ${common[*]} ${sdpa_only[*]}" >&2
  "$py" "$here/sdpa_decode.py" "${common[@]}" "${sdpa_only[@]}" | tee "$sdpa_txt"
  sdpa_rc=$?
  [ $sdpa_rc -eq 0 ] || echo "attention_vs_sdpa: sdpa_decode.py exited $sdpa_rc (see $raw)" >&2
else
  echo "attention_vs_sdpa: torch not found by $py; our column only" >&2
  echo "# torch not found by $py" >"$sdpa_txt"
fi
cat "$ours_txt" "$sdpa_txt" >"$raw"

{
  echo "# Decode attention: kn_cuda_attention vs PyTorch SDPA — $date_full"
  echo
  echo "- card: $card"
  echo "- date: $date_full"
  echo "- command: \`$cmd\`"
  # The install tree's commit first: a GPU host's copy of the checkout can be stale.
  tree_commit="$(sed -n 's/^commit: //p' "$(dirname "$bin")/../MANIFEST.txt" 2>/dev/null | head -n 1)"
  if [ -n "$tree_commit" ]; then
    echo "- commit: $tree_commit (from the install tree's MANIFEST.txt)"
  else
    echo "- commit: $(git -C "$here" rev-parse --short HEAD 2>/dev/null || echo unknown)"
  fi
  if [ -n "$torch_version" ]; then
    echo "- torch: $torch_version"
  else
    echo "- torch: **not found** ($py could not import torch): only our kernel was run"
  fi
  grep -h '^# ' "$ours_txt" "$sdpa_txt" | sed 's/^# /- /'
  echo "- head_dim 128, bf16 K/V, one query token per sequence; us = median CUDA-event time per call;"
  echo "  GB/s = K+V bytes of the Hkv heads (2·B·ctx·Hkv·128·2) / time, for every column alike."
  echo "  Each call reads another layer's K/V (working set >= 4x L2), as bench_cuda_attention.cu explains."
  echo "  \"(repeat)\": that backend took no GQA, so K/V were repeat_interleave'd to H heads"
  echo "  beforehand (not timed); it then reads H/Hkv times the bytes the GB/s column counts."
  echo "- the H100 SXM's HBM3 peak is 3350 GB/s"
  echo
  awk '
    # Lines: <tag> <shape> B=.. ctx=.. (us=.. GBs=.. gqa=.. | error=..) ...
    /^#/ || NF < 4 { next }
    {
      tag = $1; key = $2 " " $3 " " $4
      if (!(key in seen)) { seen[key] = 1; keys[++n_keys] = key }
      if (tag != "ours" && !(tag in seen_tag)) { seen_tag[tag] = 1; tags[++n_tags] = tag }
      us[tag, key] = ""; gbs[tag, key] = ""; note[tag, key] = ""
      for (i = 5; i <= NF; i++) {
        split($i, kv, "=")
        if (kv[1] == "us") us[tag, key] = kv[2]
        else if (kv[1] == "GBs") gbs[tag, key] = kv[2]
        else if (kv[1] == "gqa" && kv[2] == "repeat") note[tag, key] = " (repeat)"
        else if (kv[1] == "error") note[tag, key] = "error"
        else if (kv[1] == "kernels") kern[tag, key] = kv[2]
      }
    }
    function cell_us(t, k) {
      if ((t, k) in us && us[t, k] != "") return us[t, k] note[t, k]
      return ((t, k) in note) ? "error" : "-"
    }
    function cell_gbs(t, k) { return ((t, k) in gbs && gbs[t, k] != "") ? gbs[t, k] : "-" }
    END {
      hdr = "| shape | B | ctx | ours us | ours GB/s |"; sep = "|---|---:|---:|---:|---:|"
      for (j = 1; j <= n_tags; j++) {
        b = substr(tags[j], 6)
        hdr = hdr " SDPA " b " us | GB/s |"; sep = sep "---:|---:|"
      }
      if (n_tags) { hdr = hdr " best SDPA / ours (time) |"; sep = sep "---:|" }
      print hdr; print sep
      for (i = 1; i <= n_keys; i++) {
        k = keys[i]; split(k, f, " "); sub("B=", "", f[2]); sub("ctx=", "", f[3])
        line = "| " f[1] " | " f[2] " | " f[3] " | " cell_us("ours", k) " | " cell_gbs("ours", k) " |"
        best = ""
        for (j = 1; j <= n_tags; j++) {
          t = tags[j]
          line = line " " cell_us(t, k) " | " cell_gbs(t, k) " |"
          if (us[t, k] != "" && (best == "" || us[t, k] + 0 < best + 0)) best = us[t, k]
        }
        if (n_tags) {
          o = us["ours", k]
          line = line " " ((best != "" && o != "") ? sprintf("%.2fx", best / o) : "-") " |"
        }
        print line
      }
      # which backend the dispatcher picked when left alone (kernel names from the profiler)
      first = 1
      for (i = 1; i <= n_keys; i++)
        if (("sdpa-default", keys[i]) in kern) {
          if (first) { print ""; print "SDPA default launched:"; print ""; first = 0 }
          print "- " keys[i] ": `" kern["sdpa-default", keys[i]] "`"
        }
    }' "$ours_txt" "$sdpa_txt"
  if grep -q ' error=' "$ours_txt" "$sdpa_txt"; then
    echo
    echo "Errors:"
    echo
    grep -h ' error=' "$ours_txt" "$sdpa_txt" | sed 's/^/    /'
  fi
} >"$out"
echo "attention_vs_sdpa: wrote $out (raw output: $raw)" >&2
cat "$out"
exit $ours_rc
