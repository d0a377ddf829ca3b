// Tests for coordinator/co_metrics.c and co_metrics_http.c: registration rules, update
// semantics per kind, the exact Prometheus text (HELP/TYPE, label escaping, cumulative
// histogram buckets with +Inf, _sum, _count), the series limit, concurrent updates,
// and the HTTP endpoint (200 on /metrics, 404 elsewhere, 405 for POST) over loopback.
#include <gtest/gtest.h>

#include <arpa/inet.h>
#include <cmath>
#include <netinet/in.h>
#include <string>
#include <sys/socket.h>
#include <thread>
#include <unistd.h>
#include <vector>

extern "C" {
#include "co_metrics.h"
#include "co_metrics_http.h"
}

namespace {
struct Reg {
  co_metrics_t *m = nullptr;
  explicit Reg(int32_t max_series = 64) {
    ak_err_t err;
    EXPECT_EQ(co_metrics_create(max_series, &err, &m), AK_OK) << err.msg;
  }
  ~Reg() { co_metrics_destroy(m); }
  std::string text() {
    char *t = nullptr;
    size_t n = 0;
    ak_err_t err;
    EXPECT_EQ(co_metrics_render(m, &err, &t, &n), AK_OK) << err.msg;
    std::string s(t, n);
    EXPECT_EQ(s.size(), strlen(t));
    co_metrics_text_free(t);
    return s;
  }
};

// The status code of an HTTP response ("HTTP/1.x NNN ..."), or -1.
int status_of(const std::string &resp) {
  if (resp.rfind("HTTP/1.", 0) != 0 || resp.size() < 12) return -1;
  return std::stoi(resp.substr(9, 3));
}

// One HTTP/1.0 request over loopback; returns the whole response.
std::string http(uint16_t port, const std::string &request) {
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  EXPECT_GE(fd, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_port = htons(port);
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  EXPECT_EQ(connect(fd, (sockaddr *)&a, sizeof a), 0);
  EXPECT_EQ(write(fd, request.data(), request.size()), (ssize_t)request.size());
  std::string out;
  char buf[4096];
  ssize_t n;
  while ((n = read(fd, buf, sizeof buf)) > 0) out.append(buf, (size_t)n);
  close(fd);
  return out;
}
}  // namespace

TEST(CoMetrics, RendersCountersAndGaugesWithEscapedLabels) {
  Reg r;
  ak_err_t err;
  int32_t req = -1, q = -1;
  const char *lab[] = {"status", "group"};
  ASSERT_EQ(co_metrics_family(r.m, "arkvale_requests_total", "Requests by final status.", CO_METRIC_COUNTER, lab, 2,
                              nullptr, 0, &err, &req), AK_OK) << err.msg;
  ASSERT_EQ(co_metrics_family(r.m, "arkvale_queue_depth", "Requests waiting.\nSecond line \\ end.", CO_METRIC_GAUGE,
                              nullptr, 0, nullptr, 0, &err, &q), AK_OK);
  const char *ok[] = {"OK", "0"}, *weird[] = {"a\"b\\c\nd", "1"};
  ASSERT_EQ(co_metrics_inc(r.m, req, ok, 1, &err), AK_OK);
  ASSERT_EQ(co_metrics_inc(r.m, req, ok, 2, &err), AK_OK);
  ASSERT_EQ(co_metrics_inc(r.m, req, weird, 1, &err), AK_OK);
  ASSERT_EQ(co_metrics_set(r.m, q, nullptr, 7, &err), AK_OK);
  ASSERT_EQ(co_metrics_set(r.m, q, nullptr, 4.5, &err), AK_OK);
  EXPECT_EQ(r.text(),
            "# HELP arkvale_requests_total Requests by final status.\n"
            "# TYPE arkvale_requests_total counter\n"
            "arkvale_requests_total{status=\"OK\",group=\"0\"} 3\n"
            "arkvale_requests_total{status=\"a\\\"b\\\\c\\nd\",group=\"1\"} 1\n"
            "# HELP arkvale_queue_depth Requests waiting.\\nSecond line \\\\ end.\n"
            "# TYPE arkvale_queue_depth gauge\n"
            "arkvale_queue_depth 4.5\n");
  double v = 0;
  ASSERT_EQ(co_metrics_value(r.m, req, ok, &v, &err), AK_OK);
  EXPECT_EQ(v, 3.0);
  const char *none[] = {"CANCELLED", "0"};
  EXPECT_EQ(co_metrics_value(r.m, req, none, &v, &err), AK_ERR_NOT_FOUND);
}

TEST(CoMetrics, HistogramBucketsAreCumulativeWithInfSumAndCount) {
  Reg r;
  ak_err_t err;
  int32_t h = -1;
  const double bounds[] = {0.005, 0.1, 1};
  const char *lab[] = {"group"};
  ASSERT_EQ(co_metrics_family(r.m, "arkvale_ttft_seconds", "Time to first token.", CO_METRIC_HISTOGRAM, lab, 1,
                              bounds, 3, &err, &h), AK_OK) << err.msg;
  const char *g0[] = {"0"};
  // binary fractions, so the sum prints exactly; 2^-8 < 0.005 lands in the first bucket
  for (double x : {0.0009765625, 0.00390625, 0.0625, 0.5, 3.0, 7.0})
    ASSERT_EQ(co_metrics_observe(r.m, h, g0, x, &err), AK_OK);
  EXPECT_EQ(r.text(),
            "# HELP arkvale_ttft_seconds Time to first token.\n"
            "# TYPE arkvale_ttft_seconds histogram\n"
            "arkvale_ttft_seconds_bucket{group=\"0\",le=\"0.005\"} 2\n"
            "arkvale_ttft_seconds_bucket{group=\"0\",le=\"0.1\"} 3\n"
            "arkvale_ttft_seconds_bucket{group=\"0\",le=\"1\"} 4\n"
            "arkvale_ttft_seconds_bucket{group=\"0\",le=\"+Inf\"} 6\n"
            "arkvale_ttft_seconds_sum{group=\"0\"} 10.5673828125\n"
            "arkvale_ttft_seconds_count{group=\"0\"} 6\n");
  const char *g1[] = {"1"};
  ASSERT_EQ(co_metrics_observe(r.m, h, g1, 1.0, &err), AK_OK);  // le is inclusive: 1 <= 1
  EXPECT_NE(r.text().find("arkvale_ttft_seconds_bucket{group=\"1\",le=\"1\"} 1\n"), std::string::npos);
  double n = 0;
  ASSERT_EQ(co_metrics_value(r.m, h, g0, &n, &err), AK_OK);
  EXPECT_EQ(n, 6.0);
}

TEST(CoMetrics, RefusesBadNamesKindsAndValues) {
  Reg r;
  ak_err_t err;
  int32_t id = -1;
  EXPECT_EQ(co_metrics_family(r.m, "9bad", "", CO_METRIC_COUNTER, nullptr, 0, nullptr, 0, &err, &id),
            AK_ERR_INVALID_ARG);
  EXPECT_NE(std::string(err.msg).find("9bad"), std::string::npos) << err.msg;
  EXPECT_EQ(co_metrics_family(r.m, "a-b", "", CO_METRIC_COUNTER, nullptr, 0, nullptr, 0, &err, &id),
            AK_ERR_INVALID_ARG);
  const char *reserved[] = {"__x"}, *colon[] = {"a:b"}, *twice[] = {"a", "a"}, *le[] = {"le"};
  EXPECT_EQ(co_metrics_family(r.m, "m1", "", CO_METRIC_GAUGE, reserved, 1, nullptr, 0, &err, &id), AK_ERR_INVALID_ARG);
  EXPECT_EQ(co_metrics_family(r.m, "m1", "", CO_METRIC_GAUGE, colon, 1, nullptr, 0, &err, &id), AK_ERR_INVALID_ARG);
  EXPECT_EQ(co_metrics_family(r.m, "m1", "", CO_METRIC_GAUGE, twice, 2, nullptr, 0, &err, &id), AK_ERR_INVALID_ARG);
  const double b1[] = {1}, bad_order[] = {1, 1}, inf[] = {INFINITY};
  EXPECT_EQ(co_metrics_family(r.m, "h1", "", CO_METRIC_HISTOGRAM, le, 1, b1, 1, &err, &id), AK_ERR_INVALID_ARG);
  EXPECT_EQ(co_metrics_family(r.m, "h1", "", CO_METRIC_HISTOGRAM, nullptr, 0, bad_order, 2, &err, &id),
            AK_ERR_INVALID_ARG);
  EXPECT_EQ(co_metrics_family(r.m, "h1", "", CO_METRIC_HISTOGRAM, nullptr, 0, inf, 1, &err, &id), AK_ERR_INVALID_ARG);
  EXPECT_EQ(co_metrics_family(r.m, "h1", "", CO_METRIC_HISTOGRAM, nullptr, 0, nullptr, 0, &err, &id),
            AK_ERR_INVALID_ARG);
  EXPECT_EQ(co_metrics_family(r.m, "g1", "", CO_METRIC_GAUGE, nullptr, 0, b1, 1, &err, &id), AK_ERR_INVALID_ARG);
  int32_t c = -1, g = -1, h = -1;
  const char *one[] = {"k"};
  ASSERT_EQ(co_metrics_family(r.m, "c_total", "", CO_METRIC_COUNTER, one, 1, nullptr, 0, &err, &c), AK_OK);
  EXPECT_EQ(co_metrics_family(r.m, "c_total", "", CO_METRIC_GAUGE, nullptr, 0, nullptr, 0, &err, &id),
            AK_ERR_INVALID_ARG);  // twice
  ASSERT_EQ(co_metrics_family(r.m, "g", "", CO_METRIC_GAUGE, nullptr, 0, nullptr, 0, &err, &g), AK_OK);
  ASSERT_EQ(co_metrics_family(r.m, "h", "", CO_METRIC_HISTOGRAM, nullptr, 0, b1, 1, &err, &h), AK_OK);
  const char *v[] = {"x"};
  EXPECT_EQ(co_metrics_inc(r.m, c, v, -1, &err), AK_ERR_INVALID_ARG);  // counters only go up
  EXPECT_EQ(co_metrics_inc(r.m, c, v, NAN, &err), AK_ERR_INVALID_ARG);
  EXPECT_EQ(co_metrics_inc(r.m, c, nullptr, 1, &err), AK_ERR_INVALID_ARG);  // label without a value
  EXPECT_EQ(co_metrics_set(r.m, c, v, 1, &err), AK_ERR_INVALID_ARG);       // set is for gauges
  EXPECT_EQ(co_metrics_observe(r.m, g, nullptr, 1, &err), AK_ERR_INVALID_ARG);
  EXPECT_EQ(co_metrics_inc(r.m, h, nullptr, 1, &err), AK_ERR_INVALID_ARG);
  EXPECT_EQ(co_metrics_inc(r.m, 99, nullptr, 1, &err), AK_ERR_RANGE);
  EXPECT_EQ(co_metrics_inc(r.m, g, nullptr, -2.5, &err), AK_OK);  // gauges may go down
  // nothing refused left a series behind
  EXPECT_EQ(r.text(), "# HELP c_total \n# TYPE c_total counter\n# HELP g \n# TYPE g gauge\ng -2.5\n"
                      "# HELP h \n# TYPE h histogram\n");
}

TEST(CoMetrics, SeriesLimitHoldsAgainstUnboundedLabels) {
  Reg r(3);
  ak_err_t err;
  int32_t c = -1;
  const char *lab[] = {"client"};
  ASSERT_EQ(co_metrics_family(r.m, "x_total", "", CO_METRIC_COUNTER, lab, 1, nullptr, 0, &err, &c), AK_OK);
  for (int i = 0; i < 3; i++) {
    std::string s = std::to_string(i);
    const char *v[] = {s.c_str()};
    ASSERT_EQ(co_metrics_inc(r.m, c, v, 1, &err), AK_OK);
  }
  const char *v4[] = {"3"}, *v0[] = {"0"};
  EXPECT_EQ(co_metrics_inc(r.m, c, v4, 1, &err), AK_ERR_OVER_BUDGET);
  EXPECT_NE(std::string(err.msg).find("3 series"), std::string::npos) << err.msg;
  EXPECT_EQ(co_metrics_inc(r.m, c, v0, 1, &err), AK_OK);  // existing series still update
}

TEST(CoMetrics, ConcurrentUpdatesAreAllCounted) {
  Reg r;
  ak_err_t err;
  int32_t c = -1, h = -1;
  const double b[] = {0.5};
  ASSERT_EQ(co_metrics_family(r.m, "n_total", "", CO_METRIC_COUNTER, nullptr, 0, nullptr, 0, &err, &c), AK_OK);
  ASSERT_EQ(co_metrics_family(r.m, "lat", "", CO_METRIC_HISTOGRAM, nullptr, 0, b, 1, &err, &h), AK_OK);
  std::vector<std::thread> ts;
  for (int t = 0; t < 8; t++)
    ts.emplace_back([&r, c, h, t] {
      ak_err_t e;
      for (int i = 0; i < 5000; i++) {
        co_metrics_inc(r.m, c, nullptr, 1, &e);
        co_metrics_observe(r.m, h, nullptr, (t + i) % 2 ? 1.0 : 0.25, &e);
        if (i % 1000 == 0) {
          char *txt = nullptr;
          size_t n = 0;
          co_metrics_render(r.m, &e, &txt, &n);
          co_metrics_text_free(txt);
        }
      }
    });
  for (auto &t : ts) t.join();
  double v = 0;
  ASSERT_EQ(co_metrics_value(r.m, c, nullptr, &v, &err), AK_OK);
  EXPECT_EQ(v, 40000.0);
  ASSERT_EQ(co_metrics_value(r.m, h, nullptr, &v, &err), AK_OK);
  EXPECT_EQ(v, 40000.0);
  EXPECT_NE(r.text().find("lat_bucket{le=\"0.5\"} 20000\n"), std::string::npos);
}

TEST(CoMetricsHttp, ServesMetricsOnLoopback) {
  Reg r;
  ak_err_t err;
  int32_t c = -1;
  ASSERT_EQ(co_metrics_family(r.m, "up_total", "Up.", CO_METRIC_COUNTER, nullptr, 0, nullptr, 0, &err, &c), AK_OK);
  ASSERT_EQ(co_metrics_inc(r.m, c, nullptr, 5, &err), AK_OK);
  co_metrics_http_t *h = nullptr;
  ASSERT_EQ(co_metrics_http_start(r.m, "127.0.0.1", 0, &err, &h), AK_OK) << err.msg;
  uint16_t port = co_metrics_http_port(h);
  ASSERT_NE(port, 0);
  std::string ok = http(port, "GET /metrics HTTP/1.0\r\n\r\n");
  EXPECT_EQ(status_of(ok), 200) << ok;
  EXPECT_NE(ok.find("text/plain; version=0.0.4"), std::string::npos) << ok;
  EXPECT_NE(ok.find("\r\n\r\n# HELP up_total Up.\n# TYPE up_total counter\nup_total 5\n"), std::string::npos) << ok;
  ASSERT_EQ(co_metrics_inc(r.m, c, nullptr, 1, &err), AK_OK);  // a fresh snapshot per request
  EXPECT_NE(http(port, "GET /metrics HTTP/1.0\r\n\r\n").find("up_total 6\n"), std::string::npos);
  EXPECT_EQ(status_of(http(port, "GET /other HTTP/1.0\r\n\r\n")), 404);
  EXPECT_EQ(status_of(http(port, "POST /metrics HTTP/1.0\r\nContent-Length: 3\r\n\r\nabc")), 405);
  EXPECT_EQ(status_of(http(port, "POST /metrics HTTP/1.0\r\n\r\n")), 405);
  // the port is taken while it runs
  co_metrics_http_t *h2 = nullptr;
  EXPECT_EQ(co_metrics_http_start(r.m, "127.0.0.1", port, &err, &h2), AK_ERR_IO);
  EXPECT_EQ(co_metrics_http_start(r.m, "localhost", 0, &err, &h2), AK_ERR_INVALID_ARG);
  co_metrics_http_stop(h);
  co_metrics_http_stop(nullptr);
}
