// Tests for worker/wk_forward_cuda.c: the whole default model on the GPU against the
// CPU backend in exact mode (f32 weights). The GPU computes with bf16 weights and
// bf16 GEMM inputs, so logits agree to bf16 precision, not bit for bit: the checks
// are a relative error bound on every position's logits and equal greedy tokens
// wherever the CPU's top-2 margin is clear of that error.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <memory>
#include <string>
#include <vector>

extern "C" {
#include "ak_alloc.h"
#include "kn_cuda.h"
#include "wk_engine.h"
#include "wk_forward_cuda.h"
#include "wk_model_cuda.h"
}

namespace {
const char *model_path() {
  const char *env = getenv("ARKVALE_MODEL");
  return env && *env ? env : AK_MODEL_PATH;
}
// GPU tests fail cleanly (no crash) on a machine without a device.
#define REQUIRE_GPU()                                                        \
  do {                                                                       \
    int n_dev_ = 0;                                                          \
    ak_err_t e_;                                                             \
    if (kn_cuda_device_count(&e_, &n_dev_) != AK_OK) GTEST_FAIL() << e_.msg; \
  } while (0)

bool have_model() {
  FILE *f = fopen(model_path(), "rb");
  if (f) fclose(f);
  return f != nullptr;
}

std::vector<int32_t> varied(int n, int salt) {
  std::vector<int32_t> ids(n);
  for (int i = 0; i < n; i++) ids[i] = (int32_t)((i * 7919 + salt * 104729 + 13) % 49000) + 100;
  return ids;
}

// The GPU side: model, a pool over device pages (full; or ArkVale deciding on the
// device with `budget` > 0), the forward pass.
struct Gpu {
  wk_model_t *host_model = nullptr;
  wk_model_cuda_t *model = nullptr;
  void *pages = nullptr;
  size_t pages_bytes = 0;
  kv_pool_t *pool = nullptr;
  wk_forward_cuda_t *fw = nullptr;
  int32_t n_vocab = 0;

  explicit Gpu(int32_t max_tok, int32_t budget = 0) {
    ak_err_t err;
    ak_err_clear(&err);
    EXPECT_EQ(wk_model_load(model_path(), nullptr, &err, &host_model), AK_OK) << err.msg;
    EXPECT_EQ(wk_model_cuda_upload(host_model, &err, &model), AK_OK) << err.msg;
    const wk_hparams_t *hp = wk_model_hparams(host_model);
    n_vocab = hp->n_vocab;
    kv_pool_params_t kp = kv_pool_params_default();
    kp.n_layers = hp->n_layers;
    kp.n_kv_heads = hp->n_kv_heads;
    kp.n_heads = hp->n_heads;
    kp.head_dim = hp->head_dim;
    kp.page_tokens = 16;
    kp.max_seqs = 4;
    kp.max_seq_tokens = 1024;
    kp.n_pages = kv_pages_for_tokens(1024, 16) * hp->n_layers * 4;
    kp.dtype = KN_F16;
    pages_bytes = kv_page_bytes(&kp) * (size_t)kp.n_pages;
    EXPECT_EQ(kn_cuda_malloc(pages_bytes, &err, &pages), AK_OK) << err.msg;
    kp.page_memory = pages;
    kp.check_every_step = 1;
    EXPECT_EQ(wk_forward_cuda_create(model, &kp, max_tok, &err, &fw), AK_OK) << err.msg;
    if (budget > 0) {  // page_ops and the pinned tier come from the forward
      kp.policy = KV_POLICY_ARKVALE;
      kp.budget_tokens = budget;
      kp.select_on_device = 1;
      EXPECT_EQ(wk_forward_cuda_page_ops(fw, pages, &kp, &err, &kp.page_ops), AK_OK) << err.msg;
      EXPECT_EQ(wk_forward_cuda_device_tier(fw, &kp, 0, &err, &kp.tier), AK_OK) << err.msg;
    }
    EXPECT_EQ(kv_pool_create(&kp, &err, &pool), AK_OK) << err.msg;
  }
  ~Gpu() {
    kv_pool_destroy(pool);  // first: its backups live in the forward's tier
    wk_forward_cuda_destroy(fw);
    kn_cuda_free(pages, pages_bytes);
    wk_model_cuda_free(model);
    wk_model_free(host_model);
  }
  ak_status_t step(kv_seq_id_t *seqs, int32_t *n_new, int32_t n_seqs, const int32_t *tokens, int all,
                   float *logits) {
    wk_forward_batch_t b{{n_seqs, seqs, n_new}, tokens, all, logits};
    ak_err_t err;
    ak_err_clear(&err);
    ak_status_t st = wk_forward_cuda_run(fw, pool, &b, &err);
    EXPECT_EQ(st, AK_OK) << err.msg;
    return st;
  }
};

struct EngineDel {
  void operator()(wk_engine_t *e) const { wk_engine_destroy(e); }
};
std::unique_ptr<wk_engine_t, EngineDel> cpu_exact() {
  wk_engine_params_t p = wk_engine_params_default();
  p.model_path = model_path();
  p.max_seq_tokens = 1024;
  p.max_seqs = 4;
  p.max_batch_tokens = 512;
  p.weights_f32 = 1;
  wk_engine_t *e = nullptr;
  ak_err_t err;
  EXPECT_EQ(wk_engine_create(&p, &err, &e), AK_OK) << err.msg;
  return std::unique_ptr<wk_engine_t, EngineDel>(e);
}

double rel_err(const float *a, const float *ref, int64_t n) {
  double num = 0, den = 0;
  for (int64_t i = 0; i < n; i++) {
    if (!std::isfinite(a[i])) return INFINITY;
    num += (double)(a[i] - ref[i]) * (a[i] - ref[i]);
    den += (double)ref[i] * ref[i];
  }
  return std::sqrt(num / den);
}

int32_t argmax(const float *x, int64_t n) { return (int32_t)(std::max_element(x, x + n) - x); }
float margin(const float *x, int64_t n) {
  std::vector<float> v(x, x + n);
  std::partial_sort(v.begin(), v.begin() + 2, v.end(), std::greater<float>());
  return v[0] - v[1];
}
}  // namespace

