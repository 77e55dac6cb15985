/* test_output.c - output sinks and pipe readers (output.c). */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

#include "pogo.h"

#include "unit.h"

/* Lines seen by the callback, kept for the checks. */
struct seen {
    int n;
    enum output_stream stream[64];
    char text[64][128];
    size_t len[64];
};

static void record(void *ud, enum output_stream stream, const char *text,
                   size_t len, double time)
{
    (void)time;
    struct seen *s = ud;
    if (s->n >= 64)
        return;
    s->stream[s->n] = stream;
    s->len[s->n] = len;
    memcpy(s->text[s->n], text, len < 127 ? len : 127);
    s->text[s->n][len < 127 ? len : 127] = '\0';
    s->n++;
}

static struct output *memory_sink(size_t ring, size_t max_line)
{
    struct output_opts o = {.ring = ring, .max_line = max_line};
    struct output *out = output_new(&o);
    REQUIRE(out != NULL);
    return out;
}

/* A fresh directory; path of a file in it into buf. */
static char *tmp_file(char *buf, size_t len, const char *name)
{
    char dir[] = "/tmp/pogo-unit-XXXXXX";
    REQUIRE(mkdtemp(dir) != NULL);
    snprintf(buf, len, "%s/%s", dir, name);
    return buf;
}

/* Removes the files of tmp_file's directory and the directory. */
static void tmp_clean(const char *path)
{
    char dir[PATH_MAX];
    snprintf(dir, sizeof dir, "%s", path);
    char *slash = strrchr(dir, '/');
    *slash = '\0';
    DIR *d = opendir(dir);
    if (d == NULL)
        return;
    struct dirent *e;
    while ((e = readdir(d)) != NULL) {
        if (e->d_name[0] == '.')
            continue;
        char f[PATH_MAX + 300];
        snprintf(f, sizeof f, "%s/%s", dir, e->d_name);
        unlink(f);
    }
    closedir(d);
    rmdir(dir);
}

static char *slurp(const char *path, size_t *len)
{
    static char buf[65536];
    int fd = open(path, O_RDONLY);
    if (fd < 0)
        return NULL;
    ssize_t n = read(fd, buf, sizeof buf - 1);
    close(fd);
    if (n < 0)
        return NULL;
    buf[n] = '\0';
    if (len)
        *len = (size_t)n;
    return buf;
}

static off_t file_size(const char *path)
{
    struct stat st;
    return stat(path, &st) == 0 ? st.st_size : -1;
}

static int count_char(const char *s, char c)
{
    int n = 0;
    for (; *s; s++)
        n += *s == c;
    return n;
}

TEST(output_format_time_is_rfc3339_utc_ms)
{
    char buf[32];
    output_format_time(0.5, buf);
    CHECK_STR_EQ(buf, "1970-01-01T00:00:00.500Z");
    output_format_time(1700000000.123, buf);
    CHECK_STR_EQ(buf, "2023-11-14T22:13:20.123Z");
    CHECK_EQ_INT(output_stream_parse("stderr"), OUTPUT_STDERR);
    CHECK_EQ_INT(output_stream_parse("pogo"), OUTPUT_POGO);
    CHECK_EQ_INT(output_stream_parse("nope"), -1);
}

TEST(output_lines_split_across_reads)
{
    struct output *o = memory_sink(10, 0);
    struct seen s = {0};
    struct output_reader r;
    output_on_line(o, record, &s);
    output_reader_init(&r, o, OUTPUT_STDOUT, -1);
    output_reader_feed(&r, "ab", 2, 1.0);
    CHECK_EQ_INT(s.n, 0);
    output_reader_feed(&r, "c\nde", 4, 1.0);
    output_reader_feed(&r, "f\n\ng", 4, 1.0);
    REQUIRE_EQ_INT(s.n, 3);
    CHECK_STR_EQ(s.text[0], "abc");
    CHECK_STR_EQ(s.text[1], "def");
    CHECK_STR_EQ(s.text[2], "");
    CHECK_EQ_INT(s.stream[0], OUTPUT_STDOUT);
    /* The tail without a newline comes out at end of stream. */
    output_reader_finish(&r, 1.0);
    REQUIRE_EQ_INT(s.n, 4);
    CHECK_STR_EQ(s.text[3], "g");
    output_reader_finish(&r, 1.0);      /* nothing more to give */
    CHECK_EQ_INT(s.n, 4);

    struct output_stats st;
    output_get_stats(o, &st);
    CHECK_EQ_INT(st.lines, 4);
    CHECK_EQ_INT(st.bytes, 7);
    CHECK_EQ_INT(st.truncated, 0);
    output_reader_close(NULL, &r);
    output_unref(o);
}

