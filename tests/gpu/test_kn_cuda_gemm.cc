// Tests for kernels/cuda/kn_cuda_gemm.cu: y = x · Wᵀ with bf16 operands on cuBLASLt.
//
// KnCudaGemmGpu (ctest label `gpu`) compares with kn_matmul, the CPU oracle, run with
// F32 weights on the same bf16-rounded values, so the products are exact on both sides
// and only the f32 accumulation order differs. Per element that difference is bounded
// by k·eps·Σ|x_k·w_k|, so each element is checked against
//   |y - ref| <= tol_abs · Σ_k |x_k·w_k|  (+ tol_rel · |ref| for a bf16 y, its rounding)
// with Σ|x·w| from a second kn_matmul on |x| and |W|; and the whole tensor against
//   ||y - ref||₂ / ||ref||₂ <= 1e-3 (f32 y) or 1e-2 (bf16 y).
// Outputs are poisoned with NaN first (β = 0 must never read y).
//
// KnCudaGemmArgs runs everywhere (no label: CI has no GPU): every class of bad
// argument is refused with AK_ERR_INVALID_ARG and a message before any CUDA call.
#include <gtest/gtest.h>

#include <cuda_runtime.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <memory>
#include <ostream>
#include <random>
#include <string>
#include <vector>

extern "C" {
#include "ak_alloc.h"
#include "ak_quant.h"
#include "kernels.h"
#include "kn_cuda.h"
}

namespace {

struct BlasDeleter {
  void operator()(kn_cuda_blas_t *b) const { kn_cuda_blas_destroy(b); }
};
using BlasPtr = std::unique_ptr<kn_cuda_blas_t, BlasDeleter>;
struct CpuDeleter {
  void operator()(kn_cpu_t *c) const { kn_cpu_destroy(c); }
};
using CpuPtr = std::unique_ptr<kn_cpu_t, CpuDeleter>;

// Device memory through the accounted wrapper, freed with its size.
struct DevBuf {
  void *ptr = nullptr;
  size_t n_bytes = 0;
  DevBuf() = default;
  explicit DevBuf(size_t n) : n_bytes(n) {
    ak_err_t err{};
    EXPECT_EQ(kn_cuda_malloc(n, &err, &ptr), AK_OK) << err.msg;
  }
  DevBuf(const DevBuf &) = delete;
  DevBuf &operator=(const DevBuf &) = delete;
  ~DevBuf() { kn_cuda_free(ptr, n_bytes); }
  uint8_t *bytes() const { return static_cast<uint8_t *>(ptr); }
};

// Random values rounded to bf16: `bits` go to the device, `vals` (the same numbers as
// f32) to the CPU reference.
struct Bf16Mat {
  std::vector<uint16_t> bits;
  std::vector<float> vals;
  Bf16Mat(int64_t n, float scale, std::mt19937_64 &rng) : bits(n), vals(n) {
    std::uniform_real_distribution<float> u(-1.0f, 1.0f);
    for (int64_t i = 0; i < n; i++) {
      bits[i] = ak_f32_to_bf16(u(rng) * scale);
      vals[i] = ak_bf16_to_f32(bits[i]);
    }
  }
};

// y = x · Wᵀ on the CPU, W as F32 weights [n_out, n_in].
std::vector<float> cpu_matmul(kn_cpu_t *cpu, const std::vector<float> &x, const std::vector<float> &w, int64_t n_tok,
                              int64_t n_in, int64_t n_out) {
  kn_weight_t wt = {AK_TYPE_F32, n_out, n_in, w.data()};
  std::vector<float> y(n_tok * n_out);
  std::vector<uint8_t> ws(kn_matmul_workspace_bytes(&wt, n_tok) + 1);
  ak_err_t err{};
  EXPECT_EQ(kn_matmul(cpu, &wt, x.data(), n_tok, y.data(), ws.data(), ws.size(), &err), AK_OK) << err.msg;
  return y;
}

std::vector<float> abs_of(const std::vector<float> &v) {
  std::vector<float> a(v.size());
  for (size_t i = 0; i < v.size(); i++) a[i] = std::fabs(v[i]);
  return a;
}

struct Case {
  int64_t n_tok, n_in, n_out;
  const char *what;
};

void PrintTo(const Case &c, std::ostream *os) {
  *os << c.what << " n_tok " << c.n_tok << " n_in " << c.n_in << " n_out " << c.n_out;
}

std::string case_name(const testing::TestParamInfo<Case> &info) {
  const Case &c = info.param;
  return std::string(c.what) + "_t" + std::to_string(c.n_tok) + "_in" + std::to_string(c.n_in) + "_out" +
         std::to_string(c.n_out);
}

std::vector<Case> gpu_cases() {
  std::vector<Case> out;
  // 1..8 rows take the GEMV path (kn_cuda_gemv.cu) when aligned; the rest cuBLASLt
  for (int64_t n_tok : {1, 2, 3, 4, 8, 17, 97, 512}) {
    out.push_back({n_tok, 576, 576, "q"});            // SmolLM2-135M: q and o
    out.push_back({n_tok, 576, 3 * 1536, "fused3"});  // three 1536-row projections of one x, fused
    out.push_back({n_tok, 1536, 576, "down"});
    out.push_back({n_tok, 97, 33, "odd"});            // odd leading dimensions: 2-byte aligned rows
    if (n_tok <= 8) out.push_back({n_tok, 4104, 33, "tail"});  // n_in % 32 == 8, n_out % 16 == 1
    // Weights past 8M elements: AUTO sends 3..8 rows to the tensor-core GEMV (a partial
    // last tile of 8 rows), 1..2 to the FMA GEMV.
    if (n_tok <= 8) out.push_back({n_tok, 4096, 2056, "large"});
  }
  out.push_back({512, 4096, 4096, "big"});
  return out;
}

// A stream, a handle bound to it and a CPU context; TearDown checks that the handle
// returned all its device memory.
class KnCudaGemmGpuBase : public testing::Test {
 protected:
  void SetUp() override {
    int n_dev = 0;
    ak_err_t err{};
    ASSERT_EQ(kn_cuda_device_count(&err, &n_dev), AK_OK) << err.msg;
    device_bytes_before_ = ak_alloc_outstanding_bytes(AK_MEM_DEVICE);
    ASSERT_EQ(cudaStreamCreate(&stream_), cudaSuccess);
    kn_cuda_blas_t *b = nullptr;
    ASSERT_EQ(kn_cuda_blas_create(reinterpret_cast<kn_cuda_stream_t>(stream_), &err, &b), AK_OK) << err.msg;
    blas_.reset(b);
    kn_cpu_t *c = nullptr;
    ASSERT_EQ(kn_cpu_create(0, &err, &c), AK_OK) << err.msg;
    cpu_.reset(c);
  }
  void TearDown() override {
    blas_.reset();
    if (stream_) cudaStreamDestroy(stream_);
    EXPECT_EQ(ak_alloc_outstanding_bytes(AK_MEM_DEVICE), device_bytes_before_) << "device memory leaked";
  }

