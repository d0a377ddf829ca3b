/* co_service_health.c: the standard grpc.health.v1.Health service of co_service
 * (co_service.h, "Health"), and what decides its answer: the one-token canary and
 * bringing a dead group back, each run as a job on the group's own thread (so a
 * group that hangs holds no other), decided and applied on the scheduler thread.
 *
 * The status lives in s->serving under s->mu. Check reads it; each Watch call sits in
 * s->watchers and gets a message whenever publish changes it. Nothing here blocks a
 * completion-queue thread: writes only queue (ak_rpc_writer_write).
 * Not for: Generate's steps (co_service_loop.c). */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include "ak_time.h"
#include "ak_log.h"
#include "co_service_internal.h"
#include "pb_buf.h"

#define CO_SVC_HEALTH_METHOD(name) "/grpc.health.v1.Health/" name
#define CO_SVC_SERVED_NAME "arkvale.v1.Generation"

typedef Grpc__Health__V1__HealthCheckResponse__ServingStatus co_svc_serving_t;
#define CO_SVC_SERVING GRPC__HEALTH__V1__HEALTH_CHECK_RESPONSE__SERVING_STATUS__SERVING
#define CO_SVC_NOT_SERVING GRPC__HEALTH__V1__HEALTH_CHECK_RESPONSE__SERVING_STATUS__NOT_SERVING
#define CO_SVC_SERVICE_UNKNOWN GRPC__HEALTH__V1__HEALTH_CHECK_RESPONSE__SERVING_STATUS__SERVICE_UNKNOWN

/* "" is the server as a whole (the standard's convention). */
static int co_svc_health_known(const char *service) {
  return !service || !*service || !strcmp(service, CO_SVC_SERVED_NAME);
}

static co_svc_serving_t co_svc_health_status_locked(const co_service_t *s) {
  return s->serving && !s->stopping && !s->draining ? CO_SVC_SERVING : CO_SVC_NOT_SERVING;
}

static ak_status_t co_svc_health_send(ak_rpc_writer_t *w, co_svc_serving_t status, ak_err_t *err) {
  Grpc__Health__V1__HealthCheckResponse r = GRPC__HEALTH__V1__HEALTH_CHECK_RESPONSE__INIT;
  r.status = status;
  return ak_rpc_writer_write(w, &r.base, err);
}

/* --- handlers (CQ threads) --- */

static void co_svc_on_health_check(void *user, const ProtobufCMessage *req, ak_rpc_writer_t *w) {
  co_service_t *s = user;
  const Grpc__Health__V1__HealthCheckRequest *q = (const Grpc__Health__V1__HealthCheckRequest *)req;
  ak_err_t err;
  ak_err_clear(&err);
  if (!co_svc_health_known(q->service)) {
    ak_err_set(&err, AK_ERR_NOT_FOUND, "service \"%.64s\" is not served here (\"\" or \"" CO_SVC_SERVED_NAME "\")",
               q->service);
    ak_rpc_writer_finish(w, AK_ERR_NOT_FOUND, err.msg);
    return;
  }
  pthread_mutex_lock(&s->mu);
  co_svc_serving_t status = co_svc_health_status_locked(s);
  pthread_mutex_unlock(&s->mu);
  ak_status_t st = co_svc_health_send(w, status, &err);
  ak_rpc_writer_finish(w, st, st == AK_OK ? NULL : err.msg);
}

static void co_svc_on_health_watch(void *user, const ProtobufCMessage *req, ak_rpc_writer_t *w) {
  co_service_t *s = user;
  const Grpc__Health__V1__HealthCheckRequest *q = (const Grpc__Health__V1__HealthCheckRequest *)req;
  ak_err_t err;
  ak_err_clear(&err);
  co_svc_watch_t *wt = calloc(1, sizeof *wt);
  if (!wt) {
    ak_rpc_writer_finish(w, AK_ERR_NO_MEMORY, "Watch: out of memory");
    return;
  }
  wt->w = w;
  wt->known = co_svc_health_known(q->service);
  ak_status_t st;
  pthread_mutex_lock(&s->mu);
  if (s->stopping) {
    co_svc_health_send(w, wt->known ? CO_SVC_NOT_SERVING : CO_SVC_SERVICE_UNKNOWN, &err);
    st = ak_err_set(&err, AK_ERR_PEER, "the coordinator is shutting down");
  } else {
    /* An unknown name gets SERVICE_UNKNOWN and the call stays open (the standard: the
     * service may be added later; here it never is, so it ends at shutdown). */
    st = co_svc_health_send(w, wt->known ? co_svc_health_status_locked(s) : CO_SVC_SERVICE_UNKNOWN, &err);
    if (st == AK_OK) {
      wt->next = s->watchers, s->watchers = wt;
      wt = NULL;
      s->n_watchers++;
      co_svc_metric_watchers_locked(s);
    }
  }
  pthread_mutex_unlock(&s->mu);
  if (wt) {
    free(wt);
    ak_rpc_writer_finish(w, st, err.msg);
  }
}

