/* kn_matmul_avx512: AVX-512 VNNI matmul (compiled with -mavx512{f,bw,vl,dq,vnni,vbmi}).
 *
 * Quantized weights: a group of four 32-blocks of one row unpacks into two 512-bit
 * registers of unsigned bytes — `lo` holds elements 0..15 of each block, `hi`
 * elements 16..31 — so one vpdpbusd per half against the activations (quantized in
 * the same order, kn_cpu_internal.h) leaves int32 lanes 4b..4b+3 holding block b's
 * partial sums. Both halves accumulate into the same lanes; one cvt and one FMA with
 * dw*dx per lane then fold the group into a float accumulator. The weight offset:
 * Q4_0's -8 and Q8_0's +128 shift are integer multiples of dw, so the block's int32
 * sum starts at -8 / -128 sum(q); Q4_1's m gathers 16 blocks in a register and
 * meets the compact s in one FMA per 4 groups.
 *
 * This file is the decode path (n_tok <= 4): 4 rows x n_tok tokens per register
 * tile, rows unpacked straight into registers. More tokens go to kn_gemm_avx512.c,
 * which repacks 16 rows so one int32 lane is one row. Also here: float weights and
 * the activation quantizer. */
#include "kn_avx512_internal.h"

enum {
  KN_NR = 4,           /* rows per tile */
  KN_NT = 4,           /* tokens per tile */
  KN_TOK_CHUNK = 256,  /* tokens per pass over a row tile: their activations stay in L2 */
  KN_PF_BYTES = 4096,  /* software prefetch distance of the decode path */
};

/* acc[r][t] += dot over group g of row r and token t. Q4_1's m·s term is left to
 * the caller; Q4_0 and Q8_0 start each block's int32 sum at -8 / -128 sum(q). */
KN_INLINE void kn_q_group(ak_ggml_type_t type, __m512 acc[KN_NR][KN_NT], const kn_wpk_t w[KN_NR],
                          const uint8_t *const arow[KN_NT], const float *const ad[KN_NT],
                          const int32_t *const asq[KN_NT], int64_t g, const int nt) {
  for (int t = 0; t < nt; t++) {
    const uint8_t *xa = arow[t] + g * KN_GROUP_ELEMS;
    const __m512i xlo = _mm512_load_si512(xa), xhi = _mm512_load_si512(xa + 64);
    const __m512 xd = _mm512_load_ps(ad[t] + g * 16);
    __m512i i0 = _mm512_setzero_si512();
    if (type != AK_TYPE_Q4_1) {
      __m512i sq = _mm512_load_si512(asq[t] + g * 16);
      i0 = _mm512_sub_epi32(i0, _mm512_slli_epi32(sq, type == AK_TYPE_Q8_0 ? 7 : 3));
    }
    for (int r = 0; r < KN_NR; r++) {
      __m512i i = _mm512_dpbusd_epi32(i0, w[r].lo, xlo);
      i = _mm512_dpbusd_epi32(i, w[r].hi, xhi);
      acc[r][t] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(i), _mm512_mul_ps(w[r].d16, xd), acc[r][t]);
    }
  }
}

/* The horizontal sums of four vectors, in one register: 14 shuffles and adds
 * instead of four separate reductions. */
KN_INLINE __m128 kn_reduce4(__m512 a, __m512 b, __m512 c, __m512 d) {
  __m512 ab = _mm512_add_ps(_mm512_shuffle_f32x4(a, b, 0x44), _mm512_shuffle_f32x4(a, b, 0xEE));
  __m512 cd = _mm512_add_ps(_mm512_shuffle_f32x4(c, d, 0x44), _mm512_shuffle_f32x4(c, d, 0xEE));
  __m512 v = _mm512_add_ps(_mm512_shuffle_f32x4(ab, cd, 0x88), _mm512_shuffle_f32x4(ab, cd, 0xDD));
  v = _mm512_add_ps(v, _mm512_permute_ps(v, 0x4E));
  v = _mm512_add_ps(v, _mm512_permute_ps(v, 0xB1));
  return _mm512_castps512_ps128(
      _mm512_permutexvar_ps(_mm512_set_epi32(0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 12, 8, 4, 0), v));
}