  // Runs one GEMM into y (poisoned with NaN unless y0 is given: then y starts as y0
  // and accumulate is on) at byte offsets into the buffers, and checks it.
  void check(const Case &c, kn_cuda_dtype_t y_dtype, bool accumulate, size_t misalign_elems) {
    SCOPED_TRACE(std::string(y_dtype == KN_CUDA_F32 ? "y f32" : "y bf16") + (accumulate ? ", accumulate" : "") +
                 ", offset " + std::to_string(misalign_elems) + " elems");
    std::mt19937_64 rng(1000003 * c.n_tok + 1009 * c.n_in + c.n_out);
    Bf16Mat x(c.n_tok * c.n_in, 2.0f, rng);
    Bf16Mat w(c.n_out * c.n_in, 1.0f / std::sqrt((float)c.n_in), rng);
    std::vector<float> ref = cpu_matmul(cpu_.get(), x.vals, w.vals, c.n_tok, c.n_in, c.n_out);
    std::vector<float> mag = cpu_matmul(cpu_.get(), abs_of(x.vals), abs_of(w.vals), c.n_tok, c.n_in, c.n_out);
    const int64_t n_y = c.n_tok * c.n_out;
    std::vector<float> y0(n_y, 0.0f);
    if (accumulate) {
      std::uniform_real_distribution<float> u(-1.0f, 1.0f);
      for (int64_t i = 0; i < n_y; i++) {
        y0[i] = u(rng);
        ref[i] += y0[i];
        mag[i] += std::fabs(y0[i]);
      }
    }

    const size_t y_elem = y_dtype == KN_CUDA_F32 ? 4 : 2;
    const size_t off = misalign_elems;  // same element offset into every buffer
    DevBuf dx((off + c.n_tok * c.n_in) * 2), dw((off + c.n_out * c.n_in) * 2), dy((off + n_y) * y_elem);
    ASSERT_TRUE(dx.ptr && dw.ptr && dy.ptr);
    uint8_t *px = dx.bytes() + off * 2, *pw = dw.bytes() + off * 2, *py = dy.bytes() + off * y_elem;
    ASSERT_EQ(cudaMemcpy(px, x.bits.data(), x.bits.size() * 2, cudaMemcpyHostToDevice), cudaSuccess);
    ASSERT_EQ(cudaMemcpy(pw, w.bits.data(), w.bits.size() * 2, cudaMemcpyHostToDevice), cudaSuccess);
    if (accumulate)
      ASSERT_EQ(cudaMemcpy(py, y0.data(), n_y * 4, cudaMemcpyHostToDevice), cudaSuccess);
    else
      ASSERT_EQ(cudaMemset(dy.ptr, 0xff, dy.n_bytes), cudaSuccess);  // NaN in f32 and bf16

    kn_cuda_gemm_args_t a = {};
    a.x = px;
    a.w = pw;
    a.y = py;
    a.y_dtype = y_dtype;
    a.n_tok = c.n_tok;
    a.n_in = c.n_in;
    a.n_out = c.n_out;
    a.accumulate = accumulate ? 1 : 0;
    ak_err_t err{};
    ASSERT_EQ(kn_cuda_gemm(blas_.get(), &a, &err), AK_OK) << err.msg;
    ASSERT_EQ(cudaStreamSynchronize(stream_), cudaSuccess);

    std::vector<float> y(n_y);
    if (y_dtype == KN_CUDA_F32) {
      ASSERT_EQ(cudaMemcpy(y.data(), py, n_y * 4, cudaMemcpyDeviceToHost), cudaSuccess);
    } else {
      std::vector<uint16_t> yb(n_y);
      ASSERT_EQ(cudaMemcpy(yb.data(), py, n_y * 2, cudaMemcpyDeviceToHost), cudaSuccess);
      for (int64_t i = 0; i < n_y; i++) y[i] = ak_bf16_to_f32(yb[i]);
    }
    // The bytes before the output must still be poison (no write out of bounds).
    if (off > 0 && !accumulate) {
      std::vector<uint8_t> head(off * y_elem);
      ASSERT_EQ(cudaMemcpy(head.data(), dy.ptr, head.size(), cudaMemcpyDeviceToHost), cudaSuccess);
      for (uint8_t b : head) ASSERT_EQ(b, 0xff);
    }

    const double tol_abs = 1e-3, tol_rel = y_dtype == KN_CUDA_F32 ? 0.0 : 1e-2;
    const double tol_norm = y_dtype == KN_CUDA_F32 ? 1e-3 : 1e-2;
    double diff2 = 0, ref2 = 0, worst = 0;
    int64_t n_bad = 0, worst_i = 0;
    for (int64_t i = 0; i < n_y; i++) {
      double d = std::fabs((double)y[i] - ref[i]);
      double bound = tol_abs * mag[i] + tol_rel * std::fabs(ref[i]) + 1e-30;
      if (!(d <= bound)) n_bad++;  // NaN counts as bad
      if (!(d / bound <= worst)) {
        worst = std::isnan(d) ? std::numeric_limits<double>::infinity() : d / bound;
        worst_i = i;
      }
      diff2 += d * d;
      ref2 += (double)ref[i] * ref[i];
    }
    EXPECT_EQ(n_bad, 0) << "worst at token " << worst_i / c.n_out << ", out " << worst_i % c.n_out << ": y "
                        << y[worst_i] << " ref " << ref[worst_i] << " (Σ|x·w| " << mag[worst_i] << ")";
    double rel = std::sqrt(diff2 / (ref2 > 0 ? ref2 : 1));
    EXPECT_LE(rel, tol_norm) << "||y - ref|| / ||ref||";
  }

