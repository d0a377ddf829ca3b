/* ak_gguf: a reader for GGUF model files (version 2 and 3), memory-mapped.
 *
 * File layout (little endian; ggml's gguf.h is the authority):
 *
 *   magic "GGUF" | u32 version | u64 n_tensors | u64 n_kv
 *   n_kv  x { string key | u32 value_type | value }
 *   n_tensors x { string name | u32 n_dims | u64 ne[n_dims] | u32 ggml_type | u64 offset }
 *   padding to `general.alignment` (default 32)
 *   tensor data: each tensor at data_start + offset, offset a multiple of the alignment
 *
 *   string = u64 n_bytes | bytes (not NUL-terminated)
 *   array  = u32 elem_type | u64 n | n x elem  (arrays of arrays allowed)
 *
 * Every length, count and offset is checked against the file size before use: a
 * truncated, malformed or hostile file gives AK_ERR_FORMAT with a message naming
 * what is wrong and where, and never reads out of bounds.
 *
 * Checks beyond bounds: versions 2 and 3 only (a byte-swapped version is reported as
 * big-endian, unsupported); keys and tensor names unique; value types 0..12, arrays
 * nested at most 8 deep; n_dims 1..4, every ne > 0 and their product fits int64;
 * ggml types known to ak_type_known with ne[0] a multiple of the block size;
 * `general.alignment` (any integer type) a nonzero power of two; offsets multiples
 * of the alignment. Counts are checked against the bytes left before allocating.
 *
 * Strings returned point into the mapping (not NUL-terminated: use the length) and
 * live until ak_gguf_close. Thread-safe for concurrent readers after open. Tables
 * are allocated with ak_host_alloc (accounted); close returns every byte. Errors are
 * not logged: the message goes to `err`, prefixed with the public function name. */
#ifndef AK_GGUF_H
#define AK_GGUF_H

#include <stddef.h>
#include <stdint.h>

#include "ak_quant.h"
#include "ak_status.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef enum {
  AK_GGUF_UINT8 = 0,
  AK_GGUF_INT8 = 1,
  AK_GGUF_UINT16 = 2,
  AK_GGUF_INT16 = 3,
  AK_GGUF_UINT32 = 4,
  AK_GGUF_INT32 = 5,
  AK_GGUF_FLOAT32 = 6,
  AK_GGUF_BOOL = 7,
  AK_GGUF_STRING = 8,
  AK_GGUF_ARRAY = 9,
  AK_GGUF_UINT64 = 10,
  AK_GGUF_INT64 = 11,
  AK_GGUF_FLOAT64 = 12,
} ak_gguf_value_type_t;

typedef struct ak_gguf ak_gguf_t;

typedef struct {
  const char *name; /* not NUL-terminated */
  size_t name_len;
  ak_ggml_type_t type;
  int32_t n_dims;
  int64_t ne[4]; /* ne[0] is the contiguous dimension (a row); unused dims are 1 */
  const void *data; /* into the mapping; aligned to the file's alignment when the file
                       is mmapped (ak_gguf_open), or when an ak_gguf_open_buffer buffer is */
  size_t n_bytes;
} ak_gguf_tensor_t;

/* Opens and validates the whole file (header, metadata, tensor table, that every
 * tensor's data lies inside the file and tensors do not overlap). AK_ERR_NOT_FOUND
 * when the file does not exist, AK_ERR_IO when it cannot be read or mapped,
 * AK_ERR_FORMAT when it is malformed, AK_ERR_NO_MEMORY; `*gguf_p` is written only
 * on success and nothing is left allocated on failure. */
ak_status_t ak_gguf_open(const char *path, ak_err_t *err, ak_gguf_t **gguf_p);
/* Same over a caller-owned buffer (tests, fuzzing); `buf` must outlive the handle. */
ak_status_t ak_gguf_open_buffer(const void *buf, size_t n_bytes, ak_err_t *err, ak_gguf_t **gguf_p);
/* Accepts NULL. */
void ak_gguf_close(ak_gguf_t *gguf);

uint32_t ak_gguf_version(const ak_gguf_t *g);
size_t ak_gguf_alignment(const ak_gguf_t *g);

/* --- metadata --- */
int64_t ak_gguf_n_kv(const ak_gguf_t *g);
/* Index of `key` or -1. */
int64_t ak_gguf_find_key(const ak_gguf_t *g, const char *key);
/* NULL when kv_idx is out of range. */
const char *ak_gguf_kv_key(const ak_gguf_t *g, int64_t kv_idx, size_t *len_p);
/* (ak_gguf_value_type_t)-1 when kv_idx is out of range. */
ak_gguf_value_type_t ak_gguf_kv_type(const ak_gguf_t *g, int64_t kv_idx);
/* "u8", "string", ...; "unknown" for an id outside the enum. */
const char *ak_gguf_value_type_name(ak_gguf_value_type_t type);

/* Typed getters by key. Integer getters accept any integer value type whose value
 * fits (bool is not an integer here); AK_ERR_NOT_FOUND when absent, AK_ERR_FORMAT on
 * a type mismatch or a value that does not fit, with `err` naming the key and the
 * types. get_f32 takes f32, or f64 narrowed; get_bool takes bool only. Outputs are
 * written only on success. */
ak_status_t ak_gguf_get_u32(const ak_gguf_t *g, const char *key, ak_err_t *err, uint32_t *out_p);
ak_status_t ak_gguf_get_i64(const ak_gguf_t *g, const char *key, ak_err_t *err, int64_t *out_p);
ak_status_t ak_gguf_get_f32(const ak_gguf_t *g, const char *key, ak_err_t *err, float *out_p);
ak_status_t ak_gguf_get_bool(const ak_gguf_t *g, const char *key, ak_err_t *err, int *out_p);
ak_status_t ak_gguf_get_str(const ak_gguf_t *g, const char *key, ak_err_t *err, const char **s_p,
                            size_t *len_p);

/* Arrays: element type and count. */
ak_status_t ak_gguf_get_arr(const ak_gguf_t *g, const char *key, ak_err_t *err,
                            ak_gguf_value_type_t *elem_type_p, int64_t *n_p);
/* The i-th string of a string array (O(1): offsets are indexed at open);
 * AK_ERR_RANGE when i is outside the array. */
ak_status_t ak_gguf_get_arr_str(const ak_gguf_t *g, const char *key, int64_t i, ak_err_t *err,
                                const char **s_p, size_t *len_p);
/* Raw little-endian elements of a numeric (or bool) array (n * element size bytes).
 * The pointer may be unaligned for the element type: copy with memcpy, or use the
 * element getters below. */
ak_status_t ak_gguf_get_arr_data(const ak_gguf_t *g, const char *key, ak_err_t *err,
                                 const void **data_p);
/* Element i of an array of any integer type (u8..i64, not bool), widened; of an
 * array of f32 or f64, as f32. AK_ERR_RANGE when i is outside the array. */
ak_status_t ak_gguf_get_arr_i64(const ak_gguf_t *g, const char *key, int64_t i, ak_err_t *err,
                                int64_t *out_p);
ak_status_t ak_gguf_get_arr_f32(const ak_gguf_t *g, const char *key, int64_t i, ak_err_t *err,
                                float *out_p);

/* --- tensors --- */
int64_t ak_gguf_n_tensors(const ak_gguf_t *g);
const ak_gguf_tensor_t *ak_gguf_tensor(const ak_gguf_t *g, int64_t tensor_idx);
/* NULL when absent. */
const ak_gguf_tensor_t *ak_gguf_find_tensor(const ak_gguf_t *g, const char *name);

#ifdef __cplusplus
}
#endif
#endif
