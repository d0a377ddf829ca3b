// Helpers for the Worker service tests (test_wk_service.cc): the model path, the
// in-process engine's greedy tokens as the reference, and a StepRequest builder that
// owns its storage. Header-only, test code.
#ifndef WK_SERVICE_TEST_UTIL_H
#define WK_SERVICE_TEST_UTIL_H

#include <gtest/gtest.h>

#include <cstdio>
#include <cstdlib>
#include <memory>
#include <string>
#include <vector>

extern "C" {
#include "ak_rpc_client.h"
#include "arkvale/v1/worker.pb-c.h"
#include "pb_buf.h"
#include "wk_engine.h"
}

namespace wk_test {

const size_t kMax = 4 << 20;
const int32_t kPageTokens = 16, kMaxSeqs = 4, kMaxSeqTokens = 256, kBatch = 64;

inline const char *model_path() {
  const char *env = getenv("ARKVALE_MODEL");
  return env && *env ? env : AK_MODEL_PATH;
}

inline bool have_model() {
  FILE *f = fopen(model_path(), "rb");
  if (f) fclose(f);
  return f != nullptr;
}

struct MsgDeleter {
  void operator()(ProtobufCMessage *m) const { pb_msg_free(m); }
};
using MsgPtr = std::unique_ptr<ProtobufCMessage, MsgDeleter>;

// One unary call of `service` ("arkvale.v1.Worker", "arkvale.v1.Generation") through
// cli: the response (when wanted) into *resp, the gRPC code and message when asked.
inline ak_status_t unary_call(ak_rpc_client_t *cli, const char *service, const char *method,
                              const ProtobufCMessage *req, const ProtobufCMessageDescriptor *d, MsgPtr *resp,
                              grpc_status_code *code, std::string *msg) {
  ak_err_t err;
  ak_err_clear(&err);
  ProtobufCMessage *r = nullptr;
  grpc_status_code c;
  std::string path = std::string("/") + service + "/" + method;
  ak_status_t st = ak_rpc_client_unary(cli, path.c_str(), req, d, kMax, 60000, &err, &c, &r);
  if (resp) resp->reset(r);
  else pb_msg_free(r);
  if (code) *code = c;
  if (msg) *msg = err.msg;
  return st;
}

inline wk_engine_params_t engine_params() {
  wk_engine_params_t p = wk_engine_params_default();
  p.model_path = model_path();
  p.n_threads = 2;
  p.page_tokens = kPageTokens;
  p.max_seqs = kMaxSeqs;
  p.max_seq_tokens = kMaxSeqTokens;
  p.max_batch_tokens = kBatch;
  return p;
}

inline std::vector<int32_t> prompt_ids(int n, int salt) {
  std::vector<int32_t> ids(n);
  for (int i = 0; i < n; i++) ids[i] = (int32_t)((i * 7919 + 13 + salt * 131) % 49000) + 100;
  return ids;
}

// The reference: the in-process engine, prefill then greedy decode (argmax).
inline std::vector<int32_t> engine_greedy(const std::vector<int32_t> &prompt, int n_gen,
                                   const kv_pool_params_t *kv = nullptr) {
  wk_engine_params_t p = engine_params();
  p.kv_policy = kv;
  wk_engine_t *e = nullptr;
  ak_err_t err;
  EXPECT_EQ(wk_engine_create(&p, &err, &e), AK_OK) << err.msg;
  std::vector<int32_t> out;
  if (!e) return out;
  int32_t n_vocab = wk_model_hparams(wk_engine_model(e))->n_vocab;
  std::vector<float> logits(n_vocab);
  kv_seq_id_t s;
  EXPECT_EQ(wk_engine_seq_create(e, &s), AK_OK);
  EXPECT_EQ(wk_engine_prefill(e, s, prompt.data(), (int64_t)prompt.size(), logits.data()), AK_OK);
  for (int g = 0; g < n_gen; g++) {
    int32_t tok = (int32_t)kn_argmax(logits.data(), n_vocab), one = 1;
    out.push_back(tok);
    wk_forward_batch_t b = {};
    b.seqs.n_seqs = 1, b.seqs.seqs = &s, b.seqs.n_new_tokens = &one;
    b.tokens = &tok, b.logits = logits.data();
    EXPECT_EQ(wk_engine_step(e, &b), AK_OK) << wk_engine_errmsg(e);
  }
  wk_engine_destroy(e);
  return out;
}

// The reference for two sequences batched as the service batches them: the first
// step prefills a then b in one forward, later steps decode b then a. (The quantized
// CPU path gives a batched row slightly different logits than a row alone: see
// test_wk_forward.cc, MixedBatchEqualsSequentialRuns.)
inline void engine_greedy_pair(const std::vector<int32_t> &pa, const std::vector<int32_t> &pb, int n_gen,
                        std::vector<int32_t> *ga, std::vector<int32_t> *gb) {
  wk_engine_params_t p = engine_params();
  wk_engine_t *e = nullptr;
  ak_err_t err;
  ASSERT_EQ(wk_engine_create(&p, &err, &e), AK_OK) << err.msg;
  int32_t nv = wk_model_hparams(wk_engine_model(e))->n_vocab;
  std::vector<float> logits(2 * (size_t)nv);
  kv_seq_id_t s[2];
  for (auto &x : s) ASSERT_EQ(wk_engine_seq_create(e, &x), AK_OK);
  std::vector<int32_t> toks(pa);
  toks.insert(toks.end(), pb.begin(), pb.end());
  int32_t n[2] = {(int32_t)pa.size(), (int32_t)pb.size()};
  wk_forward_batch_t b = {};
  b.seqs.n_seqs = 2, b.seqs.seqs = s, b.seqs.n_new_tokens = n;
  b.tokens = toks.data(), b.logits = logits.data();
  ASSERT_EQ(wk_engine_step(e, &b), AK_OK) << wk_engine_errmsg(e);
  for (auto x : s) ASSERT_EQ(kv_seq_compact(wk_engine_kvpool(e), x), AK_OK);
  ga->push_back((int32_t)kn_argmax(logits.data(), nv));
  gb->push_back((int32_t)kn_argmax(logits.data() + nv, nv));
  kv_seq_id_t rev[2] = {s[1], s[0]};
  int32_t ones[2] = {1, 1};
  for (int g = 1; g < n_gen; g++) {
    int32_t t[2] = {gb->back(), ga->back()};
    b.seqs.seqs = rev, b.seqs.n_new_tokens = ones, b.tokens = t;
    ASSERT_EQ(wk_engine_step(e, &b), AK_OK) << wk_engine_errmsg(e);
    gb->push_back((int32_t)kn_argmax(logits.data(), nv));
    ga->push_back((int32_t)kn_argmax(logits.data() + nv, nv));
  }
  wk_engine_destroy(e);
}

// Builders for a StepRequest that own their storage.
struct StepBuilder {
  Arkvale__V1__StepRequest req = ARKVALE__V1__STEP_REQUEST__INIT;
  std::vector<std::unique_ptr<Arkvale__V1__NewSequence>> news;
  std::vector<std::unique_ptr<Arkvale__V1__ContinuingSequence>> conts;
  std::vector<std::unique_ptr<Arkvale__V1__SamplingParams>> samplings;
  std::vector<std::unique_ptr<std::vector<int32_t>>> toks;
  std::vector<Arkvale__V1__NewSequence *> news_p;
  std::vector<Arkvale__V1__ContinuingSequence *> conts_p;
  std::vector<uint64_t> drops;

