/* pk_prompt: builds a passkey case's prompt and scores an answer (pk_prompt.h). */
#include "pk_prompt.h"

#include <stdio.h>
#include <string.h>

#include "ak_alloc.h"
#include "co_chat.h"

static uint64_t pk_splitmix64(uint64_t *state) {
  uint64_t z = (*state += 0x9e3779b97f4a7c15ull);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

int32_t pk_passkey(uint64_t seed, int32_t ctx_idx, int32_t depth_idx) {
  uint64_t s = seed;
  s = pk_splitmix64(&s) ^ ((uint64_t)(uint32_t)ctx_idx << 32 | (uint32_t)depth_idx);
  pk_splitmix64(&s);
  return 10000 + (int32_t)(pk_splitmix64(&s) % 90000u);
}

/* A growing text buffer that counts bytes past its capacity instead of failing, so one
 * pass both measures and writes. */
typedef struct {
  char *text;
  size_t cap_bytes, n_bytes;
} pk_buf_t;

static void pk_put(pk_buf_t *b, const char *s, size_t n) {
  if (b->n_bytes < b->cap_bytes) {
    size_t room = b->cap_bytes - b->n_bytes, k = n < room ? n : room;
    memcpy(b->text + b->n_bytes, s, k);
  }
  b->n_bytes += n;
}

static void pk_put_str(pk_buf_t *b, const char *s) { pk_put(b, s, strlen(s)); }

/* The first n_chars of FILLER: sentences joined by single spaces. */
static void pk_put_filler(pk_buf_t *b, int64_t n_chars) {
  static const char sentence[] = PK_FILLER_SENTENCE " ";
  const int64_t period = (int64_t)sizeof sentence - 1;
  for (int64_t done = 0; done < n_chars;) {
    int64_t k = n_chars - done < period ? n_chars - done : period;
    pk_put(b, sentence, (size_t)k);
    done += k;
  }
}

/* task, filler prefix, info line, filler suffix and (raw) the question line. */
static void pk_put_body(pk_buf_t *b, const pk_prompt_params_t *p) {
  int64_t n_prefix = (int64_t)((double)p->n_filler_chars * p->depth);
  if (n_prefix > p->n_filler_chars) n_prefix = p->n_filler_chars;
  char info[96];
  snprintf(info, sizeof info, "The pass key is %d. Remember it. %d is the pass key.", p->passkey, p->passkey);
  pk_put_str(b, PK_TASK_TEXT "\n");
  pk_put_filler(b, n_prefix);
  pk_put_str(b, "\n");
  pk_put_str(b, info);
  pk_put_str(b, "\n");
  pk_put_filler(b, p->n_filler_chars - n_prefix);
  pk_put_str(b, "\n" PK_QUESTION_TEXT);
}

ak_status_t pk_prompt_build(const pk_prompt_params_t *p, char *text, size_t cap_bytes, size_t *n_bytes_p,
                            ak_err_t *err) {
  if (!p || !n_bytes_p || (!text && cap_bytes > 0))
    return AK_ERR(err, AK_ERR_INVALID_ARG, "params, n_bytes_p and (with cap_bytes > 0) text are required");
  if (p->n_filler_chars < 0)
    return AK_ERR(err, AK_ERR_INVALID_ARG, "n_filler_chars=%lld must be >= 0", (long long)p->n_filler_chars);
  if (!(p->depth >= 0.0 && p->depth <= 1.0))
    return AK_ERR(err, AK_ERR_INVALID_ARG, "depth=%g must be in [0, 1]", p->depth);
  if (p->passkey < 0 || p->passkey > 99999)
    return AK_ERR(err, AK_ERR_INVALID_ARG, "passkey=%d must be in [0, 99999]", p->passkey);

  if (!p->chat) {
    pk_buf_t b = {.text = text, .cap_bytes = cap_bytes};
    pk_put_body(&b, p);
    pk_put_str(&b, " " PK_ANSWER_PREFIX);
    *n_bytes_p = b.n_bytes;
    if (b.n_bytes >= cap_bytes) return AK_ERR(err, AK_ERR_RANGE, "%zu bytes needed", b.n_bytes + 1);
    text[b.n_bytes] = '\0';
    return AK_OK;
  }

  /* Chat: the body (without the answer prefix) is the user message. */
  pk_buf_t body = {0};
  pk_put_body(&body, p);
  size_t body_cap = body.n_bytes + 1;
  body.text = ak_host_alloc(body_cap, 0);
  if (!body.text) return AK_ERR(err, AK_ERR_NO_MEMORY, "%zu bytes for the user message", body_cap);
  body.cap_bytes = body_cap;
  body.n_bytes = 0;
  pk_put_body(&body, p);
  body.text[body.n_bytes] = '\0';

  co_chat_msg_t msg = {.role = "user", .content = body.text};
  size_t n_chat = 0;
  ak_status_t st = co_chat_apply(&msg, 1, 1, text, cap_bytes, &n_chat, err);
  ak_host_free(body.text, body_cap);
  if (st < 0 && st != AK_ERR_RANGE) return st;
  size_t n_total = n_chat + strlen(PK_ANSWER_PREFIX);
  *n_bytes_p = n_total;
  if (n_total >= cap_bytes) return AK_ERR(err, AK_ERR_RANGE, "%zu bytes needed", n_total + 1);
  memcpy(text + n_chat, PK_ANSWER_PREFIX, strlen(PK_ANSWER_PREFIX) + 1);
  return AK_OK;
}

static int pk_is_digit(char c) { return c >= '0' && c <= '9'; }

int pk_answer_correct(const char *text, size_t n_bytes, int32_t passkey) {
  char key[16];
  int n_key = snprintf(key, sizeof key, "%d", passkey);
  if (n_key <= 0 || !text) return 0;
  for (size_t i = 0; i + (size_t)n_key <= n_bytes; i++) {
    if (memcmp(text + i, key, (size_t)n_key) != 0) continue;
    int digit_before = i > 0 && pk_is_digit(text[i - 1]);
    int digit_after = i + (size_t)n_key < n_bytes && pk_is_digit(text[i + (size_t)n_key]);
    if (!digit_before && !digit_after) return 1;
  }
  return 0;
}
