/* ak_rpc_client: one blocking call = one completion queue and three batches (send the
 * request and half-close; receive the status; receive messages one at a time), driven
 * until all three are done. Unary calls are streams that must carry one message. */
#include "ak_rpc_client.h"

#include <grpc/grpc.h>
#include <grpc/grpc_security.h>
#include <grpc/support/alloc.h>
#include <grpc/support/time.h>
#include <stdlib.h>
#include <string.h>

#include "pb_buf.h"

struct ak_rpc_client {
  grpc_channel *channel;
};

ak_status_t ak_rpc_client_create(const char *target, ak_err_t *err, ak_rpc_client_t **client_p) {
  if (!target || !client_p) return AK_ERR(err, AK_ERR_INVALID_ARG, "NULL %s", !target ? "target" : "client_p");
  ak_rpc_client_t *c = calloc(1, sizeof *c);
  if (!c) return AK_ERR(err, AK_ERR_NO_MEMORY, "client struct");
  grpc_init();
  grpc_channel_credentials *creds = grpc_insecure_credentials_create();
  c->channel = grpc_channel_create(target, creds, NULL);
  grpc_channel_credentials_release(creds);
  if (!c->channel) {
    grpc_shutdown();
    free(c);
    return AK_ERR(err, AK_ERR_INVALID_ARG, "cannot create a channel to %s", target);
  }
  *client_p = c;
  return AK_OK;
}

void ak_rpc_client_destroy(ak_rpc_client_t *c) {
  if (!c) return;
  grpc_channel_destroy(c->channel);
  free(c);
  grpc_shutdown();
}

ak_status_t ak_rpc_status_from_grpc(grpc_status_code code) {
  switch (code) {
    case GRPC_STATUS_OK: return AK_OK;
    case GRPC_STATUS_INVALID_ARGUMENT: return AK_ERR_INVALID_ARG;
    case GRPC_STATUS_NOT_FOUND: return AK_ERR_NOT_FOUND;
    case GRPC_STATUS_OUT_OF_RANGE: return AK_ERR_RANGE;
    case GRPC_STATUS_UNIMPLEMENTED: return AK_ERR_UNSUPPORTED;
    case GRPC_STATUS_RESOURCE_EXHAUSTED: return AK_ERR_OVER_BUDGET;
    case GRPC_STATUS_DEADLINE_EXCEEDED: return AK_ERR_TIMEOUT;
    case GRPC_STATUS_ALREADY_EXISTS: return AK_ERR_EXISTS;
    case GRPC_STATUS_FAILED_PRECONDITION: return AK_ERR_PRECONDITION;
    case GRPC_STATUS_UNAVAILABLE:
    case GRPC_STATUS_CANCELLED: return AK_ERR_PEER;
    default: return AK_ERR_INTERNAL;
  }
}

enum { TAG_SEND = 1, TAG_STATUS = 2, TAG_RECV = 3 };

typedef struct {
  const ProtobufCMessageDescriptor *desc;
  size_t max_bytes;
  ak_rpc_on_msg_fn on_msg;
  void *user;
  ProtobufCMessage **keep_p; /* unary: keep the one message instead of a callback */
  int n_msgs;
  ak_status_t local_st; /* a failure found here (parse, a second unary message) */
  ak_err_t local_err;
} rpc_recv_t;

/* Handles one received message; returns non-zero to cancel the call. */
static int client_on_msg(rpc_recv_t *r, grpc_byte_buffer *buf) {
  ProtobufCMessage *m = NULL;
  r->n_msgs++;
  if (r->keep_p && r->n_msgs > 1) {
    r->local_st = AK_ERR(&r->local_err, AK_ERR_INTERNAL, "a unary call got a second response");
    return 1;
  }
  ak_status_t st = pb_buf_unpack(buf, r->desc, r->max_bytes, &r->local_err, &m);
  if (st != AK_OK) {
    r->local_st = st;
    return 1;
  }
  if (r->keep_p) {
    *r->keep_p = m;
    return 0;
  }
  int stop = r->on_msg ? r->on_msg(r->user, m) : 0;
  pb_msg_free(m);
  return stop;
}

