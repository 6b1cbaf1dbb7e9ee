/* Context/device family: what the program is told about memory. Totals show the container's
 * limit, free memory is what is left of it for all of the container's processes. */
#include <pthread.h>
#include <stdint.h>
#include <string.h>
#include <unistd.h>

#include "hook.h"
#include "hook_limiter.h"
#include "hook_log.h"
#include "hook_policy.h"
#include "hook_state.h"
#include "hook_usage.h"

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

static uint64_t context_key(CUcontext ctx);

/* Destroying a context frees everything in it: the hook returns its charges and trackers. */
GS_EXPORT CUresult cuCtxDestroy_v2(CUcontext ctx) {
  gs_runtime();
  if (gs_cuda.cuCtxDestroy_v2 == NULL) return CUDA_ERROR_NOT_FOUND;
  CUresult rc = gs_cuda.cuCtxDestroy_v2(ctx);
  if (rc == CUDA_SUCCESS) {
    gs_limiter_context_destroyed(ctx);
    gs_memory_context_destroyed(ctx);
    gs_memory_uncharge_opaque(context_key(ctx));
  }
  return rc;
}

/* ---- context overhead: what the driver takes for a context is charged as the container's ----
 * Before the driver call, the configured estimate (GPUSHARE_CONTEXT_OVERHEAD) must fit under the
 * limit; afterwards the charge becomes what NVML shows the process took for it, when NVML can
 * tell (it lists processes by pid). */

static pthread_mutex_t primary_lock = PTHREAD_MUTEX_INITIALIZER;
static int primary_refs[GS_MAX_DEVICES];

void gs_context_atfork_prepare(void) { pthread_mutex_lock(&primary_lock); }
void gs_context_atfork_parent(void) { pthread_mutex_unlock(&primary_lock); }
void gs_context_atfork_child(void) {
  /* CUDA does not survive fork: the child starts without contexts. */
  pthread_mutex_init(&primary_lock, NULL);
  for (int i = 0; i < GS_MAX_DEVICES; i++) primary_refs[i] = 0;
}

static uint64_t context_key(CUcontext ctx) {
  return (uint64_t)(uintptr_t)ctx;
}
static uint64_t primary_key(int device) { return 0xC0DE000000000000ULL | (uint64_t)device; }

/* NVML's processes before a context is created: the one that appears with it is this process
 * as NVML knows it (its pid outside the container's PID namespace). */
struct before {
  int64_t bytes;
  int count;
  unsigned pids[128];
};

static void look_before(int device, struct before *b) {
  uint64_t ignored[128];
  b->count = gs_nvml_processes(device, b->pids, ignored, 128);
  b->bytes = gs_process_device_bytes(device);
}

static void learn_host_pid(int device, const struct before *b) {
  unsigned pids[128];
  uint64_t ignored[128];
  int n = gs_nvml_processes(device, pids, ignored, 128);
  if (n < 0 || b->count < 0) return;
  unsigned self = (unsigned)getpid(), found = 0;
  int fresh = 0;
  for (int i = 0; i < n; i++) {
    if (pids[i] == self) return; /* NVML knows it by its own pid */
    int seen = 0;
    for (int k = 0; k < b->count && !seen; k++) seen = b->pids[k] == pids[i];
    if (!seen) {
      found = pids[i];
      fresh++;
    }
  }
  if (fresh == 1 && gs_state_host_pid() != found) {
    gs_log(GS_LOG_DEBUG, "NVML knows this process as pid %u", found);
    gs_state_set_host_pid(found);
  }
}

/* Reserves the estimate; 0 when it fits (or nothing is limited). */
static int reserve_estimate(int device, uint64_t key, struct before *b) {
  const struct gs_config *config = gs_runtime();
  look_before(device, b);
  return gs_memory_charge_opaque(key, device, config->context_overhead_bytes, 1);
}

/* Replaces the estimate by the measured overhead when NVML could measure it. */
static void settle_estimate(int device, uint64_t key, const struct before *b) {
  unsigned known = gs_state_host_pid();
  learn_host_pid(device, b);
  int64_t before = known == gs_state_host_pid() ? b->bytes : 0; /* newly known: held nothing before */
  int64_t after = gs_process_device_bytes(device);
  if (b->bytes < 0 || after <= before) return; /* not measurable: the estimate stays */
  gs_memory_recharge_opaque(key, (uint64_t)(after - before));
}

