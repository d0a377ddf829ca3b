// Tests for common/ak_quant.c: the type table, f16/bf16 conversions (exhaustive over
// all 2^16 halves, specials, rounding ties), dequantization against hand-computed
// blocks and a naive reference, and the Q8_0/Q8_1 quantizers.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <random>
#include <vector>

extern "C" {
#include "ak_quant.h"
}

namespace {

uint32_t bits_of(float f) {
  uint32_t u;
  memcpy(&u, &f, 4);
  return u;
}
float from_bits(uint32_t u) {
  float f;
  memcpy(&f, &u, 4);
  return f;
}

// An f16 decoded from its definition (sign, 5-bit exponent, 10-bit mantissa), with
// double arithmetic: independent of the bit tricks under test.
double f16_by_definition(uint16_t h) {
  int sign = h >> 15, exp = (h >> 10) & 31, man = h & 1023;
  double v = exp == 0 ? std::ldexp(man, -24) : std::ldexp(1024 + man, exp - 25);
  if (exp == 31) v = man ? NAN : INFINITY;
  return sign ? -v : v;
}

}  // namespace

TEST(AkQuantTypes, TableMatchesGgml) {
  EXPECT_TRUE(ak_type_known(AK_TYPE_F32));
  EXPECT_TRUE(ak_type_known(AK_TYPE_BF16));
  EXPECT_TRUE(ak_type_known(AK_TYPE_Q8_1));
  for (int t : {-1, 4, 5, 6, 7, 10, 12, 29, 31, 1000}) EXPECT_FALSE(ak_type_known(t)) << t;

  EXPECT_STREQ(ak_type_name(AK_TYPE_Q4_1), "q4_1");
  EXPECT_STREQ(ak_type_name((ak_ggml_type_t)6), "unknown");

  struct {
    ak_ggml_type_t t;
    int64_t elems;
    size_t bytes;
  } cases[] = {{AK_TYPE_F32, 1, 4},   {AK_TYPE_F16, 1, 2},   {AK_TYPE_BF16, 1, 2},  {AK_TYPE_Q4_0, 32, 18},
               {AK_TYPE_Q4_1, 32, 20}, {AK_TYPE_Q8_0, 32, 34}, {AK_TYPE_Q8_1, 32, 36}};
  for (auto &c : cases) {
    EXPECT_EQ(ak_type_block_elems(c.t), c.elems) << ak_type_name(c.t);
    EXPECT_EQ(ak_type_block_bytes(c.t), c.bytes) << ak_type_name(c.t);
    EXPECT_EQ(ak_type_row_bytes(c.t, 64 * c.elems), 64 * c.bytes) << ak_type_name(c.t);
  }
  EXPECT_EQ(ak_type_block_elems((ak_ggml_type_t)6), 0);
  EXPECT_EQ(ak_type_block_bytes((ak_ggml_type_t)6), 0u);
}

TEST(AkQuantTypes, RowBytesRejectsPartialBlocksAndOverflow) {
  EXPECT_EQ(ak_type_row_bytes(AK_TYPE_Q4_0, 576), 576u / 32 * 18);
  EXPECT_EQ(ak_type_row_bytes(AK_TYPE_Q4_1, 48), 0u);
  EXPECT_EQ(ak_type_row_bytes(AK_TYPE_Q8_0, 33), 0u);
  EXPECT_EQ(ak_type_row_bytes(AK_TYPE_F32, -4), 0u);
  EXPECT_EQ(ak_type_row_bytes((ak_ggml_type_t)6, 32), 0u);
  // 2^62 f32 elements would be 2^64 bytes: must not wrap to a small size.
  EXPECT_EQ(ak_type_row_bytes(AK_TYPE_F32, INT64_C(1) << 62), 0u);
  EXPECT_EQ(ak_type_row_bytes(AK_TYPE_F32, 0), 0u);
}

