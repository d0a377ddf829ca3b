/* ak_log: the log sink. */
#include "ak_log.h"

#include <stdarg.h>
#include <stdio.h>

static ak_log_sink_fn g_sink;
static void *g_sink_user;
static ak_log_level_t g_min_level = AK_LOG_INFO;

void ak_log_set_sink(ak_log_sink_fn fn, void *user, ak_log_level_t min_level) {
  g_sink = fn;
  g_sink_user = user;
  g_min_level = min_level;
}

void ak_log_write(ak_log_level_t level, const char *fn, const char *fmt, ...) {
  if (level < g_min_level) return;
  static const char *names[] = {"debug", "info", "warn", "error"};
  char body[1024], line[1200];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(body, sizeof body, fmt, ap);
  va_end(ap);
  snprintf(line, sizeof line, "arkvale %s %s: %s", names[level], fn, body);
  if (g_sink) {
    g_sink(level, line, g_sink_user);
  } else {
    fprintf(stderr, "%s\n", line);
  }
}
