/* kn_ops_avx512: element-wise ops with AVX-512: SwiGLU (vector exp) and f32 -> f16
 * rows for the KV store.
 * exp is Cephes' expf: n = round(x log2 e), r = x - n ln 2 in two parts, a degree-5
 * polynomial, times 2^n (vscalefps) — about 1 ulp, with x clamped so 2^n stays a
 * normal float. Not for: anything that needs exp of |x| > 87. */

#include "kn_avx512_internal.h"


void kn_silu_mul_avx512(const float *gate, const float *up, float *out, int64_t n) {
  const __m512 one = _mm512_set1_ps(1.0f);
  for (int64_t i = 0; i < n; i += 16) {
    __mmask16 m = n - i >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << (n - i)) - 1);
    __m512 g = _mm512_maskz_loadu_ps(m, gate + i), u = _mm512_maskz_loadu_ps(m, up + i);
    __m512 e = kn_exp512(_mm512_sub_ps(_mm512_setzero_ps(), g));
    _mm512_mask_storeu_ps(out + i, m, _mm512_mul_ps(_mm512_div_ps(g, _mm512_add_ps(one, e)), u));
  }
}

void kn_f32_to_f16_row_avx512(const float *src, uint16_t *dst, int64_t n) {
  for (int64_t i = 0; i < n; i += 16) {
    __mmask16 m = n - i >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << (n - i)) - 1);
    __m256i h = _mm512_cvtps_ph(_mm512_maskz_loadu_ps(m, src + i), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    _mm256_mask_storeu_epi16(dst + i, m, h);
  }
}
