/* bench_decode's flags (decode.h). */
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "decode.h"
#include "wk_model_cuda.h"

const char *const dec_gemm_names[4] = {"auto", "cublas", "fma", "mma"};
const char *const dec_gemm_desc[4] = {
    "kn_cuda_gemm's choice: the FMA GEMV for one or two rows, and for <= 8 rows on weights <= 8M elements; "
    "the tensor-core GEMV for 3..8 rows on larger weights; cuBLASLt above 8 rows",
    "cuBLASLt for every GEMM",
    "the GEMV kernel (kn_cuda_gemv.cu) for <= 8 rows, cuBLASLt otherwise",
    "the tensor-core GEMV (kn_cuda_gemv_mma.cu) for <= 8 rows, cuBLASLt otherwise"};

void dec_usage(FILE *f) {
  fprintf(f,
          "usage: bench_decode [options]   (run from the repository root, on a GPU host)\n"
          "  --shape NAME[,NAME]  synthetic model shape, repeatable: llama2-7b, longchat-7b, llama3-8b,\n"
          "                       smollm2-135m (default longchat-7b)\n"
          "  --batch B            sequences decoding together, one token each per step (default 4)\n"
          "  --kv-limit-gib G     instead of --batch: each row decodes as many sequences as its KV pages\n"
          "                       fit in G GiB (the paper's Figure 9b: throughput under a KV memory cap)\n"
          "  --fill-chunk T       tokens per synthetic-fill step of an ArkVale row (default %d); the\n"
          "                       pool holds budget + T tokens per budgeted layer while filling\n"
          "  --host-slab-gib H    cap the pinned backup memory at H GiB; a tier needing more has its\n"
          "                       slots alias (synthetic K/V only: speed is what is measured)\n"
          "  --ctx N[,N...]       cached tokens per sequence before the timed steps\n"
          "                       (default 10240,20480,30720)\n"
          "  --steps N            timed decode steps (default 32)\n"
          "  --gemm auto|cublas|fma|mma  decode GEMMs (<= 8 rows): kn_cuda_gemm's choice (default),\n"
          "                       cuBLASLt, the FMA GEMV or the tensor-core GEMV forced\n"
          "  --graphs on|off      replay each decode step from a CUDA graph (default on)\n"
          "  --sample logits|device  what a step returns: every sequence's logits (default, f32 to\n"
          "                       pinned host memory) or greedy token ids sampled on the device\n"
          "                       (wk_forward_cuda_run_sampled, the serving path on CUDA)\n"
          "  --cuda-profiler      bracket each row's last timed step with cudaProfilerStart/Stop,\n"
          "                       so `ncu --profile-from-start off` sees one decode step per row\n"
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
          DEC_FILL_CHUNK, DEC_MAX_BUDGETS, 1 << 24);
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
int dec_parse_args(int argc, char **argv, dec_args_t *a) {
  memset(a, 0, sizeof *a);
  a->batch = 4;
  a->n_steps = 32;
  a->n_warmup = 4;
  a->page_tokens = 32;
  a->bandwidth_gbs = 3350.0;
  a->fill_chunk = DEC_FILL_CHUNK;
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
    if (!strcmp(f, "--cuda-profiler")) {
      a->cuda_profiler = 1;
      continue;
    }
    if (strcmp(f, "--shape") && strcmp(f, "--batch") && strcmp(f, "--ctx") && strcmp(f, "--steps") &&
        strcmp(f, "--warmup") && strcmp(f, "--page-tokens") && strcmp(f, "--device") &&
        strcmp(f, "--bandwidth-gbs") && strcmp(f, "--out") && strcmp(f, "--gemm") &&
        strcmp(f, "--graphs") && strcmp(f, "--kv-budget") && strcmp(f, "--kv-select") && strcmp(f, "--kv-keys") &&
        strcmp(f, "--kv-limit-gib") && strcmp(f, "--fill-chunk") && strcmp(f, "--host-slab-gib") &&
        strcmp(f, "--sample")) {
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
    else if (!strcmp(f, "--fill-chunk")) r = dec_parse_int(f, v, 1, 1 << 20, &a->fill_chunk);
    else if (!strcmp(f, "--kv-limit-gib") || !strcmp(f, "--host-slab-gib")) {
      char *end = NULL;
      errno = 0;
      double g = strtod(v, &end);
      if (errno || !end || *end || !(g > 0) || g > 1e6) {
        fprintf(stderr, "bench_decode: %s expects a positive number of GiB, got '%s'\n", f, v);
        r = -1;
      } else if (!strcmp(f, "--kv-limit-gib")) a->kv_limit_gib = g;
      else a->host_slab_gib = g;
    }
    else if (!strcmp(f, "--sample")) {
      if (!strcmp(v, "logits")) a->sample_device = 0;
      else if (!strcmp(v, "device")) a->sample_device = 1;
      else {
        fprintf(stderr, "bench_decode: --sample expects logits or device, got '%s'\n", v);
        r = -1;
      }
    }
    else if (!strcmp(f, "--gemm")) {
      int m = -1;
      for (int k = 0; k < 4; k++)
        if (!strcmp(v, dec_gemm_names[k])) m = k;
      if (m >= 0) a->gemm_mode = m;
      else {
        fprintf(stderr, "bench_decode: --gemm expects auto, cublas, fma or mma, got '%s'\n", v);
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