TEST(WkForwardCudaArgs, CreateRejectsMissingArguments) {
  wk_forward_cuda_t *fw = nullptr;
  ak_err_t err;
  kv_pool_params_t kp = kv_pool_params_default();
  EXPECT_EQ(wk_forward_cuda_create(nullptr, &kp, 16, &err, &fw), AK_ERR_INVALID_ARG);
  EXPECT_EQ(fw, nullptr);
}

// Every position of a 100-token prompt in one step (logits of every row).
TEST(WkForwardCudaGpu, PromptLogitsMatchCpuExactMode) {
  REQUIRE_GPU();
  if (!have_model()) GTEST_SKIP() << "model missing";
  int64_t dev_before = ak_alloc_outstanding_bytes(AK_MEM_DEVICE);
  {
    std::vector<int32_t> prompt = varied(100, 1);
    Gpu g(128);
    auto cpu = cpu_exact();
    int64_t V = g.n_vocab;
    std::vector<float> lg(100 * V, NAN), lc(100 * V);
    kv_seq_id_t sg, sc;
    ASSERT_EQ(kv_seq_create(g.pool, &sg), AK_OK);
    int32_t n = 100;
    ASSERT_EQ(g.step(&sg, &n, 1, prompt.data(), 1, lg.data()), AK_OK);
    ASSERT_EQ(wk_engine_seq_create(cpu.get(), &sc), AK_OK);
    wk_forward_batch_t b{{1, &sc, &n}, prompt.data(), 1, lc.data()};
    ASSERT_EQ(wk_engine_step(cpu.get(), &b), AK_OK) << wk_engine_errmsg(cpu.get());
    double worst = 0;
    int agree = 0, clear = 0;
    for (int t = 0; t < 100; t++) {
      double e = rel_err(&lg[t * V], &lc[t * V], V);
      worst = std::max(worst, e);
      if (margin(&lc[t * V], V) > 0.5f) {
        clear++;
        agree += argmax(&lg[t * V], V) == argmax(&lc[t * V], V);
      }
    }
    printf("prompt logits: worst relative error %.3e; argmax agrees at %d of %d clear positions\n", worst, agree,
           clear);
    EXPECT_LT(worst, 3e-2);
    EXPECT_EQ(agree, clear);
    ASSERT_EQ(kv_seq_release(g.pool, sg), AK_OK);
  }
  EXPECT_EQ(ak_alloc_outstanding_bytes(AK_MEM_DEVICE), dev_before);
}

