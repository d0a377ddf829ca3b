/* kn_matmul_c: portable C matmul — the path for CPUs without AVX2, and the plain
 * statement of what the SIMD files compute (same activation quantization, same
 * per-block integer sums). Also: row dequantization for kn_embed. */
#include <math.h>

#include "kn_cpu_internal.h"

void kn_dequant_row(ak_ggml_type_t type, const void *row, float *out, int64_t n_cols) {
  switch (type) {
    case AK_TYPE_F32: memcpy(out, row, (size_t)n_cols * sizeof(float)); return;
    case AK_TYPE_F16: {
      const uint16_t *h = row;
      for (int64_t i = 0; i < n_cols; i++) out[i] = kn_f16_to_f32(h[i]);
      return;
    }
    case AK_TYPE_BF16: {
      const uint16_t *h = row;
      for (int64_t i = 0; i < n_cols; i++) out[i] = kn_bf16_to_f32(h[i]);
      return;
    }
    case AK_TYPE_Q4_0: {
      const ak_block_q4_0_t *b = row;
      for (int64_t k = 0; k < n_cols / AK_QK; k++, out += AK_QK) {
        float d = kn_f16_to_f32(b[k].d);
        for (int i = 0; i < AK_QK / 2; i++) {
          out[i] = d * (float)((b[k].qs[i] & 0xF) - 8);
          out[i + AK_QK / 2] = d * (float)((b[k].qs[i] >> 4) - 8);
        }
      }
      return;
    }
    case AK_TYPE_Q4_1: {
      const ak_block_q4_1_t *b = row;
      for (int64_t k = 0; k < n_cols / AK_QK; k++, out += AK_QK) {
        float d = kn_f16_to_f32(b[k].d), m = kn_f16_to_f32(b[k].m);
        for (int i = 0; i < AK_QK / 2; i++) {
          out[i] = d * (float)(b[k].qs[i] & 0xF) + m;
          out[i + AK_QK / 2] = d * (float)(b[k].qs[i] >> 4) + m;
        }
      }
      return;
    }
    case AK_TYPE_Q8_0: {
      const ak_block_q8_0_t *b = row;
      for (int64_t k = 0; k < n_cols / AK_QK; k++, out += AK_QK) {
        float d = kn_f16_to_f32(b[k].d);
        for (int i = 0; i < AK_QK; i++) out[i] = d * (float)b[k].qs[i];
      }
      return;
    }
    case AK_TYPE_Q8_1: {
      const ak_block_q8_1_t *b = row;
      for (int64_t k = 0; k < n_cols / AK_QK; k++, out += AK_QK) {
        float d = kn_f16_to_f32(b[k].d);
        for (int i = 0; i < AK_QK; i++) out[i] = d * (float)b[k].qs[i];
      }
      return;
    }
  }
}

void kn_act_quantize_c(const kn_mm_plan_t *p, int64_t t_begin, int64_t t_end) {
  const kn_act_layout_t *l = &p->act_l;
  for (int64_t t = t_begin; t < t_end; t++) {
    const float *x = p->x + t * p->n_cols; /* [n_cols] f32 */
    uint8_t *row = p->act + (size_t)t * l->row_bytes;
    int8_t *qs = (int8_t *)row;                      /* [n_groups][2][4][16] */
    float *d16 = (float *)(row + l->qs_bytes);        /* [n_groups][16] */
    int32_t *sq16 = (int32_t *)(row + l->sq16_offset); /* [n_groups][16] */
    float *s = (float *)(row + l->s_offset);          /* [n_s] */
    memset(row, 0, l->row_bytes);
    for (int64_t blk = 0; blk < l->n_blocks; blk++) {
      const float *xb = x + blk * AK_QK;
      float amax = 0.0f;
      for (int i = 0; i < AK_QK; i++) amax = fmaxf(amax, fabsf(xb[i]));
      /* The SIMD quantizers repeat exactly these float operations, so every path
       * produces the same q and the tests can rebuild them. */
      float d = amax / 127.0f;
      float id = d != 0.0f ? 1.0f / d : 0.0f;
      int64_t g = blk / KN_GROUP_BLOCKS, b = blk % KN_GROUP_BLOCKS;
      int8_t *lo = qs + g * KN_GROUP_ELEMS + b * 16, *hi = lo + 64;
      int32_t sum = 0;
      for (int i = 0; i < 16; i++) {
        int q0 = (int)nearbyintf(xb[i] * id), q1 = (int)nearbyintf(xb[i + 16] * id);
        lo[i] = (int8_t)q0;
        hi[i] = (int8_t)q1;
        sum += q0 + q1;
      }
      s[blk] = d * (float)sum;
      for (int i = 0; i < 4; i++) {
        d16[g * 16 + b * 4 + i] = d;
        sq16[g * 16 + b * 4 + i] = i == 0 ? sum : 0;
      }
    }
  }
}

