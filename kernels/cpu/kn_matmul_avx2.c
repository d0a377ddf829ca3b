/* kn_matmul_avx2: AVX2 + FMA + F16C matmul (compiled with -mavx2 -mfma -mf16c), for
 * x86 CPUs without AVX-512 VNNI.
 *
 * Same activation layout as the other paths (kn_cpu_internal.h). A 256-bit register
 * holds the same half of two blocks; vpmaddubsw multiplies unsigned weight bytes by
 * signed activation bytes into i16 pairs, vpmaddwd sums them into int32 lanes
 * (lanes 0..3 block 2h, 4..7 block 2h+1). Q4 nibbles are unsigned (Q4_0 carries -8 d
 * in the m·s term); Q8_0 uses the sign trick (|w| times x with w's sign), since
 * w + 128 would saturate vpmaddubsw. Register blocking: 2 rows x up to 4 tokens. */
#include <immintrin.h>

#include "kn_cpu_internal.h"

#define KN_INLINE static inline __attribute__((always_inline))

enum { KN_NR = 2, KN_NT = 4, KN_TOK_CHUNK = 256, KN_PF_BYTES = 4096 };

KN_INLINE float kn_hsum256(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

/* The two blocks 2h, 2h+1 of a group: `lo`/`hi` halves, and d as [d0 x4, d1 x4]. */
typedef struct {
  __m256i lo, hi;
  __m256 d8;
} kn_half_t;

KN_INLINE kn_half_t kn_unpack_half(ak_ggml_type_t type, const uint8_t *wrow, int64_t blk,
                                   int64_t n_blocks, float *m2) {
  kn_half_t h;
  int two = blk + 1 < n_blocks; /* is block blk+1 real? */
  float d0, d1 = 0.0f;
  if (type == AK_TYPE_Q8_0) {
    const ak_block_q8_0_t *b = (const ak_block_q8_0_t *)wrow + blk;
    __m128i l0 = _mm_loadu_si128((const __m128i *)b[0].qs);
    __m128i h0 = _mm_loadu_si128((const __m128i *)(b[0].qs + 16));
    __m128i l1 = two ? _mm_loadu_si128((const __m128i *)b[1].qs) : _mm_setzero_si128();
    __m128i h1 = two ? _mm_loadu_si128((const __m128i *)(b[1].qs + 16)) : _mm_setzero_si128();
    h.lo = _mm256_set_m128i(l1, l0);
    h.hi = _mm256_set_m128i(h1, h0);
    d0 = _cvtsh_ss(b[0].d);
    if (two) d1 = _cvtsh_ss(b[1].d);
    m2[0] = m2[1] = 0.0f; /* signed products: no offset */
  } else {
    const int q41 = type == AK_TYPE_Q4_1;
    const uint8_t *p0 = wrow + blk * (q41 ? 20 : 18);
    const uint8_t *p1 = p0 + (q41 ? 20 : 18);
    __m128i v0 = _mm_loadu_si128((const __m128i *)(p0 + (q41 ? 4 : 2)));
    __m128i v1 = two ? _mm_loadu_si128((const __m128i *)(p1 + (q41 ? 4 : 2))) : _mm_setzero_si128();
    __m256i v = _mm256_set_m128i(v1, v0);
    const __m256i nib = _mm256_set1_epi8(0x0F);
    h.lo = _mm256_and_si256(v, nib);
    h.hi = _mm256_and_si256(_mm256_srli_epi16(v, 4), nib);
    uint16_t hd0, hd1 = 0, hm0 = 0, hm1 = 0;
    memcpy(&hd0, p0, 2);
    if (two) memcpy(&hd1, p1, 2);
    d0 = _cvtsh_ss(hd0);
    d1 = two ? _cvtsh_ss(hd1) : 0.0f;
    if (q41) {
      memcpy(&hm0, p0 + 2, 2);
      if (two) memcpy(&hm1, p1 + 2, 2);
      m2[0] = _cvtsh_ss(hm0);
      m2[1] = two ? _cvtsh_ss(hm1) : 0.0f;
    } else {
      m2[0] = -8.0f * d0;
      m2[1] = -8.0f * d1;
    }
  }
  h.d8 = _mm256_set_m128(_mm_set1_ps(d1), _mm_set1_ps(d0));
  return h;
}

KN_INLINE __m256i kn_dot_half(ak_ggml_type_t type, const kn_half_t *w, __m256i xlo, __m256i xhi) {
  const __m256i ones = _mm256_set1_epi16(1);
  if (type == AK_TYPE_Q8_0) {
    __m256i plo = _mm256_maddubs_epi16(_mm256_sign_epi8(w->lo, w->lo), _mm256_sign_epi8(xlo, w->lo));
    __m256i phi = _mm256_maddubs_epi16(_mm256_sign_epi8(w->hi, w->hi), _mm256_sign_epi8(xhi, w->hi));
    return _mm256_add_epi32(_mm256_madd_epi16(plo, ones), _mm256_madd_epi16(phi, ones));
  }
  __m256i p = _mm256_add_epi16(_mm256_maddubs_epi16(w->lo, xlo), _mm256_maddubs_epi16(w->hi, xhi));
  return _mm256_madd_epi16(p, ones);
}

KN_INLINE void kn_q_tile(const kn_mm_plan_t *p, ak_ggml_type_t type, int64_t r0, int nr,
                         int64_t t0, const int nt) {
  const kn_act_layout_t *l = &p->act_l;
  const uint8_t *wrow[KN_NR];
  for (int r = 0; r < KN_NR; r++) wrow[r] = p->w + (size_t)(r0 + (r < nr ? r : 0)) * p->w_row_bytes;
  const uint8_t *arow[KN_NT];
  for (int t = 0; t < KN_NT; t++) arow[t] = p->act + (size_t)(t0 + (t < nt ? t : 0)) * l->row_bytes;
  __m256 acc[KN_NR][KN_NT];
  __m128 accm[KN_NR][KN_NT];
  for (int r = 0; r < KN_NR; r++)
    for (int t = 0; t < KN_NT; t++) {
      acc[r][t] = _mm256_setzero_ps();
      accm[r][t] = _mm_setzero_ps();
    }
  for (int64_t g = 0; g < l->n_groups; g++) {
    _Alignas(16) float m4[KN_NR][4];
    for (int h = 0; h < 2; h++) {
      int64_t blk = 4 * g + 2 * h;
      if (blk >= l->n_blocks) {
        for (int r = 0; r < KN_NR; r++) m4[r][2 * h] = m4[r][2 * h + 1] = 0.0f;
        continue;
      }
      kn_half_t w[KN_NR];
      for (int r = 0; r < KN_NR; r++)
        w[r] = kn_unpack_half(type, wrow[r], blk, l->n_blocks, &m4[r][2 * h]);
      for (int t = 0; t < nt; t++) {
        const uint8_t *xa = arow[t] + g * KN_GROUP_ELEMS + 32 * h;
        __m256i xlo = _mm256_load_si256((const __m256i *)xa);
        __m256i xhi = _mm256_load_si256((const __m256i *)(xa + 64));
        __m256 xd = _mm256_load_ps((const float *)(arow[t] + l->qs_bytes) + g * 16 + 8 * h);
        for (int r = 0; r < KN_NR; r++) {
          __m256i i = kn_dot_half(type, &w[r], xlo, xhi);
          acc[r][t] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(i), _mm256_mul_ps(w[r].d8, xd), acc[r][t]);
        }
      }
    }
    if (type != AK_TYPE_Q8_0) {
      for (int t = 0; t < nt; t++) {
        __m128 s4 = _mm_load_ps((const float *)(arow[t] + l->s_offset) + 4 * g);
        for (int r = 0; r < KN_NR; r++) accm[r][t] = _mm_fmadd_ps(_mm_load_ps(m4[r]), s4, accm[r][t]);
      }
    }
  }
  for (int t = 0; t < nt; t++)
    for (int r = 0; r < nr; r++) {
      __m256 v = _mm256_add_ps(acc[r][t], _mm256_zextps128_ps256(accm[r][t]));
      p->y[(t0 + t) * p->n_rows + r0 + r] = kn_hsum256(v);
    }
}

