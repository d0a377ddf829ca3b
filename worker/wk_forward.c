/* wk_forward: embedding → n_layers × (attention, SwiGLU MLP) → norm → logits. */
#include "wk_forward.h"

#include <math.h>
#include <string.h>
#include <time.h>

#include "ak_alloc.h"

struct wk_forward {
  const wk_model_t *model;
  kn_cpu_t *cpu;
  int32_t max_tok;
  /* activations, rows = tokens of the batch */
  float *x;      /* [max_tok, dim] residual stream */
  float *xn;     /* [max_tok, dim] normed */
  float *q;      /* [max_tok, n_heads*head_dim] */
  float *k;      /* [max_tok, n_kv_heads*head_dim] */
  float *v;      /* [max_tok, n_kv_heads*head_dim] */
  float *attn;   /* [max_tok, n_heads*head_dim] */
  float *gate;   /* [max_tok, ffn_dim] */
  float *up;     /* [max_tok, ffn_dim] */
  float *tmp;    /* [max_tok, dim] */
  size_t act_bytes;
  void *mm_ws;   /* matmul workspace (quantized activations) */
  size_t mm_ws_bytes;
  void *attn_ws; /* attention workspace, grown on demand */
  size_t attn_ws_bytes;
  wk_forward_timing_t timing;
};

static double wk_now_us(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec * 1e6 + (double)ts.tv_nsec * 1e-3;
}

ak_status_t wk_forward_create(const wk_model_t *model, kn_cpu_t *cpu, int32_t max_batch_tokens, ak_err_t *err,
                              wk_forward_t **fw_p) {
  if (!model || !cpu) return AK_ERR(err, AK_ERR_INVALID_ARG, "model and cpu must be set");
  if (max_batch_tokens < 1 || max_batch_tokens > (1 << 20))
    return AK_ERR(err, AK_ERR_INVALID_ARG, "max_batch_tokens=%d outside [1, 2^20]", max_batch_tokens);
  const wk_hparams_t *hp = wk_model_hparams(model);
  wk_forward_t *fw = ak_host_alloc(sizeof *fw, 1);
  if (!fw) return AK_ERR(err, AK_ERR_NO_MEMORY, "forward struct");
  fw->model = model;
  fw->cpu = cpu;
  fw->max_tok = max_batch_tokens;
  size_t T = (size_t)max_batch_tokens;
  size_t q_dim = (size_t)hp->n_heads * hp->head_dim, kv_dim = (size_t)hp->n_kv_heads * hp->head_dim;
  size_t per_tok = 3 * (size_t)hp->dim + 2 * q_dim + 2 * kv_dim + 2 * (size_t)hp->ffn_dim;
  fw->act_bytes = sizeof(float) * per_tok * T;
  float *base = ak_host_alloc(fw->act_bytes, 1);
  if (!base) goto err_free_fw;
  fw->x = base;
  fw->xn = fw->x + T * hp->dim;
  fw->tmp = fw->xn + T * hp->dim;
  fw->q = fw->tmp + T * hp->dim;
  fw->attn = fw->q + T * q_dim;
  fw->k = fw->attn + T * q_dim;
  fw->v = fw->k + T * kv_dim;
  fw->gate = fw->v + T * kv_dim;
  fw->up = fw->gate + T * hp->ffn_dim;

  /* The largest workspace any weight of the model needs at T rows. */
  size_t ws = kn_matmul_workspace_bytes(wk_model_output(model), (int64_t)T);
  for (int32_t l = 0; l < hp->n_layers; l++) {
    const wk_layer_t *L = wk_model_layer(model, l);
    const kn_weight_t *ws_w[] = {&L->wq, &L->wk, &L->wv, &L->wo, &L->w_gate, &L->w_up, &L->w_down};
    for (size_t i = 0; i < sizeof ws_w / sizeof ws_w[0]; i++) {
      size_t b = kn_matmul_workspace_bytes(ws_w[i], (int64_t)T);
      if (b > ws) ws = b;
    }
    size_t b = kn_matmul_multi_workspace_bytes(3, ws_w, (int64_t)T);
    if (b > ws) ws = b;
    b = kn_matmul_multi_workspace_bytes(2, ws_w + 4, (int64_t)T);
    if (b > ws) ws = b;
  }
  fw->mm_ws_bytes = ws;
  fw->mm_ws = ak_host_alloc(ws, 0);
  if (!fw->mm_ws) goto err_free_act;
  *fw_p = fw;
  return AK_OK;

err_free_act:
  ak_host_free(fw->x, fw->act_bytes);
err_free_fw:
  ak_host_free(fw, sizeof *fw);
  return AK_ERR(err, AK_ERR_NO_MEMORY, "activations for %d tokens", max_batch_tokens);
}

void wk_forward_destroy(wk_forward_t *fw) {
  if (!fw) return;
  ak_host_free(fw->attn_ws, fw->attn_ws_bytes);
  ak_host_free(fw->mm_ws, fw->mm_ws_bytes);
  ak_host_free(fw->x, fw->act_bytes);
  ak_host_free(fw, sizeof *fw);
}

