/* The compute limiter: charge GPU time, not stream wall time.
 *
 * What a container is charged is the SM time its processes really received, as the driver
 * reports it: NVML's per-process utilisation (nvmlDeviceGetProcessUtilization, smUtil) of the
 * container's processes, read every METER_NS by whichever launching thread of the container
 * gets there first (a lock-free claim in the shared state). Overlap of the container's streams,
 * other tenants' kernels and waits on the stream are therefore not charged; SM time is.
 *
 * Every process of the container shares one token bucket per device (in the shared state): it
 * fills at the container's rate (core limit, or soft limit while the rest of the GPU is idle)
 * up to a small capacity, is debited by the metered SM time, and is floored at DEBT_WALL_NS of
 * refill, so nobody waits more than about a second for anybody's debt.
 *
 * The meter sees work only once it runs, so queued work is gated too: each launching thread
 * keeps, per stream, the estimated cost of its launches not yet seen complete ("in flight"),
 * and a launch is admitted only while bucket - in flight >= 0. Completion is observed with a
 * marker event recorded after a batch of launches (about MARK_NS of estimated work, or
 * MARK_LAUNCHES launches) and queried, never waited on. The estimate per launch is the stream
 * time per launch between markers, averaged over every launch (no sampling, so no aliasing);
 * it only bounds how far a stream may run ahead, never what is charged.
 *
 * The launch path holds no lock: trackers belong to one thread. When a launch is not admitted
 * the thread sleeps in short steps (never spinning, never waiting on the GPU) and returns at
 * once when a signal interrupts the sleep, so the program can handle it. Launches into a stream
 * being captured into a graph are neither throttled nor charged; the graph's launches are.
 */
#define _GNU_SOURCE
#include "hook_limiter.h"

#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "hook_gputime.h"
#include "hook_log.h"
#include "hook_policy.h"
#include "hook_state.h"

#define MARKERS 32               /* marker events in flight per tracker */
#define POOL_EVENTS 8            /* spare events kept per tracker (the rest are destroyed) */
#define MARK_NS 500000           /* a marker after this much estimated work ... */
#define MARK_LAUNCHES 64         /* ... or this many launches */
#define FAST_LAUNCHES 32         /* launches admitted on the fast path between slow paths */
#define DEFAULT_ESTIMATE_NS 1000000
#define METER_NS 2000000         /* how often the container's SM time is read */
#define FOREIGN_WINDOW_NS 50000000
#define WAIT_MIN_NS 20000
#define WAIT_MAX_NS 2000000
#define DEBT_WALL_NS 1000000000LL /* debt is floored at this much wall time of refill */
#define IDLE_FOREIGN_PERCENT 10  /* others below this: the GPU counts as idle (burst allowed) */
#define MAX_SAMPLES 256
#define CLAIM_STALE_NS 100000000 /* a meter claim this old is abandoned */
#define HANDOVER_NS 5000000      /* work queued past the end of the scheduler's token */

struct marker {
  CUevent start; /* NULL: measured from the previous marker's end */
  CUevent end;
  unsigned launches;
  int64_t estimate_ns;
};

struct tracker {
  CUcontext ctx;
  CUstream stream;
  int per_thread;
  int device;
  pthread_t thread;
  int64_t inflight_ns;  /* estimates of this thread's launches on the stream not seen complete */
  int64_t average_ns;   /* stream time per launch (estimate) */
  int measured;         /* average_ns has been measured */
  unsigned since_slow;
  int64_t allowance_ns; /* under the scheduler's token: work this thread may still queue */
  unsigned batch_launches;
  int64_t batch_ns;
  CUevent batch_start;
  CUevent last_end;     /* end of the newest harvested marker (the next one is measured from it) */
  struct marker ring[MARKERS];
  unsigned head, count;
  CUevent pool[POOL_EVENTS];
  unsigned pool_count;
  struct tracker *next;
};

