/* kn_attention_avx512: the attention work unit with AVX-512, blocked like a GEMM.
 *
 * A unit is up to KN_ATTN_QB consecutive query tokens of one sequence and one KV
 * head: nq = n_tok_in_unit * n_group query rows that share every key and value row.
 * Keys go 16 at a time: the chunk of K is converted to f32 and transposed to
 * Kt[head_dim][16], so one query row's 16 scores are head_dim FMAs with a broadcast
 * query element (no horizontal sums); the online softmax works on those 16-lane
 * score vectors; P·V runs 4 query rows x 64 dims of accumulators in registers over
 * the chunk's V rows. K/V are read once per unit instead of once per query token.
 * Head dims that are not a multiple of 16 take the portable unit. */
#include <math.h>

#include "kn_avx512_internal.h"

enum { KN_KC = 16 }; /* keys per chunk: one vector of scores */

/* Floats this unit needs (kn_attention.c sizes the workspace with the larger of
 * this and the portable unit's need). */
int64_t kn_attn_scratch_floats_avx512(int32_t n_group, int32_t head_dim) {
  int64_t nq4 = ((int64_t)KN_ATTN_QB * n_group + 3) / 4 * 4;
  return 2 * nq4 * head_dim     /* Qs, acc */
         + nq4 * KN_KC          /* P */
         + 3 * nq4              /* m, l, corr */
         + 2 * (int64_t)head_dim * KN_KC /* Kt, Vc */
         + 64;                  /* alignment of the pieces */
}

/* In-register transpose of 16x16 floats: r[i] lane j -> r[j] lane i. */
static inline void kn_transpose16_ps(__m512 r[16]) {
  __m512 t[16], x[16];
  for (int i = 0; i < 8; i++) {
    t[2 * i] = _mm512_unpacklo_ps(r[2 * i], r[2 * i + 1]);
    t[2 * i + 1] = _mm512_unpackhi_ps(r[2 * i], r[2 * i + 1]);
  }
  for (int i = 0; i < 4; i++) {
    x[4 * i + 0] = _mm512_castpd_ps(_mm512_unpacklo_pd(_mm512_castps_pd(t[4 * i]), _mm512_castps_pd(t[4 * i + 2])));
    x[4 * i + 1] = _mm512_castpd_ps(_mm512_unpackhi_pd(_mm512_castps_pd(t[4 * i]), _mm512_castps_pd(t[4 * i + 2])));
    x[4 * i + 2] = _mm512_castpd_ps(_mm512_unpacklo_pd(_mm512_castps_pd(t[4 * i + 1]), _mm512_castps_pd(t[4 * i + 3])));
    x[4 * i + 3] = _mm512_castpd_ps(_mm512_unpackhi_pd(_mm512_castps_pd(t[4 * i + 1]), _mm512_castps_pd(t[4 * i + 3])));
  }
  for (int j = 0; j < 4; j++) {
    __m512 s0 = _mm512_shuffle_f32x4(x[j], x[4 + j], 0x44);
    __m512 s1 = _mm512_shuffle_f32x4(x[j], x[4 + j], 0xEE);
    __m512 s2 = _mm512_shuffle_f32x4(x[8 + j], x[12 + j], 0x44);
    __m512 s3 = _mm512_shuffle_f32x4(x[8 + j], x[12 + j], 0xEE);
    r[j] = _mm512_shuffle_f32x4(s0, s2, 0x88);
    r[4 + j] = _mm512_shuffle_f32x4(s0, s2, 0xDD);
    r[8 + j] = _mm512_shuffle_f32x4(s1, s3, 0x88);
    r[12 + j] = _mm512_shuffle_f32x4(s1, s3, 0xDD);
  }
}

/* 16 dims of view token jj's row (one KV head), as f32. */
static inline __m512 kn_kv_load16(const kn_paged_kv_t *kv, const void *base, int32_t seq,
                                  int64_t jj, int32_t kv_head, int32_t hd, int32_t i) {
  int32_t page = kv->indices[kv->indptr[seq] + jj / kv->page_tokens];
  int64_t off = (int64_t)page * kv->page_stride_elems + kv_head * kv->head_stride_elems +
                (jj % kv->page_tokens) * hd + i;
  if (kv->dtype == KN_F16)
    return _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)((const uint16_t *)base + off)));
  return _mm512_loadu_ps((const float *)base + off);
}

