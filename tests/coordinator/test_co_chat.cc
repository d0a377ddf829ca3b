// Tests for coordinator/co_chat.c. Expected strings are what llama-cpp-python 0.3.36's
// Jinja2ChatFormatter renders from the GGUF's tokenizer.chat_template for the same
// conversations; the ids of the rendered prompt are its llm.tokenize(special=True).
#include <gtest/gtest.h>

#include <string>
#include <vector>

extern "C" {
#include "ak_gguf.h"
#include "co_chat.h"
#include "co_tokenizer.h"
}

namespace {

std::string Render(const std::vector<co_chat_msg_t> &msgs, int add_generation_prompt) {
  ak_err_t err;
  size_t n = 0;
  EXPECT_EQ(co_chat_apply(msgs.data(), (int64_t)msgs.size(), add_generation_prompt, nullptr, 0, &n, &err),
            AK_ERR_RANGE);
  std::string s(n + 1, '\0');
  EXPECT_EQ(co_chat_apply(msgs.data(), (int64_t)msgs.size(), add_generation_prompt, s.data(), s.size(), &n, &err),
            AK_OK)
      << err.msg;
  EXPECT_EQ(s[n], '\0');
  s.resize(n);
  return s;
}

const std::string kSys =
    "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n";

TEST(CoChat, InsertsTheDefaultSystemPrompt) {
  EXPECT_EQ(Render({{"user", "Hello!"}}, 1), kSys + "<|im_start|>user\nHello!<|im_end|>\n<|im_start|>assistant\n");
  EXPECT_EQ(Render({{"assistant", "I start."}}, 1),
            kSys + "<|im_start|>assistant\nI start.<|im_end|>\n<|im_start|>assistant\n");
  EXPECT_EQ(Render({{"user", ""}}, 0), kSys + "<|im_start|>user\n<|im_end|>\n");
}

TEST(CoChat, KeepsAGivenSystemPrompt) {
  EXPECT_EQ(Render({{"system", "Be terse."}, {"user", "2+2?"}}, 1),
            "<|im_start|>system\nBe terse.<|im_end|>\n<|im_start|>user\n2+2?<|im_end|>\n<|im_start|>assistant\n");
}

TEST(CoChat, MultiTurnWithoutGenerationPrompt) {
  EXPECT_EQ(Render({{"user", "Hi"}, {"assistant", "Hello! How can I help?"}, {"user", "Tell me a joke.\nA short one."}},
                   0),
            kSys +
                "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\nHello! How can I help?<|im_end|>\n"
                "<|im_start|>user\nTell me a joke.\nA short one.<|im_end|>\n");
  EXPECT_EQ(Render({{"user", "h\xc3\xa9llo \xf0\x9f\x98\x80 <b>"}}, 1),
            kSys + "<|im_start|>user\nh\xc3\xa9llo \xf0\x9f\x98\x80 <b><|im_end|>\n<|im_start|>assistant\n");
}

TEST(CoChat, NoMessages) {
  EXPECT_EQ(Render({}, 1), "<|im_start|>assistant\n");
  EXPECT_EQ(Render({}, 0), "");
}

TEST(CoChat, RejectsUnknownRoles) {
  ak_err_t err;
  char buf[512];
  size_t n = 0;
  const co_chat_msg_t msgs[] = {{"user", "hi"}, {"tool", "42"}};
  EXPECT_EQ(co_chat_apply(msgs, 2, 1, buf, sizeof buf, &n, &err), AK_ERR_INVALID_ARG);
  EXPECT_NE(std::string(err.msg).find("'tool'"), std::string::npos) << err.msg;
  EXPECT_NE(std::string(err.msg).find("message 1"), std::string::npos) << err.msg;
  const co_chat_msg_t no_role[] = {{nullptr, "hi"}};
  EXPECT_EQ(co_chat_apply(no_role, 1, 1, buf, sizeof buf, &n, &err), AK_ERR_INVALID_ARG);
  const co_chat_msg_t no_content[] = {{"user", nullptr}};
  EXPECT_EQ(co_chat_apply(no_content, 1, 1, buf, sizeof buf, &n, &err), AK_ERR_INVALID_ARG);
  EXPECT_EQ(co_chat_apply(msgs, -1, 1, buf, sizeof buf, &n, &err), AK_ERR_INVALID_ARG);
}

TEST(CoChat, ReportsTheSizeNeeded) {
  ak_err_t err;
  const co_chat_msg_t msgs[] = {{"system", "s"}, {"user", "u"}};
  const std::string want = "<|im_start|>system\ns<|im_end|>\n<|im_start|>user\nu<|im_end|>\n";
  char buf[128];
  size_t n = 0;
  // room for the text but not its NUL
  EXPECT_EQ(co_chat_apply(msgs, 2, 0, buf, want.size(), &n, &err), AK_ERR_RANGE);
  EXPECT_EQ(n, want.size());
  ASSERT_EQ(co_chat_apply(msgs, 2, 0, buf, want.size() + 1, &n, &err), AK_OK);
  EXPECT_EQ(std::string(buf), want);
}

TEST(CoChat, MatchesTheModelTemplateAndTokenizes) {
  ak_err_t err;
  ak_gguf_t *g = nullptr;
  if (ak_gguf_open(AK_MODEL_PATH, &err, &g) != AK_OK) GTEST_SKIP() << "model not found: " << AK_MODEL_PATH;
  EXPECT_EQ(co_chat_check_gguf(g, &err), AK_OK) << err.msg;
  co_tokenizer_t *tok = nullptr;
  ASSERT_EQ(co_tokenizer_create_from_gguf(g, &err, &tok), AK_OK) << err.msg;
  ak_gguf_close(g);
  const std::string prompt = Render({{"user", "Hello!"}}, 1);
  std::vector<int32_t> ids(64);
  int64_t n = 0;
  ASSERT_EQ(co_tokenizer_encode(tok, prompt.data(), prompt.size(), 1, 1, ids.data(), 64, &n, &err), AK_OK);
  ids.resize((size_t)n);
  EXPECT_EQ(ids, (std::vector<int32_t>{1, 9690, 198, 2683, 359, 253, 5356, 5646, 11173, 3365, 3511,
                                        308, 34519, 28, 7018, 411, 407, 19712, 8182, 2, 198, 1,
                                        4093, 198, 19556, 17, 2, 198, 1, 520, 9531, 198}));
  co_tokenizer_destroy(tok);
}

}  // namespace