struct device_limit {
  int hard_percent;
  int soft_percent;
};

static struct device_limit limits[GS_MAX_DEVICES];
static struct tracker *trackers; /* every thread's, under trackers_lock */
static pthread_mutex_t trackers_lock = PTHREAD_MUTEX_INITIALIZER;
static uint64_t trackers_generation; /* bumped whenever a tracker is freed */
static int captures_active;          /* streams of this process being captured */
static pthread_mutex_t samples_lock = PTHREAD_MUTEX_INITIALIZER; /* the meter's sample buffer */
static pthread_key_t thread_key;
static __thread struct tracker *cached_tracker;
static __thread uint64_t cached_generation;
static __thread CUcontext cached_ctx;
static __thread CUstream cached_stream;
static __thread int cached_per_thread;

static int64_t now_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static void free_tracker(struct tracker *t);

/* A thread that exits takes its trackers with it. */
static void thread_exit(void *unused) {
  (void)unused;
  pthread_t self = pthread_self();
  pthread_mutex_lock(&trackers_lock);
  for (struct tracker **link = &trackers; *link != NULL;) {
    struct tracker *t = *link;
    if (pthread_equal(t->thread, self)) {
      *link = t->next;
      free_tracker(t);
    } else {
      link = &t->next;
    }
  }
  __atomic_add_fetch(&trackers_generation, 1, __ATOMIC_RELEASE);
  pthread_mutex_unlock(&trackers_lock);
}

void gs_limiter_init(const struct gs_config *config) {
  for (int i = 0; i < GS_MAX_DEVICES; i++) {
    limits[i].hard_percent = config->core_limit_percent[i];
    limits[i].soft_percent = config->core_soft_limit_percent[i];
  }
  pthread_key_create(&thread_key, thread_exit);
}

/* ---- the meter: the container's SM time from NVML ---- */

static int compare_pids(const void *a, const void *b) {
  unsigned x = *(const unsigned *)a, y = *(const unsigned *)b;
  return (x > y) - (x < y);
}

static int compare_stamps(const void *a, const void *b) {
  uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
  return (x > y) - (x < y);
}

/* Nanoseconds between a sample's timestamp (µs) and the sampling before it (sorted stamps). */
static int64_t period_before(const uint64_t *stamps, unsigned n, uint64_t stamp) {
  uint64_t previous = stamps[0];
  for (unsigned i = 1; i < n && stamps[i] < stamp; i++) previous = stamps[i];
  return (int64_t)(stamp - previous) * 1000;
}

static int contains(const unsigned *sorted, int n, unsigned pid) {
  return bsearch(&pid, sorted, (size_t)n, sizeof pid, compare_pids) != NULL;
}

/* Learns what the provisional estimates are worth: metered SM time over the provisional
 * charge of the same interval, a moving average in thousandths, within [0.05, 2]. */
static void calibrate(struct gs_device_slot *slot, int64_t metered_ns) {
  int64_t provisional = __atomic_load_n(&slot->provisional_ns, __ATOMIC_RELAXED);
  int64_t calibration = __atomic_load_n(&slot->calibration_permille, __ATOMIC_RELAXED);
  if (calibration <= 0) calibration = 1000;
  if (provisional < 1000000) return; /* too little to learn from */
  int64_t raw = provisional * 1000 / calibration; /* the estimates before scaling */
  int64_t ratio = metered_ns * 1000 / (raw > 0 ? raw : 1);
  if (ratio < 50) ratio = 50;
  if (ratio > 2000) ratio = 2000;
  __atomic_store_n(&slot->calibration_permille, (calibration * 3 + ratio) / 4, __ATOMIC_RELAXED);
}

