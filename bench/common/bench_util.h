/* bench_util: what the ArkVale benchmarks (estimator, fidelity) share — a clock, the
 * default text corpus and its tokens, the machine description for results files, and
 * the default results path. Benchmarks only; nothing under the modules uses it. */
#ifndef BENCH_UTIL_H
#define BENCH_UTIL_H

#include <stddef.h>
#include <stdint.h>

#include "co_tokenizer.h"

/* Monotonic seconds. */
double bench_now_s(void);

/* The repository's own prose, read when no --text is given (missing files are skipped
 * with a note). */
extern const char *const bench_default_texts[];
extern const int bench_n_default_texts;

/* The first n_want tokens of the concatenated texts (a blank line between files),
 * repeated when they hold fewer (reported: repetition changes the attention pattern).
 * texts/n_texts: the --text files, or NULL/0 for the defaults. `prog` prefixes the
 * messages; `used` receives the files read. Returns 0 ok, 1 runtime failure, 2 a --text
 * file that cannot be read. */
int bench_text_tokens(const char *prog, const char *const *texts, int n_texts, const co_tokenizer_t *tok,
                      int64_t n_want, int32_t *ids, int64_t *n_text_tokens_p, char *used, size_t used_bytes);

/* The first line of `cmd`'s output starting with `key`, value trimmed; "unknown" if
 * none (lscpu's model name, git's HEAD). */
void bench_cmd_field(const char *cmd, const char *key, char *out, size_t out_bytes);

/* The commit a benchmark's binary was built from, for its results file: the install
 * tree's MANIFEST.txt beside exe_path's folder (exe_path/../../MANIFEST.txt, written by
 * scripts/make_install_tree.sh) when there is one, else git in the working directory,
 * " (with local changes)" when tracked files differ; "unknown" if neither answers. The
 * tree comes first: a GPU host's copy of the checkout can hold another commit than the
 * binaries carried to it (it named cbdea11 for a 056a2d4 tree, session 13). */
void bench_commit_of(const char *exe_path, char *out, size_t out_bytes);

/* bench_commit_of for the running binary (/proc/self/exe). */
void bench_commit(char *out, size_t out_bytes);

/* bench/results/<name>-<date>.md, or -2, -3, ... when taken; -1 (with a message
 * prefixed by `prog`) outside the repository root. */
int bench_default_out(const char *prog, const char *name, const char *date, char *out, size_t out_bytes);

#endif
