/*
 * lua_proc.c - pogo.core.proc: child processes, their output sinks, the
 * sd_notify socket and the watchdog, seen from Lua.
 *
 * Mechanism only: proc.spawn starts one process and reports its exit; what
 * to restart, when, and what "ready" means is decided in lua/. A process
 * handle stays anchored in the registry until its on_exit has run, so a
 * running child always gets its callback even if Lua dropped the handle.
 * OS failures return nil, "ENAME: what: message", "ENAME" (spawn adds a
 * fourth value, {stage=, errno=, code=}); misuse raises.
 */
#include <errno.h>
#include <grp.h>
#include <pwd.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include "pogo.h"


#define PROC_T "pogo.proc"
#define OUTPUT_T "pogo.output"
#define NOTIFY_T "pogo.notify"
#define STATE_T "pogo.proc_state"

#define ID_MAX 255                /* proc.c's sweep compares ids up to this */
#define NOTIFY_MAX 4096           /* systemd's limit for one notify message */
#define NOTIFY_BATCH 64           /* datagrams per wakeup */

/* The thread callbacks run on: a coroutine that created a handle may be
 * long dead when the handle's callback fires. [-0, +0, -] */
static lua_State *main_thread(lua_State *L)
{
    lua_rawgeti(L, LUA_REGISTRYINDEX, LUA_RIDX_MAINTHREAD);
    lua_State *M = lua_tothread(L, -1);
    lua_pop(L, 1);
    return M;
}

/* ---- signals ----------------------------------------------------------- */

/* "TERM", "SIGTERM", "term" or a number. [-0, +0, v] */
static int check_signal(lua_State *L, int idx)
{
    if (lua_type(L, idx) == LUA_TNUMBER) {
        lua_Integer n = luaL_checkinteger(L, idx);
        luaL_argcheck(L, n >= 0 && n < NSIG, idx, "no such signal number");
        return (int)n;
    }
    const char *name = luaL_checkstring(L, idx);
    const char *bare = strncasecmp(name, "SIG", 3) == 0 ? name + 3 : name;
    for (int sig = 1; sig < NSIG; sig++) {
        const char *abbrev = sigabbrev_np(sig);
        if (abbrev && strcasecmp(abbrev, bare) == 0)
            return sig;
    }
    return luaL_argerror(L, idx, lua_pushfstring(L, "unknown signal '%s'", name));
}

/* Pushes "SIGTERM", or nil for a signal without a name. [-0, +1, m] */
static void push_signame(lua_State *L, int sig)
{
    const char *abbrev = sig > 0 && sig < NSIG ? sigabbrev_np(sig) : NULL;
    if (abbrev)
        lua_pushfstring(L, "SIG%s", abbrev);
    else
        lua_pushnil(L);
}

/* signals() -> {SIGTERM = 15, ...} */
static int l_signals(lua_State *L)
{
    lua_newtable(L);
    for (int sig = 1; sig < NSIG; sig++) {
        if (sigabbrev_np(sig) == NULL)
            continue;
        push_signame(L, sig);
        lua_pushinteger(L, sig);
        lua_rawset(L, -3);
    }
    return 1;
}

/* signame(n) -> "SIGTERM" | nil */
static int l_signame(lua_State *L)
{
    push_signame(L, (int)luaL_checkinteger(L, 1));
    return 1;
}

/* ---- output sinks ----------------------------------------------------- */

struct lsink {
    struct output *o;             /* our reference; NULL once closed */
    lua_State *L;                 /* main thread */
    int on_line;                  /* registry ref of fn(stream, text, time) */
};

/* An open sink at idx. [-0, +0, v] */
static struct lsink *check_sink(lua_State *L, int idx)
{
    struct lsink *k = luaL_checkudata(L, idx, OUTPUT_T);
    if (k->o == NULL)
        luaL_error(L, "output sink is closed");
    return k;
}

/* output_line_fn: hands one line to Lua. [-0, +0, -] */
static void sink_line(void *ud, enum output_stream stream, const char *text,
                      size_t len, double time)
{
    struct lsink *k = ud;
    lua_State *L = k->L;
    if (k->on_line == LUA_NOREF)
        return;
    luart_push_ref(L, k->on_line);
    lua_pushstring(L, output_stream_name(stream));
    lua_pushlstring(L, text, len);
    lua_pushnumber(L, time);
    luart_call(L, 3, 0, "output on_line");
}

/* Optional non-negative integer field of the table at idx. [-0, +0, v] */
static lua_Integer opt_count(lua_State *L, int idx, const char *name,
                             lua_Integer def)
{
    int t = lua_getfield(L, idx, name);
    lua_Integer v = def;
    if (t != LUA_TNIL) {
        int ok;
        v = lua_tointegerx(L, -1, &ok);
        if (!ok || v < 0)
            luaL_argerror(L, idx, lua_pushfstring(L,
                "'%s' must be a non-negative integer", name));
    }
    lua_pop(L, 1);
    return v;
}

