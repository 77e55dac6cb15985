/*
 * proc.c - child processes: spawn, reap, signal, and clean up after them.
 *
 * Spawning is a vfork (a clone sharing memory and fd table, the agent
 * suspended until the child execs) + exec: a spawn costs the same with 10
 * children or 10,000, where a fork copied page tables and thousands of fds
 * only to drop them at exec. The parent prepares everything beforehand
 * (the environment, the program's path, ids, limits); the child only makes
 * system calls, and reports the stage and errno of a failure in the
 * arguments it shares with the parent, who reads them once clone returns,
 * so a missing binary or a bad user is an error of the spawn call, not an
 * "exit 127". Each child leads its own process group.
 *
 * Reaping is one ev_child watcher on pid 0: it sees every status the agent
 * receives, orphans re-parented to it (a child subreaper) included. When a
 * main process exits, its group is SIGKILLed at once and its output
 * drained; then on_exit runs (and may start a replacement). Whatever the
 * dead main left re-parented to the agent is killed by a sweep (found by
 * POGO_CHILD_ID in /proc/PID/environ, told from a replacement's descendants
 * by start time) in the same loop iteration, after everything else: a
 * replacement started from on_exit or from a timer due then does not wait
 * for it. The callbacks and the sweep run once per burst of exits, so
 * stopping hundreds of children costs one /proc scan, not hundreds.
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "pogo.h"

/* ASan, as gcc and clang say it. */
#if defined(__SANITIZE_ADDRESS__)
#define PROC_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define PROC_ASAN 1
#endif
#endif
#ifdef PROC_ASAN
#include <sanitizer/asan_interface.h>
#endif


#define DRAIN_MAX (4u << 20)      /* bytes read from a pipe once its main exited */
#define ID_MAX 256                /* longest POGO_CHILD_ID the sweep compares */
#define CHILD_STACK (256u << 10)  /* the spawning child's stack */

enum proc_state {
    PROC_RUNNING,                 /* main process alive; in the pid table */
    PROC_EXITING,                 /* main reaped; sweep and on_exit pending */
    PROC_DONE,                    /* on_exit delivered; waiting for release */
};

struct proc {
    pid_t pid;                    /* also the process group id */
    enum proc_state state;
    int released;                 /* the owner let go: free when not busy */
    proc_exit_fn *on_exit;
    void *ud;
    double started;               /* monotonic seconds */
    unsigned long long starttime; /* /proc/PID/stat field 22; 0 if unknown */
    struct proc_status status;    /* valid from PROC_EXITING on */
    struct proc *next_exited;     /* the queue of exits awaiting on_exit */
    struct output_reader out, err;
    char id[];
};

/* Failure stages of the child, in the order it goes through them. */
enum stage {
    ST_SETPGID, ST_SIGNALS, ST_STDIO, ST_FDS, ST_SETRLIMIT, ST_INITGROUPS,
    ST_SETGID, ST_SETUID, ST_CHDIR, ST_EXEC, ST_COUNT
};

static const char *const stage_names[ST_COUNT] = {
    "setpgid", "signals", "stdio", "fds", "setrlimit", "initgroups",
    "setgid", "setuid", "chdir", "exec",
};

/* The module's state: SIGCHLD is process-wide, and so is this. */
static struct {
    struct ev_loop *loop;         /* NULL until proc_init */
    ev_child child;               /* pid 0: every child status */
    ev_prepare after;             /* on_exit after a burst of reaps */
    ev_timer sweeper;             /* then the sweep: 0 s, lowest priority */
    int devnull;                  /* O_RDWR, for stdin and unwanted output */
    int hold[2];                  /* low fds holding a spawn's stdout and
                                   * stderr pipes for the child; /dev/null
                                   * between spawns */
    unsigned keep;                /* the child's fd table is a copy of the
                                   * agent's fds below this: the three above */
    char *stack;                  /* the child's, CHILD_STACK bytes */
    struct proc **slots;          /* pid -> running proc; linear probing */
    size_t cap, count;            /* cap is a power of two; count <= cap/2 */
    struct proc *exited;          /* FIFO of procs in PROC_EXITING */
    struct proc **exited_tail;
    int sweep;                    /* an orphan was reaped: sweep anyway */
    int children_file;            /* /proc/self/task/T/children: -1 unknown */
    unsigned long pid_max;        /* where pids wrap */
    int nofile_saved;             /* the agent's RLIMIT_NOFILE was read */
    int nofile_raised;            /* ... and its soft limit raised to the hard */
    struct rlimit nofile;         /* as it was: what children get back */
} P = {.devnull = -1, .hold = {-1, -1}, .children_file = -1};

static double mono_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* ---- pid table ---------------------------------------------------------- */

static size_t home(pid_t pid, size_t cap)
{
    return ((uint32_t)pid * 2654435761u) & (cap - 1);
}

static struct proc *table_get(pid_t pid)
{
    if (P.cap == 0)
        return NULL;
    for (size_t i = home(pid, P.cap); P.slots[i]; i = (i + 1) & (P.cap - 1))
        if (P.slots[i]->pid == pid)
            return P.slots[i];
    return NULL;
}

/* Room for one more entry, made before fork so that inserting a live
 * process can never fail. */
