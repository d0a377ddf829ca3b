/* co_metrics: the coordinator's metrics registry and its Prometheus text rendering
 * (exposition format 0.0.4). Families are counters, gauges or histograms; each family
 * holds series keyed by label values (request status, worker group, ...).
 *
 * Registration happens once at start-up (co_metrics_family); updates (inc, set,
 * observe) come from any thread and take the registry's lock; rendering copies a
 * consistent snapshot into a string the caller frees with co_metrics_text_free.
 * co_metrics_http.h serves the text over HTTP.
 *
 * Names follow Prometheus: a metric name matches [a-zA-Z_:][a-zA-Z0-9_:]*, a label
 * name [a-zA-Z_][a-zA-Z0-9_]* and must not start with "__"; label values are any UTF-8
 * and are escaped on output (\\, \", \n). */
#ifndef CO_METRICS_H
#define CO_METRICS_H

#include <stddef.h>
#include <stdint.h>

#include "ak_status.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef enum {
  CO_METRIC_COUNTER = 0,   /* only goes up (inc with a value >= 0) */
  CO_METRIC_GAUGE = 1,     /* set or inc by any value */
  CO_METRIC_HISTOGRAM = 2, /* observe: cumulative buckets, _sum and _count */
} co_metric_kind_t;

#define CO_METRICS_MAX_LABELS 4   /* label names per family */
#define CO_METRICS_MAX_BUCKETS 32 /* histogram bounds per family (+Inf is implicit) */

typedef struct co_metrics co_metrics_t;

/* max_series bounds the series of all families together (every distinct label set
 * counts once): an update that would exceed it fails with AK_ERR_OVER_BUDGET rather
 * than letting a client-chosen label grow memory without end. */
ak_status_t co_metrics_create(int32_t max_series, ak_err_t *err, co_metrics_t **m_p);
void co_metrics_destroy(co_metrics_t *m);

/* Registers a family: label_names[n_labels] (may be 0), and for histograms the upper
 * bounds bounds[n_bounds], strictly increasing and finite. Returns its id in *id_p.
 * AK_ERR_INVALID_ARG names the bad name, bound or count; a name registered twice too. */
ak_status_t co_metrics_family(co_metrics_t *m, const char *name, const char *help, co_metric_kind_t kind,
                              const char *const *label_names, int32_t n_labels, const double *bounds,
                              int32_t n_bounds, ak_err_t *err, int32_t *id_p);

/* Updates the series of family id with these label values (n_labels of them, in the
 * family's label order; NULL when it has none). inc: counters and gauges (a counter
 * refuses a negative or NaN value); set: gauges; observe: histograms. */
ak_status_t co_metrics_inc(co_metrics_t *m, int32_t id, const char *const *label_values, double v, ak_err_t *err);
ak_status_t co_metrics_set(co_metrics_t *m, int32_t id, const char *const *label_values, double v, ak_err_t *err);
ak_status_t co_metrics_observe(co_metrics_t *m, int32_t id, const char *const *label_values, double v,
                               ak_err_t *err);

/* The value of a counter or gauge series, or a histogram's count, for tests and
 * internal use; AK_ERR_NOT_FOUND when that series has never been updated. */
ak_status_t co_metrics_value(co_metrics_t *m, int32_t id, const char *const *label_values, double *v_p,
                             ak_err_t *err);

/* Every family in registration order, series in first-update order: # HELP, # TYPE
 * and sample lines. *text_p is NUL-terminated, *len_p its length; free it with
 * co_metrics_text_free. */
ak_status_t co_metrics_render(co_metrics_t *m, ak_err_t *err, char **text_p, size_t *len_p);
void co_metrics_text_free(char *text);

#ifdef __cplusplus
}
#endif
#endif
