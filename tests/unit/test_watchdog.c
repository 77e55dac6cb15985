/*
 * test_watchdog.c - the watchdog, with real processes.
 *
 * watchdog_start() watches the process that calls it, so most tests fork a
 * fake agent: it starts a watchdog, spawns a process group of sleeps (a
 * leader, a member, and optionally an escapee that setsid()s away carrying
 * the marker), tells the test their pids, then dies - or stops the watchdog
 * first. The test process is a child subreaper meanwhile, so every orphan
 * comes back to it, and it kills and reaps every process of the run even
 * when a check fails. POGO_UNIT_TIMING=1 polls finer and prints how long
 * the kills took.
 */
#include <errno.h>
#include <fcntl.h>
#include <dirent.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "pogo.h"
#include "unit.h"

/* Above PID_MAX_LIMIT (2^22): no process or group can have these, so
 * tracking them is harmless even if the watchdog did signal them. */
#define NO_SUCH_PGID (4194304 + 1)

static double now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec * 1e3 + (double)ts.tv_nsec / 1e6;
}

static void sleep_ms(double ms)
{
    struct timespec ts = {(time_t)(ms / 1e3),
                          (long)((ms - (double)(time_t)(ms / 1e3) * 1e3) * 1e6)};
    while (nanosleep(&ts, &ts) < 0 && errno == EINTR)
        ;
}

/* Reads /proc/<pid>/<what> into buf (NUL-terminated); -1 if unreadable. */
static int proc_read(pid_t pid, const char *what, char *buf, size_t len)
{
    char path[64];
    snprintf(path, sizeof path, "/proc/%d/%s", (int)pid, what);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return -1;
    ssize_t n = read(fd, buf, len - 1);
    close(fd);
    if (n < 0)
        return -1;
    buf[n] = '\0';
    return 0;
}

/* The state letter of /proc/<pid>/stat ('R', 'S', 'T', 'Z'...), or 0. */
static char proc_state(pid_t pid)
{
    char buf[512];
    if (proc_read(pid, "stat", buf, sizeof buf) < 0)
        return 0;
    char *p = strrchr(buf, ')');
    return p && p[1] == ' ' ? p[2] : 0;
}

static int wait_state(pid_t pid, char state, double ms)
{
    double deadline = now_ms() + ms;
    while (proc_state(pid) != state)
        if (now_ms() > deadline)
            return -1;
        else
            sleep_ms(1);
    return 0;
}

/* Waits until pid has exec'd sleep (its comm says so). */
static int wait_exec(pid_t pid, double ms)
{
    double deadline = now_ms() + ms;
    char buf[64];
    while (proc_read(pid, "comm", buf, sizeof buf) < 0 ||
           strcmp(buf, "sleep\n") != 0)
        if (now_ms() > deadline)
            return -1;
        else
            sleep_ms(1);
    return 0;
}

/* ---- the fake agent (runs in a forked child: no CHECK here) -------------- */

enum death {
    DIE_EXIT,          /* _exit(0) without stopping the watchdog */
    DIE_KILLED,        /* waits for the test's SIGKILL */
    DIE_AFTER_STOP,    /* watchdog_stop(), then _exit(0) */
};

struct scenario {
    enum death death;
    int escapee;         /* spawn a grandchild that setsid()s, with marker */
    int untrack;         /* untrack the group before dying */
    int churn;           /* track/untrack thousands of groups around it */
    int flood;           /* this many track+untrack pairs, watchdog stopped */
    int kill_watchdog;   /* SIGKILL the watchdog; the next call restarts it */
};

/* What the fake agent tells the test, in one write. */
struct report {
    char err[160];           /* "" once everything was done */
    pid_t watchdog;          /* watchdog_pid() at the end */
    pid_t first_watchdog;    /* differs from watchdog after a restart */
    pid_t after_stop;        /* watchdog_pid() after watchdog_stop() */
    pid_t leader, member, escapee;   /* the sleeps; escapee 0 if none */
    double flood_ms;         /* all of the flood */
    double flood_max_ms;     /* its slowest single call */
    char marker[64];
};

static void agent_send(const struct report *rep, int fd)
{
    /* A pipe write of this size is atomic; the test reads it whole. */
    ssize_t n = write(fd, rep, sizeof *rep);
    (void)n;
}

