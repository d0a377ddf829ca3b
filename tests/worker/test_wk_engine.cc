// Tests for worker/wk_engine.c: parameter validation, sequence lifetime (pages return
// to the pool on release), the up-front context check of prefill, and no leaks.
#include <gtest/gtest.h>

#include <cstdio>
#include <string>
#include <vector>

extern "C" {
#include "ak_alloc.h"
#include "wk_engine.h"
}

static bool have_model() {
  FILE *f = fopen(AK_MODEL_PATH, "rb");
  if (f) fclose(f);
  return f != nullptr;
}

TEST(WkEngine, RejectsBadParams) {
  int64_t before = ak_alloc_outstanding_bytes(AK_MEM_HOST);
  wk_engine_t *e = nullptr;
  ak_err_t err;
  wk_engine_params_t p = wk_engine_params_default();
  EXPECT_EQ(wk_engine_create(&p, &err, &e), AK_ERR_INVALID_ARG);  // no model path
  EXPECT_NE(std::string(err.msg).find("model_path"), std::string::npos);
  if (have_model()) {
    p.model_path = AK_MODEL_PATH;
    p.page_tokens = 0;
    EXPECT_EQ(wk_engine_create(&p, &err, &e), AK_ERR_INVALID_ARG);
    EXPECT_NE(std::string(err.msg).find("page_tokens"), std::string::npos);
    p = wk_engine_params_default();
    p.model_path = AK_MODEL_PATH;
    p.max_batch_tokens = 0;
    EXPECT_EQ(wk_engine_create(&p, &err, &e), AK_ERR_INVALID_ARG);
    EXPECT_NE(std::string(err.msg).find("max_batch_tokens"), std::string::npos);
  }
  EXPECT_EQ(e, nullptr);
  EXPECT_EQ(ak_alloc_outstanding_bytes(AK_MEM_HOST), before);
}

// Synthetic weights (built on the GPU) are checked before anything is allocated: never
// with a model file, only on the CUDA device, only a known shape.
TEST(WkEngine, SyntheticWeightsAreCheckedFirst) {
  const int64_t before = ak_alloc_outstanding_bytes(AK_MEM_HOST);
  wk_engine_t *e = nullptr;
  ak_err_t err;
  wk_engine_params_t p = wk_engine_params_default();
  p.synthetic = "llama3-8b";
  p.model_path = "some.gguf";
  EXPECT_EQ(wk_engine_create(&p, &err, &e), AK_ERR_INVALID_ARG);
  EXPECT_NE(std::string(err.msg).find("exclusive"), std::string::npos) << err.msg;
  p.model_path = nullptr; // on the CPU: refused, whether or not this build has CUDA
  EXPECT_EQ(wk_engine_create(&p, &err, &e), AK_ERR_UNSUPPORTED);
  EXPECT_NE(std::string(err.msg).find("CUDA"), std::string::npos) << err.msg;
  p.synthetic = "llama9-1b";
  p.device = WK_DEVICE_CUDA;
  const ak_status_t st = wk_engine_create(&p, &err, &e);
  if (AK_TEST_HAVE_CUDA) { // names the shapes it knows
    EXPECT_EQ(st, AK_ERR_INVALID_ARG) << err.msg;
    EXPECT_NE(std::string(err.msg).find("llama3-8b"), std::string::npos) << err.msg;
  } else {
    EXPECT_EQ(st, AK_ERR_UNSUPPORTED) << err.msg;
    EXPECT_NE(std::string(err.msg).find("CUDA backend"), std::string::npos) << err.msg;
  }
  EXPECT_NE(std::string(err.msg).find("llama9-1b"), std::string::npos) << err.msg;
  EXPECT_EQ(e, nullptr);
  EXPECT_EQ(ak_alloc_outstanding_bytes(AK_MEM_HOST), before);
}

