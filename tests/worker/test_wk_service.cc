// Tests for worker/wk_service.c and wk_service_step.c: the arkvale.v1.Worker service
// in-process on loopback with the real default model. Info / Warmup / Health; greedy
// tokens through Step equal the in-process engine's; two sequences in one step;
// Release and drops free every page; NOT_FOUND, INVALID_ARGUMENT and OUT_OF_RANGE
// cases; a Step that arrives while another runs is queued (and Health answers
// meanwhile); under arkvale, a chunked prompt comes down to its budget once sampled.
// The accounted allocator checks that nothing leaked.
#include <gtest/gtest.h>

#include <atomic>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

extern "C" {
#include "ak_alloc.h"
#include "ak_rpc_client.h"
#include "arkvale/v1/worker.pb-c.h"
#include "pb_buf.h"
#include "wk_engine.h"
#include "wk_service.h"
}

#include "wk_service_fixture.h"
#include "wk_service_test_util.h"

using namespace wk_test;

namespace {

class WkServiceTest : public WkServiceFixture {
 protected:
  const Arkvale__V1__HealthResponse *Health(MsgPtr *keep) {
    Arkvale__V1__HealthRequest q = ARKVALE__V1__HEALTH_REQUEST__INIT;
    EXPECT_EQ(Call("Health", &q.base, &arkvale__v1__health_response__descriptor, keep), AK_OK);
    return (const Arkvale__V1__HealthResponse *)keep->get();
  }
  const Arkvale__V1__ReleaseResponse *Release(std::vector<uint64_t> ids, bool all, MsgPtr *keep) {
    Arkvale__V1__ReleaseRequest q = ARKVALE__V1__RELEASE_REQUEST__INIT;
    q.n_seq_ids = ids.size(), q.seq_ids = ids.data();
    if (all) q.has_all = 1, q.all = 1;
    EXPECT_EQ(Call("Release", &q.base, &arkvale__v1__release_response__descriptor, keep), AK_OK);
    return (const Arkvale__V1__ReleaseResponse *)keep->get();
  }
};

}  // namespace

TEST_F(WkServiceTest, InfoWarmupHealth) {
  MsgPtr m;
  Arkvale__V1__InfoRequest iq = ARKVALE__V1__INFO_REQUEST__INIT;
  ASSERT_EQ(Call("Info", &iq.base, &arkvale__v1__info_response__descriptor, &m), AK_OK);
  auto *info = (const Arkvale__V1__InfoResponse *)m.get();
  EXPECT_EQ(info->protocol_revision, 3u);
  EXPECT_GT(strlen(info->model_id), 0u);
  EXPECT_EQ(strlen(info->model_fingerprint), 16u);
  EXPECT_EQ(info->n_vocab, 49152u);
  EXPECT_EQ(info->n_layers, 30u);
  EXPECT_EQ(info->context_tokens, (uint32_t)kMaxSeqTokens);
  EXPECT_EQ(info->page_tokens, (uint32_t)kPageTokens);
  EXPECT_EQ(info->device_kind, ARKVALE__V1__DEVICE_KIND__DEVICE_KIND_CPU);
  EXPECT_FALSE(info->has_device_idx);
  ASSERT_EQ(info->n_supported_policies, 1u);
  EXPECT_EQ(info->supported_policies[0], ARKVALE__V1__KV_POLICY__KV_POLICY_FULL);

  MsgPtr h;
  EXPECT_EQ(Health(&h)->state, ARKVALE__V1__WORKER_STATE__WORKER_STATE_LOADED);
  // Step before Warmup is refused.
  StepBuilder early(1);
  early.add_new(1, prompt_ids(8, 0));
  grpc_status_code code;
  std::string msg;
  MsgPtr s;
  Step(early, &s, &code, &msg);
  EXPECT_EQ(code, GRPC_STATUS_INVALID_ARGUMENT) << msg;

  MsgPtr w;
  auto *wr = Warmup(&w);
  ASSERT_NE(wr, nullptr);
  const uint64_t pages = (uint64_t)(kMaxSeqTokens / kPageTokens) * 30 * kMaxSeqs;  // the engine's default pool
  EXPECT_EQ(wr->capacity_pages, pages);
  EXPECT_EQ(wr->capacity_tokens, pages / 30 * kPageTokens);
  EXPECT_EQ(wr->pages_per_seq, (uint64_t)(kMaxSeqTokens / kPageTokens) * 30);
  EXPECT_EQ(wr->max_seqs, (uint32_t)kMaxSeqs);
  EXPECT_EQ(wr->max_batch_tokens, (uint32_t)kBatch);
  EXPECT_GT(wr->warmup_us, 0.0);
  EXPECT_EQ(Health(&h)->state, ARKVALE__V1__WORKER_STATE__WORKER_STATE_READY);
  EXPECT_EQ(((const Arkvale__V1__HealthResponse *)h.get())->n_seqs, 0u);

  // Another policy than the pool's: refused.
  Arkvale__V1__WarmupRequest wq = ARKVALE__V1__WARMUP_REQUEST__INIT;
  Arkvale__V1__KvConfig kv = ARKVALE__V1__KV_CONFIG__INIT;
  kv.has_policy = 1, kv.policy = ARKVALE__V1__KV_POLICY__KV_POLICY_ARKVALE;
  wq.kv = &kv;
  EXPECT_EQ(Call("Warmup", &wq.base, &arkvale__v1__warmup_response__descriptor, nullptr, &code, &msg),
            AK_ERR_INVALID_ARG);
  EXPECT_NE(msg.find("kv.policy"), std::string::npos) << msg;
}

