// Tests for coordinator/co_sched.c and co_sched_pages.c: the page arithmetic against
// kvpool (its formula, and a real pool's pages through chunked prefill and decode),
// admission by pages (full vs budgeted), chunked prefill beside decode, FCFS with the
// max-wait rule, the queue limit, aborts, routing, dead groups, every class of bad
// input, and randomized runs checking the invariants at every step (one of them
// drives a real kvpool per group and asserts no step ever meets a full pool).
#include <gtest/gtest.h>

#include <algorithm>
#include <map>
#include <memory>
#include <random>
#include <set>
#include <string>
#include <vector>

extern "C" {
#include "ak_alloc.h"
#include "co_sched.h"
#include "kernels.h"
#include "kvpool.h"
}

namespace {
struct SchedDel {
  void operator()(co_sched_t *s) const { co_sched_destroy(s); }
};
struct PoolDel {
  void operator()(kv_pool_t *p) const { kv_pool_destroy(p); }
};
struct CpuDel {
  void operator()(kn_cpu_t *c) const { kn_cpu_destroy(c); }
};
using SchedPtr = std::unique_ptr<co_sched_t, SchedDel>;
using PoolPtr = std::unique_ptr<kv_pool_t, PoolDel>;
using CpuPtr = std::unique_ptr<kn_cpu_t, CpuDel>;

co_sched_params_t params(std::vector<int64_t> *caps, int32_t n_layers = 4, int32_t n_full = 1, int32_t page = 16) {
  co_sched_params_t p = co_sched_params_default();
  p.shape.n_layers = n_layers;
  p.shape.n_full_layers = n_full;
  p.shape.page_tokens = page;
  p.n_groups = (int32_t)caps->size();
  p.group_capacity_pages = caps->data();
  p.max_running_seqs = 64;
  p.max_batch_tokens = 512;
  p.max_queue = 256;
  p.max_seq_tokens = 8192;
  p.max_wait_us = 1000;
  return p;
}

SchedPtr make(const co_sched_params_t &p) {
  co_sched_t *s = nullptr;
  ak_err_t err;
  ak_err_clear(&err);
  EXPECT_EQ(co_sched_create(&p, &err, &s), AK_OK) << err.msg;
  return SchedPtr(s);
}

co_sched_req_t req(int64_t id, int32_t prompt, int32_t max_new, int32_t budget = 0, int64_t arrival_us = 0) {
  return co_sched_req_t{id, prompt, max_new, budget, arrival_us};
}

ak_status_t submit(co_sched_t *s, co_sched_req_t r) { return co_sched_submit(s, &r); }

co_sched_req_info_t info(co_sched_t *s, int64_t id) {
  co_sched_req_info_t i;
  co_sched_req_info(s, id, &i);
  return i;
}

// What a revived group brings back (the defaults are params()'s slots and batch).
co_sched_group_caps_t caps_of(int64_t pages, int32_t max_seqs = 64, int32_t batch_tokens = 512) {
  return co_sched_group_caps_t{pages, max_seqs, batch_tokens};
}

ak_status_t revive(co_sched_t *s, int32_t g, co_sched_group_caps_t c) { return co_sched_group_revive(s, g, &c); }

co_sched_group_stats_t gstats(co_sched_t *s, int32_t g) {
  co_sched_group_stats_t st;
  EXPECT_EQ(co_sched_group_stats(s, g, &st), AK_OK);
  return st;
}

// The results a worker would send for a plan: one per item, none finished unless
// listed in `finish`.
std::vector<co_sched_result_t> results_for(const co_sched_plan_t &plan, const std::set<int64_t> &finish = {}) {
  std::vector<co_sched_result_t> r;
  for (int32_t i = 0; i < plan.n_items; i++)
    r.push_back({plan.items[i].id, plan.items[i].samples, finish.count(plan.items[i].id) ? 1 : 0});
  return r;
}

// Plans and completes one step of group g; returns the plan's items (copied).
std::vector<co_sched_item_t> step(co_sched_t *s, int32_t g, int64_t now_us, std::vector<int64_t> *drops = nullptr,
                                  const std::set<int64_t> &finish = {}) {
  co_sched_plan_t plan;
  EXPECT_EQ(co_sched_plan_step(s, g, now_us, &plan), AK_OK) << co_sched_errmsg(s);
  std::vector<co_sched_item_t> items(plan.items, plan.items + plan.n_items);
  if (drops) drops->assign(plan.drops, plan.drops + plan.n_drops);
  if (plan.n_items > 0) {
    auto r = results_for(plan, finish);
    EXPECT_EQ(co_sched_step_done(s, g, r.data(), (int32_t)r.size(), nullptr, nullptr), AK_OK) << co_sched_errmsg(s);
  }
  EXPECT_EQ(co_sched_check(s), AK_OK) << co_sched_errmsg(s);
  return items;
}

bool has_item(const std::vector<co_sched_item_t> &items, int64_t id) {
  for (const auto &it : items)
    if (it.id == id) return true;
  return false;
}
}  // namespace

// ---------------------------------------------------------------------------------
// page arithmetic

TEST(CoSchedPages, SteadyMatchesKvSeqPagesNeeded) {
  int n_checked = 0;
  const kv_policy_t policies[] = {KV_POLICY_FULL, KV_POLICY_QUEST, KV_POLICY_ARKVALE,
                                  KV_POLICY_STREAMING, KV_POLICY_H2O, KV_POLICY_TOVA};
  for (kv_policy_t pol : policies)
    for (int32_t n_layers : {1, 2, 3, 5, 32})
      for (int32_t n_full : {0, 1, 2, 7})
        for (int32_t page : {1, 3, 16, 32}) {
          bool token_policy = pol == KV_POLICY_H2O || pol == KV_POLICY_TOVA;
          std::vector<int32_t> budgets;
          if (token_policy)
            budgets = {0, 1, 7, 33, 100, 4096};
          else
            for (int32_t k : {0, 1, 2, 5, 64}) budgets.push_back(k * page);
          for (int32_t budget : budgets)
            for (int64_t n : {0, 1, 2, 15, 16, 17, 100, 1000, 100000}) {
              kv_pool_params_t kp = kv_pool_params_default();
              kp.n_layers = n_layers;
              kp.n_full_layers = n_full;
              kp.page_tokens = page;
              kp.policy = pol;
              kp.budget_tokens = budget;
              // quest saves no memory: the scheduler is told budget 0 for it
              int32_t co_budget = pol == KV_POLICY_FULL || pol == KV_POLICY_QUEST ? 0 : budget;
              co_kv_shape_t sh{n_layers, n_full, page};
              ASSERT_EQ(co_kv_seq_pages_steady(&sh, co_budget, n), kv_seq_pages_needed(&kp, n))
                  << kv_policy_name(pol) << " layers " << n_layers << " full " << n_full << " page " << page
                  << " budget " << budget << " n " << n;
              ASSERT_EQ(co_kv_pages_for_tokens(n, page), kv_pages_for_tokens(n, page));
              n_checked++;
            }
        }
  EXPECT_GT(n_checked, 20000);
}

TEST(CoSchedPages, PeakIsTheLargerOfPrefillAndSteady) {
  co_kv_shape_t sh{4, 1, 16};
  // 256-token prompt, 64 new, budget 4 pages: prefill 4*16 = 64 > steady 20 + 3*4 = 32
  EXPECT_EQ(co_kv_seq_pages_prefill(&sh, 256), 64);
  EXPECT_EQ(co_kv_seq_pages_steady(&sh, 64, 320), 32);
  EXPECT_EQ(co_kv_seq_pages_peak(&sh, 64, 256, 64), 64);
  // short prompt, long output: the steady state is the peak
  EXPECT_EQ(co_kv_seq_pages_peak(&sh, 64, 16, 1000), co_kv_seq_pages_steady(&sh, 64, 1016));
  // full cache: both are the whole sequence in every layer
  EXPECT_EQ(co_kv_seq_pages_peak(&sh, 0, 256, 64), 4 * 20);
}

namespace {
// A real kvpool on the CPU with one sequence at a time; steps feed random K/V.
struct RealPool {
  static constexpr int kKvHeads = 1, kHeadDim = 4;
  kv_pool_params_t p;
  PoolPtr pool;
  CpuPtr cpu;
  std::mt19937 rng{7};

