// kn_cuda_digest_build: ArkVale digests of filled KV pages on the GPU, all 7 kinds of
// kvpool/kv_digest.h with kv_digest.c's arithmetic, so that its CPU build is the
// oracle: min/max in f32, centres, radii and means in double, rounded to f32 once.
// Not the hot path (one call per page that fills), so plain and exact over fast.
//
// Launch: one 128-thread block per (page, KV head) item, grid-stride over items.
//   cuboid-*, centroid: thread i owns dimensions i, i + 128, ...; it walks the page's
//                       tokens for each (coalesced: a token row is head_dim contiguous
//                       elements), exactly kv_build_cuboid / kv_build_centroid's loops.
//   sphere-*:           the same walk writes c to shared memory; then each warp takes
//                       tokens t = warp, warp + 4, ... and reduces ||c - k_t||^2 over
//                       its lanes in double; thread 0 folds the 4 warps' min, max, sum.
#include <math.h>

#include "kn_cuda_digest.cuh"
#include "kn_cuda_internal.cuh"

namespace {

constexpr int KN_DB_THREADS = 128;
constexpr int KN_DB_WARPS = KN_DB_THREADS / 32;
constexpr int64_t KN_DB_MAX_BLOCKS = 1 << 20;

// kh: token 0 of one KV head of one page; token t, dimension i at kh[t * head_dim + i].
template <typename T>
__device__ void kn_db_cuboid(int kind, const T *kh, int n_tokens, int head_dim, float *ub, float *lb) {
  for (int i = threadIdx.x; i < head_dim; i += blockDim.x) {
    float mx = kn_ld(kh + i), mn = mx;
    for (int t = 1; t < n_tokens; t++) {
      float v = kn_ld(kh + (int64_t)t * head_dim + i);
      if (v > mx) mx = v;
      if (v < mn) mn = v;
    }
    if (kind == KN_DIGEST_CUBOID_MAX) {
      ub[i] = mx;
      lb[i] = mn;
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
    ub[i] = (float)(c + r);
    lb[i] = (float)(c - r);
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
// digests: [n_pages][n_kv_heads][kn_digest_floats(kind, head_dim)] f32.
template <typename T>
__global__ void __launch_bounds__(KN_DB_THREADS)
    kn_digest_build_kernel(int kind, const T *__restrict__ k_base, int64_t page_stride, int64_t head_stride,
                           int page_tokens, int n_kv_heads, int head_dim, const int32_t *__restrict__ page_ids,
                           float *__restrict__ digests, int64_t n_pages) {
  extern __shared__ float c_s[];  // [head_dim], sphere kinds only
  const int n_floats = kn_digest_floats(kind, head_dim);
  const int64_t n_items = n_pages * n_kv_heads;
  for (int64_t item = blockIdx.x; item < n_items; item += gridDim.x) {
    const int64_t p = item / n_kv_heads;
    const int g = (int)(item - p * n_kv_heads);
    const T *kh = k_base + (int64_t)page_ids[p] * page_stride + (int64_t)g * head_stride;
    float *o = digests + item * n_floats;
    if (kn_digest_is_cuboid(kind))
      kn_db_cuboid(kind, kh, page_tokens, head_dim, o, o + head_dim);
    else if (kn_digest_is_sphere(kind))
      kn_db_sphere(kind, kh, page_tokens, head_dim, o, c_s);
    else
      kn_db_centroid(kh, page_tokens, head_dim, o);
  }
}

template <typename T>
cudaError_t kn_digest_build_launch(const kn_cuda_digest_build_args_t *a, cudaStream_t stream) {
  const int64_t n_items = a->n_pages * a->n_kv_heads;
  const int n_blocks = (int)(n_items < KN_DB_MAX_BLOCKS ? n_items : KN_DB_MAX_BLOCKS);
  const size_t smem_bytes = (size_t)a->head_dim * sizeof(float);
  kn_digest_build_kernel<T><<<n_blocks, KN_DB_THREADS, smem_bytes, stream>>>(
      a->kind, (const T *)a->k_base, a->page_stride_elems, a->head_stride_elems, a->page_tokens, a->n_kv_heads,
      a->head_dim, a->page_ids, a->digests, a->n_pages);
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
  if ((uintptr_t)a->k_base % 2 || (uintptr_t)a->page_ids % 4 || (uintptr_t)a->digests % 4)
    return ak_err_set_fn(err, AK_ERR_INVALID_ARG, fn,
                         "k_base=%p (2-byte), page_ids=%p, digests=%p (4-byte) are misaligned", a->k_base,
                         (const void *)a->page_ids, (void *)a->digests);
  return AK_OK;
}

}  // namespace

extern "C" ak_status_t kn_cuda_digest_build(const kn_cuda_digest_build_args_t *args, kn_cuda_stream_t stream,
                                            ak_err_t *err) {
  AK_TRY(kn_digest_build_check(args, err));
  if (args->n_pages == 0) return AK_OK;
  cudaStream_t s = kn_stream(stream);
  switch (args->kv_dtype) {
    case KN_CUDA_F16: KN_CUDA_TRY(err, kn_digest_build_launch<__half>(args, s)); break;
    case KN_CUDA_BF16: KN_CUDA_TRY(err, kn_digest_build_launch<__nv_bfloat16>(args, s)); break;
    default:
      return ak_err_set_fn(err, AK_ERR_INVALID_ARG, __func__, "kv_dtype=%d: KV pages are F16 or BF16",
                           (int)args->kv_dtype);
  }
  return AK_OK;
}
