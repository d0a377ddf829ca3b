/* co_tokenizer: byte-level BPE as llama.cpp does it (src/llama-vocab.cpp), in the
 * order a call runs: load the vocabulary from GGUF, cut special tokens out of the
 * text, pre-tokenize (co_pretok.c), merge by rank, then the way back (token bytes,
 * decode). The streaming decoder is co_detok.c. The handle is read-only after
 * create; each encode call allocates its own scratch and frees it before returning,
 * so nothing is cached between calls and calls may run concurrently. */
#include "co_tokenizer.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ak_alloc.h"
#include "co_pretok_internal.h"

/* llama_token_attr bits, as llama.h numbers them, plus one private bit. */
enum {
  ATTR_UNKNOWN = 1 << 0,
  ATTR_UNUSED = 1 << 1,
  ATTR_NORMAL = 1 << 2,
  ATTR_CONTROL = 1 << 3,
  ATTR_USER_DEFINED = 1 << 4,
  ATTR_BYTE = 1 << 5,
  ATTR_EOG = 1 << 15, /* ours: llama.cpp keeps this as a set of ids */
};

/* GGUF tokenizer.ggml.token_type values (llama_token_type) */
enum { TYPE_UNDEFINED = 0, TYPE_NORMAL, TYPE_UNKNOWN, TYPE_CONTROL, TYPE_USER_DEFINED, TYPE_UNUSED, TYPE_BYTE };

typedef struct {
  uint32_t off; /* into merge_arena: left then right, without the space */
  uint32_t left_bytes;
  uint32_t right_bytes;
} co_merge_t;

struct co_tokenizer {
  int64_t n_vocab;
  char *text_arena; /* token texts back to back */
  size_t n_text_arena_bytes;
  uint32_t *text_off; /* [n_vocab] */
  uint32_t *text_len; /* [n_vocab] */
  char *piece_arena;  /* the bytes each token decodes to */
  size_t n_piece_arena_bytes;
  uint32_t *piece_off; /* [n_vocab] */
  uint32_t *piece_len; /* [n_vocab] */
  uint16_t *attr;      /* [n_vocab] ATTR_* */
  size_t max_piece_bytes;

  int32_t *tok_slots; /* open addressing, id + 1, 0 = empty */
  uint64_t n_tok_slots;

  co_merge_t *merges; /* [n_merges], index = rank */
  int64_t n_merges;
  char *merge_arena;
  size_t n_merge_arena_bytes;
  int32_t *merge_slots; /* rank + 1, 0 = empty */
  uint64_t n_merge_slots;

  int32_t *special_ids; /* CONTROL / USER_DEFINED / UNKNOWN ids, longest text first */
  int64_t n_special;

  int32_t bos_id, eos_id;
  int add_bos, add_eos;
  co_pretok_t *pretok;
};

/* --- hashing --- */

static uint64_t hash_bytes(const char *s, size_t n) {
  uint64_t h = 1469598103934665603ull; /* FNV-1a */
  for (size_t i = 0; i < n; i++) h = (h ^ (uint8_t)s[i]) * 1099511628211ull;
  return h ^ (h >> 29);
}

static uint64_t slots_for(int64_t n_items) {
  uint64_t n = 16;
  while (n < (uint64_t)n_items * 2) n *= 2;
  return n;
}

static int32_t token_lookup(const co_tokenizer_t *tok, const char *s, size_t n) {
  const uint64_t mask = tok->n_tok_slots - 1;
  for (uint64_t i = hash_bytes(s, n) & mask;; i = (i + 1) & mask) {
    int32_t v = tok->tok_slots[i];
    if (v == 0) return CO_TOKEN_NONE;
    int32_t id = v - 1;
    if (tok->text_len[id] == n && memcmp(tok->text_arena + tok->text_off[id], s, n) == 0) return id;
  }
}

/* The merge table is keyed by the pair's bytes and where they split: "a bc" and
 * "ab c" are different merges. */
static uint64_t merge_hash(const char *s, size_t n_left, size_t n_total) {
  return hash_bytes(s, n_total) ^ ((uint64_t)n_left * 0x9E3779B97F4A7C15ull);
}

/* Rank of merging s[0, n_left) with s[n_left, n_total), or -1. */
static int32_t merge_rank(const co_tokenizer_t *tok, const char *s, size_t n_left, size_t n_total) {
  const uint64_t mask = tok->n_merge_slots - 1;
  for (uint64_t i = merge_hash(s, n_left, n_total) & mask;; i = (i + 1) & mask) {
    int32_t v = tok->merge_slots[i];
    if (v == 0) return -1;
    const co_merge_t *m = &tok->merges[v - 1];
    if (m->left_bytes == n_left && m->left_bytes + m->right_bytes == n_total &&
        memcmp(tok->merge_arena + m->off, s, n_total) == 0)
      return v - 1;
  }
}

/* --- loading --- */

static const char *const k_eog_texts[] = {
    "<|eot_id|>", "<|im_end|>", "<|end|>", "<|return|>", "<|call|>", "<|flush|>", "<|calls|>",
    "<end_of_turn>", "<|endoftext|>", "</s>", "<|eom_id|>", "<EOT>", "_<EOT>", "[EOT]", "[EOS]",
    "<|end_of_text|>", "<end_of_utterance>", "<eos>", "<turn|>", "<|tool_response>",
    "<\xef\xbd\x9c" "end\xe2\x96\x81of\xe2\x96\x81sentence\xef\xbd\x9c>", "[e~[", NULL};

