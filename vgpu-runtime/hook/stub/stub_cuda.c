/* Stub CUDA driver (libcuda.so.1) over the shared-GPU model (stub_gpu.c): a stand-in that
 * behaves like one physical GPU shared by every process loading it with the same
 * GPUSHARE_STUB_GPU file, for testing the hook without a GPU.
 *
 * - Kernels carry a duration and an SM fraction. A function's name declares them:
 *   "<name>_<N>ns|us|ms" and optionally "_sm<P>" (P percent of the SMs, default 100); a
 *   function whose name starts with "dyn" takes them from its launch parameters (params[0]
 *   int64 nanoseconds, params[1] int32 percent). GPUSHARE_STUB_JITTER_PERCENT varies every
 *   launch's duration uniformly by up to that many percent.
 * - Kernels of different streams and processes overlap while their SM fractions fit and queue
 *   when they do not; a stream runs its kernels in order; events complete when the device gets
 *   there; synchronisation sleeps until then. A stream holds at most 512 pending kernels.
 * - Memory is physical memory of the shared device: contexts cost GPUSHARE_STUB_CONTEXT_BYTES
 *   (default 256 MiB), modules GPUSHARE_STUB_MODULE_BYTES (default 1 MiB); stream-ordered pools
 *   keep freed memory until cuMemPoolTrimTo; VMM handles hold memory until released and
 *   unmapped; cuCtxDestroy frees the context's memory; a process that exits frees its memory.
 * - CUDA_VISIBLE_DEVICES (indices) maps CUDA ordinals to physical devices, as the driver does;
 *   NVML indexes physical devices.
 */
#define _GNU_SOURCE
#define __CUDA_API_VERSION_INTERNAL 1
#include <cuda.h>

#include <errno.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "gpushare_stub.h"
#include "stub_gpu.h"

#define STUB_EXPORT __attribute__((visibility("default")))
#define STUB_MAX_DEVICES GPU_DEVICES
#define STUB_ALLOC_BUCKETS 65536
#define STUB_GRAPH_NODES 64

static __thread const char *last_call = "";
static __thread const char *last_launch = "";
#define ENTRY(name) (last_call = #name)
static __thread const char *last_record = "";
#define LAUNCH_ENTRY(name) (last_call = last_launch = #name)
#define RECORD_ENTRY(name) (last_call = last_record = #name)

int gpu_process_util(int device, uint64_t last_seen_us, uint64_t *now_us, unsigned *pids, unsigned *sm_percent,
                     int max);
int gpu_process_memory(int device, unsigned *pids, uint64_t *bytes, int max);

STUB_EXPORT int64_t gpushareStubNowNs(void) { return gpu_now_ns(); }

static uint64_t env_u64(const char *name, uint64_t fallback) {
  const char *text = getenv(name);
  if (text == NULL || *text == '\0') return fallback;
  char *end = NULL;
  unsigned long long value = strtoull(text, &end, 10);
  return (end != NULL && *end == '\0') ? value : fallback;
}

/* ---- devices and contexts ---- */

struct stub_ctx {
  int device;   /* CUDA ordinal */
  int physical; /* model device */
  int refs;     /* primary contexts: retain count */
  uint64_t overhead;
};

static pthread_once_t stub_once = PTHREAD_ONCE_INIT;
static int device_count = 1;
static int physical_of_ordinal[STUB_MAX_DEVICES];
static uint64_t context_bytes, module_bytes;
static int jitter_percent;
static int initialised;
static pthread_mutex_t mem_lock = PTHREAD_MUTEX_INITIALIZER;
static uint64_t next_address[STUB_MAX_DEVICES];
static struct stub_ctx primary[STUB_MAX_DEVICES];
static __thread struct stub_ctx *current_ctx;

static void stub_setup(void) {
  struct gpu_model *m = gpu_model();
  device_count = m->device_count;
  for (int i = 0; i < STUB_MAX_DEVICES; i++) physical_of_ordinal[i] = i;
  const char *visible = getenv("CUDA_VISIBLE_DEVICES");
  if (visible != NULL && *visible != '\0') {
    int n = 0;
    const char *p = visible;
    while (*p != '\0' && n < STUB_MAX_DEVICES) {
      char *end;
      long v = strtol(p, &end, 10);
      if (end == p || v < 0 || v >= m->device_count) break; /* as the driver: stop at the first invalid */
      physical_of_ordinal[n++] = (int)v;
      p = *end == ',' ? end + 1 : end;
      if (*end != ',') break;
    }
    device_count = n;
  }
  context_bytes = env_u64("GPUSHARE_STUB_CONTEXT_BYTES", 256ULL << 20);
  module_bytes = env_u64("GPUSHARE_STUB_MODULE_BYTES", 1ULL << 20);
  jitter_percent = (int)env_u64("GPUSHARE_STUB_JITTER_PERCENT", 0);
  for (int i = 0; i < STUB_MAX_DEVICES; i++) {
    primary[i].device = i;
    primary[i].physical = physical_of_ordinal[i];
    next_address[i] = 0x700000000000ULL + ((uint64_t)i << 40);
  }
}

static CUresult need_init(void) {
  pthread_once(&stub_once, stub_setup);
  return initialised ? CUDA_SUCCESS : CUDA_ERROR_NOT_INITIALIZED;
}

static CUresult need_ctx(int *device) {
  CUresult rc = need_init();
  if (rc != CUDA_SUCCESS) return rc;
  if (current_ctx == NULL) return CUDA_ERROR_INVALID_CONTEXT;
  *device = current_ctx->device;
  return CUDA_SUCCESS;
}

STUB_EXPORT CUresult cuInit(unsigned int flags) {
  ENTRY(cuInit);
  pthread_once(&stub_once, stub_setup);
  if (flags != 0) return CUDA_ERROR_INVALID_VALUE;
  if (device_count == 0) return CUDA_ERROR_NO_DEVICE;
  initialised = 1;
  return CUDA_SUCCESS;
}

STUB_EXPORT CUresult cuDriverGetVersion(int *version) {
  ENTRY(cuDriverGetVersion);
  if (version == NULL) return CUDA_ERROR_INVALID_VALUE;
  *version = 13000;
  return CUDA_SUCCESS;
}

STUB_EXPORT CUresult cuDeviceGetCount(int *count) {
  ENTRY(cuDeviceGetCount);
  CUresult rc = need_init();
  if (rc != CUDA_SUCCESS) return rc;
  *count = device_count;
  return CUDA_SUCCESS;
}

STUB_EXPORT CUresult cuDeviceGet(CUdevice *device, int ordinal) {
  ENTRY(cuDeviceGet);
  CUresult rc = need_init();
  if (rc != CUDA_SUCCESS) return rc;
  if (ordinal < 0 || ordinal >= device_count) return CUDA_ERROR_INVALID_DEVICE;
  *device = ordinal;
  return CUDA_SUCCESS;
}

STUB_EXPORT CUresult cuDeviceGetName(char *name, int len, CUdevice dev) {
  ENTRY(cuDeviceGetName);
  CUresult rc = need_init();
  if (rc != CUDA_SUCCESS) return rc;
  if (dev < 0 || dev >= device_count || name == NULL || len <= 0) return CUDA_ERROR_INVALID_VALUE;
  strncpy(name, "gpushare simulated GPU", (size_t)len - 1);
  name[len - 1] = '\0';
  return CUDA_SUCCESS;
}

/* Physical device i has the UUID 5eed0000-0000-0000-0000-0000000000ii. */
STUB_EXPORT CUresult cuDeviceGetUuid_v2(CUuuid *uuid, CUdevice dev) {
  ENTRY(cuDeviceGetUuid_v2);
  CUresult rc = need_init();
  if (rc != CUDA_SUCCESS) return rc;
  if (uuid == NULL || dev < 0 || dev >= device_count) return CUDA_ERROR_INVALID_VALUE;
  memset(uuid->bytes, 0, sizeof uuid->bytes);
  uuid->bytes[0] = 0x5e;
  uuid->bytes[1] = (char)0xed;
  uuid->bytes[15] = (char)physical_of_ordinal[dev];
  return CUDA_SUCCESS;
}

STUB_EXPORT CUresult cuDeviceGetUuid(CUuuid *uuid, CUdevice dev) {
  ENTRY(cuDeviceGetUuid);
  return cuDeviceGetUuid_v2(uuid, dev);
}

STUB_EXPORT CUresult cuDeviceTotalMem_v2(size_t *bytes, CUdevice dev) {
  ENTRY(cuDeviceTotalMem_v2);
  CUresult rc = need_init();
  if (rc != CUDA_SUCCESS) return rc;
  if (dev < 0 || dev >= device_count) return CUDA_ERROR_INVALID_DEVICE;
  *bytes = gpu_model()->devices[physical_of_ordinal[dev]].capacity_bytes;
  return CUDA_SUCCESS;
}

STUB_EXPORT CUresult cuDeviceGetAttribute(int *value, CUdevice_attribute attrib, CUdevice dev) {
  ENTRY(cuDeviceGetAttribute);
  CUresult rc = need_init();
  if (rc != CUDA_SUCCESS) return rc;
  if (dev < 0 || dev >= device_count || value == NULL) return CUDA_ERROR_INVALID_VALUE;
  switch (attrib) {
    case CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT: *value = 108; break;
    case CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR: *value = 8; break;
    case CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR: *value = 0; break;
    default: *value = 0; break;
  }
  return CUDA_SUCCESS;
}

static void free_context_memory(struct stub_ctx *ctx);

STUB_EXPORT CUresult cuDevicePrimaryCtxRetain(CUcontext *pctx, CUdevice dev) {
  ENTRY(cuDevicePrimaryCtxRetain);
  CUresult rc = need_init();
  if (rc != CUDA_SUCCESS) return rc;
  if (dev < 0 || dev >= device_count || pctx == NULL) return CUDA_ERROR_INVALID_DEVICE;
  pthread_mutex_lock(&mem_lock);
  struct stub_ctx *ctx = &primary[dev];
  if (ctx->refs == 0) {
    if (gpu_mem_take(ctx->physical, context_bytes) != 0) {
      pthread_mutex_unlock(&mem_lock);
      return CUDA_ERROR_OUT_OF_MEMORY;
    }
    ctx->overhead = context_bytes;
  }
  ctx->refs++;
  pthread_mutex_unlock(&mem_lock);
  *pctx = (CUcontext)ctx;
  return CUDA_SUCCESS;
}

