/* wk_model: GGUF → Llama hyper-parameters and weight views. */
#include "wk_model.h"

#include <math.h>
#include <stdio.h>
#include <string.h>

#include "ak_alloc.h"

struct wk_model {
  ak_gguf_t *gguf;
  wk_hparams_t hp;
  wk_layer_t *layers;  /* [n_layers] */
  float *norms;        /* [(2 * n_layers + 1) * dim] owned f32 copies of the norm weights */
  kn_weight_t token_embd;
  kn_weight_t output;
  const float *output_norm;
  size_t weight_bytes;
  wk_model_params_t params;
  float *f32_weights;      /* all dequantized matrices when params.weights_f32 */
  size_t f32_weights_bytes;
  size_t f32_used_elems;
};

wk_model_params_t wk_model_params_default(void) {
  wk_model_params_t p;
  memset(&p, 0, sizeof p);
  return p;
}

/* `<arch>.<suffix>` as a key. */
static const char *wk_key(char *buf, size_t n, const char *arch, const char *suffix) {
  snprintf(buf, n, "%s.%s", arch, suffix);
  return buf;
}

static ak_status_t wk_get_i32(const ak_gguf_t *g, const char *arch, const char *suffix, int required,
                              int32_t def, ak_err_t *err, int32_t *out_p) {
  char key[160];
  uint32_t v = 0;
  ak_status_t st = ak_gguf_get_u32(g, wk_key(key, sizeof key, arch, suffix), err, &v);
  if (st == AK_ERR_NOT_FOUND && !required) {
    *out_p = def;
    return AK_OK;
  }
  if (st < 0) return st == AK_ERR_NOT_FOUND ? AK_ERR(err, AK_ERR_FORMAT, "missing metadata key %s", key) : st;
  if (v == 0 || v > (1u << 30)) return AK_ERR(err, AK_ERR_FORMAT, "%s = %u is out of range", key, v);
  *out_p = (int32_t)v;
  return AK_OK;
}

static ak_status_t wk_get_f32(const ak_gguf_t *g, const char *arch, const char *suffix, float def,
                              ak_err_t *err, float *out_p) {
  char key[160];
  float v = 0;
  ak_status_t st = ak_gguf_get_f32(g, wk_key(key, sizeof key, arch, suffix), err, &v);
  if (st == AK_ERR_NOT_FOUND) {
    *out_p = def;
    return AK_OK;
  }
  if (st < 0) return st;
  if (!isfinite(v)) return AK_ERR(err, AK_ERR_FORMAT, "%s is not finite", key);
  *out_p = v;
  return AK_OK;
}

/* Finds `name` and checks it is a 2-D (or 1-D when ne1 == 0) tensor of the given shape. */
static ak_status_t wk_tensor(const ak_gguf_t *g, const char *name, int64_t ne0, int64_t ne1, ak_err_t *err,
                             const ak_gguf_tensor_t **t_p) {
  const ak_gguf_tensor_t *t = ak_gguf_find_tensor(g, name);
  if (!t) return AK_ERR(err, AK_ERR_FORMAT, "missing tensor %s", name);
  int64_t want1 = ne1 ? ne1 : 1;
  if (t->ne[0] != ne0 || t->ne[1] != want1 || t->ne[2] != 1 || t->ne[3] != 1)
    return AK_ERR(err, AK_ERR_FORMAT, "tensor %s has shape [%lld, %lld, %lld, %lld], expected [%lld, %lld]", name,
                  (long long)t->ne[0], (long long)t->ne[1], (long long)t->ne[2], (long long)t->ne[3],
                  (long long)ne0, (long long)want1);
  *t_p = t;
  return AK_OK;
}

static ak_status_t wk_weight(wk_model_t *m, const char *name, int64_t n_rows, int64_t n_cols, ak_err_t *err,
                             kn_weight_t *w) {
  const ak_gguf_tensor_t *t = NULL;
  AK_TRY(wk_tensor(m->gguf, name, n_cols, n_rows, err, &t));
  switch (t->type) {
    case AK_TYPE_F32: case AK_TYPE_F16: case AK_TYPE_BF16:
    case AK_TYPE_Q4_0: case AK_TYPE_Q4_1: case AK_TYPE_Q8_0: break;
    default: return AK_ERR(err, AK_ERR_UNSUPPORTED, "tensor %s has type %s, which matmul does not take", name,
                           ak_type_name(t->type));
  }
  w->type = t->type;
  w->n_rows = n_rows;
  w->n_cols = n_cols;
  w->data = t->data;
  if (m->params.weights_f32) {
    size_t n = (size_t)n_rows * (size_t)n_cols;
    if (m->f32_used_elems + n > m->f32_weights_bytes / sizeof(float))
      return AK_ERR(err, AK_ERR_INTERNAL, "f32 weight arena too small at %s", name);
    float *dst = m->f32_weights + m->f32_used_elems;
    size_t row_bytes = ak_type_row_bytes(t->type, n_cols);
    for (int64_t r = 0; r < n_rows; r++)
      AK_TRY(ak_dequant_row(t->type, (const char *)t->data + (size_t)r * row_bytes, dst + (size_t)r * n_cols, n_cols));
    m->f32_used_elems += n;
    w->type = AK_TYPE_F32;
    w->data = dst;
    m->weight_bytes += n * sizeof(float);
    return AK_OK;
  }
  m->weight_bytes += t->n_bytes;
  return AK_OK;
}

