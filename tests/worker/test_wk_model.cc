// Tests for worker/wk_model.c: hyper-parameters of the default model read from GGUF
// metadata, weight views, and clean failures on missing or foreign files.
#include <gtest/gtest.h>

#include <cstdio>
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
