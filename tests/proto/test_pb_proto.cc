// Tests for proto/arkvale/v1/*.proto through the protoc-c generated code and
// common/pb_buf: round trips of the messages each side builds (every field set), the
// descriptors' full names (they make the gRPC method paths), enum value 0, and a lint
// of the .proto text: every field and enum value carries a comment.
#include <gtest/gtest.h>

#include <cstring>
#include <fstream>
#include <regex>
#include <sstream>
#include <string>
#include <vector>

extern "C" {
#include "ak_alloc.h"
#include "arkvale/v1/common.pb-c.h"
#include "arkvale/v1/generation.pb-c.h"
#include "arkvale/v1/worker.pb-c.h"
#include "pb_buf.h"
}

#include "pb_test_util.h"

static ::testing::Environment *const g_env = ::testing::AddGlobalTestEnvironment(new PbGrpcEnv);

static const size_t kMaxBytes = 4 << 20;

static char *S(const char *s) { return const_cast<char *>(s); }

// Packs through a gRPC byte buffer and back; the repacked bytes must equal the first.
static PbMsgPtr RoundTrip(const ProtobufCMessage *m) {
  ak_err_t err;
  ak_err_clear(&err);
  grpc_byte_buffer *raw = nullptr;
  EXPECT_EQ(pb_buf_pack(m, kMaxBytes, &err, &raw), AK_OK) << err.msg;
  PbBufPtr buf(raw);
  ProtobufCMessage *out = nullptr;
  EXPECT_EQ(pb_buf_unpack(buf.get(), m->descriptor, kMaxBytes, &err, &out), AK_OK) << err.msg;
  PbMsgPtr p(out);
  if (p) EXPECT_EQ(PbPackBytes(p.get()), PbPackBytes(m)) << m->descriptor->name;
  return p;
}

// --- GenerateRequest: every field, for each of the prompt's three forms ---