STUB_EXPORT CUresult cuDevicePrimaryCtxReset_v2(CUdevice dev) {
  ENTRY(cuDevicePrimaryCtxReset_v2);
  if (dev < 0 || dev >= device_count) return CUDA_ERROR_INVALID_DEVICE;
  pthread_mutex_lock(&mem_lock);
  int held = primary[dev].refs > 0;
  primary[dev].refs = 0;
  pthread_mutex_unlock(&mem_lock);
  if (held) free_context_memory(&primary[dev]);
  return CUDA_SUCCESS;
}

STUB_EXPORT CUresult cuDevicePrimaryCtxRelease_v2(CUdevice dev) {
  ENTRY(cuDevicePrimaryCtxRelease_v2);
  if (dev < 0 || dev >= device_count) return CUDA_ERROR_INVALID_DEVICE;
  pthread_mutex_lock(&mem_lock);
  struct stub_ctx *ctx = &primary[dev];
  int last = ctx->refs > 0 && --ctx->refs == 0;
  pthread_mutex_unlock(&mem_lock);
  if (last) free_context_memory(ctx);
  return CUDA_SUCCESS;
}

static CUresult ctx_create(CUcontext *pctx, CUdevice dev) {
  CUresult rc = need_init();
  if (rc != CUDA_SUCCESS) return rc;
  if (dev < 0 || dev >= device_count) return CUDA_ERROR_INVALID_DEVICE;
  struct stub_ctx *ctx = calloc(1, sizeof *ctx);
  if (ctx == NULL) return CUDA_ERROR_OUT_OF_MEMORY;
  ctx->device = dev;
  ctx->physical = physical_of_ordinal[dev];
  if (gpu_mem_take(ctx->physical, context_bytes) != 0) {
    free(ctx);
    return CUDA_ERROR_OUT_OF_MEMORY;
  }
  ctx->overhead = context_bytes;
  current_ctx = ctx;
  *pctx = (CUcontext)ctx;
  return CUDA_SUCCESS;
}

STUB_EXPORT CUresult cuCtxCreate_v2(CUcontext *pctx, unsigned int flags, CUdevice dev) {
  ENTRY(cuCtxCreate_v2);
  (void)flags;
  return ctx_create(pctx, dev);
}

STUB_EXPORT CUresult cuCtxCreate_v4(CUcontext *pctx, CUctxCreateParams *params, unsigned int flags,
                                    CUdevice dev) {
  ENTRY(cuCtxCreate_v4);
  (void)params;
  (void)flags;
  return ctx_create(pctx, dev);
}

STUB_EXPORT CUresult cuCtxDestroy_v2(CUcontext ctx) {
  ENTRY(cuCtxDestroy_v2);
  struct stub_ctx *c = (struct stub_ctx *)ctx;
  if (c == NULL) return CUDA_ERROR_INVALID_VALUE;
  if (current_ctx == c) current_ctx = NULL;
  free_context_memory(c);
  if (c < &primary[0] || c > &primary[STUB_MAX_DEVICES - 1]) free(c);
  else c->refs = 0;
  return CUDA_SUCCESS;
}

STUB_EXPORT CUresult cuCtxSetCurrent(CUcontext ctx) {
  ENTRY(cuCtxSetCurrent);
  CUresult rc = need_init();
  if (rc != CUDA_SUCCESS) return rc;
  current_ctx = (struct stub_ctx *)ctx;
  return CUDA_SUCCESS;
}

STUB_EXPORT CUresult cuCtxGetCurrent(CUcontext *pctx) {
  ENTRY(cuCtxGetCurrent);
  CUresult rc = need_init();
  if (rc != CUDA_SUCCESS) return rc;
  *pctx = (CUcontext)current_ctx;
  return CUDA_SUCCESS;
}

STUB_EXPORT CUresult cuCtxGetDevice(CUdevice *device) {
  ENTRY(cuCtxGetDevice);
  int dev;
  CUresult rc = need_ctx(&dev);
  if (rc != CUDA_SUCCESS) return rc;
  *device = dev;
  return CUDA_SUCCESS;
}

static int physical_device(void) { return current_ctx ? current_ctx->physical : 0; }

/* ---- memory ---- */

enum alloc_kind { KIND_POINTER, KIND_ARRAY, KIND_HANDLE, KIND_MAPPING };

struct stub_pool {
  int device; /* physical */
  uint64_t reserved, used;
};

struct allocation {
  uint64_t key;
  uint64_t bytes;    /* physical bytes this record holds (0 for pool allocations) */
  uint64_t size;     /* requested size */
  int device;        /* physical */
  int kind;
  struct stub_ctx *ctx;
  struct stub_pool *pool;
  uint64_t handle;   /* KIND_MAPPING: the handle mapped */
  int mapped;        /* KIND_HANDLE: mappings alive */
  int released;      /* KIND_HANDLE: cuMemRelease called */
  struct allocation *next;
};

static struct allocation *alloc_table[STUB_ALLOC_BUCKETS];
static struct stub_pool default_pool[STUB_MAX_DEVICES];

static size_t bucket_of(uint64_t key, int kind) {
  uint64_t h = (key ^ (uint64_t)kind) * 0x9E3779B97F4A7C15ULL;
  return (size_t)(h >> 48) % STUB_ALLOC_BUCKETS;
}

STUB_EXPORT uint64_t gpushareStubMemUsed(int device) {
  if (device < 0 || device >= STUB_MAX_DEVICES) return 0;
  struct gpu_model *m = gpu_model();
  int proc = gpu_proc_index();
  gpu_lock();
  uint64_t used = (uint64_t)m->procs[proc].mem_bytes[device];
  gpu_unlock();
  return used;
}

/* Caller holds mem_lock. */
static struct allocation *find_locked(uint64_t key, int kind, struct allocation ***link_out) {
  struct allocation **link = &alloc_table[bucket_of(key, kind)];
  while (*link != NULL && !((*link)->key == key && (*link)->kind == kind)) link = &(*link)->next;
  if (link_out != NULL) *link_out = link;
  return *link;
}

static void insert_locked(struct allocation *a) {
  size_t b = bucket_of(a->key, a->kind);
  a->next = alloc_table[b];
  alloc_table[b] = a;
}

/* Takes `physical` bytes of device memory and records an allocation of `size` under a new key. */
static CUresult mem_take(int device, uint64_t physical, uint64_t size, int kind, struct stub_pool *pool,
                         uint64_t *key_out) {
  if (size == 0) return CUDA_ERROR_INVALID_VALUE;
  struct allocation *a = calloc(1, sizeof *a);
  if (a == NULL) return CUDA_ERROR_OUT_OF_MEMORY;
  if (physical > 0 && gpu_mem_take(device, physical) != 0) {
    free(a);
    return CUDA_ERROR_OUT_OF_MEMORY;
  }
  pthread_mutex_lock(&mem_lock);
  uint64_t key = next_address[device];
  next_address[device] += (size + 511) & ~511ULL;
  *a = (struct allocation){.key = key, .bytes = physical, .size = size, .device = device, .kind = kind,
                           .ctx = current_ctx, .pool = pool};
  insert_locked(a);
  pthread_mutex_unlock(&mem_lock);
  *key_out = key;
  return CUDA_SUCCESS;
}

static CUresult mem_give(uint64_t key, int kind) {
  pthread_mutex_lock(&mem_lock);
  struct allocation **link;
  struct allocation *a = find_locked(key, kind, &link);
  if (a == NULL) {
    pthread_mutex_unlock(&mem_lock);
    return CUDA_ERROR_INVALID_VALUE;
  }
  if (kind == KIND_HANDLE && a->mapped > 0) { /* still mapped: freed at the last unmap */
    a->released = 1;
    pthread_mutex_unlock(&mem_lock);
    return CUDA_SUCCESS;
  }
  *link = a->next;
  if (a->pool != NULL) a->pool->used -= a->size; /* back to the pool, which keeps it */
  pthread_mutex_unlock(&mem_lock);
  if (a->bytes > 0) gpu_mem_give(a->device, a->bytes);
  free(a);
  return CUDA_SUCCESS;
}

static void free_context_memory(struct stub_ctx *ctx) {
  uint64_t freed[STUB_MAX_DEVICES] = {0};
  pthread_mutex_lock(&mem_lock);
  for (size_t b = 0; b < STUB_ALLOC_BUCKETS; b++) {
    struct allocation **link = &alloc_table[b];
    while (*link != NULL) {
      struct allocation *a = *link;
      if (a->ctx == ctx && a->kind != KIND_HANDLE) {
        *link = a->next;
        if (a->pool != NULL) a->pool->used -= a->size;
        freed[a->device] += a->bytes;
        free(a);
      } else {
        link = &a->next;
      }
    }
  }
  pthread_mutex_unlock(&mem_lock);
  for (int d = 0; d < STUB_MAX_DEVICES; d++)
    if (freed[d] > 0) gpu_mem_give(d, freed[d]);
  if (ctx->overhead > 0) gpu_mem_give(ctx->physical, ctx->overhead);
  ctx->overhead = 0;
}

static CUresult alloc_pointer(CUdeviceptr *dptr, size_t bytes) {
  int dev;
  CUresult rc = need_ctx(&dev);
  if (rc != CUDA_SUCCESS) return rc;
  if (dptr == NULL) return CUDA_ERROR_INVALID_VALUE;
  uint64_t key;
  rc = mem_take(physical_device(), bytes, bytes, KIND_POINTER, NULL, &key);
  if (rc == CUDA_SUCCESS) *dptr = (CUdeviceptr)key;
  return rc;
}

