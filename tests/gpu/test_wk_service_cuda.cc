// The Worker service on the CUDA engine (label gpu): rank 0 samples inside the GPU
// step (wk_engine_step_sampled) and only token ids come back; when a sequence's
// repetition-penalty window exceeds what the device takes
// (WK_CUDA_SAMPLE_MAX_HISTORY_IDS) the step falls back to host wk_sampler. Either way a
// greedy decode with a penalty equals the reference: a CUDA engine's logits sampled by
// wk_sampler on the host, step for step as the service batches them. Greedy picks the
// same token on both paths, so which path ran is read from each response
// (StepResponse.sampled_on_device) and counted.
#include <gtest/gtest.h>

#include <string>
#include <vector>

extern "C" {
#include "ak_alloc.h"
#include "kn_cuda.h"
#include "wk_sampler.h"
#include "wk_service.h"
}

#include "wk_service_fixture.h"

using namespace wk_test;

namespace {

const int32_t kCtx = 2048, kCudaBatch = 2048;

wk_engine_params_t cuda_engine_params() {
  wk_engine_params_t p = engine_params();
  p.device = WK_DEVICE_CUDA;
  p.max_seq_tokens = kCtx;
  p.max_batch_tokens = kCudaBatch;
  return p;
}

// The reference: prompt in one step, then one token a step, each step's logits sampled
// by wk_sampler (greedy, the penalty over the last repeat_last_n accepted tokens).
std::vector<int32_t> reference_greedy(const std::vector<int32_t> &prompt, int n_gen, float penalty,
                                      int32_t repeat_last_n) {
  wk_engine_params_t p = cuda_engine_params();
  wk_engine_t *e = nullptr;
  ak_err_t err;
  EXPECT_EQ(wk_engine_create(&p, &err, &e), AK_OK) << err.msg;
  std::vector<int32_t> out;
  if (!e) return out;
  const int32_t nv = wk_model_hparams(wk_engine_model(e))->n_vocab;
  wk_sampler_params_t sp = wk_sampler_params_default();
  sp.temperature = 0.0f;
  sp.repetition_penalty = penalty;
  sp.repeat_last_n = repeat_last_n;
  wk_sampler_t *smp = nullptr;
  EXPECT_EQ(wk_sampler_create(&sp, nv, &err, &smp), AK_OK) << err.msg;
  std::vector<float> logits((size_t)nv);
  kv_seq_id_t s;
  EXPECT_EQ(wk_engine_seq_create(e, &s), AK_OK);
  std::vector<int32_t> feed = prompt;
  for (int g = 0; g < n_gen; g++) {
    int32_t n = (int32_t)feed.size();
    wk_forward_batch_t b = {};
    b.seqs.n_seqs = 1, b.seqs.seqs = &s, b.seqs.n_new_tokens = &n;
    b.tokens = feed.data(), b.logits = logits.data();
    EXPECT_EQ(wk_engine_step(e, &b), AK_OK) << wk_engine_errmsg(e);
    for (int32_t t : feed) EXPECT_EQ(wk_sampler_accept(smp, t), AK_OK);
    int32_t tok = -1;
    EXPECT_EQ(wk_sampler_sample(smp, logits.data(), &tok, nullptr), AK_OK);
    out.push_back(tok);
    feed.assign(1, tok);
  }
  wk_sampler_destroy(smp);
  wk_engine_destroy(e);
  return out;
}

// The Worker-service fixture (its leak check included) over a CUDA engine, warmed up.
class WkServiceCudaGpu : public WkServiceFixture {
 protected:
  void Params(wk_service_params_t *p) override {
    p->engine = cuda_engine_params();
    p->device_idx = 0;
  }
  void SetUp() override {
    int n_dev = 0;
    ak_err_t err;
    ASSERT_EQ(kn_cuda_device_count(&err, &n_dev), AK_OK) << err.msg;
    WkServiceFixture::SetUp();
    if (IsSkipped() || HasFatalFailure()) return;
    MsgPtr keep;
    ASSERT_NE(Warmup(&keep), nullptr);
  }

  // n_gen greedy tokens of one sequence with the penalty, through the service.
  // n_device: how many of the steps said they sampled on the device.
  std::vector<int32_t> serve_greedy(uint64_t seq_id, const std::vector<int32_t> &prompt, int n_gen, float penalty,
                                    uint32_t repeat_last_n, int *n_device) {
    *n_device = 0;
    std::vector<int32_t> got;
    for (int g = 0; g < n_gen; g++) {
      StepBuilder b(++step_id_);
      if (g == 0) {
        b.add_new(seq_id, prompt);
        Arkvale__V1__SamplingParams *sp = b.samplings.back().get();
        sp->has_repeat_penalty = 1, sp->repeat_penalty = penalty;
        sp->has_repeat_last_n = 1, sp->repeat_last_n = repeat_last_n;
        b.news.back()->has_return_logprob = 1, b.news.back()->return_logprob = 1;
      } else {
        b.add_cont(seq_id, {got.back()});
        b.conts.back()->has_return_logprob = 1, b.conts.back()->return_logprob = 1;
      }
      MsgPtr m;
      grpc_status_code code;
      std::string msg;
      auto *r = Step(b, &m, &code, &msg);
      if (!r || r->n_samples != 1) {
        ADD_FAILURE() << "step " << g << ": no sample (" << msg << ")";
        return got;
      }
      got.push_back(r->samples[0]->token_id);
      EXPECT_TRUE(r->has_sampled_on_device) << "step " << g;
      *n_device += r->sampled_on_device ? 1 : 0;
      EXPECT_TRUE(r->samples[0]->has_logprob);
      EXPECT_EQ(r->samples[0]->logprob, 0.0f) << "greedy's logprob";
    }
    return got;
  }
};

}  // namespace

// A penalty window the device takes: every step samples on the device.
TEST_F(WkServiceCudaGpu, GreedyWithPenaltyOnTheDeviceEqualsHostSampler) {
  std::vector<int32_t> prompt = prompt_ids(60, 3);
  int n_device = 0;
  std::vector<int32_t> got = serve_greedy(7, prompt, 12, 1.3f, 64, &n_device);
  EXPECT_EQ(got, reference_greedy(prompt, 12, 1.3f, 64));
  EXPECT_EQ(n_device, 12) << "every step drew its token on the device";
}

// A window of 1100 tokens (> WK_CUDA_SAMPLE_MAX_HISTORY_IDS): the steps fall back to
// the host sampler, which saw every accepted token, and still equal the reference.
TEST_F(WkServiceCudaGpu, LongPenaltyWindowFallsBackToTheHost) {
  std::vector<int32_t> prompt = prompt_ids(1100, 4);
  int n_device = 0;
  std::vector<int32_t> got = serve_greedy(8, prompt, 6, 1.2f, 1500, &n_device);
  EXPECT_EQ(got, reference_greedy(prompt, 6, 1.2f, 1500));
  EXPECT_EQ(n_device, 0) << "a window past the device's caps samples on the host";
}
