/* kv_tier: where an evicted KV page's bytes wait to be recalled (a backup tier).
 *
 * ArkVale evicts a page from the GPU only if a backup of it exists, and a recall copies
 * the backup back into a free GPU slot (../shared/DESIGN.md, "Memory tiers of a page").
 * A tier stores opaque byte blobs (one page each) under ids it hands out; it does not
 * know about pages, sequences or the pool, and it never chooses what to evict.
 *
 * One interface, several tiers: `kv_tier_t` is a small base (a vtable, a last-error
 * buffer, the implementation's state) and callers use only the kv_tier_* wrappers
 * below. Implementations:
 *   host    kv_tier_host_create (this file): a preallocated slab in this process.
 *   remote  (later) a peer host's memory over UCX put/get, same ops; it may also
 *           return AK_ERR_PEER / AK_ERR_TIMEOUT, which callers must treat as "no
 *           backup here" rather than as a bug.
 *
 * Contract of every tier (the wrappers check the arguments they can):
 *   put   copies n_bytes from src; src may be reused as soon as put returns. On
 *         success writes a new id to *id_p; on failure *id_p and the tier are unchanged.
 *         AK_ERR_POOL_FULL when there is no room now (free something and retry).
 *   get   copies the blob stored under id into dst; n_bytes must equal the n_bytes of
 *         its put (AK_ERR_INVALID_ARG otherwise). The blob stays stored.
 *         AK_ERR_NOT_FOUND for an id that was never handed out or was freed.
 *   free  drops the blob; the id becomes stale forever (AK_ERR_NOT_FOUND after,
 *         including for a second free), even once its storage is reused.
 *   stats fills a kv_tier_stats_t; never fails.
 *   destroy releases everything, including blobs not freed; accepts NULL.
 * A failed call leaves a message, naming the values involved, in kv_tier_errmsg.
 *
 * Threading: a tier has one owning thread (the worker's KV manager); no call is
 * thread-safe, including stats. */
#ifndef KV_TIER_H
#define KV_TIER_H

#include <stddef.h>
#include <stdint.h>

#include "ak_status.h"

