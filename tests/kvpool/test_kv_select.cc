// Tests for kvpool/kv_select.c through the public API: the page policies arkvale,
// streaming and quest. Keys are chosen by hand so that every selection is known:
//
//   key dims 0 and 1   a score per page ("score dims"): constant over a page's tokens,
//                      so every cuboid digest bounds it exactly and a query e_a scores
//                      the page with its dim-a value
//   key dims 2..7      an identifier 1000*seq + 100*layer + 10*head + d + pos/1024: the
//                      fraction names the position, so a view's page can be mapped back
//                      to its logical page and compared token for token
//   queries            every head e_a (a = the step's query dim)
//
// A small model of the arkvale rules (RefArk) predicts residency after each step; the
// views (KV_ATTEND_RESIDENT lists every resident page) are compared with it.
#include <gtest/gtest.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <functional>
#include <initializer_list>
#include <map>
#include <memory>
#include <random>
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

constexpr int kLayers = 3, kKvHeads = 2, kHeads = 4, kHeadDim = 8;
constexpr int kRow = kKvHeads * kHeadDim;  // floats of one token's K (or V) in one layer

// 3 layers (layer 0 full), 2 KV heads, 4 query heads, head_dim 8, 1 sink, 2 window pages.
kv_pool_params_t sel_params(kv_policy_t policy, int32_t page_tokens, int32_t budget_tokens, int64_t n_pages,
                            kn_dtype_t dt = KN_F32) {
  kv_pool_params_t p = kv_pool_params_default();
  p.n_layers = kLayers;
  p.n_kv_heads = kKvHeads;
  p.n_heads = kHeads;
  p.head_dim = kHeadDim;
  p.page_tokens = page_tokens;
  p.n_pages = n_pages;
  p.max_seqs = 8;
  p.max_seq_tokens = 1000;
  p.dtype = dt;
  p.policy = policy;
  p.budget_tokens = budget_tokens;
  p.n_full_layers = 1;
  p.n_sink_pages = 1;
  p.n_window_pages = 2;
  p.check_every_step = 1;
  return p;
}

// The arkvale rules for one budgeted layer, over logical pages, for keys whose pages
// score `score(j)` under the current query (distinct scores: no ties).
struct RefArk {
  int ns = 1, nw = 2, budget = 0, k = 0;
  int n_pages = 0;
  std::set<int> res;
  using Score = std::function<float(int)>;

  static bool above(const Score &s, int a, int b) { return s(a) > s(b) || (s(a) == s(b) && a > b); }
  // Keeps the best of the resident middle of a layer that will have n_after pages.
  void evict(int n_after, const Score &s) {
    int after = (int)res.size() + (n_after - n_pages);
    int n_evict = after - std::min(n_after, budget);
    if (n_evict <= 0) return;
    std::vector<int> cand;
    for (int j : res)
      if (j >= ns && j < n_after - nw && j < n_pages) cand.push_back(j);
    std::sort(cand.begin(), cand.end(), [&](int a, int b) { return above(s, a, b); });
    for (int i = 0; i < n_evict; i++) res.erase(cand[cand.size() - 1 - i]);
  }
  void grow(int n_after) {
    for (int j = n_pages; j < n_after; j++) res.insert(j);
    n_pages = n_after;
  }
  // One step of n_new tokens on a sequence of n_tok tokens (page_tokens pt), up to the view.
  void begin(int64_t n_tok, int n_new, int pt, const Score &last_q) {
    int n_after = (int)((n_tok + n_new + pt - 1) / pt);
    if (n_new == 1) evict(n_after, last_q);
    grow(n_after);
  }
  void compact(const Score &last_q) { evict(n_pages, last_q); }
  // The view of a decode token: recalls the missing top-k into the slots of the lowest
  // ranked resident middle pages; returns the pages attended (topk_only: sinks + top-k
  // + window) and adds the recalls to *n_recalls.
  std::set<int> view(const Score &s, bool topk_only, int *n_recalls) {
    if (n_pages <= budget) return res;
    std::vector<int> cand;
    for (int j = ns; j < n_pages - nw; j++) cand.push_back(j);
    std::sort(cand.begin(), cand.end(), [&](int a, int b) { return above(s, a, b); });
    std::set<int> top(cand.begin(), cand.begin() + std::min<size_t>(k, cand.size()));
    std::vector<int> others;
    for (int j : cand)
      if (res.count(j) && !top.count(j)) others.push_back(j);  // best first
    for (int j : top)
      if (!res.count(j)) {
        res.erase(others.back());
        others.pop_back();
        res.insert(j);
        ++*n_recalls;
      }
    if (!topk_only) return res;
    std::set<int> out = top;
    for (int j = 0; j < ns; j++) out.insert(j);
    for (int j = n_pages - nw; j < n_pages; j++) out.insert(j);
    return out;
  }
};

// A pool, the K/V it was given, and step helpers.
class Harness {
 public:
  kv_pool_params_t p;
  PoolPtr pool;
  CpuPtr cpu;
  // per layer, per sequence: every appended row, [n_tok][n_kv_heads][head_dim] f32
  std::vector<std::map<int, std::vector<float>>> K, V;
  // the score of dim a at (seq, layer, pos); default: tab[seq][a][pos / score_block] (0 past it)
  std::map<int, std::array<std::vector<float>, 2>> tab;
  int score_block;
  std::function<float(int, int, int, int)> score_fn;

  explicit Harness(const kv_pool_params_t &params) : p(params), K(params.n_layers), V(params.n_layers) {
    kv_pool_t *pl = nullptr;
    ak_err_t err;
    EXPECT_EQ(kv_pool_create(&p, &err, &pl), AK_OK) << err.msg;
    pool.reset(pl);
    kn_cpu_t *c = nullptr;
    EXPECT_EQ(kn_cpu_create(1, nullptr, &c), AK_OK);
    cpu.reset(c);
    score_block = p.page_tokens;
    score_fn = [this](int seq, int layer, int pos, int a) {
      (void)layer;
      auto it = tab.find(seq);
      if (it == tab.end()) return 0.f;
      const std::vector<float> &t = it->second[a];
      size_t j = (size_t)(pos / score_block);
      return j < t.size() ? t[j] : 0.f;
    };
  }
  kv_pool_t *get() const { return pool.get(); }

  kv_seq_id_t new_seq() {
    kv_seq_id_t s = -1;
    EXPECT_EQ(kv_seq_create(pool.get(), &s), AK_OK);
    return s;
  }
  float key(int seq, int l, int h, int pos, int d) const {
    if (d < 2) return score_fn(seq, l, pos, d);
    return (float)(1000 * seq + 100 * l + 10 * h + d) + (float)pos / 1024.f;
  }
  static float val(int seq, int l, int h, int pos, int d) {
    return -((float)(1000 * seq + 100 * l + 10 * h + d) + (float)pos / 1024.f) - 0.5f;
  }
  // Score of logical page j of seq (layer 1) under query dim a, as the digest sees it.
  RefArk::Score page_score(int seq, int a) const {
    return [this, seq, a](int j) { return score_fn(seq, 1, j * p.page_tokens, a); };
  }

  struct Tok {
    kv_seq_id_t seq;
    int32_t n_new;
    int qdim;  // the step's queries are e_qdim on every head
  };
  using ViewFn = std::function<void(int32_t layer, const kn_attn_args_t &a)>;

  std::vector<Tok> cur;
  std::vector<int32_t> cur_seqs, cur_n;

  ak_status_t begin(const std::vector<Tok> &toks) {
    cur = toks;
    cur_seqs.clear();
    cur_n.clear();
    for (const Tok &t : toks) {
      cur_seqs.push_back(t.seq);
      cur_n.push_back(t.n_new);
    }
    kv_batch_t b{(int32_t)toks.size(), cur_seqs.data(), cur_n.data()};
    return kv_step_begin(pool.get(), &b);
  }
  // Appends every layer's K/V (recording them) and builds its view.
  void layers(const ViewFn &fn) {
    int64_t n_tok = 0;
    const int32_t *pos = kv_step_positions(pool.get(), &n_tok);
    for (int l = 0; l < p.n_layers; l++) {
      std::vector<float> k(n_tok * kRow), v(n_tok * kRow), q(n_tok * kHeads * kHeadDim, 0.f);
      int64_t t = 0;
      for (const Tok &tk : cur)
        for (int j = 0; j < tk.n_new; j++, t++) {
          for (int h = 0; h < kKvHeads; h++)
            for (int d = 0; d < kHeadDim; d++) {
              k[(t * kKvHeads + h) * kHeadDim + d] = key(tk.seq, l, h, pos[t], d);
              v[(t * kKvHeads + h) * kHeadDim + d] = val(tk.seq, l, h, pos[t], d);
            }
          for (int h = 0; h < kHeads; h++) q[(t * kHeads + h) * kHeadDim + tk.qdim] = 1.f;
        }
      ASSERT_EQ(kv_layer_append(pool.get(), cpu.get(), l, k.data(), v.data()), AK_OK) << kv_pool_errmsg(pool.get());
      t = 0;
      for (const Tok &tk : cur) {
        std::vector<float> &kr = K[l][tk.seq], &vr = V[l][tk.seq];
        ASSERT_EQ((int64_t)kr.size(), (int64_t)pos[t] * kRow);
        kr.insert(kr.end(), k.begin() + t * kRow, k.begin() + (t + tk.n_new) * kRow);
        vr.insert(vr.end(), v.begin() + t * kRow, v.begin() + (t + tk.n_new) * kRow);
        t += tk.n_new;
      }
      kn_attn_args_t a{};
      ASSERT_EQ(kv_layer_view(pool.get(), l, q.data(), kHeads, &a), AK_OK) << kv_pool_errmsg(pool.get());
      EXPECT_EQ(a.n_tok, n_tok);
      if (fn) fn(l, a);
    }
  }
  ak_status_t end() { return kv_step_end(pool.get()); }
  // Forgets the rows of an aborted step.
  void abort() {
    kv_step_abort(pool.get());
    for (int l = 0; l < p.n_layers; l++)
      for (const Tok &t : cur) {
        size_t n = (size_t)kv_seq_n_tokens(pool.get(), t.seq) * kRow;
        K[l][t.seq].resize(n);
        V[l][t.seq].resize(n);
      }
  }
  void step(const std::vector<Tok> &toks, const ViewFn &fn = nullptr) {
    ASSERT_EQ(begin(toks), AK_OK) << kv_pool_errmsg(pool.get());
    ASSERT_NO_FATAL_FAILURE(layers(fn));
    ASSERT_EQ(end(), AK_OK) << kv_pool_errmsg(pool.get());
    ASSERT_EQ(kv_pool_check(pool.get()), AK_OK) << kv_pool_errmsg(pool.get());
  }

