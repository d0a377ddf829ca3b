/* fd_run: prefill once, branch per (config, budget), teacher-force, compare with the
 * full-cache reference step by step (see fd_run.h). */
#include "fd_run.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "bench_util.h"
#include "kernels.h"

const fd_config_t fd_configs[] = {
    {"full", KV_POLICY_FULL, 32, KV_ATTEND_RESIDENT},
    {"arkvale-p32-resident", KV_POLICY_ARKVALE, 32, KV_ATTEND_RESIDENT},
    {"arkvale-p32-topk", KV_POLICY_ARKVALE, 32, KV_ATTEND_TOPK},
    {"arkvale-p16-resident", KV_POLICY_ARKVALE, 16, KV_ATTEND_RESIDENT},
    {"arkvale-p16-topk", KV_POLICY_ARKVALE, 16, KV_ATTEND_TOPK},
    {"streaming", KV_POLICY_STREAMING, 32, KV_ATTEND_RESIDENT},
    {"h2o", KV_POLICY_H2O, 32, KV_ATTEND_RESIDENT},
    {"tova", KV_POLICY_TOVA, 32, KV_ATTEND_RESIDENT},
    {"quest", KV_POLICY_QUEST, 32, KV_ATTEND_RESIDENT},
};
const int32_t fd_n_configs = (int32_t)(sizeof fd_configs / sizeof fd_configs[0]);

struct fd_runner {
  fd_runner_params_t p;
  const wk_hparams_t *hp;
  kv_pool_t *src;
  kv_seq_id_t src_seq;
  int prepared;
  float *ref_logits; /* [n_steps, n_vocab] f32: the reference's logits after each fed token */
  float *logits;     /* [n_vocab] f32: a config's logits of the current step */
};

/* A pool for one sequence of the whole run (prompt + fed tokens) that every page of
 * every layer fits: a branch keeps its whole prefill resident until it compacts. */
static kv_pool_params_t fd_pool_params(const fd_runner_t *r, kv_policy_t policy, int32_t page_tokens,
                                       int32_t budget_tokens, kv_attend_t attend) {
  kv_pool_params_t kp = kv_pool_params_default();
  kp.n_layers = r->hp->n_layers;
  kp.n_kv_heads = r->hp->n_kv_heads;
  kp.n_heads = r->hp->n_heads;
  kp.head_dim = r->hp->head_dim;
  kp.page_tokens = page_tokens;
  kp.max_seqs = 1;
  kp.max_seq_tokens = r->p.ctx_tokens + r->p.n_steps + 1;
  kp.n_pages = kv_pages_for_tokens(kp.max_seq_tokens, page_tokens) * kp.n_layers;
  kp.policy = policy;
  kp.budget_tokens = policy == KV_POLICY_FULL ? 0 : budget_tokens;
  kp.attend = attend;
  kp.check_every_step = 1; /* a budget overrun or a broken page table fails the step */
  return kp;
}

ak_status_t fd_runner_create(const fd_runner_params_t *p, ak_err_t *err, fd_runner_t **r_p) {
  if (!p || !p->model || !p->cpu || !p->fw || !p->ids || p->ctx_tokens < 1 || p->n_steps < 1 || !r_p)
    return AK_ERR(err, AK_ERR_INVALID_ARG, "missing model, cpu, forward pass or tokens, or empty run");
  fd_runner_t *r = calloc(1, sizeof *r);
  if (!r) return AK_ERR(err, AK_ERR_NO_MEMORY, "runner");
  r->p = *p;
  r->hp = wk_model_hparams(p->model);
  r->src_seq = -1;
  size_t n_vocab = (size_t)r->hp->n_vocab;
  r->ref_logits = malloc(sizeof(float) * n_vocab * (size_t)p->n_steps);
  r->logits = malloc(sizeof(float) * n_vocab);
  if (!r->ref_logits || !r->logits) {
    fd_runner_destroy(r);
    return AK_ERR(err, AK_ERR_NO_MEMORY, "logits of %d steps x %zu", p->n_steps, n_vocab);
  }
  kv_pool_params_t kp = fd_pool_params(r, KV_POLICY_FULL, 32, 0, KV_ATTEND_RESIDENT);
  kp.track_token_attn = 1; /* h2o and tova branches start from the prompt's attention */
  kp.check_every_step = 0;
  ak_status_t st = kv_pool_create(&kp, err, &r->src);
  if (st < 0) {
    fd_runner_destroy(r);
    return st;
  }
  *r_p = r;
  return AK_OK;
}

