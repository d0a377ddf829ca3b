// kn_attention and kn_kv_store against a double-precision softmax over the same
// paged view: page sizes 1/16/32, GQA ratios 1 and 3, head dims 64 and 40 (the SIMD
// unit's fallback), F32 and F16 KV, sequences of different lengths with partial last
// pages, pages scattered in the pool, causal kv lengths including 0.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <numeric>
#include <set>

#include "kn_test_util.h"

namespace {

bool has(const ak_err_t &err, const char *s) { return std::string(err.msg).find(s) != std::string::npos; }

struct PagedCase {
  int32_t page_tokens, n_heads, n_kv_heads, head_dim;
  kn_dtype_t dtype;
  std::vector<int32_t> seq_lens;
};

struct PagedFixture {
  PagedCase c;
  int64_t head_stride, page_stride;
  int32_t n_pool_pages;
  std::vector<uint8_t> k_pool, v_pool;
  std::vector<int32_t> indptr, indices, last_len;
  std::vector<std::vector<float>> k_tok, v_tok;  // per sequence [len][n_kv_heads][head_dim], as stored
  kn_paged_kv_t kv;

  PagedFixture(const PagedCase &pc, KnRng &rng) : c(pc) {
    head_stride = (int64_t)c.page_tokens * c.head_dim + 8;  // padded, as a pool may do
    page_stride = c.n_kv_heads * head_stride + 16;
    int32_t n_pages = 0;
    for (int32_t len : c.seq_lens) n_pages += (len + c.page_tokens - 1) / c.page_tokens;
    n_pool_pages = n_pages + 5;
    size_t elem = c.dtype == KN_F16 ? 2 : 4;
    k_pool.assign(n_pool_pages * page_stride * elem, 0xFF);  // NaN filler: unread bytes
    v_pool.assign(n_pool_pages * page_stride * elem, 0xFF);
    std::vector<int32_t> perm(n_pool_pages);
    std::iota(perm.begin(), perm.end(), 0);
    std::shuffle(perm.begin(), perm.end(), rng.gen);
    indptr.push_back(0);
    int32_t next = 0;
    for (int32_t len : c.seq_lens) {
      int32_t np = (len + c.page_tokens - 1) / c.page_tokens;
      for (int32_t p = 0; p < np; p++) indices.push_back(perm[next++]);
      indptr.push_back((int32_t)indices.size());
      last_len.push_back(np ? len - (np - 1) * c.page_tokens : 1);
    }
    kv = kn_paged_kv_t{k_pool.data(), v_pool.data(), c.dtype, page_stride, head_stride,
                       c.page_tokens, (int32_t)c.seq_lens.size(), indptr.data(), indices.data(),
                       last_len.data()};
  }

  // Writes random K/V for every sequence with kn_kv_store and records what was stored.
  void fill(kn_cpu_t *cpu, KnRng &rng) {
    for (size_t s = 0; s < c.seq_lens.size(); s++) {
      int32_t len = c.seq_lens[s];
      std::vector<float> k = rng.floats((size_t)len * c.n_kv_heads * c.head_dim, -1, 1);
      std::vector<float> v = rng.floats((size_t)len * c.n_kv_heads * c.head_dim, -1, 1);
      std::vector<int32_t> page(len), slot(len);
      for (int32_t j = 0; j < len; j++) {
        page[j] = indices[indptr[s] + j / c.page_tokens];
        slot[j] = j % c.page_tokens;
      }
      if (len > 0) {
        ak_err_t err{};
        ASSERT_EQ(kn_kv_store(cpu, &kv, k_pool.data(), c.n_kv_heads, c.head_dim, k.data(),
                              page.data(), slot.data(), len, &err), AK_OK) << err.msg;
        ASSERT_EQ(kn_kv_store(cpu, &kv, v_pool.data(), c.n_kv_heads, c.head_dim, v.data(),
                              page.data(), slot.data(), len, &err), AK_OK) << err.msg;
      }
      if (c.dtype == KN_F16)
        for (auto *vec : {&k, &v})
          for (float &f : *vec) f = ak_f16_to_f32(ak_f32_to_f16(f));
      k_tok.push_back(k);
      v_tok.push_back(v);
    }
  }