/* A stream-ordered allocation: reuses what the pool holds, grows it by the rest. */
static CUresult alloc_from_pool(CUdeviceptr *dptr, size_t bytes, struct stub_pool *pool) {
  int dev;
  CUresult rc = need_ctx(&dev);
  if (rc != CUDA_SUCCESS) return rc;
  if (dptr == NULL || bytes == 0) return CUDA_ERROR_INVALID_VALUE;
  if (pool == NULL) pool = &default_pool[dev];
  pthread_mutex_lock(&mem_lock);
  uint64_t spare = pool->reserved - pool->used, grow = bytes > spare ? bytes - spare : 0;
  pthread_mutex_unlock(&mem_lock);
  if (grow > 0 && gpu_mem_take(pool->device, grow) != 0) return CUDA_ERROR_OUT_OF_MEMORY;
  uint64_t key;
  rc = mem_take(pool->device, 0, bytes, KIND_POINTER, pool, &key);
  if (rc != CUDA_SUCCESS) {
    if (grow > 0) gpu_mem_give(pool->device, grow);
    return rc;
  }
  pthread_mutex_lock(&mem_lock);
  pool->reserved += grow;
  pool->used += bytes;
  pthread_mutex_unlock(&mem_lock);
  *dptr = (CUdeviceptr)key;
  return CUDA_SUCCESS;
}

STUB_EXPORT CUresult cuMemAlloc_v2(CUdeviceptr *dptr, size_t bytes) {
  ENTRY(cuMemAlloc_v2);
  return alloc_pointer(dptr, bytes);
}

STUB_EXPORT CUresult cuMemAllocPitch_v2(CUdeviceptr *dptr, size_t *pitch, size_t width, size_t height,
                                        unsigned int element_bytes) {
  ENTRY(cuMemAllocPitch_v2);
  if (pitch == NULL || (element_bytes != 4 && element_bytes != 8 && element_bytes != 16))
    return CUDA_ERROR_INVALID_VALUE;
  size_t p = (width + 511) & ~(size_t)511;
  CUresult rc = alloc_pointer(dptr, p * height);
  if (rc == CUDA_SUCCESS) *pitch = p;
  return rc;
}

STUB_EXPORT CUresult cuMemAllocManaged(CUdeviceptr *dptr, size_t bytes, unsigned int flags) {
  ENTRY(cuMemAllocManaged);
  (void)flags;
  return alloc_pointer(dptr, bytes);
}

STUB_EXPORT CUresult cuMemAllocAsync(CUdeviceptr *dptr, size_t bytes, CUstream stream) {
  ENTRY(cuMemAllocAsync);
  (void)stream;
  return alloc_from_pool(dptr, bytes, NULL);
}

STUB_EXPORT CUresult cuMemAllocAsync_ptsz(CUdeviceptr *dptr, size_t bytes, CUstream stream) {
  ENTRY(cuMemAllocAsync_ptsz);
  (void)stream;
  return alloc_from_pool(dptr, bytes, NULL);
}

STUB_EXPORT CUresult cuMemAllocFromPoolAsync(CUdeviceptr *dptr, size_t bytes, CUmemoryPool pool,
                                             CUstream stream) {
  ENTRY(cuMemAllocFromPoolAsync);
  (void)stream;
  return alloc_from_pool(dptr, bytes, (struct stub_pool *)pool);
}

STUB_EXPORT CUresult cuMemAllocFromPoolAsync_ptsz(CUdeviceptr *dptr, size_t bytes, CUmemoryPool pool,
                                                  CUstream stream) {
  ENTRY(cuMemAllocFromPoolAsync_ptsz);
  (void)stream;
  return alloc_from_pool(dptr, bytes, (struct stub_pool *)pool);
}

STUB_EXPORT CUresult cuMemFree_v2(CUdeviceptr dptr) {
  ENTRY(cuMemFree_v2);
  if (dptr == 0) return CUDA_SUCCESS;
  return mem_give((uint64_t)dptr, KIND_POINTER);
}

STUB_EXPORT CUresult cuMemFreeAsync(CUdeviceptr dptr, CUstream stream) {
  ENTRY(cuMemFreeAsync);
  (void)stream;
  return mem_give((uint64_t)dptr, KIND_POINTER);
}

STUB_EXPORT CUresult cuMemFreeAsync_ptsz(CUdeviceptr dptr, CUstream stream) {
  ENTRY(cuMemFreeAsync_ptsz);
  (void)stream;
  return mem_give((uint64_t)dptr, KIND_POINTER);
}

STUB_EXPORT CUresult cuDeviceGetDefaultMemPool(CUmemoryPool *pool, CUdevice dev) {
  ENTRY(cuDeviceGetDefaultMemPool);
  CUresult rc = need_init();
  if (rc != CUDA_SUCCESS) return rc;
  if (pool == NULL || dev < 0 || dev >= device_count) return CUDA_ERROR_INVALID_VALUE;
  default_pool[dev].device = physical_of_ordinal[dev];
  *pool = (CUmemoryPool)&default_pool[dev];
  return CUDA_SUCCESS;
}

STUB_EXPORT CUresult cuDeviceGetMemPool(CUmemoryPool *pool, CUdevice dev) {
  ENTRY(cuDeviceGetMemPool);
  return cuDeviceGetDefaultMemPool(pool, dev);
}

STUB_EXPORT CUresult cuMemPoolCreate(CUmemoryPool *pool, const CUmemPoolProps *props) {
  ENTRY(cuMemPoolCreate);
  CUresult rc = need_init();
  if (rc != CUDA_SUCCESS) return rc;
  if (pool == NULL || props == NULL || props->location.id < 0 || props->location.id >= device_count)
    return CUDA_ERROR_INVALID_VALUE;
  struct stub_pool *p = calloc(1, sizeof *p);
  if (p == NULL) return CUDA_ERROR_OUT_OF_MEMORY;
  p->device = physical_of_ordinal[props->location.id];
  *pool = (CUmemoryPool)p;
  return CUDA_SUCCESS;
}

STUB_EXPORT CUresult cuMemPoolDestroy(CUmemoryPool pool) {
  ENTRY(cuMemPoolDestroy);
  struct stub_pool *p = (struct stub_pool *)pool;
  if (p == NULL) return CUDA_ERROR_INVALID_VALUE;
  pthread_mutex_lock(&mem_lock);
  uint64_t release = p->reserved;
  p->reserved = 0;
  pthread_mutex_unlock(&mem_lock);
  if (release > 0) gpu_mem_give(p->device, release);
  if (p < &default_pool[0] || p > &default_pool[STUB_MAX_DEVICES - 1]) free(p);
  return CUDA_SUCCESS;
}

STUB_EXPORT CUresult cuMemPoolTrimTo(CUmemoryPool pool, size_t keep) {
  ENTRY(cuMemPoolTrimTo);
  struct stub_pool *p = (struct stub_pool *)pool;
  if (p == NULL) return CUDA_ERROR_INVALID_VALUE;
  pthread_mutex_lock(&mem_lock);
  uint64_t floor = p->used > keep ? p->used : keep, release = p->reserved > floor ? p->reserved - floor : 0;
  p->reserved -= release;
  pthread_mutex_unlock(&mem_lock);
  if (release > 0) gpu_mem_give(p->device, release);
  return CUDA_SUCCESS;
}

STUB_EXPORT CUresult cuMemPoolGetAttribute(CUmemoryPool pool, CUmemPool_attribute attr, void *value) {
  ENTRY(cuMemPoolGetAttribute);
  struct stub_pool *p = (struct stub_pool *)pool;
  if (p == NULL || value == NULL) return CUDA_ERROR_INVALID_VALUE;
  pthread_mutex_lock(&mem_lock);
  CUresult rc = CUDA_SUCCESS;
  if (attr == CU_MEMPOOL_ATTR_RESERVED_MEM_CURRENT) *(cuuint64_t *)value = p->reserved;
  else if (attr == CU_MEMPOOL_ATTR_USED_MEM_CURRENT) *(cuuint64_t *)value = p->used;
  else rc = CUDA_ERROR_INVALID_VALUE;
  pthread_mutex_unlock(&mem_lock);
  return rc;
}

STUB_EXPORT CUresult cuMemGetInfo_v2(size_t *free_bytes, size_t *total_bytes) {
  ENTRY(cuMemGetInfo_v2);
  int dev;
  CUresult rc = need_ctx(&dev);
  if (rc != CUDA_SUCCESS) return rc;
  struct gpu_model *m = gpu_model();
  gpu_lock();
  struct gpu_device *d = &m->devices[physical_device()];
  *free_bytes = d->capacity_bytes - d->used_bytes;
  *total_bytes = d->capacity_bytes;
  gpu_unlock();
  return CUDA_SUCCESS;
}

/* ---- virtual memory management ---- */

STUB_EXPORT CUresult cuMemCreate(CUmemGenericAllocationHandle *handle, size_t bytes,
                                 const CUmemAllocationProp *prop, unsigned long long flags) {
  ENTRY(cuMemCreate);
  (void)flags;
  CUresult rc = need_init();
  if (rc != CUDA_SUCCESS) return rc;
  if (handle == NULL || prop == NULL) return CUDA_ERROR_INVALID_VALUE;
  if (prop->location.type == CU_MEM_LOCATION_TYPE_DEVICE) {
    if (prop->location.id < 0 || prop->location.id >= device_count) return CUDA_ERROR_INVALID_DEVICE;
    int physical = physical_of_ordinal[prop->location.id];
    uint64_t key;
    rc = mem_take(physical, bytes, bytes, KIND_HANDLE, NULL, &key);
    if (rc == CUDA_SUCCESS) *handle = key;
    return rc;
  }
  /* Host-located: a handle outside every device's range, no device memory. */
  static uint64_t next_host_handle = 1;
  pthread_mutex_lock(&mem_lock);
  *handle = next_host_handle++;
  pthread_mutex_unlock(&mem_lock);
  return CUDA_SUCCESS;
}

STUB_EXPORT CUresult cuMemRelease(CUmemGenericAllocationHandle handle) {
  ENTRY(cuMemRelease);
  if (handle < 0x700000000000ULL) return CUDA_SUCCESS; /* host-located */
  return mem_give(handle, KIND_HANDLE);
}

STUB_EXPORT CUresult cuMemAddressReserve(CUdeviceptr *ptr, size_t size, size_t alignment, CUdeviceptr addr,
                                         unsigned long long flags) {
  ENTRY(cuMemAddressReserve);
  (void)alignment, (void)addr, (void)flags;
  if (ptr == NULL || size == 0) return CUDA_ERROR_INVALID_VALUE;
  static uint64_t next_va = 0x7f0000000000ULL;
  pthread_mutex_lock(&mem_lock);
  *ptr = (CUdeviceptr)next_va;
  next_va += (size + 0xfffff) & ~0xfffffULL;
  pthread_mutex_unlock(&mem_lock);
  return CUDA_SUCCESS;
}

