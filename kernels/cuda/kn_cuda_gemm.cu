// kn_cuda_gemm: the projections of a layer (QKV, o, gate+up, down, the LM head) as
// one cuBLASLt matmul each, bf16 operands with f32 accumulation. Not for: quantized
// weights (the CUDA backend keeps its weights as bf16) or general batched GEMMs.
//
// kn_cuda_gemm_split (a fused weight, its parts' outputs in separate buffers): parts of
// equal rows whose outputs lie at one constant spacing go as one strided-batched
// matmul (batch = the parts, x broadcast with batch stride 0, W's parts back to back),
// the rest one matmul per part. One launch instead of three for an MHA model's Q|K|V
// (and K|V of a GQA model) and two for gate|up: at decode sizes cuBLASLt otherwise
// picks a split-K kernel plus a reduction for each 4096-row part (H200 profile,
// longchat-7b batch 4: 3 x (11.9 + 3.4) us a layer for Q, K and V).
//
// Row-major to cuBLAS's column-major. A row-major [r, c] buffer read as column-major
// is the [c, r] matrix, its transpose. So, with the buffers as they are:
//
//   x  row-major [n_tok, n_in]   = column-major [n_in,  n_tok], ld n_in   (xᵀ)
//   W  row-major [n_out, n_in]   = column-major [n_in,  n_out], ld n_in   (Wᵀ)
//   y  row-major [n_tok, n_out]  = column-major [n_out, n_tok], ld n_out  (yᵀ)
//
// and y = x · Wᵀ  <=>  yᵀ = W · xᵀ = op_T(Wᵀ) · op_N(xᵀ): cuBLAS's D = α·op(A)·op(B) + β·C
// with A = the W buffer (layout [n_in, n_out], op T), B = the x buffer (layout
// [n_in, n_tok], op N), C = D = the y buffer (layout [n_out, n_tok]); m = n_out,
// n = n_tok, k = n_in. This is the "TN" case, the one every cuBLASLt kernel family
// supports, with k contiguous in both operands. `accumulate` is β = 1 with C = D
// (in place, same layout); β = 0 never reads y, so y may hold anything (NaN) before.
//
// The descriptors, layouts and the heuristic's algorithm for a shape are built on the
// first call and kept in a small direct-mapped cache in the handle (initialized in
// place with the *Init functions: no host or device allocation per call), so a decode
// step's GEMMs cost one cublasLtMatmul each.
#include <cublasLt.h>

#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "ak_alloc.h"
#include "kn_cuda_gemv.cuh"
#include "kn_cuda_internal.cuh"

// 32 MiB: NVIDIA's recommended cuBLAS workspace on Hopper; split-K and stream-K
// kernels for small n_tok (decode) draw on it.
#define KN_GEMM_WORKSPACE_BYTES ((size_t)32 << 20)
// Distinct (shape, alignment) keys kept: a model has ~5 weight shapes per layer kind
// times the token counts the scheduler produces; a miss only costs a heuristic query.
#define KN_GEMM_CACHE_SLOTS 256
// cuBLASLt's default (and largest useful) alignment assumption, in bytes.
#define KN_GEMM_MAX_ALIGN 256

// Returns AK_ERR_CUDA from the enclosing function when a cuBLAS(Lt) call fails, with
// the status's name and description.
#define KN_CUBLAS_TRY(err, what, call)                                                              \
  do {                                                                                              \
    cublasStatus_t kn_s_ = (call);                                                                  \
    if (kn_s_ != CUBLAS_STATUS_SUCCESS)                                                             \
      return ak_err_set_fn((err), AK_ERR_CUDA, __func__, "%s: %s (%s)", (what), cublasLtGetStatusName(kn_s_), \
                           cublasLtGetStatusString(kn_s_));                                         \
  } while (0)

typedef struct {
  int64_t n_tok, n_in, n_out;
  int32_t y_dtype;
  int32_t align_x, align_w, align_y; // bytes, powers of two <= KN_GEMM_MAX_ALIGN
  int32_t batch;                     // 1, or parts of one strided-batched matmul
  int64_t stride_y_elems;            // between the parts' outputs (batch > 1)
} kn_gemm_key_t;