  // The logical pages a view lists for view sequence i (f32 pools), checking every
  // listed token's K and V against what was appended, the last page's length, and the
  // tok_kv_len of the sequence's tokens (the last one sees every listed token).
  std::vector<int> listed(const kn_attn_args_t &a, int i, kv_seq_id_t seq, int layer) const {
    std::vector<int> out;
    const kn_paged_kv_t &kv = a.kv;
    int pt = kv.page_tokens;
    int n = kv.indptr[i + 1] - kv.indptr[i];
    const std::vector<float> &kr = K[layer].at(seq), &vr = V[layer].at(seq);
    const float *kb = (const float *)kv.k_base, *vb = (const float *)kv.v_base;
    for (int pi = 0; pi < n; pi++) {
      int64_t pg = kv.indices[kv.indptr[i] + pi];
      float id = kb[pg * kv.page_stride_elems + 2];  // head 0, slot 0, d 2
      int pos0 = (int)std::lround((id - std::floor(id)) * 1024.f);
      EXPECT_EQ(pos0 % pt, 0) << "physical page " << pg;
      out.push_back(pos0 / pt);
      int n_slots = pi == n - 1 ? kv.last_page_len[i] : pt;
      for (int t = 0; t < n_slots; t++) {
        int pos = pos0 + t;
        if ((size_t)(pos + 1) * kRow > kr.size()) {
          ADD_FAILURE() << "layer " << layer << " lists position " << pos << " past the sequence";
          return out;
        }
        for (int h = 0; h < kKvHeads; h++)
          for (int d = 0; d < kHeadDim; d++) {
            int64_t off = pg * kv.page_stride_elems + h * kv.head_stride_elems + t * kHeadDim + d;
            float want_k = kr[((size_t)pos * kKvHeads + h) * kHeadDim + d];
            float want_v = vr[((size_t)pos * kKvHeads + h) * kHeadDim + d];
            if (kb[off] != want_k || vb[off] != want_v) {
              ADD_FAILURE() << "layer " << layer << " seq " << seq << " pos " << pos << " h " << h << " d " << d
                            << ": view K/V " << kb[off] << "/" << vb[off] << ", appended " << want_k << "/"
                            << want_v;
              return out;
            }
          }
      }
    }
    int64_t n_list_tok = n > 0 ? (int64_t)(n - 1) * pt + kv.last_page_len[i] : 0;
    std::vector<int> toks;
    for (int64_t t = 0; t < a.n_tok; t++)
      if (a.tok_seq_idx[t] == i) toks.push_back((int)t);
    for (size_t j = 0; j < toks.size(); j++)
      EXPECT_EQ(a.tok_kv_len[toks[j]], n_list_tok - (int64_t)(toks.size() - 1 - j)) << "layer " << layer;
    return out;
  }

  // kv_seq_read_kv of every token of every layer equals what was appended (f16 pools:
  // the f16 rounding of it).
  void expect_read_back(kv_seq_id_t seq) const {
    int64_t n = kv_seq_n_tokens(pool.get(), seq);
    for (int l = 0; l < p.n_layers; l++) {
      std::vector<float> k(n * kRow), v(n * kRow);
      ASSERT_EQ(kv_seq_read_kv(pool.get(), seq, l, 0, n, k.data(), v.data()), AK_OK) << kv_pool_errmsg(pool.get());
      const std::vector<float> &kr = K[l].at(seq), &vr = V[l].at(seq);
      ASSERT_EQ((int64_t)kr.size(), n * kRow);
      for (int64_t i = 0; i < n * kRow; i++) {
        float wk = kr[i], wv = vr[i];
        if (p.dtype == KN_F16) {
          wk = ak_f16_to_f32(ak_f32_to_f16(wk));
          wv = ak_f16_to_f32(ak_f32_to_f16(wv));
        }
        ASSERT_EQ(k[i], wk) << "layer " << l << " token " << i / kRow << " elem " << i % kRow;
        ASSERT_EQ(v[i], wv) << "layer " << l << " token " << i / kRow << " elem " << i % kRow;
      }
    }
  }

  // Releases the sequences: 0 pages used, 0 backups in the tier, the pool consistent.
  void release_all(const std::vector<kv_seq_id_t> &seqs) {
    for (kv_seq_id_t s : seqs) ASSERT_EQ(kv_seq_release(pool.get(), s), AK_OK) << kv_pool_errmsg(pool.get());
    kv_pool_stats_t st;
    kv_pool_get_stats(pool.get(), &st);
    EXPECT_EQ(st.n_seqs, 0);
    EXPECT_EQ(st.n_pages_used, 0);
    EXPECT_EQ(st.n_backups, 0);
    EXPECT_EQ(st.backup_bytes, 0u);
    EXPECT_EQ(st.digest_bytes, 0u);
    EXPECT_EQ(kv_pool_check(pool.get()), AK_OK) << kv_pool_errmsg(pool.get());
  }
};

std::set<int> pages(std::initializer_list<int> l) { return std::set<int>(l); }
std::set<int> as_set(const std::vector<int> &v) { return std::set<int>(v.begin(), v.end()); }
std::set<int> range_set(int a, int b) {
  std::set<int> s;
  for (int j = a; j < b; j++) s.insert(j);
  return s;
}

// Every test must leave the host allocator where it found it once its pools are gone.
class KvSelect : public ::testing::Test {
 protected:
  void SetUp() override { host_before_ = ak_alloc_outstanding_bytes(AK_MEM_HOST); }
  void TearDown() override { EXPECT_EQ(ak_alloc_outstanding_bytes(AK_MEM_HOST), host_before_); }
  int64_t host_before_ = 0;
};

// The scenario of the selection test: 40 prompt tokens (10 pages of 4), budget 6 pages
// (sink 0, middle 3, window 2), top-k 2. Dim-0 scores (the prompt's last query) keep
// pages 4, 5, 1 at compaction; dim 1 makes page 3 (evicted then) the best.
void fill_scenario(Harness &h, kv_seq_id_t s) {
  h.tab[s][0] = {0.f, 5.f, 1.f, 0.5f, 7.f, 6.f, 2.f, 3.f, 4.f, 0.25f, 0.1f, 0.1f};
  h.tab[s][1] = {0.f, 1.f, 0.1f, 10.f, 3.f, 2.f, 0.2f, 0.3f, 0.4f, 0.05f, 0.1f, 0.1f};
}
}  // namespace

// --- arkvale: selection and swap ---

TEST_F(KvSelect, ArkvaleDecodeRecallsTopPageIntoLowestScoredMiddleSlot) {
  kv_pool_params_t p = sel_params(KV_POLICY_ARKVALE, 4, 24, 64);
  p.topk_pages = 2;
  Harness h(p);
  ASSERT_EQ(kv_pool_topk_pages(h.get()), 2);
  kv_seq_id_t s = h.new_seq();
  fill_scenario(h, s);
  size_t pb = kv_page_bytes(&p);
  ASSERT_EQ(pb, 512u);
  ASSERT_NO_FATAL_FAILURE(h.step({{s, 40, 0}}));

  kv_seq_stats_t ss;
  ASSERT_EQ(kv_seq_get_stats(h.get(), s, &ss), AK_OK);
  EXPECT_EQ(ss.n_pages_resident, 30);  // exact prefill: everything resident
  EXPECT_EQ(ss.work.backups, 20u);     // 10 filled pages x 2 budgeted layers
  EXPECT_EQ(ss.work.bytes_backed_up, 20 * pb);
  EXPECT_EQ(ss.work.evictions, 0u);

  ASSERT_EQ(kv_seq_compact(h.get(), s), AK_OK);
  ASSERT_EQ(kv_pool_check(h.get()), AK_OK) << kv_pool_errmsg(h.get());
  ASSERT_EQ(kv_seq_get_stats(h.get(), s, &ss), AK_OK);
  EXPECT_EQ(ss.n_pages_resident, 10 + 6 + 6);
  EXPECT_EQ(ss.work.evictions, 8u);  // pages 2, 3, 6, 7 in each budgeted layer
  EXPECT_EQ(ss.n_pages_backed_up, 20);
  EXPECT_EQ(ss.backup_bytes, 20 * pb);

  // Decode token 40 opens page 10: page 8 leaves the window and loses to 4, 5, 1 under
  // the last (dim-0) query; then the dim-1 query makes {3, 4} the top 2: page 3 is
  // recalled into the slot of page 1, the lowest dim-1 score of the resident middle.
  ASSERT_NO_FATAL_FAILURE(h.step({{s, 1, 1}}, [&](int l, const kn_attn_args_t &a) {
    std::set<int> got = as_set(h.listed(a, 0, s, l));
    if (l == 0)
      EXPECT_EQ(got, range_set(0, 11));
    else
      EXPECT_EQ(got, pages({0, 3, 4, 5, 9, 10})) << "layer " << l;
    EXPECT_EQ(a.tok_kv_len[0], l == 0 ? 41 : 21);
  }));
  ASSERT_EQ(kv_seq_get_stats(h.get(), s, &ss), AK_OK);
  EXPECT_EQ(ss.work.recalls, 2u);
  EXPECT_EQ(ss.work.evictions, 8u + 2u + 2u);
  EXPECT_EQ(ss.work.bytes_recalled, 2 * pb);
  EXPECT_EQ(ss.work.backups, 20u);
  EXPECT_EQ(ss.work.n_selects, 2u);
  EXPECT_EQ(ss.work.drops, 0u);
  EXPECT_EQ(ss.n_pages_resident, 11 + 6 + 6);
  kv_pool_stats_t ps;
  kv_pool_get_stats(h.get(), &ps);
  EXPECT_EQ(ps.last_step.recalls, 2u);
  EXPECT_EQ(ps.last_step.evictions, 4u);
  EXPECT_EQ(ps.last_step.backups, 0u);
  EXPECT_EQ(ps.work.recalls, 2u);
  EXPECT_EQ(ps.work.evictions, 12u);
  EXPECT_EQ(ps.work.backups, 20u);
  EXPECT_EQ(ps.n_backups, 20);
  EXPECT_EQ(ps.backup_bytes, 20 * pb);
  EXPECT_EQ(ps.n_pages_used, 23);

  // Back to dim 0: the top 2 (4, 5) are resident, nothing moves.
  ASSERT_NO_FATAL_FAILURE(h.step({{s, 1, 0}}, [&](int l, const kn_attn_args_t &a) {
    if (l > 0) EXPECT_EQ(as_set(h.listed(a, 0, s, l)), pages({0, 3, 4, 5, 9, 10}));
  }));
  kv_pool_get_stats(h.get(), &ps);
  EXPECT_EQ(ps.last_step.recalls, 0u);
  EXPECT_EQ(ps.last_step.evictions, 0u);
  ASSERT_NO_FATAL_FAILURE(h.expect_read_back(s));
  ASSERT_NO_FATAL_FAILURE(h.release_all({s}));
}

