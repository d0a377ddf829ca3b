// Tests for pipelined decode in worker/wk_service_step.c and wk_service.c:
// ContinuingSequence.feed_sampled_at_step_id (worker.proto). Greedy tokens fed from
// the worker's own samples equal the explicit-token path and the in-process engine's,
// also with Step k+1 queued while Step k runs and with the two arriving swapped; each
// wrong use is FAILED_PRECONDITION or INVALID_ARGUMENT naming the sequence and the
// field, and changes nothing. The accounted allocator checks that nothing leaked.
#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
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

class WkFeedTest : public WkServiceFixture {
 protected:
  void WaitQueued(int n) {
    for (int i = 0; i < 5000 && wk_service_queue_depth(svc_) < n; i++)
      std::this_thread::sleep_for(std::chrono::milliseconds(1));
    ASSERT_EQ(wk_service_queue_depth(svc_), n);
  }

  // Step 5 of SwappedArrivalRunsInStepOrder reaches an idle engine before Step 4: a wait
  // far longer than the 20 ms between them keeps a loaded test machine from turning it
  // into a FAILED_PRECONDITION (the default 100 ms is the service's own).
  void Params(wk_service_params_t *p) override { p->predecessor_wait_ms = 5000; }

  // Sends Step `later` 20 ms before Step `earlier` to an idle engine; both must answer,
  // sampling the tokens given (their first sample).
  void SendSwapped(StepBuilder &earlier, StepBuilder &later, int32_t want_earlier, int32_t want_later) {
    MsgPtr me, ml;
    std::string ee, el;
    std::thread tl([&] { Step(later, &ml, nullptr, &el); });
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
    std::thread te([&] { Step(earlier, &me, nullptr, &ee); });
    te.join(), tl.join();
    ASSERT_NE(me.get(), nullptr) << ee;
    ASSERT_NE(ml.get(), nullptr) << el;
    EXPECT_EQ(((const Arkvale__V1__StepResponse *)me.get())->samples[0]->token_id, want_earlier);
    EXPECT_EQ(((const Arkvale__V1__StepResponse *)ml.get())->samples[0]->token_id, want_later);
  }

  void SetUp() override {
    WkServiceFixture::SetUp();
    if (IsSkipped() || HasFatalFailure()) return;
    MsgPtr w;
    ASSERT_NE(Warmup(&w), nullptr);
  }

  uint32_t NSeqs() {
    Arkvale__V1__HealthRequest q = ARKVALE__V1__HEALTH_REQUEST__INIT;
    MsgPtr h;
    EXPECT_EQ(Call("Health", &q.base, &arkvale__v1__health_response__descriptor, &h),
              AK_OK);
    return h ? ((const Arkvale__V1__HealthResponse *)h.get())->n_seqs : 0;
  }
  uint64_t ReleaseAll() {
    Arkvale__V1__ReleaseRequest q = ARKVALE__V1__RELEASE_REQUEST__INIT;
    q.has_all = 1, q.all = 1;
    MsgPtr r;
    EXPECT_EQ(Call("Release", &q.base, &arkvale__v1__release_response__descriptor, &r),
              AK_OK);
    return r ? ((const Arkvale__V1__ReleaseResponse *)r.get())->kv->n_pages_used : ~0ull;
  }
  void ExpectRefused(StepBuilder &b, grpc_status_code want, const std::vector<std::string> &needles) {
    MsgPtr r;
    grpc_status_code code = GRPC_STATUS_OK;
    std::string msg;
    Step(b, &r, &code, &msg);
    EXPECT_EQ(code, want) << msg;
    for (auto &n : needles) EXPECT_NE(msg.find(n), std::string::npos) << "'" << n << "' not in: " << msg;
  }
};

}  // namespace

// Two sequences: one fed by the worker, one with explicit tokens, step by step; both
// equal the engine's greedy tokens (so the fed path equals the explicit one).
TEST_F(WkFeedTest, FedTokensEqualExplicitTokens) {
  std::vector<int32_t> pa = prompt_ids(20, 2), pb = prompt_ids(33, 3);
  std::vector<int32_t> ra, rb;
  engine_greedy_pair(pa, pb, 10, &ra, &rb);
  std::vector<int32_t> ga, gb;
  for (int g = 0; g < 10; g++) {
    StepBuilder b(++step_id_);
    if (g == 0) b.add_new(7, pa).add_new(9, pb);
    else b.add_fed(7, step_id_ - 1).add_cont(9, {gb.back()});
    MsgPtr m;
    std::string msg;
    auto *r = Step(b, &m, nullptr, &msg);
    ASSERT_NE(r, nullptr) << msg;
    ASSERT_EQ(r->n_samples, 2u);
    for (size_t i = 0; i < 2; i++) (r->samples[i]->seq_id == 7 ? ga : gb).push_back(r->samples[i]->token_id);
    EXPECT_EQ(r->timings->n_tokens, g == 0 ? 53u : 2u);
  }
  EXPECT_EQ(ga, ra);
  EXPECT_EQ(gb, rb);
  EXPECT_EQ(ReleaseAll(), 0u);
}

