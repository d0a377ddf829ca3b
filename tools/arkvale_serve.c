/* arkvale serve: the local launcher. Starts `workers` arkvale-worker processes (CPU by
 * default; default 1), each a data-parallel group of one rank, and one
 * arkvale-coordinator (--worker per worker) as child processes, configured from a JSON file (cJSON;
 * deploy/local/arkvale.json, every key in deploy/local/README.md) with flags overriding
 * it; waits until the coordinator's grpc.health.v1 Check answers SERVING and prints
 * "serving on HOST:PORT"; on SIGTERM or SIGINT stops the coordinator first (it drains
 * its streams), then the workers, and exits 0 when all stopped cleanly. A child that
 * dies on its own stops the others and the launcher exits 1 (the coordinator would
 * serve on with the other groups, but restarting a worker is a supervisor's job).
 * With workers > 1 the worker listen port must be 0 (each picks a free one), and a
 * device of "cuda" gives worker i cuda:i.
 *
 * Not for: groups of several ranks (tensor parallelism is a later issue), restarts of
 * a dead child (a supervisor's job: systemd, Kubernetes). */
#include <errno.h>
#include <inttypes.h>
#include <libgen.h>
#include <limits.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <cJSON.h>

#include "ak_log.h"
#include "ak_rpc_client.h"
#include "arkvale_cli.h"
#include "grpc/health/v1/health.pb-c.h"
#include "pb_buf.h"

#define SV_CFG_MAX_BYTES (1 << 20)
#define SV_LINE_BYTES 256
#define SV_MAX_WORKERS 64

/* One setting: where it sits in the file (section "" = top level), its flag
 * ("--" + section + "-" + key, '_' as '-'), and the child flag it becomes. */
typedef enum { SV_STR, SV_INT } sv_type_t;
typedef enum { SV_TO_SERVE, SV_TO_WORKER, SV_TO_COORD, SV_TO_BOTH } sv_to_t;
typedef struct {
  const char *section, *key;
  sv_type_t type;
  sv_to_t to;
  const char *child_flag; /* NULL for the launcher's own settings */
  const char *dflt;       /* NULL: not passed unless set */
} sv_setting_t;

static const sv_setting_t sv_settings[] = {
    {"", "model", SV_STR, SV_TO_BOTH, "--model", NULL},
    {"", "listen", SV_STR, SV_TO_COORD, "--listen", "127.0.0.1:50051"},
    {"", "metrics_port", SV_INT, SV_TO_COORD, "--metrics-port", NULL},
    {"", "metrics_bind", SV_STR, SV_TO_COORD, "--metrics-bind", NULL},
    {"", "bin_dir", SV_STR, SV_TO_SERVE, NULL, NULL},
    {"", "startup_timeout_ms", SV_INT, SV_TO_SERVE, NULL, "120000"},
    {"", "workers", SV_INT, SV_TO_SERVE, NULL, "1"},
    {"worker", "listen", SV_STR, SV_TO_WORKER, "--listen", "127.0.0.1:0"},
    {"worker", "device", SV_STR, SV_TO_WORKER, "--device", NULL},
    {"worker", "threads", SV_INT, SV_TO_WORKER, "--threads", NULL},
    {"worker", "max_seqs", SV_INT, SV_TO_WORKER, "--max-seqs", NULL},
    {"worker", "max_seq_tokens", SV_INT, SV_TO_WORKER, "--max-seq-tokens", NULL},
    {"worker", "max_batch_tokens", SV_INT, SV_TO_WORKER, "--max-batch-tokens", NULL},
    {"worker", "page_tokens", SV_INT, SV_TO_WORKER, "--page-tokens", NULL},
    {"worker", "kv_policy", SV_STR, SV_TO_WORKER, "--kv-policy", NULL},
    {"worker", "kv_budget", SV_INT, SV_TO_WORKER, "--kv-budget", NULL},
    {"worker", "rpc_threads", SV_INT, SV_TO_WORKER, "--rpc-threads", NULL},
    {"coordinator", "max_queue", SV_INT, SV_TO_COORD, "--max-queue", NULL},
    {"coordinator", "max_new_tokens", SV_INT, SV_TO_COORD, "--max-new-tokens", NULL},
    {"coordinator", "default_max_new_tokens", SV_INT, SV_TO_COORD, "--default-max-new-tokens", NULL},
    {"coordinator", "max_batch_tokens", SV_INT, SV_TO_COORD, "--max-batch-tokens", NULL},
    {"coordinator", "step_deadline_ms", SV_INT, SV_TO_COORD, "--step-deadline-ms", NULL},
    {"coordinator", "canary_period_ms", SV_INT, SV_TO_COORD, "--canary-period-ms", NULL},
    {"coordinator", "health_stale_ms", SV_INT, SV_TO_COORD, "--health-stale-ms", NULL},
    {"coordinator", "rpc_threads", SV_INT, SV_TO_COORD, "--rpc-threads", NULL},
    {"coordinator", "drain_timeout_ms", SV_INT, SV_TO_COORD, "--drain-timeout-ms", "30000"},
    {"coordinator", "connect_timeout_ms", SV_INT, SV_TO_COORD, "--connect-timeout-ms", NULL},
};
#define SV_N_SETTINGS (sizeof sv_settings / sizeof sv_settings[0])

