// kn_cuda_sample: next-token choice on the device, one block of 1024 threads per row
// of logits; only token ids leave the device.
//
// Greedy (temperature <= 0): argmax, the lowest id on ties (kernels.h kn_argmax).
// Per-row parameters, the repetition penalty, min-p and logprobs: kn_cuda.h.
// NaN logits are never picked (kn_argmax keeps a NaN at index 0; all NaN gives 0).
//
// Sampling (temperature > 0), the distribution:
//   p = softmax(logits / temperature); order tokens by (logit desc, id asc);
//   keep the first top_k (0, or >= n_vocab: all); renormalize; keep the smallest
//   prefix (same order) whose mass reaches top_p (1: all); drop tokens with
//   p < min_p * p_max (0: none); renormalize; draw one.
// With per-row parameters the logits are first penalised (repetition penalty): the
// row's history ids are marked in a shared-memory bitmap of n_vocab bits, and every
// read of a logit goes through that mark, so the row itself is never rewritten.
// top_p is measured on the top_k-renormalized distribution (as HF transformers,
// vLLM and llama.cpp apply them). top_k == 1 is greedy.
//
// How, without sorting the vocabulary: each kept set is "key > T, plus the first
// `need` tokens (by id) whose key == T", where key is the logit's bits mapped to an
// order-preserving uint32. T is found by a radix descent over the keys, 8 bits per
// pass (4 passes over the row, a 256-bin histogram in shared memory each):
//   top_k: bins count tokens; T is the key of the top_k-th token;
//   top_p: bins sum token weights (restricted to the top_k set); T is the key where
//          the mass from the top first reaches ceil(top_p * mass).
// min-p is a weight threshold (weights are monotone in the logit), applied in the draw.
// Then the draw: target = u * (kept mass) with u from a counter-based hash of
// (seed, step, row) (row 0 with per-row parameters); each thread owns a contiguous chunk of ids, an exclusive scan
// of kept mass over chunks finds the one thread whose chunk holds the target, and
// that thread walks it. So no top_k limit, no workspace, and O(n_vocab) per pass.
//
// Weights are fixed point: w = floor(exp((logit - max) / temperature) * 2^39), so
// every sum is an exact uint64 (n_vocab <= 2^24) and the result is deterministic:
// the same (logits, seed, step, row) gives the same id on every run. Tokens with
// p / p_max < 2^-39 get weight 0 and are never drawn. NaN logits count as -FLT_MAX
// and +-inf are clamped to +-FLT_MAX (all -inf: uniform over the row).
#include <float.h>
#include <math.h>
#include <stdint.h>

#include "kn_cuda_internal.cuh"

enum {
  KN_SAMPLE_THREADS = 1024,
  KN_SAMPLE_WARPS = KN_SAMPLE_THREADS / 32,
  KN_SAMPLE_BINS = 256,
};
#define KN_SAMPLE_MAX_VOCAB (1LL << 24) /* keeps n_vocab * 2^39 < 2^64 */
#define KN_SAMPLE_W_ONE 549755813888.0f /* 2^39: the weight of the most likely token */

// ---- per-token values ----

static __device__ __forceinline__ float kn_sample_logit(float x) {
  if (isnan(x)) return -FLT_MAX;
  x = fminf(fmaxf(x, -FLT_MAX), FLT_MAX);
  return x == 0.0f ? 0.0f : x;  // -0 as +0: equal logits get one key
}
// Order-preserving: a < b as floats <=> key(a) < key(b) as uint32.
static __device__ __forceinline__ uint32_t kn_sample_key(float v) {
  const uint32_t b = __float_as_uint(v);
  return (b & 0x80000000u) ? ~b : (b | 0x80000000u);
}
static __device__ __forceinline__ float kn_sample_key_value(uint32_t key) {
  return __uint_as_float((key & 0x80000000u) ? (key & 0x7fffffffu) : ~key);
}
// v <= m; (v - m) / temperature is <= 0 or -inf, never NaN (both finite).
static __device__ __forceinline__ uint64_t kn_sample_weight(float v, float m, float temperature) {
  const float e = expf(__fdiv_rn(__fsub_rn(v, m), temperature));
  return __float2ull_rz(__fmul_rn(e, KN_SAMPLE_W_ONE));
}

