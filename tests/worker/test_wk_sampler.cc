// Tests for worker/wk_sampler.c: greedy and its ties, determinism, the empirical
// distribution against the exact softmax, each filter's support on crafted rows, the
// repetition penalty, logprobs against a hand computation and against a brute-force
// reference at a 49k vocabulary, bad parameters one class at a time, NaN rows, leaks.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <map>
#include <memory>
#include <numeric>
#include <random>
#include <set>
#include <string>
#include <vector>

extern "C" {
#include "ak_alloc.h"
#include "ak_status.h"
#include "wk_sampler.h"
}

namespace {

struct SamplerDeleter {
  void operator()(wk_sampler_t *s) const { wk_sampler_destroy(s); }
};
using SamplerPtr = std::unique_ptr<wk_sampler_t, SamplerDeleter>;

SamplerPtr make_sampler(const wk_sampler_params_t &p, int64_t n_vocab) {
  wk_sampler_t *s = nullptr;
  ak_err_t err{};
  ak_status_t st = wk_sampler_create(&p, n_vocab, &err, &s);
  EXPECT_EQ(st, AK_OK) << err.msg;
  return SamplerPtr(s);
}

int32_t sample_one(wk_sampler_t *s, const std::vector<float> &logits, float *logprob = nullptr) {
  int32_t tok = -1;
  EXPECT_EQ(wk_sampler_sample(s, logits.data(), &tok, logprob), AK_OK) << wk_sampler_last_error(s);
  return tok;
}

std::vector<int64_t> histogram(wk_sampler_t *s, const std::vector<float> &logits, int n_draws) {
  std::vector<int64_t> counts(logits.size(), 0);
  for (int i = 0; i < n_draws; i++) counts[sample_one(s, logits)]++;
  return counts;
}

std::vector<double> softmax(const std::vector<float> &logits, double temperature) {
  double mx = -INFINITY;
  for (float v : logits) mx = std::max(mx, (double)v);
  std::vector<double> p(logits.size());
  double z = 0;
  for (size_t i = 0; i < logits.size(); i++) z += (p[i] = std::exp((logits[i] - mx) / temperature));
  for (double &v : p) v /= z;
  return p;
}

// Each bin within 4 sigma of its binomial expectation, and Pearson's chi-square below
// a bound far in the tail (df + 6 sqrt(2 df)) so a wrong distribution cannot hide in
// many small per-bin deviations.
void expect_matches(const std::vector<int64_t> &counts, const std::vector<double> &probs, int n_draws) {
  double chi2 = 0;
  int df = -1;
  for (size_t i = 0; i < probs.size(); i++) {
    double expect = n_draws * probs[i];
    if (probs[i] == 0) {
      EXPECT_EQ(counts[i], 0) << "token " << i << " has probability 0";
      continue;
    }
    double sigma = std::sqrt(n_draws * probs[i] * (1 - probs[i]));
    EXPECT_NEAR((double)counts[i], expect, 4 * sigma + 1) << "token " << i;
    chi2 += (counts[i] - expect) * (counts[i] - expect) / expect;
    df++;
  }
  if (df > 0) EXPECT_LT(chi2, df + 6 * std::sqrt(2.0 * df)) << "chi-square over " << df << " dof";
}

std::set<int32_t> support(const std::vector<int64_t> &counts) {
  std::set<int32_t> s;
  for (size_t i = 0; i < counts.size(); i++)
    if (counts[i] > 0) s.insert((int32_t)i);
  return s;
}

wk_sampler_params_t params_with_temperature(float t) {
  wk_sampler_params_t p = wk_sampler_params_default();
  p.temperature = t;
  return p;
}

// Logits whose softmax is `probs`, token ids shuffled so id order and probability
// order disagree (the sampler must sort, not rely on the layout).
std::vector<float> logits_of(const std::vector<double> &probs) {
  std::vector<float> l;
  for (double p : probs) l.push_back(p > 0 ? (float)std::log(p) : -INFINITY);
  return l;
}

}  // namespace

TEST(WkSampler, DefaultsAreTheDocumentedOnes) {
  wk_sampler_params_t p = wk_sampler_params_default();
  EXPECT_EQ(p.temperature, 1.0f);
  EXPECT_EQ(p.top_k, 0);
  EXPECT_EQ(p.top_p, 1.0f);
  EXPECT_EQ(p.min_p, 0.0f);
  EXPECT_EQ(p.repetition_penalty, 1.0f);
  EXPECT_EQ(p.repeat_last_n, 64);
}

