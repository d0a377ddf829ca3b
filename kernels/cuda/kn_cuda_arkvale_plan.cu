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
// One 1024-thread block per sequence: a bitonic sort of the candidates in shared memory,
// then thread 0 walks the sorted list (a few thousand entries at most).
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

__global__ void __launch_bounds__(kThreads) kn_arkvale_plan_kernel(kn_cuda_arkvale_plan_args_t a) {
  extern __shared__ unsigned char kn_plan_smem[];
  const int s = blockIdx.x;
  const int32_t stride = a.stride;
  const float *score = a.scores + (int64_t)s * stride;
  int32_t *phys = a.phys + (int64_t)s * stride;
  const int32_t N = a.n_pages[s];
  const int32_t c0 = a.n_sink, c1 = N - a.n_window;
  const int32_t n_cand = c1 > c0 ? c1 - c0 : 0;
  int32_t P = 1;
  while (P < n_cand) P <<= 1;
  float *key = reinterpret_cast<float *>(kn_plan_smem);          // [P]
  int32_t *idx = reinterpret_cast<int32_t *>(key + P);           // [P]
  unsigned char *mark = reinterpret_cast<unsigned char *>(idx + P);  // [stride]

  for (int32_t i = threadIdx.x; i < P; i += blockDim.x) {
    bool real = i < n_cand;
    idx[i] = real ? c0 + i : -1;
    key[i] = real ? score[c0 + i] : 0.f;
  }
  for (int32_t j = threadIdx.x; j < stride; j += blockDim.x) mark[j] = 0;
  __syncthreads();
  // bitonic sort, best first
  for (int32_t size = 2; size <= P; size <<= 1) {
    for (int32_t step = size >> 1; step > 0; step >>= 1) {
      for (int32_t i = threadIdx.x; i < P; i += blockDim.x) {
        int32_t j = i ^ step;
        if (j > i) {
          bool up = (i & size) == 0;  // this half sorts best first
          bool j_above = kn_plan_above(key[j], idx[j], key[i], idx[i]);
          if (j_above == up) {
            float tk = key[i]; key[i] = key[j]; key[j] = tk;
            int32_t ti = idx[i]; idx[i] = idx[j]; idx[j] = ti;
          }
        }
      }
      __syncthreads();
    }
  }
  if (threadIdx.x != 0) return;
  int32_t *rec_page = a.recall_page + (int64_t)s * a.k, *rec_phys = a.recall_phys + (int64_t)s * a.k;
  const int32_t k = a.k < n_cand ? a.k : n_cand;
  int32_t n_missing = 0;
  for (int32_t i = 0; i < k; i++) {
    mark[idx[i]] = 1;
    n_missing += phys[idx[i]] < 0;
  }
  // resident candidates outside the top, best first: the first n_stay stay
  int32_t n_others = 0;
  for (int32_t i = k; i < n_cand; i++) n_others += phys[idx[i]] >= 0;
  int32_t n_stay = n_others - n_missing, seen = 0;
  for (int32_t i = k; i < n_cand && seen < n_stay; i++)
    if (phys[idx[i]] >= 0) {
      mark[idx[i]] = 2;
      seen++;
    }
  // recalls: missing top pages in ranking order, victims in ascending page order
  int32_t v = c0, n_rec = 0;
  for (int32_t i = 0; i < k && n_missing > 0; i++) {
    int32_t r = idx[i];
    if (phys[r] >= 0) continue;
    while (v < c1 && (phys[v] < 0 || mark[v] != 0)) v++;
    if (v >= c1) break;  // cannot happen when the layer holds its budget (kvpool checks)
    rec_page[n_rec] = r;
    rec_phys[n_rec] = phys[v];
    phys[r] = phys[v];
    phys[v] = -1;
    n_rec++;
    v++;
  }
  for (int32_t i = n_rec; i < a.k; i++) rec_page[i] = rec_phys[i] = -1;
  int32_t *view = a.view + (int64_t)s * stride, n_view = 0;
  for (int32_t j = 0; j < N; j++)
    if (phys[j] >= 0) view[n_view++] = phys[j];
  a.view_len[s] = n_view;
}

}  // namespace

extern "C" size_t kn_cuda_arkvale_plan_smem_bytes(int32_t stride) {
  int32_t P = 1;
  while (P < stride) P <<= 1;
  return (size_t)P * (sizeof(float) + sizeof(int32_t)) + (size_t)stride;
}

extern "C" ak_status_t kn_cuda_arkvale_plan(const kn_cuda_arkvale_plan_args_t *a, kn_cuda_stream_t stream,
                                            ak_err_t *err) {
  if (!a) return AK_ERR(err, AK_ERR_INVALID_ARG, "args is NULL");
  if (!a->scores || !a->phys || !a->n_pages || !a->recall_page || !a->recall_phys || !a->view || !a->view_len)
    return AK_ERR(err, AK_ERR_INVALID_ARG, "a device array is NULL");
  if (a->n_seqs < 1 || a->stride < 1 || a->stride > KN_CUDA_PLAN_MAX_PAGES)
    return AK_ERR(err, AK_ERR_INVALID_ARG, "n_seqs=%d must be >= 1 and stride=%d in [1, %d]", a->n_seqs, a->stride,
                  KN_CUDA_PLAN_MAX_PAGES);
  if (a->n_sink < 0 || a->n_window < 1 || a->k < 0)
    return AK_ERR(err, AK_ERR_INVALID_ARG, "n_sink=%d, n_window=%d, k=%d: need n_sink >= 0, n_window >= 1, k >= 0",
                  a->n_sink, a->n_window, a->k);
  size_t smem = kn_cuda_arkvale_plan_smem_bytes(a->stride);
  KN_CUDA_TRY(err, cudaFuncSetAttribute(kn_arkvale_plan_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem));
  kn_arkvale_plan_kernel<<<a->n_seqs, kThreads, smem, kn_stream(stream)>>>(*a);
  KN_CUDA_LAUNCHED(err);
  return AK_OK;
}
