// kn_cuda_silu_mul: SwiGLU, out = silu(gate) * up = gate / (1 + exp(-gate)) * up,
// written as f32 or bf16 (the down projection's operand). Element-wise over the flat
// [n_tok * n_ff] arrays: a grid-stride loop, four elements (16-byte loads) per access
// when every pointer allows it, rounded like kernels/cpu kn_silu_mul_c.
#include <stdint.h>

#include "kn_cuda_internal.cuh"
#include "kn_cuda_silu.cuh"

enum { KN_SILU_THREADS = 256, KN_SILU_MAX_BLOCKS = 8192 };

// VEC4: gate, up 16-byte aligned and out aligned for 4 elements (the launcher
// checks); the n % 4 tail goes one element at a time.
template <typename TOut, bool VEC4>
static __global__ void __launch_bounds__(KN_SILU_THREADS)
    kn_silu_mul_kernel(const float *gate,  // [n] f32 (an f32 out may alias it)
                       const float *up,    // [n] f32
                       TOut *out,          // [n] TOut
                       int64_t n) {
  kn_pdl_begin();
  const int64_t stride = (int64_t)gridDim.x * blockDim.x;
  const int64_t tid = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
  int64_t done = 0;
  if constexpr (VEC4) {
    const int64_t n4 = n / 4;
    for (int64_t i = tid; i < n4; i += stride) {
      const float4 g = reinterpret_cast<const float4 *>(gate)[i];
      const float4 u = reinterpret_cast<const float4 *>(up)[i];
      kn_st4(out + 4 * i, make_float4(kn_silu_mul1(g.x, u.x), kn_silu_mul1(g.y, u.y), kn_silu_mul1(g.z, u.z),
                                      kn_silu_mul1(g.w, u.w)));
    }
    done = n4 * 4;
  }
  for (int64_t i = done + tid; i < n; i += stride) kn_st(out + i, kn_silu_mul1(gate[i], up[i]));
}

template <typename TOut>
static void kn_silu_mul_launch(const kn_cuda_silu_mul_args_t *a, int64_t n, cudaStream_t stream) {
  const bool vec4 = (uintptr_t)a->gate % 16 == 0 && (uintptr_t)a->up % 16 == 0 &&
                    (uintptr_t)a->out % (4 * sizeof(TOut)) == 0;
  const int64_t per_block = (int64_t)KN_SILU_THREADS * (vec4 ? 4 : 1);
  int64_t n_blocks = kn_ceil_div(n, per_block);
  if (n_blocks > KN_SILU_MAX_BLOCKS) n_blocks = KN_SILU_MAX_BLOCKS;
  const dim3 grid((unsigned)n_blocks), block(KN_SILU_THREADS);
  if (vec4)
    kn_launch(kn_silu_mul_kernel<TOut, true>, grid, block, 0, stream, a->gate, a->up, (TOut *)a->out, n);
  else
    kn_launch(kn_silu_mul_kernel<TOut, false>, grid, block, 0, stream, a->gate, a->up, (TOut *)a->out, n);
}

extern "C" ak_status_t kn_cuda_silu_mul(const kn_cuda_silu_mul_args_t *a, kn_cuda_stream_t stream, ak_err_t *err) {
  if (!a) return AK_ERR(err, AK_ERR_INVALID_ARG, "args is NULL");
  if (!a->gate || !a->up || !a->out)
    return AK_ERR(err, AK_ERR_INVALID_ARG, "NULL pointer: gate=%p up=%p out=%p", (const void *)a->gate,
                  (const void *)a->up, a->out);
  if (a->n_tok < 1 || a->n_ff < 1 || a->n_tok > INT64_MAX / a->n_ff)
    return AK_ERR(err, AK_ERR_INVALID_ARG, "n_tok=%lld n_ff=%lld must be >= 1 (and their product fit int64)",
                  (long long)a->n_tok, (long long)a->n_ff);
  const int64_t n = a->n_tok * a->n_ff;
  cudaStream_t s = kn_stream(stream);
  switch (a->out_dtype) {
    case KN_CUDA_F32: kn_silu_mul_launch<float>(a, n, s); break;
    case KN_CUDA_BF16: kn_silu_mul_launch<__nv_bfloat16>(a, n, s); break;
    default: return AK_ERR(err, AK_ERR_INVALID_ARG, "out_dtype=%d is not F32 or BF16", (int)a->out_dtype);
  }
  KN_CUDA_LAUNCHED(err);
  return AK_OK;
}