static int table_reserve(void)
{
    if ((P.count + 1) * 2 <= P.cap)
        return 0;
    size_t cap = P.cap ? P.cap * 2 : 64;
    struct proc **s = calloc(cap, sizeof *s);
    if (s == NULL)
        return -1;
    for (size_t i = 0; i < P.cap; i++) {
        if (P.slots[i] == NULL)
            continue;
        size_t j = home(P.slots[i]->pid, cap);
        while (s[j])
            j = (j + 1) & (cap - 1);
        s[j] = P.slots[i];
    }
    free(P.slots);
    P.slots = s;
    P.cap = cap;
    return 0;
}

static void table_put(struct proc *p)
{
    size_t i = home(p->pid, P.cap);
    while (P.slots[i])
        i = (i + 1) & (P.cap - 1);
    P.slots[i] = p;
    P.count++;
}

/* Deletes by shifting later entries of the same probe run back, so no
 * tombstones accumulate over thousands of restarts. */
static void table_del(pid_t pid)
{
    size_t mask = P.cap - 1, i = home(pid, P.cap);
    while (P.slots[i] && P.slots[i]->pid != pid)
        i = (i + 1) & mask;
    if (P.slots[i] == NULL)
        return;
    P.slots[i] = NULL;
    P.count--;
    for (size_t j = (i + 1) & mask; P.slots[j]; j = (j + 1) & mask) {
        size_t k = home(P.slots[j]->pid, P.cap);
        /* The entry at j may stay if its home lies cyclically in (i, j]. */
        int stays = i <= j ? (i < k && k <= j) : (i < k || k <= j);
        if (!stays) {
            P.slots[i] = P.slots[j];
            P.slots[j] = NULL;
            i = j;
        }
    }
}

/* ---- /proc ------------------------------------------------------------- */

/* Parent pid and start time (clock ticks since boot) of pid. */
static int read_stat(pid_t pid, pid_t *ppid, unsigned long long *start)
{
    char path[64], buf[1024];
    snprintf(path, sizeof path, "/proc/%d/stat", (int)pid);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return -1;
    ssize_t n;
    do
        n = read(fd, buf, sizeof buf - 1);
    while (n < 0 && errno == EINTR);
    close(fd);
    if (n <= 0)
        return -1;
    buf[n] = '\0';
    /* The command name may hold spaces and parentheses: skip to the last ')'. */
    char *p = strrchr(buf, ')');
    int got_ppid;
    if (p == NULL ||
        sscanf(p + 1, " %*s %d %*s %*s %*s %*s %*s %*s %*s %*s %*s %*s %*s"
               " %*s %*s %*s %*s %*s %*s %llu", &got_ppid, start) != 2)
        return -1;
    *ppid = got_ppid;
    return 0;
}

/* Copies the value of the variable key ("NAME=") from pid's initial
 * environment into out. Returns 1 if found, 0 if not (or unreadable, or
 * too long for out). Streams the file: an environment can be large and we
 * want one variable. */
static int read_env_value(pid_t pid, const char *key, char *out, size_t outlen)
{
    char path[64], buf[4096];
    size_t klen = strlen(key), skip = klen + 1;
    snprintf(path, sizeof path, "/proc/%d/environ", (int)pid);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return 0;
    size_t k = 0, v = 0;
    int in_value = 0, found = 0;
    while (!found) {
        ssize_t n = read(fd, buf, sizeof buf);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            break;
        for (ssize_t i = 0; i < n && !found; i++) {
            char c = buf[i];
            if (in_value) {
                if (c == '\0')
                    found = 1;
                else if (v + 1 < outlen)
                    out[v++] = c;
                else
                    in_value = 0, k = skip;   /* too long to be one of ours */
                continue;
            }
            if (c == '\0')
                k = 0;                        /* the next entry starts */
            else if (k == skip)
                ;                             /* not this entry */
            else if (c == key[k])
                in_value = ++k == klen;
            else
                k = skip;
        }
    }
    close(fd);
    if (in_value)
        found = 1;              /* the last entry, unterminated */
    if (found)
        out[v] = '\0';
    return found;
}

/* Appends pid to a growing array; -1 on OOM. */
static int push_pid(pid_t **v, size_t *n, size_t *cap, pid_t pid)
{
    if (*n == *cap) {
        size_t c = *cap ? *cap * 2 : 64;
        pid_t *p = realloc(*v, c * sizeof *p);
        if (p == NULL)
            return -1;
        *v = p;
        *cap = c;
    }
    (*v)[(*n)++] = pid;
    return 0;
}

/* Our direct children from /proc/self/task/T/children (one file per
 * thread; an orphan is re-parented to any thread of ours). Returns the
 * count, or -1 when the kernel lacks the file. */
static ssize_t children_from_tasks(pid_t **v, size_t *cap)
{
    size_t n = 0;
    DIR *d = opendir("/proc/self/task");
    if (d == NULL)
        return -1;
    struct dirent *e;
    int any = 0;
    while ((e = readdir(d)) != NULL) {
        if (e->d_name[0] < '0' || e->d_name[0] > '9')
            continue;
        char path[300];
        snprintf(path, sizeof path, "/proc/self/task/%s/children", e->d_name);
        FILE *f = fopen(path, "re");
        if (f == NULL)
            continue;
        any = 1;
        int pid;
        while (fscanf(f, "%d", &pid) == 1)
            if (push_pid(v, &n, cap, pid) < 0)
                break;
        fclose(f);
    }
    closedir(d);
    return any ? (ssize_t)n : -1;
}