// Sampling inside the step is the CUDA backend's: the CPU engine says so and changes
// nothing (the caller samples the logits on the host, as before).
TEST(WkEngine, StepSampledIsUnsupportedOnTheCpu) {
  if (!have_model()) GTEST_SKIP() << "model missing";
  wk_engine_params_t p = wk_engine_params_default();
  p.model_path = AK_MODEL_PATH;
  p.max_seq_tokens = 256;
  p.max_seqs = 1;
  wk_engine_t *e = nullptr;
  ak_err_t err;
  ASSERT_EQ(wk_engine_create(&p, &err, &e), AK_OK) << err.msg;
  EXPECT_EQ(wk_engine_samples_on_device(e), 0);
  kv_seq_id_t seq;
  ASSERT_EQ(wk_engine_seq_create(e, &seq), AK_OK);
  int32_t tok = 5, one = 1, id = -1;
  wk_cuda_sample_seq_t q{};
  q.top_p = 1.0f;
  q.repetition_penalty = 1.0f;
  wk_cuda_sample_t req{&q, &id, nullptr};
  wk_forward_batch_t b{{1, &seq, &one}, &tok, 0, nullptr};
  EXPECT_EQ(wk_engine_step_sampled(e, &b, &req), AK_ERR_UNSUPPORTED);
  EXPECT_NE(std::string(wk_engine_errmsg(e)).find("CUDA"), std::string::npos) << wk_engine_errmsg(e);
  EXPECT_EQ(kv_seq_n_tokens(wk_engine_kvpool(e), seq), 0);
  EXPECT_EQ(id, -1);
  wk_engine_destroy(e);
}

TEST(WkEngine, ReleaseReturnsEveryPage) {
  if (!have_model()) GTEST_SKIP() << "model missing";
  int64_t before = ak_alloc_outstanding_bytes(AK_MEM_HOST);
  {
    wk_engine_params_t p = wk_engine_params_default();
    p.model_path = AK_MODEL_PATH;
    p.n_threads = 1;
    p.max_seq_tokens = 256;
    p.max_seqs = 2;
    p.page_tokens = 16;
    p.max_batch_tokens = 64;
    wk_engine_t *e = nullptr;
    ak_err_t err;
    ASSERT_EQ(wk_engine_create(&p, &err, &e), AK_OK) << err.msg;
    const wk_hparams_t *hp = wk_model_hparams(wk_engine_model(e));
    std::vector<float> logits(hp->n_vocab);
    std::vector<int32_t> prompt(100, 42);
    kv_seq_id_t s;
    ASSERT_EQ(wk_engine_seq_create(e, &s), AK_OK);
    ASSERT_EQ(wk_engine_prefill(e, s, prompt.data(), 100, logits.data()), AK_OK) << wk_engine_errmsg(e);
    kv_pool_stats_t st;
    kv_pool_get_stats(wk_engine_kvpool(e), &st);
    EXPECT_EQ(st.n_pages_used, 7 * hp->n_layers);  // ceil(100 / 16) pages in every layer
    // 100 + 157 > 256: refused before running anything, the sequence is unchanged.
    std::vector<int32_t> more(157, 42);
    EXPECT_EQ(wk_engine_prefill(e, s, more.data(), 157, logits.data()), AK_ERR_RANGE);
    EXPECT_NE(std::string(wk_engine_errmsg(e)).find("exceed the context"), std::string::npos);
    EXPECT_EQ(kv_seq_n_tokens(wk_engine_kvpool(e), s), 100);
    ASSERT_EQ(wk_engine_seq_release(e, s), AK_OK);
    EXPECT_EQ(wk_engine_seq_release(e, s), AK_ERR_NOT_FOUND);
    kv_pool_get_stats(wk_engine_kvpool(e), &st);
    EXPECT_EQ(st.n_pages_used, 0);
    EXPECT_EQ(st.n_seqs, 0);
    EXPECT_EQ(kv_pool_check(wk_engine_kvpool(e)), AK_OK);
    wk_engine_destroy(e);
  }
  EXPECT_EQ(ak_alloc_outstanding_bytes(AK_MEM_HOST), before);
}

