// kn_cuda_gather: ArkVale recall as one kernel — n_pages pages copied from
// device-visible source addresses (mapped pinned host memory read over PCIe, or device
// memory) into their slots dst_base + dst_page[i] * page_bytes. One launch replaces a
// cudaMemcpyAsync per page; the page list is built on the device (no host round trip).
// Not here: choosing the pages (kn_cuda_topk) or writing backups.
//
// Launch: 256-thread blocks, grid-stride over work items of (page, 16 KiB slice): a
// block reads a page's src pointer and dst slot once per item, each thread issues its
// 4 16-byte loads (the warp's are 512 contiguous bytes) before any store, so every
// resident block keeps 16 KiB in flight: what a PCIe read stream needs to cover its
// ~1-2 us latency. Source loads are streaming (ld.global.cs: read once, no L2 keep);
// stores are plain so the recalled page stays in L2 for the attention that follows.
// dst_page[i] < 0 skips page i (a slot the caller decided not to fill).
#include "kn_cuda_internal.cuh"

namespace {

constexpr int KN_GA_THREADS = 256;
constexpr int KN_GA_UNROLL = 4;
constexpr int64_t KN_GA_SLICE_CHUNKS = KN_GA_THREADS * KN_GA_UNROLL;  // 16-byte chunks: 16 KiB
constexpr int64_t KN_GA_MAX_BLOCKS = 4096;

// src_ptrs: [n_pages] device-visible, 16-byte aligned; dst: [...][page_chunks] int4.
__global__ void __launch_bounds__(KN_GA_THREADS)
    kn_gather_kernel(const void *const *__restrict__ src_ptrs, char *__restrict__ dst_base,
                     const int32_t *__restrict__ dst_page, int64_t page_chunks, int64_t slices_per_page,
                     int64_t n_items) {
  kn_pdl_begin();
  for (int64_t item = blockIdx.x; item < n_items; item += gridDim.x) {
    const int64_t p = item / slices_per_page;
    const int64_t c0 = (item - p * slices_per_page) * KN_GA_SLICE_CHUNKS + threadIdx.x;
    const int32_t slot = dst_page[p];
    if (slot < 0) continue;  // block-uniform
    const int4 *src = (const int4 *)src_ptrs[p];
    int4 *dst = (int4 *)(dst_base + (int64_t)slot * page_chunks * 16);
    int4 v[KN_GA_UNROLL];
#pragma unroll
    for (int j = 0; j < KN_GA_UNROLL; j++) {
      const int64_t c = c0 + j * KN_GA_THREADS;
      if (c < page_chunks) v[j] = __ldcs(src + c);
    }
#pragma unroll
    for (int j = 0; j < KN_GA_UNROLL; j++) {
      const int64_t c = c0 + j * KN_GA_THREADS;
      if (c < page_chunks) dst[c] = v[j];
    }
  }
}

ak_status_t kn_gather_check(const kn_cuda_gather_args_t *a, ak_err_t *err) {
  const char *fn = "kn_cuda_gather_pages";
  if (!a) return ak_err_set_fn(err, AK_ERR_INVALID_ARG, fn, "args is NULL");
  if (a->n_pages < 0) return ak_err_set_fn(err, AK_ERR_INVALID_ARG, fn, "n_pages=%lld < 0", (long long)a->n_pages);
  if (a->page_bytes == 0 || a->page_bytes % 16 != 0)
    return ak_err_set_fn(err, AK_ERR_INVALID_ARG, fn, "page_bytes=%zu must be a positive multiple of 16",
                         a->page_bytes);
  if (a->page_bytes > ((size_t)1 << 40))
    return ak_err_set_fn(err, AK_ERR_INVALID_ARG, fn, "page_bytes=%zu is not a page size", a->page_bytes);
  if (a->n_pages == 0) return AK_OK;
  if (!a->src_ptrs || !a->dst_base || !a->dst_page)
    return ak_err_set_fn(err, AK_ERR_INVALID_ARG, fn, "src_ptrs=%p, dst_base=%p, dst_page=%p: all are required",
                         (const void *)a->src_ptrs, a->dst_base, (const void *)a->dst_page);
  if ((uintptr_t)a->dst_base % 16)
    return ak_err_set_fn(err, AK_ERR_INVALID_ARG, fn, "dst_base=%p is not 16-byte aligned", a->dst_base);
  if ((uintptr_t)a->src_ptrs % sizeof(void *) || (uintptr_t)a->dst_page % 4)
    return ak_err_set_fn(err, AK_ERR_INVALID_ARG, fn, "src_ptrs=%p (8-byte) or dst_page=%p (4-byte) is misaligned",
                         (const void *)a->src_ptrs, (const void *)a->dst_page);
  return AK_OK;
}

}  // namespace

extern "C" ak_status_t kn_cuda_gather_pages(const kn_cuda_gather_args_t *args, kn_cuda_stream_t stream,
                                            ak_err_t *err) {
  AK_TRY(kn_gather_check(args, err));
  if (args->n_pages == 0) return AK_OK;
  const int64_t page_chunks = (int64_t)(args->page_bytes / 16);
  const int64_t slices_per_page = kn_ceil_div(page_chunks, KN_GA_SLICE_CHUNKS);
  const int64_t n_items = args->n_pages * slices_per_page;
  const int n_blocks = (int)(n_items < KN_GA_MAX_BLOCKS ? n_items : KN_GA_MAX_BLOCKS);
  kn_launch(kn_gather_kernel, n_blocks, KN_GA_THREADS, 0, kn_stream(stream),
      args->src_ptrs, (char *)args->dst_base, args->dst_page, page_chunks, slices_per_page, n_items);
  KN_CUDA_LAUNCHED(err);
  return AK_OK;
}
