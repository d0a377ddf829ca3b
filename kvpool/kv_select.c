/* kv_select: the page policies' decisions (arkvale, streaming, quest) for one
 * budgeted layer of one sequence — what to digest and back up when a page fills,
 * what to evict when a page opens, and per decode step what to estimate, select,
 * recall and attend. The tables it edits are described in kv_pool_internal.h; the
 * rules are in kvpool.h and ../shared/ARKVALE.md.
 *
 * Selections are made with a bounded insertion selection (O(n m) for the best m of n
 * candidates) rather than a full sort: m is the top-k or the middle of a budget, a few
 * tens of pages, and it keeps the pool free of a comparator with hidden state. Ties go
 * to the newer page, the better guess when scores cannot tell pages apart. */
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "ak_alloc.h"
#include "kv_pool_internal.h"


/* 1 if page a (score sa) ranks above page b (score sb). NaN ranks lowest. */
static int kv_ranks_above(float sa, int32_t a, float sb, int32_t b) {
  if (isnan(sa) || isnan(sb)) return isnan(sa) && isnan(sb) ? a > b : isnan(sb); /* a strict order */
  return sa > sb || (sa == sb && a > b);
}

static int kv_score_before(const void *score, int32_t a, int32_t b) {
  const float *sc = score;
  return kv_ranks_above(sc[a], a, sc[b], b);
}

/* The m best of cand[0..n) by score[cand], written best first to out[0..m) (m <= n).
 * out must have room for n (every caller's scratch holds a sequence's pages): the
 * whole candidate list is sorted (O(n log n)). The ranking is a strict total order
 * (ties go to the higher index; NaN lowest), so any sort gives the same result. */
static void kv_select_best(const float *score, const int32_t *cand, int64_t n, int64_t m, int32_t *out) {
  if (m <= 0 || n <= 0) return;
  if (out != cand) memmove(out, cand, sizeof(int32_t) * (size_t)n);
  kv_sort_idx(out, n, kv_score_before, score);
}

static int32_t kv_window_pages(const kv_pool_t *pool) {
  return pool->p.policy == KV_POLICY_ARKVALE ? pool->p.n_window_pages : 1;
}

/* Scores pages [0, L->n_digests) of the layer against q into L->score: on the host,
 * or where the pages are when page_ops can (score_pages). With select_on_device the
 * queries stay with the caller: q is passed as NULL (the last one it saw). */
static void kv_select_estimate(kv_pool_t *pool, kv_seq_t *s, kv_layer_t *L, const float *q) {
  double t0 = kv_now_us();
  const kv_pool_params_t *p = &pool->p;
  const kv_page_ops_t *ops = p->page_memory ? p->page_ops : NULL;
  ak_status_t st;
  if (ops && ops->score_pages)
    st = ops->score_pages(ops->ctx, (int32_t)(s - pool->seqs), (int32_t)(L - s->layers),
                          p->select_on_device ? NULL : q, L->n_digests, L->score, &pool->err);
  else
    st = kv_digest_score_pages(pool->digest, L->digest, L->n_digests, q, p->n_heads, p->n_kv_heads, p->head_dim,
                               p->score_agg, NULL, L->score);
  /* shapes were checked at create: a failure here is a bug */
  if (st < 0)
    for (int64_t j = 0; j < L->n_digests; j++) L->score[j] = NAN;
  KV_COUNT(pool, s, estimate_us, kv_now_us() - t0);
}

/* End (exclusive) of the pages a step's begin may evict. arkvale: the middle as it is
 * after the step, so the page leaving the window competes at once (ARKVALE.md); an
 * abort recalls it (kv_select_restore_window). streaming cannot recall what it drops,
 * so it spares that page until the step ends. */
static int64_t kv_evict_hi(const kv_pool_t *pool, const kv_seq_t *s, int64_t n_pages_after) {
  int64_t n = n_pages_after;
  if (pool->p.policy != KV_POLICY_ARKVALE && s->n_pages < n) n = s->n_pages;
  int64_t hi = n - kv_window_pages(pool);
  return hi < s->n_pages ? hi : s->n_pages; /* the step's new pages are never candidates */
}

