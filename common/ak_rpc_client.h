/* ak_rpc_client: blocking gRPC C-core calls (unary and server-streaming) over one
 * insecure channel, the client half of ak_rpc_server.h: the coordinator calls workers
 * with it, tests and tools call the coordinator.
 *
 * Each call has its own completion queue, so calls on one client run concurrently from
 * any number of threads. A call's outcome is the server's gRPC status: OK becomes
 * AK_OK; any other code becomes an ak_status_t (below) with the status text in
 * err->msg, and the code itself in *code_p when asked.
 * Not for: TLS, metadata, client streaming. Thread-safety: all functions but destroy. */
#ifndef AK_RPC_CLIENT_H
#define AK_RPC_CLIENT_H

#include <stddef.h>
#include <stdint.h>

#include <grpc/byte_buffer.h>
#include <grpc/status.h>
#include <protobuf-c/protobuf-c.h>

#include "ak_status.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct ak_rpc_client ak_rpc_client_t;

/* A channel to `target` ("127.0.0.1:50051"); connects lazily at the first call.
 * Calls grpc_init (balanced by destroy). */
ak_status_t ak_rpc_client_create(const char *target, ak_err_t *err, ak_rpc_client_t **client_p);

/* Accepts NULL. No call may be in progress. */
void ak_rpc_client_destroy(ak_rpc_client_t *client);

/* The ak_status_t for a gRPC code, the inverse of pb_status_to_grpc where it is one
 * to one: INVALID_ARGUMENT -> INVALID_ARG, NOT_FOUND, OUT_OF_RANGE -> RANGE,
 * UNIMPLEMENTED -> UNSUPPORTED, RESOURCE_EXHAUSTED -> OVER_BUDGET, DEADLINE_EXCEEDED
 * -> TIMEOUT, ALREADY_EXISTS -> EXISTS, FAILED_PRECONDITION -> PRECONDITION,
 * UNAVAILABLE and CANCELLED -> PEER (the call may be retried elsewhere: a peer that
 * cancels our call is going away), everything else -> INTERNAL. */
ak_status_t ak_rpc_status_from_grpc(grpc_status_code code);

/* Called per streamed message (owned by the call: valid during the callback only).
 * Returning non-zero cancels the call (it then ends CANCELLED). */
typedef int (*ak_rpc_on_msg_fn)(void *user, const ProtobufCMessage *msg);

/* Sends `req` to `method` ("/arkvale.v1.Worker/Health") and waits for the response
 * (at most max_response_bytes, else RESOURCE_EXHAUSTED locally) or `deadline_ms`
 * (<= 0: none). On success `*resp_p` gets a message of type resp_desc, freed by
 * pb_msg_free. `code_p` (may be NULL) gets the call's gRPC code on every return. */
ak_status_t ak_rpc_client_unary(ak_rpc_client_t *client, const char *method, const ProtobufCMessage *req,
                                const ProtobufCMessageDescriptor *resp_desc, size_t max_response_bytes,
                                int64_t deadline_ms, ak_err_t *err, grpc_status_code *code_p,
                                ProtobufCMessage **resp_p);

/* Sends `req` and calls on_msg for each response in order until the stream ends; the
 * return is the final status as above. */
ak_status_t ak_rpc_client_stream(ak_rpc_client_t *client, const char *method, const ProtobufCMessage *req,
                                 const ProtobufCMessageDescriptor *resp_desc, size_t max_response_bytes,
                                 int64_t deadline_ms, ak_rpc_on_msg_fn on_msg, void *user, ak_err_t *err,
                                 grpc_status_code *code_p);

/* As ak_rpc_client_stream with pre-packed request bytes (not consumed), e.g. to
 * forward a request without parsing it, or to test a server with malformed bytes.
 * `on_msg` may be NULL. */
ak_status_t ak_rpc_client_call_bytes(ak_rpc_client_t *client, const char *method, grpc_byte_buffer *req,
                                     const ProtobufCMessageDescriptor *resp_desc, size_t max_response_bytes,
                                     int64_t deadline_ms, ak_rpc_on_msg_fn on_msg, void *user, ak_err_t *err,
                                     grpc_status_code *code_p);

#ifdef __cplusplus
}
#endif
#endif
