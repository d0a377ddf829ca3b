/* bench_decode: decode-step latency of the GPU engine at the paper's shapes (ArkVale's
 * Figure 9 protocol), the full cache and ArkVale at each --kv-budget side by side.
 *
 * Per (shape, ctx, budget), budgets innermost so a context's full-cache row and its
 * ArkVale rows run one after another in one process: a synthetic model on the device
 * (wk_model_cuda_synthetic, seed 1, built once per shape), a pool over f16 device page
 * memory filled with uniform random values (seed 1) for --batch sequences, each
 * sequence's cache filled to ctx tokens WITHOUT a prefill forward (kv_step_begin /
 * kv_step_end only commit the tokens to the pool's tables; an ArkVale row commits in
 * DEC_FILL_CHUNK-token chunks, digesting and backing up every page, and compacts to
 * its budget), then --warmup untimed and --steps timed decode steps of one token per
 * sequence through wk_forward_cuda_run, each returning every sequence's logits to
 * pinned host memory (what a server needs before it samples on the host). The step's
 * wall time is host-measured around the call, which ends with a stream synchronization.
 *
 * Budget 0 is the full cache (decode steps replayed from CUDA graphs); a budget > 0 is
 * ArkVale, deciding on the device (select_on_device: digest scoring, top-k / victim plan
 * and one gather of the recalls per layer) unless --kv-select host. Each row is compared
 * with a memory-bandwidth bound (every weight once, every attended K/V byte and, for
 * ArkVale, every digest once), with the full row of its context (the speed-up), and
 * ArkVale rows report their recalls per budgeted layer, sequence and step.
 *
 * Not here: prefill time, accuracy (random K/V and weights: the recalls are not a real
 * model's), the throughput-under-a-memory-cap experiment (Figure 9b). */
#include <cuda_runtime_api.h>
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "ak_alloc.h"
#include "kn_cuda.h"
#include "kvpool.h"
#include "wk_forward_cuda.h"
#include "wk_model_cuda.h"

#define DEC_MAX_SHAPES 8
#define DEC_MAX_CTX 16
#define DEC_MAX_BUDGETS 8
#define DEC_SEED 1
#define DEC_GIB (1024.0 * 1024.0 * 1024.0)

typedef struct {
  const char *shapes[DEC_MAX_SHAPES];
  int n_shapes;
  int64_t ctx[DEC_MAX_CTX];
  int n_ctx;
  int64_t batch;
  int64_t n_steps;
  int64_t n_warmup;
  int64_t page_tokens;
  double bandwidth_gbs; /* GB/s (1e9 bytes) the bound divides by */
  const char *out_path; /* NULL: bench/results/decode-<date>.md */
  int no_write;
  int no_gemv;          /* --gemm cublas: decode GEMMs through cuBLASLt alone */
  int no_graphs;        /* --graphs off: kernels launched one by one */
  int64_t budgets[DEC_MAX_BUDGETS]; /* --kv-budget, tokens: 0 = the full cache; else ArkVale */
  int n_budgets;
  int select_host;
  int keys_skewed;      /* --kv-keys skewed: each page's K/V scaled by its own factor */      /* --kv-select host: ArkVale decides on the host (default: on the device) */
} dec_args_t;

/* Tokens per synthetic-fill step of an ArkVale row. */
#define DEC_FILL_CHUNK 2048
/* Steps run after the timed ones with CUDA events around each phase (not timed: the
 * events cost a little and keep the full cache off its graph). */
#define DEC_PROFILE_STEPS 4

typedef enum { DEC_ROW_OK = 0, DEC_ROW_NO_FIT = 1, DEC_ROW_ERROR = 2 } dec_row_status_t;

typedef struct {
  const char *shape;
  int64_t ctx;
  int64_t budget;          /* tokens per budgeted layer and sequence; 0 = the full cache */
  dec_row_status_t status;
  char note[AK_ERR_MSG_BYTES]; /* why it did not fit or failed */
  double median_ms, p10_ms, p90_ms, min_ms, max_ms;
  double bound_ms;
  size_t weight_bytes;
  size_t kv_alloc_bytes;   /* page memory allocated for the pool */
  double kv_read_bytes;    /* K/V bytes a timed step reads, mean over the timed steps */
  int64_t device_bytes;    /* every accounted device allocation during the steps */
  int32_t n_budgeted_layers; /* ArkVale: layers past the pool's n_full_layers; 0 for full */
  uint64_t recalls;        /* ArkVale: pages recalled over the warm-up and timed steps */
  uint64_t selections;     /* ArkVale: (sequence, layer, step) selections, same steps */
  wk_cuda_profile_t prof;  /* GPU time by phase, mean over DEC_PROFILE_STEPS extra steps */
} dec_row_t;

static double dec_now_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec * 1e3 + (double)ts.tv_nsec * 1e-6;
}

/* ------------------------------------------------------------------ flags */

static void dec_usage(FILE *f) {
  fprintf(f,
          "usage: bench_decode [options]   (run from the repository root, on a GPU host)\n"
          "  --shape NAME[,NAME]  synthetic model shape, repeatable: llama2-7b, longchat-7b, llama3-8b,\n"
          "                       smollm2-135m (default longchat-7b)\n"
          "  --batch B            sequences decoding together, one token each per step (default 4)\n"
          "  --ctx N[,N...]       cached tokens per sequence before the timed steps\n"
          "                       (default 10240,20480,30720)\n"
          "  --steps N            timed decode steps (default 32)\n"
          "  --gemm gemv|cublas   decode GEMMs: the GEMV kernel for <= 8 rows (default) or cuBLASLt\n"
          "  --graphs on|off      replay each decode step from a CUDA graph (default on)\n"
          "  --kv-budget T[,T...] tokens per layer and sequence, up to %d, each 0..%d: 0 = the full\n"
          "                       cache, else ArkVale with that budget (its synthetic fill goes in\n"
          "                       chunks, backing up every page); each context runs every budget in\n"
          "                       turn, so full and ArkVale rows sit side by side (default 0)\n"
          "  --kv-keys uniform|skewed  synthetic K/V: uniform random (default; rankings change every\n"
          "                       step: the most recalls), or each page scaled by its own fixed factor\n"
          "                       (heavy-hitter pages: rankings hold, recalls are rare)\n"
          "  --kv-select device|host  where ArkVale decides: on the device, one score, plan and gather\n"
          "                       launch per layer (default), or on the host (digests scored on the\n"
          "                       device, selection and recalls on the host)\n"
          "  --warmup N           untimed decode steps first (default 4)\n"
          "  --page-tokens N      tokens per KV page, 1..256 (default 32)\n"
          "  --device cuda        the only device (cpu is refused: this measures the GPU engine)\n"
          "  --bandwidth-gbs X    memory bandwidth of the bound, GB/s (default 3350: H100 SXM HBM3)\n"
          "  --out PATH           results file (default bench/results/decode-<date>.md)\n"
          "  --no-write           print only, write no results file\n",
          DEC_MAX_BUDGETS, 1 << 24);
}

