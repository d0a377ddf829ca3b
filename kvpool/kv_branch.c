/* kv_branch: reading a sequence's K/V and queries back out of a pool, and branching a
 * prefilled sequence into another pool (another policy, budget or page size) without
 * recomputing its prefill — what bench/passkey does for every policy of a case, and
 * what the estimator benchmark reads its traces with. */
#include <string.h>

#include "ak_alloc.h"
#include "kv_pool_internal.h"

static kv_seq_t *kv_live_seq(const kv_pool_t *pool, kv_seq_id_t seq) {
  if (seq < 0 || seq >= pool->p.max_seqs || !pool->seqs[seq].live) return NULL;
  return &pool->seqs[seq];
}

static ak_status_t kv_token_read(kv_pool_t *pool, const kv_seq_t *s, int32_t layer, int64_t tok0, int64_t n_tok,
                                 float *k, float *v);

ak_status_t kv_seq_read_kv(kv_pool_t *pool, kv_seq_id_t seq, int32_t layer_idx, int64_t tok0, int64_t n_tok,
                           float *k, float *v) {
  kv_seq_t *s = kv_live_seq(pool, seq);
  if (!s) return AK_ERR(&pool->err, AK_ERR_NOT_FOUND, "sequence %d is not live", seq);
  if (layer_idx < 0 || layer_idx >= pool->p.n_layers)
    return AK_ERR(&pool->err, AK_ERR_RANGE, "layer %d outside [0, %d)", layer_idx, pool->p.n_layers);
  if (tok0 < 0 || n_tok < 0 || tok0 + n_tok > s->n_tokens)
    return AK_ERR(&pool->err, AK_ERR_RANGE, "tokens [%lld, %lld) outside the sequence's %lld", (long long)tok0,
                  (long long)(tok0 + n_tok), (long long)s->n_tokens);
  if (pool->in_step) return AK_ERR(&pool->err, AK_ERR_INVALID_ARG, "a step is open");
  const kv_layer_t *L = &s->layers[layer_idx];
  if (kv_layer_budgeted(pool, layer_idx) && pool->is_token_policy)
    return kv_token_read(pool, s, layer_idx, tok0, n_tok, k, v);
  int32_t pt = pool->p.page_tokens;
  int64_t row = (int64_t)pool->p.n_kv_heads * pool->p.head_dim;
  int64_t t = tok0, end = tok0 + n_tok;
  while (t < end) {
    int64_t j = t / pt;
    int32_t slot = (int32_t)(t % pt);
    int32_t n = (int32_t)((end - t) < (pt - slot) ? (end - t) : (pt - slot));
    const void *page;
    if (L->phys[j] != KV_PAGE_NONE) {
      AK_TRY(kv_page_fetch(pool, L->phys[j], &page));
    } else if (L->backup && L->backup[j] != KV_BACKUP_NONE) {
      ak_status_t st = kv_tier_get(pool->tier, L->backup[j], pool->page_tmp, pool->page_bytes);
      if (st < 0) return AK_ERR(&pool->err, st, "page %lld: %s", (long long)j, kv_tier_errmsg(pool->tier));
      page = pool->page_tmp;
    } else {
      return AK_ERR(&pool->err, AK_ERR_NOT_FOUND, "layer %d token %lld was dropped by policy %s", layer_idx,
                    (long long)t, kv_policy_name(pool->p.policy));
    }
    if (k) kv_buf_read_f32(pool, page, 0, slot, n, k + (t - tok0) * row);
    if (v) kv_buf_read_f32(pool, page, 1, slot, n, v + (t - tok0) * row);
    t += n;
  }
  return AK_OK;
}

/* Token policies keep tokens out of position order: each token is looked up by
 * position among the resident ones (a scan: this is a debugging and benchmark path). */
static ak_status_t kv_token_read(kv_pool_t *pool, const kv_seq_t *s, int32_t layer, int64_t tok0, int64_t n_tok,
                                 float *k, float *v) {
  const kv_layer_t *L = &s->layers[layer];
  int32_t pt = pool->p.page_tokens;
  int64_t row = (int64_t)pool->p.n_kv_heads * pool->p.head_dim;
  for (int64_t t = tok0; t < tok0 + n_tok; t++) {
    int64_t i = 0;
    while (i < L->n_res_tok && L->tok_pos[i] != t) i++;
    if (i == L->n_res_tok)
      return AK_ERR(&pool->err, AK_ERR_NOT_FOUND, "layer %d token %lld was dropped by policy %s", layer,
                    (long long)t, kv_policy_name(pool->p.policy));
    int32_t pg = L->phys[i / pt], slot = (int32_t)(i % pt);
    if (k) kv_page_read_f32(pool, pg, 0, slot, 1, k + (t - tok0) * row);
    if (v) kv_page_read_f32(pool, pg, 1, slot, 1, v + (t - tok0) * row);
  }
  return AK_OK;
}