typedef struct {
  char *val[SV_N_SETTINGS]; /* malloc'd text of each setting, NULL when unset */
} sv_cfg_t;

static void sv_cfg_free(sv_cfg_t *c) {
  for (size_t i = 0; i < SV_N_SETTINGS; i++) free(c->val[i]), c->val[i] = NULL;
}

static int sv_find(const char *section, const char *key) {
  for (size_t i = 0; i < SV_N_SETTINGS; i++)
    if (!strcmp(sv_settings[i].section, section) && !strcmp(sv_settings[i].key, key)) return (int)i;
  return -1;
}

static const char *sv_get(const sv_cfg_t *c, const char *section, const char *key) {
  int i = sv_find(section, key);
  return i < 0 ? NULL : c->val[i] ? c->val[i] : sv_settings[i].dflt;
}

static void sv_flag_name(const sv_setting_t *s, char *out, size_t n) {
  snprintf(out, n, "--%s%s%s", s->section, *s->section ? "-" : "", s->key);
  for (char *p = out + 2; *p; p++)
    if (*p == '_') *p = '-';
}

/* Stores text for setting i after checking its type; `where` names the source in the
 * message (the flag, or "FILE: worker.threads"). */
static int sv_set(sv_cfg_t *c, int i, const char *text, const char *where) {
  if (sv_settings[i].type == SV_INT) {
    char *end = NULL;
    errno = 0;
    long long x = strtoll(text, &end, 10);
    if (errno || end == text || *end || x < 0 || x > INT32_MAX) {
      fprintf(stderr, "arkvale serve: %s wants a non-negative integer, got '%s'\n", where, text);
      return -1;
    }
  }
  char *dup = strdup(text);
  if (!dup) {
    fprintf(stderr, "arkvale serve: out of memory\n");
    return -1;
  }
  free(c->val[i]);
  c->val[i] = dup;
  return 0;
}

/* One JSON member of `section` into the settings. */
static int sv_load_item(sv_cfg_t *c, const char *path, const char *section, const cJSON *it) {
  char where[SV_LINE_BYTES];
  snprintf(where, sizeof where, "%s: %s%s%s", path, section, *section ? "." : "", it->string);
  int i = sv_find(section, it->string);
  if (i < 0) {
    fprintf(stderr, "arkvale serve: %s: unknown key (deploy/local/README.md lists them)\n", where);
    return -1;
  }
  char num[32];
  if (sv_settings[i].type == SV_INT) {
    if (!cJSON_IsNumber(it) || it->valuedouble != (double)(long long)it->valuedouble) {
      fprintf(stderr, "arkvale serve: %s: wants an integer\n", where);
      return -1;
    }
    snprintf(num, sizeof num, "%lld", (long long)it->valuedouble);
    return sv_set(c, i, num, where);
  }
  if (!cJSON_IsString(it)) {
    fprintf(stderr, "arkvale serve: %s: wants a string\n", where);
    return -1;
  }
  return sv_set(c, i, it->valuestring, where);
}

/* The config file into *c: a JSON object of top-level settings and "worker" /
 * "coordinator" objects. Unknown keys and wrong types are refused by name. */
