/* serve_args: bench_serve's flags. Every refusal names the flag and the value and
 * exits 2 (the caller's job: this returns 2). */
#include <errno.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "serve.h"

static void sv_usage(FILE *f) {
  fprintf(f,
          "usage: " SV_PROG " [flags]\n"
          "Load generator for arkvale.v1.Generation (see bench/serve/README.md).\n"
          "  --server HOST:PORT        an external coordinator (default: start one in-process\n"
          "                            over an in-process worker on loopback)\n"
          "  --model PATH              GGUF of the in-process servers and the engine step\n"
          "                            (default " SV_DEFAULT_MODEL ")\n"
          "  --requests N              requests of the load run (default 16)\n"
          "  --rate R                  Poisson arrivals, requests/s (default 0: closed loop)\n"
          "  --concurrency C           streams in flight (closed loop), or at most (with\n"
          "                            --rate) (default 8)\n"
          "  --prompt-tokens LO[:HI]   prompt length in tokens, uniform (default 16:64)\n"
          "  --output-tokens LO[:HI]   output length in tokens, uniform; max_new_tokens with\n"
          "                            ignore_eos (default 32)\n"
          "  --seed S                  arrivals, lengths, prompts, sampling (default 1)\n"
          "  --temperature T           sampling temperature (default 0: greedy)\n"
          "  --batch B                 batch of the overhead comparison (default 8)\n"
          "  --steady-tokens M         output tokens per stream of the steady run, and\n"
          "                            engine steps timed (default 64)\n"
          "  --steady-prompt-tokens P  prompt tokens of the steady run (default 32)\n"
          "  --threads N               engine compute threads, in-process (default 0: one per CPU)\n"
          "  --page-tokens N           KV page size, in-process (default 32)\n"
          "  --max-batch-tokens N      token rows per step, in-process (default 512)\n"
          "  --rounds N                engine step / steady run pairs, interleaved; the overhead\n"
          "                            is the median of the pairs' (default 5)\n"
          "  --rtt-calls N             GetModelInfo calls for the round trip (default 200)\n"
          "  --timeout-ms N            deadline of each stream (default 600000)\n"
          "  --no-overhead             skip the steady run and the engine step\n"
          "  --out FILE                results file (default bench/results/serve-<date>.md)\n"
          "  --no-write                no results file\n"
          "  --note TEXT               a line for the results file (e.g. what else the machine runs)\n");
}

/* A whole decimal integer in [lo, hi]; 0 ok, 2 after a message naming `flag`. */
static int sv_int(const char *flag, const char *v, long long lo, long long hi, long long *out) {
  char *end;
  errno = 0;
  long long x = strtoll(v, &end, 10);
  if (errno || end == v || *end || x < lo || x > hi) {
    fprintf(stderr, SV_PROG ": %s expects an integer in [%lld, %lld], got '%s'\n", flag, lo, hi, v);
    return 2;
  }
  *out = x;
  return 0;
}

static int sv_i32(const char *flag, const char *v, long long lo, long long hi, int32_t *out) {
  long long x;
  if (sv_int(flag, v, lo, hi, &x)) return 2;
  *out = (int32_t)x;
  return 0;
}

static int sv_real(const char *flag, const char *v, double lo, double hi, double *out) {
  char *end;
  errno = 0;
  double x = strtod(v, &end);
  if (errno || end == v || *end || !isfinite(x) || x < lo || x > hi) {
    fprintf(stderr, SV_PROG ": %s expects a number in [%g, %g], got '%s'\n", flag, lo, hi, v);
    return 2;
  }
  *out = x;
  return 0;
}

/* "N" or "LO:HI" with 1 <= LO <= HI <= max. */
static int sv_range(const char *flag, const char *v, int32_t max, sv_range_t *out) {
  char buf[64];
  if (strlen(v) >= sizeof buf) goto bad;
  snprintf(buf, sizeof buf, "%s", v);
  char *colon = strchr(buf, ':');
  long long lo, hi;
  char *end;
  if (colon) *colon = 0;
  errno = 0;
  lo = strtoll(buf, &end, 10);
  if (errno || end == buf || *end) goto bad;
  hi = lo;
  if (colon) {
    errno = 0;
    hi = strtoll(colon + 1, &end, 10);
    if (errno || end == colon + 1 || *end) goto bad;
  }
  if (lo < 1 || hi < lo || hi > max) goto bad;
  out->lo = (int32_t)lo, out->hi = (int32_t)hi;
  return 0;
bad:
  fprintf(stderr, SV_PROG ": %s expects N or LO:HI with 1 <= LO <= HI <= %d, got '%s'\n", flag, (int)max, v);
  return 2;
}

/* HOST:PORT with a non-empty host and a port in [1, 65535]. */
static int sv_hostport(const char *flag, const char *v) {
  const char *colon = strrchr(v, ':');
  long long port;
  char *end;
  if (colon && colon != v) {
    errno = 0;
    port = strtoll(colon + 1, &end, 10);
    if (!errno && end != colon + 1 && !*end && port >= 1 && port <= 65535) return 0;
  }
  fprintf(stderr, SV_PROG ": %s expects HOST:PORT, got '%s'\n", flag, v);
  return 2;
}

static void sv_args_default(sv_args_t *a) {
  memset(a, 0, sizeof *a);
  a->model = SV_DEFAULT_MODEL;
  a->n_requests = 16;
  a->concurrency = 8;
  a->prompt_tokens = (sv_range_t){16, 64};
  a->output_tokens = (sv_range_t){32, 32};
  a->seed = 1;
  a->batch = 8;
  a->steady_tokens = 64;
  a->steady_prompt_tokens = 32;
  a->page_tokens = 32;
  a->max_batch_tokens = 512;
  a->rtt_calls = 200;
  a->rounds = 5;
  a->timeout_ms = 600000;
}