  RealPool(kv_policy_t policy, int32_t n_layers, int32_t n_full, int32_t page, int32_t budget, int64_t n_pages,
           int32_t max_seqs, int32_t max_seq_tokens) {
    p = kv_pool_params_default();
    p.n_layers = n_layers;
    p.n_kv_heads = kKvHeads;
    p.head_dim = kHeadDim;
    p.page_tokens = page;
    p.n_pages = n_pages;
    p.max_seqs = max_seqs;
    p.max_seq_tokens = max_seq_tokens;
    p.dtype = KN_F32;
    p.policy = policy;
    p.budget_tokens = budget;
    p.n_full_layers = n_full;
    ak_err_t err;
    ak_err_clear(&err);
    kv_pool_t *kp = nullptr;
    EXPECT_EQ(kv_pool_create(&p, &err, &kp), AK_OK) << err.msg;
    pool.reset(kp);
    kn_cpu_t *c = nullptr;
    EXPECT_EQ(kn_cpu_create(1, &err, &c), AK_OK) << err.msg;
    cpu.reset(c);
  }
  int64_t used() const {
    kv_pool_stats_t st;
    kv_pool_get_stats(pool.get(), &st);
    return st.n_pages_used;
  }
  // Begins a step; returns its status. On success the caller calls finish().
  ak_status_t begin(const std::vector<kv_seq_id_t> &seqs, const std::vector<int32_t> &n_new) {
    kv_batch_t b{(int32_t)seqs.size(), seqs.data(), n_new.data()};
    return kv_step_begin(pool.get(), &b);
  }
  void finish() {
    int64_t n_tok = 0;
    kv_step_positions(pool.get(), &n_tok);
    std::normal_distribution<float> nd;
    std::vector<float> k(n_tok * kKvHeads * kHeadDim), v(k.size()), q(k.size());
    for (int l = 0; l < p.n_layers; l++) {
      for (float &x : k) x = nd(rng);
      for (float &x : v) x = nd(rng);
      for (float &x : q) x = nd(rng);
      ASSERT_EQ(kv_layer_append(pool.get(), cpu.get(), l, k.data(), v.data()), AK_OK) << kv_pool_errmsg(pool.get());
      kn_attn_args_t a{};
      ASSERT_EQ(kv_layer_view(pool.get(), l, q.data(), kKvHeads, &a), AK_OK) << kv_pool_errmsg(pool.get());
    }
    ASSERT_EQ(kv_step_end(pool.get()), AK_OK) << kv_pool_errmsg(pool.get());
  }
};
}  // namespace

// One sequence through a chunked prefill and its decode steps on a real pool: the
// pages it holds after each chunk are prefill(n), after each decode step steady(n),
// and the most it ever holds is the reservation co_kv_seq_pages_peak.
TEST(CoSchedPages, PrefillPeakAndSteadyMatchARealPool) {
  int n_runs = 0;
  for (kv_policy_t pol : {KV_POLICY_ARKVALE, KV_POLICY_FULL})
    for (int32_t page : {4, 16})
      for (int32_t budget_pages : {3, 5})
        for (int32_t prompt : {1, 5, 37, 64, 100})
          for (int32_t chunk_max : {2, 7, 16, 64})
            for (int32_t max_new : {1, 9, 40})
              for (int compact : {0, 1}) {
                const int32_t n_layers = 4, n_full = 1;
                int32_t budget = pol == KV_POLICY_FULL ? 0 : budget_pages * page;
                RealPool rp(pol, n_layers, n_full, page, budget, 1000, 2, 256);
                co_kv_shape_t sh{n_layers, n_full, page};
                kv_seq_id_t seq;
                ASSERT_EQ(kv_seq_create(rp.pool.get(), &seq), AK_OK);
                int64_t peak = 0, n = 0;
                std::string where = std::string(kv_policy_name(pol)) + " page " + std::to_string(page) +
                                    " budget " + std::to_string(budget) + " prompt " + std::to_string(prompt) +
                                    " chunk " + std::to_string(chunk_max) + " new " + std::to_string(max_new);
                while (n < prompt) {
                  int32_t rem = (int32_t)(prompt - n), c = std::min(rem, chunk_max);
                  if (rem - c == 1) c = c > 2 ? c - 1 : rem;  // never a one-token chunk mid-prompt
                  ASSERT_EQ(rp.begin({seq}, {c}), AK_OK) << where;
                  n += c;
                  EXPECT_EQ(rp.used(), co_kv_seq_pages_prefill(&sh, n)) << where << " after chunk to " << n;
                  peak = std::max(peak, rp.used());
                  rp.finish();
                  EXPECT_EQ(rp.used(), co_kv_seq_pages_prefill(&sh, n)) << where;
                }
                if (compact) {
                  ASSERT_EQ(kv_seq_compact(rp.pool.get(), seq), AK_OK);
                  EXPECT_EQ(rp.used(), co_kv_seq_pages_steady(&sh, budget, n)) << where << " compacted";
                }
                // every new token fed (one more than a server feeds: the reservation's P + N)
                for (int32_t t = 0; t < max_new; t++) {
                  ASSERT_EQ(rp.begin({seq}, {1}), AK_OK) << where;
                  n++;
                  EXPECT_LE(rp.used(), co_kv_seq_pages_steady(&sh, budget, n)) << where << " decode to " << n;
                  peak = std::max(peak, rp.used());
                  rp.finish();
                  EXPECT_EQ(rp.used(), co_kv_seq_pages_steady(&sh, budget, n)) << where << " decode to " << n;
                }
                EXPECT_EQ(peak, co_kv_seq_pages_peak(&sh, budget, prompt, max_new)) << where;
                ASSERT_EQ(kv_seq_release(rp.pool.get(), seq), AK_OK);
                EXPECT_EQ(rp.used(), 0);
                n_runs++;
              }
  EXPECT_EQ(n_runs, 2 * 2 * 2 * 5 * 4 * 3 * 2);
}

// ---------------------------------------------------------------------------------
// admission

namespace {
// Submits n identical requests, runs `n_steps` steps, returns the most running at once.
int32_t max_running(co_sched_t *s, int n, int32_t prompt, int32_t max_new, int32_t budget, int n_steps) {
  for (int i = 0; i < n; i++) EXPECT_EQ(submit(s, req(i, prompt, max_new, budget)), AK_OK);
  int32_t most = 0;
  for (int t = 0; t < n_steps; t++) {
    step(s, 0, 0);
    most = std::max(most, gstats(s, 0).n_running);
  }
  return most;
}
}  // namespace

TEST(CoSchedAdmission, BudgetedAdmitsMoreThanFullForTheSameCapacity) {
  std::vector<int64_t> caps{400};
  co_sched_params_t p = params(&caps);  // 4 layers, 1 full, 16-token pages
  const int32_t prompt = 256, max_new = 64, budget = 64;
  co_kv_shape_t sh = p.shape;
  int64_t full_need = co_kv_seq_pages_steady(&sh, 0, prompt + max_new);        // 4 * 20 = 80
  int64_t steady = co_kv_seq_pages_steady(&sh, budget, prompt + max_new);      // 20 + 3 * 4 = 32
  int64_t peak = co_kv_seq_pages_peak(&sh, budget, prompt, max_new);           // 4 * 16 = 64
  ASSERT_EQ(full_need, 80);
  ASSERT_EQ(steady, 32);
  ASSERT_EQ(peak, 64);
  // full: capacity / need. budgeted: once all are past prefill, one more prompt needs
  // its peak on top of the others' steady states.
  int32_t expect_full = (int32_t)(400 / full_need);                   // 5
  int32_t expect_budgeted = (int32_t)((400 - peak) / steady + 1);     // 11
  ASSERT_EQ(expect_full, 5);
  ASSERT_EQ(expect_budgeted, 11);

  auto full = make(p);
  EXPECT_EQ(max_running(full.get(), 30, prompt, max_new, 0, 30), expect_full);
  EXPECT_EQ(gstats(full.get(), 0).reserved_pages, expect_full * full_need);

  auto ark = make(p);
  EXPECT_EQ(max_running(ark.get(), 30, prompt, max_new, budget, 30), expect_budgeted);
  co_sched_group_stats_t st = gstats(ark.get(), 0);
  EXPECT_EQ(st.n_prefilling, 0);
  EXPECT_EQ(st.reserved_pages, expect_budgeted * steady);  // 352 of 400: no room for a 64-page prefill
  co_sched_stats_t all;
  co_sched_stats(ark.get(), &all);
  EXPECT_EQ(all.n_queued, 30 - expect_budgeted);
}

TEST(CoSchedAdmission, ReservationShrinksWhenThePromptIsIn) {
  std::vector<int64_t> caps{1000};
  co_sched_params_t p = params(&caps);
  p.max_running_seqs = 4;
  p.max_batch_tokens = 100;
  auto s = make(p);
  ASSERT_EQ(submit(s.get(), req(1, 256, 64, 64)), AK_OK);
  step(s.get(), 0, 0);  // 100 tokens of the prompt
  EXPECT_EQ(info(s.get(), 1).reserved_pages, 64);
  EXPECT_EQ(info(s.get(), 1).n_prefilled_tokens, 100);
  step(s.get(), 0, 0);
  step(s.get(), 0, 0);  // 56: the prompt is in, one token sampled
  EXPECT_EQ(info(s.get(), 1).n_prefilled_tokens, 256);
  EXPECT_EQ(info(s.get(), 1).n_generated_tokens, 1);
  EXPECT_EQ(info(s.get(), 1).reserved_pages, 32);
  EXPECT_EQ(gstats(s.get(), 0).reserved_pages, 32);
}

