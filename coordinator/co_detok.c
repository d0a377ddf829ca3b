/* co_detok: the streaming decoder declared in co_tokenizer.h. Tokens arrive one at a
 * time and may end inside a UTF-8 character (byte-level BPE splits emoji and CJK
 * across tokens); this holds back an unfinished character and replaces bytes that
 * can never form one, so each piece handed to a client is valid UTF-8 on its own.
 * Uses the tokenizer's public API only. */
#include <string.h>

#include "ak_alloc.h"
#include "co_tokenizer.h"

struct co_detok {
  const co_tokenizer_t *tok;
  int render_special;
  uint8_t held[4]; /* a valid but unfinished character, at most 3 bytes */
  size_t n_held;
  char *in; /* held bytes + the new token's bytes */
  size_t cap_in;
  char *out; /* what push/flush return: at most 3 bytes per input byte */
  size_t cap_out;
  ak_err_t last_err; /* of the last push */
};

static const char k_replacement[3] = {(char)0xEF, (char)0xBF, (char)0xBD}; /* U+FFFD */

ak_status_t co_detok_create(const co_tokenizer_t *tok, ak_err_t *err, co_detok_t **detok_p) {
  if (!tok || !detok_p) return AK_ERR(err, AK_ERR_INVALID_ARG, "tok and detok_p must not be NULL");
  co_detok_t *d = ak_host_alloc(sizeof *d, 1);
  if (!d) return AK_ERR(err, AK_ERR_NO_MEMORY, "no memory for a decoder");
  d->tok = tok;
  *detok_p = d;
  return AK_OK;
}

void co_detok_destroy(co_detok_t *d) {
  if (!d) return;
  ak_host_free(d->in, d->cap_in);
  ak_host_free(d->out, d->cap_out);
  ak_host_free(d, sizeof *d);
}

void co_detok_reset(co_detok_t *d) { d->n_held = 0; }

void co_detok_render_special(co_detok_t *d, int on) { d->render_special = on != 0; }

const char *co_detok_errmsg(const co_detok_t *d) { return d->last_err.msg; }

/* Classifies the sequence at s[0, n) by the Unicode well-formedness table (Unicode
 * 3.9, table 3-7): returns its length when it is a whole character; 0 when it is
 * well-formed so far but cut off by the end of s (*n_used_p = n); -1 when it is
 * ill-formed, *n_used_p then being the maximal subpart to replace by one U+FFFD. */
static int utf8_scan(const uint8_t *s, size_t n, size_t *n_used_p) {
  const uint8_t b = s[0];
  size_t len;
  uint8_t lo = 0x80, hi = 0xBF; /* the range allowed for the second byte */
  if (b < 0x80) return *n_used_p = 1, 1;
  if (b >= 0xC2 && b <= 0xDF) {
    len = 2;
  } else if (b >= 0xE0 && b <= 0xEF) {
    len = 3;
    if (b == 0xE0) lo = 0xA0;
    if (b == 0xED) hi = 0x9F; /* no surrogates */
  } else if (b >= 0xF0 && b <= 0xF4) {
    len = 4;
    if (b == 0xF0) lo = 0x90;
    if (b == 0xF4) hi = 0x8F; /* nothing above U+10FFFF */
  } else {
    return *n_used_p = 1, -1; /* continuation byte, C0, C1, F5..FF */
  }
  for (size_t i = 1; i < len; i++) {
    if (i >= n) return *n_used_p = n, 0;
    const uint8_t c = s[i];
    if (i == 1 ? (c < lo || c > hi) : (c < 0x80 || c > 0xBF)) return *n_used_p = i, -1;
  }
  *n_used_p = len;
  return (int)len;
}

static int ensure(char **buf, size_t *cap, size_t need) {
  if (need <= *cap) return 1;
  size_t cap_new = *cap ? *cap : 64;
  while (cap_new < need) cap_new *= 2;
  char *p = ak_host_alloc(cap_new, 0);
  if (!p) return 0;
  ak_host_free(*buf, *cap);
  *buf = p;
  *cap = cap_new;
  return 1;
}

/* Converts in[0, n) into d->out; an unfinished tail is held back, or replaced when
 * `final`. Returns the output length. d->out must hold 3 * n bytes. */
static size_t convert(co_detok_t *d, const uint8_t *in, size_t n, int final) {
  size_t n_out = 0;
  d->n_held = 0;
  for (size_t i = 0; i < n;) {
    size_t used;
    int r = utf8_scan(in + i, n - i, &used);
    if (r > 0) {
      memcpy(d->out + n_out, in + i, used);
      n_out += used;
    } else if (r < 0 || final) {
      memcpy(d->out + n_out, k_replacement, sizeof k_replacement);
      n_out += sizeof k_replacement;
    } else {
      memcpy(d->held, in + i, used);
      d->n_held = used;
    }
    i += used;
  }
  return n_out;
}

ak_status_t co_detok_push(co_detok_t *d, int32_t id, const char **text_p, size_t *n_bytes_p) {
  ak_err_t *err = &d->last_err;
  ak_err_clear(err);
  size_t n_piece = 0;
  /* the first call sizes the piece, so a bad id fails before any state changes */
  ak_status_t st = co_tokenizer_decode(d->tok, &id, 1, d->render_special, NULL, 0, &n_piece, NULL);
  if (st != AK_OK && st != AK_ERR_RANGE)
    return AK_ERR(err, st, "id %d is outside the vocabulary of %lld", id, (long long)co_tokenizer_n_vocab(d->tok));
  const size_t n_in = d->n_held + n_piece;
  if (!ensure(&d->in, &d->cap_in, n_in) || !ensure(&d->out, &d->cap_out, 3 * n_in))
    return AK_ERR(err, AK_ERR_NO_MEMORY, "no memory to decode %zu bytes", n_in);
  if (d->n_held) memcpy(d->in, d->held, d->n_held);
  st = co_tokenizer_decode(d->tok, &id, 1, d->render_special, d->in + d->n_held, n_piece, &n_piece, err);
  if (st < 0) return st;
  *n_bytes_p = n_in ? convert(d, (const uint8_t *)d->in, n_in, 0) : 0;
  *text_p = d->out ? d->out : "";
  return AK_OK;
}

void co_detok_flush(co_detok_t *d, const char **text_p, size_t *n_bytes_p) {
  /* out holds at least 3 bytes per held byte once anything was pushed; the held
   * bytes always form one unfinished character, so one U+FFFD */
  uint8_t held[4];
  const size_t n = d->n_held;
  memcpy(held, d->held, n);
  *n_bytes_p = n ? convert(d, held, n, 1) : 0;
  *text_p = d->out ? d->out : "";
  d->n_held = 0;
}
