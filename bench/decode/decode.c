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
 * pinned host memory, or (--sample device) through wk_forward_cuda_run_sampled, greedy
 * ids picked on the device as the worker service does on CUDA. The step's
 * wall time is host-measured around the call, which ends with a stream synchronization.
 *
 * Budget 0 is the full cache (decode steps replayed from CUDA graphs); a budget > 0 is
 * ArkVale, deciding on the device (select_on_device: digest scoring, top-k / victim plan
 * and one gather of the recalls per layer) unless --kv-select host. Each row is compared
 * with a memory-bandwidth bound (every weight once, every attended K/V byte and, for
 * ArkVale, every digest once), with the full row of its context (the speed-up), and
 * ArkVale rows report their recalls per budgeted layer, sequence and step.
 *
 * With --kv-limit-gib each row's batch is the most sequences whose pages fit the cap
 * (Figure 9b: throughput under a KV memory limit), and "vs full" compares tokens/s.
 *
 * Not here: prefill time, accuracy (random K/V and weights: the recalls are not a real
 * model's). */
#include <cuda_profiler_api.h>
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
#include "bench_util.h"
#include "kn_cuda.h"
#include "kvpool.h"
#include "wk_forward_cuda.h"
#include "decode.h"

static double dec_now_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec * 1e3 + (double)ts.tv_nsec * 1e-6;
}

/* ------------------------------------------------------------------ flags */

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

/* Decode steps a row runs past its context (warm-up, timed, profiled, one spare). */
static int64_t dec_max_tokens(const dec_args_t *a, int64_t ctx) {
  return ctx + a->n_warmup + a->n_steps + DEC_PROFILE_STEPS + 1;
}

int64_t dec_row_pages(const dec_args_t *a, const wk_hparams_t *hp, int64_t ctx, int64_t budget, int64_t batch) {
  int64_t max_tokens = dec_max_tokens(a, ctx), page = a->page_tokens;
  int64_t seq_pages = kv_pages_for_tokens(max_tokens, (int32_t)page);
  if (budget <= 0) return batch * seq_pages * hp->n_layers;
  kv_pool_params_t kp = kv_pool_params_default(); /* n_full_layers: the pool's default */
  int64_t budgeted = hp->n_layers - kp.n_full_layers;
  return batch * (seq_pages * kp.n_full_layers + (budget / page + kv_pages_for_tokens(a->fill_chunk, (int32_t)page) + 2) *
                                                     budgeted);
}

/* Pool, forward, synthetic fill, warm-up and timed steps for one row. Frees all it
 * allocated before returning, whatever happened (the next row needs the memory). */