TEST(output_long_lines_are_cut_and_counted)
{
    struct output *o = memory_sink(10, 8);
    struct seen s = {0};
    struct output_reader r;
    output_on_line(o, record, &s);
    output_reader_init(&r, o, OUTPUT_STDERR, -1);
    /* Over-long in one read, then over-long across three reads. */
    output_reader_feed(&r, "0123456789abc\nxy\n", 17, 1.0);
    output_reader_feed(&r, "ABCD", 4, 1.0);
    output_reader_feed(&r, "EFGHIJ", 6, 1.0);
    output_reader_feed(&r, "KLM\nexactly8\n", 13, 1.0);
    REQUIRE_EQ_INT(s.n, 4);
    CHECK_STR_EQ(s.text[0], "01234567");
    CHECK_STR_EQ(s.text[1], "xy");
    CHECK_STR_EQ(s.text[2], "ABCDEFGH");
    CHECK_STR_EQ(s.text[3], "exactly8");     /* max_line itself is fine */
    struct output_stats st;
    output_get_stats(o, &st);
    CHECK_EQ_INT(st.truncated, 2);
    CHECK_EQ_INT(st.lines, 4);
    /* A cut line with no newline yet: the rest is dropped up to it. */
    output_reader_feed(&r, "123456789", 9, 1.0);
    output_reader_feed(&r, "zzz", 3, 1.0);
    output_reader_finish(&r, 1.0);
    REQUIRE_EQ_INT(s.n, 5);
    CHECK_STR_EQ(s.text[4], "12345678");
    output_reader_feed(&r, "next\n", 5, 1.0);
    REQUIRE_EQ_INT(s.n, 6);
    CHECK_STR_EQ(s.text[5], "next");
    output_reader_close(NULL, &r);
    output_unref(o);
}

TEST(output_final_partial_line_is_flushed_at_eof)
{
    struct output *o = memory_sink(10, 0);
    struct seen s = {0};
    struct output_reader r;
    int fds[2];
    output_on_line(o, record, &s);
    REQUIRE(pipe2(fds, O_CLOEXEC) == 0);
    REQUIRE(fcntl(fds[0], F_SETFL, O_NONBLOCK) == 0);
    output_reader_init(&r, o, OUTPUT_STDOUT, fds[0]);
    REQUIRE(write(fds[1], "one\ntwo", 7) == 7);
    CHECK_EQ_INT(output_reader_pump(&r, OUTPUT_READ_BUDGET, 2.0), 1);
    REQUIRE_EQ_INT(s.n, 1);
    CHECK_EQ_INT(output_reader_pump(&r, OUTPUT_READ_BUDGET, 2.0), 1); /* EAGAIN */
    close(fds[1]);
    CHECK_EQ_INT(output_reader_pump(&r, OUTPUT_READ_BUDGET, 2.0), 0); /* EOF */
    output_reader_finish(&r, 2.0);
    REQUIRE_EQ_INT(s.n, 2);
    CHECK_STR_EQ(s.text[1], "two");
    output_reader_close(NULL, &r);
    CHECK_EQ_INT(r.fd, -1);
    CHECK(!output_reader_open(&r));
    output_reader_close(NULL, &r);      /* twice is harmless */

    /* drain: what is in the pipe, then the tail, then closed. */
    REQUIRE(pipe2(fds, O_CLOEXEC) == 0);
    REQUIRE(fcntl(fds[0], F_SETFL, O_NONBLOCK) == 0);
    output_reader_init(&r, o, OUTPUT_STDERR, fds[0]);
    REQUIRE(write(fds[1], "a\nb\nc", 5) == 5);
    output_reader_drain(NULL, &r, 1 << 20);   /* writer still open: EAGAIN */
    REQUIRE_EQ_INT(s.n, 5);
    CHECK_STR_EQ(s.text[4], "c");
    CHECK_EQ_INT(s.stream[4], OUTPUT_STDERR);
    CHECK(!output_reader_open(&r));
    close(fds[1]);
    output_unref(o);
}

