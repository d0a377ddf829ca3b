// kn_cuda_gemv: y = x · Wᵀ for a few rows of x (decode steps), memory-bound on W.
//
// cuBLASLt picks split-K kernels for n_tok <= 8 that read the weights at ~63% of the
// H100's bandwidth (notes/device-runs.md, the ncu breakdown of a 7B decode step);
// this kernel streams each weight row once with 16-byte loads and keeps every
// token's partial sums in registers. One warp per output row (four on one-row calls
// over long rows, kn_gemv_ks): lanes stride over the row 8 bf16 at a time (4 loads in
// flight per lane, 2 with four warps a row), then a warp reduction per token.
// x stays in L1/L2 (n_tok rows of n_in bf16: at most 8 x 14336 x 2 bytes).
//
// Used by kn_cuda_gemm (kn_cuda_gemm.cu, kn_gemm_route) for calls of 1..KN_GEMV_MAX_TOK
// rows whose rows start on 16-byte boundaries: one or two rows, and 3..8 rows on small
// weights; 3..8 rows on large weights go to the tensor-core GEMV (kn_cuda_gemv_mma.cu),
// larger calls to cuBLASLt.
#include <string.h>

#include <type_traits>

#include "kn_cuda_gemv.cuh"
#include "kn_cuda_silu.cuh"

