/* Memory family: every device allocation is charged to the container's shared budget before it
 * reaches the driver (check-and-charge is atomic across processes), and released on free.
 * A process-local table remembers what each pointer/handle was charged. */
#define _GNU_SOURCE
#include <pthread.h>
#include <stdlib.h>
#include <unistd.h>

#include "hook.h"
#include "hook_log.h"
#include "hook_policy.h"
#include "hook_state.h"

enum charge_kind {
  KIND_POINTER = 1,
  KIND_ARRAY = 2,
  KIND_HANDLE = 3,  /* VMM physical allocation (bytes; `mapped` mappings alive; `released`) */
  KIND_MAPPING = 4, /* VMM mapping at a virtual address (`handle` is what it maps) */
  KIND_POOL = 5,    /* a stream-ordered pool: charged what it reserves */
  KIND_OPAQUE = 6,  /* contexts and modules: what the driver took for them */
};

struct charge_record {
  uint64_t key;
  uint64_t bytes;
  int device;
  int kind;
  CUcontext ctx; /* where it was allocated (freed with it) */
  uint64_t handle;
  int mapped;
  int released;
  struct charge_record *next;
};

#define TABLE_BUCKETS 4096
static struct charge_record *table[TABLE_BUCKETS];
static struct charge_record *spare; /* recycled records */
static pthread_mutex_t table_lock = PTHREAD_MUTEX_INITIALIZER;

static size_t bucket_of(uint64_t key, int kind) {
  return (size_t)(((key ^ (uint64_t)kind) * 0x9E3779B97F4A7C15ULL) >> 52) % TABLE_BUCKETS;
}

static void remember(uint64_t key, int kind, int device, uint64_t bytes) {
  CUcontext ctx = NULL;
  if (kind != KIND_HANDLE && kind != KIND_POOL && kind != KIND_MAPPING && gs_cuda.cuCtxGetCurrent != NULL)
    gs_cuda.cuCtxGetCurrent(&ctx);
  pthread_mutex_lock(&table_lock);
  struct charge_record *r = spare;
  if (r != NULL) spare = r->next;
  else r = malloc(sizeof *r);
  if (r != NULL) {
    *r = (struct charge_record){key, bytes, device, kind, ctx, 0, 0, 0, NULL};
    size_t b = bucket_of(key, kind);
    r->next = table[b];
    table[b] = r;
  }
  pthread_mutex_unlock(&table_lock);
  if (r == NULL) gs_log(GS_LOG_WARN, "out of host memory; an allocation stays charged until exit");
}

/* Takes the record of key out of the table; returns 0 and fills device/bytes when found. */
static int forget(uint64_t key, int kind, int *device, uint64_t *bytes) {
  pthread_mutex_lock(&table_lock);
  struct charge_record **link = &table[bucket_of(key, kind)];
  while (*link != NULL && !((*link)->key == key && (*link)->kind == kind)) link = &(*link)->next;
  struct charge_record *r = *link;
  if (r != NULL) {
    *link = r->next;
    *device = r->device;
    *bytes = r->bytes;
    r->next = spare;
    spare = r;
  }
  pthread_mutex_unlock(&table_lock);
  return r != NULL ? 0 : -1;
}

void gs_memory_forget_all(void) {
  for (size_t b = 0; b < TABLE_BUCKETS; b++) {
    while (table[b] != NULL) {
      struct charge_record *r = table[b];
      table[b] = r->next;
      free(r);
    }
  }
}

void gs_memory_context_destroyed(CUcontext ctx) {
  uint64_t freed[GS_MAX_DEVICES] = {0};
  pthread_mutex_lock(&table_lock);
  for (size_t b = 0; b < TABLE_BUCKETS; b++) {
    for (struct charge_record **link = &table[b]; *link != NULL;) {
      struct charge_record *r = *link;
      if (r->ctx == ctx && (r->kind == KIND_POINTER || r->kind == KIND_ARRAY)) {
        *link = r->next;
        freed[r->device] += r->bytes;
        r->next = spare;
        spare = r;
      } else {
        link = &r->next;
      }
    }
  }
  pthread_mutex_unlock(&table_lock);
  for (int d = 0; d < GS_MAX_DEVICES; d++)
    if (freed[d] > 0) gs_state_release(d, freed[d]);
}

static pthread_mutex_t pool_lock = PTHREAD_MUTEX_INITIALIZER;

void gs_memory_atfork_prepare(void) {
  pthread_mutex_lock(&pool_lock);
  pthread_mutex_lock(&table_lock);
}
void gs_memory_atfork_parent(void) {
  pthread_mutex_unlock(&table_lock);
  pthread_mutex_unlock(&pool_lock);
}
void gs_memory_atfork_child(void) {
  /* The parent's allocations stay the parent's: the child neither counts nor releases them. */
  pthread_mutex_init(&table_lock, NULL);
  pthread_mutex_init(&pool_lock, NULL);
  gs_memory_forget_all();
}

