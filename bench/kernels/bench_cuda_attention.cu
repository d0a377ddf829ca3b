// bench_cuda_attention: kn_cuda_attention at decode shapes (B sequences, one query
// token each, every sequence ctx tokens long), for comparison with PyTorch's
// scaled_dot_product_attention on the same shapes (sdpa_decode.py; both run by
// attention_vs_sdpa.sh). Not a correctness test: tests/gpu/test_kn_cuda_attention.cc is.
//   bench_cuda_attention [--shape longchat-7b,llama3-8b] [--batch 4]
//                        [--ctx 2048,10240,20480,30720] [--iters 50]
// Prints one line per (shape, ctx), `ours <shape> B=.. ctx=.. us=.. GBs=.. layers=..`
// (lines starting with # are context), for a script to parse.
//
// Prefill mode: bench_cuda_attention --prefill 1024,4096 [--shape ..] [--iters 10]
// [--tiles 0,1]: one sequence, N query tokens causal over its N keys (token t sees keys
// [0, t]), q f32, K/V bf16 in 32-token pages, out bf16, once per prefill_tiles value
// (0: the per-token path, 1: the tiled path; 2: tiled, never split). One line per
// (shape, N, tiles): `prefill <shape> N=.. tiles=.. us=.. TFLOPs=..`, TFLOP/s =
// 4 * N * N / 2 * head_dim * n_heads / time (QK^T and PV over the causal half). A call
// takes milliseconds here, so one pool serves every call (L2 is no factor). The
// per-token path needs n_tok * n_heads * ceil(N / 512) * 130 * 4 bytes of workspace
// (2.2 GB at N 8192 on llama3-8b); a size that does not fit prints error=out-of-memory.
//
// Setup: head_dim 128, q f32 [B, H, 128] (fixed-seed values), out bf16, K/V bf16 from
// kn_cuda_fill_random_bf16 (uniform in [-1, 1]) in 32-token pages laid out as kn_cuda.h
// says, [page][K or V][n_kv_heads][page_tokens][head_dim]; sequence s owns pages
// [s * ctx / 32, (s + 1) * ctx / 32) in order (contiguous, as torch's [B, Hkv, ctx, D]
// tensors are, so neither side gains from the other's layout).
//
// Why several "layers": one layer's K/V at B=4, ctx 2048 on llama3-8b is 33.5 MB, which
// fits in the H100's 50 MB L2, and back-to-back calls on it would time L2, not HBM. So
// each shape gets n_layers independent pools (as many as make the set >= 4x L2, at least
// 2) and call i reads pool i % n_layers, as a forward pass reads a new layer's KV each
// call. sdpa_decode.py rotates over the same number of K/V buffers.
//
// Timing: after one warm-up call per layer, a spin kernel holds the stream for a few ms
// while the host queues all --iters calls, each between two CUDA events; the median
// event-to-event time is reported. Queuing ahead keeps host launch latency out of the
// numbers (at ctx 2048 a call is ~10 us, launch latency ~5 us); sdpa_decode.py does the
// same with torch.cuda._sleep. GB/s = K+V bytes of the Hkv heads read once
// (2 * B * ctx * Hkv * 128 * 2 bytes) / median time; q, out and the page table are
// a few KiB and not counted.
#include <cuda_runtime.h>

#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <algorithm>
#include <vector>

extern "C" {
#include "kn_cuda.h"
}

#include "bench_cuda_check.h"

// A device copy of a host vector (cudaFree it); exits on a CUDA error like BENCH_CHECK.
template <typename T>
static T *ba_dev_copy(const std::vector<T> &h) {
  T *d = nullptr;
  BENCH_CHECK(cudaMalloc(&d, h.size() * sizeof(T)));
  BENCH_CHECK(cudaMemcpy(d, h.data(), h.size() * sizeof(T), cudaMemcpyHostToDevice));
  return d;
}

enum { BA_HEAD_DIM = 128, BA_PAGE_TOKENS = 32, BA_MAX_LIST = 16, BA_MAX_LAYERS = 64 };

struct ba_shape {
  const char *name;
  int32_t n_heads, n_kv_heads;
};

