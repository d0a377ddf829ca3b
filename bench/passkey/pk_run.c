/* pk_run: prefill once and branch per policy (CPU), or prefill per policy (CUDA);
 * decode greedily (pk_run.h). */
#include "pk_run.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "ak_alloc.h"
#include "kernels.h"
#include "pk_prompt.h"
#include "wk_forward.h"

#define PK_MAX_GEN_TOKENS 64
#define PK_TEXT_BYTES 4096

struct pk_runner {
  pk_run_params_t p;
  pk_policy_t pols[PK_MAX_POLICIES];
  int32_t budgets[PK_MAX_BUDGETS];
  wk_model_t *model;
  kn_cpu_t *cpu;
  wk_forward_t *fw;
  co_tokenizer_t *tok;
  kv_pool_t *src;                               /* full, track_token_attn: each case's prefill */
  kv_pool_t *dst[PK_MAX_POLICIES][PK_MAX_BUDGETS]; /* created at first use, then reused */
  wk_engine_t *eng[PK_MAX_POLICIES][PK_MAX_BUDGETS]; /* CUDA, instead of src and dst: one engine
                                                      * per cell (full: [pi][0]), at first use */
  char dst_err[PK_MAX_POLICIES][PK_MAX_BUDGETS][AK_ERR_MSG_BYTES]; /* a create that failed */
  float *prompt_logits; /* [n_vocab] the prompt's last token: every policy's first answer token */
  float *logits;        /* [n_vocab] decode steps */
  size_t logits_bytes;
};

static double pk_now_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

int pk_policy_parse(const char *s, pk_policy_t *pol_p) {
  char name[sizeof pol_p->name];
  if (!s || strlen(s) >= sizeof name) return -1;
  /* the name, then an optional page size: "arkvale16" */
  size_t n = strlen(s);
  while (n > 0 && s[n - 1] >= '0' && s[n - 1] <= '9') n--;
  memcpy(name, s, n);
  name[n] = '\0';
  kv_policy_t policy;
  if (kv_policy_parse(name, NULL, &policy) < 0) return -1;
  int32_t page = 32;
  if (s[n]) {
    if (policy == KV_POLICY_FULL || s[n] == '0' || strlen(s + n) > 3) return -1;
    page = (int32_t)strtol(s + n, NULL, 10);
    if (page > 256) return -1;
  }
  memset(pol_p, 0, sizeof *pol_p);
  memcpy(pol_p->name, s, strlen(s) + 1);
  pol_p->policy = policy;
  pol_p->page_tokens = page;
  return 0;
}

/* Pool params for one sequence of up to max_ctx_tokens under `policy`. */
static kv_pool_params_t pk_pool_params(const pk_runner_t *r, kv_policy_t policy, int32_t page_tokens,
                                       int32_t budget_tokens) {
  const wk_hparams_t *hp = wk_model_hparams(r->model);
  kv_pool_params_t kp = kv_pool_params_default();
  kp.n_layers = hp->n_layers;
  kp.n_kv_heads = hp->n_kv_heads;
  kp.n_heads = hp->n_heads;
  kp.head_dim = hp->head_dim;
  kp.page_tokens = page_tokens;
  kp.max_seqs = 1;
  kp.max_seq_tokens = r->p.max_ctx_tokens;
  /* Every layer's whole sequence: a branch may hold the whole prompt before it
   * comes down to its budget, as a prefill does. */
  kp.n_pages = kv_pages_for_tokens(r->p.max_ctx_tokens, page_tokens) * hp->n_layers;
  kp.policy = policy;
  kp.budget_tokens = policy == KV_POLICY_FULL ? 0 : budget_tokens;
  kp.check_every_step = r->p.check_every_step;
  return kp;
}

void pk_runner_destroy(pk_runner_t *r) {
  if (!r) return;
  for (int i = 0; i < PK_MAX_POLICIES; i++)
    for (int j = 0; j < PK_MAX_BUDGETS; j++) {
      kv_pool_destroy(r->dst[i][j]);
      wk_engine_destroy(r->eng[i][j]);
    }
  kv_pool_destroy(r->src);
  ak_host_free(r->prompt_logits, r->logits_bytes);
  ak_host_free(r->logits, r->logits_bytes);
  co_tokenizer_destroy(r->tok);
  wk_forward_destroy(r->fw);
  kn_cpu_destroy(r->cpu);
  wk_model_free(r->model);
  ak_host_free(r, sizeof *r);
}

