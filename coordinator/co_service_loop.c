/* co_service_loop.c: the scheduler thread of co_service (co_service.h, "Threads").
 * It owns co_sched and every request once it left the inbox. Each turn plans every
 * live group, sends their Steps to all their ranks at once (co_svc_fan_call) and
 * answers each group from its rank 0; the loop blocks on the workers and nothing else. */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include "ak_time.h"
#include "ak_log.h"
#include "co_service_internal.h"
#include "pb_buf.h"

#define CO_SVC_IDLE_WAIT_MS 20 /* poll for cancellation while nothing runs */

static co_svc_req_t *co_svc_find(co_service_t *s, int64_t id) {
  for (co_svc_req_t *r = s->running; r; r = r->next)
    if (r->id == id) return r;
  return NULL;
}

static void co_svc_unlink(co_service_t *s, co_svc_req_t *r) {
  for (co_svc_req_t **pp = &s->running; *pp; pp = &(*pp)->next)
    if (*pp == r) {
      *pp = r->next;
      r->next = NULL;
      return;
    }
}

/* Ends a running request with an error (not a normal finish). */
static void co_svc_fail(co_service_t *s, co_svc_req_t *r, ak_status_t st, const char *msg) {
  co_sched_abort(s->sched, r->id); /* NOT_FOUND when it already left: fine */
  co_svc_unlink(s, r);
  co_svc_req_end(s, r, st, msg);
}

/* Ends a request normally: the held-back text, the finish reason and the usage. */
static void co_svc_finish(co_service_t *s, co_svc_req_t *r, Arkvale__V1__FinishReason why, const char *stop) {
  Arkvale__V1__GenerateResponse m = ARKVALE__V1__GENERATE_RESPONSE__INIT;
  Arkvale__V1__Usage u = ARKVALE__V1__USAGE__INIT;
  char *text = NULL;
  if (why != ARKVALE__V1__FINISH_REASON__FINISH_REASON_STOP_STRING) {
    /* what the decoder and the stop matcher still hold */
    const char *t = NULL, *t2 = NULL;
    size_t n = 0, n2 = 0;
    co_detok_flush(r->detok, &t, &n);
    int stopped = 0;
    text = malloc(n + 1 + CO_STOP_MAX_BYTES * 2);
    size_t len = 0;
    if (r->stop) {
      if (n) co_stop_push(r->stop, t, n, &t2, &n2, &stopped);
      if (text && n2) memcpy(text + len, t2, n2), len += n2;
      if (!stopped) {
        co_stop_flush(r->stop, &t2, &n2);
        if (text && n2 && len + n2 <= n + CO_STOP_MAX_BYTES * 2) memcpy(text + len, t2, n2), len += n2;
      }
    } else if (text && n) memcpy(text, t, n), len = n;
    if (text) text[len] = 0;
  }
  int64_t now = co_svc_now_us();
  m.request_id = r->request_id;
  m.text = text ? text : "";
  m.has_finish_reason = 1, m.finish_reason = why;
  if (stop) m.stop_matched = (char *)stop;
  u.has_prompt_tokens = 1, u.prompt_tokens = (uint32_t)r->n_prompt;
  u.has_completion_tokens = 1, u.completion_tokens = (uint32_t)r->n_generated;
  u.has_queue_us = 1, u.queue_us = (uint64_t)(r->admitted_us - r->arrival_us);
  u.has_time_to_first_token_us = 1, u.time_to_first_token_us = (uint64_t)(r->first_token_us - r->arrival_us);
  u.has_total_us = 1, u.total_us = (uint64_t)(now - r->arrival_us);
  m.usage = &u;
  ak_err_t err;
  ak_status_t st = ak_rpc_writer_write(r->w, &m.base, &err);
  free(text);
  co_svc_unlink(s, r);
  co_svc_req_end(s, r, st, st == AK_OK ? NULL : err.msg);
}

/* One sampled token of r: detokenize, stop conditions, write. Returns the finish
 * reason (UNSPECIFIED: keep going); *stop_p the matched stop string. */
