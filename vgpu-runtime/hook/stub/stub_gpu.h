/* The shared-GPU model behind the stub driver and stub NVML: physical devices shared by every
 * process that maps the same model file (GPUSHARE_STUB_GPU; without it each process has a
 * private device). Time is real time (CLOCK_MONOTONIC). The model's state lives in shared
 * memory under one process-shared robust mutex and is advanced lazily by whichever process
 * calls in. Internal to the stub libcuda.so.1; see docs/hook.md ("The shared-GPU model"). */
#ifndef GPUSHARE_STUB_GPU_H
#define GPUSHARE_STUB_GPU_H

#include <stdint.h>

#define GPU_DEVICES 4
#define GPU_STREAMS 512
#define GPU_DEPTH 512      /* kernels queued per stream (a launch queue's depth) */
#define GPU_DONE_RING 4096 /* completion times kept per stream, for events */
#define GPU_PROCS 64
#define GPU_TENANTS 8
#define GPU_SNAPSHOTS 32
#define GPU_SM_FULL 1000   /* SM fraction in thousandths */

struct gpu_kernel {
  int64_t duration_ns;
  int64_t submit_ns;
  int64_t start_ns; /* 0: not started */
  int32_t sm_milli;
  int32_t pad;
  uint64_t seq;
};

struct gpu_stream {
  int32_t in_use;     /* 0 free, 1 open, 2 destroyed but still draining */
  int32_t device;
  int32_t proc;       /* index into procs */
  uint32_t generation;
  uint64_t submitted; /* kernels ever queued */
  uint64_t completed; /* kernels ever completed (FIFO: completion is in order) */
  uint32_t head, count;
  struct gpu_kernel ring[GPU_DEPTH];
  int64_t done_ns[GPU_DONE_RING]; /* completion time of kernel number n at n % GPU_DONE_RING */
};

struct gpu_proc {
  int32_t pid;
  int32_t tenant;
  int32_t nvml_pid;   /* the pid NVML reports: pid + GPUSHARE_STUB_PID_OFFSET (a PID namespace) */
  int32_t pad;
  int64_t sm_ns[GPU_DEVICES]; /* SM-time of completed kernels (ns x fraction) */
  int64_t mem_bytes[GPU_DEVICES];
};

struct gpu_device {
  int32_t sm_used_milli;
  int32_t running;    /* kernels running */
  int64_t busy_ns;    /* time with at least one kernel running */
  uint64_t capacity_bytes;
  uint64_t used_bytes;
};

struct gpu_tenant {
  int64_t sm_ns[GPU_DEVICES]; /* ground truth: SM-time received (completed kernels) */
  int64_t mem_bytes[GPU_DEVICES];
  int64_t mem_peak[GPU_DEVICES];
};

struct gpu_snapshot { /* per-process SM-time at a time NVML reported (for lastSeenTimeStamp) */
  uint64_t at_us;
  int64_t at_ns;
  int32_t device;
  int32_t pad;
  int64_t sm_ns[GPU_PROCS];
};

struct gpu_model {
  uint64_t magic;
  union {
    uint8_t bytes[64];
    long align;
  } lock;
  int64_t sim_ns;     /* simulated up to here */
  uint64_t seq;
  int32_t device_count;
  int32_t stream_high;
  struct gpu_device devices[GPU_DEVICES];
  struct gpu_tenant tenants[GPU_TENANTS];
  struct gpu_proc procs[GPU_PROCS];
  struct gpu_snapshot snapshots[GPU_SNAPSHOTS];
  uint32_t snapshot_next;
  struct gpu_stream streams[GPU_STREAMS];
};

/* All functions below take the model lock themselves unless named _locked. */
struct gpu_model *gpu_model(void);
int gpu_proc_index(void);
int64_t gpu_now_ns(void);
void gpu_lock(void);
void gpu_unlock(void);
void gpu_advance_locked(int64_t now);

/* Streams: returns a slot or -1. */
int gpu_stream_open(int device);
void gpu_stream_close(int slot);
/* Queues kernels (durations/SM fractions) on a stream; blocks (sleeping) while the queue is full. */
int gpu_enqueue(int slot, const int64_t *duration_ns, const int32_t *sm_milli, int n);
/* The stream's submitted count now (an event's target). */
uint64_t gpu_stream_position(int slot, uint32_t *generation);
/* 1 with *at_ns when kernel number `target` of the stream has completed (or target is 0). */
int gpu_position_done(int slot, uint32_t generation, uint64_t target, int64_t *at_ns);
/* Sleeps until the stream reaches target. */
void gpu_wait_position(int slot, uint32_t generation, uint64_t target);

/* Memory: physical use of this process on device; -1 when it does not fit. */
int gpu_mem_take(int device, uint64_t bytes);
void gpu_mem_give(int device, uint64_t bytes);

/* Ground truth and NVML figures. */
int64_t gpu_tenant_sm_ns(int tenant, int device);
int64_t gpu_device_busy_ns(int device);

#endif
