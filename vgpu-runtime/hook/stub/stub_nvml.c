/* Stub NVML (libnvidia-ml.so.1) for the simulated devices of the stub CUDA driver.
 *
 * Memory figures come from the stub driver of the same process (if loaded); utilisation is this
 * process's simulated kernel time over the window since the previous query plus
 * GPUSHARE_STUB_FOREIGN_UTIL percent, the load of other (simulated) tenants of the GPU.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "../src/nvml_types.h"

#define STUB_EXPORT __attribute__((visibility("default")))
#define STUB_MAX_DEVICES 16

static int initialised;
static int device_count = 1;
static uint64_t capacity_bytes = 16ULL << 30;
static int foreign_percent;
static int device_tokens[STUB_MAX_DEVICES];
static pthread_mutex_t util_lock = PTHREAD_MUTEX_INITIALIZER;
static int64_t last_sample_ns[STUB_MAX_DEVICES], last_busy_ns[STUB_MAX_DEVICES];
static unsigned last_percent[STUB_MAX_DEVICES];

static uint64_t env_u64(const char *name, uint64_t fallback) {
  const char *text = getenv(name);
  if (text == NULL || *text == '\0') return fallback;
  char *end = NULL;
  unsigned long long value = strtoull(text, &end, 10);
  return (end != NULL && *end == '\0') ? value : fallback;
}

STUB_EXPORT nvmlReturn_t nvmlInit_v2(void) {
  device_count = (int)env_u64("GPUSHARE_STUB_DEVICE_COUNT", 1);
  if (device_count < 1 || device_count > STUB_MAX_DEVICES) device_count = 1;
  capacity_bytes = env_u64("GPUSHARE_STUB_MEMORY_BYTES", 16ULL << 30);
  foreign_percent = (int)env_u64("GPUSHARE_STUB_FOREIGN_UTIL", 0);
  initialised = 1;
  return NVML_SUCCESS;
}

STUB_EXPORT nvmlReturn_t nvmlInit(void) { return nvmlInit_v2(); }

STUB_EXPORT nvmlReturn_t nvmlShutdown(void) { return NVML_SUCCESS; }

STUB_EXPORT const char *nvmlErrorString(nvmlReturn_t result) {
  return result == NVML_SUCCESS ? "Success" : "Error";
}

STUB_EXPORT nvmlReturn_t nvmlDeviceGetCount_v2(unsigned int *count) {
  if (!initialised) return NVML_ERROR_UNINITIALIZED;
  if (count == NULL) return NVML_ERROR_INVALID_ARGUMENT;
  *count = (unsigned)device_count;
  return NVML_SUCCESS;
}

STUB_EXPORT nvmlReturn_t nvmlDeviceGetHandleByIndex_v2(unsigned int index, nvmlDevice_t *device) {
  if (!initialised) return NVML_ERROR_UNINITIALIZED;
  if (device == NULL || index >= (unsigned)device_count) return NVML_ERROR_INVALID_ARGUMENT;
  *device = (nvmlDevice_t)&device_tokens[index];
  return NVML_SUCCESS;
}

static int index_of(nvmlDevice_t device) {
  int *token = (int *)device;
  if (token < &device_tokens[0] || token >= &device_tokens[device_count]) return -1;
  return (int)(token - &device_tokens[0]);
}

STUB_EXPORT nvmlReturn_t nvmlDeviceGetIndex(nvmlDevice_t device, unsigned int *index) {
  int i = index_of(device);
  if (i < 0 || index == NULL) return NVML_ERROR_INVALID_ARGUMENT;
  *index = (unsigned)i;
  return NVML_SUCCESS;
}

/* Reads a stub-driver figure if the stub driver is loaded in this process. */
static void *stub_driver_symbol(const char *name) {
  void *cuda = dlopen("libcuda.so.1", RTLD_LAZY | RTLD_NOLOAD);
  void *fn = cuda ? dlsym(cuda, name) : NULL;
  if (cuda) dlclose(cuda);
  return fn;
}

static uint64_t used_on(int device) {
  uint64_t (*used)(int) = (uint64_t(*)(int))stub_driver_symbol("gpushareStubMemUsed");
  return used ? used(device) : 0;
}

STUB_EXPORT nvmlReturn_t nvmlDeviceGetMemoryInfo(nvmlDevice_t device, nvmlMemory_t *memory) {
  int i = index_of(device);
  if (!initialised) return NVML_ERROR_UNINITIALIZED;
  if (i < 0 || memory == NULL) return NVML_ERROR_INVALID_ARGUMENT;
  memory->total = capacity_bytes;
  memory->used = used_on(i);
  memory->free = capacity_bytes - memory->used;
  return NVML_SUCCESS;
}

STUB_EXPORT nvmlReturn_t nvmlDeviceGetMemoryInfo_v2(nvmlDevice_t device, nvmlMemory_v2_t *memory) {
  int i = index_of(device);
  if (!initialised) return NVML_ERROR_UNINITIALIZED;
  if (i < 0 || memory == NULL) return NVML_ERROR_INVALID_ARGUMENT;
  if (memory->version != nvmlMemory_v2) return NVML_ERROR_ARGUMENT_VERSION_MISMATCH;
  memory->total = capacity_bytes;
  memory->reserved = 0;
  memory->used = used_on(i);
  memory->free = capacity_bytes - memory->used;
  return NVML_SUCCESS;
}

STUB_EXPORT nvmlReturn_t nvmlDeviceGetUtilizationRates(nvmlDevice_t device, nvmlUtilization_t *util) {
  int i = index_of(device);
  if (!initialised) return NVML_ERROR_UNINITIALIZED;
  if (i < 0 || util == NULL) return NVML_ERROR_INVALID_ARGUMENT;
  int64_t (*busy)(int) = (int64_t(*)(int))stub_driver_symbol("gpushareStubBusyNs");
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  int64_t now = (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
  int64_t b = busy ? busy(i) : 0;
  pthread_mutex_lock(&util_lock);
  if (last_sample_ns[i] != 0 && now - last_sample_ns[i] >= 20000000LL) {
    int64_t own = (b - last_busy_ns[i]) * 100 / (now - last_sample_ns[i]);
    last_percent[i] = (unsigned)(own < 0 ? 0 : own);
    last_sample_ns[i] = now;
    last_busy_ns[i] = b;
  } else if (last_sample_ns[i] == 0) {
    last_sample_ns[i] = now;
    last_busy_ns[i] = b;
  }
  unsigned percent = last_percent[i] + (unsigned)foreign_percent;
  pthread_mutex_unlock(&util_lock);
  util->gpu = percent > 100 ? 100 : percent;
  util->memory = 0;
  return NVML_SUCCESS;
}
