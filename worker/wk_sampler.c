/* wk_sampler: penalty, top-k, temperature, top-p, min-p and the draw, on the host.
 *
 * One scan of the caller's row (never written) applies the penalty and top-k and fills
 * a candidate array (logit, weight, id) allocated at create; every later step works on
 * a shrinking prefix of that array. At a 49k vocabulary nothing here sorts the
 * vocabulary: a small top_k is a heap filled during the scan, a large one a
 * quickselect, and top-p a quickselect on probability mass. Only ranges of a few dozen
 * candidates are ever sorted. */
#include "wk_sampler.h"

#include <float.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "ak_alloc.h"

typedef struct {
  float logit;  /* after the penalty; NaN already mapped to -inf */
  float weight; /* exp((logit - max_logit) / temperature): 1 for the best candidate */
  int32_t id;
} wk_cand_t;

struct wk_sampler {
  wk_sampler_params_t params;
  int64_t n_vocab;
  uint64_t rng[4]; /* xoshiro256** state */

  wk_cand_t *cands; /* [n_vocab] scratch; sample uses a prefix of it */

  /* Penalty history: a ring of the last repeat_last_n accepted ids. */
  int32_t *history;         /* [repeat_last_n] token ids, NULL when the penalty is off */
  int64_t n_history;        /* filled entries, <= repeat_last_n */
  int64_t history_next_idx; /* slot the next accepted id goes to */
  /* penalised_epoch[id] == epoch marks the tokens this sample penalises (see
   * wk_row_prepare). */
  uint32_t *penalised_epoch; /* [n_vocab], NULL when the penalty is off */
  uint32_t epoch;            /* bumped once per sample that applies the penalty */

  ak_err_t err;
};

/* ---- PRNG: xoshiro256** seeded through splitmix64 (Blackman & Vigna) ---- */