/* Debits the bucket with the SM time the container used since the previous reading. */
static void meter(int device, struct gs_device_slot *slot, int64_t now) {
  if (now - __atomic_load_n(&slot->metered_at_ns, __ATOMIC_RELAXED) < METER_NS) return;
  /* One reader at a time; a claim older than CLAIM_STALE_NS belonged to a process that died
   * or stalled while reading, and is taken over. */
  int64_t claimed = __atomic_load_n(&slot->meter_claimed_at_ns, __ATOMIC_ACQUIRE);
  if (claimed != 0 && now - claimed < CLAIM_STALE_NS) return;
  if (!__atomic_compare_exchange_n(&slot->meter_claimed_at_ns, &claimed, now, 0, __ATOMIC_ACQUIRE, __ATOMIC_RELAXED))
    return;
  if (now - __atomic_load_n(&slot->metered_at_ns, __ATOMIC_RELAXED) < METER_NS) {
    __atomic_store_n(&slot->meter_claimed_at_ns, 0, __ATOMIC_RELEASE);
    return;
  }
  __atomic_store_n(&slot->metered_at_ns, now, __ATOMIC_RELAXED);
  nvmlDevice_t handle = NULL;
  static nvmlProcessUtilizationSample_t samples[MAX_SAMPLES];
  unsigned pids[GS_MAX_PROCS];
  static int warned;
  if (gs_nvml_handle(device, &handle) != 0 && !__atomic_exchange_n(&warned, 1, __ATOMIC_RELAXED))
    gs_log(GS_LOG_WARN,
           "NVML reports no per-process utilisation for device %d: its GPU time cannot be metered "
           "(no core limit, no busy time in the usage file)",
           device);
  if (handle != NULL && pthread_mutex_trylock(&samples_lock) == 0) {
    uint64_t last_seen = __atomic_load_n(&slot->meter_last_seen_us, __ATOMIC_RELAXED);
    unsigned count = MAX_SAMPLES;
    nvmlReturn_t rc = gs_nvml.nvmlDeviceGetProcessUtilization(handle, samples, &count, last_seen);
    if (rc == NVML_SUCCESS && count > 0) {
      int n = gs_state_pids(pids, GS_MAX_PROCS);
      qsort(pids, (size_t)n, sizeof pids[0], compare_pids);
      uint64_t newest = last_seen;
      for (unsigned i = 0; i < count; i++)
        if (samples[i].timeStamp > newest) newest = samples[i].timeStamp;
      if (last_seen != 0 && newest > last_seen) {
        /* A driver returns one sample per process per sampling period since last_seen: each
         * covers the time since the period before it (the first, since last_seen). */
        static uint64_t stamps[MAX_SAMPLES + 1];
        unsigned periods = 0;
        stamps[periods++] = last_seen;
        for (unsigned i = 0; i < count; i++)
          if (samples[i].timeStamp > last_seen) stamps[periods++] = samples[i].timeStamp;
        qsort(stamps, periods, sizeof stamps[0], compare_stamps);
        int64_t window_ns = (int64_t)(newest - last_seen) * 1000;
        int64_t own = 0, foreign = 0;
        for (unsigned i = 0; i < count; i++) {
          if (samples[i].pid == 0 || samples[i].timeStamp <= last_seen) continue;
          int64_t used = period_before(stamps, periods, samples[i].timeStamp) * (int64_t)samples[i].smUtil / 100;
          if (contains(pids, n, samples[i].pid)) own += used;
          else foreign += used;
        }
        if (own > 0) __atomic_sub_fetch(&slot->tokens_ns, own, __ATOMIC_ACQ_REL);
        calibrate(slot, own);
        __atomic_add_fetch(&slot->used_sm_ns, own, __ATOMIC_RELAXED);
        int64_t fw = __atomic_add_fetch(&slot->foreign_window_ns, window_ns, __ATOMIC_RELAXED);
        int64_t fu = __atomic_add_fetch(&slot->foreign_used_ns, foreign, __ATOMIC_RELAXED);
        if (fw >= FOREIGN_WINDOW_NS) {
          __atomic_store_n(&slot->foreign_percent, (int32_t)(fu * 100 / fw), __ATOMIC_RELAXED);
          __atomic_store_n(&slot->foreign_window_ns, 0, __ATOMIC_RELAXED);
          __atomic_store_n(&slot->foreign_used_ns, 0, __ATOMIC_RELAXED);
        }
      }
      if (newest > last_seen) { /* a new sample: it covers what was estimated so far */
        __atomic_store_n(&slot->sampled_at_ns, now, __ATOMIC_RELAXED);
        __atomic_store_n(&slot->provisional_ns, 0, __ATOMIC_RELAXED);
      }
      __atomic_store_n(&slot->meter_last_seen_us, newest, __ATOMIC_RELAXED);
    }
    pthread_mutex_unlock(&samples_lock);
  }
  __atomic_store_n(&slot->meter_claimed_at_ns, 0, __ATOMIC_RELEASE);
}

