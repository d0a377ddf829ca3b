// Tests for tools/arkvale_remote.c (`arkvale generate --server`): the built `arkvale`
// binary, run as a subprocess, against the public Generation service (co_service)
// started in-process over an in-process Worker service (wk_service) on loopback, with
// the real default model. Greedy text equals what the service streams to a direct
// client, whose tokens equal the in-process engine's; chat and a seeded sampled run
// match the in-process `arkvale generate -m` and a direct request with the same fields;
// stop strings and the usage line; server statuses (INVALID_ARGUMENT, a deadline) are
// printed as "server said CODE: message" with exit 1; a server that went away is
// UNAVAILABLE naming the address. Flag refusals without a server: tests/tools/CMakeLists.txt.
#include <gtest/gtest.h>

#include <fcntl.h>
#include <poll.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <string>
#include <vector>

extern "C" {
#include "ak_rpc_client.h"
#include "arkvale/v1/generation.pb-c.h"
#include "co_service.h"
#include "pb_buf.h"
#include "wk_service.h"
}

#include "wk_service_test_util.h"

extern char **environ;

using namespace wk_test;

namespace {

const char *kPromptText = "The quick brown fox jumps over the lazy dog. Once upon a time,";

// One finished subprocess: its exit code (-1: did not exit normally) and its output.
struct Proc {
  int rc = -1;
  std::string out, err;
};

// Runs argv[0] with argv, stdin from /dev/null, stdout and stderr captured apart.
Proc RunProcess(const std::vector<std::string> &args) {
  Proc r;
  int out_pipe[2], err_pipe[2];
  if (pipe(out_pipe) != 0 || pipe(err_pipe) != 0) {
    ADD_FAILURE() << "pipe: " << strerror(errno);
    return r;
  }
  posix_spawn_file_actions_t fa;
  posix_spawn_file_actions_init(&fa);
  posix_spawn_file_actions_addopen(&fa, 0, "/dev/null", O_RDONLY, 0);
  posix_spawn_file_actions_adddup2(&fa, out_pipe[1], 1);
  posix_spawn_file_actions_adddup2(&fa, err_pipe[1], 2);
  for (int fd : {out_pipe[0], out_pipe[1], err_pipe[0], err_pipe[1]}) posix_spawn_file_actions_addclose(&fa, fd);
  std::vector<char *> argv;
  for (const auto &a : args) argv.push_back(const_cast<char *>(a.c_str()));
  argv.push_back(nullptr);
  pid_t pid = 0;
  int sp = posix_spawn(&pid, argv[0], &fa, nullptr, argv.data(), environ);
  posix_spawn_file_actions_destroy(&fa);
  close(out_pipe[1]);
  close(err_pipe[1]);
  if (sp != 0) {
    ADD_FAILURE() << "posix_spawn " << args[0] << ": " << strerror(sp);
    close(out_pipe[0]);
    close(err_pipe[0]);
    return r;
  }
  struct pollfd fds[2] = {{out_pipe[0], POLLIN, 0}, {err_pipe[0], POLLIN, 0}};
  std::string *dst[2] = {&r.out, &r.err};
  int open_fds = 2;
  while (open_fds > 0) {
    if (poll(fds, 2, -1) < 0) {
      if (errno == EINTR) continue;
      break;
    }
    for (int i = 0; i < 2; i++) {
      if (fds[i].fd < 0 || !(fds[i].revents & (POLLIN | POLLHUP | POLLERR))) continue;
      char buf[4096];
      ssize_t n = read(fds[i].fd, buf, sizeof buf);
      if (n > 0) {
        dst[i]->append(buf, (size_t)n);
      } else if (n == 0 || errno != EINTR) {
        close(fds[i].fd);
        fds[i].fd = -1;
        open_fds--;
      }
    }
  }
  int status = 0;
  while (waitpid(pid, &status, 0) < 0 && errno == EINTR) {
  }
  r.rc = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  return r;
}

// What one direct Generate stream delivered.
struct Stream {
  std::vector<int32_t> tokens;
  std::string text;
  int finish_reason = -1;
  ak_status_t st = AK_OK;
  std::string msg;
};

int OnMsg(void *user, const ProtobufCMessage *m) {
  auto *s = (Stream *)user;
  auto *r = (const Arkvale__V1__GenerateResponse *)m;
  for (size_t i = 0; i < r->n_token_ids; i++) s->tokens.push_back(r->token_ids[i]);
  if (r->text) s->text += r->text;
  if (r->has_finish_reason) s->finish_reason = r->finish_reason;
  return 0;
}

class ArkvaleRemoteTest : public ::testing::Test {
 protected:
  wk_service_t *wk_ = nullptr;
  co_service_t *co_ = nullptr;
  ak_rpc_client_t *cli_ = nullptr;
  std::string addr_;

