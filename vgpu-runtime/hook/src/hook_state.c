/* The container's shared state file: creation under flock, a robust process-shared mutex for
 * check-and-charge, and reclamation of the memory of processes that died (even by SIGKILL). */
#define _GNU_SOURCE
#include "hook_state.h"

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "hook_log.h"
#include "hook_policy.h"

static struct gs_state *state;
static int own_slot = -1;

/* Start time of a live process (clock ticks since boot), 0 when it is gone or a zombie. */
static uint64_t start_time_of(int pid) {
  char path[64], buffer[1024];
  snprintf(path, sizeof path, "/proc/%d/stat", pid);
  int fd = open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0) return 0;
  ssize_t n = read(fd, buffer, sizeof buffer - 1);
  close(fd);
  if (n <= 0) return 0;
  buffer[n] = '\0';
  char *p = strrchr(buffer, ')'); /* the command name may hold spaces and parentheses */
  if (p == NULL || p[1] != ' ' || p[2] == 'Z' || p[2] == 'X') return 0;
  /* After ") " comes field 3 (state); start time is field 22: skip 19 more fields. */
  p += 2;
  for (int field = 3; field < 22; field++) {
    p = strchr(p, ' ');
    if (p == NULL) return 0;
    p++;
  }
  return strtoull(p, NULL, 10);
}

static int slot_alive(const struct gs_proc_slot *slot) {
  if (slot->pid <= 0) return 0;
  if (kill(slot->pid, 0) != 0 && errno == ESRCH) return 0;
  return start_time_of(slot->pid) == slot->start_time;
}

static void init_mutex(pthread_mutex_t *mutex) {
  pthread_mutexattr_t attr;
  pthread_mutexattr_init(&attr);
  pthread_mutexattr_setpshared(&attr, PTHREAD_PROCESS_SHARED);
  pthread_mutexattr_setrobust(&attr, PTHREAD_MUTEX_ROBUST);
  pthread_mutex_init(mutex, &attr);
  pthread_mutexattr_destroy(&attr);
}

static void init_fresh(struct gs_state *s) {
  memset(s, 0, sizeof *s);
  s->version = GS_STATE_VERSION;
  s->size_bytes = (uint32_t)sizeof *s;
  s->max_devices = GS_MAX_DEVICES;
  s->max_procs = GS_MAX_PROCS;
  init_mutex(&s->lock.mutex);
  __atomic_store_n(&s->magic, GS_STATE_MAGIC, __ATOMIC_RELEASE);
}

static char failure[300]; /* why the shared state could not be opened */

