/* bench_estimator: how well each ArkVale digest kind ranks pages — the paper's Fig. 7
 * (top-k recall accuracy of the importance estimate) on real decode traces of a model.
 *
 * It prefills --ctx tokens of natural text into a full-cache pool, then greedy-decodes
 * --steps tokens. After each decode step, for every layer l >= --skip-layers, it reads
 * the layer's keys and the step's query back from the KV pool and compares two rankings
 * of the filled pages:
 *
 *   true       per query head h: p_h = softmax_t(q_h . k_t / sqrt(d)) over every token of
 *              the sequence; page importance = mean over h of max_{t in page} p_h(t)
 *   estimated  kv_digest_build of the page's keys, kv_digest_score_pages (mean over heads)
 *
 * recall accuracy(k) = |true top-k  ∩  estimated top-k| / k, averaged over (layer, step).
 * Three settings are scored:
 *   head mean, all pages     the rankings above over every filled page (what the pool's
 *                            track_accuracy counts)
 *   head mean, middle pages  what the arkvale policy actually selects among: not page 0
 *                            (the sink, which usually dominates) and not the window (the
 *                            n_window_pages - 1 = 1 filled page before the partial one)
 *   per query head           the paper's definition for a single query vector: for each
 *                            head h, true = max_{t in page} q_h . k_t (softmax is monotone
 *                            within a head), estimate = kv_digest_score_heads for h; the
 *                            accuracy is averaged over heads too. All pages.
 * The head-mean settings mix heads differently on the two sides (probabilities on the
 * true side, raw scores on the estimate), which the per-head setting avoids.
 *
 * --device cuda runs the model on the GPU (wk_engine, bf16 weights, f16 pages in device
 * memory) and reads the same things back: the keys through the pool's page_ops, the
 * queries from the pool, which keeps them when it is an arkvale pool with no budget --
 * every page resident and attended, exactly the full cache, but the forward brings each
 * layer's queries to the host for it (a full pool on the GPU keeps none). Everything
 * measured is then computed on the host by the same code as for the CPU run.
 * --forced decodes the text's next tokens instead of the greedy ones, so that runs on
 * two devices see the same tokens and differ only by their arithmetic.
 *
 * It is a measurement tool, not a policy: it never changes the cache. The keys it digests
 * are read back from the pool (f16 storage rounded), as the pool's own digests would see
 * them up to that rounding. Also checked on every page: sphere-max and cuboid-max scores
 * are upper bounds of the mean over heads of max_t q_h . k_t (violations are reported and
 * make the exit status 1).
 *
 * Exit status: 0 ok, 1 a runtime failure, 2 a bad flag. */
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#include "ak_alloc.h"
#include "bench_device.h"
#include "bench_util.h"
#include "co_tokenizer.h"
#include "kv_digest.h"
#include "kvpool.h"
#include "wk_engine.h"
#include "wk_forward.h"
#include "wk_model.h"

#define EST_MAX_K 256
#define EST_MAX_TEXTS 32
#define EST_N_MODES 3 /* see est_mode_names */
#define EST_WINDOW_FILLED_PAGES 1 /* the pool's default window of 2 pages minus the partial one */

enum { EST_MODE_PER_HEAD = 0, EST_MODE_ALL = 1, EST_MODE_MIDDLE = 2 };
static const char *const est_mode_names[EST_N_MODES] = {
    "per query head, all pages", "head mean, all pages", "head mean, middle pages (no sink, no window)"};

/* The default prompt text: the design notes beside the checkout, then the repository's
 * own documentation. Missing files are skipped (the repository docs alone hold ~5k
 * tokens). */
typedef struct {
  const char *model;
  const char *device;
  int64_t ctx_tokens;
  int64_t n_steps;
  int64_t page_tokens;
  int64_t skip_layers;
  int64_t k_max;
  int64_t n_threads;
  const char *texts[EST_MAX_TEXTS];
  int n_texts;
  const char *out_path; /* NULL: bench/results/estimator-<date>.md */
  int no_write;
  int forced;           /* decode the text's next tokens, not the greedy ones */
} est_args_t;

/* ------------------------------------------------------------------ flags */

static void est_usage(FILE *f) {
  fprintf(f,
          "usage: bench_estimator [options]   (run from the repository root)\n"
          "  --model PATH        GGUF model (default models/SmolLM2-135M-Instruct.Q4_1.gguf)\n"
          "  --device cpu|cuda   backend (default cpu; cuda: the model on the GPU, measured on the host)\n"
          "  --ctx N             prompt tokens prefilled before decoding (default 2048)\n"
          "  --steps N           greedy decode steps, each one measured (default 32)\n"
          "  --forced            decode the text's next tokens instead of the greedy ones (the same\n"
          "                      tokens on every device: compare a CPU and a GPU run)\n"
          "  --page-tokens N     tokens per page, 1..256 (default 32)\n"
          "  --skip-layers N     layers 0..N-1 not measured (the full layers; default 2)\n"
          "  --k-max N           largest k, 1..%d (default 40)\n"
          "  --threads N         CPU threads, 0 = all online (default 2)\n"
          "  --text PATH         prompt text file, repeatable, concatenated in order (default:\n"
          "                      ../shared/*.md design notes, then the repository's docs)\n"
          "  --out PATH          results file (default bench/results/estimator-<date>.md)\n"
          "  --no-write          print only, write no results file\n",
          EST_MAX_K);
}

/* Strict integer: the whole string, in [lo, hi]. Prints a message naming the flag. */
static int est_parse_int(const char *flag, const char *v, int64_t lo, int64_t hi, int64_t *out) {
  if (!v) {
    fprintf(stderr, "bench_estimator: %s needs a value\n", flag);
    return -1;
  }
  char *end = NULL;
  errno = 0;
  long long x = strtoll(v, &end, 10);
  if (errno || end == v || *end || x < lo || x > hi) {
    fprintf(stderr, "bench_estimator: %s '%s': expected an integer in [%lld, %lld]\n", flag, v, (long long)lo,
            (long long)hi);
    return -1;
  }
  *out = x;
  return 0;
}

