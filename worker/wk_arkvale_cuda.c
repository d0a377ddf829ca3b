/* wk_arkvale_cuda: digests, estimates and (select_on_device) the per-layer ArkVale
 * decision on the GPU; see wk_arkvale_cuda.h.
 *
 * Per layer of a step, pinned staging then device copy ("table"), int32:
 *   [n_pages S][score_row S][phys S * maxp][backup slot S * maxp]
 * S is the step's sequence count; n_pages 0 marks a sequence the layer does not select
 * for (the plan leaves it alone). Every layer has its own table and its own recall list
 *   [page S * k][victim S * k]
 * so that nothing a later layer stages overwrites what an earlier one still reads; the
 * step ends with a stream synchronization before the next step restages them.
 *
 * Digests are stored in the pages' dtype (f16) for the cuboid kinds (quest's cuboid-max,
 * arkvale's default cuboid-mean), f32 for the others: the per-step scan reads every
 * digest of a layer, and 16-bit rows halve it. Both ways a page can be digested store
 * the same bits: kn_cuda_digest_build from the device pages, or put_digest's host f32
 * digest narrowed by kn_cuda_digest_narrow (ub rounded up, lb down; exact for
 * cuboid-max). */
#include "wk_arkvale_cuda.h"

#include <cuda_runtime_api.h>
#include <string.h>

#include "ak_alloc.h"
#include "wk_cuda_try.h"

struct wk_arkvale_cuda {
  wk_hparams_t hp;
  cudaStream_t stream;
  int32_t max_seqs;
  int32_t max_tok;
  int64_t maxp;           /* pages per sequence row */
  int64_t q_row;          /* n_heads * head_dim */
  int32_t digest_kind;
  int32_t score_agg;
  kn_cuda_dtype_t kv_dtype;     /* the pages' element type */
  kn_cuda_dtype_t digest_dtype; /* kv_dtype for cuboid kinds, else F32 */
  int64_t digest_elems;   /* per page, all KV heads */
  size_t digest_row_bytes; /* per page */
  char *pages;
  size_t page_bytes;
  /* estimates */
  void *digests;          /* [n_layers][max_seqs][maxp][digest_elems] digest_dtype */
  size_t digests_bytes;
  uint16_t *h_narrow;     /* [digest_elems] put_digest's 16-bit staging (16-bit digests) */
  float *d_q;             /* [max_seqs][q_row]: host queries of a score call */
  float *d_scores;        /* [max_seqs * maxp] */
  int32_t *d_page_seq;    /* [max_seqs * maxp] */
  int32_t *h_page_seq;    /* pinned, then h_scores and h_q */
  float *h_scores;
  float *h_q;
  size_t h_bytes;
  /* select_on_device */
  int select;
  int32_t k_max;          /* the budget's middle: the largest top-k */
  float *d_last_q;        /* [n_layers][max_seqs][q_row] */
  int64_t tab_ints;       /* per layer */
  int32_t *h_tab, *d_tab; /* [n_layers][tab_ints] */
  int32_t *h_sel_seq, *d_sel_seq; /* [max_seqs * maxp] the step's page -> query row */
  int64_t sel_rows;       /* rows of the layer block the step scores; 0 = not built yet */
  int64_t rec_ints;       /* per layer: 2 * max_seqs * k_max */
  int32_t *h_rec, *d_rec; /* [n_layers][rec_ints] mapped pinned: the plan kernel writes
                           * the recall lists straight to the host (d_rec is h_rec's
                           * device address), no copy node per layer */
  int32_t *d_rphys;       /* [max_seqs * k_max] */
  const void **d_src;     /* [max_seqs * k_max] */
  int32_t *d_vlen;        /* [max_seqs] */
  uint8_t *planned;       /* [n_layers] */
  /* what wk_arkvale_cuda_stage found for each layer of the step, for the launch */
  uint8_t *lay_on, *lay_any, *lay_runs; /* [n_layers]: a budgeted selecting layer; any sequence selects; rows line up */
  int32_t lay_S, lay_k, sel_layer;
  int64_t lay_n_tok;
  int32_t n_sink, n_window;
  int64_t fill_ops;       /* build_digest + backup_page calls, ever */
  int32_t *last_row;      /* [max_seqs] host: each step sequence's last row */
  int32_t step_S, step_k;
  cudaEvent_t *marks;     /* profiling: [4], or NULL */
  /* build_digest: page ids the digest kernel reads from mapped pinned memory, a ring that
   * waits for the stream when it wraps */
  int32_t *ring_h, *ring_d;
  int64_t ring_n, ring_head;
  int64_t page_stride_elems, head_stride_elems;
  int32_t page_tokens;
  /* backups run on their own stream, after an event on the compute stream marks the
   * page's last write; the compute stream waits for them (wk_arkvale_cuda_join_backups,
   * which marks the copy stream's end) before a gather may overwrite a page and before
   * the step's end */
  cudaStream_t copy;
  cudaEvent_t ev_filled, ev_backed_up;
  int backups_pending;
  /* the tier's pinned slab */
  void *slab_host, *slab_dev;
  size_t slab_bytes;
  int64_t slab_slots;     /* pages the slab holds; tier slot s lives at s % slab_slots */
  kv_tier_t *tier;
};

