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
#include <sys/types.h>

#include <ev.h>
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

/* Registry refs of callbacks: take the value at idx, give it back. */
int luart_ref(lua_State *L, int idx);                 /* [-0, +0, -] */
void luart_unref(lua_State *L, int *ref);              /* [-0, +0, -] */
void luart_push_ref(lua_State *L, int ref);            /* [-0, +1, -] */

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
/* Clean shutdown: the watchdog exits without killing anything. */
void watchdog_stop(void);
/* The watchdog's pid, or 0. */
pid_t watchdog_pid(void);

#endif