/* output{path=, max_size=, max_files=, ring=, max_line=} -> sink | nil, err, code */
static int l_output(lua_State *L)
{
    luaL_checktype(L, 1, LUA_TTABLE);
    lua_Integer max_files = opt_count(L, 1, "max_files", 5);
    lua_Integer ring = opt_count(L, 1, "ring", OUTPUT_RING);
    lua_Integer max_line = opt_count(L, 1, "max_line", OUTPUT_MAX_LINE);
    luaL_argcheck(L, max_files <= 1000, 1, "'max_files' is over 1000");
    luaL_argcheck(L, ring <= 1000000, 1, "'ring' is over 1000000 lines");
    luaL_argcheck(L, max_line >= 1 && max_line <= (64 << 20), 1,
                  "'max_line' must be 1 .. 64 MiB");
    struct output_opts opts = {
        .max_size = (uint64_t)opt_count(L, 1, "max_size", 0),
        .max_files = (unsigned)max_files,
        .ring = (size_t)ring,
        .max_line = (size_t)max_line,
    };
    if (lua_getfield(L, 1, "path") != LUA_TNIL) {
        luaL_argcheck(L, lua_type(L, -1) == LUA_TSTRING, 1,
                      "'path' must be a string");
        opts.path = lua_tostring(L, -1);    /* kept on the stack */
    }
    struct lsink *k = lua_newuserdatauv(L, sizeof *k, 0);
    k->o = NULL;
    k->L = main_thread(L);
    k->on_line = LUA_NOREF;
    luaL_setmetatable(L, OUTPUT_T);
    if ((k->o = output_new(&opts)) == NULL)
        return luart_oserror(L, errno, opts.path);
    return 1;
}

/* sink:lines([n]) -> the last n lines (all by default), oldest first,
 * each {time=, stream=, text=}. */
static int l_sink_lines(lua_State *L)
{
    struct lsink *k = check_sink(L, 1);
    size_t have = output_ring_len(k->o);
    lua_Integer want = luaL_optinteger(L, 2, (lua_Integer)have);
    luaL_argcheck(L, want >= 0, 2, "negative count");
    size_t n = (size_t)want < have ? (size_t)want : have;
    lua_createtable(L, (int)n, 0);
    for (size_t i = 0; i < n; i++) {
        double time;
        enum output_stream stream;
        const char *text;
        size_t len;
        output_ring_get(k->o, have - n + i, &time, &stream, &text, &len);
        lua_createtable(L, 0, 3);
        lua_pushnumber(L, time);
        lua_setfield(L, -2, "time");
        lua_pushstring(L, output_stream_name(stream));
        lua_setfield(L, -2, "stream");
        lua_pushlstring(L, text, len);
        lua_setfield(L, -2, "text");
        lua_rawseti(L, -2, (lua_Integer)i + 1);
    }
    return 1;
}

/* sink:stats() -> {lines=, bytes=, dropped=, truncated=, rotations=,
 * size=, ring=, path=, open=} (also on a closed sink) */
static int l_sink_stats(lua_State *L)
{
    struct lsink *k = luaL_checkudata(L, 1, OUTPUT_T);
    struct output_stats st = {0};
    if (k->o)
        output_get_stats(k->o, &st);
    lua_createtable(L, 0, 9);
    static const char *const names[] = {"lines", "bytes", "dropped",
                                        "truncated", "rotations", "size"};
    const uint64_t vals[] = {st.lines, st.bytes, st.dropped, st.truncated,
                             st.rotations, st.size};
    for (int i = 0; i < 6; i++) {
        lua_pushinteger(L, (lua_Integer)vals[i]);
        lua_setfield(L, -2, names[i]);
    }
    lua_pushinteger(L, (lua_Integer)st.ring);
    lua_setfield(L, -2, "ring");
    if (k->o && output_path(k->o)) {
        lua_pushstring(L, output_path(k->o));
        lua_setfield(L, -2, "path");
    }
    lua_pushboolean(L, k->o != NULL);
    lua_setfield(L, -2, "open");
    return 1;
}

/* sink:write(stream, text): the supervisor's own lines ("pogo"), one per
 * line of text, cut at max_line like a child's. */
static int l_sink_write(lua_State *L)
{
    struct lsink *k = check_sink(L, 1);
    const char *name = luaL_checkstring(L, 2);
    size_t len;
    const char *text = luaL_checklstring(L, 3, &len);
    int stream = output_stream_parse(name);
    luaL_argcheck(L, stream >= 0, 2, "stream must be 'pogo', 'stdout' or 'stderr'");
    struct output *o = k->o;
    output_ref(o);              /* the line callback may close the sink */
    double now = ev_time();
    size_t max = output_max_line(o);
    const char *p = text, *end = text + len;
    for (;;) {
        const char *nl = memchr(p, '\n', (size_t)(end - p));
        size_t n = (size_t)((nl ? nl : end) - p);
        output_line(o, (enum output_stream)stream, p, n > max ? max : n,
                    n > max, now);
        if (nl == NULL || nl + 1 == end)
            break;              /* a trailing newline adds no empty line */
        p = nl + 1;
    }
    if (output_is_open(o))
        output_flush(o);
    output_unref(o);
    return 0;
}

/* sink:on_line(fn | nil) */
static int l_sink_on_line(lua_State *L)
{
    struct lsink *k = check_sink(L, 1);
    if (!lua_isnil(L, 2))
        luaL_checktype(L, 2, LUA_TFUNCTION);
    luart_unref(L, &k->on_line);
    if (lua_isnil(L, 2)) {
        output_on_line(k->o, NULL, NULL);
    } else {
        k->on_line = luart_ref(L, 2);
        output_on_line(k->o, sink_line, k);
    }
    return 0;
}

/* sink:reopen() -> true | nil, err, code */
static int l_sink_reopen(lua_State *L)
{
    struct lsink *k = check_sink(L, 1);
    if (output_reopen(k->o) < 0)
        return luart_oserror(L, errno, output_path(k->o));
    lua_pushboolean(L, 1);
    return 1;
}

/* __gc, __close, close: processes still writing to it keep the memory
 * alive (reference counted) but their lines are discarded from now on. */
static int l_sink_close(lua_State *L)
{
    struct lsink *k = luaL_checkudata(L, 1, OUTPUT_T);
    if (k->o == NULL)
        return 0;
    output_on_line(k->o, NULL, NULL);
    output_close(k->o);
    output_unref(k->o);
    k->o = NULL;
    luart_unref(L, &k->on_line);
    return 0;
}

