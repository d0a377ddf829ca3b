// Tests for kvpool/kv_digest.c: kind names, the digest of each kind against
// hand-computed and brute-force values, upper-bound and ranking properties, partial
// pages, and one test per class of bad input.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <random>
#include <string>
#include <vector>

extern "C" {
#include "kv_digest.h"
}

namespace {

const kv_digest_kind_t kAllKinds[] = {KV_DIGEST_CENTROID,      KV_DIGEST_SPHERE_MAX,  KV_DIGEST_SPHERE_CENTER,
                                      KV_DIGEST_SPHERE_MEAN,   KV_DIGEST_CUBOID_MAX,  KV_DIGEST_CUBOID_CENTER,
                                      KV_DIGEST_CUBOID_MEAN};

// A C caller may pass any int where an enum is expected, and the library must reject
// it; C++ may not even form such an enum value (UBSan flags it). Out-of-range kinds and
// aggregations therefore go through these int-typed views of the same C functions (an
// enum argument is passed as an int in the C ABI).
using name_int_fn = const char *(*)(int);
using build_int_fn = ak_status_t (*)(int, const float *, int32_t, int32_t, int32_t, ak_err_t *, float *);
using score_int_fn = ak_status_t (*)(int, const float *, const float *, int32_t, int32_t, int32_t, int, ak_err_t *,
                                     float *);
const name_int_fn name_int = reinterpret_cast<name_int_fn>(&kv_digest_kind_name);
const build_int_fn build_int = reinterpret_cast<build_int_fn>(&kv_digest_build);
const score_int_fn score_int = reinterpret_cast<score_int_fn>(&kv_digest_score);

// q . k accumulated in float in index order, as the scorer does.
float dot(const float *a, const float *b, int n) {
  float s = 0.f;
  for (int i = 0; i < n; i++) s += a[i] * b[i];
  return s;
}

std::vector<float> randn(size_t n, uint32_t seed, float scale = 1.f) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> nd(0.f, scale);
  std::vector<float> v(n);
  for (auto &x : v) x = nd(rng);
  return v;
}

std::vector<float> build(kv_digest_kind_t kind, const std::vector<float> &keys, int n_tokens, int n_kv_heads,
                         int head_dim) {
  std::vector<float> out((size_t)n_kv_heads * kv_digest_floats(kind, head_dim), -7.f);
  ak_err_t err{};
  EXPECT_EQ(kv_digest_build(kind, keys.data(), n_tokens, n_kv_heads, head_dim, &err, out.data()), AK_OK)
      << err.msg;
  return out;
}

// max_t q_h . k_t over the page for query head h's KV head.
float brute_max(const std::vector<float> &keys, const float *qh, int n_tokens, int n_kv_heads, int head_dim,
                int g) {
  float best = -INFINITY;
  for (int t = 0; t < n_tokens; t++) {
    float s = dot(qh, keys.data() + ((size_t)t * n_kv_heads + g) * head_dim, head_dim);
    if (s > best) best = s;
  }
  return best;
}

TEST(KvDigest, KindNamesRoundTrip) {
  EXPECT_EQ(KV_DIGEST_DEFAULT, KV_DIGEST_CUBOID_MEAN);
  const char *names[] = {"centroid",   "sphere-max",    "sphere-center", "sphere-mean",
                         "cuboid-max", "cuboid-center", "cuboid-mean"};
  for (int k = 0; k < KV_DIGEST_N_KINDS; k++) {
    EXPECT_STREQ(kv_digest_kind_name(kAllKinds[k]), names[k]);
    kv_digest_kind_t parsed = KV_DIGEST_CENTROID;
    ak_err_t err{};
    ASSERT_EQ(kv_digest_kind_parse(names[k], &err, &parsed), AK_OK) << err.msg;
    EXPECT_EQ(parsed, kAllKinds[k]);
  }
  EXPECT_STREQ(kv_digest_kind_name((kv_digest_kind_t)7), "unknown");
  EXPECT_STREQ(name_int(99), "unknown");
  EXPECT_STREQ(name_int(-1), "unknown");
}