void wk_forward_last_timing(const wk_forward_t *fw, wk_forward_timing_t *t_p) { *t_p = fw->timing; }

static ak_status_t wk_mm(wk_forward_t *fw, const kn_weight_t *w, const float *x, int64_t n_tok, float *y,
                         ak_err_t *err) {
  double t0 = wk_now_us();
  ak_status_t st = kn_matmul(fw->cpu, w, x, n_tok, y, fw->mm_ws, fw->mm_ws_bytes, err);
  fw->timing.matmul_us += wk_now_us() - t0;
  return st;
}

/* kn_rmsnorm keeps no message (it has no err argument): name the failure here. */
static ak_status_t wk_rmsnorm(wk_forward_t *fw, const float *x, const float *w, int64_t n_tok, float *out,
                              ak_err_t *err) {
  const wk_hparams_t *hp = wk_model_hparams(fw->model);
  ak_status_t st = kn_rmsnorm(fw->cpu, x, w, n_tok, hp->dim, hp->norm_eps, out);
  if (st < 0) return AK_ERR(err, st, "rmsnorm of %lld rows of %d failed", (long long)n_tok, hp->dim);
  return AK_OK;
}

/* Several weights over one input (Q/K/V, gate/up): one activation quantization and
 * one fork-join instead of one per weight. */
static ak_status_t wk_mm_multi(wk_forward_t *fw, int n_w, const kn_weight_t *const *w, const float *x,
                               int64_t n_tok, float *const *y, ak_err_t *err) {
  double t0 = wk_now_us();
  ak_status_t st = kn_matmul_multi(fw->cpu, n_w, w, x, n_tok, y, fw->mm_ws, fw->mm_ws_bytes, err);
  fw->timing.matmul_us += wk_now_us() - t0;
  return st;
}

static ak_status_t wk_attention(wk_forward_t *fw, kv_pool_t *pool, int32_t l, int64_t n_tok, ak_err_t *err) {
  const wk_hparams_t *hp = wk_model_hparams(fw->model);
  kn_attn_args_t a;
  memset(&a, 0, sizeof a);
  ak_status_t st = kv_layer_view(pool, l, fw->q, hp->n_heads, &a);
  if (st < 0) return AK_ERR(err, st, "layer %d: %s", l, kv_pool_errmsg(pool));
  a.q = fw->q;
  a.out = fw->attn;
  a.n_tok = n_tok;
  a.n_heads = hp->n_heads;
  a.scale = 1.0f / sqrtf((float)hp->head_dim);
  size_t need = kn_attention_workspace_bytes(&a, kn_cpu_n_threads(fw->cpu));
  if (need > fw->attn_ws_bytes) {
    ak_host_free(fw->attn_ws, fw->attn_ws_bytes);
    fw->attn_ws_bytes = 0;
    fw->attn_ws = ak_host_alloc(need, 0);
    if (!fw->attn_ws) return AK_ERR(err, AK_ERR_NO_MEMORY, "attention workspace of %zu bytes", need);
    fw->attn_ws_bytes = need;
  }
  double t0 = wk_now_us();
  st = kn_attention(fw->cpu, &a, fw->attn_ws, fw->attn_ws_bytes, err);
  fw->timing.attention_us += wk_now_us() - t0;
  return st;
}

/* One transformer block over the batch's rows, updating fw->x in place. */
static ak_status_t wk_layer(wk_forward_t *fw, kv_pool_t *pool, int32_t l, const int32_t *pos, int64_t n_tok,
                            ak_err_t *err) {
  const wk_hparams_t *hp = wk_model_hparams(fw->model);
  const wk_layer_t *L = wk_model_layer(fw->model, l);

  AK_TRY(wk_rmsnorm(fw, fw->x, L->attn_norm, n_tok, fw->xn, err));
  const kn_weight_t *qkv_w[3] = {&L->wq, &L->wk, &L->wv};
  float *qkv_y[3] = {fw->q, fw->k, fw->v};
  AK_TRY(wk_mm_multi(fw, 3, qkv_w, fw->xn, n_tok, qkv_y, err));

  kn_rope_args_t r = {.x = fw->q, .pos = pos, .n_tok = n_tok, .n_heads = hp->n_heads, .head_dim = hp->head_dim,
                      .rot_dims = hp->rope_dims, .freq_base = hp->rope_freq_base,
                      .freq_scale = hp->rope_freq_scale, .mode = hp->rope_mode};
  AK_TRY(kn_rope(fw->cpu, &r, err));
  r.x = fw->k;
  r.n_heads = hp->n_kv_heads;
  AK_TRY(kn_rope(fw->cpu, &r, err));

  ak_status_t st = kv_layer_append(pool, fw->cpu, l, fw->k, fw->v);
  if (st < 0) return AK_ERR(err, st, "layer %d: %s", l, kv_pool_errmsg(pool));
  AK_TRY(wk_attention(fw, pool, l, n_tok, err));

  AK_TRY(wk_mm(fw, &L->wo, fw->attn, n_tok, fw->tmp, err));
  kn_add(fw->cpu, fw->x, fw->tmp, n_tok * hp->dim);

  AK_TRY(wk_rmsnorm(fw, fw->x, L->ffn_norm, n_tok, fw->xn, err));
  const kn_weight_t *gu_w[2] = {&L->w_gate, &L->w_up};
  float *gu_y[2] = {fw->gate, fw->up};
  AK_TRY(wk_mm_multi(fw, 2, gu_w, fw->xn, n_tok, gu_y, err));
  kn_silu_mul(fw->cpu, fw->gate, fw->up, fw->gate, n_tok * hp->ffn_dim);
  AK_TRY(wk_mm(fw, &L->w_down, fw->gate, n_tok, fw->tmp, err));
  kn_add(fw->cpu, fw->x, fw->tmp, n_tok * hp->dim);
  return AK_OK;
}

