// Tests for kvpool/kv_token.c: the token policies h2o and tova and prompt-attention
// tracking, through the public API. A double-precision reference replays each policy
// (attention scores, drops, compaction) and every view of a budgeted layer must hold
// exactly the reference's surviving positions with the K and V stored for them.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <memory>
#include <set>
#include <string>
#include <vector>

extern "C" {
#include "ak_alloc.h"
#include "ak_quant.h"
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

constexpr int kKvHeads = 2, kHeads = 4, kHeadDim = 8;

kv_pool_params_t token_params(kv_policy_t policy, int32_t page_tokens, int32_t budget, kn_dtype_t dt) {
  kv_pool_params_t p = kv_pool_params_default();
  p.n_layers = 2;
  p.n_full_layers = 1;  // layer 0 full, layer 1 budgeted
  p.n_kv_heads = kKvHeads;
  p.n_heads = kHeads;
  p.head_dim = kHeadDim;
  p.page_tokens = page_tokens;
  p.n_pages = 600;
  p.max_seqs = 4;
  p.max_seq_tokens = 128;
  p.dtype = dt;
  p.policy = policy;
  p.budget_tokens = budget;
  p.check_every_step = 1;
  return p;
}

PoolPtr make_pool(const kv_pool_params_t &p) {
  kv_pool_t *pool = nullptr;
  ak_err_t err;
  EXPECT_EQ(kv_pool_create(&p, &err, &pool), AK_OK) << err.msg;
  return PoolPtr(pool);
}

CpuPtr make_cpu() {
  kn_cpu_t *c = nullptr;
  EXPECT_EQ(kn_cpu_create(1, nullptr, &c), AK_OK);
  return CpuPtr(c);
}

// A pseudo-random value in [-1, 1] from a few integers (deterministic).
float hash_unit(uint32_t a, uint32_t b, uint32_t c, uint32_t d, uint32_t salt) {
  uint32_t x = a * 0x9E3779B1u ^ b * 0x85EBCA77u ^ c * 0xC2B2AE3Du ^ d * 0x27D4EB2Fu ^ salt * 0x165667B1u;
  x ^= x >> 15;
  x *= 0x2C1B3C6Du;
  x ^= x >> 12;
  x *= 0x297A2D39u;
  x ^= x >> 15;
  return (float)(x >> 8) / 8388608.0f - 1.0f;
}

float round_dtype(float x, kn_dtype_t dt) { return dt == KN_F16 ? ak_f16_to_f32(ak_f32_to_f16(x)) : x; }

// What a test stores and asks: K and Q per (sequence, position, head, dim); V tags the
// position (pos * 4 + head, exact in f16 below 512 tokens).
struct Data {
  kn_dtype_t dt = KN_F32;
  // 0: random keys and queries; 1: "heavy" keys at a few positions that every query
  // (all ones on dim 0) attends to, zero keys elsewhere.
  int mode = 0;
  std::set<int> heavy;
  float key(int seq, int pos, int h, int d) const {
    float x;
    if (mode == 0) {
      x = 3.0f * hash_unit(seq, pos, h, d, 1);
    } else {
      x = (d == 0 && heavy.count(pos)) ? 12.0f : 0.0f;
    }
    return round_dtype(x, dt);
  }
  float query(int seq, int pos, int h, int d) const {
    if (mode == 0) return 1.5f * hash_unit(seq, pos, h, d, 2);
    return d == 0 ? 1.0f : 0.0f;
  }
  float val(int pos, int h) const { return (float)(pos * 4 + h); }
};

// The reference policy for one sequence's budgeted layer.
struct RefTok {
  int pos;
  double acc, last;
};
struct RefSeq {
  int id = 0;
  int n_tokens = 0;
  std::vector<RefTok> res;
  uint64_t drops = 0;
};

struct Ref {
  kv_policy_t policy;
  int budget;
  const Data *data;
  bool check_gaps = true;  // random data: a drop boundary must not be a near tie

  void drop(RefSeq &s, int64_t keep) {
    if (keep < 0) keep = 0;
    int64_t n = (int64_t)s.res.size();
    if (n <= keep) return;
    std::vector<RefTok> v = s.res;
    std::set<int> prot;
    if (policy == KV_POLICY_H2O) {
      int64_t n_recent = std::min<int64_t>(budget / 2, keep);
      std::vector<int> pos;
      for (auto &t : v) pos.push_back(t.pos);
      std::sort(pos.rbegin(), pos.rend());
      for (int64_t i = 0; i < n_recent; i++) prot.insert(pos[i]);
    }
    auto score = [&](const RefTok &t) { return policy == KV_POLICY_TOVA ? t.last : t.acc; };
    std::sort(v.begin(), v.end(), [&](const RefTok &a, const RefTok &b) {
      bool pa = prot.count(a.pos) > 0, pb = prot.count(b.pos) > 0;
      if (pa != pb) return pb;
      if (score(a) != score(b)) return score(a) < score(b);
      return a.pos < b.pos;
    });
    int64_t n_drop = n - keep;
    if (check_gaps && n_drop < n && !prot.count(v[n_drop].pos)) {
      double gap = score(v[n_drop]) - score(v[n_drop - 1]);
      EXPECT_GT(gap, 1e-5) << "test data: positions " << v[n_drop - 1].pos << " and " << v[n_drop].pos
                           << " nearly tie";
    }
    s.res.assign(v.begin() + n_drop, v.end());
    s.drops += (uint64_t)n_drop;
  }

  // Appends n_new tokens and scores them as kv_token_observe does.
  void observe(RefSeq &s, int n_new) {
    for (int j = 0; j < n_new; j++) s.res.push_back({s.n_tokens + j, 0.0, 0.0});
    size_t n_old = s.res.size() - n_new;
    for (int j = 0; j < n_new; j++) {
      size_t n_vis = n_old + j + 1;
      int qpos = s.n_tokens + j;
      std::vector<double> avg(n_vis, 0.0);
      for (int h = 0; h < kHeads; h++) {
        int kh = h / (kHeads / kKvHeads);
        std::vector<double> lg(n_vis);
        double mx = -1e300;
        for (size_t i = 0; i < n_vis; i++) {
          double dot = 0;
          for (int d = 0; d < kHeadDim; d++)
            dot += (double)data->query(s.id, qpos, h, d) * data->key(s.id, s.res[i].pos, kh, d);
          lg[i] = dot / std::sqrt((double)kHeadDim);
          mx = std::max(mx, lg[i]);
        }
        double z = 0;
        for (auto &x : lg) z += (x = std::exp(x - mx));
        for (size_t i = 0; i < n_vis; i++) avg[i] += lg[i] / z / kHeads;
      }
      for (size_t i = 0; i < n_vis; i++) {
        s.res[i].acc += avg[i];
        if (j == n_new - 1) s.res[i].last = avg[i];
      }
    }
    s.n_tokens += n_new;
  }

  std::vector<int> positions(const RefSeq &s) const {
    std::vector<int> p;
    for (auto &t : s.res) p.push_back(t.pos);
    std::sort(p.begin(), p.end());
    return p;
  }
};

float read_elem(const kn_paged_kv_t &kv, int32_t page, int h, int slot, int d, int is_v) {
  int64_t off = (int64_t)page * kv.page_stride_elems + h * kv.head_stride_elems + (int64_t)slot * kHeadDim + d;
  const void *base = is_v ? kv.v_base : kv.k_base;
  if (kv.dtype == KN_F16) return ak_f16_to_f32(((const uint16_t *)base)[off]);
  return ((const float *)base)[off];
}

// The positions of view sequence i's tokens [0, n) (from V), checking every K and V
// element against what the data stored for that position.
std::vector<int> view_positions(const kn_paged_kv_t &kv, int i, int64_t n, int seq, const Data &data) {
  std::vector<int> out;
  for (int64_t j = 0; j < n; j++) {
    int32_t page = kv.indices[kv.indptr[i] + j / kv.page_tokens];
    int slot = (int)(j % kv.page_tokens);
    int pos = (int)read_elem(kv, page, 0, slot, 0, 1) / 4;
    for (int h = 0; h < kKvHeads; h++)
      for (int d = 0; d < kHeadDim; d++) {
        EXPECT_EQ(read_elem(kv, page, h, slot, d, 1), data.val(pos, h)) << "view token " << j;
        EXPECT_EQ(read_elem(kv, page, h, slot, d, 0), data.key(seq, pos, h, d)) << "pos " << pos << " h " << h;
      }
    out.push_back(pos);
  }
  return out;
}

// One step: the reference's decode drops, begin, append + view for both layers
// (checking the budgeted layer's view against the reference), end, reference scoring.
void run_step(kv_pool_t *pool, kn_cpu_t *cpu, Ref &ref, std::vector<RefSeq *> seqs, const std::vector<int32_t> &n_new) {
  const kv_pool_params_t *p = kv_pool_params(pool);
  std::vector<int32_t> ids;
  for (size_t i = 0; i < seqs.size(); i++) {
    ids.push_back(seqs[i]->id);
    if (n_new[i] == 1) ref.drop(*seqs[i], std::min<int64_t>((int64_t)seqs[i]->res.size(), ref.budget - 1));
  }
  kv_batch_t b{(int32_t)ids.size(), ids.data(), n_new.data()};
  ASSERT_EQ(kv_step_begin(pool, &b), AK_OK) << kv_pool_errmsg(pool);
  int64_t n_tok = 0;
  const int32_t *pos = kv_step_positions(pool, &n_tok);
  std::vector<int> tok_seq(n_tok);
  std::vector<float> k(n_tok * kKvHeads * kHeadDim), v(k.size()), q(n_tok * kHeads * kHeadDim);
  int64_t t = 0;
  for (size_t i = 0; i < seqs.size(); i++)
    for (int j = 0; j < n_new[i]; j++, t++) {
      ASSERT_EQ(pos[t], seqs[i]->n_tokens + j);
      tok_seq[t] = (int)i;
      for (int h = 0; h < kKvHeads; h++)
        for (int d = 0; d < kHeadDim; d++) {
          k[(t * kKvHeads + h) * kHeadDim + d] = ref.data->key(seqs[i]->id, pos[t], h, d);
          v[(t * kKvHeads + h) * kHeadDim + d] = ref.data->val(pos[t], h);
        }
      for (int h = 0; h < kHeads; h++)
        for (int d = 0; d < kHeadDim; d++) q[(t * kHeads + h) * kHeadDim + d] = ref.data->query(seqs[i]->id, pos[t], h, d);
    }
  for (int l = 0; l < p->n_layers; l++) {
    ASSERT_EQ(kv_layer_append(pool, cpu, l, k.data(), v.data()), AK_OK) << kv_pool_errmsg(pool);
    kn_attn_args_t a{};
    ASSERT_EQ(kv_layer_view(pool, l, q.data(), kHeads, &a), AK_OK) << kv_pool_errmsg(pool);
    ASSERT_EQ(a.n_tok, n_tok);
    t = 0;
    for (size_t i = 0; i < seqs.size(); i++) {
      RefSeq &s = *seqs[i];
      int64_t last = t + n_new[i] - 1;
      ASSERT_EQ(a.tok_seq_idx[last], (int32_t)i);
      std::vector<int> got = view_positions(a.kv, (int)i, a.tok_kv_len[last], s.id, *ref.data);
      std::vector<int> want;
      if (l == 0) {
        for (int j = 0; j < s.n_tokens + n_new[i]; j++) want.push_back(j);
      } else {
        want = ref.positions(s);
        for (int j = 0; j < n_new[i]; j++) want.push_back(s.n_tokens + j);
      }
      // The new tokens come last, in order, and the causal lengths step by one.
      for (int j = 0; j < n_new[i]; j++) {
        EXPECT_EQ(got[got.size() - n_new[i] + j], s.n_tokens + j);
        EXPECT_EQ(a.tok_kv_len[t + j], a.tok_kv_len[last] - (n_new[i] - 1 - j));
      }
      std::sort(got.begin(), got.end());
      EXPECT_EQ(got, want) << "layer " << l << " seq " << s.id << " step at " << s.n_tokens;
      t += n_new[i];
    }
  }
  ASSERT_EQ(kv_step_end(pool), AK_OK) << kv_pool_errmsg(pool);
  for (size_t i = 0; i < seqs.size(); i++) ref.observe(*seqs[i], n_new[i]);
}

void expect_stats(kv_pool_t *pool, const RefSeq &s) {
  kv_seq_stats_t st;
  ASSERT_EQ(kv_seq_get_stats(pool, s.id, &st), AK_OK);
  EXPECT_EQ(st.n_tokens, s.n_tokens);
  EXPECT_EQ(st.n_tokens_resident, s.n_tokens + (int64_t)s.res.size());  // full layer 0 + layer 1
  EXPECT_EQ(st.work.drops, s.drops);
  EXPECT_EQ(st.work.evictions, s.drops);
}

void compact(kv_pool_t *pool, Ref &ref, RefSeq &s) {
  ASSERT_EQ(kv_seq_compact(pool, s.id), AK_OK) << kv_pool_errmsg(pool);
  ref.drop(s, std::min<int64_t>((int64_t)s.res.size(), ref.budget));
  ASSERT_EQ(kv_pool_check(pool), AK_OK) << kv_pool_errmsg(pool);
}

struct Case {
  kv_policy_t policy;
  kn_dtype_t dt;
  int32_t page_tokens;
};
std::string case_name(const testing::TestParamInfo<Case> &info) {
  return std::string(kv_policy_name(info.param.policy)) + (info.param.dt == KN_F16 ? "_f16" : "_f32") + "_pt" +
         std::to_string(info.param.page_tokens);
}
class KvToken : public testing::TestWithParam<Case> {};
}  // namespace

