/* wk_forward_cuda: the forward pass on the GPU (wk_forward_cuda.h). The layer
 * structure mirrors wk_forward.c line for line so the two stay comparable; what
 * differs is where the data lives:
 *
 *   device  x [T, dim] f32 (residual), xn [T, dim] bf16, q/k/v f32, attention out
 *           bf16, gate/up f32, act bf16, logits f32, the attention split workspace,
 *           and per layer a copy of the step's page table ("region")
 *   host    the pool's tables; a pinned staging area the regions are written into
 *
 * Staging layout (int32), one step:
 *   [ids T][pos T] then per layer l: [page T][slot T][tok_seq_idx T][tok_kv_len T]
 *                                    [last_len S][indptr S+1][indices S*maxp]
 * Every layer has its own region so no copy can read a region a later layer rewrote;
 * the step ends with a stream synchronization before the next one rewrites them. */
#include "wk_forward_cuda.h"

#include <cuda_runtime_api.h>
#include <math.h>
#include <stdint.h>
#include <string.h>
#include <time.h>

#include "ak_alloc.h"
#include "wk_cuda_try.h"
#include "kn_cuda.h"
#include "wk_arkvale_cuda.h"
#include "wk_cuda_sampler.h"

typedef struct {
  void *ptr;
  size_t n_bytes;
} wk_dbuf_t;

struct wk_forward_cuda {
  const wk_model_cuda_t *model;
  wk_hparams_t hp;
  int32_t max_tok;
  int32_t max_seqs;
  int64_t max_pages_per_seq;
  int32_t max_seq_tokens;
  cudaStream_t stream;
  kn_cuda_blas_t *blas;
  /* device buffers; q, k, v are views into qkv and gate, up into gu, each part at one
   * spacing so that kn_cuda_gemm_split runs equal parts as one batched matmul */
  wk_dbuf_t x, xn, qkv, gu, attn, act, rows, logits, attn_ws, region;
  wk_dbuf_t rope_table; /* [T, rope_dims / 2, 2] f32: the step's cos/sin, for every layer's rope */
  wk_dbuf_t q, k, v, gate, up;
  /* pinned staging, host view and its size */
  int32_t *stage;
  size_t stage_bytes;
  float *q_host;         /* pinned [T, n_heads * head_dim]: queries for pools that read them */
  size_t q_host_bytes;
  /* page_ops for pools over device page memory (kv_pool_params_t.page_ops) */
  kv_page_ops_t page_ops;
  char *pages;           /* the page memory they reach */
  size_t page_bytes;
  wk_arkvale_cuda_t *ak; /* digests, estimates and device selections (arkvale, quest) */
  wk_cuda_sampler_t *sampler; /* sampling on the device (wk_forward_cuda_run_sampled) */
  int64_t region_ints; /* per layer */
  wk_forward_timing_t timing;
  /* the graph path (full pools, and arkvale deciding on the device in a step that fills
   * no page): every layer's tables staged before any kernel, then the whole step
   * replayed from one CUDA graph */
  kn_cuda_attn_args_t *pre_attn;      /* [n_layers] */
  kn_cuda_kv_store_args_t *pre_store; /* [n_layers]: run by the rope launch (.store) */
  float *logits_host;                 /* pinned [max(T, max_seqs), n_vocab]: the graph's copy target */
  size_t logits_host_bytes;
  cudaGraphExec_t graph;
  int64_t graph_key[8];               /* n_tok, n_seqs, logits | 2 * sampling, logits_all, split workspace,
                                       * pages, every layer's attention split, ArkVale's launches */
  int use_graphs;
  int64_t graph_launches, graph_captures;
  /* profiling: per layer 6 events (table start, the 4 ArkVale marks, attention end) then
   * the step's start and end */
  cudaEvent_t *ev;
  int n_ev;
  wk_cuda_profile_t prof;
};

#define WK_EV_PER_LAYER 6

static double wk_now_us(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec * 1e6 + (double)ts.tv_nsec * 1e-3;
}

static ak_status_t wk_dbuf_alloc(wk_dbuf_t *b, size_t n_bytes, ak_err_t *err) {
  b->n_bytes = n_bytes;
  return kn_cuda_malloc(n_bytes, err, &b->ptr);
}

static void wk_dbuf_free(wk_dbuf_t *b) {
  kn_cuda_free(b->ptr, b->n_bytes);
  b->ptr = NULL;
  b->n_bytes = 0;
}

void wk_forward_cuda_destroy(wk_forward_cuda_t *fw) {
  if (!fw) return;
  wk_dbuf_t *bufs[] = {&fw->x,   &fw->xn,   &fw->qkv,    &fw->gu,      &fw->attn,
                       &fw->act, &fw->rows, &fw->logits, &fw->attn_ws, &fw->region, &fw->rope_table};
  for (size_t i = 0; i < sizeof bufs / sizeof bufs[0]; i++) wk_dbuf_free(bufs[i]);
  kn_cuda_host_free(fw->stage, fw->stage_bytes);
  kn_cuda_host_free(fw->q_host, fw->q_host_bytes);
  kn_cuda_host_free(fw->logits_host, fw->logits_host_bytes);
  wk_arkvale_cuda_destroy(fw->ak);
  wk_cuda_sampler_destroy(fw->sampler);
  if (fw->graph) cudaGraphExecDestroy(fw->graph);
  for (int i = 0; i < fw->n_ev; i++) cudaEventDestroy(fw->ev[i]);
  ak_host_free(fw->ev, sizeof(cudaEvent_t) * (size_t)fw->n_ev);
  ak_host_free(fw->pre_attn, sizeof(kn_cuda_attn_args_t) * (size_t)fw->hp.n_layers);
  ak_host_free(fw->pre_store, sizeof(kn_cuda_kv_store_args_t) * (size_t)fw->hp.n_layers);
  kn_cuda_blas_destroy(fw->blas);
  if (fw->stream) cudaStreamDestroy(fw->stream);
  ak_host_free(fw, sizeof *fw);
}

static int64_t wk_stage_ints(const wk_forward_cuda_t *fw) {
  return 2 * (int64_t)fw->max_tok + (int64_t)fw->hp.n_layers * fw->region_ints;
}

