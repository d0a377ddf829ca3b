/* kn_gemm_avx512: quantized matmul for many tokens (prefill), AVX-512 VNNI.
 *
 * Rows are taken 16 at a time and repacked, per K chunk, so that one int32 lane is
 * one row: for block b and quad q (4 consecutive activation-order bytes),
 *
 *   W[g][b][q] lane r = u8 weights of row r, block 4g+b, elements of quad q
 *
 * Then vpdpbusd(acc, W[g][b][q], broadcast(4 activation bytes of quad q)) advances
 * 16 rows' dot products for one token; 8 of them finish a block, and one cvt + FMA
 * with d_w[16 rows] * d_x applies the scales — no horizontal sums, and each tile
 * writes 16 contiguous outputs per token. The repack (unpack + 16x16 dword
 * transposes) is paid once per row tile and token chunk and stays in L1.
 *
 * Per 16 rows x 1 token x 32 elements: 8 vpdpbusd + cvt + mul + 2 FMA (the second is
 * the m·s offset term), against ~24 ops for the row-at-a-time layout. */
#include "kn_avx512_internal.h"

enum {
  KN_GR = 16,           /* rows per tile: one int32 lane each */
  KN_GT = 8,            /* tokens per register tile */
  KN_GKC = 12,          /* groups per K chunk (1536 elements): 30 KB of repacked weights */
  KN_GTOK_CHUNK = 256,  /* tokens per pass over a row tile: their activations stay in L2 */
};

typedef struct {
  __m512i w[4][8]; /* [block][quad] */
  __m512 d[4];     /* [block] lane r: d of row r */
  __m512 m[4];     /* [block] lane r: offset m of row r */
} kn_ilv_group_t;

/* In-register transpose of a 16x16 matrix of dwords: r[i] lane j -> r[j] lane i. */
KN_INLINE void kn_transpose16(__m512i r[16]) {
  __m512i t[16];
  for (int i = 0; i < 8; i++) {
    t[2 * i] = _mm512_unpacklo_epi32(r[2 * i], r[2 * i + 1]);
    t[2 * i + 1] = _mm512_unpackhi_epi32(r[2 * i], r[2 * i + 1]);
  }
  /* x[4i + j]: 128-bit lane L holds column 4L + j of rows 4i..4i+3. */
  __m512i x[16];
  for (int i = 0; i < 4; i++) {
    x[4 * i + 0] = _mm512_unpacklo_epi64(t[4 * i], t[4 * i + 2]);
    x[4 * i + 1] = _mm512_unpackhi_epi64(t[4 * i], t[4 * i + 2]);
    x[4 * i + 2] = _mm512_unpacklo_epi64(t[4 * i + 1], t[4 * i + 3]);
    x[4 * i + 3] = _mm512_unpackhi_epi64(t[4 * i + 1], t[4 * i + 3]);
  }
  for (int j = 0; j < 4; j++) {
    __m512i s0 = _mm512_shuffle_i32x4(x[j], x[4 + j], 0x44);
    __m512i s1 = _mm512_shuffle_i32x4(x[j], x[4 + j], 0xEE);
    __m512i s2 = _mm512_shuffle_i32x4(x[8 + j], x[12 + j], 0x44);
    __m512i s3 = _mm512_shuffle_i32x4(x[8 + j], x[12 + j], 0xEE);
    r[j] = _mm512_shuffle_i32x4(s0, s2, 0x88);
    r[4 + j] = _mm512_shuffle_i32x4(s0, s2, 0xDD);
    r[8 + j] = _mm512_shuffle_i32x4(s1, s3, 0x88);
    r[12 + j] = _mm512_shuffle_i32x4(s1, s3, 0xDD);
  }
}

