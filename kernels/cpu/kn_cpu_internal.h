/* kn_cpu_internal: what the CPU backend's files share — the context struct, the
 * half-precision helpers, the quantized-activation layout and the per-ISA entry
 * points. Private to kernels/cpu/; not part of the kernels.h contract.
 *
 * ISA files (kn_*_avx2.c, kn_*_avx512.c) are compiled with their own -m flags, so
 * nothing here may be an inline function that uses intrinsics: only plain C. */
#ifndef KN_CPU_INTERNAL_H
#define KN_CPU_INTERNAL_H

#include <sched.h>
#include <stdatomic.h>
#include <stdint.h>
#include <string.h>

#include "ak_threadpool.h"
#include "kernels.h"

struct kn_cpu {
  ak_pool_t *pool;
  int n_threads;
  kn_isa_t isa;     /* the paths ops take now */
  kn_isa_t isa_max; /* what cpuid reported */
};

/* ---- half precision (portable; ISA files use F16C for bulk conversion) ---- */

static inline float kn_f16_to_f32(uint16_t h) {
  uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
  uint32_t exp = (h >> 10) & 0x1Fu;
  uint32_t man = h & 0x3FFu;
  uint32_t bits;
  if (exp == 0x1F) {
    bits = sign | 0x7F800000u | (man << 13); /* inf / NaN */
  } else if (exp != 0) {
    bits = sign | ((exp + 112u) << 23) | (man << 13);
  } else if (man == 0) {
    bits = sign;
  } else { /* subnormal: normalise */
    int e = -1;
    do {
      man <<= 1;
      e++;
    } while (!(man & 0x400u));
    bits = sign | ((uint32_t)(112 - e) << 23) | ((man & 0x3FFu) << 13);
  }
  float f;
  memcpy(&f, &bits, sizeof f);
  return f;
}

/* Round to nearest even, NaN stays NaN, overflow goes to inf. */
static inline uint16_t kn_f32_to_f16(float f) {
  uint32_t x;
  memcpy(&x, &f, sizeof x);
  uint32_t sign = (x >> 16) & 0x8000u;
  uint32_t ax = x & 0x7FFFFFFFu;
  if (ax > 0x7F800000u) return (uint16_t)(sign | 0x7E00u);
  if (ax >= 0x477FF000u) return (uint16_t)(sign | 0x7C00u); /* rounds past 65504 */
  if (ax < 0x38800000u) {                                   /* f16 subnormal or zero */
    if (ax < 0x33000000u) return (uint16_t)sign;
    uint32_t e = ax >> 23, man = (ax & 0x7FFFFFu) | 0x800000u;
    uint32_t shift = 126u - e; /* 14..24 */
    uint32_t q = man >> shift, rem = man & ((1u << shift) - 1u), half = 1u << (shift - 1u);
    if (rem > half || (rem == half && (q & 1u))) q++;
    return (uint16_t)(sign | q);
  }
  uint32_t r = ax + 0xFFFu + ((ax >> 13) & 1u); /* round to nearest even at bit 13 */
  return (uint16_t)(sign | (((r >> 13) - (112u << 10)) & 0x7FFFu));
}

static inline float kn_bf16_to_f32(uint16_t h) {
  uint32_t bits = (uint32_t)h << 16;
  float f;
  memcpy(&f, &bits, sizeof f);
  return f;
}

/* ---- weight types ---- */

/* Bytes per row of `n_cols` elements; 0 for an unknown type or a partial block. */
size_t kn_row_bytes(ak_ggml_type_t type, int64_t n_cols);
/* Dequantizes one row to f32 (portable). */
void kn_dequant_row(ak_ggml_type_t type, const void *row, float *out, int64_t n_cols);

/* ---- quantized activations for integer dot products ----
 *
 * Each token row of x is quantized per 32-block as ggml's Q8 quantizers do, but kept
 * in f32 and laid out for the kernels: d = amax / 127, id = 1/d (0 when d = 0),
 * q = round-to-nearest-even(x * id). Blocks are taken four at a time (a group of
 * 128 elements) so one 512-bit register holds the same half of four blocks, which
 * is how the weights unpack (Q4 nibbles: low = elements 0..15, high = 16..31):
 *
 *   token row (kn_act_layout_t.row_bytes):
 *   +--------------------------------+--------------------------+-------------------+--------------+
 *   | qs  [n_groups][2][4][16] int8  | d16 [n_groups][4][4] f32 | sq16 [n_groups][4][4]| s [n_s] f32 |
 *   |     [g][half][block][i] =      |   d of block b repeated  |   int32: sum(q_b) in | d_b*sum(q_b) |
 *   |     q of elem 32b+16half+i     |   in 4 lanes (one per    |   lane 4b, 0 in the  | compact,     |
 *   |                                |   int32 dot lane)        |   other three        | zero padded  |
 *   +--------------------------------+--------------------------+-------------------+--------------+
 *
 * Blocks past n_cols/32 (padding to a whole group) have q = 0, d = 0, s = 0. The
 * s term carries the weight offset: dot(w, x) = sum_b dw_b*dx_b*dot(u_b, q_b) +
 * m_b*s_b, where weights are u*dw + m with u unsigned (Q4_1: m; Q4_0: m = -8 dw;
 * Q8_0 with u = w + 128: m = -128 dw). For Q4_0 and Q8_0 the offset is an integer
 * multiple of dw, so kernels may instead start the block's int32 sum at -8 or -128
 * times sq16. */
