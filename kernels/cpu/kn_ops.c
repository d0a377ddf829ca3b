/* kn_ops: the small ops of a forward pass — embedding lookup, RMSNorm, residual add,
 * SwiGLU, RoPE, KV store, argmax. Each splits its rows over the pool when there is
 * enough work to pay for waking it (decode rows of 576 floats are not). */
#include <math.h>

#include "kn_cpu_internal.h"

/* Below this many elements an op runs on the calling thread: a fork-join costs
 * about a microsecond, as much as adding 8k floats. */
enum { KN_PAR_MIN_ELEMS = 16384 };

static int kn_par_threads(const kn_cpu_t *cpu, int64_t n_elems) {
  return n_elems >= KN_PAR_MIN_ELEMS ? cpu->n_threads : 1;
}

/* Runs fn over [0, n) in chunks claimed from an atomic counter (on the pool, or
 * inline): a descheduled thread's share is taken by the others. */
typedef void (*kn_range_fn)(void *ctx, int64_t begin, int64_t end);
typedef struct {
  kn_range_fn fn;
  void *ctx;
  int64_t n;
  int64_t chunk;
  atomic_llong next;
} kn_range_job_t;

static void kn_range_job(void *ctx, int thread_idx, int n_threads) {
  kn_range_job_t *j = ctx;
  (void)thread_idx;
  (void)n_threads;
  for (;;) {
    int64_t b = atomic_fetch_add(&j->next, j->chunk);
    if (b >= j->n) return;
    j->fn(j->ctx, b, b + j->chunk < j->n ? b + j->chunk : j->n);
  }
}

static void kn_parallel_for(kn_cpu_t *cpu, int64_t n, int64_t align, int64_t work_elems,
                            kn_range_fn fn, void *ctx) {
  if (kn_par_threads(cpu, work_elems) == 1 || n < 2) {
    fn(ctx, 0, n);
    return;
  }
  kn_range_job_t j;
  j.fn = fn;
  j.ctx = ctx;
  j.n = n;
  int64_t n_chunks = (int64_t)cpu->n_threads * 4;
  j.chunk = ((n + n_chunks - 1) / n_chunks + align - 1) / align * align;
  atomic_init(&j.next, 0);
  ak_pool_run(cpu->pool, kn_range_job, &j);
}

/* ---- embedding ---- */

typedef struct {
  const kn_weight_t *table;
  size_t row_bytes;
  const int32_t *ids;
  float *out;
} kn_embed_ctx_t;

static void kn_embed_range(void *ctx, int64_t b, int64_t e) {
  kn_embed_ctx_t *c = ctx;
  for (int64_t i = b; i < e; i++)
    kn_dequant_row(c->table->type, (const uint8_t *)c->table->data + (size_t)c->ids[i] * c->row_bytes,
                   c->out + i * c->table->n_cols, c->table->n_cols);
}

ak_status_t kn_embed(kn_cpu_t *cpu, const kn_weight_t *table, const int32_t *ids, int64_t n_tok,
                     float *out, ak_err_t *err) {
  if (!cpu || !table || !table->data || !ids || !out)
    return AK_ERR(err, AK_ERR_INVALID_ARG, "NULL argument");
  if (n_tok <= 0 || table->n_rows <= 0 || table->n_cols <= 0)
    return AK_ERR(err, AK_ERR_INVALID_ARG, "n_tok=%lld n_rows=%lld n_cols=%lld must be > 0",
                  (long long)n_tok, (long long)table->n_rows, (long long)table->n_cols);
  if (table->type != AK_TYPE_F32 && table->type != AK_TYPE_F16 && table->type != AK_TYPE_BF16 &&
      table->type != AK_TYPE_Q4_0 && table->type != AK_TYPE_Q4_1 && table->type != AK_TYPE_Q8_0)
    return AK_ERR(err, AK_ERR_UNSUPPORTED, "embedding type %d is not supported", (int)table->type);
  size_t row_bytes = kn_row_bytes(table->type, table->n_cols);
  if (row_bytes == 0)
    return AK_ERR(err, AK_ERR_INVALID_ARG, "n_cols=%lld is not a multiple of %d for type %d",
                  (long long)table->n_cols, AK_QK, (int)table->type);
  for (int64_t i = 0; i < n_tok; i++)
    if (ids[i] < 0 || ids[i] >= table->n_rows)
      return AK_ERR(err, AK_ERR_RANGE, "ids[%lld]=%d outside vocab [0, %lld)", (long long)i, ids[i],
                    (long long)table->n_rows);
  kn_embed_ctx_t c = {table, row_bytes, ids, out};
  kn_parallel_for(cpu, n_tok, 1, n_tok * table->n_cols, kn_embed_range, &c);
  return AK_OK;
}

