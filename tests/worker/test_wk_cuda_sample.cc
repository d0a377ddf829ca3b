// wk_cuda_sample: device-sampling requests, checked and built on the host (no GPU):
// the same parameter rules as wk_sampler, the device's caps as UNSUPPORTED, and the
// penalty window the host sampler would read.
#include <gtest/gtest.h>

#include <cmath>
#include <string>
#include <vector>

extern "C" {
#include "wk_cuda_sample.h"
#include "wk_sampler.h"
}

TEST(WkCudaSample, CheckRefusesBadRequests) {
  const int32_t hist[3] = {1, 2, 3};
  wk_cuda_sample_seq_t seqs[2] = {wk_cuda_sample_seq_greedy(), wk_cuda_sample_seq_greedy()};
  int32_t ids[2];
  wk_cuda_sample_t req{seqs, ids, nullptr};
  ak_err_t err;
  ak_err_clear(&err);
  EXPECT_EQ(wk_cuda_sample_check(&req, 2, 100, &err), AK_OK) << err.msg;
  EXPECT_EQ(wk_cuda_sample_check(nullptr, 2, 100, &err), AK_ERR_INVALID_ARG);
  wk_cuda_sample_t no_ids{seqs, nullptr, nullptr};
  EXPECT_EQ(wk_cuda_sample_check(&no_ids, 2, 100, &err), AK_ERR_INVALID_ARG);
  EXPECT_NE(std::string(err.msg).find("token_ids"), std::string::npos) << err.msg;
  EXPECT_EQ(wk_cuda_sample_check(&req, 2, 0, &err), AK_ERR_INVALID_ARG);
  EXPECT_NE(std::string(err.msg).find("n_vocab=0"), std::string::npos) << err.msg;
  struct Bad {
    void (*make)(wk_cuda_sample_seq_t *);
    const char *msg;
  };
  const Bad bad[] = {
      {[](wk_cuda_sample_seq_t *q) { q->temperature = -1.0f; }, "temperature=-1"},
      {[](wk_cuda_sample_seq_t *q) { q->temperature = NAN; }, "temperature=nan"},
      {[](wk_cuda_sample_seq_t *q) { q->temperature = INFINITY; }, "temperature=inf"},
      {[](wk_cuda_sample_seq_t *q) { q->top_k = -2; }, "top_k=-2"},
      {[](wk_cuda_sample_seq_t *q) { q->top_p = 0.0f; }, "top_p=0"},
      {[](wk_cuda_sample_seq_t *q) { q->top_p = 1.5f; }, "top_p=1.5"},
      {[](wk_cuda_sample_seq_t *q) { q->min_p = 1.0f; }, "min_p=1"},
      {[](wk_cuda_sample_seq_t *q) { q->min_p = -0.5f; }, "min_p=-0.5"},
      {[](wk_cuda_sample_seq_t *q) { q->repetition_penalty = 0.0f; }, "repetition_penalty=0"},
      {[](wk_cuda_sample_seq_t *q) { q->repetition_penalty = NAN; }, "repetition_penalty=nan"},
      {[](wk_cuda_sample_seq_t *q) { q->repetition_penalty = INFINITY; }, "repetition_penalty=inf"},
      {[](wk_cuda_sample_seq_t *q) { q->repetition_penalty = -1.0f; }, "repetition_penalty=-1"},
      {[](wk_cuda_sample_seq_t *q) { q->n_history_ids = -1; }, "n_history_ids=-1"},
      {[](wk_cuda_sample_seq_t *q) { q->n_history_ids = 2; }, "history_ids is NULL"},
  };
  for (const Bad &b : bad) {
    wk_cuda_sample_seq_t q[2] = {wk_cuda_sample_seq_greedy(), wk_cuda_sample_seq_greedy()};
    b.make(&q[1]);
    wk_cuda_sample_t r{q, ids, nullptr};
    EXPECT_EQ(wk_cuda_sample_check(&r, 2, 100, &err), AK_ERR_INVALID_ARG) << b.msg;
    EXPECT_NE(std::string(err.msg).find(b.msg), std::string::npos) << err.msg;
    EXPECT_NE(std::string(err.msg).find("seqs[1]"), std::string::npos) << err.msg;
  }
  // History ids are checked when the penalty reads them.
  const int32_t bad_hist[2] = {5, 100};
  seqs[1].history_ids = bad_hist;
  seqs[1].n_history_ids = 2;
  EXPECT_EQ(wk_cuda_sample_check(&req, 2, 100, &err), AK_OK) << "penalty 1: the history is not read";
  seqs[1].repetition_penalty = 1.2f;
  EXPECT_EQ(wk_cuda_sample_check(&req, 2, 100, &err), AK_ERR_INVALID_ARG);
  EXPECT_NE(std::string(err.msg).find("seqs[1].history_ids[1]=100"), std::string::npos) << err.msg;
  seqs[1].history_ids = hist;
  seqs[1].n_history_ids = 3;
  EXPECT_EQ(wk_cuda_sample_check(&req, 2, 100, &err), AK_OK) << err.msg;
  // Valid requests past the device's caps are UNSUPPORTED (the caller samples on the
  // host), not INVALID_ARG: the penalty's bitmap bounds the vocabulary, the history
  // buffer the window.
  EXPECT_EQ(wk_cuda_sample_check(&req, 2, WK_CUDA_SAMPLE_PENALTY_MAX_VOCAB + 1, &err), AK_ERR_UNSUPPORTED);
  EXPECT_NE(std::string(err.msg).find("not supported on the device"), std::string::npos) << err.msg;
  std::vector<int32_t> long_hist(WK_CUDA_SAMPLE_MAX_HISTORY_IDS + 1, 3);
  seqs[1].history_ids = long_hist.data();
  seqs[1].n_history_ids = WK_CUDA_SAMPLE_MAX_HISTORY_IDS + 1;
  EXPECT_EQ(wk_cuda_sample_check(&req, 2, 100, &err), AK_ERR_UNSUPPORTED);
  EXPECT_NE(std::string(err.msg).find("seqs[1].n_history_ids=" + std::to_string(WK_CUDA_SAMPLE_MAX_HISTORY_IDS + 1)), std::string::npos) << err.msg;
  seqs[1].repetition_penalty = 1.0f; // the window is past the cap whether or not a penalty reads it
  EXPECT_EQ(wk_cuda_sample_check(&req, 2, 100, &err), AK_ERR_UNSUPPORTED);
}

