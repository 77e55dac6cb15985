/*
 * watchdog.c - no process started by the agent outlives it.
 *
 * watchdog_start() forks a small process, the watchdog, that holds the read
 * end of a pipe and the set of the agent's process groups. The agent writes
 * fixed-size records on the write end: track, untrack, reset, stop. When the
 * agent dies, kill -9 included, the kernel closes its end and the watchdog
 * reads EOF: it SIGKILLs every group it holds and every process whose
 * environment carries this agent's marker (descendants that left their
 * group with setsid and were re-parented away), then exits. A stop record
 * makes it exit without killing anything.
 *
 * The watchdog is a fork of the agent, Lua state and libev loop included:
 * it never touches either, allocates only its own small tables and leaves
 * with _exit(), so nothing the agent owns is flushed or freed twice.
 *
 * The agent side never blocks its loop: the write end is non-blocking, and
 * records the pipe has no room for wait in a queue that is flushed by the
 * next call. The agent keeps a mirror of the set, so that an overgrown
 * queue can be replaced by "reset + the whole set" and a watchdog that died
 * under us can be replaced by a new one that gets the whole set.
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "pogo.h"

#define WD_LOG "watchdog"

/* ---- the pipe protocol --------------------------------------------------- */

/* What a record asks of the watchdog. The type byte leaves room for more. */
enum wd_type {
    WD_TRACK = 1,      /* pgid joins the kill set */
    WD_UNTRACK = 2,    /* pgid leaves it */
    WD_RESET = 3,      /* the kill set is emptied; the whole set follows */
    WD_STOP = 4,       /* clean shutdown: exit, kill nothing */
    WD_LEASE = 5,      /* the quorum lease runs until arg, CLOCK_BOOTTIME
                          ms; 0 = no lease */
    WD_FENCE = 6,      /* pgid (tracked) is a quorum child's group: killed
                          when the lease runs out */
};

/* One record, in host byte order (both ends are the same binary on the
 * same host). 16 bytes divide PIPE_BUF, so the pipe never holds a torn
 * record unless the agent dies in the middle of a long write; the reader
 * reassembles records across reads anyway and drops a torn tail at EOF. */
struct wd_record {
    uint8_t type;          /* enum wd_type */
    uint8_t reserved[3];   /* zero */
    int32_t pgid;          /* WD_TRACK, WD_UNTRACK; 0 otherwise */
    uint64_t arg;          /* WD_LEASE's deadline; zero otherwise */
};

_Static_assert(sizeof(struct wd_record) == 16, "records are 16 bytes");
_Static_assert(PIPE_BUF % sizeof(struct wd_record) == 0,
               "a record never straddles an atomic pipe write");
_Static_assert(sizeof(pid_t) <= sizeof(int32_t), "a pgid fits a record");

/* Asked of the kernel for the pipe: 64k records before the agent queues.
 * Best effort; the default 64 KiB still holds 4096. */
#define WD_PIPE_SIZE (1 << 20)
/* A queue longer than this, and than twice the set, is rebuilt as reset +
 * the set, so a watchdog that stops reading costs memory bounded by the
 * set, not by the number of calls. */
#define WD_QUEUE_COMPACT 4096
/* At most one automatic restart of a dead watchdog per this many ms. */
#define WD_RESPAWN_MS 1000
/* watchdog_stop(): how long a full pipe may delay the stop record, and how
 * long the watchdog may take to exit after it. */
#define WD_STOP_SEND_MS 500
#define WD_STOP_WAIT_MS 1000
/* After the agent's death: kill passes every WD_PASS_MS for WD_KILL_MS,
 * to catch processes forked while we were killing their parents. */
#define WD_PASS_MS 20
#define WD_KILL_MS 200

static int64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* CLOCK_BOOTTIME counts a suspended host too: a lease does not outlive a
 * suspend the agent slept through. */
static int64_t boot_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_BOOTTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static double now_ms_f(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec * 1e3 + (double)ts.tv_nsec / 1e6;
}

static void sleep_ms(int ms)
{
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000};
    while (nanosleep(&ts, &ts) < 0 && errno == EINTR)
        ;
}

/* ---- a set of pids: open addressing, linear probing --------------------- */

/* Used on both sides: the agent's mirror and the watchdog's kill set, where
 * thousands of groups come and go. Deletion shifts the following run back,
 * so there are no tombstones and lookups stay short after any churn. */
