/*
 * proc.c - child processes: spawn, reap, signal, and clean up after them.
 *
 * Spawning is fork + exec with a CLOEXEC error pipe: the child reports the
 * stage and errno of any failure before exec, and the parent waits for the
 * pipe to hit EOF (exec succeeded) or to deliver that report, so a missing
 * binary or a bad user is an error of the spawn call, not an "exit 127".
 * Each child leads its own process group.
 *
 * Reaping is one ev_child watcher on pid 0: it sees every status the agent
 * receives, orphans re-parented to it (a child subreaper) included. When a
 * main process exits, its group is SIGKILLed at once, its output drained,
 * and before its on_exit runs, a sweep kills whatever it left re-parented
 * to the agent (found by POGO_CHILD_ID in /proc/PID/environ). The sweep and
 * the callbacks run in an ev_prepare, once per burst of exits, so stopping
 * hundreds of children costs one /proc scan, not hundreds.
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <grp.h>
#include <time.h>
#include <unistd.h>

#include "pogo.h"


#define DRAIN_MAX (4u << 20)      /* bytes read from a pipe once its main exited */
#define ID_MAX 256                /* longest POGO_CHILD_ID the sweep compares */

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
    ev_prepare after;             /* sweep + on_exit after a burst of reaps */
    int devnull;                  /* O_RDWR, for stdin and unwanted output */
    struct proc **slots;          /* pid -> running proc; linear probing */
    size_t cap, count;            /* cap is a power of two; count <= cap/2 */
    struct proc *exited;          /* FIFO of procs in PROC_EXITING */
    struct proc **exited_tail;
    int sweep;                    /* an orphan was reaped: sweep anyway */
    int children_file;            /* /proc/self/task/T/children: -1 unknown */
} P = {.devnull = -1, .children_file = -1};

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

/* The same by reading every /proc/PID/stat: slower, always available. */
static size_t children_from_scan(pid_t **v, size_t *cap)
{
    size_t n = 0;
    pid_t self = getpid();
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
        if (read_stat(pid, &ppid, &start) == 0 && ppid == self &&
            push_pid(v, &n, cap, pid) < 0)
            break;
    }
    closedir(d);
    return n;
}

/* Is a main process of child `id` running that started no later than
 * `start`? Then a process carrying that id may be its descendant. */
