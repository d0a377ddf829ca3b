/* arkvale_remote: `arkvale generate --server HOST:PORT`. Builds one GenerateRequest
 * from the command line's values, opens the server-streaming call with
 * common/ak_rpc_client and writes each message's text delta to stdout as it arrives;
 * the last message's finish reason and usage, and the speed seen here, go to stderr.
 *
 * Not here: tokenization, chat rendering, stop strings (the coordinator's job: the
 * text that arrives is final), retries (a failed call is reported, not repeated). */
#include "arkvale_remote.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ak_rpc_client.h"
#include "arkvale/v1/generation.pb-c.h"
#include "arkvale_cli.h"
#include "kvpool.h"

#define REMOTE_METHOD "/arkvale.v1.Generation/Generate"
#define REMOTE_MAX_RESPONSE_BYTES ((size_t)4 << 20)
#define REMOTE_ID_BYTES 160

/* The canonical name of a gRPC status code, as in grpc/status.h. */
static const char *remote_code_name(grpc_status_code c) {
  static const char *names[] = {"OK",
                                "CANCELLED",
                                "UNKNOWN",
                                "INVALID_ARGUMENT",
                                "DEADLINE_EXCEEDED",
                                "NOT_FOUND",
                                "ALREADY_EXISTS",
                                "PERMISSION_DENIED",
                                "RESOURCE_EXHAUSTED",
                                "FAILED_PRECONDITION",
                                "ABORTED",
                                "OUT_OF_RANGE",
                                "UNIMPLEMENTED",
                                "INTERNAL",
                                "UNAVAILABLE",
                                "DATA_LOSS",
                                "UNAUTHENTICATED"};
  if ((int)c >= 0 && (size_t)c < sizeof names / sizeof names[0]) return names[c];
  return "UNKNOWN_CODE";
}

static const char *remote_finish_name(int has, Arkvale__V1__FinishReason f) {
  if (!has) return "none (the stream ended without a finish reason)";
  switch (f) {
    case ARKVALE__V1__FINISH_REASON__FINISH_REASON_LENGTH: return "length";
    case ARKVALE__V1__FINISH_REASON__FINISH_REASON_EOS: return "eos";
    case ARKVALE__V1__FINISH_REASON__FINISH_REASON_STOP_STRING: return "stop";
    case ARKVALE__V1__FINISH_REASON__FINISH_REASON_CONTEXT_LIMIT: return "context";
    default: return "unspecified";
  }
}

/* kv_policy_t (kvpool.h) -> the wire enum; an explicit list, not an offset. */
static Arkvale__V1__KvPolicy remote_kv_policy(int policy) {
  switch ((kv_policy_t)policy) {
    case KV_POLICY_FULL: return ARKVALE__V1__KV_POLICY__KV_POLICY_FULL;
    case KV_POLICY_ARKVALE: return ARKVALE__V1__KV_POLICY__KV_POLICY_ARKVALE;
    case KV_POLICY_STREAMING: return ARKVALE__V1__KV_POLICY__KV_POLICY_STREAMING;
    case KV_POLICY_H2O: return ARKVALE__V1__KV_POLICY__KV_POLICY_H2O;
    case KV_POLICY_TOVA: return ARKVALE__V1__KV_POLICY__KV_POLICY_TOVA;
    case KV_POLICY_QUEST: return ARKVALE__V1__KV_POLICY__KV_POLICY_QUEST;
  }
  return ARKVALE__V1__KV_POLICY__KV_POLICY_UNSPECIFIED;
}

/* What the stream delivered so far; filled by remote_on_msg on the calling thread. */
typedef struct {
  double t_start_s, t_first_s, t_last_s; /* call start; first and last message with tokens */
  uint64_t n_msgs, n_tokens;             /* messages and token ids received */
  uint64_t n_text_bytes;                 /* bytes written to stdout */
  int has_finish;
  Arkvale__V1__FinishReason finish;
  int has_usage;
  Arkvale__V1__Usage usage;              /* copied scalars only */
  char request_id[REMOTE_ID_BYTES];
  int stdout_failed;                     /* a write to stdout failed: the call was cancelled */
} remote_stream_t;

