// tokenizer_fixture.h: a GoogleTest fixture holding the default model's tokenizer,
// built once per suite; tests skip when the model file is absent. Tests only.
#pragma once

#include <gtest/gtest.h>

extern "C" {
#include "ak_gguf.h"
#include "co_tokenizer.h"
}

class ModelTokenizerTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    ak_err_t err;
    ak_gguf_t *g = nullptr;
    if (ak_gguf_open(AK_MODEL_PATH, &err, &g) != AK_OK) return;
    co_tokenizer_t *t = nullptr;
    ak_status_t st = co_tokenizer_create_from_gguf(g, &err, &t);
    ak_gguf_close(g);
    ASSERT_EQ(st, AK_OK) << err.msg;
    tok_ = t;
  }
  static void TearDownTestSuite() {
    co_tokenizer_destroy(tok_);
    tok_ = nullptr;
  }
  void SetUp() override {
    if (!tok_) GTEST_SKIP() << "model not found: " << AK_MODEL_PATH;
  }
  static inline co_tokenizer_t *tok_ = nullptr;
};