TEST(KvDigest, FloatsPerHead) {
  EXPECT_EQ(kv_digest_floats(KV_DIGEST_CENTROID, 128), 128);
  EXPECT_EQ(kv_digest_floats(KV_DIGEST_SPHERE_MAX, 128), 129);
  EXPECT_EQ(kv_digest_floats(KV_DIGEST_SPHERE_CENTER, 64), 65);
  EXPECT_EQ(kv_digest_floats(KV_DIGEST_SPHERE_MEAN, 64), 65);
  EXPECT_EQ(kv_digest_floats(KV_DIGEST_CUBOID_MAX, 64), 128);
  EXPECT_EQ(kv_digest_floats(KV_DIGEST_CUBOID_CENTER, 128), 256);
  EXPECT_EQ(kv_digest_floats(KV_DIGEST_CUBOID_MEAN, 128), 256);
  EXPECT_EQ(kv_digest_floats((kv_digest_kind_t)7, 64), -1);
  EXPECT_EQ(kv_digest_floats(KV_DIGEST_CUBOID_MEAN, 0), -1);
  EXPECT_EQ(kv_digest_floats(KV_DIGEST_CUBOID_MEAN, 1025), -1);
}

TEST(KvDigest, BadKindStrings) {
  const char *bad[] = {"", "cuboid", "Cuboid-Mean", "cuboid_mean", "cuboid-mean ", "sphere-max2"};
  for (const char *s : bad) {
    kv_digest_kind_t kind = KV_DIGEST_SPHERE_MAX;
    ak_err_t err{};
    EXPECT_EQ(kv_digest_kind_parse(s, &err, &kind), AK_ERR_INVALID_ARG) << s;
    EXPECT_EQ(err.status, AK_ERR_INVALID_ARG);
    std::string msg = err.msg;
    EXPECT_NE(msg.find("kv_digest_kind_parse"), std::string::npos) << msg;
    EXPECT_NE(msg.find(std::string("\"") + s + "\""), std::string::npos) << msg;
    EXPECT_EQ(kind, KV_DIGEST_SPHERE_MAX) << "output written on failure";
  }
  ak_err_t err{};
  kv_digest_kind_t kind = KV_DIGEST_SPHERE_MAX;
  EXPECT_EQ(kv_digest_kind_parse(nullptr, &err, &kind), AK_ERR_INVALID_ARG);
  EXPECT_NE(std::string(err.msg).find("NULL"), std::string::npos) << err.msg;
  EXPECT_EQ(kind, KV_DIGEST_SPHERE_MAX);
  // A NULL err is allowed.
  EXPECT_EQ(kv_digest_kind_parse("nope", nullptr, &kind), AK_ERR_INVALID_ARG);
}

// Each bad build argument fails alone, names the value, and leaves `out` untouched.
TEST(KvDigest, BuildBadArgs) {
  const int n_tok = 4, nkv = 2, hd = 8;
  std::vector<float> keys = randn((size_t)n_tok * nkv * hd, 1);
  std::vector<float> out(2 * nkv * hd, 42.f);
  struct Case {
    int kind;
    const float *keys;
    int n_tokens, n_kv_heads, head_dim;
    float *out;
    const char *needle;
  } cases[] = {
      {7, keys.data(), n_tok, nkv, hd, out.data(), "kind=7"},
      {-1, keys.data(), n_tok, nkv, hd, out.data(), "kind=-1"},
      {KV_DIGEST_CUBOID_MEAN, nullptr, n_tok, nkv, hd, out.data(), "keys="},
      {KV_DIGEST_CUBOID_MEAN, keys.data(), n_tok, nkv, hd, nullptr, "out="},
      {KV_DIGEST_CUBOID_MEAN, keys.data(), 0, nkv, hd, out.data(), "n_tokens=0"},
      {KV_DIGEST_CUBOID_MEAN, keys.data(), -3, nkv, hd, out.data(), "n_tokens=-3"},
      {KV_DIGEST_CUBOID_MEAN, keys.data(), n_tok, 0, hd, out.data(), "n_kv_heads=0"},
      {KV_DIGEST_CUBOID_MEAN, keys.data(), n_tok, 1025, hd, out.data(), "n_kv_heads=1025"},
      {KV_DIGEST_CUBOID_MEAN, keys.data(), n_tok, nkv, 0, out.data(), "head_dim=0"},
      {KV_DIGEST_CUBOID_MEAN, keys.data(), n_tok, nkv, 2048, out.data(), "head_dim=2048"},
  };
  for (const Case &c : cases) {
    ak_err_t err{};
    EXPECT_EQ(build_int(c.kind, c.keys, c.n_tokens, c.n_kv_heads, c.head_dim, &err, c.out),
              AK_ERR_INVALID_ARG)
        << c.needle;
    std::string msg = err.msg;
    EXPECT_NE(msg.find("kv_digest_build"), std::string::npos) << msg;
    EXPECT_NE(msg.find(c.needle), std::string::npos) << msg;
    for (float v : out) ASSERT_EQ(v, 42.f) << "out written on failure: " << c.needle;
  }
}

