// Tests for the ArkVale CUDA ops: kn_cuda_digest_build.cu, kn_cuda_digest_score.cu,
// kn_cuda_topk.cu, kn_cuda_gather.cu.
//
// KnCudaArkvaleGpu (ctest label `gpu`) compares with the CPU oracles:
//   - digest build: every kind, f16/bf16 pages, head_dim 64/128 (and 17), page sizes
//     1/16/32/64, pages scattered in a pool of K and V: kv_digest_build on the same
//     page contents converted to f32, |gpu - cpu| <= 1e-5 * max(|cpu|, 1e-3). 16-bit
//     digests (cuboid kinds, digest_dtype = the pages' f16 or bf16): bit for bit the
//     CPU's f32 digest narrowed by kn_cuda_digest_narrow (ub up, lb down), and for
//     cuboid-max exactly the f32 digest (lossless).
//   - digest score: every kind, mean and max, GQA 1/3/8, head_dim 64/128/256, three
//     sequences whose pages interleave: kv_digest_score_pages page by page,
//     |gpu - cpu| <= 1e-5 * max(|cpu|, sum_i |q_i| |d_i|) (the rounding scale). 16-bit
//     digests (cuboid kinds, f16 and bf16, more KV heads than one load batch covers):
//     the same check against kv_digest_score_pages on the 16-bit digests widened to
//     f32 (for cuboid-max of f16/bf16 keys: the f32 digests themselves). Cuboid pages
//     of 8 to 32 KiB go to the bulk-copy kernel, the others to the register-fed one:
//     both are covered, and runs of 1000-2000 pages refill the bulk kernel's stages.
//   - top-k: segments of 0, 1, 17, 97, 1000, 5000, 20000 scores in one launch, k 1, 8,
//     40, 1024, random and heavily tied scores (with -0/+0): a CPU sort by (score desc,
//     index desc), exactly, -1 past the segment.
//   - gather: mapped pinned (kn_cuda_host_alloc) and device sources, page sizes 16 B to
//     128 KiB: exact bytes, and destination pages not named stay poisoned.
// KnCudaArkvaleArgs runs everywhere (no label): every class of bad argument gets its
// status and message before any CUDA call (pointers are host dummies), 16-bit digests
// of non-cuboid kinds or of another dtype than the pages' included.
// KnCudaArkvaleNarrow runs everywhere (host only): kn_cuda_digest_narrow rounds each
// ub up and each lb down to the nearest f16 / bf16 (checked against ak_quant's
// conversions and the neighbouring values), exact when representable, in the layout.
#include <gtest/gtest.h>

#include <cuda_runtime.h>

#include <algorithm>
#include <cfloat>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <memory>
#include <numeric>
#include <random>
#include <string>
#include <vector>

extern "C" {
#include "ak_alloc.h"
#include "ak_quant.h"
#include "kn_cuda.h"
#include "kv_digest.h"
}

namespace {

bool has(const ak_err_t &err, const char *s) { return std::string(err.msg).find(s) != std::string::npos; }

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

template <typename T>
std::vector<T> from_dev(const DevBuf &b, size_t n) {
  std::vector<T> v(n);
  if (n) EXPECT_EQ(cudaMemcpy(v.data(), b.ptr, n * sizeof(T), cudaMemcpyDeviceToHost), cudaSuccess);
  return v;
}

void sync_ok() { ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess) << cudaGetErrorString(cudaGetLastError()); }

// --- digest build ---

struct BuildCase {
  int kind;
  kn_cuda_dtype_t dtype;
  int head_dim;
  int page_tokens;
  int n_kv_heads;
  bool narrow = false;  // 16-bit digests in the pages' dtype (cuboid kinds)
};

float widen(kn_cuda_dtype_t dt, uint16_t h) { return dt == KN_CUDA_F16 ? ak_f16_to_f32(h) : ak_bf16_to_f32(h); }

