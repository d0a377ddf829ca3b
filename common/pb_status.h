/* pb_status: the one mapping from ak_status_t to gRPC status codes (STYLE.md, "Handles,
 * ownership, errors"): every RPC handler on either side of the process split ends a
 * failed call with pb_status_to_grpc(st) and the ak_err_t message.
 * Not for: parsing payloads (pb_buf.h). Thread-safe (pure). */
#ifndef PB_STATUS_H
#define PB_STATUS_H

#include <grpc/status.h>

#include "ak_status.h"

#ifdef __cplusplus
extern "C" {
#endif

/* The gRPC code a client sees for `st`:
 *   AK_OK                                   OK
 *   INVALID_ARG, FORMAT                     INVALID_ARGUMENT   (fix the request)
 *   NOT_FOUND                               NOT_FOUND
 *   RANGE                                   OUT_OF_RANGE
 *   CANCELLED                               CANCELLED          (Abort, client gone)
 *   EXISTS                                  ALREADY_EXISTS
 *   PRECONDITION                            FAILED_PRECONDITION
 *   UNSUPPORTED                             UNIMPLEMENTED
 *   OVER_BUDGET, POOL_FULL, NO_MEMORY       RESOURCE_EXHAUSTED (gRPC's own code for
 *                                                               over-size messages)
 *   TIMEOUT                                 DEADLINE_EXCEEDED
 *   AGAIN, NO_DEVICE, PEER, CLUSTER         UNAVAILABLE        (another worker may serve)
 *   IO, CUDA, INTERNAL                      INTERNAL
 *   anything else                           UNKNOWN */
grpc_status_code pb_status_to_grpc(ak_status_t st);

#ifdef __cplusplus
}
#endif
#endif