KN_INLINE void kn_q_rows(const kn_mm_plan_t *p, ak_ggml_type_t type, int64_t r_begin,
                         int64_t r_end) {
  /* Few tokens stream the weights from DRAM once: fetch KN_PF_BYTES ahead, as the
   * hardware prefetcher alone leaves the loads waiting (3x slower measured). */
  const uint8_t *w_end = p->w + (size_t)r_end * p->w_row_bytes;
  const uint8_t *pf = p->n_tok <= KN_NT ? p->w + (size_t)r_begin * p->w_row_bytes : w_end;
  for (int64_t tc = 0; tc < p->n_tok; tc += KN_TOK_CHUNK) {
    int64_t tc_end = tc + KN_TOK_CHUNK < p->n_tok ? tc + KN_TOK_CHUNK : p->n_tok;
    for (int64_t r0 = r_begin; r0 < r_end; r0 += KN_NR) {
      int nr = r_end - r0 < KN_NR ? (int)(r_end - r0) : KN_NR;
      const uint8_t *pf_end = p->w + (size_t)(r0 + nr) * p->w_row_bytes + KN_PF_BYTES;
      for (; pf < pf_end && pf < w_end; pf += 64) _mm_prefetch((const char *)pf, _MM_HINT_T0);
      int64_t t0 = tc;
      for (; t0 + KN_NT <= tc_end; t0 += KN_NT) kn_q_tile(p, type, r0, nr, t0, 4);
      switch (tc_end - t0) {
        case 3: kn_q_tile(p, type, r0, nr, t0, 3); break;
        case 2: kn_q_tile(p, type, r0, nr, t0, 2); break;
        case 1: kn_q_tile(p, type, r0, nr, t0, 1); break;
        default: break;
      }
    }
  }
}