TEST_F(WkServiceTest, GreedyEqualsEngineAndReleaseFreesPages) {
  MsgPtr w;
  Warmup(&w);
  std::vector<int32_t> prompt = prompt_ids(40, 1);
  std::vector<int32_t> ref = engine_greedy(prompt, 16);
  ASSERT_EQ(ref.size(), 16u);
  std::vector<int32_t> got;
  for (int g = 0; g < 16; g++) {
    StepBuilder b(++step_id_);
    if (g == 0) b.add_new(42, prompt);
    else b.add_cont(42, {got.back()});
    MsgPtr m;
    grpc_status_code code;
    std::string msg;
    auto *r = Step(b, &m, &code, &msg);
    ASSERT_NE(r, nullptr) << msg;
    EXPECT_EQ(r->step_id, step_id_);
    ASSERT_EQ(r->n_samples, 1u);
    EXPECT_EQ(r->samples[0]->seq_id, 42u);
    got.push_back(r->samples[0]->token_id);
    EXPECT_TRUE(r->has_sampled_on_device);
    EXPECT_FALSE(r->sampled_on_device) << "a CPU engine samples on the host";
    ASSERT_NE(r->timings, nullptr);
    EXPECT_EQ(r->timings->n_tokens, g == 0 ? 40u : 1u);
    EXPECT_GE(r->timings->total_us, r->timings->forward_us);
    ASSERT_NE(r->kv, nullptr);
    EXPECT_EQ(r->kv->n_seqs, 1u);
    EXPECT_EQ(r->kv->n_pages_used, (uint64_t)((40 + g + kPageTokens - 1) / kPageTokens) * 30);
  }
  EXPECT_EQ(got, ref);
  MsgPtr h;
  EXPECT_EQ(Health(&h)->last_step_id, step_id_);
  EXPECT_EQ(((const Arkvale__V1__HealthResponse *)h.get())->n_seqs, 1u);

  MsgPtr rel;
  auto *rr = Release({42, 777}, false, &rel);  // 777: unknown, ignored
  EXPECT_EQ(rr->n_released, 1u);
  EXPECT_EQ(rr->kv->n_pages_used, 0u);
  EXPECT_EQ(rr->kv->n_seqs, 0u);
  EXPECT_EQ(Health(&h)->n_seqs, 0u);
  // The released id is gone: continuing it is NOT_FOUND, naming it.
  StepBuilder b(++step_id_);
  b.add_cont(42, {got.back()});
  MsgPtr m;
  grpc_status_code code;
  std::string msg;
  Step(b, &m, &code, &msg);
  EXPECT_EQ(code, GRPC_STATUS_NOT_FOUND);
  EXPECT_NE(msg.find("seq_id 42"), std::string::npos) << msg;
}

