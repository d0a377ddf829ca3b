// Tests for common/ak_rpc_server.c and common/ak_rpc_client.c over loopback with the
// real arkvale.v1 messages: unary round trip, 100 concurrent callers, a 1000-message
// stream in order, UNIMPLEMENTED, INVALID_ARGUMENT for garbage bytes,
// RESOURCE_EXHAUSTED for an over-size request, a deadline, client cancellation seen by
// the handler, and server destroy with a stream open. ASan checks the leaks; the
// accounted allocator checks that every unpacked message was freed.
#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstring>
#include <functional>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

extern "C" {
#include "ak_alloc.h"
#include "ak_rpc_client.h"
#include "ak_rpc_server.h"
#include "arkvale/v1/generation.pb-c.h"
#include "arkvale/v1/worker.pb-c.h"
#include "pb_buf.h"
}

static const char *kHealth = "/arkvale.v1.Worker/Health";
static const char *kRelease = "/arkvale.v1.Worker/Release";
static const char *kSlow = "/arkvale.v1.Worker/Info";  // a Health-typed handler that sleeps
static const char *kNoResponse = "/arkvale.v1.Worker/Warmup";  // finishes OK, no message
static const char *kPoolFull = "/arkvale.v1.Worker/Step";       // fails AK_ERR_POOL_FULL
static const char *kGenerate = "/arkvale.v1.Generation/Generate";
static const size_t kMax = 1 << 20;

struct MsgDeleter {
  void operator()(ProtobufCMessage *m) const { pb_msg_free(m); }
};
using MsgPtr = std::unique_ptr<ProtobufCMessage, MsgDeleter>;

class RpcTest : public ::testing::Test {
 protected:
  ak_rpc_server_t *srv_ = nullptr;
  ak_rpc_client_t *cli_ = nullptr;
  int64_t host_bytes0_ = 0;
  std::mutex mu_;
  std::vector<std::thread> threads_;  // handler workers, joined at teardown
  std::atomic<int> cancels_seen_{0};
  std::atomic<int> deadlines_seen_{0};  // cancelled calls whose deadline had passed
  std::atomic<int> stream_msgs_sent_{0};

  void SetUp() override {
    host_bytes0_ = ak_alloc_outstanding_bytes(AK_MEM_HOST);
    ak_err_t err;
    ak_err_clear(&err);
    ASSERT_EQ(ak_rpc_server_create("127.0.0.1:0", 2, &err, &srv_), AK_OK) << err.msg;
    ASSERT_GT(ak_rpc_server_port(srv_), 0);
    Register(kHealth, AK_RPC_UNARY, &arkvale__v1__health_request__descriptor, kMax, &RpcTest::OnHealth);
    Register(kRelease, AK_RPC_UNARY, &arkvale__v1__release_request__descriptor, 64, &RpcTest::OnRelease);
    Register(kSlow, AK_RPC_UNARY, &arkvale__v1__health_request__descriptor, kMax, &RpcTest::OnSlow);
    Register(kNoResponse, AK_RPC_UNARY, &arkvale__v1__health_request__descriptor, kMax,
             [](void *, const ProtobufCMessage *, ak_rpc_writer_t *w) { ak_rpc_writer_finish(w, AK_OK, ""); });
    Register(kPoolFull, AK_RPC_UNARY, &arkvale__v1__health_request__descriptor, kMax,
             [](void *, const ProtobufCMessage *, ak_rpc_writer_t *w) {
               ak_rpc_writer_finish(w, AK_ERR_POOL_FULL, "no free pages: 0 of 64");
             });
    Register(kGenerate, AK_RPC_SERVER_STREAMING, &arkvale__v1__generate_request__descriptor, kMax,
             &RpcTest::OnGenerate);
    ASSERT_EQ(ak_rpc_server_start(srv_, &err), AK_OK) << err.msg;
    std::string target = "127.0.0.1:" + std::to_string(ak_rpc_server_port(srv_));
    ASSERT_EQ(ak_rpc_client_create(target.c_str(), &err, &cli_), AK_OK) << err.msg;
  }

