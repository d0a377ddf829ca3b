// kn_cuda_gemv_mma: y = x · Wᵀ for 1..8 rows of x on tensor cores (the MMA decode-GEMM
// mode of kn_cuda_gemm), memory-bound on W like the FMA GEMV (kn_cuda_gemv.cu), whose
// outputs, parts, accumulate and SwiGLU epilogue it shares.
//
// Why: with 3..8 rows the FMA GEMV converts every weight vector to f32 and does 8 FMAs
// per row of x per vector, plus the x loads and conversions: issue-bound, so cuBLASLt
// took those calls (~2.7 TB/s at 7B shapes). An mma.sync m16n8k16 (bf16 in, f32
// accumulate) takes 16 weight rows x 16 inputs x 8 rows of x in one instruction, with
// no conversions and no shuffle reductions.
//
// Layout: a block is kMmaWarps warps = one tile of 16 output rows x kMmaWarps parts of
// the inputs: warp w takes input steps s = w, w + kMmaWarps, ... of 32 inputs. Lane
// (g = lane / 4, q = lane % 4) loads 16 bytes of weight rows g and g + 8 at inputs 32 s + 8 q .. + 7
// and 16 bytes of x row g (rows >= n_tok: zeros) at the same inputs. Because a dot
// product may sum its inputs in any order, those 8 inputs are taken as the lane's A/B
// fragment elements of two mmas (inputs 8q + {0,1}, {2,3} in the first, {4,5}, {6,7} in
// the second, in both operands alike): no shuffles, no shared-memory staging, each load
// fully used. The accumulators (rows g, g + 8 x rows of x 2q, 2q + 1) of the warps are
// added through shared memory in warp order; lane (g, q) of warp 0 writes them.
// Summation order differs from the FMA GEMV's (f32 either way).
//
// Loads in flight: written plainly (load a group of steps, then its mmas), ptxas sinks
// each step's loads next to that step's mmas to save registers, so a warp had one step
// (32 bytes a lane) in flight, not the group (SASS of the session-6 kernel: LDG LDG LDG
// HMMA HMMA, repeated). Two register buffers (load group i + 1, then the mmas of group
// i) keep the next group's loads issued ahead of the mmas. The loads are unconditional
// (a step past the end reads step 0 and is zeroed), and ask L2 for 256-byte sectors
// around each 64-byte piece of a row, which the neighbouring warps' steps read next.
// H100, a CUDA graph of 32 llama3-8b layers (q|k|v, o, gate|up + SwiGLU, down; 4 rows;
// a variant sweep, notes/device-runs.md, session 8): 16 warps with one step in flight
// 157.7 us a layer -> 8 warps, two buffers of 2 steps 152.8 us (2.77 -> 2.85 TB/s);
// bench_decode llama3-8b batch 4 10k / 30k: 8.27 / 12.16 -> 8.10 / 11.95 ms.
#include <type_traits>

#include "kn_cuda_gemv.cuh"
#include "kn_cuda_silu.cuh"