TEST(WkSampler, GreedyPicksArgmaxLowestIndexOnTies) {
  auto s = make_sampler(params_with_temperature(0), 6);
  float lp = -1;
  EXPECT_EQ(sample_one(s.get(), {0.1f, 3.0f, -2.0f, 2.9f, 0.0f, 1.0f}, &lp), 1);
  EXPECT_EQ(lp, 0.0f);  // greedy's final distribution is a point mass
  EXPECT_EQ(sample_one(s.get(), {0.1f, 3.0f, -2.0f, 3.0f, 0.0f, 3.0f}), 1);
  EXPECT_EQ(sample_one(s.get(), {5.0f, 5.0f, 5.0f, 5.0f, 5.0f, 5.0f}), 0);
  EXPECT_EQ(sample_one(s.get(), {-INFINITY, -7.0f, -7.0f, -9.0f, -INFINITY, -8.0f}), 1);
  // Always the same answer: greedy does not consume randomness.
  for (int i = 0; i < 50; i++) EXPECT_EQ(sample_one(s.get(), {0.0f, 0.0f, 0.5f, 0.5f, 0.0f, 0.0f}), 2);
}

TEST(WkSampler, DoesNotModifyCallerLogits) {
  wk_sampler_params_t p = wk_sampler_params_default();
  p.top_k = 3;
  p.top_p = 0.7f;
  p.repetition_penalty = 1.3f;
  auto s = make_sampler(p, 8);
  ASSERT_EQ(wk_sampler_accept(s.get(), 2), AK_OK);
  std::vector<float> logits = {0.3f, NAN, 2.0f, -1.0f, INFINITY, 0.0f, 1.5f, -INFINITY};
  std::vector<float> copy = logits;
  for (int i = 0; i < 20; i++) sample_one(s.get(), logits);
  ASSERT_EQ(std::memcmp(logits.data(), copy.data(), logits.size() * sizeof(float)), 0);
}

TEST(WkSampler, SameSeedSameSequenceDifferentSeedDiffers) {
  std::mt19937 gen(7);
  std::normal_distribution<float> nd(0, 2);
  std::vector<std::vector<float>> rows(200, std::vector<float>(1000));
  for (auto &r : rows)
    for (float &v : r) v = nd(gen);

  auto run = [&](uint64_t seed) {
    wk_sampler_params_t p = wk_sampler_params_default();
    p.seed = seed;
    p.top_p = 0.95f;
    auto s = make_sampler(p, 1000);
    std::vector<int32_t> toks;
    for (auto &r : rows) toks.push_back(sample_one(s.get(), r));
    return toks;
  };
  std::vector<int32_t> a = run(42), b = run(42), c = run(43);
  EXPECT_EQ(a, b);
  EXPECT_NE(a, c);
  int n_same = 0;
  for (size_t i = 0; i < a.size(); i++) n_same += a[i] == c[i];
  EXPECT_LT(n_same, 100) << "different seeds should mostly disagree on a flat-ish row";
}

TEST(WkSampler, ResetReplaysTheSequence) {
  wk_sampler_params_t p = wk_sampler_params_default();
  p.seed = 99;
  p.repetition_penalty = 2.0f;
  auto s = make_sampler(p, 5);
  std::vector<float> logits = {1.0f, 0.9f, 0.8f, 0.7f, 0.6f};
  auto run = [&]() {
    std::vector<int32_t> toks;
    for (int i = 0; i < 100; i++) {
      int32_t t = sample_one(s.get(), logits);
      EXPECT_EQ(wk_sampler_accept(s.get(), t), AK_OK);
      toks.push_back(t);
    }
    return toks;
  };
  std::vector<int32_t> first = run();
  wk_sampler_reset(s.get());
  EXPECT_EQ(run(), first);
}

TEST(WkSampler, EmpiricalFrequenciesMatchSoftmax) {
  const int n_draws = 200000;
  std::vector<float> logits = {1.0f, 2.0f, 0.5f, -1.0f, 1.5f, 0.0f};
  auto s = make_sampler(params_with_temperature(1.0f), (int64_t)logits.size());
  expect_matches(histogram(s.get(), logits, n_draws), softmax(logits, 1.0), n_draws);
}

TEST(WkSampler, TemperatureScalesTheDistribution) {
  const int n_draws = 100000;
  std::vector<float> logits = {1.0f, 0.5f, 0.0f, -0.5f};
  for (float t : {0.5f, 2.0f, 5.0f}) {
    auto s = make_sampler(params_with_temperature(t), 4);
    SCOPED_TRACE("temperature " + std::to_string(t));
    expect_matches(histogram(s.get(), logits, n_draws), softmax(logits, t), n_draws);
  }
  // Low temperature concentrates on the argmax; high temperature flattens.
  auto cold = make_sampler(params_with_temperature(0.05f), 4);
  auto hot = make_sampler(params_with_temperature(50.0f), 4);
  std::vector<int64_t> c = histogram(cold.get(), logits, 10000);
  std::vector<int64_t> h = histogram(hot.get(), logits, 10000);
  EXPECT_GT(c[0], 9990);
  for (int64_t v : h) EXPECT_GT(v, 2200);
}

