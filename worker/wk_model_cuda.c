/* wk_model_cuda: a model's weights on the GPU — uploaded from a loaded GGUF model
 * (dequantized to bf16 on the host, layer by layer) or built from a seed at a named
 * shape (synthetic, drawn on the device). Not for: the forward pass
 * (wk_forward_cuda.c) or loading files (wk_model.c).
 *
 * Device memory: one allocation per fused matrix of each layer (wqkv, wo, wgate_up,
 * wdown), one for all norm vectors, one for token_embd and one for an untied output.
 * Every allocation is recorded with its size in `allocs`, so wk_model_cuda_free is
 * the one cleanup path of both builders, complete or half-built. */
#include "wk_model_cuda.h"

#include <cuda_runtime_api.h>
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "ak_alloc.h"
#include "ak_quant.h"
#include "kn_cuda.h"

typedef struct {
  void *ptr;
  size_t n_bytes;
} wk_dev_alloc_t;

struct wk_model_cuda {
  wk_hparams_t hp;
  wk_cuda_layer_t *layers;  /* [n_layers] host array of device pointers */
  const void *token_embd;   /* [n_vocab, dim] bf16 */
  const void *output;       /* [n_vocab, dim] bf16; == token_embd when tied */
  const float *output_norm; /* [dim] f32 */
  size_t weight_bytes;
  wk_dev_alloc_t *allocs;   /* [max_allocs] every device allocation, in order */
  int32_t n_allocs;
  int32_t max_allocs;
};

/* Matrix shapes of one layer, in elements. */
typedef struct {
  int64_t q_rows, kv_rows, qkv_rows; /* wqkv: [qkv_rows, dim] */
  int64_t dim, ffn;
} wk_cuda_dims_t;

static wk_cuda_dims_t wk_cuda_dims(const wk_hparams_t *hp) {
  wk_cuda_dims_t d;
  d.q_rows = (int64_t)hp->n_heads * hp->head_dim;
  d.kv_rows = (int64_t)hp->n_kv_heads * hp->head_dim;
  d.qkv_rows = d.q_rows + 2 * d.kv_rows;
  d.dim = hp->dim;
  d.ffn = hp->ffn_dim;
  return d;
}

static size_t wk_bf16_bytes(int64_t n_rows, int64_t n_cols) { return (size_t)n_rows * (size_t)n_cols * 2; }

/* --- shapes --- */

typedef struct {
  const char *name;
  int32_t n_layers, dim, n_heads, n_kv_heads, head_dim, ffn_dim, n_vocab, n_ctx_train;
  float rope_freq_base, rope_freq_scale;
  int tied;
} wk_cuda_shape_t;

static const wk_cuda_shape_t wk_cuda_shapes[] = {
    {"llama2-7b", 32, 4096, 32, 32, 128, 11008, 32000, 4096, 10000.0f, 1.0f, 0},
    {"longchat-7b", 32, 4096, 32, 32, 128, 11008, 32000, 32768, 10000.0f, 0.125f, 0},
    {"llama3-8b", 32, 4096, 32, 8, 128, 14336, 128256, 8192, 500000.0f, 1.0f, 0},
    {"smollm2-135m", 30, 576, 9, 3, 64, 1536, 49152, 8192, 100000.0f, 1.0f, 1},
    /* Llama-3-8B's kind at a size the CPU backend runs in a test (its CPU twin): GQA 4,
     * head_dim 128, gate|up over 8M elements (the tensor-core GEMV at 3..8 rows) */
    {"llama3-tiny", 4, 1024, 8, 2, 128, 4096, 8192, 8192, 500000.0f, 1.0f, 0},
};
enum { WK_CUDA_N_SHAPES = (int)(sizeof wk_cuda_shapes / sizeof wk_cuda_shapes[0]) };