// Prefill then 32 greedy decode steps (split-K attention at every step), teacher-forced
// on the CPU's tokens: logits stay within bf16 error and the GPU's greedy token equals
// the CPU's at every step where the CPU's margin is clear.
TEST(WkForwardCudaGpu, DecodeFollowsCpuGreedy) {
  REQUIRE_GPU();
  if (!have_model()) GTEST_SKIP() << "model missing";
  std::vector<int32_t> prompt = varied(300, 2);
  Gpu g(512);
  auto cpu = cpu_exact();
  int64_t V = g.n_vocab;
  std::vector<float> lg(V), lc(V);
  kv_seq_id_t sg, sc;
  ASSERT_EQ(kv_seq_create(g.pool, &sg), AK_OK);
  ASSERT_EQ(wk_engine_seq_create(cpu.get(), &sc), AK_OK);
  int32_t n = (int32_t)prompt.size();
  ASSERT_EQ(g.step(&sg, &n, 1, prompt.data(), 0, lg.data()), AK_OK);
  ASSERT_EQ(wk_engine_prefill(cpu.get(), sc, prompt.data(), n, lc.data()), AK_OK);
  int clear = 0, agree = 0;
  double worst = 0;
  for (int s = 0; s < 32; s++) {
    worst = std::max(worst, rel_err(lg.data(), lc.data(), V));
    if (margin(lc.data(), V) > 0.5f) {
      clear++;
      agree += argmax(lg.data(), V) == argmax(lc.data(), V);
    }
    int32_t tok = argmax(lc.data(), V), one = 1;
    ASSERT_EQ(g.step(&sg, &one, 1, &tok, 0, lg.data()), AK_OK);
    wk_forward_batch_t b{{1, &sc, &one}, &tok, 0, lc.data()};
    ASSERT_EQ(wk_engine_step(cpu.get(), &b), AK_OK);
  }
  printf("decode: worst relative error %.3e; greedy agrees at %d of %d clear steps\n", worst, agree, clear);
  EXPECT_LT(worst, 3e-2);
  EXPECT_EQ(agree, clear);
  EXPECT_GT(clear, 8);
}

// Two sequences of different lengths, a prompt chunk and a decode token in one step,
// give the logits of running each alone.
TEST(WkForwardCudaGpu, MixedBatchEqualsSeparateRuns) {
  REQUIRE_GPU();
  if (!have_model()) GTEST_SKIP() << "model missing";
  Gpu g(256);
  int64_t V = g.n_vocab;
  std::vector<int32_t> pa = varied(40, 3), pb = varied(90, 4);
  kv_seq_id_t a, b, a2, b2;
  ASSERT_EQ(kv_seq_create(g.pool, &a), AK_OK);
  ASSERT_EQ(kv_seq_create(g.pool, &b), AK_OK);
  std::vector<float> la(V), lb(V), both(2 * V);
  int32_t n39 = 39, n90 = 90, one = 1;
  ASSERT_EQ(g.step(&a, &n39, 1, pa.data(), 0, la.data()), AK_OK);
  // together: a's 40th token (decode) and b's whole prompt
  kv_seq_id_t ids[2] = {a, b};
  int32_t nn[2] = {1, 90};
  std::vector<int32_t> toks;
  toks.push_back(pa[39]);
  toks.insert(toks.end(), pb.begin(), pb.end());
  ASSERT_EQ(g.step(ids, nn, 2, toks.data(), 0, both.data()), AK_OK);
  // alone
  ASSERT_EQ(kv_seq_create(g.pool, &a2), AK_OK);
  ASSERT_EQ(kv_seq_create(g.pool, &b2), AK_OK);
  ASSERT_EQ(g.step(&a2, &n39, 1, pa.data(), 0, la.data()), AK_OK);
  ASSERT_EQ(g.step(&a2, &one, 1, &pa[39], 0, la.data()), AK_OK);
  ASSERT_EQ(g.step(&b2, &n90, 1, pb.data(), 0, lb.data()), AK_OK);
  // A lone decode token's GEMMs take the GEMV path, the mixed batch's take cuBLASLt:
  // the same sums in another order, so agreement is to bf16 precision, not bitwise.
  EXPECT_LT(rel_err(both.data(), la.data(), V), 1e-2);
  EXPECT_LT(rel_err(both.data() + V, lb.data(), V), 1e-3);
  for (kv_seq_id_t s : {a, b, a2, b2}) ASSERT_EQ(kv_seq_release(g.pool, s), AK_OK);
  kv_pool_stats_t st;
  kv_pool_get_stats(g.pool, &st);
  EXPECT_EQ(st.n_pages_used, 0);
}