// --- KV policies through the whole model ---

namespace {
struct GreedyRun {
  std::vector<std::vector<float>> logits;  // per generated step
  std::vector<int32_t> tokens;
};

std::vector<int32_t> varied_prompt(int n) {
  std::vector<int32_t> ids(n);
  for (int i = 0; i < n; i++) ids[i] = (int32_t)((i * 7919 + 13) % 49000) + 100;
  return ids;
}

wk_engine_t *make_engine(const kv_pool_params_t *kv, int32_t page_tokens, int32_t max_seq_tokens) {
  wk_engine_params_t p = wk_engine_params_default();
  p.model_path = AK_MODEL_PATH;
  p.n_threads = 2;
  p.max_seq_tokens = max_seq_tokens;
  p.max_seqs = 2;
  p.page_tokens = page_tokens;
  p.max_batch_tokens = 128;
  p.kv_policy = kv;
  wk_engine_t *e = nullptr;
  ak_err_t err;
  EXPECT_EQ(wk_engine_create(&p, &err, &e), AK_OK) << err.msg;
  return e;
}

// Prefills `prompt` and decodes n_gen greedy tokens; keeps every step's logits.
GreedyRun greedy(wk_engine_t *e, const std::vector<int32_t> &prompt, int n_gen, kv_seq_id_t *seq_p) {
  GreedyRun r;
  int32_t n_vocab = wk_model_hparams(wk_engine_model(e))->n_vocab;
  std::vector<float> logits(n_vocab);
  kv_seq_id_t s;
  EXPECT_EQ(wk_engine_seq_create(e, &s), AK_OK);
  EXPECT_EQ(wk_engine_prefill(e, s, prompt.data(), (int64_t)prompt.size(), logits.data()), AK_OK)
      << wk_engine_errmsg(e);
  for (int g = 0; g < n_gen; g++) {
    r.logits.push_back(logits);
    int32_t tok = (int32_t)kn_argmax(logits.data(), n_vocab), one = 1;
    r.tokens.push_back(tok);
    wk_forward_batch_t b = {};
    b.seqs.n_seqs = 1;
    b.seqs.seqs = &s;
    b.seqs.n_new_tokens = &one;
    b.tokens = &tok;
    b.logits = logits.data();
    EXPECT_EQ(wk_engine_step(e, &b), AK_OK) << wk_engine_errmsg(e);
  }
  *seq_p = s;
  return r;
}
}  // namespace

