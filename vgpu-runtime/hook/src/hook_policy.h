/* The limit policy: pure arithmetic of memory admission, memory reporting and the compute
 * token bucket. No I/O, no driver calls; unit-tested by tests/test_policy.c. */
#ifndef GPUSHARE_HOOK_POLICY_H
#define GPUSHARE_HOOK_POLICY_H

#include <stdint.h>

/* Whether `request` more bytes fit beside `used` under `limit` (overflow-safe). */
int gs_memory_admit(uint64_t used_bytes, uint64_t request_bytes, uint64_t limit_bytes);

/* What cuMemGetInfo reports: total = min(limit, physical total); free = total - used clamped to
 * [0, physical free]. Never underflows. */
void gs_memory_report(uint64_t limit_bytes, uint64_t physical_total, uint64_t physical_free,
                      uint64_t used_bytes, uint64_t *free_bytes, uint64_t *total_bytes);

/* Bytes of an array of width x height x depth elements (0 height/depth count as 1), each
 * channels x element_bytes; 0 when it overflows. levels > 1: a mipmapped array's whole chain. */
uint64_t gs_array_bytes(uint64_t width, uint64_t height, uint64_t depth, unsigned channels,
                        unsigned element_bytes, unsigned levels);

/* Compute token bucket, in nanoseconds of GPU time. */
#define GS_BUCKET_RESUME_NS 1000000LL  /* the bank's floor capacity */
#define GS_BUCKET_WINDOW_NS 100000000LL /* the bank holds at most this much wall time's worth ... */
#define GS_BUCKET_BANK_NS 50000000LL    /* ... and never more than this much GPU time */

/* Most GPU time a container may bank while idle at `percent`. */
int64_t gs_bucket_capacity_ns(int percent);
/* Tokens after `elapsed_ns` of wall time at `percent`, capped at the capacity. */
int64_t gs_bucket_refill(int64_t tokens_ns, int64_t elapsed_ns, int percent);
/* The same while the last unmetered_ns of GPU use are not metered yet: the capacity grows by
 * what that time refills, so that use the meter has not reported is not mistaken for idling. */
int64_t gs_bucket_refill_lagged(int64_t tokens_ns, int64_t elapsed_ns, int percent, int64_t unmetered_ns);
/* Wall time to sleep before re-checking a launch that is short of `deficit_ns` of GPU time at
 * `percent`: the time the refill takes, never less than min_sleep_ns nor more than
 * max_sleep_ns; 0 when nothing is short. */
int64_t gs_bucket_wait_ns(int64_t deficit_ns, int percent, int64_t min_sleep_ns, int64_t max_sleep_ns);
/* The rate in force: the soft limit while others use less than idle_percent of the GPU. */
int gs_effective_percent(int hard_percent, int soft_percent, int foreign_percent, int idle_percent);
/* Next estimate of a kernel's duration from a measurement (exponential moving average);
 * at least 1, since 0 means never measured. */
int64_t gs_estimate_update(int64_t estimate_ns, int64_t measured_ns);

#endif