// The engine on the GPU: the token-granularity baselines are refused up front, before
// any device work (runs without a GPU).
TEST(WkForwardCudaArgs, EngineRefusesPoliciesNotOnTheDeviceYet) {
  if (!have_model()) GTEST_SKIP() << "model missing";
  int64_t dev_before = ak_alloc_outstanding_bytes(AK_MEM_DEVICE);
  kv_pool_params_t kv = kv_pool_params_default();
  kv.policy = KV_POLICY_H2O;
  kv.budget_tokens = 256;
  wk_engine_params_t p = wk_engine_params_default();
  p.model_path = model_path();
  p.device = WK_DEVICE_CUDA;
  p.kv_policy = &kv;
  p.max_seq_tokens = 512;
  p.max_seqs = 1;
  wk_engine_t *e = nullptr;
  ak_err_t err;
  EXPECT_EQ(wk_engine_create(&p, &err, &e), AK_ERR_UNSUPPORTED);
  EXPECT_NE(std::string(err.msg).find("does not run on the GPU"), std::string::npos) << err.msg;
  EXPECT_EQ(e, nullptr);
  EXPECT_EQ(ak_alloc_outstanding_bytes(AK_MEM_DEVICE), dev_before);
}

// The engine's GPU path end to end: prefill in chunks, then greedy decode, equal to the
// CPU engine's greedy tokens while the CPU's margins are clear.
TEST(WkForwardCudaGpu, EngineGeneratesLikeTheCpu) {
  REQUIRE_GPU();
  if (!have_model()) GTEST_SKIP() << "model missing";
  std::vector<int32_t> prompt = varied(700, 5);  // two chunks of 512
  auto make = [](wk_device_t dev, int f32) {
    wk_engine_params_t p = wk_engine_params_default();
    p.model_path = model_path();
    p.device = dev;
    p.weights_f32 = f32;
    p.max_seq_tokens = 1024;
    p.max_seqs = 2;
    wk_engine_t *e = nullptr;
    ak_err_t err;
    EXPECT_EQ(wk_engine_create(&p, &err, &e), AK_OK) << err.msg;
    return std::unique_ptr<wk_engine_t, EngineDel>(e);
  };
  auto g = make(WK_DEVICE_CUDA, 0), c = make(WK_DEVICE_CPU, 1);
  ASSERT_TRUE(g && c);
  int64_t V = wk_model_hparams(wk_engine_model(g.get()))->n_vocab;
  std::vector<float> lg(V), lc(V);
  kv_seq_id_t sg, sc;
  ASSERT_EQ(wk_engine_seq_create(g.get(), &sg), AK_OK);
  ASSERT_EQ(wk_engine_seq_create(c.get(), &sc), AK_OK);
  ASSERT_EQ(wk_engine_prefill(g.get(), sg, prompt.data(), 700, lg.data()), AK_OK) << wk_engine_errmsg(g.get());
  ASSERT_EQ(wk_engine_prefill(c.get(), sc, prompt.data(), 700, lc.data()), AK_OK);
  int same = 0;
  for (int s = 0; s < 16; s++) {
    int32_t tg = argmax(lg.data(), V), tc = argmax(lc.data(), V), one = 1;
    if (tg != tc) {
      EXPECT_LT(margin(lc.data(), V), 0.5f) << "step " << s << ": GPU " << tg << ", CPU " << tc;
      break;
    }
    same++;
    wk_forward_batch_t bg{{1, &sg, &one}, &tg, 0, lg.data()}, bc{{1, &sc, &one}, &tc, 0, lc.data()};
    ASSERT_EQ(wk_engine_step(g.get(), &bg), AK_OK) << wk_engine_errmsg(g.get());
    ASSERT_EQ(wk_engine_step(c.get(), &bc), AK_OK);
  }
  printf("engine: %d of 16 greedy tokens equal before any divergence\n", same);
  ASSERT_EQ(wk_engine_seq_release(g.get(), sg), AK_OK);
}

namespace {
std::unique_ptr<wk_engine_t, EngineDel> gpu_engine(const kv_pool_params_t *kv, int32_t page_tokens) {
  wk_engine_params_t p = wk_engine_params_default();
  p.model_path = model_path();
  p.device = WK_DEVICE_CUDA;
  p.kv_policy = kv;
  p.page_tokens = page_tokens;
  p.max_seq_tokens = 2048;
  p.max_seqs = 2;
  wk_engine_t *e = nullptr;
  ak_err_t err;
  EXPECT_EQ(wk_engine_create(&p, &err, &e), AK_OK) << err.msg;
  return std::unique_ptr<wk_engine_t, EngineDel>(e);
}

// Greedy decode of n_gen tokens after `prompt`; every step's logits.
std::vector<std::vector<float>> greedy_logits(wk_engine_t *e, const std::vector<int32_t> &prompt, int n_gen,
                                              kv_seq_id_t *seq_p) {
  int64_t V = wk_model_hparams(wk_engine_model(e))->n_vocab;
  std::vector<std::vector<float>> out;
  std::vector<float> lg(V);
  kv_seq_id_t s;
  EXPECT_EQ(wk_engine_seq_create(e, &s), AK_OK);
  EXPECT_EQ(wk_engine_prefill(e, s, prompt.data(), (int64_t)prompt.size(), lg.data()), AK_OK)
      << wk_engine_errmsg(e);
  for (int g = 0; g < n_gen; g++) {
    out.push_back(lg);
    int32_t tok = argmax(lg.data(), V), one = 1;
    wk_forward_batch_t b{{1, &s, &one}, &tok, 0, lg.data()};
    EXPECT_EQ(wk_engine_step(e, &b), AK_OK) << wk_engine_errmsg(e);
  }
  *seq_p = s;
  return out;
}
}  // namespace