static __device__ __forceinline__ uint64_t kn_splitmix64(uint64_t x) {
  x += 0x9e3779b97f4a7c15ull;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
  return x ^ (x >> 31);
}
// Uniform in [0, 1) with 53 random bits, a pure function of (seed, step, row).
static __device__ __forceinline__ double kn_sample_uniform(uint64_t seed, uint64_t step, uint64_t row) {
  const uint64_t h = kn_splitmix64(kn_splitmix64(kn_splitmix64(seed) ^ step) ^ row);
  return (double)(h >> 11) * 0x1.0p-53;
}

// ---- block-wide helpers (blockDim.x == KN_SAMPLE_THREADS; every thread calls) ----

static __device__ __forceinline__ float kn_block_max(float v, float *scratch) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  v = scratch[lane];  // KN_SAMPLE_WARPS == 32
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
  __syncthreads();  // scratch may be reused
  return v;
}

static __device__ __forceinline__ uint64_t kn_block_sum(uint64_t v, uint64_t *scratch) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  v = scratch[lane];
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  __syncthreads();
  return v;
}

// Inclusive scan over threads in threadIdx order; *total_p gets the block's sum.
static __device__ __forceinline__ uint64_t kn_block_incl_scan(uint64_t v, uint64_t *scratch, uint64_t *total_p) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
#pragma unroll
  for (int o = 1; o < 32; o <<= 1) {
    const uint64_t y = __shfl_up_sync(0xffffffffu, v, o);
    if (lane >= o) v += y;
  }
  if (lane == 31) scratch[warp] = v;
  __syncthreads();
  if (warp == 0) {
    uint64_t s = scratch[lane];
#pragma unroll
    for (int o = 1; o < 32; o <<= 1) {
      const uint64_t y = __shfl_up_sync(0xffffffffu, s, o);
      if (lane >= o) s += y;
    }
    scratch[lane] = s;
  }
  __syncthreads();
  if (warp > 0) v += scratch[warp - 1];
  *total_p = scratch[KN_SAMPLE_WARPS - 1];
  __syncthreads();
  return v;
}

// ---- the row as the filters see it ----

// A row of logits with its repetition penalty: `marks` is the block's shared bitmap of
// penalised ids (NULL: no penalty).
struct kn_sample_row {
  const float *x;         // [n_vocab] f32
  const uint32_t *marks;  // [ceil(n_vocab / 32)] in shared memory, or NULL
  float penalty;
};

// The logit after the penalty, NaN left as NaN (greedy skips it, the sampler maps it).
// As wk_sampler: +inf is FLT_MAX before the penalty, -inf is left alone, and a finite
// logit stays finite.
static __device__ __forceinline__ float kn_sample_penalised(const kn_sample_row &r, int64_t i) {
  float v = r.x[i];
  if (r.marks && ((r.marks[i >> 5] >> (i & 31)) & 1u) && !isnan(v) && v != -INFINITY) {
    v = fminf(v, FLT_MAX);
    v = v > 0.0f ? __fdiv_rn(v, r.penalty) : __fmul_rn(v, r.penalty);
    v = fminf(fmaxf(v, -FLT_MAX), FLT_MAX);
  }
  return v;
}
static __device__ __forceinline__ float kn_sample_row_logit(const kn_sample_row &r, int64_t i) {
  return kn_sample_logit(kn_sample_penalised(r, i));
}

