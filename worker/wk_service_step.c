/* wk_service_step: the sequence table, Step and Release, on the engine thread.
 * Semantics and status codes: wk_service.h and worker.proto's StepRequest. */
#include <inttypes.h>
#include <stdio.h>
#include <string.h>

#include "ak_alloc.h"
#include "ak_log.h"
#include "wk_service_internal.h"

/* --- the table: a linear scan over max_seqs slots; a step touches each live
 * sequence once, and max_seqs is small next to a forward pass --- */

static wk_seq_t *wk_svc_seq_find(wk_service_t *s, uint64_t seq_id) {
  for (int32_t i = 0; i < s->kv.max_seqs; i++)
    if (s->seqs[i].live && s->seqs[i].seq_id == seq_id) return &s->seqs[i];
  return NULL;
}

void wk_svc_seq_free(wk_service_t *s, wk_seq_t *sq) {
  /* Release can fail only for an id the pool does not know: a table bug. */
  ak_status_t st = wk_engine_seq_release(s->eng, sq->kv_seq);
  if (st < 0) wk_svc_fail(s, wk_engine_errmsg(s->eng));
  wk_sampler_destroy(sq->sampler);
  memset(sq, 0, sizeof *sq);
}

static void wk_svc_fill_work(Arkvale__V1__KvWork *o, const kv_stats_t *w) {
  arkvale__v1__kv_work__init(o);
  o->has_recalls = 1, o->recalls = w->recalls;
  o->has_evictions = 1, o->evictions = w->evictions;
  o->has_drops = 1, o->drops = w->drops;
  o->has_backups = 1, o->backups = w->backups;
  o->has_bytes_recalled = 1, o->bytes_recalled = w->bytes_recalled;
  o->has_bytes_backed_up = 1, o->bytes_backed_up = w->bytes_backed_up;
}

void wk_svc_fill_counters(wk_service_t *s, int with_step, Arkvale__V1__KvCounters *c, Arkvale__V1__KvWork *step,
                          Arkvale__V1__KvWork *total) {
  kv_pool_stats_t ps;
  kv_pool_get_stats(wk_engine_kvpool(s->eng), &ps);
  arkvale__v1__kv_counters__init(c);
  c->has_n_seqs = 1, c->n_seqs = (uint32_t)ps.n_seqs;
  c->has_n_pages_total = 1, c->n_pages_total = (uint64_t)ps.n_pages_total;
  c->has_n_pages_used = 1, c->n_pages_used = (uint64_t)ps.n_pages_used;
  c->has_n_backups = 1, c->n_backups = (uint64_t)ps.n_backups;
  c->has_backup_bytes = 1, c->backup_bytes = (uint64_t)ps.backup_bytes;
  if (with_step) {
    wk_svc_fill_work(step, &ps.last_step);
    c->step = step;
  }
  wk_svc_fill_work(total, &ps.work);
  c->total = total;
}

/* --- validation: everything a step can get wrong, before anything changes --- */

static ak_status_t wk_svc_check_tokens(wk_service_t *s, const char *what, size_t idx, uint64_t seq_id,
                                       size_t n, const int32_t *ids, ak_err_t *err) {
  if (n == 0)
    return AK_ERR(err, AK_ERR_INVALID_ARG, "%s[%zu] (seq_id %" PRIu64 ") has no token_ids", what, idx, seq_id);
  for (size_t t = 0; t < n; t++)
    if (ids[t] < 0 || ids[t] >= s->hp->n_vocab)
      return AK_ERR(err, AK_ERR_INVALID_ARG, "%s[%zu] (seq_id %" PRIu64 "): token_ids[%zu]=%d outside [0, %d)", what,
                    idx, seq_id, t, ids[t], s->hp->n_vocab);
  return AK_OK;
}

