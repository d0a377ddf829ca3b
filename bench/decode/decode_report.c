/* bench_decode's output: the machine it ran on, the tables, the results file (decode.h). */
#include <cuda_runtime_api.h>
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "bench_util.h"
#include "decode.h"
#include "kn_cuda.h"
#include "kvpool.h"


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

/* 0 ok; -1 no usable device (message printed). */
int dec_probe_device(dec_info_t *info) {
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
const char *dec_budget_str(int64_t budget, char *buf, size_t buf_bytes) {
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

/* This row against the full one: tokens/s over the full row's (the step-time ratio
 * when both decode the same batch). */
static double dec_vs_full(const dec_row_t *full, const dec_row_t *w) {
  return ((double)w->batch / w->median_ms) / ((double)full->batch / full->median_ms);
}

/* Pages recalled per (budgeted layer, sequence, step) over the warm-up and timed
 * steps; -1 for a full-cache row or a row that did not run. */
static double dec_recalls_per_layer_step(const dec_args_t *a, const dec_row_t *w) {
  if (w->status != DEC_ROW_OK || w->budget == 0 || w->n_budgeted_layers <= 0) return -1.0;
  return (double)w->recalls /
         ((double)w->n_budgeted_layers * (double)w->batch * (double)(a->n_warmup + a->n_steps));
}

void dec_print_table(FILE *f, const dec_args_t *a, const dec_row_t *rows, int n_rows, int md) {
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
                (long long)w->batch, (long long)w->ctx, budget, what, w->note, w_gib, kv_gib);
      else
        fprintf(f, "%-13s %5lld %6lld %6s  %s (weights %.2f GiB, KV %.2f GiB): %s\n", w->shape, (long long)w->batch,
                (long long)w->ctx, budget, what, w_gib, kv_gib, w->note);
      continue;
    }
    const dec_row_t *full = dec_full_row(a, rows, r);
    if (full) snprintf(vbuf, sizeof vbuf, "%.2fx", dec_vs_full(full, w));
    else snprintf(vbuf, sizeof vbuf, "-");
    double rps = dec_recalls_per_layer_step(a, w);
    if (rps >= 0) snprintf(rbuf, sizeof rbuf, "%.2f", rps);
    else snprintf(rbuf, sizeof rbuf, "-");
    double ratio = w->median_ms / w->bound_ms, tok_s = (double)w->batch / (w->median_ms * 1e-3);
    if (md)
      fprintf(f, "| %s | %lld | %lld | %s | %.3f | %.3f | %.3f | %s | %s | %.3f | %.2f | %.1f | %.2f | %.2f |\n",
              w->shape, (long long)w->batch, (long long)w->ctx, budget, w->median_ms, w->p10_ms, w->p90_ms, vbuf,
              rbuf, w->bound_ms, ratio, tok_s, w_gib, kv_gib);
    else
      fprintf(f, "%-13s %5lld %6lld %6s %9.3f %8.3f %8.3f %7s %11s %8.3f %6.2f %8.1f %7.2f %7.2f\n", w->shape,
              (long long)w->batch, (long long)w->ctx, budget, w->median_ms, w->p10_ms, w->p90_ms, vbuf, rbuf,
              w->bound_ms, ratio, tok_s, w_gib, kv_gib);
  }
}

/* Per (shape, ctx): the budget with the most tokens/s (the fastest step when every row
 * decodes the same batch), and its speed-up over the full row of that context. */
static void dec_print_fastest(FILE *f, const dec_args_t *a, const dec_row_t *rows, int n_rows) {
  fprintf(f, "| shape | ctx | fastest budget | batch | step ms (median) | tok/s | vs full |\n"
             "|---|---:|---:|---:|---:|---:|---:|\n");
  for (int first = 0; first < n_rows; first += a->n_budgets) {
    const dec_row_t *best = NULL;
    for (int k = first; k < first + a->n_budgets; k++)
      if (rows[k].status == DEC_ROW_OK &&
          (!best || (double)rows[k].batch / rows[k].median_ms > (double)best->batch / best->median_ms))
        best = &rows[k];
    if (!best) {
      fprintf(f, "| %s | %lld | - (no row ran) | - | - | - | - |\n", rows[first].shape, (long long)rows[first].ctx);
      continue;
    }
    char bbuf[32];
    const dec_row_t *full = dec_full_row(a, rows, first);
    fprintf(f, "| %s | %lld | %s | %lld | %.3f | %.1f | ", best->shape, (long long)best->ctx,
            dec_budget_str(best->budget, bbuf, sizeof bbuf), (long long)best->batch, best->median_ms,
            (double)best->batch / (best->median_ms * 1e-3));
    if (full) fprintf(f, "%.2fx |\n", dec_vs_full(full, best));
    else fprintf(f, "- |\n");
  }
}

