/* arkvale-coordinator: the public arkvale.v1.Generation service (co_service.h) as a
 * process, with its Prometheus metrics over HTTP (co_metrics_http.h). Flags, then
 * connect to the workers of every group (retried until --connect-timeout-ms: a launcher may start both
 * at once and the worker loads its model first), serve until SIGTERM or SIGINT, then
 * drain: stop admitting (a new Generate is UNAVAILABLE, health NOT_SERVING), let the
 * open streams finish for up to --drain-timeout-ms (a second signal cuts it short),
 * end the rest UNAVAILABLE, exit 0.
 *
 * Exit codes: 0 after a drain (or a signal before serving), 1 when it cannot start
 * (worker unreachable past the timeout, a missing model, an address that cannot be
 * bound), 2 for bad flags (the message names the flag).
 *
 * Prints "listening on PORT" on stdout once serving (then "metrics on PORT" when
 * --metrics-port is given), so a launcher that passed --listen 127.0.0.1:0 learns the
 * ports. Worker groups: each --group ADDR[,ADDR...] is one data-parallel group whose
 * ranks are the comma-separated addresses (rank 0 first); each --worker ADDR is a
 * group of one rank; both may repeat and mix, in the order given. */
#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "ak_log.h"
#include "co_metrics_http.h"
#include "co_service.h"

#define CO_MAIN_MAX_ADDRS 256 /* worker addresses over all groups */
#define CO_MAIN_RETRY_MS 250  /* between connection attempts at start; a drain slice */

typedef struct {
  co_service_params_t svc;
  char addrs[CO_MAIN_MAX_ADDRS][256];     /* every worker address, group by group */
  const char *rank_ptrs[CO_MAIN_MAX_ADDRS]; /* addrs[i], what groups[] point into */
  int32_t n_addrs;
  co_service_group_t groups[CO_SERVICE_MAX_GROUPS];
  int32_t n_groups;
  int64_t metrics_port;        /* -1: no metrics HTTP server */
  const char *metrics_bind;    /* IPv4 to bind the metrics server to */
  int64_t drain_timeout_ms;
  int64_t connect_timeout_ms;
} co_main_opts_t;

static void usage(FILE *f) {
  co_service_params_t d = co_service_params_default();
  fprintf(f,
          "usage: arkvale-coordinator --model PATH (--worker HOST:PORT | --group HOST:PORT[,HOST:PORT...])... "
          "[options]\n"
          "  --model PATH                 GGUF the workers serve (the tokenizer is read from it; required)\n"
          "  --worker ADDR                a worker group of one rank (repeatable: one group each)\n"
          "  --group ADDR[,ADDR...]       a worker group of several ranks, rank 0 first (repeatable: one\n"
          "                               group each; at least one --worker or --group is required;\n"
          "                               at most %d groups of %d ranks)\n"
          "  --listen ADDR                host:port to serve on (default %s: a free port)\n"
          "  --metrics-port N             serve Prometheus text at http://BIND:N/metrics (0: a free port;\n"
          "                               default: no metrics server)\n"
          "  --metrics-bind IP            IPv4 address of the metrics server (default 127.0.0.1)\n"
          "  --max-queue N                waiting requests before RESOURCE_EXHAUSTED (default %d)\n"
          "  --max-new-tokens N           largest max_new_tokens accepted (default %d)\n"
          "  --default-max-new-tokens N   when a request gives none (default %d)\n"
          "  --max-batch-tokens N         tokens per worker Step (default %d)\n"
          "  --step-deadline-ms N         per worker call (default %" PRId64 ")\n"
          "  --canary-period-ms N         health canary period and revive tries (default %" PRId64 ")\n"
          "  --health-stale-ms N          NOT_SERVING after this long without a worker answer, even\n"
          "                               while a Step hangs (default 0: 3 canary periods, >= 10000)\n"
          "  --rpc-threads N              gRPC completion-queue threads (default %d)\n"
          "  --drain-timeout-ms N         on SIGTERM, how long open streams may run (default 30000)\n"
          "  --connect-timeout-ms N       at start, how long to retry the worker (default 60000)\n",
          CO_SERVICE_MAX_GROUPS, CO_SERVICE_MAX_RANKS, d.listen_addr, d.max_queue, d.max_new_tokens, d.default_max_new_tokens, d.max_batch_tokens,
          d.step_deadline_ms, d.canary_period_ms, d.n_rpc_threads);
}