TEST(PbProto, GenerateRequestRoundTripsEveryField) {
  int64_t before = ak_alloc_outstanding_bytes(AK_MEM_HOST);
  for (int kind = 1; kind <= 3; kind++) {
    int32_t ids[] = {1, 9906, 11, 0, 49151};
    Arkvale__V1__TokenIds token_ids;
    arkvale__v1__token_ids__init(&token_ids);
    token_ids.n_ids = 5;
    token_ids.ids = ids;

    Arkvale__V1__ChatMessage m0, m1;
    arkvale__v1__chat_message__init(&m0);
    arkvale__v1__chat_message__init(&m1);
    m0.role = S("system");
    m0.content = S("You are terse.");
    m1.role = S("user");
    m1.content = S("Schöne Grüße — 日本語?");
    Arkvale__V1__ChatMessage *msgs[] = {&m0, &m1};
    Arkvale__V1__Chat chat;
    arkvale__v1__chat__init(&chat);
    chat.n_messages = 2;
    chat.messages = msgs;
    chat.has_add_generation_prompt = 1;
    chat.add_generation_prompt = 1;

    Arkvale__V1__Prompt prompt;
    arkvale__v1__prompt__init(&prompt);
    if (kind == 1) {
      prompt.kind_case = ARKVALE__V1__PROMPT__KIND_TEXT;
      prompt.text = S("Once upon a time");
    } else if (kind == 2) {
      prompt.kind_case = ARKVALE__V1__PROMPT__KIND_TOKEN_IDS;
      prompt.token_ids = &token_ids;
    } else {
      prompt.kind_case = ARKVALE__V1__PROMPT__KIND_CHAT;
      prompt.chat = &chat;
    }

    Arkvale__V1__SamplingParams sp;
    arkvale__v1__sampling_params__init(&sp);
    sp.has_temperature = 1, sp.temperature = 0.7f;
    sp.has_top_k = 1, sp.top_k = 40;
    sp.has_top_p = 1, sp.top_p = 0.95f;
    sp.has_min_p = 1, sp.min_p = 0.05f;
    sp.has_repeat_penalty = 1, sp.repeat_penalty = 1.1f;
    sp.has_repeat_last_n = 1, sp.repeat_last_n = 64;
    sp.has_seed = 1, sp.seed = 0xfedcba9876543210ull;

    char *stops[] = {S("\n\n"), S("</s>"), S("User:")};
    Arkvale__V1__StoppingCriteria stop;
    arkvale__v1__stopping_criteria__init(&stop);
    stop.has_max_new_tokens = 1, stop.max_new_tokens = 256;
    stop.n_stop = 3, stop.stop = stops;
    stop.has_ignore_eos = 1, stop.ignore_eos = 1;

    Arkvale__V1__KvConfig kv;
    arkvale__v1__kv_config__init(&kv);
    kv.has_policy = 1, kv.policy = ARKVALE__V1__KV_POLICY__KV_POLICY_ARKVALE;
    kv.has_budget_tokens = 1, kv.budget_tokens = 2048;

    Arkvale__V1__GenerateRequest req;
    arkvale__v1__generate_request__init(&req);
    req.request_id = S("req-42");
    req.prompt = &prompt;
    req.sampling = &sp;
    req.stopping = &stop;
    req.kv = &kv;
    req.has_return_logprobs = 1, req.return_logprobs = 1;
    ASSERT_EQ(PbUnsetFields(&req.base), "") << "the test must set every field";

    PbMsgPtr p = RoundTrip(&req.base);
    ASSERT_TRUE(p);
    auto *r = reinterpret_cast<Arkvale__V1__GenerateRequest *>(p.get());
    EXPECT_EQ(PbUnsetFields(p.get()), "");
    EXPECT_STREQ(r->request_id, "req-42");
    ASSERT_EQ(r->prompt->kind_case, prompt.kind_case);
    if (kind == 1) EXPECT_STREQ(r->prompt->text, "Once upon a time");
    if (kind == 2) {
      ASSERT_EQ(r->prompt->token_ids->n_ids, 5u);
      EXPECT_EQ(0, memcmp(r->prompt->token_ids->ids, ids, sizeof ids));
    }
    if (kind == 3) {
      ASSERT_EQ(r->prompt->chat->n_messages, 2u);
      EXPECT_STREQ(r->prompt->chat->messages[1]->content, "Schöne Grüße — 日本語?");
      EXPECT_TRUE(r->prompt->chat->add_generation_prompt);
    }
    EXPECT_EQ(r->sampling->temperature, 0.7f);
    EXPECT_EQ(r->sampling->top_k, 40u);
    EXPECT_EQ(r->sampling->top_p, 0.95f);
    EXPECT_EQ(r->sampling->min_p, 0.05f);
    EXPECT_EQ(r->sampling->repeat_penalty, 1.1f);
    EXPECT_EQ(r->sampling->repeat_last_n, 64u);
    EXPECT_EQ(r->sampling->seed, 0xfedcba9876543210ull);
    EXPECT_EQ(r->stopping->max_new_tokens, 256u);
    ASSERT_EQ(r->stopping->n_stop, 3u);
    EXPECT_STREQ(r->stopping->stop[2], "User:");
    EXPECT_TRUE(r->stopping->ignore_eos);
    EXPECT_EQ(r->kv->policy, ARKVALE__V1__KV_POLICY__KV_POLICY_ARKVALE);
    EXPECT_EQ(r->kv->budget_tokens, 2048u);
    EXPECT_TRUE(r->return_logprobs);
  }
  EXPECT_EQ(ak_alloc_outstanding_bytes(AK_MEM_HOST), before) << "unpacked messages leaked";
}

// Absent fields stay absent: has_x = 0 is how the coordinator knows to apply a default.
TEST(PbProto, AbsentFieldsStayAbsent) {
  Arkvale__V1__GenerateRequest req;
  arkvale__v1__generate_request__init(&req);
  Arkvale__V1__SamplingParams sp;
  arkvale__v1__sampling_params__init(&sp);
  sp.has_temperature = 1, sp.temperature = 0.0f;  // greedy is a value, not an absence
  req.sampling = &sp;
  PbMsgPtr p = RoundTrip(&req.base);
  ASSERT_TRUE(p);
  auto *r = reinterpret_cast<Arkvale__V1__GenerateRequest *>(p.get());
  EXPECT_EQ(r->request_id, nullptr);
  EXPECT_EQ(r->prompt, nullptr);
  ASSERT_NE(r->sampling, nullptr);
  EXPECT_TRUE(r->sampling->has_temperature);
  EXPECT_EQ(r->sampling->temperature, 0.0f);
  EXPECT_FALSE(r->sampling->has_top_k);
  EXPECT_FALSE(r->sampling->has_seed);
  EXPECT_FALSE(r->has_return_logprobs);
}

