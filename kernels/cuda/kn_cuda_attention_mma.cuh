// kn_cuda_attention_mma: the per-token (decode) path of kn_cuda_attention for GQA groups
// of 3 to 8 query heads, on tensor cores. Included by kn_cuda_attention.cu (it uses that
// file's launch struct and table helpers); same work items, chunks, outputs and partials
// as kn_attn_chunk_kernel, which it replaces for those groups at head_dim 64 and 128.
//
// Why: the CUDA-core kernel does 2 x GT FMAs per K/V element plus a shuffle reduction per
// key and head; at GT 4 (Llama-3-8B) it is issue-bound, ~2.2 TB/s on an H100 where the
// bytes allow ~3. Here a warp computes S = Q K^T and O^T += V^T P^T with mma.sync
// m16n8k16: for S the group's heads are the rows of the A operand (rows GT..15 zero),
// for O^T they are the 8 columns of the B operand, so the arithmetic is a few
// instructions per 16 keys instead of a few per element. H100, batch 4, one call:
// llama3-8b 30k 224.9 -> 199.7 us a layer (2.24 -> 2.52 TB/s), 10k 88.4 -> 76.4 us.
//
// Precision: the operands are 16-bit (the pages' type). q (f32) is split into hi + lo
// 16-bit parts and P (f32, in [0, 1]) likewise, each product done twice and accumulated
// in f32, so scores and outputs carry ~16+ bits like the f32 path (the K/V values
// themselves are exact in 16 bits).
//
// Layout: 4 warps a block, one block per (token, KV head, chunk) as the chunk kernel
// (groups of at most 8: larger ones stay there).
// A warp takes 16-key tiles w, w + 4, ... of the chunk; per tile it stages K and V rows
// in its own shared memory with cp.async (16 bytes a lane, zero-filled past the chunk's
// end, each row's page looked up once by one lane and shuffled), two stages deep, and
// reads the mma operands with ldmatrix (K as is, V transposed). Rows are padded by 16
// bytes so both are free of bank conflicts. The fragments of S (row = head g = lane / 4,
// keys 2 (lane % 4) + {0, 1} and + 8) hold the online softmax per row in log2 units; P
// is the B operand of V^T P^T without leaving registers (the S fragment of row g is
// exactly P^T's column g), and O^T's accumulators (dims x heads) waste no rows for
// groups of 8. At the end the 4 warps' (max, sum, O) are merged through shared
// memory and written as the chunk kernel writes them (output, or the chunk's partial).

#ifndef KN_CUDA_ATTENTION_MMA_CUH
#define KN_CUDA_ATTENTION_MMA_CUH

namespace kn_attn_mma {

constexpr int WARPS = 4;
constexpr int KT = 16; // keys a tile

template <int HD>
__host__ __device__ constexpr int row_halves() { return HD + 8; } // padded row: 16 bytes more

// Dynamic shared memory: per warp 2 stages x (K, V) x KT rows.
template <int HD>
__host__ __device__ constexpr size_t smem_bytes() {
  return (size_t)WARPS * 2 * 2 * KT * row_halves<HD>() * 2;
}

template <typename KV>
__device__ __forceinline__ uint32_t pack2(float a, float b);
template <>
__device__ __forceinline__ uint32_t pack2<__half>(float a, float b) {
  const __half2 h = __floats2half2_rn(a, b);
  return *reinterpret_cast<const uint32_t *>(&h);
}
template <>
__device__ __forceinline__ uint32_t pack2<__nv_bfloat16>(float a, float b) {
  const __nv_bfloat162 h = __floats2bfloat162_rn(a, b);
  return *reinterpret_cast<const uint32_t *>(&h);
}
template <typename KV>
__device__ __forceinline__ float2 unpack2(uint32_t u);
template <>
__device__ __forceinline__ float2 unpack2<__half>(uint32_t u) {
  return __half22float2(*reinterpret_cast<const __half2 *>(&u));
}
template <>
__device__ __forceinline__ float2 unpack2<__nv_bfloat16>(uint32_t u) {
  return __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162 *>(&u));
}

// (a, b) as hi = 16-bit rounding and lo = 16-bit rounding of the rest.
template <typename KV>
__device__ __forceinline__ void split2(float a, float b, uint32_t &hi, uint32_t &lo) {
  hi = pack2<KV>(a, b);
  const float2 h = unpack2<KV>(hi);
  lo = pack2<KV>(a - h.x, b - h.y);
}