// ---------------------------------------------------------------------------------
// steps

TEST(CoSchedStep, ChunkedPrefillNeverStarvesDecoders) {
  std::vector<int64_t> caps{100000};
  co_sched_params_t p = params(&caps);
  p.max_running_seqs = 8;
  p.max_batch_tokens = 16;
  auto s = make(p);
  for (int64_t id = 0; id < 4; id++) ASSERT_EQ(submit(s.get(), req(id, 4, 1000)), AK_OK);
  step(s.get(), 0, 0);  // 4 prompts of 4 tokens in one step
  for (int64_t id = 0; id < 4; id++) ASSERT_EQ(info(s.get(), id).n_generated_tokens, 1);
  const int32_t long_prompt = 200;
  ASSERT_EQ(submit(s.get(), req(10, long_prompt, 5)), AK_OK);
  int32_t fed = 0, n_steps = 0;
  std::map<int64_t, int32_t> next_pos;
  for (int64_t id = 0; id < 4; id++) next_pos[id] = 4;
  while (fed < long_prompt) {
    auto items = step(s.get(), 0, 0);
    n_steps++;
    int64_t tokens = 0;
    for (const auto &it : items) {
      tokens += it.n_tokens;
      if (it.id == 10) {
        EXPECT_TRUE(it.is_prefill);
        EXPECT_EQ(it.is_new, fed == 0);
        EXPECT_EQ(it.pos0, fed);
        EXPECT_GE(it.n_tokens, 2);
        EXPECT_NE(long_prompt - fed - it.n_tokens, 1);
        EXPECT_EQ(it.samples, fed + it.n_tokens == long_prompt);
        fed += it.n_tokens;
      } else {
        EXPECT_FALSE(it.is_prefill);
        EXPECT_EQ(it.n_tokens, 1);
        EXPECT_EQ(it.pos0, next_pos[it.id]++);
      }
    }
    EXPECT_LE(tokens, 16);
    for (int64_t id = 0; id < 4; id++) EXPECT_TRUE(has_item(items, id)) << "decoder " << id << " starved";
  }
  EXPECT_EQ(n_steps, (long_prompt + 11) / 12);  // 12 tokens a step beside 4 decoders
  auto items = step(s.get(), 0, 0);
  EXPECT_EQ(items.size(), 5u);  // now five decoders
}

TEST(CoSchedStep, ChunkNeverLeavesOneToken) {
  std::vector<int64_t> caps{100000};
  co_sched_params_t p = params(&caps);
  p.max_running_seqs = 8;
  p.max_batch_tokens = 16;
  auto s = make(p);
  for (int64_t id = 0; id < 4; id++) ASSERT_EQ(submit(s.get(), req(id, 4, 1000)), AK_OK);
  step(s.get(), 0, 0);
  ASSERT_EQ(submit(s.get(), req(9, 13, 5)), AK_OK);  // 12 left a step: 11 + 2
  auto a = step(s.get(), 0, 0);
  auto b = step(s.get(), 0, 0);
  ASSERT_TRUE(has_item(a, 9) && has_item(b, 9));
  for (const auto &it : a)
    if (it.id == 9) EXPECT_EQ(it.n_tokens, 11);
  for (const auto &it : b)
    if (it.id == 9) EXPECT_EQ(it.n_tokens, 2);
}

TEST(CoSchedStep, OldestPromptFirstAndFinishEndsRequests) {
  std::vector<int64_t> caps{100000};
  co_sched_params_t p = params(&caps);
  p.max_running_seqs = 4;
  p.max_batch_tokens = 10;
  auto s = make(p);
  ASSERT_EQ(submit(s.get(), req(1, 30, 2)), AK_OK);
  ASSERT_EQ(submit(s.get(), req(2, 30, 3)), AK_OK);
  auto items = step(s.get(), 0, 0);
  ASSERT_EQ(items.size(), 1u);  // request 1 takes the whole step
  EXPECT_EQ(items[0].id, 1);
  EXPECT_EQ(items[0].n_tokens, 10);
  // a step that ends request 1 by `finished`, and max_new ends the others
  step(s.get(), 0, 0);
  items = step(s.get(), 0, 0);  // request 1's last chunk (10) samples
  EXPECT_EQ(info(s.get(), 1).n_generated_tokens, 1);
  co_sched_plan_t plan;
  ASSERT_EQ(co_sched_plan_step(s.get(), 0, 0, &plan), AK_OK);
  auto r = results_for(plan, {1});
  const int64_t *fin = nullptr;
  int32_t n_fin = -1;
  ASSERT_EQ(co_sched_step_done(s.get(), 0, r.data(), (int32_t)r.size(), &fin, &n_fin), AK_OK);
  ASSERT_EQ(n_fin, 1);
  EXPECT_EQ(fin[0], 1);
  EXPECT_EQ(info(s.get(), 1).state, CO_REQ_NONE);
  std::vector<int64_t> drops;
  int guard = 0;
  while (info(s.get(), 2).state != CO_REQ_NONE && guard++ < 20) step(s.get(), 0, 0, &drops);
  EXPECT_EQ(info(s.get(), 2).state, CO_REQ_NONE);  // 3 tokens sampled: ended by max_new
  step(s.get(), 0, 0, &drops);
  EXPECT_EQ(drops, std::vector<int64_t>{2});
  co_sched_stats_t st;
  co_sched_stats(s.get(), &st);
  EXPECT_EQ(st.n_finished, 2u);
  EXPECT_EQ(gstats(s.get(), 0).reserved_pages, 0);
}

// ---------------------------------------------------------------------------------
// fairness and the queue


namespace {
// One group of 100 pages; 2 layers, none full, 16-token pages, full-cache requests:
// a request of P + N tokens reserves 2 * ceil((P + N) / 16) pages.
SchedPtr fairness_sched(int64_t max_wait_us) {
  std::vector<int64_t> caps{100};
  co_sched_params_t p = params(&caps, 2, 0, 16);
  p.max_wait_us = max_wait_us;
  return make(p);
}
}  // namespace

TEST(CoSchedFairness, AdmitsInSubmitOrder) {
  auto s = fairness_sched(1000);
  for (int64_t id = 0; id < 5; id++) ASSERT_EQ(submit(s.get(), req(id, 10, 6, 0, id)), AK_OK);
  auto items = step(s.get(), 0, 10);
  ASSERT_EQ(items.size(), 5u);
  for (int64_t id = 0; id < 5; id++) EXPECT_EQ(items[id].id, id);
}

TEST(CoSchedFairness, LaterRequestsOvertakeOnlyUntilMaxWait) {
  auto s = fairness_sched(1000);
  ASSERT_EQ(submit(s.get(), req(1, 400, 80, 0, 0)), AK_OK);  // X: 60 pages, runs a long time
  step(s.get(), 0, 0);
  ASSERT_EQ(gstats(s.get(), 0).reserved_pages, 60);
  ASSERT_EQ(submit(s.get(), req(2, 300, 100, 0, 100)), AK_OK);  // A: 50 pages, does not fit
  ASSERT_EQ(submit(s.get(), req(3, 60, 20, 0, 150)), AK_OK);    // B: 10 pages, fits
  step(s.get(), 0, 500);  // A waited 400 us <= 1000: B may overtake it
  EXPECT_EQ(info(s.get(), 2).state, CO_REQ_QUEUED);
  EXPECT_EQ(info(s.get(), 3).state, CO_REQ_RUNNING);
  ASSERT_EQ(submit(s.get(), req(4, 60, 20, 0, 600)), AK_OK);  // C: 10 pages, 30 free
  step(s.get(), 0, 1200);                                      // A waited 1100 us: nothing passes it
  EXPECT_EQ(info(s.get(), 2).state, CO_REQ_QUEUED);
  EXPECT_EQ(info(s.get(), 4).state, CO_REQ_QUEUED);
  EXPECT_EQ(gstats(s.get(), 0).free_pages, 30);
  ASSERT_EQ(co_sched_abort(s.get(), 1), AK_OK);  // X leaves: A first, then C
  auto items = step(s.get(), 0, 1300);
  EXPECT_EQ(info(s.get(), 2).state, CO_REQ_RUNNING);
  EXPECT_EQ(info(s.get(), 4).state, CO_REQ_RUNNING);
  std::vector<int64_t> order;
  for (const auto &it : items)
    if (it.is_new) order.push_back(it.id);
  EXPECT_EQ(order, (std::vector<int64_t>{2, 4}));
}

TEST(CoSchedFairness, ZeroMaxWaitIsStrictFcfs) {
  auto s = fairness_sched(0);
  ASSERT_EQ(submit(s.get(), req(1, 400, 80, 0, 0)), AK_OK);
  step(s.get(), 0, 0);
  ASSERT_EQ(submit(s.get(), req(2, 300, 100, 0, 100)), AK_OK);
  ASSERT_EQ(submit(s.get(), req(3, 60, 20, 0, 100)), AK_OK);
  step(s.get(), 0, 200);
  EXPECT_EQ(info(s.get(), 3).state, CO_REQ_QUEUED);  // would fit, but may not pass request 2
}

