/* ak_rpc_server: the completion-queue loop and the per-call state machine drawn in
 * ak_rpc_server.h. Every outstanding batch and the handler each hold a reference on
 * the call; the last release frees it, so no path has to know which event comes last. */
#include "ak_rpc_server.h"
#include "ak_time.h"

#include <errno.h>
#include <inttypes.h>
#include <grpc/grpc.h>
#include <grpc/grpc_security.h>
#include <grpc/support/alloc.h>
#include <grpc/support/time.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "ak_log.h"
#include "pb_buf.h"
#include "pb_status.h"

/* request_call batches kept outstanding, so a burst of new calls does not wait for
 * the loop to re-arm one at a time. */
#define RPC_N_PENDING_REQUESTS 8

typedef enum { TAG_REQUEST, TAG_RECV, TAG_CLOSE, TAG_SEND } rpc_tag_kind_t;

typedef struct rpc_tag {
  struct ak_rpc_writer *call;
  rpc_tag_kind_t kind;
} rpc_tag_t;

typedef struct rpc_out {
  grpc_byte_buffer *buf;
  struct rpc_out *next;
} rpc_out_t;

struct ak_rpc_writer {
  ak_rpc_server_t *srv;
  const ak_rpc_method_t *method; /* NULL: unknown path */
  grpc_call *call;
  grpc_call_details details;
  grpc_metadata_array request_md;
  grpc_byte_buffer *recv_buf;
  int close_cancelled; /* written by RECV_CLOSE_ON_SERVER */
  int arrived;         /* a client's call (not only a pending request): in srv->n_calls */
  gpr_timespec arrived_at; /* when the call matched, on details.deadline's clock */
  rpc_tag_t t_request, t_recv, t_close, t_send;
  ProtobufCMessage *req;

  pthread_mutex_t mu; /* guards everything below */
  int refs;
  int initial_md_sent, send_in_flight, finish_requested, status_sent, n_writes;
  rpc_out_t *q_head, *q_tail; /* packed messages not yet handed to gRPC */
  grpc_byte_buffer *sending;  /* the message of the outstanding SEND_MESSAGE */
  grpc_status_code code;
  grpc_slice status_details; /* lives until the status batch completes */
  atomic_int cancelled;
};

struct ak_rpc_server {
  grpc_server *server;
  grpc_completion_queue *cq;
  int port, n_threads, started;
  pthread_t *threads;
  ak_rpc_method_t *methods; /* paths strdup'ed */
  int n_methods;
  int shutdown_tag; /* its address is the tag of grpc_server_shutdown_and_notify */

  pthread_mutex_t mu; /* guards below */
  pthread_cond_t cv;
  int shutting_down, shutdown_done;
  int shutdown_notified; /* grpc_server_shutdown_and_notify was called (once) */
  int n_live; /* call structs allocated, pending requests included */
  int n_calls; /* of which calls that arrived and are not freed yet */
};

/* --- call lifetime --- */

static void call_free(ak_rpc_writer_t *c) {
  ak_rpc_server_t *s = c->srv;
  int arrived = c->arrived;
  for (rpc_out_t *o = c->q_head, *next; o; o = next) {
    next = o->next;
    grpc_byte_buffer_destroy(o->buf);
    free(o);
  }
  if (c->sending) grpc_byte_buffer_destroy(c->sending);
  if (c->recv_buf) grpc_byte_buffer_destroy(c->recv_buf);
  pb_msg_free(c->req);
  if (c->call) grpc_call_unref(c->call);
  grpc_call_details_destroy(&c->details);
  grpc_metadata_array_destroy(&c->request_md);
  grpc_slice_unref(c->status_details);
  pthread_mutex_destroy(&c->mu);
  free(c);
  pthread_mutex_lock(&s->mu);
  s->n_live--;
  if (arrived) s->n_calls--;
  pthread_cond_broadcast(&s->cv);
  pthread_mutex_unlock(&s->mu);
}