// --- Step: a batch of several new and continuing sequences, and its answer ---

TEST(PbProto, StepRequestRoundTripsSeveralSequences) {
  int64_t before = ak_alloc_outstanding_bytes(AK_MEM_HOST);
  const int kNew = 3, kCont = 4;
  std::vector<std::vector<int32_t>> new_tokens(kNew), cont_tokens(kCont);
  std::vector<Arkvale__V1__SamplingParams> sps(kNew);
  std::vector<Arkvale__V1__KvConfig> kvs(kNew);
  std::vector<Arkvale__V1__NewSequence> news(kNew);
  std::vector<Arkvale__V1__NewSequence *> new_ptrs;
  for (int i = 0; i < kNew; i++) {
    for (int t = 0; t < 17 * (i + 1); t++) new_tokens[i].push_back((t * 7919 + i) % 49152);
    arkvale__v1__sampling_params__init(&sps[i]);
    sps[i].has_temperature = 1, sps[i].temperature = 0.5f * (float)i;
    sps[i].has_top_k = 1, sps[i].top_k = (uint32_t)(10 * i);
    sps[i].has_top_p = 1, sps[i].top_p = 0.9f;
    sps[i].has_min_p = 1, sps[i].min_p = 0.01f;
    sps[i].has_repeat_penalty = 1, sps[i].repeat_penalty = 1.0f;
    sps[i].has_repeat_last_n = 1, sps[i].repeat_last_n = 0;
    sps[i].has_seed = 1, sps[i].seed = (uint64_t)i;
    arkvale__v1__kv_config__init(&kvs[i]);
    kvs[i].has_policy = 1, kvs[i].policy = ARKVALE__V1__KV_POLICY__KV_POLICY_ARKVALE;
    kvs[i].has_budget_tokens = 1, kvs[i].budget_tokens = 1024;
    Arkvale__V1__NewSequence *s = &news[i];
    arkvale__v1__new_sequence__init(s);
    s->has_seq_id = 1, s->seq_id = 1000 + (uint64_t)i;
    s->sampling = &sps[i];
    s->kv = &kvs[i];
    s->n_token_ids = new_tokens[i].size(), s->token_ids = new_tokens[i].data();
    s->has_sample = 1, s->sample = i != 1;  // sequence 1 is a first chunk of a long prompt
    s->has_return_logprob = 1, s->return_logprob = i == 2;
    s->has_max_seq_tokens = 1, s->max_seq_tokens = 8192;
    new_ptrs.push_back(s);
  }
  std::vector<Arkvale__V1__ContinuingSequence> conts(kCont);
  std::vector<Arkvale__V1__ContinuingSequence *> cont_ptrs;
  for (int i = 0; i < kCont; i++) {
    cont_tokens[i].push_back(100 + i);
    if (i == 3)
      for (int t = 0; t < 96; t++) cont_tokens[i].push_back(t);  // a later prompt chunk
    Arkvale__V1__ContinuingSequence *c = &conts[i];
    arkvale__v1__continuing_sequence__init(c);
    c->has_seq_id = 1, c->seq_id = 7 + (uint64_t)i;
    c->n_token_ids = cont_tokens[i].size(), c->token_ids = cont_tokens[i].data();
    c->has_sample = 1, c->sample = 1;
    c->has_return_logprob = 1, c->return_logprob = 0;
    // every field set for the round trip (the worker refuses token_ids beside it)
    c->has_feed_sampled_at_step_id = 1, c->feed_sampled_at_step_id = 123456789011ull - (uint64_t)i;
    cont_ptrs.push_back(c);
  }
  uint64_t drops[] = {3, 5, UINT64_MAX};
  Arkvale__V1__StepRequest req;
  arkvale__v1__step_request__init(&req);
  req.has_step_id = 1, req.step_id = 123456789012ull;
  req.n_drop_seq_ids = 3, req.drop_seq_ids = drops;
  req.n_new_seqs = kNew, req.new_seqs = new_ptrs.data();
  req.n_continuing_seqs = kCont, req.continuing_seqs = cont_ptrs.data();
  req.has_previous_step_id = 1, req.previous_step_id = 123456789011ull;
  ASSERT_EQ(PbUnsetFields(&req.base), "");

  PbMsgPtr p = RoundTrip(&req.base);
  ASSERT_TRUE(p);
  auto *r = reinterpret_cast<Arkvale__V1__StepRequest *>(p.get());
  EXPECT_EQ(r->step_id, 123456789012ull);
  EXPECT_TRUE(r->has_previous_step_id);
  EXPECT_EQ(r->previous_step_id, 123456789011ull);
  ASSERT_EQ(r->n_drop_seq_ids, 3u);
  EXPECT_EQ(r->drop_seq_ids[2], UINT64_MAX);
  ASSERT_EQ(r->n_new_seqs, (size_t)kNew);
  for (int i = 0; i < kNew; i++) {
    const Arkvale__V1__NewSequence *s = r->new_seqs[i];
    EXPECT_EQ(s->seq_id, 1000u + (uint64_t)i);
    ASSERT_EQ(s->n_token_ids, new_tokens[i].size());
    EXPECT_EQ(0, memcmp(s->token_ids, new_tokens[i].data(), new_tokens[i].size() * sizeof(int32_t)));
    EXPECT_EQ(s->sampling->temperature, 0.5f * (float)i);
    EXPECT_EQ(s->sampling->seed, (uint64_t)i);
    EXPECT_EQ(s->kv->budget_tokens, 1024u);
    EXPECT_EQ(!!s->sample, i != 1);
    EXPECT_EQ(!!s->return_logprob, i == 2);
  }
  ASSERT_EQ(r->n_continuing_seqs, (size_t)kCont);
  EXPECT_EQ(r->continuing_seqs[3]->n_token_ids, 97u);
  EXPECT_EQ(r->continuing_seqs[3]->token_ids[96], 95);
  EXPECT_EQ(r->continuing_seqs[0]->token_ids[0], 100);
  EXPECT_EQ(r->continuing_seqs[2]->feed_sampled_at_step_id, 123456789009ull);
  p.reset();
  EXPECT_EQ(ak_alloc_outstanding_bytes(AK_MEM_HOST), before);
}

