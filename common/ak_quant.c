/* ak_quant: the ggml type table, half-precision conversions and the reference
 * (scalar) dequantizers and Q8 quantizers. Bit-exact with ggml's portable C paths
 * (ggml-impl.h conversions, ggml-quants.c *_ref quantizers), so files written by
 * ggml read back identically and our Q8 activations match ggml's. Not for: fast
 * kernels (kernels/ has the vectorized and CUDA versions and tests against these). */
#include "ak_quant.h"

#include <math.h>
#include <string.h>

_Static_assert(sizeof(ak_block_q4_0_t) == 18, "Q4_0 block must be 18 bytes (ggml layout)");
_Static_assert(sizeof(ak_block_q4_1_t) == 20, "Q4_1 block must be 20 bytes (ggml layout)");
_Static_assert(sizeof(ak_block_q8_0_t) == 34, "Q8_0 block must be 34 bytes (ggml layout)");
_Static_assert(sizeof(ak_block_q8_1_t) == 36, "Q8_1 block must be 36 bytes (ggml layout)");

/* ---------------------------------------------------------------- type table */

typedef struct {
  const char *name;
  int64_t block_elems;
  size_t block_bytes;
} ak_type_info_t;

/* Indexed by ggml type id; a zero block_elems marks an id we do not know. */
static const ak_type_info_t AK_TYPE_INFO[] = {
    [AK_TYPE_F32] = {"f32", 1, 4},
    [AK_TYPE_F16] = {"f16", 1, 2},
    [AK_TYPE_Q4_0] = {"q4_0", AK_QK, sizeof(ak_block_q4_0_t)},
    [AK_TYPE_Q4_1] = {"q4_1", AK_QK, sizeof(ak_block_q4_1_t)},
    [AK_TYPE_Q8_0] = {"q8_0", AK_QK, sizeof(ak_block_q8_0_t)},
    [AK_TYPE_Q8_1] = {"q8_1", AK_QK, sizeof(ak_block_q8_1_t)},
    [AK_TYPE_BF16] = {"bf16", 1, 2},
};
#define AK_N_TYPE_IDS ((int)(sizeof AK_TYPE_INFO / sizeof AK_TYPE_INFO[0]))

static const ak_type_info_t *ak_type_info(int type) {
  if (type < 0 || type >= AK_N_TYPE_IDS || AK_TYPE_INFO[type].block_elems == 0) return NULL;
  return &AK_TYPE_INFO[type];
}

int ak_type_known(int type) { return ak_type_info(type) != NULL; }

const char *ak_type_name(ak_ggml_type_t type) {
  const ak_type_info_t *ti = ak_type_info((int)type);
  return ti ? ti->name : "unknown";
}

int64_t ak_type_block_elems(ak_ggml_type_t type) {
  const ak_type_info_t *ti = ak_type_info((int)type);
  return ti ? ti->block_elems : 0;
}

size_t ak_type_block_bytes(ak_ggml_type_t type) {
  const ak_type_info_t *ti = ak_type_info((int)type);
  return ti ? ti->block_bytes : 0;
}

size_t ak_type_row_bytes(ak_ggml_type_t type, int64_t n_elems) {
  const ak_type_info_t *ti = ak_type_info((int)type);
  if (!ti || n_elems < 0 || n_elems % ti->block_elems != 0) return 0;
  uint64_t n_blocks = (uint64_t)(n_elems / ti->block_elems);
  /* A hostile GGUF can claim any ne[0]; a wrapped product would pass bounds checks. */
  if (n_blocks > SIZE_MAX / ti->block_bytes) return 0;
  return (size_t)n_blocks * ti->block_bytes;
}

/* ---------------------------------------------------- half-precision formats */

static inline float ak_f32_from_bits(uint32_t w) {
  float f;
  memcpy(&f, &w, sizeof f);
  return f;
}

static inline uint32_t ak_f32_to_bits(float f) {
  uint32_t w;
  memcpy(&w, &f, sizeof w);
  return w;
}

/* The branch-light conversion from the FP16 library that ggml uses when the CPU has
 * no F16C: the exponent is rebiased by a float multiply, and subnormals come out of
 * a magic-number subtraction. A NaN keeps its payload (the multiply quiets it). */
float ak_f16_to_f32(uint16_t h) {
  const uint32_t w = (uint32_t)h << 16;
  const uint32_t sign = w & UINT32_C(0x80000000);
  const uint32_t two_w = w + w;

  const uint32_t exp_offset = UINT32_C(0xE0) << 23;
  const float exp_scale = 0x1.0p-112f;
  const float normalized_value = ak_f32_from_bits((two_w >> 4) + exp_offset) * exp_scale;

  const uint32_t magic_mask = UINT32_C(126) << 23;
  const float magic_bias = 0.5f;
  const float denormalized_value = ak_f32_from_bits((two_w >> 17) | magic_mask) - magic_bias;

  const uint32_t denormalized_cutoff = UINT32_C(1) << 27;
  const uint32_t result =
      sign | (two_w < denormalized_cutoff ? ak_f32_to_bits(denormalized_value)
                                          : ak_f32_to_bits(normalized_value));
  return ak_f32_from_bits(result);
}