static void call_release_locked(ak_rpc_writer_t *c) {
  if (--c->refs > 0) {
    pthread_mutex_unlock(&c->mu);
    return;
  }
  pthread_mutex_unlock(&c->mu);
  call_free(c);
}

static void call_release(ak_rpc_writer_t *c) {
  pthread_mutex_lock(&c->mu);
  call_release_locked(c);
}

/* Posts one request_call; the call struct starts with one reference, the request's. */
static void server_request_one(ak_rpc_server_t *s) {
  ak_rpc_writer_t *c = calloc(1, sizeof *c);
  if (!c) {
    AK_LOG_ERROR("out of memory arming a request_call; %d pending", RPC_N_PENDING_REQUESTS);
    return;
  }
  c->srv = s;
  c->refs = 1;
  c->status_details = grpc_empty_slice();
  pthread_mutex_init(&c->mu, NULL);
  atomic_init(&c->cancelled, 0);
  grpc_call_details_init(&c->details);
  grpc_metadata_array_init(&c->request_md);
  c->t_request = (rpc_tag_t){c, TAG_REQUEST};
  c->t_recv = (rpc_tag_t){c, TAG_RECV};
  c->t_close = (rpc_tag_t){c, TAG_CLOSE};
  c->t_send = (rpc_tag_t){c, TAG_SEND};
  pthread_mutex_lock(&s->mu);
  s->n_live++;
  pthread_mutex_unlock(&s->mu);
  grpc_call_error e = grpc_server_request_call(s->server, &c->call, &c->details, &c->request_md, s->cq, s->cq,
                                               &c->t_request);
  if (e != GRPC_CALL_OK) {
    AK_LOG_ERROR("grpc_server_request_call failed: %d", (int)e);
    call_free(c);
  }
}

/* --- sending: one batch at a time, messages in queue order, then the status --- */

static void call_pump_locked(ak_rpc_writer_t *c) {
  if (c->send_in_flight) return;
  grpc_op ops[2];
  memset(ops, 0, sizeof ops);
  size_t n = 0;
  int have_msg = c->q_head != NULL;
  if (!have_msg && !(c->finish_requested && !c->status_sent)) return;
  if (!c->initial_md_sent) {
    ops[n++].op = GRPC_OP_SEND_INITIAL_METADATA;
    c->initial_md_sent = 1;
  }
  if (have_msg) {
    rpc_out_t *o = c->q_head;
    c->q_head = o->next;
    if (!c->q_head) c->q_tail = NULL;
    c->sending = o->buf;
    free(o);
    ops[n].op = GRPC_OP_SEND_MESSAGE;
    ops[n++].data.send_message.send_message = c->sending;
  } else {
    ops[n].op = GRPC_OP_SEND_STATUS_FROM_SERVER;
    ops[n].data.send_status_from_server.status = c->code;
    ops[n++].data.send_status_from_server.status_details = &c->status_details;
    c->status_sent = 1;
  }
  grpc_call_error e = grpc_call_start_batch(c->call, ops, n, &c->t_send, NULL);
  if (e != GRPC_CALL_OK) {
    /* Only a bug of ours (two sends outstanding, a send after the status) gets here. */
    AK_LOG_ERROR("grpc_call_start_batch(send) failed: %d", (int)e);
    atomic_store(&c->cancelled, 1);
    return;
  }
  c->send_in_flight = 1;
  c->refs++;
}

static void call_finish_locked(ak_rpc_writer_t *c, grpc_status_code code, const char *msg) {
  c->finish_requested = 1;
  c->code = code;
  grpc_slice_unref(c->status_details);
  c->status_details = grpc_slice_from_copied_string(msg ? msg : "");
  call_pump_locked(c);
}

static void on_send(ak_rpc_writer_t *c, int ok) {
  pthread_mutex_lock(&c->mu);
  c->send_in_flight = 0;
  if (c->sending) grpc_byte_buffer_destroy(c->sending);
  c->sending = NULL;
  if (!ok) {
    /* The stream is gone: later messages cannot arrive, the status still goes out
     * (gRPC completes it) so that the call closes. */
    atomic_store(&c->cancelled, 1);
    for (rpc_out_t *o = c->q_head, *next; o; o = next) {
      next = o->next;
      grpc_byte_buffer_destroy(o->buf);
      free(o);
    }
    c->q_head = c->q_tail = NULL;
  }
  call_pump_locked(c);
  call_release_locked(c);
}

