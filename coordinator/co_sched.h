/* co_sched: the coordinator's scheduler core. It decides, step by step, what each
 * worker group runs: which queued requests are admitted where, which sequences a
 * group's next Step feeds (prompt chunks and decode tokens), and which it drops.
 *
 * Plain C over plain structs: no transport, no threads, no clock (the caller passes
 * now_us). Not for: tokenizing, streaming, stop strings, deadlines (the server decides
 * those and calls co_sched_abort or reports `finished`).
 *
 * The server loop, on its one thread:
 *
 *   co_sched_submit(req)               a request enters the queue, or is refused
 *   for each live group that is idle:
 *     co_sched_plan_step(g, now_us)    admits what fits (into any group), then plans g's
 *                                      next Step: drops first, then the batch
 *     ... Step to every rank of g; rank 0 answers ...
 *     co_sched_step_done(g, results)   what was sampled, what finished
 *   co_sched_abort(id)                 cancel, deadline, client gone
 *   co_sched_group_dead(g)             a worker of g crashed: its sequences fail
 *   co_sched_group_revive(g, caps)     it restarted and warmed up again (pages, slots,
 *                                      batch tokens from its new Warmup)
 *
 * Pages. A group's capacity is what its workers' Warmup reported (pages of one layer
 * each, the kvpool's n_pages, minimum over the group's ranks). A sequence is charged
 * a *reservation*: the most pages it can ever hold, so the sum of reservations never
 * exceeding capacity means a Step never meets a full pool. The worker must release
 * a plan's drops before it begins the plan's batch; the reservation of a dropped
 * sequence is free at once in this accounting.
 *
 *   steady(n)   = n_full * pages(n) + (n_layers - n_full) * min(pages(n), budget_pages)
 *                 kvpool's kv_seq_pages_needed (budget 0 = full cache: n_layers * pages(n))
 *   prefill(n)  = n_layers * pages(n): a prompt chunk keeps every page of every layer
 *                 resident ("Prefill is exact", kvpool.h) until the sequence is compacted
 *                 at the end of its prompt or at its first decode step
 *   reservation = max(prefill(P), steady(P + N)) while the prompt is being fed
 *                 (P prompt tokens, N max new tokens), then steady(P + N)
 *
 * P + N counts one token more than the cache ever holds (the last sampled token is
 * never fed back): a page at most per layer of slack, kept for simplicity. Reserving
 * the prefill peak at admission (rather than chunk by chunk) is what rules out two
 * half-prefilled prompts waiting on each other's pages. With a budget, the steady
 * state is what lets many more sequences run than with a full cache: prompts go
 * through their peak a few at a time, then shrink to their budget.
 * Checked against a real pool (tests/coordinator): full and arkvale. steady() equals
 * kv_seq_pages_needed for h2o and tova too (budget_pages = ceil(budget / page)), but
 * their in-step transients are not checked. Not modelled: streaming (kv_select.c
 * spares the page leaving the window until the step ends: one page over budget per
 * budgeted layer during a decode step that opens a page) and quest (saves no memory:
 * submit it with budget 0).
 *
 * Fairness. Requests are considered in submit order (FCFS). A request that does not
 * fit now may be overtaken by later ones that do, but only while it has waited at
 * most max_wait_us (now_us - arrival_us); once a request that does not fit has waited
 * longer, admission stops at it: nothing behind it is admitted until it is (strict
 * head-of-line). Its wait is then bounded by the running sequences' lengths. A
 * request that fits no group's capacity even when empty (after a revive with fewer
 * pages) never blocks others; it waits for its deadline's abort.
 *
 * Routing. An admitted request goes to the live group with the most free pages
 * (capacity - reservations) among those with a free sequence slot; ties go to the
 * lowest index. Admission happens in co_sched_plan_step, for every group: a group with
 * a step in flight gets its new sequences in its next plan.
 *
 * A step of a group (max_batch_tokens tokens at most): every decoding sequence gets
 * its one token, every step; what is left goes to prompt chunks, oldest admission
 * first. A chunk is never one token out of a longer prompt, and never leaves exactly
 * one token behind (kvpool takes a one-token step for a decode step and compacts);
 * max_batch_tokens >= max_running_seqs + 2 guarantees the oldest prompt >= 3 tokens
 * each step. The prompt's last chunk samples the first new token.
 *
 * Statuses: AK_ERR_POOL_FULL when the queue holds max_queue requests (the server maps
 * it to RESOURCE_EXHAUSTED; ak_status.h has no code of that name), AK_ERR_OVER_BUDGET
 * for a request that can never run (context, or more pages than any group has),
 * AK_ERR_INVALID_ARG for bad input or a call out of order (the message names it),
 * AK_ERR_NOT_FOUND for an unknown id. A failed call changes nothing.
 *
 * Threading: one owning thread; no call is thread-safe. */
#ifndef CO_SCHED_H
#define CO_SCHED_H

#include <stdint.h>

#include "ak_status.h"

