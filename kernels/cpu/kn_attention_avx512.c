/* kn_attention_avx512: the attention work unit with AVX-512, blocked like a GEMM.
 *
 * A unit is up to KN_ATTN_QB consecutive query tokens of one sequence and one KV
 * head: nq = n_tok_in_unit * n_group query rows that share every key and value row.
 * Keys go 64 at a time: the chunk of K is converted to f32 and transposed to
 * Kt[head_dim][64], so one query row's 64 scores are 4 x head_dim FMAs with a
 * broadcast query element (no horizontal sums); the online softmax works on those
 * score vectors; P·V runs 4 query rows x 64 dims of accumulators in registers over
 * the chunk's V rows. K/V are read once per unit instead of once per query token.
 * Head dims that are not a multiple of 16 take the portable unit. */
#include <math.h>

#include "kn_avx512_internal.h"

/* Keys per chunk: four vectors of scores per query row, so the softmax bookkeeping
 * (max, scalar exp of the correction, sums, rescaling acc) is paid per 64 keys. */
enum { KN_KC = 64, KN_KV = KN_KC / 16 };
/* Prefetch distance in keys: K and V of the chunk this far ahead are requested while
 * the current chunk is computed (a decode step streams every layer's KV from DRAM). */
enum { KN_PF_KEYS = 2 * KN_KC };

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

/* Address of view token jj's row for one KV head. */
static inline const uint8_t *kn_kv_row(const kn_paged_kv_t *kv, const void *base, int32_t seq,
                                       int64_t jj, int32_t kv_head, int32_t hd) {
  int32_t page = kv->indices[kv->indptr[seq] + jj / kv->page_tokens];
  int64_t off = (int64_t)page * kv->page_stride_elems + kv_head * kv->head_stride_elems +
                (jj % kv->page_tokens) * hd;
  return (const uint8_t *)base + off * (kv->dtype == KN_F16 ? 2 : 4);
}

/* Prefetches view tokens [j_begin, j_end) of one KV head into L2, a page's run of
 * rows at a time (they are contiguous within a page). A decode step streams every
 * layer's KV from DRAM; into L2 (T1) measured 20% faster than into L1 here. */
static void kn_kv_prefetch(const kn_paged_kv_t *kv, const void *base, int32_t seq, int64_t j_begin,
                           int64_t j_end, int32_t kv_head, int32_t hd) {
  const int64_t elem = kv->dtype == KN_F16 ? 2 : 4;
  for (int64_t j = j_begin; j < j_end;) {
    int64_t slot = j % kv->page_tokens, n = kv->page_tokens - slot;
    if (n > j_end - j) n = j_end - j;
    const char *p = (const char *)kn_kv_row(kv, base, seq, j, kv_head, hd);
    for (int64_t o = 0; o < n * hd * elem; o += 64) _mm_prefetch(p + o, _MM_HINT_T1);
    j += n;
  }
}

/* 16 dims (from dim i) of a row, as f32. */
static inline __m512 kn_row_load16(kn_dtype_t dtype, const uint8_t *row, int32_t i) {
  if (dtype == KN_F16) return _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(row + 2 * (int64_t)i)));
  return _mm512_loadu_ps((const float *)row + i);
}

/* Lane j of the result = the sum of row j of v[16][16]: 45 shuffles and adds for 16
 * horizontal sums. */
