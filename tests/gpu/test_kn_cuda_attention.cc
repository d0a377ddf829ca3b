// Tests for kernels/cuda/kn_cuda_attention.cu: paged GQA attention, flash-decoding.
//
// KnCudaAttentionGpu (ctest label `gpu`) compares with kn_attention, the CPU oracle, on
// the same page pool: f16 pages are read by both sides as they are (KN_F16 on the CPU);
// bf16 pages go to the CPU as an f32 copy of exactly the same values (KN_F32). Pages
// are scattered in the pool (a shuffled permutation) and every slot no sequence owns
// holds NaN, so a read past a page list or a partial last page shows. Outputs and the
// workspace are poisoned with NaN before each call. Per (token, head) row:
//   max|out - ref| / max|ref| <= 1e-3 (f32 out) or 1e-2 (bf16 out); kv_len 0 -> zeros.
// Batches: decode (lengths 1, 17, 97, 1000, 4099 plus a kv_len-0 token), prefill
// chunks (17 and 97 causal tokens, fresh and after 1000 tokens of context) and a mixed
// batch in shuffled token order, over page sizes 1/16/32/64, head_dim 64/128/256,
// GQA 1/3/8 (and 2, 5, 12, 16 on a few shapes; 3..8 at head_dim 64 and 128 run the
// tensor-core decode kernel, kn_cuda_attention_mma.cuh), f16/bf16 KV, f32/bf16 out. Every batch
// runs three times: per-token kernels only (prefill_tiles 0), prefill runs on the tiled
// kernel split over key chunks (1: these grids are all small), and tiled unsplit (2).
// KnCudaAttentionLongPrefillGpu adds runs of 300 and 500 tokens (after 500 of context).
//
// KnCudaAttentionArgs runs everywhere (no label: CI has no GPU): every class of bad
// argument gets its status and message before any CUDA call (the pointers it passes
// are host dummies that a CUDA call would reject).
#include <gtest/gtest.h>

#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <memory>
#include <numeric>
#include <ostream>
#include <random>
#include <sstream>
#include <string>
#include <utility>
#include <vector>

extern "C" {
#include "ak_alloc.h"
#include "ak_quant.h"
#include "kernels.h"
#include "kn_cuda.h"
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
  T *as() const { return static_cast<T *>(ptr); }
};

template <typename T>
std::unique_ptr<DevBuf> to_dev(const std::vector<T> &v) {
  auto b = std::make_unique<DevBuf>(std::max<size_t>(v.size() * sizeof(T), 16));
  if (!v.empty()) EXPECT_EQ(cudaMemcpy(b->ptr, v.data(), v.size() * sizeof(T), cudaMemcpyHostToDevice), cudaSuccess);
  return b;
}

// Fast uniform floats in [lo, hi) (splitmix64): pools hold millions of values.
struct Rng {
  uint64_t s;
  explicit Rng(uint64_t seed) : s(seed) {}
  uint64_t next() {
    uint64_t z = (s += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
  }
  float uniform(float lo, float hi) { return lo + (hi - lo) * (float)(next() >> 40) * (1.0f / 16777216.0f); }
  int32_t below(int32_t n) { return (int32_t)(next() % (uint64_t)n); }
};

struct Shape {
  int32_t page_tokens, head_dim, gqa;
  kn_cuda_dtype_t kv_dtype;
};

std::ostream &operator<<(std::ostream &os, const Shape &s) {
  return os << "pt" << s.page_tokens << "_hd" << s.head_dim << "_gqa" << s.gqa << "_"
            << (s.kv_dtype == KN_CUDA_F16 ? "f16" : "bf16");
}

constexpr int32_t kKvHeads = 2;

// One query token: which sequence it reads and how many of its tokens (causal).
struct Tok {
  int32_t seq, kv_len;
};

// A page pool holding `seq_lens` sequences of random K/V on scattered pages, the CSR
// table over it, and the CPU's view of the same values.
struct Pool {
  Shape sh;
  int64_t head_stride, page_stride;
  int32_t n_pool_pages = 0;
  std::vector<uint16_t> k_bits, v_bits; // device pages, f16 or bf16 bits
  std::vector<float> k_f32, v_f32;      // the CPU's copy of bf16 pages
  std::vector<int32_t> indptr{0}, indices, last_len;

