// Tests for kvpool/kv_pool.c: the `full` policy's page accounting, views, abort and
// release paths, bad input, and "0 pages, 0 bytes outstanding" after release.
#include <gtest/gtest.h>

#include <memory>
#include <random>
#include <string>
#include <vector>

extern "C" {
#include "ak_alloc.h"
#include "kernels.h"
#include "kvpool.h"
}

namespace {
struct PoolDel {
  void operator()(kv_pool_t *p) const { kv_pool_destroy(p); }
};
struct CpuDel {
  void operator()(kn_cpu_t *c) const { kn_cpu_destroy(c); }
};
using PoolPtr = std::unique_ptr<kv_pool_t, PoolDel>;
using CpuPtr = std::unique_ptr<kn_cpu_t, CpuDel>;

kv_pool_params_t small_params(int32_t page_tokens, int64_t n_pages, kn_dtype_t dt = KN_F32) {
  kv_pool_params_t p = kv_pool_params_default();
  p.n_layers = 2;
  p.n_kv_heads = 3;
  p.head_dim = 8;
  p.page_tokens = page_tokens;
  p.n_pages = n_pages;
  p.max_seqs = 8;
  p.max_seq_tokens = 256;
  p.dtype = dt;
  return p;
}

PoolPtr make_pool(const kv_pool_params_t &p) {
  kv_pool_t *pool = nullptr;
  ak_err_t err;
  EXPECT_EQ(kv_pool_create(&p, &err, &pool), AK_OK) << err.msg;
  return PoolPtr(pool);
}

// Value stored for (seq, layer, head, position, dim): lets a view be checked exactly.
float kv_value(int seq, int layer, int head, int pos, int d, int is_v) {
  return (float)(seq * 1000 + layer * 100 + head * 10 + d) + (float)pos * 0.001f + (is_v ? 0.5f : 0.f);
}

// Runs one step appending n_new[i] tokens to seqs[i] with kv_value contents.
void run_step(kv_pool_t *pool, kn_cpu_t *cpu, const std::vector<int32_t> &seqs, const std::vector<int32_t> &n_new) {
  kv_batch_t b{(int32_t)seqs.size(), seqs.data(), n_new.data()};
  ASSERT_EQ(kv_step_begin(pool, &b), AK_OK) << kv_pool_errmsg(pool);
  int64_t n_tok = 0;
  const int32_t *pos = kv_step_positions(pool, &n_tok);
  const kv_pool_params_t *p = kv_pool_params(pool);
  for (int l = 0; l < p->n_layers; l++) {
    std::vector<float> k(n_tok * p->n_kv_heads * p->head_dim), v(k.size());
    int64_t t = 0;
    for (size_t i = 0; i < seqs.size(); i++)
      for (int j = 0; j < n_new[i]; j++, t++)
        for (int h = 0; h < p->n_kv_heads; h++)
          for (int d = 0; d < p->head_dim; d++) {
            k[(t * p->n_kv_heads + h) * p->head_dim + d] = kv_value(seqs[i], l, h, pos[t], d, 0);
            v[(t * p->n_kv_heads + h) * p->head_dim + d] = kv_value(seqs[i], l, h, pos[t], d, 1);
          }
    ASSERT_EQ(kv_layer_append(pool, cpu, l, k.data(), v.data()), AK_OK) << kv_pool_errmsg(pool);
  }
  ASSERT_EQ(kv_step_end(pool), AK_OK);
  ASSERT_EQ(kv_pool_check(pool), AK_OK) << kv_pool_errmsg(pool);
}

// Reads K or V of view token j of sequence s, head h, dim d (f32 pools).
float view_at(const kn_paged_kv_t &kv, int s, int j, int h, int d, int head_dim, int is_v) {
  int page = kv.indices[kv.indptr[s] + j / kv.page_tokens];
  const float *base = (const float *)(is_v ? kv.v_base : kv.k_base);
  return base[page * kv.page_stride_elems + h * kv.head_stride_elems + (j % kv.page_tokens) * head_dim + d];
}
}  // namespace

