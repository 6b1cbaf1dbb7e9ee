/* Stub-only API of the simulated CUDA driver used by the hook's tests and benchmark.
 *
 * The stub libcuda.so.1 simulates devices whose simulated time is the host's CLOCK_MONOTONIC:
 * a kernel whose function name ends in _<N>ns, _<N>us or _<N>ms occupies its stream for that
 * long in real time, so a limiter's share can be measured with a wall clock.
 */
#ifndef GPUSHARE_STUB_H
#define GPUSHARE_STUB_H

#include <stdint.h>

/* Kernel time (ns) the device has executed up to now, summed over all streams. */
int64_t gpushareStubBusyNs(int device);
/* Bytes of simulated device memory in use by this process on a device. */
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