// Budgeted layers decide independently: layer 2's scores are reversed.
TEST_F(KvSelect, ArkvaleLayersSelectIndependently) {
  kv_pool_params_t p = sel_params(KV_POLICY_ARKVALE, 4, 24, 64);
  p.topk_pages = 2;
  Harness h(p);
  kv_seq_id_t s = h.new_seq();
  h.tab[s][0] = {0.f, 1.f, 2.f, 3.f, 4.f, 5.f, 6.f, 7.f, 8.f, 9.f};
  h.score_fn = [&](int seq, int layer, int pos, int a) {
    if (a != 0) return 0.f;
    float v = h.tab[seq][0][std::min(pos / 4, 9)];
    return layer == 2 ? 10.f - v : v;
  };
  ASSERT_NO_FATAL_FAILURE(h.step({{s, 38, 0}}));
  ASSERT_NO_FATAL_FAILURE(h.step({{s, 1, 0}}, [&](int l, const kn_attn_args_t &a) {
    std::set<int> got = as_set(h.listed(a, 0, s, l));
    if (l == 1) EXPECT_EQ(got, pages({0, 5, 6, 7, 8, 9}));
    if (l == 2) EXPECT_EQ(got, pages({0, 1, 2, 3, 8, 9}));
  }));
  ASSERT_NO_FATAL_FAILURE(h.release_all({s}));
}

// --- eviction/recall round trips ---

void round_trip(kn_dtype_t dt, int32_t page_tokens, int32_t budget_pages, int n_steps, uint32_t seed) {
  kv_pool_params_t p = sel_params(KV_POLICY_ARKVALE, page_tokens, budget_pages * page_tokens, 400, dt);
  p.topk_pages = 2;
  Harness h(p);
  kv_seq_id_t s = h.new_seq();
  std::mt19937 rng(seed);
  // multiples of 1/16 below 128: exact in f16 too, so f16 pools rank alike (equal
  // scores rank the newer page first, in RefArk as in the pool)
  std::uniform_int_distribution<int> u(0, 100 * 16);
  int n_pages_max = 60;
  for (int a = 0; a < 2; a++)
    for (int j = 0; j < n_pages_max; j++) h.tab[s][a].push_back((float)u(rng) / 16.f);
  RefArk ref;
  ref.budget = budget_pages;
  ref.k = 2;
  int prompt = 3 * page_tokens * budget_pages / 2 + 1;
  int qdim = 0, recalls = 0;
  ref.begin(0, prompt, page_tokens, h.page_score(s, 0));
  ASSERT_NO_FATAL_FAILURE(h.step({{s, prompt, 0}}));
  for (int i = 0; i < n_steps; i++) {
    int next = (int)(rng() % 2);
    int64_t n = kv_seq_n_tokens(h.get(), s);
    ref.begin(n, 1, page_tokens, h.page_score(s, qdim));
    std::set<int> want = ref.view(h.page_score(s, next), false, &recalls);
    qdim = next;
    ASSERT_NO_FATAL_FAILURE(h.step({{s, 1, qdim}}, [&](int l, const kn_attn_args_t &a) {
      if (dt != KN_F32) return;
      std::set<int> got = as_set(h.listed(a, 0, s, l));
      if (l > 0) EXPECT_EQ(got, want) << "step " << i << " layer " << l;
    }));
    if (i % 7 == 0) ASSERT_NO_FATAL_FAILURE(h.expect_read_back(s));
  }
  ASSERT_NO_FATAL_FAILURE(h.expect_read_back(s));
  kv_seq_stats_t ss;
  ASSERT_EQ(kv_seq_get_stats(h.get(), s, &ss), AK_OK);
  EXPECT_GT(recalls, 3);
  EXPECT_EQ(ss.work.recalls, 2u * recalls);
  int64_t n = kv_seq_n_tokens(h.get(), s);
  EXPECT_EQ(ss.work.backups, 2u * (n / page_tokens));
  EXPECT_EQ(ss.n_pages_resident, kv_pages_for_tokens(n, page_tokens) + 2 * budget_pages);
  ASSERT_NO_FATAL_FAILURE(h.release_all({s}));
}

TEST_F(KvSelect, EvictRecallRoundTripF32IsExact) { round_trip(KN_F32, 4, 6, 120, 1); }
TEST_F(KvSelect, EvictRecallRoundTripF16WithinRounding) { round_trip(KN_F16, 4, 6, 120, 2); }
TEST_F(KvSelect, EvictRecallRoundTripPage8) { round_trip(KN_F32, 8, 7, 200, 3); }
TEST_F(KvSelect, EvictRecallRoundTripPage64) { round_trip(KN_F32, 64, 5, 300, 4); }

// --- budget edge cases ---

TEST_F(KvSelect, PromptShorterThanAPage) {
  Harness h(sel_params(KV_POLICY_ARKVALE, 4, 24, 64));
  kv_seq_id_t s = h.new_seq();
  ASSERT_NO_FATAL_FAILURE(h.step({{s, 3, 0}}, [&](int l, const kn_attn_args_t &a) {
    EXPECT_EQ(h.listed(a, 0, s, l), std::vector<int>{0});
    EXPECT_EQ(a.kv.last_page_len[0], 3);
    EXPECT_EQ(a.tok_kv_len[2], 3);
  }));
  kv_pool_stats_t ps;
  kv_pool_get_stats(h.get(), &ps);
  EXPECT_EQ(ps.n_backups, 0);  // nothing filled yet
  EXPECT_EQ(ps.n_pages_used, 3);
  ASSERT_EQ(kv_seq_compact(h.get(), s), AK_OK);  // within budget: a no-op
  ASSERT_NO_FATAL_FAILURE(h.step({{s, 1, 0}}));  // fills page 0
  kv_pool_get_stats(h.get(), &ps);
  EXPECT_EQ(ps.n_backups, 2);
  EXPECT_EQ(ps.work.evictions, 0u);
  ASSERT_NO_FATAL_FAILURE(h.expect_read_back(s));
  ASSERT_NO_FATAL_FAILURE(h.release_all({s}));
}

TEST_F(KvSelect, PromptOfExactlyOnePage) {
  Harness h(sel_params(KV_POLICY_ARKVALE, 4, 24, 64));
  kv_seq_id_t s = h.new_seq();
  ASSERT_NO_FATAL_FAILURE(h.step({{s, 4, 0}}, [&](int l, const kn_attn_args_t &a) {
    EXPECT_EQ(h.listed(a, 0, s, l), std::vector<int>{0});
    EXPECT_EQ(a.kv.last_page_len[0], 4);
  }));
  kv_seq_stats_t ss;
  ASSERT_EQ(kv_seq_get_stats(h.get(), s, &ss), AK_OK);
  EXPECT_EQ(ss.work.backups, 2u);
  EXPECT_EQ(ss.n_pages_resident, 3);
  ASSERT_NO_FATAL_FAILURE(h.step({{s, 1, 0}}, [&](int l, const kn_attn_args_t &a) {
    EXPECT_EQ(h.listed(a, 0, s, l), (std::vector<int>{0, 1}));
    EXPECT_EQ(a.kv.last_page_len[0], 1);
    EXPECT_EQ(a.tok_kv_len[0], 5);
  }));
  ASSERT_NO_FATAL_FAILURE(h.release_all({s}));
}

TEST_F(KvSelect, BudgetOfSinksPlusWindowIsASlidingWindow) {
  Harness h(sel_params(KV_POLICY_ARKVALE, 4, 12, 64));  // 3 pages = 1 sink + 2 window
  EXPECT_EQ(kv_pool_topk_pages(h.get()), 0);
  kv_seq_id_t s = h.new_seq();
  for (int j = 0; j < 20; j++) h.tab[s][0].push_back((float)((j * 7) % 11));
  ASSERT_NO_FATAL_FAILURE(h.step({{s, 10, 0}}));
  for (int i = 0; i < 40; i++) {
    int64_t n = kv_seq_n_tokens(h.get(), s) + 1;
    int np = (int)kv_pages_for_tokens(n, 4);
    ASSERT_NO_FATAL_FAILURE(h.step({{s, 1, i % 2}}, [&](int l, const kn_attn_args_t &a) {
      std::set<int> got = as_set(h.listed(a, 0, s, l));
      if (l > 0) EXPECT_EQ(got, pages({0, np - 2, np - 1})) << "tokens " << n;
    }));
  }
  kv_seq_stats_t ss;
  ASSERT_EQ(kv_seq_get_stats(h.get(), s, &ss), AK_OK);
  EXPECT_EQ(ss.work.recalls, 0u);
  EXPECT_EQ(ss.work.evictions, 2u * (13 - 3));  // 50 tokens: 13 pages, 3 resident
  EXPECT_EQ(ss.work.drops, 0u);
  ASSERT_NO_FATAL_FAILURE(h.expect_read_back(s));  // evicted pages read from backups
  ASSERT_NO_FATAL_FAILURE(h.release_all({s}));
}

TEST_F(KvSelect, TopkDefaultIsPaperFormulaCappedToMiddle) {
  struct Case {
    int32_t pt, budget, n_window, want;
  } cases[] = {
      {4, 24, 2, 3},     // min(1280, 12) / 4 = 3, middle 3
      {4, 64, 2, 8},     // 32 / 4 = 8, middle 13
      {32, 4096, 2, 40}, // min(1280, 2048) / 32 = 40
      {64, 8192, 2, 20}, // 1280 / 64
      {4, 16, 2, 1},     // 8 / 4 = 2 capped to a middle of 1
      {8, 24, 1, 1},     // 12 / 8 = 1
      {64, 256, 2, 1},   // 128 / 64 = 2, middle 1
      {8, 24, 2, 0},     // middle 0
  };
  for (const Case &c : cases) {
    kv_pool_params_t p = sel_params(KV_POLICY_ARKVALE, c.pt, c.budget, 16);
    p.n_window_pages = c.n_window;
    p.max_seq_tokens = 8192;
    p.max_seqs = 1;
    p.host_tier_bytes = 4 * kv_page_bytes(&p);
    Harness h(p);
    EXPECT_EQ(kv_pool_topk_pages(h.get()), c.want) << "page " << c.pt << " budget " << c.budget;
  }
  kv_pool_params_t p = sel_params(KV_POLICY_ARKVALE, 4, 64, 16);
  p.topk_pages = 5;
  {
    Harness h(p);
    EXPECT_EQ(kv_pool_topk_pages(h.get()), 5);
  }
  p = sel_params(KV_POLICY_STREAMING, 4, 64, 16);
  Harness hs(p);
  EXPECT_EQ(kv_pool_topk_pages(hs.get()), 0);
}

// --- prefill past the budget ---