static int l_sink_tostring(lua_State *L)
{
    struct lsink *k = luaL_checkudata(L, 1, OUTPUT_T);
    const char *path = k->o ? output_path(k->o) : NULL;
    lua_pushfstring(L, "pogo.output (%s): %p",
                    k->o ? (path ? path : "memory") : "closed", k);
    return 1;
}

/* ---- process handles ---------------------------------------------------- */

struct lproc {
    struct proc *p;               /* NULL until spawned and once closed */
    lua_State *L;                 /* main thread */
    int on_exit;                  /* registry ref of fn(status), until run */
    int anchor;                   /* registry ref of the userdata until the
                                   * exit is delivered */
    pid_t pid;                    /* kept after close */
};
/* User values: 1 = the sink (kept alive while the process writes to it),
 * 2 = the child id. */

/* [-0, +0, v] */
static struct lproc *check_proc(lua_State *L, int idx)
{
    return luaL_checkudata(L, idx, PROC_T);
}

/* Pushes {pid=, code=, signal=, signame=, core=, runtime=}. [-0, +1, m] */
static void push_status(lua_State *L, const struct proc_status *st)
{
    lua_createtable(L, 0, 6);
    lua_pushinteger(L, st->pid);
    lua_setfield(L, -2, "pid");
    if (st->exited) {
        lua_pushinteger(L, st->code);
        lua_setfield(L, -2, "code");
    } else {
        lua_pushinteger(L, st->signal);
        lua_setfield(L, -2, "signal");
        push_signame(L, st->signal);
        lua_setfield(L, -2, "signame");
    }
    lua_pushboolean(L, st->core);
    lua_setfield(L, -2, "core");
    lua_pushnumber(L, st->runtime);
    lua_setfield(L, -2, "runtime");
}

/* proc_exit_fn: runs on_exit(status) and drops the anchor; the handle may
 * be collected afterwards. [-0, +0, -] */
static void on_proc_exit(void *ud, struct proc *p, const struct proc_status *st)
{
    struct lproc *h = ud;
    lua_State *L = h->L;
    luart_push_ref(L, h->anchor);     /* pinned while its callback runs */
    luart_unref(L, &h->anchor);
    int fn = h->on_exit;
    h->on_exit = LUA_NOREF;
    if (fn != LUA_NOREF) {
        char what[ID_MAX + 32];
        snprintf(what, sizeof what, "on_exit of %s", proc_id(p));
        luart_push_ref(L, fn);
        luart_unref(L, &fn);
        push_status(L, st);
        luart_call(L, 1, 0, what);
    }
    lua_pop(L, 1);
}

/* Pushes the spawn failure: nil, message, code, {stage=, errno=, code=}.
 * [-0, +4, m] */
static int spawn_error(lua_State *L, const char *id, const char *stage,
                       int err, const char *detail, const char *msg)
{
    lua_pushnil(L);
    lua_pushfstring(L, "%s: spawn %s: %s%s%s: %s", errno_name(err), id, stage,
                    detail ? " " : "", detail ? detail : "",
                    msg ? msg : strerror(err));
    lua_pushstring(L, errno_name(err));
    lua_createtable(L, 0, 3);
    lua_pushstring(L, stage);
    lua_setfield(L, -2, "stage");
    lua_pushinteger(L, err);
    lua_setfield(L, -2, "errno");
    lua_pushstring(L, errno_name(err));
    lua_setfield(L, -2, "code");
    return 4;
}

/* The spawn being built: strings are anchored in the `keep` table so that
 * nothing the C arrays point to can be collected before fork. */
struct build {
    lua_State *L;
    int opts, keep;
    lua_Integer kept;
    struct proc_spec spec;
    const char *user_name;        /* for messages */
    const char *group_name;
};

/* Anchors the value at the top, leaving it there. [-0, +0, m] */
static void keep_top(struct build *b)
{
    lua_pushvalue(b->L, -1);
    lua_rawseti(b->L, b->keep, ++b->kept);
}

/* A string without NUL bytes at the top. [-0, +0, v] */
static const char *check_cstring(lua_State *L, const char *what)
{
    size_t len;
    const char *s = lua_type(L, -1) == LUA_TSTRING ? lua_tolstring(L, -1, &len) : NULL;
    if (s == NULL || strlen(s) != len)
        luaL_error(L, "bad argument #1 to 'spawn' (%s must be a string "
                   "without NUL bytes)", what);
    return s;
}

/* argv: a list of 1 or more strings. [-0, +0, v] */
static void get_argv(struct build *b)
{
    lua_State *L = b->L;
    if (lua_getfield(L, b->opts, "argv") != LUA_TTABLE)
        luaL_argerror(L, 1, "'argv' must be a list of strings");
    keep_top(b);
    lua_Integer n = (lua_Integer)lua_rawlen(L, -1);
    luaL_argcheck(L, n >= 1 && n < 100000, 1, "'argv' must hold 1 or more strings");
    char **argv = lua_newuserdatauv(L, (size_t)(n + 1) * sizeof *argv, 0);
    keep_top(b);
    lua_pop(L, 1);
    for (lua_Integer i = 1; i <= n; i++) {
        lua_rawgeti(L, -1, i);
        argv[i - 1] = (char *)check_cstring(L, "every argv entry");
        lua_pop(L, 1);          /* still referenced by the argv table */
    }
    argv[n] = NULL;
    luaL_argcheck(L, argv[0][0] != '\0', 1, "'argv[1]' is empty");
    lua_pop(L, 1);
    b->spec.argv = argv;
}

/* env: name -> string (or number): the complete environment; nil is an
 * empty one (proc.c still adds POGO_AGENT and POGO_CHILD_ID). [-0, +0, v] */
