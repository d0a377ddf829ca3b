// kn_cuda_rope: rotary position embedding in place, NORM (adjacent pairs) or NEOX
// (halves) layout, linear position scaling, the leading rot_dims of each head.
// Grid (token, head group): a block takes up to KN_ROPE_THREADS / n_pairs heads of one
// token (of x, then of x2 when given: K beside Q, one launch for both), first puts the
// token's cos/sin per pair in shared memory, then rotates its (head, pair)s. (One block
// per token took 6.8 us for a decode batch of 4 at 32 heads x 128 on an H200: four
// blocks, each walking 2048 pairs.) The angle and the rotation follow kernels/cpu
// kn_rope exactly (kn_cuda_rope.cuh, shared with the GEMV epilogue that rotates Q and
// K as they are produced: kn_cuda_gemm_split's rope).
//
// With args->store (K = x2 beside Q), a block of K heads then also writes those heads'
// rotated K rows and their V rows into the tokens' page slots (kn_kv_store_token, the
// very write of kn_cuda_kv_store, so the result is bit for bit rope followed by
// kv_store) and the step saves a launch. The rotation goes through global memory (x2
// keeps the rotated K, as without the store) and a thread's store may read elements
// another thread rotated: a __syncthreads between the two makes them visible.
#include <math.h>
#include <stdint.h>

#include "kn_cuda_kv_store.cuh"
#include "kn_cuda_rope.cuh"

enum {
  KN_ROPE_THREADS = 256,
  KN_ROPE_MAX_ROW_ELEMS = 1 << 30, /* a token's n_heads * head_dim: int loop indices stay far from overflow */
};

// STORE_VEC: 0 without a store (T unused), else the store's VEC (kn_kv_store_token) and
// T the pages' element type.
template <bool NEOX, typename T, int STORE_VEC>
static __global__ void __launch_bounds__(KN_ROPE_THREADS)
    kn_rope_kernel(float *__restrict__ x,           // [n_tok, n_heads, head_dim] f32
                   float *__restrict__ x2,          // [n_tok, n_heads2, head_dim] f32 or NULL
                   const int32_t *__restrict__ pos, // [n_tok]
                   int32_t n_heads, int32_t n_heads2, int32_t heads_per_block, int32_t head_dim, int32_t rot_dims,
                   float freq_base, float freq_scale,
                   const float *__restrict__ table, // [n_tok, rot_dims / 2, 2] or NULL (kn_cuda_rope_table)
                   kn_kv_pages_t<T> pages) {        // STORE_VEC > 0: where x2 (K) and V go
  kn_pdl_begin();
  __shared__ float cs[KN_ROPE_MAX_PAIRS], sn[KN_ROPE_MAX_PAIRS];
  const int64_t t = blockIdx.x;
  const int n_pairs = rot_dims / 2;
  for (int i = threadIdx.x; i < n_pairs; i += blockDim.x)
    kn_rope_cs_at(table, pos, t, i, rot_dims, freq_base, freq_scale, &cs[i], &sn[i]);
  __syncthreads();
  // this block's heads: groups of x first, then of x2
  const int x_groups = (n_heads + heads_per_block - 1) / heads_per_block;
  int g = (int)blockIdx.y, nh = n_heads;
  float *base = x;
  const bool is_x2 = g >= x_groups;
  if (is_x2) g -= x_groups, nh = n_heads2, base = x2;
  const int h0 = g * heads_per_block, h1 = h0 + heads_per_block < nh ? h0 + heads_per_block : nh;
  float *xt = base + t * nh * (int64_t)head_dim;
  const int total = (h1 - h0) * n_pairs;  // <= 2^30: checked by the caller
  for (int j = threadIdx.x; j < total; j += blockDim.x) {
    const int h = h0 + j / n_pairs, i = j % n_pairs;
    float *xh = xt + (int64_t)h * head_dim;
    const int i0 = NEOX ? i : 2 * i, i1 = NEOX ? i + n_pairs : 2 * i + 1;
    const float x0 = xh[i0], x1 = xh[i1], c = cs[i], s = sn[i];
    xh[i0] = kn_rope_first(x0, x1, c, s);
    xh[i1] = kn_rope_second(x0, x1, c, s);
  }
  if constexpr (STORE_VEC > 0) {
    if (is_x2) {  // block-uniform: every thread of the block reaches the barrier or none
      __syncthreads();  // this block's rotated K rows, written above by its other threads
      kn_kv_store_token<T, STORE_VEC>(x2, pages, n_heads2, head_dim, t, h0, h1);
    }
  }
}

