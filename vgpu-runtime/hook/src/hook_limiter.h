/* The compute limiter: admits launches against the container's shared token bucket and
 * measures what each launch really cost with events on its stream. See docs/hook.md. */
#ifndef GPUSHARE_HOOK_LIMITER_H
#define GPUSHARE_HOOK_LIMITER_H

#include "hook.h"

void gs_limiter_init(const struct gs_config *config);

/* Runs call(args), a launch of `work` (a function or graph) onto stream, under the limit of the
 * current context's device. per_thread: the launch came through a _ptsz entry point. */
CUresult gs_limited_launch(CUstream stream, int per_thread, const void *work, CUresult (*call)(void *),
                           void *args);

/* The hook's trackers of a stream or context the program destroyed are freed. */
void gs_limiter_stream_destroyed(CUstream stream);
void gs_limiter_context_destroyed(CUcontext ctx);
/* Stream capture began / ended in this process (launches into a capture are not charged). */
void gs_limiter_capture_begun(void);
void gs_limiter_capture_ended(void);

/* Reads NVML for the container's SM time on device now (unless read within the last 2 ms or
 * another process is reading it): the usage file's writer calls it, limited or not. */
void gs_limiter_meter(int device);
/* For the GPU time scheduler's client: the container's SM time on the devices of device_mask
 * that no process of the container has reported yet (metered now), at most max_ns of it,
 * marked reported (the rest is left for the next report). */
int64_t gs_limiter_unreported_ns(unsigned device_mask, int64_t max_ns);
/* The scheduler was lost: debt run up under its tokens is forgiven, the local limit resumes. */
void gs_limiter_scheduler_lost(void);

void gs_limiter_atfork_prepare(void);
void gs_limiter_atfork_parent(void);
void gs_limiter_atfork_child(void);

#endif