  cudaStream_t stream_ = nullptr;
  BlasPtr blas_;
  CpuPtr cpu_;
  int64_t device_bytes_before_ = 0;
};

class KnCudaGemmGpu : public KnCudaGemmGpuBase, public testing::WithParamInterface<Case> {};

TEST_P(KnCudaGemmGpu, F32) { check(GetParam(), KN_CUDA_F32, false, 0); }
// The same shapes with the GEMV path off: cuBLASLt alone (the reference the GEMV's
// speed is measured against).
TEST_P(KnCudaGemmGpu, F32CublasOnly) {
  ak_err_t err{};
  ASSERT_EQ(kn_cuda_blas_set_decode_gemm(blas_.get(), KN_CUDA_DECODE_GEMM_CUBLAS, &err), AK_OK) << err.msg;
  check(GetParam(), KN_CUDA_F32, false, 0);
}
TEST_P(KnCudaGemmGpu, Bf16) { check(GetParam(), KN_CUDA_BF16, false, 0); }
// The GEMV forced for every call it can take (1..8 aligned rows; misaligned ones still
// go to cuBLASLt), whatever AUTO would pick for the size. Larger calls are cuBLASLt in
// every mode, already covered by F32CublasOnly: skipped here.
TEST_P(KnCudaGemmGpu, F32Fma) {
  if (GetParam().n_tok > KN_CUDA_DECODE_GEMM_MAX_TOK) GTEST_SKIP() << "cuBLASLt in every mode (F32CublasOnly)";
  ak_err_t err{};
  ASSERT_EQ(kn_cuda_blas_set_decode_gemm(blas_.get(), KN_CUDA_DECODE_GEMM_FMA, &err), AK_OK) << err.msg;
  check(GetParam(), KN_CUDA_F32, false, 0);
}
TEST_P(KnCudaGemmGpu, F32Accumulate) { check(GetParam(), KN_CUDA_F32, true, 0); }
// The tensor-core GEMV forced likewise (kn_cuda_gemv_mma.cu): plain, accumulating, bf16 out.
TEST_P(KnCudaGemmGpu, F32Mma) {
  if (GetParam().n_tok > KN_CUDA_DECODE_GEMM_MAX_TOK) GTEST_SKIP() << "cuBLASLt in every mode (F32CublasOnly)";
  ak_err_t err{};
  ASSERT_EQ(kn_cuda_blas_set_decode_gemm(blas_.get(), KN_CUDA_DECODE_GEMM_MMA, &err), AK_OK) << err.msg;
  check(GetParam(), KN_CUDA_F32, false, 0);
}
TEST_P(KnCudaGemmGpu, F32MmaAccumulate) {
  if (GetParam().n_tok > KN_CUDA_DECODE_GEMM_MAX_TOK) GTEST_SKIP() << "cuBLASLt in every mode (F32CublasOnly)";
  ak_err_t err{};
  ASSERT_EQ(kn_cuda_blas_set_decode_gemm(blas_.get(), KN_CUDA_DECODE_GEMM_MMA, &err), AK_OK) << err.msg;
  check(GetParam(), KN_CUDA_F32, true, 0);
}
TEST_P(KnCudaGemmGpu, Bf16Mma) {
  if (GetParam().n_tok > KN_CUDA_DECODE_GEMM_MAX_TOK) GTEST_SKIP() << "cuBLASLt in every mode (F32CublasOnly)";
  ak_err_t err{};
  ASSERT_EQ(kn_cuda_blas_set_decode_gemm(blas_.get(), KN_CUDA_DECODE_GEMM_MMA, &err), AK_OK) << err.msg;
  check(GetParam(), KN_CUDA_BF16, false, 0);
}
// Operands one element past an allocation's start: 2- and 4-byte aligned pointers,
// which cuBLASLt must be told about (its default assumes 256).
TEST_P(KnCudaGemmGpu, F32Misaligned) { check(GetParam(), KN_CUDA_F32, false, 1); }
TEST_P(KnCudaGemmGpu, Bf16Misaligned) { check(GetParam(), KN_CUDA_BF16, false, 1); }

INSTANTIATE_TEST_SUITE_P(Shapes, KnCudaGemmGpu, testing::ValuesIn(gpu_cases()), case_name);

// One handle serves shapes and alignments in any order (its plan cache is keyed by
// both), and n_tok = 0 is a no-op that touches nothing.
using KnCudaGemmCacheGpu = KnCudaGemmGpuBase;
TEST_F(KnCudaGemmCacheGpu, InterleavedShapesAndEmpty) {
  for (int round = 0; round < 2; round++)
    for (Case c : {Case{17, 576, 576, "q"}, Case{1, 1536, 576, "down"}, Case{17, 97, 33, "odd"}}) {
      check(c, KN_CUDA_F32, round == 1, 0);
      check(c, KN_CUDA_BF16, false, (size_t)round);
    }
  kn_cuda_gemm_args_t a = {};
  a.y_dtype = KN_CUDA_F32;
  a.n_tok = 0;
  a.n_in = 576;
  a.n_out = 576;
  ak_err_t err{};
  EXPECT_EQ(kn_cuda_gemm(blas_.get(), &a, &err), AK_OK) << err.msg;
}

// ---- argument validation: no GPU needed ----

// Validation reads only the arguments, so any non-NULL handle pointer serves; it is
// never dereferenced on these paths.
kn_cuda_blas_t *fake_blas() {
  static uint64_t storage[8];
  return reinterpret_cast<kn_cuda_blas_t *>(storage);
}

kn_cuda_gemm_args_t good_args() {
  static uint16_t x[64], w[64];
  static float y[64];
  kn_cuda_gemm_args_t a = {};
  a.x = x;
  a.w = w;
  a.y = y;
  a.y_dtype = KN_CUDA_F32;
  a.n_tok = 2;
  a.n_in = 4;
  a.n_out = 8;
  a.accumulate = 0;
  return a;
}

void expect_invalid(kn_cuda_blas_t *blas, const kn_cuda_gemm_args_t *a, const char *needle) {
  ak_err_t err{};
  EXPECT_EQ(kn_cuda_gemm(blas, a, &err), AK_ERR_INVALID_ARG);
  EXPECT_NE(std::string(err.msg).find(needle), std::string::npos) << err.msg;
  EXPECT_NE(std::string(err.msg).find("kn_cuda_gemm"), std::string::npos) << err.msg;
}

TEST(KnCudaGemmArgs, NullHandleOrArgs) {
  kn_cuda_gemm_args_t a = good_args();
  expect_invalid(nullptr, &a, "blas is NULL");
  expect_invalid(fake_blas(), nullptr, "args is NULL");
  ak_err_t err{};
  EXPECT_EQ(kn_cuda_blas_create(nullptr, &err, nullptr), AK_ERR_INVALID_ARG);
  EXPECT_NE(std::string(err.msg).find("blas_p is NULL"), std::string::npos) << err.msg;
  kn_cuda_blas_destroy(nullptr);  // accepted
}

TEST(KnCudaGemmArgs, BadSizes) {
  kn_cuda_gemm_args_t a = good_args();
  a.n_tok = -1;
  expect_invalid(fake_blas(), &a, "n_tok -1");
  a = good_args();
  a.n_in = 0;
  expect_invalid(fake_blas(), &a, "n_in 0");
  a = good_args();
  a.n_out = -3;
  expect_invalid(fake_blas(), &a, "n_out -3");
  a = good_args();
  a.n_in = (int64_t)1 << 31;
  expect_invalid(fake_blas(), &a, "exceeds");
}

TEST(KnCudaGemmArgs, BadDtypeOrAccumulate) {
  kn_cuda_gemm_args_t a = good_args();
  a.y_dtype = KN_CUDA_F16;
  expect_invalid(fake_blas(), &a, "y_dtype 1");
  a.y_dtype = (kn_cuda_dtype_t)7;
  expect_invalid(fake_blas(), &a, "y_dtype 7");
  a = good_args();
  a.accumulate = 2;
  expect_invalid(fake_blas(), &a, "accumulate 2");
  a = good_args();
  a.y_dtype = KN_CUDA_BF16;
  a.accumulate = 1;
  expect_invalid(fake_blas(), &a, "accumulate needs an f32 y");
}

TEST(KnCudaGemmArgs, NullOrMisalignedPointers) {
  kn_cuda_gemm_args_t a = good_args();
  a.x = nullptr;
  expect_invalid(fake_blas(), &a, "a pointer is NULL");
  a = good_args();
  a.w = nullptr;
  expect_invalid(fake_blas(), &a, "a pointer is NULL");
  a = good_args();
  a.y = nullptr;
  expect_invalid(fake_blas(), &a, "a pointer is NULL");
  a = good_args();
  a.x = static_cast<const uint8_t *>(a.x) + 1;
  expect_invalid(fake_blas(), &a, "not aligned");
  a = good_args();
  a.y = static_cast<uint8_t *>(a.y) + 2;  // 2-byte aligned: enough for bf16, not f32
  expect_invalid(fake_blas(), &a, "not aligned");
}

TEST(KnCudaGemmArgs, EmptyBatchIsANoOp) {
  kn_cuda_gemm_args_t a = {};
  a.y_dtype = KN_CUDA_F32;
  a.n_in = 4;
  a.n_out = 8;
  ak_err_t err{};
  EXPECT_EQ(kn_cuda_gemm(fake_blas(), &a, &err), AK_OK) << err.msg;  // NULL pointers allowed at n_tok 0
}

}  // namespace