/* The budget list for humans: "full, 512, 1024". */
void dec_budget_list(const dec_args_t *a, char *out, size_t out_bytes) {
  out[0] = 0;
  for (int k = 0; k < a->n_budgets; k++) {
    char bbuf[32];
    size_t u = strlen(out);
    snprintf(out + u, out_bytes - u, "%s%s", k ? ", " : "", dec_budget_str(a->budgets[k], bbuf, sizeof bbuf));
  }
}

/* 1 when some row is ArkVale (a budget > 0). */
int dec_any_arkvale(const dec_args_t *a) {
  for (int k = 0; k < a->n_budgets; k++)
    if (a->budgets[k] > 0) return 1;
  return 0;
}

int dec_write_results(const char *path, const dec_args_t *a, const dec_info_t *info, const dec_row_t *rows,
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
            (int)a->fill_chunk);
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
                       : a->select_host
                             ? "on for full-cache rows (each decode step replayed from a graph); ArkVale deciding on "
                               "the host launches its kernels directly"
                             : "on: full-cache and ArkVale rows replay each decode step from a graph (an ArkVale step "
                               "that completes a page, 1 in page-tokens, runs its kernels directly); the phase table "
                               "runs without graphs");
  fprintf(f, "- decode GEMMs (--gemm %s): %s\n", dec_gemm_names[a->gemm_mode], dec_gemm_desc[a->gemm_mode]);
  fprintf(f, "- **KV filled synthetically; prefill not timed**: each sequence's ctx tokens are committed to the "
             "pool's tables without a forward pass (one kv_step_begin/kv_step_end for a full row, %lld-token chunks "
             "for an ArkVale row); the pages keep their random fill\n",
          (long long)a->fill_chunk);
  if (a->kv_limit_gib > 0)
    fprintf(f, "- **KV memory cap %.1f GiB (--kv-limit-gib, the paper's Figure 9b)**: each row decodes as many "
               "sequences as its KV pages fit in the cap (KV GiB column; ArkVale's digests and the pinned backups "
               "are outside it), and vs full compares tokens/s (batch / step time) with the full row's\n",
            a->kv_limit_gib);
  for (int r = 0; r < n_rows; r++) {
    const dec_row_t *w = &rows[r];
    if (w->status != DEC_ROW_OK || w->slab_bytes >= w->tier_bytes) continue;
    char bbuf[32];
    fprintf(f, "- **backup slots aliased** in row %s ctx %lld budget %s (--host-slab-gib %.1f): its backup tier of "
               "%.1f GiB lives in %.1f GiB of pinned memory whose slots alias (kv_tier_host alias_slab_bytes): every "
               "backup and recall moves its full page over PCIe as usual, but a recalled page may hold another "
               "page's (random) bytes. Only speed is measured here\n",
            w->shape, (long long)w->ctx, dec_budget_str(w->budget, bbuf, sizeof bbuf), a->host_slab_gib,
            (double)w->tier_bytes / DEC_GIB, (double)w->slab_bytes / DEC_GIB);
  }
  fprintf(f, "- per row: batch %lld sequences, %lld untimed warm-up steps, then %lld timed steps of one token per "
             "sequence (the same token ids in every row of a context); each step returns %s and ends with a "
             "stream synchronization; wall time around %s\n",
          (long long)a->batch, (long long)a->n_warmup, (long long)a->n_steps,
          a->sample_device ? "greedy token ids sampled on the device (--sample device: the vocab projection's "
                             "logits stay on the GPU)"
                           : "every sequence's logits (batch x n_vocab f32) to pinned host memory",
          a->sample_device ? "wk_forward_cuda_run_sampled" : "wk_forward_cuda_run");
  if (a->kv_limit_gib > 0) fprintf(f, "  (the batch above is --batch's default; every row's own batch is in its table row)\n");
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
int dec_default_out(const char *date, char *out, size_t out_bytes) {
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

