/* The real functions behind the hooks, and the lookups generated from the symbol list:
 * exported name → hook, real driver address → hook, (base name, version, flag) → hook. */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <string.h>

#include "hook.h"
#include "hook_log.h"

struct gs_real_cuda gs_cuda;
struct gs_real_nvml gs_nvml;

typedef void *(*dlsym_fn)(void *, const char *);

void *gs_real_dlsym(void *handle, const char *name) {
  static dlsym_fn real;
  dlsym_fn fn = __atomic_load_n(&real, __ATOMIC_ACQUIRE);
  if (fn == NULL) {
    /* dlvsym is not interposed, so it reaches libc's dlsym. Its version is the one of glibc
     * 2.34 (where libdl moved into libc) or the architecture's first glibc version. */
    static const char *const versions[] = {"GLIBC_2.34", "GLIBC_2.2.5" /* x86-64 */, "GLIBC_2.17" /* aarch64 */,
                                           "GLIBC_2.3" /* ppc64 */, "GLIBC_2.2" /* s390x */,
                                           "GLIBC_2.27" /* riscv64 */, "GLIBC_2.36" /* loongarch64 */,
                                           "GLIBC_2.4" /* arm */, "GLIBC_2.0" /* i386 */, "GLIBC_2.1"};
    for (size_t i = 0; fn == NULL && i < sizeof versions / sizeof versions[0]; i++)
      fn = (dlsym_fn)dlvsym(RTLD_NEXT, "dlsym", versions[i]);
    __atomic_store_n(&real, fn, __ATOMIC_RELEASE);
  }
  return fn ? fn(handle, name) : NULL;
}

void gs_real_resolve_cuda(void) {
  void *driver = dlopen("libcuda.so.1", RTLD_NOW | RTLD_LOCAL | RTLD_NOLOAD);
  if (driver == NULL) driver = dlopen("libcuda.so.1", RTLD_NOW | RTLD_LOCAL);
  if (driver == NULL) {
    gs_log(GS_LOG_ERROR, "cannot load libcuda.so.1: %s", dlerror());
    return;
  }
#define GS_RESOLVE(name, ...) gs_cuda.name = (__typeof__(gs_cuda.name))gs_real_dlsym(driver, #name);
  GS_HOOKED_CUDA(GS_RESOLVE)
#define GS_RESOLVE1(name) gs_cuda.name = (__typeof__(gs_cuda.name))gs_real_dlsym(driver, #name);
  GS_USED_CUDA(GS_RESOLVE1)
}

int gs_real_resolve_nvml(void) {
  static int resolved;
  if (__atomic_load_n(&resolved, __ATOMIC_ACQUIRE)) return gs_nvml.nvmlDeviceGetIndex != NULL;
  void *nvml = dlopen("libnvidia-ml.so.1", RTLD_NOW | RTLD_LOCAL | RTLD_NOLOAD);
  if (nvml == NULL) nvml = dlopen("libnvidia-ml.so.1", RTLD_NOW | RTLD_LOCAL);
  if (nvml != NULL) {
#define GS_RESOLVE_NVML(name) gs_nvml.name = (__typeof__(gs_nvml.name))gs_real_dlsym(nvml, #name);
    GS_HOOKED_NVML(GS_RESOLVE_NVML)
    GS_USED_NVML(GS_RESOLVE_NVML)
  }
  __atomic_store_n(&resolved, 1, __ATOMIC_RELEASE);
  return gs_nvml.nvmlDeviceGetIndex != NULL;
}

struct hook_entry {
  const char *name;
  const char *base;
  int version;
  int per_thread;
  void *hook;
  size_t real_offset; /* of the real function in gs_cuda */
};

static const struct hook_entry cuda_hooks[] = {
#define GS_ENTRY(name, base, version, per_thread) \
  {#name, base, version, per_thread, (void *)name, offsetof(struct gs_real_cuda, name)},
    GS_HOOKED_CUDA(GS_ENTRY)};
#define CUDA_HOOK_COUNT (sizeof cuda_hooks / sizeof cuda_hooks[0])

static const struct {
  const char *name;
  void *hook;
} nvml_hooks[] = {
#define GS_NVML_ENTRY(name) {#name, (void *)name},
    GS_HOOKED_NVML(GS_NVML_ENTRY)};

void *gs_hook_by_name(const char *name) {
  if (name == NULL) return NULL;
  if (name[0] == 'c' && name[1] == 'u') {
    for (size_t i = 0; i < CUDA_HOOK_COUNT; i++)
      if (strcmp(cuda_hooks[i].name, name) == 0) return cuda_hooks[i].hook;
  } else if (strncmp(name, "nvml", 4) == 0) {
    for (size_t i = 0; i < sizeof nvml_hooks / sizeof nvml_hooks[0]; i++)
      if (strcmp(nvml_hooks[i].name, name) == 0) return nvml_hooks[i].hook;
  }
  return NULL;
}

void *gs_hook_by_real(void *real_fn) {
  if (real_fn == NULL) return NULL;
  for (size_t i = 0; i < CUDA_HOOK_COUNT; i++) {
    void *real = *(void **)((char *)&gs_cuda + cuda_hooks[i].real_offset);
    if (real == real_fn || cuda_hooks[i].hook == real_fn) return cuda_hooks[i].hook;
  }
  return NULL;
}

void *gs_hook_by_base(const char *base, int cuda_version, int per_thread) {
  const struct hook_entry *best = NULL;
  int has_per_thread = 0;
  for (size_t i = 0; i < CUDA_HOOK_COUNT; i++)
    if (strcmp(cuda_hooks[i].base, base) == 0 && cuda_hooks[i].per_thread) has_per_thread = 1;
  for (size_t i = 0; i < CUDA_HOOK_COUNT; i++) {
    const struct hook_entry *e = &cuda_hooks[i];
    if (strcmp(e->base, base) != 0 || e->version > cuda_version) continue;
    if (*(void **)((char *)&gs_cuda + e->real_offset) == NULL) continue; /* the driver lacks it */
    if (e->per_thread != (per_thread && has_per_thread)) continue;
    if (best == NULL || e->version > best->version) best = e;
  }
  return best ? best->hook : NULL;
}
