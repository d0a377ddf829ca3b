/* fd_report: tables and the results file of bench_fidelity (see fd_report.h). */
#include "fd_report.h"

#include <errno.h>
#include <string.h>
#include <sys/stat.h>

#include "bench_util.h"

static const fd_cell_t *fd_cell(const fd_report_t *rp, int32_t ci, int32_t bi) {
  return &rp->cells[(size_t)ci * (size_t)rp->n_budgets + (size_t)bi];
}

static int32_t fd_cfg_index(const fd_report_t *rp, const char *name) {
  for (int32_t ci = 0; ci < rp->n_cfgs; ci++)
    if (!strcmp(rp->cfgs[ci]->name, name)) return ci;
  return -1;
}

/* "0.0123 / 95%", "skipped", "FAILED", "-" into out. */
static void fd_cell_text(const fd_cell_t *c, char *out, size_t out_bytes) {
  switch (c->status) {
  case FD_CELL_OK:
    snprintf(out, out_bytes, "%.4f / %.0f%%%s", c->kl_mean, 100 * c->top1, c->over_budget ? " OVER" : "");
    break;
  case FD_CELL_SKIPPED: snprintf(out, out_bytes, "skipped"); break;
  case FD_CELL_FAILED: snprintf(out, out_bytes, "FAILED"); break;
  case FD_CELL_REFUSED: snprintf(out, out_bytes, "refused"); break;
  default: snprintf(out, out_bytes, "-"); break;
  }
}

void fd_report_summary(FILE *f, const fd_report_t *rp, int md) {
  char cell[64];
  if (md) {
    fprintf(f, "| config |");
    for (int32_t bi = 0; bi < rp->n_budgets; bi++) fprintf(f, " budget %d |", rp->budgets[bi]);
    fprintf(f, "\n|---|");
    for (int32_t bi = 0; bi < rp->n_budgets; bi++) fprintf(f, "---:|");
    fprintf(f, "\n");
  } else {
    fprintf(f, "%-22s", "KL(full||config) / top-1");
    for (int32_t bi = 0; bi < rp->n_budgets; bi++) {
      snprintf(cell, sizeof cell, "budget %d", rp->budgets[bi]);
      fprintf(f, " %18s", cell);
    }
    fprintf(f, "\n");
  }
  for (int32_t ci = 0; ci < rp->n_cfgs; ci++) {
    int once = rp->cfgs[ci]->policy == KV_POLICY_FULL;
    fprintf(f, md ? "| %s%s |" : "%-22s", rp->cfgs[ci]->name, once ? (md ? " (no budget)" : "") : "");
    for (int32_t bi = 0; bi < rp->n_budgets; bi++) {
      fd_cell_text(fd_cell(rp, ci, bi), cell, sizeof cell);
      fprintf(f, md ? " %s |" : " %18s", cell);
    }
    fprintf(f, "\n");
  }
}

void fd_report_details(FILE *f, const fd_report_t *rp, int md) {
  if (md)
    fprintf(f, "| config | budget | KL mean | KL max | top-1 | \\|Δlogit\\| | NLL - ref NLL | recalls/step/layer | "
               "resident pages | resident tokens | limit | branch s | decode s |\n"
               "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n");
  else
    fprintf(f, "%-22s %6s %8s %8s %6s %8s %8s %9s %8s %8s %12s %6s %6s\n", "config", "budget", "KL mean",
            "KL max", "top-1", "|dlogit|", "dNLL", "recall/sl", "res.pg", "res.tok", "limit", "branch", "decode");
  for (int32_t ci = 0; ci < rp->n_cfgs; ci++) {
    int once = rp->cfgs[ci]->policy == KV_POLICY_FULL;
    for (int32_t bi = 0; bi < (once ? 1 : rp->n_budgets); bi++) {
      const fd_cell_t *c = fd_cell(rp, ci, bi);
      char budget[16], limit[48];
      snprintf(budget, sizeof budget, once ? "-" : "%d", rp->budgets[bi]);
      if (c->status != FD_CELL_OK) {
        if (c->status == FD_CELL_NOT_RUN) continue;
        fprintf(f, md ? "| %s | %s | %s: %s |\n" : "%-22s %6s %s: %s\n", rp->cfgs[ci]->name, budget,
                c->status == FD_CELL_SKIPPED ? "skipped" : c->status == FD_CELL_REFUSED ? "refused" : "FAILED",
                c->errmsg);
        continue;
      }
      if (c->resident_limit < 0) snprintf(limit, sizeof limit, "none");
      else snprintf(limit, sizeof limit, "%lld %s%s", (long long)c->resident_limit,
                    rp->cfgs[ci]->policy == KV_POLICY_H2O || rp->cfgs[ci]->policy == KV_POLICY_TOVA ? "tok" : "pg",
                    c->over_budget ? " OVER" : "");
      fprintf(f,
              md ? "| %s | %s | %.5f | %.4f | %.1f%% | %.4f | %+.4f | %.3f | %lld | %lld | %s | %.2f | %.2f |\n"
                 : "%-22s %6s %8.5f %8.4f %5.1f%% %8.4f %+8.4f %9.3f %8lld %8lld %12s %5.1fs %5.1fs\n",
              rp->cfgs[ci]->name, budget, c->kl_mean, c->kl_max, 100 * c->top1, c->dlogit_mean,
              c->nll_mean - rp->ref.nll_mean, c->recalls_per_step_layer, (long long)c->pages_resident,
              (long long)c->tokens_resident, limit, c->branch_s, c->decode_s);
    }
  }
}

