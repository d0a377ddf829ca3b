// kn_cuda_gemv: the decode-sized path of kn_cuda_gemm (kn_cuda_gemv.cu).
#ifndef KN_CUDA_GEMV_CUH
#define KN_CUDA_GEMV_CUH

#include "kn_cuda_internal.cuh"

#define KN_GEMV_MAX_TOK 8

// 1 if the GEMV path takes these (already validated) arguments: 1..8 rows, n_in a
// multiple of 8 and x, W 16-byte aligned.
int kn_gemv_applies(const kn_cuda_gemm_args_t *args);
ak_status_t kn_gemv_run(const kn_cuda_gemm_args_t *args, cudaStream_t stream, ak_err_t *err);

#endif