static void get_env(struct build *b)
{
    lua_State *L = b->L;
    int t = lua_getfield(L, b->opts, "env");
    if (t == LUA_TNIL) {
        lua_pop(L, 1);
        lua_newtable(L);
    } else if (t != LUA_TTABLE) {
        luaL_argerror(L, 1, "'env' must be a table of name = value");
    }
    keep_top(b);
    int env = lua_gettop(L);
    size_t n = 0;
    lua_pushnil(L);
    while (lua_next(L, env)) {
        n++;
        lua_pop(L, 1);
    }
    char **envp = lua_newuserdatauv(L, (n + 1) * sizeof *envp, 0);
    keep_top(b);
    lua_pop(L, 1);
    size_t i = 0;
    lua_pushnil(L);
    while (lua_next(L, env)) {
        size_t klen;
        if (lua_type(L, -2) != LUA_TSTRING)
            luaL_argerror(L, 1, "'env' names must be strings");
        const char *k = lua_tolstring(L, -2, &klen);
        if (klen == 0 || strchr(k, '=') || strlen(k) != klen)
            luaL_argerror(L, 1, lua_pushfstring(L, "bad env name '%s'", k));
        int vt = lua_type(L, -1);
        if (vt != LUA_TSTRING && vt != LUA_TNUMBER)
            luaL_argerror(L, 1, lua_pushfstring(L,
                "env.%s must be a string or a number", k));
        size_t vlen;
        const char *v = luaL_tolstring(L, -1, &vlen);   /* a copy: safe for lua_next */
        if (strlen(v) != vlen)
            luaL_argerror(L, 1, lua_pushfstring(L, "env.%s holds a NUL byte", k));
        envp[i++] = (char *)lua_pushfstring(L, "%s=%s", k, v);
        keep_top(b);
        lua_pop(L, 3);          /* "k=v", the copy, the value */
    }
    envp[i] = NULL;
    lua_pop(L, 1);
    b->spec.envp = envp;
}

static const struct {
    const char *name;
    int resource;
} rlimit_names[] = {
    {"as", RLIMIT_AS}, {"core", RLIMIT_CORE}, {"cpu", RLIMIT_CPU},
    {"data", RLIMIT_DATA}, {"fsize", RLIMIT_FSIZE},
    {"memlock", RLIMIT_MEMLOCK}, {"nofile", RLIMIT_NOFILE},
    {"nproc", RLIMIT_NPROC}, {"stack", RLIMIT_STACK},
};

/* A limit at idx: integer >= 0 or "infinity". [-0, +0, v] */
static rlim_t check_rlim(lua_State *L, int idx, const char *name)
{
    if (lua_type(L, idx) == LUA_TSTRING &&
        strcmp(lua_tostring(L, idx), "infinity") == 0)
        return RLIM_INFINITY;
    int ok;
    lua_Integer v = lua_tointegerx(L, idx, &ok);
    if (!ok || v < 0)
        luaL_error(L, "bad argument #1 to 'spawn' (rlimits.%s: a non-negative "
                   "integer, \"infinity\" or {soft, hard} expected)", name);
    return (rlim_t)v;
}

/* rlimits: name -> limit | {soft, hard} | {soft = , hard = }. [-0, +0, v] */
static void get_rlimits(struct build *b)
{
    lua_State *L = b->L;
    int t = lua_getfield(L, b->opts, "rlimits");
    if (t == LUA_TNIL) {
        lua_pop(L, 1);
        return;
    }
    luaL_argcheck(L, t == LUA_TTABLE, 1, "'rlimits' must be a table");
    lua_pushnil(L);
    while (lua_next(L, -2)) {
        const char *name = lua_type(L, -2) == LUA_TSTRING ? lua_tostring(L, -2) : "?";
        size_t r = 0;
        while (r < sizeof rlimit_names / sizeof *rlimit_names &&
               strcmp(rlimit_names[r].name, name) != 0)
            r++;
        if (r == sizeof rlimit_names / sizeof *rlimit_names)
            luaL_argerror(L, 1, lua_pushfstring(L, "unknown rlimit '%s'", name));
        struct rlimit lim;
        if (lua_type(L, -1) == LUA_TTABLE) {
            /* {soft, hard}, or {soft = , hard = } as pogo.spec writes it */
            int pair = lua_gettop(L);
            if (lua_getfield(L, pair, "soft") == LUA_TNIL) {
                lua_pop(L, 1);
                lua_rawgeti(L, pair, 1);
            }
            if (lua_getfield(L, pair, "hard") == LUA_TNIL) {
                lua_pop(L, 1);
                lua_rawgeti(L, pair, 2);
            }
            lim.rlim_cur = check_rlim(L, -2, name);
            lim.rlim_max = check_rlim(L, -1, name);
            lua_pop(L, 2);
            if (lim.rlim_cur > lim.rlim_max)
                luaL_argerror(L, 1, lua_pushfstring(L,
                    "rlimits.%s: soft limit above the hard one", name));
        } else {
            lim.rlim_cur = lim.rlim_max = check_rlim(L, -1, name);
        }
        struct proc_spec *s = &b->spec;
        s->rlimits[s->nrlimits].resource = rlimit_names[r].resource;
        s->rlimits[s->nrlimits].lim = lim;
        s->nrlimits++;
        lua_pop(L, 1);
    }
    lua_pop(L, 1);
}

/* A scratch buffer the GC owns, anchored in keep. [-0, +0, m] */
static void *scratch(struct build *b, size_t len)
{
    void *p = lua_newuserdatauv(b->L, len, 0);
    keep_top(b);
    lua_pop(b->L, 1);
    return p;
}