void gs_limiter_meter(int device) {
  struct gs_device_slot *slot = gs_state_device(device);
  if (slot != NULL) meter(device, slot, now_ns());
}

static int current_percent(int device, struct gs_device_slot *slot) {
  struct device_limit *d = &limits[device];
  if (d->soft_percent <= d->hard_percent) return d->hard_percent;
  int foreign = __atomic_load_n(&slot->foreign_percent, __ATOMIC_RELAXED);
  if (__atomic_load_n(&slot->meter_last_seen_us, __ATOMIC_RELAXED) == 0) foreign = 100; /* not measured yet */
  return gs_effective_percent(d->hard_percent, d->soft_percent, foreign, IDLE_FOREIGN_PERCENT);
}

/* ---- the shared bucket (lock-free) ---- */

static void refill(struct gs_device_slot *slot, int64_t now, int percent) {
  int64_t last = __atomic_load_n(&slot->refilled_at_ns, __ATOMIC_ACQUIRE);
  if (last == 0) { /* first use: the bucket starts empty */
    __atomic_compare_exchange_n(&slot->refilled_at_ns, &last, now, 0, __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE);
    return;
  }
  if (now <= last ||
      !__atomic_compare_exchange_n(&slot->refilled_at_ns, &last, now, 0, __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE))
    return;
  int64_t floor = -DEBT_WALL_NS / 100 * percent;
  int64_t sampled = __atomic_load_n(&slot->sampled_at_ns, __ATOMIC_RELAXED);
  int64_t unmetered = sampled != 0 ? now - sampled : 0;
  int64_t old = __atomic_load_n(&slot->tokens_ns, __ATOMIC_ACQUIRE), next;
  do {
    next = gs_bucket_refill_lagged(old < floor ? floor : old, now - last, percent, unmetered);
  } while (!__atomic_compare_exchange_n(&slot->tokens_ns, &old, next, 0, __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE));
}

/* ---- per-stream markers ---- */

static CUevent take_event(struct tracker *t) {
  if (t->pool_count > 0) return t->pool[--t->pool_count];
  CUevent event = NULL;
  if (gs_cuda.cuEventCreate(&event, CU_EVENT_DEFAULT) != CUDA_SUCCESS) return NULL;
  return event;
}

static void give_event(struct tracker *t, CUevent event) {
  if (event == NULL) return;
  if (t->pool_count < POOL_EVENTS) t->pool[t->pool_count++] = event;
  else gs_cuda.cuEventDestroy_v2(event);
}

static CUevent recorded_event(struct tracker *t) {
  CUevent event = take_event(t);
  if (event == NULL) return NULL;
  CUresult rc = t->per_thread && gs_cuda.cuEventRecord_ptsz != NULL ? gs_cuda.cuEventRecord_ptsz(event, t->stream)
                                                                    : gs_cuda.cuEventRecord(event, t->stream);
  if (rc != CUDA_SUCCESS) {
    give_event(t, event);
    return NULL;
  }
  return event;
}

