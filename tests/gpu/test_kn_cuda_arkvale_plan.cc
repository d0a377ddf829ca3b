// Tests for kernels/cuda/kn_cuda_arkvale_plan.cu: the device's per-step ArkVale decision
// against a CPU reference of kvpool's kv_select_for_view rules (ranking with ties to the
// higher page and NaN lowest, top-k, victims in ascending page order, recalls in ranking
// order, the resident view in logical order), on random layers with ties and NaNs, at
// candidate counts around the kernel's warp (32), block (1024) and per-thread element
// boundaries, with special scores (NaN, -0/+0, infinities, subnormals) and residency
// extremes; and a timing print of the decode-step shape.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include <cuda_runtime.h>

extern "C" {
#include "kn_cuda.h"
}

namespace {
bool above(float sa, int a, float sb, int b) {
  bool na = std::isnan(sa), nb = std::isnan(sb);
  if (na != nb) return nb;
  if (na) return a > b;
  return sa > sb || (sa == sb && a > b);
}

struct Ref {
  std::vector<int> recall_page, recall_phys, recall_victim, view;
};

// The rules of kvpool/kv_select.c kv_select_for_view (arkvale, attend resident).
Ref plan_ref(const float *score, std::vector<int> &phys, int N, int ns, int nw, int k_max) {
  Ref r;
  int c0 = ns, c1 = N - nw;
  std::vector<int> cand;
  for (int j = c0; j < c1; j++) cand.push_back(j);
  std::sort(cand.begin(), cand.end(), [&](int a, int b) { return above(score[a], a, score[b], b); });
  int k = std::min<int>(k_max, (int)cand.size());
  std::vector<int> mark(N, 0);
  int n_missing = 0;
  for (int i = 0; i < k; i++) mark[cand[i]] = 1, n_missing += phys[cand[i]] < 0;
  int n_others = 0;
  for (size_t i = k; i < cand.size(); i++) n_others += phys[cand[i]] >= 0;
  int n_stay = n_others - n_missing, seen = 0;
  for (size_t i = k; i < cand.size() && seen < n_stay; i++)
    if (phys[cand[i]] >= 0) mark[cand[i]] = 2, seen++;
  int v = c0;
  for (int i = 0; i < k; i++) {
    int p = cand[i];
    if (phys[p] >= 0) continue;
    while (v < c1 && (phys[v] < 0 || mark[v] != 0)) v++;
    if (v >= c1) break;
    r.recall_page.push_back(p);
    r.recall_phys.push_back(phys[v]);
    r.recall_victim.push_back(v);
    phys[p] = phys[v];
    phys[v] = -1;
    v++;
  }
  for (int j = 0; j < N; j++)
    if (phys[j] >= 0) r.view.push_back(phys[j]);
  return r;
}

template <typename T>
T *dev_copy(const std::vector<T> &h) {
  T *d = nullptr;
  EXPECT_EQ(cudaMalloc(&d, h.size() * sizeof(T) + 16), cudaSuccess);
  EXPECT_EQ(cudaMemcpy(d, h.data(), h.size() * sizeof(T), cudaMemcpyHostToDevice), cudaSuccess);
  return d;
}
template <typename T>
std::vector<T> host_copy(const T *d, size_t n) {
  std::vector<T> h(n);
  EXPECT_EQ(cudaMemcpy(h.data(), d, n * sizeof(T), cudaMemcpyDeviceToHost), cudaSuccess);
  return h;
}
}  // namespace

