/* wk_service: the Worker service's object, its engine thread and job queue, and the
 * calls that do not step the engine (Info, Health, Warmup). Step and Release are in
 * wk_service_step.c. Threads and semantics: wk_service.h. */
#include "wk_service.h"

#include <stdio.h>
#include <string.h>
#include <time.h>

#include "ak_alloc.h"
#include "ak_log.h"
#include "ak_time.h"
#include "wk_service_internal.h"

#define WK_PROTOCOL_REVISION 3u /* 2: ContinuingSequence.feed_sampled_at_step_id; 3: StepRequest.previous_step_id */
#define WK_METHOD(m) "/arkvale.v1.Worker/" m
/* The default of wk_service_params_t.predecessor_wait_ms: how long a Step waits for a
 * step this rank has not begun yet, the one it names in previous_step_id or feeds from
 * (feed_sampled_at_step_id). The coordinator sends Step k+1 right after Step k
 * (pipelined decode), and two calls on one channel may reach the queue in either
 * order, the first far behind the second on a loaded host. The predecessor was sent, so
 * the wait only ends early when something failed; past it the Step runs and fails
 * FAILED_PRECONDITION (step_id order, or feed_sampled_at_step_id). */
#define WK_SVC_PREDECESSOR_WAIT_MS 1000

wk_service_params_t wk_service_params_default(void) {
  wk_service_params_t p;
  memset(&p, 0, sizeof p);
  p.engine = wk_engine_params_default();
  p.kv = kv_pool_params_default();
  p.listen_addr = "127.0.0.1:0";
  p.n_rpc_threads = 2;
  p.device_idx = -1;
  p.max_request_bytes = 4u << 20;
  p.predecessor_wait_ms = WK_SVC_PREDECESSOR_WAIT_MS;
  return p;
}

double wk_svc_now_us(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec * 1e6 + (double)ts.tv_nsec / 1e3;
}

/* 64-bit FNV-1a, continued from h over n bytes. */
static uint64_t wk_svc_fnv(uint64_t h, const unsigned char *p, size_t n) {
  for (size_t i = 0; i < n; i++) h = (h ^ p[i]) * 1099511628211ull;
  return h;
}

/* A 64-bit FNV-1a over the file's size, its first MiB (the GGUF header and metadata)
 * and 64 KiB at 256 evenly spaced offsets: enough to tell two weight files apart
 * without reading gigabytes at start; for synthetic weights (no file) over the shape's
 * name and the seed, which determine them. Ranks of a group compare it. */
static void wk_svc_fingerprint(const wk_engine_params_t *ep, char out[17]) {
  uint64_t h = 1469598103934665603ull;
  snprintf(out, 17, "%016llx", 0ull);
  if (!ep->model_path) {
    char id[160];
    int n = snprintf(id, sizeof id, "synthetic %s seed %llu", ep->synthetic ? ep->synthetic : "",
                     (unsigned long long)ep->synthetic_seed);
    h = wk_svc_fnv(h, (const unsigned char *)id, n < (int)sizeof id ? (size_t)n : sizeof id - 1);
    snprintf(out, 17, "%016llx", (unsigned long long)h);
    return;
  }
  FILE *f = fopen(ep->model_path, "rb");
  if (!f) return;
  static const size_t kBlock = 64u << 10;
  unsigned char *buf = ak_host_alloc(kBlock, 0);
  if (!buf) goto done;
  fseek(f, 0, SEEK_END);
  long size = ftell(f);
  unsigned char size_le[8]; /* the size's bytes, least significant first */
  for (int i = 0; i < 8; i++) size_le[i] = (unsigned char)((unsigned long)size >> (8 * i) & 0xff);
  h = wk_svc_fnv(h, size_le, sizeof size_le);
  for (int blk = -16; blk < 256; blk++) {
    long off = blk < 0 ? (long)(blk + 16) * (long)kBlock : (long)((double)size * blk / 256.0);
    if (fseek(f, off, SEEK_SET) != 0) break;
    h = wk_svc_fnv(h, buf, fread(buf, 1, kBlock, f));
  }
  ak_host_free(buf, kBlock);
done:
  fclose(f);
  snprintf(out, 17, "%016llx", (unsigned long long)h);
}

