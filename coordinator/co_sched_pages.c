/* co_sched_pages: the KV page arithmetic the scheduler admits by, from plain numbers.
 * The coordinator may not link kvpool (DESIGN.md), so this restates
 * kv_seq_pages_needed and the prefill rule of kvpool.h; tests/coordinator checks both
 * against a real pool. */
#include "co_sched.h"

int64_t co_kv_pages_for_tokens(int64_t n_tokens, int32_t page_tokens) {
  if (n_tokens <= 0 || page_tokens <= 0) return 0;
  return (n_tokens + page_tokens - 1) / page_tokens;
}

int64_t co_kv_seq_pages_steady(const co_kv_shape_t *shape, int32_t budget_tokens, int64_t n_tokens) {
  int64_t per_layer = co_kv_pages_for_tokens(n_tokens, shape->page_tokens);
  if (budget_tokens <= 0) return per_layer * shape->n_layers;
  int64_t n_full = shape->n_full_layers < shape->n_layers ? shape->n_full_layers : shape->n_layers;
  if (n_full < 0) n_full = 0;
  /* ceil: equal to kvpool's floor for the page policies, whose budgets are whole pages */
  int64_t budget_pages = co_kv_pages_for_tokens(budget_tokens, shape->page_tokens);
  int64_t budgeted = per_layer < budget_pages ? per_layer : budget_pages;
  return per_layer * n_full + budgeted * (shape->n_layers - n_full);
}

int64_t co_kv_seq_pages_prefill(const co_kv_shape_t *shape, int64_t n_tokens) {
  return co_kv_pages_for_tokens(n_tokens, shape->page_tokens) * shape->n_layers;
}

int64_t co_kv_seq_pages_peak(const co_kv_shape_t *shape, int32_t budget_tokens, int64_t n_prompt_tokens,
                             int64_t max_new_tokens) {
  int64_t prefill = co_kv_seq_pages_prefill(shape, n_prompt_tokens);
  int64_t steady = co_kv_seq_pages_steady(shape, budget_tokens, n_prompt_tokens + max_new_tokens);
  return prefill > steady ? prefill : steady;
}
