// Tests for the model ops of kernels/cuda (kn_cuda_embed, kn_cuda_rmsnorm,
// kn_cuda_rope, kn_cuda_silu_mul, kn_cuda_kv_store, kn_cuda_sample).
// kn_cuda_rope with a store (the K/V page write fused into its launch) is compared
// bit for bit with kn_cuda_rope followed by kn_cuda_kv_store on the same inputs.
//
// KnCudaOpsGpu (ctest label `gpu`) compares every op with its CPU reference in
// kernels.h, run on host copies of the same random inputs, at odd sizes (n_tok 1, 17,
// 97; dims 576 = 64*9 and odd ones that force the one-element paths). Outputs are
// poisoned with 0xFF bytes (NaN) first; a tensor passes when
//   ||out - ref||_2 / ||ref||_2 <= 1e-5 (f32 out), 1e-3 (f16), 1e-2 (bf16)
// and every element is finite. Sampling: greedy equals kn_argmax, top_k = 1 equals
// greedy, and over many (step, row) draws on a small vocabulary the histogram matches
// the top-k / top-p filtered softmax within 5 sigma per token (and filtered tokens
// never appear). Per-row parameters: one launch equals one-row scalar launches;
// greedy with a repetition penalty equals wk_sampler; the draws with min-p and the
// penalty match a double-precision reference distribution, and logprobs equal
// log p(chosen) under it.
//
// KnCudaOpsArgs runs everywhere (no label: CI has no GPU): every class of bad
// argument is refused with AK_ERR_INVALID_ARG and a message naming the value, before
// any CUDA call.
#include <gtest/gtest.h>

#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <memory>
#include <numeric>
#include <random>
#include <string>
#include <vector>

extern "C" {
#include "ak_alloc.h"
#include "ak_quant.h"
#include "kernels.h"
#include "kn_cuda.h"
#include "wk_sampler.h"
}

namespace {

bool has(const ak_err_t &err, const char *s) { return std::string(err.msg).find(s) != std::string::npos; }

struct CpuDeleter {
  void operator()(kn_cpu_t *c) const { kn_cpu_destroy(c); }
};
using CpuPtr = std::unique_ptr<kn_cpu_t, CpuDeleter>;

// Device memory through the accounted wrapper, freed with its size.
struct DevBuf {
  void *ptr = nullptr;
  size_t n_bytes = 0;
  explicit DevBuf(size_t n) : n_bytes(n) {
    ak_err_t err{};
    EXPECT_EQ(kn_cuda_malloc(n, &err, &ptr), AK_OK) << err.msg;
  }
  DevBuf(const DevBuf &) = delete;
  DevBuf &operator=(const DevBuf &) = delete;
  ~DevBuf() { kn_cuda_free(ptr, n_bytes); }
  template <typename T>
  T *as(size_t elem_offset = 0) const {
    return static_cast<T *>(ptr) + elem_offset;
  }
};

template <typename T>
void to_dev(void *dst, const std::vector<T> &src) {
  ASSERT_EQ(cudaMemcpy(dst, src.data(), src.size() * sizeof(T), cudaMemcpyHostToDevice), cudaSuccess);
}
template <typename T>
std::vector<T> from_dev(const void *src, size_t n) {
  std::vector<T> out(n);
  EXPECT_EQ(cudaMemcpy(out.data(), src, n * sizeof(T), cudaMemcpyDeviceToHost), cudaSuccess);
  return out;
}
void poison(void *p, size_t n_bytes) { ASSERT_EQ(cudaMemset(p, 0xFF, n_bytes), cudaSuccess); }

// ||out - ref|| / ||ref||; NaN when any out element is not finite (NaN never passes).
double rel_err(const std::vector<float> &out, const std::vector<float> &ref) {
  EXPECT_EQ(out.size(), ref.size());
  double num = 0.0, den = 0.0;
  for (size_t i = 0; i < out.size() && i < ref.size(); i++) {
    if (!std::isfinite(out[i])) return std::numeric_limits<double>::quiet_NaN();
    const double d = (double)out[i] - (double)ref[i];
    num += d * d;
    den += (double)ref[i] * (double)ref[i];
  }
  return den > 0.0 ? std::sqrt(num / den) : std::sqrt(num);
}

double tol_for(kn_cuda_dtype_t dt) { return dt == KN_CUDA_F32 ? 1e-5 : dt == KN_CUDA_F16 ? 1e-3 : 1e-2; }

std::vector<float> decode(const std::vector<uint16_t> &bits, kn_cuda_dtype_t dt) {
  std::vector<float> out(bits.size());
  for (size_t i = 0; i < bits.size(); i++)
    out[i] = dt == KN_CUDA_F16 ? ak_f16_to_f32(bits[i]) : ak_bf16_to_f32(bits[i]);
  return out;
}
uint16_t encode(float v, kn_cuda_dtype_t dt) { return dt == KN_CUDA_F16 ? ak_f32_to_f16(v) : ak_f32_to_bf16(v); }

// An op's output read back as f32 whatever its dtype.
std::vector<float> out_from_dev(const void *p, size_t n, kn_cuda_dtype_t dt) {
  if (dt == KN_CUDA_F32) return from_dev<float>(p, n);
  return decode(from_dev<uint16_t>(p, n), dt);
}

std::vector<float> randn(size_t n, float scale, std::mt19937_64 &rng) {
  std::normal_distribution<float> d(0.0f, scale);
  std::vector<float> v(n);
  for (auto &x : v) x = d(rng);
  return v;
}

const char *dt_name(kn_cuda_dtype_t dt) { return dt == KN_CUDA_F32 ? "f32" : dt == KN_CUDA_F16 ? "f16" : "bf16"; }

class KnCudaOpsGpu : public ::testing::Test {
 protected:
  void SetUp() override {
    ak_err_t err{};
    int n_dev = 0;
    ASSERT_EQ(kn_cuda_device_count(&err, &n_dev), AK_OK) << err.msg;
    ASSERT_EQ(cudaStreamCreate(&stream_), cudaSuccess);
    kn_cpu_t *c = nullptr;
    ASSERT_EQ(kn_cpu_create(1, &err, &c), AK_OK) << err.msg;
    cpu_.reset(c);
    base_device_bytes_ = ak_alloc_outstanding_bytes(AK_MEM_DEVICE);
  }
  void TearDown() override {
    if (stream_) cudaStreamDestroy(stream_);
    EXPECT_EQ(ak_alloc_outstanding_bytes(AK_MEM_DEVICE), base_device_bytes_);
  }
  kn_cuda_stream_t stream() const { return (kn_cuda_stream_t)stream_; }
  void sync() { ASSERT_EQ(cudaStreamSynchronize(stream_), cudaSuccess); }