/* Special ids llama.cpp finds by text when the GGUF does not name them; the token
 * found becomes CONTROL, and the EOT, EOM, FIM pad/repo/sep ones end generation.
 * (U+FF5C and U+2581 spelled out: DeepSeek's and CodeLlama's spellings.) */
#define FW "\xef\xbd\x9c"
#define LB "\xe2\x96\x81"
typedef struct {
  const char *key;
  int is_eog;
  const char *const texts[12];
} co_special_kind_t;

static const co_special_kind_t k_special_kinds[] = {
    {"tokenizer.ggml.eot_token_id", 1,
     {"<|eot_id|>", "<|im_end|>", "<|end|>", "<end_of_turn>", "<|endoftext|>", "<|end_of_text|>", "<EOT>", "_<EOT>",
      "[EOT]", "<" FW "end" LB "of" LB "sentence" FW ">", "<end_of_utterance>", NULL}},
    {"tokenizer.ggml.eom_token_id", 1, {"<|eom_id|>", NULL}},
    {"tokenizer.ggml.fim_pre_token_id", 0,
     {"<|fim_prefix|>", "<fim-prefix>", "<fim_prefix>", "<" FW "fim" LB "begin" FW ">", "<PRE>", LB "<PRE>",
      "<|code_prefix|>", "<|prefix|>", NULL}},
    {"tokenizer.ggml.fim_suf_token_id", 0,
     {"<|fim_suffix|>", "<fim-suffix>", "<fim_suffix>", "<" FW "fim" LB "hole" FW ">", "<SUF>", LB "<SUF>",
      "<|code_suffix|>", "<|suffix|>", NULL}},
    {"tokenizer.ggml.fim_mid_token_id", 0,
     {"<|fim_middle|>", "<fim-middle>", "<fim_middle>", "<" FW "fim" LB "end" FW ">", "<MID>", LB "<MID>",
      "<|code_middle|>", "<|middle|>", NULL}},
    {"tokenizer.ggml.fim_pad_token_id", 1, {"<|fim_pad|>", "<fim-pad>", "<fim_pad>", "<PAD>", "[PAD]", NULL}},
    {"tokenizer.ggml.fim_rep_token_id", 1,
     {"<|fim_repo|>", "<|repo_name|>", "<fim-repo>", "<REPO>", "<reponame>", NULL}},
    {"tokenizer.ggml.fim_sep_token_id", 1, {"<|file_sep|>", NULL}},
};
#undef FW
#undef LB

static int str_eq(const char *s, size_t n, const char *z) { return strlen(z) == n && memcmp(s, z, n) == 0; }

static int32_t read_id(const ak_gguf_t *g, const char *key, int32_t dflt, int64_t n_vocab) {
  uint32_t v;
  if (dflt >= n_vocab) dflt = CO_TOKEN_NONE;
  if (ak_gguf_get_u32(g, key, NULL, &v) != AK_OK) return dflt;
  return v < (uint64_t)n_vocab ? (int32_t)v : dflt;
}

static int read_flag(const ak_gguf_t *g, const char *key, int dflt) {
  int v;
  return ak_gguf_get_bool(g, key, NULL, &v) == AK_OK ? v : dflt;
}

/* Where llama.cpp's llama_decode_text cannot map a code point back to a byte it
 * writes "[UNK_BYTE_0x<hex>" + the whole token text + "]"; that is kept. */
static size_t decode_normal(const char *s, size_t n, char *out) {
  size_t n_out = 0;
  for (size_t i = 0; i < n;) {
    size_t used;
    uint32_t cpt = co_utf8_decode_lenient((const uint8_t *)s + i, n - i, &used);
    i += used;
    int b = co_cpt_to_byte(cpt);
    if (b >= 0) {
      if (out) out[n_out] = (char)b;
      n_out++;
      continue;
    }
    char u[4], tmp[16];
    size_t nu = co_utf8_encode(cpt, u);
    n_out += 12 + 2 * nu + n + 1;
    if (!out) continue;
    char *p = out + n_out - (12 + 2 * nu + n + 1);
    memcpy(p, "[UNK_BYTE_0x", 12);
    p += 12;
    for (size_t k = 0; k < nu; k++, p += 2) {
      snprintf(tmp, sizeof tmp, "%02x", (uint8_t)u[k]);
      memcpy(p, tmp, 2);
    }
    memcpy(p, s, n);
    p[n] = ']';
  }
  return n_out;
}

/* The bytes of one token (llama_token_to_piece with special = true) into out, or
 * only their count when out is NULL. */
static size_t token_piece(const co_tokenizer_t *tok, int32_t id, char *out) {
  const char *s = tok->text_arena + tok->text_off[id];
  size_t n = tok->text_len[id];
  uint16_t a = tok->attr[id];
  if (a & (ATTR_UNKNOWN | ATTR_CONTROL | ATTR_USER_DEFINED)) {
    if (out) memcpy(out, s, n);
    return n;
  }
  if (a & ATTR_NORMAL) return decode_normal(s, n, out);
  if ((a & ATTR_BYTE) && n >= 5) { /* "<0xAB>" */
    char hex[3] = {s[3], s[4], 0};
    if (out) out[0] = (char)strtol(hex, NULL, 16);
    return 1;
  }
  return 0; /* UNUSED, UNDEFINED: llama.cpp gives nothing */
}

