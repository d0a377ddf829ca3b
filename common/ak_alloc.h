/* ak_alloc: host memory with accounting. Every allocation the engine makes for
 * tensors, pages and tables goes through one counter per memory kind, so a test
 * can assert "0 bytes outstanding" after a request is released (Redis zmalloc).
 *
 * Counters are atomic; allocation is thread-safe. A test build can make the N-th
 * allocation fail (ak_alloc_fail_after) to exercise unwinding paths. */
#ifndef AK_ALLOC_H
#define AK_ALLOC_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef enum { AK_MEM_HOST = 0, AK_MEM_PINNED = 1, AK_MEM_DEVICE = 2, AK_MEM_N_KINDS = 3 } ak_mem_kind_t;

/* 64-byte aligned allocation (AVX-512 loads); returns NULL on failure or when the
 * fault-injection countdown fires. Zeroed when `zero` is non-zero. */
void *ak_host_alloc(size_t n_bytes, int zero);
void ak_host_free(void *p, size_t n_bytes);

/* Bytes currently outstanding of one kind. */
int64_t ak_alloc_outstanding_bytes(ak_mem_kind_t kind);
/* Records allocations made elsewhere (pinned, device) so accounting is uniform. */
void ak_alloc_account(ak_mem_kind_t kind, int64_t delta_bytes);

/* Test hook: the `n`-th allocation from now fails (1 = the next one); 0 disables. */
void ak_alloc_fail_after(int64_t n);

#ifdef __cplusplus
}
#endif
#endif