TEST(WkSampler, TopKOneEqualsGreedy) {
  std::mt19937 gen(3);
  std::normal_distribution<float> nd(0, 1);
  wk_sampler_params_t p = wk_sampler_params_default();
  p.top_k = 1;
  p.seed = 5;
  auto topk = make_sampler(p, 500);
  auto greedy = make_sampler(params_with_temperature(0), 500);
  std::vector<float> row(500);
  for (int rep = 0; rep < 100; rep++) {
    for (float &v : row) v = nd(gen);
    if (rep % 10 == 0) row[17] = row[400] = 9.0f;  // a tie: both pick the lower id
    float lp = 1;
    int32_t t = sample_one(topk.get(), row, &lp);
    EXPECT_EQ(t, sample_one(greedy.get(), row));
    EXPECT_FLOAT_EQ(lp, 0.0f);
  }
}

TEST(WkSampler, TopKRestrictsSupportExactly) {
  // 1000 tokens, the 5 best scattered through the row and close in value, so each
  // is drawn often and the 6th best (also close) would show up if k leaked.
  std::vector<float> logits(1000, -3.0f);
  const std::vector<int32_t> best = {903, 12, 500, 77, 640};
  for (size_t i = 0; i < best.size(); i++) logits[best[i]] = 1.0f - 0.1f * (float)i;
  logits[300] = 0.5f;
  wk_sampler_params_t p = wk_sampler_params_default();
  p.top_k = 5;
  auto s = make_sampler(p, 1000);
  const int n_draws = 50000;
  std::vector<int64_t> counts = histogram(s.get(), logits, n_draws);
  EXPECT_EQ(support(counts), std::set<int32_t>(best.begin(), best.end()));
  std::vector<float> top(best.size());
  for (size_t i = 0; i < best.size(); i++) top[i] = logits[best[i]];
  std::vector<double> pk = softmax(top, 1.0), full(1000, 0.0);
  for (size_t i = 0; i < best.size(); i++) full[best[i]] = pk[i];
  expect_matches(counts, full, n_draws);
}

TEST(WkSampler, TopKTiesKeepLowestIds) {
  wk_sampler_params_t p = wk_sampler_params_default();
  p.top_k = 3;
  auto s = make_sampler(p, 10);
  std::vector<float> flat(10, 0.0f);
  EXPECT_EQ(support(histogram(s.get(), flat, 3000)), (std::set<int32_t>{0, 1, 2}));
}

TEST(WkSampler, TopPKeepsSmallestPrefixReachingMass) {
  // Probabilities 0.5, 0.3, 0.15, 0.05 on ids 2, 0, 3, 1.
  std::vector<float> logits = logits_of({0.3, 0.05, 0.5, 0.15});
  struct Case {
    float top_p;
    std::set<int32_t> support;
  } cases[] = {
      {0.4f, {2}}, {0.49f, {2}}, {0.6f, {2, 0}}, {0.79f, {2, 0}}, {0.81f, {2, 0, 3}}, {0.94f, {2, 0, 3}},
      {0.96f, {2, 0, 3, 1}},
  };
  for (const Case &c : cases) {
    wk_sampler_params_t p = wk_sampler_params_default();
    p.top_p = c.top_p;
    auto s = make_sampler(p, 4);
    SCOPED_TRACE("top_p " + std::to_string(c.top_p));
    std::vector<int64_t> counts = histogram(s.get(), logits, 20000);
    EXPECT_EQ(support(counts), c.support);
    // Renormalised over the kept prefix.
    std::vector<double> probs = {0.3, 0.05, 0.5, 0.15}, kept(4, 0.0);
    double z = 0;
    for (int32_t id : c.support) z += probs[id];
    for (int32_t id : c.support) kept[id] = probs[id] / z;
    expect_matches(counts, kept, 20000);
  }
}

TEST(WkSampler, TopPCutIsExactOnAFlatRow) {
  // 1024 equal logits: the candidate order is the id order and every kept token has
  // probability 1 / n_kept, so each draw's logprob reveals the size of the cut and its
  // id shows the cut is a prefix. top_p = (cut - 0.5) / 1024 needs exactly `cut` tokens.
  // 513 puts the crossing token on the first partition's pivot (the middle id, 512).
  const int64_t n_vocab = 1024;
  std::vector<float> flat(n_vocab, 0.25f);
  for (int64_t cut : {1, 2, 31, 32, 33, 100, 511, 512, 513, 514, 700, 1023, 1024}) {
    wk_sampler_params_t p = wk_sampler_params_default();
    p.top_p = (float)(((double)cut - 0.5) / (double)n_vocab);
    auto s = make_sampler(p, n_vocab);
    SCOPED_TRACE("cut " + std::to_string(cut));
    int32_t max_id = -1;
    for (int i = 0; i < 300; i++) {
      float lp = 0;
      int32_t t = sample_one(s.get(), flat, &lp);
      ASSERT_LT(t, cut);
      max_id = std::max(max_id, t);
      ASSERT_NEAR(lp, -std::log((double)cut), 1e-5);
    }
    if (cut <= 100) EXPECT_EQ(max_id, cut - 1) << "the last token of the cut is reachable";
  }
}

