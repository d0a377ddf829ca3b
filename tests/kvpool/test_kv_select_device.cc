// Tests for kvpool/kv_select_device.c and its hooks (kv_pool_params_t.select_on_device):
// the caller makes each decode step's arkvale selection itself (kv_layer_select_row,
// its own scores and plan, the recalled backups gathered from the host tier's slab,
// kv_layer_apply_recalls) and must end up exactly where the pool's own selection
// (kv_select_for_view) would have put it.
//
//   oracle     two pools over host buffers standing in for device memory, fed the same
//              random K/V/queries: A selects itself, B leaves it to the test, whose plan
//              is written here from the rules in kvpool.h / kv_select.c (not copied
//              from the pool or the GPU test). Prefills past the budget (one chunked),
//              kv_seq_compact, 130 decode steps with a few aborted and retried; keys
//              with ties and NaN scores in two of the cases. After every step: the same
//              page tables, page bytes (and the bytes that were fed), and work counters.
//              Variants fill on the device (page_ops build_digest / backup_page): B's
//              digests are built by the fake from its own memory and its backups copied
//              by the fake into the tier slots the pool reserved, as a stream would (the
//              work lands at the next sync, the slot poisoned until then); the same
//              comparison holds and the fills fetch no page bytes; with backup_page alone,
//              or over a tier that cannot reserve, the pool falls back to read_page + put.
//   refusals   kv_layer_apply_recalls checks every entry before it changes anything.
//   fill fails a failing build_digest / backup_page fails the commit, holds no tier slot,
//              and the step retried after the abort succeeds.
//   create     select_on_device's parameter checks, and the calls it changes
//              (kv_pool_wants_queries, kv_layer_view's q, kv_seq_last_query,
//              kv_seq_branch).
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <limits>
#include <map>
#include <ostream>
#include <memory>
#include <random>
#include <set>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

extern "C" {
#include "ak_alloc.h"
#include "kernels.h"
#include "kvpool.h"
}

namespace {
constexpr int kLayers = 3, kFullLayers = 1, kKvHeads = 2, kHeads = 4, kHeadDim = 8;
constexpr int kRow = kKvHeads * kHeadDim;  // floats of one token's K (or V) in one layer
constexpr int kQRow = kHeads * kHeadDim;   // floats of one token's query in one layer

struct PoolDel {
  void operator()(kv_pool_t *p) const { kv_pool_destroy(p); }
};
struct TierDel {
  void operator()(kv_tier_t *t) const { kv_tier_destroy(t); }
};
struct CpuDel {
  void operator()(kn_cpu_t *c) const { kn_cpu_destroy(c); }
};
struct FreeDel {
  void operator()(void *p) const { free(p); }
};
using PoolPtr = std::unique_ptr<kv_pool_t, PoolDel>;
using TierPtr = std::unique_ptr<kv_tier_t, TierDel>;
using CpuPtr = std::unique_ptr<kn_cpu_t, CpuDel>;
using SlabPtr = std::unique_ptr<unsigned char, FreeDel>;

// 3 layers (layer 0 full), 2 KV heads, 4 query heads, head_dim 8, f32 pages.
kv_pool_params_t dev_params(int32_t page_tokens, int32_t budget_pages, int32_t n_sink, int32_t n_window,
                            int32_t topk, int64_t n_pages) {
  kv_pool_params_t p = kv_pool_params_default();
  p.n_layers = kLayers;
  p.n_kv_heads = kKvHeads;
  p.n_heads = kHeads;
  p.head_dim = kHeadDim;
  p.page_tokens = page_tokens;
  p.n_pages = n_pages;
  p.max_seqs = 4;
  p.max_seq_tokens = 320;
  p.dtype = KN_F32;
  p.policy = KV_POLICY_ARKVALE;
  p.budget_tokens = budget_pages * page_tokens;
  p.n_full_layers = kFullLayers;
  p.n_sink_pages = n_sink;
  p.n_window_pages = n_window;
  p.topk_pages = topk;
  p.check_every_step = 1;
  return p;
}

// Page memory on the host standing in for the device, and page_ops over it. Digests
// arrive through put_digest and are scored here with kv_digest_score_pages, as a device
// backend would. With select_on_device the pool passes q == NULL to score_pages: the
// query then is the last one the test fed for (seq, layer) (last_q).
struct FakeDevice {
  std::vector<uint8_t> mem;
  size_t page_bytes = 0;
  int32_t page_tokens = 0;
  kv_digest_kind_t kind = KV_DIGEST_DEFAULT;
  kv_score_agg_t agg = KV_SCORE_MEAN;
  int32_t digest_floats = 0;   // per page: n_kv_heads * kv_digest_floats
  bool null_q = false;         // score_pages must get q == NULL (select_on_device) or never
  std::map<std::pair<int, int>, std::vector<float>> digests;  // (seq, layer) -> [page][digest_floats]
  std::map<std::pair<int, int>, std::vector<float>> last_q;   // (seq, layer) -> [n_heads * head_dim]
  int reads = 0, writes = 0, puts = 0, scores = 0, batches = 0;
  kv_page_ops_t ops{};
  // Fills on the device (fill_on_device): build_digest / backup_page calls, and the
  // emulated stream. With defer, each call's work is taken at the call (the page as the
  // stream would see it then) but lands later, at sync(): a digest is not scoreable and
  // a backup slot holds 0xFF bytes (NaN) until then. sync() runs at every read_page,
  // write_page and score (they wait for the stream), when the test reads scores or the
  // slab as a device would (in stream order), and before kv_step_end/abort (the worker
  // synchronizes there).
  int builds = 0, backups = 0, syncs_with_work = 0;
  bool defer = false;
  int fail_build_at = -1, fail_backup_at = -1;  // the call (0-based) that fails, or -1
  int32_t n_layers = 0;
  int64_t n_pages = 0;
  const unsigned char *slab = nullptr;  // where backup_page's dst must be a slot, if set
  size_t slab_bytes = 0;
  std::vector<std::function<void()>> pending;
  std::set<const void *> pending_dst;   // slots with a copy in flight

  // digests_here: put_digest and score_pages (else the pool keeps and scores digests);
  // batch: score_pages_batch too.
  FakeDevice(const kv_pool_params_t &p, bool digests_here, bool batch) {
    page_bytes = kv_page_bytes(&p);
    page_tokens = p.page_tokens;
    n_layers = p.n_layers;
    n_pages = p.n_pages;
    kind = p.digest;
    agg = p.score_agg;
    digest_floats = kKvHeads * kv_digest_floats(p.digest, kHeadDim);
    mem.assign(page_bytes * (size_t)p.n_pages, 0);
    ops.ctx = this;
    ops.read_page = read;
    ops.write_page = write;
    if (digests_here) {
      ops.put_digest = put_digest;
      ops.score_pages = score;
      if (batch) ops.score_pages_batch = score_batch;
    }
  }
  void fill_on_device(bool build, bool backup) {
    if (build) ops.build_digest = build_digest;
    if (backup) ops.backup_page = backup_page;
  }
  void sync() {
    if (!pending.empty()) syncs_with_work++;
    for (auto &f : pending) f();
    pending.clear();
    pending_dst.clear();
  }
  float *page(int32_t pg) { return (float *)(mem.data() + (size_t)pg * page_bytes); }
  const float *page(int32_t pg) const { return (const float *)(mem.data() + (size_t)pg * page_bytes); }