/* Resident middle pages a decode step may evict at its begin. */
static int64_t kv_evictable(const kv_pool_t *pool, const kv_seq_t *s, const kv_layer_t *L, int64_t n_pages_after) {
  int32_t ns = pool->p.n_sink_pages;
  int64_t hi = kv_evict_hi(pool, s, n_pages_after), n = 0;
  for (int64_t j = ns; j < hi; j++) n += L->phys[j] != KV_PAGE_NONE;
  return n;
}

int64_t kv_select_resident_after(const kv_pool_t *pool, const kv_seq_t *s, const kv_layer_t *L,
                                 int64_t n_pages_after, int decode) {
  int64_t after = L->n_resident + (n_pages_after - s->n_pages);
  if (pool->p.policy == KV_POLICY_QUEST || !decode) return after;
  int64_t target = n_pages_after < pool->budget_pages ? n_pages_after : pool->budget_pages;
  if (after <= target) return after;
  int64_t over = after - target, can = kv_evictable(pool, s, L, n_pages_after);
  return after - (over < can ? over : can);
}

static void kv_evict_page(kv_pool_t *pool, kv_seq_t *s, kv_layer_t *L, int64_t j) {
  kv_page_free(pool, L->phys[j]);
  L->phys[j] = KV_PAGE_NONE;
  L->n_resident--;
  KV_COUNT(pool, s, evictions, 1);
  if (pool->p.policy == KV_POLICY_STREAMING) KV_COUNT(pool, s, drops, 1);
}

void kv_select_evict_for_step(kv_pool_t *pool, kv_seq_t *s, int32_t layer, int64_t n_pages_after, int decode) {
  kv_layer_t *L = &s->layers[layer];
  if (!decode) {
    L->compacted = 0;
    return;
  }
  L->compacted = 1;
  int64_t n_evict = L->n_resident + (n_pages_after - s->n_pages) -
                    kv_select_resident_after(pool, s, L, n_pages_after, decode);
  if (n_evict <= 0) return;
  double t0 = kv_now_us();
  int32_t ns = pool->p.n_sink_pages;
  int32_t *cand = pool->sel_order;
  int64_t n_cand = 0;
  int64_t hi = kv_evict_hi(pool, s, n_pages_after);
  for (int64_t j = ns; j < hi; j++)
    if (L->phys[j] != KV_PAGE_NONE) cand[n_cand++] = (int32_t)j;
  if (n_evict > n_cand) n_evict = n_cand; /* the rest goes at step end (kv_evictable) */
  float *score = L->score;
  if (pool->p.policy == KV_POLICY_ARKVALE && s->has_last_q) {
    double t1 = kv_now_us();
    KV_COUNT(pool, s, select_us, t1 - t0);
    kv_select_estimate(pool, s, L, s->last_q + (int64_t)layer * pool->p.n_heads * pool->p.head_dim);
    t0 = kv_now_us();
  } else {
    /* streaming (or arkvale before any query): the oldest pages go first */
    score = pool->true_imp;
    for (int64_t c = 0; c < n_cand; c++) score[cand[c]] = (float)cand[c];
  }
  int64_t n_keep = n_cand - n_evict;
  int32_t *keep = pool->sel_top;
  kv_select_best(score, cand, n_cand, n_keep, keep);
  memset(pool->sel_mark, 0, (size_t)n_pages_after); /* candidates lie below it */
  for (int64_t i = 0; i < n_keep; i++) pool->sel_mark[keep[i]] = 1;
  for (int64_t c = 0; c < n_cand; c++)
    if (!pool->sel_mark[cand[c]]) kv_evict_page(pool, s, L, cand[c]);
  KV_COUNT(pool, s, select_us, kv_now_us() - t0);
}