namespace {

constexpr int kMmaWarps = 8;  // input parts (KS) of a 16-row tile
constexpr int kMmaUnroll = 2; // input steps of 32 a group (a register buffer)

// 16 bytes of a weight row, streamed (no L1 allocation), with L2 fetching the 256-byte
// sector group around it.
__device__ __forceinline__ uint4 kn_ld_weight(const uint4 *p) {
  uint4 r;
  asm volatile("ld.global.nc.L1::no_allocate.L2::256B.v4.u32 {%0,%1,%2,%3}, [%4];"
               : "=r"(r.x), "=r"(r.y), "=r"(r.z), "=r"(r.w)
               : "l"(p));
  return r;
}

__device__ __forceinline__ void kn_mma_bf16(float (&d)[4], const uint4 &a_lo, const uint4 &a_hi, uint32_t b0,
                                            uint32_t b1, int half) {
  // half 0: inputs {0,1} / {2,3} of the lane's 8; half 1: {4,5} / {6,7}.
  const uint32_t a0 = half ? a_lo.z : a_lo.x, a2 = half ? a_lo.w : a_lo.y;
  const uint32_t a1 = half ? a_hi.z : a_hi.x, a3 = half ? a_hi.w : a_hi.y;
  asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
               "{%0,%1,%2,%3};"
               : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
               : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
}

// SW: W is [2 * n_out][n_in] (gate rows, then up rows); the tile takes gate rows and the
// matching up rows and writes silu(gate) * up as bf16 to sw_out (as the FMA GEMV).
// EPI (kn_cuda_gemv.cuh): ROPE pairs rows g and g ^ 1 of the tile, held by lanes l and
// l ^ 4 of warp 0 (a shuffle).
template <typename TY, bool SW, int EPI>
__global__ void __launch_bounds__(kMmaWarps * 32) kn_gemv_mma_kernel(const __nv_bfloat16 *__restrict__ x,
                                                                     const __nv_bfloat16 *__restrict__ w,
                                                                     kn_gemv_parts_t<TY> out, int n_tok, int64_t n_in,
                                                                     int64_t n_out, int accumulate,
                                                                     __nv_bfloat16 *__restrict__ sw_out,
                                                                     kn_gemv_rope_t rope) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, g = lane >> 2, q = lane & 3;
  const int64_t row0 = (int64_t)blockIdx.x * 16;
  // Rows past n_out read row n_out - 1 (in bounds) and are never written.
  const int64_t ra = row0 + g < n_out ? row0 + g : n_out - 1, rb = row0 + g + 8 < n_out ? row0 + g + 8 : n_out - 1;
  const int n_vec = (int)(n_in / 8); // 16-byte vectors a row (n_in % 8 == 0: the caller checks)
  const uint4 *wa = reinterpret_cast<const uint4 *>(w + ra * n_in) + q;
  const uint4 *wb = reinterpret_cast<const uint4 *>(w + rb * n_in) + q;
  const uint4 *wa2 = SW ? reinterpret_cast<const uint4 *>(w + (ra + n_out) * n_in) + q : nullptr;
  const uint4 *wb2 = SW ? reinterpret_cast<const uint4 *>(w + (rb + n_out) * n_in) + q : nullptr;
  const bool xon = g < n_tok;
  const uint4 *xr = reinterpret_cast<const uint4 *>(x + (int64_t)(xon ? g : 0) * n_in) + q;
  const int n_steps = n_vec / 4; // steps of 32 inputs = 4 vectors