/* getpw*_r / getgr*_r with a buffer grown on ERANGE. Returns 0 (found),
 * ENOENT (no such entry) or the error. NSS may block (LDAP): like the
 * fork itself, part of the short synchronous spawn. [-0, +0, m] */
static int lookup_user(struct build *b, const char *name, uid_t uid,
                       struct passwd *pw)
{
    for (size_t len = 4096; ; len *= 2) {
        char *buf = scratch(b, len);
        struct passwd *res = NULL;
        int rc = name ? getpwnam_r(name, pw, buf, len, &res)
                      : getpwuid_r(uid, pw, buf, len, &res);
        if (rc == ERANGE && len < (1u << 20))
            continue;
        return rc ? rc : res ? 0 : ENOENT;
    }
}

static int lookup_group(struct build *b, const char *name, gid_t *gid)
{
    for (size_t len = 4096; ; len *= 2) {
        char *buf = scratch(b, len);
        struct group gr, *res = NULL;
        int rc = getgrnam_r(name, &gr, buf, len, &res);
        if (rc == ERANGE && len < (1u << 20))
            continue;
        if (rc == 0 && res)
            *gid = res->gr_gid;
        return rc ? rc : res ? 0 : ENOENT;
    }
}

/* A uid/gid given as an integer or a string of digits: 1, 0 if it is a
 * name, -1 if a bad number. [-0, +0, -] */
static int numeric_id(lua_State *L, int idx, lua_Integer *out)
{
    /* (uid_t)-1 means "unchanged" to setuid: never a valid id. */
    const lua_Integer max = (lua_Integer)(uid_t)-1 - 1;
    if (lua_type(L, idx) == LUA_TNUMBER) {
        int ok;
        *out = lua_tointegerx(L, idx, &ok);
        return ok && *out >= 0 && *out <= max ? 1 : -1;
    }
    const char *s = lua_tostring(L, idx);
    if (*s == '\0' || strspn(s, "0123456789") != strlen(s))
        return 0;
    if (strlen(s) > 10)
        return -1;
    *out = strtoll(s, NULL, 10);
    return *out <= max ? 1 : -1;
}

/* user and group, resolved here (the child only makes system calls).
 * Returns 0, or the errno of a failed lookup with *stage set. [-0, +(0|2), v] */
static int get_ids(struct build *b, const char **stage)
{
    lua_State *L = b->L;
    struct proc_spec *s = &b->spec;
    const char *pw_name = NULL;
    int rc;
    int ut = lua_getfield(L, b->opts, "user");
    int gt = lua_getfield(L, b->opts, "group");
    luaL_argcheck(L, ut == LUA_TNIL || ut == LUA_TSTRING || ut == LUA_TNUMBER,
                  1, "'user' must be a name or a uid");
    luaL_argcheck(L, gt == LUA_TNIL || gt == LUA_TSTRING || gt == LUA_TNUMBER,
                  1, "'group' must be a name or a gid");
    if (ut != LUA_TNIL) {
        b->user_name = luaL_tolstring(L, -2, NULL);
        keep_top(b);
        lua_pop(L, 1);
        struct passwd pw;
        lua_Integer n;
        int num = numeric_id(L, -2, &n);
        luaL_argcheck(L, num >= 0, 1, "'user' must be a name or a uid");
        *stage = "user";
        if (num) {
            s->uid = (uid_t)n;
            /* A uid without a passwd entry runs with gid = uid. */
            rc = lookup_user(b, NULL, s->uid, &pw);
            if (rc && rc != ENOENT)
                return rc;
            s->gid = rc ? (gid_t)n : pw.pw_gid;
            pw_name = rc ? NULL : pw.pw_name;
        } else {
            if ((rc = lookup_user(b, b->user_name, 0, &pw)) != 0)
                return rc;
            s->uid = pw.pw_uid;
            s->gid = pw.pw_gid;
            pw_name = pw.pw_name;
        }
        s->set_uid = s->set_gid = 1;
    }
    if (gt != LUA_TNIL) {
        b->group_name = luaL_tolstring(L, -1, NULL);
        keep_top(b);
        lua_pop(L, 1);
        lua_Integer n;
        int num = numeric_id(L, -1, &n);
        luaL_argcheck(L, num >= 0, 1, "'group' must be a name or a gid");
        *stage = "group";
        if (num)
            s->gid = (gid_t)n;
        else if ((rc = lookup_group(b, b->group_name, &s->gid)) != 0)
            return rc;
        s->set_gid = 1;
    }
    /* Supplementary groups of the target user; only root may set them. */
    if (ut != LUA_TNIL && geteuid() == 0) {
        int ng = 64;
        gid_t *groups = scratch(b, (size_t)ng * sizeof *groups);
        if (pw_name == NULL) {
            groups[0] = s->gid;
            ng = 1;
        } else if (getgrouplist(pw_name, s->gid, groups, &ng) < 0) {
            groups = scratch(b, (size_t)ng * sizeof *groups);
            if (getgrouplist(pw_name, s->gid, groups, &ng) < 0) {
                *stage = "initgroups";
                return EOVERFLOW;
            }
        }
        s->groups = groups;
        s->ngroups = ng;
        s->set_groups = 1;
    }
    lua_pop(L, 2);
    return 0;
}

