/* kn_avx512_internal: helpers shared by the files compiled with the AVX-512 flags
 * (kn_*_avx512.c) — unpacking a group of four quantized weight blocks into unsigned
 * bytes in the activation order (kn_cpu_internal.h), and a vector exp. Include only
 * from those files: everything here uses AVX-512 intrinsics. */
#ifndef KN_AVX512_INTERNAL_H
#define KN_AVX512_INTERNAL_H

#include <immintrin.h>

#include "kn_cpu_internal.h"

#define KN_INLINE static inline __attribute__((always_inline))


/* Permutation indices for unpacking, built once per call. */
typedef struct {
  __m512i qs; /* bytes of the 4 blocks' nibbles/values from two loads */
  __m512i dw; /* words: 0..15 d of block w/4, 16..31 m of block (w-16)/4 (Q4_1) */
  __m512i dw4; /* words 0..3: m (Q4_1) or d of blocks 0..3, compact */
} kn_idx_t;

typedef struct {
  __m512i lo, hi; /* u8 [4 blocks][16] */
  __m512 d16;     /* d of block l/4 in lane l */
  __m512 m16;     /* offset m of block l/4 in lane l */
  __m128 m4;      /* offset m of block l (compact) */
} kn_wpk_t;

static inline kn_idx_t kn_idx_build(ak_ggml_type_t type) {
  _Alignas(64) uint8_t qs[64];
  _Alignas(64) uint16_t dw[32];
  memset(dw, 0, sizeof dw);
  for (int j = 0; j < 64; j++) {
    int b = j / 16, i = j % 16;
    if (type == AK_TYPE_Q4_1) { /* 20 B blocks; second load at +16 */
      int off = 20 * b + 4 + i;
      qs[j] = (uint8_t)(b < 3 ? off : 64 + off - 16);
    } else { /* Q4_0: 18 B blocks; second load at +8. Q8_0 does not use it. */
      int off = 18 * b + 2 + i;
      qs[j] = (uint8_t)(b < 3 ? off : 64 + off - 8);
    }
  }
  int words_per_block = type == AK_TYPE_Q4_1 ? 10 : type == AK_TYPE_Q4_0 ? 9 : 17;
  int m_word = type == AK_TYPE_Q4_1 ? 1 : 0; /* Q4_1: m follows d */
  for (int w = 0; w < 16; w++) dw[w] = (uint16_t)(words_per_block * (w / 4));
  for (int w = 16; w < 32; w++) dw[w] = (uint16_t)(words_per_block * ((w - 16) / 4) + m_word);
  _Alignas(64) uint16_t dw4[32];
  memset(dw4, 0, sizeof dw4);
  for (int w = 0; w < 4; w++) dw4[w] = (uint16_t)(words_per_block * w + m_word);
  kn_idx_t ix;
  ix.qs = _mm512_load_si512(qs);
  ix.dw = _mm512_load_si512(dw);
  ix.dw4 = _mm512_load_si512(dw4);
  return ix;
}

KN_INLINE __mmask64 kn_bytes_mask(int64_t n) {
  return n >= 64 ? ~(__mmask64)0 : n <= 0 ? 0 : (((__mmask64)1 << n) - 1);
}

/* Unpacks group g (nvb valid blocks, 1..4) starting at gp; m16 gets the blocks'
 * offsets m (Q4_1) or the equivalent of the unsigned shift (-8 d, -128 d). */
