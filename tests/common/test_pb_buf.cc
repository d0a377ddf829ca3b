// Tests for common/pb_buf.c and common/pb_status.c: packing and unpacking through gRPC
// byte buffers, size limits, each class of bad bytes (truncated, garbage, bad wire
// type, bad nested message), unknown-field tolerance, allocation failures and leaks,
// and the status -> gRPC code table.
#include <gtest/gtest.h>

#include <cstring>
#include <random>
#include <string>
#include <vector>

extern "C" {
#include "ak_alloc.h"
#include "arkvale/v1/generation.pb-c.h"
#include "arkvale/v1/worker.pb-c.h"
#include "pb_buf.h"
#include "pb_status.h"
}

#include "../proto/pb_test_util.h"

static ::testing::Environment *const g_env = ::testing::AddGlobalTestEnvironment(new PbGrpcEnv);

static const size_t kMax = 1 << 20;

// A StepRequest with nested messages and packed arrays: the subject of most tests.
struct StepFixture {
  int32_t toks[40];
  Arkvale__V1__SamplingParams sp;
  Arkvale__V1__NewSequence seq;
  Arkvale__V1__NewSequence *seqs[1];
  uint64_t drops[2] = {9, 10};
  Arkvale__V1__StepRequest req;
  StepFixture() {
    for (int i = 0; i < 40; i++) toks[i] = i * 1000;
    arkvale__v1__sampling_params__init(&sp);
    sp.has_temperature = 1, sp.temperature = 0.8f;
    sp.has_seed = 1, sp.seed = 99;
    arkvale__v1__new_sequence__init(&seq);
    seq.has_seq_id = 1, seq.seq_id = 5;
    seq.sampling = &sp;
    seq.n_token_ids = 40, seq.token_ids = toks;
    seq.has_sample = 1, seq.sample = 1;
    seqs[0] = &seq;
    arkvale__v1__step_request__init(&req);
    req.has_step_id = 1, req.step_id = 3;
    req.n_drop_seq_ids = 2, req.drop_seq_ids = drops;
    req.n_new_seqs = 1, req.new_seqs = seqs;
  }
};

static ak_status_t Unpack(const std::vector<uint8_t> &bytes, const ProtobufCMessageDescriptor *d, ak_err_t *err,
                          PbMsgPtr *out, size_t max = kMax) {
  ProtobufCMessage *m = nullptr;
  ak_status_t st = pb_msg_unpack(d, bytes.data(), bytes.size(), max, err, &m);
  out->reset(m);
  return st;
}

static bool Has(const char *msg, const char *what) { return std::strstr(msg, what) != nullptr; }

TEST(PbBuf, PackUnpackThroughAByteBuffer) {
  StepFixture f;
  ak_err_t err;
  ak_err_clear(&err);
  grpc_byte_buffer *raw = nullptr;
  ASSERT_EQ(pb_buf_pack(&f.req.base, kMax, &err, &raw), AK_OK) << err.msg;
  PbBufPtr buf(raw);
  EXPECT_EQ(grpc_byte_buffer_length(buf.get()), protobuf_c_message_get_packed_size(&f.req.base));
  ProtobufCMessage *m = nullptr;
  ASSERT_EQ(pb_buf_unpack(buf.get(), &arkvale__v1__step_request__descriptor, kMax, &err, &m), AK_OK) << err.msg;
  PbMsgPtr p(m);
  auto *r = reinterpret_cast<Arkvale__V1__StepRequest *>(m);
  EXPECT_EQ(r->step_id, 3u);
  ASSERT_EQ(r->n_new_seqs, 1u);
  EXPECT_EQ(r->new_seqs[0]->token_ids[39], 39000);
  EXPECT_EQ(r->new_seqs[0]->sampling->seed, 99u);
  // The buffer is not consumed: a second unpack of it works.
  ASSERT_EQ(pb_buf_unpack(buf.get(), &arkvale__v1__step_request__descriptor, kMax, &err, &m), AK_OK);
  pb_msg_free(m);
}