/* The same by reading /proc/PID/stat, always available: slower, so the
 * main processes and the watchdog, which the sweep skips anyway, are
 * skipped by their pid before any read. */
static size_t children_from_scan(pid_t **v, size_t *cap)
{
    size_t n = 0;
    pid_t self = getpid(), wd = watchdog_pid();
    DIR *d = opendir("/proc");
    if (d == NULL) {
        log_warn("proc", "cannot scan /proc for leftover processes: %s",
                 strerror(errno));
        return 0;
    }
    struct dirent *e;
    while ((e = readdir(d)) != NULL) {
        if (e->d_name[0] < '1' || e->d_name[0] > '9')
            continue;
        pid_t pid = (pid_t)atoi(e->d_name), ppid;
        unsigned long long start;
        if (pid == wd || table_get(pid))
            continue;
        if (read_stat(pid, &ppid, &start) == 0 && ppid == self &&
            push_pid(v, &n, cap, pid) < 0)
            break;
    }
    closedir(d);
    return n;
}

/* Was pid b handed out after pid a? Pids grow until they wrap at pid_max:
 * of two handed out a moment apart, the later one is less than half the
 * range ahead. */
static int pid_after(pid_t b, pid_t a)
{
    unsigned long range = P.pid_max;
    unsigned long d = ((unsigned long)b + range - (unsigned long)a) % range;
    return d != 0 && d < range / 2;
}

/* Is a main process of child `id` running that started before process
 * `pid` did (at `start`)? Then that process may be its descendant. Start
 * times are clock ticks: within one tick, the later pid is the later
 * process. The sweep runs just after a replacement may have started, and
 * a leftover of the dead main started in the same tick must not pass for
 * the replacement's. */
static int id_runs_since(const char *id, unsigned long long start, pid_t pid)
{
    for (size_t i = 0; i < P.cap; i++) {
        struct proc *p = P.slots[i];
        if (p && !p->released && strcmp(p->id, id) == 0 &&
            (p->starttime < start ||
             (p->starttime == start && pid_after(pid, p->pid))))
            return 1;
    }
    return 0;
}

/* Kills every process re-parented to us that carries a POGO_CHILD_ID whose
 * main process is gone (or newer than it: a leftover of an earlier run of
 * the same child). Runs only after reaps, never periodically. */
static void sweep(void)
{
    pid_t *kids = NULL, self = getpid(), wd = watchdog_pid();
    size_t cap = 0, n;
    ssize_t t = P.children_file != 0 ? children_from_tasks(&kids, &cap) : -1;
    if (t >= 0) {
        P.children_file = 1;
        n = (size_t)t;
    } else {
        P.children_file = 0;
        n = children_from_scan(&kids, &cap);
    }
    for (size_t i = 0; i < n; i++) {
        pid_t pid = kids[i], ppid;
        unsigned long long start;
        char id[ID_MAX];
        if (table_get(pid) || pid == wd)
            continue;           /* a main process, or the watchdog */
        if (read_stat(pid, &ppid, &start) < 0 || ppid != self)
            continue;           /* gone meanwhile */
        if (!read_env_value(pid, "POGO_CHILD_ID=", id, sizeof id) ||
            id_runs_since(id, start, pid))
            continue;
        if (kill(pid, SIGKILL) == 0)
            log_info("proc", "%s: killed pid %d, left behind by its main "
                     "process", id, (int)pid);
        else if (errno != ESRCH)
            log_warn("proc", "%s: cannot kill leftover pid %d: %s", id,
                     (int)pid, strerror(errno));
    }
    free(kids);
}

/* ---- reaping ------------------------------------------------------------ */

static void proc_free(struct proc *p)
{
    output_reader_close(P.loop, &p->out);
    output_reader_close(P.loop, &p->err);
    free(p);
}

/* SIGKILL to the group, and to the main process if it left the group. */
static void kill_group(struct proc *p)
{
    if (kill(-p->pid, SIGKILL) < 0 && errno != ESRCH)
        log_warn("proc", "%s: cannot kill process group %d: %s", p->id,
                 (int)p->pid, strerror(errno));
    if (p->state == PROC_RUNNING && getpgid(p->pid) != p->pid)
        kill(p->pid, SIGKILL);
}

static void on_child(struct ev_loop *loop, ev_child *w, int revents)
{
    (void)revents;
    pid_t pid = w->rpid;
    int status = w->rstatus;
    struct proc *p = table_get(pid);
    if (p == NULL) {
        /* An orphan: its exit may have orphaned more of a dead child. */
        log_debug("proc", "reaped pid %d that no handle owns (status 0x%x)",
                  (int)pid, status);
        P.sweep = 1;
        ev_prepare_start(loop, &P.after);
        return;
    }
    table_del(pid);
    p->state = PROC_EXITING;
    struct proc_status *st = &p->status;
    st->pid = pid;
    st->exited = WIFEXITED(status);
    st->code = st->exited ? WEXITSTATUS(status) : 0;
    st->signal = WIFSIGNALED(status) ? WTERMSIG(status) : 0;
    st->core = WIFSIGNALED(status) && WCOREDUMP(status);
    st->runtime = mono_now() - p->started;
    /* The main is gone: what it left in its group goes with it, now. */
    kill_group(p);
    watchdog_untrack(pid);
    ev_unref(loop);
    log_debug("proc", "%s: pid %d %s %d after %.3fs", p->id, (int)pid,
              st->exited ? "exited with code" : "killed by signal",
              st->exited ? st->code : st->signal, st->runtime);
    /* Everything the main wrote is in the pipes: deliver it before
     * on_exit. Line callbacks may release p; it stays allocated. */
    output_reader_drain(loop, &p->out, DRAIN_MAX);
    output_reader_drain(loop, &p->err, DRAIN_MAX);
    P.sweep = 1;
    if (p->released) {
        proc_free(p);
    } else {
        p->next_exited = NULL;
        *P.exited_tail = p;
        P.exited_tail = &p->next_exited;
    }
    ev_prepare_start(loop, &P.after);
}