ak_status_t wk_forward_cuda_create(const wk_model_cuda_t *model, const kv_pool_params_t *kv,
                                   int32_t max_batch_tokens, ak_err_t *err, wk_forward_cuda_t **fw_p) {
  if (!model || !kv || !fw_p) return AK_ERR(err, AK_ERR_INVALID_ARG, "model, kv and fw_p are required");
  if (max_batch_tokens < 1)
    return AK_ERR(err, AK_ERR_INVALID_ARG, "max_batch_tokens=%d must be >= 1", max_batch_tokens);
  if (kv->max_seqs < 1 || kv->page_tokens < 1 || kv->max_seq_tokens < 1)
    return AK_ERR(err, AK_ERR_INVALID_ARG, "kv params need max_seqs, page_tokens and max_seq_tokens");
  wk_forward_cuda_t *fw = ak_host_alloc(sizeof *fw, 1);
  if (!fw) return AK_ERR(err, AK_ERR_NO_MEMORY, "forward struct");
  fw->model = model;
  fw->hp = *wk_model_cuda_hparams(model);
  fw->max_tok = max_batch_tokens;
  fw->max_seqs = kv->max_seqs;
  fw->max_seq_tokens = kv->max_seq_tokens;
  fw->max_pages_per_seq = kv_pages_for_tokens(kv->max_seq_tokens, kv->page_tokens);
  fw->region_ints = 4 * (int64_t)fw->max_tok + 2 * (int64_t)fw->max_seqs + 1 +
                    (int64_t)fw->max_seqs * fw->max_pages_per_seq;
  const wk_hparams_t *hp = &fw->hp;
  size_t T = (size_t)max_batch_tokens, f4 = sizeof(float), b2 = 2;
  size_t q_dim = (size_t)hp->n_heads * hp->head_dim, kv_dim = (size_t)hp->n_kv_heads * hp->head_dim;
  size_t n_out_rows = T > (size_t)fw->max_seqs ? T : (size_t)fw->max_seqs;
  /* one part's slot of qkv / gu, 256-byte aligned (cuBLASLt's largest alignment) */
  size_t qkv_slot = (T * (q_dim > kv_dim ? q_dim : kv_dim) * f4 + 255) / 256 * 256;
  size_t gu_slot = (T * (size_t)hp->ffn_dim * f4 + 255) / 256 * 256;
  ak_status_t st;
  cudaError_t ce = cudaStreamCreateWithFlags(&fw->stream, cudaStreamNonBlocking);
  if (ce != cudaSuccess) {
    fw->stream = NULL;
    st = AK_ERR(err, AK_ERR_CUDA, "stream: %s", cudaGetErrorString(ce));
    goto fail;
  }
  st = kn_cuda_blas_create((kn_cuda_stream_t)fw->stream, err, &fw->blas);
  if (st < 0) goto fail;
  struct {
    wk_dbuf_t *b;
    size_t n_bytes;
  } plan[] = {
      {&fw->x, T * hp->dim * f4},   {&fw->xn, T * hp->dim * b2},         {&fw->qkv, 3 * qkv_slot},
      {&fw->gu, 2 * gu_slot},       {&fw->attn, T * q_dim * b2},         {&fw->act, T * hp->ffn_dim * b2},
      {&fw->rows, n_out_rows * hp->dim * f4}, {&fw->logits, n_out_rows * (size_t)hp->n_vocab * f4},
      {&fw->region, (size_t)wk_stage_ints(fw) * sizeof(int32_t)},
      {&fw->rope_table, T * (size_t)hp->rope_dims * f4},
  };
  for (size_t i = 0; i < sizeof plan / sizeof plan[0]; i++) {
    st = wk_dbuf_alloc(plan[i].b, plan[i].n_bytes, err);
    if (st < 0) goto fail;
  }
  fw->q = (wk_dbuf_t){(char *)fw->qkv.ptr, T * q_dim * f4};
  fw->k = (wk_dbuf_t){(char *)fw->qkv.ptr + qkv_slot, T * kv_dim * f4};
  fw->v = (wk_dbuf_t){(char *)fw->qkv.ptr + 2 * qkv_slot, T * kv_dim * f4};
  fw->gate = (wk_dbuf_t){(char *)fw->gu.ptr, T * (size_t)hp->ffn_dim * f4};
  fw->up = (wk_dbuf_t){(char *)fw->gu.ptr + gu_slot, T * (size_t)hp->ffn_dim * f4};
  /* The split workspace for the largest step: every row may see max_seq_tokens keys. */
  kn_cuda_attn_args_t a;
  memset(&a, 0, sizeof a);
  a.n_tok = max_batch_tokens;
  a.n_heads = hp->n_heads;
  a.n_kv_heads = hp->n_kv_heads;
  a.head_dim = hp->head_dim;
  a.max_kv_len = kv->max_seq_tokens;
  st = wk_dbuf_alloc(&fw->attn_ws, kn_cuda_attention_workspace_bytes(&a), err);
  if (st < 0) goto fail;
  fw->stage_bytes = (size_t)wk_stage_ints(fw) * sizeof(int32_t);
  st = kn_cuda_host_alloc(fw->stage_bytes, err, (void **)&fw->stage, NULL);
  if (st < 0) goto fail;
  fw->q_host_bytes = T * q_dim * f4;
  st = kn_cuda_host_alloc(fw->q_host_bytes, err, (void **)&fw->q_host, NULL);
  if (st < 0) goto fail;
  fw->logits_host_bytes = n_out_rows * (size_t)hp->n_vocab * f4;
  st = kn_cuda_host_alloc(fw->logits_host_bytes, err, (void **)&fw->logits_host, NULL);
  if (st < 0) goto fail;
  st = wk_cuda_sampler_create(fw->max_seqs, hp->n_vocab, err, &fw->sampler);
  if (st < 0) goto fail;
  fw->pre_attn = ak_host_alloc(sizeof(kn_cuda_attn_args_t) * (size_t)hp->n_layers, 1);
  fw->pre_store = ak_host_alloc(sizeof(kn_cuda_kv_store_args_t) * (size_t)hp->n_layers, 1);
  if (!fw->pre_attn || !fw->pre_store) {
    st = AK_ERR(err, AK_ERR_NO_MEMORY, "per-layer argument tables");
    goto fail;
  }
  fw->use_graphs = 1;
  *fw_p = fw;
  return AK_OK;
fail:
  wk_forward_cuda_destroy(fw);
  return st;
}

static kn_cuda_stream_t wk_stream(const wk_forward_cuda_t *fw) { return (kn_cuda_stream_t)fw->stream; }

/* page_ops: whole pages between device page memory and the host, on the forward's
 * stream (so after the K/V store that wrote them), completed before returning. */
static ak_status_t wk_read_page(void *ctx, int32_t pg, void *dst, ak_err_t *err) {
  wk_forward_cuda_t *fw = ctx;
  WK_CUDA_TRY(err, cudaMemcpyAsync(dst, fw->pages + (size_t)pg * fw->page_bytes, fw->page_bytes,
                                   cudaMemcpyDeviceToHost, fw->stream));
  WK_CUDA_TRY(err, cudaStreamSynchronize(fw->stream));
  return AK_OK;
}

