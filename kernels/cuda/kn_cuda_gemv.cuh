// kn_cuda_gemv: the decode-sized path of kn_cuda_gemm (kn_cuda_gemv.cu).
#ifndef KN_CUDA_GEMV_CUH
#define KN_CUDA_GEMV_CUH

#include "kn_cuda_internal.cuh"

#define KN_GEMV_MAX_TOK 8
#define KN_GEMV_MAX_PARTS 3
// Weights larger than this (n_in * n_out elements) go to cuBLASLt even for few rows.
#define KN_GEMV_MAX_WEIGHT_ELEMS (8ll << 20)

// Outputs of a fused projection: W's rows split into n_parts consecutive ranges of
// rows[p] rows, part p written to y[p] ([n_tok, rows[p]]).
typedef struct {
  int n_parts;
  int64_t rows[KN_GEMV_MAX_PARTS];
  void *y[KN_GEMV_MAX_PARTS];
} kn_gemv_split_t;

// 1 if the GEMV path takes these (already validated) arguments: 1..8 rows, n_in a
// multiple of 8, x and W 16-byte aligned, and W no larger than KN_GEMV_MAX_WEIGHT_ELEMS.
int kn_gemv_applies(const kn_cuda_gemm_args_t *args);
// split NULL: one output, args->y.
ak_status_t kn_gemv_run(const kn_cuda_gemm_args_t *args, const kn_gemv_split_t *split, cudaStream_t stream,
                        ak_err_t *err);

#endif
