/* co_sched: queue, admission, routing and step planning (the rules are in co_sched.h).
 *
 * Requests live in a fixed array of slots (max_queue + n_groups * max_running_seqs: a
 * queued request is refused before the array can run out); an open-addressing map
 * finds a slot by id. A live slot is on exactly one list: the queue, in submit order,
 * or its group's running list, in admission order (the order prompts get chunks). */
#include "co_sched.h"

#include <assert.h>
#include <string.h>

#include "ak_alloc.h"

#define CO_NONE (-1)

typedef struct {
  co_sched_req_t req;
  uint64_t submit_seq; /* FCFS order */
  co_req_state_t state;
  int32_t group_idx;   /* running: its group */
  int32_t prev, next;  /* the list it is on; next links the free slots */
  int32_t n_prefilled_tokens;
  int32_t n_generated_tokens;
  int64_t peak_pages;     /* reservation while the prompt is fed */
  int64_t steady_pages;   /* reservation after */
  int64_t reserved_pages; /* what it holds of its group's accounting now */
  uint8_t on_worker;      /* has been in a plan of its group */
  int32_t item_idx;       /* its item in the group's plan, when planned_step matches */
  uint64_t planned_step;  /* the group's step_no of the last plan that fed it; 0 = none */
  uint64_t mark;          /* co_sched_step_done's validation epoch */
} co_slot_t;

typedef struct {
  int64_t capacity_pages;
  int64_t reserved_pages;
  int32_t max_running_seqs; /* this group's slots (<= p.max_running_seqs, the arrays' size) */
  int32_t max_batch_tokens; /* this group's step, >= its max_running_seqs + 2 */
  int32_t n_running, n_prefilling;
  int32_t head, tail; /* running list */
  uint8_t dead, in_step;
  uint64_t step_no; /* numbers plans (the planned_step stamps) */
  uint64_t n_steps;
  co_sched_item_t *items; /* [max_running_seqs]: the plan in flight */
  int32_t n_items;
  int64_t n_plan_tokens;
  int64_t *drops; /* [max_running_seqs]: pending for the next plan */
  int32_t n_drops;
  int64_t *plan_drops; /* [max_running_seqs]: the plan's copy */
  int32_t n_plan_drops;
} co_group_t;

struct co_sched {
  co_sched_params_t p; /* group_capacity_pages not kept */
  co_group_t *groups;  /* [n_groups] */
  co_slot_t *slots;    /* [n_slots] */
  int32_t n_slots;
  int32_t free_head;
  int32_t q_head, q_tail, n_queued;
  int64_t *map_keys; /* [map_mask + 1] */
  int32_t *map_vals; /* [map_mask + 1] slot index, CO_NONE = empty */
  uint32_t map_mask;
  uint64_t next_submit_seq;
  uint64_t epoch;
  co_sched_item_t *items_all; /* [n_groups * max_running_seqs] */
  int64_t *drops_all;         /* [2 * n_groups * max_running_seqs]: drops, plan_drops */
  int64_t *ended;             /* [max_running_seqs]: finished or failed ids of the last call */
  co_sched_stats_t st;
  ak_err_t err;
};

/* --- params --- */

co_sched_params_t co_sched_params_default(void) {
  co_sched_params_t p;
  memset(&p, 0, sizeof p);
  p.shape.n_full_layers = 2;
  p.shape.page_tokens = 32;
  p.max_running_seqs = 256;
  p.max_batch_tokens = 512;
  p.max_queue = 1024;
  p.max_seq_tokens = 8192;
  p.max_wait_us = 2000000;
  return p;
}