// gRPC hands over messages in several slices; readall must join them.
TEST(PbBuf, UnpacksABufferOfSeveralSlices) {
  StepFixture f;
  std::vector<uint8_t> bytes = PbPackBytes(&f.req.base);
  ASSERT_GT(bytes.size(), 20u);
  grpc_slice slices[3] = {grpc_slice_from_copied_buffer((const char *)bytes.data(), 7),
                          grpc_slice_from_copied_buffer((const char *)bytes.data() + 7, 5),
                          grpc_slice_from_copied_buffer((const char *)bytes.data() + 12, bytes.size() - 12)};
  PbBufPtr buf(grpc_raw_byte_buffer_create(slices, 3));
  for (auto &s : slices) grpc_slice_unref(s);
  ak_err_t err;
  ProtobufCMessage *m = nullptr;
  ASSERT_EQ(pb_buf_unpack(buf.get(), &arkvale__v1__step_request__descriptor, kMax, &err, &m), AK_OK) << err.msg;
  PbMsgPtr p(m);
  EXPECT_EQ(PbPackBytes(m), bytes);
}

TEST(PbBuf, EmptyBytesAreTheEmptyMessage) {
  ak_err_t err;
  PbMsgPtr p;
  ASSERT_EQ(Unpack({}, &arkvale__v1__health_request__descriptor, &err, &p), AK_OK);
  ProtobufCMessage *m = nullptr;
  ASSERT_EQ(pb_msg_unpack(&arkvale__v1__step_request__descriptor, nullptr, 0, kMax, &err, &m), AK_OK);
  auto *r = reinterpret_cast<Arkvale__V1__StepRequest *>(m);
  EXPECT_FALSE(r->has_step_id);
  EXPECT_EQ(r->n_new_seqs, 0u);
  pb_msg_free(m);
}

// --- size limits ---

TEST(PbBuf, PackRefusesOverTheLimit) {
  StepFixture f;
  size_t n = protobuf_c_message_get_packed_size(&f.req.base);
  ak_err_t err;
  grpc_byte_buffer *buf = nullptr;
  EXPECT_EQ(pb_buf_pack(&f.req.base, n - 1, &err, &buf), AK_ERR_OVER_BUDGET);
  EXPECT_EQ(buf, nullptr);
  EXPECT_TRUE(Has(err.msg, "arkvale.v1.StepRequest")) << err.msg;
  EXPECT_TRUE(Has(err.msg, (std::to_string(n) + " bytes").c_str())) << err.msg;
  EXPECT_TRUE(Has(err.msg, (std::to_string(n - 1) + " bytes").c_str())) << err.msg;
  ASSERT_EQ(pb_buf_pack(&f.req.base, n, &err, &buf), AK_OK);  // exactly at the limit
  grpc_byte_buffer_destroy(buf);
}

TEST(PbBuf, UnpackRefusesOverTheLimitBeforeReading) {
  StepFixture f;
  grpc_byte_buffer *raw = nullptr;
  ak_err_t err;
  ASSERT_EQ(pb_buf_pack(&f.req.base, kMax, &err, &raw), AK_OK);
  PbBufPtr buf(raw);
  size_t n = grpc_byte_buffer_length(raw);
  int64_t before = ak_alloc_outstanding_bytes(AK_MEM_HOST);
  ProtobufCMessage *m = nullptr;
  EXPECT_EQ(pb_buf_unpack(raw, &arkvale__v1__step_request__descriptor, n - 1, &err, &m), AK_ERR_OVER_BUDGET);
  EXPECT_EQ(m, nullptr);
  EXPECT_TRUE(Has(err.msg, "arkvale.v1.StepRequest of")) << err.msg;
  EXPECT_TRUE(Has(err.msg, "over the limit")) << err.msg;
  EXPECT_EQ(ak_alloc_outstanding_bytes(AK_MEM_HOST), before);
  ASSERT_EQ(pb_buf_unpack(raw, &arkvale__v1__step_request__descriptor, n, &err, &m), AK_OK);
  pb_msg_free(m);
  PbMsgPtr p;
  EXPECT_EQ(Unpack(PbPackBytes(&f.req.base), &arkvale__v1__step_request__descriptor, &err, &p, 0),
            AK_ERR_OVER_BUDGET);
}

// --- bad bytes: one test per class, each with its own message ---