STUB_EXPORT CUresult cuMemAddressFree(CUdeviceptr ptr, size_t size) {
  ENTRY(cuMemAddressFree);
  (void)ptr, (void)size;
  return CUDA_SUCCESS;
}

STUB_EXPORT CUresult cuMemMap(CUdeviceptr ptr, size_t size, size_t offset, CUmemGenericAllocationHandle handle,
                              unsigned long long flags) {
  ENTRY(cuMemMap);
  (void)offset, (void)flags;
  struct allocation *m = calloc(1, sizeof *m);
  if (m == NULL) return CUDA_ERROR_OUT_OF_MEMORY;
  pthread_mutex_lock(&mem_lock);
  struct allocation *h = find_locked(handle, KIND_HANDLE, NULL);
  if (h == NULL || h->released || find_locked((uint64_t)ptr, KIND_MAPPING, NULL) != NULL) {
    pthread_mutex_unlock(&mem_lock);
    free(m);
    return CUDA_ERROR_INVALID_VALUE;
  }
  h->mapped++;
  *m = (struct allocation){.key = (uint64_t)ptr, .size = size, .kind = KIND_MAPPING, .handle = handle};
  insert_locked(m);
  pthread_mutex_unlock(&mem_lock);
  return CUDA_SUCCESS;
}

STUB_EXPORT CUresult cuMemUnmap(CUdeviceptr ptr, size_t size) {
  ENTRY(cuMemUnmap);
  (void)size;
  pthread_mutex_lock(&mem_lock);
  struct allocation **link;
  struct allocation *m = find_locked((uint64_t)ptr, KIND_MAPPING, &link);
  if (m == NULL) {
    pthread_mutex_unlock(&mem_lock);
    return CUDA_ERROR_INVALID_VALUE;
  }
  *link = m->next;
  struct allocation **hlink;
  struct allocation *h = find_locked(m->handle, KIND_HANDLE, &hlink);
  uint64_t freed = 0;
  int device = 0;
  if (h != NULL && --h->mapped == 0 && h->released) {
    *hlink = h->next;
    freed = h->bytes;
    device = h->device;
    free(h);
  }
  pthread_mutex_unlock(&mem_lock);
  free(m);
  if (freed > 0) gpu_mem_give(device, freed);
  return CUDA_SUCCESS;
}

/* ---- arrays ---- */

static size_t format_bytes(CUarray_format format) {
  switch (format) {
    case CU_AD_FORMAT_UNSIGNED_INT8:
    case CU_AD_FORMAT_SIGNED_INT8: return 1;
    case CU_AD_FORMAT_UNSIGNED_INT16:
    case CU_AD_FORMAT_SIGNED_INT16:
    case CU_AD_FORMAT_HALF: return 2;
    default: return 4;
  }
}

static CUresult array_take(void *handle_out, uint64_t bytes) {
  int dev;
  CUresult rc = need_ctx(&dev);
  if (rc != CUDA_SUCCESS) return rc;
  uint64_t key;
  rc = mem_take(physical_device(), bytes, bytes, KIND_ARRAY, NULL, &key);
  if (rc == CUDA_SUCCESS) memcpy(handle_out, &key, sizeof key);
  return rc;
}
STUB_EXPORT CUresult cuArrayCreate_v2(CUarray *handle, const CUDA_ARRAY_DESCRIPTOR *desc) {
  ENTRY(cuArrayCreate_v2);
  if (handle == NULL || desc == NULL) return CUDA_ERROR_INVALID_VALUE;
  uint64_t h = desc->Height ? desc->Height : 1;
  return array_take(handle, desc->Width * h * desc->NumChannels * format_bytes(desc->Format));
}

STUB_EXPORT CUresult cuArray3DCreate_v2(CUarray *handle, const CUDA_ARRAY3D_DESCRIPTOR *desc) {
  ENTRY(cuArray3DCreate_v2);
  if (handle == NULL || desc == NULL) return CUDA_ERROR_INVALID_VALUE;
  uint64_t h = desc->Height ? desc->Height : 1, d = desc->Depth ? desc->Depth : 1;
  return array_take(handle, desc->Width * h * d * desc->NumChannels * format_bytes(desc->Format));
}

STUB_EXPORT CUresult cuMipmappedArrayCreate(CUmipmappedArray *handle, const CUDA_ARRAY3D_DESCRIPTOR *desc,
                                            unsigned int levels) {
  ENTRY(cuMipmappedArrayCreate);
  if (handle == NULL || desc == NULL || levels == 0) return CUDA_ERROR_INVALID_VALUE;
  uint64_t total = 0;
  for (unsigned int l = 0; l < levels; l++) {
    uint64_t w = desc->Width >> l, h = (desc->Height ? desc->Height : 1) >> l,
             d = (desc->Depth ? desc->Depth : 1) >> l;
    total += (w ? w : 1) * (h ? h : 1) * (d ? d : 1);
  }
  return array_take(handle, total * desc->NumChannels * format_bytes(desc->Format));
}

STUB_EXPORT CUresult cuArrayDestroy(CUarray handle) {
  ENTRY(cuArrayDestroy);
  return mem_give((uint64_t)(uintptr_t)handle, KIND_ARRAY);
}

STUB_EXPORT CUresult cuMipmappedArrayDestroy(CUmipmappedArray handle) {
  ENTRY(cuMipmappedArrayDestroy);
  return mem_give((uint64_t)(uintptr_t)handle, KIND_ARRAY);
}


/* ---- modules and functions: duration and SM fraction are declared in the name ---- */

struct stub_module {
  int physical;
  struct stub_ctx *ctx;
};

STUB_EXPORT CUresult cuModuleLoadData(CUmodule *module, const void *image) {
  ENTRY(cuModuleLoadData);
  (void)image;
  int dev;
  CUresult rc = need_ctx(&dev);
  if (rc != CUDA_SUCCESS) return rc;
  if (module == NULL) return CUDA_ERROR_INVALID_VALUE;
  struct stub_module *m = calloc(1, sizeof *m);
  if (m == NULL) return CUDA_ERROR_OUT_OF_MEMORY;
  m->physical = physical_device();
  m->ctx = current_ctx;
  if (module_bytes > 0 && gpu_mem_take(m->physical, module_bytes) != 0) {
    free(m);
    return CUDA_ERROR_OUT_OF_MEMORY;
  }
  *module = (CUmodule)m;
  return CUDA_SUCCESS;
}

STUB_EXPORT CUresult cuModuleLoadDataEx(CUmodule *module, const void *image, unsigned int count, CUjit_option *options,
                                        void **values) {
  ENTRY(cuModuleLoadDataEx);
  (void)count, (void)options, (void)values;
  return cuModuleLoadData(module, image);
}

STUB_EXPORT CUresult cuModuleUnload(CUmodule module) {
  ENTRY(cuModuleUnload);
  struct stub_module *m = (struct stub_module *)module;
  if (m == NULL) return CUDA_ERROR_INVALID_VALUE;
  if (module_bytes > 0) gpu_mem_give(m->physical, module_bytes);
  free(m);
  return CUDA_SUCCESS;
}

struct stub_function {
  int64_t duration_ns;
  int32_t sm_milli;
  int dynamic; /* duration and SM fraction from the launch parameters */
};

static void parse_function_name(const char *name, struct stub_function *f) {
  f->duration_ns = 0;
  f->sm_milli = GPU_SM_FULL;
  f->dynamic = strncmp(name, "dyn", 3) == 0;
  for (const char *p = strchr(name, '_'); p != NULL; p = strchr(p + 1, '_')) {
    char *end = NULL;
    if (p[1] == 's' && p[2] == 'm') {
      long percent = strtol(p + 3, &end, 10);
      if (end != p + 3 && (*end == '\0' || *end == '_') && percent > 0 && percent <= 100)
        f->sm_milli = (int32_t)(percent * 10);
      continue;
    }
    long long n = strtoll(p + 1, &end, 10);
    if (end == p + 1 || n < 0) continue;
    if (strncmp(end, "ns", 2) == 0 && (end[2] == '\0' || end[2] == '_')) f->duration_ns = n;
    else if (strncmp(end, "us", 2) == 0 && (end[2] == '\0' || end[2] == '_')) f->duration_ns = n * 1000LL;
    else if (strncmp(end, "ms", 2) == 0 && (end[2] == '\0' || end[2] == '_')) f->duration_ns = n * 1000000LL;
  }
}

STUB_EXPORT CUresult cuModuleGetFunction(CUfunction *func, CUmodule module, const char *name) {
  ENTRY(cuModuleGetFunction);
  if (func == NULL || module == NULL || name == NULL) return CUDA_ERROR_INVALID_VALUE;
  struct stub_function *f = malloc(sizeof *f);
  if (f == NULL) return CUDA_ERROR_OUT_OF_MEMORY;
  parse_function_name(name, f);
  *func = (CUfunction)f;
  return CUDA_SUCCESS;
}

static __thread uint64_t jitter_state;

/* Duration and SM fraction of one launch of f. */
static void launch_cost(CUfunction func, void **params, int64_t *duration_ns, int32_t *sm_milli) {
  const struct stub_function *f = (const struct stub_function *)func;
  *duration_ns = f->duration_ns;
  *sm_milli = f->sm_milli;
  if (f->dynamic && params != NULL) {
    if (params[0] != NULL) memcpy(duration_ns, params[0], sizeof *duration_ns);
    if (params[1] != NULL) {
      int32_t percent;
      memcpy(&percent, params[1], sizeof percent);
      if (percent > 0 && percent <= 100) *sm_milli = percent * 10;
    }
  }
  if (jitter_percent > 0 && *duration_ns > 0) {
    if (jitter_state == 0) jitter_state = (uint64_t)getpid() * 0x9E3779B97F4A7C15ULL + (uint64_t)(uintptr_t)&jitter_state;
    jitter_state ^= jitter_state << 13;
    jitter_state ^= jitter_state >> 7;
    jitter_state ^= jitter_state << 17;
    int64_t span = *duration_ns * jitter_percent / 100;
    *duration_ns += (int64_t)(jitter_state % (uint64_t)(2 * span + 1)) - span;
  }
}

