/*
 * output.c - child output capture: pipe readers split bytes into lines; a
 * sink per child id timestamps each line into a size-rotated log file and
 * keeps the last N lines in memory.
 *
 * The loop must never wait for a child or for the disk: pipes are read
 * non-blocking with a per-wakeup budget, and the log file is written once
 * per wakeup from a buffer. A write that fails drops the lines it could not
 * complete and counts them; nothing is retried, so a full disk costs lines,
 * never the agent's responsiveness.
 */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "pogo.h"


#define FLUSH_AT (64u << 10)      /* write the file buffer once it holds this */

struct ring_slot {
    double time;
    char *text;                   /* owned; reused when the slot is overwritten */
    uint32_t len, cap;
    uint8_t stream;
};

struct output {
    int refs;
    int open;                     /* 0 after output_close */
    int fd;                       /* the log file, -1 if none */
    int regular;                  /* fd is a regular file: we may rotate it */
    char *path;                   /* owned; NULL: memory only */
    uint64_t max_size;
    unsigned max_files;
    size_t max_line;

    struct buf pending;           /* formatted lines not yet written */
    size_t pending_lines;

    struct ring_slot *slots;      /* oldest at head once full; owned */
    size_t cap, count, head, ring_max;

    struct output_stats st;       /* size and ring are filled on demand */
    uint64_t size;                /* bytes in the current file */
    int dropping;                 /* a drop was reported; no more until a
                                   * write succeeds again */
    uint64_t burst_dropped;

    output_line_fn *on_line;
    void *ud;
    int in_callback;

    time_t stamp_sec;             /* cache of the formatted second */
    char stamp[32];
};

static const char *const stream_names[] = {"stdout", "stderr", "pogo"};

const char *output_stream_name(enum output_stream s)
{
    return stream_names[s];
}

int output_stream_parse(const char *name)
{
    for (int i = OUTPUT_STDOUT; i <= OUTPUT_POGO; i++)
        if (strcmp(name, stream_names[i]) == 0)
            return i;
    return -1;
}

/* Epoch seconds to whole seconds and milliseconds, rounded to the nearest
 * millisecond (a double such as 1700000000.123 is a hair below .123). */
static void split_ms(double t, time_t *sec, int *ms)
{
    long long total = llround(t * 1000);
    *sec = (time_t)(total / 1000);
    *ms = (int)(total % 1000);
    if (*ms < 0) {
        *ms += 1000;
        (*sec)--;
    }
}

void output_format_time(double t, char *out)
{
    time_t s;
    int ms;
    split_ms(t, &s, &ms);
    struct tm tm;
    gmtime_r(&s, &tm);
    size_t n = strftime(out, 24, "%Y-%m-%dT%H:%M:%S", &tm);
    snprintf(out + n, 32 - n, ".%03dZ", ms);
}

/* The same, with the second formatted once per second per sink: a flood
 * of lines costs one strftime per second, not one per line. */
static const char *stamp(struct output *o, double t)
{
    time_t sec;
    int ms;
    split_ms(t, &sec, &ms);
    if (sec != o->stamp_sec || o->stamp[0] == '\0') {
        output_format_time((double)sec, o->stamp);
        o->stamp_sec = sec;
    }
    /* "YYYY-MM-DDTHH:MM:SS." is 20 bytes; patch the milliseconds in. */
    o->stamp[20] = (char)('0' + ms / 100);
    o->stamp[21] = (char)('0' + ms / 10 % 10);
    o->stamp[22] = (char)('0' + ms % 10);
    return o->stamp;
}

/* ---- the log file ------------------------------------------------------- */