// Pipelined: Steps 2 and 3 (each fed from the one before) are queued while Step 1 is
// held in the engine thread, as the coordinator sends them; the tokens equal the
// engine's.
TEST_F(WkFeedTest, StepsQueuedBehindTheStepTheyFeedFrom) {
  std::vector<int32_t> p = prompt_ids(24, 5);
  std::vector<int32_t> ref = engine_greedy(p, 3);
  StepBuilder b1(++step_id_), b2(++step_id_), b3(++step_id_);
  b1.add_new(3, p);
  b2.add_fed(3, 1);
  b3.add_fed(3, 2);
  Hold(true);
  int started0 = jobs_started_.load();
  MsgPtr m1, m2, m3;
  std::string e1, e2, e3;
  std::thread t1([&] { Step(b1, &m1, nullptr, &e1); });
  {
    std::unique_lock<std::mutex> g(mu_);
    ASSERT_TRUE(cv_.wait_for(g, std::chrono::seconds(30), [&] { return jobs_started_ > started0; }));
  }
  std::thread t2([&] { Step(b2, &m2, nullptr, &e2); });
  WaitQueued(1);
  std::thread t3([&] { Step(b3, &m3, nullptr, &e3); });
  WaitQueued(2);
  Hold(false);
  t1.join(), t2.join(), t3.join();
  const MsgPtr *ms[3] = {&m1, &m2, &m3};
  const std::string *es[3] = {&e1, &e2, &e3};
  for (int k = 0; k < 3; k++) {
    auto *r = (const Arkvale__V1__StepResponse *)ms[k]->get();
    ASSERT_NE(r, nullptr) << *es[k];
    ASSERT_EQ(r->n_samples, 1u);
    EXPECT_EQ(r->samples[0]->token_id, ref[k]) << "step " << k + 1;
  }
  EXPECT_EQ(ReleaseAll(), 0u);
}

// Step 3 (fed from 2) reaches the queue before Step 2: it goes behind it, both while
// the engine is busy and while it is idle (Step 3 waits a little for its predecessor).
TEST_F(WkFeedTest, SwappedArrivalRunsInStepOrder) {
  std::vector<int32_t> p = prompt_ids(18, 6);
  std::vector<int32_t> ref = engine_greedy(p, 5);
  StepBuilder b1(++step_id_);
  b1.add_new(4, p);
  MsgPtr m1;
  ASSERT_NE(Step(b1, &m1), nullptr);
  {  // engine busy with another job (a Release) while both arrive
    Hold(true);
    int started0 = jobs_started_.load();
    std::thread tr([&] {
      Arkvale__V1__ReleaseRequest q = ARKVALE__V1__RELEASE_REQUEST__INIT;
      uint64_t none = 999;
      q.n_seq_ids = 1, q.seq_ids = &none;
      MsgPtr r;
      Call("Release", &q.base, &arkvale__v1__release_response__descriptor, &r);
    });
    {
      std::unique_lock<std::mutex> g(mu_);
      ASSERT_TRUE(cv_.wait_for(g, std::chrono::seconds(30), [&] { return jobs_started_ > started0; }));
    }
    StepBuilder b2(2), b3(3);
    b2.add_fed(4, 1);
    b3.add_fed(4, 2);
    MsgPtr m2, m3;
    std::string e2, e3;
    std::thread t3([&] { Step(b3, &m3, nullptr, &e3); });
    WaitQueued(1);
    std::thread t2([&] { Step(b2, &m2, nullptr, &e2); });
    WaitQueued(2);
    Hold(false);
    tr.join(), t2.join(), t3.join();
    ASSERT_NE(m2.get(), nullptr) << e2;
    ASSERT_NE(m3.get(), nullptr) << e3;
    EXPECT_EQ(((const Arkvale__V1__StepResponse *)m2.get())->samples[0]->token_id, ref[1]);
    EXPECT_EQ(((const Arkvale__V1__StepResponse *)m3.get())->samples[0]->token_id, ref[2]);
  }
  {  // engine idle: Step 5 arrives 20 ms before Step 4
    StepBuilder b4(4), b5(5);
    b4.add_fed(4, 3);
    b5.add_fed(4, 4);
    ASSERT_NO_FATAL_FAILURE(SendSwapped(b4, b5, ref[3], ref[4]));
  }
  EXPECT_EQ(ReleaseAll(), 0u);
}

