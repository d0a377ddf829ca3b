/* kv_tier_host: the backup-tier wrappers and the host-memory tier (kv_tier.h).
 *
 * The wrappers validate what every tier would and dispatch through the vtable; they
 * live here until a second tier exists, then move to their own kv_tier.c.
 *
 * The host tier is a slab of equal slots and a free stack, all allocated at create:
 * the eviction path calls put once per evicted page, so it must not allocate or
 * search. Ids carry a per-slot generation so a stale id cannot read another page's
 * bytes after its slot is reused (see the id layout in kv_tier.h). */
#include <string.h>

#include "ak_alloc.h"
#include "kv_tier.h"

/* --- wrappers --- */

ak_status_t kv_tier_put(kv_tier_t *tier, const void *src, size_t n_bytes, kv_backup_id_t *id_p) {
  if (!tier) return AK_ERR_INVALID_ARG;
  ak_err_clear(&tier->err);
  if (!src || !id_p) return AK_ERR(&tier->err, AK_ERR_INVALID_ARG, "src or id_p is NULL");
  if (n_bytes == 0) return AK_ERR(&tier->err, AK_ERR_INVALID_ARG, "n_bytes is 0");
  return tier->ops->put(tier, src, n_bytes, id_p);
}

ak_status_t kv_tier_reserve(kv_tier_t *tier, size_t n_bytes, kv_backup_id_t *id_p, void **dst_p) {
  if (!tier) return AK_ERR_INVALID_ARG;
  ak_err_clear(&tier->err);
  if (!id_p || !dst_p) return AK_ERR(&tier->err, AK_ERR_INVALID_ARG, "id_p or dst_p is NULL");
  if (n_bytes == 0) return AK_ERR(&tier->err, AK_ERR_INVALID_ARG, "n_bytes is 0");
  if (!tier->ops->reserve)
    return AK_ERR(&tier->err, AK_ERR_UNSUPPORTED, "the %s tier copies blobs in (put) only", tier->ops->name);
  return tier->ops->reserve(tier, n_bytes, id_p, dst_p);
}

ak_status_t kv_tier_get(kv_tier_t *tier, kv_backup_id_t id, void *dst, size_t n_bytes) {
  if (!tier) return AK_ERR_INVALID_ARG;
  ak_err_clear(&tier->err);
  if (!dst) return AK_ERR(&tier->err, AK_ERR_INVALID_ARG, "dst is NULL");
  if (n_bytes == 0) return AK_ERR(&tier->err, AK_ERR_INVALID_ARG, "n_bytes is 0");
  return tier->ops->get(tier, id, dst, n_bytes);
}

ak_status_t kv_tier_free(kv_tier_t *tier, kv_backup_id_t id) {
  if (!tier) return AK_ERR_INVALID_ARG;
  ak_err_clear(&tier->err);
  return tier->ops->free(tier, id);
}

void kv_tier_stats(const kv_tier_t *tier, kv_tier_stats_t *stats_p) {
  if (!stats_p) return;
  memset(stats_p, 0, sizeof *stats_p);
  if (tier) tier->ops->stats(tier, stats_p);
}

void kv_tier_destroy(kv_tier_t *tier) {
  if (tier) tier->ops->destroy(tier);
}

const char *kv_tier_name(const kv_tier_t *tier) { return tier ? tier->ops->name : "none"; }

const char *kv_tier_errmsg(const kv_tier_t *tier) { return tier ? tier->err.msg : "tier is NULL"; }

/* --- host tier --- */

#define KV_HOST_GEN_MAX 0x7fffffffu /* gens live in [1, KV_HOST_GEN_MAX] */

typedef struct {
  uint32_t gen;    /* the generation a live id of this slot must carry */
  uint32_t pad;
  uint64_t n_bytes; /* stored blob size; 0 = free */
} kv_host_slot_t;

typedef struct {
  kv_tier_t base; /* first: a kv_tier_t * is a kv_tier_host_t * */
  size_t slot_bytes;
  int64_t n_slots;
  unsigned char *slab;   /* [n_slab_slots][slot_bytes] bytes */
  int64_t n_slab_slots;  /* n_slots, or fewer with alias_slab_bytes (slot i at i % n_slab_slots) */
  int owns_slab;         /* 0: the caller's (kv_tier_host_params_t.slab) */
  kv_host_slot_t *slots; /* [n_slots] */
  int32_t *free_stack;   /* [n_slots] slot indices, top at n_free - 1 */
  int64_t n_free;
  kv_tier_stats_t st;    /* n_used, bytes_used and the counters; the rest filled on read */
} kv_tier_host_t;

static kv_backup_id_t kv_host_id(int32_t slot_idx, uint32_t gen) {
  return (kv_backup_id_t)(((uint64_t)gen << 32) | (uint32_t)slot_idx);
}

