/* pk_run: runs passkey cases.
 *
 * CPU backend: each case's prompt is prefilled once into a source pool (policy full;
 * token attention tracked when h2o or tova run, since only they need it); every
 * budgeted policy then continues that prefill in its own pool through kv_seq_branch
 * and greedy-decodes the answer, and the full policy decodes on the source itself.
 *
 * CUDA backend (WK_DEVICE_CUDA): the GPU pools live in device memory, where
 * kv_seq_branch cannot write (it stores pages from the host), so every (policy, budget)
 * prefills the prompt itself through its own wk_engine on the GPU and comes down to its
 * budget at the end (wk_engine_prefill's kv_seq_compact) -- the state kv_seq_branch
 * produces, since a prefill keeps every page resident and attends over all of it.
 * h2o and tova do not run on the GPU (the caller leaves them out).
 *
 * Pools (engines) are created once per (policy, page size, budget) and reused by every
 * case; each must hold 0 pages after a case releases its sequence.
 *
 * Not here: the prompt text (pk_prompt.h), flags and the report (passkey.c).
 * One owning thread. */
#ifndef PK_RUN_H
#define PK_RUN_H

#include <stdint.h>

#include "ak_status.h"
#include "co_tokenizer.h"
#include "kvpool.h"
#include "wk_engine.h"
#include "wk_model.h"

#ifdef __cplusplus
extern "C" {
#endif

#define PK_MAX_POLICIES 16
#define PK_MAX_BUDGETS 16
#define PK_ANSWER_BYTES 128

/* One row group of the table: a kvpool policy at one page size. */
typedef struct {
  char name[24];      /* as given on the command line: "arkvale16", "h2o", ... */
  kv_policy_t policy;
  int32_t page_tokens;
} pk_policy_t;

/* "full", "streaming", "h2o", "tova", "quest", "arkvale" (page 32), or any of them
 * followed by a page size in tokens ("arkvale16", "quest32"). -1 for anything else. */
int pk_policy_parse(const char *s, pk_policy_t *pol_p);

typedef struct {
  const char *model_path;
  int32_t n_threads;        /* 0 = one per online CPU */
  int32_t max_ctx_tokens;   /* the longest sequence any case makes (prompt + answer) */
  int32_t n_gen_tokens;     /* greedy tokens decoded per answer */
  int32_t max_batch_tokens; /* prefill chunk (rows of one forward call) */
  int32_t src_page_tokens;  /* page size of the source (prefill) pool */
  int check_every_step;     /* kvpool's invariant check at every step (slow) */
  wk_device_t device;       /* WK_DEVICE_CPU (default) or WK_DEVICE_CUDA */
  int32_t kv_select;        /* CUDA, arkvale: where it selects (wk_engine_params_t.kv_policy's
                             * select_on_device: 0 = the engine picks the device, -1 = host) */
  const pk_policy_t *policies; /* [n_policies] */
  int32_t n_policies;
  const int32_t *budgets;   /* [n_budgets >= 1] tokens, for every policy but full */
  int32_t n_budgets;
} pk_run_params_t;

typedef enum {
  PK_CELL_OK = 0,      /* ran: see correct */
  PK_CELL_SKIPPED = 1, /* budget >= context: the policy would evict nothing (= full) */
  PK_CELL_ERR = 2,     /* a kvpool or forward call failed: see errmsg */
} pk_cell_status_t;

/* The outcome of one (policy, budget) on one case. */
typedef struct {
  pk_cell_status_t status;
  int correct;
  char answer[PK_ANSWER_BYTES]; /* the decoded answer, NUL-terminated, maybe cut */
  char errmsg[AK_ERR_MSG_BYTES];
  double branch_s, decode_s;    /* wall time of kv_seq_branch (CUDA: of the cell's own
                                 * prefill) and of the decode steps */
  int64_t recalls, evictions;   /* kv_seq_get_stats of the branched sequence (-1: unknown) */
} pk_cell_t;

typedef struct pk_runner pk_runner_t;

ak_status_t pk_runner_create(const pk_run_params_t *p, ak_err_t *err, pk_runner_t **r_p);
void pk_runner_destroy(pk_runner_t *r);

const wk_model_t *pk_runner_model(const pk_runner_t *r);
const co_tokenizer_t *pk_runner_tokenizer(const pk_runner_t *r);
int pk_runner_n_threads(const pk_runner_t *r);

/* Runs one case: prompt ids[0, n_ids), answer scored against passkey; ctx_tokens is
 * the case's context length (cells whose budget >= ctx_tokens are skipped).
 * cells: [n_policies][n_budgets] (the full policy fills its row's first cell only).
 * A failure of one cell is recorded in that cell; the return is an error (with err)
 * only when the case itself cannot run (prefill failed) or a pool kept pages after a
 * release. prefill_s_p gets the prefill's wall time (CUDA: the mean of the cells' own
 * prefills; a cell's prefill that fails is that cell's error). */
ak_status_t pk_runner_case(pk_runner_t *r, const int32_t *ids, int64_t n_ids, int32_t ctx_tokens,
                           int32_t passkey, pk_cell_t *cells, double *prefill_s_p, ak_err_t *err);

#ifdef __cplusplus
}
#endif
#endif