  void SetUp() override {
    if (!have_model()) GTEST_SKIP() << "model " << model_path() << " is absent (set ARKVALE_MODEL)";
    wk_service_params_t wp = wk_service_params_default();
    wp.engine = engine_params();
    wp.listen_addr = "127.0.0.1:0";
    ak_err_t err;
    ASSERT_EQ(wk_service_create(&wp, &err, &wk_), AK_OK) << err.msg;
    std::string waddr = "127.0.0.1:" + std::to_string(wk_service_port(wk_));
    co_service_params_t cp = co_service_params_default();
    cp.model_path = model_path();
    cp.worker_addr = waddr.c_str();
    cp.max_batch_tokens = kBatch;
    cp.canary_period_ms = 200;
    ASSERT_EQ(co_service_create(&cp, &err, &co_), AK_OK) << err.msg;
    addr_ = "127.0.0.1:" + std::to_string(co_service_port(co_));
    ASSERT_EQ(ak_rpc_client_create(addr_.c_str(), &err, &cli_), AK_OK) << err.msg;
  }

  void TearDown() override { StopServer(); }

  void StopServer() {
    ak_rpc_client_destroy(cli_);
    co_service_destroy(co_);
    wk_service_destroy(wk_);
    cli_ = nullptr, co_ = nullptr, wk_ = nullptr;
  }

  // `arkvale generate --server <addr> ARGS...`
  Proc Remote(const std::vector<std::string> &args) {
    std::vector<std::string> a = {ARKVALE_BIN, "generate", "--server", addr_};
    a.insert(a.end(), args.begin(), args.end());
    return RunProcess(a);
  }

  // `arkvale generate -m <model> ARGS...`, the in-process engine.
  Proc Local(const std::vector<std::string> &args) {
    std::vector<std::string> a = {ARKVALE_BIN, "generate", "-m", model_path(), "-t", "2"};
    a.insert(a.end(), args.begin(), args.end());
    return RunProcess(a);
  }

  void Generate(const Arkvale__V1__GenerateRequest *q, Stream *s) {
    ak_err_t err;
    ak_err_clear(&err);
    s->st = ak_rpc_client_stream(cli_, "/arkvale.v1.Generation/Generate", &q->base,
                                 &arkvale__v1__generate_response__descriptor, kMax, 120000, OnMsg, s, &err, nullptr);
    s->msg = err.msg;
  }

