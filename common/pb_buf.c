/* pb_buf: protobuf-c messages <-> gRPC byte buffers, with size limits, accounted
 * allocation, and a wire-format diagnosis that says why bytes did not parse. */
#include "pb_buf.h"

#include <grpc/byte_buffer_reader.h>
#include <grpc/slice.h>
#include <inttypes.h>
#include <stdio.h>
#include <string.h>

#include "ak_alloc.h"

/* --- allocation: ak_host_alloc with the size in a header, since protobuf-c's free
 * does not pass it back ---
 *
 *   ak_host_alloc block:  [ size_t n_bytes | pad ][ n_bytes for protobuf-c ... ]
 *                         <---- 16 bytes ------>^ returned pointer (16-aligned)   */
#define PB_ALLOC_HEADER_BYTES 16

typedef struct {
  int failed; /* an allocation of this unpack failed */
} pb_alloc_state_t;

static void *pb_alloc(void *data, size_t n_bytes) {
  uint8_t *base = NULL;
  if (n_bytes <= SIZE_MAX - PB_ALLOC_HEADER_BYTES) base = ak_host_alloc(n_bytes + PB_ALLOC_HEADER_BYTES, 0);
  if (!base) {
    if (data) ((pb_alloc_state_t *)data)->failed = 1;
    return NULL;
  }
  memcpy(base, &n_bytes, sizeof n_bytes);
  return base + PB_ALLOC_HEADER_BYTES;
}

static void pb_free(void *data, void *p) {
  (void)data;
  if (!p) return;
  uint8_t *base = (uint8_t *)p - PB_ALLOC_HEADER_BYTES;
  size_t n_bytes;
  memcpy(&n_bytes, base, sizeof n_bytes);
  ak_host_free(base, n_bytes + PB_ALLOC_HEADER_BYTES);
}

/* Frees need no state: one allocator serves every message. */
static ProtobufCAllocator pb_free_allocator = {pb_alloc, pb_free, NULL};

void pb_msg_free(ProtobufCMessage *msg) {
  if (msg) protobuf_c_message_free_unpacked(msg, &pb_free_allocator);
}

static int pb_desc_ok(const ProtobufCMessageDescriptor *desc) {
  return desc && desc->magic == PROTOBUF_C__MESSAGE_DESCRIPTOR_MAGIC;
}

/* --- packing --- */

ak_status_t pb_buf_pack(const ProtobufCMessage *msg, size_t max_bytes, ak_err_t *err,
                        grpc_byte_buffer **buf_p) {
  if (!msg || !buf_p) return AK_ERR(err, AK_ERR_INVALID_ARG, "NULL %s", !msg ? "message" : "output");
  if (!pb_desc_ok(msg->descriptor))
    return AK_ERR(err, AK_ERR_INVALID_ARG, "the message has no valid protobuf-c descriptor");
  const char *name = msg->descriptor->name;
  if (!protobuf_c_message_check(msg))
    return AK_ERR(err, AK_ERR_INVALID_ARG,
                  "cannot pack %s: it fails protobuf_c_message_check (a NULL string, message or "
                  "array where the field says a value is present)",
                  name);
  size_t n_bytes = protobuf_c_message_get_packed_size(msg);
  if (n_bytes > max_bytes)
    return AK_ERR(err, AK_ERR_OVER_BUDGET, "%s packs to %zu bytes, over the limit of %zu bytes", name,
                  n_bytes, max_bytes);
  grpc_slice slice = grpc_slice_malloc(n_bytes);
  size_t n_written = protobuf_c_message_pack(msg, GRPC_SLICE_START_PTR(slice));
  if (n_written != n_bytes) {
    grpc_slice_unref(slice);
    return AK_ERR(err, AK_ERR_INTERNAL, "%s: protobuf-c announced %zu bytes and wrote %zu", name,
                  n_bytes, n_written);
  }
  grpc_byte_buffer *buf = grpc_raw_byte_buffer_create(&slice, 1); /* takes its own ref */
  grpc_slice_unref(slice);
  *buf_p = buf;
  return AK_OK;
}

