// Tests for worker/wk_worker_main.c: the arkvale-worker process on loopback. It prints
// "listening on PORT" for --listen 127.0.0.1:0, answers the Worker service there, and
// on SIGTERM drains and exits 0; bad flags exit 2 before loading anything.
#include <gtest/gtest.h>

#include <chrono>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <thread>
#include <vector>

#include <sys/wait.h>
#include <unistd.h>

extern "C" {
#include "ak_rpc_client.h"
#include "arkvale/v1/worker.pb-c.h"
#include "pb_buf.h"
}

namespace {

const char *model_path() {
  const char *env = getenv("ARKVALE_MODEL");
  return env && *env ? env : AK_MODEL_PATH;
}

bool have_model() {
  FILE *f = fopen(model_path(), "rb");
  if (f) fclose(f);
  return f != nullptr;
}

// Starts arkvale-worker with `args`; its stdout is *out_fd. Returns the pid.
pid_t spawn(const std::vector<std::string> &args, int *out_fd) {
  int fds[2];
  if (pipe(fds) != 0) return -1;
  pid_t pid = fork();
  if (pid == 0) {
    dup2(fds[1], 1);
    close(fds[0]);
    close(fds[1]);
    std::vector<char *> argv;
    argv.push_back((char *)AK_WORKER_BIN);
    for (auto &a : args) argv.push_back((char *)a.c_str());
    argv.push_back(nullptr);
    execv(AK_WORKER_BIN, argv.data());
    _exit(127);
  }
  close(fds[1]);
  *out_fd = fds[0];
  return pid;
}

// Waits up to `secs` for the child; its exit code, or -1 if it did not exit.
int wait_exit(pid_t pid, int secs) {
  for (int i = 0; i < secs * 100; i++) {
    int status = 0;
    pid_t r = waitpid(pid, &status, WNOHANG);
    if (r == pid) return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  kill(pid, SIGKILL);
  waitpid(pid, nullptr, 0);
  return -1;
}

}  // namespace

TEST(WkWorkerMain, BadFlagsExit2) {
  int fd = -1;
  pid_t pid = spawn({"--model", "/nonexistent.gguf", "--max-seqs", "many"}, &fd);
  ASSERT_GT(pid, 0);
  EXPECT_EQ(wait_exit(pid, 30), 2);
  close(fd);
  pid = spawn({"--listen"}, &fd);
  EXPECT_EQ(wait_exit(pid, 30), 2);
  close(fd);
}

TEST(WkWorkerMain, ServesThenDrainsOnSigterm) {
  if (!have_model()) GTEST_SKIP() << "model " << model_path() << " is absent (set ARKVALE_MODEL)";
  int fd = -1;
  pid_t pid = spawn({"--model", model_path(), "--listen", "127.0.0.1:0", "--threads", "1", "--max-seqs", "2",
                     "--max-seq-tokens", "128", "--page-tokens", "16", "--max-batch-tokens", "32"},
                    &fd);
  ASSERT_GT(pid, 0);
  FILE *out = fdopen(fd, "r");
  char line[128] = {0};
  ASSERT_NE(fgets(line, sizeof line, out), nullptr) << "no output from arkvale-worker";
  int port = 0;
  ASSERT_EQ(sscanf(line, "listening on %d", &port), 1) << line;
  ASSERT_GT(port, 0);

  ak_rpc_client_t *cli = nullptr;
  ak_err_t err;
  std::string target = "127.0.0.1:" + std::to_string(port);
  ASSERT_EQ(ak_rpc_client_create(target.c_str(), &err, &cli), AK_OK) << err.msg;
  Arkvale__V1__WarmupRequest wq = ARKVALE__V1__WARMUP_REQUEST__INIT;
  ProtobufCMessage *resp = nullptr;
  ASSERT_EQ(ak_rpc_client_unary(cli, "/arkvale.v1.Worker/Warmup", &wq.base, &arkvale__v1__warmup_response__descriptor,
                                1 << 20, 60000, &err, nullptr, &resp),
            AK_OK)
      << err.msg;
  EXPECT_EQ(((Arkvale__V1__WarmupResponse *)resp)->max_batch_tokens, 32u);
  pb_msg_free(resp);
  Arkvale__V1__HealthRequest hq = ARKVALE__V1__HEALTH_REQUEST__INIT;
  ASSERT_EQ(ak_rpc_client_unary(cli, "/arkvale.v1.Worker/Health", &hq.base, &arkvale__v1__health_response__descriptor,
                                1 << 20, 60000, &err, nullptr, &resp),
            AK_OK)
      << err.msg;
  EXPECT_EQ(((Arkvale__V1__HealthResponse *)resp)->state, ARKVALE__V1__WORKER_STATE__WORKER_STATE_READY);
  pb_msg_free(resp);
  ak_rpc_client_destroy(cli);

  ASSERT_EQ(kill(pid, SIGTERM), 0);
  EXPECT_EQ(wait_exit(pid, 60), 0);
  fclose(out);
}