TEST(CoSchedFairness, RequestThatFitsNoGroupBlocksNoOne) {
  std::vector<int64_t> caps{100};
  co_sched_params_t p = params(&caps, 2, 0, 16);
  p.max_wait_us = 0;
  auto s = make(p);
  ASSERT_EQ(submit(s.get(), req(1, 700, 100, 0, 0)), AK_OK);  // 100 pages: fits when empty
  const int64_t *failed;
  int32_t n_failed;
  ASSERT_EQ(co_sched_group_dead(s.get(), 0, &failed, &n_failed), AK_OK);
  ASSERT_EQ(revive(s.get(), 0, caps_of(50)), AK_OK);  // back with fewer pages
  ASSERT_EQ(submit(s.get(), req(2, 60, 20, 0, 0)), AK_OK);
  step(s.get(), 0, 1000000);
  EXPECT_EQ(info(s.get(), 1).state, CO_REQ_QUEUED);  // waits for its deadline's abort
  EXPECT_EQ(info(s.get(), 2).state, CO_REQ_RUNNING);
}

TEST(CoSchedQueue, LimitRefusesWithPoolFull) {
  std::vector<int64_t> caps{100};
  co_sched_params_t p = params(&caps, 2, 0, 16);
  p.max_queue = 3;
  auto s = make(p);
  for (int64_t id = 0; id < 3; id++) ASSERT_EQ(submit(s.get(), req(id, 10, 6)), AK_OK);
  EXPECT_EQ(submit(s.get(), req(3, 10, 6)), AK_ERR_POOL_FULL);
  EXPECT_NE(std::string(co_sched_errmsg(s.get())).find("max_queue=3"), std::string::npos) << co_sched_errmsg(s.get());
  EXPECT_EQ(info(s.get(), 3).state, CO_REQ_NONE);
  co_sched_stats_t st;
  co_sched_stats(s.get(), &st);
  EXPECT_EQ(st.n_refused, 1u);
  EXPECT_EQ(st.n_queued, 3);
  step(s.get(), 0, 0);  // admits all three: the queue has room again
  EXPECT_EQ(submit(s.get(), req(3, 10, 6)), AK_OK);
  ASSERT_EQ(co_sched_abort(s.get(), 0), AK_OK);
  EXPECT_EQ(submit(s.get(), req(0, 10, 6)), AK_OK);  // an ended id may come back
}

// ---------------------------------------------------------------------------------
// aborts

TEST(CoSchedAbort, QueuedLeavesWithoutADrop) {
  std::vector<int64_t> caps{100};
  co_sched_params_t p = params(&caps, 2, 0, 16);
  auto s = make(p);
  ASSERT_EQ(submit(s.get(), req(1, 10, 6)), AK_OK);
  ASSERT_EQ(co_sched_abort(s.get(), 1), AK_OK);
  EXPECT_EQ(info(s.get(), 1).state, CO_REQ_NONE);
  std::vector<int64_t> drops;
  auto items = step(s.get(), 0, 0, &drops);
  EXPECT_TRUE(items.empty());
  EXPECT_TRUE(drops.empty());
  EXPECT_EQ(co_sched_abort(s.get(), 1), AK_ERR_NOT_FOUND);
  EXPECT_EQ(co_sched_abort(s.get(), 77), AK_ERR_NOT_FOUND);
  co_sched_stats_t st;
  co_sched_stats(s.get(), &st);
  EXPECT_EQ(st.n_aborted, 1u);
  EXPECT_EQ(st.n_queued, 0);
}

TEST(CoSchedAbort, RunningFreesPagesAtOnceAndIsDropped) {
  std::vector<int64_t> caps{100};
  co_sched_params_t p = params(&caps, 2, 0, 16);
  auto s = make(p);
  ASSERT_EQ(submit(s.get(), req(1, 100, 60)), AK_OK);  // 20 pages
  ASSERT_EQ(submit(s.get(), req(2, 100, 60)), AK_OK);
  step(s.get(), 0, 0);
  ASSERT_EQ(gstats(s.get(), 0).free_pages, 60);
  ASSERT_EQ(co_sched_abort(s.get(), 1), AK_OK);
  EXPECT_EQ(gstats(s.get(), 0).free_pages, 80);  // at once, before any step
  EXPECT_EQ(gstats(s.get(), 0).n_pending_drops, 1);
  std::vector<int64_t> drops;
  auto items = step(s.get(), 0, 0, &drops);
  EXPECT_EQ(drops, std::vector<int64_t>{1});
  EXPECT_FALSE(has_item(items, 1));
  EXPECT_TRUE(has_item(items, 2));
  step(s.get(), 0, 0, &drops);
  EXPECT_TRUE(drops.empty());  // dropped once
}

TEST(CoSchedAbort, InFlightResultIsIgnored) {
  std::vector<int64_t> caps{100};
  co_sched_params_t p = params(&caps, 2, 0, 16);
  auto s = make(p);
  ASSERT_EQ(submit(s.get(), req(1, 100, 60)), AK_OK);
  ASSERT_EQ(submit(s.get(), req(2, 100, 60)), AK_OK);
  co_sched_plan_t plan;
  ASSERT_EQ(co_sched_plan_step(s.get(), 0, 0, &plan), AK_OK);
  auto r = results_for(plan);
  ASSERT_EQ(r.size(), 2u);
  ASSERT_EQ(co_sched_abort(s.get(), 2), AK_OK);  // while the step runs
  EXPECT_EQ(gstats(s.get(), 0).free_pages, 80);
  ASSERT_EQ(co_sched_step_done(s.get(), 0, r.data(), 2, nullptr, nullptr), AK_OK) << co_sched_errmsg(s.get());
  EXPECT_EQ(info(s.get(), 1).n_generated_tokens, 1);
  EXPECT_EQ(info(s.get(), 2).state, CO_REQ_NONE);
  // the aborted one's result may also be missing
  ASSERT_EQ(submit(s.get(), req(3, 100, 60)), AK_OK);
  std::vector<int64_t> drops;
  ASSERT_EQ(co_sched_plan_step(s.get(), 0, 0, &plan), AK_OK);
  drops.assign(plan.drops, plan.drops + plan.n_drops);
  EXPECT_EQ(drops, std::vector<int64_t>{2});
  r = results_for(plan);
  ASSERT_EQ(co_sched_abort(s.get(), 3), AK_OK);
  std::vector<co_sched_result_t> only1;
  for (auto &x : r)
    if (x.id == 1) only1.push_back(x);
  ASSERT_EQ(co_sched_step_done(s.get(), 0, only1.data(), 1, nullptr, nullptr), AK_OK) << co_sched_errmsg(s.get());
  EXPECT_EQ(co_sched_check(s.get()), AK_OK) << co_sched_errmsg(s.get());
}

// ---------------------------------------------------------------------------------
// routing and dead groups

TEST(CoSchedRouting, GoesToTheGroupWithTheMostFreePages) {
  std::vector<int64_t> caps{100, 300, 200};
  co_sched_params_t p = params(&caps, 2, 0, 16);
  auto s = make(p);
  std::vector<int64_t> free_pages = caps;
  const int64_t need = 40;  // 2 layers of 20 pages
  for (int64_t id = 0; id < 12; id++) ASSERT_EQ(submit(s.get(), req(id, 300, 20)), AK_OK);
  step(s.get(), 0, 0);
  for (int64_t id = 0; id < 12; id++) {
    int32_t g = (int32_t)(std::max_element(free_pages.begin(), free_pages.end()) - free_pages.begin());
    if (free_pages[g] < need) {
      EXPECT_EQ(info(s.get(), id).state, CO_REQ_QUEUED) << id;
      continue;
    }
    EXPECT_EQ(info(s.get(), id).group_idx, g) << "request " << id;
    free_pages[g] -= need;
  }
  for (int32_t g = 0; g < 3; g++) EXPECT_EQ(gstats(s.get(), g).free_pages, free_pages[g]);
  EXPECT_EQ(gstats(s.get(), 0).n_running, 2);  // ties go to the lowest index
  EXPECT_EQ(gstats(s.get(), 1).n_running, 6);
  EXPECT_EQ(gstats(s.get(), 2).n_running, 4);
}

