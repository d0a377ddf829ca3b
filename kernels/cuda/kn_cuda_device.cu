// kn_cuda_device: device discovery for the CUDA backend (no kernels yet).
#include <cuda_runtime.h>

#include "kn_cuda.h"

extern "C" ak_status_t kn_cuda_device_count(ak_err_t *err, int *n_devices_p) {
  int n = 0;
  cudaError_t e = cudaGetDeviceCount(&n);
  if (e != cudaSuccess || n == 0) {
    *n_devices_p = 0;
    return ak_err_set(err, AK_ERR_NO_DEVICE, "kn_cuda_device_count: no CUDA device (%s)",
                      e != cudaSuccess ? cudaGetErrorString(e) : "0 devices");
  }
  *n_devices_p = n;
  return AK_OK;
}
