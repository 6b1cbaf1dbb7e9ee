/* The compute limiter.
 *
 * Every process of the container shares one token bucket per device (in the shared state):
 * it fills with GPU time at the container's share of wall time (core or, while the rest of the
 * GPU is idle, soft limit) and holds at most 1 ms + min(100 ms x rate, 20 ms) of it. A launch is
 * admitted while the bucket is not negative and is charged an estimate of its cost up front (so a program
 * that queues thousands of tiny kernels without synchronising cannot run ahead); events recorded
 * around it on its stream later give the real cost, and the difference is settled. When the
 * bucket is negative, the launching thread sleeps until it holds GS_BUCKET_RESUME_NS again:
 * never a busy wait.
 *
 * Measurement is sampled: a work item (function or graph) whose cost is unknown is measured on
 * its first launch, and then one launch in SAMPLE_EVERY; the rest are charged the estimate.
 * A measured launch is bracketed by two events on its stream; the first completes when the
 * stream reaches the launch, so their elapsed time is the launch's own run time even when the
 * stream was busy or idle before it.
 */
#define _GNU_SOURCE
#include "hook_limiter.h"

#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "hook_log.h"
#include "hook_policy.h"
#include "hook_state.h"

#define RING_SLOTS 1024          /* launches in flight per stream (a real launch queue's depth) */
#define POOL_SLOTS (RING_SLOTS * 2 + 2)
#define MEASURE_SLOTS RING_SLOTS /* measured launches in flight per stream */
#define ESTIMATE_SLOTS 1024
#define SAMPLE_EVERY 8           /* measure one launch in this many of a known work item */
#define REFILL_EVERY_NS 20000    /* refill the shared bucket at most this often per thread */
#define HARVEST_EVERY 32         /* harvest after this many launches ... */
#define HARVEST_PERIOD_NS 500000 /* ... or this long, whichever first */
#define MIN_SLEEP_NS 100000
#define MAX_SLEEP_NS 50000000
#define IDLE_SAMPLE_NS 100000000
#define IDLE_FOREIGN_PERCENT 10  /* others below this: the GPU counts as idle (burst allowed) */

struct pending {
  CUevent start;
  CUevent end;
  int64_t charged_ns;
  const void *work;
};

struct estimate {
  const void *work;
  int64_t ns; /* 0: never measured */
  uint32_t launches;
};

struct tracker {
  CUcontext ctx;
  CUstream stream;
  pthread_t thread; /* for per-thread default streams */
  int per_thread_default;
  int per_thread_entry;
  int device;
  pthread_mutex_t lock;
  struct pending ring[RING_SLOTS];
  unsigned head, count, since_harvest;
  int64_t harvested_at_ns;
  CUevent pool[POOL_SLOTS];
  unsigned pool_count;
  struct estimate estimates[ESTIMATE_SLOTS];
  int64_t average_ns; /* over all launches on the stream: the estimate of work not seen yet */
  int64_t refilled_at_ns;
  struct tracker *next;
};

struct device_limit {
  int hard_percent;
  int soft_percent;
  pthread_mutex_t sample_lock;
  int64_t next_sample_ns;
  int64_t sampled_busy_ns;
  int64_t sampled_at_ns;
  int foreign_percent;
};

static struct device_limit limits[GS_MAX_DEVICES];
static struct tracker *trackers;
static pthread_mutex_t trackers_lock = PTHREAD_MUTEX_INITIALIZER;
static __thread struct tracker *cached_tracker;
static __thread CUcontext cached_ctx;
static __thread CUstream cached_stream;
static __thread int cached_per_thread;

static int64_t now_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static void sleep_ns(int64_t ns) {
  struct timespec ts = {.tv_sec = ns / 1000000000LL, .tv_nsec = ns % 1000000000LL};
  while (nanosleep(&ts, &ts) == -1 && errno == EINTR) {
  }
}

void gs_limiter_init(const struct gs_config *config) {
  for (int i = 0; i < GS_MAX_DEVICES; i++) {
    limits[i].hard_percent = config->core_limit_percent[i];
    limits[i].soft_percent = config->core_soft_limit_percent[i];
    limits[i].foreign_percent = 100; /* not idle until measured */
    pthread_mutex_init(&limits[i].sample_lock, NULL);
  }
}

/* ---- idle detection for burst mode: NVML utilisation minus the container's own ---- */