/* Strict integer: the whole string, in [lo, hi]. Prints a message naming the flag. */
static int dec_parse_int(const char *flag, const char *v, int64_t lo, int64_t hi, int64_t *out) {
  char *end = NULL;
  errno = 0;
  long long x = strtoll(v, &end, 10);
  if (errno || end == v || *end || x < lo || x > hi) {
    fprintf(stderr, "bench_decode: %s '%s': expected an integer in [%lld, %lld]\n", flag, v, (long long)lo,
            (long long)hi);
    return -1;
  }
  *out = x;
  return 0;
}

/* Splits a comma list in place (v is argv's own string); every item non-empty. */
static int dec_split(const char *flag, char *v, char **items, int max_items, int *n_items) {
  for (char *p = v;;) {
    char *comma = strchr(p, ',');
    if (comma) *comma = 0;
    if (!*p) {
      fprintf(stderr, "bench_decode: %s: empty item in the list\n", flag);
      return -1;
    }
    if (*n_items == max_items) {
      fprintf(stderr, "bench_decode: %s: more than %d values\n", flag, max_items);
      return -1;
    }
    items[(*n_items)++] = p;
    if (!comma) return 0;
    p = comma + 1;
  }
}

/* 0 ok, 1 help printed, -1 bad flag. */
static int dec_parse_args(int argc, char **argv, dec_args_t *a) {
  memset(a, 0, sizeof *a);
  a->batch = 4;
  a->n_steps = 32;
  a->n_warmup = 4;
  a->page_tokens = 32;
  a->bandwidth_gbs = 3350.0;
  int ctx_given = 0, budget_given = 0;
  for (int i = 1; i < argc; i++) {
    const char *f = argv[i];
    char *v = i + 1 < argc ? argv[i + 1] : NULL;
    int r = 0;
    if (!strcmp(f, "-h") || !strcmp(f, "--help")) return dec_usage(stdout), 1;
    if (!strcmp(f, "--no-write")) {
      a->no_write = 1;
      continue;
    }
    if (strcmp(f, "--shape") && strcmp(f, "--batch") && strcmp(f, "--ctx") && strcmp(f, "--steps") &&
        strcmp(f, "--warmup") && strcmp(f, "--page-tokens") && strcmp(f, "--device") &&
        strcmp(f, "--bandwidth-gbs") && strcmp(f, "--out") && strcmp(f, "--gemm") &&
        strcmp(f, "--graphs") && strcmp(f, "--kv-budget") && strcmp(f, "--kv-select") && strcmp(f, "--kv-keys")) {
      fprintf(stderr, "bench_decode: unknown flag '%s' (--help lists them)\n", f);
      return -1;
    }
    if (!v || !*v) {
      fprintf(stderr, "bench_decode: %s needs a value\n", f);
      return -1;
    }
    i++;
    if (!strcmp(f, "--out")) a->out_path = v;
    else if (!strcmp(f, "--device")) {
      if (!strcmp(v, "cpu")) {
        fprintf(stderr, "bench_decode: --device cpu: bench_decode measures the GPU engine (use --device cuda, "
                        "or bench/cpu_generate for the CPU)\n");
        return -1;
      }
      if (strcmp(v, "cuda")) {
        fprintf(stderr, "bench_decode: --device '%s': expected cuda\n", v);
        return -1;
      }
    } else if (!strcmp(f, "--shape")) {
      char *items[DEC_MAX_SHAPES];
      int n = 0;
      r = dec_split(f, v, items, DEC_MAX_SHAPES - a->n_shapes, &n);
      for (int k = 0; r == 0 && k < n; k++) {
        wk_hparams_t hp;
        ak_err_t err;
        ak_err_clear(&err);
        if (wk_model_cuda_shape(items[k], &err, &hp) < 0) {
          fprintf(stderr, "bench_decode: --shape: %s\n", err.msg);
          return -1;
        }
        for (int s = 0; s < a->n_shapes; s++)
          if (!strcmp(a->shapes[s], items[k])) {
            fprintf(stderr, "bench_decode: --shape %s given twice\n", items[k]);
            return -1;
          }
        a->shapes[a->n_shapes++] = items[k];
      }
    } else if (!strcmp(f, "--ctx")) {
      if (ctx_given) {
        fprintf(stderr, "bench_decode: --ctx given twice (use one comma list)\n");
        return -1;
      }
      ctx_given = 1;
      char *items[DEC_MAX_CTX];
      int n = 0;
      r = dec_split(f, v, items, DEC_MAX_CTX, &n);
      for (int k = 0; r == 0 && k < n; k++) r = dec_parse_int(f, items[k], 1, 1 << 24, &a->ctx[a->n_ctx++]);
    } else if (!strcmp(f, "--batch")) r = dec_parse_int(f, v, 1, 4096, &a->batch);
    else if (!strcmp(f, "--gemm")) {
      if (!strcmp(v, "gemv")) a->no_gemv = 0;
      else if (!strcmp(v, "cublas")) a->no_gemv = 1;
      else {
        fprintf(stderr, "bench_decode: --gemm expects gemv or cublas, got '%s'\n", v);
        r = -1;
      }
    }
    else if (!strcmp(f, "--kv-budget")) {
      if (budget_given) {
        fprintf(stderr, "bench_decode: --kv-budget given twice (use one comma list)\n");
        return -1;
      }
      budget_given = 1;
      char *items[DEC_MAX_BUDGETS];
      int n = 0;
      r = dec_split(f, v, items, DEC_MAX_BUDGETS, &n);
      for (int k = 0; r == 0 && k < n; k++) {
        r = dec_parse_int(f, items[k], 0, 1 << 24, &a->budgets[a->n_budgets]);
        for (int j = 0; r == 0 && j < a->n_budgets; j++)
          if (a->budgets[j] == a->budgets[a->n_budgets]) { /* one row per (shape, ctx, budget) */
            fprintf(stderr, "bench_decode: --kv-budget %s given twice in the list\n", items[k]);
            r = -1;
          }
        a->n_budgets++;
      }
    } else if (!strcmp(f, "--kv-keys")) {
      if (!strcmp(v, "uniform")) a->keys_skewed = 0;
      else if (!strcmp(v, "skewed")) a->keys_skewed = 1;
      else {
        fprintf(stderr, "bench_decode: --kv-keys expects uniform or skewed, got '%s'\n", v);
        r = -1;
      }
    } else if (!strcmp(f, "--kv-select")) {
      if (!strcmp(v, "device")) a->select_host = 0;
      else if (!strcmp(v, "host")) a->select_host = 1;
      else {
        fprintf(stderr, "bench_decode: --kv-select expects device or host, got '%s'\n", v);
        r = -1;
      }
    }
    else if (!strcmp(f, "--graphs")) {
      if (!strcmp(v, "on")) a->no_graphs = 0;
      else if (!strcmp(v, "off")) a->no_graphs = 1;
      else {
        fprintf(stderr, "bench_decode: --graphs expects on or off, got '%s'\n", v);
        r = -1;
      }
    }
    else if (!strcmp(f, "--steps")) r = dec_parse_int(f, v, 1, 1 << 20, &a->n_steps);
    else if (!strcmp(f, "--warmup")) r = dec_parse_int(f, v, 0, 1 << 20, &a->n_warmup);
    else if (!strcmp(f, "--page-tokens")) r = dec_parse_int(f, v, 1, 256, &a->page_tokens);
    else if (!strcmp(f, "--bandwidth-gbs")) {
      char *end = NULL;
      errno = 0;
      double x = strtod(v, &end);
      if (errno || end == v || *end || !(x >= 1.0 && x <= 1e6)) {
        fprintf(stderr, "bench_decode: --bandwidth-gbs '%s': expected a number in [1, 1e6]\n", v);
        return -1;
      }
      a->bandwidth_gbs = x;
    }
    if (r < 0) return -1;
  }
  if (a->n_shapes == 0) a->shapes[a->n_shapes++] = "longchat-7b";
  if (!ctx_given) {
    a->ctx[0] = 10240, a->ctx[1] = 20480, a->ctx[2] = 30720;
    a->n_ctx = 3;
  }
  if (!budget_given) a->budgets[a->n_budgets++] = 0;
  /* positions are int32 and the pool's max_seq_tokens too */
  for (int k = 0; k < a->n_ctx; k++)
    if (a->ctx[k] + a->n_warmup + a->n_steps + 1 > INT32_MAX) {
      fprintf(stderr, "bench_decode: --ctx %lld + --warmup + --steps overflow a 32-bit position\n",
              (long long)a->ctx[k]);
      return -1;
    }
  return 0;
}

