/* pb_status: ak_status_t -> grpc_status_code (the table is in pb_status.h). */
#include "pb_status.h"

grpc_status_code pb_status_to_grpc(ak_status_t st) {
  switch (st) {
    case AK_OK: return GRPC_STATUS_OK;
    case AK_ERR_INVALID_ARG:
    case AK_ERR_FORMAT: return GRPC_STATUS_INVALID_ARGUMENT;
    case AK_ERR_NOT_FOUND: return GRPC_STATUS_NOT_FOUND;
    case AK_ERR_RANGE: return GRPC_STATUS_OUT_OF_RANGE;
    case AK_ERR_CANCELLED: return GRPC_STATUS_CANCELLED;
    case AK_ERR_EXISTS: return GRPC_STATUS_ALREADY_EXISTS;
    case AK_ERR_PRECONDITION: return GRPC_STATUS_FAILED_PRECONDITION;
    case AK_ERR_UNSUPPORTED: return GRPC_STATUS_UNIMPLEMENTED;
    case AK_ERR_OVER_BUDGET:
    case AK_ERR_POOL_FULL:
    case AK_ERR_NO_MEMORY: return GRPC_STATUS_RESOURCE_EXHAUSTED;
    case AK_ERR_TIMEOUT: return GRPC_STATUS_DEADLINE_EXCEEDED;
    case AK_AGAIN:
    case AK_ERR_NO_DEVICE:
    case AK_ERR_PEER:
    case AK_ERR_CLUSTER: return GRPC_STATUS_UNAVAILABLE;
    case AK_ERR_IO:
    case AK_ERR_CUDA:
    case AK_ERR_INTERNAL: return GRPC_STATUS_INTERNAL;
  }
  return GRPC_STATUS_UNKNOWN;
}