ak_status_t co_svc_health_register(co_service_t *s, ak_err_t *err) {
  const ak_rpc_method_t methods[] = {
      {CO_SVC_HEALTH_METHOD("Check"), AK_RPC_UNARY, &grpc__health__v1__health_check_request__descriptor,
       CO_SVC_MAX_MSG_BYTES, CO_SVC_MAX_MSG_BYTES, co_svc_on_health_check, s},
      {CO_SVC_HEALTH_METHOD("Watch"), AK_RPC_SERVER_STREAMING, &grpc__health__v1__health_check_request__descriptor,
       CO_SVC_MAX_MSG_BYTES, CO_SVC_MAX_MSG_BYTES, co_svc_on_health_watch, s},
  };
  for (size_t i = 0; i < sizeof methods / sizeof methods[0]; i++)
    AK_TRY(ak_rpc_server_register(s->srv, &methods[i], err));
  return AK_OK;
}

/* --- the status and its watchers --- */

/* Sends `status` to every Watch of a served name; a Watch whose write fails (the
 * client left) is ended. s->mu held. */
static void co_svc_health_broadcast_locked(co_service_t *s, co_svc_serving_t status) {
  for (co_svc_watch_t **pp = &s->watchers; *pp;) {
    co_svc_watch_t *wt = *pp;
    ak_err_t err;
    if (wt->known && co_svc_health_send(wt->w, status, &err) != AK_OK) {
      /* the client left (or the write cannot go out): end the call */
      *pp = wt->next;
      ak_rpc_writer_finish(wt->w, AK_ERR_CANCELLED, err.msg);
      free(wt);
      s->n_watchers--;
      continue;
    }
    pp = &wt->next;
  }
  co_svc_metric_watchers_locked(s);
}

void co_svc_health_publish(co_service_t *s, int serving, const char *why) {
  pthread_mutex_lock(&s->mu);
  co_svc_serving_t before = co_svc_health_status_locked(s);
  int changed = s->serving != serving;
  s->serving = serving;
  co_svc_serving_t after = co_svc_health_status_locked(s);
  int draining = s->draining;
  /* the gauge under the same lock as the status: set after the unlock, a Check could
   * see NOT_SERVING while /metrics still said 1, and two publishes racing (the watchdog
   * and a canary) could leave the gauge at the older value for good */
  ak_err_t err;
  if (changed) co_metrics_set(s->metrics, s->mid.serving, NULL, serving && !draining ? 1.0 : 0.0, &err);
  if (after != before && !s->stopping) co_svc_health_broadcast_locked(s, after);
  pthread_mutex_unlock(&s->mu);
  if (changed)
    ak_log_write(serving ? AK_LOG_INFO : AK_LOG_WARN, __func__, "coordinator port %d: %s (%s)%s", s->port,
                 serving ? "SERVING" : "NOT_SERVING", why, draining ? ", draining: reported NOT_SERVING" : "");
}

void co_svc_health_drain(co_service_t *s) {
  pthread_mutex_lock(&s->mu);
  co_svc_serving_t before = co_svc_health_status_locked(s);
  s->draining = 1;
  ak_err_t err;
  co_metrics_set(s->metrics, s->mid.serving, NULL, 0.0, &err); /* with the status, as in publish */
  if (before != CO_SVC_NOT_SERVING && !s->stopping) co_svc_health_broadcast_locked(s, CO_SVC_NOT_SERVING);
  pthread_mutex_unlock(&s->mu);
}

void co_svc_health_sweep(co_service_t *s) {
  pthread_mutex_lock(&s->mu);
  int32_t before = s->n_watchers;
  for (co_svc_watch_t **pp = &s->watchers; *pp;) {
    co_svc_watch_t *wt = *pp;
    if (ak_rpc_writer_cancelled(wt->w)) {
      *pp = wt->next;
      ak_rpc_writer_finish(wt->w, AK_ERR_CANCELLED, "cancelled");
      free(wt);
      s->n_watchers--;
      continue;
    }
    pp = &wt->next;
  }
  if (s->n_watchers != before) co_svc_metric_watchers_locked(s);
  pthread_mutex_unlock(&s->mu);
}

void co_svc_health_shutdown_locked(co_service_t *s) {
  while (s->watchers) {
    co_svc_watch_t *wt = s->watchers;
    s->watchers = wt->next;
    ak_err_t err;
    if (wt->known && s->serving) co_svc_health_send(wt->w, CO_SVC_NOT_SERVING, &err);
    ak_rpc_writer_finish(wt->w, AK_ERR_PEER, "the coordinator is shutting down");
    free(wt);
  }
  s->n_watchers = 0;
  co_svc_metric_watchers_locked(s);
}

