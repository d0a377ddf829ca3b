/* wk_sampler: picks the next token from one row of logits.
 *
 * One sampler per sequence: it owns the PRNG state and the token history that the
 * repetition penalty looks at, so two sequences never disturb each other's draws and
 * the same seed with the same inputs gives the same tokens on any machine.
 * Not for: batching rows, GPU sampling, grammar constraints, logit bias.
 *
 * Filters run in this order (each sees the output of the previous one):
 *
 *   logits ──► repetition penalty ──► top-k ──► softmax(logit / temperature)
 *          ──► top-p ──► min-p ──► renormalise ──► draw
 *
 * Candidates are ordered by logit, highest first, and by token id, lowest first, on
 * equal logits; every "keep the best n" decision and greedy's argmax use that order, so
 * ties always resolve to the lowest token id.
 *
 * Input values: NaN logits are treated as -inf (never chosen); +inf is treated as the
 * largest finite float. A row with no finite logit is AK_ERR_INVALID_ARG.
 *
 * Memory: all scratch (about 12 bytes per vocabulary entry, plus 4 per entry when the
 * penalty is on) is allocated once by wk_sampler_create through ak_host_alloc; sampling
 * allocates nothing.
 *
 * Cost: one pass over the row plus expected O(n) work; the vocabulary is never sorted
 * (a small top_k is a heap kept during the pass, top-p a selection on mass).
 *
 * Threads: a sampler has one owning thread; no call is thread-safe on the same handle.
 * Different handles are independent. */
#ifndef WK_SAMPLER_H
#define WK_SAMPLER_H

#include <stdint.h>

#include "ak_status.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct wk_sampler wk_sampler_t;

/* The largest repeat_last_n accepted: the history ring is allocated up front. */
#define WK_SAMPLER_MAX_REPEAT_LAST_N (1 << 20)

typedef struct {
  /* Logits are divided by it before the softmax. 0 = greedy: argmax after the penalty,
   * the other filters and the PRNG are not used. Finite, >= 0. */
  float temperature;
  /* Keep only the top_k highest logits. 0 = off; a value >= n_vocab is also a no-op. */
  int32_t top_k;
  /* Keep the smallest prefix of the sorted distribution whose mass is >= top_p
   * (nucleus sampling). In (0, 1]; 1 = off. */
  float top_p;
  /* Drop tokens whose probability is < min_p * (probability of the best token).
   * In [0, 1); 0 = off. */
  float min_p;
  /* llama.cpp semantics: a token seen in the last repeat_last_n accepted tokens has its
   * logit divided by the penalty when positive and multiplied by it otherwise; a token
   * seen several times is penalised once. > 0, finite; 1 = off. */
  float repetition_penalty;
  /* How many of the most recent accepted tokens the penalty looks at.
   * In [0, WK_SAMPLER_MAX_REPEAT_LAST_N]; 0 = no history. */
  int32_t repeat_last_n;
  /* Seeds the sampler's own PRNG (xoshiro256**). */
  uint64_t seed;
} wk_sampler_params_t;

/* Checks parameters for a vocabulary of n_vocab as wk_sampler_create does, else
 * AK_ERR_INVALID_ARG with a message that starts with the field ("top_p=1.5 outside ...").
 * Samplers that take these parameters elsewhere (the device's, wk_cuda_sample.h) check
 * with it too, so both accept exactly the same requests. */
ak_status_t wk_sampler_params_check(const wk_sampler_params_t *p, int64_t n_vocab, ak_err_t *err);

/* temperature 1 (the model's own distribution), every filter and the penalty off,
 * repeat_last_n 64, seed 0 (fixed, so runs reproduce; pass your own for variety). */
wk_sampler_params_t wk_sampler_params_default(void);

/* Creates a sampler for rows of n_vocab logits. `params` NULL means the defaults.
 * Returns AK_ERR_INVALID_ARG (the message names the field and its value) for an out of
 * range parameter or n_vocab outside [1, INT32_MAX], AK_ERR_NO_MEMORY when scratch
 * cannot be allocated. `*s_p` is written only on success. */
ak_status_t wk_sampler_create(const wk_sampler_params_t *params, int64_t n_vocab, ak_err_t *err,
                              wk_sampler_t **s_p);
/* Frees the sampler and its scratch; accepts NULL. */
void wk_sampler_destroy(wk_sampler_t *s);

/* Records a token in the penalty history: call it for each prompt token and for each
 * generated token (wk_sampler_sample does not record what it picks, so the caller
 * decides, e.g. after a stop check). With the penalty off it only validates.
 * AK_ERR_INVALID_ARG when token_id is outside [0, n_vocab); the history is then
 * unchanged. */
ak_status_t wk_sampler_accept(wk_sampler_t *s, int32_t token_id);

/* Draws one token from `logits` ([n_vocab] f32, not modified).
 * `*token_p` gets the token id. `logprob_p` may be NULL; otherwise it gets the natural
 * log of the chosen token's probability under the final distribution (after every
 * filter, renormalised). Greedy's final distribution puts all mass on the argmax, so
 * its logprob is 0.
 * Returns AK_ERR_INVALID_ARG for NULL pointers or a row with no finite logit; outputs
 * are written only on success and the PRNG advances only on success. */
ak_status_t wk_sampler_sample(wk_sampler_t *s, const float *logits, int32_t *token_p,
                              float *logprob_p);

/* Clears the history and re-seeds the PRNG with params.seed: the sampler then draws
 * exactly as a freshly created one. */
void wk_sampler_reset(wk_sampler_t *s);

/* The parameters the sampler was created with. */
const wk_sampler_params_t *wk_sampler_params(const wk_sampler_t *s);

/* What the repetition penalty looks at, for callers that sample elsewhere (on the
 * device, wk_cuda_sample.h): copies the most recent min(n, cap) ids of the history,
 * oldest first, into `ids` ([cap]), and returns n, the number of ids the history holds
 * (<= repeat_last_n; always 0 while the penalty is off, since nothing is recorded). */
int64_t wk_sampler_history(const wk_sampler_t *s, int32_t *ids, int64_t cap);

/* The message of the last failed call on `s` ("" if none failed yet); valid until the
 * next call on `s`. */
const char *wk_sampler_last_error(const wk_sampler_t *s);

#ifdef __cplusplus
}
#endif
#endif