static ak_status_t wk_write_page(void *ctx, int32_t pg, const void *src, ak_err_t *err) {
  wk_forward_cuda_t *fw = ctx;
  AK_TRY(wk_arkvale_cuda_join_backups(fw->ak, err)); /* a backup may still be reading this slot */
  WK_CUDA_TRY(err, cudaMemcpyAsync(fw->pages + (size_t)pg * fw->page_bytes, src, fw->page_bytes,
                                   cudaMemcpyHostToDevice, fw->stream));
  WK_CUDA_TRY(err, cudaStreamSynchronize(fw->stream));
  return AK_OK;
}

/* put_digest / score_pages: digests live on the device and every estimate runs there
 * (wk_arkvale_cuda). */
static ak_status_t wk_put_digest(void *ctx, int32_t seq, int32_t layer, int64_t j, const float *digest,
                                 ak_err_t *err) {
  return wk_arkvale_cuda_put_digest(((wk_forward_cuda_t *)ctx)->ak, seq, layer, j, digest, err);
}

static ak_status_t wk_score_batch(void *ctx, int32_t layer, int32_t n, const int32_t *seqs, const float *q,
                                  const int64_t *n_pages, float *const *scores, ak_err_t *err) {
  return wk_arkvale_cuda_score(((wk_forward_cuda_t *)ctx)->ak, layer, n, seqs, q, n_pages, scores, err);
}

static ak_status_t wk_build_digest(void *ctx, int32_t seq, int32_t layer, int64_t j, int32_t pg, ak_err_t *err) {
  return wk_arkvale_cuda_build_digest(((wk_forward_cuda_t *)ctx)->ak, seq, layer, j, pg, err);
}

static ak_status_t wk_backup_page(void *ctx, int32_t pg, void *dst_host, ak_err_t *err) {
  return wk_arkvale_cuda_backup_page(((wk_forward_cuda_t *)ctx)->ak, pg, dst_host, err);
}

static ak_status_t wk_score_pages(void *ctx, int32_t seq, int32_t layer, const float *q, int64_t n_pages,
                                  float *scores, ak_err_t *err) {
  if (n_pages == 0) return AK_OK;
  return wk_score_batch(ctx, layer, 1, &seq, q, &n_pages, &scores, err);
}

ak_status_t wk_forward_cuda_page_ops(wk_forward_cuda_t *fw, void *page_memory, const kv_pool_params_t *kp,
                                     ak_err_t *err, const kv_page_ops_t **ops_p) {
  fw->pages = page_memory;
  fw->page_bytes = kv_page_bytes(kp);
  memset(&fw->page_ops, 0, sizeof fw->page_ops);
  fw->page_ops.ctx = fw;
  fw->page_ops.read_page = wk_read_page;
  fw->page_ops.write_page = wk_write_page;
  int scores = kp->budget_tokens > 0 && (kp->policy == KV_POLICY_ARKVALE || kp->policy == KV_POLICY_QUEST);
  if (scores && !fw->ak) {
    if (kp->max_seqs > fw->max_seqs || kp->max_seq_tokens > fw->max_seq_tokens)
      return AK_ERR(err, AK_ERR_INVALID_ARG, "pool of %d sequences of %d tokens exceeds the forward's %d of %d",
                    kp->max_seqs, kp->max_seq_tokens, fw->max_seqs, fw->max_seq_tokens);
    AK_TRY(wk_arkvale_cuda_create(&fw->hp, kp, page_memory, fw->max_tok, wk_stream(fw), err, &fw->ak));
  }
  if (scores) {
    fw->page_ops.put_digest = wk_put_digest;
    fw->page_ops.score_pages = wk_score_pages;
    fw->page_ops.score_pages_batch = wk_score_batch;
  }
  if (scores && kp->select_on_device) { /* fills: the digest on the stream, the copy into the pinned tier on the
                                          * backup stream (wk_arkvale_cuda_backup_page) */
    fw->page_ops.build_digest = wk_build_digest;
    fw->page_ops.backup_page = wk_backup_page;
  }
  *ops_p = &fw->page_ops;
  return AK_OK;
}

ak_status_t wk_forward_cuda_device_tier(wk_forward_cuda_t *fw, const kv_pool_params_t *kp, size_t alias_slab_bytes,
                                        ak_err_t *err, kv_tier_t **tier_p) {
  if (!fw->ak) return AK_ERR(err, AK_ERR_INVALID_ARG, "call wk_forward_cuda_page_ops for an arkvale pool first");
  return wk_arkvale_cuda_tier(fw->ak, kp, alias_slab_bytes, err, tier_p);
}

ak_status_t wk_forward_cuda_set_decode_gemm(wk_forward_cuda_t *fw, kn_cuda_decode_gemm_t mode, ak_err_t *err) {
  if (!fw) return AK_ERR(err, AK_ERR_INVALID_ARG, "fw is NULL");
  return kn_cuda_blas_set_decode_gemm(fw->blas, mode, err);
}

ak_status_t wk_forward_cuda_profile(wk_forward_cuda_t *fw, int enabled, ak_err_t *err) {
  if (!enabled) {
    for (int i = 0; i < fw->n_ev; i++) cudaEventDestroy(fw->ev[i]);
    ak_host_free(fw->ev, sizeof(cudaEvent_t) * (size_t)fw->n_ev);
    fw->ev = NULL;
    fw->n_ev = 0;
    wk_arkvale_cuda_set_marks(fw->ak, NULL);
    return AK_OK;
  }
  if (fw->ev) return AK_OK;
  int n = fw->hp.n_layers * WK_EV_PER_LAYER + 2;
  fw->ev = ak_host_alloc(sizeof(cudaEvent_t) * (size_t)n, 1);
  if (!fw->ev) return AK_ERR(err, AK_ERR_NO_MEMORY, "profiling events");
  for (int i = 0; i < n; i++) {
    cudaError_t ce = cudaEventCreate(&fw->ev[i]);
    if (ce != cudaSuccess) {
      for (int j = 0; j < i; j++) cudaEventDestroy(fw->ev[j]);
      ak_host_free(fw->ev, sizeof(cudaEvent_t) * (size_t)n);
      fw->ev = NULL;
      return AK_ERR(err, AK_ERR_CUDA, "cudaEventCreate: %s", cudaGetErrorString(ce));
    }
  }
  fw->n_ev = n;
  return AK_OK;
}

void wk_forward_cuda_last_profile(const wk_forward_cuda_t *fw, wk_cuda_profile_t *p) { *p = fw->prof; }

static void wk_ev(wk_forward_cuda_t *fw, int i) {
  if (fw->ev) cudaEventRecord(fw->ev[i], fw->stream);
}

static double wk_ev_ms(const wk_forward_cuda_t *fw, int a, int b) {
  float ms = 0.f;
  return cudaEventElapsedTime(&ms, fw->ev[a], fw->ev[b]) == cudaSuccess ? (double)ms : 0.0;
}

