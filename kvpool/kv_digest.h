/* kv_digest: ArkVale page digests and their scores against a query (CPU, f32).
 *
 * A digest is a small summary of one page's keys (post-RoPE), per KV head, from which
 * the page's importance to the current query is estimated without reading the page
 * (../shared/ARKVALE.md, "Digest and score"). This file builds digests and scores them;
 * it is also the oracle for a future GPU scorer. It does not own memory, pick pages or
 * know about the pool: callers pass plain arrays.
 *
 * For a page with keys k_t (t < n_tokens), per KV head and dimension i, the centre is
 * c_i = (max_t k_t,i + min_t k_t,i) / 2. The kinds:
 *
 *   kind            stored per KV head        radius                        score of q
 *   centroid        mean[d]                   -                             q . mean
 *   sphere-max      c[d], r                   r = max_t ||c - k_t||         q . c + r ||q||
 *   sphere-center   c[d], r                   r = (min_t + max_t) / 2 of    q . c + r ||q||
 *                                                 ||c - k_t||
 *   sphere-mean     c[d], r                   r = mean_t ||c - k_t||        q . c + r ||q||
 *   cuboid-max      ub[d], lb[d]              ub = max_t k, lb = min_t k    sum_i max(q_i ub_i, q_i lb_i)
 *   cuboid-center   ub[d], lb[d] = c -+ r     r_i = (min_t + max_t) / 2 of  (same)
 *                                                 |c_i - k_t,i|
 *   cuboid-mean     ub[d], lb[d] = c -+ r     r_i = mean_t |c_i - k_t,i|    (same)
 *
 * sphere-max and cuboid-max are true upper bounds on max_t q . k_t; the others are
 * estimates (cuboid-mean is the default, best in the paper's Fig. 7). Scaling by
 * 1/sqrt(d) does not change a ranking, so scores are unscaled.
 *
 * Digest layout of one page, f32, KV heads in order, kv_digest_floats(kind, d) floats
 * each (d = head_dim):
 *
 *   cuboid-*:  +----------------+----------------+----------------+----------------+
 *              | ub[d]  head 0  | lb[d]  head 0  | ub[d]  head 1  | lb[d]  head 1  | ...
 *              +----------------+----------------+----------------+----------------+
 *              floats per head: 2 d
 *
 *   sphere-*:  +----------------+---+----------------+---+
 *              | c[d]   head 0  | r | c[d]   head 1  | r | ...
 *              +----------------+---+----------------+---+
 *              floats per head: d + 1
 *
 *   centroid:  +----------------+----------------+
 *              | mean[d] head 0 | mean[d] head 1 | ...
 *              +----------------+----------------+
 *              floats per head: d
 *
 * Pages of a batch are consecutive: digests [n_pages, n_kv_heads, kv_digest_floats].
 *
 * Query head h is scored against KV head h / (n_heads / n_kv_heads) (GQA; MHA when
 * n_heads == n_kv_heads). A page's score aggregates its query heads' scores by mean
 * (default) or max.
 *
 * Errors: every fallible call takes an `ak_err_t *err` (may be NULL) that receives a
 * message naming the bad value; outputs are written only on success. NaN or infinite
 * keys are not checked: they propagate into the digest.
 * Threading: no state; every call is thread-safe on distinct outputs. */
#ifndef KV_DIGEST_H
#define KV_DIGEST_H

#include <stdint.h>

#include "ak_status.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef enum {
  KV_DIGEST_CENTROID = 0,
  KV_DIGEST_SPHERE_MAX = 1,
  KV_DIGEST_SPHERE_CENTER = 2,
  KV_DIGEST_SPHERE_MEAN = 3,
  KV_DIGEST_CUBOID_MAX = 4,
  KV_DIGEST_CUBOID_CENTER = 5,
  KV_DIGEST_CUBOID_MEAN = 6,
} kv_digest_kind_t;
#define KV_DIGEST_N_KINDS 7
#define KV_DIGEST_DEFAULT KV_DIGEST_CUBOID_MEAN

/* How a page score combines the scores of its query heads. */
typedef enum {
  KV_SCORE_MEAN = 0, /* default */
  KV_SCORE_MAX = 1,
} kv_score_agg_t;

/* Limits checked by every call. */
#define KV_DIGEST_MAX_HEADS 1024
#define KV_DIGEST_MAX_HEAD_DIM 1024

/* "centroid", "sphere-max", "sphere-center", "sphere-mean", "cuboid-max",
 * "cuboid-center", "cuboid-mean"; "unknown" for a value outside the enum. Never NULL. */
const char *kv_digest_kind_name(kv_digest_kind_t kind);

/* The kind named exactly (case-sensitive) by one of kv_digest_kind_name's strings.
 * AK_ERR_INVALID_ARG, with a message quoting `name`, otherwise. */
ak_status_t kv_digest_kind_parse(const char *name, ak_err_t *err, kv_digest_kind_t *kind_p);

/* Floats of one KV head's digest (see the layout above); -1 for an unknown kind or a
 * head_dim outside [1, KV_DIGEST_MAX_HEAD_DIM]. */
int32_t kv_digest_floats(kv_digest_kind_t kind, int32_t head_dim);

/* Digest of one page (or a partial page: any n_tokens >= 1).
 * keys: [n_tokens, n_kv_heads, head_dim] f32, post-RoPE, token-major as kv_layer_append
 *       receives them.
 * out:  [n_kv_heads, kv_digest_floats(kind, head_dim)] f32.
 * AK_ERR_INVALID_ARG for an unknown kind, NULL pointers, n_tokens < 1, or n_kv_heads /
 * head_dim outside [1, 1024]; `out` is untouched then. */
ak_status_t kv_digest_build(kv_digest_kind_t kind, const float *keys, int32_t n_tokens, int32_t n_kv_heads,
                            int32_t head_dim, ak_err_t *err, float *out);

/* Per-query-head scores of one page.
 * digest: [n_kv_heads, kv_digest_floats] f32 (one page, from kv_digest_build).
 * q:      [n_heads, head_dim] f32 queries after RoPE.
 * head_scores: [n_heads] f32.
 * n_heads must be a positive multiple of n_kv_heads. */
ak_status_t kv_digest_score_heads(kv_digest_kind_t kind, const float *digest, const float *q, int32_t n_heads,
                                  int32_t n_kv_heads, int32_t head_dim, ak_err_t *err, float *head_scores);

/* One page's score: its query heads' scores aggregated by `agg`. */
ak_status_t kv_digest_score(kv_digest_kind_t kind, const float *digest, const float *q, int32_t n_heads,
                            int32_t n_kv_heads, int32_t head_dim, kv_score_agg_t agg, ak_err_t *err,
                            float *score_p);

/* Scores of n_pages pages (n_pages >= 0; 0 writes nothing).
 * digests: [n_pages, n_kv_heads, kv_digest_floats] f32.
 * scores:  [n_pages] f32; scores[p] equals kv_digest_score of page p. */
ak_status_t kv_digest_score_pages(kv_digest_kind_t kind, const float *digests, int64_t n_pages, const float *q,
                                  int32_t n_heads, int32_t n_kv_heads, int32_t head_dim, kv_score_agg_t agg,
                                  ak_err_t *err, float *scores);

#ifdef __cplusplus
}
#endif
#endif