void fd_runner_destroy(fd_runner_t *r) {
  if (!r) return;
  kv_pool_destroy(r->src);
  free(r->ref_logits);
  free(r->logits);
  free(r);
}

/* log sum_v exp(z_v), in double. */
static double fd_log_sum_exp(const float *z, int32_t n) {
  double m = z[0];
  for (int32_t v = 1; v < n; v++)
    if (z[v] > m) m = z[v];
  double s = 0;
  for (int32_t v = 0; v < n; v++) s += exp((double)z[v] - m);
  return m + log(s);
}

/* Adds one step's comparison of cfg's logits with ref's to the cell's sums. */
static void fd_compare(const float *ref, const float *cfg, int32_t n_vocab, int32_t target, fd_cell_t *c) {
  double lse_r = fd_log_sum_exp(ref, n_vocab), lse_c = fd_log_sum_exp(cfg, n_vocab), kl = 0;
  for (int32_t v = 0; v < n_vocab; v++) {
    double lr = (double)ref[v] - lse_r, lc = (double)cfg[v] - lse_c;
    kl += exp(lr) * (lr - lc);
  }
  if (kl < 0) kl = 0; /* rounding, when the distributions are equal */
  int32_t a_ref = (int32_t)kn_argmax(ref, n_vocab);
  c->kl_mean += kl;
  if (kl > c->kl_max) c->kl_max = kl;
  c->top1 += (int32_t)kn_argmax(cfg, n_vocab) == a_ref;
  c->dlogit_mean += fabs((double)cfg[a_ref] - (double)ref[a_ref]);
  c->nll_mean += lse_c - (double)cfg[target];
}

/* Feeds the n_steps tokens after the prompt one step at a time. The reference
 * (cell == NULL) keeps its logits; a config compares its own with them. */
static ak_status_t fd_decode(fd_runner_t *r, kv_pool_t *pool, kv_seq_id_t seq, fd_cell_t *cell, ak_err_t *err) {
  const int32_t n_vocab = r->hp->n_vocab;
  for (int32_t t = 0; t < r->p.n_steps; t++) {
    int32_t one = 1, pos = r->p.ctx_tokens + t;
    float *out = cell ? r->logits : r->ref_logits + (size_t)t * (size_t)n_vocab;
    wk_forward_batch_t b = {.seqs = {.n_seqs = 1, .seqs = &seq, .n_new_tokens = &one}, .tokens = &r->p.ids[pos],
                            .logits = out};
    AK_TRY(wk_forward_run(r->p.fw, pool, &b, err));
    if (cell) fd_compare(r->ref_logits + (size_t)t * (size_t)n_vocab, out, n_vocab, r->p.ids[pos + 1], cell);
  }
  return AK_OK;
}

static void fd_cell_fail(fd_cell_t *c, const char *what, const char *msg) {
  c->status = FD_CELL_FAILED;
  snprintf(c->errmsg, sizeof c->errmsg, "%.64s: %.560s", what, msg);
}

/* What the budget allows after the last step, all layers: the full layers hold every
 * token; each budgeted layer budget_tokens (token policies, in tokens) or
 * budget_tokens / page_tokens pages (arkvale, streaming). -1 for full and quest
 * (quest keeps every page resident by design). */