static const ba_shape kShapes[] = {
    {"longchat-7b", 32, 32},
    {"llama3-8b", 32, 8},
};

// Holds the stream for spin_ns of GPU time so the host can queue the timed calls.
static __global__ void ba_spin_kernel(int64_t spin_ns) {
  uint64_t t0, t;
  asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t0));
  do {
    asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t));
  } while ((int64_t)(t - t0) < spin_ns);
}

// Parses "a,b,c" into out[]; returns the count, or -1 on a non-number.
static int ba_parse_list(const char *s, long *out, int max_n) {
  int n = 0;
  for (const char *p = s; *p && n < max_n;) {
    char *end;
    long v = strtol(p, &end, 10);
    if (end == p) return -1;
    out[n++] = v;
    p = *end == ',' ? end + 1 : end;
    if (*end && *end != ',') return -1;
  }
  return n;
}

static const ba_shape *ba_shape_find(const char *name, size_t len) {
  for (const ba_shape &sh : kShapes)
    if (strlen(sh.name) == len && !strncmp(sh.name, name, len)) return &sh;
  return NULL;
}

// The call both modes time over one pool (layout above: [page][K or V][n_kv_heads]
// [BA_PAGE_TOKENS][BA_HEAD_DIM] bf16, V after K in a page); q f32, out bf16.
static kn_cuda_attn_args_t ba_attn_args(const ba_shape &sh, int64_t n_tok, int32_t n_seqs, int32_t max_kv_len,
                                        const float *d_q, void *d_out, const int32_t *d_seq, const int32_t *d_len,
                                        const int32_t *d_indptr, const int32_t *d_indices, const int32_t *d_last,
                                        const void *pool) {
  const int64_t head_stride_elems = (int64_t)BA_PAGE_TOKENS * BA_HEAD_DIM;
  kn_cuda_attn_args_t a = {};
  a.q = d_q;
  a.out = d_out;
  a.out_dtype = KN_CUDA_BF16;
  a.n_tok = n_tok;
  a.n_heads = sh.n_heads;
  a.n_kv_heads = sh.n_kv_heads;
  a.head_dim = BA_HEAD_DIM;
  a.scale = 1.0f / sqrtf((float)BA_HEAD_DIM);
  a.tok_seq_idx = d_seq;
  a.tok_kv_len = d_len;
  a.max_kv_len = max_kv_len;
  a.kv.k_base = pool;
  a.kv.v_base = (const char *)pool + (size_t)sh.n_kv_heads * head_stride_elems * 2;
  a.kv.kv_dtype = KN_CUDA_BF16;
  a.kv.page_stride_elems = 2 * (int64_t)sh.n_kv_heads * head_stride_elems;
  a.kv.head_stride_elems = head_stride_elems;
  a.kv.page_tokens = BA_PAGE_TOKENS;
  a.kv.n_seqs = n_seqs;
  a.kv.indptr = d_indptr;
  a.kv.indices = d_indices;
  a.kv.last_page_len = d_last;
  return a;
}

