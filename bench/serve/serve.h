/* bench_serve: the serving benchmark of issue 5 (see bench/serve/README.md). A load
 * generator over the public arkvale.v1.Generation API (common/ak_rpc_client), against
 * an external coordinator (--server) or one it starts itself on loopback (co_service
 * over an in-process wk_service), plus the two reference measurements the issue asks
 * for: the in-process engine's decode step at batch B (wk_engine_step, no gRPC), and
 * the gRPC loopback round trip of a small unary call.
 *
 * Files, in the order they run: serve_args.c (flags), serve_engine.c (the direct
 * engine step; the in-process servers), serve_load.c (prompts, the round trip, the
 * streams), serve_report.c (percentiles, the table, the results file), serve.c (main).
 * Not here: correctness of the output (tests/ check that); only times and counts. */
#ifndef BENCH_SERVE_H
#define BENCH_SERVE_H

#include <stddef.h>
#include <stdint.h>

#include "ak_rpc_client.h"

#define SV_PROG "bench_serve"
#define SV_DEFAULT_MODEL "models/SmolLM2-135M-Instruct.Q4_1.gguf"

/* An inclusive range of token counts, drawn uniformly per request (lo == hi: fixed). */
typedef struct {
  int32_t lo, hi;
} sv_range_t;

typedef struct {
  const char *server;          /* "host:port" of a coordinator; NULL = in-process */
  const char *model;           /* GGUF for the in-process servers and the engine step */
  int32_t n_requests;          /* --requests */
  double rate_rps;             /* --rate: Poisson arrivals per second; 0 = closed loop */
  int32_t concurrency;         /* --concurrency: streams in flight (closed loop: always;
                                * with --rate: at most) */
  sv_range_t prompt_tokens;    /* --prompt-tokens LO[:HI] */
  sv_range_t output_tokens;    /* --output-tokens LO[:HI] (max_new_tokens, ignore_eos) */
  uint64_t seed;               /* --seed: arrivals, lengths, prompt offsets, sampling seeds */
  float temperature;           /* --temperature (default 0: greedy) */
  int32_t batch;               /* --batch: B of the overhead comparison */
  int32_t steady_tokens;       /* --steady-tokens: output tokens per stream of the steady
                                * run, and engine steps timed */
  int32_t steady_prompt_tokens; /* --steady-prompt-tokens */
  int32_t n_threads;           /* --threads: compute threads of the engine (0 = one per CPU) */
  int32_t page_tokens;         /* --page-tokens (in-process worker and engine) */
  int32_t max_batch_tokens;    /* --max-batch-tokens (in-process worker and coordinator) */
  int32_t rtt_calls;           /* --rtt-calls */
  int32_t rounds;              /* --rounds: engine step / steady run pairs, interleaved */
  int64_t timeout_ms;          /* --timeout-ms: per stream */
  int no_overhead;             /* --no-overhead: skip the steady run and the engine step */
  int no_write;                /* --no-write */
  const char *out;             /* --out FILE; NULL = bench/results/serve-<date>.md */
  const char *note;            /* --note TEXT: a line about the machine for the results file */
  char command[2048];          /* the command line, for the results file */
} sv_args_t;

/* Parses argv into `a`. Returns -1 to go on, 0 after --help, 2 after a message on
 * stderr that names the bad flag. */
int sv_args_parse(int argc, char **argv, sv_args_t *a);

/* --- serve_engine.c --- */

/* The direct engine's decode steps at batch B: B sequences prefilled with
 * prompt_tokens tokens, then `n_steps` steps of one token each, sampled as the worker
 * does (wk_sampler, same temperature). */
typedef struct {
  int ok;
  int32_t batch, n_steps, prompt_tokens, n_threads;
  double mean_ms, p50_ms, min_ms; /* per step */
  double others_pct;              /* CPU the rest of the machine used meanwhile (sv_cpu_*) */
} sv_engine_t;

/* 0 ok, 1 failure (message on stderr). */
int sv_engine_measure(const sv_args_t *a, sv_engine_t *out);

/* The in-process worker (wk_service) and coordinator (co_service) on loopback. */
typedef struct sv_local sv_local_t;

/* Sized for the run in `a`: enough sequence slots for max(concurrency, batch) streams
 * plus the coordinator's canary, contexts for the longest prompt + output. 0 ok, 1
 * failure (message on stderr). `*addr` gets "127.0.0.1:PORT" of the coordinator. */
