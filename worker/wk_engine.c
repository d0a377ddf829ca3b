/* wk_engine: wiring of model, backend, KV pool and forward pass. */
#include "wk_engine.h"

#include <string.h>

#include "ak_alloc.h"
#ifdef WK_HAVE_CUDA
#include "kn_cuda.h"
#include "wk_forward_cuda.h"
#include "wk_model_cuda.h"
#endif

struct wk_engine {
  wk_model_t *model; /* NULL for synthetic weights (built on the device) */
  wk_hparams_t hp;
  kn_cpu_t *cpu;
  kv_pool_t *pool;
  wk_forward_t *fw;
  int32_t max_batch_tokens;
  wk_device_t device;
#ifdef WK_HAVE_CUDA
  wk_model_cuda_t *model_cuda;
  wk_forward_cuda_t *fw_cuda;
  void *pages_cuda; /* the pool's page memory on the device */
  size_t pages_cuda_bytes;
#endif
  ak_err_t err;
};

wk_engine_params_t wk_engine_params_default(void) {
  wk_engine_params_t p;
  memset(&p, 0, sizeof p);
  p.page_tokens = 32;
  p.max_seqs = 16;
  p.max_batch_tokens = 512;
  p.kv_dtype = KN_F16;
  return p;
}

/* Synthetic weights: checked before anything is allocated (the shape by name, the device). */
static ak_status_t wk_engine_check_synthetic(const wk_engine_params_t *p, ak_err_t *err) {
  if (p->model_path)
    return AK_ERR(err, AK_ERR_INVALID_ARG, "model_path (%s) and synthetic (%s) are exclusive", p->model_path,
                  p->synthetic);
#ifdef WK_HAVE_CUDA
  wk_hparams_t hp;
  AK_TRY(wk_model_cuda_shape(p->synthetic, err, &hp));
  if (p->device != WK_DEVICE_CUDA)
    return AK_ERR(err, AK_ERR_UNSUPPORTED, "synthetic weights (%s) are built on the GPU: they need the CUDA device",
                  p->synthetic);
  int n_devices = 0;
  return kn_cuda_device_count(err, &n_devices); /* AK_ERR_NO_DEVICE, with the driver's reason */
#else
  return AK_ERR(err, AK_ERR_UNSUPPORTED, "synthetic weights (%s) need the CUDA backend, which this build lacks",
                p->synthetic);
#endif
}

