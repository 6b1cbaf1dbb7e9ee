/* Stub CUDA driver (libcuda.so.1): a simulated device for testing the hook without a GPU.
 *
 * Simulated time is CLOCK_MONOTONIC. Each stream is a virtual timeline: a launched kernel starts
 * when the stream's previous work ends (or now, if the stream is idle) and lasts the duration
 * declared in its function name (suffix _<N>ns, _<N>us or _<N>ms). Events take the time at which
 * the stream reaches them; synchronisation sleeps until then. A stream accepts at most
 * STUB_QUEUE_DEPTH pending kernels; a launch beyond that blocks (sleeping) like a full launch
 * queue on a real GPU. Memory is a per-process capacity per device (GPUSHARE_STUB_MEMORY_BYTES,
 * default 16 GiB; GPUSHARE_STUB_DEVICE_COUNT devices, default 1).
 */
#define _GNU_SOURCE
#define __CUDA_API_VERSION_INTERNAL 1
#include <cuda.h>

#include <errno.h>
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "gpushare_stub.h"

#define STUB_EXPORT __attribute__((visibility("default")))
#define STUB_MAX_DEVICES 16
#define STUB_QUEUE_DEPTH 1024
#define STUB_ALLOC_BUCKETS 65536

static __thread const char *last_call = "";
static __thread const char *last_launch = "";
#define ENTRY(name) (last_call = #name)
static __thread const char *last_record = "";
#define LAUNCH_ENTRY(name) (last_call = last_launch = #name)
#define RECORD_ENTRY(name) (last_call = last_record = #name)

/* ---- clock ---- */

STUB_EXPORT int64_t gpushareStubNowNs(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static void sleep_until(int64_t deadline_ns) {
  struct timespec ts = {.tv_sec = deadline_ns / 1000000000LL, .tv_nsec = deadline_ns % 1000000000LL};
  while (clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &ts, NULL) == EINTR) {
  }
}

/* ---- devices and contexts ---- */

struct stub_ctx {
  int device;
};

static pthread_once_t stub_once = PTHREAD_ONCE_INIT;
static int device_count = 1;
static uint64_t capacity_bytes = 16ULL << 30;
static int initialised;
static pthread_mutex_t mem_lock = PTHREAD_MUTEX_INITIALIZER;
static uint64_t used_bytes[STUB_MAX_DEVICES];
static uint64_t next_address[STUB_MAX_DEVICES];
static struct stub_ctx primary[STUB_MAX_DEVICES];
static __thread struct stub_ctx *current_ctx;

static uint64_t env_u64(const char *name, uint64_t fallback) {
  const char *text = getenv(name);
  if (text == NULL || *text == '\0') return fallback;
  char *end = NULL;
  unsigned long long value = strtoull(text, &end, 10);
  return (end != NULL && *end == '\0') ? value : fallback;
}

