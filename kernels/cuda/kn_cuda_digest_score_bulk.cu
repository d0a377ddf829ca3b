// kn_cuda_digest_score_bulk: the cuboid kinds of kn_cuda_digest_score, with each page's
// digest brought into shared memory by one bulk copy (Hopper's cp.async.bulk, the
// 1-D form of TMA). Same formulas and arguments as kn_cuda_digest_score.cu, which
// keeps the other kinds and pages too large for a stage.
//
// Why: the register-fed kernel keeps only 2 x 2 loads of 16 bytes in flight per lane at
// its 64-register cap, and one wave of 4 x 962 pages x 32 KV heads (f16, 63 MB) ran at
// 2.13 TB/s on an H100 (f32: 2.25), under the 2.5 TB/s the CUDA issue asks. A bulk copy
// needs no registers for the bytes in flight: a block keeps S pages of copies
// outstanding (S x page_bytes = 32 KiB, as many blocks an SM as fit) while its warps
// score the page that has landed. Same shape, same H100: f16 25.1 us (2.51 TB/s), f32
// 47.9 us (2.63 TB/s); 4 x 4000 pages: 2.84 / 3.01 TB/s. Pages of 8..32 KiB only (see
// KN_DSB_MIN_PAGE_BYTES).
//
// Work: a cuboid page digest is [n_kv_heads][ub[D], lb[D]] of T (f32, f16 or bf16),
// contiguous, page_bytes = n_kv_heads * 2 * D * sizeof(T). Block b takes pages
// [b * ppb, (b + 1) * ppb) in order through a ring of S stages of page_bytes, one
// mbarrier each (expect_tx page_bytes, completed by the copy):
//   - thread 0 issues the first S copies; for page i: every thread waits on its stage's
//     barrier (phase (i / S) & 1), the warps score it, a barrier, then thread 0 refills
//     the stage with page i + S and combines the warps' results into scores[p].
//   - warp w takes KV heads w, w + 8, ...; lane l holds dims [l * D / 32, (l + 1) * D / 32)
//     of ub and lb (one 4..32-byte shared load each) and of q (its first 4 (KV head,
//     query head) pairs in registers, reloaded when the sequence changes: the pages of
//     a block mostly share one). For each query head of the group
//     part = sum_d max(q_d ub_d, q_d lb_d), over the lanes by shuffles.
//   - mean (agg 0) adds every (KV head, query head) part: the lanes' sums are added
//     over the page first and reduced once; max (agg 1) reduces each part. The warps'
//     values are combined in warp order by thread 0, so results do not depend on timing.
// A page whose page_seq is out of range scores -inf (its copy still lands; nothing
// reads it). f32 arithmetic as the CPU; the summation order differs (scores agree to
// rounding, as the other kernel's).
#include <math.h>

#include <type_traits>

#include "kn_cuda_digest.cuh"
#include "kn_cuda_digest_score_bulk.cuh"

namespace {

constexpr int KN_DSB_WARPS = 8;
constexpr int KN_DSB_QC = 4;  // (KV head, query head) pairs a warp keeps q for in registers
// The bytes a block keeps in flight (at least 2 stages). H100, 4 x 962 pages x 32 KV heads
// x 128: 32 KiB gave f16 25.1 us, 64 KiB 26.8 (fewer blocks an SM); f32 47.9 either way.
constexpr size_t KN_DSB_RING_BYTES = 32 * 1024;
// Page digests this kernel takes; the others go to the register-fed kernel. Below 8 KiB
// the per-page steps (barrier wait, block barrier, combine) outweigh the copies: 8 KV
// heads x 128 in f16 (4 KiB, Llama-3-8B's shape) took 17.6 us here against 13.1 there,
// while f32 (8 KiB) took 17.8 against 20.7.
constexpr size_t KN_DSB_MIN_PAGE_BYTES = 8 * 1024;
constexpr size_t KN_DSB_MAX_PAGE_BYTES = 32 * 1024;  // two stages of 32 KiB per block
constexpr int KN_DSB_MAX_STAGES = (int)(KN_DSB_RING_BYTES / KN_DSB_MIN_PAGE_BYTES);  // stages of the smallest pages

__device__ __forceinline__ unsigned kn_smem_addr(const void *p) { return (unsigned)__cvta_generic_to_shared(p); }

__device__ __forceinline__ void kn_mbar_init(uint64_t *bar, unsigned count) {
  asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;" ::"r"(kn_smem_addr(bar)), "r"(count) : "memory");
}

// Arms the barrier for `bytes` of copies and starts one bulk copy of them into dst.
__device__ __forceinline__ void kn_bulk_load(void *dst, const void *src, unsigned bytes, uint64_t *bar) {
  asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;" ::"r"(kn_smem_addr(bar)), "r"(bytes)
               : "memory");
  asm volatile(
      "cp.async.bulk.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1], %2, [%3];" ::"r"(
          kn_smem_addr(dst)),
      "l"(src), "r"(bytes), "r"(kn_smem_addr(bar))
      : "memory");
}

