/* kv_pool_stats: what a pool and its sequences hold and have done (kv_pool_get_stats,
 * kv_seq_get_stats), and the invariant check every debug step runs (kv_pool_check). */
#include <string.h>

#include "ak_alloc.h"
#include "kv_pool_internal.h"

static kv_seq_t *kv_stats_seq(const kv_pool_t *pool, kv_seq_id_t seq) {
  if (seq < 0 || seq >= pool->p.max_seqs || !pool->seqs[seq].live) return NULL;
  return &pool->seqs[seq];
}

static size_t kv_layer_digest_bytes(const kv_pool_t *pool, const kv_layer_t *L) {
  /* digests built where the pages are (build_digest) have no host array: count them */
  int64_t pages = L->digest ? L->digest_cap : L->n_digests;
  return sizeof(float) * (size_t)pages * (size_t)pool->p.n_kv_heads * (size_t)pool->digest_floats;
}

ak_status_t kv_seq_get_stats(const kv_pool_t *pool, kv_seq_id_t seq, kv_seq_stats_t *stats_p) {
  const kv_seq_t *s = kv_stats_seq(pool, seq);
  if (!s || !stats_p) return AK_ERR((ak_err_t *)&pool->err, AK_ERR_NOT_FOUND, "sequence %d is not live", seq);
  kv_seq_stats_t st;
  memset(&st, 0, sizeof st);
  st.n_tokens = s->n_tokens;
  for (int32_t l = 0; l < pool->p.n_layers; l++) {
    const kv_layer_t *L = &s->layers[l];
    st.n_pages_logical += s->n_pages;
    st.n_pages_resident += L->n_resident;
    st.n_pages_backed_up += L->n_backups;
    if (kv_layer_budgeted(pool, l) && pool->is_token_policy) {
      st.n_tokens_resident += L->n_res_tok;
    } else {
      int64_t res_tok = L->n_resident * pool->p.page_tokens;
      if (s->n_pages > 0 && L->phys[s->n_pages - 1] != KV_PAGE_NONE)
        res_tok -= (int64_t)s->n_pages * pool->p.page_tokens - s->n_tokens;
      st.n_tokens_resident += res_tok;
    }
    st.digest_bytes += kv_layer_digest_bytes(pool, L);
  }
  st.backup_bytes = (size_t)st.n_pages_backed_up * pool->page_bytes;
  st.work = s->work;
  *stats_p = st;
  return AK_OK;
}

void kv_pool_get_stats(const kv_pool_t *pool, kv_pool_stats_t *stats_p) {
  kv_pool_stats_t st;
  memset(&st, 0, sizeof st);
  st.n_seqs = pool->n_live;
  st.n_pages_total = pool->p.n_pages;
  st.n_pages_used = pool->p.n_pages - pool->n_free;
  st.page_bytes = pool->page_bytes;
  st.pool_bytes = pool->page_bytes * (size_t)pool->p.n_pages;
  kv_array_t arr[KV_N_ARRAYS];
  int n_arr = kv_pool_arrays((kv_pool_t *)pool, arr);
  for (int i = 0; i < n_arr; i++) st.table_bytes += arr[i].n_bytes;
  st.table_bytes += sizeof(int32_t) * (size_t)pool->tok_cap * 5;
  for (int32_t i = 0; i < pool->p.max_seqs; i++) {
    const kv_seq_t *s = &pool->seqs[i];
    if (s->block) st.table_bytes += s->block_bytes;
    if (!s->live) continue;
    for (int32_t l = 0; l < pool->p.n_layers; l++) st.digest_bytes += kv_layer_digest_bytes(pool, &s->layers[l]);
  }
  kv_tier_stats_t ts;
  kv_tier_stats(pool->tier, &ts);
  st.n_backups = ts.n_used;
  st.backup_bytes = ts.bytes_used;
  st.backup_capacity_bytes = ts.bytes_capacity;
  st.work = pool->work;
  st.last_step = pool->step_work;
  *stats_p = st;
}

