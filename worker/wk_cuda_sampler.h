/* wk_cuda_sampler: next-token sampling inside a GPU forward step, so that only token
 * ids (and logprobs) cross PCIe instead of [n_seqs, n_vocab] logits.
 *
 * The request (wk_cuda_sample_t) is plain host data, one entry per sequence of the
 * batch: wk_sampler's parameters (same meanings and ranges, wk_sampler.h) plus the
 * tokens its repetition penalty looks at and the (seed, step) of a counter-based draw.
 * wk_forward_cuda_run_sampled takes it; kn_cuda_sample (kn_cuda.h) does the work.
 *
 * Differences from the host wk_sampler, which callers must accept or fall back from:
 *  - The draw is a pure function of (logits, seed, step): a different PRNG from
 *    wk_sampler's xoshiro stream, so temperature > 0 draws other (equally distributed)
 *    tokens. Greedy picks the same token (argmax after the penalty, lowest id on ties).
 *  - The penalty history is at most WK_CUDA_SAMPLE_MAX_HISTORY_IDS tokens per sequence
 *    (device buffers are sized at create, nothing is allocated in a step). A longer
 *    request is AK_ERR_UNSUPPORTED: the caller samples that step on the host.
 *  - A row with no finite logit gets some id instead of an error.
 *
 * The staging object (wk_cuda_sampler_t) is the forward's: pinned host and device
 * buffers for max_seqs rows, laid out as
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

#ifdef __cplusplus
extern "C" {
#endif

/* Penalty history per sequence that the device can take. */
#define WK_CUDA_SAMPLE_MAX_HISTORY_IDS 1024
/* The largest vocabulary the device penalises (kn_cuda.h's KN_CUDA_SAMPLE_PENALTY_MAX_VOCAB,
 * repeated here for builds without the CUDA backend; wk_cuda_sampler.c checks they agree). */
#define WK_CUDA_SAMPLE_PENALTY_MAX_VOCAB (40 * 1024 * 8)

typedef struct {
  float temperature;          /* finite, >= 0; 0 = greedy */
  int32_t top_k;              /* >= 0; 0 = off */
  float top_p;                /* (0, 1]; 1 = off */
  float min_p;                /* [0, 1); 0 = off */
  float repetition_penalty;   /* finite, > 0; 1 = off */
  uint64_t seed;
  uint64_t step;              /* the draw hashes (seed, step): advance it every draw */
  const int32_t *history_ids; /* [n_history_ids] host, ids in [0, n_vocab); may be NULL when 0 */
  int32_t n_history_ids;      /* 0..WK_CUDA_SAMPLE_MAX_HISTORY_IDS */
} wk_cuda_sample_seq_t;

/* A row that only needs the argmax: greedy, no filter, no penalty. */
static inline wk_cuda_sample_seq_t wk_cuda_sample_seq_greedy(void) {
  wk_cuda_sample_seq_t r = {0};
  r.top_p = 1.0f, r.repetition_penalty = 1.0f;
  return r;
}

typedef struct {
  const wk_cuda_sample_seq_t *seqs; /* [n_seqs] in the batch's sequence order */
  int32_t *token_ids;               /* [n_seqs] host out */
  float *logprobs;                  /* [n_seqs] host out (wk_sampler's logprob), or NULL */
} wk_cuda_sample_t;

/* Checks a request for a batch of n_seqs over n_vocab tokens, else AK_OK; errors name
 * seqs[i] and the field. AK_ERR_INVALID_ARG for a wrong request; AK_ERR_UNSUPPORTED for
 * a valid one past the device's caps (a penalty history beyond
 * WK_CUDA_SAMPLE_MAX_HISTORY_IDS, a penalty over a vocabulary beyond
 * KN_CUDA_SAMPLE_PENALTY_MAX_VOCAB): the host sampler takes those. Needs no GPU. */
ak_status_t wk_cuda_sample_check(const wk_cuda_sample_t *req, int32_t n_seqs, int32_t n_vocab, ak_err_t *err);

/* ---- the forward's staging object (worker-internal: wk_forward_cuda.c) ---- */

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