// One prefill timing: see the header. Returns 0, or 1 after printing an error line.
static int ba_prefill(const ba_shape &sh, int64_t n, int tiles, long iters, cudaStream_t s) {
  ak_err_t err = {};
  const int64_t n_pages = (n + BA_PAGE_TOKENS - 1) / BA_PAGE_TOKENS;
  const int64_t head_stride_elems = (int64_t)BA_PAGE_TOKENS * BA_HEAD_DIM;
  const int64_t page_stride_elems = 2 * (int64_t)sh.n_kv_heads * head_stride_elems;
  const size_t pool_bytes = (size_t)n_pages * page_stride_elems * 2;
  std::vector<int32_t> h_indptr = {0, (int32_t)n_pages}, h_indices(n_pages),
                       h_last = {(int32_t)(n - (n_pages - 1) * BA_PAGE_TOKENS)}, h_seq(n, 0), h_len(n);
  for (int64_t p = 0; p < n_pages; p++) h_indices[p] = (int32_t)p;
  for (int64_t t = 0; t < n; t++) h_len[t] = (int32_t)(t + 1); // causal: token t sees keys [0, t]
  const size_t q_floats = (size_t)n * sh.n_heads * BA_HEAD_DIM;
  std::vector<float> h_q(q_floats);
  uint64_t rng = 0x9e3779b9u + (uint64_t)n;
  for (float &x : h_q) {
    rng = rng * 6364136223846793005ull + 1442695040888963407ull;
    x = (float)((rng >> 40) & 0xffff) / 32768.0f - 1.0f; // uniform in [-1, 1)
  }
  int32_t *d_indptr = ba_dev_copy(h_indptr), *d_indices = ba_dev_copy(h_indices), *d_last = ba_dev_copy(h_last),
          *d_seq = ba_dev_copy(h_seq), *d_len = ba_dev_copy(h_len);
  float *d_q = ba_dev_copy(h_q);
  void *d_out, *pool = NULL, *ws = NULL;
  BENCH_CHECK(cudaMalloc(&d_out, q_floats * 2)); // [N, H, 128] bf16
  BENCH_OK(kn_cuda_malloc(pool_bytes, &err, &pool), err);
  BENCH_OK(kn_cuda_fill_random_bf16(pool, (int64_t)(pool_bytes / 2), 1.0f, 2000u, (kn_cuda_stream_t)s, &err), err);

  kn_cuda_attn_args_t a =
      ba_attn_args(sh, n, 1, (int32_t)n, d_q, d_out, d_seq, d_len, d_indptr, d_indices, d_last, pool);
  a.prefill_tiles = tiles;
  const size_t ws_bytes = kn_cuda_attention_workspace_bytes(&a);
  int rc = 0;
  if (ws_bytes && kn_cuda_malloc(ws_bytes, &err, &ws) != AK_OK) {
    printf("prefill %s N=%lld tiles=%d error=out-of-memory ws_bytes=%zu\n", sh.name, (long long)n, tiles, ws_bytes);
    (void)cudaGetLastError();
    ws = NULL;
    rc = 1;
  } else {
    std::vector<cudaEvent_t> ev(iters + 1);
    for (cudaEvent_t &e : ev) BENCH_CHECK(cudaEventCreate(&e));
    std::vector<float> call_ms(iters);
    BENCH_OK(kn_cuda_attention(&a, ws, ws_bytes, (kn_cuda_stream_t)s, &err), err); // warm-up
    BENCH_CHECK(cudaStreamSynchronize(s));
    ba_spin_kernel<<<1, 1, 0, s>>>((int64_t)2000000 + 20000 * (int64_t)iters);
    BENCH_CHECK(cudaGetLastError());
    for (long i = 0; i < iters; i++) {
      BENCH_CHECK(cudaEventRecord(ev[i], s));
      BENCH_OK(kn_cuda_attention(&a, ws, ws_bytes, (kn_cuda_stream_t)s, &err), err);
    }
    BENCH_CHECK(cudaEventRecord(ev[iters], s));
    BENCH_CHECK(cudaEventSynchronize(ev[iters]));
    for (long i = 0; i < iters; i++) BENCH_CHECK(cudaEventElapsedTime(&call_ms[i], ev[i], ev[i + 1]));
    std::sort(call_ms.begin(), call_ms.end());
    const double med_us = 1e3 * (iters % 2 ? call_ms[iters / 2] : 0.5 * (call_ms[iters / 2 - 1] + call_ms[iters / 2]));
    const double flops = 4.0 * (double)n * (double)n / 2.0 * BA_HEAD_DIM * sh.n_heads;
    printf("prefill %s N=%lld tiles=%d us=%.1f TFLOPs=%.2f min_us=%.1f ws_bytes=%zu\n", sh.name, (long long)n, tiles,
           med_us, flops / (med_us * 1e6), 1e3 * call_ms[0], ws_bytes);
    fflush(stdout);
    for (cudaEvent_t &e : ev) cudaEventDestroy(e);
  }
  kn_cuda_free(ws, ws_bytes);
  kn_cuda_free(pool, pool_bytes);
  cudaFree(d_indptr);
  cudaFree(d_indices);
  cudaFree(d_last);
  cudaFree(d_seq);
  cudaFree(d_len);
  cudaFree(d_q);
  cudaFree(d_out);
  return rc;
}