/* Elements of every matrix the model will dequantize (for the f32 arena). */
static size_t wk_matrix_elems(const wk_hparams_t *hp) {
  size_t q_dim = (size_t)hp->n_heads * hp->head_dim, kv_dim = (size_t)hp->n_kv_heads * hp->head_dim;
  size_t per_layer = 2 * q_dim * hp->dim + 2 * kv_dim * hp->dim + 3 * (size_t)hp->ffn_dim * hp->dim;
  return (size_t)hp->n_vocab * hp->dim * 2 + per_layer * (size_t)hp->n_layers;
}

/* Copies a norm vector into `dst` as f32 whatever its stored type. */
static ak_status_t wk_norm(wk_model_t *m, const char *name, float *dst, ak_err_t *err) {
  const ak_gguf_tensor_t *t = NULL;
  AK_TRY(wk_tensor(m->gguf, name, m->hp.dim, 0, err, &t));
  ak_status_t st = ak_dequant_row(t->type, t->data, dst, m->hp.dim);
  if (st < 0) return AK_ERR(err, st, "tensor %s: cannot convert type %s to f32", name, ak_type_name(t->type));
  for (int32_t i = 0; i < m->hp.dim; i++)
    if (!isfinite(dst[i])) return AK_ERR(err, AK_ERR_FORMAT, "tensor %s has a non-finite value at %d", name, i);
  m->weight_bytes += t->n_bytes;
  return AK_OK;
}

static ak_status_t wk_read_hparams(wk_model_t *m, ak_err_t *err) {
  const ak_gguf_t *g = m->gguf;
  wk_hparams_t *hp = &m->hp;
  const char *s;
  size_t n;
  ak_status_t st = ak_gguf_get_str(g, "general.architecture", err, &s, &n);
  if (st < 0) return AK_ERR(err, AK_ERR_FORMAT, "missing general.architecture");
  if (n >= sizeof hp->arch) n = sizeof hp->arch - 1;
  memcpy(hp->arch, s, n);
  hp->arch[n] = '\0';
  /* Llama-layout architectures without biases. */
  if (strcmp(hp->arch, "llama") != 0 && strcmp(hp->arch, "mistral") != 0)
    return AK_ERR(err, AK_ERR_UNSUPPORTED, "architecture '%s' is not supported (llama, mistral)", hp->arch);
  if (ak_gguf_get_str(g, "general.name", NULL, &s, &n) == AK_OK) {
    if (n >= sizeof hp->name) n = sizeof hp->name - 1;
    memcpy(hp->name, s, n);
    hp->name[n] = '\0';
  }
  const char *a = hp->arch;
  AK_TRY(wk_get_i32(g, a, "block_count", 1, 0, err, &hp->n_layers));
  AK_TRY(wk_get_i32(g, a, "embedding_length", 1, 0, err, &hp->dim));
  AK_TRY(wk_get_i32(g, a, "feed_forward_length", 1, 0, err, &hp->ffn_dim));
  AK_TRY(wk_get_i32(g, a, "attention.head_count", 1, 0, err, &hp->n_heads));
  AK_TRY(wk_get_i32(g, a, "attention.head_count_kv", 0, hp->n_heads, err, &hp->n_kv_heads));
  AK_TRY(wk_get_i32(g, a, "context_length", 0, 2048, err, &hp->n_ctx_train));
  if (hp->dim % hp->n_heads != 0)
    return AK_ERR(err, AK_ERR_FORMAT, "embedding_length %d is not a multiple of head_count %d", hp->dim, hp->n_heads);
  if (hp->n_heads % hp->n_kv_heads != 0)
    return AK_ERR(err, AK_ERR_FORMAT, "head_count %d is not a multiple of head_count_kv %d", hp->n_heads,
                  hp->n_kv_heads);
  hp->head_dim = hp->dim / hp->n_heads;
  AK_TRY(wk_get_i32(g, a, "rope.dimension_count", 0, hp->head_dim, err, &hp->rope_dims));
  if (hp->rope_dims > hp->head_dim || hp->rope_dims % 2)
    return AK_ERR(err, AK_ERR_FORMAT, "rope.dimension_count %d invalid for head_dim %d", hp->rope_dims, hp->head_dim);
  AK_TRY(wk_get_f32(g, a, "rope.freq_base", 10000.0f, err, &hp->rope_freq_base));
  AK_TRY(wk_get_f32(g, a, "attention.layer_norm_rms_epsilon", 1e-5f, err, &hp->norm_eps));
  if (hp->rope_freq_base <= 0) return AK_ERR(err, AK_ERR_FORMAT, "rope.freq_base %g <= 0", hp->rope_freq_base);
  hp->rope_freq_scale = 1.0f;
  char key[160];
  if (ak_gguf_get_str(g, wk_key(key, sizeof key, a, "rope.scaling.type"), NULL, &s, &n) == AK_OK) {
    if (n == 4 && memcmp(s, "none", 4) == 0) {
    } else if (n == 6 && memcmp(s, "linear", 6) == 0) {
      float factor = 1.0f;
      AK_TRY(wk_get_f32(g, a, "rope.scaling.factor", 1.0f, err, &factor));
      if (factor <= 0) return AK_ERR(err, AK_ERR_FORMAT, "rope.scaling.factor %g <= 0", factor);
      hp->rope_freq_scale = 1.0f / factor;
    } else {
      return AK_ERR(err, AK_ERR_UNSUPPORTED, "rope.scaling.type '%.*s' is not supported (none, linear)", (int)n, s);
    }
  }
  hp->rope_mode = KN_ROPE_NORM; /* llama GGUFs store Q/K permuted for ggml's adjacent-pair RoPE */
  return AK_OK;
}