void check_build(const BuildCase &c, uint64_t seed) {
  SCOPED_TRACE(testing::Message() << "kind " << kv_digest_kind_name((kv_digest_kind_t)c.kind) << " dtype "
                                  << c.dtype << " head_dim " << c.head_dim << " page_tokens " << c.page_tokens
                                  << " n_kv_heads " << c.n_kv_heads << (c.narrow ? " 16-bit digests" : ""));
  const int n_pool = 11, n_pages = 7;
  // Pool page [K or V][n_kv_heads][page_tokens][head_dim]: K first, V after it.
  const int64_t head_stride = (int64_t)c.page_tokens * c.head_dim;
  const int64_t page_stride = 2 * c.n_kv_heads * head_stride;
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> nd(0.f, 1.f);
  std::vector<float> dim_off(c.head_dim);  // per-dimension offsets, as RoPE'd keys have
  for (auto &x : dim_off) x = 2.f * nd(rng);
  std::vector<uint16_t> pool((size_t)(n_pool * page_stride));
  std::vector<float> pool_f(pool.size());
  for (size_t e = 0; e < pool.size(); e++) {
    const float x = dim_off[e % c.head_dim] + nd(rng);
    pool[e] = c.dtype == KN_CUDA_F16 ? ak_f32_to_f16(x) : ak_f32_to_bf16(x);
    pool_f[e] = c.dtype == KN_CUDA_F16 ? ak_f16_to_f32(pool[e]) : ak_bf16_to_f32(pool[e]);
  }
  std::vector<int32_t> ids(n_pool);
  std::iota(ids.begin(), ids.end(), 0);
  std::shuffle(ids.begin(), ids.end(), rng);
  ids.resize(n_pages);

  const int32_t nf = kv_digest_floats((kv_digest_kind_t)c.kind, c.head_dim);
  const size_t page_floats = (size_t)c.n_kv_heads * nf;
  auto d_pool = to_dev(pool);
  auto d_ids = to_dev(ids);
  const size_t elem_bytes = c.narrow ? sizeof(uint16_t) : sizeof(float);
  DevBuf d_dg(n_pages * page_floats * elem_bytes);
  ASSERT_EQ(cudaMemset(d_dg.ptr, 0xff, d_dg.n_bytes), cudaSuccess);  // NaN poison (f32, f16 and bf16)
  kn_cuda_digest_build_args_t a{};
  a.kind = c.kind;
  a.k_base = d_pool->ptr;
  a.kv_dtype = c.dtype;
  a.page_stride_elems = page_stride;
  a.head_stride_elems = head_stride;
  a.page_tokens = c.page_tokens;
  a.n_kv_heads = c.n_kv_heads;
  a.head_dim = c.head_dim;
  a.page_ids = d_ids->as<int32_t>();
  a.digests = d_dg.ptr;
  a.digest_dtype = c.narrow ? c.dtype : KN_CUDA_F32;
  a.n_pages = n_pages;
  ak_err_t err{};
  ASSERT_EQ(kn_cuda_digest_build(&a, nullptr, &err), AK_OK) << err.msg;
  sync_ok();
  std::vector<float> got;
  std::vector<uint16_t> got16;
  if (c.narrow)
    got16 = from_dev<uint16_t>(d_dg, n_pages * page_floats);
  else
    got = from_dev<float>(d_dg, n_pages * page_floats);
  std::vector<uint16_t> ref16(page_floats);

  std::vector<float> keys((size_t)c.page_tokens * c.n_kv_heads * c.head_dim), ref(page_floats);
  for (int p = 0; p < n_pages; p++) {
    // kv_digest_build wants [n_tokens][n_kv_heads][head_dim].
    for (int t = 0; t < c.page_tokens; t++)
      for (int g = 0; g < c.n_kv_heads; g++)
        for (int i = 0; i < c.head_dim; i++)
          keys[((size_t)t * c.n_kv_heads + g) * c.head_dim + i] =
              pool_f[(size_t)(ids[p] * page_stride + g * head_stride + (int64_t)t * c.head_dim + i)];
    ASSERT_EQ(kv_digest_build((kv_digest_kind_t)c.kind, keys.data(), c.page_tokens, c.n_kv_heads, c.head_dim, &err,
                              ref.data()),
              AK_OK)
        << err.msg;
    int bad = 0;
    if (c.narrow) {
      // Bit for bit what the host path stores (the CPU's f32 digest narrowed outward),
      // and for cuboid-max the f32 digest itself: the min/max of 16-bit keys is one.
      ASSERT_EQ(kn_cuda_digest_narrow(c.kind, c.dtype, ref.data(), 1, c.n_kv_heads, c.head_dim, ref16.data(), &err),
                AK_OK)
          << err.msg;
      for (size_t e = 0; e < page_floats && bad < 5; e++) {
        const uint16_t g = got16[p * page_floats + e];
        if (g != ref16[e] || (c.kind == KV_DIGEST_CUBOID_MAX && widen(c.dtype, g) != ref[e])) {
          ADD_FAILURE() << "page " << p << " element " << e << ": gpu 0x" << std::hex << g << " cpu 0x" << ref16[e]
                        << std::dec << " (" << widen(c.dtype, g) << " vs f32 " << ref[e] << ")";
          bad++;
        }
      }
      if (bad) return;
      continue;
    }
    for (size_t e = 0; e < page_floats && bad < 5; e++) {
      const float g = got[p * page_floats + e], r = ref[e];
      if (!(std::fabs(g - r) <= 1e-5f * std::max(std::fabs(r), 1e-3f))) {
        ADD_FAILURE() << "page " << p << " float " << e << ": gpu " << g << " cpu " << r;
        bad++;
      }
    }
    if (bad) return;
  }
}

TEST(KnCudaArkvaleGpu, DigestBuildMatchesCpuEveryKind) {
  uint64_t seed = 1;
  for (int kind = 0; kind < KV_DIGEST_N_KINDS; kind++)
    for (kn_cuda_dtype_t dt : {KN_CUDA_F16, KN_CUDA_BF16})
      for (int hd : {64, 128})
        for (int pt : {1, 16, 32, 64}) check_build({kind, dt, hd, pt, 3}, seed++);
}

TEST(KnCudaArkvaleGpu, DigestBuild16BitCuboidIsTheNarrowedCpuDigest) {
  uint64_t seed = 50;
  for (int kind = KV_DIGEST_CUBOID_MAX; kind <= KV_DIGEST_CUBOID_MEAN; kind++)
    for (kn_cuda_dtype_t dt : {KN_CUDA_F16, KN_CUDA_BF16}) {
      for (int hd : {64, 128})
        for (int pt : {1, 16, 32}) check_build({kind, dt, hd, pt, 3, true}, seed++);
      check_build({kind, dt, 17, 7, 1, true}, seed++);   // odd: 2-byte rows only
      check_build({kind, dt, 200, 5, 8, true}, seed++);  // head_dim > the block's 128 threads
    }
}

TEST(KnCudaArkvaleGpu, DigestBuildOddShapes) {
  uint64_t seed = 100;
  for (int kind = 0; kind < KV_DIGEST_N_KINDS; kind++) {
    check_build({kind, KN_CUDA_BF16, 17, 7, 1}, seed++);
    check_build({kind, KN_CUDA_F16, 256, 33, 2}, seed++);
    check_build({kind, KN_CUDA_BF16, 200, 5, 8}, seed++);  // head_dim > the block's 128 threads
  }
}

// --- digest score ---

struct ScoreCase {
  int kind;
  int agg;
  int head_dim;
  int n_kv_heads;
  int group;
  kn_cuda_dtype_t digest_dtype = KN_CUDA_F32;  // F16 / BF16: cuboid kinds
  int n_pages = 97;
  int page_tokens = 16;  // keys per page the CPU builds each digest from
};

