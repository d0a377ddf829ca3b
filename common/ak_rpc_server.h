/* ak_rpc_server: a gRPC C-core server for unary and server-streaming methods, the one
 * call state machine both processes use (issue 5: the coordinator's Generation, the
 * worker's Worker). protoc-c generates messages only, so method paths and dispatch are
 * ours: methods are registered by full path ("/arkvale.v1.Worker/Health").
 *
 * Per call (all on the completion-queue threads, tags drive the transitions):
 *
 *   request_call --> RECV_CLOSE_ON_SERVER (outstanding for the whole call: it is how
 *        |           client cancellation and deadlines are seen)
 *        +-- unknown path ---------------------------------> status UNIMPLEMENTED
 *        v
 *   RECV_MESSAGE --> unpack (pb_buf) -- fails -------------> status from pb_status:
 *        |                              over max_request_bytes: RESOURCE_EXHAUSTED
 *        v                              (gRPC's own code for over-size messages),
 *   handler(req, writer)                unparsable: INVALID_ARGUMENT "cannot parse .."
 *        |   ak_rpc_writer_write (any thread) queues a packed message; one
 *        |   SEND_MESSAGE batch is outstanding at a time, so messages go out in order
 *        v
 *   ak_rpc_writer_finish --> SEND_STATUS_FROM_SERVER after the queued messages
 *        v
 *   the call is freed when no batch is outstanding and the handler has finished.
 *
 * Not for: TLS, client streaming, metadata. Thread-safety: register before start; the
 * writer functions may be called from any thread (one call's writer by one thread at a
 * time). Handlers run on a completion-queue thread and must not block: hand slow work
 * to another thread and write / finish from there. */
#ifndef AK_RPC_SERVER_H
#define AK_RPC_SERVER_H

#include <stddef.h>

#include <protobuf-c/protobuf-c.h>

#include "ak_status.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct ak_rpc_server ak_rpc_server_t;
/* One call as its handler sees it; valid from the handler's invocation until its
 * ak_rpc_writer_finish. */
typedef struct ak_rpc_writer ak_rpc_writer_t;

typedef enum { AK_RPC_UNARY = 0, AK_RPC_SERVER_STREAMING = 1 } ak_rpc_kind_t;

/* Called once per call with the parsed request (owned by the call, valid until
 * finish). The handler, or a thread it hands the writer to, must call
 * ak_rpc_writer_finish exactly once: ak_rpc_server_destroy waits for it. */
typedef void (*ak_rpc_handler_fn)(void *user, const ProtobufCMessage *req, ak_rpc_writer_t *w);

typedef struct {
  const char *path;                             /* "/pkg.Service/Method"; copied */
  ak_rpc_kind_t kind;
  const ProtobufCMessageDescriptor *request_desc;
  size_t max_request_bytes;                     /* larger requests: RESOURCE_EXHAUSTED
                                                   (gRPC core refuses > 4 MiB itself, with
                                                   the same code) */
  size_t max_response_bytes;                    /* per message; larger: the write fails */
  ak_rpc_handler_fn handler;
  void *user;
} ak_rpc_method_t;

/* Binds `addr` ("127.0.0.1:0" picks a free port, see ak_rpc_server_port) without
 * credentials. `n_threads` completion-queue threads (>= 1) start at
 * ak_rpc_server_start. Calls grpc_init (balanced by destroy). */
ak_status_t ak_rpc_server_create(const char *addr, int n_threads, ak_err_t *err,
                                 ak_rpc_server_t **srv_p);

/* Adds a method; only before start. AK_ERR_INVALID_ARG for a missing field or a path
 * registered twice. */
ak_status_t ak_rpc_server_register(ak_rpc_server_t *srv, const ak_rpc_method_t *m, ak_err_t *err);

/* Starts serving. */
ak_status_t ak_rpc_server_start(ak_rpc_server_t *srv, ak_err_t *err);

/* The bound TCP port. */
int ak_rpc_server_port(const ak_rpc_server_t *srv);

/* Graceful stop, before destroy: stops accepting new calls (clients see UNAVAILABLE)
 * and waits up to grace_ms for the calls in progress to end on their own, their last
 * messages and statuses delivered and the streams closed, so that destroy
 * cancels only what is still open. AK_OK when every call ended, AK_ERR_TIMEOUT
 * otherwise. Must not be called from a handler; at most once. Accepts NULL. */
ak_status_t ak_rpc_server_shutdown(ak_rpc_server_t *srv, int64_t grace_ms, ak_err_t *err);

/* Stops accepting, cancels every call (clients see CANCELLED or UNAVAILABLE; writers
 * report ak_rpc_writer_cancelled), waits until every handler has finished its call,
 * drains the completion queue, joins the threads and frees everything. Must not be
 * called from a handler. Accepts NULL. */
void ak_rpc_server_destroy(ak_rpc_server_t *srv);

/* Queues `msg` (packed now: the caller keeps ownership) to be sent after the ones
 * queued before it. A unary call takes exactly one. Returns AK_ERR_PEER when the
 * call is cancelled (stop producing and finish), AK_ERR_OVER_BUDGET when it packs to
 * more than max_response_bytes, AK_ERR_INVALID_ARG for a second unary response.
 * The queue is not bounded: a producer that outruns the network should pace itself. */
ak_status_t ak_rpc_writer_write(ak_rpc_writer_t *w, const ProtobufCMessage *msg, ak_err_t *err);

/* Non-zero once the client cancelled, its deadline passed, the connection broke or the
 * server is shutting down: a streaming handler polls it between messages. */
int ak_rpc_writer_cancelled(const ak_rpc_writer_t *w);
/* Non-zero when the call has a deadline and it has passed: tells a call ended by its
 * deadline (finish it AK_ERR_TIMEOUT) from one its client cancelled. The client's own
 * timer cancels the call a little before the server's copy of the deadline passes, so
 * "passed" starts 20 ms plus 5% of the call's timeout early. Any thread. */
int ak_rpc_writer_deadline_passed(const ak_rpc_writer_t *w);

/* Ends the call with status pb_status_to_grpc(st) and `msg` (may be NULL; copied),
 * sent after the queued messages. A unary call finished AK_OK without a response is
 * sent as INTERNAL. After this call `w` is no longer the caller's. */
void ak_rpc_writer_finish(ak_rpc_writer_t *w, ak_status_t st, const char *msg);

#ifdef __cplusplus
}
#endif
#endif
