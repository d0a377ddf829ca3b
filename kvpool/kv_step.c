/* kv_step: the step orchestration every policy shares — kv_step_begin checks every
 * page and backup the step needs before changing anything, evictions before growth;
 * then per layer the K/V placement (kv_layer_append, or kv_layer_slots +
 * kv_layer_commit for caller-owned pages) and the view after the policy's estimate,
 * selection and recalls; then end or abort. What to evict, recall or attend is decided
 * in kv_select.c (page policies) and kv_token.c (token policies). */
#include <string.h>

#include "kv_pool_internal.h"

/* --- steps --- */

/* Pages a budgeted or full layer of `s` will hold after a step adding n_new tokens
 * (and the evictions the step causes). Pure. */
static int64_t kv_layer_pages_after(const kv_pool_t *pool, const kv_seq_t *s, int32_t layer, int32_t n_new) {
  const kv_layer_t *L = &s->layers[layer];
  int decode = n_new == 1;
  if (kv_layer_budgeted(pool, layer) && pool->is_token_policy) {
    int64_t keep = kv_token_keep(pool, s, L, n_new, decode);
    return kv_pages_for_tokens(keep + n_new, pool->p.page_tokens);
  }
  int64_t n_pages_after = kv_pages_for_tokens(s->n_tokens + n_new, pool->p.page_tokens);
  if (kv_layer_budgeted(pool, layer)) return kv_select_resident_after(pool, s, L, n_pages_after, decode);
  return L->n_resident + (n_pages_after - s->n_pages);
}

/* Filled pages the step will back up (arkvale budgeted layers). */
static int64_t kv_step_backups_needed(const kv_pool_t *pool, const kv_seq_t *s, int32_t n_new) {
  if (!pool->has_backup) return 0;
  int32_t pt = pool->p.page_tokens;
  int64_t filled = (s->n_tokens + n_new) / pt - s->n_tokens / pt;
  int64_t n_full = pool->p.n_full_layers < pool->p.n_layers ? pool->p.n_full_layers : pool->p.n_layers;
  return filled * (pool->p.n_layers - n_full);
}

