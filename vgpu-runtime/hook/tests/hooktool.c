/* Test driver for the hook: an ordinary CUDA driver-API program (linked against libcuda.so.1)
 * with one subcommand per scenario; prints one JSON object. The pytest suite runs it with the
 * hook preloaded over the stub driver.
 *
 *   info                      memory as cuMemGetInfo, cuDeviceTotalMem and NVML report it
 *   sweep                     allocation sweeps (2^k, 2^k±1) checked at every step
 *   alloc BYTES [wait]        allocate (after a "go" line on stdin if wait), hold until stdin ends
 *   kinds                     every allocation family over the limit, and back to baseline
 *   proc NAME VERSION FLAGS   what cuGetProcAddress_v2 hands out, by identity
 *   call VIA PTSZ             launch+alloc through direct/dlsym/proc entry points
 *   fork                      fork while another thread allocates; children allocate
 *   variants                  one launch through each launch entry point from cuGetProcAddress
 *   share PATTERN BEGIN MEASURE END WINDOW_MS   ground-truth share of a launch pattern (see share())
 */
#define _GNU_SOURCE
#include <cuda.h>
#include <dlfcn.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "gpushare_stub.h"
#include "nvml_types.h"

/* The failed call's text as a JSON string: a call may hold a string literal ("stub"). */
static void print_failure(const char *call, int rc) {
  printf("{\"error\": \"");
  for (const char *p = call; *p; p++) {
    if (*p == '"' || *p == '\\') putchar('\\');
    putchar(*p);
  }
  printf(" failed: %d\"}\n", rc);
}

