/* bench_decode: decode-step latency of the GPU engine with the full cache at the
 * paper's shapes (ArkVale's Figure 9 protocol; the full-cache column).
 *
 * Per (shape, ctx): a synthetic model on the device (wk_model_cuda_synthetic, seed 1,
 * built once per shape), a `full` pool over zeroed f16 device page memory for --batch
 * sequences, each sequence's cache filled to ctx tokens WITHOUT a prefill forward (one
 * kv_step_begin / kv_step_end that only commits the tokens to the pool's tables: the
 * pages stay zero, which does not change a decode step's time), then --warmup untimed
 * and --steps timed decode steps of one token per sequence through wk_forward_cuda_run,
 * each returning every sequence's logits to pinned host memory (what a server needs
 * before it samples on the host). The step's wall time is host-measured around the
 * call, which ends with a stream synchronization.
 *
 * Each row is compared with a memory-bandwidth bound: a decode step must read every
 * weight once and every cached K/V byte once.
 *
 * Not here: prefill time, ArkVale on the GPU (a later column), CUDA graphs. */
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
  int64_t budget;       /* --kv-budget: 0 = the full cache; else ArkVale with this budget (tokens) */
} dec_args_t;

/* Tokens per synthetic-fill step of an ArkVale row. */
#define DEC_FILL_CHUNK 2048

typedef enum { DEC_ROW_OK = 0, DEC_ROW_NO_FIT = 1, DEC_ROW_ERROR = 2 } dec_row_status_t;

