/* pk_prompt: the passkey-retrieval test's text (ArkVale Table 1, after Landmark
 * Attention's passkey test): the prompt of one case, its passkey, and the scoring
 * rule. Pure functions on host memory, no model: testable on their own
 * (tests/bench/test_pk_prompt.cc). Not here: tokenization, running the model.
 *
 * A case's prompt, raw (the reference script's, passkey_pred.py) -- lines joined by "\n":
 *
 *   There is an important info hidden inside a lot of irrelevant text. Find it and
 *   memorize them. I will quiz you about the important information there.
 *   <first floor(n_filler_chars * depth) chars of FILLER>
 *   The pass key is NNNNN. Remember it. NNNNN is the pass key.
 *   <first n_filler_chars - that many chars of FILLER>
 *   What is the pass key? The pass key is
 *
 * where FILLER is PK_FILLER_SENTENCE repeated and joined by single spaces; both filler
 * parts start at the beginning of FILLER, and the cuts are by characters (they may
 * fall inside a word), as in the reference.
 *
 * The chat form puts everything up to "What is the pass key?" in one user message of
 * SmolLM2's ChatML template (default system message) and starts the assistant's
 * answer with "The pass key is":
 *
 *   <|im_start|>system\n...<|im_end|>\n<|im_start|>user\n<task>\n<prefix>\n<info>\n
 *   <suffix>\nWhat is the pass key?<|im_end|>\n<|im_start|>assistant\nThe pass key is
 *
 * (tokenize it with parse_special = 1). */
#ifndef PK_PROMPT_H
#define PK_PROMPT_H

#include <stddef.h>
#include <stdint.h>

#include "ak_status.h"

#ifdef __cplusplus
extern "C" {
#endif

#define PK_TASK_TEXT                                                                                         \
  "There is an important info hidden inside a lot of irrelevant text. Find it and memorize them. I will " \
  "quiz you about the important information there."
#define PK_FILLER_SENTENCE "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again."
#define PK_QUESTION_TEXT "What is the pass key?"
#define PK_ANSWER_PREFIX "The pass key is"

/* The passkey of case (ctx_idx, depth_idx) for a run seed: a 5-digit number in
 * [10000, 99999] drawn from splitmix64 seeded by all three, so one case's key does not
 * depend on which other contexts or depths a run includes. */
int32_t pk_passkey(uint64_t seed, int32_t ctx_idx, int32_t depth_idx);

typedef struct {
  int64_t n_filler_chars; /* filler characters, prefix and suffix together, >= 0 */
  double depth;           /* where the passkey line goes, as a fraction of the filler, [0, 1] */
  int32_t passkey;        /* [0, 99999]; printed as %d */
  int chat;               /* 1: ChatML-wrapped (see above); 0: raw */
} pk_prompt_params_t;

/* Writes the prompt to text[0, cap_bytes) followed by a NUL; *n_bytes_p gets its
 * length without the NUL, also on AK_ERR_RANGE (cap_bytes too small), so a caller can
 * size the buffer with a first call of cap 0. AK_ERR_INVALID_ARG (with a message in
 * err) for a negative n_filler_chars, a depth outside [0, 1] or a passkey outside
 * [0, 99999]. */
ak_status_t pk_prompt_build(const pk_prompt_params_t *p, char *text, size_t cap_bytes, size_t *n_bytes_p,
                            ak_err_t *err);

/* The scoring rule: 1 when text[0, n_bytes) contains the passkey's decimal digits as
 * a whole number (no digit right before or after it), else 0. */
int pk_answer_correct(const char *text, size_t n_bytes, int32_t passkey);

#ifdef __cplusplus
}
#endif
#endif
