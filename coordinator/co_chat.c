/* co_chat: renders SmolLM2's ChatML template (see co_chat.h). The template text the
 * GGUF carries is kept here too, so co_chat_check_gguf can tell whether a model
 * expects exactly this rendering. */
#include "co_chat.h"

#include <string.h>

/* tokenizer.chat_template of SmolLM2-135M-Instruct, verbatim */
static const char k_smollm2_template[] =
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}"
    "{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";

typedef struct {
  char *text;
  size_t cap_bytes;
  size_t n_bytes;
} co_out_t;

/* Appends while there is room and counts regardless, so one pass gives both the
 * text and the size needed. */
static void put(co_out_t *o, const char *s) {
  size_t n = strlen(s);
  if (o->n_bytes < o->cap_bytes) {
    size_t room = o->cap_bytes - o->n_bytes;
    memcpy(o->text + o->n_bytes, s, n < room ? n : room);
  }
  o->n_bytes += n;
}

static void put_message(co_out_t *o, const char *role, const char *content) {
  put(o, "<|im_start|>");
  put(o, role);
  put(o, "\n");
  put(o, content);
  put(o, "<|im_end|>\n");
}

ak_status_t co_chat_apply(const co_chat_msg_t *msgs, int64_t n_msgs, int add_generation_prompt, char *text,
                          size_t cap_bytes, size_t *n_bytes_p, ak_err_t *err) {
  if (n_msgs < 0 || (!msgs && n_msgs > 0) || (!text && cap_bytes > 0) || !n_bytes_p)
    return AK_ERR(err, AK_ERR_INVALID_ARG, "bad arguments (%lld messages, cap %zu)", (long long)n_msgs, cap_bytes);
  for (int64_t i = 0; i < n_msgs; i++) {
    const char *role = msgs[i].role;
    if (!role || !msgs[i].content)
      return AK_ERR(err, AK_ERR_INVALID_ARG, "message %lld has a NULL %s", (long long)i, role ? "content" : "role");
    if (strcmp(role, "system") != 0 && strcmp(role, "user") != 0 && strcmp(role, "assistant") != 0)
      return AK_ERR(err, AK_ERR_INVALID_ARG, "message %lld has role '%.64s': want system, user or assistant",
                    (long long)i, role);
  }
  co_out_t o = {text, cap_bytes, 0};
  for (int64_t i = 0; i < n_msgs; i++) {
    if (i == 0 && strcmp(msgs[0].role, "system") != 0) put_message(&o, "system", CO_CHAT_DEFAULT_SYSTEM);
    put_message(&o, msgs[i].role, msgs[i].content);
  }
  if (add_generation_prompt) put(&o, "<|im_start|>assistant\n");
  *n_bytes_p = o.n_bytes;
  if (o.n_bytes + 1 > cap_bytes)
    return AK_ERR(err, AK_ERR_RANGE, "%zu bytes and a NUL do not fit in %zu", o.n_bytes, cap_bytes);
  text[o.n_bytes] = '\0';
  return AK_OK;
}

ak_status_t co_chat_check_gguf(const ak_gguf_t *gguf, ak_err_t *err) {
  const char *s;
  size_t n;
  AK_TRY(ak_gguf_get_str(gguf, "tokenizer.chat_template", err, &s, &n));
  const size_t n_want = sizeof k_smollm2_template - 1;
  size_t i = 0;
  while (i < n && i < n_want && s[i] == k_smollm2_template[i]) i++;
  if (i == n && n == n_want) return AK_OK;
  return AK_ERR(err, AK_ERR_UNSUPPORTED,
                "tokenizer.chat_template (%zu bytes) is not SmolLM2's ChatML template: differs at byte %zu", n, i);
}
