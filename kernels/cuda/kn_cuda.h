/* kn_cuda: the CUDA backend's public header. For now it reports whether a usable
 * GPU is present, so a worker built with CUDA can fall back to (or refuse) the CPU
 * backend cleanly on a machine without one. The ops arrive with the CUDA issue and
 * mirror kernels.h's argument views. */
#ifndef KN_CUDA_H
#define KN_CUDA_H

#include "ak_status.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Number of CUDA devices; 0 with AK_ERR_NO_DEVICE (and a message) when there are none
 * or the driver is absent. */
ak_status_t kn_cuda_device_count(ak_err_t *err, int *n_devices_p);

#ifdef __cplusplus
}
#endif
#endif
