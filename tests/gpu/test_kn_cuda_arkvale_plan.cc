// Tests for kernels/cuda/kn_cuda_arkvale_plan.cu: the device's per-step ArkVale decision
// against a CPU reference of kvpool's kv_select_for_view rules (ranking with ties to the
// higher page and NaN lowest, top-k, victims in ascending page order, recalls in ranking
// order, the resident view in logical order), on random layers with ties and NaNs.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
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
  ak_err_t err;
  ASSERT_EQ(kn_cuda_arkvale_plan(&a, nullptr, &err), AK_OK) << err.msg;
  ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
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