TEST(KvDigest, ScoreBadArgs) {
  const int nkv = 2, hd = 8;
  std::vector<float> dg(2 * nkv * hd, 0.5f), q = randn(6 * hd, 2);
  float score = 42.f;
  ak_err_t err{};

  auto expect_bad = [&](ak_status_t st, const char *fn, const char *needle) {
    EXPECT_EQ(st, AK_ERR_INVALID_ARG) << needle;
    std::string msg = err.msg;
    EXPECT_NE(msg.find(fn), std::string::npos) << msg;
    EXPECT_NE(msg.find(needle), std::string::npos) << msg;
    EXPECT_EQ(score, 42.f) << "score written on failure: " << needle;
    err = ak_err_t{};
  };
  const kv_digest_kind_t K = KV_DIGEST_CUBOID_MEAN;
  expect_bad(kv_digest_score(K, dg.data(), q.data(), 5, nkv, hd, KV_SCORE_MEAN, &err, &score), "kv_digest_score",
             "n_heads=5");
  expect_bad(kv_digest_score(K, dg.data(), q.data(), 0, nkv, hd, KV_SCORE_MEAN, &err, &score), "kv_digest_score",
             "n_heads=0");
  expect_bad(score_int(K, dg.data(), q.data(), 6, nkv, hd, 2, &err, &score), "kv_digest_score", "agg=2");
  expect_bad(score_int(K, dg.data(), q.data(), 6, nkv, hd, -1, &err, &score), "kv_digest_score", "agg=-1");
  expect_bad(score_int(9, dg.data(), q.data(), 6, nkv, hd, KV_SCORE_MEAN, &err, &score),
             "kv_digest_score", "kind=9");
  expect_bad(kv_digest_score(K, nullptr, q.data(), 6, nkv, hd, KV_SCORE_MEAN, &err, &score), "kv_digest_score",
             "digest=");
  expect_bad(kv_digest_score(K, dg.data(), nullptr, 6, nkv, hd, KV_SCORE_MEAN, &err, &score), "kv_digest_score",
             "q=");
  expect_bad(kv_digest_score(K, dg.data(), q.data(), 6, nkv, hd, KV_SCORE_MEAN, &err, nullptr), "kv_digest_score",
             "output=");
  expect_bad(kv_digest_score(K, dg.data(), q.data(), 6, nkv, 0, KV_SCORE_MEAN, &err, &score), "kv_digest_score",
             "head_dim=0");
  expect_bad(kv_digest_score_heads(K, dg.data(), q.data(), 4, 3, hd, &err, &score), "kv_digest_score_heads",
             "n_heads=4");
  expect_bad(kv_digest_score_pages(K, dg.data(), -1, q.data(), 6, nkv, hd, KV_SCORE_MEAN, &err, &score),
             "kv_digest_score_pages", "n_pages=-1");
  expect_bad(kv_digest_score_pages(K, dg.data(), 1, q.data(), 6, nkv, hd, KV_SCORE_MAX, &err, nullptr),
             "kv_digest_score_pages", "output=");
  // Zero pages: nothing read or written, NULL arrays allowed, shapes still checked.
  EXPECT_EQ(kv_digest_score_pages(K, nullptr, 0, nullptr, 6, nkv, hd, KV_SCORE_MEAN, &err, nullptr), AK_OK)
      << err.msg;
  expect_bad(kv_digest_score_pages(K, nullptr, 0, nullptr, 6, 4, hd, KV_SCORE_MEAN, &err, nullptr),
             "kv_digest_score_pages", "n_heads=6");
}