typedef struct {
  int valid;     // 1: desc, layouts and algo built for key
  int no_algo;   // valid, but cuBLASLt had no algorithm (batched keys fall back to parts)
  kn_gemm_key_t key;
  cublasLtMatmulDescOpaque_t desc;
  cublasLtMatrixLayoutOpaque_t a_layout; // W buffer: [n_in, n_out] column-major, bf16
  cublasLtMatrixLayoutOpaque_t b_layout; // x buffer: [n_in, n_tok] column-major, bf16
  cublasLtMatrixLayoutOpaque_t d_layout; // y buffer: [n_out, n_tok] column-major, y_dtype (also C)
  cublasLtMatmulAlgo_t algo;
} kn_gemm_plan_t;

struct kn_cuda_blas {
  cublasLtHandle_t lt;
  cudaStream_t stream;
  void *workspace; // [KN_GEMM_WORKSPACE_BYTES] device
  size_t workspace_bytes;
  kn_gemm_plan_t plans[KN_GEMM_CACHE_SLOTS];
  kn_cuda_decode_gemm_t decode_gemm; // which kernel takes 1..8-row calls
};

extern "C" ak_status_t kn_cuda_blas_set_decode_gemm(kn_cuda_blas_t *blas, kn_cuda_decode_gemm_t mode, ak_err_t *err) {
  if (!blas) return AK_ERR(err, AK_ERR_INVALID_ARG, "blas is NULL");
  if (mode < KN_CUDA_DECODE_GEMM_AUTO || mode > KN_CUDA_DECODE_GEMM_MMA)
    return AK_ERR(err, AK_ERR_INVALID_ARG, "decode GEMM mode %d is not a kn_cuda_decode_gemm_t", (int)mode);
  blas->decode_gemm = mode;
  return AK_OK;
}

// The kernel a validated call goes to: a GEMV kernel for decode-sized calls it can take
// (kn_gemv_applies), cuBLASLt otherwise. AUTO: the FMA GEMV for one or two rows at any
// size and for 3..8 rows on weights of at most KN_GEMV_MAX_WEIGHT_ELEMS; the tensor-core
// GEMV for 3..8 rows above. Measured on the H100 (notes/device-runs.md, sessions 5-6):
// with one row the FMA GEMV streams 7B weights at 2.3-3.1 TB/s against cuBLASLt's
// 2.0-2.8 and needs no split-K reduction; in a llama3-8b decode step at 1k context it is
// ahead with 2 rows (6.42 vs 6.54 ms), even with 3 and behind cuBLASLt with 4 (6.91 /
// 6.81), where the tensor-core GEMV beats cuBLASLt (llama3-8b batch 4: 10k 8.54 -> 8.32
// ms, 30k 12.54 -> 12.31) but not the FMA GEMV with one row (5.78 vs 6.44 ms).
static kn_cuda_decode_gemm_t kn_gemm_route(const kn_cuda_blas_t *blas, const kn_cuda_gemm_args_t *a) {
  if (blas->decode_gemm == KN_CUDA_DECODE_GEMM_CUBLAS || !kn_gemv_applies(a)) return KN_CUDA_DECODE_GEMM_CUBLAS;
  if (blas->decode_gemm != KN_CUDA_DECODE_GEMM_AUTO) return blas->decode_gemm;
  return a->n_tok <= 2 || a->n_in * a->n_out <= KN_GEMV_MAX_WEIGHT_ELEMS ? KN_CUDA_DECODE_GEMM_FMA
                                                                         : KN_CUDA_DECODE_GEMM_MMA;
}


extern "C" ak_status_t kn_cuda_blas_create(kn_cuda_stream_t stream, ak_err_t *err, kn_cuda_blas_t **blas_p) {
  if (!blas_p) return AK_ERR(err, AK_ERR_INVALID_ARG, "blas_p is NULL");
  ak_status_t st;
  cublasStatus_t cs;
  kn_cuda_blas_t *b = (kn_cuda_blas_t *)ak_host_alloc(sizeof(*b), 1);
  if (!b) return AK_ERR(err, AK_ERR_NO_MEMORY, "%zu host bytes for the handle", sizeof(*b));
  b->stream = kn_stream(stream);
  cs = cublasLtCreate(&b->lt);
  if (cs != CUBLAS_STATUS_SUCCESS) {
    st = AK_ERR(err, AK_ERR_CUDA, "cublasLtCreate: %s (%s)", cublasLtGetStatusName(cs), cublasLtGetStatusString(cs));
    goto err_free_handle;
  }
  st = kn_cuda_malloc(KN_GEMM_WORKSPACE_BYTES, err, &b->workspace);
  if (st != AK_OK) goto err_destroy_lt;
  b->workspace_bytes = KN_GEMM_WORKSPACE_BYTES;
  *blas_p = b;
  return AK_OK;

err_destroy_lt:
  cublasLtDestroy(b->lt);
err_free_handle:
  ak_host_free(b, sizeof(*b));
  return st;
}

