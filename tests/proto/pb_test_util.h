// Helpers shared by the proto and pb_buf tests: owners for messages and byte buffers,
// packing to bytes, and a descriptor-driven check that every field of a message
// (recursively) is present, so "every field set" stays true as fields are added.
#pragma once

#include <grpc/grpc.h>
#include <gtest/gtest.h>

#include <cstdint>
#include <memory>
#include <set>
#include <string>
#include <vector>

extern "C" {
#include "pb_buf.h"
}

struct PbMsgDeleter {
  void operator()(ProtobufCMessage *m) const { pb_msg_free(m); }
};
using PbMsgPtr = std::unique_ptr<ProtobufCMessage, PbMsgDeleter>;

struct PbBufDeleter {
  void operator()(grpc_byte_buffer *b) const { grpc_byte_buffer_destroy(b); }
};
using PbBufPtr = std::unique_ptr<grpc_byte_buffer, PbBufDeleter>;

// gRPC is initialised once for the whole test binary.
class PbGrpcEnv : public ::testing::Environment {
 public:
  void SetUp() override { grpc_init(); }
  void TearDown() override { grpc_shutdown(); }
};

inline std::vector<uint8_t> PbPackBytes(const ProtobufCMessage *m) {
  std::vector<uint8_t> v(protobuf_c_message_get_packed_size(m));
  size_t n = protobuf_c_message_pack(m, v.data());
  EXPECT_EQ(n, v.size());
  return v;
}

// Appends a varint (the wire format's base 128).
inline void PbPutVarint(std::vector<uint8_t> *out, uint64_t v) {
  while (v >= 0x80) {
    out->push_back((uint8_t)(v | 0x80));
    v >>= 7;
  }
  out->push_back((uint8_t)v);
}

inline void PbPutTag(std::vector<uint8_t> *out, uint32_t number, int wire_type) {
  PbPutVarint(out, ((uint64_t)number << 3) | (uint64_t)wire_type);
}

// Every field of `m` is present (has_x, a non-NULL pointer, a non-empty array; one
// member per oneof), recursively. Names of the missing ones go to `missing`.
inline void PbCollectUnset(const ProtobufCMessage *m, const std::string &path, std::vector<std::string> *missing) {
  const ProtobufCMessageDescriptor *d = m->descriptor;
  const char *base = reinterpret_cast<const char *>(m);
  std::set<unsigned> oneofs_seen, oneofs_set;
  for (unsigned i = 0; i < d->n_fields; i++) {
    const ProtobufCFieldDescriptor *f = &d->fields[i];
    std::string name = path + "." + f->name;
    const void *member = base + f->offset;
    if (f->label == PROTOBUF_C_LABEL_REPEATED) {
      size_t n = *reinterpret_cast<const size_t *>(base + f->quantifier_offset);
      if (n == 0) missing->push_back(name);
      if (f->type == PROTOBUF_C_TYPE_MESSAGE)
        for (size_t j = 0; j < n; j++)
          PbCollectUnset((*reinterpret_cast<ProtobufCMessage *const *const *>(member))[j],
                         name + "[" + std::to_string(j) + "]", missing);
      continue;
    }
    bool is_oneof = (f->flags & PROTOBUF_C_FIELD_FLAG_ONEOF) != 0;
    bool present;
    if (is_oneof) {
      oneofs_seen.insert(f->quantifier_offset);
      present = *reinterpret_cast<const uint32_t *>(base + f->quantifier_offset) == f->id;
      if (present) oneofs_set.insert(f->quantifier_offset);
    } else if (f->type == PROTOBUF_C_TYPE_STRING || f->type == PROTOBUF_C_TYPE_MESSAGE) {
      present = *reinterpret_cast<const void *const *>(member) != nullptr;
      if (!present) missing->push_back(name);
    } else {
      present = *reinterpret_cast<const protobuf_c_boolean *>(base + f->quantifier_offset) != 0;
      if (!present) missing->push_back(name);
    }
    if (present && f->type == PROTOBUF_C_TYPE_MESSAGE)
      PbCollectUnset(*reinterpret_cast<const ProtobufCMessage *const *>(member), name, missing);
  }
  for (unsigned off : oneofs_seen)
    if (!oneofs_set.count(off)) missing->push_back(path + ".<oneof at offset " + std::to_string(off) + ">");
}

inline std::string PbUnsetFields(const ProtobufCMessage *m) {
  std::vector<std::string> missing;
  PbCollectUnset(m, m->descriptor->name, &missing);
  std::string s;
  for (auto &x : missing) s += x + " ";
  return s;
}