static ak_status_t kv_digest_reserve(kv_pool_t *pool, kv_layer_t *L, int64_t n_pages) {
  if (n_pages <= L->digest_cap) return AK_OK;
  int64_t cap = L->digest_cap ? L->digest_cap : 8;
  while (cap < n_pages) cap *= 2;
  if (cap > pool->max_pages_per_seq) cap = pool->max_pages_per_seq;
  size_t per_page = sizeof(float) * (size_t)pool->p.n_kv_heads * (size_t)pool->digest_floats;
  float *d = ak_host_alloc(per_page * (size_t)cap, 0);
  if (!d) return AK_ERR(&pool->err, AK_ERR_NO_MEMORY, "digests of %lld pages", (long long)cap);
  if (L->digest) {
    memcpy(d, L->digest, per_page * (size_t)L->n_digests);
    ak_host_free(L->digest, per_page * (size_t)L->digest_cap);
  }
  L->digest = d;
  L->digest_cap = cap;
  return AK_OK;
}

ak_status_t kv_select_on_fill(kv_pool_t *pool, kv_seq_t *s, int32_t layer, int64_t from, int64_t to) {
  kv_layer_t *L = &s->layers[layer];
  const kv_pool_params_t *p = &pool->p;
  int64_t per_page = (int64_t)p->n_kv_heads * pool->digest_floats;
  const kv_page_ops_t *ops = p->page_memory ? p->page_ops : NULL;
  /* where the pages are, digests and backups can be made there without the bytes
   * coming to the host */
  int dev_digest = p->select_on_device && ops && ops->build_digest; /* nothing else reads host digests then */
  int dev_backup = pool->has_backup && ops && ops->backup_page && pool->tier->ops->reserve;
  if (!dev_digest) AK_TRY(kv_digest_reserve(pool, L, to)); /* else no host copy at all (GBs at 30k x 7B) */
  int32_t seq = (int32_t)(s - pool->seqs);
  for (int64_t j = from; j < to; j++) {
    int32_t pg = L->phys[j];
    if (pg == KV_PAGE_NONE)
      return AK_ERR(&pool->err, AK_ERR_INTERNAL, "layer %d page %lld filled but is not resident", layer,
                    (long long)j);
    const void *bytes = NULL;
    if (!dev_digest || (pool->has_backup && !dev_backup)) AK_TRY(kv_page_fetch(pool, pg, &bytes));
    if (dev_digest) {
      AK_TRY(ops->build_digest(ops->ctx, seq, layer, j, pg, &pool->err));
    } else {
      kv_buf_read_f32(pool, bytes, 0, 0, p->page_tokens, pool->page_f32);
      AK_TRY(kv_digest_build(pool->digest, pool->page_f32, p->page_tokens, p->n_kv_heads, p->head_dim, &pool->err,
                             L->digest + j * per_page));
      if (ops && ops->put_digest) AK_TRY(ops->put_digest(ops->ctx, seq, layer, j, L->digest + j * per_page, &pool->err));
    }
    L->n_digests = j + 1;
    if (!pool->has_backup) continue;
    kv_backup_id_t id;
    ak_status_t st;
    if (dev_backup) {
      void *slot = NULL;
      st = kv_tier_reserve(pool->tier, pool->page_bytes, &id, &slot);
      if (st >= 0) {
        st = ops->backup_page(ops->ctx, pg, slot, &pool->err);
        if (st < 0) {
          kv_tier_free(pool->tier, id);
          return st;
        }
      }
    } else {
      st = kv_tier_put(pool->tier, bytes, pool->page_bytes, &id);
    }
    if (st < 0)
      return AK_ERR(&pool->err, st, "layer %d page %lld: backup to the %s tier failed: %s", layer, (long long)j,
                    kv_tier_name(pool->tier), kv_tier_errmsg(pool->tier));
    L->backup[j] = id;
    L->n_backups++;
    KV_COUNT(pool, s, backups, 1);
    KV_COUNT(pool, s, bytes_backed_up, pool->page_bytes);
  }
  return AK_OK;
}