// Shared memory of one block, passed to the row functions so that the scalar and the
// per-row kernels share them.
struct kn_sample_smem {
  uint32_t hist_n[KN_SAMPLE_BINS];
  uint64_t hist_w[KN_SAMPLE_BINS];
  uint64_t scratch[KN_SAMPLE_WARPS];
  float scratch_f[KN_SAMPLE_WARPS];
  float arg_v[KN_SAMPLE_WARPS];
  int32_t arg_i[KN_SAMPLE_WARPS];
  uint32_t digit;
  uint64_t carry;  // a count or a mass carried from thread 0's bin walk
};

// ---- greedy ----

// Thread 0 writes the argmax (lowest id on ties, NaN never picked, all NaN gives 0).
static __device__ void kn_sample_argmax_row(const kn_sample_row &r, int64_t n_vocab, kn_sample_smem *sm,
                                            int32_t *out_id, float *out_logprob) {
  float bv = -INFINITY;
  int32_t bi = INT32_MAX;  // none yet (only NaN seen)
  // Eight loads in flight a thread, then compared in ascending index order as one at a
  // time would: one load a loop trip left the row latency-bound (35 us for a 128k vocab
  // on the H100, ncu, session 5).
  constexpr int kU = 8;
  int64_t i = threadIdx.x;
  for (; i + (kU - 1) * (int64_t)blockDim.x < n_vocab; i += kU * (int64_t)blockDim.x) {
    float v[kU];
#pragma unroll
    for (int u = 0; u < kU; u++) v[u] = kn_sample_penalised(r, i + u * (int64_t)blockDim.x);
#pragma unroll
    for (int u = 0; u < kU; u++) {
      const int32_t j = (int32_t)(i + u * (int64_t)blockDim.x);
      if (v[u] > bv || (v[u] == bv && j < bi)) bv = v[u], bi = j;
    }
  }
  for (; i < n_vocab; i += blockDim.x) {
    const float v = kn_sample_penalised(r, i);
    if (v > bv || (v == bv && (int32_t)i < bi)) bv = v, bi = (int32_t)i;
  }
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) {
    const float ov = __shfl_xor_sync(0xffffffffu, bv, o);
    const int32_t oi = __shfl_xor_sync(0xffffffffu, bi, o);
    if (ov > bv || (ov == bv && oi < bi)) bv = ov, bi = oi;
  }
  if (lane == 0) sm->arg_v[warp] = bv, sm->arg_i[warp] = bi;
  __syncthreads();
  if (warp == 0) {
    bv = sm->arg_v[lane];
    bi = sm->arg_i[lane];
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) {
      const float ov = __shfl_xor_sync(0xffffffffu, bv, o);
      const int32_t oi = __shfl_xor_sync(0xffffffffu, bi, o);
      if (ov > bv || (ov == bv && oi < bi)) bv = ov, bi = oi;
    }
    if (lane == 0) {
      *out_id = bi == INT32_MAX ? 0 : bi;
      if (out_logprob) *out_logprob = 0.0f;  // greedy's final distribution is one token
    }
  }
}

// ---- temperature, top-k, top-p, min-p ----

