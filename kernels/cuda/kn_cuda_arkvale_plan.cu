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
// One 1024-thread block per sequence. The table is copied to shared memory, the
// candidates are bitonic-sorted there, and every "the n-th such page" of the rules is a
// block-wide prefix count, so no step walks the pages on one thread (a serial walk over
// global memory cost ~0.2 ms per layer at 1k pages).
#include "kn_cuda_internal.cuh"

namespace {

constexpr int kThreads = 1024;

// 1 if entry a ranks above entry b (pads, index < 0, rank below everything).
__device__ __forceinline__ bool kn_plan_above(float sa, int32_t a, float sb, int32_t b) {
  if (a < 0) return false;
  if (b < 0) return true;
  bool na = isnan(sa), nb = isnan(sb);
  if (na != nb) return nb;
  if (na) return a > b;
  return sa > sb || (sa == sb && a > b);
}

// Exclusive prefix count of flag(i) over i in [lo, hi): rank[i] for every flagged i;
// returns the count. Each thread takes a contiguous chunk, so ranks follow i. Every
// thread of the block must call it (it synchronizes).
template <class F>
__device__ int32_t kn_plan_scan(F flag, int32_t lo, int32_t hi, int32_t *rank, int32_t *sums) {
  const int32_t n = hi > lo ? hi - lo : 0;
  const int32_t per = (n + kThreads - 1) / kThreads;
  const int32_t i0 = lo + (int32_t)threadIdx.x * per;
  const int32_t i1 = min(i0 + per, hi);
  int32_t local = 0;
  for (int32_t i = i0; i < i1; i++) local += flag(i) ? 1 : 0;
  const int lane = threadIdx.x & 31, w = threadIdx.x >> 5;
  int32_t x = local;
  for (int o = 1; o < 32; o <<= 1) {
    int32_t y = __shfl_up_sync(0xffffffffu, x, o);
    if (lane >= o) x += y;
  }
  if (lane == 31) sums[w] = x;
  __syncthreads();
  if (w == 0) {
    int32_t t = sums[lane];
    for (int o = 1; o < 32; o <<= 1) {
      int32_t y = __shfl_up_sync(0xffffffffu, t, o);
      if (lane >= o) t += y;
    }
    sums[lane] = t;
  }
  __syncthreads();
  int32_t run = x - local + (w > 0 ? sums[w - 1] : 0);
  for (int32_t i = i0; i < i1; i++)
    if (flag(i)) rank[i] = run++;
  const int32_t total = sums[kThreads / 32 - 1];
  __syncthreads();
  return total;
}

struct PlanSmem {
  float *key;      // [P] sorted scores
  int32_t *idx;    // [P] sorted candidates (-1 pads)
  int32_t *ph;     // [stride] the table, updated here and written back
  int32_t *rank_a; // [P] rank of a missing top entry
  int32_t *rank_b; // [max(P, stride)] scratch ranks
  int32_t *vict;   // [P] victims in ascending page order
  int32_t *sums;   // [32]
  unsigned char *mark;  // [stride] 1 top, 2 stays
};

__host__ __device__ inline int32_t kn_plan_pow2(int32_t n) {
  int32_t P = 1;
  while (P < n) P <<= 1;
  return P;
}

__device__ PlanSmem kn_plan_carve(unsigned char *base, int32_t P, int32_t stride) {
  PlanSmem m;
  int32_t R = P > stride ? P : stride;
  m.key = reinterpret_cast<float *>(base);
  m.idx = reinterpret_cast<int32_t *>(m.key + P);
  m.ph = m.idx + P;
  m.rank_a = m.ph + stride;
  m.rank_b = m.rank_a + P;
  m.vict = m.rank_b + R;
  m.sums = m.vict + P;
  m.mark = reinterpret_cast<unsigned char *>(m.sums + 32);
  return m;
}

__global__ void __launch_bounds__(kThreads) kn_arkvale_plan_kernel(kn_cuda_arkvale_plan_args_t a) {
  extern __shared__ __align__(16) unsigned char kn_plan_smem[];
  const int s = blockIdx.x;
  const int32_t stride = a.stride;
  const int32_t N = min(a.n_pages[s], stride);
  if (N <= 0) {  // no selection: nothing to recall, the view is the caller's
    for (int32_t q = threadIdx.x; q < a.k; q += blockDim.x) {
      a.recall_page[(int64_t)s * a.k + q] = a.recall_phys[(int64_t)s * a.k + q] = -1;
      if (a.recall_victim) a.recall_victim[(int64_t)s * a.k + q] = -1;
      if (a.recall_src) a.recall_src[(int64_t)s * a.k + q] = nullptr;
    }
    if (threadIdx.x == 0) a.view_len[s] = 0;
    return;
  }
  const float *score = a.scores + (int64_t)(a.score_row ? a.score_row[s] : s) * stride;
  int32_t *phys = a.phys + (int64_t)s * stride;
  const int32_t c0 = a.n_sink, c1 = N - a.n_window;
  const int32_t n_cand = c1 > c0 ? c1 - c0 : 0;
  const int32_t P = kn_plan_pow2(stride);
  PlanSmem m = kn_plan_carve(kn_plan_smem, P, stride);

  for (int32_t i = threadIdx.x; i < P; i += blockDim.x) {
    bool real = i < n_cand;
    m.idx[i] = real ? c0 + i : -1;
    m.key[i] = real ? score[c0 + i] : 0.f;
  }
  for (int32_t j = threadIdx.x; j < N; j += blockDim.x) {
    m.ph[j] = phys[j];
    m.mark[j] = 0;
  }
  __syncthreads();
  // bitonic sort of the candidates, best first (the pads sort last)
  const int32_t Pc = kn_plan_pow2(n_cand);
  for (int32_t size = 2; size <= Pc; size <<= 1) {
    for (int32_t step = size >> 1; step > 0; step >>= 1) {
      for (int32_t i = threadIdx.x; i < Pc; i += blockDim.x) {
        int32_t j = i ^ step;
        if (j > i) {
          bool up = (i & size) == 0;  // this half sorts best first
          bool j_above = kn_plan_above(m.key[j], m.idx[j], m.key[i], m.idx[i]);
          if (j_above == up) {
            float tk = m.key[i]; m.key[i] = m.key[j]; m.key[j] = tk;
            int32_t ti = m.idx[i]; m.idx[i] = m.idx[j]; m.idx[j] = ti;
          }
        }
      }
      __syncthreads();
    }
  }
  const int32_t k = a.k < n_cand ? a.k : n_cand;
  for (int32_t i = threadIdx.x; i < k; i += blockDim.x) {
    m.mark[m.idx[i]] = 1;
    m.rank_a[i] = -1;  // stays -1 unless the page is missing
  }
  // the missing top pages, in ranking order
  const int32_t n_missing =
      kn_plan_scan([&](int32_t i) { return m.ph[m.idx[i]] < 0; }, 0, k, m.rank_a, m.sums);
  // resident candidates outside the top, best first: the first n_stay stay
  auto other = [&](int32_t i) { return m.ph[m.idx[i]] >= 0; };
  const int32_t n_others = kn_plan_scan(other, k, n_cand, m.rank_b, m.sums);
  const int32_t n_stay = n_others - n_missing;
  for (int32_t i = k + threadIdx.x; i < n_cand; i += blockDim.x)
    if (other(i) && m.rank_b[i] < n_stay) m.mark[m.idx[i]] = 2;
  __syncthreads();
  // victims: resident candidates neither top nor staying, ascending page order
  const int32_t n_vict = kn_plan_scan([&](int32_t j) { return m.ph[j] >= 0 && m.mark[j] == 0; }, c0,
                                      c1 > c0 ? c1 : c0, m.rank_b, m.sums);
  for (int32_t j = c0 + threadIdx.x; j < c1; j += blockDim.x)
    if (m.ph[j] >= 0 && m.mark[j] == 0) m.vict[m.rank_b[j]] = j;
  __syncthreads();
  // recalls: the r-th missing page takes the r-th victim's physical page (flags were
  // taken above: the swaps below touch disjoint pages)
  const int32_t n_rec = n_missing < n_vict ? n_missing : n_vict;
  int32_t *rec_page = a.recall_page + (int64_t)s * a.k, *rec_phys = a.recall_phys + (int64_t)s * a.k;
  int32_t *rec_vict = a.recall_victim ? a.recall_victim + (int64_t)s * a.k : nullptr;
  const void **rec_src = a.recall_src ? a.recall_src + (int64_t)s * a.k : nullptr;
  const int32_t *bslot = a.backup_slot ? a.backup_slot + (int64_t)s * stride : nullptr;
  for (int32_t i = threadIdx.x; i < k; i += blockDim.x) {
    int32_t r = m.idx[i], q = m.rank_a[i];
    if (q < 0 || q >= n_rec) continue;
    int32_t v = m.vict[q], pg = m.ph[v];
    rec_page[q] = r;
    rec_phys[q] = pg;
    if (rec_vict) rec_vict[q] = v;
    if (rec_src) rec_src[q] = bslot ? a.tier_base + (int64_t)bslot[r] * a.slot_bytes : nullptr;
    m.ph[r] = pg;
    m.ph[v] = -1;
  }
  for (int32_t q = n_rec + threadIdx.x; q < a.k; q += blockDim.x) {
    rec_page[q] = rec_phys[q] = -1;
    if (rec_vict) rec_vict[q] = -1;
    if (rec_src) rec_src[q] = nullptr;
  }
  __syncthreads();
  // the table and the view, logical order
  int32_t *view = a.view + (a.view_ptr ? (int64_t)a.view_ptr[s] : (int64_t)s * stride);
  const int32_t n_view = kn_plan_scan([&](int32_t j) { return m.ph[j] >= 0; }, 0, N, m.rank_b, m.sums);
  for (int32_t j = threadIdx.x; j < N; j += blockDim.x) {
    phys[j] = m.ph[j];
    if (m.ph[j] >= 0) view[m.rank_b[j]] = m.ph[j];
  }
  if (threadIdx.x == 0) a.view_len[s] = n_view;
}

}  // namespace

extern "C" size_t kn_cuda_arkvale_plan_smem_bytes(int32_t stride) {
  int32_t P = kn_plan_pow2(stride), R = P > stride ? P : stride;
  // key, idx, rank_a, vict [P]; ph [stride]; rank_b [R]; sums [32]; mark [stride]
  return (size_t)P * 16 + (size_t)stride * 4 + (size_t)R * 4 + 32 * 4 + (size_t)stride;
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
  size_t smem = kn_cuda_arkvale_plan_smem_bytes(a->stride);
  KN_CUDA_TRY(err, cudaFuncSetAttribute(kn_arkvale_plan_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem));
  kn_arkvale_plan_kernel<<<a->n_seqs, kThreads, smem, kn_stream(stream)>>>(*a);
  KN_CUDA_LAUNCHED(err);
  return AK_OK;
}