ak_status_t kv_pool_check(kv_pool_t *pool) {
  ak_err_t *err = &pool->err; /* the check records why it failed */
  int64_t n_pages = pool->p.n_pages;
  int32_t pt = pool->p.page_tokens;
  uint8_t *seen = ak_host_alloc((size_t)n_pages, 1);
  if (!seen) return AK_ERR(err, AK_ERR_NO_MEMORY, "check bitmap");
  ak_status_t st = AK_OK;
  int64_t used = 0, backups = 0;
  int32_t live = 0;
  for (int32_t i = 0; i < pool->p.max_seqs && st == AK_OK; i++) {
    const kv_seq_t *s = &pool->seqs[i];
    if (!s->live) continue;
    live++;
    if (!pool->in_step && s->n_pages != kv_pages_for_tokens(s->n_tokens, pt))
      st = AK_ERR(err, AK_ERR_INTERNAL, "sequence %d: %lld pages for %lld tokens", i, (long long)s->n_pages,
                  (long long)s->n_tokens);
    for (int32_t l = 0; l < pool->p.n_layers && st == AK_OK; l++) {
      const kv_layer_t *L = &s->layers[l];
      int budgeted = kv_layer_budgeted(pool, l);
      int token = budgeted && pool->is_token_policy;
      int64_t n_list = token ? L->n_resident : s->n_pages;
      int64_t n_res = 0;
      for (int64_t j = 0; j < pool->max_pages_per_seq && st == AK_OK; j++) {
        int32_t pg = L->phys[j];
        if (pg == KV_PAGE_NONE) continue;
        if (j >= n_list || pg < 0 || pg >= n_pages || seen[pg]) {
          st = AK_ERR(err, AK_ERR_INTERNAL, "sequence %d layer %d page %lld: physical page %d out of range, "
                      "invalid or shared", i, l, (long long)j, pg);
          break;
        }
        seen[pg] = 1;
        used++;
        n_res++;
      }
      if (st != AK_OK) break;
      if (n_res != L->n_resident) {
        st = AK_ERR(err, AK_ERR_INTERNAL, "sequence %d layer %d: %lld resident pages counted, %lld recorded", i, l,
                    (long long)n_res, (long long)L->n_resident);
        break;
      }
      if (token) {
        int64_t n_tok_res = L->n_res_tok + (pool->in_step ? 0 : 0);
        if (!pool->in_step && L->n_resident != kv_pages_for_tokens(n_tok_res, pt))
          st = AK_ERR(err, AK_ERR_INTERNAL, "sequence %d layer %d: %lld pages for %lld resident tokens", i, l,
                      (long long)L->n_resident, (long long)n_tok_res);
        if (!pool->in_step && n_tok_res > s->n_tokens)
          st = AK_ERR(err, AK_ERR_INTERNAL, "sequence %d layer %d: %lld resident tokens of %lld", i, l,
                      (long long)n_tok_res, (long long)s->n_tokens);
        continue;
      }
      if (!budgeted) {
        if (n_res != s->n_pages)
          st = AK_ERR(err, AK_ERR_INTERNAL, "sequence %d layer %d: %lld of %lld pages resident in a full layer", i,
                      l, (long long)n_res, (long long)s->n_pages);
        continue;
      }
      /* page policies with a budget */
      int64_t n_filled = pool->in_step ? L->n_digests : s->n_tokens / pt;
      if (pool->has_digest && L->n_digests != n_filled)
        st = AK_ERR(err, AK_ERR_INTERNAL, "sequence %d layer %d: %lld digests for %lld filled pages", i, l,
                    (long long)L->n_digests, (long long)n_filled);
      int32_t ns = pool->p.n_sink_pages;
      int32_t nw = pool->p.policy == KV_POLICY_ARKVALE ? pool->p.n_window_pages : 1;
      for (int64_t j = 0; j < s->n_pages && st == AK_OK; j++) {
        int must = pool->p.policy == KV_POLICY_QUEST || j < ns || j >= s->n_pages - nw;
        if (must && L->phys[j] == KV_PAGE_NONE)
          st = AK_ERR(err, AK_ERR_INTERNAL, "sequence %d layer %d: sink/window page %lld is not resident", i, l,
                      (long long)j);
        if (pool->has_backup) {
          int full = (j + 1) * pt <= (pool->in_step ? (int64_t)L->n_digests * pt : s->n_tokens);
          if (full != (L->backup[j] != KV_BACKUP_NONE))
            st = AK_ERR(err, AK_ERR_INTERNAL, "sequence %d layer %d page %lld: %s but %s a backup", i, l,
                        (long long)j, full ? "filled" : "not filled", full ? "has no" : "has");
          if (L->backup[j] != KV_BACKUP_NONE) backups++;
        }
      }
      if (st == AK_OK && !pool->in_step && pool->p.policy != KV_POLICY_QUEST && L->compacted &&
          n_res > pool->budget_pages)
        st = AK_ERR(err, AK_ERR_INTERNAL, "sequence %d layer %d: %lld resident pages over a budget of %d", i, l,
                    (long long)n_res, pool->budget_pages);
    }
  }
  for (int64_t f = 0; f < pool->n_free && st == AK_OK; f++) {
    int32_t pg = pool->free_stack[f];
    if (pg < 0 || pg >= n_pages || seen[pg])
      st = AK_ERR(err, AK_ERR_INTERNAL, "free stack entry %lld: page %d invalid or in use", (long long)f, pg);
    else
      seen[pg] = 1;
  }
  if (st == AK_OK && used + pool->n_free != n_pages)
    st = AK_ERR(err, AK_ERR_INTERNAL, "%lld used + %lld free != %lld pages", (long long)used,
                (long long)pool->n_free, (long long)n_pages);
  if (st == AK_OK && live != pool->n_live)
    st = AK_ERR(err, AK_ERR_INTERNAL, "%d live sequences counted, %d recorded", live, pool->n_live);
  if (st == AK_OK && pool->has_backup && pool->owns_tier) {
    kv_tier_stats_t ts;
    kv_tier_stats(pool->tier, &ts);
    if (ts.n_used != backups)
      st = AK_ERR(err, AK_ERR_INTERNAL, "the tier holds %lld blobs, the tables %lld backups", (long long)ts.n_used,
                  (long long)backups);
  }
  ak_host_free(seen, (size_t)n_pages);
  return st;
}
