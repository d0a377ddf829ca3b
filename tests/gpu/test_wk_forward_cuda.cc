// Tests for worker/wk_forward_cuda.c: the whole default model on the GPU against the
// CPU backend in exact mode (f32 weights). The GPU computes with bf16 weights and
// bf16 GEMM inputs, so logits agree to bf16 precision, not bit for bit: the checks
// are a relative error bound on every position's logits and equal greedy tokens
// wherever the CPU's top-2 margin is clear of that error.
#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <cstdlib>
#include <memory>
#include <string>
#include <vector>

extern "C" {
#include "ak_alloc.h"
#include "ak_quant.h"
#include "kn_cuda.h"
#include "wk_engine.h"
#include "wk_forward.h"
#include "wk_forward_cuda.h"
#include "wk_model_cuda.h"
#include "wk_sampler.h"
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

// The tests' KV pools, GPU and CPU alike: 4 sequences of up to 1024 tokens in f16 pages
// of 16 tokens, the whole cache resident.
kv_pool_params_t test_pool_params(const wk_hparams_t *hp) {
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
  return kp;
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

  // own: a device model to run (and free) instead of the default model's upload.
  explicit Gpu(int32_t max_tok, int32_t budget = 0, wk_model_cuda_t *own = nullptr) {
    ak_err_t err;
    ak_err_clear(&err);
    if (own) {
      model = own;
    } else {
      EXPECT_EQ(wk_model_load(model_path(), nullptr, &err, &host_model), AK_OK) << err.msg;
      EXPECT_EQ(wk_model_cuda_upload(host_model, &err, &model), AK_OK) << err.msg;
    }
    const wk_hparams_t *hp = wk_model_cuda_hparams(model);
    n_vocab = hp->n_vocab;
    kv_pool_params_t kp = test_pool_params(hp);
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
  // One row per sequence; `logits` may be NULL (only ids come back).
  ak_status_t step_sampled(kv_seq_id_t *seqs, int32_t *n_new, int32_t n_seqs, const int32_t *tokens, float *logits,
                           const wk_cuda_sample_t *req, ak_err_t *err) {
    wk_forward_batch_t b{{n_seqs, seqs, n_new}, tokens, 0, logits};
    ak_err_clear(err);
    return wk_forward_cuda_run_sampled(fw, pool, &b, req, err);
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

// wk_model_from_fill's fill for the CPU twin of a device model: each tensor copied down,
// bf16 matrices widened to f32 (exactly), Q/K/V and gate/up cut from their fused rows.
ak_status_t fill_from_device(void *ctx, wk_tensor_t t, int32_t l, float *dst, int64_t rows, int64_t cols,
                             ak_err_t *err) {
  const wk_model_cuda_t *m = static_cast<const wk_model_cuda_t *>(ctx);
  const wk_hparams_t *hp = wk_model_cuda_hparams(m);
  const wk_cuda_layer_t *L = l >= 0 ? wk_model_cuda_layer(m, l) : nullptr;
  const int64_t q = (int64_t)hp->n_heads * hp->head_dim, kv = (int64_t)hp->n_kv_heads * hp->head_dim;
  const void *src = nullptr;
  int64_t row0 = 0;
  bool f32 = false;
  switch (t) {
    case WK_TENSOR_TOKEN_EMBD: src = wk_model_cuda_token_embd(m); break;
    case WK_TENSOR_OUTPUT: src = wk_model_cuda_output(m); break;
    case WK_TENSOR_OUTPUT_NORM: src = wk_model_cuda_output_norm(m), f32 = true; break;
    case WK_TENSOR_ATTN_NORM: src = L->attn_norm, f32 = true; break;
    case WK_TENSOR_FFN_NORM: src = L->ffn_norm, f32 = true; break;
    case WK_TENSOR_WQ: src = L->wqkv; break;
    case WK_TENSOR_WK: src = L->wqkv, row0 = q; break;
    case WK_TENSOR_WV: src = L->wqkv, row0 = q + kv; break;
    case WK_TENSOR_WO: src = L->wo; break;
    case WK_TENSOR_GATE: src = L->wgate_up; break;
    case WK_TENSOR_UP: src = L->wgate_up, row0 = hp->ffn_dim; break;
    case WK_TENSOR_DOWN: src = L->wdown; break;
  }
  const size_t n = (size_t)rows * (size_t)cols;
  if (f32) {
    if (cudaMemcpy(dst, src, n * sizeof(float), cudaMemcpyDeviceToHost) != cudaSuccess)
      return ak_err_set(err, AK_ERR_CUDA, "copying tensor %d of layer %d down", (int)t, l);
    return AK_OK;
  }
  std::vector<uint16_t> bits(n);
  if (cudaMemcpy(bits.data(), static_cast<const uint16_t *>(src) + row0 * cols, n * 2, cudaMemcpyDeviceToHost) !=
      cudaSuccess)
    return ak_err_set(err, AK_ERR_CUDA, "copying tensor %d of layer %d down", (int)t, l);
  for (size_t i = 0; i < n; i++) dst[i] = ak_bf16_to_f32(bits[i]);
  return AK_OK;
}

// The CPU side of a model: its own forward and KV pool, f32 weights and activations.
struct Cpu {
  kn_cpu_t *cpu = nullptr;
  kv_pool_t *pool = nullptr;
  wk_forward_t *fw = nullptr;
  Cpu(const wk_model_t *m, int32_t max_tok) {
    ak_err_t err;
    const wk_hparams_t *hp = wk_model_hparams(m);
    EXPECT_EQ(kn_cpu_create(0, &err, &cpu), AK_OK) << err.msg;
    kv_pool_params_t kp = test_pool_params(hp);
    EXPECT_EQ(kv_pool_create(&kp, &err, &pool), AK_OK) << err.msg;
    EXPECT_EQ(wk_forward_create(m, cpu, max_tok, &err, &fw), AK_OK) << err.msg;
  }
  ~Cpu() {
    wk_forward_destroy(fw);
    kv_pool_destroy(pool);
    kn_cpu_destroy(cpu);
  }
  ak_status_t step(kv_seq_id_t *seqs, int32_t *n_new, const int32_t *tokens, int all, float *logits,
                   int32_t n_seqs = 1) {
    wk_forward_batch_t b{{n_seqs, seqs, n_new}, tokens, all, logits};
    ak_err_t err;
    ak_status_t st = wk_forward_run(fw, pool, &b, &err);
    EXPECT_EQ(st, AK_OK) << err.msg;
    return st;
  }
};
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

// An engine on synthetic weights (no model file): the shape's hparams, no host model,
// a prompt and greedy steps sampled on the device and on the host from the same logits
// agree, ids inside the vocabulary, nothing left allocated on the device.
TEST(WkForwardCudaGpu, SyntheticEngineDecodes) {
  REQUIRE_GPU();
  const int64_t dev_before = ak_alloc_outstanding_bytes(AK_MEM_DEVICE);
  wk_hparams_t hp;
  ak_err_t err;
  ASSERT_EQ(wk_model_cuda_shape("smollm2-135m", &err, &hp), AK_OK) << err.msg;
  {
    wk_engine_params_t p = wk_engine_params_default();
    p.synthetic = "smollm2-135m";
    p.synthetic_seed = 7;
    p.device = WK_DEVICE_CUDA;
    p.max_seq_tokens = 256;
    p.max_seqs = 1;
    wk_engine_t *raw = nullptr;
    ASSERT_EQ(wk_engine_create(&p, &err, &raw), AK_OK) << err.msg;
    std::unique_ptr<wk_engine_t, EngineDel> e(raw);
    EXPECT_EQ(wk_engine_model(e.get()), nullptr);
    EXPECT_EQ(std::memcmp(wk_engine_hparams(e.get()), &hp, sizeof hp), 0);
    const int64_t V = hp.n_vocab;
    std::vector<int32_t> prompt = varied(40, 3);
    std::vector<float> lg(V);
    kv_seq_id_t seq;
    ASSERT_EQ(wk_engine_seq_create(e.get(), &seq), AK_OK);
    ASSERT_EQ(wk_engine_prefill(e.get(), seq, prompt.data(), 40, lg.data()), AK_OK) << wk_engine_errmsg(e.get());
    int32_t tok = argmax(lg.data(), V);
    const wk_cuda_sample_seq_t greedy = wk_cuda_sample_seq_greedy();
    for (int s = 0; s < 8; s++) {
      int32_t one = 1, next = -1;
      wk_forward_batch_t b{{1, &seq, &one}, &tok, 0, lg.data()};
      wk_cuda_sample_t req{&greedy, &next, nullptr};
      ASSERT_EQ(wk_engine_step_sampled(e.get(), &b, &req), AK_OK) << wk_engine_errmsg(e.get());
      ASSERT_GE(next, 0);
      ASSERT_LT(next, V);
      EXPECT_EQ(next, argmax(lg.data(), V)) << "step " << s; // the device's pick, from the logits it returned
      tok = next;
    }
    EXPECT_EQ(kv_seq_n_tokens(wk_engine_kvpool(e.get()), seq), 48);
    ASSERT_EQ(wk_engine_seq_release(e.get(), seq), AK_OK);
  }
  EXPECT_EQ(ak_alloc_outstanding_bytes(AK_MEM_DEVICE), dev_before);
}

// Synthetic models (random bf16 weights built on the GPU) against their CPU twins (the
// same weights copied down, f32 arithmetic): smollm2-135m's shape (GQA 3, head_dim 64)
// and llama3-tiny (GQA 4, head_dim 128, gate|up over 8M elements). A 100-token prompt's
// logits at every position, 16 greedy decode steps teacher-forced on the CPU's tokens,
// then 8 steps of a batch of 4 sequences (prompts of 30..90 tokens: the tensor-core
// GEMV's 4 rows on llama3-tiny), all within bf16 error; the argmax agrees wherever the
// CPU's top-2 margin is clear of that error (random weights give flat logits: a margin
// of 0.05 against errors of ~0.005).
void synthetic_twin(const char *shape) {
  SCOPED_TRACE(shape);
  const int64_t dev_before = ak_alloc_outstanding_bytes(AK_MEM_DEVICE);
  {
    ak_err_t err;
    wk_model_cuda_t *mc = nullptr;
    ASSERT_EQ(wk_model_cuda_synthetic(shape, 11, &err, &mc), AK_OK) << err.msg;
    Gpu g(128, 0, mc);
    wk_model_t *raw = nullptr;
    ASSERT_EQ(wk_model_from_fill(wk_model_cuda_hparams(mc), fill_from_device, mc, &err, &raw), AK_OK) << err.msg;
    std::unique_ptr<wk_model_t, void (*)(wk_model_t *)> hm(raw, wk_model_free);
    EXPECT_EQ(wk_model_gguf(hm.get()), nullptr);
    Cpu c(hm.get(), 128);
    const int64_t V = g.n_vocab;
    double worst = 0;
    int clear = 0, agree = 0;
    auto compare = [&](const float *a, const float *ref) {
      worst = std::max(worst, rel_err(a, ref, V));
      if (margin(ref, V) > 0.05f) {
        clear++;
        agree += argmax(a, V) == argmax(ref, V);
      }
    };
    {
      std::vector<int32_t> prompt = varied(100, 4);
      for (int32_t &id : prompt) id %= (int32_t)V; // llama3-tiny's vocabulary is 8192
      std::vector<float> lg(100 * V, NAN), lc(100 * V);
      kv_seq_id_t sg, sc;
      ASSERT_EQ(kv_seq_create(g.pool, &sg), AK_OK);
      ASSERT_EQ(kv_seq_create(c.pool, &sc), AK_OK);
      int32_t n = 100;
      ASSERT_EQ(g.step(&sg, &n, 1, prompt.data(), 1, lg.data()), AK_OK);
      ASSERT_EQ(c.step(&sc, &n, prompt.data(), 1, lc.data()), AK_OK);
      for (int t = 0; t < 100; t++) compare(&lg[t * V], &lc[t * V]);
      for (int s = 0; s < 16; s++) {
        int32_t tok = argmax(&lc[99 * V], V), one = 1;
        ASSERT_EQ(g.step(&sg, &one, 1, &tok, 0, &lg[99 * V]), AK_OK);
        ASSERT_EQ(c.step(&sc, &one, &tok, 0, &lc[99 * V]), AK_OK);
        compare(&lg[99 * V], &lc[99 * V]);
      }
      ASSERT_EQ(kv_seq_release(g.pool, sg), AK_OK);
      ASSERT_EQ(kv_seq_release(c.pool, sc), AK_OK);
    }
    {
      kv_seq_id_t sg[4], sc[4];
      std::vector<float> lg(4 * V), lc(4 * V);
      for (int i = 0; i < 4; i++) {
        std::vector<int32_t> prompt = varied(30 + 20 * i, 5 + i);
        for (int32_t &id : prompt) id %= (int32_t)V;
        int32_t n = (int32_t)prompt.size();
        ASSERT_EQ(kv_seq_create(g.pool, &sg[i]), AK_OK);
        ASSERT_EQ(kv_seq_create(c.pool, &sc[i]), AK_OK);
        ASSERT_EQ(g.step(&sg[i], &n, 1, prompt.data(), 0, &lg[i * V]), AK_OK);
        ASSERT_EQ(c.step(&sc[i], &n, prompt.data(), 0, &lc[i * V]), AK_OK);
      }
      for (int s = 0; s < 8; s++) {
        int32_t toks[4], ones[4] = {1, 1, 1, 1};
        for (int i = 0; i < 4; i++) {
          compare(&lg[i * V], &lc[i * V]);
          toks[i] = argmax(&lc[i * V], V);
        }
        ASSERT_EQ(g.step(sg, ones, 4, toks, 0, lg.data()), AK_OK);
        ASSERT_EQ(c.step(sc, ones, toks, 0, lc.data(), 4), AK_OK);
      }
      for (int i = 0; i < 4; i++) compare(&lg[i * V], &lc[i * V]);
    }
    printf("synthetic %s: worst relative error %.3e; argmax agrees at %d of %d clear rows\n", shape, worst, agree,
           clear);
    EXPECT_LT(worst, 3e-2);
    EXPECT_EQ(agree, clear);
    EXPECT_GE(clear, 40);
  }
  EXPECT_EQ(ak_alloc_outstanding_bytes(AK_MEM_DEVICE), dev_before);
}

TEST(WkForwardCudaGpu, SyntheticModelMatchesItsCpuTwin) {
  REQUIRE_GPU();
  synthetic_twin("smollm2-135m");
  synthetic_twin("llama3-tiny");
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
// launched one by one, across re-captures as the attention's split grows (a 230- and a
// 250-token sequence decoding 40 steps together cross chunk boundaries: a grid this
// small splits the keys into chunks of 64).
// The graph path stores K/V from the rope launch (kn_cuda_rope_args_t.store), the
// direct path with its own kn_cuda_kv_store launch: equal logits cover the fused store.
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

// ---- sampling on the device (wk_cuda_sampler.h) ----

namespace {

// wk_sampler's greedy with a penalty over `history`, on a row of logits.
int32_t host_greedy(const float *logits, int64_t n_vocab, float penalty, const std::vector<int32_t> &history) {
  wk_sampler_params_t sp = wk_sampler_params_default();
  sp.temperature = 0.0f;
  sp.repetition_penalty = penalty;
  sp.repeat_last_n = (int32_t)std::max<size_t>(history.size(), 1);
  wk_sampler_t *s = nullptr;
  ak_err_t err;
  EXPECT_EQ(wk_sampler_create(&sp, n_vocab, &err, &s), AK_OK) << err.msg;
  for (int32_t id : history) EXPECT_EQ(wk_sampler_accept(s, id), AK_OK);
  int32_t id = -1;
  EXPECT_EQ(wk_sampler_sample(s, logits, &id, nullptr), AK_OK);
  wk_sampler_destroy(s);
  return id;
}

// log p(id) under softmax(logits / T) restricted to the top_k (no ties at the cut).
double host_topk_logprob(const float *logits, int64_t n_vocab, float temperature, int top_k, int32_t id) {
  std::vector<float> v(logits, logits + n_vocab);
  std::partial_sort(v.begin(), v.begin() + top_k, v.end(), std::greater<float>());
  if (logits[id] < v[(size_t)top_k - 1]) return -INFINITY;
  double z = 0.0;
  for (int i = 0; i < top_k; i++) z += std::exp(((double)v[(size_t)i] - v[0]) / temperature);
  return ((double)logits[id] - v[0]) / temperature - std::log(z);
}
}  // namespace

// Four sequences, one batch, different parameters: greedy ids sampled on the device
// equal the argmax of the logits the same step returns, and wk_sampler's greedy with the
// same penalty and history; a top-k row draws within the top k with the logprob of the
// filtered softmax. The prompt step runs directly, the decode steps from the graph.
TEST(WkForwardCudaGpu, DeviceSamplingMatchesReturnedLogits) {
  REQUIRE_GPU();
  if (!have_model()) GTEST_SKIP() << "model missing";
  Gpu g(512);
  const int64_t V = g.n_vocab;
  const int32_t S = 4;
  kv_seq_id_t seqs[S];
  for (int i = 0; i < S; i++) ASSERT_EQ(kv_seq_create(g.pool, &seqs[i]), AK_OK);
  std::vector<std::vector<int32_t>> hist(S);
  int32_t n_new[S];
  std::vector<int32_t> tokens;
  for (int i = 0; i < S; i++) {
    std::vector<int32_t> p = varied(40 + 13 * i, 20 + i);
    n_new[i] = (int32_t)p.size();
    tokens.insert(tokens.end(), p.begin(), p.end());
    hist[(size_t)i] = p;
  }
  const float penalty[S] = {1.0f, 1.3f, 0.8f, 1.0f};
  std::vector<float> logits((size_t)(S * V));
  int64_t launches0 = 0;
  wk_forward_cuda_graph_counts(g.fw, &launches0, nullptr);
  for (int step = 0; step < 12; step++) {
    SCOPED_TRACE(testing::Message() << "step " << step);
    wk_cuda_sample_seq_t q[S];
    for (int i = 0; i < S; i++) {
      q[i] = wk_cuda_sample_seq_greedy();
      q[i].repetition_penalty = penalty[i];
      // The last 64 tokens of the sequence (this step's included, as the service passes).
      const std::vector<int32_t> &h = hist[(size_t)i];
      const size_t n = std::min<size_t>(h.size(), 64);
      q[i].history_ids = h.data() + (h.size() - n);
      q[i].n_history_ids = (int32_t)n;
      q[i].seed = 42 + (uint64_t)i;
      q[i].step = (uint64_t)step;
    }
    q[3].temperature = 0.8f;  // a sampled row beside the greedy ones
    q[3].top_k = 40;
    int32_t ids[S];
    float lps[S];
    wk_cuda_sample_t req{q, ids, lps};
    std::fill(ids, ids + S, -1);
    ak_err_t err;
    ASSERT_EQ(g.step_sampled(seqs, n_new, S, tokens.data(), logits.data(), &req, &err), AK_OK) << err.msg;
    for (int i = 0; i < S; i++) {
      const float *row = &logits[(size_t)(i * V)];
      const std::vector<int32_t> h(q[i].history_ids, q[i].history_ids + q[i].n_history_ids);
      if (i < 3) {
        if (penalty[i] == 1.0f) EXPECT_EQ(ids[i], argmax(row, V)) << "seq " << i;
        EXPECT_EQ(ids[i], host_greedy(row, V, penalty[i], h)) << "seq " << i << " penalty " << penalty[i];
        EXPECT_EQ(lps[i], 0.0f) << "seq " << i;
      } else {
        ASSERT_GE(ids[i], 0);
        ASSERT_LT(ids[i], V);
        const double want = host_topk_logprob(row, V, q[i].temperature, q[i].top_k, ids[i]);
        ASSERT_TRUE(std::isfinite(want)) << "seq " << i << " drew " << ids[i] << " outside the top 40";
        EXPECT_NEAR(lps[i], want, 1e-3) << "seq " << i;
      }
    }
    tokens.assign(ids, ids + S);
    for (int i = 0; i < S; i++) {
      n_new[i] = 1;
      hist[(size_t)i].push_back(ids[i]);
    }
  }
  int64_t launches1 = 0;
  wk_forward_cuda_graph_counts(g.fw, &launches1, nullptr);
  EXPECT_GE(launches1 - launches0, 10) << "decode steps with sampling replay from the graph";
}

// The same sampled decode through the graph (ids only, no logits) and through direct
// launches (with logits): the same ids and logprobs every step. Every 4th step samples
// nothing (logits only, argmax fed back), so the graph is re-captured as sampling turns
// on and off.
TEST(WkForwardCudaGpu, SampledGraphReplayEqualsDirectLaunches) {
  REQUIRE_GPU();
  if (!have_model()) GTEST_SKIP() << "model missing";
  Gpu graph(512), direct(512);
  wk_forward_cuda_use_graphs(direct.fw, 0);
  const int64_t V = graph.n_vocab;
  kv_seq_id_t ga[2], da[2];
  for (int i = 0; i < 2; i++) {
    ASSERT_EQ(kv_seq_create(graph.pool, &ga[i]), AK_OK);
    ASSERT_EQ(kv_seq_create(direct.pool, &da[i]), AK_OK);
  }
  std::vector<int32_t> pa = varied(70, 31), pb = varied(90, 32);
  std::vector<int32_t> toks(pa);
  toks.insert(toks.end(), pb.begin(), pb.end());
  int32_t n_new[2] = {70, 90};
  std::vector<int32_t> hist[2] = {pa, pb};
  std::vector<float> lg(2 * V), ld(2 * V);
  int64_t captures0 = 0;
  wk_forward_cuda_graph_counts(graph.fw, nullptr, &captures0);
  for (int step = 0; step < 24; step++) {
    SCOPED_TRACE(testing::Message() << "step " << step);
    int32_t next[2];
    if (step > 0 && step % 4 == 0) {
      ASSERT_EQ(graph.step(ga, n_new, 2, toks.data(), 0, lg.data()), AK_OK);
      ASSERT_EQ(direct.step(da, n_new, 2, toks.data(), 0, ld.data()), AK_OK);
      ASSERT_EQ(lg, ld);
      for (int i = 0; i < 2; i++) next[i] = argmax(&lg[(size_t)i * V], V);
    } else {
      wk_cuda_sample_seq_t q[2];
      for (int i = 0; i < 2; i++) {
        q[i] = wk_cuda_sample_seq_greedy();
        q[i].temperature = 0.9f;
        q[i].top_p = 0.9f;
        q[i].min_p = 0.01f;
        q[i].repetition_penalty = 1.15f;
        const size_t n = std::min<size_t>(hist[i].size(), 100);
        q[i].history_ids = hist[i].data() + (hist[i].size() - n);
        q[i].n_history_ids = (int32_t)n;
        q[i].seed = 7 + (uint64_t)i;
        q[i].step = (uint64_t)step;
      }
      int32_t ig[2] = {-1, -1}, id[2] = {-2, -2};
      float pg[2], pd[2];
      wk_cuda_sample_t rg{q, ig, pg}, rd{q, id, pd};
      ak_err_t err;
      ASSERT_EQ(graph.step_sampled(ga, n_new, 2, toks.data(), nullptr, &rg, &err), AK_OK) << err.msg;
      ASSERT_EQ(direct.step_sampled(da, n_new, 2, toks.data(), ld.data(), &rd, &err), AK_OK) << err.msg;
      for (int i = 0; i < 2; i++) {
        EXPECT_EQ(ig[i], id[i]) << "seq " << i;
        EXPECT_EQ(pg[i], pd[i]) << "seq " << i;
        EXPECT_LE(pg[i], 0.0f);
        next[i] = ig[i];
      }
    }
    toks.assign(next, next + 2);
    for (int i = 0; i < 2; i++) {
      n_new[i] = 1;
      hist[i].push_back(next[i]);
    }
  }
  int64_t launches = 0, captures = 0;
  wk_forward_cuda_graph_counts(graph.fw, &launches, &captures);
  EXPECT_GE(launches, 20);
  EXPECT_GE(captures - captures0, 2) << "sampling on and off are different graphs";
}

// A request the device cannot take (a history beyond the cap) is refused before the
// pool changes: the caller samples that step on the host.
TEST(WkForwardCudaGpu, SampledRunRefusesLongHistoryAndLeavesThePool) {
  REQUIRE_GPU();
  if (!have_model()) GTEST_SKIP() << "model missing";
  Gpu g(512);
  kv_seq_id_t seq;
  ASSERT_EQ(kv_seq_create(g.pool, &seq), AK_OK);
  std::vector<int32_t> p = varied(20, 3);
  int32_t n = 20;
  std::vector<float> lg((size_t)g.n_vocab);
  ASSERT_EQ(g.step(&seq, &n, 1, p.data(), 0, lg.data()), AK_OK);
  std::vector<int32_t> hist(WK_CUDA_SAMPLE_MAX_HISTORY_IDS + 1, 5);
  wk_cuda_sample_seq_t q = wk_cuda_sample_seq_greedy();
  q.repetition_penalty = 1.2f;
  q.history_ids = hist.data();
  q.n_history_ids = (int32_t)hist.size();
  int32_t id = -1;
  wk_cuda_sample_t req{&q, &id, nullptr};
  int32_t one = 1, tok = argmax(lg.data(), g.n_vocab);
  ak_err_t err;
  EXPECT_EQ(g.step_sampled(&seq, &one, 1, &tok, nullptr, &req, &err), AK_ERR_UNSUPPORTED);
  EXPECT_NE(std::string(err.msg).find("n_history_ids=" + std::to_string(WK_CUDA_SAMPLE_MAX_HISTORY_IDS + 1)), std::string::npos) << err.msg;
  EXPECT_EQ(kv_seq_n_tokens(g.pool, seq), 20) << "the refused step left the pool as it was";
  EXPECT_EQ(id, -1);
  // logits_all is refused too.
  q.n_history_ids = 10;
  wk_forward_batch_t b{{1, &seq, &one}, &tok, 1, lg.data()};
  EXPECT_EQ(wk_forward_cuda_run_sampled(g.fw, g.pool, &b, &req, &err), AK_ERR_INVALID_ARG);
  EXPECT_NE(std::string(err.msg).find("logits_all"), std::string::npos) << err.msg;
  EXPECT_EQ(kv_seq_n_tokens(g.pool, seq), 20);
  // The same request within the cap runs.
  ASSERT_EQ(g.step_sampled(&seq, &one, 1, &tok, nullptr, &req, &err), AK_OK) << err.msg;
  EXPECT_GE(id, 0);
  EXPECT_LT(id, g.n_vocab);
  EXPECT_EQ(kv_seq_n_tokens(g.pool, seq), 21);
}

// The engine on CUDA samples inside the step: a greedy decode with a repetition
// penalty through wk_engine_step_sampled (ids only) follows the same tokens as
// wk_engine_step's logits sampled by wk_sampler on the host.
TEST(WkForwardCudaGpu, EngineStepSampledFollowsHostGreedy) {
  REQUIRE_GPU();
  if (!have_model()) GTEST_SKIP() << "model missing";
  wk_engine_params_t p = wk_engine_params_default();
  p.model_path = model_path();
  p.device = WK_DEVICE_CUDA;
  p.max_seq_tokens = 1024;
  p.max_seqs = 2;
  wk_engine_t *raw[2] = {nullptr, nullptr};
  ak_err_t err;
  for (int i = 0; i < 2; i++) ASSERT_EQ(wk_engine_create(&p, &err, &raw[i]), AK_OK) << err.msg;
  std::unique_ptr<wk_engine_t, EngineDel> dev(raw[0]), host(raw[1]);
  EXPECT_EQ(wk_engine_samples_on_device(dev.get()), 1);
  const int64_t V = wk_model_hparams(wk_engine_model(dev.get()))->n_vocab;
  std::vector<int32_t> prompt = varied(50, 12);
  kv_seq_id_t sd, sh;
  ASSERT_EQ(wk_engine_seq_create(dev.get(), &sd), AK_OK);
  ASSERT_EQ(wk_engine_seq_create(host.get(), &sh), AK_OK);
  std::vector<int32_t> hist;  // everything fed so far: the penalty's window is its last 64
  std::vector<float> lg((size_t)V);
  std::vector<int32_t> feed = prompt;
  for (int s = 0; s < 12; s++) {
    SCOPED_TRACE(testing::Message() << "step " << s);
    int32_t n = (int32_t)feed.size();
    hist.insert(hist.end(), feed.begin(), feed.end());
    const size_t n_win = std::min<size_t>(hist.size(), 64);
    std::vector<int32_t> win(hist.end() - (ptrdiff_t)n_win, hist.end());
    wk_cuda_sample_seq_t q = wk_cuda_sample_seq_greedy();
    q.repetition_penalty = 1.3f;
    q.history_ids = win.data();
    q.n_history_ids = (int32_t)win.size();
    int32_t id = -1;
    float lp = 1.0f;
    wk_cuda_sample_t req{&q, &id, &lp};
    wk_forward_batch_t bd{{1, &sd, &n}, feed.data(), 0, nullptr}, bh{{1, &sh, &n}, feed.data(), 0, lg.data()};
    ASSERT_EQ(wk_engine_step_sampled(dev.get(), &bd, &req), AK_OK) << wk_engine_errmsg(dev.get());
    ASSERT_EQ(wk_engine_step(host.get(), &bh), AK_OK) << wk_engine_errmsg(host.get());
    EXPECT_EQ(id, host_greedy(lg.data(), V, 1.3f, win));
    EXPECT_EQ(lp, 0.0f);
    feed.assign(1, id);
  }
}