#define CHECK(call)                                                            \
  do {                                                                         \
    CUresult rc_ = (call);                                                     \
    if (rc_ != CUDA_SUCCESS) {                                                 \
      print_failure(#call, (int)rc_);                                          \
      exit(3);                                                                 \
    }                                                                          \
  } while (0)

static CUcontext context;

static void setup(void) {
  CUdevice dev;
  CHECK(cuInit(0));
  const char *ordinal = getenv("HOOKTOOL_DEVICE"); /* which device the scenario runs on */
  CHECK(cuDeviceGet(&dev, ordinal ? atoi(ordinal) : 0));
  CHECK(cuDevicePrimaryCtxRetain(&context, dev));
  CHECK(cuCtxSetCurrent(context));
}

static int64_t now_ns(void) { return gpushareStubNowNs(); }

/* ---- info ---- */

static int info(void) {
  size_t free_b = 0, total_b = 0, device_total = 0;
  CUresult rc = cuMemGetInfo(&free_b, &total_b);
  CUdevice dev;
  CHECK(cuCtxGetDevice(&dev));
  CHECK(cuDeviceTotalMem(&device_total, dev));
  nvmlDevice_t handle;
  nvmlMemory_t m1;
  nvmlMemory_v2_t m2 = {.version = nvmlMemory_v2};
  if (nvmlInit_v2() != NVML_SUCCESS || nvmlDeviceGetHandleByIndex_v2((unsigned)dev, &handle) != NVML_SUCCESS ||
      nvmlDeviceGetMemoryInfo(handle, &m1) != NVML_SUCCESS || nvmlDeviceGetMemoryInfo_v2(handle, &m2) != NVML_SUCCESS) {
    printf("{\"error\": \"nvml\"}\n");
    return 3;
  }
  printf("{\"rc\": %d, \"free\": %zu, \"total\": %zu, \"device_total\": %zu, "
         "\"nvml_v1\": {\"total\": %llu, \"free\": %llu, \"used\": %llu}, "
         "\"nvml_v2\": {\"total\": %llu, \"free\": %llu, \"used\": %llu}}\n",
         (int)rc, free_b, total_b, device_total, m1.total, m1.free, m1.used, m2.total, m2.free, m2.used);
  return 0;
}

/* ---- sweep ---- */

static int failures;

static void fail(const char *what, size_t a, size_t b) {
  printf("%s{\"what\": \"%s\", \"got\": %zu, \"expected\": %zu}", failures++ ? ", " : "", what, a, b);
}

static void expect_info(size_t total_expected, size_t used) {
  size_t free_b = 0, total_b = 0;
  if (cuMemGetInfo(&free_b, &total_b) != CUDA_SUCCESS) fail("cuMemGetInfo rc", 1, 0);
  if (total_b != total_expected) fail("total", total_b, total_expected);
  size_t free_expected = used >= total_expected ? 0 : total_expected - used;
  if (free_b != free_expected) fail("free", free_b, free_expected);
}

static int sweep(void) {
  size_t free0, total;
  CHECK(cuMemGetInfo(&free0, &total));
  size_t used0 = total - free0;
  size_t steps = 0;
  printf("{\"failures\": [");
  /* one at a time: 2^k - 1, 2^k, 2^k + 1 up to the limit; every step back to baseline */
  for (int k = 0; ((size_t)1 << k) <= total; k++) {
    for (int delta = -1; delta <= 1; delta++) {
      size_t bytes = ((size_t)1 << k) + (size_t)delta;
      if (bytes == 0) continue;
      CUdeviceptr p = 0;
      CUresult rc = cuMemAlloc(&p, bytes);
      steps++;
      if (used0 + bytes <= total) {
        if (rc != CUDA_SUCCESS) fail("alloc within limit rc", (size_t)rc, 0);
        expect_info(total, used0 + bytes);
        if (cuMemFree(p) != CUDA_SUCCESS) fail("free rc", 1, 0);
      } else if (rc != CUDA_ERROR_OUT_OF_MEMORY) {
        fail("alloc over limit rc", (size_t)rc, CUDA_ERROR_OUT_OF_MEMORY);
      }
      expect_info(total, used0);
    }
  }
  /* cumulative: hold 2^k±1 blocks until the next one no longer fits, then release all */
  CUdeviceptr held[256];
  size_t held_n = 0, used = used0;
  for (int k = 0; held_n < 250; k = (k + 1) % 24) {
    size_t bytes = ((size_t)1 << k) + (size_t)(k % 3) - 1;
    if (bytes == 0) continue;
    CUdeviceptr p = 0;
    CUresult rc = cuMemAlloc(&p, bytes);
    steps++;
    if (used + bytes > total) {
      if (rc != CUDA_ERROR_OUT_OF_MEMORY) fail("cumulative over limit rc", (size_t)rc, CUDA_ERROR_OUT_OF_MEMORY);
      break;
    }
    if (rc != CUDA_SUCCESS) {
      fail("cumulative alloc rc", (size_t)rc, 0);
      break;
    }
    held[held_n++] = p;
    used += bytes;
    expect_info(total, used);
  }
  /* exactly the remainder fits; one byte more does not */
  size_t rest = total - used;
  if (rest > 0) {
    CUdeviceptr p = 0, q = 0;
    if (cuMemAlloc(&q, rest + 1) != CUDA_ERROR_OUT_OF_MEMORY) fail("remainder + 1 rc", 1, CUDA_ERROR_OUT_OF_MEMORY);
    if (cuMemAlloc(&p, rest) != CUDA_SUCCESS) fail("remainder rc", 1, 0);
    else held[held_n++] = p;
    expect_info(total, total);
    used = total;
  }
  if (cuMemFree(0) != CUDA_SUCCESS) fail("cuMemFree(0) rc", 1, 0);
  for (size_t i = 0; i < held_n; i++)
    if (cuMemFree(held[i]) != CUDA_SUCCESS) fail("cumulative free rc", i, 0);
  expect_info(total, used0);
  printf("], \"steps\": %zu, \"total\": %zu}\n", steps, total);
  return 0;
}

/* ---- alloc and hold ---- */

static int alloc_hold(size_t bytes, int wait_go) {
  char line[64];
  if (wait_go) {
    printf("{\"ready\": true}\n");
    fflush(stdout);
    if (fgets(line, sizeof line, stdin) == NULL) return 4;
  }
  CUdeviceptr p = 0;
  CUresult rc = cuMemAlloc(&p, bytes);
  printf("{\"rc\": %d}\n", (int)rc);
  fflush(stdout);
  while (fgets(line, sizeof line, stdin) != NULL) {
  }
  if (rc == CUDA_SUCCESS) cuMemFree(p);
  return 0;
}

/* ---- every allocation family ---- */

static void report(const char *name, CUresult rc, int last) {
  printf("\"%s\": %d%s", name, (int)rc, last ? "" : ", ");
}

static int kinds(size_t bytes) {
  size_t free0, total;
  CHECK(cuMemGetInfo(&free0, &total));
  CUdeviceptr p;
  size_t pitch;
  CUarray array;
  CUmipmappedArray mip;
  CUmemGenericAllocationHandle handle;
  CUmemAllocationProp prop = {.type = CU_MEM_ALLOCATION_TYPE_PINNED,
                              .location = {.type = CU_MEM_LOCATION_TYPE_DEVICE, .id = 0}};
  CUmemAllocationProp host_prop = {.type = CU_MEM_ALLOCATION_TYPE_PINNED,
                                   .location = {.type = CU_MEM_LOCATION_TYPE_HOST, .id = 0}};
  CUDA_ARRAY_DESCRIPTOR a2 = {.Width = bytes / 4, .Height = 1, .Format = CU_AD_FORMAT_FLOAT, .NumChannels = 1};
  CUDA_ARRAY3D_DESCRIPTOR a3 = {.Width = bytes / 4, .Height = 1, .Depth = 1, .Format = CU_AD_FORMAT_FLOAT,
                                .NumChannels = 1};
  CUstream stream;
  CHECK(cuStreamCreate(&stream, 0));
  CUmemoryPool pool;
  CHECK(cuDeviceGetDefaultMemPool(&pool, 0));
  printf("{\"over\": {");
  report("cuMemAlloc", cuMemAlloc(&p, bytes), 0);
  report("cuMemAllocManaged", cuMemAllocManaged(&p, bytes, CU_MEM_ATTACH_GLOBAL), 0);
  report("cuMemAllocAsync", cuMemAllocAsync(&p, bytes, stream), 0);
  report("cuMemAllocFromPoolAsync", cuMemAllocFromPoolAsync(&p, bytes, pool, stream), 0);
  report("cuMemAllocPitch", cuMemAllocPitch(&p, &pitch, bytes, 1, 4), 0);
  report("cuMemCreate", cuMemCreate(&handle, bytes, &prop, 0), 0);
  report("cuArrayCreate", cuArrayCreate(&array, &a2), 0);
  report("cuArray3DCreate", cuArray3DCreate(&array, &a3), 0);
  report("cuMipmappedArrayCreate", cuMipmappedArrayCreate(&mip, &a3, 3), 1);
  printf("}, \"under\": {");
  /* Half the limit through each family, freed again; pitch padding is charged too. */
  size_t half = total / 2;
  CUDA_ARRAY_DESCRIPTOR h2 = {.Width = half / 4, .Height = 1, .Format = CU_AD_FORMAT_FLOAT, .NumChannels = 1};
  CUDA_ARRAY3D_DESCRIPTOR h3 = {.Width = half / 4, .Height = 1, .Depth = 1, .Format = CU_AD_FORMAT_FLOAT,
                                .NumChannels = 1};
  CUresult rc;
  rc = cuMemAlloc(&p, half);
  if (rc == CUDA_SUCCESS) rc = cuMemFree(p);
  report("cuMemAlloc", rc, 0);
  rc = cuMemAllocManaged(&p, half, CU_MEM_ATTACH_GLOBAL);
  if (rc == CUDA_SUCCESS) rc = cuMemFree(p);
  report("cuMemAllocManaged", rc, 0);
  rc = cuMemAllocAsync(&p, half, stream);
  if (rc == CUDA_SUCCESS) rc = cuMemFreeAsync(p, stream);
  report("cuMemAllocAsync", rc, 0);
  rc = cuMemAllocFromPoolAsync(&p, half, pool, stream);
  if (rc == CUDA_SUCCESS) rc = cuMemFreeAsync(p, stream);
  if (rc == CUDA_SUCCESS) rc = cuMemPoolTrimTo(pool, 0); /* the pool kept it until now */
  report("cuMemAllocFromPoolAsync", rc, 0);
  /* width just over half: the 512-byte pitch padding must be charged as well */
  rc = cuMemAllocPitch(&p, &pitch, 1000, half / 1000, 4);
  size_t f1, t1;
  cuMemGetInfo(&f1, &t1);
  printf("\"pitch_charged\": %zu, \"pitch_expected\": %zu, ", free0 - f1, pitch * (half / 1000));
  if (rc == CUDA_SUCCESS) rc = cuMemFree(p);
  report("cuMemAllocPitch", rc, 0);
  rc = cuMemCreate(&handle, half, &prop, 0);
  if (rc == CUDA_SUCCESS) rc = cuMemRelease(handle);
  report("cuMemCreate", rc, 0);
  rc = cuMemCreate(&handle, 2 * total, &host_prop, 0);
  if (rc == CUDA_SUCCESS) rc = cuMemRelease(handle);
  report("cuMemCreate_host", rc, 0);
  rc = cuArrayCreate(&array, &h2);
  if (rc == CUDA_SUCCESS) rc = cuArrayDestroy(array);
  report("cuArrayCreate", rc, 0);
  rc = cuArray3DCreate(&array, &h3);
  if (rc == CUDA_SUCCESS) rc = cuArrayDestroy(array);
  report("cuArray3DCreate", rc, 0);
  rc = cuMipmappedArrayCreate(&mip, &h3, 1);
  if (rc == CUDA_SUCCESS) rc = cuMipmappedArrayDestroy(mip);
  report("cuMipmappedArrayCreate", rc, 0);
  report("cuMemFree_unknown", cuMemFree((CUdeviceptr)0x1234), 1);
  size_t free1;
  CHECK(cuMemGetInfo(&free1, &total));
  printf("}, \"free_before\": %zu, \"free_after\": %zu}\n", free0, free1);
  return 0;
}

/* ---- entry points ---- */

static const char *const known_names[] = {
    "cuGetProcAddress", "cuGetProcAddress_v2", "cuMemAlloc_v2", "cuMemAllocPitch_v2", "cuMemAllocManaged",
    "cuMemAllocAsync", "cuMemAllocAsync_ptsz", "cuMemAllocFromPoolAsync", "cuMemAllocFromPoolAsync_ptsz",
    "cuMemFreeAsync", "cuMemFreeAsync_ptsz", "cuMemFree_v2", "cuMemCreate", "cuMemRelease", "cuArrayCreate_v2",
    "cuArray3DCreate_v2", "cuArrayDestroy", "cuMipmappedArrayCreate", "cuMipmappedArrayDestroy",
    "cuMemGetInfo_v2", "cuDeviceTotalMem_v2", "cuLaunchKernel", "cuLaunchKernel_ptsz", "cuLaunchKernelEx",
    "cuLaunchKernelEx_ptsz", "cuLaunchCooperativeKernel", "cuLaunchCooperativeKernel_ptsz", "cuGraphLaunch",
    "cuGraphLaunch_ptsz", "cuInit", "cuEventRecord", "cuEventRecord_ptsz", "cuStreamSynchronize",
    "cuStreamSynchronize_ptsz", "cuCtxGetDevice", "cuEventElapsedTime", "cuEventElapsedTime_v2", NULL};

static void *hook_symbol(const char *name) {
  void *hook = dlopen("libgpushare-vgpu.so", RTLD_LAZY | RTLD_NOLOAD);
  void *fn = hook ? dlsym(hook, name) : NULL;
  if (hook) dlclose(hook);
  /* only a function the hook itself defines counts */
  Dl_info where;
  if (fn == NULL || dladdr(fn, &where) == 0 || strstr(where.dli_fname, "libgpushare-vgpu") == NULL) return NULL;
  return fn;
}

static void print_identity(void *fn) {
  const char *as_hook = NULL, *as_stub = NULL;
  for (int i = 0; known_names[i] != NULL && fn != NULL; i++) {
    if (as_hook == NULL && hook_symbol(known_names[i]) == fn) as_hook = known_names[i];
    if (as_stub == NULL && gpushareStubSymbol(known_names[i]) == fn) as_stub = known_names[i];
  }
  printf("\"hook\": %s%s%s, \"stub\": %s%s%s", as_hook ? "\"" : "", as_hook ? as_hook : "null", as_hook ? "\"" : "",
         as_stub ? "\"" : "", as_stub ? as_stub : "null", as_stub ? "\"" : "");
}

static int proc(const char *name, int version, unsigned long long flags) {
  void *fn = (void *)0x1;
  CUdriverProcAddressQueryResult status = (CUdriverProcAddressQueryResult)-1;
  CUresult rc = cuGetProcAddress(name, &fn, version, flags, &status);
  printf("{\"rc\": %d, \"status\": %d, \"null\": %s, ", (int)rc, (int)status, fn == NULL ? "true" : "false");
  print_identity(fn);
  printf("}\n");
  return 0;
}

static int dlsym_identity(const char *name, int next) {
  void *driver = dlopen("libcuda.so.1", RTLD_NOW);
  void *fn = next ? dlsym(RTLD_NEXT, name) : driver ? dlsym(driver, name) : NULL;
  printf("{\"null\": %s, ", fn == NULL ? "true" : "false");
  print_identity(fn);
  printf("}\n");
  return 0;
}

typedef __typeof__(&cuLaunchKernel) launch_fn;
typedef __typeof__(&cuMemAlloc) alloc_fn;

/* Launches one kernel and allocates over the limit through the chosen path. */
static int call_via(const char *via, int per_thread) {
  launch_fn launch = NULL;
  alloc_fn alloc = NULL;
  const char *launch_name = per_thread ? "cuLaunchKernel_ptsz" : "cuLaunchKernel";
  if (strcmp(via, "direct") == 0) {
    launch = cuLaunchKernel;
    alloc = cuMemAlloc;
  } else if (strcmp(via, "dlsym") == 0) {
    void *driver = dlopen("libcuda.so.1", RTLD_NOW);
    launch = (launch_fn)dlsym(driver, launch_name);
    alloc = (alloc_fn)dlsym(driver, "cuMemAlloc_v2");
  } else {
    cuuint64_t flags = per_thread ? CU_GET_PROC_ADDRESS_PER_THREAD_DEFAULT_STREAM : CU_GET_PROC_ADDRESS_DEFAULT;
    CUdriverProcAddressQueryResult status;
    CHECK(cuGetProcAddress("cuLaunchKernel", (void **)&launch, 12000, flags, &status));
    CHECK(cuGetProcAddress("cuMemAlloc", (void **)&alloc, 12000, flags, &status));
  }
  CUmodule module;
  CUfunction f;
  CHECK(cuModuleLoadData(&module, "stub"));
  CHECK(cuModuleGetFunction(&f, module, "work_1us"));
  CUresult launch_rc = launch(f, 1, 1, 1, 1, 1, 1, 0, NULL, NULL, NULL);
  const char *called = gpushareStubLastLaunch(), *recorded = gpushareStubLastRecord();
  size_t free_b, total_b;
  CHECK(cuMemGetInfo(&free_b, &total_b));
  CUdeviceptr p;
  CUresult over_rc = alloc(&p, total_b + 1);
  printf("{\"launch_rc\": %d, \"called\": \"%s\", \"last_record\": \"%s\", \"over_limit_rc\": %d}\n",
         (int)launch_rc, called, recorded, (int)over_rc);
  return 0;
}

/* Launches once through every hooked launch entry point, as cuGetProcAddress hands it out. */
static int variants(void) {
  CUmodule module;
  CUfunction f;
  CUstream stream;
  CUgraph graph;
  CUgraphExec exec;
  CHECK(cuModuleLoadData(&module, "stub"));
  CHECK(cuModuleGetFunction(&f, module, "work_1us"));
  CHECK(cuStreamCreate(&stream, 0));
  CHECK(cuGraphCreate(&graph, 0));
  CUDA_KERNEL_NODE_PARAMS node = {.func = f, .gridDimX = 1, .gridDimY = 1, .gridDimZ = 1, .blockDimX = 1,
                                  .blockDimY = 1, .blockDimZ = 1};
  CHECK(cuGraphAddKernelNode(NULL, graph, NULL, 0, &node));
  CHECK(cuGraphInstantiate(&exec, graph, 0));
  CUlaunchConfig config = {.gridDimX = 1, .gridDimY = 1, .gridDimZ = 1, .blockDimX = 1, .blockDimY = 1,
                           .blockDimZ = 1, .hStream = stream};
  static const char *const bases[] = {"cuLaunchKernel", "cuLaunchKernelEx", "cuLaunchCooperativeKernel",
                                      "cuGraphLaunch"};
  printf("{");
  for (int per_thread = 0; per_thread <= 1; per_thread++) {
    for (int i = 0; i < 4; i++) {
      void *fn = NULL;
      CUdriverProcAddressQueryResult status;
      cuuint64_t flags = per_thread ? CU_GET_PROC_ADDRESS_PER_THREAD_DEFAULT_STREAM : CU_GET_PROC_ADDRESS_DEFAULT;
      CHECK(cuGetProcAddress(bases[i], &fn, 12000, flags, &status));
      CUresult rc;
      if (i == 0) rc = ((__typeof__(&cuLaunchKernel))fn)(f, 1, 1, 1, 1, 1, 1, 0, stream, NULL, NULL);
      else if (i == 1) rc = ((__typeof__(&cuLaunchKernelEx))fn)(&config, f, NULL, NULL);
      else if (i == 2) rc = ((__typeof__(&cuLaunchCooperativeKernel))fn)(f, 1, 1, 1, 1, 1, 1, 0, stream, NULL);
      else rc = ((__typeof__(&cuGraphLaunch))fn)(exec, stream);
      printf("%s\"%s%s\": {\"rc\": %d, \"launched\": \"%s\", \"recorded\": \"%s\"}",
             per_thread || i ? ", " : "", bases[i], per_thread ? "_ptsz" : "", (int)rc, gpushareStubLastLaunch(),
             gpushareStubLastRecord());
    }
  }
  printf("}\n");
  return 0;
}

/* ---- fork ---- */

static volatile int stop_churn;

static void *churn(void *arg) {
  (void)arg;
  while (!stop_churn) {
    CUdeviceptr p;
    if (cuMemAlloc(&p, 4096) == CUDA_SUCCESS) cuMemFree(p);
  }
  return NULL;
}

static int fork_test(size_t parent_bytes, size_t child_bytes) {
  size_t free0, total;
  CHECK(cuMemGetInfo(&free0, &total));
  CUdeviceptr held;
  CHECK(cuMemAlloc(&held, parent_bytes));
  pthread_t thread;
  pthread_create(&thread, NULL, churn, NULL);
  int children_ok = 0, children = 20;
  for (int i = 0; i < children; i++) {
    pid_t pid = fork();
    if (pid == 0) {
      alarm(10); /* a deadlocked child dies instead of hanging the test */
      CUdeviceptr p;
      size_t f, t;
      int ok = cuMemAlloc(&p, child_bytes) == CUDA_SUCCESS;
      /* exact check: the parent's allocation counted once, the churn's 4 KiB at most */
      ok = ok && cuMemGetInfo(&f, &t) == CUDA_SUCCESS && free0 - f >= parent_bytes + child_bytes &&
           free0 - f <= parent_bytes + child_bytes + 4096;
      ok = ok && cuMemFree(p) == CUDA_SUCCESS;
      ok = ok && cuMemGetInfo(&f, &t) == CUDA_SUCCESS && free0 - f >= parent_bytes && free0 - f <= parent_bytes + 4096;
      if (i % 2 == 0) cuMemAlloc(&p, child_bytes); /* exits holding it: must be reclaimed */
      _exit(ok ? 0 : 1);
    }
    int status = 0;
    if (pid > 0 && waitpid(pid, &status, 0) == pid && WIFEXITED(status) && WEXITSTATUS(status) == 0) children_ok++;
  }
  stop_churn = 1;
  pthread_join(thread, NULL);
  size_t f, t;
  CHECK(cuMemGetInfo(&f, &t));
  size_t parent_used = free0 - f;
  CHECK(cuMemFree(held));
  CHECK(cuMemGetInfo(&f, &t));
  printf("{\"children\": %d, \"children_ok\": %d, \"parent_used\": %zu, \"parent_bytes\": %zu, "
         "\"free_restored\": %s}\n",
         children, children_ok, parent_used, parent_bytes, f == free0 ? "true" : "false");
  return 0;
}

/* ---- compute share, measured on the model's ground truth ---- */

#define MAX_WINDOWS 64

static int64_t tenant_sm(void) { return gpushareStubTenantSmNs(gpushareStubTenant(), 0); }

static void sleep_until_ns(int64_t deadline) {
  struct timespec ts = {.tv_sec = deadline / 1000000000LL, .tv_nsec = deadline % 1000000000LL};
  while (clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &ts, NULL) != 0) {
  }
}