ak_status_t wk_model_cuda_shape(const char *shape, ak_err_t *err, wk_hparams_t *hp_p) {
  if (!hp_p) return AK_ERR(err, AK_ERR_INVALID_ARG, "hp_p is NULL");
  const wk_cuda_shape_t *s = NULL;
  for (int i = 0; shape && i < WK_CUDA_N_SHAPES; i++)
    if (strcmp(shape, wk_cuda_shapes[i].name) == 0) s = &wk_cuda_shapes[i];
  if (!s) {
    char known[160] = "";
    for (int i = 0; i < WK_CUDA_N_SHAPES; i++) {
      size_t used = strlen(known);
      snprintf(known + used, sizeof known - used, "%s%s", i ? ", " : "", wk_cuda_shapes[i].name);
    }
    return AK_ERR(err, AK_ERR_INVALID_ARG, "unknown model shape '%s' (known: %s)", shape ? shape : "(null)", known);
  }
  wk_hparams_t hp;
  memset(&hp, 0, sizeof hp);
  snprintf(hp.arch, sizeof hp.arch, "llama");
  snprintf(hp.name, sizeof hp.name, "synthetic %s", s->name);
  hp.n_layers = s->n_layers;
  hp.dim = s->dim;
  hp.n_heads = s->n_heads;
  hp.n_kv_heads = s->n_kv_heads;
  hp.head_dim = s->head_dim;
  hp.ffn_dim = s->ffn_dim;
  hp.n_vocab = s->n_vocab;
  hp.n_ctx_train = s->n_ctx_train;
  hp.rope_dims = s->head_dim;
  hp.rope_freq_base = s->rope_freq_base;
  hp.rope_freq_scale = s->rope_freq_scale;
  hp.rope_mode = KN_ROPE_NORM;
  hp.norm_eps = 1e-5f;
  hp.tied_embeddings = s->tied;
  *hp_p = hp;
  return AK_OK;
}

/* --- construction shared by both builders --- */

void wk_model_cuda_free(wk_model_cuda_t *m) {
  if (!m) return;
  /* Reverse order of allocation; cudaFree waits for queued work on the memory. */
  for (int32_t i = m->n_allocs - 1; i >= 0; i--) kn_cuda_free(m->allocs[i].ptr, m->allocs[i].n_bytes);
  if (m->allocs) ak_host_free(m->allocs, sizeof(wk_dev_alloc_t) * (size_t)m->max_allocs);
  if (m->layers) ak_host_free(m->layers, sizeof(wk_cuda_layer_t) * (size_t)m->hp.n_layers);
  ak_host_free(m, sizeof *m);
}

/* A device allocation recorded in m->allocs; the message names the tensor. */
static ak_status_t wk_dev_alloc(wk_model_cuda_t *m, size_t n_bytes, const char *what, int32_t layer_idx,
                                ak_err_t *err, void **ptr_p) {
  if (m->n_allocs >= m->max_allocs)
    return AK_ERR(err, AK_ERR_INTERNAL, "allocation table full (%d) at %s", m->max_allocs, what);
  ak_err_t e;
  ak_err_clear(&e);
  void *p = NULL;
  ak_status_t st = kn_cuda_malloc(n_bytes, &e, &p);
  if (st < 0) {
    char name[48];
    if (layer_idx >= 0)
      snprintf(name, sizeof name, "layer %d %s", (int)layer_idx, what);
    else
      snprintf(name, sizeof name, "%s", what);
    return AK_ERR(err, st, "%s (%zu bytes; %zu bytes of matrices already allocated): %s", name, n_bytes,
                  m->weight_bytes, e.msg);
  }
  m->allocs[m->n_allocs].ptr = p;
  m->allocs[m->n_allocs].n_bytes = n_bytes;
  m->n_allocs++;
  *ptr_p = p;
  return AK_OK;
}

/* The model struct, its layer table and its allocation table, with every device
 * allocation made (contents undefined). Matrices count toward weight_bytes. */