TEST(AkQuantF16, DecodesKnownValues) {
  EXPECT_EQ(ak_f16_to_f32(0x3C00), 1.0f);
  EXPECT_EQ(ak_f16_to_f32(0xC000), -2.0f);
  EXPECT_EQ(ak_f16_to_f32(0x3800), 0.5f);
  EXPECT_EQ(ak_f16_to_f32(0x7BFF), 65504.0f);
  EXPECT_EQ(ak_f16_to_f32(0x0400), std::ldexp(1.0f, -14));  // smallest normal
  EXPECT_EQ(ak_f16_to_f32(0x0001), std::ldexp(1.0f, -24));  // smallest subnormal
  EXPECT_EQ(ak_f16_to_f32(0x03FF), std::ldexp(1023.0f, -24));
  EXPECT_EQ(bits_of(ak_f16_to_f32(0x8000)), 0x80000000u);  // -0 keeps its sign
  EXPECT_EQ(ak_f16_to_f32(0x7C00), INFINITY);
  EXPECT_EQ(ak_f16_to_f32(0xFC00), -INFINITY);
  EXPECT_TRUE(std::isnan(ak_f16_to_f32(0x7E00)));
  EXPECT_TRUE(std::isnan(ak_f16_to_f32(0x7C01)));  // signalling NaN stays NaN
  EXPECT_TRUE(std::signbit(ak_f16_to_f32(0xFE00)));
}

TEST(AkQuantF16, EveryHalfDecodesByDefinitionAndRoundTrips) {
  for (uint32_t h = 0; h < 65536; h++) {
    float f = ak_f16_to_f32((uint16_t)h);
    double want = f16_by_definition((uint16_t)h);
    if (std::isnan(want)) {
      ASSERT_TRUE(std::isnan(f)) << std::hex << h;
      // ggml keeps the payload's top bits and sign; re-encoding gives the canonical NaN.
      EXPECT_EQ(ak_f32_to_f16(f), (h & 0x8000) | 0x7E00) << std::hex << h;
      continue;
    }
    ASSERT_EQ((double)f, want) << std::hex << h;
    ASSERT_EQ(std::signbit(f), (h & 0x8000) != 0) << std::hex << h;
    ASSERT_EQ(ak_f32_to_f16(f), h) << std::hex << h;
  }
}

TEST(AkQuantF16, EncodesWithRoundToNearestEven) {
  EXPECT_EQ(ak_f32_to_f16(1.0f), 0x3C00);
  EXPECT_EQ(ak_f32_to_f16(1.0f + std::ldexp(1.0f, -11)), 0x3C00);      // tie -> even
  EXPECT_EQ(ak_f32_to_f16(1.0f + 3 * std::ldexp(1.0f, -11)), 0x3C02);  // tie -> even (up)
  EXPECT_EQ(ak_f32_to_f16(1.0f + std::ldexp(1.0f, -11) + std::ldexp(1.0f, -20)), 0x3C01);
  EXPECT_EQ(ak_f32_to_f16(65504.0f), 0x7BFF);
  EXPECT_EQ(ak_f32_to_f16(65519.0f), 0x7BFF);  // below the halfway point to 65536
  EXPECT_EQ(ak_f32_to_f16(65520.0f), 0x7C00);  // halfway rounds to even: inf
  EXPECT_EQ(ak_f32_to_f16(1e10f), 0x7C00);
  EXPECT_EQ(ak_f32_to_f16(-1e10f), 0xFC00);
  EXPECT_EQ(ak_f32_to_f16(INFINITY), 0x7C00);
  EXPECT_EQ(ak_f32_to_f16(std::ldexp(1.0f, -24)), 0x0001);
  EXPECT_EQ(ak_f32_to_f16(std::ldexp(1.0f, -25)), 0x0000);  // tie between 0 and 1 ulp -> 0
  EXPECT_EQ(ak_f32_to_f16(std::ldexp(1.5f, -25)), 0x0001);
  EXPECT_EQ(ak_f32_to_f16(std::ldexp(3.0f, -25)), 0x0002);  // tie -> even
  EXPECT_EQ(ak_f32_to_f16(1e-10f), 0x0000);
  EXPECT_EQ(ak_f32_to_f16(-1e-10f), 0x8000);
  EXPECT_EQ(ak_f32_to_f16(NAN), 0x7E00);
  EXPECT_EQ(ak_f32_to_f16(-NAN), 0xFE00);
  EXPECT_EQ(ak_f32_to_f16(from_bits(0x7F800001)), 0x7E00);  // signalling NaN
}