struct pidset {
    pid_t *slot;    /* cap entries, 0 = empty; owned */
    size_t cap;     /* 0 or a power of two */
    size_t n;       /* entries in use, at most cap / 2 */
};

static size_t pidset_home(const struct pidset *s, pid_t p)
{
    /* Multiplying by an odd constant permutes the low bits, so runs of
     * consecutive pids land spread out rather than in one cluster. */
    return (size_t)((uint32_t)p * 2654435769u) & (s->cap - 1);
}

/* The slot holding p, or the empty slot where p would go. cap > 0. */
static size_t pidset_find(const struct pidset *s, pid_t p)
{
    size_t i = pidset_home(s, p);
    while (s->slot[i] != 0 && s->slot[i] != p)
        i = (i + 1) & (s->cap - 1);
    return i;
}

static int pidset_grow(struct pidset *s)
{
    size_t cap = s->cap ? s->cap * 2 : 64;
    pid_t *slot = calloc(cap, sizeof *slot);
    if (slot == NULL)
        return -1;
    struct pidset bigger = {slot, cap, 0};
    for (size_t i = 0; i < s->cap; i++)
        if (s->slot[i] != 0) {
            bigger.slot[pidset_find(&bigger, s->slot[i])] = s->slot[i];
            bigger.n++;
        }
    free(s->slot);
    *s = bigger;
    return 0;
}

/* 1 if added, 0 if already there, -1 on OOM (set unchanged). p > 0. */
static int pidset_add(struct pidset *s, pid_t p)
{
    if ((s->n + 1) * 2 > s->cap && pidset_grow(s) < 0)
        return -1;
    size_t i = pidset_find(s, p);
    if (s->slot[i] == p)
        return 0;
    s->slot[i] = p;
    s->n++;
    return 1;
}

/* 1 if removed, 0 if absent. */
static int pidset_del(struct pidset *s, pid_t p)
{
    if (s->cap == 0 || p <= 0)
        return 0;
    size_t mask = s->cap - 1;
    size_t i = pidset_find(s, p);
    if (s->slot[i] == 0)
        return 0;
    s->slot[i] = 0;
    s->n--;
    /* Close the hole: an entry further along the run moves into it unless
     * its home lies cyclically in (hole, entry], where it must stay. */
    for (size_t j = (i + 1) & mask; s->slot[j] != 0; j = (j + 1) & mask) {
        size_t home = pidset_home(s, s->slot[j]);
        if (((j - home) & mask) >= ((j - i) & mask)) {
            s->slot[i] = s->slot[j];
            s->slot[j] = 0;
            i = j;
        }
    }
    return 1;
}

static void pidset_clear(struct pidset *s)
{
    if (s->cap > 0)
        memset(s->slot, 0, s->cap * sizeof *s->slot);
    s->n = 0;
}

static void pidset_free(struct pidset *s)
{
    free(s->slot);
    s->slot = NULL;
    s->cap = 0;
    s->n = 0;
}

/* ---- the watchdog process ------------------------------------------------ */

/* 1 if the NUL-separated environment in the file at path has an entry that
 * is exactly marker. Streams the file: environments can be megabytes. */
static int environ_has(const char *path, const char *marker)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return 0;    /* gone, a kernel thread, or not ours to read */
    size_t mlen = strlen(marker), pos = 0;
    int differs = 0, found = 0;
    char chunk[4096];
    for (;;) {
        ssize_t n = read(fd, chunk, sizeof chunk);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            break;
        for (ssize_t i = 0; i < n && !found; i++) {
            char c = chunk[i];
            if (c == '\0') {
                found = !differs && pos == mlen;
                pos = 0;
                differs = 0;
            } else if (!differs) {
                if (pos < mlen && marker[pos] == c)
                    pos++;
                else
                    differs = 1;
            }
        }
        if (found)
            break;
    }
    if (!found && !differs && pos == mlen)
        found = 1;    /* the last entry, without its NUL */
    close(fd);
    return found;
}

/* One pass over /proc: SIGKILLs every process carrying marker; each pid
 * killed for the first time is added to killed. */