static int remote_on_msg(void *user, const ProtobufCMessage *m) {
  remote_stream_t *s = user;
  const Arkvale__V1__GenerateResponse *r = (const Arkvale__V1__GenerateResponse *)m;
  double now = ak_cli_now_s();
  s->n_msgs++;
  if (r->n_token_ids > 0) {
    if (s->n_tokens == 0) s->t_first_s = now;
    s->t_last_s = now;
    s->n_tokens += r->n_token_ids;
  }
  if (r->request_id && !s->request_id[0]) snprintf(s->request_id, sizeof s->request_id, "%s", r->request_id);
  if (r->text && r->text[0]) {
    size_t n = strlen(r->text);
    if (fwrite(r->text, 1, n, stdout) != n || fflush(stdout) != 0) {
      s->stdout_failed = 1;
      return 1; /* cancels the call: nobody reads the answer */
    }
    s->n_text_bytes += n;
  }
  if (r->has_finish_reason) s->has_finish = 1, s->finish = r->finish_reason;
  if (r->usage) {
    s->has_usage = 1;
    s->usage = *r->usage;
    s->usage.base.unknown_fields = NULL, s->usage.base.n_unknown_fields = 0; /* not ours to keep */
  }
  return 0;
}

/* The request points into `r` and into the caller's storage below; nothing is heap. */
typedef struct {
  Arkvale__V1__GenerateRequest req;
  Arkvale__V1__Prompt prompt;
  Arkvale__V1__Chat chat;
  Arkvale__V1__ChatMessage msgs[2];
  Arkvale__V1__ChatMessage *msg_ptrs[2];
  Arkvale__V1__SamplingParams sampling;
  Arkvale__V1__StoppingCriteria stopping;
  Arkvale__V1__KvConfig kv;
} remote_request_t;

static void remote_request_build(const ak_cli_remote_t *a, remote_request_t *q) {
  arkvale__v1__generate_request__init(&q->req);
  arkvale__v1__prompt__init(&q->prompt);
  arkvale__v1__chat__init(&q->chat);
  arkvale__v1__sampling_params__init(&q->sampling);
  arkvale__v1__stopping_criteria__init(&q->stopping);
  arkvale__v1__kv_config__init(&q->kv);

  if (a->chat) {
    size_t n = 0;
    for (int i = 0; i < 2; i++) arkvale__v1__chat_message__init(&q->msgs[i]);
    if (a->system) q->msgs[n].role = "system", q->msgs[n].content = (char *)a->system, n++;
    q->msgs[n].role = "user", q->msgs[n].content = (char *)a->prompt, n++;
    for (size_t i = 0; i < n; i++) q->msg_ptrs[i] = &q->msgs[i];
    q->chat.n_messages = n, q->chat.messages = q->msg_ptrs;
    q->chat.has_add_generation_prompt = 1, q->chat.add_generation_prompt = 1;
    q->prompt.kind_case = ARKVALE__V1__PROMPT__KIND_CHAT, q->prompt.chat = &q->chat;
  } else {
    q->prompt.kind_case = ARKVALE__V1__PROMPT__KIND_TEXT, q->prompt.text = (char *)a->prompt;
  }
  q->req.prompt = &q->prompt;

  /* Every sampling field explicitly: the in-process defaults (temperature 0.8, seed
   * 42, ...) then hold remotely too, not the server's. */
  const wk_sampler_params_t *sp = &a->sp;
  q->sampling.has_temperature = 1, q->sampling.temperature = sp->temperature;
  q->sampling.has_top_k = 1, q->sampling.top_k = (uint32_t)sp->top_k;
  q->sampling.has_top_p = 1, q->sampling.top_p = sp->top_p;
  q->sampling.has_min_p = 1, q->sampling.min_p = sp->min_p;
  q->sampling.has_repeat_penalty = 1, q->sampling.repeat_penalty = sp->repetition_penalty;
  q->sampling.has_repeat_last_n = 1, q->sampling.repeat_last_n = (uint32_t)sp->repeat_last_n;
  q->sampling.has_seed = 1, q->sampling.seed = sp->seed;
  q->req.sampling = &q->sampling;

  if (a->n_new_tokens >= 0)
    q->stopping.has_max_new_tokens = 1,
    q->stopping.max_new_tokens = a->n_new_tokens > UINT32_MAX ? UINT32_MAX : (uint32_t)a->n_new_tokens;
  q->stopping.n_stop = (size_t)a->n_stops, q->stopping.stop = (char **)a->stops;
  q->stopping.has_ignore_eos = 1, q->stopping.ignore_eos = a->ignore_eos != 0;
  q->req.stopping = &q->stopping;

  if (a->kv_policy >= 0 || a->kv_budget_tokens >= 0) {
    if (a->kv_policy >= 0) q->kv.has_policy = 1, q->kv.policy = remote_kv_policy(a->kv_policy);
    if (a->kv_budget_tokens >= 0) q->kv.has_budget_tokens = 1, q->kv.budget_tokens = (uint32_t)a->kv_budget_tokens;
    q->req.kv = &q->kv;
  }
}