ak_status_t wk_engine_create(const wk_engine_params_t *p, ak_err_t *err, wk_engine_t **eng_p) {
  if (!p || (!p->model_path && !p->synthetic))
    return AK_ERR(err, AK_ERR_INVALID_ARG, "model_path is not set (nor synthetic)");
  if (p->synthetic) AK_TRY(wk_engine_check_synthetic(p, err));
  if (p->max_seqs < 1) return AK_ERR(err, AK_ERR_INVALID_ARG, "max_seqs=%d must be >= 1", p->max_seqs);
  if (p->max_seq_tokens < 0)
    return AK_ERR(err, AK_ERR_INVALID_ARG, "max_seq_tokens=%d must be >= 0", p->max_seq_tokens);
  wk_engine_t *e = ak_host_alloc(sizeof *e, 1);
  if (!e) return AK_ERR(err, AK_ERR_NO_MEMORY, "engine struct");
  ak_status_t st;
  if (p->synthetic) {
#ifdef WK_HAVE_CUDA
    st = wk_model_cuda_synthetic(p->synthetic, p->synthetic_seed, err, &e->model_cuda);
    if (st < 0) goto err_destroy;
    e->hp = *wk_model_cuda_hparams(e->model_cuda);
#endif
  } else {
    wk_model_params_t mp = wk_model_params_default();
    mp.weights_f32 = p->weights_f32;
    st = wk_model_load(p->model_path, &mp, err, &e->model);
    if (st < 0) goto err_destroy;
    e->hp = *wk_model_hparams(e->model);
  }
  st = kn_cpu_create(p->n_threads, err, &e->cpu);
  if (st < 0) goto err_destroy;

  const wk_hparams_t *hp = &e->hp;
  kv_pool_params_t kp = p->kv_policy ? *p->kv_policy : kv_pool_params_default();
  kp.tier = p->kv_policy ? p->kv_policy->tier : NULL;
  kp.n_heads = hp->n_heads;
  kp.n_layers = hp->n_layers;
  kp.n_kv_heads = hp->n_kv_heads;
  kp.head_dim = hp->head_dim;
  kp.page_tokens = p->page_tokens;
  kp.max_seqs = p->max_seqs;
  kp.max_seq_tokens = p->max_seq_tokens ? p->max_seq_tokens : hp->n_ctx_train;
  kp.dtype = p->kv_dtype;
  kp.n_pages = p->kv_pages;
  if (kp.n_pages == 0 && kp.page_tokens > 0)
    kp.n_pages = kv_pages_for_tokens(kp.max_seq_tokens, kp.page_tokens) * kp.n_layers * kp.max_seqs;
  e->device = p->device;
  e->max_batch_tokens = p->max_batch_tokens;
  {
    int want = kp.select_on_device;
    int can = p->device == WK_DEVICE_CUDA && kp.policy == KV_POLICY_ARKVALE && kp.budget_tokens > 0 &&
              kp.attend == KV_ATTEND_RESIDENT && kp.score_groups == 1 && !kp.track_accuracy;
    if (want == 1 && !can) {
      st = AK_ERR(err, AK_ERR_UNSUPPORTED, "selecting on the device needs --device cuda, arkvale with a budget, "
                  "attend resident, one score group and no accuracy tracking");
      goto err_destroy;
    }
    kp.select_on_device = want >= 0 && can;
  }
  if (p->device == WK_DEVICE_CUDA) {
#ifdef WK_HAVE_CUDA
    if (kp.policy == KV_POLICY_H2O || kp.policy == KV_POLICY_TOVA) {
      st = AK_ERR(err, AK_ERR_UNSUPPORTED, "KV policy %s does not run on the GPU (token-granularity baselines "
                  "are CPU only)", kv_policy_name(kp.policy));
      goto err_destroy;
    }
    if (p->max_batch_tokens < 1) {
      st = AK_ERR(err, AK_ERR_INVALID_ARG, "max_batch_tokens=%d must be >= 1", p->max_batch_tokens);
      goto err_destroy;
    }
    kp.dtype = KN_F16; /* the GPU pages are f16 */
    if (kp.n_pages < 1 || kp.n_pages > INT32_MAX || kp.n_heads < 1) {
      st = AK_ERR(err, AK_ERR_INVALID_ARG, "kv_pages=%lld outside [1, 2^31)", (long long)kp.n_pages);
      goto err_destroy;
    }
    int n_devices = 0;
    st = kn_cuda_device_count(err, &n_devices);
    if (st < 0) goto err_destroy; /* AK_ERR_NO_DEVICE, with the driver's reason */
    e->pages_cuda_bytes = kv_page_bytes(&kp) * (size_t)kp.n_pages;
    st = e->model_cuda ? AK_OK : wk_model_cuda_upload(e->model, err, &e->model_cuda); /* synthetic: built */
    if (st >= 0) st = kn_cuda_malloc(e->pages_cuda_bytes, err, &e->pages_cuda);
    if (st < 0) goto err_destroy;
    kp.page_memory = e->pages_cuda;
    st = wk_forward_cuda_create(e->model_cuda, &kp, p->max_batch_tokens, err, &e->fw_cuda);
    if (st < 0) goto err_destroy;
    st = wk_forward_cuda_page_ops(e->fw_cuda, e->pages_cuda, &kp, err, &kp.page_ops);
    if (st >= 0 && kp.select_on_device) {
      if (kp.tier) {
        st = AK_ERR(err, AK_ERR_UNSUPPORTED, "selecting on the device recalls from its own pinned tier: a caller's "
                    "tier needs select_on_device = -1");
        goto err_destroy;
      }
      st = wk_forward_cuda_device_tier(e->fw_cuda, &kp, 0, err, &kp.tier);
    }
    if (st >= 0) st = kv_pool_create(&kp, err, &e->pool);
    if (st < 0) goto err_destroy;
    *eng_p = e;
    return AK_OK;
#else
    st = AK_ERR(err, AK_ERR_UNSUPPORTED, "this build has no CUDA backend (nvcc was not found at configure time)");
    goto err_destroy;
#endif
  }
  st = kv_pool_create(&kp, err, &e->pool);
  if (st < 0) goto err_destroy;
  st = wk_forward_create(e->model, e->cpu, p->max_batch_tokens, err, &e->fw);
  if (st < 0) goto err_destroy;
  *eng_p = e;
  return AK_OK;

err_destroy:
  wk_engine_destroy(e);
  return st;
}

void wk_engine_destroy(wk_engine_t *e) {
  if (!e) return;
  wk_forward_destroy(e->fw);
  kv_pool_destroy(e->pool);
#ifdef WK_HAVE_CUDA
  wk_forward_cuda_destroy(e->fw_cuda);
  kn_cuda_free(e->pages_cuda, e->pages_cuda_bytes);
  wk_model_cuda_free(e->model_cuda);
#endif
  kn_cpu_destroy(e->cpu);
  wk_model_free(e->model);
  ak_host_free(e, sizeof *e);
}