void wk_arkvale_cuda_destroy(wk_arkvale_cuda_t *ak) {
  if (!ak) return;
  if (ak->copy) { /* no backup may still read the pages or write the slab */
    (void)cudaStreamSynchronize(ak->copy);
    (void)cudaStreamDestroy(ak->copy);
  }
  if (ak->ev_filled) (void)cudaEventDestroy(ak->ev_filled);
  if (ak->ev_backed_up) (void)cudaEventDestroy(ak->ev_backed_up);
  size_t rows = (size_t)ak->max_seqs * (size_t)ak->maxp;
  kv_tier_destroy(ak->tier);
  kn_cuda_host_free(ak->slab_host, ak->slab_bytes);
  kn_cuda_free(ak->digests, ak->digests_bytes);
  kn_cuda_free(ak->d_q, sizeof(float) * (size_t)ak->max_seqs * (size_t)ak->q_row);
  kn_cuda_free(ak->d_scores, sizeof(float) * rows);
  kn_cuda_free(ak->d_page_seq, sizeof(int32_t) * rows);
  kn_cuda_host_free(ak->h_page_seq, ak->h_bytes);
  if (ak->h_narrow) ak_host_free(ak->h_narrow, sizeof(uint16_t) * (size_t)ak->digest_elems);
  if (ak->select) {
    size_t L = (size_t)ak->hp.n_layers, sk = (size_t)ak->max_seqs * (size_t)ak->k_max;
    kn_cuda_free(ak->d_last_q, sizeof(float) * L * (size_t)ak->max_seqs * (size_t)ak->q_row);
    kn_cuda_host_free(ak->h_tab, sizeof(int32_t) * L * (size_t)ak->tab_ints);
    kn_cuda_free(ak->d_tab, sizeof(int32_t) * L * (size_t)ak->tab_ints);
    kn_cuda_host_free(ak->h_sel_seq, sizeof(int32_t) * rows);
    kn_cuda_free(ak->d_sel_seq, sizeof(int32_t) * rows);
    kn_cuda_host_free(ak->h_rec, sizeof(int32_t) * L * (size_t)ak->rec_ints);
    kn_cuda_free(ak->d_rphys, sizeof(int32_t) * sk);
    kn_cuda_free(ak->d_src, sizeof(void *) * sk);
    kn_cuda_free(ak->d_vlen, sizeof(int32_t) * (size_t)ak->max_seqs);
    kn_cuda_host_free(ak->ring_h, sizeof(int32_t) * (size_t)ak->ring_n);
    ak_host_free(ak->planned, L);
    ak_host_free(ak->lay_on, 3 * L);
    ak_host_free(ak->last_row, sizeof(int32_t) * (size_t)ak->max_seqs);
  }
  ak_host_free(ak, sizeof *ak);
}

