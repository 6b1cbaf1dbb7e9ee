/* The shared-GPU model (see stub_gpu.h): one timeline per physical device, shared by every
 * process mapping the same model file, advanced lazily to "now" under a process-shared lock.
 *
 * Scheduling: each stream is a FIFO; the kernel at a stream's head may start once it was
 * submitted and the device has its SM fraction free. Candidates start oldest first; when the
 * oldest waiting head does not fit, nothing younger starts (head-of-line blocking, so a kernel
 * needing the whole GPU is not starved by a stream of small ones). */
#define _GNU_SOURCE
#include "stub_gpu.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define GPU_MAGIC 0x4c45444f4d555047ULL /* "GPUMODEL" */

static struct gpu_model *model;
static int my_proc = -1;
static pthread_once_t model_once = PTHREAD_ONCE_INIT;

int64_t gpu_now_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static void sleep_until(int64_t deadline_ns) {
  struct timespec ts = {.tv_sec = deadline_ns / 1000000000LL, .tv_nsec = deadline_ns % 1000000000LL};
  while (clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &ts, NULL) == EINTR) {
  }
}

static uint64_t env_u64(const char *name, uint64_t fallback) {
  const char *text = getenv(name);
  if (text == NULL || *text == '\0') return fallback;
  char *end = NULL;
  unsigned long long value = strtoull(text, &end, 10);
  return (end != NULL && *end == '\0') ? value : fallback;
}

static void init_model(struct gpu_model *m) {
  memset(m, 0, sizeof *m);
  pthread_mutexattr_t attr;
  pthread_mutexattr_init(&attr);
  pthread_mutexattr_setpshared(&attr, PTHREAD_PROCESS_SHARED);
  pthread_mutexattr_setrobust(&attr, PTHREAD_MUTEX_ROBUST);
  pthread_mutex_init((pthread_mutex_t *)m->lock.bytes, &attr);
  pthread_mutexattr_destroy(&attr);
  int count = (int)env_u64("GPUSHARE_STUB_DEVICE_COUNT", 1);
  m->device_count = count < 1 || count > GPU_DEVICES ? 1 : count;
  for (int d = 0; d < GPU_DEVICES; d++) m->devices[d].capacity_bytes = env_u64("GPUSHARE_STUB_MEMORY_BYTES", 16ULL << 30);
  m->sim_ns = gpu_now_ns();
  __atomic_store_n(&m->magic, GPU_MAGIC, __ATOMIC_RELEASE);
}

static void forget_proc(void) { my_proc = -1; }

static void open_model(void) {
  _Static_assert(sizeof(pthread_mutex_t) <= 64, "mutex fits");
  const char *path = getenv("GPUSHARE_STUB_GPU");
  size_t size = sizeof(struct gpu_model);
  void *p = MAP_FAILED;
  if (path != NULL && *path != '\0') {
    int fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
    if (fd >= 0 && flock(fd, LOCK_EX) == 0) {
      struct stat st;
      int fresh = fstat(fd, &st) == 0 && st.st_size == 0;
      if (!fresh || ftruncate(fd, (off_t)size) == 0) p = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
      if (p != MAP_FAILED && (fresh || ((struct gpu_model *)p)->magic != GPU_MAGIC)) init_model(p);
      flock(fd, LOCK_UN);
    }
    if (fd >= 0) close(fd);
    if (p == MAP_FAILED) { /* a test fixture: a scenario on the wrong GPU must not pass silently */
      fprintf(stderr, "stub GPU model: cannot map GPUSHARE_STUB_GPU=%s\n", path);
      abort();
    }
  }
  if (p == MAP_FAILED) {
    p = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) abort(); /* the stub is a test fixture: no model, no tests */
    init_model(p);
  }
  model = p;
  pthread_atfork(NULL, NULL, forget_proc);
}

struct gpu_model *gpu_model(void) {
  pthread_once(&model_once, open_model);
  return model;
}

void gpu_lock(void) {
  pthread_mutex_t *mutex = (pthread_mutex_t *)gpu_model()->lock.bytes;
  if (pthread_mutex_lock(mutex) == EOWNERDEAD) pthread_mutex_consistent(mutex);
}