// Mixed batch (prompts of 13, 1 and 24 tokens, one of them in two chunks), compaction,
// then decode steps: every view matches the reference, the budget holds after each
// compaction and decode step, h2o keeps the recent half, and release frees everything.
TEST_P(KvToken, MatchesReferenceOnMixedBatch) {
  const Case c = GetParam();
  const int budget = 10;
  int64_t before = ak_alloc_outstanding_bytes(AK_MEM_HOST);
  {
    PoolPtr pool = make_pool(token_params(c.policy, c.page_tokens, budget, c.dt));
    CpuPtr cpu = make_cpu();
    Data data;
    data.dt = c.dt;
    Ref ref{c.policy, budget, &data};
    std::vector<RefSeq> s(3);
    for (auto &x : s) ASSERT_EQ(kv_seq_create(pool.get(), &x.id), AK_OK);
    run_step(pool.get(), cpu.get(), ref, {&s[0], &s[1], &s[2]}, {13, 1, 16});
    run_step(pool.get(), cpu.get(), ref, {&s[2]}, {8});  // the second prompt chunk
    for (auto &x : s) compact(pool.get(), ref, x);
    for (auto &x : s) {
      EXPECT_LE((int64_t)x.res.size(), budget);
      expect_stats(pool.get(), x);
    }
    for (int step = 0; step < 12; step++) {
      run_step(pool.get(), cpu.get(), ref, {&s[0], &s[1], &s[2]}, {1, 1, 1});
      for (auto &x : s) {
        expect_stats(pool.get(), x);
        EXPECT_LE((int64_t)x.res.size(), budget);
        if (c.policy == KV_POLICY_H2O) {  // the newest budget/2 positions are all resident
          std::vector<int> p = ref.positions(x);
          for (int j = 1; j <= std::min(budget / 2, x.n_tokens); j++)
            EXPECT_TRUE(std::binary_search(p.begin(), p.end(), x.n_tokens - j)) << "recent " << x.n_tokens - j;
        }
      }
    }
    for (auto &x : s) ASSERT_EQ(kv_seq_release(pool.get(), x.id), AK_OK);
    kv_pool_stats_t st;
    kv_pool_get_stats(pool.get(), &st);
    EXPECT_EQ(st.n_pages_used, 0);
    EXPECT_EQ(st.work.drops, s[0].drops + s[1].drops + s[2].drops);
    ASSERT_EQ(kv_pool_check(pool.get()), AK_OK) << kv_pool_errmsg(pool.get());
  }
  EXPECT_EQ(ak_alloc_outstanding_bytes(AK_MEM_HOST), before);
}

