/* wk_cuda_sample: checking and building device-sampling requests (wk_cuda_sample.h).
 * No CUDA here: the service and the CLI decide before a step whether the device can
 * take it, on any build. */
#include "wk_cuda_sample.h"

#include <string.h>

ak_status_t wk_cuda_sample_check(const wk_cuda_sample_t *req, int32_t n_seqs, int32_t n_vocab, ak_err_t *err) {
  if (!req || !req->seqs || !req->token_ids)
    return AK_ERR(err, AK_ERR_INVALID_ARG, "sample request needs seqs and token_ids (req=%p)", (const void *)req);
  wk_sampler_params_t p = wk_sampler_params_default();
  AK_TRY(wk_sampler_params_check(&p, n_vocab, err)); /* n_vocab, named as such */
  for (int32_t i = 0; i < n_seqs; i++) {
    const wk_cuda_sample_seq_t *q = &req->seqs[i];
    /* the fields both samplers share, by the host sampler's own rules (the history is
     * checked below, against the device's cap) */
    p.temperature = q->temperature, p.top_k = q->top_k, p.top_p = q->top_p, p.min_p = q->min_p;
    p.repetition_penalty = q->repetition_penalty, p.repeat_last_n = 0, p.seed = q->seed;
    ak_err_t pe;
    ak_err_clear(&pe);
    ak_status_t st = wk_sampler_params_check(&p, n_vocab, &pe);
    if (st < 0) return AK_ERR(err, st, "seqs[%d]: %s", i, pe.msg);
    if (q->n_history_ids < 0)
      return AK_ERR(err, AK_ERR_INVALID_ARG, "seqs[%d].n_history_ids=%d must be >= 0", i, q->n_history_ids);
    /* Valid, but past what the device holds: UNSUPPORTED tells the caller to sample on
     * the host (a wrong request stays INVALID_ARG, and fails there too). */
    if (q->n_history_ids > WK_CUDA_SAMPLE_MAX_HISTORY_IDS)
      return AK_ERR(err, AK_ERR_UNSUPPORTED,
                    "seqs[%d].n_history_ids=%d outside [0, %d] (sample this step on the host)", i,
                    q->n_history_ids, WK_CUDA_SAMPLE_MAX_HISTORY_IDS);
    if (q->n_history_ids > 0 && !q->history_ids)
      return AK_ERR(err, AK_ERR_INVALID_ARG, "seqs[%d].history_ids is NULL with n_history_ids=%d", i,
                    q->n_history_ids);
    if (q->repetition_penalty == 1.0f) continue; /* the history has no reader */
    if (q->n_history_ids > 0 && n_vocab > WK_CUDA_SAMPLE_PENALTY_MAX_VOCAB)
      return AK_ERR(err, AK_ERR_UNSUPPORTED,
                    "seqs[%d]: a repetition penalty with n_vocab=%d > %d is not supported on the device", i, n_vocab,
                    WK_CUDA_SAMPLE_PENALTY_MAX_VOCAB);
    for (int32_t h = 0; h < q->n_history_ids; h++)
      if (q->history_ids[h] < 0 || q->history_ids[h] >= n_vocab)
        return AK_ERR(err, AK_ERR_INVALID_ARG, "seqs[%d].history_ids[%d]=%d outside [0, %d)", i, h,
                      q->history_ids[h], n_vocab);
  }
  return AK_OK;
}

int wk_cuda_sample_request(const wk_sampler_t *smp, int64_t n_vocab, const int32_t *pending, int64_t n_pending,
                           uint64_t step, int32_t *window, wk_cuda_sample_seq_t *req) {
  const wk_sampler_params_t *p = wk_sampler_params(smp);
  memset(req, 0, sizeof *req);
  req->temperature = p->temperature, req->top_k = p->top_k, req->top_p = p->top_p, req->min_p = p->min_p;
  req->repetition_penalty = p->repetition_penalty;
  req->seed = p->seed;
  req->step = step;
  if (p->repetition_penalty == 1.0f || p->repeat_last_n == 0) return 1; /* no window read */
  int64_t n_old = wk_sampler_history(smp, NULL, 0);
  int64_t n_win = n_old + n_pending < p->repeat_last_n ? n_old + n_pending : p->repeat_last_n;
  if (n_win > WK_CUDA_SAMPLE_MAX_HISTORY_IDS) return 0;
  if (n_win > 0 && n_vocab > WK_CUDA_SAMPLE_PENALTY_MAX_VOCAB) return 0; /* past the penalty bitmap */
  int64_t take_new = n_pending < n_win ? n_pending : n_win, take_old = n_win - take_new;
  (void)wk_sampler_history(smp, window, take_old);
  if (take_new > 0) memcpy(window + take_old, pending + (n_pending - take_new), sizeof(int32_t) * (size_t)take_new);
  req->history_ids = window;
  req->n_history_ids = (int32_t)n_win;
  return 1;
}

