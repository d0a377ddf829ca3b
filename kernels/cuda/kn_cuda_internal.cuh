// kn_cuda_internal: what the CUDA op files share (never included outside
// kernels/cuda/). One family of check macros from one definition (ggml-cuda's
// CUDA_CHECK_GEN): they return a status with the op's name and the CUDA error string
// instead of exiting.
#ifndef KN_CUDA_INTERNAL_CUH
#define KN_CUDA_INTERNAL_CUH

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include "kn_cuda.h"

// Returns AK_ERR_CUDA from the enclosing function when `call` (a cudaError_t
// expression) fails; the message names the calling function and the call.
#define KN_CUDA_TRY_GEN(err, call, get_str)                                                              \
  do {                                                                                                   \
    auto kn_e_ = (call);                                                                                 \
    if (kn_e_ != 0) return ak_err_set_fn((err), AK_ERR_CUDA, __func__, "%s: %s", #call, get_str(kn_e_)); \
  } while (0)
#define KN_CUDA_TRY(err, call) KN_CUDA_TRY_GEN(err, call, cudaGetErrorString)
// After a launch: reports a bad configuration or an earlier asynchronous fault.
#define KN_CUDA_LAUNCHED(err) KN_CUDA_TRY(err, cudaGetLastError())

static inline cudaStream_t kn_stream(kn_cuda_stream_t s) { return (cudaStream_t)s; }

// Element loads and stores by dtype, in f32.
__device__ __forceinline__ float kn_ld(const __nv_bfloat16 *p) { return __bfloat162float(*p); }
__device__ __forceinline__ float kn_ld(const __half *p) { return __half2float(*p); }
__device__ __forceinline__ float kn_ld(const float *p) { return *p; }
__device__ __forceinline__ void kn_st(__nv_bfloat16 *p, float v) { *p = __float2bfloat16(v); }
__device__ __forceinline__ void kn_st(__half *p, float v) { *p = __float2half(v); }
__device__ __forceinline__ void kn_st(float *p, float v) { *p = v; }
// Four f32 as four elements at p (aligned for four of them), rounded to nearest.
__device__ __forceinline__ void kn_st4(float *p, float4 v) { *reinterpret_cast<float4 *>(p) = v; }
__device__ __forceinline__ void kn_st4(__half *p, float4 v) {
  __half2 lo = __floats2half2_rn(v.x, v.y), hi = __floats2half2_rn(v.z, v.w);
  uint2 raw;
  raw.x = *reinterpret_cast<uint32_t *>(&lo);
  raw.y = *reinterpret_cast<uint32_t *>(&hi);
  *reinterpret_cast<uint2 *>(p) = raw;
}
__device__ __forceinline__ void kn_st4(__nv_bfloat16 *p, float4 v) {
  __nv_bfloat162 lo = __floats2bfloat162_rn(v.x, v.y), hi = __floats2bfloat162_rn(v.z, v.w);
  uint2 raw;
  raw.x = *reinterpret_cast<uint32_t *>(&lo);
  raw.y = *reinterpret_cast<uint32_t *>(&hi);
  *reinterpret_cast<uint2 *>(p) = raw;
}

// Programmatic dependent launch (sm_90). Every kernel here is launched through
// kn_launch, which lets the stream start it while the kernel before it is still
// running, and every kernel begins with kn_pdl_begin() (before it reads or writes
// any buffer): griddepcontrol.wait holds its threads until the grids before it have
// finished and their writes are visible, then launch_dependents lets the next
// kernel's blocks be scheduled onto the SMs this one leaves free. So stream order is
// kept exactly, while launch latency and the ramp of each kernel overlap the tail of
// the one before (in CUDA graphs too, as programmatic edges). Kernels read before
// kn_pdl_begin only what the kernel right before them cannot be writing, so the blocks
// that sit resident while it runs (an RMSNorm of one block, the attention merge: DRAM
// idle) get their loads in flight:
// - the GEMVs their first weights (kn_cuda_gemv.cu, kn_cuda_gemv_mma.cu; W's contract:
//   kn_cuda.h, kn_cuda_gemm): H100, llama3-8b batch 1 1k 5.52-5.55 -> 5.47-5.48 ms,
//   batch 4 10k 8.03-8.06 -> 7.96-7.97 ms (session 5 had measured no gain, before the
//   four-warps-a-row GEMV);
// - the tensor-core attention its tables and oldest rows under kv_stable, and the merge
//   its tables (kn_cuda_attention.cu): 5.49 -> 5.41 ms, 7.99 -> 7.87 ms.
// (notes/device-runs.md, session 11.) An L2 weight prefetch measured no gain (session 7).
// Kernels of other libraries (cuBLASLt) and the sampling kernels are launched the usual
// way and keep full serialization on both sides.
__device__ __forceinline__ void kn_pdl_begin() {
  asm volatile("griddepcontrol.wait;" ::: "memory");
  asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
}

template <typename... KArgs, typename... Args>
static inline cudaError_t kn_launch(void (*kernel)(KArgs...), dim3 grid, dim3 block, size_t smem_bytes,
                                    cudaStream_t stream, Args &&...args) {
  cudaLaunchAttribute attr[1];
  attr[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
  attr[0].val.programmaticStreamSerializationAllowed = 1;
  cudaLaunchConfig_t cfg = {};
  cfg.gridDim = grid;
  cfg.blockDim = block;
  cfg.dynamicSmemBytes = smem_bytes;
  cfg.stream = stream;
  cfg.attrs = attr;
  cfg.numAttrs = 1;
  return cudaLaunchKernelEx(&cfg, kernel, static_cast<Args &&>(args)...);
}

static inline int64_t kn_ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

#endif