/* After the step's synchronization: sums the layers' phases. */
static void wk_profile_collect(wk_forward_cuda_t *fw) {
  memset(&fw->prof, 0, sizeof fw->prof);
  if (!fw->ev) return;
  for (int l = 0; l < fw->hp.n_layers; l++) {
    int e = l * WK_EV_PER_LAYER;
    fw->prof.tables_ms += wk_ev_ms(fw, e, e + 1);
    fw->prof.estimate_ms += wk_ev_ms(fw, e + 1, e + 2);
    fw->prof.select_ms += wk_ev_ms(fw, e + 2, e + 3);
    fw->prof.recall_ms += wk_ev_ms(fw, e + 3, e + 4);
    fw->prof.attention_ms += wk_ev_ms(fw, e + 4, e + 5);
  }
  int s0 = fw->hp.n_layers * WK_EV_PER_LAYER;
  fw->prof.total_ms = wk_ev_ms(fw, s0, s0 + 1);
}

void wk_forward_cuda_last_timing(const wk_forward_cuda_t *fw, wk_forward_timing_t *t_p) { *t_p = fw->timing; }


/* y (f32, or added into it) = x (bf16 [n_tok, n_in]) · Wᵀ. */
static ak_status_t wk_gemm(wk_forward_cuda_t *fw, const void *x, const void *w, int64_t n_tok, int64_t n_in,
                           int64_t n_out, void *y, kn_cuda_dtype_t y_dtype, int accumulate, ak_err_t *err) {
  kn_cuda_gemm_args_t g = {.x = x, .w = w, .y = y, .y_dtype = y_dtype, .n_tok = n_tok, .n_in = n_in,
                           .n_out = n_out, .accumulate = accumulate};
  return kn_cuda_gemm(fw->blas, &g, err);
}

static ak_status_t wk_norm(wk_forward_cuda_t *fw, float *x, const float *w, int64_t n_tok, void *out,
                           ak_err_t *err) {
  kn_cuda_rmsnorm_args_t r = {.x = x, .delta = NULL, .weight = w, .out = out, .out_dtype = KN_CUDA_BF16,
                              .n_tok = n_tok, .dim = fw->hp.dim, .eps = fw->hp.norm_eps};
  return kn_cuda_rmsnorm(&r, wk_stream(fw), err);
}

/* Offsets (in int32) inside one layer's region. */
typedef struct {
  int64_t page, slot, seq_idx, kv_len, last_len, indptr, indices;
} wk_region_t;

static wk_region_t wk_region(const wk_forward_cuda_t *fw) {
  int64_t T = fw->max_tok, S = fw->max_seqs;
  wk_region_t r = {0, T, 2 * T, 3 * T, 4 * T, 4 * T + S, 4 * T + 2 * S + 1};
  return r;
}

/* Stages a layer's view for upload (h: its region in the staging area; the page list
 * only when `indices`, the host path writes it there itself) and fills the attention's
 * arguments over the region's device copy d: one place for both table paths. Returns the
 * layer's longest token context (the split's hint). prefill_tiles stays 0. */
static int32_t wk_stage_attn(const wk_forward_cuda_t *fw, const kn_attn_args_t *v, int64_t n_tok, int32_t *h,
                             const int32_t *d, int indices, kn_cuda_attn_args_t *a) {
  wk_region_t o = wk_region(fw);
  int32_t S = v->kv.n_seqs;
  memcpy(h + o.seq_idx, v->tok_seq_idx, sizeof(int32_t) * (size_t)n_tok);
  memcpy(h + o.kv_len, v->tok_kv_len, sizeof(int32_t) * (size_t)n_tok);
  memcpy(h + o.last_len, v->kv.last_page_len, sizeof(int32_t) * (size_t)S);
  memcpy(h + o.indptr, v->kv.indptr, sizeof(int32_t) * (size_t)(S + 1));
  if (indices) memcpy(h + o.indices, v->kv.indices, sizeof(int32_t) * (size_t)v->kv.indptr[S]);
  int32_t max_kv_len = 0;
  for (int64_t t = 0; t < n_tok; t++)
    if (v->tok_kv_len[t] > max_kv_len) max_kv_len = v->tok_kv_len[t];
  memset(a, 0, sizeof *a);
  a->q = fw->q.ptr;
  a->out = fw->attn.ptr;
  a->out_dtype = KN_CUDA_BF16;
  a->n_tok = n_tok;
  a->n_heads = fw->hp.n_heads;
  a->n_kv_heads = fw->hp.n_kv_heads;
  a->head_dim = fw->hp.head_dim;
  a->scale = 1.0f / sqrtf((float)fw->hp.head_dim);
  a->tok_seq_idx = d + o.seq_idx;
  a->tok_kv_len = d + o.kv_len;
  a->max_kv_len = max_kv_len; /* this layer's own split (ArkVale's budgeted layers attend fewer keys) */
  /* without ArkVale's device ops nothing between the K/V store and the attention writes
   * pages or tables: the attention reads them early (kn_cuda.h) */
  a->kv_stable = fw->ak ? 0 : 1;
  a->kv.k_base = v->kv.k_base;
  a->kv.v_base = v->kv.v_base;
  a->kv.kv_dtype = KN_CUDA_F16;
  a->kv.page_stride_elems = v->kv.page_stride_elems;
  a->kv.head_stride_elems = v->kv.head_stride_elems;
  a->kv.page_tokens = v->kv.page_tokens;
  a->kv.n_seqs = S;
  a->kv.indptr = d + o.indptr;
  a->kv.indices = d + o.indices;
  a->kv.last_page_len = d + o.last_len;
  return max_kv_len;
}

/* Layer l's page table: the step's slots go up and K/V are stored into the pages; the
 * pool digests and backs up what filled (through page_ops) and, for policies that read
 * them, gets the queries; then the view goes up. */
