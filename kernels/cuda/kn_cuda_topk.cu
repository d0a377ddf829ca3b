// kn_cuda_topk: the k best scores of each segment (one sequence's candidate pages),
// all segments in one launch, best first, ties to the higher index, -1 past the
// segment's length. Not here: which pages are candidates (the caller's segments).
//
// Launch: one 1024-thread block per segment. Scores are mapped to order-preserving
// unsigned keys (NaN lowest, -0 == +0 as a float comparison); the selection is a
// radix select followed by a sort of the k survivors:
//   1. Segments of up to 8192 scores are first copied to shared memory; longer ones
//      are read from global memory (L2) on every pass.
//   2. Radix select, 8 bits a pass from the top: a shared 256-bin histogram (warp-
//      aggregated atomics, __match_any_sync, so equal scores do not serialize), warp 0
//      finds the bin holding the k-th key. It stops early when that bin is taken
//      whole; otherwise after 4 passes the k-th key T is exact and `need` of the
//      elements equal to T are to be taken.
//   3. Compaction: keys above T (or at/above T's bin when it is taken whole) go to a
//      shared candidate list through warp-aggregated atomics; ties at T, when only
//      some are taken, are taken from the end of the segment backwards with a block
//      prefix count (ballots), so that the highest indices win, stopping as soon as
//      `need` are found.
//   4. Bitonic sort of the <= 1024 candidates as 64-bit (key << 32 | index), which
//      orders by score and breaks ties to the higher index in one comparison.
// Cost: a segment of n scores reads n floats once (n <= 8192) or up to 6 times, with
// 4 + 10*11/2 block barriers at most for the passes and the sort.
#include "kn_cuda_internal.cuh"