static int sv_load_file(sv_cfg_t *c, const char *path) {
  FILE *f = fopen(path, "rb");
  if (!f) {
    fprintf(stderr, "arkvale serve: --config %s: %s\n", path, strerror(errno));
    return -1;
  }
  char *text = malloc(SV_CFG_MAX_BYTES + 1);
  size_t n = text ? fread(text, 1, SV_CFG_MAX_BYTES + 1, f) : 0;
  fclose(f);
  if (!text || n > SV_CFG_MAX_BYTES) {
    fprintf(stderr, "arkvale serve: --config %s: %s\n", path, text ? "larger than 1 MiB" : "out of memory");
    free(text);
    return -1;
  }
  text[n] = 0;
  const char *bad = NULL;
  cJSON *root = cJSON_ParseWithOpts(text, &bad, 1);
  if (!root || !cJSON_IsObject(root)) {
    int line = 1;
    for (const char *p = text; bad && p < bad && *p; p++) line += *p == '\n';
    fprintf(stderr, "arkvale serve: --config %s: %s at line %d\n", path,
            root ? "not a JSON object" : "malformed JSON", root ? 1 : line);
    cJSON_Delete(root);
    free(text);
    return -1;
  }
  int rc = 0;
  const cJSON *it;
  cJSON_ArrayForEach(it, root) {
    if (rc) break;
    if (!strcmp(it->string, "worker") || !strcmp(it->string, "coordinator")) {
      if (!cJSON_IsObject(it)) {
        fprintf(stderr, "arkvale serve: %s: %s: wants an object\n", path, it->string);
        rc = -1;
        break;
      }
      const cJSON *sub;
      cJSON_ArrayForEach(sub, it) if (!rc && sv_load_item(c, path, it->string, sub)) rc = -1;
    } else if (sv_load_item(c, path, "", it)) {
      rc = -1;
    }
  }
  cJSON_Delete(root);
  free(text);
  return rc;
}

static void sv_usage(FILE *f) {
  fprintf(f,
          "usage: arkvale serve [--config FILE] [--SETTING VALUE ...]\n"
          "Starts `workers` arkvale-worker processes (one group each) and arkvale-coordinator, prints \"serving on HOST:PORT\" once\n"
          "grpc.health.v1 answers SERVING; SIGTERM/SIGINT stops both (the coordinator drains).\n"
          "  --config FILE   JSON settings (deploy/local/arkvale.json); flags override it\n"
          "settings (file key -> flag):\n");
  for (size_t i = 0; i < SV_N_SETTINGS; i++) {
    char flag[64];
    sv_flag_name(&sv_settings[i], flag, sizeof flag);
    fprintf(f, "  %s%s%-24s %-32s %s%s\n", sv_settings[i].section, *sv_settings[i].section ? "." : "",
            sv_settings[i].key, flag, sv_settings[i].dflt ? "default " : "",
            sv_settings[i].dflt ? sv_settings[i].dflt : "");
  }
}

/* --- children --- */

typedef struct {
  const char *name;
  pid_t pid;
  int out_fd;     /* its stdout (kept open: closing it would SIGPIPE a late print) */
  char buf[1024]; /* what was read and not yet consumed as lines */
  size_t n_buf;
  int exited, code;
} sv_child_t;

/* The binary `name`: in bin_dir if given, else beside this executable, else in the
 * build tree's layout (tools/ -> ../worker, ../coordinator), else from PATH. */
static void sv_find_bin(const char *bin_dir, const char *name, const char *build_sub, char *out, size_t n) {
  if (bin_dir) {
    snprintf(out, n, "%s/%s", bin_dir, name);
    return;
  }
  char self[PATH_MAX];
  ssize_t len = readlink("/proc/self/exe", self, sizeof self - 1);
  if (len > 0) {
    self[len] = 0;
    char *dir = dirname(self);
    snprintf(out, n, "%s/%s", dir, name);
    if (access(out, X_OK) == 0) return;
    snprintf(out, n, "%s/../%s/%s", dir, build_sub, name);
    if (access(out, X_OK) == 0) return;
  }
  snprintf(out, n, "%s", name); /* execvp searches PATH */
}

