/* bench_passkey: passkey retrieval accuracy of every KV policy (ArkVale, NeurIPS 2024,
 * Table 1; the Landmark-Attention passkey test) on the CPU or the CUDA backend.
 *
 *   bench_passkey [--ctx 1024,2048] [--budgets 128,256,512] [--policies LIST]
 *                 [--depths N] [--seed S] [--threads T] [--device cpu|cuda] ...
 *
 * For each context length and depth: build the prompt (pk_prompt.h), prefill it once,
 * continue it under every (policy, budget) through kv_seq_branch and greedy-decode
 * the answer (pk_run.h; on CUDA each (policy, budget) prefills it in its own engine).
 * Prints the table and writes bench/results/passkey-<date>.md (pk_report.h). See
 * bench/passkey/README.md. Exit: 0 ok, 1 runtime failure (no CUDA device included),
 * 2 usage. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#include "ak_alloc.h"
#include "bench_device.h"
#include "bench_util.h"
#include "pk_prompt.h"
#include "pk_report.h"
#include "pk_run.h"

#define PK_MAX_CTX 16
#define PK_PROG "bench_passkey"

typedef struct {
  const char *model, *out;
  int32_t ctx[PK_MAX_CTX], n_ctx;
  int32_t budgets[PK_MAX_BUDGETS], n_budgets;
  pk_policy_t pols[PK_MAX_POLICIES];
  int32_t n_pols;
  int64_t n_depths, seed, n_threads, n_gen, batch_tokens;
  int chat, no_write, verbose, check;
  wk_device_t device;
  int32_t kv_select;    /* --kv-select: 0 (default: the engine picks the device), -1 host */
  int policies_given;   /* --policies on the command line (else the default list) */
  char skipped[128];    /* CUDA: default policies left out ("h2o, tova") */
} pk_args_t;

static void pk_usage(FILE *f) {
  fprintf(f,
          "usage: " PK_PROG " [options]   (run from the repository root)\n"
          "  --model PATH         GGUF model (default models/SmolLM2-135M-Instruct.Q4_1.gguf)\n"
          "  --ctx L,...          context lengths in tokens, prompt + answer (default 1024,2048;\n"
          "                       the paper-scale run for SmolLM2: 2048,4096,8192)\n"
          "  --budgets B,...      KV budgets in tokens per budgeted layer (default 128,256,512;\n"
          "                       paper-scale: 128,256,512,1024,2048)\n"
          "  --policies P,...     full, arkvale16, arkvale32, streaming, h2o, tova, quest (the default,\n"
          "                       all of them); a page policy may carry its page size: quest16\n"
          "  --depths N           passkey depths 0, 1/N, ..., (N-1)/N (default 20)\n"
          "  --seed S             passkey seed (default 42)\n"
          "  --gen N              greedy answer tokens (default 8)\n"
          "  --chat | --raw       wrap the prompt in the ChatML template, or not (default --raw)\n"
          "  --threads T          CPU threads (default: all)\n"
          "  --device cpu|cuda    backend (default cpu); cuda runs every policy but h2o and tova,\n"
          "                       which the default list then leaves out\n"
          "  --kv-select device|host  cuda, arkvale: where pages are ranked, picked and recalled\n"
          "                       (default device; host: the oracle path)\n"
          "  --batch-tokens B     prefill chunk (default 512)\n"
          "  --out PATH           results file (default bench/results/passkey-<date>.md)\n"
          "  --no-write           print only\n"
          "  --check              kvpool invariant check at every step (slow)\n"
          "  -v, --verbose        print every answer\n");
}

static int pk_parse_int(const char *flag, const char *s, int64_t lo, int64_t hi, int64_t *out_p) {
  char *end = NULL;
  errno = 0;
  long long v = s ? strtoll(s, &end, 10) : 0;
  if (!s || *s == '\0' || *end != '\0' || errno != 0 || v < lo || v > hi) {
    fprintf(stderr, PK_PROG ": %s expects an integer in [%lld, %lld], got '%s'\n", flag, (long long)lo,
            (long long)hi, s ? s : "(nothing)");
    return -1;
  }
  *out_p = v;
  return 0;
}