namespace {

constexpr int KN_TK_THREADS = 1024;
constexpr int KN_TK_WARPS = KN_TK_THREADS / 32;
constexpr int KN_TK_SMEM_SCORES = 8192;  // 32 KiB: segments up to this are cached
constexpr int KN_TK_MAX_K = 1024;

// Order-preserving key of a float: a > b (as floats) <=> key(a) > key(b); every NaN is
// 1, below -inf (0x007fffff); 0 is left free for the sort's padding.
__device__ __forceinline__ uint32_t kn_tk_key(float f) {
  uint32_t b = __float_as_uint(f);
  if ((b & 0x7fffffffu) > 0x7f800000u) return 1u;  // NaN
  if ((b & 0x7fffffffu) == 0u) b = 0u;              // -0 ties +0
  return (b & 0x80000000u) ? ~b : (b | 0x80000000u);
}

// scores: segment s is scores[seg_ptr[s] .. seg_ptr[s+1]); out_idx: [n_segs][k].
__global__ void __launch_bounds__(KN_TK_THREADS)
    kn_topk_kernel(const float *__restrict__ scores, const int32_t *__restrict__ seg_ptr, int k,
                   int32_t *__restrict__ out_idx) {
  kn_pdl_begin();
  __shared__ float s_scores[KN_TK_SMEM_SCORES];
  __shared__ unsigned long long s_cand[KN_TK_MAX_K];
  __shared__ uint32_t s_hist[256];
  __shared__ uint32_t s_warp[KN_TK_WARPS];
  __shared__ uint32_t s_prefix, s_need, s_bin_count, s_n_cand;

  const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32;
  const uint32_t lane_lt = (1u << lane) - 1u;
  const int32_t begin = seg_ptr[blockIdx.x], end = seg_ptr[blockIdx.x + 1];
  const int n = end > begin ? end - begin : 0;
  const int kk = n < k ? n : k;
  int32_t *out = out_idx + (int64_t)blockIdx.x * k;
  for (int i = kk + tid; i < k; i += KN_TK_THREADS) out[i] = -1;
  if (kk == 0) return;  // block-uniform

  const float *src = scores + begin;
  if (n <= KN_TK_SMEM_SCORES) {
    for (int i = tid; i < n; i += KN_TK_THREADS) s_scores[i] = src[i];
    src = s_scores;  // a generic pointer: the passes below read either memory
  }

  // 2. Radix select. Selected so far: keys whose masked bits exceed `prefix`; among
  // those equal to it, `need` more are to be taken.
  uint32_t prefix = 0, mask = 0, need = (uint32_t)kk;
  bool bin_whole = n <= k;  // everything is taken: no select
  for (int shift = 24; shift >= 0 && !bin_whole; shift -= 8) {
    for (int i = tid; i < 256; i += KN_TK_THREADS) s_hist[i] = 0;
    __syncthreads();
    for (int base = 0; base < n; base += KN_TK_THREADS) {
      const int i = base + tid;
      uint32_t u = 0;
      bool in = false;
      if (i < n) {
        u = kn_tk_key(src[i]);
        in = (u & mask) == prefix;
      }
      const uint32_t act = __ballot_sync(0xffffffffu, in);
      if (in) {
        const uint32_t bin = (u >> shift) & 255u;
        const uint32_t peers = __match_any_sync(act, bin);
        if (lane == __ffs(peers) - 1) atomicAdd(&s_hist[bin], (uint32_t)__popc(peers));
      }
    }
    __syncthreads();
    if (warp == 0) {
      // Lane l owns bins 255 - 8l down to 248 - 8l: a lane-order scan is a scan from
      // the top bin down.
      uint32_t c[8], sum = 0;
#pragma unroll
      for (int e = 0; e < 8; e++) sum += c[e] = s_hist[255 - 8 * lane - e];
      uint32_t incl = sum;
#pragma unroll
      for (int off = 1; off < 32; off <<= 1) {
        const uint32_t o = __shfl_up_sync(0xffffffffu, incl, off);
        if (lane >= off) incl += o;
      }
      uint32_t above = incl - sum;
      if (above < need && need <= incl) {  // exactly one lane
#pragma unroll
        for (int e = 0; e < 8; e++) {
          if (above + c[e] >= need) {
            s_prefix = prefix | ((uint32_t)(255 - 8 * lane - e) << shift);
            s_need = need - above;
            s_bin_count = c[e];
            break;
          }
          above += c[e];
        }
      }
    }
    __syncthreads();
    prefix = s_prefix;
    need = s_need;
    mask |= 255u << shift;
    bin_whole = s_bin_count == need;  // uniform: read by all after the barrier
  }

  // 3. Compaction into s_cand.
  if (tid == 0) s_n_cand = 0;
  __syncthreads();
  for (int base = 0; base < n; base += KN_TK_THREADS) {
    const int i = base + tid;
    uint32_t u = 0;
    bool take = false;
    if (i < n) {
      u = kn_tk_key(src[i]);
      const uint32_t hu = u & mask;
      take = hu > prefix || (bin_whole && hu == prefix);
    }
    const uint32_t ballot = __ballot_sync(0xffffffffu, take);
    uint32_t slot0 = 0;
    if (lane == 0 && ballot) slot0 = atomicAdd(&s_n_cand, (uint32_t)__popc(ballot));
    slot0 = __shfl_sync(0xffffffffu, slot0, 0);
    if (take) s_cand[slot0 + __popc(ballot & lane_lt)] = ((unsigned long long)u << 32) | (uint32_t)i;
  }
  if (!bin_whole) {
    // Ties at the k-th key (mask is full: prefix == T): the `need` highest indices.
    // Thread tid of a chunk looks at index chunk_end - 1 - tid, so ranks in thread
    // order are ranks from the end of the segment.
    const uint32_t base_slot = (uint32_t)kk - need;
    uint32_t running = 0;
    for (int chunk_end = n; chunk_end > 0 && running < need; chunk_end -= KN_TK_THREADS) {
      const int i = chunk_end - 1 - tid;
      const bool tie = i >= 0 && kn_tk_key(src[i]) == prefix;
      const uint32_t ballot = __ballot_sync(0xffffffffu, tie);
      if (lane == 0) s_warp[warp] = (uint32_t)__popc(ballot);
      __syncthreads();
      uint32_t before = 0, total = 0;
      for (int w = 0; w < KN_TK_WARPS; w++) {
        const uint32_t c = s_warp[w];
        before += w < warp ? c : 0u;
        total += c;
      }
      const uint32_t rank = running + before + (uint32_t)__popc(ballot & lane_lt);
      if (tie && rank < need) s_cand[base_slot + rank] = ((unsigned long long)prefix << 32) | (uint32_t)i;
      running += total;  // the same in every thread: the loop stays uniform
      __syncthreads();   // s_warp is rewritten by the next chunk
    }
  }

  // 4. Bitonic sort, descending, padded to a power of two with key 0 (below any score).
  int n_sort = 1;
  while (n_sort < kk) n_sort <<= 1;
  for (int i = kk + tid; i < n_sort; i += KN_TK_THREADS) s_cand[i] = 0ull;
  __syncthreads();
  for (int size = 2; size <= n_sort; size <<= 1) {
    for (int stride = size / 2; stride > 0; stride >>= 1) {
      for (int i = tid; i < n_sort; i += KN_TK_THREADS) {
        const int j = i ^ stride;
        if (j > i) {
          const unsigned long long x = s_cand[i], y = s_cand[j];
          const bool desc = (i & size) == 0;
          if (desc ? x < y : x > y) {
            s_cand[i] = y;
            s_cand[j] = x;
          }
        }
      }
      __syncthreads();
    }
  }
  for (int i = tid; i < kk; i += KN_TK_THREADS) out[i] = (int32_t)(uint32_t)(s_cand[i] & 0xffffffffull);
}

ak_status_t kn_topk_check(const kn_cuda_topk_args_t *a, ak_err_t *err) {
  const char *fn = "kn_cuda_topk";
  if (!a) return ak_err_set_fn(err, AK_ERR_INVALID_ARG, fn, "args is NULL");
  if (a->n_segs < 0) return ak_err_set_fn(err, AK_ERR_INVALID_ARG, fn, "n_segs=%d < 0", a->n_segs);
  if (a->k < 1 || a->k > KN_TK_MAX_K)
    return ak_err_set_fn(err, AK_ERR_INVALID_ARG, fn, "k=%d outside [1, %d]", a->k, KN_TK_MAX_K);
  if (a->n_segs == 0) return AK_OK;
  if (!a->scores || !a->seg_ptr || !a->out_idx)
    return ak_err_set_fn(err, AK_ERR_INVALID_ARG, fn, "scores=%p, seg_ptr=%p, out_idx=%p: all are required",
                         (const void *)a->scores, (const void *)a->seg_ptr, (void *)a->out_idx);
  if ((uintptr_t)a->scores % 4 || (uintptr_t)a->seg_ptr % 4 || (uintptr_t)a->out_idx % 4)
    return ak_err_set_fn(err, AK_ERR_INVALID_ARG, fn, "scores=%p, seg_ptr=%p, out_idx=%p: 4-byte alignment required",
                         (const void *)a->scores, (const void *)a->seg_ptr, (void *)a->out_idx);
  return AK_OK;
}

}  // namespace

extern "C" ak_status_t kn_cuda_topk(const kn_cuda_topk_args_t *args, kn_cuda_stream_t stream, ak_err_t *err) {
  AK_TRY(kn_topk_check(args, err));
  if (args->n_segs == 0) return AK_OK;
  kn_launch(kn_topk_kernel, args->n_segs, KN_TK_THREADS, 0, kn_stream(stream), args->scores, args->seg_ptr, args->k,
                                                                      args->out_idx);
  KN_CUDA_LAUNCHED(err);
  return AK_OK;
}