TEST(CoSchedDeadGroup, FailsWhatItRanRequeuesWhatItNeverSaw) {
  std::vector<int64_t> caps{100, 100};
  co_sched_params_t p = params(&caps, 2, 0, 16);
  auto s = make(p);
  ASSERT_EQ(submit(s.get(), req(1, 100, 60)), AK_OK);  // -> group 0
  ASSERT_EQ(submit(s.get(), req(2, 100, 60)), AK_OK);  // -> group 1
  co_sched_plan_t plan0, plan1;
  ASSERT_EQ(co_sched_plan_step(s.get(), 0, 0, &plan0), AK_OK);
  ASSERT_EQ(co_sched_plan_step(s.get(), 1, 0, &plan1), AK_OK);
  ASSERT_EQ(info(s.get(), 1).group_idx, 0);
  ASSERT_EQ(info(s.get(), 2).group_idx, 1);
  auto r0 = results_for(plan0);
  ASSERT_EQ(co_sched_step_done(s.get(), 0, r0.data(), (int32_t)r0.size(), nullptr, nullptr), AK_OK);
  // group 1 is in flight; request 3 and 4 are admitted while planning group 0 (one to
  // each: group 1 has as many free pages, not yet sent to it)
  ASSERT_EQ(submit(s.get(), req(3, 100, 60)), AK_OK);
  ASSERT_EQ(submit(s.get(), req(4, 100, 60)), AK_OK);
  ASSERT_EQ(co_sched_plan_step(s.get(), 0, 0, &plan0), AK_OK);
  EXPECT_EQ(info(s.get(), 3).group_idx, 0);
  EXPECT_EQ(info(s.get(), 4).group_idx, 1);
  EXPECT_FALSE(info(s.get(), 4).on_worker);
  // group 1 dies mid-step
  const int64_t *failed = nullptr;
  int32_t n_failed = -1;
  ASSERT_EQ(co_sched_group_dead(s.get(), 1, &failed, &n_failed), AK_OK);
  ASSERT_EQ(n_failed, 1);
  EXPECT_EQ(failed[0], 2);
  EXPECT_EQ(info(s.get(), 2).state, CO_REQ_NONE);
  EXPECT_EQ(info(s.get(), 4).state, CO_REQ_QUEUED);  // back in the queue
  co_sched_group_stats_t g1 = gstats(s.get(), 1);
  EXPECT_TRUE(g1.dead);
  EXPECT_EQ(g1.reserved_pages, 0);
  EXPECT_EQ(g1.n_running, 0);
  ASSERT_EQ(co_sched_group_dead(s.get(), 1, &failed, &n_failed), AK_OK);  // again: nothing more
  EXPECT_EQ(n_failed, 0);
  // a result from the dead group, and plans for it, are refused
  auto r1 = results_for(plan1);
  EXPECT_EQ(co_sched_step_done(s.get(), 1, r1.data(), (int32_t)r1.size(), nullptr, nullptr), AK_ERR_INVALID_ARG);
  EXPECT_EQ(co_sched_plan_step(s.get(), 1, 0, &plan1), AK_ERR_INVALID_ARG);
  EXPECT_NE(std::string(co_sched_errmsg(s.get())).find("dead"), std::string::npos);
  // routing skips it although it has the most free pages
  r0 = results_for(plan0);
  ASSERT_EQ(co_sched_step_done(s.get(), 0, r0.data(), (int32_t)r0.size(), nullptr, nullptr), AK_OK);
  ASSERT_EQ(submit(s.get(), req(5, 10, 6)), AK_OK);
  step(s.get(), 0, 0);
  EXPECT_EQ(info(s.get(), 4).group_idx, 0);
  EXPECT_EQ(info(s.get(), 5).group_idx, 0);
  co_sched_stats_t st;
  co_sched_stats(s.get(), &st);
  EXPECT_EQ(st.n_failed, 1u);
  EXPECT_EQ(st.n_requeued, 1u);
  // revived, it takes new work again
  EXPECT_EQ(revive(s.get(), 1, caps_of(0)), AK_ERR_INVALID_ARG);
  ASSERT_EQ(revive(s.get(), 1, caps_of(120)), AK_OK);
  EXPECT_EQ(revive(s.get(), 1, caps_of(120)), AK_ERR_INVALID_ARG);  // not dead
  ASSERT_EQ(submit(s.get(), req(6, 10, 6)), AK_OK);
  auto items = step(s.get(), 1, 0);
  EXPECT_EQ(info(s.get(), 6).group_idx, 1);
  ASSERT_EQ(items.size(), 1u);
  EXPECT_TRUE(items[0].is_new);
}

// A worker restarted with fewer slots (another --max-seqs) and a smaller step: the
// revived group's plans stay within them, whatever the queue holds, and the other
// group keeps the scheduler's own limits.
TEST(CoSchedGroups, RevivedWithFewerSlotsIsNeverOverFilled) {
  std::vector<int64_t> caps{1000, 1000};
  co_sched_params_t p = params(&caps, 2, 0, 16);
  p.max_running_seqs = 8;
  p.max_batch_tokens = 64;
  auto s = make(p);
  EXPECT_EQ(gstats(s.get(), 1).max_running_seqs, 8);
  EXPECT_EQ(gstats(s.get(), 1).max_batch_tokens, 64);
  ASSERT_EQ(co_sched_group_dead(s.get(), 1, nullptr, nullptr), AK_OK);
  // bad caps change nothing: still dead
  EXPECT_EQ(revive(s.get(), 1, caps_of(500, 0, 64)), AK_ERR_INVALID_ARG);
  EXPECT_EQ(revive(s.get(), 1, caps_of(500, 9, 64)), AK_ERR_INVALID_ARG);
  EXPECT_NE(std::string(co_sched_errmsg(s.get())).find("max_running_seqs=9 outside [1, 8]"), std::string::npos)
      << co_sched_errmsg(s.get());
  EXPECT_EQ(revive(s.get(), 1, caps_of(500, 3, 4)), AK_ERR_INVALID_ARG);
  EXPECT_NE(std::string(co_sched_errmsg(s.get())).find("max_batch_tokens=4"), std::string::npos)
      << co_sched_errmsg(s.get());
  EXPECT_EQ(co_sched_group_revive(s.get(), 1, nullptr), AK_ERR_INVALID_ARG);
  EXPECT_TRUE(gstats(s.get(), 1).dead);
  ASSERT_EQ(revive(s.get(), 1, caps_of(1000, 2, 5)), AK_OK);
  EXPECT_EQ(gstats(s.get(), 1).max_running_seqs, 2);
  EXPECT_EQ(gstats(s.get(), 1).max_batch_tokens, 5);
  for (int64_t id = 1; id <= 20; id++) ASSERT_EQ(submit(s.get(), req(id, 9, 4)), AK_OK);
  int32_t most_running[2] = {0, 0};
  for (int round = 0; round < 60; round++)
    for (int32_t g = 0; g < 2; g++) {
      auto items = step(s.get(), g, 0);
      int64_t n_tokens = 0;
      for (const auto &it : items) n_tokens += it.n_tokens;
      EXPECT_LE(n_tokens, g == 1 ? 5 : 64) << "group " << g << " round " << round;
      EXPECT_LE((int32_t)items.size(), g == 1 ? 2 : 8);
      most_running[g] = std::max(most_running[g], gstats(s.get(), g).n_running);
    }
  EXPECT_EQ(most_running[1], 2) << "the revived group is used, up to its slots";
  EXPECT_EQ(most_running[0], 8);
  co_sched_stats_t st;
  co_sched_stats(s.get(), &st);
  EXPECT_EQ(st.n_finished, 20u);
}

// Groups of different sizes from the start (group_max_running_seqs / _batch_tokens).
TEST(CoSchedGroups, PerGroupSlotsAtCreate) {
  std::vector<int64_t> caps{1000, 1000};
  co_sched_params_t p = params(&caps, 2, 0, 16);
  p.max_running_seqs = 8;
  p.max_batch_tokens = 64;
  int32_t seqs[2] = {1, 8}, batch[2] = {3, 64};
  p.group_max_running_seqs = seqs;
  p.group_max_batch_tokens = batch;
  auto s = make(p);
  for (int64_t id = 1; id <= 6; id++) ASSERT_EQ(submit(s.get(), req(id, 9, 4)), AK_OK);
  step(s.get(), 0, 0);
  EXPECT_EQ(gstats(s.get(), 0).n_running, 1);
  EXPECT_EQ(gstats(s.get(), 1).n_running, 5);
  // bad arrays, by name
  co_sched_t *bad = nullptr;
  ak_err_t err;
  seqs[0] = 9;
  EXPECT_EQ(co_sched_create(&p, &err, &bad), AK_ERR_INVALID_ARG);
  EXPECT_NE(std::string(err.msg).find("group_max_running_seqs[0]=9"), std::string::npos) << err.msg;
  seqs[0] = 2;
  EXPECT_EQ(co_sched_create(&p, &err, &bad), AK_ERR_INVALID_ARG);
  EXPECT_NE(std::string(err.msg).find("group_max_batch_tokens[0]=3"), std::string::npos) << err.msg;
  EXPECT_EQ(bad, nullptr);
}

// ---------------------------------------------------------------------------------
// bad input: one test per class