/* A comma-separated list of distinct integers in [lo, hi]. */
static int pk_parse_int_list(const char *flag, const char *s, int64_t lo, int64_t hi, int32_t *out, int32_t cap,
                             int32_t *n_p) {
  char buf[512];
  if (!s || !*s || strlen(s) >= sizeof buf) {
    fprintf(stderr, PK_PROG ": %s expects a comma-separated list of integers, got '%s'\n", flag, s ? s : "(nothing)");
    return -1;
  }
  snprintf(buf, sizeof buf, "%s", s);
  int32_t n = 0;
  for (char *item = buf, *next; item; item = next) {
    next = strchr(item, ',');
    if (next) *next++ = '\0';
    int64_t v;
    if (pk_parse_int(flag, item, lo, hi, &v) < 0) return -1;
    if (n == cap) {
      fprintf(stderr, PK_PROG ": %s takes at most %d values\n", flag, cap);
      return -1;
    }
    for (int32_t i = 0; i < n; i++)
      if (out[i] == v) {
        fprintf(stderr, PK_PROG ": %s lists %lld twice\n", flag, (long long)v);
        return -1;
      }
    out[n++] = (int32_t)v;
  }
  *n_p = n;
  return 0;
}

static int pk_parse_policies(const char *flag, const char *s, pk_args_t *a) {
  char buf[512];
  if (!s || !*s || strlen(s) >= sizeof buf) {
    fprintf(stderr, PK_PROG ": %s expects a comma-separated list of policies, got '%s'\n", flag, s ? s : "(nothing)");
    return -1;
  }
  snprintf(buf, sizeof buf, "%s", s);
  a->n_pols = 0;
  for (char *item = buf, *next; item; item = next) {
    next = strchr(item, ',');
    if (next) *next++ = '\0';
    pk_policy_t pol;
    if (pk_policy_parse(item, &pol) < 0) {
      fprintf(stderr,
              PK_PROG ": %s: unknown policy '%s' (full, arkvale, streaming, h2o, tova, quest, optionally followed "
                      "by a page size 1..256: arkvale16)\n",
              flag, item);
      return -1;
    }
    if (a->n_pols == PK_MAX_POLICIES) {
      fprintf(stderr, PK_PROG ": %s takes at most %d policies\n", flag, PK_MAX_POLICIES);
      return -1;
    }
    for (int32_t i = 0; i < a->n_pols; i++)
      if (a->pols[i].policy == pol.policy && a->pols[i].page_tokens == pol.page_tokens) {
        fprintf(stderr, PK_PROG ": %s lists '%s' twice\n", flag, item);
        return -1;
      }
    a->pols[a->n_pols++] = pol;
  }
  return 0;
}

