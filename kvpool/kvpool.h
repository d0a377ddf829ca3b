/* kvpool: the KV cache manager. Pages, per-sequence page tables, and the policy that
 * decides which pages a layer attends over.
 *
 * This is the foundation's version: one policy, `full` (every page of a sequence stays
 * resident and is attended). The ArkVale policy (digests, backup tier, recall and
 * eviction) slots in behind the same step API without touching the forward pass:
 * kv_layer_view receives the layer's queries precisely so that a policy can score
 * pages against them before attention.
 *
 * A page holds `page_tokens` tokens of one sequence and one layer, for all KV heads of
 * this worker's shard, K and V:
 *
 *   page p:  +-------------------------------+-------------------------------+
 *            | K [n_kv_heads][page_tokens][head_dim] | V [n_kv_heads][page_tokens][head_dim] |
 *            +-------------------------------+-------------------------------+
 *   element type: kv_pool_params_t.dtype (f16 by default, f32 for exactness tests)
 *
 * Sequence s, layer l owns an ordered list of pages; token j of the sequence lives in
 * page list[j / page_tokens], slot j % page_tokens.
 *
 * A step (one forward call over a batch) runs:
 *   kv_step_begin(batch)          reserve room for each sequence's new tokens (all
 *                                 layers); AK_ERR_POOL_FULL changes nothing
 *   for each layer:
 *     kv_layer_append(l, k, v)    store the new tokens' K and V
 *     kv_layer_view(l, q, &args)  fill the attention view for the batch's queries
 *   kv_step_end()                 the new tokens become part of each sequence
 * or kv_step_abort() after begin, which returns the pages the step reserved.
 *
 * Threading: a pool has one owning thread; no call is thread-safe. */
#ifndef KV_KVPOOL_H
#define KV_KVPOOL_H

#include <stddef.h>
#include <stdint.h>

#include "ak_status.h"
#include "kernels.h"

#ifdef __cplusplus
extern "C" {
#endif

#define KV_PAGE_NONE (-1)

typedef enum {
  KV_POLICY_FULL = 0, /* every page resident and attended */
} kv_policy_t;

typedef struct {
  int32_t n_layers;
  int32_t n_kv_heads;
  int32_t head_dim;
  int32_t page_tokens;    /* tokens per page, 1..256 (default 32) */
  int64_t n_pages;        /* capacity: pages of one layer each, shared by all sequences */
  int32_t max_seqs;       /* live sequences at once (default 256) */
  int32_t max_seq_tokens; /* longest sequence (the model's context; default 8192) */
  kn_dtype_t dtype;       /* element type of K and V (default KN_F16) */
  kv_policy_t policy;
} kv_pool_params_t;

typedef struct kv_pool kv_pool_t;
typedef int32_t kv_seq_id_t;

/* Defaults for every field; the model-shape fields (n_layers, n_kv_heads, head_dim,
 * n_pages) are 0 and must be set. */
kv_pool_params_t kv_pool_params_default(void);

/* Pages needed to hold n_tokens of one layer. */
int64_t kv_pages_for_tokens(int64_t n_tokens, int32_t page_tokens);
/* Bytes of one page (K and V, all heads) for these params. */
size_t kv_page_bytes(const kv_pool_params_t *p);

ak_status_t kv_pool_create(const kv_pool_params_t *p, ak_err_t *err, kv_pool_t **pool_p);
void kv_pool_destroy(kv_pool_t *pool);
/* The last error of a call on this pool ("" if none). */
const char *kv_pool_errmsg(const kv_pool_t *pool);
const kv_pool_params_t *kv_pool_params(const kv_pool_t *pool);

/* --- sequences --- */
/* A new empty sequence. AK_ERR_POOL_FULL when max_seqs are live. */
ak_status_t kv_seq_create(kv_pool_t *pool, kv_seq_id_t *seq_p);
/* Frees every page of the sequence at once; AK_ERR_NOT_FOUND for an unknown id.
 * Not allowed between kv_step_begin and kv_step_end/abort for a sequence in the step. */
ak_status_t kv_seq_release(kv_pool_t *pool, kv_seq_id_t seq);
/* Tokens stored for the sequence (its next token's position); -1 when unknown. */
int64_t kv_seq_n_tokens(const kv_pool_t *pool, kv_seq_id_t seq);

/* --- steps --- */
typedef struct {
  int32_t n_seqs;
  const kv_seq_id_t *seqs;     /* [n_seqs], distinct */
  const int32_t *n_new_tokens; /* [n_seqs], >= 1 */
} kv_batch_t;

/* Reserves pages for the batch's new tokens in every layer. The batch's tokens are
 * ordered sequence by sequence (the order the forward pass uses for its rows). The
 * batch arrays are copied. On failure (AK_ERR_POOL_FULL, AK_ERR_INVALID_ARG,
 * AK_ERR_NOT_FOUND, AK_ERR_RANGE past max_seq_tokens) the pool is unchanged. */
ak_status_t kv_step_begin(kv_pool_t *pool, const kv_batch_t *batch);

/* Absolute positions of the step's tokens ([n_tok], valid until the next begin). */
const int32_t *kv_step_positions(const kv_pool_t *pool, int64_t *n_tok_p);

/* Stores the new tokens' K and V for one layer: k, v [n_tok, n_kv_heads, head_dim] f32
 * (K after RoPE). */
ak_status_t kv_layer_append(kv_pool_t *pool, kn_cpu_t *cpu, int32_t layer_idx, const float *k,
                            const float *v);

/* Fills args->kv, args->tok_seq_idx and args->tok_kv_len (arrays owned by the pool,
 * valid until the next call on it) for attention of the step's tokens in one layer.
 * q: [n_tok, n_heads, head_dim] f32 queries after RoPE (a policy may score pages with
 * them; `full` does not read them). Every other field of args is the caller's. */
ak_status_t kv_layer_view(kv_pool_t *pool, int32_t layer_idx, const float *q, int32_t n_heads,
                          kn_attn_args_t *args);

ak_status_t kv_step_end(kv_pool_t *pool);
/* Undoes kv_step_begin: the pages it reserved are returned. No-op without a step. */
void kv_step_abort(kv_pool_t *pool);

/* --- accounting --- */
typedef struct {
  int32_t n_seqs;              /* live sequences */
  int64_t n_pages_total;       /* capacity */
  int64_t n_pages_used;        /* held by sequences (all layers) */
  size_t page_bytes;
  size_t pool_bytes;           /* page memory */
  size_t table_bytes;          /* page tables and step scratch */
} kv_pool_stats_t;
void kv_pool_get_stats(const kv_pool_t *pool, kv_pool_stats_t *stats_p);

/* Debug check of every invariant (each used page owned by exactly one (seq, layer)
 * slot, free list consistent, counts match); AK_ERR_INTERNAL with a message if not. */
ak_status_t kv_pool_check(kv_pool_t *pool);

#ifdef __cplusplus
}
#endif
#endif
