// kn_cuda_digest_score: the ArkVale page scores of a whole layer in one launch — every
// page of every sequence of the batch against its sequence's query, by the formulas of
// kvpool/kv_digest.c (kv_score_one / kv_score_page; kinds and layout in
// kn_cuda_digest.cuh). Not here: choosing pages (kn_cuda_topk). Cuboid pages of 8 to
// 32 KiB of digest go to kn_cuda_digest_score_bulk.cu instead (bulk copies into shared
// memory); this register-fed kernel takes every other call.
//
// Memory-bound: a page's digest is read once and q (n_heads * head_dim f32) is reused
// by every page of its sequence. What is read, per page and KV head (d = head_dim):
//
//   f32 (every kind)         | ub[d] or c[d] or mean[d] | lb[d] or r or - |  4 x 2d B (cuboid)
//   f16 / bf16 (cuboid only) | ub[d]                    | lb[d]           |  2 x 2d B
//
// The 16-bit rows (kn_cuda_digest_build's digest_dtype: the pages' dtype, bounds
// rounded outward) halve the bytes of the scan: cuboid, head_dim 128, 32 KV heads is
// 16 KiB a page instead of 32 KiB. They are widened to f32 in registers (exact), so the
// arithmetic is the f32 path's.
//
// Launch: blocks of 8 warps, 1, 2 or 4 consecutive pages per warp (by n_pages).
//   - The block first copies q of its first page's sequence into shared memory when
//     it fits in 48 KiB (n_heads * head_dim <= 12288); pages of that sequence read q
//     there, pages of other sequences (a block straddling two) read it through L1.
//   - A warp scores one page at a time. Every digest load is 16 bytes: E = 4 f32 or 8
//     16-bit elements. KV heads are spread over lanes: LPH lanes per KV head
//     (head_dim / E, at most 32), each lane holding E dimensions per vector (V vectors
//     when head_dim > 32 E), so a pass covers 32 / LPH KV heads (f32 head_dim 64: 2;
//     16-bit head_dim 128: 2, 64: 4). Sphere rows are head_dim + 1 floats, not 16-byte
//     aligned, so they are read as 4 floats per vector.
//   - A page is cut into chunks of NB2 = 2 / V passes of KV heads, whose digest rows
//     are loaded together (raw 16-byte vectors, widened at use), and a warp's chunks
//     (all its pages) are software-pipelined over two register buffers: the next
//     chunk's rows are in flight while this one is scored. Each lane keeps 2 * 2 loads
//     of 16 B in flight with either element size, all the time (one load at a time
//     was latency-bound; a whole batch loaded and then scored left DRAM idle while
//     the warps computed).
//   - For each query head of the KV head's group (GQA: h / (n_heads / n_kv_heads)),
//     the lanes' partial sums are reduced with shuffles (the batch's reductions
//     interleaved); the page aggregate (mean or max) is kept per lane group and
//     combined at the end.
// f32 arithmetic throughout as the CPU; the summation order differs (tree over
// dimensions), so scores agree to rounding (~1e-6 of sum |q_i d_i|), not bit for bit.
#include <math.h>

#include "kn_cuda_digest.cuh"
#include "kn_cuda_digest_score_bulk.cuh"
#include "kn_cuda_internal.cuh"

