/* serve_report: from stream timestamps to the numbers bench_serve prints — throughput,
 * TTFT / TPOT / end-to-end percentiles, the steady-batch per-step time and its overhead
 * over the direct engine, the round trip — as one Markdown table, on stdout and in the
 * results file. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "bench_util.h"
#include "serve.h"

static int sv_cmp_double(const void *x, const void *y) {
  double a = *(const double *)x, b = *(const double *)y;
  return (a > b) - (a < b);
}

/* The q-quantile (0..1) of v[n], sorted in place, interpolated between ranks. */
static double sv_quantile(double *v, int64_t n, double q) {
  if (n <= 0) return NAN;
  qsort(v, (size_t)n, sizeof *v, sv_cmp_double);
  double pos = q * (double)(n - 1);
  int64_t i = (int64_t)pos;
  if (i + 1 >= n) return v[n - 1];
  return v[i] + (pos - (double)i) * (v[i + 1] - v[i]);
}

void sv_steady_compute(const sv_run_t *run, int32_t batch, sv_steady_t *out) {
  memset(out, 0, sizeof *out);
  out->batch = batch;
  double t_lo = -1e300, t_hi = 1e300;
  int32_t n_ok = 0;
  for (int32_t i = 0; i < run->n_reqs; i++) {
    const sv_req_t *r = &run->reqs[i];
    if (!r->ok || !r->t_tok) continue;
    n_ok++;
    if (r->t_tok[0] > t_lo) t_lo = r->t_tok[0];
    if (r->t_tok[r->n_tokens - 1] < t_hi) t_hi = r->t_tok[r->n_tokens - 1];
  }
  if (n_ok != batch || t_hi <= t_lo) return; /* never all B decoding at once */
  /* Per stream, its first and last token inside [t_lo, t_hi]: every step between them
   * ran all B streams, so their time over the index difference is the step time,
   * without the edge bias of counting tokens in a time window (a step's B tokens reach
   * their streams spread over a fraction of a millisecond). */
  int64_t n_gaps = 0, cap = 0, step_sum = 0;
  double per_step_sum = 0;
  for (int32_t i = 0; i < run->n_reqs; i++) cap += run->reqs[i].n_tokens;
  double *gaps = malloc(sizeof *gaps * (size_t)(cap > 0 ? cap : 1));
  if (!gaps) return;
  for (int32_t i = 0; i < run->n_reqs; i++) {
    const sv_req_t *r = &run->reqs[i];
    int32_t first = -1, last = -1;
    for (int32_t k = 0; k < r->n_tokens; k++) {
      if (r->t_tok[k] < t_lo || r->t_tok[k] > t_hi) continue;
      if (first < 0) first = k;
      if (last >= 0) gaps[n_gaps++] = (r->t_tok[k] - r->t_tok[last]) * 1e3;
      last = k;
    }
    if (first < 0 || last <= first) {
      free(gaps);
      return; /* a window shorter than one step */
    }
    per_step_sum += (r->t_tok[last] - r->t_tok[first]) * 1e3 / (last - first);
    step_sum += last - first;
  }
  out->ok = 1;
  out->n_steps = (int32_t)(step_sum / run->n_reqs);
  out->mean_ms = per_step_sum / run->n_reqs;
  out->p50_ms = sv_quantile(gaps, n_gaps, 0.5);
  free(gaps);
}

/* --- the table --- */

typedef struct {
  int32_t n_ok, n_failed, n_codes[17];
  int64_t out_tokens, prompt_tokens;
  double req_s, tok_s;
  double ttft[4], tpot[4], e2e[4]; /* p50, p90, p99, mean; ms */
  int64_t n_ttft, n_tpot;
} sv_summary_t;

static void sv_pcts(double *v, int64_t n, double out[4]) {
  double sum = 0;
  for (int64_t i = 0; i < n; i++) sum += v[i];
  out[0] = sv_quantile(v, n, 0.50), out[1] = sv_quantile(v, n, 0.90), out[2] = sv_quantile(v, n, 0.99);
  out[3] = n > 0 ? sum / (double)n : NAN;
}

