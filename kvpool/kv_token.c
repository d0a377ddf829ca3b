/* kv_token: the token-granularity policies (H2O, TOVA) and prompt-attention tracking.
 *
 * A token-policy layer keeps its resident tokens densely on its page list (resident
 * token i in page phys[i / page_tokens], slot i % page_tokens; kv_pool_internal.h).
 * Each step, after the new tokens are stored, kv_token_observe scores every resident
 * token with the step's queries (softmax probabilities averaged over query heads):
 * tok_acc sums them over every query since the token arrived (H2O's heavy-hitter
 * score), tok_last keeps the latest query's (TOVA's score). When a layer must come
 * down to n_keep tokens (a decode step over budget, or compaction after a prompt),
 * kv_token_drop picks the victims by those scores, fills their slots with surviving
 * tokens from the tail and frees the pages left empty. Dropped tokens are gone for
 * good: no backup, no digest.
 *
 * The same observe tracks a full pool's prompt attention (track_token_attn), where the
 * page list index is the position.
 *
 * Not here: when to drop and which pages a step reserves (kv_pool.c), the attention
 * itself (kernels/). */
#include <assert.h>
#include <math.h>
#include <string.h>

#include "ak_quant.h"
#include "kv_pool_internal.h"

/* Counts work on the sequence, the step and the pool (as kv_select.c does). */
#define KV_TOK_COUNT(pool, s, field, n)                   \
  do {                                                    \
    (s)->work.field += (n);                               \
    if ((pool)->in_step) (pool)->step_work.field += (n);  \
    (pool)->work.field += (n);                            \
  } while (0)

/* ---- how many tokens stay ---- */

int64_t kv_token_keep(const kv_pool_t *pool, const kv_seq_t *s, const kv_layer_t *L, int32_t n_new, int decode) {
  (void)s;
  if (!decode || pool->p.budget_tokens <= 0) return L->n_res_tok;
  int64_t room = (int64_t)pool->p.budget_tokens - n_new;
  if (room < 0) room = 0;
  return L->n_res_tok < room ? L->n_res_tok : room;
}

/* ---- choosing the victims ---- */

/* Orders of resident token indices for kv_tok_sort. */
typedef enum {
  KV_TOK_BY_POS_DESC = 0, /* newest first */
  KV_TOK_BY_DROP = 1,     /* the policy's drop order: first = dropped first */
  KV_TOK_BY_INDEX = 2,    /* resident index ascending */
} kv_tok_order_kind_t;

typedef struct {
  const kv_layer_t *L;
  kv_tok_order_kind_t kind;
  int use_last;           /* KV_TOK_BY_DROP: score by tok_last (tova), else tok_acc (h2o) */
  int has_recent;         /* KV_TOK_BY_DROP: tokens at positions >= recent_pos go last */
  int32_t recent_pos;
} kv_tok_order_t;

/* 1 if resident token a comes before b. Positions are distinct, so every order is
 * total and the result does not depend on the sort's stability. */
static int kv_tok_before(const kv_tok_order_t *o, int32_t a, int32_t b) {
  const kv_layer_t *L = o->L;
  switch (o->kind) {
    case KV_TOK_BY_POS_DESC:
      return L->tok_pos[a] > L->tok_pos[b];
    case KV_TOK_BY_DROP: {
      if (o->has_recent) {
        int ra = L->tok_pos[a] >= o->recent_pos, rb = L->tok_pos[b] >= o->recent_pos;
        if (ra != rb) return rb; /* the unprotected one first */
      }
      const float *score = o->use_last ? L->tok_last : L->tok_acc;
      if (isnan(score[a]) != isnan(score[b])) return isnan(score[a]); /* NaN goes first */
      if (score[a] < score[b]) return 1;
      if (score[a] > score[b]) return 0;
      return L->tok_pos[a] < L->tok_pos[b];
    }
    case KV_TOK_BY_INDEX:
      return a < b;
  }
  return 0;
}

