/* kv_pool: page pool, per-(sequence, layer) page tables and the `full` policy.
 *
 * Pages come from one free stack shared by every layer and sequence, so memory is
 * counted in pages whatever the mix of lengths. A step reserves all the pages its new
 * tokens need up front (kv_step_begin) so a step never fails half-way for lack of
 * pages: the scheduler learns "pool full" before any compute is spent. */
#include <string.h>

#include "ak_alloc.h"
#include "kvpool.h"

typedef struct {
  int live;
  int64_t n_tokens;       /* committed tokens */
  int64_t n_pages;        /* pages per layer currently held (incl. reserved by the step) */
  int32_t *pages;         /* [n_layers][max_pages_per_seq] page ids, KV_PAGE_NONE past n_pages */
} kv_seq_t;

struct kv_pool {
  kv_pool_params_t p;
  ak_err_t err;
  size_t page_bytes;
  size_t elem_bytes;
  int64_t page_elems;         /* elements of one page (K and V) */
  int64_t max_pages_per_seq;
  void *pages;                /* [n_pages][2][n_kv_heads][page_tokens][head_dim] dtype */
  int32_t *free_stack;        /* [n_pages] */
  int64_t n_free;
  kv_seq_t *seqs;             /* [max_seqs] */
  int32_t n_live;

  /* the current step */
  int in_step;
  int32_t step_n_seqs;
  int64_t step_n_tok;
  int32_t *step_seqs;         /* [max_seqs] */
  int32_t *step_n_new;        /* [max_seqs] */
  int64_t *step_pages_before; /* [max_seqs] pages per layer held before the step */
  /* per-token scratch, grown on demand */
  int64_t tok_cap;
  int32_t *tok_pos;           /* [tok_cap] */
  int32_t *tok_seq_idx;       /* [tok_cap] */
  int32_t *tok_kv_len;        /* [tok_cap] */
  int32_t *tok_page;          /* [tok_cap] */
  int32_t *tok_slot;          /* [tok_cap] */
  /* the view of one layer */
  int32_t *view_indptr;       /* [max_seqs + 1] */
  int32_t *view_last_len;     /* [max_seqs] */
  int32_t *view_indices;      /* [max_seqs * max_pages_per_seq] */
};

kv_pool_params_t kv_pool_params_default(void) {
  kv_pool_params_t p;
  memset(&p, 0, sizeof p);
  p.page_tokens = 32;
  p.max_seqs = 256;
  p.max_seq_tokens = 8192;
  p.dtype = KN_F16;
  p.policy = KV_POLICY_FULL;
  return p;
}

int64_t kv_pages_for_tokens(int64_t n_tokens, int32_t page_tokens) {
  if (n_tokens <= 0 || page_tokens <= 0) return 0;
  return (n_tokens + page_tokens - 1) / page_tokens;
}

static size_t kv_dtype_bytes(kn_dtype_t dt) { return dt == KN_F32 ? 4 : 2; }

size_t kv_page_bytes(const kv_pool_params_t *p) {
  return (size_t)2 * (size_t)p->n_kv_heads * (size_t)p->page_tokens * (size_t)p->head_dim *
         kv_dtype_bytes(p->dtype);
}