static void *alloc_array(size_t n, size_t elem_bytes, int zero) { return ak_host_alloc(n * elem_bytes, zero); }

void co_tokenizer_destroy(co_tokenizer_t *tok) {
  if (!tok) return;
  const size_t nv = (size_t)tok->n_vocab;
  co_pretok_destroy(tok->pretok);
  ak_host_free(tok->special_ids, (size_t)tok->n_special * sizeof(int32_t));
  ak_host_free(tok->merge_slots, tok->n_merge_slots * sizeof(int32_t));
  ak_host_free(tok->merge_arena, tok->n_merge_arena_bytes);
  ak_host_free(tok->merges, (size_t)tok->n_merges * sizeof(co_merge_t));
  ak_host_free(tok->tok_slots, tok->n_tok_slots * sizeof(int32_t));
  ak_host_free(tok->attr, nv * sizeof(uint16_t));
  ak_host_free(tok->piece_len, nv * sizeof(uint32_t));
  ak_host_free(tok->piece_off, nv * sizeof(uint32_t));
  ak_host_free(tok->piece_arena, tok->n_piece_arena_bytes);
  ak_host_free(tok->text_len, nv * sizeof(uint32_t));
  ak_host_free(tok->text_off, nv * sizeof(uint32_t));
  ak_host_free(tok->text_arena, tok->n_text_arena_bytes);
  ak_host_free(tok, sizeof *tok);
}

static ak_status_t load_tokens(co_tokenizer_t *tok, const ak_gguf_t *g, ak_err_t *err) {
  static const char key[] = "tokenizer.ggml.tokens";
  ak_gguf_value_type_t et;
  int64_t n;
  AK_TRY(ak_gguf_get_arr(g, key, err, &et, &n));
  if (et != AK_GGUF_STRING || n <= 0 || n > INT32_MAX)
    return AK_ERR(err, AK_ERR_FORMAT, "%s: want a non-empty string array, got %s[%lld]", key,
                  ak_gguf_value_type_name(et), (long long)n);
  const size_t nv = (size_t)n;
  tok->text_off = alloc_array(nv, sizeof(uint32_t), 0);
  tok->text_len = alloc_array(nv, sizeof(uint32_t), 0);
  tok->attr = alloc_array(nv, sizeof(uint16_t), 0);
  tok->piece_off = alloc_array(nv, sizeof(uint32_t), 0);
  tok->piece_len = alloc_array(nv, sizeof(uint32_t), 0);
  tok->n_vocab = n; /* from here destroy frees the per-token arrays */
  if (!tok->text_off || !tok->text_len || !tok->attr || !tok->piece_off || !tok->piece_len)
    return AK_ERR(err, AK_ERR_NO_MEMORY, "no memory for %lld tokens", (long long)n);

  /* texts: an empty one becomes "[EMPTY_<id>]", as llama.cpp names it */
  size_t total = 0;
  for (int64_t i = 0; i < n; i++) {
    const char *s;
    size_t len;
    AK_TRY(ak_gguf_get_arr_str(g, key, i, err, &s, &len));
    total += len ? len : 32;
  }
  if (total > UINT32_MAX) return AK_ERR(err, AK_ERR_FORMAT, "%s: %zu bytes of text", key, total);
  tok->text_arena = ak_host_alloc(total, 0);
  if (!tok->text_arena) return AK_ERR(err, AK_ERR_NO_MEMORY, "no memory for %zu bytes of token text", total);
  tok->n_text_arena_bytes = total;
  size_t off = 0;
  for (int64_t i = 0; i < n; i++) {
    const char *s;
    size_t len;
    AK_TRY(ak_gguf_get_arr_str(g, key, i, err, &s, &len));
    tok->text_off[i] = (uint32_t)off;
    if (len == 0) {
      len = (size_t)snprintf(tok->text_arena + off, 32, "[EMPTY_%lld]", (long long)i);
    } else {
      memcpy(tok->text_arena + off, s, len);
    }
    tok->text_len[i] = (uint32_t)len;
    off += len;
  }

  tok->n_tok_slots = slots_for(n);
  tok->tok_slots = alloc_array(tok->n_tok_slots, sizeof(int32_t), 1);
  if (!tok->tok_slots) return AK_ERR(err, AK_ERR_NO_MEMORY, "no memory for the token table");
  for (int64_t i = 0; i < n; i++) {
    const char *s = tok->text_arena + tok->text_off[i];
    size_t len = tok->text_len[i];
    int32_t dup = token_lookup(tok, s, len);
    if (dup != CO_TOKEN_NONE)
      return AK_ERR(err, AK_ERR_FORMAT, "%s: duplicate token '%.*s' at ids %d and %lld", key, (int)len, s, dup,
                    (long long)i);
    uint64_t j = hash_bytes(s, len) & (tok->n_tok_slots - 1);
    while (tok->tok_slots[j]) j = (j + 1) & (tok->n_tok_slots - 1);
    tok->tok_slots[j] = (int32_t)i + 1;
  }
  return AK_OK;
}

