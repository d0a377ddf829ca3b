/* wk_model_cuda: a Llama-family model's weights on the GPU for the CUDA backend.
 *
 * Matrices are bf16 on the device (GGUF quantized weights are dequantized at upload,
 * ../shared/DESIGN.md "Backends"); norm weights are f32. Each layer's Q, K and V
 * matrices are one allocation, rows in that order, so one GEMM can compute all three;
 * gate and up likewise:
 *
 *   wqkv:     [(n_heads + 2 n_kv_heads) * head_dim, dim] bf16   (wq | wk | wv)
 *   wgate_up: [2 * ffn_dim, dim] bf16                            (gate | up)
 *
 * A synthetic model builds any Llama shape directly on the device from a seed, so
 * speed can be measured at the paper's shapes without a 16 GB download.
 *
 * Thread-safety: immutable once built; device memory is freed by wk_model_cuda_free. */
#ifndef WK_MODEL_CUDA_H
#define WK_MODEL_CUDA_H

#include <stddef.h>
#include <stdint.h>

#include "ak_status.h"
#include "wk_model.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct {
  const float *attn_norm; /* [dim] f32 */
  const void *wqkv;       /* [(n_heads + 2 n_kv_heads) * head_dim, dim] bf16 */
  const void *wo;         /* [dim, n_heads * head_dim] bf16 */
  const float *ffn_norm;  /* [dim] f32 */
  const void *wgate_up;   /* [2 * ffn_dim, dim] bf16 */
  const void *wdown;      /* [dim, ffn_dim] bf16 */
} wk_cuda_layer_t;

typedef struct wk_model_cuda wk_model_cuda_t;

/* Dequantizes every matrix of a loaded model to bf16 and uploads it (the current CUDA
 * device). AK_ERR_NO_MEMORY when the device is full; nothing stays allocated then. */
ak_status_t wk_model_cuda_upload(const wk_model_t *model, ak_err_t *err, wk_model_cuda_t **model_p);

/* Shapes by name: "llama2-7b", "longchat-7b" (Llama-2-7B with 32k context, RoPE linear
 * scaling 8), "llama3-8b", "smollm2-135m", and "llama3-tiny" (4 layers of 1024, GQA 4 at
 * head_dim 128: small enough for the CPU backend, for tests). Weights are random bf16 drawn on the
 * device from `seed` (uniform, scaled by 1/sqrt(fan_in) so activations stay finite
 * through every layer); norms are 1. AK_ERR_INVALID_ARG names the known shapes. */
ak_status_t wk_model_cuda_synthetic(const char *shape, uint64_t seed, ak_err_t *err, wk_model_cuda_t **model_p);
/* The hparams of a named shape without building it (AK_ERR_INVALID_ARG if unknown). */
ak_status_t wk_model_cuda_shape(const char *shape, ak_err_t *err, wk_hparams_t *hp_p);

void wk_model_cuda_free(wk_model_cuda_t *model);

const wk_hparams_t *wk_model_cuda_hparams(const wk_model_cuda_t *model);
const wk_cuda_layer_t *wk_model_cuda_layer(const wk_model_cuda_t *model, int32_t layer_idx);
const void *wk_model_cuda_token_embd(const wk_model_cuda_t *model); /* [n_vocab, dim] bf16 */
const void *wk_model_cuda_output(const wk_model_cuda_t *model);     /* [n_vocab, dim] bf16 (may be token_embd) */
const float *wk_model_cuda_output_norm(const wk_model_cuda_t *model); /* [dim] f32 */
/* Device bytes of the weights (a decode step reads all of them once). */
size_t wk_model_cuda_weight_bytes(const wk_model_cuda_t *model);

#ifdef __cplusplus
}
#endif
#endif
