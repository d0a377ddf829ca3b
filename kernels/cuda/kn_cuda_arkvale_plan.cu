// kn_cuda_arkvale_plan: ArkVale's per-step decision for one layer, on the device —
// the top-k middle pages, which missing ones to recall into which victims' slots, the
// updated logical -> physical table and the attention view — so that a decode step
// needs no host round trip (notes/cuda-backend-status.md, "Design sketch").
//
// Semantics are kvpool's kv_select_for_view for arkvale attending resident pages
// (kvpool/kv_select.c), which is the oracle:
//   candidates  logical pages [n_sink, n_pages - n_window), all filled
//   ranking     score descending, ties to the higher page; NaN ranks lowest
//   top         the k best candidates
//   victims     resident candidates outside the top, minus the best (n_resident_others -
//               n_missing) of them, taken in ascending page order
//   recalls     the missing top pages in ranking order, each into the next victim's page
//   view        every resident page after the swaps, in logical order
// Since the victims are exactly the worst min(n_missing, n_resident_others) resident
// candidates outside the top, every victim is used and n_recalls = that minimum.
//
// One 1024-thread block per sequence; E = pow2(stride) / 1024 (at least 1) candidates
// per thread, position i = e * 1024 + threadIdx.x held in registers as one 64-bit key
// (kn_plan_key). The bitonic sort exchanges at distance < 32 through warp shuffles, at
// 32..512 through a shared double buffer (one barrier per two steps), at >= 1024 between a
// thread's own registers: 9 barriers at 1k candidates instead of one per step (55).
// Every "the n-th such page" of the rules is then a block-wide rank from ballots and one
// barrier (kn_plan_rank2), two flags at a time: one pass in ranking order, one in
// logical order. Scores and the table are read from global memory once, coalesced.
#include "kn_cuda_internal.cuh"

