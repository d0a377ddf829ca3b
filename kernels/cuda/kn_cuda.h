/* kn_cuda: the CUDA backend's public header — device discovery, accounted device and
 * pinned memory, and the ops. Each op lives in its own .cu (../shared/STYLE.md,
 * "Kernels"): a static __global__ kernel, a typed launcher, and the public function
 * below, which validates its arguments, dispatches dtype and head_dim through a switch
 * whose default is an explicit error, launches on `stream` and checks the launch.
 * Ops never synchronize and never allocate: scratch comes from the caller, sized by a
 * *_workspace_bytes function. Every op has a CPU reference (kernels/cpu/ or
 * kvpool/kv_digest.c) that its `gpu`-labelled test compares against.
 *
 * Pointers in *_args_t are device pointers unless the comment says host. Element types
 * on the device:
 *   residual stream and RoPE'd q/k     f32
 *   GEMM operands (weights, normed x)  bf16   (KN_CUDA_BF16)
 *   KV pages                           bf16 or f16 (kn_cuda_dtype_t)
 *
 * Errors: every function takes `ak_err_t *err` (may be NULL) and returns a status;
 * CUDA failures are AK_ERR_CUDA with the CUDA error string and the op's name.
 * Threading: functions are thread-safe; a stream has one owning thread. */
#ifndef KN_CUDA_H
#define KN_CUDA_H

#include <stddef.h>
#include <stdint.h>

#include "ak_status.h"

