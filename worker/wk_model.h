/* wk_model: a Llama-family model loaded from GGUF for the CPU backend.
 *
 * The CPU backend computes on the file's (quantized) weights in place: the model keeps
 * the GGUF mapped and its weight views point into it; only small vectors (norm
 * weights) are converted to owned f32 arrays. Architecture hyper-parameters are read
 * from `<arch>.*` metadata; what we do not support (biases, other architectures,
 * unknown RoPE scaling) is refused at load with a message naming it.
 *
 * Thread-safety: a loaded model is immutable and may be shared by several engines. */
#ifndef WK_MODEL_H
#define WK_MODEL_H

#include <stdint.h>

#include "ak_gguf.h"
#include "ak_status.h"
#include "kernels.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct {
  char arch[32];
  char name[128];
  int32_t n_layers;
  int32_t dim;          /* embedding width */
  int32_t n_heads;
  int32_t n_kv_heads;
  int32_t head_dim;
  int32_t ffn_dim;
  int32_t n_vocab;
  int32_t n_ctx_train;  /* context length the model was trained for */
  int32_t rope_dims;
  float rope_freq_base;
  float rope_freq_scale; /* 1 / linear scaling factor */
  kn_rope_mode_t rope_mode;
  float norm_eps;
  int tied_embeddings;  /* output projection is token_embd */
} wk_hparams_t;

typedef struct {
  const float *attn_norm; /* [dim] */
  kn_weight_t wq;         /* [n_heads*head_dim, dim] */
  kn_weight_t wk;         /* [n_kv_heads*head_dim, dim] */
  kn_weight_t wv;         /* [n_kv_heads*head_dim, dim] */
  kn_weight_t wo;         /* [dim, n_heads*head_dim] */
  const float *ffn_norm;  /* [dim] */
  kn_weight_t w_gate;     /* [ffn_dim, dim] */
  kn_weight_t w_up;       /* [ffn_dim, dim] */
  kn_weight_t w_down;     /* [dim, ffn_dim] */
} wk_layer_t;

typedef struct wk_model wk_model_t;

typedef struct {
  /* Dequantize every matrix to f32 at load (4 bytes a weight). The file's quantized
   * weights are what the engine normally computes on; f32 weights route matmuls
   * through the float path with f32 activations, which is exact arithmetic up to
   * float rounding: the mode tests compare against a float64 reference. */
  int weights_f32;
} wk_model_params_t;

wk_model_params_t wk_model_params_default(void);

/* Opens `path` and builds the model. The error names the missing key or tensor, or the
 * shape that does not match. `params` may be NULL (defaults). */
ak_status_t wk_model_load(const char *path, const wk_model_params_t *params, ak_err_t *err,
                          wk_model_t **model_p);
/* A model without a file, for tests: the CPU twin of a model built elsewhere (a
 * synthetic GPU model, wk_model_cuda_synthetic). hp must be complete (n_vocab and
 * tied_embeddings included); every matrix is f32, as with weights_f32, and fill writes
 * each tensor into the model's own storage, row-major: layer -1 for token_embd, output
 * (not asked when tied) and output_norm. No GGUF: wk_model_gguf is NULL (no tokenizer).
 * AK_ERR_INVALID_ARG for an inconsistent hp; fill's error is returned as it is. */
typedef enum {
  WK_TENSOR_TOKEN_EMBD, WK_TENSOR_OUTPUT, WK_TENSOR_OUTPUT_NORM,
  WK_TENSOR_ATTN_NORM, WK_TENSOR_WQ, WK_TENSOR_WK, WK_TENSOR_WV, WK_TENSOR_WO,
  WK_TENSOR_FFN_NORM, WK_TENSOR_GATE, WK_TENSOR_UP, WK_TENSOR_DOWN,
} wk_tensor_t;
typedef ak_status_t (*wk_model_fill_fn)(void *ctx, wk_tensor_t tensor, int32_t layer, float *dst, int64_t rows,
                                        int64_t cols, ak_err_t *err);
ak_status_t wk_model_from_fill(const wk_hparams_t *hp, wk_model_fill_fn fill, void *ctx, ak_err_t *err,
                               wk_model_t **model_p);

void wk_model_free(wk_model_t *model);

const wk_hparams_t *wk_model_hparams(const wk_model_t *model);
const wk_layer_t *wk_model_layer(const wk_model_t *model, int32_t layer_idx);
const kn_weight_t *wk_model_token_embd(const wk_model_t *model); /* [n_vocab, dim] */
const kn_weight_t *wk_model_output(const wk_model_t *model);     /* [n_vocab, dim] */
const float *wk_model_output_norm(const wk_model_t *model);      /* [dim] */
/* The underlying file (the tokenizer reads its vocabulary from it). */
const ak_gguf_t *wk_model_gguf(const wk_model_t *model);
/* Bytes of weights read per forward token (for bandwidth figures). */
size_t wk_model_weight_bytes(const wk_model_t *model);

#ifdef __cplusplus
}
#endif
#endif
