/* Launch family: kernels (plain, Ex, cooperative, their _ptsz forms) and graph launches go
 * through the compute limiter when the device has a core limit; otherwise straight through. */
#include "hook.h"
#include "hook_limiter.h"

struct kernel_launch {
  __typeof__(&cuLaunchKernel) real;
  CUfunction f;
  unsigned int gx, gy, gz, bx, by, bz, shared;
  CUstream stream;
  void **params;
  void **extra;
};

static CUresult call_kernel(void *args) {
  struct kernel_launch *a = args;
  return a->real(a->f, a->gx, a->gy, a->gz, a->bx, a->by, a->bz, a->shared, a->stream, a->params, a->extra);
}

struct cooperative_launch {
  __typeof__(&cuLaunchCooperativeKernel) real;
  CUfunction f;
  unsigned int gx, gy, gz, bx, by, bz, shared;
  CUstream stream;
  void **params;
};

static CUresult call_cooperative(void *args) {
  struct cooperative_launch *a = args;
  return a->real(a->f, a->gx, a->gy, a->gz, a->bx, a->by, a->bz, a->shared, a->stream, a->params);
}

struct ex_launch {
  __typeof__(&cuLaunchKernelEx) real;
  const CUlaunchConfig *config;
  CUfunction f;
  void **params;
  void **extra;
};

static CUresult call_ex(void *args) {
  struct ex_launch *a = args;
  return a->real(a->config, a->f, a->params, a->extra);
}

struct graph_launch {
  __typeof__(&cuGraphLaunch) real;
  CUgraphExec exec;
  CUstream stream;
};

static CUresult call_graph(void *args) {
  struct graph_launch *a = args;
  return a->real(a->exec, a->stream);
}

#define KERNEL_PARAMS                                                                                      \
  CUfunction f, unsigned int gx, unsigned int gy, unsigned int gz, unsigned int bx, unsigned int by, \
      unsigned int bz, unsigned int shared, CUstream stream, void **params

/* Initialises on first use; without any core limit the launch goes straight to the driver. */
#define PASS_THROUGH_UNLESS_LIMITED(real_fn, ...)            \
  const struct gs_config *config = gs_runtime();            \
  if (real_fn == NULL) return CUDA_ERROR_NOT_FOUND;         \
  if (!config->any_core_limit) return real_fn(__VA_ARGS__)

GS_EXPORT CUresult cuLaunchKernel(KERNEL_PARAMS, void **extra) {
  PASS_THROUGH_UNLESS_LIMITED(gs_cuda.cuLaunchKernel, f, gx, gy, gz, bx, by, bz, shared, stream,
              params, extra);
  struct kernel_launch args = {gs_cuda.cuLaunchKernel, f, gx, gy, gz, bx, by, bz, shared, stream, params, extra};
  return gs_limited_launch(stream, 0, f, call_kernel, &args);
}

GS_EXPORT CUresult cuLaunchKernel_ptsz(KERNEL_PARAMS, void **extra) {
  PASS_THROUGH_UNLESS_LIMITED(gs_cuda.cuLaunchKernel_ptsz, f, gx, gy, gz, bx, by, bz, shared, stream,
              params, extra);
  struct kernel_launch args = {gs_cuda.cuLaunchKernel_ptsz, f, gx, gy, gz, bx, by, bz, shared, stream, params, extra};
  return gs_limited_launch(stream, 1, f, call_kernel, &args);
}

GS_EXPORT CUresult cuLaunchCooperativeKernel(KERNEL_PARAMS) {
  PASS_THROUGH_UNLESS_LIMITED(gs_cuda.cuLaunchCooperativeKernel, f, gx, gy, gz, bx, by, bz,
              shared, stream, params);
  struct cooperative_launch args = {gs_cuda.cuLaunchCooperativeKernel, f, gx, gy, gz, bx, by, bz, shared, stream,
                                    params};
  return gs_limited_launch(stream, 0, f, call_cooperative, &args);
}

GS_EXPORT CUresult cuLaunchCooperativeKernel_ptsz(KERNEL_PARAMS) {
  PASS_THROUGH_UNLESS_LIMITED(gs_cuda.cuLaunchCooperativeKernel_ptsz, f, gx, gy, gz, bx, by, bz,
              shared, stream, params);
  struct cooperative_launch args = {gs_cuda.cuLaunchCooperativeKernel_ptsz, f, gx, gy, gz, bx, by, bz, shared,
                                    stream, params};
  return gs_limited_launch(stream, 1, f, call_cooperative, &args);
}

