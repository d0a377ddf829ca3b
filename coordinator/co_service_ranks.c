/* co_service_ranks.c: the channels to the ranks of every worker group of co_service,
 * and the fan-out that sends one call to many ranks at once (co_service.h, "Groups and
 * ranks"). Every rank has a blocking channel (ak_rpc_client) and a caller thread that
 * waits for a job under s->fan_mu; co_svc_fan_call posts a job to every rank but one,
 * makes that one call itself on the calling thread (so one group of one rank costs
 * what a direct call does), then waits until every posted job is done.
 * Not for: what the calls mean (co_service.c, co_service_loop.c, co_service_health.c). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "ak_log.h"
#include "co_service_internal.h"
#include "pb_buf.h"

typedef struct {
  co_service_t *s;
  co_svc_rank_t *r;
} co_svc_caller_arg_t;

static void co_svc_rank_run(co_service_t *s, co_svc_rank_t *r) {
  ak_err_t e;
  ak_err_clear(&e);
  r->resp = NULL;
  (void)s;
  r->st = ak_rpc_client_unary(r->client, r->method, r->req, r->desc, CO_SVC_MAX_MSG_BYTES, r->deadline_ms, &e, NULL,
                              &r->resp);
  ak_err_clear(&r->err);
  if (r->st != AK_OK) {
    ak_err_set(&r->err, r->st, "worker %s: %s", r->addr, e.msg);
    r->resp = NULL;
  }
}

static void *co_svc_caller(void *arg) {
  co_svc_caller_arg_t a = *(co_svc_caller_arg_t *)arg;
  free(arg);
  co_service_t *s = a.s;
  co_svc_rank_t *r = a.r;
  pthread_mutex_lock(&s->fan_mu);
  for (;;) {
    while (!r->has_job && !r->quit) pthread_cond_wait(&s->fan_cv, &s->fan_mu);
    if (r->quit) break;
    pthread_mutex_unlock(&s->fan_mu);
    co_svc_rank_run(s, r);
    pthread_mutex_lock(&s->fan_mu);
    r->has_job = 0;
    s->fan_pending--;
    pthread_cond_broadcast(&s->fan_cv);
  }
  pthread_mutex_unlock(&s->fan_mu);
  return NULL;
}

ak_status_t co_svc_ranks_start(co_service_t *s, ak_err_t *err) {
  for (int32_t g = 0; g < s->n_groups; g++)
    for (int32_t k = 0; k < s->groups[g].n_ranks; k++) {
      co_svc_rank_t *r = &s->groups[g].ranks[k];
      ak_status_t st = ak_rpc_client_create(r->addr, err, &r->client);
      if (st != AK_OK) {
        co_svc_ranks_stop(s);
        return st;
      }
      /* The first rank of all is always called from the scheduler thread itself. */
      if (g == 0 && k == 0) continue;
      co_svc_caller_arg_t *a = malloc(sizeof *a);
      if (a) a->s = s, a->r = r;
      if (!a || pthread_create(&r->thread, NULL, co_svc_caller, a) != 0) {
        free(a);
        co_svc_ranks_stop(s);
        return ak_err_set(err, AK_ERR_INTERNAL, "co_service_create: cannot start the caller thread of worker %s",
                          r->addr);
      }
      r->thread_started = 1;
    }
  return AK_OK;
}

void co_svc_ranks_stop(co_service_t *s) {
  pthread_mutex_lock(&s->fan_mu);
  for (int32_t g = 0; g < s->n_groups; g++)
    for (int32_t k = 0; k < s->groups[g].n_ranks; k++) s->groups[g].ranks[k].quit = 1;
  pthread_cond_broadcast(&s->fan_cv);
  pthread_mutex_unlock(&s->fan_mu);
  for (int32_t g = 0; g < s->n_groups; g++)
    for (int32_t k = 0; k < s->groups[g].n_ranks; k++) {
      co_svc_rank_t *r = &s->groups[g].ranks[k];
      if (r->thread_started) pthread_join(r->thread, NULL);
      r->thread_started = 0;
      ak_rpc_client_destroy(r->client);
      r->client = NULL;
      pb_msg_free(r->resp);
      r->resp = NULL;
    }
}

void co_svc_fan_call(co_service_t *s, co_svc_group_t *const *gs, int32_t n, const char *method,
                     const ProtobufCMessage *const *reqs, const ProtobufCMessageDescriptor *desc, int64_t deadline_ms) {
  co_svc_rank_t *mine = NULL; /* the call this thread makes: a rank without a thread, else the last */
  pthread_mutex_lock(&s->fan_mu);
  for (int32_t i = 0; i < n; i++)
    for (int32_t k = 0; k < gs[i]->n_ranks; k++) {
      co_svc_rank_t *r = &gs[i]->ranks[k];
      r->method = method, r->req = reqs[i], r->desc = desc, r->deadline_ms = deadline_ms;
      r->st = AK_OK, r->resp = NULL;
      if (!r->thread_started) mine = r;
    }
  for (int32_t i = 0; i < n; i++)
    for (int32_t k = 0; k < gs[i]->n_ranks; k++) {
      co_svc_rank_t *r = &gs[i]->ranks[k];
      if (r == mine || !r->thread_started) continue;
      if (!mine) {
        mine = r;
        continue;
      }
      r->has_job = 1;
      s->fan_pending++;
    }
  pthread_cond_broadcast(&s->fan_cv);
  pthread_mutex_unlock(&s->fan_mu);
  if (mine) co_svc_rank_run(s, mine);
  pthread_mutex_lock(&s->fan_mu);
  while (s->fan_pending > 0) pthread_cond_wait(&s->fan_cv, &s->fan_mu);
  pthread_mutex_unlock(&s->fan_mu);
}

ak_status_t co_svc_group_status(const co_svc_group_t *g, ak_err_t *err) {
  for (int32_t k = 0; k < g->n_ranks; k++)
    if (g->ranks[k].st != AK_OK) return ak_err_set(err, g->ranks[k].st, "%s", g->ranks[k].err.msg);
  return AK_OK;
}

void co_svc_group_free_resps(co_svc_group_t *g) {
  for (int32_t k = 0; k < g->n_ranks; k++) {
    pb_msg_free(g->ranks[k].resp);
    g->ranks[k].resp = NULL;
  }
}

ak_status_t co_svc_group_reconnect(co_service_t *s, co_svc_group_t *g, ak_err_t *err) {
  (void)s;
  for (int32_t k = 0; k < g->n_ranks; k++) {
    co_svc_rank_t *r = &g->ranks[k];
    ak_rpc_client_t *c = NULL;
    AK_TRY(ak_rpc_client_create(r->addr, err, &c));
    /* No job is in flight: the caller threads touch r->client only inside one. */
    ak_rpc_client_destroy(r->client);
    r->client = c;
  }
  return AK_OK;
}