static CUresult elapsed_ms(float *ms, CUevent start, CUevent end) {
  if (gs_cuda.cuEventElapsedTime_v2 != NULL) return gs_cuda.cuEventElapsedTime_v2(ms, start, end);
  return gs_cuda.cuEventElapsedTime(ms, start, end);
}

/* The hook's own event calls must not invalidate a capture in global mode in another thread. */
static CUstreamCaptureMode relax_capture_mode(void) {
  CUstreamCaptureMode mode = CU_STREAM_CAPTURE_MODE_RELAXED;
  if (__atomic_load_n(&captures_active, __ATOMIC_RELAXED) > 0 && gs_cuda.cuThreadExchangeStreamCaptureMode != NULL)
    gs_cuda.cuThreadExchangeStreamCaptureMode(&mode);
  return mode;
}

static void restore_capture_mode(CUstreamCaptureMode mode) {
  if (mode != CU_STREAM_CAPTURE_MODE_RELAXED && gs_cuda.cuThreadExchangeStreamCaptureMode != NULL)
    gs_cuda.cuThreadExchangeStreamCaptureMode(&mode);
}

/* Closes the open batch with a marker event after its last launch. */
static void close_batch(struct tracker *t) {
  if (t->batch_launches == 0) return;
  CUevent end = t->count < MARKERS ? recorded_event(t) : NULL;
  if (end == NULL) {
    if (t->count < MARKERS) { /* no event: forget the batch rather than gate on it forever */
      t->inflight_ns -= t->batch_ns;
      give_event(t, t->batch_start);
      t->batch_start = NULL;
      t->batch_launches = 0;
      t->batch_ns = 0;
    }
    return;
  }
  t->ring[(t->head + t->count) % MARKERS] = (struct marker){t->batch_start, end, t->batch_launches, t->batch_ns};
  t->count++;
  t->batch_start = NULL;
  t->batch_launches = 0;
  t->batch_ns = 0;
}

/* Retires completed markers (oldest first): their launches leave "in flight" and the stream
 * time they took updates the estimate. */
static void harvest(struct tracker *t, struct gs_device_slot *slot) {
  int64_t completed = 0;
  while (t->count > 0) {
    struct marker *m = &t->ring[t->head];
    CUresult q = gs_cuda.cuEventQuery(m->end);
    if (q == CUDA_ERROR_NOT_READY) break;
    CUevent from = m->start != NULL ? m->start : t->last_end;
    float ms = 0;
    if (q == CUDA_SUCCESS && from != NULL && elapsed_ms(&ms, from, m->end) == CUDA_SUCCESS && m->launches > 0) {
      int64_t per_launch = (int64_t)((double)ms * 1e6) / m->launches;
      t->average_ns = t->measured ? gs_estimate_update(t->average_ns, per_launch) : (per_launch > 0 ? per_launch : 1);
      t->measured = 1;
    }
    t->inflight_ns -= m->estimate_ns;
    completed += m->estimate_ns;
    give_event(t, m->start);
    give_event(t, t->last_end);
    t->last_end = m->end;
    t->head = (t->head + 1) % MARKERS;
    t->count--;
  }
  if (t->count == 0 && t->batch_launches == 0) t->inflight_ns = 0;
  /* Until NVML reports it, completed work counts at its estimate, scaled by what NVML's readings
   * have shown the estimates to be worth (stream time overstates SM time when streams share). */
  if (completed > 0 && slot != NULL) {
    int64_t calibration = __atomic_load_n(&slot->calibration_permille, __ATOMIC_RELAXED);
    if (calibration <= 0) calibration = 1000;
    __atomic_add_fetch(&slot->provisional_ns, completed / 1000 * calibration, __ATOMIC_RELAXED);
  }
}

