/* Stub NVML (libnvidia-ml.so.1) over the shared-GPU model of the stub CUDA driver.
 *
 * NVML indexes physical devices (CUDA_VISIBLE_DEVICES does not apply) and names them by UUID.
 * Its figures follow the model's timeline: device utilisation is the share of time at least one
 * kernel ran since this process's previous query; per-process utilisation (smUtil) is each
 * process's SM-time since the caller's lastSeenTimeStamp; memory is the device's physical use.
 * GPUSHARE_STUB_FOREIGN_UTIL adds that many percent of device utilisation from tenants the
 * model does not run (kept for simple burst tests).
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "../src/nvml_types.h"

#define STUB_EXPORT __attribute__((visibility("default")))
#define STUB_MAX_DEVICES 4
#define STUB_MAX_SAMPLES 64

static int initialised;
static int device_count = 1;
static int foreign_percent;
static int device_tokens[STUB_MAX_DEVICES];
static pthread_mutex_t util_lock = PTHREAD_MUTEX_INITIALIZER;
static int64_t last_sample_ns[STUB_MAX_DEVICES], last_busy_ns[STUB_MAX_DEVICES];
static unsigned last_percent[STUB_MAX_DEVICES];

static struct {
  int (*device_count)(void);
  void (*device_memory)(int, uint64_t *, uint64_t *);
  int64_t (*busy_ns)(int);
  int (*process_util)(int, uint64_t, uint64_t *, unsigned *, unsigned *, int);
  int (*process_memory)(int, unsigned *, uint64_t *, int);
} model;

static uint64_t env_u64(const char *name, uint64_t fallback) {
  const char *text = getenv(name);
  if (text == NULL || *text == '\0') return fallback;
  char *end = NULL;
  unsigned long long value = strtoull(text, &end, 10);
  return (end != NULL && *end == '\0') ? value : fallback;
}

/* The model lives in the stub driver; NVML loads it if the program has not. */
static int bind_model(void) {
  void *cuda = dlopen("libcuda.so.1", RTLD_NOW | RTLD_NOLOAD);
  if (cuda == NULL) cuda = dlopen("libcuda.so.1", RTLD_NOW);
  if (cuda == NULL) return -1;
  model.device_count = (int (*)(void))dlsym(cuda, "gpushareStubDeviceCount");
  model.device_memory = (void (*)(int, uint64_t *, uint64_t *))dlsym(cuda, "gpushareStubDeviceMemory");
  model.busy_ns = (int64_t(*)(int))dlsym(cuda, "gpushareStubBusyNs");
  model.process_util =
      (int (*)(int, uint64_t, uint64_t *, unsigned *, unsigned *, int))dlsym(cuda, "gpushareStubProcessUtil");
  model.process_memory = (int (*)(int, unsigned *, uint64_t *, int))dlsym(cuda, "gpushareStubProcessMemory");
  return model.device_count && model.device_memory && model.busy_ns && model.process_util && model.process_memory
             ? 0
             : -1;
}