#ifdef __cplusplus
extern "C" {
#endif

/* cudaStream_t without including the CUDA headers in C code that only passes it on. */
typedef struct CUstream_st *kn_cuda_stream_t;

typedef enum {
  KN_CUDA_F32 = 0,
  KN_CUDA_F16 = 1,
  KN_CUDA_BF16 = 2,
} kn_cuda_dtype_t;

/* --- devices and memory --- */

/* Number of CUDA devices; 0 with AK_ERR_NO_DEVICE (and a message) when there are none
 * or the driver is absent. */
ak_status_t kn_cuda_device_count(ak_err_t *err, int *n_devices_p);

/* Device memory, counted under AK_MEM_DEVICE (ak_alloc_outstanding_bytes). free
 * accepts NULL and must be given the size that was allocated. */
ak_status_t kn_cuda_malloc(size_t n_bytes, ak_err_t *err, void **ptr_p);
void kn_cuda_free(void *ptr, size_t n_bytes);
/* Pinned host memory, mapped into the device's address space (a kernel may read it
 * over PCIe), counted under AK_MEM_PINNED. *dev_ptr_p (may be NULL) receives the
 * device-side address. */
ak_status_t kn_cuda_host_alloc(size_t n_bytes, ak_err_t *err, void **host_ptr_p, void **dev_ptr_p);
void kn_cuda_host_free(void *host_ptr, size_t n_bytes);

/* --- model ops --- */

/* out[t] = table[ids[t]] as f32. ids out of [0, n_vocab) -> the row is zeros and the
 * op's error flag (if given) is set to 1: kernels cannot return messages, so the
 * caller checks the flag after its next synchronization. */
typedef struct {
  const void *table;       /* [n_vocab, dim] table_dtype */
  kn_cuda_dtype_t table_dtype; /* F32, F16 or BF16 */
  const int32_t *ids;      /* [n_tok] */
  float *out;              /* [n_tok, dim] f32 */
  int64_t n_tok;
  int64_t dim;
  int64_t n_vocab;
  int32_t *bad_id_flag;    /* optional: set to 1 when an id is out of range */
} kn_cuda_embed_args_t;
ak_status_t kn_cuda_embed(const kn_cuda_embed_args_t *args, kn_cuda_stream_t stream, ak_err_t *err);

/* The fused residual step of a pre-norm block:
 *   if delta: x += delta          (f32, in place)
 *   out = x / rms(x) * weight     (rms over dim, with eps), written as out_dtype.
 * delta may be NULL (the first layer). */
typedef struct {
  float *x;                /* [n_tok, dim] f32, updated in place when delta */
  const float *delta;      /* [n_tok, dim] f32 or NULL */
  const float *weight;     /* [dim] f32 */
  void *out;               /* [n_tok, dim] out_dtype */
  kn_cuda_dtype_t out_dtype; /* F32 or BF16 */
  int64_t n_tok;
  int64_t dim;
  float eps;
} kn_cuda_rmsnorm_args_t;
ak_status_t kn_cuda_rmsnorm(const kn_cuda_rmsnorm_args_t *args, kn_cuda_stream_t stream, ak_err_t *err);

/* Writes n_tok rows of f32 K and V ([n_tok, n_kv_heads, head_dim]) into pages as
 * kv_dtype: token i goes to page dst_page[i], slot dst_slot[i], at
 *   page * page_stride_elems + head * head_stride_elems + slot * head_dim.
 * A token with a negative page or slot, or a slot whose row would end past
 * head_stride_elems, is skipped: its page is left as it was (kvpool owns the table).
 * kn_cuda_rope can do the same write in its launch (kn_cuda_rope_args_t.store). */
typedef struct {
  const float *k;                /* [n_tok, n_kv_heads, head_dim] f32 */
  const float *v;                /* [n_tok, n_kv_heads, head_dim] f32 */
  void *k_base;                  /* K pages, kv_dtype */
  void *v_base;                  /* V pages, kv_dtype */
  kn_cuda_dtype_t kv_dtype;      /* F16 or BF16 */
  int64_t page_stride_elems;
  int64_t head_stride_elems;
  int32_t n_kv_heads;
  int32_t head_dim;
  const int32_t *dst_page;       /* [n_tok] */
  const int32_t *dst_slot;       /* [n_tok] */
  int64_t n_tok;
} kn_cuda_kv_store_args_t;
ak_status_t kn_cuda_kv_store(const kn_cuda_kv_store_args_t *args, kn_cuda_stream_t stream, ak_err_t *err);

/* RoPE in place, exactly as kernels.h's kn_rope (same fields, device pointers;
 * mode 0 = NORM, 2 = NEOX).
 * store (optional): the same launch also writes every token's rotated K (x2) and its
 * V (store->v) into the pages, exactly as kn_cuda_kv_store(store) would after this
 * call, so that launch can be dropped. Its k must be x2, its n_tok, n_kv_heads and
 * head_dim the rope's n_tok, n_heads2 and head_dim, and its v neither x nor x2; the
 * rest is checked as kn_cuda_kv_store checks it ("store: " in the message). */
typedef struct {
  float *x;                /* [n_tok, n_heads, head_dim] f32 */
  const int32_t *pos;      /* [n_tok] */
  int64_t n_tok;
  int32_t n_heads;
  int32_t head_dim;
  int32_t rot_dims;
  float freq_base;
  float freq_scale;
  int32_t mode;
  float *x2;               /* NULL, or [n_tok, n_heads2, head_dim] f32 at the same positions
                            * (K beside Q), rotated in the same launch */
  int32_t n_heads2;
  const kn_cuda_kv_store_args_t *store; /* host struct, NULL: no store; see above */
  const float *table;      /* NULL, or kn_cuda_rope_table's output for these pos, n_tok,
                            * rot_dims, freq_base and freq_scale (the caller's promise: a
                            * device table cannot be checked): read instead of computing */
} kn_cuda_rope_args_t;
ak_status_t kn_cuda_rope(const kn_cuda_rope_args_t *args, kn_cuda_stream_t stream, ak_err_t *err);

/* cos and sin of every rotated pair at every position of a step, as kn_cuda_rope
 * computes them: table[(t * (rot_dims / 2) + i) * 2 + {0, 1}] (f32, n_tok * rot_dims
 * floats). Every layer of a step rotates at the same positions, so one launch a step
 * serves them all (kn_cuda_rope_args_t.table); the GEMV that rotates Q and K in its
 * epilogue (kn_cuda_gemm_split's rope) then reads two floats a value instead of a
 * double pow and a sincos. */
typedef struct {
  const int32_t *pos;      /* [n_tok] */
  int64_t n_tok;
  int32_t rot_dims;        /* even, 2..1024 */
  float freq_base;
  float freq_scale;
  float *table;            /* [n_tok, rot_dims / 2, 2] f32 */
} kn_cuda_rope_table_args_t;
ak_status_t kn_cuda_rope_table(const kn_cuda_rope_table_args_t *args, kn_cuda_stream_t stream, ak_err_t *err);

/* out = silu(gate) * up, as out_dtype. */
typedef struct {
  const float *gate;       /* [n_tok, n_ff] f32 */
  const float *up;         /* [n_tok, n_ff] f32 */
  void *out;               /* [n_tok, n_ff] out_dtype */
  kn_cuda_dtype_t out_dtype; /* F32 or BF16 */
  int64_t n_tok;
  int64_t n_ff;
} kn_cuda_silu_mul_args_t;
ak_status_t kn_cuda_silu_mul(const kn_cuda_silu_mul_args_t *args, kn_cuda_stream_t stream, ak_err_t *err);

/* Sampling on the device, one row of logits per sequence: greedy when temperature
 * <= 0, else softmax(logits / temperature) restricted to the top_k (0 = all) and to
 * the smallest set whose mass reaches top_p (1 = all), then to the tokens with
 * p >= min_p * p_max (0 = off), sampled with a counter-based PRNG from (seed, step).
 * Only token ids (and optionally logprobs) leave the device. Ties in greedy pick the
 * lowest id (as kn_argmax). The filter order and meanings are wk_sampler's
 * (worker/wk_sampler.h): repetition penalty -> top-k -> softmax(logit / T) -> top-p
 * (measured on the top-k distribution) -> min-p -> renormalize -> draw.
 *
 * Two ways to give the parameters:
 *  - rows == NULL: the scalar fields below apply to every row; the draw of row r
 *    hashes (seed, step, r). No repetition penalty (history_ids must be NULL).
 *  - rows != NULL: rows[r] (device memory) holds row r's parameters; the scalar
 *    temperature/top_k/top_p/min_p/seed/step are ignored. The draw hashes
 *    (rows[r].seed, rows[r].step, 0), so a sequence draws the same token whatever
 *    its row in the batch. The host cannot read rows[], so the kernel maps
 *    out-of-range values to defined behaviour instead of failing:
 *      temperature <= 0 or NaN: greedy;  +inf: FLT_MAX (uniform over the kept set)
 *      top_k <= 0 or >= n_vocab: off
 *      top_p outside (0, 1) or NaN: off (1)
 *      min_p outside (0, 1) or NaN: off (0)
 *      repetition_penalty 1, <= 0, NaN or inf: off
 *      history range: clipped to [0, n_history_ids); ids outside [0, n_vocab) are
 *      skipped; a token seen several times is penalised once.
 *    Callers that want wk_sampler's errors validate on the host before uploading.
 *
 * Repetition penalty (llama.cpp): a token in the row's history has its logit divided
 * by the penalty when positive, multiplied otherwise (the result clamped to +-FLT_MAX).
 * The kernel marks the history in a shared-memory bitmap of n_vocab bits, so it needs
 * n_vocab <= KN_CUDA_SAMPLE_PENALTY_MAX_VOCAB when history_ids is given.
 *
 * out_logprobs (optional): wk_sampler's logprob, the natural log of the chosen token's
 * probability under the final (filtered, renormalised) distribution; 0 for greedy. */
#define KN_CUDA_SAMPLE_PENALTY_MAX_VOCAB (40 * 1024 * 8) /* a 40 KiB bitmap per block */
typedef struct {
  uint64_t seed;
  uint64_t step;              /* advances the PRNG between calls */
  float temperature;
  int32_t top_k;
  float top_p;
  float min_p;
  float repetition_penalty;
  int32_t history_start_idx;  /* this row's history is history_ids[start, start + n) */
  int32_t n_history_ids;
  int32_t pad_;               /* keeps the struct 48 bytes, the same on host and device */
} kn_cuda_sample_row_t;
typedef struct {
  const float *logits;     /* [n_rows, n_vocab] f32 */
  int32_t *out_ids;        /* [n_rows] */
  int64_t n_rows;
  int64_t n_vocab;
  float temperature;
  int32_t top_k;
  float top_p;
  uint64_t seed;
  uint64_t step;           /* advances the PRNG between calls */
  float min_p;             /* scalar path; [0, 1), 0 = off (checked when sampling) */
  const kn_cuda_sample_row_t *rows; /* NULL, or [n_rows] device: per-row parameters */
  const int32_t *history_ids;       /* NULL, or [n_history_ids] int32 device (needs rows) */
  int64_t n_history_ids;            /* 0..INT32_MAX */
  float *out_logprobs;              /* NULL, or [n_rows] f32 device */
} kn_cuda_sample_args_t;
size_t kn_cuda_sample_workspace_bytes(const kn_cuda_sample_args_t *args);
ak_status_t kn_cuda_sample(const kn_cuda_sample_args_t *args, void *workspace, size_t workspace_bytes,
                           kn_cuda_stream_t stream, ak_err_t *err);

/* --- GEMM (cuBLAS) --- */

/* A cuBLASLt handle bound to one stream, with its 32 MiB device workspace (allocated
 * here, counted under AK_MEM_DEVICE) and a cache of per-shape plans. Used by the
 * stream's owning thread only (not thread-safe). destroy accepts NULL and may be
 * called with GEMMs still queued (the workspace is freed with cudaFree, which waits). */
typedef struct kn_cuda_blas kn_cuda_blas_t;
ak_status_t kn_cuda_blas_create(kn_cuda_stream_t stream, ak_err_t *err, kn_cuda_blas_t **blas_p);
void kn_cuda_blas_destroy(kn_cuda_blas_t *blas);

/* y[n_tok, n_out] (f32, or bf16 when y_dtype says so) = x[n_tok, n_in] (bf16) · Wᵀ,
 * W [n_out, n_in] bf16 row-major (GGUF's layout). Fused projections (QKV, gate+up)
 * are one call on concatenated weights. Computed in f32 (CUBLAS_COMPUTE_32F). Without
 * accumulate y is never read (it may hold NaN). n_tok 0 is a no-op (pointers may then
 * be NULL). Every argument is checked (AK_ERR_INVALID_ARG, with a message) before the
 * handle or CUDA is touched; cuBLAS failures are AK_ERR_CUDA with the status's name.
 * Pointers may have any alignment of their element type (slices of larger buffers).
 * W must not be written by the kernel launched just before the call on its stream: the
 * GEMV kernels start loading W while that kernel still runs (x and y wait for it, as
 * stream order says). Weights written by copies, or by kernels followed by a
 * synchronization (wk_model_cuda does both), are complete before any forward. */
typedef struct {
  const void *x;           /* [n_tok, n_in] bf16 */
  const void *w;           /* [n_out, n_in] bf16 */
  void *y;                 /* [n_tok, n_out] y_dtype */
  kn_cuda_dtype_t y_dtype; /* F32 or BF16 */
  int64_t n_tok;
  int64_t n_in;
  int64_t n_out;
  int accumulate;          /* 1: y += x · Wᵀ (f32 y only; the residual add of o/down) */
} kn_cuda_gemm_args_t;
ak_status_t kn_cuda_gemm(kn_cuda_blas_t *blas, const kn_cuda_gemm_args_t *args, ak_err_t *err);
/* Calls of 1..KN_CUDA_DECODE_GEMM_MAX_TOK rows (decode steps) with n_in % 8 == 0 and
 * 16-byte aligned x and W go to a weight-streaming GEMV kernel instead of cuBLASLt: the FMA GEMV
 * (kn_cuda_gemv.cu, one warp per output row) or the tensor-core GEMV
 * (kn_cuda_gemv_mma.cu, 16 rows a block). AUTO (the default): the FMA GEMV for every
 * call of one or two rows and for 3..8 rows up to 8M weight elements, the tensor-core
 * GEMV for 3..8 rows above, as measured on the H100 (notes/device-runs.md); CUBLAS, FMA
 * and MMA force one for every call it can take (benchmarks, tests). */
#define KN_CUDA_DECODE_GEMM_MAX_TOK 8
typedef enum {
  KN_CUDA_DECODE_GEMM_AUTO = 0,
  KN_CUDA_DECODE_GEMM_CUBLAS = 1,
  KN_CUDA_DECODE_GEMM_FMA = 2,
  KN_CUDA_DECODE_GEMM_MMA = 3, /* the tensor-core GEMV (kn_cuda_gemv_mma.cu) */
} kn_cuda_decode_gemm_t;
ak_status_t kn_cuda_blas_set_decode_gemm(kn_cuda_blas_t *blas, kn_cuda_decode_gemm_t mode, ak_err_t *err);


/* A fused projection: W's rows are n_parts consecutive blocks (Q|K|V, gate|up), part p
 * ([rows[p], n_in]) written to its own y[p] ([n_tok, rows[p]], y_dtype). One weight
 * stream through the GEMV for decode-sized calls; one GEMM per part otherwise. */
typedef struct {
  const void *x;           /* [n_tok, n_in] bf16 */
  const void *w;           /* [sum rows, n_in] bf16 */
  int n_parts;             /* 1..3 */
  int64_t rows[3];
  void *y[3];
  kn_cuda_dtype_t y_dtype;
  int64_t n_tok;
  int64_t n_in;
  int accumulate;
  void *swiglu_out;        /* NULL; or, for two parts of equal rows (gate|up) with an f32 y
                            * and accumulate 0: [n_tok, rows[0]] bf16 = silu(part 0) * part 1,
                            * rounded as kn_cuda_silu_mul. y[0] and y[1] are scratch then: the
                            * GEMV fuses the product into its epilogue and leaves them as they
                            * were; cuBLASLt writes them and kn_cuda_silu_mul follows. */
  /* NULL; or RoPE (and its optional K/V store) on the outputs, run as
   * kn_cuda_rope(rope) right after the product (host struct): rope->x must be y[0]
   * (Q), rope->x2 NULL or y[1] (K), n_tok the call's, y f32, accumulate 0, no
   * swiglu_out; checked as kn_cuda_rope checks it. A GEMV route rotates (and stores)
   * in its epilogue, no launch of its own, when the layout is NORM (adjacent pairs),
   * rows[0] = n_heads x head_dim, rows[1] = n_heads2 x head_dim and, with a store,
   * there are three parts and store->v is y[2]; otherwise kn_cuda_rope follows. The
   * outputs (and pages) are bit for bit those of the two calls either way. */
  const kn_cuda_rope_args_t *rope;
} kn_cuda_gemm_split_args_t;
ak_status_t kn_cuda_gemm_split(kn_cuda_blas_t *blas, const kn_cuda_gemm_split_args_t *args, ak_err_t *err);

/* --- paged attention --- */

/* The device twin of kernels.h's kn_paged_kv_t / kn_attn_args_t: a CSR page table per
 * sequence over KV pages [page][K or V][n_kv_heads][page_tokens][head_dim], q f32,
 * out bf16 or f32. Tokens of one step: tok_seq_idx says whose pages each query reads,
 * tok_kv_len how many of them (causal). head_dim 64, 128 or 256; page_tokens 1..256.
 * Decode tokens with long lists are split over blocks (flash-decoding) and merged;
 * the split needs the workspace. */
typedef struct {
  const void *k_base;
  const void *v_base;
  kn_cuda_dtype_t kv_dtype;      /* F16 or BF16 */
  int64_t page_stride_elems;
  int64_t head_stride_elems;
  int32_t page_tokens;
  int32_t n_seqs;
  const int32_t *indptr;         /* [n_seqs + 1] */
  const int32_t *indices;        /* [indptr[n_seqs]] */
  const int32_t *last_page_len;  /* [n_seqs] */
} kn_cuda_paged_kv_t;

typedef struct {
  const float *q;                /* [n_tok, n_heads, head_dim] f32 */
  void *out;                     /* [n_tok, n_heads, head_dim] out_dtype */
  kn_cuda_dtype_t out_dtype;     /* F32 or BF16 */
  int64_t n_tok;
  int32_t n_heads;
  int32_t n_kv_heads;
  int32_t head_dim;
  float scale;
  const int32_t *tok_seq_idx;    /* [n_tok] */
  const int32_t *tok_kv_len;     /* [n_tok] */
  int32_t max_kv_len;            /* host: an upper bound on tok_kv_len (sizes the split) */
  /* 1: query tiles of consecutive tokens of one sequence (prefill runs) go to the tiled
   * multi-query kernel, which reads each K/V row once per tile instead of once per
   * token; 0 (the default of a zeroed struct): every token on the per-token path.
   * 2: as 1, but tile blocks never split their keys over chunks (for tests and
   * benchmarks: 1 splits only grids too small to fill the GPU). Same results either
   * way (within f32 rounding). Set it only on steps that hold prefill runs: on a
   * decode-only step it costs an extra, empty launch. */
  int32_t prefill_tiles;
  kn_cuda_paged_kv_t kv;
  /* 1: the kernel launched just before this call on its stream writes neither the tables
   * above (tok_seq_idx, tok_kv_len, kv.indptr, kv.indices, kv.last_page_len) nor any K/V
   * row except this call's own tokens' (at most n_tok per sequence, its newest: the
   * step's K/V store), so a decode call (prefill_tiles 0) reads the tables and the older
   * rows while that kernel still runs (q and the newest rows wait for it). The forward's
   * full-cache steps; not ArkVale's, whose plan and gather kernels write the view and
   * pages right before. 0 (a zeroed struct): everything waits. Same outputs either way. */
  int32_t kv_stable;
} kn_cuda_attn_args_t;
size_t kn_cuda_attention_workspace_bytes(const kn_cuda_attn_args_t *args);
/* The split a call with these args launches: keys per chunk and chunks per token at
 * most (the grid is n_tok * n_kv_heads * n_chunks blocks). A captured launch is only
 * valid while these stay the same. 0s for args the call would refuse. */
void kn_cuda_attention_split(const kn_cuda_attn_args_t *args, int32_t *chunk_tokens, int32_t *n_chunks);
ak_status_t kn_cuda_attention(const kn_cuda_attn_args_t *args, void *workspace, size_t workspace_bytes,
                              kn_cuda_stream_t stream, ak_err_t *err);

/* --- ArkVale ops (semantics: kvpool/kv_digest.h, the CPU oracle) --- */

/* Digests of n_pages filled pages: page_ids[p]'s K (the pool layout above) -> digest
 * p, [n_pages][n_kv_heads][kv_digest_floats(kind, head_dim)] elements of digest_dtype.
 * kind is a kv_digest_kind_t value (0..6).
 * digest_dtype F32 (0, what a zeroed struct means) for every kind; F16 or BF16 only for
 * the cuboid kinds (4..6, else AK_ERR_UNSUPPORTED) and only equal to kv_dtype (else
 * AK_ERR_INVALID_ARG). Each ub is then rounded up and each lb down to digest_dtype
 * from the f32 value (kn_cuda_digest_narrow): cuboid-max (the min/max of keys of that
 * dtype) is exact; cuboid-center/-mean (c +- r, not a key) grow by at most one 16-bit
 * ulp per bound, never shrink. */
typedef struct {
  int32_t kind;
  const void *k_base;
  kn_cuda_dtype_t kv_dtype;
  int64_t page_stride_elems;
  int64_t head_stride_elems;
  int32_t page_tokens;
  int32_t n_kv_heads;
  int32_t head_dim;
  const int32_t *page_ids;       /* [n_pages] */
  void *digests;                 /* [n_pages][n_kv_heads][digest floats] digest_dtype, 4-byte
                                  * aligned (16-bit: 2-byte) */
  kn_cuda_dtype_t digest_dtype;  /* F32 (default), or F16 / BF16 = kv_dtype for cuboid kinds */
  int64_t n_pages;
} kn_cuda_digest_build_args_t;
ak_status_t kn_cuda_digest_build(const kn_cuda_digest_build_args_t *args, kn_cuda_stream_t stream, ak_err_t *err);
/* Host: n_pages cuboid digests (kind 4..6) in kv_digest's f32 layout (src, host
 * [n_pages][n_kv_heads][2 * head_dim] f32) -> the same layout in digest_dtype (dst,
 * host, F16 or BF16 bits), each ub rounded toward +inf and each lb toward -inf (exact
 * when representable; NaN stays NaN), as kn_cuda_digest_build rounds: the same keys
 * give the same bits either way, and the box never shrinks. For put_digest paths that
 * digest on the host. AK_ERR_UNSUPPORTED for another kind or dtype, AK_ERR_INVALID_ARG
 * for bad shapes or NULL pointers (dst untouched then). No CUDA call. */
ak_status_t kn_cuda_digest_narrow(int32_t kind, kn_cuda_dtype_t digest_dtype, const float *src, int64_t n_pages,
                                  int32_t n_kv_heads, int32_t head_dim, void *dst, ak_err_t *err);

/* Scores of every page of every sequence of a layer in one launch: page p of the
 * batch belongs to sequence page_seq[p] and is scored against that sequence's query
 * q [n_seqs][n_heads][head_dim]; scores[p] aggregates its query heads by mean (agg 0)
 * or max (agg 1), exactly as kv_digest_score on the digests widened to f32.
 * digest_dtype F32 (0, the default) for every kind; F16 or BF16 (half the bytes of
 * the scan) for the cuboid kinds only (else AK_ERR_UNSUPPORTED). */
typedef struct {
  int32_t kind;
  int32_t agg;
  const void *digests;           /* [n_pages][n_kv_heads][digest floats] digest_dtype, 16-byte
                                  * aligned */
  kn_cuda_dtype_t digest_dtype;  /* F32 (default), F16 or BF16 (cuboid kinds) */
  const int32_t *page_seq;       /* [n_pages] */
  const float *q;                /* [n_seqs][n_heads][head_dim] */
  float *scores;                 /* [n_pages] */
  int64_t n_pages;
  int32_t n_seqs;
  int32_t n_heads;
  int32_t n_kv_heads;
  int32_t head_dim;
} kn_cuda_digest_score_args_t;
ak_status_t kn_cuda_digest_score(const kn_cuda_digest_score_args_t *args, kn_cuda_stream_t stream, ak_err_t *err);

/* Top-k per segment in one launch: segment s is scores[seg_ptr[s] .. seg_ptr[s+1]);
 * out_idx[s*k + i] is the index (relative to the segment) of its i-th best score,
 * best first, ties to the higher index; -1 past the segment's length. k <= 1024. */
typedef struct {
  const float *scores;
  const int32_t *seg_ptr;        /* [n_segs + 1] */
  int32_t n_segs;
  int32_t k;
  int32_t *out_idx;              /* [n_segs * k] */
} kn_cuda_topk_args_t;
ak_status_t kn_cuda_topk(const kn_cuda_topk_args_t *args, kn_cuda_stream_t stream, ak_err_t *err);

/* Recall as one gather: copies n_pages pages of page_bytes from src_ptrs[i] (device
 * addresses of mapped pinned host memory, or device memory) to dst_base +
 * dst_page[i] * page_bytes, 16 bytes per thread access. page_bytes % 16 == 0. */
typedef struct {
  const void *const *src_ptrs;   /* [n_pages] device-visible addresses */
  void *dst_base;
  const int32_t *dst_page;       /* [n_pages] */
  int64_t n_pages;
  size_t page_bytes;
} kn_cuda_gather_args_t;
ak_status_t kn_cuda_gather_pages(const kn_cuda_gather_args_t *args, kn_cuda_stream_t stream, ak_err_t *err);

/* ArkVale's decision for one layer of a decode step, per sequence, on the device
 * (kn_cuda_arkvale_plan.cu; kvpool's kv_select_for_view is the oracle): ranks the
 * candidates [n_sink, n_pages - n_window) by score (ties, -0 with +0 included, to the
 * higher page; NaN below everything; subnormals as they are, never flushed), takes the
 * top k, pairs each missing one (ranking order) with a victim (the resident candidates
 * outside the top and outside the best that stay, ascending page order), updates phys
 * in place, and writes the recalls and the resident view in logical order. A sequence
 * with n_pages 0 makes no selection: empty recall lists, view_len 0, its view and phys
 * untouched. The optional fields
 * (NULL / 0) let the engine run it between its page tables and the attention kernel:
 * scores rows by score_row, the view straight into a CSR list at view_ptr, the victims'
 * logical pages for the host, and each recall's source address in the backup tier. */
#define KN_CUDA_PLAN_MAX_PAGES 8192
typedef struct {
  const float *scores;      /* [.][stride] page estimates, row score_row[s] (or s) */
  int32_t *phys;            /* [n_seqs][stride] logical -> physical page, -1 not resident */
  const int32_t *n_pages;   /* [n_seqs] logical pages (the last partly filled) */
  int32_t stride;           /* pages per sequence row, <= KN_CUDA_PLAN_MAX_PAGES */
  int32_t n_seqs;
  int32_t n_sink;
  int32_t n_window;
  int32_t k;
  int32_t *recall_page;     /* [n_seqs][k] logical pages to recall, -1 past the last */
  int32_t *recall_phys;     /* [n_seqs][k] the physical page each goes to, -1 past the last */
  int32_t *view;            /* resident physical pages, logical order, from view_ptr[s] (or
                             * s * stride) */
  int32_t *view_len;        /* [n_seqs] */
  /* optional */
  const int32_t *score_row; /* [n_seqs] */
  const int32_t *view_ptr;  /* [n_seqs] */
  int32_t *recall_victim;   /* [n_seqs][k] the logical page each recall evicts, -1 past the last */
  const int32_t *backup_slot; /* [n_seqs][stride] each page's slot in the tier, with: */
  const char *tier_base;    /* device address of slot 0 (mapped pinned host memory) */
  int64_t slot_bytes;
  const void **recall_src;  /* [n_seqs][k] tier_base + slot * slot_bytes, NULL past the last */
  /* optional: block s also copies keep_q_floats floats from keep_q_src + s * keep_q_floats
   * to keep_q_dst + s * keep_q_floats (the engine keeps each sequence's last query for
   * later evictions; a copy node per layer cost more than the plan launch itself) */
  const float *keep_q_src;
  float *keep_q_dst;
  int32_t keep_q_floats;
} kn_cuda_arkvale_plan_args_t;
/* Dynamic shared memory one block (one sequence) uses at this stride: 16 bytes per
 * pow2(stride) (at least 16 KiB) + 4 per page, ~162 KiB at KN_CUDA_PLAN_MAX_PAGES; the
 * launcher opts in above 48 KiB itself. */
size_t kn_cuda_arkvale_plan_smem_bytes(int32_t stride);
ak_status_t kn_cuda_arkvale_plan(const kn_cuda_arkvale_plan_args_t *args, kn_cuda_stream_t stream, ak_err_t *err);

/* --- fills (model construction, not the forward pass) --- */

/* dst[i] = a bf16 value uniform in [-scale, scale] (rounded toward zero) drawn from a
 * counter-based hash of (seed, i): the same seed gives the same array bit for bit,
 * whatever the device or grid. n 0 is a no-op. Arguments are checked before any CUDA
 * call (n >= 0, dst non-NULL and 2-byte aligned, scale finite and >= 0). */
ak_status_t kn_cuda_fill_random_bf16(void *dst, int64_t n, float scale, uint64_t seed, kn_cuda_stream_t stream,
                                     ak_err_t *err); /* dst: [n] bf16 */
/* The same in f16 (synthetic K/V pages for benchmarks). */
ak_status_t kn_cuda_fill_random_f16(void *dst, int64_t n, float scale, uint64_t seed, kn_cuda_stream_t stream,
                                    ak_err_t *err); /* dst: [n] f16 */
/* dst[i] = value for i < n (norm weights of 1). */
ak_status_t kn_cuda_fill_f32(float *dst, int64_t n, float value, kn_cuda_stream_t stream,
                             ak_err_t *err); /* dst: [n] f32 */

#ifdef __cplusplus
}
#endif
#endif