TEST(PbProto, StepResponseRoundTripsEveryField) {
  Arkvale__V1__SampledToken toks[3];
  Arkvale__V1__SampledToken *tok_ptrs[3];
  for (int i = 0; i < 3; i++) {
    arkvale__v1__sampled_token__init(&toks[i]);
    toks[i].has_seq_id = 1, toks[i].seq_id = 1000 + (uint64_t)i;
    toks[i].has_token_id = 1, toks[i].token_id = 42 + i;
    toks[i].has_logprob = 1, toks[i].logprob = -0.25f * (float)i;
    tok_ptrs[i] = &toks[i];
  }
  Arkvale__V1__StepTimings tm;
  arkvale__v1__step_timings__init(&tm);
  tm.has_total_us = 1, tm.total_us = 1234.5;
  tm.has_admit_us = 1, tm.admit_us = 3.25;
  tm.has_forward_us = 1, tm.forward_us = 1100.125;
  tm.has_sample_us = 1, tm.sample_us = 40.0;
  tm.has_estimate_us = 1, tm.estimate_us = 12.5;
  tm.has_select_us = 1, tm.select_us = 2.0;
  tm.has_recall_us = 1, tm.recall_us = 30.75;
  tm.has_n_tokens = 1, tm.n_tokens = 311;
  Arkvale__V1__KvWork w[2];
  for (int i = 0; i < 2; i++) {
    uint64_t k = i ? 1000 : 1;
    arkvale__v1__kv_work__init(&w[i]);
    w[i].has_recalls = 1, w[i].recalls = 3 * k;
    w[i].has_evictions = 1, w[i].evictions = 4 * k;
    w[i].has_drops = 1, w[i].drops = 0;
    w[i].has_backups = 1, w[i].backups = 5 * k;
    w[i].has_bytes_recalled = 1, w[i].bytes_recalled = 3 * k * 65536;
    w[i].has_bytes_backed_up = 1, w[i].bytes_backed_up = 5 * k * 65536;
  }
  Arkvale__V1__KvCounters kv;
  arkvale__v1__kv_counters__init(&kv);
  kv.has_n_seqs = 1, kv.n_seqs = 7;
  kv.has_n_pages_total = 1, kv.n_pages_total = 1ull << 33;  // past 32 bits on purpose
  kv.has_n_pages_used = 1, kv.n_pages_used = 900;
  kv.has_n_backups = 1, kv.n_backups = 5000;
  kv.has_backup_bytes = 1, kv.backup_bytes = 5000ull * 65536;
  kv.step = &w[0];
  kv.total = &w[1];
  Arkvale__V1__StepResponse resp;
  arkvale__v1__step_response__init(&resp);
  resp.has_step_id = 1, resp.step_id = 77;
  resp.n_samples = 3, resp.samples = tok_ptrs;
  resp.timings = &tm;
  resp.kv = &kv;
  resp.has_sampled_on_device = 1, resp.sampled_on_device = 1;
  ASSERT_EQ(PbUnsetFields(&resp.base), "");

  PbMsgPtr p = RoundTrip(&resp.base);
  ASSERT_TRUE(p);
  auto *r = reinterpret_cast<Arkvale__V1__StepResponse *>(p.get());
  EXPECT_EQ(r->step_id, 77u);
  ASSERT_EQ(r->n_samples, 3u);
  EXPECT_EQ(r->samples[2]->token_id, 44);
  EXPECT_EQ(r->samples[2]->logprob, -0.5f);
  EXPECT_EQ(r->timings->forward_us, 1100.125);
  EXPECT_EQ(r->timings->n_tokens, 311u);
  EXPECT_EQ(r->kv->n_pages_total, 1ull << 33);
  EXPECT_EQ(r->kv->total->bytes_backed_up, 5000ull * 65536);
  EXPECT_EQ(r->kv->step->recalls, 3u);
  EXPECT_TRUE(r->has_sampled_on_device && r->sampled_on_device);
}