struct worker {
  const char *pattern;
  CUfunction f;
  CUstream stream;
  CUgraphExec exec;
  int64_t until_ns;
  long launches;
  CUresult rc;
};

static void *work_loop(void *arg) {
  struct worker *w = arg;
  cuCtxSetCurrent(context);
  void *per_thread_launch = NULL;
  if (strcmp(w->pattern, "threads") == 0) {
    CUdriverProcAddressQueryResult status;
    w->rc = cuGetProcAddress("cuLaunchKernel", &per_thread_launch, 12000, CU_GET_PROC_ADDRESS_PER_THREAD_DEFAULT_STREAM,
                             &status);
  }
  int64_t duration = 0;
  int32_t sm = 100;
  void *params[2] = {&duration, &sm};
  while (w->rc == CUDA_SUCCESS && now_ns() < w->until_ns) {
    const char *p = w->pattern;
    if (strcmp(p, "threads") == 0) {
      w->rc = ((__typeof__(&cuLaunchKernel))per_thread_launch)(w->f, 1, 1, 1, 1, 1, 1, 0, NULL, NULL, NULL);
    } else if (strcmp(p, "graph") == 0 || strcmp(p, "capture") == 0) {
      w->rc = cuGraphLaunch(w->exec, w->stream);
    } else if (strcmp(p, "periodic") == 0) { /* one function: long every 8th launch */
      duration = w->launches % 8 == 0 ? 2000000 : 50000;
      w->rc = cuLaunchKernel(w->f, 1, 1, 1, 1, 1, 1, 0, w->stream, params, NULL);
    } else {
      w->rc = cuLaunchKernel(w->f, 1, 1, 1, 1, 1, 1, 0, w->stream, NULL, NULL);
      if (w->rc == CUDA_SUCCESS && (strcmp(p, "long") == 0 || (strcmp(p, "streams3") == 0 && w->launches % 4 == 3)))
        w->rc = cuStreamSynchronize(w->stream);
    }
    w->launches++;
  }
  return NULL;
}

