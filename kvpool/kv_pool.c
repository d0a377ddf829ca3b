/* kv_pool: the page pool and its sequences (the steps are in kv_step.c).
 *
 * Pages come from one free stack shared by every layer and sequence, so memory is
 * counted in pages whatever the mix of lengths and policies. A step checks everything
 * it will need up front (device pages after the evictions it causes, backup room for
 * the pages it will fill) so it never fails half-way for lack of room: the scheduler
 * learns "pool full" before any compute is spent. What to evict, recall or attend is
 * decided in kv_select.c (page policies) and kv_token.c (token policies). */
#include <math.h>
#include <string.h>
#include <time.h>

#include "ak_alloc.h"
#include "ak_quant.h"
#include "kv_pool_internal.h"

static const char *const kv_policy_names[KV_POLICY_N] = {
    [KV_POLICY_FULL] = "full",   [KV_POLICY_ARKVALE] = "arkvale", [KV_POLICY_STREAMING] = "streaming",
    [KV_POLICY_H2O] = "h2o",     [KV_POLICY_TOVA] = "tova",       [KV_POLICY_QUEST] = "quest",
};

/* The paper's cap on the selected tokens (Sec. 5, "C = 1280"). */
#define KV_TOPK_CAP_TOKENS 1280

kv_pool_params_t kv_pool_params_default(void) {
  kv_pool_params_t p;
  memset(&p, 0, sizeof p);
  p.page_tokens = 32;
  p.max_seqs = 256;
  p.max_seq_tokens = 8192;
  p.dtype = KN_F16;
  p.policy = KV_POLICY_FULL;
  p.n_full_layers = 2;
  p.n_sink_pages = 1;
  p.n_window_pages = 2;
  p.digest = KV_DIGEST_DEFAULT;
  p.score_agg = KV_SCORE_MEAN;
  p.score_groups = 1;
  p.attend = KV_ATTEND_RESIDENT;
#ifdef KV_DEBUG_CHECKS
  p.check_every_step = 1;
#else
  p.check_every_step = 0;
#endif
  return p;
}

const char *kv_policy_name(kv_policy_t policy) {
  return (int)policy >= 0 && (int)policy < KV_POLICY_N ? kv_policy_names[policy] : "unknown";
}