  cudaStream_t stream_ = nullptr;
  CpuPtr cpu_;
  int64_t base_device_bytes_ = 0;
};

// ---- embedding ----

TEST_F(KnCudaOpsGpu, EmbedMatchesCpuForEveryTableType) {
  std::mt19937_64 rng(11);
  const int64_t n_vocab = 301;
  for (kn_cuda_dtype_t dt : {KN_CUDA_F32, KN_CUDA_F16, KN_CUDA_BF16})
    for (int64_t dim : {576, 577, 100})
      for (int64_t n_tok : {1, 17, 97})
        for (int64_t offset : {0, 1}) {  // 1: a table start that is not 16-byte aligned
          SCOPED_TRACE(testing::Message() << dt_name(dt) << " dim=" << dim << " n_tok=" << n_tok
                                          << " offset=" << offset);
          const size_t esz = dt == KN_CUDA_F32 ? 4 : 2;
          std::vector<float> vals = randn((size_t)(n_vocab * dim), 1.0f, rng);
          std::vector<uint8_t> table((size_t)(n_vocab * dim) * esz);
          for (size_t i = 0; i < vals.size(); i++) {
            if (dt == KN_CUDA_F32) {
              memcpy(&table[i * 4], &vals[i], 4);
            } else {
              uint16_t b = encode(vals[i], dt);
              memcpy(&table[i * 2], &b, 2);
            }
          }
          std::vector<int32_t> ids(n_tok);
          for (auto &id : ids) id = (int32_t)(rng() % n_vocab);
          ids[0] = (int32_t)n_vocab - 1;

          kn_weight_t w = {dt == KN_CUDA_F32 ? AK_TYPE_F32 : dt == KN_CUDA_F16 ? AK_TYPE_F16 : AK_TYPE_BF16,
                           n_vocab, dim, table.data()};
          std::vector<float> ref((size_t)(n_tok * dim));
          ak_err_t err{};
          ASSERT_EQ(kn_embed(cpu_.get(), &w, ids.data(), n_tok, ref.data(), &err), AK_OK) << err.msg;

          DevBuf d_table(table.size() + 16), d_ids(ids.size() * 4), d_out(ref.size() * 4), d_flag(4);
          uint8_t *tab = d_table.as<uint8_t>(offset * esz);
          ASSERT_EQ(cudaMemcpy(tab, table.data(), table.size(), cudaMemcpyHostToDevice), cudaSuccess);
          to_dev(d_ids.ptr, ids);
          poison(d_out.ptr, d_out.n_bytes);
          ASSERT_EQ(cudaMemset(d_flag.ptr, 0, 4), cudaSuccess);
          kn_cuda_embed_args_t a = {tab, dt, d_ids.as<int32_t>(), d_out.as<float>(), n_tok, dim, n_vocab,
                                    d_flag.as<int32_t>()};
          ASSERT_EQ(kn_cuda_embed(&a, stream(), &err), AK_OK) << err.msg;
          sync();
          std::vector<float> out = from_dev<float>(d_out.ptr, ref.size());
          EXPECT_LE(rel_err(out, ref), 1e-5);
          EXPECT_EQ(memcmp(out.data(), ref.data(), ref.size() * 4), 0) << "conversions to f32 are exact";
          EXPECT_EQ(from_dev<int32_t>(d_flag.ptr, 1)[0], 0);
        }
}

TEST_F(KnCudaOpsGpu, EmbedBadIdGivesZeroRowAndRaisesFlag) {
  std::mt19937_64 rng(12);
  const int64_t n_vocab = 50, dim = 64, n_tok = 5;
  std::vector<float> table = randn((size_t)(n_vocab * dim), 1.0f, rng);
  std::vector<int32_t> ids = {3, -1, 49, 50, 7};
  DevBuf d_table(table.size() * 4), d_ids(ids.size() * 4), d_out((size_t)(n_tok * dim) * 4), d_flag(4);
  to_dev(d_table.ptr, table);
  to_dev(d_ids.ptr, ids);
  poison(d_out.ptr, d_out.n_bytes);
  ASSERT_EQ(cudaMemset(d_flag.ptr, 0, 4), cudaSuccess);
  kn_cuda_embed_args_t a = {d_table.ptr, KN_CUDA_F32, d_ids.as<int32_t>(), d_out.as<float>(), n_tok, dim, n_vocab,
                            d_flag.as<int32_t>()};
  ak_err_t err{};
  ASSERT_EQ(kn_cuda_embed(&a, stream(), &err), AK_OK) << err.msg;
  sync();
  std::vector<float> out = from_dev<float>(d_out.ptr, (size_t)(n_tok * dim));
  EXPECT_EQ(from_dev<int32_t>(d_flag.ptr, 1)[0], 1);
  for (int64_t t = 0; t < n_tok; t++)
    for (int64_t i = 0; i < dim; i++) {
      const bool bad = ids[t] < 0 || ids[t] >= n_vocab;
      const float want = bad ? 0.0f : table[(size_t)(ids[t] * dim + i)];
      ASSERT_EQ(out[(size_t)(t * dim + i)], want) << "t=" << t << " i=" << i;
    }
  // Without a flag pointer the bad rows are still zeros.
  a.bad_id_flag = nullptr;
  poison(d_out.ptr, d_out.n_bytes);
  ASSERT_EQ(kn_cuda_embed(&a, stream(), &err), AK_OK) << err.msg;
  sync();
  out = from_dev<float>(d_out.ptr, (size_t)(n_tok * dim));
  EXPECT_EQ(out[(size_t)(1 * dim)], 0.0f);
  EXPECT_EQ(out[(size_t)(3 * dim + dim - 1)], 0.0f);
}

// ---- RMSNorm ----

TEST_F(KnCudaOpsGpu, RmsnormWithResidualMatchesCpu) {
  std::mt19937_64 rng(21);
  for (kn_cuda_dtype_t dt : {KN_CUDA_F32, KN_CUDA_BF16})
    for (bool with_delta : {false, true})
      // 576/4096/8192: the row kept in registers (1..2 float4 a thread); 20480: more
      // than 4 float4 a thread, the two-pass path; 577: one element per access
      for (int64_t dim : {576, 577, 64, 4096, 8192, 20480})
        for (int64_t n_tok : {1, 17, 97}) {
          SCOPED_TRACE(testing::Message() << dt_name(dt) << " delta=" << with_delta << " dim=" << dim
                                          << " n_tok=" << n_tok);
          const size_t n = (size_t)(n_tok * dim);
          std::vector<float> x = randn(n, 2.0f, rng), delta = randn(n, 0.5f, rng), w = randn((size_t)dim, 1.0f, rng);
          std::vector<float> x_ref = x;
          if (with_delta)
            for (size_t i = 0; i < n; i++) x_ref[i] = x[i] + delta[i];
          std::vector<float> ref(n);
          const float eps = 1e-5f;
          ASSERT_EQ(kn_rmsnorm(cpu_.get(), x_ref.data(), w.data(), n_tok, dim, eps, ref.data()), AK_OK);

          DevBuf d_x(n * 4), d_delta(n * 4), d_w((size_t)dim * 4), d_out(n * 4);
          to_dev(d_x.ptr, x);
          to_dev(d_delta.ptr, delta);
          to_dev(d_w.ptr, w);
          poison(d_out.ptr, d_out.n_bytes);
          kn_cuda_rmsnorm_args_t a = {d_x.as<float>(), with_delta ? d_delta.as<float>() : nullptr,
                                      d_w.as<float>(), d_out.ptr, dt, n_tok, dim, eps};
          ak_err_t err{};
          ASSERT_EQ(kn_cuda_rmsnorm(&a, stream(), &err), AK_OK) << err.msg;
          sync();
          std::vector<float> x_out = from_dev<float>(d_x.ptr, n);
          EXPECT_EQ(memcmp(x_out.data(), x_ref.data(), n * 4), 0) << "x after the residual add";
          EXPECT_LE(rel_err(out_from_dev(d_out.ptr, n, dt), ref), tol_for(dt));
        }
}

// ---- RoPE ----

TEST_F(KnCudaOpsGpu, RopeMatchesCpuUpTo32kPositions) {
  std::mt19937_64 rng(31);
  struct Shape {
    int32_t n_heads, head_dim, rot_dims;
  };
  for (int32_t mode : {0, 2})
    for (Shape s : {Shape{9, 64, 64}, Shape{3, 96, 32}, Shape{5, 65, 64}, Shape{2, 128, 128}})
      for (float freq_scale : {1.0f, 0.25f})
        for (int64_t n_tok : {1, 17, 97}) {
          SCOPED_TRACE(testing::Message() << "mode=" << mode << " heads=" << s.n_heads << " head_dim=" << s.head_dim
                                          << " rot=" << s.rot_dims << " scale=" << freq_scale << " n_tok=" << n_tok);
          const size_t n = (size_t)(n_tok * s.n_heads * s.head_dim);
          std::vector<float> x = randn(n, 1.0f, rng);
          std::vector<int32_t> pos(n_tok);
          for (auto &p : pos) p = (int32_t)(rng() % 32768);
          if (n_tok > 1) pos[1] = 32767;
          pos[0] = n_tok > 1 ? 0 : 32000;
          const float base = s.head_dim == 128 ? 500000.0f : 10000.0f;
          std::vector<float> ref = x;
          kn_rope_args_t ca = {ref.data(), pos.data(), n_tok, s.n_heads, s.head_dim, s.rot_dims, base, freq_scale,
                               (kn_rope_mode_t)mode};
          ak_err_t err{};
          ASSERT_EQ(kn_rope(cpu_.get(), &ca, &err), AK_OK) << err.msg;

          // a second tensor (K beside Q) rotated in the same launch, with its own head count
          const int32_t n_heads2 = s.n_heads / 2 + 1;
          const size_t n2 = (size_t)(n_tok * n_heads2 * s.head_dim);
          std::vector<float> x2 = randn(n2, 1.0f, rng), ref2 = x2;
          kn_rope_args_t ca2 = ca;
          ca2.x = ref2.data();
          ca2.n_heads = n_heads2;
          ASSERT_EQ(kn_rope(cpu_.get(), &ca2, &err), AK_OK) << err.msg;

          DevBuf d_x(n * 4), d_x2(n2 * 4), d_pos(pos.size() * 4);
          to_dev(d_x.ptr, x);
          to_dev(d_x2.ptr, x2);
          to_dev(d_pos.ptr, pos);
          kn_cuda_rope_args_t a = {d_x.as<float>(), d_pos.as<int32_t>(), n_tok, s.n_heads, s.head_dim, s.rot_dims,
                                   base, freq_scale, mode};
          ASSERT_EQ(kn_cuda_rope(&a, stream(), &err), AK_OK) << err.msg;  // x alone
          sync();
          std::vector<float> out = from_dev<float>(d_x.ptr, n);
          EXPECT_LE(rel_err(out, ref), 1e-5);
          // cos/sin from a kn_cuda_rope_table of the same positions: the same bits
          DevBuf d_table((size_t)n_tok * s.rot_dims * 4);
          kn_cuda_rope_table_args_t ta = {d_pos.as<int32_t>(), n_tok, s.rot_dims, base, freq_scale,
                                          d_table.as<float>()};
          ASSERT_EQ(kn_cuda_rope_table(&ta, stream(), &err), AK_OK) << err.msg;
          to_dev(d_x.ptr, x);
          a.table = d_table.as<float>();
          ASSERT_EQ(kn_cuda_rope(&a, stream(), &err), AK_OK) << err.msg;
          sync();
          std::vector<float> out_table = from_dev<float>(d_x.ptr, n);
          EXPECT_EQ(memcmp(out_table.data(), out.data(), n * 4), 0) << "x differs with the table";
          a.table = nullptr;
          to_dev(d_x.ptr, x);
          a.x2 = d_x2.as<float>();
          a.n_heads2 = n_heads2;
          ASSERT_EQ(kn_cuda_rope(&a, stream(), &err), AK_OK) << err.msg;  // x and x2 in one launch
          sync();
          std::vector<float> out_fused = from_dev<float>(d_x.ptr, n), out2 = from_dev<float>(d_x2.ptr, n2);
          EXPECT_EQ(memcmp(out_fused.data(), out.data(), n * 4), 0) << "x differs when x2 rides along";
          EXPECT_LE(rel_err(out2, ref2), 1e-5);
          // The dims past rot_dims are untouched, bit for bit.
          for (int64_t r = 0; r < n_tok * s.n_heads; r++)
            for (int32_t d = s.rot_dims; d < s.head_dim; d++) {
              const size_t i = (size_t)(r * s.head_dim + d);
              ASSERT_EQ(memcmp(&out[i], &x[i], 4), 0) << "row " << r << " dim " << d;
            }
        }
}

// ---- SwiGLU ----

TEST_F(KnCudaOpsGpu, SiluMulMatchesCpu) {
  std::mt19937_64 rng(41);
  for (kn_cuda_dtype_t dt : {KN_CUDA_F32, KN_CUDA_BF16})
    for (int64_t n_ff : {1536, 1537, 64 * 9})
      for (int64_t n_tok : {1, 17, 97})
        for (int64_t offset : {0, 1}) {  // 1: inputs not 16-byte aligned
          SCOPED_TRACE(testing::Message() << dt_name(dt) << " n_ff=" << n_ff << " n_tok=" << n_tok
                                          << " offset=" << offset);
          const size_t n = (size_t)(n_tok * n_ff);
          std::vector<float> gate = randn(n, 3.0f, rng), up = randn(n, 1.0f, rng), ref(n);
          kn_silu_mul(cpu_.get(), gate.data(), up.data(), ref.data(), (int64_t)n);
          DevBuf d_gate((n + 1) * 4), d_up((n + 1) * 4), d_out(n * 4);
          to_dev(d_gate.as<float>(offset), gate);
          to_dev(d_up.as<float>(offset), up);
          poison(d_out.ptr, d_out.n_bytes);
          kn_cuda_silu_mul_args_t a = {d_gate.as<float>(offset), d_up.as<float>(offset), d_out.ptr, dt, n_tok, n_ff};
          ak_err_t err{};
          ASSERT_EQ(kn_cuda_silu_mul(&a, stream(), &err), AK_OK) << err.msg;
          sync();
          EXPECT_LE(rel_err(out_from_dev(d_out.ptr, n, dt), ref), tol_for(dt));
        }
}

// ---- KV store ----

TEST_F(KnCudaOpsGpu, KvStoreWritesOnlyItsSlots) {
  std::mt19937_64 rng(51);
  const int32_t page_tokens = 16, n_pages = 9;
  for (kn_cuda_dtype_t dt : {KN_CUDA_F16, KN_CUDA_BF16})
    for (int32_t head_dim : {64, 65})
      for (int32_t n_kv_heads : {3, 1})
        for (int64_t n_tok : {1, 17, 97}) {
          SCOPED_TRACE(testing::Message() << dt_name(dt) << " head_dim=" << head_dim << " n_kv_heads=" << n_kv_heads
                                          << " n_tok=" << n_tok);
          const int64_t head_stride = (int64_t)page_tokens * head_dim + 8;  // padded
          const int64_t page_stride = n_kv_heads * head_stride + 4;
          const size_t pool_elems = (size_t)(n_pages * page_stride);
          // Distinct (page, slot) for every token.
          std::vector<int32_t> all(n_pages * page_tokens);
          std::iota(all.begin(), all.end(), 0);
          std::shuffle(all.begin(), all.end(), rng);
          std::vector<int32_t> page(n_tok), slot(n_tok);
          for (int64_t t = 0; t < n_tok; t++) page[t] = all[t] / page_tokens, slot[t] = all[t] % page_tokens;
          const size_t n = (size_t)(n_tok * n_kv_heads * head_dim);
          std::vector<float> k = randn(n, 1.0f, rng), v = randn(n, 1.0f, rng);

          DevBuf d_k(n * 4), d_v(n * 4), d_kb(pool_elems * 2), d_vb(pool_elems * 2), d_page(n_tok * 4),
              d_slot(n_tok * 4);
          to_dev(d_k.ptr, k);
          to_dev(d_v.ptr, v);
          to_dev(d_page.ptr, page);
          to_dev(d_slot.ptr, slot);
          poison(d_kb.ptr, d_kb.n_bytes);
          poison(d_vb.ptr, d_vb.n_bytes);
          kn_cuda_kv_store_args_t a = {d_k.as<float>(), d_v.as<float>(), d_kb.ptr, d_vb.ptr, dt, page_stride,
                                       head_stride, n_kv_heads, head_dim, d_page.as<int32_t>(),
                                       d_slot.as<int32_t>(), n_tok};
          ak_err_t err{};
          ASSERT_EQ(kn_cuda_kv_store(&a, stream(), &err), AK_OK) << err.msg;
          sync();
          for (int kv = 0; kv < 2; kv++) {
            const std::vector<float> &src = kv ? v : k;
            std::vector<uint16_t> pool = from_dev<uint16_t>(kv ? d_vb.ptr : d_kb.ptr, pool_elems);
            std::vector<uint8_t> written(pool_elems, 0);
            std::vector<float> got(n), want(n);
            for (int64_t t = 0; t < n_tok; t++)
              for (int32_t h = 0; h < n_kv_heads; h++)
                for (int32_t e = 0; e < head_dim; e++) {
                  const size_t off = (size_t)(page[t] * page_stride + h * head_stride + (int64_t)slot[t] * head_dim + e);
                  const size_t si = (size_t)((t * n_kv_heads + h) * head_dim + e);
                  written[off] = 1;
                  got[si] = decode({pool[off]}, dt)[0];
                  want[si] = src[si];
                }
            EXPECT_LE(rel_err(got, want), tol_for(dt)) << (kv ? "V" : "K");
            size_t n_touched = 0;
            for (size_t i = 0; i < pool_elems; i++) n_touched += !written[i] && pool[i] != 0xFFFF;
            EXPECT_EQ(n_touched, 0u) << (kv ? "V" : "K") << ": elements outside the stored slots changed";
          }
        }
}

TEST_F(KnCudaOpsGpu, KvStoreSkipsTokensItCannotPlace) {
  const int32_t head_dim = 8, n_kv_heads = 2, page_tokens = 4;
  const int64_t head_stride = page_tokens * head_dim, page_stride = n_kv_heads * head_stride;
  const size_t pool_elems = (size_t)(3 * page_stride);
  std::vector<int32_t> page = {-1, 0, 1}, slot = {0, -2, page_tokens};  // slot 4 * 8 + 8 > head_stride
  std::vector<float> k(3 * n_kv_heads * head_dim, 1.0f);
  DevBuf d_k(k.size() * 4), d_kb(pool_elems * 2), d_vb(pool_elems * 2), d_page(12), d_slot(12);
  to_dev(d_k.ptr, k);
  to_dev(d_page.ptr, page);
  to_dev(d_slot.ptr, slot);
  poison(d_kb.ptr, d_kb.n_bytes);
  poison(d_vb.ptr, d_vb.n_bytes);
  kn_cuda_kv_store_args_t a = {d_k.as<float>(), d_k.as<float>(), d_kb.ptr, d_vb.ptr, KN_CUDA_BF16, page_stride,
                               head_stride, n_kv_heads, head_dim, d_page.as<int32_t>(), d_slot.as<int32_t>(), 3};
  ak_err_t err{};
  ASSERT_EQ(kn_cuda_kv_store(&a, stream(), &err), AK_OK) << err.msg;
  sync();
  for (uint16_t b : from_dev<uint16_t>(d_kb.ptr, pool_elems)) ASSERT_EQ(b, 0xFFFF);
  for (uint16_t b : from_dev<uint16_t>(d_vb.ptr, pool_elems)) ASSERT_EQ(b, 0xFFFF);
}

// ---- RoPE with the K/V store fused (kn_cuda_rope_args_t.store) ----

// Where each token of a few sequences goes: sequence s holds tokens [begin, end) of the
// step at positions start_s + i, in its own shuffled pages; a token may be given the
// sentinel page -1 (skipped by both paths).
struct StorePlan {
  std::vector<int32_t> pos, page, slot;
  int32_t n_pages = 0;
};

StorePlan plan_store(int64_t n_tok, int32_t page_tokens, std::mt19937_64 &rng) {
  StorePlan p;
  const int64_t n_seqs = std::min<int64_t>(n_tok, 5);
  std::vector<int64_t> len(n_seqs, n_tok / n_seqs);
  for (int64_t i = 0; i < n_tok % n_seqs; i++) len[i]++;
  std::vector<int32_t> start(n_seqs);
  int32_t n_pages = 0;
  for (int64_t s = 0; s < n_seqs; s++) {
    start[s] = (int32_t)(rng() % 40);
    n_pages += (int32_t)((start[s] + len[s] + page_tokens - 1) / page_tokens);
  }
  p.n_pages = n_pages + 3;  // three pages no token uses
  std::vector<int32_t> ids(p.n_pages);
  std::iota(ids.begin(), ids.end(), 0);
  std::shuffle(ids.begin(), ids.end(), rng);
  size_t next = 0;
  for (int64_t s = 0; s < n_seqs; s++) {
    const int32_t n_seq_pages = (int32_t)((start[s] + len[s] + page_tokens - 1) / page_tokens);
    std::vector<int32_t> mine(ids.begin() + (long)next, ids.begin() + (long)next + n_seq_pages);
    next += (size_t)n_seq_pages;
    for (int64_t i = 0; i < len[s]; i++) {
      const int32_t at = start[s] + (int32_t)i;
      p.pos.push_back(at);
      p.page.push_back(mine[(size_t)(at / page_tokens)]);
      p.slot.push_back(at % page_tokens);
    }
  }
  if (n_tok >= 17) p.page[5] = -1;  // the sentinel: nothing written for token 5
  return p;
}

std::string hex16(uint16_t v) {
  char buf[8];
  snprintf(buf, sizeof buf, "0x%04x", (unsigned)v);
  return buf;
}

// The first element where two page pools differ, as (page, head, slot, elem).
std::string first_pool_diff(const std::vector<uint16_t> &a, const std::vector<uint16_t> &b, int64_t page_stride,
                            int64_t head_stride, int32_t head_dim) {
  for (size_t i = 0; i < a.size(); i++)
    if (a[i] != b[i]) {
      const int64_t pg = (int64_t)i / page_stride, in_page = (int64_t)i % page_stride;
      const int64_t h = in_page / head_stride, in_head = in_page % head_stride;
      return "page " + std::to_string(pg) + " head " + std::to_string(h) + " slot " +
             std::to_string(in_head / head_dim) + " elem " + std::to_string(in_head % head_dim) + ": fused " +
             hex16(a[i]) + " vs separate " + hex16(b[i]);
    }
  return "";
}

TEST_F(KnCudaOpsGpu, RopeWithStoreEqualsRopeThenKvStore) {
  std::mt19937_64 rng(61);
  struct Shape {
    int32_t head_dim, rot_dims, n_heads, n_kv_heads;
  };
  for (kn_cuda_dtype_t dt : {KN_CUDA_F16, KN_CUDA_BF16})
    for (int32_t mode : {0, 2})
      for (Shape s : {Shape{64, 64, 8, 1}, Shape{64, 32, 20, 5}, Shape{128, 128, 32, 8}, Shape{128, 64, 12, 3},
                      Shape{256, 256, 8, 2}, Shape{256, 128, 20, 5}})
        for (int32_t page_tokens : {1, 16, 32})
          for (int64_t n_tok : {1, 17, 97}) {
            // n_tok 17: an odd head stride, so both paths store one element at a time
            const int64_t pad = n_tok == 17 ? 1 : 4;
            SCOPED_TRACE(testing::Message() << dt_name(dt) << " mode=" << mode << " head_dim=" << s.head_dim
                                            << " rot=" << s.rot_dims << " heads=" << s.n_heads << "/"
                                            << s.n_kv_heads << " page_tokens=" << page_tokens << " n_tok=" << n_tok
                                            << " pad=" << pad);
            const StorePlan plan = plan_store(n_tok, page_tokens, rng);
            const int64_t head_stride = (int64_t)page_tokens * s.head_dim + pad;
            const int64_t page_stride = s.n_kv_heads * head_stride + pad;
            const size_t pool_elems = (size_t)(plan.n_pages * page_stride);
            const size_t nq = (size_t)(n_tok * s.n_heads * s.head_dim);
            const size_t nk = (size_t)(n_tok * s.n_kv_heads * s.head_dim);
            const std::vector<float> q = randn(nq, 1.0f, rng), k = randn(nk, 1.0f, rng), v = randn(nk, 1.0f, rng);
            DevBuf d_q(nq * 4), d_k(nk * 4), d_v(nk * 4), d_pos(n_tok * 4), d_page(n_tok * 4), d_slot(n_tok * 4),
                d_kb(pool_elems * 2), d_vb(pool_elems * 2);
            to_dev(d_v.ptr, v);
            to_dev(d_pos.ptr, plan.pos);
            to_dev(d_page.ptr, plan.page);
            to_dev(d_slot.ptr, plan.slot);
            kn_cuda_rope_args_t r = {d_q.as<float>(), d_pos.as<int32_t>(), n_tok, s.n_heads, s.head_dim,
                                     s.rot_dims, 500000.0f, 1.0f, mode, d_k.as<float>(), s.n_kv_heads, nullptr};
            kn_cuda_kv_store_args_t st = {d_k.as<float>(), d_v.as<float>(), d_kb.ptr, d_vb.ptr, dt, page_stride,
                                          head_stride, s.n_kv_heads, s.head_dim, d_page.as<int32_t>(),
                                          d_slot.as<int32_t>(), n_tok};
            ak_err_t err{};
            // the separate launches
            to_dev(d_q.ptr, q);
            to_dev(d_k.ptr, k);
            poison(d_kb.ptr, d_kb.n_bytes);
            poison(d_vb.ptr, d_vb.n_bytes);
            ASSERT_EQ(kn_cuda_rope(&r, stream(), &err), AK_OK) << err.msg;
            ASSERT_EQ(kn_cuda_kv_store(&st, stream(), &err), AK_OK) << err.msg;
            sync();
            const std::vector<float> q_sep = from_dev<float>(d_q.ptr, nq), k_sep = from_dev<float>(d_k.ptr, nk);
            const std::vector<uint16_t> kb_sep = from_dev<uint16_t>(d_kb.ptr, pool_elems),
                                        vb_sep = from_dev<uint16_t>(d_vb.ptr, pool_elems);
            // the fused launch, on the same inputs and freshly poisoned pages
            to_dev(d_q.ptr, q);
            to_dev(d_k.ptr, k);
            poison(d_kb.ptr, d_kb.n_bytes);
            poison(d_vb.ptr, d_vb.n_bytes);
            r.store = &st;
            ASSERT_EQ(kn_cuda_rope(&r, stream(), &err), AK_OK) << err.msg;
            sync();
            const std::vector<float> q_fus = from_dev<float>(d_q.ptr, nq), k_fus = from_dev<float>(d_k.ptr, nk);
            const std::vector<uint16_t> kb_fus = from_dev<uint16_t>(d_kb.ptr, pool_elems),
                                        vb_fus = from_dev<uint16_t>(d_vb.ptr, pool_elems);
            EXPECT_EQ(memcmp(q_fus.data(), q_sep.data(), nq * 4), 0) << "rotated Q differs";
            EXPECT_EQ(memcmp(k_fus.data(), k_sep.data(), nk * 4), 0) << "rotated K (x2) differs";
            EXPECT_TRUE(kb_fus == kb_sep) << "K pages: " << first_pool_diff(kb_fus, kb_sep, page_stride, head_stride,
                                                                        s.head_dim);
            EXPECT_TRUE(vb_fus == vb_sep) << "V pages: " << first_pool_diff(vb_fus, vb_sep, page_stride, head_stride,
                                                                        s.head_dim);
            // On its own too: the stored rows hold the rotated K and V, nothing else changed.
            for (int kv = 0; kv < 2; kv++) {
              const std::vector<float> &src = kv ? v : k_fus;
              const std::vector<uint16_t> &pool = kv ? vb_fus : kb_fus;
              std::vector<uint8_t> written(pool_elems, 0);
              std::vector<float> got, want;
              for (int64_t t = 0; t < n_tok; t++) {
                if (plan.page[(size_t)t] < 0) continue;
                for (int32_t h = 0; h < s.n_kv_heads; h++)
                  for (int32_t e = 0; e < s.head_dim; e++) {
                    const size_t off = (size_t)(plan.page[(size_t)t] * page_stride + h * head_stride +
                                                (int64_t)plan.slot[(size_t)t] * s.head_dim + e);
                    written[off] = 1;
                    got.push_back(dt == KN_CUDA_F16 ? ak_f16_to_f32(pool[off]) : ak_bf16_to_f32(pool[off]));
                    want.push_back(src[(size_t)((t * s.n_kv_heads + h) * s.head_dim + e)]);
                  }
              }
              EXPECT_LE(rel_err(got, want), tol_for(dt)) << (kv ? "V" : "K");
              size_t n_touched = 0;
              for (size_t i = 0; i < pool_elems; i++) n_touched += !written[i] && pool[i] != 0xFFFF;
              EXPECT_EQ(n_touched, 0u) << (kv ? "V" : "K") << ": elements outside the stored slots changed";
            }
            if (HasFailure()) return;  // one failing configuration is enough to read
          }
}

// ---- sampling ----

// Draw counts against the reference distribution p: a filtered token (p == 0) is never
// drawn, every other count is within 5 standard deviations (+1) of its binomial mean.
void expect_frequencies(const std::vector<int64_t> &count, const std::vector<double> &p, double n_draws) {
  for (size_t i = 0; i < p.size(); i++) {
    if (p[i] == 0.0) {
      EXPECT_EQ(count[i], 0) << "token " << i << " is filtered out";
      continue;
    }
    const double mean = n_draws * p[i], sd = std::sqrt(n_draws * p[i] * (1.0 - p[i]));
    EXPECT_NEAR((double)count[i], mean, 5.0 * sd + 1.0) << "token " << i << " p=" << p[i];
  }
}

// Runs kn_cuda_sample on n_rows copies of `row` (or on `logits` as given).
std::vector<int32_t> run_sample(kn_cuda_stream_t s, const DevBuf &d_logits, int64_t n_rows, int64_t n_vocab,
                                float temperature, int32_t top_k, float top_p, uint64_t seed, uint64_t step) {
  DevBuf d_ids((size_t)n_rows * 4);
  poison(d_ids.ptr, d_ids.n_bytes);
  kn_cuda_sample_args_t a = {d_logits.as<float>(), d_ids.as<int32_t>(), n_rows, n_vocab, temperature, top_k,
                             top_p, seed, step};
  EXPECT_EQ(kn_cuda_sample_workspace_bytes(&a), 0u);
  ak_err_t err{};
  EXPECT_EQ(kn_cuda_sample(&a, nullptr, 0, s, &err), AK_OK) << err.msg;
  EXPECT_EQ(cudaStreamSynchronize((cudaStream_t)s), cudaSuccess);
  return from_dev<int32_t>(d_ids.ptr, (size_t)n_rows);
}

TEST_F(KnCudaOpsGpu, GreedyEqualsArgmaxLowestIdOnTies) {
  std::mt19937_64 rng(61);
  for (int64_t n_vocab : {1, 17, 97, 50257})
    for (int64_t n_rows : {1, 17}) {
      SCOPED_TRACE(testing::Message() << "n_vocab=" << n_vocab << " n_rows=" << n_rows);
      std::vector<float> logits = randn((size_t)(n_rows * n_vocab), 3.0f, rng);
      for (int64_t r = 0; r < n_rows && n_vocab > 4; r++) {
        float *row = &logits[(size_t)(r * n_vocab)];
        const int64_t a = (int64_t)(rng() % (n_vocab - 1)), b = a + 1 + (int64_t)(rng() % (n_vocab - 1 - a));
        if (r % 3 == 0) row[a] = row[b] = 100.0f;  // a tie: a wins
        if (r % 3 == 1) row[b] = NAN;              // NaN is never the max
        if (r % 3 == 2) row[a] = INFINITY;
      }
      DevBuf d((size_t)(n_rows * n_vocab) * 4);
      to_dev(d.ptr, logits);
      for (float temperature : {0.0f, -1.0f}) {
        std::vector<int32_t> ids = run_sample(stream(), d, n_rows, n_vocab, temperature, 0, 0.0f, 1, 2);
        for (int64_t r = 0; r < n_rows; r++)
          EXPECT_EQ(ids[r], kn_argmax(&logits[(size_t)(r * n_vocab)], n_vocab)) << "row " << r;
      }
      // top_k = 1 and a tiny top_p are greedy too, whatever the seed.
      for (uint64_t step = 0; step < 3; step++) {
        std::vector<int32_t> k1 = run_sample(stream(), d, n_rows, n_vocab, 0.8f, 1, 1.0f, 7, step);
        std::vector<int32_t> p0 = run_sample(stream(), d, n_rows, n_vocab, 1.5f, 0, 1e-6f, 7, step);
        for (int64_t r = 0; r < n_rows; r++) {
          const int64_t want = kn_argmax(&logits[(size_t)(r * n_vocab)], n_vocab);
          EXPECT_EQ(k1[r], want) << "top_k=1 row " << r;
          EXPECT_EQ(p0[r], want) << "top_p=1e-6 row " << r;
        }
      }
    }
}

// The filtered distribution in double: order by (logit desc, id asc), keep top_k,
// renormalize, keep the smallest prefix reaching top_p, renormalize. *margin_p: how
// far the top_p cut is from flipping (cumulative mass - top_p around the cut).
std::vector<double> expected_probs(const std::vector<float> &logits, double temperature, int top_k, double top_p,
                                   double *margin_p) {
  const int n = (int)logits.size();
  std::vector<int> order(n);
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [&](int a, int b) { return logits[a] > logits[b]; });
  const double m = logits[order[0]];
  std::vector<double> e(n);
  for (int i = 0; i < n; i++) e[i] = std::exp(((double)logits[i] - m) / temperature);
  const int kept_k = top_k > 0 && top_k < n ? top_k : n;
  double zk = 0.0;
  for (int j = 0; j < kept_k; j++) zk += e[order[j]];
  int kept = kept_k;
  *margin_p = 1.0;
  if (top_p < 1.0) {
    double cum = 0.0;
    for (int j = 0; j < kept_k; j++) {
      const double prev = cum;
      cum += e[order[j]] / zk;
      if (cum >= top_p) {
        kept = j + 1;
        *margin_p = std::min(cum - top_p, top_p - prev);
        break;
      }
    }
  }
  double z = 0.0;
  for (int j = 0; j < kept; j++) z += e[order[j]];
  std::vector<double> p(n, 0.0);
  for (int j = 0; j < kept; j++) p[order[j]] = e[order[j]] / z;
  return p;
}