static Arkvale__V1__FinishReason co_svc_on_token(co_service_t *s, co_svc_req_t *r, int32_t tok, int has_lp, float lp,
                                                 const char **stop_p) {
  Arkvale__V1__FinishReason why = ARKVALE__V1__FINISH_REASON__FINISH_REASON_UNSPECIFIED;
  r->n_generated++;
  r->last_token = tok;
  int64_t now_us = co_svc_now_us();
  /* TPOT is one observation per token after the first (the gap since the previous
   * one), so its quantiles are per-token latencies: one per request would weigh a
   * 2-token request like a 2000-token one and hide stalls inside long streams. */
  if (r->n_generated == 1) {
    r->first_token_us = now_us;
    co_svc_metric_observe(s, s->mid.ttft, (double)(r->first_token_us - r->arrival_us) / 1e6);
  } else
    co_svc_metric_observe(s, s->mid.tpot, (double)(now_us - r->last_token_us) / 1e6);
  r->last_token_us = now_us;
  co_svc_metric_add(s, s->mid.gen_tokens, 1.0);
  int eos = !r->ignore_eos && co_tokenizer_is_eog(s->tok, tok);
  const char *t = NULL;
  size_t n = 0;
  int stopped = 0;
  if (!eos && co_detok_push(r->detok, tok, &t, &n) != AK_OK) n = 0;
  if (r->stop && !eos) {
    const char *e = NULL;
    size_t ne = 0;
    co_stop_push(r->stop, t, n, &e, &ne, &stopped);
    t = e, n = ne;
  }
  if (eos) why = ARKVALE__V1__FINISH_REASON__FINISH_REASON_EOS;
  else if (stopped) why = ARKVALE__V1__FINISH_REASON__FINISH_REASON_STOP_STRING;
  else if (r->n_generated >= r->max_new)
    why = r->n_prompt + r->n_generated >= s->context_tokens ? ARKVALE__V1__FINISH_REASON__FINISH_REASON_CONTEXT_LIMIT
                                                             : ARKVALE__V1__FINISH_REASON__FINISH_REASON_LENGTH;
  *stop_p = NULL;
  /* co_stop does not say which string matched yet: stop_matched stays unset */
  Arkvale__V1__GenerateResponse m = ARKVALE__V1__GENERATE_RESPONSE__INIT;
  char *text = malloc(n + 1);
  if (text) {
    if (n) memcpy(text, t, n);
    text[n] = 0;
  }
  m.request_id = r->request_id;
  m.n_token_ids = 1, m.token_ids = &tok;
  m.text = text ? text : "";
  if (r->return_logprobs && has_lp) m.n_logprobs = 1, m.logprobs = &lp;
  ak_err_t err;
  ak_rpc_writer_write(r->w, &m.base, &err); /* a cancelled writer is seen next loop */
  free(text);
  return why;
}

/* Takes the inbox (under mu) into co_sched; refused requests end at once. Returns
 * whether the service is stopping. */
static int co_svc_take_inbox(co_service_t *s, int wait_ms) {
  pthread_mutex_lock(&s->mu);
  if (!s->inbox_head && !s->stopping && wait_ms > 0) {
    struct timespec ts = ak_time_realtime_after_ms(wait_ms);
    pthread_cond_timedwait(&s->cv, &s->mu, &ts);
  }
  co_svc_req_t *in = s->inbox_head;
  s->inbox_head = s->inbox_tail = NULL;
  int stopping = s->stopping;
  pthread_mutex_unlock(&s->mu);
  int all_dead = 1;
  for (int32_t g = 0; g < s->n_groups; g++) all_dead &= s->groups[g].dead;
  while (in) {
    co_svc_req_t *r = in;
    in = in->next, r->next = NULL;
    co_sched_req_t q = {r->id, r->n_prompt, r->max_new, 0, r->arrival_us};
    ak_status_t st = stopping ? AK_ERR_PEER : all_dead ? AK_ERR_PEER : co_sched_submit(s->sched, &q);
    if (st != AK_OK) {
      char msg[AK_ERR_MSG_BYTES];
      snprintf(msg, sizeof msg, "%s", stopping ? "the coordinator is shutting down"
                                      : all_dead ? "no live worker group"
                                      : st == AK_ERR_POOL_FULL ? "queue full: retry later"
                                                               : co_sched_errmsg(s->sched));
      co_svc_req_end(s, r, st, msg);
      continue;
    }
    r->next = s->running, s->running = r;
  }
  return stopping;
}

