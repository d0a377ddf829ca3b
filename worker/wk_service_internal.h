/* wk_service_internal: the service object shared by wk_service.c (threads, queue,
 * Info/Health/Warmup) and wk_service_step.c (the sequence table, Step, Release).
 * Private to worker/. */
#ifndef WK_SERVICE_INTERNAL_H
#define WK_SERVICE_INTERNAL_H

#include <pthread.h>
#include <stdint.h>

#include "ak_rpc_server.h"
#include "arkvale/v1/worker.pb-c.h"
#include "wk_cuda_sample.h"
#include "wk_sampler.h"
#include "wk_service.h"

/* One live sequence: the coordinator's id, the pool's id, its sampler. */
typedef struct {
  int live;
  uint64_t seq_id;       /* the coordinator's */
  kv_seq_id_t kv_seq;    /* the pool's */
  wk_sampler_t *sampler; /* its PRNG and penalty history */
  int64_t n_tokens;      /* tokens appended so far */
  int64_t max_tokens;    /* NewSequence.max_seq_tokens, or the context */
  /* The token this rank sampled for it at step sampled_step_id, not yet appended: what
   * ContinuingSequence.feed_sampled_at_step_id appends. Set by a Step that samples for
   * it, cleared by any other Step it takes part in. */
  int has_sampled;
  uint64_t sampled_step_id;
  int32_t sampled_token;
} wk_seq_t;

typedef enum { WK_JOB_WARMUP = 0, WK_JOB_STEP = 1, WK_JOB_RELEASE = 2 } wk_job_kind_t;

typedef struct wk_job {
  wk_job_kind_t kind;
  const ProtobufCMessage *req; /* owned by the call until the writer finishes */
  ak_rpc_writer_t *w;
  double arrival_us;           /* when the handler saw it (StepTimings.total_us) */
  struct wk_job *next;
} wk_job_t;

struct wk_service {
  wk_engine_t *eng;
  const wk_hparams_t *hp;
  kv_pool_params_t kv;       /* the pool's params (policy, budget, sizes) */
  ak_rpc_server_t *srv;
  int32_t device_idx;
  char fingerprint[17];      /* hex of 64 bits */

  /* Queue and snapshot: guarded by mu. */
  pthread_mutex_t mu;
  pthread_cond_t cv;
  wk_job_t *head, *tail;
  int n_queued;
  int stopping;              /* drain: refuse new jobs, exit once the queue is empty */
  int thread_started;
  pthread_t thread;
  Arkvale__V1__WorkerState state;
  int has_last_step_id;
  uint64_t last_step_id;
  int has_begun_step_id;     /* the largest step_id the engine thread has taken up */
  uint64_t begun_step_id;
  uint32_t n_seqs;
  char fail_msg[AK_ERR_MSG_BYTES];

  /* Engine thread only. */
  wk_seq_t *seqs;            /* [kv.max_seqs] table slots */
  int32_t warm_max_batch_tokens; /* the Warmup's (<= the engine's); 0 before Warmup */
  float *logits;             /* [kv.max_seqs, n_vocab] f32: one row per step sequence */
  int32_t *tokens;           /* [max_batch_tokens] the step's rows */
  kv_seq_id_t *batch_seqs;   /* [kv.max_seqs] */
  int32_t *batch_n;          /* [kv.max_seqs] new tokens per step sequence */
  int32_t *batch_slot;       /* [kv.max_seqs] table slot per step sequence */
  /* Sampling on the device (CUDA engines only, else NULL): the step's request per step
   * sequence, each one's penalty window, and what comes back. */
  wk_cuda_sample_seq_t *dev_req; /* [kv.max_seqs] */
  int32_t *dev_hist;             /* [kv.max_seqs, WK_CUDA_SAMPLE_MAX_HISTORY_IDS] */
  int32_t *dev_ids;              /* [kv.max_seqs] */
  float *dev_logprobs;           /* [kv.max_seqs] */
  uint64_t seed_next;        /* seeds for sequences that ask none */

  int32_t predecessor_wait_ms; /* wk_service_params_t's */
  void (*test_before_job)(void *user);
  void *test_user;
};

/* wk_service_step.c, engine thread. Each writes its response (or not) and finishes. */
void wk_svc_run_step(wk_service_t *s, const Arkvale__V1__StepRequest *q, ak_rpc_writer_t *w, double arrival_us);
void wk_svc_run_release(wk_service_t *s, const Arkvale__V1__ReleaseRequest *q, ak_rpc_writer_t *w);
/* Frees a table slot's sequence (pages and sampler). */
void wk_svc_seq_free(wk_service_t *s, wk_seq_t *sq);
/* The pool's counters; `step` and `total` are the caller's storage. */
void wk_svc_fill_counters(wk_service_t *s, int with_step, Arkvale__V1__KvCounters *c, Arkvale__V1__KvWork *step,
                          Arkvale__V1__KvWork *total);
/* Publishes n_seqs (and last_step_id when has_step) to the snapshot Health reads. */
void wk_svc_publish(wk_service_t *s, int has_step, uint64_t step_id);
/* Marks the engine FAILED with `msg` (a worker-level error). */
void wk_svc_fail(wk_service_t *s, const char *msg);
double wk_svc_now_us(void);

#endif
