/* kv_pool_internal: the pool's state, shared by the files of kvpool/ (never included
 * outside the folder).
 *
 *   kv_pool.c    create/destroy, sequences
 *   kv_step.c    the step orchestration
 *   kv_pool_stats.c  stats and the invariant check
 *   kv_select.c  the page policies' decisions: fill (digest + backup), eviction at a
 *                page boundary, compaction, estimate/select/recall, the view
 *   kv_token.c   the token policies (h2o, tova) and prompt-attention tracking
 *   kv_branch.c  reading a sequence's K/V back, last queries, branching
 *
 * Per (sequence, layer) state, kv_layer_t. Page policies index by logical page j
 * (token position / page_tokens):
 *
 *   phys[j]    physical page holding logical page j, or KV_PAGE_NONE (evicted/dropped)
 *   backup[j]  its backup id, KV_BACKUP_NONE if none   (arkvale budgeted layers)
 *   score[j]   its latest estimate                     (arkvale, quest budgeted layers)
 *   digest     [n_digests][n_kv_heads * digest_floats] f32, pages 0..n_digests-1 (the
 *              filled ones), grown by doubling
 *
 * Token policies (h2o, tova) keep resident tokens densely: resident token i lives in
 * physical page phys[i / page_tokens], slot i % page_tokens; tok_pos[i] is its
 * position, tok_acc[i] / tok_last[i] its accumulated / latest attention. Their order
 * is not position order except that each step's new tokens are appended at the end in
 * order (which is all the causal mask of a multi-token step needs: every older token
 * is visible to every new one). A full pool with track_token_attn uses tok_acc and
 * tok_last indexed by position. */
#ifndef KV_POOL_INTERNAL_H
#define KV_POOL_INTERNAL_H

#include "kvpool.h"

typedef struct {
  int32_t *phys;          /* [max_pages_per_seq] */
  kv_backup_id_t *backup; /* [max_pages_per_seq] or NULL */
  float *score;           /* [max_pages_per_seq] or NULL */
  float *digest;          /* [digest_cap][digest_page_floats] or NULL */
  int64_t digest_cap;     /* pages the digest array can hold */
  int64_t n_digests;      /* filled pages digested (pages 0..n_digests-1) */
  int64_t n_resident;     /* pages with phys != KV_PAGE_NONE (token policies: pages in use) */
  int64_t n_backups;      /* pages with a backup */
  int32_t compacted;      /* page policies: the layer has left prefill (it evicts) */
  int32_t prescored;      /* score[] already holds this step's estimate (a batched score) */
  /* token policies and track_token_attn */
  int64_t n_res_tok;      /* resident tokens (token policies) */
  int32_t *tok_pos;       /* [max_seq_tokens] */
  float *tok_acc;         /* [max_seq_tokens] */
  float *tok_last;        /* [max_seq_tokens] */
} kv_layer_t;

typedef struct {
  int live;
  int64_t n_tokens;       /* committed tokens */
  int64_t n_pages;        /* logical pages per layer (page policies; incl. the step's) */
  kv_layer_t *layers;     /* [n_layers] */
  float *last_q;          /* [n_layers][n_heads * head_dim] */
  int32_t has_last_q;
  kv_stats_t work;
  void *block;            /* one allocation holding layers and their fixed arrays */
  size_t block_bytes;
} kv_seq_t;

struct kv_pool {
  kv_pool_params_t p;
  ak_err_t err;
  size_t page_bytes;
  size_t elem_bytes;
  int64_t page_elems;         /* elements of one page (K and V) */
  int64_t max_pages_per_seq;
  int32_t budget_pages;       /* page policies: budget_tokens / page_tokens; 0 = none */
  int32_t topk_pages;         /* arkvale: resolved k */
  kv_digest_kind_t digest;    /* the kind the policy uses */
  int32_t digest_floats;      /* per KV head */
  int is_token_policy;        /* h2o, tova */
  int has_backup;             /* arkvale */
  int has_digest;             /* arkvale, quest */
  int has_tok_attn;           /* h2o, tova, or full with track_token_attn */
  void *pages;                /* [n_pages][2][n_kv_heads][page_tokens][head_dim] dtype */
  int32_t *free_stack;        /* [n_pages] */
  int64_t n_free;
  kv_seq_t *seqs;             /* [max_seqs] */
  int32_t n_live;
  kv_tier_t *tier;            /* backups (arkvale) */
  int owns_tier;
  kv_stats_t work;            /* since create */
  kv_stats_t step_work;       /* the current / latest step */