  void TearDown() override {
    ak_rpc_client_destroy(cli_);
    ak_rpc_server_destroy(srv_);
    for (auto &t : threads_) t.join();
    EXPECT_EQ(ak_alloc_outstanding_bytes(AK_MEM_HOST), host_bytes0_) << "unpacked messages leaked";
  }

  void Register(const char *path, ak_rpc_kind_t kind, const ProtobufCMessageDescriptor *d, size_t max_req,
                ak_rpc_handler_fn fn) {
    ak_rpc_method_t m = {path, kind, d, max_req, kMax, fn, this};
    ak_err_t err;
    ASSERT_EQ(ak_rpc_server_register(srv_, &m, &err), AK_OK) << err.msg;
  }

  void Spawn(std::function<void()> f) {
    std::lock_guard<std::mutex> g(mu_);
    threads_.emplace_back(std::move(f));
  }

  static void OnHealth(void *user, const ProtobufCMessage *req, ak_rpc_writer_t *w) {
    Arkvale__V1__HealthResponse r;
    arkvale__v1__health_response__init(&r);
    r.has_state = 1, r.state = ARKVALE__V1__WORKER_STATE__WORKER_STATE_READY;
    r.has_n_seqs = 1, r.n_seqs = 7;
    r.message = (char *)"fine";
    ak_err_t err;
    ak_status_t st = ak_rpc_writer_write(w, &r.base, &err);
    ak_rpc_writer_finish(w, st, err.msg);
  }

  // Echo: n_released = the sum of the ids.
  static void OnRelease(void *user, const ProtobufCMessage *req, ak_rpc_writer_t *w) {
    auto *q = (const Arkvale__V1__ReleaseRequest *)req;
    Arkvale__V1__ReleaseResponse r;
    arkvale__v1__release_response__init(&r);
    r.has_n_released = 1;
    for (size_t i = 0; i < q->n_seq_ids; i++) r.n_released += (uint32_t)q->seq_ids[i];
    ak_err_t err;
    ak_status_t st = ak_rpc_writer_write(w, &r.base, &err);
    ak_rpc_writer_finish(w, st, err.msg);
  }

  // Answers after 2 s from another thread (handlers must not block the CQ thread),
  // or as soon as the writer reports the call cancelled.
  static void OnSlow(void *user, const ProtobufCMessage *req, ak_rpc_writer_t *w) {
    auto *self = (RpcTest *)user;
    self->Spawn([self, w] {
      for (int i = 0; i < 200 && !ak_rpc_writer_cancelled(w); i++)
        std::this_thread::sleep_for(std::chrono::milliseconds(10));
      if (ak_rpc_writer_cancelled(w)) {
        if (ak_rpc_writer_deadline_passed(w)) self->deadlines_seen_++;
        self->cancels_seen_++;
      }
      OnHealth(self, nullptr, w);
    });
  }

  // Streams max_new_tokens messages (token_ids = {i}); without max_new_tokens, one
  // message a millisecond until cancelled.
  static void OnGenerate(void *user, const ProtobufCMessage *req, ak_rpc_writer_t *w) {
    auto *self = (RpcTest *)user;
    auto *q = (const Arkvale__V1__GenerateRequest *)req;
    int64_t n = (q->stopping && q->stopping->has_max_new_tokens) ? q->stopping->max_new_tokens : -1;
    self->Spawn([self, w, n] {
      ak_err_t err;
      ak_err_clear(&err);
      ak_status_t st = AK_OK;
      for (int64_t i = 0; n < 0 || i < n; i++) {
        if (ak_rpc_writer_cancelled(w)) {
          if (ak_rpc_writer_deadline_passed(w)) self->deadlines_seen_++;
          self->cancels_seen_++;
          st = AK_ERR_PEER;
          break;
        }
        int32_t tok = (int32_t)i;
        Arkvale__V1__GenerateResponse r;
        arkvale__v1__generate_response__init(&r);
        r.request_id = (char *)"r1";
        r.n_token_ids = 1, r.token_ids = &tok;
        st = ak_rpc_writer_write(w, &r.base, &err);
        if (st != AK_OK) {
          self->cancels_seen_++;
          break;
        }
        self->stream_msgs_sent_++;
        if (n < 0) std::this_thread::sleep_for(std::chrono::milliseconds(1));
      }
      ak_rpc_writer_finish(w, st, st == AK_OK ? "" : "stopped");
    });
  }

