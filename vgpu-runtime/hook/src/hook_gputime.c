/* The GPU time scheduler's client (protocol version 1; see hook_gputime.h and docs/hook.md).
 *
 * One thread per process owns the socket. Launch threads and the client thread share only
 * atomics: `connected` (the token gates launches), `open_until_ns` (the end of the token held,
 * 0 when none), `want` (a launch waits), `launched` (a launch ran since the client's last look)
 * and the futex word `generation`, bumped whenever a waiting launch may go on. The client
 * thread never takes a lock a launch thread takes; it blocks in poll() only.
 *
 * What is reported in RELEASE is the container's SM time metered from NVML that no process of
 * the container has reported yet (the limiter keeps that count in the shared state), so work
 * that was still running when a token ended is charged with the next one, and two processes
 * never report the same time.
 */
#define _GNU_SOURCE
#include "hook_gputime.h"

#include <errno.h>
#include <limits.h>
#include <linux/futex.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include "hook_limiter.h"
#include "hook_log.h"

#define PROTOCOL_VERSION 1
#define LINE_BYTES 128                  /* the protocol's longest line, `\n` included */
#define BACKOFF_MIN_NS 50000000LL       /* first wait before reconnecting ... */
#define BACKOFF_MAX_NS 500000000LL      /* ... doubling up to this */
#define GREET_TIMEOUT_NS 1000000000LL   /* WELCOME and QUOTA must arrive within this */
#define IDLE_NS 2000000LL               /* no launch for this long: the token goes back early */
#define SPILL_NS 10000000LL             /* reported beyond the time held, at most (< a longest token) */
#define GRANT_TIMEOUT_MIN_NS 3000000000LL /* no GRANT for max(this, 3 windows): unreachable */

static char socket_path[sizeof(((struct sockaddr_un *)0)->sun_path)];
static int configured;
static int started;             /* the client thread was started (atomic) */
static int connected;           /* atomic */
static int64_t open_until_ns;   /* atomic: end of the token held, 0 when none */
static uint32_t generation;     /* atomic futex word */
static int want;                /* atomic */
static int launched;            /* atomic */
static unsigned device_mask;    /* atomic: devices launched on (metered for RELEASE) */
static int wake_fd = -1;        /* eventfd: a launch wants a token */
static int session_fd = -1;     /* the socket, closed in a forked child */

static int64_t now_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static void bump(void) {
  __atomic_add_fetch(&generation, 1, __ATOMIC_RELEASE);
  syscall(SYS_futex, &generation, FUTEX_WAKE_PRIVATE, INT_MAX, NULL, NULL, 0);
}

void gs_gputime_init(void) {
  const char *path = getenv("GPUSHARE_SCHEDULER_SOCKET");
  if (path == NULL || path[0] == '\0') return;
  if (strlen(path) >= sizeof socket_path) {
    gs_log(GS_LOG_ERROR, "GPUSHARE_SCHEDULER_SOCKET=\"%.60s...\" rejected: a socket path has at most %zu bytes; "
           "using the local core limit", path, sizeof socket_path - 1);
    return;
  }
  strcpy(socket_path, path);
  configured = 1;
}

/* ---- the session (client thread only) ---- */

struct session {
  int fd;
  char buffer[2 * LINE_BYTES];
  size_t length;
  int64_t window_ns;
  int64_t sequence;       /* of the token held, 0 when none */
  int64_t token_end_ns;
  int64_t granted_at_ns;
  int64_t length_us;
  int64_t idle_check_ns;
  int acquire_sent;
  int64_t acquire_at_ns;
  int guarantee_bp, cap_bp, throttled;
};

static int send_line(struct session *s, const char *line) {
  size_t n = strlen(line), done = 0;
  while (done < n) {
    ssize_t sent = send(s->fd, line + done, n - done, MSG_NOSIGNAL);
    if (sent < 0 && errno == EINTR) continue;
    if (sent <= 0) return -1;
    done += (size_t)sent;
  }
  return 0;
}