static ak_status_t kv_params_check(const kv_pool_params_t *p, ak_err_t *err) {
  if (!p) return AK_ERR(err, AK_ERR_INVALID_ARG, "params is NULL");
  if (p->n_layers < 1 || p->n_layers > 4096)
    return AK_ERR(err, AK_ERR_INVALID_ARG, "n_layers=%d outside [1, 4096]", p->n_layers);
  if (p->n_kv_heads < 1 || p->n_kv_heads > 1024)
    return AK_ERR(err, AK_ERR_INVALID_ARG, "n_kv_heads=%d outside [1, 1024]", p->n_kv_heads);
  if (p->head_dim < 1 || p->head_dim > 1024)
    return AK_ERR(err, AK_ERR_INVALID_ARG, "head_dim=%d outside [1, 1024]", p->head_dim);
  if (p->page_tokens < 1 || p->page_tokens > 256)
    return AK_ERR(err, AK_ERR_INVALID_ARG, "page_tokens=%d outside [1, 256]", p->page_tokens);
  if (p->n_pages < 1 || p->n_pages > INT32_MAX)
    return AK_ERR(err, AK_ERR_INVALID_ARG, "n_pages=%lld outside [1, 2^31)", (long long)p->n_pages);
  if (p->max_seqs < 1 || p->max_seqs > 65536)
    return AK_ERR(err, AK_ERR_INVALID_ARG, "max_seqs=%d outside [1, 65536]", p->max_seqs);
  if (p->max_seq_tokens < 1)
    return AK_ERR(err, AK_ERR_INVALID_ARG, "max_seq_tokens=%d must be positive", p->max_seq_tokens);
  if (p->dtype != KN_F32 && p->dtype != KN_F16)
    return AK_ERR(err, AK_ERR_INVALID_ARG, "dtype=%d is neither KN_F32 nor KN_F16", (int)p->dtype);
  if (p->policy != KV_POLICY_FULL)
    return AK_ERR(err, AK_ERR_UNSUPPORTED, "policy=%d is not implemented", (int)p->policy);
  return AK_OK;
}

static size_t kv_seq_table_bytes(const kv_pool_t *pool) {
  return sizeof(int32_t) * (size_t)pool->p.n_layers * (size_t)pool->max_pages_per_seq;
}

static void kv_tok_scratch_free(kv_pool_t *pool) {
  size_t b = sizeof(int32_t) * (size_t)pool->tok_cap;
  ak_host_free(pool->tok_pos, b);
  ak_host_free(pool->tok_seq_idx, b);
  ak_host_free(pool->tok_kv_len, b);
  ak_host_free(pool->tok_page, b);
  ak_host_free(pool->tok_slot, b);
  pool->tok_pos = pool->tok_seq_idx = pool->tok_kv_len = pool->tok_page = pool->tok_slot = NULL;
  pool->tok_cap = 0;
}

static ak_status_t kv_tok_scratch_reserve(kv_pool_t *pool, int64_t n_tok) {
  if (n_tok <= pool->tok_cap) return AK_OK;
  int64_t cap = pool->tok_cap ? pool->tok_cap : 256;
  while (cap < n_tok) cap *= 2;
  kv_tok_scratch_free(pool);
  size_t b = sizeof(int32_t) * (size_t)cap;
  pool->tok_pos = ak_host_alloc(b, 0);
  pool->tok_seq_idx = ak_host_alloc(b, 0);
  pool->tok_kv_len = ak_host_alloc(b, 0);
  pool->tok_page = ak_host_alloc(b, 0);
  pool->tok_slot = ak_host_alloc(b, 0);
  pool->tok_cap = cap;
  if (!pool->tok_pos || !pool->tok_seq_idx || !pool->tok_kv_len || !pool->tok_page || !pool->tok_slot) {
    kv_tok_scratch_free(pool);
    return AK_ERR(&pool->err, AK_ERR_NO_MEMORY, "step scratch for %lld tokens", (long long)n_tok);
  }
  return AK_OK;
}