STUB_EXPORT nvmlReturn_t nvmlInit_v2(void) {
  if (bind_model() != 0) return NVML_ERROR_UNINITIALIZED;
  device_count = model.device_count();
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

/* The driver's UUID bytes 5e ed 00 .. 00 ii, written as NVML does. */
static void uuid_text(int i, char *out, size_t size) {
  snprintf(out, size, "GPU-5eed0000-0000-0000-0000-0000000000%02x", (unsigned)i);
}

STUB_EXPORT nvmlReturn_t nvmlDeviceGetUUID(nvmlDevice_t device, char *uuid, unsigned int length) {
  int i = index_of(device);
  if (!initialised) return NVML_ERROR_UNINITIALIZED;
  if (i < 0 || uuid == NULL) return NVML_ERROR_INVALID_ARGUMENT;
  if (length < 41) return NVML_ERROR_INSUFFICIENT_SIZE;
  uuid_text(i, uuid, length);
  return NVML_SUCCESS;
}

STUB_EXPORT nvmlReturn_t nvmlDeviceGetHandleByUUID(const char *uuid, nvmlDevice_t *device) {
  if (!initialised) return NVML_ERROR_UNINITIALIZED;
  if (uuid == NULL || device == NULL) return NVML_ERROR_INVALID_ARGUMENT;
  for (int i = 0; i < device_count; i++) {
    char text[48];
    uuid_text(i, text, sizeof text);
    if (strcmp(text, uuid) == 0) {
      *device = (nvmlDevice_t)&device_tokens[i];
      return NVML_SUCCESS;
    }
  }
  return NVML_ERROR_NOT_FOUND;
}

STUB_EXPORT nvmlReturn_t nvmlDeviceGetMemoryInfo(nvmlDevice_t device, nvmlMemory_t *memory) {
  int i = index_of(device);
  if (!initialised) return NVML_ERROR_UNINITIALIZED;
  if (i < 0 || memory == NULL) return NVML_ERROR_INVALID_ARGUMENT;
  uint64_t total, used;
  model.device_memory(i, &total, &used);
  memory->total = total;
  memory->used = used;
  memory->free = total - used;
  return NVML_SUCCESS;
}

STUB_EXPORT nvmlReturn_t nvmlDeviceGetMemoryInfo_v2(nvmlDevice_t device, nvmlMemory_v2_t *memory) {
  int i = index_of(device);
  if (!initialised) return NVML_ERROR_UNINITIALIZED;
  if (i < 0 || memory == NULL) return NVML_ERROR_INVALID_ARGUMENT;
  if (memory->version != nvmlMemory_v2) return NVML_ERROR_ARGUMENT_VERSION_MISMATCH;
  uint64_t total, used;
  model.device_memory(i, &total, &used);
  memory->total = total;
  memory->reserved = 0;
  memory->used = used;
  memory->free = total - used;
  return NVML_SUCCESS;
}

STUB_EXPORT nvmlReturn_t nvmlDeviceGetUtilizationRates(nvmlDevice_t device, nvmlUtilization_t *util) {
  int i = index_of(device);
  if (!initialised) return NVML_ERROR_UNINITIALIZED;
  if (i < 0 || util == NULL) return NVML_ERROR_INVALID_ARGUMENT;
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  int64_t now = (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
  int64_t b = model.busy_ns(i);
  pthread_mutex_lock(&util_lock);
  if (last_sample_ns[i] != 0 && now - last_sample_ns[i] >= 20000000LL) {
    int64_t percent = (b - last_busy_ns[i]) * 100 / (now - last_sample_ns[i]);
    last_percent[i] = (unsigned)(percent < 0 ? 0 : percent);
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

STUB_EXPORT nvmlReturn_t nvmlDeviceGetProcessUtilization(nvmlDevice_t device, nvmlProcessUtilizationSample_t *samples,
                                                         unsigned int *count, unsigned long long last_seen) {
  int i = index_of(device);
  if (!initialised) return NVML_ERROR_UNINITIALIZED;
  if (i < 0 || count == NULL) return NVML_ERROR_INVALID_ARGUMENT;
  if (samples == NULL) {
    *count = STUB_MAX_SAMPLES;
    return NVML_ERROR_INSUFFICIENT_SIZE;
  }
  unsigned pids[STUB_MAX_SAMPLES], sm[STUB_MAX_SAMPLES];
  uint64_t now_us;
  int max = *count < STUB_MAX_SAMPLES ? (int)*count : STUB_MAX_SAMPLES;
  int n = model.process_util(i, last_seen, &now_us, pids, sm, max);
  if (n < 0) return NVML_ERROR_NOT_FOUND; /* no sample newer than last_seen yet */
  for (int k = 0; k < n; k++)
    samples[k] = (nvmlProcessUtilizationSample_t){.pid = pids[k], .timeStamp = now_us, .smUtil = sm[k]};
  *count = (unsigned)n;
  if (n == 0) {
    /* A sample with no process: tells the caller the time it was taken (its next lastSeen). */
    if (*count < 1 && max < 1) return NVML_ERROR_NOT_FOUND;
    samples[0] = (nvmlProcessUtilizationSample_t){.pid = 0, .timeStamp = now_us};
    *count = 1;
  }
  return NVML_SUCCESS;
}

STUB_EXPORT nvmlReturn_t nvmlDeviceGetComputeRunningProcesses_v3(nvmlDevice_t device, unsigned int *count,
                                                                 nvmlProcessInfo_t *infos) {
  int i = index_of(device);
  if (!initialised) return NVML_ERROR_UNINITIALIZED;
  if (i < 0 || count == NULL) return NVML_ERROR_INVALID_ARGUMENT;
  unsigned pids[STUB_MAX_SAMPLES];
  uint64_t bytes[STUB_MAX_SAMPLES];
  int n = model.process_memory(i, pids, bytes, STUB_MAX_SAMPLES);
  if (infos == NULL || *count < (unsigned)n) {
    *count = (unsigned)n;
    return n == 0 ? NVML_SUCCESS : NVML_ERROR_INSUFFICIENT_SIZE;
  }
  for (int k = 0; k < n; k++)
    infos[k] = (nvmlProcessInfo_t){.pid = pids[k], .usedGpuMemory = bytes[k], .gpuInstanceId = 0xFFFFFFFFu,
                                   .computeInstanceId = 0xFFFFFFFFu};
  *count = (unsigned)n;
  return NVML_SUCCESS;
}
