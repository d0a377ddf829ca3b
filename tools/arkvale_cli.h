/* arkvale_cli: the subcommands of the `arkvale` tool and their shared argument
 * helpers. Each returns a process exit code (0 ok, 1 runtime failure, 2 bad usage). */
#ifndef AK_CLI_H
#define AK_CLI_H

#include <stdint.h>
#include <stdio.h>

#include "kvpool.h"
#include "wk_engine.h"

int ak_cli_generate(int argc, char **argv);
int ak_cli_bench(int argc, char **argv);
int ak_cli_serve(int argc, char **argv);

/* Strict number parsing: the whole string must be a number within [lo, hi];
 * otherwise prints "arkvale: <flag> expects ..." and returns -1. */
int ak_cli_parse_i64(const char *flag, const char *s, int64_t lo, int64_t hi, int64_t *out_p);
int ak_cli_parse_f32(const char *flag, const char *s, float lo, float hi, float *out_p);
double ak_cli_now_s(void);

/* Engine options (arkvale_kvflags.c): --kv-*, --page-tokens, --device. ak_cli_kv_flag
 * returns 1 if `o` was one and its value `v` was stored in kp, *page_tokens_p or
 * *device_p, 0 if `o` is not one, and -1 after printing why the value is bad. */
void ak_cli_kv_usage(FILE *f);
int ak_cli_kv_flag(const char *o, const char *v, kv_pool_params_t *kp, int32_t *page_tokens_p,
                   wk_device_t *device_p);
/* One line on where the sequence's KV pages are and what the policy did. */
void ak_cli_kv_report(FILE *f, kv_pool_t *pool, kv_seq_id_t seq);

#endif
