/* kv_digest: build ArkVale page digests and score them against queries (CPU, f32).
 * The kinds, formulas and layout are in kv_digest.h. Plain loops: this is the CPU
 * backend and the oracle for a GPU scorer, not a tuned kernel.
 *
 * Builds accumulate sums in double (a page has up to a few hundred tokens; the
 * precision is free) and write f32. Scores accumulate in f32 over dimensions in index
 * order, so a page whose keys are all equal scores exactly the float q . k computed the
 * same way. */
#include "kv_digest.h"

#include <math.h>
#include <stddef.h>
#include <string.h>

static const char *const kv_digest_names[KV_DIGEST_N_KINDS] = {
    [KV_DIGEST_CENTROID] = "centroid",
    [KV_DIGEST_SPHERE_MAX] = "sphere-max",
    [KV_DIGEST_SPHERE_CENTER] = "sphere-center",
    [KV_DIGEST_SPHERE_MEAN] = "sphere-mean",
    [KV_DIGEST_CUBOID_MAX] = "cuboid-max",
    [KV_DIGEST_CUBOID_CENTER] = "cuboid-center",
    [KV_DIGEST_CUBOID_MEAN] = "cuboid-mean",
};

static int kv_kind_valid(kv_digest_kind_t kind) {
  return (int)kind >= 0 && (int)kind < KV_DIGEST_N_KINDS;
}

static int kv_kind_is_cuboid(kv_digest_kind_t kind) {
  return kind == KV_DIGEST_CUBOID_MAX || kind == KV_DIGEST_CUBOID_CENTER || kind == KV_DIGEST_CUBOID_MEAN;
}

static int kv_kind_is_sphere(kv_digest_kind_t kind) {
  return kind == KV_DIGEST_SPHERE_MAX || kind == KV_DIGEST_SPHERE_CENTER || kind == KV_DIGEST_SPHERE_MEAN;
}

const char *kv_digest_kind_name(kv_digest_kind_t kind) {
  return kv_kind_valid(kind) ? kv_digest_names[kind] : "unknown";
}

ak_status_t kv_digest_kind_parse(const char *name, ak_err_t *err, kv_digest_kind_t *kind_p) {
  if (!name) return AK_ERR(err, AK_ERR_INVALID_ARG, "digest kind name is NULL");
  for (int k = 0; k < KV_DIGEST_N_KINDS; k++) {
    if (strcmp(name, kv_digest_names[k]) == 0) {
      if (kind_p) *kind_p = (kv_digest_kind_t)k;
      return AK_OK;
    }
  }
  return AK_ERR(err, AK_ERR_INVALID_ARG,
                "unknown digest kind \"%s\" (expected centroid, sphere-max, sphere-center, sphere-mean, "
                "cuboid-max, cuboid-center or cuboid-mean)",
                name);
}

int32_t kv_digest_floats(kv_digest_kind_t kind, int32_t head_dim) {
  if (!kv_kind_valid(kind) || head_dim < 1 || head_dim > KV_DIGEST_MAX_HEAD_DIM) return -1;
  if (kv_kind_is_cuboid(kind)) return 2 * head_dim;
  if (kv_kind_is_sphere(kind)) return head_dim + 1;
  return head_dim; /* centroid */
}

/* Shape checks shared by build and score; messages name the public caller `fn`. */
static ak_status_t kv_shape_check(const char *fn, kv_digest_kind_t kind, int32_t n_kv_heads, int32_t head_dim,
                                  ak_err_t *err) {
  if (!kv_kind_valid(kind))
    return ak_err_set_fn(err, AK_ERR_INVALID_ARG, fn, "digest kind=%d is not a kv_digest_kind_t", (int)kind);
  if (n_kv_heads < 1 || n_kv_heads > KV_DIGEST_MAX_HEADS)
    return ak_err_set_fn(err, AK_ERR_INVALID_ARG, fn, "n_kv_heads=%d outside [1, %d]", n_kv_heads,
                         KV_DIGEST_MAX_HEADS);
  if (head_dim < 1 || head_dim > KV_DIGEST_MAX_HEAD_DIM)
    return ak_err_set_fn(err, AK_ERR_INVALID_ARG, fn, "head_dim=%d outside [1, %d]", head_dim,
                         KV_DIGEST_MAX_HEAD_DIM);
  return AK_OK;
}

