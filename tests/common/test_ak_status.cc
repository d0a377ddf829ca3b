// Tests for common/ak_status.c and common/ak_log.c: names, message formatting, log capture.
#include <gtest/gtest.h>

#include <string>
#include <vector>

extern "C" {
#include "ak_alloc.h"
#include "ak_log.h"
#include "ak_status.h"
}

TEST(AkStatus, NamesEveryCode) {
  EXPECT_STREQ(ak_status_str(AK_OK), "AK_OK");
  EXPECT_STREQ(ak_status_str(AK_ERR_FORMAT), "AK_ERR_FORMAT");
  EXPECT_STREQ(ak_status_str(AK_ERR_POOL_FULL), "AK_ERR_POOL_FULL");
  EXPECT_STREQ(ak_status_str(AK_ERR_CANCELLED), "AK_ERR_CANCELLED");
  EXPECT_STREQ(ak_status_str(AK_ERR_EXISTS), "AK_ERR_EXISTS");
  EXPECT_STREQ(ak_status_str(AK_ERR_PRECONDITION), "AK_ERR_PRECONDITION");
  // existing values keep their numbers (they cross process boundaries in logs)
  EXPECT_EQ((int)AK_ERR_RANGE, -106);
  EXPECT_EQ((int)AK_ERR_CANCELLED, -107);
  EXPECT_EQ((int)AK_ERR_NO_MEMORY, -200);
  EXPECT_EQ((int)AK_ERR_TIMEOUT, -301);
  EXPECT_STREQ(ak_status_str((ak_status_t)-12345), "AK_ERR_UNKNOWN");
}

TEST(AkStatus, ErrSetFormatsAndReturnsStatus) {
  ak_err_t err;
  ak_err_clear(&err);
  EXPECT_EQ(err.msg[0], '\0');
  EXPECT_EQ(AK_ERR(&err, AK_ERR_RANGE, "index %d of %d", 7, 3), AK_ERR_RANGE);
  EXPECT_EQ(err.status, AK_ERR_RANGE);
  EXPECT_NE(std::string(err.msg).find("index 7 of 3"), std::string::npos);
  EXPECT_NE(std::string(err.msg).find(__func__), std::string::npos);
  // A NULL buffer is allowed and only returns the status.
  EXPECT_EQ(ak_err_set(nullptr, AK_ERR_IO, "x"), AK_ERR_IO);
}

TEST(AkStatus, LongMessagesAreTruncatedNotOverflowed) {
  ak_err_t err;
  std::string big(4000, 'x');
  ak_err_set(&err, AK_ERR_FORMAT, "%s", big.c_str());
  EXPECT_EQ(strlen(err.msg), (size_t)AK_ERR_MSG_BYTES - 1);
}

static void capture(ak_log_level_t, const char *line, void *user) {
  static_cast<std::vector<std::string> *>(user)->push_back(line);
}

TEST(AkLog, SinkCapturesAboveMinLevel) {
  std::vector<std::string> lines;
  ak_log_set_sink(capture, &lines, AK_LOG_WARN);
  AK_LOG_INFO("hidden %d", 1);
  AK_LOG_ERROR("shown %d", 2);
  ak_log_set_sink(nullptr, nullptr, AK_LOG_INFO);
  ASSERT_EQ(lines.size(), 1u);
  EXPECT_NE(lines[0].find("shown 2"), std::string::npos);
  EXPECT_NE(lines[0].find("error"), std::string::npos);
}

TEST(AkAlloc, AccountsAndFailsOnDemand) {
  int64_t before = ak_alloc_outstanding_bytes(AK_MEM_HOST);
  void *p = ak_host_alloc(1000, 1);
  ASSERT_NE(p, nullptr);
  EXPECT_EQ((uintptr_t)p % 64, 0u);
  EXPECT_EQ(ak_alloc_outstanding_bytes(AK_MEM_HOST), before + 1000);
  ak_host_free(p, 1000);
  EXPECT_EQ(ak_alloc_outstanding_bytes(AK_MEM_HOST), before);
  ak_alloc_fail_after(2);
  void *a = ak_host_alloc(8, 0);
  void *b = ak_host_alloc(8, 0);
  void *c = ak_host_alloc(8, 0);
  EXPECT_NE(a, nullptr);
  EXPECT_EQ(b, nullptr);
  EXPECT_NE(c, nullptr);
  ak_host_free(a, 8);
  ak_host_free(c, 8);
  EXPECT_EQ(ak_alloc_outstanding_bytes(AK_MEM_HOST), before);
}
