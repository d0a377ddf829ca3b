// kn_cuda_rmsnorm: the fused residual step of a pre-norm block, x += delta (in place,
// when delta is given), then out = x / rms(x) * weight as f32 or bf16. One block per
// row: the first pass adds, writes x back and sums squares; a block reduction gives
// the scale; the second pass re-reads the (just written, cache-hot) row and scales.
// Arithmetic follows kernels/cpu kn_rmsnorm: squares in f32 summed in double,
// scale = 1 / sqrtf(mean + eps) in f32, out = (x * scale) * w.
//
// Decode steps run this on one row (batch 1) between two GEMVs, so its latency is what
// counts: with 16-byte accesses a block has up to 1024 threads (one float4 each for
// dim 4096), each keeps its slice of the row in registers (no second pass over
// memory) when it is at most KN_RMSNORM_CACHE4 float4s, with its slice of the weight
// loaded up front.
#include <stdint.h>

#include "kn_cuda_internal.cuh"

enum { KN_RMSNORM_THREADS = 256, KN_RMSNORM_MAX_THREADS = 1024, KN_RMSNORM_CACHE4 = 4 };

// Block-wide sum; every thread gets the total. `scratch` holds one double per warp.
static __device__ __forceinline__ double kn_rmsnorm_block_sum(double v, double *scratch) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, n_warps = blockDim.x >> 5;
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  v = lane < n_warps ? scratch[lane] : 0.0;
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;  // every warp reduced the same partials in the same order
}

static __device__ __forceinline__ float4 kn_add4(float4 a, float4 b) {
  return make_float4(a.x + b.x, a.y + b.y, a.z + b.z, a.w + b.w);
}

// VEC4: dim % 4 == 0 and every row pointer is aligned for 4-element accesses
// (checked by the launcher); else one element per access.
template <typename TOut, bool VEC4>
static __global__ void __launch_bounds__(KN_RMSNORM_MAX_THREADS)
    kn_rmsnorm_kernel(float *x,                         // [n_tok, dim] f32 (out may alias it)
                      const float *__restrict__ delta,   // [n_tok, dim] f32 or NULL
                      const float *__restrict__ weight,  // [dim] f32
                      TOut *out,                         // [n_tok, dim] TOut
                      int64_t dim, float eps) {
  __shared__ double scratch[32];
  const int64_t row = blockIdx.x;
  float *xr = x + row * dim;
  const float *dr = delta ? delta + row * dim : nullptr;
  TOut *orow = out + row * dim;
  const int64_t n4 = VEC4 ? dim / 4 : 0;
  const bool cached = VEC4 && n4 <= (int64_t)KN_RMSNORM_CACHE4 * blockDim.x;
  float4 wc[KN_RMSNORM_CACHE4], xc[KN_RMSNORM_CACHE4];
  kn_pdl_begin();
  if (cached) { /* the weight's loads overlap the row's and the reduction */
#pragma unroll
    for (int k = 0; k < KN_RMSNORM_CACHE4; k++) {
      const int64_t i = threadIdx.x + (int64_t)k * blockDim.x;
      if (i < n4) wc[k] = reinterpret_cast<const float4 *>(weight)[i];
    }
  }

  double sum = 0.0;
  if (cached) {
#pragma unroll
    for (int k = 0; k < KN_RMSNORM_CACHE4; k++) {
      const int64_t i = threadIdx.x + (int64_t)k * blockDim.x;
      if (i >= n4) break;
      float4 v = reinterpret_cast<const float4 *>(xr)[i];
      if (dr) {
        v = kn_add4(v, reinterpret_cast<const float4 *>(dr)[i]);
        reinterpret_cast<float4 *>(xr)[i] = v;
      }
      xc[k] = v;
      sum += (double)(v.x * v.x) + (double)(v.y * v.y) + (double)(v.z * v.z) + (double)(v.w * v.w);
    }
  } else if constexpr (VEC4) {
    for (int64_t i = threadIdx.x; i < n4; i += blockDim.x) {
      float4 v = reinterpret_cast<const float4 *>(xr)[i];
      if (dr) {
        v = kn_add4(v, reinterpret_cast<const float4 *>(dr)[i]);
        reinterpret_cast<float4 *>(xr)[i] = v;
      }
      sum += (double)(v.x * v.x) + (double)(v.y * v.y) + (double)(v.z * v.z) + (double)(v.w * v.w);
    }
  } else {
    for (int64_t i = threadIdx.x; i < dim; i += blockDim.x) {
      float v = xr[i];
      if (dr) {
        v += dr[i];
        xr[i] = v;
      }
      sum += (double)(v * v);
    }
  }
  sum = kn_rmsnorm_block_sum(sum, scratch);
  const float mean = (float)(sum / (double)dim);
  const float scale = 1.0f / sqrtf(mean + eps);

  if (cached) {
#pragma unroll
    for (int k = 0; k < KN_RMSNORM_CACHE4; k++) {
      const int64_t i = threadIdx.x + (int64_t)k * blockDim.x;
      if (i >= n4) break;
      const float4 v = xc[k], w = wc[k];
      kn_st4(orow + 4 * i, make_float4(v.x * scale * w.x, v.y * scale * w.y, v.z * scale * w.z, v.w * scale * w.w));
    }
  } else if constexpr (VEC4) {
    // Each thread re-reads only the elements it wrote itself: no barrier needed.
    for (int64_t i = threadIdx.x; i < n4; i += blockDim.x) {
      const float4 v = reinterpret_cast<const float4 *>(xr)[i];
      const float4 w = reinterpret_cast<const float4 *>(weight)[i];
      kn_st4(orow + 4 * i, make_float4(v.x * scale * w.x, v.y * scale * w.y, v.z * scale * w.z, v.w * scale * w.w));
    }
  } else {
    for (int64_t i = threadIdx.x; i < dim; i += blockDim.x) kn_st(orow + i, xr[i] * scale * weight[i]);
  }
}