namespace {

constexpr int kThreads = 1024;
constexpr int kWarps = kThreads / 32;

typedef unsigned long long kn_plan_key_t;

// The ranking as one unsigned key, larger ranks higher: the score's order-preserving
// bits (NaN -> 0 below every number, -0 as +0 so they tie), then page + 1 so that ties go
// to the higher page. Integer-only, so flush-to-zero cannot merge subnormals. Pads are 0,
// below every candidate (whose low word is >= 1).
__device__ __forceinline__ kn_plan_key_t kn_plan_key(float x, int32_t page) {
  const uint32_t b = __float_as_uint(x), mag = b & 0x7fffffffu;
  uint32_t u;
  if (mag > 0x7f800000u) u = 0;
  else if (mag == 0) u = 0x80000000u;
  else u = (b & 0x80000000u) ? ~b : (b | 0x80000000u);
  return ((kn_plan_key_t)u << 32) | (uint32_t)(page + 1);
}
__device__ __forceinline__ int32_t kn_plan_page(kn_plan_key_t key) { return (int32_t)(uint32_t)key - 1; }

// Compare-exchange seen from one side: keep the larger or the smaller key.
__device__ __forceinline__ kn_plan_key_t kn_plan_cx(kn_plan_key_t mine, kn_plan_key_t other, bool keep_max) {
  return keep_max ? (mine > other ? mine : other) : (mine < other ? mine : other);
}

// One bitonic step at distance J * 1024: between this thread's elements e and e | J.
template <int E, int J>
__device__ __forceinline__ void kn_plan_step_regs(kn_plan_key_t (&v)[E], int32_t size, int ne) {
#pragma unroll
  for (int e = 0; e < E; e++) {
    if ((e & J) == 0 && (e | J) < E && e < ne) {
      const bool up = ((e * kThreads + (int32_t)threadIdx.x) & size) == 0;  // this run sorts best first
      const kn_plan_key_t lo = v[e], hi = v[e | J];
      const kn_plan_key_t mx = lo > hi ? lo : hi, mn = lo > hi ? hi : lo;
      v[e] = up ? mx : mn;
      v[e | J] = up ? mn : mx;
    }
  }
}

// Bitonic sort, best first, of positions [0, Pc) (Pc a power of two), position
// e * kThreads + threadIdx.x in v[e]; buf is [2][E * kThreads]. Every thread calls it.
template <int E>
__device__ void kn_plan_sort(kn_plan_key_t (&v)[E], int32_t Pc, kn_plan_key_t *buf) {
  const int32_t t = threadIdx.x;
  const int ne = Pc > kThreads ? Pc / kThreads : 1;  // elements that hold candidates
  int b = 0;
  for (int32_t size = 2; size <= Pc; size <<= 1) {
    int32_t j = size >> 1;
    for (; j >= kThreads; j >>= 1) {
      if (j == kThreads) kn_plan_step_regs<E, 1>(v, size, ne);
      else if (j == 2 * kThreads) kn_plan_step_regs<E, 2>(v, size, ne);
      else kn_plan_step_regs<E, 4>(v, size, ne);
    }
    // Through shared memory, two steps (j, h = j / 2) per barrier where both are >= 32:
    // each thread reads its group of four (i, i ^ j, i ^ h, i ^ j ^ h) and computes its
    // own result of both steps. Double buffer: a write to buf b comes after the barrier
    // that follows every read of it one exchange back.
    while (j >= 32) {
      kn_plan_key_t *x = buf + b * (E * kThreads);
#pragma unroll
      for (int e = 0; e < E; e++)
        if (e < ne) x[e * kThreads + t] = v[e];
      __syncthreads();
      const int32_t h = j >> 1;
#pragma unroll
      for (int e = 0; e < E; e++) {
        if (e < ne) {
          const int32_t i = e * kThreads + t;
          const bool up = (i & size) == 0, keep_max_j = ((i & j) == 0) == up;
          const kn_plan_key_t mine = kn_plan_cx(v[e], x[e * kThreads + (t ^ j)], keep_max_j);
          if (h >= 32) {
            const kn_plan_key_t pair = kn_plan_cx(x[e * kThreads + (t ^ h)], x[e * kThreads + (t ^ j ^ h)], keep_max_j);
            v[e] = kn_plan_cx(mine, pair, ((i & h) == 0) == up);
          } else {
            v[e] = mine;
          }
        }
      }
      j = h >= 32 ? h >> 1 : h;  // after a single step (j == 32), h goes on through the shuffles
      b ^= 1;
    }
    for (; j >= 1; j >>= 1) {
#pragma unroll
      for (int e = 0; e < E; e++) {
        if (e < ne) {
          const int32_t i = e * kThreads + t;
          const kn_plan_key_t o = __shfl_xor_sync(0xffffffffu, v[e], j);
          v[e] = kn_plan_cx(v[e], o, ((i & j) == 0) == ((i & size) == 0));
        }
      }
    }
  }
}

// Exclusive ranks of two flag sets over the positions e * kThreads + threadIdx.x, in
// that order, and their totals (each <= 65535: they share a word). cnt is [E * kWarps].
// One barrier; every thread calls it.
template <int E>
__device__ void kn_plan_rank2(const bool (&fa)[E], const bool (&fb)[E], int32_t (&ra)[E], int32_t (&rb)[E],
                              int32_t *total_a, int32_t *total_b, uint32_t *cnt) {
  const int lane = threadIdx.x & 31, w = threadIdx.x >> 5;
  const uint32_t below = (1u << lane) - 1u;
#pragma unroll
  for (int e = 0; e < E; e++) {
    const uint32_t ma = __ballot_sync(0xffffffffu, fa[e]), mb = __ballot_sync(0xffffffffu, fb[e]);
    ra[e] = __popc(ma & below);
    rb[e] = __popc(mb & below);
    if (lane == 0) cnt[e * kWarps + w] = (uint32_t)__popc(ma) | ((uint32_t)__popc(mb) << 16);
  }
  __syncthreads();
  uint32_t base = 0;  // both counts over the earlier elements
#pragma unroll
  for (int e = 0; e < E; e++) {
    const uint32_t x = cnt[e * kWarps + lane];
    uint32_t inc = x;
    for (int o = 1; o < 32; o <<= 1) {
      const uint32_t y = __shfl_up_sync(0xffffffffu, inc, o);
      if (lane >= o) inc += y;
    }
    const uint32_t before = base + __shfl_sync(0xffffffffu, inc - x, w);
    ra[e] += (int32_t)(before & 0xffffu);
    rb[e] += (int32_t)(before >> 16);
    base += __shfl_sync(0xffffffffu, inc, 31);
  }
  *total_a = (int32_t)(base & 0xffffu);
  *total_b = (int32_t)(base >> 16);
}

__host__ __device__ inline int32_t kn_plan_pow2(int32_t n) {
  int32_t P = 1;
  while (P < n) P <<= 1;
  return P;
}

// Elements per thread for a stride (the kernel's template argument).
__host__ __device__ inline int kn_plan_elems(int32_t stride) {
  const int32_t P = kn_plan_pow2(stride);
  return P > kThreads ? P / kThreads : 1;
}

// Shared memory, in bytes from the base:
//   [0, 16 E kThreads)   sort buffers [2][E * kThreads] u64; after the sort, reused as
//                        tag, rec_p, vict, rec_at [stride] i32 each (16 stride bytes)
//   then ph [stride] i32 (the table as read), cnt_a, cnt_b [E * kWarps] u32
template <int E>
__global__ void __launch_bounds__(kThreads) kn_arkvale_plan_kernel(kn_cuda_arkvale_plan_args_t a) {
  kn_pdl_begin();
  extern __shared__ __align__(16) unsigned char kn_plan_smem[];
  const int s = blockIdx.x;
  const int32_t t = threadIdx.x;
  const int32_t stride = a.stride;
  const int32_t N = min(a.n_pages[s], stride);
  if (a.keep_q_src) {  // 16-byte copies (the launcher checked alignment and size)
    const float4 *src = (const float4 *)(a.keep_q_src + (int64_t)s * a.keep_q_floats);
    float4 *dst = (float4 *)(a.keep_q_dst + (int64_t)s * a.keep_q_floats);
    for (int32_t i = t; i < a.keep_q_floats / 4; i += kThreads) dst[i] = src[i];
  }
  if (N <= 0) {  // no selection: nothing to recall, the view is the caller's
    for (int32_t q = t; q < a.k; q += kThreads) {
      a.recall_page[(int64_t)s * a.k + q] = a.recall_phys[(int64_t)s * a.k + q] = -1;
      if (a.recall_victim) a.recall_victim[(int64_t)s * a.k + q] = -1;
      if (a.recall_src) a.recall_src[(int64_t)s * a.k + q] = nullptr;
    }
    if (t == 0) a.view_len[s] = 0;
    return;
  }
  const float *score = a.scores + (int64_t)(a.score_row ? a.score_row[s] : s) * stride;
  int32_t *phys = a.phys + (int64_t)s * stride;
  const int32_t c0 = a.n_sink, c1 = N - a.n_window;
  const int32_t n_cand = c1 > c0 ? c1 - c0 : 0;
  kn_plan_key_t *buf = reinterpret_cast<kn_plan_key_t *>(kn_plan_smem);
  int32_t *ph = reinterpret_cast<int32_t *>(buf + 2 * E * kThreads);
  uint32_t *cnt_a = reinterpret_cast<uint32_t *>(ph + stride), *cnt_b = cnt_a + E * kWarps;
  // after the sort: tag[j] of candidate j is 0 unchanged, 1 victim, 2 + q the q-th
  // recall; rec_p[q] its page, vict[q] the q-th victim, rec_at[q] its place in the view
  int32_t *tag = reinterpret_cast<int32_t *>(kn_plan_smem), *rec_p = tag + stride, *vict = rec_p + stride,
          *rec_at = vict + stride;

  // candidate position i = e * kThreads + t in v[e]; logical page j = e * kThreads + t in own[e]
  kn_plan_key_t v[E];
  int32_t own[E];
#pragma unroll
  for (int e = 0; e < E; e++) {
    const int32_t i = e * kThreads + t;
    v[e] = i < n_cand ? kn_plan_key(score[c0 + i], c0 + i) : 0;
    own[e] = i < N ? phys[i] : -1;
  }
#pragma unroll
  for (int e = 0; e < E; e++)
    if (e * kThreads + t < N) ph[e * kThreads + t] = own[e];
  __syncthreads();
  kn_plan_sort<E>(v, kn_plan_pow2(n_cand), buf);

  // ranking order: the missing top pages (ranked in recall order) and the resident
  // candidates outside the top (the first n_stay stay, the rest are the victims)
  const int32_t k = min(a.k, n_cand);
  bool fa[E], fb[E];
  int32_t ra[E], rb[E], n_missing, n_others;
#pragma unroll
  for (int e = 0; e < E; e++) {
    const int32_t i = e * kThreads + t;
    const bool real = i < n_cand, res = real && ph[kn_plan_page(v[e])] >= 0;
    fa[e] = real && i < k && !res;
    fb[e] = i >= k && res;
  }
  kn_plan_rank2<E>(fa, fb, ra, rb, &n_missing, &n_others, cnt_a);  // its barrier ends the sort's reads of buf
  const int32_t n_stay = n_others - n_missing;
  const int32_t n_rec = min(n_missing, n_others);
#pragma unroll
  for (int e = 0; e < E; e++) {
    if (e * kThreads + t < n_cand) {
      const int32_t p = kn_plan_page(v[e]);
      int32_t tg = 0;
      if (fa[e] && ra[e] < n_rec) {
        tg = 2 + ra[e];
        rec_p[ra[e]] = p;
      } else if (fb[e] && rb[e] >= n_stay) {
        tg = 1;
      }
      tag[p] = tg;
    }
  }
  int32_t *rec_page = a.recall_page + (int64_t)s * a.k, *rec_phys = a.recall_phys + (int64_t)s * a.k;
  int32_t *rec_vict = a.recall_victim ? a.recall_victim + (int64_t)s * a.k : nullptr;
  const void **rec_src = a.recall_src ? a.recall_src + (int64_t)s * a.k : nullptr;
  for (int32_t q = n_rec + t; q < a.k; q += kThreads) {
    rec_page[q] = rec_phys[q] = -1;
    if (rec_vict) rec_vict[q] = -1;
    if (rec_src) rec_src[q] = nullptr;
  }
  __syncthreads();

  // logical order: the victims (ascending page order) and the resident pages after the
  // swaps (their place in the view)
  int32_t *view = a.view + (a.view_ptr ? (int64_t)a.view_ptr[s] : (int64_t)s * stride);
  bool fv[E], fw[E];
  int32_t tg[E], rv[E], rw[E], n_vict, n_view;
#pragma unroll
  for (int e = 0; e < E; e++) {
    const int32_t j = e * kThreads + t;
    tg[e] = j >= c0 && j < c1 ? tag[j] : 0;
    fv[e] = tg[e] == 1;
    fw[e] = j < N && (tg[e] >= 2 || (tg[e] == 0 && own[e] >= 0));
  }
  kn_plan_rank2<E>(fv, fw, rv, rw, &n_vict, &n_view, cnt_b);
#pragma unroll
  for (int e = 0; e < E; e++) {
    const int32_t j = e * kThreads + t;
    if (fv[e]) {
      vict[rv[e]] = j;
      phys[j] = -1;
    } else if (tg[e] >= 2) {
      rec_at[tg[e] - 2] = rw[e];
    } else if (fw[e]) {
      view[rw[e]] = own[e];
    }
  }
  __syncthreads();

  // recalls: the q-th missing page takes the q-th victim's physical page (n_vict == n_rec)
  const int32_t *bslot = a.backup_slot ? a.backup_slot + (int64_t)s * stride : nullptr;
  for (int32_t q = t; q < n_rec; q += kThreads) {
    const int32_t r = rec_p[q], vv = vict[q], pg = ph[vv];
    rec_page[q] = r;
    rec_phys[q] = pg;
    if (rec_vict) rec_vict[q] = vv;
    if (rec_src) rec_src[q] = bslot ? a.tier_base + (int64_t)bslot[r] * a.slot_bytes : nullptr;
    phys[r] = pg;
    view[rec_at[q]] = pg;
  }
  if (t == 0) a.view_len[s] = n_view;
  (void)n_vict;
}

template <int E>
cudaError_t kn_arkvale_plan_launch(const kn_cuda_arkvale_plan_args_t *a, size_t smem, cudaStream_t stream) {
  if (smem > 48 * 1024) {  // opting in above the default is needed only there
    cudaError_t e = cudaFuncSetAttribute(kn_arkvale_plan_kernel<E>, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem);
    if (e != cudaSuccess) return e;
  }
  kn_launch(kn_arkvale_plan_kernel<E>, a->n_seqs, kThreads, smem, stream, *a);
  return cudaGetLastError();
}

}  // namespace