extern "C" void kn_cuda_blas_destroy(kn_cuda_blas_t *blas) {
  if (!blas) return;
  // Work queued on the stream may still use the workspace: cudaFree synchronizes the
  // device before releasing it, so the caller need not drain the stream first.
  kn_cuda_free(blas->workspace, blas->workspace_bytes);
  cublasLtDestroy(blas->lt);
  ak_host_free(blas, sizeof(*blas));
}

// The largest power of two (<= KN_GEMM_MAX_ALIGN) dividing the address.
static int32_t kn_gemm_align_bytes(const void *p) {
  uintptr_t a = (uintptr_t)p;
  int32_t align = KN_GEMM_MAX_ALIGN;
  while (align > 1 && a % (uintptr_t)align != 0) align /= 2;
  return align;
}

static ak_status_t kn_gemm_validate(const kn_cuda_blas_t *blas, const kn_cuda_gemm_args_t *a, ak_err_t *err) {
  const char *fn = "kn_cuda_gemm";
  if (!blas) return ak_err_set_fn(err, AK_ERR_INVALID_ARG, fn, "blas is NULL");
  if (!a) return ak_err_set_fn(err, AK_ERR_INVALID_ARG, fn, "args is NULL");
  if (a->n_tok < 0 || a->n_in < 1 || a->n_out < 1)
    return ak_err_set_fn(err, AK_ERR_INVALID_ARG, fn, "n_tok %lld, n_in %lld, n_out %lld: need n_tok >= 0, n_in and n_out >= 1",
                         (long long)a->n_tok, (long long)a->n_in, (long long)a->n_out);
  // cuBLASLt's kernels index with 32-bit dimensions.
  if (a->n_tok > INT32_MAX || a->n_in > INT32_MAX || a->n_out > INT32_MAX)
    return ak_err_set_fn(err, AK_ERR_INVALID_ARG, fn, "n_tok %lld, n_in %lld, n_out %lld: a dimension exceeds %d",
                         (long long)a->n_tok, (long long)a->n_in, (long long)a->n_out, INT32_MAX);
  if (a->y_dtype != KN_CUDA_F32 && a->y_dtype != KN_CUDA_BF16)
    return ak_err_set_fn(err, AK_ERR_INVALID_ARG, fn, "y_dtype %d: must be KN_CUDA_F32 or KN_CUDA_BF16", (int)a->y_dtype);
  if (a->accumulate != 0 && a->accumulate != 1)
    return ak_err_set_fn(err, AK_ERR_INVALID_ARG, fn, "accumulate %d: must be 0 or 1", a->accumulate);
  if (a->accumulate && a->y_dtype != KN_CUDA_F32)
    return ak_err_set_fn(err, AK_ERR_INVALID_ARG, fn, "accumulate needs an f32 y (y_dtype %d)", (int)a->y_dtype);
  if (a->n_tok == 0) return AK_OK; // nothing to read or write: the pointers may be NULL
  if (!a->x || !a->w || !a->y)
    return ak_err_set_fn(err, AK_ERR_INVALID_ARG, fn, "x %p, w %p, y %p: a pointer is NULL", a->x, a->w, a->y);
  size_t y_elem_bytes = a->y_dtype == KN_CUDA_F32 ? 4 : 2;
  if ((uintptr_t)a->x % 2 || (uintptr_t)a->w % 2 || (uintptr_t)a->y % y_elem_bytes)
    return ak_err_set_fn(err, AK_ERR_INVALID_ARG, fn, "x %p, w %p, y %p: not aligned to their elements (2, 2, %zu bytes)",
                         a->x, a->w, a->y, y_elem_bytes);
  return AK_OK;
}