  Pool(const Shape &s, const std::vector<int32_t> &seq_lens, Rng &rng) : sh(s) {
    head_stride = (int64_t)s.page_tokens * s.head_dim + 8; // padded, as a pool may do
    page_stride = kKvHeads * head_stride + 16;
    int32_t n_pages = 0;
    for (int32_t len : seq_lens) n_pages += (len + s.page_tokens - 1) / s.page_tokens;
    n_pool_pages = n_pages + 3;
    std::vector<int32_t> perm(n_pool_pages);
    std::iota(perm.begin(), perm.end(), 0);
    for (int32_t i = n_pool_pages - 1; i > 0; i--) std::swap(perm[i], perm[rng.below(i + 1)]);
    k_bits.assign((size_t)n_pool_pages * page_stride, 0xFFFF); // NaN in f16 and bf16
    v_bits.assign((size_t)n_pool_pages * page_stride, 0xFFFF);
    int32_t next = 0;
    for (int32_t len : seq_lens) {
      int32_t np = (len + s.page_tokens - 1) / s.page_tokens;
      for (int32_t p = 0; p < np; p++) indices.push_back(perm[next++]);
      indptr.push_back((int32_t)indices.size());
      last_len.push_back(np ? len - (np - 1) * s.page_tokens : 1);
      for (int32_t j = 0; j < len; j++) {
        int64_t page = indices[indptr[indptr.size() - 2] + j / s.page_tokens];
        for (int32_t h = 0; h < kKvHeads; h++) {
          int64_t off = page * page_stride + h * head_stride + (int64_t)(j % s.page_tokens) * s.head_dim;
          for (int32_t d = 0; d < s.head_dim; d++) {
            k_bits[off + d] = bits(rng.uniform(-1, 1));
            v_bits[off + d] = bits(rng.uniform(-1, 1));
          }
        }
      }
    }
    if (s.kv_dtype == KN_CUDA_BF16) {
      k_f32.resize(k_bits.size());
      v_f32.resize(v_bits.size());
      for (size_t i = 0; i < k_bits.size(); i++) {
        k_f32[i] = ak_bf16_to_f32(k_bits[i]);
        v_f32[i] = ak_bf16_to_f32(v_bits[i]);
      }
    }
  }

  uint16_t bits(float f) const { return sh.kv_dtype == KN_CUDA_F16 ? ak_f32_to_f16(f) : ak_f32_to_bf16(f); }

