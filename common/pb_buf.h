/* pb_buf: protobuf-c messages <-> gRPC core byte buffers, the one place where RPC
 * payloads are serialized on both sides of the process split (../shared/DESIGN.md).
 *
 * Every payload has a size limit given by the caller (the same number it gives gRPC
 * as its max send/receive message length), so a hostile or runaway message is refused
 * before it is copied or parsed. A failure names the message type and what is wrong:
 * "cannot parse arkvale.v1.StepRequest: field 3 (new_seqs) ... truncated".
 *
 * Memory: unpacked messages are allocated through ak_host_alloc (accounted and subject
 * to ak_alloc_fail_after), so a test can assert that nothing is outstanding after
 * pb_msg_free. Free them with pb_msg_free only, never with protobuf-c's default
 * allocator. Packed buffers are gRPC's (grpc_byte_buffer_destroy).
 *
 * gRPC must be initialised (grpc_init) before pb_buf_* is called.
 * Not for: the call state machine, method paths, status codes on the wire.
 * Thread-safety: every function is thread-safe (no shared state). */
#ifndef PB_BUF_H
#define PB_BUF_H

#include <stddef.h>
#include <stdint.h>

#include <grpc/byte_buffer.h>
#include <protobuf-c/protobuf-c.h>

#include "ak_status.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Packs `msg` (any protobuf-c message, e.g. &req->base) into a new byte buffer owned
 * by the caller. Returns AK_ERR_INVALID_ARG for a NULL argument or a message that fails
 * protobuf_c_message_check (a NULL where a value is needed), AK_ERR_OVER_BUDGET when it
 * packs to more than max_bytes (the message says both sizes), AK_ERR_INTERNAL when
 * protobuf-c writes a size other than the one it announced. `*buf_p` is written only on
 * success. */
ak_status_t pb_buf_pack(const ProtobufCMessage *msg, size_t max_bytes, ak_err_t *err,
                        grpc_byte_buffer **buf_p);

/* Unpacks the bytes of `buf` (not consumed: the caller still destroys it) as a message
 * of type `desc`, e.g. &arkvale__v1__step_request__descriptor. Returns
 * AK_ERR_OVER_BUDGET when the buffer holds more than max_bytes (refused before it is
 * read), AK_ERR_INVALID_ARG "cannot parse <full name>: <why>" for bytes that are not
 * such a message (truncated, a bad tag or wire type, a malformed nested message),
 * AK_ERR_NO_MEMORY when allocation fails. Fields the reader does not know are kept as
 * unknown fields and otherwise ignored (a newer writer talking to an older reader).
 * On success `*msg_p` gets the message, freed by pb_msg_free; written only on success. */
ak_status_t pb_buf_unpack(grpc_byte_buffer *buf, const ProtobufCMessageDescriptor *desc,
                          size_t max_bytes, ak_err_t *err, ProtobufCMessage **msg_p);

/* As pb_buf_unpack, from n_bytes bytes at `data` (may be NULL when n_bytes is 0). */
ak_status_t pb_msg_unpack(const ProtobufCMessageDescriptor *desc, const uint8_t *data,
                          size_t n_bytes, size_t max_bytes, ak_err_t *err,
                          ProtobufCMessage **msg_p);

/* Frees a message from pb_buf_unpack or pb_msg_unpack; accepts NULL. */
void pb_msg_free(ProtobufCMessage *msg);

#ifdef __cplusplus
}
#endif
#endif
