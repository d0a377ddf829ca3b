/* bench_matmul: kn_matmul at SmolLM2-135M's shapes (Q4_1 linear layers, the Q8_0
 * tied output projection), decode (n_tok 1) and prefill (n_tok 512), 1 and 2
 * threads, every ISA the CPU has. Prints GFLOP/s (2 * rows * cols * n_tok / time)
 * and GB/s (weight bytes / time: what bounds decode), then the sum over one
 * forward pass's matmuls as tokens/s. The per-shape numbers reuse one weight matrix,
 * so it stays in cache; the last section runs a real pass over 30 distinct layers'
 * weights (66 MB of Q4_1 plus the 30 MB output matrix: DRAM-bound at n_tok 1).
 *
 * usage: bench_matmul [min_seconds_per_case=0.3] [n_tok...] */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "ak_alloc.h"
#include "kernels.h"

typedef struct {
  const char *name;
  ak_ggml_type_t type;
  int64_t n_rows, n_cols;
  int per_layer; /* how many of this shape one layer has (0: once per pass) */
} bench_shape_t;

static const bench_shape_t k_shapes[] = {
    {"attn_q/o 576x576", AK_TYPE_Q4_1, 576, 576, 2},
    {"attn_k/v 192x576", AK_TYPE_Q4_1, 192, 576, 2},
    {"ffn_gate/up 1536x576", AK_TYPE_Q4_1, 1536, 576, 2},
    {"ffn_down 576x1536", AK_TYPE_Q4_1, 576, 1536, 1},
    {"output 49152x576", AK_TYPE_Q8_0, 49152, 576, 0},
};
enum { N_LAYERS = 30 };

static double now_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static uint64_t rng_state = 0x9E3779B97F4A7C15ull;
static uint32_t rng_u32(void) {
  rng_state ^= rng_state << 13;
  rng_state ^= rng_state >> 7;
  rng_state ^= rng_state << 17;
  return (uint32_t)(rng_state >> 11);
}

/* Random codes; scales set to a small f16 (0x2000 ~ 0.0078) so sums stay finite. */
static void *make_weights(ak_ggml_type_t type, int64_t n_rows, int64_t n_cols, size_t *bytes_p) {
  size_t row_bytes = ak_type_row_bytes(type, n_cols), n = row_bytes * (size_t)n_rows;
  uint8_t *w = ak_host_alloc(n, 0);
  if (!w) return NULL;
  for (size_t i = 0; i < n; i++) w[i] = (uint8_t)rng_u32();
  size_t bb = ak_type_block_bytes(type);
  for (size_t off = 0; off < n; off += bb) {
    w[off] = 0x00;
    w[off + 1] = 0x20;
    if (type == AK_TYPE_Q4_1) {
      w[off + 2] = 0x00;
      w[off + 3] = 0xA0;
    }
  }
  *bytes_p = n;
  return w;
}

