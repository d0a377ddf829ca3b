/* co_service: the public arkvale.v1.Generation service (proto/arkvale/v1/
 * generation.proto) over N data-parallel worker groups of R ranks each. The core of
 * arkvale-coordinator, minus flag parsing and the metrics' HTTP port; with the
 * standard grpc.health.v1.Health service and the metrics families.
 *
 * At create: loads the tokenizer from the model's GGUF, connects to every rank of
 * every group, calls Info and Warmup on each (every rank must serve the same model
 * shape; a group's capacity, sequence slots and batch tokens are the minimum over its
 * ranks), sizes a co_sched of n_groups groups (each with its own slots and batch
 * tokens; a revived group brings its new ones, up to the largest at create), starts
 * one scheduler thread, a thread per group and the server.
 *
 * Groups and ranks: every Worker call of a group (Step, canary, Release, Info, Warmup)
 * goes to all of its ranks at once, with the same step_id (one counter per group: a
 * worker refuses a step_id not above its last); rank 0's answer drives the requests,
 * every rank's KV counters go to its own metrics. A failure of any rank kills the
 * group: its running requests end UNAVAILABLE (those its workers had not seen yet go
 * back to the queue), the other groups keep serving, and the dead group is revived
 * on its own (every rank: new channel, Release all, Info, Warmup, then a canary).
 * Groups step independently: each group's canary, revive and Release run as jobs on
 * its own thread, its Steps on its own caller threads, so a slow group does not slow
 * the others, and one whose host takes a call and never answers holds only itself
 * until step_deadline_ms.
 * Pipelined decode: a group has two Steps in flight. Step k+1 goes out while Step k
 * runs; its decode tokens are the worker's own samples from Step k
 * (ContinuingSequence.feed_sampled_at_step_id), so the worker's engine never waits for
 * the round trip. When Step k answers, its tokens are detokenized, checked for EOS and
 * stop strings and streamed; a sequence that stopped is already in Step k+1: the token
 * k+1 samples for it is discarded (never streamed) and it is dropped from the next
 * Step planned (co_service_loop.c, top comment).
 *
 * Threads:
 *   CQ threads:        GetModelInfo, Tokenize, CountTokens, Abort answered at once;
 *                      Generate validated (INVALID_ARGUMENT names the field) and
 *                      tokenized, then posted to the scheduler's inbox
 *   scheduler thread:  owns co_sched and every running request; calls no worker.
 *                      Loop, woken by the inbox, a group's job done, or every 20 ms:
 *                      submit the inbox (a full queue: RESOURCE_EXHAUSTED), abort
 *                      what was cancelled (Abort, or the writer cancelled), apply each
 *                      finished job, answer each group's oldest Steps once every rank
 *                      has answered (per sampled token: detokenize, EOS, stop strings,
 *                      write a GenerateResponse; a finished stream ends with its usage
 *                      and finish reason), and keep every group busy: a due revive or
 *                      canary once no Step is in flight, else co_sched_plan_step's
 *                      Steps until two are in flight (each counted done in co_sched as
 *                      planned once posted), or a Release of drops without a batch
 *   group threads:     one per group: runs the posted job (blocking unary calls to
 *                      every rank at once, making rank 0's itself) and reports it done
 *   caller threads:    one per rank past a group's first: each makes the blocking
 *                      call its group's thread hands it (co_service_ranks.c); and for
 *                      Steps, two lanes of one per rank: Step k+1's calls go out while
 *                      Step k's wait
 *
 * Health (grpc.health.v1, proto/grpc/health/v1/health.proto): SERVING while at least
 * one group has passed Warmup and answered a real one-token canary (its own, per group): a new sequence of one
 * token in its own Worker.Step, sampled, then Released. The canary is a job of its
 * group's thread (which runs one job at a time: the worker refuses a step_id not above
 * its last) between steps, with no Step in flight (a due canary holds new Steps back
 * until the two in flight have answered), canary_period_ms after the last one ended,
 * busy or idle (from its end, so a canary slower than the period leaves Steps room); the
 * first at start. A failed Step, canary or
 * Release makes the group dead and the service NOT_SERVING; a dead group is retried
 * every canary_period_ms (a new channel, Release all, Info, Warmup, canary) and comes
 * back SERVING. Check: "" (the server) or "arkvale.v1.Generation"; any other name is
 * NOT_FOUND. Watch streams the status now, then every change, until the client leaves
 * or shutdown (NOT_SERVING, then UNAVAILABLE); an unknown name gets SERVICE_UNKNOWN and
 * stays open, as the standard says. So that a canary always fits, one sequence slot
 * and one page per layer are kept out of what co_sched may admit (when the worker has
 * at least 2 slots; with 1, the canary waits for an empty group).
 * A Step that hangs (up to step_deadline_ms) holds its group's thread and so its
 * canary, not the other groups': a watchdog thread reports NOT_SERVING once no group
 * has answered a Step for health_stale_ms; the next canary that answers brings
 * SERVING back. Shutdown waits for the jobs in flight (a hung Step: its deadline).
 *
 * Metrics (co_metrics; co_service_metrics returns the registry for rendering):
 *   arkvale_requests_total{code}                 Generate calls by final gRPC code
 *   arkvale_queue_depth, arkvale_running_requests  co_sched's, refreshed every loop
 *   arkvale_time_to_first_token_seconds          histogram, from arrival
 *   arkvale_time_per_output_token_seconds        histogram, one per output token after a
 *                                                request's first: the gap since its last
 *   arkvale_generated_tokens_total, arkvale_prompt_tokens_total
 *   arkvale_serving                              1 SERVING, 0 NOT_SERVING
 *   arkvale_worker_kv_pages_resident{worker}     the pool's used pages, after each reply
 *   arkvale_worker_kv_backup_pages{worker}       pages in the backup tier, likewise
 *   arkvale_worker_kv_pages_backed_up_total{worker}, ..._recalled_total{worker}
 *                                                sums of the Steps' kvpool deltas
 *   arkvale_worker_steps_total{worker}           Steps answered (canaries included)
 *   arkvale_worker_canaries_total{worker}        canaries answered
 *   arkvale_worker_device_sampled_steps_total{worker}
 *                                                Generate Steps whose samples rank 0 drew
 *                                                on the device (StepResponse.
 *                                                sampled_on_device: a CUDA worker; a
 *                                                request past the device sampler's caps
 *                                                samples on the host), on rank 0's series
 *   arkvale_health_watchers                      open Watch calls
 *
 * Deadlines: a client's gRPC deadline cancels its call on the server; the request
 * leaves co_sched at the next loop (queued or running), and a running sequence is in
 * the next Step's drops (or a Release when nothing else runs). The client sees
 * DEADLINE_EXCEEDED from gRPC, and the call is finished (and counted) as
 * DEADLINE_EXCEEDED too (ak_rpc_writer_deadline_passed tells it from a cancel).
 *
 * Status codes beyond validation: an aborted stream ends CANCELLED, a request_id
 * already running is ALREADY_EXISTS, shutdown and a dead group are UNAVAILABLE.
 *
 * Departures from generation.proto to settle: only the worker's one policy at its
 * Warmup budget is served (a
 * request's kv must be absent or name it), a failed Step fails every running request
 * of its group (UNAVAILABLE) and the group is dead until its revive succeeds.
 *
 * Thread-safety: create/destroy from one thread; co_service_port, co_service_metrics
 * and co_service_drain from any. */
