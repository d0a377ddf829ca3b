/* wk_cuda_sampler: the forward's staging for device sampling (wk_cuda_sampler.h): packs
 * a checked request (wk_cuda_sample.h) for kn_cuda_sample, and moves it and the results
 * across PCIe. */
#include "wk_cuda_sampler.h"

#include <cuda_runtime_api.h>
#include <string.h>

#include "ak_alloc.h"
#include "kn_cuda.h"
#include "wk_cuda_try.h"

_Static_assert(WK_CUDA_SAMPLE_PENALTY_MAX_VOCAB == KN_CUDA_SAMPLE_PENALTY_MAX_VOCAB,
               "wk_cuda_sample.h repeats kn_cuda.h's penalty vocabulary cap");

struct wk_cuda_sampler {
  int32_t max_seqs;
  int32_t n_vocab;
  size_t rows_bytes;    /* max_seqs rows */
  size_t hist_bytes;    /* max_seqs x WK_CUDA_SAMPLE_MAX_HISTORY_IDS ids */
  size_t out_bytes;     /* ids then logprobs, max_seqs each */
  size_t n_bytes;       /* the whole layout (wk_cuda_sampler.h), host and device alike */
  char *host;           /* pinned */
  char *dev;
};

static int64_t wk_hist_capacity(const wk_cuda_sampler_t *sm) {
  return (int64_t)sm->max_seqs * WK_CUDA_SAMPLE_MAX_HISTORY_IDS;
}

void wk_cuda_sampler_destroy(wk_cuda_sampler_t *sm) {
  if (!sm) return;
  kn_cuda_free(sm->dev, sm->n_bytes);
  kn_cuda_host_free(sm->host, sm->n_bytes);
  ak_host_free(sm, sizeof *sm);
}

ak_status_t wk_cuda_sampler_create(int32_t max_seqs, int32_t n_vocab, ak_err_t *err, wk_cuda_sampler_t **sm_p) {
  if (max_seqs < 1 || n_vocab < 1 || !sm_p)
    return AK_ERR(err, AK_ERR_INVALID_ARG, "max_seqs=%d and n_vocab=%d must be >= 1, sm_p=%p", max_seqs, n_vocab,
                  (void *)sm_p);
  wk_cuda_sampler_t *sm = ak_host_alloc(sizeof *sm, 1);
  if (!sm) return AK_ERR(err, AK_ERR_NO_MEMORY, "device sampler struct");
  sm->max_seqs = max_seqs;
  sm->n_vocab = n_vocab;
  /* Each part stays 16-byte aligned: rows are 48 bytes, the history a multiple of 4 KiB. */
  sm->rows_bytes = sizeof(kn_cuda_sample_row_t) * (size_t)max_seqs;
  sm->hist_bytes = sizeof(int32_t) * (size_t)wk_hist_capacity(sm);
  sm->out_bytes = (sizeof(int32_t) + sizeof(float)) * (size_t)max_seqs;
  sm->n_bytes = sm->rows_bytes + sm->hist_bytes + sm->out_bytes;
  ak_status_t st = kn_cuda_host_alloc(sm->n_bytes, err, (void **)&sm->host, NULL);
  if (st < 0) goto err_free_sm;
  st = kn_cuda_malloc(sm->n_bytes, err, (void **)&sm->dev);
  if (st < 0) goto err_free_host;
  *sm_p = sm;
  return AK_OK;

err_free_host:
  kn_cuda_host_free(sm->host, sm->n_bytes);
err_free_sm:
  ak_host_free(sm, sizeof *sm);
  return st;
}

