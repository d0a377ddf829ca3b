/* co_service.c: create (tokenizer, the groups' Info + Warmup on every rank, scheduler, server), the
 * Generation handlers that answer on the CQ threads, and Generate's validation and
 * tokenization before a request is posted to the scheduler thread (co_service_loop.c).
 * Every INVALID_ARGUMENT message starts with the field's path in the request. */
#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include "ak_time.h"
#include "ak_gguf.h"
#include "ak_log.h"
#include "co_chat.h"
#include "co_service_internal.h"
#include "pb_buf.h"

#define CO_SVC_METHOD(name) "/arkvale.v1.Generation/" name
#define CO_SVC_SHUTDOWN_GRACE_MS 2000 /* destroy: open calls' time to end before cancel */
#define CO_SVC_PROBE_MIN_MS 1000      /* a revive's Health probe: max(canary period, this) */

co_service_params_t co_service_params_default(void) {
  co_service_params_t p;
  memset(&p, 0, sizeof p);
  p.listen_addr = "127.0.0.1:0";
  p.n_rpc_threads = 2;
  p.max_queue = 64;
  p.max_new_tokens = 4096;
  p.default_max_new_tokens = 256;
  p.max_batch_tokens = 512;
  p.step_deadline_ms = 60000;
  p.canary_period_ms = 5000;
  return p;
}

