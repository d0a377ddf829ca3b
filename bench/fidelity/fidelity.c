/* bench_fidelity: how close each KV policy's next-token distribution stays to the full
 * cache on real text, teacher-forced — the measurement behind the default of arkvale's
 * attend mode (KV_ATTEND_RESIDENT vs KV_ATTEND_TOPK) and a side-by-side of the policies.
 *
 * It prefills --ctx tokens of natural text into a full-cache source pool, branches a
 * full-cache reference and, for every config (policy, page size, attend mode) and
 * --budgets value, a pool of its own from that prefill (kv_seq_branch), and feeds each
 * the same next --steps tokens of the text one at a time. After every fed token it
 * compares the config's logits with the reference's: KL(reference || config) over the
 * vocabulary (softmax in double), top-1 agreement, and |Δlogit| at the reference's
 * argmax, averaged over the steps. Teacher forcing keeps the two sides on the same
 * tokens, so an early disagreement does not snowball into a different text.
 *
 * Not a generation-quality benchmark (bench/passkey is one): a small KL says the policy
 * loses little of what the full cache computes, not that the model's answer is right.
 *
 * Exit status: 0 ok, 1 a runtime failure (a config that failed or ran over its budget
 * included), 2 a bad flag. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "bench_util.h"
#include "co_tokenizer.h"
#include "fd_report.h"
#include "fd_run.h"
#include "kvpool.h"
#include "wk_forward.h"
#include "wk_model.h"

#define FD_MAX_BUDGETS 16
#define FD_MAX_TEXTS 32

/* The estimator's default text: the design notes beside the checkout, then the
 * repository's own documentation; missing files are skipped. */
typedef struct {
  const char *model;
  const char *device;
  int64_t ctx_tokens;
  int64_t n_steps;
  int64_t n_threads;
  int32_t budgets[FD_MAX_BUDGETS];
  int32_t n_budgets;
  int cfg_on[32];       /* [fd_n_configs] */
  const char *texts[FD_MAX_TEXTS];
  int n_texts;
  const char *out_path; /* NULL: bench/results/fidelity-<date>.md */
  int no_write;
} fd_args_t;

/* ------------------------------------------------------------------ flags */

static void fd_usage(FILE *f) {
  fprintf(f,
          "usage: bench_fidelity [options]   (run from the repository root)\n"
          "  --model PATH        GGUF model (default models/SmolLM2-135M-Instruct.Q4_1.gguf)\n"
          "  --device cpu|cuda   backend (default cpu; cuda is not built yet)\n"
          "  --ctx N             prompt tokens prefilled (default 2048)\n"
          "  --steps N           teacher-forced decode steps, each compared (default 64)\n"
          "  --budgets LIST      tokens per budgeted layer, comma-separated, at most %d\n"
          "                      (default 128,256,512,1024)\n"
          "  --policies LIST     comma-separated configs (default all):\n"
          "                      ",
          FD_MAX_BUDGETS);
  for (int32_t i = 0; i < fd_n_configs; i++) fprintf(f, "%s%s", i ? ", " : "", fd_configs[i].name);
  fprintf(f,
          ";\n"
          "                      a policy name (arkvale, streaming, ...) selects all its configs; all\n"
          "  --threads N         CPU threads, 0 = all online (default 2)\n"
          "  --text PATH         text file, repeatable, concatenated in order (default: ../shared/*.md\n"
          "                      design notes, then the repository's docs)\n"
          "  --out PATH          results file (default bench/results/fidelity-<date>.md)\n"
          "  --no-write          print only, write no results file\n");
}

/* Strict integer: the whole string, in [lo, hi]. Prints a message naming the flag. */
static int fd_parse_int(const char *flag, const char *v, int64_t lo, int64_t hi, int64_t *out) {
  char *end = NULL;
  errno = 0;
  long long x = strtoll(v, &end, 10);
  if (errno || end == v || *end || x < lo || x > hi) {
    fprintf(stderr, "bench_fidelity: %s '%s': expected an integer in [%lld, %lld]\n", flag, v, (long long)lo,
            (long long)hi);
    return -1;
  }
  *out = x;
  return 0;
}

/* Splits v at commas into items of at most item_bytes - 1 characters; calls fn on each.
 * An empty item is an error. */
