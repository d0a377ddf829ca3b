/* fd_report: bench_fidelity's tables (text on stdout, markdown in the results file)
 * and the results file itself. Reads the cells fd_run filled; computes nothing new
 * except the comparisons the "what this says" paragraph states. */
#ifndef FD_REPORT_H
#define FD_REPORT_H

#include <stdint.h>
#include <stdio.h>

#include "fd_run.h"

typedef struct {
  const char *cmdline;
  const char *model_path;
  const char *model_name;
  const char *device;
  const char *isa;
  const char *texts_used;
  int32_t n_threads;
  int32_t ctx_tokens;
  int32_t n_steps;
  int64_t n_text_tokens;       /* the texts' tokens (fewer than ctx + steps + 1: repeated) */
  int32_t n_budgets;
  const int32_t *budgets;      /* [n_budgets] tokens per budgeted layer */
  int32_t n_cfgs;
  const fd_config_t *const *cfgs; /* [n_cfgs] the configs run, in table order */
  const fd_cell_t *cells;      /* [n_cfgs][n_budgets]; full's row holds its one run in every column */
  fd_cell_t ref;               /* the reference's own figures */
  double prefill_s;
  double total_s;
  char date[32];
} fd_report_t;

/* The summary table: rows config, columns budget, cells "KL / top-1%". */
void fd_report_summary(FILE *f, const fd_report_t *rp, int markdown);
/* One row per (config, budget) with every figure of the cell. */
void fd_report_details(FILE *f, const fd_report_t *rp, int markdown);
/* The "what this says" paragraph: resident vs topk per page size and budget, the lowest
 * and highest KL per budget, failures and budget overruns. */
void fd_report_findings(FILE *f, const fd_report_t *rp);
/* Writes the whole results file; -1 (after a message) when it cannot. */
int fd_report_write(const char *path, const fd_report_t *rp);

#endif
