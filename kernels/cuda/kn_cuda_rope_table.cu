// kn_cuda_rope_table: cos and sin of every rotated pair at a step's positions, computed
// once a step (kn_rope_cos_sin, as kn_cuda_rope would) for the layers' rotations to
// read (kn_cuda_rope_args_t.table). One thread a (token, pair), grid-stride.
#include <stdint.h>

#include "kn_cuda_rope.cuh"

enum { KN_ROPE_TABLE_THREADS = 256 };

static __global__ void __launch_bounds__(KN_ROPE_TABLE_THREADS)
    kn_rope_table_kernel(const int32_t *__restrict__ pos, int64_t n_tok, int32_t rot_dims, float freq_base,
                         float freq_scale, float2 *__restrict__ table) {
  kn_pdl_begin();
  const int n_pairs = rot_dims / 2;
  const int64_t n = n_tok * n_pairs;
  for (int64_t j = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; j < n; j += (int64_t)gridDim.x * blockDim.x) {
    float c, s;
    kn_rope_cos_sin(pos[j / n_pairs], (int)(j % n_pairs), rot_dims, freq_base, freq_scale, &c, &s);
    table[j] = make_float2(c, s);
  }
}

extern "C" ak_status_t kn_cuda_rope_table(const kn_cuda_rope_table_args_t *a, kn_cuda_stream_t stream,
                                          ak_err_t *err) {
  if (!a) return AK_ERR(err, AK_ERR_INVALID_ARG, "args is NULL");
  if (!a->pos || !a->table)
    return AK_ERR(err, AK_ERR_INVALID_ARG, "NULL pointer: pos=%p table=%p", (const void *)a->pos, (void *)a->table);
  if ((uintptr_t)a->table % 8)
    return AK_ERR(err, AK_ERR_INVALID_ARG, "table=%p is not aligned to 8 bytes", (void *)a->table);
  if (a->n_tok < 1 || a->n_tok > INT32_MAX)
    return AK_ERR(err, AK_ERR_INVALID_ARG, "n_tok=%lld must be in [1, %d]", (long long)a->n_tok, INT32_MAX);
  AK_TRY(kn_rope_angle_check("kn_cuda_rope_table", a->rot_dims, 2 * KN_ROPE_MAX_PAIRS, a->freq_base, a->freq_scale,
                             err));
  const int64_t n = a->n_tok * (a->rot_dims / 2);
  const int64_t blocks = kn_ceil_div(n, KN_ROPE_TABLE_THREADS);
  kn_launch(kn_rope_table_kernel, dim3((unsigned)(blocks < 1024 ? blocks : 1024)), dim3(KN_ROPE_TABLE_THREADS), 0,
            kn_stream(stream), a->pos, a->n_tok, a->rot_dims, a->freq_base, a->freq_scale,
            reinterpret_cast<float2 *>(a->table));
  KN_CUDA_LAUNCHED(err);
  return AK_OK;
}
