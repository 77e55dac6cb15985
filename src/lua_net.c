/*
 * lua_net.c - pogo.core.net: small network mechanisms for Lua.
 *
 * probe(): does a TCP port accept connections? A non-blocking connect on
 * the agent's loop, with a deadline; used by the "tcp" readiness check.
 */
#include <errno.h>
#include <netdb.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "pogo.h"

#define PROBE_T "pogo.probe"

struct probe {
    ev_io io;             /* writable: the connect finished */
    ev_timer timer;       /* the deadline */
    lua_State *L;         /* NULL once finished or closed */
    int fd;
    int settled;          /* connect() finished at once; result holds errno */
    int result;
    int callback;         /* registry ref: fn(ok, err) */
    int anchor;           /* registry ref of the userdata while pending */
};

static void probe_stop(struct probe *p)
{
    struct ev_loop *loop = luart_loop(p->L);
    ev_io_stop(loop, &p->io);
    ev_timer_stop(loop, &p->timer);
    if (p->fd >= 0)
        close(p->fd);
    p->fd = -1;
}

/* Finishes the probe once: stop watchers, run fn(ok, err), drop refs. */
static void probe_finish(struct probe *p, int err)
{
    lua_State *L = p->L;
    if (L == NULL)
        return;
    probe_stop(p);
    p->L = NULL;
    luart_push_ref(L, p->callback);
    lua_pushboolean(L, err == 0);
    if (err)
        lua_pushfstring(L, "%s: %s", errno_name(err), strerror(err));
    else
        lua_pushnil(L);
    luart_unref(L, &p->callback);
    int anchor = p->anchor;
    p->anchor = LUA_NOREF;
    luart_call(L, 2, 0, "net.probe callback");
    luart_unref(L, &anchor);      /* last: p may be collected after this */
}

static void on_connected(struct ev_loop *loop, ev_io *w, int revents)
{
    (void)loop; (void)revents;
    struct probe *p = (struct probe *)w;
    int err = 0;
    socklen_t len = sizeof err;
    if (getsockopt(p->fd, SOL_SOCKET, SO_ERROR, &err, &len) < 0)
        err = errno;
    probe_finish(p, err);
}

static void on_deadline(struct ev_loop *loop, ev_timer *w, int revents)
{
    (void)loop; (void)revents;
    struct probe *p = (struct probe *)((char *)w - offsetof(struct probe, timer));
    probe_finish(p, p->settled ? p->result : ETIMEDOUT);
}

/* probe(host, port, timeout, fn) -> probe | nil, err, code
 * fn(true) once the port accepts a connection, fn(false, "ECONNREFUSED: ...")
 * when it refuses or the timeout passes. Host names are resolved with
 * getaddrinfo, which may block: readiness hosts are meant to be local
 * addresses or /etc/hosts names. [-0, +1|3, v] */
static int l_probe(lua_State *L)
{
    const char *host = luaL_checkstring(L, 1);
    lua_Integer port = luaL_checkinteger(L, 2);
    double timeout = luaL_checknumber(L, 3);
    luaL_checktype(L, 4, LUA_TFUNCTION);
    luaL_argcheck(L, port > 0 && port < 65536, 2, "port out of range");

    struct probe *p = lua_newuserdatauv(L, sizeof *p, 0);
    memset(p, 0, sizeof *p);
    p->fd = -1;
    p->callback = p->anchor = LUA_NOREF;
    luaL_setmetatable(L, PROBE_T);

    char portstr[8];
    snprintf(portstr, sizeof portstr, "%d", (int)port);
    struct addrinfo hints = {.ai_socktype = SOCK_STREAM}, *res;
    int gai = getaddrinfo(*host ? host : "127.0.0.1", portstr, &hints, &res);
    if (gai != 0) {
        lua_pushnil(L);
        lua_pushfstring(L, "EAI: %s: %s", host, gai_strerror(gai));
        lua_pushliteral(L, "EAI");
        return 3;
    }
    int fd = socket(res->ai_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        freeaddrinfo(res);
        return luart_oserror(L, errno, host);
    }
    int rc = connect(fd, res->ai_addr, res->ai_addrlen);
    int err = rc < 0 ? errno : 0;
    freeaddrinfo(res);
    p->fd = fd;
    p->L = L;
    p->callback = luart_ref(L, 4);
    p->anchor = luart_ref(L, -1);
    struct ev_loop *loop = luart_loop(L);
    ev_io_init(&p->io, on_connected, fd, EV_WRITE);
    ev_timer_init(&p->timer, on_deadline, timeout, 0);
    if (rc == 0 || err != EINPROGRESS) {
        /* Settled at once (loopback often is): report from the loop, not
         * from inside this call, so callers see one calling convention. */
        p->settled = 1;
        p->result = err;
        ev_timer_set(&p->timer, 0, 0);
        ev_timer_start(loop, &p->timer);
        return 1;
    }
    ev_io_start(loop, &p->io);
    ev_timer_start(loop, &p->timer);
    return 1;
}

static int l_close(lua_State *L)
{
    struct probe *p = luaL_checkudata(L, 1, PROBE_T);
    if (p->L == NULL)
        return 0;
    probe_stop(p);
    luart_unref(L, &p->callback);
    luart_unref(L, &p->anchor);
    p->L = NULL;
    return 0;
}

int luaopen_pogo_net(lua_State *L)
{
    static const luaL_Reg methods[] = {
        {"close", l_close},
        {"__gc", l_close},
        {"__close", l_close},
        {NULL, NULL},
    };
    luart_newtype(L, PROBE_T, methods, NULL);
    static const luaL_Reg fns[] = {
        {"probe", l_probe},
        {NULL, NULL},
    };
    luaL_newlib(L, fns);
    return 1;
}
