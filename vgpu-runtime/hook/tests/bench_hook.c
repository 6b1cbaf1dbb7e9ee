/* Added cost of the hook per call, against direct calls into the stub driver in the same run.
 * Prints one JSON object: median ns per call of each path. Run with the hook preloaded. */
#define _GNU_SOURCE
#include <cuda.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "gpushare_stub.h"

#define ROUNDS 201
#define BATCH 200

static int compare(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return (x > y) - (x < y);
}

typedef __typeof__(&cuLaunchKernel) launch_fn;
typedef __typeof__(&cuMemAlloc) alloc_fn;
typedef __typeof__(&cuMemFree) free_fn;

static CUfunction kernel;
static CUstream stream;

static double launch_batch(launch_fn launch) {
  int64_t t0 = gpushareStubNowNs();
  for (int i = 0; i < BATCH; i++) launch(kernel, 1, 1, 1, 1, 1, 1, 0, stream, NULL, NULL);
  return (double)(gpushareStubNowNs() - t0) / BATCH;
}

static double alloc_batch(alloc_fn alloc, free_fn release, double *free_ns) {
  CUdeviceptr p[BATCH];
  int64_t t0 = gpushareStubNowNs();
  for (int i = 0; i < BATCH; i++) alloc(&p[i], 4096);
  int64_t t1 = gpushareStubNowNs();
  for (int i = 0; i < BATCH; i++) release(p[i]);
  *free_ns = (double)(gpushareStubNowNs() - t1) / BATCH;
  return (double)(t1 - t0) / BATCH;
}

int main(void) {
  CUdevice dev;
  CUcontext ctx;
  CUmodule module;
  if (cuInit(0) || cuDeviceGet(&dev, 0) || cuDevicePrimaryCtxRetain(&ctx, dev) || cuCtxSetCurrent(ctx) ||
      cuModuleLoadData(&module, "stub") || cuModuleGetFunction(&kernel, module, "empty_0ns") ||
      cuStreamCreate(&stream, 0)) {
    printf("{\"error\": \"setup\"}\n");
    return 3;
  }
  launch_fn direct_launch = (launch_fn)gpushareStubSymbol("cuLaunchKernel");
  alloc_fn direct_alloc = (alloc_fn)gpushareStubSymbol("cuMemAlloc_v2");
  free_fn direct_free = (free_fn)gpushareStubSymbol("cuMemFree_v2");
  double launch_hook[ROUNDS], launch_direct[ROUNDS], alloc_hook[ROUNDS], alloc_direct[ROUNDS];
  double free_hook[ROUNDS], free_direct[ROUNDS];
  for (int warm = 0; warm < 20; warm++) launch_batch(cuLaunchKernel);
  /* Interleaved rounds, so noise hits both paths alike. */
  for (int r = 0; r < ROUNDS; r++) {
    launch_direct[r] = launch_batch(direct_launch);
    launch_hook[r] = launch_batch(cuLaunchKernel);
    alloc_direct[r] = alloc_batch(direct_alloc, direct_free, &free_direct[r]);
    alloc_hook[r] = alloc_batch(cuMemAlloc, cuMemFree, &free_hook[r]);
  }
  double *all[] = {launch_hook, launch_direct, alloc_hook, alloc_direct, free_hook, free_direct};
  for (int i = 0; i < 6; i++) qsort(all[i], ROUNDS, sizeof(double), compare);
  int m = ROUNDS / 2;
  printf("{\"launch_hook_ns\": %.1f, \"launch_direct_ns\": %.1f, \"alloc_hook_ns\": %.1f, "
         "\"alloc_direct_ns\": %.1f, \"free_hook_ns\": %.1f, \"free_direct_ns\": %.1f}\n",
         launch_hook[m], launch_direct[m], alloc_hook[m], alloc_direct[m], free_hook[m], free_direct[m]);
  return 0;
}
