/*
 * lua_control.c - pogo.core.control: the agent's Unix control socket.
 *
 * Requests and responses are frames (frame.c) whose bodies are MessagePack
 * maps (codec.c). The server side is non-blocking on the agent's loop and
 * hands each decoded request to a Lua function; the client side, used by
 * the one-shot CLI, is a plain blocking socket with poll() timeouts.
 *
 * Only the agent's own user and root may connect (SO_PEERCRED), on top of
 * the socket's 0600 mode.
 */
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include "pogo.h"

#define SERVER_T "pogo.control_server"
#define CONN_T "pogo.control_conn"
#define CLIENT_T "pogo.control_client"

/* A client that reads slower than we answer is dropped past this. */
#define CONN_MAX_PENDING (64u << 20)

struct conn;

/* After EMFILE and the like, accepts pause this long (the connection stays
 * queued and the socket readable: watching it would spin). */
#define ACCEPT_PAUSE 0.1

struct server {
    ev_io io;             /* readable: accept */
    ev_timer pause;       /* accepts paused after running out of fds */
    lua_State *L;
    int fd;               /* -1 once closed */
    int on_request;       /* registry ref: fn(conn, request) -> response? */
    int on_close;         /* registry ref: fn(conn), or LUA_NOREF */
    int anchor;           /* registry ref of the userdata while listening */
    char path[sizeof(((struct sockaddr_un *)0)->sun_path)];
    struct conn *conns;   /* open connections, for close() */
    unsigned next_id;
};

struct conn {
    ev_io rio, wio;
    struct server *srv;   /* NULL once closed */
    struct conn *next, *prev;
    int fd;
    int anchor;           /* registry ref of the userdata while open */
    unsigned id;
    uid_t uid;
    int closing;          /* close once the output is flushed */
    struct buf in, out;
};

/* ---- helpers ------------------------------------------------------------ */

static int fill_addr(struct sockaddr_un *sa, const char *path)
{
    memset(sa, 0, sizeof *sa);
    sa->sun_family = AF_UNIX;
    if (strlen(path) >= sizeof sa->sun_path) {
        errno = ENAMETOOLONG;
        return -1;
    }
    strcpy(sa->sun_path, path);
    return 0;
}

/* Encodes the value at idx as one frame onto out; 0, or -1 with err. */
static int put_value(lua_State *L, int idx, struct buf *out, char *err,
                     size_t errlen)
{
    struct buf body;
    buf_init(&body);
    int rc = codec_encode(L, idx, &body, err, errlen);
    if (rc == 0 && frame_put(out, buf_head(&body), buf_avail(&body)) < 0) {
        snprintf(err, errlen, "out of memory");
        rc = -1;
    }
    buf_free(&body);
    return rc;
}

/* ---- server connections ----------------------------------------------------- */

static void conn_close(struct conn *c)
{
    struct server *s = c->srv;
    if (s == NULL)
        return;
    lua_State *L = s->L;
    struct ev_loop *loop = luart_loop(L);
    ev_io_stop(loop, &c->rio);
    ev_io_stop(loop, &c->wio);
    close(c->fd);
    c->fd = -1;
    c->srv = NULL;
    if (c->prev) c->prev->next = c->next; else s->conns = c->next;
    if (c->next) c->next->prev = c->prev;
    buf_free(&c->in);
    buf_free(&c->out);
    if (s->on_close != LUA_NOREF) {
        luart_push_ref(L, s->on_close);
        luart_push_ref(L, c->anchor);
        luart_call(L, 1, 0, "control on_close");
    }
    luart_unref(L, &c->anchor);
}

static void conn_flush(struct conn *c)
{
    struct ev_loop *loop = luart_loop(c->srv->L);
    while (buf_avail(&c->out) > 0) {
        ssize_t n = write(c->fd, buf_head(&c->out), buf_avail(&c->out));
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0 && errno == EAGAIN) {
            ev_io_start(loop, &c->wio);
            return;
        }
        if (n < 0) {
            conn_close(c);
            return;
        }
        buf_consume(&c->out, (size_t)n);
    }
    ev_io_stop(loop, &c->wio);
    if (c->closing)
        conn_close(c);
}

