// Integration (label `integration`): the real arkvale-worker and arkvale-coordinator
// processes on loopback ports, driven by a gRPC client (common/ak_rpc_client).
// Greedy output through the server equals the in-process engine's; 16 concurrent
// streams of mixed lengths complete; malformed requests (bytes that do not parse, bad
// fields) are INVALID_ARGUMENT and the server keeps serving; Abort, a client cancel and
// a deadline free the worker's sequence and pages (its Health, the coordinator's
// /metrics); health is SERVING, then NOT_SERVING within a few canary periods of
// `kill -9` on the worker, SERVING again once a worker restarts on the same port;
// with two groups, kill -9 of one worker mid-stream ends only its streams UNAVAILABLE,
// the other group's complete, health stays SERVING, and the restarted worker rejoins;
// SIGTERM drains (new requests UNAVAILABLE, the open stream finishes) and exits 0, and
// a drain timeout or a second signal ends a long stream UNAVAILABLE; the coordinator's
// bad flags exit 2 naming the flag, an unreachable worker exits 1.
// `arkvale serve`: from a config file with flags over it, SERVING, a request, SIGTERM
// stops both children and exits 0 (SIGINT too); a child killed -9 stops the other and
// the launcher exits 1; bad config keys and values exit 2 naming them; workers: 2
// serves through two groups.
#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <sstream>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <cstdlib>
#include <fstream>
#include <memory>
#include <string>
#include <thread>
#include <vector>

extern "C" {
#include "ak_rpc_client.h"
#include "arkvale/v1/generation.pb-c.h"
#include "arkvale/v1/worker.pb-c.h"
#include "grpc/health/v1/health.pb-c.h"
#include "pb_buf.h"
}

#include "serving_procs.h"
#include "wk_service_test_util.h"

using namespace serving_test;
using namespace wk_test;

namespace {

const int kServing = GRPC__HEALTH__V1__HEALTH_CHECK_RESPONSE__SERVING_STATUS__SERVING;
const int kNotServing = GRPC__HEALTH__V1__HEALTH_CHECK_RESPONSE__SERVING_STATUS__NOT_SERVING;
const int kCanaryMs = 200;
const int kStartMs = 30000;  // a process's start (model load) on a busy 2-core machine

struct Stream {
  std::vector<int32_t> tokens;
  int n_msgs = 0;
  int finish_reason = -1;
  std::atomic<int> seen{0};
  int cancel_after = 0;  // > 0: the client cancels after this many messages
  ak_status_t st = AK_OK;
  grpc_status_code code = GRPC_STATUS_OK;
  std::string msg;
};

int OnMsg(void *user, const ProtobufCMessage *m) {
  auto *s = (Stream *)user;
  auto *r = (const Arkvale__V1__GenerateResponse *)m;
  s->n_msgs++;
  for (size_t i = 0; i < r->n_token_ids; i++) s->tokens.push_back(r->token_ids[i]);
  if (r->has_finish_reason) s->finish_reason = r->finish_reason;
  s->seen.store(s->n_msgs);
  return s->cancel_after > 0 && s->n_msgs >= s->cancel_after;
}

// GET http://127.0.0.1:port/path; the body, or "" on failure.
std::string HttpGet(int port, const char *path) {
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  if (fd < 0) return "";
  struct sockaddr_in a = {};
  a.sin_family = AF_INET, a.sin_port = htons((uint16_t)port), a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  std::string out;
  if (connect(fd, (struct sockaddr *)&a, sizeof a) == 0) {
    std::string req = std::string("GET ") + path + " HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n";
    if (write(fd, req.data(), req.size()) == (ssize_t)req.size()) {
      char buf[4096];
      ssize_t n;
      while ((n = read(fd, buf, sizeof buf)) > 0) out.append(buf, (size_t)n);
    }
  }
  close(fd);
  size_t body = out.find("\r\n\r\n");
  return body == std::string::npos ? "" : out.substr(body + 4);
}

// The value of `series` in Prometheus text; -1 when absent.
double Sample(const std::string &text, const std::string &series) {
  std::istringstream in(text);
  for (std::string line; std::getline(in, line);)
    if (line.compare(0, series.size() + 1, series + " ") == 0) return std::stod(line.substr(series.size() + 1));
  return -1;
}

// A greedy GenerateRequest over token ids that owns its storage.
struct GenReq {
  Arkvale__V1__GenerateRequest req = ARKVALE__V1__GENERATE_REQUEST__INIT;
  Arkvale__V1__Prompt prompt = ARKVALE__V1__PROMPT__INIT;
  Arkvale__V1__TokenIds ids = ARKVALE__V1__TOKEN_IDS__INIT;
  Arkvale__V1__SamplingParams sampling = ARKVALE__V1__SAMPLING_PARAMS__INIT;
  Arkvale__V1__StoppingCriteria stopping = ARKVALE__V1__STOPPING_CRITERIA__INIT;
  std::vector<int32_t> tok;

