/* kernels: the compute ops behind one backend interface.
 *
 * This header is the CPU backend's contract (kernels/cpu/, portable C with AVX2 /
 * AVX-512 paths picked at run time from what the CPU has); the CUDA backend
 * (kernels/cuda/) mirrors each op with the same argument views. Ops take plain
 * views — pointers, shapes, a CSR page table — never a kvpool struct.
 *
 * Threading: every op runs on the context's thread pool and returns when done.
 * A kn_cpu_t has one owning thread (ops on one context must not run concurrently).
 * No op allocates: workspaces are sized by a *_workspace_bytes() call and passed in. */
#ifndef KN_KERNELS_H
#define KN_KERNELS_H

#include <stddef.h>
#include <stdint.h>

#include "ak_quant.h"
#include "ak_status.h"

#ifdef __cplusplus
extern "C" {
#endif

/* ---- backend context ---- */

typedef enum { KN_ISA_PORTABLE = 0, KN_ISA_AVX2 = 1, KN_ISA_AVX512 = 2 } kn_isa_t;

typedef struct kn_cpu kn_cpu_t;

/* n_threads: 0 = one per online CPU. The ISA is detected (cpuid) and may be lowered
 * with kn_cpu_set_isa (tests run every path the machine supports). */
ak_status_t kn_cpu_create(int n_threads, ak_err_t *err, kn_cpu_t **cpu_p);
void kn_cpu_destroy(kn_cpu_t *cpu);
int kn_cpu_n_threads(const kn_cpu_t *cpu);
kn_isa_t kn_cpu_isa(const kn_cpu_t *cpu);
kn_isa_t kn_cpu_detect_isa(void);
/* AK_ERR_UNSUPPORTED when the CPU lacks `isa`. */
ak_status_t kn_cpu_set_isa(kn_cpu_t *cpu, kn_isa_t isa);
const char *kn_isa_name(kn_isa_t isa);

/* ---- element types of activations and KV ---- */
typedef enum { KN_F32 = 0, KN_F16 = 1 } kn_dtype_t;

/* ---- matmul: y = x · Wᵀ ---- */

/* A weight matrix as stored in GGUF: n_rows rows of n_cols elements, each row
 * `ak_type_row_bytes(type, n_cols)` bytes. Types: F32, F16, BF16, Q4_0, Q4_1, Q8_0. */
typedef struct {
  ak_ggml_type_t type;
  int64_t n_rows; /* output features */
  int64_t n_cols; /* input features (a multiple of 32 for quantized types) */
  const void *data;
} kn_weight_t;

/* Workspace for kn_matmul with n_tok rows of x (activations quantized to Q8 blocks
 * for integer dot products with quantized weights, as ggml does); 0 for float
 * weights (workspace may then be NULL). Any alignment is accepted. */
size_t kn_matmul_workspace_bytes(const kn_weight_t *w, int64_t n_tok);
/* x: [n_tok, n_cols] f32; y: [n_tok, n_rows] f32 (overwritten). With quantized
 * weights each 32-block of x is rounded to int8 with an f32 scale amax/127 (ggml
 * keeps that scale in f16), so an element moves by at most amax_block/254; the
 * integer products are exact. */
ak_status_t kn_matmul(kn_cpu_t *cpu, const kn_weight_t *w, const float *x, int64_t n_tok, float *y,
                      void *workspace, size_t workspace_bytes, ak_err_t *err);

/* Several matmuls of one x in one call — Q, K and V; gate and up: x is quantized
 * once and the rows of all weights share the threads, one fork-join instead of n_w.
 * All weights have the same n_cols (types may differ); y[i]: [n_tok, w[i]->n_rows]
 * f32. Workspace: kn_matmul_multi_workspace_bytes (the largest single need). */
enum { KN_MATMUL_MULTI_MAX = 8 };
size_t kn_matmul_multi_workspace_bytes(int n_w, const kn_weight_t *const *w, int64_t n_tok);
ak_status_t kn_matmul_multi(kn_cpu_t *cpu, int n_w, const kn_weight_t *const *w, const float *x,
                            int64_t n_tok, float *const *y, void *workspace, size_t workspace_bytes,
                            ak_err_t *err);

/* ---- embedding rows: out[i, :] = dequant(table row ids[i]) ---- */
/* table: kn_weight_t with n_rows = vocab, n_cols = dim. out: [n_tok, dim] f32. */
ak_status_t kn_embed(kn_cpu_t *cpu, const kn_weight_t *table, const int32_t *ids, int64_t n_tok,
                     float *out, ak_err_t *err);

/* ---- RMSNorm: out = x / sqrt(mean(x²) + eps) * w ---- */
/* x, out: [n_tok, dim] f32 (may alias); w: [dim] f32. As ggml: squares summed in
 * double, scale = 1/sqrtf(mean + eps) in float. AK_ERR_INVALID_ARG on NULLs,
 * non-positive sizes or eps < 0 (no message: there is no err argument). */
ak_status_t kn_rmsnorm(kn_cpu_t *cpu, const float *x, const float *w, int64_t n_tok, int64_t dim,
                       float eps, float *out);

/* ---- residual add in place: x += y, [n] f32 ---- */
void kn_add(kn_cpu_t *cpu, float *x, const float *y, int64_t n);

/* ---- SwiGLU: out = silu(gate) * up, [n] f32; out may alias gate ---- */
void kn_silu_mul(kn_cpu_t *cpu, const float *gate, const float *up, float *out, int64_t n);

/* ---- RoPE in place ---- */
typedef enum {
  KN_ROPE_NORM = 0, /* rotate adjacent pairs (2i, 2i+1): ggml's LLAMA layout */
  KN_ROPE_NEOX = 2, /* rotate (i, i + rot_dims/2) */
} kn_rope_mode_t;

typedef struct {
  float *x;             /* [n_tok, n_heads, head_dim] f32, rotated in place */
  const int32_t *pos;   /* [n_tok] absolute positions */
  int64_t n_tok;
  int32_t n_heads;
  int32_t head_dim;
  int32_t rot_dims;     /* leading dims rotated (== head_dim for Llama) */
  float freq_base;      /* theta, e.g. 10000 or 100000 */
  float freq_scale;     /* linear scaling: positions multiplied by this (1 = none) */
  kn_rope_mode_t mode;
} kn_rope_args_t;
ak_status_t kn_rope(kn_cpu_t *cpu, const kn_rope_args_t *args, ak_err_t *err);

/* ---- paged attention ---- */

/* A CSR view of KV pages (FlashInfer's paged_kv_t). A page holds `page_tokens`
 * tokens of one sequence and one layer for all KV heads:
 *
 *   K of (page p, kv head h, token t) at k_base + p*page_stride_elems + h*head_stride_elems + t*head_dim
 *   V likewise from v_base.
 *
 * Sequence s's pages in order are indices[indptr[s] .. indptr[s+1]); all full but
 * the last, which holds last_page_len[s] tokens (1..page_tokens). Token j of the view
 * is token j % page_tokens of page j / page_tokens of that list. */
typedef struct {
  const void *k_base;
  const void *v_base;
  kn_dtype_t dtype;
  int64_t page_stride_elems;
  int64_t head_stride_elems;
  int32_t page_tokens;
  int32_t n_seqs;
  const int32_t *indptr;        /* [n_seqs + 1] */
  const int32_t *indices;       /* [indptr[n_seqs]] page ids */
  const int32_t *last_page_len; /* [n_seqs] */
} kn_paged_kv_t;

typedef struct {
  const float *q;            /* [n_tok, n_heads, head_dim] f32 */
  float *out;                /* [n_tok, n_heads, head_dim] f32 */
  int64_t n_tok;
  int32_t n_heads;
  int32_t n_kv_heads;        /* n_heads % n_kv_heads == 0 (GQA) */
  int32_t head_dim;
  float scale;               /* usually 1/sqrt(head_dim) */
  const int32_t *tok_seq_idx;   /* [n_tok] which view sequence each query token reads */
  const int32_t *tok_kv_len;    /* [n_tok] attend to view tokens [0, tok_kv_len) (causal mask) */
  kn_paged_kv_t kv;
} kn_attn_args_t;

/* A token with tok_kv_len 0 gets zeros. Checks the page table it reads (indptr
 * monotone, last_page_len in [1, page_tokens], page ids >= 0, tok_kv_len within its
 * sequence): AK_ERR_INVALID_ARG / AK_ERR_RANGE with a message. n_threads: the
 * context's kn_cpu_n_threads().
 *
 * The workspace depends on the call's shapes and, for decode steps (<= 8 query
 * tokens) on more than one thread, on the longest tok_kv_len: such steps split each
 * token's keys over the threads and merge the parts, which needs room for the
 * partial results. Size it for each call (or for the largest call you will make). */
size_t kn_attention_workspace_bytes(const kn_attn_args_t *args, int n_threads);
ak_status_t kn_attention(kn_cpu_t *cpu, const kn_attn_args_t *args, void *workspace,
                         size_t workspace_bytes, ak_err_t *err);

/* Writes n_tok rows of f32 K or V ([n_tok, n_kv_heads, head_dim]) into pages: token i
 * goes to page dst_page[i], slot dst_slot[i], converted to the view's dtype. */
ak_status_t kn_kv_store(kn_cpu_t *cpu, const kn_paged_kv_t *kv, void *base, int32_t n_kv_heads,
                        int32_t head_dim, const float *src, const int32_t *dst_page,
                        const int32_t *dst_slot, int64_t n_tok, ak_err_t *err);

/* ---- logits helpers ---- */
/* Index of the largest of n values (the first on ties); -1 when x is NULL or n <= 0. */
int64_t kn_argmax(const float *x, int64_t n);

#ifdef __cplusplus
}
#endif
#endif