namespace {

constexpr int kWarps = 8;   // warps (output rows) per block
constexpr int kUnroll = 4;  // 16-byte loads in flight per lane (the kernel's U); 2 on the one-row KS 4 path

__device__ __forceinline__ void kn_bf16x8_to_f32(const uint4 &u, float *f) {
  const __nv_bfloat162 *h = reinterpret_cast<const __nv_bfloat162 *>(&u);
#pragma unroll
  for (int i = 0; i < 4; i++) {
    float2 p = __bfloat1622float2(h[i]);
    f[2 * i] = p.x;
    f[2 * i + 1] = p.y;
  }
}

// SW (SwiGLU epilogue): W is [2 * n_out, n_in] (gate rows, then up rows); a warp takes
// gate row `row` and up row `row + n_out` together and writes silu(gate) * up as bf16
// to sw_out[t * n_out + row]. Each dot product runs exactly as in the plain kernel, so
// the result equals the GEMV followed by kn_cuda_silu_mul bit for bit.
// KS (warps per row, 1, 2 or 4): with more than 1, the KS warps of a row take alternate
// runs of 32 * U vectors of the row and add their sums through shared memory
// (part 0's first), so rows of few outputs (o, q|k|v, down at 7B shapes: 4096-6144
// rows) keep more loads in flight per SM. Which KS a call gets depends only on n_tok
// and n_in (kn_gemv_ks), so equal rows always sum in the same order.
// U: 16-byte loads in flight per lane (kUnroll; 2 on the one-row KS 4 path, see
// kn_gemv_ks).
// EPI (kn_cuda_gemv.cuh): ROPE pairs rows 2m and 2m + 1, which sit in one block (it
// has 8 / KS rows, an even number, from an even first row): their sums meet in shared
// memory, so every warp reaches that barrier (nothing returns early).
template <int NT, typename TY, bool SW, int KS, int U, int EPI>
__global__ void __launch_bounds__(kWarps * 32) kn_gemv_kernel(const __nv_bfloat16 *__restrict__ x,
                                                              const __nv_bfloat16 *__restrict__ w,
                                                              kn_gemv_parts_t<TY> out, int64_t n_in, int64_t n_out,
                                                              int accumulate, __nv_bfloat16 *__restrict__ sw_out,
                                                              kn_gemv_rope_t rope) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, part = warp % KS;
  const int64_t row = (int64_t)blockIdx.x * (kWarps / KS) + warp / KS;
  const bool live = row < n_out;
  const uint4 *wr = reinterpret_cast<const uint4 *>(w + (live ? row : 0) * n_in);
  const uint4 *wr2 = SW ? reinterpret_cast<const uint4 *>(w + ((live ? row : 0) + n_out) * n_in) : nullptr;
  // 32-bit offsets inside a row and into x (n_in * 8 / 8 < 2^31: kn_gemv_applies) keep
  // the inner loop's address arithmetic to one add per load.
  const int n_vec = (int)(n_in / 8);  // 16-byte vectors per row (n_in % 8 == 0: checked by the caller)
  const uint4 *xr = reinterpret_cast<const uint4 *>(x);
  const int x_stride_vec = n_vec;
  const int first = lane + part * 32 * U;
  uint4 wv[U], wv2[SW ? U : 1];
  auto load = [&](int v0) {
#pragma unroll
    for (int u = 0; u < U; u++) {
      const int v = v0 + u * 32;
      wv[u] = v < n_vec ? __ldcs(wr + v) : make_uint4(0, 0, 0, 0);  // weights are streamed once
      if constexpr (SW) wv2[u] = v < n_vec ? __ldcs(wr2 + v) : make_uint4(0, 0, 0, 0);
    }
  };
  // The first weights load before the PDL wait (W's contract: kn_cuda.h, kn_cuda_gemm):
  // the blocks resident while the kernel before runs (an RMSNorm of one block, the
  // attention merge) stream them meanwhile; x and y wait. kn_cuda_internal.cuh has the
  // measurement.
  if (live) load(first);
  kn_pdl_begin();
  // with KS > 1 or an epilogue every warp reaches a barrier below
  if (KS == 1 && EPI == KN_GEMV_EPI_NONE && !live) return;
  float acc[NT], acc2[SW ? NT : 1];
#pragma unroll
  for (int t = 0; t < NT; t++) acc[t] = 0.f;
#pragma unroll
  for (int t = 0; t < (SW ? NT : 1); t++) acc2[t] = 0.f;
  for (int v0 = first; live && v0 < n_vec; v0 += 32 * U * KS) {
    if (v0 != first) load(v0);
#pragma unroll
    for (int u = 0; u < U; u++) {
      const int v = v0 + u * 32;
      if (v >= n_vec) break;
      float wf[8], wf2[SW ? 8 : 1];
      kn_bf16x8_to_f32(wv[u], wf);
      if constexpr (SW) kn_bf16x8_to_f32(wv2[u], wf2);
#pragma unroll
      for (int t = 0; t < NT; t++) {
        uint4 xv = __ldg(xr + t * x_stride_vec + v);
        float xf[8];
        kn_bf16x8_to_f32(xv, xf);
#pragma unroll
        for (int i = 0; i < 8; i++) acc[t] = fmaf(xf[i], wf[i], acc[t]);
        if constexpr (SW) {
#pragma unroll
          for (int i = 0; i < 8; i++) acc2[t] = fmaf(xf[i], wf2[i], acc2[t]);
        }
      }
    }
  }
#pragma unroll
  for (int t = 0; t < NT; t++) {
#pragma unroll
    for (int off = 16; off > 0; off >>= 1) acc[t] += __shfl_xor_sync(0xffffffffu, acc[t], off);
    if constexpr (SW) {
#pragma unroll
      for (int off = 16; off > 0; off >>= 1) acc2[t] += __shfl_xor_sync(0xffffffffu, acc2[t], off);
    }
  }
  if constexpr (KS > 1) {
    __shared__ float red[kWarps][NT][SW ? 2 : 1];
    if (lane == 0)
#pragma unroll
      for (int t = 0; t < NT; t++) {
        red[warp][t][0] = acc[t];
        if constexpr (SW) red[warp][t][SW ? 1 : 0] = acc2[t];
      }
    __syncthreads();
    if constexpr (EPI == KN_GEMV_EPI_NONE)
      if (part != 0 || !live) return;
    if (part == 0 && live)
#pragma unroll
      for (int t = 0; t < NT; t++)
#pragma unroll
        for (int k = 1; k < KS; k++) {
          acc[t] += red[warp + k][t][0];
          if constexpr (SW) acc2[t] += red[warp + k][t][SW ? 1 : 0];
        }
  }
  const bool writer = part == 0 && live && lane == 0;  // holds the row's sums
  if constexpr (EPI == KN_GEMV_EPI_ROPE) {
    __shared__ float pair[kWarps / KS][NT];
    if (writer)
#pragma unroll
      for (int t = 0; t < NT; t++) pair[warp / KS][t] = acc[t];
    __syncthreads();
    if (writer)
#pragma unroll
      for (int t = 0; t < NT; t++) kn_gemv_rope_store(out, rope, row, t, acc[t], pair[(warp / KS) ^ 1][t]);
  } else {
#pragma unroll
    for (int t = 0; t < NT; t++) {
      float s = acc[t];
      if constexpr (SW) {
        if (writer) sw_out[(int64_t)t * n_out + row] = __float2bfloat16(kn_silu_mul1(s, acc2[t]));
        continue;
      }
      if (writer) kn_gemv_store(out, row, t, s, accumulate);
    }
  }
}

// Warps per output row (see the kernel): 4 for one-row calls over rows of >= 4096
// elements, where the grids of 7B projections with few outputs left the SMs half full;
// those take 2 loads in flight a lane instead of 4 (fewer registers, more warps an SM).
// H100, a CUDA graph of 32 llama3-8b layers' GEMVs at one row (a variant sweep,
// notes/device-runs.md, session 8), us a layer: KS 2 / 4 loads 152.3, KS 4 / 4 loads
// 148.1, KS 8 / 4 loads 147.1, KS 4 / 2 loads 143.8 (q|k|v 18.1 -> 17.3, o 13.6 ->
// 12.1, gate|up 76.5 -> 75.2, down 44.2 -> 39.3; 2.86 -> 3.03 TB/s); bench_decode
// llama3-8b batch 1 1k: 5.77 -> 5.57 ms.
static int kn_gemv_ks(const kn_cuda_gemm_args_t *a) { return a->n_tok == 1 && a->n_in >= 4096 ? 4 : 1; }