static ak_status_t co_params_check(const co_sched_params_t *p, ak_err_t *err) {
  if (!p) return AK_ERR(err, AK_ERR_INVALID_ARG, "params is NULL");
  if (p->shape.n_layers < 1 || p->shape.n_layers > 4096)
    return AK_ERR(err, AK_ERR_INVALID_ARG, "shape.n_layers=%d outside [1, 4096]", p->shape.n_layers);
  if (p->shape.n_full_layers < 0)
    return AK_ERR(err, AK_ERR_INVALID_ARG, "shape.n_full_layers=%d is negative", p->shape.n_full_layers);
  if (p->shape.page_tokens < 1 || p->shape.page_tokens > 256)
    return AK_ERR(err, AK_ERR_INVALID_ARG, "shape.page_tokens=%d outside [1, 256]", p->shape.page_tokens);
  if (p->n_groups < 1 || p->n_groups > 1024)
    return AK_ERR(err, AK_ERR_INVALID_ARG, "n_groups=%d outside [1, 1024]", p->n_groups);
  if (!p->group_capacity_pages) return AK_ERR(err, AK_ERR_INVALID_ARG, "group_capacity_pages is NULL");
  for (int32_t g = 0; g < p->n_groups; g++)
    if (p->group_capacity_pages[g] < 1)
      return AK_ERR(err, AK_ERR_INVALID_ARG, "group_capacity_pages[%d]=%lld must be >= 1", g,
                    (long long)p->group_capacity_pages[g]);
  if (p->max_running_seqs < 1 || p->max_running_seqs > 65536)
    return AK_ERR(err, AK_ERR_INVALID_ARG, "max_running_seqs=%d outside [1, 65536]", p->max_running_seqs);
  if ((int64_t)p->max_batch_tokens < (int64_t)p->max_running_seqs + 2)
    return AK_ERR(err, AK_ERR_INVALID_ARG,
                  "max_batch_tokens=%d must be >= max_running_seqs + 2 = %d (decoders never fill a step)",
                  p->max_batch_tokens, p->max_running_seqs + 2);
  if (p->max_queue < 1 || p->max_queue > (1 << 24))
    return AK_ERR(err, AK_ERR_INVALID_ARG, "max_queue=%d outside [1, 2^24]", p->max_queue);
  if (p->max_seq_tokens < 2)
    return AK_ERR(err, AK_ERR_INVALID_ARG, "max_seq_tokens=%d must be >= 2", p->max_seq_tokens);
  if (p->max_wait_us < 0)
    return AK_ERR(err, AK_ERR_INVALID_ARG, "max_wait_us=%lld is negative", (long long)p->max_wait_us);
  for (int32_t g = 0; g < p->n_groups && p->group_max_running_seqs; g++)
    if (p->group_max_running_seqs[g] < 1 || p->group_max_running_seqs[g] > p->max_running_seqs)
      return AK_ERR(err, AK_ERR_INVALID_ARG, "group_max_running_seqs[%d]=%d outside [1, max_running_seqs=%d]", g,
                    p->group_max_running_seqs[g], p->max_running_seqs);
  for (int32_t g = 0; g < p->n_groups && p->group_max_batch_tokens; g++) {
    int32_t seqs = p->group_max_running_seqs ? p->group_max_running_seqs[g] : p->max_running_seqs;
    if ((int64_t)p->group_max_batch_tokens[g] < (int64_t)seqs + 2)
      return AK_ERR(err, AK_ERR_INVALID_ARG, "group_max_batch_tokens[%d]=%d must be >= its max_running_seqs + 2 = %d",
                    g, p->group_max_batch_tokens[g], seqs + 2);
  }
  int64_t n_slots = (int64_t)p->max_queue + (int64_t)p->n_groups * p->max_running_seqs;
  if (n_slots > (1 << 26))
    return AK_ERR(err, AK_ERR_INVALID_ARG, "max_queue + n_groups * max_running_seqs = %lld exceeds 2^26",
                  (long long)n_slots);
  return AK_OK;
}

/* --- id map: linear probing, deletion by backward shift (no tombstones) --- */

static uint32_t co_hash(int64_t id) {
  uint64_t x = (uint64_t)id + 0x9e3779b97f4a7c15ull; /* splitmix64 */
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
  return (uint32_t)(x ^ (x >> 31));
}

static int32_t co_map_find(const co_sched_t *s, int64_t id) {
  for (uint32_t i = co_hash(id) & s->map_mask;; i = (i + 1) & s->map_mask) {
    if (s->map_vals[i] == CO_NONE) return CO_NONE;
    if (s->map_keys[i] == id) return s->map_vals[i];
  }
}

static void co_map_put(co_sched_t *s, int64_t id, int32_t slot_idx) {
  uint32_t i = co_hash(id) & s->map_mask;
  while (s->map_vals[i] != CO_NONE) i = (i + 1) & s->map_mask;
  s->map_keys[i] = id;
  s->map_vals[i] = slot_idx;
}

static void co_map_del(co_sched_t *s, int64_t id) {
  uint32_t i = co_hash(id) & s->map_mask;
  while (s->map_keys[i] != id || s->map_vals[i] == CO_NONE) {
    assert(s->map_vals[i] != CO_NONE);
    i = (i + 1) & s->map_mask;
  }
  for (uint32_t j = i;;) {
    j = (j + 1) & s->map_mask;
    if (s->map_vals[j] == CO_NONE) break;
    uint32_t k = co_hash(s->map_keys[j]) & s->map_mask;
    int stays = i <= j ? (i < k && k <= j) : (i < k || k <= j); /* its home lies after the hole */
    if (stays) continue;
    s->map_keys[i] = s->map_keys[j];
    s->map_vals[i] = s->map_vals[j];
    i = j;
  }
  s->map_vals[i] = CO_NONE;
}

/* --- lists of slots --- */

static void co_list_remove(co_sched_t *s, int32_t *head, int32_t *tail, int32_t i) {
  co_slot_t *r = &s->slots[i];
  if (r->prev != CO_NONE) s->slots[r->prev].next = r->next;
  else *head = r->next;
  if (r->next != CO_NONE) s->slots[r->next].prev = r->prev;
  else *tail = r->prev;
  r->prev = r->next = CO_NONE;
}

/* Inserts slot i before slot `at` (CO_NONE: at the end). */
static void co_list_insert(co_sched_t *s, int32_t *head, int32_t *tail, int32_t at, int32_t i) {
  co_slot_t *r = &s->slots[i];
  r->next = at;
  r->prev = at == CO_NONE ? *tail : s->slots[at].prev;
  if (r->prev != CO_NONE) s->slots[r->prev].next = i;
  else *head = i;
  if (at != CO_NONE) s->slots[at].prev = i;
  else *tail = i;
}