void wk_svc_publish(wk_service_t *s, int has_step, uint64_t step_id) {
  uint32_t n = 0;
  for (int32_t i = 0; i < s->kv.max_seqs; i++) n += s->seqs[i].live ? 1u : 0u;
  pthread_mutex_lock(&s->mu);
  s->n_seqs = n;
  if (has_step) s->has_last_step_id = 1, s->last_step_id = step_id;
  pthread_mutex_unlock(&s->mu);
}

void wk_svc_fail(wk_service_t *s, const char *msg) {
  AK_LOG_ERROR("rank 0: the engine failed, serving Health and Info only: %s", msg);
  pthread_mutex_lock(&s->mu);
  s->state = ARKVALE__V1__WORKER_STATE__WORKER_STATE_FAILED;
  snprintf(s->fail_msg, sizeof s->fail_msg, "%s", msg);
  pthread_mutex_unlock(&s->mu);
}

/* --- Info and Health: on the CQ thread, from immutable facts and the snapshot --- */

static void wk_svc_on_info(void *user, const ProtobufCMessage *req, ak_rpc_writer_t *w) {
  wk_service_t *s = user;
  Arkvale__V1__InfoResponse r = ARKVALE__V1__INFO_RESPONSE__INIT;
  Arkvale__V1__KvPolicy policy = (Arkvale__V1__KvPolicy)(s->kv.policy + 1);
  r.has_protocol_revision = 1, r.protocol_revision = WK_PROTOCOL_REVISION;
  r.model_id = (char *)s->hp->name;
  r.model_fingerprint = s->fingerprint;
  r.has_n_vocab = 1, r.n_vocab = (uint32_t)s->hp->n_vocab;
  r.has_n_layers = 1, r.n_layers = (uint32_t)s->hp->n_layers;
  r.has_context_tokens = 1, r.context_tokens = (uint32_t)s->kv.max_seq_tokens;
  r.has_page_tokens = 1, r.page_tokens = (uint32_t)s->kv.page_tokens;
  r.has_rank = 1, r.rank = 0;
  r.has_n_ranks = 1, r.n_ranks = 1; /* one rank per group until tensor parallelism */
  r.has_device_kind = 1;
  r.device_kind = s->kv.page_memory || s->device_idx >= 0 ? ARKVALE__V1__DEVICE_KIND__DEVICE_KIND_CUDA
                                                          : ARKVALE__V1__DEVICE_KIND__DEVICE_KIND_CPU;
  if (s->device_idx >= 0) r.has_device_idx = 1, r.device_idx = (uint32_t)s->device_idx;
  /* The pool's policy is fixed at start (a flag), so it is the one policy this worker
   * can run until pools are re-created at Warmup. */
  r.n_supported_policies = 1, r.supported_policies = &policy;
  r.has_device_memory_bytes = 1;
  r.device_memory_bytes = (uint64_t)kv_page_bytes(&s->kv) * (uint64_t)s->kv.n_pages;
  ak_err_t err;
  ak_err_clear(&err);
  ak_status_t st = ak_rpc_writer_write(w, &r.base, &err);
  ak_rpc_writer_finish(w, st, err.msg);
}

static void wk_svc_on_health(void *user, const ProtobufCMessage *req, ak_rpc_writer_t *w) {
  wk_service_t *s = user;
  char msg[AK_ERR_MSG_BYTES];
  Arkvale__V1__HealthResponse r = ARKVALE__V1__HEALTH_RESPONSE__INIT;
  pthread_mutex_lock(&s->mu);
  r.has_state = 1, r.state = s->state;
  if (s->has_last_step_id) r.has_last_step_id = 1, r.last_step_id = s->last_step_id;
  r.has_n_seqs = 1, r.n_seqs = s->n_seqs;
  snprintf(msg, sizeof msg, "%s", s->fail_msg);
  pthread_mutex_unlock(&s->mu);
  r.message = msg;
  ak_err_t err;
  ak_err_clear(&err);
  ak_status_t st = ak_rpc_writer_write(w, &r.base, &err);
  ak_rpc_writer_finish(w, st, err.msg);
}

