/* The one list of hooked symbols (X-macros). Everything else is generated from it: the table
 * of real driver functions, the exported-name lookup used by dlsym, and the cuGetProcAddress
 * mapping (base name, first CUDA version, per-thread-default-stream variant).
 *
 * X(symbol, base name as asked of cuGetProcAddress, first CUDA version, per-thread variant) */
#ifndef GPUSHARE_HOOK_SYMBOLS_H
#define GPUSHARE_HOOK_SYMBOLS_H

#define GS_HOOKED_CUDA(X)                                                     \
  X(cuGetProcAddress, "cuGetProcAddress", 11030, 0)                           \
  X(cuGetProcAddress_v2, "cuGetProcAddress", 12000, 0)                        \
  X(cuMemAlloc_v2, "cuMemAlloc", 3020, 0)                                     \
  X(cuMemAllocPitch_v2, "cuMemAllocPitch", 3020, 0)                           \
  X(cuMemAllocManaged, "cuMemAllocManaged", 6000, 0)                          \
  X(cuMemAllocAsync, "cuMemAllocAsync", 11020, 0)                             \
  X(cuMemAllocAsync_ptsz, "cuMemAllocAsync", 11020, 1)                        \
  X(cuMemAllocFromPoolAsync, "cuMemAllocFromPoolAsync", 11020, 0)             \
  X(cuMemAllocFromPoolAsync_ptsz, "cuMemAllocFromPoolAsync", 11020, 1)        \
  X(cuMemFreeAsync, "cuMemFreeAsync", 11020, 0)                               \
  X(cuMemFreeAsync_ptsz, "cuMemFreeAsync", 11020, 1)                          \
  X(cuMemFree_v2, "cuMemFree", 3020, 0)                                       \
  X(cuMemCreate, "cuMemCreate", 10020, 0)                                     \
  X(cuMemRelease, "cuMemRelease", 10020, 0)                                   \
  X(cuArrayCreate_v2, "cuArrayCreate", 3020, 0)                               \
  X(cuArray3DCreate_v2, "cuArray3DCreate", 3020, 0)                           \
  X(cuArrayDestroy, "cuArrayDestroy", 2000, 0)                                \
  X(cuMipmappedArrayCreate, "cuMipmappedArrayCreate", 5000, 0)                \
  X(cuMipmappedArrayDestroy, "cuMipmappedArrayDestroy", 5000, 0)              \
  X(cuMemGetInfo_v2, "cuMemGetInfo", 3020, 0)                                 \
  X(cuDeviceTotalMem_v2, "cuDeviceTotalMem", 3020, 0)                         \
  X(cuLaunchKernel, "cuLaunchKernel", 4000, 0)                                \
  X(cuLaunchKernel_ptsz, "cuLaunchKernel", 7000, 1)                           \
  X(cuLaunchKernelEx, "cuLaunchKernelEx", 11060, 0)                           \
  X(cuLaunchKernelEx_ptsz, "cuLaunchKernelEx", 11060, 1)                      \
  X(cuLaunchCooperativeKernel, "cuLaunchCooperativeKernel", 9000, 0)          \
  X(cuLaunchCooperativeKernel_ptsz, "cuLaunchCooperativeKernel", 9000, 1)     \
  X(cuGraphLaunch, "cuGraphLaunch", 10000, 0)                                 \
  X(cuGraphLaunch_ptsz, "cuGraphLaunch", 10000, 1)                           \
  X(cuStreamDestroy_v2, "cuStreamDestroy", 4000, 0)                           \
  X(cuStreamBeginCapture_v2, "cuStreamBeginCapture", 10010, 0)                \
  X(cuStreamBeginCapture_v2_ptsz, "cuStreamBeginCapture", 10010, 1)           \
  X(cuStreamEndCapture, "cuStreamEndCapture", 10000, 0)                       \
  X(cuStreamEndCapture_ptsz, "cuStreamEndCapture", 10000, 1)                  \
  X(cuCtxDestroy_v2, "cuCtxDestroy", 4000, 0)                                 \
  X(cuCtxCreate_v2, "cuCtxCreate", 3020, 0)                                   \
  X(cuCtxCreate_v4, "cuCtxCreate", 12050, 0)                                  \
  X(cuDevicePrimaryCtxRetain, "cuDevicePrimaryCtxRetain", 7000, 0)            \
  X(cuDevicePrimaryCtxRelease_v2, "cuDevicePrimaryCtxRelease", 11000, 0)      \
  X(cuDevicePrimaryCtxReset_v2, "cuDevicePrimaryCtxReset", 11000, 0)          \
  X(cuModuleLoadData, "cuModuleLoadData", 2000, 0)                            \
  X(cuModuleLoadDataEx, "cuModuleLoadDataEx", 2010, 0)                        \
  X(cuModuleUnload, "cuModuleUnload", 2000, 0)                                \
  X(cuMemMap, "cuMemMap", 10020, 0)                                           \
  X(cuMemUnmap, "cuMemUnmap", 10020, 0)                                       \
  X(cuMemPoolCreate, "cuMemPoolCreate", 11020, 0)                             \
  X(cuMemPoolTrimTo, "cuMemPoolTrimTo", 11020, 0)                             \
  X(cuMemPoolDestroy, "cuMemPoolDestroy", 11020, 0)                           \
  X(cuGraphAddMemAllocNode, "cuGraphAddMemAllocNode", 11040, 0)               \
  X(cuGraphInstantiateWithFlags, "cuGraphInstantiateWithFlags", 11040, 0)     \
  X(cuDeviceGraphMemTrim, "cuDeviceGraphMemTrim", 11040, 0)                   \
  X(cuGraphDestroy, "cuGraphDestroy", 10000, 0)                               \
  X(cuGraphExecDestroy, "cuGraphExecDestroy", 10000, 0)

/* Driver functions the hook calls but does not replace. */
#define GS_USED_CUDA(X)       \
  X(cuCtxGetDevice)           \
  X(cuCtxGetCurrent)          \
  X(cuEventCreate)            \
  X(cuEventDestroy_v2)        \
  X(cuEventRecord)            \
  X(cuEventRecord_ptsz)       \
  X(cuEventQuery)             \
  X(cuEventSynchronize)       \
  X(cuEventElapsedTime)       \
  X(cuEventElapsedTime_v2)    \
  X(cuStreamIsCapturing)      \
  X(cuStreamIsCapturing_ptsz) \
  X(cuThreadExchangeStreamCaptureMode) \
  X(cuInit)                             \
  X(cuDeviceGetCount)                   \
  X(cuDeviceGetUuid_v2)                 \
  X(cuDeviceGetUuid)                    \
  X(cuDeviceGetMemPool)                 \
  X(cuMemPoolGetAttribute)              \
  X(cuDeviceGetGraphMemAttribute)

#define GS_HOOKED_NVML(X)          \
  X(nvmlDeviceGetMemoryInfo)       \
  X(nvmlDeviceGetMemoryInfo_v2)

#define GS_USED_NVML(X)              \
  X(nvmlInit_v2)                     \
  X(nvmlDeviceGetIndex)              \
  X(nvmlDeviceGetHandleByIndex_v2)   \
  X(nvmlDeviceGetUtilizationRates)  \
  X(nvmlDeviceGetCount_v2)           \
  X(nvmlDeviceGetUUID)               \
  X(nvmlDeviceGetHandleByUUID)       \
  X(nvmlDeviceGetProcessUtilization) \
  X(nvmlDeviceGetComputeRunningProcesses_v3)

#endif