TEST(KnCudaArkvalePlanArgs, RejectsBadArgumentsWithoutTheDevice) {
  kn_cuda_arkvale_plan_args_t a = {};
  ak_err_t err;
  EXPECT_EQ(kn_cuda_arkvale_plan(nullptr, nullptr, &err), AK_ERR_INVALID_ARG);
  EXPECT_EQ(kn_cuda_arkvale_plan(&a, nullptr, &err), AK_ERR_INVALID_ARG);
  EXPECT_NE(std::string(err.msg).find("NULL"), std::string::npos) << err.msg;
  int32_t dummy[4];
  a.scores = (const float *)dummy;
  a.phys = a.recall_page = a.recall_phys = a.view = a.view_len = dummy;
  a.n_pages = dummy;
  a.n_seqs = 1;
  a.stride = KN_CUDA_PLAN_MAX_PAGES + 1;
  a.n_window = 1;
  EXPECT_EQ(kn_cuda_arkvale_plan(&a, nullptr, &err), AK_ERR_INVALID_ARG);
  EXPECT_NE(std::string(err.msg).find("stride"), std::string::npos) << err.msg;
  a.stride = 16;
  a.n_window = 0;
  EXPECT_EQ(kn_cuda_arkvale_plan(&a, nullptr, &err), AK_ERR_INVALID_ARG);
  EXPECT_NE(std::string(err.msg).find("n_window=0"), std::string::npos) << err.msg;
  a.n_window = 1;
  alignas(16) float q[8];
  a.keep_q_src = q;  // a query row to keep needs somewhere to go
  EXPECT_EQ(kn_cuda_arkvale_plan(&a, nullptr, &err), AK_ERR_INVALID_ARG);
  EXPECT_NE(std::string(err.msg).find("keep_q_dst"), std::string::npos) << err.msg;
  a.keep_q_dst = q;
  a.keep_q_floats = 6;  // not whole 16-byte vectors
  EXPECT_EQ(kn_cuda_arkvale_plan(&a, nullptr, &err), AK_ERR_INVALID_ARG);
  EXPECT_NE(std::string(err.msg).find("keep_q_floats=6"), std::string::npos) << err.msg;
}

TEST(KnCudaArkvalePlanGpu, MatchesTheKvpoolRulesOnRandomLayers) {
  std::mt19937 rng(11);
  for (int stride : {40, 1100, 5000}) {
    for (int k : {1, 8, 40}) {
      const int n_seqs = 3, ns = 1, nw = 2, budget = std::min(48, stride - 4);
      if (k > budget - ns - nw) continue;
      std::vector<float> score((size_t)n_seqs * stride);
      std::vector<int> phys((size_t)n_seqs * stride, -1), n_pages(n_seqs);
      std::uniform_real_distribution<float> u(-2.f, 2.f);
      int next_phys = 0;
      for (int s = 0; s < n_seqs; s++) {
        int N = budget + 1 + (int)(rng() % (unsigned)(stride - budget));
        n_pages[s] = N;
        for (int j = 0; j < stride; j++) {
          float x = u(rng);
          if (rng() % 5 == 0) x = std::round(x);                        // ties
          if (rng() % 97 == 0) x = std::numeric_limits<float>::quiet_NaN();  // NaN ranks lowest
          score[(size_t)s * stride + j] = x;
        }
        // sinks and window resident, then random middle pages up to the budget
        std::vector<int> mid;
        for (int j = ns; j < N - nw; j++) mid.push_back(j);
        std::shuffle(mid.begin(), mid.end(), rng);
        for (int j = 0; j < ns; j++) phys[(size_t)s * stride + j] = next_phys++;
        for (int j = N - nw; j < N; j++) phys[(size_t)s * stride + j] = next_phys++;
        for (int i = 0; i < budget - ns - nw; i++) phys[(size_t)s * stride + mid[i]] = next_phys++;
      }
      std::vector<int> ref_phys = phys;
      std::vector<Ref> ref;
      for (int s = 0; s < n_seqs; s++) {
        std::vector<int> row(ref_phys.begin() + (size_t)s * stride, ref_phys.begin() + (size_t)(s + 1) * stride);
        ref.push_back(plan_ref(&score[(size_t)s * stride], row, n_pages[s], ns, nw, k));
        std::copy(row.begin(), row.end(), ref_phys.begin() + (size_t)s * stride);
      }
      float *d_score = dev_copy(score);
      int *d_phys = dev_copy(phys), *d_n = dev_copy(n_pages);
      std::vector<int> poison_k((size_t)n_seqs * k, 12345), poison_v((size_t)n_seqs * stride, 12345);
      int *d_rp = dev_copy(poison_k), *d_rf = dev_copy(poison_k), *d_view = dev_copy(poison_v);
      int *d_vlen = dev_copy(std::vector<int>(n_seqs, -7));
      kn_cuda_arkvale_plan_args_t a = {};
      a.scores = d_score;
      a.phys = d_phys;
      a.n_pages = d_n;
      a.stride = stride;
      a.n_seqs = n_seqs;
      a.n_sink = ns;
      a.n_window = nw;
      a.k = k;
      a.recall_page = d_rp;
      a.recall_phys = d_rf;
      a.view = d_view;
      a.view_len = d_vlen;
      ak_err_t err;
      ASSERT_EQ(kn_cuda_arkvale_plan(&a, nullptr, &err), AK_OK) << err.msg;
      ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
      std::vector<int> g_phys = host_copy(d_phys, phys.size()), g_rp = host_copy(d_rp, poison_k.size()),
                       g_rf = host_copy(d_rf, poison_k.size()), g_view = host_copy(d_view, poison_v.size()),
                       g_vlen = host_copy(d_vlen, (size_t)n_seqs);
      SCOPED_TRACE("stride " + std::to_string(stride) + " k " + std::to_string(k));
      EXPECT_EQ(g_phys, ref_phys);
      for (int s = 0; s < n_seqs; s++) {
        std::vector<int> rp(g_rp.begin() + (size_t)s * k, g_rp.begin() + (size_t)s * k + ref[s].recall_page.size());
        std::vector<int> rf(g_rf.begin() + (size_t)s * k, g_rf.begin() + (size_t)s * k + ref[s].recall_phys.size());
        EXPECT_EQ(rp, ref[s].recall_page) << "seq " << s;
        EXPECT_EQ(rf, ref[s].recall_phys) << "seq " << s;
        for (size_t i = ref[s].recall_page.size(); i < (size_t)k; i++) EXPECT_EQ(g_rp[(size_t)s * k + i], -1);
        ASSERT_EQ(g_vlen[s], (int)ref[s].view.size()) << "seq " << s;
        std::vector<int> v(g_view.begin() + (size_t)s * stride, g_view.begin() + (size_t)s * stride + g_vlen[s]);
        EXPECT_EQ(v, ref[s].view) << "seq " << s;
        EXPECT_EQ((int)ref[s].view.size(), budget) << "seq " << s;  // the budget holds after the swaps
      }
      for (void *p : {(void *)d_score, (void *)d_phys, (void *)d_n, (void *)d_rp, (void *)d_rf, (void *)d_view,
                      (void *)d_vlen})
        cudaFree(p);
    }
  }
}