void check_score(const ScoreCase &c, uint64_t seed) {
  SCOPED_TRACE(testing::Message() << "kind " << kv_digest_kind_name((kv_digest_kind_t)c.kind) << " agg " << c.agg
                                  << " head_dim " << c.head_dim << " n_kv_heads " << c.n_kv_heads << " group "
                                  << c.group << " digest_dtype " << c.digest_dtype);
  const bool narrow = c.digest_dtype != KN_CUDA_F32;
  const int n_seqs = 3, n_pages = c.n_pages, page_tokens = c.page_tokens;
  const int n_heads = c.n_kv_heads * c.group;
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> nd(0.f, 1.f);
  const int32_t nf = kv_digest_floats((kv_digest_kind_t)c.kind, c.head_dim);
  const size_t page_floats = (size_t)c.n_kv_heads * nf;
  // Realistic digests: built on the CPU from random keys.
  std::vector<float> dg(n_pages * page_floats), keys((size_t)page_tokens * c.n_kv_heads * c.head_dim);
  ak_err_t err{};
  for (int p = 0; p < n_pages; p++) {
    for (size_t e = 0; e < keys.size(); e++) {
      keys[e] = 0.5f * (float)(e % c.head_dim % 7) - 1.f + nd(rng);
      if (c.digest_dtype == KN_CUDA_F16) keys[e] = ak_f16_to_f32(ak_f32_to_f16(keys[e]));  // keys of 16-bit pages
      if (c.digest_dtype == KN_CUDA_BF16) keys[e] = ak_bf16_to_f32(ak_f32_to_bf16(keys[e]));
    }
    ASSERT_EQ(kv_digest_build((kv_digest_kind_t)c.kind, keys.data(), page_tokens, c.n_kv_heads, c.head_dim, &err,
                              dg.data() + p * page_floats),
              AK_OK)
        << err.msg;
  }
  std::vector<float> q((size_t)n_seqs * n_heads * c.head_dim);
  for (auto &x : q) x = nd(rng);
  // 16-bit: what the device stores (exactly dg for cuboid-max), and the f32 digests the
  // reference scores are those values widened.
  std::vector<uint16_t> dg16;
  if (narrow) {
    dg16.resize(dg.size());
    ASSERT_EQ(kn_cuda_digest_narrow(c.kind, c.digest_dtype, dg.data(), n_pages, c.n_kv_heads, c.head_dim, dg16.data(),
                                    &err),
              AK_OK)
        << err.msg;
    for (size_t e = 0; e < dg.size(); e++) {
      const float w = widen(c.digest_dtype, dg16[e]);
      if (c.kind == KV_DIGEST_CUBOID_MAX) ASSERT_EQ(w, dg[e]) << "element " << e << ": cuboid-max is lossless";
      dg[e] = w;
    }
  }
  // Sequences in runs that straddle the 16-page blocks, plus scattered pages.
  std::vector<int32_t> page_seq(n_pages);
  for (int p = 0; p < n_pages; p++)
    page_seq[p] = p < n_pages * 40 / 97 ? 0 : p < n_pages * 70 / 97 ? 1 : p < n_pages * 90 / 97 ? 2 : (int)(rng() % n_seqs);

  auto d_dg = narrow ? to_dev(dg16) : to_dev(dg);
  auto d_q = to_dev(q);
  auto d_seq = to_dev(page_seq);
  DevBuf d_sc(n_pages * sizeof(float));
  ASSERT_EQ(cudaMemset(d_sc.ptr, 0xff, d_sc.n_bytes), cudaSuccess);
  kn_cuda_digest_score_args_t a{};
  a.kind = c.kind;
  a.agg = c.agg;
  a.digests = d_dg->ptr;
  a.digest_dtype = c.digest_dtype;
  a.page_seq = d_seq->as<int32_t>();
  a.q = d_q->as<float>();
  a.scores = d_sc.as<float>();
  a.n_pages = n_pages;
  a.n_seqs = n_seqs;
  a.n_heads = n_heads;
  a.n_kv_heads = c.n_kv_heads;
  a.head_dim = c.head_dim;
  ASSERT_EQ(kn_cuda_digest_score(&a, nullptr, &err), AK_OK) << err.msg;
  sync_ok();
  auto got = from_dev<float>(d_sc, n_pages);

  std::vector<float> adg(page_floats), aq((size_t)n_heads * c.head_dim);
  int bad = 0;
  for (int p = 0; p < n_pages && bad < 5; p++) {
    const float *qs = q.data() + (size_t)page_seq[p] * n_heads * c.head_dim;
    float ref = 0.f, mag = 0.f;
    ASSERT_EQ(kv_digest_score_pages((kv_digest_kind_t)c.kind, dg.data() + p * page_floats, 1, qs, n_heads,
                                    c.n_kv_heads, c.head_dim, (kv_score_agg_t)c.agg, &err, &ref),
              AK_OK)
        << err.msg;
    for (size_t e = 0; e < page_floats; e++) adg[e] = std::fabs(dg[p * page_floats + e]);
    for (size_t e = 0; e < aq.size(); e++) aq[e] = std::fabs(qs[e]);
    ASSERT_EQ(kv_digest_score_pages((kv_digest_kind_t)c.kind, adg.data(), 1, aq.data(), n_heads, c.n_kv_heads,
                                    c.head_dim, KV_SCORE_MAX, &err, &mag),
              AK_OK);
    if (!(std::fabs(got[p] - ref) <= 1e-5f * std::max(std::fabs(ref), mag))) {
      ADD_FAILURE() << "page " << p << " (seq " << page_seq[p] << "): gpu " << got[p] << " cpu " << ref
                    << " scale " << mag;
      bad++;
    }
  }
}

TEST(KnCudaArkvaleGpu, DigestScoreMatchesCpu) {
  uint64_t seed = 1000;
  for (int kind = 0; kind < KV_DIGEST_N_KINDS; kind++)
    for (int agg : {0, 1})
      for (int hd : {64, 128, 256})
        for (int group : {1, 3, 8}) check_score({kind, agg, hd, 2, group}, seed++);
}

TEST(KnCudaArkvaleGpu, DigestScoreOddKvHeadsAndUncachedQuery) {
  uint64_t seed = 2000;
  for (int kind = 0; kind < KV_DIGEST_N_KINDS; kind++)
    for (int agg : {0, 1}) {
      check_score({kind, agg, 64, 3, 1}, seed++);   // head_dim 64: 2 KV heads per pass, the last alone
      check_score({kind, agg, 64, 5, 3}, seed++);
      check_score({kind, agg, 128, 16, 8}, seed++);  // 128 heads * 128 * 4 B = 64 KiB of q: not cached
      check_score({kind, agg, 256, 33, 1}, seed++);  // f32 cuboid pages of 66 KiB: the register-fed kernel
      // Cuboid kinds, f32: pages of 32 KiB take the bulk kernel's 2-stage ring, refilled
      // (1000 pages: more than 2 a block); 8 KiB pages with 16 (KV head, query head)
      // pairs a warp, past the 4 it keeps q for in registers.
      if (kind >= KV_DIGEST_CUBOID_MAX) {
        check_score({kind, agg, 128, 32, 1, KN_CUDA_F32, 1000, 2}, seed++);
        check_score({kind, agg, 64, 16, 8, KN_CUDA_F32, 300, 2}, seed++);
      }
    }
}

