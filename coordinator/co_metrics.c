/* co_metrics: registry and Prometheus text rendering (co_metrics.h).
 *
 * Layout: families[n_families] (name, help, kind, label names, bounds) and one flat
 * array of series[max_series], each pointing at its family and owning a copy of its
 * label values. A series is found by a linear scan of its family's series: the
 * coordinator has a few dozen series, and the scan keeps the code free of a hash table.
 * One mutex guards everything. */
#include "co_metrics.h"

#include <math.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ak_alloc.h"

#define CO_METRICS_MAX_FAMILIES 64

typedef struct {
  char *name;
  char *help;
  co_metric_kind_t kind;
  int32_t n_labels;
  char *labels[CO_METRICS_MAX_LABELS];
  int32_t n_bounds;
  double bounds[CO_METRICS_MAX_BUCKETS];
} co_family_t;

typedef struct {
  int32_t family;
  char *values[CO_METRICS_MAX_LABELS];
  double value;                             /* counter, gauge */
  uint64_t buckets[CO_METRICS_MAX_BUCKETS + 1]; /* histogram: per bucket, +Inf last */
  double sum;
  uint64_t count;
} co_series_t;

struct co_metrics {
  pthread_mutex_t mu;
  co_family_t families[CO_METRICS_MAX_FAMILIES];
  int32_t n_families;
  co_series_t *series;
  int32_t n_series, max_series;
};

static char *co_strdup(const char *s) {
  size_t n = strlen(s) + 1;
  char *d = malloc(n);
  if (d) memcpy(d, s, n);
  return d;
}

ak_status_t co_metrics_create(int32_t max_series, ak_err_t *err, co_metrics_t **m_p) {
  if (!m_p || max_series < 1) return AK_ERR(err, AK_ERR_INVALID_ARG, "m_p is NULL or max_series=%d < 1", max_series);
  co_metrics_t *m = ak_host_alloc(sizeof *m, 1);
  if (!m) return AK_ERR(err, AK_ERR_NO_MEMORY, "metrics registry");
  m->series = ak_host_alloc(sizeof(co_series_t) * (size_t)max_series, 1);
  if (!m->series) {
    ak_host_free(m, sizeof *m);
    return AK_ERR(err, AK_ERR_NO_MEMORY, "%d metric series", max_series);
  }
  m->max_series = max_series;
  pthread_mutex_init(&m->mu, NULL);
  *m_p = m;
  return AK_OK;
}

void co_metrics_destroy(co_metrics_t *m) {
  if (!m) return;
  for (int32_t i = 0; i < m->n_families; i++) {
    co_family_t *f = &m->families[i];
    free(f->name);
    free(f->help);
    for (int32_t k = 0; k < f->n_labels; k++) free(f->labels[k]);
  }
  for (int32_t i = 0; i < m->n_series; i++)
    for (int32_t k = 0; k < CO_METRICS_MAX_LABELS; k++) free(m->series[i].values[k]);
  pthread_mutex_destroy(&m->mu);
  ak_host_free(m->series, sizeof(co_series_t) * (size_t)m->max_series);
  ak_host_free(m, sizeof *m);
}

static int co_name_ok(const char *s, int colon) {
  if (!s || !*s) return 0;
  for (const char *c = s; *c; c++) {
    int alpha = (*c >= 'a' && *c <= 'z') || (*c >= 'A' && *c <= 'Z') || *c == '_' || (colon && *c == ':');
    int digit = *c >= '0' && *c <= '9';
    if (!alpha && !(digit && c != s)) return 0;
  }
  return 1;
}