/* 0 ok, 1 help printed, -1 bad flag. */
static int est_parse_args(int argc, char **argv, est_args_t *a) {
  memset(a, 0, sizeof *a);
  a->model = "models/SmolLM2-135M-Instruct.Q4_1.gguf";
  a->device = "cpu";
  a->ctx_tokens = 2048;
  a->n_steps = 32;
  a->page_tokens = 32;
  a->skip_layers = 2;
  a->k_max = 40;
  a->n_threads = 2;
  for (int i = 1; i < argc; i++) {
    const char *f = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
    int r = 0;
    if (!strcmp(f, "-h") || !strcmp(f, "--help")) return est_usage(stdout), 1;
    if (!strcmp(f, "--no-write")) {
      a->no_write = 1;
      continue;
    }
    if (!strcmp(f, "--forced")) {
      a->forced = 1;
      continue;
    }
    if (strcmp(f, "--model") && strcmp(f, "--device") && strcmp(f, "--ctx") && strcmp(f, "--steps") &&
        strcmp(f, "--page-tokens") && strcmp(f, "--skip-layers") && strcmp(f, "--k-max") &&
        strcmp(f, "--threads") && strcmp(f, "--text") && strcmp(f, "--out")) {
      fprintf(stderr, "bench_estimator: unknown flag '%s'\n", f);
      return -1;
    }
    if (!v || !*v) {
      fprintf(stderr, "bench_estimator: %s needs a value\n", f);
      return -1;
    }
    i++;
    if (!strcmp(f, "--model")) a->model = v;
    else if (!strcmp(f, "--out")) a->out_path = v;
    else if (!strcmp(f, "--device")) {
      if (strcmp(v, "cpu") && strcmp(v, "cuda")) {
        fprintf(stderr, "bench_estimator: --device '%s': expected cpu or cuda\n", v);
        return -1;
      }
      a->device = v;
    } else if (!strcmp(f, "--text")) {
      if (a->n_texts == EST_MAX_TEXTS) {
        fprintf(stderr, "bench_estimator: --text given more than %d times\n", EST_MAX_TEXTS);
        return -1;
      }
      a->texts[a->n_texts++] = v;
    } else if (!strcmp(f, "--ctx")) r = est_parse_int(f, v, 2, 1 << 20, &a->ctx_tokens);
    else if (!strcmp(f, "--steps")) r = est_parse_int(f, v, 1, 1 << 20, &a->n_steps);
    else if (!strcmp(f, "--page-tokens")) r = est_parse_int(f, v, 1, 256, &a->page_tokens);
    else if (!strcmp(f, "--skip-layers")) r = est_parse_int(f, v, 0, 1 << 10, &a->skip_layers);
    else if (!strcmp(f, "--k-max")) r = est_parse_int(f, v, 1, EST_MAX_K, &a->k_max);
    else if (!strcmp(f, "--threads")) r = est_parse_int(f, v, 0, 1024, &a->n_threads);
    if (r < 0) return -1;
  }
  return 0;
}

/* ------------------------------------------------------------------ the prompt */

/* ------------------------------------------------------------------ measurement */

typedef struct {
  float score;
  int32_t idx;
} est_rank_t;

/* Descending score; ties by page index so the ranking is deterministic. */
static int est_cmp_rank(const void *pa, const void *pb) {
  const est_rank_t *a = pa, *b = pb;
  if (a->score != b->score) return a->score < b->score ? 1 : -1;
  return (a->idx > b->idx) - (a->idx < b->idx);
}

typedef struct {
  /* shapes */
  int32_t n_layers, n_heads, n_kv_heads, head_dim, page_tokens, skip_layers, k_max;
  int64_t max_tokens, max_pages;
  int32_t digest_floats[KV_DIGEST_N_KINDS];
  /* scratch */
  float *keys;       /* [max_tokens, n_kv_heads, head_dim] f32: one layer's keys */
  float *q;          /* [n_heads, head_dim] f32 */
  float *probs;      /* [max_tokens] f32: one head's softmax */
  float *true_imp;   /* [max_pages] */
  float *max_dot;    /* [max_pages]: mean over heads of max_t q_h . k_t (bound check) */
  float *head_max_dot; /* [n_heads][max_pages]: max_t q_h . k_t */
  float *est;        /* [KV_DIGEST_N_KINDS][max_pages] */
  float *est_heads;  /* [max_pages][n_heads]: one kind's per-head scores */
  float *digests[KV_DIGEST_N_KINDS]; /* per kind [n_layers][max_pages][n_kv_heads][floats] */
  int64_t *n_digested;               /* [n_layers] pages digested so far */
  est_rank_t *rank;                  /* [max_pages] */
  int32_t *true_pos, *est_pos;       /* [max_pages] rank positions within the candidate set */
  int64_t *hist;                     /* [max_pages + 1] */
  /* results: sums of accuracy over (layer, step) */
  double *acc;        /* [EST_N_MODES][KV_DIGEST_N_KINDS][k_max + 1] */
  int64_t *n_obs;     /* [EST_N_MODES][k_max + 1] observations with k <= candidates */
  double *chance;     /* [EST_N_MODES][k_max + 1]: sum of k / candidates (a random ranking) */
  double *layer_top1; /* [EST_N_MODES][n_layers][KV_DIGEST_N_KINDS]: top-1 accuracy sum */
  int64_t sink_top1;     /* (layer, step) where page 0 is the true top-1 (all pages) */
  int64_t n_selections;  /* (layer, step) pairs measured */
  int64_t bound_checks, bound_violations;
  double worst_violation;
} est_state_t;

static void est_state_free(est_state_t *s) {
  free(s->keys);
  free(s->q);
  free(s->probs);
  free(s->true_imp);
  free(s->max_dot);
  free(s->head_max_dot);
  free(s->est);
  free(s->est_heads);
  for (int d = 0; d < KV_DIGEST_N_KINDS; d++) free(s->digests[d]);
  free(s->n_digested);
  free(s->rank);
  free(s->true_pos);
  free(s->est_pos);
  free(s->hist);
  free(s->acc);
  free(s->n_obs);
  free(s->chance);
  free(s->layer_top1);
}

