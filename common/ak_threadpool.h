/* ak_threadpool: a fork-join pool for data-parallel kernels.
 *
 * ak_pool_run(fn) runs fn(ctx, t, n) once for every task t in [0, n), n = the pool's
 * threads, and returns when all have finished. Each task runs on whichever pool
 * thread claims it (the caller included; one thread may run several in turn), so fn
 * must not wait for another task to start; per-task state indexed by t is private to
 * the task. A decode step issues hundreds of
 * short ops, so workers spin briefly on a generation counter before sleeping on a
 * condition variable: waking a sleeping thread per op would cost more than the op.
 *
 * One owning thread: ak_pool_run is not reentrant and must be called from the
 * thread that created the pool (or one thread at a time). */
#ifndef AK_THREADPOOL_H
#define AK_THREADPOOL_H

#include <stdint.h>

#include "ak_status.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct ak_pool ak_pool_t;
typedef void (*ak_pool_fn)(void *ctx, int thread_idx, int n_threads);

/* n_threads >= 1; 0 means "one per online CPU". */
ak_status_t ak_pool_create(int n_threads, ak_err_t *err, ak_pool_t **pool_p);
void ak_pool_destroy(ak_pool_t *pool);
int ak_pool_n_threads(const ak_pool_t *pool);
void ak_pool_run(ak_pool_t *pool, ak_pool_fn fn, void *ctx);

/* Splits [0, n) into near-equal contiguous chunks: this thread's [*begin_p, *end_p).
 * `align` rounds chunk boundaries to a multiple (e.g. rows of a tile). */
void ak_pool_split(int64_t n, int thread_idx, int n_threads, int64_t align, int64_t *begin_p,
                   int64_t *end_p);

#ifdef __cplusplus
}
#endif
#endif