static void __attribute__((noreturn, format(printf, 3, 4)))
agent_fail(struct report *rep, int fd, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(rep->err, sizeof rep->err, fmt, ap);
    va_end(ap);
    agent_send(rep, fd);    /* with the pids so far, for the cleanup */
    _exit(1);
}

/* Becomes "sleep 1000", with the marker in its environment if given. Its
 * stdio goes to /dev/null: it must not hold the test's log pipe open. */
static void __attribute__((noreturn)) exec_sleep(const char *marker)
{
    int null = open("/dev/null", O_RDWR | O_CLOEXEC);
    if (null >= 0)
        for (int fd = 0; fd <= 2; fd++)
            dup2(null, fd);
    char *argv[] = {(char *)"sleep", (char *)"1000", NULL};
    char *envp[] = {(char *)marker, (char *)"PATH=/usr/bin:/bin", NULL};
    if (marker)
        execvpe("sleep", argv, envp);
    else
        execvp("sleep", argv);
    _exit(127);
}

/* The leader forks a member (same group) and maybe an escapee (own
 * session, marker in its environment), then all three exec sleep. */
static void spawn_group(const struct scenario *sc, struct report *rep,
                        int repfd)
{
    int sync[2];
    if (pipe2(sync, O_CLOEXEC) < 0)
        agent_fail(rep, repfd, "pipe2: %s", strerror(errno));
    const char *marker = watchdog_marker();
    pid_t m = fork();
    if (m < 0)
        agent_fail(rep, repfd, "fork: %s", strerror(errno));
    if (m == 0) {
        pid_t kids[2] = {0, 0};
        setpgid(0, 0);
        kids[0] = fork();
        if (kids[0] == 0)
            exec_sleep(NULL);
        if (sc->escapee) {
            kids[1] = fork();
            if (kids[1] == 0) {
                setsid();
                exec_sleep(marker);
            }
        }
        ssize_t n = write(sync[1], kids, sizeof kids);
        (void)n;
        exec_sleep(NULL);
    }
    rep->leader = m;
    setpgid(m, m);    /* whoever runs first; EACCES once it has exec'd */
    close(sync[1]);
    pid_t kids[2];
    ssize_t n = read(sync[0], kids, sizeof kids);
    close(sync[0]);
    if (n != (ssize_t)sizeof kids || kids[0] <= 0 || kids[1] < 0)
        agent_fail(rep, repfd, "the group leader could not fork");
    rep->member = kids[0];
    rep->escapee = kids[1];
    /* Until they exec, they hold copies of the watchdog's write end. */
    if (wait_exec(m, 2000) < 0 || wait_exec(kids[0], 2000) < 0 ||
        (kids[1] > 0 && wait_exec(kids[1], 2000) < 0))
        agent_fail(rep, repfd, "the sleeps did not start");
}

static void flood(const struct scenario *sc, struct report *rep, int repfd)
{
    pid_t w = watchdog_pid();
    kill(w, SIGSTOP);
    if (wait_state(w, 'T', 2000) < 0)
        agent_fail(rep, repfd, "the watchdog did not stop");
    double t0 = now_ms();
    for (int i = 0; i < sc->flood; i++) {
        double t = now_ms();
        watchdog_track(NO_SUCH_PGID + i);
        watchdog_untrack(NO_SUCH_PGID + i);
        t = now_ms() - t;
        if (t > rep->flood_max_ms)
            rep->flood_max_ms = t;
    }
    rep->flood_ms = now_ms() - t0;
    kill(w, SIGCONT);
    /* Asleep in read() again: it has drained the pipe, so the next call
     * flushes the whole (compacted) queue. */
    if (wait_state(w, 'S', 2000) < 0)
        agent_fail(rep, repfd, "the watchdog did not resume");
}

/* Thousands of groups around the real one, untracked in a scrambled
 * order: the set must still hold the real one, and only it. */
static void churn(pid_t leader)
{
    enum { N = 5000 };
    for (int i = 0; i < N; i++) {
        if (i == N / 2)
            watchdog_track(leader);
        watchdog_track(NO_SUCH_PGID + i);
    }
    for (int i = 0; i < N; i++)
        watchdog_untrack(NO_SUCH_PGID + (int)(((long)i * 7919) % N));
}

