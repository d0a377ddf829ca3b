/* ak_quant: ggml tensor types, their block layouts, and dequantization to f32.
 *
 * Quantized types store rows as blocks of 32 elements (ggml's layouts, bit-exact):
 *
 *   Q4_0 (18 B): f16 d | u8 qs[16]            x = d * ((q & 0xF) - 8); low nibbles are
 *                                             elements 0..15, high nibbles 16..31
 *   Q4_1 (20 B): f16 d | f16 m | u8 qs[16]    x = d * (q & 0xF) + m; same nibble order
 *   Q8_0 (34 B): f16 d | i8 qs[32]            x = d * q
 *   Q8_1 (36 B): f16 d | f16 s | i8 qs[32]    x = d * q; s = d * sum(q) (activations)
 *
 * F32, F16 and BF16 are plain element arrays. Not for: matrix products (kernels/). */
#ifndef AK_QUANT_H
#define AK_QUANT_H

#include <stddef.h>
#include <stdint.h>

#include "ak_status.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Values are ggml's type ids, as stored in GGUF. */
typedef enum {
  AK_TYPE_F32 = 0,
  AK_TYPE_F16 = 1,
  AK_TYPE_Q4_0 = 2,
  AK_TYPE_Q4_1 = 3,
  AK_TYPE_Q8_0 = 8,
  AK_TYPE_Q8_1 = 9,
  AK_TYPE_BF16 = 30,
} ak_ggml_type_t;

#define AK_QK 32 /* elements per quantized block */

typedef struct {
  uint16_t d;
  uint8_t qs[AK_QK / 2];
} ak_block_q4_0_t;
typedef struct {
  uint16_t d, m;
  uint8_t qs[AK_QK / 2];
} ak_block_q4_1_t;
typedef struct {
  uint16_t d;
  int8_t qs[AK_QK];
} ak_block_q8_0_t;
typedef struct {
  uint16_t d, s;
  int8_t qs[AK_QK];
} ak_block_q8_1_t;

/* 1 for a type we know, 0 otherwise. */
int ak_type_known(int type);
const char *ak_type_name(ak_ggml_type_t type);
/* Elements per block (1 for plain types) and bytes per block. */
int64_t ak_type_block_elems(ak_ggml_type_t type);
size_t ak_type_block_bytes(ak_ggml_type_t type);
/* Bytes of a row of n_elems (n_elems must be a multiple of the block size);
 * 0 when it is not or the type is unknown. */
size_t ak_type_row_bytes(ak_ggml_type_t type, int64_t n_elems);

/* Dequantizes n_elems (a multiple of the block size) from `src` to f32. */
ak_status_t ak_dequant_row(ak_ggml_type_t type, const void *src, float *dst, int64_t n_elems);

/* Half-precision conversions (round to nearest even; NaN stays NaN). */
float ak_f16_to_f32(uint16_t h);
uint16_t ak_f32_to_f16(float f);
float ak_bf16_to_f32(uint16_t h);
uint16_t ak_f32_to_bf16(float f);

/* Quantizes n_elems f32 values (a multiple of 32) to Q8_0 / Q8_1 blocks, the way
 * ggml's reference quantizers do (d = amax / 127, round to nearest). */
void ak_quantize_row_q8_0(const float *src, ak_block_q8_0_t *dst, int64_t n_elems);
void ak_quantize_row_q8_1(const float *src, ak_block_q8_1_t *dst, int64_t n_elems);

#ifdef __cplusplus
}
#endif
#endif