/* --- build --- */

/* In the builders, `kh` points at token 0 of one KV head: key t, dimension i is
 * kh[t * tok_stride + i]. */

/* Cuboid digest of one KV head into ub[d], lb[d]. Dimension-outer so that the centre
 * and radius of a dimension need no scratch. */
static void kv_build_cuboid(kv_digest_kind_t kind, const float *kh, int32_t n_tokens, int64_t tok_stride,
                            int32_t head_dim, float *ub, float *lb) {
  for (int32_t i = 0; i < head_dim; i++) {
    float mx = kh[i], mn = kh[i];
    for (int32_t t = 1; t < n_tokens; t++) {
      float v = kh[(int64_t)t * tok_stride + i];
      if (v > mx) mx = v;
      if (v < mn) mn = v;
    }
    if (kind == KV_DIGEST_CUBOID_MAX) {
      ub[i] = mx;
      lb[i] = mn;
      continue;
    }
    double c = ((double)mx + (double)mn) / 2.0;
    double r;
    if (kind == KV_DIGEST_CUBOID_MEAN) {
      double sum = 0.0;
      for (int32_t t = 0; t < n_tokens; t++) sum += fabs(c - (double)kh[(int64_t)t * tok_stride + i]);
      r = sum / n_tokens;
    } else { /* KV_DIGEST_CUBOID_CENTER */
      double dmin = INFINITY, dmax = 0.0;
      for (int32_t t = 0; t < n_tokens; t++) {
        double dv = fabs(c - (double)kh[(int64_t)t * tok_stride + i]);
        if (dv < dmin) dmin = dv;
        if (dv > dmax) dmax = dv;
      }
      r = (dmin + dmax) / 2.0;
    }
    ub[i] = (float)(c + r);
    lb[i] = (float)(c - r);
  }
}

/* Sphere digest of one KV head into c[d] and r (at c[d]). */
static void kv_build_sphere(kv_digest_kind_t kind, const float *kh, int32_t n_tokens, int64_t tok_stride,
                            int32_t head_dim, float *c) {
  for (int32_t i = 0; i < head_dim; i++) {
    float mx = kh[i], mn = kh[i];
    for (int32_t t = 1; t < n_tokens; t++) {
      float v = kh[(int64_t)t * tok_stride + i];
      if (v > mx) mx = v;
      if (v < mn) mn = v;
    }
    c[i] = (float)(((double)mx + (double)mn) / 2.0);
  }
  double nmin = INFINITY, nmax = 0.0, nsum = 0.0;
  for (int32_t t = 0; t < n_tokens; t++) {
    const float *k = kh + (int64_t)t * tok_stride;
    double ss = 0.0;
    for (int32_t i = 0; i < head_dim; i++) {
      double dv = (double)c[i] - (double)k[i];
      ss += dv * dv;
    }
    double n = sqrt(ss);
    if (n < nmin) nmin = n;
    if (n > nmax) nmax = n;
    nsum += n;
  }
  double r;
  if (kind == KV_DIGEST_SPHERE_MAX)
    r = nmax;
  else if (kind == KV_DIGEST_SPHERE_CENTER)
    r = (nmin + nmax) / 2.0;
  else /* KV_DIGEST_SPHERE_MEAN */
    r = nsum / n_tokens;
  float rf = (float)r;
  /* sphere-max is a bound: never round its radius down. */
  if (kind == KV_DIGEST_SPHERE_MAX && (double)rf < r) rf = nextafterf(rf, INFINITY);
  c[head_dim] = rf;
}