/* The status text without ak_rpc_client's "METHOD: gRPC status N: " prefix; NULL when
 * the message is not a server status (a failure found on this side). */
static const char *remote_status_text(const char *msg, grpc_status_code code) {
  char prefix[96];
  int n = snprintf(prefix, sizeof prefix, "%s: gRPC status %d: ", REMOTE_METHOD, (int)code);
  if (n <= 0 || (size_t)n >= sizeof prefix || strncmp(msg, prefix, (size_t)n) != 0) return NULL;
  return msg + n;
}

static void remote_report(const ak_cli_remote_t *a, const remote_stream_t *s) {
  double t_end = s->t_last_s > 0 ? s->t_last_s : ak_cli_now_s();
  double gen_s = t_end - s->t_start_s;
  double decode_s = s->t_last_s - s->t_first_s;
  fprintf(stderr, "\n[arkvale] server %s, request %s: ", a->server, s->request_id[0] ? s->request_id : "?");
  if (s->has_usage)
    fprintf(stderr, "prompt %u tokens, first token after %.1f ms (queue %.1f ms); ", s->usage.prompt_tokens,
            (double)s->usage.time_to_first_token_us / 1e3, (double)s->usage.queue_us / 1e3);
  uint64_t n_gen = s->has_usage ? s->usage.completion_tokens : s->n_tokens;
  fprintf(stderr, "generated %llu tokens in %.3f s (%.1f tok/s decode, %.1f tok/s overall); stop: %s\n",
          (unsigned long long)n_gen, gen_s, s->n_tokens > 1 && decode_s > 0 ? (double)(s->n_tokens - 1) / decode_s : 0.0,
          gen_s > 0 ? (double)n_gen / gen_s : 0.0, remote_finish_name(s->has_finish, s->finish));
}

int ak_cli_generate_remote(const ak_cli_remote_t *a) {
  ak_err_t err;
  ak_err_clear(&err);
  ak_rpc_client_t *cli = NULL;
  if (ak_rpc_client_create(a->server, &err, &cli) < 0) {
    fprintf(stderr, "arkvale generate: --server %s: %s\n", a->server, err.msg);
    return 1;
  }
  remote_request_t q;
  remote_request_build(a, &q);
  remote_stream_t s;
  memset(&s, 0, sizeof s);
  s.t_start_s = ak_cli_now_s();
  grpc_status_code code = GRPC_STATUS_OK;
  ak_status_t st = ak_rpc_client_stream(cli, REMOTE_METHOD, &q.req.base, &arkvale__v1__generate_response__descriptor,
                                        REMOTE_MAX_RESPONSE_BYTES, a->timeout_ms, remote_on_msg, &s, &err, &code);
  ak_rpc_client_destroy(cli);
  if (s.n_text_bytes > 0 || st == AK_OK) {
    fputc('\n', stdout); /* as the in-process generate ends its text */
    fflush(stdout);
  }
  if (s.stdout_failed) {
    fprintf(stderr, "arkvale generate: writing to stdout failed; the request was cancelled\n");
    return 1;
  }
  if (st != AK_OK) {
    const char *text = remote_status_text(err.msg, code);
    if (!text) {
      fprintf(stderr, "arkvale generate: %s\n", err.msg);
    } else if (code == GRPC_STATUS_UNAVAILABLE && s.n_msgs == 0) {
      fprintf(stderr, "arkvale generate: server said UNAVAILABLE: %s (is arkvale-coordinator listening at %s?)\n",
              text, a->server);
    } else {
      fprintf(stderr, "arkvale generate: server said %s: %s", remote_code_name(code), text);
      if (s.n_msgs > 0)
        fprintf(stderr, " (after %llu tokens from %s)", (unsigned long long)s.n_tokens, a->server);
      fputc('\n', stderr);
    }
    return 1;
  }
  remote_report(a, &s);
  return 0;
}