static int sv_spawn(sv_child_t *ch, const char *bin, char **argv) {
  int fds[2];
  if (pipe(fds) != 0) {
    fprintf(stderr, "arkvale serve: pipe for %s: %s\n", ch->name, strerror(errno));
    return -1;
  }
  pid_t parent = getpid();
  pid_t pid = fork();
  if (pid < 0) {
    fprintf(stderr, "arkvale serve: fork for %s: %s\n", ch->name, strerror(errno));
    close(fds[0]), close(fds[1]);
    return -1;
  }
  if (pid == 0) {
    sigset_t none;
    sigemptyset(&none);
    sigprocmask(SIG_SETMASK, &none, NULL); /* the child takes its own signals */
    /* Its own process group: a terminal's Ctrl-C reaches the launcher only, which
     * stops the coordinator before the worker (both at once would fail the streams
     * the coordinator is draining). A launcher killed with -9 leaves no orphans: the
     * child gets SIGTERM (a drain). */
    setpgid(0, 0);
    prctl(PR_SET_PDEATHSIG, SIGTERM);
    if (getppid() != parent) _exit(1);
    dup2(fds[1], 1);
    close(fds[0]), close(fds[1]);
    execvp(bin, argv);
    fprintf(stderr, "arkvale serve: cannot run %s: %s\n", bin, strerror(errno));
    _exit(127);
  }
  close(fds[1]);
  ch->pid = pid, ch->out_fd = fds[0], ch->n_buf = 0, ch->exited = 0, ch->code = 0;
  return 0;
}

static int sv_reap(sv_child_t *ch, int block);

/* Reaps every child of ch[n] that exited; 1 when one has. */
static int sv_reap_any(sv_child_t *ch, int n) {
  int any = 0;
  for (int i = 0; i < n; i++) any |= sv_reap(&ch[i], 0);
  return any;
}

/* Reaps the child if it exited; 1 when it has. */
static int sv_reap(sv_child_t *ch, int block) {
  if (ch->exited || ch->pid <= 0) return 1;
  int status = 0;
  pid_t r = waitpid(ch->pid, &status, block ? 0 : WNOHANG);
  if (r != ch->pid) return 0;
  ch->exited = 1;
  ch->code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
  return 1;
}

static int64_t sv_now_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* Reads the child's stdout until a line "<key> N"; N, or -1 (it exited, or timeout). */
static int sv_wait_port(sv_child_t *ch, const char *key, int64_t timeout_ms) {
  int64_t end = sv_now_ms() + timeout_ms;
  size_t klen = strlen(key);
  for (;;) {
    char *nl;
    while ((nl = memchr(ch->buf, '\n', ch->n_buf))) {
      *nl = 0;
      int port = -1;
      if (!strncmp(ch->buf, key, klen)) port = atoi(ch->buf + klen);
      size_t used = (size_t)(nl - ch->buf) + 1;
      memmove(ch->buf, nl + 1, ch->n_buf - used);
      ch->n_buf -= used;
      if (port > 0) return port;
    }
    int64_t left = end - sv_now_ms();
    if (left <= 0) return -1;
    struct pollfd p = {ch->out_fd, POLLIN, 0};
    if (poll(&p, 1, left > 200 ? 200 : (int)left) <= 0) {
      if (sv_reap(ch, 0)) return -1;
      continue;
    }
    if (ch->n_buf == sizeof ch->buf) ch->n_buf = 0; /* a line too long to be ours */
    ssize_t n = read(ch->out_fd, ch->buf + ch->n_buf, sizeof ch->buf - ch->n_buf);
    if (n <= 0) return -1;
    ch->n_buf += (size_t)n;
  }
}

/* SIGTERM, then up to timeout_ms, then SIGKILL. A SIGTERM/SIGINT to the launcher
 * meanwhile is passed on (a second one cuts the coordinator's drain short). Its exit
 * code. */