static void kill_marked(const char *marker, struct pidset *killed)
{
    static int warned;
    DIR *d = opendir("/proc");
    if (d == NULL) {
        if (!warned++)
            log_error(WD_LOG, "cannot scan /proc: %s", strerror(errno));
        return;
    }
    pid_t self = getpid();
    struct dirent *de;
    while ((de = readdir(d)) != NULL) {
        if (de->d_name[0] < '1' || de->d_name[0] > '9')
            continue;
        char *end;
        long pid = strtol(de->d_name, &end, 10);
        if (*end != '\0' || pid <= 1 || pid == self || pid > INT32_MAX)
            continue;
        char path[64];
        snprintf(path, sizeof path, "/proc/%ld/environ", pid);
        if (environ_has(path, marker) && kill((pid_t)pid, SIGKILL) == 0)
            (void)pidset_add(killed, (pid_t)pid);   /* OOM: a count off */
    }
    closedir(d);
}

/* The agent is gone: kill its groups and its marked processes, then again
 * a few times to catch what was being forked meanwhile. Consumes groups
 * (dead groups are dropped so that later passes skip them). */
static void kill_everything(struct pidset *groups, const char *marker,
                            pid_t agent)
{
    double t0 = now_ms_f(), first = 0;
    int ngroups = 0, passes = 0;
    pid_t own = getpgrp();
    struct pidset killed = {0};

    for (;;) {
        for (size_t i = 0; i < groups->cap; i++) {
            pid_t g = groups->slot[i];
            if (g <= 1 || g == own)
                continue;
            if (kill(-g, SIGKILL) == 0) {
                ngroups += passes == 0;
            } else {
                /* Gone (ESRCH): never signal that pgid again, it may be
                 * reused; EPERM will not change either. The slot array
                 * is no longer searched, so the hole needs no repair. */
                groups->slot[i] = 0;
            }
        }
        kill_marked(marker, &killed);
        if (passes++ == 0)
            first = now_ms_f() - t0;
        if (now_ms_f() - t0 >= WD_KILL_MS)
            break;
        sleep_ms(WD_PASS_MS);
    }
    log_warn(WD_LOG,
             "agent %d is gone: killed %d process group(s) and %zu marked "
             "process(es) (first pass %.1f ms, %d passes)",
             (int)agent, ngroups, killed.n, first, passes);
    pidset_free(&killed);
}

static int fault_signal(int sig)
{
    return sig == SIGSEGV || sig == SIGBUS || sig == SIGFPE || sig == SIGILL ||
           sig == SIGTRAP || sig == SIGSYS || sig == SIGABRT;
}

/* Closes every fd >= from. */
static void close_from(int from)
{
    if (close_range((unsigned)from, ~0u, 0) == 0)
        return;
    /* Kernels before 5.9. */
    struct rlimit rl;
    int max = 65536;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur != RLIM_INFINITY &&
        rl.rlim_cur < (rlim_t)max)
        max = (int)rl.rlim_cur;
    for (int fd = from; fd < max; fd++)
        close(fd);
}

/* Makes the fresh fork a watchdog: its own session, its own name, deaf to
 * every signal that would end it, and holding no fd of the agent's but
 * stderr. Returns the fd of the read end. */
static int watchdog_detach(int rfd, int wfd)
{
    /* It leaves when the agent does, and not before: a Ctrl-C, a SIGTERM
     * to the agent's group or a stray pkill must reach the agent only. The
     * agent's handlers (libev's) would write to fds we are about to close.
     * Fault signals keep their handlers so crashes stay diagnosable. */
    struct sigaction ign;
    memset(&ign, 0, sizeof ign);
    ign.sa_handler = SIG_IGN;
    sigemptyset(&ign.sa_mask);
    for (int sig = 1; sig < NSIG; sig++)
        if (!fault_signal(sig) && sig != SIGKILL && sig != SIGSTOP)
            (void)sigaction(sig, &ign, NULL);   /* EINVAL for libc's own */
    sigset_t none;
    sigemptyset(&none);
    sigprocmask(SIG_SETMASK, &none, NULL);

    /* Out of the agent's session and process group: a SIGKILL to the
     * agent's whole job (kill -9 %1) must leave us alive to clean up. */
    (void)setsid();
    (void)prctl(PR_SET_NAME, "pogo-watchdog", 0, 0, 0);
    /* Our lines go where the agent's go: its log file becomes our stderr
     * (kept when that fails), and log.c writes to stderr from here on. */
    if (log_fd() != 2)
        (void)dup2(log_fd(), 2);
    (void)log_set_file(NULL);

    /* Holding the agent's fds would keep its sockets and its children's
     * pipes open after its death, and holding our own copy of the write
     * end would hide that death from us. Keep stderr and the read end,
     * moved to 3; 0 and 1 become /dev/null. */
    if (rfd != 3 && dup2(rfd, 3) < 0) {
        log_error(WD_LOG, "dup2: %s", strerror(errno));
        close(wfd);
        return rfd;
    }
    int null = open("/dev/null", O_RDWR | O_CLOEXEC);
    for (int fd = 0; fd <= 2; fd++) {
        if (fd == null || !(fd < 2 || fd == rfd || fd == wfd))
            continue;
        if (null < 0 || dup2(null, fd) < 0)
            close(fd);
    }
    close_from(4);    /* rfd, wfd and null too, when they are >= 4 */
    return 3;
}