__device__ __forceinline__ void kn_mbar_wait(uint64_t *bar, unsigned parity) {
  asm volatile(
      "{\n"
      ".reg .pred done;\n"
      "KN_MBAR_WAIT_%=:\n"
      "mbarrier.try_wait.parity.shared::cta.b64 done, [%0], %1;\n"
      "@!done bra KN_MBAR_WAIT_%=;\n"
      "}\n" ::"r"(kn_smem_addr(bar)),
      "r"(parity)
      : "memory");
}

// N elements of T at p (shared memory, N * sizeof(T) bytes aligned to that size) as f32.
template <typename T, int N>
__device__ __forceinline__ void kn_dsb_load(const T *p, float *out) {
  if constexpr (sizeof(T) == 4) {
#pragma unroll
    for (int k = 0; k < N; k += 4) {
      if constexpr (N >= 4) {
        const float4 v = *reinterpret_cast<const float4 *>(p + k);
        out[k] = v.x, out[k + 1] = v.y, out[k + 2] = v.z, out[k + 3] = v.w;
      }
    }
    if constexpr (N == 2) {
      const float2 v = *reinterpret_cast<const float2 *>(p);
      out[0] = v.x, out[1] = v.y;
    }
  } else {
    // 16-bit: N / 2 words; bf16 is the top half of an f32, f16 converts exactly.
    unsigned w[N / 2];
    if constexpr (N == 2) {
      w[0] = *reinterpret_cast<const unsigned *>(p);
    } else if constexpr (N == 4) {
      const uint2 v = *reinterpret_cast<const uint2 *>(p);
      w[0] = v.x, w[1] = v.y;
    } else {
#pragma unroll
      for (int k = 0; k < N / 8; k++) {
        const uint4 v = *reinterpret_cast<const uint4 *>(p + 8 * k);
        w[4 * k] = v.x, w[4 * k + 1] = v.y, w[4 * k + 2] = v.z, w[4 * k + 3] = v.w;
      }
    }
#pragma unroll
    for (int k = 0; k < N / 2; k++) {
      if constexpr (std::is_same<T, __nv_bfloat16>::value) {
        out[2 * k] = __uint_as_float(w[k] << 16);
        out[2 * k + 1] = __uint_as_float(w[k] & 0xffff0000u);
      } else {
        const float2 f = __half22float2(__halves2half2(__ushort_as_half((unsigned short)(w[k] & 0xffffu)),
                                                       __ushort_as_half((unsigned short)(w[k] >> 16))));
        out[2 * k] = f.x, out[2 * k + 1] = f.y;
      }
    }
  }
}

// q's N floats for one lane (global, 4 * N bytes aligned to min(16, 4 * N)).
template <int N>
__device__ __forceinline__ void kn_dsb_load_q(const float *p, float *out) {
  if constexpr (N == 2) {
    const float2 v = __ldg(reinterpret_cast<const float2 *>(p));
    out[0] = v.x, out[1] = v.y;
  } else {
#pragma unroll
    for (int k = 0; k < N; k += 4) {
      const float4 v = __ldg(reinterpret_cast<const float4 *>(p + k));
      out[k] = v.x, out[k + 1] = v.y, out[k + 2] = v.z, out[k + 3] = v.w;
    }
  }
}

__device__ __forceinline__ float kn_dsb_warp_sum(float v) {
#pragma unroll
  for (int off = 16; off > 0; off >>= 1) v += __shfl_xor_sync(0xffffffffu, v, off);
  return v;
}