static int est_state_init(est_state_t *s, const wk_hparams_t *hp, const est_args_t *a, int64_t max_tokens) {
  memset(s, 0, sizeof *s);
  s->n_layers = hp->n_layers;
  s->n_heads = hp->n_heads;
  s->n_kv_heads = hp->n_kv_heads;
  s->head_dim = hp->head_dim;
  s->page_tokens = (int32_t)a->page_tokens;
  s->skip_layers = (int32_t)a->skip_layers;
  s->k_max = (int32_t)a->k_max;
  s->max_tokens = max_tokens;
  s->max_pages = max_tokens / a->page_tokens;
  size_t kv_row = (size_t)hp->n_kv_heads * (size_t)hp->head_dim, np = (size_t)s->max_pages;
  s->keys = malloc(sizeof(float) * (size_t)max_tokens * kv_row);
  s->q = malloc(sizeof(float) * (size_t)hp->n_heads * (size_t)hp->head_dim);
  s->probs = malloc(sizeof(float) * (size_t)max_tokens);
  s->true_imp = malloc(sizeof(float) * np);
  s->max_dot = malloc(sizeof(float) * np);
  s->head_max_dot = malloc(sizeof(float) * np * (size_t)hp->n_heads);
  s->est = malloc(sizeof(float) * np * KV_DIGEST_N_KINDS);
  s->est_heads = malloc(sizeof(float) * np * (size_t)hp->n_heads);
  int ok = s->keys && s->q && s->probs && s->true_imp && s->max_dot && s->head_max_dot && s->est && s->est_heads;
  for (int d = 0; d < KV_DIGEST_N_KINDS && ok; d++) {
    s->digest_floats[d] = kv_digest_floats((kv_digest_kind_t)d, hp->head_dim);
    if (s->digest_floats[d] < 1) return -1;
    s->digests[d] = malloc(sizeof(float) * (size_t)hp->n_layers * np * (size_t)hp->n_kv_heads *
                           (size_t)s->digest_floats[d]);
    ok = s->digests[d] != NULL;
  }
  s->n_digested = calloc((size_t)hp->n_layers, sizeof(int64_t));
  s->rank = malloc(sizeof(est_rank_t) * np);
  s->true_pos = malloc(sizeof(int32_t) * np);
  s->est_pos = malloc(sizeof(int32_t) * np);
  s->hist = malloc(sizeof(int64_t) * (np + 1));
  s->acc = calloc((size_t)EST_N_MODES * KV_DIGEST_N_KINDS * (size_t)(s->k_max + 1), sizeof(double));
  s->n_obs = calloc((size_t)EST_N_MODES * (size_t)(s->k_max + 1), sizeof(int64_t));
  s->chance = calloc((size_t)EST_N_MODES * (size_t)(s->k_max + 1), sizeof(double));
  s->layer_top1 = calloc((size_t)EST_N_MODES * (size_t)hp->n_layers * KV_DIGEST_N_KINDS, sizeof(double));
  ok = ok && s->n_digested && s->rank && s->true_pos && s->est_pos && s->hist && s->acc && s->n_obs && s->chance &&
       s->layer_top1;
  return ok ? 0 : -1;
}

/* Positions of pages [p0, p1) in the descending ranking of score[p * stride] (pos[p - p0]). */
static void est_rank_pages(est_state_t *s, const float *score, int64_t stride, int64_t p0, int64_t p1,
                           int32_t *pos) {
  int64_t n = p1 - p0;
  for (int64_t i = 0; i < n; i++) s->rank[i] = (est_rank_t){score[(p0 + i) * stride], (int32_t)i};
  qsort(s->rank, (size_t)n, sizeof *s->rank, est_cmp_rank);
  for (int64_t r = 0; r < n; r++) pos[s->rank[r].idx] = (int32_t)r;
}

/* Adds |true top-k ∩ est top-k| / k for k = 1..min(k_max, n) over candidates [p0, p1),
 * given s->true_pos and the estimate est[p * stride]: page i is in both top-k sets iff
 * max(true_pos, est_pos) < k. Observations are counted by the caller. */
static void est_score_set(est_state_t *s, int mode, int kind, const float *est, int64_t stride, int64_t p0,
                          int64_t p1, int layer) {
  int64_t n = p1 - p0;
  if (n < 1) return;
  est_rank_pages(s, est, stride, p0, p1, s->est_pos);
  memset(s->hist, 0, sizeof(int64_t) * (size_t)(n + 1));
  for (int64_t i = 0; i < n; i++) {
    int32_t m = s->true_pos[i] > s->est_pos[i] ? s->true_pos[i] : s->est_pos[i];
    s->hist[m]++;
  }
  int64_t both = 0;
  int64_t kk = n < s->k_max ? n : s->k_max;
  double *acc = s->acc + ((size_t)mode * KV_DIGEST_N_KINDS + (size_t)kind) * (size_t)(s->k_max + 1);
  for (int64_t k = 1; k <= kk; k++) {
    both += s->hist[k - 1];
    acc[k] += (double)both / (double)k;
  }
  s->layer_top1[((size_t)mode * (size_t)s->n_layers + (size_t)layer) * KV_DIGEST_N_KINDS + (size_t)kind] +=
      (double)s->hist[0];
}