TEST_F(KnCudaOpsGpu, SampleDistributionMatchesFilteredSoftmax) {
  std::mt19937_64 rng(71);
  const int64_t n_vocab = 37, n_rows = 2048, n_steps = 50;
  std::vector<float> logits = randn((size_t)n_vocab, 1.5f, rng);
  logits[5] = logits[9] = logits[20];  // a three-way tie somewhere in the order
  DevBuf d((size_t)(n_rows * n_vocab) * 4);
  std::vector<float> rows((size_t)(n_rows * n_vocab));
  for (int64_t r = 0; r < n_rows; r++) std::copy(logits.begin(), logits.end(), rows.begin() + r * n_vocab);
  to_dev(d.ptr, rows);
  // The rank of the tied logit, so that one top_k cuts through the tie.
  int rank_tie = 0;
  for (float l : logits) rank_tie += l > logits[20];
  struct Cfg {
    float temperature;
    int32_t top_k;
    float top_p;
  };
  for (Cfg c : {Cfg{1.0f, 0, 1.0f}, Cfg{0.7f, 10, 1.0f}, Cfg{1.3f, 0, 0.8f}, Cfg{0.9f, 12, 0.7f},
                Cfg{1.0f, 100, 1.0f}, Cfg{2.0f, rank_tie + 2, 1.0f}, Cfg{0.5f, 0, 0.95f}}) {
    SCOPED_TRACE(testing::Message() << "T=" << c.temperature << " top_k=" << c.top_k << " top_p=" << c.top_p);
    double margin = 0.0;
    std::vector<double> p = expected_probs(logits, c.temperature, c.top_k, c.top_p, &margin);
    ASSERT_GT(margin, 1e-6) << "the top_p cut is too close to call: change the seed";
    std::vector<int64_t> count((size_t)n_vocab, 0);
    for (int64_t step = 0; step < n_steps; step++) {
      std::vector<int32_t> ids = run_sample(stream(), d, n_rows, n_vocab, c.temperature, c.top_k, c.top_p, 1234,
                                            (uint64_t)step);
      for (int32_t id : ids) {
        ASSERT_GE(id, 0);
        ASSERT_LT(id, n_vocab);
        count[(size_t)id]++;
      }
    }
    const double n_draws = (double)(n_rows * n_steps);
    expect_frequencies(count, p, n_draws);
  }
}