TEST_F(KvSelect, PrefillPastBudgetIsExactThenCompactKeepsTopPages) {
  for (int use_compact = 0; use_compact < 2; use_compact++) {
    kv_pool_params_t p = sel_params(KV_POLICY_ARKVALE, 4, 24, 64);
    p.topk_pages = 2;
    Harness h(p);
    kv_seq_id_t s = h.new_seq();
    // dim 0: the last prompt token's query. Keeps 5, 2, 7 of the middle 1..7.
    h.tab[s][0] = {9.f, 1.f, 6.f, 0.5f, 2.f, 8.f, 0.25f, 5.f, 0.1f, 0.2f};
    ASSERT_NO_FATAL_FAILURE(h.step({{s, 38, 0}}, [&](int l, const kn_attn_args_t &a) {
      EXPECT_EQ(as_set(h.listed(a, 0, s, l)), range_set(0, 10)) << "layer " << l;
      for (int j = 0; j < 38; j++) EXPECT_EQ(a.tok_kv_len[j], j + 1);
    }));
    kv_seq_stats_t ss;
    ASSERT_EQ(kv_seq_get_stats(h.get(), s, &ss), AK_OK);
    EXPECT_EQ(ss.n_pages_resident, 30);
    EXPECT_EQ(ss.n_tokens_resident, 3 * 38);
    if (use_compact) {
      ASSERT_EQ(kv_seq_compact(h.get(), s), AK_OK);
      ASSERT_EQ(kv_seq_get_stats(h.get(), s, &ss), AK_OK);
      EXPECT_EQ(ss.n_pages_resident, 10 + 6 + 6);
      EXPECT_EQ(ss.n_tokens_resident, 38 + 2 * (5 * 4 + 2));
      EXPECT_EQ(ss.work.evictions, 8u);
      ASSERT_EQ(kv_pool_check(h.get()), AK_OK) << kv_pool_errmsg(h.get());
      ASSERT_EQ(kv_seq_compact(h.get(), s), AK_OK);  // idempotent
      ASSERT_EQ(kv_seq_get_stats(h.get(), s, &ss), AK_OK);
      EXPECT_EQ(ss.work.evictions, 8u);
    }
    // The first decode token (page 9 not full: no page opens) sees the compacted set.
    ASSERT_NO_FATAL_FAILURE(h.step({{s, 1, 0}}, [&](int l, const kn_attn_args_t &a) {
      std::set<int> got = as_set(h.listed(a, 0, s, l));
      EXPECT_EQ(got, l == 0 ? range_set(0, 10) : pages({0, 2, 5, 7, 8, 9})) << "layer " << l;
    }));
    ASSERT_EQ(kv_seq_get_stats(h.get(), s, &ss), AK_OK);
    EXPECT_EQ(ss.work.evictions, 8u);
    EXPECT_EQ(ss.work.recalls, 0u);
    ASSERT_NO_FATAL_FAILURE(h.expect_read_back(s));
    ASSERT_NO_FATAL_FAILURE(h.release_all({s}));
  }
}

// --- attend modes ---

TEST_F(KvSelect, AttendResidentListsEveryResidentPageTopkOnlySinksTopkWindow) {
  for (kv_attend_t mode : {KV_ATTEND_RESIDENT, KV_ATTEND_TOPK}) {
    kv_pool_params_t p = sel_params(KV_POLICY_ARKVALE, 4, 24, 64);
    p.topk_pages = 2;
    p.attend = mode;
    Harness h(p);
    kv_seq_id_t s = h.new_seq();
    fill_scenario(h, s);
    ASSERT_NO_FATAL_FAILURE(h.step({{s, 40, 0}}));
    ASSERT_EQ(kv_seq_compact(h.get(), s), AK_OK);
    std::set<int> want = mode == KV_ATTEND_RESIDENT ? pages({0, 3, 4, 5, 9, 10}) : pages({0, 3, 4, 9, 10});
    ASSERT_NO_FATAL_FAILURE(h.step({{s, 1, 1}}, [&](int l, const kn_attn_args_t &a) {
      std::set<int> got = as_set(h.listed(a, 0, s, l));
      if (l == 0) return;
      EXPECT_EQ(got, want) << "mode " << mode << " layer " << l;
      EXPECT_EQ(a.tok_kv_len[0], (int)(want.size() - 1) * 4 + 1);
    }));
    kv_seq_stats_t ss;
    ASSERT_EQ(kv_seq_get_stats(h.get(), s, &ss), AK_OK);
    EXPECT_EQ(ss.n_pages_resident, 11 + 12);  // the mode changes the view, not residency
    ASSERT_NO_FATAL_FAILURE(h.release_all({s}));
  }
}

// --- mixed-length batches ---

TEST_F(KvSelect, MixedBatchOverUnderBudgetAndPrefillInOneStep) {
  kv_pool_params_t p = sel_params(KV_POLICY_ARKVALE, 4, 24, 200);
  p.topk_pages = 2;
  Harness h(p);
  kv_seq_id_t a = h.new_seq(), b = h.new_seq(), c = h.new_seq(), d = h.new_seq();
  fill_scenario(h, a);
  h.tab[b][0] = {1.f, 2.f, 3.f};
  h.tab[c][0] = {3.f, 1.f, 4.f, 1.f, 5.f, 9.f, 2.f, 6.f, 0.5f, 0.25f, 7.f, 8.f};
  h.tab[d][0] = {3.f, 9.f, 8.f, 7.f, 6.f, 5.f, 4.f, 2.f, 1.f, 0.5f, 0.25f};
  // a: 40-token prompt (over budget); b: 6 tokens; d: 30 tokens (prefill chunk 1).
  ASSERT_NO_FATAL_FAILURE(h.step({{a, 40, 0}, {b, 6, 0}, {d, 30, 0}}));
  ASSERT_EQ(kv_seq_compact(h.get(), a), AK_OK);
  // One step: a decodes (recall of page 3), b decodes (under budget), c prefills 45
  // tokens past the budget, d prefills a second chunk of 7.
  ASSERT_NO_FATAL_FAILURE(h.step({{a, 1, 1}, {b, 1, 0}, {c, 45, 0}, {d, 7, 0}}, [&](int l, const kn_attn_args_t &v) {
    ASSERT_EQ(v.n_tok, 1 + 1 + 45 + 7);
    ASSERT_EQ(v.kv.n_seqs, 4);
    for (int t = 0; t < v.n_tok; t++) EXPECT_EQ(v.tok_seq_idx[t], t < 1 ? 0 : t < 2 ? 1 : t < 47 ? 2 : 3);
    EXPECT_EQ(as_set(h.listed(v, 0, a, l)), l == 0 ? range_set(0, 11) : pages({0, 3, 4, 5, 9, 10}));
    EXPECT_EQ(as_set(h.listed(v, 1, b, l)), range_set(0, 2));
    EXPECT_EQ(v.kv.last_page_len[1], 3);
    EXPECT_EQ(as_set(h.listed(v, 2, c, l)), range_set(0, 12));
    EXPECT_EQ(v.kv.last_page_len[2], 1);
    EXPECT_EQ(as_set(h.listed(v, 3, d, l)), range_set(0, 10));
    EXPECT_EQ(v.kv.last_page_len[3], 1);
  }));
  kv_seq_stats_t ss;
  ASSERT_EQ(kv_seq_get_stats(h.get(), a, &ss), AK_OK);
  EXPECT_EQ(ss.work.recalls, 2u);
  ASSERT_EQ(kv_seq_get_stats(h.get(), c, &ss), AK_OK);
  EXPECT_EQ(ss.n_pages_resident, 36);  // c is still prefilling: exact
  EXPECT_EQ(ss.work.recalls, 0u);
  // Everybody decodes: c and d come down to their budgets on their first decode step.
  ASSERT_NO_FATAL_FAILURE(h.step({{a, 1, 0}, {b, 1, 0}, {c, 1, 0}, {d, 1, 0}}, [&](int l, const kn_attn_args_t &v) {
    if (l == 0) return;
    // c: 46 tokens, page 11 not opened; keep 3 best of middle 1..9 by dim 0: 5 (9), 7 (6), 4 (5)
    EXPECT_EQ(as_set(h.listed(v, 2, c, l)), pages({0, 4, 5, 7, 10, 11}));
    // d: 38 tokens, pages 0..9 (9 partial), middle 1..7 by dim 0: 1, 2, 3
    EXPECT_EQ(as_set(h.listed(v, 3, d, l)), pages({0, 1, 2, 3, 8, 9}));
    EXPECT_EQ(as_set(h.listed(v, 1, b, l)), range_set(0, 2));
    h.listed(v, 0, a, l);
  }));
  for (kv_seq_id_t s : {a, b, c, d}) ASSERT_NO_FATAL_FAILURE(h.expect_read_back(s));
  ASSERT_NO_FATAL_FAILURE(h.release_all({a, b, c, d}));
}

// --- release, abort ---

TEST_F(KvSelect, ReleaseMidStepIsRefusedAndWorksAfterAbort) {
  Harness h(sel_params(KV_POLICY_ARKVALE, 4, 24, 64));
  kv_seq_id_t s = h.new_seq(), other = h.new_seq();
  ASSERT_NO_FATAL_FAILURE(h.step({{s, 10, 0}}));
  ASSERT_EQ(h.begin({{s, 1, 0}}), AK_OK);
  EXPECT_EQ(kv_seq_release(h.get(), s), AK_ERR_INVALID_ARG);
  EXPECT_NE(std::string(kv_pool_errmsg(h.get())).find("in the current step"), std::string::npos)
      << kv_pool_errmsg(h.get());
  EXPECT_EQ(kv_seq_compact(h.get(), s), AK_ERR_INVALID_ARG);
  EXPECT_EQ(kv_seq_release(h.get(), other), AK_OK);  // not in the step
  h.abort();
  EXPECT_EQ(kv_seq_n_tokens(h.get(), s), 10);
  EXPECT_EQ(kv_pool_check(h.get()), AK_OK) << kv_pool_errmsg(h.get());
  ASSERT_NO_FATAL_FAILURE(h.release_all({s}));
}

