/* kn_attention_unit: the plain-C attention work unit, one query token at a time
 * (online softmax over 64-key chunks, K/V rows converted to f32 once per group of
 * heads). Included by kn_attention.c (portable flags) and kn_attention_avx2.c (the
 * same loops vectorized under -mavx2 -mfma -mf16c, with F16C row conversion), each
 * passing its own row converter. Private to kernels/cpu/. */
#ifndef KN_ATTENTION_UNIT_H
#define KN_ATTENTION_UNIT_H

#include <math.h>

#include "kn_cpu_internal.h"

/* Keys scored at once: bounds the per-thread score buffer for large pages. */
enum { KN_ATTN_KEY_CHUNK = 64 };

/* Address of view token j's row for one KV head (K or V base). */
static inline const void *kn_kv_row_ptr(const kn_paged_kv_t *kv, const void *base, int32_t seq,
                                    int64_t j, int32_t kv_head, int32_t head_dim) {
  int32_t page = kv->indices[kv->indptr[seq] + j / kv->page_tokens];
  int64_t off = (int64_t)page * kv->page_stride_elems + kv_head * kv->head_stride_elems +
                (j % kv->page_tokens) * head_dim;
  return kv->dtype == KN_F16 ? (const void *)((const uint16_t *)base + off)
                             : (const void *)((const float *)base + off);
}

typedef struct {
  const kn_attn_args_t *a;
  int64_t tok_idx;
  int32_t kv_head_idx;
  int64_t key_begin, key_end; /* key_end already clipped to the token's kv length */
  float *partial;             /* NULL, or [n_group][head_dim + 2] (kn_attn_unit_t) */
  float *scratch;
} kn_attn_tok_t;

/* Converts n elements of a K or V row to f32. */
typedef void (*kn_row_cvt_fn)(kn_dtype_t dtype, const void *src, float *dst, int32_t n);

static inline __attribute__((always_inline)) void kn_attn_tok_impl(const kn_attn_tok_t *u,
                                                                   kn_row_cvt_fn kn_row_to_f32) {
  const kn_attn_args_t *a = u->a;
  const kn_paged_kv_t *kv = &a->kv;
  const int32_t hd = a->head_dim, n_group = a->n_heads / a->n_kv_heads;
  const int32_t seq = a->tok_seq_idx[u->tok_idx];
  const int32_t h0 = u->kv_head_idx * n_group; /* first query head of the group */
  float *acc = u->scratch;                                               /* [n_group][hd] */
  float *sc = acc + ((int64_t)n_group * hd + 15) / 16 * 16;              /* [n_group][CHUNK] */
  float *ml = sc + ((int64_t)n_group * KN_ATTN_KEY_CHUNK + 15) / 16 * 16; /* m[g], l[g] */
  float *row = ml + ((int64_t)2 * n_group + 15) / 16 * 16;               /* [CHUNK][hd] */
  const float *q = a->q + (u->tok_idx * a->n_heads + h0) * hd;          /* [n_group][hd] */
  float *out = a->out + (u->tok_idx * a->n_heads + h0) * hd;            /* [n_group][hd] */
  for (int32_t g = 0; g < n_group; g++) {
    ml[2 * g] = -INFINITY;
    ml[2 * g + 1] = 0.0f;
  }
  memset(acc, 0, (size_t)n_group * hd * sizeof(float));
  for (int64_t j0 = u->key_begin; j0 < u->key_end; j0 += KN_ATTN_KEY_CHUNK) {
    int32_t nj = (int32_t)(u->key_end - j0 < KN_ATTN_KEY_CHUNK ? u->key_end - j0 : KN_ATTN_KEY_CHUNK);
    for (int32_t j = 0; j < nj; j++)
      kn_row_to_f32(kv->dtype, kn_kv_row_ptr(kv, kv->k_base, seq, j0 + j, u->kv_head_idx, hd),
                    row + (int64_t)j * hd, hd);
    for (int32_t g = 0; g < n_group; g++) {
      float m_new = ml[2 * g];
      for (int32_t j = 0; j < nj; j++) {
        /* Eight partial sums, so the loop vectorizes without reassociation flags. */
        const float *qg = q + g * hd, *kj = row + (int64_t)j * hd;
        float part[8] = {0};
        int32_t i = 0;
        for (; i + 8 <= hd; i += 8)
          for (int k = 0; k < 8; k++) part[k] += qg[i + k] * kj[i + k];
        float s = 0.0f;
        for (; i < hd; i++) s += qg[i] * kj[i];
        for (int k = 0; k < 8; k++) s += part[k];
        s *= a->scale;
        sc[g * KN_ATTN_KEY_CHUNK + j] = s;
        m_new = fmaxf(m_new, s);
      }
      /* Rescale what was accumulated under the old max. */
      float corr = expf(ml[2 * g] - m_new), l = ml[2 * g + 1] * corr;
      for (int32_t i = 0; i < hd; i++) acc[g * hd + i] *= corr;
      for (int32_t j = 0; j < nj; j++) {
        float pj = expf(sc[g * KN_ATTN_KEY_CHUNK + j] - m_new);
        sc[g * KN_ATTN_KEY_CHUNK + j] = pj;
        l += pj;
      }
      ml[2 * g] = m_new;
      ml[2 * g + 1] = l;
    }
    for (int32_t j = 0; j < nj; j++)
      kn_row_to_f32(kv->dtype, kn_kv_row_ptr(kv, kv->v_base, seq, j0 + j, u->kv_head_idx, hd),
                    row + (int64_t)j * hd, hd);
    for (int32_t g = 0; g < n_group; g++)
      for (int32_t j = 0; j < nj; j++) {
        float pj = sc[g * KN_ATTN_KEY_CHUNK + j];
        for (int32_t i = 0; i < hd; i++) acc[g * hd + i] += pj * row[(int64_t)j * hd + i];
      }
  }
  for (int32_t g = 0; g < n_group; g++) {
    if (u->partial) {
      float *pg = u->partial + (int64_t)g * (hd + 2);
      memcpy(pg, acc + (int64_t)g * hd, (size_t)hd * sizeof(float));
      pg[hd] = ml[2 * g];
      pg[hd + 1] = ml[2 * g + 1];
      continue;
    }
    float inv = ml[2 * g + 1] > 0.0f ? 1.0f / ml[2 * g + 1] : 0.0f; /* kv_len 0: zeros */
    for (int32_t i = 0; i < hd; i++) out[g * hd + i] = acc[g * hd + i] * inv;
  }
}

static inline __attribute__((always_inline)) void kn_attn_unit_impl(const kn_attn_unit_t *u,
                                                                    kn_row_cvt_fn cvt) {
  const int32_t n_group = u->a->n_heads / u->a->n_kv_heads;
  kn_attn_tok_t t = {u->a, 0, u->kv_head_idx, u->key_begin, 0, NULL, u->scratch};
  for (t.tok_idx = u->tok_begin; t.tok_idx < u->tok_end; t.tok_idx++) {
    int64_t len = u->a->tok_kv_len[t.tok_idx];
    t.key_end = len < u->key_end ? len : u->key_end;
    t.partial = u->partial ? u->partial + (t.tok_idx - u->tok_begin) * n_group * (u->a->head_dim + 2)
                           : NULL;
    kn_attn_tok_impl(&t, cvt);
  }
}

#endif