TEST_F(KnCudaOpsGpu, SampleIsDeterministicAndStaysInTheKeptSet) {
  std::mt19937_64 rng(81);
  const int64_t n_vocab = 50257, n_rows = 17;
  std::vector<float> logits = randn((size_t)(n_rows * n_vocab), 2.0f, rng);
  DevBuf d((size_t)(n_rows * n_vocab) * 4);
  to_dev(d.ptr, logits);
  struct Cfg {
    float temperature;
    int32_t top_k;
    float top_p;
  };
  for (Cfg c : {Cfg{1.0f, 50, 1.0f}, Cfg{1.0f, 0, 0.5f}, Cfg{0.8f, 2000, 0.9f}, Cfg{1.0f, 0, 1.0f}}) {
    SCOPED_TRACE(testing::Message() << "T=" << c.temperature << " top_k=" << c.top_k << " top_p=" << c.top_p);
    std::vector<std::vector<double>> p((size_t)n_rows);
    for (int64_t r = 0; r < n_rows; r++) {
      std::vector<float> row(logits.begin() + r * n_vocab, logits.begin() + (r + 1) * n_vocab);
      // With 50k tokens the cut may fall within float rounding of top_p: check
      // against a slightly larger kept set (a superset of both sides' rounding).
      double margin = 0.0;
      p[(size_t)r] = expected_probs(row, c.temperature, c.top_k, std::min(1.0, (double)c.top_p + 1e-5), &margin);
    }
    std::vector<int32_t> first;
    int n_distinct_steps = 0;
    for (uint64_t step = 0; step < 20; step++) {
      std::vector<int32_t> ids = run_sample(stream(), d, n_rows, n_vocab, c.temperature, c.top_k, c.top_p, 99, step);
      std::vector<int32_t> again = run_sample(stream(), d, n_rows, n_vocab, c.temperature, c.top_k, c.top_p, 99, step);
      EXPECT_EQ(ids, again) << "step " << step;
      if (step == 0) first = ids;
      else n_distinct_steps += ids != first;
      for (int64_t r = 0; r < n_rows; r++) {
        ASSERT_GE(ids[r], 0);
        ASSERT_LT(ids[r], n_vocab);
        EXPECT_GT(p[(size_t)r][(size_t)ids[r]], 0.0) << "row " << r << " drew filtered token " << ids[r];
      }
    }
    EXPECT_GE(n_distinct_steps, 15) << "the step should move the draws";
  }
}