static ak_status_t load_types(co_tokenizer_t *tok, const ak_gguf_t *g, ak_err_t *err) {
  static const char key[] = "tokenizer.ggml.token_type";
  ak_gguf_value_type_t et;
  int64_t n;
  const void *data = NULL;
  ak_status_t st = ak_gguf_get_arr(g, key, err, &et, &n);
  if (st == AK_ERR_NOT_FOUND) {
    for (int64_t i = 0; i < tok->n_vocab; i++) tok->attr[i] = ATTR_NORMAL;
    return AK_OK;
  }
  AK_TRY(st);
  if (et != AK_GGUF_INT32 || n < tok->n_vocab)
    return AK_ERR(err, AK_ERR_FORMAT, "%s: want i32[>= %lld], got %s[%lld]", key, (long long)tok->n_vocab,
                  ak_gguf_value_type_name(et), (long long)n);
  AK_TRY(ak_gguf_get_arr_data(g, key, err, &data));
  for (int64_t i = 0; i < tok->n_vocab; i++) {
    int32_t t;
    memcpy(&t, (const char *)data + 4 * i, 4); /* may be unaligned */
    static const uint16_t k_attr[] = {0, ATTR_NORMAL, ATTR_UNKNOWN, ATTR_CONTROL, ATTR_USER_DEFINED, ATTR_UNUSED,
                                      ATTR_BYTE};
    tok->attr[i] = (t >= 0 && t <= TYPE_BYTE) ? k_attr[t] : 0;
  }
  return AK_OK;
}

static ak_status_t load_merges(co_tokenizer_t *tok, const ak_gguf_t *g, ak_err_t *err) {
  static const char key[] = "tokenizer.ggml.merges";
  ak_gguf_value_type_t et;
  int64_t n;
  AK_TRY(ak_gguf_get_arr(g, key, err, &et, &n));
  if (et != AK_GGUF_STRING || n > INT32_MAX - 1)
    return AK_ERR(err, AK_ERR_FORMAT, "%s: want a string array, got %s[%lld]", key, ak_gguf_value_type_name(et),
                  (long long)n);
  size_t total = 0;
  for (int64_t i = 0; i < n; i++) {
    const char *s;
    size_t len;
    AK_TRY(ak_gguf_get_arr_str(g, key, i, err, &s, &len));
    total += len;
  }
  if (total > UINT32_MAX) return AK_ERR(err, AK_ERR_FORMAT, "%s: %zu bytes of text", key, total);
  tok->merges = alloc_array((size_t)n, sizeof(co_merge_t), 1);
  tok->merge_arena = ak_host_alloc(total, 0);
  tok->n_merge_slots = slots_for(n);
  tok->merge_slots = alloc_array(tok->n_merge_slots, sizeof(int32_t), 1);
  tok->n_merges = n;
  tok->n_merge_arena_bytes = total;
  if (!tok->merges || !tok->merge_arena || !tok->merge_slots)
    return AK_ERR(err, AK_ERR_NO_MEMORY, "no memory for %lld merges", (long long)n);
  size_t off = 0;
  for (int64_t i = 0; i < n; i++) {
    const char *s;
    size_t len;
    AK_TRY(ak_gguf_get_arr_str(g, key, i, err, &s, &len));
    /* llama.cpp splits at the first space after the first byte; a merge without one
     * pairs two empty strings, which no symbol ever is: skipped. */
    const char *sp = len > 1 ? memchr(s + 1, ' ', len - 1) : NULL;
    if (!sp) continue;
    co_merge_t *m = &tok->merges[i];
    m->off = (uint32_t)off;
    m->left_bytes = (uint32_t)(sp - s);
    m->right_bytes = (uint32_t)(len - m->left_bytes - 1);
    memcpy(tok->merge_arena + off, s, m->left_bytes);
    memcpy(tok->merge_arena + off + m->left_bytes, sp + 1, m->right_bytes);
    off += m->left_bytes + m->right_bytes;
    const size_t n_total = m->left_bytes + m->right_bytes;
    const char *kb = tok->merge_arena + m->off;
    if (merge_rank(tok, kb, m->left_bytes, n_total) >= 0) continue; /* the first rank wins */
    uint64_t j = merge_hash(kb, m->left_bytes, n_total) & (tok->n_merge_slots - 1);
    while (tok->merge_slots[j]) j = (j + 1) & (tok->n_merge_slots - 1);
    tok->merge_slots[j] = (int32_t)i + 1;
  }
  return AK_OK;
}

/* Special ids, the control attributes llama.cpp adds by token text, and the
 * end-of-generation set (llama_vocab::impl::load). */
static void load_specials(co_tokenizer_t *tok, const ak_gguf_t *g) {
  const int64_t n = tok->n_vocab;
  /* for a "gpt2" vocabulary llama.cpp defaults BOS and EOS to 11 */
  tok->bos_id = read_id(g, "tokenizer.ggml.bos_token_id", 11, n);
  tok->eos_id = read_id(g, "tokenizer.ggml.eos_token_id", 11, n);
  tok->add_bos = read_flag(g, "tokenizer.ggml.add_bos_token", 0);
  tok->add_eos = read_flag(g, "tokenizer.ggml.add_eos_token", 0);
  if (tok->bos_id == CO_TOKEN_NONE) tok->add_bos = 0;
  if (tok->eos_id == CO_TOKEN_NONE) tok->add_eos = 0;

  int32_t eog_ids[sizeof k_special_kinds / sizeof k_special_kinds[0] + 1];
  int n_eog_ids = 0;
  for (size_t k = 0; k < sizeof k_special_kinds / sizeof k_special_kinds[0]; k++) {
    int32_t id = read_id(g, k_special_kinds[k].key, CO_TOKEN_NONE, n);
    /* llama.cpp takes the first match in hash-map order; the lowest id is ours */
    for (int64_t i = 0; id == CO_TOKEN_NONE && i < n; i++) {
      for (const char *const *t = k_special_kinds[k].texts; *t; t++) {
        if (str_eq(tok->text_arena + tok->text_off[i], tok->text_len[i], *t)) {
          id = (int32_t)i;
          tok->attr[i] |= ATTR_CONTROL;
          break;
        }
      }
    }
    if (id != CO_TOKEN_NONE && k_special_kinds[k].is_eog) eog_ids[n_eog_ids++] = id;
  }
  if (tok->eos_id != CO_TOKEN_NONE) eog_ids[n_eog_ids++] = tok->eos_id;
  for (int i = 0; i < n_eog_ids; i++) tok->attr[eog_ids[i]] |= ATTR_EOG;
  for (int64_t i = 0; i < n; i++) {
    for (const char *const *t = k_eog_texts; *t; t++) {
      if (str_eq(tok->text_arena + tok->text_off[i], tok->text_len[i], *t)) {
        tok->attr[i] |= ATTR_EOG | ATTR_CONTROL;
        break;
      }
    }
  }
}