// The device's sampling request mirrors the host sampler: its parameters, the step, and
// the penalty window = history then the step's pending tokens, their last repeat_last_n.
TEST(WkCudaSample, RequestWindowIsHistoryThenPendingTail) {
  wk_sampler_params_t sp = wk_sampler_params_default();
  sp.temperature = 0.7f, sp.top_k = 40, sp.top_p = 0.9f, sp.min_p = 0.05f;
  sp.repetition_penalty = 1.3f, sp.repeat_last_n = 4, sp.seed = 77;
  wk_sampler_t *smp = nullptr;
  ak_err_t err;
  ASSERT_EQ(wk_sampler_create(&sp, 100, &err, &smp), AK_OK) << err.msg;
  for (int32_t id = 1; id <= 6; id++) ASSERT_EQ(wk_sampler_accept(smp, id), AK_OK);
  int32_t window[WK_CUDA_SAMPLE_MAX_HISTORY_IDS];
  wk_cuda_sample_seq_t r;
  auto got = [&] { return std::vector<int32_t>(r.history_ids, r.history_ids + r.n_history_ids); };

  ASSERT_EQ(wk_cuda_sample_request(smp, 100, nullptr, 0, 9, window, &r), 1);
  EXPECT_EQ(got(), (std::vector<int32_t>{3, 4, 5, 6}));
  EXPECT_EQ(r.step, 9u);
  EXPECT_EQ(r.seed, 77u);
  EXPECT_FLOAT_EQ(r.temperature, 0.7f);
  EXPECT_EQ(r.top_k, 40);
  EXPECT_FLOAT_EQ(r.top_p, 0.9f);
  EXPECT_FLOAT_EQ(r.min_p, 0.05f);
  EXPECT_FLOAT_EQ(r.repetition_penalty, 1.3f);

  const int32_t two[] = {7, 8}, five[] = {10, 11, 12, 13, 14};
  ASSERT_EQ(wk_cuda_sample_request(smp, 100, two, 2, 10, window, &r), 1);
  EXPECT_EQ(got(), (std::vector<int32_t>{5, 6, 7, 8}));
  ASSERT_EQ(wk_cuda_sample_request(smp, 100, five, 5, 11, window, &r), 1);
  EXPECT_EQ(got(), (std::vector<int32_t>{11, 12, 13, 14}));
  wk_sampler_destroy(smp);

  // no penalty: no window; a window beyond the device's cap: 0 (the host samples)
  sp.repetition_penalty = 1.0f;
  ASSERT_EQ(wk_sampler_create(&sp, 100, &err, &smp), AK_OK) << err.msg;
  ASSERT_EQ(wk_cuda_sample_request(smp, 100, two, 2, 3, window, &r), 1);
  EXPECT_EQ(r.n_history_ids, 0);
  EXPECT_EQ(r.history_ids, nullptr);
  wk_sampler_destroy(smp);
  sp.repetition_penalty = 1.1f, sp.repeat_last_n = WK_CUDA_SAMPLE_MAX_HISTORY_IDS + 1;
  ASSERT_EQ(wk_sampler_create(&sp, 100, &err, &smp), AK_OK) << err.msg;
  for (int32_t i = 0; i < WK_CUDA_SAMPLE_MAX_HISTORY_IDS; i++) ASSERT_EQ(wk_sampler_accept(smp, i % 100), AK_OK);
  EXPECT_EQ(wk_cuda_sample_request(smp, 100, nullptr, 0, 1, window, &r), 1) << "exactly the cap fits";
  EXPECT_EQ(r.n_history_ids, WK_CUDA_SAMPLE_MAX_HISTORY_IDS);
  EXPECT_EQ(wk_cuda_sample_request(smp, 100, two, 2, 1, window, &r), 0) << "one past the cap";
  wk_sampler_destroy(smp);

  // a window over a vocabulary past the device's penalty bitmap: 0; without a window the
  // vocabulary does not matter
  const int64_t big_vocab = (int64_t)WK_CUDA_SAMPLE_PENALTY_MAX_VOCAB + 1;
  sp.repeat_last_n = 4;
  ASSERT_EQ(wk_sampler_create(&sp, big_vocab, &err, &smp), AK_OK) << err.msg;
  EXPECT_EQ(wk_cuda_sample_request(smp, big_vocab, nullptr, 0, 1, window, &r), 1) << "an empty window";
  ASSERT_EQ(wk_sampler_accept(smp, 5), AK_OK);
  EXPECT_EQ(wk_cuda_sample_request(smp, big_vocab, nullptr, 0, 2, window, &r), 0) << "a window, vocab past the cap";
  EXPECT_EQ(wk_cuda_sample_request(smp, WK_CUDA_SAMPLE_PENALTY_MAX_VOCAB, nullptr, 0, 2, window, &r), 1)
      << "a window, vocab at the cap";
  wk_sampler_destroy(smp);
}