GS_EXPORT CUresult cuLaunchKernelEx(const CUlaunchConfig *launch, CUfunction f, void **params, void **extra) {
  PASS_THROUGH_UNLESS_LIMITED(gs_cuda.cuLaunchKernelEx, launch, f, params, extra);
  CUstream stream = launch != NULL ? launch->hStream : NULL;
  struct ex_launch args = {gs_cuda.cuLaunchKernelEx, launch, f, params, extra};
  return gs_limited_launch(stream, 0, f, call_ex, &args);
}

GS_EXPORT CUresult cuLaunchKernelEx_ptsz(const CUlaunchConfig *launch, CUfunction f, void **params, void **extra) {
  PASS_THROUGH_UNLESS_LIMITED(gs_cuda.cuLaunchKernelEx_ptsz, launch, f, params, extra);
  CUstream stream = launch != NULL ? launch->hStream : NULL;
  struct ex_launch args = {gs_cuda.cuLaunchKernelEx_ptsz, launch, f, params, extra};
  return gs_limited_launch(stream, 1, f, call_ex, &args);
}

struct limited_graph_launch {
  struct graph_launch graph;
  int per_thread;
  int limited;
};

static CUresult call_limited_graph(void *args) {
  struct limited_graph_launch *a = args;
  if (!a->limited) return call_graph(&a->graph);
  return gs_limited_launch(a->graph.stream, a->per_thread, a->graph.exec, call_graph, &a->graph);
}

/* A graph's memory nodes are charged (gs_memory_graph_launch), its kernels limited. */
GS_EXPORT CUresult cuGraphLaunch(CUgraphExec exec, CUstream stream) {
  const struct gs_config *config = gs_runtime();
  if (gs_cuda.cuGraphLaunch == NULL) return CUDA_ERROR_NOT_FOUND;
  struct limited_graph_launch args = {{gs_cuda.cuGraphLaunch, exec, stream}, 0, config->any_core_limit};
  return gs_memory_graph_launch(exec, call_limited_graph, &args);
}

GS_EXPORT CUresult cuGraphLaunch_ptsz(CUgraphExec exec, CUstream stream) {
  const struct gs_config *config = gs_runtime();
  if (gs_cuda.cuGraphLaunch_ptsz == NULL) return CUDA_ERROR_NOT_FOUND;
  struct limited_graph_launch args = {{gs_cuda.cuGraphLaunch_ptsz, exec, stream}, 1, config->any_core_limit};
  return gs_memory_graph_launch(exec, call_limited_graph, &args);
}

/* ---- streams: trackers freed with their stream; captures counted ---- */

GS_EXPORT CUresult cuStreamDestroy_v2(CUstream stream) {
  gs_runtime();
  if (gs_cuda.cuStreamDestroy_v2 == NULL) return CUDA_ERROR_NOT_FOUND;
  gs_limiter_stream_destroyed(stream);
  return gs_cuda.cuStreamDestroy_v2(stream);
}

GS_EXPORT CUresult cuStreamBeginCapture_v2(CUstream stream, CUstreamCaptureMode mode) {
  gs_runtime();
  if (gs_cuda.cuStreamBeginCapture_v2 == NULL) return CUDA_ERROR_NOT_FOUND;
  CUresult rc = gs_cuda.cuStreamBeginCapture_v2(stream, mode);
  if (rc == CUDA_SUCCESS) gs_limiter_capture_begun();
  return rc;
}

GS_EXPORT CUresult cuStreamBeginCapture_v2_ptsz(CUstream stream, CUstreamCaptureMode mode) {
  gs_runtime();
  if (gs_cuda.cuStreamBeginCapture_v2_ptsz == NULL) return CUDA_ERROR_NOT_FOUND;
  CUresult rc = gs_cuda.cuStreamBeginCapture_v2_ptsz(stream, mode);
  if (rc == CUDA_SUCCESS) gs_limiter_capture_begun();
  return rc;
}

GS_EXPORT CUresult cuStreamEndCapture(CUstream stream, CUgraph *graph) {
  gs_runtime();
  if (gs_cuda.cuStreamEndCapture == NULL) return CUDA_ERROR_NOT_FOUND;
  CUresult rc = gs_cuda.cuStreamEndCapture(stream, graph);
  if (rc != CUDA_ERROR_ILLEGAL_STATE) gs_limiter_capture_ended(); /* ended, even when invalidated */
  return rc;
}

GS_EXPORT CUresult cuStreamEndCapture_ptsz(CUstream stream, CUgraph *graph) {
  gs_runtime();
  if (gs_cuda.cuStreamEndCapture_ptsz == NULL) return CUDA_ERROR_NOT_FOUND;
  CUresult rc = gs_cuda.cuStreamEndCapture_ptsz(stream, graph);
  if (rc != CUDA_ERROR_ILLEGAL_STATE) gs_limiter_capture_ended();
  return rc;
}
