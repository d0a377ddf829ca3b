/* kvpool: the KV cache manager. Pages, per-sequence page tables, backup tier, digests
 * and the policy that decides which pages a layer keeps on the device and attends over.
 *
 * A page holds `page_tokens` tokens of one sequence and one layer, for all KV heads of
 * this worker's shard, K and V:
 *
 *   page p:  +---------------------------------------+---------------------------------------+
 *            | K [n_kv_heads][page_tokens][head_dim] | V [n_kv_heads][page_tokens][head_dim] |
 *            +---------------------------------------+---------------------------------------+
 *   element type: kv_pool_params_t.dtype (f16 by default, f32 for exactness tests)
 *
 * Policies (kv_policy_t). The first n_full_layers layers always keep a full cache; the
 * others are *budgeted*: each holds at most budget_pages = budget_tokens / page_tokens
 * resident pages per sequence outside prefill (see "Prefill" below).
 *   full       every page resident and attended (no budget).
 *   arkvale    ArkVale (../shared/ARKVALE.md). Logical page j of a budgeted layer is
 *              resident in a physical page or not (KV_PAGE_NONE). Residency:
 *
 *                logical pages:  [ sinks | middle ..................... | window ]
 *                                  0..ns-1                           N-nw .. N-1 (last
 *                                                                     one partly filled)
 *                resident:       all sinks + up to budget-ns-nw middle pages + all window
 *
 *              Every page of a budgeted layer is digested and copied to the backup tier
 *              the moment it fills. When a new page opens and the layer is at its
 *              budget, the lowest-scored resident middle page (the page that just left
 *              the window included) is evicted. Each decode step, a layer with more
 *              pages than its budget scores every digest against the step's query,
 *              takes the top-k middle pages, recalls the missing ones into the slots of
 *              the lowest-scored resident middle pages, and attends over every resident
 *              page (attend = KV_ATTEND_RESIDENT) or sinks + top-k + window
 *              (KV_ATTEND_TOPK).
 *   streaming  StreamingLLM at page granularity: sinks + the most recent pages; a page
 *              that leaves the window is dropped for good (no backup, no digest).
 *              Keys keep their original RoPE positions.
 *   h2o        H2O at token granularity: the budget_tokens / 2 most recent tokens plus
 *              the heavy hitters (largest attention accumulated since the token
 *              arrived, the prompt's attention included); the lowest is dropped for good.
 *   tova       TOVA at token granularity: when over budget, drops the token with the
 *              lowest attention from the latest query (mean over heads).
 *   quest      Quest: every page stays resident; each decode step attends the top
 *              budget_pages - 1 filled pages by their cuboid-max digest plus the last
 *              page. Saves bandwidth, not memory.
 *
 * Prefill. A step that brings several tokens of a sequence (a prompt chunk) keeps all
 * of its pages resident and attends over everything resident, so a prompt is
 * prefilled exactly even past the budget; the pages it needs are reserved like any
 * other. The sequence comes down to its budget at kv_seq_compact or at its first
 * single-token (decode) step, whichever comes first: arkvale keeps sinks + the top
 * middle pages scored with the last prompt token's query + the window; h2o and tova
 * keep the tokens with the highest prompt attention (plus h2o's recent half).
 *
 * A step (one forward call over a batch) runs:
 *   kv_step_begin(batch)          evictions due at page boundaries, then room for each
 *                                 sequence's new tokens in every layer, and room in
 *                                 the backup tier for the pages the step will fill;
 *                                 AK_ERR_POOL_FULL changes nothing
 *   for each layer:
 *     kv_layer_append(l, k, v)    store the new tokens' K and V; digest and back up
 *                                 the pages that filled
 *     kv_layer_view(l, q, &args)  estimate, select, recall; fill the attention view
 *   kv_step_end()                 the new tokens become part of each sequence
 * or kv_step_abort() after begin, which returns the pages the step reserved. arkvale's
 * evictions and recalls stay done (they change where pages live, never what a
 * sequence holds; the window as it was before the step stays resident). The drops of
 * the permanent-eviction policies (streaming, h2o, tova) made at begin stay made:
 * the retried step would make them again.
 *
 * Threading: a pool has one owning thread; no call is thread-safe. */
#ifndef KV_KVPOOL_H
#define KV_KVPOOL_H

#include <stddef.h>
#include <stdint.h>