ak_status_t pk_runner_create(const pk_run_params_t *p, ak_err_t *err, pk_runner_t **r_p) {
  if (!p || !p->model_path || p->n_policies < 1 || p->n_policies > PK_MAX_POLICIES || p->n_budgets < 1 ||
      p->n_budgets > PK_MAX_BUDGETS || p->n_gen_tokens < 1 || p->n_gen_tokens > PK_MAX_GEN_TOKENS ||
      p->max_batch_tokens < 1 || p->max_ctx_tokens < 1)
    return AK_ERR(err, AK_ERR_INVALID_ARG, "bad runner params (policies 1..%d, budgets 1..%d, gen 1..%d)",
                  PK_MAX_POLICIES, PK_MAX_BUDGETS, PK_MAX_GEN_TOKENS);
  pk_runner_t *r = ak_host_alloc(sizeof *r, 1);
  if (!r) return AK_ERR(err, AK_ERR_NO_MEMORY, "runner struct");
  r->p = *p;
  memcpy(r->pols, p->policies, sizeof r->pols[0] * (size_t)p->n_policies);
  memcpy(r->budgets, p->budgets, sizeof r->budgets[0] * (size_t)p->n_budgets);
  r->p.policies = r->pols;
  r->p.budgets = r->budgets;

  ak_status_t st = wk_model_load(p->model_path, NULL, err, &r->model);
  if (st < 0) goto err_destroy;
  const wk_hparams_t *hp = wk_model_hparams(r->model);
  if (p->max_ctx_tokens > hp->n_ctx_train) {
    st = AK_ERR(err, AK_ERR_RANGE, "context %d exceeds the model's %d", p->max_ctx_tokens, hp->n_ctx_train);
    goto err_destroy;
  }
  if ((st = kn_cpu_create(p->n_threads, err, &r->cpu)) < 0) goto err_destroy;
  if ((st = co_tokenizer_create_from_gguf(wk_model_gguf(r->model), err, &r->tok)) < 0) goto err_destroy;
  r->logits_bytes = sizeof(float) * (size_t)hp->n_vocab;
  r->prompt_logits = ak_host_alloc(r->logits_bytes, 0);
  r->logits = ak_host_alloc(r->logits_bytes, 0);
  if (!r->prompt_logits || !r->logits) {
    st = AK_ERR(err, AK_ERR_NO_MEMORY, "logits (%zu bytes)", r->logits_bytes);
    goto err_destroy;
  }
  if (p->device == WK_DEVICE_CUDA) {
    /* The model above gives the tokenizer and the shapes; each cell's engine loads its own. */
    for (int32_t i = 0; i < p->n_policies; i++)
      if (p->policies[i].policy == KV_POLICY_H2O || p->policies[i].policy == KV_POLICY_TOVA) {
        st = AK_ERR(err, AK_ERR_UNSUPPORTED, "policy %s does not run on the GPU", p->policies[i].name);
        goto err_destroy;
      }
    *r_p = r;
    return AK_OK;
  }
  if ((st = wk_forward_create(r->model, r->cpu, p->max_batch_tokens, err, &r->fw)) < 0) goto err_destroy;
  kv_pool_params_t kp = pk_pool_params(r, KV_POLICY_FULL, p->src_page_tokens, 0);
  /* Token attention costs prefill time; only h2o and tova need it. */
  for (int32_t i = 0; i < p->n_policies; i++)
    if (p->policies[i].policy == KV_POLICY_H2O || p->policies[i].policy == KV_POLICY_TOVA) kp.track_token_attn = 1;
  if ((st = kv_pool_create(&kp, err, &r->src)) < 0) goto err_destroy;
  *r_p = r;
  return AK_OK;

err_destroy:
  pk_runner_destroy(r);
  return st;
}

const wk_model_t *pk_runner_model(const pk_runner_t *r) { return r->model; }
const co_tokenizer_t *pk_runner_tokenizer(const pk_runner_t *r) { return r->tok; }
int pk_runner_n_threads(const pk_runner_t *r) { return kn_cpu_n_threads(r->cpu); }

/* A pool whose sequences are all released must hold nothing. */
static ak_status_t pk_pool_expect_empty(kv_pool_t *pool, const char *what, ak_err_t *err) {
  kv_pool_stats_t s;
  kv_pool_get_stats(pool, &s);
  if (s.n_seqs != 0 || s.n_pages_used != 0 || s.n_backups != 0 || s.backup_bytes != 0)
    return AK_ERR(err, AK_ERR_INTERNAL, "%s pool after release: %d seqs, %lld pages, %lld backups (%zu bytes)",
                  what, s.n_seqs, (long long)s.n_pages_used, (long long)s.n_backups, s.backup_bytes);
  return AK_OK;
}