// Fills `plan` for `key`: descriptors in place, then the heuristic's best algorithm
// under the handle's workspace and the operands' real alignment.
static ak_status_t kn_gemm_plan(kn_cuda_blas_t *blas, const kn_gemm_key_t *key, kn_gemm_plan_t *plan, ak_err_t *err) {
  plan->valid = 0;
  cudaDataType y_type = key->y_dtype == KN_CUDA_F32 ? CUDA_R_32F : CUDA_R_16BF;
  cublasLtMatmulDesc_t desc = (cublasLtMatmulDesc_t)&plan->desc;
  cublasLtMatrixLayout_t a_layout = (cublasLtMatrixLayout_t)&plan->a_layout;
  cublasLtMatrixLayout_t b_layout = (cublasLtMatrixLayout_t)&plan->b_layout;
  cublasLtMatrixLayout_t d_layout = (cublasLtMatrixLayout_t)&plan->d_layout;
  KN_CUBLAS_TRY(err, "cublasLtMatmulDescInit", cublasLtMatmulDescInit(desc, CUBLAS_COMPUTE_32F, CUDA_R_32F));
  cublasOperation_t op_t = CUBLAS_OP_T, op_n = CUBLAS_OP_N;
  KN_CUBLAS_TRY(err, "set TRANSA",
                cublasLtMatmulDescSetAttribute(desc, CUBLASLT_MATMUL_DESC_TRANSA, &op_t, sizeof(op_t)));
  KN_CUBLAS_TRY(err, "set TRANSB",
                cublasLtMatmulDescSetAttribute(desc, CUBLASLT_MATMUL_DESC_TRANSB, &op_n, sizeof(op_n)));
  KN_CUBLAS_TRY(err, "layout of w",
                cublasLtMatrixLayoutInit(a_layout, CUDA_R_16BF, (uint64_t)key->n_in, (uint64_t)key->n_out, key->n_in));
  KN_CUBLAS_TRY(err, "layout of x",
                cublasLtMatrixLayoutInit(b_layout, CUDA_R_16BF, (uint64_t)key->n_in, (uint64_t)key->n_tok, key->n_in));
  KN_CUBLAS_TRY(err, "layout of y",
                cublasLtMatrixLayoutInit(d_layout, y_type, (uint64_t)key->n_out, (uint64_t)key->n_tok, key->n_out));
  if (key->batch > 1) { /* the parts: W's back to back, x broadcast, y at the caller's spacing */
    int32_t n = key->batch;
    int64_t stride_w = key->n_out * key->n_in, stride_x = 0, stride_y = key->stride_y_elems;
    const struct {
      cublasLtMatrixLayout_t l;
      const int64_t *stride;
    } bl[3] = {{a_layout, &stride_w}, {b_layout, &stride_x}, {d_layout, &stride_y}};
    for (int i = 0; i < 3; i++) {
      KN_CUBLAS_TRY(err, "set BATCH_COUNT",
                    cublasLtMatrixLayoutSetAttribute(bl[i].l, CUBLASLT_MATRIX_LAYOUT_BATCH_COUNT, &n, sizeof(n)));
      KN_CUBLAS_TRY(err, "set STRIDED_BATCH_OFFSET",
                    cublasLtMatrixLayoutSetAttribute(bl[i].l, CUBLASLT_MATRIX_LAYOUT_STRIDED_BATCH_OFFSET, bl[i].stride,
                                                     sizeof(int64_t)));
    }
  }

  cublasLtMatmulPreferenceOpaque_t pref_mem;
  cublasLtMatmulPreference_t pref = (cublasLtMatmulPreference_t)&pref_mem;
  KN_CUBLAS_TRY(err, "cublasLtMatmulPreferenceInit", cublasLtMatmulPreferenceInit(pref));
  uint64_t ws = blas->workspace_bytes;
  uint32_t al_a = (uint32_t)key->align_w, al_b = (uint32_t)key->align_x, al_d = (uint32_t)key->align_y;
  KN_CUBLAS_TRY(err, "set MAX_WORKSPACE_BYTES",
                cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &ws, sizeof(ws)));
  KN_CUBLAS_TRY(err, "set MIN_ALIGNMENT_A_BYTES",
                cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, &al_a, sizeof(al_a)));
  KN_CUBLAS_TRY(err, "set MIN_ALIGNMENT_B_BYTES",
                cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES, &al_b, sizeof(al_b)));
  KN_CUBLAS_TRY(err, "set MIN_ALIGNMENT_C_BYTES",
                cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, &al_d, sizeof(al_d)));
  KN_CUBLAS_TRY(err, "set MIN_ALIGNMENT_D_BYTES",
                cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES, &al_d, sizeof(al_d)));

  cublasLtMatmulHeuristicResult_t result;
  int n_results = 0;
  KN_CUBLAS_TRY(err, "cublasLtMatmulAlgoGetHeuristic",
                cublasLtMatmulAlgoGetHeuristic(blas->lt, desc, a_layout, b_layout, d_layout, d_layout, pref, 1, &result,
                                               &n_results));
  plan->key = *key;
  plan->no_algo = 0;
  if (n_results < 1 && key->batch > 1) { /* remembered: the caller runs the parts one by one */
    plan->no_algo = 1;
    plan->valid = 1;
    return AK_OK;
  }
  if (n_results < 1)
    return ak_err_set_fn(err, AK_ERR_CUDA, "kn_cuda_gemm",
                         "no cuBLASLt algorithm for n_tok %lld, n_in %lld, n_out %lld, y_dtype %d, alignment x %d w %d y %d",
                         (long long)key->n_tok, (long long)key->n_in, (long long)key->n_out, (int)key->y_dtype,
                         (int)key->align_x, (int)key->align_w, (int)key->align_y);
  plan->algo = result.algo;
  plan->key = *key;
  plan->valid = 1;
  return AK_OK;
}

