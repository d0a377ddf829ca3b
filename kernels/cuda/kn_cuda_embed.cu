// kn_cuda_embed: embedding rows, out[t] = table[ids[t]] as f32 (F32, F16 or BF16
// tables). One block per token; a thread moves 16 bytes of the table row at a time
// when the row and the pointers allow it. Out-of-range ids give a zero row and raise
// the caller's flag: a kernel cannot return a message (kn_cuda.h).
#include <stdint.h>

#include "kn_cuda_internal.cuh"

enum { KN_EMBED_THREADS = 256 };

// VEC table elements per access: 16 bytes (VEC = 16 / sizeof(T)) or 1.
template <typename T, int VEC>
static __global__ void __launch_bounds__(KN_EMBED_THREADS)
    kn_embed_kernel(const T *__restrict__ table,     // [n_vocab, dim] T
                    const int32_t *__restrict__ ids, // [n_tok]
                    float *__restrict__ out,         // [n_tok, dim] f32
                    int64_t dim, int64_t n_vocab, int32_t *bad_id_flag) {
  kn_pdl_begin();
  const int64_t t = blockIdx.x;
  const int32_t id = ids[t];
  float *o = out + t * dim;
  if (id < 0 || (int64_t)id >= n_vocab) {
    for (int64_t i = threadIdx.x; i < dim; i += blockDim.x) o[i] = 0.0f;
    if (threadIdx.x == 0 && bad_id_flag) *bad_id_flag = 1;
    return;
  }
  const T *row = table + (int64_t)id * dim;
  if constexpr (VEC == 1) {
    for (int64_t i = threadIdx.x; i < dim; i += blockDim.x) o[i] = kn_ld(row + i);
  } else {
    // dim % VEC == 0 and row, o 16-byte aligned (checked by the launcher).
    const int64_t n_vec = dim / VEC;
    for (int64_t v = threadIdx.x; v < n_vec; v += blockDim.x) {
      uint4 raw = __ldg(reinterpret_cast<const uint4 *>(row) + v);
      const T *e = reinterpret_cast<const T *>(&raw);
      float4 *dst = reinterpret_cast<float4 *>(o + v * VEC);
#pragma unroll
      for (int j = 0; j < VEC / 4; j++)
        dst[j] = make_float4(kn_ld(e + 4 * j), kn_ld(e + 4 * j + 1), kn_ld(e + 4 * j + 2), kn_ld(e + 4 * j + 3));
    }
  }
}

template <typename T>
static void kn_embed_launch(const kn_cuda_embed_args_t *a, cudaStream_t stream) {
  constexpr int vec = 16 / (int)sizeof(T);
  const bool aligned = a->dim % vec == 0 && (uintptr_t)a->table % 16 == 0 && (uintptr_t)a->out % 16 == 0;
  const dim3 grid((unsigned)a->n_tok), block(KN_EMBED_THREADS);
  if (aligned)
    kn_launch(kn_embed_kernel<T, vec>, grid, block, 0, stream, (const T *)a->table, a->ids, a->out, a->dim, a->n_vocab,
                                                        a->bad_id_flag);
  else
    kn_launch(kn_embed_kernel<T, 1>, grid, block, 0, stream, (const T *)a->table, a->ids, a->out, a->dim, a->n_vocab,
                                                      a->bad_id_flag);
}

extern "C" ak_status_t kn_cuda_embed(const kn_cuda_embed_args_t *a, kn_cuda_stream_t stream, ak_err_t *err) {
  if (!a) return AK_ERR(err, AK_ERR_INVALID_ARG, "args is NULL");
  if (!a->table || !a->ids || !a->out)
    return AK_ERR(err, AK_ERR_INVALID_ARG, "NULL pointer: table=%p ids=%p out=%p", a->table, (const void *)a->ids,
                  (void *)a->out);
  if (a->n_tok < 1 || a->n_tok > INT32_MAX || a->dim < 1 || a->n_vocab < 1)
    return AK_ERR(err, AK_ERR_INVALID_ARG, "n_tok=%lld (1..%d) dim=%lld n_vocab=%lld must be >= 1",
                  (long long)a->n_tok, INT32_MAX, (long long)a->dim, (long long)a->n_vocab);
  cudaStream_t s = kn_stream(stream);
  switch (a->table_dtype) {
    case KN_CUDA_F32: kn_embed_launch<float>(a, s); break;
    case KN_CUDA_F16: kn_embed_launch<__half>(a, s); break;
    case KN_CUDA_BF16: kn_embed_launch<__nv_bfloat16>(a, s); break;
    default: return AK_ERR(err, AK_ERR_INVALID_ARG, "table_dtype=%d is not F32, F16 or BF16", (int)a->table_dtype);
  }
  KN_CUDA_LAUNCHED(err);
  return AK_OK;
}
