/* co_pretok: the SmolLM pre-tokenizer split (see co_pretok_internal.h for what it
 * reproduces) and the GPT-2 byte mapping. Unicode classes come from PCRE2 (UTF + UCP);
 * this file keeps no Unicode tables of its own. Not here: special tokens (split off
 * before, in co_tokenizer.c) and BPE merges (after). */
#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>

#include <stdlib.h>
#include <string.h>

#include "ak_alloc.h"
#include "co_pretok_internal.h"

/* llama.cpp's whitespace is Unicode's White_Space property (its unicode_set_whitespace),
 * which is not what PCRE2's \s matches under UCP (\s leaves out U+0085 in some versions):
 * the class is spelled out so both agree. */
#define CO_WS "\\t\\n\\x0B\\f\\r \\x{85}\\x{A0}\\x{1680}\\x{2000}-\\x{200A}\\x{2028}\\x{2029}" \
              "\\x{202F}\\x{205F}\\x{3000}"

/* llama.cpp's regex list for LLAMA_VOCAB_PRE_TYPE_SMOLLM, applied in this order. */
static const char k_re_number[] = "\\p{N}";
static const char k_re_gpt2[] =
    "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^" CO_WS "\\p{L}\\p{N}]+|[" CO_WS "]+(?![^" CO_WS "])";

struct co_pretok {
  pcre2_code *re_number;
  pcre2_code *re_gpt2;
};

static ak_status_t compile_re(const char *pattern, ak_err_t *err, pcre2_code **re_p) {
  int err_code = 0;
  PCRE2_SIZE err_off = 0;
  pcre2_code *re = pcre2_compile((PCRE2_SPTR)pattern, PCRE2_ZERO_TERMINATED, PCRE2_UTF | PCRE2_UCP,
                                 &err_code, &err_off, NULL);
  if (!re) {
    PCRE2_UCHAR msg[160];
    pcre2_get_error_message(err_code, msg, sizeof msg);
    return AK_ERR(err, AK_ERR_INTERNAL, "pcre2_compile of '%s' failed at offset %zu: %s", pattern,
                  (size_t)err_off, (const char *)msg);
  }
  /* JIT is an optimisation: when it is unavailable the interpreter runs the same pattern. */
  (void)pcre2_jit_compile(re, PCRE2_JIT_COMPLETE);
  *re_p = re;
  return AK_OK;
}

ak_status_t co_pretok_create(ak_err_t *err, co_pretok_t **pt_p) {
  co_pretok_t *pt = ak_host_alloc(sizeof *pt, 1);
  if (!pt) return AK_ERR(err, AK_ERR_NO_MEMORY, "no memory for the pre-tokenizer");
  ak_status_t st = compile_re(k_re_number, err, &pt->re_number);
  if (st < 0) goto err_free_pt;
  st = compile_re(k_re_gpt2, err, &pt->re_gpt2);
  if (st < 0) goto err_free_number;
  *pt_p = pt;
  return AK_OK;

err_free_number:
  pcre2_code_free(pt->re_number);
err_free_pt:
  ak_host_free(pt, sizeof *pt);
  return st;
}

void co_pretok_destroy(co_pretok_t *pt) {
  if (!pt) return;
  pcre2_code_free(pt->re_gpt2);
  pcre2_code_free(pt->re_number);
  ak_host_free(pt, sizeof *pt);
}

/* --- byte mapping and UTF-8 --- */

/* The 188 printable bytes map to themselves; the other 68 (0x00-0x20, 0x7F-0xA0,
 * 0xAD), in byte order, to U+0100 + n. */
uint32_t co_byte_to_cpt(uint8_t b) {
  if (b <= 0x20) return 0x100u + b;
  if (b >= 0x7F && b <= 0xA0) return 0x100u + 33u + (uint32_t)(b - 0x7F);
  if (b == 0xAD) return 0x100u + 33u + 34u;
  return b;
}

int co_cpt_to_byte(uint32_t cpt) {
  if ((cpt >= 0x21 && cpt <= 0x7E) || (cpt >= 0xA1 && cpt <= 0xAC) || (cpt >= 0xAE && cpt <= 0xFF))
    return (int)cpt;
  if (cpt >= 0x100 && cpt <= 0x120) return (int)(cpt - 0x100);
  if (cpt >= 0x121 && cpt <= 0x142) return (int)(cpt - 0x121 + 0x7F);
  if (cpt == 0x143) return 0xAD;
  return -1;
}