/* O_NONBLOCK so that a FIFO given as path cannot hang the loop on open. */
static int open_log(struct output *o)
{
    int fd = open(o->path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC |
                  O_NONBLOCK | O_NOCTTY, 0640);
    if (fd < 0)
        return -1;
    struct stat st;
    if (fstat(fd, &st) < 0) {
        int err = errno;
        close(fd);
        errno = err;
        return -1;
    }
    if (o->fd >= 0)
        close(o->fd);
    o->fd = fd;
    /* Only a regular file is renamed on rotation: never /dev/null. */
    o->regular = S_ISREG(st.st_mode);
    o->size = o->regular ? (uint64_t)st.st_size : 0;
    return 0;
}

static void report_drop(struct output *o, size_t lines, int err)
{
    o->st.dropped += lines;
    o->burst_dropped += lines;
    if (!o->dropping) {
        o->dropping = 1;
        log_warn("output", "%s: %s: dropping output lines until writes "
                 "succeed again", o->path, strerror(err));
    }
}

static size_t count_newlines(const char *p, size_t n)
{
    size_t c = 0;
    const char *end = p + n;
    while (p < end && (p = memchr(p, '\n', (size_t)(end - p))) != NULL) {
        c++;
        p++;
    }
    return c;
}

void output_flush(struct output *o)
{
    size_t len = buf_avail(&o->pending);
    if (len == 0)
        return;
    const char *data = buf_head(&o->pending);
    size_t done = 0;
    int err = 0;
    while (done < len) {
        ssize_t n = write(o->fd, data + done, len - done);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0) {
            err = n < 0 ? errno : EIO;
            break;
        }
        done += (size_t)n;
    }
    if (done == len) {
        o->size += len;
        if (o->dropping) {
            log_warn("output", "%s: writing again after %llu dropped lines",
                     o->path, (unsigned long long)o->burst_dropped);
            o->dropping = 0;
            o->burst_dropped = 0;
        }
    } else {
        /* Keep whole lines only: cut a half-written one back off the file
         * so that the next line starts on a line of its own. */
        const char *last = done ? memrchr(data, '\n', done) : NULL;
        size_t whole = last ? (size_t)(last - data) + 1 : 0;
        if (whole < done && o->regular &&
            ftruncate(o->fd, (off_t)(o->size + whole)) < 0)
            log_warn("output", "%s: cannot cut a partial line: %s", o->path,
                     strerror(errno));
        o->size += whole;
        report_drop(o, o->pending_lines - count_newlines(data, whole), err);
    }
    buf_consume(&o->pending, len);
    o->pending_lines = 0;
}

/* path -> path.1 -> ... -> path.N, the oldest falls off; then a fresh
 * file at path. A failure keeps the current file and tries again after
 * another max_size bytes, so a broken directory is not retried per line. */
static void rotate(struct output *o)
{
    char from[PATH_MAX + 16], to[PATH_MAX + 16];
    o->st.rotations++;
    if (o->max_files == 0) {
        if (ftruncate(o->fd, 0) < 0)
            log_warn("output", "%s: cannot truncate for rotation: %s",
                     o->path, strerror(errno));
        o->size = 0;
        return;
    }
    for (unsigned i = o->max_files; i > 1; i--) {
        snprintf(from, sizeof from, "%s.%u", o->path, i - 1);
        snprintf(to, sizeof to, "%s.%u", o->path, i);
        if (rename(from, to) < 0 && errno != ENOENT)
            log_warn("output", "rotating %s: %s", from, strerror(errno));
    }
    snprintf(to, sizeof to, "%s.1", o->path);
    if (rename(o->path, to) < 0 && errno != ENOENT) {
        log_warn("output", "rotating %s: %s", o->path, strerror(errno));
        o->size = 0;
        return;
    }
    if (open_log(o) < 0) {
        /* Lines keep going to the renamed file rather than nowhere. */
        log_warn("output", "%s: cannot reopen after rotation: %s", o->path,
                 strerror(errno));
        o->size = 0;
    }
}

/* Queues one formatted line for the file, rotating first if it would push
 * the file past max_size. */