static ak_status_t wk_load_weights(wk_model_t *m, ak_err_t *err) {
  const wk_hparams_t *hp = &m->hp;
  const ak_gguf_tensor_t *emb = ak_gguf_find_tensor(m->gguf, "token_embd.weight");
  if (!emb) return AK_ERR(err, AK_ERR_FORMAT, "missing tensor token_embd.weight");
  if (emb->ne[1] < 1 || emb->ne[1] > (1 << 24))
    return AK_ERR(err, AK_ERR_FORMAT, "token_embd.weight vocab %lld out of range", (long long)emb->ne[1]);
  m->hp.n_vocab = (int32_t)emb->ne[1];
  if (m->params.weights_f32) {
    m->f32_weights_bytes = wk_matrix_elems(hp) * sizeof(float);
    m->f32_weights = ak_host_alloc(m->f32_weights_bytes, 0);
    if (!m->f32_weights)
      return AK_ERR(err, AK_ERR_NO_MEMORY, "%zu bytes for f32 weights", m->f32_weights_bytes);
  }
  AK_TRY(wk_weight(m, "token_embd.weight", hp->n_vocab, hp->dim, err, &m->token_embd));
  m->hp.tied_embeddings = ak_gguf_find_tensor(m->gguf, "output.weight") == NULL;
  if (hp->tied_embeddings)
    m->output = m->token_embd;
  else
    AK_TRY(wk_weight(m, "output.weight", hp->n_vocab, hp->dim, err, &m->output));

  size_t n_norm = (size_t)(2 * hp->n_layers + 1) * (size_t)hp->dim;
  m->norms = ak_host_alloc(sizeof(float) * n_norm, 0);
  m->layers = ak_host_alloc(sizeof(wk_layer_t) * (size_t)hp->n_layers, 1);
  if (!m->norms || !m->layers) return AK_ERR(err, AK_ERR_NO_MEMORY, "layer tables");
  float *out_norm = m->norms + (size_t)2 * hp->n_layers * hp->dim;
  AK_TRY(wk_norm(m, "output_norm.weight", out_norm, err));
  m->output_norm = out_norm;

  int64_t q_dim = (int64_t)hp->n_heads * hp->head_dim, kv_dim = (int64_t)hp->n_kv_heads * hp->head_dim;
  char name[96];
  for (int32_t l = 0; l < hp->n_layers; l++) {
    wk_layer_t *L = &m->layers[l];
    float *an = m->norms + (size_t)(2 * l) * hp->dim, *fn = an + hp->dim;
#define WK_NAME(suffix) (snprintf(name, sizeof name, "blk.%d.%s", l, suffix), name)
    AK_TRY(wk_norm(m, WK_NAME("attn_norm.weight"), an, err));
    AK_TRY(wk_norm(m, WK_NAME("ffn_norm.weight"), fn, err));
    L->attn_norm = an;
    L->ffn_norm = fn;
    if (ak_gguf_find_tensor(m->gguf, WK_NAME("attn_q.bias")))
      return AK_ERR(err, AK_ERR_UNSUPPORTED, "attention biases (%s) are not supported", name);
    AK_TRY(wk_weight(m, WK_NAME("attn_q.weight"), q_dim, hp->dim, err, &L->wq));
    AK_TRY(wk_weight(m, WK_NAME("attn_k.weight"), kv_dim, hp->dim, err, &L->wk));
    AK_TRY(wk_weight(m, WK_NAME("attn_v.weight"), kv_dim, hp->dim, err, &L->wv));
    AK_TRY(wk_weight(m, WK_NAME("attn_output.weight"), hp->dim, q_dim, err, &L->wo));
    AK_TRY(wk_weight(m, WK_NAME("ffn_gate.weight"), hp->ffn_dim, hp->dim, err, &L->w_gate));
    AK_TRY(wk_weight(m, WK_NAME("ffn_up.weight"), hp->ffn_dim, hp->dim, err, &L->w_up));
    AK_TRY(wk_weight(m, WK_NAME("ffn_down.weight"), hp->dim, hp->ffn_dim, err, &L->w_down));
#undef WK_NAME
  }
  return AK_OK;
}

