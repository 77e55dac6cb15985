/* probe: watches real processes for bench/supervisors.sh, by /proc only.
 *
 * A "marker" process is one whose argv is exactly { ".../sleep", MARKER }:
 * each supervisor runs `sleep <its own duration>`, so counting markers counts
 * the children really running (after exec), whatever the supervisor reports.
 *
 *   probe count MARKER                  live markers (zombies excluded)
 *   probe up N MARKER TIMEOUT T0        poll until >= N markers run; print the
 *                                       seconds since T0 (bash $EPOCHREALTIME)
 *   probe down MARKER TIMEOUT -- CMD... snapshot the markers, run CMD, poll
 *                                       until every one of them is gone; print
 *                                       seconds from CMD's launch
 *   probe kill MARKER K GAP_MS TIMEOUT  K times: SIGKILL one marker (never the
 *                                       same one twice) and time until a new
 *                                       marker runs; print microseconds, one a
 *                                       line ("timeout" if none came)
 *   probe snap ROOTPID MARKER           "pid starttime" of ROOTPID's process
 *                                       tree plus every marker, for cleanup
 *   probe reap FILE                     SIGKILL each listed pid still having
 *                                       the listed start time (never a reused
 *                                       pid); print how many were running
 *   probe sweep DIR                     SIGKILL every process whose working
 *                                       directory is inside DIR (our temp
 *                                       dir); print how many were running
 *   probe incwd DIR                     how many processes run inside DIR
 *   probe tree ROOTPID [MARKER]         pids of ROOTPID's tree, markers left out
 *   probe mem PID...                    sum of VmRSS and of Pss, in KiB
 *   probe cpu PID...                    sum of utime+stime, in clock ticks
 *   probe wake PID...                   sum of context switches (wake-ups)
 *   probe spawn N MARKER                the floor: posix_spawn N markers in a
 *                                       loop, print the seconds until all run,
 *                                       then kill and reap them
 *
 * Polling: `up` rescans /proc every 0.5 ms (a pid once seen as a marker is
 * not re-read); `down` re-reads only the snapshot's pids; `kill` reads only
 * the pids created since the kill (from /proc/sys/kernel/ns_last_pid), every
 * 50 us, so the latency is measured to well under a millisecond while the
 * prober leaves the supervisor a core of its own.
 */
#define _GNU_SOURCE
#include <ctype.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static const char *marker;

static double now_mono(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return ts.tv_sec + ts.tv_nsec / 1e9;
}

static double now_real(void) {
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  return ts.tv_sec + ts.tv_nsec / 1e9;
}

static void nap_us(long us) {
  struct timespec ts = { us / 1000000, (us % 1000000) * 1000 };
  nanosleep(&ts, NULL);
}

static ssize_t read_file(const char *path, char *buf, size_t n) {
  int fd = open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0) return -1;
  ssize_t r = read(fd, buf, n - 1);
  close(fd);
  if (r < 0) return -1;
  buf[r] = 0;
  return r;
}

/* 1 marker, 0 not (or a zombie: empty cmdline), -1 gone */
static int is_marker(int pid) {
  char path[64], buf[256];
  snprintf(path, sizeof path, "/proc/%d/cmdline", pid);
  ssize_t n = read_file(path, buf, sizeof buf);
  if (n < 0) return -1;
  if (n == 0) return 0;
  const char *a0 = buf;
  size_t l0 = strlen(a0);
  if ((ssize_t)l0 + 1 >= n) return 0;
  const char *a1 = a0 + l0 + 1;
  size_t l1 = strlen(a1);
  if ((ssize_t)(l0 + 1 + l1 + 1) != n) return 0; /* exactly two args */
  const char *base = strrchr(a0, '/');
  base = base ? base + 1 : a0;
  return strcmp(base, "sleep") == 0 && strcmp(a1, marker) == 0;
}

/* ppid and start time (field 22) from /proc/PID/stat; 0 on success */
static int stat_of(int pid, int *ppid, unsigned long long *start, char *state,
                   unsigned long long *cpu) {
  char path[64], buf[1024];
  snprintf(path, sizeof path, "/proc/%d/stat", pid);
  if (read_file(path, buf, sizeof buf) < 0) return -1;
  char *p = strrchr(buf, ')');
  if (!p) return -1;
  p += 2; /* state */
  char st = *p;
  unsigned long long f[20] = { 0 };
  /* fields after state: 4 ppid ... 14 utime 15 stime ... 22 starttime */
  int i = 0;
  char *s = p + 1;
  while (i < 20 && *s) {
    while (*s == ' ') s++;
    f[i++] = strtoull(s, &s, 10);
  }
  if (ppid) *ppid = (int)f[0];
  if (cpu) *cpu = f[10] + f[11];
  if (start) *start = f[18];
  if (state) *state = st;
  return 0;
}

