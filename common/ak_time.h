/* ak_time: the absolute CLOCK_REALTIME time a pthread_cond_timedwait waits until, a
 * number of milliseconds from now (the wait every service loop, drain and watchdog
 * makes). */
#ifndef AK_TIME_H
#define AK_TIME_H

#include <stdint.h>
#include <time.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Now + ms on CLOCK_REALTIME (the clock pthread_cond_timedwait reads by default);
 * ms < 0 counts as 0. */
struct timespec ak_time_realtime_after_ms(int64_t ms);

#ifdef __cplusplus
}
#endif
#endif
