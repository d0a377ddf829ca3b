/* wk_forward_cuda: the Llama forward pass on the GPU (the CUDA backend's twin of
 * wk_forward.h, same batch struct and the same kvpool step API).
 *
 * Per step: token ids and positions go up once; per layer, the pool's page table
 * for the layer (kv_layer_slots + kv_layer_view, host side) goes up in one copy from a
 * pinned staging area, and every op runs on the forward's stream: fused residual +
 * RMSNorm, bf16 GEMMs (cuBLASLt; the residual adds are GEMM accumulations), RoPE, the
 * K/V store into pages, paged attention. Only the rows whose logits are wanted go
 * through the vocab projection; the logits come back to the host (or are sampled on
 * the device and only token ids come back: wk_forward_cuda_run_sampled), and the step
 * ends with one stream synchronization (the staging area is reused by the next step).
 *
 * The pool lives over device page memory (kv_pool_params_t.page_memory) with f16
 * pages. full needs nothing more; arkvale, quest and streaming also take this forward's
 * page_ops. arkvale with select_on_device (and wk_forward_cuda_device_tier) decides on
 * the device: per layer one digest-score launch, one plan launch (top-k, victims, page
 * table, view) and one gather of the recalls from pinned host memory, with no host
 * round trip; the pool learns the swaps after the step. Otherwise the host decides: the
 * step's queries come down once per layer and each recalled page crosses PCIe with one
 * synchronous copy. Filled pages are digested and backed up through the host either way
 * (one synchronous copy per page, once every page_tokens steps).
 *
 * Not thread-safe: one owning thread per wk_forward_cuda_t. */
#ifndef WK_FORWARD_CUDA_H
#define WK_FORWARD_CUDA_H

#include <stdint.h>

#include "kn_cuda.h"
#include "kvpool.h"
#include "wk_cuda_sample.h"
#include "wk_forward.h"
#include "wk_model_cuda.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct wk_forward_cuda wk_forward_cuda_t;

/* Device scratch for batches of up to max_batch_tokens rows over pools shaped like
 * `kv` (its max_seqs, max_seq_tokens and page_tokens size the page-table staging and
 * the attention split). */
ak_status_t wk_forward_cuda_create(const wk_model_cuda_t *model, const kv_pool_params_t *kv,
                                   int32_t max_batch_tokens, ak_err_t *err, wk_forward_cuda_t **fw_p);
void wk_forward_cuda_destroy(wk_forward_cuda_t *fw);

/* The page_ops (kvpool.h) through which a pool shaped by `kp` over `page_memory`
 * (device memory of kp->n_pages pages) reaches page bytes on this forward's stream:
 * give them to kv_pool_params_t.page_ops so that arkvale, quest and streaming can run.
 * For arkvale and quest they also keep every page's digest on the device (a store of
 * max_seqs x n_layers x max pages per sequence digests, allocated here) and score there.
 * Owned by fw. */
ak_status_t wk_forward_cuda_page_ops(wk_forward_cuda_t *fw, void *page_memory, const kv_pool_params_t *kp,
                                     ak_err_t *err, const kv_page_ops_t **ops_p);

/* For a select_on_device arkvale pool (after wk_forward_cuda_page_ops for it): the
 * backup tier to put in kv_pool_params_t.tier, host memory pinned and mapped so that
 * recalls are one gather kernel per layer. Owned by fw; destroy the pool first.
 * alias_slab_bytes: 0 for a real pool; bench_decode's synthetic throughput rows may cap
 * the pinned memory, its slots then alias (wk_arkvale_cuda_tier, kv_tier.h). */
ak_status_t wk_forward_cuda_device_tier(wk_forward_cuda_t *fw, const kv_pool_params_t *kp, size_t alias_slab_bytes,
                                        ak_err_t *err, kv_tier_t **tier_p);

/* Runs the batch and appends its tokens to each sequence in `pool`; logits (when
 * wanted) are copied to the host array. On failure the pool is as before the call and
 * the outputs are not valid: a step replayed from a graph leaves them untouched, one
 * launched kernel by kernel may have written logits. */
ak_status_t wk_forward_cuda_run(wk_forward_cuda_t *fw, kv_pool_t *pool, const wk_forward_batch_t *batch,
                                ak_err_t *err);

/* As wk_forward_cuda_run, and samples the next token of every sequence on the device
 * (wk_cuda_sample.h) right after the vocab projection, on the forward's stream: only
 * sample->token_ids (and logprobs) come back, in the step's one synchronization. The
 * logits also come back when batch->logits is set. `sample` NULL is wk_forward_cuda_run.
 * Refused before the pool changes: AK_ERR_INVALID_ARG for batch->logits_all set or a
 * wrong request, AK_ERR_UNSUPPORTED for one past the device's caps (wk_cuda_sample_check:
 * the caller then samples on the host). Works on the graph path too: the
 * request goes up before the graph, whose kernels read it at fixed addresses; turning
 * sampling on or off re-captures. */
ak_status_t wk_forward_cuda_run_sampled(wk_forward_cuda_t *fw, kv_pool_t *pool, const wk_forward_batch_t *batch,
                                        const wk_cuda_sample_t *sample, ak_err_t *err);

/* Decode steps on full pools replayed from a CUDA graph (default) or launched one
 * kernel at a time (to compare). */
void wk_forward_cuda_use_graphs(wk_forward_cuda_t *fw, int enabled);
/* Steps replayed from a graph, and graph captures, since create (the graph path runs
 * decode steps of full pools, and of arkvale pools deciding on the device when the step
 * fills no page). */
void wk_forward_cuda_graph_counts(const wk_forward_cuda_t *fw, int64_t *launches, int64_t *captures);

/* Which kernel takes decode-sized GEMMs (kn_cuda_decode_gemm_t: AUTO by default,
 * or one forced, to compare). */
ak_status_t wk_forward_cuda_set_decode_gemm(wk_forward_cuda_t *fw, kn_cuda_decode_gemm_t mode, ak_err_t *err);

/* Where a step's GPU time goes, from CUDA events (milliseconds, summed over layers):
 * tables = the K/V store and the page tables' upload (and, selecting on the device, the
 * kept queries and the plan's tables); estimate = digest scoring; select = the plan;
 * recall = the gather; attention = the attention kernel; total = the whole step on the
 * stream, first kernel to last copy. Only ArkVale on the device fills estimate, select
 * and recall. Profiling runs the step without a CUDA graph and adds a few microseconds. */
typedef struct {
  double tables_ms, estimate_ms, select_ms, recall_ms, attention_ms, total_ms;
} wk_cuda_profile_t;
ak_status_t wk_forward_cuda_profile(wk_forward_cuda_t *fw, int enabled, ak_err_t *err);
/* The last run's profile (zeros unless profiling was on for it). */
void wk_forward_cuda_last_profile(const wk_forward_cuda_t *fw, wk_cuda_profile_t *p);

/* Wall time of the last run, microseconds, split as wk_forward_timing_t (on the GPU the
 * phases overlap the host's work, so only the total is exact). */
void wk_forward_cuda_last_timing(const wk_forward_cuda_t *fw, wk_forward_timing_t *t_p);

#ifdef __cplusplus
}
#endif
#endif