// Dynamic shared memory: n_stages stages of page_bytes (a 16-byte multiple), one
// mbarrier each (static). ppb pages per block.
template <int D, typename T>
__global__ void __launch_bounds__(KN_DSB_WARPS * 32)
    kn_digest_score_bulk_kernel(int agg, const T *__restrict__ digests, const int32_t *__restrict__ page_seq,
                                const float *__restrict__ q, float *__restrict__ scores, int64_t n_pages, int n_seqs,
                                int n_heads, int n_kv_heads, int n_stages, int64_t ppb) {
  constexpr int DPL = D / 32;  // dims per lane
  extern __shared__ __align__(128) unsigned char kn_dsb_smem[];
  __shared__ uint64_t bar[KN_DSB_MAX_STAGES];
  __shared__ float wagg[2][KN_DSB_WARPS];  // double-buffered: page i + 1's writes never meet page i's reads
  const unsigned page_bytes = (unsigned)n_kv_heads * 2u * D * (unsigned)sizeof(T);
  const int64_t p0 = (int64_t)blockIdx.x * ppb;
  const int64_t p1 = p0 + ppb < n_pages ? p0 + ppb : n_pages;
  const int64_t n_mine = p1 > p0 ? p1 - p0 : 0;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int group = n_heads / n_kv_heads;

  if (threadIdx.x == 0) {
    for (int s = 0; s < n_stages; s++) kn_mbar_init(&bar[s], 1);
    asm volatile("fence.mbarrier_init.release.cluster;" ::: "memory");
  }
  __syncthreads();
  kn_pdl_begin();  // the digests are written by earlier kernels (kn_cuda_digest_build)
  if (threadIdx.x == 0)
    for (int64_t i = 0; i < n_stages && i < n_mine; i++)
      kn_bulk_load(kn_dsb_smem + (size_t)i * page_bytes, digests + (p0 + i) * (page_bytes / sizeof(T)), page_bytes,
                   &bar[i]);

  // A warp's (KV head, query head) pairs: k = r * group + hh for its r-th KV head
  // g = warp + 8 r. The first KN_DSB_QC pairs keep their q slice in registers while
  // consecutive pages share a sequence (ncu, f16 pages read through L1 per page: 70% of
  // the warps' stalls waited on those loads); further pairs read q through L1.
  const int n_rows = n_kv_heads > warp ? (n_kv_heads - warp + KN_DSB_WARPS - 1) / KN_DSB_WARPS : 0;
  const int n_pairs = n_rows * group;
  float qc[KN_DSB_QC][DPL];
  int q_seq = -1;
  auto score_pair = [&](const T *page, const float *qv, int k, float &lane_sum, float &wmax) {
    const int g = warp + KN_DSB_WARPS * (k / group);
    float ub[DPL], lb[DPL];
    kn_dsb_load<T, DPL>(page + (size_t)g * 2 * D + lane * DPL, ub);
    kn_dsb_load<T, DPL>(page + (size_t)g * 2 * D + D + lane * DPL, lb);
    float part = 0.f;
#pragma unroll
    for (int e = 0; e < DPL; e++) {
      const float u = qv[e] * ub[e], l = qv[e] * lb[e];
      part += u > l ? u : l;
    }
    if (agg == 1) {
      part = kn_dsb_warp_sum(part);
      wmax = part > wmax ? part : wmax;
    } else {
      lane_sum += part;
    }
  };
  // The q row of pair k of sequence sq (lane's slice).
  auto q_row = [&](int sq, int k) {
    const int g = warp + KN_DSB_WARPS * (k / group), hh = k % group;
    return q + ((int64_t)sq * n_heads + (int64_t)g * group + hh) * D + lane * DPL;
  };

  int sq_next = n_mine > 0 ? page_seq[p0] : -1;  // the next page's sequence, loaded a page ahead
  for (int64_t i = 0; i < n_mine; i++) {
    const int s = (int)(i % n_stages);
    const int64_t p = p0 + i;
    const int sq = sq_next;
    if (i + 1 < n_mine) sq_next = page_seq[p + 1];
    const bool ok = sq >= 0 && sq < n_seqs;
    if (ok && sq != q_seq) {  // block-uniform
#pragma unroll
      for (int k = 0; k < KN_DSB_QC; k++)
        if (k < n_pairs) kn_dsb_load_q<DPL>(q_row(sq, k), qc[k]);
      q_seq = sq;
    }
    kn_mbar_wait(&bar[s], (unsigned)((i / n_stages) & 1));
    const T *page = reinterpret_cast<const T *>(kn_dsb_smem + (size_t)s * page_bytes);
    float lane_sum = 0.f, wmax = -INFINITY;
    if (ok) {
#pragma unroll
      for (int k = 0; k < KN_DSB_QC; k++)
        if (k < n_pairs) score_pair(page, qc[k], k, lane_sum, wmax);
      for (int k = KN_DSB_QC; k < n_pairs; k++) {
        float qv[DPL];
        kn_dsb_load_q<DPL>(q_row(sq, k), qv);
        score_pair(page, qv, k, lane_sum, wmax);
      }
    }
    const float wv = agg == 1 ? wmax : kn_dsb_warp_sum(lane_sum);
    if (lane == 0) wagg[i & 1][warp] = wv;
    __syncthreads();  // every warp is done with stage s and has written wagg
    if (threadIdx.x == 0) {
      if (i + n_stages < n_mine) {
        // The stage's generic-proxy reads are ordered (barrier above) before the async
        // proxy's writes into it.
        asm volatile("fence.proxy.async.shared::cta;" ::: "memory");
        kn_bulk_load(kn_dsb_smem + (size_t)s * page_bytes, digests + (p + n_stages) * (page_bytes / sizeof(T)),
                     page_bytes, &bar[s]);
      }
      float acc = agg == 1 ? -INFINITY : 0.f;
#pragma unroll
      for (int w = 0; w < KN_DSB_WARPS; w++) acc = agg == 1 ? (wagg[i & 1][w] > acc ? wagg[i & 1][w] : acc)
                                                          : acc + wagg[i & 1][w];
      scores[p] = !ok ? -INFINITY : agg == 1 ? acc : acc / (float)n_heads;
    }
  }
}