/* --- why bytes do not parse ---
 * Run only after protobuf-c refused them (so it is never stricter than the parser):
 * walks the wire format (tag, then a payload by wire type), descending into fields
 * whose descriptor says they are messages, and writes the first problem to `why`.
 * Returns 1 when it found one. */
#define PB_DIAG_MAX_DEPTH 32
#define PB_FIELD_NUMBER_MAX 536870911 /* 2^29 - 1, the wire format's largest */

enum { PB_WT_VARINT = 0, PB_WT_64BIT = 1, PB_WT_LEN = 2, PB_WT_SGROUP = 3, PB_WT_EGROUP = 4, PB_WT_32BIT = 5 };

/* 0: ok; -1: the bytes end inside it; -2: longer than 10 bytes. */
static int pb_read_varint(const uint8_t *p, size_t n, size_t *pos, uint64_t *v_p) {
  uint64_t v = 0;
  for (int i = 0; i < 10; i++) {
    if (*pos >= n) return -1;
    uint8_t b = p[(*pos)++];
    v |= (uint64_t)(b & 0x7f) << (7 * i);
    if (!(b & 0x80)) {
      *v_p = v;
      return 0;
    }
  }
  return -2;
}

static int pb_wire_type_of(ProtobufCType type) {
  switch (type) {
    case PROTOBUF_C_TYPE_INT32:
    case PROTOBUF_C_TYPE_SINT32:
    case PROTOBUF_C_TYPE_UINT32:
    case PROTOBUF_C_TYPE_INT64:
    case PROTOBUF_C_TYPE_SINT64:
    case PROTOBUF_C_TYPE_UINT64:
    case PROTOBUF_C_TYPE_BOOL:
    case PROTOBUF_C_TYPE_ENUM: return PB_WT_VARINT;
    case PROTOBUF_C_TYPE_SFIXED32:
    case PROTOBUF_C_TYPE_FIXED32:
    case PROTOBUF_C_TYPE_FLOAT: return PB_WT_32BIT;
    case PROTOBUF_C_TYPE_SFIXED64:
    case PROTOBUF_C_TYPE_FIXED64:
    case PROTOBUF_C_TYPE_DOUBLE: return PB_WT_64BIT;
    case PROTOBUF_C_TYPE_STRING:
    case PROTOBUF_C_TYPE_BYTES:
    case PROTOBUF_C_TYPE_MESSAGE: return PB_WT_LEN;
  }
  return -1;
}

static const char *pb_varint_problem(int rc) { return rc == -1 ? "truncated varint" : "varint longer than 10 bytes"; }

/* A packed repeated scalar's payload: whole elements only. */
static int pb_diagnose_packed(const ProtobufCFieldDescriptor *f, const uint8_t *p, size_t n, size_t base,
                              char *why, size_t why_n) {
  int wt = pb_wire_type_of(f->type);
  if (wt == PB_WT_32BIT || wt == PB_WT_64BIT) {
    size_t elem_bytes = wt == PB_WT_32BIT ? 4 : 8;
    if (n % elem_bytes) {
      snprintf(why, why_n, "packed %zu bytes at byte %zu are not whole %zu-byte elements", n, base, elem_bytes);
      return 1;
    }
    return 0;
  }
  size_t pos = 0;
  while (pos < n) {
    uint64_t v;
    size_t at = pos;
    int rc = pb_read_varint(p, n, &pos, &v);
    if (rc) {
      snprintf(why, why_n, "packed element: %s at byte %zu", pb_varint_problem(rc), base + at);
      return 1;
    }
  }
  return 0;
}

/* Writes "<head>, in <type>: " (or "<head>: ") to `why`; returns its length, at most
 * why_n - 1, so that a nested diagnosis can follow it in the same buffer. */
