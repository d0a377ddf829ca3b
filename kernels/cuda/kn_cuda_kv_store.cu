// kn_cuda_kv_store: appends n_tok tokens' f32 K and V rows ([n_tok, n_kv_heads,
// head_dim]) to KV pages as f16 or bf16: token i goes to page dst_page[i], slot
// dst_slot[i], at page * page_stride_elems + head * head_stride_elems + slot * head_dim
// (kernels.h's page layout). One block per token, its threads over
// (head, element), four elements per access when head_dim and the strides allow.
//
// The args carry no page_tokens, so a kernel can only check what it can see: a
// token whose page or slot is negative, or whose slot would write past its head's
// head_stride_elems, is skipped (its rows are left as they were). kvpool owns the
// page table and is the one that must get page and slot right.
#include <stdint.h>

#include "kn_cuda_internal.cuh"

// A token's n_kv_heads * head_dim: the kernel's int loop indices stay far from overflow.
enum { KN_KV_STORE_THREADS = 256, KN_KV_STORE_MAX_ROW_ELEMS = 1 << 30 };

static __device__ __forceinline__ void kn_st4(__half *p, float4 v) {
  __half2 lo = __floats2half2_rn(v.x, v.y), hi = __floats2half2_rn(v.z, v.w);
  uint2 raw;
  raw.x = *reinterpret_cast<uint32_t *>(&lo);
  raw.y = *reinterpret_cast<uint32_t *>(&hi);
  *reinterpret_cast<uint2 *>(p) = raw;
}
static __device__ __forceinline__ void kn_st4(__nv_bfloat16 *p, float4 v) {
  __nv_bfloat162 lo = __floats2bfloat162_rn(v.x, v.y), hi = __floats2bfloat162_rn(v.z, v.w);
  uint2 raw;
  raw.x = *reinterpret_cast<uint32_t *>(&lo);
  raw.y = *reinterpret_cast<uint32_t *>(&hi);
  *reinterpret_cast<uint2 *>(p) = raw;
}

// VEC: 4 when head_dim and both strides are multiples of 4 and the pointers are
// aligned for it (the launcher checks), else 1.
template <typename T, int VEC>
static __global__ void __launch_bounds__(KN_KV_STORE_THREADS)
    kn_kv_store_kernel(const float *__restrict__ k,         // [n_tok, n_kv_heads, head_dim] f32
                       const float *__restrict__ v,         // [n_tok, n_kv_heads, head_dim] f32
                       T *__restrict__ k_base,              // pages, T
                       T *__restrict__ v_base,              // pages, T
                       int64_t page_stride_elems, int64_t head_stride_elems, int32_t n_kv_heads,
                       int32_t head_dim,
                       const int32_t *__restrict__ dst_page, // [n_tok]
                       const int32_t *__restrict__ dst_slot) // [n_tok]
{
  kn_pdl_begin();
  const int64_t t = blockIdx.x;
  const int32_t page = dst_page[t], slot = dst_slot[t];
  if (page < 0 || slot < 0 || ((int64_t)slot + 1) * head_dim > head_stride_elems) return;
  const int64_t dst0 = (int64_t)page * page_stride_elems + (int64_t)slot * head_dim;
  const int64_t src0 = t * n_kv_heads * (int64_t)head_dim;
  const int n_vec_per_head = head_dim / VEC;
  const int n_vec = n_kv_heads * n_vec_per_head;  // <= 2^30: checked by the caller
  for (int j = threadIdx.x; j < n_vec; j += blockDim.x) {
    const int h = j / n_vec_per_head, e = (j - h * n_vec_per_head) * VEC;
    const int64_t src = src0 + (int64_t)h * head_dim + e;
    const int64_t dst = dst0 + (int64_t)h * head_stride_elems + e;
    if constexpr (VEC == 4) {
      kn_st4(k_base + dst, *reinterpret_cast<const float4 *>(k + src));
      kn_st4(v_base + dst, *reinterpret_cast<const float4 *>(v + src));
    } else {
      kn_st(k_base + dst, k[src]);
      kn_st(v_base + dst, v[src]);
    }
  }
}

