// kn_cuda_digest: the ArkVale digest kinds and layout, re-stated for the CUDA digest
// ops (kn_cuda_digest_build.cu, kn_cuda_digest_score.cu). The contract is
// kvpool/kv_digest.h (kinds, formulas, the ASCII layout); kernels/ may not include
// kvpool headers (DESIGN.md's arrows), so the numbering and the floats per KV head are
// repeated here and must change together with kv_digest.h.
//
//   kind  name            floats per KV head    contents
//   0     centroid        d                     mean[d]
//   1     sphere-max      d + 1                 c[d], r
//   2     sphere-center   d + 1                 c[d], r
//   3     sphere-mean     d + 1                 c[d], r
//   4     cuboid-max      2 d                   ub[d], lb[d]
//   5     cuboid-center   2 d                   ub[d], lb[d]
//   6     cuboid-mean     2 d                   ub[d], lb[d]
//
// A page's digest is its KV heads' digests in order; pages are consecutive. Elements
// are f32 as in kv_digest.h, or for the cuboid kinds optionally 16-bit in the pages'
// dtype (digest_dtype: the same counts at 2 bytes, ub rounded up and lb down; see
// kn_cuda_digest_build.cu), which halves what kn_cuda_digest_score reads.
#ifndef KN_CUDA_DIGEST_CUH
#define KN_CUDA_DIGEST_CUH

#include "kn_cuda_internal.cuh"

enum {
  KN_DIGEST_CENTROID = 0,
  KN_DIGEST_SPHERE_MAX = 1,
  KN_DIGEST_SPHERE_CENTER = 2,
  KN_DIGEST_SPHERE_MEAN = 3,
  KN_DIGEST_CUBOID_MAX = 4,
  KN_DIGEST_CUBOID_CENTER = 5,
  KN_DIGEST_CUBOID_MEAN = 6,
  KN_DIGEST_N_KINDS = 7,
};

// Limits of kv_digest.h (KV_DIGEST_MAX_HEADS, KV_DIGEST_MAX_HEAD_DIM).
#define KN_DIGEST_MAX_HEADS 1024
#define KN_DIGEST_MAX_HEAD_DIM 1024

__host__ __device__ static inline bool kn_digest_is_cuboid(int kind) {
  return kind >= KN_DIGEST_CUBOID_MAX && kind <= KN_DIGEST_CUBOID_MEAN;
}
__host__ __device__ static inline bool kn_digest_is_sphere(int kind) {
  return kind >= KN_DIGEST_SPHERE_MAX && kind <= KN_DIGEST_SPHERE_MEAN;
}
// kv_digest_floats for a valid kind.
__host__ __device__ static inline int kn_digest_floats(int kind, int head_dim) {
  return kn_digest_is_cuboid(kind) ? 2 * head_dim : kn_digest_is_sphere(kind) ? head_dim + 1 : head_dim;
}

// The digest element type both ops accept: F32 for every kind, F16 / BF16 for the
// cuboid kinds (kn_cuda_digest_build also wants it to equal the pages' dtype).
static inline ak_status_t kn_digest_check_dtype(int kind, kn_cuda_dtype_t dt, const char *fn, ak_err_t *err) {
  if (dt != KN_CUDA_F32 && dt != KN_CUDA_F16 && dt != KN_CUDA_BF16)
    return ak_err_set_fn(err, AK_ERR_INVALID_ARG, fn, "digest_dtype=%d is not F32 (0), F16 (1) or BF16 (2)", (int)dt);
  if (dt != KN_CUDA_F32 && !kn_digest_is_cuboid(kind))
    return ak_err_set_fn(err, AK_ERR_UNSUPPORTED, fn,
                         "digest_dtype=%d with digest kind=%d: 16-bit digests are for the cuboid kinds (4..6) only",
                         (int)dt, kind);
  return AK_OK;
}

#endif
