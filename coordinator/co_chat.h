/* co_chat: SmolLM2's chat template (ChatML) as a plain function, not a Jinja engine.
 * It renders exactly what the GGUF's tokenizer.chat_template renders:
 *
 *   {% for message in messages %}
 *   {% if loop.first and messages[0]['role'] != 'system' %}
 *     <|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n
 *   {% endif %}
 *   <|im_start|>{role}\n{content}<|im_end|>\n
 *   {% endfor %}
 *   {% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}
 *
 * (no messages and no generation prompt renders ""). The result is text: tokenize it
 * with parse_special = 1 so the <|im_*|> markers become their control tokens. Content
 * is copied verbatim: a message that itself contains "<|im_end|>" is the caller's to
 * reject or escape. Stateless and thread-safe. */
#ifndef CO_CHAT_H
#define CO_CHAT_H

#include <stddef.h>
#include <stdint.h>

#include "ak_gguf.h"
#include "ak_status.h"

#ifdef __cplusplus
extern "C" {
#endif

#define CO_CHAT_DEFAULT_SYSTEM "You are a helpful AI assistant named SmolLM, trained by Hugging Face"

typedef struct {
  const char *role;    /* "system", "user" or "assistant"; NUL-terminated */
  const char *content; /* NUL-terminated UTF-8 */
} co_chat_msg_t;

/* Renders msgs[0, n_msgs) into text[0, cap_bytes) followed by a NUL. *n_bytes_p gets
 * the rendered length, not counting the NUL (the buffer needs n_bytes + 1). On
 * AK_ERR_RANGE *n_bytes_p still gets that length, so a caller can size and retry.
 * AK_ERR_INVALID_ARG for a role other than system/user/assistant (the message names
 * the role and its index), a NULL role or content, or n_msgs < 0. */
ak_status_t co_chat_apply(const co_chat_msg_t *msgs, int64_t n_msgs, int add_generation_prompt, char *text,
                          size_t cap_bytes, size_t *n_bytes_p, ak_err_t *err);

/* Whether `gguf`'s tokenizer.chat_template is the template co_chat_apply renders
 * (byte for byte). AK_ERR_NOT_FOUND without a template, AK_ERR_UNSUPPORTED when it
 * differs (the message gives the first differing byte offset). */
ak_status_t co_chat_check_gguf(const ak_gguf_t *gguf, ak_err_t *err);

#ifdef __cplusplus
}
#endif
#endif