  ak_status_t Health(int64_t deadline_ms, grpc_status_code *code, MsgPtr *out, const char *path = kHealth) {
    Arkvale__V1__HealthRequest q;
    arkvale__v1__health_request__init(&q);
    ak_err_t err;
    ProtobufCMessage *m = nullptr;
    ak_status_t st = ak_rpc_client_unary(cli_, path, &q.base, &arkvale__v1__health_response__descriptor, kMax,
                                         deadline_ms, &err, code, &m);
    out->reset(m);
    last_err_ = err;
    return st;
  }
  ak_err_t last_err_;
};

TEST_F(RpcTest, UnaryRoundTrip) {
  grpc_status_code code;
  MsgPtr m;
  ASSERT_EQ(Health(5000, &code, &m), AK_OK) << last_err_.msg;
  EXPECT_EQ(code, GRPC_STATUS_OK);
  auto *r = (Arkvale__V1__HealthResponse *)m.get();
  EXPECT_EQ(r->state, ARKVALE__V1__WORKER_STATE__WORKER_STATE_READY);
  EXPECT_EQ(r->n_seqs, 7u);
  EXPECT_STREQ(r->message, "fine");
}

TEST_F(RpcTest, HundredConcurrentUnaryCallers) {
  std::atomic<int> n_ok{0};
  std::vector<std::thread> ts;
  for (int t = 0; t < 100; t++) {
    ts.emplace_back([this, t, &n_ok] {
      for (int k = 0; k < 5; k++) {
        uint64_t ids[2] = {(uint64_t)t, (uint64_t)k * 1000};
        Arkvale__V1__ReleaseRequest q;
        arkvale__v1__release_request__init(&q);
        q.n_seq_ids = 2, q.seq_ids = ids;
        ak_err_t err;
        grpc_status_code code;
        ProtobufCMessage *m = nullptr;
        ak_status_t st = ak_rpc_client_unary(cli_, kRelease, &q.base, &arkvale__v1__release_response__descriptor,
                                             kMax, 10000, &err, &code, &m);
        MsgPtr p(m);
        if (st == AK_OK && ((Arkvale__V1__ReleaseResponse *)m)->n_released == (uint32_t)(t + k * 1000)) n_ok++;
      }
    });
  }
  for (auto &t : ts) t.join();
  EXPECT_EQ(n_ok.load(), 500);
}

struct StreamSink {
  std::vector<int32_t> toks;
  int stop_after = -1;  // cancel after this many messages
  std::atomic<int> n{0};
};

static int CollectTokens(void *user, const ProtobufCMessage *msg) {
  auto *s = (StreamSink *)user;
  auto *r = (const Arkvale__V1__GenerateResponse *)msg;
  for (size_t i = 0; i < r->n_token_ids; i++) s->toks.push_back(r->token_ids[i]);
  s->n++;
  return s->stop_after >= 0 && s->n >= s->stop_after;
}

static ak_status_t Generate(ak_rpc_client_t *cli, int64_t n_tokens, StreamSink *sink, grpc_status_code *code,
                            ak_err_t *err, int64_t deadline_ms = 20000) {
  Arkvale__V1__StoppingCriteria stop;
  arkvale__v1__stopping_criteria__init(&stop);
  if (n_tokens >= 0) stop.has_max_new_tokens = 1, stop.max_new_tokens = (uint32_t)n_tokens;
  Arkvale__V1__GenerateRequest q;
  arkvale__v1__generate_request__init(&q);
  q.request_id = (char *)"r1";
  q.stopping = &stop;
  return ak_rpc_client_stream(cli, kGenerate, &q.base, &arkvale__v1__generate_response__descriptor, kMax, deadline_ms,
                              CollectTokens, sink, err, code);
}