static int cmp_u64(const void *a, const void *b) {
  uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
  return x < y ? -1 : (x > y);
}

static ak_status_t build_specials_and_pieces(co_tokenizer_t *tok, ak_err_t *err) {
  const int64_t n = tok->n_vocab;
  int64_t n_special = 0;
  for (int64_t i = 0; i < n; i++) n_special += (tok->attr[i] & (ATTR_CONTROL | ATTR_USER_DEFINED | ATTR_UNKNOWN)) != 0;
  tok->special_ids = alloc_array((size_t)n_special, sizeof(int32_t), 0);
  tok->n_special = n_special;
  /* Longest text first, as llama.cpp; it leaves ties to std::sort, we break them by
   * id. Sorted as keys (UINT32_MAX - length) << 32 | id. */
  uint64_t *keys = alloc_array((size_t)n_special, sizeof(uint64_t), 0);
  if (!tok->special_ids || !keys) {
    ak_host_free(keys, (size_t)n_special * sizeof(uint64_t));
    return AK_ERR(err, AK_ERR_NO_MEMORY, "no memory for %lld special tokens", (long long)n_special);
  }
  n_special = 0;
  for (int64_t i = 0; i < n; i++)
    if (tok->attr[i] & (ATTR_CONTROL | ATTR_USER_DEFINED | ATTR_UNKNOWN))
      keys[n_special++] = ((uint64_t)(UINT32_MAX - tok->text_len[i]) << 32) | (uint64_t)i;
  qsort(keys, (size_t)n_special, sizeof(uint64_t), cmp_u64);
  for (int64_t i = 0; i < n_special; i++) tok->special_ids[i] = (int32_t)(keys[i] & 0xFFFFFFFFu);
  ak_host_free(keys, (size_t)n_special * sizeof(uint64_t));

  size_t total = 0;
  for (int64_t i = 0; i < n; i++) total += token_piece(tok, (int32_t)i, NULL);
  if (total > UINT32_MAX) return AK_ERR(err, AK_ERR_FORMAT, "%zu bytes of decoded token text", total);
  tok->piece_arena = ak_host_alloc(total, 0);
  if (!tok->piece_arena) return AK_ERR(err, AK_ERR_NO_MEMORY, "no memory for %zu bytes of token pieces", total);
  tok->n_piece_arena_bytes = total;
  size_t off = 0;
  for (int64_t i = 0; i < n; i++) {
    size_t len = token_piece(tok, (int32_t)i, tok->piece_arena + off);
    tok->piece_off[i] = (uint32_t)off;
    tok->piece_len[i] = (uint32_t)len;
    if (len > tok->max_piece_bytes) tok->max_piece_bytes = len;
    off += len;
  }
  return AK_OK;
}

ak_status_t co_tokenizer_create_from_gguf(const ak_gguf_t *g, ak_err_t *err, co_tokenizer_t **tok_p) {
  if (!g || !tok_p) return AK_ERR(err, AK_ERR_INVALID_ARG, "gguf and tok_p must not be NULL");
  const char *model, *pre;
  size_t n_model, n_pre;
  AK_TRY(ak_gguf_get_str(g, "tokenizer.ggml.model", err, &model, &n_model));
  if (!str_eq(model, n_model, "gpt2"))
    return AK_ERR(err, AK_ERR_UNSUPPORTED, "tokenizer.ggml.model '%.*s': only 'gpt2' (byte-level BPE) is supported",
                  (int)n_model, model);
  ak_status_t st = ak_gguf_get_str(g, "tokenizer.ggml.pre", err, &pre, &n_pre);
  if (st == AK_ERR_NOT_FOUND)
    return AK_ERR(err, AK_ERR_UNSUPPORTED, "tokenizer.ggml.pre is missing: only 'smollm' is supported");
  AK_TRY(st);
  if (!str_eq(pre, n_pre, "smollm"))
    return AK_ERR(err, AK_ERR_UNSUPPORTED, "tokenizer.ggml.pre '%.*s': only 'smollm' is supported", (int)n_pre, pre);

  co_tokenizer_t *tok = ak_host_alloc(sizeof *tok, 1);
  if (!tok) return AK_ERR(err, AK_ERR_NO_MEMORY, "no memory for the tokenizer");
  /* every load step leaves `tok` consistent for destroy, so one label undoes them all */
  if ((st = load_tokens(tok, g, err)) < 0) goto err_destroy;
  if ((st = load_types(tok, g, err)) < 0) goto err_destroy;
  if ((st = load_merges(tok, g, err)) < 0) goto err_destroy;
  load_specials(tok, g);
  if ((st = build_specials_and_pieces(tok, err)) < 0) goto err_destroy;
  if ((st = co_pretok_create(err, &tok->pretok)) < 0) goto err_destroy;
  *tok_p = tok;
  return AK_OK;

err_destroy:
  co_tokenizer_destroy(tok);
  return st;
}