/* score_groups > 1: each group of KV heads scores the candidates with its own query
 * heads and ranks its best k; the top-k then takes each group's best page not yet
 * taken, in turn. Uses pool->sel_mark to know what is taken (cleared by the caller). */
static void kv_select_grouped(kv_pool_t *pool, kv_layer_t *L, const float *q, const int32_t *cand, int64_t n_cand,
                              int64_t k, int32_t *top) {
  const kv_pool_params_t *p = &pool->p;
  int32_t G = p->score_groups, kv_per_g = p->n_kv_heads / G, q_per_g = p->n_heads / G;
  int64_t maxp = pool->max_pages_per_seq, dpf = (int64_t)p->n_kv_heads * pool->digest_floats;
  for (int32_t g = 0; g < G; g++) {
    float *gs = pool->group_score + g * maxp;
    for (int64_t c = 0; c < n_cand; c++) {
      int32_t j = cand[c];
      float sc = NAN;
      kv_digest_score(pool->digest, L->digest + j * dpf + (int64_t)g * kv_per_g * pool->digest_floats,
                      q + (int64_t)g * q_per_g * p->head_dim, q_per_g, kv_per_g, p->head_dim, p->score_agg, NULL,
                      &sc);
      gs[j] = sc;
    }
    kv_select_best(gs, cand, n_cand, k, pool->group_order + g * maxp);
    pool->group_next[g] = 0;
  }
  int64_t n_top = 0;
  int progress = 1;
  while (n_top < k && progress) {
    progress = 0;
    for (int32_t g = 0; g < G && n_top < k; g++) {
      const int32_t *og = pool->group_order + g * maxp;
      int64_t *nx = &pool->group_next[g];
      while (*nx < k && pool->sel_mark[og[*nx]]) (*nx)++;
      if (*nx == k) continue;
      int32_t j = og[(*nx)++];
      pool->sel_mark[j] = 1;
      top[n_top++] = j;
      progress = 1;
    }
  }
}

/* track_accuracy: each candidate page's true importance (max attention probability
 * over its tokens, mean over query heads; the softmax runs over every token of the
 * sequence) into pool->true_imp. Evicted pages are read from their backups. */
static ak_status_t kv_true_importance(kv_pool_t *pool, kv_seq_t *s, kv_layer_t *L, const float *q) {
  const kv_pool_params_t *p = &pool->p;
  int32_t pt = p->page_tokens, d = p->head_dim, nh = p->n_heads, group = p->n_heads / p->n_kv_heads;
  int64_t n_tokens = s->n_tokens + 1; /* the step's token is stored */
  float *page_max = pool->tok_logit;  /* [n_pages][n_heads] */
  float *run_max = pool->q_scratch, *run_sum = pool->q_scratch + nh;
  for (int32_t h = 0; h < nh; h++) {
    run_max[h] = -INFINITY;
    run_sum[h] = 0.f;
  }
  float scale = 1.f / sqrtf((float)d);
  for (int64_t j = 0; j < s->n_pages; j++) {
    int32_t n = (int32_t)((j + 1) * pt <= n_tokens ? pt : n_tokens - j * pt);
    if (L->phys[j] != KV_PAGE_NONE) {
      const void *bytes;
      AK_TRY(kv_page_fetch(pool, L->phys[j], &bytes));
      kv_buf_read_f32(pool, bytes, 0, 0, n, pool->page_f32);
    } else {
      ak_status_t st = kv_tier_get(pool->tier, L->backup[j], pool->page_tmp, pool->page_bytes);
      if (st < 0) return AK_ERR(&pool->err, st, "page %lld: %s", (long long)j, kv_tier_errmsg(pool->tier));
      kv_buf_read_f32(pool, pool->page_tmp, 0, 0, n, pool->page_f32);
    }
    for (int32_t h = 0; h < nh; h++) {
      const float *qh = q + (int64_t)h * d;
      float m = -INFINITY;
      for (int32_t t = 0; t < n; t++) {
        const float *k = pool->page_f32 + ((int64_t)t * p->n_kv_heads + h / group) * d;
        float dot = 0.f;
        for (int32_t i = 0; i < d; i++) dot += qh[i] * k[i];
        dot *= scale;
        if (dot > m) m = dot;
        /* online log-sum-exp */
        if (dot > run_max[h]) {
          run_sum[h] = run_sum[h] * expf(run_max[h] - dot) + 1.f;
          run_max[h] = dot;
        } else {
          run_sum[h] += expf(dot - run_max[h]);
        }
      }
      page_max[j * nh + h] = m;
    }
  }
  for (int64_t j = 0; j < s->n_pages; j++) {
    float acc = 0.f;
    for (int32_t h = 0; h < nh; h++) acc += expf(page_max[j * nh + h] - run_max[h]) / run_sum[h];
    pool->true_imp[j] = acc / (float)nh;
  }
  return AK_OK;
}