TEST_F(KvSelect, AbortOfAStepThatFilledPagesDropsTheirBackups) {
  Harness h(sel_params(KV_POLICY_ARKVALE, 4, 24, 64));
  kv_seq_id_t s = h.new_seq();
  ASSERT_NO_FATAL_FAILURE(h.step({{s, 7, 0}}));
  kv_pool_stats_t ps;
  kv_pool_get_stats(h.get(), &ps);
  ASSERT_EQ(ps.n_backups, 2);
  int64_t used = ps.n_pages_used;
  // A decode token fills page 1: two more backups, then undone.
  ASSERT_EQ(h.begin({{s, 1, 0}}), AK_OK);
  ASSERT_NO_FATAL_FAILURE(h.layers(nullptr));
  kv_pool_get_stats(h.get(), &ps);
  EXPECT_EQ(ps.n_backups, 4);
  h.abort();
  kv_pool_get_stats(h.get(), &ps);
  EXPECT_EQ(ps.n_backups, 2);
  EXPECT_EQ(ps.backup_bytes, 2 * kv_page_bytes(&h.p));
  EXPECT_EQ(ps.n_pages_used, used);
  EXPECT_EQ(kv_pool_check(h.get()), AK_OK) << kv_pool_errmsg(h.get());
  // A prompt chunk filling 3 pages, aborted.
  ASSERT_EQ(h.begin({{s, 13, 0}}), AK_OK);
  ASSERT_NO_FATAL_FAILURE(h.layers(nullptr));
  kv_pool_get_stats(h.get(), &ps);
  EXPECT_EQ(ps.n_backups, 2 + 2 * 4);
  h.abort();
  kv_pool_get_stats(h.get(), &ps);
  EXPECT_EQ(ps.n_backups, 2);
  EXPECT_EQ(ps.n_pages_used, used);
  EXPECT_EQ(kv_pool_check(h.get()), AK_OK) << kv_pool_errmsg(h.get());
  // The same steps then succeed.
  ASSERT_NO_FATAL_FAILURE(h.step({{s, 1, 0}}));
  ASSERT_NO_FATAL_FAILURE(h.step({{s, 13, 0}}));
  ASSERT_NO_FATAL_FAILURE(h.expect_read_back(s));
  ASSERT_NO_FATAL_FAILURE(h.release_all({s}));
}

// A decode step that opens a page evicts the page leaving the window when it scores
// lowest; aborting it puts that page back in the window. The invariants kv_pool_check
// states (window pages resident) must hold after an abort, and the retried step works.
TEST_F(KvSelect, AbortAfterWindowPageEvictionKeepsInvariants) {
  kv_pool_params_t p = sel_params(KV_POLICY_ARKVALE, 4, 24, 64);
  p.topk_pages = 2;
  Harness h(p);
  kv_seq_id_t s = h.new_seq();
  fill_scenario(h, s);  // page 8 scores lowest among 1, 4, 5, 8 under dim 0
  ASSERT_NO_FATAL_FAILURE(h.step({{s, 40, 0}}));
  ASSERT_EQ(kv_seq_compact(h.get(), s), AK_OK);
  ASSERT_EQ(h.begin({{s, 1, 0}}), AK_OK);
  kv_pool_stats_t ps;
  kv_pool_get_stats(h.get(), &ps);
  EXPECT_EQ(ps.last_step.evictions, 2u);  // page 8 in each budgeted layer
  h.abort();
  EXPECT_EQ(kv_seq_n_tokens(h.get(), s), 40);
  EXPECT_EQ(kv_pool_check(h.get()), AK_OK) << kv_pool_errmsg(h.get());
  ASSERT_NO_FATAL_FAILURE(h.expect_read_back(s));
  ASSERT_NO_FATAL_FAILURE(h.step({{s, 1, 1}}));
  ASSERT_NO_FATAL_FAILURE(h.release_all({s}));
}

// The same for streaming with no middle (budget = sink + last page): the decode step
// that opens page 2 drops page 1, the last page, at begin. kvpool.h says an abort
// never changes what a sequence holds, so after it tokens 4..7 must still be readable.
TEST_F(KvSelect, StreamingAbortKeepsTheLastPage) {
  Harness h(sel_params(KV_POLICY_STREAMING, 4, 8, 64));
  kv_seq_id_t s = h.new_seq();
  ASSERT_NO_FATAL_FAILURE(h.step({{s, 8, 0}}));
  ASSERT_EQ(h.begin({{s, 1, 0}}), AK_OK);
  h.abort();
  EXPECT_EQ(kv_seq_n_tokens(h.get(), s), 8);
  EXPECT_EQ(kv_pool_check(h.get()), AK_OK) << kv_pool_errmsg(h.get());
  float k[kRow];
  EXPECT_EQ(kv_seq_read_kv(h.get(), s, 1, 4, 1, k, nullptr), AK_OK) << kv_pool_errmsg(h.get());
  ASSERT_NO_FATAL_FAILURE(h.release_all({s}));
}

// --- exhaustion ---

TEST_F(KvSelect, PoolFullStepChangesNothing) {
  // 20 pages: a 40-token prompt needs 30.
  Harness h(sel_params(KV_POLICY_ARKVALE, 4, 24, 20));
  kv_seq_id_t s = h.new_seq(), t = h.new_seq();
  ASSERT_NO_FATAL_FAILURE(h.step({{s, 12, 0}}));  // 3 pages x 3 layers
  ASSERT_EQ(h.begin({{t, 20, 0}}), AK_ERR_POOL_FULL);  // 15 more pages, 11 free
  EXPECT_NE(std::string(kv_pool_errmsg(h.get())).find("needs 15 pages, 11 free"), std::string::npos)
      << kv_pool_errmsg(h.get());
  ASSERT_EQ(h.begin({{s, 1, 0}, {t, 16, 0}}), AK_ERR_POOL_FULL);  // 3 + 12
  EXPECT_EQ(kv_seq_n_tokens(h.get(), s), 12);
  EXPECT_EQ(kv_seq_n_tokens(h.get(), t), 0);
  kv_pool_stats_t ps;
  kv_pool_get_stats(h.get(), &ps);
  EXPECT_EQ(ps.n_pages_used, 9);
  EXPECT_EQ(ps.n_backups, 6);
  EXPECT_EQ(kv_pool_check(h.get()), AK_OK) << kv_pool_errmsg(h.get());
  ASSERT_NO_FATAL_FAILURE(h.expect_read_back(s));
  ASSERT_NO_FATAL_FAILURE(h.step({{s, 1, 0}, {t, 8, 0}}));  // 3 + 6 <= 11
  ASSERT_NO_FATAL_FAILURE(h.release_all({s, t}));
}

TEST_F(KvSelect, HostTierTooSmallIsPoolFullNamingTheTier) {
  kv_pool_params_t p = sel_params(KV_POLICY_ARKVALE, 4, 24, 64);
  p.host_tier_bytes = 5 * kv_page_bytes(&p);
  Harness h(p);
  kv_seq_id_t s = h.new_seq();
  ASSERT_EQ(h.begin({{s, 12, 0}}), AK_ERR_POOL_FULL);  // 3 pages x 2 layers > 5
  std::string msg = kv_pool_errmsg(h.get());
  EXPECT_NE(msg.find("host tier"), std::string::npos) << msg;
  EXPECT_NE(msg.find("backs up 6 pages"), std::string::npos) << msg;
  kv_pool_stats_t ps;
  kv_pool_get_stats(h.get(), &ps);
  EXPECT_EQ(ps.n_pages_used, 0);
  EXPECT_EQ(ps.n_backups, 0);
  EXPECT_EQ(ps.backup_capacity_bytes, 5 * kv_page_bytes(&p));
  ASSERT_NO_FATAL_FAILURE(h.step({{s, 8, 0}}));  // 4 backups fit
  ASSERT_NO_FATAL_FAILURE(h.step({{s, 3, 0}}));  // no page fills
  ASSERT_EQ(h.begin({{s, 1, 0}}), AK_ERR_POOL_FULL);  // 2 more, room for 1
  EXPECT_EQ(kv_seq_n_tokens(h.get(), s), 11);
  EXPECT_EQ(kv_pool_check(h.get()), AK_OK) << kv_pool_errmsg(h.get());
  ASSERT_NO_FATAL_FAILURE(h.expect_read_back(s));
  ASSERT_NO_FATAL_FAILURE(h.release_all({s}));
}

// --- streaming ---

TEST_F(KvSelect, StreamingDropsOldestMiddlePagesForGood) {
  Harness h(sel_params(KV_POLICY_STREAMING, 4, 16, 64));  // 4 pages: sink, 2 middle, last
  kv_seq_id_t s = h.new_seq();
  ASSERT_NO_FATAL_FAILURE(h.step({{s, 22, 0}}, [&](int l, const kn_attn_args_t &a) {
    EXPECT_EQ(as_set(h.listed(a, 0, s, l)), range_set(0, 6));  // prefill is exact
  }));
  kv_seq_stats_t ss;
  ASSERT_EQ(kv_seq_get_stats(h.get(), s, &ss), AK_OK);
  EXPECT_EQ(ss.n_pages_resident, 18);
  EXPECT_EQ(ss.n_pages_backed_up, 0);
  // The first decode step (no page opens) drops pages 1 and 2 of 6.
  ASSERT_NO_FATAL_FAILURE(h.step({{s, 1, 0}}, [&](int l, const kn_attn_args_t &a) {
    EXPECT_EQ(as_set(h.listed(a, 0, s, l)), l == 0 ? range_set(0, 6) : pages({0, 3, 4, 5}));
  }));
  ASSERT_EQ(kv_seq_get_stats(h.get(), s, &ss), AK_OK);
  EXPECT_EQ(ss.work.drops, 4u);
  EXPECT_EQ(ss.work.evictions, 4u);
  for (int i = 0; i < 9; i++) ASSERT_NO_FATAL_FAILURE(h.step({{s, 1, 0}}));  // 32 tokens: page 7 opened at 28
  ASSERT_NO_FATAL_FAILURE(h.step({{s, 1, 0}}, [&](int l, const kn_attn_args_t &a) {
    EXPECT_EQ(as_set(h.listed(a, 0, s, l)), l == 0 ? range_set(0, 9) : pages({0, 6, 7, 8}));
  }));
  ASSERT_EQ(kv_seq_get_stats(h.get(), s, &ss), AK_OK);
  EXPECT_EQ(ss.work.drops, 2u * 5);  // pages 1..5
  EXPECT_EQ(ss.work.recalls, 0u);
  EXPECT_EQ(ss.n_pages_backed_up, 0);
  EXPECT_EQ(ss.n_pages_resident, 9 + 4 + 4);
  float k[kRow * 4];
  EXPECT_EQ(kv_seq_read_kv(h.get(), s, 1, 5, 1, k, nullptr), AK_ERR_NOT_FOUND);
  EXPECT_NE(std::string(kv_pool_errmsg(h.get())).find("dropped"), std::string::npos) << kv_pool_errmsg(h.get());
  EXPECT_EQ(kv_seq_read_kv(h.get(), s, 2, 23, 1, k, nullptr), AK_ERR_NOT_FOUND);
  EXPECT_EQ(kv_seq_read_kv(h.get(), s, 1, 0, 4, k, nullptr), AK_OK);   // sink
  EXPECT_EQ(k[2], h.K[1][s][2]);
  EXPECT_EQ(kv_seq_read_kv(h.get(), s, 1, 24, 4, k, nullptr), AK_OK);  // page 6
  EXPECT_EQ(k[2], h.K[1][s][24 * kRow + 2]);
  EXPECT_EQ(kv_seq_read_kv(h.get(), s, 0, 5, 1, k, nullptr), AK_OK);   // full layer
  kv_pool_stats_t ps;
  kv_pool_get_stats(h.get(), &ps);
  EXPECT_EQ(ps.work.drops, 10u);
  EXPECT_EQ(ps.n_backups, 0);
  ASSERT_NO_FATAL_FAILURE(h.release_all({s}));
}

