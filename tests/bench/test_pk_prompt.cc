// test_pk_prompt: the passkey benchmark's prompt text, passkeys and scoring rule
// (bench/passkey/pk_prompt.h), without a model.
#include <gtest/gtest.h>

#include <set>
#include <string>

extern "C" {
#include "pk_prompt.h"
}

namespace {

std::string Build(const pk_prompt_params_t &p) {
  ak_err_t err;
  size_t n = 0;
  EXPECT_EQ(pk_prompt_build(&p, nullptr, 0, &n, &err), AK_ERR_RANGE);
  std::string s(n + 1, '\0');
  size_t n2 = 0;
  EXPECT_EQ(pk_prompt_build(&p, s.data(), s.size(), &n2, &err), AK_OK) << err.msg;
  EXPECT_EQ(n2, n);
  s.resize(n);
  return s;
}

const std::string kTask = PK_TASK_TEXT;
const std::string kFill = PK_FILLER_SENTENCE;

TEST(PkPrompt, RawLayoutMatchesTheReferenceScript) {
  // Filler of 1.5 sentences (joined by a space), key at depth 1/3 by characters.
  const int64_t n_fill = (int64_t)kFill.size() + 1 + 20;
  pk_prompt_params_t p = {.n_filler_chars = n_fill, .depth = 1.0 / 3.0, .passkey = 12345, .chat = 0};
  const std::string full_filler = kFill + " " + kFill;
  const int64_t n_prefix = (int64_t)((double)n_fill / 3.0);
  const std::string want = kTask + "\n" + full_filler.substr(0, n_prefix) + "\n" +
                           "The pass key is 12345. Remember it. 12345 is the pass key.\n" +
                           full_filler.substr(0, n_fill - n_prefix) + "\nWhat is the pass key? The pass key is";
  EXPECT_EQ(Build(p), want);
}

TEST(PkPrompt, DepthEndsPutTheKeyFirstOrLast) {
  pk_prompt_params_t p = {.n_filler_chars = 300, .depth = 0.0, .passkey = 54321, .chat = 0};
  std::string s = Build(p);
  EXPECT_EQ(s.find(kTask + "\n\nThe pass key is 54321."), 0u);
  p.depth = 1.0;
  s = Build(p);
  EXPECT_NE(s.find("\nThe pass key is 54321. Remember it. 54321 is the pass key.\n\nWhat is the pass key?"),
            std::string::npos);
  // The filler (300 chars) is all before the key line.
  EXPECT_EQ(s.size(), Build({.n_filler_chars = 300, .depth = 0.0, .passkey = 54321, .chat = 0}).size());
}

TEST(PkPrompt, LengthGrowsOneByteAFillerChar) {
  pk_prompt_params_t p = {.n_filler_chars = 1000, .depth = 0.4, .passkey = 10000, .chat = 0};
  size_t a = Build(p).size();
  p.n_filler_chars = 1001;
  EXPECT_EQ(Build(p).size(), a + 1);
}

TEST(PkPrompt, ChatWrapsTheBodyAndOpensTheAnswer) {
  pk_prompt_params_t p = {.n_filler_chars = 100, .depth = 0.5, .passkey = 77777, .chat = 1};
  const std::string s = Build(p);
  EXPECT_EQ(s.rfind("<|im_start|>system\n", 0), 0u);
  EXPECT_NE(s.find("<|im_start|>user\n" + kTask + "\n"), std::string::npos);
  const std::string tail = "\nWhat is the pass key?<|im_end|>\n<|im_start|>assistant\nThe pass key is";
  ASSERT_GE(s.size(), tail.size());
  EXPECT_EQ(s.substr(s.size() - tail.size()), tail);
}

TEST(PkPrompt, SmallBufferIsRangeWithTheNeededLength) {
  for (int chat = 0; chat < 2; chat++) {
    pk_prompt_params_t p = {.n_filler_chars = 50, .depth = 0.5, .passkey = 11111, .chat = chat};
    const std::string s = Build(p);
    char buf[16];
    size_t n = 0;
    ak_err_t err;
    EXPECT_EQ(pk_prompt_build(&p, buf, sizeof buf, &n, &err), AK_ERR_RANGE);
    EXPECT_EQ(n, s.size());
    std::string exact(s.size(), '\0');  // no room for the NUL
    EXPECT_EQ(pk_prompt_build(&p, exact.data(), exact.size(), &n, &err), AK_ERR_RANGE);
  }
}

TEST(PkPrompt, BadParamsAreRefusedWithAMessage) {
  char buf[64];
  size_t n = 0;
  ak_err_t err;
  pk_prompt_params_t p = {.n_filler_chars = -1, .depth = 0.5, .passkey = 1, .chat = 0};
  EXPECT_EQ(pk_prompt_build(&p, buf, sizeof buf, &n, &err), AK_ERR_INVALID_ARG);
  EXPECT_NE(std::string(err.msg).find("n_filler_chars"), std::string::npos);
  p = {.n_filler_chars = 1, .depth = 1.5, .passkey = 1, .chat = 0};
  EXPECT_EQ(pk_prompt_build(&p, buf, sizeof buf, &n, &err), AK_ERR_INVALID_ARG);
  EXPECT_NE(std::string(err.msg).find("depth"), std::string::npos);
  p = {.n_filler_chars = 1, .depth = 0.5, .passkey = 100000, .chat = 0};
  EXPECT_EQ(pk_prompt_build(&p, buf, sizeof buf, &n, &err), AK_ERR_INVALID_ARG);
  EXPECT_NE(std::string(err.msg).find("passkey"), std::string::npos);
}

TEST(PkPasskey, FiveDigitsDeterministicAndVaried) {
  std::set<int32_t> seen;
  for (int32_t c = 0; c < 3; c++)
    for (int32_t d = 0; d < 20; d++) {
      int32_t k = pk_passkey(42, c, d);
      EXPECT_GE(k, 10000);
      EXPECT_LE(k, 99999);
      EXPECT_EQ(k, pk_passkey(42, c, d));
      seen.insert(k);
    }
  EXPECT_GE(seen.size(), 55u);
  EXPECT_NE(pk_passkey(42, 0, 0), pk_passkey(43, 0, 0));
}

TEST(PkScore, WholeNumberAnywhereInTheAnswer) {
  auto ok = [](const char *s, int32_t k) { return pk_answer_correct(s, strlen(s), k); };
  EXPECT_TRUE(ok(" 47317.", 47317));
  EXPECT_TRUE(ok("47317", 47317));
  EXPECT_TRUE(ok(" is 47317. Remember", 47317));
  EXPECT_FALSE(ok(" 4731", 47317));
  EXPECT_FALSE(ok(" 473170", 47317));
  EXPECT_FALSE(ok(" 147317", 47317));
  EXPECT_FALSE(ok(" 4 7 3 1 7", 47317));
  EXPECT_FALSE(ok("", 47317));
  EXPECT_TRUE(ok("1 47317", 47317));
}

}  // namespace