// A fused projection split into its parts gives each part exactly what a GEMM on that
// part's rows gives (the GEMV path for 4 rows, one cuBLASLt call per part for 17: the
// two equal parts' outputs lie in reverse order, so they are not one batched matmul).
TEST_F(KnCudaGemmCacheGpu, SplitPartsEqualSeparateGemms) {
  for (int mode : {KN_CUDA_DECODE_GEMM_AUTO, KN_CUDA_DECODE_GEMM_FMA, KN_CUDA_DECODE_GEMM_MMA})
  for (int64_t n_tok : {4, 17}) {
    SCOPED_TRACE("decode GEMM mode " + std::to_string(mode));
    ak_err_t mode_err{};
    ASSERT_EQ(kn_cuda_blas_set_decode_gemm(blas_.get(), (kn_cuda_decode_gemm_t)mode, &mode_err), AK_OK);
    const int64_t n_in = 576, rows[3] = {576, 192, 192}, n_out = 960;
    std::mt19937_64 rng(77 + n_tok);
    Bf16Mat x(n_tok * n_in, 2.0f, rng), w(n_out * n_in, 0.05f, rng);
    DevBuf dx(x.bits.size() * 2), dw(w.bits.size() * 2), dsplit(n_tok * n_out * 4), dsep(n_tok * n_out * 4);
    ASSERT_EQ(cudaMemcpy(dx.ptr, x.bits.data(), dx.n_bytes, cudaMemcpyHostToDevice), cudaSuccess);
    ASSERT_EQ(cudaMemcpy(dw.ptr, w.bits.data(), dw.n_bytes, cudaMemcpyHostToDevice), cudaSuccess);
    ak_err_t err{};
    kn_cuda_gemm_split_args_t sa = {};
    sa.x = dx.ptr;
    sa.w = dw.ptr;
    sa.n_parts = 3;
    sa.y_dtype = KN_CUDA_F32;
    sa.n_tok = n_tok;
    sa.n_in = n_in;
    int64_t off = 0;
    const int64_t y_row0[3] = {0, 768, 576};  // part 2's output before part 1's
    for (int p = 0; p < 3; p++) {
      sa.rows[p] = rows[p];
      sa.y[p] = dsplit.bytes() + y_row0[p] * n_tok * 4;
      kn_cuda_gemm_args_t g = {};
      g.x = dx.ptr;
      g.w = dw.bytes() + off * n_in * 2;
      g.y = dsep.bytes() + off * n_tok * 4;
      g.y_dtype = KN_CUDA_F32;
      g.n_tok = n_tok;
      g.n_in = n_in;
      g.n_out = rows[p];
      ASSERT_EQ(kn_cuda_gemm(blas_.get(), &g, &err), AK_OK) << err.msg;
      off += rows[p];
    }
    ASSERT_EQ(kn_cuda_gemm_split(blas_.get(), &sa, &err), AK_OK) << err.msg;
    ASSERT_EQ(cudaStreamSynchronize(stream_), cudaSuccess);
    std::vector<float> a(n_tok * n_out), b(n_tok * n_out);
    ASSERT_EQ(cudaMemcpy(a.data(), dsplit.ptr, a.size() * 4, cudaMemcpyDeviceToHost), cudaSuccess);
    ASSERT_EQ(cudaMemcpy(b.data(), dsep.ptr, b.size() * 4, cudaMemcpyDeviceToHost), cudaSuccess);
    // undo the swap of parts 1 and 2 before comparing with the separate GEMMs' layout
    std::vector<float> a_in_order(a.begin(), a.begin() + 576 * n_tok);
    a_in_order.insert(a_in_order.end(), a.begin() + 768 * n_tok, a.end());
    a_in_order.insert(a_in_order.end(), a.begin() + 576 * n_tok, a.begin() + 768 * n_tok);
    EXPECT_EQ(a_in_order, b) << "n_tok " << n_tok;
  }
}