static void sample_foreign(int device, int64_t now) {
  struct device_limit *d = &limits[device];
  if (pthread_mutex_trylock(&d->sample_lock) != 0) return;
  if (now < d->next_sample_ns) {
    pthread_mutex_unlock(&d->sample_lock);
    return;
  }
  d->next_sample_ns = now + IDLE_SAMPLE_NS;
  struct gs_device_slot *slot = gs_state_device(device);
  int64_t busy = slot ? __atomic_load_n(&slot->busy_ns, __ATOMIC_RELAXED) : 0;
  static int nvml_ready;
  nvmlDevice_t handle;
  nvmlUtilization_t util;
  int foreign = 100;
  if (gs_real_resolve_nvml() && gs_nvml.nvmlInit_v2 != NULL && gs_nvml.nvmlDeviceGetUtilizationRates != NULL &&
      gs_nvml.nvmlDeviceGetHandleByIndex_v2 != NULL) {
    if (!nvml_ready) nvml_ready = gs_nvml.nvmlInit_v2() == NVML_SUCCESS;
    if (nvml_ready && d->sampled_at_ns != 0 &&
        gs_nvml.nvmlDeviceGetHandleByIndex_v2((unsigned)device, &handle) == NVML_SUCCESS &&
        gs_nvml.nvmlDeviceGetUtilizationRates(handle, &util) == NVML_SUCCESS) {
      int own = (int)((busy - d->sampled_busy_ns) * 100 / (now - d->sampled_at_ns));
      foreign = (int)util.gpu - own;
      if (foreign < 0) foreign = 0;
    }
  }
  d->sampled_busy_ns = busy;
  d->sampled_at_ns = now;
  __atomic_store_n(&d->foreign_percent, foreign, __ATOMIC_RELAXED);
  pthread_mutex_unlock(&d->sample_lock);
}

static int current_percent(int device, int64_t now) {
  struct device_limit *d = &limits[device];
  if (d->soft_percent <= d->hard_percent) return d->hard_percent;
  if (now >= d->next_sample_ns) sample_foreign(device, now);
  return gs_effective_percent(d->hard_percent, d->soft_percent,
                              __atomic_load_n(&d->foreign_percent, __ATOMIC_RELAXED), IDLE_FOREIGN_PERCENT);
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
  int64_t old = __atomic_load_n(&slot->tokens_ns, __ATOMIC_ACQUIRE);
  while (!__atomic_compare_exchange_n(&slot->tokens_ns, &old, gs_bucket_refill(old, now - last, percent), 0,
                                      __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE)) {
  }
}

/* ---- per-stream measurement ---- */

static CUevent take_event(struct tracker *t) {
  if (t->pool_count > 0) return t->pool[--t->pool_count];
  CUevent event = NULL;
  if (gs_cuda.cuEventCreate(&event, CU_EVENT_BLOCKING_SYNC) != CUDA_SUCCESS) return NULL;
  return event;
}

static void give_event(struct tracker *t, CUevent event) {
  if (event == NULL) return;
  if (t->pool_count < POOL_SLOTS) t->pool[t->pool_count++] = event;
  else gs_cuda.cuEventDestroy_v2(event);
}

static struct estimate *estimate_of(struct tracker *t, const void *work) {
  uintptr_t h = ((uintptr_t)work * 0x9E3779B97F4A7C15ULL) >> 54;
  struct estimate *e = &t->estimates[h % ESTIMATE_SLOTS];
  if (e->work != work) {
    e->work = work;
    e->ns = t->average_ns;
    e->launches = 0;
  }
  return e;
}

static CUresult record(struct tracker *t, CUevent event) {
  if (t->per_thread_entry && gs_cuda.cuEventRecord_ptsz != NULL) return gs_cuda.cuEventRecord_ptsz(event, t->stream);
  return gs_cuda.cuEventRecord(event, t->stream);
}

static CUresult elapsed_ms(float *ms, CUevent start, CUevent end) {
  if (gs_cuda.cuEventElapsedTime_v2 != NULL) return gs_cuda.cuEventElapsedTime_v2(ms, start, end);
  return gs_cuda.cuEventElapsedTime(ms, start, end);
}

/* The hook's own event calls must not invalidate a graph capture running in this or another
 * thread (CU_STREAM_CAPTURE_MODE_GLOBAL forbids "unsafe" calls): they run in relaxed mode. */
static CUstreamCaptureMode relax_capture_mode(void) {
  CUstreamCaptureMode mode = CU_STREAM_CAPTURE_MODE_RELAXED;
  if (gs_cuda.cuThreadExchangeStreamCaptureMode != NULL) gs_cuda.cuThreadExchangeStreamCaptureMode(&mode);
  return mode;
}