static int pk_parse_args(int argc, char **argv, pk_args_t *a) {
  memset(a, 0, sizeof *a);
  a->model = "models/SmolLM2-135M-Instruct.Q4_1.gguf";
  a->n_depths = 20, a->seed = 42, a->n_gen = 8, a->batch_tokens = 512;
  a->ctx[0] = 1024, a->ctx[1] = 2048, a->n_ctx = 2;
  a->budgets[0] = 128, a->budgets[1] = 256, a->budgets[2] = 512, a->n_budgets = 3;
  if (pk_parse_policies("--policies", "full,arkvale16,arkvale32,streaming,h2o,tova,quest", a) < 0) return -1;
  for (int i = 1; i < argc; i++) {
    const char *o = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
    int r = 0, takes = 1;
    if (!strcmp(o, "--model")) a->model = v;
    else if (!strcmp(o, "--out")) a->out = v;
    else if (!strcmp(o, "--ctx")) r = pk_parse_int_list(o, v, 64, 1 << 20, a->ctx, PK_MAX_CTX, &a->n_ctx);
    else if (!strcmp(o, "--budgets"))
      r = pk_parse_int_list(o, v, 1, 1 << 20, a->budgets, PK_MAX_BUDGETS, &a->n_budgets);
    else if (!strcmp(o, "--policies")) {
      r = pk_parse_policies(o, v, a);
      a->policies_given = 1;
    }
    else if (!strcmp(o, "--depths")) r = pk_parse_int(o, v, 1, 100, &a->n_depths);
    else if (!strcmp(o, "--seed")) r = pk_parse_int(o, v, 0, INT64_MAX, &a->seed);
    else if (!strcmp(o, "--gen")) r = pk_parse_int(o, v, 1, 64, &a->n_gen);
    else if (!strcmp(o, "--threads")) r = pk_parse_int(o, v, 0, 1024, &a->n_threads);
    else if (!strcmp(o, "--batch-tokens")) r = pk_parse_int(o, v, 1, 1 << 16, &a->batch_tokens);
    else if (!strcmp(o, "--device")) {
      if (v && !strcmp(v, "cpu")) a->device = WK_DEVICE_CPU;
      else if (v && !strcmp(v, "cuda")) a->device = WK_DEVICE_CUDA;
      else {
        fprintf(stderr, PK_PROG ": --device expects cpu or cuda, got '%s'\n", v ? v : "(nothing)");
        return -1;
      }
    } else if (!strcmp(o, "--kv-select")) {
      if (v && !strcmp(v, "device")) a->kv_select = 0;
      else if (v && !strcmp(v, "host")) a->kv_select = -1;
      else {
        fprintf(stderr, PK_PROG ": --kv-select expects device or host, got '%s'\n", v ? v : "(nothing)");
        return -1;
      }
    } else {
      takes = 0;
      if (!strcmp(o, "--chat")) a->chat = 1;
      else if (!strcmp(o, "--raw")) a->chat = 0;
      else if (!strcmp(o, "--no-write")) a->no_write = 1;
      else if (!strcmp(o, "--check")) a->check = 1;
      else if (!strcmp(o, "-v") || !strcmp(o, "--verbose")) a->verbose = 1;
      else if (!strcmp(o, "-h") || !strcmp(o, "--help")) return pk_usage(stdout), 1;
      else {
        fprintf(stderr, PK_PROG ": unknown option '%s'\n", o);
        return pk_usage(stderr), -1;
      }
    }
    if (r < 0) return -1;
    if (takes) {
      if (!v) {
        fprintf(stderr, PK_PROG ": %s needs a value\n", o);
        return -1;
      }
      i++;
    }
  }
  if (a->device == WK_DEVICE_CUDA) {
    /* h2o and tova move tokens inside pages, which the GPU pools do not: asked for,
     * that is an error; in the default list they are left out (and the report says so). */
    int32_t n = 0;
    for (int32_t pi = 0; pi < a->n_pols; pi++) {
      kv_policy_t p = a->pols[pi].policy;
      if (p != KV_POLICY_H2O && p != KV_POLICY_TOVA) {
        a->pols[n++] = a->pols[pi];
        continue;
      }
      if (a->policies_given) {
        fprintf(stderr, PK_PROG ": --policies %s: does not run with --device cuda (h2o and tova are CPU only)\n",
                a->pols[pi].name);
        return -1;
      }
      size_t u = strlen(a->skipped);
      snprintf(a->skipped + u, sizeof a->skipped - u, "%s%s", u ? ", " : "", a->pols[pi].name);
    }
    a->n_pols = n;
  } else if (a->kv_select != 0) {
    fprintf(stderr, PK_PROG ": --kv-select host applies to --device cuda (the CPU always selects on the host)\n");
    return -1;
  }
  /* Page policies count their budget in whole pages, at least sinks + window (3) + 1. */
  for (int32_t pi = 0; pi < a->n_pols; pi++) {
    const pk_policy_t *p = &a->pols[pi];
    if (p->policy != KV_POLICY_ARKVALE && p->policy != KV_POLICY_STREAMING && p->policy != KV_POLICY_QUEST) continue;
    for (int32_t bi = 0; bi < a->n_budgets; bi++)
      if (a->budgets[bi] % p->page_tokens != 0 || a->budgets[bi] / p->page_tokens < 4) {
        fprintf(stderr, PK_PROG ": --budgets %d: policy %s needs a multiple of its page (%d tokens), at least 4 pages\n",
                a->budgets[bi], p->name, p->page_tokens);
        return -1;
      }
  }
  return 0;
}

