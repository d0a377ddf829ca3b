// kn_cuda_rope: rotary position embedding in place, NORM (adjacent pairs) or NEOX
// (halves) layout, linear position scaling, the leading rot_dims of each head.
// One block per token: its threads first put the token's cos/sin per pair in shared
// memory, then rotate every (head, pair). The angle follows kernels/cpu kn_rope
// exactly: base^(-2i/rot_dims) and pos * freq_scale * that in double, reduced to
// [-pi, pi] before a float sincos (a float angle at position 32k is already off by
// ~2e-3 rad); the rotation itself is rounded like the CPU's (no FMA contraction).
#include <math.h>
#include <stdint.h>

#include "kn_cuda_internal.cuh"

enum {
  KN_ROPE_THREADS = 256,
  KN_ROPE_MAX_PAIRS = 512, /* as the CPU: rot_dims <= 1024 */
  KN_ROPE_MAX_ROW_ELEMS = 1 << 30, /* a token's n_heads * head_dim: int loop indices stay far from overflow */
  KN_ROPE_MODE_NORM = 0,   /* kernels.h KN_ROPE_NORM */
  KN_ROPE_MODE_NEOX = 2,   /* kernels.h KN_ROPE_NEOX */
};

template <bool NEOX>
static __global__ void __launch_bounds__(KN_ROPE_THREADS)
    kn_rope_kernel(float *__restrict__ x,           // [n_tok, n_heads, head_dim] f32
                   const int32_t *__restrict__ pos, // [n_tok]
                   int32_t n_heads, int32_t head_dim, int32_t rot_dims, float freq_base, float freq_scale) {
  __shared__ float cs[KN_ROPE_MAX_PAIRS], sn[KN_ROPE_MAX_PAIRS];
  const int64_t t = blockIdx.x;
  const int n_pairs = rot_dims / 2;
  const double p = __dmul_rn((double)pos[t], (double)freq_scale);
  for (int i = threadIdx.x; i < n_pairs; i += blockDim.x) {
    const double inv_freq = pow((double)freq_base, -2.0 * i / (double)rot_dims);
    double th = __dmul_rn(p, inv_freq);
    th = __dsub_rn(th, __dmul_rn(2.0 * M_PI, rint(__dmul_rn(th, 0.5 / M_PI))));  // to [-pi, pi]
    cs[i] = cosf((float)th);
    sn[i] = sinf((float)th);
  }
  __syncthreads();
  float *xt = x + t * n_heads * (int64_t)head_dim;
  const int total = n_heads * n_pairs;  // <= 2^30: checked by the caller
  for (int j = threadIdx.x; j < total; j += blockDim.x) {
    const int h = j / n_pairs, i = j - h * n_pairs;
    float *xh = xt + (int64_t)h * head_dim;
    const int i0 = NEOX ? i : 2 * i, i1 = NEOX ? i + n_pairs : 2 * i + 1;
    const float x0 = xh[i0], x1 = xh[i1], c = cs[i], s = sn[i];
    xh[i0] = __fsub_rn(__fmul_rn(x0, c), __fmul_rn(x1, s));
    xh[i1] = __fadd_rn(__fmul_rn(x0, s), __fmul_rn(x1, c));
  }
}

extern "C" ak_status_t kn_cuda_rope(const kn_cuda_rope_args_t *a, kn_cuda_stream_t stream, ak_err_t *err) {
  if (!a) return AK_ERR(err, AK_ERR_INVALID_ARG, "args is NULL");
  if (!a->x || !a->pos)
    return AK_ERR(err, AK_ERR_INVALID_ARG, "NULL pointer: x=%p pos=%p", (void *)a->x, (const void *)a->pos);
  if (a->n_tok < 1 || a->n_tok > INT32_MAX || a->n_heads < 1 || a->head_dim < 1)
    return AK_ERR(err, AK_ERR_INVALID_ARG, "n_tok=%lld (1..%d) n_heads=%d head_dim=%d must be >= 1",
                  (long long)a->n_tok, INT32_MAX, a->n_heads, a->head_dim);
  if (a->rot_dims < 2 || a->rot_dims > a->head_dim || a->rot_dims % 2 || a->rot_dims / 2 > KN_ROPE_MAX_PAIRS)
    return AK_ERR(err, AK_ERR_INVALID_ARG, "rot_dims=%d must be even, in [2, head_dim=%d], <= %d", a->rot_dims,
                  a->head_dim, 2 * KN_ROPE_MAX_PAIRS);
  if ((int64_t)a->n_heads * a->head_dim > KN_ROPE_MAX_ROW_ELEMS)
    return AK_ERR(err, AK_ERR_INVALID_ARG, "n_heads=%d x head_dim=%d exceeds %d", a->n_heads, a->head_dim,
                  KN_ROPE_MAX_ROW_ELEMS);
  if (!(a->freq_base > 0.0f) || !(a->freq_scale > 0.0f))
    return AK_ERR(err, AK_ERR_INVALID_ARG, "freq_base=%g freq_scale=%g must be > 0", (double)a->freq_base,
                  (double)a->freq_scale);
  const dim3 grid((unsigned)a->n_tok), block(KN_ROPE_THREADS);
  cudaStream_t s = kn_stream(stream);
  switch (a->mode) {
    case KN_ROPE_MODE_NORM:
      kn_rope_kernel<false><<<grid, block, 0, s>>>(a->x, a->pos, a->n_heads, a->head_dim, a->rot_dims,
                                                   a->freq_base, a->freq_scale);
      break;
    case KN_ROPE_MODE_NEOX:
      kn_rope_kernel<true><<<grid, block, 0, s>>>(a->x, a->pos, a->n_heads, a->head_dim, a->rot_dims,
                                                  a->freq_base, a->freq_scale);
      break;
    default:
      return AK_ERR(err, AK_ERR_INVALID_ARG, "mode=%d is not 0 (NORM) or 2 (NEOX)", (int)a->mode);
  }
  KN_CUDA_LAUNCHED(err);
  return AK_OK;
}