static int config_limited(int device) {
  return device >= 0 && device < GS_MAX_DEVICES && gs_runtime()->memory_limit_bytes[device] != GS_NO_MEMORY_LIMIT;
}

/* A plain allocation freed with cuMemFreeAsync: its charge is returned (it was never a pool's). */
static int forget_pointer_charge(CUdeviceptr dptr) {
  int device;
  uint64_t bytes;
  if (forget((uint64_t)dptr, KIND_POINTER, &device, &bytes) != 0) return 0;
  gs_state_release(device, bytes);
  return 1;
}

/* A charge taken before the driver call. device < 0: nothing charged (no limit). */
struct charge {
  int device;
  uint64_t bytes;
};

static CUresult charge_begin(int device, uint64_t bytes, struct charge *charge) {
  const struct gs_config *config = gs_runtime();
  charge->device = -1;
  charge->bytes = 0;
  if (device < 0 || device >= GS_MAX_DEVICES || bytes == 0) return CUDA_SUCCESS;
  uint64_t limit = config->memory_limit_bytes[device];
  if (limit == GS_NO_MEMORY_LIMIT) return CUDA_SUCCESS;
  if (gs_state_reserve(device, bytes, limit) != 0) {
    gs_log(GS_LOG_DEBUG, "allocation of %llu bytes on device %d refused: limit %llu bytes",
           (unsigned long long)bytes, device, (unsigned long long)limit);
    return CUDA_ERROR_OUT_OF_MEMORY;
  }
  charge->device = device;
  charge->bytes = bytes;
  return CUDA_SUCCESS;
}

static void charge_end(const struct charge *charge, CUresult rc, int kind, uint64_t key) {
  if (charge->device < 0) return;
  if (rc == CUDA_SUCCESS) remember(key, kind, charge->device, charge->bytes);
  else gs_state_release(charge->device, charge->bytes);
}

static void uncharge(int kind, uint64_t key) {
  int device;
  uint64_t bytes;
  if (forget(key, kind, &device, &bytes) == 0) gs_state_release(device, bytes);
}

static int current_device(void) {
  int device;
  return gs_device_of_current_context(&device) == 0 ? device : -1;
}

/* Allocation through fn(args) of bytes on the current device, charged as a pointer. */
#define CHARGED_POINTER_ALLOC(real_call, dptr, bytes)                  \
  do {                                                                 \
    gs_runtime();                                                      \
    struct charge charge;                                              \
    CUresult rc = charge_begin(current_device(), (bytes), &charge);    \
    if (rc != CUDA_SUCCESS) return rc;                                 \
    rc = (real_call);                                                  \
    charge_end(&charge, rc, KIND_POINTER, rc == CUDA_SUCCESS ? (uint64_t)*(dptr) : 0); \
    return rc;                                                         \
  } while (0)

#define REAL_OR_NOT_FOUND(name) \
  if (gs_runtime() && gs_cuda.name == NULL) return CUDA_ERROR_NOT_FOUND

GS_EXPORT CUresult cuMemAlloc_v2(CUdeviceptr *dptr, size_t bytes) {
  REAL_OR_NOT_FOUND(cuMemAlloc_v2);
  if (dptr == NULL) return gs_cuda.cuMemAlloc_v2(dptr, bytes);
  CHARGED_POINTER_ALLOC(gs_cuda.cuMemAlloc_v2(dptr, bytes), dptr, bytes);
}

GS_EXPORT CUresult cuMemAllocManaged(CUdeviceptr *dptr, size_t bytes, unsigned int flags) {
  REAL_OR_NOT_FOUND(cuMemAllocManaged);
  if (dptr == NULL) return gs_cuda.cuMemAllocManaged(dptr, bytes, flags);
  CHARGED_POINTER_ALLOC(gs_cuda.cuMemAllocManaged(dptr, bytes, flags), dptr, bytes);
}

/* ---- stream-ordered pools: a pool is charged what it reserves from the device ---- */

static struct {
  CUmemoryPool pool;
  int device;
} pool_devices[64]; /* pools created or looked up through the hook, and their device */

static void note_pool(CUmemoryPool pool, int device) {
  pthread_mutex_lock(&pool_lock);
  int free_slot = -1;
  for (int i = 0; i < 64; i++) {
    if (pool_devices[i].pool == pool) free_slot = -2;
    if (pool_devices[i].pool == NULL && free_slot == -1) free_slot = i;
    if (free_slot == -2) break;
  }
  if (free_slot >= 0) pool_devices[free_slot].pool = pool, pool_devices[free_slot].device = device;
  pthread_mutex_unlock(&pool_lock);
}

/* The device a pool draws from: known pools, else the current device. */
static int device_of_pool(CUmemoryPool pool) {
  int device = -1;
  pthread_mutex_lock(&pool_lock);
  for (int i = 0; i < 64; i++)
    if (pool_devices[i].pool == pool) device = pool_devices[i].device;
  pthread_mutex_unlock(&pool_lock);
  return device >= 0 ? device : current_device();
}