static uint64_t kn_gemm_key_hash(const kn_gemm_key_t *k) {
  uint64_t h = 1469598103934665603ull; // FNV-1a over the fields
  const int64_t v[9] = {k->n_tok, k->n_in, k->n_out, k->y_dtype, k->align_x, k->align_w, k->align_y, k->batch,
                        k->stride_y_elems};
  for (int i = 0; i < 9; i++) {
    h ^= (uint64_t)v[i];
    h *= 1099511628211ull;
  }
  return h ^ (h >> 29);
}

static int kn_gemm_key_eq(const kn_gemm_key_t *a, const kn_gemm_key_t *b) {
  return a->n_tok == b->n_tok && a->n_in == b->n_in && a->n_out == b->n_out && a->y_dtype == b->y_dtype &&
         a->align_x == b->align_x && a->align_w == b->align_w && a->align_y == b->align_y && a->batch == b->batch &&
         a->stride_y_elems == b->stride_y_elems;
}

// One cuBLASLt matmul of a validated call with n_tok > 0: `batch` parts of args->n_out
// rows each (W's parts back to back, outputs stride_y_elems apart), or one (batch 1).
// *ran_p = 0 when a batched key has no algorithm: the caller runs the parts itself.
static ak_status_t kn_gemm_lt(kn_cuda_blas_t *blas, const kn_cuda_gemm_args_t *args, int32_t batch,
                              int64_t stride_y_elems, int *ran_p, ak_err_t *err) {
  kn_gemm_key_t key;
  memset(&key, 0, sizeof(key));
  key.n_tok = args->n_tok;
  key.n_in = args->n_in;
  key.n_out = args->n_out;
  key.y_dtype = (int32_t)args->y_dtype;
  key.align_x = kn_gemm_align_bytes(args->x);
  key.align_w = kn_gemm_align_bytes(args->w);
  key.align_y = kn_gemm_align_bytes(args->y);
  key.batch = batch;
  if (batch > 1) { /* every part's operands must keep the alignment promised */
    size_t y_elem_bytes = args->y_dtype == KN_CUDA_F32 ? 4 : 2;
    int32_t a_w = kn_gemm_align_bytes((const void *)(uintptr_t)((size_t)args->n_out * (size_t)args->n_in * 2));
    int32_t a_y = kn_gemm_align_bytes((const void *)(uintptr_t)((size_t)stride_y_elems * y_elem_bytes));
    if (a_w < key.align_w) key.align_w = a_w;
    if (a_y < key.align_y) key.align_y = a_y;
    key.stride_y_elems = stride_y_elems;
  }
  kn_gemm_plan_t *plan = &blas->plans[kn_gemm_key_hash(&key) % KN_GEMM_CACHE_SLOTS];
  if (!plan->valid || !kn_gemm_key_eq(&plan->key, &key)) AK_TRY(kn_gemm_plan(blas, &key, plan, err));
  *ran_p = 0;
  if (plan->no_algo) return AK_OK;

  const float alpha = 1.0f, beta = args->accumulate ? 1.0f : 0.0f;
  cublasLtMatrixLayout_t d_layout = (cublasLtMatrixLayout_t)&plan->d_layout;
  KN_CUBLAS_TRY(err, "cublasLtMatmul",
                cublasLtMatmul(blas->lt, (cublasLtMatmulDesc_t)&plan->desc, &alpha, args->w,
                               (cublasLtMatrixLayout_t)&plan->a_layout, args->x, (cublasLtMatrixLayout_t)&plan->b_layout,
                               &beta, args->y, d_layout, args->y, d_layout, &plan->algo, blas->workspace,
                               blas->workspace_bytes, blas->stream));
  *ran_p = 1;
  return AK_OK;
}

