/* wk_service: the internal arkvale.v1.Worker service (proto/arkvale/v1/worker.proto)
 * over one in-process engine (wk_engine.h), served by ak_rpc_server. What the
 * arkvale-worker process is, minus flag parsing and signals (wk_worker_main.c).
 *
 * Threads. The engine and its kvpool have one owning thread; a step is long CPU work,
 * and ak_rpc_server handlers must not block the completion-queue threads. So:
 *
 *   CQ threads:   Info, Health   answered at once from immutable facts and a snapshot
 *                 Warmup, Step,  validated for shape, then queued (FIFO) ------+
 *                 Release                                                      |
 *   engine thread: takes jobs in arrival order, runs them on the engine, <----+
 *                  writes the response, finishes the call, updates the snapshot.
 *
 * A Step that arrives while another runs waits in the queue; Health answers meanwhile.
 * Pipelined decode (worker.proto, ContinuingSequence.feed_sampled_at_step_id): the
 * coordinator sends Step k+1 while Step k runs, and k+1 appends the tokens k sampled
 * here. So a Step goes into the queue ahead of queued Steps with a larger step_id (two
 * calls sent back to back may arrive swapped), and a Step that feeds from a step the
 * engine thread has not begun yet waits up to 100 ms for it before it runs (and fails).
 *
 * Sequences. The coordinator names sequences by a uint64 seq_id; a table maps each to
 * its kv_seq_id_t and its sampler (one per sequence: its PRNG and penalty history).
 * Every token appended to a sequence (prompt chunks, and the sampled tokens the
 * coordinator sends back) is recorded in the sampler's history.
 *
 * Step semantics (worker.proto, StepRequest): step_id must exceed the last one, else
 * the step is refused before anything changes; drop_seq_ids are released first (unknown
 * ids ignored) and stay released even if the rest fails; then the step is validated
 * and run all or nothing: on an error no sequence gained tokens and the step's new
 * sequences do not exist. Status codes (through pb_status):
 *   malformed (no tokens, token id out of range, duplicate seq_id, a KvConfig other
 *   than the Warmup's, more rows than max_batch_tokens, Step before Warmup)
 *                                                            INVALID_ARGUMENT
 *   a step_id not above the last (stale or replayed)         FAILED_PRECONDITION
 *   a continuing seq_id that is not live                     NOT_FOUND, naming the id
 *   past a sequence's max_seq_tokens                         OUT_OF_RANGE
 *   no free KV pages or sequence slots                       RESOURCE_EXHAUSTED
 *   the engine failed (worker-level error)                   its status; the worker is
 *                                                            then FAILED and refuses
 *                                                            Warmup/Step/Release with
 *                                                            UNAVAILABLE
 * worker.proto asks INVALID_ARGUMENT for an unknown seq_id; NOT_FOUND lets the
 * coordinator tell "this worker lost my sequence" from "I sent garbage".
 *
 * Warmup: the pool's policy and budget are fixed when the engine is created (flags of
 * arkvale-worker), so a Warmup asking for another policy or budget is INVALID_ARGUMENT;
 * Warmup with live sequences is refused too (Release them first). It runs one step of
 * max_batch_tokens rows on a scratch sequence to prove the size, then reports capacity.
 *
 * Thread-safety: create/destroy from one thread; wk_service_port and
 * wk_service_queue_depth from any thread. */
#ifndef WK_SERVICE_H
#define WK_SERVICE_H

#include <stddef.h>
#include <stdint.h>

#include "ak_status.h"
#include "kvpool.h"
#include "wk_engine.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct wk_service wk_service_t;

typedef struct {
  wk_engine_params_t engine; /* model, device, threads, page size, max seqs / tokens / batch;
                              * engine.kv_policy is ignored: `kv` below is used */
  kv_pool_params_t kv;       /* KV policy and its knobs (budget_tokens, ...); default full */
  const char *listen_addr;   /* default "127.0.0.1:0" (a free port: wk_service_port) */
  int32_t n_rpc_threads;     /* completion-queue threads (default 2) */
  int32_t device_idx;        /* the N of cuda:N, reported by Info; -1 = none (default) */
  size_t max_request_bytes;  /* per request message (default 4 MiB, gRPC's own limit) */
  /* How long a pipelined Step that overtook its predecessor (previous_step_id, or a
   * feed_sampled_at_step_id) waits for it before it runs (and fails
   * FAILED_PRECONDITION): default 1000 ms, >= 0. */
  int32_t predecessor_wait_ms;
  /* Tests only: called on the engine thread before each queued job runs, so a test can
   * hold the engine busy and watch what the CQ threads do meanwhile. NULL = none. */
  void (*test_before_job)(void *user);
  void *test_user;
} wk_service_params_t;

wk_service_params_t wk_service_params_default(void);

/* Loads the model, creates the engine, starts the engine thread and the server.
 * Errors: the engine's (a missing model: its message), the server's (an address that
 * cannot be bound). `*svc_p` is written only on success. */
ak_status_t wk_service_create(const wk_service_params_t *p, ak_err_t *err, wk_service_t **svc_p);

/* The bound TCP port. */
int wk_service_port(const wk_service_t *svc);

/* Jobs (Warmup, Step, Release) queued and not yet taken by the engine thread. */
int wk_service_queue_depth(wk_service_t *svc);

/* Drains, then frees: new Warmup/Step/Release calls are refused (UNAVAILABLE), the
 * queued and running ones finish and answer, then the server stops (any other open
 * call is cancelled), the engine thread is joined and every sequence, page and the
 * engine are freed. Accepts NULL. */
void wk_service_destroy(wk_service_t *svc);

#ifdef __cplusplus
}
#endif
#endif