// A cut inside a field is refused and says "truncated"; a cut between top-level
// fields is a valid shorter message (the wire format has no end marker).
TEST(PbBuf, TruncatedBytesAreRefused) {
  StepFixture f;
  std::vector<uint8_t> bytes = PbPackBytes(&f.req.base);
  int64_t before = ak_alloc_outstanding_bytes(AK_MEM_HOST);
  int n_refused = 0;
  for (size_t cut = 1; cut < bytes.size(); cut++) {
    std::vector<uint8_t> part(bytes.begin(), bytes.begin() + cut);
    ak_err_t err;
    ak_err_clear(&err);
    PbMsgPtr p;
    ak_status_t st = Unpack(part, &arkvale__v1__step_request__descriptor, &err, &p);
    if (st == AK_OK) continue;
    n_refused++;
    EXPECT_EQ(st, AK_ERR_INVALID_ARG) << "cut " << cut;
    EXPECT_EQ(p, nullptr);
    EXPECT_TRUE(Has(err.msg, "cannot parse arkvale.v1.StepRequest: ")) << err.msg;
    EXPECT_TRUE(Has(err.msg, "truncated")) << "cut " << cut << ": " << err.msg;
  }
  EXPECT_GT(n_refused, (int)bytes.size() / 2);
  // The last field is the new sequence, length-delimited: one byte short is refused
  // and the message names the field.
  std::vector<uint8_t> short1(bytes.begin(), bytes.end() - 1);
  ak_err_t err;
  PbMsgPtr p;
  ASSERT_EQ(Unpack(short1, &arkvale__v1__step_request__descriptor, &err, &p), AK_ERR_INVALID_ARG);
  EXPECT_TRUE(Has(err.msg, "(new_seqs)")) << err.msg;
  EXPECT_EQ(ak_alloc_outstanding_bytes(AK_MEM_HOST), before) << "a refused unpack leaked";
}

TEST(PbBuf, GarbageTagsAreRefused) {
  struct Case {
    std::vector<uint8_t> bytes;
    const char *why;
  } cases[] = {
      {{0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01}, "varint longer than 10 bytes"},
      {{0x00, 0x01}, "field number 0"},
      {{0x0f, 0x01}, "invalid wire type 7"},
      {{0x0b, 0x0c}, "group wire type 3"},
      {{0x80}, "truncated varint in a field tag"},
  };
  for (auto &c : cases) {
    ak_err_t err;
    ak_err_clear(&err);
    PbMsgPtr p;
    EXPECT_EQ(Unpack(c.bytes, &arkvale__v1__step_request__descriptor, &err, &p), AK_ERR_INVALID_ARG) << c.why;
    EXPECT_TRUE(Has(err.msg, "cannot parse arkvale.v1.StepRequest: ")) << err.msg;
    EXPECT_TRUE(Has(err.msg, c.why)) << "want '" << c.why << "' in: " << err.msg;
  }
}

// A known field with the wrong wire type (step_id, a varint, sent as bytes).
TEST(PbBuf, WrongWireTypeIsRefused) {
  std::vector<uint8_t> b;
  PbPutTag(&b, 1, 2);
  PbPutVarint(&b, 1);
  b.push_back('x');
  ak_err_t err;
  PbMsgPtr p;
  ASSERT_EQ(Unpack(b, &arkvale__v1__step_request__descriptor, &err, &p), AK_ERR_INVALID_ARG);
  EXPECT_TRUE(Has(err.msg, "field 1 (step_id)")) << err.msg;
  EXPECT_TRUE(Has(err.msg, "wire type 2")) << err.msg;
}

// Bad bytes inside a nested message: the message names the path down to them.
TEST(PbBuf, BadNestedMessageIsRefusedWithItsPath) {
  std::vector<uint8_t> inner;  // a NewSequence whose seq_id varint is cut short
  PbPutTag(&inner, 1, 0);
  inner.push_back(0x80);
  std::vector<uint8_t> b;
  PbPutTag(&b, 3, 2);  // StepRequest.new_seqs
  PbPutVarint(&b, inner.size());
  b.insert(b.end(), inner.begin(), inner.end());
  ak_err_t err;
  PbMsgPtr p;
  ASSERT_EQ(Unpack(b, &arkvale__v1__step_request__descriptor, &err, &p), AK_ERR_INVALID_ARG);
  EXPECT_TRUE(Has(err.msg, "field 3 (new_seqs)")) << err.msg;
  EXPECT_TRUE(Has(err.msg, "arkvale.v1.NewSequence")) << err.msg;
  EXPECT_TRUE(Has(err.msg, "field 1 (seq_id)")) << err.msg;
  EXPECT_TRUE(Has(err.msg, "truncated varint")) << err.msg;
}