// D += A B for one m16n8k16 tile; A rows 8..15 are zero (a1 = a3 = 0).
template <typename KV>
__device__ __forceinline__ void mma(float (&d)[4], uint32_t a0, uint32_t a2, uint32_t b0, uint32_t b1);
template <>
__device__ __forceinline__ void mma<__half>(float (&d)[4], uint32_t a0, uint32_t a2, uint32_t b0, uint32_t b1) {
  asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
               "{%0,%1,%2,%3};"
               : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
               : "r"(a0), "r"(0u), "r"(a2), "r"(0u), "r"(b0), "r"(b1));
}
template <>
__device__ __forceinline__ void mma<__nv_bfloat16>(float (&d)[4], uint32_t a0, uint32_t a2, uint32_t b0,
                                                   uint32_t b1) {
  asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
               "{%0,%1,%2,%3};"
               : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
               : "r"(a0), "r"(0u), "r"(a2), "r"(0u), "r"(b0), "r"(b1));
}

// D += A B with all four A registers (A = V^T: 16 dims x 16 keys).
template <typename KV>
__device__ __forceinline__ void mma4(float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1);
template <>
__device__ __forceinline__ void mma4<__half>(float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
  asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
               "{%0,%1,%2,%3};"
               : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
               : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}
template <>
__device__ __forceinline__ void mma4<__nv_bfloat16>(float (&d)[4], const uint32_t (&a)[4], uint32_t b0,
                                                    uint32_t b1) {
  asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
               "{%0,%1,%2,%3};"
               : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
               : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

__device__ __forceinline__ void ldmatrix_x4(uint32_t (&r)[4], const void *p) {
  const unsigned a = (unsigned)__cvta_generic_to_shared(p);
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(a));
}
__device__ __forceinline__ void ldmatrix_x4_trans(uint32_t (&r)[4], const void *p) {
  const unsigned a = (unsigned)__cvta_generic_to_shared(p);
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(a));
}

