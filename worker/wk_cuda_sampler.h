/* wk_cuda_sampler: the forward's staging for sampling inside a GPU step
 * (wk_cuda_sample.h says what is asked), so that only token ids (and logprobs) cross
 * PCIe instead of [n_seqs, n_vocab] logits. Worker-internal: wk_forward_cuda.c owns it.
 *
 * Pinned host and device buffers for max_seqs rows, laid out as
 *
 *   [rows: max_seqs x kn_cuda_sample_row_t][history: max_seqs x MAX_HISTORY int32]
 *   [out ids: max_seqs int32][out logprobs: max_seqs f32]
 *
 * rows and the used prefix of history go up in one copy before the step's kernels;
 * ids and logprobs come down in one copy at its end, before the step's synchronization.
 * Every device address and launch size except n_rows is fixed at create, so a captured
 * CUDA graph stays valid from step to step while the request's values change.
 * Not thread-safe: one owning thread (the forward's). */
#ifndef WK_CUDA_SAMPLER_H
#define WK_CUDA_SAMPLER_H

#include <stdint.h>

#include "ak_status.h"
#include "wk_cuda_sample.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct wk_cuda_sampler wk_cuda_sampler_t;

ak_status_t wk_cuda_sampler_create(int32_t max_seqs, int32_t n_vocab, ak_err_t *err, wk_cuda_sampler_t **sm_p);
void wk_cuda_sampler_destroy(wk_cuda_sampler_t *sm);
/* Checks `req` (wk_cuda_sample_check), packs it into the pinned staging and queues its
 * upload on `stream` (a cudaStream_t). The staging must be idle: the previous step
 * synchronized. */
ak_status_t wk_cuda_sampler_stage(wk_cuda_sampler_t *sm, const wk_cuda_sample_t *req, int32_t n_seqs,
                                  void *stream, ak_err_t *err);
/* Queues the sampling kernel over d_logits ([n_seqs, n_vocab] f32, device) and the copy
 * of its outputs to the pinned staging. Capturable into a CUDA graph. */
ak_status_t wk_cuda_sampler_launch(wk_cuda_sampler_t *sm, const float *d_logits, int32_t n_seqs, void *stream,
                                   ak_err_t *err);
/* After the stream's synchronization: the outputs into req->token_ids / req->logprobs. */
void wk_cuda_sampler_finish(const wk_cuda_sampler_t *sm, const wk_cuda_sample_t *req, int32_t n_seqs);

#ifdef __cplusplus
}
#endif
#endif