ak_status_t wk_arkvale_cuda_create(const wk_hparams_t *hp, const kv_pool_params_t *kp, void *page_memory,
                                   int32_t max_tok, kn_cuda_stream_t stream, ak_err_t *err,
                                   wk_arkvale_cuda_t **ak_p) {
  if (!hp || !kp || !page_memory || !ak_p || max_tok < 1)
    return AK_ERR(err, AK_ERR_INVALID_ARG, "hp, kp, page_memory, ak_p and max_tok >= 1 are required");
  if (kp->budget_tokens <= 0 || (kp->policy != KV_POLICY_ARKVALE && kp->policy != KV_POLICY_QUEST))
    return AK_ERR(err, AK_ERR_INVALID_ARG, "digests on the device are for arkvale and quest with a budget");
  wk_arkvale_cuda_t *ak = ak_host_alloc(sizeof *ak, 1);
  if (!ak) return AK_ERR(err, AK_ERR_NO_MEMORY, "arkvale state");
  ak->hp = *hp;
  ak->stream = (cudaStream_t)stream;
  ak->max_seqs = kp->max_seqs;
  ak->max_tok = max_tok;
  ak->maxp = kv_pages_for_tokens(kp->max_seq_tokens, kp->page_tokens);
  ak->q_row = (int64_t)hp->n_heads * hp->head_dim;
  ak->digest_kind = kp->policy == KV_POLICY_QUEST ? KV_DIGEST_CUBOID_MAX : (int32_t)kp->digest;
  ak->score_agg = (int32_t)kp->score_agg;
  ak->pages = page_memory;
  ak->kv_dtype = KN_CUDA_F16; /* the GPU pages are f16 (wk_engine) */
  ak->digest_dtype = ak->digest_kind >= KV_DIGEST_CUBOID_MAX && ak->digest_kind <= KV_DIGEST_CUBOID_MEAN
                         ? ak->kv_dtype
                         : KN_CUDA_F32;
  ak->page_bytes = kv_page_bytes(kp);
  ak->page_tokens = kp->page_tokens;
  ak->head_stride_elems = (int64_t)kp->page_tokens * hp->head_dim;
  ak->page_stride_elems = 2 * (int64_t)hp->n_kv_heads * ak->head_stride_elems;
  ak_status_t st = AK_OK;
  int32_t per_head = kv_digest_floats((kv_digest_kind_t)ak->digest_kind, hp->head_dim);
  if (per_head < 0) {
    st = AK_ERR(err, AK_ERR_INVALID_ARG, "digest kind %d", ak->digest_kind);
    goto fail;
  }
  ak->digest_elems = (int64_t)hp->n_kv_heads * per_head;
  ak->digest_row_bytes =
      (size_t)ak->digest_elems * (ak->digest_dtype == KN_CUDA_F32 ? sizeof(float) : sizeof(uint16_t));
  size_t rows = (size_t)ak->max_seqs * (size_t)ak->maxp;
  ak->digests_bytes = (size_t)hp->n_layers * rows * ak->digest_row_bytes;
  if ((st = kn_cuda_malloc(ak->digests_bytes, err, &ak->digests)) < 0) goto fail;
  if (ak->digest_dtype != KN_CUDA_F32) {
    ak->h_narrow = ak_host_alloc(sizeof(uint16_t) * (size_t)ak->digest_elems, 1);
    if (!ak->h_narrow) {
      st = AK_ERR(err, AK_ERR_NO_MEMORY, "digest staging");
      goto fail;
    }
  }
  if ((st = kn_cuda_malloc(sizeof(float) * (size_t)ak->max_seqs * (size_t)ak->q_row, err, (void **)&ak->d_q)) < 0)
    goto fail;
  if ((st = kn_cuda_malloc(sizeof(float) * rows, err, (void **)&ak->d_scores)) < 0) goto fail;
  if ((st = kn_cuda_malloc(sizeof(int32_t) * rows, err, (void **)&ak->d_page_seq)) < 0) goto fail;
  ak->h_bytes = (sizeof(int32_t) + sizeof(float)) * rows + sizeof(float) * (size_t)ak->max_seqs * (size_t)ak->q_row;
  if ((st = kn_cuda_host_alloc(ak->h_bytes, err, (void **)&ak->h_page_seq, NULL)) < 0) goto fail;
  ak->h_scores = (float *)(ak->h_page_seq + rows);
  ak->h_q = ak->h_scores + rows;
  if (kp->select_on_device) {
    if (ak->maxp > KN_CUDA_PLAN_MAX_PAGES) {
      st = AK_ERR(err, AK_ERR_UNSUPPORTED, "select_on_device plans at most %d pages per sequence; max_seq_tokens=%d "
                  "makes %lld", KN_CUDA_PLAN_MAX_PAGES, kp->max_seq_tokens, (long long)ak->maxp);
      goto fail;
    }
    ak->select = 1;
    ak->k_max = kp->budget_tokens / kp->page_tokens - kp->n_sink_pages - kp->n_window_pages;
    if (ak->k_max < 1) ak->k_max = 1;
    size_t L = (size_t)hp->n_layers, sk = (size_t)ak->max_seqs * (size_t)ak->k_max;
    ak->tab_ints = 2 * (int64_t)ak->max_seqs + 2 * (int64_t)rows;
    ak->rec_ints = 2 * (int64_t)sk;
    struct {
      void **p;
      size_t n_bytes;
      int pinned;
    } plan[] = {
        {(void **)&ak->d_last_q, sizeof(float) * L * (size_t)ak->max_seqs * (size_t)ak->q_row, 0},
        {(void **)&ak->h_tab, sizeof(int32_t) * L * (size_t)ak->tab_ints, 1},
        {(void **)&ak->d_tab, sizeof(int32_t) * L * (size_t)ak->tab_ints, 0},
        {(void **)&ak->h_sel_seq, sizeof(int32_t) * rows, 1},
        {(void **)&ak->d_sel_seq, sizeof(int32_t) * rows, 0},
        {(void **)&ak->d_rphys, sizeof(int32_t) * sk, 0},
        {(void **)&ak->d_src, sizeof(void *) * sk, 0},
        {(void **)&ak->d_vlen, sizeof(int32_t) * (size_t)ak->max_seqs, 0},
    };
    for (size_t i = 0; i < sizeof plan / sizeof plan[0]; i++) {
      st = plan[i].pinned ? kn_cuda_host_alloc(plan[i].n_bytes, err, plan[i].p, NULL)
                          : kn_cuda_malloc(plan[i].n_bytes, err, plan[i].p);
      if (st < 0) goto fail;
    }
    if ((st = kn_cuda_host_alloc(sizeof(int32_t) * L * (size_t)ak->rec_ints, err, (void **)&ak->h_rec,
                                 (void **)&ak->d_rec)) < 0)
      goto fail;
    /* the kept queries start at zero: a compaction before any query ranks by page order */
    cudaError_t ce = cudaMemsetAsync(ak->d_last_q, 0, plan[0].n_bytes, ak->stream);
    if (ce == cudaSuccess) ce = cudaStreamSynchronize(ak->stream);
    if (ce != cudaSuccess) {
      st = AK_ERR(err, AK_ERR_CUDA, "clearing the kept queries: %s", cudaGetErrorString(ce));
      goto fail;
    }
    ce = cudaStreamCreateWithFlags(&ak->copy, cudaStreamNonBlocking);
    if (ce == cudaSuccess) ce = cudaEventCreateWithFlags(&ak->ev_filled, cudaEventDisableTiming);
    if (ce == cudaSuccess) ce = cudaEventCreateWithFlags(&ak->ev_backed_up, cudaEventDisableTiming);
    if (ce != cudaSuccess) {
      st = AK_ERR(err, AK_ERR_CUDA, "the backup stream: %s", cudaGetErrorString(ce));
      goto fail;
    }
    ak->ring_n = 4096;
    if ((st = kn_cuda_host_alloc(sizeof(int32_t) * (size_t)ak->ring_n, err, (void **)&ak->ring_h,
                                 (void **)&ak->ring_d)) < 0)
      goto fail;
    ak->planned = ak_host_alloc(L, 1);
    ak->lay_on = ak_host_alloc(3 * L, 1);
    ak->lay_any = ak->lay_on ? ak->lay_on + L : NULL;
    ak->lay_runs = ak->lay_on ? ak->lay_on + 2 * L : NULL;
    ak->n_sink = kp->n_sink_pages;
    ak->n_window = kp->n_window_pages;
    ak->last_row = ak_host_alloc(sizeof(int32_t) * (size_t)ak->max_seqs, 1);
    if (!ak->planned || !ak->last_row || !ak->lay_on) {
      st = AK_ERR(err, AK_ERR_NO_MEMORY, "planned flags");
      goto fail;
    }
  }
  *ak_p = ak;
  return AK_OK;
fail:
  wk_arkvale_cuda_destroy(ak);
  return st;
}

