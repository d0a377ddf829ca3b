// kn_cuda_device: device discovery and accounted device / pinned memory.
#include "ak_alloc.h"
#include "kn_cuda_internal.cuh"

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

extern "C" ak_status_t kn_cuda_malloc(size_t n_bytes, ak_err_t *err, void **ptr_p) {
  if (!ptr_p) return ak_err_set(err, AK_ERR_INVALID_ARG, "kn_cuda_malloc: ptr_p is NULL");
  void *p = nullptr;
  cudaError_t e = cudaMalloc(&p, n_bytes ? n_bytes : 1);
  if (e != cudaSuccess)
    return ak_err_set(err, e == cudaErrorMemoryAllocation ? AK_ERR_NO_MEMORY : AK_ERR_CUDA,
                      "kn_cuda_malloc: %zu bytes: %s", n_bytes, cudaGetErrorString(e));
  ak_alloc_account(AK_MEM_DEVICE, (int64_t)n_bytes);
  *ptr_p = p;
  return AK_OK;
}

extern "C" void kn_cuda_free(void *ptr, size_t n_bytes) {
  if (!ptr) return;
  cudaFree(ptr);
  ak_alloc_account(AK_MEM_DEVICE, -(int64_t)n_bytes);
}

extern "C" ak_status_t kn_cuda_host_alloc(size_t n_bytes, ak_err_t *err, void **host_ptr_p, void **dev_ptr_p) {
  if (!host_ptr_p) return ak_err_set(err, AK_ERR_INVALID_ARG, "kn_cuda_host_alloc: host_ptr_p is NULL");
  void *h = nullptr;
  cudaError_t e = cudaHostAlloc(&h, n_bytes ? n_bytes : 1, cudaHostAllocMapped);
  if (e != cudaSuccess)
    return ak_err_set(err, AK_ERR_NO_MEMORY, "kn_cuda_host_alloc: %zu pinned bytes: %s", n_bytes,
                      cudaGetErrorString(e));
  if (dev_ptr_p) {
    void *d = nullptr;
    e = cudaHostGetDevicePointer(&d, h, 0);
    if (e != cudaSuccess) {
      cudaFreeHost(h);
      return ak_err_set(err, AK_ERR_CUDA, "kn_cuda_host_alloc: device address: %s", cudaGetErrorString(e));
    }
    *dev_ptr_p = d;
  }
  ak_alloc_account(AK_MEM_PINNED, (int64_t)n_bytes);
  *host_ptr_p = h;
  return AK_OK;
}

extern "C" void kn_cuda_host_free(void *host_ptr, size_t n_bytes) {
  if (!host_ptr) return;
  cudaFreeHost(host_ptr);
  ak_alloc_account(AK_MEM_PINNED, -(int64_t)n_bytes);
}