  static ak_status_t read(void *ctx, int32_t pg, void *dst, ak_err_t *) {
    FakeDevice *d = (FakeDevice *)ctx;
    d->sync();
    memcpy(dst, d->mem.data() + (size_t)pg * d->page_bytes, d->page_bytes);
    d->reads++;
    return AK_OK;
  }
  static ak_status_t write(void *ctx, int32_t pg, const void *src, ak_err_t *) {
    FakeDevice *d = (FakeDevice *)ctx;
    d->sync();
    memcpy(d->mem.data() + (size_t)pg * d->page_bytes, src, d->page_bytes);
    d->writes++;
    return AK_OK;
  }
  static ak_status_t put_digest(void *ctx, int32_t seq, int32_t layer, int64_t j, const float *dg, ak_err_t *) {
    FakeDevice *d = (FakeDevice *)ctx;
    std::vector<float> &v = d->digests[{seq, layer}];
    if ((int64_t)v.size() < (j + 1) * d->digest_floats) v.resize((size_t)(j + 1) * d->digest_floats);
    std::copy(dg, dg + d->digest_floats, v.begin() + j * d->digest_floats);
    d->puts++;
    return AK_OK;
  }
  // Scores of pages [0, n) of (seq, layer) against q [n_heads * head_dim].
  ak_status_t score_with(int32_t seq, int32_t layer, const float *q, int64_t n, float *out, ak_err_t *err) {
    const std::vector<float> &v = digests[{seq, layer}];
    if ((int64_t)v.size() < n * digest_floats) {
      ADD_FAILURE() << "scores of " << n << " pages asked, " << v.size() / digest_floats << " digests received (seq "
                    << seq << " layer " << layer << ")";
      return AK_ERR(err, AK_ERR_INTERNAL, "digests missing");
    }
    return kv_digest_score_pages(kind, v.data(), n, q, kHeads, kKvHeads, kHeadDim, agg, err, out);
  }
  static ak_status_t score(void *ctx, int32_t seq, int32_t layer, const float *q, int64_t n, float *out,
                           ak_err_t *err) {
    FakeDevice *d = (FakeDevice *)ctx;
    d->sync();
    d->scores++;
    if (d->null_q != (q == nullptr)) {
      ADD_FAILURE() << "score_pages got q " << (q ? "set" : "NULL") << " (seq " << seq << " layer " << layer << ")";
      return AK_ERR(err, AK_ERR_INTERNAL, "unexpected q");
    }
    if (!q) {
      auto it = d->last_q.find({seq, layer});
      if (it == d->last_q.end()) {
        ADD_FAILURE() << "score_pages(q == NULL) before any query of seq " << seq << " layer " << layer;
        return AK_ERR(err, AK_ERR_INTERNAL, "no query yet");
      }
      q = it->second.data();
    }
    return d->score_with(seq, layer, q, n, out, err);
  }
  static ak_status_t score_batch(void *ctx, int32_t layer, int32_t n, const int32_t *seqs, const float *q,
                                 const int64_t *n_pages, float *const *out, ak_err_t *err) {
    FakeDevice *d = (FakeDevice *)ctx;
    d->sync();
    d->batches++;
    if (d->null_q) {
      ADD_FAILURE() << "score_pages_batch called on a select_on_device pool";
      return AK_ERR(err, AK_ERR_INTERNAL, "unexpected batch");
    }
    for (int32_t i = 0; i < n; i++)
      AK_TRY(d->score_with(seqs[i], layer, q + (int64_t)i * kQRow, n_pages[i], out[i], err));
    return AK_OK;
  }
  // Digests physical page pg's keys (all page_tokens of them: the page is full) with
  // kv_digest_build, into the store score_pages reads, as (seq, layer, page j).
  static ak_status_t build_digest(void *ctx, int32_t seq, int32_t layer, int64_t j, int32_t pg, ak_err_t *err) {
    FakeDevice *d = (FakeDevice *)ctx;
    if (d->builds++ == d->fail_build_at) return AK_ERR(err, AK_ERR_CUDA, "injected digest failure (page %d)", pg);
    if (seq < 0 || layer < kFullLayers || layer >= d->n_layers || j < 0 || pg < 0 || pg >= d->n_pages) {
      ADD_FAILURE() << "build_digest(seq " << seq << ", layer " << layer << ", page " << j << ", phys " << pg << ")";
      return AK_ERR(err, AK_ERR_INTERNAL, "bad build_digest arguments");
    }
    const int32_t pt = d->page_tokens;
    std::vector<float> keys((size_t)pt * kRow);  // [page_tokens][n_kv_heads][head_dim], from [h][t][d]
    const float *src = d->page(pg);
    for (int32_t t = 0; t < pt; t++)
      for (int h = 0; h < kKvHeads; h++)
        std::copy(src + ((size_t)h * pt + t) * kHeadDim, src + ((size_t)h * pt + t + 1) * kHeadDim,
                  keys.begin() + ((size_t)t * kKvHeads + h) * kHeadDim);
    std::vector<float> dg((size_t)d->digest_floats);
    AK_TRY(kv_digest_build(d->kind, keys.data(), pt, kKvHeads, kHeadDim, err, dg.data()));
    auto land = [d, seq, layer, j, dg]() {
      std::vector<float> &v = d->digests[{seq, layer}];
      if ((int64_t)v.size() < (j + 1) * d->digest_floats) v.resize((size_t)(j + 1) * d->digest_floats);
      std::copy(dg.begin(), dg.end(), v.begin() + j * d->digest_floats);
    };
    if (d->defer)
      d->pending.push_back(land);
    else
      land();
    return AK_OK;
  }
  // Copies physical page pg into dst, which must be a slot of the caller's slab.
  static ak_status_t backup_page(void *ctx, int32_t pg, void *dst, ak_err_t *err) {
    FakeDevice *d = (FakeDevice *)ctx;
    if (d->backups++ == d->fail_backup_at) return AK_ERR(err, AK_ERR_CUDA, "injected copy failure (page %d)", pg);
    if (pg < 0 || pg >= d->n_pages || !dst) {
      ADD_FAILURE() << "backup_page(" << pg << ", " << dst << ")";
      return AK_ERR(err, AK_ERR_INTERNAL, "bad backup_page arguments");
    }
    if (d->slab) {
      const unsigned char *b = (const unsigned char *)dst;
      if (b < d->slab || b + d->page_bytes > d->slab + d->slab_bytes || (size_t)(b - d->slab) % d->page_bytes) {
        ADD_FAILURE() << "backup_page dst " << dst << " is not a slot of the tier's slab";
        return AK_ERR(err, AK_ERR_INTERNAL, "dst outside the slab");
      }
    }
    if (!d->pending_dst.insert(dst).second) ADD_FAILURE() << "slot " << dst << " handed out twice before a sync";
    std::vector<uint8_t> snap(d->mem.begin() + (int64_t)pg * (int64_t)d->page_bytes,
                              d->mem.begin() + (int64_t)(pg + 1) * (int64_t)d->page_bytes);
    if (!d->defer) {
      memcpy(dst, snap.data(), snap.size());
      return AK_OK;
    }
    memset(dst, 0xFF, d->page_bytes);  // not there yet: whoever reads it early gets NaNs
    d->pending.push_back([dst, snap]() { memcpy(dst, snap.data(), snap.size()); });
    return AK_OK;
  }
};

// A tier that can only copy blobs in (reserve NULL), over another tier whose ids it
// passes through (so kv_tier_host_slot still names the inner host tier's slots).
struct PutOnlyTier {
  kv_tier_t base;
  kv_tier_t *inner;
  int puts = 0;
  static PutOnlyTier *of(kv_tier_t *t) { return (PutOnlyTier *)t->impl; }
  static ak_status_t pass(kv_tier_t *t, ak_status_t st) {
    if (st < 0) return AK_ERR(&t->err, st, "%s", kv_tier_errmsg(of(t)->inner));
    return st;
  }
  static ak_status_t put(kv_tier_t *t, const void *src, size_t n, kv_backup_id_t *id_p) {
    of(t)->puts++;
    return pass(t, kv_tier_put(of(t)->inner, src, n, id_p));
  }
  static ak_status_t get(kv_tier_t *t, kv_backup_id_t id, void *dst, size_t n) {
    return pass(t, kv_tier_get(of(t)->inner, id, dst, n));
  }
  static ak_status_t free_(kv_tier_t *t, kv_backup_id_t id) { return pass(t, kv_tier_free(of(t)->inner, id)); }
  static void stats(const kv_tier_t *t, kv_tier_stats_t *s) { kv_tier_stats(((PutOnlyTier *)t->impl)->inner, s); }
  static void destroy(kv_tier_t *t) { delete of(t); }  // the inner tier is not ours
  static const kv_tier_ops_t ops;
  static kv_tier_t *wrap(kv_tier_t *inner) {
    PutOnlyTier *w = new PutOnlyTier();
    w->base.ops = &ops;
    w->base.impl = w;
    ak_err_clear(&w->base.err);
    w->inner = inner;
    return &w->base;
  }
};
const kv_tier_ops_t PutOnlyTier::ops = {"put-only", put, get, free_, stats, destroy, nullptr};

// ArkVale's per-step plan for one layer of one sequence, from the rules (kvpool.h, "arkvale"):
// candidates are logical pages [ns, N - nw), ranked by score (higher first, ties to the higher
// page, NaN lowest); the top k are wanted resident. The missing ones, in ranking order, each
// take the physical page of the next victim; victims are the resident candidates outside the
// top k except the best (n_others - n_missing) of them, in ascending page order.
// Returns (page, victim) pairs.
bool ranks_above(const std::vector<float> &s, int a, int b) {
  bool na = std::isnan(s[a]), nb = std::isnan(s[b]);
  if (na || nb) return na && nb ? a > b : nb;
  if (s[a] != s[b]) return s[a] > s[b];
  return a > b;
}
std::vector<std::pair<int, int>> plan_recalls(const std::vector<float> &score, const int32_t *phys, int N, int ns,
                                              int nw, int k) {
  std::vector<int> ranked;
  for (int j = ns; j < N - nw; j++) ranked.push_back(j);
  std::sort(ranked.begin(), ranked.end(), [&](int a, int b) { return ranks_above(score, a, b); });
  k = std::min<int>(k, (int)ranked.size());
  std::vector<int> missing, others;  // others: resident candidates outside the top, best first
  for (int i = 0; i < (int)ranked.size(); i++) {
    bool res = phys[ranked[i]] != KV_PAGE_NONE;
    if (i < k && !res) missing.push_back(ranked[i]);
    if (i >= k && res) others.push_back(ranked[i]);
  }
  EXPECT_LE(missing.size(), others.size()) << "more pages to recall than slots to take";
  size_t n_stay = others.size() - std::min(others.size(), missing.size());
  std::vector<int> victims(others.begin() + (long)n_stay, others.end());
  std::sort(victims.begin(), victims.end());
  std::vector<std::pair<int, int>> out;
  for (size_t r = 0; r < missing.size() && r < victims.size(); r++) out.push_back({missing[r], victims[r]});
  return out;
}

// Stores the open step's K/V of one layer ([n_tok][n_kv_heads][head_dim] f32) where the
// pool's kv_layer_slots says, in the page layout of kvpool.h.
void store_kv(FakeDevice &dev, const int32_t *page, const int32_t *slot, const std::vector<float> &k,
              const std::vector<float> &v, int64_t n_tok) {
  const size_t half = dev.page_bytes / sizeof(float) / 2;
  for (int64_t t = 0; t < n_tok; t++)
    for (int h = 0; h < kKvHeads; h++)
      for (int d = 0; d < kHeadDim; d++) {
        float *base = dev.page(page[t]);
        size_t off = ((size_t)h * dev.page_tokens + (size_t)slot[t]) * kHeadDim + d;
        base[off] = k[((size_t)t * kKvHeads + h) * kHeadDim + d];
        base[half + off] = v[((size_t)t * kKvHeads + h) * kHeadDim + d];
      }
}

// Bitwise float equality (keys may hold NaNs).
bool same_bits(float a, float b) { return memcmp(&a, &b, sizeof a) == 0; }

// Every test leaves the host allocator where it found it once its pools are gone.
class KvSelectOnDevice : public ::testing::Test {
 protected:
  void SetUp() override { host_before_ = ak_alloc_outstanding_bytes(AK_MEM_HOST); }
  void TearDown() override { EXPECT_EQ(ak_alloc_outstanding_bytes(AK_MEM_HOST), host_before_); }
  int64_t host_before_ = 0;
};

// --- the oracle: pool A selects itself, pool B leaves it to the test ---

struct OracleCase {
  const char *name;
  int32_t page_tokens, budget_pages, n_sink, n_window, topk;
  bool a_digests_on_ops;  // A keeps digests through page_ops (score_pages_batch) or on the host
  bool ties_nan;          // each page's keys one of four rows per layer (pages with the same row tie)
                          // and now and then a NaN (a NaN score, which ranks lowest)
  int32_t prefill[4];     // seq 0 | seq 1 first chunk | seq 1 second chunk | seq 2
  // fills on the device (B only)
  bool build_digest = false;  // B's page_ops have build_digest
  bool backup_page = false;   // B's page_ops have backup_page
  bool reserve = true;        // B's tier can reserve (else a put-only tier over the host tier)
  bool defer = false;         // B's fake device defers that work to its next sync
  bool a_build_digest = false;  // A's page_ops have build_digest too (never called: A selects itself)
};
void PrintTo(const OracleCase &c, std::ostream *os) { *os << c.name; }

class Twin {
 public:
  kv_pool_params_t pa{}, pb{};
  std::unique_ptr<FakeDevice> da, db;
  SlabPtr slab;  // B's backup tier slab, the caller's (malloc'd here, freed here)
  size_t slot_bytes = 0;
  int64_t n_slots = 0;
  TierPtr tier;  // declared before the pools: destroyed after them
  TierPtr put_only;  // with !reserve: B's tier, over `tier`
  PoolPtr a, b;
  std::vector<kv_seq_id_t> seqs;
  std::map<std::pair<int, int>, std::vector<float>> K, V;  // (seq, layer) -> [n_tok][n_kv_heads][head_dim]
  std::mt19937 rng{12345};
  std::normal_distribution<float> nd;
  bool ties_nan = false;
  static constexpr int kTieRows = 4;
  std::vector<std::vector<float>> tie_rows[kLayers];  // per layer: kTieRows K rows [n_kv_heads][head_dim]
  std::map<std::tuple<kv_seq_id_t, int, int64_t>, int> tie_pick;  // (seq, layer, page) -> row
  uint64_t applied = 0;     // recalls the test applied to B
  uint64_t tier_checks = 0; // recalls whose slab bytes were also checked with kv_tier_get
  uint64_t fill_reads = 0;  // B's read_page calls inside kv_layer_commit (its fills)
  uint64_t kv_checks = 0;   // tokens read back with kv_seq_read_kv from both pools
  int step_no = 0;