/* The live slot named by id, or NULL with AK_ERR_NOT_FOUND recorded. */
static kv_host_slot_t *kv_host_lookup(kv_tier_host_t *h, kv_backup_id_t id, int64_t *slot_idx_p) {
  int64_t slot_idx = id & 0xffffffff;
  uint32_t gen = (uint32_t)((uint64_t)id >> 32);
  if (id < 0 || slot_idx >= h->n_slots) {
    AK_ERR(&h->base.err, AK_ERR_NOT_FOUND, "id %lld is not a host tier id (%lld slots)", (long long)id,
           (long long)h->n_slots);
    return NULL;
  }
  kv_host_slot_t *s = &h->slots[slot_idx];
  if (s->n_bytes == 0 || s->gen != gen) {
    AK_ERR(&h->base.err, AK_ERR_NOT_FOUND, "id %lld (slot %lld, gen %u) is freed or stale (slot gen %u, %s)",
           (long long)id, (long long)slot_idx, gen, s->gen, s->n_bytes ? "in use" : "free");
    return NULL;
  }
  *slot_idx_p = slot_idx;
  return s;
}

static ak_status_t kv_host_reserve(kv_tier_t *tier, size_t n_bytes, kv_backup_id_t *id_p, void **dst_p) {
  kv_tier_host_t *h = tier->impl;
  if (n_bytes > h->slot_bytes)
    return AK_ERR(&tier->err, AK_ERR_INVALID_ARG, "n_bytes=%zu exceeds slot_bytes=%zu", n_bytes, h->slot_bytes);
  if (h->n_free == 0)
    return AK_ERR(&tier->err, AK_ERR_POOL_FULL, "host tier full: %lld of %lld slots (%zu bytes)",
                  (long long)h->st.n_used, (long long)h->n_slots, (size_t)h->n_slots * h->slot_bytes);
  int32_t slot_idx = h->free_stack[--h->n_free];
  kv_host_slot_t *s = &h->slots[slot_idx];
  *dst_p = h->slab + (int64_t)slot_idx % h->n_slab_slots * (int64_t)h->slot_bytes;
  s->n_bytes = n_bytes;
  h->st.n_used++;
  h->st.bytes_used += n_bytes;
  h->st.puts++;
  h->st.bytes_put += n_bytes;
  *id_p = kv_host_id(slot_idx, s->gen);
  return AK_OK;
}

static ak_status_t kv_host_put(kv_tier_t *tier, const void *src, size_t n_bytes, kv_backup_id_t *id_p) {
  void *dst = NULL;
  kv_backup_id_t id = KV_BACKUP_NONE;
  AK_TRY(kv_host_reserve(tier, n_bytes, &id, &dst));
  memcpy(dst, src, n_bytes);
  *id_p = id;
  return AK_OK;
}

static ak_status_t kv_host_get(kv_tier_t *tier, kv_backup_id_t id, void *dst, size_t n_bytes) {
  kv_tier_host_t *h = tier->impl;
  int64_t slot_idx = 0;
  kv_host_slot_t *s = kv_host_lookup(h, id, &slot_idx);
  if (!s) return AK_ERR_NOT_FOUND;
  if (n_bytes != s->n_bytes)
    return AK_ERR(&tier->err, AK_ERR_INVALID_ARG, "id %lld holds %llu bytes, get asked for %zu", (long long)id,
                  (unsigned long long)s->n_bytes, n_bytes);
  memcpy(dst, h->slab + slot_idx % h->n_slab_slots * (int64_t)h->slot_bytes, n_bytes);
  h->st.gets++;
  h->st.bytes_got += n_bytes;
  return AK_OK;
}

static ak_status_t kv_host_free(kv_tier_t *tier, kv_backup_id_t id) {
  kv_tier_host_t *h = tier->impl;
  int64_t slot_idx = 0;
  kv_host_slot_t *s = kv_host_lookup(h, id, &slot_idx);
  if (!s) return AK_ERR_NOT_FOUND;
  h->st.n_used--;
  h->st.bytes_used -= s->n_bytes;
  h->st.frees++;
  s->n_bytes = 0;
  s->gen = s->gen == KV_HOST_GEN_MAX ? 1 : s->gen + 1;
  h->free_stack[h->n_free++] = (int32_t)slot_idx;
  return AK_OK;
}

static void kv_host_stats(const kv_tier_t *tier, kv_tier_stats_t *stats_p) {
  const kv_tier_host_t *h = tier->impl;
  *stats_p = h->st;
  stats_p->n_slots = h->n_slots;
  stats_p->bytes_capacity = (size_t)h->n_slots * h->slot_bytes;
}