ak_status_t co_metrics_family(co_metrics_t *m, const char *name, const char *help, co_metric_kind_t kind,
                              const char *const *label_names, int32_t n_labels, const double *bounds,
                              int32_t n_bounds, ak_err_t *err, int32_t *id_p) {
  if (!m || !id_p) return AK_ERR(err, AK_ERR_INVALID_ARG, "m or id_p is NULL");
  if (!co_name_ok(name, 1)) return AK_ERR(err, AK_ERR_INVALID_ARG, "metric name '%s' is not [a-zA-Z_:][a-zA-Z0-9_:]*",
                                          name ? name : "(null)");
  if (kind != CO_METRIC_COUNTER && kind != CO_METRIC_GAUGE && kind != CO_METRIC_HISTOGRAM)
    return AK_ERR(err, AK_ERR_INVALID_ARG, "%s: kind %d is not a co_metric_kind_t", name, (int)kind);
  if (n_labels < 0 || n_labels > CO_METRICS_MAX_LABELS || (n_labels > 0 && !label_names))
    return AK_ERR(err, AK_ERR_INVALID_ARG, "%s: %d labels (at most %d)", name, n_labels, CO_METRICS_MAX_LABELS);
  for (int32_t k = 0; k < n_labels; k++) {
    const char *l = label_names[k];
    if (!co_name_ok(l, 0) || strncmp(l, "__", 2) == 0 || (kind == CO_METRIC_HISTOGRAM && !strcmp(l, "le")))
      return AK_ERR(err, AK_ERR_INVALID_ARG, "%s: label name '%s' is not allowed", name, l ? l : "(null)");
    for (int32_t j = 0; j < k; j++)
      if (!strcmp(label_names[j], l)) return AK_ERR(err, AK_ERR_INVALID_ARG, "%s: label '%s' twice", name, l);
  }
  if (kind == CO_METRIC_HISTOGRAM) {
    if (n_bounds < 1 || n_bounds > CO_METRICS_MAX_BUCKETS || !bounds)
      return AK_ERR(err, AK_ERR_INVALID_ARG, "%s: %d histogram bounds (1..%d)", name, n_bounds,
                    CO_METRICS_MAX_BUCKETS);
    for (int32_t b = 0; b < n_bounds; b++)
      if (!isfinite(bounds[b]) || (b > 0 && !(bounds[b] > bounds[b - 1])))
        return AK_ERR(err, AK_ERR_INVALID_ARG, "%s: bound %d (%g) is not finite and above the one before", name, b,
                      bounds[b]);
  } else if (n_bounds != 0) {
    return AK_ERR(err, AK_ERR_INVALID_ARG, "%s: only histograms take bounds", name);
  }
  ak_status_t st = AK_OK;
  pthread_mutex_lock(&m->mu);
  for (int32_t i = 0; i < m->n_families && st == AK_OK; i++)
    if (!strcmp(m->families[i].name, name)) st = AK_ERR(err, AK_ERR_INVALID_ARG, "metric '%s' registered twice", name);
  if (st == AK_OK && m->n_families == CO_METRICS_MAX_FAMILIES)
    st = AK_ERR(err, AK_ERR_OVER_BUDGET, "%s: more than %d metric families", name, CO_METRICS_MAX_FAMILIES);
  if (st == AK_OK) {
    co_family_t *f = &m->families[m->n_families];
    memset(f, 0, sizeof *f);
    f->name = co_strdup(name);
    f->help = co_strdup(help ? help : "");
    int ok = f->name && f->help;
    for (int32_t k = 0; k < n_labels; k++) ok &= (f->labels[k] = co_strdup(label_names[k])) != NULL;
    if (!ok) {
      free(f->name);
      free(f->help);
      for (int32_t k = 0; k < n_labels; k++) free(f->labels[k]);
      memset(f, 0, sizeof *f);
      st = AK_ERR(err, AK_ERR_NO_MEMORY, "metric family %s", name);
    } else {
      f->kind = kind;
      f->n_labels = n_labels;
      f->n_bounds = n_bounds;
      for (int32_t b = 0; b < n_bounds; b++) f->bounds[b] = bounds[b];
      *id_p = m->n_families++;
    }
  }
  pthread_mutex_unlock(&m->mu);
  return st;
}

/* The series of (id, values), created when `create`; NULL with a message otherwise.
 * Called with the lock held. */
static co_series_t *co_series_get(co_metrics_t *m, int32_t id, const char *const *values, int create, ak_err_t *err,
                                  ak_status_t *st_p) {
  const co_family_t *f = &m->families[id];
  for (int32_t k = 0; k < f->n_labels; k++)
    if (!values || !values[k]) {
      *st_p = AK_ERR(err, AK_ERR_INVALID_ARG, "%s: label '%s' has no value", f->name, f->labels[k]);
      return NULL;
    }
  for (int32_t i = 0; i < m->n_series; i++) {
    co_series_t *s = &m->series[i];
    if (s->family != id) continue;
    int same = 1;
    for (int32_t k = 0; k < f->n_labels && same; k++) same = !strcmp(s->values[k], values[k]);
    if (same) return s;
  }
  if (!create) {
    *st_p = AK_ERR(err, AK_ERR_NOT_FOUND, "%s: no series with these labels", f->name);
    return NULL;
  }
  if (m->n_series == m->max_series) {
    *st_p = AK_ERR(err, AK_ERR_OVER_BUDGET, "%s: the registry holds its limit of %d series", f->name, m->max_series);
    return NULL;
  }
  co_series_t *s = &m->series[m->n_series];
  memset(s, 0, sizeof *s);
  s->family = id;
  for (int32_t k = 0; k < f->n_labels; k++)
    if (!(s->values[k] = co_strdup(values[k]))) {
      for (int32_t j = 0; j < k; j++) free(s->values[j]);
      memset(s, 0, sizeof *s);
      *st_p = AK_ERR(err, AK_ERR_NO_MEMORY, "%s: label values", f->name);
      return NULL;
    }
  m->n_series++;
  return s;
}