ak_status_t wk_cuda_sampler_stage(wk_cuda_sampler_t *sm, const wk_cuda_sample_t *req, int32_t n_seqs,
                                  void *stream, ak_err_t *err) {
  if (n_seqs < 1 || n_seqs > sm->max_seqs)
    return AK_ERR(err, AK_ERR_INVALID_ARG, "n_seqs=%d outside [1, %d]", n_seqs, sm->max_seqs);
  AK_TRY(wk_cuda_sample_check(req, n_seqs, sm->n_vocab, err));
  kn_cuda_sample_row_t *rows = (kn_cuda_sample_row_t *)sm->host;
  int32_t *hist = (int32_t *)(sm->host + sm->rows_bytes);
  int64_t n_hist = 0;
  for (int32_t i = 0; i < n_seqs; i++) {
    const wk_cuda_sample_seq_t *q = &req->seqs[i];
    /* Without a penalty the history is not uploaded at all. */
    int32_t n = q->repetition_penalty != 1.0f ? q->n_history_ids : 0;
    kn_cuda_sample_row_t r;
    memset(&r, 0, sizeof r);
    r.seed = q->seed;
    r.step = q->step;
    r.temperature = q->temperature;
    r.top_k = q->top_k;
    r.top_p = q->top_p;
    r.min_p = q->min_p;
    r.repetition_penalty = q->repetition_penalty;
    r.history_start_idx = (int32_t)n_hist;
    r.n_history_ids = n;
    rows[i] = r;
    if (n > 0) memcpy(hist + n_hist, q->history_ids, sizeof(int32_t) * (size_t)n);
    n_hist += n;
  }
  /* rows (all max_seqs slots: a fixed-size copy) and the used history, in one copy */
  size_t up_bytes = sm->rows_bytes + sizeof(int32_t) * (size_t)n_hist;
  WK_CUDA_TRY(err, cudaMemcpyAsync(sm->dev, sm->host, up_bytes, cudaMemcpyHostToDevice, (cudaStream_t)stream));
  return AK_OK;
}

ak_status_t wk_cuda_sampler_launch(wk_cuda_sampler_t *sm, const float *d_logits, int32_t n_seqs, void *stream,
                                   ak_err_t *err) {
  int32_t *d_ids = (int32_t *)(sm->dev + sm->rows_bytes + sm->hist_bytes);
  float *d_lp = (float *)(d_ids + sm->max_seqs);
  kn_cuda_sample_args_t a;
  memset(&a, 0, sizeof a);
  a.logits = d_logits;
  a.out_ids = d_ids;
  a.n_rows = n_seqs;
  a.n_vocab = sm->n_vocab;
  a.rows = (const kn_cuda_sample_row_t *)sm->dev;
  /* The whole history buffer, whatever this step uses: the launch's arguments then stay
   * the same from step to step (a replayed graph reads each row's own range). */
  const int penalty_ok = sm->n_vocab <= KN_CUDA_SAMPLE_PENALTY_MAX_VOCAB; /* fits the kernel's bitmap */
  a.history_ids = penalty_ok ? (const int32_t *)(sm->dev + sm->rows_bytes) : NULL;
  a.n_history_ids = penalty_ok ? wk_hist_capacity(sm) : 0;
  a.out_logprobs = d_lp;
  AK_TRY(kn_cuda_sample(&a, NULL, 0, (kn_cuda_stream_t)stream, err));
  WK_CUDA_TRY(err, cudaMemcpyAsync(sm->host + sm->rows_bytes + sm->hist_bytes, d_ids, sm->out_bytes,
                                   cudaMemcpyDeviceToHost, (cudaStream_t)stream));
  return AK_OK;
}

void wk_cuda_sampler_finish(const wk_cuda_sampler_t *sm, const wk_cuda_sample_t *req, int32_t n_seqs) {
  const int32_t *ids = (const int32_t *)(sm->host + sm->rows_bytes + sm->hist_bytes);
  const float *lp = (const float *)(ids + sm->max_seqs);
  memcpy(req->token_ids, ids, sizeof(int32_t) * (size_t)n_seqs);
  if (req->logprobs) memcpy(req->logprobs, lp, sizeof(float) * (size_t)n_seqs);
}
