/* Parsing of the GPUSHARE_* environment. Pure: reads through a callback, reports through a
 * callback, so the unit tests drive it with tables. Bad values fail closed. */
#include "hook_config.h"

#include <stdio.h>
#include <string.h>

#include "hook_log.h"

/* Units: Ki Mi Gi Ti Pi and KiB MiB GiB TiB PiB are powers of 1024; k K M G T P and kB KB MB GB
 * TB PB are powers of 1000, as in Kubernetes quantities (4G = 4,000,000,000 bytes). */
static const struct {
  const char *suffix;
  uint64_t factor;
} units[] = {
    {"Ki", 1ULL << 10}, {"Mi", 1ULL << 20}, {"Gi", 1ULL << 30}, {"Ti", 1ULL << 40}, {"Pi", 1ULL << 50},
    {"KiB", 1ULL << 10}, {"MiB", 1ULL << 20}, {"GiB", 1ULL << 30}, {"TiB", 1ULL << 40}, {"PiB", 1ULL << 50},
    {"k", 1000ULL}, {"K", 1000ULL}, {"M", 1000000ULL}, {"G", 1000000000ULL}, {"T", 1000000000000ULL},
    {"P", 1000000000000000ULL}, {"kB", 1000ULL}, {"KB", 1000ULL}, {"MB", 1000000ULL}, {"GB", 1000000000ULL},
    {"TB", 1000000000000ULL}, {"PB", 1000000000000000ULL}, {"B", 1ULL}, {"", 1ULL},
};

int gs_parse_bytes(const char *text, uint64_t *bytes) {
  if (text == NULL || *text < '0' || *text > '9') return -1;
  uint64_t value = 0;
  const char *p = text;
  for (; *p >= '0' && *p <= '9'; p++) {
    uint64_t digit = (uint64_t)(*p - '0');
    if (value > (UINT64_MAX - digit) / 10) return -1;
    value = value * 10 + digit;
  }
  for (size_t i = 0; i < sizeof units / sizeof units[0]; i++) {
    if (strcmp(p, units[i].suffix) != 0) continue;
    if (value > UINT64_MAX / units[i].factor) return -1;
    *bytes = value * units[i].factor;
    return 0;
  }
  return -1;
}

int gs_parse_percent(const char *text, int low, int high, int *percent) {
  if (text == NULL || *text == '\0') return -1;
  size_t length = strlen(text);
  if (text[length - 1] == '%') length--; /* "50%" is 50 */
  if (length == 0 || length > 3) return -1;
  int value = 0;
  for (size_t i = 0; i < length; i++) {
    if (text[i] < '0' || text[i] > '9') return -1;
    value = value * 10 + (text[i] - '0');
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

/* An allocation id names a file: letters, digits, '_', '-' and '.', not starting with '.'. */
static int valid_allocation_id(const char *id) {
  size_t n = strlen(id);
  if (n == 0 || n > 64 || id[0] == '.') return 0;
  for (size_t i = 0; i < n; i++) {
    char c = id[i];
    if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_' || c == '-' ||
          c == '.'))
      return 0;
  }
  return 1;
}

/* The usage file ($GPUSHARE_USAGE_DIR/$GPUSHARE_ALLOCATION_ID.json) is written only when both
 * are set and valid; a bad value means no usage file (limits are not affected). */
static void parse_usage(struct reporter *r, struct gs_config *config, gs_env_reader read, void *context) {
  config->usage_dir[0] = '\0';
  config->allocation_id[0] = '\0';
  const char *dir = read("GPUSHARE_USAGE_DIR", context);
  const char *id = read("GPUSHARE_ALLOCATION_ID", context);
  int dir_ok = 0;
  if (dir != NULL && *dir != '\0') {
    if (dir[0] != '/' || strlen(dir) >= sizeof config->usage_dir)
      reject(r, "GPUSHARE_USAGE_DIR", dir, "must be an absolute path shorter than 400 bytes", "no usage file");
    else dir_ok = 1;
  }
  int id_ok = 0;
  if (id != NULL && *id != '\0') {
    if (!valid_allocation_id(id))
      reject(r, "GPUSHARE_ALLOCATION_ID", id,
             "must be 1 to 64 letters, digits, '_', '-' or '.', not starting with '.'", "no usage file");
    else id_ok = 1;
  }
  if (dir_ok && id_ok) {
    strcpy(config->usage_dir, dir);
    strcpy(config->allocation_id, id);
  }
}

static void parse_memory(struct reporter *r, const char *name, const char *value, uint64_t *out) {
  uint64_t bytes = 0;
  if (gs_parse_bytes(value, &bytes) != 0 || bytes == 0) {
    reject(r, name, value,
           "must be a positive whole number of bytes with an optional unit (Ki Mi Gi Ti or KiB MiB GiB TiB: "
           "powers of 1024; K M G T or KB MB GB TB: powers of 1000)",
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
  parse_usage(&r, config, read, context);

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
    reject(&r, "GPUSHARE_CORE_LIMIT", core, "must be a whole percent from 1 to 100 (a trailing % is allowed)", "1");
    core_all = 1;
  }
  const char *soft = read("GPUSHARE_CORE_SOFT_LIMIT", context);
  if (soft != NULL && gs_parse_percent(soft, 1, 100, &soft_all) != 0) {
    reject(&r, "GPUSHARE_CORE_SOFT_LIMIT", soft, "must be a whole percent from 1 to 100 (a trailing % is allowed)", "no burst");
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
      reject(&r, name, value, "must be a whole percent from 1 to 100 (a trailing % is allowed)", "1");
      core_i = 1;
    }
    snprintf(name, sizeof name, "GPUSHARE_CORE_SOFT_LIMIT_%d", i);
    value = read(name, context);
    if (value != NULL && gs_parse_percent(value, 1, 100, &soft_i) != 0) {
      reject(&r, name, value, "must be a whole percent from 1 to 100 (a trailing % is allowed)", "no burst");
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