TEST(WkSampler, MinPDropsTokensBelowFractionOfBest) {
  std::vector<float> logits = logits_of({0.3, 0.05, 0.5, 0.15});
  struct Case {
    float min_p;
    std::set<int32_t> support;
  } cases[] = {{0.05f, {0, 1, 2, 3}}, {0.25f, {0, 2, 3}}, {0.35f, {0, 2}}, {0.65f, {2}}};
  for (const Case &c : cases) {
    wk_sampler_params_t p = wk_sampler_params_default();
    p.min_p = c.min_p;
    auto s = make_sampler(p, 4);
    SCOPED_TRACE("min_p " + std::to_string(c.min_p));
    EXPECT_EQ(support(histogram(s.get(), logits, 20000)), c.support);
  }
}

TEST(WkSampler, TopPIsMeasuredBeforeMinP) {
  // Probabilities 0.5, 0.3, 0.15, 0.05 on ids 2, 0, 3, 1. top_p 0.82 over the whole
  // distribution needs 0.5 + 0.3 + 0.15, so {2, 0, 3}; min_p 0.2 keeps the same three.
  // Had min-p run first and renormalised, 0.5 and 0.3 would weigh 0.84 of what is left
  // and top-p would stop at {2, 0}.
  std::vector<float> logits = logits_of({0.3, 0.05, 0.5, 0.15});
  wk_sampler_params_t p = wk_sampler_params_default();
  p.top_p = 0.82f;
  p.min_p = 0.2f;
  auto s = make_sampler(p, 4);
  EXPECT_EQ(support(histogram(s.get(), logits, 20000)), (std::set<int32_t>{0, 2, 3}));
  // And min-p still cuts after top-p: 0.4 keeps p >= 0.2, so {2, 0}.
  p.min_p = 0.4f;
  auto s2 = make_sampler(p, 4);
  EXPECT_EQ(support(histogram(s2.get(), logits, 20000)), (std::set<int32_t>{0, 2}));
}

TEST(WkSampler, RepetitionPenaltyChangesArgmax) {
  wk_sampler_params_t p = params_with_temperature(0);
  p.repetition_penalty = 1.5f;
  auto s = make_sampler(p, 4);
  // Positive logit divided: 1.0 / 1.5 = 0.667 < 0.9.
  EXPECT_EQ(sample_one(s.get(), {1.0f, 0.9f, 0.0f, 0.0f}), 0);
  ASSERT_EQ(wk_sampler_accept(s.get(), 0), AK_OK);
  EXPECT_EQ(sample_one(s.get(), {1.0f, 0.9f, 0.0f, 0.0f}), 1);
  // Negative logit multiplied: -1.0 * 1.5 = -1.5 < -1.2.
  EXPECT_EQ(sample_one(s.get(), {-1.0f, -9.0f, -1.2f, -9.0f}), 2);
  // A token seen twice is penalised once: 1.0 / 1.5 = 0.667 > 0.5 (twice would be 0.444).
  ASSERT_EQ(wk_sampler_accept(s.get(), 0), AK_OK);
  EXPECT_EQ(sample_one(s.get(), {1.0f, 0.5f, 0.0f, 0.0f}), 0);
}

TEST(WkSampler, RepetitionPenaltyWindowIsLastN) {
  wk_sampler_params_t p = params_with_temperature(0);
  p.repetition_penalty = 2.0f;
  p.repeat_last_n = 3;
  auto s = make_sampler(p, 4);
  std::vector<float> logits = {1.0f, 0.8f, -5.0f, -5.0f};
  ASSERT_EQ(wk_sampler_accept(s.get(), 0), AK_OK);
  EXPECT_EQ(sample_one(s.get(), logits), 1);
  for (int i = 0; i < 2; i++) ASSERT_EQ(wk_sampler_accept(s.get(), 3), AK_OK);
  EXPECT_EQ(sample_one(s.get(), logits), 1);  // 0 is still among the last 3
  ASSERT_EQ(wk_sampler_accept(s.get(), 3), AK_OK);
  EXPECT_EQ(sample_one(s.get(), logits), 0);  // 0 slid out of the window
  ASSERT_EQ(wk_sampler_accept(s.get(), 0), AK_OK);
  EXPECT_EQ(sample_one(s.get(), logits), 1);
  wk_sampler_reset(s.get());
  EXPECT_EQ(sample_one(s.get(), logits), 0);  // reset cleared the history

  p.repeat_last_n = 0;  // no history: the penalty never applies
  auto off = make_sampler(p, 4);
  ASSERT_EQ(wk_sampler_accept(off.get(), 0), AK_OK);
  EXPECT_EQ(sample_one(off.get(), logits), 0);
}