/* --- create / destroy --- */

static size_t co_map_bytes(const co_sched_t *s, size_t elem) { return elem * ((size_t)s->map_mask + 1); }
static size_t co_per_group_elems(const co_sched_t *s) {
  return (size_t)s->p.n_groups * (size_t)s->p.max_running_seqs;
}

ak_status_t co_sched_create(const co_sched_params_t *p, ak_err_t *err, co_sched_t **sched_p) {
  AK_TRY(co_params_check(p, err));
  if (!sched_p) return AK_ERR(err, AK_ERR_INVALID_ARG, "sched_p is NULL");
  co_sched_t *s = ak_host_alloc(sizeof *s, 1);
  if (!s) return AK_ERR(err, AK_ERR_NO_MEMORY, "scheduler of %zu bytes", sizeof *s);
  s->p = *p;
  s->p.group_capacity_pages = NULL;
  s->p.group_max_running_seqs = NULL;
  s->p.group_max_batch_tokens = NULL;
  s->n_slots = p->max_queue + p->n_groups * p->max_running_seqs;
  uint32_t map_n = 16;
  while (map_n < 2u * (uint32_t)s->n_slots) map_n *= 2;
  s->map_mask = map_n - 1;
  size_t n_pg = co_per_group_elems(s);

  s->groups = ak_host_alloc(sizeof *s->groups * (size_t)p->n_groups, 1);
  if (!s->groups) goto err_free_sched;
  s->slots = ak_host_alloc(sizeof *s->slots * (size_t)s->n_slots, 1);
  if (!s->slots) goto err_free_groups;
  s->map_keys = ak_host_alloc(co_map_bytes(s, sizeof *s->map_keys), 0);
  if (!s->map_keys) goto err_free_slots;
  s->map_vals = ak_host_alloc(co_map_bytes(s, sizeof *s->map_vals), 0);
  if (!s->map_vals) goto err_free_map_keys;
  s->items_all = ak_host_alloc(sizeof *s->items_all * n_pg, 1);
  if (!s->items_all) goto err_free_map_vals;
  s->drops_all = ak_host_alloc(sizeof *s->drops_all * 2 * n_pg, 1);
  if (!s->drops_all) goto err_free_items;
  s->ended = ak_host_alloc(sizeof *s->ended * (size_t)p->max_running_seqs, 1);
  if (!s->ended) goto err_free_drops;

  for (uint32_t i = 0; i <= s->map_mask; i++) s->map_vals[i] = CO_NONE;
  for (int32_t i = 0; i < s->n_slots; i++) {
    s->slots[i].state = CO_REQ_NONE;
    s->slots[i].prev = CO_NONE;
    s->slots[i].next = i + 1 < s->n_slots ? i + 1 : CO_NONE;
  }
  s->free_head = 0;
  s->q_head = s->q_tail = CO_NONE;
  for (int32_t g = 0; g < p->n_groups; g++) {
    co_group_t *G = &s->groups[g];
    G->capacity_pages = p->group_capacity_pages[g];
    G->max_running_seqs = p->group_max_running_seqs ? p->group_max_running_seqs[g] : p->max_running_seqs;
    G->max_batch_tokens = p->group_max_batch_tokens ? p->group_max_batch_tokens[g] : p->max_batch_tokens;
    G->head = G->tail = CO_NONE;
    G->items = s->items_all + (size_t)g * (size_t)p->max_running_seqs;
    G->drops = s->drops_all + (size_t)g * (size_t)p->max_running_seqs;
    G->plan_drops = s->drops_all + n_pg + (size_t)g * (size_t)p->max_running_seqs;
  }
  *sched_p = s;
  return AK_OK;

err_free_drops:
  ak_host_free(s->drops_all, sizeof *s->drops_all * 2 * n_pg);
err_free_items:
  ak_host_free(s->items_all, sizeof *s->items_all * n_pg);
err_free_map_vals:
  ak_host_free(s->map_vals, co_map_bytes(s, sizeof *s->map_vals));
err_free_map_keys:
  ak_host_free(s->map_keys, co_map_bytes(s, sizeof *s->map_keys));
err_free_slots:
  ak_host_free(s->slots, sizeof *s->slots * (size_t)s->n_slots);
err_free_groups:
  ak_host_free(s->groups, sizeof *s->groups * (size_t)p->n_groups);
err_free_sched:
  ak_host_free(s, sizeof *s);
  return AK_ERR(err, AK_ERR_NO_MEMORY, "scheduler tables for %d groups, %d request slots", p->n_groups,
                p->max_queue + p->n_groups * p->max_running_seqs);
}

void co_sched_destroy(co_sched_t *s) {
  if (!s) return;
  size_t n_pg = co_per_group_elems(s);
  ak_host_free(s->ended, sizeof *s->ended * (size_t)s->p.max_running_seqs);
  ak_host_free(s->drops_all, sizeof *s->drops_all * 2 * n_pg);
  ak_host_free(s->items_all, sizeof *s->items_all * n_pg);
  ak_host_free(s->map_vals, co_map_bytes(s, sizeof *s->map_vals));
  ak_host_free(s->map_keys, co_map_bytes(s, sizeof *s->map_keys));
  ak_host_free(s->slots, sizeof *s->slots * (size_t)s->n_slots);
  ak_host_free(s->groups, sizeof *s->groups * (size_t)s->p.n_groups);
  ak_host_free(s, sizeof *s);
}