ak_status_t kv_pool_create(const kv_pool_params_t *p, ak_err_t *err, kv_pool_t **pool_p) {
  AK_TRY(kv_params_check(p, err));
  kv_pool_t *pool = ak_host_alloc(sizeof *pool, 1);
  if (!pool) return AK_ERR(err, AK_ERR_NO_MEMORY, "pool struct");
  pool->p = *p;
  pool->elem_bytes = kv_dtype_bytes(p->dtype);
  pool->page_bytes = kv_page_bytes(p);
  pool->page_elems = (int64_t)2 * p->n_kv_heads * p->page_tokens * p->head_dim;
  pool->max_pages_per_seq = kv_pages_for_tokens(p->max_seq_tokens, p->page_tokens);
  size_t ms = (size_t)p->max_seqs;

  if ((size_t)p->n_pages > SIZE_MAX / pool->page_bytes) goto err_too_big;
  pool->pages = ak_host_alloc(pool->page_bytes * (size_t)p->n_pages, 0);
  if (!pool->pages) goto err_free_pool;
  pool->free_stack = ak_host_alloc(sizeof(int32_t) * (size_t)p->n_pages, 0);
  if (!pool->free_stack) goto err_free_pages;
  /* Pop order 0, 1, 2, ...: a fresh pool hands out pages in address order. */
  for (int64_t i = 0; i < p->n_pages; i++) pool->free_stack[i] = (int32_t)(p->n_pages - 1 - i);
  pool->n_free = p->n_pages;
  pool->seqs = ak_host_alloc(sizeof(kv_seq_t) * ms, 1);
  if (!pool->seqs) goto err_free_stack;
  pool->step_seqs = ak_host_alloc(sizeof(int32_t) * ms, 0);
  pool->step_n_new = ak_host_alloc(sizeof(int32_t) * ms, 0);
  pool->step_pages_before = ak_host_alloc(sizeof(int64_t) * ms, 0);
  pool->view_indptr = ak_host_alloc(sizeof(int32_t) * (ms + 1), 0);
  pool->view_last_len = ak_host_alloc(sizeof(int32_t) * ms, 0);
  pool->view_indices = ak_host_alloc(sizeof(int32_t) * ms * (size_t)pool->max_pages_per_seq, 0);
  if (!pool->step_seqs || !pool->step_n_new || !pool->step_pages_before || !pool->view_indptr ||
      !pool->view_last_len || !pool->view_indices)
    goto err_free_step;
  *pool_p = pool;
  return AK_OK;

err_free_step:
  ak_host_free(pool->view_indices, sizeof(int32_t) * ms * (size_t)pool->max_pages_per_seq);
  ak_host_free(pool->view_last_len, sizeof(int32_t) * ms);
  ak_host_free(pool->view_indptr, sizeof(int32_t) * (ms + 1));
  ak_host_free(pool->step_pages_before, sizeof(int64_t) * ms);
  ak_host_free(pool->step_n_new, sizeof(int32_t) * ms);
  ak_host_free(pool->step_seqs, sizeof(int32_t) * ms);
  ak_host_free(pool->seqs, sizeof(kv_seq_t) * ms);
err_free_stack:
  ak_host_free(pool->free_stack, sizeof(int32_t) * (size_t)p->n_pages);
err_free_pages:
  ak_host_free(pool->pages, pool->page_bytes * (size_t)p->n_pages);
err_free_pool:
  ak_host_free(pool, sizeof *pool);
  return AK_ERR(err, AK_ERR_NO_MEMORY, "%lld pages of %zu bytes", (long long)p->n_pages,
                kv_page_bytes(p));
err_too_big:
  ak_host_free(pool, sizeof *pool);
  return AK_ERR(err, AK_ERR_INVALID_ARG, "n_pages=%lld of %zu bytes overflows", (long long)p->n_pages,
                kv_page_bytes(p));
}

void kv_pool_destroy(kv_pool_t *pool) {
  if (!pool) return;
  size_t ms = (size_t)pool->p.max_seqs;
  for (size_t i = 0; i < ms; i++)
    if (pool->seqs[i].pages) ak_host_free(pool->seqs[i].pages, kv_seq_table_bytes(pool));
  kv_tok_scratch_free(pool);
  ak_host_free(pool->view_indices, sizeof(int32_t) * ms * (size_t)pool->max_pages_per_seq);
  ak_host_free(pool->view_last_len, sizeof(int32_t) * ms);
  ak_host_free(pool->view_indptr, sizeof(int32_t) * (ms + 1));
  ak_host_free(pool->step_pages_before, sizeof(int64_t) * ms);
  ak_host_free(pool->step_n_new, sizeof(int32_t) * ms);
  ak_host_free(pool->step_seqs, sizeof(int32_t) * ms);
  ak_host_free(pool->seqs, sizeof(kv_seq_t) * ms);
  ak_host_free(pool->free_stack, sizeof(int32_t) * (size_t)pool->p.n_pages);
  ak_host_free(pool->pages, pool->page_bytes * (size_t)pool->p.n_pages);
  ak_host_free(pool, sizeof *pool);
}