// wk_sampler_history hands out the penalty's window oldest first (what device sampling
// uploads), across the ring's wrap, clipped to the caller's capacity.
TEST(WkSampler, HistoryIsTheWindowOldestFirst) {
  wk_sampler_params_t p = params_with_temperature(0);
  p.repetition_penalty = 1.5f;
  p.repeat_last_n = 4;
  auto s = make_sampler(p, 100);
  EXPECT_EQ(wk_sampler_params(s.get())->repeat_last_n, 4);
  int32_t ids[8] = {-1, -1, -1, -1, -1, -1, -1, -1};
  EXPECT_EQ(wk_sampler_history(s.get(), ids, 8), 0);
  for (int32_t t : {10, 11, 12}) ASSERT_EQ(wk_sampler_accept(s.get(), t), AK_OK);
  ASSERT_EQ(wk_sampler_history(s.get(), ids, 8), 3);
  EXPECT_EQ(std::vector<int32_t>(ids, ids + 3), (std::vector<int32_t>{10, 11, 12}));
  for (int32_t t : {13, 14, 15}) ASSERT_EQ(wk_sampler_accept(s.get(), t), AK_OK);  // wraps
  ASSERT_EQ(wk_sampler_history(s.get(), ids, 8), 4);
  EXPECT_EQ(std::vector<int32_t>(ids, ids + 4), (std::vector<int32_t>{12, 13, 14, 15}));
  ASSERT_EQ(wk_sampler_history(s.get(), ids, 2), 4) << "returns how many it holds";
  EXPECT_EQ(std::vector<int32_t>(ids, ids + 2), (std::vector<int32_t>{14, 15})) << "the most recent fit";
  EXPECT_EQ(wk_sampler_history(s.get(), ids, 0), 4);
  p.repetition_penalty = 1.0f;  // the penalty off records nothing
  auto off = make_sampler(p, 100);
  ASSERT_EQ(wk_sampler_accept(off.get(), 7), AK_OK);
  EXPECT_EQ(wk_sampler_history(off.get(), ids, 8), 0);
}

TEST(WkSampler, LogprobMatchesHandComputation) {
  // logits {2, 1, 0, -1}, T = 2, top_k = 3: the final distribution is the softmax of
  // {1, 0.5, 0} over ids {0, 1, 2}; id 3 is out.
  wk_sampler_params_t p = params_with_temperature(2.0f);
  p.top_k = 3;
  auto s = make_sampler(p, 4);
  const double lse = std::log(std::exp(1.0) + std::exp(0.5) + std::exp(0.0));
  const double expect[3] = {1.0 - lse, 0.5 - lse, 0.0 - lse};
  std::set<int32_t> seen;
  for (int i = 0; i < 200; i++) {
    float lp = 0;
    int32_t t = sample_one(s.get(), {2.0f, 1.0f, 0.0f, -1.0f}, &lp);
    ASSERT_GE(t, 0);
    ASSERT_LT(t, 3);
    EXPECT_NEAR(lp, expect[t], 1e-6) << "token " << t;
    seen.insert(t);
  }
  EXPECT_EQ(seen.size(), 3u);

  // With top-p the renormalisation is over the kept prefix: probs 0.5/0.3/0.2, top_p
  // 0.7 keeps {0, 1}, so log p(0) = log(0.5 / 0.8).
  wk_sampler_params_t q = wk_sampler_params_default();
  q.top_p = 0.7f;
  auto s2 = make_sampler(q, 3);
  for (int i = 0; i < 100; i++) {
    float lp = 0;
    int32_t t = sample_one(s2.get(), logits_of({0.5, 0.3, 0.2}), &lp);
    ASSERT_NE(t, 2);
    EXPECT_NEAR(lp, std::log((t == 0 ? 0.5 : 0.3) / 0.8), 1e-6);
  }
}