/* ---- pid lists ---- */
typedef struct { int *v; size_t n, cap; } ivec;
static void push(ivec *a, int x) {
  if (a->n == a->cap) {
    a->cap = a->cap ? a->cap * 2 : 256;
    a->v = realloc(a->v, a->cap * sizeof *a->v);
    if (!a->v) { perror("realloc"); exit(2); }
  }
  a->v[a->n++] = x;
}

static void all_pids(ivec *out) {
  out->n = 0;
  DIR *d = opendir("/proc");
  if (!d) { perror("/proc"); exit(2); }
  struct dirent *e;
  while ((e = readdir(d)))
    if (isdigit((unsigned char)e->d_name[0])) push(out, atoi(e->d_name));
  closedir(d);
}

static void markers(ivec *out) {
  ivec all = { 0 };
  all_pids(&all);
  out->n = 0;
  for (size_t i = 0; i < all.n; i++)
    if (is_marker(all.v[i]) == 1) push(out, all.v[i]);
  free(all.v);
}

/* descendants of root (including root), optionally without markers */
static void tree(int root, ivec *out, int skip_markers) {
  ivec all = { 0 };
  all_pids(&all);
  int *pp = calloc(all.n + 1, sizeof *pp);
  for (size_t i = 0; i < all.n; i++)
    if (stat_of(all.v[i], &pp[i], NULL, NULL, NULL) < 0) pp[i] = -1;
  out->n = 0;
  push(out, root);
  for (size_t k = 0; k < out->n; k++)
    for (size_t i = 0; i < all.n; i++)
      if (pp[i] == out->v[k]) push(out, all.v[i]);
  if (skip_markers) {
    size_t j = 0;
    for (size_t k = 0; k < out->n; k++)
      if (is_marker(out->v[k]) != 1) out->v[j++] = out->v[k];
    out->n = j;
  }
  free(pp);
  free(all.v);
}

/* ---- up: count markers until n ---- */
static int cmd_up(int n, double timeout, double t0) {
  /* state per pid: 0 unknown/not marker, 1 marker (cached) */
  size_t cap = 1 << 22;
  unsigned char *seen = calloc(cap, 1);
  unsigned *recheck = calloc(cap, sizeof *recheck);
  ivec all = { 0 };
  double deadline = now_mono() + timeout;
  int count = 0;
  unsigned pass = 0;
  for (;;) {
    pass++;
    all_pids(&all);
    count = 0;
    for (size_t i = 0; i < all.n; i++) {
      int pid = all.v[i];
      if ((size_t)pid >= cap) continue;
      if (seen[pid] == 1) { count++; continue; }
      /* a pid seen as not-a-marker may exec later: re-read it each pass
         for its first 400 passes (~0.2 s+), then every 16th */
      if (recheck[pid] == 0) recheck[pid] = pass;
      if (pass - recheck[pid] > 400 && pass % 16) continue;
      if (is_marker(pid) == 1) { seen[pid] = 1; count++; }
    }
    if (count >= n) break;
    if (now_mono() > deadline) {
      fprintf(stderr, "probe up: timeout with %d of %d running\n", count, n);
      printf("timeout\n");
      return 1;
    }
    nap_us(500);
  }
  printf("%.4f\n", now_real() - t0);
  return 0;
}

/* ---- down: snapshot, run cmd, poll until all gone ---- */
static int cmd_down(double timeout, char **argv) {
  ivec m = { 0 };
  markers(&m);
  double t0 = now_mono();
  pid_t c = fork();
  if (c == 0) {
    int nul = open("/dev/null", O_RDWR);
    if (nul >= 0) { dup2(nul, 1); dup2(nul, 2); }
    execvp(argv[0], argv);
    perror(argv[0]);
    _exit(127);
  }
  double deadline = t0 + timeout;
  size_t left = m.n;
  while (left) {
    size_t j = 0;
    for (size_t i = 0; i < left; i++)
      if (is_marker(m.v[i]) == 1) m.v[j++] = m.v[i];
    left = j;
    if (!left) break;
    if (now_mono() > deadline) {
      fprintf(stderr, "probe down: timeout with %zu still running\n", left);
      printf("timeout\n");
      waitpid(c, NULL, 0);
      return 1;
    }
    nap_us(200);
  }
  printf("%.4f\n", now_mono() - t0);
  int st;
  waitpid(c, &st, 0);
  return 0;
}

/* ---- kill: SIGKILL a marker, time until a new marker runs ---- */
static int read_last_pid(void) {
  char buf[32];
  if (read_file("/proc/sys/kernel/ns_last_pid", buf, sizeof buf) < 0) return -1;
  return atoi(buf);
}