// The model-level check: with the budget at least the sequence's length,
// arkvale keeps and attends every page, so it is the full cache bit for bit — while
// still digesting and backing up every filled page.
TEST(WkEnginePolicies, ArkvaleWithinBudgetMatchesFullTokenForToken) {
  if (!have_model()) GTEST_SKIP() << "model missing";
  int64_t before = ak_alloc_outstanding_bytes(AK_MEM_HOST);
  {
    std::vector<int32_t> prompt = varied_prompt(150);
    kv_pool_params_t full = kv_pool_params_default();
    full.check_every_step = 1;
    kv_pool_params_t ark = full;
    ark.policy = KV_POLICY_ARKVALE;
    ark.budget_tokens = 256;  // >= 150 + 40
    wk_engine_t *ef = make_engine(&full, 16, 512), *ea = make_engine(&ark, 16, 512);
    ASSERT_TRUE(ef && ea);
    kv_seq_id_t sf, sa;
    GreedyRun rf = greedy(ef, prompt, 40, &sf), ra = greedy(ea, prompt, 40, &sa);
    ASSERT_EQ(rf.tokens, ra.tokens);
    for (size_t i = 0; i < rf.logits.size(); i++) ASSERT_EQ(rf.logits[i], ra.logits[i]) << "step " << i;
    kv_seq_stats_t st;
    ASSERT_EQ(kv_seq_get_stats(wk_engine_kvpool(ea), sa, &st), AK_OK);
    const wk_hparams_t *hp = wk_model_hparams(wk_engine_model(ea));
    EXPECT_EQ(st.n_pages_resident, st.n_pages_logical);
    EXPECT_EQ(st.n_pages_backed_up, (int64_t)(189 / 16) * (hp->n_layers - 2));  // filled pages, budgeted layers
    EXPECT_EQ(st.work.recalls, 0u);
    EXPECT_EQ(st.work.evictions, 0u);
    EXPECT_GT(st.digest_bytes, 0u);
    ASSERT_EQ(wk_engine_seq_release(ea, sa), AK_OK);
    kv_pool_stats_t ps;
    kv_pool_get_stats(wk_engine_kvpool(ea), &ps);
    EXPECT_EQ(ps.n_pages_used, 0);
    EXPECT_EQ(ps.n_backups, 0);
    EXPECT_EQ(ps.backup_bytes, 0u);
    EXPECT_EQ(ps.digest_bytes, 0u);
    wk_engine_destroy(ef);
    wk_engine_destroy(ea);
  }
  EXPECT_EQ(ak_alloc_outstanding_bytes(AK_MEM_HOST), before);
}

// Every policy decodes past a small budget: the budgeted layers stay within it, the
// invariants hold after every step, and release gives everything back.
TEST(WkEnginePolicies, EveryPolicyDecodesPastItsBudget) {
  if (!have_model()) GTEST_SKIP() << "model missing";
  int64_t before = ak_alloc_outstanding_bytes(AK_MEM_HOST);
  std::vector<int32_t> prompt = varied_prompt(200);
  const kv_policy_t policies[] = {KV_POLICY_ARKVALE, KV_POLICY_STREAMING, KV_POLICY_H2O, KV_POLICY_TOVA,
                                  KV_POLICY_QUEST};
  for (kv_policy_t pol : policies) {
    SCOPED_TRACE(kv_policy_name(pol));
    kv_pool_params_t kv = kv_pool_params_default();
    kv.check_every_step = 1;
    kv.policy = pol;
    kv.budget_tokens = 64;  // 4 pages of 16: sink + 1 middle + window of 2
    wk_engine_t *e = make_engine(&kv, 16, 512);
    ASSERT_TRUE(e);
    kv_seq_id_t s;
    GreedyRun r = greedy(e, prompt, 24, &s);
    EXPECT_EQ(r.tokens.size(), 24u);
    kv_seq_stats_t st;
    ASSERT_EQ(kv_seq_get_stats(wk_engine_kvpool(e), s, &st), AK_OK);
    const wk_hparams_t *hp = wk_model_hparams(wk_engine_model(e));
    int64_t per_layer = (200 + 24 + 15) / 16;  // 24 decode steps appended their tokens
    if (pol == KV_POLICY_QUEST) {
      EXPECT_EQ(st.n_pages_resident, per_layer * hp->n_layers);
      EXPECT_GT(st.work.n_selects, 0u);
    } else {
      EXPECT_EQ(st.n_pages_resident, per_layer * 2 + 4 * (hp->n_layers - 2));
      EXPECT_GT(st.work.evictions, 0u);
    }
    if (pol == KV_POLICY_ARKVALE) {
      EXPECT_GT(st.work.n_selects, 0u);
      EXPECT_EQ(st.n_pages_backed_up, (int64_t)((200 + 24) / 16) * (hp->n_layers - 2));
    }
    EXPECT_EQ(kv_pool_check(wk_engine_kvpool(e)), AK_OK) << kv_pool_errmsg(wk_engine_kvpool(e));
    ASSERT_EQ(wk_engine_seq_release(e, s), AK_OK);
    kv_pool_stats_t ps;
    kv_pool_get_stats(wk_engine_kvpool(e), &ps);
    EXPECT_EQ(ps.n_pages_used, 0);
    EXPECT_EQ(ps.n_backups, 0);
    wk_engine_destroy(e);
  }
  EXPECT_EQ(ak_alloc_outstanding_bytes(AK_MEM_HOST), before);
}

