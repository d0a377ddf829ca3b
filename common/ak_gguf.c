/* ak_gguf: parses and validates a GGUF file in one pass at open, then answers
 * lookups from tables. The file is treated as hostile: every count is checked
 * against the bytes left before anything is allocated or read, so a header that
 * claims 2^60 entries fails at once with AK_ERR_FORMAT. Not for: writing GGUF, or
 * interpreting what the metadata means for a model (worker/ does that). */
#include "ak_gguf.h"

#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "ak_alloc.h"

#define AK_GGUF_MAGIC 0x46554747u /* "GGUF" read as a little-endian u32 */
#define AK_GGUF_DEFAULT_ALIGNMENT 32
#define AK_GGUF_MAX_DIMS 4
/* Nested arrays are legal but no model uses them; the cap keeps a hostile file from
 * recursing the stack away 12 bytes at a time. */
#define AK_GGUF_MAX_ARRAY_DEPTH 8
/* Smallest encodings, used to bound counts before allocating: a kv is a key length,
 * one key byte, a type and a 1-byte value; a tensor info has one dimension. */
#define AK_GGUF_MIN_KV_BYTES 13u
#define AK_GGUF_MIN_TENSOR_INFO_BYTES 32u
#define AK_GGUF_MIN_STRING_BYTES 8u
#define AK_GGUF_MIN_ARRAY_BYTES 12u

typedef struct {
  const char *key; /* into the file, not NUL-terminated */
  size_t key_len;
  ak_gguf_value_type_t type;
  size_t val_off; /* scalar: the value; array: its first element */
  const char *str; /* STRING */
  size_t str_len;
  ak_gguf_value_type_t elem_type; /* ARRAY */
  int64_t n_elems;
  uint64_t *str_offs; /* ARRAY of STRING: file offset of each element's length prefix */
} ak_gguf_kv_t;

/* Open-addressing name -> index table; a slot with name == NULL is empty. */
typedef struct {
  const char *name;
  size_t name_len;
  int64_t idx;
} ak_gguf_slot_t;

typedef struct {
  ak_gguf_slot_t *slots;
  size_t n_slots; /* a power of two, at least twice the entries */
} ak_gguf_index_t;

struct ak_gguf {
  const uint8_t *base;
  size_t n_bytes;
  void *map; /* non-NULL when we mmapped the file */
  uint32_t version;
  size_t alignment;
  size_t data_start; /* file offset of the tensor data section */
  int64_t n_kv;
  ak_gguf_kv_t *kvs; /* [n_kv] */
  ak_gguf_index_t kv_index;
  int64_t n_tensors;
  ak_gguf_tensor_t *tensors; /* [n_tensors] */
  ak_gguf_index_t tensor_index;
};

/* ------------------------------------------------------------- name index */

static uint64_t ak_gguf_hash(const char *s, size_t len) {
  uint64_t h = 0xcbf29ce484222325ull; /* FNV-1a */
  for (size_t i = 0; i < len; i++) h = (h ^ (uint8_t)s[i]) * 0x100000001b3ull;
  return h;
}

static ak_status_t ak_gguf_index_init(ak_gguf_index_t *ix, int64_t n_entries) {
  size_t n = 8;
  while (n < (size_t)n_entries * 2) n *= 2;
  ix->slots = ak_host_alloc(n * sizeof *ix->slots, 1);
  if (!ix->slots) return AK_ERR_NO_MEMORY;
  ix->n_slots = n;
  return AK_OK;
}

static void ak_gguf_index_free(ak_gguf_index_t *ix) {
  ak_host_free(ix->slots, ix->n_slots * sizeof *ix->slots);
  ix->slots = NULL;
}

/* The slot holding `name`, or the empty slot where it would go. */
static ak_gguf_slot_t *ak_gguf_index_slot(const ak_gguf_index_t *ix, const char *name, size_t len) {
  size_t mask = ix->n_slots - 1;
  for (size_t i = (size_t)ak_gguf_hash(name, len) & mask;; i = (i + 1) & mask) {
    ak_gguf_slot_t *s = &ix->slots[i];
    if (!s->name || (s->name_len == len && memcmp(s->name, name, len) == 0)) return s;
  }
}

static int64_t ak_gguf_index_find(const ak_gguf_index_t *ix, const char *name, size_t len) {
  if (!ix->slots) return -1;
  const ak_gguf_slot_t *s = ak_gguf_index_slot(ix, name, len);
  return s->name ? s->idx : -1;
}

/* ------------------------------------------------------------- the parser */

typedef struct {
  const uint8_t *base;
  size_t n_bytes;
  size_t pos;
  const char *fn; /* public entry point, prefixes every message */
  ak_err_t *err;
} ak_gguf_parser_t;

