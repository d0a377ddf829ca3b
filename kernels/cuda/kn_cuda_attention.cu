// kn_cuda_attention: paged GQA attention over the CSR page list, for any mix of decode
// and prefill tokens in one call (semantics: kernels/cpu/kn_attention.c, the oracle).
//
// Flash-decoding. A work item is (query token t, KV head h); its keys [0, kv_len) are
// cut into chunks of `chunk` keys, one block per (item, chunk). chunk is
// KN_ATTN_CHUNK_TOKENS (512) unless that makes fewer than KN_ATTN_MIN_BLOCKS blocks
// (a decode of one or two sequences at short context): then it halves, down to
// KN_ATTN_MIN_CHUNK_TOKENS, so that the keys spread over the SMs instead of one block
// walking 512 rows in dependent steps (llama3-8b, batch 1, 1k keys: 16 blocks). Calls
// that take the tensor-core kernel stop halving at KN_ATTN_MIN_BLOCKS_MMA instead, and
// when their 512-key grid is more than one wave (KN_ATTN_WAVE_MMA blocks) they take
// longer chunks, as many a work item as fill one wave (at least 2 an item).
//
// GQA groups of 3..8 heads at head_dim 64 and 128 take the tensor-core kernel of
// kn_cuda_attention_mma.cuh instead of the chunk kernel below: same blocks, chunks,
// outputs and partials; the text below describes the CUDA-core chunk kernel.
//
//   grid  = n_tok * n_kv_heads * n_chunks blocks (1-D; chunk is the fastest index)
//   block = KN_ATTN_THREADS (4 warps), split into row teams of head_dim / 8 lanes;
//           lane l of a team owns dims [8l, 8l + 8) and reads them with one 16-byte
//           load per K or V row. Each team walks TPT rows per step, all teams of the
//           block together KN_ATTN_TEAMS * TPT rows per step.
//
// A block handles up to GT query heads of the KV head's group at once (GT = 1, 2, 4
// or 8, the smallest that covers the group, extra heads masked), so each K/V row is
// read once per group; groups larger than 8 loop over tiles of 8 heads and re-read
// the chunk (from L2). Each team keeps an online softmax (max in log2 units, sum,
// acc[8] per lane per head) in registers; at the end the teams are merged through
// shared memory. A token with one chunk writes its output directly; a token with
// more writes a partial (acc, max, sum) per (head, chunk) to the workspace and the
// merge kernel combines them:
//
//   merge grid = n_tok * n_heads blocks of KN_ATTN_MERGE_THREADS threads (4 dims and a
//                chunk group each); blocks of single-chunk tokens return at once.
//
// Workspace (only when a token can have more than one chunk):
//   n_chunks = max_kv_len <= chunk ? 1 : ceil(max_kv_len / chunk)
//   bytes    = n_chunks > 1 ? n_tok * n_heads * n_chunks * (head_dim + 2) * 4 : 0
// kn_cuda_attention_workspace_bytes returns at least that for the call and for any call
// with fewer tokens and a smaller max_kv_len (a smaller grid may take smaller chunks),
// so a buffer sized once for the largest step serves every step.
//   layout   = acc [n_tok][n_heads][n_chunks][head_dim] f32,
//              then ml [n_tok][n_heads][n_chunks][2] f32 (max in log2 units, sum).
// max_kv_len only sizes the split: a token longer than n_chunks chunks gets its
// remainder folded into its last chunk (slower, still exact), so an underestimate
// never reads or writes out of bounds.
//
// Prefill tiles (args->prefill_tiles, 0 in a zeroed struct; the forward sets 1 on steps
// that hold a prefill run): tokens of
// a prefill run, i.e. consecutive batch tokens of one sequence (the worker lays a
// sequence's chunk out as consecutive tokens with kv_len L+1, L+2, ...), go instead to
// kn_attn_tile_kernel: a block takes a query tile of qt tokens x the group's heads and
// streams K/V tiles through shared memory once for all of them, masking causally per
// query row (key j counts iff j < that row's kv_len), so a run of n tokens reads its keys
// n / qt times instead of n times. CUDA cores in f32 for now (no tensor cores yet);
// layout, tile sizes and the split are described above that kernel. Which tokens are
// tiled is decided on the device from tok_seq_idx alone (kn_attn_tok_tiled: a run with
// at least KN_ATTN_TILE_MIN_TOKENS tokens in a tile), identically in all three kernels;
// decode tokens and short runs stay here. The workspace contract is unchanged: tile
// blocks either write outputs directly or the same chunk partials as this kernel.
//
// Not here: tensor-core MMA for the tiles. Device page tables are trusted as kvpool
// filled them; the kernel only clamps tok_kv_len to the sequence's view length and
// treats a bad tok_seq_idx as kv_len 0, so a bad table cannot make it read past its
// page list.
#include <math.h>

#include "kn_cuda_internal.cuh"

enum {
  // keys per block (the split granularity) on a full grid; H100, batch 4, one call:
  // 256 -> 512 took llama3-8b (tensor-core kernel) 30k 199.7 -> 194.2 us, longchat-7b
  // 30k 684.7 -> 669.3 and 10k 237.3 -> 231.5 us (1024: longchat-7b slower again)
  KN_ATTN_CHUNK_TOKENS = 512,
  KN_ATTN_MIN_CHUNK_TOKENS = 64,
  KN_ATTN_MIN_BLOCKS = 528,   // 4 blocks per SM of an H100 (132 SMs)
  // About one block an SM: the tensor-core kernel pays more a block (its q split, two
  // cp.async stages to fill) and reads its keys faster, so small grids do better with
  // fewer, longer chunks. H100, llama3-8b batch 4, one call (528 -> 132): 1k 20.6 ->
  // 17.5 us, 2k 29.7 -> 24.8, 4k 40.5 -> 37.7, 10k unchanged; batch 1 4k 22.0 -> 18.4;
  // a decode step at budget 2048 (10k) 8.10 -> 7.71 ms (notes/device-runs.md, session 7).
  KN_ATTN_MIN_BLOCKS_MMA = 132,
  // Grids of the tensor-core kernel past one wave at 512-key chunks take longer chunks
  // instead, as many a work item as fill one wave: 3 blocks an SM (its launch bounds) x
  // 132 SMs. The 1.6 waves of 512-key chunks left the second wave's SMs part idle. H100,
  // llama3-8b batch 4 decode steps (graph replay), 10k / 20k / 30k: 8.103 / 10.043 /
  // 12.106 and 8.107 / 10.043 / 11.963 ms -> 8.091 / 9.931 / 11.892 and 8.057 / 9.935 /
  // 11.889; grids of at most 264 or 528 blocks were slower (10.26-10.28 / 10.14-10.16 ms
  // at 20k; notes/device-runs.md, session 10).
  KN_ATTN_WAVE_MMA = 396,
  KN_ATTN_WARPS = 4,
  KN_ATTN_THREADS = KN_ATTN_WARPS * 32,
  KN_ATTN_MAX_GT = 8,         // query heads per block pass
  // software-pipelined K/V loads up to this grid (see the kernel); measured with chunks
  // of 256 keys: H100, longchat-7b B=4 at 10k keys (5120 blocks): 244.0 us at 4096,
  // 241.9 us at 8192; at 30k (15488 blocks) the pipelined kernel was slower (H200: 467
  // -> 497 us). With 512-key chunks that grid is 7680 blocks (pipelined): 669 us, H100.
  KN_ATTN_PIPE_MAX_BLOCKS = 8192,
  KN_ATTN_MERGE_THREADS = 256,    // the merge kernel's block: head_dim / 4 (<= 64) divides it
  // The tiled prefill path (kn_attn_tile_kernel):
  KN_ATTN_TILE_MIN_TOKENS = 8,     // a sequence's tokens in one query tile to take it (fewer: per-token path)
  KN_ATTN_TILE_ACC_ELEMS = 8192,   // query rows x head_dim per block: 64 f32 accumulators a thread
  KN_ATTN_TILE_KEYS = 32,          // keys per K/V tile in shared memory
};