/* Round-to-nearest-even by letting the FPU do the rounding: scaling by 2^112 then
 * 2^-110 saturates overflow to inf, and adding a power of two aligned to the target
 * exponent drops the extra mantissa bits with the current (nearest) rounding mode.
 * Every NaN becomes the canonical quiet 0x7E00 with its sign. */
uint16_t ak_f32_to_f16(float f) {
  const float scale_to_inf = 0x1.0p+112f;
  const float scale_to_zero = 0x1.0p-110f;
  float base = (fabsf(f) * scale_to_inf) * scale_to_zero;

  const uint32_t w = ak_f32_to_bits(f);
  const uint32_t shl1_w = w + w;
  const uint32_t sign = w & UINT32_C(0x80000000);
  uint32_t bias = shl1_w & UINT32_C(0xFF000000);
  if (bias < UINT32_C(0x71000000)) bias = UINT32_C(0x71000000);

  base = ak_f32_from_bits((bias >> 1) + UINT32_C(0x07800000)) + base;
  const uint32_t bits = ak_f32_to_bits(base);
  const uint32_t exp_bits = (bits >> 13) & UINT32_C(0x00007C00);
  const uint32_t mantissa_bits = bits & UINT32_C(0x00000FFF);
  const uint32_t nonsign = exp_bits + mantissa_bits;
  return (uint16_t)((sign >> 16) | (shl1_w > UINT32_C(0xFF000000) ? UINT16_C(0x7E00) : nonsign));
}

float ak_bf16_to_f32(uint16_t h) { return ak_f32_from_bits((uint32_t)h << 16); }

/* ggml's current rule: round to nearest even, subnormals kept (older ggml flushed
 * them), NaN truncated and forced quiet so it cannot round into inf. */
uint16_t ak_f32_to_bf16(float f) {
  const uint32_t u = ak_f32_to_bits(f);
  if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 64);
  return (uint16_t)((u + (0x7fffu + ((u >> 16) & 1))) >> 16);
}

/* ----------------------------------------------------------------- dequant */

/* Loads go through memcpy: `src` may point anywhere in a mapping, and a block of
 * 18 or 34 bytes leaves later blocks' halves at odd offsets from 4-byte alignment. */
static inline uint16_t ak_load_u16(const uint8_t *p) {
  uint16_t v;
  memcpy(&v, p, sizeof v);
  return v;
}

static void ak_dequant_q4_0(const uint8_t *src, float *dst, int64_t n_blocks) {
  for (int64_t b = 0; b < n_blocks; b++) {
    const uint8_t *blk = src + b * (int64_t)sizeof(ak_block_q4_0_t);
    const float d = ak_f16_to_f32(ak_load_u16(blk));
    const uint8_t *qs = blk + 2;
    float *y = dst + b * AK_QK;
    for (int j = 0; j < AK_QK / 2; j++) {
      const int x0 = (qs[j] & 0x0F) - 8;
      const int x1 = (qs[j] >> 4) - 8;
      y[j] = (float)x0 * d;
      y[j + AK_QK / 2] = (float)x1 * d;
    }
  }
}

static void ak_dequant_q4_1(const uint8_t *src, float *dst, int64_t n_blocks) {
  for (int64_t b = 0; b < n_blocks; b++) {
    const uint8_t *blk = src + b * (int64_t)sizeof(ak_block_q4_1_t);
    const float d = ak_f16_to_f32(ak_load_u16(blk));
    const float m = ak_f16_to_f32(ak_load_u16(blk + 2));
    const uint8_t *qs = blk + 4;
    float *y = dst + b * AK_QK;
    for (int j = 0; j < AK_QK / 2; j++) {
      const int x0 = qs[j] & 0x0F;
      const int x1 = qs[j] >> 4;
      y[j] = (float)x0 * d + m;
      y[j + AK_QK / 2] = (float)x1 * d + m;
    }
  }
}

/* Q8_0 and Q8_1 share the quants layout; only the header differs. */
static void ak_dequant_q8(const uint8_t *src, float *dst, int64_t n_blocks, size_t block_bytes,
                          size_t qs_off) {
  for (int64_t b = 0; b < n_blocks; b++) {
    const uint8_t *blk = src + b * (int64_t)block_bytes;
    const float d = ak_f16_to_f32(ak_load_u16(blk));
    const int8_t *qs = (const int8_t *)(blk + qs_off);
    float *y = dst + b * AK_QK;
    for (int j = 0; j < AK_QK; j++) y[j] = (float)qs[j] * d;
  }
}