static CUresult created_context(CUresult rc, CUcontext *ctx, CUdevice device, const struct before *before) {
  uint64_t pending = primary_key(GS_MAX_DEVICES + device);
  if (rc != CUDA_SUCCESS || ctx == NULL) {
    gs_memory_uncharge_opaque(pending);
    return rc;
  }
  gs_memory_rekey_opaque(pending, context_key(*ctx));
  settle_estimate(device, context_key(*ctx), before);
  gs_usage_device_in_use(device);
  return rc;
}

GS_EXPORT CUresult cuCtxCreate_v2(CUcontext *ctx, unsigned int flags, CUdevice device) {
  gs_runtime();
  if (gs_cuda.cuCtxCreate_v2 == NULL) return CUDA_ERROR_NOT_FOUND;
  struct before before;
  if (reserve_estimate(device, primary_key(GS_MAX_DEVICES + device), &before) != 0) return CUDA_ERROR_OUT_OF_MEMORY;
  return created_context(gs_cuda.cuCtxCreate_v2(ctx, flags, device), ctx, device, &before);
}

GS_EXPORT CUresult cuCtxCreate_v4(CUcontext *ctx, CUctxCreateParams *params, unsigned int flags, CUdevice device) {
  gs_runtime();
  if (gs_cuda.cuCtxCreate_v4 == NULL) return CUDA_ERROR_NOT_FOUND;
  struct before before;
  if (reserve_estimate(device, primary_key(GS_MAX_DEVICES + device), &before) != 0) return CUDA_ERROR_OUT_OF_MEMORY;
  return created_context(gs_cuda.cuCtxCreate_v4(ctx, params, flags, device), ctx, device, &before);
}

GS_EXPORT CUresult cuDevicePrimaryCtxRetain(CUcontext *ctx, CUdevice device) {
  gs_runtime();
  if (gs_cuda.cuDevicePrimaryCtxRetain == NULL) return CUDA_ERROR_NOT_FOUND;
  if (device < 0 || device >= GS_MAX_DEVICES) return gs_cuda.cuDevicePrimaryCtxRetain(ctx, device);
  pthread_mutex_lock(&primary_lock);
  struct before before = {-1, -1, {0}};
  int first = primary_refs[device] == 0;
  if (first && reserve_estimate(device, primary_key(device), &before) != 0) {
    pthread_mutex_unlock(&primary_lock);
    return CUDA_ERROR_OUT_OF_MEMORY;
  }
  CUresult rc = gs_cuda.cuDevicePrimaryCtxRetain(ctx, device);
  if (rc == CUDA_SUCCESS) {
    primary_refs[device]++;
    if (first) settle_estimate(device, primary_key(device), &before);
    gs_usage_device_in_use(device);
  } else if (first) {
    gs_memory_uncharge_opaque(primary_key(device));
  }
  pthread_mutex_unlock(&primary_lock);
  return rc;
}

static CUresult primary_gone(CUresult rc, CUdevice device, int reset) {
  if (rc != CUDA_SUCCESS || device < 0 || device >= GS_MAX_DEVICES) return rc;
  pthread_mutex_lock(&primary_lock);
  int last = reset || (primary_refs[device] > 0 && --primary_refs[device] == 0);
  if (last) {
    primary_refs[device] = 0;
    gs_memory_uncharge_opaque(primary_key(device));
  }
  pthread_mutex_unlock(&primary_lock);
  return rc;
}

GS_EXPORT CUresult cuDevicePrimaryCtxRelease_v2(CUdevice device) {
  gs_runtime();
  if (gs_cuda.cuDevicePrimaryCtxRelease_v2 == NULL) return CUDA_ERROR_NOT_FOUND;
  return primary_gone(gs_cuda.cuDevicePrimaryCtxRelease_v2(device), device, 0);
}

GS_EXPORT CUresult cuDevicePrimaryCtxReset_v2(CUdevice device) {
  gs_runtime();
  if (gs_cuda.cuDevicePrimaryCtxReset_v2 == NULL) return CUDA_ERROR_NOT_FOUND;
  return primary_gone(gs_cuda.cuDevicePrimaryCtxReset_v2(device), device, 1);
}

