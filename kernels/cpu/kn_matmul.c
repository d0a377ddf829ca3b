/* kn_matmul: y = x · Wᵀ on the CPU — argument checks, workspace sizing, and the
 * two-phase thread job (quantize activations by token, then compute by output row).
 * The arithmetic lives in kn_matmul_{c,avx2,avx512}.c, picked by the context's ISA. */
#include <stdint.h>

#include "kn_cpu_internal.h"

size_t kn_row_bytes(ak_ggml_type_t type, int64_t n_cols) {
  if (n_cols <= 0) return 0;
  switch (type) {
    case AK_TYPE_F32: return (size_t)n_cols * 4;
    case AK_TYPE_F16:
    case AK_TYPE_BF16: return (size_t)n_cols * 2;
    case AK_TYPE_Q4_0:
    case AK_TYPE_Q4_1:
    case AK_TYPE_Q8_0:
    case AK_TYPE_Q8_1:
      if (n_cols % AK_QK) return 0;
      break;
    default: return 0;
  }
  size_t n_blocks = (size_t)(n_cols / AK_QK);
  switch (type) {
    case AK_TYPE_Q4_0: return n_blocks * sizeof(ak_block_q4_0_t);
    case AK_TYPE_Q4_1: return n_blocks * sizeof(ak_block_q4_1_t);
    case AK_TYPE_Q8_0: return n_blocks * sizeof(ak_block_q8_0_t);
    default: return n_blocks * sizeof(ak_block_q8_1_t);
  }
}

kn_act_layout_t kn_act_layout(int64_t n_cols) {
  kn_act_layout_t l;
  l.n_blocks = n_cols / AK_QK;
  l.n_groups = (l.n_blocks + KN_GROUP_BLOCKS - 1) / KN_GROUP_BLOCKS;
  l.n_s = (l.n_blocks + KN_S_ALIGN_BLOCKS - 1) / KN_S_ALIGN_BLOCKS * KN_S_ALIGN_BLOCKS;
  l.qs_bytes = (size_t)l.n_groups * KN_GROUP_ELEMS;
  l.sq16_offset = l.qs_bytes + (size_t)l.n_groups * 16 * sizeof(float);
  l.s_offset = l.sq16_offset + (size_t)l.n_groups * 16 * sizeof(int32_t);
  size_t bytes = l.s_offset + (size_t)l.n_s * sizeof(float);
  l.row_bytes = (bytes + 63) / 64 * 64;
  return l;
}

static int kn_type_is_quant(ak_ggml_type_t t) {
  return t == AK_TYPE_Q4_0 || t == AK_TYPE_Q4_1 || t == AK_TYPE_Q8_0;
}

static int kn_type_is_matmul(ak_ggml_type_t t) {
  return kn_type_is_quant(t) || t == AK_TYPE_F32 || t == AK_TYPE_F16 || t == AK_TYPE_BF16;
}

/* The workspace pointer may come unaligned; rows of quantized activations start on
 * a 64-byte boundary so the kernels use aligned 512-bit loads. */
enum { KN_WS_ALIGN = 64 };

size_t kn_matmul_workspace_bytes(const kn_weight_t *w, int64_t n_tok) {
  if (!w || n_tok <= 0 || w->n_cols <= 0 || !kn_type_is_quant(w->type)) return 0;
  kn_act_layout_t l = kn_act_layout(w->n_cols);
  return (size_t)n_tok * l.row_bytes + KN_WS_ALIGN;
}

/* Work is claimed from atomic counters in chunks rather than split statically: on a
 * machine shared with other processes one of our threads may be descheduled for a
 * whole time slice, and the others then do its share instead of waiting for it.
 * Rows wait only for the quantized activations (a count of finished tokens), never
 * for a thread to arrive. With several weights (kn_matmul_multi) the row chunks of
 * all of them form one sequence of claims. */
typedef struct {
  int n_w;
  kn_mm_plan_t plan[KN_MATMUL_MULTI_MAX];
  int64_t row_chunk[KN_MATMUL_MULTI_MAX];
  int64_t chunk_end[KN_MATMUL_MULTI_MAX]; /* prefix sums of the weights' chunk counts */
  int quant_idx;                          /* a weight whose plan quantizes x, or -1 */
  kn_isa_t isa;
  int64_t n_tok, tok_chunk;
  atomic_llong tok_next;   /* next token to quantize */
  atomic_llong tok_done;   /* tokens quantized */
  atomic_llong chunk_next; /* next row chunk */
} kn_mm_job_t;

