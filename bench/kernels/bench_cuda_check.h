// bench_cuda_check: the exit-on-failure checks the GPU microbenchmarks share (a
// benchmark stops at the first failed CUDA or arkvale call, naming it).
#ifndef BENCH_CUDA_CHECK_H
#define BENCH_CUDA_CHECK_H

#include <cuda_runtime.h>
#include <stdio.h>
#include <stdlib.h>

// A CUDA runtime call that must succeed.
#define BENCH_CHECK(x)                                                                   \
  do {                                                                                   \
    cudaError_t e_ = (x);                                                                \
    if (e_ != cudaSuccess) {                                                             \
      fprintf(stderr, "%s:%d: %s: %s\n", __FILE__, __LINE__, #x, cudaGetErrorString(e_)); \
      exit(1);                                                                           \
    }                                                                                    \
  } while (0)

// An arkvale call that must return AK_OK; `err` is the ak_err_t it filled.
#define BENCH_OK(x, err)                                                                  \
  do {                                                                                    \
    if ((x) != AK_OK) {                                                                   \
      fprintf(stderr, "%s:%d: %s failed: %s\n", __FILE__, __LINE__, #x, (err).msg);       \
      exit(1);                                                                            \
    }                                                                                     \
  } while (0)

#endif