TEST(AkQuantF16, RandomFloatsRoundToTheNearestHalf) {
  std::mt19937 rng(7);
  std::uniform_real_distribution<float> mag(-30.0f, 17.0f);
  for (int i = 0; i < 200000; i++) {
    float f = std::exp2(mag(rng)) * (rng() & 1 ? -1.0f : 1.0f);
    uint16_t h = ak_f32_to_f16(f);
    double got = f16_by_definition(h);
    if (std::isinf(got)) {
      ASSERT_GE(std::fabs(f), 65520.0f) << f;
      continue;
    }
    // No other half is strictly closer (checks both neighbours).
    double err = std::fabs(got - f);
    uint16_t mag_bits = h & 0x7FFF;
    if (mag_bits < 0x7BFF) ASSERT_LE(err, std::fabs(f16_by_definition(h + 1) - f)) << f;
    if (mag_bits > 0) ASSERT_LE(err, std::fabs(f16_by_definition(h - 1) - f)) << f;
  }
}

TEST(AkQuantBf16, ConvertsLikeGgml) {
  EXPECT_EQ(ak_bf16_to_f32(0x3F80), 1.0f);
  EXPECT_EQ(ak_bf16_to_f32(0xC040), -3.0f);
  EXPECT_EQ(ak_f32_to_bf16(1.0f), 0x3F80);
  EXPECT_EQ(ak_f32_to_bf16(from_bits(0x3F808000)), 0x3F80);  // tie -> even (down)
  EXPECT_EQ(ak_f32_to_bf16(from_bits(0x3F818000)), 0x3F82);  // tie -> even (up)
  EXPECT_EQ(ak_f32_to_bf16(from_bits(0x3F808001)), 0x3F81);
  EXPECT_EQ(ak_f32_to_bf16(INFINITY), 0x7F80);
  EXPECT_EQ(ak_f32_to_bf16(-INFINITY), 0xFF80);
  EXPECT_EQ(ak_f32_to_bf16(from_bits(0x7F7FFFFF)), 0x7F80);  // FLT_MAX rounds to inf
  EXPECT_EQ(ak_f32_to_bf16(from_bits(0x7F800001)), 0x7FC0);  // NaN forced quiet
  EXPECT_EQ(ak_f32_to_bf16(from_bits(0xFFC12345)), 0xFFC1);  // payload top bits kept
  // Subnormals are rounded, not flushed (ggml since 2024).
  EXPECT_EQ(ak_f32_to_bf16(from_bits(0x00010000)), 0x0001);
  EXPECT_EQ(ak_f32_to_bf16(from_bits(0x00018000)), 0x0002);
  EXPECT_EQ(ak_f32_to_bf16(from_bits(0x00008000)), 0x0000);
  EXPECT_EQ(ak_f32_to_bf16(from_bits(0x80000001)), 0x8000);
  for (uint32_t h = 0; h < 65536; h++) {
    float f = ak_bf16_to_f32((uint16_t)h);
    ASSERT_EQ(bits_of(f), h << 16);
    if (std::isnan(f))
      ASSERT_EQ(ak_f32_to_bf16(f), h | 0x40) << std::hex << h;
    else
      ASSERT_EQ(ak_f32_to_bf16(f), h) << std::hex << h;
  }
}

