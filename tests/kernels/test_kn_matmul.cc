// kn_matmul against double-precision references, for every weight type, ISA and
// thread count, at odd sizes (tails in rows, tokens, blocks, groups and K chunks).
//
// Quantized weights are checked two ways:
//  (a) against dequant(W) · x in double. The kernel quantizes each 32-block of x to
//      int8 with d = amax/127, so each element moves by at most d/2 = amax_b/254:
//      |y - ref| <= sum_b amax_b/254 * sum_{i in b} |w_i|  (+ float rounding).
//  (b) against dequant(W) · Q8(x) in double, with Q8(x) rebuilt with the documented
//      float operations: only f32 accumulation error remains (~1e-5 relative).
#include <cmath>
#include <cstring>

#include "kn_test_util.h"

namespace {

struct Shape {
  int64_t n_rows, n_cols;
};

std::vector<uint8_t> random_weights(ak_ggml_type_t type, int64_t n_rows, int64_t n_cols,
                                    KnRng &rng) {
  size_t row_bytes = ak_type_row_bytes(type, n_cols);
  std::vector<uint8_t> w(row_bytes * n_rows);
  if (type == AK_TYPE_F32 || type == AK_TYPE_F16 || type == AK_TYPE_BF16) {
    for (int64_t i = 0; i < n_rows * n_cols; i++) {
      float v = rng.uniform(-1.0f, 1.0f);
      if (type == AK_TYPE_F32) memcpy(&w[i * 4], &v, 4);
      uint16_t h = type == AK_TYPE_F16 ? ak_f32_to_f16(v) : ak_f32_to_bf16(v);
      if (type != AK_TYPE_F32) memcpy(&w[i * 2], &h, 2);
    }
    return w;
  }
  // Quantized: random codes over the full range, random signed scales.
  for (auto &b : w) b = (uint8_t)rng.uniform_int(0, 255);
  size_t bb = ak_type_block_bytes(type);
  for (size_t off = 0; off < w.size(); off += bb) {
    uint16_t d = ak_f32_to_f16(rng.uniform(0.001f, 0.05f) * (rng.uniform_int(0, 1) ? 1 : -1));
    memcpy(&w[off], &d, 2);
    if (type == AK_TYPE_Q4_1) {
      uint16_t m = ak_f32_to_f16(rng.uniform(-0.4f, 0.4f));
      memcpy(&w[off + 2], &m, 2);
    }
  }
  return w;
}

std::vector<float> random_x(int64_t n_tok, int64_t n_cols, KnRng &rng) {
  std::vector<float> x = rng.floats(n_tok * n_cols, -1.0f, 1.0f);
  // Some blocks all zero (d = 0) and some large, as real activations have outliers.
  for (int64_t t = 0; t < n_tok; t++)
    for (int64_t b = 0; b < n_cols / 32; b++) {
      int r = rng.uniform_int(0, 9);
      for (int i = 0; i < 32 && b * 32 + i < n_cols; i++) {
        float &v = x[t * n_cols + b * 32 + i];
        if (r == 0) v = 0.0f;
        if (r == 1) v *= 50.0f;
      }
    }
  return x;
}

// The documented quantization of one token row (kn_cpu_internal.h): per 32-block,
// d = amax / 127, id = 1/d, q = nearest-even(x * id). Returns d*q per element.
std::vector<float> q8_values(const float *x, int64_t n_cols) {
  std::vector<float> out(n_cols);
  for (int64_t b = 0; b < n_cols / 32; b++) {
    float amax = 0.0f;
    for (int i = 0; i < 32; i++) amax = std::fmax(amax, std::fabs(x[b * 32 + i]));
    float d = amax / 127.0f;
    float id = d != 0.0f ? 1.0f / d : 0.0f;
    for (int i = 0; i < 32; i++) out[b * 32 + i] = d * std::nearbyint(x[b * 32 + i] * id);
  }
  return out;
}

bool is_quant(ak_ggml_type_t t) {
  return t == AK_TYPE_Q4_0 || t == AK_TYPE_Q4_1 || t == AK_TYPE_Q8_0;
}

void check_matmul(ak_ggml_type_t type, Shape s, int64_t n_tok, uint64_t seed) {
  KnRng rng(seed);
  std::vector<uint8_t> wbytes = random_weights(type, s.n_rows, s.n_cols, rng);
  std::vector<float> x = random_x(n_tok, s.n_cols, rng);
  std::vector<float> wf(s.n_rows * s.n_cols);
  size_t row_bytes = ak_type_row_bytes(type, s.n_cols);
  for (int64_t r = 0; r < s.n_rows; r++)
    ASSERT_EQ(ak_dequant_row(type, &wbytes[r * row_bytes], &wf[r * s.n_cols], s.n_cols), AK_OK);

  // References per (token, row): exact, with quantized x, and the two error scales.
  std::vector<double> ref(n_tok * s.n_rows), ref_q(n_tok * s.n_rows), bound_a(n_tok * s.n_rows),
      mag(n_tok * s.n_rows), mag_q(n_tok * s.n_rows);
  for (int64_t t = 0; t < n_tok; t++) {
    const float *xt = &x[t * s.n_cols];
    std::vector<float> xq = is_quant(type) ? q8_values(xt, s.n_cols) : std::vector<float>();
    for (int64_t r = 0; r < s.n_rows; r++) {
      const float *w = &wf[r * s.n_cols];
      double acc = 0, acc_q = 0, m = 0, m_q = 0, b_a = 0;
      for (int64_t k = 0; k < s.n_cols; k++) {
        acc += (double)w[k] * xt[k];
        m += std::fabs((double)w[k] * xt[k]);
        if (is_quant(type)) {
          acc_q += (double)w[k] * xq[k];
          m_q += std::fabs((double)w[k] * xq[k]);
        }
      }
      if (is_quant(type))
        for (int64_t b = 0; b < s.n_cols / 32; b++) {
          double amax = 0, wsum = 0;
          for (int i = 0; i < 32; i++) {
            amax = std::fmax(amax, std::fabs(xt[b * 32 + i]));
            wsum += std::fabs(w[b * 32 + i]);
          }
          b_a += amax / 254.0 * wsum;
        }
      ref[t * s.n_rows + r] = acc;
      ref_q[t * s.n_rows + r] = acc_q;
      bound_a[t * s.n_rows + r] = b_a;
      mag[t * s.n_rows + r] = m;
      mag_q[t * s.n_rows + r] = m_q;
    }
  }

  kn_weight_t w{type, s.n_rows, s.n_cols, wbytes.data()};
  size_t ws_bytes = kn_matmul_workspace_bytes(&w, n_tok);
  if (!is_quant(type)) EXPECT_EQ(ws_bytes, 0u);
  KnBuf ws(ws_bytes, 8);  // deliberately not 64-byte aligned
  for (const KnConfig &cfg : kn_test_configs()) {
    KnCpuPtr cpu = kn_test_cpu(cfg);
    std::vector<float> y(n_tok * s.n_rows, NAN);
    ak_err_t err{};
    ASSERT_EQ(kn_matmul(cpu.get(), &w, x.data(), n_tok, y.data(), ws.data(), ws_bytes, &err), AK_OK)
        << err.msg;
    int n_bad = 0;
    for (int64_t i = 0; i < n_tok * s.n_rows && n_bad < 5; i++) {
      // f32 accumulation: at most ~K roundings of the running sum.
      double fp = 1.2e-7 * (double)s.n_cols * (is_quant(type) ? mag_q[i] : mag[i]) + 1e-6;
      if (is_quant(type)) {
        double tol_a = bound_a[i] * 1.0001 + fp;
        double tol_b = 1e-5 * mag_q[i] + 1e-6;
        if (std::fabs(y[i] - ref[i]) > tol_a || std::fabs(y[i] - ref_q[i]) > tol_b) n_bad++;
        EXPECT_NEAR(y[i], ref[i], tol_a) << cfg.name() << " (a) at " << i;
        EXPECT_NEAR(y[i], ref_q[i], tol_b) << cfg.name() << " (b) at " << i;
      } else {
        if (std::fabs(y[i] - ref[i]) > fp) n_bad++;
        EXPECT_NEAR(y[i], ref[i], fp) << cfg.name() << " at " << i;
      }
    }
  }
}

const ak_ggml_type_t kAllTypes[] = {AK_TYPE_F32, AK_TYPE_F16, AK_TYPE_BF16,
                                    AK_TYPE_Q4_0, AK_TYPE_Q4_1, AK_TYPE_Q8_0};

class KnMatmulTest : public ::testing::TestWithParam<ak_ggml_type_t> {};

TEST_P(KnMatmulTest, OddShapesAllTokenCounts) {
  ak_ggml_type_t type = GetParam();
  // 1 block; 3 blocks (partial group); 18 blocks (SmolLM2's 576); 1 row; 13 rows
  // (a partial row tile); 129 blocks (a second and third K chunk).
  const Shape shapes[] = {{1, 32}, {7, 96}, {13, 576}, {37, 160}, {6, 4128}};
  uint64_t seed = 1000 + type;
  for (Shape s : shapes)
    for (int64_t n_tok : {1, 2, 3, 4, 5, 17, 97}) {
      SCOPED_TRACE(testing::Message() << ak_type_name(type) << " rows=" << s.n_rows
                                      << " cols=" << s.n_cols << " n_tok=" << n_tok);
      check_matmul(type, s, n_tok, seed++);
    }
}

TEST_P(KnMatmulTest, ModelShapes) {
  ak_ggml_type_t type = GetParam();
  uint64_t seed = 2000 + type;
  for (Shape s : {Shape{192, 576}, Shape{576, 1536}, Shape{1536, 576}})
    for (int64_t n_tok : {1, 4, 300}) {
      SCOPED_TRACE(testing::Message() << ak_type_name(type) << " rows=" << s.n_rows
                                      << " cols=" << s.n_cols << " n_tok=" << n_tok);
      check_matmul(type, s, n_tok, seed++);
    }
}

INSTANTIATE_TEST_SUITE_P(Types, KnMatmulTest, ::testing::ValuesIn(kAllTypes),
                         [](const testing::TestParamInfo<ak_ggml_type_t> &i) {
                           return std::string(ak_type_name(i.param));
                         });

TEST(KnMatmulFloat, OddColumnCounts) {
  for (ak_ggml_type_t type : {AK_TYPE_F32, AK_TYPE_F16, AK_TYPE_BF16})
    for (int64_t cols : {1, 7, 17, 33, 1000}) {
      SCOPED_TRACE(testing::Message() << ak_type_name(type) << " cols=" << cols);
      check_matmul(type, Shape{5, cols}, 6, 3000 + cols);
    }
}

// kn_matmul_multi computes exactly what separate kn_matmul calls do (same kernels,
// same quantized activations, row tiles on the same boundaries).
TEST(KnMatmulMulti, MatchesSeparateCalls) {
  KnRng rng(77);
  const int64_t cols = 576;
  const ak_ggml_type_t types[] = {AK_TYPE_Q4_1, AK_TYPE_Q8_0, AK_TYPE_Q4_1, AK_TYPE_F16};
  const int64_t rows[] = {576, 192, 37, 20};
  std::vector<std::vector<uint8_t>> wb;
  std::vector<kn_weight_t> w;
  for (int i = 0; i < 4; i++) wb.push_back(random_weights(types[i], rows[i], cols, rng));
  for (int i = 0; i < 4; i++) w.push_back(kn_weight_t{types[i], rows[i], cols, wb[i].data()});
  const kn_weight_t *wp[4] = {&w[0], &w[1], &w[2], &w[3]};
  for (int64_t n_tok : {1, 3, 17, 97}) {
    std::vector<float> x = random_x(n_tok, cols, rng);
    size_t ws_bytes = kn_matmul_multi_workspace_bytes(4, wp, n_tok);
    EXPECT_EQ(ws_bytes, kn_matmul_workspace_bytes(&w[0], n_tok));
    std::vector<uint8_t> ws(ws_bytes);
    for (const KnConfig &cfg : kn_test_configs()) {
      KnCpuPtr cpu = kn_test_cpu(cfg);
      std::vector<std::vector<float>> y(4), y1(4);
      float *yp[4];
      for (int i = 0; i < 4; i++) {
        y[i].assign(n_tok * rows[i], NAN);
        y1[i].assign(n_tok * rows[i], NAN);
        yp[i] = y[i].data();
      }
      ak_err_t err{};
      ASSERT_EQ(kn_matmul_multi(cpu.get(), 4, wp, x.data(), n_tok, yp, ws.data(), ws.size(), &err), AK_OK)
          << err.msg;
      for (int i = 0; i < 4; i++) {
        ASSERT_EQ(kn_matmul(cpu.get(), &w[i], x.data(), n_tok, y1[i].data(), ws.data(), ws.size(), &err),
                  AK_OK) << err.msg;
        for (size_t k = 0; k < y[i].size(); k++)
          ASSERT_EQ(y[i][k], y1[i][k]) << cfg.name() << " weight " << i << " n_tok " << n_tok << " at " << k;
      }
    }
  }
}

TEST(KnMatmulMulti, BadArguments) {
  KnCpuPtr cpu = kn_test_cpu(2);
  std::vector<uint8_t> a(20 * 2 * 8), b(20 * 3 * 8);
  kn_weight_t w0{AK_TYPE_Q4_1, 8, 64, a.data()}, w1{AK_TYPE_Q4_1, 8, 96, b.data()};
  const kn_weight_t *wp[2] = {&w0, &w1};
  std::vector<float> x(96, 0.5f), y0(8), y1(8);
  float *yp[2] = {y0.data(), y1.data()};
  std::vector<uint8_t> ws(1 << 16);
  ak_err_t err{};
  EXPECT_EQ(kn_matmul_multi(cpu.get(), 2, wp, x.data(), 1, yp, ws.data(), ws.size(), &err),
            AK_ERR_INVALID_ARG);
  EXPECT_NE(std::string(err.msg).find("x is shared"), std::string::npos) << err.msg;
  EXPECT_EQ(kn_matmul_multi(cpu.get(), 0, wp, x.data(), 1, yp, ws.data(), ws.size(), &err),
            AK_ERR_INVALID_ARG);
  EXPECT_NE(std::string(err.msg).find("n_w=0"), std::string::npos) << err.msg;
  EXPECT_EQ(kn_matmul_multi(cpu.get(), KN_MATMUL_MULTI_MAX + 1, wp, x.data(), 1, yp, ws.data(),
                            ws.size(), &err),
            AK_ERR_INVALID_ARG);
  w1.n_cols = 64;
  yp[1] = nullptr;
  EXPECT_EQ(kn_matmul_multi(cpu.get(), 2, wp, x.data(), 1, yp, ws.data(), ws.size(), &err),
            AK_ERR_INVALID_ARG);
  EXPECT_NE(std::string(err.msg).find("y[1]=NULL"), std::string::npos) << err.msg;
  yp[1] = y1.data();
  EXPECT_EQ(kn_matmul_multi(cpu.get(), 2, wp, x.data(), 1, yp, ws.data(), ws.size(), &err), AK_OK)
      << err.msg;
}

// ---- bad arguments: each class gets its own case, status and message ----

class KnMatmulArgs : public ::testing::Test {
 protected:
  KnCpuPtr cpu = kn_test_cpu(1);
  std::vector<uint8_t> wbytes = std::vector<uint8_t>(20 * 2 * 4);
  std::vector<float> x = std::vector<float>(64 * 3, 0.5f);
  std::vector<float> y = std::vector<float>(64 * 3);
  std::vector<uint8_t> ws = std::vector<uint8_t>(1 << 16);
  kn_weight_t w{AK_TYPE_Q4_1, 4, 64, nullptr};
  ak_err_t err{};
  void SetUp() override { w.data = wbytes.data(); }
  ak_status_t run(int64_t n_tok = 1) {
    return kn_matmul(cpu.get(), &w, x.data(), n_tok, y.data(), ws.data(), ws.size(), &err);
  }
};

TEST_F(KnMatmulArgs, ValidCallSucceeds) { EXPECT_EQ(run(), AK_OK) << err.msg; }

TEST_F(KnMatmulArgs, NullPointers) {
  EXPECT_EQ(kn_matmul(nullptr, &w, x.data(), 1, y.data(), ws.data(), ws.size(), &err),
            AK_ERR_INVALID_ARG);
  EXPECT_NE(std::string(err.msg).find("NULL"), std::string::npos) << err.msg;
  EXPECT_EQ(kn_matmul(cpu.get(), nullptr, x.data(), 1, y.data(), ws.data(), ws.size(), &err),
            AK_ERR_INVALID_ARG);
  EXPECT_EQ(kn_matmul(cpu.get(), &w, nullptr, 1, y.data(), ws.data(), ws.size(), &err),
            AK_ERR_INVALID_ARG);
  EXPECT_EQ(kn_matmul(cpu.get(), &w, x.data(), 1, nullptr, ws.data(), ws.size(), &err),
            AK_ERR_INVALID_ARG);
  w.data = nullptr;
  EXPECT_EQ(run(), AK_ERR_INVALID_ARG);
  EXPECT_NE(std::string(err.msg).find("weight data"), std::string::npos) << err.msg;
}

TEST_F(KnMatmulArgs, NonPositiveSizes) {
  EXPECT_EQ(run(0), AK_ERR_INVALID_ARG);
  EXPECT_NE(std::string(err.msg).find("n_tok=0"), std::string::npos) << err.msg;
  w.n_rows = 0;
  EXPECT_EQ(run(), AK_ERR_INVALID_ARG);
  w.n_rows = 4;
  w.n_cols = -32;
  EXPECT_EQ(run(), AK_ERR_INVALID_ARG);
  EXPECT_NE(std::string(err.msg).find("n_cols=-32"), std::string::npos) << err.msg;
}

TEST_F(KnMatmulArgs, PartialBlock) {
  w.n_cols = 48;
  EXPECT_EQ(run(), AK_ERR_INVALID_ARG);
  EXPECT_NE(std::string(err.msg).find("multiple of 32"), std::string::npos) << err.msg;
}

TEST_F(KnMatmulArgs, UnsupportedTypes) {
  w.type = AK_TYPE_Q8_1;  // an activation format, not a weight format
  EXPECT_EQ(run(), AK_ERR_UNSUPPORTED);
  EXPECT_NE(std::string(err.msg).find("not supported"), std::string::npos) << err.msg;
  w.type = (ak_ggml_type_t)99;
  EXPECT_EQ(run(), AK_ERR_UNSUPPORTED);
  EXPECT_NE(std::string(err.msg).find("99"), std::string::npos) << err.msg;
}

TEST_F(KnMatmulArgs, WorkspaceTooSmall) {
  size_t need = kn_matmul_workspace_bytes(&w, 3);
  EXPECT_GT(need, 0u);
  EXPECT_EQ(kn_matmul(cpu.get(), &w, x.data(), 3, y.data(), ws.data(), need - 1, &err),
            AK_ERR_INVALID_ARG);
  EXPECT_NE(std::string(err.msg).find("workspace"), std::string::npos) << err.msg;
  EXPECT_EQ(kn_matmul(cpu.get(), &w, x.data(), 3, y.data(), nullptr, need, &err),
            AK_ERR_INVALID_ARG);
  EXPECT_EQ(kn_matmul(cpu.get(), &w, x.data(), 3, y.data(), ws.data(), need, &err), AK_OK)
      << err.msg;
}

TEST_F(KnMatmulArgs, WorkspaceBytesOfBadArgsIsZero) {
  EXPECT_EQ(kn_matmul_workspace_bytes(nullptr, 1), 0u);
  EXPECT_EQ(kn_matmul_workspace_bytes(&w, 0), 0u);
}

}  // namespace