// A Step that feeds nothing from its predecessor (new sequences, explicit tokens) but
// names it in previous_step_id waits for it too: Step 3 reaches an idle engine 20 ms
// before Step 2 and both run, in step order (without the field Step 3 ran at once and
// Step 2 was refused as not above the last step_id: the coordinator's pipelined decode
// when one request ends and the next one's prefill follows).
TEST_F(WkFeedTest, PreviousStepIdOrdersStepsThatFeedNothing) {
  std::vector<int32_t> p = prompt_ids(18, 6), p2 = prompt_ids(11, 3);
  std::vector<int32_t> ref = engine_greedy(p, 2), ref2 = engine_greedy(p2, 1);
  StepBuilder b1(1);
  b1.add_new(4, p);
  MsgPtr m1;
  ASSERT_NE(Step(b1, &m1), nullptr);
  ASSERT_EQ(((const Arkvale__V1__StepResponse *)m1.get())->samples[0]->token_id, ref[0]);
  StepBuilder b2(2), b3(3);
  b2.add_cont(4, {ref[0]});
  b2.req.has_previous_step_id = 1, b2.req.previous_step_id = 1;
  b3.add_new(5, p2);  // feeds nothing from Step 2
  b3.req.has_previous_step_id = 1, b3.req.previous_step_id = 2;
  ASSERT_NO_FATAL_FAILURE(SendSwapped(b2, b3, ref[1], ref2[0]));
  EXPECT_EQ(ReleaseAll(), 0u);
}

// Each wrong use of feed_sampled_at_step_id is refused, names the sequence and the
// field, and changes nothing: the sequence still steps with the right token.
TEST_F(WkFeedTest, WrongFeedsAreRefused) {
  std::vector<int32_t> p = prompt_ids(16, 8);
  std::vector<int32_t> ref = engine_greedy(p, 3);
  {  // a prompt chunk that did not sample: nothing to feed
    StepBuilder b(++step_id_);
    b.add_new(7, std::vector<int32_t>(p.begin(), p.begin() + 8), false);
    MsgPtr m;
    ASSERT_NE(Step(b, &m), nullptr);
    StepBuilder c(++step_id_);
    c.add_fed(7, step_id_ - 1);
    ExpectRefused(c, GRPC_STATUS_FAILED_PRECONDITION, {"seq 7", "feed_sampled_at_step_id", "no sampled token"});
    StepBuilder d(++step_id_);
    d.add_cont(7, std::vector<int32_t>(p.begin() + 8, p.end()));
    MsgPtr md;
    auto *r = Step(d, &md);
    ASSERT_NE(r, nullptr);
    EXPECT_EQ(r->samples[0]->token_id, ref[0]);
  }
  const uint64_t sampled_at = step_id_;
  {  // the wrong step named
    StepBuilder b(++step_id_);
    b.add_fed(7, sampled_at - 1);
    ExpectRefused(b, GRPC_STATUS_FAILED_PRECONDITION, {"seq 7", "feed_sampled_at_step_id", "step " +
                                                       std::to_string(sampled_at)});
  }
  {  // token_ids as well
    StepBuilder b(++step_id_);
    b.add_fed(7, sampled_at);
    b.conts.back()->n_token_ids = 1, b.conts.back()->token_ids = b.keep({ref[0]});
    ExpectRefused(b, GRPC_STATUS_INVALID_ARGUMENT, {"seq_id 7", "feed_sampled_at_step_id", "both set"});
  }
  {  // an unknown sequence
    StepBuilder b(++step_id_);
    b.add_fed(8, sampled_at);
    ExpectRefused(b, GRPC_STATUS_NOT_FOUND, {"seq_id 8"});
  }
  {  // a failed Step (a bad token for another sequence) appends nothing: the sample is
     // still pending, then fed once; feeding it a second time is refused
    StepBuilder b(++step_id_);
    b.add_new(9, {49152});
    b.add_fed(7, sampled_at);
    ExpectRefused(b, GRPC_STATUS_INVALID_ARGUMENT, {"outside"});
    StepBuilder c(++step_id_);
    c.add_fed(7, sampled_at);
    MsgPtr m;
    auto *r = Step(c, &m);
    ASSERT_NE(r, nullptr);
    EXPECT_EQ(r->samples[0]->token_id, ref[1]);
    EXPECT_EQ(r->timings->n_tokens, 1u);
    StepBuilder d(++step_id_);
    d.add_fed(7, sampled_at);
    ExpectRefused(d, GRPC_STATUS_FAILED_PRECONDITION, {"seq 7", "pending sample: step " +
                                                       std::to_string(step_id_ - 1)});
  }
  {  // a Step that feeds the sample but does not sample: nothing is pending after it
    StepBuilder b(++step_id_);
    b.add_fed(7, step_id_ - 2, false);
    MsgPtr m;
    auto *r = Step(b, &m);
    ASSERT_NE(r, nullptr);
    EXPECT_EQ(r->n_samples, 0u);
    StepBuilder c(++step_id_);
    c.add_fed(7, step_id_ - 1);
    ExpectRefused(c, GRPC_STATUS_FAILED_PRECONDITION, {"seq 7", "pending sample: none"});
  }
  EXPECT_EQ(NSeqs(), 1u);
  EXPECT_EQ(ReleaseAll(), 0u);
}