// Brute force over the whole vocabulary: full sort, then the filters in their stated
// order. The sampler must only ever return tokens of this support, with this logprob.
static std::map<int32_t, double> reference_logprobs(std::vector<float> logits, const wk_sampler_params_t &p,
                                                    const std::set<int32_t> &penalised) {
  for (int32_t id : penalised) {
    float &v = logits[id];
    v = v > 0 ? v / p.repetition_penalty : v * p.repetition_penalty;
  }
  std::vector<int32_t> ids(logits.size());
  std::iota(ids.begin(), ids.end(), 0);
  std::sort(ids.begin(), ids.end(), [&](int32_t a, int32_t b) {
    return logits[a] > logits[b] || (logits[a] == logits[b] && a < b);
  });
  if (p.top_k > 0 && (size_t)p.top_k < ids.size()) ids.resize(p.top_k);
  std::vector<double> w;
  double z = 0;
  for (int32_t id : ids) z += w.emplace_back(std::exp(((double)logits[id] - logits[ids[0]]) / p.temperature));
  size_t n = ids.size();
  if (p.top_p < 1) {
    double cum = 0;
    for (size_t i = 0; i < ids.size(); i++)
      if ((cum += w[i]) >= p.top_p * z) {
        n = i + 1;
        break;
      }
  }
  size_t n_min = 0;
  while (n_min < n && w[n_min] >= p.min_p) n_min++;
  n = std::min(n, n_min);
  double zf = 0;
  for (size_t i = 0; i < n; i++) zf += w[i];
  std::map<int32_t, double> out;
  for (size_t i = 0; i < n; i++) out[ids[i]] = std::log(w[i] / zf);
  return out;
}

TEST(WkSampler, MatchesBruteForceAtFullVocabulary) {
  const int64_t n_vocab = 49152;
  std::mt19937 gen(11);
  std::normal_distribution<float> nd(0, 3);
  // top_k 1024 and 1025 straddle the switch from the heap to the quickselect.
  struct Case {
    float temperature, top_p, min_p;
    int32_t top_k;
    float penalty;
  } cases[] = {
      {1.0f, 1.0f, 0.0f, 40, 1.0f},      {0.8f, 0.9f, 0.0f, 40, 1.3f},   {1.0f, 0.95f, 0.0f, 0, 1.0f},
      {1.5f, 0.99f, 0.0f, 0, 1.2f},      {0.7f, 1.0f, 0.05f, 0, 1.0f},   {1.0f, 0.9f, 0.01f, 200, 1.0f},
      {3.0f, 0.999f, 0.0f, 0, 1.0f},     {1.0f, 1.0f, 0.0f, 49151, 1.0f}, {1.0f, 0.97f, 0.0f, 1024, 0.7f},
      {1.0f, 0.97f, 0.0f, 1025, 1.5f},   {2.0f, 0.8f, 0.0f, 5000, 1.1f},
  };
  std::vector<float> row(n_vocab);
  for (const Case &c : cases) {
    wk_sampler_params_t p = wk_sampler_params_default();
    p.temperature = c.temperature;
    p.top_p = c.top_p;
    p.min_p = c.min_p;
    p.top_k = c.top_k;
    p.repetition_penalty = c.penalty;
    p.repeat_last_n = 64;
    auto s = make_sampler(p, n_vocab);
    SCOPED_TRACE("T " + std::to_string(c.temperature) + " top_p " + std::to_string(c.top_p) + " min_p " +
                 std::to_string(c.min_p) + " top_k " + std::to_string(c.top_k) + " penalty " +
                 std::to_string(c.penalty));
    for (int rep = 0; rep < 20; rep++) {
      for (float &v : row) v = nd(gen);
      std::vector<int32_t> tied;
      for (int i = 0; i < 50; i++) tied.push_back((int32_t)(gen() % n_vocab));
      for (int32_t id : tied) row[id] = 10.0f;  // exact ties near the top
      // History: some tied tokens (so the penalty reorders the top), repeats, and
      // random ones; more than repeat_last_n so the oldest slide out.
      std::vector<int32_t> history;
      for (int i = 0; i < 80; i++) history.push_back(i % 3 == 0 ? tied[i % 50] : (int32_t)(gen() % n_vocab));
      wk_sampler_reset(s.get());
      for (int32_t id : history) ASSERT_EQ(wk_sampler_accept(s.get(), id), AK_OK);
      std::set<int32_t> penalised;
      if (c.penalty != 1.0f) penalised.insert(history.end() - 64, history.end());
      std::map<int32_t, double> ref = reference_logprobs(row, p, penalised);
      for (int d = 0; d < 10; d++) {
        float lp = 0;
        int32_t t = sample_one(s.get(), row, &lp);
        auto it = ref.find(t);
        ASSERT_NE(it, ref.end()) << "token " << t << " outside the reference support of " << ref.size();
        EXPECT_NEAR(lp, it->second, 1e-3 + 1e-5 * std::fabs(it->second)) << "token " << t;
      }
    }
  }
}

TEST(WkSampler, TopKLargerThanFiniteCount) {
  std::vector<float> row(2000, -INFINITY);
  row[1999] = 0.0f;
  row[7] = 0.5f;
  row[1000] = NAN;
  row[333] = -1.0f;
  for (int32_t k : {2, 3, 40, 1500, 1999}) {
    wk_sampler_params_t p = wk_sampler_params_default();
    p.top_k = k;
    auto s = make_sampler(p, 2000);
    SCOPED_TRACE("top_k " + std::to_string(k));
    std::vector<int64_t> counts = histogram(s.get(), row, 20000);
    std::vector<double> probs(2000, 0.0);
    std::vector<double> sm = softmax({0.5f, -1.0f, 0.0f}, 1.0);
    probs[7] = sm[0];
    probs[333] = sm[1];
    probs[1999] = sm[2];
    if (k == 2) {  // the worst of the three is cut
      probs[333] = 0;
      double z = probs[7] + probs[1999];
      probs[7] /= z;
      probs[1999] /= z;
    }
    expect_matches(counts, probs, 20000);
  }
}