/* One (layer, step): true importance, every kind's estimate, accuracies. */
static int est_measure_layer(est_state_t *s, kv_pool_t *pool, kv_seq_id_t seq, int32_t l, int64_t n_tok) {
  const int32_t H = s->n_heads, KVH = s->n_kv_heads, D = s->head_dim, PT = s->page_tokens;
  const int32_t group = H / KVH;
  const int64_t n_pages = n_tok / PT; /* filled pages only */
  ak_status_t st = kv_seq_read_kv(pool, seq, l, 0, n_tok, s->keys, NULL);
  if (st < 0) {
    fprintf(stderr, "bench_estimator: kv_seq_read_kv(layer %d, %lld tokens): %s: %s\n", l, (long long)n_tok,
            ak_status_str(st), kv_pool_errmsg(pool));
    return -1;
  }
  st = kv_seq_last_query(pool, seq, l, s->q);
  if (st < 0) {
    fprintf(stderr, "bench_estimator: kv_seq_last_query(layer %d): %s: %s\n", l, ak_status_str(st),
            kv_pool_errmsg(pool));
    return -1;
  }
  if (n_pages < 1) return 0;

  /* True importance: mean over heads of each page's largest attention probability. */
  const float scale = 1.0f / sqrtf((float)D);
  memset(s->true_imp, 0, sizeof(float) * (size_t)n_pages);
  memset(s->max_dot, 0, sizeof(float) * (size_t)n_pages);
  for (int32_t h = 0; h < H; h++) {
    const float *qh = s->q + (size_t)h * (size_t)D;
    const int32_t kvh = h / group;
    float mx = -INFINITY;
    for (int64_t t = 0; t < n_tok; t++) {
      const float *kt = s->keys + ((size_t)t * (size_t)KVH + (size_t)kvh) * (size_t)D;
      float dot = 0;
      for (int32_t i = 0; i < D; i++) dot += qh[i] * kt[i];
      s->probs[t] = dot; /* unscaled for now: the bound check needs q . k */
      if (dot > mx) mx = dot;
    }
    for (int64_t p = 0; p < n_pages; p++) {
      float m = -INFINITY;
      for (int64_t t = p * PT; t < (p + 1) * PT; t++) m = s->probs[t] > m ? s->probs[t] : m;
      s->max_dot[p] += m / (float)H;
      s->head_max_dot[(size_t)h * (size_t)s->max_pages + (size_t)p] = m;
    }
    double sum = 0;
    for (int64_t t = 0; t < n_tok; t++) sum += exp((double)((s->probs[t] - mx) * scale));
    for (int64_t p = 0; p < n_pages; p++) {
      float m = -INFINITY;
      for (int64_t t = p * PT; t < (p + 1) * PT; t++) m = s->probs[t] > m ? s->probs[t] : m;
      s->true_imp[p] += (float)(exp((double)((m - mx) * scale)) / sum / (double)H);
    }
  }

  /* Estimates: digests of pages filled since the last step, then every page's score. */
  ak_err_t err;
  ak_err_clear(&err);
  const size_t kv_row = (size_t)KVH * (size_t)D;
  for (int kind = 0; kind < KV_DIGEST_N_KINDS; kind++) {
    const size_t page_floats = (size_t)KVH * (size_t)s->digest_floats[kind];
    float *dig = s->digests[kind] + (size_t)l * (size_t)s->max_pages * page_floats;
    for (int64_t p = s->n_digested[l]; p < n_pages; p++) {
      st = kv_digest_build((kv_digest_kind_t)kind, s->keys + (size_t)(p * PT) * kv_row, PT, KVH, D, &err,
                           dig + (size_t)p * page_floats);
      if (st < 0) break;
    }
    if (st >= 0)
      st = kv_digest_score_pages((kv_digest_kind_t)kind, dig, n_pages, s->q, H, KVH, D, KV_SCORE_MEAN, &err,
                                 s->est + (size_t)kind * (size_t)s->max_pages);
    if (st < 0) {
      fprintf(stderr, "bench_estimator: digest %s: %s\n", kv_digest_kind_name((kv_digest_kind_t)kind), err.msg);
      return -1;
    }
    /* Per query head (all pages): every head ranks the pages on its own. */
    for (int64_t p = 0; p < n_pages && st >= 0; p++)
      st = kv_digest_score_heads((kv_digest_kind_t)kind, dig + (size_t)p * page_floats, s->q, H, KVH, D, &err,
                                 s->est_heads + (size_t)p * (size_t)H);
    if (st < 0) {
      fprintf(stderr, "bench_estimator: digest %s: %s\n", kv_digest_kind_name((kv_digest_kind_t)kind), err.msg);
      return -1;
    }
    for (int32_t h = 0; h < H; h++) {
      est_rank_pages(s, s->head_max_dot + (size_t)h * (size_t)s->max_pages, 1, 0, n_pages, s->true_pos);
      est_score_set(s, EST_MODE_PER_HEAD, kind, s->est_heads + h, H, 0, n_pages, l);
    }
    if (kind == KV_DIGEST_SPHERE_MAX || kind == KV_DIGEST_CUBOID_MAX) {
      const float *e = s->est + (size_t)kind * (size_t)s->max_pages;
      for (int64_t p = 0; p < n_pages; p++) {
        float excess = s->max_dot[p] - e[p], tol = 1e-4f * fabsf(s->max_dot[p]) + 1e-3f;
        s->bound_checks++;
        if (excess > tol) {
          s->bound_violations++;
          if (excess > s->worst_violation) s->worst_violation = excess;
        }
      }
    }
  }
  s->n_digested[l] = n_pages;

  /* Accuracies over both candidate sets. Middle: pages 1 .. N-1-window (every middle page
   * of the arkvale layout is filled). */
  int64_t n_logical = (n_tok + PT - 1) / PT;
  int64_t mid_end = n_logical - 1 - EST_WINDOW_FILLED_PAGES;
  if (mid_end > n_pages) mid_end = n_pages;
  const int64_t sets[EST_N_MODES][2] = {{0, n_pages}, {0, n_pages}, {1, mid_end}};
  for (int mode = 0; mode < EST_N_MODES; mode++) {
    int64_t p0 = sets[mode][0], p1 = sets[mode][1];
    if (p1 - p0 < 1) continue;
    if (mode != EST_MODE_PER_HEAD) { /* per head was scored in the kind loop above */
      est_rank_pages(s, s->true_imp, 1, p0, p1, s->true_pos);
      if (mode == EST_MODE_ALL && s->true_pos[0] == 0) s->sink_top1++;
      for (int kind = 0; kind < KV_DIGEST_N_KINDS; kind++)
        est_score_set(s, mode, kind, s->est + (size_t)kind * (size_t)s->max_pages, 1, p0, p1, l);
    }
    int64_t kk = p1 - p0 < s->k_max ? p1 - p0 : s->k_max, n_obs = mode == EST_MODE_PER_HEAD ? H : 1;
    for (int64_t k = 1; k <= kk; k++) {
      s->n_obs[(size_t)mode * (size_t)(s->k_max + 1) + (size_t)k] += n_obs;
      s->chance[(size_t)mode * (size_t)(s->k_max + 1) + (size_t)k] += (double)n_obs * (double)k / (double)(p1 - p0);
    }
  }
  s->n_selections++;
  return 0;
}

