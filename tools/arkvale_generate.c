/* arkvale generate: run the model in-process on one prompt and stream the text, or
 * (--server) send the same prompt and sampling flags to a running arkvale-coordinator
 * and stream its answer (arkvale_remote.c).
 *
 *   arkvale generate -m MODEL -p PROMPT [--chat] [--system TEXT] [-n N] [--temp T]
 *                    [--top-k K] [--top-p P] [--min-p P] [--repeat-penalty R]
 *                    [--seed S] [--stop STR]... [--ignore-eos] [--threads T] [--ctx N]
 *   arkvale generate --server HOST:PORT -p PROMPT [the same prompt, sampling and stop
 *                    flags] [--kv-policy NAME] [--kv-budget TOKENS] [--timeout S]
 *
 * Text goes to stdout as it is sampled (whole UTF-8 characters only); prompt and
 * generation speed go to stderr. On --device cuda each decode step samples its token on
 * the device (wk_engine_step_sampled: only the id crosses PCIe), or on the host when the
 * request is past the device's caps (wk_cuda_sample_request: a repetition-penalty
 * window or vocabulary too large for it). With --server, flags that only shape the local engine
 * (-m, --device, --threads, --ctx, --page-tokens, the --kv-* knobs but policy and
 * budget, --kv-stats) are refused: the request has no field for them. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ak_alloc.h"
#include "arkvale_cli.h"
#include "arkvale_remote.h"
#include "co_chat.h"
#include "co_stop.h"
#include "co_tokenizer.h"
#include "wk_engine.h"
#include "wk_sampler.h"

typedef struct {
  const char *model, *prompt, *system;
  int chat, ignore_eos, special;
  int64_t n_new, n_threads, n_ctx;
  wk_sampler_params_t sp;
  const char *stops[CO_STOP_MAX_STRINGS];
  int n_stops;
  kv_pool_params_t kv; /* policy knobs from --kv-* */
  int32_t page_tokens;
  wk_device_t device;
  int kv_report;       /* --kv-stats */
  /* --server: where to send the request instead; the flags below only matter then */
  const char *server;
  int64_t timeout_ms;        /* --timeout, as milliseconds; 0 = none */
  int has_n_new;             /* -n given (else the server's default) */
  int has_kv_policy, has_kv_budget;
  const char *local_only;    /* the first flag given that only the local engine reads */
} gen_args_t;

static void gen_usage(FILE *f) {
  fprintf(f,
          "usage: arkvale generate -m MODEL -p PROMPT [options]\n"
          "       arkvale generate --server HOST:PORT -p PROMPT [options]\n"
          "  -m, --model PATH       GGUF model file\n"
          "  -p, --prompt TEXT      the prompt (or the user message with --chat)\n"
          "  --chat                 wrap the prompt in the model's chat template\n"
          "  --system TEXT          system message for --chat (default: the model's)\n"
          "  --special              parse special tokens in a raw prompt\n"
          "  -n, --n-predict N      max new tokens (default 128)\n"
          "  --temp T               temperature, 0 = greedy (default 0.8)\n"
          "  --top-k K  --top-p P  --min-p P  --repeat-penalty R  --repeat-last-n N\n"
          "  --seed S               sampling seed (default 42); with --device cuda the tokens after\n"
          "                         the first are drawn on the device, whose generator differs from\n"
          "                         the CPU's (greedy picks the same ids)\n"
          "  --stop STR             stop string (repeatable, up to %d)\n"
          "  --ignore-eos           do not stop at end-of-generation tokens\n"
          "  -t, --threads N        CPU threads (default: all)\n"
          "  --ctx N                context length (default: the model's)\n"
          "  --kv-stats             print where the KV pages are after the run\n"
          "Remote (instead of -m):\n"
          "  --server HOST:PORT     send the request to arkvale-coordinator and stream its answer;\n"
          "                         the prompt, --chat/--system, sampling, --stop, --ignore-eos, -n\n"
          "                         (default: the server's), --kv-policy and --kv-budget are sent;\n"
          "                         raw text prompts are tokenized with special tokens parsed\n"
          "  --timeout S            deadline of the whole stream in seconds (default none)\n",
          CO_STOP_MAX_STRINGS);
  ak_cli_kv_usage(f);
}

