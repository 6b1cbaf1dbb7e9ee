/* The usage file: cumulative GPU time the container received and the memory it holds, per
 * device, written for the pod's accounting sidecar.
 *
 * One process of the container writes it: the one holding an exclusive flock on
 * $GPUSHARE_STATE_DIR/usage.lock. Each process that makes a context starts a writer thread
 * which tries that lock every period; the holder reads the meter (NVML's per-process SM time
 * of the container's registered processes, the same reading the compute limiter charges) and
 * replaces $GPUSHARE_USAGE_DIR/$GPUSHARE_ALLOCATION_ID.json atomically (a temporary file whose
 * name starts with '.', then rename). When the holder exits, the kernel drops its lock and
 * another process takes over within a period. The holder also writes at exit.
 *
 * Nothing here runs on the launch path: the thread only reads the shared state, and the meter
 * it calls is the limiter's lock-free claim. A folder that is missing or unwritable costs one
 * log line per cause, never an error to the application.
 */
#define _GNU_SOURCE
#include "hook_usage.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <time.h>
#include <unistd.h>

#include "hook.h"
#include "hook_limiter.h"
#include "hook_log.h"
#include "hook_state.h"

#define PERIOD_NS 500000000L /* written twice a second: "at least once a second" with margin */
#define MAX_NVML_PROCS 256

static int enabled;
static char lock_path[600];
static char file_path[600];
static char temp_path[600];
static int memory_limited[GS_MAX_DEVICES];

static int started;           /* this process's writer thread runs */
static int lock_fd = -1;      /* usage.lock, held with LOCK_EX while this process writes */
static int writer;            /* this process holds the lock */
static int exit_registered;
static int last_errno;        /* the last failure logged (0: none), so each cause is logged once */
static pthread_mutex_t write_lock = PTHREAD_MUTEX_INITIALIZER;

void gs_usage_init(const struct gs_config *config, int shared) {
  if (config->usage_dir[0] == '\0' || config->allocation_id[0] == '\0') return;
  if (!shared) {
    gs_log(GS_LOG_WARN, "no usage file: the container's shared state is not available");
    return;
  }
  snprintf(lock_path, sizeof lock_path, "%s/usage.lock", config->state_dir);
  snprintf(file_path, sizeof file_path, "%s/%s.json", config->usage_dir, config->allocation_id);
  snprintf(temp_path, sizeof temp_path, "%s/.%s.json.tmp", config->usage_dir, config->allocation_id);
  for (int i = 0; i < GS_MAX_DEVICES; i++) memory_limited[i] = config->memory_limit_bytes[i] != GS_NO_MEMORY_LIMIT;
  enabled = 1;
}

int gs_usage_enabled(void) { return enabled; }

static int64_t monotonic_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static void failed(const char *what, int error) {
  if (error == last_errno) return;
  last_errno = error;
  gs_log(GS_LOG_WARN, "usage file %s: %s failed (%s); measured use is not published until it works", file_path,
         what, strerror(error));
}

/* Memory the container holds on device: its own accounting where the memory is limited,
 * otherwise what NVML lists for the container's processes. */
static uint64_t memory_of(int device) {
  if (memory_limited[device]) return gs_state_used(device);
  unsigned pids[MAX_NVML_PROCS], mine[GS_MAX_PROCS];
  uint64_t bytes[MAX_NVML_PROCS];
  int n = gs_nvml_processes(device, pids, bytes, MAX_NVML_PROCS);
  int own = gs_state_pids(mine, GS_MAX_PROCS);
  uint64_t total = 0;
  for (int i = 0; i < n; i++)
    for (int j = 0; j < own; j++)
      if (pids[i] == mine[j]) {
        total += bytes[i];
        break;
      }
  return total;
}

