/* co_stop: stop strings over streamed text.
 *
 * Text arrives in deltas (one per sampled token); a stop string may straddle deltas.
 * The matcher emits text as soon as it cannot be the start of a stop string, holds
 * back the shortest tail that still could be, and on a match emits everything before
 * the stop string and reports the stop (the stop string itself is not emitted, as in
 * the usual serving APIs). Not thread-safe: one per sequence. */
#ifndef CO_STOP_H
#define CO_STOP_H

#include <stddef.h>

#include "ak_status.h"

#ifdef __cplusplus
extern "C" {
#endif

#define CO_STOP_MAX_STRINGS 16
#define CO_STOP_MAX_BYTES 256 /* per stop string */

typedef struct co_stop co_stop_t;

/* Copies the strings. Each must be 1..CO_STOP_MAX_BYTES bytes; at most
 * CO_STOP_MAX_STRINGS of them (AK_ERR_INVALID_ARG naming the offending index). */
ak_status_t co_stop_create(const char *const *stops, int n_stops, ak_err_t *err, co_stop_t **stop_p);
void co_stop_destroy(co_stop_t *s);

/* Adds a delta. *emit_p and *emit_bytes_p: text now safe to show (valid until the next
 * call); *stopped_p: 1 once a stop string matched (later pushes emit nothing). */
ak_status_t co_stop_push(co_stop_t *s, const char *text, size_t n_bytes, const char **emit_p,
                         size_t *emit_bytes_p, int *stopped_p);
/* End of stream without a stop: returns the held-back tail. */
void co_stop_flush(co_stop_t *s, const char **emit_p, size_t *emit_bytes_p);

#ifdef __cplusplus
}
#endif
#endif