ak_status_t kv_step_begin(kv_pool_t *pool, const kv_batch_t *batch) {
  ak_err_clear(&pool->err);
  if (pool->in_step) return AK_ERR(&pool->err, AK_ERR_INVALID_ARG, "a step is already open");
  if (!batch || batch->n_seqs < 1 || batch->n_seqs > pool->p.max_seqs || !batch->seqs ||
      !batch->n_new_tokens)
    return AK_ERR(&pool->err, AK_ERR_INVALID_ARG, "batch must hold 1..%d sequences", pool->p.max_seqs);
  int64_t n_tok = 0, need_pages = 0, need_backups = 0;
  for (int32_t i = 0; i < batch->n_seqs; i++) {
    kv_seq_id_t id = batch->seqs[i];
    kv_seq_t *s = kv_seq_get(pool, id);
    if (!s) return AK_ERR(&pool->err, AK_ERR_NOT_FOUND, "batch[%d]: sequence %d is not live", i, id);
    for (int32_t j = 0; j < i; j++)
      if (batch->seqs[j] == id)
        return AK_ERR(&pool->err, AK_ERR_INVALID_ARG, "sequence %d appears twice in the batch", id);
    int32_t n_new = batch->n_new_tokens[i];
    if (n_new < 1)
      return AK_ERR(&pool->err, AK_ERR_INVALID_ARG, "batch[%d]: n_new_tokens=%d must be >= 1", i, n_new);
    if (s->n_tokens + n_new > pool->p.max_seq_tokens)
      return AK_ERR(&pool->err, AK_ERR_RANGE, "sequence %d: %lld + %d tokens exceed max_seq_tokens=%d", id,
                    (long long)s->n_tokens, n_new, pool->p.max_seq_tokens);
    n_tok += n_new;
    for (int32_t l = 0; l < pool->p.n_layers; l++)
      need_pages += kv_layer_pages_after(pool, s, l, n_new) - s->layers[l].n_resident;
    need_backups += kv_step_backups_needed(pool, s, n_new);
  }
  if (need_pages > pool->n_free)
    return AK_ERR(&pool->err, AK_ERR_POOL_FULL, "step needs %lld pages, %lld free of %lld", (long long)need_pages,
                  (long long)pool->n_free, (long long)pool->p.n_pages);
  if (need_backups > 0) {
    kv_tier_stats_t ts;
    kv_tier_stats(pool->tier, &ts);
    if (need_backups > ts.n_slots - ts.n_used)
      return AK_ERR(&pool->err, AK_ERR_POOL_FULL, "step backs up %lld pages, the %s tier has room for %lld of %lld",
                    (long long)need_backups, kv_tier_name(pool->tier), (long long)(ts.n_slots - ts.n_used),
                    (long long)ts.n_slots);
  }
  AK_TRY(kv_tok_scratch_reserve(pool, n_tok));

  /* Nothing can fail from here on. Evictions first, so their pages serve the growth. */
  memset(&pool->step_work, 0, sizeof pool->step_work);
  pool->in_step = 1; /* the step's work counts from here */
  for (int32_t i = 0; i < batch->n_seqs; i++) {
    kv_seq_t *s = &pool->seqs[batch->seqs[i]];
    int32_t n_new = batch->n_new_tokens[i];
    int64_t n_pages_after = kv_pages_for_tokens(s->n_tokens + n_new, pool->p.page_tokens);
    for (int32_t l = 0; l < pool->p.n_layers; l++) {
      if (!kv_layer_budgeted(pool, l)) continue;
      if (pool->is_token_policy)
        kv_token_drop(pool, s, l, kv_token_keep(pool, s, &s->layers[l], n_new, n_new == 1));
      else if (pool->p.policy == KV_POLICY_ARKVALE || pool->p.policy == KV_POLICY_STREAMING)
        kv_select_evict_for_step(pool, s, l, n_pages_after, n_new == 1);
    }
  }
  int64_t t = 0;
  for (int32_t i = 0; i < batch->n_seqs; i++) {
    kv_seq_t *s = &pool->seqs[batch->seqs[i]];
    int32_t n_new = batch->n_new_tokens[i];
    pool->step_seqs[i] = batch->seqs[i];
    pool->step_n_new[i] = n_new;
    pool->step_pages_before[i] = s->n_pages;
    pool->step_tok0[i] = s->n_tokens;
    int64_t n_pages_after = kv_pages_for_tokens(s->n_tokens + n_new, pool->p.page_tokens);
    for (int32_t l = 0; l < pool->p.n_layers; l++) {
      kv_layer_t *L = &s->layers[l];
      if (kv_layer_budgeted(pool, l) && pool->is_token_policy) {
        int64_t want = kv_pages_for_tokens(L->n_res_tok + n_new, pool->p.page_tokens);
        for (int64_t j = L->n_resident; j < want; j++) L->phys[j] = kv_page_alloc(pool);
        L->n_resident = want;
        for (int32_t j = 0; j < n_new; j++) {
          L->tok_pos[L->n_res_tok + j] = (int32_t)(s->n_tokens + j);
          L->tok_acc[L->n_res_tok + j] = 0.f;
          L->tok_last[L->n_res_tok + j] = 0.f;
        }
      } else {
        for (int64_t j = s->n_pages; j < n_pages_after; j++) {
          L->phys[j] = kv_page_alloc(pool);
          L->n_resident++;
        }
        if (pool->has_tok_attn)
          for (int32_t j = 0; j < n_new; j++) {
            L->tok_pos[s->n_tokens + j] = (int32_t)(s->n_tokens + j);
            L->tok_acc[s->n_tokens + j] = 0.f;
            L->tok_last[s->n_tokens + j] = 0.f;
          }
      }
    }
    s->n_pages = n_pages_after;
    for (int32_t j = 0; j < n_new; j++, t++) {
      int64_t pos = s->n_tokens + j;
      pool->tok_pos[t] = (int32_t)pos;
      pool->tok_seq_idx[t] = i;
    }
  }
  pool->step_n_seqs = batch->n_seqs;
  pool->step_n_tok = n_tok;
  pool->in_step = 1;
  return AK_OK;
}

