// Tests for worker/wk_model.c: hyper-parameters of the default model read from GGUF
// metadata, weight views, and clean failures on missing or foreign files.
#include <gtest/gtest.h>

#include <cstdio>
#include <cstring>
#include <vector>
#include <string>

extern "C" {
#include "ak_alloc.h"
#include "wk_model.h"
}

static bool have_model() {
  FILE *f = fopen(AK_MODEL_PATH, "rb");
  if (f) fclose(f);
  return f != nullptr;
}

TEST(WkModel, DefaultModelHyperParameters) {
  if (!have_model()) GTEST_SKIP() << "model missing";
  int64_t before = ak_alloc_outstanding_bytes(AK_MEM_HOST);
  wk_model_t *m = nullptr;
  ak_err_t err;
  ASSERT_EQ(wk_model_load(AK_MODEL_PATH, nullptr, &err, &m), AK_OK) << err.msg;
  const wk_hparams_t *hp = wk_model_hparams(m);
  EXPECT_STREQ(hp->arch, "llama");
  EXPECT_EQ(hp->n_layers, 30);
  EXPECT_EQ(hp->dim, 576);
  EXPECT_EQ(hp->n_heads, 9);
  EXPECT_EQ(hp->n_kv_heads, 3);
  EXPECT_EQ(hp->head_dim, 64);
  EXPECT_EQ(hp->ffn_dim, 1536);
  EXPECT_EQ(hp->n_vocab, 49152);
  EXPECT_EQ(hp->n_ctx_train, 8192);
  EXPECT_EQ(hp->rope_dims, 64);
  EXPECT_FLOAT_EQ(hp->rope_freq_base, 100000.0f);
  EXPECT_FLOAT_EQ(hp->norm_eps, 1e-5f);
  EXPECT_EQ(hp->rope_mode, KN_ROPE_NORM);
  EXPECT_TRUE(hp->tied_embeddings);
  EXPECT_EQ(wk_model_output(m)->data, wk_model_token_embd(m)->data);
  EXPECT_EQ(wk_model_token_embd(m)->type, AK_TYPE_Q8_0);
  const wk_layer_t *L = wk_model_layer(m, 29);
  ASSERT_NE(L, nullptr);
  EXPECT_EQ(wk_model_layer(m, 30), nullptr);
  EXPECT_EQ(L->wq.type, AK_TYPE_Q4_1);
  EXPECT_EQ(L->wk.n_rows, 192);
  EXPECT_EQ(L->w_down.n_cols, 1536);
  // The norm weights were converted and are finite, non-trivial values.
  double sum = 0;
  for (int i = 0; i < hp->dim; i++) sum += L->attn_norm[i];
  EXPECT_NE(sum, 0.0);
  // Weights: ~ 135M params at Q4_1 (5 bits) plus the Q8_0 embedding.
  EXPECT_GT(wk_model_weight_bytes(m), 80u << 20);
  EXPECT_LT(wk_model_weight_bytes(m), 110u << 20);
  wk_model_free(m);
  EXPECT_EQ(ak_alloc_outstanding_bytes(AK_MEM_HOST), before);
}

TEST(WkModel, MissingAndForeignFilesFailCleanly) {
  int64_t before = ak_alloc_outstanding_bytes(AK_MEM_HOST);
  wk_model_t *m = nullptr;
  ak_err_t err;
  ak_err_clear(&err);
  EXPECT_LT(wk_model_load("/nonexistent/model.gguf", nullptr, &err, &m), 0);
  EXPECT_NE(std::string(err.msg).find("/nonexistent/model.gguf"), std::string::npos) << err.msg;
  EXPECT_EQ(m, nullptr);
  std::string path = ::testing::TempDir() + "not_a_model.gguf";
  FILE *f = fopen(path.c_str(), "wb");
  ASSERT_NE(f, nullptr);
  fputs("this is not a gguf file at all", f);
  fclose(f);
  EXPECT_EQ(wk_model_load(path.c_str(), nullptr, &err, &m), AK_ERR_FORMAT);
  EXPECT_EQ(m, nullptr);
  EXPECT_EQ(wk_model_load(nullptr, nullptr, &err, &m), AK_ERR_INVALID_ARG);
  remove(path.c_str());
  EXPECT_EQ(ak_alloc_outstanding_bytes(AK_MEM_HOST), before);
}