namespace {

constexpr int KN_DS_WARPS = 8;
constexpr size_t KN_DS_Q_SMEM_MAX_BYTES = 48 * 1024;  // the default dynamic limit, no opt-in
// One page per warp up to one wave of an H100 (132 SMs x 4 blocks x 8 warps).
constexpr int64_t KN_DS_ONE_PAGE_MAX = 132 * 4 * KN_DS_WARPS;

// 16 bytes of digest elements T, widened to f32 (exactly).
template <typename T>
__device__ __forceinline__ void kn_ds_widen(uint4 x, float *out);
template <>
__device__ __forceinline__ void kn_ds_widen<float>(uint4 x, float *out) {
  out[0] = __uint_as_float(x.x), out[1] = __uint_as_float(x.y);
  out[2] = __uint_as_float(x.z), out[3] = __uint_as_float(x.w);
}
template <>
__device__ __forceinline__ void kn_ds_widen<__half>(uint4 x, float *out) {
  const unsigned w[4] = {x.x, x.y, x.z, x.w};
#pragma unroll
  for (int k = 0; k < 4; k++) {
    __half2 h;
    memcpy(&h, &w[k], 4);
    const float2 f = __half22float2(h);
    out[2 * k] = f.x, out[2 * k + 1] = f.y;
  }
}
template <>
__device__ __forceinline__ void kn_ds_widen<__nv_bfloat16>(uint4 x, float *out) {
  const unsigned w[4] = {x.x, x.y, x.z, x.w};
#pragma unroll
  for (int k = 0; k < 4; k++) {  // bf16 is the top half of an f32
    out[2 * k] = __uint_as_float(w[k] << 16);
    out[2 * k + 1] = __uint_as_float(w[k] & 0xffff0000u);
  }
}

// One chunk's raw digest rows in registers (cuboid ub in a, lb in b; others c or mean
// in a, a sphere's radius in r), which of its NB2 passes hold a KV head, and the page's
// sequence (-1: a bad page table).
template <int NB2, int V>
struct KnDsBuf {
  uint4 a[NB2][V], b[NB2][V];
  float r[NB2];
  bool active[NB2];
  int s;
};

// digests: [n_pages][n_kv_heads][F] T (float: every kind; half / bf16: cuboid kinds);
// q: [n_seqs][n_heads][D] f32; scores: [n_pages].
// At most 64 registers, 4 blocks an SM (32 warps): with NB2 = 2 the kernel needs ~80,
// which held 3 blocks; the few bytes ptxas spills cost less than the occupancy (H100,
// 4 x 962 pages of 32 KV heads x 128, f16: 31.2 -> 30.2 us).
template <int D, typename T>
__global__ void __launch_bounds__(KN_DS_WARPS * 32, 4)
    kn_digest_score_kernel(int kind, int agg, const T *__restrict__ digests, const int32_t *__restrict__ page_seq,
                           const float *__restrict__ q, float *__restrict__ scores, int64_t n_pages, int n_seqs,
                           int n_heads, int n_kv_heads, int cache_q, int pages_per_warp) {
  kn_pdl_begin();
  constexpr int E = 16 / (int)sizeof(T);        // elements per 16-byte vector
  constexpr int LPH = D / E < 32 ? D / E : 32;  // lanes per KV head
  constexpr int HPW = 32 / LPH;                 // KV heads per warp pass
  constexpr int V = D / (E * LPH);              // vectors per lane per row
  constexpr int QE = E / 4;                     // float4 of q per vector
  constexpr int Q4 = D / 4;                     // float4 per query head
  constexpr int NB2 = 2 / V > 0 ? 2 / V : 1;     // KV-head passes per chunk (one buffer)
  constexpr bool F32 = sizeof(T) == 4;
  extern __shared__ float4 q_s[];               // [n_heads][D / 4], when cache_q

  const int64_t page0 = (int64_t)blockIdx.x * KN_DS_WARPS * pages_per_warp;
  int seq0 = -1;
  if (cache_q && page0 < n_pages) {
    const int s = page_seq[page0];
    if (s >= 0 && s < n_seqs) seq0 = s;
  }
  if (seq0 >= 0) {
    const float4 *src = (const float4 *)(q + (int64_t)seq0 * n_heads * D);
    for (int i = threadIdx.x; i < n_heads * Q4; i += blockDim.x) q_s[i] = __ldg(src + i);
  }
  __syncthreads();

  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int sub = lane / LPH;  // which KV head of a pass
  const int sl = lane % LPH;   // lane within that KV head
  const int group = n_heads / n_kv_heads;
  const int n_floats = kn_digest_floats(kind, D);  // elements per KV head
  // 16-bit digests are cuboid (the check refuses the rest): the other branches fold away.
  const bool cuboid = !F32 || kn_digest_is_cuboid(kind), sphere = F32 && kn_digest_is_sphere(kind);

  // A warp's pages, each cut into chunks of HPW * NB2 KV heads, walked as one list of
  // chunks with two register buffers: chunk c + 1's rows are in flight while chunk c is
  // scored, so the loads of a warp never stop for its arithmetic (loading NB passes,
  // then scoring them, left DRAM idle during every warp's arithmetic: 1.9 TB/s on an
  // H100 at 4 x 962 pages of 32 KV heads x 128, 16-bit rows).
  const int64_t pw0 = page0 + (int64_t)warp * pages_per_warp;
  const int64_t pw1 = pw0 + pages_per_warp < n_pages ? pw0 + pages_per_warp : n_pages;
  const int n_cg = (n_kv_heads + HPW * NB2 - 1) / (HPW * NB2);  // chunks per page
  const int64_t n_ch = pw1 > pw0 ? (pw1 - pw0) * n_cg : 0;
  KnDsBuf<NB2, V> b0, b1;
  float acc = 0.f;
  auto load = [&](KnDsBuf<NB2, V> &B, int64_t c) {
    const int64_t p = pw0 + c / n_cg;
    const int g0 = (int)(c % n_cg) * HPW * NB2;
    const int sq = page_seq[p];
    B.s = sq >= 0 && sq < n_seqs ? sq : -1;  // a bad page table: the page ranks last, nothing is read
    const T *dpage = digests + p * n_kv_heads * n_floats;
#pragma unroll
    for (int nb = 0; nb < NB2; nb++) {
      const int g = g0 + nb * HPW + sub;
      B.active[nb] = B.s >= 0 && g < n_kv_heads;
      const T *row = dpage + (int64_t)g * n_floats;
      B.r[nb] = 0.f;
#pragma unroll
      for (int v = 0; v < V; v++) {
        const int i = E * (v * LPH + sl);
        B.a[nb][v] = B.b[nb][v] = make_uint4(0u, 0u, 0u, 0u);
        if (!B.active[nb]) continue;
        if (sphere) {  // f32 only
          const float *fr = (const float *)row + i;
          B.a[nb][v] = make_uint4(__float_as_uint(__ldg(fr)), __float_as_uint(__ldg(fr + 1)),
                                  __float_as_uint(__ldg(fr + 2)), __float_as_uint(__ldg(fr + 3)));
        } else {
          B.a[nb][v] = __ldg((const uint4 *)(row + i));
          if (cuboid) B.b[nb][v] = __ldg((const uint4 *)(row + D + i));
        }
      }
      if (B.active[nb] && sphere) B.r[nb] = __ldg((const float *)row + D);
    }
  };
  auto score = [&](KnDsBuf<NB2, V> &B, int64_t c) {
    const int64_t p = pw0 + c / n_cg;
    const int g0 = (int)(c % n_cg) * HPW * NB2;
    if (g0 == 0) acc = agg == 1 ? -INFINITY : 0.f;
    if (B.s >= 0) {  // warp-uniform: every lane shuffles
      const float4 *q4 = B.s == seq0 ? q_s : (const float4 *)(q + (int64_t)B.s * n_heads * D);
      for (int hh = 0; hh < group; hh++) {
        float part[NB2], qq[NB2];
#pragma unroll
        for (int nb = 0; nb < NB2; nb++) {
          part[nb] = 0.f, qq[nb] = 0.f;
          if (!B.active[nb]) continue;
          const float4 *qh = q4 + (int64_t)((g0 + nb * HPW + sub) * group + hh) * Q4;
#pragma unroll
          for (int v = 0; v < V; v++) {
            float qv[E], av[E], bv[E];
#pragma unroll
            for (int k = 0; k < QE; k++) {
              const float4 x = qh[(v * LPH + sl) * QE + k];
              qv[4 * k] = x.x, qv[4 * k + 1] = x.y, qv[4 * k + 2] = x.z, qv[4 * k + 3] = x.w;
            }
            kn_ds_widen<T>(B.a[nb][v], av);
            if (cuboid) kn_ds_widen<T>(B.b[nb][v], bv);
#pragma unroll
            for (int e = 0; e < E; e++) {
              if (cuboid) {
                const float u = qv[e] * av[e], l = qv[e] * bv[e];
                part[nb] += u > l ? u : l;
              } else {
                part[nb] += qv[e] * av[e];
                qq[nb] += qv[e] * qv[e];
              }
            }
          }
        }
        // NB2 independent reductions interleaved.
#pragma unroll
        for (int off = LPH / 2; off > 0; off >>= 1) {
#pragma unroll
          for (int nb = 0; nb < NB2; nb++) {
            part[nb] += __shfl_xor_sync(0xffffffffu, part[nb], off);
            if (sphere) qq[nb] += __shfl_xor_sync(0xffffffffu, qq[nb], off);
          }
        }
#pragma unroll
        for (int nb = 0; nb < NB2; nb++) {
          if (sphere) part[nb] += B.r[nb] * sqrtf(qq[nb]);
          if (B.active[nb]) acc = agg == 1 ? (part[nb] > acc ? part[nb] : acc) : acc + part[nb];
        }
      }
    }
    if (g0 + HPW * NB2 < n_kv_heads) return;  // not the page's last chunk
    // Combine the HPW lane groups (several KV heads per pass).
#pragma unroll
    for (int off = LPH; off < 32; off <<= 1) {
      const float o = __shfl_xor_sync(0xffffffffu, acc, off);
      acc = agg == 1 ? (o > acc ? o : acc) : acc + o;
    }
    if (lane == 0) scores[p] = B.s < 0 ? -INFINITY : agg == 1 ? acc : acc / (float)n_heads;
  };
  if (n_ch > 0) load(b0, 0);
  for (int64_t c = 0; c < n_ch; c += 2) {
    if (c + 1 < n_ch) load(b1, c + 1);
    score(b0, c);
    if (c + 2 < n_ch) load(b0, c + 2);
    if (c + 1 < n_ch) score(b1, c + 1);
  }
}

template <int D, typename T>
cudaError_t kn_digest_score_launch(const kn_cuda_digest_score_args_t *a, cudaStream_t stream) {
  const size_t q_bytes = (size_t)a->n_heads * D * sizeof(float);
  const int cache_q = q_bytes <= KN_DS_Q_SMEM_MAX_BYTES;
  // Staging q costs a block n_heads * D * 4 bytes of L2 reads: amortize it over more
  // pages when there are many; up to one wave, one page per warp (H100, 4 x 962 pages:
  // 32 KV heads f16 30.2 us, 8 KV heads 13.8 us, as fast as 2 per warp; before the
  // pipelining 2 per warp was faster there: 20 vs 32 us at 8 KV heads).
  const int ppw = a->n_pages <= KN_DS_ONE_PAGE_MAX ? 1 : a->n_pages <= 16384 ? 2 : 4;
  const int64_t n_blocks = kn_ceil_div(a->n_pages, (int64_t)KN_DS_WARPS * ppw);
  kn_launch(kn_digest_score_kernel<D, T>, (unsigned)n_blocks, KN_DS_WARPS * 32, cache_q ? q_bytes : 0, stream,
      a->kind, a->agg, (const T *)a->digests, a->page_seq, a->q, a->scores, a->n_pages, a->n_seqs, a->n_heads,
      a->n_kv_heads, cache_q, ppw);
  return cudaGetLastError();
}

// head_dim dispatch for one digest element type; messages name the public op.
template <typename T>
ak_status_t kn_digest_score_run(const kn_cuda_digest_score_args_t *a, cudaStream_t stream, ak_err_t *err) {
  const char *fn = "kn_cuda_digest_score";
  cudaError_t ce;
  switch (a->head_dim) {
    case 64: ce = kn_digest_score_launch<64, T>(a, stream); break;
    case 128: ce = kn_digest_score_launch<128, T>(a, stream); break;
    case 256: ce = kn_digest_score_launch<256, T>(a, stream); break;
    default:
      return ak_err_set_fn(err, AK_ERR_UNSUPPORTED, fn, "head_dim=%d: the GPU scorer has 64, 128 and 256",
                           a->head_dim);
  }
  if (ce != cudaSuccess)
    return ak_err_set_fn(err, AK_ERR_CUDA, fn, "kn_digest_score_kernel<%d> (digest_dtype=%d): %s", a->head_dim,
                         (int)a->digest_dtype, cudaGetErrorString(ce));
  return AK_OK;
}

ak_status_t kn_digest_score_check(const kn_cuda_digest_score_args_t *a, ak_err_t *err) {
  const char *fn = "kn_cuda_digest_score";
  if (!a) return ak_err_set_fn(err, AK_ERR_INVALID_ARG, fn, "args is NULL");
  if (a->kind < 0 || a->kind >= KN_DIGEST_N_KINDS)
    return ak_err_set_fn(err, AK_ERR_INVALID_ARG, fn, "digest kind=%d is not a kv_digest_kind_t (0..6)", a->kind);
  if (a->agg != 0 && a->agg != 1)
    return ak_err_set_fn(err, AK_ERR_INVALID_ARG, fn, "agg=%d is neither 0 (mean) nor 1 (max)", a->agg);
  AK_TRY(kn_digest_check_dtype(a->kind, a->digest_dtype, fn, err));
  if (a->n_pages < 0 || a->n_pages > (int64_t)INT32_MAX * KN_DS_WARPS)
    return ak_err_set_fn(err, AK_ERR_INVALID_ARG, fn, "n_pages=%lld outside [0, 2^31 * %d)", (long long)a->n_pages,
                         KN_DS_WARPS);
  if (a->n_seqs < 1) return ak_err_set_fn(err, AK_ERR_INVALID_ARG, fn, "n_seqs=%d must be >= 1", a->n_seqs);
  if (a->n_kv_heads < 1 || a->n_kv_heads > KN_DIGEST_MAX_HEADS)
    return ak_err_set_fn(err, AK_ERR_INVALID_ARG, fn, "n_kv_heads=%d outside [1, %d]", a->n_kv_heads,
                         KN_DIGEST_MAX_HEADS);
  if (a->n_heads < 1 || a->n_heads > KN_DIGEST_MAX_HEADS || a->n_heads % a->n_kv_heads != 0)
    return ak_err_set_fn(err, AK_ERR_INVALID_ARG, fn, "n_heads=%d must be in [1, %d] and a multiple of n_kv_heads=%d",
                         a->n_heads, KN_DIGEST_MAX_HEADS, a->n_kv_heads);
  if (a->head_dim < 1 || a->head_dim > KN_DIGEST_MAX_HEAD_DIM)
    return ak_err_set_fn(err, AK_ERR_INVALID_ARG, fn, "head_dim=%d outside [1, %d]", a->head_dim,
                         KN_DIGEST_MAX_HEAD_DIM);
  if (a->head_dim != 64 && a->head_dim != 128 && a->head_dim != 256)
    return ak_err_set_fn(err, AK_ERR_UNSUPPORTED, fn, "head_dim=%d: the GPU scorer has 64, 128 and 256",
                         a->head_dim);
  if (a->n_pages == 0) return AK_OK;
  if (!a->digests || !a->page_seq || !a->q || !a->scores)
    return ak_err_set_fn(err, AK_ERR_INVALID_ARG, fn, "digests=%p, page_seq=%p, q=%p, scores=%p: all are required",
                         (const void *)a->digests, (const void *)a->page_seq, (const void *)a->q,
                         (void *)a->scores);
  // 16-byte loads of digest rows and q rows: every row offset is a multiple of 16 bytes
  // (f32 cuboid and centroid rows: 4 floats; 16-bit cuboid rows: 2 * head_dim * 2 B
  // with head_dim 64..256), and q's for every kind.
  if ((uintptr_t)a->digests % 16 || (uintptr_t)a->q % 16 || (uintptr_t)a->page_seq % 4 || (uintptr_t)a->scores % 4)
    return ak_err_set_fn(err, AK_ERR_INVALID_ARG, fn,
                         "digests=%p, q=%p (16-byte), page_seq=%p, scores=%p (4-byte) are misaligned",
                         (const void *)a->digests, (const void *)a->q, (const void *)a->page_seq, (void *)a->scores);
  return AK_OK;
}

}  // namespace