const int32_t *kv_step_positions(const kv_pool_t *pool, int64_t *n_tok_p) {
  *n_tok_p = pool->in_step ? pool->step_n_tok : 0;
  return pool->tok_pos;
}

static kn_paged_kv_t kv_pool_view_base(const kv_pool_t *pool) {
  kn_paged_kv_t kv;
  memset(&kv, 0, sizeof kv);
  int64_t half = pool->page_elems / 2;
  kv.k_base = pool->pages;
  kv.v_base = (const char *)pool->pages + (size_t)half * pool->elem_bytes;
  kv.dtype = pool->p.dtype;
  kv.page_stride_elems = pool->page_elems;
  kv.head_stride_elems = (int64_t)pool->p.page_tokens * pool->p.head_dim;
  kv.page_tokens = pool->p.page_tokens;
  return kv;
}

/* Index on the layer's page list of the sequence's first new token this step. */
static int64_t kv_layer_tok0(const kv_pool_t *pool, const kv_seq_t *s, int32_t layer) {
  if (kv_layer_budgeted(pool, layer) && pool->is_token_policy) return s->layers[layer].n_res_tok;
  return s->n_tokens;
}

ak_status_t kv_layer_check_open(kv_pool_t *pool, int32_t layer_idx) {
  if (!pool->in_step) return AK_ERR(&pool->err, AK_ERR_INVALID_ARG, "no step is open");
  if (layer_idx < 0 || layer_idx >= pool->p.n_layers)
    return AK_ERR(&pool->err, AK_ERR_RANGE, "layer %d outside [0, %d)", layer_idx, pool->p.n_layers);
  return AK_OK;
}

/* Digests and backs up the pages of one layer that the step's tokens filled. */
static ak_status_t kv_layer_filled(kv_pool_t *pool, int32_t layer_idx) {
  if (!pool->has_digest || !kv_layer_budgeted(pool, layer_idx)) return AK_OK;
  int32_t pt = pool->p.page_tokens;
  for (int32_t i = 0; i < pool->step_n_seqs; i++) {
    kv_seq_t *s = &pool->seqs[pool->step_seqs[i]];
    int64_t from = s->n_tokens / pt, to = (s->n_tokens + pool->step_n_new[i]) / pt;
    if (to > from) AK_TRY(kv_select_on_fill(pool, s, layer_idx, from, to));
  }
  return AK_OK;
}

/* The step's (page, slot) of every token in one layer into tok_page / tok_slot. */
static void kv_layer_place(kv_pool_t *pool, int32_t layer_idx) {
  int64_t t = 0;
  int32_t pt = pool->p.page_tokens;
  for (int32_t i = 0; i < pool->step_n_seqs; i++) {
    const kv_seq_t *s = &pool->seqs[pool->step_seqs[i]];
    const kv_layer_t *L = &s->layers[layer_idx];
    int64_t idx0 = kv_layer_tok0(pool, s, layer_idx);
    for (int32_t j = 0; j < pool->step_n_new[i]; j++, t++) {
      int64_t idx = idx0 + j;
      pool->tok_page[t] = L->phys[idx / pt];
      pool->tok_slot[t] = (int32_t)(idx % pt);
    }
  }
}

ak_status_t kv_layer_slots(kv_pool_t *pool, int32_t layer_idx, const int32_t **page_p, const int32_t **slot_p) {
  AK_TRY(kv_layer_check_open(pool, layer_idx));
  if (!page_p || !slot_p) return AK_ERR(&pool->err, AK_ERR_INVALID_ARG, "page_p or slot_p is NULL");
  kv_layer_place(pool, layer_idx);
  *page_p = pool->tok_page;
  *slot_p = pool->tok_slot;
  return AK_OK;
}

