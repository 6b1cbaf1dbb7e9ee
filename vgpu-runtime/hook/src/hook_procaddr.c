/* Proc-address family: the paths by which the CUDA runtime and frameworks find driver entry
 * points. cuGetProcAddress(_v2) asks the driver first (so the requested CUDA version and the
 * per-thread-default-stream flag are resolved exactly as the driver does), then swaps in the
 * hook of whatever it returned; a symbol the driver lacks stays not found. dlsym hands out the
 * hook of a hooked name only when the real lookup found the symbol. */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <string.h>

#include "hook.h"
#include "hook_log.h"

static void *swap_in_hook(const char *symbol, void *real_fn, int version, cuuint64_t flags) {
  void *hook = gs_hook_by_real(real_fn);
  if (hook != NULL) return hook;
  /* The driver may hand out internal addresses: map by name, version and flag instead. */
  hook = gs_hook_by_base(symbol, version, (flags & CU_GET_PROC_ADDRESS_PER_THREAD_DEFAULT_STREAM) != 0);
  if (hook != NULL) {
    gs_log(GS_LOG_DEBUG, "cuGetProcAddress(%s): hooked by name", symbol);
    return hook;
  }
  return real_fn;
}

GS_EXPORT CUresult cuGetProcAddress_v2(const char *symbol, void **pfn, int version, cuuint64_t flags,
                                       CUdriverProcAddressQueryResult *status) {
  gs_runtime();
  if (gs_cuda.cuGetProcAddress_v2 == NULL) return CUDA_ERROR_NOT_FOUND;
  CUresult rc = gs_cuda.cuGetProcAddress_v2(symbol, pfn, version, flags, status);
  if (rc == CUDA_SUCCESS && pfn != NULL && *pfn != NULL && symbol != NULL)
    *pfn = swap_in_hook(symbol, *pfn, version, flags);
  return rc;
}

GS_EXPORT CUresult cuGetProcAddress(const char *symbol, void **pfn, int version, cuuint64_t flags) {
  gs_runtime();
  if (gs_cuda.cuGetProcAddress == NULL) return CUDA_ERROR_NOT_FOUND;
  CUresult rc = gs_cuda.cuGetProcAddress(symbol, pfn, version, flags);
  if (rc == CUDA_SUCCESS && pfn != NULL && *pfn != NULL && symbol != NULL)
    *pfn = swap_in_hook(symbol, *pfn, version, flags);
  return rc;
}

/* No initialisation here: dlsym is called early and from inside the dynamic loader's users.
 * RTLD_NEXT is relative to the caller, which libc finds from its return address: that lookup
 * is forwarded as a tail call (the Makefile builds with -O2; tests/hook checks the result), so
 * libc sees the original caller, and the answer is left as the caller asked. */
GS_EXPORT void *dlsym(void *handle, const char *name) {
  if (handle == RTLD_NEXT) return gs_real_dlsym(handle, name);
  void *real = gs_real_dlsym(handle, name);
  if (real == NULL) return real;
  void *hook = gs_hook_by_name(name);
  return hook != NULL ? hook : real;
}