/* --- the canary and the revive: run on the group's thread as jobs, decided and
 * applied on the scheduler thread --- */

/* One new sequence of one token in its own Step to every rank of g, sampled greedily
 * (rank 0's sample checked), then Released. */
ak_status_t co_svc_canary_run(co_service_t *s, co_svc_group_t *g, ak_err_t *err) {
  uint64_t id = CO_SVC_CANARY_SEQ_ID_BASE + atomic_fetch_add(&s->n_canaries, 1) + 1;
  int32_t tok = co_tokenizer_bos(s->tok);
  if (tok < 0 || tok >= s->n_vocab) tok = 0;
  Arkvale__V1__SamplingParams sp = ARKVALE__V1__SAMPLING_PARAMS__INIT;
  sp.has_temperature = 1, sp.temperature = 0.0f;
  Arkvale__V1__NewSequence ns = ARKVALE__V1__NEW_SEQUENCE__INIT;
  ns.has_seq_id = 1, ns.seq_id = id;
  ns.sampling = &sp;
  ns.n_token_ids = 1, ns.token_ids = &tok;
  ns.has_sample = 1, ns.sample = 1;
  ns.has_max_seq_tokens = 1, ns.max_seq_tokens = 2;
  Arkvale__V1__NewSequence *nsp = &ns;
  Arkvale__V1__StepRequest q = ARKVALE__V1__STEP_REQUEST__INIT;
  q.has_step_id = 1, q.step_id = ++g->step_id;
  q.n_new_seqs = 1, q.new_seqs = &nsp;
  co_svc_fan_call(s, g, "/arkvale.v1.Worker/Step", &q.base, &arkvale__v1__step_response__descriptor,
                  s->p.step_deadline_ms);
  ak_err_t e;
  ak_err_clear(&e);
  ak_status_t st = co_svc_group_status(g, &e);
  if (st != AK_OK) {
    co_svc_group_free_resps(g);
    return ak_err_set(err, st, "canary Step %" PRIu64 ": %s", q.step_id, e.msg);
  }
  const Arkvale__V1__StepResponse *sr = (const Arkvale__V1__StepResponse *)g->ranks[0].resp;
  if (sr->n_samples != 1 || sr->samples[0]->seq_id != id || sr->samples[0]->token_id < 0 ||
      sr->samples[0]->token_id >= s->n_vocab)
    st = ak_err_set(err, AK_ERR_PEER, "canary Step %" PRIu64 ": worker %s answered %zu samples, not one valid token",
                    q.step_id, g->ranks[0].addr, sr->n_samples);
  for (int32_t k = 0; k < g->n_ranks; k++) {
    co_svc_metric_kv(s, &g->ranks[k], ((const Arkvale__V1__StepResponse *)g->ranks[k].resp)->kv);
    co_svc_metric_rank_add(s, &g->ranks[k], s->mid.steps, 1.0);
  }
  co_svc_group_free_resps(g);
  /* Released even after a bad answer: the worker may hold it. */
  ak_status_t rst = co_svc_worker_release(s, g, &id, 1, 0, &e);
  if (st == AK_OK && rst != AK_OK) st = ak_err_set(err, rst, "canary Release: %s", e.msg);
  return st;
}

/* Fresh channels (the old ones may sit in reconnect backoff), a Health probe with a
 * short deadline (co_svc_worker_probe), Release all (sequences of a worker that lived
 * through the failure), Info, Warmup on every rank. co_sched_group_revive follows on
 * the scheduler thread (co_svc_health_job_done), then the group's canary. */
ak_status_t co_svc_revive_run(co_service_t *s, co_svc_group_t *g, ak_err_t *err, int64_t *cap_pages_p) {
  AK_TRY(co_svc_group_reconnect(s, g, err));
  AK_TRY(co_svc_worker_probe(s, g, err));
  AK_TRY(co_svc_worker_release(s, g, NULL, 0, 1, err));
  return co_svc_worker_warmup(s, g, err, cap_pages_p);
}

co_svc_job_t co_svc_health_due(co_service_t *s, co_svc_group_t *g, int64_t now_us) {
  int64_t period_us = s->p.canary_period_ms * 1000;
  if (g->dead) {
    /* An attempt holds only this group (its own thread); one that times out (up to the
     * probe's deadline) still backs off, so a host that does not answer costs little;
     * one refused at once (a restarting process) comes again next period. */
    int64_t wait_us = g->revive_wait_us > period_us ? g->revive_wait_us : period_us;
    return now_us - g->last_revive_us >= wait_us ? CO_SVC_JOB_REVIVE : CO_SVC_JOB_NONE;
  }
  if (g->last_canary_us && now_us - g->last_canary_us < period_us) return CO_SVC_JOB_NONE;
  if (!g->canary_reserved) {
    /* no slot kept for it: only into an empty group, whose ended sequences the worker
     * has released too (drops planned while Steps were in flight wait in pend_drops,
     * outside co_sched, until the next Release) */
    co_sched_group_stats_t gs;
    if (g->n_pend_drops > 0 || co_sched_group_stats(s->sched, g->idx, &gs) != AK_OK || gs.n_running > 0 ||
        gs.n_pending_drops > 0)
      return CO_SVC_JOB_NONE;
  }
  g->last_canary_us = now_us;
  return CO_SVC_JOB_CANARY;
}