ak_status_t kv_layer_append(kv_pool_t *pool, kn_cpu_t *cpu, int32_t layer_idx, const float *k,
                            const float *v) {
  AK_TRY(kv_layer_check_open(pool, layer_idx));
  if (!k || !v) return AK_ERR(&pool->err, AK_ERR_INVALID_ARG, "k or v is NULL");
  if (pool->p.page_memory)
    return AK_ERR(&pool->err, AK_ERR_INVALID_ARG, "the pages are the caller's (page_memory): store K/V at kv_layer_slots");
  kv_layer_place(pool, layer_idx);
  int32_t pt = pool->p.page_tokens;
  kn_paged_kv_t kv = kv_pool_view_base(pool);
  ak_status_t st = kn_kv_store(cpu, &kv, pool->pages, pool->p.n_kv_heads, pool->p.head_dim, k,
                               pool->tok_page, pool->tok_slot, pool->step_n_tok, &pool->err);
  if (st < 0) return st;
  /* V lives half a page after K: the same store with the base shifted. */
  void *v_base = (char *)pool->pages + (size_t)(pool->page_elems / 2) * pool->elem_bytes;
  st = kn_kv_store(cpu, &kv, v_base, pool->p.n_kv_heads, pool->p.head_dim, v, pool->tok_page, pool->tok_slot,
                   pool->step_n_tok, &pool->err);
  if (st < 0) return st;
  (void)pt;
  return kv_layer_filled(pool, layer_idx);
}

ak_status_t kv_layer_commit(kv_pool_t *pool, int32_t layer_idx) {
  AK_TRY(kv_layer_check_open(pool, layer_idx));
  if (!pool->p.page_memory)
    return AK_ERR(&pool->err, AK_ERR_INVALID_ARG, "the pool stores its own pages: use kv_layer_append");
  return kv_layer_filled(pool, layer_idx);
}

/* Every selection this layer's view will make, scored in one call where the pages are:
 * the decode tokens of sequences over their budget (the same test as kv_layer_view's). */
static ak_status_t kv_layer_score_batch(kv_pool_t *pool, int32_t layer_idx, const float *q) {
  int64_t q_row = (int64_t)pool->p.n_heads * pool->p.head_dim, t = 0;
  int32_t n = 0;
  for (int32_t i = 0; i < pool->step_n_seqs; i++) {
    kv_seq_t *s = &pool->seqs[pool->step_seqs[i]];
    int32_t n_new = pool->step_n_new[i];
    if (kv_layer_selects(pool, s, layer_idx, n_new)) {
      kv_layer_t *L = &s->layers[layer_idx];
      pool->batch_seqs[n] = pool->step_seqs[i];
      pool->batch_n_pages[n] = L->n_digests;
      pool->batch_scores[n] = L->score;
      memcpy(pool->batch_q + (int64_t)n * q_row, q + (t + n_new - 1) * q_row, sizeof(float) * (size_t)q_row);
      n++;
    }
    t += n_new;
  }
  if (n == 0) return AK_OK;
  const kv_page_ops_t *ops = pool->p.page_ops;
  double t0 = kv_now_us();
  ak_status_t st = ops->score_pages_batch(ops->ctx, layer_idx, n, pool->batch_seqs, pool->batch_q,
                                          pool->batch_n_pages, pool->batch_scores, &pool->err);
  if (st < 0) return st;
  double us = (kv_now_us() - t0) / n;
  for (int32_t b = 0; b < n; b++) {
    kv_seq_t *s = &pool->seqs[pool->batch_seqs[b]];
    s->layers[layer_idx].prescored = 1;
    s->work.estimate_us += us;
  }
  pool->step_work.estimate_us += us * n;
  pool->work.estimate_us += us * n;
  return AK_OK;
}

ak_status_t kv_layer_view(kv_pool_t *pool, int32_t layer_idx, const float *q, int32_t n_heads,
                          kn_attn_args_t *args) {
  return kv_layer_view_into(pool, layer_idx, q, n_heads, pool->view_indices,
                            (int64_t)pool->p.max_seqs * pool->max_pages_per_seq, args);
}

