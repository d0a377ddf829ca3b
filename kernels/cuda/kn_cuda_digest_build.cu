// kn_cuda_digest_build: ArkVale digests of filled KV pages on the GPU, all 7 kinds of
// kvpool/kv_digest.h with kv_digest.c's arithmetic, so that its CPU build is the
// oracle: min/max in f32, centres, radii and means in double, rounded to f32 once.
// Not the hot path (one call per page that fills), so plain and exact over fast.
//
// Output: rows in kv_digest.h's layout, f32 for every kind, or for the cuboid kinds
// optionally 16-bit in the page's dtype (digest_dtype, f16 or bf16): the per-step scan
// (kn_cuda_digest_score) then reads half the bytes. A 16-bit row is the f32 row with
// each ub rounded toward +inf and each lb toward -inf, so the box never shrinks:
//
//   one KV head, 16-bit:  | ub[d] (rounded up) | lb[d] (rounded down) |   4 d bytes
//
// cuboid-max's bounds are keys of that dtype, so they are exact; cuboid-center/-mean
// (c -+ r) move by at most one 16-bit ulp. kn_cuda_digest_narrow (host, below) rounds
// the CPU's f32 digests the same way, so a digest built here and one built on the host
// from the same keys are the same bits (kv_digest.c computes the same f32 values).
//
// Launch: one 128-thread block per (page, KV head) item, grid-stride over items.
//   cuboid-*, centroid: thread i owns dimensions i, i + 128, ...; it walks the page's
//                       tokens for each (coalesced: a token row is head_dim contiguous
//                       elements), exactly kv_build_cuboid / kv_build_centroid's loops.
//   sphere-*:           the same walk writes c to shared memory; then each warp takes
//                       tokens t = warp, warp + 4, ... and reduces ||c - k_t||^2 over
//                       its lanes in double; thread 0 folds the 4 warps' min, max, sum.
#include <math.h>
#include <string.h>

#include "kn_cuda_digest.cuh"
#include "kn_cuda_internal.cuh"

