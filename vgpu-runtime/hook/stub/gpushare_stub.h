/* Stub-only API of the simulated CUDA driver used by the hook's tests and benchmark.
 *
 * The stub libcuda.so.1 is a model of physical GPUs shared by all processes that map the same
 * GPUSHARE_STUB_GPU file; its time is CLOCK_MONOTONIC (see stub_cuda.c and stub_gpu.h).
 */
#ifndef GPUSHARE_STUB_H
#define GPUSHARE_STUB_H

#include <stdint.h>

/* Time (ns) during which at least one kernel ran on physical device `device`. */
int64_t gpushareStubBusyNs(int device);
/* Ground truth: SM-time (ns x SM fraction) tenant received on a physical device so far. */
int64_t gpushareStubTenantSmNs(int tenant, int device);
/* This process's tenant (GPUSHARE_STUB_TENANT, default 0). */
int gpushareStubTenant(void);
/* Physical memory a tenant holds on a device now, and the most it ever held. */
int64_t gpushareStubTenantMem(int tenant, int device);
int64_t gpushareStubTenantMemPeak(int tenant, int device);
/* Synchronisations of this process that waited for the device (any caller). */
int64_t gpushareStubWaits(void);
/* Events of this process not destroyed. */
int64_t gpushareStubEventsAlive(void);
/* Physical memory this process holds on a device (allocations, contexts, modules, pools). */
uint64_t gpushareStubMemUsed(int device);
/* Name of the last driver entry point called by this thread ("" if none). */
const char *gpushareStubLastCall(void);
/* Name of the last launch entry point (kernel or graph) called by this thread ("" if none). */
const char *gpushareStubLastLaunch(void);
/* Name of the last event-record entry point called by this thread ("" if none). */
const char *gpushareStubLastRecord(void);
/* The stub's own implementation of an entry point, bypassing every interposer. */
void *gpushareStubSymbol(const char *name);
/* Monotonic now in ns (the simulated clock). */
int64_t gpushareStubNowNs(void);

#endif
