// Tests for common/ak_threadpool.c: every thread runs once per job, splits cover
// the range exactly, and back-to-back jobs (the decode pattern) never lose a thread.
#include <gtest/gtest.h>

#include <atomic>
#include <vector>

extern "C" {
#include "ak_threadpool.h"
}

struct Job {
  std::vector<std::atomic<int>> *hits;
  int64_t n;
};

static void mark(void *ctx, int t, int nt) {
  Job *j = static_cast<Job *>(ctx);
  int64_t b, e;
  ak_pool_split(j->n, t, nt, 1, &b, &e);
  for (int64_t i = b; i < e; i++) (*j->hits)[i]++;
}

TEST(AkThreadpool, EveryIndexOnceAcrossManyJobs) {
  for (int nt : {1, 2, 3, 7}) {
    ak_pool_t *pool = nullptr;
    ASSERT_EQ(ak_pool_create(nt, nullptr, &pool), AK_OK);
    EXPECT_EQ(ak_pool_n_threads(pool), nt);
    const int64_t n = 1001;
    std::vector<std::atomic<int>> hits(n);
    Job j{&hits, n};
    for (int rep = 0; rep < 500; rep++) ak_pool_run(pool, mark, &j);
    for (int64_t i = 0; i < n; i++) ASSERT_EQ(hits[i].load(), 500) << "index " << i << " threads " << nt;
    ak_pool_destroy(pool);
  }
}

TEST(AkThreadpool, SplitAlignsAndCovers) {
  for (int64_t n : {0, 1, 17, 64, 100}) {
    int64_t covered = 0, prev_end = 0;
    for (int t = 0; t < 3; t++) {
      int64_t b, e;
      ak_pool_split(n, t, 3, 16, &b, &e);
      EXPECT_EQ(b, prev_end);
      if (e < n) EXPECT_EQ(e % 16, 0);
      covered += e - b;
      prev_end = e;
    }
    EXPECT_EQ(covered, n);
  }
}

TEST(AkThreadpool, RejectsBadThreadCount) {
  ak_pool_t *pool = nullptr;
  ak_err_t err;
  EXPECT_EQ(ak_pool_create(-1, &err, &pool), AK_ERR_INVALID_ARG);
  EXPECT_EQ(pool, nullptr);
}