TEST_F(WkServiceTest, TwoSequencesInOneStep) {
  MsgPtr w;
  Warmup(&w);
  std::vector<int32_t> pa = prompt_ids(20, 2), pb = prompt_ids(33, 3);
  std::vector<int32_t> ra, rb;
  engine_greedy_pair(pa, pb, 6, &ra, &rb);
  ASSERT_EQ(rb.size(), 6u);
  std::vector<int32_t> ga, gb;
  for (int g = 0; g < 6; g++) {
    StepBuilder b(++step_id_);
    if (g == 0) b.add_new(7, pa).add_new(9, pb);
    else b.add_cont(9, {gb.back()}).add_cont(7, {ga.back()});  // any order
    MsgPtr m;
    std::string msg;
    auto *r = Step(b, &m, nullptr, &msg);
    ASSERT_NE(r, nullptr) << msg;
    ASSERT_EQ(r->n_samples, 2u);
    for (size_t i = 0; i < 2; i++) (r->samples[i]->seq_id == 7 ? ga : gb).push_back(r->samples[i]->token_id);
    EXPECT_EQ(r->kv->n_seqs, 2u);
  }
  EXPECT_EQ(ga, ra);
  EXPECT_EQ(gb, rb);
  // Dropping one in a step frees its pages; the other continues.
  StepBuilder b(++step_id_);
  b.drops.push_back(7);
  b.add_cont(9, {gb.back()});
  MsgPtr m;
  auto *r = Step(b, &m);
  ASSERT_NE(r, nullptr);
  EXPECT_EQ(r->kv->n_seqs, 1u);
  EXPECT_EQ(r->kv->n_pages_used, (uint64_t)((33 + 6 + kPageTokens - 1) / kPageTokens) * 30);
  MsgPtr rel;
  EXPECT_EQ(Release({}, true, &rel)->kv->n_pages_used, 0u);
}

TEST_F(WkServiceTest, BadStepsAreRefusedAndChangeNothing) {
  MsgPtr w;
  Warmup(&w);
  StepBuilder ok(++step_id_);
  ok.add_new(5, prompt_ids(10, 4));
  MsgPtr m;
  ASSERT_NE(Step(ok, &m), nullptr);
  auto expect_code = [&](StepBuilder &b, grpc_status_code want, const char *needle) {
    MsgPtr r;
    grpc_status_code code;
    std::string msg;
    Step(b, &r, &code, &msg);
    EXPECT_EQ(code, want) << msg;
    EXPECT_NE(msg.find(needle), std::string::npos) << msg;
  };
  {  // a live id admitted again
    StepBuilder b(++step_id_);
    b.add_new(5, {1, 2});
    expect_code(b, GRPC_STATUS_INVALID_ARGUMENT, "already live");
  }
  {  // the same new id twice in one step
    StepBuilder b(++step_id_);
    b.add_new(6, {1}).add_new(6, {2});
    expect_code(b, GRPC_STATUS_INVALID_ARGUMENT, "appears twice");
  }
  {  // unknown continuing id
    StepBuilder b(++step_id_);
    b.add_cont(123456789, {1});
    expect_code(b, GRPC_STATUS_NOT_FOUND, "seq_id 123456789");
  }
  {  // no tokens; a token out of the vocabulary
    StepBuilder b(++step_id_);
    b.add_new(8, {});
    expect_code(b, GRPC_STATUS_INVALID_ARGUMENT, "no token_ids");
    StepBuilder c(++step_id_);
    c.add_cont(5, {49152});
    expect_code(c, GRPC_STATUS_INVALID_ARGUMENT, "outside [0, 49152)");
  }
  {  // more rows than max_batch_tokens; past the context
    StepBuilder b(++step_id_);
    b.add_new(8, prompt_ids(kBatch + 1, 5));
    expect_code(b, GRPC_STATUS_INVALID_ARGUMENT, "max_batch_tokens");
    StepBuilder c(++step_id_);
    c.add_new(8, prompt_ids(8, 5));
    c.news[0]->has_max_seq_tokens = 1, c.news[0]->max_seq_tokens = 4;
    expect_code(c, GRPC_STATUS_OUT_OF_RANGE, "max_seq_tokens");
  }
  {  // a step_id not above the last
    StepBuilder b(1);
    b.add_cont(5, {1});
    expect_code(b, GRPC_STATUS_FAILED_PRECONDITION, "not above");
  }
  {  // bytes that are not a StepRequest
    const char junk[] = "\xff\xff\xff\xff garbage";
    grpc_slice sl = grpc_slice_from_copied_buffer(junk, sizeof junk - 1);
    grpc_byte_buffer *bb = grpc_raw_byte_buffer_create(&sl, 1);
    grpc_slice_unref(sl);
    ak_err_t err;
    grpc_status_code code;
    EXPECT_EQ(ak_rpc_client_call_bytes(cli_, "/arkvale.v1.Worker/Step", bb, &arkvale__v1__step_response__descriptor,
                                       kMax, 60000, nullptr, nullptr, &err, &code),
              AK_ERR_INVALID_ARG);
    EXPECT_EQ(code, GRPC_STATUS_INVALID_ARGUMENT) << err.msg;
    grpc_byte_buffer_destroy(bb);
  }
  // Nothing changed: sequence 5 alone, 10 tokens, and it still steps.
  MsgPtr h;
  EXPECT_EQ(Health(&h)->n_seqs, 1u);
  StepBuilder c(++step_id_);
  c.add_cont(5, {300});
  auto *r = Step(c, &m);
  ASSERT_NE(r, nullptr);
  EXPECT_EQ(r->kv->n_pages_used, 1u * 30);
  MsgPtr rel;
  EXPECT_EQ(Release({5}, false, &rel)->kv->n_pages_used, 0u);
}