// The engine's form: scores in a block whose rows are not the batch's (score_row), the
// view written into a CSR list (view_ptr), the victims' logical pages and each recall's
// address in the backup tier, and a sequence that makes no selection (n_pages 0) and
// must be left alone.
TEST(KnCudaArkvalePlanGpu, EngineFieldsRowsCsrVictimsAndTierAddresses) {
  std::mt19937 rng(5);
  const int n_seqs = 4, stride = 300, ns = 1, nw = 2, budget = 24, k = 8, n_rows = 6;
  const int64_t slot_bytes = 4096;
  std::uniform_real_distribution<float> u(-1.f, 1.f);
  std::vector<float> block((size_t)n_rows * stride);
  for (float &x : block) x = u(rng);
  std::vector<int> score_row = {5, 0, 3, 2}, n_pages = {120, 0, 299, 40};
  std::vector<int> phys((size_t)n_seqs * stride, -1), bslot((size_t)n_seqs * stride, -1);
  int next_phys = 0;
  for (int s = 0; s < n_seqs; s++) {
    int N = n_pages[s];
    if (N == 0) continue;
    std::vector<int> mid;
    for (int j = ns; j < N - nw; j++) mid.push_back(j);
    std::shuffle(mid.begin(), mid.end(), rng);
    for (int j = 0; j < ns; j++) phys[(size_t)s * stride + j] = next_phys++;
    for (int j = N - nw; j < N; j++) phys[(size_t)s * stride + j] = next_phys++;
    for (int i = 0; i < budget - ns - nw; i++) phys[(size_t)s * stride + mid[i]] = next_phys++;
    for (int j = 0; j < N - 1; j++) bslot[(size_t)s * stride + j] = (int)(rng() % 100000);
  }
  // CSR offsets of each sequence's view: its resident count is the budget (or 0)
  std::vector<int> view_ptr(n_seqs);
  int total = 0;
  for (int s = 0; s < n_seqs; s++) view_ptr[s] = total, total += n_pages[s] ? budget : 3;
  std::vector<int> ref_phys = phys;
  std::vector<Ref> ref(n_seqs);
  for (int s = 0; s < n_seqs; s++) {
    if (n_pages[s] == 0) continue;
    std::vector<int> row(ref_phys.begin() + (size_t)s * stride, ref_phys.begin() + (size_t)(s + 1) * stride);
    ref[s] = plan_ref(&block[(size_t)score_row[s] * stride], row, n_pages[s], ns, nw, k);
    std::copy(row.begin(), row.end(), ref_phys.begin() + (size_t)s * stride);
  }
  float *d_block = dev_copy(block);
  int *d_phys = dev_copy(phys), *d_n = dev_copy(n_pages), *d_row = dev_copy(score_row), *d_vptr = dev_copy(view_ptr);
  int *d_bslot = dev_copy(bslot);
  std::vector<int> poison_k((size_t)n_seqs * k, 777), poison_view((size_t)total, 777);
  int *d_rp = dev_copy(poison_k), *d_rf = dev_copy(poison_k), *d_rv = dev_copy(poison_k), *d_view = dev_copy(poison_view);
  int *d_vlen = dev_copy(std::vector<int>(n_seqs, -7));
  std::vector<const void *> poison_src((size_t)n_seqs * k, (const void *)0x1);
  const void **d_src = dev_copy(poison_src);
  const char *tier_base = reinterpret_cast<const char *>(uintptr_t{1} << 40);  // only added to, never read
  kn_cuda_arkvale_plan_args_t a = {};
  a.scores = d_block;
  a.phys = d_phys;
  a.n_pages = d_n;
  a.stride = stride;
  a.n_seqs = n_seqs;
  a.n_sink = ns;
  a.n_window = nw;
  a.k = k;
  a.recall_page = d_rp;
  a.recall_phys = d_rf;
  a.view = d_view;
  a.view_len = d_vlen;
  a.score_row = d_row;
  a.view_ptr = d_vptr;
  a.recall_victim = d_rv;
  a.backup_slot = d_bslot;
  a.tier_base = tier_base;
  a.slot_bytes = slot_bytes;
  a.recall_src = d_src;
  // each block also keeps its sequence's query row (the empty sequence's too)
  const int q_floats = 36;
  std::vector<float> qsrc((size_t)n_seqs * q_floats), qpoison((size_t)n_seqs * q_floats + 4, -3.f);
  for (float &x : qsrc) x = u(rng);
  float *d_qsrc = dev_copy(qsrc), *d_qdst = dev_copy(qpoison);
  a.keep_q_src = d_qsrc;
  a.keep_q_dst = d_qdst;
  a.keep_q_floats = q_floats;
  ak_err_t err;
  ASSERT_EQ(kn_cuda_arkvale_plan(&a, nullptr, &err), AK_OK) << err.msg;
  ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
  std::vector<float> g_q = host_copy(d_qdst, qpoison.size());
  EXPECT_EQ(std::vector<float>(g_q.begin(), g_q.begin() + (long)qsrc.size()), qsrc);
  for (size_t i = qsrc.size(); i < g_q.size(); i++) EXPECT_EQ(g_q[i], -3.f) << "written past the rows";
  cudaFree(d_qsrc);
  cudaFree(d_qdst);
  std::vector<int> g_phys = host_copy(d_phys, phys.size()), g_rp = host_copy(d_rp, poison_k.size()),
                   g_rf = host_copy(d_rf, poison_k.size()), g_rv = host_copy(d_rv, poison_k.size()),
                   g_view = host_copy(d_view, (size_t)total), g_vlen = host_copy(d_vlen, (size_t)n_seqs);
  std::vector<const void *> g_src = host_copy(d_src, poison_src.size());
  EXPECT_EQ(g_phys, ref_phys);
  int n_recalls = 0;
  for (int s = 0; s < n_seqs; s++) {
    SCOPED_TRACE("seq " + std::to_string(s));
    if (n_pages[s] == 0) {
      EXPECT_EQ(g_vlen[s], 0);
      for (int i = 0; i < 3; i++) EXPECT_EQ(g_view[(size_t)view_ptr[s] + i], 777);  // untouched
      for (int i = 0; i < k; i++) {  // an empty recall list, so a gather over every row skips it
        EXPECT_EQ(g_rp[(size_t)s * k + i], -1);
        EXPECT_EQ(g_rf[(size_t)s * k + i], -1);
        EXPECT_EQ(g_rv[(size_t)s * k + i], -1);
        EXPECT_EQ(g_src[(size_t)s * k + i], nullptr);
      }
      continue;
    }
    size_t n_rec = ref[s].recall_page.size();
    n_recalls += (int)n_rec;
    for (size_t i = 0; i < (size_t)k; i++) {
      size_t at = (size_t)s * k + i;
      if (i < n_rec) {
        EXPECT_EQ(g_rp[at], ref[s].recall_page[i]);
        EXPECT_EQ(g_rf[at], ref[s].recall_phys[i]);
        EXPECT_EQ(g_rv[at], ref[s].recall_victim[i]);
        EXPECT_EQ(g_src[at], tier_base + (int64_t)bslot[(size_t)s * stride + ref[s].recall_page[i]] * slot_bytes);
      } else {
        EXPECT_EQ(g_rp[at], -1);
        EXPECT_EQ(g_rf[at], -1);
        EXPECT_EQ(g_rv[at], -1);
        EXPECT_EQ(g_src[at], nullptr);
      }
    }
    ASSERT_EQ(g_vlen[s], budget);
    std::vector<int> v(g_view.begin() + view_ptr[s], g_view.begin() + view_ptr[s] + budget);
    EXPECT_EQ(v, ref[s].view);
  }
  EXPECT_GT(n_recalls, 0);  // random scores over a 24-page budget of hundreds must recall
  for (void *p : {(void *)d_block, (void *)d_phys, (void *)d_n, (void *)d_row, (void *)d_vptr, (void *)d_bslot,
                  (void *)d_rp, (void *)d_rf, (void *)d_rv, (void *)d_view, (void *)d_vlen, (void *)d_src})
    cudaFree(p);
}