static ak_status_t wk_svc_step_check(wk_service_t *s, const Arkvale__V1__StepRequest *q, int64_t *n_rows_p,
                                     ak_err_t *err) {
  int64_t n_rows = 0, ctx = s->kv.max_seq_tokens;
  int32_t n_live = 0;
  for (int32_t i = 0; i < s->kv.max_seqs; i++) n_live += s->seqs[i].live;
  for (size_t i = 0; i < q->n_new_seqs; i++) {
    const Arkvale__V1__NewSequence *ns = q->new_seqs[i];
    if (!ns->has_seq_id) return AK_ERR(err, AK_ERR_INVALID_ARG, "new_seqs[%zu] has no seq_id", i);
    if (wk_svc_seq_find(s, ns->seq_id))
      return AK_ERR(err, AK_ERR_INVALID_ARG, "new_seqs[%zu]: seq_id %" PRIu64 " is already live", i, ns->seq_id);
    for (size_t j = 0; j < i; j++)
      if (q->new_seqs[j]->seq_id == ns->seq_id)
        return AK_ERR(err, AK_ERR_INVALID_ARG, "new_seqs[%zu]: seq_id %" PRIu64 " appears twice", i, ns->seq_id);
    const Arkvale__V1__KvConfig *kv = ns->kv;
    if (kv && kv->has_policy && kv->policy != ARKVALE__V1__KV_POLICY__KV_POLICY_UNSPECIFIED &&
        (int)kv->policy != (int)s->kv.policy + 1)
      return AK_ERR(err, AK_ERR_INVALID_ARG, "new_seqs[%zu]: kv.policy=%d differs from the Warmup's (%s)", i,
                    (int)kv->policy, kv_policy_name(s->kv.policy));
    if (kv && kv->has_budget_tokens && s->kv.policy != KV_POLICY_FULL &&
        (int64_t)kv->budget_tokens != s->kv.budget_tokens)
      return AK_ERR(err, AK_ERR_INVALID_ARG, "new_seqs[%zu]: kv.budget_tokens=%u differs from the Warmup's (%d)", i,
                    kv->budget_tokens, s->kv.budget_tokens);
    AK_TRY(wk_svc_check_tokens(s, "new_seqs", i, ns->seq_id, ns->n_token_ids, ns->token_ids, err));
    int64_t limit = ns->has_max_seq_tokens ? (int64_t)ns->max_seq_tokens : ctx;
    if (limit < 1 || limit > ctx)
      return AK_ERR(err, AK_ERR_INVALID_ARG, "new_seqs[%zu]: max_seq_tokens=%lld outside [1, %lld]", i,
                    (long long)limit, (long long)ctx);
    if ((int64_t)ns->n_token_ids > limit)
      return AK_ERR(err, AK_ERR_RANGE, "new_seqs[%zu] (seq_id %" PRIu64 "): %zu tokens pass max_seq_tokens=%lld", i,
                    ns->seq_id, ns->n_token_ids, (long long)limit);
    n_rows += (int64_t)ns->n_token_ids;
  }
  for (size_t i = 0; i < q->n_continuing_seqs; i++) {
    const Arkvale__V1__ContinuingSequence *cs = q->continuing_seqs[i];
    if (!cs->has_seq_id) return AK_ERR(err, AK_ERR_INVALID_ARG, "continuing_seqs[%zu] has no seq_id", i);
    const wk_seq_t *sq = wk_svc_seq_find(s, cs->seq_id);
    if (!sq)
      return AK_ERR(err, AK_ERR_NOT_FOUND, "continuing_seqs[%zu]: seq_id %" PRIu64 " is not live on this worker", i,
                    cs->seq_id);
    for (size_t j = 0; j < i; j++)
      if (q->continuing_seqs[j]->seq_id == cs->seq_id)
        return AK_ERR(err, AK_ERR_INVALID_ARG, "continuing_seqs[%zu]: seq_id %" PRIu64 " appears twice", i,
                      cs->seq_id);
    size_t n_toks = cs->n_token_ids;
    if (cs->has_feed_sampled_at_step_id) {
      /* Pipelined decode: the token comes from this rank's own sample (worker.proto). */
      if (cs->n_token_ids)
        return AK_ERR(err, AK_ERR_INVALID_ARG, "continuing_seqs[%zu] (seq_id %" PRIu64 "): token_ids and "
                      "feed_sampled_at_step_id are both set", i, cs->seq_id);
      if (!sq->has_sampled || sq->sampled_step_id != cs->feed_sampled_at_step_id) {
        char last[48] = "none";
        if (sq->has_sampled) snprintf(last, sizeof last, "step %" PRIu64, sq->sampled_step_id);
        return AK_ERR(err, AK_ERR_PRECONDITION, "seq %" PRIu64 ": feed_sampled_at_step_id=%" PRIu64 ": no sampled "
                      "token from that step (its pending sample: %s)", cs->seq_id, cs->feed_sampled_at_step_id, last);
      }
      n_toks = 1;
    } else {
      AK_TRY(wk_svc_check_tokens(s, "continuing_seqs", i, cs->seq_id, cs->n_token_ids, cs->token_ids, err));
    }
    if (sq->n_tokens + (int64_t)n_toks > sq->max_tokens)
      return AK_ERR(err, AK_ERR_RANGE, "continuing_seqs[%zu] (seq_id %" PRIu64 "): %lld + %zu tokens pass "
                    "max_seq_tokens=%lld", i, cs->seq_id, (long long)sq->n_tokens, n_toks,
                    (long long)sq->max_tokens);
    n_rows += (int64_t)n_toks;
  }
  if (n_rows > s->warm_max_batch_tokens)
    return AK_ERR(err, AK_ERR_INVALID_ARG, "%lld token rows pass max_batch_tokens=%d", (long long)n_rows,
                  s->warm_max_batch_tokens);
  if (n_live + (int64_t)q->n_new_seqs > s->kv.max_seqs)
    return AK_ERR(err, AK_ERR_POOL_FULL, "%d live + %zu new sequences pass max_seqs=%d", n_live, q->n_new_seqs,
                  s->kv.max_seqs);
  *n_rows_p = n_rows;
  return AK_OK;
}