/* A non-negative integer flag value no larger than hi; -1 (after a message naming the
 * flag) when it is not one. */
static int64_t parse_count(const char *flag, const char *v, int64_t lo, int64_t hi) {
  char *end = NULL;
  errno = 0;
  long long x = strtoll(v, &end, 10);
  if (errno || end == v || *end || x < lo || x > hi) {
    fprintf(stderr, "arkvale-coordinator: %s wants an integer in [%" PRId64 ", %" PRId64 "], got '%s'\n", flag, lo,
            hi, v);
    return -1;
  }
  return (int64_t)x;
}

/* --worker ADDR (one_rank) or --group ADDR[,ADDR...]: one more group. 0, or 2 (bad
 * usage, after a message naming the flag). */
static int parse_group(co_main_opts_t *o, const char *flag, const char *v, int one_rank) {
  if (o->n_groups >= CO_SERVICE_MAX_GROUPS) {
    fprintf(stderr, "arkvale-coordinator: %s: more than %d groups\n", flag, CO_SERVICE_MAX_GROUPS);
    return 2;
  }
  if (one_rank && strchr(v, ',')) {
    fprintf(stderr,
            "arkvale-coordinator: --worker: '%s' is several addresses: give each one-rank group its own --worker, "
            "or the ranks of one group as --group %s\n",
            v, v);
    return 2;
  }
  int32_t first = o->n_addrs, n = 0;
  const char *p = v;
  for (;;) {
    const char *comma = strchr(p, ',');
    size_t len = comma ? (size_t)(comma - p) : strlen(p);
    if (len == 0 || !memchr(p, ':', len)) {
      fprintf(stderr, "arkvale-coordinator: %s: '%.*s' is not HOST:PORT\n", flag, (int)len, p);
      return 2;
    }
    if (len >= sizeof o->addrs[0]) {
      fprintf(stderr, "arkvale-coordinator: %s: an address longer than %zu bytes\n", flag, sizeof o->addrs[0] - 1);
      return 2;
    }
    if (n >= CO_SERVICE_MAX_RANKS || o->n_addrs >= CO_MAIN_MAX_ADDRS) {
      fprintf(stderr, "arkvale-coordinator: %s: more than %d ranks in a group or %d addresses in all\n", flag,
              CO_SERVICE_MAX_RANKS, CO_MAIN_MAX_ADDRS);
      return 2;
    }
    char *a = o->addrs[o->n_addrs];
    memcpy(a, p, len), a[len] = 0;
    for (int32_t i = 0; i < o->n_addrs; i++)
      if (!strcmp(o->addrs[i], a)) {
        fprintf(stderr, "arkvale-coordinator: %s: %s is given twice (a worker serves one rank of one group)\n",
                flag, a);
        return 2;
      }
    o->rank_ptrs[o->n_addrs++] = a;
    n++;
    if (!comma) break;
    p = comma + 1;
  }
  o->groups[o->n_groups].rank_addrs = &o->rank_ptrs[first];
  o->groups[o->n_groups].n_ranks = n;
  o->n_groups++;
  o->svc.groups = o->groups, o->svc.n_groups = o->n_groups;
  return 0;
}