  GenReq(const std::vector<int32_t> &t, int max_new) : tok(t) {
    ids.n_ids = tok.size(), ids.ids = tok.data();
    prompt.kind_case = ARKVALE__V1__PROMPT__KIND_TOKEN_IDS, prompt.token_ids = &ids;
    req.prompt = &prompt;
    sampling.has_temperature = 1, sampling.temperature = 0.0f;
    req.sampling = &sampling;
    stopping.has_max_new_tokens = 1, stopping.max_new_tokens = (uint32_t)max_new;
    stopping.has_ignore_eos = 1, stopping.ignore_eos = 1;
    req.stopping = &stopping;
  }
};

class ServingTest : public ::testing::Test {
 protected:
  Proc worker_, coord_, worker2_;  // worker2_: a second group's worker, when a test starts one
  int wport_ = 0, cport_ = 0, mport_ = 0;
  ak_rpc_client_t *cli_ = nullptr;

  void SetUp() override {
    if (!have_model()) GTEST_SKIP() << "model " << model_path() << " is absent (set ARKVALE_MODEL)";
  }
  void TearDown() override {
    ak_rpc_client_destroy(cli_);
    coord_.Kill();
    worker_.Kill();
    worker2_.Kill();
  }

  // The worker with the shape of wk_test::engine_params() (so its greedy tokens are
  // the in-process engine's), on `port` (0: a free one).
  void StartWorker(int port, int max_seqs = kMaxSeqs) { StartWorkerInto(&worker_, port, &wport_, max_seqs); }

  void StartWorkerInto(Proc *proc, int port, int *port_p, int max_seqs = kMaxSeqs) {
    ASSERT_TRUE(proc->Start(AK_WORKER_BIN, {"--model", model_path(), "--listen",
                                              "127.0.0.1:" + std::to_string(port), "--threads", "2",
                                              "--page-tokens", std::to_string(kPageTokens), "--max-seqs",
                                              std::to_string(max_seqs), "--max-seq-tokens",
                                              std::to_string(kMaxSeqTokens), "--max-batch-tokens",
                                              std::to_string(kBatch)}));
    *port_p = proc->WaitPort("listening on ", kStartMs);
    ASSERT_GT(*port_p, 0) << "arkvale-worker printed no port";
  }

  void StartCoordinator(std::vector<std::string> extra = {}) {
    std::vector<std::string> args = {"--model", model_path(), "--worker", "127.0.0.1:" + std::to_string(wport_),
                                     "--listen", "127.0.0.1:0", "--canary-period-ms", std::to_string(kCanaryMs),
                                     "--max-batch-tokens", std::to_string(kBatch), "--metrics-port", "0"};
    args.insert(args.end(), extra.begin(), extra.end());
    ASSERT_TRUE(coord_.Start(AK_COORDINATOR_BIN, args));
    cport_ = coord_.WaitPort("listening on ", kStartMs);
    ASSERT_GT(cport_, 0) << "arkvale-coordinator printed no port";
    mport_ = coord_.WaitPort("metrics on ", 5000);
    EXPECT_GT(mport_, 0);
    ak_err_t err;
    std::string target = "127.0.0.1:" + std::to_string(cport_);
    ASSERT_EQ(ak_rpc_client_create(target.c_str(), &err, &cli_), AK_OK) << err.msg;
  }

  void StartBoth(std::vector<std::string> extra = {}, int max_seqs = kMaxSeqs) {
    ASSERT_NO_FATAL_FAILURE(StartWorker(0, max_seqs));
    ASSERT_NO_FATAL_FAILURE(StartCoordinator(extra));
    ASSERT_TRUE(WaitHealth(kServing, kStartMs)) << "never SERVING";
  }

  void Generate(const GenReq &g, Stream *s, int64_t deadline_ms = 120000) {
    ak_err_t err;
    ak_err_clear(&err);
    s->st = ak_rpc_client_stream(cli_, "/arkvale.v1.Generation/Generate", &g.req.base,
                                 &arkvale__v1__generate_response__descriptor, kMax, deadline_ms, OnMsg, s, &err,
                                 &s->code);
    s->msg = err.msg;
  }

  int HealthCheck() {
    Grpc__Health__V1__HealthCheckRequest q = GRPC__HEALTH__V1__HEALTH_CHECK_REQUEST__INIT;
    q.service = (char *)"";
    ak_err_t err;
    ProtobufCMessage *r = nullptr;
    grpc_status_code c;
    ak_rpc_client_unary(cli_, "/grpc.health.v1.Health/Check", &q.base,
                        &grpc__health__v1__health_check_response__descriptor, kMax, 5000, &err, &c, &r);
    MsgPtr keep(r);
    return r ? (int)((const Grpc__Health__V1__HealthCheckResponse *)r)->status : -1;
  }

