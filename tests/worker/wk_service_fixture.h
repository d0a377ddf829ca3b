// The fixture both Worker-service test files start from: a wk_service over the default
// model with the engine-thread hook installed (Hold(true) parks the engine thread before
// its next job, so a test can queue Steps behind it), and a client connected to it.
// Host memory must be back to where it was after teardown.
#ifndef WK_SERVICE_FIXTURE_H
#define WK_SERVICE_FIXTURE_H

#include <gtest/gtest.h>

#include <atomic>
#include <condition_variable>
#include <mutex>
#include <string>

extern "C" {
#include "ak_alloc.h"
#include "ak_rpc_client.h"
#include "wk_service.h"
}

#include "wk_service_test_util.h"

namespace wk_test {

class WkServiceFixture : public ::testing::Test {
 protected:
  wk_service_t *svc_ = nullptr;
  ak_rpc_client_t *cli_ = nullptr;
  int64_t host_bytes0_ = 0;
  uint64_t step_id_ = 0;
  // test hook: the engine thread waits before a job while hold_ is set
  std::mutex mu_;
  std::condition_variable cv_;
  bool hold_ = false;
  std::atomic<int> jobs_started_{0};

  static void BeforeJob(void *user) {
    auto *self = (WkServiceFixture *)user;
    std::unique_lock<std::mutex> g(self->mu_);
    self->jobs_started_++;
    self->cv_.notify_all();
    self->cv_.wait(g, [self] { return !self->hold_; });
  }
  void Hold(bool on) {
    {
      std::lock_guard<std::mutex> g(mu_);
      hold_ = on;
    }
    cv_.notify_all();
  }

  // A suite's own service parameters, set before the service is created.
  virtual void Params(wk_service_params_t *p) { (void)p; }

  void SetUp() override {
    if (!have_model()) GTEST_SKIP() << "model " << model_path() << " is absent (set ARKVALE_MODEL)";
    host_bytes0_ = ak_alloc_outstanding_bytes(AK_MEM_HOST);
    wk_service_params_t p = wk_service_params_default();
    p.engine = engine_params();
    p.test_before_job = &WkServiceFixture::BeforeJob;
    p.test_user = this;
    Params(&p);
    ak_err_t err;
    ASSERT_EQ(wk_service_create(&p, &err, &svc_), AK_OK) << err.msg;
    std::string target = "127.0.0.1:" + std::to_string(wk_service_port(svc_));
    ASSERT_EQ(ak_rpc_client_create(target.c_str(), &err, &cli_), AK_OK) << err.msg;
  }

  ak_status_t Call(const char *m, const ProtobufCMessage *req, const ProtobufCMessageDescriptor *d, MsgPtr *resp,
                   grpc_status_code *code = nullptr, std::string *msg = nullptr) {
    return unary_call(cli_, "arkvale.v1.Worker", m, req, d, resp, code, msg);
  }
  // Warmup with the worker's defaults; the response (NULL if it failed, which fails the test).
  const Arkvale__V1__WarmupResponse *Warmup(MsgPtr *keep) {
    Arkvale__V1__WarmupRequest q = ARKVALE__V1__WARMUP_REQUEST__INIT;
    EXPECT_EQ(Call("Warmup", &q.base, &arkvale__v1__warmup_response__descriptor, keep), AK_OK);
    return (const Arkvale__V1__WarmupResponse *)keep->get();
  }
  const Arkvale__V1__StepResponse *Step(StepBuilder &b, MsgPtr *keep, grpc_status_code *code = nullptr,
                                        std::string *msg = nullptr) {
    Call("Step", &b.get()->base, &arkvale__v1__step_response__descriptor, keep, code, msg);
    return (const Arkvale__V1__StepResponse *)keep->get();
  }

  void TearDown() override {
    if (!have_model()) return;
    ak_rpc_client_destroy(cli_);
    wk_service_destroy(svc_);
    EXPECT_EQ(ak_alloc_outstanding_bytes(AK_MEM_HOST), host_bytes0_) << "host memory leaked";
  }
};

}  // namespace wk_test

#endif