uint32_t co_utf8_decode_lenient(const uint8_t *s, size_t n, size_t *n_used_p) {
  const uint8_t b = s[0];
  uint32_t cpt;
  size_t len;
  if (!(b & 0x80)) {
    *n_used_p = 1;
    return b;
  }
  if (!(b & 0x40)) goto bad;
  if (!(b & 0x20)) {
    len = 2;
    cpt = b & 0x1Fu;
  } else if (!(b & 0x10)) {
    len = 3;
    cpt = b & 0x0Fu;
  } else if (!(b & 0x08)) {
    len = 4;
    cpt = b & 0x07u;
  } else {
    goto bad;
  }
  if (len > n) goto bad;
  for (size_t i = 1; i < len; i++) {
    if ((s[i] & 0xC0) != 0x80) goto bad;
    cpt = (cpt << 6) | (s[i] & 0x3Fu);
  }
  if (cpt > 0x10FFFF) goto bad;
  *n_used_p = len;
  return cpt;
bad:
  *n_used_p = 1;
  return 0xFFFD;
}

size_t co_utf8_encode(uint32_t cpt, char *out) {
  if (cpt <= 0x7F) {
    out[0] = (char)cpt;
    return 1;
  }
  if (cpt <= 0x7FF) {
    out[0] = (char)(0xC0 | (cpt >> 6));
    out[1] = (char)(0x80 | (cpt & 0x3F));
    return 2;
  }
  if (cpt <= 0xFFFF) {
    out[0] = (char)(0xE0 | (cpt >> 12));
    out[1] = (char)(0x80 | ((cpt >> 6) & 0x3F));
    out[2] = (char)(0x80 | (cpt & 0x3F));
    return 3;
  }
  out[0] = (char)(0xF0 | (cpt >> 18));
  out[1] = (char)(0x80 | ((cpt >> 12) & 0x3F));
  out[2] = (char)(0x80 | ((cpt >> 6) & 0x3F));
  out[3] = (char)(0x80 | (cpt & 0x3F));
  return 4;
}

/* --- growable scratch --- */

static int grow_bytes(char **buf, size_t *cap, size_t need) {
  if (need <= *cap) return 1;
  size_t cap_new = *cap ? *cap : 256;
  while (cap_new < need) cap_new *= 2;
  char *p = ak_host_alloc(cap_new, 0);
  if (!p) return 0;
  ak_host_free(*buf, *cap);
  *buf = p;
  *cap = cap_new;
  return 1;
}

void co_words_free(co_words_t *w) {
  if (!w) return;
  ak_host_free(w->text, w->cap_text_bytes);
  ak_host_free(w->word_end, (size_t)w->cap_words * sizeof *w->word_end);
  ak_host_free(w->subj, w->cap_subj_bytes);
  memset(w, 0, sizeof *w);
}

/* Appends norm[start, end) as one byte-level encoded word. */
static ak_status_t push_word(co_words_t *w, const char *norm, size_t start, size_t end) {
  if (end <= start) return AK_OK;
  if (w->n_words == w->cap_words) {
    int64_t cap_new = w->cap_words ? 2 * w->cap_words : 64;
    int64_t *p = ak_host_alloc((size_t)cap_new * sizeof *p, 0);
    if (!p) return AK_ERR_NO_MEMORY;
    if (w->n_words) memcpy(p, w->word_end, (size_t)w->n_words * sizeof *p);
    ak_host_free(w->word_end, (size_t)w->cap_words * sizeof *w->word_end);
    w->word_end = p;
    w->cap_words = cap_new;
  }
  /* text was sized for the worst case (2 bytes per byte) before splitting */
  char *out = w->text + w->n_text_bytes;
  for (size_t i = start; i < end; i++) {
    out += co_utf8_encode(co_byte_to_cpt((uint8_t)norm[i]), out);
  }
  w->n_text_bytes = (size_t)(out - w->text);
  w->word_end[w->n_words++] = (int64_t)w->n_text_bytes;
  return AK_OK;
}

/* pcre2_match with the JIT, falling back to the interpreter when the JIT's stack runs
 * out (a very long run of one class). */
static int match_at(const pcre2_code *re, const char *subj, size_t n, size_t pos, pcre2_match_data *md) {
  int rc = pcre2_match(re, (PCRE2_SPTR)subj, n, pos, PCRE2_NO_UTF_CHECK, md, NULL);
  if (rc == PCRE2_ERROR_JIT_STACKLIMIT)
    rc = pcre2_match(re, (PCRE2_SPTR)subj, n, pos, PCRE2_NO_UTF_CHECK | PCRE2_NO_JIT, md, NULL);
  return rc;
}

static ak_status_t match_failed(int rc, const char *what, ak_err_t *err) {
  PCRE2_UCHAR msg[160];
  pcre2_get_error_message(rc, msg, sizeof msg);
  return AK_ERR(err, AK_ERR_INTERNAL, "pcre2_match (%s) failed: %s", what, (const char *)msg);
}