static void *wk_digest_row(wk_arkvale_cuda_t *ak, int32_t seq, int32_t layer, int64_t page_idx) {
  int64_t row = ((int64_t)layer * ak->max_seqs + seq) * ak->maxp + page_idx;
  return (char *)ak->digests + (size_t)row * ak->digest_row_bytes;
}

ak_status_t wk_arkvale_cuda_put_digest(wk_arkvale_cuda_t *ak, int32_t seq, int32_t layer, int64_t j,
                                       const float *digest, ak_err_t *err) {
  if (seq < 0 || seq >= ak->max_seqs || layer < 0 || layer >= ak->hp.n_layers || j < 0 || j >= ak->maxp)
    return AK_ERR(err, AK_ERR_RANGE, "digest of sequence %d layer %d page %lld outside the device store", seq, layer,
                  (long long)j);
  const void *src = digest;
  if (ak->digest_dtype != KN_CUDA_F32) { /* what kn_cuda_digest_build would store for the same keys */
    AK_TRY(kn_cuda_digest_narrow(ak->digest_kind, ak->digest_dtype, digest, 1, ak->hp.n_kv_heads, ak->hp.head_dim,
                                 ak->h_narrow, err));
    src = ak->h_narrow;
  }
  WK_CUDA_TRY(err, cudaMemcpyAsync(wk_digest_row(ak, seq, layer, j), src, ak->digest_row_bytes, cudaMemcpyHostToDevice,
                                   ak->stream));
  WK_CUDA_TRY(err, cudaStreamSynchronize(ak->stream)); /* `digest` is the pool's scratch, h_narrow ours */
  return AK_OK;
}

/* Every row of the layer's block up to the last sequence asked for is scored; rows
 * outside those sequences' pages map to no query (-1: the kernel gives them -inf). */
ak_status_t wk_arkvale_cuda_score(wk_arkvale_cuda_t *ak, int32_t layer, int32_t n, const int32_t *seqs,
                                  const float *q, const int64_t *n_pages, float *const *scores, ak_err_t *err) {
  int64_t maxp = ak->maxp;
  if (layer < 0 || layer >= ak->hp.n_layers || n < 1 || n > ak->max_seqs)
    return AK_ERR(err, AK_ERR_RANGE, "scores of layer %d for %d sequences", layer, n);
  if (!q && !ak->select)
    return AK_ERR(err, AK_ERR_INVALID_ARG, "q is NULL but the pool does not select on the device");
  int32_t last = -1;
  for (int32_t i = 0; i < n; i++) {
    if (seqs[i] < 0 || seqs[i] >= ak->max_seqs || n_pages[i] < 0 || n_pages[i] > maxp)
      return AK_ERR(err, AK_ERR_RANGE, "sequence %d with %lld pages outside the device store", seqs[i],
                    (long long)n_pages[i]);
    if (seqs[i] > last) last = seqs[i];
  }
  int64_t rows = (int64_t)(last + 1) * maxp;
  for (int64_t r = 0; r < rows; r++) ak->h_page_seq[r] = -1;
  /* host queries are rows 0..n-1 of d_q; kept ones are the layer's rows by sequence */
  for (int32_t i = 0; i < n; i++)
    for (int64_t j = 0; j < n_pages[i]; j++) ak->h_page_seq[(int64_t)seqs[i] * maxp + j] = q ? i : seqs[i];
  const float *d_q = ak->d_last_q + (int64_t)layer * ak->max_seqs * ak->q_row;
  if (q) {
    memcpy(ak->h_q, q, sizeof(float) * (size_t)(n * ak->q_row));
    WK_CUDA_TRY(err, cudaMemcpyAsync(ak->d_q, ak->h_q, sizeof(float) * (size_t)(n * ak->q_row),
                                     cudaMemcpyHostToDevice, ak->stream));
    d_q = ak->d_q;
  }
  WK_CUDA_TRY(err, cudaMemcpyAsync(ak->d_page_seq, ak->h_page_seq, sizeof(int32_t) * (size_t)rows,
                                   cudaMemcpyHostToDevice, ak->stream));
  kn_cuda_digest_score_args_t a = {.kind = ak->digest_kind, .agg = ak->score_agg,
                                   .digests = wk_digest_row(ak, 0, layer, 0), .digest_dtype = ak->digest_dtype,
                                   .page_seq = ak->d_page_seq,
                                   .q = d_q, .scores = ak->d_scores, .n_pages = rows,
                                   .n_seqs = q ? n : ak->max_seqs, .n_heads = ak->hp.n_heads,
                                   .n_kv_heads = ak->hp.n_kv_heads, .head_dim = ak->hp.head_dim};
  AK_TRY(kn_cuda_digest_score(&a, (kn_cuda_stream_t)ak->stream, err));
  WK_CUDA_TRY(err, cudaMemcpyAsync(ak->h_scores, ak->d_scores, sizeof(float) * (size_t)rows, cudaMemcpyDeviceToHost,
                                   ak->stream));
  WK_CUDA_TRY(err, cudaStreamSynchronize(ak->stream));
  for (int32_t i = 0; i < n; i++)
    memcpy(scores[i], ak->h_scores + (int64_t)seqs[i] * maxp, sizeof(float) * (size_t)n_pages[i]);
  return AK_OK;
}