namespace {

// A cuboid bound stored as O: f32 as is; 16-bit rounded outward (ub up, lb down).
// Host and device (the CUDA conversions are both), so kn_cuda_digest_narrow agrees.
__host__ __device__ inline void kn_db_st_ub(float *p, float v) { *p = v; }
__host__ __device__ inline void kn_db_st_lb(float *p, float v) { *p = v; }
__host__ __device__ inline void kn_db_st_ub(__half *p, float v) { *p = __float2half_ru(v); }
__host__ __device__ inline void kn_db_st_lb(__half *p, float v) { *p = __float2half_rd(v); }
__host__ __device__ inline void kn_db_st_ub(__nv_bfloat16 *p, float v) { *p = __float2bfloat16_ru(v); }
__host__ __device__ inline void kn_db_st_lb(__nv_bfloat16 *p, float v) { *p = __float2bfloat16_rd(v); }

constexpr int KN_DB_THREADS = 128;
constexpr int KN_DB_WARPS = KN_DB_THREADS / 32;
constexpr int64_t KN_DB_MAX_BLOCKS = 1 << 20;

// kh: token 0 of one KV head of one page; token t, dimension i at kh[t * head_dim + i].
// ub, lb: [head_dim] O (f32, or 16-bit rounded outward).
template <typename T, typename O>
__device__ void kn_db_cuboid(int kind, const T *kh, int n_tokens, int head_dim, O *ub, O *lb) {
  for (int i = threadIdx.x; i < head_dim; i += blockDim.x) {
    float mx = kn_ld(kh + i), mn = mx;
    for (int t = 1; t < n_tokens; t++) {
      float v = kn_ld(kh + (int64_t)t * head_dim + i);
      if (v > mx) mx = v;
      if (v < mn) mn = v;
    }
    if (kind == KN_DIGEST_CUBOID_MAX) {
      kn_db_st_ub(ub + i, mx);
      kn_db_st_lb(lb + i, mn);
      continue;
    }
    const double c = ((double)mx + (double)mn) / 2.0;
    double r;
    if (kind == KN_DIGEST_CUBOID_MEAN) {
      double sum = 0.0;
      for (int t = 0; t < n_tokens; t++) sum += fabs(c - (double)kn_ld(kh + (int64_t)t * head_dim + i));
      r = sum / n_tokens;
    } else {  // KN_DIGEST_CUBOID_CENTER
      double dmin = INFINITY, dmax = 0.0;
      for (int t = 0; t < n_tokens; t++) {
        double dv = fabs(c - (double)kn_ld(kh + (int64_t)t * head_dim + i));
        if (dv < dmin) dmin = dv;
        if (dv > dmax) dmax = dv;
      }
      r = (dmin + dmax) / 2.0;
    }
    // f32 first (kv_digest.c's values), then outward to O: what the host path stores.
    kn_db_st_ub(ub + i, (float)(c + r));
    kn_db_st_lb(lb + i, (float)(c - r));
  }
}

template <typename T>
__device__ void kn_db_centroid(const T *kh, int n_tokens, int head_dim, float *mean) {
  for (int i = threadIdx.x; i < head_dim; i += blockDim.x) {
    double sum = 0.0;
    for (int t = 0; t < n_tokens; t++) sum += (double)kn_ld(kh + (int64_t)t * head_dim + i);
    mean[i] = (float)(sum / n_tokens);
  }
}

// c_s: [head_dim] f32 shared scratch. Contains __syncthreads: the whole block calls it.
template <typename T>
__device__ void kn_db_sphere(int kind, const T *kh, int n_tokens, int head_dim, float *c, float *c_s) {
  __shared__ double s_min[KN_DB_WARPS], s_max[KN_DB_WARPS], s_sum[KN_DB_WARPS];
  for (int i = threadIdx.x; i < head_dim; i += blockDim.x) {
    float mx = kn_ld(kh + i), mn = mx;
    for (int t = 1; t < n_tokens; t++) {
      float v = kn_ld(kh + (int64_t)t * head_dim + i);
      if (v > mx) mx = v;
      if (v < mn) mn = v;
    }
    const float ci = (float)(((double)mx + (double)mn) / 2.0);
    c_s[i] = ci;
    c[i] = ci;
  }
  __syncthreads();

  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  double nmin = INFINITY, nmax = 0.0, nsum = 0.0;
  for (int t = warp; t < n_tokens; t += KN_DB_WARPS) {
    const T *k = kh + (int64_t)t * head_dim;
    double ss = 0.0;
    for (int i = lane; i < head_dim; i += 32) {
      double dv = (double)c_s[i] - (double)kn_ld(k + i);
      ss += dv * dv;
    }
    for (int off = 16; off > 0; off >>= 1) ss += __shfl_xor_sync(0xffffffffu, ss, off);
    const double n = sqrt(ss);
    if (n < nmin) nmin = n;
    if (n > nmax) nmax = n;
    nsum += n;
  }
  if (lane == 0) {
    s_min[warp] = nmin;
    s_max[warp] = nmax;
    s_sum[warp] = nsum;
  }
  __syncthreads();
  if (threadIdx.x == 0) {
    nmin = s_min[0], nmax = s_max[0], nsum = s_sum[0];
    for (int w = 1; w < KN_DB_WARPS; w++) {
      if (s_min[w] < nmin) nmin = s_min[w];
      if (s_max[w] > nmax) nmax = s_max[w];
      nsum += s_sum[w];
    }
    double r;
    if (kind == KN_DIGEST_SPHERE_MAX)
      r = nmax;
    else if (kind == KN_DIGEST_SPHERE_CENTER)
      r = (nmin + nmax) / 2.0;
    else  // KN_DIGEST_SPHERE_MEAN
      r = nsum / n_tokens;
    float rf = (float)r;
    // sphere-max is a bound: never round its radius down (as kv_digest.c).
    if (kind == KN_DIGEST_SPHERE_MAX && (double)rf < r) rf = nextafterf(rf, INFINITY);
    c[head_dim] = rf;
  }
  // The next item overwrites c_s and s_*.
  __syncthreads();
}

// k_base: the pool's K, page pg / head g / token t / dim i at
//   k_base[pg * page_stride + g * head_stride + t * head_dim + i], T = half or bf16.
// digests: [n_pages][n_kv_heads][kn_digest_floats(kind, head_dim)] O: f32 for every
// kind, T (16-bit) for the cuboid kinds only (the check refuses the others).
template <typename T, typename O>
__global__ void __launch_bounds__(KN_DB_THREADS)
    kn_digest_build_kernel(int kind, const T *__restrict__ k_base, int64_t page_stride, int64_t head_stride,
                           int page_tokens, int n_kv_heads, int head_dim, const int32_t *__restrict__ page_ids,
                           O *__restrict__ digests, int64_t n_pages) {
  kn_pdl_begin();
  extern __shared__ float c_s[];  // [head_dim], sphere kinds only
  const int n_floats = kn_digest_floats(kind, head_dim);
  const int64_t n_items = n_pages * n_kv_heads;
  for (int64_t item = blockIdx.x; item < n_items; item += gridDim.x) {
    const int64_t p = item / n_kv_heads;
    const int g = (int)(item - p * n_kv_heads);
    const T *kh = k_base + (int64_t)page_ids[p] * page_stride + (int64_t)g * head_stride;
    O *o = digests + item * n_floats;
    if constexpr (sizeof(O) == 2) {
      kn_db_cuboid(kind, kh, page_tokens, head_dim, o, o + head_dim);
    } else {
      if (kn_digest_is_cuboid(kind))
        kn_db_cuboid(kind, kh, page_tokens, head_dim, o, o + head_dim);
      else if (kn_digest_is_sphere(kind))
        kn_db_sphere(kind, kh, page_tokens, head_dim, o, c_s);
      else
        kn_db_centroid(kh, page_tokens, head_dim, o);
    }
  }
}

template <typename T, typename O>
cudaError_t kn_digest_build_launch(const kn_cuda_digest_build_args_t *a, cudaStream_t stream) {
  const int64_t n_items = a->n_pages * a->n_kv_heads;
  const int n_blocks = (int)(n_items < KN_DB_MAX_BLOCKS ? n_items : KN_DB_MAX_BLOCKS);
  const size_t smem_bytes = sizeof(O) == 2 ? 0 : (size_t)a->head_dim * sizeof(float);
  kn_launch(kn_digest_build_kernel<T, O>, n_blocks, KN_DB_THREADS, smem_bytes, stream,
      a->kind, (const T *)a->k_base, a->page_stride_elems, a->head_stride_elems, a->page_tokens, a->n_kv_heads,
      a->head_dim, a->page_ids, (O *)a->digests, a->n_pages);
  return cudaGetLastError();
}

// Everything checkable without touching the device; messages name the public op.
ak_status_t kn_digest_build_check(const kn_cuda_digest_build_args_t *a, ak_err_t *err) {
  const char *fn = "kn_cuda_digest_build";
  if (!a) return ak_err_set_fn(err, AK_ERR_INVALID_ARG, fn, "args is NULL");
  if (a->kind < 0 || a->kind >= KN_DIGEST_N_KINDS)
    return ak_err_set_fn(err, AK_ERR_INVALID_ARG, fn, "digest kind=%d is not a kv_digest_kind_t (0..6)", a->kind);
  if (a->kv_dtype != KN_CUDA_F16 && a->kv_dtype != KN_CUDA_BF16)
    return ak_err_set_fn(err, AK_ERR_INVALID_ARG, fn, "kv_dtype=%d: KV pages are F16 or BF16", (int)a->kv_dtype);
  AK_TRY(kn_digest_check_dtype(a->kind, a->digest_dtype, fn, err));
  // 16-bit digests of keys of another dtype would round every bound, max included.
  if (a->digest_dtype != KN_CUDA_F32 && a->digest_dtype != a->kv_dtype)
    return ak_err_set_fn(err, AK_ERR_INVALID_ARG, fn,
                         "digest_dtype=%d differs from kv_dtype=%d: a 16-bit digest must have its pages' dtype",
                         (int)a->digest_dtype, (int)a->kv_dtype);
  if (a->n_pages < 0) return ak_err_set_fn(err, AK_ERR_INVALID_ARG, fn, "n_pages=%lld < 0", (long long)a->n_pages);
  if (a->page_tokens < 1)
    return ak_err_set_fn(err, AK_ERR_INVALID_ARG, fn, "page_tokens=%d must be >= 1", a->page_tokens);
  if (a->n_kv_heads < 1 || a->n_kv_heads > KN_DIGEST_MAX_HEADS)
    return ak_err_set_fn(err, AK_ERR_INVALID_ARG, fn, "n_kv_heads=%d outside [1, %d]", a->n_kv_heads,
                         KN_DIGEST_MAX_HEADS);
  if (a->head_dim < 1 || a->head_dim > KN_DIGEST_MAX_HEAD_DIM)
    return ak_err_set_fn(err, AK_ERR_INVALID_ARG, fn, "head_dim=%d outside [1, %d]", a->head_dim,
                         KN_DIGEST_MAX_HEAD_DIM);
  // Tokens of a head are contiguous rows and heads of a page do not overlap.
  if (a->head_stride_elems < (int64_t)a->page_tokens * a->head_dim)
    return ak_err_set_fn(err, AK_ERR_INVALID_ARG, fn, "head_stride_elems=%lld < page_tokens * head_dim = %lld",
                         (long long)a->head_stride_elems, (long long)a->page_tokens * a->head_dim);
  if (a->page_stride_elems < a->head_stride_elems * a->n_kv_heads)
    return ak_err_set_fn(err, AK_ERR_INVALID_ARG, fn, "page_stride_elems=%lld < n_kv_heads * head_stride_elems = %lld",
                         (long long)a->page_stride_elems, (long long)a->head_stride_elems * a->n_kv_heads);
  if (a->n_pages == 0) return AK_OK;
  if (!a->k_base || !a->page_ids || !a->digests)
    return ak_err_set_fn(err, AK_ERR_INVALID_ARG, fn, "k_base=%p, page_ids=%p, digests=%p: all are required",
                         a->k_base, (const void *)a->page_ids, (void *)a->digests);
  const uintptr_t dg_align = a->digest_dtype == KN_CUDA_F32 ? 4 : 2;
  if ((uintptr_t)a->k_base % 2 || (uintptr_t)a->page_ids % 4 || (uintptr_t)a->digests % dg_align)
    return ak_err_set_fn(err, AK_ERR_INVALID_ARG, fn,
                         "k_base=%p (2-byte), page_ids=%p (4-byte), digests=%p (%d-byte) are misaligned", a->k_base,
                         (const void *)a->page_ids, a->digests, (int)dg_align);
  return AK_OK;
}

}  // namespace