/* The watchdog's whole life. Never returns. */
static void __attribute__((noreturn)) watchdog_loop(int rfd, int wfd,
                                                    const char *marker,
                                                    pid_t agent)
{
    int fd = watchdog_detach(rfd, wfd);
    struct pidset groups = {0}, fenced = {0};
    unsigned char in[4096];    /* a multiple of the record size */
    size_t have = 0;
    int oom_warned = 0, unknown_warned = 0;
    int64_t lease = 0;         /* boot_ms() deadline, 0 = none */

    for (;;) {
        /* The quorum lease: with quorum groups held, wait for records only
         * until it runs out; then SIGKILL those groups and keep running,
         * since the agent may come back and renew it. */
        if (lease > 0 && fenced.n > 0) {
            int64_t left = lease - boot_ms();
            struct pollfd pfd = {.fd = fd, .events = POLLIN};
            int r = left > 0 ? poll(&pfd, 1, left > INT_MAX ? INT_MAX : (int)left) : 0;
            if (r < 0 && errno == EINTR)
                continue;
            if (r == 0) {
                size_t killed = 0;
                for (size_t i = 0; i < fenced.cap; i++)
                    if (fenced.slot[i] > 1 && kill(-fenced.slot[i], SIGKILL) == 0)
                        killed++;
                log_warn(WD_LOG, "the quorum lease of agent %d ran out: killed "
                                 "%zu quorum process groups", (int)agent, killed);
                lease = 0;
                continue;
            }
        }
        ssize_t n = read(fd, in + have, sizeof in - have);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0) {
            log_error(WD_LOG, "read: %s; treating the agent as gone",
                      strerror(errno));
            break;
        }
        if (n == 0)
            break;    /* EOF: every copy of the write end is closed */
        have += (size_t)n;

        size_t off = 0;
        for (; have - off >= sizeof(struct wd_record);
             off += sizeof(struct wd_record)) {
            struct wd_record r;
            memcpy(&r, in + off, sizeof r);
            switch (r.type) {
            case WD_TRACK:
                if (r.pgid > 1 && pidset_add(&groups, r.pgid) < 0 &&
                    !oom_warned++)
                    log_error(WD_LOG, "out of memory tracking groups; "
                                      "relying on the marker scan");
                break;
            case WD_UNTRACK:
                pidset_del(&groups, r.pgid);
                pidset_del(&fenced, r.pgid);
                break;
            case WD_RESET:
                pidset_clear(&groups);
                pidset_clear(&fenced);
                break;
            case WD_FENCE:
                if (r.pgid > 1 && pidset_add(&fenced, r.pgid) < 0 &&
                    !oom_warned++)
                    log_error(WD_LOG, "out of memory tracking quorum groups");
                break;
            case WD_LEASE:
                lease = (int64_t)r.arg;
                break;
            case WD_STOP:
                log_debug(WD_LOG, "stopped by agent %d", (int)agent);
                _exit(0);
            default:
                if (!unknown_warned++)
                    log_warn(WD_LOG, "ignoring unknown record type %u",
                             (unsigned)r.type);
                break;
            }
        }
        memmove(in, in + off, have - off);
        have -= off;
    }
    kill_everything(&groups, marker, agent);
    _exit(0);
}

/* ---- the agent side --------------------------------------------------- */