/* --- receiving --- */

static const ak_rpc_method_t *server_find(const ak_rpc_server_t *s, grpc_slice path) {
  for (int i = 0; i < s->n_methods; i++)
    if (grpc_slice_str_cmp(path, s->methods[i].path) == 0) return &s->methods[i];
  return NULL;
}

static void on_request(ak_rpc_writer_t *c, int ok) {
  ak_rpc_server_t *s = c->srv;
  pthread_mutex_lock(&s->mu);
  int rearm = ok && !s->shutting_down;
  if (ok) c->arrived = 1, s->n_calls++;
  if (ok) c->arrived_at = gpr_now(c->details.deadline.clock_type);
  pthread_mutex_unlock(&s->mu);
  if (rearm) server_request_one(s);
  if (!ok) { /* the server is shutting down: this request never got a call */
    call_release(c);
    return;
  }
  c->method = server_find(s, c->details.method);
  pthread_mutex_lock(&c->mu);
  grpc_op op;
  memset(&op, 0, sizeof op);
  op.op = GRPC_OP_RECV_CLOSE_ON_SERVER;
  op.data.recv_close_on_server.cancelled = &c->close_cancelled;
  if (grpc_call_start_batch(c->call, &op, 1, &c->t_close, NULL) == GRPC_CALL_OK) c->refs++;
  if (!c->method) {
    char *path = grpc_slice_to_c_string(c->details.method);
    char msg[300];
    snprintf(msg, sizeof msg, "unknown method %.256s", path);
    gpr_free(path);
    call_finish_locked(c, GRPC_STATUS_UNIMPLEMENTED, msg);
  } else {
    memset(&op, 0, sizeof op);
    op.op = GRPC_OP_RECV_MESSAGE;
    op.data.recv_message.recv_message = &c->recv_buf;
    if (grpc_call_start_batch(c->call, &op, 1, &c->t_recv, NULL) == GRPC_CALL_OK)
      c->refs++;
    else
      call_finish_locked(c, GRPC_STATUS_INTERNAL, "cannot start receiving the request");
  }
  call_release_locked(c);
}

static void on_recv(ak_rpc_writer_t *c, int ok) {
  grpc_byte_buffer *buf = c->recv_buf;
  c->recv_buf = NULL;
  ak_err_t err;
  ak_err_clear(&err);
  ProtobufCMessage *req = NULL;
  ak_status_t st = AK_ERR_INVALID_ARG;
  if (!ok || !buf)
    ak_err_set(&err, st, "no request message");
  else
    st = pb_buf_unpack(buf, c->method->request_desc, c->method->max_request_bytes, &err, &req);
  if (buf) grpc_byte_buffer_destroy(buf);
  pthread_mutex_lock(&c->mu);
  if (st != AK_OK) {
    call_finish_locked(c, pb_status_to_grpc(st), err.msg);
    call_release_locked(c);
    return;
  }
  c->req = req;
  c->refs++; /* the handler's, released by ak_rpc_writer_finish */
  pthread_mutex_unlock(&c->mu);
  c->method->handler(c->method->user, req, c);
  call_release(c);
}

static void on_close(ak_rpc_writer_t *c, int ok) {
  /* cancelled is 1 for a client cancel, a deadline, a broken connection or
   * grpc_server_cancel_all_calls; 0 when the call ended with our status. */
  if (!ok || c->close_cancelled) atomic_store(&c->cancelled, 1);
  call_release(c);
}