/* --- prompts --- */

typedef struct {
  const co_tokenizer_t *tok;
  int chat;
  int32_t *ids;  /* [cap] */
  int64_t cap;
  char *text;    /* [text_cap] */
  size_t text_cap;
} pk_tokbuf_t;

/* Builds and tokenizes one prompt into tb->ids; returns its token count, -1 on error. */
static int64_t pk_tokenize(pk_tokbuf_t *tb, const pk_prompt_params_t *pp) {
  ak_err_t err;
  ak_err_clear(&err);
  size_t n_bytes = 0;
  if (pk_prompt_build(pp, tb->text, tb->text_cap, &n_bytes, &err) < 0) {
    fprintf(stderr, PK_PROG ": prompt: %s\n", err.msg);
    return -1;
  }
  int64_t n = 0;
  if (co_tokenizer_encode(tb->tok, tb->text, n_bytes, 0, tb->chat, tb->ids, tb->cap, &n, &err) < 0) {
    fprintf(stderr, PK_PROG ": tokenize: %s\n", err.msg);
    return -1;
  }
  return n;
}

/* The most filler characters whose prompt (depth 1/2) has at most max_tokens tokens. */
static int64_t pk_fit_filler(pk_tokbuf_t *tb, int32_t passkey, int64_t max_tokens) {
  pk_prompt_params_t pp = {.depth = 0.5, .passkey = passkey, .chat = tb->chat};
  int64_t lo = 0, hi = max_tokens * 8; /* no English runs at 8 characters a token */
  while (lo < hi) {
    pp.n_filler_chars = (lo + hi + 1) / 2;
    int64_t n = pk_tokenize(tb, &pp);
    if (n < 0) return -1;
    if (n <= max_tokens) lo = pp.n_filler_chars;
    else hi = pp.n_filler_chars - 1;
  }
  return lo;
}

/* --- the run's circumstances --- */

static double pk_now_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static void pk_cpu_model(char *out, size_t cap) {
  snprintf(out, cap, "unknown");
  FILE *p = popen("lscpu 2>/dev/null", "r");
  if (!p) return;
  char line[512];
  while (fgets(line, sizeof line, p)) {
    if (strncmp(line, "Model name:", 11) != 0) continue;
    char *s = line + 11;
    while (*s == ' ' || *s == '\t') s++;
    s[strcspn(s, "\n")] = '\0';
    snprintf(out, cap, "%.200s", s);
  }
  pclose(p);
}

/* bench/results/passkey-<date>.md, or -2, -3, ... when taken. */
static void pk_default_out(const char *day, char *out, size_t cap) {
  struct stat st;
  snprintf(out, cap, "bench/results/passkey-%s.md", day);
  for (int k = 2; stat(out, &st) == 0; k++) snprintf(out, cap, "bench/results/passkey-%s-%d.md", day, k);
}