  float acc[4] = {0.f, 0.f, 0.f, 0.f}, acc2[4] = {0.f, 0.f, 0.f, 0.f};
  struct group_t { // one group's registers: kMmaUnroll steps of weights and x
    uint4 a[kMmaUnroll], b[kMmaUnroll], x[kMmaUnroll], a2[SW ? kMmaUnroll : 1], b2[SW ? kMmaUnroll : 1];
  };
  const uint4 zero = make_uint4(0, 0, 0, 0);
  auto load_w = [&](group_t &r, int s0) { // the group's weights
#pragma unroll
    for (int u = 0; u < kMmaUnroll; u++) {
      const int s = s0 + u * kMmaWarps;
      const bool on = s < n_steps;
      const int off = 4 * (on ? s : 0);
      const uint4 va = kn_ld_weight(wa + off), vb = kn_ld_weight(wb + off);
      r.a[u] = on ? va : zero;
      r.b[u] = on ? vb : zero;
      if constexpr (SW) {
        const uint4 va2 = kn_ld_weight(wa2 + off), vb2 = kn_ld_weight(wb2 + off);
        r.a2[u] = on ? va2 : zero;
        r.b2[u] = on ? vb2 : zero;
      }
    }
  };
  auto load_x = [&](group_t &r, int s0) { // the group's x
#pragma unroll
    for (int u = 0; u < kMmaUnroll; u++) {
      const int s = s0 + u * kMmaWarps;
      const bool on = s < n_steps;
      const uint4 vx = __ldg(xr + 4 * (on ? s : 0));
      r.x[u] = on && xon ? vx : zero;
    }
  };
  auto load = [&](group_t &r, int s0) {
    load_w(r, s0);
    load_x(r, s0);
  };
  auto mma_group = [&](const group_t &r) {
#pragma unroll
    for (int u = 0; u < kMmaUnroll; u++) {
      kn_mma_bf16(acc, r.a[u], r.b[u], r.x[u].x, r.x[u].y, 0);
      kn_mma_bf16(acc, r.a[u], r.b[u], r.x[u].z, r.x[u].w, 1);
      if constexpr (SW) {
        kn_mma_bf16(acc2, r.a2[u], r.b2[u], r.x[u].x, r.x[u].y, 0);
        kn_mma_bf16(acc2, r.a2[u], r.b2[u], r.x[u].z, r.x[u].w, 1);
      }
    }
  };
  // Groups start at steps warp, warp + G, warp + 2 G, ... (G = kMmaWarps * kMmaUnroll);
  // the loop alternates the two buffers so no buffer index is dynamic.
  constexpr int G = kMmaWarps * kMmaUnroll;
  // The first group's weights load before the PDL wait, as in the FMA GEMV (W's
  // contract: kn_cuda.h, kn_cuda_gemm); x and y wait.
  group_t r0, r1;
  if (warp < n_steps) load_w(r0, warp);
  kn_pdl_begin();
  if (warp < n_steps) load_x(r0, warp);
  for (int s0 = warp; s0 < n_steps; s0 += 2 * G) {
    if (s0 + G < n_steps) load(r1, s0 + G);
    mma_group(r0);
    if (s0 + G >= n_steps) break;
    if (s0 + 2 * G < n_steps) load(r0, s0 + 2 * G);
    mma_group(r1);
  }
  // n_in % 32 != 0: the last 1..3 vectors, by warp 0 alone (a zero-padded step).
  if (n_vec % 4 && warp == 0) {
    const int v = 4 * n_steps + q;
    const bool on = v < n_vec;
    const uint4 a = on ? kn_ld_weight(wa - q + v) : make_uint4(0, 0, 0, 0);
    const uint4 b = on ? kn_ld_weight(wb - q + v) : make_uint4(0, 0, 0, 0);
    const uint4 xv = on && xon ? __ldg(xr - q + v) : make_uint4(0, 0, 0, 0);
    kn_mma_bf16(acc, a, b, xv.x, xv.y, 0);
    kn_mma_bf16(acc, a, b, xv.z, xv.w, 1);
    if constexpr (SW) {
      const uint4 a2 = on ? kn_ld_weight(wa2 - q + v) : make_uint4(0, 0, 0, 0);
      const uint4 b2 = on ? kn_ld_weight(wb2 - q + v) : make_uint4(0, 0, 0, 0);
      kn_mma_bf16(acc2, a2, b2, xv.x, xv.y, 0);
      kn_mma_bf16(acc2, a2, b2, xv.z, xv.w, 1);
    }
  }