/* --- encoding --- */

/* A fragment of the text: raw bytes [off, off + n_bytes) still to tokenize, or a
 * special token already recognised (id >= 0). */
typedef struct {
  int64_t off;
  int64_t n_bytes;
  int32_t id;
} co_frag_t;

typedef struct {
  int32_t start; /* byte offset in the word */
  int32_t n_bytes; /* 0 once merged into its left neighbour */
  int32_t prev, next;
} co_sym_t;

typedef struct {
  int32_t rank;
  int32_t left, right;
  int32_t n_bytes; /* left + right when queued: a different sum means it is stale */
} co_bigram_t;

/* Everything one encode call allocates; freed when it returns. */
typedef struct {
  co_frag_t *frags[2];
  int64_t n_frags[2], cap_frags[2];
  co_sym_t *syms;
  co_bigram_t *heap;
  int64_t cap_syms; /* heap holds 3 * cap_syms */
  co_words_t words;
  int32_t *ids; /* the caller's output */
  int64_t cap_ids, n_ids;
} co_encode_t;

static void encode_free(co_encode_t *e) {
  for (int k = 0; k < 2; k++) ak_host_free(e->frags[k], (size_t)e->cap_frags[k] * sizeof(co_frag_t));
  ak_host_free(e->syms, (size_t)e->cap_syms * sizeof(co_sym_t));
  ak_host_free(e->heap, 3 * (size_t)e->cap_syms * sizeof(co_bigram_t));
  co_words_free(&e->words);
}

static void emit(co_encode_t *e, int32_t id) {
  if (e->n_ids < e->cap_ids) e->ids[e->n_ids] = id;
  e->n_ids++;
}

static int push_frag(co_encode_t *e, int k, int64_t off, int64_t n_bytes, int32_t id) {
  if (e->n_frags[k] == e->cap_frags[k]) {
    int64_t cap_new = e->cap_frags[k] ? 2 * e->cap_frags[k] : 16;
    co_frag_t *p = alloc_array((size_t)cap_new, sizeof(co_frag_t), 0);
    if (!p) return 0;
    if (e->n_frags[k]) memcpy(p, e->frags[k], (size_t)e->n_frags[k] * sizeof(co_frag_t));
    ak_host_free(e->frags[k], (size_t)e->cap_frags[k] * sizeof(co_frag_t));
    e->frags[k] = p;
    e->cap_frags[k] = cap_new;
  }
  e->frags[k][e->n_frags[k]++] = (co_frag_t){off, n_bytes, id};
  return 1;
}

/* llama.cpp's tokenizer_st_partition: for each special token, longest first, every
 * occurrence inside a still-raw fragment splits it. CONTROL (and UNKNOWN) tokens take
 * part only when parse_special; USER_DEFINED ones always. Leaves the result in
 * frags[*k_p]. */
static ak_status_t partition(const co_tokenizer_t *tok, const char *text, size_t n_text, int parse_special,
                             co_encode_t *e, int *k_p, ak_err_t *err) {
  int k = 0;
  e->n_frags[0] = e->n_frags[1] = 0;
  if (n_text > 0 && !push_frag(e, k, 0, (int64_t)n_text, CO_TOKEN_NONE)) goto err_no_memory;
  for (int64_t s = 0; s < tok->n_special; s++) {
    const int32_t sid = tok->special_ids[s];
    if (!parse_special && (tok->attr[sid] & (ATTR_CONTROL | ATTR_UNKNOWN))) continue;
    const char *st = tok->text_arena + tok->text_off[sid];
    const size_t n_st = tok->text_len[sid];
    /* most special tokens occur nowhere: look before rebuilding the list */
    int found = 0;
    for (int64_t f = 0; f < e->n_frags[k] && !found; f++) {
      const co_frag_t *fr = &e->frags[k][f];
      found = fr->id < 0 && memmem(text + fr->off, (size_t)fr->n_bytes, st, n_st) != NULL;
    }
    if (!found) continue;
    const int k_new = 1 - k;
    e->n_frags[k_new] = 0;
    for (int64_t f = 0; f < e->n_frags[k]; f++) {
      co_frag_t fr = e->frags[k][f];
      if (fr.id >= 0) {
        if (!push_frag(e, k_new, fr.off, fr.n_bytes, fr.id)) goto err_no_memory;
        continue;
      }
      while (fr.n_bytes > 0) {
        const char *m = memmem(text + fr.off, (size_t)fr.n_bytes, st, n_st);
        if (!m) break;
        int64_t m_off = m - text;
        if (m_off > fr.off && !push_frag(e, k_new, fr.off, m_off - fr.off, CO_TOKEN_NONE)) goto err_no_memory;
        if (!push_frag(e, k_new, m_off, (int64_t)n_st, sid)) goto err_no_memory;
        fr.n_bytes -= m_off + (int64_t)n_st - fr.off;
        fr.off = m_off + (int64_t)n_st;
      }
      if (fr.n_bytes > 0 && !push_frag(e, k_new, fr.off, fr.n_bytes, CO_TOKEN_NONE)) goto err_no_memory;
    }
    k = k_new;
  }
  *k_p = k;
  return AK_OK;

err_no_memory:
  return AK_ERR(err, AK_ERR_NO_MEMORY, "no memory to partition %zu bytes", n_text);
}

