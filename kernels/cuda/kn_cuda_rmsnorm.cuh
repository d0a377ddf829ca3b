// kn_cuda_rmsnorm: what the RMSNorm kernel (kn_cuda_rmsnorm.cu) shares with the GEMVs
// that run the norm in their last block (kn_cuda_gemm's norm_after): the sum of
// squares, its block reduction and the scaling, written once, and the tail itself,
// which replays the kernel's reduction tree (the same partial sums in the same order)
// with a block of another size, so its outputs are the kernel's bit for bit. Not an
// op: no public entry point here.
#ifndef KN_CUDA_RMSNORM_CUH
#define KN_CUDA_RMSNORM_CUH

#include <stdint.h>

#include "kn_cuda_internal.cuh"

enum { KN_RMSNORM_THREADS = 256, KN_RMSNORM_MAX_THREADS = 1024, KN_RMSNORM_CACHE4 = 4 };

// A float4's squares in f32, summed in double (as kernels/cpu kn_rmsnorm).
__device__ __forceinline__ double kn_rmsnorm_sq4(float4 v) {
  return (double)(v.x * v.x) + (double)(v.y * v.y) + (double)(v.z * v.z) + (double)(v.w * v.w);
}

// A warp's butterfly sum: every lane gets the same total.
__device__ __forceinline__ double kn_rmsnorm_warp_sum(double v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

// The scale of a row whose squares sum to `sum`.
__device__ __forceinline__ float kn_rmsnorm_scale(double sum, int64_t dim, float eps) {
  const float mean = (float)(sum / (double)dim);
  return 1.0f / sqrtf(mean + eps);
}

// (x * scale) * w, four at a time.
__device__ __forceinline__ float4 kn_rmsnorm_apply4(float4 v, float4 w, float scale) {
  return make_float4(v.x * scale * w.x, v.y * scale * w.y, v.z * scale * w.z, v.w * scale * w.w);
}

// Threads of the kernel's block for a row of dim elements on its 16-byte path (a
// multiple of the warp, at most 1024), and whether that path keeps the row in
// registers (the "cached" path: at most KN_RMSNORM_CACHE4 float4s a thread).
static inline int32_t kn_rmsnorm_vec4_threads(int64_t dim) {
  int64_t threads = (dim / 4 + 31) / 32 * 32;
  return (int32_t)(threads > KN_RMSNORM_MAX_THREADS ? KN_RMSNORM_MAX_THREADS : threads);
}
static inline bool kn_rmsnorm_vec4_cached(int64_t dim) {
  return dim / 4 <= (int64_t)KN_RMSNORM_CACHE4 * kn_rmsnorm_vec4_threads(dim);
}

// 1 when kn_cuda_rmsnorm(a) takes the 16-byte path: dim % 4 == 0 and every row
// pointer aligned for four elements.
static inline bool kn_rmsnorm_vec4(const kn_cuda_rmsnorm_args_t *a) {
  const size_t out_align = 4 * (a->out_dtype == KN_CUDA_F32 ? 4 : 2);
  return a->dim % 4 == 0 && (uintptr_t)a->x % 16 == 0 && (uintptr_t)a->delta % 16 == 0 &&
         (uintptr_t)a->weight % 16 == 0 && (uintptr_t)a->out % out_align == 0;
}

// kn_cuda_rmsnorm's argument check (messages name it), for the fused callers too.
ak_status_t kn_rmsnorm_check(const kn_cuda_rmsnorm_args_t *a, ak_err_t *err);

// A norm a kernel runs in its last block: rows [0, n_tok) of x (f32, written by the
// kernel's blocks) to out. `threads` is the block size kn_cuda_rmsnorm would launch
// (kn_rmsnorm_vec4_threads), whose reduction the tail replays; counter: a device int,
// 0 before the launch, left 0 after it.
struct kn_norm_tail_t {
  const float *x;
  const float *weight;
  void *out;
  int out_bf16;  // 1: bf16 out, 0: f32
  int64_t dim;
  float eps;
  int32_t threads;
  int *counter;
};

// Called by every thread of every block at the kernel's end, after the block's
// stores: the last block to arrive normalizes the rows. The fence before the ticket
// publishes this block's stores; the last block reads x through L2 (ld.cg), past any
// stale L1 line.
template <typename TO>
__device__ __forceinline__ void kn_norm_tail_rows(const kn_norm_tail_t &nt, int n_tok) {
  __shared__ double scratch[32];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, n_warps = blockDim.x >> 5;
  const int vwarps = nt.threads >> 5;  // the kernel's warps, replayed in rounds of n_warps
  const int64_t n4 = nt.dim / 4;
  for (int t = 0; t < n_tok; t++) {
    const float4 *xr = reinterpret_cast<const float4 *>(nt.x + (int64_t)t * nt.dim);
    for (int vw = warp; vw < vwarps; vw += n_warps) {
      const int64_t k = (int64_t)vw * 32 + lane;  // the kernel's threadIdx.x
      double sum = 0.0;
#pragma unroll
      for (int kk = 0; kk < KN_RMSNORM_CACHE4; kk++) {
        const int64_t i = k + (int64_t)kk * nt.threads;
        if (i >= n4) break;
        sum += kn_rmsnorm_sq4(__ldcg(xr + i));
      }
      sum = kn_rmsnorm_warp_sum(sum);
      if (lane == 0) scratch[vw] = sum;
    }
    __syncthreads();
    const double total = kn_rmsnorm_warp_sum(lane < vwarps ? scratch[lane] : 0.0);
    const float scale = kn_rmsnorm_scale(total, nt.dim, nt.eps);
    TO *orow = static_cast<TO *>(nt.out) + (int64_t)t * nt.dim;
    for (int64_t i = threadIdx.x; i < n4; i += blockDim.x)
      kn_st4(orow + 4 * i, kn_rmsnorm_apply4(__ldcg(xr + i), reinterpret_cast<const float4 *>(nt.weight)[i], scale));
    __syncthreads();  // scratch is read above before the next row rewrites it
  }
}

__device__ __forceinline__ void kn_norm_tail(const kn_norm_tail_t &nt, int n_tok) {
  __shared__ int last;
  __threadfence();
  __syncthreads();
  if (threadIdx.x == 0) last = atomicAdd(nt.counter, 1) == (int)(gridDim.x * gridDim.y * gridDim.z) - 1;
  __syncthreads();
  if (!last) return;
  __threadfence();
  if (nt.out_bf16)
    kn_norm_tail_rows<__nv_bfloat16>(nt, n_tok);
  else
    kn_norm_tail_rows<float>(nt, n_tok);
  if (threadIdx.x == 0) *nt.counter = 0;  // for the next launch (stream order: none runs beside this one)
}

#endif
