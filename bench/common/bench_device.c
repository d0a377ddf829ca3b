/* bench_device: which GPU --device cuda runs on (bench_device.h). */
#include "bench_device.h"

#include <stdio.h>

#ifdef BENCH_HAVE_CUDA
#include <cuda_runtime_api.h>

#include "kn_cuda.h"

ak_status_t bench_cuda_probe(char *desc, size_t desc_bytes, ak_err_t *err) {
  int n_dev = 0;
  ak_status_t st = kn_cuda_device_count(err, &n_dev);
  if (st < 0) return st; /* AK_ERR_NO_DEVICE with the driver's reason */
  int dev = 0, drv = 0, rt = 0;
  struct cudaDeviceProp prop;
  cudaError_t ce = cudaGetDevice(&dev);
  if (ce == cudaSuccess) ce = cudaGetDeviceProperties(&prop, dev);
  if (ce != cudaSuccess)
    return AK_ERR(err, AK_ERR_CUDA, "cudaGetDeviceProperties: %s", cudaGetErrorString(ce));
  cudaDriverGetVersion(&drv);
  cudaRuntimeGetVersion(&rt);
  snprintf(desc, desc_bytes, "%s (sm_%d%d, %d SMs, %.1f GiB; CUDA driver %d.%d, runtime %d.%d)", prop.name,
           prop.major, prop.minor, prop.multiProcessorCount, (double)prop.totalGlobalMem / (1u << 30), drv / 1000,
           drv % 1000 / 10, rt / 1000, rt % 1000 / 10);
  return AK_OK;
}

#else

ak_status_t bench_cuda_probe(char *desc, size_t desc_bytes, ak_err_t *err) {
  (void)desc, (void)desc_bytes;
  return ak_err_set(err, AK_ERR_UNSUPPORTED, "this build has no CUDA backend (nvcc was not found at configure time)");
}

#endif