/* min-heap on (rank, left): the lowest rank first, the leftmost among equal ranks */
static int bigram_less(const co_bigram_t *a, const co_bigram_t *b) {
  return a->rank < b->rank || (a->rank == b->rank && a->left < b->left);
}

static void heap_push(co_bigram_t *h, int64_t *n, co_bigram_t x) {
  int64_t i = (*n)++;
  while (i > 0) {
    int64_t p = (i - 1) / 2;
    if (!bigram_less(&x, &h[p])) break;
    h[i] = h[p];
    i = p;
  }
  h[i] = x;
}

static co_bigram_t heap_pop(co_bigram_t *h, int64_t *n) {
  co_bigram_t top = h[0], x = h[--(*n)];
  int64_t i = 0;
  for (;;) {
    int64_t c = 2 * i + 1;
    if (c >= *n) break;
    if (c + 1 < *n && bigram_less(&h[c + 1], &h[c])) c++;
    if (!bigram_less(&h[c], &x)) break;
    h[i] = h[c];
    i = c;
  }
  if (*n > 0) h[i] = x;
  return top;
}

static void add_bigram(const co_tokenizer_t *tok, const char *word, co_sym_t *syms, int32_t left, int32_t right,
                       co_bigram_t *heap, int64_t *n_heap) {
  if (left < 0 || right < 0) return;
  const int32_t n_left = syms[left].n_bytes, n_total = n_left + syms[right].n_bytes;
  int32_t rank = merge_rank(tok, word + syms[left].start, (size_t)n_left, (size_t)n_total);
  if (rank < 0) return;
  heap_push(heap, n_heap, (co_bigram_t){rank, left, right, n_total});
}

/* BPE on one byte-level word, as llm_tokenizer_bpe_session::tokenize. */
static ak_status_t bpe_word(const co_tokenizer_t *tok, const char *word, int32_t n_word, co_encode_t *e,
                            ak_err_t *err) {
  if (n_word > e->cap_syms) {
    int64_t cap_new = e->cap_syms ? e->cap_syms : 64;
    while (cap_new < n_word) cap_new *= 2;
    co_sym_t *syms = alloc_array((size_t)cap_new, sizeof(co_sym_t), 0);
    co_bigram_t *heap = alloc_array(3 * (size_t)cap_new, sizeof(co_bigram_t), 0);
    if (!syms || !heap) {
      ak_host_free(syms, (size_t)cap_new * sizeof(co_sym_t));
      ak_host_free(heap, 3 * (size_t)cap_new * sizeof(co_bigram_t));
      return AK_ERR(err, AK_ERR_NO_MEMORY, "no memory for a word of %d bytes", n_word);
    }
    ak_host_free(e->syms, (size_t)e->cap_syms * sizeof(co_sym_t));
    ak_host_free(e->heap, 3 * (size_t)e->cap_syms * sizeof(co_bigram_t));
    e->syms = syms;
    e->heap = heap;
    e->cap_syms = cap_new;
  }
  co_sym_t *syms = e->syms;
  int32_t n_syms = 0;
  for (int32_t off = 0; off < n_word; n_syms++) {
    static const uint8_t k_utf8_len[16] = {1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 2, 2, 3, 4};
    int32_t len = k_utf8_len[(uint8_t)word[off] >> 4];
    if (len > n_word - off) len = n_word - off;
    syms[n_syms] = (co_sym_t){off, len, n_syms - 1, off + len == n_word ? -1 : n_syms + 1};
    off += len;
  }
  int64_t n_heap = 0;
  for (int32_t i = 1; i < n_syms; i++) add_bigram(tok, word, syms, i - 1, i, e->heap, &n_heap);
  while (n_heap > 0) {
    const co_bigram_t b = heap_pop(e->heap, &n_heap);
    co_sym_t *l = &syms[b.left], *r = &syms[b.right];
    if (l->n_bytes == 0 || r->n_bytes == 0 || l->n_bytes + r->n_bytes != b.n_bytes) continue;
    l->n_bytes += r->n_bytes;
    r->n_bytes = 0;
    l->next = r->next;
    if (r->next >= 0) syms[r->next].prev = b.left;
    add_bigram(tok, word, syms, l->prev, b.left, e->heap, &n_heap);
    add_bigram(tok, word, syms, b.left, l->next, e->heap, &n_heap);
  }
  for (int32_t i = 0; i != -1; i = syms[i].next) {
    const char *s = word + syms[i].start;
    int32_t id = token_lookup(tok, s, (size_t)syms[i].n_bytes);
    if (id != CO_TOKEN_NONE) {
      emit(e, id);
      continue;
    }
    /* not in the vocabulary: llama.cpp emits whichever single bytes are tokens */
    for (int32_t j = 0; j < syms[i].n_bytes; j++) {
      int32_t id1 = token_lookup(tok, s + j, 1);
      if (id1 != CO_TOKEN_NONE) emit(e, id1);
    }
  }
  return AK_OK;
}