/* One row's blocks in the activation order: u[g][half][b][i] as unsigned or signed
 * integers, with per-block scale d and offset m (value = d*u + m). */
static void kn_unpack_block_c(ak_ggml_type_t type, const uint8_t *row, int64_t blk, int32_t *u,
                              float *d_p, float *m_p) {
  switch (type) {
    case AK_TYPE_Q4_0: {
      const ak_block_q4_0_t *b = (const ak_block_q4_0_t *)row + blk;
      for (int i = 0; i < 16; i++) {
        u[i] = (b->qs[i] & 0xF) - 8;
        u[16 + i] = (b->qs[i] >> 4) - 8;
      }
      *d_p = kn_f16_to_f32(b->d);
      *m_p = 0.0f;
      return;
    }
    case AK_TYPE_Q4_1: {
      const ak_block_q4_1_t *b = (const ak_block_q4_1_t *)row + blk;
      for (int i = 0; i < 16; i++) {
        u[i] = b->qs[i] & 0xF;
        u[16 + i] = b->qs[i] >> 4;
      }
      *d_p = kn_f16_to_f32(b->d);
      *m_p = kn_f16_to_f32(b->m);
      return;
    }
    default: {
      const ak_block_q8_0_t *b = (const ak_block_q8_0_t *)row + blk;
      for (int i = 0; i < 32; i++) u[i] = b->qs[i];
      *d_p = kn_f16_to_f32(b->d);
      *m_p = 0.0f;
      return;
    }
  }
}

static void kn_mm_rows_quant_c(const kn_mm_plan_t *p, int64_t r_begin, int64_t r_end) {
  const kn_act_layout_t *l = &p->act_l;
  for (int64_t r = r_begin; r < r_end; r++) {
    const uint8_t *wrow = p->w + (size_t)r * p->w_row_bytes;
    for (int64_t t = 0; t < p->n_tok; t++) {
      const uint8_t *arow = p->act + (size_t)t * l->row_bytes;
      const int8_t *qs = (const int8_t *)arow;
      const float *d16 = (const float *)(arow + l->qs_bytes);
      const float *s = (const float *)(arow + l->s_offset);
      float acc = 0.0f;
      for (int64_t blk = 0; blk < l->n_blocks; blk++) {
        int32_t u[AK_QK];
        float dw, mw;
        kn_unpack_block_c(p->type, wrow, blk, u, &dw, &mw);
        int64_t g = blk / KN_GROUP_BLOCKS, b = blk % KN_GROUP_BLOCKS;
        const int8_t *lo = qs + g * KN_GROUP_ELEMS + b * 16, *hi = lo + 64;
        int32_t isum = 0;
        for (int i = 0; i < 16; i++) isum += u[i] * lo[i] + u[16 + i] * hi[i];
        acc += dw * d16[g * 16 + b * 4] * (float)isum + mw * s[blk];
      }
      p->y[t * p->n_rows + r] = acc;
    }
  }
}

/* Float weights: convert a chunk of the row once, reuse it for every token. */
enum { KN_F_CHUNK = 1024 };

static void kn_mm_rows_float_c(const kn_mm_plan_t *p, int64_t r_begin, int64_t r_end) {
  float wbuf[KN_F_CHUNK];
  size_t elem_bytes = p->type == AK_TYPE_F32 ? 4 : 2;
  for (int64_t r = r_begin; r < r_end; r++) {
    const uint8_t *wrow = p->w + (size_t)r * p->w_row_bytes;
    for (int64_t k0 = 0; k0 < p->n_cols; k0 += KN_F_CHUNK) {
      int64_t nk = p->n_cols - k0 < KN_F_CHUNK ? p->n_cols - k0 : KN_F_CHUNK;
      kn_dequant_row(p->type, wrow + (size_t)k0 * elem_bytes, wbuf, nk);
      for (int64_t t = 0; t < p->n_tok; t++) {
        const float *x = p->x + t * p->n_cols + k0;
        float acc = 0.0f;
        for (int64_t k = 0; k < nk; k++) acc += wbuf[k] * x[k];
        float *yv = &p->y[t * p->n_rows + r];
        *yv = k0 == 0 ? acc : *yv + acc;
      }
    }
  }
}

void kn_mm_rows_c(const kn_mm_plan_t *p, int64_t r_begin, int64_t r_end) {
  if (p->act)
    kn_mm_rows_quant_c(p, r_begin, r_end);
  else
    kn_mm_rows_float_c(p, r_begin, r_end);
}
