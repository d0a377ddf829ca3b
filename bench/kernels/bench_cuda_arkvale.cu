// bench_cuda_arkvale: microbenchmark of the ArkVale CUDA ops at decode shapes —
// digest-scan bandwidth (kn_cuda_digest_score, cuboid-mean in f32 and in f16, every page of a layer),
// top-k latency (kn_cuda_topk, one segment per sequence) and recall bandwidth
// (kn_cuda_gather_pages from mapped pinned host memory and from device memory).
// Times are CUDA-event means over --iters launches after a warm-up; one table out.
//   bench_cuda_arkvale [--pages N] [--page-bytes B] [--batch S] [--kv-heads H]
//                      [--group G] [--head-dim D] [--k K] [--iters I]
// --pages: pages per sequence (scored and top-k'd); the gather copies --pages pages
// of --page-bytes (default 40 x 64 KiB, a step's recalls).
#include <cuda_runtime.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <vector>

extern "C" {
#include "kn_cuda.h"
}

#include "bench_cuda_check.h"

template <typename F>
static double time_us(F f, int iters, cudaStream_t s) {
  cudaEvent_t a, b;
  BENCH_CHECK(cudaEventCreate(&a));
  BENCH_CHECK(cudaEventCreate(&b));
  for (int i = 0; i < 3; i++) f();
  BENCH_CHECK(cudaEventRecord(a, s));
  for (int i = 0; i < iters; i++) f();
  BENCH_CHECK(cudaEventRecord(b, s));
  BENCH_CHECK(cudaEventSynchronize(b));
  float ms = 0;
  BENCH_CHECK(cudaEventElapsedTime(&ms, a, b));
  cudaEventDestroy(a);
  cudaEventDestroy(b);
  return 1e3 * ms / iters;
}