#ifndef CO_SERVICE_H
#define CO_SERVICE_H
#include <stdint.h>
#include "ak_status.h"
#include "co_metrics.h"
#ifdef __cplusplus
extern "C" {
#endif

typedef struct co_service co_service_t;

#define CO_SERVICE_MAX_GROUPS 64
#define CO_SERVICE_MAX_RANKS 64 /* per group */

/* One data-parallel worker group: its ranks' addresses, rank 0 first (rank 0's Step
 * answer is the one used). Every address is distinct across the service. */
typedef struct {
  const char *const *rank_addrs; /* [n_ranks] "host:port" */
  int32_t n_ranks;               /* 1..CO_SERVICE_MAX_RANKS */
} co_service_group_t;

typedef struct {
  const char *model_path;          /* the GGUF the worker serves (tokenizer); required */
  const char *worker_addr;         /* "host:port": one group of one rank (when n_groups
                                    * is 0); otherwise ignored */
  const co_service_group_t *groups; /* [n_groups] data-parallel groups (copied at create) */
  int32_t n_groups;                /* 0: worker_addr alone; else 1..CO_SERVICE_MAX_GROUPS */
  const char *listen_addr;         /* default "127.0.0.1:0" (a free port: co_service_port) */
  int32_t n_rpc_threads;           /* completion-queue threads (default 2) */
  int32_t max_queue;               /* waiting requests before RESOURCE_EXHAUSTED (default 64) */
  int32_t max_new_tokens;          /* largest stopping.max_new_tokens accepted (default 4096,
                                    * capped by the worker's context) */
  int32_t default_max_new_tokens;  /* when a request gives none (default 256) */
  int32_t max_batch_tokens;        /* tokens per Step asked of Warmup (default 512) */
  int64_t step_deadline_ms;        /* per Worker call (default 60000) */
  int64_t canary_period_ms;        /* health canary, and a dead group's revive tries
                                    * (default 5000; >= 1) */
  int64_t health_stale_ms;         /* NOT_SERVING once the worker has answered no Step
                                    * (canary or batch) for this long, even while a Step
                                    * hangs (a watchdog thread pushes it to Watch); 0
                                    * (default): 3 canary periods, at least 10000 */
  co_metrics_t *metrics;           /* the registry to add the families to (not owned;
                                    * must outlive the service; one service per registry:
                                    * the family names are fixed); NULL: one of its own */
} co_service_params_t;

co_service_params_t co_service_params_default(void);

/* Errors: the tokenizer's (a missing model), a worker's (Info / Warmup of any rank of
 * any group failing: AK_ERR_PEER when it cannot be reached; the message names the
 * rank's address), AK_ERR_INVALID_ARG for a bad group list (none, empty, too many, an
 * address repeated or too long), the server's (an address that cannot be
 * bound). `*svc_p` is written only on success. */
ak_status_t co_service_create(const co_service_params_t *p, ak_err_t *err, co_service_t **svc_p);

/* The bound TCP port. */
int co_service_port(const co_service_t *svc);

/* The metrics registry (params.metrics, or the service's own): render it with
 * co_metrics_render or serve it with co_metrics_http. Valid until destroy. */
co_metrics_t *co_service_metrics(const co_service_t *svc);

/* Graceful stop, first half: from now on a new Generate ends UNAVAILABLE ("draining")
 * and health reports NOT_SERVING (Watch calls are told); requests already queued or
 * running go on to their end. Waits up to timeout_ms (<= 0: no wait) for every one to
 * finish: AK_OK when none is left, AK_ERR_TIMEOUT otherwise, with how many are left in
 * *n_left_p (may be NULL; written on every return). co_service_destroy then ends the
 * rest UNAVAILABLE. The service stays draining: there is no undo. Any thread; may be
 * called again (to wait in slices). */
ak_status_t co_service_drain(co_service_t *svc, int64_t timeout_ms, ak_err_t *err, int32_t *n_left_p);

/* Stops the server: every open request ends UNAVAILABLE ("shutting down"), with up to
 * 2 s for those statuses and a drain's last messages to reach their clients before
 * the remaining calls are cancelled; joins the scheduler thread and frees everything. Sequences left on the worker are released
 * best-effort. Accepts NULL. */
void co_service_destroy(co_service_t *svc);

#ifdef __cplusplus
}
#endif
#endif
