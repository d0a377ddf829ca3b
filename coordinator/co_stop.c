/* co_stop: incremental stop-string matching with hold-back. */
#include "co_stop.h"

#include <string.h>

#include "ak_alloc.h"

struct co_stop {
  int n_stops;
  char stops[CO_STOP_MAX_STRINGS][CO_STOP_MAX_BYTES];
  size_t stop_bytes[CO_STOP_MAX_STRINGS];
  int stopped;
  char *buf;       /* pending (held-back) text followed by the new delta */
  size_t buf_bytes;
  size_t buf_cap;
  char *out;       /* what the last call emitted */
  size_t out_cap;
};

ak_status_t co_stop_create(const char *const *stops, int n_stops, ak_err_t *err, co_stop_t **stop_p) {
  if (n_stops < 0 || n_stops > CO_STOP_MAX_STRINGS)
    return AK_ERR(err, AK_ERR_INVALID_ARG, "%d stop strings; at most %d allowed", n_stops, CO_STOP_MAX_STRINGS);
  if (n_stops > 0 && !stops) return AK_ERR(err, AK_ERR_INVALID_ARG, "stops is NULL");
  for (int i = 0; i < n_stops; i++) {
    size_t n = stops[i] ? strlen(stops[i]) : 0;
    if (n < 1 || n > CO_STOP_MAX_BYTES)
      return AK_ERR(err, AK_ERR_INVALID_ARG, "stop[%d] is %zu bytes; must be 1..%d", i, n, CO_STOP_MAX_BYTES);
  }
  co_stop_t *s = ak_host_alloc(sizeof *s, 1);
  if (!s) return AK_ERR(err, AK_ERR_NO_MEMORY, "stop matcher");
  s->n_stops = n_stops;
  for (int i = 0; i < n_stops; i++) {
    s->stop_bytes[i] = strlen(stops[i]);
    memcpy(s->stops[i], stops[i], s->stop_bytes[i]);
  }
  *stop_p = s;
  return AK_OK;
}

void co_stop_destroy(co_stop_t *s) {
  if (!s) return;
  ak_host_free(s->buf, s->buf_cap);
  ak_host_free(s->out, s->out_cap);
  ak_host_free(s, sizeof *s);
}

static ak_status_t co_stop_grow(char **p, size_t *cap, size_t need) {
  if (need <= *cap) return AK_OK;
  size_t n = *cap ? *cap : 256;
  while (n < need) n *= 2;
  char *q = ak_host_alloc(n, 0);
  if (!q) return AK_ERR_NO_MEMORY;
  if (*p) memcpy(q, *p, *cap);
  ak_host_free(*p, *cap);
  *p = q;
  *cap = n;
  return AK_OK;
}

/* Length of the longest suffix of buf[0, n) that is a proper prefix of a stop string. */
static size_t co_stop_holdback(const co_stop_t *s, const char *buf, size_t n) {
  size_t best = 0;
  for (int i = 0; i < s->n_stops; i++) {
    size_t m = s->stop_bytes[i] - 1 < n ? s->stop_bytes[i] - 1 : n;
    for (size_t k = m; k > best; k--)
      if (memcmp(buf + n - k, s->stops[i], k) == 0) {
        best = k;
        break;
      }
  }
  return best;
}

ak_status_t co_stop_push(co_stop_t *s, const char *text, size_t n_bytes, const char **emit_p,
                         size_t *emit_bytes_p, int *stopped_p) {
  *emit_p = "";
  *emit_bytes_p = 0;
  *stopped_p = s->stopped;
  if (s->stopped || n_bytes == 0) return AK_OK;
  if (co_stop_grow(&s->buf, &s->buf_cap, s->buf_bytes + n_bytes) < 0 ||
      co_stop_grow(&s->out, &s->out_cap, s->buf_bytes + n_bytes) < 0)
    return AK_ERR_NO_MEMORY;
  memcpy(s->buf + s->buf_bytes, text, n_bytes);
  s->buf_bytes += n_bytes;

  /* The earliest match of any stop string ends the stream there. */
  size_t cut = s->buf_bytes;
  for (int i = 0; i < s->n_stops; i++) {
    const char *hit = memmem(s->buf, s->buf_bytes, s->stops[i], s->stop_bytes[i]);
    if (hit && (size_t)(hit - s->buf) < cut) {
      cut = (size_t)(hit - s->buf);
      s->stopped = 1;
    }
  }
  size_t emit = s->stopped ? cut : s->buf_bytes - co_stop_holdback(s, s->buf, s->buf_bytes);
  memcpy(s->out, s->buf, emit);
  memmove(s->buf, s->buf + emit, s->buf_bytes - emit);
  s->buf_bytes = s->stopped ? 0 : s->buf_bytes - emit;
  *emit_p = s->out;
  *emit_bytes_p = emit;
  *stopped_p = s->stopped;
  return AK_OK;
}

void co_stop_flush(co_stop_t *s, const char **emit_p, size_t *emit_bytes_p) {
  *emit_p = "";
  *emit_bytes_p = 0;
  if (s->stopped || s->buf_bytes == 0) return;
  if (co_stop_grow(&s->out, &s->out_cap, s->buf_bytes) < 0) return;
  memcpy(s->out, s->buf, s->buf_bytes);
  *emit_p = s->out;
  *emit_bytes_p = s->buf_bytes;
  s->buf_bytes = 0;
}