static void *server_loop(void *arg) {
  ak_rpc_server_t *s = arg;
  for (;;) {
    grpc_event ev = grpc_completion_queue_next(s->cq, gpr_inf_future(GPR_CLOCK_MONOTONIC), NULL);
    if (ev.type == GRPC_QUEUE_SHUTDOWN) break;
    if (ev.type != GRPC_OP_COMPLETE) continue;
    if (ev.tag == &s->shutdown_tag) {
      pthread_mutex_lock(&s->mu);
      s->shutdown_done = 1;
      pthread_cond_broadcast(&s->cv);
      pthread_mutex_unlock(&s->mu);
      continue;
    }
    rpc_tag_t *t = ev.tag;
    switch (t->kind) {
      case TAG_REQUEST: on_request(t->call, ev.success); break;
      case TAG_RECV: on_recv(t->call, ev.success); break;
      case TAG_CLOSE: on_close(t->call, ev.success); break;
      case TAG_SEND: on_send(t->call, ev.success); break;
    }
  }
  return NULL;
}

/* --- the server --- */

ak_status_t ak_rpc_server_create(const char *addr, int n_threads, ak_err_t *err, ak_rpc_server_t **srv_p) {
  if (!addr || !srv_p || n_threads < 1)
    return AK_ERR(err, AK_ERR_INVALID_ARG, "addr %p, srv_p %p, n_threads %d", (const void *)addr,
                  (void *)srv_p, n_threads);
  ak_rpc_server_t *s = calloc(1, sizeof *s);
  if (!s) return AK_ERR(err, AK_ERR_NO_MEMORY, "server struct");
  grpc_init();
  s->n_threads = n_threads;
  pthread_mutex_init(&s->mu, NULL);
  pthread_cond_init(&s->cv, NULL);
  s->cq = grpc_completion_queue_create_for_next(NULL);
  s->server = grpc_server_create(NULL, NULL);
  grpc_server_register_completion_queue(s->server, s->cq, NULL);
  grpc_server_credentials *creds = grpc_insecure_server_credentials_create();
  s->port = grpc_server_add_http2_port(s->server, addr, creds);
  grpc_server_credentials_release(creds);
  if (s->port <= 0) {
    AK_ERR(err, AK_ERR_IO, "cannot bind %s", addr);
    ak_rpc_server_destroy(s);
    return AK_ERR_IO;
  }
  *srv_p = s;
  return AK_OK;
}

ak_status_t ak_rpc_server_register(ak_rpc_server_t *s, const ak_rpc_method_t *m, ak_err_t *err) {
  if (!s || !m || !m->path || !m->request_desc || !m->handler || m->max_request_bytes == 0 ||
      m->max_response_bytes == 0)
    return AK_ERR(err, AK_ERR_INVALID_ARG, "a NULL field or zero limit in method %s",
                  m && m->path ? m->path : "(null)");
  if (s->started) return AK_ERR(err, AK_ERR_INVALID_ARG, "%s: register before start", m->path);
  if (m->kind != AK_RPC_UNARY && m->kind != AK_RPC_SERVER_STREAMING)
    return AK_ERR(err, AK_ERR_INVALID_ARG, "%s: kind %d", m->path, (int)m->kind);
  for (int i = 0; i < s->n_methods; i++)
    if (strcmp(s->methods[i].path, m->path) == 0)
      return AK_ERR(err, AK_ERR_INVALID_ARG, "%s registered twice", m->path);
  ak_rpc_method_t *ms = realloc(s->methods, (size_t)(s->n_methods + 1) * sizeof *ms);
  if (!ms) return AK_ERR(err, AK_ERR_NO_MEMORY, "%d methods", s->n_methods + 1);
  s->methods = ms;
  char *path = strdup(m->path);
  if (!path) return AK_ERR(err, AK_ERR_NO_MEMORY, "path %s", m->path);
  ms[s->n_methods] = *m;
  ms[s->n_methods++].path = path;
  return AK_OK;
}