  __shared__ float4 red[kMmaWarps][32][SW ? 2 : 1];
  red[warp][lane][0] = make_float4(acc[0], acc[1], acc[2], acc[3]);
  if constexpr (SW) red[warp][lane][SW ? 1 : 0] = make_float4(acc2[0], acc2[1], acc2[2], acc2[3]);
  __syncthreads();
  if (warp != 0) return;
#pragma unroll
  for (int k = 1; k < kMmaWarps; k++) {
    const float4 r = red[k][lane][0];
    acc[0] += r.x, acc[1] += r.y, acc[2] += r.z, acc[3] += r.w;
    if constexpr (SW) {
      const float4 r2 = red[k][lane][SW ? 1 : 0];
      acc2[0] += r2.x, acc2[1] += r2.y, acc2[2] += r2.z, acc2[3] += r2.w;
    }
  }
  // acc[2 h + j] = (row g + 8 h, row of x 2 q + j).
  float partner[4] = {0.f, 0.f, 0.f, 0.f};  // ROPE: row g ^ 1's sums, same q
  if constexpr (EPI == KN_GEMV_EPI_ROPE) {
#pragma unroll
    for (int k = 0; k < 4; k++) partner[k] = __shfl_xor_sync(0xffffffffu, acc[k], 4);
  }
#pragma unroll
  for (int h = 0; h < 2; h++)
#pragma unroll
    for (int j = 0; j < 2; j++) {
      const int64_t row = row0 + g + 8 * h;
      const int t = 2 * q + j;
      if (row >= n_out || t >= n_tok) continue;
      float s = acc[2 * h + j];
      if constexpr (EPI == KN_GEMV_EPI_ROPE) {
        kn_gemv_rope_store(out, rope, row, t, s, partner[2 * h + j]);
        continue;
      }
      if constexpr (SW) {
        sw_out[(int64_t)t * n_out + row] = __float2bfloat16(kn_silu_mul1(s, acc2[2 * h + j]));
        continue;
      }
      kn_gemv_store(out, row, t, s, accumulate);
    }
}

template <typename TY>
void kn_gemv_mma_launch(const kn_cuda_gemm_args_t *a, const kn_gemv_split_t *split,
                        cudaStream_t stream) {
  kn_gemv_parts_t<TY> out;
  kn_gemv_parts_fill(&out, a, split);
  const kn_gemv_rope_t rope = kn_gemv_rope_fill(split, out);
  const __nv_bfloat16 *x = static_cast<const __nv_bfloat16 *>(a->x), *w = static_cast<const __nv_bfloat16 *>(a->w);
  const dim3 block(kMmaWarps * 32);
  if (split && split->swiglu_out) { /* gate|up: two parts of equal rows (checked by kn_cuda_gemm_split) */
    const int64_t half = split->rows[0];
    kn_launch(kn_gemv_mma_kernel<TY, true, KN_GEMV_EPI_NONE>, dim3((unsigned)((half + 15) / 16)), block, 0, stream, x,
              w, out, (int)a->n_tok, a->n_in, half, 0, static_cast<__nv_bfloat16 *>(split->swiglu_out), rope);
    return;
  }
  const dim3 grid((unsigned)((a->n_out + 15) / 16));
  __nv_bfloat16 *no_sw = nullptr;
  if constexpr (std::is_same<TY, float>::value) { /* the rope writes f32 (checked by the caller) */
    if (kn_gemv_epi_kind(split) == KN_GEMV_EPI_ROPE) {
      kn_launch(kn_gemv_mma_kernel<TY, false, KN_GEMV_EPI_ROPE>, grid, block, 0, stream, x, w, out, (int)a->n_tok,
                a->n_in, a->n_out, 0, no_sw, rope);
      return;
    }
  }
  kn_launch(kn_gemv_mma_kernel<TY, false, KN_GEMV_EPI_NONE>, grid, block, 0, stream, x, w, out, (int)a->n_tok, a->n_in,
            a->n_out, a->accumulate, no_sw, rope);
}

}  // namespace

ak_status_t kn_gemv_mma_run(const kn_cuda_gemm_args_t *a, const kn_gemv_split_t *split,
                            cudaStream_t stream, ak_err_t *err) {
  if (a->n_tok < 1 || a->n_tok > KN_GEMV_MAX_TOK)
    return ak_err_set(err, AK_ERR_INTERNAL, "kn_gemv_mma_run: n_tok=%lld outside [1, %d]", (long long)a->n_tok,
                      KN_GEMV_MAX_TOK);
  if (a->y_dtype == KN_CUDA_F32)
    kn_gemv_mma_launch<float>(a, split, stream);
  else
    kn_gemv_mma_launch<__nv_bfloat16>(a, split, stream);
  const cudaError_t e = cudaGetLastError();
  if (e != cudaSuccess) return ak_err_set(err, AK_ERR_CUDA, "kn_gemv_mma_run: launch: %s", cudaGetErrorString(e));
  return AK_OK;
}
