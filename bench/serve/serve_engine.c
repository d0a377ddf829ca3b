/* serve_engine: the two things bench_serve runs in its own process — the direct
 * engine's decode step at batch B (the baseline of the overhead comparison: what a
 * step costs with no gRPC, no coordinator, no worker service), and the in-process
 * worker + coordinator pair the load runs against when no --server is given. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "bench_util.h"
#include "co_metrics.h"
#include "co_service.h"
#include "serve.h"
#include "wk_engine.h"
#include "wk_sampler.h"
#include "wk_service.h"

/* Steps not timed at the start of the engine run (first-touch of scratch and pages). */
#define SV_ENGINE_WARM_STEPS 2

static int32_t sv_round_up(int64_t n, int32_t to) { return (int32_t)((n + to - 1) / to * to); }

static int sv_cmp_double(const void *x, const void *y) {
  double a = *(const double *)x, b = *(const double *)y;
  return (a > b) - (a < b);
}

/* The engine shape both the direct run and the in-process worker use. */
static wk_engine_params_t sv_engine_params(const sv_args_t *a, int32_t max_seqs, int32_t max_seq_tokens) {
  wk_engine_params_t p = wk_engine_params_default();
  p.model_path = a->model;
  p.n_threads = a->n_threads;
  p.page_tokens = a->page_tokens;
  p.max_seqs = max_seqs;
  p.max_seq_tokens = max_seq_tokens;
  p.max_batch_tokens = a->max_batch_tokens;
  return p;
}

int sv_engine_measure(const sv_args_t *a, sv_engine_t *out) {
  memset(out, 0, sizeof *out);
  const int32_t B = a->batch, P = a->steady_prompt_tokens, M = a->steady_tokens;
  int32_t ctx = sv_round_up((int64_t)P + M + SV_ENGINE_WARM_STEPS + a->page_tokens, a->page_tokens);
  wk_engine_params_t ep = sv_engine_params(a, B, ctx);
  wk_engine_t *eng = NULL;
  ak_err_t err;
  ak_err_clear(&err);
  int rc = 1;
  if (wk_engine_create(&ep, &err, &eng) < 0) {
    fprintf(stderr, SV_PROG ": engine step: %s\n", err.msg);
    return 1;
  }
  const int32_t n_vocab = wk_engine_hparams(eng)->n_vocab;
  kv_seq_id_t *seqs = calloc((size_t)B, sizeof *seqs);
  wk_sampler_t **smp = calloc((size_t)B, sizeof *smp);
  int32_t *n_new = calloc((size_t)B, sizeof *n_new), *toks = calloc((size_t)B, sizeof *toks);
  int32_t *prompt = calloc((size_t)P, sizeof *prompt);
  float *logits = malloc(sizeof(float) * (size_t)B * (size_t)n_vocab); /* [B, n_vocab] f32 */
  int32_t n_timed = M - SV_ENGINE_WARM_STEPS;
  double *step_ms = calloc((size_t)(n_timed > 0 ? n_timed : 1), sizeof *step_ms);
  int32_t n_made = 0;
  if (!seqs || !smp || !n_new || !toks || !prompt || !logits || !step_ms) {
    fprintf(stderr, SV_PROG ": engine step: out of memory\n");
    goto done;
  }
  /* Prompt content does not change a full-cache step's time: distinct synthetic ids. */
  for (int32_t b = 0; b < B; b++, n_made++) {
    for (int32_t t = 0; t < P; t++) prompt[t] = (int32_t)(((int64_t)t * 7919 + 13 + b * 131) % (n_vocab - 200)) + 100;
    wk_sampler_params_t sp = wk_sampler_params_default();
    sp.temperature = a->temperature, sp.seed = a->seed + (uint64_t)b;
    if (wk_sampler_create(&sp, n_vocab, &err, &smp[b]) < 0 || wk_engine_seq_create(eng, &seqs[b]) < 0 ||
        wk_engine_prefill(eng, seqs[b], prompt, P, logits + (int64_t)b * n_vocab) < 0) {
      fprintf(stderr, SV_PROG ": engine step: prefill of sequence %d: %s %s\n", (int)b, err.msg,
              wk_engine_errmsg(eng));
      n_made++;
      goto done;
    }
    for (int32_t t = 0; t < P; t++) (void)wk_sampler_accept(smp[b], prompt[t]);
    n_new[b] = 1;
  }
  /* Each step as the worker runs one: sample every sequence's next token from the last
   * logits (wk_svc_step_run samples after the forward; the order within a step loop
   * does not matter for its time), record it, then one forward over B rows. */
  for (int32_t s = 0; s < M; s++) {
    double t0 = bench_now_s();
    for (int32_t b = 0; b < B; b++) {
      if (wk_sampler_sample(smp[b], logits + (int64_t)b * n_vocab, &toks[b], NULL) < 0) {
        fprintf(stderr, SV_PROG ": engine step: sampling: %s\n", wk_sampler_last_error(smp[b]));
        goto done;
      }
      (void)wk_sampler_accept(smp[b], toks[b]);
    }
    wk_forward_batch_t fb = {.seqs = {.n_seqs = B, .seqs = seqs, .n_new_tokens = n_new},
                             .tokens = toks, .logits_all = 0, .logits = logits};
    if (wk_engine_step(eng, &fb) < 0) {
      fprintf(stderr, SV_PROG ": engine step %d: %s\n", (int)s, wk_engine_errmsg(eng));
      goto done;
    }
    if (s >= SV_ENGINE_WARM_STEPS) step_ms[s - SV_ENGINE_WARM_STEPS] = (bench_now_s() - t0) * 1e3;
  }
  double sum = 0;
  for (int32_t i = 0; i < n_timed; i++) sum += step_ms[i];
  qsort(step_ms, (size_t)n_timed, sizeof *step_ms, sv_cmp_double);
  out->ok = 1, out->batch = B, out->n_steps = n_timed, out->prompt_tokens = P;
  out->n_threads = a->n_threads > 0 ? a->n_threads : (int32_t)sysconf(_SC_NPROCESSORS_ONLN);
  out->mean_ms = sum / n_timed, out->p50_ms = step_ms[n_timed / 2], out->min_ms = step_ms[0];
  rc = 0;
done:
  for (int32_t b = 0; b < n_made; b++) {
    if (smp && smp[b]) wk_sampler_destroy(smp[b]);
  }
  wk_engine_destroy(eng); /* frees its sequences */
  free(step_ms), free(logits), free(prompt), free(toks), free(n_new), free(smp), free(seqs);
  return rc;
}