const char *kv_pool_errmsg(const kv_pool_t *pool) { return pool ? pool->err.msg : "pool is NULL"; }
const kv_pool_params_t *kv_pool_params(const kv_pool_t *pool) { return &pool->p; }

/* --- sequences --- */

static kv_seq_t *kv_seq_get(const kv_pool_t *pool, kv_seq_id_t seq) {
  if (seq < 0 || seq >= pool->p.max_seqs || !pool->seqs[seq].live) return NULL;
  return &pool->seqs[seq];
}

ak_status_t kv_seq_create(kv_pool_t *pool, kv_seq_id_t *seq_p) {
  for (int32_t i = 0; i < pool->p.max_seqs; i++) {
    kv_seq_t *s = &pool->seqs[i];
    if (s->live) continue;
    if (!s->pages) {
      s->pages = ak_host_alloc(kv_seq_table_bytes(pool), 0);
      if (!s->pages) return AK_ERR(&pool->err, AK_ERR_NO_MEMORY, "page table of sequence %d", i);
    }
    s->live = 1;
    s->n_tokens = 0;
    s->n_pages = 0;
    pool->n_live++;
    *seq_p = i;
    return AK_OK;
  }
  return AK_ERR(&pool->err, AK_ERR_POOL_FULL, "all %d sequence slots are live", pool->p.max_seqs);
}

static int32_t *kv_seq_layer_pages(const kv_pool_t *pool, const kv_seq_t *s, int32_t layer) {
  return s->pages + (int64_t)layer * pool->max_pages_per_seq;
}

/* Returns the sequence's pages past `keep_pages` (per layer) to the free stack. */
static void kv_seq_shrink(kv_pool_t *pool, kv_seq_t *s, int64_t keep_pages) {
  for (int32_t l = 0; l < pool->p.n_layers; l++) {
    int32_t *pl = kv_seq_layer_pages(pool, s, l);
    for (int64_t j = keep_pages; j < s->n_pages; j++) {
      pool->free_stack[pool->n_free++] = pl[j];
      pl[j] = KV_PAGE_NONE;
    }
  }
  s->n_pages = keep_pages;
}

static int kv_seq_in_step(const kv_pool_t *pool, kv_seq_id_t seq) {
  if (!pool->in_step) return 0;
  for (int32_t i = 0; i < pool->step_n_seqs; i++)
    if (pool->step_seqs[i] == seq) return 1;
  return 0;
}

ak_status_t kv_seq_release(kv_pool_t *pool, kv_seq_id_t seq) {
  kv_seq_t *s = kv_seq_get(pool, seq);
  if (!s) return AK_ERR(&pool->err, AK_ERR_NOT_FOUND, "sequence %d is not live", seq);
  if (kv_seq_in_step(pool, seq))
    return AK_ERR(&pool->err, AK_ERR_INVALID_ARG, "sequence %d is in the current step: end or abort it first",
                  seq);
  kv_seq_shrink(pool, s, 0);
  s->live = 0;
  s->n_tokens = 0;
  pool->n_live--;
  return AK_OK;
}

int64_t kv_seq_n_tokens(const kv_pool_t *pool, kv_seq_id_t seq) {
  const kv_seq_t *s = kv_seq_get(pool, seq);
  return s ? s->n_tokens : -1;
}

/* --- steps --- */