/* Row tiles of the SIMD kernels (16 for the AVX-512 GEMM): chunks are a multiple, so
 * every chunk but the last of a weight is whole tiles. */
enum { KN_MM_ROW_ALIGN = 16, KN_MM_CHUNKS_PER_THREAD = 4, KN_MM_TOK_CHUNK = 16 };

/* Below this many multiply-adds (~4 us of work) a matmul runs on the calling thread:
 * waking the pool would cost about as much as it saves. */
#define KN_MM_SERIAL_MACS ((int64_t)131072)

static void kn_mm_quantize(const kn_mm_job_t *job, int64_t tb, int64_t te) {
  const kn_mm_plan_t *p = &job->plan[job->quant_idx];
  switch (job->isa) {
    case KN_ISA_AVX512: kn_act_quantize_avx512(p, tb, te); break;
    case KN_ISA_AVX2: kn_act_quantize_avx2(p, tb, te); break;
    default: kn_act_quantize_c(p, tb, te); break;
  }
}

static void kn_mm_job(void *ctx, int thread_idx, int n_threads) {
  kn_mm_job_t *job = ctx;
  (void)thread_idx;
  (void)n_threads;
  if (job->quant_idx >= 0) {
    for (;;) {
      int64_t tb = atomic_fetch_add(&job->tok_next, job->tok_chunk);
      if (tb >= job->n_tok) break;
      int64_t te = tb + job->tok_chunk < job->n_tok ? tb + job->tok_chunk : job->n_tok;
      kn_mm_quantize(job, tb, te);
      atomic_fetch_add_explicit(&job->tok_done, te - tb, memory_order_release);
    }
    /* Every row reads every token's quantized row. */
    for (int spins = 1; atomic_load_explicit(&job->tok_done, memory_order_acquire) < job->n_tok; spins++)
      kn_spin_relax(spins);
  }
  const int64_t n_chunks = job->chunk_end[job->n_w - 1];
  int i = 0;
  for (;;) {
    int64_t c = atomic_fetch_add(&job->chunk_next, 1);
    if (c >= n_chunks) return;
    while (c >= job->chunk_end[i]) i++; /* claims only grow */
    const kn_mm_plan_t *p = &job->plan[i];
    int64_t rb = (c - (i ? job->chunk_end[i - 1] : 0)) * job->row_chunk[i];
    int64_t re = rb + job->row_chunk[i] < p->n_rows ? rb + job->row_chunk[i] : p->n_rows;
    switch (job->isa) {
      case KN_ISA_AVX512: kn_mm_rows_avx512(p, rb, re); break;
      case KN_ISA_AVX2: kn_mm_rows_avx2(p, rb, re); break;
      default: kn_mm_rows_c(p, rb, re); break;
    }
  }
}

static ak_status_t kn_mm_check(const kn_weight_t *w, int64_t n_tok, ak_err_t *err) {
  if (!w) return AK_ERR(err, AK_ERR_INVALID_ARG, "NULL argument (w=NULL)");
  if (!w->data) return AK_ERR(err, AK_ERR_INVALID_ARG, "weight data is NULL");
  if (n_tok <= 0 || w->n_rows <= 0 || w->n_cols <= 0)
    return AK_ERR(err, AK_ERR_INVALID_ARG, "n_tok=%lld n_rows=%lld n_cols=%lld must be > 0",
                  (long long)n_tok, (long long)w->n_rows, (long long)w->n_cols);
  if (!kn_type_is_matmul(w->type))
    return AK_ERR(err, AK_ERR_UNSUPPORTED, "weight type %d is not supported by matmul",
                  (int)w->type);
  if (kn_row_bytes(w->type, w->n_cols) == 0)
    return AK_ERR(err, AK_ERR_INVALID_ARG, "n_cols=%lld is not a multiple of %d for type %d",
                  (long long)w->n_cols, AK_QK, (int)w->type);
  return AK_OK;
}

size_t kn_matmul_multi_workspace_bytes(int n_w, const kn_weight_t *const *w, int64_t n_tok) {
  size_t need = 0;
  for (int i = 0; w && i < n_w; i++) {
    size_t b = kn_matmul_workspace_bytes(w[i], n_tok);
    need = b > need ? b : need;
  }
  return need;
}