static int sv_stop(sv_child_t *ch, int64_t timeout_ms, const sigset_t *sigs) {
  if (ch->pid <= 0) return 0;
  if (!sv_reap(ch, 0)) {
    kill(ch->pid, SIGTERM);
    for (int64_t end = sv_now_ms() + timeout_ms; !sv_reap(ch, 0) && sv_now_ms() < end;) {
      struct timespec ts = {0, 10 * 1000000L};
      int sig = sigtimedwait(sigs, NULL, &ts);
      if (sig == SIGTERM || sig == SIGINT) kill(ch->pid, SIGTERM);
    }
    if (!ch->exited) {
      fprintf(stderr, "arkvale serve: %s (pid %d) did not stop in %" PRId64 " ms: killing it\n", ch->name,
              (int)ch->pid, timeout_ms);
      kill(ch->pid, SIGKILL);
      sv_reap(ch, 1);
    }
  }
  if (ch->out_fd >= 0) close(ch->out_fd), ch->out_fd = -1;
  return ch->code;
}

/* grpc.health.v1 Check("") against target: the status, or -1 when the call failed. */
static int sv_health(ak_rpc_client_t *cli) {
  Grpc__Health__V1__HealthCheckRequest q = GRPC__HEALTH__V1__HEALTH_CHECK_REQUEST__INIT;
  q.service = "";
  ak_err_t err;
  ProtobufCMessage *r = NULL;
  if (ak_rpc_client_unary(cli, "/grpc.health.v1.Health/Check", &q.base,
                          &grpc__health__v1__health_check_response__descriptor, 1 << 16, 2000, &err, NULL,
                          &r) != AK_OK)
    return -1;
  int st = (int)((const Grpc__Health__V1__HealthCheckResponse *)r)->status;
  pb_msg_free(r);
  return st;
}

/* The host to dial for a listen address: a wildcard becomes loopback. */
static void sv_dial_host(const char *listen, char *out, size_t n) {
  const char *colon = strrchr(listen, ':');
  size_t len = colon ? (size_t)(colon - listen) : strlen(listen);
  if (len == 0 || (len == 7 && !strncmp(listen, "0.0.0.0", 7)) || (len == 4 && !strncmp(listen, "[::]", 4)))
    snprintf(out, n, "127.0.0.1");
  else snprintf(out, n, "%.*s", (int)len, listen);
}

/* argv for one child: its binary, then every setting that goes to it and is set. */
static char **sv_child_argv(const sv_cfg_t *c, sv_to_t to, const char *bin, const char *const *extra,
                            int n_extra_pairs) {
  char **argv = calloc(2 * SV_N_SETTINGS + 2 * (size_t)n_extra_pairs + 2, sizeof *argv);
  if (!argv) return NULL;
  int n = 0;
  argv[n++] = (char *)bin;
  for (size_t i = 0; i < SV_N_SETTINGS; i++) {
    const sv_setting_t *s = &sv_settings[i];
    const char *v = c->val[i] ? c->val[i] : s->dflt;
    if (!v || !s->child_flag || (s->to != to && s->to != SV_TO_BOTH)) continue;
    argv[n++] = (char *)s->child_flag, argv[n++] = (char *)v;
  }
  for (int i = 0; i < 2 * n_extra_pairs; i++) argv[n++] = (char *)extra[i];
  return argv;
}

/* Parses flags over the config file. Returns -1 to go on, else an exit code. */
static int sv_parse(int argc, char **argv, sv_cfg_t *c) {
  for (int i = 1; i < argc; i++)
    if (!strcmp(argv[i], "--config")) {
      if (i + 1 >= argc) {
        fprintf(stderr, "arkvale serve: --config needs a value\n");
        return 2;
      }
      if (sv_load_file(c, argv[i + 1])) return 2;
    }
  for (int i = 1; i < argc; i++) {
    const char *f = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
    if (!strcmp(f, "-h") || !strcmp(f, "--help")) {
      sv_usage(stdout);
      return 0;
    }
    if (!v) {
      fprintf(stderr, "arkvale serve: %s needs a value\n", f);
      return 2;
    }
    i++;
    if (!strcmp(f, "--config")) continue;
    size_t k = 0;
    char flag[64];
    for (; k < SV_N_SETTINGS; k++) {
      sv_flag_name(&sv_settings[k], flag, sizeof flag);
      if (!strcmp(flag, f)) break;
    }
    if (k == SV_N_SETTINGS) {
      fprintf(stderr, "arkvale serve: unknown flag %s\n", f);
      sv_usage(stderr);
      return 2;
    }
    if (sv_set(c, (int)k, v, f)) return 2;
  }
  if (!sv_get(c, "", "model")) {
    fprintf(stderr, "arkvale serve: no model: give --model PATH or \"model\" in the config file\n");
    return 2;
  }
  return -1;
}