/* ---- RMSNorm ---- */

typedef struct {
  const float *x, *w;
  int64_t dim;
  float eps;
  float *out;
} kn_rmsnorm_ctx_t;

static void kn_rmsnorm_range(void *ctx, int64_t b, int64_t e) {
  kn_rmsnorm_ctx_t *c = ctx;
  const int64_t dim = c->dim;
  for (int64_t t = b; t < e; t++) {
    const float *x = c->x + t * dim; /* [dim] f32 */
    float *o = c->out + t * dim;
    /* As ggml: squares in float, summed in double (8 partial sums so the loop
     * vectorizes; the order differs from ggml's by far less than f32 rounding). */
    double part[8] = {0};
    int64_t i = 0;
    for (; i + 8 <= dim; i += 8)
      for (int k = 0; k < 8; k++) part[k] += (double)(x[i + k] * x[i + k]);
    for (; i < dim; i++) part[0] += (double)(x[i] * x[i]);
    double sum = 0.0;
    for (int k = 0; k < 8; k++) sum += part[k];
    const float mean = (float)(sum / (double)dim);
    const float scale = 1.0f / sqrtf(mean + c->eps);
    for (i = 0; i < dim; i++) o[i] = x[i] * scale * c->w[i];
  }
}

ak_status_t kn_rmsnorm(kn_cpu_t *cpu, const float *x, const float *w, int64_t n_tok, int64_t dim,
                       float eps, float *out) {
  if (!cpu || !x || !w || !out || n_tok <= 0 || dim <= 0 || !(eps >= 0.0f))
    return AK_ERR_INVALID_ARG;
  kn_rmsnorm_ctx_t c = {x, w, dim, eps, out};
  kn_parallel_for(cpu, n_tok, 1, n_tok * dim, kn_rmsnorm_range, &c);
  return AK_OK;
}

/* ---- element-wise ---- */

typedef struct {
  float *x;
  const float *y;
} kn_add_ctx_t;

static void kn_add_range(void *ctx, int64_t b, int64_t e) {
  kn_add_ctx_t *c = ctx;
  for (int64_t i = b; i < e; i++) c->x[i] += c->y[i];
}

void kn_add(kn_cpu_t *cpu, float *x, const float *y, int64_t n) {
  if (!cpu || !x || !y || n <= 0) return;
  kn_add_ctx_t c = {x, y};
  kn_parallel_for(cpu, n, 16, n, kn_add_range, &c);
}

void kn_silu_mul_c(const float *gate, const float *up, float *out, int64_t n) {
  for (int64_t i = 0; i < n; i++) {
    float g = gate[i];
    out[i] = g / (1.0f + expf(-g)) * up[i];
  }
}

typedef struct {
  const float *gate, *up;
  float *out;
  kn_isa_t isa;
} kn_silu_ctx_t;

static void kn_silu_range(void *ctx, int64_t b, int64_t e) {
  kn_silu_ctx_t *c = ctx;
  switch (c->isa) {
    case KN_ISA_AVX512: kn_silu_mul_avx512(c->gate + b, c->up + b, c->out + b, e - b); break;
    case KN_ISA_AVX2: kn_silu_mul_avx2(c->gate + b, c->up + b, c->out + b, e - b); break;
    default: kn_silu_mul_c(c->gate + b, c->up + b, c->out + b, e - b); break;
  }
}

void kn_silu_mul(kn_cpu_t *cpu, const float *gate, const float *up, float *out, int64_t n) {
  if (!cpu || !gate || !up || !out || n <= 0) return;
  kn_silu_ctx_t c = {gate, up, out, cpu->isa};
  kn_parallel_for(cpu, n, 16, n, kn_silu_range, &c);
}