typedef enum { CO_OP_INC, CO_OP_SET, CO_OP_OBSERVE } co_op_t;

static ak_status_t co_update(co_metrics_t *m, int32_t id, const char *const *values, double v, co_op_t op,
                             ak_err_t *err) {
  if (!m) return AK_ERR(err, AK_ERR_INVALID_ARG, "m is NULL");
  ak_status_t st = AK_OK;
  pthread_mutex_lock(&m->mu);
  if (id < 0 || id >= m->n_families) {
    st = AK_ERR(err, AK_ERR_RANGE, "metric family %d of %d", id, m->n_families);
    goto out;
  }
  const co_family_t *f = &m->families[id];
  static const co_metric_kind_t need[] = {CO_METRIC_COUNTER, CO_METRIC_GAUGE, CO_METRIC_HISTOGRAM};
  static const char *const verb[] = {"inc", "set", "observe"};
  int fits = op == CO_OP_INC ? f->kind != CO_METRIC_HISTOGRAM : f->kind == need[op];
  if (!fits) {
    st = AK_ERR(err, AK_ERR_INVALID_ARG, "%s: %s does not apply to this kind of metric", f->name, verb[op]);
    goto out;
  }
  if (isnan(v) || (f->kind == CO_METRIC_COUNTER && v < 0)) {
    st = AK_ERR(err, AK_ERR_INVALID_ARG, "%s: value %g (%s)", f->name, v,
                isnan(v) ? "NaN" : "a counter only goes up");
    goto out;
  }
  co_series_t *s = co_series_get(m, id, values, 1, err, &st);
  if (!s) goto out;
  if (op == CO_OP_INC) s->value += v;
  else if (op == CO_OP_SET) s->value = v;
  else {
    int32_t b = 0;
    while (b < f->n_bounds && v > f->bounds[b]) b++;
    s->buckets[b]++;
    s->sum += v;
    s->count++;
  }
out:
  pthread_mutex_unlock(&m->mu);
  return st;
}

ak_status_t co_metrics_inc(co_metrics_t *m, int32_t id, const char *const *values, double v, ak_err_t *err) {
  return co_update(m, id, values, v, CO_OP_INC, err);
}
ak_status_t co_metrics_set(co_metrics_t *m, int32_t id, const char *const *values, double v, ak_err_t *err) {
  return co_update(m, id, values, v, CO_OP_SET, err);
}
ak_status_t co_metrics_observe(co_metrics_t *m, int32_t id, const char *const *values, double v, ak_err_t *err) {
  return co_update(m, id, values, v, CO_OP_OBSERVE, err);
}

ak_status_t co_metrics_value(co_metrics_t *m, int32_t id, const char *const *values, double *v_p, ak_err_t *err) {
  if (!m || !v_p) return AK_ERR(err, AK_ERR_INVALID_ARG, "m or v_p is NULL");
  ak_status_t st = AK_OK;
  pthread_mutex_lock(&m->mu);
  if (id < 0 || id >= m->n_families) {
    st = AK_ERR(err, AK_ERR_RANGE, "metric family %d of %d", id, m->n_families);
  } else {
    co_series_t *s = co_series_get(m, id, values, 0, err, &st);
    if (s) *v_p = m->families[id].kind == CO_METRIC_HISTOGRAM ? (double)s->count : s->value;
  }
  pthread_mutex_unlock(&m->mu);
  return st;
}

/* --- rendering --- */

typedef struct {
  char *p;
  size_t len, cap;
  int oom;
} co_buf_t;

