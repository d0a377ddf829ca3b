/* arkvale bench: prefill and decode speed of the in-process engine on one prompt.
 *
 *   arkvale bench (-m MODEL | --synthetic SHAPE --device cuda) --prompt-tokens N
 *                 [--gen-tokens G] [--threads T] [--repeat R] [--prompt-ids-file F]
 *                 [--batch-tokens B]
 *
 * --synthetic SHAPE: no model file; random bf16 weights of a named shape (llama2-7b,
 * longchat-7b, llama3-8b, smollm2-135m, llama3-tiny) built on the GPU from seed 1
 * (wk_model_cuda_synthetic), so speed can be measured at the paper's shapes without
 * their download.
 *
 * Prints one JSON line to stdout (the harness bench/cpu_generate/run.py parses it):
 *   {"prompt_tokens":N,"gen_tokens":G,"threads":T,"prefill_tok_s":X,"decode_tok_s":Y,...}
 * Each repeat uses a fresh sequence; the reported figures are medians over repeats.
 * Decode is greedy (argmax) so every repeat does identical work. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ak_alloc.h"
#include "arkvale_cli.h"
#include "wk_engine.h"

static void bench_usage(FILE *f) {
  fprintf(f,
          "usage: arkvale bench (-m MODEL | --synthetic SHAPE --device cuda) --prompt-tokens N [--gen-tokens G]\n"
          "                     [--threads T] [--repeat R] [--prompt-ids-file F] [--batch-tokens B]\n"
          "                     [KV cache options]\n"
          "  --synthetic SHAPE  random bf16 weights built on the GPU instead of a model file:\n"
          "                     llama2-7b, longchat-7b, llama3-8b, smollm2-135m or llama3-tiny (seed 1)\n");
  ak_cli_kv_usage(f);
}

/* Reads whitespace-separated token ids; the prompt is the first n of them. */
static int bench_read_ids(const char *path, int32_t *ids, int64_t n) {
  FILE *f = fopen(path, "r");
  if (!f) {
    fprintf(stderr, "arkvale bench: cannot open %s\n", path);
    return -1;
  }
  int64_t i = 0;
  long v;
  while (i < n && fscanf(f, "%ld", &v) == 1) ids[i++] = (int32_t)v;
  fclose(f);
  if (i < n) {
    fprintf(stderr, "arkvale bench: %s holds %lld ids, %lld needed\n", path, (long long)i, (long long)n);
    return -1;
  }
  return 0;
}

static int cmp_double(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return (x > y) - (x < y);
}