static ak_status_t wk_check_batch(const wk_forward_t *fw, const wk_forward_batch_t *b, int64_t *n_tok_p,
                                  ak_err_t *err) {
  const wk_hparams_t *hp = wk_model_hparams(fw->model);
  if (!b || !b->tokens || !b->seqs.seqs || !b->seqs.n_new_tokens || b->seqs.n_seqs < 1)
    return AK_ERR(err, AK_ERR_INVALID_ARG, "batch needs sequences and tokens");
  int64_t n_tok = 0;
  for (int32_t i = 0; i < b->seqs.n_seqs; i++) {
    if (b->seqs.n_new_tokens[i] < 1)
      return AK_ERR(err, AK_ERR_INVALID_ARG, "sequence %d brings %d tokens", i, b->seqs.n_new_tokens[i]);
    n_tok += b->seqs.n_new_tokens[i];
  }
  if (n_tok > fw->max_tok)
    return AK_ERR(err, AK_ERR_OVER_BUDGET, "batch of %lld tokens exceeds max_batch_tokens=%d", (long long)n_tok,
                  fw->max_tok);
  for (int64_t t = 0; t < n_tok; t++)
    if (b->tokens[t] < 0 || b->tokens[t] >= hp->n_vocab)
      return AK_ERR(err, AK_ERR_INVALID_ARG, "token %lld: id %d outside [0, %d)", (long long)t, b->tokens[t],
                    hp->n_vocab);
  *n_tok_p = n_tok;
  return AK_OK;
}

ak_status_t wk_forward_run(wk_forward_t *fw, kv_pool_t *pool, const wk_forward_batch_t *b, ak_err_t *err) {
  int64_t n_tok = 0;
  AK_TRY(wk_check_batch(fw, b, &n_tok, err));
  const wk_hparams_t *hp = wk_model_hparams(fw->model);
  memset(&fw->timing, 0, sizeof fw->timing);
  double t_start = wk_now_us();

  ak_status_t st = kv_step_begin(pool, &b->seqs);
  if (st < 0) return AK_ERR(err, st, "%s", kv_pool_errmsg(pool));
  int64_t n_pos = 0; /* == n_tok */
  const int32_t *pos = kv_step_positions(pool, &n_pos);

  st = kn_embed(fw->cpu, wk_model_token_embd(fw->model), b->tokens, n_tok, fw->x, err);
  for (int32_t l = 0; st >= 0 && l < hp->n_layers; l++) st = wk_layer(fw, pool, l, pos, n_tok, err);
  if (st < 0) goto err_abort;

  double t_logits = wk_now_us();
  /* Only the rows whose logits are wanted go through the final norm and the vocab
   * projection: at vocab 49152 that projection costs as much as several layers. */
  if (b->logits) {
    const float *rows = fw->x;
    int64_t n_out = n_tok;
    if (!b->logits_all) {
      int64_t row = 0;
      for (int32_t i = 0; i < b->seqs.n_seqs; i++) {
        row += b->seqs.n_new_tokens[i];
        memcpy(fw->tmp + (size_t)i * hp->dim, fw->x + (size_t)(row - 1) * hp->dim, sizeof(float) * hp->dim);
      }
      rows = fw->tmp;
      n_out = b->seqs.n_seqs;
    }
    st = wk_rmsnorm(fw, rows, wk_model_output_norm(fw->model), n_out, fw->xn, err);
    if (st >= 0)
      st = kn_matmul(fw->cpu, wk_model_output(fw->model), fw->xn, n_out, b->logits, fw->mm_ws, fw->mm_ws_bytes,
                     err);
    if (st < 0) goto err_abort;
  }
  fw->timing.logits_us = wk_now_us() - t_logits;
  st = kv_step_end(pool);
  if (st < 0) goto err_abort;
  fw->timing.other_us = wk_now_us() - t_start - fw->timing.matmul_us - fw->timing.attention_us -
                        fw->timing.logits_us;
  return AK_OK;

err_abort:
  kv_step_abort(pool);
  return st;
}
