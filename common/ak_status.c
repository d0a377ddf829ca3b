/* ak_status: names of statuses and the error message buffer. */
#include "ak_status.h"

#include <stdio.h>
#include <string.h>

const char *ak_status_str(ak_status_t st) {
  switch (st) {
    case AK_OK: return "AK_OK";
    case AK_AGAIN: return "AK_AGAIN";
    case AK_ERR_INVALID_ARG: return "AK_ERR_INVALID_ARG";
    case AK_ERR_NOT_FOUND: return "AK_ERR_NOT_FOUND";
    case AK_ERR_FORMAT: return "AK_ERR_FORMAT";
    case AK_ERR_UNSUPPORTED: return "AK_ERR_UNSUPPORTED";
    case AK_ERR_OVER_BUDGET: return "AK_ERR_OVER_BUDGET";
    case AK_ERR_POOL_FULL: return "AK_ERR_POOL_FULL";
    case AK_ERR_RANGE: return "AK_ERR_RANGE";
    case AK_ERR_CANCELLED: return "AK_ERR_CANCELLED";
    case AK_ERR_EXISTS: return "AK_ERR_EXISTS";
    case AK_ERR_PRECONDITION: return "AK_ERR_PRECONDITION";
    case AK_ERR_NO_MEMORY: return "AK_ERR_NO_MEMORY";
    case AK_ERR_IO: return "AK_ERR_IO";
    case AK_ERR_CUDA: return "AK_ERR_CUDA";
    case AK_ERR_INTERNAL: return "AK_ERR_INTERNAL";
    case AK_ERR_NO_DEVICE: return "AK_ERR_NO_DEVICE";
    case AK_ERR_PEER: return "AK_ERR_PEER";
    case AK_ERR_TIMEOUT: return "AK_ERR_TIMEOUT";
    case AK_ERR_CLUSTER: return "AK_ERR_CLUSTER";
  }
  return "AK_ERR_UNKNOWN";
}

ak_status_t ak_err_setv(ak_err_t *err, ak_status_t st, const char *fmt, va_list ap) {
  if (err) {
    err->status = st;
    vsnprintf(err->msg, sizeof err->msg, fmt, ap);
  }
  return st;
}

ak_status_t ak_err_set(ak_err_t *err, ak_status_t st, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  ak_err_setv(err, st, fmt, ap);
  va_end(ap);
  return st;
}

ak_status_t ak_err_set_fn(ak_err_t *err, ak_status_t st, const char *fn, const char *fmt, ...) {
  if (!err) return st;
  char body[AK_ERR_MSG_BYTES];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(body, sizeof body, fmt, ap);
  va_end(ap);
  err->status = st;
  /* Truncation is intended: the message is bounded. */
  int n = snprintf(err->msg, sizeof err->msg, "%s: ", fn);
  if (n < 0 || (size_t)n >= sizeof err->msg) n = 0;
  memcpy(err->msg + n, body, sizeof err->msg - (size_t)n - 1);
  err->msg[sizeof err->msg - 1] = '\0';
  return st;
}

void ak_err_clear(ak_err_t *err) {
  if (!err) return;
  err->status = AK_OK;
  err->msg[0] = '\0';
}