TEST(KvPool, PagesForTokens) {
  EXPECT_EQ(kv_pages_for_tokens(0, 16), 0);
  EXPECT_EQ(kv_pages_for_tokens(1, 16), 1);
  EXPECT_EQ(kv_pages_for_tokens(16, 16), 1);
  EXPECT_EQ(kv_pages_for_tokens(17, 16), 2);
  EXPECT_EQ(kv_pages_for_tokens(5, 1), 5);
}

TEST(KvPool, RejectsBadParams) {
  ak_err_t err;
  kv_pool_t *pool = nullptr;
  kv_pool_params_t p = small_params(16, 64);
  p.page_tokens = 0;
  EXPECT_EQ(kv_pool_create(&p, &err, &pool), AK_ERR_INVALID_ARG);
  EXPECT_NE(std::string(err.msg).find("page_tokens"), std::string::npos);
  p = small_params(16, 64);
  p.n_pages = 0;
  EXPECT_EQ(kv_pool_create(&p, &err, &pool), AK_ERR_INVALID_ARG);
  EXPECT_NE(std::string(err.msg).find("n_pages"), std::string::npos);
  p = small_params(16, 64);
  p.dtype = (kn_dtype_t)7;
  EXPECT_EQ(kv_pool_create(&p, &err, &pool), AK_ERR_INVALID_ARG);
  EXPECT_EQ(pool, nullptr);
}

// Mixed-length batch: prompts of 1, 16 and 37 tokens then decode steps; every view
// token must be the value written for that position, and positions are exact.
TEST(KvPool, MixedLengthBatchViewsAreExact) {
  for (int32_t page_tokens : {1, 8, 16}) {
    int64_t before = ak_alloc_outstanding_bytes(AK_MEM_HOST);
    {
      PoolPtr pool = make_pool(small_params(page_tokens, 400));
      kn_cpu_t *c = nullptr;
      ASSERT_EQ(kn_cpu_create(1, nullptr, &c), AK_OK);
      CpuPtr cpu(c);
      std::vector<int32_t> seqs(3);
      for (auto &s : seqs) ASSERT_EQ(kv_seq_create(pool.get(), &s), AK_OK);
      run_step(pool.get(), cpu.get(), seqs, {1, 16, 37});
      for (int step = 0; step < 5; step++) run_step(pool.get(), cpu.get(), seqs, {1, 1, 1});
      EXPECT_EQ(kv_seq_n_tokens(pool.get(), seqs[0]), 6);
      EXPECT_EQ(kv_seq_n_tokens(pool.get(), seqs[2]), 42);

      // A decode step: the view covers each sequence's tokens including the new one.
      std::vector<int32_t> one{1, 1, 1};
      kv_batch_t b{3, seqs.data(), one.data()};
      ASSERT_EQ(kv_step_begin(pool.get(), &b), AK_OK);
      int64_t n_tok = 0;
      const int32_t *pos = kv_step_positions(pool.get(), &n_tok);
      ASSERT_EQ(n_tok, 3);
      EXPECT_EQ(pos[0], 6);
      EXPECT_EQ(pos[1], 21);
      EXPECT_EQ(pos[2], 42);
      kn_attn_args_t a{};
      ASSERT_EQ(kv_layer_view(pool.get(), 1, nullptr, 3, &a), AK_OK);
      EXPECT_EQ(a.n_tok, 3);
      for (int s = 0; s < 3; s++) {
        int len = pos[s] + 1;
        EXPECT_EQ(a.tok_seq_idx[s], s);
        EXPECT_EQ(a.tok_kv_len[s], len);
        EXPECT_EQ(a.kv.indptr[s + 1] - a.kv.indptr[s], kv_pages_for_tokens(len, page_tokens));
        EXPECT_EQ(a.kv.last_page_len[s], len - (int)(kv_pages_for_tokens(len, page_tokens) - 1) * page_tokens);
        for (int j = 0; j < len - 1; j++)  // the new token is not written yet
          for (int h = 0; h < 3; h++) {
            ASSERT_EQ(view_at(a.kv, s, j, h, 5, 8, 0), kv_value(seqs[s], 1, h, j, 5, 0)) << "seq " << s << " tok " << j;
            ASSERT_EQ(view_at(a.kv, s, j, h, 7, 8, 1), kv_value(seqs[s], 1, h, j, 7, 1));
          }
      }
      // kv_layer_view_into: the same view with its page list in the caller's array; too
      // little room is refused by name before anything is written.
      const int32_t n_idx = a.kv.indptr[3];
      const std::vector<int32_t> want(a.kv.indices, a.kv.indices + n_idx), indptr(a.kv.indptr, a.kv.indptr + 4);
      std::vector<int32_t> idx(n_idx + 4, -7);
      kn_attn_args_t a2{};
      EXPECT_EQ(kv_layer_view_into(pool.get(), 1, nullptr, 3, idx.data(), n_idx - 1, &a2), AK_ERR_INVALID_ARG);
      EXPECT_NE(std::string(kv_pool_errmsg(pool.get())).find("room for"), std::string::npos)
          << kv_pool_errmsg(pool.get());
      EXPECT_EQ(idx[0], -7);
      ASSERT_EQ(kv_layer_view_into(pool.get(), 1, nullptr, 3, idx.data(), (int64_t)idx.size(), &a2), AK_OK)
          << kv_pool_errmsg(pool.get());
      EXPECT_EQ(a2.kv.indices, idx.data());
      for (int s = 0; s <= 3; s++) EXPECT_EQ(a2.kv.indptr[s], indptr[s]);
      for (int32_t i = 0; i < n_idx; i++) EXPECT_EQ(idx[i], want[i]) << i;
      for (size_t i = n_idx; i < idx.size(); i++) EXPECT_EQ(idx[i], -7) << "written past the view";
      kv_step_abort(pool.get());
      ASSERT_EQ(kv_pool_check(pool.get()), AK_OK) << kv_pool_errmsg(pool.get());
      for (auto s : seqs) ASSERT_EQ(kv_seq_release(pool.get(), s), AK_OK);
      kv_pool_stats_t st;
      kv_pool_get_stats(pool.get(), &st);
      EXPECT_EQ(st.n_pages_used, 0);
      EXPECT_EQ(st.n_seqs, 0);
    }
    EXPECT_EQ(ak_alloc_outstanding_bytes(AK_MEM_HOST), before) << "page_tokens " << page_tokens;
  }
}