KN_INLINE kn_wpk_t kn_unpack(ak_ggml_type_t type, const uint8_t *gp, int nvb,
                             const kn_idx_t *ix) {
  kn_wpk_t w;
  if (type == AK_TYPE_Q8_0) {
    __m256i b[4];
    for (int k = 0; k < 4; k++)
      b[k] = nvb == 4 || k < nvb ? _mm256_loadu_si256((const __m256i *)(gp + 34 * k + 2))
                                 : _mm256_setzero_si256();
    __m512i za = _mm512_inserti64x4(_mm512_castsi256_si512(b[0]), b[1], 1);
    __m512i zb = _mm512_inserti64x4(_mm512_castsi256_si512(b[2]), b[3], 1);
    const __m512i flip = _mm512_set1_epi8((char)0x80); /* s8 -> u8 = w + 128 */
    w.lo = _mm512_xor_si512(_mm512_shuffle_i64x2(za, zb, 0x88), flip);
    w.hi = _mm512_xor_si512(_mm512_shuffle_i64x2(za, zb, 0xDD), flip);
    __m512i l0, l1;
    if (nvb == 4) {
      l0 = _mm512_loadu_si512(gp);
      l1 = _mm512_loadu_si512(gp + 64);
    } else {
      l0 = _mm512_maskz_loadu_epi8(kn_bytes_mask(34 * nvb), gp);
      l1 = _mm512_maskz_loadu_epi8(kn_bytes_mask(34 * nvb - 64), gp + 64);
    }
    __m512i dd = _mm512_permutex2var_epi16(l0, ix->dw, l1);
    w.d16 = _mm512_cvtph_ps(_mm512_castsi512_si256(dd));
    w.m16 = _mm512_mul_ps(w.d16, _mm512_set1_ps(-128.0f));
    w.m4 = _mm_mul_ps(_mm_cvtph_ps(_mm512_castsi512_si128(_mm512_permutex2var_epi16(l0, ix->dw4, l1))),
                      _mm_set1_ps(-128.0f));
    return w;
  }
  const int q41 = type == AK_TYPE_Q4_1;
  const int bb = q41 ? 20 : 18, off1 = q41 ? 16 : 8;
  __m512i l0, l1;
  if (nvb == 4) {
    l0 = _mm512_loadu_si512(gp);
    l1 = _mm512_loadu_si512(gp + off1);
  } else {
    l0 = _mm512_maskz_loadu_epi8(kn_bytes_mask(bb * nvb), gp);
    l1 = _mm512_maskz_loadu_epi8(kn_bytes_mask(bb * nvb - off1), gp + off1);
  }
  __m512i v = _mm512_permutex2var_epi8(l0, ix->qs, l1);
  const __m512i nib = _mm512_set1_epi8(0x0F);
  w.lo = _mm512_and_si512(v, nib);
  w.hi = _mm512_and_si512(_mm512_srli_epi16(v, 4), nib);
  __m512i dm = _mm512_permutexvar_epi16(ix->dw, l0);
  w.d16 = _mm512_cvtph_ps(_mm512_castsi512_si256(dm));
  w.m16 = q41 ? _mm512_cvtph_ps(_mm512_extracti64x4_epi64(dm, 1))
              : _mm512_mul_ps(w.d16, _mm512_set1_ps(-8.0f));
  __m128 x4 = _mm_cvtph_ps(_mm512_castsi512_si128(_mm512_permutexvar_epi16(ix->dw4, l0)));
  w.m4 = q41 ? x4 : _mm_mul_ps(x4, _mm_set1_ps(-8.0f));
  return w;
}

/* Cephes' expf: n = round(x log2 e), r = x - n ln 2 in two parts, a degree-5
 * polynomial, times 2^n (vscalefps) — about 1 ulp, with x clamped to [-87, 88]. */
KN_INLINE __m512 kn_exp512(__m512 x) {
  x = _mm512_min_ps(_mm512_max_ps(x, _mm512_set1_ps(-87.0f)), _mm512_set1_ps(88.0f));
  __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
                                  _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693359375f), x);
  r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.12194440e-4f), r);
  __m512 p = _mm512_set1_ps(1.9875691500e-4f);
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.3981999507e-3f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(8.3334519073e-3f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(4.1665795894e-2f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.6666665459e-1f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(5.0000001201e-1f));
  p = _mm512_fmadd_ps(p, _mm512_mul_ps(r, r), _mm512_add_ps(r, _mm512_set1_ps(1.0f)));
  return _mm512_scalef_ps(p, n);
}

#endif
