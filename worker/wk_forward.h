/* wk_forward: the Llama forward pass over a batch of sequences on the CPU backend.
 *
 * A batch holds any number of sequences of any lengths, each bringing one or more new
 * tokens (a prompt chunk, or one token while decoding): their tokens are the rows of
 * every activation, sequence by sequence. K and V go through kvpool's step API, so the
 * cache policy (full today, ArkVale next) is invisible here.
 *
 * Not thread-safe: one owning thread per wk_forward_t (it owns scratch buffers). */
#ifndef WK_FORWARD_H
#define WK_FORWARD_H

#include <stdint.h>

#include "kernels.h"
#include "kvpool.h"
#include "wk_model.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct wk_forward wk_forward_t;

/* max_batch_tokens bounds the rows of one call (scratch is sized for it). */
ak_status_t wk_forward_create(const wk_model_t *model, kn_cpu_t *cpu, int32_t max_batch_tokens, ak_err_t *err,
                              wk_forward_t **fw_p);
void wk_forward_destroy(wk_forward_t *fw);

typedef struct {
  kv_batch_t seqs;        /* sequences and their new-token counts */
  const int32_t *tokens;  /* [n_tok] token ids, sequence by sequence */
  int logits_all;         /* 0: logits of each sequence's last new token; 1: of every token */
  float *logits;          /* [n_seqs or n_tok, n_vocab] f32 out; NULL: none wanted (a
                           * prompt chunk that is not the last skips the vocab projection) */
} wk_forward_batch_t;

/* Runs the batch and appends its tokens to each sequence in `pool`. On failure the
 * pool is as before the call (the step is aborted) and `err` says why. */
ak_status_t wk_forward_run(wk_forward_t *fw, kv_pool_t *pool, const wk_forward_batch_t *batch, ak_err_t *err);

/* Time spent in the last run's phases, microseconds (for the benchmark breakdown). */
typedef struct {
  double matmul_us;
  double attention_us;
  double other_us;
  double logits_us;
} wk_forward_timing_t;
void wk_forward_last_timing(const wk_forward_t *fw, wk_forward_timing_t *t_p);

#ifdef __cplusplus
}
#endif
#endif
