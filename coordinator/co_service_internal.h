/* co_service_internal: what co_service.c (create, handlers, validation) and
 * co_service_loop.c (the scheduler thread) share. Private to coordinator/. */
#ifndef CO_SERVICE_INTERNAL_H
#define CO_SERVICE_INTERNAL_H
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include "ak_rpc_client.h"
#include "ak_rpc_server.h"
#include "arkvale/v1/generation.pb-c.h"
#include "arkvale/v1/worker.pb-c.h"
#include "co_metrics.h"
#include "co_sched.h"
#include "co_service.h"
#include "co_stop.h"
#include "co_tokenizer.h"
#include "grpc/health/v1/health.pb-c.h"

#define CO_SVC_MAX_MSG_BYTES ((size_t)4 << 20)
#define CO_SVC_REQUEST_ID_BYTES 129 /* 128 printable ASCII + NUL */
/* Canary seq_ids live above every request id (co_sched ids count up from 1). */
#define CO_SVC_CANARY_SEQ_ID_BASE (UINT64_C(1) << 62)
/* The longest wait between revive attempts of a group whose attempts time out. */
#define CO_SVC_REVIVE_MAX_WAIT_US ((int64_t)30 * 1000000)

/* One Generate request, from its handler to its stream's end. Created on a CQ thread,
 * then owned by the scheduler thread (only `abort_requested` is touched by others,
 * and the live list under svc->mu). */
typedef struct co_svc_req {
  struct co_svc_req *next;       /* inbox, then the scheduler's running list */
  struct co_svc_req *live_next;  /* svc->live (under svc->mu): Abort's look-up */
  int64_t id;                    /* co_sched id and the worker's seq_id */
  char request_id[CO_SVC_REQUEST_ID_BYTES];
  ak_rpc_writer_t *w;
  int32_t *prompt;               /* [n_prompt] token ids */
  int32_t n_prompt;
  int32_t max_new;
  Arkvale__V1__SamplingParams sampling; /* a copy (no pointers inside) */
  int has_sampling;
  int ignore_eos, return_logprobs;
  co_stop_t *stop;               /* NULL without stop strings */
  co_detok_t *detok;
  uint64_t sample_step_id;       /* the Step (of its group) that last sampled for it: its
                                  * next decode step feeds that token (pipelined decode) */
  int32_t n_generated;
  int64_t arrival_us, admitted_us, first_token_us, last_token_us;
  atomic_int abort_requested;
} co_svc_req_t;

/* One grpc.health.v1 Watch call, open until shutdown or the client leaves. */
typedef struct co_svc_watch {
  struct co_svc_watch *next;
  ak_rpc_writer_t *w;
  int known;        /* the service name is served (else SERVICE_UNKNOWN, never updated) */
} co_svc_watch_t;

/* Family ids in s->metrics (co_service_metrics.c). */
typedef struct {
  int32_t requests, queue_depth, running, ttft, tpot, gen_tokens, prompt_tokens, serving;
  int32_t kv_resident, kv_backup, kv_backed_up, kv_recalled, steps, canaries, watchers, device_sampled;
} co_svc_metric_ids_t;

/* One rank of a group: its channel and, past the group's first rank, a caller thread
 * that makes one blocking unary call per job (co_service_ranks.c). */
typedef struct co_svc_rank {
  char addr[256];
  ak_rpc_client_t *client;       /* replaced by a revive (no call in progress then) */
  pthread_t thread;
  int thread_started;
  /* the job (under its group's mu) */
  int has_job, quit;
  const char *method;
  const ProtobufCMessage *req;
  const ProtobufCMessageDescriptor *desc;
  int64_t deadline_ms;
  /* the outcome: written by whoever ran the call, read after co_svc_fan_wait */
  ak_status_t st;
  ak_err_t err;
  ProtobufCMessage *resp;        /* pb_msg_free; NULL on failure */
} co_svc_rank_t;

/* What a group's thread is doing (co_svc_group_t.job). */
typedef enum {
  CO_SVC_JOB_NONE = 0,
  CO_SVC_JOB_CANARY,  /* the one-token canary, then its Release */
  CO_SVC_JOB_REVIVE,  /* fresh channels, probe, Release all, Info, Warmup */
  CO_SVC_JOB_RELEASE, /* Release of g->rel_ids (drops without a batch) */
} co_svc_job_t;

/* Steps of one group in flight at once (pipelined decode, co_service_loop.c): Step k+1
 * goes out while Step k runs, its decode tokens fed by the worker from Step k's samples
 * (worker.proto, ContinuingSequence.feed_sampled_at_step_id). */
#define CO_SVC_STEP_DEPTH 2