TEST(KnCudaArkvaleGpu, DigestScore16BitCuboidMatchesCpu) {
  uint64_t seed = 2500;
  for (kn_cuda_dtype_t dt : {KN_CUDA_F16, KN_CUDA_BF16})
    for (int kind = KV_DIGEST_CUBOID_MAX; kind <= KV_DIGEST_CUBOID_MEAN; kind++)
      for (int agg : {0, 1}) {
        for (int hd : {64, 128, 256})
          for (int group : {1, 3, 8}) check_score({kind, agg, hd, 2, group, dt}, seed++);
        // Partial passes (head_dim 64: 4 KV heads a pass, 32 a load batch; 128: 2 and
        // 16; 256: 1 and 8), more than one batch, and q too big to cache.
        check_score({kind, agg, 64, 5, 3, dt}, seed++);
        check_score({kind, agg, 64, 33, 1, dt}, seed++);
        check_score({kind, agg, 128, 17, 2, dt}, seed++);
        check_score({kind, agg, 128, 32, 1, dt}, seed++);  // LongChat-7B's shape
        check_score({kind, agg, 256, 9, 1, dt}, seed++);
        check_score({kind, agg, 128, 16, 8, dt}, seed++);  // 64 KiB of q: not cached
        // The bulk-copy kernel (page digests of 8..32 KiB; 32 KV heads x 128 above is
        // one) keeps a ring of 32 KiB per block: 2000 pages of 16 KiB give every block
        // more pages than its 2 stages, so stages are refilled. Digests of 2 keys keep
        // the CPU's part short. head_dim 64 and 256 at 16 KiB, and 65 KV heads x 256
        // (65 KiB a page: the register-fed kernel).
        check_score({kind, agg, 128, 32, 1, dt, 2000, 2}, seed++);
        check_score({kind, agg, 64, 64, 1, dt, 300, 2}, seed++);
        check_score({kind, agg, 256, 16, 2, dt, 300, 2}, seed++);
        check_score({kind, agg, 256, 65, 1, dt}, seed++);
      }
}

// One KV head (a 512-byte f32 page: the register-fed kernel) and 32 (16 KiB in f32, 8 KiB
// in 16 bits: the bulk-copy kernel); pages of sequence 5 and -1 of a 1-sequence batch.
TEST(KnCudaArkvaleGpu, DigestScoreBadSequenceRanksLast) {
  for (int nkv : {1, 32}) {
    SCOPED_TRACE(testing::Message() << nkv << " KV heads");
    const int hd = 64, nf = 2 * hd;
    std::vector<float> dg(3 * nkv * nf, 1.f), q(nkv * hd, 1.f);
    std::vector<int32_t> seq = {0, 5, -1};
    auto d_dg = to_dev(dg);
    auto d_q = to_dev(q);
    auto d_seq = to_dev(seq);
    DevBuf d_sc(3 * sizeof(float));
    kn_cuda_digest_score_args_t a{};
    a.kind = KV_DIGEST_CUBOID_MEAN;
    a.digests = d_dg->ptr;
    a.page_seq = d_seq->as<int32_t>();
    a.q = d_q->as<float>();
    a.scores = d_sc.as<float>();
    a.n_pages = 3;
    a.n_seqs = 1;
    a.n_heads = nkv;
    a.n_kv_heads = nkv;
    a.head_dim = hd;
    ak_err_t err{};
    ASSERT_EQ(kn_cuda_digest_score(&a, nullptr, &err), AK_OK) << err.msg;
    sync_ok();
    auto got = from_dev<float>(d_sc, 3);
    EXPECT_EQ(got[0], (float)hd);
    EXPECT_EQ(got[1], -INFINITY);
    EXPECT_EQ(got[2], -INFINITY);
    // The same with 16-bit digests of 1.0.
    for (kn_cuda_dtype_t dt : {KN_CUDA_F16, KN_CUDA_BF16}) {
      std::vector<uint16_t> dg16(3 * nkv * nf, dt == KN_CUDA_F16 ? ak_f32_to_f16(1.f) : ak_f32_to_bf16(1.f));
      auto d_dg16 = to_dev(dg16);
      a.digests = d_dg16->ptr;
      a.digest_dtype = dt;
      ASSERT_EQ(cudaMemset(d_sc.ptr, 0, d_sc.n_bytes), cudaSuccess);
      ASSERT_EQ(kn_cuda_digest_score(&a, nullptr, &err), AK_OK) << err.msg;
      sync_ok();
      got = from_dev<float>(d_sc, 3);
      EXPECT_EQ(got[0], (float)hd) << "digest_dtype " << dt;
      EXPECT_EQ(got[1], -INFINITY) << "digest_dtype " << dt;
      EXPECT_EQ(got[2], -INFINITY) << "digest_dtype " << dt;
    }
  }
}

// --- top-k ---

std::vector<int32_t> cpu_topk(const float *s, int n, int k) {
  std::vector<int32_t> idx(n);
  std::iota(idx.begin(), idx.end(), 0);
  std::sort(idx.begin(), idx.end(), [&](int32_t a, int32_t b) { return s[a] > s[b] || (s[a] == s[b] && a > b); });
  std::vector<int32_t> out(k, -1);
  for (int i = 0; i < std::min(n, k); i++) out[i] = idx[i];
  return out;
}

void check_topk(const std::vector<int> &lens, int k, int mode, uint64_t seed) {
  SCOPED_TRACE(testing::Message() << "k " << k << " mode " << mode);
  std::mt19937_64 rng(seed);
  std::vector<int32_t> seg_ptr = {0};
  for (int n : lens) seg_ptr.push_back(seg_ptr.back() + n);
  const int n_segs = (int)lens.size(), total = seg_ptr.back();
  std::vector<float> sc(total);
  std::normal_distribution<float> nd(0.f, 1.f);
  for (int i = 0; i < total; i++) {
    if (mode == 0) {
      sc[i] = nd(rng);  // distinct, mixed signs
    } else if (mode == 1) {
      const int v = (int)(rng() % 7) - 3;  // heavy ties, with -0 and +0
      sc[i] = v == 0 ? ((rng() & 1) ? -0.f : 0.f) : (float)v;
    } else if (mode == 2) {
      sc[i] = 5.f;  // all equal
    } else {
      sc[i] = 1.f + 1e-7f * (float)(rng() % 64);  // near-equal: same top bytes
    }
  }
  auto d_sc = to_dev(sc);
  auto d_ptr = to_dev(seg_ptr);
  DevBuf d_out((size_t)n_segs * k * sizeof(int32_t));
  ASSERT_EQ(cudaMemset(d_out.ptr, 0x7f, d_out.n_bytes), cudaSuccess);
  kn_cuda_topk_args_t a{};
  a.scores = d_sc->as<float>();
  a.seg_ptr = d_ptr->as<int32_t>();
  a.n_segs = n_segs;
  a.k = k;
  a.out_idx = d_out.as<int32_t>();
  ak_err_t err{};
  ASSERT_EQ(kn_cuda_topk(&a, nullptr, &err), AK_OK) << err.msg;
  sync_ok();
  auto got = from_dev<int32_t>(d_out, (size_t)n_segs * k);
  for (int s = 0; s < n_segs; s++) {
    auto ref = cpu_topk(sc.data() + seg_ptr[s], lens[s], k);
    std::vector<int32_t> g(got.begin() + (size_t)s * k, got.begin() + (size_t)(s + 1) * k);
    if (g != ref) {
      int i = 0;
      while (g[i] == ref[i]) i++;
      ADD_FAILURE() << "segment " << s << " (n " << lens[s] << "): first difference at rank " << i << ": gpu "
                    << g[i] << " cpu " << ref[i];
    }
  }
}