static void __attribute__((noreturn))
fake_agent(const struct scenario *sc, int repfd)
{
    struct report rep;
    memset(&rep, 0, sizeof rep);
    signal(SIGPIPE, SIG_IGN);    /* as main.c does */
    alarm(20);                   /* never outlive the test, even blocked */
    double t0 = now_ms();

    if (watchdog_start() < 0)
        agent_fail(&rep, repfd, "watchdog_start: %s", strerror(errno));
    rep.watchdog = rep.first_watchdog = watchdog_pid();
    snprintf(rep.marker, sizeof rep.marker, "%s", watchdog_marker());
    spawn_group(sc, &rep, repfd);

    if (sc->flood)
        flood(sc, &rep, repfd);
    if (sc->churn)
        churn(rep.leader);
    else
        watchdog_track(rep.leader);
    if (sc->kill_watchdog) {
        /* Killed and reaped, as the agent's reaper would. Restarts are
         * paced to one a second: wait that out, then the next record
         * finds EPIPE and brings up a new one with the whole set. */
        kill(rep.first_watchdog, SIGKILL);
        waitpid(rep.first_watchdog, NULL, 0);
        double left = t0 + 1100 - now_ms();
        if (left > 0)
            sleep_ms(left);
        watchdog_track(NO_SUCH_PGID);
        rep.watchdog = watchdog_pid();
        if (rep.watchdog <= 0 || rep.watchdog == rep.first_watchdog)
            agent_fail(&rep, repfd, "no new watchdog (pid %d)",
                       (int)rep.watchdog);
    }
    if (sc->untrack)
        watchdog_untrack(rep.leader);
    if (sc->death == DIE_AFTER_STOP) {
        watchdog_stop();
        rep.after_stop = watchdog_pid();
    }
    agent_send(&rep, repfd);
    if (sc->death == DIE_KILLED)
        for (;;)
            pause();
    _exit(0);
}

/* ---- the test's side ------------------------------------------------------ */

struct proc {
    pid_t pid;
    int gone;      /* reaped by us, or no longer exists */
    int status;    /* from waitpid, when we reaped it */
    int reaped;
};

struct run {
    struct report rep;
    int got_report;
    struct proc agent, watchdog, first_watchdog, leader, member, escapee;
    pid_t before[64];       /* our children before the run: not ours to kill */
    int nbefore;
    int logfd;              /* read end of the agent's and watchdog's stderr */
    char log[16384];
    size_t loglen;
    double t_death;         /* when the agent died */
};

/* Our children, from /proc/<pid>/stat's ppid field. */
static int list_children(pid_t *out, int max)
{
    DIR *d = opendir("/proc");
    int n = 0;
    pid_t self = getpid();
    if (d == NULL)
        return 0;
    struct dirent *de;
    while ((de = readdir(d)) != NULL && n < max) {
        char buf[512];
        pid_t pid = (pid_t)atoi(de->d_name);
        if (pid <= 0 || proc_read(pid, "stat", buf, sizeof buf) < 0)
            continue;
        char *p = strrchr(buf, ')');
        int ppid;
        if (p && sscanf(p + 1, " %*c %d", &ppid) == 1 && ppid == self)
            out[n++] = pid;
    }
    closedir(d);
    return n;
}

/* Whether p is gone; reaps it if it is our zombie. 0 if alive, and then
 * *ours says whether it is our child (so that signalling it is safe: its
 * pid cannot have been reused). */
static int proc_gone(struct proc *p, int *ours)
{
    *ours = 0;
    if (p->pid <= 0 || p->gone)
        return 1;
    int st;
    pid_t r = waitpid(p->pid, &st, WNOHANG);
    if (r == p->pid) {
        p->gone = p->reaped = 1;
        p->status = st;
    } else if (r == 0) {
        *ours = 1;
    } else if (errno == ECHILD && kill(p->pid, 0) < 0 && errno == ESRCH) {
        p->gone = 1;
    }
    return p->gone;
}

static int all_gone(struct proc *const *ps, int n)
{
    int ours, gone = 1;
    for (int i = 0; i < n; i++)
        gone &= proc_gone(ps[i], &ours);
    return gone;
}