static void free_tracker(struct tracker *t) {
  if (gs_cuda.cuEventDestroy_v2 != NULL) {
    for (unsigned i = 0; i < t->count; i++) {
      struct marker *m = &t->ring[(t->head + i) % MARKERS];
      if (m->start) gs_cuda.cuEventDestroy_v2(m->start);
      gs_cuda.cuEventDestroy_v2(m->end);
    }
    for (unsigned i = 0; i < t->pool_count; i++) gs_cuda.cuEventDestroy_v2(t->pool[i]);
    if (t->batch_start) gs_cuda.cuEventDestroy_v2(t->batch_start);
    if (t->last_end) gs_cuda.cuEventDestroy_v2(t->last_end);
  }
  free(t);
}

static struct tracker *tracker_for(CUcontext ctx, CUstream stream, int per_thread) {
  uint64_t generation = __atomic_load_n(&trackers_generation, __ATOMIC_ACQUIRE);
  if (cached_tracker != NULL && cached_generation == generation && cached_ctx == ctx && cached_stream == stream &&
      cached_per_thread == per_thread)
    return cached_tracker;
  pthread_t self = pthread_self();
  pthread_mutex_lock(&trackers_lock);
  generation = __atomic_load_n(&trackers_generation, __ATOMIC_ACQUIRE);
  struct tracker *t = trackers;
  for (; t != NULL; t = t->next)
    if (t->ctx == ctx && t->stream == stream && t->per_thread == per_thread && pthread_equal(t->thread, self)) break;
  if (t == NULL) {
    int device;
    t = calloc(1, sizeof *t);
    if (t != NULL && gs_device_of_current_context(&device) == 0) {
      t->ctx = ctx;
      t->stream = stream;
      t->thread = self;
      t->per_thread = per_thread;
      t->device = device;
      t->average_ns = DEFAULT_ESTIMATE_NS;
      t->next = trackers;
      trackers = t;
      pthread_setspecific(thread_key, t); /* any non-NULL value: runs thread_exit at exit */
    } else {
      free(t);
      t = NULL;
    }
  }
  pthread_mutex_unlock(&trackers_lock);
  if (t != NULL) {
    cached_tracker = t;
    cached_generation = generation;
    cached_ctx = ctx;
    cached_stream = stream;
    cached_per_thread = per_thread;
  }
  return t;
}

void gs_limiter_stream_destroyed(CUstream stream) {
  if (stream == NULL) return;
  pthread_mutex_lock(&trackers_lock);
  for (struct tracker **link = &trackers; *link != NULL;) {
    struct tracker *t = *link;
    if (t->stream == stream) {
      *link = t->next;
      free_tracker(t);
    } else {
      link = &t->next;
    }
  }
  __atomic_add_fetch(&trackers_generation, 1, __ATOMIC_RELEASE);
  pthread_mutex_unlock(&trackers_lock);
}

void gs_limiter_context_destroyed(CUcontext ctx) {
  pthread_mutex_lock(&trackers_lock);
  for (struct tracker **link = &trackers; *link != NULL;) {
    struct tracker *t = *link;
    if (t->ctx == ctx) {
      *link = t->next;
      free(t); /* the context's events died with it */
    } else {
      link = &t->next;
    }
  }
  __atomic_add_fetch(&trackers_generation, 1, __ATOMIC_RELEASE);
  pthread_mutex_unlock(&trackers_lock);
}

void gs_limiter_capture_begun(void) { __atomic_add_fetch(&captures_active, 1, __ATOMIC_RELAXED); }

void gs_limiter_capture_ended(void) {
  int n = __atomic_load_n(&captures_active, __ATOMIC_RELAXED);
  while (n > 0 && !__atomic_compare_exchange_n(&captures_active, &n, n - 1, 0, __ATOMIC_RELAXED, __ATOMIC_RELAXED)) {
  }
}