ak_status_t kv_layer_view_into(kv_pool_t *pool, int32_t layer_idx, const float *q, int32_t n_heads,
                               int32_t *indices, int64_t cap, kn_attn_args_t *args) {
  AK_TRY(kv_layer_check_open(pool, layer_idx));
  if (!args) return AK_ERR(&pool->err, AK_ERR_INVALID_ARG, "args is NULL");
  /* room for every page the view can list, checked before anything changes */
  int64_t most = 0;
  for (int32_t i = 0; i < pool->step_n_seqs; i++) {
    const kv_seq_t *s = &pool->seqs[pool->step_seqs[i]];
    const kv_layer_t *L = &s->layers[layer_idx];
    most += L->n_resident > s->n_pages ? L->n_resident : s->n_pages;
  }
  if (!indices || cap < most)
    return AK_ERR(&pool->err, AK_ERR_INVALID_ARG, "indices=%p with room for %lld pages: the view may list %lld",
                  (void *)indices, (long long)cap, (long long)most);
  int need_q = (pool->p.policy != KV_POLICY_FULL || pool->has_tok_attn) && !pool->p.select_on_device;
  if (need_q && !q) return AK_ERR(&pool->err, AK_ERR_INVALID_ARG, "policy %s needs the queries (q is NULL)",
                                  kv_policy_name(pool->p.policy));
  if (need_q && n_heads != pool->p.n_heads)
    return AK_ERR(&pool->err, AK_ERR_INVALID_ARG, "n_heads=%d but the pool was created for %d", n_heads,
                  pool->p.n_heads);
  int32_t pt = pool->p.page_tokens;
  int64_t q_row = (int64_t)pool->p.n_heads * pool->p.head_dim;
  int budgeted = kv_layer_budgeted(pool, layer_idx);
  const kv_page_ops_t *ops = pool->p.page_memory ? pool->p.page_ops : NULL;
  if (budgeted && pool->has_digest && q && ops && ops->score_pages_batch && !pool->p.select_on_device)
    AK_TRY(kv_layer_score_batch(pool, layer_idx, q));
  kn_paged_kv_t kv = kv_pool_view_base(pool);
  int32_t n = 0;
  int64_t t = 0;
  pool->view_indptr[0] = 0;
  for (int32_t i = 0; i < pool->step_n_seqs; i++) {
    kv_seq_t *s = &pool->seqs[pool->step_seqs[i]];
    kv_layer_t *L = &s->layers[layer_idx];
    int32_t n_new = pool->step_n_new[i];
    int64_t tok0 = kv_layer_tok0(pool, s, layer_idx);
    const float *q_seq = q ? q + t * q_row : NULL;
    if (q_seq) memcpy(s->last_q + (int64_t)layer_idx * q_row, q_seq + (int64_t)(n_new - 1) * q_row,
                      sizeof(float) * (size_t)q_row);
    int64_t n_list_tokens;
    if (budgeted && pool->is_token_policy) {
      AK_TRY(kv_token_observe(pool, s, layer_idx, tok0, n_new, q_seq));
      memcpy(indices + n, L->phys, sizeof(int32_t) * (size_t)L->n_resident);
      n += (int32_t)L->n_resident;
      n_list_tokens = tok0 + n_new;
      pool->view_last_len[i] = (int32_t)(n_list_tokens - (L->n_resident - 1) * pt);
    } else {
      /* a full pool tracks prompt attention for branching; the full layers of h2o/tova
       * pools do not need it */
      if (pool->has_tok_attn && !pool->is_token_policy) AK_TRY(kv_token_observe(pool, s, layer_idx, tok0, n_new, q_seq));
      int restricted = 0;
      if (kv_layer_selects(pool, s, layer_idx, n_new)) {
        if (pool->p.select_on_device)
          kv_select_count_device(pool, s); /* the caller decides (kv_layer_apply_recalls) */
        else
          AK_TRY(kv_select_for_view(pool, s, layer_idx, q_seq, pool->step_pages_before[i], &restricted));
      }
      int32_t n0 = n;
      if (!restricted && L->n_resident == s->n_pages) {
        /* every page resident (a full pool, a full layer, a sequence within its budget):
         * the list as it stands, one copy (the loop below cost a decode step's host
         * staging ~2 us a layer at 10k tokens, the GPU idle meanwhile) */
        memcpy(indices + n, L->phys, sizeof(int32_t) * (size_t)s->n_pages);
        n += (int32_t)s->n_pages;
      } else {
        for (int64_t j = 0; j < s->n_pages; j++) {
          if (L->phys[j] == KV_PAGE_NONE) continue;
          if (restricted && !pool->sel_mark[j]) continue;
          indices[n++] = L->phys[j];
        }
      }
      int64_t total = s->n_tokens + n_new;
      pool->view_last_len[i] = (int32_t)(total - (s->n_pages - 1) * pt);
      n_list_tokens = (int64_t)(n - n0 - 1) * pt + pool->view_last_len[i];
    }
    pool->view_indptr[i + 1] = n;
    for (int32_t j = 0; j < n_new; j++) pool->tok_kv_len[t + j] = (int32_t)(n_list_tokens - (n_new - 1 - j));
    t += n_new;
  }
  kv.n_seqs = pool->step_n_seqs;
  kv.indptr = pool->view_indptr;
  kv.indices = indices;
  kv.last_page_len = pool->view_last_len;
  args->kv = kv;
  args->n_tok = pool->step_n_tok;
  args->n_kv_heads = pool->p.n_kv_heads;
  args->head_dim = pool->p.head_dim;
  args->tok_seq_idx = pool->tok_seq_idx;
  args->tok_kv_len = pool->tok_kv_len;
  return AK_OK;
}