namespace {
// score kinds: 0 uniform, 1 heavy ties (-1, 0, 1), 2 specials (NaN of both signs, -0/+0,
// +-inf, subnormals, integers), 3 all equal, 4 all NaN
float gen_score(std::mt19937 &rng, int kind) {
  std::uniform_real_distribution<float> u(-2.f, 2.f);
  const float nan = std::numeric_limits<float>::quiet_NaN(), inf = std::numeric_limits<float>::infinity(),
              sub = std::numeric_limits<float>::denorm_min();
  switch (kind) {
    case 0: return u(rng);
    case 1: return (float)((int)(rng() % 3) - 1);
    case 2:
      switch (rng() % 10) {
        case 0: return nan;
        case 1: return -nan;
        case 2: return 0.f;
        case 3: return -0.f;
        case 4: return inf;
        case 5: return -inf;
        case 6: return sub * (float)(rng() % 3);
        case 7: return -sub * (float)(rng() % 3);
        default: return std::round(u(rng));
      }
    case 3: return 0.5f;
    default: return nan;
  }
}

// residency kinds of the middle pages (sinks and window are resident): 0 a random
// budget of them, 1 all, 2 none, 3 each with probability 1/2
void gen_phys(std::mt19937 &rng, int kind, int N, int ns, int nw, int budget, int *row, int *next_phys) {
  std::vector<int> mid;
  for (int j = 0; j < N; j++) {
    bool is_mid = j >= ns && j < N - nw;
    if (is_mid) mid.push_back(j);
    if (!is_mid || kind == 1 || (kind == 3 && rng() % 2)) row[j] = (*next_phys)++;
  }
  if (kind == 0) {
    std::shuffle(mid.begin(), mid.end(), rng);
    for (int i = 0; i < budget && i < (int)mid.size(); i++) row[mid[i]] = (*next_phys)++;
  }
}

// Runs one launch with every optional field set and compares everything with plan_ref;
// returns the number of recalls.
int run_and_compare(int stride, const std::vector<int> &n_pages, int ns, int nw, int k, const std::vector<float> &score,
                    const std::vector<int> &phys) {
  const int n_seqs = (int)n_pages.size();
  std::vector<int> ref_phys = phys;
  std::vector<Ref> ref(n_seqs);
  for (int s = 0; s < n_seqs; s++) {
    int N = std::min(n_pages[s], stride);
    if (N <= 0) continue;
    std::vector<int> row(ref_phys.begin() + (size_t)s * stride, ref_phys.begin() + (size_t)(s + 1) * stride);
    ref[s] = plan_ref(&score[(size_t)s * stride], row, N, ns, nw, k);
    std::copy(row.begin(), row.end(), ref_phys.begin() + (size_t)s * stride);
  }
  std::vector<int> bslot((size_t)n_seqs * stride);
  for (size_t i = 0; i < bslot.size(); i++) bslot[i] = (int)(i * 7919 % 100003);
  const size_t n_rec_slots = (size_t)n_seqs * k + 1;  // + 1: k may be 0
  std::vector<int> poison_k(n_rec_slots, 12345), poison_v((size_t)n_seqs * stride, 12345);
  std::vector<const void *> poison_src(n_rec_slots, (const void *)0x1);
  const char *tier_base = reinterpret_cast<const char *>(uintptr_t{1} << 40);  // only added to, never read
  float *d_score = dev_copy(score);
  int *d_phys = dev_copy(phys), *d_n = dev_copy(n_pages), *d_bslot = dev_copy(bslot);
  int *d_rp = dev_copy(poison_k), *d_rf = dev_copy(poison_k), *d_rv = dev_copy(poison_k), *d_view = dev_copy(poison_v);
  int *d_vlen = dev_copy(std::vector<int>(n_seqs, -7));
  const void **d_src = dev_copy(poison_src);
  kn_cuda_arkvale_plan_args_t a = {};
  a.scores = d_score;
  a.phys = d_phys;
  a.n_pages = d_n;
  a.stride = stride;
  a.n_seqs = n_seqs;
  a.n_sink = ns;
  a.n_window = nw;
  a.k = k;
  a.recall_page = d_rp;
  a.recall_phys = d_rf;
  a.view = d_view;
  a.view_len = d_vlen;
  a.recall_victim = d_rv;
  a.backup_slot = d_bslot;
  a.tier_base = tier_base;
  a.slot_bytes = 4096;
  a.recall_src = d_src;
  ak_err_t err;
  int n_recalls = 0;
  EXPECT_EQ(kn_cuda_arkvale_plan(&a, nullptr, &err), AK_OK) << err.msg;
  EXPECT_EQ(cudaDeviceSynchronize(), cudaSuccess);
  std::vector<int> g_phys = host_copy(d_phys, phys.size()), g_rp = host_copy(d_rp, n_rec_slots),
                   g_rf = host_copy(d_rf, n_rec_slots), g_rv = host_copy(d_rv, n_rec_slots),
                   g_view = host_copy(d_view, poison_v.size()), g_vlen = host_copy(d_vlen, (size_t)n_seqs);
  std::vector<const void *> g_src = host_copy(d_src, n_rec_slots);
  EXPECT_EQ(g_phys, ref_phys);
  for (int s = 0; s < n_seqs; s++) {
    SCOPED_TRACE("seq " + std::to_string(s) + " n_pages " + std::to_string(n_pages[s]));
    const size_t n_rec = ref[s].recall_page.size();
    n_recalls += (int)n_rec;
    for (size_t q = 0; q < (size_t)k; q++) {
      const size_t at = (size_t)s * k + q;
      if (q < n_rec) {
        EXPECT_EQ(g_rp[at], ref[s].recall_page[q]) << "recall " << q;
        EXPECT_EQ(g_rf[at], ref[s].recall_phys[q]) << "recall " << q;
        EXPECT_EQ(g_rv[at], ref[s].recall_victim[q]) << "recall " << q;
        EXPECT_EQ(g_src[at], tier_base + (int64_t)bslot[(size_t)s * stride + ref[s].recall_page[q]] * 4096);
      } else {
        EXPECT_EQ(g_rp[at], -1) << "recall " << q;
        EXPECT_EQ(g_rf[at], -1) << "recall " << q;
        EXPECT_EQ(g_rv[at], -1) << "recall " << q;
        EXPECT_EQ(g_src[at], nullptr) << "recall " << q;
      }
    }
    EXPECT_EQ(g_rp[(size_t)n_seqs * k], 12345);  // nothing past the last row
    EXPECT_EQ(g_vlen[s], (int)ref[s].view.size());
    std::vector<int> v(g_view.begin() + (size_t)s * stride, g_view.begin() + (size_t)(s + 1) * stride);
    std::vector<int> want = ref[s].view;
    want.resize((size_t)stride, 12345);  // past the view: untouched
    EXPECT_EQ(v, want);
  }
  for (void *p : {(void *)d_score, (void *)d_phys, (void *)d_n, (void *)d_bslot, (void *)d_rp, (void *)d_rf,
                  (void *)d_rv, (void *)d_view, (void *)d_vlen, (void *)d_src})
    cudaFree(p);
  return n_recalls;
}
}  // namespace

