// Tests for coordinator/co_stop.c: stop strings across deltas, hold-back, flush.
#include <gtest/gtest.h>

#include <string>
#include <vector>

extern "C" {
#include "ak_alloc.h"
#include "co_stop.h"
}

namespace {
// Feeds deltas; returns everything emitted (plus the flush when not stopped).
std::string feed(const std::vector<const char *> &stops, const std::vector<std::string> &deltas, int *stopped_p,
                 std::vector<std::string> *per_push = nullptr) {
  co_stop_t *s = nullptr;
  EXPECT_EQ(co_stop_create(stops.data(), (int)stops.size(), nullptr, &s), AK_OK);
  std::string out;
  int stopped = 0;
  for (const auto &d : deltas) {
    const char *e;
    size_t n;
    EXPECT_EQ(co_stop_push(s, d.data(), d.size(), &e, &n, &stopped), AK_OK);
    out.append(e, n);
    if (per_push) per_push->push_back(std::string(e, n));
  }
  if (!stopped) {
    const char *e;
    size_t n;
    co_stop_flush(s, &e, &n);
    out.append(e, n);
  }
  co_stop_destroy(s);
  *stopped_p = stopped;
  return out;
}
}  // namespace

TEST(CoStop, MatchAcrossDeltasCutsBeforeStop) {
  int stopped = 0;
  std::vector<std::string> pushes;
  EXPECT_EQ(feed({"\nUser:"}, {"Hello", " world\nUs", "er: more"}, &stopped, &pushes), "Hello world");
  EXPECT_EQ(stopped, 1);
  ASSERT_EQ(pushes.size(), 3u);
  EXPECT_EQ(pushes[0], "Hello");
  EXPECT_EQ(pushes[1], " world");  // "\nUs" held back: it may start the stop string
}

TEST(CoStop, FalseStartIsReleased) {
  int stopped = 0;
  // "EN" is held back until "ough" shows it was not the stop string.
  EXPECT_EQ(feed({"END"}, {"the EN", "ough, the END."}, &stopped), "the ENough, the ");
  EXPECT_EQ(stopped, 1);
  EXPECT_EQ(feed({"END"}, {"the EN", "ough"}, &stopped), "the ENough");
  EXPECT_EQ(stopped, 0);
}

TEST(CoStop, EarliestOfSeveralStopsWins) {
  int stopped = 0;
  EXPECT_EQ(feed({"bb", "a"}, {"xxbbya"}, &stopped), "xx");
  EXPECT_EQ(feed({"bb", "a"}, {"xxabb"}, &stopped), "xx");
}

TEST(CoStop, NoStopsPassesThrough) {
  int stopped = 0;
  EXPECT_EQ(feed({}, {"a", "b", ""}, &stopped), "ab");
  EXPECT_EQ(stopped, 0);
}

TEST(CoStop, AfterStopNothingMoreIsEmitted) {
  int stopped = 0;
  EXPECT_EQ(feed({"x"}, {"ax", "bbb"}, &stopped), "a");
}

TEST(CoStop, RejectsBadStops) {
  int64_t before = ak_alloc_outstanding_bytes(AK_MEM_HOST);
  co_stop_t *s = nullptr;
  ak_err_t err;
  const char *empty[] = {"ok", ""};
  EXPECT_EQ(co_stop_create(empty, 2, &err, &s), AK_ERR_INVALID_ARG);
  EXPECT_NE(std::string(err.msg).find("stop[1]"), std::string::npos);
  std::string big(300, 'x');
  const char *too_long[] = {big.c_str()};
  EXPECT_EQ(co_stop_create(too_long, 1, &err, &s), AK_ERR_INVALID_ARG);
  EXPECT_EQ(co_stop_create(nullptr, 17, &err, &s), AK_ERR_INVALID_ARG);
  EXPECT_EQ(s, nullptr);
  EXPECT_EQ(ak_alloc_outstanding_bytes(AK_MEM_HOST), before);
}
