#!/usr/bin/env bash
# make_install_tree.sh: a self-contained install tree of arkvale's executables, for a
# GPU host that has the NVIDIA driver, the CUDA runtime, cuBLAS and NCCL but none of
# our other libraries (the H100 test machine lacks gRPC, protobuf-c, gloo: see
# ../shared/TOOLCHAIN.md). Not for: packaging a release (no headers, no model).
#
#   scripts/make_install_tree.sh [--build-dir DIR] [--no-build] [--out DIR] [--extra FILE]...
#                                [--only GLOB]... [--gzip]
#
#   --build-dir DIR  the CMake build to take executables from (default: build/); it is
#                    configured (Ninja, RelWithDebInfo, sm_90) if it has no cache yet and
#                    built incrementally unless --no-build
#   --no-build       take DIR as it is
#   --out DIR        the tree to (re)create (default: dist/arkvale, ignored by git)
#   --extra FILE     one more executable for bin/ (repeatable)
#   --only GLOB      only the executables whose file name matches GLOB (repeatable; any
#                    match takes it), e.g. --only 'test_kn_cuda_*' --only bench_decode:
#                    a tree for one job that fits the carry limit; the libraries follow
#   --gzip           gzip every executable and library after the check (a third of the
#                    size); bin/gpu_check.sh, or `gunzip -r DIR`, unpacks them there
#
# The tree:
#   DIR/bin/   tools/arkvale, every tests/**/test_* and bench/**/bench_* executable,
#              stripped, RUNPATH $ORIGIN/../lib (then /usr/local/cuda/lib64 and
#              /usr/local/cuda/lib, where a host may keep the CUDA runtime outside the
#              loader's cache); and run_gpu_tests.sh, gpu_check.sh, racecheck_slices.sh,
#              compare_reports.sh, sanitizer_run.sh (deploy/gpu/)
#   DIR/lib/   every shared library they need (ldd's closure), stripped, RUNPATH
#              $ORIGIN, except what the host provides: glibc, libstdc++/libgcc_s (the
#              host's are newer), and the NVIDIA driver / CUDA runtime / cuBLAS / NCCL
#              set. UCX's transport modules go to lib/ucx/ (libucs loads them from
#              beside itself), except InfiniBand's.
#   DIR/MANIFEST.txt  the commit, the build and where each library came from
# It checks itself (ldd of every file in the tree, LD_LIBRARY_PATH unset: nothing
# "not found", nothing but host libraries resolved outside the tree) and prints its
# size: it must stay under the device tool's 64 MiB carry limit. Usage on the GPU host:
# deploy/gpu/README.md.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
build_dir="$root/build"
out="$root/dist/arkvale"
do_build=1
extras=()
onlys=()
do_gzip=0
while [ $# -gt 0 ]; do
  case "$1" in
    --build-dir) build_dir="$(realpath -m "$2")"; shift ;;
    --no-build) do_build=0 ;;
    --out) out="$(realpath -m "$2")"; shift ;;
    --extra) extras+=("$(realpath "$2")"); shift ;;
    --only) onlys+=("$2"); shift ;;
    --gzip) do_gzip=1 ;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) echo "make_install_tree: unknown option $1" >&2; exit 2 ;;
  esac
  shift
done
die() { echo "make_install_tree: $*" >&2; exit 1; }
for tool in patchelf strip ldd; do
  command -v "$tool" >/dev/null || die "$tool is missing (scripts/setup.sh --no-build installs patchelf)"
done

# --- build ---
if [ "$do_build" -eq 1 ]; then
  if [ ! -f "$build_dir/CMakeCache.txt" ]; then
    cmake -S "$root" -B "$build_dir" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo >&2
  fi
  cmake --build "$build_dir" -j "$(nproc)" >&2
fi
[ -x "$build_dir/tools/arkvale" ] || die "$build_dir/tools/arkvale not found: build first or drop --no-build"
[ -f "$build_dir/kernels/cuda/libkn_cuda.a" ] ||
  echo "make_install_tree: warning: $build_dir has no CUDA backend (no nvcc at configure time)" >&2

