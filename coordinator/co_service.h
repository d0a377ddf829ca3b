/* co_service: the public arkvale.v1.Generation service (proto/arkvale/v1/
 * generation.proto) over ONE worker group of one rank. A first cut of
 * arkvale-coordinator, minus flag parsing, health and metrics.
 *
 * At create: loads the tokenizer from the model's GGUF, connects to the worker, calls
 * Info and Warmup, sizes a co_sched from the worker's answer, starts one scheduler
 * thread and the server.
 *
 * Threads:
 *   CQ threads:        GetModelInfo, Tokenize, CountTokens, Abort answered at once;
 *                      Generate validated (INVALID_ARGUMENT names the field) and
 *                      tokenized, then posted to the scheduler's inbox
 *   scheduler thread:  owns co_sched and every running request. Loop: submit the inbox
 *                      (a full queue: RESOURCE_EXHAUSTED), abort what was cancelled
 *                      (Abort, or the writer cancelled), co_sched_plan_step, one
 *                      Worker.Step (blocking unary), co_sched_step_done, then per
 *                      sampled token: detokenize, stop strings, EOS, max_new_tokens,
 *                      write a GenerateResponse; a finished stream ends with its usage
 *                      and finish reason. Drops without a batch go out as Release.
 *
 * Status codes beyond validation: an aborted stream ends CANCELLED, a request_id
 * already running is ALREADY_EXISTS, shutdown and a dead group are UNAVAILABLE.
 *
 * Departures from generation.proto to settle: only the worker's one policy at its
 * Warmup budget is served (a
 * request's kv must be absent or name it), client deadlines are seen only as
 * cancellation, a failed Step fails every running request (UNAVAILABLE) and the group
 * stays dead.
 *
 * Thread-safety: create/destroy from one thread; co_service_port from any. */
#ifndef CO_SERVICE_H
#define CO_SERVICE_H
#include <stdint.h>
#include "ak_status.h"
#ifdef __cplusplus
extern "C" {
#endif

typedef struct co_service co_service_t;

typedef struct {
  const char *model_path;          /* the GGUF the worker serves (tokenizer); required */
  const char *worker_addr;         /* "host:port" of rank 0 of the group; required */
  const char *listen_addr;         /* default "127.0.0.1:0" (a free port: co_service_port) */
  int32_t n_rpc_threads;           /* completion-queue threads (default 2) */
  int32_t max_queue;               /* waiting requests before RESOURCE_EXHAUSTED (default 64) */
  int32_t max_new_tokens;          /* largest stopping.max_new_tokens accepted (default 4096,
                                    * capped by the worker's context) */
  int32_t default_max_new_tokens;  /* when a request gives none (default 256) */
  int32_t max_batch_tokens;        /* tokens per Step asked of Warmup (default 512) */
  int64_t step_deadline_ms;        /* per Worker call (default 60000) */
} co_service_params_t;

co_service_params_t co_service_params_default(void);

/* Errors: the tokenizer's (a missing model), the worker's (Info / Warmup failing:
 * AK_ERR_PEER when it cannot be reached), the server's (an address that cannot be
 * bound). `*svc_p` is written only on success. */
ak_status_t co_service_create(const co_service_params_t *p, ak_err_t *err, co_service_t **svc_p);

/* The bound TCP port. */
int co_service_port(const co_service_t *svc);

/* Stops the server (open streams are cancelled), ends every request, joins the
 * scheduler thread and frees everything. Sequences left on the worker are released
 * best-effort. Accepts NULL. */
void co_service_destroy(co_service_t *svc);

#ifdef __cplusplus
}
#endif
#endif