template <bool NEOX, typename T, int STORE_VEC>
static void kn_rope_launch(const kn_cuda_rope_args_t *a, int32_t n_heads2, int32_t hpb, dim3 grid,
                           cudaStream_t s) {
  kn_kv_pages_t<T> p = {};
  if (STORE_VEC > 0) p = kn_kv_pages<T>(a->store);
  kn_launch(kn_rope_kernel<NEOX, T, STORE_VEC>, grid, dim3(KN_ROPE_THREADS), 0, s, a->x, a->x2, a->pos, a->n_heads,
            n_heads2, hpb, a->head_dim, a->rot_dims, a->freq_base, a->freq_scale, a->table, p);
}

// With a store on pages of T: its access width.
template <bool NEOX, typename T>
static void kn_rope_launch_store(const kn_cuda_rope_args_t *a, int32_t n_heads2, int32_t hpb, dim3 grid,
                                 cudaStream_t s) {
  if (kn_kv_store_vec4<T>(a->store))
    kn_rope_launch<NEOX, T, 4>(a, n_heads2, hpb, grid, s);
  else
    kn_rope_launch<NEOX, T, 1>(a, n_heads2, hpb, grid, s);
}

// Without a store, or with one on the pages' dtype and access width.
template <bool NEOX>
static ak_status_t kn_rope_dispatch(const kn_cuda_rope_args_t *a, int32_t n_heads2, int32_t hpb, dim3 grid,
                                    cudaStream_t s, ak_err_t *err) {
  if (!a->store) {
    kn_rope_launch<NEOX, __half, 0>(a, n_heads2, hpb, grid, s);
    return AK_OK;
  }
  switch (a->store->kv_dtype) {
    case KN_CUDA_F16: kn_rope_launch_store<NEOX, __half>(a, n_heads2, hpb, grid, s); return AK_OK;
    case KN_CUDA_BF16: kn_rope_launch_store<NEOX, __nv_bfloat16>(a, n_heads2, hpb, grid, s); return AK_OK;
    default:
      return AK_ERR(err, AK_ERR_INVALID_ARG, "store: kv_dtype=%d is not F16 or BF16", (int)a->store->kv_dtype);
  }
}

// The fused store's arguments: its own (as kn_cuda_kv_store checks them), and the
// ones it shares with the rope, which must agree.
static ak_status_t kn_rope_store_check(const kn_cuda_rope_args_t *a, ak_err_t *err) {
  static const char fn[] = "kn_cuda_rope";
  const kn_cuda_kv_store_args_t *st = a->store;
  if (!a->x2 || st->k != a->x2)
    return ak_err_set_fn(err, AK_ERR_INVALID_ARG, fn, "store->k=%p must be the rope's x2=%p (the K it rotates)",
                         (const void *)st->k, (void *)a->x2);
  if (st->n_tok != a->n_tok)
    return ak_err_set_fn(err, AK_ERR_INVALID_ARG, fn, "store->n_tok=%lld must equal n_tok=%lld",
                         (long long)st->n_tok, (long long)a->n_tok);
  if (st->n_kv_heads != a->n_heads2)
    return ak_err_set_fn(err, AK_ERR_INVALID_ARG, fn, "store->n_kv_heads=%d must equal n_heads2=%d",
                         st->n_kv_heads, a->n_heads2);
  if (st->head_dim != a->head_dim)
    return ak_err_set_fn(err, AK_ERR_INVALID_ARG, fn, "store->head_dim=%d must equal head_dim=%d", st->head_dim,
                         a->head_dim);
  if (st->v == a->x || st->v == a->x2)
    return ak_err_set_fn(err, AK_ERR_INVALID_ARG, fn, "store->v=%p must not be x or x2 (rotated in this launch)",
                         (const void *)st->v);
  return kn_kv_store_check(st, fn, "store: ", err);
}

// Heads a block rotates, and the blocks a token needs (x's heads, then x2's).
static int32_t kn_rope_heads_per_block(int32_t rot_dims) {
  const int32_t n_pairs = rot_dims / 2;
  return n_pairs >= KN_ROPE_THREADS ? 1 : KN_ROPE_THREADS / n_pairs;
}
static int64_t kn_rope_head_groups(int32_t n_heads, int32_t rot_dims, int32_t n_heads2) {
  const int32_t hpb = kn_rope_heads_per_block(rot_dims);
  return kn_ceil_div((int64_t)n_heads, hpb) + kn_ceil_div((int64_t)n_heads2, hpb);
}