static void sv_summarize(const sv_run_t *run, sv_summary_t *s) {
  memset(s, 0, sizeof *s);
  int32_t n = run->n_reqs;
  double *ttft = calloc((size_t)n, sizeof(double)), *tpot = calloc((size_t)n, sizeof(double));
  double *e2e = calloc((size_t)n, sizeof(double));
  int64_t n_e2e = 0;
  for (int32_t i = 0; i < n; i++) {
    const sv_req_t *r = &run->reqs[i];
    s->out_tokens += r->n_tokens;
    if (!r->ok) {
      s->n_failed++;
      if (r->code >= 0 && r->code < 17) s->n_codes[r->code]++;
      continue;
    }
    s->n_ok++;
    s->prompt_tokens += r->prompt_tokens;
    if (!ttft || !tpot || !e2e) continue;
    if (r->n_tokens >= 1) ttft[s->n_ttft++] = (r->t_first - r->t_sent) * 1e3;
    if (r->n_tokens >= 2) tpot[s->n_tpot++] = (r->t_last - r->t_first) * 1e3 / (r->n_tokens - 1);
    e2e[n_e2e++] = (r->t_end - r->t_sent) * 1e3;
  }
  if (run->wall_s > 0) s->req_s = s->n_ok / run->wall_s, s->tok_s = (double)s->out_tokens / run->wall_s;
  sv_pcts(ttft, s->n_ttft, s->ttft), sv_pcts(tpot, s->n_tpot, s->tpot), sv_pcts(e2e, n_e2e, s->e2e);
  free(ttft), free(tpot), free(e2e);
}

static const char *sv_range_str(sv_range_t r, char *buf, size_t n) {
  if (r.lo == r.hi) snprintf(buf, n, "%d", (int)r.lo);
  else snprintf(buf, n, "uniform %d..%d", (int)r.lo, (int)r.hi);
  return buf;
}

