/* recorder TAG OUT T0_US SCAN_MS - the chaos run's recorder.
 *
 * It logs every process whose argv[0] starts with "TAG-" (the children of
 * the run), one line of OUT each, written when the process is gone (or,
 * for those still running, when the recorder gets SIGTERM):
 *
 *   id node generation pid version start first last gone open exact
 *
 * id, node and generation come from the process's own POGO_CHILD_ID,
 * POGO_NODE and POGO_GENERATION, version from CHAOS_V (the spec edit it
 * runs). Times are ms since T0_US (µs since the epoch).
 *
 * Two sources. The kernel's process events (the netlink proc connector)
 * give the instants to the microsecond: start is the fork, first the exec
 * that gave it its name, last = gone the exit. A scan of /proc every SCAN_MS
 * catches whatever the events missed (no connector, a lost event): start is
 * then the fork from /proc/PID/stat (clock ticks: 10 ms steps), first and
 * last the first and last scan that saw it, gone the first scan that did
 * not (a zombie counts as gone: its cmdline is empty). exact = 1 when
 * start and gone both came from events. Either way the process certainly
 * ran during [first, last] and at most during [start, gone]; the checker
 * (tests/chaos/check) uses both. The last line, "# scans N gap_mean_ms X
 * gap_max_ms Y events E lost L", tells the resolution it got. */
#include <ctype.h>
#include <dirent.h>
#include <errno.h>
#include <linux/cn_proc.h>
#include <linux/connector.h>
#include <linux/netlink.h>
#include <poll.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define MAX_PROCS 4096
#define FORKS 65536              /* recent fork instants, by pid modulo */
#define GRACE_MS 1000            /* a scan's "gone" waits this for the exit event */

struct proc {
	int pid;
	unsigned long long ticks;   /* starttime: tells a reused pid apart */
	char id[160], node[80], gen[32], version[32];
	double start, first, last;
	double missing;             /* the first scan that did not see it, or 0 */
	int exact_start;            /* start is the fork event's instant */
	int seen;                   /* in the current scan */
};

static struct proc procs[MAX_PROCS];
static int nprocs;
static struct { int pid; double ms; } forks[FORKS];
static volatile sig_atomic_t ended;
static long long t0_us;
static double boot_ms;          /* the boot instant (CLOCK_BOOTTIME 0), ms since T0 */
static double mono_ms;          /* CLOCK_MONOTONIC 0, ms since T0 */
static long events, lost;
static int nl = -1;             /* the proc connector socket */
static FILE *out;
static char prefix[128];

static void on_term(int sig) { (void)sig; ended = 1; }

static double clock_ms(clockid_t id)
{
	struct timespec ts;
	clock_gettime(id, &ts);
	return ts.tv_sec * 1e3 + ts.tv_nsec / 1e6;
}

static double now_ms(void) { return clock_ms(CLOCK_REALTIME) - t0_us / 1e3; }

/* Reads /proc/PID/NAME into buf (NUL-terminated); the length or -1. */
static ssize_t slurp(int pid, const char *name, char *buf, size_t size)
{
	char path[64];
	snprintf(path, sizeof path, "/proc/%d/%s", pid, name);
	FILE *f = fopen(path, "re");
	if (!f) return -1;
	size_t n = fread(buf, 1, size - 1, f);
	fclose(f);
	buf[n] = 0;
	return (ssize_t)n;
}

/* The starttime field (22) of /proc/PID/stat, 0 if it is gone. */
static unsigned long long start_ticks(int pid)
{
	char buf[1024];
	if (slurp(pid, "stat", buf, sizeof buf) <= 0) return 0;
	char *p = strrchr(buf, ')');    /* comm may hold spaces */
	for (int field = 2; p && field < 22; field++) p = strchr(p + 1, ' ');
	return p ? strtoull(p + 1, NULL, 10) : 0;
}

/* Whether PID is a process of the run (its argv[0] starts with TAG-). */
static int ours(int pid)
{
	char cmd[256];
	size_t plen = strlen(prefix);
	return slurp(pid, "cmdline", cmd, sizeof cmd) >= (ssize_t)plen && strncmp(cmd, prefix, plen) == 0;
}

/* Copies the value of NAME= from an environ block, or dflt. */
static void env_get(const char *env, ssize_t n, const char *name, char *dst, size_t size, const char *dflt)
{
	size_t len = strlen(name);
	for (const char *p = env; p < env + n; p += strlen(p) + 1) {
		if (strncmp(p, name, len) == 0 && p[len] == '=') {
			snprintf(dst, size, "%s", p + len + 1);
			return;
		}
	}
	snprintf(dst, size, "%s", dflt);
}