static inline __m512 kn_reduce16(const float v[16][16]) {
  __m512 t[8], u[4];
  for (int k = 0; k < 8; k++) {
    __m512 a = _mm512_load_ps(v[2 * k]), b = _mm512_load_ps(v[2 * k + 1]);
    t[k] = _mm512_add_ps(_mm512_unpacklo_ps(a, b), _mm512_unpackhi_ps(a, b));
  }
  for (int k = 0; k < 4; k++)
    u[k] = _mm512_add_ps(
        _mm512_castpd_ps(_mm512_unpacklo_pd(_mm512_castps_pd(t[2 * k]), _mm512_castps_pd(t[2 * k + 1]))),
        _mm512_castpd_ps(_mm512_unpackhi_pd(_mm512_castps_pd(t[2 * k]), _mm512_castps_pd(t[2 * k + 1]))));
  __m512 x01 = _mm512_add_ps(_mm512_shuffle_f32x4(u[0], u[1], 0x44), _mm512_shuffle_f32x4(u[0], u[1], 0xEE));
  __m512 x23 = _mm512_add_ps(_mm512_shuffle_f32x4(u[2], u[3], 0x44), _mm512_shuffle_f32x4(u[2], u[3], 0xEE));
  return _mm512_add_ps(_mm512_shuffle_f32x4(x01, x23, 0x88), _mm512_shuffle_f32x4(x01, x23, 0xDD));
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
  float *pm = kn_carve(&sp, (int64_t)nq4 * KN_KC); /* [nq4][64] probabilities */
  float *mx = kn_carve(&sp, nq4), *sum = kn_carve(&sp, nq4), *corr = kn_carve(&sp, nq4);
  float *kt = kn_carve(&sp, (int64_t)hd * KN_KC);  /* [hd][64] */
  float *vc = kn_carve(&sp, (int64_t)hd * KN_KC);  /* [64][hd] */

  int64_t lmax = 0;
  const __m512 vscale = _mm512_set1_ps(a->scale);
  for (int32_t r = 0; r < nq4; r++) {
    float *qr = qs + (int64_t)r * hd;
    if (r < nq) {
      int64_t t = u->tok_begin + r / n_group;
      const float *q = a->q + (t * a->n_heads + h0 + r % n_group) * hd; /* [hd] */
      for (int32_t i = 0; i < hd; i += 16)
        _mm512_store_ps(qr + i, _mm512_mul_ps(_mm512_loadu_ps(q + i), vscale));
      int64_t len = a->tok_kv_len[t] < u->key_end ? a->tok_kv_len[t] : u->key_end;
      if (len > lmax) lmax = len;
    } else {
      memset(qr, 0, (size_t)hd * sizeof(float));
    }
    memset(acc + (int64_t)r * hd, 0, (size_t)hd * sizeof(float));
    mx[r] = -INFINITY;
    sum[r] = 0.0f;
    for (int v = 0; v < KN_KV; v++) /* padding rows stay 0 */
      _mm512_store_ps(pm + r * KN_KC + 16 * v, _mm512_setzero_ps());
  }

  for (int64_t j = u->key_begin; j < u->key_begin + KN_PF_KEYS && j < lmax; j += KN_KC) {
    int64_t j_end = j + KN_KC < lmax ? j + KN_KC : lmax;
    kn_kv_prefetch(kv, kv->k_base, seq, j, j_end, u->kv_head_idx, hd);
    kn_kv_prefetch(kv, kv->v_base, seq, j, j_end, u->kv_head_idx, hd);
  }
  for (int64_t j0 = u->key_begin; j0 < lmax; j0 += KN_KC) {
    const int32_t nj = (int32_t)(lmax - j0 < KN_KC ? lmax - j0 : KN_KC);
    /* The next chunk's K and V arrive while this one is computed. */
    if (j0 + KN_PF_KEYS < lmax) {
      int64_t j_end = j0 + KN_PF_KEYS + KN_KC < lmax ? j0 + KN_PF_KEYS + KN_KC : lmax;
      kn_kv_prefetch(kv, kv->k_base, seq, j0 + KN_PF_KEYS, j_end, u->kv_head_idx, hd);
      kn_kv_prefetch(kv, kv->v_base, seq, j0 + KN_PF_KEYS, j_end, u->kv_head_idx, hd);
    }
    /* K chunk -> Kt[hd][64], 16 keys x 16 dims at a time through a 16x16 transpose. */
    /* Row addresses walking the page list: one division per chunk, not per key. */
    const uint8_t *krow[KN_KC], *vrow[KN_KC];
    {
      const int64_t elem = kv->dtype == KN_F16 ? 2 : 4;
      const int32_t *pages = kv->indices + kv->indptr[seq];
      int64_t pidx = j0 / kv->page_tokens, slot = j0 % kv->page_tokens;
      for (int32_t j = 0; j < nj; j++) {
        int64_t off = ((int64_t)pages[pidx] * kv->page_stride_elems +
                       u->kv_head_idx * kv->head_stride_elems + slot * hd) * elem;
        krow[j] = (const uint8_t *)kv->k_base + off;
        vrow[j] = (const uint8_t *)kv->v_base + off;
        if (++slot == kv->page_tokens) {
          slot = 0;
          pidx++;
        }
      }
    }
    /* One row tile (decode: n_group <= 4 rows) takes dot products instead: the
     * transpose would cost more than the scores it feeds. */
    const int k_dot = nq4 <= 4;
    for (int32_t jb = 0; jb < (k_dot ? 0 : nj); jb += 16) /* lanes past nj are masked below */
      for (int32_t i = 0; i < hd; i += 16) {
        __m512 r16[16];
        for (int32_t j = 0; j < 16; j++)
          r16[j] = jb + j < nj ? kn_row_load16(kv->dtype, krow[jb + j], i) : _mm512_setzero_ps();
        kn_transpose16_ps(r16);
        for (int32_t c = 0; c < 16; c++) _mm512_store_ps(kt + (int64_t)(i + c) * KN_KC + jb, r16[c]);
      }
    /* Scores of 4 query rows at a time: 16 independent FMA chains share each Kt load. */
    for (int32_t r0 = 0; r0 < nq4; r0 += 4) {
      int64_t len[4];
      int any = 0;
      for (int k = 0; k < 4; k++) {
        len[k] = r0 + k < nq ? a->tok_kv_len[u->tok_begin + (r0 + k) / n_group] : 0;
        if (len[k] > u->key_end) len[k] = u->key_end;
        any |= len[k] > j0;
      }
      __m512 sv[4][KN_KV];
      for (int k = 0; k < 4; k++)
        for (int v = 0; v < KN_KV; v++) sv[k][v] = _mm512_setzero_ps();
      if (any && k_dot) {
        _Alignas(64) float dbuf[4][16][16]; /* [row][key][lane]: partial dot products */
        for (int32_t jb = 0; jb < nj; jb += 16) {
          for (int32_t j = 0; j < 16; j++) {
            __m512 d[4];
            for (int k = 0; k < 4; k++) d[k] = _mm512_setzero_ps();
            if (jb + j < nj)
              for (int32_t i = 0; i < hd; i += 16) {
                const __m512 kk = kn_row_load16(kv->dtype, krow[jb + j], i);
                for (int k = 0; k < 4; k++)
                  d[k] = _mm512_fmadd_ps(_mm512_load_ps(qs + (int64_t)(r0 + k) * hd + i), kk, d[k]);
              }
            for (int k = 0; k < 4; k++) _mm512_store_ps(dbuf[k][j], d[k]);
          }
          for (int k = 0; k < 4; k++) sv[k][jb / 16] = kn_reduce16(dbuf[k]);
        }
      } else if (any) {
        for (int32_t i = 0; i < hd; i++) {
          __m512 kv4[KN_KV];
          for (int v = 0; v < KN_KV; v++) kv4[v] = _mm512_load_ps(kt + (int64_t)i * KN_KC + 16 * v);
          for (int k = 0; k < 4; k++) {
            const __m512 qi = _mm512_set1_ps(qs[(int64_t)(r0 + k) * hd + i]);
            for (int v = 0; v < KN_KV; v++) sv[k][v] = _mm512_fmadd_ps(qi, kv4[v], sv[k][v]);
          }
        }
      }
      for (int k = 0; k < 4; k++) {
        const int32_t r = r0 + k;
        float *pr = pm + r * KN_KC;
        if (len[k] <= j0) { /* a padding row, or this row's keys ended before the chunk */
          corr[r] = 1.0f;
          for (int v = 0; v < KN_KV; v++) _mm512_store_ps(pr + 16 * v, _mm512_setzero_ps());
          continue;
        }
        int64_t n_valid = len[k] - j0 < nj ? len[k] - j0 : nj;
        __m512 vmax = _mm512_set1_ps(-INFINITY);
        __mmask16 valid[KN_KV];
        for (int v = 0; v < KN_KV; v++) {
          int64_t nv = n_valid - 16 * v;
          valid[v] = nv >= 16 ? (__mmask16)0xFFFF : nv <= 0 ? 0 : (__mmask16)((1u << nv) - 1);
          vmax = _mm512_mask_max_ps(vmax, valid[v], vmax, sv[k][v]);
        }
        float m_new = fmaxf(mx[r], _mm512_reduce_max_ps(vmax));
        float c = expf(mx[r] - m_new);
        const __m512 vm = _mm512_set1_ps(m_new);
        __m512 vsum = _mm512_setzero_ps();
        for (int v = 0; v < KN_KV; v++) {
          __m512 p = valid[v] ? _mm512_maskz_mov_ps(valid[v], kn_exp512(_mm512_sub_ps(sv[k][v], vm)))
                              : _mm512_setzero_ps();
          _mm512_store_ps(pr + 16 * v, p);
          vsum = _mm512_add_ps(vsum, p);
        }
        sum[r] = sum[r] * c + _mm512_reduce_add_ps(vsum);
        mx[r] = m_new;
        corr[r] = c;
      }
    }
    /* V rows: converted once into vc when several row tiles reuse them; a single row
     * tile (decode) reads them straight from the pages instead of a store and reload. */
    const int v_direct = nq4 <= 4;
    if (!v_direct)
      for (int32_t j = 0; j < nj; j++)
        for (int32_t i = 0; i < hd; i += 16)
          _mm512_store_ps(vc + (int64_t)j * hd + i, kn_row_load16(kv->dtype, vrow[j], i));
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
          for (int v = 0; v < 4; v++)
            vv[v] = v_direct ? kn_row_load16(kv->dtype, vrow[j], i + 16 * v)
                             : _mm512_load_ps(vc + (int64_t)j * hd + i + 16 * v);
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
                                v_direct ? kn_row_load16(kv->dtype, vrow[j], i)
                                         : _mm512_load_ps(vc + (int64_t)j * hd + i),
                                o);
          _mm512_store_ps(ak, o);
        }
      }
    }
  }
  for (int32_t r = 0; r < nq; r++) {
    if (u->partial) { /* a part of a split decode: the merge normalizes */
      float *pr = u->partial + (int64_t)r * (hd + 2);
      memcpy(pr, acc + (int64_t)r * hd, (size_t)hd * sizeof(float));
      pr[hd] = mx[r];
      pr[hd + 1] = sum[r];
      continue;
    }
    int64_t t = u->tok_begin + r / n_group;
    float *out = a->out + (t * a->n_heads + h0 + r % n_group) * hd; /* [hd] */
    float inv = sum[r] > 0.0f ? 1.0f / sum[r] : 0.0f; /* kv_len 0: zeros */
    for (int32_t i = 0; i < hd; i += 16)
      _mm512_storeu_ps(out + i, _mm512_mul_ps(_mm512_load_ps(acc + (int64_t)r * hd + i), _mm512_set1_ps(inv)));
  }
}