void gpu_unlock(void) { pthread_mutex_unlock((pthread_mutex_t *)model->lock.bytes); }

/* ---- processes ---- */

static void release_stream_locked(struct gpu_stream *s) {
  if (s->count > 0 && s->ring[s->head].start_ns != 0) {
    model->devices[s->device].sm_used_milli -= s->ring[s->head].sm_milli;
    model->devices[s->device].running--;
  }
  s->count = 0;
  s->in_use = 0;
}

/* A process that is gone: its work is torn down and its memory freed, as the driver does. */
static void reap_locked(int i) {
  struct gpu_proc *p = &model->procs[i];
  for (int s = 0; s < model->stream_high; s++)
    if (model->streams[s].in_use && model->streams[s].proc == i) release_stream_locked(&model->streams[s]);
  for (int d = 0; d < GPU_DEVICES; d++) {
    model->devices[d].used_bytes -= (uint64_t)p->mem_bytes[d];
    model->tenants[p->tenant].mem_bytes[d] -= p->mem_bytes[d];
  }
  memset(p, 0, sizeof *p);
}

static int alive(int pid) { return pid > 0 && !(kill(pid, 0) != 0 && errno == ESRCH); }

int gpu_proc_index(void) {
  if (my_proc >= 0) return my_proc;
  gpu_model();
  gpu_lock();
  int pid = (int)getpid(), found = -1;
  for (int i = 0; i < GPU_PROCS; i++) {
    struct gpu_proc *p = &model->procs[i];
    if (p->pid != 0 && (p->pid == pid || !alive(p->pid))) reap_locked(i);
    if (p->pid == 0 && found < 0) found = i;
  }
  if (found >= 0) {
    model->procs[found].pid = pid;
    int tenant = (int)env_u64("GPUSHARE_STUB_TENANT", 0);
    model->procs[found].tenant = tenant < 0 || tenant >= GPU_TENANTS ? 0 : tenant;
    model->procs[found].nvml_pid = pid + (int32_t)env_u64("GPUSHARE_STUB_PID_OFFSET", 0);
    my_proc = found;
  }
  gpu_unlock();
  return my_proc >= 0 ? my_proc : 0;
}

/* A process that exits gives its memory and work back at once, as the driver does when the
 * process's device files close (a process killed outright is reaped by the next one to look). */
__attribute__((destructor)) static void leave(void) {
  if (model == NULL || my_proc < 0 || model->procs[my_proc].pid != (int)getpid()) return;
  gpu_lock();
  reap_locked(my_proc);
  gpu_unlock();
  my_proc = -1;
}

/* ---- the timeline ---- */

static void start_ready_locked(int64_t t) {
  for (int d = 0; d < model->device_count; d++) {
    struct gpu_device *dev = &model->devices[d];
    for (;;) {
      struct gpu_stream *best = NULL;
      for (int i = 0; i < model->stream_high; i++) {
        struct gpu_stream *s = &model->streams[i];
        if (!s->in_use || s->device != d || s->count == 0) continue;
        struct gpu_kernel *k = &s->ring[s->head];
        if (k->start_ns != 0 || k->submit_ns > t) continue;
        if (best == NULL || k->seq < best->ring[best->head].seq) best = s;
      }
      if (best == NULL) break;
      struct gpu_kernel *k = &best->ring[best->head];
      if (dev->sm_used_milli + k->sm_milli > GPU_SM_FULL) break;
      k->start_ns = t;
      dev->sm_used_milli += k->sm_milli;
      dev->running++;
    }
  }
}

static void complete_head_locked(struct gpu_stream *s) {
  struct gpu_kernel *k = &s->ring[s->head];
  int64_t end = k->start_ns + k->duration_ns;
  int64_t sm = k->duration_ns * k->sm_milli / GPU_SM_FULL;
  struct gpu_proc *p = &model->procs[s->proc];
  p->sm_ns[s->device] += sm;
  model->tenants[p->tenant].sm_ns[s->device] += sm;
  model->devices[s->device].sm_used_milli -= k->sm_milli;
  model->devices[s->device].running--;
  s->done_ns[s->completed % GPU_DONE_RING] = end;
  s->completed++;
  s->head = (s->head + 1) % GPU_DEPTH;
  s->count--;
  if (s->count > 0) s->ring[s->head].seq = ++model->seq; /* ready now: queues behind older ready heads */
  if (s->in_use == 2 && s->count == 0) s->in_use = 0;
}