/* Parses argv into *o. Returns -1 to go on, else the exit code (0 after --help). */
static int parse_flags(int argc, char **argv, co_main_opts_t *o) {
  memset(o, 0, sizeof *o);
  o->svc = co_service_params_default();
  o->metrics_port = -1;
  o->metrics_bind = "127.0.0.1";
  o->drain_timeout_ms = 30000;
  o->connect_timeout_ms = 60000;
  for (int i = 1; i < argc; i++) {
    const char *f = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
    if (!strcmp(f, "-h") || !strcmp(f, "--help")) {
      usage(stdout);
      return 0;
    }
    if (strncmp(f, "--", 2)) {
      fprintf(stderr, "arkvale-coordinator: unexpected argument '%s'\n", f);
      usage(stderr);
      return 2;
    }
    if (!v) {
      fprintf(stderr, "arkvale-coordinator: %s needs a value\n", f);
      return 2;
    }
    i++;
    if (!strcmp(f, "--model")) {
      o->svc.model_path = v;
    } else if (!strcmp(f, "--worker") || !strcmp(f, "--group")) {
      if (parse_group(o, f, v, !strcmp(f, "--worker"))) return 2;
    } else if (!strcmp(f, "--listen")) {
      o->svc.listen_addr = v;
    } else if (!strcmp(f, "--metrics-bind")) {
      o->metrics_bind = v;
    } else {
      static const struct {
        const char *flag;
        int64_t lo, hi;
      } nums[] = {
          {"--metrics-port", 0, 65535},        {"--max-queue", 1, 1 << 20},
          {"--max-new-tokens", 1, 1 << 30},    {"--default-max-new-tokens", 1, 1 << 30},
          {"--max-batch-tokens", 3, 1 << 30},  {"--step-deadline-ms", 1, INT64_C(1) << 40},
          {"--canary-period-ms", 1, INT64_C(1) << 40}, {"--rpc-threads", 1, 256},
          {"--drain-timeout-ms", 0, INT64_C(1) << 40}, {"--connect-timeout-ms", 0, INT64_C(1) << 40},
          {"--health-stale-ms", 0, INT64_C(1) << 40},
      };
      size_t k = 0, n = sizeof nums / sizeof nums[0];
      while (k < n && strcmp(f, nums[k].flag)) k++;
      if (k == n) {
        fprintf(stderr, "arkvale-coordinator: unknown flag %s\n", f);
        usage(stderr);
        return 2;
      }
      int64_t x = parse_count(f, v, nums[k].lo, nums[k].hi);
      if (x < 0) return 2;
      switch (k) {
        case 0: o->metrics_port = x; break;
        case 1: o->svc.max_queue = (int32_t)x; break;
        case 2: o->svc.max_new_tokens = (int32_t)x; break;
        case 3: o->svc.default_max_new_tokens = (int32_t)x; break;
        case 4: o->svc.max_batch_tokens = (int32_t)x; break;
        case 5: o->svc.step_deadline_ms = x; break;
        case 6: o->svc.canary_period_ms = x; break;
        case 7: o->svc.n_rpc_threads = (int32_t)x; break;
        case 8: o->drain_timeout_ms = x; break;
        case 9: o->connect_timeout_ms = x; break;
        default: o->svc.health_stale_ms = x; break;
      }
    }
  }
  if (!o->svc.model_path || o->n_groups == 0) {
    fprintf(stderr, "arkvale-coordinator: %s is required\n", !o->svc.model_path ? "--model" : "--worker or --group");
    usage(stderr);
    return 2;
  }
  return -1;
}

static int64_t now_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* co_service_create, retried while the worker cannot be reached (AK_ERR_PEER /
 * AK_ERR_TIMEOUT) until the timeout; a signal in `sigs` ends the wait (*sig_p). */
