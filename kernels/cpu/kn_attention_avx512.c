/* kn_attention_avx512: the attention work unit (one query token, one KV head, its
 * n_group query heads) with AVX-512: K and V rows of a chunk are converted to f32
 * once (vcvtph2ps) and shared by the group's heads; exp is vectorized over keys.
 * Head dims that are not a multiple of 16 take the portable unit. */
#include <math.h>

#include "kn_avx512_internal.h"

enum { KN_CHUNK = 64 }; /* must match kn_attention.c's KN_ATTN_KEY_CHUNK */


/* Converts nj rows of hd elements of one KV head, view tokens [j0, j0+nj), to f32. */
static void kn_load_rows(const kn_paged_kv_t *kv, const void *base, int32_t seq, int64_t j0,
                         int32_t nj, int32_t kv_head, int32_t hd, float *dst) {
  for (int32_t j = 0; j < nj; j++) {
    int64_t jj = j0 + j;
    int32_t page = kv->indices[kv->indptr[seq] + jj / kv->page_tokens];
    int64_t off = (int64_t)page * kv->page_stride_elems + kv_head * kv->head_stride_elems +
                  (jj % kv->page_tokens) * hd;
    float *d = dst + (int64_t)j * hd;
    if (kv->dtype == KN_F16) {
      const uint16_t *s = (const uint16_t *)base + off;
      for (int32_t i = 0; i < hd; i += 16)
        _mm512_store_ps(d + i, _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(s + i))));
    } else {
      const float *s = (const float *)base + off;
      for (int32_t i = 0; i < hd; i += 16) _mm512_store_ps(d + i, _mm512_loadu_ps(s + i));
    }
  }
}

void kn_attn_unit_avx512(const kn_attn_unit_t *u) {
  const kn_attn_args_t *a = u->a;
  const int32_t hd = a->head_dim, n_group = a->n_heads / a->n_kv_heads;
  if (hd % 16) {
    kn_attn_unit_c(u);
    return;
  }
  const kn_paged_kv_t *kv = &a->kv;
  const int32_t seq = a->tok_seq_idx[u->tok_idx];
  const int32_t h0 = u->kv_head_idx * n_group;
  float *acc = u->scratch;                                               /* [n_group][hd] */
  float *sc = acc + ((int64_t)n_group * hd + 15) / 16 * 16;              /* [n_group][CHUNK] */
  float *ml = sc + ((int64_t)n_group * KN_CHUNK + 15) / 16 * 16;         /* m[g], l[g] */
  float *row = ml + ((int64_t)2 * n_group + 15) / 16 * 16;               /* [CHUNK][hd] */
  const float *q = a->q + (u->tok_idx * a->n_heads + h0) * hd;          /* [n_group][hd] */
  float *out = a->out + (u->tok_idx * a->n_heads + h0) * hd;            /* [n_group][hd] */
  for (int32_t g = 0; g < n_group; g++) {
    ml[2 * g] = -INFINITY;
    ml[2 * g + 1] = 0.0f;
  }
  memset(acc, 0, (size_t)n_group * hd * sizeof(float));
  const __m512 vscale = _mm512_set1_ps(a->scale);
  for (int64_t j0 = 0; j0 < u->kv_len; j0 += KN_CHUNK) {
    int32_t nj = (int32_t)(u->kv_len - j0 < KN_CHUNK ? u->kv_len - j0 : KN_CHUNK);
    kn_load_rows(kv, kv->k_base, seq, j0, nj, u->kv_head_idx, hd, row);
    for (int32_t g = 0; g < n_group; g++) {
      const float *qg = q + (int64_t)g * hd;
      float *s = sc + g * KN_CHUNK;
      for (int32_t j = 0; j < nj; j++) {
        const float *k = row + (int64_t)j * hd;
        __m512 d0 = _mm512_mul_ps(_mm512_loadu_ps(qg), _mm512_load_ps(k));
        for (int32_t i = 16; i < hd; i += 16)
          d0 = _mm512_fmadd_ps(_mm512_loadu_ps(qg + i), _mm512_load_ps(k + i), d0);
        s[j] = _mm512_reduce_add_ps(d0);
      }
      /* Online softmax over this chunk, 16 keys per vector; padding lanes get -inf. */
      __m512 vmax = _mm512_set1_ps(ml[2 * g]);
      for (int32_t j = 0; j < nj; j += 16) {
        __mmask16 mk = nj - j >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << (nj - j)) - 1);
        __m512 v = _mm512_mul_ps(_mm512_maskz_loadu_ps(mk, s + j), vscale);
        v = _mm512_mask_blend_ps(mk, _mm512_set1_ps(-INFINITY), v);
        _mm512_storeu_ps(s + j, v);
        vmax = _mm512_max_ps(vmax, v);
      }
      float m_new = _mm512_reduce_max_ps(vmax);
      float corr = expf(ml[2 * g] - m_new);
      __m512 vl = _mm512_setzero_ps(), vm = _mm512_set1_ps(m_new);
      for (int32_t j = 0; j < nj; j += 16) {
        __m512 p = kn_exp512(_mm512_sub_ps(_mm512_loadu_ps(s + j), vm));
        __mmask16 mk = nj - j >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << (nj - j)) - 1);
        p = _mm512_maskz_mov_ps(mk, p);
        _mm512_storeu_ps(s + j, p);
        vl = _mm512_add_ps(vl, p);
      }
      ml[2 * g] = m_new;
      ml[2 * g + 1] = ml[2 * g + 1] * corr + _mm512_reduce_add_ps(vl);
      __m512 vc = _mm512_set1_ps(corr);
      for (int32_t i = 0; i < hd; i += 16)
        _mm512_store_ps(acc + g * hd + i, _mm512_mul_ps(_mm512_load_ps(acc + g * hd + i), vc));
    }
    kn_load_rows(kv, kv->v_base, seq, j0, nj, u->kv_head_idx, hd, row);
    for (int32_t g = 0; g < n_group; g++) {
      const float *p = sc + g * KN_CHUNK;
      for (int32_t i = 0; i < hd; i += 16) {
        __m512 o = _mm512_load_ps(acc + g * hd + i);
        for (int32_t j = 0; j < nj; j++)
          o = _mm512_fmadd_ps(_mm512_set1_ps(p[j]), _mm512_load_ps(row + (int64_t)j * hd + i), o);
        _mm512_store_ps(acc + g * hd + i, o);
      }
    }
  }
  for (int32_t g = 0; g < n_group; g++) {
    float inv = ml[2 * g + 1] > 0.0f ? 1.0f / ml[2 * g + 1] : 0.0f;
    __m512 vi = _mm512_set1_ps(inv);
    for (int32_t i = 0; i < hd; i += 16)
      _mm512_storeu_ps(out + g * hd + i, _mm512_mul_ps(_mm512_load_ps(acc + g * hd + i), vi));
  }
}