// Equal parts whose outputs lie at one spacing (Q|K|V of an MHA model, gate|up) go to
// cuBLASLt as one strided-batched matmul: each part must still be x · (its rows of W)ᵀ,
// within the per-element bound of check() against the CPU oracle, with and without
// accumulate; the gaps between the outputs stay untouched (poison), and a different
// spacing or part count is a different plan (the cache must not mix them up).
TEST_F(KnCudaGemmCacheGpu, SplitEqualPartsAsOneBatchedGemmMatchTheReference) {
  ak_err_t mode_err{};
  ASSERT_EQ(kn_cuda_blas_set_decode_gemm(blas_.get(), KN_CUDA_DECODE_GEMM_CUBLAS, &mode_err), AK_OK);
  for (int n_parts : {2, 3})
  for (int64_t n_tok : {1, 4, 17})
  for (int64_t pad : {0, 40})
  for (bool accumulate : {false, true}) {
    SCOPED_TRACE("parts " + std::to_string(n_parts) + ", n_tok " + std::to_string(n_tok) + ", pad " +
                 std::to_string(pad) + (accumulate ? ", accumulate" : ""));
    const int64_t n_in = 320, rows = 256, n_out = rows * n_parts;
    const int64_t spacing = rows * n_tok + pad;  // f32 elements between the parts' outputs
    std::mt19937_64 rng(4242 + 97 * n_tok + pad + n_parts);
    Bf16Mat x(n_tok * n_in, 2.0f, rng), w(n_out * n_in, 1.0f / std::sqrt((float)n_in), rng);
    std::vector<float> ref = cpu_matmul(cpu_.get(), x.vals, w.vals, n_tok, n_in, n_out);  // [n_tok][n_out]
    std::vector<float> mag = cpu_matmul(cpu_.get(), abs_of(x.vals), abs_of(w.vals), n_tok, n_in, n_out);
    std::vector<float> y0(spacing * n_parts, 0.0f);
    std::uniform_real_distribution<float> u(-1.0f, 1.0f);
    if (accumulate)
      for (float &v : y0) v = u(rng);
    DevBuf dx(x.bits.size() * 2), dw(w.bits.size() * 2), dy(y0.size() * 4);
    ASSERT_EQ(cudaMemcpy(dx.ptr, x.bits.data(), dx.n_bytes, cudaMemcpyHostToDevice), cudaSuccess);
    ASSERT_EQ(cudaMemcpy(dw.ptr, w.bits.data(), dw.n_bytes, cudaMemcpyHostToDevice), cudaSuccess);
    if (accumulate)
      ASSERT_EQ(cudaMemcpy(dy.ptr, y0.data(), dy.n_bytes, cudaMemcpyHostToDevice), cudaSuccess);
    else
      ASSERT_EQ(cudaMemset(dy.ptr, 0xff, dy.n_bytes), cudaSuccess);
    kn_cuda_gemm_split_args_t sa = {};
    sa.x = dx.ptr;
    sa.w = dw.ptr;
    sa.n_parts = n_parts;
    sa.y_dtype = KN_CUDA_F32;
    sa.n_tok = n_tok;
    sa.n_in = n_in;
    sa.accumulate = accumulate ? 1 : 0;
    for (int p = 0; p < n_parts; p++) {
      sa.rows[p] = rows;
      sa.y[p] = dy.bytes() + p * spacing * 4;
    }
    ak_err_t err{};
    ASSERT_EQ(kn_cuda_gemm_split(blas_.get(), &sa, &err), AK_OK) << err.msg;
    ASSERT_EQ(cudaStreamSynchronize(stream_), cudaSuccess);
    std::vector<float> y(y0.size());
    ASSERT_EQ(cudaMemcpy(y.data(), dy.ptr, dy.n_bytes, cudaMemcpyDeviceToHost), cudaSuccess);
    int64_t n_bad = 0;
    for (int p = 0; p < n_parts; p++) {
      for (int64_t t = 0; t < n_tok; t++)
        for (int64_t r = 0; r < rows; r++) {
          int64_t i = t * n_out + p * rows + r, yi = p * spacing + t * rows + r;
          double want = ref[i] + (accumulate ? y0[yi] : 0.0f), bound = 1e-3 * (mag[i] + std::fabs(y0[yi])) + 1e-30;
          if (!(std::fabs(y[yi] - want) <= bound)) n_bad++;  // NaN counts as bad
        }
      uint32_t bits;
      for (int64_t g = rows * n_tok; g < spacing; g++) {  // the gap after the part
        std::memcpy(&bits, &y[p * spacing + g], 4);
        if (accumulate ? y[p * spacing + g] != y0[p * spacing + g] : bits != 0xffffffffu) n_bad++;
      }
    }
    EXPECT_EQ(n_bad, 0);
  }
}