template <int NT, typename TY, int KS, int U>
void kn_gemv_launch_ks(const kn_cuda_gemm_args_t *a, const kn_gemv_split_t *split,
                       const kn_gemv_parts_t<TY> &out, cudaStream_t stream) {
  const __nv_bfloat16 *x = static_cast<const __nv_bfloat16 *>(a->x), *w = static_cast<const __nv_bfloat16 *>(a->w);
  const dim3 block(kWarps * 32);
  constexpr int rows_per_block = kWarps / KS;
  const kn_gemv_rope_t rope = kn_gemv_rope_fill(split, out);
  if (split && split->swiglu_out) { /* gate|up: two parts of equal rows (checked by kn_cuda_gemm_split) */
    const int64_t half = split->rows[0];
    kn_launch(kn_gemv_kernel<NT, TY, true, KS, U, KN_GEMV_EPI_NONE>,
              dim3((unsigned)((half + rows_per_block - 1) / rows_per_block)), block, 0, stream, x, w, out, a->n_in,
              half, 0, static_cast<__nv_bfloat16 *>(split->swiglu_out), rope);
    return;
  }
  const dim3 grid((unsigned)((a->n_out + rows_per_block - 1) / rows_per_block));
  __nv_bfloat16 *no_sw = nullptr;
  if constexpr (std::is_same<TY, float>::value) { /* the rope writes f32 (checked by the caller) */
    if (kn_gemv_epi_kind(split) == KN_GEMV_EPI_ROPE) {
      kn_launch(kn_gemv_kernel<NT, TY, false, KS, U, KN_GEMV_EPI_ROPE>, grid, block, 0, stream, x, w, out, a->n_in,
                a->n_out, 0, no_sw, rope);
      return;
    }
  }
  kn_launch(kn_gemv_kernel<NT, TY, false, KS, U, KN_GEMV_EPI_NONE>, grid, block, 0, stream, x, w, out, a->n_in,
            a->n_out, a->accumulate, no_sw, rope);
}

template <int NT, typename TY>
cudaError_t kn_gemv_launch_typed(const kn_cuda_gemm_args_t *a, const kn_gemv_split_t *split,
                                 cudaStream_t stream) {
  kn_gemv_parts_t<TY> out;
  kn_gemv_parts_fill(&out, a, split);
  if constexpr (NT == 1) { /* KS 4 only for one-row calls (kn_gemv_ks) */
    if (kn_gemv_ks(a) == 4) {
      kn_gemv_launch_ks<NT, TY, 4, 2>(a, split, out, stream);
      return cudaGetLastError();
    }
  }
  kn_gemv_launch_ks<NT, TY, 1, kUnroll>(a, split, out, stream);
  return cudaGetLastError();
}

template <int NT>
cudaError_t kn_gemv_launch_nt(const kn_cuda_gemm_args_t *a, const kn_gemv_split_t *split,
                              cudaStream_t stream) {
  if (a->y_dtype == KN_CUDA_F32) return kn_gemv_launch_typed<NT, float>(a, split, stream);
  return kn_gemv_launch_typed<NT, __nv_bfloat16>(a, split, stream);
}

}  // namespace

int kn_gemv_applies(const kn_cuda_gemm_args_t *a) {
  uintptr_t mask = (uintptr_t)a->x | (uintptr_t)a->w;
  return a->n_tok >= 1 && a->n_tok <= KN_GEMV_MAX_TOK && a->n_in % 8 == 0 && (mask & 15) == 0 &&
         a->n_out <= (int64_t)kWarps * 0x7fffffff && a->n_in * KN_GEMV_MAX_TOK / 8 <= 0x7fffffff;
}

ak_status_t kn_gemv_run(const kn_cuda_gemm_args_t *a, const kn_gemv_split_t *split,
                        cudaStream_t stream, ak_err_t *err) {
  cudaError_t e;
  switch (a->n_tok) {
    case 1: e = kn_gemv_launch_nt<1>(a, split, stream); break;
    case 2: e = kn_gemv_launch_nt<2>(a, split, stream); break;
    case 3: e = kn_gemv_launch_nt<3>(a, split, stream); break;
    case 4: e = kn_gemv_launch_nt<4>(a, split, stream); break;
    case 5: e = kn_gemv_launch_nt<5>(a, split, stream); break;
    case 6: e = kn_gemv_launch_nt<6>(a, split, stream); break;
    case 7: e = kn_gemv_launch_nt<7>(a, split, stream); break;
    case 8: e = kn_gemv_launch_nt<8>(a, split, stream); break;
    default:
      return ak_err_set(err, AK_ERR_INTERNAL, "kn_gemv_run: n_tok=%lld outside [1, %d]", (long long)a->n_tok,
                        KN_GEMV_MAX_TOK);
  }
  if (e != cudaSuccess) return ak_err_set(err, AK_ERR_CUDA, "kn_gemv_run: launch: %s", cudaGetErrorString(e));
  return AK_OK;
}