int64_t co_svc_now_us(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

/* --- validation helpers --- */

/* The byte offset of the first ill-formed UTF-8 sequence, or -1 when well formed
 * (no overlongs, surrogates or code points above U+10FFFF). */
static int64_t co_svc_utf8_bad_at(const char *s, size_t n) {
  const unsigned char *b = (const unsigned char *)s;
  size_t i = 0;
  while (i < n) {
    unsigned c = b[i];
    size_t len;
    unsigned lo = 0x80, hi = 0xBF;
    if (c < 0x80) { i++; continue; }
    if (c >= 0xC2 && c <= 0xDF) len = 2;
    else if (c >= 0xE0 && c <= 0xEF) {
      len = 3;
      if (c == 0xE0) lo = 0xA0;
      if (c == 0xED) hi = 0x9F;
    } else if (c >= 0xF0 && c <= 0xF4) {
      len = 4;
      if (c == 0xF0) lo = 0x90;
      if (c == 0xF4) hi = 0x8F;
    } else return (int64_t)i;
    if (i + len > n) return (int64_t)i;
    if (b[i + 1] < lo || b[i + 1] > hi) return (int64_t)i;
    for (size_t k = 2; k < len; k++)
      if (b[i + k] < 0x80 || b[i + k] > 0xBF) return (int64_t)i;
    i += len;
  }
  return -1;
}

static ak_status_t co_svc_check_utf8(const char *field, const char *s, ak_err_t *err) {
  int64_t at = co_svc_utf8_bad_at(s, strlen(s));
  if (at >= 0) return ak_err_set(err, AK_ERR_INVALID_ARG, "%s: not valid UTF-8 at byte %" PRId64, field, at);
  return AK_OK;
}

/* Tokenizes text into a new array (*ids_p, malloc'd). */
static ak_status_t co_svc_encode(const co_service_t *s, const char *field, const char *text, int add_bos,
                                 int parse_special, ak_err_t *err, int32_t **ids_p, int64_t *n_p) {
  size_t n_bytes = strlen(text);
  int64_t cap = (int64_t)n_bytes + 4, n = 0;
  int32_t *ids = malloc((size_t)cap * sizeof *ids);
  if (!ids) return ak_err_set(err, AK_ERR_NO_MEMORY, "%s: out of memory", field);
  ak_err_t e;
  ak_status_t st = co_tokenizer_encode(s->tok, text, n_bytes, add_bos, parse_special, ids, cap, &n, &e);
  if (st == AK_ERR_RANGE) {
    int32_t *bigger = realloc(ids, (size_t)n * sizeof *ids);
    if (!bigger) {
      free(ids);
      return ak_err_set(err, AK_ERR_NO_MEMORY, "%s: out of memory", field);
    }
    ids = bigger, cap = n;
    st = co_tokenizer_encode(s->tok, text, n_bytes, add_bos, parse_special, ids, cap, &n, &e);
  }
  if (st != AK_OK) {
    free(ids);
    return ak_err_set(err, st, "%s: %s", field, e.msg);
  }
  *ids_p = ids, *n_p = n;
  return AK_OK;
}

/* A Prompt (any form) to token ids, as Generate and CountTokens charge it. */
static ak_status_t co_svc_prompt_ids(const co_service_t *s, const Arkvale__V1__Prompt *pr, ak_err_t *err,
                                     int32_t **ids_p, int64_t *n_p) {
  if (!pr) return ak_err_set(err, AK_ERR_INVALID_ARG, "prompt: required");
  switch (pr->kind_case) {
    case ARKVALE__V1__PROMPT__KIND_TEXT:
      AK_TRY(co_svc_check_utf8("prompt.text", pr->text, err));
      return co_svc_encode(s, "prompt.text", pr->text, 1, 1, err, ids_p, n_p);
    case ARKVALE__V1__PROMPT__KIND_TOKEN_IDS: {
      const Arkvale__V1__TokenIds *t = pr->token_ids;
      if (!t || t->n_ids == 0) return ak_err_set(err, AK_ERR_INVALID_ARG, "prompt.token_ids.ids: empty");
      for (size_t i = 0; i < t->n_ids; i++)
        if (t->ids[i] < 0 || t->ids[i] >= s->n_vocab)
          return ak_err_set(err, AK_ERR_INVALID_ARG, "prompt.token_ids.ids[%zu]: %d is outside [0, %d)", i,
                            t->ids[i], s->n_vocab);
      int32_t *ids = malloc(t->n_ids * sizeof *ids);
      if (!ids) return ak_err_set(err, AK_ERR_NO_MEMORY, "prompt.token_ids: out of memory");
      memcpy(ids, t->ids, t->n_ids * sizeof *ids);
      *ids_p = ids, *n_p = (int64_t)t->n_ids;
      return AK_OK;
    }
    case ARKVALE__V1__PROMPT__KIND_CHAT: {
      const Arkvale__V1__Chat *c = pr->chat;
      if (!c || c->n_messages == 0) return ak_err_set(err, AK_ERR_INVALID_ARG, "prompt.chat.messages: empty");
      co_chat_msg_t *msgs = calloc(c->n_messages, sizeof *msgs);
      if (!msgs) return ak_err_set(err, AK_ERR_NO_MEMORY, "prompt.chat: out of memory");
      char field[96];
      ak_status_t st = AK_OK;
      for (size_t i = 0; i < c->n_messages && st == AK_OK; i++) {
        const Arkvale__V1__ChatMessage *m = c->messages[i];
        snprintf(field, sizeof field, "prompt.chat.messages[%zu].role", i);
        if (!m->role) st = ak_err_set(err, AK_ERR_INVALID_ARG, "%s: required", field);
        else if (strcmp(m->role, "system") && strcmp(m->role, "user") && strcmp(m->role, "assistant"))
          st = ak_err_set(err, AK_ERR_INVALID_ARG, "%s: \"%.32s\" is not system, user or assistant", field, m->role);
        if (st != AK_OK) break;
        snprintf(field, sizeof field, "prompt.chat.messages[%zu].content", i);
        if (!m->content) st = ak_err_set(err, AK_ERR_INVALID_ARG, "%s: required", field);
        else if ((st = co_svc_check_utf8(field, m->content, err)) != AK_OK) break;
        else if (strstr(m->content, "<|im_start|>") || strstr(m->content, "<|im_end|>"))
          st = ak_err_set(err, AK_ERR_INVALID_ARG, "%s: contains a chat template marker", field);
        msgs[i].role = m->role, msgs[i].content = m->content;
      }
      int add_gen = c->has_add_generation_prompt ? c->add_generation_prompt : 1;
      size_t n_bytes = 0;
      char *text = NULL;
      if (st == AK_OK) {
        ak_err_t e;
        char probe[1];
        co_chat_apply(msgs, (int64_t)c->n_messages, add_gen, probe, sizeof probe, &n_bytes, &e);
        text = malloc(n_bytes + 1);
        if (!text) st = ak_err_set(err, AK_ERR_NO_MEMORY, "prompt.chat: out of memory");
        else if ((st = co_chat_apply(msgs, (int64_t)c->n_messages, add_gen, text, n_bytes + 1, &n_bytes, &e)) !=
                 AK_OK)
          ak_err_set(err, st, "prompt.chat: %s", e.msg);
      }
      if (st == AK_OK) st = co_svc_encode(s, "prompt.chat", text, 1, 1, err, ids_p, n_p);
      free(text);
      free(msgs);
      return st;
    }
    default:
      return ak_err_set(err, AK_ERR_INVALID_ARG, "prompt: exactly one of text, token_ids, chat must be set");
  }
}

static ak_status_t co_svc_check_sampling(const Arkvale__V1__SamplingParams *sp, ak_err_t *err) {
  if (!sp) return AK_OK;
  if (sp->has_temperature && (!isfinite(sp->temperature) || sp->temperature < 0))
    return ak_err_set(err, AK_ERR_INVALID_ARG, "sampling.temperature: %g is not a finite value >= 0",
                      (double)sp->temperature);
  if (sp->has_top_p && !(sp->top_p > 0 && sp->top_p <= 1))
    return ak_err_set(err, AK_ERR_INVALID_ARG, "sampling.top_p: %g is outside (0, 1]", (double)sp->top_p);
  if (sp->has_min_p && !(sp->min_p >= 0 && sp->min_p < 1))
    return ak_err_set(err, AK_ERR_INVALID_ARG, "sampling.min_p: %g is outside [0, 1)", (double)sp->min_p);
  if (sp->has_repeat_penalty && !(isfinite(sp->repeat_penalty) && sp->repeat_penalty > 0))
    return ak_err_set(err, AK_ERR_INVALID_ARG, "sampling.repeat_penalty: %g is not a finite value > 0",
                      (double)sp->repeat_penalty);
  return AK_OK;
}

static void co_svc_req_free(co_svc_req_t *r) {
  if (!r) return;
  co_stop_destroy(r->stop);
  co_detok_destroy(r->detok);
  free(r->prompt);
  free(r);
}

/* Validates and tokenizes a Generate request into a new co_svc_req_t. */
static ak_status_t co_svc_req_build(co_service_t *s, const Arkvale__V1__GenerateRequest *q, ak_err_t *err,
                                    co_svc_req_t **r_p) {
  if (q->request_id) {
    size_t n = strlen(q->request_id);
    if (n == 0 || n >= CO_SVC_REQUEST_ID_BYTES)
      return ak_err_set(err, AK_ERR_INVALID_ARG, "request_id: %zu bytes, must be 1..128", n);
    for (size_t i = 0; i < n; i++)
      if (q->request_id[i] < 0x20 || q->request_id[i] > 0x7e)
        return ak_err_set(err, AK_ERR_INVALID_ARG, "request_id: byte %zu is not printable ASCII", i);
  }
  AK_TRY(co_svc_check_sampling(q->sampling, err));
  const Arkvale__V1__StoppingCriteria *sc = q->stopping;
  int32_t max_new = s->p.default_max_new_tokens;
  if (sc && sc->has_max_new_tokens) {
    if (sc->max_new_tokens < 1 || sc->max_new_tokens > (uint32_t)s->max_new_limit)
      return ak_err_set(err, AK_ERR_INVALID_ARG, "stopping.max_new_tokens: %u is outside [1, %d]",
                        sc->max_new_tokens, s->max_new_limit);
    max_new = (int32_t)sc->max_new_tokens;
  }
  if (sc && sc->n_stop > CO_STOP_MAX_STRINGS)
    return ak_err_set(err, AK_ERR_INVALID_ARG, "stopping.stop: %zu strings, at most %d", sc->n_stop,
                      CO_STOP_MAX_STRINGS);
  for (size_t i = 0; sc && i < sc->n_stop; i++) {
    size_t n = strlen(sc->stop[i]);
    if (n < 1 || n > CO_STOP_MAX_BYTES)
      return ak_err_set(err, AK_ERR_INVALID_ARG, "stopping.stop[%zu]: %zu bytes, must be 1..%d", i, n,
                        CO_STOP_MAX_BYTES);
    char field[48];
    snprintf(field, sizeof field, "stopping.stop[%zu]", i);
    AK_TRY(co_svc_check_utf8(field, sc->stop[i], err));
  }
  if (q->kv) {
    if (q->kv->has_policy && q->kv->policy != ARKVALE__V1__KV_POLICY__KV_POLICY_UNSPECIFIED &&
        q->kv->policy != s->policy)
      return ak_err_set(err, AK_ERR_INVALID_ARG, "kv.policy: %d is not served (only %d)", (int)q->kv->policy,
                        (int)s->policy);
    if (q->kv->has_budget_tokens && s->policy != ARKVALE__V1__KV_POLICY__KV_POLICY_FULL)
      return ak_err_set(err, AK_ERR_INVALID_ARG, "kv.budget_tokens: only the worker's budget is served");
  }
  int32_t *ids = NULL;
  int64_t n_ids = 0;
  AK_TRY(co_svc_prompt_ids(s, q->prompt, err, &ids, &n_ids));
  if (n_ids < 1 || n_ids >= s->context_tokens) {
    free(ids);
    return ak_err_set(err, AK_ERR_INVALID_ARG, "prompt: %" PRId64 " tokens, must be 1..%d", n_ids,
                      s->context_tokens - 1);
  }
  if (max_new > s->context_tokens - n_ids) max_new = (int32_t)(s->context_tokens - n_ids);
  co_svc_req_t *r = calloc(1, sizeof *r);
  if (!r) {
    free(ids);
    return ak_err_set(err, AK_ERR_NO_MEMORY, "out of memory");
  }
  r->prompt = ids, r->n_prompt = (int32_t)n_ids, r->max_new = max_new;
  if (q->sampling) r->sampling = *q->sampling, r->has_sampling = 1;
  r->ignore_eos = sc && sc->has_ignore_eos && sc->ignore_eos;
  r->return_logprobs = q->has_return_logprobs && q->return_logprobs;
  r->arrival_us = co_svc_now_us();
  atomic_init(&r->abort_requested, 0);
  ak_status_t st = co_detok_create(s->tok, err, &r->detok);
  if (st == AK_OK && sc && sc->n_stop > 0)
    st = co_stop_create((const char *const *)sc->stop, (int)sc->n_stop, err, &r->stop);
  if (st != AK_OK) {
    co_svc_req_free(r);
    return st;
  }
  *r_p = r;
  return AK_OK;
}

void co_svc_req_end(co_service_t *s, co_svc_req_t *r, ak_status_t st, const char *msg) {
  pthread_mutex_lock(&s->mu);
  for (co_svc_req_t **pp = &s->live; *pp; pp = &(*pp)->live_next)
    if (*pp == r) {
      *pp = r->live_next;
      break;
    }
  if (s->draining && !s->live) pthread_cond_broadcast(&s->drained_cv);
  pthread_mutex_unlock(&s->mu);
  co_svc_metric_end(s, st);
  ak_rpc_writer_finish(r->w, st, msg);
  co_svc_req_free(r);
}

/* --- handlers (CQ threads) --- */

static void co_svc_on_generate(void *user, const ProtobufCMessage *req, ak_rpc_writer_t *w) {
  co_service_t *s = user;
  const Arkvale__V1__GenerateRequest *q = (const Arkvale__V1__GenerateRequest *)req;
  ak_err_t err;
  ak_err_clear(&err);
  co_svc_req_t *r = NULL;
  ak_status_t st = co_svc_req_build(s, q, &err, &r);
  if (st != AK_OK) {
    co_svc_metric_end(s, st);
    ak_rpc_writer_finish(w, st, err.msg);
    return;
  }
  r->w = w;
  pthread_mutex_lock(&s->mu);
  r->id = ++s->next_id;
  if (q->request_id) snprintf(r->request_id, sizeof r->request_id, "%s", q->request_id);
  else snprintf(r->request_id, sizeof r->request_id, "req-%" PRId64, r->id);
  for (co_svc_req_t *o = s->live; o && st == AK_OK; o = o->live_next)
    if (!strcmp(o->request_id, r->request_id))
      st = ak_err_set(&err, AK_ERR_EXISTS, "request_id: \"%s\" is already running", r->request_id);
  if (st == AK_OK && (s->stopping || s->draining))
    st = ak_err_set(&err, AK_ERR_PEER, "the coordinator is %s", s->stopping ? "shutting down" : "draining");
  if (st == AK_OK) {
    r->live_next = s->live, s->live = r;
    if (s->inbox_tail) s->inbox_tail->next = r;
    else s->inbox_head = r;
    s->inbox_tail = r;
    pthread_cond_signal(&s->cv);
  }
  pthread_mutex_unlock(&s->mu);
  if (st != AK_OK) {
    co_svc_metric_end(s, st);
    ak_rpc_writer_finish(w, st, err.msg);
    co_svc_req_free(r);
  }
}

static void co_svc_on_abort(void *user, const ProtobufCMessage *req, ak_rpc_writer_t *w) {
  co_service_t *s = user;
  const Arkvale__V1__AbortRequest *q = (const Arkvale__V1__AbortRequest *)req;
  Arkvale__V1__AbortResponse r = ARKVALE__V1__ABORT_RESPONSE__INIT;
  r.has_found = 1;
  if (!q->request_id) {
    ak_rpc_writer_finish(w, AK_ERR_INVALID_ARG, "request_id: required");
    return;
  }
  pthread_mutex_lock(&s->mu);
  for (co_svc_req_t *o = s->live; o; o = o->live_next)
    if (!strcmp(o->request_id, q->request_id)) {
      atomic_store(&o->abort_requested, 1);
      r.found = 1;
    }
  pthread_cond_signal(&s->cv);
  pthread_mutex_unlock(&s->mu);
  ak_err_t err;
  ak_status_t st = ak_rpc_writer_write(w, &r.base, &err);
  ak_rpc_writer_finish(w, st, st == AK_OK ? NULL : err.msg);
}

static void co_svc_on_count(void *user, const ProtobufCMessage *req, ak_rpc_writer_t *w) {
  co_service_t *s = user;
  const Arkvale__V1__CountTokensRequest *q = (const Arkvale__V1__CountTokensRequest *)req;
  ak_err_t err;
  ak_err_clear(&err);
  int32_t *ids = NULL;
  int64_t n = 0;
  ak_status_t st = co_svc_prompt_ids(s, q->prompt, &err, &ids, &n);
  free(ids);
  if (st == AK_OK) {
    Arkvale__V1__CountTokensResponse r = ARKVALE__V1__COUNT_TOKENS_RESPONSE__INIT;
    r.has_n_tokens = 1, r.n_tokens = (uint32_t)n;
    st = ak_rpc_writer_write(w, &r.base, &err);
  }
  ak_rpc_writer_finish(w, st, st == AK_OK ? NULL : err.msg);
}

static void co_svc_on_tokenize(void *user, const ProtobufCMessage *req, ak_rpc_writer_t *w) {
  co_service_t *s = user;
  const Arkvale__V1__TokenizeRequest *q = (const Arkvale__V1__TokenizeRequest *)req;
  ak_err_t err;
  ak_err_clear(&err);
  const char *text = q->text ? q->text : "";
  int add_bos = q->has_add_special_tokens ? q->add_special_tokens : 1;
  int32_t *ids = NULL;
  int64_t n = 0;
  ak_status_t st = co_svc_check_utf8("text", text, &err);
  if (st == AK_OK) st = co_svc_encode(s, "text", text, add_bos, 1, &err, &ids, &n);
  if (st == AK_OK) {
    Arkvale__V1__TokenizeResponse r = ARKVALE__V1__TOKENIZE_RESPONSE__INIT;
    r.n_token_ids = (size_t)n, r.token_ids = ids;
    st = ak_rpc_writer_write(w, &r.base, &err);
  }
  free(ids);
  ak_rpc_writer_finish(w, st, st == AK_OK ? NULL : err.msg);
}

static void co_svc_on_model_info(void *user, const ProtobufCMessage *req, ak_rpc_writer_t *w) {
  co_service_t *s = user;
  (void)req;
  Arkvale__V1__GetModelInfoResponse r = ARKVALE__V1__GET_MODEL_INFO_RESPONSE__INIT;
  Arkvale__V1__KvConfig kv = ARKVALE__V1__KV_CONFIG__INIT;
  Arkvale__V1__KvPolicy pol = s->policy;
  r.model_id = s->model_id;
  r.has_n_vocab = 1, r.n_vocab = (uint32_t)s->n_vocab;
  r.has_context_tokens = 1, r.context_tokens = (uint32_t)s->context_tokens;
  r.has_max_prompt_tokens = 1, r.max_prompt_tokens = (uint32_t)(s->context_tokens - 1);
  r.has_max_new_tokens = 1, r.max_new_tokens = (uint32_t)s->max_new_limit;
  r.has_page_tokens = 1, r.page_tokens = (uint32_t)s->page_tokens;
  kv.has_policy = 1, kv.policy = pol;
  r.default_kv = &kv;
  r.n_allowed_policies = 1, r.allowed_policies = &pol;
  ak_err_t err;
  ak_status_t st = ak_rpc_writer_write(w, &r.base, &err);
  ak_rpc_writer_finish(w, st, st == AK_OK ? NULL : err.msg);
}

/* --- create / destroy --- */

/* Info's checks for one rank's answer: the first time it sets the model facts; later
 * (another rank, a revive) the worker must serve the same model shape. */
static ak_status_t co_svc_info_check(co_service_t *s, const co_svc_rank_t *r, const Arkvale__V1__InfoResponse *info,
                                     ak_err_t *err) {
  if (info->protocol_revision != 3 || info->n_layers < 1 || info->page_tokens < 1 || info->context_tokens < 2 ||
      info->n_vocab < 1 || info->n_supported_policies < 1)
    /* revision 3: pipelined decode (ContinuingSequence.feed_sampled_at_step_id, and
     * StepRequest.previous_step_id so overtaking Steps wait for their predecessor) */
    return ak_err_set(err, AK_ERR_UNSUPPORTED, "worker %s: Info revision %u (3 needed) / layers %u / page %u / context %u",
                      r->addr, info->protocol_revision, info->n_layers, info->page_tokens, info->context_tokens);
  if ((int64_t)info->n_vocab != co_tokenizer_n_vocab(s->tok))
    return ak_err_set(err, AK_ERR_UNSUPPORTED, "worker %s: n_vocab %u, the tokenizer has %" PRId64, r->addr,
                      info->n_vocab, co_tokenizer_n_vocab(s->tok));
  if (s->n_layers && ((int32_t)info->n_layers != s->n_layers || (int32_t)info->page_tokens != s->page_tokens ||
                      (int32_t)info->context_tokens != s->context_tokens ||
                      info->supported_policies[0] != s->policy))
    return ak_err_set(err, AK_ERR_UNSUPPORTED,
                      "worker %s has layers %u / page %u / context %u / policy %d, not %d / %d / %d / %d as the "
                      "first worker",
                      r->addr, info->n_layers, info->page_tokens, info->context_tokens,
                      (int)info->supported_policies[0], s->n_layers, s->page_tokens, s->context_tokens,
                      (int)s->policy);
  if (!s->n_layers) {
    snprintf(s->model_id, sizeof s->model_id, "%s", info->model_id ? info->model_id : "");
    s->n_vocab = (int32_t)info->n_vocab, s->n_layers = (int32_t)info->n_layers;
    s->context_tokens = (int32_t)info->context_tokens, s->page_tokens = (int32_t)info->page_tokens;
    s->policy = info->supported_policies[0];
  }
  return AK_OK;
}

/* One call to every rank of g; on success every rank's resp is set (the caller frees
 * them with co_svc_group_free_resps). */
static ak_status_t co_svc_group_call_within(co_service_t *s, co_svc_group_t *g, const char *method,
                                            const ProtobufCMessage *req, const ProtobufCMessageDescriptor *d,
                                            int64_t deadline_ms, ak_err_t *err) {
  co_svc_fan_call(s, g, method, req, d, deadline_ms);
  ak_status_t st = co_svc_group_status(g, err);
  if (st != AK_OK) co_svc_group_free_resps(g);
  return st;
}

static ak_status_t co_svc_group_call(co_service_t *s, co_svc_group_t *g, const char *method,
                                     const ProtobufCMessage *req, const ProtobufCMessageDescriptor *d,
                                     ak_err_t *err) {
  return co_svc_group_call_within(s, g, method, req, d, s->p.step_deadline_ms, err);
}

ak_status_t co_svc_worker_probe(co_service_t *s, co_svc_group_t *g, ak_err_t *err) {
  int64_t deadline_ms = s->p.canary_period_ms > CO_SVC_PROBE_MIN_MS ? s->p.canary_period_ms : CO_SVC_PROBE_MIN_MS;
  if (deadline_ms > s->p.step_deadline_ms) deadline_ms = s->p.step_deadline_ms;
  Arkvale__V1__HealthRequest q = ARKVALE__V1__HEALTH_REQUEST__INIT;
  AK_TRY(co_svc_group_call_within(s, g, "/arkvale.v1.Worker/Health", &q.base, &arkvale__v1__health_response__descriptor,
                                  deadline_ms, err));
  co_svc_group_free_resps(g);
  return AK_OK;
}

ak_status_t co_svc_worker_warmup(co_service_t *s, co_svc_group_t *g, ak_err_t *err, int64_t *cap_pages_p) {
  Arkvale__V1__InfoRequest iq = ARKVALE__V1__INFO_REQUEST__INIT;
  AK_TRY(co_svc_group_call(s, g, "/arkvale.v1.Worker/Info", &iq.base, &arkvale__v1__info_response__descriptor, err));
  ak_status_t st = AK_OK;
  for (int32_t k = 0; k < g->n_ranks && st == AK_OK; k++)
    st = co_svc_info_check(s, &g->ranks[k], (const Arkvale__V1__InfoResponse *)g->ranks[k].resp, err);
  co_svc_group_free_resps(g);
  if (st != AK_OK) return st;
  Arkvale__V1__WarmupRequest wq = ARKVALE__V1__WARMUP_REQUEST__INIT;
  wq.has_max_batch_tokens = 1, wq.max_batch_tokens = (uint32_t)s->p.max_batch_tokens;
  AK_TRY(co_svc_group_call(s, g, "/arkvale.v1.Worker/Warmup", &wq.base, &arkvale__v1__warmup_response__descriptor,
                           err));
  /* The group holds what its smallest rank holds. */
  int64_t cap = INT64_MAX;
  int32_t max_seqs = INT32_MAX, batch = INT32_MAX;
  for (int32_t k = 0; k < g->n_ranks; k++) {
    const Arkvale__V1__WarmupResponse *wr = (const Arkvale__V1__WarmupResponse *)g->ranks[k].resp;
    int32_t ms = wr->max_seqs > 0 ? (int32_t)wr->max_seqs : 1;
    if ((int64_t)wr->capacity_pages < cap) cap = (int64_t)wr->capacity_pages;
    if (ms < max_seqs) max_seqs = ms;
    if ((int32_t)wr->max_batch_tokens < batch) batch = (int32_t)wr->max_batch_tokens;
  }
  co_svc_group_free_resps(g);
  co_kv_shape_t shape = {s->n_layers, 0, s->page_tokens};
  /* The canary: one prompt token and one sampled one, alone in its own Step. */
  g->canary_pages = co_kv_seq_pages_peak(&shape, 0, 1, 1);
  g->canary_reserved = max_seqs >= 2 && cap > g->canary_pages;
  if (g->canary_reserved) cap -= g->canary_pages, max_seqs--;
  if (max_seqs > batch - 2) max_seqs = batch - 2;
  if (max_seqs < 1 || cap < 1)
    return ak_err_set(err, AK_ERR_UNSUPPORTED, "worker group %d (%s): Warmup gave %d batch tokens, %" PRId64 " pages",
                      g->idx, g->ranks[0].addr, batch, cap);
  *cap_pages_p = cap;
  g->max_seqs = max_seqs;
  g->batch_tokens = batch;
  return AK_OK;
}

ak_status_t co_svc_worker_release(co_service_t *s, co_svc_group_t *g, const uint64_t *ids, size_t n, int all,
                                  ak_err_t *err) {
  Arkvale__V1__ReleaseRequest q = ARKVALE__V1__RELEASE_REQUEST__INIT;
  q.n_seq_ids = n, q.seq_ids = (uint64_t *)ids;
  if (all) q.has_all = 1, q.all = 1;
  AK_TRY(co_svc_group_call(s, g, "/arkvale.v1.Worker/Release", &q.base, &arkvale__v1__release_response__descriptor,
                           err));
  for (int32_t k = 0; k < g->n_ranks; k++)
    co_svc_metric_kv(s, &g->ranks[k], ((const Arkvale__V1__ReleaseResponse *)g->ranks[k].resp)->kv);
  co_svc_group_free_resps(g);
  return AK_OK;
}

static ak_status_t co_svc_connect_workers(co_service_t *s, ak_err_t *err) {
  int64_t *caps = calloc((size_t)s->n_groups, sizeof *caps);
  if (!caps) return ak_err_set(err, AK_ERR_NO_MEMORY, "co_service_create: out of memory");
  int32_t *seqs = calloc((size_t)s->n_groups, sizeof *seqs);
  int32_t *batches = calloc((size_t)s->n_groups, sizeof *batches);
  ak_status_t st = seqs && batches ? AK_OK : ak_err_set(err, AK_ERR_NO_MEMORY, "co_service_create: out of memory");
  /* Each group gets its own slots and step size; co_sched's tables are sized for the
   * largest (a revived group gets at most that many, co_svc_revive_done). */
  int32_t max_seqs = 1, batch = 3;
  for (int32_t g = 0; g < s->n_groups && st == AK_OK; g++) {
    st = co_svc_worker_warmup(s, &s->groups[g], err, &caps[g]);
    if (st != AK_OK) break;
    seqs[g] = s->groups[g].max_seqs, batches[g] = s->groups[g].batch_tokens;
    if (seqs[g] > max_seqs) max_seqs = seqs[g];
    if (batches[g] > batch) batch = batches[g];
  }
  if (st == AK_OK) {
    co_sched_params_t sp = co_sched_params_default();
    sp.shape.n_layers = s->n_layers, sp.shape.n_full_layers = 0, sp.shape.page_tokens = s->page_tokens;
    sp.n_groups = s->n_groups, sp.group_capacity_pages = caps;
    sp.max_running_seqs = max_seqs;
    sp.max_batch_tokens = batch;
    sp.group_max_running_seqs = seqs;
    sp.group_max_batch_tokens = batches;
    s->sched_max_seqs = max_seqs;
    sp.max_queue = s->p.max_queue;
    sp.max_seq_tokens = s->context_tokens;
    st = co_sched_create(&sp, err, &s->sched);
  }
  free(caps);
  free(seqs);
  free(batches);
  return st;
}

/* Copies the group list (or worker_addr as one group of one rank) into s->groups,
 * checking it. */
static ak_status_t co_svc_groups_copy(co_service_t *s, const co_service_params_t *p, ak_err_t *err) {
  co_service_group_t one;
  const char *one_addr[1] = {p->worker_addr};
  const co_service_group_t *gs = p->groups;
  int32_t n = p->n_groups;
  if (n == 0) {
    if (!p->worker_addr)
      return ak_err_set(err, AK_ERR_INVALID_ARG, "co_service_create: worker_addr or groups is required");
    one.rank_addrs = one_addr, one.n_ranks = 1;
    gs = &one, n = 1;
  }
  if (n < 0 || n > CO_SERVICE_MAX_GROUPS || !gs)
    return ak_err_set(err, AK_ERR_INVALID_ARG, "co_service_create: n_groups %d is outside 1..%d", n,
                      CO_SERVICE_MAX_GROUPS);
  s->groups = calloc((size_t)n, sizeof *s->groups);
  if (!s->groups) return ak_err_set(err, AK_ERR_NO_MEMORY, "co_service_create: out of memory");
  s->n_groups = n;
  for (int32_t g = 0; g < n; g++) {
    co_svc_group_t *grp = &s->groups[g];
    grp->idx = g;
    if (gs[g].n_ranks < 1 || gs[g].n_ranks > CO_SERVICE_MAX_RANKS || !gs[g].rank_addrs)
      return ak_err_set(err, AK_ERR_INVALID_ARG, "co_service_create: groups[%d]: %d ranks, must be 1..%d", g,
                        gs[g].n_ranks, CO_SERVICE_MAX_RANKS);
    grp->ranks = calloc((size_t)gs[g].n_ranks, sizeof *grp->ranks);
    if (!grp->ranks) return ak_err_set(err, AK_ERR_NO_MEMORY, "co_service_create: out of memory");
    grp->n_ranks = gs[g].n_ranks;
    for (int32_t k = 0; k < grp->n_ranks; k++) {
      const char *a = gs[g].rank_addrs[k];
      if (!a || !*a || strlen(a) >= sizeof grp->ranks[k].addr)
        return ak_err_set(err, AK_ERR_INVALID_ARG, "co_service_create: groups[%d].rank_addrs[%d]: empty or over %zu bytes",
                          g, k, sizeof grp->ranks[k].addr - 1);
      for (int32_t g2 = 0; g2 <= g; g2++)
        for (int32_t k2 = 0; k2 < (g2 == g ? k : s->groups[g2].n_ranks); k2++)
          if (!strcmp(s->groups[g2].ranks[k2].addr, a))
            return ak_err_set(err, AK_ERR_INVALID_ARG,
                              "co_service_create: groups[%d].rank_addrs[%d]: %s is already groups[%d] rank %d", g, k,
                              a, g2, k2);
      snprintf(grp->ranks[k].addr, sizeof grp->ranks[k].addr, "%s", a);
    }
  }
  return AK_OK;
}

static void co_svc_groups_free(co_service_t *s) {
  for (int32_t g = 0; s->groups && g < s->n_groups; g++) free(s->groups[g].ranks);
  free(s->groups);
  s->groups = NULL;
}

/* The last of create's unwinding and of destroy: the metrics it owns, the groups, the
 * locks, the struct. */
static void co_svc_free(co_service_t *s) {
  if (s->own_metrics) co_metrics_destroy(s->metrics);
  co_svc_groups_free(s);
  pthread_cond_destroy(&s->watchdog_cv);
  pthread_cond_destroy(&s->drained_cv);
  pthread_cond_destroy(&s->cv);
  pthread_mutex_destroy(&s->mu);
  free(s);
}

ak_status_t co_service_create(const co_service_params_t *p, ak_err_t *err, co_service_t **svc_p) {
  if (!p || !p->model_path || !svc_p)
    return ak_err_set(err, AK_ERR_INVALID_ARG, "co_service_create: model_path is required");
  if (p->max_new_tokens < 1 || p->default_max_new_tokens < 1 || p->max_batch_tokens < 3 || p->max_queue < 1 ||
      p->n_rpc_threads < 1 || p->canary_period_ms < 1)
    return ak_err_set(err, AK_ERR_INVALID_ARG, "co_service_create: a limit below its minimum");
  co_service_t *s = calloc(1, sizeof *s);
  if (!s) return ak_err_set(err, AK_ERR_NO_MEMORY, "co_service_create: out of memory");
  s->p = *p;
  if (!s->p.listen_addr) s->p.listen_addr = "127.0.0.1:0";
  if (strlen(s->p.listen_addr) >= sizeof s->listen_addr) {
    free(s);
    return ak_err_set(err, AK_ERR_INVALID_ARG, "co_service_create: a listen address longer than %zu bytes",
                      sizeof s->listen_addr - 1);
  }
  ak_status_t st = co_svc_groups_copy(s, p, err);
  if (st != AK_OK) {
    co_svc_groups_free(s);
    free(s);
    return st;
  }
  /* The caller's strings need not outlive create: logs and metric labels use these. */
  snprintf(s->worker_addr, sizeof s->worker_addr, "%s", s->groups[0].ranks[0].addr);
  snprintf(s->listen_addr, sizeof s->listen_addr, "%s", s->p.listen_addr);
  s->p.worker_addr = s->worker_addr, s->p.listen_addr = s->listen_addr;
  s->p.groups = NULL; /* s->groups holds the copy */
  s->p.model_path = NULL; /* read at create only */
  atomic_init(&s->metrics_warned, 0);
  pthread_mutex_init(&s->mu, NULL);
  pthread_cond_init(&s->cv, NULL);
  pthread_cond_init(&s->drained_cv, NULL);
  pthread_cond_init(&s->watchdog_cv, NULL);
  atomic_init(&s->n_canaries, 0);
  s->stale_us = (p->health_stale_ms > 0 ? p->health_stale_ms
                                        : (3 * p->canary_period_ms > 10000 ? 3 * p->canary_period_ms : 10000)) *
                1000;
  ak_gguf_t *g = NULL;
  st = co_svc_metrics_init(s, err);
  if (st != AK_OK) goto err_free;
  st = ak_gguf_open(p->model_path, err, &g);
  if (st != AK_OK) goto err_free;
  st = co_tokenizer_create_from_gguf(g, err, &s->tok);
  ak_gguf_close(g);
  if (st != AK_OK) goto err_free;
  if ((st = co_svc_ranks_start(s, err)) != AK_OK) goto err_free_tok;
  if ((st = co_svc_connect_workers(s, err)) != AK_OK) goto err_stop_ranks;
  s->max_new_limit = p->max_new_tokens < s->context_tokens - 1 ? p->max_new_tokens : s->context_tokens - 1;
  if (s->p.default_max_new_tokens > s->max_new_limit) s->p.default_max_new_tokens = s->max_new_limit;

  if ((st = ak_rpc_server_create(s->p.listen_addr, p->n_rpc_threads, err, &s->srv)) != AK_OK) goto err_free_sched;
  s->port = ak_rpc_server_port(s->srv);
  const ak_rpc_method_t methods[] = {
      {CO_SVC_METHOD("Generate"), AK_RPC_SERVER_STREAMING, &arkvale__v1__generate_request__descriptor,
       CO_SVC_MAX_MSG_BYTES, CO_SVC_MAX_MSG_BYTES, co_svc_on_generate, s},
      {CO_SVC_METHOD("Abort"), AK_RPC_UNARY, &arkvale__v1__abort_request__descriptor, CO_SVC_MAX_MSG_BYTES,
       CO_SVC_MAX_MSG_BYTES, co_svc_on_abort, s},
      {CO_SVC_METHOD("CountTokens"), AK_RPC_UNARY, &arkvale__v1__count_tokens_request__descriptor,
       CO_SVC_MAX_MSG_BYTES, CO_SVC_MAX_MSG_BYTES, co_svc_on_count, s},
      {CO_SVC_METHOD("Tokenize"), AK_RPC_UNARY, &arkvale__v1__tokenize_request__descriptor, CO_SVC_MAX_MSG_BYTES,
       CO_SVC_MAX_MSG_BYTES, co_svc_on_tokenize, s},
      {CO_SVC_METHOD("GetModelInfo"), AK_RPC_UNARY, &arkvale__v1__get_model_info_request__descriptor,
       CO_SVC_MAX_MSG_BYTES, CO_SVC_MAX_MSG_BYTES, co_svc_on_model_info, s},
  };
  for (size_t i = 0; i < sizeof methods / sizeof methods[0]; i++)
    if ((st = ak_rpc_server_register(s->srv, &methods[i], err)) != AK_OK) goto err_free_server;
  if ((st = co_svc_health_register(s, err)) != AK_OK) goto err_free_server;
  if (pthread_create(&s->thread, NULL, co_svc_loop, s) != 0) {
    st = ak_err_set(err, AK_ERR_INTERNAL, "co_service_create: cannot start the scheduler thread");
    goto err_free_server;
  }
  s->thread_started = 1;
  if (pthread_create(&s->watchdog, NULL, co_svc_health_watchdog, s) != 0) {
    st = ak_err_set(err, AK_ERR_INTERNAL, "co_service_create: cannot start the health watchdog thread");
    goto err_stop_thread;
  }
  s->watchdog_started = 1;
  if ((st = ak_rpc_server_start(s->srv, err)) != AK_OK) goto err_stop_thread;
  *svc_p = s;
  return AK_OK;

err_stop_thread:
  pthread_mutex_lock(&s->mu);
  s->stopping = 1;
  co_svc_health_shutdown_locked(s);
  pthread_cond_signal(&s->cv);
  pthread_cond_signal(&s->watchdog_cv);
  pthread_mutex_unlock(&s->mu);
  pthread_join(s->thread, NULL);
  if (s->watchdog_started) pthread_join(s->watchdog, NULL);
err_free_server:
  ak_rpc_server_destroy(s->srv);
err_free_sched:
  co_sched_destroy(s->sched);
err_stop_ranks:
  co_svc_ranks_stop(s);
err_free_tok:
  co_tokenizer_destroy(s->tok);
err_free:
  co_svc_free(s);
  return st;
}

int co_service_port(const co_service_t *svc) { return svc->port; }

co_metrics_t *co_service_metrics(const co_service_t *svc) { return svc->metrics; }

ak_status_t co_service_drain(co_service_t *s, int64_t timeout_ms, ak_err_t *err, int32_t *n_left_p) {
  co_svc_health_drain(s);
  struct timespec ts = ak_time_realtime_after_ms(timeout_ms);
  pthread_mutex_lock(&s->mu);
  while (s->live && pthread_cond_timedwait(&s->drained_cv, &s->mu, &ts) == 0) {
  }
  int32_t n_left = 0;
  for (co_svc_req_t *r = s->live; r; r = r->live_next) n_left++;
  pthread_mutex_unlock(&s->mu);
  if (n_left_p) *n_left_p = n_left;
  if (n_left > 0)
    return ak_err_set(err, AK_ERR_TIMEOUT, "co_service_drain: %d requests still open after %" PRId64 " ms", n_left,
                      timeout_ms);
  return AK_OK;
}

void co_service_destroy(co_service_t *s) {
  if (!s) return;
  /* The loop ends every request when it sees stopping; then the server cancels what
   * is still open, so the loop sees cancelled writers and ends their requests; destroy
   * returns once every handler's call has finished, which needs the scheduler thread
   * still running. Watch calls are ended here: nothing else would finish them. */
  pthread_mutex_lock(&s->mu);
  s->stopping = 1;
  co_svc_health_shutdown_locked(s);
  pthread_cond_signal(&s->cv);
  pthread_cond_signal(&s->watchdog_cv);
  pthread_mutex_unlock(&s->mu);
  if (s->watchdog_started) pthread_join(s->watchdog, NULL);
  /* The loop ends every request UNAVAILABLE at its next turn; let those statuses (and
   * the last messages of streams a drain let finish) reach their clients before the
   * server cancels what is left. */
  ak_err_t err;
  if (s->thread_started && ak_rpc_server_shutdown(s->srv, CO_SVC_SHUTDOWN_GRACE_MS, &err) != AK_OK)
    ak_log_write(AK_LOG_WARN, __func__, "coordinator port %d: %s: cancelling them", s->port, err.msg);
  ak_rpc_server_destroy(s->srv);
  if (s->thread_started) pthread_join(s->thread, NULL);
  co_sched_destroy(s->sched);
  co_svc_ranks_stop(s);
  co_tokenizer_destroy(s->tok);
  co_svc_free(s);
}