/* spawn(opts) -> handle | nil, err, code, {stage=, errno=, code=} */
static int l_spawn(lua_State *L)
{
    luaL_checktype(L, 1, LUA_TTABLE);
    lua_settop(L, 1);
    struct lproc *h = lua_newuserdatauv(L, sizeof *h, 2);     /* 2 */
    h->p = NULL;
    h->L = main_thread(L);
    h->on_exit = h->anchor = LUA_NOREF;
    h->pid = 0;
    luaL_setmetatable(L, PROC_T);
    lua_newtable(L);                                            /* 3: keep */
    struct build b = {.L = L, .opts = 1, .keep = 3};

    if (lua_getfield(L, 1, "id") != LUA_TSTRING)
        luaL_argerror(L, 1, "'id' must be a string");
    b.spec.id = check_cstring(L, "'id'");
    luaL_argcheck(L, *b.spec.id && strlen(b.spec.id) <= ID_MAX, 1,
                  "'id' must be 1 to 255 bytes");
    lua_setiuservalue(L, 2, 2);             /* anchors the id string */

    get_argv(&b);
    get_env(&b);
    if (lua_getfield(L, 1, "cwd") != LUA_TNIL) {
        b.spec.cwd = check_cstring(L, "'cwd'");
        keep_top(&b);
    }
    lua_pop(L, 1);
    if (lua_getfield(L, 1, "umask") != LUA_TNIL) {
        int ok;
        lua_Integer m = lua_tointegerx(L, -1, &ok);
        luaL_argcheck(L, ok && m >= 0 && m <= 0777, 1, "'umask' must be 0 .. 0777");
        b.spec.set_umask = 1;
        b.spec.umask = (mode_t)m;
    }
    lua_pop(L, 1);
    get_rlimits(&b);
    int t = lua_getfield(L, 1, "output");                      /* 4 */
    if (t != LUA_TNIL) {
        struct lsink *k = luaL_testudata(L, 4, OUTPUT_T);
        luaL_argcheck(L, k != NULL, 1, "'output' must be a sink from proc.output");
        luaL_argcheck(L, k->o != NULL, 1, "'output' is a closed sink");
        b.spec.output = k->o;
    }
    t = lua_getfield(L, 1, "on_exit");                         /* 5 */
    luaL_argcheck(L, t == LUA_TNIL || t == LUA_TFUNCTION, 1,
                  "'on_exit' must be a function");

    const char *stage = NULL;
    int rc = get_ids(&b, &stage);
    if (rc) {
        const char *who = strcmp(stage, "group") == 0 ? b.group_name : b.user_name;
        return spawn_error(L, b.spec.id, stage, rc, who,
                           rc == ENOENT ? (strcmp(stage, "group") == 0 ?
                               "no such group" : "no such user") : NULL);
    }

    struct proc_error perr;
    struct proc *p = proc_spawn(luart_loop(L), &b.spec, on_proc_exit, h, &perr);
    if (p == NULL) {
        const char *detail = NULL;
        if (strcmp(perr.stage, "exec") == 0)
            detail = b.spec.argv[0];
        else if (strcmp(perr.stage, "chdir") == 0)
            detail = b.spec.cwd;
        else if (strcmp(perr.stage, "setuid") == 0 ||
                 strcmp(perr.stage, "initgroups") == 0)
            detail = b.user_name;
        else if (strcmp(perr.stage, "setgid") == 0)
            detail = b.group_name ? b.group_name : b.user_name;
        return spawn_error(L, b.spec.id, perr.stage, perr.err, detail, NULL);
    }
    h->p = p;
    h->pid = proc_pid(p);
    if (t == LUA_TFUNCTION)
        h->on_exit = luart_ref(L, 5);
    lua_pushvalue(L, 4);
    lua_setiuservalue(L, 2, 1);
    h->anchor = luart_ref(L, 2);
    lua_pushvalue(L, 2);
    return 1;
}

static int l_proc_pid(lua_State *L)
{
    lua_pushinteger(L, check_proc(L, 1)->pid);
    return 1;
}

static int l_proc_id(lua_State *L)
{
    check_proc(L, 1);
    lua_getiuservalue(L, 1, 2);
    return 1;
}

static int l_proc_running(lua_State *L)
{
    struct lproc *h = check_proc(L, 1);
    lua_pushboolean(L, h->p && proc_running(h->p));
    return 1;
}

/* handle:kill(sig) -> true | nil, err, code: to the whole group. */
static int l_proc_kill(lua_State *L)
{
    struct lproc *h = check_proc(L, 1);
    int sig = check_signal(L, 2);
    if (h->p == NULL || proc_kill(h->p, sig) < 0) {
        int err = h->p ? errno : ESRCH;
        lua_getiuservalue(L, 1, 2);
        return luart_oserror(L, err, lua_pushfstring(L, "kill %s (pid %d)",
                             lua_tostring(L, -1), (int)h->pid));
    }
    lua_pushboolean(L, 1);
    return 1;
}

/* __gc, __close, close: a running group is SIGKILLed; no on_exit follows. */
static int l_proc_close(lua_State *L)
{
    struct lproc *h = check_proc(L, 1);
    if (h->p) {
        proc_release(h->p);
        h->p = NULL;
    }
    luart_unref(L, &h->on_exit);
    luart_unref(L, &h->anchor);
    lua_pushnil(L);
    lua_setiuservalue(L, 1, 1);     /* the sink may go */
    return 0;
}

static int l_proc_tostring(lua_State *L)
{
    struct lproc *h = check_proc(L, 1);
    lua_getiuservalue(L, 1, 2);
    lua_pushfstring(L, "pogo.proc (%s, pid %d, %s): %p",
                    lua_isstring(L, -1) ? lua_tostring(L, -1) : "?", (int)h->pid,
                    h->p == NULL ? "closed" : proc_running(h->p) ? "running" : "exited",
                    h);
    return 1;
}

/* ---- sd_notify socket --------------------------------------------------- */

struct lnotify {
    ev_io io;
    lua_State *L;                 /* main thread */
    int fd;                       /* -1 once closed */
    int fn;                       /* registry ref of fn(pid, fields) */
    int anchor;                   /* registry ref of the userdata while open */
    char path[sizeof(((struct sockaddr_un *)0)->sun_path)];
};