static ak_status_t ak_gguf_fail(ak_gguf_parser_t *p, ak_status_t st, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static ak_status_t ak_gguf_fail(ak_gguf_parser_t *p, ak_status_t st, const char *fmt, ...) {
  char body[AK_ERR_MSG_BYTES];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(body, sizeof body, fmt, ap);
  va_end(ap);
  return ak_err_set(p->err, st, "%s: %s", p->fn, body);
}

static size_t ak_gguf_left(const ak_gguf_parser_t *p) { return p->n_bytes - p->pos; }

static ak_status_t ak_gguf_need(ak_gguf_parser_t *p, uint64_t n, const char *what, const char *ctx) {
  if (n <= ak_gguf_left(p)) return AK_OK;
  return ak_gguf_fail(p, AK_ERR_FORMAT,
                      "truncated: %s%s%s at offset %zu needs %llu bytes, %zu left (file size %zu)",
                      ctx, *ctx ? " " : "", what, p->pos, (unsigned long long)n, ak_gguf_left(p),
                      p->n_bytes);
}

static ak_status_t ak_gguf_read_u32(ak_gguf_parser_t *p, const char *what, const char *ctx,
                                    uint32_t *v_p) {
  AK_TRY(ak_gguf_need(p, 4, what, ctx));
  memcpy(v_p, p->base + p->pos, 4);
  p->pos += 4;
  return AK_OK;
}

static ak_status_t ak_gguf_read_u64(ak_gguf_parser_t *p, const char *what, const char *ctx,
                                    uint64_t *v_p) {
  AK_TRY(ak_gguf_need(p, 8, what, ctx));
  memcpy(v_p, p->base + p->pos, 8);
  p->pos += 8;
  return AK_OK;
}

static ak_status_t ak_gguf_read_str(ak_gguf_parser_t *p, const char *what, const char *ctx,
                                    const char **s_p, size_t *len_p) {
  uint64_t len;
  size_t at = p->pos;
  AK_TRY(ak_gguf_read_u64(p, what, ctx, &len));
  if (len > ak_gguf_left(p)) {
    return ak_gguf_fail(p, AK_ERR_FORMAT,
                        "%s%s%s length %llu at offset %zu exceeds the %zu bytes left (file size %zu)",
                        ctx, *ctx ? " " : "", what, (unsigned long long)len, at, ak_gguf_left(p),
                        p->n_bytes);
  }
  *s_p = (const char *)(p->base + p->pos);
  *len_p = (size_t)len;
  p->pos += (size_t)len;
  return AK_OK;
}

/* Bytes of one element of a fixed-size type; 0 for STRING, ARRAY and unknown ids. */
static size_t ak_gguf_fixed_bytes(uint32_t type) {
  switch (type) {
    case AK_GGUF_UINT8: case AK_GGUF_INT8: case AK_GGUF_BOOL: return 1;
    case AK_GGUF_UINT16: case AK_GGUF_INT16: return 2;
    case AK_GGUF_UINT32: case AK_GGUF_INT32: case AK_GGUF_FLOAT32: return 4;
    case AK_GGUF_UINT64: case AK_GGUF_INT64: case AK_GGUF_FLOAT64: return 8;
    default: return 0;
  }
}

static int ak_gguf_type_valid(uint32_t type) { return type <= AK_GGUF_FLOAT64; }

const char *ak_gguf_value_type_name(ak_gguf_value_type_t type) {
  static const char *const names[] = {"u8",  "i8",   "u16",    "i16",   "u32", "i32", "f32",
                                      "bool", "string", "array", "u64", "i64", "f64"};
  return ak_gguf_type_valid((uint32_t)type) ? names[type] : "unknown";
}

static ak_status_t ak_gguf_skip_value(ak_gguf_parser_t *p, uint32_t type, int depth, const char *ctx);

/* Reads an array header and validates (skips) its elements. `str_offs_p`, when not
 * NULL, receives an allocated table of string offsets for an array of strings. */
static ak_status_t ak_gguf_read_array(ak_gguf_parser_t *p, int depth, const char *ctx,
                                      uint32_t *elem_type_p, uint64_t *n_p, size_t *first_off_p,
                                      uint64_t **str_offs_p) {
  uint32_t et;
  uint64_t n;
  if (depth >= AK_GGUF_MAX_ARRAY_DEPTH)
    return ak_gguf_fail(p, AK_ERR_FORMAT, "%s arrays nested deeper than %d at offset %zu", ctx,
                        AK_GGUF_MAX_ARRAY_DEPTH, p->pos);
  AK_TRY(ak_gguf_read_u32(p, "array element type", ctx, &et));
  if (!ak_gguf_type_valid(et))
    return ak_gguf_fail(p, AK_ERR_FORMAT, "%s array has unknown element type %u at offset %zu", ctx,
                        et, p->pos - 4);
  AK_TRY(ak_gguf_read_u64(p, "array length", ctx, &n));
  size_t elem_min = ak_gguf_fixed_bytes(et);
  if (elem_min == 0) elem_min = et == AK_GGUF_STRING ? AK_GGUF_MIN_STRING_BYTES : AK_GGUF_MIN_ARRAY_BYTES;
  if (n > ak_gguf_left(p) / elem_min)
    return ak_gguf_fail(p, AK_ERR_FORMAT,
                        "%s array of %llu %s elements at offset %zu cannot fit in the %zu bytes left",
                        ctx, (unsigned long long)n, ak_gguf_value_type_name(et), p->pos - 8,
                        ak_gguf_left(p));
  *elem_type_p = et;
  *n_p = n;
  *first_off_p = p->pos;
  if (ak_gguf_fixed_bytes(et)) {
    p->pos += (size_t)n * elem_min;
    return AK_OK;
  }
  uint64_t *offs = NULL;
  if (str_offs_p && et == AK_GGUF_STRING) {
    offs = ak_host_alloc((size_t)n * sizeof *offs, 0);
    if (!offs && n > 0)
      return ak_gguf_fail(p, AK_ERR_NO_MEMORY, "%s: no memory for %llu string offsets", ctx,
                          (unsigned long long)n);
  }
  for (uint64_t i = 0; i < n; i++) {
    if (offs) offs[i] = p->pos;
    ak_status_t st = et == AK_GGUF_STRING ? ak_gguf_skip_value(p, et, depth, ctx)
                                          : ak_gguf_skip_value(p, et, depth + 1, ctx);
    if (st < 0) {
      ak_host_free(offs, (size_t)n * sizeof *offs);
      return st;
    }
  }
  if (str_offs_p) *str_offs_p = offs;
  return AK_OK;
}

static ak_status_t ak_gguf_skip_value(ak_gguf_parser_t *p, uint32_t type, int depth, const char *ctx) {
  if (type == AK_GGUF_STRING) {
    const char *s;
    size_t len;
    return ak_gguf_read_str(p, "string", ctx, &s, &len);
  }
  if (type == AK_GGUF_ARRAY) {
    uint32_t et;
    uint64_t n;
    size_t first;
    return ak_gguf_read_array(p, depth, ctx, &et, &n, &first, NULL);
  }
  size_t n = ak_gguf_fixed_bytes(type);
  AK_TRY(ak_gguf_need(p, n, ak_gguf_value_type_name(type), ctx));
  p->pos += n;
  return AK_OK;
}

static void ak_gguf_kv_ctx(char *buf, size_t n, int64_t idx, const char *key, size_t key_len) {
  snprintf(buf, n, "kv %lld '%.*s'", (long long)idx, (int)(key_len > 96 ? 96 : key_len), key);
}

static ak_status_t ak_gguf_parse_kv(ak_gguf_parser_t *p, ak_gguf_t *g, int64_t idx) {
  ak_gguf_kv_t *kv = &g->kvs[idx];
  char ctx[160];
  snprintf(ctx, sizeof ctx, "kv %lld", (long long)idx);
  AK_TRY(ak_gguf_read_str(p, "key", ctx, &kv->key, &kv->key_len));
  ak_gguf_kv_ctx(ctx, sizeof ctx, idx, kv->key, kv->key_len);

  ak_gguf_slot_t *slot = ak_gguf_index_slot(&g->kv_index, kv->key, kv->key_len);
  if (slot->name)
    return ak_gguf_fail(p, AK_ERR_FORMAT, "%s duplicates the key of kv %lld", ctx, (long long)slot->idx);

  uint32_t type;
  AK_TRY(ak_gguf_read_u32(p, "value type", ctx, &type));
  if (!ak_gguf_type_valid(type))
    return ak_gguf_fail(p, AK_ERR_FORMAT, "%s has unknown value type %u at offset %zu", ctx, type,
                        p->pos - 4);
  kv->type = (ak_gguf_value_type_t)type;
  kv->val_off = p->pos;
  if (type == AK_GGUF_STRING) {
    AK_TRY(ak_gguf_read_str(p, "string value", ctx, &kv->str, &kv->str_len));
  } else if (type == AK_GGUF_ARRAY) {
    uint32_t et;
    uint64_t n;
    AK_TRY(ak_gguf_read_array(p, 0, ctx, &et, &n, &kv->val_off, &kv->str_offs));
    kv->elem_type = (ak_gguf_value_type_t)et;
    kv->n_elems = (int64_t)n;
  } else {
    AK_TRY(ak_gguf_skip_value(p, type, 0, ctx));
  }
  *slot = (ak_gguf_slot_t){kv->key, kv->key_len, idx};
  return AK_OK;
}

/* Integer value of a scalar kv, widened; *neg_p says whether it is below zero. */
static int ak_gguf_kv_int(const ak_gguf_t *g, const ak_gguf_kv_t *kv, uint64_t *mag_p, int *neg_p) {
  const uint8_t *v = g->base + kv->val_off;
  int64_t s;
  uint64_t u;
  switch (kv->type) {
    case AK_GGUF_UINT8: *mag_p = v[0]; *neg_p = 0; return 1;
    case AK_GGUF_INT8: s = (int8_t)v[0]; break;
    case AK_GGUF_UINT16: { uint16_t x; memcpy(&x, v, 2); *mag_p = x; *neg_p = 0; return 1; }
    case AK_GGUF_INT16: { int16_t x; memcpy(&x, v, 2); s = x; break; }
    case AK_GGUF_UINT32: { uint32_t x; memcpy(&x, v, 4); *mag_p = x; *neg_p = 0; return 1; }
    case AK_GGUF_INT32: { int32_t x; memcpy(&x, v, 4); s = x; break; }
    case AK_GGUF_UINT64: memcpy(&u, v, 8); *mag_p = u; *neg_p = 0; return 1;
    case AK_GGUF_INT64: memcpy(&s, v, 8); break;
    default: return 0;
  }
  *neg_p = s < 0;
  *mag_p = s < 0 ? (uint64_t)0 - (uint64_t)s : (uint64_t)s;
  return 1;
}

static ak_status_t ak_gguf_parse_alignment(ak_gguf_parser_t *p, ak_gguf_t *g) {
  g->alignment = AK_GGUF_DEFAULT_ALIGNMENT;
  int64_t idx = ak_gguf_index_find(&g->kv_index, "general.alignment", strlen("general.alignment"));
  if (idx < 0) return AK_OK;
  uint64_t mag;
  int neg;
  if (!ak_gguf_kv_int(g, &g->kvs[idx], &mag, &neg))
    return ak_gguf_fail(p, AK_ERR_FORMAT, "general.alignment has type %s, want an integer",
                        ak_gguf_value_type_name(g->kvs[idx].type));
  if (neg || mag == 0 || mag > UINT32_MAX || (mag & (mag - 1)) != 0)
    return ak_gguf_fail(p, AK_ERR_FORMAT, "general.alignment %s%llu is not a nonzero power of two",
                        neg ? "-" : "", (unsigned long long)mag);
  g->alignment = (size_t)mag;
  return AK_OK;
}

static ak_status_t ak_gguf_parse_tensor_info(ak_gguf_parser_t *p, ak_gguf_t *g, int64_t idx,
                                             uint64_t *offset_p) {
  ak_gguf_tensor_t *t = &g->tensors[idx];
  char ctx[160];
  snprintf(ctx, sizeof ctx, "tensor %lld", (long long)idx);
  AK_TRY(ak_gguf_read_str(p, "name", ctx, &t->name, &t->name_len));
  snprintf(ctx, sizeof ctx, "tensor %lld '%.*s'", (long long)idx,
           (int)(t->name_len > 96 ? 96 : t->name_len), t->name);

  ak_gguf_slot_t *slot = ak_gguf_index_slot(&g->tensor_index, t->name, t->name_len);
  if (slot->name)
    return ak_gguf_fail(p, AK_ERR_FORMAT, "%s duplicates the name of tensor %lld", ctx,
                        (long long)slot->idx);

  uint32_t n_dims;
  AK_TRY(ak_gguf_read_u32(p, "n_dims", ctx, &n_dims));
  if (n_dims < 1 || n_dims > AK_GGUF_MAX_DIMS)
    return ak_gguf_fail(p, AK_ERR_FORMAT, "%s has n_dims %u, want 1..%d", ctx, n_dims, AK_GGUF_MAX_DIMS);
  t->n_dims = (int32_t)n_dims;
  int64_t n_elems = 1;
  for (int d = 0; d < AK_GGUF_MAX_DIMS; d++) t->ne[d] = 1;
  for (uint32_t d = 0; d < n_dims; d++) {
    uint64_t ne;
    AK_TRY(ak_gguf_read_u64(p, "ne", ctx, &ne));
    if (ne == 0 || ne > (uint64_t)INT64_MAX)
      return ak_gguf_fail(p, AK_ERR_FORMAT, "%s has ne[%u] = %llu, want 1..INT64_MAX", ctx, d,
                          (unsigned long long)ne);
    if ((int64_t)ne > INT64_MAX / n_elems)
      return ak_gguf_fail(p, AK_ERR_FORMAT, "%s element count overflows int64 at ne[%u] = %llu", ctx,
                          d, (unsigned long long)ne);
    t->ne[d] = (int64_t)ne;
    n_elems *= (int64_t)ne;
  }

  uint32_t type;
  AK_TRY(ak_gguf_read_u32(p, "type", ctx, &type));
  if (!ak_type_known((int)type))
    return ak_gguf_fail(p, AK_ERR_FORMAT, "%s has unknown or unsupported ggml type %u", ctx, type);
  t->type = (ak_ggml_type_t)type;
  size_t row_bytes = ak_type_row_bytes(t->type, t->ne[0]);
  if (row_bytes == 0)
    return ak_gguf_fail(p, AK_ERR_FORMAT, "%s: ne[0] = %lld is not a multiple of the %s block size %lld",
                        ctx, (long long)t->ne[0], ak_type_name(t->type),
                        (long long)ak_type_block_elems(t->type));
  uint64_t n_rows = (uint64_t)(n_elems / t->ne[0]);
  if (n_rows > SIZE_MAX / row_bytes)
    return ak_gguf_fail(p, AK_ERR_FORMAT, "%s byte size overflows (%llu rows of %zu bytes)", ctx,
                        (unsigned long long)n_rows, row_bytes);
  t->n_bytes = (size_t)n_rows * row_bytes;

  AK_TRY(ak_gguf_read_u64(p, "offset", ctx, offset_p));
  if (*offset_p % g->alignment != 0)
    return ak_gguf_fail(p, AK_ERR_FORMAT, "%s data offset %llu is not a multiple of the alignment %zu",
                        ctx, (unsigned long long)*offset_p, g->alignment);
  *slot = (ak_gguf_slot_t){t->name, t->name_len, idx};
  return AK_OK;
}

typedef struct {
  uint64_t begin, end; /* file offsets */
  int64_t idx;
} ak_gguf_span_t;

static int ak_gguf_span_cmp(const void *a, const void *b) {
  const ak_gguf_span_t *x = a, *y = b;
  return x->begin < y->begin ? -1 : x->begin > y->begin;
}

/* Places every tensor inside the file and rejects overlaps (sort by start, compare
 * neighbours: O(n log n) where a pairwise check would be quadratic). */
static ak_status_t ak_gguf_place_tensors(ak_gguf_parser_t *p, ak_gguf_t *g, const uint64_t *offs) {
  if (g->n_tensors == 0) return AK_OK;
  g->data_start = p->pos + (g->alignment - p->pos % g->alignment) % g->alignment;
  if (g->data_start > p->n_bytes)
    return ak_gguf_fail(p, AK_ERR_FORMAT, "tensor data section starts at %zu, past the file size %zu",
                        g->data_start, p->n_bytes);
  size_t spans_bytes = (size_t)g->n_tensors * sizeof(ak_gguf_span_t);
  ak_gguf_span_t *spans = ak_host_alloc(spans_bytes, 0);
  if (!spans) return ak_gguf_fail(p, AK_ERR_NO_MEMORY, "no memory to sort %lld tensors", (long long)g->n_tensors);
  size_t data_bytes = p->n_bytes - g->data_start;
  ak_status_t st = AK_OK;
  for (int64_t i = 0; i < g->n_tensors; i++) {
    ak_gguf_tensor_t *t = &g->tensors[i];
    if (offs[i] > data_bytes || t->n_bytes > data_bytes - offs[i]) {
      st = ak_gguf_fail(p, AK_ERR_FORMAT, "tensor '%.*s' data [%llu, %llu) exceeds file size %zu",
                        (int)(t->name_len > 96 ? 96 : t->name_len), t->name,
                        (unsigned long long)(g->data_start + offs[i]),
                        (unsigned long long)(g->data_start + offs[i] + t->n_bytes), p->n_bytes);
      goto out_free_spans;
    }
    t->data = p->base + g->data_start + offs[i];
    spans[i] = (ak_gguf_span_t){g->data_start + offs[i], g->data_start + offs[i] + t->n_bytes, i};
  }
  qsort(spans, (size_t)g->n_tensors, sizeof *spans, ak_gguf_span_cmp);
  for (int64_t i = 1; i < g->n_tensors; i++) {
    if (spans[i].begin < spans[i - 1].end) {
      const ak_gguf_tensor_t *a = &g->tensors[spans[i - 1].idx], *b = &g->tensors[spans[i].idx];
      st = ak_gguf_fail(p, AK_ERR_FORMAT, "tensor '%.*s' data [%llu, %llu) overlaps tensor '%.*s' [%llu, %llu)",
                        (int)(b->name_len > 96 ? 96 : b->name_len), b->name,
                        (unsigned long long)spans[i].begin, (unsigned long long)spans[i].end,
                        (int)(a->name_len > 96 ? 96 : a->name_len), a->name,
                        (unsigned long long)spans[i - 1].begin, (unsigned long long)spans[i - 1].end);
      goto out_free_spans;
    }
  }
out_free_spans:
  ak_host_free(spans, spans_bytes);
  return st;
}

static ak_status_t ak_gguf_parse_header(ak_gguf_parser_t *p, uint32_t *version_p, uint64_t *n_tensors_p,
                                        uint64_t *n_kv_p) {
  uint32_t magic, version;
  AK_TRY(ak_gguf_read_u32(p, "magic", "header", &magic));
  if (magic != AK_GGUF_MAGIC)
    return ak_gguf_fail(p, AK_ERR_FORMAT, "bad magic 0x%08x at offset 0, want 'GGUF' (0x%08x)", magic,
                        AK_GGUF_MAGIC);
  AK_TRY(ak_gguf_read_u32(p, "version", "header", &version));
  if (version == 0x02000000u || version == 0x03000000u)
    return ak_gguf_fail(p, AK_ERR_FORMAT, "version 0x%08x: a big-endian GGUF, which is not supported", version);
  if (version != 2 && version != 3)
    return ak_gguf_fail(p, AK_ERR_FORMAT, "unsupported version %u, want 2 or 3", version);
  AK_TRY(ak_gguf_read_u64(p, "n_tensors", "header", n_tensors_p));
  AK_TRY(ak_gguf_read_u64(p, "n_kv", "header", n_kv_p));
  size_t left = ak_gguf_left(p);
  if (*n_kv_p > left / AK_GGUF_MIN_KV_BYTES)
    return ak_gguf_fail(p, AK_ERR_FORMAT, "n_kv %llu cannot fit in the %zu bytes after the header",
                        (unsigned long long)*n_kv_p, left);
  left -= (size_t)*n_kv_p * AK_GGUF_MIN_KV_BYTES;
  if (*n_tensors_p > left / AK_GGUF_MIN_TENSOR_INFO_BYTES)
    return ak_gguf_fail(p, AK_ERR_FORMAT, "n_tensors %llu cannot fit in the %zu bytes after the header",
                        (unsigned long long)*n_tensors_p, ak_gguf_left(p));
  *version_p = version;
  return AK_OK;
}

/* Parses the whole file; on failure frees what it allocated. */
static ak_status_t ak_gguf_parse(const uint8_t *base, size_t n_bytes, const char *fn, ak_err_t *err,
                                 ak_gguf_t **gguf_p) {
  ak_gguf_parser_t p = {base, n_bytes, 0, fn, err};
  uint32_t version = 0;
  uint64_t n_tensors = 0, n_kv = 0;
  AK_TRY(ak_gguf_parse_header(&p, &version, &n_tensors, &n_kv));

  ak_status_t st;
  uint64_t *offs = NULL; /* [n_tensors] data offsets, needed only until placement */
  size_t offs_bytes = (size_t)n_tensors * sizeof *offs;
  ak_gguf_t *g = ak_host_alloc(sizeof *g, 1);
  if (!g) return ak_gguf_fail(&p, AK_ERR_NO_MEMORY, "no memory for the handle");
  g->base = base;
  g->n_bytes = n_bytes;
  g->version = version;
  g->alignment = AK_GGUF_DEFAULT_ALIGNMENT;
  g->n_kv = (int64_t)n_kv;
  g->n_tensors = (int64_t)n_tensors;

  g->kvs = ak_host_alloc((size_t)n_kv * sizeof *g->kvs, 1);
  if (!g->kvs || ak_gguf_index_init(&g->kv_index, g->n_kv) < 0 ||
      !(g->tensors = ak_host_alloc((size_t)n_tensors * sizeof *g->tensors, 1)) ||
      ak_gguf_index_init(&g->tensor_index, g->n_tensors) < 0) {
    st = ak_gguf_fail(&p, AK_ERR_NO_MEMORY, "no memory for %llu kvs and %llu tensors",
                      (unsigned long long)n_kv, (unsigned long long)n_tensors);
    goto err_close;
  }
  for (int64_t i = 0; i < g->n_kv; i++)
    if ((st = ak_gguf_parse_kv(&p, g, i)) < 0) goto err_close;
  if ((st = ak_gguf_parse_alignment(&p, g)) < 0) goto err_close;

  offs = ak_host_alloc(offs_bytes, 0);
  if (!offs) {
    st = ak_gguf_fail(&p, AK_ERR_NO_MEMORY, "no memory for %llu tensor offsets", (unsigned long long)n_tensors);
    goto err_close;
  }
  for (int64_t i = 0; i < g->n_tensors; i++)
    if ((st = ak_gguf_parse_tensor_info(&p, g, i, &offs[i])) < 0) goto err_free_offs;
  if ((st = ak_gguf_place_tensors(&p, g, offs)) < 0) goto err_free_offs;
  ak_host_free(offs, offs_bytes);
  *gguf_p = g;
  return AK_OK;

err_free_offs:
  ak_host_free(offs, offs_bytes);
err_close:
  ak_gguf_close(g);
  return st;
}

/* ------------------------------------------------------------- open/close */

ak_status_t ak_gguf_open_buffer(const void *buf, size_t n_bytes, ak_err_t *err, ak_gguf_t **gguf_p) {
  if ((!buf && n_bytes > 0) || !gguf_p)
    return ak_err_set(err, AK_ERR_INVALID_ARG, "ak_gguf_open_buffer: NULL buffer or output");
  return ak_gguf_parse(buf, n_bytes, "ak_gguf_open_buffer", err, gguf_p);
}

ak_status_t ak_gguf_open(const char *path, ak_err_t *err, ak_gguf_t **gguf_p) {
  if (!path || !gguf_p) return ak_err_set(err, AK_ERR_INVALID_ARG, "ak_gguf_open: NULL path or output");
  int fd = open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    int e = errno;
    return ak_err_set(err, e == ENOENT ? AK_ERR_NOT_FOUND : AK_ERR_IO, "ak_gguf_open: cannot open '%s': %s",
                      path, strerror(e));
  }
  struct stat sb;
  ak_status_t st;
  if (fstat(fd, &sb) != 0 || !S_ISREG(sb.st_mode)) {
    st = ak_err_set(err, AK_ERR_IO, "ak_gguf_open: '%s' is not a readable regular file", path);
    goto err_close_fd;
  }
  size_t n_bytes = (size_t)sb.st_size;
  void *map = NULL;
  if (n_bytes > 0) {
    /* Private read-only mapping: weights page in on first touch and are shared with
     * the page cache, so opening a multi-GB model costs no copy. */
    map = mmap(NULL, n_bytes, PROT_READ, MAP_PRIVATE, fd, 0);
    if (map == MAP_FAILED) {
      st = ak_err_set(err, AK_ERR_IO, "ak_gguf_open: mmap of '%s' (%zu bytes) failed: %s", path, n_bytes,
                      strerror(errno));
      goto err_close_fd;
    }
  }
  close(fd);
  ak_gguf_t *g;
  st = ak_gguf_parse(map, n_bytes, "ak_gguf_open", err, &g);
  if (st < 0) {
    if (map) munmap(map, n_bytes);
    return st;
  }
  g->map = map;
  *gguf_p = g;
  return AK_OK;

err_close_fd:
  close(fd);
  return st;
}