ak_status_t wk_arkvale_cuda_build_digest(wk_arkvale_cuda_t *ak, int32_t seq, int32_t layer, int64_t j,
                                         int32_t page_id, ak_err_t *err) {
  if (!ak->select) return AK_ERR(err, AK_ERR_INVALID_ARG, "device digests at fill are for select_on_device pools");
  if (seq < 0 || seq >= ak->max_seqs || layer < 0 || layer >= ak->hp.n_layers || j < 0 || j >= ak->maxp ||
      page_id < 0)
    return AK_ERR(err, AK_ERR_RANGE, "digest of sequence %d layer %d page %lld (physical %d) outside the store", seq,
                  layer, (long long)j, page_id);
  if (ak->ring_head == ak->ring_n) { /* every id handed to a kernel so far must have been read */
    WK_CUDA_TRY(err, cudaStreamSynchronize(ak->stream));
    ak->ring_head = 0;
  }
  int32_t *slot = ak->ring_h + ak->ring_head;
  *slot = page_id;
  kn_cuda_digest_build_args_t a = {.kind = ak->digest_kind, .k_base = ak->pages, .kv_dtype = ak->kv_dtype,
                                   .page_stride_elems = ak->page_stride_elems,
                                   .head_stride_elems = ak->head_stride_elems, .page_tokens = ak->page_tokens,
                                   .n_kv_heads = ak->hp.n_kv_heads, .head_dim = ak->hp.head_dim,
                                   .page_ids = ak->ring_d + ak->ring_head,
                                   .digests = wk_digest_row(ak, seq, layer, j), .digest_dtype = ak->digest_dtype,
                                   .n_pages = 1};
  AK_TRY(kn_cuda_digest_build(&a, (kn_cuda_stream_t)ak->stream, err));
  ak->ring_head++;
  ak->fill_ops++;
  return AK_OK;
}

/* The backup stream runs after what the compute stream queued so far (the page's K/V
 * stores included), so its copy reads the filled page while the compute stream goes on
 * (the digest, the layer's scores and plan). */
ak_status_t wk_arkvale_cuda_backup_page(wk_arkvale_cuda_t *ak, int32_t page_id, void *dst_host, ak_err_t *err) {
  if (!dst_host || page_id < 0) return AK_ERR(err, AK_ERR_INVALID_ARG, "page %d to %p", page_id, dst_host);
  if (!ak->copy) return AK_ERR(err, AK_ERR_INVALID_ARG, "backups on the device are for select_on_device pools");
  WK_CUDA_TRY(err, cudaEventRecord(ak->ev_filled, ak->stream));
  WK_CUDA_TRY(err, cudaStreamWaitEvent(ak->copy, ak->ev_filled, 0));
  WK_CUDA_TRY(err, cudaMemcpyAsync(dst_host, ak->pages + (size_t)page_id * ak->page_bytes, ak->page_bytes,
                                   cudaMemcpyDeviceToHost, ak->copy));
  ak->backups_pending = 1; /* the join marks the copy stream's end once, not each page */
  ak->fill_ops++;
  return AK_OK;
}

ak_status_t wk_arkvale_cuda_join_backups(wk_arkvale_cuda_t *ak, ak_err_t *err) {
  if (!ak || !ak->backups_pending) return AK_OK;
  /* after the last copy queued: the copy stream's order covers the rest */
  WK_CUDA_TRY(err, cudaEventRecord(ak->ev_backed_up, ak->copy));
  WK_CUDA_TRY(err, cudaStreamWaitEvent(ak->stream, ak->ev_backed_up, 0));
  ak->backups_pending = 0;
  return AK_OK;
}