static int capturing(CUstream stream, int per_thread) {
  CUstreamCaptureStatus status = CU_STREAM_CAPTURE_STATUS_NONE;
  __typeof__(gs_cuda.cuStreamIsCapturing) is_capturing =
      per_thread && gs_cuda.cuStreamIsCapturing_ptsz ? gs_cuda.cuStreamIsCapturing_ptsz : gs_cuda.cuStreamIsCapturing;
  if (is_capturing == NULL) return 0;
  if (is_capturing(stream, &status) != CUDA_SUCCESS) return 1; /* cannot tell: do not touch the stream */
  return status != CU_STREAM_CAPTURE_STATUS_NONE;
}

/* Waits (sleeping, no lock held) until the bucket covers this thread's work in flight. */
static void admit(struct tracker *t, struct gs_device_slot *slot) {
  t->since_slow = 0;
  CUstreamCaptureMode mode = relax_capture_mode();
  for (;;) {
    int64_t now = now_ns();
    harvest(t, slot);
    int percent = current_percent(t->device, slot);
    refill(slot, now, percent);
    meter(t->device, slot, now);
    int64_t tokens = __atomic_load_n(&slot->tokens_ns, __ATOMIC_ACQUIRE) -
                     __atomic_load_n(&slot->provisional_ns, __ATOMIC_RELAXED);
    if (tokens - t->inflight_ns >= 0) break;
    close_batch(t); /* so that what is queued can be seen complete */
    int64_t wait = gs_bucket_wait_ns(t->inflight_ns - tokens, percent, WAIT_MIN_NS, WAIT_MAX_NS);
    struct timespec ts = {0, (long)wait};
    if (nanosleep(&ts, NULL) != 0 && errno == EINTR) break; /* a signal: let the program see it */
  }
  restore_capture_mode(mode);
}

/* Under the GPU time scheduler: waits (on the client's futex, no lock held) until this process
 * holds the token and this thread's work in flight fits in what is left of it. Returns 0 when
 * admitted, -1 when the scheduler was lost meanwhile (the bucket decides then). */
static int admit_scheduled(struct tracker *t, struct gs_device_slot *slot) {
  t->since_slow = 0;
  CUstreamCaptureMode mode = relax_capture_mode();
  int admitted = -1;
  for (;;) {
    uint32_t seen = gs_gputime_generation();
    int64_t now = now_ns();
    harvest(t, slot);
    meter(t->device, slot, now);
    if (!gs_gputime_gating()) break;
    int64_t remaining = gs_gputime_remaining_ns(now);
    /* Never more queued than the token has left (so its work runs under it), give or take the
     * hand-over to the next holder (so the device does not idle through it; what runs after
     * the token is charged with the next one); an idle stream may always start one launch. */
    if (remaining > 0 && (t->inflight_ns + t->average_ns <= remaining + HANDOVER_NS || t->inflight_ns == 0)) {
      t->allowance_ns = remaining + HANDOVER_NS - t->inflight_ns;
      admitted = 0;
      break;
    }
    int64_t wait = WAIT_MAX_NS;
    if (remaining > 0) { /* the token holds, this thread's queue is too long for it: let it drain */
      close_batch(t);
      gs_gputime_launched(t->device); /* busy, not idle: the token must not go back early */
      wait = t->inflight_ns - remaining - HANDOVER_NS < WAIT_MAX_NS ? t->inflight_ns - remaining - HANDOVER_NS
                                                                    : WAIT_MAX_NS;
      if (wait < WAIT_MIN_NS) wait = WAIT_MIN_NS;
    } else {
      gs_gputime_want(t->device);
    }
    if (gs_gputime_wait(seen, wait) != 0) { /* a signal: let the program see it */
      admitted = 0;
      break;
    }
  }
  restore_capture_mode(mode);
  return admitted;
}