extern "C" ak_status_t kn_cuda_gemm(kn_cuda_blas_t *blas, const kn_cuda_gemm_args_t *args, ak_err_t *err) {
  AK_TRY(kn_gemm_validate(blas, args, err));
  if (args->n_tok == 0) return AK_OK;
  /* decode-sized: a weight-streaming GEMV beats cuBLASLt's split-K kernels */
  kn_cuda_decode_gemm_t route = kn_gemm_route(blas, args);
  if (route == KN_CUDA_DECODE_GEMM_MMA) return kn_gemv_mma_run(args, NULL, blas->stream, err);
  if (route != KN_CUDA_DECODE_GEMM_CUBLAS) return kn_gemv_run(args, NULL, blas->stream, err);

  int ran = 0;
  return kn_gemm_lt(blas, args, 1, 0, &ran, err);
}

// rope's contract (kn_cuda.h): Q and K as the call's parts 0 and 1.
static ak_status_t kn_gemm_rope_check(const kn_cuda_gemm_split_args_t *a, ak_err_t *err) {
  const kn_cuda_rope_args_t *r = a->rope;
  static const char fn[] = "kn_cuda_gemm_split";
  if (a->y_dtype != KN_CUDA_F32 || a->accumulate || a->swiglu_out)
    return ak_err_set_fn(err, AK_ERR_INVALID_ARG, fn, "rope needs an f32 y, accumulate 0 and no swiglu_out");
  if ((void *)r->x != a->y[0] || (r->x2 && (a->n_parts < 2 || (void *)r->x2 != a->y[1])))
    return ak_err_set_fn(err, AK_ERR_INVALID_ARG, fn, "rope: x=%p must be y[0]=%p and x2=%p NULL or y[1]=%p",
                         (void *)r->x, a->y[0], (void *)r->x2, a->n_parts > 1 ? a->y[1] : NULL);
  if (r->n_tok != a->n_tok)
    return ak_err_set_fn(err, AK_ERR_INVALID_ARG, fn, "rope: n_tok=%lld must be n_tok=%lld", (long long)r->n_tok,
                         (long long)a->n_tok);
  return kn_rope_check(r, err);
}

// 1 when the GEMV can rotate (and store) in its epilogue (kn_cuda.h's list).
static bool kn_gemm_rope_fuses(const kn_cuda_gemm_split_args_t *a) {
  const kn_cuda_rope_args_t *r = a->rope;
  if (r->mode != KN_ROPE_MODE_NORM || r->head_dim % 2 || a->rows[0] != (int64_t)r->n_heads * r->head_dim) return false;
  if (r->x2 && a->rows[1] != (int64_t)r->n_heads2 * r->head_dim) return false;
  return !r->store || (a->n_parts == 3 && (void *)r->store->v == a->y[2] && a->rows[2] == a->rows[1]);
}