typedef struct {
  const char *shape;
  int64_t ctx;
  dec_row_status_t status;
  char note[AK_ERR_MSG_BYTES]; /* why it did not fit or failed */
  double median_ms, p10_ms, p90_ms, min_ms, max_ms;
  double bound_ms;
  size_t weight_bytes;
  size_t kv_alloc_bytes;   /* page memory allocated for the pool */
  double kv_read_bytes;    /* K/V bytes a timed step reads, mean over the timed steps */
  int64_t device_bytes;    /* every accounted device allocation during the steps */
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
          "  --kv-budget TOKENS   0 = full cache (default); else ArkVale with this budget per layer\n"
          "                       (the synthetic fill then goes in chunks, backing up every page)\n"
          "  --warmup N           untimed decode steps first (default 4)\n"
          "  --page-tokens N      tokens per KV page, 1..256 (default 32)\n"
          "  --device cuda        the only device (cpu is refused: this measures the GPU engine)\n"
          "  --bandwidth-gbs X    memory bandwidth of the bound, GB/s (default 3350: H100 SXM HBM3)\n"
          "  --out PATH           results file (default bench/results/decode-<date>.md)\n"
          "  --no-write           print only, write no results file\n");
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
  int ctx_given = 0;
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
        strcmp(f, "--graphs") && strcmp(f, "--kv-budget")) {
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
    else if (!strcmp(f, "--kv-budget")) r = dec_parse_int(f, v, 0, 1 << 24, &a->budget);
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
  int64_t max_tokens = row->ctx + a->n_warmup + a->n_steps + 1;
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
  kp.policy = a->budget > 0 ? KV_POLICY_ARKVALE : KV_POLICY_FULL;
  kp.budget_tokens = (int32_t)a->budget;
  kp.n_layers = hp->n_layers;
  kp.n_kv_heads = hp->n_kv_heads;
  kp.n_heads = hp->n_heads;
  kp.head_dim = hp->head_dim;
  kp.page_tokens = (int32_t)a->page_tokens;
  kp.max_seqs = B;
  kp.max_seq_tokens = (int32_t)max_tokens;
  kp.n_pages = (int64_t)B * kv_pages_for_tokens(max_tokens, kp.page_tokens) * hp->n_layers;
  if (a->budget > 0) { /* full layers + budgeted layers at budget, plus one fill chunk in flight */
    int64_t budgeted = hp->n_layers - kp.n_full_layers;
    kp.n_pages = (int64_t)B * (kv_pages_for_tokens(max_tokens, kp.page_tokens) * kp.n_full_layers +
                               (a->budget / kp.page_tokens + DEC_FILL_CHUNK / kp.page_tokens + 2) * budgeted);
  }
  kp.dtype = KN_F16;
  kp.check_every_step = 0; /* a Debug build would check every table each step: not what we time */
  row->kv_alloc_bytes = (size_t)kp.n_pages * kv_page_bytes(&kp);
  st = kn_cuda_malloc(row->kv_alloc_bytes, &err, &pages);
  if (st < 0) goto fail;
  cudaError_t ce = cudaMemset(pages, 0, row->kv_alloc_bytes);
  if (ce == cudaSuccess) ce = cudaDeviceSynchronize();
  if (ce != cudaSuccess) {
    st = AK_ERR(&err, AK_ERR_CUDA, "zeroing %zu bytes of pages: %s", row->kv_alloc_bytes, cudaGetErrorString(ce));
    goto fail;
  }
  kp.page_memory = pages;
  /* decode only: B rows a step, so the attention split workspace stays small (the
   * ArkVale fill goes through the pool's tables only, no forward) */
  st = wk_forward_cuda_create(model, &kp, B, &err, &fw);
  if (st < 0) goto fail;
  st = wk_forward_cuda_page_ops(fw, pages, &kp, &err, &kp.page_ops);
  if (st < 0) goto fail;
  st = kv_pool_create(&kp, &err, &pool);
  if (st < 0) goto fail;
  wk_forward_cuda_use_gemv(fw, !a->no_gemv);
  wk_forward_cuda_use_graphs(fw, !a->no_graphs);
  st = kn_cuda_host_alloc(logits_bytes, &err, (void **)&logits, NULL);
  if (st < 0) goto fail;

  /* KV filled synthetically; prefill not timed: one step commits ctx tokens per
   * sequence to the pool's tables without a forward pass (the pages stay zero). */
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
    int64_t chunk = a->budget > 0 ? DEC_FILL_CHUNK : row->ctx;
    if (chunk > row->ctx - done_tok) chunk = row->ctx - done_tok;
    for (int32_t i = 0; i < B; i++) n_new[i] = (int32_t)chunk;
    st = kv_step_begin(pool, &fill);
    for (int32_t l = 0; st >= 0 && a->budget > 0 && l < hp->n_layers; l++) st = kv_layer_commit(pool, l);
    if (st >= 0) st = kv_step_end(pool);
    for (int32_t i = 0; st >= 0 && a->budget > 0 && i < B; i++) st = kv_seq_compact(pool, seqs[i]);
    if (st < 0) {
      st = AK_ERR(&err, st, "synthetic fill (%lld of %lld tokens x %d sequences): %s", (long long)done_tok,
                  (long long)row->ctx, B, kv_pool_errmsg(pool));
      goto fail;
    }
    done_tok += chunk;
  }

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
  if (a->budget > 0) { /* full layers read everything; budgeted ones their budget and every digest */
    int64_t n_full = kp.n_full_layers, budgeted = hp->n_layers - n_full;
    double attended = mean_kv_len < (double)a->budget ? mean_kv_len : (double)a->budget;
    double digest_bytes = (mean_kv_len / (double)kp.page_tokens) * hp->n_kv_heads *
                          kv_digest_floats(kp.digest, hp->head_dim) * 4.0;
    row->kv_read_bytes = (double)B * (mean_kv_len * layer_token_bytes * n_full +
                                      (attended * layer_token_bytes + digest_bytes) * budgeted);
    kv_pool_stats_t ps;
    kv_pool_get_stats(pool, &ps);
    fprintf(stderr, "bench_decode: %s ctx %lld budget %lld: per step %.2f recalls, %.2f selections; estimate %.2f ms, "
            "select %.2f ms, recall %.2f ms per step (host-driven)\n", row->shape, (long long)row->ctx,
            (long long)a->budget, (double)ps.work.recalls / (double)(a->n_warmup + a->n_steps),
            (double)ps.work.n_selects / (double)(a->n_warmup + a->n_steps),
            ps.work.estimate_us / 1e3 / (double)(a->n_warmup + a->n_steps),
            ps.work.select_us / 1e3 / (double)(a->n_warmup + a->n_steps),
            ps.work.recall_us / 1e3 / (double)(a->n_warmup + a->n_steps));
  }
  row->bound_ms = ((double)row->weight_bytes + row->kv_read_bytes) / (a->bandwidth_gbs * 1e9) * 1e3;
  row->status = DEC_ROW_OK;
  goto done;

fail:
  dec_row_fail(row, st, err.msg);
done:
  kn_cuda_host_free(logits, logits_bytes);
  wk_forward_cuda_destroy(fw);
  kv_pool_destroy(pool);
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

