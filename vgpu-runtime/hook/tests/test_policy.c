/* Unit tests of the pure parts: limit policy and configuration parsing. Table-driven; prints
 * one line per failing case and exits non-zero if any failed. */
#include <stdio.h>
#include <string.h>

#include "hook_config.h"
#include "hook_policy.h"

static int failures, cases;

#define EXPECT_EQ(name, got, want)                                                          \
  do {                                                                                      \
    cases++;                                                                                \
    long long g_ = (long long)(got), w_ = (long long)(want);                                \
    if (g_ != w_) {                                                                         \
      printf("FAIL %s: got %lld, want %lld\n", name, g_, w_);                               \
      failures++;                                                                           \
    }                                                                                       \
  } while (0)

static void test_parse_bytes(void) {
  static const struct { const char *text; int rc; uint64_t bytes; } table[] = {
      {"0", 0, 0}, {"1", 0, 1}, {"1024", 0, 1024}, {"1Ki", 0, 1024}, {"3Mi", 0, 3ULL << 20},
      {"2Gi", 0, 2ULL << 30}, {"1Ti", 0, 1ULL << 40}, {"18446744073709551615", 0, UINT64_MAX},
      {"18446744073709551616", -1, 0}, {"17179869184Gi", -1, 0}, {"", -1, 0}, {"Gi", -1, 0},
      {"4G", 0, 4000000000ULL}, {"4GiB", 0, 4ULL << 30}, {"4096Mi", 0, 4ULL << 30}, {"4GB", 0, 4000000000ULL},
      {"512MiB", 0, 512ULL << 20}, {"2k", 0, 2000}, {"7B", 0, 7}, {"1g", -1, 0}, {"1Gib", -1, 0},
      {"20000000P", -1, 0}, {"1 Gi", -1, 0}, {"-1", -1, 0}, {"1.5Gi", -1, 0}, {"12XB", -1, 0}, {"0x10", -1, 0},
  };
  for (size_t i = 0; i < sizeof table / sizeof table[0]; i++) {
    uint64_t bytes = 0;
    char name[64];
    snprintf(name, sizeof name, "parse_bytes(\"%s\")", table[i].text);
    int rc = gs_parse_bytes(table[i].text, &bytes);
    EXPECT_EQ(name, rc, table[i].rc);
    if (rc == 0) EXPECT_EQ(name, bytes, table[i].bytes);
  }
}

static void test_parse_percent(void) {
  static const struct { const char *text; int rc, percent; } table[] = {
      {"50", 0, 50}, {"50%", 0, 50}, {"100%", 0, 100}, {"1", 0, 1}, {"0", -1, 0}, {"101", -1, 0},
      {"%", -1, 0}, {"5%0", -1, 0}, {"50%%", -1, 0}, {"", -1, 0}, {" 50", -1, 0}, {"1000%", -1, 0},
  };
  for (size_t i = 0; i < sizeof table / sizeof table[0]; i++) {
    int percent = 0;
    char name[64];
    snprintf(name, sizeof name, "parse_percent(\"%s\")", table[i].text);
    int rc = gs_parse_percent(table[i].text, 1, 100, &percent);
    EXPECT_EQ(name, rc, table[i].rc);
    if (rc == 0) EXPECT_EQ(name, percent, table[i].percent);
  }
}