/* ------------------------------------------------------------------ one (shape, ctx) */

static int dec_cmp_double(const void *pa, const void *pb) {
  double x = *(const double *)pa, y = *(const double *)pb;
  return (x > y) - (x < y);
}

/* Quantile q of sorted values (linear interpolation between neighbours). */
static double dec_quantile(const double *sorted, int64_t n, double q) {
  double pos = q * (double)(n - 1);
  int64_t lo = (int64_t)pos;
  if (lo >= n - 1) return sorted[n - 1];
  return sorted[lo] + (pos - (double)lo) * (sorted[lo + 1] - sorted[lo]);
}

/* Records a failure in the row: NO_MEMORY is "does not fit", anything else an error. */
static void dec_row_fail(dec_row_t *row, ak_status_t st, const char *msg) {
  row->status = st == AK_ERR_NO_MEMORY ? DEC_ROW_NO_FIT : DEC_ROW_ERROR;
  snprintf(row->note, sizeof row->note, "%s", msg);
}

/* Pool, forward, synthetic fill, warm-up and timed steps for one row. Frees all it
 * allocated before returning, whatever happened (the next row needs the memory). */
static void dec_run_row(const dec_args_t *a, const wk_model_cuda_t *model, dec_row_t *row) {
  const wk_hparams_t *hp = wk_model_cuda_hparams(model);
  int32_t B = (int32_t)a->batch;
  int64_t max_tokens = row->ctx + a->n_warmup + a->n_steps + DEC_PROFILE_STEPS + 1;
  ak_err_t err;
  ak_err_clear(&err);
  ak_status_t st = AK_OK;
  void *pages = NULL;              /* [n_pages] pages of kv_page_bytes, f16 (kvpool.h) */
  kv_pool_t *pool = NULL;
  wk_forward_cuda_t *fw = NULL;
  float *logits = NULL;            /* [B, n_vocab] f32, pinned host */
  size_t logits_bytes = sizeof(float) * (size_t)B * (size_t)hp->n_vocab;
  kv_seq_id_t *seqs = calloc((size_t)B, sizeof *seqs);
  int32_t *n_new = calloc((size_t)B, sizeof *n_new);
  int32_t *tokens = calloc((size_t)B, sizeof *tokens);
  double *step_ms = calloc((size_t)a->n_steps, sizeof *step_ms);
  if (!seqs || !n_new || !tokens || !step_ms) {
    dec_row_fail(row, AK_ERR_INTERNAL, "host out of memory");
    goto done;
  }

  kv_pool_params_t kp = kv_pool_params_default();
  kp.policy = row->budget > 0 ? KV_POLICY_ARKVALE : KV_POLICY_FULL;
  kp.budget_tokens = (int32_t)row->budget;
  kp.n_layers = hp->n_layers;
  kp.n_kv_heads = hp->n_kv_heads;
  kp.n_heads = hp->n_heads;
  kp.head_dim = hp->head_dim;
  kp.page_tokens = (int32_t)a->page_tokens;
  kp.max_seqs = B;
  kp.max_seq_tokens = (int32_t)max_tokens;
  kp.n_pages = (int64_t)B * kv_pages_for_tokens(max_tokens, kp.page_tokens) * hp->n_layers;
  if (row->budget > 0) { /* full layers + budgeted layers at budget, plus one fill chunk in flight */
    int64_t budgeted = hp->n_layers - kp.n_full_layers;
    kp.n_pages = (int64_t)B * (kv_pages_for_tokens(max_tokens, kp.page_tokens) * kp.n_full_layers +
                               (row->budget / kp.page_tokens + DEC_FILL_CHUNK / kp.page_tokens + 2) * budgeted);
  }
  kp.dtype = KN_F16;
  kp.check_every_step = 0; /* a Debug build would check every table each step: not what we time */
  row->kv_alloc_bytes = (size_t)kp.n_pages * kv_page_bytes(&kp);
  st = kn_cuda_malloc(row->kv_alloc_bytes, &err, &pages);
  if (st < 0) goto fail;
  /* random K/V (uniform in [-1, 1)): ArkVale's scores, and so its recalls, depend on
   * what the pages hold; zero pages would tie every score and never recall */
  st = kn_cuda_fill_random_f16(pages, (int64_t)(row->kv_alloc_bytes / 2), 1.0f, DEC_SEED, NULL, &err);
  if (st < 0) goto fail;
  if (a->keys_skewed) {
    /* --kv-keys skewed: page p's values span [-s_p, s_p) with s_p in [0.25, 1) fixed per
     * page, so some pages stay important whatever the query (a real model's heavy
     * hitters): rankings hold from step to step and recalls become rare */
    size_t pb = kv_page_bytes(&kp);
    for (int64_t pg = 0; st >= 0 && pg < kp.n_pages; pg++) {
      uint64_t h = (uint64_t)pg * 0x9E3779B97F4A7C15ull;
      h ^= h >> 29;
      float s_p = 0.25f + 0.75f * (float)(h % 1024) / 1024.0f;
      st = kn_cuda_fill_random_f16((char *)pages + (size_t)pg * pb, (int64_t)(pb / 2), s_p, DEC_SEED + (uint64_t)pg,
                                   NULL, &err);
    }
    if (st < 0) goto fail;
  }
  cudaError_t ce = cudaDeviceSynchronize();
  if (ce != cudaSuccess) {
    st = AK_ERR(&err, AK_ERR_CUDA, "filling %zu bytes of pages: %s", row->kv_alloc_bytes, cudaGetErrorString(ce));
    goto fail;
  }
  kp.page_memory = pages;
  /* decode only: B rows a step, so the attention split workspace stays small (the
   * ArkVale fill goes through the pool's tables only, no forward) */
  st = wk_forward_cuda_create(model, &kp, B, &err, &fw);
  if (st < 0) goto fail;
  kp.select_on_device = row->budget > 0 && !a->select_host;
  st = wk_forward_cuda_page_ops(fw, pages, &kp, &err, &kp.page_ops);
  if (st >= 0 && kp.select_on_device) st = wk_forward_cuda_device_tier(fw, &kp, &err, &kp.tier);
  if (st < 0) goto fail;
  st = kv_pool_create(&kp, &err, &pool);
  if (st < 0) goto fail;
  wk_forward_cuda_use_gemv(fw, !a->no_gemv);
  wk_forward_cuda_use_graphs(fw, !a->no_graphs);
  st = kn_cuda_host_alloc(logits_bytes, &err, (void **)&logits, NULL);
  if (st < 0) goto fail;

  /* KV filled synthetically; prefill not timed: steps commit ctx tokens per sequence
   * to the pool's tables without a forward pass (the pages keep their random fill). */
  for (int32_t i = 0; i < B; i++) {
    st = kv_seq_create(pool, &seqs[i]);
    if (st < 0) {
      st = AK_ERR(&err, st, "kv_seq_create: %s", kv_pool_errmsg(pool));
      goto fail;
    }
    n_new[i] = (int32_t)row->ctx;
  }
  kv_batch_t fill = {.n_seqs = B, .seqs = seqs, .n_new_tokens = n_new};
  /* ArkVale: in chunks, each committed (pages digested and backed up) and the
   * sequences compacted to their budget, so the pool stays within its budget */
  for (int64_t done_tok = 0; done_tok < row->ctx;) {
    int64_t chunk = row->budget > 0 ? DEC_FILL_CHUNK : row->ctx;
    if (chunk > row->ctx - done_tok) chunk = row->ctx - done_tok;
    for (int32_t i = 0; i < B; i++) n_new[i] = (int32_t)chunk;
    st = kv_step_begin(pool, &fill);
    for (int32_t l = 0; st >= 0 && row->budget > 0 && l < hp->n_layers; l++) st = kv_layer_commit(pool, l);
    if (st >= 0) st = kv_step_end(pool);
    for (int32_t i = 0; st >= 0 && row->budget > 0 && i < B; i++) st = kv_seq_compact(pool, seqs[i]);
    if (st < 0) {
      st = AK_ERR(&err, st, "synthetic fill (%lld of %lld tokens x %d sequences): %s", (long long)done_tok,
                  (long long)row->ctx, B, kv_pool_errmsg(pool));
      goto fail;
    }
    done_tok += chunk;
  }

  /* the fill's own work (backups, compaction) is not the decode steps' */
  kv_pool_stats_t fill_ps;
  kv_pool_get_stats(pool, &fill_ps);

  for (int32_t i = 0; i < B; i++) n_new[i] = 1;
  wk_forward_batch_t b = {.seqs = {.n_seqs = B, .seqs = seqs, .n_new_tokens = n_new}, .tokens = tokens,
                          .logits_all = 0, .logits = logits};
  uint64_t rng = 0x9E3779B97F4A7C15ull ^ (uint64_t)row->ctx;
  for (int64_t step = 0; step < a->n_warmup + a->n_steps; step++) {
    for (int32_t i = 0; i < B; i++) { /* random valid ids (xorshift64) */
      rng ^= rng << 13, rng ^= rng >> 7, rng ^= rng << 17;
      tokens[i] = (int32_t)(rng % (uint64_t)hp->n_vocab);
    }
    double t0 = dec_now_ms();
    st = wk_forward_cuda_run(fw, pool, &b, &err); /* ends with a stream synchronization */
    double t1 = dec_now_ms();
    if (st < 0) goto fail;
    if (step >= a->n_warmup) step_ms[step - a->n_warmup] = t1 - t0;
  }
  row->device_bytes = ak_alloc_outstanding_bytes(AK_MEM_DEVICE);
  st = wk_forward_cuda_profile(fw, 1, &err);
  for (int64_t step = 0; st >= 0 && step < DEC_PROFILE_STEPS; step++) {
    st = wk_forward_cuda_run(fw, pool, &b, &err);
    wk_cuda_profile_t p;
    wk_forward_cuda_last_profile(fw, &p);
    row->prof.tables_ms += p.tables_ms / DEC_PROFILE_STEPS;
    row->prof.estimate_ms += p.estimate_ms / DEC_PROFILE_STEPS;
    row->prof.select_ms += p.select_ms / DEC_PROFILE_STEPS;
    row->prof.recall_ms += p.recall_ms / DEC_PROFILE_STEPS;
    row->prof.attention_ms += p.attention_ms / DEC_PROFILE_STEPS;
    row->prof.total_ms += p.total_ms / DEC_PROFILE_STEPS;
  }
  if (st < 0) goto fail;

  qsort(step_ms, (size_t)a->n_steps, sizeof *step_ms, dec_cmp_double);
  row->median_ms = dec_quantile(step_ms, a->n_steps, 0.5);
  row->p10_ms = dec_quantile(step_ms, a->n_steps, 0.1);
  row->p90_ms = dec_quantile(step_ms, a->n_steps, 0.9);
  row->min_ms = step_ms[0];
  row->max_ms = step_ms[a->n_steps - 1];
  /* Timed step s (0-based) attends over ctx + warmup + s + 1 keys per sequence. */
  double mean_kv_len = (double)row->ctx + (double)a->n_warmup + ((double)a->n_steps + 1.0) / 2.0;
  double layer_token_bytes = 2.0 * hp->n_kv_heads * hp->head_dim * 2.0; /* K+V of one layer, f16 */
  row->kv_read_bytes = (double)B * mean_kv_len * layer_token_bytes * hp->n_layers;
  if (row->budget > 0) { /* full layers read everything; budgeted ones their budget and every digest */
    int64_t n_full = kp.n_full_layers, budgeted = hp->n_layers - n_full;
    double attended = mean_kv_len < (double)row->budget ? mean_kv_len : (double)row->budget;
    double digest_bytes = (mean_kv_len / (double)kp.page_tokens) * hp->n_kv_heads *
                          kv_digest_floats(kp.digest, hp->head_dim) * 4.0;
    row->kv_read_bytes = (double)B * (mean_kv_len * layer_token_bytes * n_full +
                                      (attended * layer_token_bytes + digest_bytes) * budgeted);
    kv_pool_stats_t ps;
    kv_pool_get_stats(pool, &ps);
    double n_run = (double)(a->n_warmup + a->n_steps);
    row->n_budgeted_layers = (int32_t)budgeted;
    row->recalls = ps.work.recalls - fill_ps.work.recalls;
    row->selections = ps.work.n_selects - fill_ps.work.n_selects;
    fprintf(stderr, "bench_decode: %s ctx %lld budget %lld: per step %.2f recalls, %.2f selections; estimate %.2f ms, "
            "select %.2f ms, recall %.2f ms per step (host clock; %s)\n", row->shape, (long long)row->ctx,
            (long long)row->budget, (double)row->recalls / n_run, (double)row->selections / n_run,
            (ps.work.estimate_us - fill_ps.work.estimate_us) / 1e3 / n_run,
            (ps.work.select_us - fill_ps.work.select_us) / 1e3 / n_run,
            (ps.work.recall_us - fill_ps.work.recall_us) / 1e3 / n_run,
            kp.select_on_device ? "decided on the device: no host phases" : "decided on the host");
  }
  row->bound_ms = ((double)row->weight_bytes + row->kv_read_bytes) / (a->bandwidth_gbs * 1e9) * 1e3;
  row->status = DEC_ROW_OK;
  goto done;

fail:
  dec_row_fail(row, st, err.msg);
done:
  kn_cuda_host_free(logits, logits_bytes);
  kv_pool_destroy(pool); /* before the forward: its backups live in the forward's tier */
  wk_forward_cuda_destroy(fw);
  kn_cuda_free(pages, row->kv_alloc_bytes);
  free(step_ms);
  free(tokens);
  free(n_new);
  free(seqs);
}