ak_status_t kv_select_for_view(kv_pool_t *pool, kv_seq_t *s, int32_t layer, const float *q, int64_t n_pages_before,
                               int *restricted_p) {
  kv_layer_t *L = &s->layers[layer];
  const kv_pool_params_t *p = &pool->p;
  int64_t N = s->n_pages;
  if (L->prescored)
    L->prescored = 0; /* kv_layer_view scored the whole batch's layer in one call */
  else
    kv_select_estimate(pool, s, L, q);
  double t0 = kv_now_us();
  int quest = p->policy == KV_POLICY_QUEST;
  int32_t ns = quest ? 0 : p->n_sink_pages, nw = quest ? 1 : kv_window_pages(pool);
  int64_t k = quest ? pool->budget_pages - 1 : pool->topk_pages;
  int32_t *cand = pool->sel_order;
  int64_t n_cand = 0;
  for (int64_t j = ns; j < N - nw; j++) cand[n_cand++] = (int32_t)j; /* all filled and digested */
  if (k > n_cand) k = n_cand;
  int32_t *top = pool->sel_top, *victims = pool->sel_victims;
  memset(pool->sel_mark, 0, (size_t)N);
  if (!quest && p->score_groups > 1) {
    kv_select_grouped(pool, L, q, cand, n_cand, k, top);
  } else {
    kv_select_best(L->score, cand, n_cand, k, top);
  }
  for (int64_t i = 0; i < k; i++) pool->sel_mark[top[i]] = 1;
  KV_COUNT(pool, s, n_selects, 1);

  if (p->track_accuracy && p->head_dim >= 2 && k > 0) {
    AK_TRY(kv_true_importance(pool, s, L, q));
    kv_select_best(pool->true_imp, cand, n_cand, k, victims);
    uint64_t hit = 0;
    for (int64_t i = 0; i < k; i++) hit += pool->sel_mark[victims[i]];
    KV_COUNT(pool, s, topk_selected, hit);
    KV_COUNT(pool, s, topk_total, (uint64_t)k);
  }

  if (!quest) {
    /* recall: the missing top-k pages take the slots of the lowest-ranked resident
     * middle pages outside the top-k */
    int64_t n_missing = 0, n_res_other = 0;
    for (int64_t i = 0; i < k; i++)
      if (L->phys[top[i]] == KV_PAGE_NONE) n_missing++;
    int32_t *others = pool->sel_order; /* cand is no longer needed */
    (void)n_pages_before; /* an abort recalls a victim that was in the old window */
    for (int64_t j = ns; j < N - nw; j++)
      if (L->phys[j] != KV_PAGE_NONE && !pool->sel_mark[j]) others[n_res_other++] = (int32_t)j;
    if (n_missing > n_res_other)
      return AK_ERR(&pool->err, AK_ERR_INTERNAL, "layer %d: %lld pages to recall but %lld slots to take", layer,
                    (long long)n_missing, (long long)n_res_other);
    /* the best n_res_other - n_missing stay; victims are the rest, found by marking */
    int64_t n_stay = n_res_other - n_missing;
    kv_select_best(L->score, others, n_res_other, n_stay, victims);
    for (int64_t i = 0; i < n_stay; i++) pool->sel_mark[victims[i]] = 2;
    int64_t v = 0;
    KV_COUNT(pool, s, select_us, kv_now_us() - t0);
    double t1 = kv_now_us();
    for (int64_t i = 0; i < k; i++) {
      int32_t r = top[i];
      if (L->phys[r] != KV_PAGE_NONE) continue;
      while (pool->sel_mark[others[v]] == 2) v++;
      int32_t victim = others[v++];
      int32_t pg = L->phys[victim];
      ak_status_t st = kv_page_restore(pool, pg, L->backup[r]);
      if (st < 0) {
        char why[AK_ERR_MSG_BYTES];
        snprintf(why, sizeof why, "%s", pool->err.msg);
        return AK_ERR(&pool->err, st, "layer %d: recall of page %d failed: %s", layer, r, why);
      }
      L->phys[victim] = KV_PAGE_NONE;
      L->phys[r] = pg;
      KV_COUNT(pool, s, evictions, 1);
      KV_COUNT(pool, s, recalls, 1);
      KV_COUNT(pool, s, bytes_recalled, pool->page_bytes);
    }
    for (int64_t i = 0; i < n_stay; i++) pool->sel_mark[victims[i]] = 0;
    KV_COUNT(pool, s, recall_us, kv_now_us() - t1);
  } else {
    KV_COUNT(pool, s, select_us, kv_now_us() - t0);
  }
  int restricted = quest || p->attend == KV_ATTEND_TOPK;
  if (restricted) {
    for (int64_t j = 0; j < ns && j < N; j++) pool->sel_mark[j] = 1;
    for (int64_t j = N - nw; j < N; j++)
      if (j >= 0) pool->sel_mark[j] = 1;
  }
  *restricted_p = restricted;
  return AK_OK;
}