static void test_memory_policy(void) {
  EXPECT_EQ("admit exact fit", gs_memory_admit(60, 40, 100), 1);
  EXPECT_EQ("admit one over", gs_memory_admit(60, 41, 100), 0);
  EXPECT_EQ("admit huge request", gs_memory_admit(1, UINT64_MAX, 100), 0);
  EXPECT_EQ("admit used over limit", gs_memory_admit(150, 1, 100), 0);
  static const struct { uint64_t limit, ptotal, pfree, used, free, total; } table[] = {
      {100, 1000, 1000, 0, 100, 100},  {100, 1000, 1000, 30, 70, 100}, {100, 1000, 1000, 100, 0, 100},
      {100, 1000, 1000, 150, 0, 100},  {2000, 1000, 800, 100, 800, 1000}, {100, 1000, 20, 30, 20, 100},
      {UINT64_MAX, 1000, 900, 100, 900, 1000},
  };
  for (size_t i = 0; i < sizeof table / sizeof table[0]; i++) {
    uint64_t f, t;
    gs_memory_report(table[i].limit, table[i].ptotal, table[i].pfree, table[i].used, &f, &t);
    char name[64];
    snprintf(name, sizeof name, "report case %zu free", i);
    EXPECT_EQ(name, f, table[i].free);
    snprintf(name, sizeof name, "report case %zu total", i);
    EXPECT_EQ(name, t, table[i].total);
  }
  EXPECT_EQ("array 2d", gs_array_bytes(100, 10, 0, 4, 4, 1), 16000);
  EXPECT_EQ("array 1d", gs_array_bytes(100, 0, 0, 1, 1, 1), 100);
  EXPECT_EQ("mipmap 3 levels", gs_array_bytes(8, 8, 1, 1, 1, 3), 64 + 16 + 4);
  EXPECT_EQ("array overflow", gs_array_bytes(UINT64_MAX, 2, 1, 1, 1, 1), 0);
}

static void test_bucket(void) {
  EXPECT_EQ("capacity 10", gs_bucket_capacity_ns(10), 1000000 + 10000000);
  EXPECT_EQ("capacity 30", gs_bucket_capacity_ns(30), 1000000 + 30000000);
  EXPECT_EQ("capacity 90 capped", gs_bucket_capacity_ns(90), 1000000 + 50000000);
  EXPECT_EQ("refill 30% of 1ms", gs_bucket_refill(0, 1000000, 30), 300000);
  EXPECT_EQ("refill capped", gs_bucket_refill(0, 1000000000, 30), gs_bucket_capacity_ns(30));
  EXPECT_EQ("refill from debt", gs_bucket_refill(-5000000, 10000000, 50), 0);
  EXPECT_EQ("refill negative elapsed", gs_bucket_refill(7, -5, 50), 7);
  EXPECT_EQ("wait none when nothing is short", gs_bucket_wait_ns(0, 10, 20000, 2000000), 0);
  EXPECT_EQ("wait for the refill", gs_bucket_wait_ns(100000, 10, 20000, 2000000), 1000000);
  EXPECT_EQ("wait at least min", gs_bucket_wait_ns(1, 100, 20000, 2000000), 20000);
  EXPECT_EQ("wait at most max", gs_bucket_wait_ns(1000000000, 1, 20000, 2000000), 2000000);
  EXPECT_EQ("wait with no rate", gs_bucket_wait_ns(5, 0, 20000, 2000000), 2000000);
  EXPECT_EQ("soft when idle", gs_effective_percent(30, 60, 5, 10), 60);
  EXPECT_EQ("hard when busy", gs_effective_percent(30, 60, 40, 10), 30);
  EXPECT_EQ("no soft", gs_effective_percent(30, 30, 0, 10), 30);
  EXPECT_EQ("estimate first", gs_estimate_update(0, 400), 400);
  EXPECT_EQ("estimate average", gs_estimate_update(400, 800), 500);
  EXPECT_EQ("estimate never 0", gs_estimate_update(0, 0), 1);
}

struct env {
  const char *const *pairs;
};

static const char *read_env(const char *name, void *context) {
  const char *const *p = ((struct env *)context)->pairs;
  for (; p[0] != NULL; p += 2)
    if (strcmp(p[0], name) == 0) return p[1];
  return NULL;
}

static int reports;
static char last_report[512];
static void count_report(const char *line, void *context) {
  (void)context;
  reports++;
  snprintf(last_report, sizeof last_report, "%s", line);
}