/* One rank's call of a lane's Step, made by that rank's caller thread of the lane. */
typedef struct {
  pthread_t thread;
  int thread_started;
  int has_job, quit;             /* (its group's mu) */
  ak_status_t st;                /* the outcome, read once the lane is done */
  ak_err_t err;
  ProtobufCMessage *resp;        /* pb_msg_free; NULL on failure */
} co_svc_lane_rank_t;

/* One Step in flight: its request, the plan's items it answers for, and every rank's
 * outcome. Posted by the scheduler thread, called by one caller thread per rank
 * (co_service_ranks.c), answered by the scheduler thread in step order. */
typedef struct {
  int answered;                  /* scheduler thread: every rank has answered (from done) */
  int done;                      /* (the service's mu) set by the last rank's caller */
  int32_t pending;               /* (the group's mu) ranks not yet answered */
  uint64_t step_id;
  Arkvale__V1__StepRequest q;    /* read by the callers while in flight */
  void *bufs[8];                 /* its arrays (token ids and sampling copied: a request may
                                  * end while its Step is out), freed once answered */
  co_sched_item_t *items;        /* [n_items] the plan's items (co_sched's arrays do not
                                  * outlive the step_done that follows the post) */
  int32_t n_items;
  co_svc_lane_rank_t *ranks;     /* [the group's n_ranks] */
} co_svc_lane_t;

/* One data-parallel group. Owned by the scheduler thread (create before it starts)
 * except while a job is posted (`busy`): then the group's thread owns the fields below
 * marked "job" (and the ranks' channels and answers) until it reports the job done
 * under the service's mu. So a group that hangs holds only itself. */
typedef struct co_svc_group {
  struct co_service *svc;
  int32_t idx;
  co_svc_rank_t *ranks;          /* [n_ranks], rank 0 answers */
  int32_t n_ranks;
  uint64_t step_id;              /* job: the group's last step_id (every rank gets the same) */
  int dead;
  int serving;                   /* warmed up and its last canary answered */
  int64_t last_canary_us;        /* last canary attempt: its end once it ended (0: due now) */
  int64_t last_revive_us;        /* when the last attempt to bring the dead group back ended */
  int64_t revive_wait_us;        /* until the next attempt: the canary period, doubled (up to
                                  * CO_SVC_REVIVE_MAX_WAIT_US) after each attempt that took
                                  * over half a period (a host that does not answer) */
  int canary_reserved;           /* a sequence slot and canary_pages kept out of co_sched */
  int64_t canary_pages;
  int32_t max_seqs;              /* job: slots left to co_sched at the last Warmup (min over ranks) */
  int32_t batch_tokens;          /* job: max_batch_tokens at the last Warmup (min over ranks) */
  /* Steps in flight (co_service_loop.c), scheduler thread */
  co_sched_plan_t plan;
  co_svc_lane_t lanes[CO_SVC_STEP_DEPTH];
  int32_t lane_oldest;           /* the lane of the oldest Step in flight */
  int32_t n_in_flight;           /* Steps in flight, 0..CO_SVC_STEP_DEPTH */
  int canary_wanted;             /* a canary is due: no new Step until it has run */
  uint64_t *pend_drops;          /* drops planned while Steps were in flight and no Step
                                  * carried them [n_pend_drops]: the next Step does */
  size_t n_pend_drops, cap_pend_drops;
  uint64_t *rel_ids;             /* job: a RELEASE's ids [n_rel] */
  size_t n_rel;
  /* the group's thread and the fan-out to its ranks (co_service_ranks.c) */
  pthread_mutex_t mu;
  pthread_cond_t cv;             /* a job posted (to the group's or a rank's thread), or done */
  int mu_init;
  int32_t fan_pending;           /* (mu) rank jobs posted and not done */
  co_svc_job_t job;              /* (mu) the job posted to the group's thread */
  int quit;                      /* (mu) the threads end */
  pthread_t thread;
  int thread_started;
  ak_status_t job_st;            /* job: the outcome, read once done */
  ak_err_t job_err;
  int64_t job_cap_pages;         /* job: a REVIVE's capacity left to co_sched */
  int job_done;                  /* (the service's mu) set by the group's thread */
  /* scheduler thread only */
  co_svc_job_t busy;             /* the job posted and not yet collected */
  int64_t job_start_us;
} co_svc_group_t;