# --- what goes into bin/ ---
mapfile -t bins < <(
  {
    echo "$build_dir/tools/arkvale"
    find "$build_dir/tests" "$build_dir/bench" -path '*/CMakeFiles' -prune -o -type f -perm -u+x \
      \( -name 'test_*' -o -name 'bench_*' \) -print 2>/dev/null
    for e in "${extras[@]+"${extras[@]}"}"; do echo "$e"; done
  } | sort -u)
if [ ${#onlys[@]} -gt 0 ]; then
  kept=()
  for b in "${bins[@]}"; do
    for g in "${onlys[@]}"; do
      # shellcheck disable=SC2053 # a glob on purpose
      if [[ "$(basename "$b")" == $g ]]; then kept+=("$b"); break; fi
    done
  done
  [ ${#kept[@]} -gt 0 ] || die "no executable matches --only ${onlys[*]}"
  bins=("${kept[@]}")
fi
dups="$(for b in "${bins[@]}"; do basename "$b"; done | sort | uniq -d)"
[ -z "$dups" ] || die "two executables share a name in bin/: $dups"

# Libraries the GPU host provides (by soname): glibc, the compiler runtime, NVIDIA's.
host_lib() {
  case "$1" in
    linux-vdso.so.* | ld-linux*.so.* | libc.so.* | libm.so.* | libdl.so.* | libpthread.so.* | librt.so.* | \
      libresolv.so.* | libutil.so.* | libanl.so.* | libmvec.so.* | libnsl.so.* | libthread_db.so.* | \
      libBrokenLocale.so.*) return 0 ;;
    libstdc++.so.* | libgcc_s.so.*) return 0 ;;
    libcuda.so.* | libcudart.so.* | libcublas.so.* | libcublasLt.so.* | libnccl.so.* | libnvidia-*.so* | \
      libnvrtc*.so* | libnvJitLink.so.* | libcudadevrt*) return 0 ;;
  esac
  return 1
}

# ldd's closure of one file as "soname path" lines ("soname not" when not found).
deps_of() {
  ldd "$1" 2>/dev/null | awk '$2 == "=>" { print $1, ($3 == "not" ? "not" : $3) }'
}

declare -A lib_src=() # soname -> the file it resolved to on this machine
missing=()
collect() {
  local f="$1" soname path
  while read -r soname path; do
    host_lib "$soname" && continue
    if [ "$path" = "not" ]; then
      missing+=("$soname (needed by $(basename "$f"))")
      continue
    fi
    if [ -n "${lib_src[$soname]:-}" ]; then
      [ "$(realpath "${lib_src[$soname]}")" = "$(realpath "$path")" ] ||
        echo "make_install_tree: warning: $soname resolves to ${lib_src[$soname]} and $path; keeping the first" >&2
      continue
    fi
    lib_src[$soname]="$path"
  done < <(deps_of "$f")
}
for b in "${bins[@]}"; do collect "$b"; done

# UCX loads its transports with dlopen from <dir of libucs>/ucx/: ldd cannot see them.
ucx_mods=()
if [ -n "${lib_src[libucs.so.0]:-}" ]; then
  ucx_dir="$(dirname "$(realpath "${lib_src[libucs.so.0]}")")/ucx"
  for m in "$ucx_dir"/libuct_*.so.0 "$ucx_dir"/libucm_*.so.0 "$ucx_dir"/libucx_*.so.0; do
    [ -e "$m" ] || continue
    case "$(basename "$m")" in libuct_ib.* | libuct_rdmacm.*) continue ;; esac # no InfiniBand there
    ucx_mods+=("$m")
    collect "$m"
  done