static int64_t fd_resident_limit(const kv_pool_params_t *kp, int64_t n_tokens) {
  int64_t n_budgeted = kp->n_layers - kp->n_full_layers;
  switch (kp->policy) {
  case KV_POLICY_ARKVALE:
  case KV_POLICY_STREAMING:
    return kp->n_full_layers * kv_pages_for_tokens(n_tokens, kp->page_tokens) +
           n_budgeted * (kp->budget_tokens / kp->page_tokens);
  case KV_POLICY_H2O:
  case KV_POLICY_TOVA:
    return kp->n_full_layers * n_tokens + n_budgeted * kp->budget_tokens;
  default:
    return -1;
  }
}

ak_status_t fd_runner_prepare(fd_runner_t *r, fd_cell_t *ref_p, double *prefill_s_p, ak_err_t *err) {
  if (r->prepared) return AK_ERR(err, AK_ERR_INVALID_ARG, "already prepared");
  AK_TRY(kv_seq_create(r->src, &r->src_seq));
  double t0 = bench_now_s();
  for (int32_t off = 0; off < r->p.ctx_tokens; off += FD_CHUNK_TOKENS) {
    int32_t n = r->p.ctx_tokens - off < FD_CHUNK_TOKENS ? r->p.ctx_tokens - off : FD_CHUNK_TOKENS;
    /* no logits: every config's first prediction comes after its first fed token */
    wk_forward_batch_t b = {.seqs = {.n_seqs = 1, .seqs = &r->src_seq, .n_new_tokens = &n},
                            .tokens = r->p.ids + off, .logits = NULL};
    AK_TRY(wk_forward_run(r->p.fw, r->src, &b, err));
  }
  *prefill_s_p = bench_now_s() - t0;

  /* The reference: a full pool branched like every config, so that branching itself
   * (f16 pages read back and stored again) is common to both sides. */
  memset(ref_p, 0, sizeof *ref_p);
  kv_pool_params_t kp = fd_pool_params(r, KV_POLICY_FULL, 32, 0, KV_ATTEND_RESIDENT);
  kv_pool_t *pool = NULL;
  kv_seq_id_t seq;
  AK_TRY(kv_pool_create(&kp, err, &pool));
  t0 = bench_now_s();
  ak_status_t st = kv_seq_branch(pool, r->src, r->p.cpu, r->src_seq, &seq);
  if (st < 0) {
    AK_ERR(err, st, "reference kv_seq_branch: %s", kv_pool_errmsg(pool));
    kv_pool_destroy(pool);
    return st;
  }
  double t1 = bench_now_s();
  st = fd_decode(r, pool, seq, NULL, err);
  ref_p->branch_s = t1 - t0;
  ref_p->decode_s = bench_now_s() - t1;
  if (st == AK_OK) {
    /* the reference's own NLL of the text, for scale */
    const int32_t n_vocab = r->hp->n_vocab;
    for (int32_t t = 0; t < r->p.n_steps; t++) {
      const float *z = r->ref_logits + (size_t)t * (size_t)n_vocab;
      ref_p->nll_mean += fd_log_sum_exp(z, n_vocab) - (double)z[r->p.ids[r->p.ctx_tokens + t + 1]];
    }
    ref_p->nll_mean /= r->p.n_steps;
    ref_p->top1 = 1;
    ref_p->resident_limit = -1;
    kv_seq_stats_t ss;
    if (kv_seq_get_stats(pool, seq, &ss) == AK_OK) {
      ref_p->pages_resident = ss.n_pages_resident;
      ref_p->tokens_resident = ss.n_tokens_resident;
    }
    ref_p->status = FD_CELL_OK;
    r->prepared = 1;
  }
  kv_seq_release(pool, seq);
  kv_pool_destroy(pool);
  return st;
}