/* The sampler parameters of a NewSequence; absent fields are the server's defaults,
 * an absent seed a fresh one. Out-of-range values are refused by wk_sampler_create. */
static wk_sampler_params_t wk_svc_sampling(wk_service_t *s, const Arkvale__V1__SamplingParams *m) {
  wk_sampler_params_t p = wk_sampler_params_default();
  p.seed = s->seed_next += 0x9E3779B97F4A7C15ull;
  if (!m) return p;
  if (m->has_temperature) p.temperature = m->temperature;
  if (m->has_top_k) p.top_k = m->top_k > INT32_MAX ? INT32_MAX : (int32_t)m->top_k;
  if (m->has_top_p) p.top_p = m->top_p;
  if (m->has_min_p) p.min_p = m->min_p;
  if (m->has_repeat_penalty) p.repetition_penalty = m->repeat_penalty;
  if (m->has_repeat_last_n) p.repeat_last_n = m->repeat_last_n > INT32_MAX ? INT32_MAX : (int32_t)m->repeat_last_n;
  if (m->has_seed) p.seed = m->seed;
  return p;
}

/* --- the step --- */

typedef struct {
  Arkvale__V1__StepResponse r;
  Arkvale__V1__StepTimings t;
  Arkvale__V1__KvCounters kv;
  Arkvale__V1__KvWork kv_step, kv_total;
  Arkvale__V1__SampledToken *samples;   /* [n_seqs] */
  Arkvale__V1__SampledToken **sample_p; /* [n_seqs] */
} wk_step_out_t;

/* 1 when the step's i-th sequence (new ones first) asks for a sample. */
static int wk_svc_samples(const Arkvale__V1__StepRequest *q, int32_t n_new, int32_t i) {
  return i < n_new ? q->new_seqs[i]->sample : q->continuing_seqs[i - n_new]->sample;
}

/* The device-sampling request for the step's batch (s->dev_req), built from each
 * sequence's sampler so that the device draws under the same parameters and penalty
 * window as wk_sampler_sample would after this step's wk_sampler_accept calls: the
 * window is the sampler's history followed by the step's tokens, its last
 * repeat_last_n. Rows that do not sample are greedy and read nothing. The seed is the
 * sampler's, the step the sequence's length after this step (one draw per length).
 * Returns 0 when some sampling sequence's window exceeds what the device takes: the
 * step then samples on the host. */
static int wk_svc_device_request(wk_service_t *s, const Arkvale__V1__StepRequest *q, int32_t n_new, int32_t n_seqs) {
  int64_t row = 0;
  for (int32_t i = 0; i < n_seqs; i++) {
    wk_cuda_sample_seq_t *r = &s->dev_req[i];
    *r = wk_cuda_sample_seq_greedy(); /* rows that do not sample read nothing */
    const int32_t *step_tokens = s->tokens + row, n_step = s->batch_n[i];
    row += n_step;
    int smp = wk_svc_samples(q, n_new, i);
    if (!smp) continue;
    const wk_seq_t *sq = &s->seqs[s->batch_slot[i]];
    if (!wk_cuda_sample_request(sq->sampler, s->hp->n_vocab, step_tokens, n_step, (uint64_t)(sq->n_tokens + n_step),
                                s->dev_hist + (int64_t)i * WK_CUDA_SAMPLE_MAX_HISTORY_IDS, r))
      return 0;
  }
  return 1;
}

