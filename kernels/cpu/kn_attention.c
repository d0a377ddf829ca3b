/* kn_attention: causal GQA attention over the CSR paged KV view, flash style (online
 * softmax in f32, one pass over the keys). Work units are (block of up to
 * KN_ATTN_QB consecutive batch tokens, KV head); inside a block each run of tokens
 * of one sequence is one unit call, so the query heads of a KV group and the tokens
 * of a prefill chunk share each key and value row read. Units are handed out from
 * an atomic counter, longest (last) first, since causal units differ in length.
 * This file: checks, workspace, scheduling, split-K merge, and the portable unit
 * (kn_attention_unit.h, shared with the AVX2 build of the same loops). */
#include <math.h>

#include "kn_attention_unit.h"

static int64_t kn_attn_scratch_floats_c(int32_t n_group, int32_t head_dim) {
  /* acc [n_group][head_dim] | scores [n_group][KEY_CHUNK] | m, l [n_group] |
   * k/v row [KEY_CHUNK][head_dim] converted to f32; rounded to 16 floats each. */
  int64_t acc = ((int64_t)n_group * head_dim + 15) / 16 * 16;
  int64_t sc = ((int64_t)n_group * KN_ATTN_KEY_CHUNK + 15) / 16 * 16;
  int64_t ml = ((int64_t)2 * n_group + 15) / 16 * 16;
  int64_t kv = ((int64_t)KN_ATTN_KEY_CHUNK * head_dim + 15) / 16 * 16;
  return acc + sc + ml + kv;
}

int64_t kn_attn_scratch_floats(int32_t n_group, int32_t head_dim) {
  int64_t c = kn_attn_scratch_floats_c(n_group, head_dim);
  int64_t v = kn_attn_scratch_floats_avx512(n_group, head_dim);
  return ((c > v ? c : v) + 15) / 16 * 16;
}

static int64_t kn_attn_n_split(const kn_attn_args_t *a, int n_threads);

static void kn_row_to_f32(kn_dtype_t dtype, const void *src, float *dst, int32_t n) {
  if (dtype == KN_F16) {
    const uint16_t *h = src;
    for (int32_t i = 0; i < n; i++) dst[i] = kn_f16_to_f32(h[i]);
  } else {
    memcpy(dst, src, (size_t)n * sizeof(float));
  }
}

void kn_attn_unit_c(const kn_attn_unit_t *u) { kn_attn_unit_impl(u, kn_row_to_f32); }

size_t kn_attention_workspace_bytes(const kn_attn_args_t *a, int n_threads) {
  if (!a || a->n_kv_heads <= 0 || a->head_dim <= 0 || n_threads <= 0 || a->n_tok <= 0 ||
      !a->tok_kv_len)
    return 0;
  int32_t n_group = a->n_heads / a->n_kv_heads;
  if (n_group <= 0) return 0;
  size_t scratch = (size_t)n_threads * (size_t)kn_attn_scratch_floats(n_group, a->head_dim);
  int64_t n_split = kn_attn_n_split(a, n_threads);
  size_t partials = n_split > 1 ? (size_t)(a->n_tok * a->n_kv_heads * n_split * n_group) *
                                      (size_t)(a->head_dim + 2)
                                : 0;
  return (scratch + partials) * sizeof(float) + 64;
}

/* Decode split-K: a step with few query tokens has fewer (token, KV head) units than
 * threads want, so each token's keys are cut into parts of at least
 * KN_ATTN_SPLIT_MIN_KEYS, computed as separate units, and merged (flash-decoding). */
enum { KN_ATTN_SPLIT_MAX_TOK = 8, KN_ATTN_SPLIT_MIN_KEYS = 256, KN_ATTN_UNITS_PER_THREAD = 4 };

