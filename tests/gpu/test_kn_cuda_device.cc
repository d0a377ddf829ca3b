// Tests for kernels/cuda/kn_cuda_device.cu: device discovery. The first test runs
// everywhere (a machine without a GPU must get a clean AK_ERR_NO_DEVICE, never a
// crash); the second carries the `gpu` label and needs a CUDA device.
#include <gtest/gtest.h>

#include <string>

extern "C" {
#include "kn_cuda.h"
}

TEST(KnCudaDevice, CountIsConsistentWithStatus) {
  ak_err_t err;
  ak_err_clear(&err);
  int n = -1;
  ak_status_t st = kn_cuda_device_count(&err, &n);
  if (st == AK_OK) {
    EXPECT_GE(n, 1);
  } else {
    EXPECT_EQ(st, AK_ERR_NO_DEVICE);
    EXPECT_EQ(n, 0);
    EXPECT_NE(std::string(err.msg).find("no CUDA device"), std::string::npos) << err.msg;
  }
}

TEST(KnCudaDeviceGpu, FindsTheGpu) {
  ak_err_t err;
  ak_err_clear(&err);
  int n = 0;
  ASSERT_EQ(kn_cuda_device_count(&err, &n), AK_OK) << err.msg;
  EXPECT_GE(n, 1);
}
