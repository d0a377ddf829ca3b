// The small ops (embedding, RMSNorm, add, SwiGLU, RoPE, KV store, argmax) against
// double-precision references, on every ISA and thread count, plus bad arguments.
#include <cmath>
#include <cstring>

#include "kn_test_util.h"

namespace {

bool has(const ak_err_t &err, const char *s) { return std::string(err.msg).find(s) != std::string::npos; }

// ---- context ----

TEST(KnCpu, CreateDetectAndSetIsa) {
  ak_err_t err{};
  kn_cpu_t *c = nullptr;
  EXPECT_EQ(kn_cpu_create(-1, &err, &c), AK_ERR_INVALID_ARG);
  EXPECT_TRUE(has(err, "n_threads=-1")) << err.msg;
  EXPECT_EQ(c, nullptr);
  EXPECT_EQ(kn_cpu_create(1, &err, nullptr), AK_ERR_INVALID_ARG);
  KnCpuPtr cpu = kn_test_cpu(0);  // one per online CPU
  EXPECT_GE(kn_cpu_n_threads(cpu.get()), 1);
  kn_isa_t max_isa = kn_cpu_detect_isa();
  EXPECT_EQ(kn_cpu_isa(cpu.get()), max_isa);
  for (int isa = KN_ISA_PORTABLE; isa <= KN_ISA_AVX512; isa++) {
    ak_status_t want = isa <= (int)max_isa ? AK_OK : AK_ERR_UNSUPPORTED;
    EXPECT_EQ(kn_cpu_set_isa(cpu.get(), (kn_isa_t)isa), want) << kn_isa_name((kn_isa_t)isa);
  }
  EXPECT_EQ(kn_cpu_set_isa(cpu.get(), (kn_isa_t)7), AK_ERR_INVALID_ARG);
  EXPECT_EQ(kn_cpu_set_isa(nullptr, KN_ISA_PORTABLE), AK_ERR_INVALID_ARG);
  EXPECT_STREQ(kn_isa_name(KN_ISA_PORTABLE), "portable");
  EXPECT_STREQ(kn_isa_name(KN_ISA_AVX2), "avx2");
  EXPECT_STREQ(kn_isa_name(KN_ISA_AVX512), "avx512");
  EXPECT_STREQ(kn_isa_name((kn_isa_t)9), "unknown");
  kn_cpu_destroy(nullptr);
#if defined(__x86_64__)
  if (__builtin_cpu_supports("avx512vnni") && __builtin_cpu_supports("avx512vbmi"))
    EXPECT_EQ(max_isa, KN_ISA_AVX512);
  else if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma"))
    EXPECT_EQ(max_isa, KN_ISA_AVX2);
#endif
}

// ---- embedding ----

TEST(KnEmbed, EveryTypeMatchesDequant) {
  KnRng rng(1);
  const int64_t vocab = 37, dim = 96;
  for (ak_ggml_type_t type : {AK_TYPE_F32, AK_TYPE_F16, AK_TYPE_BF16, AK_TYPE_Q4_0, AK_TYPE_Q4_1,
                              AK_TYPE_Q8_0}) {
    size_t rb = ak_type_row_bytes(type, dim);
    std::vector<uint8_t> table(rb * vocab);
    for (auto &b : table) b = (uint8_t)rng.uniform_int(0, 255);
    if (type == AK_TYPE_F32)  // keep floats finite
      for (int64_t i = 0; i < vocab * dim; i++) {
        float v = rng.uniform(-1, 1);
        memcpy(&table[i * 4], &v, 4);
      }
    if (type == AK_TYPE_F16 || type == AK_TYPE_BF16)
      for (int64_t i = 0; i < vocab * dim; i++) {
        float v = rng.uniform(-1, 1);
        uint16_t h = type == AK_TYPE_F16 ? ak_f32_to_f16(v) : ak_f32_to_bf16(v);
        memcpy(&table[i * 2], &h, 2);
      }
    if (type == AK_TYPE_Q4_0 || type == AK_TYPE_Q4_1 || type == AK_TYPE_Q8_0)
      for (size_t off = 0; off < table.size(); off += ak_type_block_bytes(type)) {
        uint16_t d = ak_f32_to_f16(rng.uniform(-0.1f, 0.1f));
        memcpy(&table[off], &d, 2);
        if (type == AK_TYPE_Q4_1) memcpy(&table[off + 2], &d, 2);
      }
    kn_weight_t t{type, vocab, dim, table.data()};
    for (int64_t n_tok : {1, 17, 400}) {
      std::vector<int32_t> ids(n_tok);
      for (auto &id : ids) id = rng.uniform_int(0, vocab - 1);
      for (const KnConfig &cfg : kn_test_configs()) {
        KnCpuPtr cpu = kn_test_cpu(cfg);
        std::vector<float> out(n_tok * dim, NAN), want(dim);
        ak_err_t err{};
        ASSERT_EQ(kn_embed(cpu.get(), &t, ids.data(), n_tok, out.data(), &err), AK_OK) << err.msg;
        for (int64_t i = 0; i < n_tok; i++) {
          ASSERT_EQ(ak_dequant_row(type, &table[ids[i] * rb], want.data(), dim), AK_OK);
          ASSERT_EQ(memcmp(want.data(), &out[i * dim], dim * sizeof(float)), 0)
              << ak_type_name(type) << " " << cfg.name() << " token " << i;
        }
      }
    }
  }
}

TEST(KnEmbed, BadArguments) {
  KnCpuPtr cpu = kn_test_cpu(1);
  std::vector<float> table(4 * 32), out(32 * 2);
  kn_weight_t t{AK_TYPE_F32, 4, 32, table.data()};
  int32_t ids[2] = {0, 4};
  ak_err_t err{};
  EXPECT_EQ(kn_embed(cpu.get(), &t, ids, 2, out.data(), &err), AK_ERR_RANGE);
  EXPECT_TRUE(has(err, "ids[1]=4")) << err.msg;
  ids[1] = -1;
  EXPECT_EQ(kn_embed(cpu.get(), &t, ids, 2, out.data(), &err), AK_ERR_RANGE);
  EXPECT_EQ(kn_embed(cpu.get(), &t, ids, 0, out.data(), &err), AK_ERR_INVALID_ARG);
  EXPECT_EQ(kn_embed(cpu.get(), nullptr, ids, 1, out.data(), &err), AK_ERR_INVALID_ARG);
  EXPECT_TRUE(has(err, "NULL")) << err.msg;
  EXPECT_EQ(kn_embed(cpu.get(), &t, ids, 1, nullptr, &err), AK_ERR_INVALID_ARG);
  t.type = AK_TYPE_Q8_1;
  EXPECT_EQ(kn_embed(cpu.get(), &t, ids, 1, out.data(), &err), AK_ERR_UNSUPPORTED);
  EXPECT_TRUE(has(err, "not supported")) << err.msg;
  t.type = AK_TYPE_Q4_1;
  t.n_cols = 40;
  EXPECT_EQ(kn_embed(cpu.get(), &t, ids, 1, out.data(), &err), AK_ERR_INVALID_ARG);
  EXPECT_TRUE(has(err, "multiple of 32")) << err.msg;
}

// ---- RMSNorm ----

TEST(KnRmsnorm, MatchesDouble) {
  KnRng rng(2);
  for (int64_t dim : {1, 7, 64, 576, 1000})
    for (int64_t n_tok : {1, 17, 97}) {
      std::vector<float> x = rng.floats(n_tok * dim, -3, 3), w = rng.floats(dim, -2, 2);
      for (const KnConfig &cfg : kn_test_configs()) {
        KnCpuPtr cpu = kn_test_cpu(cfg);
        std::vector<float> out(n_tok * dim);
        ASSERT_EQ(kn_rmsnorm(cpu.get(), x.data(), w.data(), n_tok, dim, 1e-5f, out.data()), AK_OK);
        std::vector<float> inplace = x;  // aliasing allowed
        ASSERT_EQ(kn_rmsnorm(cpu.get(), inplace.data(), w.data(), n_tok, dim, 1e-5f, inplace.data()),
                  AK_OK);
        for (int64_t t = 0; t < n_tok; t++) {
          double ss = 0;
          for (int64_t i = 0; i < dim; i++) ss += (double)x[t * dim + i] * x[t * dim + i];
          double scale = 1.0 / std::sqrt(ss / dim + 1e-5);
          for (int64_t i = 0; i < dim; i++) {
            double want = x[t * dim + i] * scale * w[i];
            // A few f32 roundings (x*x, mean, sqrt, divide, two products): ~6 ulp.
            ASSERT_NEAR(out[t * dim + i], want, 8e-7 * std::fabs(want) + 1e-30) << cfg.name();
            ASSERT_EQ(out[t * dim + i], inplace[t * dim + i]);
          }
        }
      }
    }
}

TEST(KnRmsnorm, BadArguments) {
  KnCpuPtr cpu = kn_test_cpu(1);
  float x[4] = {1, 2, 3, 4}, w[4] = {1, 1, 1, 1}, out[4];
  EXPECT_EQ(kn_rmsnorm(cpu.get(), nullptr, w, 1, 4, 1e-5f, out), AK_ERR_INVALID_ARG);
  EXPECT_EQ(kn_rmsnorm(cpu.get(), x, nullptr, 1, 4, 1e-5f, out), AK_ERR_INVALID_ARG);
  EXPECT_EQ(kn_rmsnorm(cpu.get(), x, w, 0, 4, 1e-5f, out), AK_ERR_INVALID_ARG);
  EXPECT_EQ(kn_rmsnorm(cpu.get(), x, w, 1, 0, 1e-5f, out), AK_ERR_INVALID_ARG);
  EXPECT_EQ(kn_rmsnorm(cpu.get(), x, w, 1, 4, -1.0f, out), AK_ERR_INVALID_ARG);
  EXPECT_EQ(kn_rmsnorm(nullptr, x, w, 1, 4, 1e-5f, out), AK_ERR_INVALID_ARG);
}

// ---- add and SwiGLU ----

TEST(KnElementwise, AddAndSiluMul) {
  KnRng rng(3);
  for (int64_t n : {1, 17, 97, 97 * 1536 + 5}) {
    std::vector<float> a = rng.floats(n, -10, 10), b = rng.floats(n, -10, 10);
    a[0] = -120.0f;  // exp(-x) past the clamp
    if (n > 1) a[1] = 95.0f;
    for (const KnConfig &cfg : kn_test_configs()) {
      KnCpuPtr cpu = kn_test_cpu(cfg);
      std::vector<float> sum = a;
      kn_add(cpu.get(), sum.data(), b.data(), n);
      for (int64_t i = 0; i < n; i++) ASSERT_EQ(sum[i], a[i] + b[i]);
      std::vector<float> out(n), inplace = a;
      kn_silu_mul(cpu.get(), a.data(), b.data(), out.data(), n);
      kn_silu_mul(cpu.get(), inplace.data(), b.data(), inplace.data(), n);  // out aliases gate
      for (int64_t i = 0; i < n; i++) {
        double g = a[i], want = g / (1.0 + std::exp(-g)) * b[i];
        // exp to ~2 ulp, then a divide and a multiply: 4e-7 relative; tiny absolute
        // slack where silu underflows (g << 0).
        ASSERT_NEAR(out[i], want, 4e-7 * std::fabs(want) + 1e-30) << cfg.name() << " g=" << g;
        ASSERT_EQ(out[i], inplace[i]);
      }
    }
  }
}

// ---- RoPE ----

void rope_ref(std::vector<float> &x, const std::vector<int32_t> &pos, int n_heads, int head_dim,
              int rot_dims, double base, double fscale, kn_rope_mode_t mode) {
  int64_t n_tok = pos.size();
  for (int64_t t = 0; t < n_tok; t++)
    for (int h = 0; h < n_heads; h++) {
      float *v = &x[(t * n_heads + h) * head_dim];
      for (int i = 0; i < rot_dims / 2; i++) {
        double th = pos[t] * fscale * std::pow(base, -2.0 * i / rot_dims);
        int i0 = mode == KN_ROPE_NEOX ? i : 2 * i, i1 = mode == KN_ROPE_NEOX ? i + rot_dims / 2 : 2 * i + 1;
        double x0 = v[i0], x1 = v[i1];
        v[i0] = (float)(x0 * std::cos(th) - x1 * std::sin(th));
        v[i1] = (float)(x0 * std::sin(th) + x1 * std::cos(th));
      }
    }
}

TEST(KnRope, NormAndNeoxMatchDouble) {
  KnRng rng(4);
  struct Case {
    int n_heads, head_dim, rot_dims;
    float base, fscale;
  };
  for (Case c : {Case{9, 64, 64, 100000.0f, 1.0f}, Case{3, 64, 32, 10000.0f, 0.25f},
                 Case{2, 6, 6, 500.0f, 1.0f}})
    for (kn_rope_mode_t mode : {KN_ROPE_NORM, KN_ROPE_NEOX})
      for (int64_t n_tok : {1, 17, 97}) {
        std::vector<int32_t> pos(n_tok);
        for (auto &p : pos) p = rng.uniform_int(0, 70000);
        pos[0] = 0;
        std::vector<float> x0 = rng.floats(n_tok * c.n_heads * c.head_dim, -2, 2), want = x0;
        rope_ref(want, pos, c.n_heads, c.head_dim, c.rot_dims, c.base, c.fscale, mode);
        for (const KnConfig &cfg : kn_test_configs()) {
          KnCpuPtr cpu = kn_test_cpu(cfg);
          std::vector<float> x = x0;
          kn_rope_args_t a{x.data(), pos.data(), n_tok, c.n_heads, c.head_dim, c.rot_dims,
                           c.base,   c.fscale,   mode};
          ak_err_t err{};
          ASSERT_EQ(kn_rope(cpu.get(), &a, &err), AK_OK) << err.msg;
          for (size_t i = 0; i < x.size(); i++)
            // float sin/cos of the reduced angle (~1e-7) and two products.
            ASSERT_NEAR(x[i], want[i], 1e-6 * (1 + std::fabs(want[i]))) << cfg.name() << " i=" << i;
        }
      }
}

TEST(KnRope, BadArguments) {
  KnCpuPtr cpu = kn_test_cpu(1);
  std::vector<float> x(64);
  int32_t pos = 3;
  kn_rope_args_t a{x.data(), &pos, 1, 1, 64, 64, 10000.0f, 1.0f, KN_ROPE_NORM};
  ak_err_t err{};
  ASSERT_EQ(kn_rope(cpu.get(), &a, &err), AK_OK);
  kn_rope_args_t b = a;
  b.rot_dims = 63;
  EXPECT_EQ(kn_rope(cpu.get(), &b, &err), AK_ERR_INVALID_ARG);
  EXPECT_TRUE(has(err, "rot_dims=63")) << err.msg;
  b = a;
  b.rot_dims = 66;
  EXPECT_EQ(kn_rope(cpu.get(), &b, &err), AK_ERR_INVALID_ARG);
  b = a;
  b.mode = (kn_rope_mode_t)1;
  EXPECT_EQ(kn_rope(cpu.get(), &b, &err), AK_ERR_UNSUPPORTED);
  EXPECT_TRUE(has(err, "mode 1")) << err.msg;
  b = a;
  b.freq_base = 0.0f;
  EXPECT_EQ(kn_rope(cpu.get(), &b, &err), AK_ERR_INVALID_ARG);
  EXPECT_TRUE(has(err, "freq_base")) << err.msg;
  b = a;
  b.pos = nullptr;
  EXPECT_EQ(kn_rope(cpu.get(), &b, &err), AK_ERR_INVALID_ARG);
  b = a;
  b.n_tok = 0;
  EXPECT_EQ(kn_rope(cpu.get(), &b, &err), AK_ERR_INVALID_ARG);
  EXPECT_EQ(kn_rope(cpu.get(), nullptr, &err), AK_ERR_INVALID_ARG);
}

// ---- argmax ----

TEST(KnArgmax, FirstOfTies) {
  std::vector<float> v = {1, 5, 3, 5, -2};
  EXPECT_EQ(kn_argmax(v.data(), 5), 1);
  EXPECT_EQ(kn_argmax(v.data(), 1), 0);
  EXPECT_EQ(kn_argmax(v.data(), 0), -1);
  EXPECT_EQ(kn_argmax(nullptr, 3), -1);
  KnRng rng(5);
  std::vector<float> big = rng.floats(49152, -5, 5);
  big[40000] = 9.0f;
  EXPECT_EQ(kn_argmax(big.data(), 49152), 40000);
}

}  // namespace