static uint64_t pool_reserved(CUmemoryPool pool) {
  cuuint64_t value = 0;
  if (gs_cuda.cuMemPoolGetAttribute == NULL ||
      gs_cuda.cuMemPoolGetAttribute(pool, CU_MEMPOOL_ATTR_RESERVED_MEM_CURRENT, &value) != CUDA_SUCCESS)
    return UINT64_MAX;
  return value;
}

/* Brings the pool's charge (plus `upfront`, charged before an allocation) to what it reserves
 * now, in one step: frees at synchronisation, trims and growth all end up exact. */
static void settle_pool(CUmemoryPool pool, int device, uint64_t upfront) {
  uint64_t reserved = pool_reserved(pool);
  int old_device;
  uint64_t charged = 0;
  if (forget((uint64_t)(uintptr_t)pool, KIND_POOL, &old_device, &charged) != 0) old_device = device;
  if (reserved == UINT64_MAX) reserved = charged; /* cannot tell: keep what was charged */
  if (old_device != device && upfront > 0) {
    gs_state_release(device, upfront);
    upfront = 0;
  }
  gs_state_adjust(old_device, charged + upfront, reserved);
  if (reserved > 0) remember((uint64_t)(uintptr_t)pool, KIND_POOL, old_device, reserved);
}

static CUmemoryPool current_pool(void) {
  CUmemoryPool pool = NULL;
  int device = current_device();
  if (device < 0 || gs_cuda.cuDeviceGetMemPool == NULL || gs_cuda.cuDeviceGetMemPool(&pool, device) != CUDA_SUCCESS)
    return NULL;
  note_pool(pool, device);
  return pool;
}

/* What a pool allocation may add: the part of it the pool cannot serve from what it holds. */
static CUresult pool_alloc(CUmemoryPool pool, size_t bytes, CUresult (*call)(void *), void *args) {
  if (pool == NULL) return call(args);
  int device = device_of_pool(pool);
  cuuint64_t used = 0;
  uint64_t reserved = pool_reserved(pool);
  if (reserved == UINT64_MAX || gs_cuda.cuMemPoolGetAttribute(pool, CU_MEMPOOL_ATTR_USED_MEM_CURRENT, &used) != CUDA_SUCCESS)
    reserved = used = 0;
  uint64_t spare = reserved > used ? reserved - used : 0, grow = bytes > spare ? bytes - spare : 0;
  struct charge charge;
  CUresult rc = charge_begin(device, grow, &charge); /* checked against the limit before the driver */
  if (rc != CUDA_SUCCESS) return rc;
  rc = call(args);
  if (charge.device >= 0 || config_limited(device)) settle_pool(pool, device, charge.device >= 0 ? charge.bytes : 0);
  return rc;
}

struct async_args {
  CUresult (*fn)(CUdeviceptr *, size_t, CUstream);
  CUresult (*from_pool)(CUdeviceptr *, size_t, CUmemoryPool, CUstream);
  CUdeviceptr *dptr;
  size_t bytes;
  CUmemoryPool pool;
  CUstream stream;
};

static CUresult call_async(void *p) {
  struct async_args *a = p;
  return a->fn ? a->fn(a->dptr, a->bytes, a->stream) : a->from_pool(a->dptr, a->bytes, a->pool, a->stream);
}

GS_EXPORT CUresult cuMemAllocAsync(CUdeviceptr *dptr, size_t bytes, CUstream stream) {
  REAL_OR_NOT_FOUND(cuMemAllocAsync);
  struct async_args a = {gs_cuda.cuMemAllocAsync, NULL, dptr, bytes, NULL, stream};
  return pool_alloc(dptr ? current_pool() : NULL, bytes, call_async, &a);
}

GS_EXPORT CUresult cuMemAllocAsync_ptsz(CUdeviceptr *dptr, size_t bytes, CUstream stream) {
  REAL_OR_NOT_FOUND(cuMemAllocAsync_ptsz);
  struct async_args a = {gs_cuda.cuMemAllocAsync_ptsz, NULL, dptr, bytes, NULL, stream};
  return pool_alloc(dptr ? current_pool() : NULL, bytes, call_async, &a);
}

GS_EXPORT CUresult cuMemAllocFromPoolAsync(CUdeviceptr *dptr, size_t bytes, CUmemoryPool pool, CUstream stream) {
  REAL_OR_NOT_FOUND(cuMemAllocFromPoolAsync);
  struct async_args a = {NULL, gs_cuda.cuMemAllocFromPoolAsync, dptr, bytes, pool, stream};
  return pool_alloc(dptr ? pool : NULL, bytes, call_async, &a);
}

