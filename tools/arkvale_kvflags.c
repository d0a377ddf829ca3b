/* arkvale_kvflags: the engine options shared by `generate` and `bench` — the --kv-*
 * options, which pick the KV policy and its knobs (kvpool.h), and --device — and the
 * KV report printed after a run. */
#include <stdio.h>
#include <string.h>

#include "arkvale_cli.h"

void ak_cli_kv_usage(FILE *f) {
  fprintf(f,
          "Engine options:\n"
          "  --device cpu|cuda     where the model runs (default cpu; cuda: every policy but h2o and tova)\n"
          "KV cache options:\n"
          "  --kv-policy NAME      full (default), arkvale, streaming, h2o, tova, quest\n"
          "  --kv-budget TOKENS    per layer and sequence for every policy but full (0 = no budget);\n"
          "                        a multiple of --page-tokens for the page policies\n"
          "  --page-tokens N       tokens per KV page (default 32)\n"
          "  --kv-full-layers N    first layers that keep a full cache (default 2)\n"
          "  --kv-sinks N          sink pages (default 1)\n"
          "  --kv-window N         recent pages always resident, the partial one included (default 2)\n"
          "  --kv-topk N           pages selected per step (default min(1280, budget/2)/page)\n"
          "  --kv-digest KIND      centroid, sphere-max|center|mean, cuboid-max|center|mean (default\n"
          "                        cuboid-mean)\n"
          "  --kv-score mean|max   how query heads combine into a page score (default mean)\n"
          "  --kv-score-groups G   rank pages per group of KV heads, take the groups' best in turn\n"
          "  --kv-attend resident|topk  what arkvale attends over (default resident)\n"
          "  --kv-select device|host  where arkvale on --device cuda ranks, picks and recalls pages\n"
          "                        (default device: no host round trip in a step; host: the oracle)\n");
}

int ak_cli_kv_flag(const char *o, const char *v, kv_pool_params_t *kp, int32_t *page_tokens_p,
                   wk_device_t *device_p) {
  int64_t iv = 0;
  ak_err_t err;
  ak_err_clear(&err);
  if (!strcmp(o, "--kv-policy")) {
    if (kv_policy_parse(v, &err, &kp->policy) < 0) goto bad_name;
  } else if (!strcmp(o, "--kv-budget")) {
    if (ak_cli_parse_i64(o, v, 0, 1 << 24, &iv) < 0) return -1;
    kp->budget_tokens = (int32_t)iv;
  } else if (!strcmp(o, "--device")) {
    if (v && !strcmp(v, "cpu")) *device_p = WK_DEVICE_CPU;
    else if (v && !strcmp(v, "cuda")) *device_p = WK_DEVICE_CUDA;
    else return fprintf(stderr, "arkvale: --device expects cpu or cuda, got '%s'\n", v ? v : "(nothing)"), -1;
  } else if (!strcmp(o, "--page-tokens")) {
    if (ak_cli_parse_i64(o, v, 1, 256, &iv) < 0) return -1;
    *page_tokens_p = (int32_t)iv;
  } else if (!strcmp(o, "--kv-full-layers")) {
    if (ak_cli_parse_i64(o, v, 0, 4096, &iv) < 0) return -1;
    kp->n_full_layers = (int32_t)iv;
  } else if (!strcmp(o, "--kv-sinks")) {
    if (ak_cli_parse_i64(o, v, 0, 1 << 20, &iv) < 0) return -1;
    kp->n_sink_pages = (int32_t)iv;
  } else if (!strcmp(o, "--kv-window")) {
    if (ak_cli_parse_i64(o, v, 1, 1 << 20, &iv) < 0) return -1;
    kp->n_window_pages = (int32_t)iv;
  } else if (!strcmp(o, "--kv-topk")) {
    if (ak_cli_parse_i64(o, v, 0, 1 << 20, &iv) < 0) return -1;
    kp->topk_pages = (int32_t)iv;
  } else if (!strcmp(o, "--kv-score-groups")) {
    if (ak_cli_parse_i64(o, v, 1, 1024, &iv) < 0) return -1;
    kp->score_groups = (int32_t)iv;
  } else if (!strcmp(o, "--kv-digest")) {
    if (kv_digest_kind_parse(v, &err, &kp->digest) < 0) goto bad_name;
  } else if (!strcmp(o, "--kv-score")) {
    if (v && !strcmp(v, "mean")) kp->score_agg = KV_SCORE_MEAN;
    else if (v && !strcmp(v, "max")) kp->score_agg = KV_SCORE_MAX;
    else return fprintf(stderr, "arkvale: --kv-score expects mean or max, got '%s'\n", v ? v : "(nothing)"), -1;
  } else if (!strcmp(o, "--kv-select")) {
    if (v && !strcmp(v, "device")) kp->select_on_device = 1;
    else if (v && !strcmp(v, "host")) kp->select_on_device = -1;
    else return fprintf(stderr, "arkvale: --kv-select expects device or host, got '%s'\n", v ? v : "(nothing)"), -1;
  } else if (!strcmp(o, "--kv-attend")) {
    if (v && !strcmp(v, "resident")) kp->attend = KV_ATTEND_RESIDENT;
    else if (v && !strcmp(v, "topk")) kp->attend = KV_ATTEND_TOPK;
    else
      return fprintf(stderr, "arkvale: --kv-attend expects resident or topk, got '%s'\n", v ? v : "(nothing)"), -1;
  } else {
    return 0;
  }
  return 1;
bad_name:
  fprintf(stderr, "arkvale: %s: %s\n", o, err.msg);
  return -1;
}

void ak_cli_kv_report(FILE *f, kv_pool_t *pool, kv_seq_id_t seq) {
  kv_seq_stats_t st;
  if (kv_seq_get_stats(pool, seq, &st) < 0) return;
  const kv_pool_params_t *p = kv_pool_params(pool);
  fprintf(f,
          "[arkvale] kv %s budget %d: %lld of %lld pages resident, %lld backed up; %llu recalls, %llu "
          "evictions, %llu dropped; estimate %.1f ms, select %.1f ms, recall %.1f ms\n",
          kv_policy_name(p->policy), p->budget_tokens, (long long)st.n_pages_resident,
          (long long)st.n_pages_logical, (long long)st.n_pages_backed_up, (unsigned long long)st.work.recalls,
          (unsigned long long)st.work.evictions, (unsigned long long)st.work.drops, st.work.estimate_us / 1e3,
          st.work.select_us / 1e3, st.work.recall_us / 1e3);
}
