/* Lazy, thread-safe initialisation (pthread_once on the first hooked call; nothing runs in a
 * constructor) and the fork handlers. */
#define _GNU_SOURCE
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "hook.h"
#include "hook_gputime.h"
#include "hook_limiter.h"
#include "hook_log.h"
#include "hook_state.h"
#include "hook_usage.h"

static pthread_once_t once = PTHREAD_ONCE_INIT;
static struct gs_config config;

static const char *read_env(const char *name, void *context) {
  (void)context;
  return getenv(name);
}

static void report_error(const char *line, void *context) {
  (void)context;
  gs_log(GS_LOG_ERROR, "%s", line);
}

static void atfork_prepare(void) {
  gs_context_atfork_prepare();
  gs_limiter_atfork_prepare();
  gs_memory_atfork_prepare();
}

static void atfork_parent(void) {
  gs_memory_atfork_parent();
  gs_limiter_atfork_parent();
  gs_context_atfork_parent();
}

static void atfork_child(void) {
  gs_memory_atfork_child();
  gs_limiter_atfork_child();
  gs_context_atfork_child();
  gs_state_atfork_child();
  gs_usage_atfork_child();
  gs_gputime_atfork_child();
}

static void log_limits(void) {
  char line[900];
  size_t n = 0;
  for (int i = 0; i < GS_MAX_DEVICES && n < sizeof line - 120; i++) {
    if (i > 0 && config.memory_limit_bytes[i] == config.memory_limit_bytes[0] &&
        config.core_limit_percent[i] == config.core_limit_percent[0] &&
        config.core_soft_limit_percent[i] == config.core_soft_limit_percent[0])
      continue;
    char memory[32];
    if (config.memory_limit_bytes[i] == GS_NO_MEMORY_LIMIT) strcpy(memory, "unlimited");
    else snprintf(memory, sizeof memory, "%llu", (unsigned long long)config.memory_limit_bytes[i]);
    char label[32];
    snprintf(label, sizeof label, i == 0 ? "devices" : "device %d", i);
    n += (size_t)snprintf(line + n, sizeof line - n, "%s%s: memory %s bytes, core %d%%, soft %d%%",
                          n ? "; " : "", label, memory, config.core_limit_percent[i],
                          config.core_soft_limit_percent[i]);
  }
  gs_log(GS_LOG_INFO, "limits: %s; state %s", line, config.state_dir[0] ? config.state_dir : "(private)");
}

static void initialise(void) {
  /* The log level is needed before the rest is parsed, to honour it for config errors. */
  const char *level = getenv("GPUSHARE_LOG_LEVEL");
  if (level != NULL) {
    if (strcmp(level, "error") == 0) gs_log_set_level(GS_LOG_ERROR);
    else if (strcmp(level, "warn") == 0) gs_log_set_level(GS_LOG_WARN);
    else if (strcmp(level, "debug") == 0) gs_log_set_level(GS_LOG_DEBUG);
  }
  gs_config_parse(&config, read_env, NULL, report_error);
  gs_log_set_level(config.log_level);
  const char *failure = gs_state_open(config.state_dir);
  int any_memory_limit = 0;
  for (int i = 0; i < GS_MAX_DEVICES; i++) any_memory_limit |= config.memory_limit_bytes[i] != GS_NO_MEMORY_LIMIT;
  if (failure != NULL && (any_memory_limit || config.any_core_limit)) {
    /* Limits that cannot be shared with the container's other processes are not limits. */
    gs_log(GS_LOG_ERROR, "shared state unusable (%s); failing closed: memory limit 0 bytes, core limit 1%%", failure);
    for (int i = 0; i < GS_MAX_DEVICES; i++) {
      config.memory_limit_bytes[i] = 0;
      config.core_limit_percent[i] = 1;
      config.core_soft_limit_percent[i] = 1;
    }
    config.any_core_limit = 1;
  }
  log_limits();
  gs_real_resolve_cuda();
  gs_usage_init(&config, failure == NULL);
  /* Its GPU time is the container's: the meter reads NVML for registered processes. */
  if (config.any_core_limit || gs_usage_enabled()) gs_state_register();
  gs_limiter_init(&config);
  gs_gputime_init();
  pthread_atfork(atfork_prepare, atfork_parent, atfork_child);
}

const struct gs_config *gs_runtime(void) {
  pthread_once(&once, initialise);
  return &config;
}

int gs_device_of_current_context(int *device) {
  CUdevice dev = 0;
  if (gs_cuda.cuCtxGetDevice == NULL || gs_cuda.cuCtxGetDevice(&dev) != CUDA_SUCCESS) return -1;
  if (dev < 0 || dev >= GS_MAX_DEVICES) return -1;
  *device = dev;
  return 0;
}

int gs_physical_total(int device, uint64_t *total_bytes) {
  static uint64_t cached[GS_MAX_DEVICES];
  if (device < 0 || device >= GS_MAX_DEVICES) return -1;
  uint64_t value = __atomic_load_n(&cached[device], __ATOMIC_RELAXED);
  if (value == 0) {
    size_t bytes = 0;
    if (gs_cuda.cuDeviceTotalMem_v2 == NULL || gs_cuda.cuDeviceTotalMem_v2(&bytes, device) != CUDA_SUCCESS)
      return -1;
    value = bytes;
    __atomic_store_n(&cached[device], value, __ATOMIC_RELAXED);
  }
  *total_bytes = value;
  return 0;
}