/* One sweep for a burst of exits, right after their callbacks: a timer
 * due at once but of the lowest priority runs after the other callbacks
 * of the next loop iteration, so a replacement started from on_exit or
 * from a timer due at once (the supervisor's immediate restart) does not
 * wait for the walk over the agent's thousands of children. The sweep
 * tells it from the leftovers by start time and pid (id_runs_since). */
static void on_sweep(struct ev_loop *loop, ev_timer *w, int revents)
{
    (void)loop; (void)w; (void)revents;
    P.sweep = 0;
    sweep();
}

/* Before the loop blocks again, i.e. once every status pending now has
 * been reaped: the callbacks, then (later in this iteration) the sweep. */
static void on_after(struct ev_loop *loop, ev_prepare *w, int revents)
{
    (void)revents;
    ev_prepare_stop(loop, w);
    struct proc *list = P.exited;
    P.exited = NULL;
    P.exited_tail = &P.exited;
    while (list) {
        struct proc *p = list;
        list = p->next_exited;
        if (!p->released && p->on_exit)
            p->on_exit(p->ud, p, &p->status);
        if (p->released)
            proc_free(p);
        else
            p->state = PROC_DONE;
    }
    if (P.sweep && !ev_is_active(&P.sweeper))
        ev_timer_start(loop, &P.sweeper);
}

/* Each child holds up to three fds in the agent (two pipes and its log
 * file): the usual soft limit of 1024 would cap the agent at some 330
 * children. Up to the hard limit then; children get the original soft
 * limit back (child()), so they see the limits they would have had. Once
 * per process: a later init must not take the raised limit for the
 * original. */
static void raise_nofile(void)
{
    if (P.nofile_saved)
        return;
    if (getrlimit(RLIMIT_NOFILE, &P.nofile) < 0) {
        log_warn("proc", "getrlimit(RLIMIT_NOFILE): %s", strerror(errno));
        return;
    }
    P.nofile_saved = 1;
    if (P.nofile.rlim_cur >= P.nofile.rlim_max)
        return;
    struct rlimit up = {P.nofile.rlim_max, P.nofile.rlim_max};
    if (setrlimit(RLIMIT_NOFILE, &up) < 0) {
        log_warn("proc", "cannot raise the open file limit from %llu to %llu: "
                 "%s", (unsigned long long)P.nofile.rlim_cur,
                 (unsigned long long)up.rlim_cur, strerror(errno));
        return;
    }
    P.nofile_raised = 1;
    log_debug("proc", "open file limit raised from %llu to %llu",
              (unsigned long long)P.nofile.rlim_cur,
              (unsigned long long)up.rlim_cur);
}

/* Where pids wrap, for pid_after(); the kernel's default if unreadable. */
static unsigned long read_pid_max(void)
{
    unsigned long v = 0;
    FILE *f = fopen("/proc/sys/kernel/pid_max", "re");
    if (f) {
        if (fscanf(f, "%lu", &v) != 1)
            v = 0;
        fclose(f);
    }
    return v > 1 ? v : 32768;
}

static void close_fd(int *fd)
{
    if (*fd >= 0) {
        close(*fd);
        *fd = -1;
    }
}

int proc_init(struct ev_loop *loop)
{
    if (P.loop)
        return 0;
    /* The fds a child needs, as low as they can be: the child's fd table
     * is a copy of those below P.keep only (child()). */
    P.devnull = open("/dev/null", O_RDWR | O_CLOEXEC);
    for (int i = 0; i < 2 && P.devnull >= 0; i++)
        if ((P.hold[i] = fcntl(P.devnull, F_DUPFD_CLOEXEC, 3)) < 0)
            break;
    /* Its lowest page a guard: an overflow faults instead of writing over
     * whatever the agent has mapped below. */
    P.stack = mmap(NULL, CHILD_STACK, PROT_READ | PROT_WRITE,
                   MAP_PRIVATE | MAP_ANONYMOUS | MAP_STACK, -1, 0);
    if (P.stack != MAP_FAILED &&
        mprotect(P.stack, (size_t)sysconf(_SC_PAGESIZE), PROT_NONE) < 0) {
        munmap(P.stack, CHILD_STACK);
        P.stack = MAP_FAILED;
    }
    if (P.devnull < 0 || P.hold[1] < 0 || P.stack == MAP_FAILED) {
        int e = errno;
        close_fd(&P.devnull);
        close_fd(&P.hold[0]);
        close_fd(&P.hold[1]);
        if (P.stack != MAP_FAILED)
            munmap(P.stack, CHILD_STACK);
        P.stack = NULL;
        errno = e;
        return -1;
    }
    int top = P.devnull > P.hold[0] ? P.devnull : P.hold[0];
    P.keep = (unsigned)(top > P.hold[1] ? top : P.hold[1]) + 1;
    raise_nofile();
    P.pid_max = read_pid_max();
    P.loop = loop;
    P.exited = NULL;
    P.exited_tail = &P.exited;
    ev_child_init(&P.child, on_child, 0, 0);
    ev_child_start(loop, &P.child);
    ev_unref(loop);             /* only running children keep the loop alive */
    ev_prepare_init(&P.after, on_after);
    ev_timer_init(&P.sweeper, on_sweep, 0., 0.);
    ev_set_priority(&P.sweeper, EV_MINPRI);
    return 0;
}