/* Sums the tile's accumulators and stores (or adds to) y. */
KN_INLINE void kn_q_finish(const kn_mm_plan_t *p, __m512 acc[KN_NR][KN_NT], int64_t r0, int nr,
                           int64_t t0, const int nt, int accumulate) {
  for (int t = 0; t < nt; t++) {
    float *y = p->y + (t0 + t) * p->n_rows + r0;
    __m128 v = kn_reduce4(acc[0][t], acc[1][t], acc[2][t], acc[3][t]);
    const __mmask8 mk = (__mmask8)((1u << nr) - 1);
    if (accumulate) v = _mm_add_ps(v, _mm_maskz_loadu_ps(mk, y));
    _mm_mask_storeu_ps(y, mk, v);
  }
}

KN_INLINE void kn_act_rows(const kn_mm_plan_t *p, int64_t t0, const int nt, const uint8_t *arow[KN_NT],
                           const float *ad[KN_NT], const float *as[KN_NT], const int32_t *asq[KN_NT]) {
  for (int t = 0; t < KN_NT; t++) {
    arow[t] = p->act + (size_t)(t0 + (t < nt ? t : 0)) * p->act_l.row_bytes;
    ad[t] = (const float *)(arow[t] + p->act_l.qs_bytes);
    as[t] = (const float *)(arow[t] + p->act_l.s_offset);
    asq[t] = (const int32_t *)(arow[t] + p->act_l.sq16_offset);
  }
}

/* Decode: n_tok <= 4, every row tile unpacked straight into registers. */
KN_INLINE void kn_q_direct(const kn_mm_plan_t *p, const kn_idx_t *ix, ak_ggml_type_t type,
                           int64_t r_begin, int64_t r_end, const int nt) {
  const kn_act_layout_t *l = &p->act_l;
  const size_t gb = 4 * (p->w_row_bytes / (size_t)l->n_blocks); /* bytes per group */
  const uint8_t *arow[KN_NT];
  const float *ad[KN_NT], *as[KN_NT];
  const int32_t *asq[KN_NT];
  kn_act_rows(p, 0, nt, arow, ad, as, asq);
  /* Decode streams the weights from DRAM once: the hardware prefetcher alone leaves
   * the loads waiting, so fetch KN_PF_BYTES ahead of the tile being computed. */
  const uint8_t *w_end = p->w + (size_t)r_end * p->w_row_bytes;
  const uint8_t *pf = p->w + (size_t)r_begin * p->w_row_bytes;
  for (int64_t r0 = r_begin; r0 < r_end; r0 += KN_NR) {
    int nr = r_end - r0 < KN_NR ? (int)(r_end - r0) : KN_NR;
    const uint8_t *pf_end = p->w + (size_t)(r0 + nr) * p->w_row_bytes + KN_PF_BYTES;
    for (; pf < pf_end && pf < w_end; pf += 64) _mm_prefetch((const char *)pf, _MM_HINT_T0);
    const uint8_t *wrow[KN_NR];
    for (int r = 0; r < KN_NR; r++) wrow[r] = p->w + (size_t)(r0 + (r < nr ? r : 0)) * p->w_row_bytes;
    __m512 acc[KN_NR][KN_NT];
    for (int r = 0; r < KN_NR; r++)
      for (int t = 0; t < KN_NT; t++) acc[r][t] = _mm512_setzero_ps();
    /* The m·s term: four groups' m (16 blocks) gather in one register, then one FMA
     * per token with the compact s — no round trip through memory. */
    __m512 mc[KN_NR];
    for (int r = 0; r < KN_NR; r++) mc[r] = _mm512_setzero_ps();
    for (int64_t g = 0; g < l->n_groups; g++) {
      int64_t nvb64 = l->n_blocks - 4 * g;
      int nvb = nvb64 < 4 ? (int)nvb64 : 4;
      kn_wpk_t w[KN_NR];
      const __mmask16 lane4 = (__mmask16)(0xFu << (4 * (g & 3)));
      for (int r = 0; r < KN_NR; r++) {
        w[r] = kn_unpack(type, wrow[r] + (size_t)g * gb, nvb, ix);
        if (type == AK_TYPE_Q4_1) mc[r] = _mm512_mask_broadcast_f32x4(mc[r], lane4, w[r].m4);
      }
      kn_q_group(type, acc, w, arow, ad, asq, g, nt);
      if (type == AK_TYPE_Q4_1 && ((g & 3) == 3 || g == l->n_groups - 1)) {
        for (int t = 0; t < nt; t++) {
          const __m512 sv = _mm512_load_ps(as[t] + 4 * (g & ~(int64_t)3));
          for (int r = 0; r < KN_NR; r++) acc[r][t] = _mm512_fmadd_ps(mc[r], sv, acc[r][t]);
        }
        for (int r = 0; r < KN_NR; r++) mc[r] = _mm512_setzero_ps();
      }
    }
    kn_q_finish(p, acc, r0, nr, 0, nt, 0);
  }
}

