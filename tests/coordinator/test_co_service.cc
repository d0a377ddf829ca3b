// Tests for coordinator/co_service.c and co_service_loop.c: the public Generation
// service over an in-process Worker service (wk_service) on loopback, with the real
// default model. GetModelInfo; Tokenize round trip; greedy tokens through Generate equal
// the in-process engine's; four concurrent streams complete; malformed requests are
// INVALID_ARGUMENT naming the field; a cancelled stream and an Abort free the worker's
// sequence within a few steps.
#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <cstring>
#include <memory>
#include <string>
#include <thread>
#include <vector>

extern "C" {
#include "ak_rpc_client.h"
#include "arkvale/v1/generation.pb-c.h"
#include "arkvale/v1/worker.pb-c.h"
#include "co_service.h"
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

  void SetUp() override { Start(); }

  void Start() {
    if (!have_model()) GTEST_SKIP() << "model " << model_path() << " is absent (set ARKVALE_MODEL)";
    wk_service_params_t wp = wk_service_params_default();
    wp.engine = engine_params();
    ak_err_t err;
    ASSERT_EQ(wk_service_create(&wp, &err, &wk_), AK_OK) << err.msg;
    std::string waddr = "127.0.0.1:" + std::to_string(wk_service_port(wk_));
    co_service_params_t cp = co_service_params_default();
    cp.model_path = model_path();
    cp.worker_addr = waddr.c_str();
    cp.max_batch_tokens = kBatch;
    cp.max_queue = max_queue_;
    ASSERT_EQ(co_service_create(&cp, &err, &co_), AK_OK) << err.msg;
    std::string caddr = "127.0.0.1:" + std::to_string(co_service_port(co_));
    ASSERT_EQ(ak_rpc_client_create(caddr.c_str(), &err, &cli_), AK_OK) << err.msg;
    ASSERT_EQ(ak_rpc_client_create(waddr.c_str(), &err, &wcli_), AK_OK) << err.msg;
  }

  void TearDown() override { Stop(); }

  void Stop() {
    ak_rpc_client_destroy(cli_);
    ak_rpc_client_destroy(wcli_);
    co_service_destroy(co_);
    wk_service_destroy(wk_);
    cli_ = wcli_ = nullptr, co_ = nullptr, wk_ = nullptr;
  }

  ak_status_t Call(const char *m, const ProtobufCMessage *req, const ProtobufCMessageDescriptor *d, MsgPtr *resp,
                   grpc_status_code *code = nullptr, std::string *msg = nullptr) {
    ak_err_t err;
    ak_err_clear(&err);
    ProtobufCMessage *r = nullptr;
    grpc_status_code c;
    std::string path = std::string("/arkvale.v1.Generation/") + m;
    ak_status_t st = ak_rpc_client_unary(cli_, path.c_str(), req, d, kMax, 60000, &err, &c, &r);
    if (resp) resp->reset(r);
    else pb_msg_free(r);
    if (code) *code = c;
    if (msg) *msg = err.msg;
    return st;
  }

  void Generate(const GenReq &g, Stream *s) {
    ak_err_t err;
    ak_err_clear(&err);
    s->st = ak_rpc_client_stream(cli_, "/arkvale.v1.Generation/Generate", &g.req.base,
                                 &arkvale__v1__generate_response__descriptor, kMax, 120000, OnMsg, s, &err, &s->code);
    s->msg = err.msg;
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
