/* arkvale-worker: one worker process, the internal arkvale.v1.Worker service over the
 * in-process engine (wk_service.h). Flags, then serve until SIGTERM or SIGINT, then
 * drain (refuse new work, finish what is queued and running) and exit 0.
 *
 * Prints "listening on PORT" on stdout once serving, so a launcher that passed
 * --listen 127.0.0.1:0 learns the port. */
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ak_log.h"
#include "wk_service.h"

static void usage(FILE *f) {
  fprintf(f,
          "usage: arkvale-worker --model PATH [options]\n"
          "  --model PATH           GGUF weights (required)\n"
          "  --listen ADDR          host:port to serve on (default 127.0.0.1:0: a free port)\n"
          "  --device cpu|cuda[:N]  backend (default cpu)\n"
          "  --kv-policy NAME       full (default), arkvale, streaming, h2o, tova, quest\n"
          "  --kv-budget TOKENS     per budgeted layer and sequence (policies but full)\n"
          "  --page-tokens N        KV page size in tokens (default 32)\n"
          "  --max-seqs N           live sequences (default 16)\n"
          "  --max-seq-tokens N     longest sequence, tokens (default: the model's context)\n"
          "  --max-batch-tokens N   token rows of one step (default 512)\n"
          "  --threads N            compute threads (default: one per CPU)\n"
          "  --rpc-threads N        gRPC completion-queue threads (default 2)\n");
}

/* A non-negative int flag value; -1 when it is not one. */
static long parse_count(const char *flag, const char *v) {
  char *end = NULL;
  errno = 0;
  long x = v ? strtol(v, &end, 10) : -1;
  if (!v || errno || *end || x < 0 || x > 0x7fffffffL) {
    fprintf(stderr, "arkvale-worker: %s wants a non-negative integer, got '%s'\n", flag, v ? v : "");
    return -1;
  }
  return x;
}

int main(int argc, char **argv) {
  wk_service_params_t p = wk_service_params_default();
  for (int i = 1; i < argc; i++) {
    const char *o = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
    long x = 0;
    if (!strcmp(o, "-h") || !strcmp(o, "--help")) {
      usage(stdout);
      return 0;
    }
    if (!v) {
      fprintf(stderr, "arkvale-worker: %s needs a value\n", o);
      return 2;
    }
    i++;
    if (!strcmp(o, "--model")) {
      p.engine.model_path = v;
    } else if (!strcmp(o, "--listen")) {
      p.listen_addr = v;
    } else if (!strcmp(o, "--device")) {
      if (!strcmp(v, "cpu")) {
        p.engine.device = WK_DEVICE_CPU;
      } else if (!strncmp(v, "cuda", 4)) {
        p.engine.device = WK_DEVICE_CUDA;
        p.device_idx = 0;
        if (v[4] == ':' && (x = parse_count("--device cuda:N", v + 5)) >= 0) p.device_idx = (int32_t)x;
        else if (v[4] != '\0') return 2;
        if (p.device_idx != 0) {
          /* The engine runs on the current CUDA device; choosing one is the launcher's
           * (CUDA_VISIBLE_DEVICES) until the engine takes an index. */
          fprintf(stderr, "arkvale-worker: --device %s: use CUDA_VISIBLE_DEVICES=%d and --device cuda\n", v,
                  p.device_idx);
          return 2;
        }
      } else {
        fprintf(stderr, "arkvale-worker: --device wants cpu or cuda[:N], got '%s'\n", v);
        return 2;
      }
    } else if (!strcmp(o, "--kv-policy")) {
      ak_err_t err;
      if (kv_policy_parse(v, &err, &p.kv.policy) < 0) {
        fprintf(stderr, "arkvale-worker: --kv-policy: %s\n", err.msg);
        return 2;
      }
    } else {
      static const char *const counts[] = {"--kv-budget", "--page-tokens", "--max-seqs", "--max-seq-tokens",
                                           "--max-batch-tokens", "--threads", "--rpc-threads"};
      int32_t *dst[] = {&p.kv.budget_tokens, &p.engine.page_tokens, &p.engine.max_seqs, &p.engine.max_seq_tokens,
                        &p.engine.max_batch_tokens, &p.engine.n_threads, &p.n_rpc_threads};
      size_t k = 0;
      while (k < sizeof counts / sizeof counts[0] && strcmp(o, counts[k])) k++;
      if (k == sizeof counts / sizeof counts[0]) {
        fprintf(stderr, "arkvale-worker: unknown flag %s\n", o);
        usage(stderr);
        return 2;
      }
      if ((x = parse_count(o, v)) < 0) return 2;
      *dst[k] = (int32_t)x;
    }
  }
  if (!p.engine.model_path) {
    fprintf(stderr, "arkvale-worker: --model is required\n");
    usage(stderr);
    return 2;
  }

  /* Signals are taken by sigwait below: blocked before any thread starts, so every
   * thread inherits the mask and none is interrupted mid-call. */
  sigset_t sigs;
  sigemptyset(&sigs);
  sigaddset(&sigs, SIGTERM);
  sigaddset(&sigs, SIGINT);
  pthread_sigmask(SIG_BLOCK, &sigs, NULL);

  ak_err_t err;
  ak_err_clear(&err);
  wk_service_t *svc = NULL;
  ak_status_t st = wk_service_create(&p, &err, &svc);
  if (st < 0) {
    AK_LOG_ERROR("rank 0: cannot start: %s (%s)", err.msg, ak_status_str(st));
    return 1;
  }
  printf("listening on %d\n", wk_service_port(svc));
  fflush(stdout);

  int sig = 0;
  sigwait(&sigs, &sig);
  AK_LOG_INFO("rank 0: signal %d: draining", sig);
  wk_service_destroy(svc);
  return 0;
}