int ak_cli_bench(int argc, char **argv) {
  const char *model = NULL, *ids_file = NULL, *synthetic = NULL;
  int64_t n_prompt = 0, n_gen = 64, n_threads = 0, n_repeat = 3, batch_tokens = 512;
  kv_pool_params_t kv = kv_pool_params_default();
  int32_t page_tokens = 32;
  wk_device_t device = WK_DEVICE_CPU;
  for (int i = 1; i < argc; i++) {
    const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
    int r = 0;
    int kvr = ak_cli_kv_flag(a, v, &kv, &page_tokens, &device);
    if (kvr < 0) return 2;
    if (kvr > 0) {
      i++;
      continue;
    }
    if (!strcmp(a, "-m") || !strcmp(a, "--model")) model = v, i++;
    else if (!strcmp(a, "--synthetic")) synthetic = v, i++;
    else if (!strcmp(a, "--prompt-tokens")) r = ak_cli_parse_i64(a, v, 1, 1 << 20, &n_prompt), i++;
    else if (!strcmp(a, "--gen-tokens")) r = ak_cli_parse_i64(a, v, 0, 1 << 20, &n_gen), i++;
    else if (!strcmp(a, "--threads") || !strcmp(a, "-t")) r = ak_cli_parse_i64(a, v, 0, 1024, &n_threads), i++;
    else if (!strcmp(a, "--repeat")) r = ak_cli_parse_i64(a, v, 1, 1000, &n_repeat), i++;
    else if (!strcmp(a, "--batch-tokens")) r = ak_cli_parse_i64(a, v, 1, 1 << 16, &batch_tokens), i++;
    else if (!strcmp(a, "--prompt-ids-file")) ids_file = v, i++;
    else if (!strcmp(a, "-h") || !strcmp(a, "--help")) return bench_usage(stdout), 0;
    else {
      fprintf(stderr, "arkvale bench: unknown option '%s'\n", a);
      return bench_usage(stderr), 2;
    }
    if (r < 0) return 2;
    if (i >= argc) {
      fprintf(stderr, "arkvale bench: %s needs a value\n", a);
      return 2;
    }
  }
  if ((!model && !synthetic) || n_prompt < 1) {
    fprintf(stderr, "arkvale bench: -m (or --synthetic) and --prompt-tokens are required\n");
    return bench_usage(stderr), 2;
  }
  if (model && synthetic) {
    fprintf(stderr, "arkvale bench: -m and --synthetic are exclusive\n");
    return bench_usage(stderr), 2;
  }

  wk_engine_params_t ep = wk_engine_params_default();
  ep.model_path = model;
  ep.synthetic = synthetic;
  ep.synthetic_seed = 1;
  ep.n_threads = (int32_t)n_threads;
  ep.max_seqs = 1;
  ep.max_batch_tokens = (int32_t)batch_tokens;
  ep.max_seq_tokens = (int32_t)(n_prompt + n_gen + 1);
  ep.page_tokens = page_tokens;
  ep.kv_policy = &kv;
  ep.device = device;
  wk_engine_t *eng = NULL;
  ak_err_t err;
  ak_err_clear(&err);
  if (wk_engine_create(&ep, &err, &eng) < 0) {
    fprintf(stderr, "arkvale bench: %s\n", err.msg);
    return 1;
  }
  const wk_hparams_t *hp = wk_engine_hparams(eng);
  int rc = 1;
  size_t ids_bytes = sizeof(int32_t) * (size_t)n_prompt, logits_bytes = sizeof(float) * (size_t)hp->n_vocab;
  size_t times_bytes = sizeof(double) * (size_t)n_repeat;
  int32_t *ids = ak_host_alloc(ids_bytes, 0);
  float *logits = ak_host_alloc(logits_bytes, 0);
  double *pre_s = ak_host_alloc(times_bytes, 0), *dec_s = ak_host_alloc(times_bytes, 0);
  if (!ids || !logits || !pre_s || !dec_s) {
    fprintf(stderr, "arkvale bench: out of memory\n");
    goto done;
  }
  if (ids_file) {
    if (bench_read_ids(ids_file, ids, n_prompt) < 0) goto done;
    for (int64_t i = 0; i < n_prompt; i++)
      if (ids[i] < 0 || ids[i] >= hp->n_vocab) {
        fprintf(stderr, "arkvale bench: id %d at %lld outside the vocabulary\n", ids[i], (long long)i);
        goto done;
      }
  } else {
    /* A deterministic spread of ordinary (non-special) ids. */
    for (int64_t i = 0; i < n_prompt; i++) ids[i] = (int32_t)(1000 + (i * 7919) % (hp->n_vocab - 2000));
  }

  const int on_device = wk_engine_samples_on_device(eng);
  const wk_cuda_sample_seq_t greedy = wk_cuda_sample_seq_greedy();
  for (int64_t r = 0; r < n_repeat; r++) {
    kv_seq_id_t seq;
    if (wk_engine_seq_create(eng, &seq) < 0) goto engine_error;
    double t0 = ak_cli_now_s();
    if (wk_engine_prefill(eng, seq, ids, n_prompt, logits) < 0) goto engine_error;
    double t1 = ak_cli_now_s();
    /* greedy decode; on CUDA the next id is picked on the device (the serving path:
     * only the id crosses PCIe), on the CPU from the step's logits */
    int32_t tok = (int32_t)kn_argmax(logits, hp->n_vocab);
    for (int64_t g = 0; g < n_gen; g++) {
      int32_t one = 1, next = -1;
      wk_forward_batch_t b = {.seqs = {.n_seqs = 1, .seqs = &seq, .n_new_tokens = &one},
                              .tokens = &tok, .logits = on_device ? NULL : logits};
      if (on_device) {
        wk_cuda_sample_t req = {.seqs = &greedy, .token_ids = &next, .logprobs = NULL};
        if (wk_engine_step_sampled(eng, &b, &req) < 0) goto engine_error;
      } else {
        if (wk_engine_step(eng, &b) < 0) goto engine_error;
        next = (int32_t)kn_argmax(logits, hp->n_vocab);
      }
      tok = next;
    }
    double t2 = ak_cli_now_s();
    pre_s[r] = t1 - t0;
    dec_s[r] = t2 - t1;
    if (wk_engine_seq_release(eng, seq) < 0) goto engine_error;
  }
  qsort(pre_s, (size_t)n_repeat, sizeof(double), cmp_double);
  qsort(dec_s, (size_t)n_repeat, sizeof(double), cmp_double);
  double pre = pre_s[n_repeat / 2], dec = dec_s[n_repeat / 2];
  printf("{\"prompt_tokens\":%lld,\"gen_tokens\":%lld,\"threads\":%d,\"repeat\":%lld,"
         "\"prefill_s\":%.6f,\"decode_s\":%.6f,\"prefill_tok_s\":%.3f,\"decode_tok_s\":%.3f,"
         "\"isa\":\"%s\",\"device\":\"%s\",\"sampling\":\"%s\",\"kv_page_tokens\":%d,\"kv_policy\":\"%s\","
         "\"kv_budget_tokens\":%d}\n",
         (long long)n_prompt, (long long)n_gen, kn_cpu_n_threads(wk_engine_cpu(eng)), (long long)n_repeat, pre, dec,
         (double)n_prompt / pre, n_gen > 0 ? (double)n_gen / dec : 0.0, kn_isa_name(kn_cpu_isa(wk_engine_cpu(eng))),
         device == WK_DEVICE_CUDA ? "cuda" : "cpu", on_device ? "device" : "host", ep.page_tokens, kv_policy_name(kv.policy), kv.budget_tokens);
  rc = 0;
  goto done;

engine_error:
  fprintf(stderr, "arkvale bench: %s\n", wk_engine_errmsg(eng));
done:
  ak_host_free(dec_s, times_bytes);
  ak_host_free(pre_s, times_bytes);
  ak_host_free(logits, logits_bytes);
  ak_host_free(ids, ids_bytes);
  wk_engine_destroy(eng);
  return rc;
}