static ak_status_t wk_cuda_alloc_model(const wk_hparams_t *hp, ak_err_t *err, wk_model_cuda_t **m_p) {
  if (hp->n_layers < 1 || hp->dim < 1 || hp->n_heads < 1 || hp->n_kv_heads < 1 || hp->head_dim < 1 ||
      hp->ffn_dim < 1 || hp->n_vocab < 1)
    return AK_ERR(err, AK_ERR_INVALID_ARG, "bad shape: n_layers=%d dim=%d heads=%d/%d head_dim=%d ffn=%d vocab=%d",
                  hp->n_layers, hp->dim, hp->n_heads, hp->n_kv_heads, hp->head_dim, hp->ffn_dim, hp->n_vocab);
  wk_model_cuda_t *m = ak_host_alloc(sizeof *m, 1);
  if (!m) return AK_ERR(err, AK_ERR_NO_MEMORY, "model struct");
  m->hp = *hp;
  m->max_allocs = 4 * hp->n_layers + 3; /* 4 per layer; norms, token_embd, output */
  m->allocs = ak_host_alloc(sizeof(wk_dev_alloc_t) * (size_t)m->max_allocs, 1);
  m->layers = ak_host_alloc(sizeof(wk_cuda_layer_t) * (size_t)hp->n_layers, 1);
  ak_status_t st = AK_OK;
  if (!m->allocs || !m->layers) {
    st = AK_ERR(err, AK_ERR_NO_MEMORY, "layer tables for %d layers", hp->n_layers);
    goto err_free_model;
  }
  const wk_cuda_dims_t d = wk_cuda_dims(hp);
  void *p = NULL;
  /* Norms: [attn_norm | ffn_norm] per layer, then output_norm, all [dim] f32. */
  size_t norm_bytes = (size_t)(2 * hp->n_layers + 1) * (size_t)hp->dim * sizeof(float);
  if ((st = wk_dev_alloc(m, norm_bytes, "norms", -1, err, &p)) < 0) goto err_free_model;
  float *norms = p;
  for (int32_t l = 0; l < hp->n_layers; l++) {
    m->layers[l].attn_norm = norms + (size_t)(2 * l) * (size_t)hp->dim;
    m->layers[l].ffn_norm = norms + (size_t)(2 * l + 1) * (size_t)hp->dim;
  }
  m->output_norm = norms + (size_t)(2 * hp->n_layers) * (size_t)hp->dim;

  size_t embd_bytes = wk_bf16_bytes(hp->n_vocab, d.dim);
  if ((st = wk_dev_alloc(m, embd_bytes, "token_embd", -1, err, &p)) < 0) goto err_free_model;
  m->token_embd = p;
  m->weight_bytes += embd_bytes;
  if (hp->tied_embeddings) {
    m->output = m->token_embd;
  } else {
    if ((st = wk_dev_alloc(m, embd_bytes, "output", -1, err, &p)) < 0) goto err_free_model;
    m->output = p;
    m->weight_bytes += embd_bytes;
  }

  const size_t qkv_bytes = wk_bf16_bytes(d.qkv_rows, d.dim), wo_bytes = wk_bf16_bytes(d.dim, d.q_rows);
  const size_t gate_up_bytes = wk_bf16_bytes(2 * d.ffn, d.dim), down_bytes = wk_bf16_bytes(d.dim, d.ffn);
  for (int32_t l = 0; l < hp->n_layers; l++) {
    wk_cuda_layer_t *L = &m->layers[l];
    if ((st = wk_dev_alloc(m, qkv_bytes, "wqkv", l, err, &p)) < 0) goto err_free_model;
    L->wqkv = p;
    if ((st = wk_dev_alloc(m, wo_bytes, "wo", l, err, &p)) < 0) goto err_free_model;
    L->wo = p;
    if ((st = wk_dev_alloc(m, gate_up_bytes, "wgate_up", l, err, &p)) < 0) goto err_free_model;
    L->wgate_up = p;
    if ((st = wk_dev_alloc(m, down_bytes, "wdown", l, err, &p)) < 0) goto err_free_model;
    L->wdown = p;
    m->weight_bytes += qkv_bytes + wo_bytes + gate_up_bytes + down_bytes;
  }
  *m_p = m;
  return AK_OK;

err_free_model:
  wk_model_cuda_free(m);
  return st;
}

/* --- upload of a loaded model --- */

/* Rows of GGUF matrices converted to bf16 in a host buffer and copied to consecutive
 * device addresses: a whole fused layer matrix (wq|wk|wv) fits and goes in one copy;
 * larger matrices (the embeddings) go in chunks of whole rows. */
typedef struct {
  uint16_t *buf;       /* [cap_elems] bf16 */
  size_t cap_elems;
  size_t used_elems;
  float *row_f32;      /* [max n_cols] */
  char *dev_next;      /* where the next flush lands */
} wk_stage_t;

static ak_status_t wk_stage_flush(wk_stage_t *s, ak_err_t *err) {
  if (s->used_elems == 0) return AK_OK;
  size_t n_bytes = s->used_elems * sizeof(uint16_t);
  cudaError_t e = cudaMemcpy(s->dev_next, s->buf, n_bytes, cudaMemcpyHostToDevice);
  if (e != cudaSuccess) return AK_ERR(err, AK_ERR_CUDA, "cudaMemcpy of %zu bytes: %s", n_bytes, cudaGetErrorString(e));
  s->dev_next += n_bytes;
  s->used_elems = 0;
  return AK_OK;
}