void ak_gguf_close(ak_gguf_t *g) {
  if (!g) return;
  if (g->kvs) {
    for (int64_t i = 0; i < g->n_kv; i++)
      if (g->kvs[i].str_offs) ak_host_free(g->kvs[i].str_offs, (size_t)g->kvs[i].n_elems * sizeof(uint64_t));
    ak_host_free(g->kvs, (size_t)g->n_kv * sizeof *g->kvs);
  }
  ak_gguf_index_free(&g->kv_index);
  ak_host_free(g->tensors, (size_t)g->n_tensors * sizeof *g->tensors);
  ak_gguf_index_free(&g->tensor_index);
  if (g->map) munmap(g->map, g->n_bytes);
  ak_host_free(g, sizeof *g);
}

/* ------------------------------------------------------------- accessors */

uint32_t ak_gguf_version(const ak_gguf_t *g) { return g->version; }
size_t ak_gguf_alignment(const ak_gguf_t *g) { return g->alignment; }
int64_t ak_gguf_n_kv(const ak_gguf_t *g) { return g->n_kv; }

int64_t ak_gguf_find_key(const ak_gguf_t *g, const char *key) {
  return key ? ak_gguf_index_find(&g->kv_index, key, strlen(key)) : -1;
}

const char *ak_gguf_kv_key(const ak_gguf_t *g, int64_t kv_idx, size_t *len_p) {
  if (kv_idx < 0 || kv_idx >= g->n_kv) return NULL;
  if (len_p) *len_p = g->kvs[kv_idx].key_len;
  return g->kvs[kv_idx].key;
}