  kn_paged_kv_t cpu_view() const {
    bool f16 = sh.kv_dtype == KN_CUDA_F16;
    return kn_paged_kv_t{f16 ? (const void *)k_bits.data() : (const void *)k_f32.data(),
                         f16 ? (const void *)v_bits.data() : (const void *)v_f32.data(),
                         f16 ? KN_F16 : KN_F32,
                         page_stride,
                         head_stride,
                         sh.page_tokens,
                         (int32_t)last_len.size(),
                         indptr.data(),
                         indices.data(),
                         last_len.data()};
  }
};

// The test fails (no crash) where there is no device, with the driver's reason.
#define ASSERT_GPU()                                                           \
  do {                                                                         \
    int n_dev_ = 0;                                                            \
    ak_err_t e_{};                                                             \
    ASSERT_EQ(kn_cuda_device_count(&e_, &n_dev_), AK_OK) << e_.msg;            \
  } while (0)

// Runs one batch on the CPU and on the GPU (f32 and bf16 out) and compares.
// max_kv_len < 0: the true maximum; else the value passed (an over- or underestimate).
// store_newest: every token's newest row (kv_len - 1, all KV heads) goes up poisoned
// (NaN), and each call is launched right after a kn_cuda_kv_store that writes the true
// rows, with kv_stable 1: the attention may read older rows early, but must read these
// after the store (a NaN or a stale value fails the comparison).
void run_batch(const Shape &sh, const std::vector<int32_t> &seq_lens, const std::vector<Tok> &toks, uint64_t seed,
               int32_t max_kv_len = -1, bool store_newest = false) {
  Rng rng(seed);
  Pool pool(sh, seq_lens, rng);
  const int32_t n_heads = kKvHeads * sh.gqa, hd = sh.head_dim;
  const int64_t n_tok = (int64_t)toks.size(), n_out = n_tok * n_heads * hd;
  std::vector<int32_t> tok_seq(n_tok), tok_len(n_tok);
  int32_t true_max = 0;
  for (int64_t t = 0; t < n_tok; t++) {
    tok_seq[t] = toks[t].seq;
    tok_len[t] = toks[t].kv_len;
    true_max = std::max(true_max, toks[t].kv_len);
  }
  std::vector<float> q(n_out);
  for (float &x : q) x = rng.uniform(-3, 3); // scores of std ~1: a peaked softmax

  // CPU oracle.
  std::vector<float> ref(n_out);
  kn_attn_args_t ca{};
  ca.q = q.data();
  ca.out = ref.data();
  ca.n_tok = n_tok;
  ca.n_heads = n_heads;
  ca.n_kv_heads = kKvHeads;
  ca.head_dim = hd;
  ca.scale = 1.0f / std::sqrt((float)hd);
  ca.tok_seq_idx = tok_seq.data();
  ca.tok_kv_len = tok_len.data();
  ca.kv = pool.cpu_view();
  kn_cpu_t *cpu_raw = nullptr;
  ak_err_t err{};
  ASSERT_EQ(kn_cpu_create(0, &err, &cpu_raw), AK_OK) << err.msg;
  CpuPtr cpu(cpu_raw);
  std::vector<uint8_t> cws(kn_attention_workspace_bytes(&ca, kn_cpu_n_threads(cpu.get())) + 64);
  ASSERT_EQ(kn_attention(cpu.get(), &ca, cws.data(), cws.size(), &err), AK_OK) << err.msg;

  // GPU.
  std::vector<int32_t> st_page, st_slot; // store_newest: the rows, their true values (f32)
  std::vector<float> st_k, st_v;
  std::vector<uint16_t> k_up = pool.k_bits, v_up = pool.v_bits;
  if (store_newest)
    for (int64_t t = 0; t < n_tok; t++) {
      const int32_t j = tok_len[t] - 1;
      if (j < 0) continue;
      const int32_t page = pool.indices[pool.indptr[tok_seq[t]] + j / sh.page_tokens], slot = j % sh.page_tokens;
      st_page.push_back(page);
      st_slot.push_back(slot);
      for (int32_t h = 0; h < kKvHeads; h++)
        for (int32_t d = 0; d < hd; d++) {
          const int64_t off = page * pool.page_stride + h * pool.head_stride + (int64_t)slot * hd + d;
          const bool f16 = sh.kv_dtype == KN_CUDA_F16;
          st_k.push_back(f16 ? ak_f16_to_f32(pool.k_bits[off]) : ak_bf16_to_f32(pool.k_bits[off]));
          st_v.push_back(f16 ? ak_f16_to_f32(pool.v_bits[off]) : ak_bf16_to_f32(pool.v_bits[off]));
          k_up[off] = v_up[off] = 0xFFFF; // NaN
        }
    }
  auto k_dev = to_dev(k_up), v_dev = to_dev(v_up), q_dev = to_dev(q);
  auto st_page_dev = to_dev(st_page), st_slot_dev = to_dev(st_slot), st_k_dev = to_dev(st_k), st_v_dev = to_dev(st_v);
  auto indptr_dev = to_dev(pool.indptr), indices_dev = to_dev(pool.indices), last_dev = to_dev(pool.last_len);
  auto seq_dev = to_dev(tok_seq), len_dev = to_dev(tok_len);
  cudaStream_t stream = nullptr;
  ASSERT_EQ(cudaStreamCreate(&stream), cudaSuccess);
  // prefill_tiles 0: every token per token; 1: runs on the tiled kernel, split over
  // chunks when its grid is small (every batch here); 2: tiled, never split (the merge
  // kernel then skips the tiled tokens).
  for (int32_t tiles : {0, 1, 2})
  for (kn_cuda_dtype_t out_dtype : {KN_CUDA_F32, KN_CUDA_BF16}) {
    const size_t out_elem = out_dtype == KN_CUDA_F32 ? 4 : 2;
    DevBuf out_dev((size_t)n_out * out_elem);
    kn_cuda_attn_args_t ga{};
    ga.q = q_dev->as<float>();
    ga.out = out_dev.ptr;
    ga.out_dtype = out_dtype;
    ga.n_tok = n_tok;
    ga.n_heads = n_heads;
    ga.n_kv_heads = kKvHeads;
    ga.head_dim = hd;
    ga.scale = ca.scale;
    ga.tok_seq_idx = seq_dev->as<int32_t>();
    ga.tok_kv_len = len_dev->as<int32_t>();
    ga.max_kv_len = max_kv_len < 0 ? true_max : max_kv_len;
    ga.prefill_tiles = tiles;
    ga.kv = kn_cuda_paged_kv_t{k_dev->ptr,
                               v_dev->ptr,
                               sh.kv_dtype,
                               pool.page_stride,
                               pool.head_stride,
                               sh.page_tokens,
                               (int32_t)pool.last_len.size(),
                               indptr_dev->as<int32_t>(),
                               indices_dev->as<int32_t>(),
                               last_dev->as<int32_t>()};
    const size_t ws_bytes = kn_cuda_attention_workspace_bytes(&ga);
    DevBuf ws(std::max<size_t>(ws_bytes, 16));
    ASSERT_EQ(cudaMemset(ws.ptr, 0xFF, ws.n_bytes), cudaSuccess);
    ASSERT_EQ(cudaMemset(out_dev.ptr, 0xFF, out_dev.n_bytes), cudaSuccess); // NaN poison
    if (store_newest) {
      ASSERT_EQ(cudaMemcpy(k_dev->ptr, k_up.data(), k_up.size() * 2, cudaMemcpyHostToDevice), cudaSuccess);
      ASSERT_EQ(cudaMemcpy(v_dev->ptr, v_up.data(), v_up.size() * 2, cudaMemcpyHostToDevice), cudaSuccess);
      kn_cuda_kv_store_args_t st{};
      st.k = st_k_dev->as<float>();
      st.v = st_v_dev->as<float>();
      st.k_base = k_dev->ptr;
      st.v_base = v_dev->ptr;
      st.kv_dtype = sh.kv_dtype;
      st.page_stride_elems = pool.page_stride;
      st.head_stride_elems = pool.head_stride;
      st.n_kv_heads = kKvHeads;
      st.head_dim = hd;
      st.dst_page = st_page_dev->as<int32_t>();
      st.dst_slot = st_slot_dev->as<int32_t>();
      st.n_tok = (int64_t)st_page.size();
      ASSERT_EQ(kn_cuda_kv_store(&st, (kn_cuda_stream_t)stream, &err), AK_OK) << err.msg;
      ga.kv_stable = 1;
    }
    ASSERT_EQ(kn_cuda_attention(&ga, ws_bytes ? ws.ptr : nullptr, ws_bytes, (kn_cuda_stream_t)stream, &err), AK_OK)
        << err.msg;
    ASSERT_EQ(cudaStreamSynchronize(stream), cudaSuccess) << cudaGetErrorString(cudaGetLastError());

    std::vector<float> got(n_out);
    if (out_dtype == KN_CUDA_F32) {
      ASSERT_EQ(cudaMemcpy(got.data(), out_dev.ptr, n_out * 4, cudaMemcpyDeviceToHost), cudaSuccess);
    } else {
      std::vector<uint16_t> b(n_out);
      ASSERT_EQ(cudaMemcpy(b.data(), out_dev.ptr, n_out * 2, cudaMemcpyDeviceToHost), cudaSuccess);
      for (int64_t i = 0; i < n_out; i++) got[i] = ak_bf16_to_f32(b[i]);
    }
    const float tol = out_dtype == KN_CUDA_F32 ? 1e-3f : 1e-2f;
    int n_bad = 0;
    for (int64_t t = 0; t < n_tok && n_bad < 5; t++)
      for (int32_t h = 0; h < n_heads && n_bad < 5; h++) {
        const float *r = &ref[(t * n_heads + h) * hd], *g = &got[(t * n_heads + h) * hd];
        float ref_max = 0.0f, diff = 0.0f;
        bool finite = true;
        for (int32_t d = 0; d < hd; d++) {
          ref_max = std::max(ref_max, std::fabs(r[d]));
          diff = std::max(diff, std::fabs(g[d] - r[d]));
          finite = finite && std::isfinite(g[d]);
        }
        bool ok = finite && (tok_len[t] == 0 ? diff == 0.0f : diff <= tol * ref_max);
        if (!ok) {
          n_bad++;
          ADD_FAILURE() << sh << " prefill_tiles " << tiles << " out " << (out_dtype == KN_CUDA_F32 ? "f32" : "bf16")
                        << " token " << t
                        << " (seq " << tok_seq[t] << ", kv_len " << tok_len[t] << ") head " << h
                        << ": max|diff| " << diff << " vs max|ref| " << ref_max << (finite ? "" : " (non-finite)")
                        << ", first " << g[0] << " vs " << r[0];
        }
      }
  }
  ASSERT_EQ(cudaStreamDestroy(stream), cudaSuccess);
}

// Decode: one token per sequence at its full length, plus one token that sees nothing.
void decode_batch(const Shape &sh, uint64_t seed) {
  std::vector<int32_t> lens = {1, 17, 97, 1000, 4099};
  std::vector<Tok> toks;
  for (int32_t s = 0; s < (int32_t)lens.size(); s++) toks.push_back({s, lens[s]});
  toks.push_back({1, 0});
  run_batch(sh, lens, toks, seed);
}

// Prefill chunks, causal: 17 fresh tokens, 97 fresh tokens, 97 tokens after 1000 of context.
void prefill_batch(const Shape &sh, uint64_t seed) {
  std::vector<int32_t> lens = {17, 97, 1097};
  std::vector<Tok> toks;
  for (int32_t j = 1; j <= 17; j++) toks.push_back({0, j});
  for (int32_t j = 1; j <= 97; j++) toks.push_back({1, j});
  for (int32_t j = 1001; j <= 1097; j++) toks.push_back({2, j});
  run_batch(sh, lens, toks, seed);
}

// Decode and prefill tokens in one call, in shuffled order.
void mixed_batch(const Shape &sh, uint64_t seed) {
  std::vector<int32_t> lens = {4099, 300, 1, 97, 17};
  std::vector<Tok> toks = {{0, 4099}, {2, 1}, {3, 97}, {4, 0}};
  for (int32_t j = 284; j <= 300; j++) toks.push_back({1, j}); // a 17-token chunk
  Rng rng(seed ^ 0x5eed);
  for (int32_t i = (int32_t)toks.size() - 1; i > 0; i--) std::swap(toks[i], toks[rng.below(i + 1)]);
  run_batch(sh, lens, toks, seed);
}

// Longer prefill runs for the tiled path: a decode token first (so no run starts on a
// tile boundary), 300 fresh tokens, 500 tokens after 500 of context, a decode token of
// the same sequence right after its run (a tile mixing them), and a kv_len-0 token.
void long_prefill_batch(const Shape &sh, uint64_t seed) {
  std::vector<int32_t> lens = {1000, 300, 1000};
  std::vector<Tok> toks = {{0, 1000}};
  for (int32_t j = 1; j <= 300; j++) toks.push_back({1, j});
  for (int32_t j = 501; j <= 1000; j++) toks.push_back({2, j});
  toks.push_back({2, 1000});
  toks.push_back({1, 0});
  run_batch(sh, lens, toks, seed);
}

class KnCudaAttentionGpu : public ::testing::TestWithParam<Shape> {
 protected:
  void SetUp() override {
    ASSERT_GPU();
    dev_bytes0_ = ak_alloc_outstanding_bytes(AK_MEM_DEVICE);
  }
  void TearDown() override { EXPECT_EQ(ak_alloc_outstanding_bytes(AK_MEM_DEVICE), dev_bytes0_); }
  int64_t dev_bytes0_ = 0;
};

// Grids above KN_ATTN_PIPE_MAX_BLOCKS (8192) take the kernel without software-pipelined
// loads for head tiles of 1 and 2 too (every other test's grid is smaller): 900 prefill
// tokens over 3000 keys make 900 x 2 x 6 blocks (chunks of 512 keys).
TEST(KnCudaAttentionLargeGridGpu, UnpipelinedPathMatchesCpu) {
  ASSERT_GPU();
  for (Shape sh : {Shape{16, 128, 1, KN_CUDA_BF16}, Shape{32, 64, 2, KN_CUDA_F16}}) {
    SCOPED_TRACE(testing::Message() << sh);
    std::vector<Tok> toks;
    for (int32_t j = 2101; j <= 3000; j++) toks.push_back({0, j});
    run_batch(sh, {3000}, toks, 11);
  }
}

TEST_P(KnCudaAttentionGpu, Decode) { decode_batch(GetParam(), 1); }
TEST_P(KnCudaAttentionGpu, Prefill) { prefill_batch(GetParam(), 2); }
TEST_P(KnCudaAttentionGpu, Mixed) { mixed_batch(GetParam(), 3); }

std::vector<Shape> all_shapes() {
  std::vector<Shape> out;
  for (int32_t pt : {1, 16, 32, 64})
    for (int32_t hd : {64, 128, 256})
      for (int32_t gqa : {1, 3, 8})
        for (kn_cuda_dtype_t dt : {KN_CUDA_F16, KN_CUDA_BF16}) out.push_back({pt, hd, gqa, dt});
  // Other group sizes: 2 and 4 fill their head tile, 5 masks 3 heads of a tile of 8,
  // 12 and 16 take two tiles of 8 (the second one partly masked for 12).
  for (int32_t gqa : {2, 4, 5, 12, 16}) {
    out.push_back({16, 128, gqa, KN_CUDA_F16});
    out.push_back({1, 64, gqa, KN_CUDA_BF16});
  }
  out.push_back({256, 128, 3, KN_CUDA_BF16}); // the largest page
  out.push_back({7, 256, 2, KN_CUDA_F16});    // an odd page size
  return out;
}

INSTANTIATE_TEST_SUITE_P(Shapes, KnCudaAttentionGpu, ::testing::ValuesIn(all_shapes()),
                         [](const ::testing::TestParamInfo<Shape> &i) {
                           std::ostringstream os;
                           os << i.param;
                           return os.str();
                         });

// The tiled prefill path on longer runs: every head_dim, GQA 1/3/8 (head tiles of 1, 4
// and 8 heads: 64, 16 and 8 query tokens a tile at head_dim 128), both KV dtypes, page
// sizes 1/16/32 in turn.
class KnCudaAttentionLongPrefillGpu : public KnCudaAttentionGpu {};
TEST_P(KnCudaAttentionLongPrefillGpu, MatchesCpu) { long_prefill_batch(GetParam(), 4); }

std::vector<Shape> long_prefill_shapes() {
  std::vector<Shape> out;
  const int32_t page_tokens[3] = {1, 16, 32};
  int i = 0;
  for (int32_t hd : {64, 128, 256})
    for (int32_t gqa : {1, 3, 8})
      for (kn_cuda_dtype_t dt : {KN_CUDA_F16, KN_CUDA_BF16}) out.push_back({page_tokens[i++ % 3], hd, gqa, dt});
  out.push_back({16, 128, 4, KN_CUDA_BF16}); // llama3-8b's group
  out.push_back({32, 64, 16, KN_CUDA_F16});  // two head tiles of 8
  return out;
}

INSTANTIATE_TEST_SUITE_P(Shapes, KnCudaAttentionLongPrefillGpu, ::testing::ValuesIn(long_prefill_shapes()),
                         [](const ::testing::TestParamInfo<Shape> &i) {
                           std::ostringstream os;
                           os << i.param;
                           return os.str();
                         });

// max_kv_len only sizes the split: an underestimate folds the rest into the last
// chunk, an overestimate leaves chunks unused; both stay exact.
TEST(KnCudaAttentionSplitGpu, MaxKvLenIsOnlyAHint) {
  ASSERT_GPU();
  std::vector<int32_t> lens = {4099, 600, 17};
  std::vector<Tok> toks = {{0, 4099}, {1, 600}, {2, 17}, {0, 2000}, {1, 0}};
  for (int32_t max_kv_len : {0, 256, 257, 300, 1000, 20000}) {
    SCOPED_TRACE(max_kv_len);
    run_batch({16, 128, 3, KN_CUDA_F16}, lens, toks, 7, max_kv_len);
  }
}

// A decode batch of 12 sequences of 9000 .. 2257 keys (chunks partly used), one token
// each at its full length; sequence one_key (if >= 0) has a single key instead.
void long_decode_batch(int32_t one_key, std::vector<int32_t> &lens, std::vector<Tok> &toks) {
  for (int32_t s = 0; s < 12; s++) {
    lens.push_back(s == one_key ? 1 : 9000 - 613 * s);
    toks.push_back({s, lens[s]});
  }
}

// A decode batch whose 512-key grid is past one wave (KN_ATTN_WAVE_MMA) takes the
// tensor-core kernel's longer chunks: 12 tokens x the KV heads x ceil(9000 / 512) = 18
// chunks is past 396 blocks, so each item gets 396 / (12 x KV heads) chunks (llama3-8b's
// group of 4 and a group of 8; bf16 and f16 pages).
TEST(KnCudaAttentionSplitGpu, OneWaveOfLongChunksMatchesCpu) {
  ASSERT_GPU();
  std::vector<int32_t> lens;
  std::vector<Tok> toks;
  long_decode_batch(-1, lens, toks);
  for (Shape sh : {Shape{32, 128, 4, KN_CUDA_F16}, Shape{16, 64, 8, KN_CUDA_BF16}}) {
    SCOPED_TRACE(testing::Message() << sh);
    run_batch(sh, lens, toks, 13);
  }
}

// kv_stable: the tables and the rows older than the call's tokens load before the kernel
// before it ends (the tensor-core kernel), the newest rows after it. Each call follows a
// K/V store of those newest rows (run_batch's store_newest); decode batches of one
// token per sequence at its full length, at 1k..9k keys (chunks far from and at the
// end), on both tensor-core groups and the CUDA-core kernel (GQA 2), which waits anyway.
TEST(KnCudaAttentionSplitGpu, KvStableReadsTheNewestRowsAfterTheStore) {
  ASSERT_GPU();
  std::vector<int32_t> lens;
  std::vector<Tok> toks;
  long_decode_batch(5, lens, toks);
  for (Shape sh : {Shape{32, 128, 4, KN_CUDA_F16}, Shape{16, 64, 8, KN_CUDA_BF16}, Shape{16, 128, 2, KN_CUDA_F16}}) {
    SCOPED_TRACE(testing::Message() << sh);
    run_batch(sh, lens, toks, 19, -1, true);
    run_batch(sh, {1000}, {{0, 1000}}, 20, -1, true); // batch 1: 16 chunks of 64 keys
  }
}

// --- argument checks: no GPU needed ---

class KnCudaAttentionArgs : public ::testing::Test {
 protected:
  // Host dummies standing in for device pointers: never dereferenced by the checks.
  alignas(16) float q_[64];
  alignas(16) float out_[64];
  alignas(16) uint16_t k_[64], v_[64];
  int32_t i32_[8] = {0};
  alignas(16) uint8_t ws_[64];
  kn_cuda_attn_args_t a_{};
  ak_err_t err_{};

