/* bench_device: the GPU a benchmark's --device cuda runs on, checked up front (so that a
 * machine without one fails at once, with the driver's reason) and described for the
 * results file. Compiled into each benchmark that takes --device cuda; BENCH_HAVE_CUDA
 * is defined where the CUDA backend is built. */
#ifndef BENCH_DEVICE_H
#define BENCH_DEVICE_H

#include <stddef.h>

#include "ak_status.h"

#ifdef __cplusplus
extern "C" {
#endif

/* AK_OK and, in desc, the current CUDA device: "NVIDIA H100 80GB HBM3 (sm_90, 132 SMs,
 * 79.2 GiB; CUDA driver 13.0, runtime 13.0)". AK_ERR_NO_DEVICE when there is none (err
 * carries the driver's reason); AK_ERR_UNSUPPORTED in a build without the CUDA backend.
 * desc is written only on success. */
ak_status_t bench_cuda_probe(char *desc, size_t desc_bytes, ak_err_t *err);

#ifdef __cplusplus
}
#endif
#endif