int ak_cli_serve(int argc, char **argv) {
  sv_cfg_t cfg = {0};
  int rc = sv_parse(argc, argv, &cfg);
  if (rc >= 0) {
    sv_cfg_free(&cfg);
    return rc;
  }
  const char *bin_dir = sv_get(&cfg, "", "bin_dir");
  int64_t startup_ms = atoll(sv_get(&cfg, "", "startup_timeout_ms"));
  int64_t drain_ms = atoll(sv_get(&cfg, "coordinator", "drain_timeout_ms"));
  int n_workers = atoi(sv_get(&cfg, "", "workers"));
  if (n_workers < 1 || n_workers > SV_MAX_WORKERS) {
    fprintf(stderr, "arkvale serve: workers: %d is outside 1..%d\n", n_workers, SV_MAX_WORKERS);
    sv_cfg_free(&cfg);
    return 2;
  }
  {
    const char *wl = sv_get(&cfg, "worker", "listen");
    const char *colon = strrchr(wl, ':');
    if (n_workers > 1 && (!colon || strcmp(colon, ":0"))) {
      fprintf(stderr, "arkvale serve: workers: %d workers cannot share worker.listen %s: give port 0\n", n_workers,
              wl);
      sv_cfg_free(&cfg);
      return 2;
    }
  }
  char wbin[PATH_MAX], cbin[PATH_MAX];
  sv_find_bin(bin_dir, "arkvale-worker", "worker", wbin, sizeof wbin);
  sv_find_bin(bin_dir, "arkvale-coordinator", "coordinator", cbin, sizeof cbin);

  /* Signals wait for sigtimedwait below; children get an empty mask (sv_spawn). */
  sigset_t sigs;
  sigemptyset(&sigs);
  sigaddset(&sigs, SIGTERM);
  sigaddset(&sigs, SIGINT);
  sigaddset(&sigs, SIGCHLD);
  sigprocmask(SIG_BLOCK, &sigs, NULL);

  sv_child_t workers[SV_MAX_WORKERS];
  for (int i = 0; i < n_workers; i++) workers[i] = (sv_child_t){.name = "arkvale-worker", .pid = -1, .out_fd = -1};
  sv_child_t coord = {.name = "arkvale-coordinator", .pid = -1, .out_fd = -1};
  ak_rpc_client_t *cli = NULL;
  char **wargv = sv_child_argv(&cfg, SV_TO_WORKER, wbin, NULL, 0);
  char **cargv = NULL;
  char(*waddrs)[SV_LINE_BYTES + 16] = calloc((size_t)n_workers, sizeof *waddrs);
  const char *cextra[2 * SV_MAX_WORKERS];
  char caddr[SV_LINE_BYTES + 16], host[SV_LINE_BYTES], dev[32];
  rc = 1;
  if (!wargv || !waddrs) {
    fprintf(stderr, "arkvale serve: out of memory\n");
    goto out;
  }
  int dev_idx = -1; /* wargv's --device value when it is "cuda": worker i gets cuda:i */
  for (int k = 1; wargv[k]; k++)
    if (!strcmp(wargv[k], "--device") && wargv[k + 1] && !strcmp(wargv[k + 1], "cuda")) dev_idx = k + 1;
  /* Started one after the other: each loads the model, and two at once would only
   * share the same cores. */
  for (int i = 0; i < n_workers; i++) {
    if (dev_idx > 0 && n_workers > 1) {
      snprintf(dev, sizeof dev, "cuda:%d", i);
      wargv[dev_idx] = dev; /* the child has its copy once forked */
    }
    if (sv_spawn(&workers[i], wbin, wargv)) goto out;
    int wport = sv_wait_port(&workers[i], "listening on ", startup_ms);
    if (wport < 0) {
      fprintf(stderr, "arkvale serve: %s %d (%s) did not start (%s)\n", workers[i].name, i, wbin,
              workers[i].exited ? "it exited" : "no port printed in time");
      goto out;
    }
    sv_dial_host(sv_get(&cfg, "worker", "listen"), host, sizeof host);
    snprintf(waddrs[i], sizeof waddrs[i], "%s:%d", host, wport);
    cextra[2 * i] = "--worker", cextra[2 * i + 1] = waddrs[i];
  }
  cargv = sv_child_argv(&cfg, SV_TO_COORD, cbin, cextra, n_workers);
  if (!cargv || sv_spawn(&coord, cbin, cargv)) goto out;
  int cport = sv_wait_port(&coord, "listening on ", startup_ms);
  if (cport < 0) {
    fprintf(stderr, "arkvale serve: %s (%s) did not start (%s)\n", coord.name, cbin,
            coord.exited ? "it exited" : "no port printed in time");
    goto out;
  }
  int mport = sv_get(&cfg, "", "metrics_port") ? sv_wait_port(&coord, "metrics on ", 5000) : -1;
  sv_dial_host(sv_get(&cfg, "", "listen"), host, sizeof host);
  snprintf(caddr, sizeof caddr, "%s:%d", host, cport);
  ak_err_t err;
  if (ak_rpc_client_create(caddr, &err, &cli) != AK_OK) {
    fprintf(stderr, "arkvale serve: %s\n", err.msg);
    goto out;
  }
  int serving = 0, sig = 0;
  for (int64_t end = sv_now_ms() + startup_ms; !serving && sv_now_ms() < end;) {
    serving = sv_health(cli) == GRPC__HEALTH__V1__HEALTH_CHECK_RESPONSE__SERVING_STATUS__SERVING;
    if (serving) break;
    struct timespec ts = {0, 100 * 1000000L};
    sig = sigtimedwait(&sigs, NULL, &ts);
    if (sig == SIGTERM || sig == SIGINT) break;
    if (sv_reap_any(workers, n_workers) || sv_reap(&coord, 0)) break;
  }
  if (!serving) {
    if (sig == SIGTERM || sig == SIGINT) rc = 0;
    else
      fprintf(stderr, "arkvale serve: %s never answered SERVING within %" PRId64 " ms%s\n", caddr, startup_ms,
              sv_reap_any(workers, n_workers) || coord.exited ? " (a child exited)" : "");
    goto out;
  }
  printf("serving on %s (", caddr);
  for (int i = 0; i < n_workers; i++) printf("worker %s pid %d, ", waddrs[i], (int)workers[i].pid);
  printf("coordinator pid %d", (int)coord.pid);
  if (mport > 0) printf(", metrics http://%s:%d/metrics", sv_get(&cfg, "", "metrics_bind") ? sv_get(&cfg, "", "metrics_bind") : "127.0.0.1", mport);
  printf(")\n");
  fflush(stdout);

  for (;;) {
    sig = sigwaitinfo(&sigs, NULL);
    if (sig == SIGTERM || sig == SIGINT) {
      fprintf(stderr, "arkvale serve: signal %d: stopping the coordinator (drain up to %" PRId64
                      " ms), then the workers\n", sig, drain_ms);
      rc = 0;
      break;
    }
    if (sig == SIGCHLD && (sv_reap_any(workers, n_workers) || sv_reap(&coord, 0))) {
      sv_child_t *dead = &coord;
      for (int i = 0; i < n_workers; i++)
        if (workers[i].exited) dead = &workers[i];
      fprintf(stderr, "arkvale serve: %s (pid %d) exited with %d: stopping\n", dead->name, (int)dead->pid,
              dead->code);
      break;
    }
  }

out:
  ak_rpc_client_destroy(cli);
  {
    int cc = sv_stop(&coord, drain_ms + 10000, &sigs);
    for (int i = 0; i < n_workers; i++)
      if (workers[i].pid > 0) kill(workers[i].pid, SIGTERM); /* all drain at once */
    for (int i = 0; i < n_workers; i++) {
      int wc = sv_stop(&workers[i], 30000, &sigs);
      if (rc == 0 && (cc != 0 || wc != 0)) {
        fprintf(stderr, "arkvale serve: children exited with %d (coordinator) and %d (worker %d)\n", cc, wc, i);
        rc = 1;
      }
    }
  }
  free(wargv);
  free(cargv);
  free(waddrs);
  sv_cfg_free(&cfg);
  return rc;
}