void gpu_advance_locked(int64_t now) {
  for (;;) {
    int64_t t = model->sim_ns;
    start_ready_locked(t);
    int64_t next = INT64_MAX;
    for (int i = 0; i < model->stream_high; i++) {
      struct gpu_stream *s = &model->streams[i];
      if (s->in_use && s->count > 0 && s->ring[s->head].start_ns != 0) {
        int64_t end = s->ring[s->head].start_ns + s->ring[s->head].duration_ns;
        if (end < next) next = end;
      }
    }
    int64_t until = next <= now ? next : now;
    if (until > t) {
      for (int d = 0; d < model->device_count; d++)
        if (model->devices[d].running > 0) model->devices[d].busy_ns += until - t;
      model->sim_ns = until;
    }
    if (next > now) return;
    for (int i = 0; i < model->stream_high; i++) {
      struct gpu_stream *s = &model->streams[i];
      if (s->in_use && s->count > 0 && s->ring[s->head].start_ns != 0 &&
          s->ring[s->head].start_ns + s->ring[s->head].duration_ns <= next)
        complete_head_locked(s);
    }
  }
}

static void advance_now_locked(void) {
  int64_t now = gpu_now_ns();
  if (now > model->sim_ns) gpu_advance_locked(now);
}

/* ---- streams ---- */

int gpu_stream_open(int device) {
  int proc = gpu_proc_index();
  gpu_lock();
  int slot = -1;
  for (int pass = 0; pass < 2 && slot < 0; pass++) {
    for (int i = 0; i < GPU_STREAMS; i++) {
      if (!model->streams[i].in_use) {
        slot = i;
        break;
      }
    }
    if (slot < 0)
      for (int i = 0; i < GPU_PROCS; i++)
        if (model->procs[i].pid != 0 && !alive(model->procs[i].pid)) reap_locked(i);
  }
  if (slot >= 0) {
    struct gpu_stream *s = &model->streams[slot];
    uint32_t generation = s->generation + 1;
    memset(s, 0, offsetof(struct gpu_stream, ring));
    s->in_use = 1;
    s->device = device;
    s->proc = proc;
    s->generation = generation;
    if (slot >= model->stream_high) model->stream_high = slot + 1;
  }
  gpu_unlock();
  return slot;
}

void gpu_stream_close(int slot) {
  if (slot < 0) return;
  gpu_lock();
  advance_now_locked();
  struct gpu_stream *s = &model->streams[slot];
  if (s->in_use == 1) s->in_use = s->count > 0 ? 2 : 0;
  gpu_unlock();
}

int gpu_enqueue(int slot, const int64_t *duration_ns, const int32_t *sm_milli, int n) {
  if (slot < 0) return -1;
  gpu_lock();
  struct gpu_stream *s = &model->streams[slot];
  for (int i = 0; i < n; i++) {
    advance_now_locked();
    while (s->count == GPU_DEPTH) { /* launch queue full: block until a slot frees */
      struct gpu_kernel *head = &s->ring[s->head];
      int64_t wake = head->start_ns != 0 ? head->start_ns + head->duration_ns : gpu_now_ns() + 100000;
      gpu_unlock();
      sleep_until(wake);
      gpu_lock();
      advance_now_locked();
    }
    int32_t sm = sm_milli[i] <= 0 ? 1 : sm_milli[i] > GPU_SM_FULL ? GPU_SM_FULL : sm_milli[i];
    struct gpu_kernel *k = &s->ring[(s->head + s->count) % GPU_DEPTH];
    *k = (struct gpu_kernel){duration_ns[i] < 0 ? 0 : duration_ns[i], model->sim_ns, 0, sm, 0, ++model->seq};
    s->count++;
    s->submitted++;
    start_ready_locked(model->sim_ns);
  }
  gpu_unlock();
  return 0;
}

