/* co_service_metrics.c: the metrics families of co_service (co_service.h, "Metrics")
 * and their updates. A failed update (the registry's series limit) is logged once and
 * never fails a request: metrics describe serving, they do not gate it. */
#include <stdio.h>
#include "ak_log.h"
#include "co_service_internal.h"
#include "pb_status.h"

#define CO_SVC_METRICS_MAX_SERIES 512

/* Seconds, from a fast CPU decode step to a long prompt behind a queue. */
static const double co_svc_ttft_bounds[] = {0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60};
static const double co_svc_tpot_bounds[] = {0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 1, 2.5};

/* gRPC's canonical code names (grpc/status.h order). */
static const char *co_svc_code_name(grpc_status_code c) {
  static const char *const names[] = {"OK", "CANCELLED", "UNKNOWN", "INVALID_ARGUMENT", "DEADLINE_EXCEEDED",
                                      "NOT_FOUND", "ALREADY_EXISTS", "PERMISSION_DENIED", "RESOURCE_EXHAUSTED",
                                      "FAILED_PRECONDITION", "ABORTED", "OUT_OF_RANGE", "UNIMPLEMENTED",
                                      "INTERNAL", "UNAVAILABLE", "DATA_LOSS", "UNAUTHENTICATED"};
  return c >= 0 && (size_t)c < sizeof names / sizeof names[0] ? names[c] : "UNKNOWN";
}

static void co_svc_metric_failed(co_service_t *s, ak_status_t st, const ak_err_t *err) {
  /* once: a full registry stays full */
  if (st != AK_OK && !atomic_exchange(&s->metrics_warned, 1))
    ak_log_write(AK_LOG_WARN, __func__, "metrics update failed (%s): %s; later failures are not logged",
                 ak_status_str(st), err->msg);
}

ak_status_t co_svc_metrics_init(co_service_t *s, ak_err_t *err) {
  if (s->p.metrics) s->metrics = s->p.metrics;
  else {
    AK_TRY(co_metrics_create(CO_SVC_METRICS_MAX_SERIES, err, &s->metrics));
    s->own_metrics = 1;
  }
  const char *code[] = {"code"}, *worker[] = {"worker"};
  struct {
    int32_t *id;
    const char *name, *help;
    co_metric_kind_t kind;
    const char *const *labels;
    int32_t n_labels;
    const double *bounds;
    int32_t n_bounds;
  } fams[] = {
      {&s->mid.requests, "arkvale_requests_total", "Generate calls by their final gRPC status code",
       CO_METRIC_COUNTER, code, 1, NULL, 0},
      {&s->mid.queue_depth, "arkvale_queue_depth", "Requests waiting for admission", CO_METRIC_GAUGE, NULL, 0, NULL,
       0},
      {&s->mid.running, "arkvale_running_requests", "Requests admitted to a worker group", CO_METRIC_GAUGE, NULL, 0,
       NULL, 0},
      {&s->mid.ttft, "arkvale_time_to_first_token_seconds", "From a request's arrival to its first token",
       CO_METRIC_HISTOGRAM, NULL, 0, co_svc_ttft_bounds, (int32_t)(sizeof co_svc_ttft_bounds / sizeof(double))},
      {&s->mid.tpot, "arkvale_time_per_output_token_seconds",
       "Per output token after a request's first: the time since its previous token", CO_METRIC_HISTOGRAM, NULL,
       0, co_svc_tpot_bounds, (int32_t)(sizeof co_svc_tpot_bounds / sizeof(double))},
      {&s->mid.gen_tokens, "arkvale_generated_tokens_total", "Tokens sampled and streamed", CO_METRIC_COUNTER, NULL,
       0, NULL, 0},
      {&s->mid.prompt_tokens, "arkvale_prompt_tokens_total", "Prompt tokens fed to workers", CO_METRIC_COUNTER,
       NULL, 0, NULL, 0},
      {&s->mid.serving, "arkvale_serving", "1 when grpc.health.v1 answers SERVING, else 0", CO_METRIC_GAUGE, NULL, 0,
       NULL, 0},
      {&s->mid.kv_resident, "arkvale_worker_kv_pages_resident", "KV pages held by sequences (all layers)",
       CO_METRIC_GAUGE, worker, 1, NULL, 0},
      {&s->mid.kv_backup, "arkvale_worker_kv_backup_pages", "KV pages in the backup tier", CO_METRIC_GAUGE, worker,
       1, NULL, 0},
      {&s->mid.kv_backed_up, "arkvale_worker_kv_pages_backed_up_total", "KV pages put to the backup tier",
       CO_METRIC_COUNTER, worker, 1, NULL, 0},
      {&s->mid.kv_recalled, "arkvale_worker_kv_pages_recalled_total", "KV pages copied back from the backup tier",
       CO_METRIC_COUNTER, worker, 1, NULL, 0},
      {&s->mid.steps, "arkvale_worker_steps_total", "Worker Steps answered (health canaries included)",
       CO_METRIC_COUNTER, worker, 1, NULL, 0},
      {&s->mid.canaries, "arkvale_worker_canaries_total", "Health canaries the worker answered",
       CO_METRIC_COUNTER, worker, 1, NULL, 0},
      {&s->mid.device_sampled, "arkvale_worker_device_sampled_steps_total",
       "Generate Steps whose samples rank 0 drew on the device", CO_METRIC_COUNTER, worker, 1, NULL, 0},
      {&s->mid.watchers, "arkvale_health_watchers", "Open grpc.health.v1 Watch calls", CO_METRIC_GAUGE, NULL, 0,
       NULL, 0},
  };
  for (size_t i = 0; i < sizeof fams / sizeof fams[0]; i++)
    AK_TRY(co_metrics_family(s->metrics, fams[i].name, fams[i].help, fams[i].kind, fams[i].labels,
                             fams[i].n_labels, fams[i].bounds, fams[i].n_bounds, err, fams[i].id));
  /* Series that exist before their first event, so a scrape shows zeros. */
  const int32_t zero_counters[] = {s->mid.gen_tokens, s->mid.prompt_tokens};
  for (size_t i = 0; i < sizeof zero_counters / sizeof zero_counters[0]; i++)
    AK_TRY(co_metrics_inc(s->metrics, zero_counters[i], NULL, 0.0, err));
  const int32_t zero_worker[] = {s->mid.kv_backed_up, s->mid.kv_recalled, s->mid.steps, s->mid.canaries,
                                 s->mid.device_sampled};
  for (int32_t g = 0; g < s->n_groups; g++)
    for (int32_t k = 0; k < s->groups[g].n_ranks; k++) {
      const char *wl[] = {s->groups[g].ranks[k].addr};
      for (size_t i = 0; i < sizeof zero_worker / sizeof zero_worker[0]; i++)
        AK_TRY(co_metrics_inc(s->metrics, zero_worker[i], wl, 0.0, err));
    }
  AK_TRY(co_metrics_set(s->metrics, s->mid.serving, NULL, 0.0, err));
  AK_TRY(co_metrics_set(s->metrics, s->mid.watchers, NULL, 0.0, err));
  AK_TRY(co_metrics_set(s->metrics, s->mid.queue_depth, NULL, 0.0, err));
  return co_metrics_set(s->metrics, s->mid.running, NULL, 0.0, err);
}