// Three tokens, one head, head_dim 2, every kind against values worked by hand:
//   k0 = (1, 0), k1 = (3, -2), k2 = (2, 4)
//   max = (3, 4), min = (1, -2), c = (2, 1)
//   |c - k| per dim: dim0 {1, 1, 0}, dim1 {1, 3, 3}
//   cuboid-mean   r = (2/3, 7/3):  ub = (8/3, 10/3), lb = (4/3, -4/3)
//   cuboid-center r = (1/2, 2):    ub = (5/2, 3),    lb = (3/2, -1)
//   ||c - k||: sqrt2, sqrt10, 3;   centroid (2, 2/3)
TEST(KvDigest, HandComputedSmallPage) {
  const std::vector<float> keys = {1, 0, 3, -2, 2, 4};
  auto cm = build(KV_DIGEST_CUBOID_MEAN, keys, 3, 1, 2);
  EXPECT_FLOAT_EQ(cm[0], 8.f / 3);
  EXPECT_FLOAT_EQ(cm[1], 10.f / 3);
  EXPECT_FLOAT_EQ(cm[2], 4.f / 3);
  EXPECT_FLOAT_EQ(cm[3], -4.f / 3);
  auto cc = build(KV_DIGEST_CUBOID_CENTER, keys, 3, 1, 2);
  EXPECT_FLOAT_EQ(cc[0], 2.5f);
  EXPECT_FLOAT_EQ(cc[1], 3.f);
  EXPECT_FLOAT_EQ(cc[2], 1.5f);
  EXPECT_FLOAT_EQ(cc[3], -1.f);
  auto cx = build(KV_DIGEST_CUBOID_MAX, keys, 3, 1, 2);
  EXPECT_EQ(cx, (std::vector<float>{3, 4, 1, -2}));
  const float s2 = std::sqrt(2.f), s10 = std::sqrt(10.f);
  auto sx = build(KV_DIGEST_SPHERE_MAX, keys, 3, 1, 2);
  EXPECT_FLOAT_EQ(sx[0], 2.f);
  EXPECT_FLOAT_EQ(sx[1], 1.f);
  EXPECT_FLOAT_EQ(sx[2], s10);
  EXPECT_GE((double)sx[2], std::sqrt(10.0)) << "sphere-max radius rounded down";
  EXPECT_FLOAT_EQ(build(KV_DIGEST_SPHERE_CENTER, keys, 3, 1, 2)[2], (s2 + s10) / 2);
  EXPECT_FLOAT_EQ(build(KV_DIGEST_SPHERE_MEAN, keys, 3, 1, 2)[2], (s2 + s10 + 3.f) / 3);
  auto ce = build(KV_DIGEST_CENTROID, keys, 3, 1, 2);
  EXPECT_FLOAT_EQ(ce[0], 2.f);
  EXPECT_FLOAT_EQ(ce[1], 2.f / 3);

  // q = (1, -1): cuboid-mean max(8/3, 4/3) + max(-10/3, 4/3) = 4;
  // cuboid-max 3 + 2 = 5; sphere-max 2 - 1 + sqrt10 * sqrt2; centroid 2 - 2/3.
  const float q[2] = {1.f, -1.f};
  float s = 0.f;
  ASSERT_EQ(kv_digest_score(KV_DIGEST_CUBOID_MEAN, cm.data(), q, 1, 1, 2, KV_SCORE_MEAN, nullptr, &s), AK_OK);
  EXPECT_FLOAT_EQ(s, 4.f);
  ASSERT_EQ(kv_digest_score(KV_DIGEST_CUBOID_MAX, cx.data(), q, 1, 1, 2, KV_SCORE_MEAN, nullptr, &s), AK_OK);
  EXPECT_FLOAT_EQ(s, 5.f);
  ASSERT_EQ(kv_digest_score(KV_DIGEST_SPHERE_MAX, sx.data(), q, 1, 1, 2, KV_SCORE_MEAN, nullptr, &s), AK_OK);
  EXPECT_FLOAT_EQ(s, 1.f + s10 * s2);
  ASSERT_EQ(kv_digest_score(KV_DIGEST_CENTROID, ce.data(), q, 1, 1, 2, KV_SCORE_MEAN, nullptr, &s), AK_OK);
  EXPECT_FLOAT_EQ(s, 2.f - 2.f / 3);
}

