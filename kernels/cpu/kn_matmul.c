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

typedef struct {
  kn_mm_plan_t plan;
  kn_isa_t isa;
  int quantized;
  atomic_int arrived; /* threads done quantizing */
} kn_mm_job_t;

/* Row tiles of the SIMD kernels (16 for the AVX-512 GEMM): splitting on a multiple
 * keeps every thread's rows in whole tiles but the last. */
enum { KN_MM_ROW_ALIGN = 16 };

static void kn_mm_job(void *ctx, int thread_idx, int n_threads) {
  kn_mm_job_t *job = ctx;
  const kn_mm_plan_t *p = &job->plan;
  if (job->quantized) {
    int64_t tb, te;
    ak_pool_split(p->n_tok, thread_idx, n_threads, 1, &tb, &te);
    if (tb < te) {
      switch (job->isa) {
        case KN_ISA_AVX512: kn_act_quantize_avx512(p, tb, te); break;
        case KN_ISA_AVX2: kn_act_quantize_avx2(p, tb, te); break;
        default: kn_act_quantize_c(p, tb, te); break;
      }
    }
    /* Every thread's rows read every token's quantized row. */
    if (n_threads > 1) kn_barrier_wait(&job->arrived, n_threads);
  }
  int64_t rb, re;
  ak_pool_split(p->n_rows, thread_idx, n_threads, KN_MM_ROW_ALIGN, &rb, &re);
  if (rb >= re) return;
  switch (job->isa) {
    case KN_ISA_AVX512: kn_mm_rows_avx512(p, rb, re); break;
    case KN_ISA_AVX2: kn_mm_rows_avx2(p, rb, re); break;
    default: kn_mm_rows_c(p, rb, re); break;
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
  atomic_init(&job.arrived, 0);
  ak_pool_run(cpu->pool, kn_mm_job, &job);
  return AK_OK;
}