static void restore_capture_mode(CUstreamCaptureMode mode) {
  if (gs_cuda.cuThreadExchangeStreamCaptureMode != NULL) gs_cuda.cuThreadExchangeStreamCaptureMode(&mode);
}

/* Settles completed launches (oldest first): real cost replaces the estimate charged. */
static void harvest(struct tracker *t, struct gs_device_slot *slot, int64_t now, int force) {
  if (!force && t->since_harvest < HARVEST_EVERY && now - t->harvested_at_ns < HARVEST_PERIOD_NS) return;
  t->since_harvest = 0;
  t->harvested_at_ns = now;
  if (t->count == 0) return;
  CUstreamCaptureMode mode = relax_capture_mode();
  while (t->count > 0) {
    struct pending *p = &t->ring[t->head];
    CUresult q = gs_cuda.cuEventQuery(p->end);
    if (q == CUDA_ERROR_NOT_READY) break;
    int64_t measured = p->charged_ns;
    float ms = 0;
    if (q == CUDA_SUCCESS && elapsed_ms(&ms, p->start, p->end) == CUDA_SUCCESS) measured = (int64_t)((double)ms * 1e6);
    if (measured < 0) measured = 0;
    __atomic_add_fetch(&slot->tokens_ns, p->charged_ns - measured, __ATOMIC_ACQ_REL);
    __atomic_add_fetch(&slot->busy_ns, measured - p->charged_ns, __ATOMIC_RELAXED);
    struct estimate *e = estimate_of(t, p->work);
    e->ns = gs_estimate_update(e->ns, measured);
    t->average_ns = gs_estimate_update(t->average_ns, measured);
    give_event(t, p->start);
    give_event(t, p->end);
    t->head = (t->head + 1) % RING_SLOTS;
    t->count--;
  }
  restore_capture_mode(mode);
}

static struct tracker *tracker_for(CUcontext ctx, CUstream stream, int per_thread) {
  if (cached_tracker != NULL && cached_ctx == ctx && cached_stream == stream && cached_per_thread == per_thread)
    return cached_tracker;
  int per_thread_default = stream == CU_STREAM_PER_THREAD || (stream == NULL && per_thread);
  pthread_t self = pthread_self();
  pthread_mutex_lock(&trackers_lock);
  struct tracker *t = trackers;
  for (; t != NULL; t = t->next) {
    if (t->ctx == ctx && t->stream == stream && t->per_thread_entry == per_thread &&
        (!per_thread_default || pthread_equal(t->thread, self)))
      break;
  }
  if (t == NULL) {
    int device;
    t = calloc(1, sizeof *t);
    if (t != NULL && gs_device_of_current_context(&device) == 0) {
      t->ctx = ctx;
      t->stream = stream;
      t->thread = self;
      t->per_thread_default = per_thread_default;
      t->per_thread_entry = per_thread;
      t->device = device;
      pthread_mutex_init(&t->lock, NULL);
      t->next = trackers;
      trackers = t;
    } else {
      free(t);
      t = NULL;
    }
  }
  pthread_mutex_unlock(&trackers_lock);
  if (t != NULL) {
    cached_tracker = t;
    cached_ctx = ctx;
    cached_stream = stream;
    cached_per_thread = per_thread;
  }
  return t;
}

static int capturing(CUstream stream, int per_thread) {
  CUstreamCaptureStatus status = CU_STREAM_CAPTURE_STATUS_NONE;
  __typeof__(gs_cuda.cuStreamIsCapturing) is_capturing =
      per_thread && gs_cuda.cuStreamIsCapturing_ptsz ? gs_cuda.cuStreamIsCapturing_ptsz : gs_cuda.cuStreamIsCapturing;
  if (is_capturing == NULL) return 0;
  if (is_capturing(stream, &status) != CUDA_SUCCESS) return 1; /* cannot tell: do not touch the stream */
  return status != CU_STREAM_CAPTURE_STATUS_NONE;
}