/* Pushes the response { ok = false, error = msg }. [-0, +1, m] */
static void push_failure(lua_State *L, const char *msg)
{
    lua_createtable(L, 0, 2);
    lua_pushboolean(L, 0);
    lua_setfield(L, -2, "ok");
    lua_pushstring(L, msg);
    lua_setfield(L, -2, "error");
}

/* Queues the value at idx; a value that cannot be encoded becomes an error
 * response, so the client always gets an answer. [-0, +0, m] */
static void conn_send(lua_State *L, struct conn *c, int idx)
{
    char err[256];
    idx = lua_absindex(L, idx);
    if (put_value(L, idx, &c->out, err, sizeof err) < 0) {
        push_failure(L, lua_pushfstring(L, "cannot encode the response: %s", err));
        put_value(L, -1, &c->out, err, sizeof err);
        lua_pop(L, 2);
    }
    if (buf_avail(&c->out) > CONN_MAX_PENDING) {
        log_warn("control", "connection %u: client reads too slowly, dropped",
                 c->id);
        conn_close(c);
        return;
    }
    conn_flush(c);
}

/* Handles one complete frame at the head of c->in, if any. Returns 1 when
 * there may be more, 0 when c needs more bytes or has closed. */
static int conn_dispatch_one(lua_State *L, struct conn *c)
{
    const char *body;
    size_t len;
    enum frame_status st = frame_next(&c->in, CONTROL_MAX_FRAME, &body, &len);
    if (st == FRAME_NEED_MORE)
        return 0;
    if (st == FRAME_TOO_BIG) {
        log_warn("control", "connection %u: frame over %u bytes, dropped",
                 c->id, CONTROL_MAX_FRAME);
        conn_close(c);
        return 0;
    }
    char err[256];
    int rc = codec_decode(L, body, len, err, sizeof err);
    buf_consume(&c->in, FRAME_HEADER + len);
    if (rc < 0 || !lua_istable(L, -1)) {
        if (rc == 0)
            lua_pop(L, 1);
        log_warn("control", "connection %u: malformed request (%s), dropped",
                 c->id, rc < 0 ? err : "not a map");
        conn_close(c);
        return 0;
    }
    luart_push_ref(L, c->srv->on_request);
    luart_push_ref(L, c->anchor);
    lua_rotate(L, -3, 2);           /* fn, conn, request */
    if (luart_call(L, 2, 1, "control request") == LUA_OK) {
        if (c->srv && !lua_isnil(L, -1))
            conn_send(L, c, -1);
        lua_pop(L, 1);
    } else if (c->srv) {
        /* Logged by luart_call; the client gets an answer, not a wait. */
        push_failure(L, "the request failed in the agent (see its log)");
        conn_send(L, c, -1);
        lua_pop(L, 1);
    }
    return c->srv != NULL;
}

static void conn_dispatch(struct conn *c)
{
    lua_State *L = c->srv->L;
    luart_push_ref(L, c->anchor);   /* pin: Lua may close c meanwhile */
    while (conn_dispatch_one(L, c))
        ;
    lua_pop(L, 1);
}

static void on_conn_read(struct ev_loop *loop, ev_io *w, int revents)
{
    (void)loop; (void)revents;
    struct conn *c = (struct conn *)((char *)w - offsetof(struct conn, rio));
    char chunk[65536];
    for (;;) {
        ssize_t n = read(c->fd, chunk, sizeof chunk);
        if (n > 0) {
            if (buf_append(&c->in, chunk, (size_t)n) < 0) {
                conn_close(c);
                return;
            }
            if ((size_t)n < sizeof chunk)
                break;
            continue;
        }
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0 && errno == EAGAIN)
            break;
        conn_close(c);          /* EOF or error */
        return;
    }
    conn_dispatch(c);
}

static void on_conn_write(struct ev_loop *loop, ev_io *w, int revents)
{
    (void)loop; (void)revents;
    conn_flush((struct conn *)((char *)w - offsetof(struct conn, wio)));
}

