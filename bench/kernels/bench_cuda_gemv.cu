// bench_cuda_gemv: the decode GEMMs (1..8 rows of x against a bf16 weight) at the
// shapes of bench/decode's models, through each kernel kn_cuda_gemm can route them to:
// cuBLASLt, the FMA GEMV (kn_cuda_gemv.cu) and the tensor-core GEMV (kn_cuda_gemv_mma.cu),
// and kn_cuda_gemm's own choice (auto). Rate = weight bytes / time (x and y are a few KiB); the
// card's peak is printed beside it. Times are CUDA-event means over --iters calls
// after 3 warm-ups, weights and x filled with a constant (no data-dependent speed).
//   bench_cuda_gemv [--iters I] [--tok N[,N...]] [--out FILE.md]
#include <cuda_runtime.h>

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

extern "C" {
#include "kn_cuda.h"
}

#include "bench_cuda_check.h"

struct gv_shape {
  long n_in, n_out;
  const char *what;
};

static const gv_shape kShapes[] = {
    {4096, 12288, "q|k|v longchat-7b"},  {4096, 4096, "o 7B"},           {4096, 22016, "gate|up longchat-7b"},
    {11008, 4096, "down longchat-7b"},   {4096, 6144, "q|k|v llama3-8b"}, {4096, 28672, "gate|up llama3-8b"},
    {14336, 4096, "down llama3-8b"},     {4096, 32000, "logits longchat-7b"}, {576, 960, "q|k|v smollm2-135m"},
    {576, 3072, "gate|up smollm2-135m"}, {1536, 576, "down smollm2-135m"},
};
// Indexed by kn_cuda_decode_gemm_t.
static const char *kModes[] = {"auto", "cuBLASLt", "GEMV", "MMA GEMV"};
enum { kNModes = (int)(sizeof kModes / sizeof kModes[0]) };