#ifdef __cplusplus
extern "C" {
#endif

/* The KV layout the page arithmetic needs (the workers' kv_pool_params_t values). */
typedef struct {
  int32_t n_layers;      /* layers of the model (every rank of a group holds all of them) */
  int32_t n_full_layers; /* layers 0..n_full_layers-1 keep a full cache when budgeted */
  int32_t page_tokens;   /* tokens per page */
} co_kv_shape_t;

/* Pages holding n_tokens of one layer (ceil; 0 for n_tokens <= 0). */
int64_t co_kv_pages_for_tokens(int64_t n_tokens, int32_t page_tokens);
/* Pages of a sequence of n_tokens in every layer together outside prefill, with a
 * budget of budget_tokens per budgeted layer (0 = full cache): kv_seq_pages_needed. */
int64_t co_kv_seq_pages_steady(const co_kv_shape_t *shape, int32_t budget_tokens, int64_t n_tokens);
/* Pages of a sequence whose first n_tokens were all fed as prompt chunks (every page
 * of every layer resident), whatever the budget. */
int64_t co_kv_seq_pages_prefill(const co_kv_shape_t *shape, int64_t n_tokens);
/* The reservation at admission: max(prefill(n_prompt), steady(n_prompt + max_new)). */
int64_t co_kv_seq_pages_peak(const co_kv_shape_t *shape, int32_t budget_tokens, int64_t n_prompt_tokens,
                             int64_t max_new_tokens);

typedef struct {
  co_kv_shape_t shape;
  int32_t n_groups;                    /* data-parallel worker groups, 1..1024 */
  const int64_t *group_capacity_pages; /* [n_groups], each >= 1; copied at create */
  int32_t max_running_seqs;            /* sequences per group (the kvpool's max_seqs; default 256);
                                        * the most any group can ever be given */
  int32_t max_batch_tokens;            /* tokens per step per group (default 512);
                                        * >= max_running_seqs + 2 */
  const int32_t *group_max_running_seqs; /* [n_groups] each in [1, max_running_seqs], or NULL:
                                          * all max_running_seqs; copied at create */
  const int32_t *group_max_batch_tokens; /* [n_groups] each >= its max_running_seqs + 2, or
                                          * NULL: all max_batch_tokens; copied at create */
  int32_t max_queue;                   /* waiting requests (default 1024) */
  int32_t max_seq_tokens;              /* prompt + new tokens of one request (default 8192) */
  int64_t max_wait_us;                 /* skip-ahead allowance (default 2 s); 0 = strict FCFS */
} co_sched_params_t;

typedef struct co_sched co_sched_t;

typedef struct {
  int64_t id;              /* the server's request id; unique among live requests */
  int32_t n_prompt_tokens; /* >= 1 */
  int32_t max_new_tokens;  /* >= 1 */
  int32_t budget_tokens;   /* KV budget per budgeted layer; 0 = full cache */
  int64_t arrival_us;      /* when it arrived, on the clock of now_us */
} co_sched_req_t;

/* One sequence of a planned step. */
typedef struct {
  int64_t id;
  int32_t pos0;       /* tokens the sequence holds before the step (first new position) */
  int32_t n_tokens;   /* fed this step: a prompt chunk [pos0, pos0 + n_tokens), or 1 */
  uint8_t is_prefill; /* a prompt chunk (else one decode token: the last sampled one) */
  uint8_t is_new;     /* its first step on this group: the worker creates the sequence */
  uint8_t samples;    /* the step samples a token for it (decode, or the prompt's end) */
} co_sched_item_t;

/* A group's next Step. Arrays are the scheduler's, valid until that group's
 * co_sched_step_done or co_sched_group_dead. */
typedef struct {
  int32_t n_drops;
  const int64_t *drops;         /* [n_drops] ids to release before the batch runs */
  int32_t n_items;
  const co_sched_item_t *items; /* [n_items] in admission order, ids distinct */
  int64_t n_tokens;             /* sum of items' n_tokens, <= max_batch_tokens */
} co_sched_plan_t;

/* What rank 0 answered for one item. */
typedef struct {
  int64_t id;
  int32_t n_sampled_tokens; /* the item's `samples` (0 or 1) */
  int32_t finished;         /* the server ends it now (EOS, stop string) */
} co_sched_result_t;

typedef enum {
  CO_REQ_NONE = 0, /* unknown id (never submitted, or ended) */
  CO_REQ_QUEUED = 1,
  CO_REQ_RUNNING = 2,
} co_req_state_t;

typedef struct {
  co_req_state_t state;
  int32_t group_idx;          /* running: its group; else -1 */
  int32_t n_prefilled_tokens; /* prompt tokens fed so far */
  int32_t n_generated_tokens; /* tokens sampled so far */
  int64_t reserved_pages;     /* running: its reservation; else 0 */
  uint8_t on_worker;          /* running: it has been in a plan of its group */
} co_sched_req_info_t;

typedef struct {
  int32_t n_queued;
  int32_t n_running; /* all groups */
  uint64_t n_submitted, n_refused, n_admitted, n_finished, n_aborted, n_failed, n_requeued;
} co_sched_stats_t;

typedef struct {
  int64_t capacity_pages;
  int32_t max_running_seqs; /* its sequence slots now (create, or its last revive) */
  int32_t max_batch_tokens; /* its step's tokens now */
  int64_t reserved_pages;
  int64_t free_pages; /* capacity - reserved */
  int32_t n_running;
  int32_t n_prefilling; /* running whose prompt is not all fed */
  int32_t n_pending_drops;
  uint8_t dead;
  uint8_t in_step;
  uint64_t n_steps; /* plans with items since create */
} co_sched_group_stats_t;

/* Defaults for every field; shape, n_groups and group_capacity_pages must be set. */
co_sched_params_t co_sched_params_default(void);
/* AK_ERR_INVALID_ARG naming the first bad field. */
ak_status_t co_sched_create(const co_sched_params_t *p, ak_err_t *err, co_sched_t **sched_p);
void co_sched_destroy(co_sched_t *s);
/* The last error of a call on this scheduler ("" if none). */
const char *co_sched_errmsg(const co_sched_t *s);

/* Queues a request. AK_ERR_POOL_FULL when max_queue wait already; AK_ERR_OVER_BUDGET
 * when prompt + new tokens exceed max_seq_tokens or its reservation exceeds every
 * group's capacity; AK_ERR_INVALID_ARG for a bad field or an id already live. */
ak_status_t co_sched_submit(co_sched_t *s, const co_sched_req_t *req);

/* Ends a queued or running request now: its pages are free at once, and if its group's
 * worker holds it, it is in that group's next plan's drops. A result for it from a
 * step in flight is ignored. AK_ERR_NOT_FOUND for an unknown id. */
ak_status_t co_sched_abort(co_sched_t *s, int64_t id);

/* Admits what fits (see Fairness, Routing), then plans group_idx's next step into
 * *plan_p. With n_items > 0 the group has a step in flight until co_sched_step_done;
 * with n_items == 0 it stays idle (send the drops, if any, and call nothing back).
 * AK_ERR_INVALID_ARG for a dead group, one with a step in flight, a bad index. */
ak_status_t co_sched_plan_step(co_sched_t *s, int32_t group_idx, int64_t now_us, co_sched_plan_t *plan_p);

/* Ends group_idx's step: results[n_results], one per item of the plan (any order)
 * whose request is still running; results for requests aborted since are ignored.
 * A prompt's last chunk and a decode token each add a sampled token; a request ends
 * when `finished` or when it has max_new_tokens; ended ones leave (their pages free,
 * their ids in the next plan's drops). *finished_p / *n_finished_p (either may be
 * NULL): the ids that ended, valid until the next call. AK_ERR_INVALID_ARG, changing
 * nothing, for a group without a step in flight, a missing or repeated result, or a
 * sampled count that does not match the item. */
ak_status_t co_sched_step_done(co_sched_t *s, int32_t group_idx, const co_sched_result_t *results,
                               int32_t n_results, const int64_t **finished_p, int32_t *n_finished_p);

/* A worker of the group died: the group is skipped until revived, its step in flight
 * and pending drops are forgotten (the process is gone). Its running requests that the
 * worker had seen are failed (*failed_p: ids valid until the next call; the server ends
 * them with UNAVAILABLE); those it had not seen go back to the queue in their place.
 * Calling it on a dead group fails nothing more. */
ak_status_t co_sched_group_dead(co_sched_t *s, int32_t group_idx, const int64_t **failed_p, int32_t *n_failed_p);
/* What a revived group holds, from its new Warmup: a restarted worker may have fewer
 * pages, slots or batch tokens than before (another --max-seqs), and a plan over them
 * would fail its first Step. */
typedef struct {
  int64_t capacity_pages;   /* >= 1 */
  int32_t max_running_seqs; /* [1, the scheduler's max_running_seqs]: more cannot be used
                             * (the caller clamps) */
  int32_t max_batch_tokens; /* >= max_running_seqs + 2 */
} co_sched_group_caps_t;

/* The group is back with `caps` (the next plans stay within them).
 * AK_ERR_INVALID_ARG, changing nothing, unless it was dead or for a bad field. */
ak_status_t co_sched_group_revive(co_sched_t *s, int32_t group_idx, const co_sched_group_caps_t *caps);

void co_sched_stats(const co_sched_t *s, co_sched_stats_t *stats_p);
ak_status_t co_sched_group_stats(const co_sched_t *s, int32_t group_idx, co_sched_group_stats_t *stats_p);
/* Where a request is (state CO_REQ_NONE for an unknown id). */
void co_sched_req_info(const co_sched_t *s, int64_t id, co_sched_req_info_t *info_p);

/* Debug check of every invariant (lists, id map, reservations vs capacity, counts);
 * AK_ERR_INTERNAL with a message if one does not hold. */
ak_status_t co_sched_check(co_sched_t *s);

#ifdef __cplusplus
}
#endif
#endif
