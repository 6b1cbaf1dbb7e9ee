/* Logging to stderr with a fixed prefix; a single write(2) per line so lines never interleave. */
#define _GNU_SOURCE
#include "hook_log.h"

#include <stdarg.h>
#include <stdio.h>
#include <unistd.h>

static int current_level = GS_LOG_INFO;

void gs_log_set_level(int level) { current_level = level; }

void gs_log(int level, const char *format, ...) {
  static const char *const names[] = {"error", "warn", "info", "debug"};
  if (level > current_level) return;
  char line[1024];
  int n = snprintf(line, sizeof line, "gpushare-vgpu[%d] %s: ", (int)getpid(), names[level]);
  va_list args;
  va_start(args, format);
  int m = vsnprintf(line + n, sizeof line - (size_t)n - 1, format, args);
  va_end(args);
  size_t len = (size_t)n + (m < 0 ? 0 : ((size_t)m < sizeof line - (size_t)n - 1 ? (size_t)m : sizeof line - (size_t)n - 2));
  line[len++] = '\n';
  ssize_t ignored = write(STDERR_FILENO, line, len);
  (void)ignored;
}