/* Runs PATTERN from BEGIN to END (CLOCK_MONOTONIC ns, the same clock as Python's
 * time.monotonic_ns) and reports the SM-time the tenant received from MEASURE to END as a share
 * of wall time, in total and per window of WINDOW_MS. Patterns:
 *   one       1 ms kernels on one stream, no synchronisation
 *   tiny      20 us kernels on one stream, no synchronisation
 *   streams3  three threads, a stream each, 1 ms kernels, synchronising every 4
 *   periodic  one function, 2 ms every 8th launch and 50 us otherwise, no synchronisation
 *   graph     graphs of ten 200 us kernels, no synchronisation
 *   capture   200 captured 1 ms launches (timed), then graphs of ten 1 ms kernels in a loop
 *   long      20 ms kernels, synchronising after each
 *   threads   four threads on their per-thread default streams, 20 us kernels */
static int share(const char *pattern, int64_t begin, int64_t measure, int64_t end, int window_ms) {
  CUmodule module;
  CUfunction f;
  const char *name = "one_1ms";
  if (strcmp(pattern, "tiny") == 0 || strcmp(pattern, "threads") == 0) name = "tiny_20us";
  else if (strcmp(pattern, "long") == 0) name = "long_20ms";
  else if (strcmp(pattern, "periodic") == 0) name = "dyn_periodic";
  else if (strcmp(pattern, "graph") == 0) name = "node_200us";
  CHECK(cuModuleLoadData(&module, "stub"));
  CHECK(cuModuleGetFunction(&f, module, name));
  int threads = strcmp(pattern, "streams3") == 0 ? 3 : strcmp(pattern, "threads") == 0 ? 4 : 1;
  struct worker workers[4];
  CUgraphExec exec = NULL;
  double capture_s = -1;
  if (strcmp(pattern, "graph") == 0 || strcmp(pattern, "capture") == 0) {
    CUgraph graph;
    CUstream capture;
    CHECK(cuStreamCreate(&capture, 0));
    if (strcmp(pattern, "capture") == 0) { /* timed: 200 captured 1 ms launches must not be throttled */
      int64_t t0 = now_ns();
      CHECK(cuStreamBeginCapture(capture, CU_STREAM_CAPTURE_MODE_GLOBAL));
      for (int i = 0; i < 200; i++) CHECK(cuLaunchKernel(f, 1, 1, 1, 1, 1, 1, 0, capture, NULL, NULL));
      CHECK(cuStreamEndCapture(capture, &graph));
      capture_s = (double)(now_ns() - t0) / 1e9;
    }
    CHECK(cuStreamBeginCapture(capture, CU_STREAM_CAPTURE_MODE_GLOBAL));
    for (int i = 0; i < 10; i++) CHECK(cuLaunchKernel(f, 1, 1, 1, 1, 1, 1, 0, capture, NULL, NULL));
    CHECK(cuStreamEndCapture(capture, &graph));
    CHECK(cuGraphInstantiate(&exec, graph, 0));
  }
  sleep_until_ns(begin);
  pthread_t ids[4];
  for (int i = 0; i < threads; i++) {
    workers[i] = (struct worker){pattern, f, NULL, exec, end, 0, CUDA_SUCCESS};
    CHECK(cuStreamCreate(&workers[i].stream, 0));
    pthread_create(&ids[i], NULL, work_loop, &workers[i]);
  }
  int windows = (int)((end - measure) / ((int64_t)window_ms * 1000000LL));
  if (windows < 1) windows = 1;
  if (windows > MAX_WINDOWS) windows = MAX_WINDOWS;
  int64_t at[MAX_WINDOWS + 1], sm[MAX_WINDOWS + 1];
  for (int i = 0; i <= windows; i++) {
    sleep_until_ns(measure + (end - measure) * i / windows);
    at[i] = now_ns();
    sm[i] = tenant_sm();
  }
  long launches = 0;
  for (int i = 0; i < threads; i++) {
    pthread_join(ids[i], NULL);
    launches += workers[i].launches;
    if (workers[i].rc != CUDA_SUCCESS) printf("{\"error\": \"launch %d\"}\n", (int)workers[i].rc);
  }
  printf("{\"share\": %.4f, \"windows\": [", (double)(sm[windows] - sm[0]) / (double)(at[windows] - at[0]));
  for (int i = 0; i < windows; i++)
    printf("%s%.4f", i ? ", " : "", (double)(sm[i + 1] - sm[i]) / (double)(at[i + 1] - at[i]));
  printf("], \"launches\": %ld, \"capture_seconds\": %.4f, \"device_waits\": %lld}\n", launches, capture_s,
         (long long)gpushareStubWaits());
  fflush(stdout);
  _exit(0); /* do not wait for queued work */
}