/* Repacks rows [r0, r0 + nr) (nr <= 16; missing rows are zero) of groups [g0, g1). */
KN_INLINE void kn_ilv_pack(const kn_mm_plan_t *p, ak_ggml_type_t type, const kn_idx_t *ix,
                           int64_t r0, int nr, int64_t g0, int64_t g1, kn_ilv_group_t *out) {
  const kn_act_layout_t *l = &p->act_l;
  const size_t gb = 4 * (p->w_row_bytes / (size_t)l->n_blocks);
  _Alignas(64) float dtmp[KN_GR][16], mtmp[KN_GR][16];
  const __m512i didx = _mm512_mullo_epi32(_mm512_set_epi32(15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0),
                                          _mm512_set1_epi32(16));
  for (int64_t g = g0; g < g1; g++) {
    kn_ilv_group_t *o = &out[g - g0];
    int64_t nvb64 = l->n_blocks - 4 * g;
    int nvb = nvb64 < 4 ? (int)nvb64 : 4;
    __m512i lo[KN_GR], hi[KN_GR];
    for (int r = 0; r < KN_GR; r++) {
      if (r < nr) {
        kn_wpk_t w = kn_unpack(type, p->w + (size_t)(r0 + r) * p->w_row_bytes + (size_t)g * gb, nvb, ix);
        lo[r] = w.lo;
        hi[r] = w.hi;
        _mm512_store_ps(dtmp[r], w.d16);
        _mm512_store_ps(mtmp[r], w.m16);
      } else {
        lo[r] = hi[r] = _mm512_setzero_si512();
        _mm512_store_ps(dtmp[r], _mm512_setzero_ps());
        _mm512_store_ps(mtmp[r], _mm512_setzero_ps());
      }
    }
    /* lo dword 4b + q is quad q (< 4) of block b; hi dword 4b + q is quad 4 + q. */
    kn_transpose16(lo);
    kn_transpose16(hi);
    for (int b = 0; b < 4; b++)
      for (int q = 0; q < 4; q++) {
        o->w[b][q] = lo[4 * b + q];
        o->w[b][4 + q] = hi[4 * b + q];
      }
    for (int b = 0; b < 4; b++) {
      o->d[b] = _mm512_i32gather_ps(_mm512_add_epi32(didx, _mm512_set1_epi32(4 * b)), &dtmp[0][0], 4);
      o->m[b] = _mm512_i32gather_ps(_mm512_add_epi32(didx, _mm512_set1_epi32(4 * b)), &mtmp[0][0], 4);
    }
  }
}

static inline int32_t kn_load_i32(const uint8_t *p) {
  int32_t v;
  memcpy(&v, p, sizeof v);
  return v;
}

/* y[t0 .. t0+nt)[r0 .. r0+nr) (+)= the tile over groups [g0, g1). */
KN_INLINE void kn_ilv_tile(const kn_mm_plan_t *p, const kn_ilv_group_t *pk, int64_t g0, int64_t g1,
                           int64_t r0, int nr, int64_t t0, const int nt, int accumulate) {
  const kn_act_layout_t *l = &p->act_l;
  const uint8_t *a[KN_GT];
  const float *ad[KN_GT], *as[KN_GT];
  for (int t = 0; t < KN_GT; t++) {
    a[t] = p->act + (size_t)(t0 + (t < nt ? t : 0)) * l->row_bytes;
    ad[t] = (const float *)(a[t] + l->qs_bytes);
    as[t] = (const float *)(a[t] + l->s_offset);
  }
  __m512 acc[KN_GT];
  for (int t = 0; t < KN_GT; t++) acc[t] = _mm512_setzero_ps();
  for (int64_t g = g0; g < g1; g++) {
    const kn_ilv_group_t *G = &pk[g - g0];
    int64_t nvb64 = l->n_blocks - 4 * g;
    int nvb = nvb64 < 4 ? (int)nvb64 : 4;
    for (int b = 0; b < nvb; b++) {
      __m512i ai[KN_GT];
      for (int t = 0; t < KN_GT; t++) ai[t] = _mm512_setzero_si512();
      for (int q = 0; q < 8; q++) {
        const __m512i w = _mm512_load_si512(&G->w[b][q]);
        const int64_t off = g * KN_GROUP_ELEMS + (q < 4 ? 16 * b + 4 * q : 64 + 16 * b + 4 * (q - 4));
        for (int t = 0; t < nt; t++)
          ai[t] = _mm512_dpbusd_epi32(ai[t], w, _mm512_set1_epi32(kn_load_i32(a[t] + off)));
      }
      const __m512 d = _mm512_load_ps(&G->d[b]), m = _mm512_load_ps(&G->m[b]);
      for (int t = 0; t < nt; t++) {
        __m512 sc = _mm512_mul_ps(d, _mm512_set1_ps(ad[t][g * 16 + 4 * b]));
        acc[t] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(ai[t]), sc, acc[t]);
        acc[t] = _mm512_fmadd_ps(m, _mm512_set1_ps(as[t][4 * g + b]), acc[t]);
      }
    }
  }
  const __mmask16 mk = nr >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << nr) - 1);
  for (int t = 0; t < nt; t++) {
    float *y = p->y + (t0 + t) * p->n_rows + r0;
    __m512 v = acc[t];
    if (accumulate) v = _mm512_add_ps(v, _mm512_maskz_loadu_ps(mk, y));
    _mm512_mask_storeu_ps(y, mk, v);
  }
}

