/* kn_attention_avx2: the attention work unit on AVX2 machines — the plain-C unit of
 * kn_attention_unit.h compiled with -mavx2 -mfma -mf16c (its dot products and
 * axpys vectorize) and F16 rows converted with vcvtph2ps. */
#include <immintrin.h>

#include "kn_attention_unit.h"

static void kn_row_to_f32_f16c(kn_dtype_t dtype, const void *src, float *dst, int32_t n) {
  if (dtype != KN_F16) {
    memcpy(dst, src, (size_t)n * sizeof(float));
    return;
  }
  const uint16_t *h = src;
  int32_t i = 0;
  for (; i + 8 <= n; i += 8) _mm256_storeu_ps(dst + i, _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(h + i))));
  for (; i < n; i++) dst[i] = _cvtsh_ss(h[i]);
}

void kn_attn_unit_avx2(const kn_attn_unit_t *u) { kn_attn_unit_impl(u, kn_row_to_f32_f16c); }