struct co_service {
  co_service_params_t p;         /* its addresses point at the copies below */
  char worker_addr[256], listen_addr[256];
  co_svc_group_t *groups;        /* [n_groups] */
  int32_t n_groups;
  co_tokenizer_t *tok;
  ak_rpc_server_t *srv;           /* CQ threads and create/destroy only: destroy frees it
                                  * while the scheduler thread still runs */
  int port;                      /* the bound port, for anyone */
  co_sched_t *sched;
  int32_t sched_max_seqs;        /* co_sched's max_running_seqs: the most slots a group can use */
  /* from the workers' Info / Warmup (all the same) */
  char model_id[256];
  int32_t n_vocab, n_layers, context_tokens, page_tokens;
  Arkvale__V1__KvPolicy policy;
  int32_t max_new_limit;
  /* the inbox and the live list */
  pthread_mutex_t mu;
  pthread_cond_t cv;             /* the inbox, a group's job done, or stopping */
  co_svc_req_t *inbox_head, *inbox_tail;
  co_svc_req_t *live;
  int64_t next_id;
  int stopping;
  int draining;                  /* co_service_drain: new Generate calls UNAVAILABLE */
  pthread_cond_t drained_cv;     /* signalled when the live list empties while draining */
  /* health (under mu): what Check answers and Watch streams */
  int serving;                   /* 1 SERVING (some group is), 0 NOT_SERVING */
  co_svc_watch_t *watchers;
  int32_t n_watchers;
  int64_t last_answer_us;        /* (under mu) the last good Step answer of any group,
                                  * canary or not (0: none yet): the watchdog's clock */
  int64_t stale_us;              /* health_stale_ms resolved */
  pthread_t thread;
  int thread_started;
  pthread_t watchdog;            /* staleness (co_service_health.c), woken by watchdog_cv */
  pthread_cond_t watchdog_cv;
  int watchdog_started;
  /* scheduler thread only */
  co_svc_req_t *running;
  int loop_stopping;             /* the loop has seen stopping: no canary or revive is posted */
  atomic_uint_fast64_t n_canaries; /* canary seq_ids (the groups' threads) */
  /* metrics: thread-safe registry; the ids are written once at create */
  co_metrics_t *metrics;
  int own_metrics;
  atomic_int metrics_warned;     /* a failed update was logged */
  co_svc_metric_ids_t mid;
};

int64_t co_svc_now_us(void);
/* The scheduler thread's body. */
void *co_svc_loop(void *arg);
/* Ends a request's stream with `st` and frees it (scheduler thread, or a CQ thread
 * before the request reached the inbox). Removes it from the live list. */
void co_svc_req_end(co_service_t *s, co_svc_req_t *r, ak_status_t st, const char *msg);

/* --- ranks and their calls (co_service_ranks.c) --- */
/* Channels of every rank of every group (s->groups filled with addresses), a caller
 * thread per rank past each group's first, and a thread per group that runs the jobs
 * the scheduler posts (co_svc_group_main). On failure nothing is left running. */
ak_status_t co_svc_ranks_start(co_service_t *s, ak_err_t *err);
/* Stops every thread, closes the channels. No job in progress. */
void co_svc_ranks_stop(co_service_t *s);
/* Sends req to `method` on every rank of g at once (the calling thread makes rank 0's
 * call itself) and waits for all, each up to deadline_ms: each rank's st, err and resp
 * are set. The thread that owns g's calls (create's, then g's own thread). */
void co_svc_fan_call(co_service_t *s, co_svc_group_t *g, const char *method, const ProtobufCMessage *req,
                     const ProtobufCMessageDescriptor *desc, int64_t deadline_ms);
/* Posts lane_idx's Step (its q built) to every rank's caller of that lane; the last to
 * answer sets the lane's done under s->mu and signals s->cv. Scheduler thread. */
void co_svc_lane_post(co_service_t *s, co_svc_group_t *g, int32_t lane_idx);
/* Frees every rank's response of a lane. */
void co_svc_lane_free_resps(co_svc_group_t *g, co_svc_lane_t *l);
/* Posts `job` to g's thread (g not busy). Scheduler thread. */
void co_svc_job_post(co_service_t *s, co_svc_group_t *g, co_svc_job_t job);
/* A group's thread: runs each posted job, then sets job_done under s->mu and signals
 * s->cv (co_service_loop.c). */
void *co_svc_group_main(void *arg);
/* The first failed rank of g as a status with its message (naming the rank), or AK_OK. */
ak_status_t co_svc_group_status(const co_svc_group_t *g, ak_err_t *err);
/* Frees every rank's response of g. */
void co_svc_group_free_resps(co_svc_group_t *g);
/* A fresh channel to every rank of g (a dead group: the old ones sit in reconnect
 * backoff). */
ak_status_t co_svc_group_reconnect(co_service_t *s, co_svc_group_t *g, ak_err_t *err);