static ak_status_t start_service(const co_main_opts_t *o, const sigset_t *sigs, ak_err_t *err, int *sig_p,
                                 co_service_t **svc_p) {
  int64_t t0 = now_ms();
  int n_tries = 0;
  for (;;) {
    ak_status_t st = co_service_create(&o->svc, err, svc_p);
    n_tries++;
    if (st == AK_OK) return AK_OK;
    int64_t waited = now_ms() - t0;
    if ((st != AK_ERR_PEER && st != AK_ERR_TIMEOUT) || waited >= o->connect_timeout_ms) {
      if (st == AK_ERR_PEER || st == AK_ERR_TIMEOUT) {
        char last[AK_ERR_MSG_BYTES];
        snprintf(last, sizeof last, "%s", err->msg);
        return ak_err_set(err, st, "a worker unreachable after %d tries over %" PRId64 " ms (--connect-timeout-ms): %s",
                          n_tries, waited, last);
      }
      return st;
    }
    if (n_tries == 1) AK_LOG_INFO("coordinator: workers not ready yet, retrying: %s", err->msg);
    int64_t wait_ms = o->connect_timeout_ms - waited;
    if (wait_ms > CO_MAIN_RETRY_MS) wait_ms = CO_MAIN_RETRY_MS;
    struct timespec ts = {(time_t)(wait_ms / 1000), (long)(wait_ms % 1000) * 1000000L};
    int sig = sigtimedwait(sigs, NULL, &ts);
    if (sig > 0) {
      *sig_p = sig;
      return ak_err_set(err, AK_ERR_CANCELLED, "signal %d before the worker answered", sig);
    }
  }
}

int main(int argc, char **argv) {
  co_main_opts_t o;
  int rc = parse_flags(argc, argv, &o);
  if (rc >= 0) return rc;

  /* Signals are taken by sigwait below: blocked before any thread starts, so every
   * thread inherits the mask and none is interrupted mid-call. */
  sigset_t sigs;
  sigemptyset(&sigs);
  sigaddset(&sigs, SIGTERM);
  sigaddset(&sigs, SIGINT);
  pthread_sigmask(SIG_BLOCK, &sigs, NULL);

  ak_err_t err;
  ak_err_clear(&err);
  co_service_t *svc = NULL;
  int sig = 0;
  ak_status_t st = start_service(&o, &sigs, &err, &sig, &svc);
  if (st == AK_ERR_CANCELLED) {
    AK_LOG_INFO("coordinator: %s: exiting", err.msg);
    return 0;
  }
  if (st < 0) {
    AK_LOG_ERROR("coordinator: cannot start: %s (%s)", err.msg, ak_status_str(st));
    return 1;
  }
  co_metrics_http_t *http = NULL;
  if (o.metrics_port >= 0) {
    st = co_metrics_http_start(co_service_metrics(svc), o.metrics_bind, (uint16_t)o.metrics_port, &err, &http);
    if (st < 0) {
      AK_LOG_ERROR("coordinator: cannot serve metrics on %s:%" PRId64 ": %s (%s)", o.metrics_bind, o.metrics_port,
                   err.msg, ak_status_str(st));
      co_service_destroy(svc);
      return 1;
    }
  }
  printf("listening on %d\n", co_service_port(svc));
  if (http) printf("metrics on %d\n", (int)co_metrics_http_port(http));
  fflush(stdout);
  AK_LOG_INFO("coordinator: port %d, %d worker groups, %d workers (group 0 rank 0: %s)", co_service_port(svc),
              o.n_groups, o.n_addrs, o.addrs[0]);

  sigwait(&sigs, &sig);
  AK_LOG_INFO("coordinator: signal %d: draining (up to %" PRId64 " ms; a second signal stops at once)", sig,
              o.drain_timeout_ms);
  /* The drain in slices, so that a second SIGTERM/SIGINT cuts it short. */
  int32_t n_left = 0;
  int64_t t0 = now_ms();
  for (;;) {
    int64_t left = o.drain_timeout_ms - (now_ms() - t0);
    st = co_service_drain(svc, left < CO_MAIN_RETRY_MS ? left : CO_MAIN_RETRY_MS, &err, &n_left);
    if (st == AK_OK || left <= CO_MAIN_RETRY_MS) break;
    struct timespec zero = {0, 0};
    if ((sig = sigtimedwait(&sigs, NULL, &zero)) > 0) {
      AK_LOG_WARN("coordinator: signal %d: drain cut short with %d requests open", sig, n_left);
      break;
    }
  }
  if (st != AK_OK) AK_LOG_WARN("coordinator: %d requests still open: ending them UNAVAILABLE", n_left);
  co_metrics_http_stop(http);
  co_service_destroy(svc);
  AK_LOG_INFO("coordinator: stopped");
  return 0;
}