/* ---- graphs: kernel nodes run one after another on the launching stream ---- */

struct stub_graph {
  uint64_t mem_bytes; /* memory allocation nodes: allocated from the device's graph pool at launch */
  int nodes;
  int64_t duration_ns[STUB_GRAPH_NODES];
  int32_t sm_milli[STUB_GRAPH_NODES];
};

static void graph_add(struct stub_graph *g, int64_t duration_ns, int32_t sm_milli) {
  if (g->nodes == STUB_GRAPH_NODES) {
    g->duration_ns[g->nodes - 1] += duration_ns;
    return;
  }
  g->duration_ns[g->nodes] = duration_ns;
  g->sm_milli[g->nodes++] = sm_milli;
}

STUB_EXPORT CUresult cuGraphCreate(CUgraph *graph, unsigned int flags) {
  ENTRY(cuGraphCreate);
  (void)flags;
  struct stub_graph *g = calloc(1, sizeof *g);
  if (graph == NULL || g == NULL) {
    free(g);
    return CUDA_ERROR_INVALID_VALUE;
  }
  *graph = (CUgraph)g;
  return CUDA_SUCCESS;
}

STUB_EXPORT CUresult cuGraphDestroy(CUgraph graph) {
  ENTRY(cuGraphDestroy);
  free(graph);
  return CUDA_SUCCESS;
}

STUB_EXPORT CUresult cuGraphAddKernelNode_v2(CUgraphNode *node, CUgraph graph, const CUgraphNode *deps,
                                             size_t ndeps, const CUDA_KERNEL_NODE_PARAMS *params) {
  ENTRY(cuGraphAddKernelNode_v2);
  (void)deps;
  (void)ndeps;
  if (params == NULL || graph == NULL || params->func == NULL) return CUDA_ERROR_INVALID_VALUE;
  int64_t duration;
  int32_t sm;
  launch_cost(params->func, params->kernelParams, &duration, &sm);
  graph_add((struct stub_graph *)graph, duration, sm);
  if (node != NULL) *node = (CUgraphNode)graph;
  return CUDA_SUCCESS;
}

STUB_EXPORT CUresult cuGraphAddMemAllocNode(CUgraphNode *node, CUgraph graph, const CUgraphNode *deps,
                                            size_t ndeps, CUDA_MEM_ALLOC_NODE_PARAMS *params) {
  ENTRY(cuGraphAddMemAllocNode);
  (void)deps, (void)ndeps;
  if (graph == NULL || params == NULL || params->bytesize == 0) return CUDA_ERROR_INVALID_VALUE;
  struct stub_graph *g = (struct stub_graph *)graph;
  params->dptr = (CUdeviceptr)(0x7e0000000000ULL + g->mem_bytes);
  g->mem_bytes += params->bytesize;
  if (node != NULL) *node = (CUgraphNode)graph;
  return CUDA_SUCCESS;
}

STUB_EXPORT CUresult cuGraphAddMemFreeNode(CUgraphNode *node, CUgraph graph, const CUgraphNode *deps, size_t ndeps,
                                           CUdeviceptr dptr) {
  ENTRY(cuGraphAddMemFreeNode);
  (void)deps, (void)ndeps, (void)dptr;
  if (graph == NULL) return CUDA_ERROR_INVALID_VALUE;
  if (node != NULL) *node = (CUgraphNode)graph;
  return CUDA_SUCCESS;
}

/* The device's graph memory pool (per process, as the driver's): grows to what a launched
 * graph needs and keeps it until cuDeviceGraphMemTrim. */
static uint64_t graph_reserved[STUB_MAX_DEVICES];

STUB_EXPORT CUresult cuDeviceGraphMemTrim(CUdevice dev) {
  ENTRY(cuDeviceGraphMemTrim);
  if (dev < 0 || dev >= device_count) return CUDA_ERROR_INVALID_DEVICE;
  pthread_mutex_lock(&mem_lock);
  uint64_t release = graph_reserved[dev];
  graph_reserved[dev] = 0;
  pthread_mutex_unlock(&mem_lock);
  if (release > 0) gpu_mem_give(physical_of_ordinal[dev], release);
  return CUDA_SUCCESS;
}

STUB_EXPORT CUresult cuDeviceGetGraphMemAttribute(CUdevice dev, CUgraphMem_attribute attr, void *value) {
  ENTRY(cuDeviceGetGraphMemAttribute);
  if (dev < 0 || dev >= device_count || value == NULL) return CUDA_ERROR_INVALID_VALUE;
  if (attr != CU_GRAPH_MEM_ATTR_RESERVED_MEM_CURRENT && attr != CU_GRAPH_MEM_ATTR_USED_MEM_CURRENT)
    return CUDA_ERROR_INVALID_VALUE;
  pthread_mutex_lock(&mem_lock);
  *(cuuint64_t *)value = graph_reserved[dev];
  pthread_mutex_unlock(&mem_lock);
  return CUDA_SUCCESS;
}

STUB_EXPORT CUresult cuGraphInstantiateWithFlags(CUgraphExec *exec, CUgraph graph, unsigned long long flags) {
  ENTRY(cuGraphInstantiateWithFlags);
  (void)flags;
  if (exec == NULL || graph == NULL) return CUDA_ERROR_INVALID_VALUE;
  struct stub_graph *e = malloc(sizeof *e);
  if (e == NULL) return CUDA_ERROR_OUT_OF_MEMORY;
  *e = *(struct stub_graph *)graph;
  *exec = (CUgraphExec)e;
  return CUDA_SUCCESS;
}

STUB_EXPORT CUresult cuGraphExecDestroy(CUgraphExec exec) {
  ENTRY(cuGraphExecDestroy);
  free(exec);
  return CUDA_SUCCESS;
}

/* ---- streams: FIFO queues on the shared device ---- */

struct stub_stream {
  int slot;                    /* in the model; -1 until first used */
  int physical;
  pthread_mutex_t lock;
  struct stub_graph *capture;  /* non-NULL while capturing into a graph */
  struct stub_stream *next_stream;
};

static pthread_mutex_t streams_lock = PTHREAD_MUTEX_INITIALIZER;
static struct stub_stream *all_streams; /* this process's, for cuCtxSynchronize */
static struct stub_stream legacy_stream[STUB_MAX_DEVICES];
static __thread struct stub_stream *per_thread_stream;
static int legacy_ready[STUB_MAX_DEVICES];
static pthread_mutex_t legacy_lock = PTHREAD_MUTEX_INITIALIZER;

static void stream_register(struct stub_stream *s, int physical) {
  pthread_mutex_init(&s->lock, NULL);
  s->physical = physical;
  s->slot = gpu_stream_open(physical);
  pthread_mutex_lock(&streams_lock);
  s->next_stream = all_streams;
  all_streams = s;
  pthread_mutex_unlock(&streams_lock);
}

static void stream_unregister(struct stub_stream *s) {
  pthread_mutex_lock(&streams_lock);
  for (struct stub_stream **link = &all_streams; *link != NULL; link = &(*link)->next_stream) {
    if (*link == s) {
      *link = s->next_stream;
      break;
    }
  }
  pthread_mutex_unlock(&streams_lock);
  gpu_stream_close(s->slot);
}

/* Legacy (0 / CU_STREAM_LEGACY) and per-thread (CU_STREAM_PER_THREAD, or 0 from a _ptsz entry
 * point) default streams are distinct queues, as on a real device. */
static struct stub_stream *resolve_stream(CUstream stream, int per_thread) {
  int physical = physical_device();
  if (stream == CU_STREAM_PER_THREAD || (stream == NULL && per_thread)) {
    if (per_thread_stream == NULL) {
      per_thread_stream = calloc(1, sizeof *per_thread_stream);
      if (per_thread_stream == NULL) return NULL;
      stream_register(per_thread_stream, physical);
    }
    return per_thread_stream;
  }
  if (stream == NULL || stream == CU_STREAM_LEGACY) {
    if (!__atomic_load_n(&legacy_ready[physical], __ATOMIC_ACQUIRE)) {
      pthread_mutex_lock(&legacy_lock);
      if (!legacy_ready[physical]) stream_register(&legacy_stream[physical], physical);
      __atomic_store_n(&legacy_ready[physical], 1, __ATOMIC_RELEASE);
      pthread_mutex_unlock(&legacy_lock);
    }
    return &legacy_stream[physical];
  }
  return (struct stub_stream *)stream;
}

STUB_EXPORT CUresult cuStreamCreate(CUstream *stream, unsigned int flags) {
  ENTRY(cuStreamCreate);
  (void)flags;
  int dev;
  CUresult rc = need_ctx(&dev);
  if (rc != CUDA_SUCCESS) return rc;
  struct stub_stream *s = calloc(1, sizeof *s);
  if (s == NULL) return CUDA_ERROR_OUT_OF_MEMORY;
  stream_register(s, physical_device());
  if (s->slot < 0) {
    stream_unregister(s);
    free(s);
    return CUDA_ERROR_OUT_OF_MEMORY;
  }
  *stream = (CUstream)s;
  return CUDA_SUCCESS;
}

STUB_EXPORT CUresult cuStreamDestroy_v2(CUstream stream) {
  ENTRY(cuStreamDestroy_v2);
  struct stub_stream *s = (struct stub_stream *)stream;
  if (s == NULL || stream == CU_STREAM_LEGACY || stream == CU_STREAM_PER_THREAD) return CUDA_ERROR_INVALID_HANDLE;
  stream_unregister(s); /* queued work still completes, as on a real device */
  free(s->capture);
  free(s);
  return CUDA_SUCCESS;
}

