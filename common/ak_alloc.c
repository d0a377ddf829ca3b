/* ak_alloc: accounted, aligned host allocation. */
#include "ak_alloc.h"

#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

static _Atomic int64_t g_outstanding[AK_MEM_N_KINDS];
static _Atomic int64_t g_fail_countdown;

void *ak_host_alloc(size_t n_bytes, int zero) {
  if (atomic_load(&g_fail_countdown) > 0 && atomic_fetch_sub(&g_fail_countdown, 1) == 1) return NULL;
  if (n_bytes == 0) n_bytes = 1;
  size_t rounded = (n_bytes + 63) & ~(size_t)63;
  if (rounded < n_bytes) return NULL;
  void *p = aligned_alloc(64, rounded);
  if (!p) return NULL;
  if (zero) memset(p, 0, rounded);
  atomic_fetch_add(&g_outstanding[AK_MEM_HOST], (int64_t)n_bytes);
  return p;
}

void ak_host_free(void *p, size_t n_bytes) {
  if (!p) return;
  if (n_bytes == 0) n_bytes = 1;
  atomic_fetch_sub(&g_outstanding[AK_MEM_HOST], (int64_t)n_bytes);
  free(p);
}

int64_t ak_alloc_outstanding_bytes(ak_mem_kind_t kind) {
  if ((int)kind < 0 || kind >= AK_MEM_N_KINDS) return 0;
  return atomic_load(&g_outstanding[kind]);
}

void ak_alloc_account(ak_mem_kind_t kind, int64_t delta_bytes) {
  if ((int)kind < 0 || kind >= AK_MEM_N_KINDS) return;
  atomic_fetch_add(&g_outstanding[kind], delta_bytes);
}

void ak_alloc_fail_after(int64_t n) { atomic_store(&g_fail_countdown, n); }
