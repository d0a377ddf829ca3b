// kn_cuda_fill: fills a device array — random bf16 for synthetic weights, or one f32
// value (norm weights of 1). Not an op of the forward pass: model construction uses it
// so that a 16 GB model at the paper's shapes is built on the device without a
// download or a host round trip.
//
// The random fill is counter-based: element i is a pure function of (seed, i), so the
// result does not depend on the grid size, and two fills with one seed are equal bit
// for bit on any GPU.
#include <math.h>
#include <stdint.h>

#include "kn_cuda_internal.cuh"

enum { KN_FILL_THREADS = 256, KN_FILL_MAX_BLOCKS = 8192 };

// splitmix64's finalizer (as kn_cuda_sample): a bijective 64-bit mix.
static __device__ __forceinline__ uint64_t kn_fill_mix64(uint64_t x) {
  x += 0x9E3779B97F4A7C15ull;
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
  return x ^ (x >> 31);
}

static __device__ __forceinline__ void kn_fill_st_rz(__nv_bfloat16 *p, float v) { *p = __float2bfloat16_rz(v); }
static __device__ __forceinline__ void kn_fill_st_rz(__half *p, float v) { *p = __float2half_rz(v); }

template <typename T>
static __global__ void __launch_bounds__(KN_FILL_THREADS)
    kn_fill_random_kernel(T *dst,  // [n] bf16 or f16
                          int64_t n, float scale, uint64_t seed_mixed) {
  kn_pdl_begin();
  const int64_t stride = (int64_t)gridDim.x * blockDim.x;
  for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride) {
    const uint64_t h = kn_fill_mix64(seed_mixed ^ (uint64_t)i);
    // 24 high bits -> u in [0, 1) exactly representable in f32; 2u - 1 in [-1, 1).
    // Rounding toward zero keeps every value inside [-scale, scale].
    const float u = (float)(h >> 40) * (1.0f / 16777216.0f);
    kn_fill_st_rz(dst + i, (2.0f * u - 1.0f) * scale);
  }
}

static __global__ void __launch_bounds__(KN_FILL_THREADS) kn_fill_f32_kernel(float *dst,  // [n] f32
                                                                              int64_t n, float value) {
  kn_pdl_begin();
  const int64_t stride = (int64_t)gridDim.x * blockDim.x;
  for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride) dst[i] = value;
}

static dim3 kn_fill_grid(int64_t n) {
  int64_t n_blocks = kn_ceil_div(n, KN_FILL_THREADS);
  if (n_blocks > KN_FILL_MAX_BLOCKS) n_blocks = KN_FILL_MAX_BLOCKS;
  return dim3((unsigned)n_blocks);
}

template <typename T>
static ak_status_t kn_fill_random(const char *fn, void *dst, int64_t n, float scale, uint64_t seed,
                                  kn_cuda_stream_t stream, ak_err_t *err) {
  if (n < 0) return ak_err_set_fn(err, AK_ERR_INVALID_ARG, fn, "n=%lld < 0", (long long)n);
  if (n > 0 && !dst) return ak_err_set_fn(err, AK_ERR_INVALID_ARG, fn, "dst is NULL (n=%lld)", (long long)n);
  if (!isfinite(scale) || scale < 0.0f)
    return ak_err_set_fn(err, AK_ERR_INVALID_ARG, fn, "scale=%g is not finite and >= 0", scale);
  if ((uintptr_t)dst % sizeof(T) != 0)
    return ak_err_set_fn(err, AK_ERR_INVALID_ARG, fn, "dst=%p is not aligned for 2-byte elements", dst);
  if (n == 0) return AK_OK;
  // Mixing the seed first keeps seeds s and s ^ i from sharing a sequence shifted by i.
  const uint64_t seed_mixed = 0xD1B54A32D192ED03ull * (seed ^ 0x8CB92BA72F3D8DD7ull) + 1;
  kn_launch(kn_fill_random_kernel<T>, kn_fill_grid(n), KN_FILL_THREADS, 0, kn_stream(stream), (T *)dst, n, scale,
            seed_mixed);
  KN_CUDA_LAUNCHED(err);
  return AK_OK;
}

extern "C" ak_status_t kn_cuda_fill_random_bf16(void *dst, int64_t n, float scale, uint64_t seed,
                                                kn_cuda_stream_t stream, ak_err_t *err) {
  return kn_fill_random<__nv_bfloat16>(__func__, dst, n, scale, seed, stream, err);
}

extern "C" ak_status_t kn_cuda_fill_random_f16(void *dst, int64_t n, float scale, uint64_t seed,
                                               kn_cuda_stream_t stream, ak_err_t *err) {
  return kn_fill_random<__half>(__func__, dst, n, scale, seed, stream, err);
}

extern "C" ak_status_t kn_cuda_fill_f32(float *dst, int64_t n, float value, kn_cuda_stream_t stream, ak_err_t *err) {
  if (n < 0) return AK_ERR(err, AK_ERR_INVALID_ARG, "n=%lld < 0", (long long)n);
  if (n > 0 && !dst) return AK_ERR(err, AK_ERR_INVALID_ARG, "dst is NULL (n=%lld)", (long long)n);
  if ((uintptr_t)dst % sizeof(float) != 0) return AK_ERR(err, AK_ERR_INVALID_ARG, "dst=%p is not aligned for f32", (void *)dst);
  if (n == 0) return AK_OK;
  kn_launch(kn_fill_f32_kernel, kn_fill_grid(n), KN_FILL_THREADS, 0, kn_stream(stream), dst, n, value);
  KN_CUDA_LAUNCHED(err);
  return AK_OK;
}