static CUresult enqueue(CUstream stream, int per_thread, const int64_t *duration_ns, const int32_t *sm_milli, int n) {
  int dev;
  CUresult rc = need_ctx(&dev);
  if (rc != CUDA_SUCCESS) return rc;
  struct stub_stream *s = resolve_stream(stream, per_thread);
  if (s == NULL || s->slot < 0) return CUDA_ERROR_INVALID_HANDLE;
  pthread_mutex_lock(&s->lock);
  if (s->capture != NULL) { /* recorded into the graph, not run */
    for (int i = 0; i < n; i++) graph_add(s->capture, duration_ns[i], sm_milli[i]);
    pthread_mutex_unlock(&s->lock);
    return CUDA_SUCCESS;
  }
  pthread_mutex_unlock(&s->lock);
  gpu_enqueue(s->slot, duration_ns, sm_milli, n);
  return CUDA_SUCCESS;
}

static CUresult stream_sync(CUstream stream, int per_thread) {
  int dev;
  CUresult rc = need_ctx(&dev);
  if (rc != CUDA_SUCCESS) return rc;
  struct stub_stream *s = resolve_stream(stream, per_thread);
  if (s == NULL) return CUDA_ERROR_INVALID_HANDLE;
  uint32_t generation;
  uint64_t target = gpu_stream_position(s->slot, &generation);
  gpu_wait_position(s->slot, generation, target);
  return CUDA_SUCCESS;
}

STUB_EXPORT CUresult cuStreamSynchronize(CUstream stream) {
  ENTRY(cuStreamSynchronize);
  return stream_sync(stream, 0);
}

STUB_EXPORT CUresult cuStreamSynchronize_ptsz(CUstream stream) {
  ENTRY(cuStreamSynchronize_ptsz);
  return stream_sync(stream, 1);
}

static CUresult stream_query(CUstream stream, int per_thread) {
  struct stub_stream *s = resolve_stream(stream, per_thread);
  if (s == NULL) return CUDA_ERROR_INVALID_HANDLE;
  uint32_t generation;
  uint64_t target = gpu_stream_position(s->slot, &generation);
  int64_t at;
  return gpu_position_done(s->slot, generation, target, &at) ? CUDA_SUCCESS : CUDA_ERROR_NOT_READY;
}

STUB_EXPORT CUresult cuStreamQuery(CUstream stream) {
  ENTRY(cuStreamQuery);
  return stream_query(stream, 0);
}

STUB_EXPORT CUresult cuStreamQuery_ptsz(CUstream stream) {
  ENTRY(cuStreamQuery_ptsz);
  return stream_query(stream, 1);
}

STUB_EXPORT CUresult cuCtxSynchronize(void) {
  ENTRY(cuCtxSynchronize);
  int dev;
  CUresult rc = need_ctx(&dev);
  if (rc != CUDA_SUCCESS) return rc;
  int slots[GPU_STREAMS], n = 0;
  pthread_mutex_lock(&streams_lock);
  for (struct stub_stream *s = all_streams; s != NULL && n < GPU_STREAMS; s = s->next_stream) slots[n++] = s->slot;
  pthread_mutex_unlock(&streams_lock);
  for (int i = 0; i < n; i++) {
    uint32_t generation;
    uint64_t target = gpu_stream_position(slots[i], &generation);
    gpu_wait_position(slots[i], generation, target);
  }
  return CUDA_SUCCESS;
}

static CUresult begin_capture(CUstream stream, int per_thread) {
  struct stub_stream *s = resolve_stream(stream, per_thread);
  if (s == NULL || stream == NULL || stream == CU_STREAM_LEGACY) return CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED;
  struct stub_graph *g = calloc(1, sizeof *g);
  if (g == NULL) return CUDA_ERROR_OUT_OF_MEMORY;
  pthread_mutex_lock(&s->lock);
  free(s->capture);
  s->capture = g;
  pthread_mutex_unlock(&s->lock);
  return CUDA_SUCCESS;
}

STUB_EXPORT CUresult cuStreamBeginCapture_v2(CUstream stream, CUstreamCaptureMode mode) {
  ENTRY(cuStreamBeginCapture_v2);
  (void)mode;
  return begin_capture(stream, 0);
}

STUB_EXPORT CUresult cuStreamBeginCapture_v2_ptsz(CUstream stream, CUstreamCaptureMode mode) {
  ENTRY(cuStreamBeginCapture_v2_ptsz);
  (void)mode;
  return begin_capture(stream, 1);
}

static CUresult end_capture(CUstream stream, int per_thread, CUgraph *graph) {
  struct stub_stream *s = resolve_stream(stream, per_thread);
  if (s == NULL || graph == NULL) return CUDA_ERROR_INVALID_VALUE;
  pthread_mutex_lock(&s->lock);
  struct stub_graph *g = s->capture;
  s->capture = NULL;
  pthread_mutex_unlock(&s->lock);
  if (g == NULL) return CUDA_ERROR_ILLEGAL_STATE;
  *graph = (CUgraph)g;
  return CUDA_SUCCESS;
}

STUB_EXPORT CUresult cuStreamEndCapture(CUstream stream, CUgraph *graph) {
  ENTRY(cuStreamEndCapture);
  return end_capture(stream, 0, graph);
}

STUB_EXPORT CUresult cuStreamEndCapture_ptsz(CUstream stream, CUgraph *graph) {
  ENTRY(cuStreamEndCapture_ptsz);
  return end_capture(stream, 1, graph);
}

static CUresult is_capturing(CUstream stream, int per_thread, CUstreamCaptureStatus *status) {
  struct stub_stream *s = resolve_stream(stream, per_thread);
  if (s == NULL || status == NULL) return CUDA_ERROR_INVALID_VALUE;
  pthread_mutex_lock(&s->lock);
  *status = s->capture != NULL ? CU_STREAM_CAPTURE_STATUS_ACTIVE : CU_STREAM_CAPTURE_STATUS_NONE;
  pthread_mutex_unlock(&s->lock);
  return CUDA_SUCCESS;
}

STUB_EXPORT CUresult cuStreamIsCapturing(CUstream stream, CUstreamCaptureStatus *status) {
  ENTRY(cuStreamIsCapturing);
  return is_capturing(stream, 0, status);
}

STUB_EXPORT CUresult cuStreamIsCapturing_ptsz(CUstream stream, CUstreamCaptureStatus *status) {
  ENTRY(cuStreamIsCapturing_ptsz);
  return is_capturing(stream, 1, status);
}

static __thread CUstreamCaptureMode capture_mode = CU_STREAM_CAPTURE_MODE_GLOBAL;

STUB_EXPORT CUresult cuThreadExchangeStreamCaptureMode(CUstreamCaptureMode *mode) {
  ENTRY(cuThreadExchangeStreamCaptureMode);
  if (mode == NULL) return CUDA_ERROR_INVALID_VALUE;
  CUstreamCaptureMode previous = capture_mode;
  capture_mode = *mode;
  *mode = previous;
  return CUDA_SUCCESS;
}

/* ---- launches ---- */

#define LAUNCH_ARGS                                                                             \
  CUfunction f, unsigned int gx, unsigned int gy, unsigned int gz, unsigned int bx, unsigned int by, \
      unsigned int bz, unsigned int shared, CUstream stream, void **params
#define UNUSED_LAUNCH_ARGS (void)gx, (void)gy, (void)gz, (void)bx, (void)by, (void)bz, (void)shared

static CUresult launch(CUfunction f, CUstream stream, int per_thread, void **params) {
  if (f == NULL) return CUDA_ERROR_INVALID_HANDLE;
  int64_t duration;
  int32_t sm;
  launch_cost(f, params, &duration, &sm);
  return enqueue(stream, per_thread, &duration, &sm, 1);
}

STUB_EXPORT CUresult cuLaunchKernel(LAUNCH_ARGS, void **extra) {
  LAUNCH_ENTRY(cuLaunchKernel);
  UNUSED_LAUNCH_ARGS, (void)extra;
  return launch(f, stream, 0, params);
}

STUB_EXPORT CUresult cuLaunchKernel_ptsz(LAUNCH_ARGS, void **extra) {
  LAUNCH_ENTRY(cuLaunchKernel_ptsz);
  UNUSED_LAUNCH_ARGS, (void)extra;
  return launch(f, stream, 1, params);
}

STUB_EXPORT CUresult cuLaunchCooperativeKernel(LAUNCH_ARGS) {
  LAUNCH_ENTRY(cuLaunchCooperativeKernel);
  UNUSED_LAUNCH_ARGS;
  return launch(f, stream, 0, params);
}

STUB_EXPORT CUresult cuLaunchCooperativeKernel_ptsz(LAUNCH_ARGS) {
  LAUNCH_ENTRY(cuLaunchCooperativeKernel_ptsz);
  UNUSED_LAUNCH_ARGS;
  return launch(f, stream, 1, params);
}

STUB_EXPORT CUresult cuLaunchKernelEx(const CUlaunchConfig *config, CUfunction f, void **params, void **extra) {
  LAUNCH_ENTRY(cuLaunchKernelEx);
  (void)extra;
  if (config == NULL) return CUDA_ERROR_INVALID_VALUE;
  return launch(f, config->hStream, 0, params);
}

STUB_EXPORT CUresult cuLaunchKernelEx_ptsz(const CUlaunchConfig *config, CUfunction f, void **params,
                                           void **extra) {
  LAUNCH_ENTRY(cuLaunchKernelEx_ptsz);
  (void)extra;
  if (config == NULL) return CUDA_ERROR_INVALID_VALUE;
  return launch(f, config->hStream, 1, params);
}

static CUresult graph_launch(CUgraphExec exec, CUstream stream, int per_thread) {
  const struct stub_graph *g = (const struct stub_graph *)exec;
  if (g == NULL) return CUDA_ERROR_INVALID_VALUE;
  if (g->mem_bytes > 0) {
    int dev;
    CUresult rc = need_ctx(&dev);
    if (rc != CUDA_SUCCESS) return rc;
    pthread_mutex_lock(&mem_lock);
    uint64_t grow = g->mem_bytes > graph_reserved[dev] ? g->mem_bytes - graph_reserved[dev] : 0;
    pthread_mutex_unlock(&mem_lock);
    if (grow > 0 && gpu_mem_take(physical_of_ordinal[dev], grow) != 0) return CUDA_ERROR_OUT_OF_MEMORY;
    pthread_mutex_lock(&mem_lock);
    graph_reserved[dev] += grow;
    pthread_mutex_unlock(&mem_lock);
  }
  if (g->nodes == 0) return CUDA_SUCCESS;
  return enqueue(stream, per_thread, g->duration_ns, g->sm_milli, g->nodes);
}