extern "C" ak_status_t kn_cuda_digest_build(const kn_cuda_digest_build_args_t *args, kn_cuda_stream_t stream,
                                            ak_err_t *err) {
  AK_TRY(kn_digest_build_check(args, err));
  if (args->n_pages == 0) return AK_OK;
  cudaStream_t s = kn_stream(stream);
  const bool narrow = args->digest_dtype != KN_CUDA_F32;  // = kv_dtype (checked)
  switch (args->kv_dtype) {
    case KN_CUDA_F16:
      if (narrow)
        KN_CUDA_TRY(err, (kn_digest_build_launch<__half, __half>(args, s)));
      else
        KN_CUDA_TRY(err, (kn_digest_build_launch<__half, float>(args, s)));
      break;
    case KN_CUDA_BF16:
      if (narrow)
        KN_CUDA_TRY(err, (kn_digest_build_launch<__nv_bfloat16, __nv_bfloat16>(args, s)));
      else
        KN_CUDA_TRY(err, (kn_digest_build_launch<__nv_bfloat16, float>(args, s)));
      break;
    default:
      return ak_err_set_fn(err, AK_ERR_INVALID_ARG, __func__, "kv_dtype=%d: KV pages are F16 or BF16",
                           (int)args->kv_dtype);
  }
  return AK_OK;
}