namespace {

// gate|up with swiglu_out: the bf16 product equals the unfused path (the same split
// GEMM into f32 gate/up, then kn_cuda_silu_mul) bit for bit, through the GEMV's fused
// epilogue (one-row and few-row calls) and through cuBLASLt + kn_cuda_silu_mul (forced,
// or 17 rows, or n_in not a multiple of 8); nothing past the output is written, and the
// GEMV leaves the f32 scratch parts untouched. n_in 4096 with one row takes the GEMV's
// four-warps-per-row path (KS 4), whose cross-warp sum must match the plain GEMV's too.
TEST_F(KnCudaGemmCacheGpu, SwigluOutEqualsSplitThenSiluMul) {
  for (int mode : {KN_CUDA_DECODE_GEMM_AUTO, KN_CUDA_DECODE_GEMM_FMA, KN_CUDA_DECODE_GEMM_CUBLAS,
                   KN_CUDA_DECODE_GEMM_MMA})
  for (int64_t n_tok : {1, 3, 8, 17})
  for (int64_t n_in : {320, 100, 4096}) {
    SCOPED_TRACE("mode " + std::to_string(mode) + ", n_tok " + std::to_string(n_tok) + ", n_in " +
                 std::to_string(n_in));
    ak_err_t err{};
    ASSERT_EQ(kn_cuda_blas_set_decode_gemm(blas_.get(), (kn_cuda_decode_gemm_t)mode, &err), AK_OK);
    const int64_t rows = 97, guard = 8;
    std::mt19937_64 rng(9000 + 31 * n_tok + n_in + mode);
    Bf16Mat x(n_tok * n_in, 2.0f, rng), w(2 * rows * n_in, 1.0f / std::sqrt((float)n_in), rng);
    DevBuf dx(x.bits.size() * 2), dw(w.bits.size() * 2), dg(n_tok * rows * 4), du(n_tok * rows * 4),
        dg2(n_tok * rows * 4), du2(n_tok * rows * 4), dact((n_tok * rows + guard) * 2), dref(n_tok * rows * 2);
    ASSERT_EQ(cudaMemcpy(dx.ptr, x.bits.data(), dx.n_bytes, cudaMemcpyHostToDevice), cudaSuccess);
    ASSERT_EQ(cudaMemcpy(dw.ptr, w.bits.data(), dw.n_bytes, cudaMemcpyHostToDevice), cudaSuccess);
    ASSERT_EQ(cudaMemset(dact.ptr, 0xee, dact.n_bytes), cudaSuccess);
    ASSERT_EQ(cudaMemset(dg2.ptr, 0xee, dg2.n_bytes), cudaSuccess);
    ASSERT_EQ(cudaMemset(du2.ptr, 0xee, du2.n_bytes), cudaSuccess);
    kn_cuda_gemm_split_args_t sa = {};
    sa.x = dx.ptr;
    sa.w = dw.ptr;
    sa.n_parts = 2;
    sa.rows[0] = sa.rows[1] = rows;
    sa.y[0] = dg.ptr;
    sa.y[1] = du.ptr;
    sa.y_dtype = KN_CUDA_F32;
    sa.n_tok = n_tok;
    sa.n_in = n_in;
    ASSERT_EQ(kn_cuda_gemm_split(blas_.get(), &sa, &err), AK_OK) << err.msg;
    kn_cuda_silu_mul_args_t sm = {static_cast<const float *>(dg.ptr), static_cast<const float *>(du.ptr), dref.ptr,
                                  KN_CUDA_BF16, n_tok, rows};
    ASSERT_EQ(kn_cuda_silu_mul(&sm, reinterpret_cast<kn_cuda_stream_t>(stream_), &err), AK_OK) << err.msg;
    sa.y[0] = dg2.ptr;
    sa.y[1] = du2.ptr;
    sa.swiglu_out = dact.ptr;
    ASSERT_EQ(kn_cuda_gemm_split(blas_.get(), &sa, &err), AK_OK) << err.msg;
    ASSERT_EQ(cudaStreamSynchronize(stream_), cudaSuccess);
    std::vector<uint16_t> act(n_tok * rows + guard), ref(n_tok * rows);
    ASSERT_EQ(cudaMemcpy(act.data(), dact.ptr, dact.n_bytes, cudaMemcpyDeviceToHost), cudaSuccess);
    ASSERT_EQ(cudaMemcpy(ref.data(), dref.ptr, dref.n_bytes, cudaMemcpyDeviceToHost), cudaSuccess);
    int64_t n_diff = 0, n_guard = 0;
    for (int64_t i = 0; i < n_tok * rows; i++) n_diff += act[i] != ref[i];
    for (int64_t i = n_tok * rows; i < n_tok * rows + guard; i++) n_guard += act[i] != 0xeeee;
    EXPECT_EQ(n_diff, 0);
    EXPECT_EQ(n_guard, 0) << "written past the output";
    const bool gemv = mode != KN_CUDA_DECODE_GEMM_CUBLAS && n_tok <= 8 && n_in % 8 == 0;
    if (gemv) {  // the fused epilogue writes only the product
      std::vector<uint32_t> g(n_tok * rows), u(n_tok * rows);
      ASSERT_EQ(cudaMemcpy(g.data(), dg2.ptr, dg2.n_bytes, cudaMemcpyDeviceToHost), cudaSuccess);
      ASSERT_EQ(cudaMemcpy(u.data(), du2.ptr, du2.n_bytes, cudaMemcpyDeviceToHost), cudaSuccess);
      int64_t n_touched = 0;
      for (int64_t i = 0; i < n_tok * rows; i++) n_touched += (g[i] != 0xeeeeeeeeu) + (u[i] != 0xeeeeeeeeu);
      EXPECT_EQ(n_touched, 0);
    }
  }
}

kn_cuda_gemm_split_args_t good_swiglu_args() {
  static uint16_t x[64], w[64], act[64];
  static float g[64], u[64];
  kn_cuda_gemm_split_args_t a = {};
  a.x = x;
  a.w = w;
  a.n_parts = 2;
  a.rows[0] = a.rows[1] = 4;
  a.y[0] = g;
  a.y[1] = u;
  a.y_dtype = KN_CUDA_F32;
  a.n_tok = 2;
  a.n_in = 4;
  a.swiglu_out = act;
  return a;
}

void expect_split_invalid(const kn_cuda_gemm_split_args_t &a, const char *needle) {
  ak_err_t err{};
  EXPECT_EQ(kn_cuda_gemm_split(fake_blas(), &a, &err), AK_ERR_INVALID_ARG);
  EXPECT_NE(std::string(err.msg).find(needle), std::string::npos) << err.msg;
}

TEST(KnCudaGemmArgs, SwigluOutNeedsTwoEqualF32Parts) {
  kn_cuda_gemm_split_args_t a = good_swiglu_args();
  a.n_parts = 3;
  a.rows[2] = 4;
  a.y[2] = a.y[1];
  expect_split_invalid(a, "two parts of equal rows");
  a = good_swiglu_args();
  a.rows[1] = 5;
  expect_split_invalid(a, "two parts of equal rows");
  a = good_swiglu_args();
  a.y_dtype = KN_CUDA_BF16;
  expect_split_invalid(a, "f32 y and accumulate 0");
  a = good_swiglu_args();
  a.accumulate = 1;
  expect_split_invalid(a, "f32 y and accumulate 0");
  a = good_swiglu_args();
  a.swiglu_out = reinterpret_cast<char *>(a.swiglu_out) + 1;
  expect_split_invalid(a, "not aligned to bf16");
}

}  // namespace