static double est_acc(const est_state_t *s, int mode, int kind, int k) {
  int64_t n = s->n_obs[(size_t)mode * (size_t)(s->k_max + 1) + (size_t)k];
  if (n == 0) return NAN;
  return s->acc[((size_t)mode * KV_DIGEST_N_KINDS + (size_t)kind) * (size_t)(s->k_max + 1) + (size_t)k] /
         (double)n;
}

/* Expected accuracy of a random ranking (k / candidates, averaged like the others). */
static double est_chance(const est_state_t *s, int mode, int k) {
  int64_t n = s->n_obs[(size_t)mode * (size_t)(s->k_max + 1) + (size_t)k];
  return n ? s->chance[(size_t)mode * (size_t)(s->k_max + 1) + (size_t)k] / (double)n : NAN;
}

/* Mean accuracy over the k that have observations. */
static double est_mean_acc(const est_state_t *s, int mode, int kind) {
  double sum = 0;
  int n = 0;
  for (int k = 1; k <= s->k_max; k++) {
    double v = est_acc(s, mode, kind, k);
    if (!isnan(v)) sum += v, n++;
  }
  return n ? sum / n : NAN;
}

/* ------------------------------------------------------------------ reporting */

static const int est_show_k[] = {1, 2, 4, 8, 16, 32, 40};

/* The table of one candidate set: selected k (all_k = 0) or every k. md: markdown. */
static void est_print_table(FILE *f, const est_state_t *s, int mode, int all_k, int md) {
  if (md) {
    fprintf(f, "| k |");
    for (int d = 0; d < KV_DIGEST_N_KINDS; d++) fprintf(f, " %s |", kv_digest_kind_name((kv_digest_kind_t)d));
    fprintf(f, " random |\n|---:|");
    for (int d = 0; d < KV_DIGEST_N_KINDS; d++) fprintf(f, "---:|");
    fprintf(f, "---:|\n");
  } else {
    fprintf(f, "%4s", "k");
    for (int d = 0; d < KV_DIGEST_N_KINDS; d++) fprintf(f, " %13s", kv_digest_kind_name((kv_digest_kind_t)d));
    fprintf(f, " %7s\n", "random");
  }
  int n_rows = all_k ? s->k_max : (int)(sizeof est_show_k / sizeof est_show_k[0]);
  for (int r = 0; r < n_rows; r++) {
    int k = all_k ? r + 1 : est_show_k[r];
    if (k > s->k_max || isnan(est_acc(s, mode, 0, k))) continue;
    fprintf(f, md ? "| %d |" : "%4d", k);
    for (int d = 0; d < KV_DIGEST_N_KINDS; d++) fprintf(f, md ? " %.3f |" : " %13.3f", est_acc(s, mode, d, k));
    fprintf(f, md ? " %.3f |\n" : " %7.3f\n", est_chance(s, mode, k));
  }
  fprintf(f, md ? "| mean k=1..%d |" : "mean", s->k_max);
  for (int d = 0; d < KV_DIGEST_N_KINDS; d++) fprintf(f, md ? " %.3f |" : " %13.3f", est_mean_acc(s, mode, d));
  fprintf(f, md ? " |\n" : "\n");
}

/* Kinds ordered by mean accuracy, best first: "cuboid-mean 0.91 > ...". */
static void est_print_order(FILE *f, const est_state_t *s, int mode) {
  est_rank_t r[KV_DIGEST_N_KINDS];
  for (int d = 0; d < KV_DIGEST_N_KINDS; d++) r[d] = (est_rank_t){(float)est_mean_acc(s, mode, d), d};
  qsort(r, KV_DIGEST_N_KINDS, sizeof r[0], est_cmp_rank);
  for (int d = 0; d < KV_DIGEST_N_KINDS; d++)
    fprintf(f, "%s%s %.3f", d ? " > " : "", kv_digest_kind_name((kv_digest_kind_t)r[d].idx), r[d].score);
  fprintf(f, "\n");
}

typedef struct {
  const char *cmdline;
  const char *texts_used;
  const char *model_name;
  int64_t n_text_tokens;
  int32_t n_threads;
  const char *isa;
  const char *device;  /* "cpu" or "cuda: <card>" */
  const char *decoded; /* the decoded tokens as text */
  double prefill_s, decode_s, measure_s, total_s;
  char date[32];
} est_run_info_t;