static inline float *kn_carve(float **p, int64_t n_floats) {
  float *r = *p;
  *p += (n_floats + 15) / 16 * 16;
  return r;
}

void kn_attn_unit_avx512(const kn_attn_unit_t *u) {
  const kn_attn_args_t *a = u->a;
  const int32_t hd = a->head_dim, n_group = a->n_heads / a->n_kv_heads;
  if (hd % 16) {
    kn_attn_unit_c(u);
    return;
  }
  const kn_paged_kv_t *kv = &a->kv;
  const int64_t nt = u->tok_end - u->tok_begin;
  const int32_t nq = (int32_t)nt * n_group, nq4 = (nq + 3) / 4 * 4;
  const int32_t seq = a->tok_seq_idx[u->tok_begin];
  const int32_t h0 = u->kv_head_idx * n_group;
  float *sp = u->scratch;
  float *qs = kn_carve(&sp, (int64_t)nq4 * hd);   /* [nq4][hd] scaled queries */
  float *acc = kn_carve(&sp, (int64_t)nq4 * hd);  /* [nq4][hd] */
  float *pm = kn_carve(&sp, (int64_t)nq4 * KN_KC); /* [nq4][16] probabilities */
  float *mx = kn_carve(&sp, nq4), *sum = kn_carve(&sp, nq4), *corr = kn_carve(&sp, nq4);
  float *kt = kn_carve(&sp, (int64_t)hd * KN_KC);  /* [hd][16] */
  float *vc = kn_carve(&sp, (int64_t)hd * KN_KC);  /* [16][hd] */

  int64_t lmax = 0;
  const __m512 vscale = _mm512_set1_ps(a->scale);
  for (int32_t r = 0; r < nq4; r++) {
    float *qr = qs + (int64_t)r * hd;
    if (r < nq) {
      int64_t t = u->tok_begin + r / n_group;
      const float *q = a->q + (t * a->n_heads + h0 + r % n_group) * hd; /* [hd] */
      for (int32_t i = 0; i < hd; i += 16)
        _mm512_store_ps(qr + i, _mm512_mul_ps(_mm512_loadu_ps(q + i), vscale));
      if (a->tok_kv_len[t] > lmax) lmax = a->tok_kv_len[t];
    }
    memset(acc + (int64_t)r * hd, 0, (size_t)hd * sizeof(float));
    mx[r] = -INFINITY;
    sum[r] = 0.0f;
    _mm512_store_ps(pm + r * KN_KC, _mm512_setzero_ps()); /* padding rows stay 0 */
  }

  for (int64_t j0 = 0; j0 < lmax; j0 += KN_KC) {
    const int32_t nj = (int32_t)(lmax - j0 < KN_KC ? lmax - j0 : KN_KC);
    /* K chunk -> Kt, 16 dims at a time through a 16x16 transpose. */
    for (int32_t i = 0; i < hd; i += 16) {
      __m512 r16[16];
      for (int32_t j = 0; j < KN_KC; j++)
        r16[j] = j < nj ? kn_kv_load16(kv, kv->k_base, seq, j0 + j, u->kv_head_idx, hd, i)
                        : _mm512_setzero_ps();
      kn_transpose16_ps(r16);
      for (int32_t c = 0; c < 16; c++) _mm512_store_ps(kt + (int64_t)(i + c) * KN_KC, r16[c]);
    }
    for (int32_t r = 0; r < nq; r++) {
      const int64_t len = a->tok_kv_len[u->tok_begin + r / n_group];
      float *pr = pm + r * KN_KC;
      if (len <= j0) { /* this row's keys ended before the chunk */
        corr[r] = 1.0f;
        _mm512_store_ps(pr, _mm512_setzero_ps());
        continue;
      }
      const float *qr = qs + (int64_t)r * hd;
      __m512 s0 = _mm512_setzero_ps(), s1 = s0, s2 = s0, s3 = s0;
      for (int32_t i = 0; i < hd; i += 4) {
        s0 = _mm512_fmadd_ps(_mm512_set1_ps(qr[i]), _mm512_load_ps(kt + (int64_t)i * KN_KC), s0);
        s1 = _mm512_fmadd_ps(_mm512_set1_ps(qr[i + 1]), _mm512_load_ps(kt + (int64_t)(i + 1) * KN_KC), s1);
        s2 = _mm512_fmadd_ps(_mm512_set1_ps(qr[i + 2]), _mm512_load_ps(kt + (int64_t)(i + 2) * KN_KC), s2);
        s3 = _mm512_fmadd_ps(_mm512_set1_ps(qr[i + 3]), _mm512_load_ps(kt + (int64_t)(i + 3) * KN_KC), s3);
      }
      __m512 s = _mm512_add_ps(_mm512_add_ps(s0, s1), _mm512_add_ps(s2, s3));
      int64_t n_valid = len - j0 < nj ? len - j0 : nj;
      const __mmask16 valid = (__mmask16)((1u << n_valid) - 1);
      s = _mm512_mask_blend_ps(valid, _mm512_set1_ps(-INFINITY), s);
      float m_new = fmaxf(mx[r], _mm512_reduce_max_ps(s));
      float c = expf(mx[r] - m_new);
      __m512 p = _mm512_maskz_mov_ps(valid, kn_exp512(_mm512_sub_ps(s, _mm512_set1_ps(m_new))));
      _mm512_store_ps(pr, p);
      sum[r] = sum[r] * c + _mm512_reduce_add_ps(p);
      mx[r] = m_new;
      corr[r] = c;
    }
    for (int32_t r = nq; r < nq4; r++) corr[r] = 1.0f;
    for (int32_t j = 0; j < nj; j++)
      for (int32_t i = 0; i < hd; i += 16)
        _mm512_store_ps(vc + (int64_t)j * hd + i, kn_kv_load16(kv, kv->v_base, seq, j0 + j, u->kv_head_idx, hd, i));
    /* acc = acc * corr + P·V: 4 rows x 4 vectors of accumulators in registers. */
    for (int32_t r0 = 0; r0 < nq4; r0 += 4) {
      int32_t i = 0;
      for (; i + 64 <= hd; i += 64) {
        __m512 o[4][4];
        for (int k = 0; k < 4; k++) {
          __m512 ck = _mm512_set1_ps(corr[r0 + k]);
          for (int v = 0; v < 4; v++)
            o[k][v] = _mm512_mul_ps(_mm512_load_ps(acc + (int64_t)(r0 + k) * hd + i + 16 * v), ck);
        }
        for (int32_t j = 0; j < nj; j++) {
          __m512 vv[4];
          for (int v = 0; v < 4; v++) vv[v] = _mm512_load_ps(vc + (int64_t)j * hd + i + 16 * v);
          for (int k = 0; k < 4; k++) {
            __m512 pk = _mm512_set1_ps(pm[(r0 + k) * KN_KC + j]);
            for (int v = 0; v < 4; v++) o[k][v] = _mm512_fmadd_ps(pk, vv[v], o[k][v]);
          }
        }
        for (int k = 0; k < 4; k++)
          for (int v = 0; v < 4; v++) _mm512_store_ps(acc + (int64_t)(r0 + k) * hd + i + 16 * v, o[k][v]);
      }
      for (; i < hd; i += 16) { /* head dims that are not a multiple of 64 */
        for (int k = 0; k < 4; k++) {
          float *ak = acc + (int64_t)(r0 + k) * hd + i;
          __m512 o = _mm512_mul_ps(_mm512_load_ps(ak), _mm512_set1_ps(corr[r0 + k]));
          for (int32_t j = 0; j < nj; j++)
            o = _mm512_fmadd_ps(_mm512_set1_ps(pm[(r0 + k) * KN_KC + j]),
                                _mm512_load_ps(vc + (int64_t)j * hd + i), o);
          _mm512_store_ps(ak, o);
        }
      }
    }
  }
  for (int32_t r = 0; r < nq; r++) {
    int64_t t = u->tok_begin + r / n_group;
    float *out = a->out + (t * a->n_heads + h0 + r % n_group) * hd; /* [hd] */
    float inv = sum[r] > 0.0f ? 1.0f / sum[r] : 0.0f; /* kv_len 0: zeros */
    for (int32_t i = 0; i < hd; i += 16)
      _mm512_storeu_ps(out + i, _mm512_mul_ps(_mm512_load_ps(acc + (int64_t)r * hd + i), _mm512_set1_ps(inv)));
  }
}