// The other messages of both services survive a round trip with every field set too;
// built generically from the descriptors so a new message cannot be forgotten.
static void FillEveryField(ProtobufCMessage *m, std::vector<std::shared_ptr<void>> *keep, int depth) {
  const ProtobufCMessageDescriptor *d = m->descriptor;
  char *base = reinterpret_cast<char *>(m);
  std::set<unsigned> oneof_done;
  for (unsigned i = 0; i < d->n_fields; i++) {
    const ProtobufCFieldDescriptor *f = &d->fields[i];
    bool oneof = (f->flags & PROTOBUF_C_FIELD_FLAG_ONEOF) != 0;
    if (oneof && !oneof_done.insert(f->quantifier_offset).second) continue;
    size_t elem_bytes = 0;
    switch (f->type) {
      case PROTOBUF_C_TYPE_STRING: case PROTOBUF_C_TYPE_MESSAGE: elem_bytes = sizeof(void *); break;
      case PROTOBUF_C_TYPE_BYTES: elem_bytes = sizeof(ProtobufCBinaryData); break;
      case PROTOBUF_C_TYPE_INT64: case PROTOBUF_C_TYPE_SINT64: case PROTOBUF_C_TYPE_UINT64:
      case PROTOBUF_C_TYPE_SFIXED64: case PROTOBUF_C_TYPE_FIXED64: case PROTOBUF_C_TYPE_DOUBLE: elem_bytes = 8; break;
      case PROTOBUF_C_TYPE_BOOL: elem_bytes = sizeof(protobuf_c_boolean); break;
      default: elem_bytes = 4; break;
    }
    size_t n = f->label == PROTOBUF_C_LABEL_REPEATED ? 2 : 1;
    std::shared_ptr<void> storage(calloc(n, elem_bytes), free);
    keep->push_back(storage);
    char *elems = static_cast<char *>(storage.get());
    for (size_t j = 0; j < n; j++) {
      char *e = elems + j * elem_bytes;
      switch (f->type) {
        case PROTOBUF_C_TYPE_STRING: *reinterpret_cast<const char **>(e) = "x"; break;
        case PROTOBUF_C_TYPE_MESSAGE: {
          auto *sd = static_cast<const ProtobufCMessageDescriptor *>(f->descriptor);
          std::shared_ptr<void> sub(calloc(1, sd->sizeof_message), free);
          keep->push_back(sub);
          sd->message_init(static_cast<ProtobufCMessage *>(sub.get()));
          ASSERT_LT(depth, 8);
          FillEveryField(static_cast<ProtobufCMessage *>(sub.get()), keep, depth + 1);
          *reinterpret_cast<void **>(e) = sub.get();
          break;
        }
        case PROTOBUF_C_TYPE_ENUM:
          *reinterpret_cast<int *>(e) = static_cast<const ProtobufCEnumDescriptor *>(f->descriptor)->values[1].value;
          break;
        case PROTOBUF_C_TYPE_BOOL: *reinterpret_cast<protobuf_c_boolean *>(e) = 1; break;
        case PROTOBUF_C_TYPE_FLOAT: *reinterpret_cast<float *>(e) = 1.5f; break;
        case PROTOBUF_C_TYPE_DOUBLE: *reinterpret_cast<double *>(e) = 2.5; break;
        default:
          if (elem_bytes == 8) *reinterpret_cast<uint64_t *>(e) = 3;
          else *reinterpret_cast<uint32_t *>(e) = 3;
          break;
      }
    }
    if (f->label == PROTOBUF_C_LABEL_REPEATED) {
      *reinterpret_cast<size_t *>(base + f->quantifier_offset) = n;
      *reinterpret_cast<void **>(base + f->offset) = elems;
    } else {
      memcpy(base + f->offset, elems, elem_bytes);
      if (oneof) *reinterpret_cast<uint32_t *>(base + f->quantifier_offset) = f->id;
      else if (f->type != PROTOBUF_C_TYPE_STRING && f->type != PROTOBUF_C_TYPE_MESSAGE)
        *reinterpret_cast<protobuf_c_boolean *>(base + f->quantifier_offset) = 1;
    }
  }
}