/* Reads what is there (poll said so); -1 on hang-up or error. */
static int fill(struct session *s) {
  if (s->length >= sizeof s->buffer) return -1; /* a line longer than the protocol allows */
  ssize_t n = recv(s->fd, s->buffer + s->length, sizeof s->buffer - s->length, MSG_DONTWAIT);
  if (n < 0 && (errno == EAGAIN || errno == EINTR)) return 0;
  if (n <= 0) return -1;
  s->length += (size_t)n;
  return 0;
}

/* The next complete line (without `\n`) into line; 1 when there was one. */
static int take_line(struct session *s, char *line) {
  char *end = memchr(s->buffer, '\n', s->length);
  if (end == NULL) return 0;
  size_t n = (size_t)(end - s->buffer);
  if (n >= LINE_BYTES) n = LINE_BYTES - 1;
  memcpy(line, s->buffer, n);
  line[n] = '\0';
  size_t used = (size_t)(end - s->buffer) + 1;
  memmove(s->buffer, s->buffer + used, s->length - used);
  s->length -= used;
  return 1;
}

static int64_t field(const char *line, int index) {
  const char *p = line;
  for (int i = 0; i < index; i++) {
    p = strchr(p, ' ');
    if (p == NULL) return -1;
    p++;
  }
  char *end;
  long long value = strtoll(p, &end, 10);
  if (end == p || value < 0) return -1;
  return value;
}

static void close_token(struct session *s) {
  s->sequence = 0;
  __atomic_store_n(&open_until_ns, 0, __ATOMIC_RELEASE);
  bump();
}

/* Gives the token back with the SM time used; asks for the next one when launches want it. */
static int release(struct session *s, int again) {
  int64_t sequence = s->sequence;
  close_token(s);
  /* The scheduler charges at most the time held plus a longest token: use beyond the time held
   * and SPILL_NS (work still running from before) stays unreported, for the next token. */
  int64_t held_ns = now_ns() - s->granted_at_ns;
  int64_t used_ns = gs_limiter_unreported_ns(__atomic_load_n(&device_mask, __ATOMIC_RELAXED), held_ns + SPILL_NS);
  char line[LINE_BYTES];
  snprintf(line, sizeof line, "RELEASE %lld %lld\n", (long long)sequence, (long long)(used_ns / 1000));
  if (send_line(s, line) != 0) return -1;
  gs_log(GS_LOG_DEBUG, "GPU time: token %lld returned after %lld us of %lld us, %lld us used", (long long)sequence,
         (long long)held_ns / 1000, (long long)s->length_us, (long long)(used_ns / 1000));
  if (again || __atomic_load_n(&want, __ATOMIC_ACQUIRE)) {
    __atomic_store_n(&want, 0, __ATOMIC_RELEASE);
    if (send_line(s, "ACQUIRE\n") != 0) return -1;
    s->acquire_sent = 1;
    s->acquire_at_ns = now_ns();
  }
  return 0;
}

static void note_quota(struct session *s, const char *line) {
  int guarantee = (int)field(line, 1), cap = (int)field(line, 2), throttled = (int)field(line, 3);
  if (guarantee == s->guarantee_bp && cap == s->cap_bp && throttled == s->throttled) return;
  s->guarantee_bp = guarantee;
  s->cap_bp = cap;
  s->throttled = throttled;
  gs_log(GS_LOG_INFO, "GPU time: guarantee %d.%02d%%, cap %d.%02d%%%s", guarantee / 100, guarantee % 100, cap / 100,
         cap % 100, throttled == 1 ? " (throttled: the namespace's budget is exhausted)" : "");
}

