/* co_tokenizer: the byte-level BPE tokenizer of a GGUF model, matching llama.cpp's
 * tokenizer id for id (tokenizer.ggml.model "gpt2", tokenizer.ggml.pre "smollm": the
 * default model SmolLM2-135M-Instruct). Encode, per-token bytes, whole-sequence
 * decode, and a streaming decoder that emits only complete UTF-8. Not here: chat
 * templates (co_chat.h), stop strings (co_stop.h), sampling.
 *
 * Encoding, as llama.cpp's llama_tokenize:
 *   1. special tokens (token_type CONTROL or USER_DEFINED) are cut out of the raw
 *      bytes, longest text first; CONTROL ones only when parse_special is set;
 *   2. each remaining fragment is pre-tokenized (co_pretok_internal.h: lenient UTF-8
 *      decoding, \p{N} pieces, the GPT-2 regex) and mapped to GPT-2 byte symbols;
 *   3. each word is merged by BPE rank (tokenizer.ggml.merges, lowest rank first,
 *      leftmost on ties); a final symbol missing from the vocabulary falls back to
 *      its single-byte tokens.
 * Invalid UTF-8 never fails: each byte that does not start a well-formed sequence is
 * tokenized as U+FFFD, as llama.cpp does. One deliberate difference: a 4-byte form
 * above U+10FFFF (f4 90 80 80, f5..f7 leads) aborts llama.cpp's process; here its lead
 * byte is a bad byte like any other.
 *
 * Unicode classes (letter, number) come from PCRE2's tables, llama.cpp's from its own
 * unicode-data.cpp (Unicode 15.1). With a PCRE2 on an older Unicode (10.42: 14.0)
 * the 5010 code points assigned in 15.0/15.1 (CJK extensions H and I, Kawi, Nag
 * Mundari, ...) count as neither letter nor number here, so text containing them may
 * split differently from llama.cpp. Every other code point matches.
 *
 * Thread-safety: a tokenizer is immutable after create; every co_tokenizer_* call
 * may run concurrently on one handle (each call allocates its own scratch). A
 * co_detok_t belongs to one thread at a time. */
#ifndef CO_TOKENIZER_H
#define CO_TOKENIZER_H

#include <stddef.h>
#include <stdint.h>

#include "ak_gguf.h"
#include "ak_status.h"