const char *co_sched_errmsg(const co_sched_t *s) { return s ? s->err.msg : "scheduler is NULL"; }

static ak_status_t co_group_arg(co_sched_t *s, int32_t group_idx) {
  if (group_idx < 0 || group_idx >= s->p.n_groups)
    return AK_ERR(&s->err, AK_ERR_INVALID_ARG, "group_idx=%d outside [0, %d)", group_idx, s->p.n_groups);
  return AK_OK;
}

/* --- leaving --- */

static int co_slot_prefilling(const co_slot_t *r) { return r->n_prefilled_tokens < r->req.n_prompt_tokens; }

/* Takes running slot i off its group: its reservation is free at once; a sequence the
 * worker holds is dropped in the group's next plan when `drop`. */
static void co_slot_leave_group(co_sched_t *s, int32_t i, int drop) {
  co_slot_t *r = &s->slots[i];
  co_group_t *G = &s->groups[r->group_idx];
  co_list_remove(s, &G->head, &G->tail, i);
  G->reserved_pages -= r->reserved_pages;
  G->n_running--;
  if (co_slot_prefilling(r)) G->n_prefilling--;
  if (drop && r->on_worker) {
    /* each pending drop was on the worker at the last plan: at most max_running_seqs */
    assert(G->n_drops < s->p.max_running_seqs);
    G->drops[G->n_drops++] = r->req.id;
  }
  r->reserved_pages = 0;
  r->group_idx = CO_NONE;
}

static void co_slot_free(co_sched_t *s, int32_t i) {
  co_slot_t *r = &s->slots[i];
  co_map_del(s, r->req.id);
  r->state = CO_REQ_NONE;
  r->prev = CO_NONE;
  r->next = s->free_head;
  s->free_head = i;
}

/* --- submit --- */

static int64_t co_max_capacity(const co_sched_t *s) {
  int64_t m = 0;
  for (int32_t g = 0; g < s->p.n_groups; g++)
    if (s->groups[g].capacity_pages > m) m = s->groups[g].capacity_pages;
  return m;
}

ak_status_t co_sched_submit(co_sched_t *s, const co_sched_req_t *req) {
  ak_err_clear(&s->err);
  if (!req) return AK_ERR(&s->err, AK_ERR_INVALID_ARG, "req is NULL");
  long long id = (long long)req->id;
  if (req->n_prompt_tokens < 1)
    return AK_ERR(&s->err, AK_ERR_INVALID_ARG, "request %lld: n_prompt_tokens=%d must be >= 1", id,
                  req->n_prompt_tokens);
  if (req->max_new_tokens < 1)
    return AK_ERR(&s->err, AK_ERR_INVALID_ARG, "request %lld: max_new_tokens=%d must be >= 1", id,
                  req->max_new_tokens);
  if (req->budget_tokens < 0)
    return AK_ERR(&s->err, AK_ERR_INVALID_ARG, "request %lld: budget_tokens=%d is negative", id,
                  req->budget_tokens);
  int32_t have = co_map_find(s, req->id);
  if (have != CO_NONE)
    return AK_ERR(&s->err, AK_ERR_INVALID_ARG, "request id %lld is already %s", id,
                  s->slots[have].state == CO_REQ_QUEUED ? "queued" : "running");
  int64_t n_tokens = (int64_t)req->n_prompt_tokens + req->max_new_tokens;
  if (n_tokens > s->p.max_seq_tokens)
    return AK_ERR(&s->err, AK_ERR_OVER_BUDGET, "request %lld: %d prompt + %d new tokens exceed max_seq_tokens=%d",
                  id, req->n_prompt_tokens, req->max_new_tokens, s->p.max_seq_tokens);
  int64_t peak = co_kv_seq_pages_peak(&s->p.shape, req->budget_tokens, req->n_prompt_tokens, req->max_new_tokens);
  int64_t max_cap = co_max_capacity(s);
  if (peak > max_cap)
    return AK_ERR(&s->err, AK_ERR_OVER_BUDGET,
                  "request %lld needs %lld KV pages at its peak (budget_tokens=%d); the largest group has %lld", id,
                  (long long)peak, req->budget_tokens, (long long)max_cap);
  if (s->n_queued >= s->p.max_queue) {
    s->st.n_refused++;
    return AK_ERR(&s->err, AK_ERR_POOL_FULL, "request %lld: the queue holds max_queue=%d requests", id,
                  s->p.max_queue);
  }
  /* n_queued < max_queue and at most max_running_seqs per group run: a slot is free */
  int32_t i = s->free_head;
  assert(i != CO_NONE);
  co_slot_t *r = &s->slots[i];
  s->free_head = r->next;
  memset(r, 0, sizeof *r);
  r->req = *req;
  r->submit_seq = ++s->next_submit_seq;
  r->state = CO_REQ_QUEUED;
  r->group_idx = CO_NONE;
  r->peak_pages = peak;
  r->steady_pages = co_kv_seq_pages_steady(&s->p.shape, req->budget_tokens, n_tokens);
  co_list_insert(s, &s->q_head, &s->q_tail, CO_NONE, i);
  co_map_put(s, req->id, i);
  s->n_queued++;
  s->st.n_submitted++;
  return AK_OK;
}