/* ---- the launch path: never waits on the GPU; debt is bounded ---- */

static double launch_seconds(CUfunction f, CUstream stream, int64_t duration_ns) {
  int32_t sm = 100;
  void *params[2] = {&duration_ns, &sm};
  int64_t t0 = now_ns();
  CHECK(cuLaunchKernel(f, 1, 1, 1, 1, 1, 1, 0, stream, params, NULL));
  return (double)(now_ns() - t0) / 1e9;
}

/* A KERNEL_MS kernel, then (without synchronising) a launch of another function on the same
 * stream; then, after synchronising, one more launch, which pays the debt. */
static int launch_waits(int64_t kernel_ms) {
  CUmodule module;
  CUfunction big, other;
  CUstream stream;
  CHECK(cuModuleLoadData(&module, "stub"));
  CHECK(cuModuleGetFunction(&big, module, "dyn_big"));
  CHECK(cuModuleGetFunction(&other, module, "dyn_other"));
  CHECK(cuStreamCreate(&stream, 0));
  double first = launch_seconds(big, stream, kernel_ms * 1000000LL);
  double behind_busy_gpu = launch_seconds(other, stream, 1000);
  CHECK(cuStreamSynchronize(stream));
  double after_debt = launch_seconds(other, stream, 1000);
  printf("{\"first\": %.4f, \"behind_busy_gpu\": %.4f, \"after_debt\": %.4f}\n", first, behind_busy_gpu,
         after_debt);
  return 0;
}