// The engine thread is held inside the first Step's job: Health still answers, a
// second Step waits in the queue, and both complete once the engine is free.
TEST_F(WkServiceTest, StepDuringStepIsQueuedNotLost) {
  MsgPtr w;
  Warmup(&w);
  std::vector<int32_t> pa = prompt_ids(12, 6), pb = prompt_ids(17, 7);
  std::vector<int32_t> ra = engine_greedy(pa, 1), rb = engine_greedy(pb, 1);
  {
    std::lock_guard<std::mutex> g(mu_);
    hold_ = true;
  }
  int started0 = jobs_started_.load();
  MsgPtr ma, mb;
  std::string ea, eb;
  StepBuilder ba(++step_id_), bb(++step_id_);
  ba.add_new(1, pa);
  bb.add_new(2, pb);
  std::thread ta([&] { Step(ba, &ma, nullptr, &ea); });
  {
    std::unique_lock<std::mutex> g(mu_);
    ASSERT_TRUE(cv_.wait_for(g, std::chrono::seconds(30), [&] { return jobs_started_ > started0; }));
  }
  std::thread tb([&] { Step(bb, &mb, nullptr, &eb); });
  for (int i = 0; i < 3000 && wk_service_queue_depth(svc_) < 1; i++)
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  EXPECT_EQ(wk_service_queue_depth(svc_), 1);
  MsgPtr h;
  EXPECT_EQ(Health(&h)->state, ARKVALE__V1__WORKER_STATE__WORKER_STATE_READY);  // not blocked by the step
  {
    std::lock_guard<std::mutex> g(mu_);
    hold_ = false;
  }
  cv_.notify_all();
  ta.join();
  tb.join();
  auto *ra_ = (const Arkvale__V1__StepResponse *)ma.get();
  auto *rb_ = (const Arkvale__V1__StepResponse *)mb.get();
  ASSERT_NE(ra_, nullptr) << ea;
  ASSERT_NE(rb_, nullptr) << eb;
  ASSERT_EQ(ra_->n_samples, 1u);
  ASSERT_EQ(rb_->n_samples, 1u);
  EXPECT_EQ(ra_->samples[0]->token_id, ra[0]);
  EXPECT_EQ(rb_->samples[0]->token_id, rb[0]);
  EXPECT_EQ(rb_->kv->n_seqs, 2u);
  MsgPtr rel;
  EXPECT_EQ(Release({}, true, &rel)->n_released, 2u);
}

