/* Memory family: every device allocation is charged to the container's shared budget before it
 * reaches the driver (check-and-charge is atomic across processes), and released on free.
 * A process-local table remembers what each pointer/handle was charged. */
#define _GNU_SOURCE
#include <pthread.h>
#include <stdlib.h>

#include "hook.h"
#include "hook_log.h"
#include "hook_policy.h"
#include "hook_state.h"

enum charge_kind { KIND_POINTER = 1, KIND_ARRAY = 2, KIND_HANDLE = 3 };

struct charge_record {
  uint64_t key;
  uint64_t bytes;
  int device;
  int kind;
  CUcontext ctx; /* where it was allocated (freed with it) */
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
  if (kind != KIND_HANDLE && gs_cuda.cuCtxGetCurrent != NULL) gs_cuda.cuCtxGetCurrent(&ctx);
  pthread_mutex_lock(&table_lock);
  struct charge_record *r = spare;
  if (r != NULL) spare = r->next;
  else r = malloc(sizeof *r);
  if (r != NULL) {
    *r = (struct charge_record){key, bytes, device, kind, ctx, NULL};
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
      if (r->ctx == ctx && r->kind != KIND_HANDLE) {
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

void gs_memory_atfork_prepare(void) { pthread_mutex_lock(&table_lock); }
void gs_memory_atfork_parent(void) { pthread_mutex_unlock(&table_lock); }
void gs_memory_atfork_child(void) {
  /* The parent's allocations stay the parent's: the child neither counts nor releases them. */
  pthread_mutex_init(&table_lock, NULL);
  gs_memory_forget_all();
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

GS_EXPORT CUresult cuMemAllocAsync(CUdeviceptr *dptr, size_t bytes, CUstream stream) {
  REAL_OR_NOT_FOUND(cuMemAllocAsync);
  if (dptr == NULL) return gs_cuda.cuMemAllocAsync(dptr, bytes, stream);
  CHARGED_POINTER_ALLOC(gs_cuda.cuMemAllocAsync(dptr, bytes, stream), dptr, bytes);
}

GS_EXPORT CUresult cuMemAllocAsync_ptsz(CUdeviceptr *dptr, size_t bytes, CUstream stream) {
  REAL_OR_NOT_FOUND(cuMemAllocAsync_ptsz);
  if (dptr == NULL) return gs_cuda.cuMemAllocAsync_ptsz(dptr, bytes, stream);
  CHARGED_POINTER_ALLOC(gs_cuda.cuMemAllocAsync_ptsz(dptr, bytes, stream), dptr, bytes);
}

GS_EXPORT CUresult cuMemAllocFromPoolAsync(CUdeviceptr *dptr, size_t bytes, CUmemoryPool pool, CUstream stream) {
  REAL_OR_NOT_FOUND(cuMemAllocFromPoolAsync);
  if (dptr == NULL) return gs_cuda.cuMemAllocFromPoolAsync(dptr, bytes, pool, stream);
  CHARGED_POINTER_ALLOC(gs_cuda.cuMemAllocFromPoolAsync(dptr, bytes, pool, stream), dptr, bytes);
}

GS_EXPORT CUresult cuMemAllocFromPoolAsync_ptsz(CUdeviceptr *dptr, size_t bytes, CUmemoryPool pool,
                                                CUstream stream) {
  REAL_OR_NOT_FOUND(cuMemAllocFromPoolAsync_ptsz);
  if (dptr == NULL) return gs_cuda.cuMemAllocFromPoolAsync_ptsz(dptr, bytes, pool, stream);
  CHARGED_POINTER_ALLOC(gs_cuda.cuMemAllocFromPoolAsync_ptsz(dptr, bytes, pool, stream), dptr, bytes);
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

static CUresult free_async(CUresult (*real)(CUdeviceptr, CUstream), CUdeviceptr dptr, CUstream stream) {
  int device;
  uint64_t bytes;
  int known = forget((uint64_t)dptr, KIND_POINTER, &device, &bytes) == 0;
  CUresult rc = real(dptr, stream);
  if (known) {
    if (rc == CUDA_SUCCESS) gs_state_release(device, bytes);
    else remember((uint64_t)dptr, KIND_POINTER, device, bytes);
  }
  return rc;
}

GS_EXPORT CUresult cuMemFreeAsync(CUdeviceptr dptr, CUstream stream) {
  REAL_OR_NOT_FOUND(cuMemFreeAsync);
  return free_async(gs_cuda.cuMemFreeAsync, dptr, stream);
}

GS_EXPORT CUresult cuMemFreeAsync_ptsz(CUdeviceptr dptr, CUstream stream) {
  REAL_OR_NOT_FOUND(cuMemFreeAsync_ptsz);
  return free_async(gs_cuda.cuMemFreeAsync_ptsz, dptr, stream);
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

GS_EXPORT CUresult cuMemRelease(CUmemGenericAllocationHandle handle) {
  REAL_OR_NOT_FOUND(cuMemRelease);
  int device;
  uint64_t bytes;
  int known = forget((uint64_t)handle, KIND_HANDLE, &device, &bytes) == 0;
  CUresult rc = gs_cuda.cuMemRelease(handle);
  if (known) {
    if (rc == CUDA_SUCCESS) gs_state_release(device, bytes);
    else remember((uint64_t)handle, KIND_HANDLE, device, bytes);
  }
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