TEST(WkSampler, NaNIsMinusInfinity) {
  std::vector<float> logits = {NAN, 1.0f, 2.0f, NAN, -INFINITY, 0.5f};
  auto greedy = make_sampler(params_with_temperature(0), 6);
  EXPECT_EQ(sample_one(greedy.get(), logits), 2);
  auto s = make_sampler(params_with_temperature(1.0f), 6);
  std::vector<int64_t> counts = histogram(s.get(), logits, 20000);
  EXPECT_EQ(counts[0], 0);
  EXPECT_EQ(counts[3], 0);
  EXPECT_EQ(counts[4], 0);
  expect_matches(counts, {0, softmax({1.0f, 2.0f, 0.5f}, 1)[0], softmax({1.0f, 2.0f, 0.5f}, 1)[1], 0, 0,
                          softmax({1.0f, 2.0f, 0.5f}, 1)[2]},
                 20000);
  // +inf is the largest finite value: it wins outright without poisoning the softmax.
  float lp = 1;
  EXPECT_EQ(sample_one(s.get(), {1.0f, INFINITY, NAN, 3.0f, 2.0f, 0.0f}, &lp), 1);
  EXPECT_EQ(lp, 0.0f);
}

TEST(WkSampler, NoFiniteLogitIsInvalid) {
  for (float t : {0.0f, 1.0f}) {
    auto s = make_sampler(params_with_temperature(t), 4);
    for (std::vector<float> row : {std::vector<float>{NAN, NAN, NAN, NAN},
                                   std::vector<float>{-INFINITY, -INFINITY, -INFINITY, -INFINITY},
                                   std::vector<float>{NAN, -INFINITY, NAN, -INFINITY}}) {
      int32_t tok = 1234;
      float lp = 5.0f;
      EXPECT_EQ(wk_sampler_sample(s.get(), row.data(), &tok, &lp), AK_ERR_INVALID_ARG);
      EXPECT_EQ(tok, 1234) << "outputs are written only on success";
      EXPECT_EQ(lp, 5.0f);
      EXPECT_NE(std::string(wk_sampler_last_error(s.get())).find("no finite logit"), std::string::npos)
          << wk_sampler_last_error(s.get());
    }
  }
  // A failed call does not advance the PRNG: the next draws match a fresh sampler's.
  auto a = make_sampler(wk_sampler_params_default(), 4);
  auto b = make_sampler(wk_sampler_params_default(), 4);
  std::vector<float> bad(4, NAN), good = {0.0f, 0.1f, 0.2f, 0.3f};
  int32_t tok;
  ASSERT_EQ(wk_sampler_sample(a.get(), bad.data(), &tok, nullptr), AK_ERR_INVALID_ARG);
  for (int i = 0; i < 50; i++) EXPECT_EQ(sample_one(a.get(), good), sample_one(b.get(), good));
}

TEST(WkSampler, BadCallArguments) {
  auto s = make_sampler(wk_sampler_params_default(), 4);
  std::vector<float> row(4, 0.0f);
  int32_t tok;
  EXPECT_EQ(wk_sampler_sample(s.get(), nullptr, &tok, nullptr), AK_ERR_INVALID_ARG);
  EXPECT_EQ(wk_sampler_sample(s.get(), row.data(), nullptr, nullptr), AK_ERR_INVALID_ARG);
  EXPECT_EQ(wk_sampler_sample(nullptr, row.data(), &tok, nullptr), AK_ERR_INVALID_ARG);
  EXPECT_EQ(wk_sampler_accept(s.get(), 4), AK_ERR_INVALID_ARG);
  EXPECT_NE(std::string(wk_sampler_last_error(s.get())).find("token_id=4"), std::string::npos);
  EXPECT_EQ(wk_sampler_accept(s.get(), -1), AK_ERR_INVALID_ARG);
  EXPECT_EQ(wk_sampler_accept(nullptr, 0), AK_ERR_INVALID_ARG);
  EXPECT_EQ(wk_sampler_accept(s.get(), 3), AK_OK);
  wk_sampler_destroy(nullptr);
  wk_sampler_reset(nullptr);
}