ak_status_t kv_step_begin(kv_pool_t *pool, const kv_batch_t *batch) {
  if (pool->in_step) return AK_ERR(&pool->err, AK_ERR_INVALID_ARG, "a step is already open");
  if (!batch || batch->n_seqs < 1 || batch->n_seqs > pool->p.max_seqs || !batch->seqs ||
      !batch->n_new_tokens)
    return AK_ERR(&pool->err, AK_ERR_INVALID_ARG, "batch must hold 1..%d sequences", pool->p.max_seqs);
  int64_t n_tok = 0, need_pages = 0;
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
    need_pages += kv_pages_for_tokens(s->n_tokens + n_new, pool->p.page_tokens) - s->n_pages;
  }
  need_pages *= pool->p.n_layers;
  if (need_pages > pool->n_free)
    return AK_ERR(&pool->err, AK_ERR_POOL_FULL, "step needs %lld pages, %lld free of %lld", (long long)need_pages,
                  (long long)pool->n_free, (long long)pool->p.n_pages);
  AK_TRY(kv_tok_scratch_reserve(pool, n_tok));

  /* Nothing can fail from here on. */
  int64_t t = 0;
  for (int32_t i = 0; i < batch->n_seqs; i++) {
    kv_seq_t *s = &pool->seqs[batch->seqs[i]];
    pool->step_seqs[i] = batch->seqs[i];
    pool->step_n_new[i] = batch->n_new_tokens[i];
    pool->step_pages_before[i] = s->n_pages;
    int64_t want = kv_pages_for_tokens(s->n_tokens + batch->n_new_tokens[i], pool->p.page_tokens);
    for (int32_t l = 0; l < pool->p.n_layers; l++) {
      int32_t *pl = kv_seq_layer_pages(pool, s, l);
      for (int64_t j = s->n_pages; j < want; j++) pl[j] = pool->free_stack[--pool->n_free];
    }
    s->n_pages = want;
    for (int32_t j = 0; j < batch->n_new_tokens[i]; j++, t++) {
      int64_t pos = s->n_tokens + j;
      pool->tok_pos[t] = (int32_t)pos;
      pool->tok_seq_idx[t] = i;
      pool->tok_kv_len[t] = (int32_t)(pos + 1); /* causal: sees itself and everything before */
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

ak_status_t kv_layer_append(kv_pool_t *pool, kn_cpu_t *cpu, int32_t layer_idx, const float *k,
                            const float *v) {
  if (!pool->in_step) return AK_ERR(&pool->err, AK_ERR_INVALID_ARG, "no step is open");
  if (layer_idx < 0 || layer_idx >= pool->p.n_layers)
    return AK_ERR(&pool->err, AK_ERR_RANGE, "layer %d outside [0, %d)", layer_idx, pool->p.n_layers);
  int64_t t = 0;
  for (int32_t i = 0; i < pool->step_n_seqs; i++) {
    const kv_seq_t *s = &pool->seqs[pool->step_seqs[i]];
    const int32_t *pl = kv_seq_layer_pages(pool, s, layer_idx);
    for (int32_t j = 0; j < pool->step_n_new[i]; j++, t++) {
      int64_t pos = s->n_tokens + j;
      pool->tok_page[t] = pl[pos / pool->p.page_tokens];
      pool->tok_slot[t] = (int32_t)(pos % pool->p.page_tokens);
    }
  }
  kn_paged_kv_t kv = kv_pool_view_base(pool);
  ak_status_t st = kn_kv_store(cpu, &kv, pool->pages, pool->p.n_kv_heads, pool->p.head_dim, k,
                               pool->tok_page, pool->tok_slot, pool->step_n_tok, &pool->err);
  if (st < 0) return st;
  /* V lives half a page after K: the same store with the base shifted. */
  void *v_base = (char *)pool->pages + (size_t)(pool->page_elems / 2) * pool->elem_bytes;
  return kn_kv_store(cpu, &kv, v_base, pool->p.n_kv_heads, pool->p.head_dim, v, pool->tok_page,
                     pool->tok_slot, pool->step_n_tok, &pool->err);
}

ak_status_t kv_layer_view(kv_pool_t *pool, int32_t layer_idx, const float *q, int32_t n_heads,
                          kn_attn_args_t *args) {
  (void)q;
  (void)n_heads;
  if (!pool->in_step) return AK_ERR(&pool->err, AK_ERR_INVALID_ARG, "no step is open");
  if (layer_idx < 0 || layer_idx >= pool->p.n_layers)
    return AK_ERR(&pool->err, AK_ERR_RANGE, "layer %d outside [0, %d)", layer_idx, pool->p.n_layers);
  kn_paged_kv_t kv = kv_pool_view_base(pool);
  int32_t n = 0;
  pool->view_indptr[0] = 0;
  for (int32_t i = 0; i < pool->step_n_seqs; i++) {
    const kv_seq_t *s = &pool->seqs[pool->step_seqs[i]];
    const int32_t *pl = kv_seq_layer_pages(pool, s, layer_idx);
    memcpy(pool->view_indices + n, pl, sizeof(int32_t) * (size_t)s->n_pages);
    n += (int32_t)s->n_pages;
    pool->view_indptr[i + 1] = n;
    int64_t total = s->n_tokens + pool->step_n_new[i];
    pool->view_last_len[i] = (int32_t)(total - (s->n_pages - 1) * pool->p.page_tokens);
  }
  kv.n_seqs = pool->step_n_seqs;
  kv.indptr = pool->view_indptr;
  kv.indices = pool->view_indices;
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
  for (int32_t i = 0; i < pool->step_n_seqs; i++) pool->seqs[pool->step_seqs[i]].n_tokens += pool->step_n_new[i];
  pool->in_step = 0;
  return AK_OK;
}

void kv_step_abort(kv_pool_t *pool) {
  if (!pool->in_step) return;
  for (int32_t i = 0; i < pool->step_n_seqs; i++)
    kv_seq_shrink(pool, &pool->seqs[pool->step_seqs[i]], pool->step_pages_before[i]);
  pool->in_step = 0;
}

/* --- accounting --- */

void kv_pool_get_stats(const kv_pool_t *pool, kv_pool_stats_t *stats_p) {
  kv_pool_stats_t st;
  memset(&st, 0, sizeof st);
  st.n_seqs = pool->n_live;
  st.n_pages_total = pool->p.n_pages;
  st.n_pages_used = pool->p.n_pages - pool->n_free;
  st.page_bytes = pool->page_bytes;
  st.pool_bytes = pool->page_bytes * (size_t)pool->p.n_pages;
  size_t ms = (size_t)pool->p.max_seqs;
  st.table_bytes = sizeof(int32_t) * (size_t)pool->p.n_pages + sizeof(kv_seq_t) * ms +
                   sizeof(int32_t) * (size_t)pool->tok_cap * 5 +
                   sizeof(int32_t) * ms * (size_t)pool->max_pages_per_seq;
  for (size_t i = 0; i < ms; i++)
    if (pool->seqs[i].pages) st.table_bytes += kv_seq_table_bytes(pool);
  *stats_p = st;
}

ak_status_t kv_pool_check(kv_pool_t *pool) {
  ak_err_t *err = &pool->err; /* the check records why it failed */
  int64_t n_pages = pool->p.n_pages;
  uint8_t *seen = ak_host_alloc((size_t)n_pages, 1);
  if (!seen) return AK_ERR(err, AK_ERR_NO_MEMORY, "check bitmap");
  ak_status_t st = AK_OK;
  int64_t used = 0;
  int32_t live = 0;
  for (int32_t i = 0; i < pool->p.max_seqs && st == AK_OK; i++) {
    const kv_seq_t *s = &pool->seqs[i];
    if (!s->live) {
      if (s->n_pages != 0) st = AK_ERR(err, AK_ERR_INTERNAL, "dead sequence %d holds %lld pages", i, (long long)s->n_pages);
      continue;
    }
    live++;
    if (!pool->in_step && s->n_pages != kv_pages_for_tokens(s->n_tokens, pool->p.page_tokens))
      st = AK_ERR(err, AK_ERR_INTERNAL, "sequence %d: %lld pages for %lld tokens", i, (long long)s->n_pages,
                  (long long)s->n_tokens);
    for (int32_t l = 0; l < pool->p.n_layers && st == AK_OK; l++) {
      const int32_t *pl = kv_seq_layer_pages(pool, s, l);
      for (int64_t j = 0; j < s->n_pages; j++) {
        int32_t pg = pl[j];
        if (pg < 0 || pg >= n_pages || seen[pg]) {
          st = AK_ERR(err, AK_ERR_INTERNAL, "sequence %d layer %d slot %lld: page %d invalid or shared", i, l,
                      (long long)j, pg);
          break;
        }
        seen[pg] = 1;
        used++;
      }
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
  ak_host_free(seen, (size_t)n_pages);
  return st;
}