/* Polls every 5 ms until every process of ps is gone; 0, or -1 at the
 * deadline. */
static int wait_gone(struct proc *const *ps, int n, double deadline)
{
    /* Finer steps when measuring, so the figure is not 5 ms granular. */
    double step = getenv("POGO_UNIT_TIMING") ? 0.1 : 5;
    while (!all_gone(ps, n)) {
        if (now_ms() > deadline)
            return -1;
        sleep_ms(step);
    }
    return 0;
}

/* Reads what the agent and the watchdog logged, until EOF (both gone) or
 * the deadline. */
static void read_log(struct run *r, double deadline)
{
    while (r->logfd >= 0) {
        int left = (int)(deadline - now_ms());
        struct pollfd pfd = {.fd = r->logfd, .events = POLLIN};
        if (left <= 0 || poll(&pfd, 1, left) <= 0)
            return;
        size_t room = sizeof r->log - 1 - r->loglen;
        char scratch[512];
        ssize_t n = room > 0 ? read(r->logfd, r->log + r->loglen, room)
                             : read(r->logfd, scratch, sizeof scratch);
        if (n == 0) {
            close(r->logfd);
            r->logfd = -1;
        } else if (n > 0 && room > 0) {
            r->loglen += (size_t)n;
            r->log[r->loglen] = '\0';
        }
    }
}

static int was_before(const struct run *r, pid_t pid)
{
    for (int i = 0; i < r->nbefore; i++)
        if (r->before[i] == pid)
            return 1;
    return 0;
}

/* Kills and reaps every process of the run, known or not: our children
 * are safe to signal, and the others become ours as their parents die. */
static void run_cleanup(struct run *r)
{
    struct proc *ps[] = {&r->agent, &r->first_watchdog, &r->watchdog,
                         &r->leader, &r->member, &r->escapee};
    double deadline = now_ms() + 3000;
    for (;;) {
        int busy = 0, ours;
        for (size_t i = 0; i < sizeof ps / sizeof *ps; i++)
            if (!proc_gone(ps[i], &ours)) {
                busy = 1;
                if (ours)
                    kill(ps[i]->pid, SIGKILL);
            }
        pid_t kids[64];
        int n = list_children(kids, 64);
        for (int i = 0; i < n; i++)
            if (!was_before(r, kids[i])) {
                busy = 1;
                kill(kids[i], SIGKILL);
                waitpid(kids[i], NULL, WNOHANG);
            }
        if (!busy)
            break;
        if (now_ms() > deadline) {
            FAIL("processes of the run are still alive after cleanup");
            break;
        }
        sleep_ms(5);
    }
    if (r->logfd >= 0)
        close(r->logfd);
    r->logfd = -1;
    prctl(PR_SET_CHILD_SUBREAPER, 0, 0, 0, 0);
}

/* Forks the fake agent and waits for its report. */
static void run_start(struct run *r, const struct scenario *sc)
{
    int rep[2], logp[2];

    memset(r, 0, sizeof *r);
    r->logfd = -1;
    r->nbefore = list_children(r->before, 64);
    if (prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) < 0) {
        FAIL("PR_SET_CHILD_SUBREAPER: %s", strerror(errno));
        return;
    }
    if (pipe2(rep, O_CLOEXEC) < 0) {
        FAIL("pipe2: %s", strerror(errno));
        return;
    }
    if (pipe2(logp, O_CLOEXEC) < 0) {
        FAIL("pipe2: %s", strerror(errno));
        close(rep[0]);
        close(rep[1]);
        return;
    }
    fflush(stdout);
    pid_t a = fork();
    if (a == 0) {
        close(rep[0]);
        close(logp[0]);
        dup2(logp[1], 2);
        fake_agent(sc, rep[1]);
    }
    close(rep[1]);
    close(logp[1]);
    r->logfd = logp[0];
    if (a < 0) {
        FAIL("fork: %s", strerror(errno));
        close(rep[0]);
        return;
    }
    r->agent.pid = a;

    size_t got = 0;
    double deadline = now_ms() + 10000;
    while (got < sizeof r->rep) {
        int left = (int)(deadline - now_ms());
        struct pollfd pfd = {.fd = rep[0], .events = POLLIN};
        if (left <= 0 || poll(&pfd, 1, left) <= 0)
            break;
        ssize_t n = read(rep[0], (char *)&r->rep + got, sizeof r->rep - got);
        if (n <= 0)
            break;
        got += (size_t)n;
    }
    close(rep[0]);
    r->got_report = got == sizeof r->rep;
    r->watchdog.pid = r->rep.watchdog;
    if (r->rep.first_watchdog != r->rep.watchdog)
        r->first_watchdog.pid = r->rep.first_watchdog;
    r->leader.pid = r->rep.leader;
    r->member.pid = r->rep.member;
    r->escapee.pid = r->rep.escapee;
    r->t_death = now_ms();
    if (sc->death == DIE_KILLED)
        kill(a, SIGKILL);
}