/* Starts a run of rows that will land at device address `dst` onwards. */
static ak_status_t wk_stage_begin(wk_stage_t *s, const void *dst, ak_err_t *err) {
  AK_TRY(wk_stage_flush(s, err));
  s->dev_next = (char *)(uintptr_t)dst;
  return AK_OK;
}

/* Appends every row of `w` (rows x n_cols, checked against the expected shape). */
static ak_status_t wk_stage_weight(wk_stage_t *s, const kn_weight_t *w, int64_t n_rows, int64_t n_cols,
                                   const char *name, ak_err_t *err) {
  if (w->n_rows != n_rows || w->n_cols != n_cols || !w->data)
    return AK_ERR(err, AK_ERR_INTERNAL, "%s is [%lld, %lld], expected [%lld, %lld]", name,
                  (long long)w->n_rows, (long long)w->n_cols, (long long)n_rows, (long long)n_cols);
  size_t row_bytes = ak_type_row_bytes(w->type, n_cols);
  if (row_bytes == 0 || (size_t)n_cols > s->cap_elems)
    return AK_ERR(err, AK_ERR_UNSUPPORTED, "%s: type %s with %lld columns cannot be converted", name,
                  ak_type_name(w->type), (long long)n_cols);
  for (int64_t r = 0; r < n_rows; r++) {
    if (s->used_elems + (size_t)n_cols > s->cap_elems) AK_TRY(wk_stage_flush(s, err));
    const char *src = (const char *)w->data + (size_t)r * row_bytes;
    ak_status_t st = ak_dequant_row(w->type, src, s->row_f32, n_cols);
    if (st < 0)
      return AK_ERR(err, st, "%s row %lld: cannot dequantize type %s", name, (long long)r, ak_type_name(w->type));
    uint16_t *dst = s->buf + s->used_elems;
    for (int64_t c = 0; c < n_cols; c++) dst[c] = ak_f32_to_bf16(s->row_f32[c]);
    s->used_elems += (size_t)n_cols;
  }
  return AK_OK;
}

static ak_status_t wk_copy_norm(float *dst, const float *src, int32_t dim, ak_err_t *err) {
  size_t n_bytes = (size_t)dim * sizeof(float);
  cudaError_t e = cudaMemcpy(dst, src, n_bytes, cudaMemcpyHostToDevice);
  if (e != cudaSuccess) return AK_ERR(err, AK_ERR_CUDA, "cudaMemcpy of a norm (%zu bytes): %s", n_bytes, cudaGetErrorString(e));
  return AK_OK;
}

/* Every matrix of `src` into the device allocations of `m` (same shape). */
static ak_status_t wk_cuda_upload_weights(wk_model_cuda_t *m, const wk_model_t *src, wk_stage_t *s, ak_err_t *err) {
  const wk_hparams_t *hp = &m->hp;
  const wk_cuda_dims_t d = wk_cuda_dims(hp);
  AK_TRY(wk_stage_begin(s, m->token_embd, err));
  AK_TRY(wk_stage_weight(s, wk_model_token_embd(src), hp->n_vocab, d.dim, "token_embd.weight", err));
  if (!hp->tied_embeddings) {
    AK_TRY(wk_stage_begin(s, m->output, err));
    AK_TRY(wk_stage_weight(s, wk_model_output(src), hp->n_vocab, d.dim, "output.weight", err));
  }
  AK_TRY(wk_copy_norm((float *)(uintptr_t)m->output_norm, wk_model_output_norm(src), hp->dim, err));
  char name[96];
#define WK_NAME(t) (snprintf(name, sizeof name, "blk.%d.%s.weight", (int)l, t), name)
  for (int32_t l = 0; l < hp->n_layers; l++) {
    const wk_layer_t *S = wk_model_layer(src, l);
    const wk_cuda_layer_t *L = &m->layers[l];
    AK_TRY(wk_copy_norm((float *)(uintptr_t)L->attn_norm, S->attn_norm, hp->dim, err));
    AK_TRY(wk_copy_norm((float *)(uintptr_t)L->ffn_norm, S->ffn_norm, hp->dim, err));
    AK_TRY(wk_stage_begin(s, L->wqkv, err));
    AK_TRY(wk_stage_weight(s, &S->wq, d.q_rows, d.dim, WK_NAME("attn_q"), err));
    AK_TRY(wk_stage_weight(s, &S->wk, d.kv_rows, d.dim, WK_NAME("attn_k"), err));
    AK_TRY(wk_stage_weight(s, &S->wv, d.kv_rows, d.dim, WK_NAME("attn_v"), err));
    AK_TRY(wk_stage_begin(s, L->wo, err));
    AK_TRY(wk_stage_weight(s, &S->wo, d.dim, d.q_rows, WK_NAME("attn_output"), err));
    AK_TRY(wk_stage_begin(s, L->wgate_up, err));
    AK_TRY(wk_stage_weight(s, &S->w_gate, d.ffn, d.dim, WK_NAME("ffn_gate"), err));
    AK_TRY(wk_stage_weight(s, &S->w_up, d.ffn, d.dim, WK_NAME("ffn_up"), err));
    AK_TRY(wk_stage_begin(s, L->wdown, err));
    AK_TRY(wk_stage_weight(s, &S->w_down, d.dim, d.ffn, WK_NAME("ffn_down"), err));
  }
#undef WK_NAME
  return wk_stage_flush(s, err);
}