/* Acts on one line from the server; -1 when the session is over. */
static int handle(struct session *s, const char *line) {
  if (strncmp(line, "GRANT ", 6) == 0) {
    int64_t sequence = field(line, 1), length_us = field(line, 2);
    if (sequence <= 0 || length_us < 0) return -1;
    int64_t now = now_ns();
    if (!__atomic_load_n(&connected, __ATOMIC_ACQUIRE)) { /* granting again after a long silence */
      gs_limiter_unreported_ns(__atomic_load_n(&device_mask, __ATOMIC_RELAXED), INT64_MAX);
      gs_log(GS_LOG_INFO, "GPU time scheduler granting again: launches run under its tokens");
      __atomic_store_n(&connected, 1, __ATOMIC_RELEASE);
    }
    s->sequence = sequence;
    s->acquire_sent = 0;
    __atomic_store_n(&want, 0, __ATOMIC_RELEASE); /* the launches waiting are served now */
    s->token_end_ns = now + length_us * 1000;
    s->granted_at_ns = now;
    s->length_us = length_us;
    s->idle_check_ns = now + IDLE_NS;
    __atomic_store_n(&launched, 1, __ATOMIC_RELAXED); /* the waiting launch counts as activity */
    __atomic_store_n(&open_until_ns, s->token_end_ns, __ATOMIC_RELEASE);
    bump();
  } else if (strncmp(line, "REVOKE ", 7) == 0) {
    if (field(line, 1) == s->sequence) {
      gs_log(GS_LOG_WARN, "GPU time: token %lld revoked by the scheduler", (long long)s->sequence);
      /* charged the whole time held: that much of the use is settled */
      gs_limiter_unreported_ns(__atomic_load_n(&device_mask, __ATOMIC_RELAXED), now_ns() - s->granted_at_ns);
      close_token(s);
    }
  } else if (strncmp(line, "QUOTA ", 6) == 0) {
    note_quota(s, line);
  } else if (strncmp(line, "ERR ", 4) == 0) {
    gs_log(GS_LOG_ERROR, "GPU time scheduler refused this client: %s", line + 4);
    return -1;
  }
  return 0; /* lines of a later version are ignored */
}

/* Connects and greets; the socket, or -1. why: what failed. */
static int greet(struct session *s, char *why, size_t why_bytes) {
  memset(s, 0, sizeof *s);
  s->guarantee_bp = s->cap_bp = s->throttled = -1;
  s->fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (s->fd < 0) {
    snprintf(why, why_bytes, "socket: %s", strerror(errno));
    return -1;
  }
  struct sockaddr_un address = {.sun_family = AF_UNIX};
  strcpy(address.sun_path, socket_path);
  if (connect(s->fd, (struct sockaddr *)&address, sizeof address) != 0 || send_line(s, "HELLO 1\n") != 0) {
    snprintf(why, why_bytes, "%s: %s", socket_path, strerror(errno));
    close(s->fd);
    return -1;
  }
  int64_t deadline = now_ns() + GREET_TIMEOUT_NS;
  int welcomed = 0, quoted = 0;
  char line[LINE_BYTES];
  while (!(welcomed && quoted)) {
    int64_t left = deadline - now_ns();
    struct pollfd p = {s->fd, POLLIN, 0};
    if (left <= 0 || poll(&p, 1, (int)(left / 1000000) + 1) <= 0 || fill(s) != 0) {
      snprintf(why, why_bytes, "%s: no greeting", socket_path);
      close(s->fd);
      return -1;
    }
    while (take_line(s, line)) {
      if (strncmp(line, "WELCOME ", 8) == 0 && field(line, 1) == PROTOCOL_VERSION) {
        s->window_ns = field(line, 2) * 1000;
        welcomed = 1;
      } else if (strncmp(line, "QUOTA ", 6) == 0 && welcomed) {
        note_quota(s, line);
        quoted = 1;
      } else {
        snprintf(why, why_bytes, "%.60s: %.100s", socket_path, line);
        close(s->fd);
        return -1;
      }
    }
  }
  return s->fd;
}