// cuboid-max and sphere-max bound max_t q . k_t for every query head (GQA 3:1), and so
// do their max- and mean-aggregated page scores. The slack covers float rounding of
// sums whose terms are individually bounded (exact at page size 1).
TEST(KvDigest, MaxKindsAreUpperBounds) {
  const int nkv = 2, n_heads = 6, group = 3;
  uint32_t seed = 100;
  for (int hd : {64, 128}) {
    for (int n_tok : {1, 8, 32, 64}) {
      for (int trial = 0; trial < 4; trial++) {
        auto keys = randn((size_t)n_tok * nkv * hd, seed++);
        auto q = randn((size_t)n_heads * hd, seed++, 2.f);
        std::vector<float> truth(n_heads);
        float truth_max = -INFINITY, truth_mean = 0.f;
        for (int h = 0; h < n_heads; h++) {
          truth[h] = brute_max(keys, q.data() + h * hd, n_tok, nkv, hd, h / group);
          truth_max = std::max(truth_max, truth[h]);
          truth_mean += truth[h] / n_heads;
        }
        for (kv_digest_kind_t kind : {KV_DIGEST_CUBOID_MAX, KV_DIGEST_SPHERE_MAX}) {
          SCOPED_TRACE(std::string(kv_digest_kind_name(kind)) + " hd=" + std::to_string(hd) +
                       " n_tok=" + std::to_string(n_tok));
          auto dg = build(kind, keys, n_tok, nkv, hd);
          std::vector<float> hs(n_heads);
          ak_err_t err{};
          ASSERT_EQ(kv_digest_score_heads(kind, dg.data(), q.data(), n_heads, nkv, hd, &err, hs.data()), AK_OK)
              << err.msg;
          for (int h = 0; h < n_heads; h++) {
            float tol = 1e-5f * (1.f + std::fabs(truth[h]));
            EXPECT_GE(hs[h], truth[h] - tol) << "head " << h;
            if (n_tok == 1) EXPECT_NEAR(hs[h], truth[h], tol) << "page of one key is exact";
          }
          float smax = 0.f, smean = 0.f;
          ASSERT_EQ(kv_digest_score(kind, dg.data(), q.data(), n_heads, nkv, hd, KV_SCORE_MAX, &err, &smax), AK_OK);
          ASSERT_EQ(kv_digest_score(kind, dg.data(), q.data(), n_heads, nkv, hd, KV_SCORE_MEAN, &err, &smean),
                    AK_OK);
          EXPECT_GE(smax, truth_max - 1e-5f * (1.f + std::fabs(truth_max)));
          EXPECT_GE(smean, truth_mean - 1e-5f * (1.f + std::fabs(truth_mean)));
          EXPECT_EQ(smax, *std::max_element(hs.begin(), hs.end()));
        }
      }
    }
  }
}