int main(int argc, char **argv) {
  double min_s = argc > 1 ? atof(argv[1]) : 0.3;
  int64_t toks[8] = {1, 512};
  int n_toks = 2;
  if (argc > 2) {
    n_toks = 0;
    for (int i = 2; i < argc && n_toks < 8; i++) toks[n_toks++] = atoll(argv[i]);
  }
  enum { N_SHAPES = sizeof k_shapes / sizeof k_shapes[0] };
  void *w_data[N_SHAPES];
  size_t w_bytes[N_SHAPES];
  for (int s = 0; s < N_SHAPES; s++) {
    w_data[s] = make_weights(k_shapes[s].type, k_shapes[s].n_rows, k_shapes[s].n_cols, &w_bytes[s]);
    if (!w_data[s]) return 1;
  }
  int64_t max_tok = 0;
  for (int i = 0; i < n_toks; i++) max_tok = toks[i] > max_tok ? toks[i] : max_tok;
  float *x = ak_host_alloc((size_t)max_tok * 1536 * sizeof(float), 0);
  float *y = ak_host_alloc((size_t)max_tok * 49152 * sizeof(float), 0);
  size_t ws_bytes = (size_t)max_tok * 4096 + 4096;
  void *ws = ak_host_alloc(ws_bytes, 0);
  if (!x || !y || !ws) return 1;
  for (int64_t i = 0; i < max_tok * 1536; i++) x[i] = (float)(rng_u32() % 2000) / 1000.0f - 1.0f;

  printf("%-8s %-3s %-22s %6s %10s %9s %9s\n", "isa", "thr", "shape", "n_tok", "us/call",
         "GFLOP/s", "GB/s");
  kn_isa_t max_isa = kn_cpu_detect_isa();
  for (int isa = max_isa; isa >= KN_ISA_AVX2; isa--) {
    for (int n_threads = 1; n_threads <= 2; n_threads++) {
      kn_cpu_t *cpu = NULL;
      ak_err_t err;
      if (kn_cpu_create(n_threads, &err, &cpu) != AK_OK) return 1;
      kn_cpu_set_isa(cpu, (kn_isa_t)isa);
      for (int ti = 0; ti < n_toks; ti++) {
        int64_t n_tok = toks[ti];
        double pass_s = 0.0; /* one forward pass's matmuls, all layers */
        for (int s = 0; s < N_SHAPES; s++) {
          const bench_shape_t *sh = &k_shapes[s];
          kn_weight_t w = {sh->type, sh->n_rows, sh->n_cols, w_data[s]};
          /* The output projection runs on the last token only in prefill. */
          int64_t nt = sh->per_layer == 0 && n_tok > 4 ? 1 : n_tok;
          int iters = 0;
          double best = 1e30, t_start = now_s();
          while (now_s() - t_start < min_s || iters < 3) {
            double t0 = now_s();
            if (kn_matmul(cpu, &w, x, nt, y, ws, ws_bytes, &err) != AK_OK) {
              fprintf(stderr, "kn_matmul: %s\n", err.msg);
              return 1;
            }
            double dt = now_s() - t0;
            best = dt < best ? dt : best;
            iters++;
          }
          double gflops = 2.0 * (double)sh->n_rows * (double)sh->n_cols * (double)nt / best / 1e9;
          double gbs = (double)w_bytes[s] / best / 1e9;
          printf("%-8s %-3d %-22s %6lld %10.1f %9.1f %9.1f\n", kn_isa_name((kn_isa_t)isa),
                 n_threads, sh->name, (long long)nt, best * 1e6, gflops, gbs);
          pass_s += best * (sh->per_layer ? sh->per_layer * N_LAYERS : 1);
        }
        printf("%-8s %-3d %-22s %6lld %10.1f   => %.1f tok/s (matmuls only)\n\n",
               kn_isa_name((kn_isa_t)isa), n_threads, "forward pass", (long long)n_tok,
               pass_s * 1e6, (double)n_tok / pass_s);
      }
      kn_cpu_destroy(cpu);
    }
  }
  /* A real pass: every layer's own weights, in the model's order. */
  enum { N_PER_LAYER = 7 };
  static const int layer_shape[N_PER_LAYER] = {0, 1, 1, 0, 2, 2, 3}; /* q k v o gate up down */
  void *layer_w[N_LAYERS][N_PER_LAYER];
  for (int L = 0; L < N_LAYERS; L++)
    for (int j = 0; j < N_PER_LAYER; j++) {
      const bench_shape_t *sh = &k_shapes[layer_shape[j]];
      size_t b;
      layer_w[L][j] = make_weights(sh->type, sh->n_rows, sh->n_cols, &b);
      if (!layer_w[L][j]) return 1;
    }
  for (int n_threads = 1; n_threads <= 2; n_threads++) {
    kn_cpu_t *cpu = NULL;
    ak_err_t err;
    if (kn_cpu_create(n_threads, &err, &cpu) != AK_OK) return 1;
    for (int ti = 0; ti < n_toks; ti++) {
      int64_t n_tok = toks[ti];
      double best = 1e30, t_start = now_s();
      int iters = 0;
      while (now_s() - t_start < 3 * min_s || iters < 3) {
        double t0 = now_s();
        for (int L = 0; L < N_LAYERS; L++)
          for (int j = 0; j < N_PER_LAYER; j++) {
            const bench_shape_t *sh = &k_shapes[layer_shape[j]];
            kn_weight_t w = {sh->type, sh->n_rows, sh->n_cols, layer_w[L][j]};
            if (kn_matmul(cpu, &w, x, n_tok, y, ws, ws_bytes, &err) != AK_OK) return 1;
          }
        kn_weight_t wo = {k_shapes[4].type, k_shapes[4].n_rows, k_shapes[4].n_cols, w_data[4]};
        if (kn_matmul(cpu, &wo, x, n_tok > 4 ? 1 : n_tok, y, ws, ws_bytes, &err) != AK_OK) return 1;
        double dt = now_s() - t0;
        best = dt < best ? dt : best;
        iters++;
      }
      printf("%-8s %-3d %-22s %6lld %10.1f   => %.1f tok/s (real pass, distinct weights)\n",
             kn_isa_name(kn_cpu_isa(cpu)), n_threads, "forward pass", (long long)n_tok, best * 1e6,
             (double)n_tok / best);
    }
    kn_cpu_destroy(cpu);
  }
  return 0;
}