TEST_F(RpcTest, StreamOfThousandInOrder) {
  StreamSink sink;
  grpc_status_code code;
  ak_err_t err;
  ASSERT_EQ(Generate(cli_, 1000, &sink, &code, &err), AK_OK) << err.msg;
  EXPECT_EQ(code, GRPC_STATUS_OK);
  ASSERT_EQ(sink.toks.size(), 1000u);
  for (int i = 0; i < 1000; i++) ASSERT_EQ(sink.toks[i], i);
}

TEST_F(RpcTest, UnknownMethodIsUnimplemented) {
  grpc_status_code code;
  MsgPtr m;
  EXPECT_EQ(Health(5000, &code, &m, "/arkvale.v1.Worker/NoSuch"), AK_ERR_UNSUPPORTED);
  EXPECT_EQ(code, GRPC_STATUS_UNIMPLEMENTED);
  EXPECT_NE(std::strstr(last_err_.msg, "unknown method /arkvale.v1.Worker/NoSuch"), nullptr) << last_err_.msg;
}

TEST_F(RpcTest, GarbageBytesAreInvalidArgument) {
  uint8_t junk[12];
  std::memset(junk, 0xff, sizeof junk);  // a varint longer than 10 bytes
  grpc_slice s = grpc_slice_from_copied_buffer((const char *)junk, sizeof junk);
  grpc_byte_buffer *buf = grpc_raw_byte_buffer_create(&s, 1);
  grpc_slice_unref(s);
  ak_err_t err;
  grpc_status_code code;
  EXPECT_EQ(ak_rpc_client_call_bytes(cli_, kRelease, buf, &arkvale__v1__release_response__descriptor, kMax, 5000,
                                     nullptr, nullptr, &err, &code),
            AK_ERR_INVALID_ARG);
  grpc_byte_buffer_destroy(buf);
  EXPECT_EQ(code, GRPC_STATUS_INVALID_ARGUMENT);
  EXPECT_NE(std::strstr(err.msg, "cannot parse arkvale.v1.ReleaseRequest"), nullptr) << err.msg;
  // The server keeps serving.
  MsgPtr m;
  EXPECT_EQ(Health(5000, &code, &m), AK_OK);
}

TEST_F(RpcTest, OversizeRequestIsResourceExhausted) {
  std::vector<uint64_t> ids(100, 1);  // 100+ bytes against the 64-byte limit
  Arkvale__V1__ReleaseRequest q;
  arkvale__v1__release_request__init(&q);
  q.n_seq_ids = ids.size(), q.seq_ids = ids.data();
  ak_err_t err;
  grpc_status_code code;
  ProtobufCMessage *m = nullptr;
  EXPECT_EQ(ak_rpc_client_unary(cli_, kRelease, &q.base, &arkvale__v1__release_response__descriptor, kMax, 5000, &err,
                                &code, &m),
            AK_ERR_OVER_BUDGET);
  EXPECT_EQ(m, nullptr);
  EXPECT_EQ(code, GRPC_STATUS_RESOURCE_EXHAUSTED) << err.msg;
}

TEST_F(RpcTest, HandlerStatusesReachTheClient) {
  grpc_status_code code;
  MsgPtr m;
  EXPECT_EQ(Health(5000, &code, &m, kPoolFull), AK_ERR_OVER_BUDGET);
  EXPECT_EQ(code, GRPC_STATUS_RESOURCE_EXHAUSTED);
  EXPECT_NE(std::strstr(last_err_.msg, "no free pages: 0 of 64"), nullptr) << last_err_.msg;
  // A unary handler that reports OK without a response is a server bug: INTERNAL.
  EXPECT_EQ(Health(5000, &code, &m, kNoResponse), AK_ERR_INTERNAL);
  EXPECT_EQ(code, GRPC_STATUS_INTERNAL);
  EXPECT_NE(std::strstr(last_err_.msg, "without a response"), nullptr) << last_err_.msg;
}

