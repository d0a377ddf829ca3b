/* pk_report: Table 1 and its details as markdown (pk_report.h). */
#include "pk_report.h"

#include <string.h>

const pk_cell_t *pk_results_cell(const pk_results_t *res, int32_t ci, int32_t di, int32_t pi, int32_t bi) {
  int64_t idx = (((int64_t)ci * res->n_depths + di) * res->n_policies + pi) * res->n_budgets + bi;
  return &res->cells[idx];
}

/* Rows: the full policy once, every other policy once per budget. */
static int32_t pk_row_budgets(const pk_results_t *res, int32_t pi) {
  return res->policies[pi].policy == KV_POLICY_FULL ? 1 : res->n_budgets;
}

/* One cell's text: accuracy in percent, "–" when skipped, "err" when any case failed. */
static void pk_cell_text(const pk_results_t *res, int32_t ci, int32_t pi, int32_t bi, char *out, size_t cap) {
  int n_ok = 0, n_right = 0, n_err = 0, n_skip = 0;
  for (int32_t di = 0; di < res->n_cases_done[ci]; di++) {
    const pk_cell_t *c = pk_results_cell(res, ci, di, pi, bi);
    if (c->status == PK_CELL_ERR) n_err++;
    else if (c->status == PK_CELL_SKIPPED) n_skip++;
    else n_ok++, n_right += c->correct != 0;
  }
  if (n_err) snprintf(out, cap, "err (%d/%d)", n_err, n_err + n_ok + n_skip);
  else if (n_skip || n_ok == 0) snprintf(out, cap, "–");
  else snprintf(out, cap, "%.0f", 100.0 * n_right / n_ok);
}

void pk_report_table(FILE *f, const pk_results_t *res) {
  fprintf(f, "| policy | budget |");
  for (int32_t ci = 0; ci < res->n_ctx; ci++) fprintf(f, " %d |", res->ctx_tokens[ci]);
  fprintf(f, "\n|---|---:|");
  for (int32_t ci = 0; ci < res->n_ctx; ci++) fprintf(f, "---:|");
  fprintf(f, "\n");
  for (int32_t pi = 0; pi < res->n_policies; pi++) {
    for (int32_t bi = 0; bi < pk_row_budgets(res, pi); bi++) {
      if (res->policies[pi].policy == KV_POLICY_FULL) fprintf(f, "| %s | – |", res->policies[pi].name);
      else fprintf(f, "| %s | %d |", res->policies[pi].name, res->budgets[bi]);
      for (int32_t ci = 0; ci < res->n_ctx; ci++) {
        char cell[32];
        pk_cell_text(res, ci, pi, bi, cell, sizeof cell);
        fprintf(f, " %s |", cell);
      }
      fprintf(f, "\n");
    }
  }
}

void pk_report_depths(FILE *f, const pk_results_t *res) {
  fprintf(f, "| policy | budget |");
  for (int32_t ci = 0; ci < res->n_ctx; ci++) fprintf(f, " %d |", res->ctx_tokens[ci]);
  fprintf(f, "\n|---|---:|");
  for (int32_t ci = 0; ci < res->n_ctx; ci++) fprintf(f, "---|");
  fprintf(f, "\n");
  for (int32_t pi = 0; pi < res->n_policies; pi++) {
    for (int32_t bi = 0; bi < pk_row_budgets(res, pi); bi++) {
      if (res->policies[pi].policy == KV_POLICY_FULL) fprintf(f, "| %s | – |", res->policies[pi].name);
      else fprintf(f, "| %s | %d |", res->policies[pi].name, res->budgets[bi]);
      for (int32_t ci = 0; ci < res->n_ctx; ci++) {
        fprintf(f, " `");
        for (int32_t di = 0; di < res->n_cases_done[ci]; di++) {
          const pk_cell_t *c = pk_results_cell(res, ci, di, pi, bi);
          fputc(c->status == PK_CELL_ERR ? 'E' : c->status == PK_CELL_SKIPPED ? '-' : c->correct ? '1' : '0', f);
        }
        fprintf(f, "` |");
      }
      fprintf(f, "\n");
    }
  }
}

void pk_report_errors(FILE *f, const pk_results_t *res) {
  int any = 0;
  for (int32_t pi = 0; pi < res->n_policies; pi++)
    for (int32_t bi = 0; bi < pk_row_budgets(res, pi); bi++)
      for (int32_t ci = 0; ci < res->n_ctx; ci++) {
        /* the first error of the cell, and how many cases failed */
        const pk_cell_t *first = NULL;
        int n = 0;
        for (int32_t di = 0; di < res->n_cases_done[ci]; di++) {
          const pk_cell_t *c = pk_results_cell(res, ci, di, pi, bi);
          if (c->status != PK_CELL_ERR) continue;
          if (!first) first = c;
          n++;
        }
        if (!first) continue;
        any = 1;
        fprintf(f, "- %s", res->policies[pi].name);
        if (res->policies[pi].policy != KV_POLICY_FULL) fprintf(f, " budget %d", res->budgets[bi]);
        fprintf(f, ", context %d: %d case(s): %s\n", res->ctx_tokens[ci], n, first->errmsg);
      }
  if (!any) fprintf(f, "none\n");
}