/* ------------------------------------------------------------------ the machine */

typedef struct {
  char card[256];
  int cc_major, cc_minor, n_sms;
  size_t total_mem_bytes;
  int driver_api, runtime_api; /* cudaDriverGetVersion / cudaRuntimeGetVersion, e.g. 13000 */
  char driver[64];             /* nvidia-smi's driver_version, e.g. 580.159.04 */
  char commit[160];
  char date[32];
  char cmdline[2048];
} dec_info_t;

/* Copies a string into out, truncated to fit. */
static void dec_copy(char *out, size_t out_bytes, const char *s) {
  size_t n = strlen(s);
  if (n >= out_bytes) n = out_bytes - 1;
  memcpy(out, s, n);
  out[n] = 0;
}

/* First line of a command's output, trimmed; "unknown" when there is none. */
static void dec_cmd_line(const char *cmd, char *out, size_t out_bytes) {
  snprintf(out, out_bytes, "unknown");
  FILE *p = popen(cmd, "r");
  if (!p) return;
  char line[512];
  if (fgets(line, sizeof line, p)) {
    line[strcspn(line, "\n")] = 0;
    if (*line) dec_copy(out, out_bytes, line);
  }
  pclose(p);
}

/* The commit: git where the checkout has it, else the install tree's MANIFEST.txt
 * (bin/../MANIFEST.txt, written by scripts/make_install_tree.sh). */