// A packed int32 array whose last varint is cut inside its own length.
TEST(PbBuf, BadPackedArrayIsRefused) {
  std::vector<uint8_t> b;
  PbPutTag(&b, 2, 2);  // ContinuingSequence.token_ids, packed
  b.push_back(2);
  b.push_back(0x05);
  b.push_back(0x80);  // a varint that never ends inside the payload
  ak_err_t err;
  PbMsgPtr p;
  ASSERT_EQ(Unpack(b, &arkvale__v1__continuing_sequence__descriptor, &err, &p), AK_ERR_INVALID_ARG);
  EXPECT_TRUE(Has(err.msg, "field 2 (token_ids)")) << err.msg;
  EXPECT_TRUE(Has(err.msg, "packed element")) << err.msg;
}

// Random bytes: any outcome but a crash or a leak; a refusal is INVALID_ARG naming
// the type.
TEST(PbBuf, RandomBytesNeverCrashOrLeak) {
  std::mt19937 rng(1234);
  int64_t before = ak_alloc_outstanding_bytes(AK_MEM_HOST);
  int n_refused = 0;
  for (int i = 0; i < 3000; i++) {
    std::vector<uint8_t> b(rng() % 64);
    for (auto &x : b) x = (uint8_t)rng();
    ak_err_t err;
    ak_err_clear(&err);
    PbMsgPtr p;
    ak_status_t st = Unpack(b, &arkvale__v1__generate_request__descriptor, &err, &p);
    if (st == AK_OK) continue;
    n_refused++;
    ASSERT_EQ(st, AK_ERR_INVALID_ARG) << err.msg;
    ASSERT_TRUE(Has(err.msg, "cannot parse arkvale.v1.GenerateRequest: ")) << err.msg;
  }
  EXPECT_GT(n_refused, 1000);
  EXPECT_EQ(ak_alloc_outstanding_bytes(AK_MEM_HOST), before);
}

// --- evolution: an older reader skips fields a newer writer added ---

// The new fields are written by hand (this reader's generated code cannot know them):
// one of each wire type at the top level and one inside a nested message.
TEST(PbBuf, UnknownFieldsAreSkippedAndKept) {
  Arkvale__V1__SamplingParams sp;
  arkvale__v1__sampling_params__init(&sp);
  sp.has_top_k = 1, sp.top_k = 40;
  std::vector<uint8_t> sp_bytes = PbPackBytes(&sp.base);
  PbPutTag(&sp_bytes, 99, 0);  // a future SamplingParams field
  PbPutVarint(&sp_bytes, 7);

  Arkvale__V1__GenerateRequest req;
  arkvale__v1__generate_request__init(&req);
  req.request_id = const_cast<char *>("r1");
  req.has_return_logprobs = 1, req.return_logprobs = 1;
  std::vector<uint8_t> b = PbPackBytes(&req.base);
  PbPutTag(&b, 3, 2);  // sampling, with its unknown field inside
  PbPutVarint(&b, sp_bytes.size());
  b.insert(b.end(), sp_bytes.begin(), sp_bytes.end());
  PbPutTag(&b, 1000, 0);  // varint
  PbPutVarint(&b, 123456789);
  PbPutTag(&b, 1001, 2);  // length-delimited (a string or a message)
  PbPutVarint(&b, 6);
  b.insert(b.end(), {'f', 'u', 't', 'u', 'r', 'e'});
  PbPutTag(&b, 1002, 5);  // fixed32
  b.insert(b.end(), {1, 2, 3, 4});
  PbPutTag(&b, 1003, 1);  // fixed64
  b.insert(b.end(), {1, 2, 3, 4, 5, 6, 7, 8});

  ak_err_t err;
  PbMsgPtr p;
  ASSERT_EQ(Unpack(b, &arkvale__v1__generate_request__descriptor, &err, &p), AK_OK) << err.msg;
  auto *r = reinterpret_cast<Arkvale__V1__GenerateRequest *>(p.get());
  EXPECT_STREQ(r->request_id, "r1");
  EXPECT_TRUE(r->return_logprobs);
  ASSERT_NE(r->sampling, nullptr);
  EXPECT_EQ(r->sampling->top_k, 40u);
  EXPECT_EQ(r->base.n_unknown_fields, 4u);
  EXPECT_EQ(r->sampling->base.n_unknown_fields, 1u);
  // A relay (the coordinator forwarding to a worker) passes them on unchanged.
  EXPECT_EQ(PbPackBytes(p.get()).size(), b.size());
}