ak_status_t co_tokenizer_encode(const co_tokenizer_t *tok, const char *text, size_t text_bytes, int add_bos,
                                int parse_special, int32_t *ids, int64_t cap, int64_t *n_ids_p, ak_err_t *err) {
  if (!tok || !n_ids_p || (!text && text_bytes > 0) || cap < 0 || (!ids && cap > 0))
    return AK_ERR(err, AK_ERR_INVALID_ARG, "bad arguments (text %s with %zu bytes, ids %s with cap %lld)",
                  text ? "set" : "NULL", text_bytes, ids ? "set" : "NULL", (long long)cap);
  /* a byte may grow 6x (U+FFFD, then 2 bytes per byte-level symbol): words stay int32 */
  if (text_bytes > CO_TOKENIZER_MAX_TEXT_BYTES)
    return AK_ERR(err, AK_ERR_OVER_BUDGET, "text of %zu bytes is over the limit of %d", text_bytes,
                  CO_TOKENIZER_MAX_TEXT_BYTES);
  co_encode_t e = {.ids = ids, .cap_ids = cap};
  int k = 0;
  ak_status_t st = partition(tok, text, text_bytes, parse_special, &e, &k, err);
  if (st < 0) goto out;
  if (add_bos && tok->add_bos) emit(&e, tok->bos_id);
  for (int64_t f = 0; f < e.n_frags[k]; f++) {
    const co_frag_t *fr = &e.frags[k][f];
    if (fr->id >= 0) {
      emit(&e, fr->id);
      continue;
    }
    if ((st = co_pretok_split(tok->pretok, text + fr->off, (size_t)fr->n_bytes, &e.words, err)) < 0) goto out;
    int64_t start = 0;
    for (int64_t w = 0; w < e.words.n_words; w++) {
      const int64_t end = e.words.word_end[w];
      if ((st = bpe_word(tok, e.words.text + start, (int32_t)(end - start), &e, err)) < 0) goto out;
      start = end;
    }
  }
  if (add_bos && tok->add_eos) emit(&e, tok->eos_id);
  *n_ids_p = e.n_ids;
  if (e.n_ids > cap) st = AK_ERR(err, AK_ERR_RANGE, "%lld ids do not fit in %lld", (long long)e.n_ids, (long long)cap);
out:
  encode_free(&e);
  return st;
}

/* --- look-ups --- */

int64_t co_tokenizer_n_vocab(const co_tokenizer_t *tok) { return tok->n_vocab; }
int32_t co_tokenizer_bos(const co_tokenizer_t *tok) { return tok->bos_id; }
int32_t co_tokenizer_eos(const co_tokenizer_t *tok) { return tok->eos_id; }
int co_tokenizer_adds_bos(const co_tokenizer_t *tok) { return tok->add_bos; }

int co_tokenizer_is_eog(const co_tokenizer_t *tok, int32_t id) {
  return id >= 0 && id < tok->n_vocab && (tok->attr[id] & ATTR_EOG) != 0;
}

int co_tokenizer_is_control(const co_tokenizer_t *tok, int32_t id) {
  return id >= 0 && id < tok->n_vocab && (tok->attr[id] & ATTR_CONTROL) != 0;
}

int32_t co_tokenizer_find_token(const co_tokenizer_t *tok, const char *text) {
  return text ? token_lookup(tok, text, strlen(text)) : CO_TOKEN_NONE;
}

ak_status_t co_tokenizer_token_bytes(const co_tokenizer_t *tok, int32_t id, const char **bytes_p, size_t *n_bytes_p) {
  if (id < 0 || id >= tok->n_vocab) return AK_ERR_RANGE;
  *bytes_p = tok->piece_arena + tok->piece_off[id];
  *n_bytes_p = tok->piece_len[id];
  return AK_OK;
}

/* --- decoding --- */

/* llama_token_to_piece(special = render_special): UNKNOWN and CONTROL tokens are
 * silent unless rendered. */
static size_t piece_for(const co_tokenizer_t *tok, int32_t id, int render_special, const char **s_p) {
  *s_p = tok->piece_arena + tok->piece_off[id];
  if (!render_special && (tok->attr[id] & (ATTR_UNKNOWN | ATTR_CONTROL))) return 0;
  return tok->piece_len[id];
}

ak_status_t co_tokenizer_decode(const co_tokenizer_t *tok, const int32_t *ids, int64_t n_ids, int render_special,
                                char *text, size_t cap_bytes, size_t *n_bytes_p, ak_err_t *err) {
  if (!tok || !n_bytes_p || n_ids < 0 || (!ids && n_ids > 0) || (!text && cap_bytes > 0))
    return AK_ERR(err, AK_ERR_INVALID_ARG, "bad arguments (%lld ids, cap %zu)", (long long)n_ids, cap_bytes);
  size_t n = 0;
  for (int64_t i = 0; i < n_ids; i++) {
    if (ids[i] < 0 || ids[i] >= tok->n_vocab)
      return AK_ERR(err, AK_ERR_RANGE, "id %d at %lld is outside the vocabulary of %lld", ids[i], (long long)i,
                    (long long)tok->n_vocab);
    const char *s;
    size_t len = piece_for(tok, ids[i], render_special, &s);
    if (len > 0 && n + len <= cap_bytes) memcpy(text + n, s, len);
    n += len;
  }
  *n_bytes_p = n;
  if (n > cap_bytes) return AK_ERR(err, AK_ERR_RANGE, "%zu bytes do not fit in %zu", n, cap_bytes);
  return AK_OK;
}