#ifdef __cplusplus
extern "C" {
#endif

#define CO_TOKEN_NONE (-1) /* "no such token" from the look-ups below */
#define CO_TOKENIZER_MAX_TEXT_BYTES (256 << 20) /* per encode call */

typedef struct co_tokenizer co_tokenizer_t;

/* Loads the vocabulary, token types, merges and special ids from `gguf`. The
 * tokenizer copies what it needs: `gguf` may be closed afterwards. AK_ERR_NOT_FOUND
 * for a missing tokenizer key, AK_ERR_UNSUPPORTED for a tokenizer model other than
 * "gpt2" or a pre-tokenizer other than "smollm", AK_ERR_FORMAT for malformed arrays
 * (wrong element type, token_type shorter than tokens, duplicate token text),
 * AK_ERR_NO_MEMORY. `*tok_p` is written only on success. */
ak_status_t co_tokenizer_create_from_gguf(const ak_gguf_t *gguf, ak_err_t *err, co_tokenizer_t **tok_p);
/* Accepts NULL. */
void co_tokenizer_destroy(co_tokenizer_t *tok);

/* Tokenizes text[0, text_bytes) (any bytes; NUL is an ordinary byte) into ids[0, cap).
 *
 * add_bos: as llama.cpp's add_special: prepends BOS (appends EOS) only where the
 *   model asks for it (tokenizer.ggml.add_bos_token / add_eos_token, see
 *   co_tokenizer_adds_bos). SmolLM2 asks for neither, so for it this adds nothing.
 * parse_special: recognise CONTROL tokens (<|im_start|>, <|im_end|>, <|endoftext|>,
 *   ...) in the text; when 0 their text is tokenized as ordinary text.
 *
 * On success *n_ids_p is the number of ids written. AK_ERR_RANGE when cap is too
 * small: *n_ids_p is then the count needed and ids[0, cap) holds the first cap ids.
 * AK_ERR_INVALID_ARG for NULL text with text_bytes > 0, NULL ids with cap > 0, or
 * cap < 0; AK_ERR_OVER_BUDGET above CO_TOKENIZER_MAX_TEXT_BYTES. */
ak_status_t co_tokenizer_encode(const co_tokenizer_t *tok, const char *text, size_t text_bytes, int add_bos,
                                int parse_special, int32_t *ids, int64_t cap, int64_t *n_ids_p, ak_err_t *err);

int64_t co_tokenizer_n_vocab(const co_tokenizer_t *tok);
int32_t co_tokenizer_bos(const co_tokenizer_t *tok); /* CO_TOKEN_NONE when the model has none */
int32_t co_tokenizer_eos(const co_tokenizer_t *tok);
/* Whether encode's add_bos prepends BOS for this model (tokenizer.ggml.add_bos_token). */
int co_tokenizer_adds_bos(const co_tokenizer_t *tok);
/* End of generation, as llama_vocab_is_eog: EOS, EOT, EOM, the FIM pad/repo/file-sep
 * tokens and the tokens whose text llama.cpp lists as ending a turn. For SmolLM2:
 * 0 <|endoftext|>, 2 <|im_end|>, 4 <reponame>. 0 for ids out of range. */
int co_tokenizer_is_eog(const co_tokenizer_t *tok, int32_t id);
/* Whether id is a CONTROL token (rendered by decoders only on request). */
int co_tokenizer_is_control(const co_tokenizer_t *tok, int32_t id);
/* The id of the token whose text is exactly text[0, strlen), or CO_TOKEN_NONE. */
int32_t co_tokenizer_find_token(const co_tokenizer_t *tok, const char *text);

/* The raw bytes a token stands for (llama_token_to_piece with special = true): for
 * normal tokens the text with the GPT-2 byte mapping undone (may be part of a UTF-8
 * character); for CONTROL and USER_DEFINED tokens their text. Points into the
 * tokenizer, valid until destroy; not NUL-terminated. AK_ERR_RANGE for a bad id. */
ak_status_t co_tokenizer_token_bytes(const co_tokenizer_t *tok, int32_t id, const char **bytes_p,
                                     size_t *n_bytes_p);

/* Concatenates the bytes of ids[0, n_ids) into text[0, cap_bytes) as
 * llama_detokenize(remove_special = false, unparse_special = render_special): CONTROL
 * tokens give nothing unless render_special. The result may end mid-character and is
 * not NUL-terminated. *n_bytes_p is the length; AK_ERR_RANGE when cap_bytes is too
 * small, *n_bytes_p then being the length needed. AK_ERR_RANGE for a bad id. */
ak_status_t co_tokenizer_decode(const co_tokenizer_t *tok, const int32_t *ids, int64_t n_ids,
                                int render_special, char *text, size_t cap_bytes, size_t *n_bytes_p,
                                ak_err_t *err);

/* --- streaming decoder ---
 * Takes ids one at a time and emits only whole, valid UTF-8: the bytes of a
 * character split across tokens (an emoji in 2..4 byte tokens) are held back until
 * its last byte arrives. Bytes that can never form a character (a stray continuation
 * byte, a lead byte followed by a non-continuation, overlong or surrogate forms) are
 * each replaced by U+FFFD at once, as Python's bytes.decode(errors="replace") does
 * (one U+FFFD per maximal ill-formed subpart); the concatenated output therefore
 * equals decoding all bytes at once. */
typedef struct co_detok co_detok_t;

/* The decoder keeps a pointer to `tok`, which must outlive it. CONTROL tokens produce
 * nothing until co_detok_render_special turns them on. */
ak_status_t co_detok_create(const co_tokenizer_t *tok, ak_err_t *err, co_detok_t **detok_p);
/* Accepts NULL. */
void co_detok_destroy(co_detok_t *detok);
/* on != 0: emit the text of CONTROL tokens (e.g. "<|im_end|>") too. */
void co_detok_render_special(co_detok_t *detok, int on);

/* Feeds one id. *text_p / *n_bytes_p receive the text that became complete (possibly
 * 0 bytes), pointing into the decoder until its next call. AK_ERR_RANGE for a bad id
 * (AK_ERR_NO_MEMORY when a buffer cannot grow), the decoder's state then being
 * unchanged and co_detok_errmsg saying why. */
ak_status_t co_detok_push(co_detok_t *detok, int32_t id, const char **text_p, size_t *n_bytes_p);
/* Emits what is held back (an unfinished character becomes one U+FFFD) and resets
 * the decoder for a new sequence. */
void co_detok_flush(co_detok_t *detok, const char **text_p, size_t *n_bytes_p);
/* Drops what is held back. */
void co_detok_reset(co_detok_t *detok);
/* The message of the last failed push, "" when none; valid until the next call. */
const char *co_detok_errmsg(const co_detok_t *detok);

#ifdef __cplusplus
}
#endif
#endif