static ak_status_t wk_layer_table(wk_forward_cuda_t *fw, kv_pool_t *pool, int32_t l, int64_t n_tok,
                                  kn_cuda_attn_args_t *a, ak_err_t *err) {
  const int32_t *page, *slot;
  ak_status_t st = kv_layer_slots(pool, l, &page, &slot);
  if (st < 0) return AK_ERR(err, st, "layer %d: %s", l, kv_pool_errmsg(pool));
  wk_region_t o = wk_region(fw);
  int64_t base = 2 * (int64_t)fw->max_tok + (int64_t)l * fw->region_ints;
  int32_t *h = fw->stage + base;
  int32_t *d = (int32_t *)fw->region.ptr + base;
  memcpy(h + o.page, page, sizeof(int32_t) * (size_t)n_tok);
  memcpy(h + o.slot, slot, sizeof(int32_t) * (size_t)n_tok);
  WK_CUDA_TRY(err, cudaMemcpyAsync(d, h, sizeof(int32_t) * (size_t)o.seq_idx, cudaMemcpyHostToDevice, fw->stream));
  const kv_pool_params_t *kp = kv_pool_params(pool);
  int64_t head_stride = (int64_t)kp->page_tokens * kp->head_dim;
  int64_t page_stride = 2 * (int64_t)kp->n_kv_heads * head_stride;
  char *kbase = (char *)kp->page_memory;
  kn_cuda_kv_store_args_t ks = {.k = fw->k.ptr, .v = fw->v.ptr, .k_base = kbase,
                                .v_base = kbase + (size_t)(page_stride / 2) * 2, .kv_dtype = KN_CUDA_F16,
                                .page_stride_elems = page_stride, .head_stride_elems = head_stride,
                                .n_kv_heads = fw->hp.n_kv_heads, .head_dim = fw->hp.head_dim,
                                .dst_page = d + o.page, .dst_slot = d + o.slot, .n_tok = n_tok};
  AK_TRY(kn_cuda_kv_store(&ks, wk_stream(fw), err));
  st = kv_layer_commit(pool, l);
  if (st < 0) return AK_ERR(err, st, "layer %d: %s", l, kv_pool_errmsg(pool));
  const float *q_host = NULL;
  if (kv_pool_wants_queries(pool)) {
    size_t q_bytes = sizeof(float) * (size_t)n_tok * (size_t)fw->hp.n_heads * (size_t)fw->hp.head_dim;
    WK_CUDA_TRY(err, cudaMemcpyAsync(fw->q_host, fw->q.ptr, q_bytes, cudaMemcpyDeviceToHost, fw->stream));
    WK_CUDA_TRY(err, cudaStreamSynchronize(fw->stream));
    q_host = fw->q_host;
  }
  kn_attn_args_t v;
  memset(&v, 0, sizeof v);
  st = kv_layer_view(pool, l, q_host, fw->hp.n_heads, &v);
  if (st < 0) return AK_ERR(err, st, "layer %d: %s", l, kv_pool_errmsg(pool));
  int32_t S = v.kv.n_seqs, n_idx = v.kv.indptr[S];
  if (S > fw->max_seqs || n_idx > fw->max_seqs * fw->max_pages_per_seq)
    return AK_ERR(err, AK_ERR_INTERNAL, "layer %d: %d sequences / %d pages exceed the staging area", l, S, n_idx);
  wk_stage_attn(fw, &v, n_tok, h, d, 1, a);
  WK_CUDA_TRY(err, cudaMemcpyAsync(d + o.seq_idx, h + o.seq_idx, sizeof(int32_t) * (size_t)(o.indices - o.seq_idx + n_idx),
                                   cudaMemcpyHostToDevice, fw->stream));
  if (fw->ak) /* select_on_device: the plan rewrites the selecting sequences' views */
    AK_TRY(wk_arkvale_cuda_layer(fw->ak, pool, l, S, v.tok_seq_idx, n_tok, fw->q.ptr, d + o.indptr, d + o.indices,
                                 err));
  /* more tokens than sequences: a prefill run is in the step, and the tiled path reads
   * each K/V row once per query tile (H100, a 16k-token causal prefill at longchat-7b
   * shape: 722.6 -> 133.5 ms a layer's attention); decode-only steps keep the per-token
   * path without its extra launch */
  a->prefill_tiles = n_tok > S ? 1 : 0;
  return AK_OK;
}

/* The graph path's table phase for one layer of a full pool (no queries needed):
 * stages slots and view in the layer's region (the caller uploads every region at
 * once) and fills the layer's K/V-store and attention arguments. Host only. */
static ak_status_t wk_layer_table_host(wk_forward_cuda_t *fw, kv_pool_t *pool, int32_t l, int64_t n_tok,
                                       int32_t *max_kv_len_p, ak_err_t *err) {
  const int32_t *page, *slot;
  ak_status_t st = kv_layer_slots(pool, l, &page, &slot);
  if (st < 0) return AK_ERR(err, st, "layer %d: %s", l, kv_pool_errmsg(pool));
  if (fw->ak) { /* a step that fills no page: the commit only books (checked by the caller) */
    st = kv_layer_commit(pool, l);
    if (st < 0) return AK_ERR(err, st, "layer %d: %s", l, kv_pool_errmsg(pool));
  }
  wk_region_t o = wk_region(fw);
  int64_t base = 2 * (int64_t)fw->max_tok + (int64_t)l * fw->region_ints;
  int32_t *h = fw->stage + base, *d = (int32_t *)fw->region.ptr + base;
  kn_attn_args_t v;
  memset(&v, 0, sizeof v);
  /* the page list straight into the upload area (one copy of it less a layer) */
  st = kv_layer_view_into(pool, l, NULL, fw->hp.n_heads, h + o.indices,
                          (int64_t)fw->max_seqs * fw->max_pages_per_seq, &v);
  if (st < 0) return AK_ERR(err, st, "layer %d: %s", l, kv_pool_errmsg(pool));
  int32_t S = v.kv.n_seqs;
  if (S > fw->max_seqs)
    return AK_ERR(err, AK_ERR_INTERNAL, "layer %d: %d sequences exceed the staging area", l, S);
  memcpy(h + o.page, page, sizeof(int32_t) * (size_t)n_tok);
  memcpy(h + o.slot, slot, sizeof(int32_t) * (size_t)n_tok);
  kn_cuda_attn_args_t *a = &fw->pre_attn[l];
  int32_t max_kv_len = wk_stage_attn(fw, &v, n_tok, h, d, 0, a);
  if (max_kv_len > *max_kv_len_p) *max_kv_len_p = max_kv_len;
  kn_cuda_kv_store_args_t *ks = &fw->pre_store[l];
  memset(ks, 0, sizeof *ks);
  ks->k = fw->k.ptr;
  ks->v = fw->v.ptr;
  ks->k_base = (void *)v.kv.k_base;
  ks->v_base = (void *)v.kv.v_base;
  ks->kv_dtype = KN_CUDA_F16;
  ks->page_stride_elems = v.kv.page_stride_elems;
  ks->head_stride_elems = v.kv.head_stride_elems;
  ks->n_kv_heads = fw->hp.n_kv_heads;
  ks->head_dim = fw->hp.head_dim;
  ks->dst_page = d + o.page;
  ks->dst_slot = d + o.slot;
  ks->n_tok = n_tok;
  if (fw->ak) AK_TRY(wk_arkvale_cuda_stage(fw->ak, pool, l, S, v.tok_seq_idx, n_tok, err));
  return AK_OK;
}