  void SetUp() override {
    a_.q = q_;
    a_.out = out_;
    a_.out_dtype = KN_CUDA_F32;
    a_.n_tok = 3;
    a_.n_heads = 6;
    a_.n_kv_heads = 2;
    a_.head_dim = 128;
    a_.scale = 0.088f;
    a_.tok_seq_idx = i32_;
    a_.tok_kv_len = i32_;
    a_.max_kv_len = 1000;
    a_.kv = kn_cuda_paged_kv_t{k_, v_, KN_CUDA_F16, 2 * 16 * 128, 16 * 128, 16, 2, i32_, i32_, i32_};
  }
  // The split a_ launches: {keys per chunk, chunks per token}.
  std::pair<int32_t, int32_t> split() const {
    int32_t chunk = 0, n_chunks = 0;
    kn_cuda_attention_split(&a_, &chunk, &n_chunks);
    return {chunk, n_chunks};
  }
  // The call fails with `st` and a message containing `msg`.
  void expect_fail(ak_status_t st, const char *msg, void *ws = nullptr, size_t ws_bytes = 0) {
    ak_err_clear(&err_);
    EXPECT_EQ(kn_cuda_attention(&a_, ws, ws_bytes, nullptr, &err_), st) << err_.msg;
    EXPECT_TRUE(has(err_, msg)) << err_.msg;
    EXPECT_TRUE(has(err_, "kn_cuda_attention")) << err_.msg;
  }
};

TEST_F(KnCudaAttentionArgs, WorkspaceFormula) {
  // chunk = 512 keys, halved (down to 64) while the grid n_tok * n_kv_heads * n_chunks
  // has fewer than 528 blocks (132 for calls of the tensor-core kernel, as this group of
  // 3 at head_dim 128); n_chunks = ceil(max_kv_len / chunk); no workspace while one
  // chunk covers every token. The size also covers every smaller call (below), so here
  // n_tok 3, n_kv_heads 2 is sized as chunks of 64.
  const size_t row = (128 + 2) * 4;
  a_.max_kv_len = 0;
  EXPECT_EQ(kn_cuda_attention_workspace_bytes(&a_), 0u);
  a_.max_kv_len = 64;
  EXPECT_EQ(kn_cuda_attention_workspace_bytes(&a_), 0u);
  a_.max_kv_len = 65;
  EXPECT_EQ(kn_cuda_attention_workspace_bytes(&a_), (size_t)3 * 6 * 2 * row);
  a_.max_kv_len = 257;
  EXPECT_EQ(kn_cuda_attention_workspace_bytes(&a_), (size_t)3 * 6 * 5 * row);
  a_.max_kv_len = 4099;
  EXPECT_EQ(kn_cuda_attention_workspace_bytes(&a_), (size_t)3 * 6 * 65 * row);
  // Past one wave (396 blocks) the tensor-core kernel takes longer chunks: 64 tokens x 2
  // KV heads at 512 keys would be 1152 blocks, so 396 / 128 = 3 chunks an item of
  // ceil64(4099 / 3) = 1408 keys (384 blocks). The size still covers smaller calls.
  a_.n_tok = 64;
  EXPECT_EQ(kn_cuda_attention_workspace_bytes(&a_), (size_t)2 * 528 * 3 * row);
  EXPECT_EQ(split(), std::make_pair(1408, 3));
  // The CUDA-core kernel (a group of 2) keeps 512: 64 x 3 x 9 = 1728 blocks.
  a_.n_heads = 6, a_.n_kv_heads = 3;
  EXPECT_EQ(split().first, 512);
  EXPECT_EQ(kn_cuda_attention_workspace_bytes(&a_), (size_t)64 * 6 * 9 * row);
  a_.n_heads = 6, a_.n_kv_heads = 2;
  // More than 198 items (fewer than 2 chunks an item in one wave) keep 512 too.
  a_.n_tok = 100;
  EXPECT_EQ(split().first, 512);
  // 16 x 2 x 9 = 288 blocks at 512 (864 partials), but a call with fewer tokens may
  // take smaller chunks: the size covers it (2 x 528 blocks x a group of 3).
  a_.n_tok = 16;
  EXPECT_EQ(kn_cuda_attention_workspace_bytes(&a_), (size_t)2 * 528 * 3 * row);
  // The split of that call: the tensor-core kernel keeps 512 keys (132 <= 288 <= 396
  // blocks); the CUDA-core kernel (head_dim 256, or a group of 2) halves to 256 (16 x 2
  // x 17 = 544 >= 528 blocks).
  EXPECT_EQ(split(), std::make_pair(512, 9));
  a_.head_dim = 256;
  EXPECT_EQ(split(), std::make_pair(256, 17));
  a_.head_dim = 128, a_.n_heads = 4;
  EXPECT_EQ(split().first, 256);
  EXPECT_EQ(kn_cuda_attention_workspace_bytes(nullptr), 0u);
}

// Every smaller call fits in the workspace sized for a larger one (the forward pass
// allocates once for its largest step).
TEST_F(KnCudaAttentionArgs, WorkspaceCoversSmallerCalls) {
  for (int32_t kvh : {1, 2, 8, 32})
    for (int64_t n_tok : {1, 4, 16, 64, 512}) {
      a_.n_kv_heads = kvh;
      a_.n_heads = kvh * 4;
      a_.n_tok = n_tok;
      a_.max_kv_len = 32768;
      const size_t big = kn_cuda_attention_workspace_bytes(&a_);
      for (int64_t t = 1; t <= n_tok; t = t * 2 + 1)
        for (int32_t len : {0, 63, 64, 65, 300, 1024, 5000, 32768}) {
          a_.n_tok = t;
          a_.max_kv_len = len;
          EXPECT_LE(kn_cuda_attention_workspace_bytes(&a_), big)
              << "kv heads " << kvh << ", " << t << " of " << n_tok << " tokens, max_kv_len " << len;
        }
    }
}

TEST_F(KnCudaAttentionArgs, NullArgs) {
  ak_err_clear(&err_);
  EXPECT_EQ(kn_cuda_attention(nullptr, nullptr, 0, nullptr, &err_), AK_ERR_INVALID_ARG);
  EXPECT_TRUE(has(err_, "args is NULL")) << err_.msg;
  EXPECT_EQ(kn_cuda_attention(nullptr, nullptr, 0, nullptr, nullptr), AK_ERR_INVALID_ARG); // err may be NULL
}

TEST_F(KnCudaAttentionArgs, NullPointers) {
  const void **fields[] = {(const void **)&a_.q,          (const void **)&a_.out,       (const void **)&a_.tok_seq_idx,
                           (const void **)&a_.tok_kv_len, (const void **)&a_.kv.k_base, (const void **)&a_.kv.v_base,
                           (const void **)&a_.kv.indptr,  (const void **)&a_.kv.indices,
                           (const void **)&a_.kv.last_page_len};
  for (size_t i = 0; i < sizeof fields / sizeof fields[0]; i++) {
    SCOPED_TRACE(i);
    const void *saved = *fields[i];
    *fields[i] = nullptr;
    expect_fail(AK_ERR_INVALID_ARG, "NULL pointer", ws_, sizeof ws_);
    *fields[i] = saved;
  }
}

TEST_F(KnCudaAttentionArgs, NonPositiveCounts) {
  a_.n_tok = 0;
  expect_fail(AK_ERR_INVALID_ARG, "n_tok=0");
  a_.n_tok = 3;
  a_.n_kv_heads = 0;
  expect_fail(AK_ERR_INVALID_ARG, "must be >= 1");
  a_.n_kv_heads = 2;
  a_.kv.n_seqs = 0;
  expect_fail(AK_ERR_INVALID_ARG, "n_seqs=0");
}

TEST_F(KnCudaAttentionArgs, HeadDim) {
  for (int32_t hd : {0, 32, 80, 96, 100, 512}) {
    SCOPED_TRACE(hd);
    a_.head_dim = hd;
    expect_fail(AK_ERR_UNSUPPORTED, "not supported (64, 128 or 256)");
  }
}

TEST_F(KnCudaAttentionArgs, GroupRatio) {
  a_.n_heads = 7;
  expect_fail(AK_ERR_INVALID_ARG, "n_heads=7 is not a multiple of n_kv_heads=2");
}

TEST_F(KnCudaAttentionArgs, Dtypes) {
  a_.kv.kv_dtype = KN_CUDA_F32;
  expect_fail(AK_ERR_UNSUPPORTED, "kv_dtype 0");
  a_.kv.kv_dtype = KN_CUDA_BF16;
  a_.out_dtype = KN_CUDA_F16;
  expect_fail(AK_ERR_UNSUPPORTED, "out_dtype 1");
}

TEST_F(KnCudaAttentionArgs, PageTokens) {
  for (int32_t pt : {0, -1, 257}) {
    SCOPED_TRACE(pt);
    a_.kv.page_tokens = pt;
    expect_fail(AK_ERR_INVALID_ARG, "outside [1, 256]");
  }
}

TEST_F(KnCudaAttentionArgs, Strides) {
  a_.kv.head_stride_elems = 16 * 128 - 8; // smaller than a page's rows
  expect_fail(AK_ERR_INVALID_ARG, "strides too small");
  a_.kv.head_stride_elems = 16 * 128;
  a_.kv.page_stride_elems = 16 * 128; // one KV head's worth for two heads
  expect_fail(AK_ERR_INVALID_ARG, "strides too small");
}

TEST_F(KnCudaAttentionArgs, Alignment) {
  a_.kv.head_stride_elems = 16 * 128 + 4; // rows 8 bytes apart from 16
  a_.kv.page_stride_elems = 2 * a_.kv.head_stride_elems;
  expect_fail(AK_ERR_INVALID_ARG, "16-byte aligned");
  SetUp();
  a_.kv.v_base = v_ + 1;
  expect_fail(AK_ERR_INVALID_ARG, "16-byte aligned");
}

TEST_F(KnCudaAttentionArgs, KvStableMode) {
  a_.kv_stable = 2;
  expect_fail(AK_ERR_INVALID_ARG, "kv_stable=2");
  a_.kv_stable = -1;
  expect_fail(AK_ERR_INVALID_ARG, "kv_stable=-1");
}

TEST_F(KnCudaAttentionArgs, PrefillTilesMode) {
  for (int32_t mode : {-1, 3}) {
    a_.prefill_tiles = mode;
    expect_fail(AK_ERR_INVALID_ARG, ("prefill_tiles=" + std::to_string(mode)).c_str());
  }
}

TEST_F(KnCudaAttentionArgs, MaxKvLen) {
  a_.max_kv_len = -1;
  expect_fail(AK_ERR_INVALID_ARG, "max_kv_len=-1");
}

TEST_F(KnCudaAttentionArgs, WorkspaceTooSmall) {
  const size_t need = kn_cuda_attention_workspace_bytes(&a_); // 16 chunks of 64 keys
  ASSERT_EQ(need, (size_t)3 * 6 * 16 * 130 * 4);
  std::string msg = "workspace of 64 bytes, needs " + std::to_string(need);
  expect_fail(AK_ERR_INVALID_ARG, msg.c_str(), ws_, 64);
  msg = "workspace of 0 bytes, needs " + std::to_string(need);
  expect_fail(AK_ERR_INVALID_ARG, msg.c_str(), nullptr, need); // NULL counts as none
}

TEST_F(KnCudaAttentionArgs, GridLimit) {
  a_.n_tok = (int64_t)1 << 30;
  expect_fail(AK_ERR_INVALID_ARG, "exceeds the grid");
}

}  // namespace