  void setup(const OracleCase &c) {
    pa = dev_params(c.page_tokens, c.budget_pages, c.n_sink, c.n_window, c.topk, 256);
    ties_nan = c.ties_nan;
    for (auto &rows : tie_rows)
      for (int r = 0; r < kTieRows; r++) {
        rows.emplace_back(kRow);
        for (float &x : rows.back()) x = nd(rng);
      }
    pb = pa;
    da.reset(new FakeDevice(pa, c.a_digests_on_ops, true));
    db.reset(new FakeDevice(pb, true, true));  // B's batch scorer fails the test if called
    db->null_q = true;
    db->fill_on_device(c.build_digest, c.backup_page);
    db->defer = c.defer;
    if (c.a_build_digest) da->fill_on_device(true, false);
    pa.page_memory = da->mem.data();
    pa.page_ops = &da->ops;
    pb.page_memory = db->mem.data();
    pb.page_ops = &db->ops;
    pb.select_on_device = 1;
    slot_bytes = kv_page_bytes(&pb);
    n_slots = (int64_t)pb.max_seq_tokens / pb.page_tokens * (kLayers - kFullLayers) * pb.max_seqs;
    slab.reset((unsigned char *)malloc((size_t)n_slots * slot_bytes));
    ASSERT_TRUE(slab);
    kv_tier_host_params_t tp = kv_tier_host_params_default();
    tp.capacity_bytes = (size_t)n_slots * slot_bytes;
    tp.slot_bytes = slot_bytes;
    tp.slab = slab.get();
    ak_err_t err;
    kv_tier_t *t = nullptr;
    ASSERT_EQ(kv_tier_host_create(&tp, &err, &t), AK_OK) << err.msg;
    tier.reset(t);
    pb.tier = t;
    if (!c.reserve) {
      put_only.reset(PutOnlyTier::wrap(t));
      pb.tier = put_only.get();
    }
    db->slab = slab.get();
    db->slab_bytes = (size_t)n_slots * slot_bytes;
    kv_pool_t *x = nullptr;
    ASSERT_EQ(kv_pool_create(&pa, &err, &x), AK_OK) << err.msg;
    a.reset(x);
    ASSERT_EQ(kv_pool_create(&pb, &err, &x), AK_OK) << err.msg;
    b.reset(x);
    EXPECT_EQ(kv_pool_wants_queries(a.get()), 1);
    EXPECT_EQ(kv_pool_wants_queries(b.get()), 0);
    ASSERT_EQ(kv_pool_topk_pages(a.get()), kv_pool_topk_pages(b.get()));
    for (int i = 0; i < 3; i++) {
      kv_seq_id_t sa = -1, sb = -2;
      ASSERT_EQ(kv_seq_create(a.get(), &sa), AK_OK);
      ASSERT_EQ(kv_seq_create(b.get(), &sb), AK_OK);
      ASSERT_EQ(sa, sb);  // the same ids: the page tables compare seq by seq
      seqs.push_back(sa);
    }
  }

  // One step of both pools over the same random K/V/q; B's selections made by the test.
  // abort: kv_step_abort instead of kv_step_end (after every layer's view and recalls).
  void step(const std::vector<std::pair<kv_seq_id_t, int32_t>> &batch, bool abort) {
    step_no++;
    SCOPED_TRACE("step " + std::to_string(step_no));
    std::vector<kv_seq_id_t> ids;
    std::vector<int32_t> n_new;
    std::vector<int64_t> tok0;
    for (auto &e : batch) {
      ids.push_back(e.first);
      n_new.push_back(e.second);
      tok0.push_back(kv_seq_n_tokens(b.get(), e.first));
    }
    kv_batch_t bt{(int32_t)ids.size(), ids.data(), n_new.data()};
    ASSERT_EQ(kv_step_begin(a.get(), &bt), AK_OK) << kv_pool_errmsg(a.get());
    ASSERT_EQ(kv_step_begin(b.get(), &bt), AK_OK) << kv_pool_errmsg(b.get());
    int64_t n_tok = 0, n_tok_b = 0;
    const int32_t *pos_a = kv_step_positions(a.get(), &n_tok);
    const int32_t *pos_b = kv_step_positions(b.get(), &n_tok_b);
    ASSERT_EQ(n_tok, n_tok_b);
    for (int64_t t = 0; t < n_tok; t++) ASSERT_EQ(pos_a[t], pos_b[t]);
    std::vector<kv_seq_id_t> tok_seq;  // the sequence of each step token
    for (auto &e : batch) tok_seq.insert(tok_seq.end(), (size_t)e.second, e.first);
    // the step's rows, kept for the truth once the step ends
    std::vector<std::vector<float>> step_k(kLayers), step_v(kLayers);
    for (int l = 0; l < kLayers; l++) {
      SCOPED_TRACE("layer " + std::to_string(l));
      std::vector<float> k((size_t)n_tok * kRow), v((size_t)n_tok * kRow), q((size_t)n_tok * kQRow);
      for (float &x : k) x = nd(rng);
      for (float &x : v) x = nd(rng);
      for (float &x : q) x = nd(rng);
      if (ties_nan)
        for (int64_t t = 0; t < n_tok; t++) {
          // every token of a page has its page's row, one of four per layer: pages with the
          // same row have the same digest and tie
          auto key = std::make_tuple(tok_seq[t], l, (int64_t)pos_a[t] / pb.page_tokens);
          auto it = tie_pick.find(key);
          if (it == tie_pick.end()) it = tie_pick.insert({key, (int)(rng() % kTieRows)}).first;
          const std::vector<float> &src = tie_rows[l][it->second];
          std::copy(src.begin(), src.end(), k.begin() + t * kRow);
          if (rng() % 50 == 0) k[(size_t)t * kRow + rng() % kRow] = std::numeric_limits<float>::quiet_NaN();
        }
      step_k[l] = k;
      step_v[l] = v;
      const int32_t *pg_a, *sl_a, *pg_b, *sl_b;
      ASSERT_EQ(kv_layer_slots(a.get(), l, &pg_a, &sl_a), AK_OK) << kv_pool_errmsg(a.get());
      ASSERT_EQ(kv_layer_slots(b.get(), l, &pg_b, &sl_b), AK_OK) << kv_pool_errmsg(b.get());
      for (int64_t t = 0; t < n_tok; t++) {
        ASSERT_EQ(pg_a[t], pg_b[t]) << "token " << t;
        ASSERT_EQ(sl_a[t], sl_b[t]) << "token " << t;
      }
      store_kv(*da, pg_a, sl_a, k, v, n_tok);
      store_kv(*db, pg_b, sl_b, k, v, n_tok);
      ASSERT_EQ(kv_layer_commit(a.get(), l), AK_OK) << kv_pool_errmsg(a.get());
      const int reads0 = db->reads;
      ASSERT_EQ(kv_layer_commit(b.get(), l), AK_OK) << kv_pool_errmsg(b.get());
      fill_reads += (uint64_t)(db->reads - reads0);
      // the caller's last query of each sequence at this layer: that of its last token
      int64_t t = 0;
      for (size_t i = 0; i < ids.size(); i++) {
        t += n_new[i];
        db->last_q[{ids[i], l}].assign(q.begin() + (t - 1) * kQRow, q.begin() + t * kQRow);
      }
      kn_attn_args_t va{}, vb{};
      ASSERT_EQ(kv_layer_view(a.get(), l, q.data(), kHeads, &va), AK_OK) << kv_pool_errmsg(a.get());
      ASSERT_EQ(kv_layer_view(b.get(), l, nullptr, 0, &vb), AK_OK) << kv_pool_errmsg(b.get());
      // B's view lists the resident pages before the test's recalls; a recall reuses its
      // victim's physical page, so the set of listed pages is A's (A has recalled) and the
      // last page (the window's partly filled one, never a candidate) is the same.
      ASSERT_EQ(va.n_tok, vb.n_tok);
      for (size_t i = 0; i < ids.size(); i++) {
        ASSERT_EQ(va.kv.indptr[i + 1] - va.kv.indptr[i], vb.kv.indptr[i + 1] - vb.kv.indptr[i]) << "seq " << ids[i];
        std::multiset<int32_t> sa(va.kv.indices + va.kv.indptr[i], va.kv.indices + va.kv.indptr[i + 1]);
        std::multiset<int32_t> sb(vb.kv.indices + vb.kv.indptr[i], vb.kv.indices + vb.kv.indptr[i + 1]);
        EXPECT_EQ(sa, sb) << "seq " << ids[i];
        EXPECT_EQ(va.kv.indices[va.kv.indptr[i + 1] - 1], vb.kv.indices[vb.kv.indptr[i + 1] - 1]);
        EXPECT_EQ(va.kv.last_page_len[i], vb.kv.last_page_len[i]);
      }
      for (int64_t u = 0; u < n_tok; u++) EXPECT_EQ(va.tok_kv_len[u], vb.tok_kv_len[u]) << "token " << u;

      for (int32_t i = 0; i < (int32_t)ids.size(); i++) {
        ASSERT_NO_FATAL_FAILURE(select_on_b(l, i, ids[i], tok0[i], n_new[i]));
        kv_select_row_t ra;
        ASSERT_EQ(kv_layer_select_row(a.get(), l, i, &ra), AK_OK);
        EXPECT_EQ(ra.selects, 0) << "pool A selects itself";
        // right after the selection, the layer's table is A's
        const int32_t *ta, *tb;
        int64_t na = 0, nb = 0;
        ASSERT_EQ(kv_seq_page_table(a.get(), ids[i], l, &ta, &na), AK_OK);
        ASSERT_EQ(kv_seq_page_table(b.get(), ids[i], l, &tb, &nb), AK_OK);
        ASSERT_EQ(na, nb);
        ASSERT_EQ(std::vector<int32_t>(ta, ta + na), std::vector<int32_t>(tb, tb + nb)) << "seq " << ids[i];
      }
    }
    db->sync();  // the worker waits for its stream before it tells the pool
    if (abort) {
      kv_step_abort(a.get());
      kv_step_abort(b.get());
      return;
    }
    ASSERT_EQ(kv_step_end(a.get()), AK_OK) << kv_pool_errmsg(a.get());
    ASSERT_EQ(kv_step_end(b.get()), AK_OK) << kv_pool_errmsg(b.get());
    for (int l = 0; l < kLayers; l++) {
      int64_t t = 0;
      for (size_t i = 0; i < ids.size(); i++) {
        std::vector<float> &kr = K[{ids[i], l}], &vr = V[{ids[i], l}];
        kr.insert(kr.end(), step_k[l].begin() + t * kRow, step_k[l].begin() + (t + n_new[i]) * kRow);
        vr.insert(vr.end(), step_v[l].begin() + t * kRow, step_v[l].begin() + (t + n_new[i]) * kRow);
        t += n_new[i];
      }
    }
  }