ak_status_t wk_model_cuda_upload(const wk_model_t *model, ak_err_t *err, wk_model_cuda_t **model_p) {
  if (!model || !model_p)
    return AK_ERR(err, AK_ERR_INVALID_ARG, "NULL argument: model=%p model_p=%p", (const void *)model, (void *)model_p);
  const wk_hparams_t *hp = wk_model_hparams(model);
  const wk_cuda_dims_t d = wk_cuda_dims(hp);
  /* The staging buffer holds the largest fused layer matrix: one copy per matrix. */
  size_t cap_elems = (size_t)d.qkv_rows * (size_t)d.dim;
  if ((size_t)d.dim * (size_t)d.q_rows > cap_elems) cap_elems = (size_t)d.dim * (size_t)d.q_rows;
  if ((size_t)2 * d.ffn * (size_t)d.dim > cap_elems) cap_elems = (size_t)2 * d.ffn * (size_t)d.dim;
  size_t max_cols = (size_t)(d.dim > d.q_rows ? d.dim : d.q_rows);
  if ((size_t)d.ffn > max_cols) max_cols = (size_t)d.ffn;

  wk_model_cuda_t *m = NULL;
  AK_TRY(wk_cuda_alloc_model(hp, err, &m));
  ak_status_t st = AK_OK;
  wk_stage_t s;
  memset(&s, 0, sizeof s);
  s.cap_elems = cap_elems;
  s.buf = ak_host_alloc(cap_elems * sizeof(uint16_t), 0);
  if (!s.buf) {
    st = AK_ERR(err, AK_ERR_NO_MEMORY, "%zu bytes of host staging", cap_elems * sizeof(uint16_t));
    goto err_free_model;
  }
  s.row_f32 = ak_host_alloc(max_cols * sizeof(float), 0);
  if (!s.row_f32) {
    st = AK_ERR(err, AK_ERR_NO_MEMORY, "%zu bytes for a dequantized row", max_cols * sizeof(float));
    goto err_free_staging;
  }
  if ((st = wk_cuda_upload_weights(m, model, &s, err)) < 0) goto err_free_row;
  /* A pageable cudaMemcpy may return before its DMA lands; wait, so the weights are
   * complete for any stream (non-blocking ones included). */
  cudaError_t e = cudaDeviceSynchronize();
  if (e != cudaSuccess) {
    st = AK_ERR(err, AK_ERR_CUDA, "cudaDeviceSynchronize after the upload: %s", cudaGetErrorString(e));
    goto err_free_row;
  }
  ak_host_free(s.row_f32, max_cols * sizeof(float));
  ak_host_free(s.buf, cap_elems * sizeof(uint16_t));
  *model_p = m;
  return AK_OK;

err_free_row:
  ak_host_free(s.row_f32, max_cols * sizeof(float));
err_free_staging:
  ak_host_free(s.buf, cap_elems * sizeof(uint16_t));
err_free_model:
  wk_model_cuda_free(m);
  return st;
}

/* --- synthetic weights --- */

/* splitmix64's finalizer: distinct seeds per (seed, layer, tensor). */
static uint64_t wk_mix64(uint64_t x) {
  x += 0x9E3779B97F4A7C15ull;
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
  return x ^ (x >> 31);
}