static struct conn *check_conn(lua_State *L, int idx)
{
    return luaL_checkudata(L, idx, CONN_T);
}

/* conn:send(value) -> true | nil, "EPIPE: connection closed" */
static int l_conn_send(lua_State *L)
{
    struct conn *c = check_conn(L, 1);
    luaL_checkany(L, 2);
    if (c->srv == NULL)
        return luart_oserror(L, EPIPE, "connection closed");
    conn_send(L, c, 2);
    lua_pushboolean(L, 1);
    return 1;
}

/* conn:close([flush]): with flush, close once the output is written. */
static int l_conn_close(lua_State *L)
{
    struct conn *c = check_conn(L, 1);
    if (c->srv && lua_toboolean(L, 2) && buf_avail(&c->out) > 0)
        c->closing = 1;
    else
        conn_close(c);
    return 0;
}

static int l_conn_index(lua_State *L)
{
    struct conn *c = check_conn(L, 1);
    const char *k = luaL_checkstring(L, 2);
    if (strcmp(k, "id") == 0)
        lua_pushinteger(L, c->id);
    else if (strcmp(k, "uid") == 0)
        lua_pushinteger(L, c->uid);
    else if (strcmp(k, "open") == 0)
        lua_pushboolean(L, c->srv != NULL);
    else {
        lua_getmetatable(L, 1);
        lua_getfield(L, -1, k);
    }
    return 1;
}

/* ---- server ------------------------------------------------------------------ */

static void on_accept_pause(struct ev_loop *loop, ev_timer *w, int revents)
{
    (void)revents;
    struct server *s = (struct server *)((char *)w - offsetof(struct server, pause));
    if (s->fd >= 0)
        ev_io_start(loop, &s->io);
}

static void on_accept(struct ev_loop *loop, ev_io *w, int revents)
{
    (void)revents;
    struct server *s = (struct server *)w;
    lua_State *L = s->L;
    for (;;) {
        int fd = accept4(s->fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0) {
            if (errno == EINTR || errno == ECONNABORTED)
                continue;
            if (errno == EAGAIN || errno == EWOULDBLOCK)
                return;
            log_warn("control", "accept on %s: %s; pausing accepts for %g s",
                     s->path, strerror(errno), ACCEPT_PAUSE);
            ev_io_stop(loop, &s->io);
            ev_timer_set(&s->pause, ACCEPT_PAUSE, 0);
            ev_timer_start(loop, &s->pause);
            return;
        }
        struct ucred cred;
        socklen_t clen = sizeof cred;
        if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &clen) < 0 ||
            (cred.uid != 0 && cred.uid != geteuid())) {
            log_warn("control", "refused a connection from uid %d on %s",
                     (int)cred.uid, s->path);
            close(fd);
            continue;
        }
        struct conn *c = lua_newuserdatauv(L, sizeof *c, 0);
        memset(c, 0, sizeof *c);
        c->fd = fd;
        c->anchor = LUA_NOREF;
        c->srv = s;
        c->id = ++s->next_id;
        c->uid = cred.uid;
        buf_init(&c->in);
        buf_init(&c->out);
        luaL_setmetatable(L, CONN_T);
        c->anchor = luart_ref(L, -1);
        lua_pop(L, 1);
        c->next = s->conns;
        if (s->conns)
            s->conns->prev = c;
        s->conns = c;
        ev_io_init(&c->rio, on_conn_read, fd, EV_READ);
        ev_io_init(&c->wio, on_conn_write, fd, EV_WRITE);
        ev_io_start(loop, &c->rio);
    }
}

/* Refuses to steal the socket of a live agent; removes a stale one. */
static int claim_path(const char *path)
{
    struct stat st;
    if (lstat(path, &st) < 0)
        return errno == ENOENT ? 0 : -1;
    if (!S_ISSOCK(st.st_mode)) {
        errno = EEXIST;
        return -1;
    }
    struct sockaddr_un sa;
    if (fill_addr(&sa, path) < 0)
        return -1;
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -1;
    int rc = connect(fd, (struct sockaddr *)&sa, sizeof sa);
    int err = errno;
    close(fd);
    if (rc == 0) {
        errno = EADDRINUSE;
        return -1;
    }
    if (err != ECONNREFUSED) {
        errno = err;
        return -1;
    }
    return unlink(path);
}