static void dec_run_row(const dec_args_t *a, const wk_model_cuda_t *model, dec_row_t *row) {
  const wk_hparams_t *hp = wk_model_cuda_hparams(model);
  int32_t B = (int32_t)row->batch;
  int64_t max_tokens = dec_max_tokens(a, row->ctx);
  ak_err_t err;
  ak_err_clear(&err);
  ak_status_t st = AK_OK;
  void *pages = NULL;              /* [n_pages] pages of kv_page_bytes, f16 (kvpool.h) */
  kv_pool_t *pool = NULL;
  wk_forward_cuda_t *fw = NULL;
  float *logits = NULL;            /* [B, n_vocab] f32, pinned host */
  wk_cuda_sample_seq_t *greedy = NULL; /* [B] --sample device: greedy requests */
  int32_t *ids = NULL;                 /* [B] their token ids */
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
  /* full: every layer's pages; ArkVale: full layers + budgeted layers at budget, plus
   * one fill chunk in flight */
  kp.n_pages = dec_row_pages(a, hp, row->ctx, row->budget, B);
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
  if (st >= 0 && kp.select_on_device) {
    row->tier_bytes = kv_pool_tier_bytes(&kp);
    row->slab_bytes = row->tier_bytes;
    if (a->host_slab_gib > 0 && (double)row->tier_bytes > a->host_slab_gib * DEC_GIB)
      row->slab_bytes = (size_t)(a->host_slab_gib * DEC_GIB);
    st = wk_forward_cuda_device_tier(fw, &kp, row->slab_bytes < row->tier_bytes ? row->slab_bytes : 0, &err,
                                     &kp.tier);
  }
  if (st < 0) goto fail;
  st = kv_pool_create(&kp, &err, &pool);
  if (st < 0) goto fail;
  st = wk_forward_cuda_set_decode_gemm(fw, (kn_cuda_decode_gemm_t)a->gemm_mode, &err);
  if (st < 0) goto fail;
  wk_forward_cuda_use_graphs(fw, !a->no_graphs);
  if (!a->sample_device) { /* --sample device brings back ids only */
    st = kn_cuda_host_alloc(logits_bytes, &err, (void **)&logits, NULL);
    if (st < 0) goto fail;
  }

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
    int64_t chunk = row->budget > 0 ? a->fill_chunk : row->ctx;
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
  /* --sample device: greedy ids on the device (the serving path), only ids come back */
  wk_cuda_sample_t sample = {0};
  const wk_cuda_sample_t *smp = NULL;
  if (a->sample_device) {
    greedy = calloc((size_t)B, sizeof *greedy);
    ids = calloc((size_t)B, sizeof *ids);
    if (!greedy || !ids) {
      st = AK_ERR(&err, AK_ERR_NO_MEMORY, "sampling requests for %d sequences", B);
      goto fail;
    }
    for (int32_t i = 0; i < B; i++) greedy[i] = wk_cuda_sample_seq_greedy();
    sample = (wk_cuda_sample_t){.seqs = greedy, .token_ids = ids, .logprobs = NULL};
    smp = &sample;
  }
  uint64_t rng = 0x9E3779B97F4A7C15ull ^ (uint64_t)row->ctx;
  for (int64_t step = 0; step < a->n_warmup + a->n_steps; step++) {
    for (int32_t i = 0; i < B; i++) { /* random valid ids (xorshift64) */
      rng ^= rng << 13, rng ^= rng >> 7, rng ^= rng << 17;
      tokens[i] = (int32_t)(rng % (uint64_t)hp->n_vocab);
    }
    int profiled = a->cuda_profiler && step == a->n_warmup + a->n_steps - 1;
    if (profiled) cudaProfilerStart();
    double t0 = dec_now_ms();
    st = wk_forward_cuda_run_sampled(fw, pool, &b, smp, &err); /* ends with a stream synchronization */
    double t1 = dec_now_ms();
    if (profiled) cudaProfilerStop();
    if (st < 0) goto fail;
    if (step >= a->n_warmup) step_ms[step - a->n_warmup] = t1 - t0;
  }
  row->device_bytes = ak_alloc_outstanding_bytes(AK_MEM_DEVICE);
  st = wk_forward_cuda_profile(fw, 1, &err);
  for (int64_t step = 0; st >= 0 && step < DEC_PROFILE_STEPS; step++) {
    st = wk_forward_cuda_run_sampled(fw, pool, &b, smp, &err);
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
    /* wk_arkvale_cuda keeps cuboid digests in the pages' f16, the other kinds in f32 */
    int cuboid = kp.digest >= KV_DIGEST_CUBOID_MAX && kp.digest <= KV_DIGEST_CUBOID_MEAN;
    double digest_bytes = (mean_kv_len / (double)kp.page_tokens) * hp->n_kv_heads *
                          kv_digest_floats(kp.digest, hp->head_dim) * (cuboid ? 2.0 : 4.0);
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
  free(greedy);
  free(ids);
  free(tokens);
  free(n_new);
  free(seqs);
}

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
  bench_commit(info.commit, sizeof info.commit);
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
  printf("decode GEMMs: %s; CUDA graphs %s; each step returns %s\n", dec_gemm_desc[a.gemm_mode],
         a.no_graphs ? "off" : "on",
         a.sample_device ? "greedy token ids sampled on the device" : "every sequence's logits");
  if (a.kv_limit_gib > 0)
    printf("KV filled synthetically; prefill not timed. Each row decodes as many sequences as its pages fit in %.1f "
           "GiB, one token each per step; vs_full compares tokens/s.\n",
           a.kv_limit_gib);
  else
    printf("KV filled synthetically; prefill not timed. Each step: %lld tokens (one per sequence).\n",
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
        row->batch = a.batch;
        if (st >= 0 && a.kv_limit_gib > 0) { /* the most sequences whose pages fit the cap */
          const wk_hparams_t *hp = wk_model_cuda_hparams(model);
          kv_pool_params_t kp = kv_pool_params_default();
          kp.n_kv_heads = hp->n_kv_heads;
          kp.head_dim = hp->head_dim;
          kp.page_tokens = (int32_t)a.page_tokens;
          kp.dtype = KN_F16;
          double seq_bytes = (double)dec_row_pages(&a, hp, row->ctx, row->budget, 1) * (double)kv_page_bytes(&kp);
          row->batch = (int64_t)(a.kv_limit_gib * DEC_GIB / seq_bytes);
          if (row->batch > 4096) row->batch = 4096;
        }
        if (st >= 0 && row->batch < 1) {
          row->status = DEC_ROW_NO_FIT;
          snprintf(row->note, sizeof row->note, "one sequence's pages exceed --kv-limit-gib %.1f", a.kv_limit_gib);
        } else if (st < 0) {
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