ak_status_t fd_runner_cell(fd_runner_t *r, const fd_config_t *cfg, int32_t budget_tokens, fd_cell_t *cell,
                           ak_err_t *err) {
  memset(cell, 0, sizeof *cell);
  cell->resident_limit = -1;
  if (!r->prepared) return AK_ERR(err, AK_ERR_INVALID_ARG, "fd_runner_prepare first");
  int64_t n_run_tokens = (int64_t)r->p.ctx_tokens + r->p.n_steps;
  if (cfg->policy != KV_POLICY_FULL && budget_tokens >= n_run_tokens) {
    cell->status = FD_CELL_SKIPPED;
    snprintf(cell->errmsg, sizeof cell->errmsg, "budget %d >= the run's %lld tokens: the same as full",
             budget_tokens, (long long)n_run_tokens);
    return AK_OK;
  }
  kv_pool_params_t kp = fd_pool_params(r, cfg->policy, cfg->page_tokens, budget_tokens, cfg->attend);
  kv_pool_t *pool = NULL;
  ak_err_t e;
  ak_err_clear(&e);
  if (kv_pool_create(&kp, &e, &pool) < 0) {
    fd_cell_fail(cell, "kv_pool_create", e.msg);
    cell->status = FD_CELL_REFUSED;
    return AK_OK;
  }

  kv_seq_id_t seq = -1;
  kv_seq_stats_t s0, s1;
  double t0 = bench_now_s();
  ak_status_t st = kv_seq_branch(pool, r->src, r->p.cpu, r->src_seq, &seq);
  double t1 = bench_now_s();
  cell->branch_s = t1 - t0;
  if (st < 0) {
    fd_cell_fail(cell, "kv_seq_branch", kv_pool_errmsg(pool));
  } else if ((st = kv_seq_get_stats(pool, seq, &s0)) < 0) {
    fd_cell_fail(cell, "kv_seq_get_stats", kv_pool_errmsg(pool));
  } else if ((st = fd_decode(r, pool, seq, cell, &e)) < 0) {
    fd_cell_fail(cell, "decode", e.msg);
  } else if ((st = kv_seq_get_stats(pool, seq, &s1)) < 0) {
    fd_cell_fail(cell, "kv_seq_get_stats", kv_pool_errmsg(pool));
  } else {
    double n = r->p.n_steps;
    cell->decode_s = bench_now_s() - t1;
    cell->kl_mean /= n;
    cell->top1 /= n;
    cell->dlogit_mean /= n;
    cell->nll_mean /= n;
    int32_t n_budgeted = kp.n_layers - kp.n_full_layers;
    cell->recalls_per_step_layer =
        n_budgeted > 0 ? (double)(s1.work.recalls - s0.work.recalls) / n / n_budgeted : 0;
    cell->pages_resident = s1.n_pages_resident;
    cell->tokens_resident = s1.n_tokens_resident;
    cell->resident_limit = fd_resident_limit(&kp, s1.n_tokens);
    int64_t held = cfg->policy == KV_POLICY_H2O || cfg->policy == KV_POLICY_TOVA ? s1.n_tokens_resident
                                                                                   : s1.n_pages_resident;
    cell->over_budget = cell->resident_limit >= 0 && held > cell->resident_limit;
    cell->status = FD_CELL_OK;
  }

  st = AK_OK;
  if (seq >= 0 && kv_seq_release(pool, seq) < 0) {
    st = AK_ERR(err, AK_ERR_INTERNAL, "%s budget %d: kv_seq_release: %s", cfg->name, budget_tokens,
                kv_pool_errmsg(pool));
  } else {
    kv_pool_stats_t ps;
    kv_pool_get_stats(pool, &ps);
    if (ps.n_pages_used != 0 || ps.n_backups != 0)
      st = AK_ERR(err, AK_ERR_INTERNAL, "%s budget %d: after the release %lld pages and %lld backups remain",
                  cfg->name, budget_tokens, (long long)ps.n_pages_used, (long long)ps.n_backups);
  }
  kv_pool_destroy(pool);
  return st;
}