/* Kills every process carrying this agent's marker, wherever it sits in
 * the process tree. Clean shutdown only: the watchdog, which does this when
 * the agent dies, has been told to exit quietly by then. Two passes catch
 * a process forked while the first one ran. */
static void kill_marked(void)
{
    const char *marker = watchdog_marker();
    const char *eq = marker ? strchr(marker, '=') : NULL;
    if (eq == NULL || eq[1] == '\0')
        return;
    char key[64], value[128];
    size_t klen = (size_t)(eq - marker) + 1;
    if (klen >= sizeof key)
        return;
    memcpy(key, marker, klen);
    key[klen] = '\0';
    pid_t self = getpid();
    for (int pass = 0; pass < 2; pass++) {
        DIR *d = opendir("/proc");
        if (d == NULL)
            return;
        int killed = 0;
        struct dirent *e;
        while ((e = readdir(d)) != NULL) {
            if (e->d_name[0] < '1' || e->d_name[0] > '9')
                continue;
            pid_t pid = (pid_t)atoi(e->d_name);
            if (pid != self && read_env_value(pid, key, value, sizeof value) &&
                strcmp(value, eq + 1) == 0 && kill(pid, SIGKILL) == 0)
                killed++;
        }
        closedir(d);
        if (killed == 0)
            break;
        log_debug("proc", "shutdown: killed %d leftover processes", killed);
    }
}

void proc_shutdown(void)
{
    if (P.loop == NULL)
        return;
    for (size_t i = 0; i < P.cap; i++) {
        struct proc *p = P.slots[i];
        if (p == NULL)
            continue;
        if (!p->released)
            kill_group(p);
        watchdog_untrack(p->pid);
        ev_unref(P.loop);
        proc_free(p);
    }
    while (P.exited) {
        struct proc *p = P.exited;
        P.exited = p->next_exited;
        proc_free(p);
    }
    kill_marked();
    free(P.slots);
    ev_prepare_stop(P.loop, &P.after);
    ev_timer_stop(P.loop, &P.sweeper);
    ev_ref(P.loop);
    ev_child_stop(P.loop, &P.child);
    close_fd(&P.devnull);
    close_fd(&P.hold[0]);
    close_fd(&P.hold[1]);
    munmap(P.stack, CHILD_STACK);
    P.stack = NULL;
    P.slots = NULL;
    P.cap = P.count = 0;
    P.loop = NULL;
}

/* ---- the child, between clone and exec ---------------------------------- */

/* Everything the child needs, prepared by the parent. Until it execs, the
 * child runs in the parent's memory (CLONE_VM) and on its fd table
 * (CLONE_FILES) with the parent suspended (CLONE_VFORK): it may read
 * anything, must allocate nothing, writes nothing of the parent's but
 * stage and err here, and changes no fd before it has a table of its own. */
struct child_args {
    const struct proc_spec *spec;
    char *const *envp;
    const char *exe;              /* execve'd first: argv[0] if it holds a
                                   * '/', else the PATH match the parent
                                   * found (NULL: none) */
    const char *path;             /* argv[0] without a '/': the PATH the
                                   * child searches if exe fails */
    int stdio[3];                 /* all below keep */
    unsigned keep;
    int restore_nofile;           /* RLIMIT_NOFILE back to nofile */
    struct rlimit nofile;
    volatile int stage, err;      /* the failure before exec; stage -1: none */
};

/* The kernel's sigset_t, for the raw calls. */
#define KSIGSET_SIZE ((NSIG - 1) / 8)

/* The credential calls are made raw: in a process with threads, glibc's
 * wrappers make every thread change too, by signalling them, and in this
 * child those would be the agent's. The kernel's calls change the calling
 * thread, the child's only one. */
#ifdef SYS_setuid32             /* 32-bit ABIs: the plain calls take 16-bit ids */
#define SYS_SETGROUPS SYS_setgroups32
#define SYS_SETGID SYS_setgid32
#define SYS_SETUID SYS_setuid32
#else
#define SYS_SETGROUPS SYS_setgroups
#define SYS_SETGID SYS_setgid
#define SYS_SETUID SYS_setuid
#endif

/* Only async-signal-safe calls from here to exec, and nothing noreturn:
 * the child ends by returning from child_main, which exits. (ASan hooks
 * every noreturn call to unpoison the thread's stack, and would take this
 * stack for a gigantic one of the agent's thread and warn.) Returns the
 * exit status. */
static int child_fail(struct child_args *a, enum stage stage, int err)
{
    a->err = err;
    a->stage = (int)stage;
    return 127;
}

/* "dir/file" into buf, dir being dlen bytes of a PATH entry (empty: the
 * current directory, as in execvp). Returns 0, or -1 if it does not fit.
 * Async-signal-safe. */