const wk_model_t *wk_engine_model(const wk_engine_t *e) { return e->model; }
const wk_hparams_t *wk_engine_hparams(const wk_engine_t *e) { return &e->hp; }
kv_pool_t *wk_engine_kvpool(wk_engine_t *e) { return e->pool; }
kn_cpu_t *wk_engine_cpu(wk_engine_t *e) { return e->cpu; }
int32_t wk_engine_max_batch_tokens(const wk_engine_t *e) { return e->max_batch_tokens; }
const char *wk_engine_errmsg(const wk_engine_t *e) { return e->err.msg; }

ak_status_t wk_engine_seq_create(wk_engine_t *e, kv_seq_id_t *seq_p) {
  ak_status_t st = kv_seq_create(e->pool, seq_p);
  if (st < 0) return AK_ERR(&e->err, st, "%s", kv_pool_errmsg(e->pool));
  return AK_OK;
}

ak_status_t wk_engine_seq_release(wk_engine_t *e, kv_seq_id_t seq) {
  ak_status_t st = kv_seq_release(e->pool, seq);
  if (st < 0) return AK_ERR(&e->err, st, "%s", kv_pool_errmsg(e->pool));
  return AK_OK;
}

/* One forward call on the engine's backend; `sample` (NULL: none) samples on the device. */
static ak_status_t wk_engine_forward(wk_engine_t *e, const wk_forward_batch_t *batch, const wk_cuda_sample_t *sample) {
#ifdef WK_HAVE_CUDA
  if (e->device == WK_DEVICE_CUDA) return wk_forward_cuda_run_sampled(e->fw_cuda, e->pool, batch, sample, &e->err);
#endif
  if (sample)
    return AK_ERR(&e->err, AK_ERR_UNSUPPORTED,
                  "sampling inside the step needs the CUDA backend (this engine runs on the CPU)");
  return wk_forward_run(e->fw, e->pool, batch, &e->err);
}

ak_status_t wk_engine_step(wk_engine_t *e, const wk_forward_batch_t *batch) {
  return wk_engine_forward(e, batch, NULL);
}

int wk_engine_samples_on_device(const wk_engine_t *e) { return e && e->device == WK_DEVICE_CUDA; }

ak_status_t wk_engine_step_sampled(wk_engine_t *e, const wk_forward_batch_t *batch, const wk_cuda_sample_t *sample) {
  if (!sample) return AK_ERR(&e->err, AK_ERR_INVALID_ARG, "wk_engine_step_sampled: sample is NULL");
  return wk_engine_forward(e, batch, sample);
}

ak_status_t wk_engine_prefill(wk_engine_t *e, kv_seq_id_t seq, const int32_t *tokens, int64_t n_tokens,
                              float *logits) {
  if (!tokens || n_tokens < 1 || !logits)
    return AK_ERR(&e->err, AK_ERR_INVALID_ARG, "prefill needs tokens (%lld given) and a logits buffer",
                  (long long)n_tokens);
  /* Refuse up front what cannot fit, rather than after running the chunks that do. */
  int64_t have = kv_seq_n_tokens(e->pool, seq);
  if (have < 0) return AK_ERR(&e->err, AK_ERR_NOT_FOUND, "sequence %d is not live", seq);
  int32_t limit = kv_pool_params(e->pool)->max_seq_tokens;
  if (have + n_tokens > limit)
    return AK_ERR(&e->err, AK_ERR_RANGE, "sequence %d: %lld + %lld tokens exceed the context of %d", seq,
                  (long long)have, (long long)n_tokens, limit);
  for (int64_t off = 0; off < n_tokens; off += e->max_batch_tokens) {
    int64_t n = n_tokens - off < e->max_batch_tokens ? n_tokens - off : e->max_batch_tokens;
    int32_t n32 = (int32_t)n;
    int last = off + n == n_tokens;
    wk_forward_batch_t b = {.seqs = {.n_seqs = 1, .seqs = &seq, .n_new_tokens = &n32},
                            .tokens = tokens + off, .logits_all = 0, .logits = last ? logits : NULL};
    AK_TRY(wk_engine_forward(e, &b, NULL));
  }
  /* The prompt is in: a budgeted policy brings the sequence down to its budget now
   * rather than at its first decode step, so the pages are free for others at once. */
  ak_status_t st = kv_seq_compact(e->pool, seq);
  if (st < 0) return AK_ERR(&e->err, st, "%s", kv_pool_errmsg(e->pool));
  return AK_OK;
}