TEST(output_read_budget_bounds_one_wakeup)
{
    struct output *o = memory_sink(0, 0);
    struct output_reader r;
    int fds[2];
    REQUIRE(pipe2(fds, O_CLOEXEC) == 0);
    REQUIRE(fcntl(fds[0], F_SETFL, O_NONBLOCK) == 0);
    output_reader_init(&r, o, OUTPUT_STDOUT, fds[0]);
    char chunk[1000];
    memset(chunk, 'y', sizeof chunk);
    for (size_t i = 9; i < sizeof chunk; i += 10)
        chunk[i] = '\n';
    for (int i = 0; i < 30; i++)
        REQUIRE(write(fds[1], chunk, sizeof chunk) == (ssize_t)sizeof chunk);
    /* 30000 bytes queued, 10000 per call: three calls, 1000 lines each. */
    struct output_stats st;
    for (int i = 1; i <= 3; i++) {
        CHECK_EQ_INT(output_reader_pump(&r, 10000, 1.0), 1);
        output_get_stats(o, &st);
        CHECK_EQ_INT(st.lines, 1000 * i);
    }
    output_reader_close(NULL, &r);
    close(fds[1]);
    output_unref(o);
}

TEST(output_ring_keeps_the_last_lines_in_order)
{
    struct output *o = memory_sink(3, 0);
    double time;
    enum output_stream stream;
    const char *text = NULL;
    size_t len = 0;
    char line[32];
    CHECK_EQ_INT(output_ring_len(o), 0);
    CHECK_EQ_INT(output_ring_get(o, 0, &time, &stream, &text, &len), -1);
    for (int i = 1; i <= 5; i++) {
        snprintf(line, sizeof line, "line %d", i);
        output_line(o, i % 2 ? OUTPUT_STDOUT : OUTPUT_STDERR, line,
                    strlen(line), 0, (double)i);
    }
    REQUIRE_EQ_INT(output_ring_len(o), 3);
    for (int i = 0; i < 3; i++) {
        REQUIRE_EQ_INT(output_ring_get(o, (size_t)i, &time, &stream, &text, &len), 0);
        snprintf(line, sizeof line, "line %d", i + 3);
        CHECK_MEM_EQ(text, len, line, strlen(line));
        CHECK(time == (double)(i + 3));
        CHECK_EQ_INT(stream, (i + 3) % 2 ? OUTPUT_STDOUT : OUTPUT_STDERR);
    }
    CHECK_EQ_INT(output_ring_get(o, 3, &time, &stream, &text, &len), -1);
    output_unref(o);

    /* A ring that grows in steps and wraps several times. */
    o = memory_sink(40, 0);
    for (int i = 0; i < 137; i++) {
        snprintf(line, sizeof line, "%d", i);
        output_line(o, OUTPUT_POGO, line, strlen(line), 0, 0);
        size_t want = i + 1 < 40 ? (size_t)i + 1 : 40;
        CHECK_EQ_INT(output_ring_len(o), want);
    }
    for (int i = 0; i < 40; i++) {
        output_ring_get(o, (size_t)i, &time, &stream, &text, &len);
        snprintf(line, sizeof line, "%d", 97 + i);
        CHECK_MEM_EQ(text, len, line, strlen(line));
    }
    output_unref(o);

    /* No ring at all. */
    o = memory_sink(0, 0);
    output_line(o, OUTPUT_STDOUT, "x", 1, 0, 0);
    CHECK_EQ_INT(output_ring_len(o), 0);
    output_unref(o);
}