/* "resident KL 0.0123 (top-1 95.3%) vs topk KL 0.0456 (89.1%): resident closer" */
static void fd_attend_compare(FILE *f, const fd_report_t *rp, int32_t bi, const char *res_name, const char *topk_name,
                              const char *label) {
  int32_t ri = fd_cfg_index(rp, res_name), ti = fd_cfg_index(rp, topk_name);
  if (ri < 0 || ti < 0) return;
  const fd_cell_t *r = fd_cell(rp, ri, bi), *t = fd_cell(rp, ti, bi);
  if (r->status != FD_CELL_OK || t->status != FD_CELL_OK) return;
  fprintf(f, "%s resident KL %.5f (top-1 %.1f%%) vs topk KL %.5f (top-1 %.1f%%): ", label, r->kl_mean,
          100 * r->top1, t->kl_mean, 100 * t->top1);
  if (r->kl_mean == t->kl_mean) fprintf(f, "the same");
  else fprintf(f, "%s is closer to full", r->kl_mean < t->kl_mean ? "resident" : "topk");
  if (r->kl_mean > 0 && t->kl_mean > 0 && r->kl_mean != t->kl_mean) {
    double ratio = r->kl_mean < t->kl_mean ? t->kl_mean / r->kl_mean : r->kl_mean / t->kl_mean;
    fprintf(f, " (KL %.2fx lower)", ratio);
  }
  fprintf(f, "; ");
}

void fd_report_findings(FILE *f, const fd_report_t *rp) {
  int32_t fi = fd_cfg_index(rp, "full");
  if (fi >= 0 && fd_cell(rp, fi, 0)->status == FD_CELL_OK)
    fprintf(f, "- A second full-cache branch against the reference: KL %.3g, top-1 %.1f%% (the comparison's "
               "noise floor; 0 means the decode is deterministic).\n",
            fd_cell(rp, fi, 0)->kl_mean, 100 * fd_cell(rp, fi, 0)->top1);
  for (int32_t bi = 0; bi < rp->n_budgets; bi++) {
    fprintf(f, "- Budget %d: ", rp->budgets[bi]);
    fd_attend_compare(f, rp, bi, "arkvale-p32-resident", "arkvale-p32-topk", "arkvale page 32:");
    fd_attend_compare(f, rp, bi, "arkvale-p16-resident", "arkvale-p16-topk", "page 16:");
    int32_t lo = -1, hi = -1;
    for (int32_t ci = 0; ci < rp->n_cfgs; ci++) {
      const fd_cell_t *c = fd_cell(rp, ci, bi);
      if (rp->cfgs[ci]->policy == KV_POLICY_FULL || c->status != FD_CELL_OK) continue;
      if (lo < 0 || c->kl_mean < fd_cell(rp, lo, bi)->kl_mean) lo = ci;
      if (hi < 0 || c->kl_mean > fd_cell(rp, hi, bi)->kl_mean) hi = ci;
    }
    if (lo >= 0)
      fprintf(f, "lowest KL %s %.5f (top-1 %.1f%%), highest %s %.5f (top-1 %.1f%%).\n", rp->cfgs[lo]->name,
              fd_cell(rp, lo, bi)->kl_mean, 100 * fd_cell(rp, lo, bi)->top1, rp->cfgs[hi]->name,
              fd_cell(rp, hi, bi)->kl_mean, 100 * fd_cell(rp, hi, bi)->top1);
    else
      fprintf(f, "no budgeted config ran.\n");
  }
  int n_fail = 0, n_over = 0, n_skip = 0, n_refused = 0;
  for (int32_t ci = 0; ci < rp->n_cfgs; ci++)
    for (int32_t bi = 0; bi < rp->n_budgets; bi++) {
      const fd_cell_t *c = fd_cell(rp, ci, bi);
      if (rp->cfgs[ci]->policy == KV_POLICY_FULL && bi > 0) continue;
      n_fail += c->status == FD_CELL_FAILED;
      n_skip += c->status == FD_CELL_SKIPPED;
      n_refused += c->status == FD_CELL_REFUSED;
      n_over += c->status == FD_CELL_OK && c->over_budget;
    }
  fprintf(f, "- %d failed runs, %d runs over their resident budget after the last step, %d skipped (budget >= "
             "ctx + steps), %d refused by kv_pool_create.\n",
          n_fail, n_over, n_skip, n_refused);
}