TEST(KvPool, PoolFullChangesNothing) {
  PoolPtr pool = make_pool(small_params(16, 6));  // 3 pages per layer x 2 layers
  kn_cpu_t *c = nullptr;
  ASSERT_EQ(kn_cpu_create(1, nullptr, &c), AK_OK);
  CpuPtr cpu(c);
  kv_seq_id_t a, b;
  ASSERT_EQ(kv_seq_create(pool.get(), &a), AK_OK);
  ASSERT_EQ(kv_seq_create(pool.get(), &b), AK_OK);
  run_step(pool.get(), cpu.get(), {a}, {32});  // 2 pages x 2 layers
  std::vector<int32_t> seqs{b}, n{17};
  kv_batch_t batch{1, seqs.data(), n.data()};
  EXPECT_EQ(kv_step_begin(pool.get(), &batch), AK_ERR_POOL_FULL);
  EXPECT_NE(std::string(kv_pool_errmsg(pool.get())).find("needs 4 pages, 2 free"), std::string::npos)
      << kv_pool_errmsg(pool.get());
  kv_pool_stats_t st;
  kv_pool_get_stats(pool.get(), &st);
  EXPECT_EQ(st.n_pages_used, 4);
  ASSERT_EQ(kv_pool_check(pool.get()), AK_OK);
  // Releasing the first sequence makes room at once.
  ASSERT_EQ(kv_seq_release(pool.get(), a), AK_OK);
  run_step(pool.get(), cpu.get(), {b}, {17});
}