static int est_write_results(const char *path, const est_args_t *a, const est_state_t *s, const est_run_info_t *ri) {
  FILE *f = fopen(path, "w");
  if (!f) {
    fprintf(stderr, "bench_estimator: cannot write %s: %s\n", path, strerror(errno));
    return -1;
  }
  char cpu[256], commit[128], load[64] = "unknown";
  bench_cmd_field("lscpu 2>/dev/null", "Model name", cpu, sizeof cpu);
  bench_commit(commit, sizeof commit);
  FILE *la = fopen("/proc/loadavg", "r");
  if (la) {
    if (!fgets(load, sizeof load, la)) snprintf(load, sizeof load, "unknown");
    load[strcspn(load, "\n")] = 0;
    fclose(la);
  }
  fprintf(f, "# estimator — %s\n\n", ri->date);
  fprintf(f, "Top-k recall accuracy of ArkVale's page-importance estimate per digest kind (the paper's Fig. 7),\n"
             "on greedy decode traces of the model. See bench/estimator/README.md for the definitions.\n\n");
  fprintf(f, "- command: `%s` (from the repository root)\n", ri->cmdline);
  fprintf(f, "- commit: %s\n", commit);
  fprintf(f, "- model: %s (%s)\n", a->model, ri->model_name);
  if (!strcmp(a->device, "cuda"))
    fprintf(f, "- device: %s; bf16 weights, f16 KV pages in device memory (the full cache as an arkvale pool "
               "with no budget, so that the queries come back to the host); measured on the host, %d threads, "
               "ISA %s\n", ri->device, ri->n_threads, ri->isa);
  else
    fprintf(f, "- device: %s, %d threads, ISA %s\n", a->device, ri->n_threads, ri->isa);
  fprintf(f, "- machine: %s; load average at the end: %s\n", cpu, load);
  fprintf(f, "- prompt: %lld tokens of %s (%lld tokens in the text%s)\n", (long long)a->ctx_tokens, ri->texts_used,
          (long long)ri->n_text_tokens,
          ri->n_text_tokens < a->ctx_tokens + (a->forced ? a->n_steps : 0) ? "; REPEATED to fill the context" : "");
  fprintf(f, "- decode: %lld %s steps, each measured in layers %lld..%d: %lld (layer, step) selections\n",
          (long long)a->n_steps, a->forced ? "forced (the text's next tokens)" : "greedy", (long long)a->skip_layers,
          s->n_layers - 1, (long long)s->n_selections);
  fprintf(f, "- decoded: `");
  for (const char *c = ri->decoded; *c; c++) fputc(*c == '\n' ? ' ' : *c == '`' ? '\'' : *c, f);
  fprintf(f, "`\n");
  fprintf(f, "- pages of %lld tokens; at the last step %lld filled pages\n", (long long)a->page_tokens,
          (long long)((a->ctx_tokens + a->n_steps) / a->page_tokens));
  fprintf(f, "- time: %.1f s total (prefill %.1f s, decode %.1f s, measurement %.1f s)\n\n", ri->total_s,
          ri->prefill_s, ri->decode_s, ri->measure_s);

  fprintf(f, "## Paper (Fig. 7, LongChat-7B-v1.5-32k, page 32) vs ours\n\n| | paper |");
  for (int mode = 0; mode < EST_N_MODES; mode++) fprintf(f, " ours, %s |", est_mode_names[mode]);
  fprintf(f, "\n|---|---|");
  for (int mode = 0; mode < EST_N_MODES; mode++) fprintf(f, "---:|");
  struct { const char *what, *paper; int kind, k; } cmp[] = {
      {"cuboid-mean top-1", "≈0.95", KV_DIGEST_CUBOID_MEAN, 1},
      {"cuboid-mean top-k, larger k", ">0.80", KV_DIGEST_CUBOID_MEAN, s->k_max},
      {"centroid top-1", "<0.05", KV_DIGEST_CENTROID, 1}};
  for (size_t r = 0; r < sizeof cmp / sizeof cmp[0]; r++) {
    fprintf(f, "\n| %s (k=%d) | %s |", cmp[r].what, cmp[r].k, cmp[r].paper);
    for (int mode = 0; mode < EST_N_MODES; mode++) fprintf(f, " %.3f |", est_acc(s, mode, cmp[r].kind, cmp[r].k));
  }
  fprintf(f, "\n\n");

  for (int mode = 0; mode < EST_N_MODES; mode++) {
    fprintf(f, "## %s%s\n\n", est_mode_names[mode],
            mode == EST_MODE_PER_HEAD ? " (the paper's definition, one query vector)" : "");
    est_print_table(f, s, mode, 0, 1);
    fprintf(f, "\nOrder by mean accuracy: ");
    est_print_order(f, s, mode);
    fprintf(f, "\n");
  }
  fprintf(f, "Page 0 (the sink) was the true top-1 page (head mean) in %lld of %lld selections.\n\n",
          (long long)s->sink_top1, (long long)s->n_selections);
  fprintf(f, "Upper-bound check (sphere-max, cuboid-max >= mean over heads of max q.k): %lld violations in %lld "
             "page scores.\n",
          (long long)s->bound_violations, (long long)s->bound_checks);

  for (int mode = EST_MODE_PER_HEAD; mode <= EST_MODE_ALL; mode++) {
    fprintf(f, "\n## Top-1 accuracy per layer, %s\n\n| layer |", est_mode_names[mode]);
    for (int d = 0; d < KV_DIGEST_N_KINDS; d++) fprintf(f, " %s |", kv_digest_kind_name((kv_digest_kind_t)d));
    fprintf(f, "\n|---:|");
    for (int d = 0; d < KV_DIGEST_N_KINDS; d++) fprintf(f, "---:|");
    fprintf(f, "\n");
    double per = (double)a->n_steps * (mode == EST_MODE_PER_HEAD ? s->n_heads : 1);
    for (int32_t l = s->skip_layers; l < s->n_layers; l++) {
      fprintf(f, "| %d |", l);
      for (int d = 0; d < KV_DIGEST_N_KINDS; d++)
        fprintf(f, " %.2f |",
                s->layer_top1[((size_t)mode * (size_t)s->n_layers + (size_t)l) * KV_DIGEST_N_KINDS + (size_t)d] /
                    per);
      fprintf(f, "\n");
    }
  }
  for (int mode = 0; mode < EST_N_MODES; mode++) {
    fprintf(f, "\n## Every k, %s\n\n", est_mode_names[mode]);
    est_print_table(f, s, mode, 1, 1);
  }
  int bad = ferror(f);
  if (fclose(f) != 0 || bad) {
    fprintf(stderr, "bench_estimator: writing %s failed\n", path);
    return -1;
  }
  return 0;
}

/* ------------------------------------------------------------------ main */