/* ---- NVML devices by index: total memory each reports ---- */

static int nvml_totals(void) {
  unsigned count = 0;
  if (nvmlInit_v2() != NVML_SUCCESS || nvmlDeviceGetCount_v2(&count) != NVML_SUCCESS) {
    printf("{\"error\": \"nvml\"}\n");
    return 3;
  }
  printf("{\"totals\": [");
  for (unsigned i = 0; i < count; i++) {
    nvmlDevice_t handle;
    nvmlMemory_t m = {0, 0, 0};
    nvmlDeviceGetHandleByIndex_v2(i, &handle);
    nvmlDeviceGetMemoryInfo(handle, &m);
    printf("%s%llu", i ? ", " : "", m.total);
  }
  printf("]}\n");
  return 0;
}

/* ---- memory cases on the model: the hook's view and the model's truth side by side ---- */

static size_t free_now(void) {
  size_t f = 0, t = 0;
  cuMemGetInfo(&f, &t);
  return f;
}

static long long truth(void) { return (long long)gpushareStubTenantMem(gpushareStubTenant(), 0); }

/* An executable graph of one allocation node of `bytes` and one kernel. */
static CUgraphExec graph_with_memory(CUfunction f, size_t bytes) {
  CUgraph graph;
  CUgraphExec exec;
  CHECK(cuGraphCreate(&graph, 0));
  CUDA_MEM_ALLOC_NODE_PARAMS alloc = {.poolProps = {.allocType = CU_MEM_ALLOCATION_TYPE_PINNED,
                                                    .location = {.type = CU_MEM_LOCATION_TYPE_DEVICE}},
                                      .bytesize = bytes};
  CHECK(cuGraphAddMemAllocNode(NULL, graph, NULL, 0, &alloc));
  CUDA_KERNEL_NODE_PARAMS node = {.func = f, .gridDimX = 1, .gridDimY = 1, .gridDimZ = 1, .blockDimX = 1,
                                  .blockDimY = 1, .blockDimZ = 1};
  CHECK(cuGraphAddKernelNode(NULL, graph, NULL, 0, &node));
  CHECK(cuGraphInstantiate(&exec, graph, 0));
  CHECK(cuGraphDestroy(graph));
  return exec;
}

static int memcase(const char *name) {
  const size_t mib = 1 << 20;
  printf("{\"case\": \"%s\", \"free0\": %zu, \"truth0\": %lld", name, free_now(), truth());
  if (strcmp(name, "pool") == 0) { /* freed memory stays in the pool, and charged, until trimmed */
    CUstream stream;
    CUmemoryPool pool;
    CUdeviceptr p;
    CHECK(cuStreamCreate(&stream, 0));
    CHECK(cuDeviceGetDefaultMemPool(&pool, 0));
    CHECK(cuMemAllocAsync(&p, 256 * mib, stream));
    printf(", \"allocated\": [%zu, %lld]", free_now(), truth());
    CHECK(cuMemFreeAsync(p, stream));
    printf(", \"freed\": [%zu, %lld]", free_now(), truth());
    CHECK(cuMemAllocAsync(&p, 128 * mib, stream)); /* served by the pool: nothing more */
    printf(", \"reused\": [%zu, %lld]", free_now(), truth());
    CHECK(cuMemFreeAsync(p, stream));
    CHECK(cuMemPoolTrimTo(pool, 0));
    printf(", \"trimmed\": [%zu, %lld]", free_now(), truth());
  } else if (strcmp(name, "pooldevice") == 0) { /* a pool on device 1, used from device 0 */
    CUcontext other;
    CUdevice one;
    CHECK(cuDeviceGet(&one, 1));
    CHECK(cuDevicePrimaryCtxRetain(&other, one));
    CHECK(cuCtxSetCurrent(other));
    size_t free1 = free_now();
    CHECK(cuCtxSetCurrent(context));
    size_t free0 = free_now();
    CUmemPoolProps props = {.allocType = CU_MEM_ALLOCATION_TYPE_PINNED,
                            .location = {.type = CU_MEM_LOCATION_TYPE_DEVICE, .id = 1}};
    CUmemoryPool pool;
    CUstream stream;
    CUdeviceptr p;
    CHECK(cuMemPoolCreate(&pool, &props));
    CHECK(cuStreamCreate(&stream, 0));
    CHECK(cuMemAllocFromPoolAsync(&p, 256 * mib, pool, stream));
    size_t after0 = free_now();
    CHECK(cuCtxSetCurrent(other));
    printf(", \"device0_taken\": %zu, \"device1_taken\": %zu", free0 - after0, free1 - free_now());
    CHECK(cuCtxSetCurrent(context));
  } else if (strcmp(name, "graphmem") == 0) { /* graph allocation nodes: the graph pool */
    CUmodule module;
    CUfunction f;
    CUstream stream;
    CHECK(cuModuleLoadData(&module, "stub"));
    CHECK(cuModuleGetFunction(&f, module, "node_100us"));
    CHECK(cuStreamCreate(&stream, 0));
    CUgraphExec small = graph_with_memory(f, 512 * mib), big = graph_with_memory(f, 4096 * mib);
    printf(", \"instantiated\": [%zu, %lld]", free_now(), truth());
    printf(", \"small_rc\": %d", (int)cuGraphLaunch(small, stream));
    CHECK(cuStreamSynchronize(stream));
    printf(", \"launched\": [%zu, %lld]", free_now(), truth());
    printf(", \"big_rc\": %d", (int)cuGraphLaunch(big, stream)); /* over the limit: refused */
    printf(", \"refused\": [%zu, %lld]", free_now(), truth());
    CHECK(cuGraphExecDestroy(small));
    CHECK(cuDeviceGraphMemTrim(0));
    printf(", \"trimmed\": [%zu, %lld]", free_now(), truth());
  } else if (strcmp(name, "vmm") == 0) { /* released while mapped: still held until unmapped */
    CUmemGenericAllocationHandle handle;
    CUmemAllocationProp prop = {.type = CU_MEM_ALLOCATION_TYPE_PINNED, .location = {.type = CU_MEM_LOCATION_TYPE_DEVICE}};
    CUdeviceptr va;
    CHECK(cuMemCreate(&handle, 256 * mib, &prop, 0));
    CHECK(cuMemAddressReserve(&va, 256 * mib, 0, 0, 0));
    CHECK(cuMemMap(va, 256 * mib, 0, handle, 0));
    printf(", \"mapped\": [%zu, %lld]", free_now(), truth());
    CHECK(cuMemRelease(handle));
    printf(", \"released\": [%zu, %lld]", free_now(), truth());
    CHECK(cuMemUnmap(va, 256 * mib));
    printf(", \"unmapped\": [%zu, %lld]", free_now(), truth());
  } else if (strcmp(name, "context") == 0) { /* a context's memory comes back with it */
    CUcontext ctx;
    CUdeviceptr p;
    CHECK(cuCtxCreate(&ctx, NULL, 0, 0));
    CHECK(cuMemAlloc(&p, 300 * mib));
    printf(", \"created\": [%zu, %lld]", free_now(), truth());
    CHECK(cuCtxDestroy(ctx));
    CHECK(cuCtxSetCurrent(context));
    printf(", \"destroyed\": [%zu, %lld]", free_now(), truth());
  } else if (strcmp(name, "module") == 0) { /* module images are device memory too */
    CUmodule modules[8];
    for (int i = 0; i < 8; i++) CHECK(cuModuleLoadData(&modules[i], "stub"));
    printf(", \"loaded\": [%zu, %lld]", free_now(), truth());
    for (int i = 0; i < 8; i++) CHECK(cuModuleUnload(modules[i]));
    printf(", \"unloaded\": [%zu, %lld]", free_now(), truth());
  } else if (strcmp(name, "zombie") == 0) { /* an unreaped child's memory is reclaimed */
    size_t f0 = free_now();
    pid_t pid = fork();
    if (pid == 0) {
      CUdeviceptr p;
      _exit(cuMemAlloc(&p, f0 / 2 + 1) == CUDA_SUCCESS ? 0 : 1);
    }
    char path[64], buffer[512];
    snprintf(path, sizeof path, "/proc/%d/stat", (int)pid);
    for (int tries = 0; tries < 2000; tries++) { /* until it is a zombie (not reaped) */
      FILE *f = fopen(path, "r");
      size_t n = f ? fread(buffer, 1, sizeof buffer - 1, f) : 0;
      if (f) fclose(f);
      buffer[n] = '\0';
      char *close = strrchr(buffer, ')');
      if (close != NULL && close[2] == 'Z') break;
      struct timespec pause = {0, 1000000};
      nanosleep(&pause, NULL);
    }
    CUdeviceptr p;
    printf(", \"alloc_after_zombie\": %d", (int)cuMemAlloc(&p, f0 / 2 + 1));
    waitpid(pid, NULL, 0);
  } else {
    printf(", \"error\": \"unknown case\"");
  }
  printf("}\n");
  return 0;
}