struct sv_local {
  wk_service_t *wk;
  co_service_t *co;
};

int sv_local_start(const sv_args_t *a, char *addr, size_t addr_bytes, sv_local_t **local_p) {
  sv_local_t *l = calloc(1, sizeof *l);
  if (!l) return 1;
  int32_t streams = a->concurrency > a->batch ? a->concurrency : a->batch;
  /* The longest sequence: prompt (the server adds BOS; +8 for tokenizer slack) + output. */
  int64_t longest = (int64_t)a->prompt_tokens.hi + a->output_tokens.hi;
  int64_t steady = (int64_t)a->steady_prompt_tokens + a->steady_tokens;
  if (!a->no_overhead && steady > longest) longest = steady;
  int32_t ctx = sv_round_up(longest + 8 + a->page_tokens, a->page_tokens);

  wk_service_params_t wp = wk_service_params_default();
  wp.engine = sv_engine_params(a, streams + 1 /* the coordinator's canary slot */, ctx);
  ak_err_t err;
  ak_err_clear(&err);
  if (wk_service_create(&wp, &err, &l->wk) < 0) {
    fprintf(stderr, SV_PROG ": in-process worker: %s\n", err.msg);
    goto err_free;
  }
  char waddr[64];
  snprintf(waddr, sizeof waddr, "127.0.0.1:%d", wk_service_port(l->wk));
  co_service_params_t cp = co_service_params_default();
  cp.model_path = a->model;
  cp.worker_addr = waddr;
  cp.max_batch_tokens = a->max_batch_tokens;
  cp.max_queue = a->n_requests > 64 ? a->n_requests : 64;
  if (co_service_create(&cp, &err, &l->co) < 0) {
    fprintf(stderr, SV_PROG ": in-process coordinator: %s\n", err.msg);
    goto err_worker;
  }
  snprintf(addr, addr_bytes, "127.0.0.1:%d", co_service_port(l->co));
  *local_p = l;
  return 0;

err_worker:
  wk_service_destroy(l->wk);
err_free:
  free(l);
  return 1;
}

void sv_local_stop(sv_local_t *l) {
  if (!l) return;
  co_service_destroy(l->co);
  wk_service_destroy(l->wk);
  free(l);
}

/* The value of the first sample of `family` in Prometheus text; -1 if absent. */
static double sv_metric_first(const char *text, const char *family) {
  size_t n = strlen(family);
  for (const char *p = text; p && *p; p = strchr(p, '\n'), p = p ? p + 1 : NULL) {
    if (strncmp(p, family, n) != 0 || (p[n] != '{' && p[n] != ' ')) continue;
    const char *e = strchr(p, '\n'), *sp = p + n;
    for (const char *q = p + n; *q && q != e; q++)
      if (*q == ' ') sp = q;
    return strtod(sp, NULL);
  }
  return -1;
}

double sv_local_steps(sv_local_t *l) {
  if (!l) return -1;
  char *text = NULL;
  size_t len = 0;
  ak_err_t err;
  if (co_metrics_render(co_service_metrics(l->co), &err, &text, &len) < 0) return -1;
  double steps = sv_metric_first(text, "arkvale_worker_steps_total");
  double canaries = sv_metric_first(text, "arkvale_worker_canaries_total");
  co_metrics_text_free(text);
  if (steps < 0) return -1;
  return steps - (canaries > 0 ? canaries : 0);
}

void sv_cpu_sample(sv_cpu_t *c) {
  memset(c, 0, sizeof *c);
  unsigned long long v[10] = {0};
  FILE *f = fopen("/proc/stat", "r");
  if (!f) return;
  int n = fscanf(f, "cpu %llu %llu %llu %llu %llu %llu %llu %llu %llu %llu", &v[0], &v[1], &v[2], &v[3], &v[4],
                 &v[5], &v[6], &v[7], &v[8], &v[9]);
  fclose(f);
  if (n < 8) return;
  /* user nice system idle iowait irq softirq steal (guest time is inside user) */
  c->busy = v[0] + v[1] + v[2] + v[5] + v[6] + v[7];
  c->total = c->busy + v[3] + v[4];
  f = fopen("/proc/self/stat", "r");
  if (!f) return;
  char buf[1024];
  size_t len = fread(buf, 1, sizeof buf - 1, f);
  fclose(f);
  buf[len] = 0;
  char *p = strrchr(buf, ')'); /* the command name may hold spaces */
  unsigned long long ut, st;
  if (!p || sscanf(p + 1, " %*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %llu %llu", &ut, &st) != 2) return;
  c->self = ut + st;
  c->ok = 1;
}

double sv_cpu_others_pct(const sv_cpu_t *a, const sv_cpu_t *b) {
  if (!a->ok || !b->ok || b->total <= a->total) return -1;
  double others = (double)(b->busy - a->busy) - (double)(b->self - a->self);
  if (others < 0) others = 0;
  return 100.0 * others / (double)(b->total - a->total);
}