ak_gguf_value_type_t ak_gguf_kv_type(const ak_gguf_t *g, int64_t kv_idx) {
  if (kv_idx < 0 || kv_idx >= g->n_kv) return (ak_gguf_value_type_t)-1;
  return g->kvs[kv_idx].type;
}

static ak_status_t ak_gguf_lookup(const ak_gguf_t *g, const char *key, const char *fn, ak_err_t *err,
                                  const ak_gguf_kv_t **kv_p) {
  int64_t idx = ak_gguf_find_key(g, key);
  if (idx < 0) return ak_err_set(err, AK_ERR_NOT_FOUND, "%s: key '%s' not found", fn, key ? key : "(null)");
  *kv_p = &g->kvs[idx];
  return AK_OK;
}

static ak_status_t ak_gguf_mismatch(const ak_gguf_kv_t *kv, const char *fn, const char *key, ak_err_t *err,
                                    const char *want) {
  if (kv->type == AK_GGUF_ARRAY)
    return ak_err_set(err, AK_ERR_FORMAT, "%s: key '%s' has type array of %s, want %s", fn, key,
                      ak_gguf_value_type_name(kv->elem_type), want);
  return ak_err_set(err, AK_ERR_FORMAT, "%s: key '%s' has type %s, want %s", fn, key,
                    ak_gguf_value_type_name(kv->type), want);
}