static void dec_commit(char *out, size_t out_bytes) {
  dec_cmd_line("git rev-parse --short HEAD 2>/dev/null", out, out_bytes);
  if (strcmp(out, "unknown")) return;
  char exe[1024];
  ssize_t n = readlink("/proc/self/exe", exe, sizeof exe - 32);
  if (n <= 0) return;
  exe[n] = 0;
  char *slash = strrchr(exe, '/');
  if (!slash) return;
  snprintf(slash, sizeof exe - (size_t)(slash - exe), "/../MANIFEST.txt");
  FILE *f = fopen(exe, "r");
  if (!f) return;
  char line[512];
  while (fgets(line, sizeof line, f))
    if (!strncmp(line, "commit: ", 8)) {
      line[strcspn(line, "\n")] = 0;
      char with[600];
      snprintf(with, sizeof with, "%s (from the install tree's MANIFEST.txt)", line + 8);
      dec_copy(out, out_bytes, with);
      break;
    }
  fclose(f);
}

/* 0 ok; -1 no usable device (message printed). */
static int dec_probe_device(dec_info_t *info) {
  ak_err_t err;
  ak_err_clear(&err);
  int n_dev = 0;
  if (kn_cuda_device_count(&err, &n_dev) < 0) {
    fprintf(stderr,
            "bench_decode: no CUDA device here (%s).\n"
            "bench_decode measures the GPU engine: run it on the GPU host (bench/decode/README.md).\n",
            err.msg);
    return -1;
  }
  int dev = 0;
  struct cudaDeviceProp prop;
  cudaError_t ce = cudaGetDevice(&dev);
  if (ce == cudaSuccess) ce = cudaGetDeviceProperties(&prop, dev);
  if (ce != cudaSuccess) {
    fprintf(stderr, "bench_decode: cudaGetDeviceProperties: %s\n", cudaGetErrorString(ce));
    return -1;
  }
  snprintf(info->card, sizeof info->card, "%s", prop.name);
  info->cc_major = prop.major;
  info->cc_minor = prop.minor;
  info->n_sms = prop.multiProcessorCount;
  info->total_mem_bytes = prop.totalGlobalMem;
  cudaDriverGetVersion(&info->driver_api);
  cudaRuntimeGetVersion(&info->runtime_api);
  dec_cmd_line("nvidia-smi --query-gpu=driver_version --format=csv,noheader 2>/dev/null", info->driver,
               sizeof info->driver);
  return 0;
}

/* ------------------------------------------------------------------ output */

/* "full" for budget 0, else the budget in tokens. */
static const char *dec_budget_str(int64_t budget, char *buf, size_t buf_bytes) {
  if (budget == 0) return "full";
  snprintf(buf, buf_bytes, "%lld", (long long)budget);
  return buf;
}

/* The full-cache row of row r's (shape, ctx) when it ran (rows go in groups of
 * n_budgets per (shape, ctx)), else NULL. */
static const dec_row_t *dec_full_row(const dec_args_t *a, const dec_row_t *rows, int r) {
  int first = r - r % a->n_budgets;
  for (int k = first; k < first + a->n_budgets; k++)
    if (rows[k].budget == 0 && rows[k].status == DEC_ROW_OK) return &rows[k];
  return NULL;
}

/* Pages recalled per (budgeted layer, sequence, step) over the warm-up and timed
 * steps; -1 for a full-cache row or a row that did not run. */
static double dec_recalls_per_layer_step(const dec_args_t *a, const dec_row_t *w) {
  if (w->status != DEC_ROW_OK || w->budget == 0 || w->n_budgeted_layers <= 0) return -1.0;
  return (double)w->recalls /
         ((double)w->n_budgeted_layers * (double)a->batch * (double)(a->n_warmup + a->n_steps));
}