// ArkVale on the GPU with the budget at least the sequence's length keeps and attends
// every page: the same kernels over the same pages give the full cache's logits bit for
// bit, while every filled page of a budgeted layer is digested and backed up through
// the device page ops.
TEST(WkForwardCudaGpu, ArkvaleWithinBudgetEqualsFullOnTheGpu) {
  REQUIRE_GPU();
  if (!have_model()) GTEST_SKIP() << "model missing";
  kv_pool_params_t full = kv_pool_params_default();
  full.check_every_step = 1;
  kv_pool_params_t ark = full;
  ark.policy = KV_POLICY_ARKVALE;
  ark.budget_tokens = 512;
  std::vector<int32_t> prompt = varied(300, 6);
  auto ef = gpu_engine(&full, 16), ea = gpu_engine(&ark, 16);
  ASSERT_TRUE(ef && ea);
  kv_seq_id_t sf, sa;
  auto lf = greedy_logits(ef.get(), prompt, 24, &sf), la = greedy_logits(ea.get(), prompt, 24, &sa);
  ASSERT_EQ(lf.size(), la.size());
  for (size_t i = 0; i < lf.size(); i++) ASSERT_EQ(lf[i], la[i]) << "step " << i;
  kv_seq_stats_t st;
  ASSERT_EQ(kv_seq_get_stats(wk_engine_kvpool(ea.get()), sa, &st), AK_OK);
  int32_t n_layers = wk_model_hparams(wk_engine_model(ea.get()))->n_layers;
  EXPECT_EQ(st.n_pages_backed_up, (int64_t)((300 + 24) / 16) * (n_layers - 2));
  EXPECT_EQ(st.work.recalls, 0u);
}

// ArkVale on the GPU past a small budget: evicts, recalls through the device page ops,
// keeps every invariant (checked after each step) and the budget, and releases
// everything; reading back any token (resident or from its backup) gives the bytes the
// full cache holds for it.
TEST(WkForwardCudaGpu, ArkvalePastItsBudgetRecallsAndKeepsInvariants) {
  REQUIRE_GPU();
  if (!have_model()) GTEST_SKIP() << "model missing";
  int64_t dev_before = ak_alloc_outstanding_bytes(AK_MEM_DEVICE);
  {
    kv_pool_params_t ark = kv_pool_params_default();
    ark.check_every_step = 1;
    ark.policy = KV_POLICY_ARKVALE;
    ark.budget_tokens = 256;
    kv_pool_params_t full = kv_pool_params_default();
    std::vector<int32_t> prompt = varied(1200, 7);
    auto ea = gpu_engine(&ark, 32), ef = gpu_engine(&full, 32);
    ASSERT_TRUE(ea && ef);
    kv_seq_id_t sa, sf;
    auto la = greedy_logits(ea.get(), prompt, 48, &sa);
    kv_pool_t *pool = wk_engine_kvpool(ea.get());
    kv_seq_stats_t st;
    ASSERT_EQ(kv_seq_get_stats(pool, sa, &st), AK_OK);
    const wk_hparams_t *hp = wk_model_hparams(wk_engine_model(ea.get()));
    int64_t per_layer = (1200 + 48 + 31) / 32;
    EXPECT_EQ(st.n_pages_resident, per_layer * 2 + 8 * (hp->n_layers - 2));
    EXPECT_GT(st.work.evictions, 0u);
    EXPECT_GT(st.work.n_selects, 0u);
    printf("arkvale on the GPU, budget 256 of 1248 tokens: %llu recalls, %llu evictions, %llu selections\n",
           (unsigned long long)st.work.recalls, (unsigned long long)st.work.evictions,
           (unsigned long long)st.work.n_selects);
    // the full cache fed the same tokens holds the same prompt K (most of it evicted and
    // backed up on the ArkVale side, read back through the tier)
    std::vector<int32_t> fed = prompt;
    int64_t V = hp->n_vocab;
    for (size_t g = 0; g + 1 < la.size() + 1 && g < la.size(); g++) fed.push_back(argmax(la[g].data(), V));
    std::vector<float> lg(V);
    ASSERT_EQ(wk_engine_seq_create(ef.get(), &sf), AK_OK);
    ASSERT_EQ(wk_engine_prefill(ef.get(), sf, fed.data(), (int64_t)fed.size(), lg.data()), AK_OK);
    ASSERT_EQ(kv_seq_n_tokens(pool, sa), (int64_t)fed.size());
    int64_t n = 1200; /* the prompt: prefilled exactly by both (decode tokens differ by design) */
    int64_t row = (int64_t)hp->n_kv_heads * hp->head_dim;
    for (int l : {0, 5, hp->n_layers - 1}) {
      std::vector<float> ka(n * row), kf(n * row);
      ASSERT_EQ(kv_seq_read_kv(pool, sa, l, 0, n, ka.data(), nullptr), AK_OK) << kv_pool_errmsg(pool);
      ASSERT_EQ(kv_seq_read_kv(wk_engine_kvpool(ef.get()), sf, l, 0, n, kf.data(), nullptr), AK_OK);
      double e = rel_err(ka.data(), kf.data(), n * row);
      EXPECT_LT(e, 1e-6) << "layer " << l;  // same kernels, same chunks: identical
    }
    ASSERT_EQ(wk_engine_seq_release(ea.get(), sa), AK_OK);
    kv_pool_stats_t ps;
    kv_pool_get_stats(pool, &ps);
    EXPECT_EQ(ps.n_pages_used, 0);
    EXPECT_EQ(ps.n_backups, 0);
  }
  EXPECT_EQ(ak_alloc_outstanding_bytes(AK_MEM_DEVICE), dev_before);
}