#define KN_DIRECT_CASES(TYPE)                                             \
  switch (p->n_tok) {                                                     \
    case 1: kn_q_direct(p, &ix, TYPE, r_begin, r_end, 1); return;         \
    case 2: kn_q_direct(p, &ix, TYPE, r_begin, r_end, 2); return;         \
    case 3: kn_q_direct(p, &ix, TYPE, r_begin, r_end, 3); return;         \
    default: kn_q_direct(p, &ix, TYPE, r_begin, r_end, 4); return;        \
  }

static void kn_mm_rows_quant(const kn_mm_plan_t *p, int64_t r_begin, int64_t r_end) {
  if (p->n_tok > KN_NT) {
    kn_gemm_q_avx512(p, r_begin, r_end);
    return;
  }
  kn_idx_t ix = kn_idx_build(p->type);
  switch (p->type) {
    case AK_TYPE_Q4_1: KN_DIRECT_CASES(AK_TYPE_Q4_1)
    case AK_TYPE_Q4_0: KN_DIRECT_CASES(AK_TYPE_Q4_0)
    default: KN_DIRECT_CASES(AK_TYPE_Q8_0)
  }
}

/* ---- float weights (F32 / F16 / BF16): convert 16 elements at a time ---- */

KN_INLINE __m512 kn_load_w16(ak_ggml_type_t type, const uint8_t *row, int64_t k, __mmask16 mk) {
  switch (type) {
    case AK_TYPE_F16:
      return _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(mk, (const uint16_t *)row + k));
    case AK_TYPE_BF16:
      return _mm512_castsi512_ps(_mm512_slli_epi32(
          _mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(mk, (const uint16_t *)row + k)), 16));
    default: return _mm512_maskz_loadu_ps(mk, (const float *)row + k);
  }
}

KN_INLINE void kn_f_tile(const kn_mm_plan_t *p, ak_ggml_type_t type, int64_t r0, int nr,
                         int64_t t0, const int nt) {
  const uint8_t *wrow[KN_NR];
  const float *x[KN_NT];
  for (int r = 0; r < KN_NR; r++) wrow[r] = p->w + (size_t)(r0 + (r < nr ? r : 0)) * p->w_row_bytes;
  for (int t = 0; t < KN_NT; t++) x[t] = p->x + (t0 + (t < nt ? t : 0)) * p->n_cols;
  __m512 acc[KN_NR][KN_NT];
  for (int r = 0; r < KN_NR; r++)
    for (int t = 0; t < KN_NT; t++) acc[r][t] = _mm512_setzero_ps();
  for (int64_t k = 0; k < p->n_cols; k += 16) {
    __mmask16 mk = p->n_cols - k >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << (p->n_cols - k)) - 1);
    __m512 w[KN_NR];
    for (int r = 0; r < KN_NR; r++) w[r] = kn_load_w16(type, wrow[r], k, mk);
    for (int t = 0; t < nt; t++) {
      __m512 xv = _mm512_maskz_loadu_ps(mk, x[t] + k);
      for (int r = 0; r < KN_NR; r++) acc[r][t] = _mm512_fmadd_ps(w[r], xv, acc[r][t]);
    }
  }
  for (int t = 0; t < nt; t++)
    for (int r = 0; r < nr; r++) p->y[(t0 + t) * p->n_rows + r0 + r] = _mm512_reduce_add_ps(acc[r][t]);
}