INSTANTIATE_TEST_SUITE_P(Policies, KvToken,
                         testing::Values(Case{KV_POLICY_H2O, KN_F32, 4}, Case{KV_POLICY_H2O, KN_F16, 4},
                                         Case{KV_POLICY_H2O, KN_F32, 1}, Case{KV_POLICY_H2O, KN_F32, 3},
                                         Case{KV_POLICY_TOVA, KN_F32, 4}, Case{KV_POLICY_TOVA, KN_F16, 4},
                                         Case{KV_POLICY_TOVA, KN_F32, 1}, Case{KV_POLICY_TOVA, KN_F32, 3}),
                         case_name);

// Hand-chosen: keys at positions 2 and 9 are the only ones the queries attend to.
// h2o keeps them, the recent half (20..23) and the non-heavy tokens seen by the most
// queries (0, 1); tova keeps them and, among the tied rest, the newest.
TEST(KvTokenHeavy, HeavyHittersSurvive) {
  for (kv_policy_t policy : {KV_POLICY_H2O, KV_POLICY_TOVA}) {
    PoolPtr pool = make_pool(token_params(policy, 4, 8, KN_F32));
    CpuPtr cpu = make_cpu();
    Data data;
    data.mode = 1;
    data.heavy = {2, 9};
    Ref ref{policy, 8, &data, /*check_gaps=*/false};
    RefSeq s;
    ASSERT_EQ(kv_seq_create(pool.get(), &s.id), AK_OK);
    run_step(pool.get(), cpu.get(), ref, {&s}, {24});
    compact(pool.get(), ref, s);
    std::vector<int> want = policy == KV_POLICY_H2O ? std::vector<int>{0, 1, 2, 9, 20, 21, 22, 23}
                                                    : std::vector<int>{2, 9, 18, 19, 20, 21, 22, 23};
    EXPECT_EQ(ref.positions(s), want) << kv_policy_name(policy);
    for (int step = 0; step < 10; step++) {
      run_step(pool.get(), cpu.get(), ref, {&s}, {1});  // checks the view against the reference
      std::vector<int> p = ref.positions(s);
      EXPECT_TRUE(std::binary_search(p.begin(), p.end(), 2));
      EXPECT_TRUE(std::binary_search(p.begin(), p.end(), 9));
      EXPECT_EQ((int)p.size(), 8);
      if (policy == KV_POLICY_TOVA) {
        std::vector<int> tova{2, 9};
        for (int j = s.n_tokens - 6; j < s.n_tokens; j++) tova.push_back(j);
        EXPECT_EQ(p, tova);
      }
    }
    expect_stats(pool.get(), s);
  }
}