GS_EXPORT CUresult cuMemAllocFromPoolAsync_ptsz(CUdeviceptr *dptr, size_t bytes, CUmemoryPool pool,
                                                CUstream stream) {
  REAL_OR_NOT_FOUND(cuMemAllocFromPoolAsync_ptsz);
  struct async_args a = {NULL, gs_cuda.cuMemAllocFromPoolAsync_ptsz, dptr, bytes, pool, stream};
  return pool_alloc(dptr ? pool : NULL, bytes, call_async, &a);
}

GS_EXPORT CUresult cuMemPoolCreate(CUmemoryPool *pool, const CUmemPoolProps *props) {
  REAL_OR_NOT_FOUND(cuMemPoolCreate);
  CUresult rc = gs_cuda.cuMemPoolCreate(pool, props);
  if (rc == CUDA_SUCCESS && pool != NULL && props != NULL && props->location.type == CU_MEM_LOCATION_TYPE_DEVICE)
    note_pool(*pool, props->location.id);
  return rc;
}

GS_EXPORT CUresult cuMemPoolTrimTo(CUmemoryPool pool, size_t keep) {
  REAL_OR_NOT_FOUND(cuMemPoolTrimTo);
  CUresult rc = gs_cuda.cuMemPoolTrimTo(pool, keep);
  if (rc == CUDA_SUCCESS) settle_pool(pool, device_of_pool(pool), 0);
  return rc;
}

GS_EXPORT CUresult cuMemPoolDestroy(CUmemoryPool pool) {
  REAL_OR_NOT_FOUND(cuMemPoolDestroy);
  CUresult rc = gs_cuda.cuMemPoolDestroy(pool);
  if (rc == CUDA_SUCCESS) uncharge(KIND_POOL, (uint64_t)(uintptr_t)pool);
  return rc;
}

GS_EXPORT CUresult cuMemAllocPitch_v2(CUdeviceptr *dptr, size_t *pitch, size_t width, size_t height,
                                      unsigned int element_bytes) {
  REAL_OR_NOT_FOUND(cuMemAllocPitch_v2);
  if (dptr == NULL || pitch == NULL || height == 0 || width > UINT64_MAX / height)
    return gs_cuda.cuMemAllocPitch_v2(dptr, pitch, width, height, element_bytes);
  /* Charge width x height first, then the padding the driver chose (pitch x height in all). */
  int device = current_device();
  struct charge charge;
  CUresult rc = charge_begin(device, (uint64_t)width * height, &charge);
  if (rc != CUDA_SUCCESS) return rc;
  rc = gs_cuda.cuMemAllocPitch_v2(dptr, pitch, width, height, element_bytes);
  if (rc == CUDA_SUCCESS && charge.device >= 0 && *pitch > width) {
    struct charge padding;
    uint64_t extra = (uint64_t)(*pitch - width) * height;
    if (charge_begin(device, extra, &padding) != CUDA_SUCCESS) {
      gs_cuda.cuMemFree_v2(*dptr);
      *dptr = 0;
      rc = CUDA_ERROR_OUT_OF_MEMORY;
    } else {
      charge.bytes += extra;
    }
  }
  charge_end(&charge, rc, KIND_POINTER, rc == CUDA_SUCCESS ? (uint64_t)*dptr : 0);
  return rc;
}

GS_EXPORT CUresult cuMemFree_v2(CUdeviceptr dptr) {
  REAL_OR_NOT_FOUND(cuMemFree_v2);
  if (dptr == 0) return CUDA_SUCCESS;
  int device;
  uint64_t bytes;
  int known = forget((uint64_t)dptr, KIND_POINTER, &device, &bytes) == 0;
  CUresult rc = gs_cuda.cuMemFree_v2(dptr);
  if (known) {
    if (rc == CUDA_SUCCESS) gs_state_release(device, bytes);
    else remember((uint64_t)dptr, KIND_POINTER, device, bytes);
  }
  return rc;
}

/* A stream-ordered free returns memory to its pool, which keeps it: nothing is uncharged
 * until the pool gives memory back (settled at the next pool operation or trim). */
GS_EXPORT CUresult cuMemFreeAsync(CUdeviceptr dptr, CUstream stream) {
  REAL_OR_NOT_FOUND(cuMemFreeAsync);
  forget_pointer_charge(dptr);
  return gs_cuda.cuMemFreeAsync(dptr, stream);
}

GS_EXPORT CUresult cuMemFreeAsync_ptsz(CUdeviceptr dptr, CUstream stream) {
  REAL_OR_NOT_FOUND(cuMemFreeAsync_ptsz);
  forget_pointer_charge(dptr);
  return gs_cuda.cuMemFreeAsync_ptsz(dptr, stream);
}