static struct proc *find(int pid)
{
	for (int i = 0; i < nprocs; i++)
		if (procs[i].pid == pid) return &procs[i];
	return NULL;
}

/* Writes p's line and forgets it. */
static void emit(struct proc *p, double last, double gone, int open, int exact_stop)
{
	fprintf(out, "%s %s %s %d %s %.3f %.3f %.3f %.3f %d %d\n", p->id, p->node, p->gen,
		p->pid, p->version, p->start, p->first, last, gone, open, p->exact_start && exact_stop);
	fflush(out);
	*p = procs[--nprocs];
}

/* Takes fork_ms (the fork event's instant, < 0 if none) as p's start if
 * it is this process's fork: /proc/PID/stat says the same to a tick. A pid
 * is reused quickly on a busy machine, so a fork or exec event may be an
 * older process's. */
static void exact_fork(struct proc *p, double fork_ms)
{
	double stat_ms = p->exact_start ? -1 : p->start;
	if (p->exact_start || fork_ms < stat_ms - 1 || fork_ms > stat_ms + 1e3 / sysconf(_SC_CLK_TCK) + 5)
		return;
	p->start = fork_ms;
	p->exact_start = 1;
}

/* A new process of the run, seen at t: what it is, from its own /proc.
 * fork_ms: its fork instant from the events, or < 0. */
static struct proc *add(int pid, unsigned long long ticks, double t, double fork_ms)
{
	static char env[65536];
	if (nprocs == MAX_PROCS) return NULL;
	ssize_t n = slurp(pid, "environ", env, sizeof env);
	if (n < 0) return NULL;
	struct proc *p = &procs[nprocs++];
	memset(p, 0, sizeof *p);
	p->pid = pid;
	p->ticks = ticks;
	env_get(env, n, "POGO_CHILD_ID", p->id, sizeof p->id, "?");
	env_get(env, n, "POGO_NODE", p->node, sizeof p->node, "?");
	env_get(env, n, "POGO_GENERATION", p->gen, sizeof p->gen, "?");
	env_get(env, n, "CHAOS_V", p->version, sizeof p->version, "0");
	p->start = boot_ms + ticks * 1e3 / sysconf(_SC_CLK_TCK);
	p->first = p->last = t;
	exact_fork(p, fork_ms);
	p->seen = 1;
	return p;
}

/* ---- the kernel's process events ---- */

static int events_open(void)
{
	int s = socket(PF_NETLINK, SOCK_DGRAM | SOCK_CLOEXEC, NETLINK_CONNECTOR);
	if (s < 0) return -1;
	int size = 8 << 20;         /* a busy machine forks a lot */
	setsockopt(s, SOL_SOCKET, SO_RCVBUFFORCE, &size, sizeof size);
	struct sockaddr_nl a = { .nl_family = AF_NETLINK, .nl_groups = CN_IDX_PROC };
	struct {
		struct nlmsghdr nl;
		struct cn_msg cn;
		enum proc_cn_mcast_op op;
	} __attribute__((packed)) m;
	memset(&m, 0, sizeof m);
	m.nl.nlmsg_len = sizeof m;
	m.nl.nlmsg_type = NLMSG_DONE;
	m.cn.id.idx = CN_IDX_PROC;
	m.cn.id.val = CN_VAL_PROC;
	m.cn.len = sizeof m.op;
	m.op = PROC_CN_MCAST_LISTEN;
	if (bind(s, (struct sockaddr *)&a, sizeof a) < 0 || send(s, &m, sizeof m, 0) < 0) {
		close(s);
		return -1;
	}
	return s;
}

static void on_event(const struct proc_event *ev)
{
	double t = mono_ms + ev->timestamp_ns / 1e6;
	struct proc *p;
	events++;
	switch (ev->what) {
	case PROC_EVENT_FORK:
		if (ev->event_data.fork.child_pid != ev->event_data.fork.child_tgid) break;   /* a thread */
		forks[ev->event_data.fork.child_pid % FORKS].pid = ev->event_data.fork.child_pid;
		forks[ev->event_data.fork.child_pid % FORKS].ms = t;
		break;
	case PROC_EVENT_EXEC: {
		int pid = ev->event_data.exec.process_tgid;
		if (!ours(pid)) break;
		double fork_ms = forks[pid % FORKS].pid == pid ? forks[pid % FORKS].ms : -1;
		if ((p = find(pid))) {          /* a scan saw it first: the exact instants win */
			exact_fork(p, fork_ms);
			if (t < p->first && t >= p->start) p->first = t;
		} else {
			add(pid, start_ticks(pid), t, fork_ms);
		}
		break;
	}
	case PROC_EVENT_EXIT:
		if (ev->event_data.exit.process_pid != ev->event_data.exit.process_tgid) break;
		/* an exit before the process was seen is an older one's */
		if ((p = find(ev->event_data.exit.process_tgid)) && t >= p->first - 1) emit(p, t, t, 0, 1);
		break;
	default:
		break;
	}
}