ak_status_t wk_model_load(const char *path, const wk_model_params_t *params, ak_err_t *err,
                          wk_model_t **model_p) {
  if (!path) return AK_ERR(err, AK_ERR_INVALID_ARG, "path is NULL");
  wk_model_t *m = ak_host_alloc(sizeof *m, 1);
  if (!m) return AK_ERR(err, AK_ERR_NO_MEMORY, "model struct");
  m->params = params ? *params : wk_model_params_default();
  ak_status_t st = ak_gguf_open(path, err, &m->gguf);
  if (st < 0) goto err_free_model;
  if ((st = wk_read_hparams(m, err)) < 0) goto err_free_model;
  if ((st = wk_load_weights(m, err)) < 0) goto err_free_model;
  *model_p = m;
  return AK_OK;

err_free_model:
  wk_model_free(m);
  return st;
}

/* One f32 matrix of a filled model: the next rows x cols of the arena, written by fill. */
static ak_status_t wk_fill_matrix(wk_model_t *m, wk_model_fill_fn fill, void *ctx, wk_tensor_t t, int32_t layer,
                                  int64_t rows, int64_t cols, ak_err_t *err, kn_weight_t *w) {
  float *dst = m->f32_weights + m->f32_used_elems;
  AK_TRY(fill(ctx, t, layer, dst, rows, cols, err));
  m->f32_used_elems += (size_t)rows * (size_t)cols;
  m->weight_bytes += (size_t)rows * (size_t)cols * sizeof(float);
  w->type = AK_TYPE_F32;
  w->n_rows = rows;
  w->n_cols = cols;
  w->data = dst;
  return AK_OK;
}

