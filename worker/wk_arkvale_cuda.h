/* wk_arkvale_cuda: the GPU side of the page policies for wk_forward_cuda — each page's
 * digest on the device, estimates scored there, and for arkvale pools that select on the
 * device (kv_pool_params_t.select_on_device) the whole per-layer decision: score every
 * page of the layer's selecting sequences (one launch), plan top-k / victims / recalls
 * and rewrite the attention view (kn_cuda_arkvale_plan, one launch), and recall the
 * missing pages from a pinned, device-mapped host tier (kn_cuda_gather_pages, one
 * launch). Nothing waits on the host inside a step; the pool learns the swaps after the
 * step's synchronization (wk_arkvale_cuda_apply), before kv_step_end.
 *
 * Device state (all fixed at create, nothing allocated in a step):
 *   digests   [n_layers][max_seqs][max_pages] rows of n_kv_heads * digest floats, in
 *             the pages' dtype (f16) for the cuboid kinds (half the bytes the per-step
 *             scan reads; bounds rounded outward, exact for cuboid-max), f32 otherwise
 *   last_q    [n_layers][max_seqs][n_heads * head_dim]: each sequence's last query per
 *             budgeted layer (what the pool's evictions score against, q == NULL)
 *   per layer a copy of the selecting rows' page tables and backup slots, and the plan's
 *   recall lists (the host reads them after the step)
 *
 * Not thread-safe: it runs on its forward's stream and thread. */
#ifndef WK_ARKVALE_CUDA_H
#define WK_ARKVALE_CUDA_H

#include <stdint.h>

#include "kn_cuda.h"
#include "kvpool.h"
#include "wk_model.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct wk_arkvale_cuda wk_arkvale_cuda_t;

/* For pools shaped by kp (arkvale or quest with a budget) over pages of page_bytes at
 * device address page_memory, forwards of up to max_tok rows, on `stream`. */
ak_status_t wk_arkvale_cuda_create(const wk_hparams_t *hp, const kv_pool_params_t *kp, void *page_memory,
                                   int32_t max_tok, kn_cuda_stream_t stream, ak_err_t *err,
                                   wk_arkvale_cuda_t **ak_p);
void wk_arkvale_cuda_destroy(wk_arkvale_cuda_t *ak);

/* page_ops' put_digest and score_pages_batch (kvpool.h): q is host [n][n_heads *
 * head_dim], or NULL for each sequence's last query kept on the device. put_digest
 * narrows a cuboid digest to the store's 16 bits on the host (kn_cuda_digest_narrow),
 * so it stores what build_digest would from the same pages. */
ak_status_t wk_arkvale_cuda_put_digest(wk_arkvale_cuda_t *ak, int32_t seq, int32_t layer, int64_t page_idx,
                                       const float *digest, ak_err_t *err);
ak_status_t wk_arkvale_cuda_score(wk_arkvale_cuda_t *ak, int32_t layer, int32_t n, const int32_t *seqs,
                                  const float *q, const int64_t *n_pages, float *const *scores, ak_err_t *err);

/* page_ops' build_digest and backup_page for select_on_device pools (kvpool.h): the
 * digest built on the stream (kn_cuda_digest_build) into the device store, the page
 * copied on the stream into its tier slot (pinned memory); neither waits. */
ak_status_t wk_arkvale_cuda_build_digest(wk_arkvale_cuda_t *ak, int32_t seq, int32_t layer, int64_t page_idx,
                                         int32_t page_id, ak_err_t *err);
ak_status_t wk_arkvale_cuda_backup_page(wk_arkvale_cuda_t *ak, int32_t page_id, void *dst_host, ak_err_t *err);
/* Backups run on a copy stream ordered after the write that filled the page (an event);
 * this makes the compute stream wait for every backup queued so far. The launches call it
 * before a gather (a victim's slot may be a page being copied); the forward calls it
 * at a step's start (before any capture: fills committed between steps) and before it
 * synchronizes at the step's end, and before the host writes a page. */
