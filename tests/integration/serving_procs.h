// Helpers for the integration tests: start the real binaries (arkvale-worker,
// arkvale-coordinator, arkvale serve) as child processes on loopback, read the ports
// they print, signal them and wait for their exit codes. Header-only, test code.
#ifndef SERVING_PROCS_H
#define SERVING_PROCS_H

#include <chrono>
#include <csignal>
#include <cstdio>
#include <cstring>
#include <string>
#include <thread>
#include <vector>

#include <fcntl.h>
#include <poll.h>
#include <sys/wait.h>
#include <unistd.h>

namespace serving_test {

inline int64_t now_ms() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

// One child process with its stdout on a pipe (stderr is inherited, ctest keeps it,
// unless merged).
struct Proc {
  pid_t pid = -1;
  int out_fd = -1;
  int exit_code = -2;  // after Wait: the code, 128 + signal, or -1 if it did not exit
  std::string out;     // what was read from stdout so far

  Proc() = default;
  Proc(const Proc &) = delete;
  Proc &operator=(const Proc &) = delete;
  ~Proc() { Kill(); }

  // merge_stderr: stderr goes to the same pipe (to read a child's error message).
  bool Start(const char *bin, const std::vector<std::string> &args, bool merge_stderr = false) {
    int fds[2];
    if (pipe(fds) != 0) return false;
    pid = fork();
    if (pid == 0) {
      dup2(fds[1], 1);
      if (merge_stderr) dup2(fds[1], 2);
      close(fds[0]);
      close(fds[1]);
      std::vector<char *> argv;
      argv.push_back((char *)bin);
      for (auto &a : args) argv.push_back((char *)a.c_str());
      argv.push_back(nullptr);
      execv(bin, argv.data());
      _exit(127);
    }
    close(fds[1]);
    out_fd = fds[0];
    exit_code = -2;
    out.clear();
    return pid > 0;
  }

  // Reads stdout until a line containing `key` arrives (at most timeout_ms); returns
  // that line, or "" when it did not come (EOF or timeout).
  std::string WaitLine(const char *key, int timeout_ms) {
    int64_t end = now_ms() + timeout_ms;
    for (;;) {
      size_t nl;
      while ((nl = out.find('\n')) != std::string::npos) {
        std::string line = out.substr(0, nl);
        out.erase(0, nl + 1);
        if (line.find(key) != std::string::npos) return line;
      }
      int64_t left = end - now_ms();
      if (left <= 0 || out_fd < 0) return "";
      struct pollfd p = {out_fd, POLLIN, 0};
      if (poll(&p, 1, (int)left) <= 0) continue;
      char buf[256];
      ssize_t n = read(out_fd, buf, sizeof buf);
      if (n <= 0) return "";
      out.append(buf, (size_t)n);
    }
  }

  // The port from a "<key> PORT" line, or -1.
  int WaitPort(const char *key, int timeout_ms) {
    std::string line = WaitLine(key, timeout_ms);
    size_t at = line.find(key);
    if (at == std::string::npos) return -1;
    return atoi(line.c_str() + at + strlen(key));
  }

  void Signal(int sig) {
    if (pid > 0) kill(pid, sig);
  }

  // Waits up to timeout_ms for the exit; its code (see exit_code).
  int Wait(int timeout_ms) {
    if (pid <= 0) return exit_code;
    int64_t end = now_ms() + timeout_ms;
    for (;;) {
      int status = 0;
      pid_t r = waitpid(pid, &status, WNOHANG);
      if (r == pid) {
        exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
        pid = -1;
        break;
      }
      if (now_ms() >= end) return exit_code = -1;
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    if (out_fd >= 0) close(out_fd), out_fd = -1;
    return exit_code;
  }

  void Kill() {
    if (pid > 0) {
      kill(pid, SIGKILL);
      waitpid(pid, nullptr, 0);
      pid = -1;
    }
    if (out_fd >= 0) close(out_fd), out_fd = -1;
  }
};

}  // namespace serving_test

#endif