TEST_F(RpcTest, DeadlineExceeded) {
  grpc_status_code code;
  MsgPtr m;
  auto t0 = std::chrono::steady_clock::now();
  EXPECT_EQ(Health(100, &code, &m, kSlow), AK_ERR_TIMEOUT);
  EXPECT_EQ(code, GRPC_STATUS_DEADLINE_EXCEEDED);
  EXPECT_LT(std::chrono::steady_clock::now() - t0, std::chrono::milliseconds(1500));
  // The handler's writer sees the deadline too (it polls every 10 ms).
  for (int i = 0; i < 300 && cancels_seen_ == 0; i++) std::this_thread::sleep_for(std::chrono::milliseconds(10));
  EXPECT_EQ(cancels_seen_.load(), 1);
  EXPECT_EQ(deadlines_seen_.load(), 1) << "ak_rpc_writer_deadline_passed";
}

TEST_F(RpcTest, ClientCancelMidStreamSeenByWriter) {
  StreamSink sink;
  sink.stop_after = 20;
  grpc_status_code code;
  ak_err_t err;
  EXPECT_EQ(Generate(cli_, -1, &sink, &code, &err), AK_ERR_PEER);
  EXPECT_EQ(code, GRPC_STATUS_CANCELLED);
  EXPECT_EQ(sink.n.load(), 20);
  for (int i = 0; i < 300 && cancels_seen_ == 0; i++) std::this_thread::sleep_for(std::chrono::milliseconds(10));
  EXPECT_EQ(cancels_seen_.load(), 1);
  EXPECT_EQ(deadlines_seen_.load(), 0) << "a cancel within the deadline is not a deadline";
}

TEST_F(RpcTest, ServerDestroyWithStreamOpen) {
  StreamSink sink;
  grpc_status_code code = GRPC_STATUS_OK;
  ak_err_t err;
  ak_status_t st = AK_OK;
  std::thread client([&] { st = Generate(cli_, -1, &sink, &code, &err); });
  for (int i = 0; i < 500 && sink.n < 5; i++) std::this_thread::sleep_for(std::chrono::milliseconds(10));
  ASSERT_GE(sink.n.load(), 5);
  ak_rpc_server_destroy(srv_);  // returns only after the handler finished its call
  srv_ = nullptr;
  client.join();
  EXPECT_EQ(st, AK_ERR_PEER) << err.msg;
  EXPECT_TRUE(code == GRPC_STATUS_CANCELLED || code == GRPC_STATUS_UNAVAILABLE) << code;
  EXPECT_EQ(cancels_seen_.load(), 1);
}