/* Allocates and frees random sizes through MODE (plain, async, vmm, mixed) for SECONDS, always
 * up to refusal; prints the most physical memory the tenant ever held (the model's truth). */
static int stress(const char *mode, double seconds) {
  const size_t mib = 1 << 20;
  CUstream stream;
  CUmemoryPool pool;
  CUmodule module;
  CUfunction f;
  CHECK(cuModuleLoadData(&module, "stub"));
  CHECK(cuModuleGetFunction(&f, module, "node_0ns"));
  CHECK(cuStreamCreate(&stream, 0));
  CHECK(cuDeviceGetDefaultMemPool(&pool, 0));
  struct held {
    CUdeviceptr ptr;
    CUmemGenericAllocationHandle handle;
    int kind; /* 0 plain, 1 async, 2 vmm, 3 graph */
    CUgraphExec exec;
    size_t bytes;
  } held[512];
  int n = 0;
  long refused = 0, granted = 0;
  unsigned seed = (unsigned)getpid();
  int64_t until = now_ns() + (int64_t)(seconds * 1e9);
  CUmemAllocationProp prop = {.type = CU_MEM_ALLOCATION_TYPE_PINNED, .location = {.type = CU_MEM_LOCATION_TYPE_DEVICE}};
  while (now_ns() < until) {
    size_t bytes = ((size_t)(rand_r(&seed) % 64) + 1) * mib;
    int kind = strcmp(mode, "plain") == 0   ? 0
               : strcmp(mode, "async") == 0 ? 1
               : strcmp(mode, "vmm") == 0   ? 2
               : strcmp(mode, "graph") == 0 ? 3
                                            : rand_r(&seed) % 4;
    struct held h = {.kind = kind, .bytes = bytes};
    CUresult rc;
    if (kind == 3) {
      h.exec = graph_with_memory(f, bytes);
      rc = cuGraphLaunch(h.exec, stream);
      if (rc != CUDA_SUCCESS) cuGraphExecDestroy(h.exec);
    } else if (kind == 0) {
      rc = cuMemAlloc(&h.ptr, bytes);
    } else if (kind == 1) {
      rc = cuMemAllocAsync(&h.ptr, bytes, stream);
    } else {
      rc = cuMemCreate(&h.handle, bytes, &prop, 0);
      if (rc == CUDA_SUCCESS && cuMemAddressReserve(&h.ptr, bytes, 0, 0, 0) == CUDA_SUCCESS) {
        cuMemMap(h.ptr, bytes, 0, h.handle, 0);
        cuMemRelease(h.handle); /* held through its mapping */
      }
    }
    if (rc == CUDA_SUCCESS && n < 512) {
      held[n++] = h;
      granted++;
      continue;
    }
    refused += rc != CUDA_SUCCESS;
    for (int i = 0; i < n; i++) { /* free about half */
      if (rand_r(&seed) % 2) continue;
      if (held[i].kind == 0) cuMemFree(held[i].ptr);
      else if (held[i].kind == 1) cuMemFreeAsync(held[i].ptr, stream);
      else if (held[i].kind == 2) cuMemUnmap(held[i].ptr, held[i].bytes);
      else cuGraphExecDestroy(held[i].exec);
      held[i--] = held[--n];
    }
    if (rand_r(&seed) % 4 == 0) cuMemPoolTrimTo(pool, 0);
    if (rand_r(&seed) % 4 == 0) cuDeviceGraphMemTrim(0);
  }
  printf("{\"granted\": %ld, \"refused\": %ld, \"peak\": %lld}\n", granted, refused,
         (long long)gpushareStubTenantMemPeak(gpushareStubTenant(), 0));
  return 0;
}