// A page whose keys are all the same key k: every kind's head score is exactly the
// float q . k, and the aggregates are exactly their mean and max.
TEST(KvDigest, IdenticalKeysScoreExactlyQDotK) {
  const int nkv = 2, n_heads = 6, group = 3, hd = 64, n_tok = 32;
  auto one = randn((size_t)nkv * hd, 7);
  std::vector<float> keys((size_t)n_tok * nkv * hd);
  for (int t = 0; t < n_tok; t++) std::copy(one.begin(), one.end(), keys.begin() + (size_t)t * nkv * hd);
  auto q = randn((size_t)n_heads * hd, 8);
  std::vector<float> expect(n_heads);
  float expect_sum = 0.f, expect_max = -INFINITY;
  for (int h = 0; h < n_heads; h++) {
    expect[h] = dot(q.data() + h * hd, one.data() + (h / group) * hd, hd);
    expect_sum += expect[h];
    expect_max = std::max(expect_max, expect[h]);
  }
  for (kv_digest_kind_t kind : kAllKinds) {
    SCOPED_TRACE(kv_digest_kind_name(kind));
    auto dg = build(kind, keys, n_tok, nkv, hd);
    std::vector<float> hs(n_heads);
    ASSERT_EQ(kv_digest_score_heads(kind, dg.data(), q.data(), n_heads, nkv, hd, nullptr, hs.data()), AK_OK);
    for (int h = 0; h < n_heads; h++) EXPECT_EQ(hs[h], expect[h]) << "head " << h;
    float s = 0.f;
    ASSERT_EQ(kv_digest_score(kind, dg.data(), q.data(), n_heads, nkv, hd, KV_SCORE_MEAN, nullptr, &s), AK_OK);
    EXPECT_EQ(s, expect_sum / n_heads);
    ASSERT_EQ(kv_digest_score(kind, dg.data(), q.data(), n_heads, nkv, hd, KV_SCORE_MAX, nullptr, &s), AK_OK);
    EXPECT_EQ(s, expect_max);
  }
}

// 16 pages of random keys; page 5 also holds one key per KV head aligned with that KV
// head's queries. Every kind but centroid ranks page 5 first; centroid is checked to be
// the mean key's score. score_pages agrees exactly with per-page kv_digest_score.
TEST(KvDigest, RankingFindsAlignedPage) {
  const int nkv = 2, n_heads = 6, group = 3, hd = 64, n_tok = 32, n_pages = 16, hot = 5, hot_tok = 17;
  auto q = randn((size_t)n_heads * hd, 11);
  std::vector<std::vector<float>> pages(n_pages);
  for (int p = 0; p < n_pages; p++) pages[p] = randn((size_t)n_tok * nkv * hd, 200 + p);
  for (int g = 0; g < nkv; g++) {
    std::vector<float> dir(hd, 0.f);
    for (int h = g * group; h < (g + 1) * group; h++)
      for (int i = 0; i < hd; i++) dir[i] += q[(size_t)h * hd + i];
    float n = std::sqrt(dot(dir.data(), dir.data(), hd));
    float *k = pages[hot].data() + ((size_t)hot_tok * nkv + g) * hd;
    for (int i = 0; i < hd; i++) k[i] = 3.f * std::sqrt((float)hd) * dir[i] / n;  // 3x a typical key's norm
  }
  for (kv_digest_kind_t kind : kAllKinds) {
    SCOPED_TRACE(kv_digest_kind_name(kind));
    const int fl = kv_digest_floats(kind, hd);
    std::vector<float> digests((size_t)n_pages * nkv * fl);
    for (int p = 0; p < n_pages; p++) {
      auto dg = build(kind, pages[p], n_tok, nkv, hd);
      std::copy(dg.begin(), dg.end(), digests.begin() + (size_t)p * nkv * fl);
    }
    for (kv_score_agg_t agg : {KV_SCORE_MEAN, KV_SCORE_MAX}) {
      std::vector<float> scores(n_pages, NAN);
      ak_err_t err{};
      ASSERT_EQ(kv_digest_score_pages(kind, digests.data(), n_pages, q.data(), n_heads, nkv, hd, agg, &err,
                                      scores.data()),
                AK_OK)
          << err.msg;
      for (int p = 0; p < n_pages; p++) {
        float s = 0.f;
        ASSERT_EQ(kv_digest_score(kind, digests.data() + (size_t)p * nkv * fl, q.data(), n_heads, nkv, hd, agg,
                                  &err, &s),
                  AK_OK);
        EXPECT_EQ(scores[p], s) << "page " << p;
      }
      int best = (int)(std::max_element(scores.begin(), scores.end()) - scores.begin());
      if (kind != KV_DIGEST_CENTROID) {
        EXPECT_EQ(best, hot) << "agg " << agg;
        continue;
      }
      // Centroid: the digest is the mean key, the score its dot with each query head.
      for (int p = 0; p < n_pages; p++) {
        std::vector<float> hs(n_heads);
        for (int h = 0; h < n_heads; h++) {
          std::vector<double> mean(hd, 0.0);
          for (int t = 0; t < n_tok; t++)
            for (int i = 0; i < hd; i++) mean[i] += pages[p][((size_t)t * nkv + h / group) * hd + i];
          double s = 0.0;
          for (int i = 0; i < hd; i++) s += q[(size_t)h * hd + i] * (mean[i] / n_tok);
          hs[h] = (float)s;
        }
        float expect = 0.f;
        if (agg == KV_SCORE_MAX) {
          expect = *std::max_element(hs.begin(), hs.end());
        } else {
          for (float v : hs) expect += v / n_heads;
        }
        EXPECT_NEAR(scores[p], expect, 1e-4f * (1.f + std::fabs(expect))) << "page " << p;
      }
    }
  }
}