/* --- the queue: Warmup, Step and Release run on the engine thread in arrival order --- */

static void wk_svc_enqueue(wk_service_t *s, wk_job_kind_t kind, const ProtobufCMessage *req, ak_rpc_writer_t *w) {
  double t0 = wk_svc_now_us();
  wk_job_t *j = ak_host_alloc(sizeof *j, 1);
  if (!j) {
    ak_rpc_writer_finish(w, AK_ERR_NO_MEMORY, "wk_svc_enqueue: no memory for a job");
    return;
  }
  j->kind = kind, j->req = req, j->w = w, j->arrival_us = t0;
  pthread_mutex_lock(&s->mu);
  int refuse = s->stopping;
  if (!refuse) {
    /* Arrival order, except that a Step goes ahead of queued Steps with a larger
     * step_id: pipelined Steps sent back to back may arrive swapped. */
    wk_job_t **pp = s->tail ? &s->tail->next : &s->head;
    if (kind == WK_JOB_STEP) {
      uint64_t id = ((const Arkvale__V1__StepRequest *)req)->step_id;
      for (pp = &s->head; *pp; pp = &(*pp)->next)
        if ((*pp)->kind == WK_JOB_STEP && ((const Arkvale__V1__StepRequest *)(*pp)->req)->step_id > id) break;
    }
    j->next = *pp;
    *pp = j;
    if (!j->next) s->tail = j;
    s->n_queued++;
    pthread_cond_signal(&s->cv);
  }
  pthread_mutex_unlock(&s->mu);
  if (refuse) {
    ak_host_free(j, sizeof *j);
    ak_rpc_writer_finish(w, AK_AGAIN, "the worker is shutting down");
  }
}

static void wk_svc_on_warmup(void *user, const ProtobufCMessage *q, ak_rpc_writer_t *w) {
  wk_svc_enqueue(user, WK_JOB_WARMUP, q, w);
}
static void wk_svc_on_step(void *user, const ProtobufCMessage *q, ak_rpc_writer_t *w) {
  wk_svc_enqueue(user, WK_JOB_STEP, q, w);
}
static void wk_svc_on_release(void *user, const ProtobufCMessage *q, ak_rpc_writer_t *w) {
  wk_svc_enqueue(user, WK_JOB_RELEASE, q, w);
}

int wk_service_queue_depth(wk_service_t *s) {
  pthread_mutex_lock(&s->mu);
  int n = s->n_queued;
  pthread_mutex_unlock(&s->mu);
  return n;
}

/* Warmup, on the engine thread: checks the request against the pool, proves one
 * full-size step on a scratch sequence, reports capacity. */