ak_status_t ak_gguf_get_u32(const ak_gguf_t *g, const char *key, ak_err_t *err, uint32_t *out_p) {
  const ak_gguf_kv_t *kv = NULL;
  AK_TRY(ak_gguf_lookup(g, key, __func__, err, &kv));
  uint64_t mag;
  int neg;
  if (!ak_gguf_kv_int(g, kv, &mag, &neg)) return ak_gguf_mismatch(kv, __func__, key, err, "an integer");
  if (neg || mag > UINT32_MAX)
    return ak_err_set(err, AK_ERR_FORMAT, "%s: key '%s' value %s%llu does not fit in u32", __func__, key,
                      neg ? "-" : "", (unsigned long long)mag);
  *out_p = (uint32_t)mag;
  return AK_OK;
}

ak_status_t ak_gguf_get_i64(const ak_gguf_t *g, const char *key, ak_err_t *err, int64_t *out_p) {
  const ak_gguf_kv_t *kv = NULL;
  AK_TRY(ak_gguf_lookup(g, key, __func__, err, &kv));
  uint64_t mag;
  int neg;
  if (!ak_gguf_kv_int(g, kv, &mag, &neg)) return ak_gguf_mismatch(kv, __func__, key, err, "an integer");
  if (!neg && mag > (uint64_t)INT64_MAX)
    return ak_err_set(err, AK_ERR_FORMAT, "%s: key '%s' value %llu does not fit in i64", __func__, key,
                      (unsigned long long)mag);
  /* A negative magnitude is at most 2^63, whose negation wraps to INT64_MIN as wanted. */
  *out_p = neg ? (int64_t)((uint64_t)0 - mag) : (int64_t)mag;
  return AK_OK;
}