static int killed_by_sigkill(const struct proc *p)
{
    return p->reaped && WIFSIGNALED(p->status) &&
           WTERMSIG(p->status) == SIGKILL;
}

static int exited_0(const struct proc *p)
{
    return p->reaped && WIFEXITED(p->status) && WEXITSTATUS(p->status) == 0;
}

static int alive(struct proc *p)
{
    int ours;
    return !proc_gone(p, &ours);
}

static void timing(const char *what, double ms)
{
    if (getenv("POGO_UNIT_TIMING"))
        printf("     %s: %.1f ms\n", what, ms);
}

/* The agent dies; the watchdog must kill the group and the escapee within
 * a second, log what it did and exit 0. */
static void agent_dies(enum death death)
{
    struct scenario sc = {.death = death, .escapee = 1};
    struct run r;
    int ok = 1;

    run_start(&r, &sc);
    if (r.got_report) {
        ok &= CHECK_STR_EQ(r.rep.err, "");
        struct proc *victims[] = {&r.leader, &r.member, &r.escapee};
        ok &= CHECK_EQ_INT(wait_gone(victims, 3, r.t_death + 1000), 0);
        timing("agent's death to all gone", now_ms() - r.t_death);
        ok &= CHECK(killed_by_sigkill(&r.leader));
        ok &= CHECK(killed_by_sigkill(&r.member));
        ok &= CHECK(killed_by_sigkill(&r.escapee));
        struct proc *w[] = {&r.agent, &r.watchdog};
        ok &= CHECK_EQ_INT(wait_gone(w, 2, now_ms() + 1000), 0);
        ok &= CHECK(exited_0(&r.watchdog));
        read_log(&r, now_ms() + 1000);
        ok &= CHECK_CONTAINS(r.log, "killed 1 process group(s) and 1 marked "
                                    "process(es)");
    } else {
        ok = FAIL("no report from the fake agent");
    }
    if (!ok)
        printf("     log:\n%s", r.log);
    run_cleanup(&r);
}

/* ---- tests ------------------------------------------------------------------ */

/* In the test process itself: the marker, the pid, the watchdog's name,
 * session and fds, an idempotent start and a clean stop that reaps it. */
TEST(watchdog_start_and_stop)
{
    REQUIRE_EQ_INT(watchdog_start(), 0);
    pid_t w = watchdog_pid();
    CHECK(w > 0);
    CHECK_EQ_INT(watchdog_start(), 0);
    CHECK_EQ_INT(watchdog_pid(), w);

    char prefix[32];
    snprintf(prefix, sizeof prefix, "POGO_AGENT=%d.", (int)getpid());
    const char *m = watchdog_marker();
    CHECK(strncmp(m, prefix, strlen(prefix)) == 0);
    CHECK(strlen(m) > strlen(prefix) + 9);   /* nanoseconds since 1970 */
    CHECK(strspn(m + strlen(prefix), "0123456789") ==
          strlen(m + strlen(prefix)));
    CHECK(watchdog_marker() == m);

    /* Its setup runs after fork: poll for it. */
    double deadline = now_ms() + 1000;
    char comm[64] = "";
    int nfds = -1;
    while (now_ms() < deadline) {
        nfds = 0;
        char path[64];
        snprintf(path, sizeof path, "/proc/%d/fd", (int)w);
        DIR *d = opendir(path);
        if (d) {
            struct dirent *de;
            while ((de = readdir(d)) != NULL)
                nfds += de->d_name[0] != '.';
            closedir(d);
        }
        if (proc_read(w, "comm", comm, sizeof comm) == 0 &&
            strcmp(comm, "pogo-watchdog\n") == 0 && getsid(w) == w &&
            nfds == 4)
            break;
        sleep_ms(1);
    }
    CHECK_STR_EQ(comm, "pogo-watchdog\n");
    CHECK_EQ_INT(getsid(w), w);      /* out of our session and group */
    CHECK_EQ_INT(nfds, 4);           /* /dev/null x2, stderr, the pipe */

    watchdog_stop();
    CHECK_EQ_INT(watchdog_pid(), 0);
    errno = 0;
    CHECK(waitpid(w, NULL, WNOHANG) < 0 && errno == ECHILD);   /* reaped */
    watchdog_track(NO_SUCH_PGID);    /* no-ops once stopped */
    watchdog_untrack(NO_SUCH_PGID);
    watchdog_stop();
    CHECK_EQ_INT(watchdog_pid(), 0);
}