ak_status_t ak_rpc_server_start(ak_rpc_server_t *s, ak_err_t *err) {
  if (!s || s->started) return AK_ERR(err, AK_ERR_INVALID_ARG, "server %p already started or NULL", (void *)s);
  s->threads = calloc((size_t)s->n_threads, sizeof *s->threads);
  if (!s->threads) return AK_ERR(err, AK_ERR_NO_MEMORY, "%d threads", s->n_threads);
  grpc_server_start(s->server);
  s->started = 1;
  for (int i = 0; i < RPC_N_PENDING_REQUESTS; i++) server_request_one(s);
  for (int i = 0; i < s->n_threads; i++) {
    if (pthread_create(&s->threads[i], NULL, server_loop, s) != 0) {
      /* Fewer threads than asked still serve; destroy joins the ones that exist. */
      s->n_threads = i;
      if (i == 0) return AK_ERR(err, AK_ERR_INTERNAL, "pthread_create failed");
      break;
    }
  }
  return AK_OK;
}

int ak_rpc_server_port(const ak_rpc_server_t *s) { return s ? s->port : 0; }

/* Stops accepting new calls, once (shutdown and destroy both come here). */
static void server_stop_accepting(ak_rpc_server_t *s) {
  pthread_mutex_lock(&s->mu);
  s->shutting_down = 1;
  int first = !s->shutdown_notified;
  s->shutdown_notified = 1;
  pthread_mutex_unlock(&s->mu);
  if (first) grpc_server_shutdown_and_notify(s->server, s->cq, &s->shutdown_tag);
}

ak_status_t ak_rpc_server_shutdown(ak_rpc_server_t *s, int64_t grace_ms, ak_err_t *err) {
  if (!s) return AK_OK;
  server_stop_accepting(s);
  if (!s->started || s->n_threads < 1) return AK_OK; /* destroy collects the tag */
  struct timespec until = ak_time_realtime_after_ms(grace_ms);
  /* Not gRPC's shutdown notification: that also waits for every client connection
   * to go, which idle clients take their time over. A call is freed once its status
   * went out and the client closed the stream. */
  pthread_mutex_lock(&s->mu);
  while (s->n_calls > 0 && pthread_cond_timedwait(&s->cv, &s->mu, &until) == 0) {
  }
  int done = s->n_calls == 0;
  pthread_mutex_unlock(&s->mu);
  if (!done)
    return ak_err_set(err, AK_ERR_TIMEOUT, "ak_rpc_server_shutdown: calls still open after %" PRId64 " ms",
                      grace_ms);
  return AK_OK;
}

void ak_rpc_server_destroy(ak_rpc_server_t *s) {
  if (!s) return;
  server_stop_accepting(s);
  grpc_server_cancel_all_calls(s->server);
  if (s->started && s->n_threads > 0) {
    /* Pending requests fail, calls see cancellation, handlers finish: wait for all. */
    pthread_mutex_lock(&s->mu);
    int waited_s = 0;
    while (!s->shutdown_done || s->n_live > 0) {
      struct timespec until;
      clock_gettime(CLOCK_REALTIME, &until);
      until.tv_sec += 1;
      if (pthread_cond_timedwait(&s->cv, &s->mu, &until) == ETIMEDOUT && ++waited_s % 5 == 0)
        /* A handler that never calls ak_rpc_writer_finish holds destroy here. */
        AK_LOG_WARN("waiting %d s for %d calls to finish (shutdown notified: %d)", waited_s, s->n_live,
                    s->shutdown_done);
    }
    pthread_mutex_unlock(&s->mu);
    grpc_completion_queue_shutdown(s->cq);
    for (int i = 0; i < s->n_threads; i++) pthread_join(s->threads[i], NULL);
  } else {
    /* Never started (or no thread): the only event is the shutdown tag. */
    grpc_completion_queue_shutdown(s->cq);
    while (grpc_completion_queue_next(s->cq, gpr_inf_future(GPR_CLOCK_MONOTONIC), NULL).type != GRPC_QUEUE_SHUTDOWN) {
    }
  }
  grpc_server_destroy(s->server);
  grpc_completion_queue_destroy(s->cq);
  for (int i = 0; i < s->n_methods; i++) free((char *)s->methods[i].path);
  free(s->methods);
  free(s->threads);
  pthread_cond_destroy(&s->cv);
  pthread_mutex_destroy(&s->mu);
  free(s);
  grpc_shutdown();
}