// ArkVale deciding on the device (select_on_device: one score, one plan and one gather
// launch per layer, the pool told after the step) makes the host path's decisions: two
// sequences decoding together past a 256-token budget get bit-identical logits at every
// step, the same page tables in every layer, and the same recall/eviction counts; the
// device path really recalled pages (so the comparison is not vacuous).
TEST(WkForwardCudaGpu, ArkvaleDeviceSelectionMatchesTheHostPath) {
  REQUIRE_GPU();
  if (!have_model()) GTEST_SKIP() << "model missing";
  int64_t dev_before = ak_alloc_outstanding_bytes(AK_MEM_DEVICE);
  {
    kv_pool_params_t dev = kv_pool_params_default();
    dev.check_every_step = 1;
    dev.policy = KV_POLICY_ARKVALE;
    dev.budget_tokens = 256;
    dev.select_on_device = 1;
    kv_pool_params_t host = dev;
    host.select_on_device = -1;
    auto ed = gpu_engine(&dev, 32), eh = gpu_engine(&host, 32);
    ASSERT_TRUE(ed && eh);
    kv_pool_t *pd = wk_engine_kvpool(ed.get()), *ph = wk_engine_kvpool(eh.get());
    ASSERT_EQ(kv_pool_params(pd)->select_on_device, 1);
    ASSERT_EQ(kv_pool_params(ph)->select_on_device, 0);
    ASSERT_EQ(kv_pool_wants_queries(pd), 0);
    const wk_hparams_t *hp = wk_model_hparams(wk_engine_model(ed.get()));
    int64_t V = hp->n_vocab;
    std::vector<int32_t> prompt[2] = {varied(1200, 21), varied(900, 22)};
    kv_seq_id_t sd[2], sh[2];
    std::vector<float> ld(2 * V), lh(2 * V);
    for (int i = 0; i < 2; i++) {
      ASSERT_EQ(wk_engine_seq_create(ed.get(), &sd[i]), AK_OK);
      ASSERT_EQ(wk_engine_seq_create(eh.get(), &sh[i]), AK_OK);
      ASSERT_EQ(wk_engine_prefill(ed.get(), sd[i], prompt[i].data(), (int64_t)prompt[i].size(), &ld[i * V]), AK_OK)
          << wk_engine_errmsg(ed.get());
      ASSERT_EQ(wk_engine_prefill(eh.get(), sh[i], prompt[i].data(), (int64_t)prompt[i].size(), &lh[i * V]), AK_OK);
    }
    ASSERT_EQ(ld, lh);
    int32_t ones[2] = {1, 1};
    for (int g = 0; g < 70; g++) {  // crosses page boundaries (evictions at begin use the kept queries)
      int32_t toks[2] = {argmax(&lh[0], V), argmax(&lh[V], V)};
      wk_forward_batch_t bd{{2, sd, ones}, toks, 0, ld.data()}, bh{{2, sh, ones}, toks, 0, lh.data()};
      ASSERT_EQ(wk_engine_step(ed.get(), &bd), AK_OK) << wk_engine_errmsg(ed.get());
      ASSERT_EQ(wk_engine_step(eh.get(), &bh), AK_OK) << wk_engine_errmsg(eh.get());
      ASSERT_EQ(ld, lh) << "step " << g;
    }
    for (int i = 0; i < 2; i++) {
      for (int l = 0; l < hp->n_layers; l++) {
        const int32_t *td, *th;
        int64_t nd, nh;
        ASSERT_EQ(kv_seq_page_table(pd, sd[i], l, &td, &nd), AK_OK);
        ASSERT_EQ(kv_seq_page_table(ph, sh[i], l, &th, &nh), AK_OK);
        ASSERT_EQ(nd, nh);
        EXPECT_EQ(std::vector<int32_t>(td, td + nd), std::vector<int32_t>(th, th + nh)) << "seq " << i << " layer " << l;
      }
      kv_seq_stats_t a, b;
      ASSERT_EQ(kv_seq_get_stats(pd, sd[i], &a), AK_OK);
      ASSERT_EQ(kv_seq_get_stats(ph, sh[i], &b), AK_OK);
      EXPECT_EQ(a.work.recalls, b.work.recalls);
      EXPECT_EQ(a.work.evictions, b.work.evictions);
      EXPECT_EQ(a.work.n_selects, b.work.n_selects);
      EXPECT_EQ(a.work.backups, b.work.backups);
      EXPECT_GT(a.work.recalls, 0u) << "seq " << i;
      printf("seq %d: device selection %llu recalls, %llu selections (host path %llu, %llu)\n", i,
             (unsigned long long)a.work.recalls, (unsigned long long)a.work.n_selects,
             (unsigned long long)b.work.recalls, (unsigned long long)b.work.n_selects);
    }
    for (int i = 0; i < 2; i++) ASSERT_EQ(wk_engine_seq_release(ed.get(), sd[i]), AK_OK);
    kv_pool_stats_t ps;
    kv_pool_get_stats(pd, &ps);
    EXPECT_EQ(ps.n_pages_used, 0);
    EXPECT_EQ(ps.n_backups, 0);
  }
  EXPECT_EQ(ak_alloc_outstanding_bytes(AK_MEM_DEVICE), dev_before);
}