#define KN_LOG2E 1.4426950408889634f

// What both kernels read: the call's arguments plus the split.
typedef struct {
  kn_cuda_attn_args_t a;
  int32_t n_chunks; // chunks per token at most (the grid's split)
  int32_t chunk;    // keys per chunk
  float *ws_acc;    // [n_tok][n_heads][n_chunks][head_dim] f32, NULL when n_chunks == 1
  float *ws_ml;     // [n_tok][n_heads][n_chunks][2] f32: max (log2 units), sum
  int32_t qt;         // query tokens per tile of the tiled path; 0: no tiles this call
  int32_t tile_split; // 1: tile blocks take the chunk split above and write partials
} kn_attn_launch_t;

static int32_t kn_attn_n_chunks(int32_t max_kv_len, int32_t chunk) {
  return max_kv_len <= chunk ? 1 : (int32_t)kn_ceil_div(max_kv_len, chunk);
}

// 1 when the per-token blocks of a call run the tensor-core kernel: GQA groups of 3..8
// heads at head_dim 64 or 128 (kn_attn_launch_kv).
static bool kn_attn_takes_mma(const kn_cuda_attn_args_t *a) {
  const int32_t group = a->n_kv_heads > 0 ? a->n_heads / a->n_kv_heads : 0;
  return group >= 3 && group <= KN_ATTN_MAX_GT && (a->head_dim == 64 || a->head_dim == 128);
}

// Keys per chunk for a call (see the header comment).
static int32_t kn_attn_chunk(const kn_cuda_attn_args_t *a) {
  if (kn_attn_takes_mma(a)) { /* one wave of longer chunks (KN_ATTN_WAVE_MMA) */
    const int64_t pairs = a->n_tok * a->n_kv_heads, per = KN_ATTN_WAVE_MMA / pairs;
    if (per >= 2 && pairs * kn_attn_n_chunks(a->max_kv_len, KN_ATTN_CHUNK_TOKENS) > KN_ATTN_WAVE_MMA)
      return (int32_t)(kn_ceil_div(kn_ceil_div(a->max_kv_len, per), 64) * 64); /* > 512: n_chunks(512) > per */
  }
  const int64_t min_blocks = kn_attn_takes_mma(a) ? KN_ATTN_MIN_BLOCKS_MMA : KN_ATTN_MIN_BLOCKS;
  int32_t chunk = KN_ATTN_CHUNK_TOKENS;
  while (chunk > KN_ATTN_MIN_CHUNK_TOKENS &&
         a->n_tok * a->n_kv_heads * kn_attn_n_chunks(a->max_kv_len, chunk) < min_blocks)
    chunk /= 2;
  return chunk;
}

// Token t's kv length, clamped to its sequence's view (0 for a bad sequence index).
__device__ __forceinline__ int32_t kn_attn_tok_len(const kn_cuda_attn_args_t &a, int64_t t) {
  const int32_t s = a.tok_seq_idx[t];
  if (s < 0 || s >= a.kv.n_seqs) return 0;
  const int32_t n_pages = a.kv.indptr[s + 1] - a.kv.indptr[s];
  if (n_pages <= 0) return 0;
  int64_t seq_len = (int64_t)(n_pages - 1) * a.kv.page_tokens + a.kv.last_page_len[s];
  if (seq_len > (int64_t)n_pages * a.kv.page_tokens) seq_len = (int64_t)n_pages * a.kv.page_tokens;
  int32_t len = a.tok_kv_len[t];
  if (len < 0) len = 0;
  if (len > seq_len) len = (int32_t)seq_len;
  return len;
}

// Chunks token t uses: 1 for kv_len <= one chunk (kv_len 0 included: chunk 0 writes the
// zeros), never more than the grid's n_chunks (the last one takes the remainder).
__device__ __forceinline__ int32_t kn_attn_tok_chunks(int32_t len, int32_t n_chunks, int32_t chunk) {
  if (len <= chunk) return 1;
  int32_t n = (len + chunk - 1) / chunk;
  return n < n_chunks ? n : n_chunks;
}

// Which tokens the tiled path takes. Query tile k covers batch tokens [k qt, k qt + qt);
// the tables live on the device, so both paths decide per token from the same table
// reads (no host pass, no extra launch): token t is tiled iff its sequence index is
// valid, is that of its tile's first or last token (a tile holds at most two runs that
// continue past it), and has at least kn_attn_tile_min(qt) tokens in the tile. The
// chunk and merge kernels skip exactly those tokens; the tile kernel takes exactly
// those (one pass for the first token's sequence, one for the last's).
__host__ __device__ __forceinline__ int32_t kn_attn_tile_min(int32_t qt) {
  return qt < KN_ATTN_TILE_MIN_TOKENS ? qt : KN_ATTN_TILE_MIN_TOKENS;
}

// Tokens of sequence s in the tile [t0, t1), t1 - t0 <= blockDim.x (qt <= 128). Every
// thread of the block calls it (a barrier), at a block-uniform point.
__device__ __forceinline__ int32_t kn_attn_tile_count(const kn_cuda_attn_args_t &a, int64_t t0, int64_t t1, int32_t s) {
  const int64_t t = t0 + threadIdx.x;
  return __syncthreads_count(t < t1 && a.tok_seq_idx[t] == s);
}

// Called by every thread of the block, at a block-uniform point (the count is a barrier
// unless the first tests settle it: they read the same values in every thread).
__device__ __forceinline__ bool kn_attn_tok_tiled(const kn_cuda_attn_args_t &a, int64_t t, int32_t qt) {
  if (qt <= 0) return false;
  const int32_t s = a.tok_seq_idx[t];
  if (s < 0 || s >= a.kv.n_seqs) return false;
  const int64_t t0 = t - t % qt, t1 = t0 + qt < a.n_tok ? t0 + qt : a.n_tok;
  // A decode token's neighbours belong to other sequences: two loads and out.
  if (a.tok_seq_idx[t0] != s && a.tok_seq_idx[t1 - 1] != s) return false;
  return kn_attn_tile_count(a, t0, t1, s) >= kn_attn_tile_min(qt);
}

__device__ __noinline__ bool kn_attn_tok_tiled_call(const kn_cuda_attn_args_t &a, int64_t t, int32_t qt) {
  return kn_attn_tok_tiled(a, t, qt);
}

__device__ __forceinline__ void kn_attn_store_out(const kn_cuda_attn_args_t &a, int64_t idx, float v) {
  if (a.out_dtype == KN_CUDA_F32)
    ((float *)a.out)[idx] = v;
  else
    ((__nv_bfloat16 *)a.out)[idx] = __float2bfloat16(v);
}

// A per-token block's work: token t, KV head kvh, chunk c of the token's n_tok_chunks,
// keys [j_begin, j_end) of its len. False (block-uniform) when the block has none: a
// token of the tile kernel, or a chunk past the token's keys.
typedef struct {
  int64_t t;
  int32_t kvh, c, len, n_tok_chunks, j_begin, j_end;
} kn_attn_item_t;