static void queue_line(struct output *o, enum output_stream stream,
                       const char *text, size_t len, double time)
{
    size_t need = 24 + 1 + strlen(stream_names[stream]) + 1 + len + 1;
    uint64_t after = o->size + buf_avail(&o->pending);
    if (o->regular && o->max_size > 0 && after > 0 &&
        after + need > o->max_size) {
        output_flush(o);
        rotate(o);
    }
    const char *ts = stamp(o, time);
    const char *name = stream_names[stream];
    if (buf_append(&o->pending, ts, 24) < 0 ||
        buf_append(&o->pending, " ", 1) < 0 ||
        buf_append(&o->pending, name, strlen(name)) < 0 ||
        buf_append(&o->pending, " ", 1) < 0 ||
        buf_append(&o->pending, text, len) < 0 ||
        buf_append(&o->pending, "\n", 1) < 0) {
        /* Out of memory: write what is whole, drop this one. */
        size_t keep = buf_avail(&o->pending);
        const char *last = keep ? memrchr(buf_head(&o->pending), '\n', keep) : NULL;
        o->pending.len = o->pending.off +
            (last ? (size_t)(last - buf_head(&o->pending)) + 1 : 0);
        report_drop(o, 1, ENOMEM);
        return;
    }
    o->pending_lines++;
    if (buf_avail(&o->pending) >= FLUSH_AT)
        output_flush(o);
}

/* ---- the ring ----------------------------------------------------------- */

static void ring_push(struct output *o, enum output_stream stream,
                      const char *text, size_t len, double time)
{
    if (o->ring_max == 0)
        return;
    size_t idx;
    if (o->count < o->ring_max) {
        /* Grows by doubling: a quiet child costs a few slots, not ring_max. */
        if (o->count == o->cap) {
            size_t cap = o->cap ? o->cap * 2 : 16;
            if (cap > o->ring_max)
                cap = o->ring_max;
            struct ring_slot *s = realloc(o->slots, cap * sizeof *s);
            if (s == NULL)
                return;
            memset(s + o->cap, 0, (cap - o->cap) * sizeof *s);
            o->slots = s;
            o->cap = cap;
        }
        idx = o->count++;        /* not wrapped yet: head is 0 */
    } else {
        idx = o->head;
        o->head = (o->head + 1) % o->cap;
    }
    struct ring_slot *s = &o->slots[idx];
    if (len > s->cap || (s->cap > 4096 && len < s->cap / 4)) {
        char *t = realloc(s->text, len ? len : 1);
        if (t == NULL) {
            s->len = 0;          /* keep the slot, lose its text */
            len = 0;
        } else {
            s->text = t;
            s->cap = (uint32_t)(len ? len : 1);
        }
    }
    if (len)
        memcpy(s->text, text, len);
    s->len = (uint32_t)len;
    s->time = time;
    s->stream = (uint8_t)stream;
}

static void ring_free(struct output *o)
{
    for (size_t i = 0; i < o->cap; i++)
        free(o->slots[i].text);
    free(o->slots);
    o->slots = NULL;
    o->cap = o->count = o->head = 0;
}

size_t output_ring_len(const struct output *o)
{
    return o->count;
}

int output_ring_get(const struct output *o, size_t i, double *time,
                    enum output_stream *stream, const char **text,
                    size_t *len)
{
    if (i >= o->count)
        return -1;
    const struct ring_slot *s = &o->slots[(o->head + i) % o->cap];
    *time = s->time;
    *stream = (enum output_stream)s->stream;
    *text = s->len ? s->text : "";
    *len = s->len;
    return 0;
}

/* ---- the sink ---------------------------------------------------------- */