/* Runs a validated step; fills `o` on success. On failure the step's new sequences are
 * gone and no sequence gained tokens. */
static ak_status_t wk_svc_step_run(wk_service_t *s, const Arkvale__V1__StepRequest *q, int64_t n_rows,
                                   ak_err_t *err, wk_step_out_t *o) {
  int32_t n_new = (int32_t)q->n_new_seqs, n_seqs = n_new + (int32_t)q->n_continuing_seqs;
  int32_t n_vocab = s->hp->n_vocab;
  ak_status_t st = AK_OK;
  double t0 = wk_svc_now_us();

  /* Admit: a pool sequence and a sampler for each new one, into free slots. */
  int32_t n_made = 0, slot = 0;
  for (; n_made < n_new; n_made++) {
    const Arkvale__V1__NewSequence *ns = q->new_seqs[n_made];
    while (s->seqs[slot].live) slot++; /* max_seqs was checked: a free slot exists */
    wk_seq_t *sq = &s->seqs[slot];
    wk_sampler_params_t sp = wk_svc_sampling(s, ns->sampling);
    ak_err_t serr;
    ak_err_clear(&serr);
    st = wk_sampler_create(&sp, n_vocab, &serr, &sq->sampler);
    if (st < 0) {
      AK_ERR(err, st, "new_seqs[%d] (seq_id %" PRIu64 ") sampling: %s", n_made, ns->seq_id, serr.msg);
      break;
    }
    st = wk_engine_seq_create(s->eng, &sq->kv_seq);
    if (st < 0) {
      AK_ERR(err, st, "new_seqs[%d] (seq_id %" PRIu64 "): %s", n_made, ns->seq_id, wk_engine_errmsg(s->eng));
      wk_sampler_destroy(sq->sampler), sq->sampler = NULL;
      break;
    }
    sq->live = 1, sq->seq_id = ns->seq_id, sq->n_tokens = 0;
    sq->max_tokens = ns->has_max_seq_tokens ? (int64_t)ns->max_seq_tokens : s->kv.max_seq_tokens;
    s->batch_slot[n_made] = slot;
  }
  if (st < 0) goto err_unadmit;

  /* The batch: new sequences, then continuing ones, in the request's order. */
  int any_sample = 0;
  int64_t row = 0;
  for (int32_t i = 0; i < n_seqs; i++) {
    const int32_t *ids;
    size_t n;
    if (i < n_new) {
      ids = q->new_seqs[i]->token_ids, n = q->new_seqs[i]->n_token_ids;
      any_sample |= q->new_seqs[i]->sample;
    } else {
      const Arkvale__V1__ContinuingSequence *cs = q->continuing_seqs[i - n_new];
      s->batch_slot[i] = (int32_t)(wk_svc_seq_find(s, cs->seq_id) - s->seqs);
      ids = cs->token_ids, n = cs->n_token_ids;
      if (cs->has_feed_sampled_at_step_id) ids = &s->seqs[s->batch_slot[i]].sampled_token, n = 1; /* checked */
      any_sample |= cs->sample;
    }
    s->batch_seqs[i] = s->seqs[s->batch_slot[i]].kv_seq;
    s->batch_n[i] = (int32_t)n;
    memcpy(s->tokens + row, ids, n * sizeof *ids);
    row += (int64_t)n;
  }
  o->t.has_admit_us = 1, o->t.admit_us = wk_svc_now_us() - t0;

  double t1 = wk_svc_now_us();
  /* On CUDA the step samples on the device and only ids come back, unless a request is
   * past the device's caps (wk_cuda_sample_request, decided before the step): then the
   * logits come back and the host samples. */
  int on_device = 0;
  if (n_seqs > 0) {
    wk_forward_batch_t b = {.seqs = {.n_seqs = n_seqs, .seqs = s->batch_seqs, .n_new_tokens = s->batch_n},
                            .tokens = s->tokens, .logits_all = 0, .logits = any_sample ? s->logits : NULL};
    on_device = any_sample && s->dev_req && wk_svc_device_request(s, q, n_new, n_seqs);
    if (on_device) {
      wk_cuda_sample_t req = {.seqs = s->dev_req, .token_ids = s->dev_ids, .logprobs = s->dev_logprobs};
      b.logits = NULL;
      st = wk_engine_step_sampled(s->eng, &b, &req);
    } else {
      st = wk_engine_step(s->eng, &b);
    }
    if (st < 0) {
      AK_ERR(err, st, "step %" PRIu64 ": %s", q->step_id, wk_engine_errmsg(s->eng));
      goto err_unadmit;
    }
  }
  o->t.has_forward_us = 1, o->t.forward_us = wk_svc_now_us() - t1;

  /* The tokens are in: record them in each sampler's history, bring prompts that just
   * ended down to their budget (as wk_engine_prefill does, so pages free at once). */
  row = 0;
  for (int32_t i = 0; i < n_seqs; i++) {
    wk_seq_t *sq = &s->seqs[s->batch_slot[i]];
    int smp = wk_svc_samples(q, n_new, i);
    for (int32_t t = 0; t < s->batch_n[i]; t++) (void)wk_sampler_accept(sq->sampler, s->tokens[row + t]);
    row += s->batch_n[i];
    sq->n_tokens += s->batch_n[i];
    if (smp && s->batch_n[i] > 1) {
      st = kv_seq_compact(wk_engine_kvpool(s->eng), sq->kv_seq);
      if (st < 0) return AK_ERR(err, st, "compacting seq_id %" PRIu64 ": %s", sq->seq_id,
                                kv_pool_errmsg(wk_engine_kvpool(s->eng)));
    }
  }

  /* Rank 0 samples, one row of logits per step sequence. */
  double t2 = wk_svc_now_us();
  size_t n_out = 0;
  for (int32_t i = 0; i < n_seqs; i++) {
    const int smp = wk_svc_samples(q, n_new, i);
    const int want_lp = i < n_new ? q->new_seqs[i]->return_logprob : q->continuing_seqs[i - n_new]->return_logprob;
    wk_seq_t *sq = &s->seqs[s->batch_slot[i]];
    sq->has_sampled = 0; /* its pending sample (if any) was appended or superseded */
    if (!smp) continue;
    Arkvale__V1__SampledToken *tk = &o->samples[n_out];
    arkvale__v1__sampled_token__init(tk);
    float lp = 0;
    if (on_device) /* the sampler's history still got this step's tokens above */
      tk->token_id = s->dev_ids[i], lp = s->dev_logprobs[i], st = AK_OK;
    else
      st = wk_sampler_sample(sq->sampler, s->logits + (int64_t)i * n_vocab, &tk->token_id, want_lp ? &lp : NULL);
    if (st < 0)
      return AK_ERR(err, AK_ERR_INTERNAL, "sampling seq_id %" PRIu64 ": %s", sq->seq_id,
                    wk_sampler_last_error(sq->sampler));
    tk->has_seq_id = 1, tk->seq_id = sq->seq_id, tk->has_token_id = 1;
    if (want_lp) tk->has_logprob = 1, tk->logprob = lp;
    sq->has_sampled = 1, sq->sampled_step_id = q->step_id, sq->sampled_token = tk->token_id;
    o->sample_p[n_out++] = tk;
  }
  o->r.n_samples = n_out, o->r.samples = o->sample_p;
  if (n_out > 0) o->r.has_sampled_on_device = 1, o->r.sampled_on_device = on_device;
  o->t.has_sample_us = 1, o->t.sample_us = wk_svc_now_us() - t2;
  o->t.has_n_tokens = 1, o->t.n_tokens = (uint32_t)n_rows;
  return AK_OK;

err_unadmit:
  for (int32_t i = 0; i < n_made; i++) wk_svc_seq_free(s, &s->seqs[s->batch_slot[i]]);
  return st;
}

