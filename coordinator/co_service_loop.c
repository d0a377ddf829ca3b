/* co_service_loop.c: the scheduler thread of co_service (co_service.h, "Threads"),
 * and the jobs it posts to each group's thread.
 * The scheduler thread owns co_sched and every request once it left the inbox; it
 * never calls a worker itself. Each group steps on its own, so a slow or hung group
 * holds no other.
 *
 * Pipelined decode (CO_SVC_STEP_DEPTH = 2): a group keeps two Steps in flight, so its
 * worker's engine never waits for the round trip. Right after Step k is posted, co_sched
 * is told it is done as planned (every sampling item sampled one token; co_sched ends
 * a request at max_new_tokens itself), so Step k+1 can be planned and posted at once;
 * its decode items carry no token: the worker feeds each the token it sampled at the
 * sequence's previous step (feed_sampled_at_step_id). When Step k's answer arrives, its
 * tokens are streamed and checked for EOS and stop strings; a sequence that stopped at
 * Step k is already in Step k+1: co_sched_abort drops it from the next Step planned,
 * and the token Step k+1 samples for it is discarded (its request is gone: never
 * streamed, never counted). Steps are answered in step order. A failed Step fails the
 * group; the Step behind it is answered as failed too (its answer is discarded), and
 * the group is revived only once no Step is in flight. Canaries, revives and Releases
 * run on the group's thread while no Step is in flight: a due canary holds new Steps
 * back until the pipeline drains. */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include "ak_time.h"
#include "ak_log.h"
#include "co_service_internal.h"
#include "pb_buf.h"

#define CO_SVC_IDLE_WAIT_MS 20 /* poll for cancellation, canaries and revives between events */

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

/* Waits (at most wait_ms) for an event: a request in the inbox, a group's job done,
 * shutdown (with jobs out, for them); then takes the inbox into co_sched (refused
 * requests end at once) and each group's job_done flag into done[g]. Returns whether
 * the service is stopping. */