void co_svc_metric_end(co_service_t *s, ak_status_t st) {
  const char *code[] = {co_svc_code_name(pb_status_to_grpc(st))};
  ak_err_t err;
  co_svc_metric_failed(s, co_metrics_inc(s->metrics, s->mid.requests, code, 1.0, &err), &err);
}

void co_svc_metric_observe(co_service_t *s, int32_t id, double v) {
  ak_err_t err;
  co_svc_metric_failed(s, co_metrics_observe(s->metrics, id, NULL, v, &err), &err);
}

void co_svc_metric_add(co_service_t *s, int32_t id, double v) {
  ak_err_t err;
  co_svc_metric_failed(s, co_metrics_inc(s->metrics, id, NULL, v, &err), &err);
}

void co_svc_metric_rank_add(co_service_t *s, const co_svc_rank_t *r, int32_t id, double v) {
  ak_err_t err;
  const char *wl[] = {r->addr};
  co_svc_metric_failed(s, co_metrics_inc(s->metrics, id, wl, v, &err), &err);
}

void co_svc_metric_watchers_locked(co_service_t *s) {
  ak_err_t err;
  co_svc_metric_failed(s, co_metrics_set(s->metrics, s->mid.watchers, NULL, (double)s->n_watchers, &err), &err);
}

void co_svc_metric_kv(co_service_t *s, const co_svc_rank_t *r, const Arkvale__V1__KvCounters *kv) {
  if (!kv) return;
  const char *wl[] = {r->addr};
  ak_err_t err;
  if (kv->has_n_pages_used)
    co_svc_metric_failed(s, co_metrics_set(s->metrics, s->mid.kv_resident, wl, (double)kv->n_pages_used, &err), &err);
  if (kv->has_n_backups)
    co_svc_metric_failed(s, co_metrics_set(s->metrics, s->mid.kv_backup, wl, (double)kv->n_backups, &err), &err);
  if (kv->step) {
    co_svc_metric_failed(s, co_metrics_inc(s->metrics, s->mid.kv_backed_up, wl, (double)kv->step->backups, &err),
                         &err);
    co_svc_metric_failed(s, co_metrics_inc(s->metrics, s->mid.kv_recalled, wl, (double)kv->step->recalls, &err),
                         &err);
  }
}

void co_svc_metric_sched(co_service_t *s) {
  co_sched_stats_t st;
  co_sched_stats(s->sched, &st);
  ak_err_t err;
  co_svc_metric_failed(s, co_metrics_set(s->metrics, s->mid.queue_depth, NULL, (double)st.n_queued, &err), &err);
  co_svc_metric_failed(s, co_metrics_set(s->metrics, s->mid.running, NULL, (double)st.n_running, &err), &err);
}