ak_status_t kv_step_end(kv_pool_t *pool) {
  if (!pool->in_step) return AK_ERR(&pool->err, AK_ERR_INVALID_ARG, "no step is open");
  for (int32_t i = 0; i < pool->step_n_seqs; i++) {
    kv_seq_t *s = &pool->seqs[pool->step_seqs[i]];
    if (pool->is_token_policy)
      for (int32_t l = 0; l < pool->p.n_layers; l++)
        if (kv_layer_budgeted(pool, l)) s->layers[l].n_res_tok += pool->step_n_new[i];
    s->n_tokens += pool->step_n_new[i];
    s->has_last_q = 1;
    s->work.n_steps++;
    /* a decode step that opened a page may hold one page over the budget (the one
     * that left the window, spared at begin); it goes now, ranked with this step's
     * query */
    if (pool->step_n_new[i] == 1 && (pool->p.policy == KV_POLICY_ARKVALE || pool->p.policy == KV_POLICY_STREAMING))
      for (int32_t l = 0; l < pool->p.n_layers; l++)
        if (kv_layer_budgeted(pool, l)) kv_select_evict_for_step(pool, s, l, s->n_pages, 1);
  }
  pool->step_work.n_steps = 1;
  pool->work.n_steps++;
  pool->in_step = 0;
  if (pool->p.check_every_step) return kv_pool_check(pool);
  return AK_OK;
}

void kv_step_abort(kv_pool_t *pool) {
  if (!pool->in_step) return;
  for (int32_t i = 0; i < pool->step_n_seqs; i++) {
    kv_seq_t *s = &pool->seqs[pool->step_seqs[i]];
    int64_t keep = kv_pages_for_tokens(s->n_tokens, pool->p.page_tokens);
    for (int32_t l = 0; l < pool->p.n_layers; l++) {
      kv_layer_t *L = &s->layers[l];
      if (kv_layer_budgeted(pool, l) && pool->is_token_policy)
        kv_layer_shrink(pool, L, kv_pages_for_tokens(L->n_res_tok, pool->p.page_tokens), L->n_resident);
      else
        kv_layer_shrink(pool, L, keep, s->n_pages);
      /* pages the step filled are partial again: their digests and backups go */
      if (kv_layer_budgeted(pool, l) && pool->has_digest) kv_select_truncate(pool, L, s->n_tokens / pool->p.page_tokens);
      L->prescored = 0;
    }
    s->n_pages = keep;
    if (pool->has_backup)
      for (int32_t l = 0; l < pool->p.n_layers; l++)
        if (kv_layer_budgeted(pool, l)) kv_select_restore_window(pool, s, l);
  }
  pool->in_step = 0;
}
