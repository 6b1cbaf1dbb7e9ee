/* Internal interface shared by the hook's translation units. */
#ifndef GPUSHARE_HOOK_H
#define GPUSHARE_HOOK_H

#define __CUDA_API_VERSION_INTERNAL 1 /* literal names: cuLaunchKernel and cuLaunchKernel_ptsz */
#include <cuda.h>
#include <stdint.h>

#include "hook_config.h"
#include "hook_symbols.h"
#include "nvml_types.h"

#define GS_EXPORT __attribute__((visibility("default")))

/* Real driver functions, resolved from libcuda.so.1 itself (NULL when the driver lacks one). */
struct gs_real_cuda {
#define GS_FIELD(name, ...) __typeof__(&name) name;
  GS_HOOKED_CUDA(GS_FIELD)
#define GS_FIELD1(name) __typeof__(&name) name;
  GS_USED_CUDA(GS_FIELD1)
};
struct gs_real_nvml {
  GS_HOOKED_NVML(GS_FIELD1)
  GS_USED_NVML(GS_FIELD1)
};
extern struct gs_real_cuda gs_cuda;
extern struct gs_real_nvml gs_nvml;

/* hook_real.c */
void *gs_real_dlsym(void *handle, const char *name);
void gs_real_resolve_cuda(void);
int gs_real_resolve_nvml(void);
void *gs_hook_by_name(const char *name);
void *gs_hook_by_real(void *real_fn);
void *gs_hook_by_base(const char *base, int cuda_version, int per_thread);

/* hook_init.c: lazy, thread-safe initialisation; returns the effective configuration. */
const struct gs_config *gs_runtime(void);
int gs_device_of_current_context(int *device);

/* hook_memory.c: charges of this process, used by the fork handler. */
void gs_memory_forget_all(void);
/* The charges of everything allocated in ctx are returned (the context was destroyed). */
void gs_memory_context_destroyed(CUcontext ctx);
void gs_memory_atfork_prepare(void);
void gs_memory_atfork_parent(void);
void gs_memory_atfork_child(void);

/* hook_nvml.c: the NVML device of a CUDA ordinal (matched by UUID); 0 on success. */
int gs_nvml_handle(int cuda_device, nvmlDevice_t *handle);

/* NVML's compute processes on device (pid, memory); how many, -1 when NVML cannot tell. */
int gs_nvml_processes(int device, unsigned *pids, uint64_t *bytes, int max);
/* This process's device memory as NVML reports it (all of it), -1 when NVML cannot tell. */
int64_t gs_process_device_bytes(int device);
/* Charges bytes of driver-internal memory (a context, a module) under key; enforce: refuse
 * (-1) when over the limit, else charge regardless (it is already taken). */
int gs_memory_charge_opaque(uint64_t key, int device, uint64_t bytes, int enforce);
/* Moves the charge under `from` to the key `to`. */
void gs_memory_rekey_opaque(uint64_t from, uint64_t to);
/* Changes the charge under key to bytes in one step. */
void gs_memory_recharge_opaque(uint64_t key, uint64_t bytes);
/* Returns the charge under key; the bytes that were charged. */
uint64_t gs_memory_uncharge_opaque(uint64_t key);

/* A graph launch: the growth of the device's graph memory pool it causes must fit first. */
CUresult gs_memory_graph_launch(CUgraphExec exec, CUresult (*launch)(void *), void *args);

/* hook_context.c: fork handlers of the context bookkeeping. */
void gs_context_atfork_prepare(void);
void gs_context_atfork_parent(void);
void gs_context_atfork_child(void);

/* Physical (driver-reported) total of a device, cached. */
int gs_physical_total(int device, uint64_t *total_bytes);

#endif