static int64_t kn_attn_n_split(const kn_attn_args_t *a, int n_threads) {
  if (n_threads <= 1 || a->n_tok > KN_ATTN_SPLIT_MAX_TOK) return 1;
  int64_t max_len = 0;
  for (int64_t t = 0; t < a->n_tok; t++)
    if (a->tok_kv_len[t] > max_len) max_len = a->tok_kv_len[t];
  int64_t units = a->n_tok * a->n_kv_heads;
  int64_t want = ((int64_t)KN_ATTN_UNITS_PER_THREAD * n_threads + units - 1) / units;
  int64_t cap = max_len / KN_ATTN_SPLIT_MIN_KEYS;
  int64_t n = want < cap ? want : cap;
  return n < 1 ? 1 : n;
}

/* Keys of part p of n_split for a token with len keys: 64-key aligned ranges. */
static void kn_attn_part(int64_t len, int64_t n_split, int64_t p, int64_t *b_p, int64_t *e_p) {
  int64_t per = ((len + n_split - 1) / n_split + 63) / 64 * 64;
  int64_t b = p * per, e = b + per;
  *b_p = b < len ? b : len;
  *e_p = e < len ? e : len;
}

typedef struct {
  const kn_attn_args_t *a;
  kn_isa_t isa;
  float *ws;
  int64_t scratch_floats;
  int64_t n_units;
  int64_t n_split;  /* 1: no split */
  float *partials;  /* [n_tok][n_kv_heads][n_split][n_group][head_dim + 2] when split */
  atomic_llong next; /* next unit to hand out */
} kn_attn_job_t;

/* Units per grab: one — a unit is at least a few microseconds of work. */
enum { KN_ATTN_GRAB = 1 };

static void kn_attn_run_unit(kn_isa_t isa, const kn_attn_unit_t *u) {
  switch (isa) {
    case KN_ISA_AVX512: kn_attn_unit_avx512(u); break;
    case KN_ISA_AVX2: kn_attn_unit_avx2(u); break;
    default: kn_attn_unit_c(u); break;
  }
}

static void kn_attn_job(void *ctx, int thread_idx, int n_threads) {
  kn_attn_job_t *job = ctx;
  const kn_attn_args_t *a = job->a;
  const int32_t n_group = a->n_heads / a->n_kv_heads;
  kn_attn_unit_t u;
  u.a = a;
  u.scratch = job->ws + thread_idx * job->scratch_floats;
  for (;;) {
    int64_t b = atomic_fetch_add_explicit(&job->next, KN_ATTN_GRAB, memory_order_relaxed);
    if (b >= job->n_units) return;
    int64_t e = b + KN_ATTN_GRAB < job->n_units ? b + KN_ATTN_GRAB : job->n_units;
    for (int64_t i = b; i < e; i++) {
      if (job->n_split > 1) { /* unit = (token, KV head, part) */
        int64_t p = i % job->n_split, th = i / job->n_split;
        u.tok_begin = th / a->n_kv_heads;
        u.tok_end = u.tok_begin + 1;
        u.kv_head_idx = (int32_t)(th % a->n_kv_heads);
        kn_attn_part(a->tok_kv_len[u.tok_begin], job->n_split, p, &u.key_begin, &u.key_end);
        u.partial = job->partials + i * n_group * (a->head_dim + 2);
        kn_attn_run_unit(job->isa, &u);
        continue;
      }
      /* KV head major: consecutive units read the same head's pages (L2 reuse). Last
       * blocks first: in a prefill they are the longest, so the tail is short. */
      int64_t unit = job->n_units - 1 - i, n_blocks = job->n_units / a->n_kv_heads;
      int64_t blk = unit % n_blocks;
      u.kv_head_idx = (int32_t)(unit / n_blocks);
      u.key_begin = 0;
      u.key_end = INT64_MAX;
      u.partial = NULL;
      int64_t t_end = (blk + 1) * KN_ATTN_QB < a->n_tok ? (blk + 1) * KN_ATTN_QB : a->n_tok;
      for (u.tok_begin = blk * KN_ATTN_QB; u.tok_begin < t_end; u.tok_begin = u.tok_end) {
        u.tok_end = u.tok_begin + 1;
        while (u.tok_end < t_end && a->tok_seq_idx[u.tok_end] == a->tok_seq_idx[u.tok_begin])
          u.tok_end++;
        kn_attn_run_unit(job->isa, &u);
      }
    }
  }
  (void)n_threads;
}