fi
[ ${#missing[@]} -eq 0 ] || die "libraries not found on this machine: ${missing[*]}"

# --- make the tree ---
case "$out" in "$root" | "$root/" | / | "$HOME") die "refusing to replace $out" ;; esac
rm -rf "$out"
mkdir -p "$out/bin" "$out/lib"
for b in "${bins[@]}"; do
  strip --strip-unneeded -o "$out/bin/$(basename "$b")" "$b"
  patchelf --set-rpath '$ORIGIN/../lib:/usr/local/cuda/lib64:/usr/local/cuda/lib' "$out/bin/$(basename "$b")"
done
for soname in "${!lib_src[@]}"; do
  dst="$out/lib/$soname"
  strip --strip-unneeded -o "$dst" "$(realpath "${lib_src[$soname]}")"
  chmod 755 "$dst"
  patchelf --set-rpath '$ORIGIN' "$dst"
done
if [ ${#ucx_mods[@]} -gt 0 ]; then
  mkdir -p "$out/lib/ucx"
  for m in "${ucx_mods[@]}"; do
    dst="$out/lib/ucx/$(basename "$m")"
    strip --strip-unneeded -o "$dst" "$(realpath "$m")"
    patchelf --set-rpath '$ORIGIN/..' "$dst"
  done
fi
install -m 755 "$root/deploy/gpu/run_gpu_tests.sh" "$out/bin/run_gpu_tests.sh"
install -m 755 "$root/deploy/gpu/gpu_check.sh" "$out/bin/gpu_check.sh"
install -m 755 "$root/deploy/gpu/racecheck_slices.sh" "$out/bin/racecheck_slices.sh"
install -m 755 "$root/deploy/gpu/compare_reports.sh" "$out/bin/compare_reports.sh"
install -m 644 "$root/deploy/gpu/sanitizer_run.sh" "$out/bin/sanitizer_run.sh" # sourced by the two above
{
  echo "arkvale install tree (scripts/make_install_tree.sh)"
  echo "commit: $(git -C "$root" rev-parse HEAD 2>/dev/null || echo unknown)$(git -C "$root" diff --quiet HEAD 2>/dev/null || echo ' (+ uncommitted changes)')"
  echo "built in: $build_dir ($(grep '^CMAKE_BUILD_TYPE:' "$build_dir/CMakeCache.txt" | cut -d= -f2))"
  echo "on: $(uname -srm), $(ldd --version | head -n 1)"
  echo "made: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
  echo "libraries:"
  for soname in "${!lib_src[@]}"; do echo "  $soname <- ${lib_src[$soname]}"; done | sort
  for m in "${ucx_mods[@]+"${ucx_mods[@]}"}"; do echo "  ucx/$(basename "$m") <- $m"; done
} >"$out/MANIFEST.txt"

# --- check it: every file resolves, with no LD_LIBRARY_PATH, into the tree or the host ---
bad=()
while IFS= read -r -d '' f; do
  [ "$(head -c 4 "$f" | tail -c 3)" = "ELF" ] || continue
  while read -r soname path; do
    if [ "$path" = "not" ]; then
      # CUDA libraries may legitimately be absent here (a build machine without the
      # toolkit's runtime in its loader path); anything else is a hole in the tree.
      host_lib "$soname" || bad+=("$(basename "$f"): $soname not found")
    elif ! host_lib "$soname"; then
      case "$(realpath "$path")" in "$(realpath "$out")"/lib/*) ;; *) bad+=("$(basename "$f"): $soname -> $path (outside the tree)") ;; esac
    fi
  done < <(env -u LD_LIBRARY_PATH ldd "$f" 2>/dev/null | awk '$2 == "=>" { print $1, ($3 == "not" ? "not" : $3) }')
done < <(find "$out/bin" "$out/lib" -type f -print0)
[ ${#bad[@]} -eq 0 ] || die "the tree does not resolve by itself: $(printf '\n  %s' "${bad[@]}")"
if [ "$do_gzip" -eq 1 ]; then
  find "$out/bin" "$out/lib" -type f ! -name '*.sh' -exec gzip -9 {} +
  echo "gzipped: every executable and library (unpack there: bin/gpu_check.sh, or gunzip -r)" >>"$out/MANIFEST.txt"
fi

size_bytes="$(du -sb "$out" | cut -f1)"
echo "make_install_tree: $out: ${#bins[@]} executables, ${#lib_src[@]} libraries (+${#ucx_mods[@]} UCX modules)," \
  "$(du -sh "$out" | cut -f1) ($size_bytes bytes)" >&2
limit=$((60 << 20)) # the device tool carries 64 MiB with the working tree; keep room for it
[ "$size_bytes" -le "$limit" ] ||
  echo "make_install_tree: warning: over 60 MiB: the device tool's 64 MiB carry limit includes the working tree" >&2