static void kv_build_centroid(const float *kh, int32_t n_tokens, int64_t tok_stride, int32_t head_dim,
                              float *mean) {
  for (int32_t i = 0; i < head_dim; i++) {
    double sum = 0.0;
    for (int32_t t = 0; t < n_tokens; t++) sum += (double)kh[(int64_t)t * tok_stride + i];
    mean[i] = (float)(sum / n_tokens);
  }
}

ak_status_t kv_digest_build(kv_digest_kind_t kind, const float *keys, int32_t n_tokens, int32_t n_kv_heads,
                            int32_t head_dim, ak_err_t *err, float *out) {
  AK_TRY(kv_shape_check(__func__, kind, n_kv_heads, head_dim, err));
  if (!keys || !out) return AK_ERR(err, AK_ERR_INVALID_ARG, "keys=%p, out=%p: both are required", (const void *)keys,
                                 (void *)out);
  if (n_tokens < 1) return AK_ERR(err, AK_ERR_INVALID_ARG, "n_tokens=%d must be >= 1", n_tokens);

  const int64_t tok_stride = (int64_t)n_kv_heads * head_dim;
  const int32_t n_floats = kv_digest_floats(kind, head_dim);
  for (int32_t g = 0; g < n_kv_heads; g++) {
    const float *kh = keys + (int64_t)g * head_dim; /* token 0 of KV head g */
    float *o = out + (int64_t)g * n_floats;
    if (kv_kind_is_cuboid(kind))
      kv_build_cuboid(kind, kh, n_tokens, tok_stride, head_dim, o, o + head_dim);
    else if (kv_kind_is_sphere(kind))
      kv_build_sphere(kind, kh, n_tokens, tok_stride, head_dim, o);
    else
      kv_build_centroid(kh, n_tokens, tok_stride, head_dim, o);
  }
  return AK_OK;
}

/* --- score --- */

static ak_status_t kv_score_shape_check(const char *fn, kv_digest_kind_t kind, int32_t n_heads,
                                        int32_t n_kv_heads, int32_t head_dim, ak_err_t *err) {
  AK_TRY(kv_shape_check(fn, kind, n_kv_heads, head_dim, err));
  if (n_heads < 1 || n_heads > KV_DIGEST_MAX_HEADS || n_heads % n_kv_heads != 0)
    return ak_err_set_fn(err, AK_ERR_INVALID_ARG, fn,
                         "n_heads=%d must be in [1, %d] and a multiple of n_kv_heads=%d", n_heads,
                         KV_DIGEST_MAX_HEADS, n_kv_heads);
  return AK_OK;
}

static ak_status_t kv_score_ptr_check(const char *fn, const float *digest, const float *q, const float *out,
                                      ak_err_t *err) {
  if (!digest || !q || !out)
    return ak_err_set_fn(err, AK_ERR_INVALID_ARG, fn, "digest=%p, q=%p, output=%p: all are required",
                         (const void *)digest, (const void *)q, (const void *)out);
  return AK_OK;
}

static ak_status_t kv_agg_check(const char *fn, kv_score_agg_t agg, ak_err_t *err) {
  if (agg != KV_SCORE_MEAN && agg != KV_SCORE_MAX)
    return ak_err_set_fn(err, AK_ERR_INVALID_ARG, fn, "agg=%d is neither KV_SCORE_MEAN nor KV_SCORE_MAX",
                         (int)agg);
  return AK_OK;
}