template <typename TOut>
static void kn_rmsnorm_launch(const kn_cuda_rmsnorm_args_t *a, cudaStream_t stream) {
  const size_t out_align = 4 * sizeof(TOut);
  const bool vec4 = a->dim % 4 == 0 && (uintptr_t)a->x % 16 == 0 && (uintptr_t)a->delta % 16 == 0 &&
                    (uintptr_t)a->weight % 16 == 0 && (uintptr_t)a->out % out_align == 0;
  /* 16-byte path: one float4 a thread up to 1024 threads (a multiple of the warp) */
  int64_t threads = vec4 ? (a->dim / 4 + 31) / 32 * 32 : KN_RMSNORM_THREADS;
  if (threads > KN_RMSNORM_MAX_THREADS) threads = KN_RMSNORM_MAX_THREADS;
  const dim3 grid((unsigned)a->n_tok), block((unsigned)threads);
  if (vec4)
    kn_launch(kn_rmsnorm_kernel<TOut, true>, grid, block, 0, stream, a->x, a->delta, a->weight, (TOut *)a->out, a->dim,
              a->eps);
  else
    kn_launch(kn_rmsnorm_kernel<TOut, false>, grid, block, 0, stream, a->x, a->delta, a->weight, (TOut *)a->out, a->dim,
              a->eps);
}

extern "C" ak_status_t kn_cuda_rmsnorm(const kn_cuda_rmsnorm_args_t *a, kn_cuda_stream_t stream, ak_err_t *err) {
  if (!a) return AK_ERR(err, AK_ERR_INVALID_ARG, "args is NULL");
  if (!a->x || !a->weight || !a->out)
    return AK_ERR(err, AK_ERR_INVALID_ARG, "NULL pointer: x=%p weight=%p out=%p", (void *)a->x,
                  (const void *)a->weight, a->out);
  if (a->n_tok < 1 || a->n_tok > INT32_MAX || a->dim < 1)
    return AK_ERR(err, AK_ERR_INVALID_ARG, "n_tok=%lld (1..%d) dim=%lld must be >= 1", (long long)a->n_tok,
                  INT32_MAX, (long long)a->dim);
  if (!(a->eps >= 0.0f)) return AK_ERR(err, AK_ERR_INVALID_ARG, "eps=%g must be >= 0", (double)a->eps);
  cudaStream_t s = kn_stream(stream);
  switch (a->out_dtype) {
    case KN_CUDA_F32: kn_rmsnorm_launch<float>(a, s); break;
    case KN_CUDA_BF16: kn_rmsnorm_launch<__nv_bfloat16>(a, s); break;
    default: return AK_ERR(err, AK_ERR_INVALID_ARG, "out_dtype=%d is not F32 or BF16", (int)a->out_dtype);
  }
  KN_CUDA_LAUNCHED(err);
  return AK_OK;
}