int64_t gs_limiter_unreported_ns(unsigned device_mask, int64_t max_ns) {
  int64_t now = now_ns(), total = 0;
  for (int device = 0; device < GS_MAX_DEVICES; device++) {
    if (!(device_mask & (1u << device))) continue;
    struct gs_device_slot *slot = gs_state_device(device);
    if (slot == NULL) continue;
    meter(device, slot, now);
    int64_t used = __atomic_load_n(&slot->used_sm_ns, __ATOMIC_ACQUIRE);
    int64_t reported = __atomic_load_n(&slot->scheduler_reported_ns, __ATOMIC_ACQUIRE), claim = 0;
    do {
      claim = used - reported;
      if (claim > max_ns - total) claim = max_ns - total;
    } while (claim > 0 && !__atomic_compare_exchange_n(&slot->scheduler_reported_ns, &reported, reported + claim, 0,
                                                       __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE));
    if (claim > 0) total += claim;
  }
  return total;
}

void gs_limiter_scheduler_lost(void) {
  for (int device = 0; device < GS_MAX_DEVICES; device++) {
    struct gs_device_slot *slot = gs_state_device(device);
    if (slot == NULL) continue;
    int64_t tokens = __atomic_load_n(&slot->tokens_ns, __ATOMIC_ACQUIRE);
    while (tokens < 0 && !__atomic_compare_exchange_n(&slot->tokens_ns, &tokens, 0, 0, __ATOMIC_ACQ_REL,
                                                      __ATOMIC_ACQUIRE)) {
    }
  }
}

CUresult gs_limited_launch(CUstream stream, int per_thread, const void *work, CUresult (*call)(void *),
                           void *args) {
  (void)work;
  if (__atomic_load_n(&captures_active, __ATOMIC_RELAXED) > 0 && capturing(stream, per_thread))
    return call(args); /* recorded into a graph, not run: the graph's launches are charged */
  CUcontext ctx = NULL;
  if (gs_cuda.cuCtxGetCurrent(&ctx) != CUDA_SUCCESS || ctx == NULL) return call(args);
  struct tracker *t = tracker_for(ctx, stream, per_thread);
  if (t == NULL || limits[t->device].hard_percent >= 100) return call(args);
  struct gs_device_slot *slot = gs_state_device(t->device);
  if (slot == NULL) return call(args);

  if (gs_gputime_gating()) {
    if ((t->since_slow >= FAST_LAUNCHES || !gs_gputime_open() || t->allowance_ns < t->average_ns) &&
        admit_scheduled(t, slot) != 0)
      admit(t, slot);
    t->allowance_ns -= t->average_ns;
    gs_gputime_launched(t->device);
  } else {
    int64_t tokens = __atomic_load_n(&slot->tokens_ns, __ATOMIC_RELAXED);
    if (t->since_slow >= FAST_LAUNCHES || tokens - t->inflight_ns < 0) admit(t, slot);
  }
  t->since_slow++;
  if (t->batch_launches == 0 && t->count == 0) {
    /* The stream may be idle: measure this batch from its own start, not from an old marker. */
    CUstreamCaptureMode mode = relax_capture_mode();
    give_event(t, t->last_end);
    t->last_end = NULL;
    t->batch_start = recorded_event(t);
    restore_capture_mode(mode);
  }
  CUresult rc = call(args);
  if (rc != CUDA_SUCCESS) return rc;
  int64_t estimate = t->average_ns;
  t->inflight_ns += estimate;
  t->batch_launches++;
  t->batch_ns += estimate;
  if (t->batch_ns >= MARK_NS || t->batch_launches >= MARK_LAUNCHES || !t->measured) {
    CUstreamCaptureMode mode = relax_capture_mode();
    close_batch(t);
    restore_capture_mode(mode);
  }
  return rc;
}

void gs_limiter_atfork_prepare(void) { pthread_mutex_lock(&trackers_lock); }
void gs_limiter_atfork_parent(void) { pthread_mutex_unlock(&trackers_lock); }
void gs_limiter_atfork_child(void) {
  /* The parent's streams and events mean nothing in the child (CUDA does not survive fork). */
  pthread_mutex_init(&trackers_lock, NULL);
  trackers = NULL;
  cached_tracker = NULL;
  captures_active = 0;
  pthread_mutex_init(&samples_lock, NULL);
}