/* ---- float weights ---- */

KN_INLINE __m256 kn_load_w8(ak_ggml_type_t type, const uint8_t *row, int64_t k) {
  switch (type) {
    case AK_TYPE_F16: return _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)((const uint16_t *)row + k)));
    case AK_TYPE_BF16:
      return _mm256_castsi256_ps(_mm256_slli_epi32(
          _mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)((const uint16_t *)row + k))), 16));
    default: return _mm256_loadu_ps((const float *)row + k);
  }
}

KN_INLINE float kn_w_elem(ak_ggml_type_t type, const uint8_t *row, int64_t k) {
  switch (type) {
    case AK_TYPE_F16: return _cvtsh_ss(((const uint16_t *)row)[k]);
    case AK_TYPE_BF16: return kn_bf16_to_f32(((const uint16_t *)row)[k]);
    default: return ((const float *)row)[k];
  }
}

KN_INLINE void kn_f_tile(const kn_mm_plan_t *p, ak_ggml_type_t type, int64_t r0, int nr,
                         int64_t t0, const int nt) {
  const uint8_t *wrow[KN_NR];
  const float *x[KN_NT];
  for (int r = 0; r < KN_NR; r++) wrow[r] = p->w + (size_t)(r0 + (r < nr ? r : 0)) * p->w_row_bytes;
  for (int t = 0; t < KN_NT; t++) x[t] = p->x + (t0 + (t < nt ? t : 0)) * p->n_cols;
  __m256 acc[KN_NR][KN_NT];
  for (int r = 0; r < KN_NR; r++)
    for (int t = 0; t < KN_NT; t++) acc[r][t] = _mm256_setzero_ps();
  int64_t k = 0;
  for (; k + 8 <= p->n_cols; k += 8) {
    __m256 w[KN_NR];
    for (int r = 0; r < KN_NR; r++) w[r] = kn_load_w8(type, wrow[r], k);
    for (int t = 0; t < nt; t++) {
      __m256 xv = _mm256_loadu_ps(x[t] + k);
      for (int r = 0; r < KN_NR; r++) acc[r][t] = _mm256_fmadd_ps(w[r], xv, acc[r][t]);
    }
  }
  for (int t = 0; t < nt; t++)
    for (int r = 0; r < nr; r++) {
      float v = kn_hsum256(acc[r][t]);
      for (int64_t kk = k; kk < p->n_cols; kk++) v += kn_w_elem(type, wrow[r], kk) * x[t][kk];
      p->y[(t0 + t) * p->n_rows + r0 + r] = v;
    }
}

#include "kn_matmul_float_rows.h"