/* --- the writer --- */

ak_status_t ak_rpc_writer_write(ak_rpc_writer_t *w, const ProtobufCMessage *msg, ak_err_t *err) {
  if (!w || !msg) return AK_ERR(err, AK_ERR_INVALID_ARG, "NULL %s", !w ? "writer" : "message");
  if (atomic_load(&w->cancelled)) return AK_ERR(err, AK_ERR_PEER, "%s: call cancelled", w->method->path);
  grpc_byte_buffer *buf = NULL;
  AK_TRY(pb_buf_pack(msg, w->method->max_response_bytes, err, &buf));
  rpc_out_t *o = malloc(sizeof *o);
  if (!o) {
    grpc_byte_buffer_destroy(buf);
    return AK_ERR(err, AK_ERR_NO_MEMORY, "queue node");
  }
  o->buf = buf;
  o->next = NULL;
  pthread_mutex_lock(&w->mu);
  ak_status_t st = AK_OK;
  if (w->finish_requested)
    st = AK_ERR(err, AK_ERR_INVALID_ARG, "%s: write after finish", w->method->path);
  else if (w->method->kind == AK_RPC_UNARY && w->n_writes > 0)
    st = AK_ERR(err, AK_ERR_INVALID_ARG, "%s: a unary call takes one response", w->method->path);
  if (st != AK_OK) {
    pthread_mutex_unlock(&w->mu);
    grpc_byte_buffer_destroy(buf);
    free(o);
    return st;
  }
  w->n_writes++;
  if (w->q_tail)
    w->q_tail->next = o;
  else
    w->q_head = o;
  w->q_tail = o;
  call_pump_locked(w);
  pthread_mutex_unlock(&w->mu);
  return AK_OK;
}

int ak_rpc_writer_cancelled(const ak_rpc_writer_t *w) {
  return atomic_load(&((ak_rpc_writer_t *)w)->cancelled);
}

int ak_rpc_writer_deadline_passed(const ak_rpc_writer_t *w) {
  /* details and arrived_at are written before the handler ran, then fixed. */
  gpr_timespec d = w->details.deadline;
  if (gpr_time_cmp(d, gpr_inf_future(d.clock_type)) == 0) return 0;
  /* The client's deadline timer cancels the call, and that cancel reaches us before
   * our own copy of the deadline, which is the header's timeout counted from when the
   * call arrived: later by the header's transit (milliseconds on a loaded host, seen 5)
   * and gRPC's rounding of the timeout. So a deadline counts as passed this much early:
   * 20 ms plus 5% of the timeout the call arrived with. */
  gpr_timespec timeout = gpr_time_sub(d, w->arrived_at);
  double timeout_ms = (double)timeout.tv_sec * 1e3 + timeout.tv_nsec / 1e6; /* no int32 cap */
  int64_t slack_ms = 20 + (int64_t)(timeout_ms > 0 ? timeout_ms / 20 : 0);
  gpr_timespec early = gpr_time_sub(d, gpr_time_from_millis(slack_ms, GPR_TIMESPAN));
  return gpr_time_cmp(gpr_now(d.clock_type), early) >= 0;
}

void ak_rpc_writer_finish(ak_rpc_writer_t *w, ak_status_t st, const char *msg) {
  if (!w) return;
  pthread_mutex_lock(&w->mu);
  if (w->finish_requested) { /* a handler bug; keep the first status */
    AK_LOG_ERROR("%s: finished twice", w->method->path);
    pthread_mutex_unlock(&w->mu);
    return;
  }
  grpc_status_code code = pb_status_to_grpc(st);
  if (code == GRPC_STATUS_OK && w->method->kind == AK_RPC_UNARY && w->n_writes == 0)
    call_finish_locked(w, GRPC_STATUS_INTERNAL, "handler finished without a response");
  else
    call_finish_locked(w, code, msg);
  call_release_locked(w);
}