static size_t pb_put_prefix(char *why, size_t why_n, const char *head, const char *type_name) {
  int n = type_name ? snprintf(why, why_n, "%s, in %s: ", head, type_name) : snprintf(why, why_n, "%s: ", head);
  if (n < 0) n = 0;
  return (size_t)n < why_n ? (size_t)n : why_n - 1;
}

static int pb_diagnose(const ProtobufCMessageDescriptor *desc, const uint8_t *p, size_t n, size_t base,
                       int depth, char *why, size_t why_n) {
  if (depth > PB_DIAG_MAX_DEPTH) {
    snprintf(why, why_n, "messages nested deeper than %d", PB_DIAG_MAX_DEPTH);
    return 1;
  }
  size_t pos = 0;
  while (pos < n) {
    size_t at = pos;
    uint64_t tag;
    int rc = pb_read_varint(p, n, &pos, &tag);
    if (rc) {
      snprintf(why, why_n, "%s in a field tag at byte %zu", pb_varint_problem(rc), base + at);
      return 1;
    }
    uint64_t number = tag >> 3;
    int wt = (int)(tag & 7);
    if (number == 0 || number > PB_FIELD_NUMBER_MAX) {
      snprintf(why, why_n, "field number %" PRIu64 " at byte %zu is outside [1, %d]", number, base + at,
               PB_FIELD_NUMBER_MAX);
      return 1;
    }
    const ProtobufCFieldDescriptor *f = protobuf_c_message_descriptor_get_field(desc, (unsigned)number);
    const char *fname = f ? f->name : "unknown";
    char head[128];
    snprintf(head, sizeof head, "field %" PRIu64 " (%s) at byte %zu", number, fname, base + at);
    if (wt == PB_WT_SGROUP || wt == PB_WT_EGROUP) {
      snprintf(why, why_n, "%s: group wire type %d (proto2 groups are not used by arkvale)", head, wt);
      return 1;
    }
    if (wt != PB_WT_VARINT && wt != PB_WT_64BIT && wt != PB_WT_LEN && wt != PB_WT_32BIT) {
      snprintf(why, why_n, "%s: invalid wire type %d", head, wt);
      return 1;
    }
    if (f) {
      int want = pb_wire_type_of(f->type);
      int packed_ok = f->label == PROTOBUF_C_LABEL_REPEATED && want != PB_WT_LEN && wt == PB_WT_LEN;
      if (wt != want && !packed_ok) {
        snprintf(why, why_n, "%s has wire type %d, its type needs %d", head, wt, want);
        return 1;
      }
    }
    switch (wt) {
      case PB_WT_VARINT: {
        uint64_t v;
        size_t vat = pos;
        rc = pb_read_varint(p, n, &pos, &v);
        if (rc) {
          snprintf(why, why_n, "%s: %s at byte %zu", head, pb_varint_problem(rc), base + vat);
          return 1;
        }
        break;
      }
      case PB_WT_64BIT:
      case PB_WT_32BIT: {
        size_t need = wt == PB_WT_64BIT ? 8 : 4;
        if (n - pos < need) {
          snprintf(why, why_n, "%s: truncated, needs %zu bytes, %zu left", head, need, n - pos);
          return 1;
        }
        pos += need;
        break;
      }
      case PB_WT_LEN: {
        uint64_t len;
        size_t lat = pos;
        rc = pb_read_varint(p, n, &pos, &len);
        if (rc) {
          snprintf(why, why_n, "%s: %s in its length at byte %zu", head, pb_varint_problem(rc), base + lat);
          return 1;
        }
        if (len > n - pos) {
          snprintf(why, why_n, "%s: truncated, length %" PRIu64 " but %zu bytes left", head, len, n - pos);
          return 1;
        }
        /* A nested problem is written after this field's own prefix, in place. */
        if (f && f->type == PROTOBUF_C_TYPE_MESSAGE) {
          const ProtobufCMessageDescriptor *sub = f->descriptor;
          size_t n_prefix = pb_put_prefix(why, why_n, head, sub->name);
          if (pb_diagnose(sub, p + pos, (size_t)len, base + pos, depth + 1, why + n_prefix, why_n - n_prefix))
            return 1;
        } else if (f && pb_wire_type_of(f->type) != PB_WT_LEN) {
          size_t n_prefix = pb_put_prefix(why, why_n, head, NULL);
          if (pb_diagnose_packed(f, p + pos, (size_t)len, base + pos, why + n_prefix, why_n - n_prefix)) return 1;
        }
        pos += (size_t)len;
        break;
      }
      default: /* refused above */
        return 1;
    }
  }
  return 0;
}

