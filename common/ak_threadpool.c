/* ak_threadpool: spin-then-sleep fork-join pool. */
#include "ak_threadpool.h"

#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdlib.h>
#include <unistd.h>

#include "ak_alloc.h"

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define AK_CPU_RELAX() _mm_pause()
#else
#define AK_CPU_RELAX() ((void)0)
#endif

/* About 50-100 us of spinning before a worker sleeps: long enough to cover the gap
 * between two ops of one step, short enough not to burn a core while idle. */
enum { AK_POOL_SPIN_ITERS = 20000 };

/* A pause per spin, and every 64th spin a yield: when the machine is oversubscribed
 * (another process, or ctest running suites in parallel) the thread we wait for may
 * be descheduled, and pure spinning would burn our whole time slice waiting for it —
 * measured here: decode fell from ~150 to ~1 tok/s with one competing process. */
static inline void ak_pool_relax(int spins) {
  if (spins % 64 == 0)
    sched_yield();
  else
    AK_CPU_RELAX();
}

typedef struct {
  ak_pool_t *pool;
  pthread_t tid;
} ak_pool_worker_t;

struct ak_pool {
  int n_threads;
  ak_pool_worker_t *workers; /* [n_threads - 1] */
  _Atomic uint64_t generation; /* bumped once per run (wakes the workers) */
  /* The run's tasks: (run << 32) | the next task index to hand out. Any pool thread,
   * the caller included, claims tasks until none is left; the caller then waits only
   * for tasks already claimed (n_done), never for a worker that has not woken: on a
   * host shared with other processes that could cost it a whole time slice per run. */
  _Atomic uint64_t tasks;
  _Atomic int n_done;
  uint32_t run;                /* the caller's run counter */
  _Atomic int stop;
  ak_pool_fn fn;
  void *ctx;
  pthread_mutex_t mu;
  pthread_cond_t cv;
  _Atomic int n_sleeping;
};

/* The next unclaimed task of the current run, or -1. A successful claim (acquire)
 * sees the run's fn and ctx, which stay valid until the claimed task is done. */
static int ak_pool_claim(ak_pool_t *pool) {
  uint64_t w = atomic_load_explicit(&pool->tasks, memory_order_acquire);
  for (;;) {
    if ((uint32_t)w >= (uint32_t)pool->n_threads) return -1;
    if (atomic_compare_exchange_weak_explicit(&pool->tasks, &w, w + 1, memory_order_acq_rel,
                                              memory_order_acquire))
      return (int)(uint32_t)w;
  }
}

/* Runs tasks of the current run until none is left to claim. */
static void ak_pool_work(ak_pool_t *pool) {
  for (int t; (t = ak_pool_claim(pool)) >= 0;) {
    pool->fn(pool->ctx, t, pool->n_threads);
    atomic_fetch_add_explicit(&pool->n_done, 1, memory_order_release);
  }
}

static void *ak_pool_worker_main(void *arg) {
  ak_pool_worker_t *w = arg;
  ak_pool_t *pool = w->pool;
  uint64_t seen = 0;
  for (;;) {
    uint64_t gen;
    int spins = 0;
    while ((gen = atomic_load_explicit(&pool->generation, memory_order_acquire)) == seen &&
           !atomic_load(&pool->stop)) {
      if (++spins < AK_POOL_SPIN_ITERS) {
        ak_pool_relax(spins);
        continue;
      }
      pthread_mutex_lock(&pool->mu);
      atomic_fetch_add(&pool->n_sleeping, 1);
      while (atomic_load(&pool->generation) == seen && !atomic_load(&pool->stop))
        pthread_cond_wait(&pool->cv, &pool->mu);
      atomic_fetch_sub(&pool->n_sleeping, 1);
      pthread_mutex_unlock(&pool->mu);
      spins = 0;
    }
    if (atomic_load(&pool->stop)) return NULL;
    seen = gen;
    ak_pool_work(pool);
  }
}