// Decode steps replayed from a CUDA graph give exactly the logits of the same kernels
// launched one by one, across re-captures as the attention's split grows (a 300- and a
// 250-token sequence decoding 40 steps together cross the 256-key chunk boundary).
TEST(WkForwardCudaGpu, GraphReplayEqualsDirectLaunches) {
  REQUIRE_GPU();
  if (!have_model()) GTEST_SKIP() << "model missing";
  Gpu graph(512), direct(512);
  wk_forward_cuda_use_graphs(direct.fw, 0);
  int64_t V = graph.n_vocab;
  std::vector<int32_t> pa = varied(230, 8), pb = varied(250, 9);
  kv_seq_id_t ga[2], da[2];
  for (int i = 0; i < 2; i++) {
    ASSERT_EQ(kv_seq_create(graph.pool, &ga[i]), AK_OK);
    ASSERT_EQ(kv_seq_create(direct.pool, &da[i]), AK_OK);
  }
  std::vector<float> lg(2 * V), ld(2 * V);
  int32_t n2[2] = {230, 250};
  std::vector<int32_t> both(pa);
  both.insert(both.end(), pb.begin(), pb.end());
  ASSERT_EQ(graph.step(ga, n2, 2, both.data(), 0, lg.data()), AK_OK);
  ASSERT_EQ(direct.step(da, n2, 2, both.data(), 0, ld.data()), AK_OK);
  ASSERT_EQ(lg, ld);
  int32_t ones[2] = {1, 1};
  for (int s = 0; s < 40; s++) {
    int32_t toks[2] = {argmax(&lg[0], V), argmax(&lg[V], V)};
    ASSERT_EQ(graph.step(ga, ones, 2, toks, 0, lg.data()), AK_OK);
    ASSERT_EQ(direct.step(da, ones, 2, toks, 0, ld.data()), AK_OK);
    ASSERT_EQ(lg, ld) << "step " << s;
  }
}

