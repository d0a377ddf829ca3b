// kn_cuda_digest_score_bulk: the bulk-copy path of kn_cuda_digest_score for the cuboid
// kinds (kn_cuda_digest_score_bulk.cu); kn_cuda_digest_score.cu checks the arguments
// and picks it when it applies.
#ifndef KN_CUDA_DIGEST_SCORE_BULK_CUH
#define KN_CUDA_DIGEST_SCORE_BULK_CUH

#include "kn_cuda_internal.cuh"

// Bytes of one page's digest (cuboid: n_kv_heads * 2 * head_dim elements).
size_t kn_digest_score_bulk_page_bytes(const kn_cuda_digest_score_args_t *args);
// True for (already checked) args the bulk kernel takes: a cuboid kind, head_dim 64,
// 128 or 256, and a page digest of 8 to 32 KiB (one shared-memory stage).
bool kn_digest_score_bulk_applies(const kn_cuda_digest_score_args_t *args);
// Launches it (n_pages >= 1); the launch's error, if any.
cudaError_t kn_digest_score_bulk_run(const kn_cuda_digest_score_args_t *args, cudaStream_t stream);

#endif