static int kv_tok_before_fn(const void *o, int32_t a, int32_t b) {
  return kv_tok_before((const kv_tok_order_t *)o, a, b);
}

static void kv_tok_sort(int32_t *idx, int64_t n, const kv_tok_order_t *o) {
  kv_sort_idx(idx, n, kv_tok_before_fn, o);
}

/* Moves resident token src's K and V rows (every KV head) and scores to slot dst. */
static void kv_tok_move(kv_pool_t *pool, kv_layer_t *L, int32_t dst, int32_t src) {
  const int32_t pt = pool->p.page_tokens;
  const size_t row_bytes = (size_t)pool->p.head_dim * pool->elem_bytes;
  const int32_t pg_src = L->phys[src / pt], pg_dst = L->phys[dst / pt];
  assert(pg_src != KV_PAGE_NONE && pg_dst != KV_PAGE_NONE);
  for (int is_v = 0; is_v < 2; is_v++) {
    const char *from = kv_page_kv(pool, pg_src, is_v);
    char *to = kv_page_kv(pool, pg_dst, is_v);
    for (int32_t h = 0; h < pool->p.n_kv_heads; h++) {
      const int64_t src_row = (int64_t)h * pt + src % pt, dst_row = (int64_t)h * pt + dst % pt;
      memcpy(to + dst_row * (int64_t)row_bytes, from + src_row * (int64_t)row_bytes, row_bytes);
    }
  }
  L->tok_pos[dst] = L->tok_pos[src];
  L->tok_acc[dst] = L->tok_acc[src];
  L->tok_last[dst] = L->tok_last[src];
}

void kv_token_drop(kv_pool_t *pool, kv_seq_t *s, int32_t layer, int64_t n_keep) {
  kv_layer_t *L = kv_layer_of(pool, s, layer);
  const int64_t n = L->n_res_tok;
  if (n_keep < 0) n_keep = 0;
  if (n <= n_keep) return;
  const double t0 = kv_now_us();
  const int64_t n_drop = n - n_keep;

  /* tok_logit is free between observes: [max_seq_tokens * n_heads] floats hold the
   * n <= max_seq_tokens resident indices. */
  assert(n <= pool->p.max_seq_tokens && pool->tok_logit != NULL);
  int32_t *idx = (int32_t *)(void *)pool->tok_logit; /* [n] resident token indices */
  for (int64_t i = 0; i < n; i++) idx[i] = (int32_t)i;

  kv_tok_order_t o = {.L = L, .kind = KV_TOK_BY_DROP, .use_last = pool->p.policy == KV_POLICY_TOVA};
  if (pool->p.policy == KV_POLICY_H2O) {
    /* The recent half is protected: the n_recent highest positions. When n_keep is
     * smaller than that, only the newest n_keep are. */
    int64_t n_recent = pool->p.budget_tokens / 2;
    if (n_recent > n_keep) n_recent = n_keep;
    if (n_recent > 0) {
      o.kind = KV_TOK_BY_POS_DESC;
      kv_tok_sort(idx, n, &o);
      o.kind = KV_TOK_BY_DROP;
      o.has_recent = 1;
      o.recent_pos = L->tok_pos[idx[n_recent - 1]];
    }
  }
  kv_tok_sort(idx, n, &o); /* idx[0, n_drop): the victims */

  /* Compaction: victims below n_keep are holes; survivors at or past n_keep fill them.
   * With the victims sorted by index, the holes are a prefix and the victims past
   * n_keep a suffix, and the two counts match. */
  o.kind = KV_TOK_BY_INDEX;
  kv_tok_sort(idx, n_drop, &o);
  int64_t n_holes = 0;
  while (n_holes < n_drop && idx[n_holes] < n_keep) n_holes++;
  int64_t hole = 0, tail_victim = n_holes;
  for (int64_t src = n_keep; src < n; src++) {
    if (tail_victim < n_drop && idx[tail_victim] == src) {
      tail_victim++;
      continue;
    }
    assert(hole < n_holes);
    kv_tok_move(pool, L, idx[hole++], (int32_t)src);
  }
  assert(hole == n_holes && tail_victim == n_drop);

  const int64_t pages_before = kv_pages_for_tokens(n, pool->p.page_tokens);
  for (int64_t j = kv_pages_for_tokens(n_keep, pool->p.page_tokens); j < pages_before; j++) {
    if (L->phys[j] == KV_PAGE_NONE) continue;
    kv_page_free(pool, L->phys[j]);
    L->phys[j] = KV_PAGE_NONE;
    L->n_resident--;
  }
  L->n_res_tok = n_keep;

  const double dt = kv_now_us() - t0;
  KV_TOK_COUNT(pool, s, evictions, (uint64_t)n_drop);
  KV_TOK_COUNT(pool, s, drops, (uint64_t)n_drop);
  KV_TOK_COUNT(pool, s, select_us, dt);
}