template <typename T>
static void kn_kv_store_launch(const kn_cuda_kv_store_args_t *a, cudaStream_t stream) {
  const bool vec4 = a->head_dim % 4 == 0 && a->head_stride_elems % 4 == 0 && a->page_stride_elems % 4 == 0 &&
                    (uintptr_t)a->k % 16 == 0 && (uintptr_t)a->v % 16 == 0 &&
                    (uintptr_t)a->k_base % (4 * sizeof(T)) == 0 && (uintptr_t)a->v_base % (4 * sizeof(T)) == 0;
  const dim3 grid((unsigned)a->n_tok), block(KN_KV_STORE_THREADS);
  T *kb = (T *)a->k_base, *vb = (T *)a->v_base;
  if (vec4)
    kn_launch(kn_kv_store_kernel<T, 4>, grid, block, 0, stream, a->k, a->v, kb, vb, a->page_stride_elems,
                                                         a->head_stride_elems, a->n_kv_heads, a->head_dim,
                                                         a->dst_page, a->dst_slot);
  else
    kn_launch(kn_kv_store_kernel<T, 1>, grid, block, 0, stream, a->k, a->v, kb, vb, a->page_stride_elems,
                                                         a->head_stride_elems, a->n_kv_heads, a->head_dim,
                                                         a->dst_page, a->dst_slot);
}

extern "C" ak_status_t kn_cuda_kv_store(const kn_cuda_kv_store_args_t *a, kn_cuda_stream_t stream, ak_err_t *err) {
  if (!a) return AK_ERR(err, AK_ERR_INVALID_ARG, "args is NULL");
  if (!a->k || !a->v || !a->k_base || !a->v_base || !a->dst_page || !a->dst_slot)
    return AK_ERR(err, AK_ERR_INVALID_ARG, "NULL pointer: k=%p v=%p k_base=%p v_base=%p dst_page=%p dst_slot=%p",
                  (const void *)a->k, (const void *)a->v, a->k_base, a->v_base, (const void *)a->dst_page,
                  (const void *)a->dst_slot);
  if (a->n_tok < 1 || a->n_tok > INT32_MAX || a->n_kv_heads < 1 || a->head_dim < 1)
    return AK_ERR(err, AK_ERR_INVALID_ARG, "n_tok=%lld (1..%d) n_kv_heads=%d head_dim=%d must be >= 1",
                  (long long)a->n_tok, INT32_MAX, a->n_kv_heads, a->head_dim);
  if ((int64_t)a->n_kv_heads * a->head_dim > KN_KV_STORE_MAX_ROW_ELEMS)
    return AK_ERR(err, AK_ERR_INVALID_ARG, "n_kv_heads=%d x head_dim=%d exceeds %d", a->n_kv_heads, a->head_dim,
                  KN_KV_STORE_MAX_ROW_ELEMS);
  if (a->head_stride_elems < a->head_dim || a->head_stride_elems > INT64_MAX / a->n_kv_heads ||
      a->page_stride_elems < (int64_t)a->n_kv_heads * a->head_stride_elems)
    return AK_ERR(err, AK_ERR_INVALID_ARG,
                  "strides too small: head_stride_elems=%lld (>= head_dim=%d), page_stride_elems=%lld "
                  "(>= n_kv_heads=%d x head_stride_elems)",
                  (long long)a->head_stride_elems, a->head_dim, (long long)a->page_stride_elems, a->n_kv_heads);
  cudaStream_t s = kn_stream(stream);
  switch (a->kv_dtype) {
    case KN_CUDA_F16: kn_kv_store_launch<__half>(a, s); break;
    case KN_CUDA_BF16: kn_kv_store_launch<__nv_bfloat16>(a, s); break;
    default: return AK_ERR(err, AK_ERR_INVALID_ARG, "kv_dtype=%d is not F16 or BF16", (int)a->kv_dtype);
  }
  KN_CUDA_LAUNCHED(err);
  return AK_OK;
}