TEST(KvPool, AbortReturnsReservedPages) {
  PoolPtr pool = make_pool(small_params(8, 64));
  kv_seq_id_t s;
  ASSERT_EQ(kv_seq_create(pool.get(), &s), AK_OK);
  std::vector<int32_t> seqs{s}, n{20};
  kv_batch_t b{1, seqs.data(), n.data()};
  ASSERT_EQ(kv_step_begin(pool.get(), &b), AK_OK);
  kv_pool_stats_t st;
  kv_pool_get_stats(pool.get(), &st);
  EXPECT_EQ(st.n_pages_used, 6);  // 3 pages x 2 layers
  // Release while in the step is refused, not corrupting.
  EXPECT_EQ(kv_seq_release(pool.get(), s), AK_ERR_INVALID_ARG);
  kv_step_abort(pool.get());
  kv_pool_get_stats(pool.get(), &st);
  EXPECT_EQ(st.n_pages_used, 0);
  EXPECT_EQ(kv_seq_n_tokens(pool.get(), s), 0);
  EXPECT_EQ(kv_pool_check(pool.get()), AK_OK);
}

TEST(KvPool, BadBatchesAreRefused) {
  PoolPtr pool = make_pool(small_params(8, 64));
  kv_seq_id_t s;
  ASSERT_EQ(kv_seq_create(pool.get(), &s), AK_OK);
  std::vector<int32_t> dup{s, s}, n2{1, 1}, unknown{5}, n1{1}, zero{0}, seq1{s}, huge{300};
  kv_batch_t b{2, dup.data(), n2.data()};
  EXPECT_EQ(kv_step_begin(pool.get(), &b), AK_ERR_INVALID_ARG);
  EXPECT_NE(std::string(kv_pool_errmsg(pool.get())).find("twice"), std::string::npos);
  b = {1, unknown.data(), n1.data()};
  EXPECT_EQ(kv_step_begin(pool.get(), &b), AK_ERR_NOT_FOUND);
  b = {1, seq1.data(), zero.data()};
  EXPECT_EQ(kv_step_begin(pool.get(), &b), AK_ERR_INVALID_ARG);
  b = {1, seq1.data(), huge.data()};
  EXPECT_EQ(kv_step_begin(pool.get(), &b), AK_ERR_RANGE);
  EXPECT_NE(std::string(kv_pool_errmsg(pool.get())).find("max_seq_tokens"), std::string::npos);
  EXPECT_EQ(kv_layer_append(pool.get(), nullptr, 0, nullptr, nullptr), AK_ERR_INVALID_ARG);  // no step
  EXPECT_EQ(kv_step_end(pool.get()), AK_ERR_INVALID_ARG);
  EXPECT_EQ(kv_seq_release(pool.get(), 99), AK_ERR_NOT_FOUND);
  EXPECT_EQ(kv_seq_release(pool.get(), -1), AK_ERR_NOT_FOUND);
  EXPECT_EQ(kv_pool_check(pool.get()), AK_OK);
}

TEST(KvPool, SequenceSlotsRunOut) {
  kv_pool_params_t p = small_params(8, 64);
  p.max_seqs = 2;
  PoolPtr pool = make_pool(p);
  kv_seq_id_t a, b, c;
  ASSERT_EQ(kv_seq_create(pool.get(), &a), AK_OK);
  ASSERT_EQ(kv_seq_create(pool.get(), &b), AK_OK);
  EXPECT_EQ(kv_seq_create(pool.get(), &c), AK_ERR_POOL_FULL);
  ASSERT_EQ(kv_seq_release(pool.get(), a), AK_OK);
  EXPECT_EQ(kv_seq_create(pool.get(), &c), AK_OK);
}