TEST(CoSchedBadInput, CreateNamesTheField) {
  std::vector<int64_t> caps{100, 100};
  struct Case {
    const char *field;
    void (*edit)(co_sched_params_t *);
  };
  const Case cases[] = {
      {"n_layers", [](co_sched_params_t *p) { p->shape.n_layers = 0; }},
      {"n_full_layers", [](co_sched_params_t *p) { p->shape.n_full_layers = -1; }},
      {"page_tokens", [](co_sched_params_t *p) { p->shape.page_tokens = 0; }},
      {"n_groups", [](co_sched_params_t *p) { p->n_groups = 0; }},
      {"group_capacity_pages is NULL", [](co_sched_params_t *p) { p->group_capacity_pages = nullptr; }},
      {"max_running_seqs", [](co_sched_params_t *p) { p->max_running_seqs = 0; }},
      {"max_batch_tokens", [](co_sched_params_t *p) { p->max_batch_tokens = p->max_running_seqs + 1; }},
      {"max_queue", [](co_sched_params_t *p) { p->max_queue = 0; }},
      {"max_seq_tokens", [](co_sched_params_t *p) { p->max_seq_tokens = 1; }},
      {"max_wait_us", [](co_sched_params_t *p) { p->max_wait_us = -1; }},
  };
  for (const Case &c : cases) {
    co_sched_params_t p = params(&caps);
    c.edit(&p);
    ak_err_t err;
    ak_err_clear(&err);
    co_sched_t *s = nullptr;
    EXPECT_EQ(co_sched_create(&p, &err, &s), AK_ERR_INVALID_ARG) << c.field;
    EXPECT_EQ(s, nullptr);
    EXPECT_NE(std::string(err.msg).find(c.field), std::string::npos) << err.msg;
  }
  std::vector<int64_t> bad{100, 0};
  co_sched_params_t p = params(&bad);
  ak_err_t err;
  co_sched_t *s = nullptr;
  EXPECT_EQ(co_sched_create(&p, &err, &s), AK_ERR_INVALID_ARG);
  EXPECT_NE(std::string(err.msg).find("group_capacity_pages[1]=0"), std::string::npos) << err.msg;
  EXPECT_EQ(co_sched_create(nullptr, nullptr, &s), AK_ERR_INVALID_ARG);
}

TEST(CoSchedBadInput, CreateUnwindsWhenAnAllocationFails) {
  std::vector<int64_t> caps{100, 100};
  co_sched_params_t p = params(&caps);
  int64_t before = ak_alloc_outstanding_bytes(AK_MEM_HOST);
  for (int n = 1; n <= 8; n++) {
    ak_alloc_fail_after(n);
    co_sched_t *s = nullptr;
    ak_status_t st = co_sched_create(&p, nullptr, &s);
    ak_alloc_fail_after(0);
    if (st == AK_OK) {
      co_sched_destroy(s);
    } else {
      EXPECT_EQ(st, AK_ERR_NO_MEMORY);
    }
    EXPECT_EQ(ak_alloc_outstanding_bytes(AK_MEM_HOST), before) << "failing allocation " << n;
  }
}

TEST(CoSchedBadInput, SubmitRefusesEachClass) {
  std::vector<int64_t> caps{100};
  co_sched_params_t p = params(&caps, 2, 0, 16);
  p.max_seq_tokens = 1000;
  auto s = make(p);
  struct Case {
    co_sched_req_t r;
    ak_status_t st;
    const char *msg;
  };
  ASSERT_EQ(submit(s.get(), req(1, 10, 6)), AK_OK);
  const Case cases[] = {
      {req(2, 0, 6), AK_ERR_INVALID_ARG, "n_prompt_tokens=0"},
      {req(2, 10, 0), AK_ERR_INVALID_ARG, "max_new_tokens=0"},
      {req(2, 10, 6, -16), AK_ERR_INVALID_ARG, "budget_tokens=-16"},
      {req(1, 10, 6), AK_ERR_INVALID_ARG, "already queued"},
      {req(2, 900, 101), AK_ERR_OVER_BUDGET, "max_seq_tokens=1000"},
      {req(2, 800, 1), AK_ERR_OVER_BUDGET, "the largest group has 100"},
  };
  for (const Case &c : cases) {
    EXPECT_EQ(co_sched_submit(s.get(), &c.r), c.st) << c.msg;
    EXPECT_NE(std::string(co_sched_errmsg(s.get())).find(c.msg), std::string::npos) << co_sched_errmsg(s.get());
  }
  EXPECT_EQ(co_sched_submit(s.get(), nullptr), AK_ERR_INVALID_ARG);
  co_sched_stats_t st;
  co_sched_stats(s.get(), &st);
  EXPECT_EQ(st.n_submitted, 1u);
  EXPECT_EQ(st.n_queued, 1);
  step(s.get(), 0, 0);
  EXPECT_EQ(submit(s.get(), req(1, 10, 6)), AK_ERR_INVALID_ARG);
  EXPECT_NE(std::string(co_sched_errmsg(s.get())).find("already running"), std::string::npos);
}

TEST(CoSchedBadInput, PlanAndStepDoneOutOfOrder) {
  std::vector<int64_t> caps{100};
  co_sched_params_t p = params(&caps, 2, 0, 16);
  auto s = make(p);
  co_sched_plan_t plan;
  co_sched_result_t none{};
  EXPECT_EQ(co_sched_plan_step(s.get(), 1, 0, &plan), AK_ERR_INVALID_ARG);
  EXPECT_NE(std::string(co_sched_errmsg(s.get())).find("group_idx=1"), std::string::npos);
  EXPECT_EQ(co_sched_plan_step(s.get(), 0, 0, nullptr), AK_ERR_INVALID_ARG);
  EXPECT_EQ(co_sched_step_done(s.get(), 0, &none, 0, nullptr, nullptr), AK_ERR_INVALID_ARG);
  EXPECT_NE(std::string(co_sched_errmsg(s.get())).find("no step in flight"), std::string::npos);
  ASSERT_EQ(co_sched_plan_step(s.get(), 0, 0, &plan), AK_OK);
  EXPECT_EQ(plan.n_items, 0);  // nothing to do: still idle
  ASSERT_EQ(submit(s.get(), req(1, 10, 6)), AK_OK);
  ASSERT_EQ(submit(s.get(), req(2, 10, 6)), AK_OK);
  ASSERT_EQ(co_sched_plan_step(s.get(), 0, 0, &plan), AK_OK);
  ASSERT_EQ(plan.n_items, 2);
  EXPECT_EQ(co_sched_plan_step(s.get(), 0, 0, &plan), AK_ERR_INVALID_ARG);
  EXPECT_NE(std::string(co_sched_errmsg(s.get())).find("in flight"), std::string::npos);
  // each bad result set changes nothing
  co_sched_result_t twice[] = {{1, 1, 0}, {1, 1, 0}, {2, 1, 0}};
  EXPECT_EQ(co_sched_step_done(s.get(), 0, twice, 3, nullptr, nullptr), AK_ERR_INVALID_ARG);
  EXPECT_NE(std::string(co_sched_errmsg(s.get())).find("twice"), std::string::npos);
  co_sched_result_t missing[] = {{1, 1, 0}};
  EXPECT_EQ(co_sched_step_done(s.get(), 0, missing, 1, nullptr, nullptr), AK_ERR_INVALID_ARG);
  EXPECT_NE(std::string(co_sched_errmsg(s.get())).find("no result for request 2"), std::string::npos);
  co_sched_result_t wrong[] = {{1, 1, 0}, {2, 0, 0}};
  EXPECT_EQ(co_sched_step_done(s.get(), 0, wrong, 2, nullptr, nullptr), AK_ERR_INVALID_ARG);
  EXPECT_NE(std::string(co_sched_errmsg(s.get())).find("sampled 0 tokens"), std::string::npos);
  EXPECT_EQ(co_sched_step_done(s.get(), 0, nullptr, 2, nullptr, nullptr), AK_ERR_INVALID_ARG);
  EXPECT_EQ(info(s.get(), 1).n_generated_tokens, 0);
  EXPECT_TRUE(gstats(s.get(), 0).in_step);
  co_sched_result_t good[] = {{2, 1, 0}, {1, 1, 0}, {99, 1, 0}};  // any order; an unknown id is ignored
  EXPECT_EQ(co_sched_step_done(s.get(), 0, good, 3, nullptr, nullptr), AK_OK) << co_sched_errmsg(s.get());
  EXPECT_EQ(info(s.get(), 1).n_generated_tokens, 1);
  EXPECT_EQ(co_sched_group_dead(s.get(), 5, nullptr, nullptr), AK_ERR_INVALID_ARG);
  EXPECT_EQ(revive(s.get(), -1, caps_of(10)), AK_ERR_INVALID_ARG);
  co_sched_group_stats_t gs;
  EXPECT_EQ(co_sched_group_stats(s.get(), 3, &gs), AK_ERR_INVALID_ARG);
}

// ---------------------------------------------------------------------------------
// randomized runs