static void co_put(co_buf_t *b, const char *fmt, ...) {
  if (b->oom) return;
  for (;;) {
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(b->p + b->len, b->cap - b->len, fmt, ap);
    va_end(ap);
    if (n < 0) {
      b->oom = 1;
      return;
    }
    if ((size_t)n < b->cap - b->len) {
      b->len += (size_t)n;
      return;
    }
    size_t cap = b->cap * 2 + (size_t)n + 1;
    char *q = realloc(b->p, cap);
    if (!q) {
      b->oom = 1;
      return;
    }
    b->p = q;
    b->cap = cap;
  }
}

/* The shortest of %.15g / %.17g that reads back as v; +Inf, -Inf, NaN as Prometheus. */
static void co_put_double(co_buf_t *b, double v) {
  if (isnan(v)) return co_put(b, "NaN");
  if (isinf(v)) return co_put(b, v > 0 ? "+Inf" : "-Inf");
  char s[40];
  snprintf(s, sizeof s, "%.15g", v);
  if (strtod(s, NULL) != v) snprintf(s, sizeof s, "%.17g", v);
  co_put(b, "%s", s);
}

static void co_put_escaped(co_buf_t *b, const char *s, int quote) {
  for (const char *c = s; *c; c++) {
    if (*c == '\\') co_put(b, "\\\\");
    else if (*c == '\n') co_put(b, "\\n");
    else if (quote && *c == '"') co_put(b, "\\\"");
    else co_put(b, "%c", *c);
  }
}

/* {a="x",b="y"} plus an optional le, or nothing when there are no labels. */
static void co_put_labels(co_buf_t *b, const co_family_t *f, const co_series_t *s, const double *le) {
  if (f->n_labels == 0 && !le) return;
  co_put(b, "{");
  for (int32_t k = 0; k < f->n_labels; k++) {
    co_put(b, "%s%s=\"", k ? "," : "", f->labels[k]);
    co_put_escaped(b, s->values[k], 1);
    co_put(b, "\"");
  }
  if (le) {
    co_put(b, "%sle=\"", f->n_labels ? "," : "");
    co_put_double(b, *le);
    co_put(b, "\"");
  }
  co_put(b, "}");
}

ak_status_t co_metrics_render(co_metrics_t *m, ak_err_t *err, char **text_p, size_t *len_p) {
  if (!m || !text_p || !len_p) return AK_ERR(err, AK_ERR_INVALID_ARG, "m, text_p or len_p is NULL");
  co_buf_t b = {malloc(4096), 0, 4096, 0};
  if (!b.p) return AK_ERR(err, AK_ERR_NO_MEMORY, "metrics text");
  b.p[0] = '\0';
  static const char *const type[] = {"counter", "gauge", "histogram"};
  pthread_mutex_lock(&m->mu);
  for (int32_t i = 0; i < m->n_families; i++) {
    const co_family_t *f = &m->families[i];
    co_put(&b, "# HELP %s ", f->name);
    co_put_escaped(&b, f->help, 0);
    co_put(&b, "\n# TYPE %s %s\n", f->name, type[f->kind]);
    for (int32_t j = 0; j < m->n_series; j++) {
      const co_series_t *s = &m->series[j];
      if (s->family != i) continue;
      if (f->kind != CO_METRIC_HISTOGRAM) {
        co_put(&b, "%s", f->name);
        co_put_labels(&b, f, s, NULL);
        co_put(&b, " ");
        co_put_double(&b, s->value);
        co_put(&b, "\n");
        continue;
      }
      uint64_t cum = 0;
      for (int32_t k = 0; k <= f->n_bounds; k++) {
        cum += s->buckets[k];
        double le = k < f->n_bounds ? f->bounds[k] : INFINITY;
        co_put(&b, "%s_bucket", f->name);
        co_put_labels(&b, f, s, &le);
        co_put(&b, " %llu\n", (unsigned long long)cum);
      }
      co_put(&b, "%s_sum", f->name);
      co_put_labels(&b, f, s, NULL);
      co_put(&b, " ");
      co_put_double(&b, s->sum);
      co_put(&b, "\n%s_count", f->name);
      co_put_labels(&b, f, s, NULL);
      co_put(&b, " %llu\n", (unsigned long long)s->count);
    }
  }
  pthread_mutex_unlock(&m->mu);
  if (b.oom) {
    free(b.p);
    return AK_ERR(err, AK_ERR_NO_MEMORY, "metrics text");
  }
  *text_p = b.p;
  *len_p = b.len;
  return AK_OK;
}

void co_metrics_text_free(char *text) { free(text); }