// A budgeted policy: the prompt's pages come down to the budget when its last chunk is
// sampled (as wk_engine_prefill does), and greedy tokens still equal the engine's.
TEST(WkServiceArkvale, PromptComesDownToItsBudget) {
  if (!have_model()) GTEST_SKIP() << "model " << model_path() << " is absent (set ARKVALE_MODEL)";
  int64_t before = ak_alloc_outstanding_bytes(AK_MEM_HOST);
  kv_pool_params_t kv = kv_pool_params_default();
  kv.policy = KV_POLICY_ARKVALE;
  kv.budget_tokens = 4 * kPageTokens;
  std::vector<int32_t> prompt = prompt_ids(100, 8);
  std::vector<int32_t> ref = engine_greedy(prompt, 8, &kv);
  {
    wk_service_params_t p = wk_service_params_default();
    p.engine = engine_params();
    p.kv = kv;
    wk_service_t *svc = nullptr;
    ak_rpc_client_t *cli = nullptr;
    ak_err_t err;
    ASSERT_EQ(wk_service_create(&p, &err, &svc), AK_OK) << err.msg;
    std::string target = "127.0.0.1:" + std::to_string(wk_service_port(svc));
    ASSERT_EQ(ak_rpc_client_create(target.c_str(), &err, &cli), AK_OK) << err.msg;
    Arkvale__V1__WarmupRequest wq = ARKVALE__V1__WARMUP_REQUEST__INIT;
    Arkvale__V1__KvConfig kc = ARKVALE__V1__KV_CONFIG__INIT;
    kc.has_policy = 1, kc.policy = ARKVALE__V1__KV_POLICY__KV_POLICY_ARKVALE;
    kc.has_budget_tokens = 1, kc.budget_tokens = (uint32_t)kv.budget_tokens;
    wq.kv = &kc;
    ProtobufCMessage *r = nullptr;
    ASSERT_EQ(ak_rpc_client_unary(cli, "/arkvale.v1.Worker/Warmup", &wq.base,
                                  &arkvale__v1__warmup_response__descriptor, kMax, 60000, &err, nullptr, &r),
              AK_OK)
        << err.msg;
    // 2 full layers of 16 pages + 28 budgeted layers of 4 pages.
    EXPECT_EQ(((Arkvale__V1__WarmupResponse *)r)->pages_per_seq, 2u * 16 + 28u * 4);
    pb_msg_free(r);
    // The 100-token prompt in two chunks (max_batch_tokens 64): 64 unsampled, then 36
    // sampled, after which the budgeted layers come down to 4 pages.
    std::vector<int32_t> got;
    std::vector<int32_t> c0(prompt.begin(), prompt.begin() + kBatch), c1(prompt.begin() + kBatch, prompt.end());
    for (int g = 0; g < 9; g++) {
      StepBuilder b(g + 1);
      if (g == 0) b.add_new(3, c0, /*sample=*/false);
      else if (g == 1) b.add_cont(3, c1);
      else b.add_cont(3, {got.back()});
      if (g == 0) b.news[0]->kv = &kc;
      ASSERT_EQ(ak_rpc_client_unary(cli, "/arkvale.v1.Worker/Step", &b.get()->base,
                                    &arkvale__v1__step_response__descriptor, kMax, 60000, &err, nullptr, &r),
                AK_OK)
          << err.msg;
      auto *sr = (Arkvale__V1__StepResponse *)r;
      ASSERT_EQ(sr->n_samples, g == 0 ? 0u : 1u);
      EXPECT_EQ(sr->has_sampled_on_device, g > 0) << "said only for steps that sampled";
      if (g > 0) got.push_back(sr->samples[0]->token_id);
      if (g == 0) EXPECT_EQ(sr->kv->n_pages_used, 30u * 4);         // 64 tokens: 4 pages a layer
      if (g == 1) EXPECT_EQ(sr->kv->n_pages_used, 2u * 7 + 28u * 4);  // 100 tokens, compacted
      pb_msg_free(r);
    }
    EXPECT_EQ(got, ref);
    ak_rpc_client_destroy(cli);
    wk_service_destroy(svc);  // frees the live sequence too
  }
  EXPECT_EQ(ak_alloc_outstanding_bytes(AK_MEM_HOST), before);
}

// Bad service parameters are refused before any model is loaded, naming the field.
TEST(WkServiceParams, BadParamsAreRefused) {
  int64_t before = ak_alloc_outstanding_bytes(AK_MEM_HOST);
  wk_service_params_t p = wk_service_params_default();
  EXPECT_EQ(p.predecessor_wait_ms, 1000);
  p.predecessor_wait_ms = -1;
  wk_service_t *svc = nullptr;
  ak_err_t err;
  EXPECT_EQ(wk_service_create(&p, &err, &svc), AK_ERR_INVALID_ARG);
  EXPECT_NE(std::string(err.msg).find("predecessor_wait_ms=-1"), std::string::npos) << err.msg;
  p = wk_service_params_default();
  p.n_rpc_threads = 0;
  EXPECT_EQ(wk_service_create(&p, &err, &svc), AK_ERR_INVALID_ARG);
  EXPECT_NE(std::string(err.msg).find("n_rpc_threads=0"), std::string::npos) << err.msg;
  EXPECT_EQ(svc, nullptr);
  EXPECT_EQ(ak_alloc_outstanding_bytes(AK_MEM_HOST), before);
}