/* ---- module images: charged what NVML shows the load took, the image's size first ----
 * Before the load, the image's size (a fatbin's or ELF cubin's own header; 1 MiB for anything
 * else, such as PTX) must fit; afterwards the charge becomes the growth of the process's memory
 * as NVML reports it, when it can tell. */

#define MODULE_ESTIMATE_BYTES (1ULL << 20)

static uint64_t image_bytes(const void *image) {
  const unsigned char *p = image;
  if (p == NULL) return MODULE_ESTIMATE_BYTES;
  uint32_t magic;
  memcpy(&magic, p, sizeof magic);
  if (magic == 0xBA55ED50u) { /* fatbin: u32 magic, u16 version, u16 header size, u64 payload size */
    uint16_t header;
    uint64_t payload;
    memcpy(&header, p + 6, sizeof header);
    memcpy(&payload, p + 8, sizeof payload);
    if (payload < (1ULL << 40)) return header + payload;
  } else if (p[0] == 0x7f && p[1] == 'E' && p[2] == 'L' && p[3] == 'F' && p[4] == 2) { /* ELF64 */
    uint64_t section_offset;
    uint16_t entry, count;
    memcpy(&section_offset, p + 0x28, sizeof section_offset);
    memcpy(&entry, p + 0x3A, sizeof entry);
    memcpy(&count, p + 0x3C, sizeof count);
    if (section_offset < (1ULL << 40)) return section_offset + (uint64_t)entry * count;
  }
  return MODULE_ESTIMATE_BYTES;
}

static __thread uint64_t pending_module; /* key of the estimate charged before a load */

static int module_before(const void *image, int *device, int64_t *before) {
  *before = -1;
  if (gs_device_of_current_context(device) != 0 || gs_runtime()->memory_limit_bytes[*device] == GS_NO_MEMORY_LIMIT)
    return 0;
  *before = gs_process_device_bytes(*device);
  pending_module = 0xB0D0000000000000ULL | (uint64_t)(uintptr_t)&pending_module;
  return gs_memory_charge_opaque(pending_module, *device, image_bytes(image), 1);
}

static CUresult loaded_module(CUresult rc, CUmodule *module, int device, int64_t before) {
  if (before < 0 && pending_module == 0) return rc;
  uint64_t key = pending_module;
  pending_module = 0;
  if (rc != CUDA_SUCCESS || module == NULL) {
    gs_memory_uncharge_opaque(key);
    return rc;
  }
  gs_memory_rekey_opaque(key, (uint64_t)(uintptr_t)*module);
  int64_t after = before >= 0 ? gs_process_device_bytes(device) : -1;
  if (after > before) gs_memory_recharge_opaque((uint64_t)(uintptr_t)*module, (uint64_t)(after - before));
  return rc;
}

GS_EXPORT CUresult cuModuleLoadData(CUmodule *module, const void *image) {
  gs_runtime();
  if (gs_cuda.cuModuleLoadData == NULL) return CUDA_ERROR_NOT_FOUND;
  int device;
  int64_t before;
  if (module_before(image, &device, &before) != 0) return CUDA_ERROR_OUT_OF_MEMORY;
  return loaded_module(gs_cuda.cuModuleLoadData(module, image), module, device, before);
}

GS_EXPORT CUresult cuModuleLoadDataEx(CUmodule *module, const void *image, unsigned int count, CUjit_option *options,
                                      void **values) {
  gs_runtime();
  if (gs_cuda.cuModuleLoadDataEx == NULL) return CUDA_ERROR_NOT_FOUND;
  int device;
  int64_t before;
  if (module_before(image, &device, &before) != 0) return CUDA_ERROR_OUT_OF_MEMORY;
  return loaded_module(gs_cuda.cuModuleLoadDataEx(module, image, count, options, values), module, device, before);
}

GS_EXPORT CUresult cuModuleUnload(CUmodule module) {
  gs_runtime();
  if (gs_cuda.cuModuleUnload == NULL) return CUDA_ERROR_NOT_FOUND;
  CUresult rc = gs_cuda.cuModuleUnload(module);
  if (rc == CUDA_SUCCESS) gs_memory_uncharge_opaque((uint64_t)(uintptr_t)module);
  return rc;
}