extern "C" ak_status_t kn_cuda_digest_score(const kn_cuda_digest_score_args_t *args, kn_cuda_stream_t stream,
                                            ak_err_t *err) {
  AK_TRY(kn_digest_score_check(args, err));
  if (args->n_pages == 0) return AK_OK;
  cudaStream_t s = kn_stream(stream);
  if (kn_digest_score_bulk_applies(args)) {  // cuboid pages of 8..32 KiB: the bulk-copy kernel
    const cudaError_t ce = kn_digest_score_bulk_run(args, s);
    if (ce != cudaSuccess)
      return ak_err_set_fn(err, AK_ERR_CUDA, "kn_cuda_digest_score", "bulk kernel (head_dim=%d, digest_dtype=%d): %s",
                           args->head_dim, (int)args->digest_dtype, cudaGetErrorString(ce));
    return AK_OK;
  }
  switch (args->digest_dtype) {
    case KN_CUDA_F32: return kn_digest_score_run<float>(args, s, err);
    case KN_CUDA_F16: return kn_digest_score_run<__half>(args, s, err);
    case KN_CUDA_BF16: return kn_digest_score_run<__nv_bfloat16>(args, s, err);
    default:
      return ak_err_set_fn(err, AK_ERR_INVALID_ARG, __func__, "digest_dtype=%d is not F32, F16 or BF16",
                           (int)args->digest_dtype);
  }
}