ak_status_t kv_policy_parse(const char *name, ak_err_t *err, kv_policy_t *policy_p) {
  if (!name) return AK_ERR(err, AK_ERR_INVALID_ARG, "policy name is NULL");
  for (int i = 0; i < KV_POLICY_N; i++)
    if (strcmp(name, kv_policy_names[i]) == 0) {
      if (policy_p) *policy_p = (kv_policy_t)i;
      return AK_OK;
    }
  return AK_ERR(err, AK_ERR_INVALID_ARG,
                "unknown KV policy \"%s\" (expected full, arkvale, streaming, h2o, tova or quest)", name);
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

static int kv_policy_is_token(kv_policy_t p) { return p == KV_POLICY_H2O || p == KV_POLICY_TOVA; }

int64_t kv_seq_pages_needed(const kv_pool_params_t *p, int64_t n_tokens) {
  int64_t per_layer = kv_pages_for_tokens(n_tokens, p->page_tokens);
  if (p->policy == KV_POLICY_FULL || p->policy == KV_POLICY_QUEST || p->budget_tokens <= 0)
    return per_layer * p->n_layers;
  int64_t n_full = p->n_full_layers < p->n_layers ? p->n_full_layers : p->n_layers;
  int64_t budget = kv_policy_is_token(p->policy) ? kv_pages_for_tokens(p->budget_tokens, p->page_tokens)
                                                  : p->budget_tokens / p->page_tokens;
  int64_t budgeted = per_layer < budget ? per_layer : budget;
  return per_layer * n_full + budgeted * (p->n_layers - n_full);
}

static ak_status_t kv_params_check(const kv_pool_params_t *p, ak_err_t *err) {
  if (!p) return AK_ERR(err, AK_ERR_INVALID_ARG, "params is NULL");
  if (p->n_layers < 1 || p->n_layers > 4096)
    return AK_ERR(err, AK_ERR_INVALID_ARG, "n_layers=%d outside [1, 4096]", p->n_layers);
  if (p->n_kv_heads < 1 || p->n_kv_heads > 1024)
    return AK_ERR(err, AK_ERR_INVALID_ARG, "n_kv_heads=%d outside [1, 1024]", p->n_kv_heads);
  if (p->n_heads != 0 && (p->n_heads < p->n_kv_heads || p->n_heads % p->n_kv_heads != 0 || p->n_heads > 4096))
    return AK_ERR(err, AK_ERR_INVALID_ARG, "n_heads=%d is not a multiple of n_kv_heads=%d (or 0)", p->n_heads,
                  p->n_kv_heads);
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
  if ((int)p->policy < 0 || (int)p->policy >= KV_POLICY_N)
    return AK_ERR(err, AK_ERR_INVALID_ARG, "policy=%d is not a kv_policy_t", (int)p->policy);
  if (p->page_memory && kv_policy_is_token(p->policy) && p->budget_tokens > 0)
    return AK_ERR(err, AK_ERR_UNSUPPORTED, "policy %s moves tokens inside pages: not with page_memory",
                  kv_policy_name(p->policy));
  if (p->page_memory && p->policy != KV_POLICY_FULL && p->budget_tokens > 0 &&
      (!p->page_ops || !p->page_ops->read_page || !p->page_ops->write_page ||
       !p->page_ops->put_digest != !p->page_ops->score_pages))
    return AK_ERR(err, AK_ERR_INVALID_ARG, "policy %s over page_memory needs page_ops (read_page and write_page; put_digest and "
                  "score_pages together or neither)",
                  kv_policy_name(p->policy));
  if (p->page_memory && p->track_token_attn)
    return AK_ERR(err, AK_ERR_UNSUPPORTED, "track_token_attn reads page bytes on the host: not with page_memory");
  if (p->budget_tokens < 0)
    return AK_ERR(err, AK_ERR_INVALID_ARG, "budget_tokens=%d must be >= 0", p->budget_tokens);
  if (p->n_full_layers < 0)
    return AK_ERR(err, AK_ERR_INVALID_ARG, "n_full_layers=%d must be >= 0", p->n_full_layers);
  if (p->select_on_device && (p->policy != KV_POLICY_ARKVALE || p->budget_tokens == 0))
    return AK_ERR(err, AK_ERR_INVALID_ARG, "select_on_device is for arkvale with a budget (policy %s, budget %d)",
                  kv_policy_name(p->policy), p->budget_tokens);
  if (p->policy == KV_POLICY_FULL || p->budget_tokens == 0) return AK_OK;
  if (kv_policy_is_token(p->policy)) {
    if (p->budget_tokens < 2)
      return AK_ERR(err, AK_ERR_INVALID_ARG, "%s: budget_tokens=%d must be >= 2", kv_policy_name(p->policy),
                    p->budget_tokens);
    return AK_OK;
  }
  if (p->budget_tokens % p->page_tokens != 0)
    return AK_ERR(err, AK_ERR_INVALID_ARG, "%s: budget_tokens=%d is not a multiple of page_tokens=%d",
                  kv_policy_name(p->policy), p->budget_tokens, p->page_tokens);
  int32_t budget_pages = p->budget_tokens / p->page_tokens;
  if (p->policy == KV_POLICY_QUEST) {
    if (budget_pages < 2)
      return AK_ERR(err, AK_ERR_INVALID_ARG, "quest: budget of %d pages must be >= 2", budget_pages);
    return AK_OK;
  }
  if (p->n_sink_pages < 0 || p->n_window_pages < 1)
    return AK_ERR(err, AK_ERR_INVALID_ARG, "n_sink_pages=%d must be >= 0 and n_window_pages=%d >= 1",
                  p->n_sink_pages, p->n_window_pages);
  int32_t nw = p->policy == KV_POLICY_STREAMING ? 1 : p->n_window_pages;
  if (budget_pages < p->n_sink_pages + nw)
    return AK_ERR(err, AK_ERR_INVALID_ARG, "%s: budget of %d pages is below sinks (%d) + window (%d)",
                  kv_policy_name(p->policy), budget_pages, p->n_sink_pages, nw);
  if (p->policy == KV_POLICY_ARKVALE) {
    if (kv_digest_floats(p->digest, p->head_dim) < 0)
      return AK_ERR(err, AK_ERR_INVALID_ARG, "digest=%d is not a kv_digest_kind_t", (int)p->digest);
    if (p->score_agg != KV_SCORE_MEAN && p->score_agg != KV_SCORE_MAX)
      return AK_ERR(err, AK_ERR_INVALID_ARG, "score_agg=%d is not a kv_score_agg_t", (int)p->score_agg);
    if (p->attend != KV_ATTEND_RESIDENT && p->attend != KV_ATTEND_TOPK)
      return AK_ERR(err, AK_ERR_INVALID_ARG, "attend=%d is not a kv_attend_t", (int)p->attend);
    if (p->score_groups < 1 || p->n_kv_heads % p->score_groups != 0)
      return AK_ERR(err, AK_ERR_INVALID_ARG, "score_groups=%d does not divide n_kv_heads=%d", p->score_groups,
                    p->n_kv_heads);
    if (p->select_on_device && (!p->page_memory || !p->page_ops || !p->page_ops->score_pages || !p->tier))
      return AK_ERR(err, AK_ERR_INVALID_ARG,
                    "select_on_device needs page_memory, page_ops with score_pages and the caller's tier (the "
                    "caller copies recalls out of it)");
    if (p->select_on_device && (p->attend != KV_ATTEND_RESIDENT || p->score_groups != 1 || p->track_accuracy))
      return AK_ERR(err, AK_ERR_UNSUPPORTED,
                    "select_on_device makes only the default selection: attend resident, score_groups 1, no "
                    "track_accuracy (attend=%d, score_groups=%d, track_accuracy=%d)",
                    (int)p->attend, p->score_groups, p->track_accuracy);
    int32_t middle = budget_pages - p->n_sink_pages - p->n_window_pages;
    if (p->topk_pages < 0 || p->topk_pages > middle)
      return AK_ERR(err, AK_ERR_INVALID_ARG, "topk_pages=%d outside [0, %d] (the middle of a %d-page budget)",
                    p->topk_pages, middle, budget_pages);
  }
  return AK_OK;
}

/* Resolves the derived fields of a checked params. */
static void kv_pool_resolve(kv_pool_t *pool) {
  const kv_pool_params_t *p = &pool->p;
  int budgeted = p->policy != KV_POLICY_FULL && p->budget_tokens > 0;
  pool->is_token_policy = budgeted && kv_policy_is_token(p->policy);
  pool->budget_pages = budgeted && !pool->is_token_policy ? p->budget_tokens / p->page_tokens : 0;
  pool->has_backup = budgeted && p->policy == KV_POLICY_ARKVALE;
  pool->has_digest = budgeted && (p->policy == KV_POLICY_ARKVALE || p->policy == KV_POLICY_QUEST);
  pool->has_tok_attn = pool->is_token_policy || (p->policy == KV_POLICY_FULL && p->track_token_attn);
  pool->digest = p->policy == KV_POLICY_QUEST ? KV_DIGEST_CUBOID_MAX : p->digest;
  pool->digest_floats = pool->has_digest ? kv_digest_floats(pool->digest, p->head_dim) : 0;
  pool->topk_pages = 0;
  if (pool->has_backup) {
    int32_t middle = pool->budget_pages - p->n_sink_pages - p->n_window_pages;
    int32_t k = p->topk_pages;
    if (k == 0) {
      int32_t c = p->budget_tokens / 2 < KV_TOPK_CAP_TOKENS ? p->budget_tokens / 2 : KV_TOPK_CAP_TOKENS;
      k = c / p->page_tokens;
      if (k < 1) k = 1;
    }
    pool->topk_pages = k < middle ? k : middle;
  }
}

/* --- small shared helpers --- */

double kv_now_us(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec * 1e6 + (double)ts.tv_nsec * 1e-3;
}

void kv_stats_add(kv_stats_t *dst, const kv_stats_t *src) {
  dst->n_steps += src->n_steps;
  dst->n_selects += src->n_selects;
  dst->recalls += src->recalls;
  dst->evictions += src->evictions;
  dst->drops += src->drops;
  dst->backups += src->backups;
  dst->bytes_recalled += src->bytes_recalled;
  dst->bytes_backed_up += src->bytes_backed_up;
  dst->estimate_us += src->estimate_us;
  dst->select_us += src->select_us;
  dst->recall_us += src->recall_us;
  dst->topk_selected += src->topk_selected;
  dst->topk_total += src->topk_total;
}

int32_t kv_page_alloc(kv_pool_t *pool) {
  /* begin reserved every page a step takes: an empty stack here is a bug */
  if (pool->n_free <= 0) return KV_PAGE_NONE;
  return pool->free_stack[--pool->n_free];
}

void kv_page_free(kv_pool_t *pool, int32_t pg) { pool->free_stack[pool->n_free++] = pg; }

void kv_buf_read_f32(const kv_pool_t *pool, const void *page, int is_v, int32_t slot0, int32_t n, float *out) {
  const kv_pool_params_t *p = &pool->p;
  const char *base = (const char *)page + (is_v ? pool->page_bytes / 2 : 0);
  for (int32_t h = 0; h < p->n_kv_heads; h++) {
    for (int32_t t = 0; t < n; t++) {
      int64_t src_off = ((int64_t)h * p->page_tokens + slot0 + t) * p->head_dim;
      float *dst = out + ((int64_t)t * p->n_kv_heads + h) * p->head_dim;
      if (p->dtype == KN_F32) {
        memcpy(dst, (const float *)base + src_off, sizeof(float) * (size_t)p->head_dim);
      } else {
        const uint16_t *src = (const uint16_t *)base + src_off;
        for (int32_t d = 0; d < p->head_dim; d++) dst[d] = ak_f16_to_f32(src[d]);
      }
    }
  }
}

void kv_page_read_f32(const kv_pool_t *pool, int32_t pg, int is_v, int32_t slot0, int32_t n, float *out) {
  kv_buf_read_f32(pool, (const char *)pool->pages + (size_t)pg * pool->page_bytes, is_v, slot0, n, out);
}

/* Heapsort of idx[0, n) so that idx[i] comes before idx[j] (i < j) whenever
 * before(ctx, idx[i], idx[j]); O(n log n), no extra memory, the order passed explicitly
 * (no qsort_r). Used by page ranking (kv_select.c) and token dropping (kv_token.c). */
static void kv_sift_down(int32_t *idx, int64_t root, int64_t n, kv_before_fn before, const void *ctx) {
  for (;;) {
    int64_t child = 2 * root + 1;
    if (child >= n) return;
    if (child + 1 < n && before(ctx, idx[child], idx[child + 1])) child++;
    if (!before(ctx, idx[root], idx[child])) return;
    int32_t t = idx[root];
    idx[root] = idx[child];
    idx[child] = t;
    root = child;
  }
}

void kv_sort_idx(int32_t *idx, int64_t n, kv_before_fn before, const void *ctx) {
  for (int64_t i = n / 2 - 1; i >= 0; i--) kv_sift_down(idx, i, n, before, ctx);
  for (int64_t end = n - 1; end > 0; end--) {
    int32_t t = idx[0];
    idx[0] = idx[end];
    idx[end] = t;
    kv_sift_down(idx, 0, end, before, ctx);
  }
}

/* --- per-sequence tables --- */

/* One block per sequence slot, carved into its layers' arrays:
 *   kv_layer_t [n_layers] | phys [n_layers][maxp] i32 | backup [n_layers][maxp] i64 |
 *   score [n_layers][maxp] f32 | last_q [n_layers][n_heads*head_dim] f32 |
 *   tok_pos, tok_acc, tok_last [n_layers][max_seq_tokens] (token attention only) */
static size_t kv_seq_block_bytes(const kv_pool_t *pool) {
  const kv_pool_params_t *p = &pool->p;
  size_t nl = (size_t)p->n_layers, maxp = (size_t)pool->max_pages_per_seq;
  size_t b = sizeof(kv_layer_t) * nl + sizeof(int32_t) * nl * maxp;
  b = (b + 7) & ~(size_t)7;
  if (pool->has_backup) b += sizeof(kv_backup_id_t) * nl * maxp;
  if (pool->has_digest) b += sizeof(float) * nl * maxp;
  b += sizeof(float) * nl * (size_t)p->n_heads * (size_t)p->head_dim;
  if (pool->has_tok_attn) b += (sizeof(int32_t) + 2 * sizeof(float)) * nl * (size_t)p->max_seq_tokens;
  return b;
}

static ak_status_t kv_seq_block_init(kv_pool_t *pool, kv_seq_t *s) {
  const kv_pool_params_t *p = &pool->p;
  size_t nl = (size_t)p->n_layers, maxp = (size_t)pool->max_pages_per_seq;
  if (!s->block) {
    s->block_bytes = kv_seq_block_bytes(pool);
    s->block = ak_host_alloc(s->block_bytes, 0);
    if (!s->block) return AK_ERR_NO_MEMORY;
  }
  char *c = s->block;
  s->layers = (kv_layer_t *)c;
  c += sizeof(kv_layer_t) * nl;
  int32_t *phys = (int32_t *)c;
  c += sizeof(int32_t) * nl * maxp;
  c = (char *)(((uintptr_t)c + 7) & ~(uintptr_t)7);
  kv_backup_id_t *backup = NULL;
  float *score = NULL;
  if (pool->has_backup) {
    backup = (kv_backup_id_t *)c;
    c += sizeof(kv_backup_id_t) * nl * maxp;
  }
  if (pool->has_digest) {
    score = (float *)c;
    c += sizeof(float) * nl * maxp;
  }
  s->last_q = (float *)c;
  c += sizeof(float) * nl * (size_t)p->n_heads * (size_t)p->head_dim;
  int32_t *tok_pos = NULL;
  float *tok_acc = NULL, *tok_last = NULL;
  if (pool->has_tok_attn) {
    size_t mt = (size_t)p->max_seq_tokens;
    tok_pos = (int32_t *)c;
    c += sizeof(int32_t) * nl * mt;
    tok_acc = (float *)c;
    c += sizeof(float) * nl * mt;
    tok_last = (float *)c;
  }
  for (size_t l = 0; l < nl; l++) {
    kv_layer_t *L = &s->layers[l];
    memset(L, 0, sizeof *L);
    L->phys = phys + l * maxp;
    for (size_t j = 0; j < maxp; j++) L->phys[j] = KV_PAGE_NONE;
    if (backup) {
      L->backup = backup + l * maxp;
      for (size_t j = 0; j < maxp; j++) L->backup[j] = KV_BACKUP_NONE;
    }
    if (score) L->score = score + l * maxp;
    if (tok_pos) {
      L->tok_pos = tok_pos + l * (size_t)p->max_seq_tokens;
      L->tok_acc = tok_acc + l * (size_t)p->max_seq_tokens;
      L->tok_last = tok_last + l * (size_t)p->max_seq_tokens;
    }
  }
  s->has_last_q = 0;
  memset(&s->work, 0, sizeof s->work);
  return AK_OK;
}

static void kv_seq_block_free(kv_pool_t *pool, kv_seq_t *s) {
  (void)pool;
  if (s->block) ak_host_free(s->block, s->block_bytes);
  s->block = NULL;
  s->layers = NULL;
}

/* --- pool --- */

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

ak_status_t kv_tok_scratch_reserve(kv_pool_t *pool, int64_t n_tok) {
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

int kv_pool_arrays(kv_pool_t *pool, kv_array_t *a) {
  const kv_pool_params_t *p = &pool->p;
  size_t ms = (size_t)p->max_seqs, maxp = (size_t)pool->max_pages_per_seq;
  size_t qf = (size_t)p->n_heads * (size_t)p->head_dim;
  size_t pt = (size_t)p->page_tokens;
  int n = 0;
#define KV_ARR(field, bytes) a[n].ptr = (void **)&pool->field, a[n].n_bytes = (bytes), n++
  KV_ARR(free_stack, sizeof(int32_t) * (size_t)p->n_pages);
  KV_ARR(seqs, sizeof(kv_seq_t) * ms);
  KV_ARR(step_seqs, sizeof(int32_t) * ms);
  KV_ARR(step_n_new, sizeof(int32_t) * ms);
  KV_ARR(step_tok0, sizeof(int64_t) * ms);
  KV_ARR(step_pages_before, sizeof(int64_t) * ms);
  KV_ARR(view_indptr, sizeof(int32_t) * (ms + 1));
  KV_ARR(view_last_len, sizeof(int32_t) * ms);
  KV_ARR(view_indices, sizeof(int32_t) * ms * maxp);
  KV_ARR(sel_order, sizeof(int32_t) * maxp);
  KV_ARR(sel_top, sizeof(int32_t) * maxp);
  KV_ARR(sel_victims, sizeof(int32_t) * maxp);
  size_t G = pool->has_backup && p->score_groups > 1 ? (size_t)p->score_groups : 0;
  KV_ARR(group_score, sizeof(float) * maxp * G);
  KV_ARR(group_order, sizeof(int32_t) * maxp * G);
  KV_ARR(group_next, sizeof(int64_t) * G);
  KV_ARR(sel_mark, maxp);
  KV_ARR(page_f32, sizeof(float) * pt * (size_t)p->n_kv_heads * (size_t)p->head_dim);
  KV_ARR(q_scratch, sizeof(float) * qf);
  KV_ARR(page_tmp, pool->page_bytes);
  KV_ARR(true_imp, sizeof(float) * maxp);
  KV_ARR(batch_seqs, sizeof(int32_t) * ms);
  KV_ARR(batch_n_pages, sizeof(int64_t) * ms);
  KV_ARR(batch_scores, sizeof(float *) * ms);
  KV_ARR(batch_q, sizeof(float) * ms * qf);
  KV_ARR(tok_keys, pool->has_tok_attn ? sizeof(float) * (size_t)p->max_seq_tokens * (size_t)p->n_kv_heads *
                                             (size_t)p->head_dim
                                       : 0);
  KV_ARR(tok_logit, (p->track_accuracy || pool->has_tok_attn)
                        ? sizeof(float) * (size_t)p->max_seq_tokens * (size_t)p->n_heads
                        : 0);
#undef KV_ARR
  return n;
}

ak_status_t kv_pool_create(const kv_pool_params_t *p, ak_err_t *err, kv_pool_t **pool_p) {
  AK_TRY(kv_params_check(p, err));
  kv_pool_t *pool = ak_host_alloc(sizeof *pool, 1);
  if (!pool) return AK_ERR(err, AK_ERR_NO_MEMORY, "pool struct");
  pool->p = *p;
  if (pool->p.n_heads == 0) pool->p.n_heads = p->n_kv_heads;
  pool->elem_bytes = kv_dtype_bytes(p->dtype);
  pool->page_bytes = kv_page_bytes(p);
  pool->page_elems = (int64_t)2 * p->n_kv_heads * p->page_tokens * p->head_dim;
  pool->max_pages_per_seq = kv_pages_for_tokens(p->max_seq_tokens, p->page_tokens);
  kv_pool_resolve(pool);
  ak_status_t st = AK_ERR_NO_MEMORY;

  if ((size_t)p->n_pages > SIZE_MAX / pool->page_bytes) {
    ak_host_free(pool, sizeof *pool);
    return AK_ERR(err, AK_ERR_INVALID_ARG, "n_pages=%lld of %zu bytes overflows", (long long)p->n_pages,
                  pool->page_bytes);
  }
  pool->pages = p->page_memory ? p->page_memory : ak_host_alloc(pool->page_bytes * (size_t)p->n_pages, 0);
  if (!pool->pages) {
    AK_ERR(err, st, "%lld pages of %zu bytes", (long long)p->n_pages, pool->page_bytes);
    goto err_free_pool;
  }
  kv_array_t arr[KV_N_ARRAYS];
  int n_arr = kv_pool_arrays(pool, arr);
  for (int i = 0; i < n_arr; i++) {
    if (arr[i].n_bytes == 0) continue;
    *arr[i].ptr = ak_host_alloc(arr[i].n_bytes, 1);
    if (!*arr[i].ptr) {
      AK_ERR(err, st, "pool table %d of %zu bytes", i, arr[i].n_bytes);
      goto err_free_arrays;
    }
  }
  /* Pop order 0, 1, 2, ...: a fresh pool hands out pages in address order. */
  for (int64_t i = 0; i < p->n_pages; i++) pool->free_stack[i] = (int32_t)(p->n_pages - 1 - i);
  pool->n_free = p->n_pages;

  if (pool->has_backup) {
    if (p->tier) {
      pool->tier = p->tier;
    } else {
      kv_tier_host_params_t tp = kv_tier_host_params_default();
      tp.slot_bytes = pool->page_bytes;
      tp.capacity_bytes = kv_pool_tier_bytes(p);
      st = kv_tier_host_create(&tp, err, &pool->tier);
      if (st < 0) goto err_free_arrays;
      pool->owns_tier = 1;
    }
  }
  /* p.tier stays what the caller passed: a copy of these params must not share a tier
   * this pool owns */
  *pool_p = pool;
  return AK_OK;

err_free_arrays:
  for (int i = 0; i < n_arr; i++)
    if (*arr[i].ptr) ak_host_free(*arr[i].ptr, arr[i].n_bytes);
  if (!p->page_memory) ak_host_free(pool->pages, pool->page_bytes * (size_t)p->n_pages);
err_free_pool:
  ak_host_free(pool, sizeof *pool);
  return st;
}

void kv_pool_destroy(kv_pool_t *pool) {
  if (!pool) return;
  for (int32_t i = 0; i < pool->p.max_seqs; i++) {
    kv_seq_t *s = &pool->seqs[i];
    if (s->live)
      for (int32_t l = 0; l < pool->p.n_layers; l++) kv_select_release_layer(pool, &s->layers[l]);
    kv_seq_block_free(pool, s);
  }
  if (pool->owns_tier) kv_tier_destroy(pool->tier);
  kv_tok_scratch_free(pool);
  kv_array_t arr[KV_N_ARRAYS];
  int n_arr = kv_pool_arrays(pool, arr);
  for (int i = 0; i < n_arr; i++)
    if (*arr[i].ptr) ak_host_free(*arr[i].ptr, arr[i].n_bytes);
  if (!pool->p.page_memory) ak_host_free(pool->pages, pool->page_bytes * (size_t)pool->p.n_pages);
  ak_host_free(pool, sizeof *pool);
}

const char *kv_pool_errmsg(const kv_pool_t *pool) { return pool ? pool->err.msg : "pool is NULL"; }
const kv_pool_params_t *kv_pool_params(const kv_pool_t *pool) { return &pool->p; }
int32_t kv_pool_topk_pages(const kv_pool_t *pool) { return pool->topk_pages; }

size_t kv_pool_tier_bytes(const kv_pool_params_t *p) {
  if (p->host_tier_bytes) return p->host_tier_bytes;
  int64_t budgeted_layers = p->n_layers - (p->n_full_layers < p->n_layers ? p->n_full_layers : p->n_layers);
  int64_t slots = (int64_t)p->max_seq_tokens / p->page_tokens * budgeted_layers * p->max_seqs;
  if (slots < 1) slots = 1;
  return (size_t)slots * kv_page_bytes(p);
}
int kv_pool_wants_queries(const kv_pool_t *pool) {
  return (pool->p.policy != KV_POLICY_FULL || pool->has_tok_attn) && !pool->p.select_on_device;
}

/* --- page bytes (in the pool's memory, or through page_ops) --- */

ak_status_t kv_page_fetch(kv_pool_t *pool, int32_t pg, const void **bytes_p) {
  if (!pool->p.page_memory) {
    *bytes_p = kv_page_kv(pool, pg, 0);
    return AK_OK;
  }
  const kv_page_ops_t *ops = pool->p.page_ops;
  ak_status_t st = ops->read_page(ops->ctx, pg, pool->page_tmp, &pool->err);
  if (st < 0) return st;
  *bytes_p = pool->page_tmp;
  return AK_OK;
}

ak_status_t kv_page_restore(kv_pool_t *pool, int32_t pg, kv_backup_id_t id) {
  void *dst = pool->p.page_memory ? pool->page_tmp : kv_page_kv(pool, pg, 0);
  ak_status_t st = kv_tier_get(pool->tier, id, dst, pool->page_bytes);
  if (st < 0) return AK_ERR(&pool->err, st, "page %d: %s", pg, kv_tier_errmsg(pool->tier));
  if (!pool->p.page_memory) return AK_OK;
  const kv_page_ops_t *ops = pool->p.page_ops;
  return ops->write_page(ops->ctx, pg, pool->page_tmp, &pool->err);
}

/* --- sequences --- */

kv_seq_t *kv_seq_get(const kv_pool_t *pool, kv_seq_id_t seq) {
  if (seq < 0 || seq >= pool->p.max_seqs || !pool->seqs[seq].live) return NULL;
  return &pool->seqs[seq];
}

ak_status_t kv_seq_create(kv_pool_t *pool, kv_seq_id_t *seq_p) {
  for (int32_t i = 0; i < pool->p.max_seqs; i++) {
    kv_seq_t *s = &pool->seqs[i];
    if (s->live) continue;
    if (kv_seq_block_init(pool, s) < 0)
      return AK_ERR(&pool->err, AK_ERR_NO_MEMORY, "tables of sequence %d (%zu bytes)", i, kv_seq_block_bytes(pool));
    s->live = 1;
    s->n_tokens = 0;
    s->n_pages = 0;
    pool->n_live++;
    *seq_p = i;
    return AK_OK;
  }
  return AK_ERR(&pool->err, AK_ERR_POOL_FULL, "all %d sequence slots are live", pool->p.max_seqs);
}

/* Returns the layer's resident pages at logical index >= keep_pages (page policies)
 * or past the first keep_pages (token policies) to the free stack. */
void kv_layer_shrink(kv_pool_t *pool, kv_layer_t *L, int64_t keep_pages, int64_t n_pages) {
  for (int64_t j = keep_pages; j < n_pages; j++) {
    if (L->phys[j] == KV_PAGE_NONE) continue;
    kv_page_free(pool, L->phys[j]);
    L->phys[j] = KV_PAGE_NONE;
    L->n_resident--;
  }
}

static int64_t kv_layer_n_listed(const kv_pool_t *pool, const kv_seq_t *s, const kv_layer_t *L) {
  return pool->is_token_policy && kv_layer_budgeted(pool, (int32_t)(L - s->layers)) ? L->n_resident : s->n_pages;
}

int kv_seq_in_step(const kv_pool_t *pool, kv_seq_id_t seq) {
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
  for (int32_t l = 0; l < pool->p.n_layers; l++) {
    kv_layer_t *L = &s->layers[l];
    kv_layer_shrink(pool, L, 0, kv_layer_n_listed(pool, s, L));
    kv_select_release_layer(pool, L);
  }
  s->live = 0;
  s->n_tokens = 0;
  s->n_pages = 0;
  pool->n_live--;
  return AK_OK;
}

int64_t kv_seq_n_tokens(const kv_pool_t *pool, kv_seq_id_t seq) {
  const kv_seq_t *s = kv_seq_get(pool, seq);
  return s ? s->n_tokens : -1;
}

ak_status_t kv_seq_compact(kv_pool_t *pool, kv_seq_id_t seq) {
  kv_seq_t *s = kv_seq_get(pool, seq);
  if (!s) return AK_ERR(&pool->err, AK_ERR_NOT_FOUND, "sequence %d is not live", seq);
  if (kv_seq_in_step(pool, seq))
    return AK_ERR(&pool->err, AK_ERR_INVALID_ARG, "sequence %d is in the current step", seq);
  for (int32_t l = 0; l < pool->p.n_layers; l++) {
    if (!kv_layer_budgeted(pool, l)) continue;
    kv_layer_t *L = &s->layers[l];
    if (pool->is_token_policy)
      kv_token_drop(pool, s, l, kv_token_keep(pool, s, L, 0, 1));
    else if (pool->p.policy == KV_POLICY_ARKVALE || pool->p.policy == KV_POLICY_STREAMING)
      kv_select_evict_for_step(pool, s, l, s->n_pages, 1);
  }
  return AK_OK;
}