/* ---- prompt and decode attention ---- */

/* A dot product in sixteen lanes, so that the compiler vectorizes it without
 * reassociating a single sum (no -ffast-math). */
static inline float kv_tok_dot(const float *q, const float *k, int32_t hd) {
  float acc[16] = {0};
  int32_t d = 0;
  for (; d + 16 <= hd; d += 16)
    for (int l = 0; l < 16; l++) acc[l] += q[d + l] * k[d + l];
  float sum = 0.f;
  for (int l = 0; l < 16; l++) sum += acc[l];
  for (; d < hd; d++) sum += q[d] * k[d];
  return sum;
}

/* out[t] = scale * q . k[t] for key rows k [n_t][head_dim]. On x86 with GCC, AVX2 and
 * AVX-512 clones are picked at load time (prompt observation is O(n^2) work; the
 * build targets baseline x86-64). */
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__)
__attribute__((target_clones("default", "avx2", "avx512f")))
#endif
static void kv_tok_logits(const float *q, const float *k, int32_t n_t, int32_t hd, float scale, float *out) {
  for (int32_t t = 0; t < n_t; t++) out[t] = kv_tok_dot(q, k + (int64_t)t * hd, hd) * scale;
}

/* Softmax of row[0, n) in place. */
static void kv_tok_softmax(float *row, int64_t n) {
  float mx = row[0];
  for (int64_t i = 1; i < n; i++) mx = row[i] > mx ? row[i] : mx;
  double sum = 0.0;
  for (int64_t i = 0; i < n; i++) {
    row[i] = expf(row[i] - mx);
    sum += row[i];
  }
  const float inv = (float)(1.0 / sum);
  for (int64_t i = 0; i < n; i++) row[i] *= inv;
}