GS_EXPORT CUresult cuMemCreate(CUmemGenericAllocationHandle *handle, size_t bytes,
                               const CUmemAllocationProp *prop, unsigned long long flags) {
  REAL_OR_NOT_FOUND(cuMemCreate);
  if (handle == NULL || prop == NULL || prop->location.type != CU_MEM_LOCATION_TYPE_DEVICE)
    return gs_cuda.cuMemCreate(handle, bytes, prop, flags); /* host memory is not charged */
  struct charge charge;
  CUresult rc = charge_begin(prop->location.id, bytes, &charge);
  if (rc != CUDA_SUCCESS) return rc;
  rc = gs_cuda.cuMemCreate(handle, bytes, prop, flags);
  charge_end(&charge, rc, KIND_HANDLE, rc == CUDA_SUCCESS ? (uint64_t)*handle : 0);
  return rc;
}

/* The physical memory of a handle stays until it is released *and* no longer mapped. */
GS_EXPORT CUresult cuMemRelease(CUmemGenericAllocationHandle handle) {
  REAL_OR_NOT_FOUND(cuMemRelease);
  CUresult rc = gs_cuda.cuMemRelease(handle);
  if (rc != CUDA_SUCCESS) return rc;
  int device = -1;
  uint64_t bytes = 0;
  pthread_mutex_lock(&table_lock);
  struct charge_record **link = &table[bucket_of((uint64_t)handle, KIND_HANDLE)];
  while (*link != NULL && !((*link)->key == (uint64_t)handle && (*link)->kind == KIND_HANDLE)) link = &(*link)->next;
  struct charge_record *r = *link;
  if (r != NULL && r->mapped > 0) {
    r->released = 1;
  } else if (r != NULL) {
    *link = r->next;
    device = r->device;
    bytes = r->bytes;
    r->next = spare;
    spare = r;
  }
  pthread_mutex_unlock(&table_lock);
  if (device >= 0) gs_state_release(device, bytes);
  return rc;
}

GS_EXPORT CUresult cuMemMap(CUdeviceptr ptr, size_t size, size_t offset, CUmemGenericAllocationHandle handle,
                            unsigned long long flags) {
  REAL_OR_NOT_FOUND(cuMemMap);
  CUresult rc = gs_cuda.cuMemMap(ptr, size, offset, handle, flags);
  if (rc != CUDA_SUCCESS) return rc;
  pthread_mutex_lock(&table_lock);
  struct charge_record *h = table[bucket_of((uint64_t)handle, KIND_HANDLE)];
  while (h != NULL && !(h->key == (uint64_t)handle && h->kind == KIND_HANDLE)) h = h->next;
  if (h != NULL) h->mapped++;
  pthread_mutex_unlock(&table_lock);
  if (h != NULL) { /* remember the mapping (a zero-byte record) to find the handle at unmap */
    remember((uint64_t)ptr, KIND_MAPPING, h->device, 0);
    pthread_mutex_lock(&table_lock);
    struct charge_record *m = table[bucket_of((uint64_t)ptr, KIND_MAPPING)];
    while (m != NULL && !(m->key == (uint64_t)ptr && m->kind == KIND_MAPPING)) m = m->next;
    if (m != NULL) m->handle = (uint64_t)handle;
    pthread_mutex_unlock(&table_lock);
  }
  return rc;
}

GS_EXPORT CUresult cuMemUnmap(CUdeviceptr ptr, size_t size) {
  REAL_OR_NOT_FOUND(cuMemUnmap);
  CUresult rc = gs_cuda.cuMemUnmap(ptr, size);
  if (rc != CUDA_SUCCESS) return rc;
  int device = -1;
  uint64_t bytes = 0;
  pthread_mutex_lock(&table_lock);
  struct charge_record **link = &table[bucket_of((uint64_t)ptr, KIND_MAPPING)];
  while (*link != NULL && !((*link)->key == (uint64_t)ptr && (*link)->kind == KIND_MAPPING)) link = &(*link)->next;
  struct charge_record *m = *link;
  if (m != NULL) {
    *link = m->next;
    uint64_t handle = m->handle;
    m->next = spare;
    spare = m;
    struct charge_record **hlink = &table[bucket_of(handle, KIND_HANDLE)];
    while (*hlink != NULL && !((*hlink)->key == handle && (*hlink)->kind == KIND_HANDLE)) hlink = &(*hlink)->next;
    struct charge_record *h = *hlink;
    if (h != NULL && --h->mapped <= 0 && h->released) {
      *hlink = h->next;
      device = h->device;
      bytes = h->bytes;
      h->next = spare;
      spare = h;
    }
  }
  pthread_mutex_unlock(&table_lock);
  if (device >= 0) gs_state_release(device, bytes);
  return rc;
}

static unsigned format_bytes(CUarray_format format) {
  switch (format) {
    case CU_AD_FORMAT_UNSIGNED_INT8:
    case CU_AD_FORMAT_SIGNED_INT8: return 1;
    case CU_AD_FORMAT_UNSIGNED_INT16:
    case CU_AD_FORMAT_SIGNED_INT16:
    case CU_AD_FORMAT_HALF: return 2;
    case CU_AD_FORMAT_UNSIGNED_INT32:
    case CU_AD_FORMAT_SIGNED_INT32:
    case CU_AD_FORMAT_FLOAT: return 4;
    default: return 16; /* unknown or packed formats: charge generously, never under */
  }
}

