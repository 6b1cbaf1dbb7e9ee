/* NVML family: memory info (v1 and v2 structs) agrees with cuMemGetInfo, and the mapping
 * between CUDA devices and NVML devices. NVML indexes every GPU of the machine in its own
 * order; CUDA numbers the visible ones (CUDA_VISIBLE_DEVICES, CUDA_DEVICE_ORDER). The two are
 * matched by UUID, never by index. */
#include <pthread.h>
#include <stdio.h>
#include <string.h>

#include "hook.h"
#include "hook_log.h"
#include "hook_policy.h"
#include "hook_state.h"

static pthread_mutex_t map_lock = PTHREAD_MUTEX_INITIALIZER;
static int mapped;                                  /* the table below is filled */
static nvmlDevice_t handle_of_ordinal[GS_MAX_DEVICES]; /* NULL: no NVML device */
static int ordinal_count;

static int cuda_uuid(int ordinal, char *text, size_t size) {
  CUuuid uuid;
  CUresult rc = CUDA_ERROR_NOT_FOUND;
  if (gs_cuda.cuDeviceGetUuid_v2 != NULL) rc = gs_cuda.cuDeviceGetUuid_v2(&uuid, ordinal);
  else if (gs_cuda.cuDeviceGetUuid != NULL) rc = gs_cuda.cuDeviceGetUuid(&uuid, ordinal);
  if (rc != CUDA_SUCCESS) return -1;
  const unsigned char *b = (const unsigned char *)uuid.bytes;
  snprintf(text, size, "GPU-%02x%02x%02x%02x-%02x%02x-%02x%02x-%02x%02x-%02x%02x%02x%02x%02x%02x", b[0], b[1], b[2], b[3],
           b[4], b[5], b[6], b[7], b[8], b[9], b[10], b[11], b[12], b[13], b[14], b[15]);
  return 0;
}

/* Builds the ordinal -> NVML handle table once (under map_lock). */
static void build_map(void) {
  if (mapped) return;
  mapped = 1;
  if (!gs_real_resolve_nvml() || gs_nvml.nvmlInit_v2 == NULL || gs_nvml.nvmlInit_v2() != NVML_SUCCESS) return;
  int count = 0;
  if (gs_cuda.cuDeviceGetCount == NULL) return;
  if (gs_cuda.cuDeviceGetCount(&count) == CUDA_ERROR_NOT_INITIALIZED && gs_cuda.cuInit != NULL &&
      gs_cuda.cuInit(0) == CUDA_SUCCESS)
    gs_cuda.cuDeviceGetCount(&count);
  if (count > GS_MAX_DEVICES) count = GS_MAX_DEVICES;
  ordinal_count = count;
  for (int i = 0; i < count; i++) {
    char uuid[96];
    nvmlDevice_t handle;
    if (cuda_uuid(i, uuid, sizeof uuid) == 0 && gs_nvml.nvmlDeviceGetHandleByUUID != NULL &&
        gs_nvml.nvmlDeviceGetHandleByUUID(uuid, &handle) == NVML_SUCCESS)
      handle_of_ordinal[i] = handle;
    else
      gs_log(GS_LOG_WARN, "CUDA device %d has no NVML device of the same UUID; its NVML figures are not limited", i);
  }
}

int gs_nvml_handle(int cuda_device, nvmlDevice_t *handle) {
  if (cuda_device < 0 || cuda_device >= GS_MAX_DEVICES) return -1;
  if (!__atomic_load_n(&mapped, __ATOMIC_ACQUIRE)) {
    pthread_mutex_lock(&map_lock);
    build_map();
    pthread_mutex_unlock(&map_lock);
  }
  *handle = handle_of_ordinal[cuda_device];
  if (gs_nvml.nvmlDeviceGetProcessUtilization == NULL) *handle = NULL;
  return *handle != NULL ? 0 : -1;
}

/* The CUDA ordinal of an NVML device (by UUID), or -1 when CUDA does not see it. */
static int ordinal_of(nvmlDevice_t device) {
  nvmlDevice_t ignored;
  gs_nvml_handle(0, &ignored);
  for (int i = 0; i < ordinal_count; i++)
    if (handle_of_ordinal[i] == device) return i;
  return -1;
}

static int limited_device(nvmlDevice_t device, const struct gs_config *config, uint64_t *limit) {
  int ordinal = ordinal_of(device);
  if (ordinal < 0) return -1;
  *limit = config->memory_limit_bytes[ordinal];
  return *limit == GS_NO_MEMORY_LIMIT ? -1 : ordinal;
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
