/*
 * log.c - one line per event: time, level, node, subsystem, message.
 *
 * Lines go to stderr or to an append-only file. Each line is assembled in
 * one buffer and written with one write(2), so lines from the agent and from
 * the watchdog never interleave mid-line.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#include "pogo.h"

static const char *const level_names[] = {"debug", "info", "warn", "error"};

static struct {
    enum log_level level;
    int fd;              /* 2, or an O_APPEND file we own */
    char node[64];
} logger = {LOG_INFO, 2, "-"};

void log_set_node(const char *name)
{
    snprintf(logger.node, sizeof logger.node, "%s", name ? name : "-");
}

void log_set_level(enum log_level level) { logger.level = level; }
enum log_level log_get_level(void) { return logger.level; }

const char *log_level_name(enum log_level level)
{
    return level_names[level];
}

int log_fd(void) { return logger.fd; }

void set_error(char *err, size_t errlen, const char *fmt, ...)
{
    if (err == NULL || errlen == 0)
        return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
}

int log_level_parse(const char *name)
{
    for (int i = LOG_DEBUG; i <= LOG_ERROR; i++)
        if (strcmp(name, level_names[i]) == 0)
            return i;
    return -1;
}

int log_set_file(const char *path)
{
    int fd = 2;
    if (path) {
        fd = open(path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0640);
        if (fd < 0)
            return -1;
    }
    if (logger.fd != 2)
        close(logger.fd);
    logger.fd = fd;
    return 0;
}

void log_vmsg(enum log_level level, const char *subsys, const char *fmt,
              va_list ap)
{
    if (level < logger.level)
        return;
    int saved = errno;
    char line[4096];
    struct timeval tv;
    struct tm tm;
    gettimeofday(&tv, NULL);
    gmtime_r(&tv.tv_sec, &tm);
    size_t n = strftime(line, sizeof line, "%Y-%m-%dT%H:%M:%S", &tm);
    n += snprintf(line + n, sizeof line - n, ".%03dZ %-5s %s %s: ",
                  (int)(tv.tv_usec / 1000), level_names[level], logger.node,
                  subsys);
    if (n < sizeof line) {
        int m = vsnprintf(line + n, sizeof line - n, fmt, ap);
        n = m < 0 ? n : n + (size_t)m;
    }
    if (n >= sizeof line - 1) {        /* truncated: mark it, keep the newline */
        n = sizeof line - 1;
        memcpy(line + n - 3, "...", 3);
    }
    line[n++] = '\n';
    /* One write per line; a full disk or closed stderr must not stop us. */
    ssize_t w = write(logger.fd, line, n);
    (void)w;
    errno = saved;
}

void log_msg(enum log_level level, const char *subsys, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    log_vmsg(level, subsys, fmt, ap);
    va_end(ap);
}
