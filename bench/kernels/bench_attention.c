/* bench_attention: kn_attention at SmolLM2-135M's shape (9 query heads, 3 KV heads,
 * head_dim 64, F16 KV in 32-token pages): a causal prefill of one prompt, and decode
 * steps of 1 and 4 sequences at several context lengths. Each iteration runs all 30
 * layers, each with its own KV (as a decode step streams them from DRAM). Prints
 * time per layer call and GFLOP/s (4 * head_dim flops per query head and key).
 *
 * usage: bench_attention [min_seconds_per_case=0.3] [isa: portable|avx2|avx512] */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "ak_alloc.h"
#include "kernels.h"

enum { N_HEADS = 9, N_KV = 3, HD = 64, PT = 32, MAX_CTX = 4096, MAX_SEQS = 4, N_LAYERS = 30 };

static double now_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

int main(int argc, char **argv) {
  double min_s = argc > 1 ? atof(argv[1]) : 0.3;
  const int32_t pages_per_seq = MAX_CTX / PT, n_pages = pages_per_seq * MAX_SEQS;
  const int64_t head_stride = (int64_t)PT * HD, page_stride = N_KV * head_stride;
  size_t layer_bytes = (size_t)n_pages * (size_t)page_stride * 2;
  size_t kv_bytes = layer_bytes * N_LAYERS;
  uint16_t *k = ak_host_alloc(kv_bytes, 0), *v = ak_host_alloc(kv_bytes, 0);
  float *q = ak_host_alloc((size_t)MAX_CTX * N_HEADS * HD * 4, 0);
  float *out = ak_host_alloc((size_t)MAX_CTX * N_HEADS * HD * 4, 0);
  int32_t *indptr = malloc(sizeof(int32_t) * (MAX_SEQS + 1)), *indices = malloc(sizeof(int32_t) * n_pages);
  int32_t *last = malloc(sizeof(int32_t) * MAX_SEQS), *seq = malloc(sizeof(int32_t) * MAX_CTX);
  int32_t *len = malloc(sizeof(int32_t) * MAX_CTX);
  if (!k || !v || !q || !out) return 1;
  for (size_t i = 0; i < kv_bytes / 2; i++) k[i] = v[i] = (uint16_t)(0x3000 + (i * 7919) % 0x0C00);
  for (int64_t i = 0; i < (int64_t)MAX_CTX * N_HEADS * HD; i++) q[i] = (float)((i * 31) % 200) / 100.0f - 1.0f;
  for (int32_t i = 0; i < n_pages; i++) indices[i] = (i * 37) % n_pages; /* scattered pages */

  printf("%-3s %-28s %10s %9s\n", "thr", "case", "us/call", "GFLOP/s");
  for (int n_threads = 1; n_threads <= 2; n_threads++) {
    kn_cpu_t *cpu = NULL;
    ak_err_t err;
    if (kn_cpu_create(n_threads, &err, &cpu) != AK_OK) return 1;
    for (int isa = KN_ISA_PORTABLE; argc > 2 && isa <= KN_ISA_AVX512; isa++)
      if (!strcmp(argv[2], kn_isa_name((kn_isa_t)isa)) && kn_cpu_set_isa(cpu, (kn_isa_t)isa) != AK_OK)
        return 1;
    struct { int prefill; int n_seqs; int ctx; } cases[] = {
        {1, 1, 512}, {1, 1, 2048}, {0, 1, 512}, {0, 1, 4096}, {0, 4, 512}, {0, 4, 4096}};
    for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
      int ns = cases[c].n_seqs, ctx = cases[c].ctx;
      for (int s = 0; s <= ns; s++) indptr[s] = s * pages_per_seq;
      for (int s = 0; s < ns; s++) {
        indptr[s + 1] = indptr[s] + (ctx + PT - 1) / PT;
        last[s] = ctx - (indptr[s + 1] - indptr[s] - 1) * PT;
      }
      int64_t n_tok = cases[c].prefill ? ctx : ns;
      double pairs = 0;
      for (int64_t t = 0; t < n_tok; t++) {
        seq[t] = cases[c].prefill ? 0 : (int32_t)t;
        len[t] = cases[c].prefill ? (int32_t)t + 1 : ctx;
        pairs += (double)len[t] * N_HEADS;
      }
      kn_attn_args_t a = {q, out, n_tok, N_HEADS, N_KV, HD, 0.125f, seq, len,
                          {k, v, KN_F16, page_stride, head_stride, PT, ns, indptr, indices, last}};
      int n_layers = cases[c].prefill ? 1 : N_LAYERS;
      size_t ws_bytes = kn_attention_workspace_bytes(&a, n_threads);
      void *ws = ak_host_alloc(ws_bytes, 0);
      double best = 1e30, t_start = now_s();
      int iters = 0;
      while (now_s() - t_start < min_s || iters < 3) {
        double t0 = now_s();
        for (int L = 0; L < n_layers; L++) {
          a.kv.k_base = (const uint8_t *)k + (size_t)L * layer_bytes;
          a.kv.v_base = (const uint8_t *)v + (size_t)L * layer_bytes;
          if (kn_attention(cpu, &a, ws, ws_bytes, &err) != AK_OK) {
            fprintf(stderr, "kn_attention: %s\n", err.msg);
            return 1;
          }
        }
        double dt = (now_s() - t0) / n_layers;
        best = dt < best ? dt : best;
        iters++;
      }
      char name[64];
      snprintf(name, sizeof name, "%s %d seq x ctx %d", cases[c].prefill ? "prefill" : "decode", ns, ctx);
      printf("%-3d %-28s %10.1f %9.1f\n", n_threads, name, best * 1e6, pairs * 4.0 * HD / best / 1e9);
      ak_host_free(ws, ws_bytes);
    }
    kn_cpu_destroy(cpu);
  }
  return 0;
}