// Every message type of arkvale.v1, by its descriptor (the .proto lint below checks
// that this list and the .proto files declare the same number of messages).
static const ProtobufCMessageDescriptor *const kAllMessages[] = {
    &arkvale__v1__kv_config__descriptor,           &arkvale__v1__sampling_params__descriptor,
    &arkvale__v1__token_ids__descriptor,           &arkvale__v1__chat_message__descriptor,
    &arkvale__v1__chat__descriptor,                &arkvale__v1__prompt__descriptor,
    &arkvale__v1__stopping_criteria__descriptor,   &arkvale__v1__generate_request__descriptor,
    &arkvale__v1__usage__descriptor,               &arkvale__v1__generate_response__descriptor,
    &arkvale__v1__abort_request__descriptor,       &arkvale__v1__abort_response__descriptor,
    &arkvale__v1__count_tokens_request__descriptor, &arkvale__v1__count_tokens_response__descriptor,
    &arkvale__v1__tokenize_request__descriptor,    &arkvale__v1__tokenize_response__descriptor,
    &arkvale__v1__get_model_info_request__descriptor, &arkvale__v1__get_model_info_response__descriptor,
    &arkvale__v1__info_request__descriptor,        &arkvale__v1__info_response__descriptor,
    &arkvale__v1__warmup_request__descriptor,      &arkvale__v1__warmup_response__descriptor,
    &arkvale__v1__new_sequence__descriptor,        &arkvale__v1__continuing_sequence__descriptor,
    &arkvale__v1__step_request__descriptor,        &arkvale__v1__sampled_token__descriptor,
    &arkvale__v1__step_timings__descriptor,        &arkvale__v1__kv_work__descriptor,
    &arkvale__v1__kv_counters__descriptor,         &arkvale__v1__step_response__descriptor,
    &arkvale__v1__release_request__descriptor,     &arkvale__v1__release_response__descriptor,
    &arkvale__v1__health_request__descriptor,      &arkvale__v1__health_response__descriptor,
};