/* --- the worker session (co_service.c) --- */
/* Info on every rank of g (checked against what create saw, once known) and Warmup;
 * the capacity left to co_sched after the canary's reservation (minimum over ranks) in
 * *cap_pages_p, and sequence slots in g->max_seqs. Any thread that owns the groups. */
ak_status_t co_svc_worker_warmup(co_service_t *s, co_svc_group_t *g, ak_err_t *err, int64_t *cap_pages_p);
/* Worker.Health on every rank of g with a short deadline (a revive's first call: a
 * host that does not answer must not hold the scheduler thread, and so every other
 * group, for a whole step deadline). AK_OK when every rank answered. */
ak_status_t co_svc_worker_probe(co_service_t *s, co_svc_group_t *g, ak_err_t *err);
/* Release of ids[n] (or of every sequence with `all`) on every rank of g; the pools'
 * counters go to the metrics. Scheduler thread. */
ak_status_t co_svc_worker_release(co_service_t *s, co_svc_group_t *g, const uint64_t *ids, size_t n, int all,
                                  ak_err_t *err);
/* A rank of g failed (a Step, the canary): g's running requests end UNAVAILABLE, g is
 * dead, the service NOT_SERVING when no group is left. Scheduler thread, g not busy. */
void co_svc_group_failed(co_service_t *s, co_svc_group_t *g, const char *why);
/* SERVING when some group is (publishes a change). Scheduler thread. */
void co_svc_health_refresh(co_service_t *s, const char *why);

/* --- health (co_service_health.c) --- */
/* Registers /grpc.health.v1.Health/Check and /Watch on s->srv. */
ak_status_t co_svc_health_register(co_service_t *s, ak_err_t *err);
/* Sets SERVING (1) or NOT_SERVING (0); on a change, every Watch gets it. Any thread. */
void co_svc_health_publish(co_service_t *s, int serving, const char *why);
/* co_service_drain: sets s->draining and tells every Watch NOT_SERVING. Any thread. */
void co_svc_health_drain(co_service_t *s);
/* Ends Watch calls whose client left (scheduler thread, every loop). */
void co_svc_health_sweep(co_service_t *s);
/* At destroy, before the server stops: NOT_SERVING to every Watch, then ends them.
 * Call with s->mu held and s->stopping set. */
void co_svc_health_shutdown_locked(co_service_t *s);
/* Scheduler thread, g not busy: the health job due for g now (a dead group's REVIVE
 * when its wait has passed; a live one's CANARY every period), else CO_SVC_JOB_NONE. */
co_svc_job_t co_svc_health_due(co_service_t *s, co_svc_group_t *g, int64_t now_us);
/* Scheduler thread: what a CANARY or REVIVE job of g ended with (SERVING, dead, back,
 * the revive's back-off). */
void co_svc_health_job_done(co_service_t *s, co_svc_group_t *g, co_svc_job_t job);
/* The jobs' bodies, on g's thread: the canary (Step, then Release); the revive
 * (channels, probe, Release all, Info, Warmup): capacity left to co_sched in *cap_pages_p. */
ak_status_t co_svc_canary_run(co_service_t *s, co_svc_group_t *g, ak_err_t *err);
ak_status_t co_svc_revive_run(co_service_t *s, co_svc_group_t *g, ak_err_t *err, int64_t *cap_pages_p);
/* The watchdog thread's body: every canary period, NOT_SERVING when the worker's last
 * good Step answer (a canary's or a batch's: with one slot a busy group runs no
 * canary) is older than s->stale_us. Ends when s->stopping is set (watchdog_cv). */
void *co_svc_health_watchdog(void *arg);

/* --- metrics (co_service_metrics.c) --- */
ak_status_t co_svc_metrics_init(co_service_t *s, ak_err_t *err);
/* A Generate call ended with st (every path, validation included). */
void co_svc_metric_end(co_service_t *s, ak_status_t st);
void co_svc_metric_observe(co_service_t *s, int32_t id, double v);
void co_svc_metric_add(co_service_t *s, int32_t id, double v);
/* A rank's KV pool after a Step (with its step deltas) or a Release. */
void co_svc_metric_kv(co_service_t *s, const co_svc_rank_t *r, const Arkvale__V1__KvCounters *kv);
/* Steps or canaries (mid.steps / mid.canaries) answered by a rank. */
void co_svc_metric_rank_add(co_service_t *s, const co_svc_rank_t *r, int32_t id, double v);
/* The open Watch calls (s->mu held). */
void co_svc_metric_watchers_locked(co_service_t *s);
/* Queue depth and running requests from co_sched (scheduler thread). */
void co_svc_metric_sched(co_service_t *s);

#endif
