/* kn_attention_avx2: the attention work unit on AVX2 machines. It delegates to the
 * portable unit for now (SmolLM2's head_dim 64 keeps attention small next to the
 * matmuls on decode); the entry point exists so a vectorized unit can drop in. */
#include "kn_cpu_internal.h"

void kn_attn_unit_avx2(const kn_attn_unit_t *u) { kn_attn_unit_c(u); }