  // B's selection for step sequence i at layer l: scores from the digests B put, the plan,
  // the backups copied from the slab into the victims' pages, then kv_layer_apply_recalls.
  void select_on_b(int32_t l, int32_t i, kv_seq_id_t seq, int64_t tok0, int32_t n_new) {
    kv_select_row_t row;
    ASSERT_EQ(kv_layer_select_row(b.get(), l, i, &row), AK_OK) << kv_pool_errmsg(b.get());
    const int pt = pb.page_tokens;
    const int64_t N = (tok0 + n_new + pt - 1) / pt;
    const int budget = pb.budget_tokens / pt;
    const bool want = l >= kFullLayers && n_new == 1 && N > budget;
    ASSERT_EQ(row.selects != 0, want) << "seq " << seq << " n_new " << n_new << " pages " << N;
    ASSERT_EQ(row.seq, seq);
    ASSERT_EQ(row.n_pages, N);
    ASSERT_EQ(row.n_sink, pb.n_sink_pages);
    ASSERT_EQ(row.n_window, pb.n_window_pages);
    const int32_t *tb;
    int64_t nb = 0;
    ASSERT_EQ(kv_seq_page_table(b.get(), seq, l, &tb, &nb), AK_OK);
    ASSERT_EQ(nb, N);
    ASSERT_EQ(std::vector<int32_t>(row.phys, row.phys + N), std::vector<int32_t>(tb, tb + N));
    if (!want) {
      EXPECT_EQ(kv_layer_apply_recalls(b.get(), l, i, 0, nullptr, nullptr), AK_OK) << kv_pool_errmsg(b.get());
      return;
    }
    const int ns = row.n_sink, nw = row.n_window, k = kv_pool_topk_pages(b.get());
    std::vector<float> score((size_t)N, std::numeric_limits<float>::quiet_NaN());
    const std::vector<float> &q = db->last_q.at({seq, l});
    db->sync();  // the scores and the gather run on the stream after the fills
    ak_err_t err;
    ASSERT_EQ(db->score_with(seq, l, q.data(), N - nw, score.data(), &err), AK_OK) << err.msg;
    std::vector<std::pair<int, int>> pairs = plan_recalls(score, row.phys, (int)N, ns, nw, k);
    std::vector<unsigned char> got(slot_bytes);
    for (auto &pr : pairs) {
      kv_backup_id_t id = row.backup[pr.first];
      ASSERT_NE(id, KV_BACKUP_NONE) << "page " << pr.first;
      int64_t slot = kv_tier_host_slot(id);
      ASSERT_GE(slot, 0);
      ASSERT_LT(slot, n_slots);
      const unsigned char *blob = slab.get() + slot * (int64_t)slot_bytes;
      if (tier_checks++ % 8 == 0) {  // the slab holds what the tier hands back
        ASSERT_EQ(kv_tier_get(tier.get(), id, got.data(), slot_bytes), AK_OK) << kv_tier_errmsg(tier.get());
        ASSERT_EQ(memcmp(got.data(), blob, slot_bytes), 0) << "slot " << slot;
      }
      int32_t dst = row.phys[pr.second];
      ASSERT_NE(dst, KV_PAGE_NONE);
      memcpy(db->page(dst), blob, slot_bytes);
    }
    // Half the time the exact count, half the time k entries ended by page -1.
    std::vector<int32_t> page, victim;
    for (auto &pr : pairs) {
      page.push_back(pr.first);
      victim.push_back(pr.second);
    }
    int32_t n = (int32_t)pairs.size();
    if (step_no % 2 && n < k) {
      page.resize((size_t)k, -1);
      victim.resize((size_t)k, 12345);
      n = k;
    }
    ASSERT_EQ(kv_layer_apply_recalls(b.get(), l, i, n, page.data(), victim.data()), AK_OK) << kv_pool_errmsg(b.get());
    applied += pairs.size();
  }