static int co_svc_take_inbox(co_service_t *s, int wait_ms, int n_busy, int32_t *done) {
  pthread_mutex_lock(&s->mu);
  int any_done = 0;
  for (int32_t g = 0; g < s->n_groups; g++) {
    any_done |= s->groups[g].job_done;
    for (int32_t li = 0; li < CO_SVC_STEP_DEPTH; li++) any_done |= s->groups[g].lanes[li].done;
  }
  if (!s->inbox_head && !any_done && (!s->stopping || n_busy > 0) && wait_ms > 0) {
    struct timespec ts = ak_time_realtime_after_ms(wait_ms);
    pthread_cond_timedwait(&s->cv, &s->mu, &ts);
  }
  for (int32_t g = 0; g < s->n_groups && done; g++) {
    done[g] = s->groups[g].job_done;
    s->groups[g].job_done = 0;
    for (int32_t li = 0; li < CO_SVC_STEP_DEPTH; li++) {
      co_svc_lane_t *l = &s->groups[g].lanes[li];
      if (l->done) l->done = 0, l->answered = 1;
    }
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

void co_svc_health_refresh(co_service_t *s, const char *why) {
  int any = 0;
  for (int32_t g = 0; g < s->n_groups; g++) any |= !s->groups[g].dead && s->groups[g].serving;
  co_svc_health_publish(s, any, why);
}

static void co_svc_lane_free(co_svc_lane_t *l) {
  for (size_t i = 0; i < sizeof l->bufs / sizeof l->bufs[0]; i++) {
    free(l->bufs[i]);
    l->bufs[i] = NULL;
  }
  l->items = NULL, l->n_items = 0;
  l->answered = 0;
}

void co_svc_group_failed(co_service_t *s, co_svc_group_t *g, const char *why) {
  ak_log_write(AK_LOG_ERROR, __func__, "worker group %d (%s%s): %s", g->idx, g->ranks[0].addr,
               g->n_ranks > 1 ? ", ..." : "", why);
  const int64_t *failed = NULL;
  int32_t n_failed = 0;
  co_sched_group_dead(s->sched, g->idx, &failed, &n_failed);
  /* Steps still in flight keep their buffers (their callers read them) until answered;
   * drops not sent are moot: a revive releases everything. */
  g->n_pend_drops = 0;
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

/* Builds lane l's Step for g->plan (its arrays in l->bufs: the token ids and sampling
 * parameters are copies, the lane's callers pack them while this thread may end their
 * requests; the plan's items are copied too). Decode items carry no token: the worker
 * feeds the one it sampled at the sequence's previous Step. The drops planned while
 * no Step could carry them go with it. Returns 0 when the group failed instead. */
static int co_svc_step_build(co_service_t *s, co_svc_group_t *g, co_svc_lane_t *l) {
  const co_sched_plan_t *plan = &g->plan;
  int32_t n = plan->n_items;
  Arkvale__V1__StepRequest *q = &l->q;
  arkvale__v1__step_request__init(q);
  size_t n_drops = (size_t)plan->n_drops + g->n_pend_drops;
  Arkvale__V1__NewSequence *nsv = calloc((size_t)n, sizeof *nsv);
  Arkvale__V1__ContinuingSequence *csv = calloc((size_t)n, sizeof *csv);
  Arkvale__V1__NewSequence **nsp = calloc((size_t)n, sizeof *nsp);
  Arkvale__V1__ContinuingSequence **csp = calloc((size_t)n, sizeof *csp);
  uint64_t *drops = calloc(n_drops + 1, sizeof *drops);
  co_sched_item_t *items = calloc((size_t)n, sizeof *items);
  int32_t *toks_all = calloc((size_t)plan->n_tokens + 1, sizeof *toks_all); /* [plan n_tokens] */
  Arkvale__V1__SamplingParams *sps = calloc((size_t)n, sizeof *sps);
  void *bufs[8] = {nsv, csv, nsp, csp, drops, items, toks_all, sps};
  memcpy(l->bufs, bufs, sizeof bufs);
  if (!nsv || !csv || !nsp || !csp || !drops || !items || !toks_all || !sps) {
    co_svc_lane_free(l);
    co_svc_group_failed(s, g, "out of memory building a step");
    return 0;
  }
  memcpy(items, plan->items, (size_t)n * sizeof *items);
  l->items = items, l->n_items = n;
  for (size_t i = 0; i < g->n_pend_drops; i++) drops[i] = g->pend_drops[i];
  for (int32_t i = 0; i < plan->n_drops; i++) drops[g->n_pend_drops + (size_t)i] = (uint64_t)plan->drops[i];
  g->n_pend_drops = 0;
  q->has_step_id = 1, q->step_id = l->step_id = ++g->step_id;
  /* The Step before this one may still be on its way: the rank begins this one after it
   * (worker.proto, previous_step_id). */
  if (g->n_in_flight > 0)
    q->has_previous_step_id = 1,
    q->previous_step_id = g->lanes[(g->lane_oldest + g->n_in_flight - 1) % CO_SVC_STEP_DEPTH].step_id;
  q->n_drop_seq_ids = n_drops, q->drop_seq_ids = drops;
  q->new_seqs = nsp, q->continuing_seqs = csp;
  int64_t n_toks = 0;
  for (int32_t i = 0; i < n; i++) {
    const co_sched_item_t *it = &plan->items[i];
    co_svc_req_t *r = co_svc_find(s, it->id);
    if (!r) {
      char why[96];
      snprintf(why, sizeof why, "planned sequence %lld has no request", (long long)it->id);
      co_svc_lane_free(l);
      co_svc_group_failed(s, g, why);
      return 0;
    }
    int32_t *toks = toks_all + n_toks;
    if (it->is_prefill) memcpy(toks, r->prompt + it->pos0, (size_t)it->n_tokens * sizeof *toks);
    n_toks += it->n_tokens;
    if (it->is_prefill) co_svc_metric_add(s, s->mid.prompt_tokens, (double)it->n_tokens);
    if (it->is_new) {
      Arkvale__V1__NewSequence *ns = &nsv[q->n_new_seqs];
      arkvale__v1__new_sequence__init(ns);
      ns->has_seq_id = 1, ns->seq_id = (uint64_t)r->id;
      if (r->has_sampling) sps[i] = r->sampling, ns->sampling = &sps[i];
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
      if (it->is_prefill) {
        cs->n_token_ids = (size_t)it->n_tokens, cs->token_ids = toks;
      } else {
        /* the token its previous Step samples (maybe still running there) */
        cs->has_feed_sampled_at_step_id = 1, cs->feed_sampled_at_step_id = r->sample_step_id;
      }
      cs->has_sample = 1, cs->sample = it->samples;
      cs->has_return_logprob = 1, cs->return_logprob = r->return_logprobs;
      csp[q->n_continuing_seqs++] = cs;
    }
    if (it->samples) r->sample_step_id = q->step_id;
  }
  return 1;
}

/* One sampled token of a Step's answer, kept for the streaming pass. */
typedef struct {
  int64_t id;
  int32_t tok;
  int has_lp;
  float lp;
} co_svc_sample_t;

/* Whether every rank that sampled drew rank 0's tokens: each rank feeds its own sample
 * to the next Step, so ranks that disagree would diverge. Sets err when not. */
static int co_svc_ranks_agree(const co_svc_group_t *g, const co_svc_lane_t *l, ak_err_t *err) {
  const Arkvale__V1__StepResponse *r0 = (const Arkvale__V1__StepResponse *)l->ranks[0].resp;
  for (int32_t k = 1; k < g->n_ranks; k++) {
    const Arkvale__V1__StepResponse *rk = (const Arkvale__V1__StepResponse *)l->ranks[k].resp;
    if (rk->n_samples == 0) continue; /* a rank that does not sample */
    if (rk->n_samples != r0->n_samples) {
      ak_err_set(err, AK_ERR_INTERNAL, "Step %" PRIu64 ": rank %d (%s) sampled %zu tokens, rank 0 %zu", l->step_id, k,
                 g->ranks[k].addr, rk->n_samples, r0->n_samples);
      return 0;
    }
    for (size_t i = 0; i < r0->n_samples; i++)
      if (rk->samples[i]->seq_id != r0->samples[i]->seq_id || rk->samples[i]->token_id != r0->samples[i]->token_id) {
        ak_err_set(err, AK_ERR_INTERNAL, "Step %" PRIu64 ": rank %d (%s) sampled token %d for seq %" PRIu64
                   ", rank 0 token %d: the ranks diverge", l->step_id, k, g->ranks[k].addr,
                   rk->samples[i]->token_id, rk->samples[i]->seq_id, r0->samples[i]->token_id);
        return 0;
      }
  }
  return 1;
}

/* Answers g's oldest Step in flight (lane l, every rank answered). The Step behind it
 * may be running already; see the top of this file. */
static void co_svc_lane_answer(co_service_t *s, co_svc_group_t *g, co_svc_lane_t *l) {
  ak_err_t err;
  ak_err_clear(&err);
  if (g->dead) { /* behind a failed Step: the group failed already */
    co_svc_lane_free_resps(g, l);
    co_svc_lane_free(l);
    return;
  }
  for (int32_t k = 0; k < g->n_ranks; k++)
    if (l->ranks[k].st != AK_OK) {
      ak_err_set(&err, l->ranks[k].st, "%s", l->ranks[k].err.msg);
      co_svc_lane_free_resps(g, l);
      co_svc_lane_free(l);
      co_svc_group_failed(s, g, err.msg);
      return;
    }
  const Arkvale__V1__StepResponse *sr = (const Arkvale__V1__StepResponse *)l->ranks[0].resp;
  pthread_mutex_lock(&s->mu);
  s->last_answer_us = co_svc_now_us();
  pthread_mutex_unlock(&s->mu);
  for (int32_t k = 0; k < g->n_ranks; k++) {
    const co_svc_rank_t *rk = &g->ranks[k];
    co_svc_metric_kv(s, rk, ((const Arkvale__V1__StepResponse *)l->ranks[k].resp)->kv);
    co_svc_metric_rank_add(s, rk, s->mid.steps, 1.0);
  }
  if (sr->has_sampled_on_device && sr->sampled_on_device)
    co_svc_metric_rank_add(s, &g->ranks[0], s->mid.device_sampled, 1.0);
  int32_t n = l->n_items;
  co_svc_sample_t *smp = calloc((size_t)n + 1, sizeof *smp);
  const char *bad = !smp ? "out of memory answering a step" : NULL;
  char bad_sample[160];
  if (!bad && !co_svc_ranks_agree(g, l, &err)) bad = err.msg;
  int32_t n_smp = 0;
  for (int32_t i = 0; !bad && i < n; i++) {
    const co_sched_item_t *it = &l->items[i];
    if (!it->samples) continue;
    const Arkvale__V1__SampledToken *tk = NULL;
    for (size_t k = 0; k < sr->n_samples; k++)
      if (sr->samples[k]->seq_id == (uint64_t)it->id) tk = sr->samples[k];
    if (!tk) {
      snprintf(bad_sample, sizeof bad_sample, "the Step response lacks the sample of sequence %lld",
               (long long)it->id);
      bad = bad_sample;
    } else if (tk->token_id < 0 || tk->token_id >= s->n_vocab) {
      snprintf(bad_sample, sizeof bad_sample, "the Step response gives sequence %lld token id %d, outside [0, %d)",
               (long long)it->id, tk->token_id, (int)s->n_vocab);
      bad = bad_sample;
    } else {
      smp[n_smp++] = (co_svc_sample_t){it->id, tk->token_id, tk->has_logprob, tk->logprob};
    }
  }
  if (bad) {
    char why[AK_ERR_MSG_BYTES];
    snprintf(why, sizeof why, "%s", bad);
    free(smp);
    co_svc_lane_free_resps(g, l);
    co_svc_lane_free(l);
    co_svc_group_failed(s, g, why);
    return;
  }
  co_svc_lane_free_resps(g, l);
  co_svc_lane_free(l);
  for (int32_t i = 0; i < n_smp; i++) {
    /* Ended since the plan (cancelled, EOS or a stop string at the Step before):
     * its token is discarded, never streamed. */
    co_svc_req_t *r = co_svc_find(s, smp[i].id);
    if (!r) continue;
    const char *stop = NULL;
    Arkvale__V1__FinishReason why = co_svc_on_token(s, r, smp[i].tok, smp[i].has_lp, smp[i].lp, &stop);
    if (why == ARKVALE__V1__FINISH_REASON__FINISH_REASON_UNSPECIFIED) continue;
    /* EOS or a stop string (co_sched ended it at max_new_tokens itself): the sequence is
     * in the Step in flight; co_sched drops it from the next one planned. */
    (void)co_sched_abort(s->sched, r->id);
    co_svc_finish(s, r, why, stop);
  }
  free(smp);
}

/* A group's job has ended (its thread set job_done): apply it. */
static void co_svc_job_done(co_service_t *s, co_svc_group_t *g) {
  co_svc_job_t job = g->busy;
  g->busy = CO_SVC_JOB_NONE;
  switch (job) {
  case CO_SVC_JOB_CANARY:
  case CO_SVC_JOB_REVIVE:
    co_svc_health_job_done(s, g, job);
    break;
  case CO_SVC_JOB_RELEASE:
    /* A worker that cannot be reached fails the next Step or canary: the group dies then. */
    if (g->job_st != AK_OK) ak_log_write(AK_LOG_WARN, __func__, "%s", g->job_err.msg);
    break;
  case CO_SVC_JOB_NONE:
    break;
  }
}

/* Drops planned with no Step to carry them: the next Step (or a Release) does. */
static int co_svc_pend_drops(co_svc_group_t *g) {
  size_t need = g->n_pend_drops + (size_t)g->plan.n_drops;
  if (need > g->cap_pend_drops) {
    size_t cap = need * 2 + 8;
    uint64_t *p = realloc(g->pend_drops, cap * sizeof *p);
    if (!p) return 0;
    g->pend_drops = p, g->cap_pend_drops = cap;
  }
  for (int32_t i = 0; i < g->plan.n_drops; i++) g->pend_drops[g->n_pend_drops++] = (uint64_t)g->plan.drops[i];
  return 1;
}

/* Keeps g busy: a due revive or canary once no Step is in flight (a due canary holds
 * new Steps back until then), else Steps until CO_SVC_STEP_DEPTH are in flight, each
 * counted done in co_sched as planned right after it is posted; with nothing to step
 * and nothing in flight, a Release of the drops planned meanwhile. */
static void co_svc_group_kick(co_service_t *s, co_svc_group_t *g) {
  if (g->busy) return;
  int64_t now_us = co_svc_now_us();
  if (g->dead) {
    g->canary_wanted = 0;
    if (g->n_in_flight == 0 && !s->loop_stopping && co_svc_health_due(s, g, now_us) == CO_SVC_JOB_REVIVE)
      co_svc_job_post(s, g, CO_SVC_JOB_REVIVE);
    return;
  }
  if (s->loop_stopping) g->canary_wanted = 0;
  else if (!g->canary_wanted && co_svc_health_due(s, g, now_us) == CO_SVC_JOB_CANARY) g->canary_wanted = 1;
  if (g->canary_wanted) {
    if (g->n_in_flight == 0) {
      g->canary_wanted = 0;
      co_svc_job_post(s, g, CO_SVC_JOB_CANARY);
    }
    return;
  }
  while (g->n_in_flight < CO_SVC_STEP_DEPTH) {
    ak_status_t st = co_sched_plan_step(s->sched, g->idx, now_us, &g->plan);
    if (st != AK_OK) {
      co_svc_group_failed(s, g, co_sched_errmsg(s->sched));
      return;
    }
    if (g->plan.n_items == 0) {
      if (!co_svc_pend_drops(g))
        ak_log_write(AK_LOG_WARN, __func__, "worker group %d (%s): out of memory keeping %d drops", g->idx,
                     g->ranks[0].addr, g->plan.n_drops);
      break;
    }
    int32_t li = (g->lane_oldest + g->n_in_flight) % CO_SVC_STEP_DEPTH;
    co_svc_lane_t *l = &g->lanes[li];
    if (!co_svc_step_build(s, g, l)) return;
    g->n_in_flight++;
    co_svc_lane_post(s, g, li);
    /* Done as planned: a token for every sampling item, the rest is learnt at the answer. */
    co_sched_result_t *res = calloc((size_t)l->n_items, sizeof *res);
    for (int32_t i = 0; res && i < l->n_items; i++)
      res[i] = (co_sched_result_t){l->items[i].id, l->items[i].samples, 0};
    st = res ? co_sched_step_done(s->sched, g->idx, res, l->n_items, NULL, NULL) : AK_ERR_NO_MEMORY;
    free(res);
    if (st != AK_OK) {
      co_svc_group_failed(s, g, st == AK_ERR_NO_MEMORY ? "out of memory planning a step" : co_sched_errmsg(s->sched));
      return;
    }
  }
  if (g->n_in_flight == 0 && g->n_pend_drops > 0) {
    free(g->rel_ids);
    g->rel_ids = g->pend_drops, g->n_rel = g->n_pend_drops;
    g->pend_drops = NULL, g->n_pend_drops = g->cap_pend_drops = 0;
    co_svc_job_post(s, g, CO_SVC_JOB_RELEASE);
  }
}
void *co_svc_group_main(void *arg) {
  co_svc_group_t *g = arg;
  co_service_t *s = g->svc;
  pthread_mutex_lock(&g->mu);
  for (;;) {
    while (g->job == CO_SVC_JOB_NONE && !g->quit) pthread_cond_wait(&g->cv, &g->mu);
    if (g->quit) break;
    co_svc_job_t job = g->job;
    pthread_mutex_unlock(&g->mu);
    ak_status_t st = AK_OK;
    switch (job) {
    case CO_SVC_JOB_CANARY:
      st = co_svc_canary_run(s, g, &g->job_err);
      break;
    case CO_SVC_JOB_REVIVE:
      st = co_svc_revive_run(s, g, &g->job_err, &g->job_cap_pages);
      break;
    case CO_SVC_JOB_RELEASE:
      st = co_svc_worker_release(s, g, g->rel_ids, g->n_rel, 0, &g->job_err);
      break;
    case CO_SVC_JOB_NONE:
      break;
    }
    g->job_st = st;
    pthread_mutex_lock(&g->mu);
    g->job = CO_SVC_JOB_NONE;
    pthread_mutex_unlock(&g->mu);
    pthread_mutex_lock(&s->mu);
    g->job_done = 1;
    pthread_cond_signal(&s->cv);
    pthread_mutex_unlock(&s->mu);
    pthread_mutex_lock(&g->mu);
  }
  pthread_mutex_unlock(&g->mu);
  return NULL;
}

void *co_svc_loop(void *arg) {
  co_service_t *s = arg;
  int32_t *done = calloc((size_t)s->n_groups, sizeof *done);
  if (!done) {
    /* Nothing can run: fail every group, then serve only the refusals. */
    ak_log_write(AK_LOG_ERROR, __func__, "out of memory starting the scheduler thread");
    for (int32_t g = 0; g < s->n_groups; g++) co_svc_group_failed(s, &s->groups[g], "out of memory");
  }
  for (;;) {
    int n_busy = 0;
    for (int32_t g = 0; g < s->n_groups; g++)
      n_busy += s->groups[g].busy != CO_SVC_JOB_NONE || s->groups[g].n_in_flight > 0;
    int stopping = co_svc_take_inbox(s, CO_SVC_IDLE_WAIT_MS, n_busy, done);
    s->loop_stopping = stopping;
    co_svc_reap_cancelled(s, stopping);
    co_svc_health_sweep(s);
    for (int32_t g = 0; g < s->n_groups && done; g++)
      if (done[g]) done[g] = 0, co_svc_job_done(s, &s->groups[g]);
    for (int32_t gi = 0; gi < s->n_groups && done; gi++) {
      /* in step order: the oldest first, and only once it has answered */
      co_svc_group_t *g = &s->groups[gi];
      while (g->n_in_flight > 0 && g->lanes[g->lane_oldest].answered) {
        co_svc_lane_t *l = &g->lanes[g->lane_oldest];
        g->lane_oldest = (g->lane_oldest + 1) % CO_SVC_STEP_DEPTH;
        g->n_in_flight--;
        co_svc_lane_answer(s, g, l);
      }
    }
    for (int32_t g = 0; g < s->n_groups && done; g++) co_svc_group_kick(s, &s->groups[g]);
    co_svc_metric_sched(s); /* after admission */
    n_busy = 0;
    for (int32_t g = 0; g < s->n_groups; g++)
      n_busy += s->groups[g].busy != CO_SVC_JOB_NONE || s->groups[g].n_in_flight > 0;
    /* At shutdown, the jobs out (a Step up to its deadline) end before the threads do. */
    if (stopping && n_busy == 0) break;
  }
  free(done);
  return NULL;
}