  // Reads back view token j of sequence s, KV head h, straight from the pool bytes.
  float read(const std::vector<uint8_t> &pool, int32_t s, int32_t j, int32_t h, int32_t i) const {
    int32_t page = indices[indptr[s] + j / c.page_tokens];
    int64_t off = page * page_stride + h * head_stride + (int64_t)(j % c.page_tokens) * c.head_dim + i;
    if (c.dtype == KN_F16) {
      uint16_t v;
      memcpy(&v, &pool[off * 2], 2);
      return ak_f16_to_f32(v);
    }
    float v;
    memcpy(&v, &pool[off * 4], 4);
    return v;
  }
};

void check_attention(const PagedCase &pc, uint64_t seed, int32_t max_q = 5) {
  KnRng rng(seed);
  PagedFixture f(pc, rng);
  {
    KnCpuPtr cpu = kn_test_cpu(1);
    f.fill(cpu.get(), rng);
  }
  // KV store round trip.
  for (size_t s = 0; s < pc.seq_lens.size(); s++)
    for (int32_t j = 0; j < pc.seq_lens[s]; j++)
      for (int32_t h = 0; h < pc.n_kv_heads; h++)
        for (int32_t i = 0; i < pc.head_dim; i++) {
          size_t at = ((size_t)j * pc.n_kv_heads + h) * pc.head_dim + i;
          ASSERT_EQ(f.read(f.k_pool, s, j, h, i), f.k_tok[s][at]);
          ASSERT_EQ(f.read(f.v_pool, s, j, h, i), f.v_tok[s][at]);
        }

  // Queries: for each sequence, its last few tokens (a prefill chunk) with causal
  // lengths, and one query with kv_len 0 on the first sequence.
  std::vector<int32_t> tok_seq, tok_len;
  for (size_t s = 0; s < pc.seq_lens.size(); s++) {
    int32_t len = pc.seq_lens[s], n_q = std::min(len, max_q);
    for (int32_t i = 0; i < n_q; i++) {
      tok_seq.push_back((int32_t)s);
      tok_len.push_back(len - n_q + 1 + i);
    }
  }
  tok_seq.push_back(0);
  tok_len.push_back(0);
  int64_t n_tok = tok_seq.size();
  std::vector<float> q = rng.floats(n_tok * pc.n_heads * pc.head_dim, -1, 1);
  float scale = 1.0f / std::sqrt((float)pc.head_dim) * 3.0f;  // sharper than usual

  std::vector<double> want(n_tok * pc.n_heads * pc.head_dim, 0.0);
  int32_t group = pc.n_heads / pc.n_kv_heads;
  for (int64_t t = 0; t < n_tok; t++)
    for (int32_t h = 0; h < pc.n_heads; h++) {
      int32_t s = tok_seq[t], L = tok_len[t], kh = h / group;
      if (L == 0) continue;
      const float *qv = &q[(t * pc.n_heads + h) * pc.head_dim];
      std::vector<double> sc(L);
      double mx = -INFINITY;
      for (int32_t j = 0; j < L; j++) {
        double d = 0;
        for (int32_t i = 0; i < pc.head_dim; i++)
          d += (double)qv[i] * f.k_tok[s][((size_t)j * pc.n_kv_heads + kh) * pc.head_dim + i];
        sc[j] = d * scale;
        mx = std::max(mx, sc[j]);
      }
      double den = 0;
      for (double &x : sc) den += (x = std::exp(x - mx));
      for (int32_t j = 0; j < L; j++)
        for (int32_t i = 0; i < pc.head_dim; i++)
          want[(t * pc.n_heads + h) * pc.head_dim + i] +=
              sc[j] / den * f.v_tok[s][((size_t)j * pc.n_kv_heads + kh) * pc.head_dim + i];
    }

  for (const KnConfig &cfg : kn_test_configs()) {
    KnCpuPtr cpu = kn_test_cpu(cfg);
    std::vector<float> out(want.size(), NAN);
    kn_attn_args_t a{q.data(), out.data(), n_tok, pc.n_heads, pc.n_kv_heads, pc.head_dim, scale,
                     tok_seq.data(), tok_len.data(), f.kv};
    size_t ws_bytes = kn_attention_workspace_bytes(&a, kn_cpu_n_threads(cpu.get()));
    KnBuf ws(ws_bytes, 4);
    ak_err_t err{};
    ASSERT_EQ(kn_attention(cpu.get(), &a, ws.data(), ws_bytes, &err), AK_OK) << err.msg;
    for (size_t i = 0; i < want.size(); i++)
      // |v| <= 1; f32 scores (64-term dots), exp to ~2 ulp, f32 sums over <= 300 keys.
      ASSERT_NEAR(out[i], want[i], 2e-5) << cfg.name() << " at " << i;
  }
}

TEST(KnAttention, PagedGqaMatchesDouble) {
  uint64_t seed = 10;
  for (kn_dtype_t dtype : {KN_F32, KN_F16})
    for (int32_t pt : {1, 16, 32})
      for (auto heads : {std::pair<int, int>{9, 3}, std::pair<int, int>{4, 4}})
        for (int32_t hd : {64, 40}) {
          PagedCase pc{pt, heads.first, heads.second, hd, dtype, {1, 17, 97, 33, 250}};
          SCOPED_TRACE(testing::Message() << "dtype=" << dtype << " page_tokens=" << pt
                                          << " heads=" << heads.first << "/" << heads.second
                                          << " head_dim=" << hd);
          check_attention(pc, seed++);
        }
}

// Whole prompts as queries (a prefill): every causal length from 1 up, blocks of
// consecutive tokens of one sequence crossing page boundaries.
TEST(KnAttention, PrefillAllTokens) {
  uint64_t seed = 100;
  for (kn_dtype_t dtype : {KN_F32, KN_F16})
    for (int32_t pt : {1, 16})
      for (int32_t hd : {64, 128}) {
        PagedCase pc{pt, 9, 3, hd, dtype, {97, 3, 130}};
        SCOPED_TRACE(testing::Message() << "dtype=" << dtype << " page_tokens=" << pt
                                        << " head_dim=" << hd);
        check_attention(pc, seed++, 1000);
      }
}

// Decode steps (one query per sequence, long contexts): with 2 threads each token's
// keys are split into parts computed separately and merged (split-K).
TEST(KnAttention, DecodeSplitKeys) {
  uint64_t seed = 200;
  for (kn_dtype_t dtype : {KN_F32, KN_F16})
    for (int32_t pt : {16, 32})
      for (int32_t hd : {64, 40}) {
        for (auto lens : {std::vector<int32_t>{2050}, std::vector<int32_t>{1000}}) {
          PagedCase pc{pt, 9, 3, hd, dtype, lens};
          SCOPED_TRACE(testing::Message() << "dtype=" << dtype << " page_tokens=" << pt
                                          << " head_dim=" << hd << " len=" << lens[0]);
          check_attention(pc, seed++, 1);
        }
      }
}

// ---- bad arguments ----

class KnAttentionArgs : public ::testing::Test {
 protected:
  KnCpuPtr cpu = kn_test_cpu(2);
  KnRng rng{7};
  PagedFixture f{PagedCase{16, 4, 2, 16, KN_F32, {20, 5}}, rng};
  std::vector<float> q = std::vector<float>(2 * 4 * 16, 0.1f), out = std::vector<float>(2 * 4 * 16);
  std::vector<int32_t> seq{0, 1}, len{20, 5};
  std::vector<uint8_t> ws = std::vector<uint8_t>(1 << 20);
  kn_attn_args_t a{};
  ak_err_t err{};
  void SetUp() override {
    f.fill(cpu.get(), rng);
    a = kn_attn_args_t{q.data(), out.data(), 2, 4, 2, 16, 0.25f, seq.data(), len.data(), f.kv};
  }
  ak_status_t run() { return kn_attention(cpu.get(), &a, ws.data(), ws.size(), &err); }
};

TEST_F(KnAttentionArgs, ValidCallSucceeds) { EXPECT_EQ(run(), AK_OK) << err.msg; }

TEST_F(KnAttentionArgs, HeadsNotMultipleOfKvHeads) {
  a.n_heads = 3;
  EXPECT_EQ(run(), AK_ERR_INVALID_ARG);
  EXPECT_TRUE(has(err, "multiple of n_kv_heads")) << err.msg;
}

TEST_F(KnAttentionArgs, NullPointers) {
  a.q = nullptr;
  EXPECT_EQ(run(), AK_ERR_INVALID_ARG);
  EXPECT_TRUE(has(err, "NULL")) << err.msg;
  a.q = q.data();
  a.kv.indices = nullptr;
  EXPECT_EQ(run(), AK_ERR_INVALID_ARG);
  EXPECT_EQ(kn_attention(cpu.get(), nullptr, ws.data(), ws.size(), &err), AK_ERR_INVALID_ARG);
}

TEST_F(KnAttentionArgs, NonPositiveSizes) {
  a.head_dim = 0;
  EXPECT_EQ(run(), AK_ERR_INVALID_ARG);
  EXPECT_TRUE(has(err, "head_dim=0")) << err.msg;
  a.head_dim = 16;
  a.kv.page_tokens = 0;
  EXPECT_EQ(run(), AK_ERR_INVALID_ARG);
}

TEST_F(KnAttentionArgs, UnknownDtype) {
  a.kv.dtype = (kn_dtype_t)5;
  EXPECT_EQ(run(), AK_ERR_UNSUPPORTED);
  EXPECT_TRUE(has(err, "dtype 5")) << err.msg;
}

TEST_F(KnAttentionArgs, KvLengthPastSequence) {
  len[1] = 6;
  EXPECT_EQ(run(), AK_ERR_RANGE);
  EXPECT_TRUE(has(err, "tok_kv_len[1]=6")) << err.msg;
}

TEST_F(KnAttentionArgs, SequenceIndexOutOfRange) {
  seq[0] = 2;
  EXPECT_EQ(run(), AK_ERR_RANGE);
  EXPECT_TRUE(has(err, "tok_seq_idx[0]=2")) << err.msg;
}

TEST_F(KnAttentionArgs, BadPageTable) {
  f.last_len[0] = 0;
  EXPECT_EQ(run(), AK_ERR_INVALID_ARG);
  EXPECT_TRUE(has(err, "last_page_len[0]=0")) << err.msg;
  f.last_len[0] = 4;
  f.indices[0] = -3;
  EXPECT_EQ(run(), AK_ERR_INVALID_ARG);
  EXPECT_TRUE(has(err, "indices[0]=-3")) << err.msg;
}

TEST_F(KnAttentionArgs, StridesTooSmall) {
  a.kv.head_stride_elems = 15 * 16;
  EXPECT_EQ(run(), AK_ERR_INVALID_ARG);
  EXPECT_TRUE(has(err, "strides")) << err.msg;
}

TEST_F(KnAttentionArgs, WorkspaceTooSmall) {
  size_t need = kn_attention_workspace_bytes(&a, kn_cpu_n_threads(cpu.get()));
  EXPECT_EQ(kn_attention(cpu.get(), &a, ws.data(), need - 1, &err), AK_ERR_INVALID_ARG);
  EXPECT_TRUE(has(err, "workspace")) << err.msg;
  EXPECT_EQ(kn_attention(cpu.get(), &a, nullptr, need, &err), AK_ERR_INVALID_ARG);
}

// Every ISA stores exactly ak_f32_to_f16's rounding (nearest even), subnormals and
// overflow included, into the right page, head and slot.
TEST(KnKvStore, F16BitsMatchReferenceOnEveryIsa) {
  KnRng rng(9);
  const int32_t n_kv = 3, hd = 40, pt = 16;
  const int64_t n_tok = 37;
  std::vector<float> src = rng.floats(n_tok * n_kv * hd, -2, 2);
  src[0] = 1e-6f;    // f16 subnormal
  src[1] = 70000.0f; // overflows to inf
  src[2] = -3e-8f;   // rounds to -0
  std::vector<int32_t> page(n_tok), slot(n_tok);
  for (int64_t i = 0; i < n_tok; i++) {
    page[i] = (int32_t)(i * 7 % 5);
    slot[i] = (int32_t)(i * 3 % pt);
  }
  // (page, slot) pairs must not repeat, or a later token overwrites an earlier one.
  std::set<std::pair<int32_t, int32_t>> seen;
  for (int64_t i = 0; i < n_tok; i++) ASSERT_TRUE(seen.insert({page[i], slot[i]}).second);
  const int64_t head_stride = pt * hd + 8, page_stride = n_kv * head_stride;
  for (const KnConfig &cfg : kn_test_configs()) {
    KnCpuPtr cpu = kn_test_cpu(cfg);
    std::vector<uint16_t> pool(5 * page_stride, 0xFFFF);
    kn_paged_kv_t kv{pool.data(), pool.data(), KN_F16, page_stride, head_stride, pt, 1, nullptr, nullptr, nullptr};
    ak_err_t err{};
    ASSERT_EQ(kn_kv_store(cpu.get(), &kv, pool.data(), n_kv, hd, src.data(), page.data(), slot.data(), n_tok, &err),
              AK_OK) << err.msg;
    for (int64_t i = 0; i < n_tok; i++)
      for (int32_t h = 0; h < n_kv; h++)
        for (int32_t k = 0; k < hd; k++)
          ASSERT_EQ(pool[page[i] * page_stride + h * head_stride + slot[i] * hd + k],
                    ak_f32_to_f16(src[(i * n_kv + h) * hd + k]))
              << cfg.name() << " token " << i << " head " << h << " dim " << k;
  }
}

TEST(KnKvStore, BadArguments) {
  KnCpuPtr cpu = kn_test_cpu(1);
  KnRng rng(8);
  PagedFixture f(PagedCase{4, 2, 2, 8, KN_F16, {6}}, rng);
  std::vector<float> src(2 * 8, 1.0f);
  int32_t page = 0, slot = 4;
  ak_err_t err{};
  EXPECT_EQ(kn_kv_store(cpu.get(), &f.kv, f.k_pool.data(), 2, 8, src.data(), &page, &slot, 1, &err),
            AK_ERR_RANGE);
  EXPECT_TRUE(has(err, "slot 4")) << err.msg;
  slot = 0;
  page = -1;
  EXPECT_EQ(kn_kv_store(cpu.get(), &f.kv, f.k_pool.data(), 2, 8, src.data(), &page, &slot, 1, &err),
            AK_ERR_RANGE);
  page = 0;
  EXPECT_EQ(kn_kv_store(cpu.get(), &f.kv, nullptr, 2, 8, src.data(), &page, &slot, 1, &err),
            AK_ERR_INVALID_ARG);
  EXPECT_EQ(kn_kv_store(cpu.get(), &f.kv, f.k_pool.data(), 2, 8, src.data(), &page, &slot, 0, &err),
            AK_ERR_INVALID_ARG);
  kn_paged_kv_t kv = f.kv;
  kv.dtype = (kn_dtype_t)3;
  EXPECT_EQ(kn_kv_store(cpu.get(), &kv, f.k_pool.data(), 2, 8, src.data(), &page, &slot, 1, &err),
            AK_ERR_UNSUPPORTED);
  EXPECT_EQ(kn_kv_store(cpu.get(), &f.kv, f.k_pool.data(), 2, 8, src.data(), &page, &slot, 1, &err),
            AK_OK) << err.msg;
}

}  // namespace
