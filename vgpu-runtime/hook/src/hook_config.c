/* Parsing of the GPUSHARE_* environment. Pure: reads through a callback, reports through a
 * callback, so the unit tests drive it with tables. Bad values fail closed. */
#include "hook_config.h"

#include <stdio.h>
#include <string.h>

#include "hook_log.h"

int gs_parse_bytes(const char *text, uint64_t *bytes) {
  if (text == NULL || *text < '0' || *text > '9') return -1;
  uint64_t value = 0;
  const char *p = text;
  for (; *p >= '0' && *p <= '9'; p++) {
    uint64_t digit = (uint64_t)(*p - '0');
    if (value > (UINT64_MAX - digit) / 10) return -1;
    value = value * 10 + digit;
  }
  unsigned shift = 0;
  if (strcmp(p, "Ki") == 0) shift = 10;
  else if (strcmp(p, "Mi") == 0) shift = 20;
  else if (strcmp(p, "Gi") == 0) shift = 30;
  else if (strcmp(p, "Ti") == 0) shift = 40;
  else if (*p != '\0') return -1;
  if (shift != 0 && value > (UINT64_MAX >> shift)) return -1;
  *bytes = value << shift;
  return 0;
}

int gs_parse_percent(const char *text, int low, int high, int *percent) {
  if (text == NULL || *text == '\0' || strlen(text) > 3) return -1;
  int value = 0;
  for (const char *p = text; *p != '\0'; p++) {
    if (*p < '0' || *p > '9') return -1;
    value = value * 10 + (*p - '0');
  }
  if (value < low || value > high) return -1;
  *percent = value;
  return 0;
}

struct reporter {
  void (*report)(const char *line, void *context);
  void *context;
  int errors;
};

static void reject(struct reporter *r, const char *name, const char *value, const char *rule,
                   const char *fallback) {
  char line[512];
  snprintf(line, sizeof line, "%s=\"%.64s\" rejected: %s; using %s (fail closed)", name, value, rule,
           fallback);
  r->report(line, r->context);
  r->errors++;
}

static void parse_memory(struct reporter *r, const char *name, const char *value, uint64_t *out) {
  uint64_t bytes = 0;
  if (gs_parse_bytes(value, &bytes) != 0 || bytes == 0) {
    reject(r, name, value, "must be a positive byte count with an optional Ki, Mi, Gi or Ti suffix",
           "0 bytes");
    *out = 0;
    return;
  }
  *out = bytes;
}

static int level_of(const char *text) {
  static const char *const names[] = {"error", "warn", "info", "debug"};
  for (int i = 0; i < 4; i++)
    if (strcmp(text, names[i]) == 0) return i;
  return -1;
}

int gs_config_parse(struct gs_config *config, gs_env_reader read, void *context,
                    void (*report)(const char *line, void *context)) {
  struct reporter r = {report, context, 0};
  memset(config, 0, sizeof *config);
  config->log_level = GS_LOG_INFO;

  const char *level = read("GPUSHARE_LOG_LEVEL", context);
  if (level != NULL && *level != '\0') {
    int parsed = level_of(level);
    if (parsed < 0) reject(&r, "GPUSHARE_LOG_LEVEL", level, "must be error, warn, info or debug", "info");
    else config->log_level = parsed;
  }

  const char *dir = read("GPUSHARE_STATE_DIR", context);
  if (dir == NULL || *dir == '\0') dir = "/tmp/gpushare-vgpu";
  if (strlen(dir) >= sizeof config->state_dir - 32) {
    reject(&r, "GPUSHARE_STATE_DIR", dir, "path too long", "a private, per-process state");
    config->state_dir[0] = '\0';
  } else {
    strcpy(config->state_dir, dir);
  }

  config->context_overhead_bytes = 512ULL << 20;
  const char *overhead = read("GPUSHARE_CONTEXT_OVERHEAD", context);
  if (overhead != NULL && gs_parse_bytes(overhead, &config->context_overhead_bytes) != 0) {
    reject(&r, "GPUSHARE_CONTEXT_OVERHEAD", overhead, "must be a byte count with an optional unit suffix", "512Mi");
    config->context_overhead_bytes = 512ULL << 20;
  }

  uint64_t memory_all = GS_NO_MEMORY_LIMIT;
  const char *memory = read("GPUSHARE_MEMORY_LIMIT", context);
  if (memory != NULL) parse_memory(&r, "GPUSHARE_MEMORY_LIMIT", memory, &memory_all);

  int core_all = 100, soft_all = 0;
  const char *core = read("GPUSHARE_CORE_LIMIT", context);
  if (core != NULL && gs_parse_percent(core, 1, 100, &core_all) != 0) {
    reject(&r, "GPUSHARE_CORE_LIMIT", core, "must be a whole percent from 1 to 100", "1");
    core_all = 1;
  }
  const char *soft = read("GPUSHARE_CORE_SOFT_LIMIT", context);
  if (soft != NULL && gs_parse_percent(soft, 1, 100, &soft_all) != 0) {
    reject(&r, "GPUSHARE_CORE_SOFT_LIMIT", soft, "must be a whole percent from 1 to 100", "no burst");
    soft_all = 0;
  }

  int soft_reported = 0;
  for (int i = 0; i < GS_MAX_DEVICES; i++) {
    char name[64];
    config->memory_limit_bytes[i] = memory_all;
    snprintf(name, sizeof name, "GPUSHARE_MEMORY_LIMIT_%d", i);
    const char *value = read(name, context);
    if (value != NULL) parse_memory(&r, name, value, &config->memory_limit_bytes[i]);

    int core_i = core_all, soft_i = soft_all;
    snprintf(name, sizeof name, "GPUSHARE_CORE_LIMIT_%d", i);
    value = read(name, context);
    if (value != NULL && gs_parse_percent(value, 1, 100, &core_i) != 0) {
      reject(&r, name, value, "must be a whole percent from 1 to 100", "1");
      core_i = 1;
    }
    snprintf(name, sizeof name, "GPUSHARE_CORE_SOFT_LIMIT_%d", i);
    value = read(name, context);
    if (value != NULL && gs_parse_percent(value, 1, 100, &soft_i) != 0) {
      reject(&r, name, value, "must be a whole percent from 1 to 100", "no burst");
      soft_i = 0;
    }
    if (soft_i != 0 && soft_i < core_i) {
      /* Reported once for the container-wide pair, and per device where a device value is set. */
      int device_set = read(name, context) != NULL;
      snprintf(name, sizeof name, "GPUSHARE_CORE_LIMIT_%d", i);
      device_set = device_set || read(name, context) != NULL;
      if (device_set || !soft_reported) {
        char text[16];
        snprintf(text, sizeof text, "%d", soft_i);
        snprintf(name, sizeof name, device_set ? "GPUSHARE_CORE_SOFT_LIMIT_%d" : "GPUSHARE_CORE_SOFT_LIMIT", i);
        reject(&r, name, text, "must not be below the core limit", "no burst");
        soft_reported = soft_reported || !device_set;
      }
      soft_i = 0;
    }
    config->core_limit_percent[i] = core_i;
    config->core_soft_limit_percent[i] = soft_i != 0 ? soft_i : core_i;
    if (core_i < 100) config->any_core_limit = 1;
  }
  return r.errors;
}