int main(int argc, char **argv) {
  int iters = 50;
  long toks[8] = {1, 4};
  int n_toks = 2;
  const char *out = NULL;
  for (int i = 1; i + 1 < argc; i += 2) {
    if (!strcmp(argv[i], "--iters")) iters = atoi(argv[i + 1]);
    else if (!strcmp(argv[i], "--out")) out = argv[i + 1];
    else if (!strcmp(argv[i], "--tok")) {
      n_toks = 0;
      for (char *p = argv[i + 1]; *p && n_toks < 8;) {
        toks[n_toks++] = strtol(p, &p, 10);
        if (*p == ',') p++;
      }
    } else {
      fprintf(stderr, "bench_cuda_gemv: unknown flag %s\n", argv[i]);
      return 2;
    }
  }
  for (int t = 0; t < n_toks; t++)
    if (toks[t] < 1 || toks[t] > 8) {
      fprintf(stderr, "bench_cuda_gemv: --tok values must be in 1..8\n");
      return 2;
    }
  if (iters < 1) iters = 1;
  ak_err_t err = {};
  int n_dev = 0;
  if (kn_cuda_device_count(&err, &n_dev) < 0) {
    fprintf(stderr, "bench_cuda_gemv: no CUDA device (%s)\n", err.msg);
    return 1;
  }
  cudaDeviceProp prop;
  BENCH_CHECK(cudaGetDeviceProperties(&prop, 0));
  cudaStream_t s;
  BENCH_CHECK(cudaStreamCreate(&s));
  kn_cuda_blas_t *blas = NULL;
  BENCH_OK(kn_cuda_blas_create((kn_cuda_stream_t)s, &err, &blas), err);
  cudaEvent_t e0, e1;
  BENCH_CHECK(cudaEventCreate(&e0));
  BENCH_CHECK(cudaEventCreate(&e1));

  char date[32];
  time_t now = time(NULL);
  strftime(date, sizeof date, "%Y-%m-%d %H:%M UTC", gmtime(&now));
  FILE *f = out ? fopen(out, "w") : NULL;
  if (out && !f) {
    fprintf(stderr, "bench_cuda_gemv: cannot write %s\n", out);
    return 1;
  }
  FILE *sinks[2] = {stdout, f};
  for (int k = 0; k < 2; k++) {
    if (!sinks[k]) continue;
    fprintf(sinks[k], "# decode GEMV kernels — %s\n\n", date);
    fprintf(sinks[k], "- card: %s (sm_%d%d, %d SMs); bf16 weights, f32 y; %d calls per cell after 3 warm-ups\n",
            prop.name, prop.major, prop.minor, prop.multiProcessorCount, iters);
    fprintf(sinks[k], "- command: bench_cuda_gemv --iters %d%s%s\n", iters, out ? " --out " : "", out ? out : "");
    fprintf(sinks[k], "- rate = weight bytes / time (the H100 SXM's HBM3 peak is 3350 GB/s)\n\n");
    fprintf(sinks[k], "| shape | n_in | n_out | tok |");
    for (int m = 1; m < kNModes; m++) fprintf(sinks[k], " %s us | GB/s |", kModes[m]);
    fprintf(sinks[k], " auto picks |\n|---|---:|---:|---:|");
    for (int m = 1; m < kNModes; m++) fprintf(sinks[k], "---:|---:|");
    fprintf(sinks[k], "---|\n");
  }
  for (const gv_shape &sh : kShapes) {
    size_t w_bytes = (size_t)sh.n_in * sh.n_out * 2;
    void *dw = NULL, *dx = NULL, *dy = NULL;
    BENCH_OK(kn_cuda_malloc(w_bytes, &err, &dw), err);
    BENCH_OK(kn_cuda_malloc((size_t)8 * sh.n_in * 2, &err, &dx), err);
    BENCH_OK(kn_cuda_malloc((size_t)8 * sh.n_out * 4, &err, &dy), err);
    BENCH_CHECK(cudaMemset(dw, 0x3c, w_bytes));
    BENCH_CHECK(cudaMemset(dx, 0x3c, (size_t)8 * sh.n_in * 2));
    for (int t = 0; t < n_toks; t++) {
      double us[kNModes] = {0};
      for (int mode = 0; mode < kNModes; mode++) {
        BENCH_OK(kn_cuda_blas_set_decode_gemm(blas, (kn_cuda_decode_gemm_t)mode, &err), err);
        kn_cuda_gemm_args_t a = {};
        a.x = dx;
        a.w = dw;
        a.y = dy;
        a.y_dtype = KN_CUDA_F32;
        a.n_tok = toks[t];
        a.n_in = sh.n_in;
        a.n_out = sh.n_out;
        for (int i = 0; i < 3; i++) BENCH_OK(kn_cuda_gemm(blas, &a, &err), err);
        BENCH_CHECK(cudaEventRecord(e0, s));
        for (int i = 0; i < iters; i++) BENCH_OK(kn_cuda_gemm(blas, &a, &err), err);
        BENCH_CHECK(cudaEventRecord(e1, s));
        BENCH_CHECK(cudaEventSynchronize(e1));
        float ms = 0;
        BENCH_CHECK(cudaEventElapsedTime(&ms, e0, e1));
        us[mode] = 1e3 * ms / iters;
      }
      // auto's time equals one of the forced kernels': name the closest
      int pick = 1;
      for (int m = 2; m < kNModes; m++)
        if (fabs(us[m] - us[0]) < fabs(us[pick] - us[0])) pick = m;
      for (int k = 0; k < 2; k++) {
        if (!sinks[k]) continue;
        fprintf(sinks[k], "| %s | %ld | %ld | %ld |", sh.what, sh.n_in, sh.n_out, toks[t]);
        for (int m = 1; m < kNModes; m++) fprintf(sinks[k], " %.1f | %.0f |", us[m], w_bytes / (us[m] * 1e3));
        fprintf(sinks[k], " %s (%.1f us) |\n", kModes[pick], us[0]);
      }
    }
    kn_cuda_free(dw, w_bytes);
    kn_cuda_free(dx, (size_t)8 * sh.n_in * 2);
    kn_cuda_free(dy, (size_t)8 * sh.n_out * 4);
  }
  kn_cuda_blas_destroy(blas);
  if (f) fclose(f);
  return 0;
}