// Candidate counts around the kernel's boundaries (warp 32, block 1024, 2 to 8 elements
// per thread up to KN_CUDA_PLAN_MAX_PAGES), each with k = 0, 1, 7, half, all and more
// than all, and every score kind and residency kind. The second sequence of each launch
// is shorter (or empty), so blocks of one launch sort different lengths.
TEST(KnCudaArkvalePlanGpu, CandidateCountsAtWarpBlockAndElementBoundaries) {
  std::mt19937 rng(23);
  int n_recalls = 0;
  for (int n_cand : {0, 1, 31, 32, 33, 63, 64, 65, 1023, 1024, 1025, 2049, 4097, 8191}) {
    // 8191 candidates with a 1-page window fill KN_CUDA_PLAN_MAX_PAGES pages
    const int ns = n_cand == 8191 ? 0 : 1, nw = n_cand == 8191 ? 1 : 2, N = n_cand + ns + nw;
    const int stride = std::min(N + (int)(rng() % 4), KN_CUDA_PLAN_MAX_PAGES);
    for (int k : {0, 1, 7, n_cand / 2, n_cand, std::min(n_cand + 3, KN_CUDA_PLAN_MAX_PAGES)}) {
      for (int skind = 0; skind < 5; skind++) {
        for (int rkind = 0; rkind < 4; rkind++) {
          std::vector<int> n_pages = {N, (skind + rkind) % 3 == 0 ? 0 : std::max(1, N - 1 - (int)(rng() % 40))};
          std::vector<float> score(2 * (size_t)stride);
          for (float &x : score) x = gen_score(rng, skind);
          std::vector<int> phys(2 * (size_t)stride, -1);
          int next_phys = 0;
          for (int s = 0; s < 2; s++)
            gen_phys(rng, rkind, std::min(n_pages[s], stride), ns, nw, std::max(k, 1) + 3, &phys[(size_t)s * stride],
                     &next_phys);
          SCOPED_TRACE("n_cand " + std::to_string(n_cand) + " stride " + std::to_string(stride) + " k " +
                       std::to_string(k) + " score kind " + std::to_string(skind) + " residency kind " +
                       std::to_string(rkind));
          n_recalls += run_and_compare(stride, n_pages, ns, nw, k, score, phys);
          if (HasFatalFailure() || HasFailure()) return;  // one failing shape is enough to read
        }
      }
    }
  }
  EXPECT_GT(n_recalls, 0);
}