// Every thread of the block calls it with the same arguments (block-uniform).
// temperature in (0, FLT_MAX], top_k >= 0, top_p in (0, 1], min_p in [0, 1).
static __device__ void kn_sample_draw_row(const kn_sample_row &r, int32_t n_vocab, float temperature, int32_t top_k,
                                          float top_p, float min_p, uint64_t seed, uint64_t step, uint64_t row_hash,
                                          kn_sample_smem *sm, int32_t *out_id, float *out_logprob) {
  const int tid = threadIdx.x;

  float m = -FLT_MAX;
  for (int i = tid; i < n_vocab; i += KN_SAMPLE_THREADS) m = fmaxf(m, kn_sample_row_logit(r, i));
  m = kn_block_max(m, sm->scratch_f);

  // The kept set so far: key > keep_key, plus the first keep_need (by id) with key == keep_key.
  // keep_key 0 is below every key (the least, -FLT_MAX's, is 0x00800000): all kept.
  uint32_t keep_key = 0;
  uint64_t keep_need = 0;

  const bool use_k = top_k > 0 && top_k < n_vocab;
  if (use_k) {
    // Radix select by count: the key of the top_k-th token from the top.
    uint32_t prefix = 0, mask = 0, remaining = (uint32_t)top_k;
    for (int shift = 24; shift >= 0; shift -= 8) {
      for (int b = tid; b < KN_SAMPLE_BINS; b += KN_SAMPLE_THREADS) sm->hist_n[b] = 0;
      __syncthreads();
      for (int i = tid; i < n_vocab; i += KN_SAMPLE_THREADS) {
        const uint32_t key = kn_sample_key(kn_sample_row_logit(r, i));
        if ((key & mask) == prefix) atomicAdd(&sm->hist_n[(key >> shift) & 0xffu], 1u);
      }
      __syncthreads();
      if (tid == 0) {
        // The group (keys with this prefix) holds >= remaining tokens: some bin
        // from the top reaches it.
        uint32_t above = 0;
        int d = KN_SAMPLE_BINS - 1;
        for (; d > 0; d--) {
          if (above + sm->hist_n[d] >= remaining) break;
          above += sm->hist_n[d];
        }
        sm->digit = (uint32_t)d;
        sm->carry = remaining - above;
      }
      __syncthreads();
      prefix |= sm->digit << shift;
      mask |= 0xffu << shift;
      remaining = (uint32_t)sm->carry;
    }
    keep_key = prefix;
    keep_need = remaining;  // 1 .. (tokens with that key)
  }

  if (top_p < 1.0f) {
    // The mass of the kept set; the tokens at keep_key count keep_need times its weight.
    const uint64_t w_keep = use_k ? kn_sample_weight(kn_sample_key_value(keep_key), m, temperature) : 0;
    uint64_t z = 0;
    for (int i = tid; i < n_vocab; i += KN_SAMPLE_THREADS) {
      const float v = kn_sample_row_logit(r, i);
      if (kn_sample_key(v) > keep_key) z += kn_sample_weight(v, m, temperature);
    }
    z = kn_block_sum(z, sm->scratch) + keep_need * w_keep;
    double thr_d = ceil((double)top_p * (double)z);
    uint64_t thr = thr_d >= (double)z ? z : (uint64_t)thr_d;
    if (thr < 1) thr = 1;

    // Radix select by mass, over the kept set: the key where the mass from the top
    // first reaches thr.
    uint32_t prefix = 0, mask = 0;
    uint64_t above = 0;  // mass of kept tokens above the current group
    for (int shift = 24; shift >= 0; shift -= 8) {
      for (int b = tid; b < KN_SAMPLE_BINS; b += KN_SAMPLE_THREADS) sm->hist_w[b] = 0;
      __syncthreads();
      for (int i = tid; i < n_vocab; i += KN_SAMPLE_THREADS) {
        const float v = kn_sample_row_logit(r, i);
        const uint32_t key = kn_sample_key(v);
        if ((key & mask) == prefix && key > keep_key)
          atomicAdd((unsigned long long *)&sm->hist_w[(key >> shift) & 0xffu],
                    (unsigned long long)kn_sample_weight(v, m, temperature));
      }
      __syncthreads();
      if (tid == 0) {
        if (use_k && (keep_key & mask) == prefix) sm->hist_w[(keep_key >> shift) & 0xffu] += keep_need * w_keep;
        int d = KN_SAMPLE_BINS - 1;
        for (; d > 0; d--) {
          if (above + sm->hist_w[d] >= thr) break;
          above += sm->hist_w[d];
        }
        sm->digit = (uint32_t)d;
        sm->carry = above;
      }
      __syncthreads();
      prefix |= sm->digit << shift;
      mask |= 0xffu << shift;
      above = sm->carry;
    }
    // Tokens at `prefix` all weigh w_t (one logit), and the kept ones among them
    // carry >= thr - above > 0, so w_t > 0.
    const uint64_t w_t = kn_sample_weight(kn_sample_key_value(prefix), m, temperature);
    uint64_t need = w_t > 0 ? (thr - above + w_t - 1) / w_t : UINT64_MAX;
    if (use_k && prefix == keep_key && need > keep_need) need = keep_need;
    keep_key = prefix;
    keep_need = need;
  }

  // min-p, as wk_sampler: weight (relative to the best token's 1) >= min_p. Weights are
  // monotone in the logit, so it cuts the same prefix of the order as the filters above
  // and applies in the draw only (top-p measured its mass before it). The best token
  // (weight 2^39) always passes since min_p < 1.
  const uint64_t w_min = min_p > 0.0f ? (uint64_t)ceil((double)min_p * (double)KN_SAMPLE_W_ONE) : 0;

  // The draw, in id order: thread tid owns ids [lo, hi).
  const int chunk = (n_vocab + KN_SAMPLE_THREADS - 1) / KN_SAMPLE_THREADS;
  const int lo = min(tid * chunk, n_vocab), hi = min(lo + chunk, n_vocab);
  uint64_t n_eq = 0;
  for (int i = lo; i < hi; i++) n_eq += kn_sample_key(kn_sample_row_logit(r, i)) == keep_key;
  uint64_t unused;
  const uint64_t eq_before = kn_block_incl_scan(n_eq, sm->scratch, &unused) - n_eq;

  uint64_t mass = 0;
  for (int i = lo, k = 0; i < hi; i++) {
    const float v = kn_sample_row_logit(r, i);
    const uint32_t key = kn_sample_key(v);
    if (key > keep_key || (key == keep_key && eq_before + k++ < keep_need)) {
      const uint64_t w = kn_sample_weight(v, m, temperature);
      if (w >= w_min) mass += w;
    }
  }
  uint64_t total;
  const uint64_t incl = kn_block_incl_scan(mass, sm->scratch, &total);
  const uint64_t excl = incl - mass;
  // total >= 2^39: the most likely token (weight 2^39) is always kept.
  uint64_t target = (uint64_t)(kn_sample_uniform(seed, step, row_hash) * (double)total);
  if (target >= total) target = total - 1;
  if (excl <= target && target < incl) {  // exactly one thread: the chunks partition [0, total)
    uint64_t acc = excl;
    for (int i = lo, k = 0; i < hi; i++) {
      const float v = kn_sample_row_logit(r, i);
      const uint32_t key = kn_sample_key(v);
      if (key > keep_key || (key == keep_key && eq_before + k++ < keep_need)) {
        const uint64_t w = kn_sample_weight(v, m, temperature);
        if (w < w_min) continue;
        acc += w;
        if (acc > target) {
          *out_id = i;
          // log p = (v - m) / T - log(Z / 2^39): the weights are exp((v - m) / T) * 2^39.
          if (out_logprob)
            *out_logprob = (float)(((double)v - (double)m) / (double)temperature -
                                   log((double)total * 0x1.0p-39));
          break;
        }
      }
    }
  }
}