static void kv_host_destroy(kv_tier_t *tier) {
  kv_tier_host_t *h = tier->impl;
  size_t n = (size_t)h->n_slots;
  ak_host_free(h->free_stack, sizeof(int32_t) * n);
  ak_host_free(h->slots, sizeof(kv_host_slot_t) * n);
  if (h->owns_slab) ak_host_free(h->slab, n * h->slot_bytes);
  ak_host_free(h, sizeof *h);
}

int64_t kv_tier_host_slot(kv_backup_id_t id) { return id < 0 ? -1 : (int64_t)(id & 0xffffffff); }

static const kv_tier_ops_t kv_host_ops = {
    .name = "host",
    .put = kv_host_put,
    .reserve = kv_host_reserve,
    .get = kv_host_get,
    .free = kv_host_free,
    .stats = kv_host_stats,
    .destroy = kv_host_destroy,
};

kv_tier_host_params_t kv_tier_host_params_default(void) {
  kv_tier_host_params_t p;
  memset(&p, 0, sizeof p);
  return p;
}

ak_status_t kv_tier_host_create(const kv_tier_host_params_t *p, ak_err_t *err, kv_tier_t **tier_p) {
  if (!p || !tier_p) return AK_ERR(err, AK_ERR_INVALID_ARG, "params or tier_p is NULL");
  if (p->slot_bytes == 0) return AK_ERR(err, AK_ERR_INVALID_ARG, "slot_bytes is 0");
  if (p->capacity_bytes < p->slot_bytes)
    return AK_ERR(err, AK_ERR_INVALID_ARG, "capacity_bytes=%zu is less than one slot of %zu bytes",
                  p->capacity_bytes, p->slot_bytes);
  size_t n_slots = p->capacity_bytes / p->slot_bytes;
  if (n_slots > (size_t)INT32_MAX)
    return AK_ERR(err, AK_ERR_INVALID_ARG, "capacity_bytes=%zu / slot_bytes=%zu = %zu slots exceeds 2^31-1",
                  p->capacity_bytes, p->slot_bytes, n_slots);
  size_t n_slab_slots = n_slots;
  if (p->alias_slab_bytes) {
    if (!p->slab)
      return AK_ERR(err, AK_ERR_INVALID_ARG, "alias_slab_bytes=%zu needs the caller's slab (slab is NULL)",
                    p->alias_slab_bytes);
    n_slab_slots = p->alias_slab_bytes / p->slot_bytes;
    if (n_slab_slots < 1 || n_slab_slots >= n_slots)
      return AK_ERR(err, AK_ERR_INVALID_ARG,
                    "alias_slab_bytes=%zu must hold at least one slot of %zu bytes and fewer than the %zu slots "
                    "of capacity_bytes=%zu",
                    p->alias_slab_bytes, p->slot_bytes, n_slots, p->capacity_bytes);
  }

  kv_tier_host_t *h = ak_host_alloc(sizeof *h, 1);
  if (!h) return AK_ERR(err, AK_ERR_NO_MEMORY, "host tier struct");
  h->base.ops = &kv_host_ops;
  h->base.impl = h;
  h->slot_bytes = p->slot_bytes;
  h->n_slots = (int64_t)n_slots;
  h->n_slab_slots = (int64_t)n_slab_slots;
  h->owns_slab = p->slab == NULL;
  h->slab = h->owns_slab ? ak_host_alloc(n_slots * p->slot_bytes, 0) : p->slab;
  if (!h->slab) goto err_free_struct;
  /* Zeroed: every slot starts free (n_bytes 0); gens are set just below. */
  h->slots = ak_host_alloc(sizeof(kv_host_slot_t) * n_slots, 1);
  if (!h->slots) goto err_free_slab;
  h->free_stack = ak_host_alloc(sizeof(int32_t) * n_slots, 0);
  if (!h->free_stack) goto err_free_slots;
  /* Pop order 0, 1, 2, ...: a fresh tier fills the slab front to back. */
  for (size_t i = 0; i < n_slots; i++) {
    h->slots[i].gen = 1;
    h->free_stack[i] = (int32_t)(n_slots - 1 - i);
  }
  h->n_free = (int64_t)n_slots;
  *tier_p = &h->base;
  return AK_OK;

err_free_slots:
  ak_host_free(h->slots, sizeof(kv_host_slot_t) * n_slots);
err_free_slab:
  if (h->owns_slab) ak_host_free(h->slab, n_slots * p->slot_bytes);
err_free_struct:
  ak_host_free(h, sizeof *h);
  return AK_ERR(err, AK_ERR_NO_MEMORY, "host tier of %zu slots of %zu bytes", n_slots, p->slot_bytes);
}