ak_status_t wk_model_from_fill(const wk_hparams_t *hp, wk_model_fill_fn fill, void *ctx, ak_err_t *err,
                               wk_model_t **model_p) {
  if (!hp || !fill || !model_p) return AK_ERR(err, AK_ERR_INVALID_ARG, "hp, fill and model_p must be set");
  if (hp->n_layers < 1 || hp->dim < 1 || hp->n_heads < 1 || hp->n_kv_heads < 1 || hp->ffn_dim < 1 ||
      hp->n_vocab < 1 || hp->head_dim < 1 || hp->n_heads % hp->n_kv_heads || hp->rope_dims > hp->head_dim ||
      hp->rope_dims % 2)
    return AK_ERR(err, AK_ERR_INVALID_ARG,
                  "inconsistent shape: %d layers, dim %d, %d heads / %d KV heads of %d, ffn %d, vocab %d, rope %d",
                  hp->n_layers, hp->dim, hp->n_heads, hp->n_kv_heads, hp->head_dim, hp->ffn_dim, hp->n_vocab,
                  hp->rope_dims);
  wk_model_t *m = ak_host_alloc(sizeof *m, 1);
  if (!m) return AK_ERR(err, AK_ERR_NO_MEMORY, "model struct");
  m->hp = *hp;
  m->params = wk_model_params_default();
  m->params.weights_f32 = 1;
  ak_status_t st = AK_OK;
  m->f32_weights_bytes = wk_matrix_elems(hp) * sizeof(float);
  m->f32_weights = ak_host_alloc(m->f32_weights_bytes, 0);
  size_t n_norm = (size_t)(2 * hp->n_layers + 1) * (size_t)hp->dim;
  m->norms = ak_host_alloc(sizeof(float) * n_norm, 0);
  m->layers = ak_host_alloc(sizeof(wk_layer_t) * (size_t)hp->n_layers, 1);
  if (!m->f32_weights || !m->norms || !m->layers) {
    st = AK_ERR(err, AK_ERR_NO_MEMORY, "%zu bytes for f32 weights and the layer tables", m->f32_weights_bytes);
    goto fail;
  }
  const int64_t q_dim = (int64_t)hp->n_heads * hp->head_dim, kv_dim = (int64_t)hp->n_kv_heads * hp->head_dim;
  if ((st = wk_fill_matrix(m, fill, ctx, WK_TENSOR_TOKEN_EMBD, -1, hp->n_vocab, hp->dim, err, &m->token_embd)) < 0)
    goto fail;
  if (hp->tied_embeddings)
    m->output = m->token_embd;
  else if ((st = wk_fill_matrix(m, fill, ctx, WK_TENSOR_OUTPUT, -1, hp->n_vocab, hp->dim, err, &m->output)) < 0)
    goto fail;
  float *out_norm = m->norms + (size_t)2 * hp->n_layers * hp->dim;
  if ((st = fill(ctx, WK_TENSOR_OUTPUT_NORM, -1, out_norm, 1, hp->dim, err)) < 0) goto fail;
  m->output_norm = out_norm;
  for (int32_t l = 0; l < hp->n_layers; l++) {
    wk_layer_t *L = &m->layers[l];
    float *an = m->norms + (size_t)(2 * l) * hp->dim, *fn = an + hp->dim;
    if ((st = fill(ctx, WK_TENSOR_ATTN_NORM, l, an, 1, hp->dim, err)) < 0 ||
        (st = fill(ctx, WK_TENSOR_FFN_NORM, l, fn, 1, hp->dim, err)) < 0 ||
        (st = wk_fill_matrix(m, fill, ctx, WK_TENSOR_WQ, l, q_dim, hp->dim, err, &L->wq)) < 0 ||
        (st = wk_fill_matrix(m, fill, ctx, WK_TENSOR_WK, l, kv_dim, hp->dim, err, &L->wk)) < 0 ||
        (st = wk_fill_matrix(m, fill, ctx, WK_TENSOR_WV, l, kv_dim, hp->dim, err, &L->wv)) < 0 ||
        (st = wk_fill_matrix(m, fill, ctx, WK_TENSOR_WO, l, hp->dim, q_dim, err, &L->wo)) < 0 ||
        (st = wk_fill_matrix(m, fill, ctx, WK_TENSOR_GATE, l, hp->ffn_dim, hp->dim, err, &L->w_gate)) < 0 ||
        (st = wk_fill_matrix(m, fill, ctx, WK_TENSOR_UP, l, hp->ffn_dim, hp->dim, err, &L->w_up)) < 0 ||
        (st = wk_fill_matrix(m, fill, ctx, WK_TENSOR_DOWN, l, hp->dim, hp->ffn_dim, err, &L->w_down)) < 0)
      goto fail;
    L->attn_norm = an;
    L->ffn_norm = fn;
  }
  *model_p = m;
  return AK_OK;

fail:
  wk_model_free(m);
  return st;
}

void wk_model_free(wk_model_t *m) {
  if (!m) return;
  if (m->norms) ak_host_free(m->norms, sizeof(float) * (size_t)(2 * m->hp.n_layers + 1) * (size_t)m->hp.dim);
  if (m->layers) ak_host_free(m->layers, sizeof(wk_layer_t) * (size_t)m->hp.n_layers);
  ak_host_free(m->f32_weights, m->f32_weights_bytes);
  ak_gguf_close(m->gguf);
  ak_host_free(m, sizeof *m);
}

const wk_hparams_t *wk_model_hparams(const wk_model_t *m) { return &m->hp; }
const wk_layer_t *wk_model_layer(const wk_model_t *m, int32_t l) {
  return (l >= 0 && l < m->hp.n_layers) ? &m->layers[l] : NULL;
}
const kn_weight_t *wk_model_token_embd(const wk_model_t *m) { return &m->token_embd; }
const kn_weight_t *wk_model_output(const wk_model_t *m) { return &m->output; }
const float *wk_model_output_norm(const wk_model_t *m) { return m->output_norm; }
const ak_gguf_t *wk_model_gguf(const wk_model_t *m) { return m->gguf; }
size_t wk_model_weight_bytes(const wk_model_t *m) { return m->weight_bytes; }