static struct {
    pid_t owner;           /* the process this state belongs to; a forked
                              child that inherited it is not the agent */
    pid_t pid;             /* the watchdog, while wfd >= 0 */
    int wfd;               /* write end (O_NONBLOCK, O_CLOEXEC), or -1 */
    int lost;              /* it died under us: restart on the next call */
    int64_t started;       /* now_ms() of the last fork, to pace restarts */
    int queue_warned;      /* this full-pipe episode has been logged */
    struct pidset groups;  /* what the watchdog holds, or will once the
                              queue is through */
    struct pidset fenced;  /* the quorum groups among them */
    uint64_t lease;        /* the last lease deadline sent, 0 = none */
    struct buf queue;      /* records waiting for room in the pipe */
    char marker[64];       /* "POGO_AGENT=<pid>.<ns>", decided once */
} wd = {.wfd = -1};

static int mine(void) { return wd.owner == getpid(); }

static void marker_decide(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    if (wd.owner == 0)
        wd.owner = getpid();
    snprintf(wd.marker, sizeof wd.marker, "POGO_AGENT=%ld.%lld",
             (long)wd.owner,
             (long long)ts.tv_sec * 1000000000LL + ts.tv_nsec);
}

const char *watchdog_marker(void)
{
    /* Never re-decided here, even in a forked child: a child between fork
     * and exec asks for its agent's marker. */
    if (wd.marker[0] == '\0')
        marker_decide();
    return wd.marker;
}

pid_t watchdog_pid(void)
{
    return mine() && wd.wfd >= 0 ? wd.pid : 0;
}

/* Writes as much of the queue as the pipe takes. 0 once it is empty, 1 if
 * the pipe is still full, -1 with errno if the watchdog is gone. */
static int queue_flush(void)
{
    while (buf_avail(&wd.queue) > 0) {
        ssize_t n = write(wd.wfd, buf_head(&wd.queue), buf_avail(&wd.queue));
        if (n > 0) {
            buf_consume(&wd.queue, (size_t)n);   /* the reader reassembles */
            continue;
        }
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0 && errno == EAGAIN)
            return 1;
        if (n == 0)
            errno = EIO;
        return -1;
    }
    wd.queue_warned = 0;
    return 0;
}

/* Appends the whole mirror to q: every group as WD_TRACK, the quorum ones
 * as WD_FENCE too, then the lease. 0 or -1 on OOM. */
static int queue_set(struct buf *q)
{
    for (size_t i = 0; i < wd.groups.cap; i++) {
        struct wd_record r = {.type = WD_TRACK, .pgid = wd.groups.slot[i]};
        if (r.pgid != 0 && buf_append(q, &r, sizeof r) < 0)
            return -1;
    }
    for (size_t i = 0; i < wd.fenced.cap; i++) {
        struct wd_record r = {.type = WD_FENCE, .pgid = wd.fenced.slot[i]};
        if (r.pgid != 0 && buf_append(q, &r, sizeof r) < 0)
            return -1;
    }
    struct wd_record lease = {.type = WD_LEASE, .arg = wd.lease};
    return buf_append(q, &lease, sizeof lease);
}

static void queue_push(const struct wd_record *r)
{
    if (buf_append(&wd.queue, r, sizeof *r) < 0) {
        /* The marker scan still finds the group's processes. */
        log_error(WD_LOG, "out of memory queueing a record for pgid %d",
                  (int)r->pgid);
        return;
    }
    if (!wd.queue_warned) {
        wd.queue_warned = 1;
        log_warn(WD_LOG, "watchdog (pid %d) is not keeping up; queueing "
                         "records until its pipe drains", (int)wd.pid);
    }
    size_t queued = buf_avail(&wd.queue) / sizeof *r;
    if (queued <= WD_QUEUE_COMPACT || queued <= 2 * (wd.groups.n + wd.fenced.n) + 3)
        return;
    struct buf q;
    struct wd_record reset = {.type = WD_RESET};
    buf_init(&q);
    if (buf_append(&q, &reset, sizeof reset) < 0 || queue_set(&q) < 0) {
        buf_free(&q);    /* keep the long queue: it is still right */
        return;
    }
    buf_free(&wd.queue);
    wd.queue = q;
}

static void watchdog_lost(int err);

/* Forks a new watchdog if the last one died, at most once per
 * WD_RESPAWN_MS; it gets the whole set. */