static void test_config(void) {
  struct gs_config c;
  {
    const char *pairs[] = {"GPUSHARE_MEMORY_LIMIT", "2Gi", "GPUSHARE_MEMORY_LIMIT_1", "1Gi",
                           "GPUSHARE_CORE_LIMIT", "30", "GPUSHARE_CORE_SOFT_LIMIT", "60",
                           "GPUSHARE_STATE_DIR", "/run/x", NULL};
    struct env e = {pairs};
    reports = 0;
    EXPECT_EQ("valid: errors", gs_config_parse(&c, read_env, &e, count_report), 0);
    EXPECT_EQ("valid: memory 0", c.memory_limit_bytes[0], 2ULL << 30);
    EXPECT_EQ("valid: memory 1", c.memory_limit_bytes[1], 1ULL << 30);
    EXPECT_EQ("valid: memory 2", c.memory_limit_bytes[2], 2ULL << 30);
    EXPECT_EQ("valid: core", c.core_limit_percent[3], 30);
    EXPECT_EQ("valid: soft", c.core_soft_limit_percent[3], 60);
    EXPECT_EQ("valid: any core", c.any_core_limit, 1);
    EXPECT_EQ("valid: dir", strcmp(c.state_dir, "/run/x"), 0);
  }
  {
    const char *pairs[] = {NULL};
    struct env e = {pairs};
    EXPECT_EQ("empty: errors", gs_config_parse(&c, read_env, &e, count_report), 0);
    EXPECT_EQ("empty: no memory limit", c.memory_limit_bytes[0] == GS_NO_MEMORY_LIMIT, 1);
    EXPECT_EQ("empty: core 100", c.core_limit_percent[0], 100);
    EXPECT_EQ("empty: no core limit", c.any_core_limit, 0);
  }
  static const struct { const char *name, *value; int memory_zero, core; } garbage[] = {
      {"GPUSHARE_MEMORY_LIMIT", "12XB", 1, 100}, {"GPUSHARE_MEMORY_LIMIT", "0", 1, 100},
      {"GPUSHARE_MEMORY_LIMIT", "", 1, 100},     {"GPUSHARE_MEMORY_LIMIT", "-5Gi", 1, 100},
      {"GPUSHARE_CORE_LIMIT", "abc", 0, 1},      {"GPUSHARE_CORE_LIMIT", "0", 0, 1},
      {"GPUSHARE_CORE_LIMIT", "101", 0, 1},      {"GPUSHARE_CORE_LIMIT", "5O", 0, 1},  
  };
  for (size_t i = 0; i < sizeof garbage / sizeof garbage[0]; i++) {
    const char *pairs[] = {garbage[i].name, garbage[i].value, NULL};
    struct env e = {pairs};
    char name[96];
    reports = 0;
    snprintf(name, sizeof name, "garbage %s=%s: errors", garbage[i].name, garbage[i].value);
    EXPECT_EQ(name, gs_config_parse(&c, read_env, &e, count_report), 1);
    EXPECT_EQ(name, reports, 1);
    EXPECT_EQ(name, strstr(last_report, garbage[i].name) != NULL, 1);
    if (garbage[i].memory_zero) EXPECT_EQ(name, c.memory_limit_bytes[5], 0);
    EXPECT_EQ(name, c.core_limit_percent[5], garbage[i].core);
  }
  {
    const char *pairs[] = {"GPUSHARE_CORE_LIMIT", "50", "GPUSHARE_CORE_SOFT_LIMIT", "40", NULL};
    struct env e = {pairs};
    reports = 0;
    EXPECT_EQ("soft below core: errors", gs_config_parse(&c, read_env, &e, count_report), 1);
    EXPECT_EQ("soft below core: no burst", c.core_soft_limit_percent[0], 50);
  }
}

int main(void) {
  test_parse_bytes();
  test_parse_percent();
  test_memory_policy();
  test_bucket();
  test_config();
  printf("%d cases, %d failures\n", cases, failures);
  return failures ? 1 : 0;
}