int sv_local_start(const sv_args_t *a, char *addr, size_t addr_bytes, sv_local_t **local_p);
void sv_local_stop(sv_local_t *local);

/* Worker.Step calls the in-process coordinator has made so far, health canaries not
 * counted (from its metrics: arkvale_worker_steps_total - arkvale_worker_canaries_total);
 * -1 when they cannot be read. */
double sv_local_steps(sv_local_t *local);

/* --- serve_load.c --- */

/* What one Generate stream saw, times in seconds from the run's start. */
typedef struct {
  int32_t prompt_target, output_target; /* asked */
  char *prompt_text;                    /* built to prompt_target tokens (heap) */
  int32_t prompt_tokens;                /* the server's count (usage), else the target */
  double t_arrival, t_sent, t_first, t_last, t_end;
  int32_t n_tokens;                     /* token ids received */
  double *t_tok;                        /* [output_target] arrival of each token, or NULL */
  int ok;
  int code;                             /* gRPC status code */
  char msg[160];                        /* the failure, when !ok */
} sv_req_t;

typedef struct {
  sv_req_t *reqs;
  int32_t n_reqs;
  double wall_s;  /* first send to last end */
  int32_t n_late; /* Poisson arrivals sent > 1 ms late: every stream slot was busy */
} sv_run_t;

/* The gRPC round trip of GetModelInfo: median and p99 over n calls (after 10 unmeasured). */
typedef struct {
  int32_t n_calls;
  double p50_us, p99_us, min_us;
} sv_rtt_t;

/* 0 ok, 1 the server cannot be reached (message names `addr`). */
int sv_rtt_measure(ak_rpc_client_t *cli, const char *addr, int32_t n_calls, sv_rtt_t *out);

/* Builds the requests (lengths, arrivals, prompt texts sized by CountTokens), runs them
 * with `concurrency` streams (rate 0: closed loop) and fills `run` (free with
 * sv_run_free). `keep_token_times`: record every token's time (the steady run). 0 ok,
 * 1 failure before the run (message on stderr); failed streams are counted, not fatal. */
int sv_load_run(ak_rpc_client_t *cli, const sv_args_t *a, int32_t n_reqs, double rate_rps, int32_t concurrency,
                sv_range_t prompt, sv_range_t output, uint64_t seed, int keep_token_times, sv_run_t *run);
void sv_run_free(sv_run_t *run);

/* --- serve_report.c --- */

/* The steady-batch run's per-step time: inside the window where all B streams decode
 * (from the last first token to the first last token), each stream's time between its
 * first and last token there over the steps between them, averaged over the streams. */
typedef struct {
  int ok;
  int32_t batch, n_steps;
  double mean_ms, p50_ms; /* p50: median gap between consecutive tokens of a stream */
  double tokens_per_step; /* the whole run's tokens / Worker.Step calls (in-process); 0 unknown */
  double others_pct;      /* CPU the rest of the machine used meanwhile (sv_cpu_*) */
} sv_steady_t;

/* Other processes' share of the machine's CPU time over an interval: busy time of all
 * CPUs in /proc/stat (steal included) minus this process's (/proc/self/stat), over the
 * total, in percent; -1 where /proc cannot be read. A round is "quiet" when both of its
 * sides stay under SV_QUIET_PCT: on a shared machine other work slows either side. */
#define SV_QUIET_PCT 10.0
typedef struct {
  unsigned long long busy, total, self; /* clock ticks */
  int ok;
} sv_cpu_t;
void sv_cpu_sample(sv_cpu_t *c);
double sv_cpu_others_pct(const sv_cpu_t *before, const sv_cpu_t *after);

void sv_steady_compute(const sv_run_t *run, int32_t batch, sv_steady_t *out);

typedef struct {
  const sv_args_t *a;
  const char *addr;
  const sv_run_t *load;
  const sv_rtt_t *rtt;
  int32_t n_rounds;          /* 0: not measured (--no-overhead) */
  const sv_engine_t *engine; /* [n_rounds] */
  const sv_steady_t *steady; /* [n_rounds] */
  const char *loadavg_start; /* /proc/loadavg before the run */
} sv_report_t;

/* The table on stdout; the results file unless --no-write. 0 ok, 1 the file failed. */
int sv_report_write(const sv_report_t *r);

/* /proc/loadavg's first three fields, or "unknown". */
void sv_loadavg(char *out, size_t n);

#endif