static int fd_parse_list(const char *flag, const char *v, fd_args_t *a,
                         int (*fn)(const char *flag, const char *item, fd_args_t *a)) {
  const char *p = v;
  for (;;) {
    size_t n = strcspn(p, ",");
    char item[64];
    if (n == 0 || n >= sizeof item) {
      fprintf(stderr, "bench_fidelity: %s '%s': %s item\n", flag, v, n ? "an overlong" : "an empty");
      return -1;
    }
    memcpy(item, p, n);
    item[n] = 0;
    if (fn(flag, item, a) < 0) return -1;
    if (!p[n]) return 0;
    p += n + 1;
  }
}

static int fd_add_budget(const char *flag, const char *item, fd_args_t *a) {
  int64_t b;
  if (fd_parse_int(flag, item, 1, 1 << 20, &b) < 0) return -1;
  if (a->n_budgets == FD_MAX_BUDGETS) {
    fprintf(stderr, "bench_fidelity: %s: more than %d budgets\n", flag, FD_MAX_BUDGETS);
    return -1;
  }
  for (int32_t i = 0; i < a->n_budgets; i++)
    if (a->budgets[i] == b) {
      fprintf(stderr, "bench_fidelity: %s: budget %lld given twice\n", flag, (long long)b);
      return -1;
    }
  a->budgets[a->n_budgets++] = (int32_t)b;
  return 0;
}

/* A config name, a policy name (all its configs) or "all". */
static int fd_add_config(const char *flag, const char *item, fd_args_t *a) {
  int hit = 0;
  for (int32_t i = 0; i < fd_n_configs; i++)
    if (!strcmp(item, "all") || !strcmp(item, fd_configs[i].name) ||
        !strcmp(item, kv_policy_name(fd_configs[i].policy)))
      a->cfg_on[i] = hit = 1;
  if (!hit) {
    fprintf(stderr, "bench_fidelity: %s: unknown config '%s' (expected all, a policy name, or one of:", flag,
            item);
    for (int32_t i = 0; i < fd_n_configs; i++) fprintf(stderr, " %s", fd_configs[i].name);
    fprintf(stderr, ")\n");
    return -1;
  }
  return 0;
}

/* 0 ok, 1 help printed, -1 bad flag. */
static int fd_parse_args(int argc, char **argv, fd_args_t *a) {
  memset(a, 0, sizeof *a);
  a->model = "models/SmolLM2-135M-Instruct.Q4_1.gguf";
  a->device = "cpu";
  a->ctx_tokens = 2048;
  a->n_steps = 64;
  a->n_threads = 2;
  int budgets_given = 0, policies_given = 0;
  for (int i = 1; i < argc; i++) {
    const char *f = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
    int r = 0;
    if (!strcmp(f, "-h") || !strcmp(f, "--help")) return fd_usage(stdout), 1;
    if (!strcmp(f, "--no-write")) {
      a->no_write = 1;
      continue;
    }
    if (strcmp(f, "--model") && strcmp(f, "--device") && strcmp(f, "--ctx") && strcmp(f, "--steps") &&
        strcmp(f, "--budgets") && strcmp(f, "--policies") && strcmp(f, "--threads") && strcmp(f, "--text") &&
        strcmp(f, "--out")) {
      fprintf(stderr, "bench_fidelity: unknown flag '%s'\n", f);
      return -1;
    }
    if (!v || !*v) {
      fprintf(stderr, "bench_fidelity: %s needs a value\n", f);
      return -1;
    }
    i++;
    if (!strcmp(f, "--model")) a->model = v;
    else if (!strcmp(f, "--out")) a->out_path = v;
    else if (!strcmp(f, "--device")) {
      if (strcmp(v, "cpu") && strcmp(v, "cuda")) {
        fprintf(stderr, "bench_fidelity: --device '%s': expected cpu or cuda\n", v);
        return -1;
      }
      a->device = v;
    } else if (!strcmp(f, "--text")) {
      if (a->n_texts == FD_MAX_TEXTS) {
        fprintf(stderr, "bench_fidelity: --text given more than %d times\n", FD_MAX_TEXTS);
        return -1;
      }
      a->texts[a->n_texts++] = v;
    } else if (!strcmp(f, "--budgets")) {
      if (budgets_given++) {
        fprintf(stderr, "bench_fidelity: --budgets given twice\n");
        return -1;
      }
      r = fd_parse_list(f, v, a, fd_add_budget);
    } else if (!strcmp(f, "--policies")) {
      if (policies_given++) {
        fprintf(stderr, "bench_fidelity: --policies given twice\n");
        return -1;
      }
      r = fd_parse_list(f, v, a, fd_add_config);
    } else if (!strcmp(f, "--ctx")) r = fd_parse_int(f, v, 1, 1 << 20, &a->ctx_tokens);
    else if (!strcmp(f, "--steps")) r = fd_parse_int(f, v, 1, 1 << 20, &a->n_steps);
    else if (!strcmp(f, "--threads")) r = fd_parse_int(f, v, 0, 1024, &a->n_threads);
    if (r < 0) return -1;
  }
  if (!budgets_given) {
    static const int32_t def[] = {128, 256, 512, 1024};
    for (size_t i = 0; i < sizeof def / sizeof def[0]; i++) a->budgets[a->n_budgets++] = def[i];
  }
  if (!policies_given)
    for (int32_t i = 0; i < fd_n_configs; i++) a->cfg_on[i] = 1;
  return 0;
}