/* The agent's reaper got the watchdog first: stop must neither hang nor
 * reap anything else. */
TEST(watchdog_stop_after_reaped_elsewhere)
{
    void (*old)(int) = signal(SIGPIPE, SIG_IGN);   /* as main.c does */
    REQUIRE_EQ_INT(watchdog_start(), 0);
    pid_t w = watchdog_pid();
    kill(w, SIGKILL);
    CHECK_EQ_INT(waitpid(w, NULL, 0), w);
    double t = now_ms();
    watchdog_stop();
    CHECK(now_ms() - t < 100);
    CHECK_EQ_INT(watchdog_pid(), 0);
    signal(SIGPIPE, old);
}

TEST(watchdog_kills_all_on_agent_sigkill)
{
    agent_dies(DIE_KILLED);
}

TEST(watchdog_kills_all_on_agent_exit)
{
    agent_dies(DIE_EXIT);
}

/* A clean stop kills nothing: every sleep outlives agent and watchdog. */
TEST(watchdog_clean_stop_kills_nothing)
{
    struct scenario sc = {.death = DIE_AFTER_STOP, .escapee = 1};
    struct run r;
    int ok = 1;

    run_start(&r, &sc);
    if (r.got_report) {
        ok &= CHECK_STR_EQ(r.rep.err, "");
        ok &= CHECK_EQ_INT(r.rep.after_stop, 0);
        /* The stop reaped the watchdog: once the agent is gone too,
         * nothing is left that could kill. */
        struct proc *w[] = {&r.agent, &r.watchdog};
        ok &= CHECK_EQ_INT(wait_gone(w, 2, now_ms() + 1000), 0);
        ok &= CHECK(alive(&r.leader));
        ok &= CHECK(alive(&r.member));
        ok &= CHECK(alive(&r.escapee));
        read_log(&r, now_ms() + 1000);
        ok &= CHECK(strstr(r.log, "killed") == NULL);
    } else {
        ok = FAIL("no report from the fake agent");
    }
    if (!ok)
        printf("     log:\n%s", r.log);
    run_cleanup(&r);
}

/* An untracked group is spared; the marked escapee still is not. */
TEST(watchdog_untrack_spares_group)
{
    struct scenario sc = {.death = DIE_EXIT, .escapee = 1, .untrack = 1};
    struct run r;
    int ok = 1;

    run_start(&r, &sc);
    if (r.got_report) {
        ok &= CHECK_STR_EQ(r.rep.err, "");
        /* The escapee is the leader's child: a zombie the leader, a
         * sleep, never reaps. */
        double deadline = r.t_death + 1000;
        while (alive(&r.escapee) && proc_state(r.escapee.pid) != 'Z' &&
               now_ms() < deadline)
            sleep_ms(5);
        ok &= CHECK(!alive(&r.escapee) || proc_state(r.escapee.pid) == 'Z');
        struct proc *w[] = {&r.agent, &r.watchdog};
        ok &= CHECK_EQ_INT(wait_gone(w, 2, now_ms() + 1000), 0);
        ok &= CHECK(alive(&r.leader));
        ok &= CHECK(alive(&r.member));
        read_log(&r, now_ms() + 1000);
        ok &= CHECK_CONTAINS(r.log, "killed 0 process group(s) and 1 marked");
    } else {
        ok = FAIL("no report from the fake agent");
    }
    if (!ok)
        printf("     log:\n%s", r.log);
    run_cleanup(&r);
}