__device__ __forceinline__ bool kn_attn_block_item(const kn_attn_launch_t &L, kn_attn_item_t &it) {
  const kn_cuda_attn_args_t &a = L.a;
  const int64_t item = (int64_t)blockIdx.x / L.n_chunks;
  it.c = (int32_t)((int64_t)blockIdx.x % L.n_chunks);
  it.t = item / a.n_kv_heads;
  // Out of line: inlined, the test cost the GT 4 pipelined chunk kernel 24 bytes of
  // spills at its 128-register cap.
  if (L.qt > 0 && kn_attn_tok_tiled_call(a, it.t, L.qt)) return false;
  it.kvh = (int32_t)(item % a.n_kv_heads);
  it.len = kn_attn_tok_len(a, it.t);
  it.n_tok_chunks = kn_attn_tok_chunks(it.len, L.n_chunks, L.chunk);
  if (it.c >= it.n_tok_chunks) return false;
  it.j_begin = it.c * L.chunk;
  it.j_end = it.c == it.n_tok_chunks - 1 ? it.len : it.j_begin + L.chunk;
  return true;
}

// A block's combined (acc, max, sum) for (token, query head) th and dim d: the output
// when the token has one chunk, else chunk c's partial for the merge kernel.
__device__ __forceinline__ void kn_attn_write_result(const kn_attn_launch_t &L, int64_t th, int32_t c,
                                                     int32_t n_tok_chunks, int hd, int d, float ab, float mb,
                                                     float lb) {
  if (n_tok_chunks == 1) {
    kn_attn_store_out(L.a, th * hd + d, lb > 0.0f ? ab / lb : 0.0f); // kv_len 0: zeros
  } else {
    const int64_t p = th * L.n_chunks + c; // this chunk's partial
    L.ws_acc[p * hd + d] = ab;
    if (d == 0) {
      L.ws_ml[2 * p] = mb;
      L.ws_ml[2 * p + 1] = lb;
    }
  }
}

// Folds a partial (m, l, x: max in log2 units, sum, 4 accumulators) into the running
// (mb, lb, ab), rescaling to the larger max (mb = -inf: the first partial).
__device__ __forceinline__ void kn_attn_merge_step(float &mb, float &lb, float4 &ab, float m, float l, float4 x) {
  const float mn = fmaxf(mb, m);
  const float r = exp2f(mb - mn), w = exp2f(m - mn);
  ab.x = fmaf(w, x.x, ab.x * r);
  ab.y = fmaf(w, x.y, ab.y * r);
  ab.z = fmaf(w, x.z, ab.z * r);
  ab.w = fmaf(w, x.w, ab.w * r);
  lb = fmaf(w, l, lb * r);
  mb = mn;
}

// 8 KV elements (one 16-byte load) to f32.
__device__ __forceinline__ void kn_attn_cvt8(const uint4 &r, const __half *, float f[8]) {
  const __half2 *h = (const __half2 *)&r;
#pragma unroll
  for (int i = 0; i < 4; i++) {
    float2 x = __half22float2(h[i]);
    f[2 * i] = x.x;
    f[2 * i + 1] = x.y;
  }
}
__device__ __forceinline__ void kn_attn_cvt8(const uint4 &r, const __nv_bfloat16 *, float f[8]) {
  const __nv_bfloat162 *h = (const __nv_bfloat162 *)&r;
#pragma unroll
  for (int i = 0; i < 4; i++) {
    float2 x = __bfloat1622float2(h[i]);
    f[2 * i] = x.x;
    f[2 * i + 1] = x.y;
  }
}

