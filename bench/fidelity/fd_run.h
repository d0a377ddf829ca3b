/* fd_run: the measurement of bench_fidelity. A prompt is prefilled once into a
 * full-cache source pool; a full-cache reference and every (config, budget) continue
 * it in pools of their own through kv_seq_branch, teacher-forced on the same next
 * tokens of the text; each step's logits are compared with the reference's.
 *
 * Not for: flags, texts, tables (fidelity.c, fd_report.c). One owning thread. */
#ifndef FD_RUN_H
#define FD_RUN_H

#include <stdint.h>

#include "ak_status.h"
#include "kernels.h"
#include "kvpool.h"
#include "wk_forward.h"
#include "wk_model.h"

#ifdef __cplusplus
extern "C" {
#endif

/* One row of the tables: a policy with its page size and (arkvale) attend mode. */
typedef struct {
  const char *name;    /* "arkvale-p32-topk": the --policies name and the row label */
  kv_policy_t policy;
  int32_t page_tokens;
  kv_attend_t attend;  /* arkvale only */
} fd_config_t;

/* Every config, in table order: full, arkvale p32/p16 x resident/topk, streaming, h2o,
 * tova, quest. */
extern const fd_config_t fd_configs[];
extern const int32_t fd_n_configs;

typedef enum {
  FD_CELL_NOT_RUN = 0, /* not asked for */
  FD_CELL_OK = 1,
  FD_CELL_SKIPPED = 2, /* budget >= every token of the run: the policy would be full */
  FD_CELL_FAILED = 3,  /* errmsg says why */
  FD_CELL_REFUSED = 4, /* kv_pool_create refused the params (a budget below sinks + window, or
                        * not a multiple of the page): errmsg says why */
} fd_cell_status_t;

/* One (config, budget): the steps' comparison with the reference, averaged over steps. */
typedef struct {
  fd_cell_status_t status;
  double kl_mean;          /* nats: KL(reference || config) of the next-token distributions */
  double kl_max;           /* nats: the worst step */
  double top1;             /* fraction of steps whose argmax is the reference's */
  double dlogit_mean;      /* |logit_config - logit_reference| at the reference's argmax */
  double nll_mean;         /* nats: -log p(the text's next token) */
  double recalls_per_step_layer; /* pages recalled per decode step per budgeted layer */
  int64_t pages_resident;  /* all layers, after the last step */
  int64_t tokens_resident; /* all layers, after the last step */
  int64_t resident_limit;  /* pages (page policies) or tokens (h2o, tova) the budget allows
                            * after the last step, all layers; -1: no limit (full, quest) */
  int over_budget;         /* pages_resident or tokens_resident above resident_limit */
  double branch_s, decode_s;
  char errmsg[640];
} fd_cell_t;

typedef struct {
  const wk_model_t *model;
  kn_cpu_t *cpu;
  wk_forward_t *fw;   /* max_batch_tokens >= FD_CHUNK_TOKENS */
  const int32_t *ids; /* [ctx_tokens + n_steps + 1]: prompt, fed tokens, the last target */
  int32_t ctx_tokens;
  int32_t n_steps;
} fd_runner_params_t;

#define FD_CHUNK_TOKENS 512 /* prefill chunk */

typedef struct fd_runner fd_runner_t;

/* Keeps pointers to p's model, cpu, fw and ids: they must outlive the runner. */
ak_status_t fd_runner_create(const fd_runner_params_t *p, ak_err_t *err, fd_runner_t **r_p);
void fd_runner_destroy(fd_runner_t *r);

/* Prefills the prompt into the source pool and decodes the reference (a full pool of
 * 32-token pages branched from the source), keeping its logits. ref_p gets the
 * reference's own figures (KL 0, its NLL and time). Call once, before any cell. */
ak_status_t fd_runner_prepare(fd_runner_t *r, fd_cell_t *ref_p, double *prefill_s_p, ak_err_t *err);

/* One config at one budget (ignored for full): a pool of its own, a branch, the steps,
 * the stats, the release, the pool's emptiness checked, the pool destroyed. A failure
 * of the config (a pool it refuses, a step that fails) is recorded in *cell and
 * returns AK_OK; a negative status means the run cannot go on (pages or backups left
 * behind after the release). */
ak_status_t fd_runner_cell(fd_runner_t *r, const fd_config_t *cfg, int32_t budget_tokens, fd_cell_t *cell,
                           ak_err_t *err);

#ifdef __cplusplus
}
#endif
#endif