/* Thousands of groups come and go around the real one; only it is left. */
TEST(watchdog_thousands_of_groups)
{
    struct scenario sc = {.death = DIE_EXIT, .churn = 1};
    struct run r;
    int ok = 1;

    run_start(&r, &sc);
    if (r.got_report) {
        ok &= CHECK_STR_EQ(r.rep.err, "");
        struct proc *victims[] = {&r.leader, &r.member};
        ok &= CHECK_EQ_INT(wait_gone(victims, 2, r.t_death + 1000), 0);
        ok &= CHECK(killed_by_sigkill(&r.leader));
        ok &= CHECK(killed_by_sigkill(&r.member));
        struct proc *w[] = {&r.agent, &r.watchdog};
        ok &= CHECK_EQ_INT(wait_gone(w, 2, now_ms() + 1000), 0);
        read_log(&r, now_ms() + 1000);
        ok &= CHECK_CONTAINS(r.log, "killed 1 process group(s) and 0 marked");
    } else {
        ok = FAIL("no report from the fake agent");
    }
    if (!ok)
        printf("     log:\n%s", r.log);
    run_cleanup(&r);
}

/* 200k records while the watchdog is stopped: no call blocks (the fake
 * agent would hang until its alarm), and the group tracked afterwards is
 * still killed. */
TEST(watchdog_full_pipe_never_blocks)
{
    struct scenario sc = {.death = DIE_EXIT, .flood = 100000};
    struct run r;
    int ok = 1;

    run_start(&r, &sc);
    if (r.got_report) {
        ok &= CHECK_STR_EQ(r.rep.err, "");
        timing("200k records to a stopped watchdog", r.rep.flood_ms);
        timing("slowest single call", r.rep.flood_max_ms);
        ok &= CHECK(r.rep.flood_max_ms < 250);
        struct proc *victims[] = {&r.leader, &r.member};
        ok &= CHECK_EQ_INT(wait_gone(victims, 2, r.t_death + 1000), 0);
        ok &= CHECK(killed_by_sigkill(&r.leader));
        struct proc *w[] = {&r.agent, &r.watchdog};
        ok &= CHECK_EQ_INT(wait_gone(w, 2, now_ms() + 1000), 0);
        read_log(&r, now_ms() + 1000);
        ok &= CHECK_CONTAINS(r.log, "not keeping up");
        ok &= CHECK_CONTAINS(r.log, "killed 1 process group(s) and 0 marked");
    } else {
        ok = FAIL("no report from the fake agent");
    }
    if (!ok)
        printf("     log:\n%s", r.log);
    run_cleanup(&r);
}

/* The watchdog is killed under the agent: the next record restarts it with
 * the whole set, and the agent's death still kills the group. */
TEST(watchdog_restarts_after_being_killed)
{
    struct scenario sc = {.death = DIE_EXIT, .kill_watchdog = 1};
    struct run r;
    int ok = 1;

    run_start(&r, &sc);
    if (r.got_report) {
        ok &= CHECK_STR_EQ(r.rep.err, "");
        struct proc *victims[] = {&r.leader, &r.member};
        ok &= CHECK_EQ_INT(wait_gone(victims, 2, r.t_death + 1000), 0);
        ok &= CHECK(killed_by_sigkill(&r.leader));
        struct proc *w[] = {&r.agent, &r.watchdog};
        ok &= CHECK_EQ_INT(wait_gone(w, 2, now_ms() + 1000), 0);
        read_log(&r, now_ms() + 1000);
        ok &= CHECK_CONTAINS(r.log, "is gone (Broken pipe); restarting it");
        ok &= CHECK_CONTAINS(r.log, "killed 1 process group(s)");
    } else {
        ok = FAIL("no report from the fake agent");
    }
    if (!ok)
        printf("     log:\n%s", r.log);
    run_cleanup(&r);
}