// One block: work item (t, kv head) = blockIdx.x / n_chunks, chunk c = blockIdx.x % n_chunks.
// GT 4 (GQA groups of 3-4, llama3-8b) is held to 128 registers, 4 blocks an SM, with 2
// rows per team and step and pipelined loads: H100, B=4, ctx 30720: 264.7 -> 235.8 us
// (1.90 -> 2.13 TB/s; bench_cuda_attention; 4 rows and 167 registers, or 4 blocks with
// 4 rows, spilling, were slower).
template <int HD, int GT, typename KV, bool PIPE>
static __global__ void __launch_bounds__(KN_ATTN_THREADS, GT == 4 ? 4 : 1)
    kn_attn_chunk_kernel(const __grid_constant__ kn_attn_launch_t L) {
  kn_pdl_begin();
  constexpr int LANES = HD / 8;                  // lanes per row team
  constexpr int TEAMS_PER_WARP = 32 / LANES;
  constexpr int TEAMS = KN_ATTN_WARPS * TEAMS_PER_WARP;
  constexpr int TPT = GT >= 4 ? 2 : 4;           // rows per team per step (registers bound it)
  constexpr int STEP = TEAMS * TPT;              // rows per block step
  __shared__ float sm_acc[TEAMS][GT][HD];        // each team's acc, for the team merge
  __shared__ float sm_ml[TEAMS][GT][2];          // each team's (max, sum)

  const kn_cuda_attn_args_t &a = L.a;
  kn_attn_item_t it;
  if (!kn_attn_block_item(L, it)) return; // block-uniform: before any barrier
  const int64_t t = it.t;
  const int32_t kvh = it.kvh, c = it.c, len = it.len, n_tok_chunks = it.n_tok_chunks;
  const int32_t j_begin = it.j_begin, j_end = it.j_end;

  const int lane = threadIdx.x % 32;
  const int team = (threadIdx.x / 32) * TEAMS_PER_WARP + lane / LANES;
  const int tl = lane % LANES; // owns dims [8 tl, 8 tl + 8)
  const int32_t n_group = a.n_heads / a.n_kv_heads;
  const int32_t page_tokens = a.kv.page_tokens;
  const int64_t page_stride = a.kv.page_stride_elems;
  // Only dereferenced for rows j < len, which exist when len > 0.
  const int32_t *pages = len > 0 ? a.kv.indices + a.kv.indptr[a.tok_seq_idx[t]] : nullptr;
  const KV *kb = (const KV *)a.kv.k_base + (int64_t)kvh * a.kv.head_stride_elems + tl * 8;
  const KV *vb = (const KV *)a.kv.v_base + (int64_t)kvh * a.kv.head_stride_elems + tl * 8;
  const float qscale = a.scale * KN_LOG2E; // scores in log2 units: exp2f below

  for (int32_t g0 = 0; g0 < n_group; g0 += GT) {
    float q[GT][8], acc[GT][8], m[GT], l[GT];
#pragma unroll
    for (int gi = 0; gi < GT; gi++) {
      const bool on = g0 + gi < n_group;
      const float *qg = a.q + (t * a.n_heads + (int64_t)kvh * n_group + g0 + gi) * HD + tl * 8;
#pragma unroll
      for (int i = 0; i < 8; i++) {
        q[gi][i] = on ? qg[i] * qscale : 0.0f;
        acc[gi][i] = 0.0f;
      }
      m[gi] = -INFINITY;
      l[gi] = 0.0f;
    }

    // A team's TPT rows of K and V from row j0 on (masked rows: zeros, never the pool's
    // bytes).
    auto load_rows = [&](int32_t j0, uint4 (&kr)[TPT], uint4 (&vr)[TPT]) {
#pragma unroll
      for (int k = 0; k < TPT; k++) {
        const int32_t j = j0 + k;
        if (j < j_end) {
          const int64_t off = (int64_t)pages[j / page_tokens] * page_stride + (int64_t)(j % page_tokens) * HD;
          kr[k] = __ldg((const uint4 *)(kb + off));
          vr[k] = __ldg((const uint4 *)(vb + off));
        } else {
          kr[k] = make_uint4(0, 0, 0, 0);
          vr[k] = make_uint4(0, 0, 0, 0);
        }
      }
    };
    // Every team runs the same number of steps (shuffles need the whole warp). The next
    // step's rows are loaded before this step's arithmetic (software pipelining), so a
    // block keeps reading while it computes: without it every block of a one-wave grid
    // (a budgeted layer: 4 x 32 x 9 blocks) loaded, then computed, in lock-step, and
    // the memory sat idle in between (3.2 TB/s on an H200 against 4.3 on full layers).
    // PIPE (the launcher's choice): head tiles of 1 or 2 on grids of at most
    // KN_ATTN_PIPE_MAX_BLOCKS, tiles of 4 always (held to 4 blocks an SM, above). The
    // second buffer costs ~40 registers (GT 1: 78 -> 122, 6 -> 4 blocks an SM), which
    // on a many-wave grid costs more than it hides (H200, longchat-7b 30k full layers:
    // 467 -> 497 us); at GT 8 it would halve the blocks an SM holds.
    uint4 kr[TPT], vr[TPT];
    if (PIPE) load_rows(j_begin + team * TPT, kr, vr);
    for (int32_t js = j_begin; js < j_end; js += STEP) {
      const int32_t j0 = js + team * TPT;
      uint4 kn[TPT], vn[TPT];
      if (!PIPE) load_rows(j0, kr, vr);
      else if (js + STEP < j_end) load_rows(j0 + STEP, kn, vn); // block-uniform
      float s[TPT][GT];
#pragma unroll
      for (int k = 0; k < TPT; k++) {
        float kf[8];
        kn_attn_cvt8(kr[k], kb, kf);
#pragma unroll
        for (int gi = 0; gi < GT; gi++) {
          float d = 0.0f;
#pragma unroll
          for (int i = 0; i < 8; i++) d = fmaf(q[gi][i], kf[i], d);
          s[k][gi] = d;
        }
      }
      // Sum each score over the team's lanes (aligned groups of LANES: xor stays inside).
#pragma unroll
      for (int o = LANES / 2; o >= 1; o >>= 1)
#pragma unroll
        for (int k = 0; k < TPT; k++)
#pragma unroll
          for (int gi = 0; gi < GT; gi++) s[k][gi] += __shfl_xor_sync(0xffffffffu, s[k][gi], o);
#pragma unroll
      for (int gi = 0; gi < GT; gi++) {
        float mx = m[gi];
#pragma unroll
        for (int k = 0; k < TPT; k++) {
          if (j0 + k >= j_end) s[k][gi] = -INFINITY;
          mx = fmaxf(mx, s[k][gi]);
        }
        // mx is -inf only while this team has seen no row: then corr and p are 0.
        const float mx_safe = mx == -INFINITY ? 0.0f : mx;
        const float corr = exp2f(m[gi] - mx_safe);
        l[gi] *= corr;
#pragma unroll
        for (int i = 0; i < 8; i++) acc[gi][i] *= corr;
#pragma unroll
        for (int k = 0; k < TPT; k++) {
          s[k][gi] = exp2f(s[k][gi] - mx_safe);
          l[gi] += s[k][gi];
        }
        m[gi] = mx;
      }
#pragma unroll
      for (int k = 0; k < TPT; k++) {
        float vf[8];
        kn_attn_cvt8(vr[k], vb, vf);
#pragma unroll
        for (int gi = 0; gi < GT; gi++)
#pragma unroll
          for (int i = 0; i < 8; i++) acc[gi][i] = fmaf(s[k][gi], vf[i], acc[gi][i]);
      }
      if (PIPE && js + STEP < j_end) {
#pragma unroll
        for (int k = 0; k < TPT; k++) kr[k] = kn[k], vr[k] = vn[k];
      }
    }

    // Merge the teams: rescale each to the block's max.
#pragma unroll
    for (int gi = 0; gi < GT; gi++) {
#pragma unroll
      for (int i = 0; i < 8; i++) sm_acc[team][gi][tl * 8 + i] = acc[gi][i];
      if (tl == 0) {
        sm_ml[team][gi][0] = m[gi];
        sm_ml[team][gi][1] = l[gi];
      }
    }
    __syncthreads();
    for (int e = threadIdx.x; e < GT * HD; e += KN_ATTN_THREADS) {
      const int gi = e / HD, d = e % HD;
      if (g0 + gi >= n_group) continue;
      float mb = -INFINITY;
      for (int tm = 0; tm < TEAMS; tm++) mb = fmaxf(mb, sm_ml[tm][gi][0]);
      float ab = 0.0f, lb = 0.0f;
      for (int tm = 0; tm < TEAMS; tm++) {
        const float mt = sm_ml[tm][gi][0];
        if (mt == -INFINITY) continue; // a team without rows (or an empty token)
        const float w = exp2f(mt - mb);
        ab = fmaf(w, sm_acc[tm][gi][d], ab);
        lb = fmaf(w, sm_ml[tm][gi][1], lb);
      }
      const int64_t th = t * a.n_heads + (int64_t)kvh * n_group + g0 + gi; // (token, query head)
      kn_attn_write_result(L, th, c, n_tok_chunks, HD, d, ab, mb, lb);
    }
    __syncthreads(); // the next head tile reuses sm_acc / sm_ml
  }
}

// One block per (token, query head) combines the token's chunk partials; tokens with one
// chunk were written by the chunk kernel. KN_ATTN_MERGE_THREADS threads: head_dim / 4
// columns of 4 dims (float4 loads) times G = 1024 / head_dim chunk groups (8 at head_dim
// 128); group g walks chunks g, g + G, ... with an online rescale (one pass: each
// chunk's (max, sum) and its 4 accumulators are loaded together), then group 0 adds the
// groups up through shared memory, in group order. Walks of a few chunks a thread keep
// the merge short where it is latency-bound: the grid is one block per (token, head),
// 128 blocks at batch 4 x 32 heads. (Before: one pass for the maximum, a barrier, then
// one thread per dim over chunks of two groups with scalar loads; before that one thread
// per dim walking every chunk twice: 29 us a layer on an H200 at 121 chunks.)
template <int HD>
static __global__ void __launch_bounds__(KN_ATTN_MERGE_THREADS)
    kn_attn_merge_kernel(const __grid_constant__ kn_attn_launch_t L) {
  constexpr int COLS = HD / 4, G = KN_ATTN_MERGE_THREADS / COLS;
  __shared__ float4 sm_acc[KN_ATTN_MERGE_THREADS];
  __shared__ float2 sm_ml[KN_ATTN_MERGE_THREADS];
  const kn_cuda_attn_args_t &a = L.a;
  const int64_t th = blockIdx.x; // t * n_heads + query head
  const int64_t t = th / a.n_heads;
  // The tables are read before the PDL wait: the kernel before this one is always the
  // call's own chunk or tile kernel, which never writes them, and it waited for whatever
  // wrote them. The partials wait.
  const int32_t n_tok_chunks = kn_attn_tok_chunks(kn_attn_tok_len(a, t), L.n_chunks, L.chunk);
  if (n_tok_chunks <= 1) return; // block-uniform: before any barrier
  if (!L.tile_split && kn_attn_tok_tiled(a, t, L.qt)) return; // written whole by the tile kernel
  kn_pdl_begin();
  const int col = threadIdx.x % COLS, g = threadIdx.x / COLS;
  const float2 *ml = reinterpret_cast<const float2 *>(L.ws_ml + th * L.n_chunks * 2);          // [n_chunks]
  const float4 *acc = reinterpret_cast<const float4 *>(L.ws_acc + th * L.n_chunks * HD) + col; // [n_chunks][COLS]

  float mb = -INFINITY, lb = 0.0f;
  float4 ab = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
#pragma unroll 4
  for (int32_t c = g; c < n_tok_chunks; c += G) {
    const float2 m_l = __ldg(ml + c); // every used chunk has rows: a finite max
    kn_attn_merge_step(mb, lb, ab, m_l.x, m_l.y, __ldg(acc + (int64_t)c * COLS));
  }
  sm_acc[threadIdx.x] = ab;
  sm_ml[threadIdx.x] = make_float2(mb, lb);
  __syncthreads();
  if (g != 0) return;
  for (int k = 1; k < G; k++) {
    const float2 m_l = sm_ml[k * COLS + col];
    if (m_l.x == -INFINITY) continue; // a group past the token's chunks
    kn_attn_merge_step(mb, lb, ab, m_l.x, m_l.y, sm_acc[k * COLS + col]);
  }
  const int64_t o = th * HD + col * 4;
  kn_attn_store_out(a, o, lb > 0.0f ? ab.x / lb : 0.0f);
  kn_attn_store_out(a, o + 1, lb > 0.0f ? ab.y / lb : 0.0f);
  kn_attn_store_out(a, o + 2, lb > 0.0f ? ab.z / lb : 0.0f);
  kn_attn_store_out(a, o + 3, lb > 0.0f ? ab.w / lb : 0.0f);
}