static int gen_flag_is_local_only(const char *o);

static int gen_parse(int argc, char **argv, gen_args_t *a) {
  memset(a, 0, sizeof *a);
  a->n_new = 128;
  a->sp = wk_sampler_params_default();
  a->sp.temperature = 0.8f;
  a->sp.seed = 42;
  a->kv = kv_pool_params_default();
  a->page_tokens = 32;
  for (int i = 1; i < argc; i++) {
    const char *o = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
    int64_t iv = 0;
    int r = 0, takes = 1;
    int kvr = ak_cli_kv_flag(o, v, &a->kv, &a->page_tokens, &a->device);
    if (kvr < 0) return -1;
    if (kvr > 0) {
      if (!strcmp(o, "--kv-policy")) a->has_kv_policy = 1;
      else if (!strcmp(o, "--kv-budget")) a->has_kv_budget = 1;
      else if (!a->local_only) a->local_only = o;
      i++;
      continue;
    }
    if (!a->local_only && gen_flag_is_local_only(o)) a->local_only = o;
    if (!strcmp(o, "-m") || !strcmp(o, "--model")) a->model = v;
    else if (!strcmp(o, "--server")) a->server = v;
    else if (!strcmp(o, "--timeout")) {
      float sec = 0;
      r = ak_cli_parse_f32(o, v, 0.001f, 1e6f, &sec);
      a->timeout_ms = (int64_t)(sec * 1000.0f + 0.5f);
    }
    else if (!strcmp(o, "-p") || !strcmp(o, "--prompt")) a->prompt = v;
    else if (!strcmp(o, "--system")) a->system = v;
    else if (!strcmp(o, "-n") || !strcmp(o, "--n-predict"))
      r = ak_cli_parse_i64(o, v, 0, 1 << 20, &a->n_new), a->has_n_new = 1;
    else if (!strcmp(o, "--temp")) r = ak_cli_parse_f32(o, v, 0, 100, &a->sp.temperature);
    else if (!strcmp(o, "--top-k")) r = ak_cli_parse_i64(o, v, 0, 1 << 24, &iv), a->sp.top_k = (int32_t)iv;
    else if (!strcmp(o, "--top-p")) r = ak_cli_parse_f32(o, v, 1e-6f, 1, &a->sp.top_p);
    else if (!strcmp(o, "--min-p")) r = ak_cli_parse_f32(o, v, 0, 0.999999f, &a->sp.min_p);
    else if (!strcmp(o, "--repeat-penalty")) r = ak_cli_parse_f32(o, v, 1e-3f, 100, &a->sp.repetition_penalty);
    else if (!strcmp(o, "--repeat-last-n"))
      r = ak_cli_parse_i64(o, v, 0, 1 << 20, &iv), a->sp.repeat_last_n = (int32_t)iv;
    else if (!strcmp(o, "--seed")) r = ak_cli_parse_i64(o, v, 0, INT64_MAX, &iv), a->sp.seed = (uint64_t)iv;
    else if (!strcmp(o, "-t") || !strcmp(o, "--threads")) r = ak_cli_parse_i64(o, v, 0, 1024, &a->n_threads);
    else if (!strcmp(o, "--ctx")) r = ak_cli_parse_i64(o, v, 16, 1 << 22, &a->n_ctx);
    else if (!strcmp(o, "--stop")) {
      if (a->n_stops == CO_STOP_MAX_STRINGS) {
        fprintf(stderr, "arkvale: at most %d --stop strings\n", CO_STOP_MAX_STRINGS);
        return -1;
      }
      a->stops[a->n_stops++] = v;
    } else {
      takes = 0;
      if (!strcmp(o, "--chat")) a->chat = 1;
      else if (!strcmp(o, "--ignore-eos")) a->ignore_eos = 1;
      else if (!strcmp(o, "--special")) a->special = 1;
      else if (!strcmp(o, "--kv-stats")) a->kv_report = 1;
      else if (!strcmp(o, "-h") || !strcmp(o, "--help")) return gen_usage(stdout), 1;
      else {
        fprintf(stderr, "arkvale generate: unknown option '%s'\n", o);
        return gen_usage(stderr), -1;
      }
    }
    if (r < 0) return -1;
    if (takes) {
      if (!v) {
        fprintf(stderr, "arkvale generate: %s needs a value\n", o);
        return -1;
      }
      i++;
    }
  }
  if (a->server) {
    if (a->local_only) {
      fprintf(stderr,
              "arkvale generate: %s cannot be used with --server: it configures the local engine, and the "
              "server's request has no field for it (only --kv-policy and --kv-budget travel)\n",
              a->local_only);
      return -1;
    }
    if (!a->server[0] || !a->prompt) {
      fprintf(stderr, "arkvale generate: --server HOST:PORT and -p PROMPT are required\n");
      return gen_usage(stderr), -1;
    }
    return 0;
  }
  if (a->timeout_ms > 0) {
    fprintf(stderr, "arkvale generate: --timeout needs --server (it is the deadline of the remote call)\n");
    return -1;
  }
  if (!a->model || !a->prompt) {
    fprintf(stderr, "arkvale generate: -m MODEL and -p PROMPT are required (or --server HOST:PORT)\n");
    return gen_usage(stderr), -1;
  }
  return 0;
}