static int cmd_kill(int k, int gap_ms, double timeout) {
  char buf[32];
  int pid_max = 32768;
  if (read_file("/proc/sys/kernel/pid_max", buf, sizeof buf) > 0) pid_max = atoi(buf);
  ivec killed = { 0 }, m = { 0 }, pending = { 0 }, born = { 0 }, since = { 0 };
  srand((unsigned)getpid());
  for (int round = 0; round < k; round++) {
    markers(&m);
    /* a victim not killed before */
    int victim = -1;
    for (int tries = 0; tries < 1000 && victim < 0 && m.n; tries++) {
      int cand = m.v[rand() % m.n];
      int dup = 0;
      for (size_t i = 0; i < killed.n; i++) dup |= killed.v[i] == cand;
      if (!dup) victim = cand;
    }
    if (victim < 0) { fprintf(stderr, "probe kill: no marker to kill\n"); return 1; }
    push(&killed, victim);
    int last = read_last_pid();
    pending.n = born.n = since.n = 0;
    double t0 = now_mono();
    kill(victim, SIGKILL);
    double deadline = t0 + timeout;
    int found = 0, newpid = 0;
    while (!found) {
      int cur = read_last_pid();
      if (cur != last) {
        /* new pids last+1 .. cur (with wrap-around) */
        int p = last;
        while (p != cur) {
          p = p + 1 >= pid_max ? 300 : p + 1;
          int r = is_marker(p);
          if (r == 1) { found = 1; newpid = p; break; }
          /* r < 0 too: a pid is allocated before its process shows up */
          push(&pending, p);
          push(&born, r == 0);
          push(&since, (int)((now_mono() - t0) * 1e6));
        }
        last = cur;
      }
      /* forked children that had not exec'd yet */
      for (size_t i = 0; i < pending.n && !found; i++) {
        int r = is_marker(pending.v[i]);
        if (r == 1) { found = 1; newpid = pending.v[i]; }
        else if (r == 0) born.v[i] = 1;
        else if (born.v[i] || (now_mono() - t0) * 1e6 - since.v[i] > 100000) {
          /* gone (or never came within 100 ms): forget it */
          pending.n--; born.n--; since.n--;
          pending.v[i] = pending.v[pending.n];
          born.v[i] = born.v[born.n];
          since.v[i] = since.v[since.n];
          i--;
        }
      }
      if (found) break;
      if (now_mono() > deadline) break;
      nap_us(50);
    }
    /* the replacement is young: never pick it as a later victim (supervisors
       throttle a child that dies soon after its start) */
    if (found) push(&killed, newpid);
    if (found) printf("%.0f\n", (now_mono() - t0) * 1e6);
    else printf("timeout\n");
    fflush(stdout);
    nap_us(gap_ms * 1000L);
  }
  return 0;
}

extern char **environ;

static int cmd_spawn(int n) {
  char *argv[] = { "sleep", (char *)marker, NULL };
  pid_t *pids = calloc(n, sizeof *pids);
  double t0 = now_mono();
  for (int i = 0; i < n; i++)
    if (posix_spawnp(&pids[i], "sleep", NULL, NULL, argv, environ) != 0) pids[i] = 0;
  for (int i = 0; i < n; i++)
    while (pids[i] > 0 && is_marker(pids[i]) != 1) nap_us(100);
  printf("%.4f\n", now_mono() - t0);
  for (int i = 0; i < n; i++)
    if (pids[i] > 0) kill(pids[i], SIGKILL);
  for (int i = 0; i < n; i++)
    if (pids[i] > 0) waitpid(pids[i], NULL, 0);
  return 0;
}

static int cmd_snap(int root) {
  ivec t = { 0 }, m = { 0 };
  if (root > 0) tree(root, &t, 0);
  markers(&m);
  for (size_t i = 0; i < m.n; i++) push(&t, m.v[i]);
  for (size_t i = 0; i < t.n; i++) {
    unsigned long long st;
    if (stat_of(t.v[i], NULL, &st, NULL, NULL) == 0) printf("%d %llu\n", t.v[i], st);
  }
  return 0;
}

static int cmd_sweep(const char *dir, int dry) {
  ivec all = { 0 };
  all_pids(&all);
  size_t l = strlen(dir);
  int n = 0, self = getpid();
  if (l < 8 || dir[0] != '/') { fprintf(stderr, "probe sweep: refusing %s\n", dir); return 2; }
  for (size_t i = 0; i < all.n; i++) {
    char path[64], cwd[4096];
    int pid = all.v[i];
    if (pid == self) continue;
    snprintf(path, sizeof path, "/proc/%d/cwd", pid);
    ssize_t r = readlink(path, cwd, sizeof cwd - 1);
    if (r < 0) continue;
    cwd[r] = 0;
    if (strncmp(cwd, dir, l) || (cwd[l] && cwd[l] != '/' && cwd[l] != ' ')) continue;
    char st = 0;
    stat_of(pid, NULL, NULL, &st, NULL);
    if (!dry) kill(pid, SIGKILL);
    if (st != 'Z') n++;
  }
  printf("%d\n", n);
  return 0;
}