/* listen(path, on_request[, on_close]) -> server | nil, err, code */
static int l_listen(lua_State *L)
{
    const char *path = luaL_checkstring(L, 1);
    luaL_checktype(L, 2, LUA_TFUNCTION);
    if (!lua_isnoneornil(L, 3))
        luaL_checktype(L, 3, LUA_TFUNCTION);
    struct server *s = lua_newuserdatauv(L, sizeof *s, 0);
    memset(s, 0, sizeof *s);
    s->fd = -1;
    s->on_request = s->on_close = s->anchor = LUA_NOREF;
    luaL_setmetatable(L, SERVER_T);

    struct sockaddr_un sa;
    if (fill_addr(&sa, path) < 0)
        return luart_oserror(L, errno, path);
    if (claim_path(path) < 0) {
        if (errno == EADDRINUSE)
            return luart_oserror(L, errno, lua_pushfstring(L,
                "%s (another agent is listening there)", path));
        return luart_oserror(L, errno, path);
    }
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return luart_oserror(L, errno, path);
    mode_t old = umask(077);     /* no window where the socket is 0666 */
    int rc = bind(fd, (struct sockaddr *)&sa, sizeof sa);
    umask(old);
    if (rc < 0 || chmod(path, 0600) < 0 || listen(fd, 128) < 0) {
        int err = errno;
        close(fd);
        return luart_oserror(L, err, path);
    }
    s->fd = fd;
    s->L = L;
    strcpy(s->path, path);
    s->on_request = luart_ref(L, 2);
    if (!lua_isnoneornil(L, 3))
        s->on_close = luart_ref(L, 3);
    s->anchor = luart_ref(L, -1);
    ev_io_init(&s->io, on_accept, fd, EV_READ);
    ev_timer_init(&s->pause, on_accept_pause, ACCEPT_PAUSE, 0);
    ev_io_start(luart_loop(L), &s->io);
    return 1;
}

/* server:close(): closes every connection and removes the socket file. */
static int l_server_close(lua_State *L)
{
    struct server *s = luaL_checkudata(L, 1, SERVER_T);
    if (s->fd < 0)
        return 0;
    while (s->conns)
        conn_close(s->conns);
    ev_io_stop(luart_loop(L), &s->io);
    ev_timer_stop(luart_loop(L), &s->pause);
    close(s->fd);
    s->fd = -1;
    unlink(s->path);
    luart_unref(L, &s->on_request);
    luart_unref(L, &s->on_close);
    luart_unref(L, &s->anchor);
    return 0;
}

static int l_server_path(lua_State *L)
{
    struct server *s = luaL_checkudata(L, 1, SERVER_T);
    lua_pushstring(L, s->path);
    return 1;
}

/* ---- blocking client (CLI side) ---------------------------------------------- */

struct client {
    int fd;               /* -1 once closed */
    struct buf in;
};

static struct client *check_client(lua_State *L)
{
    struct client *c = luaL_checkudata(L, 1, CLIENT_T);
    if (c->fd < 0)
        luaL_error(L, "control client is closed");
    return c;
}

/* connect(path) -> client | nil, err, code */
static int l_connect(lua_State *L)
{
    const char *path = luaL_checkstring(L, 1);
    struct client *c = lua_newuserdatauv(L, sizeof *c, 0);
    c->fd = -1;
    buf_init(&c->in);
    luaL_setmetatable(L, CLIENT_T);
    struct sockaddr_un sa;
    if (fill_addr(&sa, path) < 0)
        return luart_oserror(L, errno, path);
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return luart_oserror(L, errno, path);
    if (connect(fd, (struct sockaddr *)&sa, sizeof sa) < 0) {
        int err = errno;
        close(fd);
        return luart_oserror(L, err, path);
    }
    c->fd = fd;
    return 1;
}