ak_status_t kn_rope_angle_check(const char *fn, int32_t rot_dims, int32_t max_rot_dims, float freq_base,
                                float freq_scale, ak_err_t *err) {
  if (max_rot_dims > 2 * KN_ROPE_MAX_PAIRS) max_rot_dims = 2 * KN_ROPE_MAX_PAIRS;
  if (rot_dims < 2 || rot_dims > max_rot_dims || rot_dims % 2)
    return ak_err_set_fn(err, AK_ERR_INVALID_ARG, fn, "rot_dims=%d must be even, in [2, %d]", rot_dims,
                         max_rot_dims);
  if (!(freq_base > 0.0f) || !(freq_scale > 0.0f))
    return ak_err_set_fn(err, AK_ERR_INVALID_ARG, fn, "freq_base=%g freq_scale=%g must be > 0", (double)freq_base,
                         (double)freq_scale);
  return AK_OK;
}

// Messages name the public op (callers: kn_cuda_rope and kn_cuda_gemm_split's rope).
#define KN_ROPE_ERR(err, st, ...) ak_err_set_fn((err), (st), "kn_cuda_rope", __VA_ARGS__)
ak_status_t kn_rope_check(const kn_cuda_rope_args_t *a, ak_err_t *err) {
  if (!a) return KN_ROPE_ERR(err, AK_ERR_INVALID_ARG, "args is NULL");
  if (!a->x || !a->pos)
    return KN_ROPE_ERR(err, AK_ERR_INVALID_ARG, "NULL pointer: x=%p pos=%p", (void *)a->x, (const void *)a->pos);
  if (a->n_tok < 1 || a->n_tok > INT32_MAX || a->n_heads < 1 || a->head_dim < 1)
    return KN_ROPE_ERR(err, AK_ERR_INVALID_ARG, "n_tok=%lld (1..%d) n_heads=%d head_dim=%d must be >= 1",
                  (long long)a->n_tok, INT32_MAX, a->n_heads, a->head_dim);
  AK_TRY(kn_rope_angle_check("kn_cuda_rope", a->rot_dims, a->head_dim, a->freq_base, a->freq_scale, err));
  if ((int64_t)a->n_heads * a->head_dim > KN_ROPE_MAX_ROW_ELEMS)
    return KN_ROPE_ERR(err, AK_ERR_INVALID_ARG, "n_heads=%d x head_dim=%d exceeds %d", a->n_heads, a->head_dim,
                  KN_ROPE_MAX_ROW_ELEMS);
  if (a->x2 && (a->n_heads2 < 1 || (int64_t)a->n_heads2 * a->head_dim > KN_ROPE_MAX_ROW_ELEMS))
    return KN_ROPE_ERR(err, AK_ERR_INVALID_ARG, "x2 given with n_heads2=%d: must be >= 1 and n_heads2 x head_dim <= %d",
                  a->n_heads2, KN_ROPE_MAX_ROW_ELEMS);
  if (a->store) AK_TRY(kn_rope_store_check(a, err));
  if (a->mode != KN_ROPE_MODE_NORM && a->mode != KN_ROPE_MODE_NEOX)
    return KN_ROPE_ERR(err, AK_ERR_INVALID_ARG, "mode=%d is not 0 (NORM) or 2 (NEOX)", (int)a->mode);
  const int32_t n_heads2 = a->x2 ? a->n_heads2 : 0;
  const int64_t n_groups = kn_rope_head_groups(a->n_heads, a->rot_dims, n_heads2);
  if (n_groups > 65535)
    return KN_ROPE_ERR(err, AK_ERR_INVALID_ARG, "n_heads=%d + n_heads2=%d make %lld head groups (at most 65535)",
                       a->n_heads, n_heads2, (long long)n_groups);
  return AK_OK;
}

extern "C" ak_status_t kn_cuda_rope(const kn_cuda_rope_args_t *a, kn_cuda_stream_t stream, ak_err_t *err) {
  AK_TRY(kn_rope_check(a, err));
  const int32_t n_heads2 = a->x2 ? a->n_heads2 : 0, hpb = kn_rope_heads_per_block(a->rot_dims);
  const int64_t n_groups = kn_rope_head_groups(a->n_heads, a->rot_dims, n_heads2);
  const dim3 grid((unsigned)a->n_tok, (unsigned)n_groups);
  cudaStream_t s = kn_stream(stream);
  switch (a->mode) {
    case KN_ROPE_MODE_NORM: AK_TRY(kn_rope_dispatch<false>(a, n_heads2, hpb, grid, s, err)); break;
    default: AK_TRY(kn_rope_dispatch<true>(a, n_heads2, hpb, grid, s, err)); break; /* NEOX (checked) */
  }
  KN_CUDA_LAUNCHED(err);
  return AK_OK;
}