static void respawn(void)
{
    if (wd.lost && now_ms() - wd.started >= WD_RESPAWN_MS &&
        watchdog_start() < 0)
        log_error(WD_LOG, "cannot restart the watchdog: %s", strerror(errno));
}

/* Sends r, or queues it behind what is already waiting. */
static void send_record(const struct wd_record *r)
{
    int st = buf_avail(&wd.queue) > 0 ? queue_flush() : 0;
    if (st == 0) {
        ssize_t n;
        do
            n = write(wd.wfd, r, sizeof *r);
        while (n < 0 && errno == EINTR);
        if (n == (ssize_t)sizeof *r)
            return;
        /* Up to PIPE_BUF bytes, a non-blocking write is all or nothing. */
        st = n < 0 && errno == EAGAIN ? 1 : -1;
        if (n >= 0)
            errno = EIO;
    }
    if (st > 0)
        queue_push(r);
    else
        watchdog_lost(errno);    /* the new one gets r with the set */
}

/* The watchdog died (EPIPE: nobody holds the read end). Without it the
 * agent's children would outlive a kill -9, so start another. */
static void watchdog_lost(int err)
{
    log_error(WD_LOG, "watchdog (pid %d) is gone (%s); restarting it",
              (int)wd.pid, strerror(err));
    close(wd.wfd);
    wd.wfd = -1;
    /* Not reaped here: the agent's reaper may have reaped it already and
     * its pid may now be a child's, whose exit we must not steal. */
    wd.pid = 0;
    buf_free(&wd.queue);
    wd.queue_warned = 0;
    wd.lost = 1;
    respawn();
}

/* The state was inherited through fork() from the agent: drop it, closing
 * our copy of its write end, which would otherwise hide the agent's death
 * from its watchdog for as long as we live. */
static void adopt(void)
{
    if (wd.wfd >= 0)
        close(wd.wfd);
    wd.wfd = -1;
    wd.pid = 0;
    wd.lost = 0;
    wd.queue_warned = 0;
    pidset_free(&wd.groups);
    pidset_free(&wd.fenced);
    wd.lease = 0;
    buf_free(&wd.queue);
    wd.owner = getpid();
    marker_decide();
}

int watchdog_start(void)
{
    if (!mine())
        adopt();
    if (wd.wfd >= 0)
        return 0;
    if (wd.marker[0] == '\0')
        marker_decide();

    int p[2];
    if (pipe2(p, O_CLOEXEC) < 0)
        return -1;
    (void)fcntl(p[1], F_SETPIPE_SZ, WD_PIPE_SIZE);
    int fl = fcntl(p[1], F_GETFL);
    if (fl < 0 || fcntl(p[1], F_SETFL, fl | O_NONBLOCK) < 0) {
        int err = errno;
        close(p[0]);
        close(p[1]);
        errno = err;
        return -1;
    }
    pid_t pid = fork();
    if (pid < 0) {
        int err = errno;
        close(p[0]);
        close(p[1]);
        errno = err;
        return -1;
    }
    if (pid == 0)
        watchdog_loop(p[0], p[1], wd.marker, wd.owner);
    close(p[0]);

    wd.pid = pid;
    wd.wfd = p[1];
    wd.lost = 0;
    wd.started = now_ms();
    buf_free(&wd.queue);
    wd.queue_warned = 0;
    log_debug(WD_LOG, "watchdog pid %d, marker %s", (int)pid, wd.marker);

    /* A restart: the new watchdog starts empty, the mirror is the truth. */
    if (wd.groups.n > 0) {
        if (queue_set(&wd.queue) < 0)
            log_error(WD_LOG, "out of memory resending %zu groups",
                      wd.groups.n);
        if (queue_flush() < 0)
            watchdog_lost(errno);    /* paced: no fork loop */
    }
    return 0;
}

/* A group the watchdog must never be told about: kill(-1) is every
 * process, 0 and our own group are the agent itself. */
static int bad_pgid(pid_t pgid)
{
    if (pgid > 1 && pgid != getpgrp())
        return 0;
    log_warn(WD_LOG, "refusing to track process group %d", (int)pgid);
    return 1;
}

/* Adds pgid to a set of the mirror and tells the watchdog with a record of
 * that type; a watchdog that died gets the whole mirror from respawn(). */
