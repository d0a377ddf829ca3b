// kn_cuda_silu: the SwiGLU product of one element, shared by kn_cuda_silu_mul and the
// GEMV's fused gate|up epilogue so that both round the same way (as kernels/cpu
// kn_silu_mul_c): silu(g) * u = g / (1 + exp(-g)) * u, in f32.
#ifndef KN_CUDA_SILU_CUH
#define KN_CUDA_SILU_CUH

static __device__ __forceinline__ float kn_silu_mul1(float g, float u) { return g / (1.0f + expf(-g)) * u; }

#endif