enum { KN_GROUP_BLOCKS = 4, KN_GROUP_ELEMS = 128, KN_S_ALIGN_BLOCKS = 16 };

typedef struct {
  int64_t n_blocks;   /* n_cols / 32 */
  int64_t n_groups;   /* ceil(n_blocks / 4) */
  int64_t n_s;        /* n_blocks rounded up to 16 */
  size_t qs_bytes;    /* offset of d16 */
  size_t sq16_offset; /* offset of sq16 */
  size_t s_offset;    /* offset of s */
  size_t row_bytes;   /* per token, a multiple of 64 */
} kn_act_layout_t;

kn_act_layout_t kn_act_layout(int64_t n_cols);

/* ---- per-ISA matmul entry points ----
 * A plan is what one kn_matmul call computes; each thread runs its rows. */
typedef struct {
  ak_ggml_type_t type;
  int64_t n_rows, n_cols, n_tok;
  const uint8_t *w;         /* [n_rows] rows of w_row_bytes */
  size_t w_row_bytes;
  const float *x;           /* [n_tok, n_cols] f32 */
  float *y;                 /* [n_tok, n_rows] f32 */
  uint8_t *act;             /* [n_tok] rows of act.row_bytes (quantized types) */
  kn_act_layout_t act_l;
} kn_mm_plan_t;

/* Quantizes tokens [t_begin, t_end) of x into plan->act. */
void kn_act_quantize_c(const kn_mm_plan_t *p, int64_t t_begin, int64_t t_end);
void kn_act_quantize_avx2(const kn_mm_plan_t *p, int64_t t_begin, int64_t t_end);
void kn_act_quantize_avx512(const kn_mm_plan_t *p, int64_t t_begin, int64_t t_end);

/* y rows [r_begin, r_end) for all tokens; quantized types read plan->act. */
void kn_mm_rows_c(const kn_mm_plan_t *p, int64_t r_begin, int64_t r_end);
void kn_mm_rows_avx2(const kn_mm_plan_t *p, int64_t r_begin, int64_t r_end);
void kn_mm_rows_avx512(const kn_mm_plan_t *p, int64_t r_begin, int64_t r_end);
/* Quantized weights, many tokens (kn_gemm_avx512.c). */
void kn_gemm_q_avx512(const kn_mm_plan_t *p, int64_t r_begin, int64_t r_end);

/* ---- per-ISA element-wise helpers ---- */
void kn_silu_mul_c(const float *gate, const float *up, float *out, int64_t n);
void kn_silu_mul_avx2(const float *gate, const float *up, float *out, int64_t n);
void kn_silu_mul_avx512(const float *gate, const float *up, float *out, int64_t n);
/* f32 -> f16, round to nearest even (F16C; same results as kn_f32_to_f16 but NaN payloads). */
void kn_f32_to_f16_row_avx2(const float *src, uint16_t *dst, int64_t n);
void kn_f32_to_f16_row_avx512(const float *src, uint16_t *dst, int64_t n);

/* ---- attention work units per ISA ----
 * One unit: query tokens [tok_begin, tok_end) — consecutive in the batch, of one
 * sequence, at most KN_ATTN_QB — and one KV head with its n_group query heads,
 * over keys [key_begin, min(key_end, tok_kv_len)) of each token.
 *
 * With `partial` NULL the unit writes normalized outputs to args->out. Otherwise
 * (a decode step split over the keys so every thread has work) it writes, per query
 * row r = (token - tok_begin) * n_group + g, the unnormalized state of its key range:
 *   partial[r * (head_dim + 2) + i] = sum_j p_j v_j[i]   (i < head_dim)
 *   partial[r * (head_dim + 2) + head_dim]     = running max m (-inf if no keys)
 *   partial[r * (head_dim + 2) + head_dim + 1] = sum_j p_j, p_j = exp(s_j - m) */
enum { KN_ATTN_QB = 16 };

typedef struct {
  const kn_attn_args_t *a;
  int64_t tok_begin, tok_end;
  int32_t kv_head_idx;
  int64_t key_begin, key_end;
  float *partial;
  float *scratch; /* this thread's kn_attn_scratch_floats() floats, 64-byte aligned */
} kn_attn_unit_t;

int64_t kn_attn_scratch_floats(int32_t n_group, int32_t head_dim);
int64_t kn_attn_scratch_floats_avx512(int32_t n_group, int32_t head_dim);
void kn_attn_unit_c(const kn_attn_unit_t *u);
void kn_attn_unit_avx512(const kn_attn_unit_t *u);
void kn_attn_unit_avx2(const kn_attn_unit_t *u);

/* One step of a spin-wait on another thread of the pool: a pause, and every 64th
 * step a yield, since on a shared machine the thread we wait for may be descheduled
 * (as ak_threadpool.c does). */
static inline void kn_spin_relax(int spins) {
  if (spins % 64 == 0) {
    sched_yield();
  } else {
#if defined(__x86_64__)
    __builtin_ia32_pause();
#endif
  }
}

#endif