TEST(KnCudaArkvaleGpu, TopkMatchesCpuSort) {
  const std::vector<int> lens = {1, 17, 0, 97, 1000, 5000, 20000};
  uint64_t seed = 3000;
  for (int k : {1, 8, 40, 1024})
    for (int mode : {0, 1, 2, 3}) check_topk(lens, k, mode, seed++);
}

TEST(KnCudaArkvaleGpu, TopkBatchOfLayerShape) {
  // ~1000 pages x batch 4, the decode shape; and one segment of 2^20 scores.
  uint64_t seed = 4000;
  for (int k : {8, 40}) check_topk({1000, 998, 1003, 1001}, k, 0, seed++);
  check_topk({1 << 20}, 1024, 0, seed++);
  check_topk({1 << 20}, 40, 1, seed++);
}

// --- gather ---

void check_gather(bool from_host, size_t page_bytes, int n_pages, uint64_t seed) {
  SCOPED_TRACE(testing::Message() << (from_host ? "pinned" : "device") << " page_bytes " << page_bytes << " n_pages "
                                  << n_pages);
  const int n_src = n_pages + 3, n_dst = n_pages + 9;
  std::mt19937_64 rng(seed);
  std::vector<uint8_t> src((size_t)n_src * page_bytes);
  for (auto &b : src) b = (uint8_t)rng();
  void *h = nullptr, *hd = nullptr;
  std::unique_ptr<DevBuf> dsrc;
  ak_err_t err{};
  char *src_dev = nullptr;
  if (from_host) {
    ASSERT_EQ(kn_cuda_host_alloc(src.size(), &err, &h, &hd), AK_OK) << err.msg;
    memcpy(h, src.data(), src.size());
    src_dev = (char *)hd;
  } else {
    dsrc = to_dev(src);
    src_dev = (char *)dsrc->ptr;
  }
  // Page i comes from a shuffled source page and goes to a shuffled slot.
  std::vector<int32_t> src_pg(n_src), dst_pg(n_dst);
  std::iota(src_pg.begin(), src_pg.end(), 0);
  std::iota(dst_pg.begin(), dst_pg.end(), 0);
  std::shuffle(src_pg.begin(), src_pg.end(), rng);
  std::shuffle(dst_pg.begin(), dst_pg.end(), rng);
  std::vector<const void *> ptrs(n_pages);
  for (int i = 0; i < n_pages; i++) ptrs[i] = src_dev + (size_t)src_pg[i] * page_bytes;
  dst_pg.resize(n_pages);
  auto d_ptrs = to_dev(ptrs);
  auto d_dpg = to_dev(dst_pg);
  DevBuf d_dst((size_t)n_dst * page_bytes);
  ASSERT_EQ(cudaMemset(d_dst.ptr, 0xcd, d_dst.n_bytes), cudaSuccess);
  kn_cuda_gather_args_t a{};
  a.src_ptrs = d_ptrs->as<const void *>();
  a.dst_base = d_dst.ptr;
  a.dst_page = d_dpg->as<int32_t>();
  a.n_pages = n_pages;
  a.page_bytes = page_bytes;
  ASSERT_EQ(kn_cuda_gather_pages(&a, nullptr, &err), AK_OK) << err.msg;
  sync_ok();
  auto got = from_dev<uint8_t>(d_dst, d_dst.n_bytes);
  std::vector<int> from(n_dst, -1);
  for (int i = 0; i < n_pages; i++) from[dst_pg[i]] = src_pg[i];
  for (int d = 0; d < n_dst; d++) {
    const uint8_t *g = got.data() + (size_t)d * page_bytes;
    if (from[d] >= 0) {
      EXPECT_EQ(memcmp(g, src.data() + (size_t)from[d] * page_bytes, page_bytes), 0) << "slot " << d;
    } else {
      EXPECT_TRUE(std::all_of(g, g + page_bytes, [](uint8_t b) { return b == 0xcd; })) << "slot " << d << " touched";
    }
  }
  if (h) kn_cuda_host_free(h, src.size());
}

TEST(KnCudaArkvaleGpu, GatherCopiesExactBytes) {
  uint64_t seed = 5000;
  for (bool host : {true, false}) {
    check_gather(host, 16, 1, seed++);
    check_gather(host, 4096 + 48, 17, seed++);  // a partial 16 KiB slice
    check_gather(host, 16 * 1024, 40, seed++);
    check_gather(host, 128 * 1024, 41, seed++);
    check_gather(host, 64 * 1024 + 16, 5, seed++);
  }
  EXPECT_EQ(ak_alloc_outstanding_bytes(AK_MEM_PINNED), 0);
}

TEST(KnCudaArkvaleGpu, GatherSkipsNegativeSlots) {
  const size_t pb = 1024;
  std::vector<uint8_t> src(2 * pb, 0x11);
  auto d_src = to_dev(src);
  std::vector<const void *> ptrs = {d_src->ptr, (char *)d_src->ptr + pb};
  std::vector<int32_t> dpg = {-1, 1};
  auto d_ptrs = to_dev(ptrs);
  auto d_dpg = to_dev(dpg);
  DevBuf d_dst(2 * pb);
  ASSERT_EQ(cudaMemset(d_dst.ptr, 0xcd, d_dst.n_bytes), cudaSuccess);
  kn_cuda_gather_args_t a{};
  a.src_ptrs = d_ptrs->as<const void *>();
  a.dst_base = d_dst.ptr;
  a.dst_page = d_dpg->as<int32_t>();
  a.n_pages = 2;
  a.page_bytes = pb;
  ak_err_t err{};
  ASSERT_EQ(kn_cuda_gather_pages(&a, nullptr, &err), AK_OK) << err.msg;
  sync_ok();
  auto got = from_dev<uint8_t>(d_dst, 2 * pb);
  EXPECT_TRUE(std::all_of(got.begin(), got.begin() + pb, [](uint8_t b) { return b == 0xcd; }));
  EXPECT_TRUE(std::all_of(got.begin() + pb, got.end(), [](uint8_t b) { return b == 0x11; }));
}

// --- argument checks: no CUDA call is made (the pointers are host dummies) ---

alignas(16) float g_f[64];
alignas(16) int32_t g_i[64];
alignas(16) uint16_t g_h[64];
alignas(16) const void *g_p[4];
alignas(16) char g_bytes[64];