ak_status_t wk_arkvale_cuda_tier(wk_arkvale_cuda_t *ak, const kv_pool_params_t *kp, size_t alias_slab_bytes,
                                 ak_err_t *err, kv_tier_t **tier_p) {
  if (!ak->select) return AK_ERR(err, AK_ERR_INVALID_ARG, "the device tier is for select_on_device pools");
  if (ak->tier) return AK_ERR(err, AK_ERR_INVALID_ARG, "the device tier exists already (one pool per forward)");
  size_t bytes = kv_pool_tier_bytes(kp);
  size_t slab = alias_slab_bytes ? alias_slab_bytes : bytes;
  if (alias_slab_bytes && (alias_slab_bytes < ak->page_bytes || alias_slab_bytes >= bytes))
    return AK_ERR(err, AK_ERR_INVALID_ARG, "alias_slab_bytes=%zu must hold a page of %zu bytes and be below the "
                  "tier's %zu", alias_slab_bytes, ak->page_bytes, bytes);
  AK_TRY(kn_cuda_host_alloc(slab, err, &ak->slab_host, &ak->slab_dev));
  ak->slab_bytes = slab;
  ak->slab_slots = (int64_t)(slab / ak->page_bytes);
  kv_tier_host_params_t tp = kv_tier_host_params_default();
  tp.capacity_bytes = bytes;
  tp.slot_bytes = ak->page_bytes;
  tp.slab = ak->slab_host;
  tp.alias_slab_bytes = alias_slab_bytes;
  AK_TRY(kv_tier_host_create(&tp, err, &ak->tier));
  *tier_p = ak->tier;
  return AK_OK;
}

void wk_arkvale_cuda_set_marks(wk_arkvale_cuda_t *ak, void *marks) {
  if (ak) ak->marks = marks;
}

/* Records profiling marks [from, 4) (those a layer with nothing to select skips too). */
static void wk_marks(wk_arkvale_cuda_t *ak, int from) {
  if (!ak->marks) return;
  for (int i = from; i < 4; i++) cudaEventRecord(ak->marks[i], ak->stream);
}

void wk_arkvale_cuda_step_begin(wk_arkvale_cuda_t *ak) {
  if (!ak || !ak->select) return;
  memset(ak->planned, 0, (size_t)ak->hp.n_layers);
  memset(ak->lay_on, 0, 3 * (size_t)ak->hp.n_layers);
  ak->sel_rows = 0;
  ak->sel_layer = -1;
  ak->step_S = 0;
}

/* Host half of a budgeted layer: the layer's table (n_pages, score rows, phys, backup
 * slots) into its pinned staging, the step's page -> query rows on the first selecting
 * layer, and what the device half needs to know (lay_*). Nothing on the stream. */
ak_status_t wk_arkvale_cuda_stage(wk_arkvale_cuda_t *ak, kv_pool_t *pool, int32_t l, int32_t n_seqs,
                                  const int32_t *tok_seq_idx, int64_t n_tok, ak_err_t *err) {
  const kv_pool_params_t *kp = kv_pool_params(pool);
  if (!ak->select) return AK_OK; /* a host-selecting pool: nothing staged (and no lay_* arrays) */
  ak->lay_on[l] = 0;
  if (!kp->select_on_device || l < kp->n_full_layers) return AK_OK;
  if (!ak->tier || kp->tier != ak->tier)
    return AK_ERR(err, AK_ERR_INVALID_ARG, "a select_on_device pool needs this forward's tier (kv_pool_params_t.tier)");
  int32_t S = n_seqs, k = kv_pool_topk_pages(pool);
  if (S > ak->max_seqs || k > ak->k_max)
    return AK_ERR(err, AK_ERR_INTERNAL, "layer %d: %d sequences / top-k %d exceed %d / %d", l, S, k, ak->max_seqs,
                  ak->k_max);
  int64_t maxp = ak->maxp;
  int32_t *h = ak->h_tab + (int64_t)l * ak->tab_ints;
  int32_t *h_np = h, *h_row = h + S, *h_phys = h + 2 * S, *h_bslot = h_phys + (int64_t)S * maxp;
  /* the last row of each sequence: its query is the one the pool's evictions use */
  int32_t *last_row = ak->last_row;
  for (int64_t t = 0; t < n_tok; t++) last_row[tok_seq_idx[t]] = (int32_t)t;
  int any = 0, max_seq = -1, runs = 1; /* runs: the step's rows are the sequences' slots, in order */
  for (int32_t i = 0; i < S; i++) {
    kv_select_row_t row;
    ak_status_t st = kv_layer_select_row(pool, l, i, &row);
    if (st < 0) return AK_ERR(err, st, "layer %d: %s", l, kv_pool_errmsg(pool));
    h_row[i] = row.seq;
    runs &= last_row[i] == i && row.seq == h_row[0] + i;
    h_np[i] = 0;
    if (!row.selects) continue;
    if (row.n_pages > maxp)
      return AK_ERR(err, AK_ERR_INTERNAL, "layer %d: %lld pages exceed the table's %lld", l, (long long)row.n_pages,
                    (long long)maxp);
    h_np[i] = (int32_t)row.n_pages;
    memcpy(h_phys + (int64_t)i * maxp, row.phys, sizeof(int32_t) * (size_t)row.n_pages);
    int32_t *bs = h_bslot + (int64_t)i * maxp;
    for (int64_t j = 0; j < row.n_pages; j++) { /* the slab slot (slots alias past an aliased slab) */
      int64_t slot = kv_tier_host_slot(row.backup[j]);
      bs[j] = slot < 0 ? -1 : (int32_t)(slot % ak->slab_slots);
    }
    any = 1;
    if (row.seq > max_seq) max_seq = row.seq;
    if (ak->sel_rows == 0) /* the step's page -> query rows: the same for every budgeted layer */
      for (int64_t j = 0; j + 1 < row.n_pages; j++) ak->h_sel_seq[(int64_t)row.seq * maxp + j] = last_row[i];
  }
  if (any && ak->sel_rows == 0) {
    /* rows of sequences not selecting, and past each one's filled pages, score nothing */
    int64_t rows = (int64_t)(max_seq + 1) * maxp;
    for (int32_t sq = 0; sq <= max_seq; sq++) {
      int64_t from = 0;
      for (int32_t i = 0; i < S; i++)
        if (h_row[i] == sq && h_np[i] > 0) from = h_np[i] - 1;
      for (int64_t j = from; j < maxp; j++) ak->h_sel_seq[(int64_t)sq * maxp + j] = -1;
    }
    ak->sel_rows = rows;
    ak->sel_layer = l; /* the layer whose upload carries the rows (the direct path) */
  }
  ak->lay_on[l] = 1;
  ak->lay_any[l] = (uint8_t)any;
  ak->lay_runs[l] = (uint8_t)runs;
  ak->lay_S = S;
  ak->lay_k = k;
  ak->lay_n_tok = n_tok;
  if (any) {
    ak->planned[l] = 1;
    ak->step_S = S;
    ak->step_k = k;
  }
  return AK_OK;
}