/* One transformer block over the batch's rows, updating x in place. */
static ak_status_t wk_layer(wk_forward_cuda_t *fw, kv_pool_t *pool, int32_t l, const int32_t *d_pos, int64_t n_tok,
                            int pre, ak_err_t *err) {
  const wk_hparams_t *hp = &fw->hp;
  const wk_cuda_layer_t *L = wk_model_cuda_layer(fw->model, l);
  int64_t q_dim = (int64_t)hp->n_heads * hp->head_dim, kv_dim = (int64_t)hp->n_kv_heads * hp->head_dim;

  AK_TRY(wk_norm(fw, fw->x.ptr, L->attn_norm, n_tok, fw->xn.ptr, err));
  kn_cuda_rope_args_t r = {.x = fw->q.ptr, .pos = d_pos, .n_tok = n_tok, .n_heads = hp->n_heads,
                           .head_dim = hp->head_dim, .rot_dims = hp->rope_dims, .freq_base = hp->rope_freq_base,
                           .freq_scale = hp->rope_freq_scale, .mode = (int32_t)hp->rope_mode,
                           .x2 = fw->k.ptr, .n_heads2 = hp->n_kv_heads, /* Q and K together */
                           .table = fw->rope_table.ptr}; /* the step's cos/sin (wk_step_kernels) */
  /* The graph path's tables are up before the step (pre): the rope also stores K and V
   * into the pages. (Graph steps never profile, so the per-layer tables path below keeps
   * the store a profiled step counts as tables_ms.) */
  if (pre) r.store = &fw->pre_store[l];
  const char *wqkv = L->wqkv;
  /* Q, K and V from one pass over the fused weight, rotated (and stored) in the GEMV's
   * epilogue on decode-sized steps (else a RoPE launch follows inside the call) */
  kn_cuda_gemm_split_args_t qkv = {.x = fw->xn.ptr, .w = wqkv, .n_parts = 3, .rows = {q_dim, kv_dim, kv_dim},
                                   .y = {fw->q.ptr, fw->k.ptr, fw->v.ptr}, .y_dtype = KN_CUDA_F32, .n_tok = n_tok,
                                   .n_in = hp->dim, .accumulate = 0, .rope = &r};
  AK_TRY(kn_cuda_gemm_split(fw->blas, &qkv, err));

  kn_cuda_attn_args_t a;
  int e = l * WK_EV_PER_LAYER;
  wk_ev(fw, e);
  if (fw->ev) wk_arkvale_cuda_set_marks(fw->ak, &fw->ev[e + 1]);
  if (pre) { /* tables staged and uploaded before the step's first kernel */
    a = fw->pre_attn[l];
    if (fw->ak) { /* ArkVale's decision, its tables up already (wk_arkvale_cuda_upload) */
      wk_region_t o = wk_region(fw);
      int32_t *d = (int32_t *)fw->region.ptr + 2 * (int64_t)fw->max_tok + (int64_t)l * fw->region_ints;
      AK_TRY(wk_arkvale_cuda_launch(fw->ak, l, fw->q.ptr, d + o.indptr, d + o.indices, 0, err));
    }
  } else {
    AK_TRY(wk_layer_table(fw, pool, l, n_tok, &a, err));
  }
  if (fw->ev && (!fw->ak || !kv_pool_params(pool)->select_on_device || l < kv_pool_params(pool)->n_full_layers))
    for (int i = 1; i <= 4; i++) wk_ev(fw, e + i); /* no ArkVale phases in this layer */
  size_t need = kn_cuda_attention_workspace_bytes(&a);
  if (need > fw->attn_ws.n_bytes)
    return AK_ERR(err, AK_ERR_INTERNAL, "attention workspace of %zu bytes, the step needs %zu", fw->attn_ws.n_bytes,
                  need);
  AK_TRY(kn_cuda_attention(&a, fw->attn_ws.ptr, fw->attn_ws.n_bytes, wk_stream(fw), err));
  wk_ev(fw, e + 5);
  AK_TRY(wk_gemm(fw, fw->attn.ptr, L->wo, n_tok, q_dim, hp->dim, fw->x.ptr, KN_CUDA_F32, 1, err));

  AK_TRY(wk_norm(fw, fw->x.ptr, L->ffn_norm, n_tok, fw->xn.ptr, err));
  const char *wgu = L->wgate_up;
  /* gate|up and SwiGLU: fused into the GEMV's epilogue for decode-sized steps */
  kn_cuda_gemm_split_args_t gu = {.x = fw->xn.ptr, .w = wgu, .n_parts = 2, .rows = {hp->ffn_dim, hp->ffn_dim},
                                  .y = {fw->gate.ptr, fw->up.ptr}, .y_dtype = KN_CUDA_F32, .n_tok = n_tok,
                                  .n_in = hp->dim, .accumulate = 0, .swiglu_out = fw->act.ptr};
  AK_TRY(kn_cuda_gemm_split(fw->blas, &gu, err));
  AK_TRY(wk_gemm(fw, fw->act.ptr, L->wdown, n_tok, hp->ffn_dim, hp->dim, fw->x.ptr, KN_CUDA_F32, 1, err));
  return AK_OK;
}

static ak_status_t wk_check_batch(const wk_forward_cuda_t *fw, const wk_forward_batch_t *b, int64_t *n_tok_p,
                                  ak_err_t *err) {
  if (!b || !b->tokens || !b->seqs.seqs || !b->seqs.n_new_tokens || b->seqs.n_seqs < 1)
    return AK_ERR(err, AK_ERR_INVALID_ARG, "batch needs sequences and tokens");
  if (b->seqs.n_seqs > fw->max_seqs)
    return AK_ERR(err, AK_ERR_OVER_BUDGET, "batch of %d sequences exceeds %d", b->seqs.n_seqs, fw->max_seqs);
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
    if (b->tokens[t] < 0 || b->tokens[t] >= fw->hp.n_vocab)
      return AK_ERR(err, AK_ERR_INVALID_ARG, "token %lld: id %d outside [0, %d)", (long long)t, b->tokens[t],
                    fw->hp.n_vocab);
  *n_tok_p = n_tok;
  return AK_OK;
}

/* The final norm and the vocab projection of the wanted rows; logits to the host when
 * `dst`, token ids (and logprobs) to the sampler's staging when `sample`. */