// A decode step without compaction first brings the prompt down to budget - 1 before
// the new token arrives; a layer within budget drops nothing.
TEST(KvTokenHeavy, FirstDecodeStepCompacts) {
  PoolPtr pool = make_pool(token_params(KV_POLICY_TOVA, 4, 12, KN_F32));
  CpuPtr cpu = make_cpu();
  Data data;
  Ref ref{KV_POLICY_TOVA, 12, &data};
  RefSeq a, b;
  ASSERT_EQ(kv_seq_create(pool.get(), &a.id), AK_OK);
  ASSERT_EQ(kv_seq_create(pool.get(), &b.id), AK_OK);
  run_step(pool.get(), cpu.get(), ref, {&a, &b}, {30, 5});
  run_step(pool.get(), cpu.get(), ref, {&a, &b}, {1, 1});
  EXPECT_EQ(a.res.size(), 12u);
  EXPECT_EQ(a.drops, 19u);
  EXPECT_EQ(b.drops, 0u);
  expect_stats(pool.get(), a);
  expect_stats(pool.get(), b);
  kv_seq_stats_t st;
  ASSERT_EQ(kv_seq_get_stats(pool.get(), a.id, &st), AK_OK);
  EXPECT_EQ(st.n_pages_resident, kv_pages_for_tokens(31, 4) + kv_pages_for_tokens(12, 4));
}