static void dec_print_table(FILE *f, const dec_args_t *a, const dec_row_t *rows, int n_rows, int md) {
  const char *hdr[] = {"shape", "batch", "ctx", "budget", "step ms (median)", "p10", "p90", "vs full",
                       "recalls/layer/step", "bound ms", "ratio", "tok/s", "weights GiB", "KV GiB"};
  int n_cols = (int)(sizeof hdr / sizeof hdr[0]);
  if (md) {
    fprintf(f, "|");
    for (int c = 0; c < n_cols; c++) fprintf(f, " %s |", hdr[c]);
    fprintf(f, "\n|---|");
    for (int c = 1; c < n_cols; c++) fprintf(f, "---:|");
    fprintf(f, "\n");
  } else {
    fprintf(f, "%-13s %5s %6s %6s %9s %8s %8s %7s %11s %8s %6s %8s %7s %7s\n", "shape", "batch", "ctx", "budget",
            "step_ms", "p10", "p90", "vs_full", "recalls/l/s", "bound_ms", "ratio", "tok/s", "w_GiB", "kv_GiB");
  }
  for (int r = 0; r < n_rows; r++) {
    const dec_row_t *w = &rows[r];
    char bbuf[32], vbuf[32], rbuf[32];
    const char *budget = dec_budget_str(w->budget, bbuf, sizeof bbuf);
    double w_gib = (double)w->weight_bytes / DEC_GIB, kv_gib = (double)w->kv_alloc_bytes / DEC_GIB;
    if (w->status != DEC_ROW_OK) {
      const char *what = w->status == DEC_ROW_NO_FIT ? "does not fit" : "error";
      if (md)
        fprintf(f, "| %s | %lld | %lld | %s | %s: %s | | | - | - | | | | %.2f | %.2f |\n", w->shape,
                (long long)a->batch, (long long)w->ctx, budget, what, w->note, w_gib, kv_gib);
      else
        fprintf(f, "%-13s %5lld %6lld %6s  %s (weights %.2f GiB, KV %.2f GiB): %s\n", w->shape, (long long)a->batch,
                (long long)w->ctx, budget, what, w_gib, kv_gib, w->note);
      continue;
    }
    const dec_row_t *full = dec_full_row(a, rows, r);
    if (full) snprintf(vbuf, sizeof vbuf, "%.2fx", full->median_ms / w->median_ms);
    else snprintf(vbuf, sizeof vbuf, "-");
    double rps = dec_recalls_per_layer_step(a, w);
    if (rps >= 0) snprintf(rbuf, sizeof rbuf, "%.2f", rps);
    else snprintf(rbuf, sizeof rbuf, "-");
    double ratio = w->median_ms / w->bound_ms, tok_s = (double)a->batch / (w->median_ms * 1e-3);
    if (md)
      fprintf(f, "| %s | %lld | %lld | %s | %.3f | %.3f | %.3f | %s | %s | %.3f | %.2f | %.1f | %.2f | %.2f |\n",
              w->shape, (long long)a->batch, (long long)w->ctx, budget, w->median_ms, w->p10_ms, w->p90_ms, vbuf,
              rbuf, w->bound_ms, ratio, tok_s, w_gib, kv_gib);
    else
      fprintf(f, "%-13s %5lld %6lld %6s %9.3f %8.3f %8.3f %7s %11s %8.3f %6.2f %8.1f %7.2f %7.2f\n", w->shape,
              (long long)a->batch, (long long)w->ctx, budget, w->median_ms, w->p10_ms, w->p90_ms, vbuf, rbuf,
              w->bound_ms, ratio, tok_s, w_gib, kv_gib);
  }
}

/* Per (shape, ctx): the budget whose median step was the fastest, and its speed-up
 * over the full row of that context. */
static void dec_print_fastest(FILE *f, const dec_args_t *a, const dec_row_t *rows, int n_rows) {
  fprintf(f, "| shape | ctx | fastest budget | step ms (median) | vs full |\n|---|---:|---:|---:|---:|\n");
  for (int first = 0; first < n_rows; first += a->n_budgets) {
    const dec_row_t *best = NULL;
    for (int k = first; k < first + a->n_budgets; k++)
      if (rows[k].status == DEC_ROW_OK && (!best || rows[k].median_ms < best->median_ms)) best = &rows[k];
    if (!best) {
      fprintf(f, "| %s | %lld | - (no row ran) | - | - |\n", rows[first].shape, (long long)rows[first].ctx);
      continue;
    }
    char bbuf[32];
    const dec_row_t *full = dec_full_row(a, rows, first);
    fprintf(f, "| %s | %lld | %s | %.3f | ", best->shape, (long long)best->ctx,
            dec_budget_str(best->budget, bbuf, sizeof bbuf), best->median_ms);
    if (full) fprintf(f, "%.2fx |\n", full->median_ms / best->median_ms);
    else fprintf(f, "- |\n");
  }
}

/* The budget list for humans: "full, 512, 1024". */
static void dec_budget_list(const dec_args_t *a, char *out, size_t out_bytes) {
  out[0] = 0;
  for (int k = 0; k < a->n_budgets; k++) {
    char bbuf[32];
    size_t u = strlen(out);
    snprintf(out + u, out_bytes - u, "%s%s", k ? ", " : "", dec_budget_str(a->budgets[k], bbuf, sizeof bbuf));
  }
}

/* 1 when some row is ArkVale (a budget > 0). */
static int dec_any_arkvale(const dec_args_t *a) {
  for (int k = 0; k < a->n_budgets; k++)
    if (a->budgets[k] > 0) return 1;
  return 0;
}