// --- the tiled prefill path ---
//
// One block: query tile k (QT consecutive batch tokens), KV head h, and in split mode
// one chunk c of the call's split. Its query rows are (token, query head) pairs of
// the tile's run, R = QT x GT of them (row r = token qi * GT + head gi), R x head_dim
// = KN_ATTN_TILE_ACC_ELEMS, so R = 128 / 64 / 32 for head_dim 64 / 128 / 256 and
// QT = R / GT (head_dim 128: 64 tokens at GT 1, 16 at GT 4, 8 at GT 8).
// K/V stream through shared memory in tiles of KN_ATTN_TILE_KEYS rows, each read from
// its pages once per block and used by all R rows (the per-token kernel reads it once
// per token). CUDA cores, f32 (not tensor cores yet):
//   S = Q K^T: 4 rows x KPT keys a thread (the R / 4 row groups have TPG = 128 / (R / 4)
//              threads each, consecutive lanes of one warp);
//   online softmax per row in log2 units (max over the group by shuffles, the sum kept
//              per thread and added up at the end); P goes to shared memory;
//   O += P V:  the same 4 rows x DPT = head_dim / TPG = 16 dims a thread.
// Causal masking is per row: key j counts iff j < that row's end (its tok_kv_len, or
// its chunk's end in split mode), so rows of any lengths share a tile exactly.
// Shared memory (dynamic, f32): Q [R][HD + 1], K [KT][HD + 1], V [KT][HD], P [R][KT + 1]
// (the +1 pads keep the column walks on distinct banks), row ends and modes [R] int32:
// 66 / 74 / 103 KB for head_dim 64 / 128 / 256, two blocks an SM.
// Split mode (tile grids under KN_ATTN_MIN_BLOCKS blocks: short runs over long
// context): blocks take the chunk kernel's key chunks and write the same partials,
// which the merge kernel combines; otherwise a block walks all its rows' keys and
// writes the outputs, and the merge kernel skips its tokens.
__host__ __device__ constexpr int kn_attn_tile_rows(int hd) { return KN_ATTN_TILE_ACC_ELEMS / hd; }

__host__ __device__ constexpr size_t kn_attn_tile_smem_bytes(int hd) {
  return sizeof(float) * ((size_t)kn_attn_tile_rows(hd) * (hd + 1) + (size_t)KN_ATTN_TILE_KEYS * (hd + 1) +
                          (size_t)KN_ATTN_TILE_KEYS * hd + (size_t)kn_attn_tile_rows(hd) * (KN_ATTN_TILE_KEYS + 1)) +
         sizeof(int32_t) * 2 * (size_t)kn_attn_tile_rows(hd);
}