/* Serves one session until it ends (hang-up, error, or no grant for too long). */
static void serve(struct session *s) {
  int64_t grant_timeout = s->window_ns * 3 > GRANT_TIMEOUT_MIN_NS ? s->window_ns * 3 : GRANT_TIMEOUT_MIN_NS;
  char line[LINE_BYTES];
  for (;;) {
    int64_t now = now_ns();
    if (s->sequence != 0 && now >= s->token_end_ns) {
      /* The token is over: launches that ran under it will want the next one. */
      if (release(s, __atomic_exchange_n(&launched, 0, __ATOMIC_ACQ_REL)) != 0) return;
    } else if (s->sequence != 0 && now >= s->idle_check_ns) {
      if (!__atomic_exchange_n(&launched, 0, __ATOMIC_ACQ_REL) && !__atomic_load_n(&want, __ATOMIC_ACQUIRE)) {
        if (release(s, 0) != 0) return; /* idle: returned early, charged its use only */
      } else {
        s->idle_check_ns = now + IDLE_NS;
      }
    }
    if (s->sequence == 0 && !s->acquire_sent && __atomic_exchange_n(&want, 0, __ATOMIC_ACQ_REL)) {
      if (send_line(s, "ACQUIRE\n") != 0) return;
      s->acquire_sent = 1;
      s->acquire_at_ns = now;
    }
    int hung = s->acquire_sent && now - s->acquire_at_ns > grant_timeout;
    if (hung && __atomic_load_n(&connected, __ATOMIC_ACQUIRE)) {
      /* A scheduler that answers but never grants: the local limit until it grants again (the
       * request stays queued there; reconnecting would only start another wait). */
      gs_log(GS_LOG_WARN, "GPU time scheduler granted nothing for %lld ms: local core limit in force until it does",
             (long long)(grant_timeout / 1000000));
      __atomic_store_n(&connected, 0, __ATOMIC_RELEASE);
      gs_limiter_scheduler_lost();
      bump();
    }
    int64_t next = s->acquire_sent && !hung ? s->acquire_at_ns + grant_timeout : now + 1000000000LL;
    if (s->sequence != 0) next = s->token_end_ns < s->idle_check_ns ? s->token_end_ns : s->idle_check_ns;
    int64_t wait_ns = next - now;
    struct pollfd p[2] = {{s->fd, POLLIN, 0}, {wake_fd, POLLIN, 0}};
    if (wait_ns < 0) wait_ns = 0;
    struct timespec ts = {wait_ns / 1000000000LL, wait_ns % 1000000000LL};
    int ready = ppoll(p, 2, &ts, NULL);
    if (ready < 0 && errno != EINTR) return;
    if (ready <= 0) continue;
    if (p[1].revents & POLLIN) {
      uint64_t count;
      if (read(wake_fd, &count, sizeof count) < 0) { /* nothing pending after all */
      }
    }
    if (p[0].revents & (POLLIN | POLLHUP | POLLERR)) {
      if (fill(s) != 0) return;
      while (take_line(s, line))
        if (handle(s, line) != 0) return;
    }
  }
}

static void *client_main(void *unused) {
  (void)unused;
  int64_t backoff = BACKOFF_MIN_NS;
  int reported = 0; /* the current outage was logged */
  for (;;) {
    struct session s;
    char why[300];
    int fd = greet(&s, why, sizeof why);
    if (fd < 0) {
      if (!reported)
        gs_log(GS_LOG_WARN, "GPU time scheduler unreachable (%s): local core limit in force, reconnecting", why);
      reported = 1;
      struct timespec ts = {backoff / 1000000000LL, backoff % 1000000000LL};
      nanosleep(&ts, NULL);
      backoff = backoff * 2 > BACKOFF_MAX_NS ? BACKOFF_MAX_NS : backoff * 2;
      continue;
    }
    backoff = BACKOFF_MIN_NS;
    reported = 0;
    /* Use from before this session (under the local limit) is not the new scheduler's to charge. */
    gs_limiter_unreported_ns(__atomic_load_n(&device_mask, __ATOMIC_RELAXED), INT64_MAX);
    __atomic_store_n(&session_fd, fd, __ATOMIC_RELEASE);
    gs_log(GS_LOG_INFO, "GPU time scheduler connected (%s): launches run under its tokens", socket_path);
    __atomic_store_n(&connected, 1, __ATOMIC_RELEASE);
    bump();
    serve(&s);
    __atomic_store_n(&connected, 0, __ATOMIC_RELEASE);
    __atomic_store_n(&open_until_ns, 0, __ATOMIC_RELEASE);
    __atomic_store_n(&session_fd, -1, __ATOMIC_RELEASE);
    close(fd);
    gs_limiter_scheduler_lost();
    bump();
    gs_log(GS_LOG_WARN, "GPU time scheduler lost: local core limit in force, reconnecting");
    reported = 1;
  }
  return NULL;
}