  /* the current step */
  int in_step;
  int32_t step_n_seqs;
  int64_t step_n_tok;
  int32_t *step_seqs;         /* [max_seqs] */
  int32_t *step_n_new;        /* [max_seqs] */
  int64_t *step_tok0;         /* [max_seqs] first token's index on page lists (page policies:
                               * n_tokens; token policies: n_res_tok before the step) */
  int64_t *step_pages_before; /* [max_seqs] logical pages per layer before the step */
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
  /* selection scratch, [max_pages_per_seq] each */
  int32_t *sel_order;         /* candidate pages */
  int32_t *sel_top;           /* the selected pages, best first */
  int32_t *sel_victims;       /* pages chosen to give up their slots */
  float *group_score;         /* [score_groups][max_pages_per_seq] per-group estimates */
  /* batched estimates of one layer (page_ops->score_pages_batch), [max_seqs] each */
  int32_t *batch_seqs;
  int64_t *batch_n_pages;
  float **batch_scores;
  float *batch_q;             /* [max_seqs][n_heads * head_dim] */
  int32_t *group_order;       /* [score_groups][max_pages_per_seq] each group's best pages */
  int64_t *group_next;        /* [score_groups] cursor into group_order */
  uint8_t *sel_mark;          /* per logical page: 1 = selected this step */
  float *page_f32;            /* [page_tokens * n_kv_heads * head_dim] one page's keys, token-major */
  float *q_scratch;           /* [max(page_tokens, n_heads) * n_heads * head_dim] */
  void *page_tmp;             /* [page_bytes] one page's bytes */
  float *true_imp;            /* [max_pages_per_seq] track_accuracy */
  float *tok_logit;           /* [max_seq_tokens * n_heads] track_accuracy / token attention */
  float *tok_keys;            /* [n_kv_heads][max_seq_tokens][head_dim] token attention: keys as f32 */
};

/* --- kv_pool.c helpers used by the other files --- */
/* The fixed-size arrays of a pool, with their byte sizes, so that create, destroy and
 * stats agree: kv_pool_arrays fills a[0..n) and returns n (<= KV_N_ARRAYS). */
typedef struct {
  void **ptr;
  size_t n_bytes;
} kv_array_t;
#define KV_N_ARRAYS 26
int kv_pool_arrays(kv_pool_t *pool, kv_array_t *a);
static inline kv_layer_t *kv_layer_of(const kv_pool_t *pool, const kv_seq_t *s, int32_t layer) {
  (void)pool;
  return &s->layers[layer];
}
/* 1 if `layer` has a budget under the pool's policy. */
static inline int kv_layer_budgeted(const kv_pool_t *pool, int32_t layer) {
  return pool->p.policy != KV_POLICY_FULL && pool->p.budget_tokens > 0 && layer >= pool->p.n_full_layers;
}
/* 1 if the layer's view makes a selection for sequence s this step (page policies
 * that digest: a decode token of a sequence over its budget). */
static inline int kv_layer_selects(const kv_pool_t *pool, const kv_seq_t *s, int32_t layer, int32_t n_new) {
  return kv_layer_budgeted(pool, layer) && pool->has_digest && n_new == 1 && s->n_pages > pool->budget_pages;
}
/* Counts an event on the sequence, the step and the pool. */
#define KV_COUNT(pool, s, field, n)                       \
  do {                                                    \
    (s)->work.field += (n);                               \
    if ((pool)->in_step) (pool)->step_work.field += (n);  \
    (pool)->work.field += (n);                            \
  } while (0)
/* K (is_v = 0) or V of physical page pg: [n_kv_heads][page_tokens][head_dim] dtype. */
static inline void *kv_page_kv(const kv_pool_t *pool, int32_t pg, int is_v) {
  return (char *)pool->pages + (size_t)pg * pool->page_bytes + (is_v ? pool->page_bytes / 2 : 0);
}
int32_t kv_page_alloc(kv_pool_t *pool);           /* pops the free stack; caller reserved it */
kv_seq_t *kv_seq_get(const kv_pool_t *pool, kv_seq_id_t seq); /* NULL unless live */
int kv_seq_in_step(const kv_pool_t *pool, kv_seq_id_t seq);
/* Grows the per-token step scratch to n_tok (AK_ERR_NO_MEMORY with a message). */
ak_status_t kv_tok_scratch_reserve(kv_pool_t *pool, int64_t n_tok);
/* Returns the layer's resident pages at list index >= keep_pages (up to n_pages). */
void kv_layer_shrink(kv_pool_t *pool, kv_layer_t *L, int64_t keep_pages, int64_t n_pages);
void kv_page_free(kv_pool_t *pool, int32_t pg);
void kv_stats_add(kv_stats_t *dst, const kv_stats_t *src);
/* Sorts idx[0, n) so that `before(ctx, a, b)` (a strict order) puts a ahead of b. */
typedef int (*kv_before_fn)(const void *ctx, int32_t a, int32_t b);
void kv_sort_idx(int32_t *idx, int64_t n, kv_before_fn before, const void *ctx);
double kv_now_us(void);
/* Converts token slots [slot0, slot0 + n) of K or V of physical page pg to f32,
 * token-major [n][n_kv_heads][head_dim]. */