TEST(output_log_file_lines_are_timestamped)
{
    char path[PATH_MAX];
    tmp_file(path, sizeof path, "child.log");
    struct output_opts opts = {.path = path, .ring = 4};
    struct output *o = output_new(&opts);
    REQUIRE(o != NULL);
    output_line(o, OUTPUT_STDOUT, "hello world", 11, 0, 1700000000.5);
    output_line(o, OUTPUT_STDERR, "", 0, 0, 1700000000.75);
    output_line(o, OUTPUT_POGO, "started", 7, 0, 1700000001.0);
    CHECK_EQ_INT(file_size(path), 0);   /* buffered until the flush */
    output_flush(o);
    CHECK_STR_EQ(slurp(path, NULL),
                 "2023-11-14T22:13:20.500Z stdout hello world\n"
                 "2023-11-14T22:13:20.750Z stderr \n"
                 "2023-11-14T22:13:21.000Z pogo started\n");
    struct output_stats st;
    output_get_stats(o, &st);
    CHECK_EQ_INT(st.size, file_size(path));
    CHECK_EQ_INT(st.dropped, 0);
    /* Appends to what is there when reopened. */
    CHECK_EQ_INT(output_reopen(o), 0);
    output_line(o, OUTPUT_STDOUT, "again", 5, 0, 1700000002.0);
    output_flush(o);
    CHECK_EQ_INT(count_char(slurp(path, NULL), '\n'), 4);
    output_unref(o);

    /* A removed file is recreated by reopen. */
    unlink(path);
    opts.path = path;
    o = output_new(&opts);
    REQUIRE(o != NULL);
    unlink(path);
    CHECK_EQ_INT(output_reopen(o), 0);
    output_line(o, OUTPUT_STDOUT, "back", 4, 0, 0);
    output_flush(o);
    CHECK_CONTAINS(slurp(path, NULL), "stdout back\n");
    output_unref(o);
    tmp_clean(path);
}

TEST(output_rotation_by_size_keeps_n_files)
{
    char path[PATH_MAX], p1[PATH_MAX + 8], p2[PATH_MAX + 8], p3[PATH_MAX + 8];
    tmp_file(path, sizeof path, "r.log");
    snprintf(p1, sizeof p1, "%s.1", path);
    snprintf(p2, sizeof p2, "%s.2", path);
    snprintf(p3, sizeof p3, "%s.3", path);
    /* Each line is 24 + 1 + 6 + 1 + 8 + 1 = 41 bytes: two fit in 100. */
    struct output_opts opts = {.path = path, .max_size = 100, .max_files = 2};
    struct output *o = output_new(&opts);
    REQUIRE(o != NULL);
    char line[32];
    for (int i = 0; i < 9; i++) {
        snprintf(line, sizeof line, "line %03d", i);
        output_line(o, OUTPUT_STDOUT, line, 8, 0, 0);
    }
    output_flush(o);
    struct output_stats st;
    output_get_stats(o, &st);
    CHECK_EQ_INT(st.rotations, 4);
    CHECK_EQ_INT(file_size(path), 41);      /* line 008 */
    CHECK_EQ_INT(file_size(p1), 82);        /* lines 006, 007 */
    CHECK_EQ_INT(file_size(p2), 82);        /* lines 004, 005 */
    CHECK_EQ_INT(file_size(p3), -1);        /* the oldest fell off */
    CHECK_CONTAINS(slurp(path, NULL), "line 008");
    CHECK_CONTAINS(slurp(p1, NULL), "line 006");
    CHECK_CONTAINS(slurp(p2, NULL), "line 004");
    CHECK_EQ_INT(st.size, 41);
    output_unref(o);

    /* A file already over the limit rotates before the first new line. */
    int fd = open(path, O_WRONLY | O_TRUNC);
    REQUIRE(fd >= 0);
    char junk[150];
    memset(junk, 'j', sizeof junk);
    REQUIRE(write(fd, junk, sizeof junk) == (ssize_t)sizeof junk);
    close(fd);
    o = output_new(&opts);
    REQUIRE(o != NULL);
    output_line(o, OUTPUT_STDOUT, "line 100", 8, 0, 0);
    output_line(o, OUTPUT_STDOUT, "line 101", 8, 0, 0);
    output_line(o, OUTPUT_STDOUT, "line 102", 8, 0, 0);
    output_flush(o);
    CHECK_EQ_INT(file_size(path), 41);
    CHECK_CONTAINS(slurp(p1, NULL), "line 100");
    CHECK_CONTAINS(slurp(p1, NULL), "line 101");
    CHECK_EQ_INT(file_size(p2), 150);
    output_unref(o);

    /* max_files = 0: the file is truncated in place. */
    opts.max_files = 0;
    o = output_new(&opts);
    REQUIRE(o != NULL);
    for (int i = 0; i < 5; i++)
        output_line(o, OUTPUT_STDOUT, "line xyz", 8, 0, 0);
    output_flush(o);
    /* 41 + 41, cut, 41 + 41, cut, 41 + 41: never past 100, no path.N. */
    CHECK_EQ_INT(file_size(path), 82);
    output_get_stats(o, &st);
    CHECK_EQ_INT(st.rotations, 2);
    CHECK_EQ_INT(file_size(p2), 150);   /* untouched */
    output_unref(o);
    tmp_clean(path);
}

