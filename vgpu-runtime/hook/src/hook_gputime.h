/* The client of the node manager's GPU time scheduler (protocol version 1, docs/gputime.md).
 *
 * When GPUSHARE_SCHEDULER_SOCKET is set, one background thread per process holds the session:
 * it asks for a token when a launch waits, reports the SM time the container really used
 * (metered from NVML) when it gives the token back, returns it early when the process is idle,
 * and reconnects with a bounded backoff while the scheduler cannot be reached. Launch threads
 * only read atomics and, when they must wait, sleep on a futex: no lock, no socket I/O. */
#ifndef GPUSHARE_HOOK_GPUTIME_H
#define GPUSHARE_HOOK_GPUTIME_H

#include <stdint.h>

/* Reads GPUSHARE_SCHEDULER_SOCKET (called once, from the hook's initialisation). */
void gs_gputime_init(void);
/* 1 while a session with the scheduler stands: launches then run only under its token (the
 * client thread is started by the first call). 0: the local limit applies. */
int gs_gputime_gating(void);
/* Nanoseconds left under the token held at `now_ns`; <= 0 when none is held. */
int64_t gs_gputime_remaining_ns(int64_t now_ns);
/* Whether a token is held (a cheap check for the launch fast path). */
int gs_gputime_open(void);
/* A launch onto device waits for the token: ask for one. */
void gs_gputime_want(int device);
/* A launch onto device ran (the client's idle detection and metering). */
void gs_gputime_launched(int device);
/* The futex word bumped at every grant, token end and connection change. */
uint32_t gs_gputime_generation(void);
/* Sleeps until the generation moves from `seen` or timeout_ns passes; -1 when a signal
 * interrupted the sleep (the launch then proceeds so that the program sees it). */
int gs_gputime_wait(uint32_t seen, int64_t timeout_ns);
/* In a forked child: no client thread exists there; the child starts its own session. */
void gs_gputime_atfork_child(void);

#endif
