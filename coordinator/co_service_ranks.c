/* co_service_ranks.c: the channels to the ranks of every worker group of co_service,
 * the threads that call them, and the fan-out that sends one call to every rank of a
 * group at once (co_service.h, "Groups and ranks"). Every rank has a blocking channel
 * (ak_rpc_client). Every group has a thread that runs the jobs the scheduler thread
 * posts (a Step, a canary, a revive, a Release: co_svc_group_main), so a group that
 * hangs holds only itself; each rank past a group's first has a caller thread that
 * waits for a call under the group's mu. co_svc_fan_call posts the call to those,
 * makes rank 0's itself on the calling thread, then waits for the rest.
 * Steps do not go through the group's thread: each of a group's CO_SVC_STEP_DEPTH lanes
 * has a caller thread per rank, so Step k+1 is on its way while Step k's calls wait
 * (co_svc_lane_post); the last rank to answer marks the lane done for the scheduler.
 * Not for: what the calls mean (co_service.c, co_service_loop.c, co_service_health.c). */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "ak_log.h"
#include "co_service_internal.h"
#include "pb_buf.h"

typedef struct {
  co_service_t *s;
  co_svc_group_t *g;
  co_svc_rank_t *r;
} co_svc_caller_arg_t;

static void co_svc_rank_run(co_svc_rank_t *r) {
  ak_err_t e;
  ak_err_clear(&e);
  r->resp = NULL;
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
  co_svc_group_t *g = a.g;
  co_svc_rank_t *r = a.r;
  pthread_mutex_lock(&g->mu);
  for (;;) {
    while (!r->has_job && !r->quit) pthread_cond_wait(&g->cv, &g->mu);
    if (r->quit) break;
    pthread_mutex_unlock(&g->mu);
    co_svc_rank_run(r);
    pthread_mutex_lock(&g->mu);
    r->has_job = 0;
    g->fan_pending--;
    pthread_cond_broadcast(&g->cv);
  }
  pthread_mutex_unlock(&g->mu);
  return NULL;
}

typedef struct {
  co_service_t *s;
  co_svc_group_t *g;
  int32_t lane_idx, rank_idx;
} co_svc_lane_arg_t;

static void *co_svc_lane_caller(void *arg) {
  co_svc_lane_arg_t a = *(co_svc_lane_arg_t *)arg;
  free(arg);
  co_svc_group_t *g = a.g;
  co_svc_lane_t *l = &g->lanes[a.lane_idx];
  co_svc_lane_rank_t *lr = &l->ranks[a.rank_idx];
  co_svc_rank_t *r = &g->ranks[a.rank_idx];
  pthread_mutex_lock(&g->mu);
  for (;;) {
    while (!lr->has_job && !lr->quit) pthread_cond_wait(&g->cv, &g->mu);
    if (lr->quit) break;
    pthread_mutex_unlock(&g->mu);
    ak_err_t e;
    ak_err_clear(&e);
    ak_err_clear(&lr->err);
    lr->resp = NULL;
    lr->st = ak_rpc_client_unary(r->client, "/arkvale.v1.Worker/Step", &l->q.base,
                                 &arkvale__v1__step_response__descriptor, CO_SVC_MAX_MSG_BYTES,
                                 a.s->p.step_deadline_ms, &e, NULL, &lr->resp);
    if (lr->st != AK_OK) {
      ak_err_set(&lr->err, lr->st, "worker %s: Step %" PRIu64 ": %s", r->addr, l->step_id, e.msg);
      lr->resp = NULL;
    }
    pthread_mutex_lock(&g->mu);
    lr->has_job = 0;
    int last = --l->pending == 0;
    pthread_mutex_unlock(&g->mu);
    if (last) {
      pthread_mutex_lock(&a.s->mu);
      l->done = 1;
      pthread_cond_signal(&a.s->cv);
      pthread_mutex_unlock(&a.s->mu);
    }
    pthread_mutex_lock(&g->mu);
  }
  pthread_mutex_unlock(&g->mu);
  return NULL;
}