/* Starts the client thread once per process (every signal blocked in it: the program's
 * handlers run in its own threads). */
static void start(void) {
  int expected = 0;
  if (!__atomic_compare_exchange_n(&started, &expected, 1, 0, __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE)) return;
  wake_fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
  sigset_t all, old;
  sigfillset(&all);
  pthread_sigmask(SIG_SETMASK, &all, &old);
  pthread_attr_t attr;
  pthread_attr_init(&attr);
  pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
  pthread_t thread;
  int rc = wake_fd < 0 ? EMFILE : pthread_create(&thread, &attr, client_main, NULL);
  pthread_attr_destroy(&attr);
  pthread_sigmask(SIG_SETMASK, &old, NULL);
  if (rc != 0) gs_log(GS_LOG_ERROR, "GPU time scheduler client not started (%s): local core limit in force", strerror(rc));
}

/* ---- the launch side (any thread, lock-free) ---- */

int gs_gputime_gating(void) {
  if (!configured) return 0;
  if (!__atomic_load_n(&started, __ATOMIC_RELAXED)) start();
  return __atomic_load_n(&connected, __ATOMIC_ACQUIRE);
}

int64_t gs_gputime_remaining_ns(int64_t now) {
  int64_t end = __atomic_load_n(&open_until_ns, __ATOMIC_ACQUIRE);
  return end == 0 ? 0 : end - now;
}

int gs_gputime_open(void) { return __atomic_load_n(&open_until_ns, __ATOMIC_RELAXED) != 0; }

void gs_gputime_want(int device) {
  gs_gputime_launched(device);
  if (__atomic_load_n(&want, __ATOMIC_RELAXED) || __atomic_exchange_n(&want, 1, __ATOMIC_ACQ_REL)) return;
  uint64_t one = 1;
  if (wake_fd >= 0 && write(wake_fd, &one, sizeof one) < 0) { /* a wake-up is pending already */
  }
}

void gs_gputime_launched(int device) {
  if (!__atomic_load_n(&launched, __ATOMIC_RELAXED)) __atomic_store_n(&launched, 1, __ATOMIC_RELAXED);
  unsigned bit = 1u << device;
  if (!(__atomic_load_n(&device_mask, __ATOMIC_RELAXED) & bit)) __atomic_or_fetch(&device_mask, bit, __ATOMIC_RELAXED);
}

uint32_t gs_gputime_generation(void) { return __atomic_load_n(&generation, __ATOMIC_ACQUIRE); }

int gs_gputime_wait(uint32_t seen, int64_t timeout_ns) {
  struct timespec ts = {timeout_ns / 1000000000LL, timeout_ns % 1000000000LL};
  if (syscall(SYS_futex, &generation, FUTEX_WAIT_PRIVATE, seen, &ts, NULL, 0) != 0 && errno == EINTR) return -1;
  return 0;
}

void gs_gputime_atfork_child(void) {
  /* The parent's session belongs to the parent: the child must not speak on it. */
  int fd = __atomic_load_n(&session_fd, __ATOMIC_ACQUIRE);
  if (fd >= 0) close(fd);
  if (wake_fd >= 0) close(wake_fd);
  session_fd = wake_fd = -1;
  started = connected = want = launched = 0;
  open_until_ns = 0;
}