// ---- per-row parameters, min-p, repetition penalty, logprobs ----

struct SampleOut {
  std::vector<int32_t> ids;
  std::vector<float> logprobs;
};

// kn_cuda_sample with scalar parameters on rows [d_logits, + n_rows * n_vocab), with logprobs.
SampleOut run_sample_scalar(kn_cuda_stream_t s, const float *d_logits, int64_t n_rows, int64_t n_vocab,
                            float temperature, int32_t top_k, float top_p, float min_p, uint64_t seed,
                            uint64_t step) {
  DevBuf d_ids((size_t)n_rows * 4), d_lp((size_t)n_rows * 4);
  poison(d_ids.ptr, d_ids.n_bytes);
  poison(d_lp.ptr, d_lp.n_bytes);
  kn_cuda_sample_args_t a = {d_logits, d_ids.as<int32_t>(), n_rows, n_vocab, temperature, top_k, top_p, seed, step};
  a.min_p = min_p;
  a.out_logprobs = d_lp.as<float>();
  ak_err_t err{};
  EXPECT_EQ(kn_cuda_sample(&a, nullptr, 0, s, &err), AK_OK) << err.msg;
  EXPECT_EQ(cudaStreamSynchronize((cudaStream_t)s), cudaSuccess);
  return {from_dev<int32_t>(d_ids.ptr, (size_t)n_rows), from_dev<float>(d_lp.ptr, (size_t)n_rows)};
}

// kn_cuda_sample with per-row parameters (and `history`, when not empty).
SampleOut run_sample_rows(kn_cuda_stream_t s, const float *d_logits, int64_t n_vocab,
                          const std::vector<kn_cuda_sample_row_t> &rows, const std::vector<int32_t> &history) {
  const int64_t n_rows = (int64_t)rows.size();
  DevBuf d_ids((size_t)n_rows * 4), d_lp((size_t)n_rows * 4), d_rows(rows.size() * sizeof(kn_cuda_sample_row_t)),
      d_hist(std::max<size_t>(history.size(), 1) * 4);
  poison(d_ids.ptr, d_ids.n_bytes);
  poison(d_lp.ptr, d_lp.n_bytes);
  to_dev(d_rows.ptr, rows);
  if (!history.empty()) to_dev(d_hist.ptr, history);
  kn_cuda_sample_args_t a{};
  a.logits = d_logits;
  a.out_ids = d_ids.as<int32_t>();
  a.n_rows = n_rows;
  a.n_vocab = n_vocab;
  a.temperature = NAN;  // ignored with rows
  a.rows = d_rows.as<kn_cuda_sample_row_t>();
  a.history_ids = history.empty() ? nullptr : d_hist.as<int32_t>();
  a.n_history_ids = (int64_t)history.size();
  a.out_logprobs = d_lp.as<float>();
  ak_err_t err{};
  EXPECT_EQ(kn_cuda_sample(&a, nullptr, 0, s, &err), AK_OK) << err.msg;
  EXPECT_EQ(cudaStreamSynchronize((cudaStream_t)s), cudaSuccess);
  return {from_dev<int32_t>(d_ids.ptr, (size_t)n_rows), from_dev<float>(d_lp.ptr, (size_t)n_rows)};
}

kn_cuda_sample_row_t sample_row(float temperature, int32_t top_k, float top_p, float min_p, uint64_t seed,
                                uint64_t step) {
  kn_cuda_sample_row_t r{};
  r.seed = seed;
  r.step = step;
  r.temperature = temperature;
  r.top_k = top_k;
  r.top_p = top_p;
  r.min_p = min_p;
  r.repetition_penalty = 1.0f;
  return r;
}

// One launch with different parameters per row draws, row by row, what a one-row
// scalar launch with that row's parameters draws (the per-row draw hashes row 0).
// Out-of-range per-row values take the documented meaning (greedy, filter off). Each
// vocabulary size gets n_steps steps of two rows a configuration.
void expect_sample_rows_equal_scalar_launches(kn_cuda_stream_t s, const std::vector<int64_t> &vocabs,
                                              uint64_t n_steps) {
  std::mt19937_64 rng(91);
  struct Cfg {
    kn_cuda_sample_row_t row;  // as uploaded (seed and step set per row below)
    float temperature;         // the scalar launch that must match
    int32_t top_k;
    float top_p, min_p;
  };
  const float kNan = std::numeric_limits<float>::quiet_NaN();
  const std::vector<Cfg> cfgs = {
      {sample_row(0.0f, 0, 1.0f, 0.0f, 0, 0), 0.0f, 0, 1.0f, 0.0f},
      {sample_row(0.8f, 40, 1.0f, 0.0f, 0, 0), 0.8f, 40, 1.0f, 0.0f},
      {sample_row(1.2f, 0, 0.9f, 0.0f, 0, 0), 1.2f, 0, 0.9f, 0.0f},
      {sample_row(1.0f, 0, 1.0f, 0.05f, 0, 0), 1.0f, 0, 1.0f, 0.05f},
      {sample_row(0.7f, 200, 0.8f, 0.01f, 0, 0), 0.7f, 200, 0.8f, 0.01f},
      {sample_row(kNan, 5, 0.5f, 0.5f, 0, 0), 0.0f, 0, 1.0f, 0.0f},    // NaN temperature: greedy
      {sample_row(-2.0f, 5, 0.5f, 0.5f, 0, 0), 0.0f, 0, 1.0f, 0.0f},   // negative: greedy
      {sample_row(1.1f, -3, 1.5f, 2.0f, 0, 0), 1.1f, 0, 1.0f, 0.0f},   // filters off
      {sample_row(0.9f, 0, kNan, kNan, 0, 0), 0.9f, 0, 1.0f, 0.0f},    // NaN filters off
  };
  for (int64_t n_vocab : vocabs) {
    const int64_t n_rows = (int64_t)cfgs.size() * 2;
    std::vector<float> logits = randn((size_t)(n_rows * n_vocab), 2.0f, rng);
    DevBuf d((size_t)(n_rows * n_vocab) * 4);
    to_dev(d.ptr, logits);
    for (uint64_t step = 0; step < n_steps; step++) {
      std::vector<kn_cuda_sample_row_t> rows;
      for (int64_t r = 0; r < n_rows; r++) {
        kn_cuda_sample_row_t row = cfgs[(size_t)r % cfgs.size()].row;
        row.seed = 500 + (uint64_t)r;
        row.step = step;
        rows.push_back(row);
      }
      SampleOut got = run_sample_rows(s, d.as<float>(), n_vocab, rows, {});
      for (int64_t r = 0; r < n_rows; r++) {
        const Cfg &c = cfgs[(size_t)r % cfgs.size()];
        SCOPED_TRACE(testing::Message() << "n_vocab=" << n_vocab << " step=" << step << " row " << r << " (cfg "
                                        << r % (int64_t)cfgs.size() << ")");
        SampleOut want = run_sample_scalar(s, d.as<float>((size_t)(r * n_vocab)), 1, n_vocab, c.temperature,
                                           c.top_k, c.top_p, c.min_p, rows[(size_t)r].seed, step);
        EXPECT_EQ(got.ids[(size_t)r], want.ids[0]);
        EXPECT_FLOAT_EQ(got.logprobs[(size_t)r], want.logprobs[0]);
        if (c.temperature <= 0.0f) {
          EXPECT_EQ(got.ids[(size_t)r], kn_argmax(&logits[(size_t)(r * n_vocab)], n_vocab));
          EXPECT_EQ(got.logprobs[(size_t)r], 0.0f) << "greedy's logprob is 0";
        }
      }
    }
  }
}

TEST_F(KnCudaOpsGpu, SampleRowsEqualScalarLaunches) {
  expect_sample_rows_equal_scalar_launches(stream(), {97, 50257}, 4);
}

// The same at one vocabulary size and one step: every filter path of both kernels in a
// few launches, so compute-sanitizer's racecheck finishes (deploy/gpu/gpu_check.sh's
// filter; the test above launches ~150 times and gives no verdict in 150 s there).
TEST_F(KnCudaOpsGpu, SampleRowsEqualScalarLaunchesOnce) {
  expect_sample_rows_equal_scalar_launches(stream(), {50257}, 1);
}

struct SamplerDeleter {
  void operator()(wk_sampler_t *s) const { wk_sampler_destroy(s); }
};
using SamplerPtr = std::unique_ptr<wk_sampler_t, SamplerDeleter>;

// Greedy with a repetition penalty equals wk_sampler's greedy after accepting the same
// history. Rows read different ranges of one history array; the last range runs past
// its end (clipped) and ids outside [0, n_vocab) are skipped, as kn_cuda.h says.
TEST_F(KnCudaOpsGpu, SampleGreedyPenaltyMatchesWkSampler) {
  std::mt19937_64 rng(101);
  const float penalties[] = {1.3f, 0.7f, 2.0f, 1.0f, 1.1f, 0.5f};
  const int64_t hist_lens[] = {1, 5, 64, 0, 300, 17};
  for (int64_t n_vocab : {17, 97, 50257}) {
    const int64_t n_rows = 12;
    std::vector<float> logits = randn((size_t)(n_rows * n_vocab), 2.0f, rng);
    std::vector<int32_t> history;
    std::vector<kn_cuda_sample_row_t> rows;
    std::vector<std::vector<int32_t>> row_hist((size_t)n_rows);  // the valid ids each row's range holds
    for (int64_t r = 0; r < n_rows; r++) {
      const float *x = &logits[(size_t)(r * n_vocab)];
      if (r % 4 == 3) {  // a negative best logit: the penalty multiplies it
        for (int64_t i = 0; i < n_vocab; i++) logits[(size_t)(r * n_vocab + i)] -= 20.0f;
      }
      kn_cuda_sample_row_t row = sample_row(r % 2 ? -1.0f : 0.0f, 0, 1.0f, 0.0f, 7, 0);
      row.repetition_penalty = penalties[r % 6];
      row.history_start_idx = (int32_t)history.size();
      const int64_t len = hist_lens[r % 6];
      for (int64_t h = 0; h < len; h++) {
        // The argmax first (so the penalty matters), then random ids with repeats.
        int32_t id = h == 0 ? (int32_t)kn_argmax(x, n_vocab) : (int32_t)(rng() % (uint64_t)std::min<int64_t>(n_vocab, 40));
        if (h == 3) id = -5;                     // skipped
        if (h == 4) id = (int32_t)n_vocab + 2;   // skipped
        history.push_back(id);
        if (id >= 0 && id < n_vocab) row_hist[(size_t)r].push_back(id);
      }
      row.n_history_ids = (int32_t)len;
      rows.push_back(row);
    }
    // The last row's range runs 50 ids past the end of the array: clipped.
    rows.back().n_history_ids += 50;
    DevBuf d((size_t)(n_rows * n_vocab) * 4);
    to_dev(d.ptr, logits);
    SampleOut got = run_sample_rows(stream(), d.as<float>(), n_vocab, rows, history);
    for (int64_t r = 0; r < n_rows; r++) {
      SCOPED_TRACE(testing::Message() << "n_vocab=" << n_vocab << " row " << r << " penalty "
                                      << rows[(size_t)r].repetition_penalty << " history "
                                      << row_hist[(size_t)r].size());
      wk_sampler_params_t sp = wk_sampler_params_default();
      sp.temperature = 0.0f;
      sp.repetition_penalty = rows[(size_t)r].repetition_penalty;
      sp.repeat_last_n = (int32_t)std::max<size_t>(row_hist[(size_t)r].size(), 1);
      wk_sampler_t *raw = nullptr;
      ak_err_t err{};
      ASSERT_EQ(wk_sampler_create(&sp, n_vocab, &err, &raw), AK_OK) << err.msg;
      SamplerPtr smp(raw);
      for (int32_t id : row_hist[(size_t)r]) ASSERT_EQ(wk_sampler_accept(smp.get(), id), AK_OK);
      int32_t want = -1;
      float want_lp = 1.0f;
      ASSERT_EQ(wk_sampler_sample(smp.get(), &logits[(size_t)(r * n_vocab)], &want, &want_lp), AK_OK);
      EXPECT_EQ(got.ids[(size_t)r], want);
      EXPECT_EQ(got.logprobs[(size_t)r], want_lp);
    }
  }
}