extern "C" size_t kn_cuda_arkvale_plan_smem_bytes(int32_t stride) {
  const size_t E = (size_t)kn_plan_elems(stride);
  // sort buffers (and, after the sort, four [stride] i32 arrays), ph, cnt_a and cnt_b
  return E * kThreads * 16 + (size_t)stride * 4 + E * kWarps * 4 * 2;
}

extern "C" ak_status_t kn_cuda_arkvale_plan(const kn_cuda_arkvale_plan_args_t *a, kn_cuda_stream_t stream,
                                            ak_err_t *err) {
  if (!a) return AK_ERR(err, AK_ERR_INVALID_ARG, "args is NULL");
  if (!a->scores || !a->phys || !a->n_pages || !a->recall_page || !a->recall_phys || !a->view || !a->view_len)
    return AK_ERR(err, AK_ERR_INVALID_ARG, "a device array is NULL");
  if (a->n_seqs < 1 || a->stride < 1 || a->stride > KN_CUDA_PLAN_MAX_PAGES)
    return AK_ERR(err, AK_ERR_INVALID_ARG, "n_seqs=%d must be >= 1 and stride=%d in [1, %d]", a->n_seqs, a->stride,
                  KN_CUDA_PLAN_MAX_PAGES);
  if (a->n_sink < 0 || a->n_window < 1 || a->k < 0 || a->k > KN_CUDA_PLAN_MAX_PAGES)
    return AK_ERR(err, AK_ERR_INVALID_ARG, "n_sink=%d, n_window=%d, k=%d: need n_sink >= 0, n_window >= 1, k in [0, %d]",
                  a->n_sink, a->n_window, a->k, KN_CUDA_PLAN_MAX_PAGES);
  if (a->backup_slot && (!a->tier_base || a->slot_bytes < 1 || !a->recall_src))
    return AK_ERR(err, AK_ERR_INVALID_ARG, "backup_slot needs tier_base, slot_bytes >= 1 and recall_src");
  if (a->keep_q_src && (!a->keep_q_dst || a->keep_q_floats < 4 || a->keep_q_floats % 4 ||
                        (uintptr_t)a->keep_q_src % 16 || (uintptr_t)a->keep_q_dst % 16))
    return AK_ERR(err, AK_ERR_INVALID_ARG, "keep_q_src=%p needs keep_q_dst (%p) and both 16-byte aligned, "
                  "keep_q_floats=%d a positive multiple of 4", (const void *)a->keep_q_src, (void *)a->keep_q_dst,
                  a->keep_q_floats);
  const size_t smem = kn_cuda_arkvale_plan_smem_bytes(a->stride);
  switch (kn_plan_elems(a->stride)) {
    case 1: KN_CUDA_TRY(err, (kn_arkvale_plan_launch<1>(a, smem, kn_stream(stream)))); break;
    case 2: KN_CUDA_TRY(err, (kn_arkvale_plan_launch<2>(a, smem, kn_stream(stream)))); break;
    case 4: KN_CUDA_TRY(err, (kn_arkvale_plan_launch<4>(a, smem, kn_stream(stream)))); break;
    case 8: KN_CUDA_TRY(err, (kn_arkvale_plan_launch<8>(a, smem, kn_stream(stream)))); break;
    default: return AK_ERR(err, AK_ERR_INVALID_ARG, "stride=%d: no kernel for %d pages per thread", a->stride,
                           kn_plan_elems(a->stride));
  }
  return AK_OK;
}