ak_status_t ak_gguf_get_f32(const ak_gguf_t *g, const char *key, ak_err_t *err, float *out_p) {
  const ak_gguf_kv_t *kv = NULL;
  AK_TRY(ak_gguf_lookup(g, key, __func__, err, &kv));
  if (kv->type == AK_GGUF_FLOAT32) {
    memcpy(out_p, g->base + kv->val_off, sizeof(float));
  } else if (kv->type == AK_GGUF_FLOAT64) {
    double d;
    memcpy(&d, g->base + kv->val_off, sizeof d);
    *out_p = (float)d;
  } else {
    return ak_gguf_mismatch(kv, __func__, key, err, "f32 or f64");
  }
  return AK_OK;
}

ak_status_t ak_gguf_get_bool(const ak_gguf_t *g, const char *key, ak_err_t *err, int *out_p) {
  const ak_gguf_kv_t *kv = NULL;
  AK_TRY(ak_gguf_lookup(g, key, __func__, err, &kv));
  if (kv->type != AK_GGUF_BOOL) return ak_gguf_mismatch(kv, __func__, key, err, "bool");
  *out_p = g->base[kv->val_off] != 0;
  return AK_OK;
}

ak_status_t ak_gguf_get_str(const ak_gguf_t *g, const char *key, ak_err_t *err, const char **s_p,
                            size_t *len_p) {
  const ak_gguf_kv_t *kv = NULL;
  AK_TRY(ak_gguf_lookup(g, key, __func__, err, &kv));
  if (kv->type != AK_GGUF_STRING) return ak_gguf_mismatch(kv, __func__, key, err, "string");
  *s_p = kv->str;
  *len_p = kv->str_len;
  return AK_OK;
}

