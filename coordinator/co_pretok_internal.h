/* co_pretok_internal: the pre-tokenizer split and the GPT-2 byte mapping, private to
 * co_tokenizer.c. Not a public contract: the coordinator's other files use
 * co_tokenizer.h only.
 *
 * The split reproduces llama.cpp's LLAMA_VOCAB_PRE_TYPE_SMOLLM pre-tokenizer
 * (src/llama-vocab.cpp, src/unicode.cpp): the text is decoded leniently (each byte
 * that does not start a well-formed sequence becomes U+FFFD; overlong forms and
 * surrogates are accepted and re-encoded), cut first at every \p{N} code point (each
 * number its own piece), then each piece is split by the GPT-2 regex
 *
 *   's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)
 *
 * where text between matches is kept as a piece of its own. Lookahead does not see
 * past the piece's end, so "  1" gives "  ", "1" (not " ", " 1"). Each word is then
 * re-encoded byte by byte through the GPT-2 byte-to-unicode table.
 *
 * Thread-safety: a co_pretok_t is immutable after create; split may run on many
 * threads at once, each with its own co_words_t. */
#ifndef CO_PRETOK_INTERNAL_H
#define CO_PRETOK_INTERNAL_H

#include <stddef.h>
#include <stdint.h>

#include "ak_status.h"

typedef struct co_pretok co_pretok_t;

ak_status_t co_pretok_create(ak_err_t *err, co_pretok_t **pt_p);
void co_pretok_destroy(co_pretok_t *pt);

/* The words of one split, back to back in `text` (byte-level encoded: every byte of
 * the original as its GPT-2 code point, 1 or 2 UTF-8 bytes each). Word w spans
 * [w == 0 ? 0 : word_end[w - 1], word_end[w]). Owned by the caller; buffers grow as
 * needed and are reused across splits; free with co_words_free. */
typedef struct {
  char *text;
  size_t n_text_bytes;
  size_t cap_text_bytes;
  int64_t *word_end; /* [n_words] byte offsets into text */
  int64_t n_words;
  int64_t cap_words;
  /* scratch for the decoded subject */
  char *subj;
  size_t cap_subj_bytes;
} co_words_t;

void co_words_free(co_words_t *w);

/* Splits `frag` (any bytes, not NUL-terminated) into words, replacing the previous
 * contents of `w`. AK_ERR_NO_MEMORY, or AK_ERR_INTERNAL when PCRE2 fails (its message
 * in `err`); `w` is left empty on failure. */
ak_status_t co_pretok_split(const co_pretok_t *pt, const char *frag, size_t n_frag_bytes,
                            co_words_t *w, ak_err_t *err);

/* GPT-2 byte-to-unicode: bytes that are printable Latin-1 (! to ~, ¡ to ¬, ® to ÿ)
 * map to themselves, the other 68 to U+0100 upwards in byte order. */
uint32_t co_byte_to_cpt(uint8_t byte);
/* The inverse; -1 for a code point that is no byte's image. */
int co_cpt_to_byte(uint32_t cpt);

/* llama.cpp's lenient UTF-8 decoder (unicode_cpt_from_utf8): decodes one code point
 * at s[0], s[n_bytes - 1] being the last byte available. Checks only the lead byte's
 * class and that the continuation bytes are 10xxxxxx; overlong forms and surrogates
 * pass. On a bad sequence returns U+FFFD and consumes one byte. A result above
 * U+10FFFF (f4 90.., f5..f7 leads), on which llama.cpp throws and aborts, is treated
 * as a bad sequence here. Writes the bytes consumed to *n_used_p. */
uint32_t co_utf8_decode_lenient(const uint8_t *s, size_t n_bytes, size_t *n_used_p);
/* Encodes cpt (<= U+10FFFF, surrogates allowed) into out[4]; returns the length. */
size_t co_utf8_encode(uint32_t cpt, char *out);

#endif