static struct gs_state *open_private(const char *why, const char *detail) {
  snprintf(failure, sizeof failure, "%s%s%s", why, detail ? ": " : "", detail ? detail : "");
  void *p = mmap(NULL, sizeof(struct gs_state), PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
  if (p == MAP_FAILED) return NULL;
  init_fresh(p);
  return p;
}

/* The container's processes share the file; nobody else may write it: the file is 0660 and
 * never followed through a symbolic link, and a world-writable folder needs the sticky bit. */
static struct gs_state *open_file(const char *dir) {
  char path[600];
  if (dir[0] == '\0') return open_private("no state directory", NULL);
  if (mkdir(dir, 0770) != 0 && errno != EEXIST) return open_private(dir, strerror(errno));
  struct stat folder;
  if (stat(dir, &folder) != 0 || !S_ISDIR(folder.st_mode)) return open_private(dir, "not a directory");
  if ((folder.st_mode & S_IWOTH) && !(folder.st_mode & S_ISVTX))
    return open_private(dir, "writable by everyone without the sticky bit");
  snprintf(path, sizeof path, "%s/%s", dir, GS_STATE_FILE);
  int fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0660);
  if (fd < 0) return open_private(path, strerror(errno));
  if (flock(fd, LOCK_EX) != 0) {
    close(fd);
    return open_private(path, "flock failed");
  }
  struct stat st;
  struct gs_state *s = NULL;
  const char *problem = NULL;
  if (fstat(fd, &st) != 0) {
    problem = "fstat failed";
  } else if (!S_ISREG(st.st_mode)) {
    problem = "not a regular file";
  } else if (st.st_mode & S_IWOTH) {
    problem = "writable by everyone";
  } else if (st.st_size == 0) {
    (void)fchmod(fd, 0660); /* whatever the umask: the container's users (one group) share it */
    if (ftruncate(fd, sizeof *s) != 0) problem = "cannot size the state file";
  } else if ((size_t)st.st_size != sizeof *s) {
    problem = "state file of another layout version";
  }
  if (problem == NULL) {
    void *p = mmap(NULL, sizeof *s, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (p == MAP_FAILED) {
      problem = "mmap failed";
    } else {
      s = p;
      if (st.st_size == 0) init_fresh(s);
      else if (s->magic != GS_STATE_MAGIC || s->version != GS_STATE_VERSION) problem = "state file of another version";
    }
  }
  flock(fd, LOCK_UN);
  close(fd);
  if (problem != NULL) {
    if (s != NULL) munmap(s, sizeof *s);
    return open_private(path, problem);
  }
  gs_log(GS_LOG_DEBUG, "shared state %s", path);
  return s;
}

const char *gs_state_open(const char *dir) {
  state = open_file(dir);
  return failure[0] ? failure : NULL;
}

/* Recomputes the device totals from the process slots (after a holder died mid-update). */
static void repair_totals(void) {
  for (int d = 0; d < GS_MAX_DEVICES; d++) {
    uint64_t sum = 0;
    for (int i = 0; i < GS_MAX_PROCS; i++)
      if (state->procs[i].pid != 0) sum += state->procs[i].used_bytes[d];
    state->devices[d].used_bytes = sum;
  }
}

static int lock_state(void) {
  int rc = pthread_mutex_lock(&state->lock.mutex);
  if (rc == EOWNERDEAD) {
    gs_log(GS_LOG_WARN, "a process died holding the shared-state lock; repairing totals");
    repair_totals();
    pthread_mutex_consistent(&state->lock.mutex);
    return 0;
  }
  if (rc != 0) gs_log(GS_LOG_ERROR, "shared-state lock failed (%s); refusing allocations", strerror(rc));
  return rc;
}

static void unlock_state(void) { pthread_mutex_unlock(&state->lock.mutex); }

static void free_slot(struct gs_proc_slot *slot) {
  for (int d = 0; d < GS_MAX_DEVICES; d++) state->devices[d].used_bytes -= slot->used_bytes[d];
  memset(slot, 0, sizeof *slot);
}

/* Frees the slots of dead processes; returns how many. Caller holds the lock. */
static int reclaim_dead(void) {
  int reclaimed = 0;
  for (int i = 0; i < GS_MAX_PROCS; i++) {
    struct gs_proc_slot *slot = &state->procs[i];
    if (slot->pid == 0 || i == own_slot || slot_alive(slot)) continue;
    uint64_t bytes = 0;
    for (int d = 0; d < GS_MAX_DEVICES; d++) bytes += slot->used_bytes[d];
    gs_log(bytes ? GS_LOG_INFO : GS_LOG_DEBUG, "reclaiming %llu bytes of exited process %d",
           (unsigned long long)bytes, (int)slot->pid);
    free_slot(slot);
    reclaimed++;
  }
  return reclaimed;
}

/* Caller holds the lock. */
static int ensure_slot(void) {
  if (own_slot >= 0) return 0;
  int pid = (int)getpid();
  uint64_t start = start_time_of(pid);
  for (int pass = 0; pass < 2; pass++) {
    for (int i = 0; i < GS_MAX_PROCS; i++) {
      struct gs_proc_slot *slot = &state->procs[i];
      if (slot->pid == pid) free_slot(slot); /* a previous process with this pid is gone */
      if (slot->pid == 0 && own_slot < 0) {
        slot->pid = pid;
        slot->start_time = start;
        own_slot = i;
      }
    }
    if (own_slot >= 0) return 0;
    reclaim_dead();
  }
  gs_log(GS_LOG_ERROR, "no free process slot in the shared state (%d processes)", GS_MAX_PROCS);
  return -1;
}

int gs_state_reserve(int device, uint64_t bytes, uint64_t limit_bytes) {
  if (state == NULL || device < 0 || device >= GS_MAX_DEVICES) return -1;
  if (lock_state() != 0) return -1;
  int ok = ensure_slot() == 0;
  if (ok) {
    struct gs_device_slot *dev = &state->devices[device];
    ok = gs_memory_admit(dev->used_bytes, bytes, limit_bytes);
    if (!ok && reclaim_dead() > 0) ok = gs_memory_admit(dev->used_bytes, bytes, limit_bytes);
    if (ok) {
      dev->used_bytes += bytes;
      state->procs[own_slot].used_bytes[device] += bytes;
    }
  }
  unlock_state();
  return ok ? 0 : -1;
}

void gs_state_adjust(int device, uint64_t from_bytes, uint64_t to_bytes) {
  if (state == NULL || device < 0 || device >= GS_MAX_DEVICES || from_bytes == to_bytes) return;
  if (lock_state() != 0) return;
  if (ensure_slot() == 0) {
    uint64_t *mine = &state->procs[own_slot].used_bytes[device];
    uint64_t from = from_bytes > *mine ? *mine : from_bytes;
    *mine = *mine - from + to_bytes;
    state->devices[device].used_bytes = state->devices[device].used_bytes - from + to_bytes;
  }
  unlock_state();
}

void gs_state_force(int device, uint64_t bytes) {
  if (state == NULL || device < 0 || device >= GS_MAX_DEVICES) return;
  if (lock_state() != 0) return;
  if (ensure_slot() == 0) {
    state->devices[device].used_bytes += bytes;
    state->procs[own_slot].used_bytes[device] += bytes;
  }
  unlock_state();
}

void gs_state_release(int device, uint64_t bytes) {
  if (state == NULL || device < 0 || device >= GS_MAX_DEVICES) return;
  if (lock_state() != 0) return;
  if (own_slot >= 0) {
    uint64_t *mine = &state->procs[own_slot].used_bytes[device];
    if (bytes > *mine) bytes = *mine;
    *mine -= bytes;
    state->devices[device].used_bytes -= bytes;
  }
  unlock_state();
}

uint64_t gs_state_used(int device) {
  if (state == NULL || device < 0 || device >= GS_MAX_DEVICES) return 0;
  if (lock_state() != 0) return 0;
  reclaim_dead();
  uint64_t used = state->devices[device].used_bytes;
  unlock_state();
  return used;
}

void gs_state_register(void) {
  if (state == NULL || own_slot >= 0) return;
  if (lock_state() != 0) return;
  ensure_slot();
  unlock_state();
}

static unsigned own_host_pid;

unsigned gs_state_host_pid(void) { return own_host_pid ? own_host_pid : (unsigned)getpid(); }

void gs_state_set_host_pid(unsigned pid) {
  own_host_pid = pid;
  gs_state_register();
  if (state != NULL && own_slot >= 0) __atomic_store_n(&state->procs[own_slot].host_pid, pid, __ATOMIC_RELAXED);
}

int gs_state_pids(unsigned *pids, int max) {
  int n = 0;
  if (state == NULL) return 0;
  for (int i = 0; i < GS_MAX_PROCS && n < max; i++) {
    int32_t pid = __atomic_load_n(&state->procs[i].pid, __ATOMIC_RELAXED);
    uint32_t host = __atomic_load_n(&state->procs[i].host_pid, __ATOMIC_RELAXED);
    if (pid > 0) pids[n++] = host ? host : (unsigned)pid;
  }
  return n;
}

struct gs_device_slot *gs_state_device(int device) {
  if (state == NULL || device < 0 || device >= GS_MAX_DEVICES) return NULL;
  return &state->devices[device];
}

void gs_state_atfork_child(void) {
  own_slot = -1;
  own_host_pid = 0;
}