static int path_join(char *buf, size_t size, const char *dir, size_t dlen,
                     const char *file, size_t flen)
{
    if (dlen == 0) {
        dir = ".";
        dlen = 1;
    }
    if (dlen + 1 + flen >= size)
        return -1;
    memcpy(buf, dir, dlen);
    buf[dlen] = '/';
    memcpy(buf + dlen + 1, file, flen + 1);
    return 0;
}

/* The errors of one PATH entry after which execvp tries the next. */
static int search_goes_on(int err)
{
    switch (err) {
    case EACCES: case ENOENT: case ENOTDIR: case ESTALE: case ENODEV:
    case ETIMEDOUT: case ENAMETOOLONG: case ELOOP:
        return 1;
    default:
        return 0;
    }
}

/* execvpe's search, but over the PATH of the child's own environment and
 * without its /bin/sh fallback: ENOEXEC is an error to report. */
static int exec_search(const char *file, char *const *argv, char *const *envp,
                       const char *path)
{
    size_t flen = strlen(file);
    int eacces = 0;
    char buf[PATH_MAX];
    for (const char *p = path;; ) {
        const char *colon = strchr(p, ':');
        size_t dlen = colon ? (size_t)(colon - p) : strlen(p);
        if (path_join(buf, sizeof buf, p, dlen, file, flen) == 0) {
            execve(buf, argv, envp);
            if (!search_goes_on(errno))
                return errno;
            if (errno == EACCES)
                eacces = 1;
        }
        if (colon == NULL)
            break;
        p = colon + 1;
    }
    return eacces ? EACCES : ENOENT;
}

/* The parent's match first: one execve where the search makes one per
 * PATH entry. Should it fail the way a search goes on past (the child's
 * user may not run it, a noexec mount, a race), the full search follows,
 * so the outcome and the error are execvp's. */
static int child_exec(const struct child_args *a)
{
    char *const *argv = a->spec->argv;
    if (a->exe) {
        execve(a->exe, argv, a->envp);
        if (a->path == NULL || !search_goes_on(errno))
            return errno;
    }
    return exec_search(argv[0], argv, a->envp, a->path);
}

/* An fd table of the child's own holding stdio on 0..2 and nothing else.
 * Returns 0, or the failed stage with errno set. */
static int child_fds(const struct child_args *a)
{
    /* A copy of the fds below keep only: the thousands of pipes and files
     * of a busy agent are neither copied nor, at exec, closed one by one.
     * Before Linux 5.9: a full copy, whose fds close at exec (below). */
    if (close_range(a->keep, ~0U, CLOSE_RANGE_UNSHARE) < 0 &&
        unshare(CLONE_FILES) < 0)
        return ST_FDS;

    /* Lift sources out of 0..2 first, so no dup2 below overwrites one
     * still needed, and none is its own target (which keeps CLOEXEC). */
    int src[3];
    for (int i = 0; i < 3; i++) {
        src[i] = a->stdio[i];
        if (src[i] < 3 && (src[i] = fcntl(src[i], F_DUPFD_CLOEXEC, 3)) < 0)
            return ST_STDIO;
    }
    for (int i = 0; i < 3; i++)
        if (dup2(src[i], i) < 0)
            return ST_STDIO;

    if (close_range(3, ~0U, 0) < 0) {
        struct rlimit nofile;
        if (getrlimit(RLIMIT_NOFILE, &nofile) < 0)
            return ST_FDS;
        rlim_t max = nofile.rlim_cur > 65536 ? 65536 : nofile.rlim_cur;
        for (rlim_t fd = 3; fd < max; fd++)
            fcntl((int)fd, F_SETFD, FD_CLOEXEC);
    }
    return 0;
}

static int child(struct child_args *a)
{
    const struct proc_spec *s = a->spec;

    /* Out of the agent's process group while every signal is still blocked
     * (by the parent, around clone): what is sent to the agent's group from
     * now on (a Ctrl-C) is not for us. */
    if (setpgid(0, 0) < 0)
        return child_fail(a, ST_SETPGID, errno);

    /* Restore the default dispositions before unblocking: an agent handler
     * would run here on the agent's memory (libev's would mark the signal
     * pending for the agent), and SIG_IGN would survive exec (SIGPIPE is
     * ignored in the agent). The raw system call, because glibc's sigaction
     * refuses its own signals (32, 33), which a parent may have left
     * ignored; SIG_DFL with no flags and an empty mask is all zeroes in the
     * kernel's struct sigaction on every architecture, whatever its field
     * order. */
    static const unsigned long dfl[8], none[8];
    for (int sig = 1; sig < NSIG; sig++)
        syscall(SYS_rt_sigaction, sig, dfl, NULL, KSIGSET_SIZE);  /* EINVAL: KILL, STOP */
    if (syscall(SYS_rt_sigprocmask, SIG_SETMASK, none, NULL, KSIGSET_SIZE) < 0)
        return child_fail(a, ST_SIGNALS, errno);

    int stage = child_fds(a);
    if (stage)
        return child_fail(a, (enum stage)stage, errno);

    /* The open file limit the agent had before raising it, then the spec's
     * limits, while still privileged: raising a hard limit needs root. */
    if (a->restore_nofile && setrlimit(RLIMIT_NOFILE, &a->nofile) < 0)
        return child_fail(a, ST_SETRLIMIT, errno);
    for (int i = 0; i < s->nrlimits; i++)
        if (setrlimit(s->rlimits[i].resource, &s->rlimits[i].lim) < 0)
            return child_fail(a, ST_SETRLIMIT, errno);
    if (s->set_umask)
        umask(s->umask);
    if (s->set_groups &&
        syscall(SYS_SETGROUPS, (size_t)s->ngroups, s->groups) < 0)
        return child_fail(a, ST_INITGROUPS, errno);
    if (s->set_gid && syscall(SYS_SETGID, s->gid) < 0)
        return child_fail(a, ST_SETGID, errno);
    if (s->set_uid && syscall(SYS_SETUID, s->uid) < 0)
        return child_fail(a, ST_SETUID, errno);
    /* After setuid: the directory must be reachable by the child's user. */
    if (s->cwd && chdir(s->cwd) < 0)
        return child_fail(a, ST_CHDIR, errno);

    return child_fail(a, ST_EXEC, child_exec(a));
}