namespace {
enum Outcome { LIVE = 0, FINISHED, ABORTED, FAILED };
struct Track {
  Outcome outcome = LIVE;
  int32_t prompt = 0, max_new = 0;
  int32_t sent_group = -1; // the group whose worker holds it
  int sent_deaths = 0;     // that group's deaths when it was sent
  bool dropped = false;
};

// What a test harness sees of the whole run; checks each plan and result against it.
struct Harness {
  co_sched_t *s;
  int32_t n_groups;
  std::map<int64_t, Track> tr;
  std::vector<int> deaths;
  Harness(co_sched_t *sched, int32_t n) : s(sched), n_groups(n), deaths(n, 0) {}

  void check_plan(int32_t g, const co_sched_plan_t &plan, int32_t max_batch_tokens) {
    std::set<int64_t> seen;
    for (int32_t i = 0; i < plan.n_drops; i++) {
      int64_t id = plan.drops[i];
      ASSERT_TRUE(tr.count(id)) << id;
      Track &t = tr[id];
      EXPECT_NE(t.outcome, LIVE) << "drop of live request " << id;
      EXPECT_EQ(t.sent_group, g) << "drop of " << id << " on a group that never ran it";
      EXPECT_FALSE(t.dropped) << id << " dropped twice";
      t.dropped = true;
    }
    int64_t tokens = 0;
    for (int32_t i = 0; i < plan.n_items; i++) {
      const co_sched_item_t &it = plan.items[i];
      ASSERT_TRUE(seen.insert(it.id).second) << "request " << it.id << " twice in a plan";
      ASSERT_TRUE(tr.count(it.id));
      Track &t = tr[it.id];
      EXPECT_EQ(t.outcome, LIVE) << it.id;
      EXPECT_EQ((bool)it.is_new, t.sent_group != g) << it.id;
      if (it.is_new) {
        t.sent_group = g;
        t.sent_deaths = deaths[g];
        t.dropped = false;
      }
      EXPECT_GE(it.n_tokens, 1);
      if (it.is_prefill) {
        EXPECT_TRUE(it.n_tokens >= 2 || t.prompt == 1) << it.id;
        EXPECT_NE(t.prompt - it.pos0 - it.n_tokens, 1) << it.id;
      }
      tokens += it.n_tokens;
    }
    EXPECT_EQ(tokens, plan.n_tokens);
    EXPECT_LE(tokens, max_batch_tokens);
    // every decoding sequence of the group is in the step
    for (auto &kv : tr) {
      if (kv.second.outcome != LIVE) continue;
      co_sched_req_info_t in = info(s, kv.first);
      if (in.state == CO_REQ_RUNNING && in.group_idx == g && in.n_prefilled_tokens == kv.second.prompt)
        EXPECT_TRUE(seen.count(kv.first)) << "decoder " << kv.first << " starved";
    }
  }
  void ended(const int64_t *ids, int32_t n, Outcome o) {
    for (int32_t i = 0; i < n; i++) {
      ASSERT_TRUE(tr.count(ids[i]));
      EXPECT_EQ(tr[ids[i]].outcome, LIVE) << ids[i] << " ended twice";
      tr[ids[i]].outcome = o;
    }
  }
  void check_end() {
    co_sched_stats_t st;
    co_sched_stats(s, &st);
    EXPECT_EQ(st.n_queued, 0);
    EXPECT_EQ(st.n_running, 0);
    EXPECT_EQ(st.n_submitted, tr.size());
    EXPECT_EQ(st.n_finished + st.n_aborted + st.n_failed, st.n_submitted);
    uint64_t counts[4] = {0, 0, 0, 0};
    for (auto &kv : tr) {
      const Track &t = kv.second;
      counts[t.outcome]++;
      if (t.sent_group >= 0 && t.outcome != FAILED && !t.dropped)
        EXPECT_GT(deaths[t.sent_group], t.sent_deaths) << kv.first << " never dropped";
    }
    EXPECT_EQ(counts[LIVE], 0u);
    EXPECT_EQ(counts[FINISHED], st.n_finished);
    EXPECT_EQ(counts[ABORTED], st.n_aborted);
    EXPECT_EQ(counts[FAILED], st.n_failed);
    for (int32_t g = 0; g < n_groups; g++) EXPECT_EQ(gstats(s, g).reserved_pages, 0);
  }
};
}  // namespace

// Thousands of steps over three groups with random arrivals, budgets, aborts (queued,
// running, in flight), finishes and group deaths; then a drain. Every step: the
// scheduler's own check (reservations <= capacity, lists, map) and the harness's
// (no id twice, decoders fed, drops only of ended requests the group ran, once).
TEST(CoSchedRandom, InvariantsHoldEveryStep) {
  for (uint32_t seed : {1u, 2u, 3u}) {
    std::vector<int64_t> caps{300, 500, 200};
    co_sched_params_t p = params(&caps, 4, 1, 8);
    p.max_running_seqs = 16;
    p.max_batch_tokens = 64;
    p.max_queue = 40;
    p.max_wait_us = 5000;
    int64_t before = ak_alloc_outstanding_bytes(AK_MEM_HOST);
    {
      auto sp = make(p);
      co_sched_t *s = sp.get();
      Harness h(s, 3);
      std::mt19937 rng(seed);
      auto uni = [&](int lo, int hi) { return std::uniform_int_distribution<int>(lo, hi)(rng); };
      auto coin = [&](double pr) { return std::uniform_real_distribution<double>(0, 1)(rng) < pr; };
      std::vector<bool> in_flight(3, false), dead(3, false);
      std::vector<std::vector<co_sched_item_t>> flight(3);
      int64_t now = 0, next_id = 1000;
      uint64_t n_refused = 0, n_steps = 0;
      const int kIters = 4000;
      for (int iter = 0; iter < kIters + 100000; iter++) {
        bool drain = iter >= kIters;
        now += uni(0, 2000);
        if (!drain) {
          for (int k = coin(0.02) ? 8 : coin(0.45); k > 0; k--) {  // bursts fill the queue
            int64_t id = next_id++;
            co_sched_req_t r = req(id, uni(1, 300), uni(1, 60), std::vector<int32_t>{0, 16, 32, 64}[uni(0, 3)], now);
            ak_status_t st = co_sched_submit(s, &r);
            if (st == AK_OK) {
              Track t;
              t.prompt = r.n_prompt_tokens;
              t.max_new = r.max_new_tokens;
              h.tr[id] = t;
            } else {
              ASSERT_EQ(st, AK_ERR_POOL_FULL) << co_sched_errmsg(s);
              n_refused++;
            }
          }
          if (coin(0.15) && !h.tr.empty()) {
            auto it = h.tr.lower_bound(uni((int)next_id - 100, (int)next_id));  // recent: likely live
            if (it != h.tr.end() && it->second.outcome == LIVE) {
              ASSERT_EQ(co_sched_abort(s, it->first), AK_OK) << co_sched_errmsg(s);
              it->second.outcome = ABORTED;
            }
          }
          int32_t g = uni(0, 2);
          if (coin(0.003) && !dead[g]) {
            const int64_t *failed;
            int32_t n_failed;
            ASSERT_EQ(co_sched_group_dead(s, g, &failed, &n_failed), AK_OK);
            for (int32_t i = 0; i < n_failed; i++) EXPECT_EQ(h.tr[failed[i]].sent_group, g);
            h.ended(failed, n_failed, FAILED);
            h.deaths[g]++;
            dead[g] = true;
            in_flight[g] = false;
          }
        }
        for (int32_t g = 0; g < 3; g++) {
          if (dead[g]) {
            if (drain || coin(0.02)) {
              // back with as many slots and tokens as before, or fewer (another --max-seqs)
              int32_t seqs = coin(0.5) ? p.max_running_seqs : uni(1, p.max_running_seqs);
              ASSERT_EQ(revive(s, g, caps_of(caps[g], seqs, uni(seqs + 2, p.max_batch_tokens))), AK_OK);
              dead[g] = false;
            }
            continue;
          }
          if (in_flight[g]) {
            if (!drain && coin(0.3)) continue;  // still running
            std::vector<co_sched_result_t> res;
            for (const auto &it : flight[g]) {
              bool live = h.tr[it.id].outcome == LIVE;
              if (!live && coin(0.5)) continue;  // an aborted one's result may be missing
              res.push_back({it.id, it.samples, it.samples && coin(0.03) ? 1 : 0});
            }
            const int64_t *fin;
            int32_t n_fin;
            ASSERT_EQ(co_sched_step_done(s, g, res.data(), (int32_t)res.size(), &fin, &n_fin), AK_OK)
                << co_sched_errmsg(s);
            h.ended(fin, n_fin, FINISHED);
            in_flight[g] = false;
          }
          co_sched_plan_t plan;
          ASSERT_EQ(co_sched_plan_step(s, g, now, &plan), AK_OK) << co_sched_errmsg(s);
          h.check_plan(g, plan, gstats(s, g).max_batch_tokens);
          EXPECT_LE(plan.n_items, gstats(s, g).max_running_seqs);
          flight[g].assign(plan.items, plan.items + plan.n_items);
          in_flight[g] = plan.n_items > 0;
          n_steps += plan.n_items > 0;
        }
        ASSERT_EQ(co_sched_check(s), AK_OK) << co_sched_errmsg(s) << " at iteration " << iter;
        if (drain) {
          co_sched_stats_t st;
          co_sched_stats(s, &st);
          if (st.n_queued == 0 && st.n_running == 0 && !in_flight[0] && !in_flight[1] && !in_flight[2]) break;
        }
      }
      // one more plan per group flushes the last drops
      for (int32_t g = 0; g < 3; g++) {
        co_sched_plan_t plan;
        ASSERT_EQ(co_sched_plan_step(s, g, now, &plan), AK_OK);
        h.check_plan(g, plan, p.max_batch_tokens);
        EXPECT_EQ(plan.n_items, 0);
      }
      h.check_end();
      co_sched_stats_t st;
      co_sched_stats(s, &st);
      EXPECT_EQ(st.n_refused, n_refused);
      EXPECT_GT(n_steps, 3000u) << "seed " << seed;
      EXPECT_GT(st.n_finished, 500u);
      EXPECT_GT(st.n_aborted, 100u);
      EXPECT_GT(st.n_refused, 10u);
      EXPECT_GT(st.n_failed, 0u);
      EXPECT_GT(st.n_requeued, 0u);
      RecordProperty("steps_seed_" + std::to_string(seed), (int)n_steps);
      RecordProperty("submitted_seed_" + std::to_string(seed), (int)st.n_submitted);
    }
    EXPECT_EQ(ak_alloc_outstanding_bytes(AK_MEM_HOST), before);
  }
}