/* Combines the parts of (token, KV head) units: rescale each part to the common max. */
static void kn_attn_merge_range(void *ctx, int thread_idx, int n_threads) {
  kn_attn_job_t *job = ctx;
  const kn_attn_args_t *a = job->a;
  const int32_t hd = a->head_dim, n_group = a->n_heads / a->n_kv_heads;
  const int64_t row = hd + 2, n_th = a->n_tok * a->n_kv_heads;
  int64_t b, e;
  ak_pool_split(n_th, thread_idx, n_threads, 1, &b, &e);
  for (int64_t th = b; th < e; th++) {
    int64_t t = th / a->n_kv_heads;
    int32_t kh = (int32_t)(th % a->n_kv_heads);
    const float *parts = job->partials + th * job->n_split * n_group * row;
    for (int32_t g = 0; g < n_group; g++) {
      float *out = a->out + (t * a->n_heads + kh * n_group + g) * hd; /* [hd] */
      float m = -INFINITY;
      for (int64_t p = 0; p < job->n_split; p++) m = fmaxf(m, parts[(p * n_group + g) * row + hd]);
      float l = 0.0f;
      for (int32_t i = 0; i < hd; i++) out[i] = 0.0f;
      for (int64_t p = 0; p < job->n_split; p++) {
        const float *pg = parts + (p * n_group + g) * row;
        if (pg[hd + 1] == 0.0f) continue; /* an empty part */
        float w = expf(pg[hd] - m);
        l += pg[hd + 1] * w;
        for (int32_t i = 0; i < hd; i++) out[i] += pg[i] * w;
      }
      float inv = l > 0.0f ? 1.0f / l : 0.0f;
      for (int32_t i = 0; i < hd; i++) out[i] *= inv;
    }
  }
}