enum { WK_T_TOKEN_EMBD = 0, WK_T_OUTPUT, WK_T_WQKV, WK_T_WO, WK_T_WGATE_UP, WK_T_WDOWN };

static uint64_t wk_tensor_seed(uint64_t seed, int32_t layer_idx, int tensor) {
  return wk_mix64(wk_mix64(wk_mix64(seed) ^ (uint64_t)(int64_t)layer_idx) ^ (uint64_t)tensor);
}

/* A [n_rows, n_cols] bf16 matrix uniform in +-1/sqrt(n_cols). */
static ak_status_t wk_fill_matrix(const void *dst, int64_t n_rows, int64_t n_cols, uint64_t seed, int32_t layer_idx,
                                  int tensor, ak_err_t *err) {
  return kn_cuda_fill_random_bf16((void *)(uintptr_t)dst, n_rows * n_cols, 1.0f / sqrtf((float)n_cols),
                                  wk_tensor_seed(seed, layer_idx, tensor), NULL, err);
}

static ak_status_t wk_cuda_fill_weights(wk_model_cuda_t *m, uint64_t seed, ak_err_t *err) {
  const wk_hparams_t *hp = &m->hp;
  const wk_cuda_dims_t d = wk_cuda_dims(hp);
  /* All norms are one allocation, starting at layer 0's attn_norm. */
  AK_TRY(kn_cuda_fill_f32((float *)(uintptr_t)m->layers[0].attn_norm, (int64_t)(2 * hp->n_layers + 1) * hp->dim, 1.0f,
                          NULL, err));
  AK_TRY(wk_fill_matrix(m->token_embd, hp->n_vocab, d.dim, seed, -1, WK_T_TOKEN_EMBD, err));
  if (!hp->tied_embeddings) AK_TRY(wk_fill_matrix(m->output, hp->n_vocab, d.dim, seed, -1, WK_T_OUTPUT, err));
  for (int32_t l = 0; l < hp->n_layers; l++) {
    const wk_cuda_layer_t *L = &m->layers[l];
    AK_TRY(wk_fill_matrix(L->wqkv, d.qkv_rows, d.dim, seed, l, WK_T_WQKV, err));
    AK_TRY(wk_fill_matrix(L->wo, d.dim, d.q_rows, seed, l, WK_T_WO, err));
    AK_TRY(wk_fill_matrix(L->wgate_up, 2 * d.ffn, d.dim, seed, l, WK_T_WGATE_UP, err));
    AK_TRY(wk_fill_matrix(L->wdown, d.dim, d.ffn, seed, l, WK_T_WDOWN, err));
  }
  /* The fills ran on the legacy default stream; wait so the model is usable from any
   * stream, and so a fault in them is reported here. */
  cudaError_t e = cudaDeviceSynchronize();
  if (e != cudaSuccess) return AK_ERR(err, AK_ERR_CUDA, "cudaDeviceSynchronize after the fills: %s", cudaGetErrorString(e));
  return AK_OK;
}

ak_status_t wk_model_cuda_synthetic(const char *shape, uint64_t seed, ak_err_t *err, wk_model_cuda_t **model_p) {
  if (!model_p) return AK_ERR(err, AK_ERR_INVALID_ARG, "model_p is NULL");
  wk_hparams_t hp;
  AK_TRY(wk_model_cuda_shape(shape, err, &hp));
  wk_model_cuda_t *m = NULL;
  AK_TRY(wk_cuda_alloc_model(&hp, err, &m));
  ak_status_t st = wk_cuda_fill_weights(m, seed, err);
  if (st < 0) goto err_free_model;
  *model_p = m;
  return AK_OK;

err_free_model:
  wk_model_cuda_free(m);
  return st;
}

/* --- accessors --- */

const wk_hparams_t *wk_model_cuda_hparams(const wk_model_cuda_t *m) { return &m->hp; }
const wk_cuda_layer_t *wk_model_cuda_layer(const wk_model_cuda_t *m, int32_t l) {
  return (l >= 0 && l < m->hp.n_layers) ? &m->layers[l] : NULL;
}
const void *wk_model_cuda_token_embd(const wk_model_cuda_t *m) { return m->token_embd; }
const void *wk_model_cuda_output(const wk_model_cuda_t *m) { return m->output; }
const float *wk_model_cuda_output_norm(const wk_model_cuda_t *m) { return m->output_norm; }
size_t wk_model_cuda_weight_bytes(const wk_model_cuda_t *m) { return m->weight_bytes; }