uint64_t gpu_stream_position(int slot, uint32_t *generation) {
  if (slot < 0) return 0;
  gpu_lock();
  uint64_t position = model->streams[slot].submitted;
  *generation = model->streams[slot].generation;
  gpu_unlock();
  return position;
}

static int done_locked(int slot, uint32_t generation, uint64_t target, int64_t *at_ns) {
  struct gpu_stream *s = &model->streams[slot];
  *at_ns = 0;
  if (target == 0 || s->generation != generation || !s->in_use) return 1;
  if (s->completed < target) return 0;
  if (s->completed - target < GPU_DONE_RING) *at_ns = s->done_ns[(target - 1) % GPU_DONE_RING];
  return 1;
}

int gpu_position_done(int slot, uint32_t generation, uint64_t target, int64_t *at_ns) {
  if (slot < 0) {
    *at_ns = 0;
    return 1;
  }
  gpu_lock();
  advance_now_locked();
  int done = done_locked(slot, generation, target, at_ns);
  gpu_unlock();
  return done;
}

int64_t gpu_waits; /* calls that waited for the device in this process */

void gpu_wait_position(int slot, uint32_t generation, uint64_t target) {
  if (slot < 0) return;
  __atomic_add_fetch(&gpu_waits, 1, __ATOMIC_RELAXED);
  for (;;) {
    gpu_lock();
    advance_now_locked();
    int64_t at;
    if (done_locked(slot, generation, target, &at)) {
      gpu_unlock();
      return;
    }
    struct gpu_stream *s = &model->streams[slot];
    struct gpu_kernel *head = &s->ring[s->head];
    int64_t now = model->sim_ns, wake = now + 200000;
    if (head->start_ns != 0 && head->start_ns + head->duration_ns < wake) wake = head->start_ns + head->duration_ns;
    if (wake <= now) wake = now + 1000;
    gpu_unlock();
    sleep_until(wake);
  }
}

/* ---- memory ---- */

int gpu_mem_take(int device, uint64_t bytes) {
  if (device < 0 || device >= GPU_DEVICES) return -1;
  int proc = gpu_proc_index();
  gpu_lock();
  struct gpu_device *dev = &model->devices[device];
  int ok = bytes <= dev->capacity_bytes - dev->used_bytes;
  if (ok) {
    struct gpu_proc *p = &model->procs[proc];
    struct gpu_tenant *t = &model->tenants[p->tenant];
    dev->used_bytes += bytes;
    p->mem_bytes[device] += (int64_t)bytes;
    t->mem_bytes[device] += (int64_t)bytes;
    if (t->mem_bytes[device] > t->mem_peak[device]) t->mem_peak[device] = t->mem_bytes[device];
  }
  gpu_unlock();
  return ok ? 0 : -1;
}

void gpu_mem_give(int device, uint64_t bytes) {
  if (device < 0 || device >= GPU_DEVICES) return;
  int proc = gpu_proc_index();
  gpu_lock();
  struct gpu_proc *p = &model->procs[proc];
  model->devices[device].used_bytes -= bytes;
  p->mem_bytes[device] -= (int64_t)bytes;
  model->tenants[p->tenant].mem_bytes[device] -= (int64_t)bytes;
  gpu_unlock();
}

/* ---- figures ---- */

/* SM-time of running kernels so far, per process (caller holds the lock, model advanced). */
static void running_sm_locked(int device, int64_t *per_proc) {
  for (int i = 0; i < model->stream_high; i++) {
    struct gpu_stream *s = &model->streams[i];
    if (!s->in_use || s->device != device || s->count == 0 || s->ring[s->head].start_ns == 0) continue;
    struct gpu_kernel *k = &s->ring[s->head];
    per_proc[s->proc] += (model->sim_ns - k->start_ns) * k->sm_milli / GPU_SM_FULL;
  }
}

int64_t gpu_tenant_sm_ns(int tenant, int device) {
  if (tenant < 0 || tenant >= GPU_TENANTS || device < 0 || device >= GPU_DEVICES) return 0;
  gpu_model();
  gpu_lock();
  advance_now_locked();
  int64_t running[GPU_PROCS] = {0};
  running_sm_locked(device, running);
  int64_t total = model->tenants[tenant].sm_ns[device];
  for (int i = 0; i < GPU_PROCS; i++)
    if (model->procs[i].pid != 0 && model->procs[i].tenant == tenant) total += running[i];
  gpu_unlock();
  return total;
}