extern "C" ak_status_t kn_cuda_gemm_split(kn_cuda_blas_t *blas, const kn_cuda_gemm_split_args_t *args, ak_err_t *err) {
  if (!args || args->n_parts < 1 || args->n_parts > KN_GEMV_MAX_PARTS)
    return AK_ERR(err, AK_ERR_INVALID_ARG, "n_parts must be in [1, %d]", KN_GEMV_MAX_PARTS);
  int64_t n_out = 0;
  for (int p = 0; p < args->n_parts; p++) {
    if (args->rows[p] < 1 || !args->y[p])
      return AK_ERR(err, AK_ERR_INVALID_ARG, "part %d: rows=%lld, y=%p", p, (long long)args->rows[p], args->y[p]);
    n_out += args->rows[p];
  }
  kn_cuda_gemm_args_t whole = {.x = args->x, .w = args->w, .y = args->y[0], .y_dtype = args->y_dtype,
                               .n_tok = args->n_tok, .n_in = args->n_in, .n_out = n_out,
                               .accumulate = args->accumulate};
  AK_TRY(kn_gemm_validate(blas, &whole, err));
  if (args->n_tok == 0) return AK_OK;
  if (args->rope) AK_TRY(kn_gemm_rope_check(args, err));
  for (int p = 1; p < args->n_parts; p++)
    if ((uintptr_t)args->y[p] % (args->y_dtype == KN_CUDA_F32 ? 4u : 2u))
      return AK_ERR(err, AK_ERR_INVALID_ARG, "part %d: y=%p is not aligned to its elements", p, args->y[p]);
  if (args->swiglu_out) {
    if (args->n_parts != 2 || args->rows[0] != args->rows[1])
      return AK_ERR(err, AK_ERR_INVALID_ARG, "swiglu_out needs two parts of equal rows (n_parts %d, rows %lld/%lld)",
                    args->n_parts, (long long)args->rows[0], (long long)(args->n_parts > 1 ? args->rows[1] : 0));
    if (args->y_dtype != KN_CUDA_F32 || args->accumulate)
      return AK_ERR(err, AK_ERR_INVALID_ARG, "swiglu_out needs an f32 y and accumulate 0 (y_dtype %d, accumulate %d)",
                    (int)args->y_dtype, args->accumulate);
    if ((uintptr_t)args->swiglu_out % 2)
      return AK_ERR(err, AK_ERR_INVALID_ARG, "swiglu_out=%p is not aligned to bf16", args->swiglu_out);
  }
  kn_cuda_decode_gemm_t route = kn_gemm_route(blas, &whole);
  if (route != KN_CUDA_DECODE_GEMM_CUBLAS) {
    kn_gemv_split_t split;
    memset(&split, 0, sizeof split);
    split.n_parts = args->n_parts;
    for (int p = 0; p < args->n_parts; p++) {
      split.rows[p] = args->rows[p];
      split.y[p] = args->y[p];
    }
    split.swiglu_out = args->swiglu_out;
    const bool fuse = args->rope && kn_gemm_rope_fuses(args);
    split.rope = fuse ? args->rope : NULL;
    AK_TRY(route == KN_CUDA_DECODE_GEMM_MMA ? kn_gemv_mma_run(&whole, &split, blas->stream, err)
                                            : kn_gemv_run(&whole, &split, blas->stream, err));
    return fuse || !args->rope ? AK_OK : kn_cuda_rope(args->rope, blas->stream, err);
  }
  /* runs of equal parts at one output spacing as one batched matmul, the rest one each */
  size_t row_bytes = (size_t)args->n_in * 2, y_elem_bytes = args->y_dtype == KN_CUDA_F32 ? 4 : 2;
  int64_t r0 = 0;
  for (int p = 0; p < args->n_parts;) {
    int64_t rows = args->rows[p];
    ptrdiff_t gap = p + 1 < args->n_parts ? (const char *)args->y[p + 1] - (const char *)args->y[p] : 0;
    int q = p + 1;
    if (gap > 0 && (size_t)gap % y_elem_bytes == 0 && (size_t)gap >= (size_t)(args->n_tok * rows) * y_elem_bytes)
      while (q < args->n_parts && args->rows[q] == rows && (const char *)args->y[q] - (const char *)args->y[q - 1] == gap)
        q++;
    kn_cuda_gemm_args_t g = whole;
    g.w = (const char *)args->w + (size_t)r0 * row_bytes;
    g.y = args->y[p];
    g.n_out = rows;
    int ran = 0;
    if (q - p > 1) AK_TRY(kn_gemm_lt(blas, &g, q - p, (int64_t)((size_t)gap / y_elem_bytes), &ran, err));
    if (!ran) { /* a single part, or no batched algorithm: this part alone */
      q = p + 1;
      AK_TRY(kn_gemm_lt(blas, &g, 1, 0, &ran, err));
    }
    r0 += rows * (q - p);
    p = q;
  }
  if (args->rope) return kn_cuda_rope(args->rope, blas->stream, err);
  if (!args->swiglu_out) return AK_OK;
  kn_cuda_silu_mul_args_t sm = {.gate = (const float *)args->y[0], .up = (const float *)args->y[1],
                                .out = args->swiglu_out, .out_dtype = KN_CUDA_BF16, .n_tok = args->n_tok,
                                .n_ff = args->rows[0]};
  return kn_cuda_silu_mul(&sm, blas->stream, err);
}
