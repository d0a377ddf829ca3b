/* kv_select_device: selections made by the caller where the pages are
 * (kv_pool_params_t.select_on_device). The pool's tables stay the truth: the caller
 * reads a layer's tables for each selecting sequence (kv_layer_select_row), makes
 * arkvale's decision itself (on the GPU, kn_cuda_arkvale_plan, with kv_select.c's
 * rules), gathers the recalled backups into the victims' pages, and reports the swaps
 * (kv_layer_apply_recalls) before the step ends; the pool checks them and keeps count. */
#include <string.h>

#include "kv_pool_internal.h"

void kv_select_count_device(kv_pool_t *pool, kv_seq_t *s) { KV_COUNT(pool, s, n_selects, 1); }

/* The step's i-th sequence, for a layer of an open step. */
static ak_status_t kv_step_seq(kv_pool_t *pool, int32_t layer_idx, int32_t i, kv_seq_t **s_p) {
  AK_TRY(kv_layer_check_open(pool, layer_idx));
  if (i < 0 || i >= pool->step_n_seqs)
    return AK_ERR(&pool->err, AK_ERR_RANGE, "step sequence %d outside [0, %d)", i, pool->step_n_seqs);
  *s_p = &pool->seqs[pool->step_seqs[i]];
  return AK_OK;
}

ak_status_t kv_layer_select_row(kv_pool_t *pool, int32_t layer_idx, int32_t i, kv_select_row_t *row_p) {
  kv_seq_t *s = NULL;
  AK_TRY(kv_step_seq(pool, layer_idx, i, &s));
  if (!row_p) return AK_ERR(&pool->err, AK_ERR_INVALID_ARG, "row_p is NULL");
  memset(row_p, 0, sizeof *row_p);
  kv_layer_t *L = &s->layers[layer_idx];
  row_p->selects = pool->p.select_on_device && kv_layer_selects(pool, s, layer_idx, pool->step_n_new[i]);
  row_p->seq = pool->step_seqs[i];
  row_p->n_pages = s->n_pages;
  row_p->n_sink = pool->p.n_sink_pages;
  row_p->n_window = pool->p.n_window_pages;
  row_p->phys = L->phys;
  row_p->backup = L->backup;
  return AK_OK;
}

ak_status_t kv_layer_apply_recalls(kv_pool_t *pool, int32_t layer_idx, int32_t i, int32_t n, const int32_t *page,
                                   const int32_t *victim) {
  kv_seq_t *s = NULL;
  AK_TRY(kv_step_seq(pool, layer_idx, i, &s));
  if (!pool->p.select_on_device)
    return AK_ERR(&pool->err, AK_ERR_INVALID_ARG, "the pool selects itself (select_on_device is 0)");
  if (n < 0 || (n > 0 && (!page || !victim)))
    return AK_ERR(&pool->err, AK_ERR_INVALID_ARG, "n=%d with page=%p, victim=%p", n, (const void *)page,
                  (const void *)victim);
  int64_t n_rec = 0;
  while (n_rec < n && page[n_rec] >= 0) n_rec++;
  if (n_rec == 0) return AK_OK;
  if (!kv_layer_selects(pool, s, layer_idx, pool->step_n_new[i]))
    return AK_ERR(&pool->err, AK_ERR_INVALID_ARG, "layer %d makes no selection for step sequence %d", layer_idx, i);
  kv_layer_t *L = &s->layers[layer_idx];
  int64_t c0 = pool->p.n_sink_pages, c1 = s->n_pages - pool->p.n_window_pages;
  /* check everything first: a pair names each page once, as a page or a victim */
  uint8_t *seen = pool->sel_mark;
  memset(seen, 0, (size_t)s->n_pages);
  ak_status_t st = AK_OK;
  for (int64_t r = 0; r < n_rec && st == AK_OK; r++) {
    int32_t p = page[r], v = victim[r];
    if (p < c0 || p >= c1 || v < c0 || v >= c1)
      st = AK_ERR(&pool->err, AK_ERR_INVALID_ARG, "recall %lld: page %d or victim %d outside the candidates [%lld, %lld)",
                  (long long)r, p, v, (long long)c0, (long long)c1);
    else if (L->phys[p] != KV_PAGE_NONE || L->backup[p] == KV_BACKUP_NONE)
      st = AK_ERR(&pool->err, AK_ERR_INVALID_ARG, "recall %lld: page %d is %s", (long long)r, p,
                  L->phys[p] != KV_PAGE_NONE ? "resident" : "without a backup");
    else if (L->phys[v] == KV_PAGE_NONE)
      st = AK_ERR(&pool->err, AK_ERR_INVALID_ARG, "recall %lld: victim %d is not resident", (long long)r, v);
    else if (seen[p] || seen[v])
      st = AK_ERR(&pool->err, AK_ERR_INVALID_ARG, "recall %lld: page %d or victim %d named twice", (long long)r, p, v);
    else
      seen[p] = seen[v] = 1;
  }
  memset(seen, 0, (size_t)s->n_pages);
  if (st < 0) return st;
  for (int64_t r = 0; r < n_rec; r++) {
    L->phys[page[r]] = L->phys[victim[r]];
    L->phys[victim[r]] = KV_PAGE_NONE;
    KV_COUNT(pool, s, evictions, 1);
    KV_COUNT(pool, s, recalls, 1);
    KV_COUNT(pool, s, bytes_recalled, pool->page_bytes);
  }
  return AK_OK;
}

ak_status_t kv_seq_page_table(const kv_pool_t *pool, kv_seq_id_t seq, int32_t layer_idx, const int32_t **phys_p,
                              int64_t *n_pages_p) {
  ak_err_t *err = (ak_err_t *)&pool->err;
  const kv_seq_t *s = kv_seq_get(pool, seq);
  if (!s) return AK_ERR(err, AK_ERR_NOT_FOUND, "sequence %d is not live", seq);
  if (layer_idx < 0 || layer_idx >= pool->p.n_layers)
    return AK_ERR(err, AK_ERR_RANGE, "layer %d outside [0, %d)", layer_idx, pool->p.n_layers);
  if (!phys_p || !n_pages_p) return AK_ERR(err, AK_ERR_INVALID_ARG, "phys_p or n_pages_p is NULL");
  if (pool->is_token_policy && kv_layer_budgeted(pool, layer_idx))
    return AK_ERR(err, AK_ERR_UNSUPPORTED, "%s keeps tokens, not a page table", kv_policy_name(pool->p.policy));
  *phys_p = s->layers[layer_idx].phys;
  *n_pages_p = s->n_pages;
  return AK_OK;
}
