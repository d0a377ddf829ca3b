// kn_cuda_kv_store: appends n_tok tokens' f32 K and V rows ([n_tok, n_kv_heads,
// head_dim]) to KV pages as f16 or bf16: token i goes to page dst_page[i], slot
// dst_slot[i], at page * page_stride_elems + head * head_stride_elems + slot * head_dim
// (kernels.h's page layout). One block per token, its threads over
// (head, element), four elements per access when head_dim and the strides allow.
// The write itself (and which tokens it skips: negative page or slot, a slot past the
// head's stride) is kn_kv_store_token in kn_cuda_kv_store.cuh, which kn_cuda_rope also
// runs when it stores the K it rotated (kn_cuda_rope_args_t.store).
#include <stdint.h>

#include "kn_cuda_kv_store.cuh"

enum { KN_KV_STORE_THREADS = 256 };

template <typename T, int VEC>
static __global__ void __launch_bounds__(KN_KV_STORE_THREADS)
    kn_kv_store_kernel(const float *__restrict__ k,  // [n_tok, n_kv_heads, head_dim] f32
                       kn_kv_pages_t<T> pages, int32_t n_kv_heads, int32_t head_dim) {
  kn_pdl_begin();
  kn_kv_store_token<T, VEC>(k, pages, n_kv_heads, head_dim, blockIdx.x, 0, n_kv_heads);
}

template <typename T>
static void kn_kv_store_launch(const kn_cuda_kv_store_args_t *a, cudaStream_t stream) {
  const dim3 grid((unsigned)a->n_tok), block(KN_KV_STORE_THREADS);
  const kn_kv_pages_t<T> p = kn_kv_pages<T>(a);
  if (kn_kv_store_vec4<T>(a))
    kn_launch(kn_kv_store_kernel<T, 4>, grid, block, 0, stream, a->k, p, a->n_kv_heads, a->head_dim);
  else
    kn_launch(kn_kv_store_kernel<T, 1>, grid, block, 0, stream, a->k, p, a->n_kv_heads, a->head_dim);
}

ak_status_t kn_kv_store_check(const kn_cuda_kv_store_args_t *a, const char *fn, const char *prefix, ak_err_t *err) {
  if (!a->k || !a->v || !a->k_base || !a->v_base || !a->dst_page || !a->dst_slot)
    return ak_err_set_fn(err, AK_ERR_INVALID_ARG, fn,
                         "%sNULL pointer: k=%p v=%p k_base=%p v_base=%p dst_page=%p dst_slot=%p", prefix,
                         (const void *)a->k, (const void *)a->v, a->k_base, a->v_base, (const void *)a->dst_page,
                         (const void *)a->dst_slot);
  if (a->n_tok < 1 || a->n_tok > INT32_MAX || a->n_kv_heads < 1 || a->head_dim < 1)
    return ak_err_set_fn(err, AK_ERR_INVALID_ARG, fn, "%sn_tok=%lld (1..%d) n_kv_heads=%d head_dim=%d must be >= 1",
                         prefix, (long long)a->n_tok, INT32_MAX, a->n_kv_heads, a->head_dim);
  if ((int64_t)a->n_kv_heads * a->head_dim > KN_KV_STORE_MAX_ROW_ELEMS)
    return ak_err_set_fn(err, AK_ERR_INVALID_ARG, fn, "%sn_kv_heads=%d x head_dim=%d exceeds %d", prefix,
                         a->n_kv_heads, a->head_dim, KN_KV_STORE_MAX_ROW_ELEMS);
  if (a->head_stride_elems < a->head_dim || a->head_stride_elems > INT64_MAX / a->n_kv_heads ||
      a->page_stride_elems < (int64_t)a->n_kv_heads * a->head_stride_elems)
    return ak_err_set_fn(err, AK_ERR_INVALID_ARG, fn,
                         "%sstrides too small: head_stride_elems=%lld (>= head_dim=%d), page_stride_elems=%lld "
                         "(>= n_kv_heads=%d x head_stride_elems)",
                         prefix, (long long)a->head_stride_elems, a->head_dim, (long long)a->page_stride_elems,
                         a->n_kv_heads);
  if (a->kv_dtype != KN_CUDA_F16 && a->kv_dtype != KN_CUDA_BF16)
    return ak_err_set_fn(err, AK_ERR_INVALID_ARG, fn, "%skv_dtype=%d is not F16 or BF16", prefix,
                         (int)a->kv_dtype);
  return AK_OK;
}

extern "C" ak_status_t kn_cuda_kv_store(const kn_cuda_kv_store_args_t *a, kn_cuda_stream_t stream, ak_err_t *err) {
  if (!a) return AK_ERR(err, AK_ERR_INVALID_ARG, "args is NULL");
  AK_TRY(kn_kv_store_check(a, __func__, "", err));
  cudaStream_t s = kn_stream(stream);
  switch (a->kv_dtype) {
    case KN_CUDA_F16: kn_kv_store_launch<__half>(a, s); break;
    case KN_CUDA_BF16: kn_kv_store_launch<__nv_bfloat16>(a, s); break;
    default: return AK_ERR(err, AK_ERR_INVALID_ARG, "kv_dtype=%d is not F16 or BF16", (int)a->kv_dtype);
  }
  KN_CUDA_LAUNCHED(err);
  return AK_OK;
}