template <int D, typename T>
cudaError_t kn_dsb_launch(const kn_cuda_digest_score_args_t *a, size_t page_bytes, cudaStream_t stream) {
  int n_stages = (int)(KN_DSB_RING_BYTES / page_bytes);
  if (n_stages > KN_DSB_MAX_STAGES) n_stages = KN_DSB_MAX_STAGES;
  if (n_stages < 2) n_stages = 2;
  const size_t smem = (size_t)n_stages * page_bytes;
  int dev = 0, n_sm = 0;
  cudaError_t e = cudaGetDevice(&dev);
  if (e == cudaSuccess) e = cudaDeviceGetAttribute(&n_sm, cudaDevAttrMultiProcessorCount, dev);
  if (e != cudaSuccess) return e;
  if (smem > 48 * 1024) {
    e = cudaFuncSetAttribute(kn_digest_score_bulk_kernel<D, T>, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem);
    if (e != cudaSuccess) return e;
  }
  // One wave: as many blocks as fit, pages split evenly over them.
  int per_sm = 0;
  e = cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kn_digest_score_bulk_kernel<D, T>, KN_DSB_WARPS * 32, smem);
  if (e != cudaSuccess) return e;
  if (per_sm < 1) per_sm = 1;
  const int64_t max_blocks = (int64_t)n_sm * per_sm;
  const int64_t ppb = kn_ceil_div(a->n_pages, max_blocks);
  const int64_t n_blocks = kn_ceil_div(a->n_pages, ppb);
  kn_launch(kn_digest_score_bulk_kernel<D, T>, (unsigned)n_blocks, KN_DSB_WARPS * 32, smem, stream, a->agg,
            (const T *)a->digests, a->page_seq, a->q, a->scores, a->n_pages, a->n_seqs, a->n_heads, a->n_kv_heads,
            n_stages, ppb);
  return cudaGetLastError();
}

template <typename T>
cudaError_t kn_dsb_launch_t(const kn_cuda_digest_score_args_t *a, size_t page_bytes, cudaStream_t stream) {
  switch (a->head_dim) {
    case 64: return kn_dsb_launch<64, T>(a, page_bytes, stream);
    case 128: return kn_dsb_launch<128, T>(a, page_bytes, stream);
    default: return kn_dsb_launch<256, T>(a, page_bytes, stream);
  }
}

}  // namespace

size_t kn_digest_score_bulk_page_bytes(const kn_cuda_digest_score_args_t *a) {
  const size_t elem = a->digest_dtype == KN_CUDA_F32 ? 4 : 2;
  return (size_t)a->n_kv_heads * 2 * (size_t)a->head_dim * elem;
}

bool kn_digest_score_bulk_applies(const kn_cuda_digest_score_args_t *a) {
  const size_t page_bytes = kn_digest_score_bulk_page_bytes(a);
  return kn_digest_is_cuboid(a->kind) && (a->head_dim == 64 || a->head_dim == 128 || a->head_dim == 256) &&
         page_bytes >= KN_DSB_MIN_PAGE_BYTES && page_bytes <= KN_DSB_MAX_PAGE_BYTES;
}

cudaError_t kn_digest_score_bulk_run(const kn_cuda_digest_score_args_t *a, cudaStream_t stream) {
  const size_t page_bytes = kn_digest_score_bulk_page_bytes(a);
  switch (a->digest_dtype) {
    case KN_CUDA_F32: return kn_dsb_launch_t<float>(a, page_bytes, stream);
    case KN_CUDA_F16: return kn_dsb_launch_t<__half>(a, page_bytes, stream);
    default: return kn_dsb_launch_t<__nv_bfloat16>(a, page_bytes, stream);
  }
}
