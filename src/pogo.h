/*
 * pogo.h - the whole interface between the C modules of pogo.
 *
 * The C core does mechanisms (event loop, sockets, framing, codec, logging,
 * the guarded path from C into Lua); lua/pogo/ decides what to do with them.
 * Every binding file exposes one luaopen_pogo_<module>, preloaded as
 * "pogo.core.<module>" by luart_new().
 */
#ifndef POGO_H
#define POGO_H

#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/resource.h>
#include <sys/types.h>
#include <time.h>

#include <ev.h>
#include <sodium.h>
#include <lua.h>
#include <lauxlib.h>

#define POGO_VERSION "0.1.0"

/* ---- log.c ------------------------------------------------------------ */

enum log_level { LOG_DEBUG, LOG_INFO, LOG_WARN, LOG_ERROR };

/* Node name shown on every line; copied. NULL means "-". */
void log_set_node(const char *name);
void log_set_level(enum log_level level);
enum log_level log_get_level(void);
/* Send lines to path (appended, created 0640) instead of stderr; NULL goes
 * back to stderr. Returns 0, or -1 with errno set and the old sink kept. */
int log_set_file(const char *path);
/* The fd lines go to (2, or the log file's). */
int log_fd(void);
/* snprintf into an error buffer that may be NULL or empty. */
void set_error(char *err, size_t errlen, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
/* Parses "debug" | "info" | "warn" | "error"; -1 if unknown. */
int log_level_parse(const char *name);
const char *log_level_name(enum log_level level);

/* One line: "<RFC 3339 UTC ms> <level> <node> <subsys>: <message>". */
void log_msg(enum log_level level, const char *subsys, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
void log_vmsg(enum log_level level, const char *subsys, const char *fmt,
              va_list ap);

#define log_debug(sub, ...) log_msg(LOG_DEBUG, sub, __VA_ARGS__)
#define log_info(sub, ...) log_msg(LOG_INFO, sub, __VA_ARGS__)
#define log_warn(sub, ...) log_msg(LOG_WARN, sub, __VA_ARGS__)
#define log_error(sub, ...) log_msg(LOG_ERROR, sub, __VA_ARGS__)

/* A clock in milliseconds: CLOCK_MONOTONIC for durations, or
 * CLOCK_THREAD_CPUTIME_ID for the work this thread did. */
static inline double clock_ms(clockid_t id)
{
    struct timespec ts;
    clock_gettime(id, &ts);
    return (double)ts.tv_sec * 1e3 + (double)ts.tv_nsec / 1e6;
}

/* ---- luart.c: the Lua runtime -------------------------------------------- */

/* A fresh state with the standard libraries, package.path pointing at
 * lua_dir first, and every pogo.core.* module preloaded. NULL on OOM. */
lua_State *luart_new(const char *lua_dir);

/* The loop every binding schedules on; set once by luart_new(). */
struct ev_loop *luart_loop(lua_State *L);

/* The single path from C into Lua. Calls the function below nargs arguments
 * under a traceback handler and the current budget. On error, logs
 * "<what>: <message and traceback>" under subsystem "lua" and pushes
 * nothing. Returns LUA_OK or the error code. [-(nargs+1), +(nres|0), -] */
int luart_call(lua_State *L, int nargs, int nres, const char *what);

/* While on, luart_call() times every outermost call in CPU time and keeps
 * the slowest: its `what` and the called function's source:line, for
 * loop.busy(). luart_slowest() hands it over and starts again. */
void luart_time_calls(int on);
double luart_slowest(char *where, size_t len);

/* Registry refs of callbacks: take the value at idx, give it back. */
int luart_ref(lua_State *L, int idx);                 /* [-0, +0, -] */
void luart_unref(lua_State *L, int *ref);              /* [-0, +0, -] */
void luart_push_ref(lua_State *L, int ref);            /* [-0, +1, -] */

/* Registers metatable `name` holding methods (with __gc, __close, ...);
 * __index is `index`, or the metatable itself when NULL. [-0, +0, m] */
void luart_newtype(lua_State *L, const char *name, const luaL_Reg *methods,
                   lua_CFunction index);

/* Pushes nil, "ENAME: strerror", "ENAME" and returns 3 (luaL_fileresult's
 * shape, with the errno name first so Lua can match on it). */
int luart_oserror(lua_State *L, int err, const char *what);
const char *errno_name(int err);

int luaopen_pogo_runtime(lua_State *L);   /* luart.c */

/* ---- bindings, one per file ------------------------------------------------- */

int luaopen_pogo_log(lua_State *L);       /* lua_log.c */
int luaopen_pogo_loop(lua_State *L);      /* lua_loop.c */
int luaopen_pogo_sys(lua_State *L);       /* lua_sys.c */
int luaopen_pogo_control(lua_State *L);   /* lua_control.c */
int luaopen_pogo_codec(lua_State *L);     /* codec.c */
int luaopen_pogo_proc(lua_State *L);      /* lua_proc.c */
int luaopen_pogo_net(lua_State *L);       /* lua_net.c */
int luaopen_pogo_fswatch(lua_State *L);   /* lua_fswatch.c */

/* ---- frame.c: length-prefixed frames over a byte stream -------------------- */

/* A frame is a 4-byte big-endian body length followed by the body. */
#define FRAME_HEADER 4

struct buf {
    char *data;       /* owned; NULL while empty and never grown */
    size_t len;       /* bytes in use, from data[0] */
    size_t cap;       /* bytes allocated */
    size_t off;       /* bytes already consumed from the front */
};

void buf_init(struct buf *b);
void buf_free(struct buf *b);
/* Appends n bytes; returns 0 or -1 on OOM (b unchanged). */
int buf_append(struct buf *b, const void *p, size_t n);
/* Unconsumed bytes. */
static inline size_t buf_avail(const struct buf *b) { return b->len - b->off; }
static inline char *buf_head(const struct buf *b)
{
    return b->data ? b->data + b->off : NULL;
}
void buf_consume(struct buf *b, size_t n);

enum frame_status { FRAME_NEED_MORE, FRAME_READY, FRAME_TOO_BIG };

/* Looks for one complete frame at the head of b. On FRAME_READY, *body
 * points into b (valid until the next append to b) and *len is its length;
 * call buf_consume(b, FRAME_HEADER + *len) once done with it. A body longer
 * than max is FRAME_TOO_BIG, decided from the header alone. */
enum frame_status frame_next(struct buf *b, size_t max, const char **body,
                             size_t *len);
/* Appends header and body to out, all or nothing; -1 on OOM or a body
 * over 4 GiB. */
int frame_put(struct buf *out, const void *body, size_t len);

/* ---- codec.c: Lua values <-> MessagePack --------------------------------- */

#define CODEC_MAX_DEPTH 64

/* Packs the value at idx. Integers stay integers, floats floats; a table
 * whose keys are exactly 1..n is an array, any other table a map; an empty
 * table is an empty map. Functions, userdata, threads, cycles and nesting
 * deeper than CODEC_MAX_DEPTH are refused. Returns 0 and appends to out, or
 * -1 with a message in err (out may hold a partial value). Never raises.
 * [-0, +0, -] */
int codec_encode(lua_State *L, int idx, struct buf *out, char *err,
                 size_t errlen);
/* Unpacks exactly one value from data; pushes it and returns 0, or pushes
 * nothing and returns -1 with a message in err (truncated, trailing bytes,
 * too deep, unsupported type). Map keys must be strings or integers or
 * booleans. [-0, +(1|0), m] */
int codec_decode(lua_State *L, const char *data, size_t len, char *err,
                 size_t errlen);

/* ---- lua_control.c ---------------------------------------------------------- */

#define CONTROL_MAX_FRAME (16u << 20)

/* ---- watchdog.c: no process started by the agent outlives it ----------- */

/* A separate process, forked before any child, that holds the list of the
 * agent's process groups. When the agent dies for any reason (kill -9
 * included) the watchdog sees its pipe close, SIGKILLs every group it holds
 * and every process still carrying this agent's POGO_AGENT marker in its
 * environment, then exits. */

/* Forks the watchdog. Returns 0, or -1 with errno. Idempotent. */
int watchdog_start(void);
/* The env marker every child carries: "POGO_AGENT=<pid>.<start ns>". */
const char *watchdog_marker(void);
/* Adds / removes a process group; no-ops when the watchdog is not running.
 * Never blocks the loop (the pipe is non-blocking; a full pipe is logged). */
void watchdog_track(pid_t pgid);
void watchdog_untrack(pid_t pgid);
/* Marks a tracked group as a quorum child's: the watchdog SIGKILLs it when
 * the lease runs out (untracking it ends that too). */
void watchdog_fence(pid_t pgid);
/* Renews the quorum lease for `seconds` from now (0: no lease). While a
 * lease is set and quorum groups are held, the watchdog kills those groups
 * at its end unless renewed, even when the agent is frozen. */
void watchdog_lease(double seconds);
/* Clean shutdown: the watchdog exits without killing anything. */
void watchdog_stop(void);
/* The watchdog's pid, or 0. */
pid_t watchdog_pid(void);

/* ---- output.c: output sinks --------------------------------------------- */

enum output_stream { OUTPUT_STDOUT, OUTPUT_STDERR, OUTPUT_POGO };

#define OUTPUT_READ_BUDGET (64u << 10)      /* bytes per pipe per wakeup */
#define OUTPUT_MAX_LINE (16u << 10)         /* default max_line */
#define OUTPUT_RING (1000u)                 /* default ring size, lines */

struct output_opts {
    const char *path;     /* the log file; NULL keeps lines in memory only */
    uint64_t max_size;    /* rotate before the file would grow past it; 0: never */
    unsigned max_files;   /* rotated files kept, path.1 (newest) .. path.N;
                           * 0 truncates the file in place instead */
    size_t ring;          /* lines kept in memory; 0: none */
    size_t max_line;      /* longer lines are cut; 0: OUTPUT_MAX_LINE */
};

struct output_stats {
    uint64_t lines;       /* lines captured; a cut line counts once */
    uint64_t bytes;       /* bytes of text captured, newlines excluded */
    uint64_t dropped;     /* lines that did not reach the log file */
    uint64_t truncated;   /* lines cut at max_line */
    uint64_t rotations;   /* rotations done (or attempted and failed) */
    uint64_t size;        /* bytes in the current log file */
    size_t ring;          /* lines held in memory now */
};

/* Called for every line once it is in the ring and queued for the file.
 * text is not NUL-terminated and only valid during the call. Lines added
 * from inside the callback (output_line) do not call it again. */
typedef void output_line_fn(void *ud, enum output_stream stream,
                            const char *text, size_t len, double time);

/* One per child id, shared by its successive processes; reference counted
 * because pipe readers may outlive the owner's handle on it. */
struct output;

/* Opens the log file (appending, created 0640). Returns the sink with one
 * reference, or NULL with errno set. */
struct output *output_new(const struct output_opts *opts);
void output_ref(struct output *o);
/* Drops a reference; the last one closes and frees the sink. */
void output_unref(struct output *o);
/* Flushes, closes the file and frees the ring; later lines are discarded.
 * The memory stays until the last reference goes. Idempotent. */
void output_close(struct output *o);
int output_is_open(const struct output *o);
/* Closes and reopens the log file at its path (e.g. after the directory was
 * recreated). Returns 0, or -1 with errno and the old file kept. */
int output_reopen(struct output *o);
/* NULL fn removes the callback. */
void output_on_line(struct output *o, output_line_fn *fn, void *ud);
/* Adds one line (no newline in it) of the given stream: ring, file buffer,
 * callback. truncated says it was cut at max_line. time: epoch seconds. */
void output_line(struct output *o, enum output_stream stream,
                 const char *text, size_t len, int truncated, double time);
/* Writes what output_line queued for the file; a failed or short write
 * drops the lines it did not complete, counts them and warns once per
 * burst of failures. */
void output_flush(struct output *o);
/* Ring access, i = 0 is the oldest line held. Returns 0, or -1 if i is out
 * of range. *text stays valid until the next line is added. */
size_t output_ring_len(const struct output *o);
int output_ring_get(const struct output *o, size_t i, double *time,
                    enum output_stream *stream, const char **text,
                    size_t *len);
void output_get_stats(const struct output *o, struct output_stats *st);
const char *output_path(const struct output *o);   /* NULL: memory only */
size_t output_max_line(const struct output *o);

const char *output_stream_name(enum output_stream s);
/* "stdout" | "stderr" | "pogo", or -1. */
int output_stream_parse(const char *name);
/* "2024-05-01T12:00:00.123Z" into out (at least 32 bytes). */
void output_format_time(double t, char *out);

/* Reads one pipe of one process into a sink: non-blocking, at most
 * OUTPUT_READ_BUDGET bytes per wakeup so a flooding child cannot starve
 * the others, split into lines. */
struct output_reader {
    ev_io io;                 /* readable; started by output_reader_start */
    struct output *sink;      /* our reference; NULL once closed */
    enum output_stream stream;
    int fd;                   /* the pipe's read end, owned; -1 if none */
    int skipping;             /* inside a line already cut: drop up to '\n' */
    char *line;               /* a line carried over between reads; owned */
    size_t len, cap;
};

/* Takes ownership of fd (non-blocking; -1 for tests that only feed) and a
 * reference to sink. */
void output_reader_init(struct output_reader *r, struct output *sink,
                        enum output_stream stream, int fd);
void output_reader_start(struct ev_loop *loop, struct output_reader *r);
static inline int output_reader_open(const struct output_reader *r)
{
    return r->sink != NULL;
}
/* Splits data into lines; the tail without a newline is carried over.
 * Stops early if a line callback closed the reader. */
void output_reader_feed(struct output_reader *r, const char *data, size_t n,
                        double time);
/* End of stream: a carried-over line becomes a line of its own. */
void output_reader_finish(struct output_reader *r, double time);
/* Reads up to budget bytes. Returns 1 while the pipe may have more, 0 at
 * end of file, on a read error, or once the reader was closed. */
int output_reader_pump(struct output_reader *r, size_t budget, double time);
/* Reads what the pipe holds now (up to budget), finishes the last line and
 * closes the reader: used when the process is known to be gone. */
void output_reader_drain(struct ev_loop *loop, struct output_reader *r,
                         size_t budget);
/* Stops, closes the fd, drops the carried-over line (a process being
 * killed) and the sink reference. Idempotent. */
void output_reader_close(struct ev_loop *loop, struct output_reader *r);

/* ---- proc.c: spawning, reaping, signalling -------- */

#define PROC_MAX_RLIMITS 16

/* What to run. Everything is resolved by the caller (user and group names
 * included): the child only makes system calls. */
struct proc_spec {
    const char *id;               /* the child id: POGO_CHILD_ID, messages */
    char *const *argv;            /* NULL-terminated; argv[0] is searched in
                                   * the PATH of envp if it has no '/' */
    char *const *envp;            /* NULL-terminated "K=V": the complete
                                   * environment; POGO_AGENT is added */
    const char *cwd;              /* NULL: the agent's */
    int set_umask;
    mode_t umask;
    int nrlimits;
    struct { int resource; struct rlimit lim; } rlimits[PROC_MAX_RLIMITS];
    int set_groups;               /* setgroups(ngroups, groups) */
    int ngroups;
    const gid_t *groups;
    int set_gid;
    gid_t gid;
    int set_uid;
    uid_t uid;
    struct output *output;        /* NULL: stdout/stderr to /dev/null */
};

/* Where a spawn failed: stage is a static string ("pipe", "fork",
 * "setpgid", "signals", "stdio", "fds", "setrlimit", "initgroups",
 * "setgid", "setuid", "chdir", "exec"), err the errno. */
struct proc_error {
    const char *stage;
    int err;
};

struct proc_status {
    pid_t pid;
    int exited;                   /* 1: code is valid; 0: killed by signal */
    int code;
    int signal;
    int core;
    double runtime;               /* seconds from spawn to reap */
};

struct proc;

/* Called once when the main process has exited, after its output was
 * delivered and its group killed; what it left re-parented to the agent is
 * swept right after, in the same loop iteration, before a replacement can
 * be mistaken for it. p stays valid during the call (proc_release inside
 * it is fine) and until released. */
typedef void proc_exit_fn(void *ud, struct proc *p,
                          const struct proc_status *st);

/* Starts the reaper (one ev_child on pid 0) on loop and raises the soft
 * RLIMIT_NOFILE to the hard limit (children get the original back);
 * idempotent. Returns 0, or -1 with errno (no /dev/null, ENOMEM). */
int proc_init(struct ev_loop *loop);
/* Frees every process record, released or not, and stops the reaper: for
 * the end of the Lua state. Groups still running are SIGKILLed, and so is
 * every process carrying this agent's POGO_AGENT marker (escapees of
 * children that were still running). */
void proc_shutdown(void);
/* Starts spec (vfork semantics: the agent is paused only until the child
 * has exec'd); returns only once exec succeeded (the process then
 * runs in its own process group, pgid = pid) or failed (NULL, *err set,
 * nothing left behind). */
struct proc *proc_spawn(struct ev_loop *loop, const struct proc_spec *spec,
                        proc_exit_fn *on_exit, void *ud,
                        struct proc_error *err);
pid_t proc_pid(const struct proc *p);
const char *proc_id(const struct proc *p);
/* 1 until the main process's exit has been seen. */
int proc_running(const struct proc *p);
/* Signals the whole process group (and the main process if it left the
 * group). Returns 0, or -1 with errno (ESRCH once the main has exited). */
int proc_kill(struct proc *p, int sig);
/* The owner lets go: no more callbacks; a running group is SIGKILLed and
 * the record freed once reaped. */
void proc_release(struct proc *p);
/* Processes spawned whose main process has not been reaped yet. */
size_t proc_count(void);
/* prctl(PR_SET_CHILD_SUBREAPER): orphans of our descendants come to us. */
int proc_subreaper(void);

/* ---- crypto.c: the cluster key, the handshake, sealed frames ----------- */

/* Everything cryptographic is libsodium. A link starts with a handshake of
 * three small fixed-layout binary frames (no MessagePack before
 * authentication):
 *
 *   initiator -> responder  HELLO  version range, capabilities, node name,
 *                                  incarnation, ephemeral X25519 public key,
 *                                  random nonce, id of the key it uses
 *   responder -> initiator  HELLO  the same, for the responder, plus a MAC
 *                                  over the transcript under the cluster key
 *   initiator -> responder  AUTH   the initiator's MAC over the transcript
 *
 * Each side proves it holds the cluster key (the responder picks the key
 * whose id the initiator named, from its keyring, so old keys keep working
 * during a rotation). Session keys, one per direction, are derived from the
 * X25519 shared secret and the cluster key together, so a leaked cluster
 * key does not decrypt recorded traffic. After the handshake every frame
 * body is sealed with XChaCha20-Poly1305 (or ChaCha20-Poly1305 IETF) under
 * a nonce that is the frame's counter in that direction: a replayed,
 * reordered, dropped or altered frame fails to open, and the link dies. */

#define CRYPTO_KEY_BYTES 32
#define CRYPTO_KEY_ID_BYTES 8
#define CRYPTO_MAX_KEYS 8
#define LINK_NAME_MAX 63
#define LINK_PREAUTH_MAX 4096          /* frame cap before authentication */
#define LINK_FRAME_MAX (16u << 20)     /* frame cap after */
#define LINK_PROTO_MIN 1
#define LINK_PROTO_MAX 1

struct keyring {
    uint8_t keys[CRYPTO_MAX_KEYS][CRYPTO_KEY_BYTES];  /* keys[0]: primary */
    uint8_t ids[CRYPTO_MAX_KEYS][CRYPTO_KEY_ID_BYTES];
    int n;
};

/* A key file holds one or more keys, one per line, as 64 hex digits;
 * blank lines and lines starting with '#' are ignored. The first key is
 * the primary (used for new links); the others are accepted. Returns 0, or
 * -1 with a message in err (the ring is untouched). Refuses a file that
 * others can read (mode & 077). */
int keyring_load(struct keyring *kr, const char *path, char *err, size_t errlen);
/* Writes a fresh random key to path (mode 0600, O_EXCL). 0 or -1/errno. */
int keyring_generate(const char *path);
/* sodium_init() once; -1 if libsodium cannot initialise. */
int crypto_setup(void);

struct hs_identity {
    char name[LINK_NAME_MAX + 1];
    uint64_t incarnation;              /* random per agent start */
    uint32_t caps;                     /* capability flags */
};

struct session {
    uint8_t tx[32], rx[32];            /* per-direction keys */
    uint64_t tx_n, rx_n;               /* frame counters = nonces */
};

enum hs_result { HS_CONTINUE, HS_DONE, HS_FAIL };

struct handshake {                     /* opaque to callers; in pogo.h for size */
    int initiator;
    int step;
    const struct keyring *kr;
    int key;                           /* index into kr of the key in use */
    struct hs_identity self, peer;
    uint16_t version;                  /* negotiated */
    uint8_t eph_pk[32], eph_sk[32], peer_eph_pk[32];
    uint8_t nonce[16], peer_nonce[16];
    /* Chained hash of the transcript (see crypto.c). Not a
     * crypto_generichash_state: that is 64-byte aligned, and a calloc'd
     * struct holding it would be misaligned. */
    uint8_t th[32];
};

/* Starts a handshake; an initiator appends its HELLO frame body to out.
 * The keyring must outlive the handshake. */
void hs_init(struct handshake *h, int initiator, const struct keyring *kr,
             const struct hs_identity *self, struct buf *out);
/* Feeds one received frame body. May append a frame body to send to out.
 * HS_DONE fills *s and h->peer; HS_FAIL puts a one-line reason in err
 * ("wrong cluster key", "protocol version 7..9 not supported", ...). */
enum hs_result hs_recv(struct handshake *h, const char *body, size_t len,
                       struct buf *out, struct session *s, char *err,
                       size_t errlen);
/* Wipes secrets. */
void hs_clear(struct handshake *h);

/* Appends a sealed frame body (ciphertext + tag) of plain to out. */
int session_seal(struct session *s, const void *plain, size_t len,
                 struct buf *out);
/* Opens a sealed frame body into out (appended). -1 if it does not
 * authenticate under the next expected counter. */
int session_open(struct session *s, const char *body, size_t len,
                 struct buf *out);
/* Overhead of a sealed body over its plain text. */
#define SESSION_OVERHEAD 16

/* ---- link.c: authenticated TCP links between agents --------------------- */

/* The mechanism: sockets, framing, the handshake, verdicts, queues.
 * lua_link.c is its only user and turns it into pogo.core.link. */

struct link_ctx;            /* one per Lua state: identity, keys, links */
struct link;                /* one TCP connection to a peer */
struct link_listener;       /* one listening socket */

enum link_state { LINK_CONNECTING, LINK_HANDSHAKE, LINK_UP, LINK_CLOSED };

/* How an owned link ended, for the binding's closed() call. */
enum link_end {
    LINK_END_QUIET,         /* nothing to report: closed by the owner before
                             * it came up, or by link_ctx_shutdown */
    LINK_END_DOWN,          /* it had come up */
    LINK_END_FAILED,        /* we dialled it and it never came up */
};

struct link_stats {
    uint64_t bytes_in, bytes_out;       /* on the socket */
    uint64_t frames_in, frames_out;     /* handshake and sealed frames */
    size_t queued;                      /* bytes waiting to be written */
};

struct link_handlers {
    /* Both sides kept the link. An incoming link has no owner yet: this is
     * where the binding sets one (link_set_owner). */
    void (*up)(void *ud, struct link *l);
    /* One MSG payload, in order. Returns 0, or -1 with a reason in err to
     * drop the link (the payload did not decode). */
    int (*message)(void *ud, struct link *l, const char *body, size_t len,
                   char *err, size_t errlen);
    /* Once per owned link, when it has closed; reason is NULL for
     * LINK_END_QUIET. Never called from inside a link_* call, except
     * link_ctx_shutdown/free, which only make LINK_END_QUIET calls. */
    void (*closed)(void *ud, struct link *l, enum link_end end,
                   const char *reason);
};

struct link_setup {
    const char *name;                   /* 1..LINK_NAME_MAX of [A-Za-z0-9._-] */
    uint64_t incarnation;
    double handshake_timeout;           /* seconds from connected to up */
    double dial_timeout;                /* seconds for connect() */
    const char *keyfile;
    const char *source;                 /* numeric IP to dial from; NULL: any */
};

struct link_ctx *link_ctx_new(struct ev_loop *loop,
                              const struct link_handlers *h, void *ud);
/* Loads the keyring and sets the identity; only while no link or listener
 * is open. 0, or -1 with a message in err. */
int link_ctx_setup(struct link_ctx *c, const struct link_setup *s, char *err,
                   size_t errlen);
int link_ctx_ready(const struct link_ctx *c);
/* Links and listeners still open. */
int link_ctx_busy(const struct link_ctx *c);
/* Re-reads the key file; handshakes in flight finish with the old ring. */
int link_ctx_reload_keys(struct link_ctx *c, char *err, size_t errlen);
/* Closes every listener and link; owned links get closed(QUIET) at once
 * and no other callback comes. The ctx needs link_ctx_setup again. */
void link_ctx_shutdown(struct link_ctx *c);
/* Shuts down and frees. Links the binding still owns stay allocated,
 * closed, until link_release. */
void link_ctx_free(struct link_ctx *c);

/* Numeric addresses only (no resolver on the loop): "127.0.0.1", "::1",
 * "[::1]"; for listen, "" and "*" mean 0.0.0.0. Port 0 picks one. NULL
 * with errno and a message on error. */
struct link_listener *link_listen(struct link_ctx *c, const char *host,
                                  int port, char *err, size_t errlen);
int link_listener_port(const struct link_listener *ln);
const char *link_listener_addr(const struct link_listener *ln);
int link_listener_open(const struct link_listener *ln);
void link_listener_close(struct link_listener *ln);  /* idempotent */
void link_listener_free(struct link_listener *ln);   /* closes first */

/* Starts a dial owned by owner. A failure to connect is reported through
 * closed(FAILED) from the loop; NULL with errno and err only when nothing
 * could be started (bad address, no socket). */
struct link *link_dial(struct link_ctx *c, const char *host, int port,
                       void *owner, char *err, size_t errlen);
/* Seals and queues one MSG payload. 0, or -1 with errno: EPIPE (closed),
 * ENOTCONN (not up yet), EMSGSIZE (too big; the link stays), ENOMEM, or
 * ENOBUFS (the peer reads too slowly: the link was dropped). */
int link_send(struct link *l, const void *body, size_t len, char *err,
              size_t errlen);
/* Closes as the owner: down (reason "closed locally: why") if it was up. */
void link_close(struct link *l, const char *why);
/* The owner lets go: closed quietly if open, no more callbacks, freed. */
void link_release(struct link *l);

void *link_owner(const struct link *l);
void link_set_owner(struct link *l, void *owner);
uint64_t link_id(const struct link *l);
enum link_state link_state(const struct link *l);
const char *link_peer(const struct link *l);       /* NULL until known */
uint64_t link_peer_incarnation(const struct link *l);
const char *link_addr(const struct link *l);       /* remote "host:port" */
const char *link_host(const struct link *l);       /* as dialled, or NULL */
int link_port(const struct link *l);               /* as dialled, or 0 */
int link_initiator(const struct link *l);
void link_get_stats(const struct link *l, struct link_stats *st);
/* Up links, oldest first. */
struct link *link_first_up(struct link_ctx *c);
struct link *link_next_up(struct link *l);

/* lua_link.c exposes links to Lua as pogo.core.link; see its header
 * comment for the API. */
int luaopen_pogo_link(lua_State *L);
int luaopen_pogo_edit(lua_State *L);

#endif