// 16 bytes global -> shared, zero-filled when !valid (src is then not read).
__device__ __forceinline__ void cp_async16(void *dst, const void *src, bool valid) {
  const unsigned d = (unsigned)__cvta_generic_to_shared(dst);
  const int n = valid ? 16 : 0;
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;" ::"r"(d), "l"(src), "r"(n) : "memory");
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;" ::: "memory"); }
template <int N>
__device__ __forceinline__ void cp_async_wait() { asm volatile("cp.async.wait_group %0;" ::"n"(N) : "memory"); }

// 3 blocks an SM (168 registers at head_dim 128, no spills; 3 x 68 KiB of shared memory
// is what an SM holds anyway).
template <int HD, int GT, typename KV>
static __global__ void __launch_bounds__(WARPS * 32, 3) kernel(const __grid_constant__ kn_attn_launch_t L) {
  // With kv_stable (kn_cuda.h) the tables and the first tile's K/V rows, when they are
  // all older than this call's own tokens, load before the PDL wait; q and the rest
  // wait. Without it, everything waits.
  const bool early = L.a.kv_stable && L.qt == 0;
  if (!early) kn_pdl_begin();
  constexpr int RH = row_halves<HD>();
  constexpr int KS = HD / 16;          // k-steps of Q K^T, and m16 tiles of O^T
  constexpr int VPR = HD / 8;          // 16-byte vectors a row
  constexpr int TILE_VECS = KT * VPR;  // a tile's 16-byte vectors, K or V
  extern __shared__ __align__(16) unsigned char kn_attn_mma_smem[];

  const kn_cuda_attn_args_t &a = L.a;
  kn_attn_item_t it;
  if (!kn_attn_block_item(L, it)) return; // block-uniform: before any barrier (and, early, before the wait)
  const int64_t t = it.t;
  const int32_t kvh = it.kvh, c = it.c, len = it.len, n_tok_chunks = it.n_tok_chunks;
  const int32_t j_begin = it.j_begin, j_end = it.j_end;
  const int32_t n_tiles = (j_end - j_begin + KT - 1) / KT; // 0 when len == 0

  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int g = lane / 4, tq = lane % 4; // fragment row (head) and column pair
  const int32_t n_group = a.n_heads / a.n_kv_heads;
  const int32_t page_tokens = a.kv.page_tokens;
  const int64_t page_stride = a.kv.page_stride_elems;
  const int32_t *pages = len > 0 ? a.kv.indices + a.kv.indptr[a.tok_seq_idx[t]] : nullptr;
  const KV *kb = (const KV *)a.kv.k_base + (int64_t)kvh * a.kv.head_stride_elems;
  const KV *vb = (const KV *)a.kv.v_base + (int64_t)kvh * a.kv.head_stride_elems;
  KV *sk = reinterpret_cast<KV *>(kn_attn_mma_smem) + (size_t)warp * 2 * 2 * KT * RH; // [stage][K|V][KT][RH]
  const float qscale = a.scale * KN_LOG2E;

  // Stage the warp's i-th tile (keys j0 .. j0 + 16) into stage st.
  auto load_tile = [&](int i, int st) {
    const int32_t j0 = j_begin + (warp + WARPS * i) * KT;
    // Lane r < 16 looks up row r's page offset; every lane takes its rows' from it.
    int64_t off_r = 0;
    if (lane < KT && j0 + lane < j_end) {
      const int32_t j = j0 + lane;
      off_r = (int64_t)pages[j / page_tokens] * page_stride + (int64_t)(j % page_tokens) * HD;
    }
    KV *dk = sk + (size_t)st * 2 * KT * RH, *dv = dk + KT * RH;
#pragma unroll
    for (int e = lane; e < TILE_VECS; e += 32) {
      const int r = e / VPR, v = e % VPR;
      const int64_t off = __shfl_sync(0xffffffffu, off_r, r);
      const bool valid = j0 + r < j_end;
      cp_async16(dk + r * RH + v * 8, kb + off + v * 8, valid);
      cp_async16(dv + r * RH + v * 8, vb + off + v * 8, valid);
    }
  };

  const int my_tiles = n_tiles > warp ? (n_tiles - warp + WARPS - 1) / WARPS : 0;
  // Rows older than every token of this call: a call stores at most n_tok new rows per
  // sequence (its own tokens'), the newest, so rows below len - n_tok were there before.
  const bool first_early = early && my_tiles > 0 && (int64_t)j_begin + (warp + 1) * KT <= (int64_t)len - a.n_tok;
  if (first_early) load_tile(0, 0);
  if (early) kn_pdl_begin();
  if (my_tiles > 0 && !first_early) load_tile(0, 0);
  cp_async_commit();

  // Q of head g (rows >= the group are zero): a0 = dims 16 k + 2 tq + {0,1}, a2 = + 8,
  // as hi and lo 16-bit parts.
  uint32_t qh[KS][2], ql[KS][2];
  {
    const bool on = g < GT && g < n_group;
    const float *qg = a.q + (t * a.n_heads + (int64_t)kvh * n_group + (on ? g : 0)) * HD;
#pragma unroll
    for (int k = 0; k < KS; k++)
#pragma unroll
      for (int h = 0; h < 2; h++) {
        const int d = 16 * k + 2 * tq + 8 * h;
        const float x0 = on ? qg[d] * qscale : 0.0f, x1 = on ? qg[d + 1] * qscale : 0.0f;
        split2<KV>(x0, x1, qh[k][h], ql[k][h]);
      }
  }

  // O^T (dims x heads): o[k] = rows (dims) 16 k + g and + 8, columns (heads) 2 tq, 2 tq + 1.
  float o[KS][4];
#pragma unroll
  for (int k = 0; k < KS; k++) o[k][0] = o[k][1] = o[k][2] = o[k][3] = 0.0f;
  float m = -INFINITY, l = 0.0f; // row g's running max (log2 units) and this lane's share of the sum
  for (int i = 0; i < my_tiles; i++) {
    const int st = i & 1;
    if (i + 1 < my_tiles) load_tile(i + 1, st ^ 1);
    cp_async_commit();
    cp_async_wait<1>(); // tile i has landed (this lane's copies)
    __syncwarp();       // ... and every lane's
    const KV *tk = sk + (size_t)st * 2 * KT * RH, *tv = tk + KT * RH;
    const int32_t j0 = j_begin + (warp + WARPS * i) * KT;

    // S = Q K^T: two n8 tiles (keys 0-7, 8-15). ldmatrix x4 at k-step k: matrices
    // (keys 0-7, dims 16k..+7), (keys 0-7, +8..), (keys 8-15, 16k..), (keys 8-15, +8..).
    float s[2][4] = {{0.0f, 0.0f, 0.0f, 0.0f}, {0.0f, 0.0f, 0.0f, 0.0f}};
#pragma unroll
    for (int k = 0; k < KS; k++) {
      const int mi = lane / 8, rr = lane % 8;
      uint32_t b[4];
      ldmatrix_x4(b, tk + ((mi >> 1) * 8 + rr) * RH + 16 * k + (mi & 1) * 8);
      mma<KV>(s[0], qh[k][0], qh[k][1], b[0], b[1]);
      mma<KV>(s[0], ql[k][0], ql[k][1], b[0], b[1]);
      mma<KV>(s[1], qh[k][0], qh[k][1], b[2], b[3]);
      mma<KV>(s[1], ql[k][0], ql[k][1], b[2], b[3]);
    }
    // Row g's scores: s[n][0..1] = keys 8 n + 2 tq + {0, 1} (s[n][2..3]: zero rows).
    float mx = m;
#pragma unroll
    for (int n = 0; n < 2; n++)
#pragma unroll
      for (int e = 0; e < 2; e++) {
        if (j0 + 8 * n + 2 * tq + e >= j_end) s[n][e] = -INFINITY;
        mx = fmaxf(mx, s[n][e]);
      }
    mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
    mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 2));
    const float mx_safe = mx == -INFINITY ? 0.0f : mx; // a tile of masked keys only: p = 0
    const float corr = exp2f(m - mx_safe);
    m = mx;
    l *= corr;
    float p[2][2];
#pragma unroll
    for (int n = 0; n < 2; n++)
#pragma unroll
      for (int e = 0; e < 2; e++) {
        p[n][e] = exp2f(s[n][e] - mx_safe);
        l += p[n][e];
      }
    // O^T's columns are heads 2 tq and 2 tq + 1, whose rescale lives in lanes 8 tq and 8 tq + 4.
    const float corr0 = __shfl_sync(0xffffffffu, corr, 8 * tq), corr1 = __shfl_sync(0xffffffffu, corr, 8 * tq + 4);
#pragma unroll
    for (int k = 0; k < KS; k++) {
      o[k][0] *= corr0;
      o[k][1] *= corr1;
      o[k][2] *= corr0;
      o[k][3] *= corr1;
    }
    // O^T += V^T P^T. P^T is the B operand straight from S: b0 = P[head g][keys 2 tq + {0,1}]
    // (S tile 0), b1 = keys 8 + 2 tq + {0,1} (S tile 1), as hi and lo parts. V^T is the A
    // operand: ldmatrix x4 trans at dims 16 k: matrices (keys 0-7, dims 16k..+7),
    // (keys 0-7, 16k+8..), (keys 8-15, 16k..), (keys 8-15, 16k+8..) = a0..a3.
    uint32_t ph0, pl0, ph1, pl1;
    split2<KV>(p[0][0], p[0][1], ph0, pl0);
    split2<KV>(p[1][0], p[1][1], ph1, pl1);
#pragma unroll
    for (int k = 0; k < KS; k++) {
      const int mi = lane / 8, rr = lane % 8;
      uint32_t va[4];
      ldmatrix_x4_trans(va, tv + ((mi >> 1) * 8 + rr) * RH + 16 * k + (mi & 1) * 8);
      mma4<KV>(o[k], va, ph0, ph1);
      mma4<KV>(o[k], va, pl0, pl1);
    }
    __syncwarp(); // every lane is done with stage st before it is refilled
  }
  cp_async_wait<0>();
  l += __shfl_xor_sync(0xffffffffu, l, 1);
  l += __shfl_xor_sync(0xffffffffu, l, 2);

  // Merge the warps: row g's (m, l) and O[g][8 n + 2 tq + {0,1}] through shared memory
  // (the staging area is free: every warp has waited for its copies).
  __syncthreads();
  static_assert(sizeof(float) * WARPS * GT * (HD + 2) <= smem_bytes<HD>(), "the merge fits in the staging area");
  float *sm_o = reinterpret_cast<float *>(kn_attn_mma_smem);          // [WARPS][GT][HD]
  float *sm_ml = sm_o + WARPS * GT * HD;                               // [WARPS][GT][2]