// An enum value from a newer writer: protobuf-c keeps the number; readers must treat
// a value they do not know as *_UNSPECIFIED (common.proto says so).
TEST(PbBuf, UnknownEnumValueIsKeptAsANumber) {
  std::vector<uint8_t> b;
  PbPutTag(&b, 1, 0);  // KvConfig.policy
  PbPutVarint(&b, 99);
  ak_err_t err;
  PbMsgPtr p;
  ASSERT_EQ(Unpack(b, &arkvale__v1__kv_config__descriptor, &err, &p), AK_OK) << err.msg;
  auto *kv = reinterpret_cast<Arkvale__V1__KvConfig *>(p.get());
  EXPECT_TRUE(kv->has_policy);
  EXPECT_EQ((int)kv->policy, 99);
  EXPECT_EQ(protobuf_c_enum_descriptor_get_value(&arkvale__v1__kv_policy__descriptor, 99), nullptr);
}

// --- argument checks, allocation failure, leaks ---

TEST(PbBuf, NullArgumentsAreRefused) {
  StepFixture f;
  ak_err_t err;
  grpc_byte_buffer *buf = nullptr;
  ProtobufCMessage *m = nullptr;
  EXPECT_EQ(pb_buf_pack(nullptr, kMax, &err, &buf), AK_ERR_INVALID_ARG);
  EXPECT_EQ(pb_buf_pack(&f.req.base, kMax, &err, nullptr), AK_ERR_INVALID_ARG);
  EXPECT_EQ(pb_buf_unpack(nullptr, &arkvale__v1__step_request__descriptor, kMax, &err, &m), AK_ERR_INVALID_ARG);
  uint8_t one = 0;
  EXPECT_EQ(pb_msg_unpack(nullptr, &one, 1, kMax, &err, &m), AK_ERR_INVALID_ARG);
  EXPECT_EQ(pb_msg_unpack(&arkvale__v1__step_request__descriptor, nullptr, 1, kMax, &err, &m), AK_ERR_INVALID_ARG);
  EXPECT_EQ(pb_msg_unpack(&arkvale__v1__step_request__descriptor, &one, 0, kMax, &err, nullptr), AK_ERR_INVALID_ARG);
  EXPECT_EQ(buf, nullptr);
  EXPECT_EQ(m, nullptr);
  pb_msg_free(nullptr);  // accepted
}

// A message the caller built wrongly (a count with a NULL array) is refused, not packed.
TEST(PbBuf, MalformedMessageIsNotPacked) {
  StepFixture f;
  f.seq.token_ids = nullptr;  // n_token_ids stays 40
  ak_err_t err;
  grpc_byte_buffer *buf = nullptr;
  EXPECT_EQ(pb_buf_pack(&f.req.base, kMax, &err, &buf), AK_ERR_INVALID_ARG);
  EXPECT_TRUE(Has(err.msg, "cannot pack arkvale.v1.StepRequest")) << err.msg;
  EXPECT_EQ(buf, nullptr);
}

