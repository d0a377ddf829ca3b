/* co_metrics_http: the /metrics endpoint over libmicrohttpd (co_metrics_http.h). The
 * library runs its own thread; each request renders a fresh snapshot. */
#include "co_metrics_http.h"

#include <arpa/inet.h>
#include <microhttpd.h>
#include <netinet/in.h>
#include <string.h>

#include "ak_alloc.h"

struct co_metrics_http {
  co_metrics_t *m;
  struct MHD_Daemon *daemon;
  uint16_t port;
};

static enum MHD_Result co_reply(struct MHD_Connection *c, unsigned int code, const char *type, char *body,
                                size_t len, enum MHD_ResponseMemoryMode mode) {
  struct MHD_Response *r = MHD_create_response_from_buffer(len, body, mode);
  if (!r) return MHD_NO;
  MHD_add_response_header(r, "Content-Type", type);
  enum MHD_Result ret = MHD_queue_response(c, code, r);
  MHD_destroy_response(r);
  return ret;
}

static enum MHD_Result co_handle(void *cls, struct MHD_Connection *c, const char *url, const char *method,
                                 const char *version, const char *upload_data, size_t *upload_data_size,
                                 void **req_cls) {
  co_metrics_http_t *h = cls;
  (void)version;
  (void)upload_data;
  if (*req_cls == NULL) { /* first call for this request: headers only */
    *req_cls = h;
    return MHD_YES;
  }
  if (*upload_data_size != 0) { /* a body (of a refused POST): read and dropped; answer at its end */
    *upload_data_size = 0;
    return MHD_YES;
  }
  if (strcmp(method, "GET") != 0 && strcmp(method, "HEAD") != 0) {
    static char msg[] = "method not allowed: /metrics answers GET\n";
    return co_reply(c, MHD_HTTP_METHOD_NOT_ALLOWED, "text/plain", msg, sizeof msg - 1, MHD_RESPMEM_PERSISTENT);
  }
  if (strcmp(url, "/metrics") != 0) {
    static char msg[] = "not found: metrics are at /metrics\n";
    return co_reply(c, MHD_HTTP_NOT_FOUND, "text/plain", msg, sizeof msg - 1, MHD_RESPMEM_PERSISTENT);
  }
  char *text = NULL;
  size_t len = 0;
  ak_err_t err;
  ak_err_clear(&err);
  if (co_metrics_render(h->m, &err, &text, &len) < 0) {
    static char msg[] = "metrics could not be rendered\n";
    return co_reply(c, MHD_HTTP_INTERNAL_SERVER_ERROR, "text/plain", msg, sizeof msg - 1, MHD_RESPMEM_PERSISTENT);
  }
  enum MHD_Result ret =
      co_reply(c, MHD_HTTP_OK, "text/plain; version=0.0.4; charset=utf-8", text, len, MHD_RESPMEM_MUST_COPY);
  co_metrics_text_free(text);
  return ret;
}

ak_status_t co_metrics_http_start(co_metrics_t *m, const char *bind_ip, uint16_t port, ak_err_t *err,
                                  co_metrics_http_t **h_p) {
  if (!m || !bind_ip || !h_p) return AK_ERR(err, AK_ERR_INVALID_ARG, "m, bind_ip and h_p are required");
  struct sockaddr_in addr;
  memset(&addr, 0, sizeof addr);
  addr.sin_family = AF_INET;
  addr.sin_port = htons(port);
  if (inet_pton(AF_INET, bind_ip, &addr.sin_addr) != 1)
    return AK_ERR(err, AK_ERR_INVALID_ARG, "metrics address '%s' is not an IPv4 address", bind_ip);
  co_metrics_http_t *h = ak_host_alloc(sizeof *h, 1);
  if (!h) return AK_ERR(err, AK_ERR_NO_MEMORY, "metrics server");
  h->m = m;
  h->daemon = MHD_start_daemon(MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_ERROR_LOG, port, NULL, NULL, co_handle, h,
                               MHD_OPTION_SOCK_ADDR, (const struct sockaddr *)&addr, MHD_OPTION_END);
  if (!h->daemon) {
    ak_host_free(h, sizeof *h);
    return AK_ERR(err, AK_ERR_IO, "metrics server on %s:%u did not start (address in use?)", bind_ip,
                  (unsigned)port);
  }
  const union MHD_DaemonInfo *info = MHD_get_daemon_info(h->daemon, MHD_DAEMON_INFO_BIND_PORT);
  h->port = info ? info->port : port;
  *h_p = h;
  return AK_OK;
}

uint16_t co_metrics_http_port(const co_metrics_http_t *h) { return h ? h->port : 0; }

void co_metrics_http_stop(co_metrics_http_t *h) {
  if (!h) return;
  MHD_stop_daemon(h->daemon);
  ak_host_free(h, sizeof *h);
}