static void kn_ilv_tiles(const kn_mm_plan_t *p, const kn_ilv_group_t *pk, int64_t g0, int64_t g1,
                         int64_t r0, int nr, int64_t tc, int64_t tc_end) {
  int acc = g0 > 0;
  int64_t t0 = tc;
  for (; t0 + KN_GT <= tc_end; t0 += KN_GT) kn_ilv_tile(p, pk, g0, g1, r0, nr, t0, KN_GT, acc);
  switch (tc_end - t0) {
    case 7: kn_ilv_tile(p, pk, g0, g1, r0, nr, t0, 7, acc); break;
    case 6: kn_ilv_tile(p, pk, g0, g1, r0, nr, t0, 6, acc); break;
    case 5: kn_ilv_tile(p, pk, g0, g1, r0, nr, t0, 5, acc); break;
    case 4: kn_ilv_tile(p, pk, g0, g1, r0, nr, t0, 4, acc); break;
    case 3: kn_ilv_tile(p, pk, g0, g1, r0, nr, t0, 3, acc); break;
    case 2: kn_ilv_tile(p, pk, g0, g1, r0, nr, t0, 2, acc); break;
    case 1: kn_ilv_tile(p, pk, g0, g1, r0, nr, t0, 1, acc); break;
    default: break;
  }
}

KN_INLINE void kn_gemm_q(const kn_mm_plan_t *p, ak_ggml_type_t type, int64_t r_begin, int64_t r_end) {
  const kn_act_layout_t *l = &p->act_l;
  const kn_idx_t ix = kn_idx_build(type);
  kn_ilv_group_t pk[KN_GKC];
  for (int64_t tc = 0; tc < p->n_tok; tc += KN_GTOK_CHUNK) {
    int64_t tc_end = tc + KN_GTOK_CHUNK < p->n_tok ? tc + KN_GTOK_CHUNK : p->n_tok;
    for (int64_t r0 = r_begin; r0 < r_end; r0 += KN_GR) {
      int nr = r_end - r0 < KN_GR ? (int)(r_end - r0) : KN_GR;
      for (int64_t g0 = 0; g0 < l->n_groups; g0 += KN_GKC) {
        int64_t g1 = g0 + KN_GKC < l->n_groups ? g0 + KN_GKC : l->n_groups;
        kn_ilv_pack(p, type, &ix, r0, nr, g0, g1, pk);
        kn_ilv_tiles(p, pk, g0, g1, r0, nr, tc, tc_end);
      }
    }
  }
}

void kn_gemm_q_avx512(const kn_mm_plan_t *p, int64_t r_begin, int64_t r_end) {
  switch (p->type) {
    case AK_TYPE_Q4_1: kn_gemm_q(p, AK_TYPE_Q4_1, r_begin, r_end); return;
    case AK_TYPE_Q4_0: kn_gemm_q(p, AK_TYPE_Q4_0, r_begin, r_end); return;
    default: kn_gemm_q(p, AK_TYPE_Q8_0, r_begin, r_end); return;
  }
}