STUB_EXPORT CUresult cuGraphLaunch(CUgraphExec exec, CUstream stream) {
  LAUNCH_ENTRY(cuGraphLaunch);
  return graph_launch(exec, stream, 0);
}

STUB_EXPORT CUresult cuGraphLaunch_ptsz(CUgraphExec exec, CUstream stream) {
  LAUNCH_ENTRY(cuGraphLaunch_ptsz);
  return graph_launch(exec, stream, 1);
}

/* ---- events: complete when the device reaches them ---- */

static int64_t events_alive; /* this process's events not destroyed */

struct stub_event {
  int slot;
  uint32_t generation;
  uint64_t target;
  int64_t record_ns;
  int64_t at_ns;
  int recorded;
  int done;
  unsigned flags;
};

STUB_EXPORT CUresult cuEventCreate(CUevent *event, unsigned int flags) {
  ENTRY(cuEventCreate);
  int dev;
  CUresult rc = need_ctx(&dev);
  if (rc != CUDA_SUCCESS) return rc;
  struct stub_event *e = calloc(1, sizeof *e);
  if (event == NULL || e == NULL) {
    free(e);
    return CUDA_ERROR_INVALID_VALUE;
  }
  e->flags = flags;
  __atomic_add_fetch(&events_alive, 1, __ATOMIC_RELAXED);
  *event = (CUevent)e;
  return CUDA_SUCCESS;
}

STUB_EXPORT CUresult cuEventDestroy_v2(CUevent event) {
  ENTRY(cuEventDestroy_v2);
  if (event == NULL) return CUDA_ERROR_INVALID_HANDLE;
  __atomic_sub_fetch(&events_alive, 1, __ATOMIC_RELAXED);
  free(event);
  return CUDA_SUCCESS;
}

static CUresult event_record(CUevent event, CUstream stream, int per_thread) {
  int dev;
  CUresult rc = need_ctx(&dev);
  if (rc != CUDA_SUCCESS) return rc;
  struct stub_event *e = (struct stub_event *)event;
  if (e == NULL) return CUDA_ERROR_INVALID_HANDLE;
  struct stub_stream *s = resolve_stream(stream, per_thread);
  if (s == NULL) return CUDA_ERROR_INVALID_HANDLE;
  e->slot = s->slot;
  e->target = gpu_stream_position(s->slot, &e->generation);
  e->record_ns = gpu_now_ns();
  e->recorded = 1;
  e->done = 0;
  return CUDA_SUCCESS;
}

STUB_EXPORT CUresult cuEventRecord(CUevent event, CUstream stream) {
  RECORD_ENTRY(cuEventRecord);
  return event_record(event, stream, 0);
}

STUB_EXPORT CUresult cuEventRecord_ptsz(CUevent event, CUstream stream) {
  RECORD_ENTRY(cuEventRecord_ptsz);
  return event_record(event, stream, 1);
}

static int event_done(struct stub_event *e) {
  if (!e->recorded || e->done) return 1;
  int64_t at;
  if (!gpu_position_done(e->slot, e->generation, e->target, &at)) return 0;
  e->at_ns = at > e->record_ns ? at : e->record_ns;
  e->done = 1;
  return 1;
}

STUB_EXPORT CUresult cuEventQuery(CUevent event) {
  ENTRY(cuEventQuery);
  struct stub_event *e = (struct stub_event *)event;
  if (e == NULL) return CUDA_ERROR_INVALID_HANDLE;
  return event_done(e) ? CUDA_SUCCESS : CUDA_ERROR_NOT_READY;
}

STUB_EXPORT CUresult cuEventSynchronize(CUevent event) {
  ENTRY(cuEventSynchronize);
  struct stub_event *e = (struct stub_event *)event;
  if (e == NULL) return CUDA_ERROR_INVALID_HANDLE;
  if (e->recorded && !e->done) gpu_wait_position(e->slot, e->generation, e->target);
  event_done(e);
  return CUDA_SUCCESS;
}

static CUresult elapsed(float *ms, CUevent start, CUevent end) {
  struct stub_event *a = (struct stub_event *)start, *b = (struct stub_event *)end;
  if (ms == NULL || a == NULL || b == NULL) return CUDA_ERROR_INVALID_HANDLE;
  if ((a->flags | b->flags) & CU_EVENT_DISABLE_TIMING) return CUDA_ERROR_INVALID_HANDLE;
  if (!a->recorded || !b->recorded) return CUDA_ERROR_INVALID_HANDLE;
  if (!event_done(a) || !event_done(b)) return CUDA_ERROR_NOT_READY;
  *ms = (float)((double)(b->at_ns - a->at_ns) / 1e6);
  return CUDA_SUCCESS;
}

STUB_EXPORT CUresult cuEventElapsedTime(float *ms, CUevent start, CUevent end) {
  ENTRY(cuEventElapsedTime);
  return elapsed(ms, start, end);
}

STUB_EXPORT CUresult cuEventElapsedTime_v2(float *ms, CUevent start, CUevent end) {
  ENTRY(cuEventElapsedTime_v2);
  return elapsed(ms, start, end);
}

/* ---- stub-only API (gpushare_stub.h) ---- */

STUB_EXPORT const char *gpushareStubLastCall(void) { return last_call; }
STUB_EXPORT const char *gpushareStubLastLaunch(void) { return last_launch; }
STUB_EXPORT const char *gpushareStubLastRecord(void) { return last_record; }
STUB_EXPORT int64_t gpushareStubBusyNs(int device) { return gpu_device_busy_ns(device); }
STUB_EXPORT int64_t gpushareStubTenantSmNs(int tenant, int device) { return gpu_tenant_sm_ns(tenant, device); }
STUB_EXPORT int gpushareStubTenant(void) {
  struct gpu_model *m = gpu_model();
  return m->procs[gpu_proc_index()].tenant;
}
STUB_EXPORT int64_t gpushareStubTenantMemPeak(int tenant, int device) {
  if (tenant < 0 || tenant >= GPU_TENANTS || device < 0 || device >= GPU_DEVICES) return 0;
  return __atomic_load_n(&gpu_model()->tenants[tenant].mem_peak[device], __ATOMIC_RELAXED);
}
STUB_EXPORT int64_t gpushareStubTenantMem(int tenant, int device) {
  if (tenant < 0 || tenant >= GPU_TENANTS || device < 0 || device >= GPU_DEVICES) return 0;
  return __atomic_load_n(&gpu_model()->tenants[tenant].mem_bytes[device], __ATOMIC_RELAXED);
}
STUB_EXPORT int64_t gpushareStubEventsAlive(void) {
  return __atomic_load_n(&events_alive, __ATOMIC_RELAXED);
}
extern int64_t gpu_waits;
STUB_EXPORT int64_t gpushareStubWaits(void) { return __atomic_load_n(&gpu_waits, __ATOMIC_RELAXED); }
STUB_EXPORT int gpushareStubDeviceCount(void) { return gpu_model()->device_count; }
STUB_EXPORT void gpushareStubDeviceMemory(int device, uint64_t *total, uint64_t *used) {
  struct gpu_model *m = gpu_model();
  gpu_lock();
  *total = device >= 0 && device < GPU_DEVICES ? m->devices[device].capacity_bytes : 0;
  *used = device >= 0 && device < GPU_DEVICES ? m->devices[device].used_bytes : 0;
  gpu_unlock();
}
STUB_EXPORT int gpushareStubProcessUtil(int device, uint64_t last_seen_us, uint64_t *now_us, unsigned *pids,
                                        unsigned *sm_percent, int max) {
  return gpu_process_util(device, last_seen_us, now_us, pids, sm_percent, max);
}
STUB_EXPORT int gpushareStubProcessMemory(int device, unsigned *pids, uint64_t *bytes, int max) {
  return gpu_process_memory(device, pids, bytes, max);
}

/* ---- cuGetProcAddress: (name, minimum CUDA version, per-thread?) → implementation ---- */

struct proc_entry {
  const char *base;
  int version;
  int per_thread;
  const char *symbol;
  void *fn;
};

#define P(base, ver, pt, sym) {base, ver, pt, #sym, (void *)sym}
static CUresult getproc_v2(const char *, void **, int, cuuint64_t, CUdriverProcAddressQueryResult *);
STUB_EXPORT CUresult cuGetProcAddress_v2(const char *, void **, int, cuuint64_t, CUdriverProcAddressQueryResult *);
STUB_EXPORT CUresult cuGetProcAddress(const char *, void **, int, cuuint64_t);