static int dec_write_results(const char *path, const dec_args_t *a, const dec_info_t *info, const dec_row_t *rows,
                             int n_rows, double total_s) {
  FILE *f = fopen(path, "w");
  if (!f) {
    fprintf(stderr, "bench_decode: cannot write %s: %s\n", path, strerror(errno));
    return -1;
  }
  char budgets[256];
  dec_budget_list(a, budgets, sizeof budgets);
  int arkvale = dec_any_arkvale(a);
  fprintf(f, "# decode — %s\n\n", info->date);
  fprintf(f, "Decode-step latency of the GPU engine, the full KV cache and ArkVale at each budget side by side (the "
             "paper's Figure 9 protocol). See bench/decode/README.md.\n\n");
  fprintf(f, "- command: `%s` (from the repository root)\n", info->cmdline);
  fprintf(f, "- commit: %s\n", info->commit);
  fprintf(f, "- card: %s (sm_%d%d, %d SMs, %.1f GiB); driver %s; CUDA driver API %d.%d, runtime %d.%d\n", info->card,
          info->cc_major, info->cc_minor, info->n_sms, (double)info->total_mem_bytes / DEC_GIB, info->driver,
          info->driver_api / 1000, (info->driver_api % 1000) / 10, info->runtime_api / 1000,
          (info->runtime_api % 1000) / 10);
  fprintf(f, "- models: synthetic bf16 weights (wk_model_cuda_synthetic, seed %d); KV pages f16, %lld tokens a page, "
             "filled with uniform random f16 in [-1, 1) (kn_cuda_fill_random_f16, seed %d)%s\n",
          DEC_SEED, (long long)a->page_tokens, DEC_SEED,
          a->keys_skewed ? "; --kv-keys skewed: each physical page then refilled over [-s_p, s_p) with s_p in "
                           "[0.25, 1) fixed per page (heavy-hitter pages: rankings hold from step to step, so recalls "
                           "are rare, an optimistic case for ArkVale)" : "");
  fprintf(f, "- KV budgets (tokens per layer and sequence; full = the whole cache): %s. For each (shape, ctx) every "
             "budget runs in turn in this process, so a context's rows are measured side by side\n",
          budgets);
  if (arkvale) {
    fprintf(f, "- ArkVale rows: the first %d layers keep the full cache, the others their budget. %s The synthetic fill "
               "commits %d-token chunks (every page digested and backed up through the host) and compacts to the "
               "budget\n",
            kv_pool_params_default().n_full_layers,
            a->select_host
                ? "Decisions on the host (--kv-select host): digests scored on the device, each layer's queries come "
                  "down to the host, which picks the top-k and victims; each recalled page crosses PCIe with one "
                  "synchronous copy."
                : "Decisions on the device (select_on_device): per layer, digest scoring, the top-k / victim plan and "
                  "page-table update, and one gather of the recalls from pinned, device-mapped host memory; no host "
                  "round trip inside a step (the pool learns the swaps after it).",
            DEC_FILL_CHUNK);
    if (a->keys_skewed)
      fprintf(f, "- **Recalls are an optimistic case for ArkVale**: pages carry fixed importance, so the ranking "
                 "barely moves between steps and few pages are recalled (a real model sits between this and "
                 "--kv-keys uniform; compare the recalls column with the real model's rate in notes/device-runs.md)\n");
    else
      fprintf(f, "- **Recalls are a pessimistic case for ArkVale**: they are driven by random queries (random token "
                 "ids through random weights) against random keys, with none of a real model's step-to-step "
                 "locality, so expect more recalls than a real model would make\n");
  }
  fprintf(f, "- CUDA graphs: %s\n",
          a->no_graphs ? "off (--graphs off)"
                       : "on for full-cache rows (each decode step replayed from a graph); ArkVale steps launch their "
                         "kernels directly");
  fprintf(f, "- decode GEMMs: %s\n", a->no_gemv ? "cuBLASLt (--gemm cublas)" : "the GEMV kernel for <= 8 rows (kn_cuda_gemv.cu), cuBLASLt otherwise");
  fprintf(f, "- **KV filled synthetically; prefill not timed**: each sequence's ctx tokens are committed to the "
             "pool's tables without a forward pass (one kv_step_begin/kv_step_end for a full row, %d-token chunks "
             "for an ArkVale row); the pages keep their random fill\n",
          DEC_FILL_CHUNK);
  fprintf(f, "- per row: batch %lld sequences, %lld untimed warm-up steps, then %lld timed steps of one token per "
             "sequence (the same token ids in every row of a context); each step returns every sequence's logits "
             "(batch x n_vocab f32) to pinned host memory and ends with a stream synchronization; wall time around "
             "wk_forward_cuda_run\n",
          (long long)a->batch, (long long)a->n_warmup, (long long)a->n_steps);
  fprintf(f, "- bound = (weight bytes + K/V bytes read) / %.0f GB/s, K/V read = batch x mean attended tokens over "
             "the timed steps x n_layers x 2 x n_kv_heads x head_dim x 2 B (ArkVale: budgeted layers attend at most "
             "their budget and also read every page's digest); logits ignored. Goal: ratio <= 1.25\n",
          a->bandwidth_gbs);
  fprintf(f, "- vs full = the full row's median step / this row's (the speed-up over the full cache at the same "
             "shape and ctx; - when the full row did not run)\n");
  if (arkvale)
    fprintf(f, "- recalls/layer/step = pages recalled from the backup tier per budgeted layer, per sequence and per "
               "decode step, over the warm-up and timed steps (kv_pool_get_stats, the fill's work excluded); compare "
               "with the paper's Figure 4b (ArkVale, NeurIPS 2024), which reports that on real models few pages are "
               "recalled per decode step\n");
  fprintf(f, "- KV GiB = page memory allocated (full: batch x pages for ctx + warmup + steps + 1 tokens x layers; "
             "ArkVale: the same for its full layers, budget + one fill chunk + 2 pages per sequence for each budgeted "
             "layer)\n");
  fprintf(f, "- total time %.1f s\n\n", total_s);
  dec_print_table(f, a, rows, n_rows, 1);
  if (a->n_budgets > 1) {
    fprintf(f, "\nFastest budget per context:\n\n");
    dec_print_fastest(f, a, rows, n_rows);
  }
  fprintf(f, "\nGPU time per step by phase (CUDA events, mean of %d extra steps after the timed ones, run without "
             "a graph; tables = K/V store and page-table uploads, estimate = digest scoring, select = the plan "
             "kernel, recall = the gather, attention = the attention kernel, other = the rest of the step: GEMMs, "
             "norms, logits):\n\n| shape | ctx | budget | total ms | tables | estimate | select | recall | "
             "attention | other |\n|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n",
          DEC_PROFILE_STEPS);
  for (int r = 0; r < n_rows; r++)
    if (rows[r].status == DEC_ROW_OK) {
      char bbuf[32];
      const wk_cuda_profile_t *p = &rows[r].prof;
      double other = p->total_ms - p->tables_ms - p->estimate_ms - p->select_ms - p->recall_ms - p->attention_ms;
      fprintf(f, "| %s | %lld | %s | %.3f | %.3f | %.3f | %.3f | %.3f | %.3f | %.3f |\n", rows[r].shape,
              (long long)rows[r].ctx, dec_budget_str(rows[r].budget, bbuf, sizeof bbuf), p->total_ms, p->tables_ms,
              p->estimate_ms, p->select_ms, p->recall_ms, p->attention_ms, other);
    }
  fprintf(f, "\n| shape | ctx | budget | min ms | max ms | K/V read GB | device GiB (all accounted) |\n"
             "|---|---:|---:|---:|---:|---:|---:|\n");
  for (int r = 0; r < n_rows; r++)
    if (rows[r].status == DEC_ROW_OK) {
      char bbuf[32];
      fprintf(f, "| %s | %lld | %s | %.3f | %.3f | %.2f | %.2f |\n", rows[r].shape, (long long)rows[r].ctx,
              dec_budget_str(rows[r].budget, bbuf, sizeof bbuf), rows[r].min_ms, rows[r].max_ms,
              rows[r].kv_read_bytes * 1e-9, (double)rows[r].device_bytes / DEC_GIB);
    }
  int bad = ferror(f);
  if (fclose(f) != 0 || bad) {
    fprintf(stderr, "bench_decode: writing %s failed\n", path);
    return -1;
  }
  return 0;
}