static void co_svc_revive_done(co_service_t *s, co_svc_group_t *g) {
  int64_t period_us = s->p.canary_period_ms * 1000;
  int64_t end_us = co_svc_now_us();
  ak_status_t st = g->job_st;
  ak_err_t err = g->job_err;
  if (st == AK_OK) {
    /* The restarted workers may hold fewer slots or a smaller step than before: plans
     * over the old ones would fail the first full Step. More than co_sched's tables
     * hold cannot be used. */
    co_sched_group_caps_t caps = {g->job_cap_pages, g->max_seqs, g->batch_tokens};
    if (caps.max_running_seqs > s->sched_max_seqs) caps.max_running_seqs = s->sched_max_seqs;
    if ((st = co_sched_group_revive(s->sched, g->idx, &caps)) != AK_OK)
      ak_err_set(&err, st, "%s", co_sched_errmsg(s->sched));
  }
  if (st != AK_OK && end_us - g->job_start_us > period_us / 2)
    g->revive_wait_us = g->revive_wait_us * 2 > period_us ? g->revive_wait_us * 2 : 2 * period_us;
  else g->revive_wait_us = period_us;
  if (g->revive_wait_us > CO_SVC_REVIVE_MAX_WAIT_US) g->revive_wait_us = CO_SVC_REVIVE_MAX_WAIT_US;
  g->last_revive_us = end_us;
  if (st != AK_OK) {
    ak_log_write(AK_LOG_INFO, __func__, "worker group %d (%s) is still down: %s", g->idx, g->ranks[0].addr, err.msg);
    return;
  }
  ak_log_write(AK_LOG_INFO, __func__, "worker group %d (%s) is back: %" PRId64 " pages, %d slots, %d batch tokens",
               g->idx, g->ranks[0].addr, g->job_cap_pages, g->max_seqs, g->batch_tokens);
  g->dead = 0;
  g->last_canary_us = 0; /* its canary is due now */
}

void co_svc_health_job_done(co_service_t *s, co_svc_group_t *g, co_svc_job_t job) {
  if (job == CO_SVC_JOB_REVIVE) {
    co_svc_revive_done(s, g);
    return;
  }
  /* The next canary's period runs from this one's end: a canary slower than the period
   * (a loaded host) would otherwise be due again at once, and a due canary holds new
   * Steps back, so requests would wait behind canaries indefinitely. */
  g->last_canary_us = co_svc_now_us();
  if (g->job_st != AK_OK) {
    co_svc_group_failed(s, g, g->job_err.msg);
    return;
  }
  pthread_mutex_lock(&s->mu);
  s->last_answer_us = co_svc_now_us();
  pthread_mutex_unlock(&s->mu);
  for (int32_t k = 0; k < g->n_ranks; k++) co_svc_metric_rank_add(s, &g->ranks[k], s->mid.canaries, 1.0);
  g->serving = 1;
  char why[96];
  snprintf(why, sizeof why, "the canary of group %d answered", g->idx);
  co_svc_health_refresh(s, why);
}

/* --- the staleness watchdog (its own thread: every group's Step may hang, which is
 * the case it exists for) --- */

void *co_svc_health_watchdog(void *arg) {
  co_service_t *s = arg;
  int64_t period_ms = s->p.canary_period_ms;
  pthread_mutex_lock(&s->mu);
  while (!s->stopping) {
    struct timespec ts = ak_time_realtime_after_ms(period_ms);
    pthread_cond_timedwait(&s->watchdog_cv, &s->mu, &ts);
    if (s->stopping) break;
    int64_t age_us = co_svc_now_us() - s->last_answer_us;
    if (s->serving && s->last_answer_us && age_us > s->stale_us) {
      pthread_mutex_unlock(&s->mu);
      char why[128];
      snprintf(why, sizeof why, "no worker has answered a Step for %" PRId64 " ms (health_stale_ms %" PRId64 ")",
               age_us / 1000, s->stale_us / 1000);
      co_svc_health_publish(s, 0, why);
      pthread_mutex_lock(&s->mu);
    }
  }
  pthread_mutex_unlock(&s->mu);
  return NULL;
}