/* ------------------------------------------------------------------ the text */

/* ------------------------------------------------------------------ main */

static void fd_progress(const fd_config_t *cfg, int32_t budget, const fd_cell_t *c) {
  if (cfg->policy == KV_POLICY_FULL) fprintf(stderr, "bench_fidelity: %-20s        ", cfg->name);
  else fprintf(stderr, "bench_fidelity: %-20s %6d ", cfg->name, budget);
  if (c->status == FD_CELL_OK)
    fprintf(stderr, "KL %.5f  top-1 %5.1f%%  recalls/step/layer %.3f  %s(%.1f s)\n", c->kl_mean, 100 * c->top1,
            c->recalls_per_step_layer, c->over_budget ? "OVER BUDGET " : "", c->branch_s + c->decode_s);
  else
    fprintf(stderr, "%s: %s\n",
            c->status == FD_CELL_SKIPPED ? "skipped" : c->status == FD_CELL_REFUSED ? "refused" : "FAILED", c->errmsg);
}

int main(int argc, char **argv) {
  fd_args_t a;
  int pr = fd_parse_args(argc, argv, &a);
  if (pr != 0) return pr > 0 ? 0 : 2;
  if (!strcmp(a.device, "cuda")) {
    fprintf(stderr, "bench_fidelity: --device cuda: not built with the CUDA backend yet\n");
    return 1;
  }
  double t_start = bench_now_s();
  char cmdline[2048] = "";
  for (int i = 0; i < argc; i++) {
    size_t u = strlen(cmdline);
    snprintf(cmdline + u, sizeof cmdline - u, "%s%s", i ? " " : "", argv[i]);
  }

  ak_err_t err;
  ak_err_clear(&err);
  wk_model_t *model = NULL;
  kn_cpu_t *cpu = NULL;
  wk_forward_t *fw = NULL;
  co_tokenizer_t *tok = NULL;
  fd_runner_t *run = NULL;
  int32_t *ids = NULL;
  fd_cell_t *cells = NULL;
  const fd_config_t *cfgs[32];
  int32_t n_cfgs = 0;
  int rc = 1;

  wk_model_params_t mp = wk_model_params_default();
  if (wk_model_load(a.model, &mp, &err, &model) < 0 || kn_cpu_create((int)a.n_threads, &err, &cpu) < 0 ||
      co_tokenizer_create_from_gguf(wk_model_gguf(model), &err, &tok) < 0 ||
      wk_forward_create(model, cpu, FD_CHUNK_TOKENS, &err, &fw) < 0) {
    fprintf(stderr, "bench_fidelity: %s\n", err.msg);
    goto done;
  }
  const wk_hparams_t *hp = wk_model_hparams(model);
  int64_t n_need = a.ctx_tokens + a.n_steps + 1; /* the last step's target too */
  if (n_need > hp->n_ctx_train) {
    fprintf(stderr, "bench_fidelity: --ctx %lld + --steps %lld + 1 exceed the model's context of %d\n",
            (long long)a.ctx_tokens, (long long)a.n_steps, hp->n_ctx_train);
    rc = 2;
    goto done;
  }
  for (int32_t i = 0; i < fd_n_configs; i++)
    if (a.cfg_on[i]) cfgs[n_cfgs++] = &fd_configs[i];

  ids = malloc(sizeof(int32_t) * (size_t)n_need);
  cells = calloc((size_t)n_cfgs * (size_t)a.n_budgets, sizeof *cells);
  if (!ids || !cells) {
    fprintf(stderr, "bench_fidelity: out of memory\n");
    goto done;
  }
  char texts_used[4096];
  int64_t n_text_tokens = 0;
  int br = bench_text_tokens("bench_fidelity", a.texts, a.n_texts, tok, n_need, ids, &n_text_tokens, texts_used, sizeof texts_used);
  if (br) {
    rc = br;
    goto done;
  }
  if (n_text_tokens < n_need)
    fprintf(stderr, "bench_fidelity: the text holds %lld tokens; repeated to fill %lld\n",
            (long long)n_text_tokens, (long long)n_need);

  fd_runner_params_t rp = {.model = model, .cpu = cpu, .fw = fw, .ids = ids, .ctx_tokens = (int32_t)a.ctx_tokens,
                           .n_steps = (int32_t)a.n_steps};
  fd_report_t rep = {.cmdline = cmdline, .model_path = a.model, .model_name = hp->name, .device = a.device,
                     .isa = kn_isa_name(kn_cpu_isa(cpu)), .texts_used = texts_used,
                     .n_threads = kn_cpu_n_threads(cpu), .ctx_tokens = (int32_t)a.ctx_tokens,
                     .n_steps = (int32_t)a.n_steps, .n_text_tokens = n_text_tokens, .n_budgets = a.n_budgets,
                     .budgets = a.budgets, .n_cfgs = n_cfgs, .cfgs = cfgs, .cells = cells};
  fprintf(stderr, "bench_fidelity: prefill %lld tokens, reference decode of %lld steps, %d threads\n",
          (long long)a.ctx_tokens, (long long)a.n_steps, kn_cpu_n_threads(cpu));
  if (fd_runner_create(&rp, &err, &run) < 0 || fd_runner_prepare(run, &rep.ref, &rep.prefill_s, &err) < 0) {
    fprintf(stderr, "bench_fidelity: %s\n", err.msg);
    goto done;
  }
  fprintf(stderr, "bench_fidelity: prefill %.1f s; reference %.1f s, NLL %.4f nats/token\n", rep.prefill_s,
          rep.ref.branch_s + rep.ref.decode_s, rep.ref.nll_mean);

  int any_bad = 0;
  for (int32_t ci = 0; ci < n_cfgs; ci++) {
    int once = cfgs[ci]->policy == KV_POLICY_FULL; /* no budget: one run fills the row */
    for (int32_t bi = 0; bi < (once ? 1 : a.n_budgets); bi++) {
      fd_cell_t *c = &cells[(size_t)ci * (size_t)a.n_budgets + (size_t)bi];
      if (fd_runner_cell(run, cfgs[ci], a.budgets[bi], c, &err) < 0) {
        fprintf(stderr, "bench_fidelity: %s\n", err.msg);
        goto done;
      }
      fd_progress(cfgs[ci], a.budgets[bi], c);
      any_bad |= c->status == FD_CELL_FAILED || (c->status == FD_CELL_OK && c->over_budget);
    }
    if (once)
      for (int32_t bi = 1; bi < a.n_budgets; bi++) cells[(size_t)ci * (size_t)a.n_budgets + (size_t)bi] =
                                                     cells[(size_t)ci * (size_t)a.n_budgets];
  }
  rep.total_s = bench_now_s() - t_start;
  time_t now = time(NULL);
  strftime(rep.date, sizeof rep.date, "%Y-%m-%d", localtime(&now));

  printf("KL(full || config) in nats / top-1 agreement, mean over %lld teacher-forced steps after %lld prompt "
         "tokens\n(reference NLL %.4f nats/token)\n\n",
         (long long)a.n_steps, (long long)a.ctx_tokens, rep.ref.nll_mean);
  fd_report_summary(stdout, &rep, 0);
  printf("\n");
  fd_report_details(stdout, &rep, 0);
  printf("\n");
  fd_report_findings(stdout, &rep);
  printf("time: %.1f s (prefill %.1f s)\n", rep.total_s, rep.prefill_s);

  if (!a.no_write) {
    char out[512];
    const char *path = a.out_path;
    if (!path) {
      if (bench_default_out("bench_fidelity", "fidelity", rep.date, out, sizeof out) < 0) goto done;
      path = out;
    }
    if (fd_report_write(path, &rep) < 0) goto done;
    printf("wrote %s\n", path);
  }
  rc = any_bad ? 1 : 0;
  if (rc) fprintf(stderr, "bench_fidelity: a config failed or ran over its budget (see above)\n");

done:
  free(cells);
  free(ids);
  fd_runner_destroy(run);
  co_tokenizer_destroy(tok);
  wk_forward_destroy(fw);
  kn_cpu_destroy(cpu);
  wk_model_free(model);
  return rc;
}