static void mirror_add(struct pidset *set, uint8_t type, pid_t pgid)
{
    if (!mine() || (wd.wfd < 0 && !wd.lost) || bad_pgid(pgid))
        return;
    if (pidset_add(set, pgid) == 0)
        return;    /* already held; -1 (OOM) still tells the watchdog */
    if (wd.wfd < 0) {
        respawn();
        return;
    }
    struct wd_record r = {.type = type, .pgid = pgid};
    send_record(&r);
}

void watchdog_track(pid_t pgid)
{
    mirror_add(&wd.groups, WD_TRACK, pgid);
}

void watchdog_untrack(pid_t pgid)
{
    if (!mine() || (wd.wfd < 0 && !wd.lost))
        return;
    /* An absent pgid is not sent: the watchdog does not have it either,
     * unless the mirror ran out of memory - then it stays a kill target
     * until the marker-free group is gone, which ESRCH handles. */
    pidset_del(&wd.fenced, pgid);
    if (!pidset_del(&wd.groups, pgid))
        return;
    if (wd.wfd < 0) {
        respawn();
        return;
    }
    struct wd_record r = {.type = WD_UNTRACK, .pgid = pgid};
    send_record(&r);
}

void watchdog_fence(pid_t pgid)
{
    mirror_add(&wd.fenced, WD_FENCE, pgid);
}

void watchdog_lease(double seconds)
{
    if (!mine() || (wd.wfd < 0 && !wd.lost))
        return;
    wd.lease = seconds > 0 ? (uint64_t)(boot_ms() + (int64_t)(seconds * 1000)) : 0;
    if (wd.wfd < 0) {
        respawn();
        return;
    }
    struct wd_record r = {.type = WD_LEASE, .arg = wd.lease};
    send_record(&r);
}

/* Sends the stop record, waiting up to WD_STOP_SEND_MS for room: this is
 * shutdown, and a lost stop means the watchdog kills everything. 1 if
 * sent, 0 if the pipe stayed full, -1 if the watchdog is gone. */
static int send_stop(void)
{
    struct wd_record r = {.type = WD_STOP};
    int64_t deadline = now_ms() + WD_STOP_SEND_MS;
    for (;;) {
        ssize_t n = write(wd.wfd, &r, sizeof r);
        if (n == (ssize_t)sizeof r)
            return 1;
        if (n < 0 && errno == EINTR)
            continue;
        if (n >= 0 || errno != EAGAIN)
            return -1;
        int64_t left = deadline - now_ms();
        if (left <= 0)
            return 0;
        struct pollfd pfd = {.fd = wd.wfd, .events = POLLOUT};
        (void)poll(&pfd, 1, (int)left);
    }
}

/* Waits up to ms for pid to exit and reaps it. 1 once it is reaped or is
 * no longer our child to reap (ECHILD: the agent's reaper got it first). */
static int reap(pid_t pid, int ms)
{
    int64_t deadline = now_ms() + ms;
    for (;;) {
        pid_t r = waitpid(pid, NULL, WNOHANG);
        if (r == pid || (r < 0 && errno != EINTR))
            return 1;
        if (r == 0 && now_ms() >= deadline)
            return 0;
        if (r == 0)
            sleep_ms(1);
    }
}

void watchdog_stop(void)
{
    if (!mine())
        return;
    wd.lost = 0;
    pidset_free(&wd.groups);
    pidset_free(&wd.fenced);
    wd.lease = 0;
    buf_free(&wd.queue);     /* the stop supersedes whatever was queued */
    wd.queue_warned = 0;
    if (wd.wfd < 0)
        return;

    pid_t pid = wd.pid;
    int sent = send_stop();
    if (sent == 0) {
        /* Alive (it holds the read end) but not reading: once our end is
         * closed it would wake up to EOF and kill everything. */
        log_warn(WD_LOG, "watchdog (pid %d) is not reading; killing it",
                 (int)pid);
        kill(pid, SIGKILL);
    }
    close(wd.wfd);
    wd.wfd = -1;
    wd.pid = 0;
    /* Gone (EPIPE): left to the agent's reaper, as in watchdog_lost().
     * Otherwise it was alive when we wrote, so its pid is still its own
     * until someone reaps it, and nobody else reaps while we wait. */
    if (sent >= 0 && !reap(pid, WD_STOP_WAIT_MS))
        log_warn(WD_LOG, "watchdog (pid %d) still running %d ms after stop",
                 (int)pid, WD_STOP_WAIT_MS);
}