/* Greedy answer of `seq` in `pool` (through `eng` on CUDA, else the CPU forward), its
 * first token from the prompt's logits. */
static ak_status_t pk_decode(pk_runner_t *r, wk_engine_t *eng, kv_pool_t *pool, kv_seq_id_t seq, int32_t passkey,
                             pk_cell_t *c, ak_err_t *err) {
  const int32_t n_vocab = wk_model_hparams(r->model)->n_vocab;
  int32_t gen[PK_MAX_GEN_TOKENS];
  int32_t n_gen = 0, one = 1;
  int32_t tok = (int32_t)kn_argmax(r->prompt_logits, n_vocab);
  double t0 = pk_now_s();
  for (;;) {
    if (co_tokenizer_is_eog(r->tok, tok)) break;
    gen[n_gen++] = tok;
    if (n_gen == r->p.n_gen_tokens) break;
    wk_forward_batch_t b = {.seqs = {.n_seqs = 1, .seqs = &seq, .n_new_tokens = &one}, .tokens = &tok,
                            .logits = r->logits};
    if (eng) {
      ak_status_t st = wk_engine_step(eng, &b);
      if (st < 0) return AK_ERR(err, st, "decode step: %s", wk_engine_errmsg(eng));
    } else {
      AK_TRY(wk_forward_run(r->fw, pool, &b, err));
    }
    tok = (int32_t)kn_argmax(r->logits, n_vocab);
  }
  c->decode_s += pk_now_s() - t0;
  char text[PK_TEXT_BYTES];
  size_t n_bytes = 0;
  AK_TRY(co_tokenizer_decode(r->tok, gen, n_gen, 0, text, sizeof text - 1, &n_bytes, err));
  text[n_bytes] = '\0';
  c->correct = pk_answer_correct(text, n_bytes, passkey);
  size_t n_copy = n_bytes < sizeof c->answer - 1 ? n_bytes : sizeof c->answer - 1;
  memcpy(c->answer, text, n_copy);
  c->answer[n_copy] = '\0';
  return AK_OK;
}

static void pk_cell_fail(pk_cell_t *c, const char *msg) {
  c->status = PK_CELL_ERR;
  c->correct = 0;
  snprintf(c->errmsg, sizeof c->errmsg, "%s", msg);
}

/* One budgeted (policy, budget): branch the source sequence, decode, release. */
static ak_status_t pk_run_branch(pk_runner_t *r, int32_t pi, int32_t bi, kv_seq_id_t src_seq, int32_t passkey,
                                 pk_cell_t *c) {
  const pk_policy_t *pol = &r->pols[pi];
  ak_err_t e;
  ak_err_clear(&e);
  if (!r->dst[pi][bi] && !r->dst_err[pi][bi][0]) {
    kv_pool_params_t kp = pk_pool_params(r, pol->policy, pol->page_tokens, r->budgets[bi]);
    if (kv_pool_create(&kp, &e, &r->dst[pi][bi]) < 0)
      snprintf(r->dst_err[pi][bi], sizeof r->dst_err[pi][bi], "kv_pool_create: %.400s", e.msg);
  }
  if (!r->dst[pi][bi]) return pk_cell_fail(c, r->dst_err[pi][bi]), AK_OK;
  kv_pool_t *pool = r->dst[pi][bi];

  kv_seq_id_t seq;
  double t0 = pk_now_s();
  ak_status_t st = kv_seq_branch(pool, r->src, r->cpu, src_seq, &seq);
  c->branch_s += pk_now_s() - t0;
  if (st < 0) {
    snprintf(e.msg, sizeof e.msg, "kv_seq_branch: %s (%s)", kv_pool_errmsg(pool), ak_status_str(st));
    pk_cell_fail(c, e.msg);
    return pk_pool_expect_empty(pool, pol->name, &e) < 0 ? AK_ERR_INTERNAL : AK_OK;
  }
  st = pk_decode(r, NULL, pool, seq, passkey, c, &e);
  if (st < 0) pk_cell_fail(c, e.msg);
  kv_seq_stats_t ss;
  if (kv_seq_get_stats(pool, seq, &ss) == AK_OK) c->recalls = (int64_t)ss.work.recalls, c->evictions = (int64_t)ss.work.evictions;
  st = kv_seq_release(pool, seq);
  if (st < 0) {
    snprintf(e.msg, sizeof e.msg, "kv_seq_release: %s", kv_pool_errmsg(pool));
    pk_cell_fail(c, e.msg);
    return st;
  }
  return AK_OK;
}