static ak_status_t wk_svc_warmup(wk_service_t *s, const Arkvale__V1__WarmupRequest *q, ak_err_t *err,
                                 Arkvale__V1__WarmupResponse *r) {
  if (q->kv && q->kv->has_policy && q->kv->policy != ARKVALE__V1__KV_POLICY__KV_POLICY_UNSPECIFIED &&
      (int)q->kv->policy != (int)s->kv.policy + 1)
    return AK_ERR(err, AK_ERR_INVALID_ARG, "kv.policy=%d: this worker's pool runs %s (its --kv-policy)",
                  (int)q->kv->policy, kv_policy_name(s->kv.policy));
  if (q->kv && q->kv->has_budget_tokens && s->kv.policy != KV_POLICY_FULL &&
      (int64_t)q->kv->budget_tokens != s->kv.budget_tokens)
    return AK_ERR(err, AK_ERR_INVALID_ARG, "kv.budget_tokens=%u: this worker's pool runs budget %d (its --kv-budget)",
                  q->kv->budget_tokens, s->kv.budget_tokens);
  int64_t ctx = s->kv.max_seq_tokens;
  int64_t seq_tokens = q->has_max_seq_tokens ? (int64_t)q->max_seq_tokens : ctx;
  if (seq_tokens < 1 || seq_tokens > ctx)
    return AK_ERR(err, AK_ERR_INVALID_ARG, "max_seq_tokens=%lld outside [1, context_tokens=%lld]",
                  (long long)seq_tokens, (long long)ctx);
  int32_t eng_batch = wk_engine_max_batch_tokens(s->eng);
  int64_t batch = q->has_max_batch_tokens ? (int64_t)q->max_batch_tokens : eng_batch;
  if (batch < 1) return AK_ERR(err, AK_ERR_INVALID_ARG, "max_batch_tokens=0 must be >= 1");
  if (batch > eng_batch) batch = eng_batch;
  if (batch > ctx) batch = ctx;
  for (int32_t i = 0; i < s->kv.max_seqs; i++)
    if (s->seqs[i].live)
      return AK_ERR(err, AK_ERR_INVALID_ARG, "Warmup with live sequences (seq_id %llu): Release them first",
                    (unsigned long long)s->seqs[i].seq_id);

  /* The proof: one step of `batch` rows, the vocabulary projection included. */
  double t0 = wk_svc_now_us();
  kv_seq_id_t tmp;
  ak_status_t st = wk_engine_seq_create(s->eng, &tmp);
  if (st < 0) return AK_ERR(err, st, "warm-up sequence: %s", wk_engine_errmsg(s->eng));
  for (int64_t i = 0; i < batch; i++) s->tokens[i] = (int32_t)(i % s->hp->n_vocab);
  int32_t n32 = (int32_t)batch;
  wk_forward_batch_t b = {.seqs = {.n_seqs = 1, .seqs = &tmp, .n_new_tokens = &n32},
                          .tokens = s->tokens, .logits_all = 0, .logits = s->logits};
  st = wk_engine_step(s->eng, &b);
  if (st < 0) AK_ERR(err, st, "warm-up step of %d tokens: %s", n32, wk_engine_errmsg(s->eng));
  ak_status_t st_rel = wk_engine_seq_release(s->eng, tmp);
  if (st < 0) return st;
  if (st_rel < 0) return AK_ERR(err, st_rel, "warm-up sequence: %s", wk_engine_errmsg(s->eng));

  kv_pool_stats_t ps;
  kv_pool_get_stats(wk_engine_kvpool(s->eng), &ps);
  int64_t per_seq = kv_seq_pages_needed(&s->kv, seq_tokens);
  int64_t fit = per_seq > 0 ? ps.n_pages_total / per_seq : 0;
  int64_t max_seqs = q->has_max_seqs && (int64_t)q->max_seqs < s->kv.max_seqs ? (int64_t)q->max_seqs
                                                                               : s->kv.max_seqs;
  if (fit < max_seqs) max_seqs = fit;
  r->has_capacity_pages = 1, r->capacity_pages = (uint64_t)ps.n_pages_total;
  r->has_capacity_tokens = 1;
  r->capacity_tokens = (uint64_t)(ps.n_pages_total / s->hp->n_layers) * (uint64_t)s->kv.page_tokens;
  r->has_pages_per_seq = 1, r->pages_per_seq = (uint64_t)per_seq;
  r->has_max_seqs = 1, r->max_seqs = (uint32_t)max_seqs;
  r->has_max_batch_tokens = 1, r->max_batch_tokens = (uint32_t)batch;
  r->has_backup_capacity_bytes = 1, r->backup_capacity_bytes = (uint64_t)ps.backup_capacity_bytes;
  r->has_warmup_us = 1, r->warmup_us = wk_svc_now_us() - t0;
  s->warm_max_batch_tokens = (int32_t)batch;
  return AK_OK;
}