#include "ak_status.h"
#include "kernels.h"
#include "kv_digest.h"
#include "kv_tier.h"

#ifdef __cplusplus
extern "C" {
#endif

#define KV_PAGE_NONE (-1)

typedef enum {
  KV_POLICY_FULL = 0,
  KV_POLICY_ARKVALE = 1,
  KV_POLICY_STREAMING = 2,
  KV_POLICY_H2O = 3,
  KV_POLICY_TOVA = 4,
  KV_POLICY_QUEST = 5,
} kv_policy_t;
#define KV_POLICY_N 6

/* What an arkvale layer attends over once it has more pages than its budget. */
typedef enum {
  KV_ATTEND_RESIDENT = 0, /* every resident page (the reference prototype) */
  KV_ATTEND_TOPK = 1,     /* sinks + top-k + window only (the paper's description) */
} kv_attend_t;

typedef struct {
  int32_t n_layers;
  int32_t n_kv_heads;
  int32_t n_heads;        /* query heads of the shard: a multiple of n_kv_heads; 0 = n_kv_heads */
  int32_t head_dim;
  int32_t page_tokens;    /* tokens per page, 1..256 (default 32) */
  int64_t n_pages;        /* capacity: pages of one layer each, shared by all sequences */
  int32_t max_seqs;       /* live sequences at once (default 256) */
  int32_t max_seq_tokens; /* longest sequence (the model's context; default 8192) */
  kn_dtype_t dtype;       /* element type of K and V (default KN_F16) */
  kv_policy_t policy;
  void *page_memory;      /* NULL: the pool allocates its pages in host memory. Otherwise the
                           * caller's n_pages * kv_page_bytes bytes (device memory for the
                           * CUDA backend), which the pool never dereferences: the caller
                           * stores K/V at the slots kv_layer_slots names (kv_layer_append is
                           * refused), views point into it, and the pool moves page bytes
                           * only through page_ops. full needs no page_ops; arkvale, quest
                           * and streaming need them; h2o and tova are refused (they move
                           * tokens inside pages). */
  const struct kv_page_ops *page_ops; /* with page_memory; must outlive the pool */

  /* --- budgeted policies (all but full) --- */
  int32_t budget_tokens;  /* per budgeted layer and sequence; a multiple of page_tokens for the
                           * page policies; 0 = none (the policy then behaves as full) */
  int32_t n_full_layers;  /* layers 0..n_full_layers-1 keep a full cache (default 2) */
  int32_t n_sink_pages;   /* arkvale, streaming: first pages always resident (default 1) */
  int32_t n_window_pages; /* arkvale: most recent pages always resident, the partly filled one
                           * included (default 2, at least 1) */
  int32_t topk_pages;     /* arkvale: middle pages selected per step; 0 = the paper's
                           * min(1280, budget_tokens / 2) / page_tokens, capped to the middle */
  kv_digest_kind_t digest;   /* arkvale (default cuboid-mean); quest always uses cuboid-max */
  kv_score_agg_t score_agg;  /* how query heads combine into a page score (default mean) */
  int32_t score_groups;      /* arkvale: 1 (default) ranks pages once for the whole shard; G > 1
                              * splits the KV heads into G groups that each rank pages with
                              * their own query heads, and the top-k takes the groups' best
                              * pages in turn (round robin), so one group's favourites cannot
                              * crowd out another's. Must divide n_kv_heads. */
  kv_attend_t attend;        /* arkvale (default KV_ATTEND_RESIDENT: closer to the full cache than
                              * KV_ATTEND_TOPK at every budget measured, 1.0-3.2x lower KL in
                              * bench/results/fidelity-2026-11-25*.md) */
  size_t host_tier_bytes;    /* arkvale: backup capacity; 0 = every budgeted page of max_seqs
                              * sequences of max_seq_tokens */
  kv_tier_t *tier;           /* arkvale: a backup tier owned by the caller (it must outlive the
                              * pool); NULL = the pool creates a host tier of host_tier_bytes */
  int select_on_device;      /* arkvale over page_memory: the caller makes each decode step's
                              * selection where the pages are (kv_layer_select_row, then
                              * kv_layer_apply_recalls before kv_step_end); kv_layer_view then
                              * takes q == NULL and only lists the resident pages. The pool
                              * keeps no queries: page_ops->score_pages is called with q ==
                              * NULL for evictions and compaction, meaning the last query the
                              * caller saw for that (sequence, layer). Needs attend RESIDENT,
                              * score_groups 1 and a caller's tier (it reads the backups). */

  /* --- debugging and measurement --- */
  int check_every_step;      /* run kv_pool_check at every kv_step_end (default: 1 in Debug
                              * builds, 0 otherwise); a failure returns AK_ERR_INTERNAL */
  int track_accuracy;        /* arkvale, quest: at each selection also compute every page's true
                              * importance (max attention over its tokens, mean over heads;
                              * evicted pages read from the backup) and count how many of the
                              * true top-k the estimate selected (kv_stats_t.topk_*) */
  int track_token_attn;      /* full: keep each token's prompt attention (accumulated and
                              * last query's) so that kv_seq_branch can seed h2o and tova */
} kv_pool_params_t;

typedef struct kv_pool kv_pool_t;

/* How a pool over the caller's page memory reads and writes whole pages (page_bytes
 * each, the layout above) when a policy needs their bytes on the host: digesting and
 * backing up a page that filled, recalling one from the backup tier, reading K/V back.
 * Both calls must complete before returning (the buffer is reused at once) and be
 * ordered after every write the caller made to that page. */
typedef struct kv_page_ops {
  void *ctx;
  ak_status_t (*read_page)(void *ctx, int32_t page_id, void *dst_host, ak_err_t *err);
  ak_status_t (*write_page)(void *ctx, int32_t page_id, const void *src_host, ak_err_t *err);
  /* Optional, together: digests kept where the pages are, so estimates run there.
   * put_digest receives each filled page's digest ([n_kv_heads][kv_digest_floats] f32,
   * host, valid during the call) for (sequence, layer, logical page). score_pages writes
   * to host `scores` [n_pages] the scores of logical pages [0, n_pages) of (sequence,
   * layer) against q [n_heads * head_dim] (host), exactly as kv_digest_score_pages would
   * with the pool's digest kind and aggregation. */
  ak_status_t (*put_digest)(void *ctx, int32_t seq, int32_t layer, int64_t page_idx, const float *digest,
                            ak_err_t *err);
  ak_status_t (*score_pages)(void *ctx, int32_t seq, int32_t layer, const float *q, int64_t n_pages, float *scores,
                             ak_err_t *err);
  /* With select_on_device, q is NULL: score against the last query the caller saw
   * for (seq, layer) (that of the step's last token, including a prefill's). */
  /* Optional, with the two above: the same for n sequences of one layer in one call
   * (a decode step's selections), q [n][n_heads * head_dim], scores[i] [n_pages[i]]. */
  ak_status_t (*score_pages_batch)(void *ctx, int32_t layer, int32_t n, const int32_t *seqs, const float *q,
                                   const int64_t *n_pages, float *const *scores, ak_err_t *err);
  /* Optional, for a page that filled (arkvale, with the digest ops above):
   * build_digest (select_on_device pools only) digests physical page pg as (seq, layer,
   * page_idx) where the pages are (the pool then keeps no host copy of that digest and
   * fetches no bytes for it);
   * backup_page starts copying page pg's bytes into dst_host, a slot of the pool's tier
   * (kv_tier_reserve), without waiting: the copy must be complete before anything reads
   * that slot (a recall, kv_seq_read_kv) and before read_page/write_page return. Each is
   * used alone when present (backup_page only with a tier that can reserve). */
  ak_status_t (*build_digest)(void *ctx, int32_t seq, int32_t layer, int64_t page_idx, int32_t page_id,
                              ak_err_t *err);
  ak_status_t (*backup_page)(void *ctx, int32_t page_id, void *dst_host, ak_err_t *err);
} kv_page_ops_t;
typedef int32_t kv_seq_id_t;

/* Defaults for every field; the model-shape fields (n_layers, n_kv_heads, head_dim,
 * n_pages) are 0 and must be set. */
kv_pool_params_t kv_pool_params_default(void);

/* "full", "arkvale", "streaming", "h2o", "tova", "quest"; "unknown" otherwise. */
const char *kv_policy_name(kv_policy_t policy);
/* The policy named exactly by one of kv_policy_name's strings; AK_ERR_INVALID_ARG
 * quoting `name` otherwise. */
ak_status_t kv_policy_parse(const char *name, ak_err_t *err, kv_policy_t *policy_p);

/* Pages needed to hold n_tokens of one layer. */
int64_t kv_pages_for_tokens(int64_t n_tokens, int32_t page_tokens);
/* Bytes of one page (K and V, all heads) for these params. */
size_t kv_page_bytes(const kv_pool_params_t *p);
/* Resident pages one sequence of n_tokens holds in every layer together outside
 * prefill under these params (the full layers' pages plus the budgeted layers'
 * budgets): what a scheduler counts to admit it. */
int64_t kv_seq_pages_needed(const kv_pool_params_t *p, int64_t n_tokens);

/* AK_ERR_INVALID_ARG names the first bad field (including a budget that is not a
 * multiple of page_tokens, or smaller than sinks + window, for the page policies). */
ak_status_t kv_pool_create(const kv_pool_params_t *p, ak_err_t *err, kv_pool_t **pool_p);
void kv_pool_destroy(kv_pool_t *pool);
/* The last error of a call on this pool ("" if none). */
const char *kv_pool_errmsg(const kv_pool_t *pool);
const kv_pool_params_t *kv_pool_params(const kv_pool_t *pool);
/* 1 if kv_layer_view reads the queries (every policy but full without tracking): a
 * caller whose queries live elsewhere (the GPU) copies them to the host only then. */
int kv_pool_wants_queries(const kv_pool_t *pool);
/* Middle pages arkvale selects per decode step (topk_pages resolved); 0 for other
 * policies. */
int32_t kv_pool_topk_pages(const kv_pool_t *pool);
/* Bytes of the backup tier a pool with these params uses: host_tier_bytes, or by default
 * room for every budgeted page of max_seqs sequences of max_seq_tokens. */
size_t kv_pool_tier_bytes(const kv_pool_params_t *p);

/* --- sequences --- */
/* A new empty sequence. AK_ERR_POOL_FULL when max_seqs are live. */
ak_status_t kv_seq_create(kv_pool_t *pool, kv_seq_id_t *seq_p);
/* Frees every page and backup of the sequence at once; AK_ERR_NOT_FOUND for an
 * unknown id. Not allowed between kv_step_begin and kv_step_end/abort for a sequence
 * in the step. */
ak_status_t kv_seq_release(kv_pool_t *pool, kv_seq_id_t seq);
/* Tokens stored for the sequence (its next token's position); -1 when unknown. */
int64_t kv_seq_n_tokens(const kv_pool_t *pool, kv_seq_id_t seq);
/* Brings every budgeted layer of the sequence down to its budget now (the end of a
 * prefill; see "Prefill" above). A no-op for full and quest, or when already within
 * budget. Never allocates pages. */
ak_status_t kv_seq_compact(kv_pool_t *pool, kv_seq_id_t seq);

/* Reads K and V of tokens [tok0, tok0 + n_tok) of one layer as f32, [n_tok, n_kv_heads,
 * head_dim] each (k or v may be NULL), from resident pages or from backups.
 * AK_ERR_RANGE past the sequence; AK_ERR_NOT_FOUND for a token a permanent-eviction
 * policy dropped. */
ak_status_t kv_seq_read_kv(kv_pool_t *pool, kv_seq_id_t seq, int32_t layer_idx, int64_t tok0, int64_t n_tok,
                           float *k, float *v);
/* The query ([n_heads, head_dim] f32, after RoPE) of the sequence's last token in its
 * latest step, for one layer. AK_ERR_NOT_FOUND before its first step. */
ak_status_t kv_seq_last_query(const kv_pool_t *pool, kv_seq_id_t seq, int32_t layer_idx, float *q);

/* A new sequence in `dst` holding the same tokens as src_seq in `src` (K, V, each
 * layer's last query, and the prompt attention when src tracks it): the same prefill
 * continued under another policy, budget or page size, without recomputing it. The
 * pools must agree on n_layers, n_kv_heads, n_heads and head_dim; src_seq must have
 * every token readable (a full or arkvale pool) and no step open. dst comes down to
 * its budget as after its own prefill (kv_seq_compact). cpu stores the pages. h2o and tova targets need
 * src.track_token_attn (AK_ERR_INVALID_ARG otherwise). On failure dst is unchanged. */
ak_status_t kv_seq_branch(kv_pool_t *dst, kv_pool_t *src, kn_cpu_t *cpu, kv_seq_id_t src_seq,
                          kv_seq_id_t *dst_seq_p);

/* --- steps --- */
typedef struct {
  int32_t n_seqs;
  const kv_seq_id_t *seqs;     /* [n_seqs], distinct */
  const int32_t *n_new_tokens; /* [n_seqs], >= 1 */
} kv_batch_t;

/* Reserves pages for the batch's new tokens in every layer. The batch's tokens are
 * ordered sequence by sequence (the order the forward pass uses for its rows). The
 * batch arrays are copied. On failure (AK_ERR_POOL_FULL for device pages or backup
 * room, AK_ERR_INVALID_ARG, AK_ERR_NOT_FOUND, AK_ERR_RANGE past max_seq_tokens) the
 * sequences hold the same tokens as before (a compaction due may have happened). */
ak_status_t kv_step_begin(kv_pool_t *pool, const kv_batch_t *batch);

/* Absolute positions of the step's tokens ([n_tok], valid until the next begin). */
const int32_t *kv_step_positions(const kv_pool_t *pool, int64_t *n_tok_p);

/* Stores the new tokens' K and V for one layer: k, v [n_tok, n_kv_heads, head_dim] f32
 * (K after RoPE). Digests and backs up the pages that fill. A failure (a backup tier
 * that refuses a put) leaves the step to be aborted. */
ak_status_t kv_layer_append(kv_pool_t *pool, kn_cpu_t *cpu, int32_t layer_idx, const float *k,
                            const float *v);

/* Where the step's tokens go in one layer, for a caller that stores K/V itself
 * (page_memory): token t of the step goes to page (*page_p)[t], slot (*slot_p)[t].
 * Arrays owned by the pool, valid until the next call on it. */
ak_status_t kv_layer_slots(kv_pool_t *pool, int32_t layer_idx, const int32_t **page_p, const int32_t **slot_p);
/* After the caller has stored a layer's K/V at those slots (and before kv_layer_view):
 * digests and backs up, through page_ops, the pages the step filled. page_memory pools
 * only. */
ak_status_t kv_layer_commit(kv_pool_t *pool, int32_t layer_idx);

/* Fills args->kv, args->tok_seq_idx and args->tok_kv_len (arrays owned by the pool,
 * valid until the next call on it) for attention of the step's tokens in one layer,
 * after the policy's estimate, selection and recalls. q: [n_tok, n_heads, head_dim]
 * f32 queries after RoPE; n_heads must equal the pool's. Every other field of args is
 * the caller's. Call it once per layer per step, after kv_layer_append. */
ak_status_t kv_layer_view(kv_pool_t *pool, int32_t layer_idx, const float *q, int32_t n_heads,
                          kn_attn_args_t *args);
/* kv_layer_view with the page list written to the caller's `indices` (room for `cap`
 * entries; args->kv.indices points there): a caller that stages the list somewhere of
 * its own (the CUDA forward's pinned upload area) saves a copy of it. AK_ERR_INVALID_ARG,
 * before anything changes, when cap is below the pages the view could list (the step's
 * sequences' pages in this layer). */
ak_status_t kv_layer_view_into(kv_pool_t *pool, int32_t layer_idx, const float *q, int32_t n_heads,
                               int32_t *indices, int64_t cap, kn_attn_args_t *args);

/* --- selections made by the caller (select_on_device) ---
 * For each step sequence i (batch order) and layer, after kv_layer_view: whether the
 * layer selects for it this step (an arkvale budgeted layer, a decode token, more pages
 * than the budget) and the tables a selection reads, as kv_select's rules use them
 * (kn_cuda_arkvale_plan implements them on the GPU): candidates are logical pages
 * [n_sink, n_pages - n_window), k = kv_pool_topk_pages. The arrays are the pool's and
 * stay valid until the step ends. */
typedef struct {
  int selects;                 /* 0: nothing to decide (the view is final) */
  kv_seq_id_t seq;             /* the pool's id of the sequence (its digest/query slot) */
  int64_t n_pages;             /* logical pages, the step's included */
  int32_t n_sink;
  int32_t n_window;
  const int32_t *phys;         /* [n_pages] logical -> physical page, KV_PAGE_NONE if evicted */
  const kv_backup_id_t *backup; /* [n_pages] backup ids (every filled page has one) */
} kv_select_row_t;
ak_status_t kv_layer_select_row(kv_pool_t *pool, int32_t layer_idx, int32_t i, kv_select_row_t *row_p);
/* The caller's selection for step sequence i at a layer, after it copied the backups of
 * the missing pages into the slots of the victims: recall r of n took logical page
 * page[r]'s backup into the physical page of logical page victim[r], which is evicted.
 * Entries with page[r] < 0 end the list. Checked before anything changes: each page
 * must be a non-resident candidate with a backup, each victim a resident candidate, none
 * twice (AK_ERR_INVALID_ARG naming the entry). Counts recalls, evictions and bytes. */
ak_status_t kv_layer_apply_recalls(kv_pool_t *pool, int32_t layer_idx, int32_t i, int32_t n, const int32_t *page,
                                   const int32_t *victim);
/* A sequence's page table for one layer (page policies): (*phys_p)[j] is logical page
 * j's physical page or KV_PAGE_NONE, j < *n_pages_p. Valid until the next call that
 * changes the pool. */
ak_status_t kv_seq_page_table(const kv_pool_t *pool, kv_seq_id_t seq, int32_t layer_idx, const int32_t **phys_p,
                              int64_t *n_pages_p);

/* Ends the step; AK_ERR_INTERNAL if check_every_step finds a broken invariant. */
ak_status_t kv_step_end(kv_pool_t *pool);
/* Undoes kv_step_begin: the pages it reserved are returned. No-op without a step. */
void kv_step_abort(kv_pool_t *pool);

/* --- accounting --- */
/* Counters of work done, for a sequence or the pool (the pool's are since create and
 * include released sequences). Times are wall-clock microseconds on this thread. */
typedef struct {
  uint64_t n_steps;          /* steps the sequence took part in */
  uint64_t n_selects;        /* (layer, step) pairs that ran estimate + select */
  uint64_t recalls;          /* pages copied back from the backup tier */
  uint64_t evictions;        /* resident pages given up (backed up, or dropped for good) */
  uint64_t drops;            /* of those, dropped for good (streaming, h2o, tova; in tokens
                              * for h2o and tova) */
  uint64_t backups;          /* pages put to the backup tier */
  uint64_t bytes_recalled;   /* tier -> device */
  uint64_t bytes_backed_up;  /* device -> tier */
  double estimate_us;        /* scoring digests */
  double select_us;          /* top-k and choosing victims */
  double recall_us;          /* copies from the tier */
  uint64_t topk_selected;    /* track_accuracy: true top-k pages the estimate also chose */
  uint64_t topk_total;       /* track_accuracy: true top-k pages (k per selection) */
} kv_stats_t;

/* Where one sequence's pages are now, over all layers. */
typedef struct {
  int64_t n_tokens;
  int64_t n_pages_logical;   /* pages its tokens span (all layers) */
  int64_t n_pages_resident;  /* device pages held */
  int64_t n_pages_backed_up; /* pages with a backup */
  int64_t n_tokens_resident; /* token policies: tokens kept; else resident pages' tokens */
  size_t digest_bytes;       /* digests stored for it (device memory in the CUDA backend) */
  size_t backup_bytes;       /* its bytes in the backup tier */
  kv_stats_t work;
} kv_seq_stats_t;
ak_status_t kv_seq_get_stats(const kv_pool_t *pool, kv_seq_id_t seq, kv_seq_stats_t *stats_p);

typedef struct {
  int32_t n_seqs;              /* live sequences */
  int64_t n_pages_total;       /* capacity */
  int64_t n_pages_used;        /* held by sequences (all layers) */
  size_t page_bytes;
  size_t pool_bytes;           /* page memory */
  size_t table_bytes;          /* page tables, scores, queries and step scratch */
  size_t digest_bytes;         /* digests of live sequences */
  int64_t n_backups;           /* blobs in the backup tier */
  size_t backup_bytes;         /* bytes in the backup tier */
  size_t backup_capacity_bytes;
  kv_stats_t work;             /* since create */
  kv_stats_t last_step;        /* the latest step alone (begin to end; not kv_seq_compact or
                                * kv_seq_branch between steps) */
} kv_pool_stats_t;
void kv_pool_get_stats(const kv_pool_t *pool, kv_pool_stats_t *stats_p);

/* Debug check of every invariant: each used page owned by exactly one (sequence,
 * layer, logical page), free list consistent, counts match; for budgeted layers,
 * sinks and window resident, at most budget_pages resident outside prefill, every
 * non-resident page backed up (arkvale) and every filled page digested. AK_ERR_INTERNAL
 * with a message if not. */
ak_status_t kv_pool_check(kv_pool_t *pool);

#ifdef __cplusplus
}
#endif
#endif
