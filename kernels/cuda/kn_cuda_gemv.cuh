// kn_cuda_gemv: the decode-sized path of kn_cuda_gemm (kn_cuda_gemv.cu).
#ifndef KN_CUDA_GEMV_CUH
#define KN_CUDA_GEMV_CUH

#include <string.h>

#include "kn_cuda_internal.cuh"
#include "kn_cuda_kv_store.cuh"
#include "kn_cuda_rope.cuh"

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
  const kn_cuda_rope_args_t *rope; /* NULL, or RoPE (and its store) in the epilogue: the
                                    * caller checked it fits (kn_cuda_gemm.cu, kn_gemm_rope_fuses) */
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

// What a GEMV does after its sums (both kernels' EPI template argument): store them
// (NONE), or rotate Q and K and store K and V into pages first (ROPE, only with an f32
// y and no SwiGLU: kn_cuda_gemm_split's rope).
enum { KN_GEMV_EPI_NONE = 0, KN_GEMV_EPI_ROPE = 1 };

// The fused rope as the kernels take it: rows [0, rot_end) of W are rotated (Q's, and
// K's when the rope has an x2), in pairs (2m, 2m + 1) of rows: NORM layout, head_dim
// even, so a pair never straddles a head, a part or a block. With k_base, part 1's
// rows (K, rotated) and part 2's (V) also go into the tokens' page slots.
struct kn_gemv_rope_t {
  const int32_t *pos;
  const float *table;  // kn_cuda_rope_table's, or NULL: computed
  int32_t head_dim, rot_dims;
  float freq_base, freq_scale;
  int64_t rot_end;
  void *k_base, *v_base;  // NULL: no store
  int kv_bf16;            // 1: bf16 pages, 0: f16
  int64_t page_stride_elems, head_stride_elems;
  const int32_t *dst_page, *dst_slot;
};

// The EPI a call takes: ROPE when its split carries a fused rope.
static inline int kn_gemv_epi_kind(const kn_gemv_split_t *split) {
  return split && split->rope ? KN_GEMV_EPI_ROPE : KN_GEMV_EPI_NONE;
}

// The kernels' copy of the split's rope (zeros without one).
template <typename TY>
static inline kn_gemv_rope_t kn_gemv_rope_fill(const kn_gemv_split_t *split, const kn_gemv_parts_t<TY> &out) {
  kn_gemv_rope_t d;
  memset(&d, 0, sizeof d);
  const kn_cuda_rope_args_t *r = split ? split->rope : NULL;
  if (!r) return d;
  d.pos = r->pos;
  d.table = r->table;
  d.head_dim = r->head_dim;
  d.rot_dims = r->rot_dims;
  d.freq_base = r->freq_base;
  d.freq_scale = r->freq_scale;
  d.rot_end = r->x2 ? out.begin[2] : out.begin[1];
  if (r->store) {
    d.k_base = r->store->k_base;
    d.v_base = r->store->v_base;
    d.kv_bf16 = r->store->kv_dtype == KN_CUDA_BF16;
    d.page_stride_elems = r->store->page_stride_elems;
    d.head_stride_elems = r->store->head_stride_elems;
    d.dst_page = r->store->dst_page;
    d.dst_slot = r->store->dst_slot;
  }
  return d;
}

// Row `row`'s output at token t with the fused rope: `own` its sum, `partner` the sum of
// the other row of its pair (row ^ 1). Stored as kn_gemv_store would, then (K and V
// rows, with a store) into the token's page slot as kn_kv_store_token writes it: the
// same values, the same skips.
__device__ __forceinline__ void kn_gemv_rope_store(const kn_gemv_parts_t<float> &out, const kn_gemv_rope_t &r,
                                                   int64_t row, int t, float own, float partner) {
  const int64_t k0 = out.begin[1], v0 = out.begin[2];
  float y = own;
  if (row < r.rot_end) {
    const int d = (int)((row < k0 ? row : row - k0) % r.head_dim), i = d >> 1;
    if (2 * i < r.rot_dims) {
      float c, s;
      kn_rope_cs_at(r.table, r.pos, t, i, r.rot_dims, r.freq_base, r.freq_scale, &c, &s);
      y = d & 1 ? kn_rope_second(partner, own, c, s) : kn_rope_first(own, partner, c, s);
    }
  }
  kn_gemv_store(out, row, t, y, 0);
  if (!r.k_base || row < k0) return;
  const int64_t dst0 = kn_kv_slot_offset(r.dst_page[t], r.dst_slot[t], r.head_dim, r.page_stride_elems,
                                         r.head_stride_elems);
  if (dst0 < 0) return;
  const bool is_v = row >= v0;
  const int64_t rel = row - (is_v ? v0 : k0);
  const int64_t dst = dst0 + rel / r.head_dim * r.head_stride_elems + rel % r.head_dim;
  void *base = is_v ? r.v_base : r.k_base;
  if (r.kv_bf16)
    kn_st(static_cast<__nv_bfloat16 *>(base) + dst, y);
  else
    kn_st(static_cast<__half *>(base) + dst, y);
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