static void wk_svc_run_warmup(wk_service_t *s, const Arkvale__V1__WarmupRequest *q, ak_rpc_writer_t *w) {
  ak_err_t err;
  ak_err_clear(&err);
  Arkvale__V1__WarmupResponse r = ARKVALE__V1__WARMUP_RESPONSE__INIT;
  ak_status_t st = wk_svc_warmup(s, q, &err, &r);
  if (st >= 0) {
    pthread_mutex_lock(&s->mu);
    s->state = ARKVALE__V1__WORKER_STATE__WORKER_STATE_READY;
    pthread_mutex_unlock(&s->mu);
    st = ak_rpc_writer_write(w, &r.base, &err);
  } else if (st <= AK_ERR_NO_MEMORY && st > AK_ERR_PEER) {
    wk_svc_fail(s, err.msg);
  }
  ak_rpc_writer_finish(w, st, err.msg);
}

/* Whether this rank has not begun step `id` yet (s->mu held). */
static int wk_svc_not_begun(const wk_service_t *s, uint64_t id) {
  return !s->has_begun_step_id || id > s->begun_step_id;
}

/* Whether Step job j comes after a step this rank has not begun yet: the one it names
 * in previous_step_id, or one it feeds a sampled token from (s->mu held). */
static int wk_svc_step_early(const wk_service_t *s, const wk_job_t *j) {
  if (j->kind != WK_JOB_STEP) return 0;
  const Arkvale__V1__StepRequest *q = (const Arkvale__V1__StepRequest *)j->req;
  if (q->has_previous_step_id && wk_svc_not_begun(s, q->previous_step_id)) return 1;
  for (size_t i = 0; i < q->n_continuing_seqs; i++) {
    const Arkvale__V1__ContinuingSequence *cs = q->continuing_seqs[i];
    if (cs->has_feed_sampled_at_step_id && wk_svc_not_begun(s, cs->feed_sampled_at_step_id)) return 1;
  }
  return 0;
}

static void *wk_svc_thread(void *arg) {
  wk_service_t *s = arg;
  for (;;) {
    pthread_mutex_lock(&s->mu);
    while (!s->head && !s->stopping) pthread_cond_wait(&s->cv, &s->mu);
    /* A pipelined Step that overtook its predecessor waits for it a little. */
    if (s->head && !s->stopping && wk_svc_step_early(s, s->head)) {
      struct timespec until = ak_time_realtime_after_ms(s->predecessor_wait_ms);
      wk_job_t *first = s->head;
      while (s->head == first && !s->stopping && pthread_cond_timedwait(&s->cv, &s->mu, &until) == 0) {
      }
    }
    wk_job_t *j = s->head;
    if (!j) { /* stopping and drained */
      pthread_mutex_unlock(&s->mu);
      return NULL;
    }
    if (j->kind == WK_JOB_STEP) {
      const Arkvale__V1__StepRequest *q = (const Arkvale__V1__StepRequest *)j->req;
      if (q->has_step_id && (!s->has_begun_step_id || q->step_id > s->begun_step_id))
        s->has_begun_step_id = 1, s->begun_step_id = q->step_id;
    }
    s->head = j->next;
    if (!s->head) s->tail = NULL;
    s->n_queued--;
    int failed = s->state == ARKVALE__V1__WORKER_STATE__WORKER_STATE_FAILED;
    pthread_mutex_unlock(&s->mu);

    if (s->test_before_job) s->test_before_job(s->test_user);
    if (failed) {
      /* Another worker may serve: the coordinator routes elsewhere (UNAVAILABLE). */
      ak_rpc_writer_finish(j->w, AK_ERR_NO_DEVICE, "the engine failed earlier; see Health");
    } else if (j->kind == WK_JOB_WARMUP) {
      wk_svc_run_warmup(s, (const Arkvale__V1__WarmupRequest *)j->req, j->w);
    } else if (j->kind == WK_JOB_STEP) {
      wk_svc_run_step(s, (const Arkvale__V1__StepRequest *)j->req, j->w, j->arrival_us);
    } else {
      wk_svc_run_release(s, (const Arkvale__V1__ReleaseRequest *)j->req, j->w);
    }
    ak_host_free(j, sizeof *j);
  }
}