namespace {
// A tiny GQA shape for models made by wk_model_from_fill.
wk_hparams_t tiny_hparams(int tied) {
  wk_hparams_t hp{};
  snprintf(hp.arch, sizeof hp.arch, "llama");
  hp.n_layers = 2;
  hp.dim = 64;
  hp.n_heads = 4;
  hp.n_kv_heads = 2;
  hp.head_dim = 16;
  hp.ffn_dim = 96;
  hp.n_vocab = 50;
  hp.n_ctx_train = 256;
  hp.rope_dims = 16;
  hp.rope_freq_base = 10000.0f;
  hp.rope_freq_scale = 1.0f;
  hp.rope_mode = KN_ROPE_NORM;
  hp.norm_eps = 1e-5f;
  hp.tied_embeddings = tied;
  return hp;
}

// Writes value (tensor, layer, index) into every element and records the calls.
struct FillLog {
  std::vector<std::string> calls;
  int fail_at = -1; // the call to fail with AK_ERR_CUDA, or -1
};
ak_status_t tagged_fill(void *ctx, wk_tensor_t t, int32_t layer, float *dst, int64_t rows, int64_t cols,
                        ak_err_t *err) {
  FillLog *log = static_cast<FillLog *>(ctx);
  if ((int)log->calls.size() == log->fail_at) return ak_err_set(err, AK_ERR_CUDA, "fill failed on purpose");
  log->calls.push_back(std::to_string((int)t) + "/" + std::to_string(layer) + ":" + std::to_string(rows) + "x" +
                       std::to_string(cols));
  for (int64_t i = 0; i < rows * cols; i++) dst[i] = 100.0f * (float)t + (float)(layer + 1) + 1e-4f * (float)i;
  return AK_OK;
}
}  // namespace

// wk_model_from_fill: every tensor asked for once with its shape, f32 views over what
// fill wrote (Q, K and V of a layer distinct), tied output not asked, no GGUF.
TEST(WkModel, FromFillViewsWhatFillWrote) {
  const int64_t before = ak_alloc_outstanding_bytes(AK_MEM_HOST);
  for (int tied : {1, 0}) {
    wk_hparams_t hp = tiny_hparams(tied);
    FillLog log;
    wk_model_t *m = nullptr;
    ak_err_t err;
    ASSERT_EQ(wk_model_from_fill(&hp, tagged_fill, &log, &err, &m), AK_OK) << err.msg;
    EXPECT_EQ(log.calls.size(), (size_t)(2 + !tied + 9 * hp.n_layers));
    EXPECT_EQ(wk_model_gguf(m), nullptr);
    EXPECT_EQ(std::memcmp(wk_model_hparams(m), &hp, sizeof hp), 0);
    EXPECT_EQ(wk_model_output(m)->data == wk_model_token_embd(m)->data, tied != 0);
    const wk_layer_t *L = wk_model_layer(m, 1);
    ASSERT_NE(L, nullptr);
    EXPECT_EQ(L->wk.type, AK_TYPE_F32);
    EXPECT_EQ(L->wk.n_rows, 32);
    EXPECT_EQ(L->wk.n_cols, 64);
    EXPECT_FLOAT_EQ(static_cast<const float *>(L->wk.data)[0], 100.0f * WK_TENSOR_WK + 2.0f);
    EXPECT_FLOAT_EQ(static_cast<const float *>(L->w_down.data)[5], 100.0f * WK_TENSOR_DOWN + 2.0f + 5e-4f);
    EXPECT_FLOAT_EQ(L->ffn_norm[3], 100.0f * WK_TENSOR_FFN_NORM + 2.0f + 3e-4f);
    EXPECT_EQ(L->w_gate.n_rows, 96);
    wk_model_free(m);
  }
  EXPECT_EQ(ak_alloc_outstanding_bytes(AK_MEM_HOST), before);
}

// A bad shape is refused before fill runs; fill's error comes back as it is; nothing
// leaks either way.
TEST(WkModel, FromFillFailsCleanly) {
  const int64_t before = ak_alloc_outstanding_bytes(AK_MEM_HOST);
  wk_model_t *m = nullptr;
  ak_err_t err;
  FillLog log;
  wk_hparams_t hp = tiny_hparams(1);
  hp.n_kv_heads = 3; // 4 heads are not a multiple of 3
  EXPECT_EQ(wk_model_from_fill(&hp, tagged_fill, &log, &err, &m), AK_ERR_INVALID_ARG);
  EXPECT_NE(std::string(err.msg).find("3 KV heads"), std::string::npos) << err.msg;
  EXPECT_TRUE(log.calls.empty());
  EXPECT_EQ(wk_model_from_fill(nullptr, tagged_fill, &log, &err, &m), AK_ERR_INVALID_ARG);
  hp = tiny_hparams(0);
  log.fail_at = 7;
  EXPECT_EQ(wk_model_from_fill(&hp, tagged_fill, &log, &err, &m), AK_ERR_CUDA);
  EXPECT_NE(std::string(err.msg).find("on purpose"), std::string::npos) << err.msg;
  EXPECT_EQ(log.calls.size(), 7u);
  EXPECT_EQ(m, nullptr);
  EXPECT_EQ(ak_alloc_outstanding_bytes(AK_MEM_HOST), before);
}
