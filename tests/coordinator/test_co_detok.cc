// Tests for coordinator/co_detok.c: the streaming decoder over SmolLM2's vocabulary.
// Token ids and their bytes come from llama-cpp-python 0.3.36 (tokenize/detokenize).
#include <gtest/gtest.h>

#include "tokenizer_fixture.h"

#include <memory>
#include <random>
#include <string>
#include <vector>

extern "C" {
#include "ak_alloc.h"
#include "ak_gguf.h"
#include "co_tokenizer.h"
}

namespace {

struct DetokDestroyer {
  void operator()(co_detok_t *d) const { co_detok_destroy(d); }
};
using DetokPtr = std::unique_ptr<co_detok_t, DetokDestroyer>;

class CoDetok : public ModelTokenizerTest {
 protected:
  static DetokPtr Make(int render_special) {
    ak_err_t err;
    co_detok_t *d = nullptr;
    EXPECT_EQ(co_detok_create(tok_, &err, &d), AK_OK) << err.msg;
    co_detok_render_special(d, render_special);
    return DetokPtr(d);
  }
  // What each push emitted, then what the flush emitted.
  static std::vector<std::string> Stream(co_detok_t *d, const std::vector<int32_t> &ids) {
    std::vector<std::string> out;
    for (int32_t id : ids) {
      const char *p;
      size_t n;
      EXPECT_EQ(co_detok_push(d, id, &p, &n), AK_OK) << co_detok_errmsg(d);
      out.emplace_back(p, n);
    }
    const char *p;
    size_t n;
    co_detok_flush(d, &p, &n);
    out.emplace_back(p, n);
    return out;
  }
  static std::vector<int32_t> Encode(const std::string &s) {
    std::vector<int32_t> ids(s.size() + 8);
    int64_t n = 0;
    ak_err_t err;
    EXPECT_EQ(co_tokenizer_encode(tok_, s.data(), s.size(), 0, 0, ids.data(), (int64_t)ids.size(), &n, &err), AK_OK);
    ids.resize((size_t)n);
    return ids;
  }
  static bool ValidUtf8(const std::string &s) {
    for (size_t i = 0; i < s.size();) {
      unsigned char b = (unsigned char)s[i];
      size_t len = b < 0x80 ? 1 : (b >> 5) == 6 ? 2 : (b >> 4) == 14 ? 3 : (b >> 3) == 30 ? 4 : 0;
      if (!len || i + len > s.size()) return false;
      for (size_t k = 1; k < len; k++)
        if (((unsigned char)s[i + k] & 0xC0) != 0x80) return false;
      i += len;
    }
    return true;
  }

};

const std::string kFffd = "\xef\xbf\xbd";

TEST_F(CoDetok, HoldsAnEmojiUntilItsLastByte) {
  // U+1F600 is three tokens: f0 9f | 98 | 80
  DetokPtr d = Make(0);
  EXPECT_EQ(Stream(d.get(), {10813, 242, 218}), (std::vector<std::string>{"", "", "\xf0\x9f\x98\x80", ""}));
  // " ok 👨" ...: text before a split character goes out at once
  EXPECT_EQ(Stream(d.get(), {10907, 15107, 235, 118}),
            (std::vector<std::string>{" ok", " ", "", "\xf0\x9f\x91\xa8", ""}));
}

TEST_F(CoDetok, StreamEqualsWholeText) {
  const std::string text =
      "Mixed \xe6\x97\xa5\xe6\x9c\xac\xe8\xaa\x9e ok \xf0\x9f\x91\xa8\xe2\x80\x8d\xf0\x9f\x91\xa9\xe2\x80\x8d"
      "\xf0\x9f\x91\xa7 and \xf0\x9f\x87\xab\xf0\x9f\x87\xb7 caf\xc3\xa9 \xe4\xbd\xa0\xe5\xa5\xbd!";
  DetokPtr d = Make(0);
  std::string all;
  for (const std::string &piece : Stream(d.get(), Encode(text))) {
    EXPECT_TRUE(ValidUtf8(piece));
    all += piece;
  }
  EXPECT_EQ(all, text);
}

TEST_F(CoDetok, FlushReplacesAnUnfinishedCharacter) {
  DetokPtr d = Make(0);
  // f0 9f then end of stream: one U+FFFD for the cut-off character
  EXPECT_EQ(Stream(d.get(), {10813}), (std::vector<std::string>{"", kFffd}));
  // after a flush the decoder starts afresh
  EXPECT_EQ(Stream(d.get(), {19556}), (std::vector<std::string>{"Hello", ""}));
}

TEST_F(CoDetok, ReplacesImpossibleBytesAtOnce) {
  DetokPtr d = Make(0);
  // 98 alone is a stray continuation byte; f0 9f then "Hello" can never complete
  EXPECT_EQ(Stream(d.get(), {242, 19556}), (std::vector<std::string>{kFffd, "Hello", ""}));
  EXPECT_EQ(Stream(d.get(), {10813, 19556}), (std::vector<std::string>{"", kFffd + "Hello", ""}));
}

TEST_F(CoDetok, ControlTokensOnlyWhenRendered) {
  DetokPtr quiet = Make(0), loud = Make(1);
  const std::vector<int32_t> ids = {1, 4093, 198, 6004, 2};
  std::string a, b;
  for (const std::string &s : Stream(quiet.get(), ids)) a += s;
  for (const std::string &s : Stream(loud.get(), ids)) b += s;
  EXPECT_EQ(a, "user\nhi");
  EXPECT_EQ(b, "<|im_start|>user\nhi<|im_end|>");
}

TEST_F(CoDetok, BadIdLeavesTheStateAlone) {
  DetokPtr d = Make(0);
  const char *p;
  size_t n;
  ASSERT_EQ(co_detok_push(d.get(), 10813, &p, &n), AK_OK);
  EXPECT_STREQ(co_detok_errmsg(d.get()), "");
  EXPECT_EQ(co_detok_push(d.get(), 49152, &p, &n), AK_ERR_RANGE);
  EXPECT_EQ(co_detok_push(d.get(), -3, &p, &n), AK_ERR_RANGE);
  EXPECT_NE(std::string(co_detok_errmsg(d.get())).find("-3"), std::string::npos) << co_detok_errmsg(d.get());
  ASSERT_EQ(co_detok_push(d.get(), 242, &p, &n), AK_OK);
  ASSERT_EQ(co_detok_push(d.get(), 218, &p, &n), AK_OK);
  EXPECT_EQ(std::string(p, n), "\xf0\x9f\x98\x80");
  co_detok_reset(d.get());
}

TEST_F(CoDetok, RandomIdsAlwaysGiveValidUtf8) {
  DetokPtr d = Make(1);
  std::mt19937 rng(99);
  const int64_t before = ak_alloc_outstanding_bytes(AK_MEM_HOST);
  for (int round = 0; round < 200; round++) {
    std::vector<int32_t> ids((size_t)(rng() % 12));
    for (int32_t &id : ids) id = (int32_t)(rng() % 49152);
    for (const std::string &piece : Stream(d.get(), ids)) ASSERT_TRUE(ValidUtf8(piece));
  }
  d.reset();
  // buffers grew inside the decoder and were returned with it
  EXPECT_LE(ak_alloc_outstanding_bytes(AK_MEM_HOST), before);
}

}  // namespace