namespace {

template <typename O>
void kn_digest_narrow_rows(const float *src, int64_t n_heads, int32_t head_dim, uint16_t *dst) {
  for (int64_t h = 0; h < n_heads; h++) {
    const float *s = src + h * 2 * head_dim;
    uint16_t *d = dst + h * 2 * head_dim;
    for (int32_t i = 0; i < head_dim; i++) {
      O ub, lb;
      kn_db_st_ub(&ub, s[i]);
      kn_db_st_lb(&lb, s[head_dim + i]);
      memcpy(d + i, &ub, 2);
      memcpy(d + head_dim + i, &lb, 2);
    }
  }
}

}  // namespace

extern "C" ak_status_t kn_cuda_digest_narrow(int32_t kind, kn_cuda_dtype_t digest_dtype, const float *src,
                                             int64_t n_pages, int32_t n_kv_heads, int32_t head_dim, void *dst,
                                             ak_err_t *err) {
  if (!kn_digest_is_cuboid(kind) || (digest_dtype != KN_CUDA_F16 && digest_dtype != KN_CUDA_BF16))
    return ak_err_set_fn(err, AK_ERR_UNSUPPORTED, __func__,
                         "digest kind=%d, digest_dtype=%d: 16-bit digests are cuboid kinds (4..6) in F16 (1) or "
                         "BF16 (2)",
                         kind, (int)digest_dtype);
  if (n_pages < 0 || n_kv_heads < 1 || n_kv_heads > KN_DIGEST_MAX_HEADS || head_dim < 1 ||
      head_dim > KN_DIGEST_MAX_HEAD_DIM)
    return ak_err_set_fn(err, AK_ERR_INVALID_ARG, __func__,
                         "n_pages=%lld, n_kv_heads=%d, head_dim=%d: n_pages >= 0, the others in [1, %d]",
                         (long long)n_pages, n_kv_heads, head_dim, KN_DIGEST_MAX_HEADS);
  if (n_pages == 0) return AK_OK;
  if (!src || !dst) return ak_err_set_fn(err, AK_ERR_INVALID_ARG, __func__, "src=%p, dst=%p: both are required",
                                         (const void *)src, dst);
  const int64_t n_heads = n_pages * n_kv_heads;
  if (digest_dtype == KN_CUDA_F16)
    kn_digest_narrow_rows<__half>(src, n_heads, head_dim, (uint16_t *)dst);
  else
    kn_digest_narrow_rows<__nv_bfloat16>(src, n_heads, head_dim, (uint16_t *)dst);
  return AK_OK;
}