  // Both pools hold the same thing: page tables, resident page bytes (equal to what was
  // fed), counters.
  void expect_same() {
    SCOPED_TRACE("after step " + std::to_string(step_no));
    const int pt = pb.page_tokens;
    const size_t half = slot_bytes / sizeof(float) / 2;
    for (kv_seq_id_t s : seqs) {
      int64_t n_tok = kv_seq_n_tokens(a.get(), s);
      ASSERT_EQ(n_tok, kv_seq_n_tokens(b.get(), s));
      for (int l = 0; l < kLayers; l++) {
        SCOPED_TRACE("seq " + std::to_string(s) + " layer " + std::to_string(l));
        const int32_t *ta, *tb;
        int64_t na = 0, nb = 0;
        ASSERT_EQ(kv_seq_page_table(a.get(), s, l, &ta, &na), AK_OK) << kv_pool_errmsg(a.get());
        ASSERT_EQ(kv_seq_page_table(b.get(), s, l, &tb, &nb), AK_OK) << kv_pool_errmsg(b.get());
        ASSERT_EQ(na, (n_tok + pt - 1) / pt);
        ASSERT_EQ(na, nb);
        // Logical residency must match, and so must the physical pages: both pools start
        // with the same free stack and allocate and free in the same order (evictions at
        // begin/end/compact free the same pages; growth pops the same ones), and a recall
        // reuses its victim's physical page in both, paired in the same order. So the
        // tables are compared whole; bytes are compared too, in case a recall copied the
        // wrong blob.
        ASSERT_EQ(std::vector<int32_t>(ta, ta + na), std::vector<int32_t>(tb, tb + nb));
        const std::vector<float> &kr = K[{s, l}], &vr = V[{s, l}];
        ASSERT_EQ((int64_t)kr.size(), n_tok * kRow);
        for (int64_t j = 0; j < na; j++) {
          if (ta[j] == KV_PAGE_NONE) continue;
          const float *pa_ = da->page(ta[j]), *pb_ = db->page(tb[j]);
          int64_t n_fill = std::min<int64_t>(pt, n_tok - j * pt);
          for (int h = 0; h < kKvHeads; h++)
            for (int64_t t = 0; t < n_fill; t++)
              for (int d = 0; d < kHeadDim; d++) {
                size_t off = ((size_t)h * pt + (size_t)t) * kHeadDim + d;
                size_t tru = ((size_t)(j * pt + t) * kKvHeads + h) * kHeadDim + d;
                ASSERT_TRUE(same_bits(pa_[off], kr[tru])) << "A page " << j << " token " << t << " h " << h;
                ASSERT_TRUE(same_bits(pb_[off], kr[tru])) << "B page " << j << " token " << t << " h " << h;
                ASSERT_TRUE(same_bits(pa_[half + off], vr[tru])) << "A page " << j << " V token " << t;
                ASSERT_TRUE(same_bits(pb_[half + off], vr[tru])) << "B page " << j << " V token " << t;
              }
        }
      }
      // every token reads back (evicted pages from their backups) as it was fed, in both
      // pools; a few (seq, layer) per step to keep it quick
      for (int l = kFullLayers; l < kLayers; l++) {
        if ((step_no + s + l) % 4) continue;
        const std::vector<float> &kr = K[{s, l}], &vr = V[{s, l}];
        for (kv_pool_t *pool : {a.get(), b.get()}) {
          std::vector<float> kk((size_t)n_tok * kRow, 7.f), vv((size_t)n_tok * kRow, 7.f);
          ASSERT_EQ(kv_seq_read_kv(pool, s, l, 0, n_tok, kk.data(), vv.data()), AK_OK) << kv_pool_errmsg(pool);
          for (size_t e = 0; e < kk.size(); e++) {
            ASSERT_TRUE(same_bits(kk[e], kr[e])) << (pool == a.get() ? "A" : "B") << " layer " << l << " K token "
                                                 << e / kRow;
            ASSERT_TRUE(same_bits(vv[e], vr[e])) << (pool == a.get() ? "A" : "B") << " layer " << l << " V token "
                                                 << e / kRow;
          }
        }
        kv_checks += (uint64_t)n_tok;
      }
      kv_seq_stats_t sa, sb;
      ASSERT_EQ(kv_seq_get_stats(a.get(), s, &sa), AK_OK);
      ASSERT_EQ(kv_seq_get_stats(b.get(), s, &sb), AK_OK);
      EXPECT_EQ(sa.n_pages_resident, sb.n_pages_resident);
      EXPECT_EQ(sa.n_pages_backed_up, sb.n_pages_backed_up);
      EXPECT_EQ(sa.backup_bytes, sb.backup_bytes);
      expect_same_work(sa.work, sb.work, "seq " + std::to_string(s));
    }
    kv_pool_stats_t sa, sb;
    kv_pool_get_stats(a.get(), &sa);
    kv_pool_get_stats(b.get(), &sb);
    EXPECT_EQ(sa.n_pages_used, sb.n_pages_used);
    EXPECT_EQ(sa.n_backups, sb.n_backups);
    EXPECT_EQ(sa.backup_bytes, sb.backup_bytes);
    expect_same_work(sa.work, sb.work, "pool");
    expect_same_work(sa.last_step, sb.last_step, "last step");
  }
  static void expect_same_work(const kv_stats_t &a, const kv_stats_t &b, const std::string &what) {
    EXPECT_EQ(a.n_steps, b.n_steps) << what;
    EXPECT_EQ(a.n_selects, b.n_selects) << what;
    EXPECT_EQ(a.recalls, b.recalls) << what;
    EXPECT_EQ(a.evictions, b.evictions) << what;
    EXPECT_EQ(a.drops, b.drops) << what;
    EXPECT_EQ(a.backups, b.backups) << what;
    EXPECT_EQ(a.bytes_recalled, b.bytes_recalled) << what;
    EXPECT_EQ(a.bytes_backed_up, b.bytes_backed_up) << what;
  }
};

class KvSelectOnDeviceOracle : public KvSelectOnDevice, public ::testing::WithParamInterface<OracleCase> {};

TEST_P(KvSelectOnDeviceOracle, SameTablesBytesAndCountsAsThePoolsOwnSelection) {
  const OracleCase &c = GetParam();
  Twin tw;
  ASSERT_NO_FATAL_FAILURE(tw.setup(c));
  const kv_seq_id_t s0 = tw.seqs[0], s1 = tw.seqs[1], s2 = tw.seqs[2];
  // prefills past the budget (seq 1 in two chunks), each step checked
  ASSERT_GT(c.prefill[0], c.budget_pages * c.page_tokens);
  ASSERT_NO_FATAL_FAILURE(tw.step({{s0, c.prefill[0]}, {s1, c.prefill[1]}}, false));
  ASSERT_NO_FATAL_FAILURE(tw.expect_same());
  ASSERT_NO_FATAL_FAILURE(tw.step({{s2, c.prefill[3]}, {s1, c.prefill[2]}}, false));
  ASSERT_NO_FATAL_FAILURE(tw.expect_same());
  // seqs 0 and 1 come down now, scored with their prompts' last queries; seq 2 at its
  // first decode step
  for (kv_seq_id_t s : {s0, s1}) {
    ASSERT_EQ(kv_seq_compact(tw.a.get(), s), AK_OK) << kv_pool_errmsg(tw.a.get());
    ASSERT_EQ(kv_seq_compact(tw.b.get(), s), AK_OK) << kv_pool_errmsg(tw.b.get());
  }
  ASSERT_NO_FATAL_FAILURE(tw.expect_same());
  ASSERT_EQ(kv_pool_check(tw.b.get()), AK_OK) << kv_pool_errmsg(tw.b.get());
  kv_pool_stats_t st;
  kv_pool_get_stats(tw.b.get(), &st);
  EXPECT_GT(st.work.evictions, 0u) << "the compaction evicted nothing";

  // 130 decode steps: the batch order rotates, one sequence sits out every 5th step, and
  // a few steps are aborted after their selections and retried
  int n_aborts = 0;
  for (int t = 0; t < 130; t++) {
    std::vector<std::pair<kv_seq_id_t, int32_t>> batch;
    for (int i = 0; i < 3; i++) {
      kv_seq_id_t s = tw.seqs[(size_t)(t + i) % 3];
      if (t % 5 == 4 && i == 1) continue;
      batch.push_back({s, 1});
    }
    if (t % 29 == 13) {
      ASSERT_NO_FATAL_FAILURE(tw.step(batch, true));
      ASSERT_EQ(kv_pool_check(tw.a.get()), AK_OK) << kv_pool_errmsg(tw.a.get());
      ASSERT_EQ(kv_pool_check(tw.b.get()), AK_OK) << kv_pool_errmsg(tw.b.get());
      ASSERT_NO_FATAL_FAILURE(tw.expect_same());
      n_aborts++;
    }
    ASSERT_NO_FATAL_FAILURE(tw.step(batch, false));
    ASSERT_NO_FATAL_FAILURE(tw.expect_same());
  }
  EXPECT_GT(n_aborts, 0);

  kv_pool_stats_t sa, sb;
  kv_pool_get_stats(tw.a.get(), &sa);
  kv_pool_get_stats(tw.b.get(), &sb);
  // not vacuous: selections were made and pages came back, by the test's hand in B
  EXPECT_GT(sb.work.n_selects, 100u);
  EXPECT_GT(sb.work.recalls, 10u);
  EXPECT_GT(tw.applied, 10u);
  EXPECT_GT(tw.tier_checks, 0u);
  // every recall of A went through write_page; B's only for the window pages an abort
  // brings back, the rest were the test's copies
  EXPECT_EQ((uint64_t)tw.da->writes, sa.work.recalls);
  EXPECT_EQ((uint64_t)tw.db->writes + tw.applied, sb.work.recalls);
  EXPECT_EQ(tw.db->batches, 0);
  EXPECT_GT(tw.db->scores, 0);  // evictions and compaction scored with q == NULL
  EXPECT_GT(tw.kv_checks, 0u);
  // B's fills: digests built where the pages are or put there; pages copied into reserved
  // slots or fetched and put; a page's bytes come to the host only for what is not done there
  const uint64_t n_backups = sb.work.backups;
  ASSERT_GT(n_backups, 0u);
  const bool dev_digest = c.build_digest, dev_backup = c.backup_page && c.reserve;
  EXPECT_EQ((uint64_t)tw.db->builds, dev_digest ? n_backups : 0) << "build_digest calls";
  EXPECT_EQ((uint64_t)tw.db->puts, dev_digest ? 0 : n_backups) << "put_digest calls";
  EXPECT_EQ((uint64_t)tw.db->backups, dev_backup ? n_backups : 0) << "backup_page calls";
  EXPECT_EQ(tw.fill_reads, dev_digest && dev_backup ? 0 : n_backups) << "read_page calls to fill";
  EXPECT_EQ((uint64_t)tw.da->builds, 0u) << "build_digest on a pool that selects itself";
  if (c.defer && (dev_digest || dev_backup)) EXPECT_GT(tw.db->syncs_with_work, 0);  // not vacuous
  kv_tier_stats_t ts;
  kv_tier_stats(tw.tier.get(), &ts);
  EXPECT_EQ(ts.puts, n_backups) << "tier puts (reserves included)";
  EXPECT_EQ(ts.bytes_put, n_backups * tw.slot_bytes);
  if (tw.put_only) EXPECT_EQ((uint64_t)PutOnlyTier::of(tw.put_only.get())->puts, n_backups);
  for (kv_seq_id_t s : tw.seqs) {
    EXPECT_EQ(kv_seq_release(tw.a.get(), s), AK_OK);
    EXPECT_EQ(kv_seq_release(tw.b.get(), s), AK_OK);
  }
  kv_tier_stats(tw.tier.get(), &ts);
  EXPECT_EQ(ts.n_used, 0);
  EXPECT_EQ(ts.frees, n_backups);
}

INSTANTIATE_TEST_SUITE_P(
    Cases, KvSelectOnDeviceOracle,
    ::testing::Values(OracleCase{"Page4HostDigests", 4, 6, 1, 2, 2, false, false, {37, 30, 20, 45}},
                      OracleCase{"Page4OpsDigests", 4, 6, 1, 2, 2, true, false, {37, 30, 20, 45}},
                      OracleCase{"Page8TwoSinksOneWindowDefaultTopk", 8, 7, 2, 1, 0, false, false, {70, 60, 40, 90}},
                      OracleCase{"Page8OpsDigests", 8, 7, 2, 1, 0, true, false, {70, 60, 40, 90}},
                      OracleCase{"Page4TiesAndNaN", 4, 6, 1, 2, 2, false, true, {37, 30, 20, 45}},
                      OracleCase{"Page8TiesAndNaNOpsDigests", 8, 7, 2, 1, 0, true, true, {70, 60, 40, 90}}),
    [](const ::testing::TestParamInfo<OracleCase> &i) { return std::string(i.param.name); });

// The same comparison when B fills on the device. Fields: name, page_tokens, budget, sinks,
// window, topk, A's digests on ops, ties/NaN, prefills, build_digest, backup_page, reserve,
// defer, A's build_digest.
INSTANTIATE_TEST_SUITE_P(
    FillsOnTheDevice, KvSelectOnDeviceOracle,
    ::testing::Values(
        OracleCase{"Page4DigestAndCopyDeferred", 4, 6, 1, 2, 2, false, false, {37, 30, 20, 45}, true, true, true, true,
                   true},
        OracleCase{"Page4DigestAndCopyAtOnce", 4, 6, 1, 2, 2, true, false, {37, 30, 20, 45}, true, true, true, false},
        OracleCase{"Page8TiesAndNaNDigestAndCopyDeferred", 8, 7, 2, 1, 0, true, true, {70, 60, 40, 90}, true, true,
                   true, true},
        OracleCase{"Page4CopyOnlyDeferred", 4, 6, 1, 2, 2, false, false, {37, 30, 20, 45}, false, true, true, true},
        OracleCase{"Page8DigestOnlyDeferred", 8, 7, 2, 1, 0, false, false, {70, 60, 40, 90}, true, false, true, true},
        OracleCase{"Page4DigestAndCopyTierWithoutReserve", 4, 6, 1, 2, 2, false, false, {37, 30, 20, 45}, true, true,
                   false, true},
        OracleCase{"Page8CopyOnlyTierWithoutReserve", 8, 7, 2, 1, 0, true, true, {70, 60, 40, 90}, false, true, false,
                   false}),
    [](const ::testing::TestParamInfo<OracleCase> &i) { return std::string(i.param.name); });

// --- kv_layer_apply_recalls: refusals change nothing ---

// A select_on_device pool over a FakeDevice, with a host tier over a caller slab.
struct Solo {
  kv_pool_params_t p{};
  std::unique_ptr<FakeDevice> dev;
  SlabPtr slab;
  size_t slot_bytes = 0;
  TierPtr tier;
  PoolPtr pool;
  std::mt19937 rng{99};
  std::normal_distribution<float> nd;

