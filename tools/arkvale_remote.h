/* arkvale_remote: `arkvale generate --server HOST:PORT`, the client half of the
 * in-process generate. The same prompt, chat and sampling flags become one
 * arkvale.v1.Generation/Generate request (proto/arkvale/v1/generation.proto) to a
 * running arkvale-coordinator; no model is loaded here. Kept apart from the parser
 * (arkvale_generate.c) so that the request mapping reads in one place. */
#ifndef AK_CLI_REMOTE_H
#define AK_CLI_REMOTE_H

#include <stdint.h>

#include "wk_sampler.h"

typedef struct {
  const char *server;          /* gRPC target of the coordinator ("host:port"); required */
  const char *prompt;          /* raw text, or the user message with chat; required */
  const char *system;          /* chat only: a system message first; NULL = the template's */
  int chat;                    /* send the prompt as Chat turns (the server renders them) */
  int ignore_eos;              /* stopping.ignore_eos */
  int64_t n_new_tokens;        /* stopping.max_new_tokens; < 0 = the server's default */
  wk_sampler_params_t sp;      /* sent field by field (SamplingParams), so a seed and
                                * temperature give the same tokens as in-process */
  const char *const *stops;    /* stopping.stop, n_stops of them */
  int n_stops;
  int kv_policy;               /* kv_policy_t (kvpool.h); < 0 = the server's default */
  int64_t kv_budget_tokens;    /* kv.budget_tokens; < 0 = the server's default */
  int64_t timeout_ms;          /* deadline of the whole stream; 0 = none */
} ak_cli_remote_t;

/* Streams the answer: text deltas to stdout as they arrive (then a newline), the
 * finish reason, usage and speed to stderr. Returns the process exit code: 0, or 1
 * after printing "arkvale generate: server said CODE: message" for a gRPC status
 * (UNAVAILABLE names the address) or the local failure. */
int ak_cli_generate_remote(const ak_cli_remote_t *r);

#endif