int main(int argc, char **argv) {
  est_args_t a;
  int pr = est_parse_args(argc, argv, &a);
  if (pr != 0) return pr > 0 ? 0 : 2;
  const int cuda = !strcmp(a.device, "cuda");
  char device_desc[320] = "cpu";
  if (cuda) { /* before anything loads: a machine without a GPU fails at once */
    ak_err_t derr;
    ak_err_clear(&derr);
    char card[256];
    ak_status_t dst = bench_cuda_probe(card, sizeof card, &derr);
    if (dst < 0) {
      fprintf(stderr, "bench_estimator: --device cuda: %s\n", derr.msg);
      return dst == AK_ERR_UNSUPPORTED ? 2 : 1;
    }
    snprintf(device_desc, sizeof device_desc, "cuda: %s", card);
  }
  double t_start = bench_now_s();

  char cmdline[2048] = "";
  for (int i = 0; i < argc; i++) {
    size_t u = strlen(cmdline);
    snprintf(cmdline + u, sizeof cmdline - u, "%s%s", i ? " " : "", argv[i]);
  }

  /* CPU: model, CPU backend, a full-policy pool for one sequence (with the query-head
   * count, so that kv_seq_last_query returns n_heads rows) and the forward pass, wired
   * here. CUDA: the host model gives the tokenizer and the shapes, a wk_engine on the
   * GPU runs the model (see the top of the file for its pool). */
  enum { EST_CHUNK_TOKENS = 512 };
  ak_err_t err;
  ak_err_clear(&err);
  wk_model_t *model = NULL;
  kn_cpu_t *cpu = NULL;
  kv_pool_t *pool = NULL; /* CPU: ours; CUDA: the engine's */
  wk_forward_t *fw = NULL;
  wk_engine_t *eng = NULL;
  int32_t *gen = NULL;
  char *decoded = NULL;
  co_tokenizer_t *tok = NULL;
  int32_t *ids = NULL;
  float *logits = NULL;
  est_state_t s;
  memset(&s, 0, sizeof s);
  int rc = 1;

  wk_model_params_t mp = wk_model_params_default();
  if (wk_model_load(a.model, &mp, &err, &model) < 0 || kn_cpu_create((int)a.n_threads, &err, &cpu) < 0 ||
      co_tokenizer_create_from_gguf(wk_model_gguf(model), &err, &tok) < 0) {
    fprintf(stderr, "bench_estimator: %s\n", err.msg);
    goto done;
  }
  const wk_hparams_t *hp = wk_model_hparams(model);
  if (a.ctx_tokens + a.n_steps > hp->n_ctx_train) {
    fprintf(stderr, "bench_estimator: --ctx %lld + --steps %lld exceed the model's context of %d\n",
            (long long)a.ctx_tokens, (long long)a.n_steps, hp->n_ctx_train);
    rc = 2;
    goto done;
  }
  if (a.skip_layers >= hp->n_layers) {
    fprintf(stderr, "bench_estimator: --skip-layers %lld leaves none of the model's %d layers\n",
            (long long)a.skip_layers, hp->n_layers);
    rc = 2;
    goto done;
  }
  if (a.ctx_tokens < a.page_tokens) {
    fprintf(stderr, "bench_estimator: --ctx %lld is shorter than one page of --page-tokens %lld\n",
            (long long)a.ctx_tokens, (long long)a.page_tokens);
    rc = 2;
    goto done;
  }
  if (cuda) {
    kv_pool_params_t kp = kv_pool_params_default();
    kp.policy = KV_POLICY_ARKVALE; /* with no budget: the full cache, queries kept (see the top) */
    kp.budget_tokens = 0;
    wk_engine_params_t ep = wk_engine_params_default();
    ep.model_path = a.model;
    ep.device = WK_DEVICE_CUDA;
    ep.n_threads = (int32_t)a.n_threads;
    ep.page_tokens = (int32_t)a.page_tokens;
    ep.max_seq_tokens = (int32_t)(a.ctx_tokens + a.n_steps);
    ep.max_seqs = 1;
    ep.max_batch_tokens = EST_CHUNK_TOKENS;
    ep.kv_policy = &kp;
    if (wk_engine_create(&ep, &err, &eng) < 0) {
      fprintf(stderr, "bench_estimator: %s\n", err.msg);
      goto done;
    }
    pool = wk_engine_kvpool(eng);
  }
  kv_pool_params_t kp = kv_pool_params_default();
  kp.policy = KV_POLICY_FULL;
  kp.n_layers = hp->n_layers;
  kp.n_kv_heads = hp->n_kv_heads;
  kp.n_heads = hp->n_heads;
  kp.head_dim = hp->head_dim;
  kp.page_tokens = (int32_t)a.page_tokens;
  kp.max_seqs = 1;
  kp.max_seq_tokens = (int32_t)(a.ctx_tokens + a.n_steps);
  kp.n_pages = kv_pages_for_tokens(kp.max_seq_tokens, kp.page_tokens) * kp.n_layers;
  if (!cuda && (kv_pool_create(&kp, &err, &pool) < 0 || wk_forward_create(model, cpu, EST_CHUNK_TOKENS, &err, &fw) < 0)) {
    fprintf(stderr, "bench_estimator: %s\n", err.msg);
    goto done;
  }

  /* --forced: the steps' tokens follow the prompt in the text */
  const int64_t n_text_want = a.ctx_tokens + (a.forced ? a.n_steps : 0);
  ids = malloc(sizeof(int32_t) * (size_t)n_text_want);
  logits = malloc(sizeof(float) * (size_t)hp->n_vocab);
  gen = malloc(sizeof(int32_t) * (size_t)a.n_steps);
  char texts_used[4096];
  int64_t n_text_tokens = 0;
  if (!ids || !logits || !gen || est_state_init(&s, hp, &a, a.ctx_tokens + a.n_steps) < 0) {
    fprintf(stderr, "bench_estimator: out of memory\n");
    goto done;
  }
  int br = bench_text_tokens("bench_estimator", a.texts, a.n_texts, tok, n_text_want, ids, &n_text_tokens, texts_used,
                             sizeof texts_used);
  if (br) {
    rc = br;
    goto done;
  }
  if (n_text_tokens < n_text_want)
    fprintf(stderr, "bench_estimator: the text holds %lld tokens; repeated to fill %lld\n",
            (long long)n_text_tokens, (long long)n_text_want);

  kv_seq_id_t seq;
  if (kv_seq_create(pool, &seq) < 0) {
    fprintf(stderr, "bench_estimator: %s\n", kv_pool_errmsg(pool));
    goto done;
  }
  fprintf(stderr, "bench_estimator: %s, prefill %lld tokens, then %lld %s decode steps, layers %lld..%d, %d threads\n",
          device_desc, (long long)a.ctx_tokens, (long long)a.n_steps, a.forced ? "forced" : "greedy",
          (long long)a.skip_layers, hp->n_layers - 1, kn_cpu_n_threads(cpu));
  double t0 = bench_now_s();
  if (eng && wk_engine_prefill(eng, seq, ids, a.ctx_tokens, logits) < 0) {
    fprintf(stderr, "bench_estimator: prefill: %s\n", wk_engine_errmsg(eng));
    goto done;
  }
  for (int64_t off = 0; !eng && off < a.ctx_tokens; off += EST_CHUNK_TOKENS) {
    int32_t n = (int32_t)(a.ctx_tokens - off < EST_CHUNK_TOKENS ? a.ctx_tokens - off : EST_CHUNK_TOKENS);
    int last = off + n == a.ctx_tokens;
    wk_forward_batch_t b = {.seqs = {.n_seqs = 1, .seqs = &seq, .n_new_tokens = &n}, .tokens = ids + off,
                            .logits = last ? logits : NULL};
    if (wk_forward_run(fw, pool, &b, &err) < 0) goto forward_error;
  }
  double t_prefill = bench_now_s() - t0, t_decode = 0, t_measure = 0;

  for (int64_t step = 0; step < a.n_steps; step++) {
    int32_t token = 0;
    for (int32_t v = 1; v < hp->n_vocab; v++)
      if (logits[v] > logits[token]) token = v;
    if (a.forced) token = ids[a.ctx_tokens + step];
    gen[step] = token;
    int32_t one = 1;
    wk_forward_batch_t b = {.seqs = {.n_seqs = 1, .seqs = &seq, .n_new_tokens = &one}, .tokens = &token,
                            .logits = logits};
    double t1 = bench_now_s();
    if (eng && wk_engine_step(eng, &b) < 0) {
      fprintf(stderr, "bench_estimator: decode step %lld: %s\n", (long long)step, wk_engine_errmsg(eng));
      goto done;
    }
    if (!eng && wk_forward_run(fw, pool, &b, &err) < 0) goto forward_error;
    double t2 = bench_now_s();
    int64_t n_tok = kv_seq_n_tokens(pool, seq);
    for (int32_t l = (int32_t)a.skip_layers; l < hp->n_layers; l++)
      if (est_measure_layer(&s, pool, seq, l, n_tok) < 0) goto done;
    double t3 = bench_now_s();
    t_decode += t2 - t1;
    t_measure += t3 - t2;
  }

  /* The decoded tokens as text, for comparing the traces of two runs. */
  size_t decoded_cap = (size_t)a.n_steps * 64 + 1, n_decoded = 0;
  decoded = malloc(decoded_cap);
  if (!decoded || co_tokenizer_decode(tok, gen, a.n_steps, 0, decoded, decoded_cap - 1, &n_decoded, &err) < 0) {
    fprintf(stderr, "bench_estimator: detokenizing the decoded tokens: %s\n", decoded ? err.msg : "out of memory");
    goto done;
  }
  decoded[n_decoded] = '\0';
  printf("decoded (%s): %s\n", a.forced ? "forced" : "greedy", decoded);
  est_run_info_t ri = {.cmdline = cmdline, .texts_used = texts_used, .model_name = hp->name,
                       .n_text_tokens = n_text_tokens, .n_threads = kn_cpu_n_threads(cpu),
                       .isa = kn_isa_name(kn_cpu_isa(cpu)), .device = device_desc, .decoded = decoded,
                       .prefill_s = t_prefill, .decode_s = t_decode, .measure_s = t_measure};
  ri.total_s = bench_now_s() - t_start;
  time_t now = time(NULL);
  strftime(ri.date, sizeof ri.date, "%Y-%m-%d", localtime(&now));

  for (int mode = 0; mode < EST_N_MODES; mode++) {
    printf("top-k recall accuracy, %s (%lld selections):\n", est_mode_names[mode], (long long)s.n_selections);
    est_print_table(stdout, &s, mode, 0, 0);
    printf("order: ");
    est_print_order(stdout, &s, mode);
    printf("\n");
  }
  printf("sink page was the true top-1 in %lld of %lld selections\n", (long long)s.sink_top1,
         (long long)s.n_selections);
  printf("upper-bound check: %lld violations in %lld (worst excess %.4g)\n", (long long)s.bound_violations,
         (long long)s.bound_checks, s.worst_violation);
  printf("time: %.1f s (prefill %.1f s, decode %.1f s, measurement %.1f s)\n", ri.total_s, t_prefill, t_decode,
         t_measure);

  if (!a.no_write) {
    char out[512];
    const char *path = a.out_path;
    if (!path) {
      if (bench_default_out("bench_estimator", "estimator", ri.date, out, sizeof out) < 0) goto done;
      path = out;
    }
    if (est_write_results(path, &a, &s, &ri) < 0) goto done;
    printf("wrote %s\n", path);
  }
  rc = s.bound_violations ? 1 : 0;
  if (rc) fprintf(stderr, "bench_estimator: an upper-bound digest scored below max q.k (see above)\n");
  goto done;

forward_error:
  fprintf(stderr, "bench_estimator: %s\n", err.msg);
done:
  est_state_free(&s);
  free(decoded);
  free(gen);
  free(logits);
  free(ids);
  co_tokenizer_destroy(tok);
  wk_forward_destroy(fw);
  if (!eng) kv_pool_destroy(pool);
  wk_engine_destroy(eng);
  kn_cpu_destroy(cpu);
  wk_model_free(model);
  return rc;
}