TEST(WkSampler, InvalidParamsNameTheField) {
  struct Case {
    const char *field;
    void (*set)(wk_sampler_params_t *);
  } cases[] = {
      {"temperature=-0.5", [](wk_sampler_params_t *p) { p->temperature = -0.5f; }},
      {"temperature=nan", [](wk_sampler_params_t *p) { p->temperature = NAN; }},
      {"temperature=inf", [](wk_sampler_params_t *p) { p->temperature = INFINITY; }},
      {"top_k=-1", [](wk_sampler_params_t *p) { p->top_k = -1; }},
      {"top_p=0", [](wk_sampler_params_t *p) { p->top_p = 0.0f; }},
      {"top_p=1.5", [](wk_sampler_params_t *p) { p->top_p = 1.5f; }},
      {"top_p=nan", [](wk_sampler_params_t *p) { p->top_p = NAN; }},
      {"min_p=1", [](wk_sampler_params_t *p) { p->min_p = 1.0f; }},
      {"min_p=-0.1", [](wk_sampler_params_t *p) { p->min_p = -0.1f; }},
      {"repetition_penalty=0", [](wk_sampler_params_t *p) { p->repetition_penalty = 0.0f; }},
      {"repetition_penalty=-2", [](wk_sampler_params_t *p) { p->repetition_penalty = -2.0f; }},
      {"repetition_penalty=inf", [](wk_sampler_params_t *p) { p->repetition_penalty = INFINITY; }},
      {"repeat_last_n=-1", [](wk_sampler_params_t *p) { p->repeat_last_n = -1; }},
  };
  for (const Case &c : cases) {
    wk_sampler_params_t p = wk_sampler_params_default();
    c.set(&p);
    wk_sampler_t *s = reinterpret_cast<wk_sampler_t *>(0x1);
    ak_err_t err{};
    EXPECT_EQ(wk_sampler_create(&p, 100, &err, &s), AK_ERR_INVALID_ARG) << c.field;
    EXPECT_EQ(s, reinterpret_cast<wk_sampler_t *>(0x1)) << "s_p written on failure";
    EXPECT_NE(std::string(err.msg).find(c.field), std::string::npos) << "message: " << err.msg;
  }
  for (int64_t n_vocab : {0LL, -5LL, (long long)INT32_MAX + 1}) {
    wk_sampler_t *s = nullptr;
    ak_err_t err{};
    wk_sampler_params_t p = wk_sampler_params_default();
    EXPECT_EQ(wk_sampler_create(&p, n_vocab, &err, &s), AK_ERR_INVALID_ARG);
    EXPECT_NE(std::string(err.msg).find("n_vocab=" + std::to_string(n_vocab)), std::string::npos) << err.msg;
    EXPECT_EQ(s, nullptr);
  }
  // Edges that are valid.
  wk_sampler_params_t p = wk_sampler_params_default();
  p.temperature = 0.0f;
  p.top_p = 1.0f;
  p.min_p = 0.0f;
  p.top_k = 1000000;
  p.repeat_last_n = 0;
  auto ok = make_sampler(p, 1);
  EXPECT_EQ(sample_one(ok.get(), {-3.0f}), 0);
}

TEST(WkSampler, NoMemoryOutstandingAfterDestroy) {
  const int64_t before = ak_alloc_outstanding_bytes(AK_MEM_HOST);
  {
    wk_sampler_params_t p = wk_sampler_params_default();
    p.repetition_penalty = 1.2f;
    p.top_p = 0.9f;
    auto s = make_sampler(p, 49152);
    EXPECT_GT(ak_alloc_outstanding_bytes(AK_MEM_HOST), before);
    std::vector<float> row(49152, 0.0f);
    for (int i = 0; i < 10; i++) {
      ASSERT_EQ(wk_sampler_accept(s.get(), i), AK_OK);
      const int64_t during = ak_alloc_outstanding_bytes(AK_MEM_HOST);
      sample_one(s.get(), row);
      EXPECT_EQ(ak_alloc_outstanding_bytes(AK_MEM_HOST), during) << "sampling must not allocate";
    }
  }
  EXPECT_EQ(ak_alloc_outstanding_bytes(AK_MEM_HOST), before);
}

TEST(WkSampler, FailedAllocationUnwindsCleanly) {
  wk_sampler_params_t p = wk_sampler_params_default();
  p.repetition_penalty = 1.1f;  // all four allocations happen
  const int64_t before = ak_alloc_outstanding_bytes(AK_MEM_HOST);
  for (int64_t n = 1; n <= 4; n++) {
    ak_alloc_fail_after(n);
    wk_sampler_t *s = nullptr;
    ak_err_t err{};
    EXPECT_EQ(wk_sampler_create(&p, 1000, &err, &s), AK_ERR_NO_MEMORY) << "failing allocation " << n;
    EXPECT_EQ(s, nullptr);
    EXPECT_EQ(ak_alloc_outstanding_bytes(AK_MEM_HOST), before);
  }
  ak_alloc_fail_after(0);
  auto s = make_sampler(p, 1000);
  EXPECT_NE(s, nullptr);
}