// A partial page (5 of 32 tokens): the digest sees only the 5 filled tokens, whatever
// the unfilled slots hold, and the max kinds still bound the filled tokens.
TEST(KvDigest, PartialPage) {
  const int nkv = 2, n_heads = 6, group = 3, hd = 64, cap = 32, n_tok = 5;
  auto keys = randn((size_t)cap * nkv * hd, 31);
  for (size_t i = (size_t)n_tok * nkv * hd; i < keys.size(); i++) keys[i] = 1e6f;  // stale slots
  std::vector<float> filled(keys.begin(), keys.begin() + (size_t)n_tok * nkv * hd);
  auto q = randn((size_t)n_heads * hd, 32);
  for (kv_digest_kind_t kind : kAllKinds) {
    SCOPED_TRACE(kv_digest_kind_name(kind));
    auto dg = build(kind, keys, n_tok, nkv, hd);
    EXPECT_EQ(dg, build(kind, filled, n_tok, nkv, hd));
    for (float v : dg) EXPECT_LT(std::fabs(v), 100.f) << "an unfilled slot leaked into the digest";
    if (kind == KV_DIGEST_CUBOID_MAX || kind == KV_DIGEST_SPHERE_MAX) {
      std::vector<float> hs(n_heads);
      ASSERT_EQ(kv_digest_score_heads(kind, dg.data(), q.data(), n_heads, nkv, hd, nullptr, hs.data()), AK_OK);
      for (int h = 0; h < n_heads; h++) {
        float truth = brute_max(filled, q.data() + h * hd, n_tok, nkv, hd, h / group);
        EXPECT_GE(hs[h], truth - 1e-5f * (1.f + std::fabs(truth)));
      }
    }
  }
  // cuboid-max of the partial page is exactly the per-dimension max and min of 5 keys.
  auto cx = build(KV_DIGEST_CUBOID_MAX, keys, n_tok, nkv, hd);
  for (int g = 0; g < nkv; g++)
    for (int i = 0; i < hd; i++) {
      float mx = -INFINITY, mn = INFINITY;
      for (int t = 0; t < n_tok; t++) {
        float v = filled[((size_t)t * nkv + g) * hd + i];
        mx = std::max(mx, v);
        mn = std::min(mn, v);
      }
      EXPECT_EQ(cx[(size_t)g * 2 * hd + i], mx);
      EXPECT_EQ(cx[(size_t)g * 2 * hd + hd + i], mn);
    }
}

}  // namespace