/* --- CUDA: every cell prefills through its own engine --- */

/* The engine of one (policy, budget) on the GPU: a pool for one sequence of up to
 * max_ctx_tokens, shaped as pk_pool_params shapes the CPU pools. */
static ak_status_t pk_engine_create(const pk_runner_t *r, const pk_policy_t *pol, int32_t budget_tokens,
                                    ak_err_t *err, wk_engine_t **eng_p) {
  kv_pool_params_t kp = kv_pool_params_default();
  kp.policy = pol->policy;
  kp.budget_tokens = pol->policy == KV_POLICY_FULL ? 0 : budget_tokens;
  kp.check_every_step = r->p.check_every_step;
  kp.select_on_device = r->p.kv_select;
  wk_engine_params_t ep = wk_engine_params_default();
  ep.model_path = r->p.model_path;
  ep.device = WK_DEVICE_CUDA;
  ep.n_threads = r->p.n_threads;
  ep.page_tokens = pol->page_tokens;
  ep.max_seq_tokens = r->p.max_ctx_tokens;
  ep.max_seqs = 1;
  ep.max_batch_tokens = r->p.max_batch_tokens;
  ep.kv_policy = &kp;
  return wk_engine_create(&ep, err, eng_p);
}

/* One cell on the GPU: prefill the prompt in the cell's engine (which brings the
 * sequence down to its budget), decode, release. A failure is the cell's; the return
 * is an error only when the pool kept pages after the release. prefill_s_p gets the
 * prefill's wall time (0 if it did not run). */
static ak_status_t pk_run_cuda_cell(pk_runner_t *r, int32_t pi, int32_t bi, const int32_t *ids, int64_t n_ids,
                                    int32_t passkey, pk_cell_t *c, double *prefill_s_p, ak_err_t *err) {
  const pk_policy_t *pol = &r->pols[pi];
  ak_err_t e;
  ak_err_clear(&e);
  *prefill_s_p = 0;
  if (!r->eng[pi][bi] && !r->dst_err[pi][bi][0] && pk_engine_create(r, pol, r->budgets[bi], &e, &r->eng[pi][bi]) < 0)
    snprintf(r->dst_err[pi][bi], sizeof r->dst_err[pi][bi], "wk_engine_create: %.400s", e.msg);
  wk_engine_t *eng = r->eng[pi][bi];
  if (!eng) return pk_cell_fail(c, r->dst_err[pi][bi]), AK_OK;
  kv_pool_t *pool = wk_engine_kvpool(eng);
  kv_seq_id_t seq;
  if (wk_engine_seq_create(eng, &seq) < 0) {
    snprintf(e.msg, sizeof e.msg, "wk_engine_seq_create: %s", wk_engine_errmsg(eng));
    return pk_cell_fail(c, e.msg), AK_OK;
  }
  double t0 = pk_now_s();
  ak_status_t st = wk_engine_prefill(eng, seq, ids, n_ids, r->prompt_logits);
  *prefill_s_p = c->branch_s = pk_now_s() - t0;
  if (st < 0) {
    snprintf(e.msg, sizeof e.msg, "wk_engine_prefill: %s", wk_engine_errmsg(eng));
    pk_cell_fail(c, e.msg);
  } else if (pk_decode(r, eng, pool, seq, passkey, c, &e) < 0) {
    pk_cell_fail(c, e.msg);
  }
  kv_seq_stats_t ss;
  if (pol->policy != KV_POLICY_FULL && kv_seq_get_stats(pool, seq, &ss) == AK_OK)
    c->recalls = (int64_t)ss.work.recalls, c->evictions = (int64_t)ss.work.evictions;
  if ((st = wk_engine_seq_release(eng, seq)) < 0)
    return AK_ERR(err, st, "%s: wk_engine_seq_release: %s", pol->name, wk_engine_errmsg(eng));
  return pk_pool_expect_empty(pool, pol->name, err);
}