// Sequences of very different lengths in one launch at the largest stride (8 elements
// per thread): empty, shorter than a warp, a block, several blocks, full.
TEST(KnCudaArkvalePlanGpu, MixedLengthsInOneLaunchAtTheLargestStride) {
  std::mt19937 rng(31);
  const int stride = KN_CUDA_PLAN_MAX_PAGES, ns = 4, nw = 4;
  std::vector<int> n_pages = {0, 5, 9, 40, 1000, 1032, 3000, 5000, stride};
  const int n_seqs = (int)n_pages.size();
  for (int k : {0, 60, 700}) {
    std::vector<float> score((size_t)n_seqs * stride);
    for (float &x : score) x = gen_score(rng, rng() % 3);
    std::vector<int> phys((size_t)n_seqs * stride, -1);
    int next_phys = 0;
    for (int s = 0; s < n_seqs; s++)
      gen_phys(rng, s % 4 == 2 ? 3 : 0, n_pages[s], ns, nw, k + 8, &phys[(size_t)s * stride], &next_phys);
    SCOPED_TRACE("k " + std::to_string(k));
    int n_recalls = run_and_compare(stride, n_pages, ns, nw, k, score, phys);
    if (k > 0) EXPECT_GT(n_recalls, 0);
  }
}

// Not an assertion: the decode-step shape (4 sequences of 960 candidates, k = 60) in
// microseconds per launch, for the test log; and the largest stride for comparison.
TEST(KnCudaArkvalePlanGpu, TimingPrintsMicrosecondsPerLaunch) {
  std::mt19937 rng(3);
  struct Shape {
    int stride, n_cand, k;
  };
  for (Shape sh : {Shape{968, 960, 60}, Shape{KN_CUDA_PLAN_MAX_PAGES, KN_CUDA_PLAN_MAX_PAGES - 8, 60}}) {
    const int n_seqs = 4, ns = 4, nw = 4, N = sh.n_cand + ns + nw, launches = 50;
    std::vector<float> score((size_t)n_seqs * sh.stride);
    for (float &x : score) x = gen_score(rng, 0);
    std::vector<int> phys((size_t)n_seqs * sh.stride, -1), n_pages(n_seqs, N);
    int next_phys = 0;
    for (int s = 0; s < n_seqs; s++) gen_phys(rng, 0, N, ns, nw, sh.k + 4, &phys[(size_t)s * sh.stride], &next_phys);
    float *d_score = dev_copy(score);
    int *d_phys = dev_copy(phys), *d_n = dev_copy(n_pages);
    std::vector<int> zeros_k((size_t)n_seqs * sh.k, 0), zeros_v((size_t)n_seqs * sh.stride, 0);
    int *d_rp = dev_copy(zeros_k), *d_rf = dev_copy(zeros_k), *d_view = dev_copy(zeros_v);
    int *d_vlen = dev_copy(std::vector<int>(n_seqs, 0));
    kn_cuda_arkvale_plan_args_t a = {};
    a.scores = d_score;
    a.phys = d_phys;
    a.n_pages = d_n;
    a.stride = sh.stride;
    a.n_seqs = n_seqs;
    a.n_sink = ns;
    a.n_window = nw;
    a.k = sh.k;
    a.recall_page = d_rp;
    a.recall_phys = d_rf;
    a.view = d_view;
    a.view_len = d_vlen;
    ak_err_t err;
    ASSERT_EQ(kn_cuda_arkvale_plan(&a, nullptr, &err), AK_OK) << err.msg;  // warm-up
    cudaEvent_t e0, e1;
    ASSERT_EQ(cudaEventCreate(&e0), cudaSuccess);
    ASSERT_EQ(cudaEventCreate(&e1), cudaSuccess);
    ASSERT_EQ(cudaEventRecord(e0, nullptr), cudaSuccess);
    for (int i = 0; i < launches; i++) ASSERT_EQ(kn_cuda_arkvale_plan(&a, nullptr, &err), AK_OK) << err.msg;
    ASSERT_EQ(cudaEventRecord(e1, nullptr), cudaSuccess);
    ASSERT_EQ(cudaEventSynchronize(e1), cudaSuccess);
    float ms = 0.f;
    ASSERT_EQ(cudaEventElapsedTime(&ms, e0, e1), cudaSuccess);
    printf("[ timing ] kn_cuda_arkvale_plan %d seqs x %d candidates (stride %d), k %d: %.2f us per launch\n", n_seqs,
           sh.n_cand, sh.stride, sh.k, 1000.f * ms / launches);
    cudaEventDestroy(e0);
    cudaEventDestroy(e1);
    for (void *p : {(void *)d_score, (void *)d_phys, (void *)d_n, (void *)d_rp, (void *)d_rf, (void *)d_view,
                    (void *)d_vlen})
      cudaFree(p);
  }
}