static uint64_t wk_splitmix64(uint64_t *x) {
  uint64_t z = (*x += 0x9e3779b97f4a7c15ull);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

static uint64_t wk_rotl(uint64_t x, int k) { return (x << k) | (x >> (64 - k)); }

static void wk_rng_seed(uint64_t rng[4], uint64_t seed) {
  /* splitmix64 never yields four zero words, which xoshiro cannot leave. */
  for (int i = 0; i < 4; i++) rng[i] = wk_splitmix64(&seed);
}

static uint64_t wk_rng_next(uint64_t s[4]) {
  uint64_t result = wk_rotl(s[1] * 5, 7) * 9;
  uint64_t t = s[1] << 17;
  s[2] ^= s[0];
  s[3] ^= s[1];
  s[1] ^= s[2];
  s[0] ^= s[3];
  s[2] ^= t;
  s[3] = wk_rotl(s[3], 45);
  return result;
}

/* Uniform in [0, 1) with 53 random bits. */
static double wk_rng_uniform(uint64_t s[4]) { return (double)(wk_rng_next(s) >> 11) * 0x1.0p-53; }

/* ---- params and lifetime ---- */

wk_sampler_params_t wk_sampler_params_default(void) {
  wk_sampler_params_t p = {
      .temperature = 1.0f,
      .top_k = 0,
      .top_p = 1.0f,
      .min_p = 0.0f,
      .repetition_penalty = 1.0f,
      .repeat_last_n = 64,
      .seed = 0,
  };
  return p;
}

/* Comparisons are written so that NaN fails them: NaN never passes a range check. */
ak_status_t wk_sampler_params_check(const wk_sampler_params_t *p, int64_t n_vocab, ak_err_t *err) {
  if (!p) return AK_ERR(err, AK_ERR_INVALID_ARG, "params is NULL");
  if (n_vocab < 1 || n_vocab > INT32_MAX)
    return AK_ERR(err, AK_ERR_INVALID_ARG, "n_vocab=%lld outside [1, %d]", (long long)n_vocab,
                  INT32_MAX);
  if (!(isfinite(p->temperature) && p->temperature >= 0.0f))
    return AK_ERR(err, AK_ERR_INVALID_ARG, "temperature=%g must be finite and >= 0",
                  (double)p->temperature);
  if (p->top_k < 0) return AK_ERR(err, AK_ERR_INVALID_ARG, "top_k=%d must be >= 0 (0 = off)", p->top_k);
  if (!(p->top_p > 0.0f && p->top_p <= 1.0f))
    return AK_ERR(err, AK_ERR_INVALID_ARG, "top_p=%g outside (0, 1] (1 = off)", (double)p->top_p);
  if (!(p->min_p >= 0.0f && p->min_p < 1.0f))
    return AK_ERR(err, AK_ERR_INVALID_ARG, "min_p=%g outside [0, 1) (0 = off)", (double)p->min_p);
  if (!(isfinite(p->repetition_penalty) && p->repetition_penalty > 0.0f))
    return AK_ERR(err, AK_ERR_INVALID_ARG, "repetition_penalty=%g must be finite and > 0 (1 = off)",
                  (double)p->repetition_penalty);
  if (p->repeat_last_n < 0 || p->repeat_last_n > WK_SAMPLER_MAX_REPEAT_LAST_N)
    return AK_ERR(err, AK_ERR_INVALID_ARG, "repeat_last_n=%d outside [0, %d]", p->repeat_last_n,
                  WK_SAMPLER_MAX_REPEAT_LAST_N);
  return AK_OK;
}

static int wk_penalty_on(const wk_sampler_params_t *p) {
  return p->repetition_penalty != 1.0f && p->repeat_last_n > 0;
}

static size_t wk_cands_bytes(int64_t n_vocab) { return sizeof(wk_cand_t) * (size_t)n_vocab; }
static size_t wk_history_bytes(const wk_sampler_params_t *p) {
  return sizeof(int32_t) * (size_t)p->repeat_last_n;
}
static size_t wk_epoch_bytes(int64_t n_vocab) { return sizeof(uint32_t) * (size_t)n_vocab; }

ak_status_t wk_sampler_create(const wk_sampler_params_t *params, int64_t n_vocab, ak_err_t *err,
                              wk_sampler_t **s_p) {
  wk_sampler_params_t p = params ? *params : wk_sampler_params_default();
  AK_TRY(wk_sampler_params_check(&p, n_vocab, err));
  if (!s_p) return AK_ERR(err, AK_ERR_INVALID_ARG, "s_p is NULL");

  wk_sampler_t *s = ak_host_alloc(sizeof *s, 1);
  if (!s) return AK_ERR(err, AK_ERR_NO_MEMORY, "sampler struct");
  s->params = p;
  s->n_vocab = n_vocab;

  s->cands = ak_host_alloc(wk_cands_bytes(n_vocab), 0);
  if (!s->cands) goto err_free_sampler;
  if (wk_penalty_on(&p)) { /* without the penalty the history has no reader */
    s->history = ak_host_alloc(wk_history_bytes(&p), 0);
    if (!s->history) goto err_free_cands;
    s->penalised_epoch = ak_host_alloc(wk_epoch_bytes(n_vocab), 1);
    if (!s->penalised_epoch) goto err_free_history;
  }
  wk_sampler_reset(s);
  *s_p = s;
  return AK_OK;

err_free_history:
  ak_host_free(s->history, wk_history_bytes(&p));
err_free_cands:
  ak_host_free(s->cands, wk_cands_bytes(n_vocab));
err_free_sampler:
  ak_host_free(s, sizeof *s);
  return AK_ERR(err, AK_ERR_NO_MEMORY, "scratch for n_vocab=%lld repeat_last_n=%d",
                (long long)n_vocab, p.repeat_last_n);
}

void wk_sampler_destroy(wk_sampler_t *s) {
  if (!s) return;
  if (s->penalised_epoch) ak_host_free(s->penalised_epoch, wk_epoch_bytes(s->n_vocab));
  if (s->history) ak_host_free(s->history, wk_history_bytes(&s->params));
  ak_host_free(s->cands, wk_cands_bytes(s->n_vocab));
  ak_host_free(s, sizeof *s);
}

void wk_sampler_reset(wk_sampler_t *s) {
  if (!s) return;
  s->n_history = 0;
  s->history_next_idx = 0;
  wk_rng_seed(s->rng, s->params.seed);
}

const char *wk_sampler_last_error(const wk_sampler_t *s) { return s ? s->err.msg : ""; }

const wk_sampler_params_t *wk_sampler_params(const wk_sampler_t *s) { return &s->params; }

int64_t wk_sampler_history(const wk_sampler_t *s, int32_t *ids, int64_t cap) {
  if (!s || !s->history) return 0;
  const int64_t ring = s->params.repeat_last_n, n = s->n_history;
  const int64_t m = cap < n ? (cap > 0 ? cap : 0) : n;
  /* The oldest id sits n slots behind the next free one; skip the n - m oldest. */
  int64_t idx = (s->history_next_idx - n + ring) % ring + (n - m);
  for (int64_t i = 0; i < m; i++) ids[i] = s->history[(idx + i) % ring];
  return n;
}

ak_status_t wk_sampler_accept(wk_sampler_t *s, int32_t token_id) {
  if (!s) return AK_ERR_INVALID_ARG;
  if (token_id < 0 || token_id >= s->n_vocab)
    return AK_ERR(&s->err, AK_ERR_INVALID_ARG, "token_id=%d outside [0, %lld)", token_id,
                  (long long)s->n_vocab);
  if (!s->history) return AK_OK;
  s->history[s->history_next_idx] = token_id;
  s->history_next_idx = (s->history_next_idx + 1) % s->params.repeat_last_n;
  if (s->n_history < s->params.repeat_last_n) s->n_history++;
  return AK_OK;
}

/* ---- candidate ordering and selection ---- */

/* The one candidate order: higher logit first, lower id first among equal logits.
 * Logits here are never NaN, so this is a strict total order. */
static inline int wk_cand_before(const wk_cand_t *a, const wk_cand_t *b) {
  return a->logit > b->logit || (a->logit == b->logit && a->id < b->id);
}

static int wk_cand_cmp(const void *pa, const void *pb) {
  const wk_cand_t *a = pa, *b = pb;
  if (wk_cand_before(a, b)) return -1;
  return wk_cand_before(b, a) ? 1 : 0;
}

static void wk_cand_sort(wk_cand_t *c, int64_t n) {
  if (n > 1) qsort(c, (size_t)n, sizeof *c, wk_cand_cmp);
}

static inline void wk_cand_swap(wk_cand_t *a, wk_cand_t *b) {
  wk_cand_t tmp = *a;
  *a = *b;
  *b = tmp;
}

static int64_t wk_cand_median3_idx(const wk_cand_t *c, int64_t i, int64_t j, int64_t k) {
  if (wk_cand_before(&c[i], &c[j])) {
    if (wk_cand_before(&c[j], &c[k])) return j;
    return wk_cand_before(&c[i], &c[k]) ? k : i;
  }
  if (wk_cand_before(&c[i], &c[k])) return i;
  return wk_cand_before(&c[j], &c[k]) ? k : j;
}

/* Quickselect gives up after this many rounds per doubling of the range and sorts the
 * rest, so a hostile row cannot make it quadratic. */
static int wk_select_depth_cap(int64_t n) {
  int depth = 8;
  for (int64_t m = n; m > 1; m >>= 1) depth += 2;
  return depth;
}

/* Moves the n_top best of c[0, n) into c[0, n_top), unordered, 0 < n_top < n.
 * Hoare's FIND as Wirth writes it: expected O(n). Used when top_k is too large for the
 * heap to pay off. */
static void wk_cand_select(wk_cand_t *c, int64_t n, int64_t n_top) {
  const int64_t split_idx = n_top - 1; /* ends up holding the n_top-th best */
  int64_t lo = 0, hi = n - 1;
  int depth_left = wk_select_depth_cap(n);
  while (lo < hi) {
    if (depth_left-- == 0) {
      wk_cand_sort(c + lo, hi - lo + 1);
      return;
    }
    /* The pivot is a copy of an element of [lo, hi], which keeps both scans in range. */
    const wk_cand_t pivot = c[wk_cand_median3_idx(c, lo, lo + (hi - lo) / 2, hi)];
    int64_t i = lo, j = hi;
    do {
      while (wk_cand_before(&c[i], &pivot)) i++;
      while (wk_cand_before(&pivot, &c[j])) j--;
      if (i <= j) wk_cand_swap(&c[i++], &c[j--]);
    } while (i <= j);
    if (j < split_idx) lo = i;
    if (split_idx < i) hi = j;
  }
}

/* Top-p without sorting: reorders c[0, n) so that c[0, n_cut) is the smallest prefix of
 * the candidate order whose weight reaches `mass_needed`, and returns n_cut (n when the
 * whole array falls short). c[0, n_cut) is left unordered: the draw does not need it
 * sorted. A quickselect on mass instead of rank: each round partitions around a pivot
 * and keeps only the side where the running mass crosses the threshold, so it is
 * expected O(n) even when the nucleus is most of a 49k vocabulary, where sorting the
 * nucleus would cost milliseconds. */
static int64_t wk_cand_select_mass(wk_cand_t *c, int64_t n, double mass_needed) {
  enum { WK_SORT_BELOW = 32 }; /* ranges this short are sorted and scanned */
  int64_t lo = 0, hi = n;      /* undecided: [lo, hi); c[0, lo) is kept */
  double mass_kept = 0.0;      /* weight of c[0, lo) */
  int depth_left = wk_select_depth_cap(n);
  while (hi - lo > WK_SORT_BELOW && depth_left-- > 0) {
    int64_t p_idx = wk_cand_median3_idx(c, lo, lo + (hi - lo) / 2, hi - 1);
    wk_cand_swap(&c[p_idx], &c[hi - 1]);
    const wk_cand_t pivot = c[hi - 1];
    /* Lomuto: candidates before the pivot go to [lo, m); the order is strict, so
     * nothing ties with the pivot. */
    int64_t m = lo;
    double mass_before_pivot = 0.0;
    for (int64_t i = lo; i < hi - 1; i++) {
      if (wk_cand_before(&c[i], &pivot)) {
        mass_before_pivot += c[i].weight;
        wk_cand_swap(&c[i], &c[m++]);
      }
    }
    wk_cand_swap(&c[m], &c[hi - 1]);
    if (mass_kept + mass_before_pivot >= mass_needed) {
      hi = m;
    } else if (mass_kept + mass_before_pivot + pivot.weight >= mass_needed) {
      return m + 1;
    } else {
      mass_kept += mass_before_pivot + pivot.weight;
      lo = m + 1;
    }
  }
  wk_cand_sort(c + lo, hi - lo);
  for (int64_t i = lo; i < hi; i++) {
    mass_kept += c[i].weight;
    if (mass_kept >= mass_needed) return i + 1;
  }
  /* Only rounding gets here when hi < n: a partition sum reached the mass that this
   * sum, added in another order, just missed. [0, hi) is still the right set. */
  return hi;
}

/* ---- reading the row ---- */

/* A logits row as the filters see it: NaN is -inf, +inf is FLT_MAX (so max - v stays
 * finite in the softmax), and tokens marked in this sample's epoch are penalised. */
typedef struct {
  const float *logits;   /* [n_vocab] f32, the caller's row */
  const uint32_t *marks; /* [n_vocab] epoch stamps, NULL when no token is penalised */
  uint32_t epoch;
  float penalty;
} wk_row_t;

static inline float wk_row_logit(const wk_row_t *r, int64_t id) {
  float v = r->logits[id];
  if (isnan(v)) return -INFINITY;
  if (v == INFINITY) v = FLT_MAX;
  if (r->marks && r->marks[id] == r->epoch && v != -INFINITY) {
    v = v > 0.0f ? v / r->penalty : v * r->penalty;
    /* A finite logit stays finite: overflow to -inf would read as "excluded" and could
     * turn a valid row into an invalid one. */
    if (isinf(v)) v = v > 0.0f ? FLT_MAX : -FLT_MAX;
  }
  return v;
}

/* Stamps the history's tokens with a fresh epoch. Stamps instead of a cleared bitmap:
 * the history is short and clearing n_vocab entries per sample would cost more. Each
 * token is read once per scan, so a token seen several times is penalised once. */
static wk_row_t wk_row_prepare(wk_sampler_t *s, const float *logits) {
  wk_row_t r = {.logits = logits, .marks = NULL, .epoch = 0, .penalty = s->params.repetition_penalty};
  if (!s->penalised_epoch || s->n_history == 0) return r;
  if (++s->epoch == 0) { /* wrapped after 2^32 samples: old stamps could collide */
    memset(s->penalised_epoch, 0, wk_epoch_bytes(s->n_vocab));
    s->epoch = 1;
  }
  for (int64_t h = 0; h < s->n_history; h++) s->penalised_epoch[s->history[h]] = s->epoch;
  r.marks = s->penalised_epoch;
  r.epoch = s->epoch;
  return r;
}

/* Greedy straight off the row: the first strict maximum is the lowest id among ties.
 * Returns -1 when no logit is finite. */
static int64_t wk_row_argmax(const wk_row_t *r, int64_t n_vocab) {
  int64_t best_id = -1;
  float best = -INFINITY;
  for (int64_t id = 0; id < n_vocab; id++) {
    float v = wk_row_logit(r, id);
    if (v > best) {
      best = v;
      best_id = id;
    }
  }
  return best_id;
}

/* Largest top_k served by the heap. Below it, one pass over the row with a k-entry
 * min-heap costs about as much as the argmax (almost every token fails the compare
 * with the heap's worst entry); above it, copying the row and quickselecting wins. */
enum { WK_HEAP_TOP_K_MAX = 1024 };

static void wk_heap_sift_up(wk_cand_t *h, int64_t i) {
  while (i > 0) {
    int64_t parent = (i - 1) / 2;
    if (!wk_cand_before(&h[parent], &h[i])) return;
    wk_cand_swap(&h[parent], &h[i]);
    i = parent;
  }
}

static void wk_heap_sift_down(wk_cand_t *h, int64_t n, int64_t i) {
  for (;;) {
    int64_t child = 2 * i + 1, worst = i;
    if (child < n && wk_cand_before(&h[worst], &h[child])) worst = child;
    if (child + 1 < n && wk_cand_before(&h[worst], &h[child + 1])) worst = child + 1;
    if (worst == i) return;
    wk_cand_swap(&h[i], &h[worst]);
    i = worst;
  }
}

/* Fills c with the k best finite candidates of the row (fewer if fewer are finite),
 * as a heap with the worst at c[0]; returns how many. */
static int64_t wk_row_top_k_heap(const wk_row_t *r, int64_t n_vocab, int64_t k, wk_cand_t *c) {
  int64_t n = 0;
  for (int64_t id = 0; id < n_vocab; id++) {
    float v = wk_row_logit(r, id);
    if (v == -INFINITY) continue;
    if (n < k) {
      c[n] = (wk_cand_t){.logit = v, .weight = 0.0f, .id = (int32_t)id};
      wk_heap_sift_up(c, n++);
    } else if (v > c[0].logit) {
      /* Equal logits lose: ids rise through the scan, so the newcomer has the higher
       * id and comes later in the candidate order. */
      c[0] = (wk_cand_t){.logit = v, .weight = 0.0f, .id = (int32_t)id};
      wk_heap_sift_down(c, k, 0);
    }
  }
  return n;
}

/* Copies the finite candidates of the row into c, in id order; returns how many. */
static int64_t wk_row_load(const wk_row_t *r, int64_t n_vocab, wk_cand_t *c) {
  int64_t n = 0;
  for (int64_t id = 0; id < n_vocab; id++) {
    float v = wk_row_logit(r, id);
    if (v != -INFINITY) c[n++] = (wk_cand_t){.logit = v, .weight = 0.0f, .id = (int32_t)id};
  }
  return n;
}

/* ---- sampling ---- */

ak_status_t wk_sampler_sample(wk_sampler_t *s, const float *logits, int32_t *token_p,
                              float *logprob_p) {
  if (!s) return AK_ERR_INVALID_ARG;
  if (!logits || !token_p)
    return AK_ERR(&s->err, AK_ERR_INVALID_ARG, "logits=%p token_p=%p must not be NULL",
                  (const void *)logits, (void *)token_p);
  const wk_sampler_params_t *p = &s->params;
  const wk_row_t row = wk_row_prepare(s, logits);

  if (p->temperature == 0.0f) {
    int64_t best_id = wk_row_argmax(&row, s->n_vocab);
    if (best_id < 0) goto err_no_finite;
    *token_p = (int32_t)best_id;
    if (logprob_p) *logprob_p = 0.0f;
    return AK_OK;
  }

  /* Penalty and top-k: the candidates c[0, n). */
  wk_cand_t *c = s->cands;
  int64_t n;
  if (p->top_k > 0 && p->top_k <= WK_HEAP_TOP_K_MAX && p->top_k < s->n_vocab) {
    n = wk_row_top_k_heap(&row, s->n_vocab, p->top_k, c);
  } else {
    n = wk_row_load(&row, s->n_vocab, c);
    if (p->top_k > 0 && p->top_k < n) {
      wk_cand_select(c, n, p->top_k);
      n = p->top_k;
    }
  }
  if (n == 0) goto err_no_finite;

  /* Softmax with temperature, unnormalised: weights relative to the best candidate. */
  float max_logit = c[0].logit;
  for (int64_t i = 1; i < n; i++) max_logit = c[i].logit > max_logit ? c[i].logit : max_logit;
  const float temperature = p->temperature;
  double mass_all = 0.0;
  for (int64_t i = 0; i < n; i++) {
    /* Divide rather than multiply by 1/T: a subnormal T would make 1/T infinite and
     * 0 * inf a NaN for the best token. */
    c[i].weight = expf((c[i].logit - max_logit) / temperature);
    mass_all += c[i].weight;
  }

  /* Top-p then min-p. Both keep a prefix of the candidate order (weights are monotone
   * in logits), so the final set is the shorter prefix and the two commute as long as
   * top-p measures its mass against the whole post-top-k distribution.
   * One threshold pass runs first: min-p is such a threshold, and so is a bound that
   * top-p can never cross: the candidates lighter than (1 - top_p) * mass / n together
   * weigh less than (1 - top_p) * mass, so the prefix without them already reaches
   * top_p * mass. Dropping them leaves top-p's answer unchanged and usually leaves a
   * small fraction of the vocabulary to partition. */
  double w_floor = p->min_p;
  if (p->top_p < 1.0f) {
    double top_p_floor = (1.0 - (double)p->top_p) * mass_all / (double)n;
    w_floor = top_p_floor > w_floor ? top_p_floor : w_floor;
  }
  int64_t n_final = n;
  if (w_floor > 0.0) {
    int64_t n_kept = 0;
    for (int64_t i = 0; i < n; i++) {
      /* Branch-free (which tokens pass is unpredictable), reading c[i] before the
       * store: re-reading it after the store to c[n_kept], often the same slot, made
       * each iteration wait for the previous one and ran about 10x slower. The best
       * candidate (weight 1) always stays. */
      const wk_cand_t cand = c[i];
      c[n_kept] = cand;
      n_kept += (double)cand.weight >= w_floor;
    }
    n_final = n_kept;
  }
  if (p->top_p < 1.0f) n_final = wk_cand_select_mass(c, n_final, (double)p->top_p * mass_all);

  double mass_final = mass_all;
  if (n_final != n) {
    mass_final = 0.0;
    for (int64_t i = 0; i < n_final; i++) mass_final += c[i].weight;
  }

  /* Inverse CDF over the final set. Rounding can leave the target at or above the
   * running sum at the end; the last candidate with weight then takes it. The best
   * candidate has weight 1, so one exists. */
  const double target = wk_rng_uniform(s->rng) * mass_final;
  double mass = 0.0;
  int64_t chosen_idx = -1;
  for (int64_t i = 0; i < n_final; i++) {
    mass += c[i].weight;
    if (target < mass) {
      chosen_idx = i;
      break;
    }
  }
  if (chosen_idx < 0)
    for (chosen_idx = n_final - 1; chosen_idx > 0 && c[chosen_idx].weight == 0.0f; chosen_idx--) {
    }

  *token_p = c[chosen_idx].id;
  if (logprob_p)
    *logprob_p = (float)(((double)c[chosen_idx].logit - (double)max_logit) / (double)temperature -
                         log(mass_final));
  return AK_OK;

err_no_finite:
  return AK_ERR(&s->err, AK_ERR_INVALID_ARG, "no finite logit among n_vocab=%lld (all NaN or -inf)",
                (long long)s->n_vocab);
}