kn_cuda_digest_build_args_t good_build() {
  kn_cuda_digest_build_args_t a{};
  a.kind = 6;
  a.k_base = g_h;
  a.kv_dtype = KN_CUDA_BF16;
  a.page_stride_elems = 2 * 16 * 64;
  a.head_stride_elems = 16 * 64;
  a.page_tokens = 16;
  a.n_kv_heads = 2;
  a.head_dim = 64;
  a.page_ids = g_i;
  a.digests = g_f;
  a.n_pages = 1;
  return a;
}

kn_cuda_digest_score_args_t good_score() {
  kn_cuda_digest_score_args_t a{};
  a.kind = 6;
  a.agg = 0;
  a.digests = g_f;
  a.page_seq = g_i;
  a.q = g_f;
  a.scores = g_f;
  a.n_pages = 1;
  a.n_seqs = 1;
  a.n_heads = 4;
  a.n_kv_heads = 2;
  a.head_dim = 128;
  return a;
}

kn_cuda_topk_args_t good_topk() {
  kn_cuda_topk_args_t a{};
  a.scores = g_f;
  a.seg_ptr = g_i;
  a.n_segs = 1;
  a.k = 8;
  a.out_idx = g_i;
  return a;
}

kn_cuda_gather_args_t good_gather() {
  kn_cuda_gather_args_t a{};
  a.src_ptrs = g_p;
  a.dst_base = g_bytes;
  a.dst_page = g_i;
  a.n_pages = 1;
  a.page_bytes = 4096;
  return a;
}

template <typename A, typename F>
void expect_bad(F op, const A &a, ak_status_t st, const char *msg) {
  ak_err_t err{};
  EXPECT_EQ(op(&a, nullptr, &err), st) << err.msg;
  EXPECT_TRUE(has(err, msg)) << "message \"" << err.msg << "\" lacks \"" << msg << "\"";
}

TEST(KnCudaArkvaleArgs, DigestBuild) {
  ak_err_t err{};
  EXPECT_EQ(kn_cuda_digest_build(nullptr, nullptr, &err), AK_ERR_INVALID_ARG);
  EXPECT_TRUE(has(err, "kn_cuda_digest_build")) << err.msg;
  auto op = kn_cuda_digest_build;
  auto a = good_build();
  a.kind = 7;
  expect_bad(op, a, AK_ERR_INVALID_ARG, "kind=7");
  a = good_build(), a.kind = -1;
  expect_bad(op, a, AK_ERR_INVALID_ARG, "kind=-1");
  a = good_build(), a.kv_dtype = KN_CUDA_F32;
  expect_bad(op, a, AK_ERR_INVALID_ARG, "kv_dtype=0");
  a = good_build(), a.n_pages = -1;
  expect_bad(op, a, AK_ERR_INVALID_ARG, "n_pages=-1");
  a = good_build(), a.page_tokens = 0;
  expect_bad(op, a, AK_ERR_INVALID_ARG, "page_tokens=0");
  a = good_build(), a.n_kv_heads = 0;
  expect_bad(op, a, AK_ERR_INVALID_ARG, "n_kv_heads=0");
  a = good_build(), a.head_dim = 1025;
  expect_bad(op, a, AK_ERR_INVALID_ARG, "head_dim=1025");
  a = good_build(), a.head_stride_elems = 16 * 64 - 1;
  expect_bad(op, a, AK_ERR_INVALID_ARG, "head_stride_elems=1023");
  a = good_build(), a.page_stride_elems = 16 * 64;
  expect_bad(op, a, AK_ERR_INVALID_ARG, "page_stride_elems=1024");
  a = good_build(), a.page_ids = nullptr;
  expect_bad(op, a, AK_ERR_INVALID_ARG, "all are required");
  a = good_build(), a.k_base = g_bytes + 1;
  expect_bad(op, a, AK_ERR_INVALID_ARG, "misaligned");
  a = good_build(), a.digests = (float *)(g_bytes + 2);
  expect_bad(op, a, AK_ERR_INVALID_ARG, "misaligned");
  a = good_build(), a.n_pages = 0, a.k_base = nullptr, a.page_ids = nullptr, a.digests = nullptr;
  EXPECT_EQ(op(&a, nullptr, &err), AK_OK) << err.msg;  // nothing to do, no CUDA call
}

TEST(KnCudaArkvaleArgs, DigestBuild16Bit) {
  auto op = kn_cuda_digest_build;
  auto a = good_build();  // bf16 pages
  a.digest_dtype = (kn_cuda_dtype_t)5;
  expect_bad(op, a, AK_ERR_INVALID_ARG, "digest_dtype=5");
  for (int kind = 0; kind < KV_DIGEST_CUBOID_MAX; kind++) {  // no 16-bit centroids or spheres
    a = good_build(), a.digest_dtype = KN_CUDA_BF16, a.kind = kind;
    expect_bad(op, a, AK_ERR_UNSUPPORTED, "cuboid kinds");
  }
  a = good_build(), a.digest_dtype = KN_CUDA_F16;  // f16 digests of bf16 keys: not the pages' dtype
  expect_bad(op, a, AK_ERR_INVALID_ARG, "digest_dtype=1 differs from kv_dtype=2");
  a = good_build(), a.kv_dtype = KN_CUDA_F16, a.digest_dtype = KN_CUDA_BF16;
  expect_bad(op, a, AK_ERR_INVALID_ARG, "digest_dtype=2 differs from kv_dtype=1");
  a = good_build(), a.digest_dtype = KN_CUDA_BF16, a.digests = g_bytes + 1;
  expect_bad(op, a, AK_ERR_INVALID_ARG, "(2-byte) are misaligned");
  ak_err_t err{};
  a = good_build(), a.digest_dtype = KN_CUDA_BF16, a.n_pages = 0, a.digests = nullptr;
  EXPECT_EQ(op(&a, nullptr, &err), AK_OK) << err.msg;
}