static ak_status_t client_call(ak_rpc_client_t *c, const char *method, grpc_byte_buffer *req, int64_t deadline_ms,
                               rpc_recv_t *r, ak_err_t *err, grpc_status_code *code_p) {
  if (code_p) *code_p = GRPC_STATUS_INTERNAL;
  if (!c || !method || !req || !r->desc)
    return AK_ERR(err, AK_ERR_INVALID_ARG, "NULL client, method, request or descriptor");
  gpr_timespec deadline = gpr_inf_future(GPR_CLOCK_REALTIME);
  if (deadline_ms > 0)
    deadline = gpr_time_add(gpr_now(GPR_CLOCK_REALTIME), gpr_time_from_millis(deadline_ms, GPR_TIMESPAN));
  grpc_completion_queue *cq = grpc_completion_queue_create_for_next(NULL);
  grpc_slice path = grpc_slice_from_copied_string(method);
  grpc_call *call = grpc_channel_create_call(c->channel, NULL, GRPC_PROPAGATE_DEFAULTS, cq, path, NULL, deadline, NULL);
  grpc_slice_unref(path);

  grpc_metadata_array initial_md, trailing_md;
  grpc_metadata_array_init(&initial_md);
  grpc_metadata_array_init(&trailing_md);
  grpc_status_code code = GRPC_STATUS_UNKNOWN;
  grpc_slice details = grpc_empty_slice();
  grpc_byte_buffer *recv_buf = NULL;
  int n_outstanding = 0, recv_outstanding = 0, cancelled = 0;

  grpc_op ops[4];
  memset(ops, 0, sizeof ops);
  ops[0].op = GRPC_OP_SEND_INITIAL_METADATA;
  ops[1].op = GRPC_OP_SEND_MESSAGE;
  ops[1].data.send_message.send_message = req;
  ops[2].op = GRPC_OP_SEND_CLOSE_FROM_CLIENT;
  ops[3].op = GRPC_OP_RECV_INITIAL_METADATA;
  ops[3].data.recv_initial_metadata.recv_initial_metadata = &initial_md;
  if (grpc_call_start_batch(call, ops, 4, (void *)(intptr_t)TAG_SEND, NULL) == GRPC_CALL_OK) n_outstanding++;
  memset(ops, 0, sizeof ops);
  ops[0].op = GRPC_OP_RECV_STATUS_ON_CLIENT;
  ops[0].data.recv_status_on_client.trailing_metadata = &trailing_md;
  ops[0].data.recv_status_on_client.status = &code;
  ops[0].data.recv_status_on_client.status_details = &details;
  if (grpc_call_start_batch(call, ops, 1, (void *)(intptr_t)TAG_STATUS, NULL) == GRPC_CALL_OK) n_outstanding++;
  memset(ops, 0, sizeof ops);
  ops[0].op = GRPC_OP_RECV_MESSAGE;
  ops[0].data.recv_message.recv_message = &recv_buf;
  if (grpc_call_start_batch(call, ops, 1, (void *)(intptr_t)TAG_RECV, NULL) == GRPC_CALL_OK) {
    n_outstanding++;
    recv_outstanding = 1;
  }

  /* Every batch completes exactly once, whatever the call's fate. */
  while (n_outstanding > 0) {
    grpc_event ev = grpc_completion_queue_next(cq, gpr_inf_future(GPR_CLOCK_REALTIME), NULL);
    if (ev.type != GRPC_OP_COMPLETE) continue;
    n_outstanding--;
    if ((intptr_t)ev.tag != TAG_RECV) continue;
    recv_outstanding = 0;
    if (!ev.success || !recv_buf) continue; /* end of stream */
    int stop = client_on_msg(r, recv_buf);
    grpc_byte_buffer_destroy(recv_buf);
    recv_buf = NULL;
    if (stop && !cancelled) {
      cancelled = 1;
      if (r->local_st != AK_OK)
        grpc_call_cancel_with_status(call, GRPC_STATUS_CANCELLED, r->local_err.msg, NULL);
      else
        grpc_call_cancel(call, NULL);
    }
    if (!cancelled && grpc_call_start_batch(call, ops, 1, (void *)(intptr_t)TAG_RECV, NULL) == GRPC_CALL_OK) {
      n_outstanding++;
      recv_outstanding = 1;
    }
  }
  (void)recv_outstanding;

  char *text = grpc_slice_to_c_string(details);
  ak_status_t st;
  if (r->local_st != AK_OK) {
    code = GRPC_STATUS_INTERNAL;
    if (r->local_st == AK_ERR_OVER_BUDGET) code = GRPC_STATUS_RESOURCE_EXHAUSTED;
    st = ak_err_set(err, r->local_st, "%s: %s", method, r->local_err.msg);
  } else if (code != GRPC_STATUS_OK) {
    st = ak_err_set(err, ak_rpc_status_from_grpc(code), "%s: gRPC status %d: %s", method, (int)code, text);
  } else if (r->keep_p && r->n_msgs != 1) {
    code = GRPC_STATUS_INTERNAL;
    st = ak_err_set(err, AK_ERR_INTERNAL, "%s: status OK without a response", method);
  } else {
    st = AK_OK;
  }
  if (code_p) *code_p = code;
  gpr_free(text);
  grpc_slice_unref(details);
  grpc_metadata_array_destroy(&initial_md);
  grpc_metadata_array_destroy(&trailing_md);
  grpc_call_unref(call);
  grpc_completion_queue_shutdown(cq);
  while (grpc_completion_queue_next(cq, gpr_inf_future(GPR_CLOCK_REALTIME), NULL).type != GRPC_QUEUE_SHUTDOWN) {
  }
  grpc_completion_queue_destroy(cq);
  return st;
}