// Every allocation of an unpack failing in turn: NO_MEMORY, and nothing left behind.
TEST(PbBuf, AllocationFailuresUnwindWithoutLeaks) {
  StepFixture f;
  std::vector<uint8_t> bytes = PbPackBytes(&f.req.base);
  int64_t before = ak_alloc_outstanding_bytes(AK_MEM_HOST);
  int n_failed = 0;
  for (int64_t k = 1; k < 100; k++) {
    ak_alloc_fail_after(k);
    ak_err_t err;
    ak_err_clear(&err);
    PbMsgPtr p;
    ak_status_t st = Unpack(bytes, &arkvale__v1__step_request__descriptor, &err, &p);
    ak_alloc_fail_after(0);
    if (st == AK_OK) {
      EXPECT_EQ(PbPackBytes(p.get()), bytes);
      break;
    }
    n_failed++;
    EXPECT_EQ(st, AK_ERR_NO_MEMORY) << "allocation " << k << ": " << err.msg;
    EXPECT_TRUE(Has(err.msg, "cannot parse arkvale.v1.StepRequest: out of memory")) << err.msg;
    p.reset();
    EXPECT_EQ(ak_alloc_outstanding_bytes(AK_MEM_HOST), before) << "allocation " << k;
  }
  EXPECT_GE(n_failed, 3);  // the request, the sequence, its tokens, its sampling...
  EXPECT_EQ(ak_alloc_outstanding_bytes(AK_MEM_HOST), before);
}

// --- the status table ---

TEST(PbStatus, MapsEveryStatusToItsGrpcCode) {
  EXPECT_EQ(pb_status_to_grpc(AK_OK), GRPC_STATUS_OK);
  EXPECT_EQ(pb_status_to_grpc(AK_ERR_INVALID_ARG), GRPC_STATUS_INVALID_ARGUMENT);
  EXPECT_EQ(pb_status_to_grpc(AK_ERR_FORMAT), GRPC_STATUS_INVALID_ARGUMENT);
  EXPECT_EQ(pb_status_to_grpc(AK_ERR_NOT_FOUND), GRPC_STATUS_NOT_FOUND);
  EXPECT_EQ(pb_status_to_grpc(AK_ERR_RANGE), GRPC_STATUS_OUT_OF_RANGE);
  EXPECT_EQ(pb_status_to_grpc(AK_ERR_CANCELLED), GRPC_STATUS_CANCELLED);
  EXPECT_EQ(pb_status_to_grpc(AK_ERR_EXISTS), GRPC_STATUS_ALREADY_EXISTS);
  EXPECT_EQ(pb_status_to_grpc(AK_ERR_PRECONDITION), GRPC_STATUS_FAILED_PRECONDITION);
  EXPECT_EQ(pb_status_to_grpc(AK_ERR_UNSUPPORTED), GRPC_STATUS_UNIMPLEMENTED);
  EXPECT_EQ(pb_status_to_grpc(AK_ERR_OVER_BUDGET), GRPC_STATUS_RESOURCE_EXHAUSTED);
  EXPECT_EQ(pb_status_to_grpc(AK_ERR_POOL_FULL), GRPC_STATUS_RESOURCE_EXHAUSTED);
  EXPECT_EQ(pb_status_to_grpc(AK_ERR_NO_MEMORY), GRPC_STATUS_RESOURCE_EXHAUSTED);
  EXPECT_EQ(pb_status_to_grpc(AK_ERR_TIMEOUT), GRPC_STATUS_DEADLINE_EXCEEDED);
  EXPECT_EQ(pb_status_to_grpc(AK_ERR_PEER), GRPC_STATUS_UNAVAILABLE);
  EXPECT_EQ(pb_status_to_grpc(AK_ERR_NO_DEVICE), GRPC_STATUS_UNAVAILABLE);
  EXPECT_EQ(pb_status_to_grpc(AK_ERR_CLUSTER), GRPC_STATUS_UNAVAILABLE);
  EXPECT_EQ(pb_status_to_grpc(AK_AGAIN), GRPC_STATUS_UNAVAILABLE);
  EXPECT_EQ(pb_status_to_grpc(AK_ERR_CUDA), GRPC_STATUS_INTERNAL);
  EXPECT_EQ(pb_status_to_grpc(AK_ERR_IO), GRPC_STATUS_INTERNAL);
  EXPECT_EQ(pb_status_to_grpc(AK_ERR_INTERNAL), GRPC_STATUS_INTERNAL);
  EXPECT_EQ(pb_status_to_grpc((ak_status_t)-12345), GRPC_STATUS_UNKNOWN);
}