TEST(KnCudaArkvaleArgs, DigestScore) {
  ak_err_t err{};
  EXPECT_EQ(kn_cuda_digest_score(nullptr, nullptr, &err), AK_ERR_INVALID_ARG);
  auto op = kn_cuda_digest_score;
  auto a = good_score();
  a.kind = 9;
  expect_bad(op, a, AK_ERR_INVALID_ARG, "kind=9");
  a = good_score(), a.agg = 2;
  expect_bad(op, a, AK_ERR_INVALID_ARG, "agg=2");
  a = good_score(), a.n_pages = -3;
  expect_bad(op, a, AK_ERR_INVALID_ARG, "n_pages=-3");
  a = good_score(), a.n_seqs = 0;
  expect_bad(op, a, AK_ERR_INVALID_ARG, "n_seqs=0");
  a = good_score(), a.n_kv_heads = 0;
  expect_bad(op, a, AK_ERR_INVALID_ARG, "n_kv_heads=0");
  a = good_score(), a.n_heads = 5;
  expect_bad(op, a, AK_ERR_INVALID_ARG, "n_heads=5");
  a = good_score(), a.head_dim = 0;
  expect_bad(op, a, AK_ERR_INVALID_ARG, "head_dim=0");
  a = good_score(), a.head_dim = 96;
  expect_bad(op, a, AK_ERR_UNSUPPORTED, "head_dim=96");
  a = good_score(), a.scores = nullptr;
  expect_bad(op, a, AK_ERR_INVALID_ARG, "all are required");
  a = good_score(), a.digests = (const float *)(g_bytes + 4);
  expect_bad(op, a, AK_ERR_INVALID_ARG, "misaligned");
  a = good_score(), a.q = (const float *)(g_bytes + 8);
  expect_bad(op, a, AK_ERR_INVALID_ARG, "misaligned");
  a = good_score(), a.n_pages = 0, a.digests = nullptr, a.q = nullptr, a.page_seq = nullptr, a.scores = nullptr;
  EXPECT_EQ(op(&a, nullptr, &err), AK_OK) << err.msg;
}

TEST(KnCudaArkvaleArgs, DigestScore16Bit) {
  auto op = kn_cuda_digest_score;
  auto a = good_score();
  a.digest_dtype = (kn_cuda_dtype_t)3;
  expect_bad(op, a, AK_ERR_INVALID_ARG, "digest_dtype=3");
  for (kn_cuda_dtype_t dt : {KN_CUDA_F16, KN_CUDA_BF16})
    for (int kind = 0; kind < KV_DIGEST_CUBOID_MAX; kind++) {
      a = good_score(), a.digest_dtype = dt, a.kind = kind;
      expect_bad(op, a, AK_ERR_UNSUPPORTED, "cuboid kinds");
    }
  a = good_score(), a.digest_dtype = KN_CUDA_F16, a.digests = g_bytes + 8;  // 16-byte loads of 8 halves
  expect_bad(op, a, AK_ERR_INVALID_ARG, "misaligned");
  a = good_score(), a.digest_dtype = KN_CUDA_BF16, a.head_dim = 96;
  expect_bad(op, a, AK_ERR_UNSUPPORTED, "head_dim=96");
  ak_err_t err{};
  a = good_score(), a.digest_dtype = KN_CUDA_F16, a.n_pages = 0, a.digests = nullptr;
  EXPECT_EQ(op(&a, nullptr, &err), AK_OK) << err.msg;
}

// --- kn_cuda_digest_narrow (host) ---

// The neighbours of a 16-bit float (f16 and bf16 both: sign | exponent | mantissa,
// magnitudes ordered as integers); callers do not step past an infinity.
uint16_t next_up16(uint16_t h) { return h == 0x8000 ? 0x0001 : (h & 0x8000) ? h - 1 : h + 1; }
uint16_t next_down16(uint16_t h) { return h == 0x0000 ? 0x8001 : (h & 0x8000) ? h + 1 : h - 1; }

void check_narrow_values(kn_cuda_dtype_t dt, const std::vector<float> &xs) {
  SCOPED_TRACE(testing::Message() << "digest_dtype " << dt);
  const uint16_t inf_bits = dt == KN_CUDA_F16 ? 0x7c00 : 0x7f80;
  const int hd = 1024;  // one head: ub = the values, lb = the same values
  std::vector<float> src(2 * hd);
  std::vector<uint16_t> dst(2 * hd);
  int bad = 0;
  for (size_t at = 0; at < xs.size() && bad < 5; at += hd) {
    for (int i = 0; i < hd; i++) src[i] = src[hd + i] = xs[(at + i) % xs.size()];
    ak_err_t err{};
    ASSERT_EQ(kn_cuda_digest_narrow(KV_DIGEST_CUBOID_MEAN, dt, src.data(), 1, 1, hd, dst.data(), &err), AK_OK)
        << err.msg;
    for (int i = 0; i < hd && bad < 5; i++) {
      const float x = src[i];
      const uint16_t u = dst[i], l = dst[hd + i];
      const float wu = widen(dt, u), wl = widen(dt, l);
      bool ok;
      if (std::isnan(x)) {
        ok = std::isnan(wu) && std::isnan(wl);
      } else {
        // ub: the least value >= x; lb: the greatest value <= x (exact when x is one).
        ok = wu >= x && wl <= x;
        if (ok && wu != x) ok = (u & 0x7fff) != inf_bits ? widen(dt, next_down16(u)) < x : wl < x;
        if (ok && wl != x) ok = (l & 0x7fff) != inf_bits ? widen(dt, next_up16(l)) > x : wu > x;
        // A value of the dtype is kept (the min/max of 16-bit keys: cuboid-max is lossless).
        const uint16_t rne = dt == KN_CUDA_F16 ? ak_f32_to_f16(x) : ak_f32_to_bf16(x);
        if (ok && widen(dt, rne) == x) ok = wu == x && wl == x;
      }
      if (!ok) {
        uint32_t xb;
        memcpy(&xb, &x, 4);
        ADD_FAILURE() << "x " << x << " (f32 0x" << std::hex << xb << "): ub 0x" << u << ", lb 0x" << l << std::dec
                      << " = " << wu << ", " << wl;
        bad++;
      }
    }
  }
}

TEST(KnCudaArkvaleNarrow, RoundsUbUpAndLbDown) {
  std::mt19937_64 rng(7);
  std::uniform_real_distribution<float> mant(1.f, 2.f);
  for (kn_cuda_dtype_t dt : {KN_CUDA_F16, KN_CUDA_BF16}) {
    std::vector<float> xs = {0.f, -0.f, 1.f, -1.f, INFINITY, -INFINITY, NAN, 65504.f, -65504.f, 65519.f, 65520.f,
                             70000.f, -70000.f, 1e-8f, -1e-8f, 0x1p-24f, -0x1p-24f, 0x1p-25f, 0x1p-14f, 0x1p-133f,
                             -0x1p-133f, 3e38f, -3e38f, FLT_MAX, -FLT_MAX, 1.f + 0x1p-11f, 1.f + 0x1p-8f};
    const int lo = dt == KN_CUDA_F16 ? -30 : -140, hi = dt == KN_CUDA_F16 ? 18 : 128;
    for (int e = lo; e <= hi; e++)
      for (int k = 0; k < 40; k++) {
        const float m = std::ldexp(mant(rng), e);
        xs.push_back((rng() & 1) ? m : -m);
      }
    for (int k = 0; k < 4000; k++) {  // values of the dtype, and their f32 neighbours
      const uint16_t h = (uint16_t)rng();
      const float w = widen(dt, h);
      if (std::isnan(w)) continue;
      xs.push_back(w);
      xs.push_back(std::nextafter(w, INFINITY));
      xs.push_back(std::nextafter(w, -INFINITY));
    }
    check_narrow_values(dt, xs);
  }
}