int64_t gpu_device_busy_ns(int device) {
  if (device < 0 || device >= GPU_DEVICES) return 0;
  gpu_model();
  gpu_lock();
  advance_now_locked();
  int64_t busy = model->devices[device].busy_ns;
  gpu_unlock();
  return busy;
}

/* NVML's per-process utilisation since last_seen_us (a timestamp this function returned
 * before). Like the driver, the model samples every GPUSHARE_STUB_NVML_PERIOD_MS (default 0: at
 * every query): between samples there is nothing new (-1, NVML_ERROR_NOT_FOUND). An unknown
 * last_seen_us gives no samples, only the newest sample's timestamp (a baseline). Returns the
 * number of samples. */
int gpu_process_util(int device, uint64_t last_seen_us, uint64_t *now_us, unsigned *pids, unsigned *sm_percent,
                     int max) {
  static int64_t period_ns = -1;
  if (period_ns < 0) period_ns = (int64_t)env_u64("GPUSHARE_STUB_NVML_PERIOD_MS", 0) * 1000000LL;
  if (device < 0 || device >= GPU_DEVICES) return 0;
  gpu_model();
  gpu_lock();
  advance_now_locked();
  int64_t now = model->sim_ns;
  struct gpu_snapshot *newest = NULL, *base = NULL;
  for (int i = 0; i < GPU_SNAPSHOTS; i++) {
    struct gpu_snapshot *snap = &model->snapshots[i];
    if (snap->at_us == 0 || snap->device != device) continue;
    if (newest == NULL || snap->at_ns > newest->at_ns) newest = snap;
    if (last_seen_us != 0 && snap->at_us == last_seen_us) base = snap;
  }
  if (newest == NULL || now - newest->at_ns >= period_ns) { /* the driver takes a sample */
    int64_t current[GPU_PROCS] = {0};
    running_sm_locked(device, current);
    for (int i = 0; i < GPU_PROCS; i++) current[i] += model->procs[i].sm_ns[device];
    uint64_t stamp = (uint64_t)(now / 1000);
    if (newest != NULL && stamp <= newest->at_us) stamp = newest->at_us + 1;
    struct gpu_snapshot *snap = &model->snapshots[model->snapshot_next++ % GPU_SNAPSHOTS];
    if (snap == base) base = NULL;
    snap->at_us = stamp;
    snap->at_ns = now;
    snap->device = device;
    memcpy(snap->sm_ns, current, sizeof current);
    newest = snap;
  }
  int n = 0;
  *now_us = newest->at_us;
  if (base == NULL || newest->at_ns <= base->at_ns) {
    n = base == NULL ? 0 : -1; /* unknown baseline: a new one; else nothing new yet */
  } else {
    int64_t window = newest->at_ns - base->at_ns;
    for (int i = 0; i < GPU_PROCS && n < max; i++) {
      int64_t used = newest->sm_ns[i] - base->sm_ns[i];
      if (model->procs[i].pid == 0 || used <= 0) continue;
      pids[n] = (unsigned)model->procs[i].nvml_pid;
      sm_percent[n] = (unsigned)((used * 100 + window / 2) / window);
      n++;
    }
  }
  gpu_unlock();
  return n;
}

/* NVML's running processes and their memory. */
int gpu_process_memory(int device, unsigned *pids, uint64_t *bytes, int max) {
  if (device < 0 || device >= GPU_DEVICES) return 0;
  gpu_model();
  gpu_lock();
  int n = 0;
  for (int i = 0; i < GPU_PROCS && n < max; i++) {
    if (model->procs[i].pid == 0 || model->procs[i].mem_bytes[device] <= 0 || !alive(model->procs[i].pid)) continue;
    pids[n] = (unsigned)model->procs[i].nvml_pid;
    bytes[n++] = (uint64_t)model->procs[i].mem_bytes[device];
  }
  gpu_unlock();
  return n;
}