template <int HD, int GT, typename KV>
static __global__ void __launch_bounds__(KN_ATTN_THREADS)
    kn_attn_tile_kernel(const __grid_constant__ kn_attn_launch_t L) {
  kn_pdl_begin();
  constexpr int R = kn_attn_tile_rows(HD); // query rows per block
  constexpr int QT = R / GT;               // query tokens per tile
  constexpr int KT = KN_ATTN_TILE_KEYS;
  constexpr int RG = R / 4;                // row groups of 4 rows
  constexpr int TPG = KN_ATTN_THREADS / RG; // threads per row group: 4, 8, 16
  constexpr int KPT = KT / TPG;            // keys per thread in S: 8, 4, 2
  constexpr int DPT = HD / TPG;            // dims per thread in O: 16
  constexpr int VEC = HD / 8;              // 16-byte loads per K or V row
  static_assert(R <= KN_ATTN_THREADS && R % 4 == 0 && QT >= 1, "one setup thread per row");
  static_assert(TPG >= 1 && TPG <= 32 && 32 % TPG == 0 && KT % TPG == 0 && HD % TPG == 0, "row groups in a warp");
  extern __shared__ __align__(16) float sm[];
  float *sQ = sm;                                  // [R][HD + 1] q * scale * log2(e)
  float *sK = sQ + R * (HD + 1);                   // [KT][HD + 1]
  float *sV = sK + KT * (HD + 1);                  // [KT][HD]
  float *sP = sV + KT * HD;                        // [R][KT + 1] exp2(s - m)
  int32_t *sEnd = (int32_t *)(sP + R * (KT + 1));  // [R] each row's key end (exclusive)
  int32_t *sMode = sEnd + R;                       // [R] 0: not this block's, 1: output, 2: partial
  __shared__ int32_t sRed[KN_ATTN_WARPS];

  const kn_cuda_attn_args_t &a = L.a;
  const int32_t n_split = L.tile_split ? L.n_chunks : 1;
  const int64_t n_qtiles = (a.n_tok + QT - 1) / QT;
  int64_t b = blockIdx.x;
  const int32_t c = (int32_t)(b % n_split);
  b /= n_split;
  const int32_t kvh = (int32_t)(b % a.n_kv_heads);
  b /= a.n_kv_heads;
  const int64_t tile = n_qtiles - 1 - b; // the last tiles (the longest causal rows) start first
  const int64_t t0 = tile * QT, t1 = t0 + QT < a.n_tok ? t0 + QT : a.n_tok;
  const int32_t j_begin = L.tile_split ? c * L.chunk : 0;

  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  const int rg = threadIdx.x / TPG, tp = threadIdx.x % TPG;
  const int32_t n_group = a.n_heads / a.n_kv_heads;
  const int32_t page_tokens = a.kv.page_tokens;
  const int64_t page_stride = a.kv.page_stride_elems;
  const KV *kb = (const KV *)a.kv.k_base + (int64_t)kvh * a.kv.head_stride_elems;
  const KV *vb = (const KV *)a.kv.v_base + (int64_t)kvh * a.kv.head_stride_elems;
  const float qscale = a.scale * KN_LOG2E;
  const int32_t min_tok = kn_attn_tile_min(QT);

  for (int pass = 0; pass < 2; pass++) {
    const int32_t s = a.tok_seq_idx[pass == 0 ? t0 : t1 - 1];
    if (pass == 1 && s == a.tok_seq_idx[t0]) break;
    // The same test as kn_attn_tok_tiled, so that exactly its tokens are taken here.
    if (s < 0 || s >= a.kv.n_seqs || kn_attn_tile_count(a, t0, t1, s) < min_tok) continue;
    const int32_t *pages = a.kv.indices + a.kv.indptr[s];

    for (int32_t g0 = 0; g0 < n_group; g0 += GT) {
      __syncthreads(); // the previous pass or head tile is done with shared memory
      // Each row's key range [j_begin, end) and what it writes.
      int32_t row_end = j_begin, mode = 0;
      if (threadIdx.x < R) {
        const int r = threadIdx.x, qi = r / GT, gi = r % GT;
        const int64_t t = t0 + qi;
        if (t < t1 && a.tok_seq_idx[t] == s && g0 + gi < n_group) {
          const int32_t len = kn_attn_tok_len(a, t);
          if (!L.tile_split) {
            mode = 1;
            row_end = len;
          } else {
            const int32_t ntc = kn_attn_tok_chunks(len, L.n_chunks, L.chunk);
            if (c < ntc) {
              mode = ntc == 1 ? 1 : 2;
              row_end = c == ntc - 1 ? len : j_begin + L.chunk;
            }
          }
        }
        sEnd[r] = row_end;
        sMode[r] = mode;
      }
      int32_t mx_end = row_end;
#pragma unroll
      for (int o = 16; o > 0; o >>= 1) mx_end = max(mx_end, __shfl_xor_sync(0xffffffffu, mx_end, o));
      if (lane == 0) sRed[warp] = mx_end;
      if (!__syncthreads_or(mode != 0)) continue; // block-uniform; also publishes sEnd, sMode, sRed
      int32_t j_stop = sRed[0];
#pragma unroll
      for (int w = 1; w < KN_ATTN_WARPS; w++) j_stop = max(j_stop, sRed[w]);

      for (int e = threadIdx.x; e < R * HD; e += KN_ATTN_THREADS) {
        const int r = e / HD, d = e % HD, qi = r / GT, gi = r % GT;
        const int64_t t = t0 + qi;
        float v = 0.0f;
        if (t < t1 && g0 + gi < n_group) v = a.q[(t * a.n_heads + (int64_t)kvh * n_group + g0 + gi) * HD + d] * qscale;
        sQ[r * (HD + 1) + d] = v;
      }

      float acc[4][DPT], m[4], l[4];
      int32_t end[4];
#pragma unroll
      for (int i = 0; i < 4; i++) {
        end[i] = sEnd[rg * 4 + i];
        m[i] = -INFINITY;
        l[i] = 0.0f;
#pragma unroll
        for (int dd = 0; dd < DPT; dd++) acc[i][dd] = 0.0f;
      }

      for (int32_t j0 = j_begin; j0 < j_stop; j0 += KT) {
        __syncthreads(); // sQ written (first tile); the last tile's sK, sV, sP read
        // K/V rows j0 .. j0 + KT: rows at or past j_stop are zeros, never the pool's bytes
        // (a NaN there times p = 0 would still be NaN).
        for (int e = threadIdx.x; e < KT * VEC; e += KN_ATTN_THREADS) {
          const int kr = e / VEC, v8 = e % VEC;
          const int32_t j = j0 + kr;
          float kf[8], vf[8];
          if (j < j_stop) {
            const int64_t off = (int64_t)pages[j / page_tokens] * page_stride + (int64_t)(j % page_tokens) * HD + v8 * 8;
            kn_attn_cvt8(__ldg((const uint4 *)(kb + off)), kb, kf);
            kn_attn_cvt8(__ldg((const uint4 *)(vb + off)), vb, vf);
          } else {
#pragma unroll
            for (int i = 0; i < 8; i++) kf[i] = vf[i] = 0.0f;
          }
#pragma unroll
          for (int i = 0; i < 8; i++) {
            sK[kr * (HD + 1) + v8 * 8 + i] = kf[i];
            sV[kr * HD + v8 * 8 + i] = vf[i];
          }
        }
        __syncthreads();

        // S for this thread's 4 rows x KPT keys (key tp + TPG k).
        float sc[4][KPT];
#pragma unroll
        for (int i = 0; i < 4; i++)
#pragma unroll
          for (int k = 0; k < KPT; k++) sc[i][k] = 0.0f;
#pragma unroll 4
        for (int d = 0; d < HD; d++) {
          float qv[4], kv[KPT];
#pragma unroll
          for (int i = 0; i < 4; i++) qv[i] = sQ[(rg * 4 + i) * (HD + 1) + d];
#pragma unroll
          for (int k = 0; k < KPT; k++) kv[k] = sK[(tp + TPG * k) * (HD + 1) + d];
#pragma unroll
          for (int i = 0; i < 4; i++)
#pragma unroll
            for (int k = 0; k < KPT; k++) sc[i][k] = fmaf(qv[i], kv[k], sc[i][k]);
        }
        // Online softmax per row; the group's TPG lanes are aligned in the warp.
#pragma unroll
        for (int i = 0; i < 4; i++) {
          float mx = m[i];
#pragma unroll
          for (int k = 0; k < KPT; k++) {
            if (j0 + tp + TPG * k >= end[i]) sc[i][k] = -INFINITY; // causal / chunk end
            mx = fmaxf(mx, sc[i][k]);
          }
#pragma unroll
          for (int o = TPG / 2; o >= 1; o >>= 1) mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, o));
          // mx is -inf only while the row has seen no key: then corr and p are 0.
          const float mx_safe = mx == -INFINITY ? 0.0f : mx;
          const float corr = exp2f(m[i] - mx_safe);
          l[i] *= corr;
#pragma unroll
          for (int dd = 0; dd < DPT; dd++) acc[i][dd] *= corr;
#pragma unroll
          for (int k = 0; k < KPT; k++) {
            const float p = exp2f(sc[i][k] - mx_safe);
            l[i] += p;
            sP[(rg * 4 + i) * (KT + 1) + tp + TPG * k] = p;
          }
          m[i] = mx;
        }
        __syncwarp(); // a row's P comes from its group's lanes, all in this warp
#pragma unroll 4
        for (int k = 0; k < KT; k++) {
          float pv[4];
#pragma unroll
          for (int i = 0; i < 4; i++) pv[i] = sP[(rg * 4 + i) * (KT + 1) + k];
#pragma unroll
          for (int dd = 0; dd < DPT; dd++) {
            const float v = sV[k * HD + tp + TPG * dd];
#pragma unroll
            for (int i = 0; i < 4; i++) acc[i][dd] = fmaf(pv[i], v, acc[i][dd]);
          }
        }
      }

#pragma unroll
      for (int i = 0; i < 4; i++) {
#pragma unroll
        for (int o = TPG / 2; o >= 1; o >>= 1) l[i] += __shfl_xor_sync(0xffffffffu, l[i], o);
        const int r = rg * 4 + i, qi = r / GT, gi = r % GT;
        const int md = sMode[r];
        if (md == 0) continue;
        const int64_t th = (t0 + qi) * a.n_heads + (int64_t)kvh * n_group + g0 + gi; // (token, query head)
#pragma unroll
        for (int dd = 0; dd < DPT; dd++) {
          const int d = tp + TPG * dd;
          if (md == 1) {
            kn_attn_store_out(a, th * HD + d, l[i] > 0.0f ? acc[i][dd] / l[i] : 0.0f); // kv_len 0: zeros
          } else {
            const int64_t p = th * L.n_chunks + c; // this chunk's partial, as the chunk kernel's
            L.ws_acc[p * HD + d] = acc[i][dd];
            if (d == 0) {
              L.ws_ml[2 * p] = m[i];
              L.ws_ml[2 * p + 1] = l[i];
            }
          }
        }
      }
    }
  }
}

#include "kn_cuda_attention_mma.cuh"

// --- typed launchers ---

template <int HD, int GT, typename KV>
static void kn_attn_launch_kv(const kn_attn_launch_t &L, int64_t n_blocks, cudaStream_t stream) {
  // GQA groups of 3..8 at head_dim 64 / 128 (kn_attn_takes_mma, which the split also
  // reads): the tensor-core kernel (kn_cuda_attention_mma.cuh).
  if constexpr ((GT == 4 || GT == 8) && HD <= 128) {
    if (kn_attn_takes_mma(&L.a)) {
      constexpr size_t smem = kn_attn_mma::smem_bytes<HD>(); // above the 48 KB a launch gets unasked
      cudaFuncSetAttribute(kn_attn_mma::kernel<HD, GT, KV>, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem);
      kn_launch(kn_attn_mma::kernel<HD, GT, KV>, (unsigned)n_blocks, kn_attn_mma::WARPS * 32, smem, stream, L);
      return;
    }
  }
  if constexpr (GT <= 4) {
    if (GT == 4 || n_blocks <= KN_ATTN_PIPE_MAX_BLOCKS) {
      kn_launch(kn_attn_chunk_kernel<HD, GT, KV, true>, (unsigned)n_blocks, KN_ATTN_THREADS, 0, stream, L);
      return;
    }
  }
  kn_launch(kn_attn_chunk_kernel<HD, GT, KV, false>, (unsigned)n_blocks, KN_ATTN_THREADS, 0, stream, L);
}