int sv_args_parse(int argc, char **argv, sv_args_t *a) {
  sv_args_default(a);
  /* The command line for the results file, an argument with a space or quote in single
   * quotes (a quote inside one as '\'') so that it pastes back into a shell. */
  size_t u = 0;
  for (int i = 0; i < argc && u + 8 < sizeof a->command; i++) {
    int quote = argv[i][0] == 0 || strpbrk(argv[i], " \t'\"$`\\;&|()<>*?") != NULL;
    if (i) a->command[u++] = ' ';
    if (quote) a->command[u++] = '\'';
    for (const char *c = argv[i]; *c && u + 6 < sizeof a->command; c++) {
      if (*c == '\'') memcpy(a->command + u, "'\\''", 4), u += 4;
      else a->command[u++] = *c;
    }
    if (quote) a->command[u++] = '\'';
  }
  a->command[u < sizeof a->command ? u : sizeof a->command - 1] = 0;

  for (int i = 1; i < argc; i++) {
    const char *f = argv[i];
    if (!strcmp(f, "--help") || !strcmp(f, "-h")) {
      sv_usage(stdout);
      return 0;
    }
    if (!strcmp(f, "--no-overhead")) {
      a->no_overhead = 1;
      continue;
    }
    if (!strcmp(f, "--no-write")) {
      a->no_write = 1;
      continue;
    }
    if (strncmp(f, "--", 2) != 0) {
      fprintf(stderr, SV_PROG ": unexpected argument '%s' (see --help)\n", f);
      return 2;
    }
    if (i + 1 >= argc) {
      fprintf(stderr, SV_PROG ": %s needs a value (see --help)\n", f);
      return 2;
    }
    const char *v = argv[++i];
    double d = 0;
    long long x = 0;
    int rc = 0;
    if (!strcmp(f, "--server")) {
      rc = sv_hostport(f, v);
      a->server = v;
    } else if (!strcmp(f, "--model")) {
      if (!*v) rc = 2, fprintf(stderr, SV_PROG ": --model expects a path, got ''\n");
      a->model = v;
    } else if (!strcmp(f, "--requests")) {
      rc = sv_i32(f, v, 1, 1000000, &a->n_requests);
    } else if (!strcmp(f, "--rate")) {
      rc = sv_real(f, v, 0, 1e6, &d);
      a->rate_rps = d;
    } else if (!strcmp(f, "--concurrency")) {
      rc = sv_i32(f, v, 1, 1024, &a->concurrency);
    } else if (!strcmp(f, "--prompt-tokens")) {
      rc = sv_range(f, v, 1 << 20, &a->prompt_tokens);
    } else if (!strcmp(f, "--output-tokens")) {
      rc = sv_range(f, v, 1 << 20, &a->output_tokens);
    } else if (!strcmp(f, "--seed")) {
      rc = sv_int(f, v, 0, LLONG_MAX, &x);
      a->seed = (uint64_t)x;
    } else if (!strcmp(f, "--temperature")) {
      rc = sv_real(f, v, 0, 100, &d);
      a->temperature = (float)d;
    } else if (!strcmp(f, "--batch")) {
      rc = sv_i32(f, v, 1, 1024, &a->batch);
    } else if (!strcmp(f, "--steady-tokens")) {
      rc = sv_i32(f, v, 4, 1 << 20, &a->steady_tokens);
    } else if (!strcmp(f, "--steady-prompt-tokens")) {
      rc = sv_i32(f, v, 1, 1 << 20, &a->steady_prompt_tokens);
    } else if (!strcmp(f, "--threads")) {
      rc = sv_i32(f, v, 0, 1024, &a->n_threads);
    } else if (!strcmp(f, "--page-tokens")) {
      rc = sv_i32(f, v, 1, 4096, &a->page_tokens);
    } else if (!strcmp(f, "--max-batch-tokens")) {
      rc = sv_i32(f, v, 1, 1 << 20, &a->max_batch_tokens);
    } else if (!strcmp(f, "--rounds")) {
      rc = sv_i32(f, v, 1, 100, &a->rounds);
    } else if (!strcmp(f, "--rtt-calls")) {
      rc = sv_i32(f, v, 1, 1000000, &a->rtt_calls);
    } else if (!strcmp(f, "--timeout-ms")) {
      rc = sv_int(f, v, 1, INT64_MAX / 2, &x);
      a->timeout_ms = x;
    } else if (!strcmp(f, "--note")) {
      a->note = v;
    } else if (!strcmp(f, "--out")) {
      if (!*v) rc = 2, fprintf(stderr, SV_PROG ": --out expects a path, got ''\n");
      a->out = v;
    } else {
      fprintf(stderr, SV_PROG ": unknown flag %s (see --help)\n", f);
      return 2;
    }
    if (rc) return rc;
  }
  if (a->out && a->no_write) {
    fprintf(stderr, SV_PROG ": --out and --no-write contradict each other\n");
    return 2;
  }
  if (!a->server && a->max_batch_tokens < a->batch) {
    fprintf(stderr, SV_PROG ": --max-batch-tokens %d is below --batch %d (a decode step of B rows must fit)\n",
            (int)a->max_batch_tokens, (int)a->batch);
    return 2;
  }
  return -1;
}
