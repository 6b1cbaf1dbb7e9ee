/* Configuration of the hook, parsed once from GPUSHARE_* environment variables. */
#ifndef GPUSHARE_HOOK_CONFIG_H
#define GPUSHARE_HOOK_CONFIG_H

#include <stddef.h>
#include <stdint.h>

#define GS_MAX_DEVICES 16
#define GS_NO_MEMORY_LIMIT UINT64_MAX

struct gs_config {
  uint64_t memory_limit_bytes[GS_MAX_DEVICES]; /* GS_NO_MEMORY_LIMIT when unset */
  int core_limit_percent[GS_MAX_DEVICES];      /* 1..100; 100 means not limited */
  int core_soft_limit_percent[GS_MAX_DEVICES]; /* core..100; equal to core when no burst */
  uint64_t context_overhead_bytes; /* charged per context until measured */
  char state_dir[512];
  char usage_dir[400];     /* GPUSHARE_USAGE_DIR: folder of the usage file; "" when none */
  char allocation_id[65];  /* GPUSHARE_ALLOCATION_ID: the usage file's name; "" when none */
  int log_level;
  int any_core_limit;
};

/* Reads a variable; returns NULL when unset. */
typedef const char *(*gs_env_reader)(const char *name, void *context);

/* Parses the configuration. Every invalid value is reported through report (one line each,
 * naming the variable, the value and the rule) and replaced by its fail-closed value:
 * memory limit 0 bytes, core limit 1 %, no burst. Returns the number of invalid values. */
int gs_config_parse(struct gs_config *config, gs_env_reader read, void *context,
                    void (*report)(const char *line, void *context));

/* Parses "<digits>[Ki|Mi|Gi|Ti]" into bytes. Returns 0 on success, -1 on garbage or overflow. */
int gs_parse_bytes(const char *text, uint64_t *bytes);
/* Parses a whole-number percent in [low, high]. Returns 0 on success, -1 otherwise. */
int gs_parse_percent(const char *text, int low, int high, int *percent);

#endif