ak_status_t ak_rpc_client_call_bytes(ak_rpc_client_t *c, const char *method, grpc_byte_buffer *req,
                                     const ProtobufCMessageDescriptor *resp_desc, size_t max_response_bytes,
                                     int64_t deadline_ms, ak_rpc_on_msg_fn on_msg, void *user, ak_err_t *err,
                                     grpc_status_code *code_p) {
  rpc_recv_t r = {resp_desc, max_response_bytes, on_msg, user, NULL, 0, AK_OK, {AK_OK, ""}};
  return client_call(c, method, req, deadline_ms, &r, err, code_p);
}

ak_status_t ak_rpc_client_stream(ak_rpc_client_t *c, const char *method, const ProtobufCMessage *req,
                                 const ProtobufCMessageDescriptor *resp_desc, size_t max_response_bytes,
                                 int64_t deadline_ms, ak_rpc_on_msg_fn on_msg, void *user, ak_err_t *err,
                                 grpc_status_code *code_p) {
  if (code_p) *code_p = GRPC_STATUS_INVALID_ARGUMENT;
  grpc_byte_buffer *buf = NULL;
  /* The request limit is the server's business; SIZE_MAX only refuses nothing here. */
  AK_TRY(pb_buf_pack(req, SIZE_MAX, err, &buf));
  ak_status_t st = ak_rpc_client_call_bytes(c, method, buf, resp_desc, max_response_bytes, deadline_ms, on_msg, user,
                                            err, code_p);
  grpc_byte_buffer_destroy(buf);
  return st;
}

ak_status_t ak_rpc_client_unary(ak_rpc_client_t *c, const char *method, const ProtobufCMessage *req,
                                const ProtobufCMessageDescriptor *resp_desc, size_t max_response_bytes,
                                int64_t deadline_ms, ak_err_t *err, grpc_status_code *code_p,
                                ProtobufCMessage **resp_p) {
  if (code_p) *code_p = GRPC_STATUS_INVALID_ARGUMENT;
  if (!resp_p) return AK_ERR(err, AK_ERR_INVALID_ARG, "NULL resp_p");
  grpc_byte_buffer *buf = NULL;
  AK_TRY(pb_buf_pack(req, SIZE_MAX, err, &buf));
  ProtobufCMessage *resp = NULL;
  rpc_recv_t r = {resp_desc, max_response_bytes, NULL, NULL, &resp, 0, AK_OK, {AK_OK, ""}};
  ak_status_t st = client_call(c, method, buf, deadline_ms, &r, err, code_p);
  grpc_byte_buffer_destroy(buf);
  if (st != AK_OK) {
    pb_msg_free(resp);
    return st;
  }
  *resp_p = resp;
  return AK_OK;
}