// F16 pools store rounded values: the view reads back what was written within f16 precision.
TEST(KvPool, F16PoolRoundTrips) {
  PoolPtr pool = make_pool(small_params(16, 64, KN_F16));
  kn_cpu_t *c = nullptr;
  ASSERT_EQ(kn_cpu_create(1, nullptr, &c), AK_OK);
  CpuPtr cpu(c);
  kv_seq_id_t s;
  ASSERT_EQ(kv_seq_create(pool.get(), &s), AK_OK);
  run_step(pool.get(), cpu.get(), {s}, {20});
  std::vector<int32_t> seqs{s}, one{1};
  kv_batch_t b{1, seqs.data(), one.data()};
  ASSERT_EQ(kv_step_begin(pool.get(), &b), AK_OK);
  kn_attn_args_t a{};
  ASSERT_EQ(kv_layer_view(pool.get(), 0, nullptr, 3, &a), AK_OK);
  ASSERT_EQ(a.kv.dtype, KN_F16);
  for (int j = 0; j < 20; j++) {
    int page = a.kv.indices[j / 16];
    const uint16_t *k = (const uint16_t *)a.kv.k_base;
    float got = ak_f16_to_f32(k[page * a.kv.page_stride_elems + 2 * a.kv.head_stride_elems + (j % 16) * 8 + 3]);
    float want = kv_value(s, 0, 2, j, 3, 0);
    EXPECT_NEAR(got, want, std::abs(want) * 1e-3f);
  }
  kv_step_abort(pool.get());
}

// A pool over the caller's page memory (the CUDA backend's device pages) only keeps
// tables: the caller stores K/V at the slots it names, and views point into that memory.
TEST(KvPool, CallerPageMemoryNamesSlotsAndIsNeverTouched) {
  int64_t before = ak_alloc_outstanding_bytes(AK_MEM_HOST);
  {
    kv_pool_params_t p = small_params(4, 32, KN_F16);
    std::vector<uint8_t> mem(kv_page_bytes(&p) * 32, 0xAB);
    p.page_memory = mem.data();
    PoolPtr pool = make_pool(p);
    kv_seq_id_t a, b;
    ASSERT_EQ(kv_seq_create(pool.get(), &a), AK_OK);
    ASSERT_EQ(kv_seq_create(pool.get(), &b), AK_OK);
    std::vector<int32_t> seqs{a, b}, n_new{6, 3};
    kv_batch_t batch{2, seqs.data(), n_new.data()};
    ASSERT_EQ(kv_step_begin(pool.get(), &batch), AK_OK);
    std::vector<float> kv(9 * 3 * 8, 1.f);
    EXPECT_EQ(kv_layer_append(pool.get(), nullptr, 0, kv.data(), kv.data()), AK_ERR_INVALID_ARG);
    EXPECT_NE(std::string(kv_pool_errmsg(pool.get())).find("kv_layer_slots"), std::string::npos);
    const int32_t *page = nullptr, *slot = nullptr;
    ASSERT_EQ(kv_layer_slots(pool.get(), 1, &page, &slot), AK_OK);
    kn_attn_args_t args{};
    ASSERT_EQ(kv_layer_view(pool.get(), 1, nullptr, 0, &args), AK_OK);
    EXPECT_EQ(args.kv.k_base, mem.data());
    // Sequence a's 6 tokens fill its first page and start a second; b's 3 share none.
    for (int t = 0; t < 9; t++) {
      int s = t < 6 ? 0 : 1, j = t < 6 ? t : t - 6;
      EXPECT_EQ(slot[t], j % 4);
      EXPECT_EQ(page[t], args.kv.indices[args.kv.indptr[s] + j / 4]);
    }
    ASSERT_EQ(kv_step_end(pool.get()), AK_OK);
    for (uint8_t byte : mem) ASSERT_EQ(byte, 0xAB);
    EXPECT_EQ(kv_seq_release(pool.get(), a), AK_OK);
    EXPECT_EQ(kv_seq_release(pool.get(), b), AK_OK);
    // Policies that read page bytes need page_ops to reach them.
    kv_pool_params_t q = p;
    q.policy = KV_POLICY_ARKVALE;
    q.budget_tokens = 16;
    kv_pool_t *bad = nullptr;
    ak_err_t err;
    EXPECT_EQ(kv_pool_create(&q, &err, &bad), AK_ERR_INVALID_ARG);
    EXPECT_NE(std::string(err.msg).find("needs page_ops"), std::string::npos) << err.msg;
  }
  EXPECT_EQ(ak_alloc_outstanding_bytes(AK_MEM_HOST), before);
}