TEST(output_a_device_is_never_rotated)
{
    /* /dev/null as the path: rotation must not rename it. */
    struct output_opts opts = {.path = "/dev/null", .max_size = 10, .max_files = 2};
    struct output *o = output_new(&opts);
    REQUIRE(o != NULL);
    for (int i = 0; i < 10; i++)
        output_line(o, OUTPUT_STDOUT, "some text", 9, 0, 0);
    output_flush(o);
    struct output_stats st;
    output_get_stats(o, &st);
    CHECK_EQ_INT(st.rotations, 0);
    CHECK_EQ_INT(st.dropped, 0);
    CHECK_EQ_INT(file_size("/dev/null.1"), -1);
    output_unref(o);
}

/* The fd output_new opened for path, found through /proc/self/fd. */
static int fd_of(const char *path)
{
    DIR *d = opendir("/proc/self/fd");
    struct dirent *e;
    int found = -1;
    while (d && (e = readdir(d)) != NULL) {
        char link[300], target[PATH_MAX];
        snprintf(link, sizeof link, "/proc/self/fd/%s", e->d_name);
        ssize_t n = readlink(link, target, sizeof target - 1);
        if (n > 0) {
            target[n] = '\0';
            if (strcmp(target, path) == 0)
                found = atoi(e->d_name);
        }
    }
    if (d)
        closedir(d);
    return found;
}

TEST(output_failed_writes_drop_lines_and_count_them)
{
    enum log_level level = log_get_level();
    log_set_level(LOG_ERROR);           /* the drop warnings are expected */
    /* ENOSPC on every write. */
    struct output_opts opts = {.path = "/dev/full", .ring = 10};
    struct output *o = output_new(&opts);
    REQUIRE(o != NULL);
    struct seen s = {0};
    output_on_line(o, record, &s);
    for (int i = 0; i < 7; i++)
        output_line(o, OUTPUT_STDOUT, "lost", 4, 0, 0);
    output_flush(o);
    struct output_stats st;
    output_get_stats(o, &st);
    CHECK_EQ_INT(st.dropped, 7);
    CHECK_EQ_INT(st.lines, 7);
    CHECK_EQ_INT(s.n, 7);               /* callbacks and ring still get them */
    CHECK_EQ_INT(output_ring_len(o), 7);
    output_line(o, OUTPUT_STDOUT, "lost", 4, 0, 0);
    output_flush(o);
    output_get_stats(o, &st);
    CHECK_EQ_INT(st.dropped, 8);
    output_unref(o);

    /* A bad fd (EBADF): the sink's file replaced by a read-only one. */
    char path[PATH_MAX];
    tmp_file(path, sizeof path, "bad.log");
    opts.path = path;
    o = output_new(&opts);
    REQUIRE(o != NULL);
    int fd = fd_of(path);
    REQUIRE(fd >= 0);
    int ro = open("/dev/null", O_RDONLY | O_CLOEXEC);
    REQUIRE(ro >= 0);
    REQUIRE(dup2(ro, fd) == fd);
    close(ro);
    output_line(o, OUTPUT_STDERR, "x", 1, 0, 0);
    output_line(o, OUTPUT_STDERR, "y", 1, 0, 0);
    output_flush(o);
    output_get_stats(o, &st);
    CHECK_EQ_INT(st.dropped, 2);
    output_unref(o);
    tmp_clean(path);
    log_set_level(level);
}