static void sv_table(FILE *f, const sv_report_t *r, const sv_summary_t *s) {
  const sv_args_t *a = r->a;
  char b1[48], b2[48];
  fprintf(f, "## Load run\n\n");
  fprintf(f, "%s, %d requests; prompt tokens %s (mean %.1f as counted by the server); output tokens %s "
          "(max_new_tokens with ignore_eos); temperature %g; seed %llu; server %s%s\n\n",
          a->rate_rps > 0 ? "Poisson arrivals" : "closed loop", (int)r->load->n_reqs,
          sv_range_str(a->prompt_tokens, b1, sizeof b1), s->n_ok ? (double)s->prompt_tokens / s->n_ok : 0.0,
          sv_range_str(a->output_tokens, b2, sizeof b2), a->temperature, (unsigned long long)a->seed, r->addr,
          a->server ? "" : " (in-process coordinator over an in-process worker, loopback gRPC)");
  if (a->rate_rps > 0)
    fprintf(f, "Rate %.3g requests/s, at most %d streams in flight; %d arrivals sent > 1 ms late (all streams "
            "busy).\n\n", a->rate_rps, (int)a->concurrency, (int)r->load->n_late);
  else
    fprintf(f, "%d streams in flight.\n\n",
            (int)(a->concurrency < r->load->n_reqs ? a->concurrency : r->load->n_reqs));
  fprintf(f, "| metric | value |\n| --- | --- |\n");
  fprintf(f, "| requests completed / failed | %d / %d |\n", (int)s->n_ok, (int)s->n_failed);
  for (int c = 0; c < 17; c++)
    if (s->n_codes[c]) fprintf(f, "| failed with gRPC code %d | %d |\n", c, (int)s->n_codes[c]);
  fprintf(f, "| wall time (first send to last end) | %.3f s |\n", r->load->wall_s);
  fprintf(f, "| throughput | %.2f requests/s, %.1f output tokens/s |\n", s->req_s, s->tok_s);
  fprintf(f, "\n| latency (ms) | p50 | p90 | p99 | mean | n |\n| --- | ---: | ---: | ---: | ---: | ---: |\n");
  fprintf(f, "| TTFT (send to first token) | %.1f | %.1f | %.1f | %.1f | %lld |\n", s->ttft[0], s->ttft[1], s->ttft[2],
          s->ttft[3], (long long)s->n_ttft);
  fprintf(f, "| TPOT ((last - first) / (n - 1)) | %.2f | %.2f | %.2f | %.2f | %lld |\n", s->tpot[0], s->tpot[1],
          s->tpot[2], s->tpot[3], (long long)s->n_tpot);
  fprintf(f, "| end to end | %.1f | %.1f | %.1f | %.1f | %d |\n", s->e2e[0], s->e2e[1], s->e2e[2], s->e2e[3],
          (int)s->n_ok);

  fprintf(f, "\n## gRPC loopback round trip\n\n");
  fprintf(f, "GetModelInfo (unary, no work behind it) to %s: median %.1f us, p99 %.1f us, min %.1f us over %d "
          "calls.\n", r->addr, r->rtt->p50_us, r->rtt->p99_us, r->rtt->min_us, (int)r->rtt->n_calls);

  fprintf(f, "\n## Coordinator overhead per decode step at batch %d\n\n", (int)a->batch);
  if (r->n_rounds == 0) {
    fprintf(f, "Not measured (--no-overhead).\n");
    return;
  }
  /* Per round, then the medians over rounds of each side's mean step. */
  fprintf(f, "| round | engine direct, mean ms | p50 ms | server steady, mean ms | p50 ms | overhead (means) | "
          "tokens / Worker.Step | other CPU %%, engine / server |\n"
          "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |\n");
  /* The headline uses the quiet rounds when there are any: other work on a shared
   * machine slows whichever side it lands on, by far more than the overhead sought. */
  double em[100], sm[100], ov[100];
  int32_t n_ov = 0, n_quiet = 0, n_both = 0;
  for (int pass = 0; pass < 2; pass++) {
    for (int32_t i = 0; i < r->n_rounds; i++) {
      const sv_engine_t *e = &r->engine[i];
      const sv_steady_t *st = &r->steady[i];
      int both = e->ok && st->ok;
      int quiet = e->others_pct >= 0 && e->others_pct < SV_QUIET_PCT &&
                  (a->server || (st->others_pct >= 0 && st->others_pct < SV_QUIET_PCT));
      if (pass == 1) {
        if (both && (quiet || n_quiet == 0)) {
          em[n_ov] = e->mean_ms, sm[n_ov] = st->mean_ms;
          ov[n_ov++] = 100.0 * (st->mean_ms - e->mean_ms) / e->mean_ms;
        }
        continue;
      }
      n_both += both, n_quiet += both && quiet;
      fprintf(f, "| %d | ", (int)i + 1);
      if (e->ok) fprintf(f, "%.2f | %.2f | ", e->mean_ms, e->p50_ms);
      else fprintf(f, "failed | | ");
      if (st->ok) fprintf(f, "%.2f | %.2f | ", st->mean_ms, st->p50_ms);
      else fprintf(f, "no window | | ");
      if (both) fprintf(f, "%+.1f%% | ", 100.0 * (st->mean_ms - e->mean_ms) / e->mean_ms);
      else fprintf(f, "| ");
      if (st->tokens_per_step > 0) fprintf(f, "%.2f | ", st->tokens_per_step);
      else fprintf(f, "n/a | ");
      fprintf(f, "%.0f / %.0f%s |\n", e->others_pct, st->others_pct, quiet ? "" : " (busy)");
    }
  }
  if (n_ov > 0) {
    double e_med = sv_quantile(em, n_ov, 0.5), s_med = sv_quantile(sm, n_ov, 0.5), o_med = sv_quantile(ov, n_ov, 0.5);
    fprintf(f, "| median of %s rounds | %.2f | | %.2f | | %+.1f%% (paired) | | |\n", n_quiet ? "the quiet" : "all",
            e_med, s_med, o_med);
    /* sv_quantile sorted ov: its ends are the spread. */
    fprintf(f, "\nOverhead at batch %d: %+.1f%%, the median over %d %s rounds of each round's server step against "
            "the engine step measured just before it (spread %+.1f%% .. %+.1f%%); medians of each side over the "
            "same rounds: engine %.2f ms, server %.2f ms per step (%+.2f ms). The issue's target is < 5%%.\n",
            (int)a->batch, o_med, (int)n_ov, n_quiet ? "quiet" : "(none quiet: all)", ov[0], ov[n_ov - 1], e_med,
            s_med, s_med - e_med);
    if (n_quiet == 0)
      fprintf(f, "\nWARNING: other processes used >= %.0f%% of the CPUs in every round: this figure measures the "
              "machine's other load as much as the coordinator. Run again when the machine is quiet.\n",
              SV_QUIET_PCT);
    else if (n_quiet < n_both)
      fprintf(f, "\n%d of %d rounds left out: other processes used >= %.0f%% of the CPUs during them (busy).\n",
              (int)(n_both - n_quiet), (int)n_both, SV_QUIET_PCT);
  } else {
    fprintf(f, "\nNo overhead figure: no round where both sides succeeded (a stream failed, or the server never "
            "ran all %d streams in one step).\n", (int)a->batch);
  }
  const sv_engine_t *e0 = &r->engine[0];
  fprintf(f, "\nEngine direct: wk_engine_step over %d decode rows plus wk_sampler per sequence, as the worker "
          "runs a step, %d threads, in this process with no gRPC. Server: %d closed-loop Generate streams; the "
          "steady window runs from the last stream's first token to the first stream's last token; per stream, "
          "the time between its first and last token in the window over the steps between them, averaged over "
          "the streams; p50 is the median gap between a stream's consecutive tokens in the window. Both at a "
          "prompt of %d tokens then %d one-token steps per sequence (the engine's first 2 untimed); rounds alternate engine "
          "and server. tokens / Worker.Step: the steady run's tokens over the Steps the in-process coordinator "
          "sent meanwhile (its metrics, canaries excluded; prefill included): near B when every step carried "
          "the whole batch. other CPU %%: the share of all CPUs that other processes (steal included) used "
          "while each side ran (/proc/stat less this process); a round is quiet when both stay under %.0f%%%s.\n", (int)a->batch, (int)e0->n_threads, (int)a->batch,
          (int)a->steady_prompt_tokens, (int)a->steady_tokens, SV_QUIET_PCT,
          a->server ? " (with --server, the engine side only: a local server's own CPU counts as other)" : "");
  if (a->server)
    fprintf(f, "The engine ran here with --threads %d; the server's engine may run elsewhere with other "
            "settings: compare with care.\n", (int)e0->n_threads);
}

