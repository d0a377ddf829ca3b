/* wk_cuda_try: the worker's CUDA-runtime check, shared by its .c files that call the
 * runtime directly (wk_forward_cuda.c, wk_arkvale_cuda.c): returns
 * AK_ERR_CUDA from the enclosing function with the call and the runtime's reason.
 * Private to worker/. */
#ifndef WK_CUDA_TRY_H
#define WK_CUDA_TRY_H

#include <cuda_runtime_api.h>

#include "ak_status.h"

#define WK_CUDA_TRY(err, call)                                                                        \
  do {                                                                                                \
    cudaError_t wk_e_ = (call);                                                                       \
    if (wk_e_ != cudaSuccess) return AK_ERR(err, AK_ERR_CUDA, "%s: %s", #call, cudaGetErrorString(wk_e_)); \
  } while (0)

#endif