/* Aborted (Abort) or cancelled (client gone) requests leave with CANCELLED, those past
 * their deadline with DEADLINE_EXCEEDED (the client has its own status already; these
 * are for the writer and the metrics); at shutdown
 * they end UNAVAILABLE: another coordinator may serve them. */
static void co_svc_reap_cancelled(co_service_t *s, int stopping) {
  co_svc_req_t *r = s->running;
  while (r) {
    co_svc_req_t *next = r->next;
    if (stopping) co_svc_fail(s, r, AK_ERR_PEER, "the coordinator is shutting down");
    else if (atomic_load(&r->abort_requested)) co_svc_fail(s, r, AK_ERR_CANCELLED, "request aborted");
    else if (ak_rpc_writer_cancelled(r->w) && ak_rpc_writer_deadline_passed(r->w))
      co_svc_fail(s, r, AK_ERR_TIMEOUT, "deadline exceeded");
    else if (ak_rpc_writer_cancelled(r->w)) co_svc_fail(s, r, AK_ERR_CANCELLED, "cancelled");
    r = next;
  }
}

static void co_svc_release(co_service_t *s, co_svc_group_t *g, const int64_t *ids, int32_t n) {
  uint64_t *u = malloc((size_t)(n > 0 ? n : 1) * sizeof *u);
  ak_err_t err;
  if (!u) {
    ak_log_write(AK_LOG_WARN, __func__, "worker group %d (%s): out of memory releasing %d sequences", g->idx,
                 g->ranks[0].addr, n);
    return;
  }
  for (int32_t i = 0; i < n; i++) u[i] = (uint64_t)ids[i];
  /* A worker that cannot be reached fails the next Step or canary: the group dies then. */
  if (co_svc_worker_release(s, g, u, (size_t)n, 0, &err) != AK_OK)
    ak_log_write(AK_LOG_WARN, __func__, "%s", err.msg);
  free(u);
}

void co_svc_health_refresh(co_service_t *s, const char *why) {
  int any = 0;
  for (int32_t g = 0; g < s->n_groups; g++) any |= !s->groups[g].dead && s->groups[g].serving;
  co_svc_health_publish(s, any, why);
}

static void co_svc_step_free(co_svc_group_t *g) {
  for (size_t i = 0; i < sizeof g->bufs / sizeof g->bufs[0]; i++) {
    free(g->bufs[i]);
    g->bufs[i] = NULL;
  }
  g->in_step = 0;
}

void co_svc_group_failed(co_service_t *s, co_svc_group_t *g, const char *why) {
  ak_log_write(AK_LOG_ERROR, __func__, "worker group %d (%s%s): %s", g->idx, g->ranks[0].addr,
               g->n_ranks > 1 ? ", ..." : "", why);
  const int64_t *failed = NULL;
  int32_t n_failed = 0;
  co_sched_group_dead(s->sched, g->idx, &failed, &n_failed);
  co_svc_step_free(g);
  g->dead = 1;
  g->serving = 0;
  char msg[AK_ERR_MSG_BYTES];
  snprintf(msg, sizeof msg, "worker failed: %s", why);
  /* Those the group's workers had seen fail; the rest went back to the queue. The ids
   * are valid until the next co_sched call: co_svc_fail makes one, so copy them. */
  int64_t *ids = n_failed > 0 ? malloc((size_t)n_failed * sizeof *ids) : NULL;
  if (ids) memcpy(ids, failed, (size_t)n_failed * sizeof *ids);
  else if (n_failed > 0) ak_log_write(AK_LOG_ERROR, __func__, "out of memory: %d requests left to their deadline", n_failed);
  for (int32_t i = 0; ids && i < n_failed; i++) {
    co_svc_req_t *r = co_svc_find(s, ids[i]);
    if (r) co_svc_fail(s, r, AK_ERR_PEER, msg);
  }
  free(ids);
  g->last_revive_us = co_svc_now_us(); /* the first revive a canary period later */
  co_svc_health_refresh(s, msg);
}

/* Builds g's Step request for `plan` into g->q (its arrays in g->bufs). Returns 0 when
 * the group failed instead. */