static CUresult charged_array(uint64_t bytes, void *handle_out, CUresult (*create)(const void *, void *),
                              const void *args) {
  struct charge charge;
  CUresult rc = charge_begin(current_device(), bytes == 0 ? 1 : bytes, &charge);
  if (rc != CUDA_SUCCESS) return rc;
  rc = create(args, handle_out);
  uint64_t key = 0;
  if (rc == CUDA_SUCCESS) key = (uint64_t)(uintptr_t) * (void **)handle_out;
  charge_end(&charge, rc, KIND_ARRAY, key);
  return rc;
}

static CUresult create_2d(const void *args, void *out) {
  return gs_cuda.cuArrayCreate_v2((CUarray *)out, (const CUDA_ARRAY_DESCRIPTOR *)args);
}

static CUresult create_3d(const void *args, void *out) {
  return gs_cuda.cuArray3DCreate_v2((CUarray *)out, (const CUDA_ARRAY3D_DESCRIPTOR *)args);
}

GS_EXPORT CUresult cuArrayCreate_v2(CUarray *handle, const CUDA_ARRAY_DESCRIPTOR *desc) {
  REAL_OR_NOT_FOUND(cuArrayCreate_v2);
  if (handle == NULL || desc == NULL) return gs_cuda.cuArrayCreate_v2(handle, desc);
  uint64_t bytes = gs_array_bytes(desc->Width, desc->Height, 1, desc->NumChannels, format_bytes(desc->Format), 1);
  return charged_array(bytes ? bytes : UINT64_MAX, handle, create_2d, desc);
}

GS_EXPORT CUresult cuArray3DCreate_v2(CUarray *handle, const CUDA_ARRAY3D_DESCRIPTOR *desc) {
  REAL_OR_NOT_FOUND(cuArray3DCreate_v2);
  if (handle == NULL || desc == NULL) return gs_cuda.cuArray3DCreate_v2(handle, desc);
  uint64_t bytes = gs_array_bytes(desc->Width, desc->Height, desc->Depth, desc->NumChannels,
                                  format_bytes(desc->Format), 1);
  return charged_array(bytes ? bytes : UINT64_MAX, handle, create_3d, desc);
}

struct mipmap_args {
  const CUDA_ARRAY3D_DESCRIPTOR *desc;
  unsigned int levels;
};

static CUresult create_mipmap(const void *args, void *out) {
  const struct mipmap_args *a = args;
  return gs_cuda.cuMipmappedArrayCreate((CUmipmappedArray *)out, a->desc, a->levels);
}

GS_EXPORT CUresult cuMipmappedArrayCreate(CUmipmappedArray *handle, const CUDA_ARRAY3D_DESCRIPTOR *desc,
                                          unsigned int levels) {
  REAL_OR_NOT_FOUND(cuMipmappedArrayCreate);
  if (handle == NULL || desc == NULL || levels == 0) return gs_cuda.cuMipmappedArrayCreate(handle, desc, levels);
  uint64_t bytes = gs_array_bytes(desc->Width, desc->Height, desc->Depth, desc->NumChannels,
                                  format_bytes(desc->Format), levels);
  struct mipmap_args args = {desc, levels};
  return charged_array(bytes ? bytes : UINT64_MAX, handle, create_mipmap, &args);
}

GS_EXPORT CUresult cuArrayDestroy(CUarray handle) {
  REAL_OR_NOT_FOUND(cuArrayDestroy);
  CUresult rc = gs_cuda.cuArrayDestroy(handle);
  if (rc == CUDA_SUCCESS) uncharge(KIND_ARRAY, (uint64_t)(uintptr_t)handle);
  return rc;
}

GS_EXPORT CUresult cuMipmappedArrayDestroy(CUmipmappedArray handle) {
  REAL_OR_NOT_FOUND(cuMipmappedArrayDestroy);
  CUresult rc = gs_cuda.cuMipmappedArrayDestroy(handle);
  if (rc == CUDA_SUCCESS) uncharge(KIND_ARRAY, (uint64_t)(uintptr_t)handle);
  return rc;
}

/* ---- contexts and modules: memory the driver takes that no allocation call names ---- */

/* NVML's compute processes on device: pid and memory; returns how many, -1 when NVML cannot. */
int gs_nvml_processes(int device, unsigned *pids, uint64_t *bytes, int max) {
  nvmlDevice_t handle;
  if (gs_nvml_handle(device, &handle) != 0 || gs_nvml.nvmlDeviceGetComputeRunningProcesses_v3 == NULL) return -1;
  nvmlProcessInfo_t infos[128];
  unsigned count = 128;
  if (gs_nvml.nvmlDeviceGetComputeRunningProcesses_v3(handle, &count, infos) != NVML_SUCCESS) return -1;
  int n = 0;
  for (unsigned i = 0; i < count && i < 128 && n < max; i++, n++) {
    pids[n] = infos[i].pid;
    bytes[n] = infos[i].usedGpuMemory;
  }
  return n;
}