ak_status_t kv_seq_last_query(const kv_pool_t *pool, kv_seq_id_t seq, int32_t layer_idx, float *q) {
  ak_err_t *err = (ak_err_t *)&pool->err; /* the message buffer is not pool state */
  const kv_seq_t *s = kv_live_seq(pool, seq);
  if (!s) return AK_ERR(err, AK_ERR_NOT_FOUND, "sequence %d is not live", seq);
  if (layer_idx < 0 || layer_idx >= pool->p.n_layers)
    return AK_ERR(err, AK_ERR_RANGE, "layer %d outside [0, %d)", layer_idx, pool->p.n_layers);
  if (!s->has_last_q) return AK_ERR(err, AK_ERR_NOT_FOUND, "sequence %d has taken no step yet", seq);
  if (pool->p.select_on_device)
    return AK_ERR(err, AK_ERR_NOT_FOUND, "sequence %d: the queries stay with the caller (select_on_device)", seq);
  if (!q) return AK_ERR(err, AK_ERR_INVALID_ARG, "q is NULL");
  size_t row = (size_t)pool->p.n_heads * (size_t)pool->p.head_dim;
  memcpy(q, s->last_q + (size_t)layer_idx * row, sizeof(float) * row);
  return AK_OK;
}

ak_status_t kv_seq_branch(kv_pool_t *dst, kv_pool_t *src, kn_cpu_t *cpu, kv_seq_id_t src_seq,
                          kv_seq_id_t *dst_seq_p) {
  if (!dst || !src || !cpu || !dst_seq_p) return AK_ERR_INVALID_ARG;
  ak_err_t *err = &dst->err;
  const kv_pool_params_t *a = &dst->p, *b = &src->p;
  if (a->n_layers != b->n_layers || a->n_kv_heads != b->n_kv_heads || a->n_heads != b->n_heads ||
      a->head_dim != b->head_dim)
    return AK_ERR(err, AK_ERR_INVALID_ARG,
                  "pool shapes differ: layers %d/%d, kv heads %d/%d, heads %d/%d, head_dim %d/%d", a->n_layers,
                  b->n_layers, a->n_kv_heads, b->n_kv_heads, a->n_heads, b->n_heads, a->head_dim, b->head_dim);
  if (a->select_on_device || b->select_on_device)
    return AK_ERR(err, AK_ERR_UNSUPPORTED, "branching needs the last queries on the host: not with select_on_device");
  kv_seq_t *s = kv_live_seq(src, src_seq);
  if (!s) return AK_ERR(err, AK_ERR_NOT_FOUND, "source sequence %d is not live", src_seq);
  if (s->n_tokens < 1) return AK_ERR(err, AK_ERR_INVALID_ARG, "source sequence %d is empty", src_seq);
  if (src->in_step || dst->in_step) return AK_ERR(err, AK_ERR_INVALID_ARG, "a step is open on a pool");
  if (dst->is_token_policy && !src->has_tok_attn)
    return AK_ERR(err, AK_ERR_INVALID_ARG, "policy %s needs the prompt attention: create the source with "
                  "track_token_attn", kv_policy_name(a->policy));
  if (s->n_tokens > a->max_seq_tokens)
    return AK_ERR(err, AK_ERR_RANGE, "%lld tokens exceed the destination's max_seq_tokens=%d",
                  (long long)s->n_tokens, a->max_seq_tokens);
  int64_t n_tok = s->n_tokens;
  size_t row = (size_t)a->n_kv_heads * (size_t)a->head_dim;
  float *k = ak_host_alloc(sizeof(float) * row * (size_t)n_tok, 0);
  float *v = ak_host_alloc(sizeof(float) * row * (size_t)n_tok, 0);
  if (!k || !v) {
    ak_host_free(k, sizeof(float) * row * (size_t)n_tok);
    ak_host_free(v, sizeof(float) * row * (size_t)n_tok);
    return AK_ERR(err, AK_ERR_NO_MEMORY, "%lld tokens of K and V", (long long)n_tok);
  }
  kv_seq_id_t d_id = -1;
  ak_status_t st = kv_seq_create(dst, &d_id);
  int32_t n_new = (int32_t)n_tok;
  kv_batch_t batch = {1, &d_id, &n_new};
  if (st == AK_OK) st = kv_step_begin(dst, &batch);
  if (st < 0) goto out;
  kv_seq_t *d = &dst->seqs[d_id];
  for (int32_t l = 0; l < a->n_layers && st == AK_OK; l++) {
    st = kv_seq_read_kv(src, src_seq, l, 0, n_tok, k, v);
    if (st < 0) {
      AK_ERR(err, st, "source layer %d: %s", l, kv_pool_errmsg(src));
      break;
    }
    st = kv_layer_append(dst, cpu, l, k, v);
    if (st < 0) break;
    /* what the destination's own prefill view would have recorded */
    kv_layer_t *Ld = &d->layers[l];
    const kv_layer_t *Ls = &s->layers[l];
    if (dst->has_tok_attn && Ld->tok_acc && Ls->tok_acc) {
      memcpy(Ld->tok_acc, Ls->tok_acc, sizeof(float) * (size_t)n_tok);
      memcpy(Ld->tok_last, Ls->tok_last, sizeof(float) * (size_t)n_tok);
    }
  }
  if (st < 0) {
    kv_step_abort(dst);
    goto out;
  }
  memcpy(d->last_q, s->last_q, sizeof(float) * (size_t)a->n_layers * (size_t)a->n_heads * (size_t)a->head_dim);
  st = kv_step_end(dst);
  if (st == AK_OK) st = kv_seq_compact(dst, d_id);
out:
  if (st < 0 && d_id >= 0 && dst->seqs[d_id].live) {
    ak_err_t keep = dst->err;
    kv_seq_release(dst, d_id);
    dst->err = keep;
  }
  ak_host_free(k, sizeof(float) * row * (size_t)n_tok);
  ak_host_free(v, sizeof(float) * row * (size_t)n_tok);
  if (st == AK_OK) *dst_seq_p = d_id;
  return st;
}