static int co_svc_step_build(co_service_t *s, co_svc_group_t *g) {
  const co_sched_plan_t *plan = &g->plan;
  int32_t n = plan->n_items;
  Arkvale__V1__StepRequest *q = &g->q;
  arkvale__v1__step_request__init(q);
  Arkvale__V1__NewSequence *nsv = calloc((size_t)n, sizeof *nsv);
  Arkvale__V1__ContinuingSequence *csv = calloc((size_t)n, sizeof *csv);
  Arkvale__V1__NewSequence **nsp = calloc((size_t)n, sizeof *nsp);
  Arkvale__V1__ContinuingSequence **csp = calloc((size_t)n, sizeof *csp);
  uint64_t *drops = calloc((size_t)plan->n_drops + 1, sizeof *drops);
  co_sched_result_t *res = calloc((size_t)n, sizeof *res);
  void *bufs[6] = {nsv, csv, nsp, csp, drops, res};
  memcpy(g->bufs, bufs, sizeof bufs);
  g->in_step = 1;
  if (!nsv || !csv || !nsp || !csp || !drops || !res) {
    co_svc_group_failed(s, g, "out of memory building a step");
    return 0;
  }
  for (int32_t i = 0; i < plan->n_drops; i++) drops[i] = (uint64_t)plan->drops[i];
  q->has_step_id = 1, q->step_id = ++g->step_id;
  q->n_drop_seq_ids = (size_t)plan->n_drops, q->drop_seq_ids = drops;
  q->new_seqs = nsp, q->continuing_seqs = csp;
  for (int32_t i = 0; i < n; i++) {
    const co_sched_item_t *it = &plan->items[i];
    co_svc_req_t *r = co_svc_find(s, it->id);
    if (!r) {
      co_svc_group_failed(s, g, "a planned sequence has no request");
      return 0;
    }
    int32_t *toks = it->is_prefill ? r->prompt + it->pos0 : &r->last_token;
    if (it->is_prefill) co_svc_metric_add(s, s->mid.prompt_tokens, (double)it->n_tokens);
    if (it->is_new) {
      Arkvale__V1__NewSequence *ns = &nsv[q->n_new_seqs];
      arkvale__v1__new_sequence__init(ns);
      ns->has_seq_id = 1, ns->seq_id = (uint64_t)r->id;
      if (r->has_sampling) ns->sampling = &r->sampling;
      ns->n_token_ids = (size_t)it->n_tokens, ns->token_ids = toks;
      ns->has_sample = 1, ns->sample = it->samples;
      ns->has_return_logprob = 1, ns->return_logprob = r->return_logprobs;
      ns->has_max_seq_tokens = 1, ns->max_seq_tokens = (uint32_t)(r->n_prompt + r->max_new);
      nsp[q->n_new_seqs++] = ns;
      if (!r->admitted_us) r->admitted_us = co_svc_now_us();
    } else {
      Arkvale__V1__ContinuingSequence *cs = &csv[q->n_continuing_seqs];
      arkvale__v1__continuing_sequence__init(cs);
      cs->has_seq_id = 1, cs->seq_id = (uint64_t)r->id;
      cs->n_token_ids = (size_t)it->n_tokens, cs->token_ids = toks;
      cs->has_sample = 1, cs->sample = it->samples;
      cs->has_return_logprob = 1, cs->return_logprob = r->return_logprobs;
      csp[q->n_continuing_seqs++] = cs;
    }
    res[i].id = it->id;
  }
  return 1;
}