int64_t gs_process_device_bytes(int device) {
  unsigned pids[128];
  uint64_t bytes[128];
  int n = gs_nvml_processes(device, pids, bytes, 128);
  if (n < 0) return -1;
  unsigned pid = gs_state_host_pid();
  for (int i = 0; i < n; i++)
    if (pids[i] == pid) return (int64_t)bytes[i];
  return 0; /* not listed: holds nothing (or NVML knows it by another pid, not learnt yet) */
}

int gs_memory_charge_opaque(uint64_t key, int device, uint64_t bytes, int enforce) {
  if (!config_limited(device) || bytes == 0) return 0;
  if (enforce) {
    struct charge charge;
    if (charge_begin(device, bytes, &charge) != CUDA_SUCCESS) return -1;
    charge_end(&charge, CUDA_SUCCESS, KIND_OPAQUE, key);
    return 0;
  }
  gs_state_force(device, bytes);
  remember(key, KIND_OPAQUE, device, bytes);
  return 0;
}

uint64_t gs_memory_uncharge_opaque(uint64_t key) {
  int device;
  uint64_t bytes = 0;
  if (forget(key, KIND_OPAQUE, &device, &bytes) == 0) gs_state_release(device, bytes);
  return bytes;
}

/* Changes the charge under key to bytes in one step. */
void gs_memory_recharge_opaque(uint64_t key, uint64_t bytes) {
  pthread_mutex_lock(&table_lock);
  struct charge_record *r = table[bucket_of(key, KIND_OPAQUE)];
  while (r != NULL && !(r->key == key && r->kind == KIND_OPAQUE)) r = r->next;
  uint64_t from = r != NULL ? r->bytes : 0;
  int device = r != NULL ? r->device : -1;
  if (r != NULL) r->bytes = bytes;
  pthread_mutex_unlock(&table_lock);
  if (device >= 0) gs_state_adjust(device, from, bytes);
}

/* Moves the charge under `from` to the key `to` (the charge itself does not change). */
void gs_memory_rekey_opaque(uint64_t from, uint64_t to) {
  int device;
  uint64_t bytes;
  if (forget(from, KIND_OPAQUE, &device, &bytes) == 0) remember(to, KIND_OPAQUE, device, bytes);
}

/* ---- graph memory nodes: the device's graph pool is charged what it reserves ----
 * A graph's allocation nodes take memory from a per-device pool when the graph is launched; the
 * pool keeps it until cuDeviceGraphMemTrim. The hook notes the bytes of every graph's allocation
 * nodes, carries them to the executable graph, checks before a launch that the pool's growth
 * fits, and settles the pool's charge to what it reserves afterwards. */

#define GRAPH_SLOTS 4096
static pthread_mutex_t graph_lock = PTHREAD_MUTEX_INITIALIZER;
static struct {
  const void *graph; /* a CUgraph or CUgraphExec */
  uint64_t bytes;
} graph_bytes[GRAPH_SLOTS];
static int graph_entries; /* > 0: some graph has allocation nodes (checked on every graph launch) */
static int graph_overflow; /* a graph did not fit the table: every graph launch is settled */

static void note_graph(const void *graph, uint64_t add) {
  pthread_mutex_lock(&graph_lock);
  int slot = -1;
  for (int i = 0; i < GRAPH_SLOTS; i++) {
    if (graph_bytes[i].graph == graph) {
      slot = i;
      break;
    }
    if (slot < 0 && graph_bytes[i].graph == NULL) slot = i;
  }
  if (slot >= 0) {
    if (graph_bytes[slot].graph == NULL) __atomic_add_fetch(&graph_entries, 1, __ATOMIC_RELAXED);
    graph_bytes[slot].graph = graph;
    graph_bytes[slot].bytes += add;
  } else if (!__atomic_exchange_n(&graph_overflow, 1, __ATOMIC_RELAXED)) {
    gs_log(GS_LOG_WARN, "more than %d graphs with memory nodes: the rest are charged only after launch", GRAPH_SLOTS);
  }
  pthread_mutex_unlock(&graph_lock);
}

static uint64_t graph_noted(const void *graph) {
  uint64_t bytes = 0;
  pthread_mutex_lock(&graph_lock);
  for (int i = 0; i < GRAPH_SLOTS; i++)
    if (graph_bytes[i].graph == graph) bytes = graph_bytes[i].bytes;
  pthread_mutex_unlock(&graph_lock);
  return bytes;
}