/* Pushes {KEY = "VALUE", ...} of the message's lines. [-0, +1, m] */
static void push_fields(lua_State *L, const char *msg, size_t len)
{
    lua_newtable(L);
    const char *end = msg + len;
    while (msg < end) {
        const char *nl = memchr(msg, '\n', (size_t)(end - msg));
        const char *stop = nl ? nl : end;
        const char *eq = memchr(msg, '=', (size_t)(stop - msg));
        if (eq && eq > msg) {
            lua_pushlstring(L, msg, (size_t)(eq - msg));
            lua_pushlstring(L, eq + 1, (size_t)(stop - eq - 1));
            lua_rawset(L, -3);
        }
        msg = nl ? nl + 1 : end;
    }
}

/* At most NOTIFY_BATCH datagrams per wakeup, each to fn(pid, fields).
 * [-0, +0, -] */
static void on_notify(struct ev_loop *loop, ev_io *w, int revents)
{
    (void)loop; (void)revents;
    struct lnotify *n = (struct lnotify *)w;
    lua_State *L = n->L;
    luart_push_ref(L, n->anchor);   /* pin: the callback may close it */
    for (int i = 0; i < NOTIFY_BATCH && n->fd >= 0; i++) {
        char buf[NOTIFY_MAX + 1];
        union {
            struct cmsghdr h;
            char b[CMSG_SPACE(sizeof(struct ucred)) + CMSG_SPACE(sizeof(int) * 16)];
        } cm;
        struct iovec iov = {buf, sizeof buf};
        struct msghdr mh = {
            .msg_iov = &iov, .msg_iovlen = 1,
            .msg_control = &cm, .msg_controllen = sizeof cm,
        };
        ssize_t len = recvmsg(n->fd, &mh, MSG_DONTWAIT | MSG_CMSG_CLOEXEC | MSG_TRUNC);
        if (len < 0 && errno == EINTR)
            continue;
        if (len < 0) {
            if (errno != EAGAIN && errno != EWOULDBLOCK)
                log_warn("proc", "notify socket %s: %s", n->path, strerror(errno));
            break;
        }
        pid_t pid = 0;
        for (struct cmsghdr *c = CMSG_FIRSTHDR(&mh); c; c = CMSG_NXTHDR(&mh, c)) {
            if (c->cmsg_level != SOL_SOCKET)
                continue;
            if (c->cmsg_type == SCM_CREDENTIALS) {
                struct ucred cred;
                memcpy(&cred, CMSG_DATA(c), sizeof cred);
                pid = cred.pid;
            } else if (c->cmsg_type == SCM_RIGHTS) {
                /* No fd store here: close what was passed, never leak it. */
                size_t nfd = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
                for (size_t k = 0; k < nfd; k++) {
                    int fd;
                    memcpy(&fd, CMSG_DATA(c) + k * sizeof fd, sizeof fd);
                    close(fd);
                }
            }
        }
        if ((size_t)len > NOTIFY_MAX) {
            log_warn("proc", "notify socket %s: message of %zd bytes from "
                     "pid %d dropped (over %d)", n->path, len, (int)pid, NOTIFY_MAX);
            continue;
        }
        luart_push_ref(L, n->fn);
        lua_pushinteger(L, pid);
        push_fields(L, buf, (size_t)len);
        luart_call(L, 2, 0, "notify callback");
    }
    lua_pop(L, 1);
}

/* Removes a stale socket at path; refuses a live one or a non-socket. */
static int claim_dgram_path(const struct sockaddr_un *sa)
{
    struct stat st;
    if (lstat(sa->sun_path, &st) < 0)
        return errno == ENOENT ? 0 : -1;
    if (!S_ISSOCK(st.st_mode)) {
        errno = EEXIST;
        return -1;
    }
    int fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -1;
    int rc = connect(fd, (const struct sockaddr *)sa, sizeof *sa), err = errno;
    close(fd);
    if (rc == 0) {
        errno = EADDRINUSE;
        return -1;
    }
    if (err != ECONNREFUSED) {
        errno = err;
        return -1;
    }
    return unlink(sa->sun_path);
}

/* notify(path, fn[, mode]) -> handle | nil, err, code. mode defaults to
 * 0666: children may run as other users, and the kernel-checked sender
 * pid, not the file mode, is what ties a message to a child. */
static int l_notify(lua_State *L)
{
    size_t plen;
    const char *path = luaL_checklstring(L, 1, &plen);
    luaL_checktype(L, 2, LUA_TFUNCTION);
    mode_t mode = (mode_t)luaL_optinteger(L, 3, 0666);
    struct lnotify *n = lua_newuserdatauv(L, sizeof *n, 0);
    memset(n, 0, sizeof *n);
    n->fd = -1;
    n->fn = n->anchor = LUA_NOREF;
    n->L = main_thread(L);
    luaL_setmetatable(L, NOTIFY_T);
    struct sockaddr_un sa;
    memset(&sa, 0, sizeof sa);
    sa.sun_family = AF_UNIX;
    if (plen == 0 || plen >= sizeof sa.sun_path)
        return luart_oserror(L, ENAMETOOLONG, path);
    memcpy(sa.sun_path, path, plen + 1);
    if (claim_dgram_path(&sa) < 0)
        return luart_oserror(L, errno, path);
    int fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return luart_oserror(L, errno, path);
    int one = 1;
    if (setsockopt(fd, SOL_SOCKET, SO_PASSCRED, &one, sizeof one) < 0 ||
        bind(fd, (struct sockaddr *)&sa, sizeof sa) < 0) {
        int err = errno;
        close(fd);
        return luart_oserror(L, err, path);
    }
    if (chmod(path, mode) < 0) {
        int err = errno;
        close(fd);
        unlink(path);
        return luart_oserror(L, err, path);
    }
    n->fd = fd;
    memcpy(n->path, path, plen + 1);
    n->fn = luart_ref(L, 2);
    n->anchor = luart_ref(L, -1);
    ev_io_init(&n->io, on_notify, fd, EV_READ);
    ev_io_start(luart_loop(L), &n->io);
    return 1;
}