namespace {

// Device copies of a host vector (bytes).
template <typename T>
void to_dev(const DevBuf &d, const std::vector<T> &h) {
  ASSERT_EQ(cudaMemcpy(d.ptr, h.data(), h.size() * sizeof(T), cudaMemcpyHostToDevice), cudaSuccess);
}
std::vector<uint8_t> from_dev(const DevBuf &d) {
  std::vector<uint8_t> h(d.n_bytes);
  EXPECT_EQ(cudaMemcpy(h.data(), d.ptr, d.n_bytes, cudaMemcpyDeviceToHost), cudaSuccess);
  return h;
}
int64_t n_bytes_differ(const std::vector<uint8_t> &a, const std::vector<uint8_t> &b) {
  int64_t n = a.size() != b.size() ? 1 : 0;
  for (size_t i = 0; i < a.size() && i < b.size(); i++) n += a[i] != b[i];
  return n;
}

struct RopeShape {
  int32_t n_heads, n_kv_heads, head_dim, rot_dims;
  int64_t n_in;
};

// Q|K|V with rope (and its K/V store): the outputs and the pages equal the split GEMM
// followed by kn_cuda_rope bit for bit. RopeInTheGemv: the GEMV epilogue (FMA: one row
// with n_in 4096 takes the four-warps-a-row path, whose pair of rows sits in one block;
// MMA: the pair across lanes), and the GEMV followed by kn_cuda_rope for NEOX.
// RopeFallback: cuBLASLt (forced, or 17 rows) followed by kn_cuda_rope. Pages start
// poisoned alike; one token's page is -1 and one slot is past its head (both skipped by
// either path); positions reach 40k (the angle's reduction). The fused call reads
// cos/sin from a kn_cuda_rope_table half of the time (the forward's way), the reference
// always computes them. (Two tests so racecheck can take the GEMV's alone: cuBLASLt's
// own kernels report hazards there, gpu_check.sh.)
void check_rope_split(kn_cuda_blas_t *blas, cudaStream_t stream, bool fallback) {
  const RopeShape shapes[] = {{4, 2, 64, 64, 320}, {8, 2, 128, 96, 4096}};
  const std::vector<int> modes = fallback ? std::vector<int>{KN_CUDA_DECODE_GEMM_CUBLAS, KN_CUDA_DECODE_GEMM_AUTO}
                                          : std::vector<int>{KN_CUDA_DECODE_GEMM_AUTO, KN_CUDA_DECODE_GEMM_FMA,
                                                             KN_CUDA_DECODE_GEMM_MMA};
  const std::vector<int64_t> toks = fallback ? std::vector<int64_t>{1, 4, 17} : std::vector<int64_t>{1, 3, 4, 8};
  for (const RopeShape &sh : shapes)
  for (int mode : modes)
  for (int64_t n_tok : toks)
  for (int store : {0, 1, 2})  // none, f16 pages, bf16 pages
  for (int32_t rope_mode : {0, 2}) {
    if (fallback && mode == KN_CUDA_DECODE_GEMM_AUTO && n_tok <= 8) continue;  // AUTO: only 17 rows go to cuBLASLt
    if (rope_mode == 2 && (store != 1 || n_tok > 4)) continue;  // NEOX: a few cases
    SCOPED_TRACE("head_dim " + std::to_string(sh.head_dim) + ", mode " + std::to_string(mode) + ", n_tok " +
                 std::to_string(n_tok) + ", store " + std::to_string(store) + ", rope mode " +
                 std::to_string(rope_mode) + ", table " + std::to_string((n_tok + store) % 2 == 0));
    ak_err_t err{};
    ASSERT_EQ(kn_cuda_blas_set_decode_gemm(blas, (kn_cuda_decode_gemm_t)mode, &err), AK_OK);
    const int64_t q_rows = (int64_t)sh.n_heads * sh.head_dim, kv_rows = (int64_t)sh.n_kv_heads * sh.head_dim;
    std::mt19937_64 rng(777 + 13 * n_tok + sh.head_dim + 5 * mode + store);
    Bf16Mat x(n_tok * sh.n_in, 2.0f, rng), w((q_rows + 2 * kv_rows) * sh.n_in, 1.0f / std::sqrt((float)sh.n_in), rng);
    std::vector<int32_t> pos(n_tok), page(n_tok), slot(n_tok);
    const int32_t page_tokens = 4, n_pages = 40;
    for (int64_t t = 0; t < n_tok; t++) {
      pos[t] = (int32_t)(rng() % 40000);
      page[t] = (int32_t)(t % n_pages);
      slot[t] = (int32_t)(rng() % page_tokens);
    }
    if (n_tok > 1) page[0] = -1;                    // skipped
    if (n_tok > 2) slot[n_tok - 1] = page_tokens;   // past its head: skipped
    const int64_t head_stride = (int64_t)page_tokens * sh.head_dim, page_stride = 2 * sh.n_kv_heads * head_stride;
    const size_t kv_elem = 2, pages_bytes = (size_t)n_pages * page_stride * kv_elem;
    DevBuf dx(x.bits.size() * 2), dw(w.bits.size() * 2), dpos(n_tok * 4), dpage(n_tok * 4), dslot(n_tok * 4);
    to_dev(dx, x.bits);
    to_dev(dw, w.bits);
    to_dev(dpos, pos);
    to_dev(dpage, page);
    to_dev(dslot, slot);
    DevBuf q[2] = {DevBuf(n_tok * q_rows * 4), DevBuf(n_tok * q_rows * 4)};
    DevBuf k[2] = {DevBuf(n_tok * kv_rows * 4), DevBuf(n_tok * kv_rows * 4)};
    DevBuf v[2] = {DevBuf(n_tok * kv_rows * 4), DevBuf(n_tok * kv_rows * 4)};
    DevBuf pages[2] = {DevBuf(pages_bytes), DevBuf(pages_bytes)};
    const bool use_table = (n_tok + store) % 2 == 0;
    DevBuf table((size_t)n_tok * sh.rot_dims * 4);
    kn_cuda_rope_table_args_t ta = {static_cast<const int32_t *>(dpos.ptr), n_tok, sh.rot_dims, 500000.0f, 0.5f,
                                    static_cast<float *>(table.ptr)};
    ASSERT_EQ(kn_cuda_rope_table(&ta, reinterpret_cast<kn_cuda_stream_t>(stream), &err), AK_OK) << err.msg;
    for (int i = 0; i < 2; i++) {
      ASSERT_EQ(cudaMemset(pages[i].ptr, 0x5a, pages_bytes), cudaSuccess);
      ASSERT_EQ(cudaMemset(q[i].ptr, 0xee, q[i].n_bytes), cudaSuccess);
    }
    // i 0: the reference (split, then kn_cuda_rope); i 1: the fused call
    for (int i = 0; i < 2; i++) {
      kn_cuda_kv_store_args_t st = {};
      st.k = static_cast<const float *>(k[i].ptr);
      st.v = static_cast<const float *>(v[i].ptr);
      st.k_base = pages[i].ptr;
      st.v_base = pages[i].bytes() + (size_t)(page_stride / 2) * kv_elem;
      st.kv_dtype = store == 2 ? KN_CUDA_BF16 : KN_CUDA_F16;
      st.page_stride_elems = page_stride;
      st.head_stride_elems = head_stride;
      st.n_kv_heads = sh.n_kv_heads;
      st.head_dim = sh.head_dim;
      st.dst_page = static_cast<const int32_t *>(dpage.ptr);
      st.dst_slot = static_cast<const int32_t *>(dslot.ptr);
      st.n_tok = n_tok;
      kn_cuda_rope_args_t r = {};
      r.x = static_cast<float *>(q[i].ptr);
      r.pos = static_cast<const int32_t *>(dpos.ptr);
      r.n_tok = n_tok;
      r.n_heads = sh.n_heads;
      r.head_dim = sh.head_dim;
      r.rot_dims = sh.rot_dims;
      r.freq_base = 500000.0f;
      r.freq_scale = 0.5f;
      r.mode = rope_mode;
      r.x2 = static_cast<float *>(k[i].ptr);
      r.n_heads2 = sh.n_kv_heads;
      r.store = store ? &st : nullptr;
      r.table = i == 1 && use_table ? static_cast<const float *>(table.ptr) : nullptr;
      kn_cuda_gemm_split_args_t sa = {};
      sa.x = dx.ptr;
      sa.w = dw.ptr;
      sa.n_parts = 3;
      sa.rows[0] = q_rows;
      sa.rows[1] = sa.rows[2] = kv_rows;
      sa.y[0] = q[i].ptr;
      sa.y[1] = k[i].ptr;
      sa.y[2] = v[i].ptr;
      sa.y_dtype = KN_CUDA_F32;
      sa.n_tok = n_tok;
      sa.n_in = sh.n_in;
      sa.rope = i == 1 ? &r : nullptr;
      ASSERT_EQ(kn_cuda_gemm_split(blas, &sa, &err), AK_OK) << err.msg;
      if (i == 0) ASSERT_EQ(kn_cuda_rope(&r, reinterpret_cast<kn_cuda_stream_t>(stream), &err), AK_OK) << err.msg;
    }
    ASSERT_EQ(cudaStreamSynchronize(stream), cudaSuccess);
    EXPECT_EQ(n_bytes_differ(from_dev(q[0]), from_dev(q[1])), 0) << "Q";
    EXPECT_EQ(n_bytes_differ(from_dev(k[0]), from_dev(k[1])), 0) << "K";
    EXPECT_EQ(n_bytes_differ(from_dev(v[0]), from_dev(v[1])), 0) << "V";
    const std::vector<uint8_t> p0 = from_dev(pages[0]);
    EXPECT_EQ(n_bytes_differ(p0, from_dev(pages[1])), 0) << "pages";
    if (store) {  // the reference itself wrote the live tokens' slots (the comparison means something)
      int64_t n_written = 0;
      for (uint8_t b : p0) n_written += b != 0x5a;
      EXPECT_GT(n_written, 0);
    }
  }
}

TEST_F(KnCudaGemmCacheGpu, RopeInTheGemvEqualsSplitThenRope) { check_rope_split(blas_.get(), stream_, false); }
TEST_F(KnCudaGemmCacheGpu, RopeFallbackEqualsSplitThenRope) { check_rope_split(blas_.get(), stream_, true); }

// ---- the fused rope's arguments: no GPU needed ----

TEST(KnCudaGemmArgs, RopeMustRotateTheOutputs) {
  static int32_t pos[8];
  static float other[64];
  kn_cuda_gemm_split_args_t base = good_swiglu_args();
  base.swiglu_out = nullptr;
  kn_cuda_rope_args_t r = {};
  r.x = static_cast<float *>(base.y[0]);
  r.pos = pos;
  r.n_tok = base.n_tok;
  r.n_heads = 1;
  r.head_dim = 4;
  r.rot_dims = 4;
  r.freq_base = 10000.0f;
  r.freq_scale = 1.0f;
  r.x2 = static_cast<float *>(base.y[1]);
  r.n_heads2 = 1;
  base.rope = &r;
  kn_cuda_gemm_split_args_t a = base;
  a.accumulate = 1;
  expect_split_invalid(a, "rope needs an f32 y");
  a = base;
  a.swiglu_out = other;
  expect_split_invalid(a, "no swiglu_out");
  a = base;
  r.x = other;
  expect_split_invalid(a, "must be y[0]");
  r.x = static_cast<float *>(base.y[0]);
  r.x2 = other;
  expect_split_invalid(a, "must be y[0]");
  r.x2 = static_cast<float *>(base.y[1]);
  r.n_tok = base.n_tok + 1;
  expect_split_invalid(a, "rope: n_tok=");
  r.n_tok = base.n_tok;
  r.rot_dims = 3;  // the rope's own check
  expect_split_invalid(a, "rot_dims=3");
  r.rot_dims = 4;
  r.mode = 1;
  expect_split_invalid(a, "mode=1");
}

}  // namespace