int main(int argc, char **argv) {
  ak_err_t err_ = {};
  long pages = 1000, page_bytes = 64 * 1024, batch = 4, kv_heads = 8, group = 4, head_dim = 128, k = 40, iters = 200;
  for (int i = 1; i + 1 < argc; i += 2) {
    long v = atol(argv[i + 1]);
    if (!strcmp(argv[i], "--pages")) pages = v;
    else if (!strcmp(argv[i], "--page-bytes")) page_bytes = v;
    else if (!strcmp(argv[i], "--batch")) batch = v;
    else if (!strcmp(argv[i], "--kv-heads")) kv_heads = v;
    else if (!strcmp(argv[i], "--group")) group = v;
    else if (!strcmp(argv[i], "--head-dim")) head_dim = v;
    else if (!strcmp(argv[i], "--k")) k = v;
    else if (!strcmp(argv[i], "--iters")) iters = v;
    else {
      fprintf(stderr, "unknown flag %s\n", argv[i]);
      return 2;
    }
  }
  cudaStream_t s;
  BENCH_CHECK(cudaStreamCreate(&s));
  cudaDeviceProp prop;
  BENCH_CHECK(cudaGetDeviceProperties(&prop, 0));
  printf("device: %s, %d SMs\n", prop.name, prop.multiProcessorCount);
  printf("%-44s %12s %12s\n", "op (shape)", "us", "rate");

  // Digest scan: batch * pages cuboid-mean digests.
  const long n_pages = pages * batch, n_heads = kv_heads * group;
  const size_t dg_floats = (size_t)n_pages * kv_heads * 2 * head_dim;
  float *dg, *q, *sc;
  int32_t *seq, *seg, *out;
  BENCH_CHECK(cudaMalloc(&dg, dg_floats * 4));
  BENCH_CHECK(cudaMemset(dg, 0, dg_floats * 4));
  BENCH_CHECK(cudaMalloc(&q, (size_t)batch * n_heads * head_dim * 4));
  BENCH_CHECK(cudaMemset(q, 0, (size_t)batch * n_heads * head_dim * 4));
  BENCH_CHECK(cudaMalloc(&sc, n_pages * 4));
  BENCH_CHECK(cudaMalloc(&seq, n_pages * 4));
  BENCH_CHECK(cudaMalloc(&seg, (batch + 1) * 4));
  BENCH_CHECK(cudaMalloc(&out, batch * k * 4));
  std::vector<int32_t> h_seq(n_pages), h_seg(batch + 1);
  std::vector<float> h_sc(n_pages);
  for (long p = 0; p < n_pages; p++) h_seq[p] = (int32_t)(p / pages), h_sc[p] = (float)((p * 2654435761u) % 100003);
  for (long b = 0; b <= batch; b++) h_seg[b] = (int32_t)(b * pages);
  BENCH_CHECK(cudaMemcpy(seq, h_seq.data(), n_pages * 4, cudaMemcpyHostToDevice));
  BENCH_CHECK(cudaMemcpy(seg, h_seg.data(), (batch + 1) * 4, cudaMemcpyHostToDevice));
  BENCH_CHECK(cudaMemcpy(sc, h_sc.data(), n_pages * 4, cudaMemcpyHostToDevice));

  kn_cuda_digest_score_args_t sa = {};
  sa.kind = 6, sa.agg = 0, sa.digests = dg, sa.page_seq = seq, sa.q = q, sa.scores = sc;
  sa.n_pages = n_pages, sa.n_seqs = (int)batch, sa.n_heads = (int)n_heads, sa.n_kv_heads = (int)kv_heads;
  sa.head_dim = (int)head_dim;
  double us = time_us([&] { BENCH_OK(kn_cuda_digest_score(&sa, (kn_cuda_stream_t)s, &err_), err_); }, (int)iters, s);
  char name[128];
  snprintf(name, sizeof name, "digest_score cuboid-mean (%ld x %ld pages)", batch, pages);
  printf("%-44s %12.2f %9.2f TB/s\n", name, us, dg_floats * 4 / (us * 1e-6) / 1e12);
  /* the engine's store: cuboid digests in the pages' f16 (the zeroed buffer is valid f16) */
  sa.digest_dtype = KN_CUDA_F16;
  us = time_us([&] { BENCH_OK(kn_cuda_digest_score(&sa, (kn_cuda_stream_t)s, &err_), err_); }, (int)iters, s);
  snprintf(name, sizeof name, "digest_score cuboid-mean f16 (%ld x %ld pages)", batch, pages);
  printf("%-44s %12.2f %9.2f TB/s\n", name, us, dg_floats * 2 / (us * 1e-6) / 1e12);

  BENCH_CHECK(cudaMemcpy(sc, h_sc.data(), n_pages * 4, cudaMemcpyHostToDevice));
  kn_cuda_topk_args_t ta = {};
  ta.scores = sc, ta.seg_ptr = seg, ta.n_segs = (int)batch, ta.k = (int)k, ta.out_idx = out;
  us = time_us([&] { BENCH_OK(kn_cuda_topk(&ta, (kn_cuda_stream_t)s, &err_), err_); }, (int)iters, s);
  snprintf(name, sizeof name, "topk k=%ld (%ld x %ld scores)", k, batch, pages);
  printf("%-44s %12.2f %12s\n", name, us, "-");

  // Gather: pages x page_bytes from pinned host memory, then from device memory.
  const size_t bytes = (size_t)pages * page_bytes;
  void *h, *hd, *dsrc, *dst;
  BENCH_OK(kn_cuda_host_alloc(bytes, &err_, &h, &hd), err_);
  memset(h, 1, bytes);
  BENCH_CHECK(cudaMalloc(&dsrc, bytes));
  BENCH_CHECK(cudaMalloc(&dst, bytes));
  const void **ptrs;
  int32_t *dpg;
  BENCH_CHECK(cudaMalloc(&ptrs, pages * sizeof(void *)));
  BENCH_CHECK(cudaMalloc(&dpg, pages * 4));
  std::vector<const void *> h_ptrs(pages);
  std::vector<int32_t> h_dpg(pages);
  for (int from_host = 1; from_host >= 0; from_host--) {
    for (long i = 0; i < pages; i++)
      h_ptrs[i] = (const char *)(from_host ? hd : dsrc) + (size_t)((i * 7) % pages) * page_bytes,
      h_dpg[i] = (int32_t)((i * 13) % pages);
    BENCH_CHECK(cudaMemcpy(ptrs, h_ptrs.data(), pages * sizeof(void *), cudaMemcpyHostToDevice));
    BENCH_CHECK(cudaMemcpy(dpg, h_dpg.data(), pages * 4, cudaMemcpyHostToDevice));
    kn_cuda_gather_args_t ga = {};
    ga.src_ptrs = ptrs, ga.dst_base = dst, ga.dst_page = dpg, ga.n_pages = pages, ga.page_bytes = (size_t)page_bytes;
    us = time_us([&] { BENCH_OK(kn_cuda_gather_pages(&ga, (kn_cuda_stream_t)s, &err_), err_); }, (int)(iters / 4 + 1), s);
    snprintf(name, sizeof name, "gather %s (%ld x %ld B)", from_host ? "pinned" : "device", pages, page_bytes);
    printf("%-44s %12.2f %9.2f GB/s\n", name, us, bytes / (us * 1e-6) / 1e9);
  }
  // The copy engine for comparison: one cudaMemcpyAsync of the same bytes.
  us = time_us([&] { BENCH_CHECK(cudaMemcpyAsync(dst, h, bytes, cudaMemcpyHostToDevice, s)); }, (int)(iters / 4 + 1), s);
  snprintf(name, sizeof name, "cudaMemcpyAsync H2D (%zu B)", bytes);
  printf("%-44s %12.2f %9.2f GB/s\n", name, us, bytes / (us * 1e-6) / 1e9);
  kn_cuda_host_free(h, bytes);
  return 0;
}