/* --- abort --- */

ak_status_t co_sched_abort(co_sched_t *s, int64_t id) {
  ak_err_clear(&s->err);
  int32_t i = co_map_find(s, id);
  if (i == CO_NONE) return AK_ERR(&s->err, AK_ERR_NOT_FOUND, "request %lld is not queued or running", (long long)id);
  if (s->slots[i].state == CO_REQ_QUEUED) {
    co_list_remove(s, &s->q_head, &s->q_tail, i);
    s->n_queued--;
  } else {
    co_slot_leave_group(s, i, 1);
  }
  co_slot_free(s, i);
  s->st.n_aborted++;
  return AK_OK;
}

/* --- admission --- */

/* The live group with a free sequence slot and the most free pages; CO_NONE if none. */
static int32_t co_route(const co_sched_t *s) {
  int32_t best = CO_NONE;
  int64_t best_free = 0;
  for (int32_t g = 0; g < s->p.n_groups; g++) {
    const co_group_t *G = &s->groups[g];
    if (G->dead || G->n_running >= G->max_running_seqs) continue;
    int64_t free_pages = G->capacity_pages - G->reserved_pages;
    if (best == CO_NONE || free_pages > best_free) {
      best = g;
      best_free = free_pages;
    }
  }
  return best;
}

static void co_admit(co_sched_t *s, int32_t i, int32_t g) {
  co_slot_t *r = &s->slots[i];
  co_group_t *G = &s->groups[g];
  co_list_remove(s, &s->q_head, &s->q_tail, i);
  s->n_queued--;
  r->state = CO_REQ_RUNNING;
  r->group_idx = g;
  r->reserved_pages = r->peak_pages;
  r->on_worker = 0;
  r->planned_step = 0;
  co_list_insert(s, &G->head, &G->tail, CO_NONE, i);
  G->reserved_pages += r->peak_pages;
  G->n_running++;
  G->n_prefilling++;
  s->st.n_admitted++;
}

/* FCFS with a skip-ahead allowance that expires after max_wait_us (co_sched.h). */
static void co_admit_queued(co_sched_t *s, int64_t now_us) {
  int64_t max_cap = co_max_capacity(s);
  for (int32_t i = s->q_head, next; i != CO_NONE; i = next) {
    co_slot_t *r = &s->slots[i];
    next = r->next;
    int32_t g = co_route(s);
    if (g == CO_NONE) return; /* no live group has a free sequence slot */
    if (r->peak_pages <= s->groups[g].capacity_pages - s->groups[g].reserved_pages) {
      co_admit(s, i, g);
      continue;
    }
    if (r->peak_pages > max_cap) continue; /* fits no group even empty: blocks no one */
    if (now_us - r->req.arrival_us > s->p.max_wait_us) return; /* its allowance is spent */
  }
}

/* --- planning --- */

/* Tokens of a prompt chunk with `rem` prompt tokens left and `left` tokens of the step:
 * never a one-token chunk of a longer prompt, never one token left behind (kvpool takes
 * a one-token step for a decode step). 0 = none this step. */
static int32_t co_chunk_tokens(int32_t rem, int64_t left) {
  if (rem <= left) return rem;
  int64_t chunk = left;
  if (rem - chunk == 1) chunk--;
  return chunk >= 2 ? (int32_t)chunk : 0;
}

ak_status_t co_sched_plan_step(co_sched_t *s, int32_t group_idx, int64_t now_us, co_sched_plan_t *plan_p) {
  ak_err_clear(&s->err);
  AK_TRY(co_group_arg(s, group_idx));
  if (!plan_p) return AK_ERR(&s->err, AK_ERR_INVALID_ARG, "plan_p is NULL");
  co_group_t *G = &s->groups[group_idx];
  if (G->dead) return AK_ERR(&s->err, AK_ERR_INVALID_ARG, "group %d is dead", group_idx);
  if (G->in_step) return AK_ERR(&s->err, AK_ERR_INVALID_ARG, "group %d has a step in flight", group_idx);

  co_admit_queued(s, now_us);

  memcpy(G->plan_drops, G->drops, sizeof *G->drops * (size_t)G->n_drops);
  G->n_plan_drops = G->n_drops;
  G->n_drops = 0;

  /* every decoding sequence first; prompts share what is left, oldest first */
  int64_t left = (int64_t)G->max_batch_tokens - (G->n_running - G->n_prefilling);
  G->step_no++;
  G->n_items = 0;
  G->n_plan_tokens = 0;
  for (int32_t i = G->head; i != CO_NONE; i = s->slots[i].next) {
    co_slot_t *r = &s->slots[i];
    co_sched_item_t it;
    memset(&it, 0, sizeof it);
    it.id = r->req.id;
    if (co_slot_prefilling(r)) {
      int32_t rem = r->req.n_prompt_tokens - r->n_prefilled_tokens;
      int32_t chunk = co_chunk_tokens(rem, left);
      if (chunk == 0) continue;
      left -= chunk;
      it.pos0 = r->n_prefilled_tokens;
      it.n_tokens = chunk;
      it.is_prefill = 1;
      it.samples = chunk == rem;
    } else {
      it.pos0 = r->req.n_prompt_tokens + r->n_generated_tokens - 1; /* feeds its last sampled token */
      it.n_tokens = 1;
      it.samples = 1;
    }
    it.is_new = !r->on_worker;
    r->on_worker = 1;
    r->item_idx = G->n_items;
    r->planned_step = G->step_no;
    G->items[G->n_items++] = it;
    G->n_plan_tokens += it.n_tokens;
  }
  assert(G->n_plan_tokens <= G->max_batch_tokens);
  G->in_step = G->n_items > 0;
  if (G->in_step) G->n_steps++;

  plan_p->n_drops = G->n_plan_drops;
  plan_p->drops = G->plan_drops;
  plan_p->n_items = G->n_items;
  plan_p->items = G->items;
  plan_p->n_tokens = G->n_plan_tokens;
  return AK_OK;
}

