/* NVML family: memory info (v1 and v2 structs) agrees with cuMemGetInfo. The NVML index is
 * taken as the CUDA ordinal (containers see only their own GPUs, in the same order). */
#include "hook.h"
#include "hook_policy.h"
#include "hook_state.h"

static int limited_device(nvmlDevice_t device, const struct gs_config *config, uint64_t *limit) {
  unsigned int index = 0;
  if (!gs_real_resolve_nvml() || gs_nvml.nvmlDeviceGetIndex(device, &index) != NVML_SUCCESS ||
      index >= GS_MAX_DEVICES)
    return -1;
  *limit = config->memory_limit_bytes[index];
  return *limit == GS_NO_MEMORY_LIMIT ? -1 : (int)index;
}

GS_EXPORT nvmlReturn_t nvmlDeviceGetMemoryInfo(nvmlDevice_t device, nvmlMemory_t *memory) {
  const struct gs_config *config = gs_runtime();
  gs_real_resolve_nvml();
  if (gs_nvml.nvmlDeviceGetMemoryInfo == NULL) return NVML_ERROR_FUNCTION_NOT_FOUND;
  nvmlReturn_t rc = gs_nvml.nvmlDeviceGetMemoryInfo(device, memory);
  uint64_t limit;
  int index;
  if (rc != NVML_SUCCESS || memory == NULL || (index = limited_device(device, config, &limit)) < 0) return rc;
  uint64_t used = gs_state_used(index), free_bytes, total_bytes;
  gs_memory_report(limit, memory->total, memory->free, used, &free_bytes, &total_bytes);
  memory->total = total_bytes;
  memory->free = free_bytes;
  memory->used = total_bytes - free_bytes;
  return rc;
}

GS_EXPORT nvmlReturn_t nvmlDeviceGetMemoryInfo_v2(nvmlDevice_t device, nvmlMemory_v2_t *memory) {
  const struct gs_config *config = gs_runtime();
  gs_real_resolve_nvml();
  if (gs_nvml.nvmlDeviceGetMemoryInfo_v2 == NULL) return NVML_ERROR_FUNCTION_NOT_FOUND;
  nvmlReturn_t rc = gs_nvml.nvmlDeviceGetMemoryInfo_v2(device, memory);
  uint64_t limit;
  int index;
  if (rc != NVML_SUCCESS || memory == NULL || (index = limited_device(device, config, &limit)) < 0) return rc;
  uint64_t used = gs_state_used(index), free_bytes, total_bytes;
  gs_memory_report(limit, memory->total, memory->free, used, &free_bytes, &total_bytes);
  memory->total = total_bytes;
  memory->free = free_bytes;
  memory->reserved = 0;
  memory->used = total_bytes - free_bytes;
  return rc;
}