// The reference for the full filter chain in double: the penalty as wk_sampler applies
// it (in float), then expected_probs (top-k, top-p), then min-p on the weights relative
// to the best token, renormalized. *margin_p also covers how close a weight is to min_p.
std::vector<double> expected_probs_full(std::vector<float> logits, const std::vector<int32_t> &history, float penalty,
                                        double temperature, int top_k, double top_p, double min_p,
                                        double *margin_p) {
  std::vector<bool> seen(logits.size(), false);
  for (int32_t id : history) seen[(size_t)id] = true;
  for (size_t i = 0; i < logits.size(); i++)
    if (seen[i]) logits[i] = logits[i] > 0.0f ? logits[i] / penalty : logits[i] * penalty;
  std::vector<double> p = expected_probs(logits, temperature, top_k, top_p, margin_p);
  if (min_p <= 0.0) return p;
  const double m = *std::max_element(logits.begin(), logits.end());
  double z = 0.0;
  for (size_t i = 0; i < p.size(); i++) {
    const double w = std::exp(((double)logits[i] - m) / temperature);
    *margin_p = std::min(*margin_p, std::fabs(w - min_p));
    if (w < min_p) p[i] = 0.0;
    z += p[i];
  }
  for (double &v : p) v /= z;
  return p;
}

// Over many draws (every row its own seed, each step a new draw), the frequencies
// match the penalised, top-k / top-p / min-p filtered softmax within 5 sigma per token;
// filtered tokens never appear; and every logprob is log(p) of the drawn token.
TEST_F(KnCudaOpsGpu, SampleRowsMinPPenaltyDistributionAndLogprob) {
  std::mt19937_64 rng(111);
  const int64_t n_vocab = 37, n_rows = 2048, n_steps = 30;
  std::vector<float> logits = randn((size_t)n_vocab, 1.5f, rng);
  logits[11] = -std::fabs(logits[11]);  // a negative logit in the history
  DevBuf d((size_t)(n_rows * n_vocab) * 4);
  std::vector<float> all((size_t)(n_rows * n_vocab));
  for (int64_t r = 0; r < n_rows; r++) std::copy(logits.begin(), logits.end(), all.begin() + r * n_vocab);
  to_dev(d.ptr, all);
  const int32_t best = (int32_t)kn_argmax(logits.data(), n_vocab);
  const std::vector<int32_t> history = {best, 11, 3, 3, 20, best};
  struct Cfg {
    float temperature;
    int32_t top_k;
    float top_p, min_p, penalty;
  };
  for (Cfg c : {Cfg{1.0f, 0, 1.0f, 0.05f, 1.0f}, Cfg{0.8f, 20, 0.9f, 0.02f, 1.5f}, Cfg{1.3f, 0, 1.0f, 0.0f, 0.8f},
                Cfg{1.0f, 0, 0.6f, 0.3f, 1.2f}, Cfg{2.0f, 10, 1.0f, 0.2f, 3.0f}}) {
    SCOPED_TRACE(testing::Message() << "T=" << c.temperature << " top_k=" << c.top_k << " top_p=" << c.top_p
                                    << " min_p=" << c.min_p << " penalty=" << c.penalty);
    double margin = 0.0;
    std::vector<double> p =
        expected_probs_full(logits, history, c.penalty, c.temperature, c.top_k, c.top_p, c.min_p, &margin);
    ASSERT_GT(margin, 1e-6) << "a cut is too close to call: change the seed";
    std::vector<int64_t> count((size_t)n_vocab, 0);
    double max_lp_err = 0.0;
    for (int64_t step = 0; step < n_steps; step++) {
      std::vector<kn_cuda_sample_row_t> rows;
      for (int64_t r = 0; r < n_rows; r++) {
        kn_cuda_sample_row_t row = sample_row(c.temperature, c.top_k, c.top_p, c.min_p, 9000 + (uint64_t)r,
                                              (uint64_t)step);
        row.repetition_penalty = c.penalty;
        row.history_start_idx = 0;
        row.n_history_ids = (int32_t)history.size();
        rows.push_back(row);
      }
      SampleOut got = run_sample_rows(stream(), d.as<float>(), n_vocab, rows, history);
      for (int64_t r = 0; r < n_rows; r++) {
        const int32_t id = got.ids[(size_t)r];
        ASSERT_GE(id, 0);
        ASSERT_LT(id, n_vocab);
        count[(size_t)id]++;
        if (p[(size_t)id] > 0.0)
          max_lp_err = std::max(max_lp_err, std::fabs((double)got.logprobs[(size_t)r] - std::log(p[(size_t)id])));
      }
    }
    EXPECT_LT(max_lp_err, 1e-4) << "logprob = log p(chosen) under the final distribution";
    const double n_draws = (double)(n_rows * n_steps);
    expect_frequencies(count, p, n_draws);
  }
}

// At a real vocabulary size: every draw stays in the reference's kept set (slightly
// widened for float rounding at the top-p cut) and its logprob matches log p.
TEST_F(KnCudaOpsGpu, SampleRowsLogprobMatchesCpuAtVocabSize) {
  std::mt19937_64 rng(121);
  const int64_t n_vocab = 49152, n_rows = 6;
  std::vector<float> logits = randn((size_t)(n_rows * n_vocab), 2.5f, rng);
  DevBuf d((size_t)(n_rows * n_vocab) * 4);
  to_dev(d.ptr, logits);
  std::vector<int32_t> history;
  for (int i = 0; i < 200; i++) history.push_back((int32_t)(rng() % (uint64_t)n_vocab));
  const float temps[] = {1.0f, 0.7f, 1.5f, 1.0f, 0.9f, 1.2f};
  const int32_t top_ks[] = {0, 50, 0, 1000, 0, 0};
  const float top_ps[] = {1.0f, 1.0f, 0.9f, 0.95f, 1.0f, 0.5f};
  const float min_ps[] = {0.0f, 0.0f, 0.0f, 0.01f, 0.1f, 0.0f};
  const float pens[] = {1.0f, 1.3f, 1.0f, 1.2f, 0.9f, 1.1f};
  std::vector<std::vector<double>> p((size_t)n_rows);
  for (int64_t r = 0; r < n_rows; r++) {
    std::vector<float> row(logits.begin() + r * n_vocab, logits.begin() + (r + 1) * n_vocab);
    double margin = 0.0;
    p[(size_t)r] = expected_probs_full(row, history, pens[r], temps[r], top_ks[r],
                                       std::min(1.0, (double)top_ps[r] + 1e-5), min_ps[r], &margin);
    // Rows compared exactly below (no top-p cut) need their min_p cut clear of rounding;
    // the widened top-p rows only check membership in a superset.
    if (top_ps[r] >= 1.0f) ASSERT_GT(margin, 1e-6) << "row " << r << ": a min_p cut is too close to call";
  }
  for (uint64_t step = 0; step < 10; step++) {
    std::vector<kn_cuda_sample_row_t> rows;
    for (int64_t r = 0; r < n_rows; r++) {
      kn_cuda_sample_row_t row = sample_row(temps[r], top_ks[r], top_ps[r], min_ps[r], 31 + (uint64_t)r, step);
      row.repetition_penalty = pens[r];
      row.n_history_ids = (int32_t)history.size();
      rows.push_back(row);
    }
    SampleOut got = run_sample_rows(stream(), d.as<float>(), n_vocab, rows, history);
    for (int64_t r = 0; r < n_rows; r++) {
      SCOPED_TRACE(testing::Message() << "step " << step << " row " << r);
      const int32_t id = got.ids[(size_t)r];
      ASSERT_GE(id, 0);
      ASSERT_LT(id, n_vocab);
      ASSERT_GT(p[(size_t)r][(size_t)id], 0.0) << "drew filtered token " << id;
      // Only rows whose kept set is exact (no widened top-p) have exact probabilities.
      if (top_ps[r] >= 1.0f) EXPECT_NEAR(got.logprobs[(size_t)r], std::log(p[(size_t)r][(size_t)id]), 1e-3);
      EXPECT_LE(got.logprobs[(size_t)r], 0.0f);
    }
  }
}

// ---- argument validation: no GPU needed, nothing launched ----

float *const kFakeF = reinterpret_cast<float *>(0x1000);
int32_t *const kFakeI = reinterpret_cast<int32_t *>(0x2000);
void *const kFakeV = reinterpret_cast<void *>(0x3000);

TEST(KnCudaOpsArgs, EmbedRefusesBadArguments) {
  ak_err_t err{};
  const kn_cuda_embed_args_t ok = {kFakeV, KN_CUDA_BF16, kFakeI, kFakeF, 17, 576, 49152, nullptr};
  EXPECT_EQ(kn_cuda_embed(nullptr, nullptr, &err), AK_ERR_INVALID_ARG);
  EXPECT_TRUE(has(err, "args is NULL")) << err.msg;
  kn_cuda_embed_args_t a = ok;
  a.table = nullptr;
  EXPECT_EQ(kn_cuda_embed(&a, nullptr, &err), AK_ERR_INVALID_ARG);
  EXPECT_TRUE(has(err, "NULL pointer")) << err.msg;
  a = ok;
  a.ids = nullptr;
  EXPECT_EQ(kn_cuda_embed(&a, nullptr, &err), AK_ERR_INVALID_ARG);
  a = ok;
  a.out = nullptr;
  EXPECT_EQ(kn_cuda_embed(&a, nullptr, &err), AK_ERR_INVALID_ARG);
  a = ok;
  a.n_tok = 0;
  EXPECT_EQ(kn_cuda_embed(&a, nullptr, &err), AK_ERR_INVALID_ARG);
  EXPECT_TRUE(has(err, "n_tok=0")) << err.msg;
  a = ok;
  a.dim = -3;
  EXPECT_EQ(kn_cuda_embed(&a, nullptr, &err), AK_ERR_INVALID_ARG);
  EXPECT_TRUE(has(err, "dim=-3")) << err.msg;
  a = ok;
  a.n_vocab = 0;
  EXPECT_EQ(kn_cuda_embed(&a, nullptr, &err), AK_ERR_INVALID_ARG);
  EXPECT_TRUE(has(err, "n_vocab=0")) << err.msg;
  a = ok;
  a.table_dtype = (kn_cuda_dtype_t)7;
  EXPECT_EQ(kn_cuda_embed(&a, nullptr, &err), AK_ERR_INVALID_ARG);
  EXPECT_TRUE(has(err, "table_dtype=7")) << err.msg;
  EXPECT_TRUE(has(err, "kn_cuda_embed")) << err.msg;
}

