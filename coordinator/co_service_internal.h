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
#include "co_sched.h"
#include "co_service.h"
#include "co_stop.h"
#include "co_tokenizer.h"

#define CO_SVC_MAX_MSG_BYTES ((size_t)4 << 20)
#define CO_SVC_REQUEST_ID_BYTES 129 /* 128 printable ASCII + NUL */

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
  int32_t last_token;            /* the token to feed back at the next decode step */
  int32_t n_generated;
  int64_t arrival_us, admitted_us, first_token_us;
  atomic_int abort_requested;
} co_svc_req_t;

struct co_service {
  co_service_params_t p;
  co_tokenizer_t *tok;
  ak_rpc_client_t *worker;
  ak_rpc_server_t *srv;
  co_sched_t *sched;
  /* from the worker's Info / Warmup */
  char model_id[256];
  int32_t n_vocab, n_layers, context_tokens, page_tokens;
  Arkvale__V1__KvPolicy policy;
  int32_t max_new_limit;
  /* the inbox and the live list */
  pthread_mutex_t mu;
  pthread_cond_t cv;
  co_svc_req_t *inbox_head, *inbox_tail;
  co_svc_req_t *live;
  int64_t next_id;
  int stopping;
  pthread_t thread;
  int thread_started;
  /* scheduler thread only */
  co_svc_req_t *running;
  uint64_t step_id;
  int group_dead;
};

int64_t co_svc_now_us(void);
/* The scheduler thread's body. */
void *co_svc_loop(void *arg);
/* Ends a request's stream with `st` and frees it (scheduler thread, or a CQ thread
 * before the request reached the inbox). Removes it from the live list. */
void co_svc_req_end(co_service_t *s, co_svc_req_t *r, ak_status_t st, const char *msg);

#endif
