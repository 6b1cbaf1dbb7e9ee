/* Logging: one prefixed line per message on stderr, filtered by GPUSHARE_LOG_LEVEL. */
#ifndef GPUSHARE_HOOK_LOG_H
#define GPUSHARE_HOOK_LOG_H

enum gs_log_level { GS_LOG_ERROR = 0, GS_LOG_WARN = 1, GS_LOG_INFO = 2, GS_LOG_DEBUG = 3 };

void gs_log_set_level(int level);
void gs_log(int level, const char *format, ...) __attribute__((format(printf, 2, 3)));

#endif