TEST(KnCudaOpsArgs, RmsnormRefusesBadArguments) {
  ak_err_t err{};
  const kn_cuda_rmsnorm_args_t ok = {kFakeF, nullptr, kFakeF, kFakeV, KN_CUDA_BF16, 17, 576, 1e-5f};
  EXPECT_EQ(kn_cuda_rmsnorm(nullptr, nullptr, &err), AK_ERR_INVALID_ARG);
  kn_cuda_rmsnorm_args_t a = ok;
  a.x = nullptr;
  EXPECT_EQ(kn_cuda_rmsnorm(&a, nullptr, &err), AK_ERR_INVALID_ARG);
  EXPECT_TRUE(has(err, "NULL pointer")) << err.msg;
  a = ok;
  a.weight = nullptr;
  EXPECT_EQ(kn_cuda_rmsnorm(&a, nullptr, &err), AK_ERR_INVALID_ARG);
  a = ok;
  a.out = nullptr;
  EXPECT_EQ(kn_cuda_rmsnorm(&a, nullptr, &err), AK_ERR_INVALID_ARG);
  a = ok;
  a.n_tok = -1;
  EXPECT_EQ(kn_cuda_rmsnorm(&a, nullptr, &err), AK_ERR_INVALID_ARG);
  EXPECT_TRUE(has(err, "n_tok=-1")) << err.msg;
  a = ok;
  a.n_tok = (int64_t)INT32_MAX + 1;
  EXPECT_EQ(kn_cuda_rmsnorm(&a, nullptr, &err), AK_ERR_INVALID_ARG);
  a = ok;
  a.dim = 0;
  EXPECT_EQ(kn_cuda_rmsnorm(&a, nullptr, &err), AK_ERR_INVALID_ARG);
  EXPECT_TRUE(has(err, "dim=0")) << err.msg;
  a = ok;
  a.eps = -1.0f;
  EXPECT_EQ(kn_cuda_rmsnorm(&a, nullptr, &err), AK_ERR_INVALID_ARG);
  EXPECT_TRUE(has(err, "eps=-1")) << err.msg;
  a = ok;
  a.eps = NAN;
  EXPECT_EQ(kn_cuda_rmsnorm(&a, nullptr, &err), AK_ERR_INVALID_ARG);
  a = ok;
  a.out_dtype = KN_CUDA_F16;  // not an output type of this op
  EXPECT_EQ(kn_cuda_rmsnorm(&a, nullptr, &err), AK_ERR_INVALID_ARG);
  EXPECT_TRUE(has(err, "out_dtype=1")) << err.msg;
}

TEST(KnCudaOpsArgs, RopeRefusesBadArguments) {
  ak_err_t err{};
  const kn_cuda_rope_args_t ok = {kFakeF, kFakeI, 17, 9, 64, 64, 10000.0f, 1.0f, 0};
  EXPECT_EQ(kn_cuda_rope(nullptr, nullptr, &err), AK_ERR_INVALID_ARG);
  kn_cuda_rope_args_t a = ok;
  a.x = nullptr;
  EXPECT_EQ(kn_cuda_rope(&a, nullptr, &err), AK_ERR_INVALID_ARG);
  a = ok;
  a.pos = nullptr;
  EXPECT_EQ(kn_cuda_rope(&a, nullptr, &err), AK_ERR_INVALID_ARG);
  EXPECT_TRUE(has(err, "NULL pointer")) << err.msg;
  a = ok;
  a.n_tok = 0;
  EXPECT_EQ(kn_cuda_rope(&a, nullptr, &err), AK_ERR_INVALID_ARG);
  a = ok;
  a.n_heads = 0;
  EXPECT_EQ(kn_cuda_rope(&a, nullptr, &err), AK_ERR_INVALID_ARG);
  EXPECT_TRUE(has(err, "n_heads=0")) << err.msg;
  a = ok;
  a.head_dim = -64;
  EXPECT_EQ(kn_cuda_rope(&a, nullptr, &err), AK_ERR_INVALID_ARG);
  for (int32_t rot : {0, 63, 66, -2}) {
    a = ok;
    a.rot_dims = rot;
    EXPECT_EQ(kn_cuda_rope(&a, nullptr, &err), AK_ERR_INVALID_ARG) << rot;
    EXPECT_TRUE(has(err, ("rot_dims=" + std::to_string(rot)).c_str())) << err.msg;
  }
  a = ok;
  a.head_dim = 2048;
  a.rot_dims = 2048;  // more pairs than the kernel keeps in shared memory
  EXPECT_EQ(kn_cuda_rope(&a, nullptr, &err), AK_ERR_INVALID_ARG);
  a = ok;
  a.x2 = kFakeF;  // a second tensor needs its head count
  EXPECT_EQ(kn_cuda_rope(&a, nullptr, &err), AK_ERR_INVALID_ARG);
  EXPECT_TRUE(has(err, "n_heads2=0")) << err.msg;
  a = ok;
  a.freq_base = 0.0f;
  EXPECT_EQ(kn_cuda_rope(&a, nullptr, &err), AK_ERR_INVALID_ARG);
  EXPECT_TRUE(has(err, "freq_base=0")) << err.msg;
  a = ok;
  a.freq_scale = NAN;
  EXPECT_EQ(kn_cuda_rope(&a, nullptr, &err), AK_ERR_INVALID_ARG);
  a = ok;
  a.mode = 1;
  EXPECT_EQ(kn_cuda_rope(&a, nullptr, &err), AK_ERR_INVALID_ARG);
  EXPECT_TRUE(has(err, "mode=1")) << err.msg;
}

TEST(KnCudaOpsArgs, RopeTableRefusesBadArguments) {
  ak_err_t err{};
  const kn_cuda_rope_table_args_t ok = {kFakeI, 17, 64, 10000.0f, 1.0f, kFakeF};
  EXPECT_EQ(kn_cuda_rope_table(nullptr, nullptr, &err), AK_ERR_INVALID_ARG);
  kn_cuda_rope_table_args_t a = ok;
  a.pos = nullptr;
  EXPECT_EQ(kn_cuda_rope_table(&a, nullptr, &err), AK_ERR_INVALID_ARG);
  EXPECT_TRUE(has(err, "NULL pointer")) << err.msg;
  a = ok;
  a.table = nullptr;
  EXPECT_EQ(kn_cuda_rope_table(&a, nullptr, &err), AK_ERR_INVALID_ARG);
  a = ok;
  a.table = reinterpret_cast<float *>(reinterpret_cast<char *>(kFakeF) + 4);
  EXPECT_EQ(kn_cuda_rope_table(&a, nullptr, &err), AK_ERR_INVALID_ARG);
  EXPECT_TRUE(has(err, "aligned")) << err.msg;
  a = ok;
  a.n_tok = 0;
  EXPECT_EQ(kn_cuda_rope_table(&a, nullptr, &err), AK_ERR_INVALID_ARG);
  EXPECT_TRUE(has(err, "n_tok=0")) << err.msg;
  for (int32_t rot : {0, 63, -2, 2048}) {
    a = ok;
    a.rot_dims = rot;
    EXPECT_EQ(kn_cuda_rope_table(&a, nullptr, &err), AK_ERR_INVALID_ARG) << rot;
    EXPECT_TRUE(has(err, ("rot_dims=" + std::to_string(rot)).c_str())) << err.msg;
  }
  a = ok;
  a.freq_scale = 0.0f;
  EXPECT_EQ(kn_cuda_rope_table(&a, nullptr, &err), AK_ERR_INVALID_ARG);
  EXPECT_TRUE(has(err, "freq_scale=0")) << err.msg;
}

TEST(KnCudaOpsArgs, RopeRefusesBadStore) {
  float *const kFakeK = reinterpret_cast<float *>(0x4000), *const kFakeVrow = reinterpret_cast<float *>(0x5000);
  const kn_cuda_kv_store_args_t ok_st = {kFakeK, kFakeVrow, kFakeV, kFakeV, KN_CUDA_BF16, 3 * 16 * 64, 16 * 64, 3,
                                         64, kFakeI, kFakeI, 17};
  kn_cuda_kv_store_args_t st = ok_st;
  const kn_cuda_rope_args_t ok = {kFakeF, kFakeI, 17, 9, 64, 64, 10000.0f, 1.0f, 0, kFakeK, 3, &st};
  ak_err_t err{};
  kn_cuda_rope_args_t a = ok;
  // the store's k is not the K this launch rotates
  a.x2 = nullptr;
  a.n_heads2 = 0;
  EXPECT_EQ(kn_cuda_rope(&a, nullptr, &err), AK_ERR_INVALID_ARG);
  EXPECT_TRUE(has(err, "store->k=")) << err.msg;
  a = ok;
  st.k = kFakeF;
  EXPECT_EQ(kn_cuda_rope(&a, nullptr, &err), AK_ERR_INVALID_ARG);
  EXPECT_TRUE(has(err, "store->k=")) << err.msg;
  EXPECT_TRUE(has(err, "x2")) << err.msg;
  st = ok_st;
  st.n_tok = 16;
  EXPECT_EQ(kn_cuda_rope(&a, nullptr, &err), AK_ERR_INVALID_ARG);
  EXPECT_TRUE(has(err, "store->n_tok=16")) << err.msg;
  st = ok_st;
  st.n_kv_heads = 2;
  EXPECT_EQ(kn_cuda_rope(&a, nullptr, &err), AK_ERR_INVALID_ARG);
  EXPECT_TRUE(has(err, "store->n_kv_heads=2")) << err.msg;
  st = ok_st;
  st.head_dim = 128;
  EXPECT_EQ(kn_cuda_rope(&a, nullptr, &err), AK_ERR_INVALID_ARG);
  EXPECT_TRUE(has(err, "store->head_dim=128")) << err.msg;
  for (float *bad_v : {kFakeF, kFakeK}) {  // V would be read while (or after) it is rotated
    st = ok_st;
    st.v = bad_v;
    EXPECT_EQ(kn_cuda_rope(&a, nullptr, &err), AK_ERR_INVALID_ARG);
    EXPECT_TRUE(has(err, "store->v=")) << err.msg;
  }
  // the store's own arguments, checked as kn_cuda_kv_store checks them
  st = ok_st;
  st.v = nullptr;
  EXPECT_EQ(kn_cuda_rope(&a, nullptr, &err), AK_ERR_INVALID_ARG);
  EXPECT_TRUE(has(err, "store: NULL pointer")) << err.msg;
  st = ok_st;
  st.k_base = nullptr;
  EXPECT_EQ(kn_cuda_rope(&a, nullptr, &err), AK_ERR_INVALID_ARG);
  EXPECT_TRUE(has(err, "store: NULL pointer")) << err.msg;
  st = ok_st;
  st.v_base = nullptr;
  EXPECT_EQ(kn_cuda_rope(&a, nullptr, &err), AK_ERR_INVALID_ARG);
  EXPECT_TRUE(has(err, "store: NULL pointer")) << err.msg;
  st = ok_st;
  st.dst_page = nullptr;
  EXPECT_EQ(kn_cuda_rope(&a, nullptr, &err), AK_ERR_INVALID_ARG);
  EXPECT_TRUE(has(err, "dst_page=(nil)") || has(err, "dst_page=0")) << err.msg;
  st = ok_st;
  st.dst_slot = nullptr;
  EXPECT_EQ(kn_cuda_rope(&a, nullptr, &err), AK_ERR_INVALID_ARG);
  EXPECT_TRUE(has(err, "store: NULL pointer")) << err.msg;
  st = ok_st;
  st.head_stride_elems = 63;
  EXPECT_EQ(kn_cuda_rope(&a, nullptr, &err), AK_ERR_INVALID_ARG);
  EXPECT_TRUE(has(err, "store: strides too small: head_stride_elems=63")) << err.msg;
  st = ok_st;
  st.page_stride_elems = 2 * 16 * 64;
  EXPECT_EQ(kn_cuda_rope(&a, nullptr, &err), AK_ERR_INVALID_ARG);
  EXPECT_TRUE(has(err, "page_stride_elems=2048")) << err.msg;
  st = ok_st;
  st.kv_dtype = KN_CUDA_F32;
  EXPECT_EQ(kn_cuda_rope(&a, nullptr, &err), AK_ERR_INVALID_ARG);
  EXPECT_TRUE(has(err, "store: kv_dtype=0")) << err.msg;
  // the rope's own checks still apply, in the rope's name
  st = ok_st;
  a.mode = 1;
  EXPECT_EQ(kn_cuda_rope(&a, nullptr, &err), AK_ERR_INVALID_ARG);
  EXPECT_TRUE(has(err, "mode=1")) << err.msg;
  EXPECT_TRUE(has(err, "kn_cuda_rope")) << err.msg;
}

