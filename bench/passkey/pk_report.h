/* pk_report: the passkey results as the paper's Table 1 (rows policy x budget,
 * columns context lengths, cells accuracy over the depths), printed or written as a
 * markdown file with the run's machine, date, command and settings. */
#ifndef PK_REPORT_H
#define PK_REPORT_H

#include <stdint.h>
#include <stdio.h>

#include "pk_run.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct {
  int32_t n_ctx, n_depths, n_policies, n_budgets;
  const int32_t *ctx_tokens;     /* [n_ctx] */
  const pk_policy_t *policies;   /* [n_policies] */
  const int32_t *budgets;        /* [n_budgets] */
  const pk_cell_t *cells;        /* [n_ctx][n_depths][n_policies][n_budgets] */
  const int32_t *passkeys;       /* [n_ctx][n_depths] */
  const int64_t *prompt_tokens;  /* [n_ctx][n_depths] */
  const double *prefill_s;       /* [n_ctx][n_depths] */
  const int32_t *n_cases_done;   /* [n_ctx] depths actually run (a failed case stops a column) */
} pk_results_t;

/* The settings and circumstances the file records. */
typedef struct {
  const char *command;   /* the command line */
  const char *date;      /* "YYYY-MM-DD HH:MM" */
  const char *machine;   /* lscpu's model name */
  const char *device;    /* "cpu", or "cuda: <card>" (bench_cuda_probe) */
  const char *model;     /* path and name */
  const char *settings;  /* one markdown list of the other settings */
  double wall_s;
} pk_report_meta_t;

const pk_cell_t *pk_results_cell(const pk_results_t *res, int32_t ci, int32_t di, int32_t pi, int32_t bi);

/* The accuracy table as markdown. */
void pk_report_table(FILE *f, const pk_results_t *res);
/* The per-depth pattern (1 right, 0 wrong, E error) of every row and column. */
void pk_report_depths(FILE *f, const pk_results_t *res);
/* Every distinct error message with the cells it hit. */
void pk_report_errors(FILE *f, const pk_results_t *res);
/* Writes the whole report; -1 (after a message on stderr) if the file cannot be written. */
int pk_report_write(const char *path, const pk_results_t *res, const pk_report_meta_t *meta);

#ifdef __cplusplus
}
#endif
#endif