static void dec_print_table(FILE *f, const dec_args_t *a, const dec_row_t *rows, int n_rows, int md) {
  const char *hdr[] = {"shape", "batch", "ctx", "step ms (median)", "p10", "p90", "bound ms", "ratio", "tok/s",
                       "weights GiB", "KV GiB"};
  int n_cols = (int)(sizeof hdr / sizeof hdr[0]);
  if (md) {
    fprintf(f, "|");
    for (int c = 0; c < n_cols; c++) fprintf(f, " %s |", hdr[c]);
    fprintf(f, "\n|---|");
    for (int c = 1; c < n_cols; c++) fprintf(f, "---:|");
    fprintf(f, "\n");
  } else {
    fprintf(f, "%-13s %5s %6s %9s %8s %8s %8s %6s %8s %7s %7s\n", "shape", "batch", "ctx", "step_ms", "p10", "p90",
            "bound_ms", "ratio", "tok/s", "w_GiB", "kv_GiB");
  }
  for (int r = 0; r < n_rows; r++) {
    const dec_row_t *w = &rows[r];
    double w_gib = (double)w->weight_bytes / DEC_GIB, kv_gib = (double)w->kv_alloc_bytes / DEC_GIB;
    if (w->status != DEC_ROW_OK) {
      const char *what = w->status == DEC_ROW_NO_FIT ? "does not fit" : "error";
      if (md)
        fprintf(f, "| %s | %lld | %lld | %s: %s | | | | | | %.2f | %.2f |\n", w->shape, (long long)a->batch,
                (long long)w->ctx, what, w->note, w_gib, kv_gib);
      else
        fprintf(f, "%-13s %5lld %6lld  %s (weights %.2f GiB, KV %.2f GiB): %s\n", w->shape, (long long)a->batch,
                (long long)w->ctx, what, w_gib, kv_gib, w->note);
      continue;
    }
    double ratio = w->median_ms / w->bound_ms, tok_s = (double)a->batch / (w->median_ms * 1e-3);
    if (md)
      fprintf(f, "| %s | %lld | %lld | %.3f | %.3f | %.3f | %.3f | %.2f | %.1f | %.2f | %.2f |\n", w->shape,
              (long long)a->batch, (long long)w->ctx, w->median_ms, w->p10_ms, w->p90_ms, w->bound_ms, ratio, tok_s,
              w_gib, kv_gib);
    else
      fprintf(f, "%-13s %5lld %6lld %9.3f %8.3f %8.3f %8.3f %6.2f %8.1f %7.2f %7.2f\n", w->shape,
              (long long)a->batch, (long long)w->ctx, w->median_ms, w->p10_ms, w->p90_ms, w->bound_ms, ratio, tok_s,
              w_gib, kv_gib);
  }
}

