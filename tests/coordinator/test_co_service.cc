// Tests for coordinator/co_service.c and co_service_loop.c: the public Generation
// service over an in-process Worker service (wk_service) on loopback, with the real
// default model. GetModelInfo; Tokenize round trip; greedy tokens through Generate equal
// the in-process engine's; four concurrent streams complete; malformed requests are
// INVALID_ARGUMENT naming the field; a cancelled stream and an Abort free the worker's
// sequence within a few steps. grpc.health.v1: SERVING after the first canary,
// NOT_SERVING when the worker goes away and SERVING again when it comes back, Watch
// sees the flips, and a fake worker whose process answers while its engine fails keeps
// it NOT_SERVING; client deadlines (queued and streaming) end DEADLINE_EXCEEDED and
// free the worker's sequence; the metrics families after requests; co_service_drain
// (new requests UNAVAILABLE, NOT_SERVING, open streams finish or a timeout leaves them
// to destroy); a hung Step turns health NOT_SERVING through the watchdog. Two groups
// (two in-process workers): requests spread over both; one worker stopped mid-stream
// fails only its group's streams (UNAVAILABLE), the other group serves on and health
// stays SERVING until every group is dead; the worker back on its port rejoins; bad
// group lists are INVALID_ARGUMENT. One group of two ranks: both answer every Step
// (rank 0 streams, greedy equals the engine), a lost rank kills the group, it revives.
// Pipelined decode: a stop string seen while the next Step runs (its token discarded,
// one Step more than tokens, the sequence dropped, no page left); max_new_tokens costs
// no extra Step; slow Steps are queued at the worker behind the running one, and an
// Abort with Steps in flight leaves the other stream running.
#include <gtest/gtest.h>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cmath>
#include <cstring>
#include <memory>
#include <mutex>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

extern "C" {
#include "ak_rpc_client.h"
#include "ak_rpc_server.h"
#include "arkvale/v1/generation.pb-c.h"
#include "arkvale/v1/worker.pb-c.h"
#include "co_metrics.h"
#include "co_service.h"
#include "grpc/health/v1/health.pb-c.h"
#include "pb_buf.h"
#include "wk_service.h"
}

#include "wk_service_test_util.h"

using namespace wk_test;

namespace {

const char *kPromptText = "The quick brown fox jumps over the lazy dog. Once upon a time,";

// What one Generate stream delivered.
struct Stream {
  std::vector<int32_t> tokens;
  std::string text;
  int n_msgs = 0;
  int finish_reason = -1;
  uint32_t completion_tokens = 0, prompt_tokens = 0;
  std::string request_id;
  int cancel_after = 0;  // > 0: cancel the call after this many messages
  std::atomic<int> *seen = nullptr;
  ak_status_t st = AK_OK;
  grpc_status_code code = GRPC_STATUS_OK;
  std::string msg;
};

int OnMsg(void *user, const ProtobufCMessage *m) {
  auto *s = (Stream *)user;
  auto *r = (const Arkvale__V1__GenerateResponse *)m;
  s->n_msgs++;
  if (s->seen) s->seen->store(s->n_msgs);
  for (size_t i = 0; i < r->n_token_ids; i++) s->tokens.push_back(r->token_ids[i]);
  if (r->text) s->text += r->text;
  if (r->request_id) s->request_id = r->request_id;
  if (r->has_finish_reason) s->finish_reason = r->finish_reason;
  if (r->usage) s->completion_tokens = r->usage->completion_tokens, s->prompt_tokens = r->usage->prompt_tokens;
  return s->cancel_after > 0 && s->n_msgs >= s->cancel_after;
}

// A GenerateRequest that owns its storage.
struct GenReq {
  Arkvale__V1__GenerateRequest req = ARKVALE__V1__GENERATE_REQUEST__INIT;
  Arkvale__V1__Prompt prompt = ARKVALE__V1__PROMPT__INIT;
  Arkvale__V1__TokenIds ids = ARKVALE__V1__TOKEN_IDS__INIT;
  Arkvale__V1__SamplingParams sampling = ARKVALE__V1__SAMPLING_PARAMS__INIT;
  Arkvale__V1__StoppingCriteria stopping = ARKVALE__V1__STOPPING_CRITERIA__INIT;
  std::string text, rid;
  std::vector<int32_t> tok;

  GenReq(int max_new, bool ignore_eos = true) {
    req.prompt = &prompt;
    sampling.has_temperature = 1, sampling.temperature = 0.0f;
    req.sampling = &sampling;
    stopping.has_max_new_tokens = 1, stopping.max_new_tokens = (uint32_t)max_new;
    stopping.has_ignore_eos = 1, stopping.ignore_eos = ignore_eos;
    req.stopping = &stopping;
  }
  void set_text(const std::string &t) {
    text = t;
    prompt.kind_case = ARKVALE__V1__PROMPT__KIND_TEXT, prompt.text = (char *)text.c_str();
  }
  void set_ids(const std::vector<int32_t> &t) {
    tok = t;
    ids.n_ids = tok.size(), ids.ids = tok.data();
    prompt.kind_case = ARKVALE__V1__PROMPT__KIND_TOKEN_IDS, prompt.token_ids = &ids;
  }
  void set_id(const std::string &id) { rid = id, req.request_id = (char *)rid.c_str(); }
};

class CoServiceTest : public ::testing::Test {
 protected:
  wk_service_t *wk_ = nullptr;
  co_service_t *co_ = nullptr;
  ak_rpc_client_t *cli_ = nullptr, *wcli_ = nullptr;
  int32_t max_queue_ = 64;
  int64_t canary_period_ms_ = 200;
  int64_t health_stale_ms_ = 0;  // co_service's default
  int worker_job_delay_ms_ = 0;  // > 0: every worker job waits this long first (slow steps)
  int32_t worker_max_seqs_ = 0;  // > 0: StartWorker's engine gets this many slots (else kMaxSeqs)
  std::string waddr_;
  int n_groups_ = 1;             // 2: a second worker (wk2_, waddr2_) as a second group
  bool two_ranks_ = false;       // the second worker as rank 1 of the one group instead
  wk_service_t *wk2_ = nullptr;
  std::string waddr2_;
  std::string group2_addr_;      // with n_groups_ 2: the second group's worker is here (else wk2_)

  static void SlowJob(void *user) {
    std::this_thread::sleep_for(std::chrono::milliseconds(*(int *)user));
  }

  void SetUp() override { Start(); }

  void Start() {
    if (!have_model()) GTEST_SKIP() << "model " << model_path() << " is absent (set ARKVALE_MODEL)";
    ASSERT_NO_FATAL_FAILURE(StartWorker(0));
    co_service_params_t cp = co_service_params_default();
    cp.model_path = model_path();
    cp.worker_addr = waddr_.c_str();
    const char *ranks[2];
    co_service_group_t groups[2];
    if (n_groups_ == 2) {
      if (group2_addr_.empty()) ASSERT_NO_FATAL_FAILURE(StartWorker2(0));
      ranks[0] = waddr_.c_str(), ranks[1] = group2_addr_.empty() ? waddr2_.c_str() : group2_addr_.c_str();
      groups[0] = {&ranks[0], 1}, groups[1] = {&ranks[1], 1};
      cp.groups = groups, cp.n_groups = 2;
    } else if (two_ranks_) {
      ASSERT_NO_FATAL_FAILURE(StartWorker2(0));
      ranks[0] = waddr_.c_str(), ranks[1] = waddr2_.c_str();
      groups[0] = {&ranks[0], 2};
      cp.groups = groups, cp.n_groups = 1;
    }
    cp.max_batch_tokens = kBatch;
    cp.max_queue = max_queue_;
    cp.canary_period_ms = canary_period_ms_;
    cp.health_stale_ms = health_stale_ms_;
    ak_err_t err;
    ASSERT_EQ(co_service_create(&cp, &err, &co_), AK_OK) << err.msg;
    std::string caddr = "127.0.0.1:" + std::to_string(co_service_port(co_));
    ASSERT_EQ(ak_rpc_client_create(caddr.c_str(), &err, &cli_), AK_OK) << err.msg;
  }

  // A worker on `port` (0: a free one), and wcli_ to it.
  void StartWorker(int port) {
    wk_service_params_t wp = wk_service_params_default();
    wp.engine = engine_params();
    if (worker_max_seqs_ > 0) wp.engine.max_seqs = worker_max_seqs_;
    std::string listen = "127.0.0.1:" + std::to_string(port);
    wp.listen_addr = listen.c_str();
    if (worker_job_delay_ms_ > 0) wp.test_before_job = SlowJob, wp.test_user = &worker_job_delay_ms_;
    ak_err_t err;
    ASSERT_EQ(wk_service_create(&wp, &err, &wk_), AK_OK) << err.msg;
    waddr_ = "127.0.0.1:" + std::to_string(wk_service_port(wk_));
    ak_rpc_client_destroy(wcli_);
    wcli_ = nullptr;
    ASSERT_EQ(ak_rpc_client_create(waddr_.c_str(), &err, &wcli_), AK_OK) << err.msg;
  }

  // The second group's worker, on `port` (0: a free one).
  void StartWorker2(int port) {
    wk_service_params_t wp = wk_service_params_default();
    wp.engine = engine_params();
    std::string listen = "127.0.0.1:" + std::to_string(port);
    wp.listen_addr = listen.c_str();
    ak_err_t err;
    ASSERT_EQ(wk_service_create(&wp, &err, &wk2_), AK_OK) << err.msg;
    waddr2_ = "127.0.0.1:" + std::to_string(wk_service_port(wk2_));
  }

  void TearDown() override { Stop(); }

  void Stop() {
    ak_rpc_client_destroy(cli_);
    ak_rpc_client_destroy(wcli_);
    co_service_destroy(co_);
    wk_service_destroy(wk_);
    wk_service_destroy(wk2_);
    cli_ = wcli_ = nullptr, co_ = nullptr, wk_ = nullptr, wk2_ = nullptr;
  }

  ak_status_t Call(const char *m, const ProtobufCMessage *req, const ProtobufCMessageDescriptor *d, MsgPtr *resp,
                   grpc_status_code *code = nullptr, std::string *msg = nullptr) {
    return unary_call(cli_, "arkvale.v1.Generation", m, req, d, resp, code, msg);
  }

  void Generate(const GenReq &g, Stream *s, int64_t deadline_ms = 120000) {
    ak_err_t err;
    ak_err_clear(&err);
    s->st = ak_rpc_client_stream(cli_, "/arkvale.v1.Generation/Generate", &g.req.base,
                                 &arkvale__v1__generate_response__descriptor, kMax, deadline_ms, OnMsg, s, &err,
                                 &s->code);
    s->msg = err.msg;
  }

  // grpc.health.v1 Check: the status, or -1 with *code set when the call failed.
  int HealthCheck(const char *service, grpc_status_code *code = nullptr) {
    Grpc__Health__V1__HealthCheckRequest q = GRPC__HEALTH__V1__HEALTH_CHECK_REQUEST__INIT;
    q.service = (char *)service;
    ak_err_t err;
    ProtobufCMessage *r = nullptr;
    grpc_status_code c;
    ak_rpc_client_unary(cli_, "/grpc.health.v1.Health/Check", &q.base,
                        &grpc__health__v1__health_check_response__descriptor, kMax, 10000, &err, &c, &r);
    MsgPtr keep(r);
    if (code) *code = c;
    return r ? (int)((const Grpc__Health__V1__HealthCheckResponse *)r)->status : -1;
  }

