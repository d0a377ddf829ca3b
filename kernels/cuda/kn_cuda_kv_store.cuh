// kn_cuda_kv_store: the page write shared by kn_cuda_kv_store.cu (its own launch) and
// kn_cuda_rope.cu (behind the rotation of K, kn_cuda_rope_args_t.store), so that where
// a token's rows go, which tokens are skipped and how f32 becomes f16/bf16 are written
// once. Not an op: no public entry point here.
//
// The args carry no page_tokens, so a kernel can only check what it can see: a token
// whose page or slot is negative, or whose slot would write past its head's
// head_stride_elems, is skipped (its rows are left as they were). kvpool owns the page
// table and is the one that must get page and slot right.
#ifndef KN_CUDA_KV_STORE_CUH
#define KN_CUDA_KV_STORE_CUH

#include <stdint.h>

#include "kn_cuda_internal.cuh"

// A token's n_kv_heads * head_dim: the kernels' int loop indices stay far from overflow.
enum { KN_KV_STORE_MAX_ROW_ELEMS = 1 << 30 };

// The store's destination and V as a kernel takes them (kn_cuda_kv_store_args_t less
// k and the shapes, the pages typed).
template <typename T>
struct kn_kv_pages_t {
  const float *v;           // [n_tok, n_kv_heads, head_dim] f32
  T *k_base;                // pages, T: page * page_stride_elems + head * head_stride_elems + slot * head_dim
  T *v_base;                // pages, T (same layout)
  int64_t page_stride_elems;
  int64_t head_stride_elems;
  const int32_t *dst_page;  // [n_tok]
  const int32_t *dst_slot;  // [n_tok]
};

template <typename T>
static inline kn_kv_pages_t<T> kn_kv_pages(const kn_cuda_kv_store_args_t *a) {
  kn_kv_pages_t<T> p;
  p.v = a->v;
  p.k_base = static_cast<T *>(a->k_base);
  p.v_base = static_cast<T *>(a->v_base);
  p.page_stride_elems = a->page_stride_elems;
  p.head_stride_elems = a->head_stride_elems;
  p.dst_page = a->dst_page;
  p.dst_slot = a->dst_slot;
  return p;
}

// 1 when four elements can go per access: head_dim and both strides multiples of 4,
// the f32 rows 16-byte aligned and the pages aligned for four T.
template <typename T>
static inline bool kn_kv_store_vec4(const kn_cuda_kv_store_args_t *a) {
  return a->head_dim % 4 == 0 && a->head_stride_elems % 4 == 0 && a->page_stride_elems % 4 == 0 &&
         (uintptr_t)a->k % 16 == 0 && (uintptr_t)a->v % 16 == 0 && (uintptr_t)a->k_base % (4 * sizeof(T)) == 0 &&
         (uintptr_t)a->v_base % (4 * sizeof(T)) == 0;
}

// Validates a store's arguments (all but n_tok's match with a caller); messages start
// with `prefix` ("" or "store: ") and name `fn`, the public op. Host only.
ak_status_t kn_kv_store_check(const kn_cuda_kv_store_args_t *a, const char *fn, const char *prefix, ak_err_t *err);

// Where a token's rows start in the pages (head 0, element 0 of its slot), or -1 when
// the token is skipped (a negative page or slot, or a slot past its head's stride).
__device__ __forceinline__ int64_t kn_kv_slot_offset(int32_t page, int32_t slot, int32_t head_dim,
                                                     int64_t page_stride_elems, int64_t head_stride_elems) {
  if (page < 0 || slot < 0 || ((int64_t)slot + 1) * head_dim > head_stride_elems) return -1;
  return (int64_t)page * page_stride_elems + (int64_t)slot * head_dim;
}

// Writes heads [h0, h1) of token t's K and V rows into the token's page slot, the
// calling block's threads striding over (head, element). Every thread of the block
// calls it (block-uniform arguments). k is read with ordinary loads: in the fused
// RoPE it is x2, written by other threads of the same block before a __syncthreads,
// which the read-only (.nc) path would not be guaranteed to see.
// VEC: 4 when kn_kv_store_vec4 holds, else 1.
template <typename T, int VEC>
static __device__ __forceinline__ void kn_kv_store_token(const float *k,  // [n_tok, n_kv_heads, head_dim] f32
                                                         const kn_kv_pages_t<T> &p, int32_t n_kv_heads,
                                                         int32_t head_dim, int64_t t, int32_t h0, int32_t h1) {
  const int64_t dst0 =
      kn_kv_slot_offset(p.dst_page[t], p.dst_slot[t], head_dim, p.page_stride_elems, p.head_stride_elems);
  if (dst0 < 0) return;
  const int64_t src0 = t * n_kv_heads * (int64_t)head_dim;
  const int n_vec_per_head = head_dim / VEC;
  const int n_vec = (h1 - h0) * n_vec_per_head;  // <= 2^30: checked by the launchers
  for (int j = threadIdx.x; j < n_vec; j += blockDim.x) {
    const int h = h0 + j / n_vec_per_head, e = (j % n_vec_per_head) * VEC;
    const int64_t src = src0 + (int64_t)h * head_dim + e;
    const int64_t dst = dst0 + (int64_t)h * p.head_stride_elems + e;
    if constexpr (VEC == 4) {
      kn_st4(p.k_base + dst, *reinterpret_cast<const float4 *>(k + src));
      kn_st4(p.v_base + dst, *reinterpret_cast<const float4 *>(p.v + src));
    } else {
      kn_st(p.k_base + dst, k[src]);
      kn_st(p.v_base + dst, p.v[src]);
    }
  }
}

#endif