void kv_select_restore_window(kv_pool_t *pool, kv_seq_t *s, int32_t layer) {
  kv_layer_t *L = &s->layers[layer];
  int64_t N = s->n_pages;
  int32_t ns = pool->p.n_sink_pages, nw = kv_window_pages(pool);
  for (int64_t j = 0; j < N; j++) {
    if (j >= ns && j < N - nw) continue;
    if (L->phys[j] != KV_PAGE_NONE || !L->backup || L->backup[j] == KV_BACKUP_NONE) continue;
    int32_t pg = kv_page_alloc(pool); /* the abort just freed the step's pages */
    if (pg == KV_PAGE_NONE) return;
    if (kv_page_restore(pool, pg, L->backup[j]) < 0) {
      kv_page_free(pool, pg);
      return; /* kv_pool_check reports the window page missing */
    }
    L->phys[j] = pg;
    L->n_resident++;
    KV_COUNT(pool, s, recalls, 1);
    KV_COUNT(pool, s, bytes_recalled, pool->page_bytes);
  }
}

void kv_select_truncate(kv_pool_t *pool, kv_layer_t *L, int64_t n_filled) {
  for (int64_t j = n_filled; j < L->n_digests; j++) {
    if (L->backup && L->backup[j] != KV_BACKUP_NONE) {
      kv_tier_free(pool->tier, L->backup[j]);
      L->backup[j] = KV_BACKUP_NONE;
      L->n_backups--;
    }
  }
  if (L->n_digests > n_filled) L->n_digests = n_filled;
}

void kv_select_release_layer(kv_pool_t *pool, kv_layer_t *L) {
  kv_select_truncate(pool, L, 0);
  if (L->digest) {
    size_t per_page = sizeof(float) * (size_t)pool->p.n_kv_heads * (size_t)pool->digest_floats;
    ak_host_free(L->digest, per_page * (size_t)L->digest_cap);
  }
  L->digest = NULL;
  L->digest_cap = 0;
  L->n_digests = 0;
  L->compacted = 0;
  L->n_res_tok = 0;
}