static int id_runs_since(const char *id, unsigned long long start)
{
    for (size_t i = 0; i < P.cap; i++) {
        struct proc *p = P.slots[i];
        if (p && !p->released && p->starttime <= start &&
            strcmp(p->id, id) == 0)
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
            id_runs_since(id, start))
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

/* Before the loop blocks again, i.e. once every status pending now has
 * been reaped: one sweep for the whole burst, then the callbacks. */
static void on_after(struct ev_loop *loop, ev_prepare *w, int revents)
{
    (void)revents;
    ev_prepare_stop(loop, w);
    if (P.sweep) {
        P.sweep = 0;
        sweep();
    }
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
}

int proc_init(struct ev_loop *loop)
{
    if (P.loop)
        return 0;
    int fd = open("/dev/null", O_RDWR | O_CLOEXEC);
    if (fd < 0)
        return -1;
    P.devnull = fd;
    P.loop = loop;
    P.exited = NULL;
    P.exited_tail = &P.exited;
    ev_child_init(&P.child, on_child, 0, 0);
    ev_child_start(loop, &P.child);
    ev_unref(loop);             /* only running children keep the loop alive */
    ev_prepare_init(&P.after, on_after);
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
    ev_ref(P.loop);
    ev_child_stop(P.loop, &P.child);
    close(P.devnull);
    P.slots = NULL;
    P.cap = P.count = 0;
    P.devnull = -1;
    P.loop = NULL;
}

/* ---- the child, between fork and exec ------------------------------------- */

struct child_args {
    const struct proc_spec *spec;
    char *const *envp;
    const char *path;             /* PATH of envp, or NULL */
    int report;                   /* the error pipe's write end */
    int stdio[3];
};

/* Only async-signal-safe calls from here to exec. */
__attribute__((noreturn))
static void child_fail(int report, enum stage stage, int err)
{
    int msg[2] = {stage, err};
    ssize_t n;
    do
        n = write(report, msg, sizeof msg);
    while (n < 0 && errno == EINTR);
    _exit(127);
}

/* execvpe's search, but over the PATH of the child's own environment and
 * without its /bin/sh fallback: ENOEXEC is an error to report. */
static int exec_search(const char *file, char *const *argv, char *const *envp,
                       const char *path)
{
    if (strchr(file, '/')) {
        execve(file, argv, envp);
        return errno;
    }
    if (path == NULL)
        path = "/usr/local/bin:/usr/bin:/bin";
    size_t flen = strlen(file);
    int eacces = 0;
    char buf[PATH_MAX];
    for (const char *p = path;; ) {
        const char *colon = strchr(p, ':');
        size_t dlen = colon ? (size_t)(colon - p) : strlen(p);
        if (dlen + 1 + flen < sizeof buf) {
            /* An empty element is the current directory, as in execvp. */
            memcpy(buf, dlen ? p : ".", dlen ? dlen : 1);
            size_t k = dlen ? dlen : 1;
            buf[k] = '/';
            memcpy(buf + k + 1, file, flen + 1);
            execve(buf, argv, envp);
            switch (errno) {
            case EACCES: eacces = 1; break;
            case ENOENT: case ENOTDIR: case ESTALE: case ENODEV:
            case ETIMEDOUT: case ENAMETOOLONG: case ELOOP: break;
            default: return errno;
            }
        }
        if (colon == NULL)
            break;
        p = colon + 1;
    }
    return eacces ? EACCES : ENOENT;
}

__attribute__((noreturn))
static void child(const struct child_args *a)
{
    const struct proc_spec *s = a->spec;
    int r = a->report;

    /* Every signal is blocked (by the parent, around fork): restore the
     * default dispositions before unblocking, so no agent handler runs
     * here. SIG_IGN would survive exec (SIGPIPE is ignored in the agent).
     * The raw system call, because glibc's sigaction refuses its own
     * signals (32, 33), which a parent may have left ignored; SIG_DFL with
     * no flags and an empty mask is all zeroes in the kernel's struct
     * sigaction on every architecture, whatever its field order. */
    static const unsigned long dfl[8];
    for (int sig = 1; sig < NSIG; sig++)
        syscall(SYS_rt_sigaction, sig, dfl, NULL, (NSIG - 1) / 8);  /* EINVAL: KILL, STOP */
    sigset_t none;
    sigemptyset(&none);
    if (sigprocmask(SIG_SETMASK, &none, NULL) < 0)
        child_fail(r, ST_SIGNALS, errno);

    if (setpgid(0, 0) < 0)
        child_fail(r, ST_SETPGID, errno);

    /* Lift sources out of 0..2 first, so no dup2 below overwrites one
     * still needed, and none is its own target (which keeps CLOEXEC). */
    int src[3];
    for (int i = 0; i < 3; i++) {
        src[i] = a->stdio[i];
        if (src[i] < 3 && (src[i] = fcntl(src[i], F_DUPFD_CLOEXEC, 3)) < 0)
            child_fail(r, ST_STDIO, errno);
    }
    for (int i = 0; i < 3; i++)
        if (dup2(src[i], i) < 0)
            child_fail(r, ST_STDIO, errno);

    /* Everything above 2 closes at exec, the error pipe with it. */
    if (close_range(3, ~0U, CLOSE_RANGE_CLOEXEC) < 0) {
        struct rlimit nofile;
        if (getrlimit(RLIMIT_NOFILE, &nofile) < 0)
            child_fail(r, ST_FDS, errno);
        rlim_t max = nofile.rlim_cur > 65536 ? 65536 : nofile.rlim_cur;
        for (rlim_t fd = 3; fd < max; fd++)
            fcntl((int)fd, F_SETFD, FD_CLOEXEC);
    }

    /* Limits while still privileged: raising a hard limit needs root. */
    for (int i = 0; i < s->nrlimits; i++)
        if (setrlimit(s->rlimits[i].resource, &s->rlimits[i].lim) < 0)
            child_fail(r, ST_SETRLIMIT, errno);
    if (s->set_umask)
        umask(s->umask);
    if (s->set_groups && setgroups((size_t)s->ngroups, s->groups) < 0)
        child_fail(r, ST_INITGROUPS, errno);
    if (s->set_gid && setgid(s->gid) < 0)
        child_fail(r, ST_SETGID, errno);
    if (s->set_uid && setuid(s->uid) < 0)
        child_fail(r, ST_SETUID, errno);
    /* After setuid: the directory must be reachable by the child's user. */
    if (s->cwd && chdir(s->cwd) < 0)
        child_fail(r, ST_CHDIR, errno);

    child_fail(r, ST_EXEC, exec_search(s->argv[0], s->argv, a->envp, a->path));
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

static const char *env_path(char *const *envp)
{
    for (; *envp; envp++)
        if (strncmp(*envp, "PATH=", 5) == 0)
            return *envp + 5;
    return NULL;
}

static void close_pair(int fds[2])
{
    for (int i = 0; i < 2; i++)
        if (fds[i] >= 0) {
            close(fds[i]);
            fds[i] = -1;
        }
}

/* A child that failed before exec exits at once: reap it here, so that no
 * status of it ever reaches the loop. */
static void reap_now(pid_t pid)
{
    while (waitpid(pid, NULL, 0) < 0 && errno == EINTR)
        ;
}

/* Waits for the error pipe: EOF is a successful exec. Returns 0, or -1
 * with err filled. */
static int await_exec(int fd, pid_t pid, struct proc_error *err)
{
    int msg[2];
    size_t got = 0;
    while (got < sizeof msg) {
        ssize_t n = read(fd, (char *)msg + got, sizeof msg - got);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0) {
            /* Cannot tell how it went: make sure it did not go at all. */
            err->stage = "spawn";
            err->err = errno;
            kill(pid, SIGKILL);
            return -1;
        }
        if (n == 0)
            break;
        got += (size_t)n;
    }
    if (got == 0)
        return 0;
    if (got == sizeof msg && msg[0] >= 0 && msg[0] < ST_COUNT) {
        err->stage = stage_names[msg[0]];
        err->err = msg[1];
    } else {
        err->stage = "spawn";
        err->err = EPROTO;
    }
    return -1;
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
    int report[2] = {-1, -1}, outp[2] = {-1, -1}, errp[2] = {-1, -1};
    char *idvar = NULL;
    char **envp = NULL;
    struct proc *p = NULL;

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
    err->stage = "pipe";
    if (pipe2(report, O_CLOEXEC) < 0)
        goto fail_errno;
    struct child_args args = {
        .spec = spec, .envp = envp, .path = env_path(envp),
        .report = report[1],
        .stdio = {P.devnull, P.devnull, P.devnull},
    };
    if (spec->output) {
        if (pipe2(outp, O_CLOEXEC) < 0 || pipe2(errp, O_CLOEXEC) < 0 ||
            fcntl(outp[0], F_SETFL, O_NONBLOCK) < 0 ||
            fcntl(errp[0], F_SETFL, O_NONBLOCK) < 0)
            goto fail_errno;
        args.stdio[1] = outp[1];
        args.stdio[2] = errp[1];
    }

    /* Block every signal across fork: the child must not run an agent
     * handler (libev's would write to the loop's wakeup fd) before it has
     * reset the dispositions. */
    sigset_t all, old;
    sigfillset(&all);
    sigprocmask(SIG_SETMASK, &all, &old);
    pid_t pid = fork();
    if (pid == 0)
        child(&args);
    int fork_err = errno;
    sigprocmask(SIG_SETMASK, &old, NULL);
    close(report[1]);
    report[1] = -1;
    if (outp[1] >= 0) {
        close(outp[1]);
        close(errp[1]);
        outp[1] = errp[1] = -1;
    }
    if (pid < 0) {
        err->stage = "fork";
        err->err = fork_err;
        goto fail;
    }
    /* Also here, so the group exists whichever side runs first; EACCES
     * means the child has already exec'd, having done it itself. */
    if (setpgid(pid, pid) < 0 && errno != EACCES && errno != ESRCH)
        log_debug("proc", "%s: setpgid(%d): %s", spec->id, (int)pid,
                  strerror(errno));
    watchdog_track(pid);
    if (await_exec(report[0], pid, err) < 0) {
        watchdog_untrack(pid);
        reap_now(pid);
        goto fail;
    }
    close(report[0]);
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
    close_pair(report);
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