  // Polls Check("") until it answers `want` (at most timeout_ms).
  bool WaitHealth(int want, int timeout_ms = 15000) {
    for (int t = 0; t < timeout_ms; t += 20) {
      if (HealthCheck("") == want) return true;
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
    return false;
  }

  std::string Scrape() {
    ak_err_t err;
    char *text = nullptr;
    size_t len = 0;
    EXPECT_EQ(co_metrics_render(co_service_metrics(co_), &err, &text, &len), AK_OK) << err.msg;
    std::string out(text ? text : "", len);
    co_metrics_text_free(text);
    return out;
  }

  // The value of the sample line `series` ("name" or "name{labels}") in a scrape; NaN
  // when absent.
  static double Sample(const std::string &text, const std::string &series) {
    std::istringstream in(text);
    for (std::string line; std::getline(in, line);)
      if (line.compare(0, series.size() + 1, series + " ") == 0) return std::stod(line.substr(series.size() + 1));
    return std::nan("");
  }

  // Polls the scrape until `series` equals v (at most ~5 s).
  bool WaitSample(const std::string &series, double v) {
    for (int i = 0; i < 250; i++) {
      if (Sample(Scrape(), series) == v) return true;
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
    return false;
  }

  std::vector<int32_t> Tokenize(const std::string &text) {
    Arkvale__V1__TokenizeRequest q = ARKVALE__V1__TOKENIZE_REQUEST__INIT;
    q.text = (char *)text.c_str();
    MsgPtr m;
    EXPECT_EQ(Call("Tokenize", &q.base, &arkvale__v1__tokenize_response__descriptor, &m), AK_OK);
    auto *r = (const Arkvale__V1__TokenizeResponse *)m.get();
    if (!r) return {};
    return std::vector<int32_t>(r->token_ids, r->token_ids + r->n_token_ids);
  }

  int WorkerSeqs() {
    Arkvale__V1__HealthRequest q = ARKVALE__V1__HEALTH_REQUEST__INIT;
    ak_err_t err;
    ProtobufCMessage *r = nullptr;
    EXPECT_EQ(ak_rpc_client_unary(wcli_, "/arkvale.v1.Worker/Health", &q.base,
                                  &arkvale__v1__health_response__descriptor, kMax, 10000, &err, nullptr, &r),
              AK_OK);
    MsgPtr keep(r);
    return r ? (int)((const Arkvale__V1__HealthResponse *)r)->n_seqs : -1;
  }

  // Polls the worker until it holds no sequence (at most ~10 s).
  bool WorkerDrains() {
    for (int i = 0; i < 500; i++) {
      if (WorkerSeqs() == 0) return true;
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
    return false;
  }
};

}  // namespace

TEST_F(CoServiceTest, ModelInfoAndTokenize) {
  Arkvale__V1__GetModelInfoRequest q = ARKVALE__V1__GET_MODEL_INFO_REQUEST__INIT;
  MsgPtr m;
  ASSERT_EQ(Call("GetModelInfo", &q.base, &arkvale__v1__get_model_info_response__descriptor, &m), AK_OK);
  auto *info = (const Arkvale__V1__GetModelInfoResponse *)m.get();
  EXPECT_GT(strlen(info->model_id), 0u);
  EXPECT_EQ(info->n_vocab, 49152u);
  EXPECT_EQ(info->context_tokens, (uint32_t)kMaxSeqTokens);
  EXPECT_EQ(info->page_tokens, (uint32_t)kPageTokens);
  EXPECT_LT(info->max_prompt_tokens, info->context_tokens);
  ASSERT_EQ(info->n_allowed_policies, 1u);
  EXPECT_EQ(info->allowed_policies[0], ARKVALE__V1__KV_POLICY__KV_POLICY_FULL);

  std::vector<int32_t> ids = Tokenize(kPromptText);
  ASSERT_GT(ids.size(), 5u);
  // Round trip: generating 1 token from these ids reports the same prompt length as
  // CountTokens of the text.
  Arkvale__V1__CountTokensRequest cq = ARKVALE__V1__COUNT_TOKENS_REQUEST__INIT;
  Arkvale__V1__Prompt pr = ARKVALE__V1__PROMPT__INIT;
  pr.kind_case = ARKVALE__V1__PROMPT__KIND_TEXT, pr.text = (char *)kPromptText;
  cq.prompt = &pr;
  MsgPtr cm;
  ASSERT_EQ(Call("CountTokens", &cq.base, &arkvale__v1__count_tokens_response__descriptor, &cm), AK_OK);
  EXPECT_EQ(((const Arkvale__V1__CountTokensResponse *)cm.get())->n_tokens, (uint32_t)ids.size());
  // The round trip: Generate from the Tokenize ids streams what Generate from the
  // text streams (tokens and text).
  GenReq gi(8), gt(8);
  gi.set_ids(ids);
  gt.set_text(kPromptText);
  Stream si, st;
  Generate(gi, &si);
  Generate(gt, &st);
  ASSERT_EQ(si.st, AK_OK) << si.msg;
  ASSERT_EQ(st.st, AK_OK) << st.msg;
  EXPECT_EQ(si.prompt_tokens, (uint32_t)ids.size());
  EXPECT_EQ(si.tokens, st.tokens);
  EXPECT_EQ(si.text, st.text);
  EXPECT_FALSE(si.text.empty());
}

TEST_F(CoServiceTest, GreedyEqualsEngine) {
  std::vector<int32_t> ids = Tokenize(kPromptText);
  ASSERT_FALSE(ids.empty());
  std::vector<int32_t> ref = engine_greedy(ids, 16);
  GenReq g(16);
  g.set_text(kPromptText);
  Stream s;
  Generate(g, &s);
  ASSERT_EQ(s.st, AK_OK) << s.msg;
  EXPECT_EQ(s.tokens, ref);
  EXPECT_EQ(s.finish_reason, ARKVALE__V1__FINISH_REASON__FINISH_REASON_LENGTH);
  EXPECT_EQ(s.completion_tokens, 16u);
  EXPECT_EQ(s.prompt_tokens, (uint32_t)ids.size());
  EXPECT_FALSE(s.request_id.empty());
  EXPECT_TRUE(WorkerDrains());
}

TEST_F(CoServiceTest, FourConcurrentStreams) {
  const int kN = 4;
  std::vector<std::unique_ptr<GenReq>> reqs;
  std::vector<Stream> streams(kN);
  for (int i = 0; i < kN; i++) {
    reqs.emplace_back(new GenReq(6 + 3 * i));
    reqs.back()->set_ids(prompt_ids(10 + 7 * i, i));
  }
  std::vector<std::thread> th;
  for (int i = 0; i < kN; i++) th.emplace_back([&, i] { Generate(*reqs[i], &streams[i]); });
  for (auto &t : th) t.join();
  for (int i = 0; i < kN; i++) {
    EXPECT_EQ(streams[i].st, AK_OK) << i << ": " << streams[i].msg;
    EXPECT_EQ(streams[i].tokens.size(), (size_t)(6 + 3 * i)) << i;
    EXPECT_EQ(streams[i].finish_reason, ARKVALE__V1__FINISH_REASON__FINISH_REASON_LENGTH) << i;
  }
  EXPECT_TRUE(WorkerDrains());
}

TEST_F(CoServiceTest, MalformedRequestsNameTheField) {
  struct Case {
    const char *field;
    void (*mutate)(GenReq *);
  };
  const Case cases[] = {
      {"prompt", [](GenReq *g) { g->req.prompt = nullptr; }},
      {"prompt", [](GenReq *g) { g->prompt.kind_case = ARKVALE__V1__PROMPT__KIND__NOT_SET; }},
      {"prompt.token_ids.ids[1]", [](GenReq *g) { g->set_ids({5, 60000, 7}); }},
      {"prompt.text", [](GenReq *g) { g->set_text(std::string("ab\xff", 3)); }},
      {"stopping.max_new_tokens", [](GenReq *g) { g->stopping.max_new_tokens = 0; }},
      {"stopping.max_new_tokens", [](GenReq *g) { g->stopping.max_new_tokens = 100000; }},
      {"sampling.top_p", [](GenReq *g) { g->sampling.has_top_p = 1, g->sampling.top_p = 1.5f; }},
      {"sampling.temperature", [](GenReq *g) { g->sampling.temperature = -1.0f; }},
  };
  for (const Case &c : cases) {
    GenReq g(4);
    g.set_text("hello");
    c.mutate(&g);
    Stream s;
    Generate(g, &s);
    EXPECT_EQ(s.code, GRPC_STATUS_INVALID_ARGUMENT) << c.field << ": " << s.msg;
    EXPECT_NE(s.msg.find(std::string(c.field) + ":"), std::string::npos) << "want " << c.field << " in: " << s.msg;
    EXPECT_EQ(s.n_msgs, 0);
  }
  // still serving
  GenReq g(2);
  g.set_text("hello");
  Stream s;
  Generate(g, &s);
  EXPECT_EQ(s.st, AK_OK) << s.msg;
  EXPECT_EQ(s.tokens.size(), 2u);
}

TEST_F(CoServiceTest, CancelFreesTheWorkerSequence) {
  GenReq g(200);
  g.set_ids(prompt_ids(20, 3));
  Stream s;
  s.cancel_after = 3;
  Generate(g, &s);
  EXPECT_NE(s.st, AK_OK);
  EXPECT_EQ(s.n_msgs, 3);
  EXPECT_TRUE(WorkerDrains()) << "the worker still holds " << WorkerSeqs() << " sequences";
}

TEST_F(CoServiceTest, AbortEndsTheStream) {
  GenReq g(200);
  g.set_ids(prompt_ids(20, 4));
  g.set_id("abort-me");
  Stream s;
  std::atomic<int> seen{0};
  s.seen = &seen;
  std::thread t([&] { Generate(g, &s); });
  while (seen.load() < 2) std::this_thread::sleep_for(std::chrono::milliseconds(5));
  Arkvale__V1__AbortRequest q = ARKVALE__V1__ABORT_REQUEST__INIT;
  q.request_id = (char *)"abort-me";
  MsgPtr m;
  EXPECT_EQ(Call("Abort", &q.base, &arkvale__v1__abort_response__descriptor, &m), AK_OK);
  t.join();
  ASSERT_NE(m.get(), nullptr);
  EXPECT_TRUE(((const Arkvale__V1__AbortResponse *)m.get())->found);
  EXPECT_NE(s.st, AK_OK);
  EXPECT_EQ(s.code, GRPC_STATUS_CANCELLED) << s.msg;
  EXPECT_LT(s.tokens.size(), 200u);
  EXPECT_TRUE(WorkerDrains());
  // unknown id: found = false
  MsgPtr m2;
  EXPECT_EQ(Call("Abort", &q.base, &arkvale__v1__abort_response__descriptor, &m2), AK_OK);
  EXPECT_FALSE(((const Arkvale__V1__AbortResponse *)m2.get())->found);
}

TEST_F(CoServiceTest, DuplicateRequestIdIsAlreadyExists) {
  GenReq g(200);
  g.set_ids(prompt_ids(20, 5));
  g.set_id("twice");
  Stream s;
  std::atomic<int> seen{0};
  s.seen = &seen;
  std::thread t([&] { Generate(g, &s); });
  while (seen.load() < 2) std::this_thread::sleep_for(std::chrono::milliseconds(5));
  GenReq g2(4);
  g2.set_ids(prompt_ids(20, 6));
  g2.set_id("twice");
  Stream dup;
  Generate(g2, &dup);
  EXPECT_EQ(dup.code, GRPC_STATUS_ALREADY_EXISTS) << dup.msg;
  EXPECT_NE(dup.msg.find("request_id"), std::string::npos) << dup.msg;
  EXPECT_EQ(dup.n_msgs, 0);
  Arkvale__V1__AbortRequest q = ARKVALE__V1__ABORT_REQUEST__INIT;
  q.request_id = (char *)"twice";
  MsgPtr m;
  EXPECT_EQ(Call("Abort", &q.base, &arkvale__v1__abort_response__descriptor, &m), AK_OK);
  t.join();
  EXPECT_EQ(s.code, GRPC_STATUS_CANCELLED) << s.msg;
  EXPECT_TRUE(WorkerDrains());
  // once the first has left, the id is free again
  Stream again;
  Generate(g2, &again);
  EXPECT_EQ(again.st, AK_OK) << again.msg;
}

TEST_F(CoServiceTest, StopStringEndsAndIsNotSent) {
  GenReq g(16);
  g.set_text(kPromptText);
  Stream full;
  Generate(g, &full);
  ASSERT_EQ(full.st, AK_OK) << full.msg;
  // a stop string from the middle of the greedy text: the same run stops there
  ASSERT_GT(full.text.size(), 12u) << full.text;
  std::string stop = full.text.substr(full.text.size() / 2, 3);
  size_t at = full.text.find(stop);
  GenReq g2(16);
  g2.set_text(kPromptText);
  char *stops[1] = {(char *)stop.c_str()};
  g2.stopping.n_stop = 1, g2.stopping.stop = stops;
  Stream s;
  Generate(g2, &s);
  ASSERT_EQ(s.st, AK_OK) << s.msg;
  EXPECT_EQ(s.finish_reason, ARKVALE__V1__FINISH_REASON__FINISH_REASON_STOP_STRING);
  EXPECT_EQ(s.text, full.text.substr(0, at)) << "stop \"" << stop << "\" in \"" << full.text << "\"";
  EXPECT_LT(s.tokens.size(), full.tokens.size());
  // The stop string is seen after the sequence's next Step went out (co_service_loop.c):
  // the token that Step samples for it is discarded, never streamed nor counted.
  EXPECT_EQ(s.tokens, std::vector<int32_t>(full.tokens.begin(), full.tokens.begin() + s.tokens.size()));
  EXPECT_EQ(s.completion_tokens, s.tokens.size());
  EXPECT_TRUE(WorkerDrains());
}

TEST_F(CoServiceTest, ChatPromptCountsAsGenerateCharges) {
  Arkvale__V1__ChatMessage m = ARKVALE__V1__CHAT_MESSAGE__INIT;
  m.role = (char *)"user", m.content = (char *)"What is the capital of France?";
  Arkvale__V1__ChatMessage *msgs[1] = {&m};
  Arkvale__V1__Chat chat = ARKVALE__V1__CHAT__INIT;
  chat.n_messages = 1, chat.messages = msgs;
  GenReq g(8, false);
  g.prompt.kind_case = ARKVALE__V1__PROMPT__KIND_CHAT, g.prompt.chat = &chat;
  Arkvale__V1__CountTokensRequest cq = ARKVALE__V1__COUNT_TOKENS_REQUEST__INIT;
  cq.prompt = &g.prompt;
  MsgPtr cm;
  ASSERT_EQ(Call("CountTokens", &cq.base, &arkvale__v1__count_tokens_response__descriptor, &cm), AK_OK);
  Stream s;
  Generate(g, &s);
  ASSERT_EQ(s.st, AK_OK) << s.msg;
  EXPECT_EQ(s.prompt_tokens, ((const Arkvale__V1__CountTokensResponse *)cm.get())->n_tokens);
  EXPECT_GT(s.tokens.size(), 0u);
  EXPECT_NE(s.finish_reason, -1);
  // a bad role names its index
  m.role = (char *)"robot";
  Stream bad;
  Generate(g, &bad);
  EXPECT_EQ(bad.code, GRPC_STATUS_INVALID_ARGUMENT);
  EXPECT_NE(bad.msg.find("prompt.chat.messages[0].role"), std::string::npos) << bad.msg;
}

TEST_F(CoServiceTest, FullQueueIsResourceExhausted) {
  Stop();
  max_queue_ = 1;
  Start();
  const int kN = 10;  // 4 run (the worker's max_seqs), 1 waits, the rest are refused
  std::vector<std::unique_ptr<GenReq>> reqs;
  std::vector<Stream> streams(kN);
  for (int i = 0; i < kN; i++) {
    reqs.emplace_back(new GenReq(40));
    reqs.back()->set_ids(prompt_ids(12, i));
  }
  std::vector<std::thread> th;
  for (int i = 0; i < kN; i++) th.emplace_back([&, i] { Generate(*reqs[i], &streams[i]); });
  for (auto &t : th) t.join();
  int ok = 0, refused = 0;
  for (auto &s : streams) {
    if (s.st == AK_OK) {
      ok++;
      EXPECT_EQ(s.tokens.size(), 40u);
    } else {
      EXPECT_EQ(s.code, GRPC_STATUS_RESOURCE_EXHAUSTED) << s.msg;
      EXPECT_EQ(s.n_msgs, 0);
      refused++;
    }
  }
  EXPECT_GE(ok, 1);
  EXPECT_GE(refused, 1);
  EXPECT_EQ(ok + refused, kN);
  EXPECT_TRUE(WorkerDrains());
}

TEST_F(CoServiceTest, DestroyWithAnOpenStream) {
  GenReq g(200);
  g.set_ids(prompt_ids(20, 5));
  Stream s;
  std::atomic<int> seen{0};
  s.seen = &seen;
  std::thread t([&] { Generate(g, &s); });
  while (seen.load() < 2) std::this_thread::sleep_for(std::chrono::milliseconds(5));
  co_service_destroy(co_);
  co_ = nullptr;
  t.join();
  EXPECT_NE(s.st, AK_OK);
  EXPECT_TRUE(WorkerDrains());
}

// --- grpc.health.v1 ---

namespace {

const int kServing = GRPC__HEALTH__V1__HEALTH_CHECK_RESPONSE__SERVING_STATUS__SERVING;
const int kNotServing = GRPC__HEALTH__V1__HEALTH_CHECK_RESPONSE__SERVING_STATUS__NOT_SERVING;
const int kServiceUnknown = GRPC__HEALTH__V1__HEALTH_CHECK_RESPONSE__SERVING_STATUS__SERVICE_UNKNOWN;

// What one Watch call delivered; the callback may run while the test thread reads.
struct Watch {
  std::mutex mu;
  std::vector<int> statuses;
  std::atomic<bool> stop{false};
  ak_status_t st = AK_OK;
  grpc_status_code code = GRPC_STATUS_OK;
  std::string msg;
  std::vector<int> Get() {
    std::lock_guard<std::mutex> g(mu);
    return statuses;
  }
  bool WaitFor(size_t n, int timeout_ms = 15000) {
    for (int t = 0; t < timeout_ms; t += 10) {
      if (Get().size() >= n) return true;
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    return false;
  }
};

int OnWatch(void *user, const ProtobufCMessage *m) {
  auto *w = (Watch *)user;
  std::lock_guard<std::mutex> g(w->mu);
  w->statuses.push_back((int)((const Grpc__Health__V1__HealthCheckResponse *)m)->status);
  return w->stop.load();
}

void RunWatch(ak_rpc_client_t *cli, const char *service, Watch *w, int64_t deadline_ms) {
  Grpc__Health__V1__HealthCheckRequest q = GRPC__HEALTH__V1__HEALTH_CHECK_REQUEST__INIT;
  q.service = (char *)service;
  ak_err_t err;
  ak_err_clear(&err);
  w->st = ak_rpc_client_stream(cli, "/grpc.health.v1.Health/Watch", &q.base,
                               &grpc__health__v1__health_check_response__descriptor, kMax, deadline_ms, OnWatch, w,
                               &err, &w->code);
  w->msg = err.msg;
}

}  // namespace

TEST_F(CoServiceTest, HealthServingAfterTheFirstCanary) {
  ASSERT_TRUE(WaitHealth(kServing)) << "Check(\"\") never answered SERVING";
  EXPECT_EQ(HealthCheck("arkvale.v1.Generation"), kServing);
  grpc_status_code code;
  EXPECT_EQ(HealthCheck("no.such.Service", &code), -1);
  EXPECT_EQ(code, GRPC_STATUS_NOT_FOUND);
  // canaries leave nothing behind on the worker, and requests still run beside them
  std::this_thread::sleep_for(std::chrono::milliseconds(3 * canary_period_ms_));
  GenReq g(12);
  g.set_ids(prompt_ids(16, 9));
  Stream s;
  Generate(g, &s);
  EXPECT_EQ(s.st, AK_OK) << s.msg;
  EXPECT_EQ(s.tokens.size(), 12u);
  EXPECT_TRUE(WorkerDrains());
  EXPECT_EQ(HealthCheck(""), kServing);
  EXPECT_GE(Sample(Scrape(), "arkvale_worker_steps_total{worker=\"" + waddr_ + "\"}"), 12 + 2);
}

TEST_F(CoServiceTest, HealthFlipsWhenTheWorkerStopsAndComesBack) {
  ASSERT_TRUE(WaitHealth(kServing));
  Watch w;
  std::thread wt([&] { RunWatch(cli_, "", &w, 60000); });
  ASSERT_TRUE(w.WaitFor(1));
  EXPECT_EQ(w.Get()[0], kServing);

  // The worker goes away: the next canary fails.
  int port = wk_service_port(wk_);
  wk_service_destroy(wk_);
  wk_ = nullptr;
  ASSERT_TRUE(WaitHealth(kNotServing)) << "still SERVING with the worker gone";
  ASSERT_TRUE(w.WaitFor(2));
  EXPECT_EQ(w.Get()[1], kNotServing);
  EXPECT_EQ(Sample(Scrape(), "arkvale_serving"), 0);
  GenReq g(4);
  g.set_ids(prompt_ids(10, 1));
  Stream refused;
  Generate(g, &refused);
  EXPECT_EQ(refused.code, GRPC_STATUS_UNAVAILABLE) << refused.msg;

  // It comes back on the same port: the coordinator reconnects, warms it up, canaries.
  ASSERT_NO_FATAL_FAILURE(StartWorker(port));
  ASSERT_TRUE(WaitHealth(kServing, 30000)) << "not SERVING again after the worker came back";
  ASSERT_TRUE(w.WaitFor(3));
  EXPECT_EQ(w.Get()[2], kServing);
  Stream s;
  Generate(g, &s);
  EXPECT_EQ(s.st, AK_OK) << s.msg;
  EXPECT_EQ(s.tokens.size(), 4u);
  EXPECT_TRUE(WorkerDrains());

  // The Watch ends when its client leaves.
  w.stop = true;
  co_service_destroy(co_);  // or at shutdown, whichever comes first
  co_ = nullptr;
  wt.join();
  EXPECT_NE(w.st, AK_OK);
  EXPECT_EQ(w.Get().back(), kNotServing) << "shutdown sends NOT_SERVING before it ends the Watch";
}

// The worker restarts with fewer slots (kMaxSeqs 4 -> 2: one for requests, one for the
// canary): the revive gives co_sched the new count, so concurrent streams queue for
// the one slot instead of failing the group's first over-full Step (UNAVAILABLE).
TEST_F(CoServiceTest, RevivedWorkerWithFewerSlotsIsNotOverFilled) {
  ASSERT_TRUE(WaitHealth(kServing));
  int port = wk_service_port(wk_);
  wk_service_destroy(wk_);
  wk_ = nullptr;
  ASSERT_TRUE(WaitHealth(kNotServing));
  worker_max_seqs_ = 2;
  ASSERT_NO_FATAL_FAILURE(StartWorker(port));
  ASSERT_TRUE(WaitHealth(kServing, 30000)) << "not SERVING again after the worker came back";
  const int kN = 4;
  std::vector<std::unique_ptr<GenReq>> reqs;
  std::vector<Stream> streams(kN);
  for (int i = 0; i < kN; i++) {
    reqs.emplace_back(new GenReq(5));
    reqs.back()->set_ids(prompt_ids(9 + i, i));
  }
  std::vector<std::thread> th;
  for (int i = 0; i < kN; i++) th.emplace_back([&, i] { Generate(*reqs[i], &streams[i]); });
  for (auto &t : th) t.join();
  for (int i = 0; i < kN; i++) {
    EXPECT_EQ(streams[i].st, AK_OK) << i << ": " << streams[i].msg;
    EXPECT_EQ(streams[i].tokens.size(), 5u) << i;
  }
  EXPECT_EQ(HealthCheck(""), kServing);
  EXPECT_TRUE(WorkerDrains());
}

// co_service_drain: new requests UNAVAILABLE ("draining"), health NOT_SERVING (Check
// and Watch), the open stream runs to its end, drain returns AK_OK with none left.
TEST_F(CoServiceTest, DrainLetsTheOpenStreamFinishAndRefusesNewOnes) {
  ASSERT_TRUE(WaitHealth(kServing));
  Watch w;
  std::thread wt([&] { RunWatch(cli_, "", &w, 60000); });
  ASSERT_TRUE(w.WaitFor(1));
  GenReq g(60);
  g.set_ids(prompt_ids(12, 3));
  Stream s;
  std::atomic<int> seen{0};
  s.seen = &seen;
  std::thread t([&] { Generate(g, &s); });
  while (seen.load() < 1) std::this_thread::sleep_for(std::chrono::milliseconds(2));
  ak_status_t dst = AK_ERR_INTERNAL;
  int32_t n_left = -1;
  std::thread dt([&] {
    ak_err_t err;
    dst = co_service_drain(co_, 60000, &err, &n_left);
  });
  ASSERT_TRUE(WaitHealth(kNotServing, 5000)) << "still SERVING while draining";
  GenReq g2(2);
  g2.set_ids(prompt_ids(8, 4));
  Stream refused;
  Generate(g2, &refused);
  dt.join();
  t.join();
  EXPECT_EQ(refused.code, GRPC_STATUS_UNAVAILABLE) << refused.msg;
  EXPECT_NE(refused.msg.find("draining"), std::string::npos) << refused.msg;
  EXPECT_EQ(s.st, AK_OK) << s.msg;
  EXPECT_EQ(s.tokens.size(), 60u);
  EXPECT_EQ(dst, AK_OK);
  EXPECT_EQ(n_left, 0);
  ASSERT_TRUE(w.WaitFor(2));
  EXPECT_EQ(w.Get()[1], kNotServing);
  EXPECT_EQ(Sample(Scrape(), "arkvale_serving"), 0);
  // the canary keeps running while draining: health stays NOT_SERVING
  std::this_thread::sleep_for(std::chrono::milliseconds(2 * canary_period_ms_));
  EXPECT_EQ(HealthCheck(""), kNotServing);
  w.stop = true;
  Stop();
  wt.join();
}

// A drain that times out reports how many are left; destroy ends them UNAVAILABLE.
TEST_F(CoServiceTest, DrainTimeoutLeavesTheRestToDestroy) {
  GenReq g(200);
  g.set_ids(prompt_ids(12, 5));
  Stream s;
  std::atomic<int> seen{0};
  s.seen = &seen;
  std::thread t([&] { Generate(g, &s); });
  while (seen.load() < 1) std::this_thread::sleep_for(std::chrono::milliseconds(2));
  ak_err_t err;
  int32_t n_left = -1;
  EXPECT_EQ(co_service_drain(co_, 50, &err, &n_left), AK_ERR_TIMEOUT);
  EXPECT_EQ(n_left, 1);
  EXPECT_NE(std::string(err.msg).find("1 requests still open"), std::string::npos) << err.msg;
  co_service_destroy(co_);
  co_ = nullptr;
  t.join();
  EXPECT_EQ(s.code, GRPC_STATUS_UNAVAILABLE) << s.msg;
  EXPECT_LT(s.tokens.size(), 200u);
  EXPECT_TRUE(WorkerDrains());
}

// A worker Step that hangs holds the scheduler thread (and so the canary): the
// watchdog reports NOT_SERVING once nothing has answered for health_stale_ms, and the
// next canary after the Step returns brings SERVING back.
TEST_F(CoServiceTest, HealthNotServingWhileAStepHangs) {
  Stop();
  health_stale_ms_ = 400;
  worker_job_delay_ms_ = 1;  // installs the hook; raised below (the worker reads it per job)
  ASSERT_NO_FATAL_FAILURE(Start());
  ASSERT_TRUE(WaitHealth(kServing));
  worker_job_delay_ms_ = 2000;  // the next Step (a canary, the group is idle) hangs 2 s
  auto t0 = std::chrono::steady_clock::now();
  ASSERT_TRUE(WaitHealth(kNotServing, 1900)) << "still SERVING while a Step hangs";
  EXPECT_LT(std::chrono::steady_clock::now() - t0, std::chrono::milliseconds(1900));
  EXPECT_EQ(Sample(Scrape(), "arkvale_serving"), 0);
  worker_job_delay_ms_ = 1;
  ASSERT_TRUE(WaitHealth(kServing, 10000)) << "not SERVING again after the Step returned";
  GenReq g(3);
  g.set_ids(prompt_ids(8, 2));
  Stream s;
  Generate(g, &s);
  EXPECT_EQ(s.st, AK_OK) << s.msg;
}

TEST_F(CoServiceTest, HealthWatchOfAnUnknownServiceStaysOpen) {
  Watch w;
  std::thread wt([&] { RunWatch(cli_, "no.such.Service", &w, 60000); });
  ASSERT_TRUE(w.WaitFor(1));
  EXPECT_EQ(w.Get()[0], kServiceUnknown);
  ASSERT_TRUE(WaitHealth(kServing));
  std::this_thread::sleep_for(std::chrono::milliseconds(100));
  EXPECT_EQ(w.Get().size(), 1u) << "an unknown service gets no updates";
  EXPECT_EQ(Sample(Scrape(), "arkvale_health_watchers"), 1);
  // A client that leaves (here by its deadline): the loop's sweep ends its call.
  Watch w2;
  std::thread wt2([&] { RunWatch(cli_, "", &w2, 500); });
  ASSERT_TRUE(w2.WaitFor(1));
  EXPECT_EQ(Sample(Scrape(), "arkvale_health_watchers"), 2);
  wt2.join();
  EXPECT_EQ(w2.code, GRPC_STATUS_DEADLINE_EXCEEDED) << w2.msg;
  ASSERT_EQ(w2.Get().size(), 1u);
  EXPECT_EQ(w2.Get()[0], kServing);
  EXPECT_TRUE(WaitSample("arkvale_health_watchers", 1)) << "the left Watch was not swept";
  co_service_destroy(co_);
  co_ = nullptr;
  wt.join();
  EXPECT_EQ(w.code, GRPC_STATUS_UNAVAILABLE) << w.msg;
}

// --- client deadlines ---

TEST_F(CoServiceTest, DeadlineWhileStreamingDropsTheSequence) {
  ASSERT_TRUE(WaitHealth(kServing));
  // The deadline: twice what a 4-token request takes here, so that it passes after the
  // first tokens and long before 200 (sanitizer builds are many times slower).
  GenReq probe(4);
  probe.set_ids(prompt_ids(20, 6));
  Stream ps;
  auto t0 = std::chrono::steady_clock::now();
  Generate(probe, &ps);
  ASSERT_EQ(ps.st, AK_OK) << ps.msg;
  int64_t probe_ms =
      std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now() - t0).count();
  GenReq g(200);
  g.set_ids(prompt_ids(20, 7));
  Stream s;
  std::string steps = "arkvale_worker_steps_total{worker=\"" + waddr_ + "\"}";
  Generate(g, &s, 2 * probe_ms + 100);
  double steps_at_deadline = Sample(Scrape(), steps);
  EXPECT_EQ(s.code, GRPC_STATUS_DEADLINE_EXCEEDED) << s.msg;
  EXPECT_GT(s.n_msgs, 0) << "the deadline should pass mid-stream";
  EXPECT_LT(s.tokens.size(), 200u);
  // dropped within a step or two: poll for at most 1 s plus the probe's time (a decode
  // step here is ~10-50 ms; the probe's is a prefill and 4 of them)
  bool drained = false;
  for (int64_t i = 0; i < (1000 + probe_ms) / 20 && !drained; i++) {
    drained = WorkerSeqs() == 0;
    if (!drained) std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  EXPECT_TRUE(drained) << "the worker still holds " << WorkerSeqs() << " sequences";
  // Steps since: the one in flight when the server's deadline fires (its timer runs
  // from the request's arrival, a little after the client's), then the drop goes out as
  // a Release (nothing else runs); a canary may slip in. A few, not the ~200 left.
  EXPECT_LE(Sample(Scrape(), steps) - steps_at_deadline, 4);
  EXPECT_TRUE(WaitSample("arkvale_running_requests", 0));
}

TEST_F(CoServiceTest, DeadlineWhileQueuedLeavesTheQueue) {
  Stop();
  worker_job_delay_ms_ = 20;  // 200 tokens take seconds: the queue stays as it is
  Start();
  ASSERT_TRUE(WaitHealth(kServing));
  // Long streams until one waits in the queue (the group's sequence slots are full).
  const int kLong = kMaxSeqs;
  std::vector<std::unique_ptr<GenReq>> reqs;
  std::vector<Stream> streams(kLong);
  std::vector<std::thread> th;
  for (int i = 0; i < kLong; i++) {
    reqs.emplace_back(new GenReq(200));
    reqs.back()->set_ids(prompt_ids(12, 20 + i));
    reqs.back()->set_id("long-" + std::to_string(i));
    th.emplace_back([&, i] { Generate(*reqs[i], &streams[i]); });
  }
  // Every slot co_sched has (one of the worker's is the canary's) runs, the last one
  // waits. Admission happens only when the group is planned (between its jobs), so
  // wait for that state rather than for a time: a slow build (ASan) admits late.
  const double kSlots = kMaxSeqs - 1;
  bool full = false;
  for (int i = 0; i < 1500 && !full; i++) {
    std::string m = Scrape();
    full = Sample(m, "arkvale_running_requests") == kSlots && Sample(m, "arkvale_queue_depth") == kLong - kSlots;
    if (!full) std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  ASSERT_TRUE(full) << Scrape();
  double queued = Sample(Scrape(), "arkvale_queue_depth");
  // The group is full, yet the canary has its slot and pages: it keeps answering.
  std::string canaries = "arkvale_worker_canaries_total{worker=\"" + waddr_ + "\"}";
  double n_canaries = Sample(Scrape(), canaries);
  bool more = false;
  for (int i = 0; i < 250 && !more; i++) {
    more = Sample(Scrape(), canaries) >= n_canaries + 2;
    if (!more) std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  EXPECT_TRUE(more) << Scrape();
  EXPECT_EQ(HealthCheck(""), kServing);
  EXPECT_EQ(Sample(Scrape(), "arkvale_queue_depth"), queued);
  GenReq g(8);
  g.set_ids(prompt_ids(12, 30));
  Stream s;
  Generate(g, &s, 300);
  EXPECT_EQ(s.code, GRPC_STATUS_DEADLINE_EXCEEDED) << s.msg;
  EXPECT_EQ(s.n_msgs, 0);
  // it left the queue, counted as DEADLINE_EXCEEDED (not CANCELLED); the depth is back
  // to what the long streams hold
  EXPECT_TRUE(WaitSample("arkvale_requests_total{code=\"DEADLINE_EXCEEDED\"}", 1)) << Scrape();
  EXPECT_TRUE(std::isnan(Sample(Scrape(), "arkvale_requests_total{code=\"CANCELLED\"}"))) << Scrape();
  EXPECT_TRUE(WaitSample("arkvale_queue_depth", queued)) << Scrape();
  for (int i = 0; i < kLong; i++) {
    Arkvale__V1__AbortRequest q = ARKVALE__V1__ABORT_REQUEST__INIT;
    std::string id = "long-" + std::to_string(i);
    q.request_id = (char *)id.c_str();
    MsgPtr m;
    EXPECT_EQ(Call("Abort", &q.base, &arkvale__v1__abort_response__descriptor, &m), AK_OK);
  }
  for (auto &t : th) t.join();
  for (auto &st : streams) EXPECT_EQ(st.code, GRPC_STATUS_CANCELLED) << st.msg;
  EXPECT_TRUE(WorkerDrains());
}

// --- metrics ---

TEST_F(CoServiceTest, MetricsAfterRequests) {
  ASSERT_TRUE(WaitHealth(kServing));
  std::vector<int32_t> ids = prompt_ids(18, 11);
  GenReq g(8);
  g.set_ids(ids);
  Stream s;
  Generate(g, &s);
  ASSERT_EQ(s.st, AK_OK) << s.msg;
  GenReq bad(4);
  bad.set_text("hello");
  bad.sampling.has_top_p = 1, bad.sampling.top_p = 2.0f;
  Stream sb;
  Generate(bad, &sb);
  EXPECT_EQ(sb.code, GRPC_STATUS_INVALID_ARGUMENT);
  ASSERT_TRUE(WorkerDrains());
  std::string worker = "{worker=\"" + waddr_ + "\"}";
  // the Release of the finished sequence answers with the pool: 0 pages
  EXPECT_TRUE(WaitSample("arkvale_worker_kv_pages_resident" + worker, 0)) << Scrape();
  std::string m = Scrape();
  EXPECT_EQ(Sample(m, "arkvale_requests_total{code=\"OK\"}"), 1) << m;
  EXPECT_EQ(Sample(m, "arkvale_requests_total{code=\"INVALID_ARGUMENT\"}"), 1) << m;
  EXPECT_EQ(Sample(m, "arkvale_generated_tokens_total"), 8);
  EXPECT_EQ(Sample(m, "arkvale_prompt_tokens_total"), (double)ids.size());
  EXPECT_EQ(Sample(m, "arkvale_time_to_first_token_seconds_count"), 1);
  EXPECT_GT(Sample(m, "arkvale_time_to_first_token_seconds_sum"), 0);
  EXPECT_EQ(Sample(m, "arkvale_time_to_first_token_seconds_bucket{le=\"+Inf\"}"), 1);
  // one TPOT observation per token after the first: 8 tokens, 7 gaps
  EXPECT_EQ(Sample(m, "arkvale_time_per_output_token_seconds_count"), 7) << m;
  EXPECT_GT(Sample(m, "arkvale_time_per_output_token_seconds_sum"), 0);
  EXPECT_EQ(Sample(m, "arkvale_time_per_output_token_seconds_bucket{le=\"+Inf\"}"), 7);
  EXPECT_EQ(Sample(m, "arkvale_queue_depth"), 0);
  EXPECT_EQ(Sample(m, "arkvale_running_requests"), 0);
  EXPECT_EQ(Sample(m, "arkvale_serving"), 1);
  EXPECT_EQ(Sample(m, "arkvale_worker_kv_backup_pages" + worker), 0);
  EXPECT_EQ(Sample(m, "arkvale_worker_kv_pages_recalled_total" + worker), 0) << "the full policy never recalls";
  EXPECT_EQ(Sample(m, "arkvale_worker_kv_pages_backed_up_total" + worker), 0);
  EXPECT_GE(Sample(m, "arkvale_worker_steps_total" + worker), 8 + 1) << "8 tokens and at least one canary";
  EXPECT_NE(m.find("# TYPE arkvale_time_per_output_token_seconds histogram"), std::string::npos);
  // a cancelled stream counts as CANCELLED, and its tokens count too
  GenReq g2(200);
  g2.set_ids(prompt_ids(20, 12));
  Stream sc;
  sc.cancel_after = 3;
  Generate(g2, &sc);
  EXPECT_TRUE(WorkerDrains());
  EXPECT_TRUE(WaitSample("arkvale_requests_total{code=\"CANCELLED\"}", 1)) << Scrape();
  EXPECT_GE(Sample(Scrape(), "arkvale_generated_tokens_total"), 8 + 3);
}

// --- a worker whose process answers while its engine is dead ---

namespace {

// A fake arkvale.v1.Worker on ak_rpc_server: Info and Warmup as a SmolLM2 worker would
// answer, Release always, and Step either samples token 42 for every sequence that asks
// (a live engine) or fails INTERNAL (a dead engine: the process still answers).
struct FakeWorker {
  ak_rpc_server_t *srv = nullptr;
  std::atomic<bool> engine_dead{false};
  std::atomic<int> n_steps{0};
  bool device_sampling = false; // Steps that sample say so (StepResponse.sampled_on_device), as a CUDA worker
  uint64_t capacity_pages = 4 * 30 * (kMaxSeqTokens / kPageTokens);
  // hang_steps: Step calls are kept open, never answered (a hung host), until
  // FinishHeld; the handler returns at once, as handlers must.
  std::atomic<bool> hang_steps{false};
  std::mutex held_mu;
  std::vector<ak_rpc_writer_t *> held;
  // Every Step's (step_id, previous_step_id or -1), in arrival order.
  std::mutex seen_mu;
  std::vector<std::pair<uint64_t, int64_t>> seen;

  size_t NumHeld() {
    std::lock_guard<std::mutex> l(held_mu);
    return held.size();
  }
  // How many of the held calls the coordinator has given up on (deadline, cancel).
  size_t NumHeldCancelled() {
    std::lock_guard<std::mutex> l(held_mu);
    size_t n = 0;
    for (auto *w : held) n += ak_rpc_writer_cancelled(w) ? 1 : 0;
    return n;
  }
  void FinishHeld() {
    std::lock_guard<std::mutex> l(held_mu);
    for (auto *w : held) ak_rpc_writer_finish(w, AK_ERR_PEER, "the host came back");
    held.clear();
  }

  static void Info(void *, const ProtobufCMessage *, ak_rpc_writer_t *w) {
    Arkvale__V1__InfoResponse r = ARKVALE__V1__INFO_RESPONSE__INIT;
    Arkvale__V1__KvPolicy pol = ARKVALE__V1__KV_POLICY__KV_POLICY_FULL;
    r.has_protocol_revision = 1, r.protocol_revision = 3;
    r.model_id = (char *)"fake";
    r.has_n_vocab = 1, r.n_vocab = 49152;
    r.has_n_layers = 1, r.n_layers = 30;
    r.has_context_tokens = 1, r.context_tokens = (uint32_t)kMaxSeqTokens;
    r.has_page_tokens = 1, r.page_tokens = (uint32_t)kPageTokens;
    r.n_supported_policies = 1, r.supported_policies = &pol;
    ak_err_t err;
    ak_rpc_writer_finish(w, ak_rpc_writer_write(w, &r.base, &err), nullptr);
  }
  static void Warmup(void *user, const ProtobufCMessage *, ak_rpc_writer_t *w) {
    Arkvale__V1__WarmupResponse r = ARKVALE__V1__WARMUP_RESPONSE__INIT;
    r.has_capacity_pages = 1, r.capacity_pages = ((FakeWorker *)user)->capacity_pages;
    r.has_max_seqs = 1, r.max_seqs = (uint32_t)kMaxSeqs;
    r.has_max_batch_tokens = 1, r.max_batch_tokens = (uint32_t)kBatch;
    ak_err_t err;
    ak_rpc_writer_finish(w, ak_rpc_writer_write(w, &r.base, &err), nullptr);
  }
  static void Step(void *user, const ProtobufCMessage *req, ak_rpc_writer_t *w) {
    auto *f = (FakeWorker *)user;
    auto *q = (const Arkvale__V1__StepRequest *)req;
    f->n_steps++;
    {
      std::lock_guard<std::mutex> l(f->seen_mu);
      f->seen.emplace_back(q->step_id, q->has_previous_step_id ? (int64_t)q->previous_step_id : -1);
    }
    if (f->hang_steps) {
      std::lock_guard<std::mutex> l(f->held_mu);
      f->held.push_back(w);
      return;
    }
    if (f->engine_dead) {
      ak_rpc_writer_finish(w, AK_ERR_INTERNAL, "engine failed: a device error");
      return;
    }
    std::vector<Arkvale__V1__SampledToken> toks;
    toks.reserve(q->n_new_seqs + q->n_continuing_seqs);
    for (size_t i = 0; i < q->n_new_seqs; i++)
      if (q->new_seqs[i]->sample)
        toks.push_back(ARKVALE__V1__SAMPLED_TOKEN__INIT), toks.back().seq_id = q->new_seqs[i]->seq_id;
    for (size_t i = 0; i < q->n_continuing_seqs; i++)
      if (q->continuing_seqs[i]->sample)
        toks.push_back(ARKVALE__V1__SAMPLED_TOKEN__INIT), toks.back().seq_id = q->continuing_seqs[i]->seq_id;
    std::vector<Arkvale__V1__SampledToken *> ptrs;
    for (auto &t : toks) t.has_seq_id = 1, t.has_token_id = 1, t.token_id = 42, ptrs.push_back(&t);
    Arkvale__V1__StepResponse r = ARKVALE__V1__STEP_RESPONSE__INIT;
    r.has_step_id = 1, r.step_id = q->step_id;
    r.n_samples = ptrs.size(), r.samples = ptrs.data();
    if (!ptrs.empty()) r.has_sampled_on_device = 1, r.sampled_on_device = f->device_sampling;
    ak_err_t err;
    ak_rpc_writer_finish(w, ak_rpc_writer_write(w, &r.base, &err), nullptr);
  }
  static void Release(void *, const ProtobufCMessage *, ak_rpc_writer_t *w) {
    Arkvale__V1__ReleaseResponse r = ARKVALE__V1__RELEASE_RESPONSE__INIT;
    ak_err_t err;
    ak_rpc_writer_finish(w, ak_rpc_writer_write(w, &r.base, &err), nullptr);
  }

  // The process answers Health (a revive probes it first) while its engine is dead.
  static void Health(void *, const ProtobufCMessage *, ak_rpc_writer_t *w) {
    Arkvale__V1__HealthResponse r = ARKVALE__V1__HEALTH_RESPONSE__INIT;
    ak_err_t err;
    ak_rpc_writer_finish(w, ak_rpc_writer_write(w, &r.base, &err), nullptr);
  }

  void Start() {
    ak_err_t err;
    ASSERT_EQ(ak_rpc_server_create("127.0.0.1:0", 1, &err, &srv), AK_OK) << err.msg;
    const ak_rpc_method_t methods[] = {
        {"/arkvale.v1.Worker/Info", AK_RPC_UNARY, &arkvale__v1__info_request__descriptor, kMax, kMax, Info, this},
        {"/arkvale.v1.Worker/Warmup", AK_RPC_UNARY, &arkvale__v1__warmup_request__descriptor, kMax, kMax, Warmup,
         this},
        {"/arkvale.v1.Worker/Step", AK_RPC_UNARY, &arkvale__v1__step_request__descriptor, kMax, kMax, Step, this},
        {"/arkvale.v1.Worker/Release", AK_RPC_UNARY, &arkvale__v1__release_request__descriptor, kMax, kMax, Release,
         this},
        {"/arkvale.v1.Worker/Health", AK_RPC_UNARY, &arkvale__v1__health_request__descriptor, kMax, kMax, Health,
         this},
    };
    for (auto &m : methods) ASSERT_EQ(ak_rpc_server_register(srv, &m, &err), AK_OK) << err.msg;
    ASSERT_EQ(ak_rpc_server_start(srv, &err), AK_OK) << err.msg;
  }
  ~FakeWorker() {
    FinishHeld();
    ak_rpc_server_destroy(srv);
  }
};

int CheckStatus(ak_rpc_client_t *cli) {
  Grpc__Health__V1__HealthCheckRequest q = GRPC__HEALTH__V1__HEALTH_CHECK_REQUEST__INIT;
  q.service = (char *)"";
  ak_err_t err;
  ProtobufCMessage *r = nullptr;
  ak_rpc_client_unary(cli, "/grpc.health.v1.Health/Check", &q.base,
                      &grpc__health__v1__health_check_response__descriptor, kMax, 10000, &err, nullptr, &r);
  MsgPtr keep(r);
  return r ? (int)((const Grpc__Health__V1__HealthCheckResponse *)r)->status : -1;
}

bool WaitStatus(ak_rpc_client_t *cli, int want) {
  for (int t = 0; t < 15000; t += 10) {
    if (CheckStatus(cli) == want) return true;
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  return false;
}

}  // namespace

// Two data-parallel groups of one rank each (co_service_params_t.groups).
class CoServiceGroupsTest : public CoServiceTest {
 protected:
  CoServiceGroupsTest() { n_groups_ = 2; }

  // Steps a worker ran for requests (its Steps minus its canaries).
  double BatchSteps(const std::string &addr) {
    std::string text = Scrape();
    return Sample(text, "arkvale_worker_steps_total{worker=\"" + addr + "\"}") -
           Sample(text, "arkvale_worker_canaries_total{worker=\"" + addr + "\"}");
  }

  // n concurrent greedy streams of max_new tokens; each flags `seen` as it streams.
  void RunStreams(int n, int max_new, std::vector<Stream> *out, std::vector<std::atomic<int>> *seen,
                  std::vector<std::thread> *th, std::vector<std::unique_ptr<GenReq>> *reqs, int salt) {
    out->resize(n);
    for (int i = 0; i < n; i++) {
      reqs->emplace_back(new GenReq(max_new));
      reqs->back()->set_ids(prompt_ids(12 + i, salt + i));
      (*out)[i].seen = &(*seen)[i];
    }
    for (int i = 0; i < n; i++) th->emplace_back([this, out, reqs, i] { Generate(*(*reqs)[i], &(*out)[i]); });
  }
};

// Requests spread over both groups: each worker runs batch Steps; both answer canaries.
TEST_F(CoServiceGroupsTest, RequestsSpreadOverBothGroups) {
  ASSERT_TRUE(WaitHealth(kServing));
  std::vector<Stream> streams;
  std::vector<std::atomic<int>> seen(4);
  std::vector<std::thread> th;
  std::vector<std::unique_ptr<GenReq>> reqs;
  RunStreams(4, 24, &streams, &seen, &th, &reqs, 1);
  for (auto &t : th) t.join();
  for (int i = 0; i < 4; i++) {
    EXPECT_EQ(streams[i].st, AK_OK) << i << ": " << streams[i].msg;
    EXPECT_EQ(streams[i].tokens.size(), 24u) << i;
  }
  EXPECT_GT(BatchSteps(waddr_), 0) << Scrape();
  EXPECT_GT(BatchSteps(waddr2_), 0) << Scrape();
  EXPECT_TRUE(WorkerDrains());
  // Both groups got their own canary (each group's own step_id sequence).
  EXPECT_GE(Sample(Scrape(), "arkvale_worker_canaries_total{worker=\"" + waddr2_ + "\"}"), 1);
}

// The second group's worker stops mid-stream: its requests end UNAVAILABLE (no hang),
// the first group's complete, health stays SERVING, new requests go to the live group;
// the worker comes back on its port and its group rejoins (revive) and takes requests.
TEST_F(CoServiceGroupsTest, AWorkerStopsMidStreamTheOtherGroupServesThenItRejoins) {
  ASSERT_TRUE(WaitHealth(kServing));
  const int kN = 4, kNew = 120;
  std::vector<Stream> streams;
  std::vector<std::atomic<int>> seen(kN);
  std::vector<std::thread> th;
  std::vector<std::unique_ptr<GenReq>> reqs;
  RunStreams(kN, kNew, &streams, &seen, &th, &reqs, 11);
  // Every stream has tokens, so each sits on a group's worker.
  for (int i = 0; i < kN; i++)
    for (int t = 0; t < 1000 && seen[i].load() < 2; t++) std::this_thread::sleep_for(std::chrono::milliseconds(5));
  int port2 = wk_service_port(wk2_);
  double steps2 = BatchSteps(waddr2_);
  EXPECT_GT(steps2, 0) << "the second group took none of the streams";
  wk_service_destroy(wk2_);
  wk2_ = nullptr;
  for (auto &t : th) t.join();
  int n_ok = 0, n_unavailable = 0;
  for (int i = 0; i < kN; i++) {
    if (streams[i].st == AK_OK) {
      n_ok++;
      EXPECT_EQ(streams[i].tokens.size(), (size_t)kNew) << i;
    } else {
      n_unavailable++;
      EXPECT_EQ(streams[i].code, GRPC_STATUS_UNAVAILABLE) << i << ": " << streams[i].msg;
      EXPECT_LT(streams[i].tokens.size(), (size_t)kNew) << i;
    }
  }
  EXPECT_GE(n_ok, 1);
  EXPECT_GE(n_unavailable, 1);
  EXPECT_EQ(HealthCheck(""), kServing) << "one live group is enough to serve";
  EXPECT_EQ(Sample(Scrape(), "arkvale_serving"), 1);
  // New requests go to the live group.
  {
    GenReq g(6);
    g.set_ids(prompt_ids(10, 30));
    Stream s;
    Generate(g, &s);
    EXPECT_EQ(s.st, AK_OK) << s.msg;
    EXPECT_EQ(s.tokens.size(), 6u);
  }
  EXPECT_TRUE(WorkerDrains());

  // It comes back on its port: revived, canaried, and routed to again.
  ASSERT_NO_FATAL_FAILURE(StartWorker2(port2));
  std::string canaries2 = "arkvale_worker_canaries_total{worker=\"" + waddr2_ + "\"}";
  double c0 = Sample(Scrape(), canaries2);
  bool back = false;
  for (int i = 0; i < 1500 && !back; i++) {
    back = Sample(Scrape(), canaries2) > c0;
    if (!back) std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  ASSERT_TRUE(back) << "the second group never answered a canary again";
  double before = BatchSteps(waddr2_);
  std::vector<Stream> again;
  std::vector<std::atomic<int>> seen2(kN);
  std::vector<std::thread> th2;
  std::vector<std::unique_ptr<GenReq>> reqs2;
  RunStreams(kN, 16, &again, &seen2, &th2, &reqs2, 40);
  for (auto &t : th2) t.join();
  for (int i = 0; i < kN; i++) EXPECT_EQ(again[i].st, AK_OK) << i << ": " << again[i].msg;
  EXPECT_GT(BatchSteps(waddr2_), before) << "the revived group takes requests again";
  EXPECT_EQ(HealthCheck(""), kServing);
}

// Both groups gone: NOT_SERVING and new requests UNAVAILABLE.
TEST_F(CoServiceGroupsTest, NotServingOnlyWhenEveryGroupIsDead) {
  ASSERT_TRUE(WaitHealth(kServing));
  wk_service_destroy(wk2_);
  wk2_ = nullptr;
  // the second group dies at its next canary; the first keeps health SERVING
  std::this_thread::sleep_for(std::chrono::milliseconds(3 * canary_period_ms_));
  EXPECT_EQ(HealthCheck(""), kServing);
  wk_service_destroy(wk_);
  wk_ = nullptr;
  ASSERT_TRUE(WaitHealth(kNotServing)) << "still SERVING with every worker gone";
  GenReq g(4);
  g.set_ids(prompt_ids(10, 1));
  Stream refused;
  Generate(g, &refused);
  EXPECT_EQ(refused.code, GRPC_STATUS_UNAVAILABLE) << refused.msg;
}

// A dead group whose host accepts connections but never answers (a listening socket
// nobody serves): each revive attempt is bounded by its Health probe (1 s here) and
// backs off, so the live group keeps streaming instead of stalling a step deadline
// per attempt.
TEST_F(CoServiceGroupsTest, ARevivingGroupThatNeverAnswersDoesNotStallTheLiveOne) {
  ASSERT_TRUE(WaitHealth(kServing));
  int port2 = wk_service_port(wk2_);
  wk_service_destroy(wk2_);
  wk2_ = nullptr;
  // the second group dies at its next canary (connection refused) ...
  std::this_thread::sleep_for(std::chrono::milliseconds(3 * canary_period_ms_));
  // ... and only then does its port stop answering: a call to a host that accepts and
  // never answers (a live group's Step or canary) would hold every group until its
  // deadline, the lock-step's known limit (notes/serving-status.md)
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  ASSERT_GE(fd, 0);
  int one = 1;
  setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  struct sockaddr_in a = {};
  a.sin_family = AF_INET, a.sin_port = htons((uint16_t)port2), a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  ASSERT_EQ(bind(fd, (struct sockaddr *)&a, sizeof a), 0) << "port " << port2 << " taken";
  ASSERT_EQ(listen(fd, 64), 0);
  std::this_thread::sleep_for(std::chrono::milliseconds(2 * canary_period_ms_));
  auto t0 = std::chrono::steady_clock::now();
  GenReq g(120);
  g.set_ids(prompt_ids(12, 60));
  Stream s;
  Generate(g, &s);
  double took_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  EXPECT_EQ(s.st, AK_OK) << s.msg;
  EXPECT_EQ(s.tokens.size(), 120u);
  printf("120 tokens in %.2f s on the live group while the other one's revives time out\n", took_s);
  EXPECT_LT(took_s, 15.0) << "the revive attempts stall the live group";
  EXPECT_EQ(HealthCheck(""), kServing);
  close(fd);
}

// Two groups: the in-process worker (waddr_), and a fake one (fw_, group2_addr_) set up
// by the suite's SetFake before it starts.
class CoServiceFakeGroupTest : public CoServiceTest {
 protected:
  FakeWorker fw_;
  CoServiceFakeGroupTest() { n_groups_ = 2; }
  virtual void SetFake(FakeWorker *f) = 0;
  void SetUp() override {
    if (!have_model()) GTEST_SKIP() << "model " << model_path() << " is absent (set ARKVALE_MODEL)";
    SetFake(&fw_);
    ASSERT_NO_FATAL_FAILURE(fw_.Start());
    group2_addr_ = "127.0.0.1:" + std::to_string(ak_rpc_server_port(fw_.srv));
    Start();
  }
  void TearDown() override {
    fw_.FinishHeld();  // else destroy waits for a held Step's deadline
    Stop();
  }
  // A worker's series of a per-worker family in a scrape.
  static double Series(const std::string &text, const char *name, const std::string &addr) {
    return Sample(text, std::string(name) + "{worker=\"" + addr + "\"}");
  }
  double Canaries(const std::string &addr) { return Series(Scrape(), "arkvale_worker_canaries_total", addr); }
};

// The fake group's host can take a Step and never answer. It has fewer pages than the
// real worker: requests go to the real one while it has a slot (co_sched routes to the
// most free pages), so only the canary reaches the fake one.
class CoServiceHungGroupTest : public CoServiceFakeGroupTest {
 protected:
  void SetFake(FakeWorker *f) override { f->capacity_pages = 100; }
};

// Groups are not in lock-step: the second group's host takes a Step (its canary) and
// never answers, a hung machine rather than a dead process. While that call is still
// open (not even past its deadline: the coordinator has not given up on it), the first
// group streams a whole request, keeps answering its canaries, and health stays
// SERVING. When the held call fails, only the second group dies.
TEST_F(CoServiceHungGroupTest, AHungGroupHoldsNoOtherGroup) {
  ASSERT_TRUE(WaitHealth(kServing));
  fw_.hang_steps = true;
  for (int t = 0; t < 15000 && fw_.NumHeld() == 0; t += 10) std::this_thread::sleep_for(std::chrono::milliseconds(10));
  ASSERT_EQ(fw_.NumHeld(), 1u) << "the second group's canary Step never came";
  double canaries = Canaries(waddr_);
  GenReq g(40);
  g.set_ids(prompt_ids(12, 70));
  Stream s;
  Generate(g, &s);
  EXPECT_EQ(s.st, AK_OK) << s.msg;
  EXPECT_EQ(s.tokens.size(), 40u);
  EXPECT_EQ(s.tokens, engine_greedy(prompt_ids(12, 70), 40));
  for (int t = 0; t < 15000 && Canaries(waddr_) <= canaries; t += 10)
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  EXPECT_GT(Canaries(waddr_), canaries) << "the live group's canaries stopped";
  EXPECT_EQ(HealthCheck(""), kServing);
  // all of it while the hung Step was still open
  EXPECT_EQ(fw_.NumHeld(), 1u);
  EXPECT_EQ(fw_.NumHeldCancelled(), 0u) << "the stream waited for the hung group's Step to give up";
  // The held Step fails: that group dies alone, and its own revive brings it back (its
  // canary answers again) while the first group serves.
  double fake_canaries = Canaries(group2_addr_);
  fw_.hang_steps = false;
  fw_.FinishHeld();
  Stream s2;
  Generate(g, &s2);
  EXPECT_EQ(s2.st, AK_OK) << s2.msg;
  EXPECT_EQ(s2.tokens, s.tokens);
  EXPECT_EQ(HealthCheck(""), kServing);
  for (int t = 0; t < 15000 && Canaries(group2_addr_) <= fake_canaries; t += 10)
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  EXPECT_GT(Canaries(group2_addr_), fake_canaries) << "the second group was not revived";
}

// The fake group samples on the device (FakeWorker.device_sampling) and has the most
// free pages, so requests go to it.
class CoServiceDeviceSampledTest : public CoServiceFakeGroupTest {
 protected:
  void SetFake(FakeWorker *f) override {
    f->device_sampling = true;
    f->capacity_pages *= 8;
  }
  // Six tokens of one request, served by the fake group (it has the most free pages).
  void GenerateOnTheFakeGroup(int prompt_seed) {
    ASSERT_TRUE(WaitHealth(kServing));
    GenReq g(6);
    g.set_ids(prompt_ids(10, prompt_seed));
    Stream st;
    Generate(g, &st);
    ASSERT_EQ(st.st, AK_OK) << st.msg;
    ASSERT_EQ(st.tokens, std::vector<int32_t>(6, 42)) << "the fake group served it";
  }
};

// arkvale_worker_device_sampled_steps_total counts a group's Generate Steps whose
// samples were drawn on the device: every Step of the fake group (its canaries are not
// Generate Steps), none of the CPU worker's.
TEST_F(CoServiceDeviceSampledTest, DeviceSampledStepsAreCounted) {
  ASSERT_NO_FATAL_FAILURE(GenerateOnTheFakeGroup(71));
  // The three series are updated one after another (a canary's Step is in steps_total
  // a moment before canaries_total): poll for a scrape between updates.
  std::string m;
  double dev = -1, generate_steps = -2;
  for (int i = 0; i < 250 && dev != generate_steps; i++) {
    if (i) std::this_thread::sleep_for(std::chrono::milliseconds(20));
    m = Scrape();
    dev = Series(m, "arkvale_worker_device_sampled_steps_total", group2_addr_);
    generate_steps = Series(m, "arkvale_worker_steps_total", group2_addr_) -
                     Series(m, "arkvale_worker_canaries_total", group2_addr_);
  }
  EXPECT_EQ(dev, generate_steps) << m;
  EXPECT_GE(dev, 6) << m;
  EXPECT_EQ(Series(m, "arkvale_worker_device_sampled_steps_total", waddr_), 0) << "a CPU worker samples on the host";
}

// Pipelined decode: a Step posted while the group's previous Step is still in flight
// names it (previous_step_id), so a worker that receives the two swapped runs them in
// order; a Step posted with none in flight (the first, a canary) names none. Step ids
// are the group's counter, so the one named is always the step_id just before.
TEST_F(CoServiceDeviceSampledTest, PipelinedStepsNameTheStepBefore) {
  ASSERT_NO_FATAL_FAILURE(GenerateOnTheFakeGroup(72));
  std::lock_guard<std::mutex> l(fw_.seen_mu);
  int named = 0;
  for (const auto &sp : fw_.seen) {
    if (sp.second < 0) continue;
    named++;
    EXPECT_EQ((uint64_t)sp.second, sp.first - 1) << "Step " << sp.first;
  }
  EXPECT_GE(named, 1) << "no Step was posted while another was in flight";
  EXPECT_LT(named, (int)fw_.seen.size()) << "the first Step of a drained group names none";
}

// One group of two ranks (each worker here holds the whole model: tensor parallelism
// is a later issue, the protocol is the same): every Step goes to both ranks with the
// same step_id, rank 0's samples are streamed, and a failed rank kills the group.
class CoServiceRanksTest : public CoServiceGroupsTest {
 protected:
  CoServiceRanksTest() { n_groups_ = 1, two_ranks_ = true; }
};

TEST_F(CoServiceRanksTest, EveryStepGoesToBothRanksAndARankFailureKillsTheGroup) {
  ASSERT_TRUE(WaitHealth(kServing));
  std::vector<int32_t> ids = Tokenize(kPromptText);
  std::vector<int32_t> ref = engine_greedy(ids, 12);
  GenReq g(12);
  g.set_text(kPromptText);
  Stream s;
  Generate(g, &s);
  ASSERT_EQ(s.st, AK_OK) << s.msg;
  EXPECT_EQ(s.tokens, ref);
  EXPECT_TRUE(WorkerDrains());
  std::string text = Scrape();
  double steps0 = Sample(text, "arkvale_worker_steps_total{worker=\"" + waddr_ + "\"}");
  double steps1 = Sample(text, "arkvale_worker_steps_total{worker=\"" + waddr2_ + "\"}");
  EXPECT_GE(steps0, 12);
  EXPECT_EQ(steps0, steps1) << "both ranks answer every Step and canary";
  // Rank 1 goes away: the group (the only one) dies: NOT_SERVING, requests UNAVAILABLE.
  wk_service_destroy(wk2_);
  wk2_ = nullptr;
  ASSERT_TRUE(WaitHealth(kNotServing)) << "a dead rank must kill its group";
  Stream refused;
  Generate(g, &refused);
  EXPECT_EQ(refused.code, GRPC_STATUS_UNAVAILABLE) << refused.msg;
  // Back on its port: the group revives (Release all, Info, Warmup on both ranks).
  int port2 = std::stoi(waddr2_.substr(waddr2_.rfind(':') + 1));
  ASSERT_NO_FATAL_FAILURE(StartWorker2(port2));
  ASSERT_TRUE(WaitHealth(kServing, 30000)) << "the group did not come back";
  Stream again;
  Generate(g, &again);
  EXPECT_EQ(again.st, AK_OK) << again.msg;
  EXPECT_EQ(again.tokens, ref);
}

// A bad group list is INVALID_ARGUMENT naming it.
TEST(CoServiceGroups, BadGroupListsAreRefused) {
  co_service_params_t cp = co_service_params_default();
  cp.model_path = "unused.gguf";
  const char *a[] = {"127.0.0.1:1", "127.0.0.1:1"};
  co_service_group_t g[2] = {{&a[0], 1}, {&a[1], 1}};
  co_service_t *co = nullptr;
  ak_err_t err;
  cp.groups = g, cp.n_groups = 2;
  EXPECT_EQ(co_service_create(&cp, &err, &co), AK_ERR_INVALID_ARG);
  EXPECT_NE(std::string(err.msg).find("already groups[0] rank 0"), std::string::npos) << err.msg;
  g[0].n_ranks = 0;
  EXPECT_EQ(co_service_create(&cp, &err, &co), AK_ERR_INVALID_ARG);
  EXPECT_NE(std::string(err.msg).find("groups[0]: 0 ranks"), std::string::npos) << err.msg;
  cp.n_groups = CO_SERVICE_MAX_GROUPS + 1;
  EXPECT_EQ(co_service_create(&cp, &err, &co), AK_ERR_INVALID_ARG);
  cp.groups = nullptr, cp.n_groups = 0, cp.worker_addr = nullptr;
  EXPECT_EQ(co_service_create(&cp, &err, &co), AK_ERR_INVALID_ARG);
  EXPECT_NE(std::string(err.msg).find("worker_addr or groups"), std::string::npos) << err.msg;
  EXPECT_EQ(co, nullptr);
}

TEST(CoServiceHealth, EngineDeadWhileTheProcessAnswers) {
  if (!have_model()) GTEST_SKIP() << "model " << model_path() << " is absent (the tokenizer comes from it)";
  FakeWorker fw;
  ASSERT_NO_FATAL_FAILURE(fw.Start());
  std::string waddr = "127.0.0.1:" + std::to_string(ak_rpc_server_port(fw.srv));
  co_service_params_t cp = co_service_params_default();
  cp.model_path = model_path();
  cp.worker_addr = waddr.c_str();
  cp.max_batch_tokens = kBatch;
  cp.canary_period_ms = 50;
  ak_err_t err;
  co_service_t *co = nullptr;
  ASSERT_EQ(co_service_create(&cp, &err, &co), AK_OK) << err.msg;
  std::string caddr = "127.0.0.1:" + std::to_string(co_service_port(co));
  ak_rpc_client_t *cli = nullptr;
  ASSERT_EQ(ak_rpc_client_create(caddr.c_str(), &err, &cli), AK_OK) << err.msg;
  EXPECT_TRUE(WaitStatus(cli, kServing));

  // The engine dies; Info, Warmup and Release still answer. The canary's Step fails, so
  // the group is dead; each revive passes Info and Warmup but never a canary.
  fw.engine_dead = true;
  EXPECT_TRUE(WaitStatus(cli, kNotServing));
  int steps = fw.n_steps.load();
  for (int i = 0; i < 10; i++) {
    EXPECT_EQ(CheckStatus(cli), kNotServing) << i;
    std::this_thread::sleep_for(std::chrono::milliseconds(30));
  }
  EXPECT_GT(fw.n_steps.load(), steps) << "revives should keep trying the canary";

  // The engine recovers: the next revive's canary passes.
  fw.engine_dead = false;
  EXPECT_TRUE(WaitStatus(cli, kServing));
  ak_rpc_client_destroy(cli);
  co_service_destroy(co);
}

// Pipelined decode (co_service_loop.c): two Steps of a group in flight; the worker feeds
// each decode token from its own previous sample. No canary after the first, so the
// Step counts below are the batch's alone.
class CoServicePipeTest : public CoServiceTest {
 protected:
  CoServicePipeTest() { canary_period_ms_ = 600000; }
  double BatchSteps() {
    std::string text = Scrape();
    return Sample(text, "arkvale_worker_steps_total{worker=\"" + waddr_ + "\"}") -
           Sample(text, "arkvale_worker_canaries_total{worker=\"" + waddr_ + "\"}");
  }
  // Nothing left on the worker: no sequence, no page.
  void ExpectWorkerEmpty() {
    EXPECT_TRUE(WorkerDrains()) << "the worker still holds " << WorkerSeqs() << " sequences";
    Arkvale__V1__ReleaseRequest q = ARKVALE__V1__RELEASE_REQUEST__INIT;
    q.has_all = 1, q.all = 1;
    MsgPtr m;
    ASSERT_EQ(unary_call(wcli_, "arkvale.v1.Worker", "Release", &q.base, &arkvale__v1__release_response__descriptor,
                         &m, nullptr, nullptr),
              AK_OK);
    auto *r = (const Arkvale__V1__ReleaseResponse *)m.get();
    EXPECT_EQ(r->n_released, 0u);
    EXPECT_EQ(r->kv->n_pages_used, 0u);
  }
};

// A stop string seen at Step k's answer, while Step k+1 (feeding the sequence) already
// runs: the token k+1 samples for it is never streamed nor counted, the sequence is
// dropped (no Step after k+1) and its pages are freed. A request that ends at
// max_new_tokens costs no extra Step: co_sched knows it ends before planning k+1.
TEST_F(CoServicePipeTest, StopStringWhileTheNextStepIsInFlight) {
  ASSERT_TRUE(WaitHealth(kServing));
  double steps0 = BatchSteps();
  GenReq g(16);
  g.set_text(kPromptText);
  Stream full;
  Generate(g, &full);
  ASSERT_EQ(full.st, AK_OK) << full.msg;
  ASSERT_EQ(full.tokens.size(), 16u);
  EXPECT_EQ(full.tokens, engine_greedy(Tokenize(kPromptText), 16));
  ASSERT_TRUE(WorkerDrains());
  EXPECT_EQ(BatchSteps() - steps0, 16.0) << "the prefill and 15 decode Steps, none past max_new_tokens";

  ASSERT_GT(full.text.size(), 12u) << full.text;
  std::string stop = full.text.substr(full.text.size() / 2, 3);
  size_t at = full.text.find(stop);
  GenReq g2(16);
  g2.set_text(kPromptText);
  char *stops[1] = {(char *)stop.c_str()};
  g2.stopping.n_stop = 1, g2.stopping.stop = stops;
  double steps1 = BatchSteps();
  Stream s;
  Generate(g2, &s);
  ASSERT_EQ(s.st, AK_OK) << s.msg;
  EXPECT_EQ(s.finish_reason, ARKVALE__V1__FINISH_REASON__FINISH_REASON_STOP_STRING);
  EXPECT_EQ(s.text, full.text.substr(0, at));
  ASSERT_LT(s.tokens.size(), full.tokens.size());
  EXPECT_EQ(s.tokens, std::vector<int32_t>(full.tokens.begin(), full.tokens.begin() + s.tokens.size()));
  EXPECT_EQ(s.completion_tokens, s.tokens.size());
  ExpectWorkerEmpty();
  // One Step per streamed token, plus at most the one in flight whose token was
  // discarded: Step k+1 is planned when Step k-1's answer is read, so it exists unless
  // the answers of k-1 and k were read in one pass (a loaded host: 12 of 40 runs with
  // six busy loops on two cores), when the stop is seen before k+1 is planned.
  double steps = BatchSteps() - steps1;
  EXPECT_GE(steps, (double)s.tokens.size()) << "a streamed token without its Step";
  EXPECT_LE(steps, (double)s.tokens.size() + 1) << "a Step planned after the stop string was seen";
}

// Slow Steps (each worker job waits 20 ms first): the next Step is queued at the worker
// while one runs. One stream is aborted with Steps in flight; the other, in the same
// Steps, runs on to its max_new_tokens (not compared with the engine's tokens: batched
// rows differ slightly on the quantized CPU path, see engine_greedy_pair; the worker's
// tests check fed tokens against explicit ones); nothing is left on the worker.
class CoServicePipeSlowTest : public CoServicePipeTest {
 protected:
  CoServicePipeSlowTest() { worker_job_delay_ms_ = 20; }
};

TEST_F(CoServicePipeSlowTest, AbortWithStepsInFlightLeavesTheOtherStreamRunning) {
  ASSERT_TRUE(WaitHealth(kServing));
  std::vector<int32_t> pa = prompt_ids(20, 11), pb = prompt_ids(24, 12);
  GenReq ga(24), gb(200);
  ga.set_ids(pa);
  gb.set_ids(pb);
  gb.set_id("abort-in-flight");
  Stream sa, sb;
  std::atomic<int> seen{0};
  sb.seen = &seen;
  std::thread ta([&] { Generate(ga, &sa); });
  std::thread tb([&] { Generate(gb, &sb); });
  bool saw_queued = false;
  for (int ms = 0; ms < 30000 && seen.load() < 6; ms++) {  // bounded: a stream that fails early must not hang
    saw_queued |= wk_service_queue_depth(wk_) > 0;
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  EXPECT_GE(seen.load(), 6) << "stream b never got 6 tokens (its message follows below, after the join)";
  Arkvale__V1__AbortRequest q = ARKVALE__V1__ABORT_REQUEST__INIT;
  q.request_id = (char *)"abort-in-flight";
  MsgPtr m;
  EXPECT_EQ(Call("Abort", &q.base, &arkvale__v1__abort_response__descriptor, &m), AK_OK);
  tb.join();
  ta.join();
  EXPECT_TRUE(saw_queued) << "no Step was ever queued behind a running one";
  EXPECT_EQ(sb.code, GRPC_STATUS_CANCELLED) << sb.msg;
  EXPECT_LT(sb.tokens.size(), 200u);
  ASSERT_EQ(sa.st, AK_OK) << sa.msg;
  ASSERT_EQ(sa.tokens.size(), 24u);
  EXPECT_EQ(sa.finish_reason, ARKVALE__V1__FINISH_REASON__FINISH_REASON_LENGTH);
  ExpectWorkerEmpty();
}

// A worker of one slot keeps none for the canary: a canary goes only into an empty
// group. A request that ends while its next Step is in flight leaves a Release
// pending in the service (not in co_sched); the canary must wait for it, or its
// NewSequence finds the worker's one slot still taken and the group dies.
// Canaries slower than their period (every worker job waits 60 ms first: a canary's
// Step and Release take 120 ms; the period is 20 ms), as on a loaded host. A due canary
// holds new Steps back, so if the period ran from a canary's start the next canary was
// due the moment one ended and requests never got a Step (a fresh-clone CI run under
// load: 97 s of back-to-back canaries). The period runs from the end: requests are
// served, with canaries between them.
class CoServiceSlowCanaryTest : public CoServiceTest {
 protected:
  CoServiceSlowCanaryTest() { worker_job_delay_ms_ = 60, canary_period_ms_ = 20; }
};

TEST_F(CoServiceSlowCanaryTest, RequestsAreServedBetweenCanaries) {
  ASSERT_TRUE(WaitHealth(kServing));
  const double canaries0 = Sample(Scrape(), "arkvale_worker_canaries_total{worker=\"" + waddr_ + "\"}");
  for (int round = 0; round < 3; round++) {
    GenReq g(3);
    g.set_ids(prompt_ids(8 + round, 40 + round));
    Stream s;
    Generate(g, &s, 20000);  // 8 jobs of 60 ms: seconds at most, unless canaries starve it
    ASSERT_EQ(s.st, AK_OK) << "round " << round << ": " << s.msg;
    EXPECT_EQ(s.tokens, engine_greedy(prompt_ids(8 + round, 40 + round), 3)) << "round " << round;
  }
  EXPECT_GT(Sample(Scrape(), "arkvale_worker_canaries_total{worker=\"" + waddr_ + "\"}"), canaries0)
      << "no canary ran between the requests";
}

class CoServiceOneSlotTest : public CoServiceTest {
 protected:
  CoServiceOneSlotTest() { worker_max_seqs_ = 1, canary_period_ms_ = 20; }
};

TEST_F(CoServiceOneSlotTest, CanaryWaitsForThePendingRelease) {
  ASSERT_TRUE(WaitHealth(kServing));
  Watch w;  // a death between the checks below (a revive comes within a period) shows here
  std::thread wt([&] { RunWatch(cli_, "", &w, 60000); });
  // The watch ends when the coordinator does: at any return (an ASSERT's too, where a
  // joinable thread would terminate the binary) the coordinator goes down and it joins.
  struct EndWatch {
    co_service_t **co;
    Watch *w;
    std::thread *wt;
    ~EndWatch() {
      w->stop = true;
      co_service_destroy(*co);
      *co = nullptr;
      wt->join();
    }
  } end_watch{&co_, &w, &wt};
  ASSERT_TRUE(w.WaitFor(1));
  for (int round = 0; round < 6; round++) {
    GenReq g(10);
    g.set_ids(prompt_ids(12 + round, round));
    Stream s;
    Generate(g, &s);
    ASSERT_EQ(s.st, AK_OK) << "round " << round << ": " << s.msg;
    EXPECT_EQ(s.tokens.size(), 10u) << "round " << round;
    // a few canary periods with the group idle
    std::this_thread::sleep_for(std::chrono::milliseconds(5 * canary_period_ms_));
    EXPECT_EQ(HealthCheck(""), kServing) << "round " << round << ": the group died at a canary";
  }
  for (int st : w.Get()) EXPECT_EQ(st, kServing) << "health left SERVING: a canary found the slot taken";
  EXPECT_TRUE(WorkerDrains());
}