// ak_rpc_server_shutdown: a call in progress ends on its own and its answer arrives;
// a call that arrives after is refused.
TEST_F(RpcTest, ShutdownLetsACallInProgressAnswer) {
  grpc_status_code code = GRPC_STATUS_UNKNOWN;
  MsgPtr m;
  ak_status_t st = AK_ERR_INTERNAL;
  std::thread client([&] { st = Health(20000, &code, &m, kSlow); });  // answers after 2 s
  for (int i = 0; i < 500; i++) {  // until the handler runs (it spawns its thread)
    {
      std::lock_guard<std::mutex> g(mu_);
      if (!threads_.empty()) break;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  ak_err_t err;
  EXPECT_EQ(ak_rpc_server_shutdown(srv_, 10000, &err), AK_OK) << err.msg;
  client.join();
  EXPECT_EQ(st, AK_OK) << last_err_.msg;
  ASSERT_TRUE(m);
  EXPECT_EQ(((const Arkvale__V1__HealthResponse *)m.get())->n_seqs, 7u);
  EXPECT_EQ(cancels_seen_.load(), 0);
  MsgPtr again;
  EXPECT_NE(Health(5000, &code, &again), AK_OK);
  EXPECT_EQ(code, GRPC_STATUS_UNAVAILABLE);
}

// A call that does not end within the grace: AK_ERR_TIMEOUT; destroy cancels it.
TEST_F(RpcTest, ShutdownTimesOutOnAnEndlessStream) {
  StreamSink sink;
  grpc_status_code code = GRPC_STATUS_OK;
  ak_err_t err, serr;
  ak_status_t st = AK_OK;
  std::thread client([&] { st = Generate(cli_, -1, &sink, &code, &err); });
  for (int i = 0; i < 500 && sink.n < 5; i++) std::this_thread::sleep_for(std::chrono::milliseconds(10));
  ASSERT_GE(sink.n.load(), 5);
  EXPECT_EQ(ak_rpc_server_shutdown(srv_, 100, &serr), AK_ERR_TIMEOUT);
  EXPECT_NE(std::string(serr.msg).find("still open"), std::string::npos) << serr.msg;
  ak_rpc_server_destroy(srv_);
  srv_ = nullptr;
  client.join();
  EXPECT_EQ(st, AK_ERR_PEER) << err.msg;
  EXPECT_EQ(cancels_seen_.load(), 1);
}

TEST(RpcServer, RegisterChecksAndDestroyUnstarted) {
  ak_rpc_server_t *s = nullptr;
  ak_err_t err;
  ASSERT_EQ(ak_rpc_server_create("127.0.0.1:0", 1, &err, &s), AK_OK) << err.msg;
  ak_rpc_method_t m = {kHealth, AK_RPC_UNARY, &arkvale__v1__health_request__descriptor, kMax, kMax,
                       [](void *, const ProtobufCMessage *, ak_rpc_writer_t *w) { ak_rpc_writer_finish(w, AK_OK, ""); },
                       nullptr};
  EXPECT_EQ(ak_rpc_server_register(s, &m, &err), AK_OK);
  EXPECT_EQ(ak_rpc_server_register(s, &m, &err), AK_ERR_INVALID_ARG);
  EXPECT_NE(std::strstr(err.msg, "registered twice"), nullptr) << err.msg;
  m.path = nullptr;
  EXPECT_EQ(ak_rpc_server_register(s, &m, &err), AK_ERR_INVALID_ARG);
  ak_rpc_server_destroy(s);
  EXPECT_EQ(ak_rpc_server_create("256.1.1.1:1", 1, &err, &s), AK_ERR_IO);
}

TEST(AkRpcStatus, MapsGrpcCodesBack) {
  EXPECT_EQ(ak_rpc_status_from_grpc(GRPC_STATUS_OK), AK_OK);
  EXPECT_EQ(ak_rpc_status_from_grpc(GRPC_STATUS_INVALID_ARGUMENT), AK_ERR_INVALID_ARG);
  EXPECT_EQ(ak_rpc_status_from_grpc(GRPC_STATUS_ALREADY_EXISTS), AK_ERR_EXISTS);
  EXPECT_EQ(ak_rpc_status_from_grpc(GRPC_STATUS_FAILED_PRECONDITION), AK_ERR_PRECONDITION);
  EXPECT_EQ(ak_rpc_status_from_grpc(GRPC_STATUS_DEADLINE_EXCEEDED), AK_ERR_TIMEOUT);
  // a peer that cancels our call is going away: retry elsewhere
  EXPECT_EQ(ak_rpc_status_from_grpc(GRPC_STATUS_CANCELLED), AK_ERR_PEER);
  EXPECT_EQ(ak_rpc_status_from_grpc(GRPC_STATUS_UNAVAILABLE), AK_ERR_PEER);
  EXPECT_EQ(ak_rpc_status_from_grpc(GRPC_STATUS_DATA_LOSS), AK_ERR_INTERNAL);
}