ak_status_t wk_arkvale_cuda_upload(wk_arkvale_cuda_t *ak, ak_err_t *err) {
  if (!ak || !ak->select) return AK_OK;
  if (ak->sel_rows > 0)
    WK_CUDA_TRY(err, cudaMemcpyAsync(ak->d_sel_seq, ak->h_sel_seq, sizeof(int32_t) * (size_t)ak->sel_rows,
                                     cudaMemcpyHostToDevice, ak->stream));
  WK_CUDA_TRY(err, cudaMemcpyAsync(ak->d_tab, ak->h_tab, sizeof(int32_t) * (size_t)ak->hp.n_layers * (size_t)ak->tab_ints,
                                   cudaMemcpyHostToDevice, ak->stream));
  return AK_OK;
}

int64_t wk_arkvale_cuda_fill_ops(const wk_arkvale_cuda_t *ak) { return ak ? ak->fill_ops : 0; }

int64_t wk_arkvale_cuda_graph_key(const wk_arkvale_cuda_t *ak) {
  if (!ak || !ak->select) return 0;
  uint64_t h = 1469598103934665603ull; /* FNV-1a over what the launches bake in */
  int64_t v[4] = {ak->lay_S, ak->lay_k, ak->sel_rows, ak->lay_n_tok};
  for (int i = 0; i < 4; i++) h = (h ^ (uint64_t)v[i]) * 1099511628211ull;
  for (int32_t l = 0; l < ak->hp.n_layers; l++) {
    h = (h ^ (uint64_t)(ak->lay_on[l] | ak->lay_any[l] << 1 | ak->lay_runs[l] << 2)) * 1099511628211ull;
    if (!ak->lay_on[l]) continue;
    const int32_t *h_row = ak->h_tab + (int64_t)l * ak->tab_ints + ak->lay_S;
    for (int32_t i = 0; i < ak->lay_S; i++) h = (h ^ (uint64_t)(uint32_t)h_row[i]) * 1099511628211ull;
  }
  for (int32_t i = 0; i < ak->lay_S; i++) h = (h ^ (uint64_t)(uint32_t)ak->last_row[i]) * 1099511628211ull;
  return (int64_t)(h >> 1);
}

