// Tests for worker/wk_model_cuda.c: the model's weights on the GPU.
//
// WkModelCudaGpu (ctest label `gpu`): the default model's upload equals the CPU
// model's rows dequantized and rounded to bf16, bit for bit (rows of every fused
// matrix of the first and last layers, at the boundaries between wq|wk|wv and
// gate|up, the embeddings and every norm); the tied output is token_embd; the byte
// count follows the shapes; freeing returns device and host memory to the baseline.
// Synthetic models: finite values inside +-1/sqrt(fan_in), norms of 1, the same
// weights for one seed, other weights for another seed or another tensor.
//
// WkModelCudaArgs runs everywhere (no label: CI has no GPU): the shapes' hparams
// and the refusals that happen before any CUDA call.
#include <gtest/gtest.h>

#include <cuda_runtime.h>

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

extern "C" {
#include "ak_alloc.h"
#include "ak_quant.h"
#include "kn_cuda.h"
#include "wk_model.h"
#include "wk_model_cuda.h"
}

namespace {

bool has(const ak_err_t &err, const char *s) { return std::string(err.msg).find(s) != std::string::npos; }

bool have_model() {
  FILE *f = fopen(AK_MODEL_PATH, "rb");
  if (f) fclose(f);
  return f != nullptr;
}

struct ModelDeleter {
  void operator()(wk_model_t *m) const { wk_model_free(m); }
};
using ModelPtr = std::unique_ptr<wk_model_t, ModelDeleter>;
struct CudaModelDeleter {
  void operator()(wk_model_cuda_t *m) const { wk_model_cuda_free(m); }
};
using CudaModelPtr = std::unique_ptr<wk_model_cuda_t, CudaModelDeleter>;

// Matrix bytes of a shape as bf16 (the tied output counted once).
size_t expected_weight_bytes(const wk_hparams_t &hp) {
  const size_t dim = (size_t)hp.dim, q = (size_t)hp.n_heads * hp.head_dim, kv = (size_t)hp.n_kv_heads * hp.head_dim;
  const size_t ffn = (size_t)hp.ffn_dim;
  const size_t per_layer = (q + 2 * kv) * dim + dim * q + 2 * ffn * dim + dim * ffn;
  const size_t embd = (size_t)hp.n_vocab * dim * (hp.tied_embeddings ? 1 : 2);
  return 2 * (embd + per_layer * (size_t)hp.n_layers);
}

std::vector<uint16_t> download_bf16(const void *base, int64_t elem_offset, int64_t n) {
  std::vector<uint16_t> out((size_t)n);
  EXPECT_EQ(cudaMemcpy(out.data(), static_cast<const uint16_t *>(base) + elem_offset, (size_t)n * 2,
                       cudaMemcpyDeviceToHost),
            cudaSuccess);
  return out;
}
std::vector<float> download_f32(const float *base, int64_t n) {
  std::vector<float> out((size_t)n);
  EXPECT_EQ(cudaMemcpy(out.data(), base, (size_t)n * 4, cudaMemcpyDeviceToHost), cudaSuccess);
  return out;
}

// Row r of a GGUF matrix, dequantized and rounded to bf16 on the host.
std::vector<uint16_t> cpu_row_bf16(const kn_weight_t &w, int64_t r) {
  std::vector<float> f((size_t)w.n_cols);
  const size_t row_bytes = ak_type_row_bytes(w.type, w.n_cols);
  EXPECT_EQ(ak_dequant_row(w.type, static_cast<const char *>(w.data) + (size_t)r * row_bytes, f.data(), w.n_cols),
            AK_OK);
  std::vector<uint16_t> out(f.size());
  for (size_t i = 0; i < f.size(); i++) out[i] = ak_f32_to_bf16(f[i]);
  return out;
}

// Rows {0, 1, n/2, n-1} of `w` equal rows row_offset + those of the device matrix.
void expect_rows_equal(const void *dev, int64_t row_offset, const kn_weight_t &w, const char *what, int layer) {
  const int64_t rows[] = {0, 1, w.n_rows / 2, w.n_rows - 1};
  for (int64_t r : rows) {
    std::vector<uint16_t> got = download_bf16(dev, (row_offset + r) * w.n_cols, w.n_cols);
    std::vector<uint16_t> want = cpu_row_bf16(w, r);
    ASSERT_EQ(got.size(), want.size());
    size_t first_bad = got.size();
    for (size_t i = 0; i < got.size() && first_bad == got.size(); i++)
      if (got[i] != want[i]) first_bad = i;
    EXPECT_EQ(first_bad, got.size()) << what << " layer " << layer << " row " << r << " differs at column "
                                     << first_bad;
  }
}

class WkModelCudaGpu : public ::testing::Test {
 protected:
  void SetUp() override {
    ak_err_t err{};
    int n_dev = 0;
    ASSERT_EQ(kn_cuda_device_count(&err, &n_dev), AK_OK) << err.msg;
    ASSERT_EQ(cudaSetDevice(0), cudaSuccess);
  }
};

TEST_F(WkModelCudaGpu, UploadEqualsCpuRowsInBf16) {
  if (!have_model()) GTEST_SKIP() << "model missing: " << AK_MODEL_PATH;
  ak_err_t err{};
  wk_model_t *raw = nullptr;
  ASSERT_EQ(wk_model_load(AK_MODEL_PATH, nullptr, &err, &raw), AK_OK) << err.msg;
  ModelPtr cpu(raw);
  const wk_hparams_t *hp = wk_model_hparams(cpu.get());
  const int64_t dev_before = ak_alloc_outstanding_bytes(AK_MEM_DEVICE);
  const int64_t host_before = ak_alloc_outstanding_bytes(AK_MEM_HOST);

  wk_model_cuda_t *graw = nullptr;
  ASSERT_EQ(wk_model_cuda_upload(cpu.get(), &err, &graw), AK_OK) << err.msg;
  CudaModelPtr gpu(graw);
  // The staging buffers are gone; only the small host tables remain.
  EXPECT_LT(ak_alloc_outstanding_bytes(AK_MEM_HOST) - host_before, 64 << 10);

  const wk_hparams_t *ghp = wk_model_cuda_hparams(gpu.get());
  EXPECT_EQ(std::memcmp(ghp, hp, sizeof *hp), 0);
  ASSERT_TRUE(hp->tied_embeddings);
  EXPECT_EQ(wk_model_cuda_output(gpu.get()), wk_model_cuda_token_embd(gpu.get()));
  EXPECT_EQ(wk_model_cuda_weight_bytes(gpu.get()), expected_weight_bytes(*hp));
  EXPECT_EQ(ak_alloc_outstanding_bytes(AK_MEM_DEVICE) - dev_before,
            (int64_t)wk_model_cuda_weight_bytes(gpu.get()) + (int64_t)(2 * hp->n_layers + 1) * hp->dim * 4);
  EXPECT_EQ(wk_model_cuda_layer(gpu.get(), -1), nullptr);
  EXPECT_EQ(wk_model_cuda_layer(gpu.get(), hp->n_layers), nullptr);

  expect_rows_equal(wk_model_cuda_token_embd(gpu.get()), 0, *wk_model_token_embd(cpu.get()), "token_embd", -1);
  std::vector<float> on = download_f32(wk_model_cuda_output_norm(gpu.get()), hp->dim);
  EXPECT_EQ(std::memcmp(on.data(), wk_model_output_norm(cpu.get()), (size_t)hp->dim * 4), 0);

  const int64_t q_rows = (int64_t)hp->n_heads * hp->head_dim, kv_rows = (int64_t)hp->n_kv_heads * hp->head_dim;
  for (int l : {0, hp->n_layers - 1}) {
    const wk_layer_t *S = wk_model_layer(cpu.get(), l);
    const wk_cuda_layer_t *L = wk_model_cuda_layer(gpu.get(), l);
    ASSERT_NE(L, nullptr);
    expect_rows_equal(L->wqkv, 0, S->wq, "wq", l);
    expect_rows_equal(L->wqkv, q_rows, S->wk, "wk", l);
    expect_rows_equal(L->wqkv, q_rows + kv_rows, S->wv, "wv", l);
    expect_rows_equal(L->wo, 0, S->wo, "wo", l);
    expect_rows_equal(L->wgate_up, 0, S->w_gate, "w_gate", l);
    expect_rows_equal(L->wgate_up, hp->ffn_dim, S->w_up, "w_up", l);
    expect_rows_equal(L->wdown, 0, S->w_down, "w_down", l);
    std::vector<float> an = download_f32(L->attn_norm, hp->dim), fn = download_f32(L->ffn_norm, hp->dim);
    EXPECT_EQ(std::memcmp(an.data(), S->attn_norm, (size_t)hp->dim * 4), 0) << "attn_norm layer " << l;
    EXPECT_EQ(std::memcmp(fn.data(), S->ffn_norm, (size_t)hp->dim * 4), 0) << "ffn_norm layer " << l;
  }

  gpu.reset();
  EXPECT_EQ(ak_alloc_outstanding_bytes(AK_MEM_DEVICE), dev_before);
  EXPECT_EQ(ak_alloc_outstanding_bytes(AK_MEM_HOST), host_before);
}

// A sample of every kind of tensor of a synthetic model, in a fixed order.
struct Sample {
  std::vector<uint16_t> bf16;  // [tensor][n] concatenated
  std::vector<float> norms;
};
const int64_t kSampleElems = 4096;

Sample sample_model(const wk_model_cuda_t *m) {
  const wk_hparams_t *hp = wk_model_cuda_hparams(m);
  Sample s;
  auto add = [&](const void *p, int64_t offset) {
    std::vector<uint16_t> v = download_bf16(p, offset, kSampleElems);
    s.bf16.insert(s.bf16.end(), v.begin(), v.end());
  };
  add(wk_model_cuda_token_embd(m), 0);
  add(wk_model_cuda_output(m), (int64_t)hp->n_vocab * hp->dim - kSampleElems);  // the last elements
  for (int l : {0, hp->n_layers - 1}) {
    const wk_cuda_layer_t *L = wk_model_cuda_layer(m, l);
    add(L->wqkv, 0);
    add(L->wo, 0);
    add(L->wgate_up, 0);
    add(L->wdown, 0);
    std::vector<float> an = download_f32(L->attn_norm, hp->dim), fn = download_f32(L->ffn_norm, hp->dim);
    s.norms.insert(s.norms.end(), an.begin(), an.end());
    s.norms.insert(s.norms.end(), fn.begin(), fn.end());
  }
  std::vector<float> on = download_f32(wk_model_cuda_output_norm(m), hp->dim);
  s.norms.insert(s.norms.end(), on.begin(), on.end());
  return s;
}

// fan_in (columns) of sample tensor t, in sample_model's order.
int64_t sample_fan_in(const wk_hparams_t &hp, size_t t) {
  if (t < 2) return hp.dim;  // token_embd, output
  switch ((t - 2) % 4) {
    case 1: return (int64_t)hp.n_heads * hp.head_dim;  // wo
    case 3: return hp.ffn_dim;                         // wdown
    default: return hp.dim;                            // wqkv, wgate_up
  }
}

void check_synthetic(const char *shape) {
  SCOPED_TRACE(shape);
  ak_err_t err{};
  wk_hparams_t hp;
  ASSERT_EQ(wk_model_cuda_shape(shape, &err, &hp), AK_OK) << err.msg;
  const int64_t dev_before = ak_alloc_outstanding_bytes(AK_MEM_DEVICE);
  const int64_t host_before = ak_alloc_outstanding_bytes(AK_MEM_HOST);

  wk_model_cuda_t *raw = nullptr;
  ASSERT_EQ(wk_model_cuda_synthetic(shape, 42, &err, &raw), AK_OK) << err.msg;
  CudaModelPtr m(raw);
  EXPECT_EQ(std::memcmp(wk_model_cuda_hparams(m.get()), &hp, sizeof hp), 0);
  EXPECT_EQ(wk_model_cuda_weight_bytes(m.get()), expected_weight_bytes(hp));
  EXPECT_EQ(ak_alloc_outstanding_bytes(AK_MEM_DEVICE) - dev_before,
            (int64_t)expected_weight_bytes(hp) + (int64_t)(2 * hp.n_layers + 1) * hp.dim * 4);
  EXPECT_EQ(wk_model_cuda_output(m.get()) == wk_model_cuda_token_embd(m.get()), hp.tied_embeddings != 0);
  Sample a = sample_model(m.get());
  m.reset();
  EXPECT_EQ(ak_alloc_outstanding_bytes(AK_MEM_DEVICE), dev_before);

  // Values: finite, inside +-1/sqrt(fan_in), spread like a uniform (variance s^2/3).
  const size_t n_tensors = a.bf16.size() / kSampleElems;
  for (size_t t = 0; t < n_tensors; t++) {
    const float scale = 1.0f / std::sqrt((float)sample_fan_in(hp, t));
    double sum = 0, sum2 = 0;
    int n_bad = 0;
    for (int64_t i = 0; i < kSampleElems; i++) {
      const float x = ak_bf16_to_f32(a.bf16[t * kSampleElems + (size_t)i]);
      if (!std::isfinite(x) || std::fabs(x) > scale) n_bad++;
      sum += x;
      sum2 += (double)x * x;
    }
    EXPECT_EQ(n_bad, 0) << "tensor " << t;
    const double mean = sum / kSampleElems, var = sum2 / kSampleElems - mean * mean;
    EXPECT_LT(std::fabs(mean), 0.05 * scale) << "tensor " << t;
    EXPECT_NEAR(var / ((double)scale * scale / 3.0), 1.0, 0.1) << "tensor " << t;
  }
  for (float x : a.norms) ASSERT_EQ(x, 1.0f);
  // Distinct seeds per tensor: layer 0's wqkv sample differs from the last layer's.
  EXPECT_NE(std::memcmp(&a.bf16[2 * kSampleElems], &a.bf16[6 * kSampleElems], kSampleElems * 2), 0);
  if (!hp.tied_embeddings)
    EXPECT_NE(std::memcmp(&a.bf16[0], &a.bf16[kSampleElems], kSampleElems * 2), 0);

  // Deterministic for a seed, different for another.
  ASSERT_EQ(wk_model_cuda_synthetic(shape, 42, &err, &raw), AK_OK) << err.msg;
  m.reset(raw);
  Sample b = sample_model(m.get());
  m.reset();
  EXPECT_TRUE(a.bf16 == b.bf16);
  ASSERT_EQ(wk_model_cuda_synthetic(shape, 43, &err, &raw), AK_OK) << err.msg;
  m.reset(raw);
  Sample c = sample_model(m.get());
  m.reset();
  size_t n_same = 0;
  for (size_t i = 0; i < a.bf16.size(); i++) n_same += a.bf16[i] == c.bf16[i];
  EXPECT_LT(n_same, a.bf16.size() / 20) << "seeds 42 and 43 agree on " << n_same << " of " << a.bf16.size();

  EXPECT_EQ(ak_alloc_outstanding_bytes(AK_MEM_DEVICE), dev_before);
  EXPECT_EQ(ak_alloc_outstanding_bytes(AK_MEM_HOST), host_before);
}

TEST_F(WkModelCudaGpu, SyntheticSmolLM2) { check_synthetic("smollm2-135m"); }
TEST_F(WkModelCudaGpu, SyntheticLlama3_8B) { check_synthetic("llama3-8b"); }
TEST_F(WkModelCudaGpu, SyntheticLlama3Tiny) { check_synthetic("llama3-tiny"); }

TEST(WkModelCudaArgs, FillArgumentsAreCheckedBeforeCuda) {
  ak_err_t err{};
  EXPECT_EQ(kn_cuda_fill_random_bf16(nullptr, 10, 1.0f, 1, nullptr, &err), AK_ERR_INVALID_ARG);
  EXPECT_TRUE(has(err, "dst is NULL")) << err.msg;
  EXPECT_EQ(kn_cuda_fill_random_bf16(nullptr, -1, 1.0f, 1, nullptr, &err), AK_ERR_INVALID_ARG);
  EXPECT_EQ(kn_cuda_fill_random_bf16(nullptr, 0, NAN, 1, nullptr, &err), AK_ERR_INVALID_ARG);
  EXPECT_TRUE(has(err, "scale")) << err.msg;
  EXPECT_EQ(kn_cuda_fill_random_bf16(nullptr, 0, 1.0f, 1, nullptr, &err), AK_OK);
  EXPECT_EQ(kn_cuda_fill_f32(nullptr, 3, 1.0f, nullptr, &err), AK_ERR_INVALID_ARG);
  EXPECT_EQ(kn_cuda_fill_f32(nullptr, 0, 1.0f, nullptr, &err), AK_OK);
}

// --- without a GPU ---

TEST(WkModelCudaArgs, UnknownShapeNamesTheKnownOnes) {
  ak_err_t err{};
  wk_hparams_t hp;
  std::memset(&hp, 0x5A, sizeof hp);
  wk_hparams_t untouched = hp;
  EXPECT_EQ(wk_model_cuda_shape("gpt2", &err, &hp), AK_ERR_INVALID_ARG);
  for (const char *s : {"'gpt2'", "llama2-7b", "longchat-7b", "llama3-8b", "smollm2-135m", "llama3-tiny"})
    EXPECT_TRUE(has(err, s)) << s << " not in: " << err.msg;
  EXPECT_EQ(std::memcmp(&hp, &untouched, sizeof hp), 0);  // written only on success
  EXPECT_EQ(wk_model_cuda_shape(nullptr, &err, &hp), AK_ERR_INVALID_ARG);
  EXPECT_EQ(wk_model_cuda_shape("LLAMA2-7B", &err, &hp), AK_ERR_INVALID_ARG);  // names are exact
  EXPECT_EQ(wk_model_cuda_shape("llama2-7b", &err, nullptr), AK_ERR_INVALID_ARG);
  EXPECT_EQ(wk_model_cuda_shape("llama2-7b", nullptr, &hp), AK_OK);  // err may be NULL

  // Refused before any allocation or CUDA call.
  const int64_t dev_before = ak_alloc_outstanding_bytes(AK_MEM_DEVICE);
  wk_model_cuda_t *m = nullptr;
  EXPECT_EQ(wk_model_cuda_synthetic("gpt2", 1, &err, &m), AK_ERR_INVALID_ARG);
  EXPECT_TRUE(has(err, "smollm2-135m")) << err.msg;
  EXPECT_EQ(m, nullptr);
  EXPECT_EQ(wk_model_cuda_synthetic("smollm2-135m", 1, &err, nullptr), AK_ERR_INVALID_ARG);
  EXPECT_EQ(wk_model_cuda_upload(nullptr, &err, &m), AK_ERR_INVALID_ARG);
  EXPECT_EQ(m, nullptr);
  EXPECT_EQ(ak_alloc_outstanding_bytes(AK_MEM_DEVICE), dev_before);
  wk_model_cuda_free(nullptr);
}

TEST(WkModelCudaArgs, ShapeHyperParameters) {
  struct Want {
    const char *name;
    int32_t n_layers, dim, n_heads, n_kv_heads, head_dim, ffn_dim, n_vocab, n_ctx_train;
    float base, scale;
    int tied;
  };
  const Want wants[] = {
      {"llama2-7b", 32, 4096, 32, 32, 128, 11008, 32000, 4096, 10000.0f, 1.0f, 0},
      {"longchat-7b", 32, 4096, 32, 32, 128, 11008, 32000, 32768, 10000.0f, 0.125f, 0},
      {"llama3-8b", 32, 4096, 32, 8, 128, 14336, 128256, 8192, 500000.0f, 1.0f, 0},
      {"smollm2-135m", 30, 576, 9, 3, 64, 1536, 49152, 8192, 100000.0f, 1.0f, 1},
  };
  for (const Want &w : wants) {
    SCOPED_TRACE(w.name);
    ak_err_t err{};
    wk_hparams_t hp;
    ASSERT_EQ(wk_model_cuda_shape(w.name, &err, &hp), AK_OK) << err.msg;
    EXPECT_STREQ(hp.arch, "llama");
    EXPECT_EQ(std::string(hp.name), std::string("synthetic ") + w.name);
    EXPECT_EQ(hp.n_layers, w.n_layers);
    EXPECT_EQ(hp.dim, w.dim);
    EXPECT_EQ(hp.n_heads, w.n_heads);
    EXPECT_EQ(hp.n_kv_heads, w.n_kv_heads);
    EXPECT_EQ(hp.head_dim, w.head_dim);
    EXPECT_EQ(hp.ffn_dim, w.ffn_dim);
    EXPECT_EQ(hp.n_vocab, w.n_vocab);
    EXPECT_EQ(hp.n_ctx_train, w.n_ctx_train);
    EXPECT_EQ(hp.rope_dims, w.head_dim);
    EXPECT_EQ(hp.rope_freq_base, w.base);
    EXPECT_EQ(hp.rope_freq_scale, w.scale);
    EXPECT_EQ(hp.rope_mode, KN_ROPE_NORM);
    EXPECT_FLOAT_EQ(hp.norm_eps, 1e-5f);
    EXPECT_EQ(hp.tied_embeddings, w.tied);
    EXPECT_EQ(hp.n_heads % hp.n_kv_heads, 0);
  }
  // The byte arithmetic the GPU tests use, against Llama-2-7B's published count of
  // 6,738,415,616 parameters less its 266,240 norm weights.
  ak_err_t err{};
  wk_hparams_t hp;
  ASSERT_EQ(wk_model_cuda_shape("llama2-7b", &err, &hp), AK_OK);
  EXPECT_EQ(expected_weight_bytes(hp), (size_t)2 * 6738149376u);
}

}  // namespace