TEST(KnCudaArkvaleNarrow, KeepsTheLayout) {
  // pages x KV heads x [ub[d] | lb[d]]: every value between 1 and the next 16-bit one,
  // so an ub reads back as that next value and an lb as 1.
  const int n_pages = 2, nkv = 3, hd = 5, n = n_pages * nkv * 2 * hd;
  std::vector<float> src(n);
  for (int k = 0; k < n; k++) src[k] = 1.f + (float)(k + 1) * 0x1p-20f;
  for (kn_cuda_dtype_t dt : {KN_CUDA_F16, KN_CUDA_BF16}) {
    std::vector<uint16_t> dst(n, 0xffff);
    ak_err_t err{};
    ASSERT_EQ(kn_cuda_digest_narrow(KV_DIGEST_CUBOID_MAX, dt, src.data(), n_pages, nkv, hd, dst.data(), &err), AK_OK)
        << err.msg;
    const float up = dt == KN_CUDA_F16 ? 1.f + 0x1p-10f : 1.f + 0x1p-7f;
    for (int k = 0; k < n; k++) EXPECT_EQ(widen(dt, dst[k]), k % (2 * hd) < hd ? up : 1.f) << "element " << k;
  }
}

TEST(KnCudaArkvaleNarrow, Refusals) {
  std::vector<float> src(2 * 64, 1.f);
  std::vector<uint16_t> dst(2 * 64);
  ak_err_t err{};
  for (int kind : {0, 1, 2, 3, 7}) {
    EXPECT_EQ(kn_cuda_digest_narrow(kind, KN_CUDA_F16, src.data(), 1, 1, 64, dst.data(), &err), AK_ERR_UNSUPPORTED);
    EXPECT_TRUE(has(err, "kn_cuda_digest_narrow")) << err.msg;
  }
  EXPECT_EQ(kn_cuda_digest_narrow(6, KN_CUDA_F32, src.data(), 1, 1, 64, dst.data(), &err), AK_ERR_UNSUPPORTED);
  EXPECT_TRUE(has(err, "digest_dtype=0")) << err.msg;
  EXPECT_EQ(kn_cuda_digest_narrow(6, KN_CUDA_F16, src.data(), -1, 1, 64, dst.data(), &err), AK_ERR_INVALID_ARG);
  EXPECT_EQ(kn_cuda_digest_narrow(6, KN_CUDA_F16, src.data(), 1, 0, 64, dst.data(), &err), AK_ERR_INVALID_ARG);
  EXPECT_EQ(kn_cuda_digest_narrow(6, KN_CUDA_F16, src.data(), 1, 1, 1025, dst.data(), &err), AK_ERR_INVALID_ARG);
  EXPECT_TRUE(has(err, "head_dim=1025")) << err.msg;
  EXPECT_EQ(kn_cuda_digest_narrow(6, KN_CUDA_BF16, nullptr, 1, 1, 64, dst.data(), &err), AK_ERR_INVALID_ARG);
  EXPECT_TRUE(has(err, "both are required")) << err.msg;
  EXPECT_EQ(kn_cuda_digest_narrow(6, KN_CUDA_BF16, src.data(), 1, 1, 64, nullptr, &err), AK_ERR_INVALID_ARG);
  EXPECT_EQ(kn_cuda_digest_narrow(6, KN_CUDA_BF16, nullptr, 0, 1, 64, nullptr, &err), AK_OK) << err.msg;
}

TEST(KnCudaArkvaleArgs, Topk) {
  ak_err_t err{};
  EXPECT_EQ(kn_cuda_topk(nullptr, nullptr, &err), AK_ERR_INVALID_ARG);
  auto op = kn_cuda_topk;
  auto a = good_topk();
  a.k = 0;
  expect_bad(op, a, AK_ERR_INVALID_ARG, "k=0");
  a = good_topk(), a.k = 1025;
  expect_bad(op, a, AK_ERR_INVALID_ARG, "k=1025");
  a = good_topk(), a.n_segs = -1;
  expect_bad(op, a, AK_ERR_INVALID_ARG, "n_segs=-1");
  a = good_topk(), a.seg_ptr = nullptr;
  expect_bad(op, a, AK_ERR_INVALID_ARG, "all are required");
  a = good_topk(), a.out_idx = (int32_t *)(g_bytes + 2);
  expect_bad(op, a, AK_ERR_INVALID_ARG, "alignment");
  a = good_topk(), a.n_segs = 0, a.scores = nullptr, a.seg_ptr = nullptr, a.out_idx = nullptr;
  EXPECT_EQ(op(&a, nullptr, &err), AK_OK) << err.msg;
}

TEST(KnCudaArkvaleArgs, Gather) {
  ak_err_t err{};
  EXPECT_EQ(kn_cuda_gather_pages(nullptr, nullptr, &err), AK_ERR_INVALID_ARG);
  auto op = kn_cuda_gather_pages;
  auto a = good_gather();
  a.page_bytes = 24;
  expect_bad(op, a, AK_ERR_INVALID_ARG, "page_bytes=24");
  a = good_gather(), a.page_bytes = 0;
  expect_bad(op, a, AK_ERR_INVALID_ARG, "page_bytes=0");
  a = good_gather(), a.n_pages = -1;
  expect_bad(op, a, AK_ERR_INVALID_ARG, "n_pages=-1");
  a = good_gather(), a.dst_page = nullptr;
  expect_bad(op, a, AK_ERR_INVALID_ARG, "all are required");
  a = good_gather(), a.dst_base = g_bytes + 8;
  expect_bad(op, a, AK_ERR_INVALID_ARG, "16-byte aligned");
  a = good_gather(), a.src_ptrs = (const void *const *)(g_bytes + 4);
  expect_bad(op, a, AK_ERR_INVALID_ARG, "misaligned");
  a = good_gather(), a.n_pages = 0, a.src_ptrs = nullptr, a.dst_base = nullptr, a.dst_page = nullptr;
  EXPECT_EQ(op(&a, nullptr, &err), AK_OK) << err.msg;
}

}  // namespace