void kv_page_read_f32(const kv_pool_t *pool, int32_t pg, int is_v, int32_t slot0, int32_t n, float *out);
/* Physical page pg's bytes on the host: the pool's own memory, or a copy in
 * pool->page_tmp read through page_ops (valid until the next page call). */
ak_status_t kv_page_fetch(kv_pool_t *pool, int32_t pg, const void **bytes_p);
/* Copies backup `id` into physical page pg (through page_ops when the pages are the
 * caller's). */
ak_status_t kv_page_restore(kv_pool_t *pool, int32_t pg, kv_backup_id_t id);
/* The same from a page's bytes elsewhere (a backup read into pool->page_tmp). */
void kv_buf_read_f32(const kv_pool_t *pool, const void *page, int is_v, int32_t slot0, int32_t n, float *out);

/* --- kv_select.c: page policies --- */
/* Pages of one budgeted layer during the step, after kv_select_evict_for_step (what
 * begin must reserve beyond what the layer holds is the returned value minus
 * n_resident). May exceed the budget by the page leaving the window; step end evicts it. */
int64_t kv_select_resident_after(const kv_pool_t *pool, const kv_seq_t *s, const kv_layer_t *L,
                                 int64_t n_pages_after, int decode);
/* At step begin (and with n_pages_after = s->n_pages, decode = 1, for compaction):
 * evicts (arkvale, streaming) the resident middle pages the layer must give up so
 * that with the step's new pages it holds at most its budget; arkvale ranks them with
 * the last query, streaming drops the oldest. The freed pages go to the free stack.
 * A multi-token step (decode = 0) evicts nothing and clears L->compacted. */
void kv_select_evict_for_step(kv_pool_t *pool, kv_seq_t *s, int32_t layer, int64_t n_pages_after, int decode);
/* After kv_layer_append: digests and backs up pages [from, to) of the layer, now full. */
ak_status_t kv_select_on_fill(kv_pool_t *pool, kv_seq_t *s, int32_t layer, int64_t from, int64_t to);
/* Estimate, select and recall for one sequence's layer given its last step query
 * q [n_heads * head_dim]; marks pool->sel_mark for the pages to attend when the
 * policy restricts attention (returns 1 then, 0 = attend every resident page). */
ak_status_t kv_select_for_view(kv_pool_t *pool, kv_seq_t *s, int32_t layer, const float *q, int64_t n_pages_before,
                               int *restricted_p);
/* AK_ERR_INVALID_ARG outside a step, AK_ERR_RANGE for a bad layer (kv_step.c). */
ak_status_t kv_layer_check_open(kv_pool_t *pool, int32_t layer_idx);
/* select_on_device: counts a selection the caller makes (kv_select_device.c). */
void kv_select_count_device(kv_pool_t *pool, kv_seq_t *s);
/* Frees a layer's backups and digests (release). */
void kv_select_release_layer(kv_pool_t *pool, kv_layer_t *L);
/* After an abort: recalls sink and window pages (of the restored page count) that the
 * step's evictions or recalls took, into the pages the abort freed. */
void kv_select_restore_window(kv_pool_t *pool, kv_seq_t *s, int32_t layer);
/* Forgets digests and backups of pages >= n_filled (a step's fills undone by abort). */
void kv_select_truncate(kv_pool_t *pool, kv_layer_t *L, int64_t n_filled);

/* --- kv_token.c: token policies and prompt-attention tracking --- */
/* Tokens the layer keeps before appending n_new (decode: drops to make room within the
 * budget; a multi-token step keeps all). Pure. */
int64_t kv_token_keep(const kv_pool_t *pool, const kv_seq_t *s, const kv_layer_t *L, int32_t n_new, int decode);
/* Drops tokens of the layer down to n_keep (the policy chooses which), moves the
 * survivors into the first ceil(n_keep / page_tokens) pages and frees the rest. */
void kv_token_drop(kv_pool_t *pool, kv_seq_t *s, int32_t layer, int64_t n_keep);
/* After the step's tokens are stored: attention of the sequence's n_new new queries
 * q [n_new][n_heads * head_dim] over the layer's tokens (the first tok0 + j + 1 on the
 * page list for new token j) updates tok_acc (sum) and tok_last (the last query's).
 * Scores are probabilities averaged over query heads. */
ak_status_t kv_token_observe(kv_pool_t *pool, kv_seq_t *s, int32_t layer, int64_t tok0, int32_t n_new,
                             const float *q);

#endif
