/* wk_engine: the in-process engine — a model, a CPU backend, a KV pool and a forward
 * pass behind one handle. The CLI uses it directly; the worker process (serving
 * issue) wraps it behind the internal gRPC service.
 *
 * Sequences are created, stepped and released by the caller (the scheduler):
 * wk_engine_step runs one batch of any mix of prompt chunks and decode tokens.
 * Not thread-safe: one owning thread. */
#ifndef WK_ENGINE_H
#define WK_ENGINE_H

#include <stdint.h>

#include "kvpool.h"
#include "wk_cuda_sample.h"
#include "wk_forward.h"
#include "wk_model.h"
#include "wk_sampler.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef enum {
  WK_DEVICE_CPU = 0,
  WK_DEVICE_CUDA = 1, /* the current CUDA device: full, arkvale, quest and streaming */
} wk_device_t;

typedef struct {
  const char *model_path;   /* a GGUF file; or NULL with synthetic set */
  /* NULL, or a shape name (wk_model_cuda_shape: llama2-7b, longchat-7b, llama3-8b,
   * smollm2-135m, llama3-tiny) whose weights are random bf16 built on the device from
   * synthetic_seed, instead of model_path: speed at the paper's shapes without their
   * download. WK_DEVICE_CUDA only; no tokenizer (callers pass token ids) and
   * wk_engine_model is NULL (wk_engine_hparams has the shape). */
  const char *synthetic;
  uint64_t synthetic_seed;
  wk_device_t device;       /* default WK_DEVICE_CPU */
  int32_t n_threads;        /* 0 = one per online CPU */
  int32_t page_tokens;      /* KV page size (default 32) */
  int32_t max_seq_tokens;   /* 0 = the model's training context */
  int32_t max_seqs;         /* live sequences (default 16) */
  int64_t kv_pages;         /* 0 = enough for max_seqs sequences of max_seq_tokens */
  int32_t max_batch_tokens; /* rows of one step; longer prompts are chunked (default 512) */
  kn_dtype_t kv_dtype;      /* default KN_F16 */
  int weights_f32;          /* dequantize weights at load (see wk_model_params_t) */
  const kv_pool_params_t *kv_policy; /* NULL = full cache. Otherwise the KV policy and its
                                      * knobs (policy, budget_tokens, n_full_layers, sinks,
                                      * window, topk, digest, score_agg, attend, tier, debug
                                      * flags) come from here; the shape and size fields are
                                      * the engine's (model shape, page_tokens, max_seqs,
                                      * max_seq_tokens, kv_pages, kv_dtype above).
                                      * select_on_device is read as: 0 = the engine picks
                                      * (on the GPU, arkvale decides on the device whenever
                                      * its options allow), 1 = on the device, -1 = on the
                                      * host (the oracle path; always so on the CPU). */
} wk_engine_params_t;

typedef struct wk_engine wk_engine_t;

wk_engine_params_t wk_engine_params_default(void);
ak_status_t wk_engine_create(const wk_engine_params_t *p, ak_err_t *err, wk_engine_t **eng_p);
void wk_engine_destroy(wk_engine_t *eng);

const wk_model_t *wk_engine_model(const wk_engine_t *eng); /* NULL for a synthetic engine */
const wk_hparams_t *wk_engine_hparams(const wk_engine_t *eng);
kv_pool_t *wk_engine_kvpool(wk_engine_t *eng);
kn_cpu_t *wk_engine_cpu(wk_engine_t *eng);
int32_t wk_engine_max_batch_tokens(const wk_engine_t *eng);
const char *wk_engine_errmsg(const wk_engine_t *eng);

ak_status_t wk_engine_seq_create(wk_engine_t *eng, kv_seq_id_t *seq_p);
ak_status_t wk_engine_seq_release(wk_engine_t *eng, kv_seq_id_t seq);

/* One step over a batch (see wk_forward_batch_t); at most max_batch_tokens rows. */
ak_status_t wk_engine_step(wk_engine_t *eng, const wk_forward_batch_t *batch);

/* 1 when wk_engine_step_sampled can sample on the device (the engine runs on CUDA). */
int wk_engine_samples_on_device(const wk_engine_t *eng);
/* wk_engine_step that also samples each sequence's next token on the device, after the
 * vocab projection, so that only ids (and logprobs) cross PCIe
 * (wk_forward_cuda_run_sampled: one row per sequence, logits_all 0; batch->logits may
 * be NULL). AK_ERR_UNSUPPORTED on the CPU, and for a request past the device's caps
 * (wk_cuda_sample_check; a request from wk_cuda_sample_request never is), the pool
 * then unchanged. AK_ERR_INVALID_ARG for a wrong request or batch. */
ak_status_t wk_engine_step_sampled(wk_engine_t *eng, const wk_forward_batch_t *batch, const wk_cuda_sample_t *sample);
/* Feeds a whole prompt (or any run of tokens) to one sequence in chunks of
 * max_batch_tokens; writes the logits of its last token ([n_vocab]) to `logits`; then
 * brings the sequence down to its KV budget (kv_seq_compact).
 * A prompt longer than the context left is refused before any work (AK_ERR_RANGE);
 * if a later chunk fails, the chunks before it stay in the sequence. */
ak_status_t wk_engine_prefill(wk_engine_t *eng, kv_seq_id_t seq, const int32_t *tokens, int64_t n_tokens,
                              float *logits);

#ifdef __cplusplus
}
#endif
#endif