/* bench/results/decode-<date>.md, or -2, -3, ... when taken. */
static int dec_default_out(const char *date, char *out, size_t out_bytes) {
  struct stat st;
  if (stat("bench/results", &st) != 0 || !S_ISDIR(st.st_mode)) {
    fprintf(stderr, "bench_decode: bench/results/ not found: run from the repository root or give --out\n");
    return -1;
  }
  for (int i = 1; i < 1000; i++) {
    if (i == 1) snprintf(out, out_bytes, "bench/results/decode-%s.md", date);
    else snprintf(out, out_bytes, "bench/results/decode-%s-%d.md", date, i);
    if (stat(out, &st) != 0) return 0;
  }
  return -1;
}

/* ------------------------------------------------------------------ main */

int main(int argc, char **argv) {
  dec_args_t a;
  char **argv_copy = malloc(sizeof(char *) * (size_t)(argc + 1)); /* the lists are split in place */
  dec_info_t info;
  memset(&info, 0, sizeof info);
  for (int i = 0; i < argc; i++) {
    size_t u = strlen(info.cmdline);
    snprintf(info.cmdline + u, sizeof info.cmdline - u, "%s%s", i ? " " : "", argv[i]);
  }
  if (!argv_copy) return 1;
  for (int i = 0; i < argc; i++) argv_copy[i] = strdup(argv[i]);
  argv_copy[argc] = NULL;
  int pr = dec_parse_args(argc, argv_copy, &a);
  if (pr != 0) return pr > 0 ? 0 : 2;
  if (!a.no_write && !a.out_path) {
    struct stat st;
    if (stat("bench/results", &st) != 0 || !S_ISDIR(st.st_mode)) {
      fprintf(stderr, "bench_decode: bench/results/ not found: run from the repository root, or give --out or "
                      "--no-write\n");
      return 2;
    }
  }
  if (dec_probe_device(&info) < 0) return 1;
  dec_commit(info.commit, sizeof info.commit);
  time_t now = time(NULL);
  strftime(info.date, sizeof info.date, "%Y-%m-%d", localtime(&now));
  printf("card: %s, %.1f GiB; driver %s; bound at %.0f GB/s\n", info.card, (double)info.total_mem_bytes / DEC_GIB,
         info.driver, a.bandwidth_gbs);
  char budgets[256];
  dec_budget_list(&a, budgets, sizeof budgets);
  printf("KV budgets (tokens per layer and sequence, side by side per context): %s%s\n", budgets,
         !dec_any_arkvale(&a) ? ""
         : a.select_host      ? "; ArkVale decides on the host (digests scored on the device)"
                              : "; ArkVale decides on the device (score, plan, gather per layer)");
  printf("decode GEMMs: %s; CUDA graphs %s\n", a.no_gemv ? "cuBLASLt" : "GEMV kernel (<= 8 rows)",
         a.no_graphs ? "off" : "on");
  printf("KV filled synthetically; prefill not timed. Each step: %lld tokens (one per sequence), logits to the host.\n",
         (long long)a.batch);

  double t_start = dec_now_ms();
  int n_rows = a.n_shapes * a.n_ctx * a.n_budgets, any_error = 0;
  dec_row_t *rows = calloc((size_t)n_rows, sizeof *rows);
  if (!rows) return 1;
  for (int s = 0; s < a.n_shapes; s++) {
    ak_err_t err;
    ak_err_clear(&err);
    wk_model_cuda_t *model = NULL;
    double t0 = dec_now_ms();
    ak_status_t st = wk_model_cuda_synthetic(a.shapes[s], DEC_SEED, &err, &model);
    if (st >= 0) {
      cudaError_t ce = cudaDeviceSynchronize();
      if (ce != cudaSuccess) st = AK_ERR(&err, AK_ERR_CUDA, "building the weights: %s", cudaGetErrorString(ce));
    }
    size_t weight_bytes = st >= 0 ? wk_model_cuda_weight_bytes(model) : 0;
    if (st >= 0)
      fprintf(stderr, "bench_decode: %s: %.2f GiB of weights built in %.1f s\n", a.shapes[s],
              (double)weight_bytes / DEC_GIB, (dec_now_ms() - t0) * 1e-3);
    for (int c = 0; c < a.n_ctx; c++) {
      if (st >= 0 && a.ctx[c] + a.n_warmup + a.n_steps > wk_model_cuda_hparams(model)->n_ctx_train)
        fprintf(stderr, "bench_decode: %s: ctx %lld is past the model's trained context %d (the timing does not "
                        "depend on it)\n",
                a.shapes[s], (long long)a.ctx[c], wk_model_cuda_hparams(model)->n_ctx_train);
      for (int k = 0; k < a.n_budgets; k++) { /* innermost: a context's rows side by side */
        dec_row_t *row = &rows[(s * a.n_ctx + c) * a.n_budgets + k];
        char bbuf[32];
        const char *budget = dec_budget_str(a.budgets[k], bbuf, sizeof bbuf);
        row->shape = a.shapes[s];
        row->ctx = a.ctx[c];
        row->budget = a.budgets[k];
        row->weight_bytes = weight_bytes;
        if (st < 0) {
          dec_row_fail(row, st, err.msg);
        } else {
          double t1 = dec_now_ms();
          dec_run_row(&a, model, row);
          fprintf(stderr, "bench_decode: %s ctx %lld budget %s: %s in %.1f s\n", a.shapes[s], (long long)row->ctx,
                  budget,
                  row->status == DEC_ROW_OK ? "done" : row->status == DEC_ROW_NO_FIT ? "does not fit" : "failed",
                  (dec_now_ms() - t1) * 1e-3);
        }
        if (row->status == DEC_ROW_ERROR) {
          any_error = 1;
          fprintf(stderr, "bench_decode: %s ctx %lld budget %s: %s\n", a.shapes[s], (long long)row->ctx, budget,
                  row->note);
        }
      }
    }
    wk_model_cuda_free(model);
  }
  double total_s = (dec_now_ms() - t_start) * 1e-3;

  dec_print_table(stdout, &a, rows, n_rows, 0);
  printf("bound: (weights + K/V read) / %.0f GB/s; goal ratio <= 1.25; vs_full: full row's median / this row's; "
         "recalls/l/s: pages recalled per budgeted layer, sequence and step; total %.1f s\n",
         a.bandwidth_gbs, total_s);
  int rc = any_error ? 1 : 0;
  if (!a.no_write) {
    char out[512];
    const char *path = a.out_path;
    if (!path) {
      if (dec_default_out(info.date, out, sizeof out) < 0) rc = 1;
      path = rc ? NULL : out;
    }
    if (path && dec_write_results(path, &a, &info, rows, n_rows, total_s) < 0) rc = 1;
    else if (path) printf("wrote %s\n", path);
  }
  int64_t left = ak_alloc_outstanding_bytes(AK_MEM_DEVICE);
  if (left != 0) fprintf(stderr, "bench_decode: %lld device bytes still outstanding at exit\n", (long long)left);
  free(rows);
  for (int i = 0; i < argc; i++) free(argv_copy[i]);
  free(argv_copy);
  return rc;
}