/* Flags outside ak_cli_kv_flag that only the in-process engine reads. */
static int gen_flag_is_local_only(const char *o) {
  static const char *const local[] = {"-m", "--model", "-t", "--threads", "--ctx", "--kv-stats"};
  for (size_t i = 0; i < sizeof local / sizeof local[0]; i++)
    if (!strcmp(o, local[i])) return 1;
  return 0;
}

/* The prompt as token ids: raw text, or the user message in the chat template. */
static int gen_tokenize(const gen_args_t *a, const co_tokenizer_t *tok, int32_t **ids_p, int64_t *n_p,
                        size_t *ids_bytes_p) {
  ak_err_t err;
  ak_err_clear(&err);
  char *text = NULL;
  size_t text_cap = 0, text_bytes = strlen(a->prompt);
  const char *src = a->prompt;
  int parse_special = a->special;
  if (a->chat) {
    co_chat_msg_t msgs[2];
    int n_msgs = 0;
    if (a->system) msgs[n_msgs++] = (co_chat_msg_t){.role = "system", .content = a->system};
    msgs[n_msgs++] = (co_chat_msg_t){.role = "user", .content = a->prompt};
    size_t need = 0;
    co_chat_apply(msgs, n_msgs, 1, NULL, 0, &need, &err);
    text_cap = need + 1;
    text = ak_host_alloc(text_cap, 0);
    if (!text || co_chat_apply(msgs, n_msgs, 1, text, text_cap, &text_bytes, &err) < 0) {
      fprintf(stderr, "arkvale: chat template: %s\n", text ? err.msg : "out of memory");
      ak_host_free(text, text_cap);
      return -1;
    }
    src = text;
    parse_special = 1; /* the template's markers are special tokens */
  }
  int64_t cap = (int64_t)text_bytes + 8, n = 0;
  size_t ids_bytes = sizeof(int32_t) * (size_t)cap;
  int32_t *ids = ak_host_alloc(ids_bytes, 0);
  ak_status_t st = ids ? co_tokenizer_encode(tok, src, text_bytes, 0, parse_special, ids, cap, &n, &err)
                       : AK_ERR_NO_MEMORY;
  ak_host_free(text, text_cap);
  if (st < 0) {
    fprintf(stderr, "arkvale: tokenize: %s\n", err.msg[0] ? err.msg : ak_status_str(st));
    ak_host_free(ids, ids_bytes);
    return -1;
  }
  if (n == 0) {
    fprintf(stderr, "arkvale: the prompt is empty\n");
    ak_host_free(ids, ids_bytes);
    return -1;
  }
  *ids_p = ids;
  *n_p = n;
  *ids_bytes_p = ids_bytes;
  return 0;
}