ak_status_t wk_arkvale_cuda_join_backups(wk_arkvale_cuda_t *ak, ak_err_t *err);

/* select_on_device: the backup tier for the pool (kv_pool_params_t.tier), a host tier
 * over pinned memory the gather kernel reads. Owned by ak (destroy the pool first).
 * alias_slab_bytes 0: the pinned slab holds every slot; otherwise (benchmarks over
 * synthetic K/V only) a slab of that many bytes whose slots alias (kv_tier.h). */
ak_status_t wk_arkvale_cuda_tier(wk_arkvale_cuda_t *ak, const kv_pool_params_t *kp, size_t alias_slab_bytes,
                                 ak_err_t *err, kv_tier_t **tier_p);

/* A new step: forgets the last step's recall lists. */
void wk_arkvale_cuda_step_begin(wk_arkvale_cuda_t *ak);

/* One budgeted layer of a select_on_device pool, after kv_layer_view (whose view is
 * already on its way to the device at d_indptr / d_indices) and the K/V store: keeps
 * each of the step's n_seqs sequences' last query (d_q: [n_tok][n_heads * head_dim],
 * the step's rows; tok_seq_idx, host: each row's sequence in the step), then for
 * the sequences the layer selects for, scores, plans (rewriting their part of
 * d_indices) and gathers the recalls. All on the stream. */
ak_status_t wk_arkvale_cuda_layer(wk_arkvale_cuda_t *ak, kv_pool_t *pool, int32_t layer, int32_t n_seqs,
                                  const int32_t *tok_seq_idx, int64_t n_tok, const float *d_q,
                                  const int32_t *d_indptr, int32_t *d_indices, ak_err_t *err);
/* The same in two halves, so that a decode step's launches can be captured into a CUDA
 * graph: stage (host only: the layer's tables into pinned staging, nothing on the
 * stream) for every layer, upload (one copy of every layer's tables), then launch
 * (device only; upload 0: the tables are up already) inside the captured step. A layer
 * of a pool that does not select on the device, or below n_full_layers, does nothing.
 * graph_key: a digest of what the launches bake in (sequences, top-k, rows, which
 * layers select): a graph captured under another key must be captured again. */
ak_status_t wk_arkvale_cuda_stage(wk_arkvale_cuda_t *ak, kv_pool_t *pool, int32_t layer, int32_t n_seqs,
                                  const int32_t *tok_seq_idx, int64_t n_tok, ak_err_t *err);
ak_status_t wk_arkvale_cuda_upload(wk_arkvale_cuda_t *ak, ak_err_t *err);
ak_status_t wk_arkvale_cuda_launch(wk_arkvale_cuda_t *ak, int32_t layer, const float *d_q, const int32_t *d_indptr,
                                   int32_t *d_indices, int upload, ak_err_t *err);
int64_t wk_arkvale_cuda_graph_key(const wk_arkvale_cuda_t *ak);
/* Page fills (build_digest, backup_page) launched so far: a graph step must make none. */
int64_t wk_arkvale_cuda_fill_ops(const wk_arkvale_cuda_t *ak);

/* Profiling: when marks is non-NULL (4 cudaEvent_t), the next wk_arkvale_cuda_layer
 * records them on the stream after its copies, the scoring, the plan and the gather (all
 * four are recorded whether or not the layer selected). NULL turns it off. */
void wk_arkvale_cuda_set_marks(wk_arkvale_cuda_t *ak, void *marks);

/* After the step's stream synchronization: gives the pool every recall the device made
 * (kv_layer_apply_recalls), before kv_step_end or kv_step_abort. AK_ERR_INTERNAL if the
 * pool refuses one (the device and the pool disagree). */
ak_status_t wk_arkvale_cuda_apply(wk_arkvale_cuda_t *ak, kv_pool_t *pool, ak_err_t *err);

#ifdef __cplusplus
}
#endif
#endif
