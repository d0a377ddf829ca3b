/* arkvale_args: strict number parsing for the command line, and a clock. */
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#include "arkvale_cli.h"

int ak_cli_parse_i64(const char *flag, const char *s, int64_t lo, int64_t hi, int64_t *out_p) {
  char *end = NULL;
  errno = 0;
  long long v = s ? strtoll(s, &end, 10) : 0;
  if (!s || *s == '\0' || *end != '\0' || errno != 0 || v < lo || v > hi) {
    fprintf(stderr, "arkvale: %s expects an integer in [%lld, %lld], got '%s'\n", flag, (long long)lo,
            (long long)hi, s ? s : "(nothing)");
    return -1;
  }
  *out_p = v;
  return 0;
}

int ak_cli_parse_f32(const char *flag, const char *s, float lo, float hi, float *out_p) {
  char *end = NULL;
  errno = 0;
  float v = s ? strtof(s, &end) : 0;
  if (!s || *s == '\0' || *end != '\0' || errno != 0 || !isfinite(v) || v < lo || v > hi) {
    fprintf(stderr, "arkvale: %s expects a number in [%g, %g], got '%s'\n", flag, lo, hi, s ? s : "(nothing)");
    return -1;
  }
  *out_p = v;
  return 0;
}

double ak_cli_now_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}