static ak_status_t kn_attn_check(const kn_attn_args_t *a, ak_err_t *err) {
  const kn_paged_kv_t *kv = &a->kv;
  if (!a->q || !a->out || !a->tok_seq_idx || !a->tok_kv_len || !kv->k_base || !kv->v_base ||
      !kv->indptr || !kv->indices || !kv->last_page_len)
    return AK_ERR(err, AK_ERR_INVALID_ARG, "NULL pointer in attention args");
  if (a->n_tok <= 0 || a->n_heads <= 0 || a->n_kv_heads <= 0 || a->head_dim <= 0 ||
      kv->page_tokens <= 0 || kv->n_seqs <= 0)
    return AK_ERR(err, AK_ERR_INVALID_ARG,
                  "n_tok=%lld n_heads=%d n_kv_heads=%d head_dim=%d page_tokens=%d n_seqs=%d "
                  "must be > 0",
                  (long long)a->n_tok, a->n_heads, a->n_kv_heads, a->head_dim, kv->page_tokens,
                  kv->n_seqs);
  if (a->n_heads % a->n_kv_heads)
    return AK_ERR(err, AK_ERR_INVALID_ARG, "n_heads=%d is not a multiple of n_kv_heads=%d",
                  a->n_heads, a->n_kv_heads);
  if (kv->dtype != KN_F32 && kv->dtype != KN_F16)
    return AK_ERR(err, AK_ERR_UNSUPPORTED, "KV dtype %d is not supported", (int)kv->dtype);
  if (kv->head_stride_elems < (int64_t)kv->page_tokens * a->head_dim ||
      kv->page_stride_elems < (int64_t)a->n_kv_heads * kv->head_stride_elems)
    return AK_ERR(err, AK_ERR_INVALID_ARG,
                  "strides too small: head_stride_elems=%lld page_stride_elems=%lld for "
                  "page_tokens=%d head_dim=%d n_kv_heads=%d",
                  (long long)kv->head_stride_elems, (long long)kv->page_stride_elems,
                  kv->page_tokens, a->head_dim, a->n_kv_heads);
  if (kv->indptr[0] < 0)
    return AK_ERR(err, AK_ERR_INVALID_ARG, "indptr[0]=%d < 0", kv->indptr[0]);
  for (int32_t s = 0; s < kv->n_seqs; s++) {
    int32_t n_pages = kv->indptr[s + 1] - kv->indptr[s];
    if (n_pages < 0)
      return AK_ERR(err, AK_ERR_INVALID_ARG, "indptr decreases at sequence %d (%d -> %d)", s,
                    kv->indptr[s], kv->indptr[s + 1]);
    if (n_pages > 0 && (kv->last_page_len[s] < 1 || kv->last_page_len[s] > kv->page_tokens))
      return AK_ERR(err, AK_ERR_INVALID_ARG, "last_page_len[%d]=%d outside [1, page_tokens=%d]",
                    s, kv->last_page_len[s], kv->page_tokens);
    for (int32_t i = kv->indptr[s]; i < kv->indptr[s + 1]; i++)
      if (kv->indices[i] < 0)
        return AK_ERR(err, AK_ERR_INVALID_ARG, "indices[%d]=%d < 0", i, kv->indices[i]);
  }
  for (int64_t t = 0; t < a->n_tok; t++) {
    int32_t s = a->tok_seq_idx[t];
    if (s < 0 || s >= kv->n_seqs)
      return AK_ERR(err, AK_ERR_RANGE, "tok_seq_idx[%lld]=%d outside [0, n_seqs=%d)",
                    (long long)t, s, kv->n_seqs);
    int32_t n_pages = kv->indptr[s + 1] - kv->indptr[s];
    int64_t seq_len = n_pages ? (int64_t)(n_pages - 1) * kv->page_tokens + kv->last_page_len[s] : 0;
    if (a->tok_kv_len[t] < 0 || a->tok_kv_len[t] > seq_len)
      return AK_ERR(err, AK_ERR_RANGE,
                    "tok_kv_len[%lld]=%d outside [0, %lld] (sequence %d's view length)",
                    (long long)t, a->tok_kv_len[t], (long long)seq_len, s);
  }
  return AK_OK;
}

ak_status_t kn_attention(kn_cpu_t *cpu, const kn_attn_args_t *a, void *workspace,
                         size_t workspace_bytes, ak_err_t *err) {
  if (!cpu || !a) return AK_ERR(err, AK_ERR_INVALID_ARG, "NULL argument");
  AK_TRY(kn_attn_check(a, err));
  size_t need = kn_attention_workspace_bytes(a, cpu->n_threads);
  if (!workspace || workspace_bytes < need)
    return AK_ERR(err, AK_ERR_INVALID_ARG, "workspace %p of %zu bytes < %zu needed for %d threads",
                  workspace, workspace_bytes, need, cpu->n_threads);
  kn_attn_job_t job;
  job.a = a;
  job.isa = cpu->isa;
  job.ws = (float *)(((uintptr_t)workspace + 63) & ~(uintptr_t)63);
  job.scratch_floats = kn_attn_scratch_floats(a->n_heads / a->n_kv_heads, a->head_dim);
  job.n_split = kn_attn_n_split(a, cpu->n_threads);
  job.partials = job.ws + (int64_t)cpu->n_threads * job.scratch_floats;
  job.n_units = job.n_split > 1 ? a->n_tok * a->n_kv_heads * job.n_split
                                : (a->n_tok + KN_ATTN_QB - 1) / KN_ATTN_QB * a->n_kv_heads;
  atomic_init(&job.next, 0);
  if (job.n_units == 1 || cpu->n_threads == 1)
    kn_attn_job(&job, 0, 1);
  else
    ak_pool_run(cpu->pool, kn_attn_job, &job);
  if (job.n_split > 1) kn_attn_merge_range(&job, 0, 1); /* n_tok * n_group * head_dim: tiny */
  return AK_OK;
}
