// Helpers shared by the kernel tests: one deleter per handle, a seeded RNG, and the
// list of (ISA, thread count) configurations every op is checked under.
#ifndef KN_TEST_UTIL_H
#define KN_TEST_UTIL_H

#include <gtest/gtest.h>

#include <cstdint>
#include <memory>
#include <random>
#include <string>
#include <vector>

extern "C" {
#include "ak_quant.h"
#include "kernels.h"
}

struct KnCpuDeleter {
  void operator()(kn_cpu_t *c) const { kn_cpu_destroy(c); }
};
using KnCpuPtr = std::unique_ptr<kn_cpu_t, KnCpuDeleter>;

inline KnCpuPtr kn_test_cpu(int n_threads) {
  kn_cpu_t *c = nullptr;
  ak_err_t err{};
  EXPECT_EQ(kn_cpu_create(n_threads, &err, &c), AK_OK) << err.msg;
  return KnCpuPtr(c);
}

struct KnConfig {
  kn_isa_t isa;
  int n_threads;
  std::string name() const {
    return std::string(kn_isa_name(isa)) + "/" + std::to_string(n_threads) + "t";
  }
};

// Every ISA this machine supports, each with 1 and 2 threads.
inline std::vector<KnConfig> kn_test_configs() {
  std::vector<KnConfig> out;
  kn_isa_t max_isa = kn_cpu_detect_isa();
  for (int isa = KN_ISA_PORTABLE; isa <= (int)max_isa; isa++)
    for (int nt : {1, 2}) out.push_back({(kn_isa_t)isa, nt});
  return out;
}

inline KnCpuPtr kn_test_cpu(const KnConfig &cfg) {
  KnCpuPtr c = kn_test_cpu(cfg.n_threads);
  EXPECT_EQ(kn_cpu_set_isa(c.get(), cfg.isa), AK_OK);
  return c;
}

struct KnRng {
  std::mt19937_64 gen;
  explicit KnRng(uint64_t seed) : gen(seed) {}
  float uniform(float lo, float hi) { return std::uniform_real_distribution<float>(lo, hi)(gen); }
  int uniform_int(int lo, int hi) { return std::uniform_int_distribution<int>(lo, hi)(gen); }
  std::vector<float> floats(size_t n, float lo, float hi) {
    std::vector<float> v(n);
    for (auto &x : v) x = uniform(lo, hi);
    return v;
  }
};

// A byte buffer whose data starts `misalign` bytes past a 64-byte boundary, to check
// that ops do not assume aligned inputs.
struct KnBuf {
  std::vector<uint8_t> raw;
  size_t misalign;
  KnBuf(size_t n_bytes, size_t misalign_bytes) : raw(n_bytes + 128), misalign(misalign_bytes) {}
  uint8_t *data() {
    uintptr_t p = reinterpret_cast<uintptr_t>(raw.data());
    return raw.data() + ((64 - p % 64) % 64) + misalign;
  }
};

#endif