// --- quest ---

TEST_F(KvSelect, QuestKeepsAllResidentAndAttendsTopByCuboidMax) {
  kv_pool_params_t p = sel_params(KV_POLICY_QUEST, 4, 12, 64);  // 3 pages: top 2 + last
  p.digest = KV_DIGEST_CUBOID_MEAN;  // quest ignores it
  Harness h(p);
  kv_seq_id_t s = h.new_seq();
  // Page 2's dim 0 is {10, 5, 5, 0}: cuboid-max 10, cuboid-mean 7.5. Page 3 is 8,
  // page 4 is 7.8: cuboid-max picks {2, 3}, cuboid-mean would pick {3, 4}.
  const float page_vals[] = {1.f, 2.f, -1.f, 8.f, 7.8f, 3.f, 0.5f, 0.25f};
  const float page2[] = {10.f, 5.f, 5.f, 0.f};
  h.score_fn = [&](int, int, int pos, int a) {
    if (a != 0) return 0.f;
    if (pos / 4 == 2) return page2[pos % 4];
    return page_vals[std::min(pos / 4, 7)];
  };
  ASSERT_NO_FATAL_FAILURE(h.step({{s, 8, 0}}));
  ASSERT_NO_FATAL_FAILURE(h.step({{s, 1, 0}}, [&](int l, const kn_attn_args_t &a) {
    EXPECT_EQ(as_set(h.listed(a, 0, s, l)), range_set(0, 3));  // within budget: everything
  }));
  ASSERT_NO_FATAL_FAILURE(h.step({{s, 15, 0}}));  // 24 tokens, 6 pages
  ASSERT_EQ(kv_seq_compact(h.get(), s), AK_OK);  // a no-op for quest
  ASSERT_NO_FATAL_FAILURE(h.step({{s, 1, 0}}, [&](int l, const kn_attn_args_t &a) {
    std::set<int> got = as_set(h.listed(a, 0, s, l));
    EXPECT_EQ(got, l == 0 ? range_set(0, 7) : pages({2, 3, 6})) << "layer " << l;
    if (l > 0) EXPECT_EQ(a.tok_kv_len[0], 9);
  }));
  kv_seq_stats_t ss;
  ASSERT_EQ(kv_seq_get_stats(h.get(), s, &ss), AK_OK);
  EXPECT_EQ(ss.n_pages_resident, 3 * 7);
  EXPECT_EQ(ss.work.evictions, 0u);
  EXPECT_EQ(ss.work.recalls, 0u);
  EXPECT_EQ(ss.work.n_selects, 2u);
  EXPECT_EQ(ss.n_pages_backed_up, 0);
  // A multi-token step attends everything.
  ASSERT_NO_FATAL_FAILURE(h.step({{s, 2, 0}}, [&](int l, const kn_attn_args_t &a) {
    EXPECT_EQ(as_set(h.listed(a, 0, s, l)), range_set(0, 7));
  }));
  ASSERT_NO_FATAL_FAILURE(h.expect_read_back(s));
  ASSERT_NO_FATAL_FAILURE(h.release_all({s}));
}

// --- branch ---

TEST_F(KvSelect, BranchFromFullPoolIntoArkvaleWithAnotherPageSize) {
  kv_pool_params_t sp = sel_params(KV_POLICY_FULL, 4, 0, 100);
  Harness src(sp);
  kv_pool_params_t dp = sel_params(KV_POLICY_ARKVALE, 8, 48, 100);  // 6 pages of 8
  dp.topk_pages = 2;
  Harness dst(dp);
  kv_seq_id_t s = src.new_seq();
  // scores per 8-token block (a destination page); keep 1, 4, 6 of middle 1..6 (70 tokens: pages 0..8)
  src.score_block = 8;
  src.tab[s][0] = {0.f, 9.f, 1.f, 2.f, 8.f, 3.f, 7.f, 0.5f, 0.25f};
  ASSERT_NO_FATAL_FAILURE(src.step({{s, 69, 0}}));
  ASSERT_NO_FATAL_FAILURE(src.step({{s, 1, 0}}));
  kv_seq_id_t d = -1;
  ASSERT_EQ(kv_seq_branch(dst.get(), src.get(), src.cpu.get(), s, &d), AK_OK) << kv_pool_errmsg(dst.get());
  ASSERT_EQ(kv_seq_n_tokens(dst.get(), d), 70);
  for (int l = 0; l < kLayers; l++) {
    dst.K[l][d] = src.K[l][s];
    dst.V[l][d] = src.V[l][s];
    std::vector<float> qs(kHeads * kHeadDim), qd(qs.size());
    ASSERT_EQ(kv_seq_last_query(src.get(), s, l, qs.data()), AK_OK);
    ASSERT_EQ(kv_seq_last_query(dst.get(), d, l, qd.data()), AK_OK);
    EXPECT_EQ(qs, qd);
    EXPECT_EQ(qd[0], 1.f);
  }
  ASSERT_NO_FATAL_FAILURE(dst.expect_read_back(d));
  kv_seq_stats_t ss;
  ASSERT_EQ(kv_seq_get_stats(dst.get(), d, &ss), AK_OK);
  EXPECT_EQ(ss.n_pages_resident, 9 + 6 + 6);
  EXPECT_EQ(ss.n_pages_backed_up, 2 * 8);
  EXPECT_EQ(kv_pool_check(dst.get()), AK_OK) << kv_pool_errmsg(dst.get());
  // The next decode step attends what the branch kept by the prompt's last query.
  dst.score_block = 8;
  dst.tab[d] = src.tab[s];
  ASSERT_NO_FATAL_FAILURE(dst.step({{d, 1, 0}}, [&](int l, const kn_attn_args_t &a) {
    std::set<int> got = as_set(dst.listed(a, 0, d, l));
    EXPECT_EQ(got, l == 0 ? range_set(0, 9) : pages({0, 1, 4, 6, 7, 8})) << "layer " << l;
  }));
  ASSERT_NO_FATAL_FAILURE(dst.release_all({d}));
  ASSERT_NO_FATAL_FAILURE(src.release_all({s}));
}

// An arkvale source with evicted pages branches too: its evicted tokens come from
// the backups.
TEST_F(KvSelect, BranchFromArkvaleReadsEvictedPagesFromBackups) {
  kv_pool_params_t sp = sel_params(KV_POLICY_ARKVALE, 4, 24, 100);
  sp.topk_pages = 2;
  Harness src(sp);
  Harness dst(sel_params(KV_POLICY_FULL, 8, 0, 100));
  kv_seq_id_t s = src.new_seq();
  fill_scenario(src, s);
  ASSERT_NO_FATAL_FAILURE(src.step({{s, 40, 0}}));
  ASSERT_EQ(kv_seq_compact(src.get(), s), AK_OK);
  ASSERT_NO_FATAL_FAILURE(src.step({{s, 1, 1}}));
  kv_seq_id_t d = -1;
  ASSERT_EQ(kv_seq_branch(dst.get(), src.get(), src.cpu.get(), s, &d), AK_OK) << kv_pool_errmsg(dst.get());
  for (int l = 0; l < kLayers; l++) {
    dst.K[l][d] = src.K[l][s];
    dst.V[l][d] = src.V[l][s];
  }
  ASSERT_NO_FATAL_FAILURE(dst.expect_read_back(d));
  kv_seq_stats_t ss;
  ASSERT_EQ(kv_seq_get_stats(dst.get(), d, &ss), AK_OK);
  EXPECT_EQ(ss.n_pages_resident, 3 * 6);
  ASSERT_NO_FATAL_FAILURE(dst.release_all({d}));
  ASSERT_NO_FATAL_FAILURE(src.release_all({s}));
}

TEST_F(KvSelect, BranchRejectsShapeMismatchLeavingDestinationUnchanged) {
  Harness src(sel_params(KV_POLICY_FULL, 4, 0, 100));
  kv_pool_params_t dp = sel_params(KV_POLICY_ARKVALE, 8, 48, 100);
  dp.n_heads = 2;
  Harness dst(dp);
  kv_seq_id_t s = src.new_seq();
  ASSERT_NO_FATAL_FAILURE(src.step({{s, 9, 0}}));
  kv_seq_id_t d = -1;
  EXPECT_EQ(kv_seq_branch(dst.get(), src.get(), src.cpu.get(), s, &d), AK_ERR_INVALID_ARG);
  EXPECT_NE(std::string(kv_pool_errmsg(dst.get())).find("pool shapes differ"), std::string::npos)
      << kv_pool_errmsg(dst.get());
  EXPECT_NE(std::string(kv_pool_errmsg(dst.get())).find("heads 2/4"), std::string::npos) << kv_pool_errmsg(dst.get());
  EXPECT_EQ(d, -1);
  kv_pool_stats_t ps;
  kv_pool_get_stats(dst.get(), &ps);
  EXPECT_EQ(ps.n_seqs, 0);
  EXPECT_EQ(ps.n_pages_used, 0);
  ASSERT_NO_FATAL_FAILURE(src.release_all({s}));
}

// --- accuracy tracking ---

TEST_F(KvSelect, TrackAccuracyCountsEveryTruePageWhenTheQueryIsAligned) {
  kv_pool_params_t p = sel_params(KV_POLICY_ARKVALE, 4, 24, 64);
  p.topk_pages = 2;
  p.track_accuracy = 1;
  Harness h(p);
  kv_seq_id_t s = h.new_seq();
  fill_scenario(h, s);
  ASSERT_NO_FATAL_FAILURE(h.step({{s, 40, 0}}));
  ASSERT_EQ(kv_seq_compact(h.get(), s), AK_OK);
  for (int i = 0; i < 6; i++) ASSERT_NO_FATAL_FAILURE(h.step({{s, 1, i % 2}}));
  kv_seq_stats_t ss;
  ASSERT_EQ(kv_seq_get_stats(h.get(), s, &ss), AK_OK);
  EXPECT_EQ(ss.work.topk_total, 6u * 2 * 2);  // 6 steps x 2 layers x k = 2
  EXPECT_EQ(ss.work.topk_selected, ss.work.topk_total);
  EXPECT_GT(ss.work.recalls, 0u);
  ASSERT_NO_FATAL_FAILURE(h.release_all({s}));
}

// --- bad input: each class its own case ---