static int child_main(void *arg)
{
    return child(arg);
}

/* clone as posix_spawn does it: the agent's memory (no page tables to
 * copy, which made a fork cost grow with the agent), its fd table (no fds
 * to copy), a stack of the child's own (so it cannot clobber the agent's
 * frames), and the agent suspended until the child has exec'd or exited.
 * Every signal is blocked across it, glibc's own too (hence the raw call):
 * until the child has reset the dispositions, no agent handler may run in
 * it. */
static pid_t spawn_child(struct child_args *a)
{
    unsigned long all[8], old[8];
    memset(all, 0xff, sizeof all);
    syscall(SYS_rt_sigprocmask, SIG_SETMASK, all, old, KSIGSET_SIZE);
    pid_t pid = clone(child_main, P.stack + CHILD_STACK,
                      CLONE_VM | CLONE_VFORK | CLONE_FILES | SIGCHLD, a);
    int e = errno;
    syscall(SYS_rt_sigprocmask, SIG_SETMASK, old, NULL, KSIGSET_SIZE);
#ifdef PROC_ASAN
    /* The child's frames that never returned left their redzones. */
    size_t guard = (size_t)sysconf(_SC_PAGESIZE);
    ASAN_UNPOISON_MEMORY_REGION(P.stack + guard, CHILD_STACK - guard);
#endif
    errno = e;
    return pid;
}

/* ---- spawning ---------------------------------------------------------- */

/* The child's environment: the caller's minus any POGO_AGENT, plus our
 * marker, plus POGO_CHILD_ID if missing (the sweep finds leftovers by it).
 * The array is malloc'd; *idvar too if one was made. */
static char **build_env(const struct proc_spec *s, char **idvar)
{
    static const char idkey[] = "POGO_CHILD_ID=";
    size_t n = 0;
    int has_id = 0;
    *idvar = NULL;
    for (; s->envp && s->envp[n]; n++)
        if (strncmp(s->envp[n], idkey, sizeof idkey - 1) == 0)
            has_id = 1;
    char **e = malloc((n + 3) * sizeof *e);
    if (e == NULL)
        return NULL;
    size_t k = 0;
    for (size_t i = 0; i < n; i++)
        if (strncmp(s->envp[i], "POGO_AGENT=", 11) != 0)
            e[k++] = s->envp[i];
    const char *marker = watchdog_marker();
    if (marker && *marker)
        e[k++] = (char *)marker;
    if (!has_id) {
        size_t len = sizeof idkey + strlen(s->id);
        if ((*idvar = malloc(len)) == NULL) {
            free(e);
            return NULL;
        }
        snprintf(*idvar, len, "%s%s", idkey, s->id);
        e[k++] = *idvar;
    }
    e[k] = NULL;
    return e;
}

/* The PATH of envp, or execvp's default. */
static const char *env_path(char *const *envp)
{
    for (; *envp; envp++)
        if (strncmp(*envp, "PATH=", 5) == 0)
            return *envp + 5;
    return "/usr/local/bin:/usr/bin:/bin";
}

/* The first entry of path holding a regular file named file with an
 * execute bit: what the child's search would run, found with a stat per
 * entry here rather than a failed execve per entry there. Relative entries
 * are relative to cwd, where the child execs. Fills exe (PATH_MAX bytes);
 * returns it, or NULL if there is no such file. */
static const char *path_lookup(const char *file, const char *path,
                               const char *cwd, char *exe)
{
    size_t flen = strlen(file);
    char buf[PATH_MAX];
    for (const char *p = path;; ) {
        const char *colon = strchr(p, ':');
        size_t dlen = colon ? (size_t)(colon - p) : strlen(p);
        if (path_join(exe, PATH_MAX, p, dlen, file, flen) == 0) {
            const char *at = exe;
            if (exe[0] != '/' && cwd) {
                int n = snprintf(buf, sizeof buf, "%s/%s", cwd, exe);
                at = n >= 0 && (size_t)n < sizeof buf ? buf : NULL;
            }
            struct stat st;
            if (at && stat(at, &st) == 0 && S_ISREG(st.st_mode) &&
                (st.st_mode & 0111))
                return exe;
        }
        if (colon == NULL)
            return NULL;
        p = colon + 1;
    }
}

static void close_pair(int fds[2])
{
    close_fd(&fds[0]);
    close_fd(&fds[1]);
}

/* The hold slots back to /dev/null: the agent keeps no write end of a
 * child's pipes, so their readers see EOF once the child's are gone. */
static void release_hold(void)
{
    for (int i = 0; i < 2; i++)
        if (dup3(P.devnull, P.hold[i], O_CLOEXEC) < 0)
            log_warn("proc", "dup3 over fd %d: %s", P.hold[i], strerror(errno));
}

