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
  l.s_offset = l.qs_bytes + (size_t)l.n_groups * 16 * sizeof(float);
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
 * for a thread to arrive. */
typedef struct {
  kn_mm_plan_t plan;
  kn_isa_t isa;
  int quantized;
  int64_t tok_chunk, row_chunk;
  atomic_llong tok_next;  /* next token to quantize */
  atomic_llong tok_done;  /* tokens quantized */
  atomic_llong row_next;  /* next output row */
} kn_mm_job_t;

/* Row tiles of the SIMD kernels (16 for the AVX-512 GEMM): chunks are a multiple, so
 * every chunk but the last is whole tiles. */
enum { KN_MM_ROW_ALIGN = 16, KN_MM_CHUNKS_PER_THREAD = 4, KN_MM_TOK_CHUNK = 16 };

/* Below this many multiply-adds (~2 us of work) a matmul runs on the calling thread:
 * waking the pool would cost as much as it saves. */
#define KN_MM_SERIAL_MACS ((int64_t)131072)

static void kn_mm_quantize(const kn_mm_job_t *job, int64_t tb, int64_t te) {
  switch (job->isa) {
    case KN_ISA_AVX512: kn_act_quantize_avx512(&job->plan, tb, te); break;
    case KN_ISA_AVX2: kn_act_quantize_avx2(&job->plan, tb, te); break;
    default: kn_act_quantize_c(&job->plan, tb, te); break;
  }
}

static void kn_mm_job(void *ctx, int thread_idx, int n_threads) {
  kn_mm_job_t *job = ctx;
  const kn_mm_plan_t *p = &job->plan;
  (void)thread_idx;
  (void)n_threads;
  if (job->quantized) {
    for (;;) {
      int64_t tb = atomic_fetch_add(&job->tok_next, job->tok_chunk);
      if (tb >= p->n_tok) break;
      int64_t te = tb + job->tok_chunk < p->n_tok ? tb + job->tok_chunk : p->n_tok;
      kn_mm_quantize(job, tb, te);
      atomic_fetch_add_explicit(&job->tok_done, te - tb, memory_order_release);
    }
    /* Every row reads every token's quantized row. */
    for (int spins = 1; atomic_load_explicit(&job->tok_done, memory_order_acquire) < p->n_tok; spins++)
      kn_spin_relax(spins);
  }
  for (;;) {
    int64_t rb = atomic_fetch_add(&job->row_next, job->row_chunk);
    if (rb >= p->n_rows) return;
    int64_t re = rb + job->row_chunk < p->n_rows ? rb + job->row_chunk : p->n_rows;
    switch (job->isa) {
      case KN_ISA_AVX512: kn_mm_rows_avx512(p, rb, re); break;
      case KN_ISA_AVX2: kn_mm_rows_avx2(p, rb, re); break;
      default: kn_mm_rows_c(p, rb, re); break;
    }
  }
}

ak_status_t kn_matmul(kn_cpu_t *cpu, const kn_weight_t *w, const float *x, int64_t n_tok, float *y,
                      void *workspace, size_t workspace_bytes, ak_err_t *err) {
  if (!cpu || !w || !x || !y)
    return AK_ERR(err, AK_ERR_INVALID_ARG, "NULL argument (cpu=%p w=%p x=%p y=%p)", (void *)cpu,
                  (const void *)w, (const void *)x, (void *)y);
  if (!w->data) return AK_ERR(err, AK_ERR_INVALID_ARG, "weight data is NULL");
  if (n_tok <= 0 || w->n_rows <= 0 || w->n_cols <= 0)
    return AK_ERR(err, AK_ERR_INVALID_ARG, "n_tok=%lld n_rows=%lld n_cols=%lld must be > 0",
                  (long long)n_tok, (long long)w->n_rows, (long long)w->n_cols);
  if (!kn_type_is_matmul(w->type))
    return AK_ERR(err, AK_ERR_UNSUPPORTED, "weight type %d is not supported by matmul",
                  (int)w->type);
  size_t w_row_bytes = kn_row_bytes(w->type, w->n_cols);
  if (w_row_bytes == 0)
    return AK_ERR(err, AK_ERR_INVALID_ARG, "n_cols=%lld is not a multiple of %d for type %d",
                  (long long)w->n_cols, AK_QK, (int)w->type);

  kn_mm_job_t job;
  memset(&job, 0, sizeof job);
  job.isa = cpu->isa;
  job.quantized = kn_type_is_quant(w->type);
  kn_mm_plan_t *p = &job.plan;
  p->type = w->type;
  p->n_rows = w->n_rows;
  p->n_cols = w->n_cols;
  p->n_tok = n_tok;
  p->w = w->data;
  p->w_row_bytes = w_row_bytes;
  p->x = x;
  p->y = y;
  if (job.quantized) {
    size_t need = kn_matmul_workspace_bytes(w, n_tok);
    if (!workspace || workspace_bytes < need)
      return AK_ERR(err, AK_ERR_INVALID_ARG,
                    "workspace %p of %zu bytes < %zu needed for n_tok=%lld n_cols=%lld", workspace,
                    workspace_bytes, need, (long long)n_tok, (long long)w->n_cols);
    uintptr_t a = ((uintptr_t)workspace + KN_WS_ALIGN - 1) & ~(uintptr_t)(KN_WS_ALIGN - 1);
    p->act = (uint8_t *)a;
    p->act_l = kn_act_layout(w->n_cols);
  }
  int n_threads = cpu->n_threads;
  int64_t n_chunks = (int64_t)n_threads * KN_MM_CHUNKS_PER_THREAD;
  job.row_chunk = (w->n_rows + n_chunks - 1) / n_chunks;
  job.row_chunk = (job.row_chunk + KN_MM_ROW_ALIGN - 1) / KN_MM_ROW_ALIGN * KN_MM_ROW_ALIGN;
  job.tok_chunk = n_tok < KN_MM_TOK_CHUNK * n_threads ? (n_tok + n_threads - 1) / n_threads
                                                       : KN_MM_TOK_CHUNK;
  atomic_init(&job.tok_next, 0);
  atomic_init(&job.tok_done, 0);
  atomic_init(&job.row_next, 0);
  if (n_threads == 1 || (n_tok * w->n_rows * w->n_cols < KN_MM_SERIAL_MACS))
    kn_mm_job(&job, 0, 1);
  else
    ak_pool_run(cpu->pool, kn_mm_job, &job);
  return AK_OK;
}