// A long prompt compacted in one go (thousands of tokens dropped at once).
TEST(KvTokenHeavy, LongPromptCompaction) {
  kv_pool_params_t p = token_params(KV_POLICY_H2O, 16, 64, KN_F32);
  p.max_seq_tokens = 2048;
  p.n_pages = 400;
  PoolPtr pool = make_pool(p);
  CpuPtr cpu = make_cpu();
  Data data;
  Ref ref{KV_POLICY_H2O, 64, &data, /*check_gaps=*/false};
  RefSeq s;
  ASSERT_EQ(kv_seq_create(pool.get(), &s.id), AK_OK);
  run_step(pool.get(), cpu.get(), ref, {&s}, {1000});
  run_step(pool.get(), cpu.get(), ref, {&s}, {1000});
  ASSERT_EQ(kv_seq_compact(pool.get(), s.id), AK_OK);
  ASSERT_EQ(kv_pool_check(pool.get()), AK_OK) << kv_pool_errmsg(pool.get());
  kv_seq_stats_t st;
  ASSERT_EQ(kv_seq_get_stats(pool.get(), s.id, &st), AK_OK);
  EXPECT_EQ(st.n_tokens_resident, 2000 + 64);
  EXPECT_EQ(st.work.drops, 2000u - 64u);
  EXPECT_EQ(st.n_pages_resident, kv_pages_for_tokens(2000, 16) + 4);
  // The survivors are the reference's (the recent half included), checked by a decode
  // step's view.
  ref.drop(s, 64);
  run_step(pool.get(), cpu.get(), ref, {&s}, {1});
  ASSERT_EQ(kv_seq_release(pool.get(), s.id), AK_OK);
}