void sv_loadavg(char *out, size_t n) {
  snprintf(out, n, "unknown");
  FILE *f = fopen("/proc/loadavg", "r");
  if (!f) return;
  double l1, l5, l15;
  if (fscanf(f, "%lf %lf %lf", &l1, &l5, &l15) == 3) snprintf(out, n, "%.2f %.2f %.2f", l1, l5, l15);
  fclose(f);
}

int sv_report_write(const sv_report_t *r) {
  sv_summary_t s;
  sv_summarize(r->load, &s);
  sv_table(stdout, r, &s);
  fflush(stdout);
  if (r->a->no_write) return 0;

  char date[32], stamp[64], cpu[256], commit[64], load[128], out[512];
  time_t now = time(NULL);
  struct tm tm;
  gmtime_r(&now, &tm);
  strftime(date, sizeof date, "%Y-%m-%d", &tm);
  strftime(stamp, sizeof stamp, "%Y-%m-%d %H:%M UTC", &tm);
  bench_cmd_field("lscpu 2>/dev/null", "Model name", cpu, sizeof cpu);
  bench_cmd_field("git rev-parse --short HEAD 2>/dev/null", "", commit, sizeof commit);
  sv_loadavg(load, sizeof load);
  if (r->a->out) snprintf(out, sizeof out, "%s", r->a->out);
  else if (bench_default_out(SV_PROG, "serve", date, out, sizeof out) < 0) return 1;
  FILE *f = fopen(out, "w");
  if (!f) {
    fprintf(stderr, SV_PROG ": --out %s: cannot write it\n", out);
    return 1;
  }
  fprintf(f, "# bench_serve: %s\n\n", stamp);
  fprintf(f, "- machine: %s, %ld online CPUs; load average (1, 5, 15 min) before the run: %s, after: %s\n", cpu,
          sysconf(_SC_NPROCESSORS_ONLN), r->loadavg_start ? r->loadavg_start : "unknown", load);
  if (r->a->note) fprintf(f, "- note: %s\n", r->a->note);
  fprintf(f, "- commit: %s\n- model: %s\n- command: `%s`\n\n", commit, r->a->model, r->a->command);
  sv_table(f, r, &s);
  int bad = ferror(f);
  if (fclose(f) != 0 || bad) {
    fprintf(stderr, SV_PROG ": writing %s failed\n", out);
    return 1;
  }
  printf("\nresults: %s\n", out);
  return 0;
}