// A prefill branched from a full pool continues exactly like the policy's own
// prefill: same pages, digests, last queries and prompt attention, so the same logits.
TEST(WkEnginePolicies, BranchedPrefillEqualsOwnPrefill) {
  if (!have_model()) GTEST_SKIP() << "model missing";
  int64_t before = ak_alloc_outstanding_bytes(AK_MEM_HOST);
  std::vector<int32_t> prompt = varied_prompt(180);
  const kv_policy_t policies[] = {KV_POLICY_ARKVALE, KV_POLICY_H2O};
  for (kv_policy_t pol : policies) {
    SCOPED_TRACE(kv_policy_name(pol));
    kv_pool_params_t src_kv = kv_pool_params_default();
    src_kv.track_token_attn = 1;
    kv_pool_params_t kv = kv_pool_params_default();
    kv.policy = pol;
    kv.budget_tokens = 64;
    kv.check_every_step = 1;
    wk_engine_t *es = make_engine(&src_kv, 32, 512), *eo = make_engine(&kv, 16, 512);
    ASSERT_TRUE(es && eo);
    int32_t n_vocab = wk_model_hparams(wk_engine_model(es))->n_vocab;
    // own prefill
    kv_seq_id_t so;
    GreedyRun own = greedy(eo, prompt, 12, &so);
    // branched: the source pool (page 32) prefills, a pool shaped like eo's takes it
    kv_seq_id_t ss;
    std::vector<float> logits(n_vocab);
    ASSERT_EQ(wk_engine_seq_create(es, &ss), AK_OK);
    ASSERT_EQ(wk_engine_prefill(es, ss, prompt.data(), (int64_t)prompt.size(), logits.data()), AK_OK);
    kv_pool_params_t dp = *kv_pool_params(wk_engine_kvpool(eo));
    kv_pool_t *dst = nullptr;
    ak_err_t err;
    ASSERT_EQ(kv_pool_create(&dp, &err, &dst), AK_OK) << err.msg;
    kv_seq_id_t sd;
    ASSERT_EQ(kv_seq_branch(dst, wk_engine_kvpool(es), wk_engine_cpu(es), ss, &sd), AK_OK) << kv_pool_errmsg(dst);
    wk_forward_t *fw = nullptr;
    ASSERT_EQ(wk_forward_create(wk_engine_model(es), wk_engine_cpu(es), 128, &err, &fw), AK_OK);
    for (size_t g = 0; g < own.tokens.size(); g++) {
      ASSERT_EQ(logits, own.logits[g]) << "step " << g;
      int32_t tok = own.tokens[g], one = 1;
      wk_forward_batch_t b = {};
      b.seqs.n_seqs = 1;
      b.seqs.seqs = &sd;
      b.seqs.n_new_tokens = &one;
      b.tokens = &tok;
      b.logits = logits.data();
      ASSERT_EQ(wk_forward_run(fw, dst, &b, &err), AK_OK) << err.msg;
    }
    ASSERT_EQ(kv_seq_release(dst, sd), AK_OK);
    kv_pool_stats_t ps;
    kv_pool_get_stats(dst, &ps);
    EXPECT_EQ(ps.n_pages_used, 0);
    EXPECT_EQ(ps.n_backups, 0);
    wk_forward_destroy(fw);
    kv_pool_destroy(dst);
    wk_engine_destroy(es);
    wk_engine_destroy(eo);
  }
  EXPECT_EQ(ak_alloc_outstanding_bytes(AK_MEM_HOST), before);
}