/* ---- RoPE ---- */

/* Largest rot_dims / 2 we keep frequencies for on the stack. */
enum { KN_ROPE_MAX_PAIRS = 512 };

typedef struct {
  const kn_rope_args_t *a;
  const double *inv_freq; /* [rot_dims / 2] base^(-2i/rot_dims) */
} kn_rope_ctx_t;

static void kn_rope_range(void *ctx, int64_t b, int64_t e) {
  kn_rope_ctx_t *c = ctx;
  const kn_rope_args_t *a = c->a;
  const int n_pairs = a->rot_dims / 2;
  float cs[KN_ROPE_MAX_PAIRS], sn[KN_ROPE_MAX_PAIRS];
  for (int64_t t = b; t < e; t++) {
    /* The angle in double, reduced to [-pi, pi] before the float sincos: at
     * position 32k a float angle would already be off by ~2e-3 rad. */
    double pos = (double)a->pos[t] * (double)a->freq_scale;
    for (int i = 0; i < n_pairs; i++) {
      double th = pos * c->inv_freq[i];
      th -= 2.0 * M_PI * nearbyint(th * (0.5 / M_PI)); /* to [-pi, pi]: |th| <= 1e9 */
      cs[i] = cosf((float)th);
      sn[i] = sinf((float)th);
    }
    for (int h = 0; h < a->n_heads; h++) {
      float *x = a->x + (t * a->n_heads + h) * a->head_dim; /* [head_dim] f32 */
      if (a->mode == KN_ROPE_NEOX) {
        for (int i = 0; i < n_pairs; i++) {
          float x0 = x[i], x1 = x[i + n_pairs];
          x[i] = x0 * cs[i] - x1 * sn[i];
          x[i + n_pairs] = x0 * sn[i] + x1 * cs[i];
        }
      } else {
        for (int i = 0; i < n_pairs; i++) {
          float x0 = x[2 * i], x1 = x[2 * i + 1];
          x[2 * i] = x0 * cs[i] - x1 * sn[i];
          x[2 * i + 1] = x0 * sn[i] + x1 * cs[i];
        }
      }
    }
  }
}

ak_status_t kn_rope(kn_cpu_t *cpu, const kn_rope_args_t *a, ak_err_t *err) {
  if (!cpu || !a || !a->x || !a->pos) return AK_ERR(err, AK_ERR_INVALID_ARG, "NULL argument");
  if (a->n_tok <= 0 || a->n_heads <= 0 || a->head_dim <= 0)
    return AK_ERR(err, AK_ERR_INVALID_ARG, "n_tok=%lld n_heads=%d head_dim=%d must be > 0",
                  (long long)a->n_tok, a->n_heads, a->head_dim);
  if (a->rot_dims <= 0 || a->rot_dims > a->head_dim || a->rot_dims % 2 ||
      a->rot_dims / 2 > KN_ROPE_MAX_PAIRS)
    return AK_ERR(err, AK_ERR_INVALID_ARG, "rot_dims=%d must be even, in (0, head_dim=%d], <= %d",
                  a->rot_dims, a->head_dim, 2 * KN_ROPE_MAX_PAIRS);
  if (a->mode != KN_ROPE_NORM && a->mode != KN_ROPE_NEOX)
    return AK_ERR(err, AK_ERR_UNSUPPORTED, "rope mode %d is not supported", (int)a->mode);
  if (!(a->freq_base > 0.0f) || !(a->freq_scale > 0.0f))
    return AK_ERR(err, AK_ERR_INVALID_ARG, "freq_base=%g freq_scale=%g must be > 0",
                  (double)a->freq_base, (double)a->freq_scale);
  double inv_freq[KN_ROPE_MAX_PAIRS];
  for (int i = 0; i < a->rot_dims / 2; i++)
    inv_freq[i] = pow((double)a->freq_base, -2.0 * i / (double)a->rot_dims);
  kn_rope_ctx_t c = {a, inv_freq};
  kn_parallel_for(cpu, a->n_tok, 1, a->n_tok * a->n_heads * a->head_dim, kn_rope_range, &c);
  return AK_OK;
}

