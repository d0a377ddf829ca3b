/* arkvale_cli: the subcommands of the `arkvale` tool and their shared argument
 * helpers. Each returns a process exit code (0 ok, 1 runtime failure, 2 bad usage). */
#ifndef AK_CLI_H
#define AK_CLI_H

#include <stdint.h>

int ak_cli_generate(int argc, char **argv);
int ak_cli_bench(int argc, char **argv);

/* Strict number parsing: the whole string must be a number within [lo, hi];
 * otherwise prints "arkvale: <flag> expects ..." and returns -1. */
int ak_cli_parse_i64(const char *flag, const char *s, int64_t lo, int64_t hi, int64_t *out_p);
int ak_cli_parse_f32(const char *flag, const char *s, float lo, float hi, float *out_p);
double ak_cli_now_s(void);

#endif