#ifdef __cplusplus
extern "C" {
#endif

/* A stored blob's handle. Opaque and never negative; KV_BACKUP_NONE marks "no backup"
 * in callers' tables and is never handed out. */
typedef int64_t kv_backup_id_t;
#define KV_BACKUP_NONE ((kv_backup_id_t)-1)

typedef struct {
  int64_t n_slots;       /* blobs the tier can hold at once */
  int64_t n_used;        /* blobs held now */
  size_t bytes_used;     /* sum of the held blobs' n_bytes */
  size_t bytes_capacity; /* n_slots * slot bytes */
  uint64_t puts;         /* successful puts, since create */
  uint64_t gets;         /* successful gets */
  uint64_t frees;        /* successful frees */
  uint64_t bytes_put;    /* bytes copied in by successful puts */
  uint64_t bytes_got;    /* bytes copied out by successful gets */
} kv_tier_stats_t;

typedef struct kv_tier kv_tier_t;

/* What an implementation provides. The wrappers validate tier, pointers and n_bytes > 0
 * and clear the last error before calling put/get/free. */
typedef struct {
  const char *name; /* "host", "remote", ... */
  ak_status_t (*put)(kv_tier_t *tier, const void *src, size_t n_bytes, kv_backup_id_t *id_p);
  ak_status_t (*get)(kv_tier_t *tier, kv_backup_id_t id, void *dst, size_t n_bytes);
  ak_status_t (*free)(kv_tier_t *tier, kv_backup_id_t id);
  void (*stats)(const kv_tier_t *tier, kv_tier_stats_t *stats_p);
  void (*destroy)(kv_tier_t *tier); /* frees the tier itself too */
  /* Optional: put without the copy (kv_tier_reserve). */
  ak_status_t (*reserve)(kv_tier_t *tier, size_t n_bytes, kv_backup_id_t *id_p, void **dst_p);
} kv_tier_ops_t;

/* The base every tier starts with. Visible so that implementations in other files
 * can fill it; callers never touch its fields. */
struct kv_tier {
  const kv_tier_ops_t *ops;
  ak_err_t err; /* last error of a call on this tier */
  void *impl;   /* the implementation's state */
};

ak_status_t kv_tier_put(kv_tier_t *tier, const void *src, size_t n_bytes, kv_backup_id_t *id_p);
ak_status_t kv_tier_get(kv_tier_t *tier, kv_backup_id_t id, void *dst, size_t n_bytes);
/* Like put, but hands out where the blob's n_bytes go (*dst_p, this tier's memory) for the
 * caller to fill — a device copy straight into a pinned slab, say — instead of copying
 * them; it must be filled before any get of *id_p. AK_ERR_UNSUPPORTED from a tier without
 * addressable memory (the caller then uses put). */
ak_status_t kv_tier_reserve(kv_tier_t *tier, size_t n_bytes, kv_backup_id_t *id_p, void **dst_p);
ak_status_t kv_tier_free(kv_tier_t *tier, kv_backup_id_t id);
/* Zeroes *stats_p for a NULL tier. */
void kv_tier_stats(const kv_tier_t *tier, kv_tier_stats_t *stats_p);
void kv_tier_destroy(kv_tier_t *tier);
/* The implementation's name ("host"); "none" for NULL. */
const char *kv_tier_name(const kv_tier_t *tier);
/* The last error of a call on this tier ("" if it succeeded); valid until the next call. */
const char *kv_tier_errmsg(const kv_tier_t *tier);

/* --- host tier ---
 *
 * One slab of host memory, cut into n_slots = capacity_bytes / slot_bytes equal slots
 * (a remainder below one slot is not allocated), plus per-slot state and a stack of
 * free slot indices. Everything is allocated at create, so put, get and free never
 * allocate.
 *
 *   slab:  +-------------+-------------+-----+---------------------+
 *          | slot 0      | slot 1      | ... | slot n_slots-1      |
 *          +-------------+-------------+-----+---------------------+
 *          slot i starts at byte (int64_t)i * slot_bytes; a blob of n_bytes <=
 *          slot_bytes fills the slot's first n_bytes, the rest is unspecified.
 *   slots: [n_slots] { gen (uint32), n_bytes (0 = free) }
 *   free:  [n_slots] slot indices, top at n_free - 1; a fresh tier hands out
 *          slots 0, 1, 2, ... in order.
 *
 *   id (int64):  bit 63 = 0 | bits 62..32 = gen (1 .. 2^31-1) | bits 31..0 = slot index
 *
 * A slot's gen advances on every free (wrapping 2^31-1 -> 1), so an id kept past its
 * free stops matching even after the slot is reused (stale ids are caught unless the
 * same slot is freed 2^31-1 times in between).
 *
 * Blob size: a put may store 1..slot_bytes bytes (a sequence's partial last page may
 * be smaller than a full one); a get must ask for exactly the stored size. Larger
 * puts are AK_ERR_INVALID_ARG.
 *
 * The slab is ordinary accounted host memory (AK_MEM_HOST). Pinning it for async
 * device copies (cudaHostRegister) belongs to the caller that owns the CUDA stream. */
typedef struct {
  size_t capacity_bytes; /* total bytes of the slab; >= slot_bytes */
  size_t slot_bytes;     /* bytes of one slot: one page (kv_page_bytes); >= 1 */
  void *slab;            /* NULL: the tier allocates the slab. Otherwise capacity_bytes of the
                          * caller's memory (pinned and device-mapped for the CUDA backend, so
                          * that a kernel can gather recalls from it), which must outlive the
                          * tier and is never freed by it */
  size_t alias_slab_bytes; /* BENCHMARKS ONLY. 0: the slab holds every slot. Otherwise (a caller
                          * slab only) the slab is this many bytes, fewer than capacity_bytes,
                          * and slot i's blob lives in slab slot i % (alias_slab_bytes /
                          * slot_bytes): blobs of aliased slots overwrite each other, so a get
                          * may return another blob's bytes. For speed runs over synthetic K/V
                          * that back up more pages than host memory holds (bench_decode's
                          * throughput rows); the accounting (slots, capacity, full) stays
                          * that of capacity_bytes */
} kv_tier_host_params_t;

/* Both fields are 0 and must be set. */
kv_tier_host_params_t kv_tier_host_params_default(void);

/* AK_ERR_INVALID_ARG (message in err) for NULL params or tier_p, slot_bytes == 0,
 * capacity_bytes < slot_bytes, or more than 2^31-1 slots; AK_ERR_NO_MEMORY when an
 * allocation fails, with everything allocated so far released. *tier_p is written
 * only on success. */
ak_status_t kv_tier_host_create(const kv_tier_host_params_t *p, ak_err_t *err, kv_tier_t **tier_p);

/* The slot a host tier's id names: its blob starts at byte slot * slot_bytes of the slab
 * (-1 for KV_BACKUP_NONE). Says nothing about whether the id is still valid. With
 * alias_slab_bytes the blob is at slab slot (slot % (alias_slab_bytes / slot_bytes)). */
int64_t kv_tier_host_slot(kv_backup_id_t id);

#ifdef __cplusplus
}
#endif
#endif