// ---- kernels ----

static __global__ void __launch_bounds__(KN_SAMPLE_THREADS)
    kn_sample_greedy_kernel(const float *__restrict__ logits,  // [n_rows, n_vocab] f32
                            int32_t *__restrict__ out_ids,     // [n_rows]
                            float *__restrict__ out_logprobs,  // [n_rows] or NULL
                            int64_t n_vocab) {
  __shared__ kn_sample_smem sm;
  const kn_sample_row r = {logits + (int64_t)blockIdx.x * n_vocab, NULL, 1.0f};
  kn_sample_argmax_row(r, n_vocab, &sm, &out_ids[blockIdx.x], out_logprobs ? &out_logprobs[blockIdx.x] : NULL);
}

static __global__ void __launch_bounds__(KN_SAMPLE_THREADS)
    kn_sample_kernel(const float *__restrict__ logits,  // [n_rows, n_vocab] f32
                     int32_t *__restrict__ out_ids,     // [n_rows]
                     float *__restrict__ out_logprobs,  // [n_rows] or NULL
                     int32_t n_vocab, float temperature, int32_t top_k, float top_p, float min_p, uint64_t seed,
                     uint64_t step) {
  __shared__ kn_sample_smem sm;
  const int64_t row = blockIdx.x;
  const kn_sample_row r = {logits + row * n_vocab, NULL, 1.0f};
  kn_sample_draw_row(r, n_vocab, temperature, top_k, top_p, min_p, seed, step, (uint64_t)row, &sm, &out_ids[row],
                     out_logprobs ? &out_logprobs[row] : NULL);
}