  // build, backup: the device fills (build_digest, backup_page)
  void setup(bool build = false, bool backup = false) {
    p = dev_params(4, 6, 1, 2, 2, 128);
    dev.reset(new FakeDevice(p, true, false));
    dev->null_q = true;
    dev->fill_on_device(build, backup);
    p.page_memory = dev->mem.data();
    p.page_ops = &dev->ops;
    p.select_on_device = 1;
    slot_bytes = kv_page_bytes(&p);
    size_t cap = 200 * slot_bytes;
    slab.reset((unsigned char *)malloc(cap));
    ASSERT_TRUE(slab);
    kv_tier_host_params_t tp = kv_tier_host_params_default();
    tp.capacity_bytes = cap;
    tp.slot_bytes = slot_bytes;
    tp.slab = slab.get();
    ak_err_t err;
    kv_tier_t *t = nullptr;
    ASSERT_EQ(kv_tier_host_create(&tp, &err, &t), AK_OK) << err.msg;
    tier.reset(t);
    p.tier = t;
    dev->slab = slab.get();
    dev->slab_bytes = cap;
    kv_pool_t *x = nullptr;
    ASSERT_EQ(kv_pool_create(&p, &err, &x), AK_OK) << err.msg;
    pool.reset(x);
  }
  // Begins a step and runs every layer up to its view (q == NULL), random K/V/q.
  void begin_and_view(const std::vector<kv_seq_id_t> &ids, const std::vector<int32_t> &n_new) {
    kv_batch_t bt{(int32_t)ids.size(), ids.data(), n_new.data()};
    ASSERT_EQ(kv_step_begin(pool.get(), &bt), AK_OK) << kv_pool_errmsg(pool.get());
    int64_t n_tok = 0;
    kv_step_positions(pool.get(), &n_tok);
    for (int l = 0; l < kLayers; l++) {
      std::vector<float> k((size_t)n_tok * kRow), v((size_t)n_tok * kRow), q((size_t)n_tok * kQRow);
      for (float &x : k) x = nd(rng);
      for (float &x : v) x = nd(rng);
      for (float &x : q) x = nd(rng);
      const int32_t *pg, *sl;
      ASSERT_EQ(kv_layer_slots(pool.get(), l, &pg, &sl), AK_OK);
      store_kv(*dev, pg, sl, k, v, n_tok);
      ASSERT_EQ(kv_layer_commit(pool.get(), l), AK_OK) << kv_pool_errmsg(pool.get());
      int64_t t = 0;
      for (size_t i = 0; i < ids.size(); i++) {
        t += n_new[i];
        dev->last_q[{ids[i], l}].assign(q.begin() + (t - 1) * kQRow, q.begin() + t * kQRow);
      }
      kn_attn_args_t va{};
      ASSERT_EQ(kv_layer_view(pool.get(), l, nullptr, 0, &va), AK_OK) << kv_pool_errmsg(pool.get());
    }
  }
  void step(const std::vector<kv_seq_id_t> &ids, const std::vector<int32_t> &n_new) {
    ASSERT_NO_FATAL_FAILURE(begin_and_view(ids, n_new));
    ASSERT_EQ(kv_step_end(pool.get()), AK_OK) << kv_pool_errmsg(pool.get());
  }
  std::vector<int32_t> table(kv_seq_id_t s, int l) const {
    const int32_t *ph;
    int64_t n = 0;
    EXPECT_EQ(kv_seq_page_table(pool.get(), s, l, &ph, &n), AK_OK);
    return std::vector<int32_t>(ph, ph + n);
  }
};

TEST_F(KvSelectOnDevice, ApplyRecallsRejectsBadInputAndChangesNothing) {
  Solo so;
  ASSERT_NO_FATAL_FAILURE(so.setup());
  kv_pool_t *pool = so.pool.get();
  kv_seq_id_t s0 = -1, s1 = -1;
  ASSERT_EQ(kv_seq_create(pool, &s0), AK_OK);
  ASSERT_EQ(kv_seq_create(pool, &s1), AK_OK);
  ASSERT_NO_FATAL_FAILURE(so.step({s0, s1}, {37, 33}));  // 10 and 9 pages past a 6-page budget
  ASSERT_EQ(kv_seq_compact(pool, s0), AK_OK);
  ASSERT_EQ(kv_seq_compact(pool, s1), AK_OK);

  // outside a step
  std::vector<int32_t> t_out = so.table(s0, 1);
  int32_t pg1[1] = {-2}, vc1[1] = {-2};
  for (int32_t j = 1; j < (int32_t)t_out.size() - 2; j++) {  // a swap that would fit inside a step
    if (t_out[j] == KV_PAGE_NONE && pg1[0] < 0) pg1[0] = j;
    if (t_out[j] != KV_PAGE_NONE && vc1[0] < 0) vc1[0] = j;
  }
  ASSERT_GE(pg1[0], 0);
  ASSERT_GE(vc1[0], 0);
  kv_select_row_t row;
  EXPECT_EQ(kv_layer_apply_recalls(pool, 1, 0, 1, pg1, vc1), AK_ERR_INVALID_ARG);
  EXPECT_EQ(kv_layer_select_row(pool, 1, 0, &row), AK_ERR_INVALID_ARG);
  EXPECT_EQ(so.table(s0, 1), t_out);

  // s0 decodes (10 pages > 6: layers 1 and 2 select); s1, compacted with pages evicted, brings
  // another prompt chunk (no selection: its row is refused even for a swap that would fit it)
  ASSERT_NO_FATAL_FAILURE(so.begin_and_view({s0, s1}, {1, 3}));
  ASSERT_EQ(kv_layer_select_row(pool, 1, 0, &row), AK_OK);
  ASSERT_TRUE(row.selects);
  const int32_t N = (int32_t)row.n_pages, ns = row.n_sink, nw = row.n_window;
  ASSERT_EQ(N, 10);
  std::vector<int32_t> res, gone;  // resident / evicted candidates
  for (int32_t j = ns; j < N - nw; j++) (row.phys[j] != KV_PAGE_NONE ? res : gone).push_back(j);
  ASSERT_GE(res.size(), 3u);
  ASSERT_GE(gone.size(), 2u);
  kv_select_row_t r1;
  ASSERT_EQ(kv_layer_select_row(pool, 1, 1, &r1), AK_OK);
  EXPECT_FALSE(r1.selects);  // a prompt chunk
  std::vector<int32_t> res1, gone1;  // s1's resident / evicted candidates
  for (int32_t j = r1.n_sink; j < r1.n_pages - r1.n_window; j++)
    (r1.phys[j] != KV_PAGE_NONE ? res1 : gone1).push_back(j);
  ASSERT_FALSE(res1.empty());
  ASSERT_FALSE(gone1.empty());
  ASSERT_NE(r1.backup[gone1[0]], KV_BACKUP_NONE);
  ASSERT_EQ(kv_layer_select_row(pool, 0, 0, &r1), AK_OK);
  EXPECT_FALSE(r1.selects);  // a full layer
  EXPECT_EQ(kv_layer_select_row(pool, 1, 0, nullptr), AK_ERR_INVALID_ARG);
  EXPECT_EQ(kv_layer_select_row(pool, 1, 2, &r1), AK_ERR_RANGE);
  EXPECT_EQ(kv_layer_select_row(pool, kLayers, 0, &r1), AK_ERR_RANGE);

  std::vector<std::vector<int32_t>> before[2];
  for (int l = 0; l < kLayers; l++) {
    before[0].push_back(so.table(s0, l));
    before[1].push_back(so.table(s1, l));
  }
  kv_pool_stats_t st0;
  kv_pool_get_stats(pool, &st0);
  const std::vector<uint8_t> mem0 = so.dev->mem;
  auto unchanged = [&](const std::string &what) {
    for (int l = 0; l < kLayers; l++) {
      EXPECT_EQ(so.table(s0, l), before[0][l]) << what << ": layer " << l;
      EXPECT_EQ(so.table(s1, l), before[1][l]) << what << ": layer " << l;
    }
    kv_pool_stats_t st;
    kv_pool_get_stats(pool, &st);
    EXPECT_EQ(st.work.recalls, st0.work.recalls) << what;
    EXPECT_EQ(st.work.evictions, st0.work.evictions) << what;
    EXPECT_EQ(st.work.bytes_recalled, st0.work.bytes_recalled) << what;
    EXPECT_TRUE(so.dev->mem == mem0) << what << ": page bytes changed";
  };
  struct Bad {
    const char *what;
    int32_t layer, i;
    std::vector<int32_t> page, victim;
    ak_status_t want;
  };
  const int32_t g0 = gone[0], g1 = gone[1], r0 = res[0], r1_ = res[1], r2 = res[2];
  const std::vector<Bad> bad = {
      {"page resident", 1, 0, {r0}, {r1_}, AK_ERR_INVALID_ARG},
      {"victim not resident", 1, 0, {g0}, {g1}, AK_ERR_INVALID_ARG},
      {"page is a sink", 1, 0, {0}, {r0}, AK_ERR_INVALID_ARG},
      {"page in the window", 1, 0, {N - nw}, {r0}, AK_ERR_INVALID_ARG},
      {"page past the sequence", 1, 0, {N + 3}, {r0}, AK_ERR_INVALID_ARG},
      {"victim is a sink", 1, 0, {g0}, {0}, AK_ERR_INVALID_ARG},
      {"victim in the window", 1, 0, {g0}, {N - 1}, AK_ERR_INVALID_ARG},
      {"victim negative", 1, 0, {g0}, {-1}, AK_ERR_INVALID_ARG},
      {"victim past the sequence", 1, 0, {g0}, {N + 100}, AK_ERR_INVALID_ARG},
      {"page named twice", 1, 0, {g0, g0}, {r0, r1_}, AK_ERR_INVALID_ARG},
      {"victim named twice", 1, 0, {g0, g1}, {r0, r0}, AK_ERR_INVALID_ARG},
      {"a good entry then a bad one", 1, 0, {g0, r2}, {r0, r1_}, AK_ERR_INVALID_ARG},
      {"a good entry then a bad one past the end", 1, 0, {g0, g1}, {r0, N}, AK_ERR_INVALID_ARG},
      {"a prompt chunk's row (no selection)", 1, 1, {gone1[0]}, {res1[0]}, AK_ERR_INVALID_ARG},
      {"a full layer", 0, 0, {g0}, {r0}, AK_ERR_INVALID_ARG},
      {"layer -1", -1, 0, {g0}, {r0}, AK_ERR_RANGE},
      {"layer n_layers", kLayers, 0, {g0}, {r0}, AK_ERR_RANGE},
      {"step sequence -1", 1, -1, {g0}, {r0}, AK_ERR_RANGE},
      {"step sequence n_seqs", 1, 2, {g0}, {r0}, AK_ERR_RANGE},
  };
  for (const Bad &c : bad) {
    EXPECT_EQ(kv_layer_apply_recalls(pool, c.layer, c.i, (int32_t)c.page.size(), c.page.data(), c.victim.data()),
              c.want)
        << c.what;
    EXPECT_STRNE(kv_pool_errmsg(pool), "") << c.what;
    unchanged(c.what);
    ASSERT_FALSE(HasFailure()) << "stopped at: " << c.what;  // later cases assume an intact table
  }
  EXPECT_EQ(kv_layer_apply_recalls(pool, 1, 0, -1, pg1, vc1), AK_ERR_INVALID_ARG);
  unchanged("n = -1");
  EXPECT_EQ(kv_layer_apply_recalls(pool, 1, 0, 1, nullptr, vc1), AK_ERR_INVALID_ARG);
  unchanged("page NULL");
  EXPECT_EQ(kv_layer_apply_recalls(pool, 1, 0, 1, pg1, nullptr), AK_ERR_INVALID_ARG);
  unchanged("victim NULL");
  // nothing to apply is fine
  EXPECT_EQ(kv_layer_apply_recalls(pool, 1, 0, 0, nullptr, nullptr), AK_OK);
  int32_t end_pg[2] = {-1, g0}, end_vc[2] = {r0, r1_};
  EXPECT_EQ(kv_layer_apply_recalls(pool, 1, 0, 2, end_pg, end_vc), AK_OK) << kv_pool_errmsg(pool);
  unchanged("an empty list");

  // The same pool takes a good swap (any valid one: the pool checks, the caller plans):
  // g0's backup into r0's page.
  const int32_t phys_r0 = row.phys[r0];
  ASSERT_NE(phys_r0, KV_PAGE_NONE);
  kv_backup_id_t id = row.backup[g0];
  ASSERT_NE(id, KV_BACKUP_NONE);
  memcpy(so.dev->page(phys_r0), so.slab.get() + kv_tier_host_slot(id) * (int64_t)so.slot_bytes, so.slot_bytes);
  int32_t ok_pg[1] = {g0}, ok_vc[1] = {r0};
  ASSERT_EQ(kv_layer_apply_recalls(pool, 1, 0, 1, ok_pg, ok_vc), AK_OK) << kv_pool_errmsg(pool);
  std::vector<int32_t> want = before[0][1];
  want[g0] = phys_r0;
  want[r0] = KV_PAGE_NONE;
  EXPECT_EQ(so.table(s0, 1), want);
  EXPECT_EQ(so.table(s0, 2), before[0][2]);  // the other layer is its own
  kv_pool_stats_t st1;
  kv_pool_get_stats(pool, &st1);
  EXPECT_EQ(st1.work.recalls, st0.work.recalls + 1);
  EXPECT_EQ(st1.work.evictions, st0.work.evictions + 1);
  EXPECT_EQ(st1.work.bytes_recalled, st0.work.bytes_recalled + so.slot_bytes);
  EXPECT_EQ(st1.last_step.recalls, st0.last_step.recalls + 1);
  // done once: g0 is resident now, r0 is not
  EXPECT_EQ(kv_layer_apply_recalls(pool, 1, 0, 1, ok_pg, ok_vc), AK_ERR_INVALID_ARG);
  EXPECT_EQ(so.table(s0, 1), want);
  ASSERT_EQ(kv_step_end(pool), AK_OK) << kv_pool_errmsg(pool);  // check_every_step: consistent
  // K/V read back through the pool: g0's tokens came from its backup
  int64_t n_tok = kv_seq_n_tokens(pool, s0);
  std::vector<float> kk((size_t)n_tok * kRow);
  EXPECT_EQ(kv_seq_read_kv(pool, s0, 1, 0, n_tok, kk.data(), nullptr), AK_OK) << kv_pool_errmsg(pool);

  // after the step (a swap back would be a valid one inside a step)
  std::vector<int32_t> t_end = so.table(s0, 1);
  int32_t back_pg[1] = {r0}, back_vc[1] = {g0};
  EXPECT_EQ(kv_layer_apply_recalls(pool, 1, 0, 1, back_pg, back_vc), AK_ERR_INVALID_ARG);
  EXPECT_EQ(so.table(s0, 1), t_end);
  EXPECT_EQ(kv_seq_release(pool, s0), AK_OK);
  EXPECT_EQ(kv_seq_release(pool, s1), AK_OK);
}

TEST_F(KvSelectOnDevice, ApplyRecallsRefusedWhenThePoolSelectsItself) {
  kv_pool_params_t p = dev_params(4, 6, 1, 2, 2, 128);  // select_on_device 0, own memory
  kv_pool_t *x = nullptr;
  ak_err_t err;
  ASSERT_EQ(kv_pool_create(&p, &err, &x), AK_OK) << err.msg;
  PoolPtr pool(x);
  kn_cpu_t *c = nullptr;
  ASSERT_EQ(kn_cpu_create(1, nullptr, &c), AK_OK);
  CpuPtr cpu(c);
  kv_seq_id_t s = -1;
  ASSERT_EQ(kv_seq_create(pool.get(), &s), AK_OK);
  std::mt19937 rng(5);
  std::normal_distribution<float> nd;
  for (int32_t n : {37, 1}) {
    kv_batch_t bt{1, &s, &n};
    ASSERT_EQ(kv_step_begin(pool.get(), &bt), AK_OK) << kv_pool_errmsg(pool.get());
    for (int l = 0; l < kLayers; l++) {
      std::vector<float> k((size_t)n * kRow), v((size_t)n * kRow), q((size_t)n * kQRow);
      for (float &y : k) y = nd(rng);
      for (float &y : v) y = nd(rng);
      for (float &y : q) y = nd(rng);
      ASSERT_EQ(kv_layer_append(pool.get(), cpu.get(), l, k.data(), v.data()), AK_OK) << kv_pool_errmsg(pool.get());
      kn_attn_args_t va{};
      ASSERT_EQ(kv_layer_view(pool.get(), l, q.data(), kHeads, &va), AK_OK) << kv_pool_errmsg(pool.get());
    }
    if (n == 1) {
      // the decode step: layer 1 made its own selection; the row says there is nothing to decide
      kv_select_row_t row;
      ASSERT_EQ(kv_layer_select_row(pool.get(), 1, 0, &row), AK_OK);
      EXPECT_EQ(row.selects, 0);
      std::vector<int32_t> res, gone;
      for (int32_t j = row.n_sink; j < row.n_pages - row.n_window; j++)
        (row.phys[j] != KV_PAGE_NONE ? res : gone).push_back(j);
      ASSERT_FALSE(res.empty());
      ASSERT_FALSE(gone.empty());
      std::vector<int32_t> tab(row.phys, row.phys + row.n_pages);
      int32_t pg[1] = {gone[0]}, vc[1] = {res[0]};
      EXPECT_EQ(kv_layer_apply_recalls(pool.get(), 1, 0, 1, pg, vc), AK_ERR_INVALID_ARG);
      EXPECT_NE(std::string(kv_pool_errmsg(pool.get())).find("select_on_device"), std::string::npos)
          << kv_pool_errmsg(pool.get());
      const int32_t *ph;
      int64_t np = 0;
      ASSERT_EQ(kv_seq_page_table(pool.get(), s, 1, &ph, &np), AK_OK);
      EXPECT_EQ(std::vector<int32_t>(ph, ph + np), tab);
    }
    ASSERT_EQ(kv_step_end(pool.get()), AK_OK) << kv_pool_errmsg(pool.get());
  }
  EXPECT_EQ(kv_seq_release(pool.get(), s), AK_OK);
}

// --- create: what select_on_device needs, and what it changes ---

TEST_F(KvSelectOnDevice, CreateRefusesWhatTheDeviceSelectionCannotDo) {
  kv_pool_params_t base = dev_params(4, 6, 1, 2, 2, 64);
  FakeDevice dev(base, true, false);
  base.page_memory = dev.mem.data();
  base.page_ops = &dev.ops;
  base.select_on_device = 1;
  kv_tier_host_params_t tp = kv_tier_host_params_default();
  tp.slot_bytes = kv_page_bytes(&base);
  tp.capacity_bytes = tp.slot_bytes * 64;
  kv_tier_t *tier = nullptr;
  ak_err_t terr;
  ASSERT_EQ(kv_tier_host_create(&tp, &terr, &tier), AK_OK) << terr.msg;
  std::unique_ptr<kv_tier_t, void (*)(kv_tier_t *)> tier_owner(tier, kv_tier_destroy);
  base.tier = tier;  // the caller's: it copies recalls out of it
  kv_page_ops_t no_score = dev.ops;  // read and write only
  no_score.put_digest = nullptr;
  no_score.score_pages = nullptr;
  struct Case {
    const char *what;
    std::function<void(kv_pool_params_t &)> edit;
    ak_status_t want;
    const char *msg;  // a piece of the message
  };
  const std::vector<Case> cases = {
      {"policy full", [](kv_pool_params_t &p) { p.policy = KV_POLICY_FULL; }, AK_ERR_INVALID_ARG, "select_on_device"},
      {"policy streaming", [](kv_pool_params_t &p) { p.policy = KV_POLICY_STREAMING; }, AK_ERR_INVALID_ARG,
       "select_on_device"},
      {"policy quest", [](kv_pool_params_t &p) { p.policy = KV_POLICY_QUEST; }, AK_ERR_INVALID_ARG,
       "select_on_device"},
      {"budget 0", [](kv_pool_params_t &p) { p.budget_tokens = 0; }, AK_ERR_INVALID_ARG, "select_on_device"},
      {"no page_memory", [](kv_pool_params_t &p) { p.page_memory = nullptr; }, AK_ERR_INVALID_ARG,
       "select_on_device needs page_memory"},
      {"no score_pages", [&](kv_pool_params_t &p) { p.page_ops = &no_score; }, AK_ERR_INVALID_ARG,
       "score_pages"},
      {"no tier of the caller's", [](kv_pool_params_t &p) { p.tier = nullptr; }, AK_ERR_INVALID_ARG, "tier"},
      {"attend topk", [](kv_pool_params_t &p) { p.attend = KV_ATTEND_TOPK; }, AK_ERR_UNSUPPORTED,
       "select_on_device"},
      {"score_groups 2", [](kv_pool_params_t &p) { p.score_groups = 2; }, AK_ERR_UNSUPPORTED, "score_groups"},
      {"track_accuracy", [](kv_pool_params_t &p) { p.track_accuracy = 1; }, AK_ERR_UNSUPPORTED, "track_accuracy"},
  };
  for (const Case &c : cases) {
    kv_pool_params_t p = base;
    c.edit(p);
    kv_pool_t *pool = nullptr;
    ak_err_t err;
    EXPECT_EQ(kv_pool_create(&p, &err, &pool), c.want) << c.what << ": " << err.msg;
    EXPECT_NE(std::string(err.msg).find(c.msg), std::string::npos) << c.what << ": " << err.msg;
    EXPECT_EQ(pool, nullptr) << c.what;
    kv_pool_destroy(pool);
    // and without select_on_device the same params are fine (the refusal is select_on_device's)
    p.select_on_device = 0;
    pool = nullptr;
    EXPECT_EQ(kv_pool_create(&p, &err, &pool), AK_OK) << c.what << " without select_on_device: " << err.msg;
    kv_pool_destroy(pool);
  }
  kv_pool_t *pool = nullptr;
  ak_err_t err;
  ASSERT_EQ(kv_pool_create(&base, &err, &pool), AK_OK) << err.msg;
  EXPECT_EQ(kv_pool_wants_queries(pool), 0);
  kv_pool_destroy(pool);
}

TEST_F(KvSelectOnDevice, ViewTakesNoQueriesLastQueryAndBranchAreRefused) {
  Solo so;
  ASSERT_NO_FATAL_FAILURE(so.setup());
  kv_pool_t *pool = so.pool.get();
  EXPECT_EQ(kv_pool_wants_queries(pool), 0);
  kv_seq_id_t s = -1;
  ASSERT_EQ(kv_seq_create(pool, &s), AK_OK);
  float q[kQRow];
  EXPECT_EQ(kv_seq_last_query(pool, s, 1, q), AK_ERR_NOT_FOUND);  // no step yet
  ASSERT_NO_FATAL_FAILURE(so.step({s}, {30}));                     // views with q == NULL
  ASSERT_NO_FATAL_FAILURE(so.step({s}, {1}));                      // a decode step too
  // the pool keeps no queries: none to hand back, none to branch with
  EXPECT_EQ(kv_seq_last_query(pool, s, 1, q), AK_ERR_NOT_FOUND);
  EXPECT_NE(std::string(kv_pool_errmsg(pool)).find("select_on_device"), std::string::npos) << kv_pool_errmsg(pool);
  EXPECT_EQ(kv_seq_last_query(pool, s, 0, q), AK_ERR_NOT_FOUND);

  kv_pool_params_t pf = dev_params(4, 6, 1, 2, 2, 64);
  pf.policy = KV_POLICY_FULL;
  pf.budget_tokens = 0;
  kv_pool_t *x = nullptr;
  ak_err_t err;
  ASSERT_EQ(kv_pool_create(&pf, &err, &x), AK_OK) << err.msg;
  PoolPtr full(x);
  kn_cpu_t *c = nullptr;
  ASSERT_EQ(kn_cpu_create(1, nullptr, &c), AK_OK);
  CpuPtr cpu(c);
  kv_seq_id_t fs = -1;
  ASSERT_EQ(kv_seq_create(full.get(), &fs), AK_OK);
  {
    int32_t n = 9;
    kv_batch_t bt{1, &fs, &n};
    ASSERT_EQ(kv_step_begin(full.get(), &bt), AK_OK);
    std::vector<float> k((size_t)n * kRow, 0.5f), v((size_t)n * kRow, -0.5f), qq((size_t)n * kQRow, 1.f);
    for (int l = 0; l < kLayers; l++) {
      ASSERT_EQ(kv_layer_append(full.get(), cpu.get(), l, k.data(), v.data()), AK_OK);
      kn_attn_args_t va{};
      ASSERT_EQ(kv_layer_view(full.get(), l, qq.data(), kHeads, &va), AK_OK);
    }
    ASSERT_EQ(kv_step_end(full.get()), AK_OK);
  }
  kv_pool_stats_t before, after;
  kv_pool_get_stats(pool, &before);
  kv_seq_id_t out = -7;
  EXPECT_EQ(kv_seq_branch(pool, full.get(), cpu.get(), fs, &out), AK_ERR_UNSUPPORTED);  // into it
  EXPECT_NE(std::string(kv_pool_errmsg(pool)).find("select_on_device"), std::string::npos) << kv_pool_errmsg(pool);
  EXPECT_EQ(out, -7);
  kv_pool_get_stats(pool, &after);
  EXPECT_EQ(after.n_seqs, before.n_seqs);
  EXPECT_EQ(after.n_pages_used, before.n_pages_used);
  kv_pool_stats_t fb, fa;
  kv_pool_get_stats(full.get(), &fb);
  EXPECT_EQ(kv_seq_branch(full.get(), pool, cpu.get(), s, &out), AK_ERR_UNSUPPORTED);  // out of it
  EXPECT_EQ(out, -7);
  kv_pool_get_stats(full.get(), &fa);
  EXPECT_EQ(fa.n_seqs, fb.n_seqs);
  EXPECT_EQ(fa.n_pages_used, fb.n_pages_used);

  // a pool that selects itself still needs the queries
  kv_pool_params_t pa = dev_params(4, 6, 1, 2, 2, 64);
  ASSERT_EQ(kv_pool_create(&pa, &err, &x), AK_OK) << err.msg;
  PoolPtr own(x);
  EXPECT_EQ(kv_pool_wants_queries(own.get()), 1);
  kv_seq_id_t os = -1;
  ASSERT_EQ(kv_seq_create(own.get(), &os), AK_OK);
  int32_t n = 2;
  kv_batch_t bt{1, &os, &n};
  ASSERT_EQ(kv_step_begin(own.get(), &bt), AK_OK);
  std::vector<float> k((size_t)n * kRow, 0.25f);
  ASSERT_EQ(kv_layer_append(own.get(), cpu.get(), 0, k.data(), k.data()), AK_OK);
  kn_attn_args_t va{};
  EXPECT_EQ(kv_layer_view(own.get(), 0, nullptr, kHeads, &va), AK_ERR_INVALID_ARG);
  kv_step_abort(own.get());

  EXPECT_EQ(kv_seq_release(pool, s), AK_OK);
  EXPECT_EQ(kv_seq_release(full.get(), fs), AK_OK);
  EXPECT_EQ(kv_seq_release(own.get(), os), AK_OK);
}

TEST_F(KvSelectOnDevice, PageTableArgumentChecks) {
  Solo so;
  ASSERT_NO_FATAL_FAILURE(so.setup());
  kv_pool_t *pool = so.pool.get();
  kv_seq_id_t s = -1;
  ASSERT_EQ(kv_seq_create(pool, &s), AK_OK);
  ASSERT_NO_FATAL_FAILURE(so.step({s}, {13}));
  const int32_t *ph = nullptr;
  int64_t n = -1;
  ASSERT_EQ(kv_seq_page_table(pool, s, 1, &ph, &n), AK_OK);
  EXPECT_EQ(n, 4);  // 13 tokens of 4
  for (int64_t j = 0; j < n; j++) EXPECT_NE(ph[j], KV_PAGE_NONE);  // a prompt keeps every page
  EXPECT_EQ(kv_seq_page_table(pool, s + 1, 1, &ph, &n), AK_ERR_NOT_FOUND);
  EXPECT_EQ(kv_seq_page_table(pool, s, kLayers, &ph, &n), AK_ERR_RANGE);
  EXPECT_EQ(kv_seq_page_table(pool, s, -1, &ph, &n), AK_ERR_RANGE);
  EXPECT_EQ(kv_seq_page_table(pool, s, 1, nullptr, &n), AK_ERR_INVALID_ARG);
  EXPECT_EQ(kv_seq_page_table(pool, s, 1, &ph, nullptr), AK_ERR_INVALID_ARG);
  EXPECT_EQ(kv_seq_release(pool, s), AK_OK);
}
// --- a fill done on the device fails ---

// build_digest or backup_page fails at a layer's commit: the commit returns its status with
// its message, no tier slot stays held for it (the tier holds exactly the backups the pool
// records), and after kv_step_abort the pool is consistent and the retried step succeeds.
TEST_F(KvSelectOnDevice, AFailedDeviceFillFailsTheCommitAndHoldsNoSlot) {
  for (int which = 0; which < 2; which++) {
    SCOPED_TRACE(which ? "backup_page fails" : "build_digest fails");
    Solo so;
    ASSERT_NO_FATAL_FAILURE(so.setup(true, true));
    kv_pool_t *pool = so.pool.get();
    kv_seq_id_t s = -1;
    ASSERT_EQ(kv_seq_create(pool, &s), AK_OK);
    ASSERT_NO_FATAL_FAILURE(so.step({s}, {22}));  // 5 full pages of 4 in layers 1 and 2
    ASSERT_EQ(so.dev->builds, 10);
    ASSERT_EQ(so.dev->backups, 10);
    // the next prompt chunk fills 3 more pages per layer; the second fill of layer 1 fails
    if (which)
      so.dev->fail_backup_at = so.dev->backups + 1;
    else
      so.dev->fail_build_at = so.dev->builds + 1;
    std::vector<kv_seq_id_t> ids{s};
    std::vector<int32_t> n_new{12};
    kv_batch_t bt{1, ids.data(), n_new.data()};
    ASSERT_EQ(kv_step_begin(pool, &bt), AK_OK) << kv_pool_errmsg(pool);
    int64_t n_tok = 0;
    kv_step_positions(pool, &n_tok);
    ASSERT_EQ(n_tok, 12);
    std::vector<float> k((size_t)n_tok * kRow, 0.5f), v((size_t)n_tok * kRow, -0.5f);
    const int32_t *pg, *sl;
    ASSERT_EQ(kv_layer_slots(pool, 0, &pg, &sl), AK_OK);
    store_kv(*so.dev, pg, sl, k, v, n_tok);
    ASSERT_EQ(kv_layer_commit(pool, 0), AK_OK) << kv_pool_errmsg(pool);  // a full layer: nothing to fill
    ASSERT_EQ(kv_layer_slots(pool, 1, &pg, &sl), AK_OK);
    store_kv(*so.dev, pg, sl, k, v, n_tok);
    EXPECT_EQ(kv_layer_commit(pool, 1), AK_ERR_CUDA);
    EXPECT_NE(std::string(kv_pool_errmsg(pool)).find("injected"), std::string::npos) << kv_pool_errmsg(pool);
    kv_seq_stats_t ss;
    ASSERT_EQ(kv_seq_get_stats(pool, s, &ss), AK_OK);
    kv_tier_stats_t ts;
    kv_tier_stats(so.tier.get(), &ts);
    EXPECT_EQ(ts.n_used, ss.n_pages_backed_up) << "a slot is held for a backup the pool does not record";
    EXPECT_EQ(ss.n_pages_backed_up, 11);  // the first new page of layer 1 made it
    EXPECT_EQ(so.dev->reads, 0) << "device fills fetch no page bytes";
    so.dev->sync();
    kv_step_abort(pool);
    ASSERT_EQ(kv_pool_check(pool), AK_OK) << kv_pool_errmsg(pool);
    kv_tier_stats(so.tier.get(), &ts);
    EXPECT_EQ(ts.n_used, 10) << "the aborted step's backups are given back";
    EXPECT_EQ(kv_seq_n_tokens(pool, s), 22);
    // retried (the fake fails once), then a decode step
    ASSERT_NO_FATAL_FAILURE(so.step({s}, {12}));
    ASSERT_NO_FATAL_FAILURE(so.step({s}, {1}));
    ASSERT_EQ(kv_seq_get_stats(pool, s, &ss), AK_OK);
    kv_tier_stats(so.tier.get(), &ts);
    EXPECT_EQ(ss.n_pages_backed_up, 16);  // 8 full pages of 35 tokens, in 2 layers
    EXPECT_EQ(ts.n_used, 16);
    EXPECT_EQ(so.dev->reads, 0);
    EXPECT_EQ(so.dev->puts, 0);
    // the backups hold the pages: every token reads back
    std::vector<float> kk((size_t)35 * kRow);
    EXPECT_EQ(kv_seq_read_kv(pool, s, 1, 0, 35, kk.data(), nullptr), AK_OK) << kv_pool_errmsg(pool);
    EXPECT_EQ(kv_seq_release(pool, s), AK_OK);
    kv_tier_stats(so.tier.get(), &ts);
    EXPECT_EQ(ts.n_used, 0);
  }
}
}  // namespace