/* ---- KV store ---- */

typedef struct {
  const kn_paged_kv_t *kv;
  void *base;
  int32_t n_kv_heads, head_dim;
  const float *src;
  const int32_t *dst_page, *dst_slot;
  kn_isa_t isa;
} kn_kv_store_ctx_t;

static void kn_kv_store_range(void *ctx, int64_t b, int64_t e) {
  kn_kv_store_ctx_t *c = ctx;
  const kn_paged_kv_t *kv = c->kv;
  for (int64_t i = b; i < e; i++) {
    for (int32_t h = 0; h < c->n_kv_heads; h++) {
      int64_t off = (int64_t)c->dst_page[i] * kv->page_stride_elems + h * kv->head_stride_elems +
                    (int64_t)c->dst_slot[i] * c->head_dim;
      const float *s = c->src + (i * c->n_kv_heads + h) * c->head_dim; /* [head_dim] f32 */
      if (kv->dtype == KN_F32) {
        memcpy((float *)c->base + off, s, (size_t)c->head_dim * sizeof(float));
        continue;
      }
      uint16_t *d = (uint16_t *)c->base + off; /* [head_dim] f16 */
      switch (c->isa) {
        case KN_ISA_AVX512: kn_f32_to_f16_row_avx512(s, d, c->head_dim); break;
        case KN_ISA_AVX2: kn_f32_to_f16_row_avx2(s, d, c->head_dim); break;
        default:
          for (int32_t k = 0; k < c->head_dim; k++) d[k] = kn_f32_to_f16(s[k]);
          break;
      }
    }
  }
}

ak_status_t kn_kv_store(kn_cpu_t *cpu, const kn_paged_kv_t *kv, void *base, int32_t n_kv_heads,
                        int32_t head_dim, const float *src, const int32_t *dst_page,
                        const int32_t *dst_slot, int64_t n_tok, ak_err_t *err) {
  if (!cpu || !kv || !base || !src || !dst_page || !dst_slot)
    return AK_ERR(err, AK_ERR_INVALID_ARG, "NULL argument");
  if (n_tok <= 0 || n_kv_heads <= 0 || head_dim <= 0 || kv->page_tokens <= 0)
    return AK_ERR(err, AK_ERR_INVALID_ARG,
                  "n_tok=%lld n_kv_heads=%d head_dim=%d page_tokens=%d must be > 0",
                  (long long)n_tok, n_kv_heads, head_dim, kv->page_tokens);
  if (kv->dtype != KN_F32 && kv->dtype != KN_F16)
    return AK_ERR(err, AK_ERR_UNSUPPORTED, "KV dtype %d is not supported", (int)kv->dtype);
  if (kv->head_stride_elems < (int64_t)kv->page_tokens * head_dim ||
      kv->page_stride_elems < (int64_t)n_kv_heads * kv->head_stride_elems)
    return AK_ERR(err, AK_ERR_INVALID_ARG,
                  "strides too small: head_stride_elems=%lld < page_tokens*head_dim=%lld or "
                  "page_stride_elems=%lld < n_kv_heads*head_stride_elems",
                  (long long)kv->head_stride_elems, (long long)kv->page_tokens * head_dim,
                  (long long)kv->page_stride_elems);
  for (int64_t i = 0; i < n_tok; i++)
    if (dst_page[i] < 0 || dst_slot[i] < 0 || dst_slot[i] >= kv->page_tokens)
      return AK_ERR(err, AK_ERR_RANGE, "token %lld: page %d slot %d (page_tokens=%d)",
                    (long long)i, dst_page[i], dst_slot[i], kv->page_tokens);
  kn_kv_store_ctx_t c = {kv, base, n_kv_heads, head_dim, src, dst_page, dst_slot, cpu->isa};
  kn_parallel_for(cpu, n_tok, 1, n_tok * n_kv_heads * head_dim, kn_kv_store_range, &c);
  return AK_OK;
}

/* ---- argmax ---- */

int64_t kn_argmax(const float *x, int64_t n) {
  if (!x || n <= 0) return -1;
  int64_t best = 0;
  for (int64_t i = 1; i < n; i++)
    if (x[i] > x[best]) best = i;
  return best;
}