static ak_status_t wk_logits(wk_forward_cuda_t *fw, const wk_forward_batch_t *b, int64_t n_tok, float *dst,
                             int sample, ak_err_t *err) {
  const wk_hparams_t *hp = &fw->hp;
  size_t row_bytes = sizeof(float) * (size_t)hp->dim;
  int64_t n_out = n_tok;
  float *rows = fw->rows.ptr;
  if (b->logits_all || n_tok == b->seqs.n_seqs) {
    rows = fw->x.ptr; /* every row wanted (or one token a sequence): the norm reads x itself */
  } else {
    int64_t row = 0;
    for (int32_t i = 0; i < b->seqs.n_seqs; i++) {
      row += b->seqs.n_new_tokens[i];
      WK_CUDA_TRY(err, cudaMemcpyAsync((char *)fw->rows.ptr + (size_t)i * row_bytes,
                                       (const char *)fw->x.ptr + (size_t)(row - 1) * row_bytes, row_bytes,
                                       cudaMemcpyDeviceToDevice, fw->stream));
    }
    n_out = b->seqs.n_seqs;
  }
  AK_TRY(wk_norm(fw, rows, wk_model_cuda_output_norm(fw->model), n_out, fw->xn.ptr, err));
  AK_TRY(wk_gemm(fw, fw->xn.ptr, wk_model_cuda_output(fw->model), n_out, hp->dim, hp->n_vocab, fw->logits.ptr,
                 KN_CUDA_F32, 0, err));
  if (sample) /* one row per sequence (run_sampled refuses logits_all) */
    AK_TRY(wk_cuda_sampler_launch(fw->sampler, fw->logits.ptr, (int32_t)n_out, fw->stream, err));
  if (dst)
    WK_CUDA_TRY(err, cudaMemcpyAsync(dst, fw->logits.ptr, sizeof(float) * (size_t)n_out * (size_t)hp->n_vocab,
                                     cudaMemcpyDeviceToHost, fw->stream));
  return AK_OK;
}

/* Every kernel of a step after its tables are on the device: embedding, the layers,
 * (when wanted) the logits into `logits_dst` and the sampled ids into the sampler's
 * staging. `pre`: the layers' tables were staged up front (the graph path); otherwise
 * each layer builds and uploads its own. */
static ak_status_t wk_step_kernels(wk_forward_cuda_t *fw, kv_pool_t *pool, const wk_forward_batch_t *b,
                                   int64_t n_tok, int pre, float *logits_dst, int sample, ak_err_t *err) {
  int32_t *d_ids = fw->region.ptr, *d_pos = d_ids + fw->max_tok;
  kn_cuda_embed_args_t e = {.table = wk_model_cuda_token_embd(fw->model), .table_dtype = KN_CUDA_BF16,
                            .ids = d_ids, .out = fw->x.ptr, .n_tok = n_tok, .dim = fw->hp.dim,
                            .n_vocab = fw->hp.n_vocab, .bad_id_flag = NULL};
  AK_TRY(kn_cuda_embed(&e, wk_stream(fw), err));
  /* every layer rotates at these positions: their cos/sin once */
  kn_cuda_rope_table_args_t rt = {.pos = d_pos, .n_tok = n_tok, .rot_dims = fw->hp.rope_dims,
                                  .freq_base = fw->hp.rope_freq_base, .freq_scale = fw->hp.rope_freq_scale,
                                  .table = fw->rope_table.ptr};
  AK_TRY(kn_cuda_rope_table(&rt, wk_stream(fw), err));
  for (int32_t l = 0; l < fw->hp.n_layers; l++) AK_TRY(wk_layer(fw, pool, l, d_pos, n_tok, pre, err));
  if (logits_dst || sample) AK_TRY(wk_logits(fw, b, n_tok, logits_dst, sample, err));
  return AK_OK;
}

/* The graph path: a decode batch (one token per sequence) on a full pool, or on an
 * arkvale pool deciding on the device in a step that fills no page. Every layer's
 * tables (and ArkVale's) are staged first and go up in one copy each; the kernels then
 * replay from a CUDA graph, captured again only when the step's shape changes (batch
 * size, logits, a layer's attention split as the context grows, the sequences ArkVale
 * selects for). */
static ak_status_t wk_step_graph(wk_forward_cuda_t *fw, kv_pool_t *pool, const wk_forward_batch_t *b,
                                 int64_t n_tok, int sample, ak_err_t *err) {
  int32_t max_kv_len = 0;
  int64_t fills = wk_arkvale_cuda_fill_ops(fw->ak);
  for (int32_t l = 0; l < fw->hp.n_layers; l++) AK_TRY(wk_layer_table_host(fw, pool, l, n_tok, &max_kv_len, err));
  if (wk_arkvale_cuda_fill_ops(fw->ak) != fills) /* they went on the stream before this step's K/V */
    return AK_ERR(err, AK_ERR_INTERNAL, "a page filled while staging a graph step (the step was judged fill-free)");
  size_t ws = 0;
  uint64_t split_hash = 1469598103934665603ull;
  for (int32_t l = 0; l < fw->hp.n_layers; l++) {
    size_t w = kn_cuda_attention_workspace_bytes(&fw->pre_attn[l]);
    if (w > ws) ws = w;
    int32_t chunk = 0, n_chunks = 0;
    kn_cuda_attention_split(&fw->pre_attn[l], &chunk, &n_chunks);
    split_hash = (split_hash ^ (uint64_t)chunk) * 1099511628211ull;
    split_hash = (split_hash ^ (uint64_t)n_chunks) * 1099511628211ull;
  }
  if (ws > fw->attn_ws.n_bytes)
    return AK_ERR(err, AK_ERR_INTERNAL, "attention workspace of %zu bytes, the step needs %zu", fw->attn_ws.n_bytes,
                  ws);
  size_t used = sizeof(int32_t) * (size_t)(2 * (int64_t)fw->max_tok + (int64_t)fw->hp.n_layers * fw->region_ints);
  WK_CUDA_TRY(err, cudaMemcpyAsync(fw->region.ptr, fw->stage, used, cudaMemcpyHostToDevice, fw->stream));
  AK_TRY(wk_arkvale_cuda_upload(fw->ak, err));
  /* the page memory is baked into the graph too: a pool over other pages re-captures */
  int64_t key[8] = {n_tok, b->seqs.n_seqs, (b->logits ? 1 : 0) | (sample ? 2 : 0), b->logits_all, (int64_t)ws,
                    (int64_t)(intptr_t)fw->pre_attn[0].kv.k_base, (int64_t)(split_hash >> 1),
                    wk_arkvale_cuda_graph_key(fw->ak)};
  if (!fw->graph || memcmp(key, fw->graph_key, sizeof key) != 0) {
    if (fw->graph) cudaGraphExecDestroy(fw->graph);
    fw->graph = NULL;
    WK_CUDA_TRY(err, cudaStreamBeginCapture(fw->stream, cudaStreamCaptureModeThreadLocal));
    ak_status_t st = wk_step_kernels(fw, pool, b, n_tok, 1, b->logits ? fw->logits_host : NULL, sample, err);
    cudaGraph_t g = NULL;
    cudaError_t ce = cudaStreamEndCapture(fw->stream, &g);
    if (st < 0) {
      if (g) cudaGraphDestroy(g);
      return st;
    }
    if (ce != cudaSuccess) return AK_ERR(err, AK_ERR_CUDA, "graph capture: %s", cudaGetErrorString(ce));
    ce = cudaGraphInstantiate(&fw->graph, g, 0);
    cudaGraphDestroy(g);
    if (ce != cudaSuccess) {
      fw->graph = NULL;
      return AK_ERR(err, AK_ERR_CUDA, "graph instantiate: %s", cudaGetErrorString(ce));
    }
    memcpy(fw->graph_key, key, sizeof key);
    fw->graph_captures++;
  }
  WK_CUDA_TRY(err, cudaGraphLaunch(fw->graph, fw->stream));
  fw->graph_launches++;
  return AK_OK;
}