TEST(AkQuantDequant, HandComputedBlocks) {
  ak_block_q4_0_t q40;
  q40.d = 0x3800;  // 0.5
  for (int j = 0; j < 16; j++) q40.qs[j] = (uint8_t)(j | ((15 - j) << 4));
  float y[32];
  ASSERT_EQ(ak_dequant_row(AK_TYPE_Q4_0, &q40, y, 32), AK_OK);
  EXPECT_EQ(y[0], -4.0f);    // (0 - 8) * 0.5
  EXPECT_EQ(y[8], 0.0f);     // (8 - 8) * 0.5
  EXPECT_EQ(y[15], 3.5f);    // (15 - 8) * 0.5
  EXPECT_EQ(y[16], 3.5f);    // high nibble of byte 0 is element 16
  EXPECT_EQ(y[31], -4.0f);

  ak_block_q4_1_t q41;
  q41.d = 0x4000;  // 2
  q41.m = 0xBC00;  // -1
  for (int j = 0; j < 16; j++) q41.qs[j] = (uint8_t)(j | ((15 - j) << 4));
  ASSERT_EQ(ak_dequant_row(AK_TYPE_Q4_1, &q41, y, 32), AK_OK);
  EXPECT_EQ(y[0], -1.0f);
  EXPECT_EQ(y[3], 5.0f);
  EXPECT_EQ(y[15], 29.0f);
  EXPECT_EQ(y[16], 29.0f);
  EXPECT_EQ(y[31], -1.0f);

  ak_block_q8_0_t q80;
  q80.d = 0x3400;  // 0.25
  for (int j = 0; j < 32; j++) q80.qs[j] = (int8_t)(j * 8 - 128);
  ASSERT_EQ(ak_dequant_row(AK_TYPE_Q8_0, &q80, y, 32), AK_OK);
  EXPECT_EQ(y[0], -32.0f);
  EXPECT_EQ(y[16], 0.0f);
  EXPECT_EQ(y[31], 30.0f);

  ak_block_q8_1_t q81;
  q81.d = 0x3C00;
  q81.s = 0x7C00;  // s is not used to dequantize
  for (int j = 0; j < 32; j++) q81.qs[j] = (int8_t)(-j);
  ASSERT_EQ(ak_dequant_row(AK_TYPE_Q8_1, &q81, y, 32), AK_OK);
  for (int j = 0; j < 32; j++) EXPECT_EQ(y[j], (float)-j);
}

namespace {

// The layouts read byte by byte from the header's description, not through the structs.
std::vector<float> naive_dequant(ak_ggml_type_t t, const std::vector<uint8_t> &src, int64_t n) {
  std::vector<float> out(n);
  auto half = [&](size_t off) { return (uint16_t)(src[off] | src[off + 1] << 8); };
  for (int64_t i = 0; i < n; i++) {
    int64_t b = i / 32, j = i % 32;
    switch (t) {
      case AK_TYPE_F32: memcpy(&out[i], &src[4 * i], 4); break;
      case AK_TYPE_F16: out[i] = (float)f16_by_definition(half(2 * i)); break;
      case AK_TYPE_BF16: out[i] = from_bits((uint32_t)half(2 * i) << 16); break;
      case AK_TYPE_Q4_0: {
        uint8_t q = src[b * 18 + 2 + j % 16];
        int v = (j < 16 ? q & 15 : q >> 4) - 8;
        out[i] = (float)(v * f16_by_definition(half(b * 18)));
        break;
      }
      case AK_TYPE_Q4_1: {
        uint8_t q = src[b * 20 + 4 + j % 16];
        int v = j < 16 ? q & 15 : q >> 4;
        out[i] = (float)v * (float)f16_by_definition(half(b * 20)) + (float)f16_by_definition(half(b * 20 + 2));
        break;
      }
      case AK_TYPE_Q8_0: out[i] = (float)(int8_t)src[b * 34 + 2 + j] * (float)f16_by_definition(half(b * 34)); break;
      case AK_TYPE_Q8_1: out[i] = (float)(int8_t)src[b * 36 + 4 + j] * (float)f16_by_definition(half(b * 36)); break;
    }
  }
  return out;
}

}  // namespace