struct output *output_new(const struct output_opts *opts)
{
    struct output *o = calloc(1, sizeof *o);
    if (o == NULL)
        return NULL;
    o->refs = 1;
    o->open = 1;
    o->fd = -1;
    o->max_size = opts->max_size;
    o->max_files = opts->max_files;
    o->max_line = opts->max_line ? opts->max_line : OUTPUT_MAX_LINE;
    o->ring_max = opts->ring;
    buf_init(&o->pending);
    if (opts->path) {
        o->path = strdup(opts->path);
        if (o->path == NULL || open_log(o) < 0) {
            int err = errno;
            free(o->path);
            free(o);
            errno = err;
            return NULL;
        }
    }
    return o;
}

void output_ref(struct output *o)
{
    o->refs++;
}

void output_close(struct output *o)
{
    if (!o->open)
        return;
    if (o->fd >= 0) {
        output_flush(o);
        close(o->fd);
        o->fd = -1;
    }
    buf_free(&o->pending);
    ring_free(o);
    o->on_line = NULL;
    o->ud = NULL;
    o->open = 0;
}

void output_unref(struct output *o)
{
    if (--o->refs > 0)
        return;
    output_close(o);
    free(o->path);
    free(o);
}

int output_is_open(const struct output *o)
{
    return o->open;
}

int output_reopen(struct output *o)
{
    if (!o->open || o->path == NULL)
        return 0;
    if (o->fd >= 0)
        output_flush(o);
    return open_log(o);
}

void output_on_line(struct output *o, output_line_fn *fn, void *ud)
{
    o->on_line = fn;
    o->ud = fn ? ud : NULL;
}

void output_line(struct output *o, enum output_stream stream,
                 const char *text, size_t len, int truncated, double time)
{
    if (!o->open)
        return;
    o->st.lines++;
    o->st.bytes += len;
    if (truncated)
        o->st.truncated++;
    ring_push(o, stream, text, len, time);
    if (o->fd >= 0)
        queue_line(o, stream, text, len, time);
    if (o->on_line && !o->in_callback) {
        output_ref(o);          /* the callback may drop the owner's reference */
        o->in_callback = 1;
        o->on_line(o->ud, stream, text, len, time);
        o->in_callback = 0;
        output_unref(o);
    }
}

void output_get_stats(const struct output *o, struct output_stats *st)
{
    *st = o->st;
    st->size = o->size + buf_avail(&o->pending);
    st->ring = o->count;
}

const char *output_path(const struct output *o)
{
    return o->path;
}

size_t output_max_line(const struct output *o)
{
    return o->max_line;
}

/* ---- pipe readers ------------------------------------------------------- */

static void on_readable(struct ev_loop *loop, ev_io *w, int revents)
{
    (void)revents;
    struct output_reader *r = (struct output_reader *)w;
    struct output *o = r->sink;
    output_ref(o);              /* a line callback may close the reader */
    if (!output_reader_pump(r, OUTPUT_READ_BUDGET, ev_time()) &&
        output_reader_open(r)) {
        output_reader_finish(r, ev_time());
        output_reader_close(loop, r);
    }
    output_flush(o);
    output_unref(o);
}

void output_reader_init(struct output_reader *r, struct output *sink,
                        enum output_stream stream, int fd)
{
    memset(r, 0, sizeof *r);
    r->sink = sink;
    r->stream = stream;
    r->fd = fd;
    output_ref(sink);
    ev_io_init(&r->io, on_readable, fd, EV_READ);
}

void output_reader_start(struct ev_loop *loop, struct output_reader *r)
{
    if (r->fd >= 0 && r->sink)
        ev_io_start(loop, &r->io);
}

/* Room for n more bytes of the carried-over line; 0, or -1 on OOM. */
static int carry_reserve(struct output_reader *r, size_t n)
{
    if (r->len + n <= r->cap)
        return 0;
    size_t cap = r->cap ? r->cap * 2 : 256;
    while (cap < r->len + n)
        cap *= 2;
    char *p = realloc(r->line, cap);
    if (p == NULL)
        return -1;
    r->line = p;
    r->cap = cap;
    return 0;
}