/* --- step results --- */

/* The running slot of group G that the plan in flight fed under this id; CO_NONE for
 * one aborted since (or an id the plan never had). */
static int32_t co_live_item(const co_sched_t *s, const co_group_t *G, int32_t group_idx, int64_t id) {
  int32_t i = co_map_find(s, id);
  if (i == CO_NONE) return CO_NONE;
  const co_slot_t *r = &s->slots[i];
  if (r->state != CO_REQ_RUNNING || r->group_idx != group_idx || r->planned_step != G->step_no) return CO_NONE;
  return i;
}

ak_status_t co_sched_step_done(co_sched_t *s, int32_t group_idx, const co_sched_result_t *results,
                               int32_t n_results, const int64_t **finished_p, int32_t *n_finished_p) {
  ak_err_clear(&s->err);
  AK_TRY(co_group_arg(s, group_idx));
  co_group_t *G = &s->groups[group_idx];
  if (G->dead) return AK_ERR(&s->err, AK_ERR_INVALID_ARG, "group %d is dead", group_idx);
  if (!G->in_step) return AK_ERR(&s->err, AK_ERR_INVALID_ARG, "group %d has no step in flight", group_idx);
  if (n_results < 0 || (n_results > 0 && !results))
    return AK_ERR(&s->err, AK_ERR_INVALID_ARG, "%d results at %p", n_results, (const void *)results);

  /* check everything before changing anything */
  uint64_t epoch = ++s->epoch;
  for (int32_t k = 0; k < n_results; k++) {
    int32_t i = co_live_item(s, G, group_idx, results[k].id);
    if (i == CO_NONE) continue;
    co_slot_t *r = &s->slots[i];
    if (r->mark == epoch)
      return AK_ERR(&s->err, AK_ERR_INVALID_ARG, "results[%d]: request %lld is reported twice", k,
                    (long long)results[k].id);
    r->mark = epoch;
    const co_sched_item_t *it = &G->items[r->item_idx];
    if (results[k].n_sampled_tokens != it->samples)
      return AK_ERR(&s->err, AK_ERR_INVALID_ARG, "results[%d]: request %lld sampled %d tokens; its %s samples %d", k,
                    (long long)results[k].id, results[k].n_sampled_tokens,
                    it->is_prefill ? "prompt chunk" : "decode step", it->samples);
  }
  for (int32_t j = 0; j < G->n_items; j++) {
    int32_t i = co_live_item(s, G, group_idx, G->items[j].id);
    if (i != CO_NONE && s->slots[i].mark != epoch)
      return AK_ERR(&s->err, AK_ERR_INVALID_ARG, "group %d: no result for request %lld", group_idx,
                    (long long)G->items[j].id);
  }

  int32_t n_ended = 0;
  for (int32_t k = 0; k < n_results; k++) {
    int32_t i = co_live_item(s, G, group_idx, results[k].id);
    if (i == CO_NONE) continue;
    co_slot_t *r = &s->slots[i];
    const co_sched_item_t *it = &G->items[r->item_idx];
    if (it->is_prefill) {
      r->n_prefilled_tokens += it->n_tokens;
      if (!co_slot_prefilling(r)) { /* the prompt is in: down to the steady state */
        G->n_prefilling--;
        G->reserved_pages -= r->reserved_pages - r->steady_pages;
        r->reserved_pages = r->steady_pages;
      }
    }
    r->n_generated_tokens += results[k].n_sampled_tokens;
    if (results[k].finished || r->n_generated_tokens >= r->req.max_new_tokens) {
      s->ended[n_ended++] = r->req.id;
      co_slot_leave_group(s, i, 1);
      co_slot_free(s, i);
      s->st.n_finished++;
    }
  }
  G->in_step = 0;
  if (finished_p) *finished_p = s->ended;
  if (n_finished_p) *n_finished_p = n_ended;
  return AK_OK;
}

/* --- groups --- */