ak_status_t ak_gguf_get_arr(const ak_gguf_t *g, const char *key, ak_err_t *err,
                            ak_gguf_value_type_t *elem_type_p, int64_t *n_p) {
  const ak_gguf_kv_t *kv = NULL;
  AK_TRY(ak_gguf_lookup(g, key, __func__, err, &kv));
  if (kv->type != AK_GGUF_ARRAY) return ak_gguf_mismatch(kv, __func__, key, err, "array");
  *elem_type_p = kv->elem_type;
  *n_p = kv->n_elems;
  return AK_OK;
}

/* AK_ERR_RANGE unless i indexes the array kv. */
static ak_status_t ak_gguf_arr_index(const ak_gguf_kv_t *kv, const char *key, int64_t i, const char *fn,
                                     ak_err_t *err) {
  if (i >= 0 && i < kv->n_elems) return AK_OK;
  return ak_err_set(err, AK_ERR_RANGE, "%s: index %lld outside array '%s' of %lld", fn, (long long)i, key,
                    (long long)kv->n_elems);
}

ak_status_t ak_gguf_get_arr_str(const ak_gguf_t *g, const char *key, int64_t i, ak_err_t *err,
                                const char **s_p, size_t *len_p) {
  const ak_gguf_kv_t *kv = NULL;
  AK_TRY(ak_gguf_lookup(g, key, __func__, err, &kv));
  if (kv->type != AK_GGUF_ARRAY || kv->elem_type != AK_GGUF_STRING)
    return ak_gguf_mismatch(kv, __func__, key, err, "array of string");
  AK_TRY(ak_gguf_arr_index(kv, key, i, __func__, err));
  uint64_t len;
  memcpy(&len, g->base + kv->str_offs[i], sizeof len);
  *s_p = (const char *)(g->base + kv->str_offs[i] + 8);
  *len_p = (size_t)len;
  return AK_OK;
}