/* Refills the bucket when due, and sleeps while it is in debt. Called with t->lock held. */
static void admit(struct tracker *t, struct gs_device_slot *slot, int64_t now) {
  for (;;) {
    int percent = current_percent(t->device, now);
    int64_t tokens = __atomic_load_n(&slot->tokens_ns, __ATOMIC_ACQUIRE);
    if (tokens < 0 || now - t->refilled_at_ns >= REFILL_EVERY_NS) {
      refill(slot, now, percent);
      t->refilled_at_ns = now;
      tokens = __atomic_load_n(&slot->tokens_ns, __ATOMIC_ACQUIRE);
    }
    int64_t wait = gs_bucket_wait_ns(tokens, percent, MIN_SLEEP_NS, MAX_SLEEP_NS);
    if (wait == 0) return;
    sleep_ns(wait);
    now = now_ns();
    harvest(t, slot, now, 1);
  }
}

/* Records an event on the launch's stream through the launch's own (legacy or _ptsz) variant. */
static CUevent recorded_event(struct tracker *t) {
  CUevent event = take_event(t);
  if (event != NULL && record(t, event) != CUDA_SUCCESS) {
    give_event(t, event);
    event = NULL;
  }
  return event;
}

CUresult gs_limited_launch(CUstream stream, int per_thread, const void *work, CUresult (*call)(void *),
                           void *args) {
  CUcontext ctx = NULL;
  if (gs_cuda.cuCtxGetCurrent == NULL || gs_cuda.cuCtxGetCurrent(&ctx) != CUDA_SUCCESS || ctx == NULL)
    return call(args);
  struct tracker *t = tracker_for(ctx, stream, per_thread);
  if (t == NULL || limits[t->device].hard_percent >= 100) return call(args);
  struct gs_device_slot *slot = gs_state_device(t->device);
  if (slot == NULL) return call(args);

  pthread_mutex_lock(&t->lock);
  int64_t now = now_ns();
  t->since_harvest++;
  harvest(t, slot, now, 0);
  struct estimate *e = estimate_of(t, work);
  int measure = e->ns == 0 || ++e->launches % SAMPLE_EVERY == 0;
  if (measure && capturing(stream, per_thread)) {
    /* Captured into a graph, not run: the graph's launches are what is charged. */
    pthread_mutex_unlock(&t->lock);
    return call(args);
  }
  CUstreamCaptureMode mode = measure ? relax_capture_mode() : CU_STREAM_CAPTURE_MODE_RELAXED;
  if (e->ns == 0 && t->count > 0) {
    /* Cost unknown: let the measured work in flight finish first, so a burst of unmeasured
     * work cannot slip past the limit. Blocking sync, not spinning. */
    gs_cuda.cuEventSynchronize(t->ring[(t->head + t->count - 1) % RING_SLOTS].end);
    now = now_ns();
    harvest(t, slot, now, 1);
    e = estimate_of(t, work);
  }
  admit(t, slot, now);
  if (measure && t->count == MEASURE_SLOTS) { /* too many in flight: wait for the oldest */
    gs_cuda.cuEventSynchronize(t->ring[t->head].end);
    harvest(t, slot, now_ns(), 1);
  }
  int64_t charged = e->ns;
  __atomic_sub_fetch(&slot->tokens_ns, charged, __ATOMIC_ACQ_REL);
  __atomic_add_fetch(&slot->busy_ns, charged, __ATOMIC_RELAXED);

  CUevent start = measure ? recorded_event(t) : NULL;
  CUresult rc = call(args);
  CUevent end = rc == CUDA_SUCCESS && start != NULL ? recorded_event(t) : NULL;
  if (end != NULL) {
    t->ring[(t->head + t->count) % RING_SLOTS] = (struct pending){start, end, charged, work};
    t->count++;
  } else {
    give_event(t, start);
    if (rc != CUDA_SUCCESS) { /* a failed launch costs nothing */
      __atomic_add_fetch(&slot->tokens_ns, charged, __ATOMIC_ACQ_REL);
      __atomic_sub_fetch(&slot->busy_ns, charged, __ATOMIC_RELAXED);
    }
  }
  if (measure) restore_capture_mode(mode);
  pthread_mutex_unlock(&t->lock);
  return rc;
}

void gs_limiter_atfork_prepare(void) { pthread_mutex_lock(&trackers_lock); }
void gs_limiter_atfork_parent(void) { pthread_mutex_unlock(&trackers_lock); }
void gs_limiter_atfork_child(void) {
  /* The parent's streams and events mean nothing in the child (CUDA does not survive fork). */
  pthread_mutex_init(&trackers_lock, NULL);
  trackers = NULL;
  cached_tracker = NULL;
  for (int i = 0; i < GS_MAX_DEVICES; i++) pthread_mutex_init(&limits[i].sample_lock, NULL);
}