ak_status_t kn_matmul_multi(kn_cpu_t *cpu, int n_w, const kn_weight_t *const *w, const float *x,
                            int64_t n_tok, float *const *y, void *workspace, size_t workspace_bytes,
                            ak_err_t *err) {
  if (!cpu || !w || !x || !y)
    return AK_ERR(err, AK_ERR_INVALID_ARG, "NULL argument (cpu=%p w=%p x=%p y=%p)", (void *)cpu,
                  (const void *)w, (const void *)x, (const void *)y);
  if (n_w < 1 || n_w > KN_MATMUL_MULTI_MAX)
    return AK_ERR(err, AK_ERR_INVALID_ARG, "n_w=%d outside [1, %d]", n_w, KN_MATMUL_MULTI_MAX);
  kn_mm_job_t job;
  memset(&job, 0, sizeof job);
  job.n_w = n_w;
  job.isa = cpu->isa;
  job.n_tok = n_tok;
  job.quant_idx = -1;
  const int n_threads = cpu->n_threads;
  int64_t total_rows = 0, macs = 0;
  for (int i = 0; i < n_w; i++) {
    AK_TRY(kn_mm_check(w[i], n_tok, err));
    if (!y[i]) return AK_ERR(err, AK_ERR_INVALID_ARG, "NULL argument (y[%d]=NULL)", i);
    if (w[i]->n_cols != w[0]->n_cols)
      return AK_ERR(err, AK_ERR_INVALID_ARG, "w[%d] has n_cols=%lld, w[0] has %lld: x is shared", i,
                    (long long)w[i]->n_cols, (long long)w[0]->n_cols);
    total_rows += w[i]->n_rows;
    macs += n_tok * w[i]->n_rows * w[i]->n_cols;
  }
  uint8_t *act = NULL;
  size_t need = kn_matmul_multi_workspace_bytes(n_w, w, n_tok);
  if (need > 0) {
    if (!workspace || workspace_bytes < need)
      return AK_ERR(err, AK_ERR_INVALID_ARG,
                    "workspace %p of %zu bytes < %zu needed for n_tok=%lld n_cols=%lld", workspace,
                    workspace_bytes, need, (long long)n_tok, (long long)w[0]->n_cols);
    act = (uint8_t *)(((uintptr_t)workspace + KN_WS_ALIGN - 1) & ~(uintptr_t)(KN_WS_ALIGN - 1));
  }
  /* Chunks sized on all rows together, so small weights are not over-split. */
  int64_t row_chunk = (total_rows + (int64_t)n_threads * KN_MM_CHUNKS_PER_THREAD - 1) /
                      ((int64_t)n_threads * KN_MM_CHUNKS_PER_THREAD);
  row_chunk = (row_chunk + KN_MM_ROW_ALIGN - 1) / KN_MM_ROW_ALIGN * KN_MM_ROW_ALIGN;
  int64_t n_chunks = 0;
  for (int i = 0; i < n_w; i++) {
    kn_mm_plan_t *p = &job.plan[i];
    p->type = w[i]->type;
    p->n_rows = w[i]->n_rows;
    p->n_cols = w[i]->n_cols;
    p->n_tok = n_tok;
    p->w = w[i]->data;
    p->w_row_bytes = kn_row_bytes(w[i]->type, w[i]->n_cols);
    p->x = x;
    p->y = y[i];
    if (kn_type_is_quant(w[i]->type)) {
      p->act = act;
      p->act_l = kn_act_layout(w[i]->n_cols);
      if (job.quant_idx < 0) job.quant_idx = i;
    }
    job.row_chunk[i] = row_chunk;
    n_chunks += (p->n_rows + row_chunk - 1) / row_chunk;
    job.chunk_end[i] = n_chunks;
  }
  job.tok_chunk = n_tok < KN_MM_TOK_CHUNK * n_threads ? (n_tok + n_threads - 1) / n_threads
                                                       : KN_MM_TOK_CHUNK;
  atomic_init(&job.tok_next, 0);
  atomic_init(&job.tok_done, 0);
  atomic_init(&job.chunk_next, 0);
  if (n_threads == 1 || macs < KN_MM_SERIAL_MACS)
    kn_mm_job(&job, 0, 1);
  else
    ak_pool_run(cpu->pool, kn_mm_job, &job);
  return AK_OK;
}

ak_status_t kn_matmul(kn_cpu_t *cpu, const kn_weight_t *w, const float *x, int64_t n_tok, float *y,
                      void *workspace, size_t workspace_bytes, ak_err_t *err) {
  return kn_matmul_multi(cpu, 1, &w, x, n_tok, &y, workspace, workspace_bytes, err);
}