static const struct proc_entry proc_table[] = {
    P("cuInit", 2000, 0, cuInit),
    P("cuDriverGetVersion", 2020, 0, cuDriverGetVersion),
    P("cuDeviceGet", 2000, 0, cuDeviceGet),
    P("cuDeviceGetCount", 2000, 0, cuDeviceGetCount),
    P("cuDeviceGetName", 2000, 0, cuDeviceGetName),
    P("cuDeviceGetAttribute", 2000, 0, cuDeviceGetAttribute),
    P("cuDeviceTotalMem", 3020, 0, cuDeviceTotalMem_v2),
    P("cuDeviceGetUuid", 9020, 0, cuDeviceGetUuid),
    P("cuDeviceGetUuid", 11040, 0, cuDeviceGetUuid_v2),
    P("cuDeviceGetDefaultMemPool", 11020, 0, cuDeviceGetDefaultMemPool),
    P("cuDeviceGetMemPool", 11020, 0, cuDeviceGetMemPool),
    P("cuMemPoolCreate", 11020, 0, cuMemPoolCreate),
    P("cuMemPoolTrimTo", 11020, 0, cuMemPoolTrimTo),
    P("cuMemPoolDestroy", 11020, 0, cuMemPoolDestroy),
    P("cuDevicePrimaryCtxReset", 11000, 0, cuDevicePrimaryCtxReset_v2),
    P("cuModuleLoadDataEx", 2010, 0, cuModuleLoadDataEx),
    P("cuMemPoolGetAttribute", 11020, 0, cuMemPoolGetAttribute),
    P("cuMemAddressReserve", 10020, 0, cuMemAddressReserve),
    P("cuMemAddressFree", 10020, 0, cuMemAddressFree),
    P("cuMemMap", 10020, 0, cuMemMap),
    P("cuMemUnmap", 10020, 0, cuMemUnmap),
    P("cuDevicePrimaryCtxRetain", 7000, 0, cuDevicePrimaryCtxRetain),
    P("cuDevicePrimaryCtxRelease", 11000, 0, cuDevicePrimaryCtxRelease_v2),
    P("cuCtxCreate", 3020, 0, cuCtxCreate_v2),
    P("cuCtxCreate", 12050, 0, cuCtxCreate_v4),
    P("cuCtxDestroy", 4000, 0, cuCtxDestroy_v2),
    P("cuCtxSetCurrent", 4000, 0, cuCtxSetCurrent),
    P("cuCtxGetCurrent", 4000, 0, cuCtxGetCurrent),
    P("cuCtxGetDevice", 2000, 0, cuCtxGetDevice),
    P("cuCtxSynchronize", 2000, 0, cuCtxSynchronize),
    P("cuMemGetInfo", 3020, 0, cuMemGetInfo_v2),
    P("cuMemAlloc", 3020, 0, cuMemAlloc_v2),
    P("cuMemAllocPitch", 3020, 0, cuMemAllocPitch_v2),
    P("cuMemAllocManaged", 6000, 0, cuMemAllocManaged),
    P("cuMemAllocAsync", 11020, 0, cuMemAllocAsync),
    P("cuMemAllocAsync", 11020, 1, cuMemAllocAsync_ptsz),
    P("cuMemAllocFromPoolAsync", 11020, 0, cuMemAllocFromPoolAsync),
    P("cuMemAllocFromPoolAsync", 11020, 1, cuMemAllocFromPoolAsync_ptsz),
    P("cuMemFreeAsync", 11020, 0, cuMemFreeAsync),
    P("cuMemFreeAsync", 11020, 1, cuMemFreeAsync_ptsz),
    P("cuMemFree", 3020, 0, cuMemFree_v2),
    P("cuMemCreate", 10020, 0, cuMemCreate),
    P("cuMemRelease", 10020, 0, cuMemRelease),
    P("cuArrayCreate", 3020, 0, cuArrayCreate_v2),
    P("cuArray3DCreate", 3020, 0, cuArray3DCreate_v2),
    P("cuArrayDestroy", 2000, 0, cuArrayDestroy),
    P("cuMipmappedArrayCreate", 5000, 0, cuMipmappedArrayCreate),
    P("cuMipmappedArrayDestroy", 5000, 0, cuMipmappedArrayDestroy),
    P("cuModuleLoadData", 2000, 0, cuModuleLoadData),
    P("cuModuleUnload", 2000, 0, cuModuleUnload),
    P("cuModuleGetFunction", 2000, 0, cuModuleGetFunction),
    P("cuStreamCreate", 2000, 0, cuStreamCreate),
    P("cuStreamDestroy", 4000, 0, cuStreamDestroy_v2),
    P("cuStreamSynchronize", 2000, 0, cuStreamSynchronize),
    P("cuStreamSynchronize", 7000, 1, cuStreamSynchronize_ptsz),
    P("cuStreamQuery", 2000, 0, cuStreamQuery),
    P("cuStreamQuery", 7000, 1, cuStreamQuery_ptsz),
    P("cuStreamBeginCapture", 10010, 0, cuStreamBeginCapture_v2),
    P("cuStreamBeginCapture", 10010, 1, cuStreamBeginCapture_v2_ptsz),
    P("cuStreamEndCapture", 10000, 0, cuStreamEndCapture),
    P("cuStreamEndCapture", 10000, 1, cuStreamEndCapture_ptsz),
    P("cuStreamIsCapturing", 10000, 0, cuStreamIsCapturing),
    P("cuStreamIsCapturing", 10000, 1, cuStreamIsCapturing_ptsz),
    P("cuThreadExchangeStreamCaptureMode", 10010, 0, cuThreadExchangeStreamCaptureMode),
    P("cuEventCreate", 2000, 0, cuEventCreate),
    P("cuEventDestroy", 4000, 0, cuEventDestroy_v2),
    P("cuEventRecord", 2000, 0, cuEventRecord),
    P("cuEventRecord", 7000, 1, cuEventRecord_ptsz),
    P("cuEventQuery", 2000, 0, cuEventQuery),
    P("cuEventSynchronize", 2000, 0, cuEventSynchronize),
    P("cuEventElapsedTime", 2000, 0, cuEventElapsedTime),
    P("cuEventElapsedTime", 12080, 0, cuEventElapsedTime_v2),
    P("cuLaunchKernel", 4000, 0, cuLaunchKernel),
    P("cuLaunchKernel", 7000, 1, cuLaunchKernel_ptsz),
    P("cuLaunchKernelEx", 11060, 0, cuLaunchKernelEx),
    P("cuLaunchKernelEx", 11060, 1, cuLaunchKernelEx_ptsz),
    P("cuLaunchCooperativeKernel", 9000, 0, cuLaunchCooperativeKernel),
    P("cuLaunchCooperativeKernel", 9000, 1, cuLaunchCooperativeKernel_ptsz),
    P("cuGraphCreate", 10000, 0, cuGraphCreate),
    P("cuGraphDestroy", 10000, 0, cuGraphDestroy),
    P("cuGraphAddKernelNode", 12000, 0, cuGraphAddKernelNode_v2),
    P("cuGraphInstantiate", 11040, 0, cuGraphInstantiateWithFlags),
    P("cuGraphInstantiateWithFlags", 11040, 0, cuGraphInstantiateWithFlags),
    P("cuGraphExecDestroy", 10000, 0, cuGraphExecDestroy),
    P("cuGraphAddMemAllocNode", 11040, 0, cuGraphAddMemAllocNode),
    P("cuGraphAddMemFreeNode", 11040, 0, cuGraphAddMemFreeNode),
    P("cuDeviceGraphMemTrim", 11040, 0, cuDeviceGraphMemTrim),
    P("cuDeviceGetGraphMemAttribute", 11040, 0, cuDeviceGetGraphMemAttribute),
    P("cuGraphLaunch", 10000, 0, cuGraphLaunch),
    P("cuGraphLaunch", 10000, 1, cuGraphLaunch_ptsz),
    P("cuGetProcAddress", 11030, 0, cuGetProcAddress),
    P("cuGetProcAddress", 12000, 0, cuGetProcAddress_v2),
};
#define PROC_COUNT (sizeof proc_table / sizeof proc_table[0])

/* With GPUSHARE_STUB_INTERNAL_ENTRY_POINTS=1, cuGetProcAddress hands out internal addresses for
 * these (as a driver may), so an interposer cannot recognise them by address. */
static CUresult internal_mem_alloc(CUdeviceptr *dptr, size_t bytes) { return cuMemAlloc_v2(dptr, bytes); }
static CUresult internal_launch(LAUNCH_ARGS, void **extra) {
  return cuLaunchKernel(f, gx, gy, gz, bx, by, bz, shared, stream, params, extra);
}
static CUresult internal_launch_ptsz(LAUNCH_ARGS, void **extra) {
  return cuLaunchKernel_ptsz(f, gx, gy, gz, bx, by, bz, shared, stream, params, extra);
}

static void *internal_entry_point(void *fn) {
  static int enabled = -1;
  if (enabled < 0) {
    const char *text = getenv("GPUSHARE_STUB_INTERNAL_ENTRY_POINTS");
    enabled = text != NULL && strcmp(text, "1") == 0;
  }
  if (!enabled) return fn;
  if (fn == (void *)cuMemAlloc_v2) return (void *)internal_mem_alloc;
  if (fn == (void *)cuLaunchKernel) return (void *)internal_launch;
  if (fn == (void *)cuLaunchKernel_ptsz) return (void *)internal_launch_ptsz;
  return fn;
}

STUB_EXPORT void *gpushareStubSymbol(const char *name) {
  for (size_t i = 0; i < PROC_COUNT; i++)
    if (strcmp(proc_table[i].symbol, name) == 0) return proc_table[i].fn;
  return NULL;
}

static CUresult getproc_v2(const char *symbol, void **pfn, int version, cuuint64_t flags,
                           CUdriverProcAddressQueryResult *status) {
  if (symbol == NULL || pfn == NULL) return CUDA_ERROR_INVALID_VALUE;
  int per_thread = (flags & CU_GET_PROC_ADDRESS_PER_THREAD_DEFAULT_STREAM) != 0;
  const struct proc_entry *best = NULL;
  int found_name = 0, has_per_thread = 0;
  for (size_t i = 0; i < PROC_COUNT; i++)
    if (strcmp(proc_table[i].base, symbol) == 0 && proc_table[i].per_thread) has_per_thread = 1;
  for (size_t i = 0; i < PROC_COUNT; i++) {
    const struct proc_entry *e = &proc_table[i];
    if (strcmp(e->base, symbol) != 0) continue;
    found_name = 1;
    if (e->per_thread != (per_thread && has_per_thread)) continue;
    if (e->version > version) continue;
    if (best == NULL || e->version > best->version) best = e;
  }
  *pfn = best ? internal_entry_point(best->fn) : NULL;
  if (status != NULL)
    *status = best ? CU_GET_PROC_ADDRESS_SUCCESS
                   : (found_name ? CU_GET_PROC_ADDRESS_VERSION_NOT_SUFFICIENT : CU_GET_PROC_ADDRESS_SYMBOL_NOT_FOUND);
  return best ? CUDA_SUCCESS : CUDA_ERROR_NOT_FOUND;
}

STUB_EXPORT CUresult cuGetProcAddress_v2(const char *symbol, void **pfn, int version, cuuint64_t flags,
                                         CUdriverProcAddressQueryResult *status) {
  ENTRY(cuGetProcAddress_v2);
  return getproc_v2(symbol, pfn, version, flags, status);
}

STUB_EXPORT CUresult cuGetProcAddress(const char *symbol, void **pfn, int version, cuuint64_t flags) {
  ENTRY(cuGetProcAddress);
  return getproc_v2(symbol, pfn, version, flags, NULL);
}