ak_status_t kv_token_observe(kv_pool_t *pool, kv_seq_t *s, int32_t layer, int64_t tok0, int32_t n_new,
                             const float *q) {
  kv_layer_t *L = kv_layer_of(pool, s, layer);
  const int32_t pt = pool->p.page_tokens, hd = pool->p.head_dim;
  const int32_t n_kv = pool->p.n_kv_heads;
  const int32_t n_heads = pool->p.n_heads > 0 ? pool->p.n_heads : n_kv;
  const int32_t group = n_heads / n_kv;
  const int64_t n_vis_all = tok0 + n_new;
  if (n_new <= 0) return AK_OK;
  if (tok0 < 0 || n_vis_all > pool->p.max_seq_tokens || L->tok_acc == NULL || pool->tok_logit == NULL || q == NULL)
    return AK_ERR(&pool->err, AK_ERR_INTERNAL, "layer %d: tokens [%lld, %lld) of %d, tok_acc %p, q %p", layer,
                  (long long)tok0, (long long)n_vis_all, pool->p.max_seq_tokens, (void *)L->tok_acc, (const void *)q);
  const double t0 = kv_now_us();
  const float scale = 1.0f / sqrtf((float)hd);

  /* The new tokens accumulate from this step on (begin resets them; this is cheap). */
  for (int64_t i = tok0; i < n_vis_all; i++) L->tok_acc[i] = 0.f;

  /* Every visible key, converted to f32 once per call: [n_kv_heads][n_vis_all][head_dim]
   * in pool->tok_keys (converting per block of queries instead cost more than the
   * dot products on long prompts). */
  const int64_t key_stride = (int64_t)pool->p.max_seq_tokens * hd;
  float *keys = pool->tok_keys;
  for (int64_t pj = 0; pj < kv_pages_for_tokens(n_vis_all, pt); pj++) {
    const int64_t i0 = pj * pt;
    const int32_t n_slots = (int32_t)(n_vis_all - i0 < pt ? n_vis_all - i0 : pt);
    const int32_t pg = L->phys[pj];
    if (pg == KV_PAGE_NONE)
      return AK_ERR(&pool->err, AK_ERR_INTERNAL, "layer %d: page %lld of %lld tokens not resident", layer,
                    (long long)pj, (long long)n_vis_all);
    const char *kpage = kv_page_kv(pool, pg, 0);
    for (int32_t kh = 0; kh < n_kv; kh++) {
      const char *src = kpage + (int64_t)kh * pt * hd * (int64_t)pool->elem_bytes;
      float *dst = keys + (int64_t)kh * key_stride + i0 * hd;
      if (pool->p.dtype == KN_F32)
        memcpy(dst, src, sizeof(float) * (size_t)n_slots * (size_t)hd);
      else
        ak_dequant_row(AK_TYPE_F16, src, dst, (int64_t)n_slots * hd);
    }
  }

  /* Blocks of new tokens share each page's converted keys. Their logits go to
   * tok_logit [n_blk][n_heads][row_stride], row_stride = the block's widest row;
   * n_blk is as many as fit (1 for a chunk near max_seq_tokens). */
  const int64_t logit_cap = (int64_t)pool->p.max_seq_tokens * n_heads;
  float *logit = pool->tok_logit;
  for (int32_t jb0 = 0; jb0 < n_new;) {
    int64_t n_blk = logit_cap / ((int64_t)n_heads * n_vis_all);
    if (n_blk > 32) n_blk = 32;
    if (n_blk < 1) n_blk = 1;
    if (n_blk > n_new - jb0) n_blk = n_new - jb0;
    const int64_t row_stride = tok0 + jb0 + n_blk; /* the block's last token's visible tokens */

    for (int32_t kh = 0; kh < n_kv; kh++) {
      const float *krows = keys + (int64_t)kh * key_stride; /* [n_vis_all][head_dim] */
      for (int64_t jj = 0; jj < n_blk; jj++) {
        const int64_t vis = tok0 + jb0 + jj + 1;
        for (int32_t h = kh * group; h < (kh + 1) * group; h++)
          kv_tok_logits(q + ((int64_t)(jb0 + jj) * n_heads + h) * hd, krows, (int32_t)vis, hd, scale,
                        logit + (jj * n_heads + h) * row_stride);
      }
    }

    for (int64_t jj = 0; jj < n_blk; jj++) {
      const int64_t vis = tok0 + jb0 + jj + 1;
      float *mean = logit + (jj * n_heads) * row_stride; /* head 0's row becomes the mean */
      for (int32_t h = 0; h < n_heads; h++) kv_tok_softmax(logit + (jj * n_heads + h) * row_stride, vis);
      for (int32_t h = 1; h < n_heads; h++) {
        const float *row = logit + (jj * n_heads + h) * row_stride;
        for (int64_t i = 0; i < vis; i++) mean[i] += row[i];
      }
      const float inv_heads = 1.0f / (float)n_heads;
      for (int64_t i = 0; i < vis; i++) {
        mean[i] *= inv_heads;
        L->tok_acc[i] += mean[i];
      }
      if (jb0 + jj == n_new - 1) memcpy(L->tok_last, mean, (size_t)vis * sizeof(float));
    }
    jb0 += (int32_t)n_blk;
  }

  KV_TOK_COUNT(pool, s, estimate_us, kv_now_us() - t0);
  return AK_OK;
}
