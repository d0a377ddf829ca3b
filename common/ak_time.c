/* ak_time: see ak_time.h. */
#include "ak_time.h"

struct timespec ak_time_realtime_after_ms(int64_t ms) {
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  if (ms < 0) ms = 0;
  int64_t ns = (int64_t)ts.tv_nsec + ms % 1000 * 1000000;
  ts.tv_sec += (time_t)(ms / 1000 + ns / 1000000000);
  ts.tv_nsec = (long)(ns % 1000000000);
  return ts;
}
