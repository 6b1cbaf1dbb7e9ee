/* The usage file: the container's measured GPU time and memory, published for the pod's
 * accounting sidecar (format gpushare.io/usage/v1, see docs/sidecar.md and docs/hook.md). */
#ifndef GPUSHARE_HOOK_USAGE_H
#define GPUSHARE_HOOK_USAGE_H

#include "hook_config.h"

/* Remembers where the file goes; shared: whether the container's shared state is in use
 * (without it there is nothing to publish and no lock to elect the writer with). */
void gs_usage_init(const struct gs_config *config, int shared);
/* A process of the container made a context on device: mark it, start this process's writer
 * thread (once). Never blocks on the file. */
void gs_usage_device_in_use(int device);
/* Whether usage files are on (the process registers its pid for the meter then). */
int gs_usage_enabled(void);

void gs_usage_atfork_child(void);

#endif
