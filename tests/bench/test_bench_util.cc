// test_bench_util: where a benchmark's results file takes its commit from
// (bench/common/bench_util.h, bench_commit_of): an install tree's MANIFEST.txt first, else
// git in the working directory, else "unknown".
#include <gtest/gtest.h>
#include <stdlib.h>
#include <unistd.h>

#include <fstream>
#include <string>

extern "C" {
#include "bench_util.h"
}

namespace {

std::string CommitOf(const std::string &exe) {
  char out[256];
  bench_commit_of(exe.c_str(), out, sizeof out);
  return out;
}

// The first line of a shell command's output, run in the current directory.
std::string Sh(const std::string &cmd) {
  FILE *p = popen(cmd.c_str(), "r");
  if (!p) return "";
  char line[256] = "";
  if (!fgets(line, sizeof line, p)) line[0] = 0;
  pclose(p);
  std::string s = line;
  if (!s.empty() && s.back() == '\n') s.pop_back();
  return s;
}

// A scratch folder, the working directory while it lives; both undone at the end.
class BenchCommit : public ::testing::Test {
 protected:
  void SetUp() override {
    char tmpl[] = "/tmp/test_bench_util.XXXXXX";
    ASSERT_NE(mkdtemp(tmpl), nullptr);
    dir_ = tmpl;
    ASSERT_NE(getcwd(old_cwd_, sizeof old_cwd_), nullptr);
    ASSERT_EQ(chdir(dir_.c_str()), 0);
  }
  void TearDown() override {
    ASSERT_EQ(chdir(old_cwd_), 0);
    ASSERT_EQ(system(("rm -rf '" + dir_ + "'").c_str()), 0);
  }
  void Write(const std::string &rel, const std::string &text) {
    std::ofstream(dir_ + "/" + rel) << text;
  }
  std::string dir_;
  char old_cwd_[4096];
};

TEST_F(BenchCommit, TheInstallTreesManifestComesFirst) {
  ASSERT_EQ(system("mkdir -p tree/bin"), 0);
  Write("tree/MANIFEST.txt", "arkvale install tree (scripts/make_install_tree.sh)\ncommit: 056a2d4ad2cd\nbuilt in: x\n");
  EXPECT_EQ(CommitOf(dir_ + "/tree/bin/bench_passkey"), "056a2d4ad2cd (from the install tree's MANIFEST.txt)");
  // Even inside a git checkout: a GPU host's copy of the checkout can be stale.
  ASSERT_EQ(system("git init -q . && git -c user.name=t -c user.email=t@t commit -q --allow-empty -m x"), 0);
  EXPECT_EQ(CommitOf(dir_ + "/tree/bin/bench_passkey"), "056a2d4ad2cd (from the install tree's MANIFEST.txt)");
}

TEST_F(BenchCommit, GitWithoutATree) {
  ASSERT_EQ(system("git init -q . && git -c user.name=t -c user.email=t@t commit -q --allow-empty -m x"), 0);
  Write("f.txt", "one\n");
  ASSERT_EQ(system("git add f.txt && git -c user.name=t -c user.email=t@t commit -q -m f"), 0);
  const std::string head = Sh("git rev-parse --short HEAD");
  ASSERT_FALSE(head.empty());
  // A build tree's binary: no MANIFEST.txt above it.
  EXPECT_EQ(CommitOf(dir_ + "/build/bench/bench_passkey"), head);
  // A MANIFEST.txt without a commit line does not count.
  ASSERT_EQ(system("mkdir -p tree/bin"), 0);
  Write("tree/MANIFEST.txt", "arkvale install tree\n");
  EXPECT_EQ(CommitOf(dir_ + "/tree/bin/bench_passkey"), head);
  // A tracked file changed: said so; an untracked one is not a change of the code.
  Write("new.txt", "untracked\n");
  EXPECT_EQ(CommitOf(dir_ + "/build/bench/bench_passkey"), head);
  Write("f.txt", "two\n");
  EXPECT_EQ(CommitOf(dir_ + "/build/bench/bench_passkey"), head + " (with local changes)");
}

TEST_F(BenchCommit, NeitherIsUnknown) {
  EXPECT_EQ(CommitOf(dir_ + "/build/bench/bench_passkey"), "unknown");
  EXPECT_EQ(CommitOf("bench_passkey"), "unknown");
  EXPECT_EQ(CommitOf(""), "unknown");
}

TEST_F(BenchCommit, TheRunningBinary) {
  // Run outside any checkout, this binary's commit is its install tree's, when it was
  // copied into one (scripts/make_install_tree.sh takes tests too), else unknown.
  char exe[4096];
  ssize_t n = readlink("/proc/self/exe", exe, sizeof exe - 1);
  ASSERT_GT(n, 0);
  exe[n] = 0;
  std::string tree = exe;
  tree = tree.substr(0, tree.rfind('/'));
  tree = tree.substr(0, tree.rfind('/'));
  std::ifstream manifest(tree + "/MANIFEST.txt");
  std::string want = "unknown", line;
  while (std::getline(manifest, line))
    if (line.rfind("commit: ", 0) == 0) {
      want = line.substr(8) + " (from the install tree's MANIFEST.txt)";
      break;
    }
  char out[256];
  bench_commit(out, sizeof out);
  EXPECT_EQ(std::string(out), want);
}

TEST_F(BenchCommit, ShortBuffersAreCut) {
  ASSERT_EQ(system("mkdir -p tree/bin"), 0);
  Write("tree/MANIFEST.txt", "commit: 056a2d4ad2cd\n");
  char out[8];
  bench_commit_of((dir_ + "/tree/bin/x").c_str(), out, sizeof out);
  EXPECT_STREQ(out, "056a2d4");
}

}  // namespace