TEST(AkQuantDequant, MatchesNaiveReferenceOnRandomBlocks) {
  std::mt19937 rng(42);
  for (ak_ggml_type_t t : {AK_TYPE_F32, AK_TYPE_F16, AK_TYPE_BF16, AK_TYPE_Q4_0, AK_TYPE_Q4_1, AK_TYPE_Q8_0,
                           AK_TYPE_Q8_1}) {
    for (int64_t n_blocks : {1, 3, 17}) {
      int64_t n = n_blocks * 32;
      std::vector<uint8_t> src(ak_type_row_bytes(t, n) + 1);
      for (auto &b : src) b = (uint8_t)rng();
      // Clear the top exponent bits of every float and scale so no NaN compares
      // unequal to itself (NaN handling is tested on its own above).
      size_t bb = ak_type_block_bytes(t);
      if (ak_type_block_elems(t) == 1) {
        for (int64_t i = 0; i < n; i++) src[i * bb + bb - 1] &= 0x3F;
      } else {
        for (int64_t b = 0; b < n_blocks; b++) {
          src[b * bb + 1] &= 0x3B;
          if (t == AK_TYPE_Q4_1) src[b * bb + 3] &= 0xBB;
        }
      }
      // Misaligned source: blocks inside a mapping sit at any byte offset.
      std::vector<uint8_t> shifted(src.size());
      memcpy(shifted.data() + 1, src.data(), src.size() - 1);
      std::vector<float> got(n);
      ASSERT_EQ(ak_dequant_row(t, shifted.data() + 1, got.data(), n), AK_OK);
      std::vector<float> want = naive_dequant(t, src, n);
      for (int64_t i = 0; i < n; i++)
        ASSERT_EQ(bits_of(got[i]), bits_of(want[i])) << ak_type_name(t) << " n=" << n << " i=" << i;
    }
  }
}

TEST(AkQuantDequant, RejectsBadLengthsAndTypes) {
  float y[64];
  uint8_t src[64 * 4] = {0};
  EXPECT_EQ(ak_dequant_row(AK_TYPE_Q4_0, src, y, 33), AK_ERR_INVALID_ARG);
  EXPECT_EQ(ak_dequant_row(AK_TYPE_Q8_0, src, y, -32), AK_ERR_INVALID_ARG);
  EXPECT_EQ(ak_dequant_row((ak_ggml_type_t)6, src, y, 32), AK_ERR_UNSUPPORTED);
  EXPECT_EQ(ak_dequant_row(AK_TYPE_F32, src, y, 0), AK_OK);
  EXPECT_EQ(ak_dequant_row(AK_TYPE_F16, src, y, 3), AK_OK);  // plain types have 1-element blocks
}

namespace {

// ggml's quantize_row_q8_1_ref transcribed in C++ (float arithmetic throughout).
void ref_q8(const float *x, int8_t *qs, float *d_p, int *sum_p) {
  float amax = 0.0f;
  for (int j = 0; j < 32; j++) amax = amax > std::fabs(x[j]) ? amax : std::fabs(x[j]);
  const float d = amax / 127;
  const float id = d ? 1.0f / d : 0.0f;
  int sum = 0;
  for (int j = 0; j < 32; j++) {
    qs[j] = (int8_t)std::roundf(x[j] * id);
    sum += qs[j];
  }
  *d_p = d;
  *sum_p = sum;
}

}  // namespace