/* Emits carried + data[0..n) as one line. The reader may be closed by the
 * callback: nothing of r is touched afterwards but by the caller's check. */
static void emit(struct output_reader *r, const char *data, size_t n,
                 int truncated, double time)
{
    if (r->len == 0) {
        output_line(r->sink, r->stream, data, n, truncated, time);
        return;
    }
    if (carry_reserve(r, n) < 0) {
        n = 0;                  /* OOM: the carried part is all we can give */
        truncated = 1;
    }
    memcpy(r->line + r->len, data, n);
    size_t len = r->len + n;
    r->len = 0;
    output_line(r->sink, r->stream, r->line, len, truncated, time);
}

void output_reader_feed(struct output_reader *r, const char *p, size_t n,
                        double time)
{
    const char *end = p + n;
    while (p < end && r->sink) {
        size_t max = r->sink->max_line;
        const char *nl = memchr(p, '\n', (size_t)(end - p));
        size_t seg = (size_t)((nl ? nl : end) - p);
        if (r->skipping) {
            if (nl == NULL)
                return;
            r->skipping = 0;
            p = nl + 1;
            continue;
        }
        if (r->len + seg > max) {
            /* Cut at max_line and drop the rest up to the newline. */
            r->skipping = nl == NULL;
            const char *next = nl ? nl + 1 : end;
            emit(r, p, max - r->len, 1, time);
            p = next;
            continue;
        }
        if (nl == NULL) {
            if (carry_reserve(r, seg) < 0) {
                /* OOM: lose this partial line rather than the stream. */
                r->len = 0;
                r->skipping = 1;
                return;
            }
            memcpy(r->line + r->len, p, seg);
            r->len += seg;
            return;
        }
        emit(r, p, seg, 0, time);
        p = nl + 1;
    }
    if (r->sink && r->len == 0 && r->line) {
        /* Nothing carried over: an idle child holds no buffer. */
        free(r->line);
        r->line = NULL;
        r->cap = 0;
    }
}

void output_reader_finish(struct output_reader *r, double time)
{
    r->skipping = 0;
    if (r->sink && r->len > 0)
        emit(r, "", 0, 0, time);
}

int output_reader_pump(struct output_reader *r, size_t budget, double time)
{
    char chunk[OUTPUT_READ_BUDGET];
    size_t total = 0;
    while (r->sink && r->fd >= 0 && total < budget) {
        size_t want = budget - total < sizeof chunk ? budget - total : sizeof chunk;
        ssize_t n = read(r->fd, chunk, want);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
            return 1;
        if (n < 0) {
            log_warn("output", "reading a child's %s: %s",
                     stream_names[r->stream], strerror(errno));
            return 0;
        }
        if (n == 0)
            return 0;
        output_reader_feed(r, chunk, (size_t)n, time);
        total += (size_t)n;
        if ((size_t)n < want)
            return 1;           /* drained for now; spare the EAGAIN read */
    }
    return r->sink != NULL && r->fd >= 0;
}

void output_reader_drain(struct ev_loop *loop, struct output_reader *r,
                         size_t budget)
{
    if (!output_reader_open(r))
        return;
    struct output *o = r->sink;
    output_ref(o);
    double now = ev_time();
    output_reader_pump(r, budget, now);
    output_reader_finish(r, now);
    output_reader_close(loop, r);
    output_unref(o);
}

void output_reader_close(struct ev_loop *loop, struct output_reader *r)
{
    if (r->fd >= 0) {
        if (loop)
            ev_io_stop(loop, &r->io);
        close(r->fd);
        r->fd = -1;
    }
    free(r->line);
    r->line = NULL;
    r->len = r->cap = 0;
    r->skipping = 0;
    if (r->sink) {
        struct output *o = r->sink;
        r->sink = NULL;
        if (o->open && o->fd >= 0)
            output_flush(o);
        output_unref(o);
    }
}
