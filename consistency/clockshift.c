/* Shift a process's wall clock by an offset read from a file (seconds, may be
 * negative), re-read as it changes. LD_PRELOAD it; CB_CLOCK_OFFSET_FILE names the
 * file (re-read every 5 ms). Only CLOCK_REALTIME-family clocks and gettimeofday/time move; monotonic
 * clocks stay true. Used by cachebus's failure-mode suite to skew redis-server. */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <fcntl.h>
#include <stdlib.h>
#include <sys/syscall.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

static long long offset_us = 0;
static long long last_read_ns = -1;

static void refresh(void) {
    /* Re-read the file at most every 5 ms of real (monotonic) time. */
    struct timespec mono;
    if (syscall(SYS_clock_gettime, CLOCK_MONOTONIC, &mono) != 0) return;
    long long now = (long long)mono.tv_sec * 1000000000LL + mono.tv_nsec;
    if (last_read_ns >= 0 && now - last_read_ns < 5000000LL) return;
    last_read_ns = now;
    const char *path = getenv("CB_CLOCK_OFFSET_FILE");
    if (!path) return;
    int fd = (int)syscall(SYS_openat, AT_FDCWD, path, O_RDONLY);
    if (fd < 0) return;
    char buf[64];
    long n = syscall(SYS_read, fd, buf, sizeof buf - 1);
    syscall(SYS_close, fd);
    if (n <= 0) return;
    buf[n] = 0;
    offset_us = (long long)(strtod(buf, NULL) * 1e6);
}

static int real_clock_gettime(clockid_t clk, struct timespec *ts) {
    return (int)syscall(SYS_clock_gettime, clk, ts);
}

int clock_gettime(clockid_t clk, struct timespec *ts) {
    int rc = real_clock_gettime(clk, ts);
    if (rc == 0 && (clk == CLOCK_REALTIME || clk == CLOCK_REALTIME_COARSE)) {
        refresh();
        long long us = (long long)ts->tv_sec * 1000000LL + ts->tv_nsec / 1000 + offset_us;
        ts->tv_sec = us / 1000000LL;
        ts->tv_nsec = (long)(us % 1000000LL) * 1000L;
    }
    return rc;
}

int gettimeofday(struct timeval *tv, void *tz) {
    (void)tz;
    struct timespec ts;
    int rc = clock_gettime(CLOCK_REALTIME, &ts);
    if (rc == 0 && tv) {
        tv->tv_sec = ts.tv_sec;
        tv->tv_usec = ts.tv_nsec / 1000;
    }
    return rc;
}

time_t time(time_t *out) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    if (out) *out = ts.tv_sec;
    return ts.tv_sec;
}