/* Answers g's Step from rank 0's response (every rank answered OK). */
static void co_svc_step_answer(co_service_t *s, co_svc_group_t *g) {
  const co_sched_plan_t *plan = &g->plan;
  int32_t n = plan->n_items;
  co_sched_result_t *res = g->bufs[5];
  ak_err_t err;
  ak_err_clear(&err);
  if (co_svc_group_status(g, &err) != AK_OK) {
    co_svc_group_free_resps(g);
    co_svc_group_failed(s, g, err.msg);
    return;
  }
  const Arkvale__V1__StepResponse *sr = (const Arkvale__V1__StepResponse *)g->ranks[0].resp;
  pthread_mutex_lock(&s->mu);
  s->last_answer_us = co_svc_now_us();
  pthread_mutex_unlock(&s->mu);
  for (int32_t k = 0; k < g->n_ranks; k++) {
    co_svc_metric_kv(s, &g->ranks[k], ((const Arkvale__V1__StepResponse *)g->ranks[k].resp)->kv);
    co_svc_metric_rank_add(s, &g->ranks[k], s->mid.steps, 1.0);
  }
  /* Apply every sample, deciding who finishes; then step_done; then end them. */
  Arkvale__V1__FinishReason *why = calloc((size_t)n, sizeof *why);
  const char **stops = calloc((size_t)n, sizeof *stops);
  if (!why || !stops) {
    free(why), free(stops), co_svc_group_free_resps(g);
    co_svc_group_failed(s, g, "out of memory answering a step");
    return;
  }
  for (int32_t i = 0; i < n; i++) {
    const co_sched_item_t *it = &plan->items[i];
    if (!it->samples) continue;
    const Arkvale__V1__SampledToken *tk = NULL;
    for (size_t k = 0; k < sr->n_samples; k++)
      if (sr->samples[k]->seq_id == (uint64_t)it->id) tk = sr->samples[k];
    if (!tk || tk->token_id < 0 || tk->token_id >= s->n_vocab) {
      free(why), free(stops), co_svc_group_free_resps(g);
      co_svc_group_failed(s, g, "the Step response lacks a sample or has a bad token id");
      return;
    }
    co_svc_req_t *r = co_svc_find(s, it->id);
    why[i] = co_svc_on_token(s, r, tk->token_id, tk->has_logprob, tk->logprob, &stops[i]);
    res[i].n_sampled_tokens = 1;
    res[i].finished = why[i] != ARKVALE__V1__FINISH_REASON__FINISH_REASON_UNSPECIFIED;
  }
  co_svc_group_free_resps(g);
  ak_status_t st = co_sched_step_done(s->sched, g->idx, res, n, NULL, NULL);
  if (st != AK_OK) co_svc_group_failed(s, g, co_sched_errmsg(s->sched));
  else
    for (int32_t i = 0; i < n; i++)
      if (why[i] != ARKVALE__V1__FINISH_REASON__FINISH_REASON_UNSPECIFIED) {
        co_svc_req_t *r = co_svc_find(s, plan->items[i].id);
        if (r) co_svc_finish(s, r, why[i], stops[i]);
      }
  free(why);
  free(stops);
  co_svc_step_free(g);
}

void *co_svc_loop(void *arg) {
  co_service_t *s = arg;
  int idle = 0;
  co_svc_group_t **stepping = calloc((size_t)s->n_groups, sizeof *stepping);
  const ProtobufCMessage **reqs = calloc((size_t)s->n_groups, sizeof *reqs);
  if (!stepping || !reqs) {
    /* Nothing can run: fail every group, then serve only the refusals. */
    ak_log_write(AK_LOG_ERROR, __func__, "out of memory starting the scheduler thread");
    for (int32_t g = 0; g < s->n_groups; g++) co_svc_group_failed(s, &s->groups[g], "out of memory");
  }
  for (;;) {
    int stopping = co_svc_take_inbox(s, idle ? CO_SVC_IDLE_WAIT_MS : 0);
    co_svc_reap_cancelled(s, stopping);
    co_svc_health_sweep(s);
    if (!stopping && stepping) co_svc_health_tick(s, co_svc_now_us());
    int32_t n_stepping = 0;
    for (int32_t gi = 0; gi < s->n_groups && stepping; gi++) {
      co_svc_group_t *g = &s->groups[gi];
      if (g->dead) continue;
      ak_status_t st = co_sched_plan_step(s->sched, gi, co_svc_now_us(), &g->plan);
      if (st != AK_OK) {
        co_svc_group_failed(s, g, co_sched_errmsg(s->sched));
        continue;
      }
      if (g->plan.n_items > 0) {
        if (co_svc_step_build(s, g)) stepping[n_stepping] = g, reqs[n_stepping++] = &g->q.base;
      } else if (g->plan.n_drops > 0)
        co_svc_release(s, g, g->plan.drops, g->plan.n_drops);
    }
    co_svc_metric_sched(s); /* after admission */
    if (n_stepping > 0) {
      co_svc_fan_call(s, stepping, n_stepping, "/arkvale.v1.Worker/Step", reqs,
                      &arkvale__v1__step_response__descriptor, s->p.step_deadline_ms);
      for (int32_t i = 0; i < n_stepping; i++) co_svc_step_answer(s, stepping[i]);
      idle = 0;
      continue;
    }
    if (stopping) break;
    idle = 1;
  }
  free(stepping);
  free(reqs);
  return NULL;
}