/* Puts a running slot the worker never saw back in the queue, in submit order. */
static void co_requeue(co_sched_t *s, int32_t i) {
  co_slot_t *r = &s->slots[i];
  int32_t at = s->q_tail;
  while (at != CO_NONE && s->slots[at].submit_seq > r->submit_seq) at = s->slots[at].prev;
  int32_t before = at == CO_NONE ? s->q_head : s->slots[at].next;
  r->state = CO_REQ_QUEUED;
  r->n_prefilled_tokens = r->n_generated_tokens = 0;
  r->planned_step = 0;
  co_list_insert(s, &s->q_head, &s->q_tail, before, i);
  s->n_queued++;
  s->st.n_requeued++;
}

ak_status_t co_sched_group_dead(co_sched_t *s, int32_t group_idx, const int64_t **failed_p, int32_t *n_failed_p) {
  ak_err_clear(&s->err);
  AK_TRY(co_group_arg(s, group_idx));
  co_group_t *G = &s->groups[group_idx];
  int32_t n_failed = 0;
  if (!G->dead) {
    G->dead = 1;
    G->in_step = 0;
    G->n_items = 0;
    G->n_drops = 0; /* the process that held them is gone */
    for (int32_t i = G->head, next; i != CO_NONE; i = next) {
      next = s->slots[i].next;
      int seen = s->slots[i].on_worker;
      co_slot_leave_group(s, i, 0);
      if (seen) {
        s->ended[n_failed++] = s->slots[i].req.id;
        co_slot_free(s, i);
        s->st.n_failed++;
      } else {
        co_requeue(s, i);
      }
    }
    assert(G->n_running == 0 && G->reserved_pages == 0 && G->n_prefilling == 0);
  }
  if (failed_p) *failed_p = s->ended;
  if (n_failed_p) *n_failed_p = n_failed;
  return AK_OK;
}

ak_status_t co_sched_group_revive(co_sched_t *s, int32_t group_idx, const co_sched_group_caps_t *caps) {
  ak_err_clear(&s->err);
  AK_TRY(co_group_arg(s, group_idx));
  co_group_t *G = &s->groups[group_idx];
  if (!G->dead) return AK_ERR(&s->err, AK_ERR_INVALID_ARG, "group %d is not dead", group_idx);
  if (!caps) return AK_ERR(&s->err, AK_ERR_INVALID_ARG, "group %d: caps is NULL", group_idx);
  if (caps->capacity_pages < 1)
    return AK_ERR(&s->err, AK_ERR_INVALID_ARG, "group %d: capacity_pages=%lld must be >= 1", group_idx,
                  (long long)caps->capacity_pages);
  if (caps->max_running_seqs < 1 || caps->max_running_seqs > s->p.max_running_seqs)
    return AK_ERR(&s->err, AK_ERR_INVALID_ARG, "group %d: max_running_seqs=%d outside [1, %d] (the scheduler's)",
                  group_idx, caps->max_running_seqs, s->p.max_running_seqs);
  if ((int64_t)caps->max_batch_tokens < (int64_t)caps->max_running_seqs + 2)
    return AK_ERR(&s->err, AK_ERR_INVALID_ARG, "group %d: max_batch_tokens=%d must be >= max_running_seqs + 2 = %d",
                  group_idx, caps->max_batch_tokens, caps->max_running_seqs + 2);
  G->capacity_pages = caps->capacity_pages;
  G->max_running_seqs = caps->max_running_seqs;
  G->max_batch_tokens = caps->max_batch_tokens;
  G->dead = 0;
  return AK_OK;
}

/* --- accounting --- */

void co_sched_stats(const co_sched_t *s, co_sched_stats_t *stats_p) {
  *stats_p = s->st;
  stats_p->n_queued = s->n_queued;
  stats_p->n_running = 0;
  for (int32_t g = 0; g < s->p.n_groups; g++) stats_p->n_running += s->groups[g].n_running;
}

ak_status_t co_sched_group_stats(const co_sched_t *s, int32_t group_idx, co_sched_group_stats_t *stats_p) {
  if (group_idx < 0 || group_idx >= s->p.n_groups || !stats_p) return AK_ERR_INVALID_ARG;
  const co_group_t *G = &s->groups[group_idx];
  memset(stats_p, 0, sizeof *stats_p);
  stats_p->capacity_pages = G->capacity_pages;
  stats_p->max_running_seqs = G->max_running_seqs;
  stats_p->max_batch_tokens = G->max_batch_tokens;
  stats_p->reserved_pages = G->reserved_pages;
  stats_p->free_pages = G->capacity_pages - G->reserved_pages;
  stats_p->n_running = G->n_running;
  stats_p->n_prefilling = G->n_prefilling;
  stats_p->n_pending_drops = G->n_drops;
  stats_p->dead = G->dead;
  stats_p->in_step = G->in_step;
  stats_p->n_steps = G->n_steps;
  return AK_OK;
}

void co_sched_req_info(const co_sched_t *s, int64_t id, co_sched_req_info_t *info_p) {
  memset(info_p, 0, sizeof *info_p);
  info_p->group_idx = CO_NONE;
  int32_t i = co_map_find(s, id);
  if (i == CO_NONE) return;
  const co_slot_t *r = &s->slots[i];
  info_p->state = r->state;
  info_p->group_idx = r->group_idx;
  info_p->n_prefilled_tokens = r->n_prefilled_tokens;
  info_p->n_generated_tokens = r->n_generated_tokens;
  info_p->reserved_pages = r->reserved_pages;
  info_p->on_worker = r->on_worker;
}