TEST(PbProto, EveryMessageRoundTripsWithEveryFieldSet) {
  int64_t before = ak_alloc_outstanding_bytes(AK_MEM_HOST);
  for (const ProtobufCMessageDescriptor *d : kAllMessages) {
    SCOPED_TRACE(d->name);
    std::vector<std::shared_ptr<void>> keep;
    std::shared_ptr<void> mem(calloc(1, d->sizeof_message), free);
    auto *m = static_cast<ProtobufCMessage *>(mem.get());
    d->message_init(m);
    FillEveryField(m, &keep, 0);
    ASSERT_EQ(PbUnsetFields(m), "");
    PbMsgPtr p = RoundTrip(m);
    ASSERT_TRUE(p);
    EXPECT_EQ(PbUnsetFields(p.get()), "");
  }
  EXPECT_EQ(ak_alloc_outstanding_bytes(AK_MEM_HOST), before);
}

// --- names: the descriptors' full names are the wire's names and gRPC's paths ---

TEST(PbProto, DescriptorsAreNamedArkvaleV1) {
  for (const ProtobufCMessageDescriptor *d : kAllMessages) {
    EXPECT_STREQ(d->package_name, "arkvale.v1") << d->name;
    EXPECT_EQ(std::string(d->name), std::string("arkvale.v1.") + d->short_name);
  }
  const ProtobufCEnumDescriptor *enums[] = {&arkvale__v1__kv_policy__descriptor,
                                            &arkvale__v1__finish_reason__descriptor,
                                            &arkvale__v1__device_kind__descriptor,
                                            &arkvale__v1__worker_state__descriptor};
  for (const ProtobufCEnumDescriptor *e : enums) {
    EXPECT_EQ(std::string(e->name), std::string("arkvale.v1.") + e->short_name);
    // Value 0 is <ENUM>_UNSPECIFIED: what an absent or unknown value reads as.
    ASSERT_GE(e->n_values, 2u);
    EXPECT_EQ(e->values[0].value, 0) << e->name;
    std::string v0 = e->values[0].name;
    EXPECT_TRUE(v0.size() > 12 && v0.compare(v0.size() - 12, 12, "_UNSPECIFIED") == 0) << e->name << ": " << v0;
  }
  struct {
    const ProtobufCServiceDescriptor *d;
    const char *name;
    std::vector<std::string> methods;
  } services[] = {
      {&arkvale__v1__generation__descriptor, "arkvale.v1.Generation",
       {"Generate", "Abort", "CountTokens", "Tokenize", "GetModelInfo"}},
      {&arkvale__v1__worker__descriptor, "arkvale.v1.Worker", {"Info", "Warmup", "Step", "Release", "Health"}},
  };
  for (auto &s : services) {
    EXPECT_STREQ(s.d->name, s.name);
    ASSERT_EQ(s.d->n_methods, s.methods.size()) << s.name;
    for (size_t i = 0; i < s.methods.size(); i++) EXPECT_EQ(s.d->methods[i].name, s.methods[i]) << s.name;
  }
  // The gRPC method path a client calls: "/<service full name>/<method>".
  EXPECT_EQ(std::string("/") + arkvale__v1__worker__descriptor.name + "/" + arkvale__v1__worker__descriptor.methods[2].name,
            "/arkvale.v1.Worker/Step");
}

// --- the .proto text itself ---

struct ProtoFile {
  std::string path;
  std::vector<std::string> lines;
};

static std::vector<ProtoFile> ReadProtos() {
  std::vector<ProtoFile> files;
  std::stringstream list(AK_PROTO_FILES);
  std::string rel;
  while (std::getline(list, rel, ':')) {
    ProtoFile f{std::string(AK_PROTO_DIR) + "/" + rel, {}};
    std::ifstream in(f.path);
    EXPECT_TRUE(in.good()) << f.path;
    for (std::string line; std::getline(in, line);) f.lines.push_back(line);
    files.push_back(f);
  }
  return files;
}