/* A child that failed before exec has exited (or is exiting): reap it
 * here, so that no status of it ever reaches the loop. */
static void reap_now(pid_t pid)
{
    while (waitpid(pid, NULL, 0) < 0 && errno == EINTR)
        ;
}

static unsigned long long read_starttime(pid_t pid)
{
    pid_t ppid;
    unsigned long long start;
    return read_stat(pid, &ppid, &start) == 0 ? start : 0;
}

struct proc *proc_spawn(struct ev_loop *loop, const struct proc_spec *spec,
                        proc_exit_fn *on_exit, void *ud,
                        struct proc_error *err)
{
    int outp[2] = {-1, -1}, errp[2] = {-1, -1}, held = 0;
    char *idvar = NULL;
    char **envp = NULL;
    struct proc *p = NULL;
    char exe[PATH_MAX];

    err->stage = "spawn";
    if (proc_init(loop) < 0) {
        err->err = errno;
        return NULL;
    }
    size_t idlen = strlen(spec->id);
    p = calloc(1, sizeof *p + idlen + 1);
    envp = build_env(spec, &idvar);
    if (p == NULL || envp == NULL || table_reserve() < 0) {
        err->err = ENOMEM;
        goto fail;
    }
    struct child_args args = {
        .spec = spec, .envp = envp,
        .stdio = {P.devnull, P.devnull, P.devnull},
        .keep = P.keep,
        .restore_nofile = P.nofile_raised, .nofile = P.nofile,
        .stage = -1,
    };
    const char *file = spec->argv[0];
    if (strchr(file, '/')) {
        args.exe = file;
    } else {
        args.path = env_path(envp);
        args.exe = path_lookup(file, args.path, spec->cwd, exe);
    }
    if (spec->output) {
        err->stage = "pipe";
        if (pipe2(outp, O_CLOEXEC) < 0 || pipe2(errp, O_CLOEXEC) < 0 ||
            fcntl(outp[0], F_SETFL, O_NONBLOCK) < 0 ||
            fcntl(errp[0], F_SETFL, O_NONBLOCK) < 0)
            goto fail_errno;
        /* The write ends move to the low slots the child keeps. */
        held = 1;
        if (dup3(outp[1], P.hold[0], O_CLOEXEC) < 0 ||
            dup3(errp[1], P.hold[1], O_CLOEXEC) < 0)
            goto fail_errno;
        close_fd(&outp[1]);
        close_fd(&errp[1]);
        args.stdio[1] = P.hold[0];
        args.stdio[2] = P.hold[1];
    }

    pid_t pid = spawn_child(&args);
    int fork_err = errno;
    if (held) {
        release_hold();
        held = 0;
    }
    if (pid < 0) {
        err->stage = "fork";
        err->err = fork_err;
        goto fail;
    }
    if (args.stage >= 0) {
        err->stage = args.stage < ST_COUNT ? stage_names[args.stage] : "spawn";
        err->err = args.err;
        reap_now(pid);
        goto fail;
    }
    watchdog_track(pid);
    free(envp);
    free(idvar);

    p->pid = pid;
    p->state = PROC_RUNNING;
    p->on_exit = on_exit;
    p->ud = ud;
    p->started = mono_now();
    p->starttime = read_starttime(pid);
    memcpy(p->id, spec->id, idlen + 1);
    table_put(p);
    ev_ref(loop);
    if (spec->output) {
        output_reader_init(&p->out, spec->output, OUTPUT_STDOUT, outp[0]);
        output_reader_init(&p->err, spec->output, OUTPUT_STDERR, errp[0]);
        output_reader_start(loop, &p->out);
        output_reader_start(loop, &p->err);
    } else {
        p->out.fd = p->err.fd = -1;
    }
    return p;

fail_errno:
    err->err = errno;
fail:
    if (held)
        release_hold();
    close_pair(outp);
    close_pair(errp);
    free(p);
    free(envp);
    free(idvar);
    return NULL;
}

/* ---- handles ------------------------------------------------------------ */

pid_t proc_pid(const struct proc *p)
{
    return p->pid;
}

const char *proc_id(const struct proc *p)
{
    return p->id;
}

int proc_running(const struct proc *p)
{
    return p->state == PROC_RUNNING;
}

int proc_kill(struct proc *p, int sig)
{
    if (p->state != PROC_RUNNING) {
        errno = ESRCH;
        return -1;
    }
    int rc = kill(-p->pid, sig), e = errno;
    /* A main process that made a group of its own is signalled directly. */
    if (getpgid(p->pid) != p->pid) {
        if (kill(p->pid, sig) == 0)
            rc = 0;
        else if (rc < 0)
            e = errno;
    }
    errno = e;
    return rc;
}

void proc_release(struct proc *p)
{
    p->released = 1;
    p->on_exit = NULL;
    p->ud = NULL;
    output_reader_close(P.loop, &p->out);
    output_reader_close(P.loop, &p->err);
    switch (p->state) {
    case PROC_RUNNING:
        kill_group(p);          /* freed once reaped */
        break;
    case PROC_EXITING:
        break;                  /* freed once its exit is processed */
    case PROC_DONE:
        free(p);
        break;
    }
}

size_t proc_count(void)
{
    return P.count;
}

int proc_subreaper(void)
{
    return prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0);
}