template <int HD, int GT, typename KV>
static ak_status_t kn_attn_launch_tile_kv(const kn_attn_launch_t &L, cudaStream_t stream, ak_err_t *err) {
  const size_t smem = kn_attn_tile_smem_bytes(HD); // above the 48 KB a launch gets unasked
  KN_CUDA_TRY(err, cudaFuncSetAttribute(kn_attn_tile_kernel<HD, GT, KV>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                        (int)smem));
  const int64_t n_blocks = kn_ceil_div(L.a.n_tok, L.qt) * L.a.n_kv_heads * (L.tile_split ? L.n_chunks : 1);
  kn_launch(kn_attn_tile_kernel<HD, GT, KV>, (unsigned)n_blocks, KN_ATTN_THREADS, smem, stream, L);
  KN_CUDA_LAUNCHED(err);
  return AK_OK;
}

// tile: the tile kernel (L.qt > 0), else the chunk kernel over n_blocks.
template <int HD, int GT>
static ak_status_t kn_attn_launch_gt(const kn_attn_launch_t &L, int64_t n_blocks, bool tile, cudaStream_t stream,
                                     ak_err_t *err) {
  const bool f16 = L.a.kv.kv_dtype == KN_CUDA_F16;
  if (tile) return f16 ? kn_attn_launch_tile_kv<HD, GT, __half>(L, stream, err)
                       : kn_attn_launch_tile_kv<HD, GT, __nv_bfloat16>(L, stream, err);
  if (f16)
    kn_attn_launch_kv<HD, GT, __half>(L, n_blocks, stream);
  else
    kn_attn_launch_kv<HD, GT, __nv_bfloat16>(L, n_blocks, stream);
  KN_CUDA_LAUNCHED(err);
  return AK_OK;
}

// Query heads a block takes at once for a GQA group (both kernels).
static int32_t kn_attn_gt(int32_t n_group) { return n_group == 1 ? 1 : n_group == 2 ? 2 : n_group <= 4 ? 4 : KN_ATTN_MAX_GT; }

template <int HD>
static ak_status_t kn_attn_launch_hd(const kn_attn_launch_t &L, int64_t n_blocks, bool tile, cudaStream_t stream,
                                     ak_err_t *err) {
  switch (kn_attn_gt(L.a.n_heads / L.a.n_kv_heads)) {
    case 1: return kn_attn_launch_gt<HD, 1>(L, n_blocks, tile, stream, err);
    case 2: return kn_attn_launch_gt<HD, 2>(L, n_blocks, tile, stream, err);
    case 4: return kn_attn_launch_gt<HD, 4>(L, n_blocks, tile, stream, err);
    default: return kn_attn_launch_gt<HD, KN_ATTN_MAX_GT>(L, n_blocks, tile, stream, err); // > 8: tiles of 8 heads
  }
}

// --- public ---

static bool kn_attn_head_dim_ok(int32_t hd) { return hd == 64 || hd == 128 || hd == 256; }

extern "C" size_t kn_cuda_attention_workspace_bytes(const kn_cuda_attn_args_t *a) {
  if (!a || a->n_tok < 1 || a->n_heads < 1 || a->n_kv_heads < 1 || a->head_dim < 1 || a->max_kv_len < 0) return 0;
  const size_t row_bytes = (size_t)(a->head_dim + 2) * sizeof(float);
  const int64_t n_chunks = kn_attn_n_chunks(a->max_kv_len, kn_attn_chunk(a));
  size_t bytes = n_chunks > 1 ? (size_t)a->n_tok * (size_t)a->n_heads * (size_t)n_chunks * row_bytes : 0;
  // A call with fewer tokens or keys that takes chunks below 512 has fewer than
  // 2 * KN_ATTN_MIN_BLOCKS blocks (its grid at twice the chunk had fewer than
  // KN_ATTN_MIN_BLOCKS), so fewer than that many (token, query head, chunk) partials
  // times the group; never more than n_tok * n_heads * ceil(max_kv_len / 64).
  const int64_t most = a->n_tok * a->n_heads * kn_attn_n_chunks(a->max_kv_len, KN_ATTN_MIN_CHUNK_TOKENS);
  const int64_t small = (int64_t)2 * KN_ATTN_MIN_BLOCKS * (a->n_heads / a->n_kv_heads > 0 ? a->n_heads / a->n_kv_heads : 1);
  const int64_t n_small = a->max_kv_len > KN_ATTN_MIN_CHUNK_TOKENS ? (most < small ? most : small) : 0;
  if ((size_t)n_small * row_bytes > bytes) bytes = (size_t)n_small * row_bytes;
  // A tensor-core call's grid is at most one wave when it takes longer chunks
  // (kn_attn_chunk), or when its 512-key grid fits one: at most KN_ATTN_WAVE_MMA blocks
  // times the group, for any call with fewer tokens or keys too.
  if (kn_attn_takes_mma(a) && a->max_kv_len > KN_ATTN_MIN_CHUNK_TOKENS) {
    const int64_t wave = (int64_t)KN_ATTN_WAVE_MMA * (a->n_heads / a->n_kv_heads);
    const int64_t n_wave = most < wave ? most : wave;
    if ((size_t)n_wave * row_bytes > bytes) bytes = (size_t)n_wave * row_bytes;
  }
  return bytes;
}

extern "C" void kn_cuda_attention_split(const kn_cuda_attn_args_t *a, int32_t *chunk_tokens, int32_t *n_chunks) {
  int32_t c = 0, n = 0;
  if (a && a->n_tok >= 1 && a->n_kv_heads >= 1 && a->max_kv_len >= 0) {
    c = kn_attn_chunk(a);
    n = kn_attn_n_chunks(a->max_kv_len, c);
  }
  if (chunk_tokens) *chunk_tokens = c;
  if (n_chunks) *n_chunks = n;
}

// Messages name the public op, not the helper.
#define KN_ATTN_ERR(err, st, ...) ak_err_set_fn((err), (st), "kn_cuda_attention", __VA_ARGS__)