int main(int argc, char **argv) {
  pk_args_t a;
  int pr = pk_parse_args(argc, argv, &a);
  if (pr != 0) return pr > 0 ? 0 : 2;
  const double t_start = pk_now_s();
  char head[128]; /* at the start: the checkout may move while a long run goes on */
  bench_commit(head, sizeof head);
  char device[320] = "cpu";
  if (a.device == WK_DEVICE_CUDA) {
    ak_err_t derr;
    ak_err_clear(&derr);
    char card[256];
    ak_status_t st = bench_cuda_probe(card, sizeof card, &derr);
    if (st < 0) {
      fprintf(stderr, PK_PROG ": --device cuda: %s\n", derr.msg);
      return st == AK_ERR_UNSUPPORTED ? 2 : 1;
    }
    snprintf(device, sizeof device, "cuda: %s", card);
    if (a.skipped[0])
      fprintf(stderr, "[passkey] --device cuda: leaving out %s (CPU only; the report notes it)\n", a.skipped);
  }

  int32_t max_ctx = 0;
  for (int32_t ci = 0; ci < a.n_ctx; ci++) max_ctx = a.ctx[ci] > max_ctx ? a.ctx[ci] : max_ctx;
  ak_err_t err;
  ak_err_clear(&err);
  pk_run_params_t rp = {.model_path = a.model, .n_threads = (int32_t)a.n_threads, .max_ctx_tokens = max_ctx,
                        .n_gen_tokens = (int32_t)a.n_gen, .max_batch_tokens = (int32_t)a.batch_tokens,
                        .src_page_tokens = 32, .check_every_step = a.check, .device = a.device,
                        .kv_select = a.kv_select, .policies = a.pols,
                        .n_policies = a.n_pols, .budgets = a.budgets, .n_budgets = a.n_budgets};
  struct stat model_st;
  if (stat(a.model, &model_st) != 0) {
    fprintf(stderr, PK_PROG ": --model %s: %s\n", a.model, strerror(errno));
    return 2;
  }
  pk_runner_t *run = NULL;
  if (pk_runner_create(&rp, &err, &run) < 0) {
    /* the one runner error a flag causes: a context longer than the model's */
    if (err.status == AK_ERR_RANGE) return fprintf(stderr, PK_PROG ": --ctx: %s\n", err.msg), 2;
    fprintf(stderr, PK_PROG ": %s\n", err.msg);
    return 1;
  }
  const wk_hparams_t *hp = wk_model_hparams(pk_runner_model(run));

  const int64_t n_cells = (int64_t)a.n_ctx * a.n_depths * a.n_pols * a.n_budgets;
  const size_t cells_bytes = sizeof(pk_cell_t) * (size_t)n_cells;
  const size_t per_case = (size_t)a.n_ctx * (size_t)a.n_depths;
  pk_cell_t *cells = ak_host_alloc(cells_bytes, 1);
  int32_t *passkeys = ak_host_alloc(sizeof(int32_t) * per_case, 1);
  int64_t *prompt_tokens = ak_host_alloc(sizeof(int64_t) * per_case, 1);
  double *prefill_s = ak_host_alloc(sizeof(double) * per_case, 1);
  int32_t n_done[PK_MAX_CTX] = {0};
  pk_tokbuf_t tb = {.tok = pk_runner_tokenizer(run), .chat = a.chat, .cap = (int64_t)max_ctx * 8 + 1024};
  tb.text_cap = (size_t)tb.cap + 4096;
  tb.ids = ak_host_alloc(sizeof(int32_t) * (size_t)tb.cap, 0);
  tb.text = ak_host_alloc(tb.text_cap, 0);
  int rc = 1;
  if (!cells || !passkeys || !prompt_tokens || !prefill_s || !tb.ids || !tb.text) {
    fprintf(stderr, PK_PROG ": out of memory for %lld cells\n", (long long)n_cells);
    goto done;
  }
  pk_results_t res = {.n_ctx = a.n_ctx, .n_depths = (int32_t)a.n_depths, .n_policies = a.n_pols,
                      .n_budgets = a.n_budgets, .ctx_tokens = a.ctx, .policies = a.pols, .budgets = a.budgets,
                      .cells = cells, .passkeys = passkeys, .prompt_tokens = prompt_tokens,
                      .prefill_s = prefill_s, .n_cases_done = n_done};

  fprintf(stderr, "[passkey] %s on %s, %d threads, %s prompt, %lld depths, %d policies x %d budgets\n", hp->name,
          device, pk_runner_n_threads(run), a.chat ? "chat" : "raw", (long long)a.n_depths, a.n_pols, a.n_budgets);
  for (int32_t ci = 0; ci < a.n_ctx; ci++) {
    /* A little room under ctx - answer for the passkey and cut points of other depths. */
    const int64_t max_prompt = a.ctx[ci] - a.n_gen;
    int64_t n_filler = pk_fit_filler(&tb, pk_passkey((uint64_t)a.seed, ci, 0), max_prompt - 4);
    if (n_filler < 0) goto done;
    for (int32_t di = 0; di < a.n_depths; di++) {
      const size_t k = (size_t)ci * (size_t)a.n_depths + (size_t)di;
      pk_prompt_params_t pp = {.n_filler_chars = n_filler, .depth = (double)di / (double)a.n_depths,
                               .passkey = pk_passkey((uint64_t)a.seed, ci, di), .chat = a.chat};
      int64_t n_ids;
      while ((n_ids = pk_tokenize(&tb, &pp)) > max_prompt) pp.n_filler_chars -= 16;
      if (n_ids < 0) goto done;
      passkeys[k] = pp.passkey;
      prompt_tokens[k] = n_ids;
      pk_cell_t *case_cells = &cells[k * (size_t)a.n_pols * (size_t)a.n_budgets];
      if (pk_runner_case(run, tb.ids, n_ids, a.ctx[ci], pp.passkey, case_cells, &prefill_s[k], &err) < 0) {
        fprintf(stderr, PK_PROG ": context %d depth %d/%lld: %s\n", a.ctx[ci], di, (long long)a.n_depths, err.msg);
        goto done;
      }
      n_done[ci] = di + 1;
      fprintf(stderr, "[passkey] ctx %d depth %2d/%lld key %d: %lld tokens, prefill %.2f s:", a.ctx[ci], di,
              (long long)a.n_depths, pp.passkey, (long long)n_ids, prefill_s[k]);
      for (int32_t pi = 0; pi < a.n_pols; pi++)
        for (int32_t bi = 0; bi < (a.pols[pi].policy == KV_POLICY_FULL ? 1 : a.n_budgets); bi++) {
          const pk_cell_t *c = &case_cells[pi * a.n_budgets + bi];
          fputc(bi == 0 ? ' ' : '/', stderr);
          fputc(c->status == PK_CELL_ERR ? 'E' : c->status == PK_CELL_SKIPPED ? '-' : c->correct ? '1' : '0', stderr);
        }
      fputc('\n', stderr);
      if (a.verbose)
        for (int32_t pi = 0; pi < a.n_pols; pi++)
          for (int32_t bi = 0; bi < (a.pols[pi].policy == KV_POLICY_FULL ? 1 : a.n_budgets); bi++) {
            const pk_cell_t *c = &case_cells[pi * a.n_budgets + bi];
            if (c->status == PK_CELL_SKIPPED) continue;
            fprintf(stderr, "    %-10s %5d: ", a.pols[pi].name, a.pols[pi].policy == KV_POLICY_FULL ? 0 : a.budgets[bi]);
            for (const char *s = c->status == PK_CELL_ERR ? c->errmsg : c->answer; *s; s++)
              fputs(*s == '\n' ? "\\n" : (char[]){*s, 0}, stderr);
            fputc('\n', stderr);
          }
    }
  }
  rc = 0;

done:;
  const double wall_s = pk_now_s() - t_start;
  if (cells && passkeys && prompt_tokens && prefill_s) {
    printf("\npasskey retrieval accuracy (%%), %s on %s, %lld depths, %s prompt%s\n", hp->name, device,
           (long long)a.n_depths, a.chat ? "chat" : "raw", rc ? " -- INCOMPLETE (the run failed)" : "");
    if (a.skipped[0]) printf("not run on the GPU: %s (CPU only)\n", a.skipped);
    printf("\n");
    pk_report_table(stdout, &res);
    printf("\nerrors: ");
    pk_report_errors(stdout, &res);
    printf("wall time %.1f s\n", wall_s);
  }
  if (rc == 0 && !a.no_write) {
    time_t now = time(NULL);
    struct tm tm_now;
    localtime_r(&now, &tm_now);
    char day[16], date[32], path[512], machine[256], command[2048] = "", settings[2048];
    strftime(day, sizeof day, "%Y-%m-%d", &tm_now);
    strftime(date, sizeof date, "%Y-%m-%d %H:%M", &tm_now);
    if (a.out) snprintf(path, sizeof path, "%s", a.out);
    else pk_default_out(day, path, sizeof path);
    pk_cpu_model(machine, sizeof machine);
    int track = 0;
    for (int32_t pi = 0; pi < a.n_pols; pi++)
      track |= a.pols[pi].policy == KV_POLICY_H2O || a.pols[pi].policy == KV_POLICY_TOVA;
    for (int i = 0; i < argc; i++) {
      size_t n = strlen(command);
      snprintf(command + n, sizeof command - n, "%s%s", i ? " " : "", argv[i]);
    }
    char flow[1024];
    if (a.device == WK_DEVICE_CUDA)
      snprintf(flow, sizeof flow,
               "- on the GPU: bf16 weights (dequantized from the GGUF at load), f16 KV pages in device memory; "
               "every (policy, budget) prefills the case's prompt itself in its own engine (wk_engine_prefill, "
               "chunks of %lld tokens, then kv_seq_compact down to the budget: the state kv_seq_branch gives "
               "on the CPU); arkvale selects on the %s%s%s\n",
               (long long)a.batch_tokens, a.kv_select < 0 ? "host (--kv-select host)" : "device",
               a.skipped[0] ? "\n- not run on the GPU (CPU only): " : "", a.skipped);
    else
      snprintf(flow, sizeof flow,
               "- prefill once per case into a full pool (page 32, f16%s) in chunks of %lld "
               "tokens; every other policy continues it through kv_seq_branch; full decodes on the source\n",
               track ? ", token attention tracked for h2o/tova" : "", (long long)a.batch_tokens);
    char model[512];
    snprintf(model, sizeof model, "%s (%s; %d layers, %d heads, %d KV heads, head dim %d, trained context %d)",
             a.model, hp->name, hp->n_layers, hp->n_heads, hp->n_kv_heads, hp->head_dim, hp->n_ctx_train);
    snprintf(settings, sizeof settings,
             "- prompt: %s; %lld depths (0, 1/%lld, ...); seed %lld; greedy answer of %lld tokens, stopped at end of "
             "generation; right = the answer contains the 5-digit passkey as a whole number\n"
             "%s"
             "- kvpool defaults otherwise: first 2 layers full, 1 sink page, 2 window pages, arkvale top-k "
             "min(1280, budget/2)/page, cuboid-mean digest, attend over resident pages\n"
             "- threads: %d; commit %s\n",
             a.chat ? "ChatML (user message + \"The pass key is\" opening the answer)" : "raw (no chat template)",
             (long long)a.n_depths, (long long)a.n_depths, (long long)a.seed, (long long)a.n_gen,
             flow, pk_runner_n_threads(run), head);
    pk_report_meta_t meta = {.command = command, .date = date, .machine = machine, .device = device,
                             .model = model, .settings = settings, .wall_s = wall_s};
    if (pk_report_write(path, &res, &meta) < 0) rc = 1;
    else printf("wrote %s\n", path);
  }
  ak_host_free(tb.text, tb.text_cap);
  ak_host_free(tb.ids, sizeof(int32_t) * (size_t)tb.cap);
  ak_host_free(prefill_s, sizeof(double) * per_case);
  ak_host_free(prompt_tokens, sizeof(int64_t) * per_case);
  ak_host_free(passkeys, sizeof(int32_t) * per_case);
  ak_host_free(cells, cells_bytes);
  pk_runner_destroy(run);
  return rc;
}