static void stub_setup(void) {
  device_count = (int)env_u64("GPUSHARE_STUB_DEVICE_COUNT", 1);
  if (device_count < 1 || device_count > STUB_MAX_DEVICES) device_count = 1;
  capacity_bytes = env_u64("GPUSHARE_STUB_MEMORY_BYTES", 16ULL << 30);
  for (int i = 0; i < STUB_MAX_DEVICES; i++) {
    primary[i].device = i;
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

STUB_EXPORT CUresult cuDeviceTotalMem_v2(size_t *bytes, CUdevice dev) {
  ENTRY(cuDeviceTotalMem_v2);
  CUresult rc = need_init();
  if (rc != CUDA_SUCCESS) return rc;
  if (dev < 0 || dev >= device_count) return CUDA_ERROR_INVALID_DEVICE;
  *bytes = capacity_bytes;
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

STUB_EXPORT CUresult cuDevicePrimaryCtxRetain(CUcontext *pctx, CUdevice dev) {
  ENTRY(cuDevicePrimaryCtxRetain);
  CUresult rc = need_init();
  if (rc != CUDA_SUCCESS) return rc;
  if (dev < 0 || dev >= device_count) return CUDA_ERROR_INVALID_DEVICE;
  *pctx = (CUcontext)&primary[dev];
  return CUDA_SUCCESS;
}

STUB_EXPORT CUresult cuDevicePrimaryCtxRelease_v2(CUdevice dev) {
  ENTRY(cuDevicePrimaryCtxRelease_v2);
  return (dev < 0 || dev >= device_count) ? CUDA_ERROR_INVALID_DEVICE : CUDA_SUCCESS;
}

static CUresult ctx_create(CUcontext *pctx, CUdevice dev) {
  CUresult rc = need_init();
  if (rc != CUDA_SUCCESS) return rc;
  if (dev < 0 || dev >= device_count) return CUDA_ERROR_INVALID_DEVICE;
  struct stub_ctx *ctx = calloc(1, sizeof *ctx);
  if (ctx == NULL) return CUDA_ERROR_OUT_OF_MEMORY;
  ctx->device = dev;
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
  if (c < &primary[0] || c > &primary[STUB_MAX_DEVICES - 1]) free(c);
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

/* ---- memory ---- */

enum alloc_kind { KIND_POINTER, KIND_ARRAY, KIND_HANDLE };

struct allocation {
  uint64_t key;
  uint64_t bytes;
  int device;
  int kind;
  struct allocation *next;
};

static struct allocation *alloc_table[STUB_ALLOC_BUCKETS];

static size_t bucket_of(uint64_t key, int kind) {
  uint64_t h = (key ^ (uint64_t)kind) * 0x9E3779B97F4A7C15ULL;
  return (size_t)(h >> 48) % STUB_ALLOC_BUCKETS;
}

STUB_EXPORT uint64_t gpushareStubMemUsed(int device) {
  if (device < 0 || device >= STUB_MAX_DEVICES) return 0;
  pthread_mutex_lock(&mem_lock);
  uint64_t used = used_bytes[device];
  pthread_mutex_unlock(&mem_lock);
  return used;
}

/* Reserves bytes on device; returns the new key (address or handle) or 0 when full. */
static CUresult mem_take(int device, uint64_t bytes, int kind, uint64_t *key_out) {
  if (bytes == 0) return CUDA_ERROR_INVALID_VALUE;
  struct allocation *a = malloc(sizeof *a);
  if (a == NULL) return CUDA_ERROR_OUT_OF_MEMORY;
  pthread_mutex_lock(&mem_lock);
  if (bytes > capacity_bytes - used_bytes[device]) {
    pthread_mutex_unlock(&mem_lock);
    free(a);
    return CUDA_ERROR_OUT_OF_MEMORY;
  }
  used_bytes[device] += bytes;
  uint64_t key = next_address[device];
  next_address[device] += (bytes + 511) & ~511ULL;
  a->key = key;
  a->bytes = bytes;
  a->device = device;
  a->kind = kind;
  size_t b = bucket_of(key, kind);
  a->next = alloc_table[b];
  alloc_table[b] = a;
  pthread_mutex_unlock(&mem_lock);
  *key_out = key;
  return CUDA_SUCCESS;
}

static CUresult mem_give(uint64_t key, int kind) {
  pthread_mutex_lock(&mem_lock);
  struct allocation **link = &alloc_table[bucket_of(key, kind)];
  while (*link != NULL && !((*link)->key == key && (*link)->kind == kind)) link = &(*link)->next;
  struct allocation *a = *link;
  if (a == NULL) {
    pthread_mutex_unlock(&mem_lock);
    return CUDA_ERROR_INVALID_VALUE;
  }
  *link = a->next;
  used_bytes[a->device] -= a->bytes;
  pthread_mutex_unlock(&mem_lock);
  free(a);
  return CUDA_SUCCESS;
}

static CUresult alloc_pointer(CUdeviceptr *dptr, size_t bytes) {
  int dev;
  CUresult rc = need_ctx(&dev);
  if (rc != CUDA_SUCCESS) return rc;
  if (dptr == NULL) return CUDA_ERROR_INVALID_VALUE;
  uint64_t key;
  rc = mem_take(dev, bytes, KIND_POINTER, &key);
  if (rc == CUDA_SUCCESS) *dptr = (CUdeviceptr)key;
  return rc;
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
  return alloc_pointer(dptr, bytes);
}

STUB_EXPORT CUresult cuMemAllocAsync_ptsz(CUdeviceptr *dptr, size_t bytes, CUstream stream) {
  ENTRY(cuMemAllocAsync_ptsz);
  (void)stream;
  return alloc_pointer(dptr, bytes);
}

STUB_EXPORT CUresult cuMemAllocFromPoolAsync(CUdeviceptr *dptr, size_t bytes, CUmemoryPool pool,
                                             CUstream stream) {
  ENTRY(cuMemAllocFromPoolAsync);
  (void)pool;
  (void)stream;
  return alloc_pointer(dptr, bytes);
}

STUB_EXPORT CUresult cuMemAllocFromPoolAsync_ptsz(CUdeviceptr *dptr, size_t bytes, CUmemoryPool pool,
                                                  CUstream stream) {
  ENTRY(cuMemAllocFromPoolAsync_ptsz);
  (void)pool;
  (void)stream;
  return alloc_pointer(dptr, bytes);
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

STUB_EXPORT CUresult cuMemGetInfo_v2(size_t *free_bytes, size_t *total_bytes) {
  ENTRY(cuMemGetInfo_v2);
  int dev;
  CUresult rc = need_ctx(&dev);
  if (rc != CUDA_SUCCESS) return rc;
  pthread_mutex_lock(&mem_lock);
  *free_bytes = capacity_bytes - used_bytes[dev];
  *total_bytes = capacity_bytes;
  pthread_mutex_unlock(&mem_lock);
  return CUDA_SUCCESS;
}

STUB_EXPORT CUresult cuMemCreate(CUmemGenericAllocationHandle *handle, size_t bytes,
                                 const CUmemAllocationProp *prop, unsigned long long flags) {
  ENTRY(cuMemCreate);
  (void)flags;
  CUresult rc = need_init();
  if (rc != CUDA_SUCCESS) return rc;
  if (handle == NULL || prop == NULL) return CUDA_ERROR_INVALID_VALUE;
  int dev = 0;
  if (prop->location.type == CU_MEM_LOCATION_TYPE_DEVICE) {
    if (prop->location.id < 0 || prop->location.id >= device_count) return CUDA_ERROR_INVALID_DEVICE;
    dev = prop->location.id;
    uint64_t key;
    rc = mem_take(dev, bytes, KIND_HANDLE, &key);
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
  rc = mem_take(dev, bytes, KIND_ARRAY, &key);
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

/* ---- modules and functions: the duration is declared in the name ---- */

struct stub_function {
  int64_t duration_ns;
};

STUB_EXPORT CUresult cuModuleLoadData(CUmodule *module, const void *image) {
  ENTRY(cuModuleLoadData);
  (void)image;
  int dev;
  CUresult rc = need_ctx(&dev);
  if (rc != CUDA_SUCCESS) return rc;
  static int module_token;
  *module = (CUmodule)&module_token;
  return CUDA_SUCCESS;
}

STUB_EXPORT CUresult cuModuleUnload(CUmodule module) {
  ENTRY(cuModuleUnload);
  (void)module;
  return CUDA_SUCCESS;
}

static int64_t duration_from_name(const char *name) {
  const char *us = strrchr(name, '_');
  if (us == NULL) return 0;
  char *end = NULL;
  long long n = strtoll(us + 1, &end, 10);
  if (end == us + 1 || n < 0) return 0;
  if (strcmp(end, "ns") == 0) return n;
  if (strcmp(end, "us") == 0) return n * 1000LL;
  if (strcmp(end, "ms") == 0) return n * 1000000LL;
  return 0;
}

STUB_EXPORT CUresult cuModuleGetFunction(CUfunction *func, CUmodule module, const char *name) {
  ENTRY(cuModuleGetFunction);
  if (func == NULL || module == NULL || name == NULL) return CUDA_ERROR_INVALID_VALUE;
  struct stub_function *f = malloc(sizeof *f);
  if (f == NULL) return CUDA_ERROR_OUT_OF_MEMORY;
  f->duration_ns = duration_from_name(name);
  *func = (CUfunction)f;
  return CUDA_SUCCESS;
}

/* ---- graphs ---- */

struct stub_graph {
  int64_t duration_ns;
};

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

static CUresult add_kernel_node(CUgraphNode *node, CUgraph graph, CUfunction func) {
  if (graph == NULL || func == NULL) return CUDA_ERROR_INVALID_VALUE;
  ((struct stub_graph *)graph)->duration_ns += ((struct stub_function *)func)->duration_ns;
  if (node != NULL) *node = (CUgraphNode)graph;
  return CUDA_SUCCESS;
}

STUB_EXPORT CUresult cuGraphAddKernelNode_v2(CUgraphNode *node, CUgraph graph, const CUgraphNode *deps,
                                             size_t ndeps, const CUDA_KERNEL_NODE_PARAMS *params) {
  ENTRY(cuGraphAddKernelNode_v2);
  (void)deps;
  (void)ndeps;
  return params == NULL ? CUDA_ERROR_INVALID_VALUE : add_kernel_node(node, graph, params->func);
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

/* ---- streams: virtual timelines ---- */

struct stub_stream {
  pthread_mutex_t lock;
  int64_t end_ns[STUB_QUEUE_DEPTH]; /* ring of pending kernels' end times */
  int64_t start_ns[STUB_QUEUE_DEPTH];
  unsigned head, count;
  int64_t tail_ns;     /* when the stream's last queued work ends */
  int64_t retired_ns;  /* kernel time of work popped from the ring */
  struct stub_graph *capture; /* non-NULL while capturing into a graph */
  struct stub_stream *next_stream;
};

static pthread_mutex_t streams_lock = PTHREAD_MUTEX_INITIALIZER;
static struct stub_stream *all_streams;
static struct stub_stream legacy_stream[STUB_MAX_DEVICES];
static __thread struct stub_stream *per_thread_stream;
static int legacy_ready[STUB_MAX_DEVICES];

static void stream_register(struct stub_stream *s) {
  pthread_mutex_init(&s->lock, NULL);
  pthread_mutex_lock(&streams_lock);
  s->next_stream = all_streams;
  all_streams = s;
  pthread_mutex_unlock(&streams_lock);
}

/* Legacy (0 / CU_STREAM_LEGACY) and per-thread (CU_STREAM_PER_THREAD, or 0 from a _ptsz entry
 * point) default streams are distinct timelines, as on a real device. */
static struct stub_stream *resolve_stream(CUstream stream, int per_thread) {
  int dev = current_ctx ? current_ctx->device : 0;
  if (stream == CU_STREAM_PER_THREAD || (stream == NULL && per_thread)) {
    if (per_thread_stream == NULL) {
      per_thread_stream = calloc(1, sizeof *per_thread_stream);
      if (per_thread_stream == NULL) return NULL;
      stream_register(per_thread_stream);
    }
    return per_thread_stream;
  }
  if (stream == NULL || stream == CU_STREAM_LEGACY) {
    pthread_mutex_lock(&mem_lock);
    if (!legacy_ready[dev]) {
      legacy_ready[dev] = 1;
      pthread_mutex_unlock(&mem_lock);
      stream_register(&legacy_stream[dev]);
    } else {
      pthread_mutex_unlock(&mem_lock);
    }
    return &legacy_stream[dev];
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
  stream_register(s);
  *stream = (CUstream)s;
  return CUDA_SUCCESS;
}

STUB_EXPORT CUresult cuStreamDestroy_v2(CUstream stream) {
  ENTRY(cuStreamDestroy_v2);
  (void)stream; /* kept alive: its retired time still counts toward the device's busy time */
  return CUDA_SUCCESS;
}

/* Pops finished kernels off the ring. Caller holds s->lock. */
static void stream_retire(struct stub_stream *s, int64_t now) {
  while (s->count > 0 && s->end_ns[s->head] <= now) {
    s->retired_ns += s->end_ns[s->head] - s->start_ns[s->head];
    s->head = (s->head + 1) % STUB_QUEUE_DEPTH;
    s->count--;
  }
}

static CUresult enqueue(CUstream stream, int per_thread, int64_t duration_ns) {
  int dev;
  CUresult rc = need_ctx(&dev);
  if (rc != CUDA_SUCCESS) return rc;
  struct stub_stream *s = resolve_stream(stream, per_thread);
  if (s == NULL) return CUDA_ERROR_INVALID_HANDLE;
  pthread_mutex_lock(&s->lock);
  if (s->capture != NULL) {
    s->capture->duration_ns += duration_ns;
    pthread_mutex_unlock(&s->lock);
    return CUDA_SUCCESS;
  }
  int64_t now = gpushareStubNowNs();
  stream_retire(s, now);
  while (s->count == STUB_QUEUE_DEPTH) { /* launch queue full: block until a slot frees */
    int64_t wake = s->end_ns[s->head];
    pthread_mutex_unlock(&s->lock);
    sleep_until(wake);
    pthread_mutex_lock(&s->lock);
    now = gpushareStubNowNs();
    stream_retire(s, now);
  }
  int64_t start = s->tail_ns > now ? s->tail_ns : now;
  unsigned slot = (s->head + s->count) % STUB_QUEUE_DEPTH;
  s->start_ns[slot] = start;
  s->end_ns[slot] = start + duration_ns;
  s->count++;
  s->tail_ns = start + duration_ns;
  pthread_mutex_unlock(&s->lock);
  return CUDA_SUCCESS;
}

static int64_t stream_tail(CUstream stream, int per_thread) {
  struct stub_stream *s = resolve_stream(stream, per_thread);
  if (s == NULL) return 0;
  pthread_mutex_lock(&s->lock);
  int64_t tail = s->tail_ns;
  pthread_mutex_unlock(&s->lock);
  return tail;
}

STUB_EXPORT int64_t gpushareStubBusyNs(int device) {
  (void)device; /* one process drives one simulated device in the tests */
  int64_t now = gpushareStubNowNs(), busy = 0;
  pthread_mutex_lock(&streams_lock);
  for (struct stub_stream *s = all_streams; s != NULL; s = s->next_stream) {
    pthread_mutex_lock(&s->lock);
    stream_retire(s, now);
    busy += s->retired_ns;
    for (unsigned i = 0; i < s->count; i++) {
      unsigned slot = (s->head + i) % STUB_QUEUE_DEPTH;
      if (s->start_ns[slot] < now) busy += now - s->start_ns[slot];
    }
    pthread_mutex_unlock(&s->lock);
  }
  pthread_mutex_unlock(&streams_lock);
  return busy;
}

static CUresult stream_sync(CUstream stream, int per_thread) {
  int dev;
  CUresult rc = need_ctx(&dev);
  if (rc != CUDA_SUCCESS) return rc;
  sleep_until(stream_tail(stream, per_thread));
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
  return stream_tail(stream, per_thread) <= gpushareStubNowNs() ? CUDA_SUCCESS : CUDA_ERROR_NOT_READY;
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
  int64_t latest = 0;
  pthread_mutex_lock(&streams_lock);
  for (struct stub_stream *s = all_streams; s != NULL; s = s->next_stream) {
    pthread_mutex_lock(&s->lock);
    if (s->tail_ns > latest) latest = s->tail_ns;
    pthread_mutex_unlock(&s->lock);
  }
  pthread_mutex_unlock(&streams_lock);
  sleep_until(latest);
  return CUDA_SUCCESS;
}

static CUresult begin_capture(CUstream stream, int per_thread) {
  struct stub_stream *s = resolve_stream(stream, per_thread);
  if (s == NULL || stream == NULL || stream == CU_STREAM_LEGACY) return CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED;
  struct stub_graph *g = calloc(1, sizeof *g);
  if (g == NULL) return CUDA_ERROR_OUT_OF_MEMORY;
  pthread_mutex_lock(&s->lock);
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

static int64_t function_ns(CUfunction f) { return f ? ((struct stub_function *)f)->duration_ns : 0; }

#define LAUNCH_ARGS                                                                             \
  CUfunction f, unsigned int gx, unsigned int gy, unsigned int gz, unsigned int bx, unsigned int by, \
      unsigned int bz, unsigned int shared, CUstream stream, void **params
#define UNUSED_LAUNCH_ARGS \
  (void)gx, (void)gy, (void)gz, (void)bx, (void)by, (void)bz, (void)shared, (void)params

STUB_EXPORT CUresult cuLaunchKernel(LAUNCH_ARGS, void **extra) {
  LAUNCH_ENTRY(cuLaunchKernel);
  UNUSED_LAUNCH_ARGS, (void)extra;
  if (f == NULL) return CUDA_ERROR_INVALID_HANDLE;
  return enqueue(stream, 0, function_ns(f));
}

STUB_EXPORT CUresult cuLaunchKernel_ptsz(LAUNCH_ARGS, void **extra) {
  LAUNCH_ENTRY(cuLaunchKernel_ptsz);
  UNUSED_LAUNCH_ARGS, (void)extra;
  if (f == NULL) return CUDA_ERROR_INVALID_HANDLE;
  return enqueue(stream, 1, function_ns(f));
}

STUB_EXPORT CUresult cuLaunchCooperativeKernel(LAUNCH_ARGS) {
  LAUNCH_ENTRY(cuLaunchCooperativeKernel);
  UNUSED_LAUNCH_ARGS;
  if (f == NULL) return CUDA_ERROR_INVALID_HANDLE;
  return enqueue(stream, 0, function_ns(f));
}

STUB_EXPORT CUresult cuLaunchCooperativeKernel_ptsz(LAUNCH_ARGS) {
  LAUNCH_ENTRY(cuLaunchCooperativeKernel_ptsz);
  UNUSED_LAUNCH_ARGS;
  if (f == NULL) return CUDA_ERROR_INVALID_HANDLE;
  return enqueue(stream, 1, function_ns(f));
}

STUB_EXPORT CUresult cuLaunchKernelEx(const CUlaunchConfig *config, CUfunction f, void **params, void **extra) {
  LAUNCH_ENTRY(cuLaunchKernelEx);
  (void)params, (void)extra;
  if (config == NULL || f == NULL) return CUDA_ERROR_INVALID_VALUE;
  return enqueue(config->hStream, 0, function_ns(f));
}

STUB_EXPORT CUresult cuLaunchKernelEx_ptsz(const CUlaunchConfig *config, CUfunction f, void **params,
                                           void **extra) {
  LAUNCH_ENTRY(cuLaunchKernelEx_ptsz);
  (void)params, (void)extra;
  if (config == NULL || f == NULL) return CUDA_ERROR_INVALID_VALUE;
  return enqueue(config->hStream, 1, function_ns(f));
}

STUB_EXPORT CUresult cuGraphLaunch(CUgraphExec exec, CUstream stream) {
  LAUNCH_ENTRY(cuGraphLaunch);
  if (exec == NULL) return CUDA_ERROR_INVALID_VALUE;
  return enqueue(stream, 0, ((struct stub_graph *)exec)->duration_ns);
}

STUB_EXPORT CUresult cuGraphLaunch_ptsz(CUgraphExec exec, CUstream stream) {
  LAUNCH_ENTRY(cuGraphLaunch_ptsz);
  if (exec == NULL) return CUDA_ERROR_INVALID_VALUE;
  return enqueue(stream, 1, ((struct stub_graph *)exec)->duration_ns);
}

/* ---- events ---- */

struct stub_event {
  int64_t at_ns;
  int recorded;
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
  *event = (CUevent)e;
  return CUDA_SUCCESS;
}

STUB_EXPORT CUresult cuEventDestroy_v2(CUevent event) {
  ENTRY(cuEventDestroy_v2);
  free(event);
  return CUDA_SUCCESS;
}

static CUresult event_record(CUevent event, CUstream stream, int per_thread) {
  int dev;
  CUresult rc = need_ctx(&dev);
  if (rc != CUDA_SUCCESS) return rc;
  struct stub_event *e = (struct stub_event *)event;
  if (e == NULL) return CUDA_ERROR_INVALID_HANDLE;
  int64_t now = gpushareStubNowNs(), tail = stream_tail(stream, per_thread);
  e->at_ns = tail > now ? tail : now;
  e->recorded = 1;
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

STUB_EXPORT CUresult cuEventQuery(CUevent event) {
  ENTRY(cuEventQuery);
  struct stub_event *e = (struct stub_event *)event;
  if (e == NULL) return CUDA_ERROR_INVALID_HANDLE;
  return (!e->recorded || e->at_ns <= gpushareStubNowNs()) ? CUDA_SUCCESS : CUDA_ERROR_NOT_READY;
}

STUB_EXPORT CUresult cuEventSynchronize(CUevent event) {
  ENTRY(cuEventSynchronize);
  struct stub_event *e = (struct stub_event *)event;
  if (e == NULL) return CUDA_ERROR_INVALID_HANDLE;
  if (e->recorded) sleep_until(e->at_ns);
  return CUDA_SUCCESS;
}

static CUresult elapsed(float *ms, CUevent start, CUevent end) {
  struct stub_event *a = (struct stub_event *)start, *b = (struct stub_event *)end;
  if (ms == NULL || a == NULL || b == NULL) return CUDA_ERROR_INVALID_HANDLE;
  if ((a->flags | b->flags) & CU_EVENT_DISABLE_TIMING) return CUDA_ERROR_INVALID_HANDLE;
  if (!a->recorded || !b->recorded) return CUDA_ERROR_INVALID_HANDLE;
  int64_t now = gpushareStubNowNs();
  if (a->at_ns > now || b->at_ns > now) return CUDA_ERROR_NOT_READY;
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

STUB_EXPORT const char *gpushareStubLastCall(void) { return last_call; }
STUB_EXPORT const char *gpushareStubLastLaunch(void) { return last_launch; }
STUB_EXPORT const char *gpushareStubLastRecord(void) { return last_record; }

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