static ak_status_t pk_runner_case_cuda(pk_runner_t *r, const int32_t *ids, int64_t n_ids, int32_t ctx_tokens,
                                       int32_t passkey, pk_cell_t *cells, double *prefill_s_p, ak_err_t *err) {
  const int32_t n_bud = r->p.n_budgets;
  double sum_s = 0;
  int n_prefills = 0;
  for (int32_t pi = 0; pi < r->p.n_policies; pi++) {
    int full = r->pols[pi].policy == KV_POLICY_FULL;
    for (int32_t bi = 0; bi < (full ? 1 : n_bud); bi++) {
      pk_cell_t *c = &cells[pi * n_bud + bi];
      if (!full && r->budgets[bi] >= ctx_tokens) {
        c->status = PK_CELL_SKIPPED;
        continue;
      }
      double s = 0;
      AK_TRY(pk_run_cuda_cell(r, pi, bi, ids, n_ids, passkey, c, &s, err));
      if (s > 0) sum_s += s, n_prefills++;
    }
  }
  *prefill_s_p = n_prefills ? sum_s / n_prefills : 0;
  return AK_OK;
}

ak_status_t pk_runner_case(pk_runner_t *r, const int32_t *ids, int64_t n_ids, int32_t ctx_tokens, int32_t passkey,
                           pk_cell_t *cells, double *prefill_s_p, ak_err_t *err) {
  const int32_t n_pol = r->p.n_policies, n_bud = r->p.n_budgets;
  if (n_ids < 1 || n_ids + r->p.n_gen_tokens > r->p.max_ctx_tokens)
    return AK_ERR(err, AK_ERR_RANGE, "prompt of %lld tokens + %d answer tokens exceed the context of %d",
                  (long long)n_ids, r->p.n_gen_tokens, r->p.max_ctx_tokens);
  for (int32_t i = 0; i < n_pol * n_bud; i++) {
    memset(&cells[i], 0, sizeof cells[i]);
    cells[i].recalls = cells[i].evictions = -1;
  }
  if (r->p.device == WK_DEVICE_CUDA) return pk_runner_case_cuda(r, ids, n_ids, ctx_tokens, passkey, cells, prefill_s_p, err);

  kv_seq_id_t src_seq;
  ak_status_t st = kv_seq_create(r->src, &src_seq);
  if (st < 0) return AK_ERR(err, st, "kv_seq_create: %s", kv_pool_errmsg(r->src));
  double t0 = pk_now_s();
  for (int64_t off = 0; off < n_ids; off += r->p.max_batch_tokens) {
    int32_t n = (int32_t)(n_ids - off < r->p.max_batch_tokens ? n_ids - off : r->p.max_batch_tokens);
    int last = off + n == n_ids;
    wk_forward_batch_t b = {.seqs = {.n_seqs = 1, .seqs = &src_seq, .n_new_tokens = &n}, .tokens = ids + off,
                            .logits = last ? r->prompt_logits : NULL};
    if ((st = wk_forward_run(r->fw, r->src, &b, err)) < 0) {
      kv_seq_release(r->src, src_seq);
      return st;
    }
  }
  *prefill_s_p = pk_now_s() - t0;

  /* Budgeted policies first, while the source still holds just the prompt. */
  for (int32_t pi = 0; pi < n_pol; pi++) {
    if (r->pols[pi].policy == KV_POLICY_FULL) continue;
    for (int32_t bi = 0; bi < n_bud; bi++) {
      pk_cell_t *c = &cells[pi * n_bud + bi];
      if (r->budgets[bi] >= ctx_tokens) {
        c->status = PK_CELL_SKIPPED;
        continue;
      }
      if ((st = pk_run_branch(r, pi, bi, src_seq, passkey, c)) < 0) {
        kv_seq_release(r->src, src_seq);
        return AK_ERR(err, st, "%s budget %d: %s", r->pols[pi].name, r->budgets[bi], c->errmsg);
      }
      if (r->dst[pi][bi] && (st = pk_pool_expect_empty(r->dst[pi][bi], r->pols[pi].name, err)) < 0) {
        kv_seq_release(r->src, src_seq);
        return st;
      }
    }
  }
  /* full: decode on the source itself (the same answer a branch to a full pool gives). */
  for (int32_t pi = 0; pi < n_pol; pi++) {
    if (r->pols[pi].policy != KV_POLICY_FULL) continue;
    ak_err_t e;
    ak_err_clear(&e);
    if (pk_decode(r, NULL, r->src, src_seq, passkey, &cells[pi * n_bud], &e) < 0)
      pk_cell_fail(&cells[pi * n_bud], e.msg);
    break; /* one full row is enough: its decode grows the source sequence */
  }
  if ((st = kv_seq_release(r->src, src_seq)) < 0) return AK_ERR(err, st, "kv_seq_release: %s", kv_pool_errmsg(r->src));
  return pk_pool_expect_empty(r->src, "source", err);
}
