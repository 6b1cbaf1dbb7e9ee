/* Context/device family: what the program is told about memory. Totals show the container's
 * limit, free memory is what is left of it for all of the container's processes. */
#include "hook.h"
#include "hook_limiter.h"
#include "hook_policy.h"
#include "hook_state.h"

GS_EXPORT CUresult cuMemGetInfo_v2(size_t *free_bytes, size_t *total_bytes) {
  const struct gs_config *config = gs_runtime();
  if (gs_cuda.cuMemGetInfo_v2 == NULL) return CUDA_ERROR_NOT_FOUND;
  CUresult rc = gs_cuda.cuMemGetInfo_v2(free_bytes, total_bytes);
  int device;
  if (rc != CUDA_SUCCESS || free_bytes == NULL || total_bytes == NULL ||
      gs_device_of_current_context(&device) != 0)
    return rc;
  uint64_t limit = config->memory_limit_bytes[device];
  if (limit == GS_NO_MEMORY_LIMIT) return rc;
  uint64_t free_out, total_out;
  gs_memory_report(limit, *total_bytes, *free_bytes, gs_state_used(device), &free_out, &total_out);
  *free_bytes = (size_t)free_out;
  *total_bytes = (size_t)total_out;
  return rc;
}

GS_EXPORT CUresult cuDeviceTotalMem_v2(size_t *bytes, CUdevice device) {
  const struct gs_config *config = gs_runtime();
  if (gs_cuda.cuDeviceTotalMem_v2 == NULL) return CUDA_ERROR_NOT_FOUND;
  CUresult rc = gs_cuda.cuDeviceTotalMem_v2(bytes, device);
  if (rc != CUDA_SUCCESS || bytes == NULL || device < 0 || device >= GS_MAX_DEVICES) return rc;
  uint64_t limit = config->memory_limit_bytes[device];
  if (limit < *bytes) *bytes = (size_t)limit;
  return rc;
}

/* Destroying a context frees everything in it: the hook returns its charges and trackers. */
GS_EXPORT CUresult cuCtxDestroy_v2(CUcontext ctx) {
  gs_runtime();
  if (gs_cuda.cuCtxDestroy_v2 == NULL) return CUDA_ERROR_NOT_FOUND;
  CUresult rc = gs_cuda.cuCtxDestroy_v2(ctx);
  if (rc == CUDA_SUCCESS) {
    gs_limiter_context_destroyed(ctx);
    gs_memory_context_destroyed(ctx);
  }
  return rc;
}