  std::vector<int32_t> Tokenize(const std::string &text) {
    Arkvale__V1__TokenizeRequest q = ARKVALE__V1__TOKENIZE_REQUEST__INIT;
    q.text = (char *)text.c_str();
    ak_err_t err;
    ProtobufCMessage *r = nullptr;
    EXPECT_EQ(ak_rpc_client_unary(cli_, "/arkvale.v1.Generation/Tokenize", &q.base,
                                  &arkvale__v1__tokenize_response__descriptor, kMax, 60000, &err, nullptr, &r),
              AK_OK)
        << err.msg;
    MsgPtr keep(r);
    auto *t = (const Arkvale__V1__TokenizeResponse *)r;
    return t ? std::vector<int32_t>(t->token_ids, t->token_ids + t->n_token_ids) : std::vector<int32_t>();
  }
};

// A text request as the CLI builds it for `-p kPromptText -n N --ignore-eos` and the
// given temperature / seed (every SamplingParams field set to the CLI's defaults).
struct TextReq {
  Arkvale__V1__GenerateRequest req = ARKVALE__V1__GENERATE_REQUEST__INIT;
  Arkvale__V1__Prompt prompt = ARKVALE__V1__PROMPT__INIT;
  Arkvale__V1__SamplingParams sampling = ARKVALE__V1__SAMPLING_PARAMS__INIT;
  Arkvale__V1__StoppingCriteria stopping = ARKVALE__V1__STOPPING_CRITERIA__INIT;

  TextReq(const char *text, int n, float temp, uint64_t seed) {
    prompt.kind_case = ARKVALE__V1__PROMPT__KIND_TEXT, prompt.text = (char *)text;
    req.prompt = &prompt;
    sampling.has_temperature = 1, sampling.temperature = temp;
    sampling.has_seed = 1, sampling.seed = seed;
    sampling.has_repeat_last_n = 1, sampling.repeat_last_n = 64;
    req.sampling = &sampling;
    stopping.has_max_new_tokens = 1, stopping.max_new_tokens = (uint32_t)n;
    stopping.has_ignore_eos = 1, stopping.ignore_eos = 1;
    req.stopping = &stopping;
  }
};

}  // namespace

TEST_F(ArkvaleRemoteTest, GreedyEqualsServiceAndEngine) {
  Proc r = Remote({"-p", kPromptText, "-n", "16", "--temp", "0", "--ignore-eos"});
  ASSERT_EQ(r.rc, 0) << r.err;
  TextReq q(kPromptText, 16, 0.0f, 42);
  Stream s;
  Generate(&q.req, &s);
  ASSERT_EQ(s.st, AK_OK) << s.msg;
  EXPECT_FALSE(s.text.empty());
  EXPECT_EQ(r.out, s.text + "\n");
  EXPECT_EQ(s.tokens, engine_greedy(Tokenize(kPromptText), 16));
  // The report: usage from the last message, the speed seen here, the finish reason.
  std::string n_prompt = std::to_string(Tokenize(kPromptText).size());
  EXPECT_NE(r.err.find("prompt " + n_prompt + " tokens, first token after "), std::string::npos) << r.err;
  EXPECT_NE(r.err.find("generated 16 tokens in "), std::string::npos) << r.err;
  EXPECT_NE(r.err.find("tok/s decode"), std::string::npos) << r.err;
  EXPECT_NE(r.err.find("stop: length"), std::string::npos) << r.err;
  EXPECT_NE(r.err.find("server " + addr_), std::string::npos) << r.err;
}

TEST_F(ArkvaleRemoteTest, ChatEqualsInProcessGenerate) {
  // The server renders the chat and stops at the end-of-turn token, as the local one.
  std::vector<std::string> args = {"--chat", "-p", "Say hi.", "-n", "48", "--temp", "0"};
  Proc remote = Remote(args), local = Local(args);
  ASSERT_EQ(remote.rc, 0) << remote.err;
  ASSERT_EQ(local.rc, 0) << local.err;
  EXPECT_GT(remote.out.size(), 1u);
  EXPECT_EQ(remote.out, local.out);
  EXPECT_NE(remote.err.find("stop: eos"), std::string::npos) << remote.err;
  // A system message travels as a first chat turn.
  std::vector<std::string> sys = {"--chat", "--system", "You answer in French.", "-p", "Say hi.", "-n", "24",
                                  "--temp", "0"};
  Proc rs = Remote(sys), ls = Local(sys);
  ASSERT_EQ(rs.rc, 0) << rs.err;
  EXPECT_EQ(rs.out, ls.out);
}