/* Splits one piece [0, n) of the subject (no number inside) by the GPT-2 regex. The
 * subject pointer starts at the piece, so the lookahead ends where the piece does. */
static ak_status_t split_piece(const co_pretok_t *pt, const char *subj, const char *norm, size_t n,
                               pcre2_match_data *md, co_words_t *w, ak_err_t *err) {
  size_t pos = 0;
  while (pos < n) {
    int rc = match_at(pt->re_gpt2, subj, n, pos, md);
    if (rc == PCRE2_ERROR_NOMATCH) return push_word(w, norm, pos, n);
    if (rc < 0) return match_failed(rc, "gpt2", err);
    const PCRE2_SIZE *ov = pcre2_get_ovector_pointer(md);
    size_t m_start = ov[0], m_end = ov[1];
    if (m_end <= m_start) return AK_ERR(err, AK_ERR_INTERNAL, "empty pre-tokenizer match at %zu", m_start);
    AK_TRY(push_word(w, norm, pos, m_start)); /* text no alternative matched */
    AK_TRY(push_word(w, norm, m_start, m_end));
    pos = m_end;
  }
  return AK_OK;
}

ak_status_t co_pretok_split(const co_pretok_t *pt, const char *frag, size_t n_frag, co_words_t *w,
                            ak_err_t *err) {
  w->n_words = 0;
  w->n_text_bytes = 0;
  if (n_frag == 0) return AK_OK;
  /* A bad byte becomes U+FFFD (3 bytes): the normalised text is at most 3x the input;
   * a second copy follows it when surrogates must be masked for PCRE2. */
  if (n_frag > SIZE_MAX / 12) return AK_ERR(err, AK_ERR_OVER_BUDGET, "text of %zu bytes is too long", n_frag);
  if (!grow_bytes(&w->subj, &w->cap_subj_bytes, 6 * n_frag) ||
      !grow_bytes(&w->text, &w->cap_text_bytes, 6 * n_frag))
    return AK_ERR(err, AK_ERR_NO_MEMORY, "no memory to split %zu bytes", n_frag);

  /* Decode as llama.cpp does and re-encode canonically: `norm` holds the bytes the
   * words are made of. */
  char *norm = w->subj;
  size_t n = 0;
  int has_surrogate = 0;
  for (size_t i = 0; i < n_frag;) {
    size_t used;
    uint32_t cpt = co_utf8_decode_lenient((const uint8_t *)frag + i, n_frag - i, &used);
    has_surrogate |= (cpt >= 0xD800 && cpt <= 0xDFFF);
    n += co_utf8_encode(cpt, norm + n);
    i += used;
  }
  /* PCRE2 rejects surrogates even with NO_UTF_CHECK's promise; llama.cpp classes them
   * as neither letter, number nor space, as PCRE2 does the private-use U+E000, which
   * has the same encoded length, so offsets agree between the two copies. */
  const char *subj = norm;
  if (has_surrogate) {
    char *masked = norm + n;
    memcpy(masked, norm, n);
    for (size_t i = 0; i + 2 < n; i++) {
      if ((uint8_t)masked[i] == 0xED && ((uint8_t)masked[i + 1] & 0xE0) == 0xA0) {
        masked[i] = (char)0xEE;
        masked[i + 1] = (char)0x80;
        masked[i + 2] = (char)0x80;
        i += 2;
      }
    }
    subj = masked;
  }

  pcre2_match_data *md = pcre2_match_data_create(4, NULL);
  if (!md) return AK_ERR(err, AK_ERR_NO_MEMORY, "no memory for pcre2 match data");
  ak_status_t st = AK_OK;
  size_t pos = 0;
  while (pos < n && st == AK_OK) {
    /* first regex: every \p{N} code point is a piece of its own */
    int rc = match_at(pt->re_number, subj, n, pos, md);
    if (rc == PCRE2_ERROR_NOMATCH) {
      st = split_piece(pt, subj + pos, norm + pos, n - pos, md, w, err);
      break;
    }
    if (rc < 0) {
      st = match_failed(rc, "number", err);
      break;
    }
    const PCRE2_SIZE *ov = pcre2_get_ovector_pointer(md);
    size_t m_start = ov[0], m_end = ov[1];
    if (m_start > pos) st = split_piece(pt, subj + pos, norm + pos, m_start - pos, md, w, err);
    if (st == AK_OK) st = push_word(w, norm, m_start, m_end);
    pos = m_end;
  }
  pcre2_match_data_free(md);
  if (st < 0) {
    if (st == AK_ERR_NO_MEMORY) AK_ERR(err, st, "no memory for the words of %zu bytes", n_frag);
    w->n_words = 0;
    w->n_text_bytes = 0;
  }
  return st;
}
