/* bench_serve main: flags; the servers (in-process unless --server); the round trip;
 * the load run; rounds of the direct engine step and the steady closed-loop run at
 * batch B; the report. Exit 0 after a report (failed streams are in
 * it), 1 on a runtime failure (an unreachable server: the message names the address),
 * 2 on a bad flag (the message names it). */
#include <stdio.h>
#include <string.h>

#include "serve.h"

int main(int argc, char **argv) {
  sv_args_t a;
  int rc = sv_args_parse(argc, argv, &a);
  if (rc >= 0) return rc;
  FILE *m = (!a.server || !a.no_overhead) ? fopen(a.model, "rb") : NULL;
  if ((!a.server || !a.no_overhead) && !m) {
    fprintf(stderr, SV_PROG ": --model %s: cannot read it%s\n", a.model,
            a.server ? " (the engine step needs it; --no-overhead skips it)" : "");
    return 2;
  }
  if (m) fclose(m);
  char loadavg[64];
  sv_loadavg(loadavg, sizeof loadavg);

  sv_local_t *local = NULL;
  char addr[256];
  if (a.server) {
    snprintf(addr, sizeof addr, "%s", a.server);
  } else {
    fprintf(stderr, SV_PROG ": starting the in-process worker and coordinator (%s)...\n", a.model);
    if (sv_local_start(&a, addr, sizeof addr, &local) != 0) return 1;
  }
  ak_rpc_client_t *cli = NULL;
  ak_err_t err;
  ak_err_clear(&err);
  sv_run_t load, steady_run;
  memset(&load, 0, sizeof load), memset(&steady_run, 0, sizeof steady_run);
  sv_rtt_t rtt;
  int32_t R = a.no_overhead ? 0 : a.rounds;
  sv_engine_t engine[100];
  sv_steady_t steady[100];
  memset(engine, 0, sizeof engine), memset(steady, 0, sizeof steady);
  rc = 1;
  if (ak_rpc_client_create(addr, &err, &cli) < 0) {
    fprintf(stderr, SV_PROG ": cannot reach a coordinator at %s: %s\n", addr, err.msg);
    goto done;
  }
  if (sv_rtt_measure(cli, addr, a.rtt_calls, &rtt) != 0) goto done;

  fprintf(stderr, SV_PROG ": load run: %d requests at %s...\n", (int)a.n_requests, addr);
  if (sv_load_run(cli, &a, a.n_requests, a.rate_rps, a.concurrency, a.prompt_tokens, a.output_tokens, a.seed, 0,
                  &load) != 0)
    goto done;
  /* Engine step and steady run interleaved, round by round: other load on a shared
   * machine then falls on both sides alike rather than on whichever ran first. The
   * in-process servers sit idle (blocked, not spinning) while the engine runs. */
  for (int32_t i = 0; i < R; i++) {
    fprintf(stderr, SV_PROG ": round %d/%d: engine step (batch %d, prompt %d, %d steps)...\n", (int)i + 1, (int)R,
            (int)a.batch, (int)a.steady_prompt_tokens, (int)a.steady_tokens);
    sv_cpu_t c0, c1, c2;
    sv_cpu_sample(&c0);
    if (sv_engine_measure(&a, &engine[i]) != 0) goto done;
    sv_cpu_sample(&c1);
    engine[i].others_pct = sv_cpu_others_pct(&c0, &c1);
    fprintf(stderr, SV_PROG ": round %d/%d: steady run (%d streams of %d tokens)...\n", (int)i + 1, (int)R,
            (int)a.batch, (int)a.steady_tokens);
    sv_range_t p = {a.steady_prompt_tokens, a.steady_prompt_tokens}, o = {a.steady_tokens, a.steady_tokens};
    double steps0 = sv_local_steps(local);
    if (sv_load_run(cli, &a, a.batch, 0, a.batch, p, o, a.seed + 1 + (uint64_t)i, 1, &steady_run) != 0) goto done;
    double steps1 = sv_local_steps(local);
    sv_cpu_sample(&c2);
    sv_steady_compute(&steady_run, a.batch, &steady[i]);
    steady[i].others_pct = sv_cpu_others_pct(&c1, &c2);
    if (steps0 >= 0 && steps1 > steps0) {
      int64_t n_tok = 0;
      for (int32_t k = 0; k < steady_run.n_reqs; k++) n_tok += steady_run.reqs[k].n_tokens;
      steady[i].tokens_per_step = (double)n_tok / (steps1 - steps0);
    }
    sv_run_free(&steady_run);
  }
  sv_report_t rep = {.a = &a,
                     .addr = addr,
                     .load = &load,
                     .rtt = &rtt,
                     .n_rounds = R,
                     .engine = engine,
                     .steady = steady,
                     .loadavg_start = loadavg};
  rc = sv_report_write(&rep);

done:
  sv_run_free(&load);
  sv_run_free(&steady_run);
  ak_rpc_client_destroy(cli);
  sv_local_stop(local);
  return rc;
}