TEST(AkQuantQ8, Q8_0MatchesReferenceAndBoundsError) {
  std::mt19937 rng(3);
  std::normal_distribution<float> dist(0.0f, 1.0f);
  const int64_t n = 32 * 97;
  std::vector<float> x(n);
  for (int64_t i = 0; i < n; i++) x[i] = dist(rng) * (float)(1 + i / 32);  // scale varies by block
  std::vector<ak_block_q8_0_t> q(n / 32);
  ak_quantize_row_q8_0(x.data(), q.data(), n);
  std::vector<float> y(n);
  ASSERT_EQ(ak_dequant_row(AK_TYPE_Q8_0, q.data(), y.data(), n), AK_OK);
  for (int64_t b = 0; b < n / 32; b++) {
    int8_t qs[32];
    float d;
    int sum;
    ref_q8(&x[b * 32], qs, &d, &sum);
    ASSERT_EQ(q[b].d, ak_f32_to_f16(d)) << b;
    ASSERT_EQ(memcmp(q[b].qs, qs, 32), 0) << b;
    int maxq = 0;
    for (int j = 0; j < 32; j++) maxq = std::max(maxq, std::abs((int)q[b].qs[j]));
    EXPECT_EQ(maxq, 127) << b;  // the largest magnitude maps to +-127
    // Half a step of rounding plus the f16 rounding of d (relative 2^-11) times 127.
    const float bound = d * (0.5f + 127.0f / 2048.0f) + 1e-6f;
    for (int j = 0; j < 32; j++) ASSERT_LE(std::fabs(y[b * 32 + j] - x[b * 32 + j]), bound) << b << " " << j;
  }
}

TEST(AkQuantQ8, Q8_1StoresScaledSum) {
  std::mt19937 rng(5);
  std::uniform_real_distribution<float> dist(-3.0f, 1.0f);  // skewed so sums are not ~0
  const int64_t n = 32 * 17;
  std::vector<float> x(n);
  for (auto &v : x) v = dist(rng);
  std::vector<ak_block_q8_1_t> q(n / 32);
  ak_quantize_row_q8_1(x.data(), q.data(), n);
  std::vector<float> y(n);
  ASSERT_EQ(ak_dequant_row(AK_TYPE_Q8_1, q.data(), y.data(), n), AK_OK);
  for (int64_t b = 0; b < n / 32; b++) {
    int8_t qs[32];
    float d;
    int sum;
    ref_q8(&x[b * 32], qs, &d, &sum);
    ASSERT_EQ(q[b].d, ak_f32_to_f16(d)) << b;
    ASSERT_EQ(memcmp(q[b].qs, qs, 32), 0) << b;
    ASSERT_EQ(q[b].s, ak_f32_to_f16((float)sum * d)) << b;
    EXPECT_LT(sum, 0);
    const float bound = d * (0.5f + 127.0f / 2048.0f) + 1e-6f;
    for (int j = 0; j < 32; j++) ASSERT_LE(std::fabs(y[b * 32 + j] - x[b * 32 + j]), bound);
  }
}

TEST(AkQuantQ8, ZeroBlockHasZeroScale) {
  float x[64] = {0};
  x[40] = -2.54f;  // second block non-zero
  ak_block_q8_0_t q0[2];
  ak_block_q8_1_t q1[2];
  ak_quantize_row_q8_0(x, q0, 64);
  ak_quantize_row_q8_1(x, q1, 64);
  EXPECT_EQ(q0[0].d, 0);
  EXPECT_EQ(q1[0].d, 0);
  EXPECT_EQ(q1[0].s, 0);
  for (int j = 0; j < 32; j++) EXPECT_EQ(q0[0].qs[j], 0);
  EXPECT_EQ(q0[1].qs[8], -127);
  EXPECT_EQ(q1[1].qs[8], -127);
  EXPECT_EQ(q0[1].d, ak_f32_to_f16(2.54f / 127));
  EXPECT_EQ(q1[1].s, ak_f32_to_f16(-127 * (2.54f / 127)));
}

TEST(AkQuantQ8, TiesRoundAwayFromZeroLikeRoundf) {
  // amax 127 makes d = 1 and id = 1 exactly, so x * id lands on the .5 ties.
  float x[32] = {127.0f, 2.5f, -2.5f, 0.5f, -0.5f, 3.5f, 126.5f};
  ak_block_q8_0_t q;
  ak_quantize_row_q8_0(x, &q, 32);
  EXPECT_EQ(q.d, 0x3C00);
  const int want[] = {127, 3, -3, 1, -1, 4, 127};
  for (int j = 0; j < 7; j++) EXPECT_EQ(q.qs[j], want[j]) << j;
}