// Everything checkable on the host, before any CUDA call (device tables are not read).
static ak_status_t kn_attn_check(const kn_cuda_attn_args_t *a, const void *workspace, size_t workspace_bytes,
                                 ak_err_t *err) {
  if (!a) return KN_ATTN_ERR(err, AK_ERR_INVALID_ARG, "args is NULL");
  const kn_cuda_paged_kv_t *kv = &a->kv;
  if (!a->q || !a->out || !a->tok_seq_idx || !a->tok_kv_len || !kv->k_base || !kv->v_base || !kv->indptr ||
      !kv->indices || !kv->last_page_len)
    return KN_ATTN_ERR(err, AK_ERR_INVALID_ARG,
                  "NULL pointer in attention args (q %p out %p tok_seq_idx %p tok_kv_len %p k_base %p "
                  "v_base %p indptr %p indices %p last_page_len %p)",
                  (const void *)a->q, a->out, (const void *)a->tok_seq_idx, (const void *)a->tok_kv_len,
                  kv->k_base, kv->v_base, (const void *)kv->indptr, (const void *)kv->indices,
                  (const void *)kv->last_page_len);
  if (a->n_tok < 1 || a->n_heads < 1 || a->n_kv_heads < 1 || kv->n_seqs < 1)
    return KN_ATTN_ERR(err, AK_ERR_INVALID_ARG, "n_tok=%lld n_heads=%d n_kv_heads=%d n_seqs=%d must be >= 1",
                  (long long)a->n_tok, a->n_heads, a->n_kv_heads, kv->n_seqs);
  if (!kn_attn_head_dim_ok(a->head_dim))
    return KN_ATTN_ERR(err, AK_ERR_UNSUPPORTED, "head_dim=%d is not supported (64, 128 or 256)", a->head_dim);
  if (a->n_heads % a->n_kv_heads)
    return KN_ATTN_ERR(err, AK_ERR_INVALID_ARG, "n_heads=%d is not a multiple of n_kv_heads=%d", a->n_heads,
                  a->n_kv_heads);
  if (kv->kv_dtype != KN_CUDA_F16 && kv->kv_dtype != KN_CUDA_BF16)
    return KN_ATTN_ERR(err, AK_ERR_UNSUPPORTED, "kv_dtype %d is not supported (F16 or BF16)", (int)kv->kv_dtype);
  if (a->out_dtype != KN_CUDA_F32 && a->out_dtype != KN_CUDA_BF16)
    return KN_ATTN_ERR(err, AK_ERR_UNSUPPORTED, "out_dtype %d is not supported (F32 or BF16)", (int)a->out_dtype);
  if (kv->page_tokens < 1 || kv->page_tokens > 256)
    return KN_ATTN_ERR(err, AK_ERR_INVALID_ARG, "page_tokens=%d outside [1, 256]", kv->page_tokens);
  if (kv->head_stride_elems < (int64_t)kv->page_tokens * a->head_dim ||
      kv->page_stride_elems < (int64_t)a->n_kv_heads * kv->head_stride_elems)
    return KN_ATTN_ERR(err, AK_ERR_INVALID_ARG,
                  "strides too small: head_stride_elems=%lld page_stride_elems=%lld for page_tokens=%d "
                  "head_dim=%d n_kv_heads=%d",
                  (long long)kv->head_stride_elems, (long long)kv->page_stride_elems, kv->page_tokens,
                  a->head_dim, a->n_kv_heads);
  // 16-byte row loads: every row must start on a 16-byte boundary.
  if (kv->head_stride_elems % 8 || kv->page_stride_elems % 8 || (uintptr_t)kv->k_base % 16 ||
      (uintptr_t)kv->v_base % 16)
    return KN_ATTN_ERR(err, AK_ERR_INVALID_ARG,
                  "K/V rows must be 16-byte aligned: k_base %p v_base %p head_stride_elems=%lld "
                  "page_stride_elems=%lld (multiples of 8)",
                  kv->k_base, kv->v_base, (long long)kv->head_stride_elems, (long long)kv->page_stride_elems);
  if (a->max_kv_len < 0)
    return KN_ATTN_ERR(err, AK_ERR_INVALID_ARG, "max_kv_len=%d < 0", a->max_kv_len);
  if (a->kv_stable != 0 && a->kv_stable != 1)
    return KN_ATTN_ERR(err, AK_ERR_INVALID_ARG, "kv_stable=%d is not 0 or 1", a->kv_stable);
  if (a->prefill_tiles < 0 || a->prefill_tiles > 2)
    return KN_ATTN_ERR(err, AK_ERR_INVALID_ARG, "prefill_tiles=%d is not 0 (off), 1 (tiles) or 2 (tiles, never split)",
                       a->prefill_tiles);
  const int64_t n_chunks = kn_attn_n_chunks(a->max_kv_len, kn_attn_chunk(a));
  if (a->n_tok * a->n_kv_heads * n_chunks > INT32_MAX || a->n_tok * a->n_heads > INT32_MAX)
    return KN_ATTN_ERR(err, AK_ERR_INVALID_ARG, "n_tok=%lld x n_heads=%d x %lld chunks exceeds the grid",
                  (long long)a->n_tok, a->n_heads, (long long)n_chunks);
  const size_t need = kn_cuda_attention_workspace_bytes(a);
  if (need > 0 && (!workspace || workspace_bytes < need))
    return KN_ATTN_ERR(err, AK_ERR_INVALID_ARG, "workspace of %zu bytes, needs %zu (n_tok=%lld n_heads=%d max_kv_len=%d)",
                  workspace ? workspace_bytes : (size_t)0, need, (long long)a->n_tok, a->n_heads, a->max_kv_len);
  if (need > 0 && (uintptr_t)workspace % 16)
    return KN_ATTN_ERR(err, AK_ERR_INVALID_ARG, "workspace %p is not 16-byte aligned", workspace);
  return AK_OK;
}

extern "C" ak_status_t kn_cuda_attention(const kn_cuda_attn_args_t *args, void *workspace, size_t workspace_bytes,
                                         kn_cuda_stream_t stream, ak_err_t *err) {
  AK_TRY(kn_attn_check(args, workspace, workspace_bytes, err));
  kn_attn_launch_t L;
  L.a = *args;
  L.chunk = kn_attn_chunk(args);
  L.n_chunks = kn_attn_n_chunks(args->max_kv_len, L.chunk);
  const int64_t n_th = args->n_tok * args->n_heads;
  L.ws_acc = L.n_chunks > 1 ? (float *)workspace : nullptr;
  L.ws_ml = L.n_chunks > 1 ? (float *)workspace + n_th * L.n_chunks * args->head_dim : nullptr;
  // The tiled path (see kn_attn_tile_kernel): query tiles of qt tokens; split over the
  // chunks when the tile grid alone would not fill the GPU.
  L.qt = 0;
  L.tile_split = 0;
  if (args->prefill_tiles) {
    const int32_t qt = kn_attn_tile_rows(args->head_dim) / kn_attn_gt(args->n_heads / args->n_kv_heads);
    if (args->n_tok >= kn_attn_tile_min(qt)) {
      L.qt = qt;
      L.tile_split = args->prefill_tiles != 2 && L.n_chunks > 1 &&
                     kn_ceil_div(args->n_tok, qt) * args->n_kv_heads < KN_ATTN_MIN_BLOCKS;
    }
  }
  const int64_t n_blocks = args->n_tok * args->n_kv_heads * L.n_chunks;
  cudaStream_t s = kn_stream(stream);
  // The chunk kernel skips the tiled tokens; the merge (after both) combines split partials.
  for (int tile = 0; tile <= (L.qt > 0); tile++) {
    switch (args->head_dim) {
      case 64: AK_TRY(kn_attn_launch_hd<64>(L, n_blocks, tile, s, err)); break;
      case 128: AK_TRY(kn_attn_launch_hd<128>(L, n_blocks, tile, s, err)); break;
      case 256: AK_TRY(kn_attn_launch_hd<256>(L, n_blocks, tile, s, err)); break;
      default:
        return KN_ATTN_ERR(err, AK_ERR_UNSUPPORTED, "head_dim=%d is not supported (64, 128 or 256)", args->head_dim);
    }
  }
  if (L.n_chunks > 1) {
    switch (args->head_dim) {
      case 64: kn_launch(kn_attn_merge_kernel<64>, (unsigned)n_th, KN_ATTN_MERGE_THREADS, 0, s, L); break;
      case 128: kn_launch(kn_attn_merge_kernel<128>, (unsigned)n_th, KN_ATTN_MERGE_THREADS, 0, s, L); break;
      default: kn_launch(kn_attn_merge_kernel<256>, (unsigned)n_th, KN_ATTN_MERGE_THREADS, 0, s, L); break;
    }
    KN_CUDA_LAUNCHED(err);
  }
  return AK_OK;
}
