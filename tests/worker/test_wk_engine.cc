// Tests for worker/wk_engine.c: parameter validation, sequence lifetime (pages return
// to the pool on release), the up-front context check of prefill, and no leaks.
#include <gtest/gtest.h>

#include <cstdio>
#include <string>
#include <vector>

extern "C" {
#include "ak_alloc.h"
#include "wk_engine.h"
}

static bool have_model() {
  FILE *f = fopen(AK_MODEL_PATH, "rb");
  if (f) fclose(f);
  return f != nullptr;
}

TEST(WkEngine, RejectsBadParams) {
  int64_t before = ak_alloc_outstanding_bytes(AK_MEM_HOST);
  wk_engine_t *e = nullptr;
  ak_err_t err;
  wk_engine_params_t p = wk_engine_params_default();
  EXPECT_EQ(wk_engine_create(&p, &err, &e), AK_ERR_INVALID_ARG);  // no model path
  EXPECT_NE(std::string(err.msg).find("model_path"), std::string::npos);
  if (have_model()) {
    p.model_path = AK_MODEL_PATH;
    p.page_tokens = 0;
    EXPECT_EQ(wk_engine_create(&p, &err, &e), AK_ERR_INVALID_ARG);
    EXPECT_NE(std::string(err.msg).find("page_tokens"), std::string::npos);
    p = wk_engine_params_default();
    p.model_path = AK_MODEL_PATH;
    p.max_batch_tokens = 0;
    EXPECT_EQ(wk_engine_create(&p, &err, &e), AK_ERR_INVALID_ARG);
    EXPECT_NE(std::string(err.msg).find("max_batch_tokens"), std::string::npos);
  }
  EXPECT_EQ(e, nullptr);
  EXPECT_EQ(ak_alloc_outstanding_bytes(AK_MEM_HOST), before);
}

TEST(WkEngine, ReleaseReturnsEveryPage) {
  if (!have_model()) GTEST_SKIP() << "model missing";
  int64_t before = ak_alloc_outstanding_bytes(AK_MEM_HOST);
  {
    wk_engine_params_t p = wk_engine_params_default();
    p.model_path = AK_MODEL_PATH;
    p.n_threads = 1;
    p.max_seq_tokens = 256;
    p.max_seqs = 2;
    p.page_tokens = 16;
    p.max_batch_tokens = 64;
    wk_engine_t *e = nullptr;
    ak_err_t err;
    ASSERT_EQ(wk_engine_create(&p, &err, &e), AK_OK) << err.msg;
    const wk_hparams_t *hp = wk_model_hparams(wk_engine_model(e));
    std::vector<float> logits(hp->n_vocab);
    std::vector<int32_t> prompt(100, 42);
    kv_seq_id_t s;
    ASSERT_EQ(wk_engine_seq_create(e, &s), AK_OK);
    ASSERT_EQ(wk_engine_prefill(e, s, prompt.data(), 100, logits.data()), AK_OK) << wk_engine_errmsg(e);
    kv_pool_stats_t st;
    kv_pool_get_stats(wk_engine_kvpool(e), &st);
    EXPECT_EQ(st.n_pages_used, 7 * hp->n_layers);  // ceil(100 / 16) pages in every layer
    // 100 + 157 > 256: refused before running anything, the sequence is unchanged.
    std::vector<int32_t> more(157, 42);
    EXPECT_EQ(wk_engine_prefill(e, s, more.data(), 157, logits.data()), AK_ERR_RANGE);
    EXPECT_NE(std::string(wk_engine_errmsg(e)).find("exceed the context"), std::string::npos);
    EXPECT_EQ(kv_seq_n_tokens(wk_engine_kvpool(e), s), 100);
    ASSERT_EQ(wk_engine_seq_release(e, s), AK_OK);
    EXPECT_EQ(wk_engine_seq_release(e, s), AK_ERR_NOT_FOUND);
    kv_pool_get_stats(wk_engine_kvpool(e), &st);
    EXPECT_EQ(st.n_pages_used, 0);
    EXPECT_EQ(st.n_seqs, 0);
    EXPECT_EQ(kv_pool_check(wk_engine_kvpool(e)), AK_OK);
    wk_engine_destroy(e);
  }
  EXPECT_EQ(ak_alloc_outstanding_bytes(AK_MEM_HOST), before);
}
