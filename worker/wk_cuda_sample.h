/* wk_cuda_sample: what a step that samples on the device is asked to draw, one entry
 * per sequence of the batch: wk_sampler's parameters (same meanings and ranges,
 * wk_sampler.h) plus the tokens its repetition penalty looks at and the (seed, step) of
 * a counter-based draw. Plain host data, built and checked without a GPU;
 * wk_engine_step_sampled (wk_forward_cuda_run_sampled) takes it, and the forward's
 * staging (wk_cuda_sampler.h) moves it to the device for kn_cuda_sample.
 *
 * Differences from the host wk_sampler, which callers must accept or fall back from:
 *  - The draw is a pure function of (logits, seed, step): a different PRNG from
 *    wk_sampler's xoshiro stream, so temperature > 0 draws other (equally distributed)
 *    tokens. Greedy picks the same token (argmax after the penalty, lowest id on ties).
 *  - The penalty history is at most WK_CUDA_SAMPLE_MAX_HISTORY_IDS tokens per sequence
 *    (device buffers are sized at create, nothing is allocated in a step), over a
 *    vocabulary of at most WK_CUDA_SAMPLE_PENALTY_MAX_VOCAB. A request past either is
 *    AK_ERR_UNSUPPORTED: the caller samples that step on the host
 *    (wk_cuda_sample_request says so before the step).
 *  - A row with no finite logit gets some id instead of an error. */
#ifndef WK_CUDA_SAMPLE_H
#define WK_CUDA_SAMPLE_H

#include <stdint.h>

#include "ak_status.h"
#include "wk_sampler.h"

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
 * WK_CUDA_SAMPLE_PENALTY_MAX_VOCAB): the host sampler takes those. Needs no GPU. */
ak_status_t wk_cuda_sample_check(const wk_cuda_sample_t *req, int32_t n_seqs, int32_t n_vocab, ak_err_t *err);

/* The request for `smp`'s next draw, so that the device draws under the parameters and
 * penalty window wk_sampler_sample would use: smp's parameters, the draw's `step`, and
 * the window = smp's history followed by `pending` (this step's tokens, not yet
 * wk_sampler_accept'ed; may be NULL with n_pending 0), its last repeat_last_n ids,
 * copied into `window` ([WK_CUDA_SAMPLE_MAX_HISTORY_IDS]).
 * Returns 0 when the device cannot take it (sample on the host): a window longer than
 * WK_CUDA_SAMPLE_MAX_HISTORY_IDS, or a window over a vocabulary (smp's n_vocab) past
 * WK_CUDA_SAMPLE_PENALTY_MAX_VOCAB. So callers decide before the step, and an error of
 * wk_engine_step_sampled is the step's own. */
int wk_cuda_sample_request(const wk_sampler_t *smp, int64_t n_vocab, const int32_t *pending, int64_t n_pending,
                           uint64_t step, int32_t *window, wk_cuda_sample_seq_t *req);

#ifdef __cplusplus
}
#endif
#endif