// ArkVale deciding on the device replays its decode steps from a graph too (the steps
// that complete a page run directly): the same logits bit for bit, the same page tables
// and counts as the same pool with graphs off, over 70 steps of two sequences past a
// 256-token budget (recalls made, re-captures as the split grows), and the graph path
// really replayed most steps.
TEST(WkForwardCudaGpu, ArkvaleGraphReplayEqualsDirectLaunches) {
  REQUIRE_GPU();
  if (!have_model()) GTEST_SKIP() << "model missing";
  int64_t dev_before = ak_alloc_outstanding_bytes(AK_MEM_DEVICE);
  {
    Gpu graph(512, 256), direct(512, 256);
    wk_forward_cuda_use_graphs(direct.fw, 0);
    int64_t V = graph.n_vocab;
    std::vector<int32_t> pa = varied(500, 31), pb = varied(470, 32);
    kv_seq_id_t ga[2], da[2];
    for (int i = 0; i < 2; i++) {
      ASSERT_EQ(kv_seq_create(graph.pool, &ga[i]), AK_OK);
      ASSERT_EQ(kv_seq_create(direct.pool, &da[i]), AK_OK);
    }
    std::vector<float> lg(2 * V), ld(2 * V);
    for (int i = 0; i < 2; i++) {  // prefill one at a time (a prefill step never replays)
      int32_t n = i == 0 ? 500 : 470;
      const int32_t *toks = i == 0 ? pa.data() : pb.data();
      ASSERT_EQ(graph.step(&ga[i], &n, 1, toks, 0, &lg[i * V]), AK_OK);
      ASSERT_EQ(direct.step(&da[i], &n, 1, toks, 0, &ld[i * V]), AK_OK);
      ASSERT_EQ(kv_seq_compact(graph.pool, ga[i]), AK_OK) << kv_pool_errmsg(graph.pool);
      ASSERT_EQ(kv_seq_compact(direct.pool, da[i]), AK_OK);
    }
    ASSERT_EQ(lg, ld);
    int32_t ones[2] = {1, 1};
    for (int s = 0; s < 70; s++) {
      int32_t toks[2] = {argmax(&lg[0], V), argmax(&lg[V], V)};
      ASSERT_EQ(graph.step(ga, ones, 2, toks, 0, lg.data()), AK_OK);
      ASSERT_EQ(direct.step(da, ones, 2, toks, 0, ld.data()), AK_OK);
      ASSERT_EQ(lg, ld) << "step " << s;
    }
    int64_t launches = 0, captures = 0, dl = 0;
    wk_forward_cuda_graph_counts(graph.fw, &launches, &captures);
    wk_forward_cuda_graph_counts(direct.fw, &dl, nullptr);
    EXPECT_EQ(dl, 0);
    EXPECT_GE(launches, 60) << "70 steps, 8 of them complete a page (16 tokens) of one of the sequences";
    EXPECT_LT(2 * captures, launches) << "a graph is replayed several times between captures";
    int32_t n_layers = 0;
    for (int i = 0; i < 2; i++) {
      kv_seq_stats_t a, b;
      ASSERT_EQ(kv_seq_get_stats(graph.pool, ga[i], &a), AK_OK);
      ASSERT_EQ(kv_seq_get_stats(direct.pool, da[i], &b), AK_OK);
      EXPECT_EQ(a.work.recalls, b.work.recalls);
      EXPECT_EQ(a.work.evictions, b.work.evictions);
      EXPECT_EQ(a.work.n_selects, b.work.n_selects);
      EXPECT_GT(a.work.recalls, 0u) << "seq " << i;
      n_layers = kv_pool_params(graph.pool)->n_layers;
      for (int l = 0; l < n_layers; l++) {
        const int32_t *tg, *td;
        int64_t ng, nd;
        ASSERT_EQ(kv_seq_page_table(graph.pool, ga[i], l, &tg, &ng), AK_OK);
        ASSERT_EQ(kv_seq_page_table(direct.pool, da[i], l, &td, &nd), AK_OK);
        ASSERT_EQ(ng, nd);
        EXPECT_EQ(std::vector<int32_t>(tg, tg + ng), std::vector<int32_t>(td, td + nd)) << "seq " << i << " layer " << l;
      }
      printf("seq %d: %llu recalls, %llu selections; graph launches %lld, captures %lld\n", i,
             (unsigned long long)a.work.recalls, (unsigned long long)a.work.n_selects, (long long)launches,
             (long long)captures);
    }
  }
  EXPECT_EQ(ak_alloc_outstanding_bytes(AK_MEM_DEVICE), dev_before);
}