/* Creates, uses and destroys COUNT streams (each with a launch under the limiter); prints the
 * process's resident memory and live events before and after. */
static long rss_kib(void) {
  FILE *f = fopen("/proc/self/statm", "r");
  long pages = 0, resident = 0;
  if (f != NULL) {
    if (fscanf(f, "%ld %ld", &pages, &resident) != 2) resident = 0;
    fclose(f);
  }
  return resident * (sysconf(_SC_PAGESIZE) / 1024);
}

static int streams(int count) {
  CUmodule module;
  CUfunction f;
  CHECK(cuModuleLoadData(&module, "stub"));
  CHECK(cuModuleGetFunction(&f, module, "empty_0ns"));
  long rss[2] = {0, 0};
  long long events[2] = {0, 0};
  for (int i = 0; i < count; i++) {
    if (i == count / 10) { /* after warming up every allocator */
      rss[0] = rss_kib();
      events[0] = (long long)gpushareStubEventsAlive();
    }
    CUstream s;
    CHECK(cuStreamCreate(&s, 0));
    CHECK(cuLaunchKernel(f, 1, 1, 1, 1, 1, 1, 0, s, NULL, NULL));
    CHECK(cuStreamSynchronize(s));
    CHECK(cuStreamDestroy(s));
  }
  rss[1] = rss_kib();
  events[1] = (long long)gpushareStubEventsAlive();
  printf("{\"rss_kib\": [%ld, %ld], \"events\": [%lld, %lld]}\n", rss[0], rss[1], events[0], events[1]);
  return 0;
}

/* ---- a paced workload: a KERNEL_US kernel every EVERY_US for MS milliseconds ---- */

/* Holds BYTES of device memory, then runs one kernel at a time on a stream, each started on a
 * fixed beat; prints the model's ground truth (this tenant's SM time) at its start and end.
 * Ends normally (exit handlers run). */
static int pace(int64_t kernel_us, int64_t every_us, int64_t ms, uint64_t bytes) {
  CUmodule module;
  CUfunction f;
  CUstream stream;
  CUdeviceptr memory = 0;
  CHECK(cuModuleLoadData(&module, "stub"));
  CHECK(cuModuleGetFunction(&f, module, "dyn_pace"));
  CHECK(cuStreamCreate(&stream, 0));
  if (bytes > 0) CHECK(cuMemAlloc(&memory, bytes));
  int64_t began = now_ns(), began_sm = tenant_sm();
  printf("{\"phase\": \"start\", \"at_ns\": %lld, \"sm_ns\": %lld}\n", (long long)began, (long long)began_sm);
  int64_t duration = kernel_us * 1000;
  int32_t sm = 100;
  void *params[2] = {&duration, &sm};
  for (int64_t beat = began; beat < began + ms * 1000000LL; beat += every_us * 1000) {
    sleep_until_ns(beat);
    CHECK(cuLaunchKernel(f, 1, 1, 1, 1, 1, 1, 0, stream, params, NULL));
    CHECK(cuStreamSynchronize(stream));
  }
  printf("{\"phase\": \"end\", \"at_ns\": %lld, \"sm_ns\": %lld, \"began_ns\": %lld, \"began_sm_ns\": %lld}\n",
         (long long)now_ns(), (long long)tenant_sm(), (long long)began, (long long)began_sm);
  if (memory != 0) CHECK(cuMemFree(memory));
  return 0;
}

int main(int argc, char **argv) {
  setvbuf(stdout, NULL, _IOLBF, 0);
  /* Precise wake-ups: the simulated device's synchronisation sleeps until exact deadlines. */
  prctl(PR_SET_TIMERSLACK, 1UL, 0UL, 0UL, 0UL);
  if (argc < 2) {
    fprintf(stderr, "usage: hooktool COMMAND ...\n");
    return 2;
  }
  const char *cmd = argv[1];
  if (strcmp(cmd, "dlsym") == 0 && argc == 3) return dlsym_identity(argv[2], 0);
  if (strcmp(cmd, "next") == 0 && argc == 3) return dlsym_identity(argv[2], 1);
  setup();
  if (strcmp(cmd, "info") == 0) return info();
  if (strcmp(cmd, "sweep") == 0) return sweep();
  if (strcmp(cmd, "alloc") == 0 && argc >= 3)
    return alloc_hold(strtoull(argv[2], NULL, 10), argc > 3 && strcmp(argv[3], "wait") == 0);
  if (strcmp(cmd, "kinds") == 0 && argc == 3) return kinds(strtoull(argv[2], NULL, 10));
  if (strcmp(cmd, "proc") == 0 && argc == 5) return proc(argv[2], atoi(argv[3]), strtoull(argv[4], NULL, 10));
  if (strcmp(cmd, "call") == 0 && argc == 4) return call_via(argv[2], atoi(argv[3]));
  if (strcmp(cmd, "variants") == 0) return variants();
  if (strcmp(cmd, "fork") == 0 && argc == 4) return fork_test(strtoull(argv[2], NULL, 10), strtoull(argv[3], NULL, 10));
  if (strcmp(cmd, "nvml") == 0) return nvml_totals();
  if (strcmp(cmd, "waits") == 0 && argc == 3) return launch_waits(atoll(argv[2]));
  if (strcmp(cmd, "memcase") == 0 && argc == 3) return memcase(argv[2]);
  if (strcmp(cmd, "stress") == 0 && argc == 4) return stress(argv[2], atof(argv[3]));
  if (strcmp(cmd, "streams") == 0 && argc == 3) return streams(atoi(argv[2]));
  if (strcmp(cmd, "pace") == 0 && argc == 6)
    return pace(atoll(argv[2]), atoll(argv[3]), atoll(argv[4]), strtoull(argv[5], NULL, 10));
  if (strcmp(cmd, "share") == 0 && argc == 7)
    return share(argv[2], strtoll(argv[3], NULL, 10), strtoll(argv[4], NULL, 10), strtoll(argv[5], NULL, 10),
                 atoi(argv[6]));
  fprintf(stderr, "hooktool: unknown command or arguments\n");
  return 2;
}