void co_svc_lane_post(co_service_t *s, co_svc_group_t *g, int32_t lane_idx) {
  (void)s;
  co_svc_lane_t *l = &g->lanes[lane_idx];
  l->answered = 0;
  pthread_mutex_lock(&g->mu);
  l->pending = g->n_ranks;
  for (int32_t k = 0; k < g->n_ranks; k++) l->ranks[k].has_job = 1, l->ranks[k].st = AK_OK;
  pthread_cond_broadcast(&g->cv);
  pthread_mutex_unlock(&g->mu);
}

void co_svc_lane_free_resps(co_svc_group_t *g, co_svc_lane_t *l) {
  for (int32_t k = 0; k < g->n_ranks; k++) {
    pb_msg_free(l->ranks[k].resp);
    l->ranks[k].resp = NULL;
  }
}

ak_status_t co_svc_ranks_start(co_service_t *s, ak_err_t *err) {
  for (int32_t gi = 0; gi < s->n_groups; gi++) {
    co_svc_group_t *g = &s->groups[gi];
    g->svc = s;
    pthread_mutex_init(&g->mu, NULL);
    pthread_cond_init(&g->cv, NULL);
    g->mu_init = 1;
  }
  for (int32_t gi = 0; gi < s->n_groups; gi++) {
    co_svc_group_t *g = &s->groups[gi];
    for (int32_t k = 0; k < g->n_ranks; k++) {
      co_svc_rank_t *r = &g->ranks[k];
      ak_status_t st = ak_rpc_client_create(r->addr, err, &r->client);
      if (st != AK_OK) {
        co_svc_ranks_stop(s);
        return st;
      }
      /* Rank 0 is called by whoever runs the group's calls: create, then its thread. */
      if (k == 0) continue;
      co_svc_caller_arg_t *a = malloc(sizeof *a);
      if (a) a->s = s, a->g = g, a->r = r;
      if (!a || pthread_create(&r->thread, NULL, co_svc_caller, a) != 0) {
        free(a);
        co_svc_ranks_stop(s);
        return ak_err_set(err, AK_ERR_INTERNAL, "co_service_create: cannot start the caller thread of worker %s",
                          r->addr);
      }
      r->thread_started = 1;
    }
    for (int32_t li = 0; li < CO_SVC_STEP_DEPTH; li++) {
      co_svc_lane_t *l = &g->lanes[li];
      l->ranks = calloc((size_t)g->n_ranks, sizeof *l->ranks);
      if (!l->ranks) {
        co_svc_ranks_stop(s);
        return ak_err_set(err, AK_ERR_NO_MEMORY, "co_service_create: Step lanes of worker group %d", gi);
      }
      for (int32_t k = 0; k < g->n_ranks; k++) {
        co_svc_lane_arg_t *a = malloc(sizeof *a);
        if (a) a->s = s, a->g = g, a->lane_idx = li, a->rank_idx = k;
        if (!a || pthread_create(&l->ranks[k].thread, NULL, co_svc_lane_caller, a) != 0) {
          free(a);
          co_svc_ranks_stop(s);
          return ak_err_set(err, AK_ERR_INTERNAL, "co_service_create: cannot start a Step caller of worker %s",
                            g->ranks[k].addr);
        }
        l->ranks[k].thread_started = 1;
      }
    }
    if (pthread_create(&g->thread, NULL, co_svc_group_main, g) != 0) {
      co_svc_ranks_stop(s);
      return ak_err_set(err, AK_ERR_INTERNAL, "co_service_create: cannot start the thread of worker group %d", gi);
    }
    g->thread_started = 1;
  }
  return AK_OK;
}