TEST(KnCudaOpsArgs, SiluMulRefusesBadArguments) {
  ak_err_t err{};
  const kn_cuda_silu_mul_args_t ok = {kFakeF, kFakeF, kFakeV, KN_CUDA_BF16, 17, 1536};
  EXPECT_EQ(kn_cuda_silu_mul(nullptr, nullptr, &err), AK_ERR_INVALID_ARG);
  kn_cuda_silu_mul_args_t a = ok;
  a.gate = nullptr;
  EXPECT_EQ(kn_cuda_silu_mul(&a, nullptr, &err), AK_ERR_INVALID_ARG);
  EXPECT_TRUE(has(err, "NULL pointer")) << err.msg;
  a = ok;
  a.up = nullptr;
  EXPECT_EQ(kn_cuda_silu_mul(&a, nullptr, &err), AK_ERR_INVALID_ARG);
  a = ok;
  a.out = nullptr;
  EXPECT_EQ(kn_cuda_silu_mul(&a, nullptr, &err), AK_ERR_INVALID_ARG);
  a = ok;
  a.n_tok = 0;
  EXPECT_EQ(kn_cuda_silu_mul(&a, nullptr, &err), AK_ERR_INVALID_ARG);
  EXPECT_TRUE(has(err, "n_tok=0")) << err.msg;
  a = ok;
  a.n_ff = -5;
  EXPECT_EQ(kn_cuda_silu_mul(&a, nullptr, &err), AK_ERR_INVALID_ARG);
  EXPECT_TRUE(has(err, "n_ff=-5")) << err.msg;
  a = ok;
  a.n_tok = INT64_MAX / 2;
  a.n_ff = 4;  // the product overflows
  EXPECT_EQ(kn_cuda_silu_mul(&a, nullptr, &err), AK_ERR_INVALID_ARG);
  a = ok;
  a.out_dtype = (kn_cuda_dtype_t)-1;
  EXPECT_EQ(kn_cuda_silu_mul(&a, nullptr, &err), AK_ERR_INVALID_ARG);
  EXPECT_TRUE(has(err, "out_dtype=-1")) << err.msg;
}

TEST(KnCudaOpsArgs, KvStoreRefusesBadArguments) {
  ak_err_t err{};
  const kn_cuda_kv_store_args_t ok = {kFakeF, kFakeF, kFakeV, kFakeV, KN_CUDA_BF16, 3 * 16 * 64, 16 * 64, 3, 64,
                                      kFakeI, kFakeI, 17};
  EXPECT_EQ(kn_cuda_kv_store(nullptr, nullptr, &err), AK_ERR_INVALID_ARG);
  kn_cuda_kv_store_args_t a = ok;
  a.k = nullptr;
  EXPECT_EQ(kn_cuda_kv_store(&a, nullptr, &err), AK_ERR_INVALID_ARG);
  EXPECT_TRUE(has(err, "NULL pointer")) << err.msg;
  a = ok;
  a.v_base = nullptr;
  EXPECT_EQ(kn_cuda_kv_store(&a, nullptr, &err), AK_ERR_INVALID_ARG);
  a = ok;
  a.dst_slot = nullptr;
  EXPECT_EQ(kn_cuda_kv_store(&a, nullptr, &err), AK_ERR_INVALID_ARG);
  a = ok;
  a.n_tok = 0;
  EXPECT_EQ(kn_cuda_kv_store(&a, nullptr, &err), AK_ERR_INVALID_ARG);
  EXPECT_TRUE(has(err, "n_tok=0")) << err.msg;
  a = ok;
  a.n_kv_heads = 0;
  EXPECT_EQ(kn_cuda_kv_store(&a, nullptr, &err), AK_ERR_INVALID_ARG);
  a = ok;
  a.head_dim = 0;
  EXPECT_EQ(kn_cuda_kv_store(&a, nullptr, &err), AK_ERR_INVALID_ARG);
  EXPECT_TRUE(has(err, "head_dim=0")) << err.msg;
  a = ok;
  a.head_stride_elems = 63;
  EXPECT_EQ(kn_cuda_kv_store(&a, nullptr, &err), AK_ERR_INVALID_ARG);
  EXPECT_TRUE(has(err, "head_stride_elems=63")) << err.msg;
  a = ok;
  a.page_stride_elems = 2 * 16 * 64;
  EXPECT_EQ(kn_cuda_kv_store(&a, nullptr, &err), AK_ERR_INVALID_ARG);
  EXPECT_TRUE(has(err, "page_stride_elems=2048")) << err.msg;
  a = ok;
  a.kv_dtype = KN_CUDA_F32;  // pages are f16 or bf16
  EXPECT_EQ(kn_cuda_kv_store(&a, nullptr, &err), AK_ERR_INVALID_ARG);
  EXPECT_TRUE(has(err, "kv_dtype=0")) << err.msg;
}

TEST(KnCudaOpsArgs, SampleRefusesBadArguments) {
  ak_err_t err{};
  const kn_cuda_sample_args_t ok = {kFakeF, kFakeI, 4, 49152, 0.8f, 40, 0.9f, 1, 0};
  EXPECT_EQ(kn_cuda_sample_workspace_bytes(&ok), 0u);
  EXPECT_EQ(kn_cuda_sample(nullptr, nullptr, 0, nullptr, &err), AK_ERR_INVALID_ARG);
  kn_cuda_sample_args_t a = ok;
  a.logits = nullptr;
  EXPECT_EQ(kn_cuda_sample(&a, nullptr, 0, nullptr, &err), AK_ERR_INVALID_ARG);
  EXPECT_TRUE(has(err, "NULL pointer")) << err.msg;
  a = ok;
  a.out_ids = nullptr;
  EXPECT_EQ(kn_cuda_sample(&a, nullptr, 0, nullptr, &err), AK_ERR_INVALID_ARG);
  a = ok;
  a.n_rows = 0;
  EXPECT_EQ(kn_cuda_sample(&a, nullptr, 0, nullptr, &err), AK_ERR_INVALID_ARG);
  EXPECT_TRUE(has(err, "n_rows=0")) << err.msg;
  a = ok;
  a.n_vocab = 0;
  EXPECT_EQ(kn_cuda_sample(&a, nullptr, 0, nullptr, &err), AK_ERR_INVALID_ARG);
  EXPECT_TRUE(has(err, "n_vocab=0")) << err.msg;
  a = ok;
  a.n_vocab = (1 << 24) + 1;
  EXPECT_EQ(kn_cuda_sample(&a, nullptr, 0, nullptr, &err), AK_ERR_INVALID_ARG);
  EXPECT_TRUE(has(err, "n_vocab=16777217")) << err.msg;
  a = ok;
  a.temperature = NAN;
  EXPECT_EQ(kn_cuda_sample(&a, nullptr, 0, nullptr, &err), AK_ERR_INVALID_ARG);
  EXPECT_TRUE(has(err, "temperature=nan")) << err.msg;
  a = ok;
  a.temperature = INFINITY;
  EXPECT_EQ(kn_cuda_sample(&a, nullptr, 0, nullptr, &err), AK_ERR_INVALID_ARG);
  a = ok;
  a.top_k = -1;
  EXPECT_EQ(kn_cuda_sample(&a, nullptr, 0, nullptr, &err), AK_ERR_INVALID_ARG);
  EXPECT_TRUE(has(err, "top_k=-1")) << err.msg;
  for (float p : {0.0f, -0.5f, 1.5f, NAN}) {
    a = ok;
    a.top_p = p;
    EXPECT_EQ(kn_cuda_sample(&a, nullptr, 0, nullptr, &err), AK_ERR_INVALID_ARG) << p;
    EXPECT_TRUE(has(err, "top_p=")) << err.msg;
  }
}

TEST(KnCudaOpsArgs, SampleRefusesBadPerRowArguments) {
  ak_err_t err{};
  const kn_cuda_sample_row_t *const fake_rows = reinterpret_cast<const kn_cuda_sample_row_t *>(0x4000);
  kn_cuda_sample_args_t ok = {kFakeF, kFakeI, 4, 49152, 0.8f, 40, 0.9f, 1, 0};
  ok.rows = fake_rows;
  ok.history_ids = kFakeI;
  ok.n_history_ids = 100;
  kn_cuda_sample_args_t a = ok;
  a.n_history_ids = -1;
  EXPECT_EQ(kn_cuda_sample(&a, nullptr, 0, nullptr, &err), AK_ERR_INVALID_ARG);
  EXPECT_TRUE(has(err, "n_history_ids=-1")) << err.msg;
  a = ok;
  a.n_history_ids = (int64_t)INT32_MAX + 1;
  EXPECT_EQ(kn_cuda_sample(&a, nullptr, 0, nullptr, &err), AK_ERR_INVALID_ARG);
  EXPECT_TRUE(has(err, "n_history_ids=2147483648")) << err.msg;
  a = ok;
  a.history_ids = nullptr;
  EXPECT_EQ(kn_cuda_sample(&a, nullptr, 0, nullptr, &err), AK_ERR_INVALID_ARG);
  EXPECT_TRUE(has(err, "history_ids is NULL")) << err.msg;
  a = ok;
  a.rows = nullptr;
  EXPECT_EQ(kn_cuda_sample(&a, nullptr, 0, nullptr, &err), AK_ERR_INVALID_ARG);
  EXPECT_TRUE(has(err, "rows is NULL")) << err.msg;
  a = ok;
  a.n_vocab = KN_CUDA_SAMPLE_PENALTY_MAX_VOCAB + 1;
  EXPECT_EQ(kn_cuda_sample(&a, nullptr, 0, nullptr, &err), AK_ERR_INVALID_ARG);
  EXPECT_TRUE(has(err, ("n_vocab=" + std::to_string(KN_CUDA_SAMPLE_PENALTY_MAX_VOCAB + 1)).c_str())) << err.msg;
  // Scalar path: min_p is checked when sampling.
  for (float mp : {-0.1f, 1.0f, 2.0f, NAN}) {
    a = ok;
    a.rows = nullptr;
    a.history_ids = nullptr;
    a.n_history_ids = 0;
    a.min_p = mp;
    EXPECT_EQ(kn_cuda_sample(&a, nullptr, 0, nullptr, &err), AK_ERR_INVALID_ARG) << mp;
    EXPECT_TRUE(has(err, "min_p=")) << err.msg;
  }
}

}  // namespace