ak_status_t ak_dequant_row(ak_ggml_type_t type, const void *src, float *dst, int64_t n_elems) {
  const ak_type_info_t *ti = ak_type_info((int)type);
  if (!ti) return AK_ERR_UNSUPPORTED;
  if (n_elems < 0 || n_elems % ti->block_elems != 0 || (n_elems > 0 && (!src || !dst)))
    return AK_ERR_INVALID_ARG;
  const uint8_t *s = (const uint8_t *)src;
  const int64_t n_blocks = n_elems / ti->block_elems;
  switch (type) {
    case AK_TYPE_F32:
      if (n_elems > 0) memmove(dst, s, (size_t)n_elems * sizeof(float));
      return AK_OK;
    case AK_TYPE_F16:
      for (int64_t i = 0; i < n_elems; i++) dst[i] = ak_f16_to_f32(ak_load_u16(s + 2 * i));
      return AK_OK;
    case AK_TYPE_BF16:
      for (int64_t i = 0; i < n_elems; i++) dst[i] = ak_bf16_to_f32(ak_load_u16(s + 2 * i));
      return AK_OK;
    case AK_TYPE_Q4_0: ak_dequant_q4_0(s, dst, n_blocks); return AK_OK;
    case AK_TYPE_Q4_1: ak_dequant_q4_1(s, dst, n_blocks); return AK_OK;
    case AK_TYPE_Q8_0:
      ak_dequant_q8(s, dst, n_blocks, sizeof(ak_block_q8_0_t), offsetof(ak_block_q8_0_t, qs));
      return AK_OK;
    case AK_TYPE_Q8_1:
      ak_dequant_q8(s, dst, n_blocks, sizeof(ak_block_q8_1_t), offsetof(ak_block_q8_1_t, qs));
      return AK_OK;
  }
  return AK_ERR_UNSUPPORTED;
}

/* ------------------------------------------------------------- Q8 quantizers */

/* ggml's MAX macro, kept as a macro-equivalent so a NaN input propagates the same way
 * (MAX(a, NaN) is NaN; MAX(NaN, b) is b). */
static inline float ak_max_like_ggml(float a, float b) { return a > b ? a : b; }

/* roundf(x) stored to int8_t, as ggml does implicitly. For finite inputs the value is
 * within [-127, 127] by construction; a NaN or inf input (undefined behaviour in
 * ggml's C) gives 0 here instead of an out-of-range conversion. */
static inline int8_t ak_round_to_i8(float v) {
  const float r = roundf(v);
  if (!(r >= -128.0f && r <= 127.0f)) return 0;
  return (int8_t)r;
}

/* Per block: amax over |x|, d = amax / 127 (stored as f16, but the float d is what
 * scales), id = 1/d (0 for an all-zero block), q = round(x * id). */
static float ak_q8_block_scale(const float *x, float *id_p) {
  float amax = 0.0f;
  for (int j = 0; j < AK_QK; j++) amax = ak_max_like_ggml(amax, fabsf(x[j]));
  const float d = amax / ((1 << 7) - 1);
  *id_p = d != 0.0f ? 1.0f / d : 0.0f;
  return d;
}

void ak_quantize_row_q8_0(const float *src, ak_block_q8_0_t *dst, int64_t n_elems) {
  const int64_t n_blocks = n_elems / AK_QK;
  for (int64_t b = 0; b < n_blocks; b++) {
    const float *x = src + b * AK_QK;
    float id;
    const float d = ak_q8_block_scale(x, &id);
    dst[b].d = ak_f32_to_f16(d);
    for (int j = 0; j < AK_QK; j++) dst[b].qs[j] = ak_round_to_i8(x[j] * id);
  }
}

/* Same as Q8_0 plus s = d * sum(q) in f16, which lets a Q4_1 dot product fold the
 * block minimum in with one multiply (ggml's vec_dot_q4_1_q8_1). */
void ak_quantize_row_q8_1(const float *src, ak_block_q8_1_t *dst, int64_t n_elems) {
  const int64_t n_blocks = n_elems / AK_QK;
  for (int64_t b = 0; b < n_blocks; b++) {
    const float *x = src + b * AK_QK;
    float id;
    const float d = ak_q8_block_scale(x, &id);
    dst[b].d = ak_f32_to_f16(d);
    int sum = 0;
    for (int j = 0; j < AK_QK; j++) {
      dst[b].qs[j] = ak_round_to_i8(x[j] * id);
      sum += dst[b].qs[j];
    }
    dst[b].s = ak_f32_to_f16((float)sum * d);
  }
}