void co_svc_ranks_stop(co_service_t *s) {
  for (int32_t gi = 0; gi < s->n_groups; gi++) {
    co_svc_group_t *g = &s->groups[gi];
    if (!g->mu_init) continue;
    pthread_mutex_lock(&g->mu);
    g->quit = 1;
    for (int32_t k = 0; k < g->n_ranks; k++) g->ranks[k].quit = 1;
    for (int32_t li = 0; li < CO_SVC_STEP_DEPTH; li++)
      for (int32_t k = 0; g->lanes[li].ranks && k < g->n_ranks; k++) g->lanes[li].ranks[k].quit = 1;
    pthread_cond_broadcast(&g->cv);
    pthread_mutex_unlock(&g->mu);
  }
  for (int32_t gi = 0; gi < s->n_groups; gi++) {
    co_svc_group_t *g = &s->groups[gi];
    if (g->thread_started) pthread_join(g->thread, NULL);
    g->thread_started = 0;
    for (int32_t li = 0; li < CO_SVC_STEP_DEPTH; li++) {
      co_svc_lane_t *l = &g->lanes[li];
      for (int32_t k = 0; l->ranks && k < g->n_ranks; k++) {
        if (l->ranks[k].thread_started) pthread_join(l->ranks[k].thread, NULL);
        l->ranks[k].thread_started = 0;
      }
      if (l->ranks) co_svc_lane_free_resps(g, l);
      for (size_t i = 0; i < sizeof l->bufs / sizeof l->bufs[0]; i++) free(l->bufs[i]), l->bufs[i] = NULL;
      free(l->ranks);
      l->ranks = NULL;
    }
    free(g->pend_drops);
    g->pend_drops = NULL, g->n_pend_drops = g->cap_pend_drops = 0;
    for (int32_t k = 0; k < g->n_ranks; k++) {
      co_svc_rank_t *r = &g->ranks[k];
      if (r->thread_started) pthread_join(r->thread, NULL);
      r->thread_started = 0;
      ak_rpc_client_destroy(r->client);
      r->client = NULL;
      pb_msg_free(r->resp);
      r->resp = NULL;
    }
    free(g->rel_ids);
    g->rel_ids = NULL;
    if (g->mu_init) {
      pthread_cond_destroy(&g->cv);
      pthread_mutex_destroy(&g->mu);
      g->mu_init = 0;
    }
  }
}

void co_svc_fan_call(co_service_t *s, co_svc_group_t *g, const char *method, const ProtobufCMessage *req,
                     const ProtobufCMessageDescriptor *desc, int64_t deadline_ms) {
  (void)s;
  pthread_mutex_lock(&g->mu);
  for (int32_t k = 0; k < g->n_ranks; k++) {
    co_svc_rank_t *r = &g->ranks[k];
    r->method = method, r->req = req, r->desc = desc, r->deadline_ms = deadline_ms;
    r->st = AK_OK, r->resp = NULL;
    if (k > 0) {
      r->has_job = 1;
      g->fan_pending++;
    }
  }
  if (g->fan_pending > 0) pthread_cond_broadcast(&g->cv);
  pthread_mutex_unlock(&g->mu);
  co_svc_rank_run(&g->ranks[0]);
  pthread_mutex_lock(&g->mu);
  while (g->fan_pending > 0) pthread_cond_wait(&g->cv, &g->mu);
  pthread_mutex_unlock(&g->mu);
}

void co_svc_job_post(co_service_t *s, co_svc_group_t *g, co_svc_job_t job) {
  (void)s;
  g->busy = job;
  g->job_start_us = co_svc_now_us();
  ak_err_clear(&g->job_err);
  g->job_st = AK_OK;
  pthread_mutex_lock(&g->mu);
  g->job = job;
  pthread_cond_broadcast(&g->cv);
  pthread_mutex_unlock(&g->mu);
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
    /* No call is in flight (this is g's own job): the caller threads touch r->client
     * only inside one. */
    ak_rpc_client_destroy(r->client);
    r->client = c;
  }
  return AK_OK;
}