/* client:send(value) -> true | nil, err, code */
static int l_client_send(lua_State *L)
{
    struct client *c = check_client(L);
    luaL_checkany(L, 2);
    struct buf out;
    char err[256];
    buf_init(&out);
    if (put_value(L, 2, &out, err, sizeof err) < 0) {
        buf_free(&out);
        return luaL_error(L, "cannot encode the request: %s", err);
    }
    while (buf_avail(&out) > 0) {
        ssize_t n = send(c->fd, buf_head(&out), buf_avail(&out), MSG_NOSIGNAL);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0) {
            int e = errno;
            buf_free(&out);
            return luart_oserror(L, e, "send");
        }
        buf_consume(&out, (size_t)n);
    }
    buf_free(&out);
    lua_pushboolean(L, 1);
    return 1;
}

static double mono_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* client:recv([timeout]) -> value | nil, err, code. Timeout in seconds;
 * none waits for ever. End of stream is "EPIPE: agent closed the connection". */
static int l_client_recv(lua_State *L)
{
    struct client *c = check_client(L);
    double timeout = luaL_optnumber(L, 2, -1);
    double deadline = timeout < 0 ? 0 : mono_now() + timeout;
    for (;;) {
        const char *body;
        size_t len;
        enum frame_status st = frame_next(&c->in, CONTROL_MAX_FRAME, &body, &len);
        if (st == FRAME_TOO_BIG)
            return luart_oserror(L, EMSGSIZE, "response");
        if (st == FRAME_READY) {
            char err[256];
            int rc = codec_decode(L, body, len, err, sizeof err);
            buf_consume(&c->in, FRAME_HEADER + len);
            if (rc < 0) {
                lua_pushnil(L);
                lua_pushfstring(L, "EPROTO: malformed response: %s", err);
                lua_pushliteral(L, "EPROTO");
                return 3;
            }
            return 1;
        }
        int wait = -1;
        if (deadline > 0) {
            double left = deadline - mono_now();
            if (left <= 0)
                return luart_oserror(L, ETIMEDOUT, "waiting for the agent");
            wait = (int)(left * 1000) + 1;
        }
        struct pollfd p = {.fd = c->fd, .events = POLLIN};
        int r = poll(&p, 1, wait);
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0)
            return luart_oserror(L, errno, "poll");
        if (r == 0)
            continue;
        char chunk[65536];
        ssize_t n = read(c->fd, chunk, sizeof chunk);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0)
            return luart_oserror(L, errno, "read");
        if (n == 0) {
            lua_pushnil(L);
            lua_pushliteral(L, "EPIPE: the agent closed the connection");
            lua_pushliteral(L, "EPIPE");
            return 3;
        }
        if (buf_append(&c->in, chunk, (size_t)n) < 0)
            return luaL_error(L, "out of memory");
    }
}

static int l_client_close(lua_State *L)
{
    struct client *c = luaL_checkudata(L, 1, CLIENT_T);
    if (c->fd >= 0)
        close(c->fd);
    c->fd = -1;
    buf_free(&c->in);
    return 0;
}

int luaopen_pogo_control(lua_State *L)
{
    static const luaL_Reg server_m[] = {
        {"close", l_server_close},
        {"path", l_server_path},
        {"__gc", l_server_close},
        {"__close", l_server_close},
        {NULL, NULL},
    };
    static const luaL_Reg conn_m[] = {
        {"send", l_conn_send},
        {"close", l_conn_close},
        {NULL, NULL},
    };
    static const luaL_Reg client_m[] = {
        {"send", l_client_send},
        {"recv", l_client_recv},
        {"close", l_client_close},
        {"__gc", l_client_close},
        {"__close", l_client_close},
        {NULL, NULL},
    };
    luart_newtype(L, SERVER_T, server_m, NULL);
    luart_newtype(L, CONN_T, conn_m, l_conn_index);
    luart_newtype(L, CLIENT_T, client_m, NULL);
    static const luaL_Reg fns[] = {
        {"listen", l_listen},
        {"connect", l_connect},
        {NULL, NULL},
    };
    luaL_newlib(L, fns);
    return 1;
}