// A field ("optional uint32 n = 3;", "string text = 1;" in a oneof) or an enum value
// ("KV_POLICY_FULL = 1;").
static const std::regex kFieldLine(R"(^\s*((optional|repeated|required)\s+)?[A-Za-z_][\w.]*\s+[A-Za-z_]\w*\s*=\s*\d+\s*(\[[^\]]*\])?\s*;)");
static const std::regex kEnumValueLine(R"(^\s*[A-Z][A-Z0-9_]*\s*=\s*-?\d+\s*(\[[^\]]*\])?\s*;)");

static bool IsCommentLine(const std::string &s) { return std::regex_search(s, std::regex(R"(^\s*//)")); }

// Lines "file:line: text" of fields and enum values without a comment on the line or
// on the line above. `n_checked` counts the fields and values seen.
static std::vector<std::string> UncommentedFields(const std::vector<std::string> &lines, const std::string &path,
                                                  int *n_checked) {
  std::vector<std::string> bad;
  for (size_t i = 0; i < lines.size(); i++) {
    const std::string &s = lines[i];
    if (!std::regex_search(s, kFieldLine) && !std::regex_search(s, kEnumValueLine)) continue;
    if (s.find("syntax") != std::string::npos) continue;
    (*n_checked)++;
    bool commented = s.find("//") != std::string::npos || (i > 0 && IsCommentLine(lines[i - 1]));
    if (!commented) bad.push_back(path + ":" + std::to_string(i + 1) + ": " + s);
  }
  return bad;
}

TEST(PbProto, LintCatchesAnUncommentedField) {
  std::vector<std::string> text = {
      "message M {", "  // in pages", "  optional uint32 a_pages = 1;", "  optional uint32 b = 2;",
      "  repeated int32 c = 3 [packed = true];  // token ids", "}", "enum E {", "  E_UNSPECIFIED = 0;", "}"};
  int n = 0;
  auto bad = UncommentedFields(text, "t.proto", &n);
  EXPECT_EQ(n, 4);
  ASSERT_EQ(bad.size(), 2u);
  EXPECT_NE(bad[0].find("t.proto:4"), std::string::npos);
  EXPECT_NE(bad[1].find("t.proto:8"), std::string::npos);
}

TEST(PbProto, EveryFieldAndEnumValueIsCommented) {
  int n_checked = 0;
  std::string bad;
  auto files = ReadProtos();
  ASSERT_EQ(files.size(), 3u);
  for (auto &f : files)
    for (auto &b : UncommentedFields(f.lines, f.path, &n_checked)) bad += b + "\n";
  EXPECT_EQ(bad, "") << "every field says its unit and lifetime in a comment (STYLE.md)";
  EXPECT_GT(n_checked, 100) << "the lint found too few fields: its patterns no longer match the files";
}

TEST(PbProto, FilesAreProto2InArkvaleV1WithUnspecifiedZeros) {
  int n_messages = 0;
  for (auto &f : ReadProtos()) {
    SCOPED_TRACE(f.path);
    bool syntax = false, package = false;
    for (size_t i = 0; i < f.lines.size(); i++) {
      const std::string &s = f.lines[i];
      if (s == "syntax = \"proto2\";") syntax = true;
      if (s == "package arkvale.v1;") package = true;
      if (std::regex_search(s, std::regex(R"(^message \w+)"))) n_messages++;
      EXPECT_FALSE(std::regex_search(s, std::regex(R"(^\s*required\s)"))) << "line " << i + 1 << ": no required fields";
      std::smatch m;
      if (std::regex_search(s, m, std::regex(R"(^enum (\w+))"))) {
        // the first value line of the enum must be NAME_UNSPECIFIED = 0
        size_t j = i + 1;
        while (j < f.lines.size() && !std::regex_search(f.lines[j], kEnumValueLine)) j++;
        ASSERT_LT(j, f.lines.size());
        EXPECT_TRUE(std::regex_search(f.lines[j], std::regex(R"(^\s*[A-Z0-9_]+_UNSPECIFIED\s*=\s*0\s*;)")))
            << "enum " << m[1] << ": " << f.lines[j];
      }
    }
    EXPECT_TRUE(syntax);
    EXPECT_TRUE(package);
  }
  EXPECT_EQ(n_messages, (int)(sizeof kAllMessages / sizeof kAllMessages[0]))
      << "a message was added to the .proto files: add it to kAllMessages";
}