#define CO_CHECK(cond, ...) \
  do {                      \
    if (!(cond)) return AK_ERR(&s->err, AK_ERR_INTERNAL, __VA_ARGS__); \
  } while (0)

ak_status_t co_sched_check(co_sched_t *s) {
  ak_err_clear(&s->err);
  int32_t n_free = 0, n_live = 0;
  for (int32_t i = s->free_head; i != CO_NONE; i = s->slots[i].next) {
    CO_CHECK(s->slots[i].state == CO_REQ_NONE, "free slot %d is in state %d", i, s->slots[i].state);
    CO_CHECK(++n_free <= s->n_slots, "the free list loops");
  }
  int32_t n_q = 0, prev = CO_NONE;
  for (int32_t i = s->q_head; i != CO_NONE; prev = i, i = s->slots[i].next) {
    const co_slot_t *r = &s->slots[i];
    CO_CHECK(++n_q <= s->n_slots, "the queue loops");
    CO_CHECK(r->state == CO_REQ_QUEUED, "queued slot %d is in state %d", i, r->state);
    CO_CHECK(r->prev == prev, "queue slot %d: prev %d, expected %d", i, r->prev, prev);
    CO_CHECK(prev == CO_NONE || s->slots[prev].submit_seq < r->submit_seq, "queue out of submit order at slot %d", i);
    CO_CHECK(co_map_find(s, r->req.id) == i, "request %lld: the map does not find slot %d", (long long)r->req.id, i);
    CO_CHECK(r->reserved_pages == 0 && r->group_idx == CO_NONE, "queued request %lld holds pages",
             (long long)r->req.id);
  }
  CO_CHECK(prev == s->q_tail, "queue tail %d, expected %d", s->q_tail, prev);
  CO_CHECK(n_q == s->n_queued, "%d queued on the list, n_queued=%d", n_q, s->n_queued);
  n_live += n_q;
  for (int32_t g = 0; g < s->p.n_groups; g++) {
    const co_group_t *G = &s->groups[g];
    int64_t reserved = 0;
    int32_t n_run = 0, n_pre = 0;
    prev = CO_NONE;
    for (int32_t i = G->head; i != CO_NONE; prev = i, i = s->slots[i].next) {
      const co_slot_t *r = &s->slots[i];
      CO_CHECK(++n_run <= s->n_slots, "group %d: the running list loops", g);
      CO_CHECK(r->state == CO_REQ_RUNNING && r->group_idx == g, "group %d: slot %d is in state %d of group %d", g, i,
               r->state, r->group_idx);
      CO_CHECK(r->prev == prev, "group %d: slot %d prev %d, expected %d", g, i, r->prev, prev);
      CO_CHECK(co_map_find(s, r->req.id) == i, "request %lld: the map does not find slot %d", (long long)r->req.id,
               i);
      int pre = co_slot_prefilling(r);
      n_pre += pre;
      CO_CHECK(r->reserved_pages == (pre ? r->peak_pages : r->steady_pages),
               "request %lld reserves %lld pages, expected %lld", (long long)r->req.id, (long long)r->reserved_pages,
               (long long)(pre ? r->peak_pages : r->steady_pages));
      CO_CHECK(r->n_generated_tokens < r->req.max_new_tokens, "request %lld ran past max_new_tokens",
               (long long)r->req.id);
      reserved += r->reserved_pages;
    }
    CO_CHECK(prev == G->tail, "group %d: tail %d, expected %d", g, G->tail, prev);
    CO_CHECK(n_run == G->n_running && n_pre == G->n_prefilling, "group %d: %d running (%d prefilling) on the list, "
             "counts say %d (%d)", g, n_run, n_pre, G->n_running, G->n_prefilling);
    CO_CHECK(reserved == G->reserved_pages, "group %d: reservations sum to %lld, reserved_pages=%lld", g,
             (long long)reserved, (long long)G->reserved_pages);
    CO_CHECK(G->reserved_pages <= G->capacity_pages, "group %d: %lld pages reserved of %lld", g,
             (long long)G->reserved_pages, (long long)G->capacity_pages);
    /* a revive may lower max_running_seqs only of a dead group, which runs nothing */
    CO_CHECK(G->n_running <= G->max_running_seqs, "group %d: %d running of %d slots", g, G->n_running,
             G->max_running_seqs);
    CO_CHECK(!G->dead || (G->n_running == 0 && G->n_drops == 0 && !G->in_step), "dead group %d holds work", g);
    n_live += n_run;
  }
  CO_CHECK(n_free + n_live == s->n_slots, "%d free + %d live slots of %d", n_free, n_live, s->n_slots);
  int32_t n_mapped = 0;
  for (uint32_t k = 0; k <= s->map_mask; k++) n_mapped += s->map_vals[k] != CO_NONE;
  CO_CHECK(n_mapped == n_live, "the map holds %d ids, %d requests are live", n_mapped, n_live);
  return AK_OK;
}