TEST_F(KvSelect, RejectsBudgetNotAMultipleOfPageTokens) {
  kv_pool_params_t p = sel_params(KV_POLICY_ARKVALE, 4, 22, 64);
  kv_pool_t *pool = nullptr;
  ak_err_t err;
  EXPECT_EQ(kv_pool_create(&p, &err, &pool), AK_ERR_INVALID_ARG);
  EXPECT_EQ(pool, nullptr);
  EXPECT_NE(std::string(err.msg).find("arkvale: budget_tokens=22 is not a multiple of page_tokens=4"),
            std::string::npos) << err.msg;
  p = sel_params(KV_POLICY_QUEST, 8, 20, 64);
  EXPECT_EQ(kv_pool_create(&p, &err, &pool), AK_ERR_INVALID_ARG);
  EXPECT_NE(std::string(err.msg).find("quest: budget_tokens=20 is not a multiple of page_tokens=8"),
            std::string::npos) << err.msg;
}

TEST_F(KvSelect, RejectsBudgetBelowSinksPlusWindow) {
  kv_pool_params_t p = sel_params(KV_POLICY_ARKVALE, 4, 8, 64);
  kv_pool_t *pool = nullptr;
  ak_err_t err;
  EXPECT_EQ(kv_pool_create(&p, &err, &pool), AK_ERR_INVALID_ARG);
  EXPECT_NE(std::string(err.msg).find("arkvale: budget of 2 pages is below sinks (1) + window (2)"), std::string::npos)
      << err.msg;
  p = sel_params(KV_POLICY_STREAMING, 4, 8, 64);
  p.n_sink_pages = 2;
  EXPECT_EQ(kv_pool_create(&p, &err, &pool), AK_ERR_INVALID_ARG);
  EXPECT_NE(std::string(err.msg).find("streaming: budget of 2 pages is below sinks (2) + window (1)"),
            std::string::npos) << err.msg;
  p = sel_params(KV_POLICY_QUEST, 4, 4, 64);
  EXPECT_EQ(kv_pool_create(&p, &err, &pool), AK_ERR_INVALID_ARG);
  EXPECT_NE(std::string(err.msg).find("quest: budget of 1 pages must be >= 2"), std::string::npos) << err.msg;
  p = sel_params(KV_POLICY_ARKVALE, 4, 24, 64);
  p.n_window_pages = 0;
  EXPECT_EQ(kv_pool_create(&p, &err, &pool), AK_ERR_INVALID_ARG);
  EXPECT_NE(std::string(err.msg).find("n_window_pages=0 >= 1"), std::string::npos) << err.msg;
  EXPECT_EQ(pool, nullptr);
}

TEST_F(KvSelect, RejectsTopkOverTheMiddle) {
  kv_pool_params_t p = sel_params(KV_POLICY_ARKVALE, 4, 24, 64);
  p.topk_pages = 4;
  kv_pool_t *pool = nullptr;
  ak_err_t err;
  EXPECT_EQ(kv_pool_create(&p, &err, &pool), AK_ERR_INVALID_ARG);
  EXPECT_NE(std::string(err.msg).find("topk_pages=4 outside [0, 3] (the middle of a 6-page budget)"),
            std::string::npos) << err.msg;
  p.topk_pages = -1;
  EXPECT_EQ(kv_pool_create(&p, &err, &pool), AK_ERR_INVALID_ARG);
  EXPECT_NE(std::string(err.msg).find("topk_pages=-1"), std::string::npos) << err.msg;
  EXPECT_EQ(pool, nullptr);
}

TEST_F(KvSelect, RejectsQueryHeadsNotAMultipleOfKvHeads) {
  kv_pool_params_t p = sel_params(KV_POLICY_ARKVALE, 4, 24, 64);
  p.n_heads = 3;
  kv_pool_t *pool = nullptr;
  ak_err_t err;
  EXPECT_EQ(kv_pool_create(&p, &err, &pool), AK_ERR_INVALID_ARG);
  EXPECT_NE(std::string(err.msg).find("n_heads=3 is not a multiple of n_kv_heads=2"), std::string::npos) << err.msg;
  EXPECT_EQ(pool, nullptr);
}

TEST_F(KvSelect, RejectsUnknownPolicyNameQuotingIt) {
  ak_err_t err;
  kv_policy_t pol = KV_POLICY_FULL;
  EXPECT_EQ(kv_policy_parse("arkval", &err, &pol), AK_ERR_INVALID_ARG);
  EXPECT_NE(std::string(err.msg).find("\"arkval\""), std::string::npos) << err.msg;
  EXPECT_EQ(pol, KV_POLICY_FULL);
  EXPECT_EQ(kv_policy_parse("ArkVale", &err, &pol), AK_ERR_INVALID_ARG);  // exact names only
  EXPECT_NE(std::string(err.msg).find("\"ArkVale\""), std::string::npos) << err.msg;
  for (kv_policy_t want : {KV_POLICY_ARKVALE, KV_POLICY_STREAMING, KV_POLICY_QUEST}) {
    ASSERT_EQ(kv_policy_parse(kv_policy_name(want), &err, &pol), AK_OK);
    EXPECT_EQ(pol, want);
  }
}

TEST_F(KvSelect, ViewRejectsMissingOrMisshapedQueries) {
  Harness h(sel_params(KV_POLICY_ARKVALE, 4, 24, 64));
  kv_seq_id_t s = h.new_seq();
  ASSERT_EQ(h.begin({{s, 2, 0}}), AK_OK);
  std::vector<float> kv(2 * kRow, 0.f), q(2 * kHeads * kHeadDim, 0.f);
  ASSERT_EQ(kv_layer_append(h.get(), h.cpu.get(), 1, kv.data(), kv.data()), AK_OK);
  kn_attn_args_t a{};
  EXPECT_EQ(kv_layer_view(h.get(), 1, nullptr, kHeads, &a), AK_ERR_INVALID_ARG);
  EXPECT_NE(std::string(kv_pool_errmsg(h.get())).find("arkvale needs the queries"), std::string::npos)
      << kv_pool_errmsg(h.get());
  EXPECT_EQ(kv_layer_view(h.get(), 1, q.data(), 2, &a), AK_ERR_INVALID_ARG);
  EXPECT_NE(std::string(kv_pool_errmsg(h.get())).find("n_heads=2 but the pool was created for 4"), std::string::npos)
      << kv_pool_errmsg(h.get());
  h.abort();
  ASSERT_NO_FATAL_FAILURE(h.release_all({s}));
}

// --- arkvale: per-KV-head-group ranking ---

// Two KV heads, one query head each. Head 0's keys make pages 2 and 3 score very high,
// head 1's make pages 6 and 7 score modestly: the shard-wide mean ranks 2 and 3 first,
// while two groups each bring their own best (2 from head 0, 6 from head 1).
static std::set<int> grouped_topk_view(int32_t score_groups) {
  kv_pool_params_t p = kv_pool_params_default();
  p.n_layers = 1;
  p.n_kv_heads = 2;
  p.n_heads = 2;
  p.head_dim = 2;
  p.page_tokens = 4;
  p.n_pages = 64;
  p.max_seqs = 2;
  p.max_seq_tokens = 256;
  p.dtype = KN_F32;
  p.policy = KV_POLICY_ARKVALE;
  p.budget_tokens = 16;  // sink + 2 middle + window of 1
  p.n_full_layers = 0;
  p.n_window_pages = 1;
  p.topk_pages = 2;
  p.attend = KV_ATTEND_TOPK;
  p.score_groups = score_groups;
  p.check_every_step = 1;
  kv_pool_t *pool = nullptr;
  kn_cpu_t *cpu = nullptr;
  ak_err_t err;
  EXPECT_EQ(kv_pool_create(&p, &err, &pool), AK_OK) << err.msg;
  EXPECT_EQ(kn_cpu_create(1, nullptr, &cpu), AK_OK);
  const float head0[10] = {0, 0, 100, 90, 0, 0, 0, 0, 0, 0};
  const float head1[10] = {0, 0, 0, 0, 0, 0, 5, 4, 0, 0};
  kv_seq_id_t s;
  EXPECT_EQ(kv_seq_create(pool, &s), AK_OK);
  std::set<int> listed;
  for (int n_new : {40, 1}) {
    int32_t n32 = n_new;
    kv_batch_t b{1, &s, &n32};
    EXPECT_EQ(kv_step_begin(pool, &b), AK_OK) << kv_pool_errmsg(pool);
    int64_t n_tok = 0;
    const int32_t *pos = kv_step_positions(pool, &n_tok);
    std::vector<float> k(n_tok * 4), v(n_tok * 4, 1.f), q(n_tok * 4);
    for (int64_t t = 0; t < n_tok; t++) {
      int j = pos[t] / 4;
      k[t * 4 + 0] = j < 10 ? head0[j] : 0.f;  // head 0: score dim, position dim
      k[t * 4 + 1] = (float)pos[t];
      k[t * 4 + 2] = j < 10 ? head1[j] : 0.f;  // head 1
      k[t * 4 + 3] = (float)pos[t];
      q[t * 4 + 0] = 1.f;
      q[t * 4 + 2] = 1.f;
    }
    EXPECT_EQ(kv_layer_append(pool, cpu, 0, k.data(), v.data()), AK_OK) << kv_pool_errmsg(pool);
    kn_attn_args_t a{};
    EXPECT_EQ(kv_layer_view(pool, 0, q.data(), 2, &a), AK_OK) << kv_pool_errmsg(pool);
    if (n_new == 1) {
      const float *kb = (const float *)a.kv.k_base;
      for (int i = a.kv.indptr[0]; i < a.kv.indptr[1]; i++)
        listed.insert((int)kb[(int64_t)a.kv.indices[i] * a.kv.page_stride_elems + 1] / 4);
    }
    EXPECT_EQ(kv_step_end(pool), AK_OK) << kv_pool_errmsg(pool);
  }
  EXPECT_EQ(kv_seq_release(pool, s), AK_OK);
  kv_pool_destroy(pool);
  kn_cpu_destroy(cpu);
  return listed;
}

TEST_F(KvSelect, ScoreGroupsGiveEachKvHeadGroupItsOwnTopPages) {
  EXPECT_EQ(grouped_topk_view(1), pages({0, 2, 3, 10}));  // shard-wide mean: head 0 dominates
  EXPECT_EQ(grouped_topk_view(2), pages({0, 2, 6, 10}));  // each head's best, in turn
}

TEST_F(KvSelect, RejectsScoreGroupsThatDoNotDivideKvHeads) {
  kv_pool_params_t p = sel_params(KV_POLICY_ARKVALE, 4, 24, 64);
  p.score_groups = 3;
  kv_pool_t *pool = nullptr;
  ak_err_t err;
  EXPECT_EQ(kv_pool_create(&p, &err, &pool), AK_ERR_INVALID_ARG);
  EXPECT_NE(std::string(err.msg).find("score_groups=3 does not divide n_kv_heads=2"), std::string::npos) << err.msg;
  EXPECT_EQ(pool, nullptr);
}