// A full pool tracking prompt attention seeds an h2o branch: the branch keeps what
// the reference's h2o compaction of the same prompt keeps.
TEST(KvTokenHeavy, TrackedPromptSeedsBranch) {
  kv_pool_params_t sp = token_params(KV_POLICY_FULL, 4, 0, KN_F32);
  sp.track_token_attn = 1;
  PoolPtr src = make_pool(sp);
  PoolPtr dst = make_pool(token_params(KV_POLICY_H2O, 4, 8, KN_F32));
  CpuPtr cpu = make_cpu();
  Data data;
  Ref ref{KV_POLICY_H2O, 8, &data};
  RefSeq s;
  ASSERT_EQ(kv_seq_create(src.get(), &s.id), AK_OK);
  run_step(src.get(), cpu.get(), ref, {&s}, {11});  // layer 1 of a full pool: nothing dropped
  run_step(src.get(), cpu.get(), ref, {&s}, {9});
  kv_seq_id_t d = -1;
  ASSERT_EQ(kv_seq_branch(dst.get(), src.get(), cpu.get(), s.id, &d), AK_OK) << kv_pool_errmsg(dst.get());
  ref.drop(s, 8);  // what the branch's compaction keeps
  // Decode on the branch: its view holds the reference's survivors of the prompt
  // attention the source tracked.
  s.id = d;
  s.drops = 0;
  run_step(dst.get(), cpu.get(), ref, {&s}, {1});
  run_step(dst.get(), cpu.get(), ref, {&s}, {1});
}