/* Score of one query head against one KV head's digest `dg`. */
static float kv_score_one(kv_digest_kind_t kind, const float *dg, const float *q, int32_t head_dim) {
  float s = 0.f;
  if (kv_kind_is_cuboid(kind)) {
    const float *ub = dg, *lb = dg + head_dim;
    for (int32_t i = 0; i < head_dim; i++) {
      float a = q[i] * ub[i], b = q[i] * lb[i];
      s += a > b ? a : b;
    }
    return s;
  }
  for (int32_t i = 0; i < head_dim; i++) s += q[i] * dg[i];
  if (kv_kind_is_sphere(kind)) {
    float qq = 0.f;
    for (int32_t i = 0; i < head_dim; i++) qq += q[i] * q[i];
    s += dg[head_dim] * sqrtf(qq);
  }
  return s;
}

/* Unchecked core of kv_digest_score: the aggregate over query heads. */
static float kv_score_page(kv_digest_kind_t kind, const float *digest, const float *q, int32_t n_heads,
                           int32_t n_kv_heads, int32_t head_dim, kv_score_agg_t agg) {
  const int32_t group = n_heads / n_kv_heads;
  const int32_t n_floats = kv_digest_floats(kind, head_dim);
  float acc = 0.f;
  for (int32_t h = 0; h < n_heads; h++) {
    float s = kv_score_one(kind, digest + (int64_t)(h / group) * n_floats, q + (int64_t)h * head_dim, head_dim);
    if (agg == KV_SCORE_MAX)
      acc = (h == 0 || s > acc) ? s : acc;
    else
      acc += s;
  }
  return agg == KV_SCORE_MAX ? acc : acc / (float)n_heads;
}

ak_status_t kv_digest_score_heads(kv_digest_kind_t kind, const float *digest, const float *q, int32_t n_heads,
                                  int32_t n_kv_heads, int32_t head_dim, ak_err_t *err, float *head_scores) {
  AK_TRY(kv_score_shape_check(__func__, kind, n_heads, n_kv_heads, head_dim, err));
  AK_TRY(kv_score_ptr_check(__func__, digest, q, head_scores, err));
  const int32_t group = n_heads / n_kv_heads;
  const int32_t n_floats = kv_digest_floats(kind, head_dim);
  for (int32_t h = 0; h < n_heads; h++)
    head_scores[h] =
        kv_score_one(kind, digest + (int64_t)(h / group) * n_floats, q + (int64_t)h * head_dim, head_dim);
  return AK_OK;
}

ak_status_t kv_digest_score(kv_digest_kind_t kind, const float *digest, const float *q, int32_t n_heads,
                            int32_t n_kv_heads, int32_t head_dim, kv_score_agg_t agg, ak_err_t *err,
                            float *score_p) {
  AK_TRY(kv_score_shape_check(__func__, kind, n_heads, n_kv_heads, head_dim, err));
  AK_TRY(kv_agg_check(__func__, agg, err));
  AK_TRY(kv_score_ptr_check(__func__, digest, q, score_p, err));
  *score_p = kv_score_page(kind, digest, q, n_heads, n_kv_heads, head_dim, agg);
  return AK_OK;
}

ak_status_t kv_digest_score_pages(kv_digest_kind_t kind, const float *digests, int64_t n_pages, const float *q,
                                  int32_t n_heads, int32_t n_kv_heads, int32_t head_dim, kv_score_agg_t agg,
                                  ak_err_t *err, float *scores) {
  AK_TRY(kv_score_shape_check(__func__, kind, n_heads, n_kv_heads, head_dim, err));
  AK_TRY(kv_agg_check(__func__, agg, err));
  if (n_pages < 0) return AK_ERR(err, AK_ERR_INVALID_ARG, "n_pages=%lld must be >= 0", (long long)n_pages);
  if (n_pages == 0) return AK_OK; /* pointers may be NULL: nothing to read or write */
  AK_TRY(kv_score_ptr_check(__func__, digests, q, scores, err));
  const int64_t page_floats = (int64_t)n_kv_heads * kv_digest_floats(kind, head_dim);
  for (int64_t p = 0; p < n_pages; p++)
    scores[p] = kv_score_page(kind, digests + p * page_floats, q, n_heads, n_kv_heads, head_dim, agg);
  return AK_OK;
}
