/* Shared state of all processes of a container: one memory-mapped file per container
 * (GPUSHARE_STATE_DIR/vgpu.state), a magic/version header, a robust process-shared mutex,
 * per-device totals and token buckets, and one slot per process keyed by pid and start time. */
#ifndef GPUSHARE_HOOK_STATE_H
#define GPUSHARE_HOOK_STATE_H

#include <pthread.h>
#include <stddef.h>
#include <stdint.h>

#include "hook_config.h"

#define GS_STATE_MAGIC 0x5441545355504733ULL /* "3GPUSTAT" read little-endian */
#define GS_STATE_VERSION 2u
#define GS_MAX_PROCS 1024
#define GS_STATE_FILE "vgpu.state"

struct gs_device_slot {
  uint64_t used_bytes;         /* sum of the processes' used_bytes on this device */
  int64_t tokens_ns;           /* compute token bucket (atomic access, no lock) */
  int64_t refilled_at_ns;      /* CLOCK_MONOTONIC of the last refill (atomic) */
  int64_t metered_at_ns;       /* CLOCK_MONOTONIC of the last reading of NVML (atomic) */
  uint64_t meter_last_seen_us; /* NVML timestamp of that reading */
  int64_t used_sm_ns;          /* SM time the container was charged, in total */
  int64_t foreign_window_ns;   /* the others' use over the current window, for burst mode */
  int64_t foreign_used_ns;
  int32_t foreign_percent;     /* the others' SM use over the last full window */
  int32_t reserved32;
  int64_t sampled_at_ns;       /* CLOCK_MONOTONIC when NVML last had a new sample */
  int64_t meter_claimed_at_ns; /* non-zero while a process reads NVML for the container */
  int64_t provisional_ns;      /* launches seen complete since NVML's last sample, estimated */
  int64_t calibration_permille; /* metered SM time / estimates, learnt (0: not yet) */
  uint64_t in_use;             /* non-zero once a process of the container made a context on it */
  int64_t scheduler_reported_ns; /* of used_sm_ns, what was reported to the GPU time scheduler */
  uint64_t reserved[1];
};

struct gs_proc_slot {
  int32_t pid;              /* 0: free */
  uint32_t host_pid;        /* the pid NVML reports for it (another PID namespace); 0: the same */
  uint64_t start_time;      /* /proc/<pid>/stat field 22: tells a reused pid apart */
  uint64_t used_bytes[GS_MAX_DEVICES];
};

struct gs_state {
  uint64_t magic;
  uint32_t version;
  uint32_t size_bytes;
  uint32_t max_devices;
  uint32_t max_procs;
  uint64_t reserved;
  union {
    pthread_mutex_t mutex;  /* robust, process-shared */
    uint8_t bytes[64];
  } lock;
  struct gs_device_slot devices[GS_MAX_DEVICES];
  struct gs_proc_slot procs[GS_MAX_PROCS];
};

_Static_assert(sizeof(pthread_mutex_t) <= 64, "mutex must fit its slot");
_Static_assert(offsetof(struct gs_state, lock) == 32, "header layout");
_Static_assert(sizeof(struct gs_device_slot) == 128, "device slot layout");
_Static_assert(sizeof(struct gs_proc_slot) == 16 + 8 * GS_MAX_DEVICES, "process slot layout");
_Static_assert(offsetof(struct gs_state, devices) == 96, "devices offset");
_Static_assert(offsetof(struct gs_state, procs) == 96 + 128 * GS_MAX_DEVICES, "procs offset");

/* Maps the container's state (creating it). When that fails, maps a private one and returns
 * why (the caller fails closed); NULL on success. */
const char *gs_state_open(const char *dir);
/* Atomically charges bytes on device if they fit under limit; 0 on success, -1 when over. */
int gs_state_reserve(int device, uint64_t bytes, uint64_t limit_bytes);
void gs_state_release(int device, uint64_t bytes);
/* Charges bytes already taken by the driver, even over the limit. */
void gs_state_force(int device, uint64_t bytes);
/* Replaces a charge of from_bytes by to_bytes in one step (no window for others in between). */
void gs_state_adjust(int device, uint64_t from_bytes, uint64_t to_bytes);
/* Bytes in use on device by the container's live processes (reclaims dead ones first). */
uint64_t gs_state_used(int device);
/* Registers this process in the container (its pid is metered as the container's). */
void gs_state_register(void);
/* The pid NVML knows this process by (learnt when it created a context), or getpid(). */
unsigned gs_state_host_pid(void);
void gs_state_set_host_pid(unsigned pid);
/* Pids (as NVML reports them) of the container's registered processes; returns how many. */
int gs_state_pids(unsigned *pids, int max);
/* The device slot, for the lock-free token bucket. */
struct gs_device_slot *gs_state_device(int device);
/* After fork, in the child: the child gets its own slot on its first charge. */
void gs_state_atfork_child(void);

#endif