int fd_report_write(const char *path, const fd_report_t *rp) {
  FILE *f = fopen(path, "w");
  if (!f) {
    fprintf(stderr, "bench_fidelity: cannot write %s: %s\n", path, strerror(errno));
    return -1;
  }
  char cpu[256], commit[128], load[64] = "unknown";
  bench_cmd_field("lscpu 2>/dev/null", "Model name", cpu, sizeof cpu);
  bench_commit(commit, sizeof commit);
  FILE *la = fopen("/proc/loadavg", "r");
  if (la) {
    if (!fgets(load, sizeof load, la)) snprintf(load, sizeof load, "unknown");
    load[strcspn(load, "\n")] = 0;
    fclose(la);
  }
  int64_t n_need = (int64_t)rp->ctx_tokens + rp->n_steps + 1;
  fprintf(f, "# fidelity — %s\n\n", rp->date);
  fprintf(f, "How close each KV policy's next-token distribution stays to the full cache's, teacher-forced on\n"
             "the same text. See bench/fidelity/README.md for the definitions.\n\n");
  fprintf(f, "- command: `%s` (from the repository root)\n", rp->cmdline);
  fprintf(f, "- commit: %s\n", commit);
  fprintf(f, "- model: %s (%s)\n", rp->model_path, rp->model_name);
  fprintf(f, "- device: %s, %d threads, ISA %s\n", rp->device, rp->n_threads, rp->isa);
  fprintf(f, "- machine: %s; load average at the end: %s\n", cpu, load);
  fprintf(f, "- text: %s (%lld tokens%s)\n", rp->texts_used, (long long)rp->n_text_tokens,
          rp->n_text_tokens < n_need ? "; REPEATED to fill the run" : "");
  fprintf(f, "- ctx %d tokens prefilled (chunks of %d), then %d teacher-forced decode steps on the text's next "
             "tokens\n",
          rp->ctx_tokens, FD_CHUNK_TOKENS, rp->n_steps);
  fprintf(f, "- reference: a full-cache branch of the prefill (page 32); its NLL of the text's next tokens: "
             "%.4f nats/token\n",
          rp->ref.nll_mean);
  fprintf(f, "- budgets in tokens per budgeted layer (layers 2..L-1; layers 0-1 keep a full cache); pool "
             "defaults otherwise (1 sink page, 2 window pages, topk_pages = min(1280, budget/2)/page, cuboid-mean digest)\n");
  fprintf(f, "- wall time: %.1f s (prefill %.1f s)\n\n", rp->total_s, rp->prefill_s);

  fprintf(f, "## KL(full || config) in nats / top-1 agreement, mean over %d steps\n\n", rp->n_steps);
  fd_report_summary(f, rp, 1);
  fprintf(f, "\n`OVER`: more resident pages (tokens for h2o, tova) than the budget allows after the last step.\n"
             "`full` runs once: a second full branch against the reference.\n\n");
  fprintf(f, "## What this says\n\n");
  fd_report_findings(f, rp);
  fprintf(f, "\n## Every figure\n\n");
  fprintf(f, "KL mean / max over steps in nats; top-1: steps whose argmax equals the reference's; |Δlogit|: at "
             "the reference's argmax, mean over steps; NLL - ref NLL: the config's mean NLL of the text's next "
             "token minus the reference's, nats; recalls/step/layer: pages recalled from the backup per decode "
             "step per budgeted layer; resident pages and tokens: all layers after the last step; limit: what "
             "the budget allows there; times in seconds.\n\n");
  fd_report_details(f, rp, 1);
  int bad = ferror(f);
  if (fclose(f) != 0 || bad) {
    fprintf(stderr, "bench_fidelity: writing %s failed\n", path);
    return -1;
  }
  return 0;
}