void wk_svc_run_step(wk_service_t *s, const Arkvale__V1__StepRequest *q, ak_rpc_writer_t *w, double arrival_us) {
  ak_err_t err;
  ak_err_clear(&err);
  ak_status_t st = AK_OK;
  wk_step_out_t o;
  memset(&o, 0, sizeof o);
  size_t n_cap = q->n_new_seqs + q->n_continuing_seqs + 1;

  int has_last;
  uint64_t last;
  pthread_mutex_lock(&s->mu);
  has_last = s->has_last_step_id, last = s->last_step_id;
  pthread_mutex_unlock(&s->mu);
  /* A stale or replayed step is refused before anything changes, drops included. */
  if (!s->warm_max_batch_tokens) {
    st = AK_ERR(&err, AK_ERR_INVALID_ARG, "Step before Warmup");
    goto finish;
  }
  if (!q->has_step_id) {
    st = AK_ERR(&err, AK_ERR_INVALID_ARG, "step_id is missing");
    goto finish;
  }
  if (has_last && q->step_id <= last) {
    st = AK_ERR(&err, AK_ERR_PRECONDITION, "step_id %" PRIu64 " is not above the last one (%" PRIu64 ")", q->step_id,
                last);
    goto finish;
  }

  /* Drops first; they stay done whatever happens next (worker.proto). */
  for (size_t i = 0; i < q->n_drop_seq_ids; i++) {
    wk_seq_t *sq = wk_svc_seq_find(s, q->drop_seq_ids[i]);
    if (sq) wk_svc_seq_free(s, sq);
  }

  int64_t n_rows = 0;
  st = wk_svc_step_check(s, q, &n_rows, &err);
  if (st < 0) goto finish;
  o.samples = ak_host_alloc(sizeof *o.samples * n_cap, 1);
  o.sample_p = ak_host_alloc(sizeof *o.sample_p * n_cap, 1);
  if (!o.samples || !o.sample_p) {
    st = AK_ERR(&err, AK_ERR_NO_MEMORY, "step %" PRIu64 ": %zu samples", q->step_id, n_cap);
    goto finish;
  }
  arkvale__v1__step_response__init(&o.r);
  arkvale__v1__step_timings__init(&o.t);
  st = wk_svc_step_run(s, q, n_rows, &err, &o);
  if (st < 0) {
    if (st <= AK_ERR_NO_MEMORY && st > AK_ERR_PEER) wk_svc_fail(s, err.msg);
    goto finish;
  }
  kv_pool_stats_t ps;
  kv_pool_get_stats(wk_engine_kvpool(s->eng), &ps);
  o.t.has_estimate_us = 1, o.t.estimate_us = ps.last_step.estimate_us;
  o.t.has_select_us = 1, o.t.select_us = ps.last_step.select_us;
  o.t.has_recall_us = 1, o.t.recall_us = ps.last_step.recall_us;
  wk_svc_fill_counters(s, 1, &o.kv, &o.kv_step, &o.kv_total);
  if (q->n_new_seqs + q->n_continuing_seqs == 0) {
    /* A drops-only step ran no forward: the pool's last_step is an earlier step's. */
    o.t.estimate_us = o.t.select_us = o.t.recall_us = 0;
    kv_stats_t none;
    memset(&none, 0, sizeof none);
    wk_svc_fill_work(&o.kv_step, &none);
  }
  o.r.has_step_id = 1, o.r.step_id = q->step_id;
  o.r.timings = &o.t, o.r.kv = &o.kv;
  o.t.has_total_us = 1, o.t.total_us = wk_svc_now_us() - arrival_us;
  wk_svc_publish(s, 1, q->step_id);
  st = ak_rpc_writer_write(w, &o.r.base, &err);

finish:
  if (st < 0) wk_svc_publish(s, 0, 0); /* drops may have changed n_seqs */
  if (o.samples) ak_host_free(o.samples, sizeof *o.samples * n_cap);
  if (o.sample_p) ak_host_free(o.sample_p, sizeof *o.sample_p * n_cap);
  ak_rpc_writer_finish(w, st, err.msg);
}

void wk_svc_run_release(wk_service_t *s, const Arkvale__V1__ReleaseRequest *q, ak_rpc_writer_t *w) {
  ak_err_t err;
  ak_err_clear(&err);
  uint32_t n = 0;
  for (int32_t i = 0; i < s->kv.max_seqs; i++) {
    wk_seq_t *sq = &s->seqs[i];
    if (!sq->live) continue;
    int hit = q->has_all && q->all;
    for (size_t j = 0; !hit && j < q->n_seq_ids; j++) hit = q->seq_ids[j] == sq->seq_id;
    if (hit) wk_svc_seq_free(s, sq), n++;
  }
  Arkvale__V1__ReleaseResponse r = ARKVALE__V1__RELEASE_RESPONSE__INIT;
  Arkvale__V1__KvCounters c;
  Arkvale__V1__KvWork total;
  r.has_n_released = 1, r.n_released = n;
  wk_svc_fill_counters(s, 0, &c, NULL, &total);
  r.kv = &c;
  wk_svc_publish(s, 0, 0);
  ak_status_t st = ak_rpc_writer_write(w, &r.base, &err);
  ak_rpc_writer_finish(w, st, err.msg);
}