#include "kn_matmul_float_rows.h"

void kn_mm_rows_avx512(const kn_mm_plan_t *p, int64_t r_begin, int64_t r_end) {
  switch (p->type) {
    case AK_TYPE_Q4_0:
    case AK_TYPE_Q4_1:
    case AK_TYPE_Q8_0: kn_mm_rows_quant(p, r_begin, r_end); return;
    case AK_TYPE_F16: kn_f_rows(p, AK_TYPE_F16, r_begin, r_end); return;
    case AK_TYPE_BF16: kn_f_rows(p, AK_TYPE_BF16, r_begin, r_end); return;
    default: kn_f_rows(p, AK_TYPE_F32, r_begin, r_end); return;
  }
}

/* ---- activation quantization: the float operations of kn_act_quantize_c ---- */

void kn_act_quantize_avx512(const kn_mm_plan_t *p, int64_t t_begin, int64_t t_end) {
  const kn_act_layout_t *l = &p->act_l;
  const __m512 sign = _mm512_set1_ps(-0.0f);
  for (int64_t t = t_begin; t < t_end; t++) {
    const float *x = p->x + t * p->n_cols; /* [n_cols] f32 */
    uint8_t *row = p->act + (size_t)t * l->row_bytes;
    int8_t *qs = (int8_t *)row;
    float *d16 = (float *)(row + l->qs_bytes);
    int32_t *sq16 = (int32_t *)(row + l->sq16_offset);
    float *s = (float *)(row + l->s_offset);
    for (int64_t blk = 0; blk < 4 * l->n_groups; blk++) {
      int64_t g = blk / KN_GROUP_BLOCKS, b = blk % KN_GROUP_BLOCKS;
      int8_t *lo = qs + g * KN_GROUP_ELEMS + b * 16;
      if (blk >= l->n_blocks) { /* padding to a whole group */
        memset(lo, 0, 16);
        memset(lo + 64, 0, 16);
        _mm_storeu_ps(d16 + g * 16 + b * 4, _mm_setzero_ps());
        _mm_storeu_si128((__m128i *)(sq16 + g * 16 + b * 4), _mm_setzero_si128());
        continue;
      }
      __m512 x0 = _mm512_loadu_ps(x + blk * AK_QK), x1 = _mm512_loadu_ps(x + blk * AK_QK + 16);
      __m512 ax = _mm512_max_ps(_mm512_andnot_ps(sign, x0), _mm512_andnot_ps(sign, x1));
      float amax = _mm512_reduce_max_ps(ax);
      float d = amax / 127.0f;
      float id = d != 0.0f ? 1.0f / d : 0.0f;
      __m512 vid = _mm512_set1_ps(id);
      __m512i q0 = _mm512_cvtps_epi32(_mm512_mul_ps(x0, vid)); /* round to nearest even */
      __m512i q1 = _mm512_cvtps_epi32(_mm512_mul_ps(x1, vid));
      _mm_storeu_si128((__m128i *)lo, _mm512_cvtepi32_epi8(q0));
      _mm_storeu_si128((__m128i *)(lo + 64), _mm512_cvtepi32_epi8(q1));
      int32_t sum = _mm512_reduce_add_epi32(_mm512_add_epi32(q0, q1));
      _mm_storeu_ps(d16 + g * 16 + b * 4, _mm_set1_ps(d));
      s[blk] = d * (float)sum;
      _mm_storeu_si128((__m128i *)(sq16 + g * 16 + b * 4), _mm_setr_epi32(sum, 0, 0, 0));
    }
    for (int64_t blk = l->n_blocks; blk < l->n_s; blk++) s[blk] = 0.0f;
  }
}
