// co_test_server: a test helper, not a product. Starts an in-process Worker service
// (wk_service, the real default model on the CPU) and the public Generation service
// (co_service) over it on loopback, prints "port N" on stdout, and serves until its
// stdin reaches end of file (the test closes the pipe, or dies); then shuts both down
// and exits 0. Exit 77 (ctest's skip code here) when the model file is absent, 1 when
// a service cannot start (the reason on stderr).
//
// The engine shape is the one tests/worker/wk_service_test_util.h uses (page 16,
// 4 sequences, 256 tokens of context, 64 tokens per step), so the clients' tests
// check the same server the C++ service tests do. Used by tools/python's test.
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>

extern "C" {
#include "co_service.h"
#include "wk_service.h"
}

namespace {

const char *ModelPath() {
  const char *env = getenv("ARKVALE_MODEL");
  return env && *env ? env : AK_MODEL_PATH;
}

}  // namespace

int main(int argc, char **argv) {
  long canary_ms = 200;
  for (int i = 1; i < argc; i++) {
    if (!strcmp(argv[i], "--canary-ms") && i + 1 < argc) {
      canary_ms = strtol(argv[++i], nullptr, 10);
    } else {
      fprintf(stderr, "usage: co_test_server [--canary-ms N]\n");
      return 2;
    }
  }
  FILE *f = fopen(ModelPath(), "rb");
  if (!f) {
    fprintf(stderr, "co_test_server: model %s is absent (set ARKVALE_MODEL)\n", ModelPath());
    return 77;
  }
  fclose(f);

  wk_service_params_t wp = wk_service_params_default();
  wp.engine = wk_engine_params_default();
  wp.engine.model_path = ModelPath();
  wp.engine.n_threads = 2;
  wp.engine.page_tokens = 16;
  wp.engine.max_seqs = 4;
  wp.engine.max_seq_tokens = 256;
  wp.engine.max_batch_tokens = 64;
  wp.listen_addr = "127.0.0.1:0";
  ak_err_t err;
  ak_err_clear(&err);
  wk_service_t *wk = nullptr;
  if (wk_service_create(&wp, &err, &wk) != AK_OK) {
    fprintf(stderr, "co_test_server: worker: %s\n", err.msg);
    return 1;
  }
  std::string waddr = "127.0.0.1:" + std::to_string(wk_service_port(wk));
  co_service_params_t cp = co_service_params_default();
  cp.model_path = ModelPath();
  cp.worker_addr = waddr.c_str();
  cp.max_batch_tokens = 64;
  cp.canary_period_ms = canary_ms;
  co_service_t *co = nullptr;
  if (co_service_create(&cp, &err, &co) != AK_OK) {
    fprintf(stderr, "co_test_server: coordinator: %s\n", err.msg);
    wk_service_destroy(wk);
    return 1;
  }
  printf("port %d\n", co_service_port(co));
  fflush(stdout);
  char buf[256];
  while (fread(buf, 1, sizeof buf, stdin) > 0) {
  }
  co_service_destroy(co);
  wk_service_destroy(wk);
  return 0;
}