ak_status_t ak_gguf_get_arr_data(const ak_gguf_t *g, const char *key, ak_err_t *err, const void **data_p) {
  const ak_gguf_kv_t *kv = NULL;
  AK_TRY(ak_gguf_lookup(g, key, __func__, err, &kv));
  if (kv->type != AK_GGUF_ARRAY || !ak_gguf_fixed_bytes(kv->elem_type))
    return ak_gguf_mismatch(kv, __func__, key, err, "array of a numeric type");
  *data_p = g->base + kv->val_off;
  return AK_OK;
}

ak_status_t ak_gguf_get_arr_i64(const ak_gguf_t *g, const char *key, int64_t i, ak_err_t *err,
                                int64_t *out_p) {
  const ak_gguf_kv_t *kv = NULL;
  AK_TRY(ak_gguf_lookup(g, key, __func__, err, &kv));
  ak_gguf_value_type_t et = kv->elem_type;
  if (kv->type != AK_GGUF_ARRAY || et == AK_GGUF_BOOL || et == AK_GGUF_FLOAT32 || et == AK_GGUF_FLOAT64 ||
      !ak_gguf_fixed_bytes(et))
    return ak_gguf_mismatch(kv, __func__, key, err, "array of an integer type");
  AK_TRY(ak_gguf_arr_index(kv, key, i, __func__, err));
  /* Reuse the scalar decoder on a view of element i. */
  const ak_gguf_kv_t elem = {.type = et, .val_off = kv->val_off + (size_t)i * ak_gguf_fixed_bytes(et)};
  uint64_t mag;
  int neg;
  ak_gguf_kv_int(g, &elem, &mag, &neg);
  if (!neg && mag > (uint64_t)INT64_MAX)
    return ak_err_set(err, AK_ERR_FORMAT, "%s: '%s'[%lld] = %llu does not fit in i64", __func__, key,
                      (long long)i, (unsigned long long)mag);
  *out_p = neg ? (int64_t)((uint64_t)0 - mag) : (int64_t)mag;
  return AK_OK;
}

ak_status_t ak_gguf_get_arr_f32(const ak_gguf_t *g, const char *key, int64_t i, ak_err_t *err, float *out_p) {
  const ak_gguf_kv_t *kv = NULL;
  AK_TRY(ak_gguf_lookup(g, key, __func__, err, &kv));
  if (kv->type != AK_GGUF_ARRAY || (kv->elem_type != AK_GGUF_FLOAT32 && kv->elem_type != AK_GGUF_FLOAT64))
    return ak_gguf_mismatch(kv, __func__, key, err, "array of f32 or f64");
  AK_TRY(ak_gguf_arr_index(kv, key, i, __func__, err));
  if (kv->elem_type == AK_GGUF_FLOAT32) {
    memcpy(out_p, g->base + kv->val_off + (size_t)i * 4, sizeof(float));
  } else {
    double d;
    memcpy(&d, g->base + kv->val_off + (size_t)i * 8, sizeof d);
    *out_p = (float)d;
  }
  return AK_OK;
}

int64_t ak_gguf_n_tensors(const ak_gguf_t *g) { return g->n_tensors; }

const ak_gguf_tensor_t *ak_gguf_tensor(const ak_gguf_t *g, int64_t tensor_idx) {
  if (tensor_idx < 0 || tensor_idx >= g->n_tensors) return NULL;
  return &g->tensors[tensor_idx];
}

const ak_gguf_tensor_t *ak_gguf_find_tensor(const ak_gguf_t *g, const char *name) {
  if (!name) return NULL;
  int64_t idx = ak_gguf_index_find(&g->tensor_index, name, strlen(name));
  return idx < 0 ? NULL : &g->tensors[idx];
}