/* Meters every device the container uses and replaces the file. Called by the lock holder. */
static void write_file(void) {
  int index[GS_MAX_DEVICES], devices = 0;
  int64_t busy[GS_MAX_DEVICES];
  uint64_t memory[GS_MAX_DEVICES];
  for (int d = 0; d < GS_MAX_DEVICES; d++) {
    struct gs_device_slot *slot = gs_state_device(d);
    if (slot == NULL || __atomic_load_n(&slot->in_use, __ATOMIC_RELAXED) == 0) continue;
    gs_limiter_meter(d);
    int64_t used = __atomic_load_n(&slot->used_sm_ns, __ATOMIC_RELAXED);
    index[devices] = d;
    busy[devices] = used > 0 ? used : 0;
    memory[devices] = memory_of(d);
    devices++;
  }
  char text[2048];
  size_t n = (size_t)snprintf(text, sizeof text,
                              "{\"format\": \"gpushare.io/usage/v1\", \"monotonicNanoseconds\": %lld, \"devices\": [",
                              (long long)monotonic_ns());
  for (int i = 0; i < devices; i++)
    n += (size_t)snprintf(text + n, sizeof text - n,
                          "%s{\"index\": %d, \"busyNanoseconds\": %lld, \"memoryUsedBytes\": %llu}", i ? ", " : "",
                          index[i], (long long)busy[i], (unsigned long long)memory[i]);
  n += (size_t)snprintf(text + n, sizeof text - n, "]}\n");

  int fd = open(temp_path, O_WRONLY | O_CREAT | O_TRUNC | O_NOFOLLOW | O_CLOEXEC, 0644);
  if (fd < 0) {
    failed("creating the temporary file", errno);
    return;
  }
  size_t done = 0;
  while (done < n) {
    ssize_t w = write(fd, text + done, n - done);
    if (w < 0 && errno == EINTR) continue;
    if (w <= 0) {
      failed("writing", w < 0 ? errno : EIO);
      close(fd);
      unlink(temp_path);
      return;
    }
    done += (size_t)w;
  }
  close(fd);
  if (rename(temp_path, file_path) != 0) {
    failed("renaming into place", errno);
    unlink(temp_path);
    return;
  }
  if (last_errno != 0) gs_log(GS_LOG_INFO, "usage file %s written again", file_path);
  last_errno = 0;
}

/* Takes the writer's lock if nobody holds it; 1 when this process is the writer. */
static int claim(void) {
  if (writer) return 1;
  if (lock_fd < 0) {
    lock_fd = open(lock_path, O_RDWR | O_CREAT | O_NOFOLLOW | O_CLOEXEC, 0660);
    if (lock_fd < 0) {
      failed("opening its lock", errno);
      return 0;
    }
  }
  if (flock(lock_fd, LOCK_EX | LOCK_NB) == 0) writer = 1;
  return writer;
}

static void tick(void) {
  pthread_mutex_lock(&write_lock);
  if (claim()) write_file();
  pthread_mutex_unlock(&write_lock);
}

/* At a normal exit the writer (or, while nobody holds the lock, this process) writes once more. */
static void at_exit(void) {
  if (!enabled || !__atomic_load_n(&started, __ATOMIC_ACQUIRE)) return;
  tick();
}

static void *writer_loop(void *unused) {
  (void)unused;
  for (;;) {
    tick();
    struct timespec ts = {0, PERIOD_NS};
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {
    }
  }
  return NULL;
}

void gs_usage_device_in_use(int device) {
  if (!enabled || device < 0 || device >= GS_MAX_DEVICES) return;
  struct gs_device_slot *slot = gs_state_device(device);
  if (slot != NULL && __atomic_load_n(&slot->in_use, __ATOMIC_RELAXED) == 0)
    __atomic_store_n(&slot->in_use, 1, __ATOMIC_RELAXED);
  if (__atomic_exchange_n(&started, 1, __ATOMIC_ACQ_REL)) return;
  /* The thread takes no signal: they stay the application's. */
  sigset_t all, old;
  sigfillset(&all);
  pthread_sigmask(SIG_SETMASK, &all, &old);
  pthread_attr_t attr;
  pthread_attr_init(&attr);
  pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
  pthread_attr_setstacksize(&attr, 256 * 1024);
  pthread_t thread;
  int rc = pthread_create(&thread, &attr, writer_loop, NULL);
  pthread_attr_destroy(&attr);
  pthread_sigmask(SIG_SETMASK, &old, NULL);
  if (rc != 0) {
    __atomic_store_n(&started, 0, __ATOMIC_RELEASE);
    gs_log(GS_LOG_WARN, "no usage file: cannot start its writer thread (%s)", strerror(rc));
    return;
  }
  if (!__atomic_exchange_n(&exit_registered, 1, __ATOMIC_ACQ_REL)) atexit(at_exit);
}

void gs_usage_atfork_child(void) {
  /* The parent's thread does not exist here, and its lock stays the parent's: closing this
   * copy of the descriptor does not release a lock the parent still holds open. */
  if (lock_fd >= 0) close(lock_fd);
  lock_fd = -1;
  writer = 0;
  started = 0;
  last_errno = 0;
  pthread_mutex_init(&write_lock, NULL);
}