ak_status_t wk_arkvale_cuda_launch(wk_arkvale_cuda_t *ak, int32_t l, const float *d_q, const int32_t *d_indptr,
                                   int32_t *d_indices, int upload, ak_err_t *err) {
  if (!ak->select || !ak->lay_on[l]) return AK_OK;
  int32_t S = ak->lay_S, k = ak->lay_k;
  int64_t maxp = ak->maxp;
  const int32_t *h = ak->h_tab + (int64_t)l * ak->tab_ints, *h_row = h + S;
  int32_t *d = ak->d_tab + (int64_t)l * ak->tab_ints;
  /* keep each sequence's last query: when a decode batch's rows line up with the
   * sequences' slots (the common case) the plan launch's blocks copy them, no copy node
   * in the step's graph (moving the recall lists' per-layer D2H copies to mapped memory
   * took 0.43 ms off a longchat-7b 30k batch-4 step on an H100), or one copy when no
   * plan runs; else one copy per sequence */
  float *lq = ak->d_last_q + (int64_t)l * ak->max_seqs * ak->q_row;
  int keep_in_plan = ak->lay_any[l] && ak->lay_runs[l] && ak->q_row % 4 == 0 &&
                     (uintptr_t)d_q % 16 == 0 && (uintptr_t)(lq + (int64_t)h_row[0] * ak->q_row) % 16 == 0;
  if (keep_in_plan) {
    /* below, in the plan's arguments */
  } else if (ak->lay_runs[l]) {
    WK_CUDA_TRY(err, cudaMemcpyAsync(lq + (int64_t)h_row[0] * ak->q_row, d_q, sizeof(float) * (size_t)(S * ak->q_row),
                                     cudaMemcpyDeviceToDevice, ak->stream));
  } else {
    for (int32_t i = 0; i < S; i++)
      WK_CUDA_TRY(err, cudaMemcpyAsync(lq + (int64_t)h_row[i] * ak->q_row, d_q + (int64_t)ak->last_row[i] * ak->q_row,
                                       sizeof(float) * (size_t)ak->q_row, cudaMemcpyDeviceToDevice, ak->stream));
  }
  if (!ak->lay_any[l]) {
    wk_marks(ak, 0);
    return AK_OK;
  }
  if (upload) {
    if (l == ak->sel_layer)
      WK_CUDA_TRY(err, cudaMemcpyAsync(ak->d_sel_seq, ak->h_sel_seq, sizeof(int32_t) * (size_t)ak->sel_rows,
                                       cudaMemcpyHostToDevice, ak->stream));
    WK_CUDA_TRY(err, cudaMemcpyAsync(d, h, sizeof(int32_t) * (size_t)(2 * S + 2 * (int64_t)S * maxp),
                                     cudaMemcpyHostToDevice, ak->stream));
  }
  kn_cuda_stream_t stream = (kn_cuda_stream_t)ak->stream;
  if (ak->marks) cudaEventRecord(ak->marks[0], ak->stream);
  kn_cuda_digest_score_args_t sc = {.kind = ak->digest_kind, .agg = ak->score_agg,
                                    .digests = wk_digest_row(ak, 0, l, 0), .digest_dtype = ak->digest_dtype,
                                    .page_seq = ak->d_sel_seq, .q = d_q, .scores = ak->d_scores,
                                    .n_pages = ak->sel_rows, .n_seqs = (int32_t)ak->lay_n_tok,
                                    .n_heads = ak->hp.n_heads, .n_kv_heads = ak->hp.n_kv_heads,
                                    .head_dim = ak->hp.head_dim};
  AK_TRY(kn_cuda_digest_score(&sc, stream, err));
  if (ak->marks) cudaEventRecord(ak->marks[1], ak->stream);
  int32_t *rec_page = ak->d_rec + (int64_t)l * ak->rec_ints, *rec_vict = rec_page + (int64_t)S * k;
  kn_cuda_arkvale_plan_args_t pa = {.scores = ak->d_scores, .phys = d + 2 * S, .n_pages = d, .stride = (int32_t)maxp,
                                    .n_seqs = S, .n_sink = ak->n_sink, .n_window = ak->n_window, .k = k,
                                    .recall_page = rec_page, .recall_phys = ak->d_rphys, .view = d_indices,
                                    .view_len = ak->d_vlen, .score_row = d + S, .view_ptr = d_indptr,
                                    .recall_victim = rec_vict, .backup_slot = d + 2 * S + (int64_t)S * maxp,
                                    .tier_base = ak->slab_dev, .slot_bytes = (int64_t)ak->page_bytes,
                                    .recall_src = ak->d_src};
  if (keep_in_plan) {
    pa.keep_q_src = d_q;
    pa.keep_q_dst = lq + (int64_t)h_row[0] * ak->q_row;
    pa.keep_q_floats = (int32_t)ak->q_row;
  }
  AK_TRY(kn_cuda_arkvale_plan(&pa, stream, err));
  if (ak->marks) cudaEventRecord(ak->marks[2], ak->stream);
  if (k > 0) {
    /* a victim may be a page whose backup is still being copied */
    AK_TRY(wk_arkvale_cuda_join_backups(ak, err));
    kn_cuda_gather_args_t g = {.src_ptrs = ak->d_src, .dst_base = ak->pages, .dst_page = ak->d_rphys,
                               .n_pages = (int64_t)S * k, .page_bytes = ak->page_bytes};
    AK_TRY(kn_cuda_gather_pages(&g, stream, err));
  }
  if (ak->marks) cudaEventRecord(ak->marks[3], ak->stream);
  return AK_OK; /* the recall lists are in h_rec once the step's stream is synchronized */
}

ak_status_t wk_arkvale_cuda_layer(wk_arkvale_cuda_t *ak, kv_pool_t *pool, int32_t l, int32_t n_seqs,
                                  const int32_t *tok_seq_idx, int64_t n_tok, const float *d_q,
                                  const int32_t *d_indptr, int32_t *d_indices, ak_err_t *err) {
  AK_TRY(wk_arkvale_cuda_stage(ak, pool, l, n_seqs, tok_seq_idx, n_tok, err));
  return wk_arkvale_cuda_launch(ak, l, d_q, d_indptr, d_indices, 1, err);
}

ak_status_t wk_arkvale_cuda_apply(wk_arkvale_cuda_t *ak, kv_pool_t *pool, ak_err_t *err) {
  if (!ak || !ak->select) return AK_OK;
  int32_t S = ak->step_S, k = ak->step_k;
  for (int32_t l = 0; l < ak->hp.n_layers; l++) {
    if (!ak->planned[l]) continue;
    const int32_t *h_np = ak->h_tab + (int64_t)l * ak->tab_ints;
    const int32_t *page = ak->h_rec + (int64_t)l * ak->rec_ints, *vict = page + (int64_t)S * k;
    for (int32_t i = 0; i < S; i++) {
      if (h_np[i] == 0) continue;
      ak_status_t st = kv_layer_apply_recalls(pool, l, i, k, page + (int64_t)i * k, vict + (int64_t)i * k);
      if (st < 0)
        return AK_ERR(err, AK_ERR_INTERNAL, "layer %d sequence %d: the pool refused the device's recalls: %s", l, i,
                      kv_pool_errmsg(pool));
    }
    ak->planned[l] = 0;
  }
  return AK_OK;
}
