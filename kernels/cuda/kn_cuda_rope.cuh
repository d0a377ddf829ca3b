// kn_cuda_rope: what the RoPE kernel (kn_cuda_rope.cu) shares with the GEMV epilogue
// that rotates Q and K as they are produced (kn_cuda_gemv*.cu, kn_cuda_gemm_split's
// rope): the angle and the rotation, written once so both round alike bit for bit, and
// the host-side check of the arguments. Not an op: no public entry point here.
#ifndef KN_CUDA_ROPE_CUH
#define KN_CUDA_ROPE_CUH

#include <math.h>
#include <stdint.h>

#include "kn_cuda_internal.cuh"

enum {
  KN_ROPE_MAX_PAIRS = 512, /* as the CPU: rot_dims <= 1024 */
  KN_ROPE_MODE_NORM = 0,   /* kernels.h KN_ROPE_NORM */
  KN_ROPE_MODE_NEOX = 2,   /* kernels.h KN_ROPE_NEOX */
};

// cos and sin of pair i's angle at position pos, as kernels/cpu kn_rope computes it:
// base^(-2i/rot_dims) and pos * freq_scale * that in double, reduced to [-pi, pi]
// before a float sincos (a float angle at position 32k is already off by ~2e-3 rad).
__device__ __forceinline__ void kn_rope_cos_sin(int32_t pos, int i, int32_t rot_dims, float freq_base,
                                                float freq_scale, float *c, float *s) {
  const double p = __dmul_rn((double)pos, (double)freq_scale);
  const double inv_freq = pow((double)freq_base, -2.0 * i / (double)rot_dims);
  double th = __dmul_rn(p, inv_freq);
  th = __dsub_rn(th, __dmul_rn(2.0 * M_PI, rint(__dmul_rn(th, 0.5 / M_PI))));  // to [-pi, pi]
  *c = cosf((float)th);
  *s = sinf((float)th);
}

// Pair i's cos and sin at token t: from a kn_cuda_rope_table when given, else computed.
__device__ __forceinline__ void kn_rope_cs_at(const float *table, const int32_t *pos, int64_t t, int i,
                                              int32_t rot_dims, float freq_base, float freq_scale, float *c,
                                              float *s) {
  if (table) {
    const float2 v = reinterpret_cast<const float2 *>(table)[t * (rot_dims / 2) + i];
    *c = v.x;
    *s = v.y;
  } else {
    kn_rope_cos_sin(pos[t], i, rot_dims, freq_base, freq_scale, c, s);
  }
}

// The pair (x0, x1) rotated, rounded like the CPU's (no FMA contraction).
__device__ __forceinline__ float kn_rope_first(float x0, float x1, float c, float s) {
  return __fsub_rn(__fmul_rn(x0, c), __fmul_rn(x1, s));
}
__device__ __forceinline__ float kn_rope_second(float x0, float x1, float c, float s) {
  return __fadd_rn(__fmul_rn(x0, s), __fmul_rn(x1, c));
}

// kn_cuda_rope's whole argument check (store included), for the fused callers too.
ak_status_t kn_rope_check(const kn_cuda_rope_args_t *a, ak_err_t *err);
// The angle's arguments, as kn_rope_check and kn_cuda_rope_table check them: rot_dims
// even in [2, max_rot_dims] (at most 2 * KN_ROPE_MAX_PAIRS), bases > 0. Messages name fn.
ak_status_t kn_rope_angle_check(const char *fn, int32_t rot_dims, int32_t max_rot_dims, float freq_base,
                                float freq_scale, ak_err_t *err);

#endif