/* --- create / destroy --- */

#define WK_ALLOC(ptr, count)                                                          \
  do {                                                                                \
    (ptr) = ak_host_alloc(sizeof *(ptr) * (size_t)(count), 1);                        \
    if (!(ptr)) {                                                                     \
      st = AK_ERR(err, AK_ERR_NO_MEMORY, "%s: %lld entries", #ptr, (long long)(count)); \
      goto err_destroy;                                                               \
    }                                                                                 \
  } while (0)

ak_status_t wk_service_create(const wk_service_params_t *p, ak_err_t *err, wk_service_t **svc_p) {
  if (!p || !svc_p) return AK_ERR(err, AK_ERR_INVALID_ARG, "params or svc_p is NULL");
  if (p->n_rpc_threads < 1) return AK_ERR(err, AK_ERR_INVALID_ARG, "n_rpc_threads=%d must be >= 1", p->n_rpc_threads);
  if (p->predecessor_wait_ms < 0)
    return AK_ERR(err, AK_ERR_INVALID_ARG, "predecessor_wait_ms=%d must be >= 0", p->predecessor_wait_ms);
  wk_service_t *s = ak_host_alloc(sizeof *s, 1);
  if (!s) return AK_ERR(err, AK_ERR_NO_MEMORY, "service struct");
  ak_status_t st;
  pthread_mutex_init(&s->mu, NULL);
  pthread_cond_init(&s->cv, NULL);
  s->state = ARKVALE__V1__WORKER_STATE__WORKER_STATE_LOADING;
  s->device_idx = p->device_idx;
  s->test_before_job = p->test_before_job, s->test_user = p->test_user;
  s->predecessor_wait_ms = p->predecessor_wait_ms;
  s->seed_next = (uint64_t)wk_svc_now_us() * 0x9E3779B97F4A7C15ull;

  wk_engine_params_t ep = p->engine;
  ep.kv_policy = &p->kv;
  st = wk_engine_create(&ep, err, &s->eng);
  if (st < 0) goto err_destroy;
  s->hp = wk_engine_hparams(s->eng);
  s->kv = *kv_pool_params(wk_engine_kvpool(s->eng));
  wk_svc_fingerprint(&p->engine, s->fingerprint);

  int32_t n_seq = s->kv.max_seqs, n_rows = wk_engine_max_batch_tokens(s->eng);
  WK_ALLOC(s->seqs, n_seq);
  WK_ALLOC(s->logits, (int64_t)n_seq * s->hp->n_vocab);
  WK_ALLOC(s->tokens, n_rows);
  WK_ALLOC(s->batch_seqs, n_seq);
  WK_ALLOC(s->batch_n, n_seq);
  WK_ALLOC(s->batch_slot, n_seq);
  if (wk_engine_samples_on_device(s->eng)) {
    WK_ALLOC(s->dev_req, n_seq);
    WK_ALLOC(s->dev_hist, (int64_t)n_seq * WK_CUDA_SAMPLE_MAX_HISTORY_IDS);
    WK_ALLOC(s->dev_ids, n_seq);
    WK_ALLOC(s->dev_logprobs, n_seq);
  }
  s->state = ARKVALE__V1__WORKER_STATE__WORKER_STATE_LOADED;

  if (pthread_create(&s->thread, NULL, wk_svc_thread, s) != 0) {
    st = AK_ERR(err, AK_ERR_INTERNAL, "cannot start the engine thread");
    goto err_destroy;
  }
  s->thread_started = 1;

  st = ak_rpc_server_create(p->listen_addr ? p->listen_addr : "127.0.0.1:0", p->n_rpc_threads, err, &s->srv);
  if (st < 0) goto err_destroy;
  static const struct {
    const char *path;
    const ProtobufCMessageDescriptor *desc;
    ak_rpc_handler_fn fn;
  } methods[] = {
      {WK_METHOD("Info"), &arkvale__v1__info_request__descriptor, wk_svc_on_info},
      {WK_METHOD("Warmup"), &arkvale__v1__warmup_request__descriptor, wk_svc_on_warmup},
      {WK_METHOD("Step"), &arkvale__v1__step_request__descriptor, wk_svc_on_step},
      {WK_METHOD("Release"), &arkvale__v1__release_request__descriptor, wk_svc_on_release},
      {WK_METHOD("Health"), &arkvale__v1__health_request__descriptor, wk_svc_on_health},
  };
  for (size_t i = 0; i < sizeof methods / sizeof methods[0]; i++) {
    ak_rpc_method_t m = {methods[i].path, AK_RPC_UNARY, methods[i].desc, p->max_request_bytes,
                         p->max_request_bytes, methods[i].fn, s};
    st = ak_rpc_server_register(s->srv, &m, err);
    if (st < 0) goto err_destroy;
  }
  st = ak_rpc_server_start(s->srv, err);
  if (st < 0) goto err_destroy;
  *svc_p = s;
  return AK_OK;

err_destroy:
  wk_service_destroy(s);
  return st;
}

int wk_service_port(const wk_service_t *s) { return ak_rpc_server_port(s->srv); }

void wk_service_destroy(wk_service_t *s) {
  if (!s) return;
  /* Drain: the engine thread runs what is queued, answers it, then exits; calls that
   * arrive meanwhile are refused. The server goes last, so the answers reach clients. */
  pthread_mutex_lock(&s->mu);
  s->stopping = 1;
  pthread_cond_broadcast(&s->cv);
  pthread_mutex_unlock(&s->mu);
  if (s->thread_started) pthread_join(s->thread, NULL);
  /* Answered calls may still be sending: let them close before destroy cancels. */
  ak_err_t err;
  if (s->thread_started && ak_rpc_server_shutdown(s->srv, 2000, &err) != AK_OK)
    AK_LOG_WARN("rank 0 port %d: %s: cancelling them", ak_rpc_server_port(s->srv), err.msg);
  ak_rpc_server_destroy(s->srv);
  if (s->seqs)
    for (int32_t i = 0; i < s->kv.max_seqs; i++)
      if (s->seqs[i].live) wk_svc_seq_free(s, &s->seqs[i]);
  int32_t n_seq = s->kv.max_seqs;
  if (s->seqs) ak_host_free(s->seqs, sizeof *s->seqs * (size_t)n_seq);
  if (s->logits) ak_host_free(s->logits, sizeof *s->logits * (size_t)n_seq * (size_t)s->hp->n_vocab);
  if (s->tokens) ak_host_free(s->tokens, sizeof *s->tokens * (size_t)wk_engine_max_batch_tokens(s->eng));
  if (s->batch_seqs) ak_host_free(s->batch_seqs, sizeof *s->batch_seqs * (size_t)n_seq);
  if (s->batch_n) ak_host_free(s->batch_n, sizeof *s->batch_n * (size_t)n_seq);
  if (s->batch_slot) ak_host_free(s->batch_slot, sizeof *s->batch_slot * (size_t)n_seq);
  if (s->dev_req) ak_host_free(s->dev_req, sizeof *s->dev_req * (size_t)n_seq);
  if (s->dev_hist) ak_host_free(s->dev_hist, sizeof *s->dev_hist * (size_t)n_seq * WK_CUDA_SAMPLE_MAX_HISTORY_IDS);
  if (s->dev_ids) ak_host_free(s->dev_ids, sizeof *s->dev_ids * (size_t)n_seq);
  if (s->dev_logprobs) ak_host_free(s->dev_logprobs, sizeof *s->dev_logprobs * (size_t)n_seq);
  wk_engine_destroy(s->eng);
  pthread_cond_destroy(&s->cv);
  pthread_mutex_destroy(&s->mu);
  ak_host_free(s, sizeof *s);
}
