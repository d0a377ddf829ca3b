// kn_cuda_gemv: the decode-sized path of kn_cuda_gemm (kn_cuda_gemv.cu).
#ifndef KN_CUDA_GEMV_CUH
#define KN_CUDA_GEMV_CUH

#include <string.h>

#include "kn_cuda_internal.cuh"

#define KN_GEMV_MAX_TOK KN_CUDA_DECODE_GEMM_MAX_TOK
#define KN_GEMV_MAX_PARTS 3
// AUTO sends calls of 3..8 rows on weights larger than this (n_in * n_out elements) to
// the tensor-core GEMV instead of the FMA GEMV (kn_gemm_route).
#define KN_GEMV_MAX_WEIGHT_ELEMS (8ll << 20)

// Outputs of a fused projection: W's rows split into n_parts consecutive ranges of
// rows[p] rows, part p written to y[p] ([n_tok, rows[p]]).
typedef struct {
  int n_parts;
  int64_t rows[KN_GEMV_MAX_PARTS];
  void *y[KN_GEMV_MAX_PARTS];
  void *swiglu_out; /* NULL, or (two parts of equal rows) bf16 silu(part 0) * part 1; y unused */
} kn_gemv_split_t;

// Up to three outputs over consecutive row ranges of W (a fused Q|K|V or gate|up
// weight): row r of W with begin[p] <= r < begin[p + 1] goes to
// y[p][t * (begin[p + 1] - begin[p]) + r - begin[p]]. The GEMV kernel's argument.
template <typename TY>
struct kn_gemv_parts_t {
  TY *y[KN_GEMV_MAX_PARTS];
  int64_t begin[KN_GEMV_MAX_PARTS + 1];
  int n_parts;
};

// split NULL: the one output args->y over all n_out rows.
template <typename TY>
static inline void kn_gemv_parts_fill(kn_gemv_parts_t<TY> *out, const kn_cuda_gemm_args_t *a,
                                      const kn_gemv_split_t *split) {
  memset(out, 0, sizeof *out);
  if (split) {
    out->n_parts = split->n_parts;
    for (int p = 0; p < split->n_parts; p++) {
      out->y[p] = static_cast<TY *>(split->y[p]);
      out->begin[p + 1] = out->begin[p] + split->rows[p];
    }
  } else {
    out->n_parts = 1;
    out->y[0] = static_cast<TY *>(a->y);
    out->begin[1] = a->n_out;
  }
}

// Stores (or with accumulate adds to) output `row` of x row t into the part holding it.
// Constant indices only: a runtime index into the parameter struct made every thread
// copy it to local memory (64 bytes a thread, ~25% extra traffic at 7B shapes; H100,
// session 5).
template <typename TY>
__device__ __forceinline__ void kn_gemv_store(const kn_gemv_parts_t<TY> &out, int64_t row, int t, float s,
                                              int accumulate) {
  TY *y = out.y[0];
  int64_t begin = 0, end = out.begin[1];
#pragma unroll
  for (int p = 1; p < KN_GEMV_MAX_PARTS; p++)
    if (p < out.n_parts && row >= out.begin[p]) y = out.y[p], begin = out.begin[p], end = out.begin[p + 1];
  TY *dst = y + (int64_t)t * (end - begin) + (row - begin);
  if (accumulate) s += kn_ld(dst);
  kn_st(dst, s);
}

// 1 if a GEMV kernel can take these (already validated) arguments: 1..8 rows, n_in a
// multiple of 8, x and W 16-byte aligned.
int kn_gemv_applies(const kn_cuda_gemm_args_t *args);
// The FMA GEMV (kn_cuda_gemv.cu), one warp per output row. split NULL: one output, args->y.
ak_status_t kn_gemv_run(const kn_cuda_gemm_args_t *args, const kn_gemv_split_t *split, cudaStream_t stream,
                        ak_err_t *err);

// The tensor-core GEMV (kn_cuda_gemv_mma.cu): same arguments, outputs and epilogues.
ak_status_t kn_gemv_mma_run(const kn_cuda_gemm_args_t *args, const kn_gemv_split_t *split, cudaStream_t stream,
                            ak_err_t *err);

#endif