TEST(output_short_write_keeps_whole_lines_only)
{
    char path[PATH_MAX];
    tmp_file(path, sizeof path, "short.log");
    struct output_opts opts = {.path = path};
    struct output *o = output_new(&opts);
    REQUIRE(o != NULL);
    /* The file may not grow past 100 bytes: a write crossing it is short,
     * the next fails with EFBIG (SIGXFSZ ignored for the test). */
    struct rlimit old, lim;
    enum log_level level = log_get_level();
    log_set_level(LOG_ERROR);           /* the drop warnings are expected */
    REQUIRE(getrlimit(RLIMIT_FSIZE, &old) == 0);
    lim = old;
    lim.rlim_cur = 100;
    void (*prev)(int) = signal(SIGXFSZ, SIG_IGN);
    REQUIRE(setrlimit(RLIMIT_FSIZE, &lim) == 0);
    for (int i = 0; i < 5; i++)          /* 41 bytes each */
        output_line(o, OUTPUT_STDOUT, "abcdefgh", 8, 0, 0);
    output_flush(o);
    setrlimit(RLIMIT_FSIZE, &old);
    signal(SIGXFSZ, prev);
    struct output_stats st;
    output_get_stats(o, &st);
    size_t len = 0;
    char *text = slurp(path, &len);
    REQUIRE(text != NULL);
    CHECK_EQ_INT(len, 82);              /* two whole lines, the cut one undone */
    CHECK_EQ_INT(text[len - 1], '\n');
    CHECK_EQ_INT(st.dropped, 3);
    CHECK_EQ_INT(st.size, 82);
    /* And the sink writes again once it can. */
    output_line(o, OUTPUT_STDOUT, "abcdefgh", 8, 0, 0);
    output_flush(o);
    CHECK_EQ_INT(file_size(path), 123);
    output_unref(o);
    tmp_clean(path);
    log_set_level(level);
}

/* A callback that adds a line of its own: no recursion. */
static void echo_back(void *ud, enum output_stream stream, const char *text,
                      size_t len, double time)
{
    struct output *o = ud;
    (void)stream;
    output_line(o, OUTPUT_POGO, text, len, 0, time);
}

TEST(output_callback_does_not_recurse)
{
    struct output *o = memory_sink(10, 0);
    output_on_line(o, echo_back, o);
    output_line(o, OUTPUT_STDOUT, "ping", 4, 0, 0);
    CHECK_EQ_INT(output_ring_len(o), 2);
    output_on_line(o, NULL, NULL);
    output_line(o, OUTPUT_STDOUT, "quiet", 5, 0, 0);
    CHECK_EQ_INT(output_ring_len(o), 3);
    output_unref(o);
}

/* A callback that closes the reader mid-read (a handle closed from Lua). */
static struct output_reader *closing_reader;
static int closing_calls;

static void close_reader(void *ud, enum output_stream stream,
                         const char *text, size_t len, double time)
{
    (void)ud; (void)stream; (void)text; (void)len; (void)time;
    closing_calls++;
    output_reader_close(NULL, closing_reader);
}

TEST(output_reader_closed_by_a_callback_stops)
{
    struct output *o = memory_sink(10, 0);
    struct output_reader r;
    output_reader_init(&r, o, OUTPUT_STDOUT, -1);
    closing_reader = &r;
    closing_calls = 0;
    output_on_line(o, close_reader, NULL);
    output_reader_feed(&r, "par", 3, 0);
    output_reader_feed(&r, "tial\nsecond\nthird\n", 18, 0);
    CHECK_EQ_INT(closing_calls, 1);
    CHECK(!output_reader_open(&r));
    CHECK(r.line == NULL);
    output_unref(o);
}

TEST(output_closed_sink_discards_and_outlives_its_readers)
{
    struct output *o = memory_sink(10, 0);
    struct output_reader r;
    output_reader_init(&r, o, OUTPUT_STDOUT, -1);
    /* The owner closes and drops it; the reader's reference keeps it. */
    output_close(o);
    CHECK(!output_is_open(o));
    output_unref(o);
    output_reader_feed(&r, "into the void\n", 14, 0);
    output_reader_close(NULL, &r);      /* last reference: freed (LSan) */
}
