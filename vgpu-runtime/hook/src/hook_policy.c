/* The limit policy (pure arithmetic); see hook_policy.h and docs/hook.md ("The limiter"). */
#include "hook_policy.h"

int gs_memory_admit(uint64_t used_bytes, uint64_t request_bytes, uint64_t limit_bytes) {
  if (request_bytes > limit_bytes) return 0;
  return used_bytes <= limit_bytes - request_bytes;
}

void gs_memory_report(uint64_t limit_bytes, uint64_t physical_total, uint64_t physical_free,
                      uint64_t used_bytes, uint64_t *free_bytes, uint64_t *total_bytes) {
  uint64_t total = limit_bytes < physical_total ? limit_bytes : physical_total;
  uint64_t free = used_bytes >= total ? 0 : total - used_bytes;
  if (free > physical_free) free = physical_free;
  *total_bytes = total;
  *free_bytes = free;
}

static int mul_ok(uint64_t a, uint64_t b, uint64_t *out) {
  if (a != 0 && b > UINT64_MAX / a) return 0;
  *out = a * b;
  return 1;
}

uint64_t gs_array_bytes(uint64_t width, uint64_t height, uint64_t depth, unsigned channels,
                        unsigned element_bytes, unsigned levels) {
  uint64_t total = 0;
  if (levels == 0) levels = 1;
  for (unsigned level = 0; level < levels && level < 64; level++) {
    uint64_t w = width >> level, h = (height ? height : 1) >> level, d = (depth ? depth : 1) >> level;
    uint64_t bytes = 1;
    if (!mul_ok(bytes, w ? w : 1, &bytes) || !mul_ok(bytes, h ? h : 1, &bytes) ||
        !mul_ok(bytes, d ? d : 1, &bytes) || !mul_ok(bytes, channels, &bytes) ||
        !mul_ok(bytes, element_bytes, &bytes) || total > UINT64_MAX - bytes)
      return 0;
    total += bytes;
  }
  return total;
}

int64_t gs_bucket_capacity_ns(int percent) {
  /* Large enough to make up for a launching thread that wakes late; small enough that the
   * make-up burst (which drains at 100 % - percent) stays short at high percentages. */
  int64_t bank = GS_BUCKET_WINDOW_NS * percent / 100;
  return GS_BUCKET_RESUME_NS + (bank < GS_BUCKET_BANK_NS ? bank : GS_BUCKET_BANK_NS);
}

int64_t gs_bucket_refill(int64_t tokens_ns, int64_t elapsed_ns, int percent) {
  return gs_bucket_refill_lagged(tokens_ns, elapsed_ns, percent, 0);
}

int64_t gs_bucket_refill_lagged(int64_t tokens_ns, int64_t elapsed_ns, int percent, int64_t unmetered_ns) {
  if (unmetered_ns < 0) unmetered_ns = 0;
  if (unmetered_ns > 1000000000LL) unmetered_ns = 1000000000LL;
  int64_t capacity = gs_bucket_capacity_ns(percent) + unmetered_ns / 100 * percent;
  if (elapsed_ns <= 0) return tokens_ns;
  if (elapsed_ns > 1000000000000LL) elapsed_ns = 1000000000000LL; /* no overflow after long idling */
  int64_t tokens = tokens_ns + elapsed_ns * percent / 100;
  return tokens > capacity ? capacity : tokens;
}

int64_t gs_bucket_wait_ns(int64_t deficit_ns, int percent, int64_t min_sleep_ns, int64_t max_sleep_ns) {
  if (deficit_ns <= 0) return 0;
  if (percent <= 0) return max_sleep_ns;
  int64_t wait = deficit_ns / percent * 100 + (deficit_ns % percent) * 100 / percent;
  if (wait < min_sleep_ns) wait = min_sleep_ns;
  if (wait > max_sleep_ns) wait = max_sleep_ns;
  return wait;
}

int gs_effective_percent(int hard_percent, int soft_percent, int foreign_percent, int idle_percent) {
  if (soft_percent <= hard_percent) return hard_percent;
  return foreign_percent < idle_percent ? soft_percent : hard_percent;
}

int64_t gs_estimate_update(int64_t estimate_ns, int64_t measured_ns) {
  if (measured_ns < 0) measured_ns = 0;
  int64_t next = estimate_ns <= 0 ? measured_ns : (estimate_ns * 3 + measured_ns) / 4;
  return next > 0 ? next : 1; /* 0 is reserved for "never measured" */
}