int main(int argc, char **argv) {
  long ctxs[BA_MAX_LIST] = {2048, 10240, 20480, 30720};
  int n_ctx = 4;
  const ba_shape *shapes[BA_MAX_LIST] = {&kShapes[0], &kShapes[1]};
  int n_shapes = 2;
  long batch = 4, iters = 50;
  long prefills[BA_MAX_LIST], tiles_list[BA_MAX_LIST] = {0, 1};
  int n_prefill = 0, n_tiles = 2;
  for (int i = 1; i < argc; i += 2) {
    if (i + 1 >= argc) {
      fprintf(stderr, "bench_cuda_attention: %s needs a value\n", argv[i]);
      return 2;
    }
    const char *v = argv[i + 1];
    if (!strcmp(argv[i], "--iters")) iters = atol(v);
    else if (!strcmp(argv[i], "--batch")) batch = atol(v);
    else if (!strcmp(argv[i], "--ctx")) {
      n_ctx = ba_parse_list(v, ctxs, BA_MAX_LIST);
      if (n_ctx < 1) {
        fprintf(stderr, "bench_cuda_attention: bad --ctx list '%s'\n", v);
        return 2;
      }
    } else if (!strcmp(argv[i], "--prefill")) {
      n_prefill = ba_parse_list(v, prefills, BA_MAX_LIST);
      if (n_prefill < 1) {
        fprintf(stderr, "bench_cuda_attention: bad --prefill list '%s'\n", v);
        return 2;
      }
    } else if (!strcmp(argv[i], "--tiles")) {
      n_tiles = ba_parse_list(v, tiles_list, BA_MAX_LIST);
      if (n_tiles < 1) {
        fprintf(stderr, "bench_cuda_attention: bad --tiles list '%s'\n", v);
        return 2;
      }
    } else if (!strcmp(argv[i], "--shape")) {
      n_shapes = 0;
      for (const char *p = v; *p && n_shapes < BA_MAX_LIST;) {
        size_t len = strcspn(p, ",");
        const ba_shape *sh = ba_shape_find(p, len);
        if (!sh) {
          fprintf(stderr, "bench_cuda_attention: unknown shape '%.*s' (longchat-7b, llama3-8b)\n", (int)len, p);
          return 2;
        }
        shapes[n_shapes++] = sh;
        p += len + (p[len] == ',');
      }
    } else {
      fprintf(stderr, "bench_cuda_attention: unknown flag %s\n", argv[i]);
      return 2;
    }
  }
  // ctx a multiple of the page keeps both sides' byte counts equal (no partial page)
  for (int c = 0; c < n_ctx; c++)
    if (ctxs[c] < BA_PAGE_TOKENS || ctxs[c] % BA_PAGE_TOKENS || ctxs[c] > (1L << 24)) {
      fprintf(stderr, "bench_cuda_attention: --ctx %ld must be a multiple of %d in [%d, 2^24]\n", ctxs[c],
              BA_PAGE_TOKENS, BA_PAGE_TOKENS);
      return 2;
    }
  for (int p = 0; p < n_prefill; p++)
    if (prefills[p] < 1 || prefills[p] > (1L << 20)) {
      fprintf(stderr, "bench_cuda_attention: --prefill %ld must be in [1, 2^20]\n", prefills[p]);
      return 2;
    }
  for (int t = 0; t < n_tiles; t++)
    if (tiles_list[t] < 0 || tiles_list[t] > 2) {
      fprintf(stderr, "bench_cuda_attention: --tiles %ld must be 0, 1 or 2\n", tiles_list[t]);
      return 2;
    }
  if (batch < 1 || batch > 1024 || iters < 1) {
    fprintf(stderr, "bench_cuda_attention: --batch must be in 1..1024 and --iters >= 1\n");
    return 2;
  }

  ak_err_t err = {};
  int n_dev = 0;
  if (kn_cuda_device_count(&err, &n_dev) < 0) {
    fprintf(stderr, "bench_cuda_attention: no CUDA device (%s)\n", err.msg);
    return 1;
  }
  cudaDeviceProp prop;
  BENCH_CHECK(cudaGetDeviceProperties(&prop, 0));
  cudaStream_t s;
  BENCH_CHECK(cudaStreamCreate(&s));
  const size_t l2_bytes = (size_t)prop.l2CacheSize;
  printf("# device: %s (sm_%d%d, %d SMs, L2 %zu MB)\n", prop.name, prop.major, prop.minor, prop.multiProcessorCount,
         l2_bytes >> 20);
  printf("# ours = kn_cuda_attention: q f32, K/V bf16 in %d-token pages, out bf16, head_dim %d; median of %ld calls\n",
         BA_PAGE_TOKENS, BA_HEAD_DIM, iters);

  if (n_prefill > 0) {
    printf("# prefill: one sequence, N tokens causal over N keys; q f32, K/V bf16 in %d-token pages, out bf16, "
           "head_dim %d; median of %ld calls\n",
           BA_PAGE_TOKENS, BA_HEAD_DIM, iters);
    int rc = 0;  // a failed row prints its error line; the others still run
    for (int si = 0; si < n_shapes; si++)
      for (int p = 0; p < n_prefill; p++)
        for (int t = 0; t < n_tiles; t++) rc |= ba_prefill(*shapes[si], prefills[p], (int)tiles_list[t], iters, s);
    cudaStreamDestroy(s);
    return rc;
  }

  std::vector<cudaEvent_t> ev(iters + 1);
  for (cudaEvent_t &e : ev) BENCH_CHECK(cudaEventCreate(&e));
  std::vector<float> call_ms(iters);

  for (int si = 0; si < n_shapes; si++) {
    const ba_shape &sh = *shapes[si];
    for (int c = 0; c < n_ctx; c++) {
      const int64_t ctx = ctxs[c];
      const int64_t pages_per_seq = ctx / BA_PAGE_TOKENS;
      const int64_t n_pages = batch * pages_per_seq;
      const int64_t head_stride_elems = (int64_t)BA_PAGE_TOKENS * BA_HEAD_DIM;
      const int64_t page_stride_elems = 2 * (int64_t)sh.n_kv_heads * head_stride_elems;
      const size_t pool_bytes = (size_t)n_pages * page_stride_elems * 2;
      int n_layers = (int)std::min<size_t>(BA_MAX_LAYERS, std::max<size_t>(2, (4 * l2_bytes + pool_bytes - 1) / pool_bytes));

      // One page table serves every layer: the pools differ, the page ids do not.
      std::vector<int32_t> h_indptr(batch + 1), h_indices(n_pages), h_last(batch, BA_PAGE_TOKENS), h_seq(batch),
          h_len(batch, (int32_t)ctx);
      for (long b = 0; b <= batch; b++) h_indptr[b] = (int32_t)(b * pages_per_seq);
      for (int64_t p = 0; p < n_pages; p++) h_indices[p] = (int32_t)p;
      for (long b = 0; b < batch; b++) h_seq[b] = (int32_t)b;
      const size_t q_floats = (size_t)batch * sh.n_heads * BA_HEAD_DIM;
      std::vector<float> h_q(q_floats);
      uint64_t rng = 0x5eed0000u + (uint64_t)ctx;
      for (float &x : h_q) {
        rng = rng * 6364136223846793005ull + 1442695040888963407ull;
        x = (float)((rng >> 40) & 0xffff) / 32768.0f - 1.0f; // uniform in [-1, 1)
      }

      int32_t *d_indptr = ba_dev_copy(h_indptr), *d_indices = ba_dev_copy(h_indices),
              *d_last = ba_dev_copy(h_last), *d_seq = ba_dev_copy(h_seq), *d_len = ba_dev_copy(h_len);
      float *d_q = ba_dev_copy(h_q);
      void *d_out;
      BENCH_CHECK(cudaMalloc(&d_out, q_floats * 2)); // [B, H, 128] bf16

      // [n_layers] pools, each [n_pages][K or V][n_kv_heads][32][128] bf16
      std::vector<void *> pools(n_layers, nullptr);
      for (int l = 0; l < n_layers; l++) {
        if (kn_cuda_malloc(pool_bytes, &err, &pools[l]) != AK_OK) {
          // Fewer layers than asked: still >= 2, or the row is skipped.
          fprintf(stderr, "# %s ctx=%lld: only %d of %d layers fit (%s)\n", sh.name, (long long)ctx, l, n_layers,
                  err.msg);
          (void)cudaGetLastError(); // the failed cudaMalloc must not fail the next launch check
          n_layers = l;
          break;
        }
        BENCH_OK(kn_cuda_fill_random_bf16(pools[l], (int64_t)(pool_bytes / 2), 1.0f, 1000u + l,
                                          (kn_cuda_stream_t)s, &err),
                 err);
      }
      if (n_layers < 2) {
        printf("ours %s B=%ld ctx=%lld error=out-of-memory\n", sh.name, batch, (long long)ctx);
        for (void *p : pools) kn_cuda_free(p, pool_bytes);
      } else {
        kn_cuda_attn_args_t a = ba_attn_args(sh, batch, (int32_t)batch, (int32_t)ctx, d_q, d_out, d_seq, d_len,
                                             d_indptr, d_indices, d_last, pools[0]);
        const size_t ws_bytes = kn_cuda_attention_workspace_bytes(&a);
        void *ws = NULL;
        if (ws_bytes) BENCH_OK(kn_cuda_malloc(ws_bytes, &err, &ws), err);
        int32_t chunk_tokens = 0, n_chunks = 0;
        kn_cuda_attention_split(&a, &chunk_tokens, &n_chunks);

        auto call = [&](long i) {
          const char *pool = (const char *)pools[i % n_layers];
          a.kv.k_base = pool;
          a.kv.v_base = pool + (size_t)sh.n_kv_heads * head_stride_elems * 2; // V follows K in a page
          BENCH_OK(kn_cuda_attention(&a, ws, ws_bytes, (kn_cuda_stream_t)s, &err), err);
        };
        for (int l = 0; l < n_layers; l++) call(l);
        BENCH_CHECK(cudaStreamSynchronize(s));
        // ~20 us of host work per queued call is generous for two events and a launch
        ba_spin_kernel<<<1, 1, 0, s>>>((int64_t)2000000 + 20000 * (int64_t)iters);
        BENCH_CHECK(cudaGetLastError());
        for (long i = 0; i < iters; i++) {
          BENCH_CHECK(cudaEventRecord(ev[i], s));
          call(i);
        }
        BENCH_CHECK(cudaEventRecord(ev[iters], s));
        BENCH_CHECK(cudaEventSynchronize(ev[iters]));
        for (long i = 0; i < iters; i++) BENCH_CHECK(cudaEventElapsedTime(&call_ms[i], ev[i], ev[i + 1]));
        std::sort(call_ms.begin(), call_ms.end());
        const double med_us =
            1e3 * (iters % 2 ? call_ms[iters / 2] : 0.5 * (call_ms[iters / 2 - 1] + call_ms[iters / 2]));
        printf("ours %s B=%ld ctx=%lld us=%.2f GBs=%.1f layers=%d min_us=%.2f chunk_tokens=%d n_chunks=%d\n", sh.name,
               batch, (long long)ctx, med_us, (double)pool_bytes / (med_us * 1e3), n_layers, 1e3 * call_ms[0], chunk_tokens,
               n_chunks);
        fflush(stdout);
        kn_cuda_free(ws, ws_bytes);
        for (int l = 0; l < n_layers; l++) kn_cuda_free(pools[l], pool_bytes);
      }
      cudaFree(d_indptr);
      cudaFree(d_indices);
      cudaFree(d_last);
      cudaFree(d_seq);
      cudaFree(d_len);
      cudaFree(d_q);
      cudaFree(d_out);
    }
  }
  for (cudaEvent_t &e : ev) cudaEventDestroy(e);
  cudaStreamDestroy(s);
  return 0;
}