  // Polls until the worker holds no sequence (its Health) and the coordinator's
  // metrics show 0 KV pages resident on it (at most timeout_ms).
  bool WorkerFreed(int timeout_ms = 5000) {
    ak_rpc_client_t *w = nullptr;
    ak_err_t err;
    std::string target = "127.0.0.1:" + std::to_string(wport_);
    if (ak_rpc_client_create(target.c_str(), &err, &w) != AK_OK) return false;
    std::string series = "arkvale_worker_kv_pages_resident{worker=\"" + target + "\"}";
    bool freed = false;
    for (int64_t end = now_ms() + timeout_ms; !freed && now_ms() < end;) {
      Arkvale__V1__HealthRequest q = ARKVALE__V1__HEALTH_REQUEST__INIT;
      ProtobufCMessage *r = nullptr;
      ak_rpc_client_unary(w, "/arkvale.v1.Worker/Health", &q.base, &arkvale__v1__health_response__descriptor, kMax,
                          5000, &err, nullptr, &r);
      MsgPtr keep(r);
      freed = r && ((const Arkvale__V1__HealthResponse *)r)->n_seqs == 0 && Sample(HttpGet(mport_, "/metrics"), series) == 0;
      if (!freed) std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
    ak_rpc_client_destroy(w);
    return freed;
  }

  bool WaitHealth(int want, int timeout_ms) {
    for (int64_t end = now_ms() + timeout_ms; now_ms() < end;) {
      if (HealthCheck() == want) return true;
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
    return false;
  }
};

}  // namespace

TEST_F(ServingTest, GreedyThroughTheServerEqualsTheEngine) {
  ASSERT_NO_FATAL_FAILURE(StartBoth());
  std::vector<int32_t> prompt = prompt_ids(23, 5);
  std::vector<int32_t> ref = engine_greedy(prompt, 16);
  GenReq g(prompt, 16);
  Stream s;
  Generate(g, &s);
  ASSERT_EQ(s.st, AK_OK) << s.msg;
  EXPECT_EQ(s.tokens, ref);
  EXPECT_EQ(s.finish_reason, ARKVALE__V1__FINISH_REASON__FINISH_REASON_LENGTH);
}

TEST_F(ServingTest, SixteenConcurrentStreamsOfMixedLengths) {
  ASSERT_NO_FATAL_FAILURE(StartBoth({}, 8));
  const int kN = 16;
  std::vector<std::unique_ptr<GenReq>> reqs;
  std::vector<std::unique_ptr<Stream>> streams;
  for (int i = 0; i < kN; i++) {
    reqs.emplace_back(new GenReq(prompt_ids(4 + 9 * (i % 5), i), 2 + 3 * (i % 4)));
    streams.emplace_back(new Stream);
  }
  int64_t t0 = now_ms();
  std::vector<std::thread> th;
  for (int i = 0; i < kN; i++) th.emplace_back([&, i] { Generate(*reqs[i], streams[i].get()); });
  for (auto &t : th) t.join();
  for (int i = 0; i < kN; i++) {
    EXPECT_EQ(streams[i]->st, AK_OK) << i << ": " << streams[i]->msg;
    EXPECT_EQ(streams[i]->tokens.size(), (size_t)(2 + 3 * (i % 4))) << i;
    EXPECT_EQ(streams[i]->finish_reason, ARKVALE__V1__FINISH_REASON__FINISH_REASON_LENGTH) << i;
  }
  // Same prompt, same length: greedy decoding is deterministic across batches only up
  // to the quantized CPU path's batched rows (wk_service_test_util.h), so compare a
  // stream with the engine when it ran alone, not here; count them all.
  printf("16 streams in %lld ms\n", (long long)(now_ms() - t0));
  EXPECT_EQ(HealthCheck(), kServing);
}

TEST_F(ServingTest, MalformedRequestsAreInvalidArgumentAndTheServerKeepsServing) {
  ASSERT_NO_FATAL_FAILURE(StartBoth());
  // bytes that are not a GenerateRequest
  const char junk[] = "\xff\xff\xff\xff\x0f not protobuf";
  grpc_slice sl = grpc_slice_from_copied_buffer(junk, sizeof junk - 1);
  grpc_byte_buffer *bb = grpc_raw_byte_buffer_create(&sl, 1);
  grpc_slice_unref(sl);
  ak_err_t err;
  grpc_status_code code = GRPC_STATUS_OK;
  ak_rpc_client_call_bytes(cli_, "/arkvale.v1.Generation/Generate", bb, &arkvale__v1__generate_response__descriptor,
                           kMax, 10000, nullptr, nullptr, &err, &code);
  grpc_byte_buffer_destroy(bb);
  EXPECT_EQ(code, GRPC_STATUS_INVALID_ARGUMENT) << err.msg;
  // well-formed bytes, bad fields: the message names the field
  struct Case {
    const char *field;
    void (*mutate)(GenReq *);
  };
  const Case cases[] = {
      {"prompt", [](GenReq *g) { g->req.prompt = nullptr; }},
      {"prompt.token_ids.ids[1]", [](GenReq *g) { g->tok[1] = 1 << 30; }},
      {"stopping.max_new_tokens", [](GenReq *g) { g->stopping.max_new_tokens = 0; }},
      {"sampling.top_p", [](GenReq *g) { g->sampling.has_top_p = 1, g->sampling.top_p = 2.0f; }},
  };
  for (const Case &c : cases) {
    GenReq g(prompt_ids(8, 1), 4);
    c.mutate(&g);
    Stream s;
    Generate(g, &s);
    EXPECT_EQ(s.code, GRPC_STATUS_INVALID_ARGUMENT) << c.field << ": " << s.msg;
    EXPECT_NE(s.msg.find(std::string(c.field) + ":"), std::string::npos) << s.msg;
  }
  EXPECT_EQ(HealthCheck(), kServing);
  GenReq g(prompt_ids(8, 2), 3);
  Stream s;
  Generate(g, &s);
  EXPECT_EQ(s.st, AK_OK) << s.msg;
  EXPECT_EQ(s.tokens.size(), 3u);
}

TEST_F(ServingTest, AbortCancelAndDeadlineFreeTheWorkerPages) {
  ASSERT_NO_FATAL_FAILURE(StartBoth());
  // Abort by request_id mid-stream
  GenReq g(prompt_ids(40, 1), 200);
  g.req.request_id = (char *)"abort-me";
  Stream s;
  std::thread t([&] { Generate(g, &s); });
  for (int64_t end = now_ms() + 30000; s.seen.load() < 2 && now_ms() < end;)
    std::this_thread::sleep_for(std::chrono::milliseconds(2));
  Arkvale__V1__AbortRequest aq = ARKVALE__V1__ABORT_REQUEST__INIT;
  aq.request_id = (char *)"abort-me";
  ak_err_t err;
  ProtobufCMessage *ar = nullptr;
  EXPECT_EQ(ak_rpc_client_unary(cli_, "/arkvale.v1.Generation/Abort", &aq.base, &arkvale__v1__abort_response__descriptor,
                                kMax, 10000, &err, nullptr, &ar),
            AK_OK)
      << err.msg;
  MsgPtr keep(ar);
  EXPECT_TRUE(ar && ((const Arkvale__V1__AbortResponse *)ar)->found);
  t.join();
  EXPECT_EQ(s.code, GRPC_STATUS_CANCELLED) << s.msg;
  EXPECT_TRUE(WorkerFreed()) << "pages held after Abort";

  // the client cancels its call
  GenReq g2(prompt_ids(40, 2), 200);
  Stream c;
  c.cancel_after = 3;
  Generate(g2, &c);
  EXPECT_EQ(c.code, GRPC_STATUS_CANCELLED) << c.msg;
  EXPECT_TRUE(WorkerFreed()) << "pages held after a client cancel";

  // the client's deadline passes mid-stream
  GenReq g3(prompt_ids(40, 3), 200);
  Stream d;
  Generate(g3, &d, 150);
  EXPECT_EQ(d.code, GRPC_STATUS_DEADLINE_EXCEEDED) << d.msg;
  EXPECT_LT(d.tokens.size(), 200u);
  EXPECT_TRUE(WorkerFreed()) << "pages held after a deadline";
  // counted by their final codes (the deadline's once the loop reaps it: poll)
  std::string m;
  for (int64_t end = now_ms() + 5000; now_ms() < end; std::this_thread::sleep_for(std::chrono::milliseconds(20))) {
    m = HttpGet(mport_, "/metrics");
    if (Sample(m, "arkvale_requests_total{code=\"DEADLINE_EXCEEDED\"}") == 1) break;
  }
  EXPECT_EQ(Sample(m, "arkvale_requests_total{code=\"CANCELLED\"}"), 2) << m;
  EXPECT_EQ(Sample(m, "arkvale_requests_total{code=\"DEADLINE_EXCEEDED\"}"), 1) << m;
  EXPECT_EQ(HealthCheck(), kServing);
}

TEST_F(ServingTest, HealthFollowsAKilledAndRestartedWorker) {
  ASSERT_NO_FATAL_FAILURE(StartBoth());
  int port = wport_;
  worker_.Signal(SIGKILL);
  EXPECT_EQ(worker_.Wait(5000), 128 + SIGKILL);
  int64_t t0 = now_ms();
  ASSERT_TRUE(WaitHealth(kNotServing, 5 * kCanaryMs + 1000)) << "still SERVING with the worker killed";
  printf("NOT_SERVING %lld ms after kill -9 (canary period %d ms)\n", (long long)(now_ms() - t0), kCanaryMs);
  GenReq g(prompt_ids(10, 3), 4);
  Stream refused;
  Generate(g, &refused);
  EXPECT_EQ(refused.code, GRPC_STATUS_UNAVAILABLE) << refused.msg;

  ASSERT_NO_FATAL_FAILURE(StartWorker(port));
  ASSERT_EQ(wport_, port);
  ASSERT_TRUE(WaitHealth(kServing, kStartMs)) << "not SERVING after the worker came back";
  Stream s;
  Generate(g, &s);
  EXPECT_EQ(s.st, AK_OK) << s.msg;
  EXPECT_EQ(s.tokens.size(), 4u);
}

// Worker crash (issue 5): two groups (--worker twice), kill -9 one worker mid-stream.
// Its in-flight streams end UNAVAILABLE (no hang), the other group's complete, the
// coordinator stays up and SERVING and routes new requests to the live group; the
// worker restarted on its port rejoins (its canary, then requests).
TEST_F(ServingTest, KillOneWorkerOfTwoGroupsMidStream) {
  int port2 = 0;
  ASSERT_NO_FATAL_FAILURE(StartWorker(0));
  ASSERT_NO_FATAL_FAILURE(StartWorkerInto(&worker2_, 0, &port2));
  std::string w1 = "127.0.0.1:" + std::to_string(wport_), w2 = "127.0.0.1:" + std::to_string(port2);
  ASSERT_NO_FATAL_FAILURE(StartCoordinator({"--worker", w2}));
  ASSERT_TRUE(WaitHealth(kServing, kStartMs)) << "never SERVING";
  auto batch_steps = [&](const std::string &w) {
    std::string m = HttpGet(mport_, "/metrics");
    return Sample(m, "arkvale_worker_steps_total{worker=\"" + w + "\"}") -
           Sample(m, "arkvale_worker_canaries_total{worker=\"" + w + "\"}");
  };
  const int kN = 4, kNew = 160;
  std::vector<std::unique_ptr<GenReq>> reqs;
  std::vector<Stream> streams(kN);
  for (int i = 0; i < kN; i++) reqs.emplace_back(new GenReq(prompt_ids(10 + 3 * i, 20 + i), kNew));
  std::vector<std::thread> th;
  std::vector<int64_t> ended_ms(kN, 0);
  for (int i = 0; i < kN; i++)
    th.emplace_back([&, i] {
      Generate(*reqs[i], &streams[i]);
      ended_ms[i] = now_ms();
    });
  for (int64_t end = now_ms() + 30000; now_ms() < end;) {
    int started = 0;
    for (auto &s : streams) started += s.seen.load() >= 2;
    if (started == kN) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  EXPECT_GT(batch_steps(w2), 0) << "the second group took none of the streams";
  int64_t t0 = now_ms();
  worker2_.Signal(SIGKILL);
  EXPECT_EQ(worker2_.Wait(5000), 128 + SIGKILL);
  for (auto &t : th) t.join();
  int n_ok = 0, n_unavailable = 0;
  int64_t unavailable_after_ms = 0;
  for (int i = 0; i < kN; i++) {
    if (streams[i].st == AK_OK) {
      n_ok++;
      EXPECT_EQ(streams[i].tokens.size(), (size_t)kNew) << i;
    } else {
      n_unavailable++;
      EXPECT_EQ(streams[i].code, GRPC_STATUS_UNAVAILABLE) << i << ": " << streams[i].msg;
      unavailable_after_ms = std::max(unavailable_after_ms, ended_ms[i] - t0);
    }
  }
  printf("the killed worker's streams ended UNAVAILABLE %lld ms after kill -9; the others ran to their end "
         "%lld ms after it\n",
         (long long)unavailable_after_ms, (long long)(now_ms() - t0));
  EXPECT_LT(unavailable_after_ms, 10000) << "the killed worker's streams hung";
  EXPECT_GE(n_ok, 1) << "the live group's streams should complete";
  EXPECT_GE(n_unavailable, 1) << "the killed worker's streams should end UNAVAILABLE";
  EXPECT_EQ(HealthCheck(), kServing) << "one live group is enough";
  GenReq g(prompt_ids(10, 40), 4);
  Stream s;
  Generate(g, &s);
  EXPECT_EQ(s.st, AK_OK) << s.msg;
  EXPECT_EQ(s.tokens.size(), 4u);

  // Restarted on its port: the coordinator revives the group (canary), then routes to it.
  ASSERT_NO_FATAL_FAILURE(StartWorkerInto(&worker2_, port2, &port2));
  std::string canaries = "arkvale_worker_canaries_total{worker=\"" + w2 + "\"}";
  double c0 = Sample(HttpGet(mport_, "/metrics"), canaries);
  bool back = false;
  for (int64_t end = now_ms() + kStartMs; !back && now_ms() < end;) {
    back = Sample(HttpGet(mport_, "/metrics"), canaries) > c0;
    if (!back) std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  ASSERT_TRUE(back) << "the restarted worker never answered a canary";
  double before = batch_steps(w2);
  std::vector<Stream> again(kN);
  std::vector<std::thread> th2;
  for (int i = 0; i < kN; i++) th2.emplace_back([&, i] { Generate(*reqs[i], &again[i]); });
  for (auto &t : th2) t.join();
  for (int i = 0; i < kN; i++) EXPECT_EQ(again[i].st, AK_OK) << i << ": " << again[i].msg;
  EXPECT_GT(batch_steps(w2), before) << "the rejoined group takes requests again";
}

TEST_F(ServingTest, SigtermDrainsThenExitsZero) {
  ASSERT_NO_FATAL_FAILURE(StartBoth({"--drain-timeout-ms", "20000"}));
  GenReq g(prompt_ids(10, 4), 160);
  Stream s;
  std::thread t([&] { Generate(g, &s); });
  for (int64_t end = now_ms() + 30000; s.seen.load() < 1 && now_ms() < end;)
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  ASSERT_GE(s.seen.load(), 1) << "the stream never started";
  int64_t t0 = now_ms();
  coord_.Signal(SIGTERM);
  // draining: NOT_SERVING, and a new request is refused while the stream goes on
  bool saw_not_serving = WaitHealth(kNotServing, 5000);
  GenReq g2(prompt_ids(10, 6), 2);
  Stream refused;
  Generate(g2, &refused);
  t.join();
  EXPECT_EQ(s.st, AK_OK) << s.msg;
  EXPECT_EQ(s.tokens.size(), 160u) << "the stream did not run through the drain";
  EXPECT_TRUE(saw_not_serving) << "health did not report NOT_SERVING while draining";
  EXPECT_EQ(refused.code, GRPC_STATUS_UNAVAILABLE) << refused.msg;
  EXPECT_NE(refused.msg.find("draining"), std::string::npos) << refused.msg;
  EXPECT_EQ(coord_.Wait(20000 + 5000), 0);
  printf("drained and exited %lld ms after SIGTERM\n", (long long)(now_ms() - t0));
  worker_.Signal(SIGTERM);
  EXPECT_EQ(worker_.Wait(10000), 0);
}

TEST_F(ServingTest, DrainTimeoutEndsALongStreamUnavailable) {
  ASSERT_NO_FATAL_FAILURE(StartBoth({"--drain-timeout-ms", "300"}));
  GenReq g(prompt_ids(10, 7), 240);
  Stream s;
  std::thread t([&] { Generate(g, &s); });
  for (int64_t end = now_ms() + 30000; s.seen.load() < 1 && now_ms() < end;)
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  int64_t t0 = now_ms();
  coord_.Signal(SIGTERM);
  EXPECT_EQ(coord_.Wait(10000), 0);
  int64_t took = now_ms() - t0;
  t.join();
  EXPECT_EQ(s.code, GRPC_STATUS_UNAVAILABLE) << s.msg;
  EXPECT_LT(s.tokens.size(), 240u);
  EXPECT_LT(took, 5000) << "the drain timeout was not honoured";
}

TEST_F(ServingTest, ASecondSignalCutsTheDrainShort) {
  ASSERT_NO_FATAL_FAILURE(StartBoth({"--drain-timeout-ms", "60000"}));
  GenReq g(prompt_ids(10, 9), 240);
  Stream s;
  std::thread t([&] { Generate(g, &s); });
  for (int64_t end = now_ms() + 30000; s.seen.load() < 1 && now_ms() < end;)
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  coord_.Signal(SIGTERM);
  ASSERT_TRUE(WaitHealth(kNotServing, 5000));
  int64_t t0 = now_ms();
  coord_.Signal(SIGINT);
  EXPECT_EQ(coord_.Wait(10000), 0);
  t.join();
  EXPECT_EQ(s.code, GRPC_STATUS_UNAVAILABLE) << s.msg;
  EXPECT_LT(now_ms() - t0, 5000) << "the second signal did not cut the drain short";
}

TEST(CoordinatorProcess, BadFlagsExit2NamingTheFlag) {
  struct Case {
    std::vector<std::string> args;
    const char *want;  // in the message
  };
  const std::vector<Case> bad = {
      {{"--model", "m.gguf", "--worker", "127.0.0.1:1", "--max-queue", "lots"}, "--max-queue"},
      {{"--model", "m.gguf", "--worker", "127.0.0.1:1,127.0.0.1:2"}, "--worker: '127.0.0.1:1,127.0.0.1:2' is several"},
      {{"--model", "m.gguf", "--worker", "127.0.0.1:1", "--group", "127.0.0.1:2,127.0.0.1:1"},
       "--group: 127.0.0.1:1 is given twice"},
      {{"--model", "m.gguf", "--group", "127.0.0.1:1,"}, "--group: '' is not HOST:PORT"},
      {{"--model", "m.gguf", "--worker", "no-port"}, "--worker: 'no-port'"},
      {{"--model", "m.gguf", "--worker", "127.0.0.1:1", "--metrics-port", "70000"}, "--metrics-port"},
      {{"--model", "m.gguf"}, "--worker or --group is required"},
      {{"--model", "m.gguf", "--worker", "127.0.0.1:1", "--no-such-flag", "1"}, "unknown flag --no-such-flag"},
      {{"--worker"}, "--worker needs a value"},
  };
  for (const auto &c : bad) {
    Proc p;
    ASSERT_TRUE(p.Start(AK_COORDINATOR_BIN, c.args, true));
    EXPECT_FALSE(p.WaitLine(c.want, 10000).empty()) << "no '" << c.want << "' in the output";
    EXPECT_EQ(p.Wait(10000), 2) << c.want;
  }
}

TEST(CoordinatorProcess, UnreachableWorkerExits1AfterTheConnectTimeout) {
  if (!have_model()) GTEST_SKIP() << "model " << model_path() << " is absent (set ARKVALE_MODEL)";
  Proc p;
  int64_t t0 = now_ms();
  // port 1 on loopback: nothing listens there
  ASSERT_TRUE(p.Start(AK_COORDINATOR_BIN,
                      {"--model", model_path(), "--worker", "127.0.0.1:1", "--connect-timeout-ms", "800"}, true));
  std::string line = p.WaitLine("unreachable after", 15000);
  EXPECT_NE(line.find("worker 127.0.0.1:1"), std::string::npos) << "no clear message: " << line;
  EXPECT_EQ(p.Wait(15000), 1);
  int64_t took = now_ms() - t0;
  EXPECT_GE(took, 700);
  EXPECT_LT(took, 10000);
}

namespace {

// A config file in the test's temporary directory.
std::string WriteConfig(const std::string &name, const std::string &json) {
  const char *tmp = getenv("TMPDIR");
  std::string path = std::string(tmp && *tmp ? tmp : "/tmp") + "/arkvale_serve_" + std::to_string(getpid()) + "_" +
                     name + ".json";
  std::ofstream(path) << json;
  return path;
}

bool Alive(pid_t pid) { return pid > 0 && kill(pid, 0) == 0; }

}  // namespace

TEST(ArkvaleServe, ConfigAndFlagsThenServesThenStopsOnSigterm) {
  if (!have_model()) GTEST_SKIP() << "model " << model_path() << " is absent (set ARKVALE_MODEL)";
  // the file's listen port is overridden by the flag; its worker section is used
  std::string cfg = WriteConfig("ok", std::string("{\"model\": \"") + model_path() +
                                          "\", \"listen\": \"127.0.0.1:1\", \"metrics_port\": 0,"
                                          " \"worker\": {\"threads\": 2, \"max_seqs\": 4, \"max_seq_tokens\": 256,"
                                          " \"page_tokens\": 16, \"max_batch_tokens\": 64},"
                                          " \"coordinator\": {\"max_batch_tokens\": 64, \"drain_timeout_ms\": 5000}}");
  Proc serve;
  ASSERT_TRUE(serve.Start(AK_ARKVALE_BIN, {"serve", "--config", cfg, "--listen", "127.0.0.1:0",
                                           "--coordinator-canary-period-ms", "200"}));
  std::string line = serve.WaitLine("serving on ", kStartMs);
  ASSERT_FALSE(line.empty()) << "arkvale serve never printed \"serving on\"";
  std::string addr = line.substr(line.find("serving on ") + 11);
  addr = addr.substr(0, addr.find(' '));
  int wpid = 0, cpid = 0;
  ASSERT_NE(line.find("pid "), std::string::npos) << line;
  sscanf(line.c_str() + line.find("worker "), "worker %*s pid %d, coordinator pid %d", &wpid, &cpid);
  EXPECT_TRUE(Alive(wpid) && Alive(cpid)) << line;
  EXPECT_NE(line.find("/metrics"), std::string::npos) << line;

  ak_rpc_client_t *cli = nullptr;
  ak_err_t err;
  ASSERT_EQ(ak_rpc_client_create(addr.c_str(), &err, &cli), AK_OK) << err.msg;
  GenReq g(prompt_ids(12, 8), 5);
  Stream s;
  s.st = ak_rpc_client_stream(cli, "/arkvale.v1.Generation/Generate", &g.req.base,
                              &arkvale__v1__generate_response__descriptor, kMax, 60000, OnMsg, &s, &err, &s.code);
  EXPECT_EQ(s.st, AK_OK) << err.msg;
  EXPECT_EQ(s.tokens.size(), 5u);
  ak_rpc_client_destroy(cli);

  serve.Signal(SIGTERM);
  EXPECT_EQ(serve.Wait(20000), 0);
  EXPECT_FALSE(Alive(wpid)) << "the worker outlived arkvale serve";
  EXPECT_FALSE(Alive(cpid)) << "the coordinator outlived arkvale serve";
  unlink(cfg.c_str());
}

// workers: 2 starts two workers as two groups of the coordinator; both serve; SIGTERM
// stops all three. Two workers cannot share a fixed listen port.
TEST(ArkvaleServe, TwoWorkersAsTwoGroups) {
  if (!have_model()) GTEST_SKIP() << "model " << model_path() << " is absent (set ARKVALE_MODEL)";
  Proc serve;
  ASSERT_TRUE(serve.Start(AK_ARKVALE_BIN, {"serve", "--model", model_path(), "--listen", "127.0.0.1:0", "--workers",
                                           "2", "--worker-threads", "1", "--worker-max-seq-tokens", "128",
                                           "--metrics-port", "0", "--coordinator-canary-period-ms", "200"}));
  std::string line = serve.WaitLine("serving on ", kStartMs);
  ASSERT_FALSE(line.empty()) << "arkvale serve never printed \"serving on\"";
  std::string addr = line.substr(line.find("serving on ") + 11);
  addr = addr.substr(0, addr.find(' '));
  size_t w1 = line.find("worker "), w2 = line.find("worker ", w1 + 1);
  ASSERT_NE(w2, std::string::npos) << "two workers expected: " << line;
  int pid1 = 0, pid2 = 0, cpid = 0;
  char a1[64] = {0}, a2[64] = {0};
  sscanf(line.c_str() + w1, "worker %63s pid %d, worker %63s pid %d, coordinator pid %d", a1, &pid1, a2, &pid2,
         &cpid);
  EXPECT_TRUE(Alive(pid1) && Alive(pid2) && Alive(cpid)) << line;
  int mport = 0;
  size_t m = line.find("metrics http://");
  ASSERT_NE(m, std::string::npos) << line;
  sscanf(line.c_str() + line.find(':', m + 15) + 1, "%d", &mport);

  ak_rpc_client_t *cli = nullptr;
  ak_err_t err;
  ASSERT_EQ(ak_rpc_client_create(addr.c_str(), &err, &cli), AK_OK) << err.msg;
  std::vector<std::unique_ptr<GenReq>> reqs;
  std::vector<Stream> streams(4);
  for (int i = 0; i < 4; i++) reqs.emplace_back(new GenReq(prompt_ids(10 + i, 50 + i), 12));
  std::vector<std::thread> th;
  for (int i = 0; i < 4; i++)
    th.emplace_back([&, i] {
      ak_err_t e;
      streams[i].st = ak_rpc_client_stream(cli, "/arkvale.v1.Generation/Generate", &reqs[i]->req.base,
                                           &arkvale__v1__generate_response__descriptor, kMax, 60000, OnMsg,
                                           &streams[i], &e, &streams[i].code);
      streams[i].msg = e.msg;
    });
  for (auto &t : th) t.join();
  for (int i = 0; i < 4; i++) EXPECT_EQ(streams[i].st, AK_OK) << i << ": " << streams[i].msg;
  ak_rpc_client_destroy(cli);
  std::string metrics = HttpGet(mport, "/metrics");
  // the names are "a1," as printed: strip the comma
  std::string n1(a1), n2(a2);
  if (!n1.empty() && n1.back() == ',') n1.pop_back();
  if (!n2.empty() && n2.back() == ',') n2.pop_back();
  EXPECT_GE(Sample(metrics, "arkvale_worker_canaries_total{worker=\"" + n1 + "\"}"), 1) << metrics;
  EXPECT_GE(Sample(metrics, "arkvale_worker_canaries_total{worker=\"" + n2 + "\"}"), 1) << metrics;

  serve.Signal(SIGTERM);
  EXPECT_EQ(serve.Wait(20000), 0);
  EXPECT_FALSE(Alive(pid1) || Alive(pid2) || Alive(cpid)) << "a child outlived arkvale serve";

  Proc bad;
  ASSERT_TRUE(bad.Start(AK_ARKVALE_BIN, {"serve", "--model", model_path(), "--workers", "2", "--worker-listen",
                                         "127.0.0.1:5999"},
                        true));
  EXPECT_FALSE(bad.WaitLine("cannot share worker.listen", 10000).empty());
  EXPECT_EQ(bad.Wait(10000), 2);
}

// A child that dies on its own: the launcher stops the other and exits 1. SIGINT (a
// terminal's Ctrl-C) is not needed for that; it is tested as the stop signal here.
TEST(ArkvaleServe, ADeadChildStopsTheOtherAndExits1) {
  if (!have_model()) GTEST_SKIP() << "model " << model_path() << " is absent (set ARKVALE_MODEL)";
  Proc serve;
  ASSERT_TRUE(serve.Start(AK_ARKVALE_BIN, {"serve", "--model", model_path(), "--listen", "127.0.0.1:0",
                                           "--worker-threads", "1", "--worker-max-seq-tokens", "128",
                                           "--coordinator-canary-period-ms", "200"}));
  std::string line = serve.WaitLine("serving on ", kStartMs);
  ASSERT_FALSE(line.empty());
  int wpid = 0, cpid = 0;
  sscanf(line.c_str() + line.find("worker "), "worker %*s pid %d, coordinator pid %d", &wpid, &cpid);
  ASSERT_TRUE(Alive(wpid) && Alive(cpid)) << line;
  kill(wpid, SIGKILL);
  EXPECT_EQ(serve.Wait(20000), 1);
  EXPECT_FALSE(Alive(cpid)) << "the coordinator outlived arkvale serve";

  Proc again;
  ASSERT_TRUE(again.Start(AK_ARKVALE_BIN, {"serve", "--model", model_path(), "--listen", "127.0.0.1:0",
                                           "--worker-threads", "1", "--worker-max-seq-tokens", "128"}));
  line = again.WaitLine("serving on ", kStartMs);
  ASSERT_FALSE(line.empty());
  sscanf(line.c_str() + line.find("worker "), "worker %*s pid %d, coordinator pid %d", &wpid, &cpid);
  again.Signal(SIGINT);
  EXPECT_EQ(again.Wait(20000), 0);
  EXPECT_FALSE(Alive(wpid) || Alive(cpid)) << "a child outlived arkvale serve after SIGINT";
}

TEST(ArkvaleServe, BadConfigExits2NamingTheKey) {
  struct Case {
    const char *json, *want;
  };
  const Case cases[] = {
      {"{\"model\": \"m.gguf\", \"worker\": {\"thread\": 2}}", "worker.thread: unknown key"},
      {"{\"model\": \"m.gguf\", \"metrics_port\": \"9090\"}", "metrics_port: wants an integer"},
      {"{\"model\": \"m.gguf\", \"coordinator\": {\"max_queue\": -3}}", "coordinator.max_queue"},
      {"{\"model\": \"m.gguf\",\n \"listen\": }", "malformed JSON at line 2"},
      {"{\"worker\": {}}", "no model"},
  };
  int k = 0;
  for (const Case &c : cases) {
    std::string cfg = WriteConfig("bad" + std::to_string(k++), c.json);
    std::string errfile = cfg + ".err";
    pid_t pid = fork();
    if (pid == 0) {
      FILE *f = freopen(errfile.c_str(), "w", stderr);
      (void)f;
      execl(AK_ARKVALE_BIN, AK_ARKVALE_BIN, "serve", "--config", cfg.c_str(), (char *)nullptr);
      _exit(127);
    }
    int status = 0;
    waitpid(pid, &status, 0);
    EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 2) << c.json;
    std::ifstream in(errfile);
    std::string msg((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    EXPECT_NE(msg.find(c.want), std::string::npos) << "want '" << c.want << "' in: " << msg;
    unlink(cfg.c_str());
    unlink(errfile.c_str());
  }
  Proc p;
  ASSERT_TRUE(p.Start(AK_ARKVALE_BIN, {"serve", "--model", "m.gguf", "--worker-threads", "two"}));
  EXPECT_EQ(p.Wait(10000), 2);
}