/* Reads the queued events until there are none or it is time (ms since
 * T0) for the next scan: a flood of events must not starve the scans. */
static void events_read(double until)
{
	static char buf[1 << 16] __attribute__((aligned(NLMSG_ALIGNTO)));
	struct pollfd pfd = { nl, POLLIN, 0 };
	double wait = until - now_ms();
	if (poll(&pfd, 1, wait > 0 ? (int)wait + 1 : 0) <= 0) return;
	while (now_ms() < until) {
		ssize_t n = recv(nl, buf, sizeof buf, MSG_DONTWAIT);
		if (n < 0) {
			if (errno == ENOBUFS) { lost++; continue; }    /* the scan covers it */
			return;
		}
		for (struct nlmsghdr *h = (struct nlmsghdr *)buf; NLMSG_OK(h, (size_t)n); h = NLMSG_NEXT(h, n)) {
			struct cn_msg *cn = NLMSG_DATA(h);
			if (cn->id.idx == CN_IDX_PROC && cn->id.val == CN_VAL_PROC)
				on_event((const struct proc_event *)cn->data);
		}
	}
}

/* ---- the scan ---- */

/* final: the last scan, which waits for no exit event. */
static void scan(int final)
{
	for (int i = 0; i < nprocs; i++) procs[i].seen = 0;
	DIR *d = opendir("/proc");
	if (!d) return;
	struct dirent *e;
	while ((e = readdir(d))) {
		if (!isdigit((unsigned char)e->d_name[0])) continue;
		int pid = atoi(e->d_name);
		if (!ours(pid)) continue;
		unsigned long long ticks = start_ticks(pid);
		if (!ticks) continue;
		double t = now_ms();
		struct proc *p = find(pid);
		if (p && p->ticks != ticks) { emit(p, p->last, t, 0, 0); p = NULL; }   /* a reused pid */
		if (p) {
			p->last = t;
			p->seen = 1;
			p->missing = 0;
		} else {
			add(pid, ticks, t, -1);
		}
	}
	closedir(d);
	/* gone without an exit event: wait a little for it (the exit event
	 * comes after the cmdline is emptied), then count the scan's instant */
	double t = now_ms();
	for (int i = 0; i < nprocs; i++) {
		struct proc *p = &procs[i];
		if (p->seen) continue;
		if (!p->missing) p->missing = t;
		if (nl < 0 || final || t - p->missing > GRACE_MS) { emit(p, p->last, p->missing, 0, 0); i--; }
	}
}

int main(int argc, char **argv)
{
	if (argc != 5) {
		fprintf(stderr, "usage: recorder TAG OUT T0_US SCAN_MS\n");
		return 2;
	}
	snprintf(prefix, sizeof prefix, "%s-", argv[1]);
	out = fopen(argv[2], "we");
	if (!out) { perror(argv[2]); return 1; }
	t0_us = atoll(argv[3]);
	long interval = atol(argv[4]);
	boot_ms = now_ms() - clock_ms(CLOCK_BOOTTIME);
	mono_ms = now_ms() - clock_ms(CLOCK_MONOTONIC);
	signal(SIGTERM, on_term);
	signal(SIGINT, on_term);
	nl = events_open();
	if (nl < 0) fprintf(stderr, "recorder: no process events (%s), scans only\n", strerror(errno));
	long scans = 0;
	double prev = now_ms(), gap_max = 0, gap_sum = 0, next = prev;
	while (!ended) {
		double t = now_ms();
		if (t >= next) {
			scan(0);
			if (scans++) {
				gap_sum += t - prev;
				if (t - prev > gap_max) gap_max = t - prev;
			}
			prev = t;
			next = t + interval;
		}
		if (nl >= 0) {
			events_read(next);
		} else {
			struct timespec nap = { interval / 1000, (interval % 1000) * 1000000L };
			nanosleep(&nap, NULL);
		}
	}
	/* what is still there is open: last is its last sighting (a starved
	 * recorder must not stretch a process to the end) */
	if (nl >= 0) events_read(now_ms() + 100);
	scan(1);
	double t = now_ms();
	while (nprocs) emit(&procs[0], procs[0].last, t, 1, 0);
	fprintf(out, "# scans %ld gap_mean_ms %.1f gap_max_ms %.1f events %ld lost %ld\n", scans,
		scans > 1 ? gap_sum / (scans - 1) : 0, gap_max, events, lost);
	fclose(out);
	return 0;
}