// Per-row parameters; dynamic shared memory holds the penalty bitmap
// ([ceil(n_vocab / 32)] uint32) when history_ids is given, else nothing.
static __global__ void __launch_bounds__(KN_SAMPLE_THREADS)
    kn_sample_rows_kernel(const float *__restrict__ logits,  // [n_rows, n_vocab] f32
                          int32_t *__restrict__ out_ids,     // [n_rows]
                          float *__restrict__ out_logprobs,  // [n_rows] or NULL
                          int32_t n_vocab, const kn_cuda_sample_row_t *__restrict__ rows,  // [n_rows]
                          const int32_t *__restrict__ history_ids,  // [n_history_ids] or NULL
                          int64_t n_history_ids) {
  __shared__ kn_sample_smem sm;
  extern __shared__ uint32_t s_marks[];
  const int64_t row = blockIdx.x;
  const kn_cuda_sample_row_t p = rows[row];  // every thread reads the same: block-uniform branches below
  kn_sample_row r = {logits + row * n_vocab, NULL, 1.0f};

  const float pen = p.repetition_penalty;
  if (history_ids && p.n_history_ids > 0 && isfinite(pen) && pen > 0.0f && pen != 1.0f) {
    const int64_t begin = p.history_start_idx > 0 ? (int64_t)p.history_start_idx : 0;
    const int64_t stop = (int64_t)p.history_start_idx + (int64_t)p.n_history_ids;
    const int64_t end = stop < n_history_ids ? stop : n_history_ids;
    const int n_words = (n_vocab + 31) / 32;
    for (int w = threadIdx.x; w < n_words; w += KN_SAMPLE_THREADS) s_marks[w] = 0;
    __syncthreads();
    for (int64_t h = begin + threadIdx.x; h < end; h += KN_SAMPLE_THREADS) {
      const int32_t id = history_ids[h];
      if (id >= 0 && id < n_vocab) atomicOr(&s_marks[id >> 5], 1u << (id & 31));
    }
    __syncthreads();
    r.marks = s_marks;
    r.penalty = pen;
  }

  if (!(p.temperature > 0.0f)) {  // <= 0 and NaN
    kn_sample_argmax_row(r, n_vocab, &sm, &out_ids[row], out_logprobs ? &out_logprobs[row] : NULL);
    return;
  }
  const float temperature = fminf(p.temperature, FLT_MAX);
  const int32_t top_k = p.top_k > 0 ? p.top_k : 0;
  const float top_p = p.top_p > 0.0f && p.top_p < 1.0f ? p.top_p : 1.0f;
  const float min_p = p.min_p > 0.0f && p.min_p < 1.0f ? p.min_p : 0.0f;
  // Row hash 0: the draw depends on the sequence's own (seed, step), not on its row.
  kn_sample_draw_row(r, n_vocab, temperature, top_k, top_p, min_p, p.seed, p.step, 0, &sm, &out_ids[row],
                     out_logprobs ? &out_logprobs[row] : NULL);
}

extern "C" size_t kn_cuda_sample_workspace_bytes(const kn_cuda_sample_args_t *args) {
  (void)args;
  return 0;
}