#pragma unroll
  for (int h = 0; h < 2; h++) {
    const int head = 2 * tq + h;
    if (head < GT)
#pragma unroll
      for (int k = 0; k < KS; k++) {
        sm_o[(warp * GT + head) * HD + 16 * k + g] = o[k][h];
        sm_o[(warp * GT + head) * HD + 16 * k + g + 8] = o[k][2 + h];
      }
  }
  if (g < GT && tq == 0) {
    sm_ml[(warp * GT + g) * 2] = m;
    sm_ml[(warp * GT + g) * 2 + 1] = l;
  }
  __syncthreads();
  for (int e = threadIdx.x; e < GT * HD; e += WARPS * 32) {
    const int gi = e / HD, d = e % HD;
    if (gi >= n_group) continue;
    float mb = -INFINITY;
#pragma unroll
    for (int w = 0; w < WARPS; w++) mb = fmaxf(mb, sm_ml[(w * GT + gi) * 2]);
    float ab = 0.0f, lb = 0.0f;
#pragma unroll
    for (int w = 0; w < WARPS; w++) {
      const float mw = sm_ml[(w * GT + gi) * 2];
      if (mw == -INFINITY) continue; // a warp without keys (or an empty token)
      const float wt = exp2f(mw - mb);
      ab = fmaf(wt, sm_o[(w * GT + gi) * HD + d], ab);
      lb = fmaf(wt, sm_ml[(w * GT + gi) * 2 + 1], lb);
    }
    const int64_t th = t * a.n_heads + (int64_t)kvh * n_group + gi; // (token, query head)
    kn_attn_write_result(L, th, c, n_tok_chunks, HD, d, ab, mb, lb);
  }
}

} // namespace kn_attn_mma

#endif