static uint64_t graph_pool_key(int device) { return 0x6A00000000000000ULL | (uint64_t)device; }

/* Brings the device's graph pool charge (plus upfront) to what it reserves now, in one step. */
static void settle_graph_pool(int device, uint64_t upfront) {
  cuuint64_t reserved = 0;
  int old_device;
  uint64_t charged = 0;
  if (forget(graph_pool_key(device), KIND_POOL, &old_device, &charged) != 0) old_device = device;
  if (gs_cuda.cuDeviceGetGraphMemAttribute == NULL ||
      gs_cuda.cuDeviceGetGraphMemAttribute(device, CU_GRAPH_MEM_ATTR_RESERVED_MEM_CURRENT, &reserved) != CUDA_SUCCESS)
    reserved = charged + upfront;
  gs_state_adjust(device, charged + upfront, reserved);
  if (reserved > 0) remember(graph_pool_key(device), KIND_POOL, device, reserved);
}

GS_EXPORT CUresult cuGraphAddMemAllocNode(CUgraphNode *node, CUgraph graph, const CUgraphNode *deps, size_t count,
                                          CUDA_MEM_ALLOC_NODE_PARAMS *params) {
  REAL_OR_NOT_FOUND(cuGraphAddMemAllocNode);
  CUresult rc = gs_cuda.cuGraphAddMemAllocNode(node, graph, deps, count, params);
  if (rc == CUDA_SUCCESS && params != NULL) note_graph(graph, params->bytesize);
  return rc;
}

GS_EXPORT CUresult cuGraphInstantiateWithFlags(CUgraphExec *exec, CUgraph graph, unsigned long long flags) {
  REAL_OR_NOT_FOUND(cuGraphInstantiateWithFlags);
  CUresult rc = gs_cuda.cuGraphInstantiateWithFlags(exec, graph, flags);
  if (rc == CUDA_SUCCESS && exec != NULL && __atomic_load_n(&graph_entries, __ATOMIC_RELAXED) > 0) {
    uint64_t bytes = graph_noted(graph);
    if (bytes > 0) note_graph(*exec, bytes);
  }
  return rc;
}

static void forget_graph(const void *graph) {
  if (__atomic_load_n(&graph_entries, __ATOMIC_RELAXED) == 0) return;
  pthread_mutex_lock(&graph_lock);
  for (int i = 0; i < GRAPH_SLOTS; i++) {
    if (graph_bytes[i].graph == graph) {
      graph_bytes[i].graph = NULL;
      graph_bytes[i].bytes = 0;
      __atomic_sub_fetch(&graph_entries, 1, __ATOMIC_RELAXED);
    }
  }
  pthread_mutex_unlock(&graph_lock);
}

GS_EXPORT CUresult cuGraphDestroy(CUgraph graph) {
  REAL_OR_NOT_FOUND(cuGraphDestroy);
  CUresult rc = gs_cuda.cuGraphDestroy(graph);
  if (rc == CUDA_SUCCESS) forget_graph(graph);
  return rc;
}

GS_EXPORT CUresult cuGraphExecDestroy(CUgraphExec exec) {
  REAL_OR_NOT_FOUND(cuGraphExecDestroy);
  CUresult rc = gs_cuda.cuGraphExecDestroy(exec);
  if (rc == CUDA_SUCCESS) forget_graph(exec);
  return rc;
}

GS_EXPORT CUresult cuDeviceGraphMemTrim(CUdevice device) {
  REAL_OR_NOT_FOUND(cuDeviceGraphMemTrim);
  CUresult rc = gs_cuda.cuDeviceGraphMemTrim(device);
  if (rc == CUDA_SUCCESS && config_limited(device)) settle_graph_pool(device, 0);
  return rc;
}

CUresult gs_memory_graph_launch(CUgraphExec exec, CUresult (*launch)(void *), void *args) {
  if (__atomic_load_n(&graph_entries, __ATOMIC_RELAXED) == 0) return launch(args);
  uint64_t needed = graph_noted(exec);
  int device = current_device();
  if (!config_limited(device)) return launch(args);
  if (needed == 0) {
    CUresult rc = launch(args);
    if (__atomic_load_n(&graph_overflow, __ATOMIC_RELAXED)) settle_graph_pool(device, 0);
    return rc;
  }
  cuuint64_t reserved = 0;
  if (gs_cuda.cuDeviceGetGraphMemAttribute != NULL)
    gs_cuda.cuDeviceGetGraphMemAttribute(device, CU_GRAPH_MEM_ATTR_RESERVED_MEM_CURRENT, &reserved);
  struct charge charge;
  CUresult rc = charge_begin(device, needed > reserved ? needed - reserved : 0, &charge);
  if (rc != CUDA_SUCCESS) return rc; /* the pool cannot grow that much under the limit */
  rc = launch(args);
  settle_graph_pool(device, charge.device >= 0 ? charge.bytes : 0);
  return rc;
}