void kn_mm_rows_avx2(const kn_mm_plan_t *p, int64_t r_begin, int64_t r_end) {
  switch (p->type) {
    case AK_TYPE_Q4_0: kn_q_rows(p, AK_TYPE_Q4_0, r_begin, r_end); return;
    case AK_TYPE_Q4_1: kn_q_rows(p, AK_TYPE_Q4_1, r_begin, r_end); return;
    case AK_TYPE_Q8_0: kn_q_rows(p, AK_TYPE_Q8_0, r_begin, r_end); return;
    case AK_TYPE_F16: kn_f_rows(p, AK_TYPE_F16, r_begin, r_end); return;
    case AK_TYPE_BF16: kn_f_rows(p, AK_TYPE_BF16, r_begin, r_end); return;
    default: kn_f_rows(p, AK_TYPE_F32, r_begin, r_end); return;
  }
}

/* ---- activation quantization: the float operations of kn_act_quantize_c ---- */

KN_INLINE __m128i kn_pack16(__m256i a, __m256i b) { /* 16 int32 (|v| <= 127) -> 16 int8 */
  __m256i w = _mm256_permute4x64_epi64(_mm256_packs_epi32(a, b), 0xD8);
  return _mm_packs_epi16(_mm256_castsi256_si128(w), _mm256_extracti128_si256(w, 1));
}

void kn_act_quantize_avx2(const kn_mm_plan_t *p, int64_t t_begin, int64_t t_end) {
  const kn_act_layout_t *l = &p->act_l;
  const __m256 sign = _mm256_set1_ps(-0.0f);
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
      if (blk >= l->n_blocks) {
        memset(lo, 0, 16);
        memset(lo + 64, 0, 16);
        _mm_storeu_ps(d16 + g * 16 + b * 4, _mm_setzero_ps());
        _mm_storeu_si128((__m128i *)(sq16 + g * 16 + b * 4), _mm_setzero_si128());
        continue;
      }
      const float *xb = x + blk * AK_QK;
      __m256 v[4];
      for (int k = 0; k < 4; k++) v[k] = _mm256_loadu_ps(xb + 8 * k);
      __m256 ax = _mm256_max_ps(_mm256_max_ps(_mm256_andnot_ps(sign, v[0]), _mm256_andnot_ps(sign, v[1])),
                                _mm256_max_ps(_mm256_andnot_ps(sign, v[2]), _mm256_andnot_ps(sign, v[3])));
      __m128 m = _mm_max_ps(_mm256_castps256_ps128(ax), _mm256_extractf128_ps(ax, 1));
      m = _mm_max_ps(m, _mm_movehl_ps(m, m));
      m = _mm_max_ss(m, _mm_movehdup_ps(m));
      float amax = _mm_cvtss_f32(m);
      float d = amax / 127.0f;
      float id = d != 0.0f ? 1.0f / d : 0.0f;
      __m256 vid = _mm256_set1_ps(id);
      __m256i q[4];
      for (int k = 0; k < 4; k++) q[k] = _mm256_cvtps_epi32(_mm256_mul_ps(v[k], vid));
      _mm_storeu_si128((__m128i *)lo, kn_pack16(q[0], q[1]));
      _mm_storeu_si128((__m128i *)(lo + 64), kn_pack16(q[2], q[3]));
      __m256i qs8 = _mm256_add_epi32(_mm256_add_epi32(q[0], q[1]), _mm256_add_epi32(q[2], q[3]));
      __m128i q4 = _mm_add_epi32(_mm256_castsi256_si128(qs8), _mm256_extracti128_si256(qs8, 1));
      q4 = _mm_add_epi32(q4, _mm_shuffle_epi32(q4, 0x4E));
      q4 = _mm_add_epi32(q4, _mm_shuffle_epi32(q4, 0xB1));
      _mm_storeu_ps(d16 + g * 16 + b * 4, _mm_set1_ps(d));
      s[blk] = d * (float)_mm_cvtsi128_si32(q4);
      _mm_storeu_si128((__m128i *)(sq16 + g * 16 + b * 4), _mm_setr_epi32(_mm_cvtsi128_si32(q4), 0, 0, 0));
    }
    for (int64_t blk = l->n_blocks; blk < l->n_s; blk++) s[blk] = 0.0f;
  }
}