/* Mean decode time per answer and kvpool's recall/eviction counts of each row. */
/* cuda: each cell prefilled itself (its prefill time in the column kv_seq_branch's takes on the CPU). */
static void pk_report_costs(FILE *f, const pk_results_t *res, int cuda) {
  fprintf(f, "| policy | budget | context | %s ms | decode ms / answer | recalls / answer | evictions / answer |\n",
          cuda ? "prefill" : "branch");
  fprintf(f, "|---|---:|---:|---:|---:|---:|---:|\n");
  for (int32_t pi = 0; pi < res->n_policies; pi++)
    for (int32_t bi = 0; bi < pk_row_budgets(res, pi); bi++)
      for (int32_t ci = 0; ci < res->n_ctx; ci++) {
        double br = 0, dec = 0;
        int64_t rec = 0, ev = 0;
        int n = 0, known = 1;
        for (int32_t di = 0; di < res->n_cases_done[ci]; di++) {
          const pk_cell_t *c = pk_results_cell(res, ci, di, pi, bi);
          if (c->status != PK_CELL_OK) continue;
          n++, br += c->branch_s, dec += c->decode_s;
          if (c->recalls < 0) known = 0;
          else rec += c->recalls, ev += c->evictions;
        }
        if (!n) continue;
        if (res->policies[pi].policy == KV_POLICY_FULL) fprintf(f, "| %s | – | %d | – |", res->policies[pi].name, res->ctx_tokens[ci]);
        else fprintf(f, "| %s | %d | %d | %.1f |", res->policies[pi].name, res->budgets[bi], res->ctx_tokens[ci], 1e3 * br / n);
        fprintf(f, " %.1f |", 1e3 * dec / n);
        if (known && res->policies[pi].policy != KV_POLICY_FULL)
          fprintf(f, " %.1f | %.1f |\n", (double)rec / n, (double)ev / n);
        else fprintf(f, " – | – |\n");
      }
}

int pk_report_write(const char *path, const pk_results_t *res, const pk_report_meta_t *meta) {
  FILE *f = fopen(path, "w");
  if (!f) {
    perror(path);
    return -1;
  }
  fprintf(f, "# passkey retrieval (ArkVale Table 1 protocol) — %s\n\n", meta->date);
  fprintf(f, "Device: %s\n\n", meta->device ? meta->device : "cpu");
  fprintf(f, "Command: `%s` (run from the repository root)\n\n", meta->command);
  fprintf(f, "Accuracy (%%) over the depths, greedy answer containing the passkey; "
             "`–` = budget >= context (the policy would evict nothing: identical to full, not run).\n\n");
  pk_report_table(f, res);
  fprintf(f, "\n## Settings\n\n");
  fprintf(f, "- model: %s\n", meta->model);
  fprintf(f, "%s", meta->settings);
  fprintf(f, "- wall time: %.1f s\n", meta->wall_s);
  fprintf(f, "\n## Machine\n\n- CPU: %s\n- device: %s\n", meta->machine, meta->device ? meta->device : "cpu");

  fprintf(f, "\n## Prompts\n\n| context | cases | prompt tokens (min–max) | prefill s / case |\n|---:|---:|---|---:|\n");
  for (int32_t ci = 0; ci < res->n_ctx; ci++) {
    int64_t lo = INT64_MAX, hi = 0;
    double pre = 0;
    int32_t n = res->n_cases_done[ci];
    for (int32_t di = 0; di < n; di++) {
      int64_t t = res->prompt_tokens[ci * res->n_depths + di];
      lo = t < lo ? t : lo, hi = t > hi ? t : hi;
      pre += res->prefill_s[ci * res->n_depths + di];
    }
    fprintf(f, "| %d | %d | %lld–%lld | %.2f |\n", res->ctx_tokens[ci], n, (long long)(n ? lo : 0), (long long)hi,
            n ? pre / n : 0.0);
  }
  fprintf(f, "\n## Per depth\n\n1 = right, 0 = wrong, E = error, - = skipped; depths in order 0, 1/N, ..., (N-1)/N.\n\n");
  pk_report_depths(f, res);
  fprintf(f, "\n## Cost per answer\n\n");
  pk_report_costs(f, res, meta->device && !strncmp(meta->device, "cuda", 4));
  fprintf(f, "\n## Errors\n\n");
  pk_report_errors(f, res);
  fprintf(f, "\n## Answers of the full policy\n\n| context | depth | passkey | answer |\n|---:|---:|---:|---|\n");
  int32_t full_pi = -1;
  for (int32_t pi = 0; pi < res->n_policies; pi++)
    if (res->policies[pi].policy == KV_POLICY_FULL) full_pi = pi;
  for (int32_t ci = 0; full_pi >= 0 && ci < res->n_ctx; ci++)
    for (int32_t di = 0; di < res->n_cases_done[ci]; di++) {
      const pk_cell_t *c = pk_results_cell(res, ci, di, full_pi, 0);
      fprintf(f, "| %d | %d/%d | %d | `", res->ctx_tokens[ci], di, res->n_depths, res->passkeys[ci * res->n_depths + di]);
      for (const char *s = c->answer; *s; s++) fputc(*s == '\n' ? ' ' : *s == '|' ? '/' : *s == '`' ? '\'' : *s, f);
      fprintf(f, "` |\n");
    }
  if (fclose(f) != 0) {
    perror(path);
    return -1;
  }
  return 0;
}
