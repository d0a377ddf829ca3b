/* ak_status: the one status type of arkvale, and the error message that goes with it.
 *
 * 0 is OK, positive means "not yet, call again", negative codes are grouped by how much
 * failed (the blast radius, as UCX's ucs_status_t): the request (-1xx), the worker
 * process (-2xx), a peer (-3xx), the cluster (-4xx). Exactly one function (in proto
 * helpers, later) maps statuses to gRPC codes.
 *
 * Errors carry a message: fallible functions that have no handle yet (create, open)
 * take an `ak_err_t *` (may be NULL) and write a message naming what is wrong; handles
 * keep their own last error. Not for: logging (see ak_log.h). */
#ifndef AK_STATUS_H
#define AK_STATUS_H

#include <stdarg.h>
#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef enum {
  AK_OK = 0,
  AK_AGAIN = 1, /* not yet: call again */

  /* the request failed; the process is fine */
  AK_ERR_INVALID_ARG = -100, /* a value out of range, a malformed input */
  AK_ERR_NOT_FOUND = -101,   /* a named thing (file, tensor, key, sequence) is absent */
  AK_ERR_FORMAT = -102,      /* a file or message is malformed, truncated or hostile */
  AK_ERR_UNSUPPORTED = -103, /* valid but not implemented (a tensor type, an architecture) */
  AK_ERR_OVER_BUDGET = -104, /* a request asks for more than its limits allow */
  AK_ERR_POOL_FULL = -105,   /* no free KV pages now: the scheduler may retry later */
  AK_ERR_RANGE = -106,       /* an index or length outside what exists */
  AK_ERR_CANCELLED = -107,   /* the request was aborted, or its client went away */
  AK_ERR_EXISTS = -108,      /* a named thing (request id, sequence) already exists */
  AK_ERR_PRECONDITION = -109, /* well formed, but not in the current state (a stale
                               * step_id, a call out of order): do not retry as is */

  /* the worker process failed */
  AK_ERR_NO_MEMORY = -200,
  AK_ERR_IO = -201,
  AK_ERR_CUDA = -202,
  AK_ERR_INTERNAL = -203, /* a bug: an invariant did not hold */
  AK_ERR_NO_DEVICE = -204,

  /* a peer failed */
  AK_ERR_PEER = -300,
  AK_ERR_TIMEOUT = -301,

  /* the cluster failed */
  AK_ERR_CLUSTER = -400,
} ak_status_t;

/* A short constant name for a status ("AK_ERR_FORMAT"); never NULL. */
const char *ak_status_str(ak_status_t st);

#define AK_ERR_MSG_BYTES 512

/* An error message buffer; `msg` is "" when nothing failed. */
typedef struct {
  ak_status_t status;
  char msg[AK_ERR_MSG_BYTES];
} ak_err_t;

/* Records `st` and a printf-style message in `err` (which may be NULL) and returns
 * `st`, so a failure path reads `return ak_err_set(err, AK_ERR_FORMAT, "...", ...)`. */
ak_status_t ak_err_set(ak_err_t *err, ak_status_t st, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
ak_status_t ak_err_setv(ak_err_t *err, ak_status_t st, const char *fmt, va_list ap);
void ak_err_clear(ak_err_t *err);

/* Convenience: records the message prefixed with the calling function's name. */
#define AK_ERR(err, st, ...) ak_err_set_fn((err), (st), __func__, __VA_ARGS__)
ak_status_t ak_err_set_fn(ak_err_t *err, ak_status_t st, const char *fn, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

#define AK_TRY(expr)                      \
  do {                                    \
    ak_status_t ak_try_st_ = (expr);      \
    if (ak_try_st_ < 0) return ak_try_st_; \
  } while (0)

#ifdef __cplusplus
}
#endif
#endif