// --- arkvale over the caller's page memory (the CUDA backend's layout) ---

namespace {
// page_ops over a host buffer standing in for device memory; counts the calls.
struct FakeDevice {
  std::vector<uint8_t> mem;
  size_t page_bytes = 0;
  int reads = 0, writes = 0, puts = 0, scores = 0;
  int32_t digest_floats = 0;  // per page: n_kv_heads * kv_digest_floats
  std::map<std::pair<int, int>, std::vector<float>> digests;  // (seq, layer) -> pages
  static ak_status_t put_digest(void *ctx, int32_t seq, int32_t layer, int64_t j, const float *d, ak_err_t *) {
    FakeDevice *dv = (FakeDevice *)ctx;
    std::vector<float> &v = dv->digests[{seq, layer}];
    if ((int64_t)v.size() < (j + 1) * dv->digest_floats) v.resize((j + 1) * dv->digest_floats);
    std::copy(d, d + dv->digest_floats, v.begin() + j * dv->digest_floats);
    dv->puts++;
    return AK_OK;
  }
  int batches = 0;
  static ak_status_t score_batch(void *ctx, int32_t layer, int32_t n, const int32_t *seqs, const float *q,
                                 const int64_t *n_pages, float *const *out, ak_err_t *err) {
    FakeDevice *dv = (FakeDevice *)ctx;
    dv->batches++;
    for (int32_t i = 0; i < n; i++) {
      ak_status_t st = score(ctx, seqs[i], layer, q + (int64_t)i * kHeads * kHeadDim, n_pages[i], out[i], err);
      dv->scores--;  // counted as a batch, not as single calls
      if (st < 0) return st;
    }
    return AK_OK;
  }
  static ak_status_t score(void *ctx, int32_t seq, int32_t layer, const float *q, int64_t n, float *out,
                           ak_err_t *err) {
    FakeDevice *dv = (FakeDevice *)ctx;
    dv->scores++;
    return kv_digest_score_pages(KV_DIGEST_CUBOID_MEAN, dv->digests[{seq, layer}].data(), n, q, kHeads, kKvHeads,
                                 kHeadDim, KV_SCORE_MEAN, err, out);
  }
  static ak_status_t read(void *ctx, int32_t pg, void *dst, ak_err_t *) {
    FakeDevice *d = (FakeDevice *)ctx;
    memcpy(dst, d->mem.data() + (size_t)pg * d->page_bytes, d->page_bytes);
    d->reads++;
    return AK_OK;
  }
  static ak_status_t write(void *ctx, int32_t pg, const void *src, ak_err_t *) {
    FakeDevice *d = (FakeDevice *)ctx;
    memcpy(d->mem.data() + (size_t)pg * d->page_bytes, src, d->page_bytes);
    d->writes++;
    return AK_OK;
  }
};
}  // namespace

// The same steps on a pool that owns its pages and on one over caller memory with
// page_ops give identical views (page ids, lengths), statistics and read-back K/V:
// every page byte the policy needs moves through the ops.
class KvSelectDevice : public KvSelect, public ::testing::WithParamInterface<bool> {};
INSTANTIATE_TEST_SUITE_P(DigestsWhere, KvSelectDevice, ::testing::Values(false, true),
                         [](const ::testing::TestParamInfo<bool> &i) { return i.param ? "OnDevice" : "OnHost"; });

TEST_P(KvSelectDevice, ArkvaleOverCallerPageMemoryMatchesOwnMemory) {
  kv_pool_params_t p = sel_params(KV_POLICY_ARKVALE, 4, 24, 64);
  p.topk_pages = 2;
  FakeDevice dev;
  dev.page_bytes = kv_page_bytes(&p);
  dev.mem.assign(dev.page_bytes * 64, 0);
  kv_page_ops_t ops{&dev, FakeDevice::read, FakeDevice::write, nullptr, nullptr, nullptr};
  if (GetParam()) {  // digests kept and scored "on the device", a layer's selections in one call
    ops.put_digest = FakeDevice::put_digest;
    ops.score_pages = FakeDevice::score;
    ops.score_pages_batch = FakeDevice::score_batch;
    dev.digest_floats = kKvHeads * kv_digest_floats(KV_DIGEST_CUBOID_MEAN, kHeadDim);
  }
  kv_pool_params_t pe = p;
  pe.page_memory = dev.mem.data();
  pe.page_ops = &ops;
  kv_pool_t *own = nullptr, *ext = nullptr;
  kn_cpu_t *cpu = nullptr;
  ak_err_t err;
  ASSERT_EQ(kv_pool_create(&p, &err, &own), AK_OK) << err.msg;
  ASSERT_EQ(kv_pool_create(&pe, &err, &ext), AK_OK) << err.msg;
  ASSERT_EQ(kn_cpu_create(1, nullptr, &cpu), AK_OK);
  kv_seq_id_t so, se;
  ASSERT_EQ(kv_seq_create(own, &so), AK_OK);
  ASSERT_EQ(kv_seq_create(ext, &se), AK_OK);
  std::mt19937 rng(7);
  std::normal_distribution<float> nd;
  std::vector<int32_t> plan{41};
  for (int i = 0; i < 30; i++) plan.push_back(1);
  for (int32_t n_new : plan) {
    int32_t n = n_new;
    kv_batch_t bo{1, &so, &n}, be{1, &se, &n};
    ASSERT_EQ(kv_step_begin(own, &bo), AK_OK) << kv_pool_errmsg(own);
    ASSERT_EQ(kv_step_begin(ext, &be), AK_OK) << kv_pool_errmsg(ext);
    for (int l = 0; l < kLayers; l++) {
      std::vector<float> k(n * kRow), v(n * kRow), q(n * kHeads * kHeadDim);
      for (float &x : k) x = nd(rng);
      for (float &x : v) x = nd(rng);
      for (float &x : q) x = nd(rng);
      ASSERT_EQ(kv_layer_append(own, cpu, l, k.data(), v.data()), AK_OK) << kv_pool_errmsg(own);
      // the caller stores K/V itself, in the pool layout, f32
      const int32_t *page, *slot;
      ASSERT_EQ(kv_layer_slots(ext, l, &page, &slot), AK_OK);
      for (int t = 0; t < n; t++)
        for (int h = 0; h < kKvHeads; h++)
          for (int d = 0; d < kHeadDim; d++) {
            float *base = (float *)(dev.mem.data() + (size_t)page[t] * dev.page_bytes);
            size_t off = ((size_t)h * p.page_tokens + slot[t]) * kHeadDim + d;
            base[off] = k[(t * kKvHeads + h) * kHeadDim + d];
            base[off + dev.page_bytes / 8] = v[(t * kKvHeads + h) * kHeadDim + d];  // V: half a page on
          }
      ASSERT_EQ(kv_layer_commit(ext, l), AK_OK) << kv_pool_errmsg(ext);
      kn_attn_args_t ao{}, ae{};
      ASSERT_EQ(kv_layer_view(own, l, q.data(), kHeads, &ao), AK_OK) << kv_pool_errmsg(own);
      ASSERT_EQ(kv_layer_view(ext, l, q.data(), kHeads, &ae), AK_OK) << kv_pool_errmsg(ext);
      ASSERT_EQ(ao.kv.indptr[1], ae.kv.indptr[1]);
      for (int i = 0; i < ao.kv.indptr[1]; i++) ASSERT_EQ(ao.kv.indices[i], ae.kv.indices[i]) << "layer " << l;
      ASSERT_EQ(ao.kv.last_page_len[0], ae.kv.last_page_len[0]);
      for (int t = 0; t < n; t++) ASSERT_EQ(ao.tok_kv_len[t], ae.tok_kv_len[t]);
    }
    ASSERT_EQ(kv_step_end(own), AK_OK) << kv_pool_errmsg(own);
    ASSERT_EQ(kv_step_end(ext), AK_OK) << kv_pool_errmsg(ext);
  }
  kv_seq_stats_t a, b;
  ASSERT_EQ(kv_seq_get_stats(own, so, &a), AK_OK);
  ASSERT_EQ(kv_seq_get_stats(ext, se, &b), AK_OK);
  EXPECT_EQ(a.work.recalls, b.work.recalls);
  EXPECT_EQ(a.work.evictions, b.work.evictions);
  EXPECT_EQ(a.work.backups, b.work.backups);
  EXPECT_GT(b.work.recalls, 0u);
  EXPECT_EQ(dev.writes, (int)b.work.recalls);  // every recall wrote its page through the ops
  EXPECT_GE(dev.reads, (int)b.work.backups);   // every fill read its page to digest and back it up
  if (GetParam()) {
    EXPECT_EQ(dev.puts, (int)b.work.backups);       // every filled page's digest went over
    EXPECT_GE(dev.scores + dev.batches, 1);
    EXPECT_EQ(dev.batches, 30 * (kLayers - 1));  // one batched call per budgeted layer and decode step
  }
  int64_t n_tok = kv_seq_n_tokens(own, so);
  for (int l = 0; l < kLayers; l++) {
    std::vector<float> ko(n_tok * kRow), ke(n_tok * kRow);
    ASSERT_EQ(kv_seq_read_kv(own, so, l, 0, n_tok, ko.data(), nullptr), AK_OK);
    ASSERT_EQ(kv_seq_read_kv(ext, se, l, 0, n_tok, ke.data(), nullptr), AK_OK) << kv_pool_errmsg(ext);
    ASSERT_EQ(ko, ke) << "layer " << l;
  }
  EXPECT_EQ(kv_seq_release(own, so), AK_OK);
  EXPECT_EQ(kv_seq_release(ext, se), AK_OK);
  kv_pool_destroy(own);
  kv_pool_destroy(ext);
  kn_cpu_destroy(cpu);
}

TEST_F(KvSelect, CallerPageMemoryNeedsPageOpsAndRefusesTokenPolicies) {
  kv_pool_params_t p = sel_params(KV_POLICY_ARKVALE, 4, 24, 64);
  std::vector<uint8_t> mem(kv_page_bytes(&p) * 64);
  p.page_memory = mem.data();
  kv_pool_t *pool = nullptr;
  ak_err_t err;
  EXPECT_EQ(kv_pool_create(&p, &err, &pool), AK_ERR_INVALID_ARG);
  EXPECT_NE(std::string(err.msg).find("needs page_ops"), std::string::npos) << err.msg;
  p.policy = KV_POLICY_H2O;
  EXPECT_EQ(kv_pool_create(&p, &err, &pool), AK_ERR_UNSUPPORTED);
  EXPECT_NE(std::string(err.msg).find("moves tokens inside pages"), std::string::npos) << err.msg;
  EXPECT_EQ(pool, nullptr);
}