/* --- unpacking --- */

ak_status_t pb_msg_unpack(const ProtobufCMessageDescriptor *desc, const uint8_t *data, size_t n_bytes,
                          size_t max_bytes, ak_err_t *err, ProtobufCMessage **msg_p) {
  if (!pb_desc_ok(desc) || !msg_p || (!data && n_bytes))
    return AK_ERR(err, AK_ERR_INVALID_ARG, "NULL or invalid %s", !pb_desc_ok(desc) ? "descriptor" : !msg_p ? "output" : "data");
  if (n_bytes > max_bytes)
    return AK_ERR(err, AK_ERR_OVER_BUDGET, "%s of %zu bytes is over the limit of %zu bytes", desc->name, n_bytes,
                  max_bytes);
  static const uint8_t empty[1] = {0};
  pb_alloc_state_t state = {0};
  ProtobufCAllocator allocator = {pb_alloc, pb_free, &state};
  ProtobufCMessage *msg = protobuf_c_message_unpack(desc, &allocator, n_bytes, data ? data : empty);
  if (msg) {
    *msg_p = msg;
    return AK_OK;
  }
  if (state.failed)
    return AK_ERR(err, AK_ERR_NO_MEMORY, "cannot parse %s: out of memory (%zu bytes of input)", desc->name,
                  n_bytes);
  char why[AK_ERR_MSG_BYTES];
  if (!pb_diagnose(desc, data, n_bytes, 0, 0, why, sizeof why))
    snprintf(why, sizeof why, "%zu bytes that protobuf-c refuses (the wire format itself is well formed)",
             n_bytes);
  return AK_ERR(err, AK_ERR_INVALID_ARG, "cannot parse %s: %s", desc->name, why);
}

ak_status_t pb_buf_unpack(grpc_byte_buffer *buf, const ProtobufCMessageDescriptor *desc, size_t max_bytes,
                          ak_err_t *err, ProtobufCMessage **msg_p) {
  if (!buf || !pb_desc_ok(desc) || !msg_p)
    return AK_ERR(err, AK_ERR_INVALID_ARG, "NULL or invalid %s", !buf ? "byte buffer" : !msg_p ? "output" : "descriptor");
  /* Refuse before copying; compressed buffers are checked again once inflated. */
  size_t n_bytes = grpc_byte_buffer_length(buf);
  if (n_bytes > max_bytes)
    return AK_ERR(err, AK_ERR_OVER_BUDGET, "%s of %zu bytes is over the limit of %zu bytes", desc->name, n_bytes,
                  max_bytes);
  grpc_byte_buffer_reader reader;
  if (!grpc_byte_buffer_reader_init(&reader, buf))
    return AK_ERR(err, AK_ERR_INVALID_ARG, "cannot parse %s: the byte buffer cannot be read (decompression failed)",
                  desc->name);
  grpc_slice slice = grpc_byte_buffer_reader_readall(&reader);
  grpc_byte_buffer_reader_destroy(&reader);
  ak_status_t st = pb_msg_unpack(desc, GRPC_SLICE_START_PTR(slice), GRPC_SLICE_LENGTH(slice), max_bytes, err, msg_p);
  grpc_slice_unref(slice);
  return st;
}