// The same kind of run with a real kvpool per group (CPU, tiny heads) executing every
// plan as a worker would: drops released first, new sequences created, the batch
// begun, every layer appended and viewed, the step ended; sometimes the finished
// prompts compacted. No step may meet a full pool, and the pages a pool holds after
// begin never exceed the reservations its group had when the step was planned.
TEST(CoSchedRandom, RealPoolsNeverRunOutOfPages) {
  for (kv_policy_t pol : {KV_POLICY_ARKVALE, KV_POLICY_FULL}) {
    const int32_t n_layers = 3, n_full = 1, page = 4;
    const int32_t budget = pol == KV_POLICY_FULL ? 0 : 4 * page;
    std::vector<int64_t> caps{150, 100};
    co_sched_params_t p = params(&caps, n_layers, n_full, page);
    p.max_running_seqs = 6;
    p.max_batch_tokens = 24;
    p.max_queue = 20;
    p.max_seq_tokens = 200;
    p.max_wait_us = 3000;
    auto sp = make(p);
    co_sched_t *s = sp.get();
    Harness h(s, 2);
    std::mt19937 rng(11);
    auto uni = [&](int lo, int hi) { return std::uniform_int_distribution<int>(lo, hi)(rng); };
    auto coin = [&](double pr) { return std::uniform_real_distribution<double>(0, 1)(rng) < pr; };
    auto new_pool = [&](int64_t n_pages) {
      return std::make_unique<RealPool>(pol, n_layers, n_full, page, budget, n_pages, p.max_running_seqs,
                                        p.max_seq_tokens);
    };
    std::vector<std::unique_ptr<RealPool>> pools;
    for (int64_t c : caps) pools.push_back(new_pool(c));
    std::vector<std::map<int64_t, kv_seq_id_t>> seqs(2);
    int64_t now = 0, next_id = 1, max_seen_used = 0;
    int n_compacted = 0;
    const int kIters = 1500;
    for (int iter = 0; iter < kIters + 20000; iter++) {
      bool drain = iter >= kIters;
      now += uni(0, 1000);
      if (!drain && coin(0.5)) {
        int64_t id = next_id++;
        co_sched_req_t r = req(id, uni(1, 60), uni(1, 30), budget, now);
        ak_status_t st = co_sched_submit(s, &r);
        if (st == AK_OK) {
          Track t;
          t.prompt = r.n_prompt_tokens;
          t.max_new = r.max_new_tokens;
          h.tr[id] = t;
        } else {
          ASSERT_EQ(st, AK_ERR_POOL_FULL) << co_sched_errmsg(s);
        }
      }
      if (!drain && coin(0.002)) {  // group 1's worker dies and comes back with other capacity
        const int64_t *failed;
        int32_t n_failed;
        ASSERT_EQ(co_sched_group_dead(s, 1, &failed, &n_failed), AK_OK);
        h.ended(failed, n_failed, FAILED);
        h.deaths[1]++;
        int64_t cap = uni(80, 160);
        pools[1] = new_pool(cap);
        seqs[1].clear();
        ASSERT_EQ(revive(s, 1, caps_of(cap, p.max_running_seqs, p.max_batch_tokens)), AK_OK);
      }
      for (int32_t g = 0; g < 2; g++) {
        co_sched_plan_t plan;
        ASSERT_EQ(co_sched_plan_step(s, g, now, &plan), AK_OK) << co_sched_errmsg(s);
        h.check_plan(g, plan, p.max_batch_tokens);
        int64_t reserved_at_plan = gstats(s, g).reserved_pages;
        RealPool &rp = *pools[g];
        for (int32_t i = 0; i < plan.n_drops; i++) {
          ASSERT_TRUE(seqs[g].count(plan.drops[i]));
          ASSERT_EQ(kv_seq_release(rp.pool.get(), seqs[g][plan.drops[i]]), AK_OK);
          seqs[g].erase(plan.drops[i]);
        }
        if (plan.n_items == 0) continue;
        std::vector<co_sched_item_t> items(plan.items, plan.items + plan.n_items);
        if (!drain && coin(0.05)) {  // a client goes away while the step runs
          int64_t id = items[uni(0, (int)items.size() - 1)].id;
          ASSERT_EQ(co_sched_abort(s, id), AK_OK);
          h.tr[id].outcome = ABORTED;
        }
        std::vector<kv_seq_id_t> ks;
        std::vector<int32_t> kn;
        for (const auto &it : items) {
          if (it.is_new) {
            kv_seq_id_t q;
            ASSERT_EQ(kv_seq_create(rp.pool.get(), &q), AK_OK) << kv_pool_errmsg(rp.pool.get());
            seqs[g][it.id] = q;
          }
          ASSERT_EQ(kv_seq_n_tokens(rp.pool.get(), seqs[g][it.id]), it.pos0) << it.id;
          ks.push_back(seqs[g][it.id]);
          kn.push_back(it.n_tokens);
        }
        ASSERT_EQ(rp.begin(ks, kn), AK_OK) << kv_pool_errmsg(rp.pool.get()) << " at iteration " << iter;
        ASSERT_LE(rp.used(), reserved_at_plan) << "group " << g << " at iteration " << iter;
        max_seen_used = std::max(max_seen_used, rp.used());
        rp.finish();
        if (HasFatalFailure()) return;
        std::vector<co_sched_result_t> res;
        for (const auto &it : items) {
          if (it.is_prefill && it.samples && coin(0.5)) {  // some workers compact at the prompt's end
            ASSERT_EQ(kv_seq_compact(rp.pool.get(), seqs[g][it.id]), AK_OK);
            n_compacted++;
          }
          res.push_back({it.id, it.samples, it.samples && coin(0.05) ? 1 : 0});
        }
        const int64_t *fin;
        int32_t n_fin;
        ASSERT_EQ(co_sched_step_done(s, g, res.data(), (int32_t)res.size(), &fin, &n_fin), AK_OK)
            << co_sched_errmsg(s);
        h.ended(fin, n_fin, FINISHED);
      }
      ASSERT_EQ(co_sched_check(s), AK_OK) << co_sched_errmsg(s);
      if (drain) {
        co_sched_stats_t st;
        co_sched_stats(s, &st);
        if (st.n_queued == 0 && st.n_running == 0) break;
      }
    }
    for (int32_t g = 0; g < 2; g++) {  // flush the last drops: every pool is empty
      co_sched_plan_t plan;
      ASSERT_EQ(co_sched_plan_step(s, g, now, &plan), AK_OK);
      h.check_plan(g, plan, p.max_batch_tokens);
      for (int32_t i = 0; i < plan.n_drops; i++) {
        ASSERT_EQ(kv_seq_release(pools[g]->pool.get(), seqs[g][plan.drops[i]]), AK_OK);
        seqs[g].erase(plan.drops[i]);
      }
      EXPECT_TRUE(seqs[g].empty());
      EXPECT_EQ(pools[g]->used(), 0);
    }
    h.check_end();
    co_sched_stats_t st;
    co_sched_stats(s, &st);
    EXPECT_GT(st.n_finished, 300u) << kv_policy_name(pol);
    EXPECT_GT(max_seen_used, 80) << kv_policy_name(pol);  // the pools were actually pressed
    if (pol == KV_POLICY_ARKVALE) EXPECT_GT(n_compacted, 50);
  }
}