void wk_forward_cuda_use_graphs(wk_forward_cuda_t *fw, int enabled) { fw->use_graphs = enabled; }

void wk_forward_cuda_graph_counts(const wk_forward_cuda_t *fw, int64_t *launches, int64_t *captures) {
  if (launches) *launches = fw ? fw->graph_launches : 0;
  if (captures) *captures = fw ? fw->graph_captures : 0;
}

/* 1 if a decode step on this pool can replay from a graph: a full pool whose views need
 * no queries, or an arkvale pool deciding on the device through this forward, when no
 * token of the step completes a page (a fill digests and backs up on the stream between
 * a layer's K/V store and its view, which a captured step cannot hold). */
static int wk_graph_step_ok(const wk_forward_cuda_t *fw, kv_pool_t *pool, const int32_t *pos, int64_t n_tok) {
  const kv_pool_params_t *kp = kv_pool_params(pool);
  if (kp->policy == KV_POLICY_FULL && !kv_pool_wants_queries(pool)) return !fw->ak;
  if (!fw->ak || kp->policy != KV_POLICY_ARKVALE || !kp->select_on_device) return 0;
  for (int64_t t = 0; t < n_tok; t++)
    if ((pos[t] + 1) % kp->page_tokens == 0) return 0;
  return 1;
}

ak_status_t wk_forward_cuda_run(wk_forward_cuda_t *fw, kv_pool_t *pool, const wk_forward_batch_t *b,
                                ak_err_t *err) {
  return wk_forward_cuda_run_sampled(fw, pool, b, NULL, err);
}

ak_status_t wk_forward_cuda_run_sampled(wk_forward_cuda_t *fw, kv_pool_t *pool, const wk_forward_batch_t *b,
                                        const wk_cuda_sample_t *sample, ak_err_t *err) {
  int64_t n_tok = 0;
  AK_TRY(wk_check_batch(fw, b, &n_tok, err));
  if (sample && b->logits_all)
    return AK_ERR(err, AK_ERR_INVALID_ARG, "sampling takes one row per sequence: logits_all must be 0");
  /* Checked and staged before the pool changes: a refused request leaves it as it was.
   * The upload goes on the stream ahead of the step's kernels (and of its graph). */
  if (sample) AK_TRY(wk_cuda_sampler_stage(fw->sampler, sample, b->seqs.n_seqs, fw->stream, err));
  memset(&fw->timing, 0, sizeof fw->timing);
  double t_start = wk_now_us();
  ak_status_t st = kv_step_begin(pool, &b->seqs);
  if (st < 0) {
    /* the staged upload may still read the pinned staging the next call rewrites */
    if (sample) (void)cudaStreamSynchronize(fw->stream);
    return AK_ERR(err, st, "%s", kv_pool_errmsg(pool));
  }
  wk_arkvale_cuda_step_begin(fw->ak);
  /* backups queued since the last step (fills committed outside a forward run) land before
   * this step's work, and before any capture: a captured step cannot wait on them */
  st = wk_arkvale_cuda_join_backups(fw->ak, err);
  if (st < 0) goto err_abort;
  int64_t n_pos = 0;
  const int32_t *pos = kv_step_positions(pool, &n_pos);

  memcpy(fw->stage, b->tokens, sizeof(int32_t) * (size_t)n_tok);
  memcpy(fw->stage + fw->max_tok, pos, sizeof(int32_t) * (size_t)n_tok);
  int graph = fw->use_graphs && !fw->ev && n_tok == b->seqs.n_seqs && wk_graph_step_ok(fw, pool, pos, n_tok);
  cudaError_t ce;
  double t_logits = wk_now_us();
  wk_ev(fw, fw->hp.n_layers * WK_EV_PER_LAYER);
  if (graph) {
    st = wk_step_graph(fw, pool, b, n_tok, sample != NULL, err);
  } else {
    ce = cudaMemcpyAsync(fw->region.ptr, fw->stage, sizeof(int32_t) * 2 * (size_t)fw->max_tok,
                         cudaMemcpyHostToDevice, fw->stream);
    st = ce == cudaSuccess ? wk_step_kernels(fw, pool, b, n_tok, 0, b->logits, sample != NULL, err)
                           : AK_ERR(err, AK_ERR_CUDA, "ids upload: %s", cudaGetErrorString(ce));
  }
  if (st < 0) goto err_abort;
  st = wk_arkvale_cuda_join_backups(fw->ak, err); /* the step's backups are in the tier when it ends */
  if (st < 0) goto err_abort;
  wk_ev(fw, fw->hp.n_layers * WK_EV_PER_LAYER + 1);
  ce = cudaStreamSynchronize(fw->stream);
  if (ce != cudaSuccess) {
    st = AK_ERR(err, AK_ERR_CUDA, "step: %s", cudaGetErrorString(ce));
    goto err_abort;
  }
  fw->timing.logits_us = wk_now_us() - t_logits;
  wk_profile_collect(fw);
  st = wk_arkvale_cuda_apply(fw->ak, pool, err);
  if (st < 0) goto err_abort;
  st = kv_step_end(pool);
  if (st < 0) return AK_ERR(err, st, "%s", kv_pool_errmsg(pool));
  /* The step took: now its outputs (a failed step leaves the token ids and the graph
   * path's logits as they were; the direct path copies logits during the step). */
  if (graph && b->logits)
    memcpy(b->logits, fw->logits_host, sizeof(float) * (size_t)(b->logits_all ? n_tok : b->seqs.n_seqs) *
                                           (size_t)fw->hp.n_vocab);
  if (sample) wk_cuda_sampler_finish(fw->sampler, sample, b->seqs.n_seqs);
  fw->timing.other_us = wk_now_us() - t_start - fw->timing.logits_us;
  return AK_OK;

err_abort:
  /* nothing may still read the staging area; recalls the device made stay made */
  {
    ak_err_t e1;
    (void)wk_arkvale_cuda_join_backups(fw->ak, &e1);
  }
  if (cudaStreamSynchronize(fw->stream) == cudaSuccess) {
    ak_err_t e2;
    (void)wk_arkvale_cuda_apply(fw->ak, pool, &e2);
  }
  kv_step_abort(pool);
  return st;
}