static int dec_write_results(const char *path, const dec_args_t *a, const dec_info_t *info, const dec_row_t *rows,
                             int n_rows, double total_s) {
  FILE *f = fopen(path, "w");
  if (!f) {
    fprintf(stderr, "bench_decode: cannot write %s: %s\n", path, strerror(errno));
    return -1;
  }
  fprintf(f, "# decode — %s\n\n", info->date);
  fprintf(f, "Decode-step latency of the GPU engine with the full KV cache (the paper's Figure 9 protocol, "
             "full-cache column). See bench/decode/README.md.\n\n");
  fprintf(f, "- command: `%s` (from the repository root)\n", info->cmdline);
  fprintf(f, "- commit: %s\n", info->commit);
  fprintf(f, "- card: %s (sm_%d%d, %d SMs, %.1f GiB); driver %s; CUDA driver API %d.%d, runtime %d.%d\n", info->card,
          info->cc_major, info->cc_minor, info->n_sms, (double)info->total_mem_bytes / DEC_GIB, info->driver,
          info->driver_api / 1000, (info->driver_api % 1000) / 10, info->runtime_api / 1000,
          (info->runtime_api % 1000) / 10);
  fprintf(f, "- models: synthetic bf16 weights (wk_model_cuda_synthetic, seed %d); KV pages f16, %lld tokens a page\n",
          DEC_SEED, (long long)a->page_tokens);
  if (a->budget > 0)
    fprintf(f, "- KV: ArkVale, budget %lld tokens per layer and sequence (2 full layers); decisions on the host, "
            "digests scored on the device; the synthetic fill commits %d-token chunks (every page digested and backed "
            "up) and compacts; zero pages tie every score, so recalls are not representative\n",
            (long long)a->budget, DEC_FILL_CHUNK);
  fprintf(f, "- CUDA graphs: %s\n", a->no_graphs ? "off (--graphs off)" : "on (each decode step replayed from a graph)");
  fprintf(f, "- decode GEMMs: %s\n", a->no_gemv ? "cuBLASLt (--gemm cublas)" : "the GEMV kernel for <= 8 rows (kn_cuda_gemv.cu), cuBLASLt otherwise");
  fprintf(f, "- **KV filled synthetically; prefill not timed**: each sequence's ctx tokens are committed to the "
             "pool's tables by one kv_step_begin/kv_step_end without a forward pass; the pages are zero "
             "(decode time does not depend on K/V values)\n");
  fprintf(f, "- per row: batch %lld sequences, %lld untimed warm-up steps, then %lld timed steps of one token per "
             "sequence; each step returns every sequence's logits (batch x n_vocab f32) to pinned host memory and "
             "ends with a stream synchronization; wall time around wk_forward_cuda_run\n",
          (long long)a->batch, (long long)a->n_warmup, (long long)a->n_steps);
  fprintf(f, "- bound = (weight bytes + K/V bytes read) / %.0f GB/s, K/V read = batch x mean attended tokens over "
             "the timed steps x n_layers x 2 x n_kv_heads x head_dim x 2 B; logits ignored. Goal: ratio <= 1.25\n",
          a->bandwidth_gbs);
  fprintf(f, "- KV GiB = page memory allocated (batch x pages for ctx + warmup + steps + 1 tokens x layers); "
             "no CUDA graphs yet\n");
  fprintf(f, "- total time %.1f s\n\n", total_s);
  dec_print_table(f, a, rows, n_rows, 1);
  fprintf(f, "\n| shape | ctx | min ms | max ms | K/V read GB | device GiB (all accounted) |\n|---|---:|---:|---:|---:|"
             "---:|\n");
  for (int r = 0; r < n_rows; r++)
    if (rows[r].status == DEC_ROW_OK)
      fprintf(f, "| %s | %lld | %.3f | %.3f | %.2f | %.2f |\n", rows[r].shape, (long long)rows[r].ctx,
              rows[r].min_ms, rows[r].max_ms, rows[r].kv_read_bytes * 1e-9, (double)rows[r].device_bytes / DEC_GIB);
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
  printf("KV: %s\n", a.budget > 0 ? "ArkVale (host-driven decisions, digests scored on the device)" : "full cache");
  if (a.budget > 0) printf("ArkVale budget: %lld tokens per layer and sequence\n", (long long)a.budget);
  printf("decode GEMMs: %s; CUDA graphs %s\n", a.no_gemv ? "cuBLASLt" : "GEMV kernel (<= 8 rows)",
         a.no_graphs ? "off" : "on");
  printf("KV filled synthetically; prefill not timed. Each step: %lld tokens (one per sequence), logits to the host.\n",
         (long long)a.batch);

  double t_start = dec_now_ms();
  int n_rows = a.n_shapes * a.n_ctx, any_error = 0;
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
      dec_row_t *row = &rows[s * a.n_ctx + c];
      row->shape = a.shapes[s];
      row->ctx = a.ctx[c];
      row->weight_bytes = weight_bytes;
      if (st < 0) {
        dec_row_fail(row, st, err.msg);
      } else {
        if (row->ctx + a.n_warmup + a.n_steps > wk_model_cuda_hparams(model)->n_ctx_train)
          fprintf(stderr, "bench_decode: %s: ctx %lld is past the model's trained context %d (the timing does not "
                          "depend on it)\n",
                  a.shapes[s], (long long)row->ctx, wk_model_cuda_hparams(model)->n_ctx_train);
        double t1 = dec_now_ms();
        dec_run_row(&a, model, row);
        fprintf(stderr, "bench_decode: %s ctx %lld: %s in %.1f s\n", a.shapes[s], (long long)row->ctx,
                row->status == DEC_ROW_OK ? "done" : row->status == DEC_ROW_NO_FIT ? "does not fit" : "failed",
                (dec_now_ms() - t1) * 1e-3);
      }
      if (row->status == DEC_ROW_ERROR) {
        any_error = 1;
        fprintf(stderr, "bench_decode: %s ctx %lld: %s\n", a.shapes[s], (long long)row->ctx, row->note);
      }
    }
    wk_model_cuda_free(model);
  }
  double total_s = (dec_now_ms() - t_start) * 1e-3;

  dec_print_table(stdout, &a, rows, n_rows, 0);
  printf("bound: (weights + K/V read) / %.0f GB/s; goal ratio <= 1.25; total %.1f s\n", a.bandwidth_gbs, total_s);
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