  explicit StepBuilder(uint64_t step_id) { req.has_step_id = 1, req.step_id = step_id; }
  int32_t *keep(const std::vector<int32_t> &t) {
    toks.emplace_back(new std::vector<int32_t>(t));
    return toks.back()->data();
  }
  StepBuilder &add_new(uint64_t id, const std::vector<int32_t> &t, bool sample = true) {
    news.emplace_back(new Arkvale__V1__NewSequence);
    auto *n = news.back().get();
    arkvale__v1__new_sequence__init(n);
    n->has_seq_id = 1, n->seq_id = id;
    samplings.emplace_back(new Arkvale__V1__SamplingParams);
    arkvale__v1__sampling_params__init(samplings.back().get());
    samplings.back()->has_temperature = 1, samplings.back()->temperature = 0;  // greedy
    n->sampling = samplings.back().get();
    n->n_token_ids = t.size(), n->token_ids = keep(t);
    n->has_sample = 1, n->sample = sample;
    return *this;
  }
  StepBuilder &add_cont(uint64_t id, const std::vector<int32_t> &t, bool sample = true) {
    conts.emplace_back(new Arkvale__V1__ContinuingSequence);
    auto *c = conts.back().get();
    arkvale__v1__continuing_sequence__init(c);
    c->has_seq_id = 1, c->seq_id = id;
    c->n_token_ids = t.size(), c->token_ids = keep(t);
    c->has_sample = 1, c->sample = sample;
    return *this;
  }
  // A decode token fed from the worker's own sample at step `from_step_id` (pipelined).
  StepBuilder &add_fed(uint64_t id, uint64_t from_step_id, bool sample = true) {
    add_cont(id, {}, sample);
    conts.back()->has_feed_sampled_at_step_id = 1, conts.back()->feed_sampled_at_step_id = from_step_id;
    return *this;
  }
  Arkvale__V1__StepRequest *get() {
    news_p.clear(), conts_p.clear();
    for (auto &n : news) news_p.push_back(n.get());
    for (auto &c : conts) conts_p.push_back(c.get());
    req.n_new_seqs = news_p.size(), req.new_seqs = news_p.data();
    req.n_continuing_seqs = conts_p.size(), req.continuing_seqs = conts_p.data();
    req.n_drop_seq_ids = drops.size(), req.drop_seq_ids = drops.data();
    return &req;
  }
};

}  // namespace wk_test

#endif