ak_status_t ak_pool_create(int n_threads, ak_err_t *err, ak_pool_t **pool_p) {
  if (n_threads < 0 || n_threads > 1024)
    return AK_ERR(err, AK_ERR_INVALID_ARG, "n_threads=%d outside [0, 1024]", n_threads);
  if (n_threads == 0) {
    long n = sysconf(_SC_NPROCESSORS_ONLN);
    n_threads = n > 0 ? (int)n : 1;
  }
  ak_pool_t *pool = ak_host_alloc(sizeof *pool, 1);
  if (!pool) return AK_ERR(err, AK_ERR_NO_MEMORY, "pool struct");
  pool->n_threads = n_threads;
  pthread_mutex_init(&pool->mu, NULL);
  pthread_cond_init(&pool->cv, NULL);
  int n_workers = n_threads - 1;
  if (n_workers > 0) {
    pool->workers = ak_host_alloc(sizeof(ak_pool_worker_t) * (size_t)n_workers, 1);
    if (!pool->workers) goto err_free_pool;
  }
  int started = 0;
  for (; started < n_workers; started++) {
    ak_pool_worker_t *w = &pool->workers[started];
    w->pool = pool;
    if (pthread_create(&w->tid, NULL, ak_pool_worker_main, w) != 0) goto err_join_workers;
  }
  *pool_p = pool;
  return AK_OK;

err_join_workers:
  atomic_store(&pool->stop, 1);
  pthread_mutex_lock(&pool->mu);
  pthread_cond_broadcast(&pool->cv);
  pthread_mutex_unlock(&pool->mu);
  for (int i = 0; i < started; i++) pthread_join(pool->workers[i].tid, NULL);
  ak_host_free(pool->workers, sizeof(ak_pool_worker_t) * (size_t)n_workers);
err_free_pool:
  pthread_cond_destroy(&pool->cv);
  pthread_mutex_destroy(&pool->mu);
  ak_host_free(pool, sizeof *pool);
  return AK_ERR(err, AK_ERR_NO_MEMORY, "could not start %d worker threads", n_workers);
}

void ak_pool_destroy(ak_pool_t *pool) {
  if (!pool) return;
  atomic_store(&pool->stop, 1);
  pthread_mutex_lock(&pool->mu);
  pthread_cond_broadcast(&pool->cv);
  pthread_mutex_unlock(&pool->mu);
  int n_workers = pool->n_threads - 1;
  for (int i = 0; i < n_workers; i++) pthread_join(pool->workers[i].tid, NULL);
  if (n_workers > 0) ak_host_free(pool->workers, sizeof(ak_pool_worker_t) * (size_t)n_workers);
  pthread_cond_destroy(&pool->cv);
  pthread_mutex_destroy(&pool->mu);
  ak_host_free(pool, sizeof *pool);
}

int ak_pool_n_threads(const ak_pool_t *pool) { return pool ? pool->n_threads : 1; }

void ak_pool_run(ak_pool_t *pool, ak_pool_fn fn, void *ctx) {
  if (!pool || pool->n_threads == 1) {
    fn(ctx, 0, 1);
    return;
  }
  pool->fn = fn;
  pool->ctx = ctx;
  atomic_store_explicit(&pool->n_done, 0, memory_order_relaxed);
  /* release: a worker whose claim sees this run's word sees fn, ctx and n_done too */
  atomic_store_explicit(&pool->tasks, (uint64_t)(++pool->run) << 32, memory_order_release);
  atomic_fetch_add(&pool->generation, 1); /* seq_cst: ordered before the n_sleeping load */
  if (atomic_load(&pool->n_sleeping) > 0) {
    pthread_mutex_lock(&pool->mu);
    pthread_cond_broadcast(&pool->cv);
    pthread_mutex_unlock(&pool->mu);
  }
  ak_pool_work(pool);
  for (int spins = 1; atomic_load_explicit(&pool->n_done, memory_order_acquire) < pool->n_threads; spins++)
    ak_pool_relax(spins);
}

void ak_pool_split(int64_t n, int thread_idx, int n_threads, int64_t align, int64_t *begin_p,
                   int64_t *end_p) {
  if (align < 1) align = 1;
  int64_t n_units = (n + align - 1) / align;
  int64_t per = n_units / n_threads, rem = n_units % n_threads;
  int64_t b = thread_idx * per + (thread_idx < rem ? thread_idx : rem);
  int64_t e = b + per + (thread_idx < rem ? 1 : 0);
  b *= align;
  e *= align;
  *begin_p = b < n ? b : n;
  *end_p = e < n ? e : n;
}
