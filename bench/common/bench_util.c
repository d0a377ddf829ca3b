/* bench_util: helpers shared by the ArkVale benchmarks (bench_util.h). */
#include "bench_util.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

double bench_now_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

const char *const bench_default_texts[] = {
    "../shared/ARKVALE.md", "../shared/ARKVALE-REFERENCE.md", "../shared/DESIGN.md",
    "../shared/STYLE.md",   "../shared/TOOLCHAIN.md",         "README.md",
    "bench/README.md",      "bench/kernels/README.md",        "tests/reference/README.md",
};
const int bench_n_default_texts = (int)(sizeof bench_default_texts / sizeof bench_default_texts[0]);

/* Appends a whole file and a blank line to *buf. 0 ok, -1 unreadable. */
static int bench_append_file(const char *path, char **buf, size_t *len) {
  FILE *f = fopen(path, "rb");
  if (!f) return -1;
  char chunk[65536];
  size_t n;
  while ((n = fread(chunk, 1, sizeof chunk, f)) > 0) {
    char *nb = realloc(*buf, *len + n + 3);
    if (!nb) {
      fclose(f);
      return -1;
    }
    *buf = nb;
    memcpy(*buf + *len, chunk, n);
    *len += n;
  }
  int bad = ferror(f);
  fclose(f);
  if (bad) return -1;
  char *nb = realloc(*buf, *len + 3);
  if (!nb) return -1;
  *buf = nb;
  memcpy(*buf + *len, "\n\n", 2);
  *len += 2;
  return 0;
}

int bench_text_tokens(const char *prog, const char *const *texts, int n_texts, const co_tokenizer_t *tok,
                      int64_t n_want, int32_t *ids, int64_t *n_text_tokens_p, char *used, size_t used_bytes) {
  char *text = NULL;
  size_t len = 0;
  used[0] = 0;
  int n = n_texts ? n_texts : bench_n_default_texts;
  for (int i = 0; i < n; i++) {
    const char *path = n_texts ? texts[i] : bench_default_texts[i];
    if (bench_append_file(path, &text, &len) < 0) {
      if (n_texts) {
        fprintf(stderr, "%s: --text %s: cannot read it\n", prog, path);
        free(text);
        return 2;
      }
      fprintf(stderr, "%s: default text %s is missing; skipped\n", prog, path);
      continue;
    }
    size_t u = strlen(used);
    snprintf(used + u, used_bytes - u, "%s%s", u ? ", " : "", path);
  }
  if (len == 0) {
    fprintf(stderr, "%s: no text (give --text FILE)\n", prog);
    free(text);
    return n_texts ? 2 : 1;
  }
  int64_t cap = (int64_t)len + 16, n_ids = 0; /* byte-level BPE: at most one token a byte */
  int32_t *all = malloc(sizeof(int32_t) * (size_t)cap);
  ak_err_t err;
  ak_err_clear(&err);
  if (!all || co_tokenizer_encode(tok, text, len, 1, 0, all, cap, &n_ids, &err) < 0 || n_ids < 1) {
    fprintf(stderr, "%s: tokenize: %s\n", prog, all ? err.msg : "out of memory");
    free(all);
    free(text);
    return 1;
  }
  for (int64_t i = 0; i < n_want; i++) ids[i] = all[i % n_ids];
  *n_text_tokens_p = n_ids;
  free(all);
  free(text);
  return 0;
}

void bench_cmd_field(const char *cmd, const char *key, char *out, size_t out_bytes) {
  snprintf(out, out_bytes, "unknown");
  FILE *p = popen(cmd, "r");
  if (!p) return;
  char line[512];
  size_t kl = strlen(key);
  while (fgets(line, sizeof line, p)) {
    if (strncmp(line, key, kl)) continue;
    char *v = line + kl;
    while (*v == ' ' || *v == '\t' || *v == ':') v++;
    v[strcspn(v, "\n")] = 0;
    snprintf(out, out_bytes, "%s", v);
    break;
  }
  pclose(p);
}

int bench_default_out(const char *prog, const char *name, const char *date, char *out, size_t out_bytes) {
  struct stat st;
  /* Also tells GCC (with -fsanitize=address) that `out` is not NULL in the loop below. */
  if (!out || out_bytes == 0) return -1;
  if (stat("bench/results", &st) != 0 || !S_ISDIR(st.st_mode)) {
    fprintf(stderr, "%s: bench/results/ not found: run from the repository root or give --out\n", prog);
    return -1;
  }
  for (int i = 1; i < 1000; i++) {
    if (i == 1) snprintf(out, out_bytes, "bench/results/%s-%s.md", name, date);
    else snprintf(out, out_bytes, "bench/results/%s-%s-%d.md", name, date, i);
    if (stat(out, &st) != 0) return 0;
  }
  return -1;
}

/* The install tree's commit ("commit: " in DIR/MANIFEST.txt for DIR/bin/exe), or "". */
static void bench_manifest_commit(const char *exe_path, char *out, size_t out_bytes) {
  out[0] = 0;
  char path[1024];
  snprintf(path, sizeof path, "%s", exe_path);
  for (int up = 0; up < 2; up++) { /* drop the file name, then bin/ */
    char *slash = strrchr(path, '/');
    if (!slash) return;
    *slash = 0;
  }
  if (strlen(path) + sizeof "/MANIFEST.txt" > sizeof path) return;
  strcat(path, "/MANIFEST.txt");
  FILE *f = fopen(path, "r");
  if (!f) return;
  char line[512];
  while (fgets(line, sizeof line, f))
    if (!strncmp(line, "commit: ", 8)) {
      line[strcspn(line, "\n")] = 0;
      snprintf(out, out_bytes, "%.64s (from the install tree's MANIFEST.txt)", line + 8);
      break;
    }
  fclose(f);
}

void bench_commit_of(const char *exe_path, char *out, size_t out_bytes) {
  bench_manifest_commit(exe_path, out, out_bytes);
  if (out[0]) return;
  snprintf(out, out_bytes, "unknown");
  FILE *p = popen("git rev-parse --short HEAD 2>/dev/null && git status --porcelain --untracked-files=no 2>/dev/null "
                  "| head -n 1", "r");
  if (!p) return;
  char line[128];
  if (fgets(line, sizeof line, p)) {
    line[strcspn(line, "\n")] = 0;
    if (line[0]) snprintf(out, out_bytes, "%.40s", line);
    if (line[0] && fgets(line, sizeof line, p)) snprintf(out + strlen(out), out_bytes - strlen(out), " (with local changes)");
  }
  pclose(p);
}

void bench_commit(char *out, size_t out_bytes) {
  char exe[1024];
  ssize_t n = readlink("/proc/self/exe", exe, sizeof exe - 1);
  exe[n > 0 ? n : 0] = 0;
  bench_commit_of(exe, out, out_bytes);
}