extern "C" ak_status_t kn_cuda_sample(const kn_cuda_sample_args_t *a, void *workspace, size_t workspace_bytes,
                                      kn_cuda_stream_t stream, ak_err_t *err) {
  (void)workspace;
  (void)workspace_bytes;
  if (!a) return AK_ERR(err, AK_ERR_INVALID_ARG, "args is NULL");
  if (!a->logits || !a->out_ids)
    return AK_ERR(err, AK_ERR_INVALID_ARG, "NULL pointer: logits=%p out_ids=%p", (const void *)a->logits,
                  (void *)a->out_ids);
  if (a->n_rows < 1 || a->n_rows > INT32_MAX || a->n_vocab < 1 || a->n_vocab > KN_SAMPLE_MAX_VOCAB)
    return AK_ERR(err, AK_ERR_INVALID_ARG, "n_rows=%lld (1..%d) n_vocab=%lld (1..%lld) out of range",
                  (long long)a->n_rows, INT32_MAX, (long long)a->n_vocab, (long long)KN_SAMPLE_MAX_VOCAB);
  if (a->n_history_ids < 0 || a->n_history_ids > INT32_MAX)
    return AK_ERR(err, AK_ERR_INVALID_ARG, "n_history_ids=%lld outside [0, %d]", (long long)a->n_history_ids,
                  INT32_MAX);
  if (a->n_history_ids > 0 && !a->history_ids)
    return AK_ERR(err, AK_ERR_INVALID_ARG, "history_ids is NULL with n_history_ids=%lld",
                  (long long)a->n_history_ids);
  if (a->history_ids && !a->rows)
    return AK_ERR(err, AK_ERR_INVALID_ARG, "history_ids needs per-row params (rows is NULL)");
  if (a->history_ids && a->n_vocab > KN_CUDA_SAMPLE_PENALTY_MAX_VOCAB)
    return AK_ERR(err, AK_ERR_INVALID_ARG, "history_ids with n_vocab=%lld > %d (the penalty bitmap's limit)",
                  (long long)a->n_vocab, KN_CUDA_SAMPLE_PENALTY_MAX_VOCAB);
  const dim3 grid((unsigned)a->n_rows), block(KN_SAMPLE_THREADS);
  cudaStream_t s = kn_stream(stream);
  if (a->rows) {
    const size_t marks_bytes = a->history_ids ? (size_t)kn_ceil_div(a->n_vocab, 32) * sizeof(uint32_t) : 0;
    kn_sample_rows_kernel<<<grid, block, marks_bytes, s>>>(a->logits, a->out_ids, a->out_logprobs,
                                                           (int32_t)a->n_vocab, a->rows, a->history_ids,
                                                           a->n_history_ids);
    KN_CUDA_LAUNCHED(err);
    return AK_OK;
  }
  if (isnan(a->temperature) || a->temperature > FLT_MAX)
    return AK_ERR(err, AK_ERR_INVALID_ARG, "temperature=%g must be finite", (double)a->temperature);
  if (a->temperature <= 0.0f) {
    kn_sample_greedy_kernel<<<grid, block, 0, s>>>(a->logits, a->out_ids, a->out_logprobs, a->n_vocab);
  } else {
    // Checked only when sampling: a zeroed args struct is a valid greedy request.
    if (a->top_k < 0) return AK_ERR(err, AK_ERR_INVALID_ARG, "top_k=%d must be >= 0", a->top_k);
    if (!(a->top_p > 0.0f && a->top_p <= 1.0f))
      return AK_ERR(err, AK_ERR_INVALID_ARG, "top_p=%g must be in (0, 1]", (double)a->top_p);
    if (!(a->min_p >= 0.0f && a->min_p < 1.0f))
      return AK_ERR(err, AK_ERR_INVALID_ARG, "min_p=%g must be in [0, 1) (0 = off)", (double)a->min_p);
    kn_sample_kernel<<<grid, block, 0, s>>>(a->logits, a->out_ids, a->out_logprobs, (int32_t)a->n_vocab,
                                            a->temperature, a->top_k, a->top_p, a->min_p, a->seed, a->step);
  }
  KN_CUDA_LAUNCHED(err);
  return AK_OK;
}