static int cmd_reap(const char *file) {
  FILE *f = fopen(file, "r");
  if (!f) return 0;
  int pid;
  unsigned long long st, cur;
  char state;
  int n = 0;
  while (fscanf(f, "%d %llu", &pid, &st) == 2)
    if (pid > 1 && stat_of(pid, NULL, &cur, &state, NULL) == 0 && cur == st) {
      kill(pid, SIGKILL);
      if (state != 'Z') n++; /* a zombie waits for its parent, it runs nothing */
    }
  fclose(f);
  printf("%d\n", n);
  return 0;
}

int main(int argc, char **argv) {
  if (argc < 2) goto usage;
  const char *c = argv[1];
  if (!strcmp(c, "count") && argc == 3) {
    marker = argv[2];
    ivec m = { 0 };
    markers(&m);
    printf("%zu\n", m.n);
    return 0;
  }
  if (!strcmp(c, "up") && argc == 6) {
    marker = argv[3];
    return cmd_up(atoi(argv[2]), atof(argv[4]), atof(argv[5]));
  }
  if (!strcmp(c, "down") && argc >= 6 && !strcmp(argv[4], "--")) {
    marker = argv[2];
    return cmd_down(atof(argv[3]), argv + 5);
  }
  if (!strcmp(c, "kill") && argc == 6) {
    marker = argv[2];
    return cmd_kill(atoi(argv[3]), atoi(argv[4]), atof(argv[5]));
  }
  if (!strcmp(c, "snap") && argc == 4) {
    marker = argv[3];
    return cmd_snap(atoi(argv[2]));
  }
  if (!strcmp(c, "spawn") && argc == 4) {
    marker = argv[3];
    return cmd_spawn(atoi(argv[2]));
  }
  if (!strcmp(c, "sweep") && argc == 3) return cmd_sweep(argv[2], 0);
  if (!strcmp(c, "incwd") && argc == 3) return cmd_sweep(argv[2], 1);
  if (!strcmp(c, "reap") && argc == 3) return cmd_reap(argv[2]);
  if (!strcmp(c, "tree") && (argc == 3 || argc == 4)) {
    marker = argc == 4 ? argv[3] : "\x01";
    ivec t = { 0 };
    tree(atoi(argv[2]), &t, argc == 4);
    for (size_t i = 0; i < t.n; i++) printf("%d\n", t.v[i]);
    return 0;
  }
  if (!strcmp(c, "mem") && argc >= 3) {
    long rss = 0, pss = 0;
    for (int i = 2; i < argc; i++) {
      char path[64], buf[4096], *p;
      snprintf(path, sizeof path, "/proc/%s/status", argv[i]);
      if (read_file(path, buf, sizeof buf) > 0 && (p = strstr(buf, "VmRSS:")))
        rss += strtol(p + 6, NULL, 10);
      snprintf(path, sizeof path, "/proc/%s/smaps_rollup", argv[i]);
      if (read_file(path, buf, sizeof buf) > 0 && (p = strstr(buf, "\nPss:")))
        pss += strtol(p + 5, NULL, 10);
    }
    printf("%ld %ld\n", rss, pss);
    return 0;
  }
  if (!strcmp(c, "wake") && argc >= 3) {
    long sum = 0;
    for (int i = 2; i < argc; i++) {
      char path[64], buf[4096], *p;
      snprintf(path, sizeof path, "/proc/%s/status", argv[i]);
      if (read_file(path, buf, sizeof buf) <= 0) continue;
      if ((p = strstr(buf, "\nvoluntary_ctxt_switches:"))) sum += strtol(p + 26, NULL, 10);
      if ((p = strstr(buf, "\nnonvoluntary_ctxt_switches:"))) sum += strtol(p + 29, NULL, 10);
    }
    printf("%ld\n", sum);
    return 0;
  }
  if (!strcmp(c, "cpu") && argc >= 3) {
    unsigned long long sum = 0, t;
    for (int i = 2; i < argc; i++)
      if (stat_of(atoi(argv[i]), NULL, NULL, NULL, &t) == 0) sum += t;
    printf("%llu\n", sum);
    return 0;
  }
usage:
  fprintf(stderr, "usage: probe count|up|down|kill|snap|reap|sweep|incwd|tree|mem|cpu|wake|spawn ...\n");
  return 2;
}
