/* co_metrics_http: serves a co_metrics registry as Prometheus text over HTTP
 * (libmicrohttpd, its own polling thread): GET /metrics answers 200 with
 * "text/plain; version=0.0.4", any other path 404, any other method 405. */
#ifndef CO_METRICS_HTTP_H
#define CO_METRICS_HTTP_H

#include <stdint.h>

#include "co_metrics.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct co_metrics_http co_metrics_http_t;

/* Listens on bind_ip (IPv4 dotted quad, e.g. "127.0.0.1" or "0.0.0.0") at port (0 = the
 * system picks one: co_metrics_http_port tells which). m must outlive the server. */
ak_status_t co_metrics_http_start(co_metrics_t *m, const char *bind_ip, uint16_t port, ak_err_t *err,
                                  co_metrics_http_t **h_p);
uint16_t co_metrics_http_port(const co_metrics_http_t *h);
/* Stops serving (waits for requests in flight) and frees the server. Accepts NULL. */
void co_metrics_http_stop(co_metrics_http_t *h);

#ifdef __cplusplus
}
#endif
#endif