static int l_notify_close(lua_State *L)
{
    struct lnotify *n = luaL_checkudata(L, 1, NOTIFY_T);
    if (n->fd < 0)
        return 0;
    ev_io_stop(luart_loop(L), &n->io);
    close(n->fd);
    n->fd = -1;
    unlink(n->path);
    luart_unref(L, &n->fn);
    luart_unref(L, &n->anchor);
    return 0;
}

static int l_notify_path(lua_State *L)
{
    struct lnotify *n = luaL_checkudata(L, 1, NOTIFY_T);
    lua_pushstring(L, n->path);
    return 1;
}

/* ---- module ------------------------------------------------------------- */

/* init() -> true | nil, err: start reaping now, before the first spawn
 * (orphans re-parented to a subreaper need it); also raises the agent's
 * open file limit (children get the original back). */
static int l_init(lua_State *L)
{
    if (proc_init(luart_loop(L)) < 0)
        return luart_oserror(L, errno, "starting the reaper");
    lua_pushboolean(L, 1);
    return 1;
}

/* subreaper() -> true | nil, err: orphans of our descendants come to us,
 * and the reaper starts now to collect them (init()), not at the first
 * spawn. */
static int l_subreaper(lua_State *L)
{
    if (proc_subreaper() < 0)
        return luart_oserror(L, errno, "PR_SET_CHILD_SUBREAPER");
    if (proc_init(luart_loop(L)) < 0)
        return luart_oserror(L, errno, "starting the reaper");
    lua_pushboolean(L, 1);
    return 1;
}

static int l_count(lua_State *L)
{
    lua_pushinteger(L, (lua_Integer)proc_count());
    return 1;
}

static int l_watchdog_start(lua_State *L)
{
    if (watchdog_start() < 0)
        return luart_oserror(L, errno, "starting the watchdog");
    lua_pushboolean(L, 1);
    return 1;
}

static int l_watchdog_stop(lua_State *L)
{
    (void)L;
    watchdog_stop();
    return 0;
}

/* watchdog_fence(pgid): the group is killed when the quorum lease ends. */
static int l_watchdog_fence(lua_State *L)
{
    watchdog_fence((pid_t)luaL_checkinteger(L, 1));
    return 0;
}

/* watchdog_lease(seconds): renew the quorum lease (0 clears it). */
static int l_watchdog_lease(lua_State *L)
{
    watchdog_lease(luaL_checknumber(L, 1));
    return 0;
}

static int l_watchdog_pid(lua_State *L)
{
    lua_pushinteger(L, watchdog_pid());
    return 1;
}

/* The module state's __gc: the last finalizer of the Lua state to run
 * (finalizers go in reverse order of creation, and it is created before
 * any handle), so every handle has released its process by then. */
static int l_state_gc(lua_State *L)
{
    (void)L;
    proc_shutdown();
    return 0;
}

int luaopen_pogo_proc(lua_State *L)
{
    static const luaL_Reg proc_m[] = {
        {"pid", l_proc_pid},
        {"pgid", l_proc_pid},       /* each child leads its own group */
        {"id", l_proc_id},
        {"running", l_proc_running},
        {"kill", l_proc_kill},
        {"close", l_proc_close},
        {"__gc", l_proc_close},
        {"__close", l_proc_close},
        {"__tostring", l_proc_tostring},
        {NULL, NULL},
    };
    static const luaL_Reg sink_m[] = {
        {"lines", l_sink_lines},
        {"stats", l_sink_stats},
        {"write", l_sink_write},
        {"on_line", l_sink_on_line},
        {"reopen", l_sink_reopen},
        {"close", l_sink_close},
        {"__gc", l_sink_close},
        {"__close", l_sink_close},
        {"__tostring", l_sink_tostring},
        {NULL, NULL},
    };
    static const luaL_Reg notify_m[] = {
        {"path", l_notify_path},
        {"close", l_notify_close},
        {"__gc", l_notify_close},
        {"__close", l_notify_close},
        {NULL, NULL},
    };
    luart_newtype(L, PROC_T, proc_m, NULL);
    luart_newtype(L, OUTPUT_T, sink_m, NULL);
    luart_newtype(L, NOTIFY_T, notify_m, NULL);

    /* One module state per Lua state, whatever happens to package.loaded. */
    if (lua_getfield(L, LUA_REGISTRYINDEX, STATE_T) == LUA_TNIL) {
        lua_newuserdatauv(L, 1, 0);
        lua_createtable(L, 0, 1);
        lua_pushcfunction(L, l_state_gc);
        lua_setfield(L, -2, "__gc");
        lua_setmetatable(L, -2);
        lua_setfield(L, LUA_REGISTRYINDEX, STATE_T);
    }
    lua_pop(L, 1);

    static const luaL_Reg fns[] = {
        {"spawn", l_spawn},
        {"output", l_output},
        {"notify", l_notify},
        {"init", l_init},
        {"subreaper", l_subreaper},
        {"count", l_count},
        {"signals", l_signals},
        {"signame", l_signame},
        {"watchdog_start", l_watchdog_start},
        {"watchdog_stop", l_watchdog_stop},
        {"watchdog_pid", l_watchdog_pid},
        {"watchdog_fence", l_watchdog_fence},
        {"watchdog_lease", l_watchdog_lease},
        {NULL, NULL},
    };
    luaL_newlib(L, fns);
    return 1;
}