TEST_F(ArkvaleRemoteTest, SeededSamplingMapsEveryField) {
  // Temperature and seed as given, the other fields at the CLI's defaults: the same
  // tokens as a direct request with those fields, and the same on a second run.
  Proc a = Remote({"-p", kPromptText, "-n", "12", "--ignore-eos", "--temp", "0.9", "--seed", "7"});
  Proc b = Remote({"-p", kPromptText, "-n", "12", "--ignore-eos", "--temp", "0.9", "--seed", "7"});
  ASSERT_EQ(a.rc, 0) << a.err;
  ASSERT_EQ(b.rc, 0) << b.err;
  EXPECT_EQ(a.out, b.out);
  TextReq q(kPromptText, 12, 0.9f, 7);
  Stream s;
  Generate(&q.req, &s);
  ASSERT_EQ(s.st, AK_OK) << s.msg;
  EXPECT_EQ(a.out, s.text + "\n");
  // A different seed draws differently (12 tokens at 0.9: equal only by a fluke).
  Proc c = Remote({"-p", kPromptText, "-n", "12", "--ignore-eos", "--temp", "0.9", "--seed", "8"});
  ASSERT_EQ(c.rc, 0) << c.err;
  EXPECT_NE(a.out, c.out);
}

TEST_F(ArkvaleRemoteTest, StopStringEndsTheStream) {
  Proc r = Remote({"-p", "1, 2, 3, 4,", "-n", "64", "--temp", "0", "--stop", " 7"});
  ASSERT_EQ(r.rc, 0) << r.err;
  EXPECT_NE(r.err.find("stop: stop"), std::string::npos) << r.err;
  EXPECT_NE(r.out.find("6,"), std::string::npos) << r.out;
  EXPECT_EQ(r.out.find(" 7"), std::string::npos) << r.out;
}

TEST_F(ArkvaleRemoteTest, ServerStatusesArePrinted) {
  // The worker serves only its own policy: the request's kv.policy is refused.
  Proc p = Remote({"-p", "x", "-n", "2", "--kv-policy", "arkvale"});
  EXPECT_EQ(p.rc, 1);
  EXPECT_NE(p.err.find("arkvale generate: server said INVALID_ARGUMENT: kv.policy"), std::string::npos) << p.err;
  // -n 0 is fine locally (no tokens) but not a valid max_new_tokens.
  Proc n = Remote({"-p", "x", "-n", "0"});
  EXPECT_EQ(n.rc, 1);
  EXPECT_NE(n.err.find("server said INVALID_ARGUMENT: stopping.max_new_tokens"), std::string::npos) << n.err;
  // --kv-policy full and a budget travel and are accepted (full ignores the budget).
  Proc f = Remote({"-p", "x", "-n", "2", "--temp", "0", "--kv-policy", "full", "--kv-budget", "64"});
  EXPECT_EQ(f.rc, 0) << f.err;
  // The deadline covers the whole stream.
  Proc d = Remote({"-p", kPromptText, "-n", "200", "--ignore-eos", "--timeout", "0.05"});
  EXPECT_EQ(d.rc, 1);
  EXPECT_NE(d.err.find("server said DEADLINE_EXCEEDED: "), std::string::npos) << d.err;
}

TEST_F(ArkvaleRemoteTest, ServerGoneIsUnavailable) {
  StopServer();  // the port is free again: nothing listens there
  Proc r = Remote({"-p", "x", "-n", "2"});
  EXPECT_EQ(r.rc, 1);
  EXPECT_NE(r.err.find("arkvale generate: server said UNAVAILABLE: "), std::string::npos) << r.err;
  EXPECT_NE(r.err.find(addr_), std::string::npos) << r.err;
  EXPECT_EQ(r.out, "");
}