/* Streams one token's text through the UTF-8 decoder and the stop matcher;
 * returns 1 when a stop string ended the text. */
static int gen_emit(co_detok_t *dt, co_stop_t *stop, int32_t token) {
  const char *piece, *out;
  size_t piece_bytes, out_bytes;
  int stopped = 0;
  co_detok_push(dt, token, &piece, &piece_bytes);
  if (co_stop_push(stop, piece, piece_bytes, &out, &out_bytes, &stopped) < 0) return 1;
  fwrite(out, 1, out_bytes, stdout);
  fflush(stdout);
  return stopped;
}

static void gen_finish(co_detok_t *dt, co_stop_t *stop) {
  const char *piece, *out;
  size_t piece_bytes, out_bytes;
  int stopped = 0;
  co_detok_flush(dt, &piece, &piece_bytes);
  co_stop_push(stop, piece, piece_bytes, &out, &out_bytes, &stopped);
  fwrite(out, 1, out_bytes, stdout);
  if (!stopped) {
    co_stop_flush(stop, &out, &out_bytes);
    fwrite(out, 1, out_bytes, stdout);
  }
  fputc('\n', stdout);
  fflush(stdout);
}

int ak_cli_generate(int argc, char **argv) {
  gen_args_t a;
  int pr = gen_parse(argc, argv, &a);
  if (pr != 0) return pr > 0 ? 0 : 2;
  if (a.server) {
    ak_cli_remote_t r = {.server = a.server, .prompt = a.prompt, .system = a.system, .chat = a.chat,
                         .ignore_eos = a.ignore_eos, .n_new_tokens = a.has_n_new ? a.n_new : -1, .sp = a.sp,
                         .stops = a.stops, .n_stops = a.n_stops,
                         .kv_policy = a.has_kv_policy ? (int)a.kv.policy : -1,
                         .kv_budget_tokens = a.has_kv_budget ? a.kv.budget_tokens : -1, .timeout_ms = a.timeout_ms};
    return ak_cli_generate_remote(&r);
  }

  ak_err_t err;
  ak_err_clear(&err);
  wk_engine_params_t ep = wk_engine_params_default();
  ep.model_path = a.model;
  ep.n_threads = (int32_t)a.n_threads;
  ep.max_seqs = 1;
  ep.max_seq_tokens = (int32_t)a.n_ctx;
  ep.page_tokens = a.page_tokens;
  ep.kv_policy = &a.kv;
  ep.device = a.device;
  wk_engine_t *eng = NULL;
  co_tokenizer_t *tok = NULL;
  co_detok_t *dt = NULL;
  co_stop_t *stop = NULL;
  wk_sampler_t *smp = NULL;
  int32_t *ids = NULL;
  float *logits = NULL;
  size_t ids_bytes = 0, logits_bytes = 0;
  int64_t n_prompt = 0;
  int rc = 1;

  if (wk_engine_create(&ep, &err, &eng) < 0 ||
      co_tokenizer_create_from_gguf(wk_model_gguf(wk_engine_model(eng)), &err, &tok) < 0 ||
      co_detok_create(tok, &err, &dt) < 0 || co_stop_create(a.stops, a.n_stops, &err, &stop) < 0) {
    fprintf(stderr, "arkvale generate: %s\n", err.msg);
    goto done;
  }
  const wk_hparams_t *hp = wk_engine_hparams(eng);
  if (wk_sampler_create(&a.sp, hp->n_vocab, &err, &smp) < 0) {
    fprintf(stderr, "arkvale generate: %s\n", err.msg);
    goto done;
  }
  if (gen_tokenize(&a, tok, &ids, &n_prompt, &ids_bytes) < 0) goto done;
  int32_t n_ctx = kv_pool_params(wk_engine_kvpool(eng))->max_seq_tokens;
  if (n_prompt >= n_ctx) {
    fprintf(stderr, "arkvale generate: the prompt has %lld tokens; the context holds %d\n", (long long)n_prompt, n_ctx);
    goto done;
  }
  if (n_prompt + a.n_new > n_ctx) a.n_new = n_ctx - n_prompt;
  logits_bytes = sizeof(float) * (size_t)hp->n_vocab;
  logits = ak_host_alloc(logits_bytes, 0);
  kv_seq_id_t seq;
  int32_t hist[WK_CUDA_SAMPLE_MAX_HISTORY_IDS]; /* the device's penalty window */
  if (!logits || wk_engine_seq_create(eng, &seq) < 0) {
    fprintf(stderr, "arkvale generate: %s\n", logits ? wk_engine_errmsg(eng) : "out of memory");
    goto done;
  }
  for (int64_t i = 0; i < n_prompt; i++) wk_sampler_accept(smp, ids[i]);

  double t0 = ak_cli_now_s();
  if (wk_engine_prefill(eng, seq, ids, n_prompt, logits) < 0) goto engine_error;
  double t1 = ak_cli_now_s();
  int64_t n_gen = 0;
  const char *reason = "length";
  /* the first token from the prompt's logits; later ones, on CUDA, from the device */
  int32_t token;
  if (wk_sampler_sample(smp, logits, &token, NULL) < 0) {
    fprintf(stderr, "arkvale generate: %s\n", wk_sampler_last_error(smp));
    goto done;
  }
  const int on_device = wk_engine_samples_on_device(eng);
  while (n_gen < a.n_new) {
    n_gen++;
    wk_sampler_accept(smp, token);
    if (!a.ignore_eos && co_tokenizer_is_eog(tok, token)) {
      reason = "eos";
      break;
    }
    if (gen_emit(dt, stop, token)) {
      reason = "stop";
      break;
    }
    if (n_gen == a.n_new) break;
    int32_t one = 1, next = -1;
    wk_forward_batch_t b = {.seqs = {.n_seqs = 1, .seqs = &seq, .n_new_tokens = &one}, .tokens = &token,
                            .logits = logits};
    /* on CUDA the device draws (the step seeds it with the sequence's length after the
     * step, as the worker service does); its history already holds `token` */
    wk_cuda_sample_seq_t r;
    int sampled = 0;
    if (on_device &&
        wk_cuda_sample_request(smp, hp->n_vocab, NULL, 0, (uint64_t)(n_prompt + n_gen), hist, &r)) {
      wk_cuda_sample_t req = {.seqs = &r, .token_ids = &next, .logprobs = NULL};
      wk_forward_batch_t bs = b;
      bs.logits = NULL; /* only the id comes back */
      if (wk_engine_step_sampled(eng, &bs, &req) < 0) goto engine_error;
      sampled = 1;
    }
    if (!sampled) { /* the host samples from the step's logits */
      if (wk_engine_step(eng, &b) < 0) goto engine_error;
      if (wk_sampler_sample(smp, logits, &next, NULL) < 0) {
        fprintf(stderr, "arkvale generate: %s\n", wk_sampler_last_error(smp));
        goto done;
      }
    }
    token = next;
  }
  double t2 = ak_cli_now_s();
  gen_finish(dt, stop);
  fprintf(stderr,
          "\n[arkvale] prompt %lld tokens in %.3f s (%.1f tok/s prefill); generated %lld tokens in %.3f s "
          "(%.1f tok/s decode); stop: %s; threads %d, %s\n",
          (long long)n_prompt, t1 - t0, (double)n_prompt / (t1 - t0), (long long)n_gen, t2 - t1,
          n_gen > 1 ? (double)(n_gen - 1) / (t2 - t1) : 0.0, reason, kn_cpu_n_threads(wk_engine_cpu(eng)),
          kn_isa_name(kn_cpu_isa(wk_engine_cpu(eng))));
  if (a.kv_report) ak_cli_kv_report(stderr, wk_engine_kvpool(eng), seq);
  rc = 0;
  goto done;

engine_error:
  fprintf(stderr, "arkvale generate: %s\n", wk_engine_errmsg(eng));
done:
  ak_host_free(logits, logits_bytes);
  ak_host_free(ids, ids_bytes);
  wk_sampler_destroy(smp);
  co_stop_destroy(stop);
  co_detok_destroy(dt);
  co_tokenizer_destroy(tok);
  wk_engine_destroy(eng);
  return rc;
}
