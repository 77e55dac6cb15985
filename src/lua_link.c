/*
 * lua_link.c - pogo.core.link: authenticated links between agents, for Lua.
 *
 *   link.init{ name = s, incarnation = n?, keyfile = path,
 *              handshake_timeout = secs?, dial_timeout = secs? }
 *       -> incarnation | nil, err
 *     Loads the keyring; the incarnation is random (63 bits) when not
 *     given. Defaults: handshake 3 s (connected to up), dial 2 s.
 *   link.reload_keys() -> true | nil, err
 *     Re-reads the key file; links already up keep their sessions.
 *   link.on{ up = fn(link), message = fn(link, value),
 *            down = fn(link, reason), failed = fn(host, port, reason, link) }
 *     Replaces every callback (a field left out is cleared). up: once per
 *     link both sides kept. message: each value, in order. down: once for
 *     every link that fired up ("closed by peer", "closed by peer: why",
 *     "closed locally: why", "authentication failed on a frame", ...).
 *     failed: a link we dialled that never came up (refused, timed out,
 *     handshake failed, a duplicate of a link already up), so Lua can back
 *     off and retry. Links that never came up never fire down.
 *   link.listen(host, port) -> listener | nil, err, code
 *     Numeric host ("" or "*": 0.0.0.0); port 0 picks one.
 *     listener:port(), listener:addr(), listener:close().
 *   link.dial(host, port) -> link | nil, err, code
 *     Numeric host; the outcome comes as up or failed.
 *   link.links() -> the links that are up, oldest first.
 *   link.shutdown(): closes every listener and link; no callback after it.
 *
 *   A link (pogo.link): fields id, peer (nil until authenticated),
 *   incarnation (the peer's), addr ("host:port"), initiator, state
 *   ("connecting" | "handshake" | "up" | "closed"); methods
 *   send(value) -> true | nil, err, code (a value MessagePack cannot
 *   carry raises), close([reason]), stats() -> { bytes_in, bytes_out,
 *   frames_in, frames_out, queued }.
 *
 * Callbacks never run inside a call from Lua: down and failed come from
 * the loop, after the call that caused them (close, send) has returned.
 */
#include <errno.h>
#include <inttypes.h>
#include <string.h>

#include "pogo.h"


#define MODULE_T "pogo.link_module"
#define LINK_T "pogo.link"
#define LISTENER_T "pogo.listener"

#define DEFAULT_HANDSHAKE_TIMEOUT 3.0
#define DEFAULT_DIAL_TIMEOUT 2.0

struct lhandle;

/* The module's state: the upvalue of every function and method. */
struct module {
    lua_State *L;
    struct link_ctx *ctx;       /* NULL once collected */
    int on_up, on_message, on_down, on_failed;  /* registry refs */
    struct lhandle *listeners;  /* open listeners, anchored */
    struct buf enc;             /* scratch: the value being sent */
};

/* A pogo.link. */
struct handle {
    struct link *l;             /* NULL once released */
    int anchor;                 /* registry ref while link.c may report on it */
};

/* A pogo.listener. */
struct lhandle {
    struct link_listener *ln;   /* NULL once freed */
    struct module *m;           /* NULL once the module is gone */
    struct lhandle *prev, *next;
    int anchor;                 /* registry ref while open */
};

static const char *const state_names[] = {"connecting", "handshake", "up",
                                          "closed"};

/* [-0, +0, -] */
static struct module *module_of(lua_State *L)
{
    return lua_touserdata(L, lua_upvalueindex(1));
}

/* Raises unless link.init succeeded (and no shutdown since). [-0, +0, v] */
static struct module *ready_module(lua_State *L)
{
    struct module *m = module_of(L);
    if (m->ctx == NULL || !link_ctx_ready(m->ctx))
        luaL_error(L, "link: call link.init first");
    return m;
}

/* ---- handles ------------------------------------------------------------ */

/* A handle for l, in a closed state until the caller fills it. [-0, +1, m] */
static struct handle *new_handle(lua_State *L)
{
    struct handle *h = lua_newuserdatauv(L, sizeof *h, 0);
    h->l = NULL;
    h->anchor = LUA_NOREF;
    luaL_setmetatable(L, LINK_T);
    return h;
}

/* [-0, +0, v] */
static struct handle *check_handle(lua_State *L, int idx)
{
    return luaL_checkudata(L, idx, LINK_T);
}

/* ---- what link.c reports ---------------------------------------------------- */

/* [-0, +0, -] */
static void h_up(void *ud, struct link *l)
{
    struct module *m = ud;
    lua_State *L = m->L;
    struct handle *h = link_owner(l);

    if (h == NULL) {                /* incoming: its first appearance in Lua */
        h = new_handle(L);
        h->l = l;
        h->anchor = luart_ref(L, -1);
        link_set_owner(l, h);
        lua_pop(L, 1);
    }
    if (m->on_up == LUA_NOREF)
        return;
    luart_push_ref(L, m->on_up);
    luart_push_ref(L, h->anchor);
    luart_call(L, 1, 0, "link up callback");
}

/* [-0, +0, -] */
static int h_message(void *ud, struct link *l, const char *body, size_t len,
                     char *err, size_t errlen)
{
    struct module *m = ud;
    lua_State *L = m->L;
    struct handle *h = link_owner(l);

    if (m->on_message == LUA_NOREF)
        return 0;
    luart_push_ref(L, m->on_message);
    luart_push_ref(L, h->anchor);
    if (codec_decode(L, body, len, err, errlen) < 0) {
        lua_pop(L, 2);
        return -1;
    }
    luart_call(L, 2, 0, "link message callback");
    return 0;
}

/* The end of an owned link: down or failed, then the anchor goes, so the
 * handle can be collected once Lua lets go of it too. QUIET calls come
 * from inside link_ctx_shutdown and must not run Lua. [-0, +0, -] */
static void h_closed(void *ud, struct link *l, enum link_end end,
                     const char *reason)
{
    struct module *m = ud;
    lua_State *L = m->L;
    struct handle *h = link_owner(l);
    int anchor = h->anchor;

    h->anchor = LUA_NOREF;
    if (end == LINK_END_DOWN && m->on_down != LUA_NOREF) {
        luart_push_ref(L, m->on_down);
        luart_push_ref(L, anchor);
        lua_pushstring(L, reason);
        luart_call(L, 2, 0, "link down callback");
    } else if (end == LINK_END_FAILED && m->on_failed != LUA_NOREF) {
        luart_push_ref(L, m->on_failed);
        lua_pushstring(L, link_host(l));
        lua_pushinteger(L, link_port(l));
        lua_pushstring(L, reason);
        luart_push_ref(L, anchor);
        luart_call(L, 4, 0, "link failed callback");
    }
    luart_unref(L, &anchor);
}

/* ---- link methods ----------------------------------------------------------- */

/* link:send(value) -> true | nil, err, code. [-0, +(1|3), v] */
static int l_send(lua_State *L)
{
    struct module *m = module_of(L);
    struct handle *h = check_handle(L, 1);
    char err[256];

    luaL_checkany(L, 2);
    if (h->l == NULL)
        return luart_oserror(L, EPIPE, "link closed");
    if (link_state(h->l) != LINK_UP)
        return luart_oserror(L, link_state(h->l) == LINK_CLOSED ? EPIPE : ENOTCONN,
                          link_state(h->l) == LINK_CLOSED ? "link closed"
                                                          : "link not up yet");
    struct buf *enc = &m->enc;
    buf_consume(enc, buf_avail(enc));
    if (codec_encode(L, 2, enc, err, sizeof err) < 0) {
        buf_consume(enc, buf_avail(enc));
        return luaL_error(L, "link:send: cannot encode the message: %s", err);
    }
    int rc = link_send(h->l, buf_head(enc), buf_avail(enc), err, sizeof err);
    int e = errno;
    buf_consume(enc, buf_avail(enc));
    if (rc < 0)
        return luart_oserror(L, e, err);
    lua_pushboolean(L, 1);
    return 1;
}

/* link:close([reason]): the peer sees "closed by peer: reason"; down
 * follows from the loop if the link was up. [-0, +0, v] */
static int l_close(lua_State *L)
{
    struct handle *h = check_handle(L, 1);
    const char *why = luaL_optstring(L, 2, "");

    if (h->l)
        link_close(h->l, why);
    return 0;
}

/* link:stats() -> table. [-0, +1, m] */
static int l_stats(lua_State *L)
{
    struct handle *h = check_handle(L, 1);
    struct link_stats st;

    memset(&st, 0, sizeof st);
    if (h->l)
        link_get_stats(h->l, &st);
    lua_createtable(L, 0, 5);
    lua_pushinteger(L, (lua_Integer)st.bytes_in);
    lua_setfield(L, -2, "bytes_in");
    lua_pushinteger(L, (lua_Integer)st.bytes_out);
    lua_setfield(L, -2, "bytes_out");
    lua_pushinteger(L, (lua_Integer)st.frames_in);
    lua_setfield(L, -2, "frames_in");
    lua_pushinteger(L, (lua_Integer)st.frames_out);
    lua_setfield(L, -2, "frames_out");
    lua_pushinteger(L, (lua_Integer)st.queued);
    lua_setfield(L, -2, "queued");
    return 1;
}

/* Fields, then methods. [-0, +1, m] */
static int l_index(lua_State *L)
{
    struct handle *h = check_handle(L, 1);
    const char *k = luaL_checkstring(L, 2);
    struct link *l = h->l;

    if (strcmp(k, "state") == 0)
        lua_pushstring(L, state_names[l ? link_state(l) : LINK_CLOSED]);
    else if (l == NULL && (strcmp(k, "id") == 0 || strcmp(k, "peer") == 0 ||
                           strcmp(k, "incarnation") == 0 ||
                           strcmp(k, "addr") == 0 ||
                           strcmp(k, "initiator") == 0))
        lua_pushnil(L);
    else if (strcmp(k, "id") == 0)
        lua_pushinteger(L, (lua_Integer)link_id(l));
    else if (strcmp(k, "peer") == 0)
        lua_pushstring(L, link_peer(l));        /* nil while unknown */
    else if (strcmp(k, "incarnation") == 0) {
        if (link_peer(l))
            lua_pushinteger(L, (lua_Integer)link_peer_incarnation(l));
        else
            lua_pushnil(L);
    } else if (strcmp(k, "addr") == 0)
        lua_pushstring(L, link_addr(l));
    else if (strcmp(k, "initiator") == 0)
        lua_pushboolean(L, link_initiator(l));
    else {
        lua_getmetatable(L, 1);
        lua_getfield(L, -1, k);
    }
    return 1;
}

/* [-0, +1, m] */
static int l_tostring(lua_State *L)
{
    struct handle *h = check_handle(L, 1);

    if (h->l == NULL) {
        lua_pushfstring(L, "pogo.link (released): %p", (void *)h);
        return 1;
    }
    const char *peer = link_peer(h->l);
    lua_pushfstring(L, "pogo.link %I (%s, %s %s%s%s)", (lua_Integer)link_id(h->l),
                    state_names[link_state(h->l)],
                    link_initiator(h->l) ? "to" : "from", link_addr(h->l),
                    peer ? ", " : "", peer ? peer : "");
    return 1;
}

/* __gc: the handle is only collectable once link.c is done reporting on
 * it, or at the end of the state; either way the link goes quietly. No
 * __close: leaving a scope must not skip the down callback, and
 * link:close() is there for that. [-0, +0, -] */
static int l_gc(lua_State *L)
{
    struct handle *h = check_handle(L, 1);

    if (h->l) {
        link_release(h->l);
        h->l = NULL;
    }
    luart_unref(L, &h->anchor);
    return 0;
}

/* ---- listeners ---------------------------------------------------------------- */

/* [-0, +0, v] */
static struct lhandle *check_listener(lua_State *L, int idx)
{
    return luaL_checkudata(L, idx, LISTENER_T);
}

/* Closes, frees and un-anchors; idempotent. [-0, +0, -] */
static void listener_close(lua_State *L, struct lhandle *lh)
{
    if (lh->ln) {
        link_listener_free(lh->ln);
        lh->ln = NULL;
    }
    if (lh->m) {
        if (lh->prev) lh->prev->next = lh->next; else lh->m->listeners = lh->next;
        if (lh->next) lh->next->prev = lh->prev;
        lh->m = NULL;
    }
    lh->prev = lh->next = NULL;
    luart_unref(L, &lh->anchor);
}

/* listener:close(), __gc, __close. [-0, +0, v] */
static int l_listener_close(lua_State *L)
{
    listener_close(L, check_listener(L, 1));
    return 0;
}

/* listener:port() -> port | nil once closed. [-0, +1, v] */
static int l_listener_port(lua_State *L)
{
    struct lhandle *lh = check_listener(L, 1);

    if (lh->ln == NULL || !link_listener_open(lh->ln))
        lua_pushnil(L);
    else
        lua_pushinteger(L, link_listener_port(lh->ln));
    return 1;
}

/* listener:addr() -> "host:port" | nil once closed. [-0, +1, v] */
static int l_listener_addr(lua_State *L)
{
    struct lhandle *lh = check_listener(L, 1);

    if (lh->ln == NULL || !link_listener_open(lh->ln))
        lua_pushnil(L);
    else
        lua_pushstring(L, link_listener_addr(lh->ln));
    return 1;
}

/* [-0, +1, m] */
static int l_listener_tostring(lua_State *L)
{
    struct lhandle *lh = check_listener(L, 1);

    if (lh->ln == NULL || !link_listener_open(lh->ln))
        lua_pushliteral(L, "pogo.listener (closed)");
    else
        lua_pushfstring(L, "pogo.listener (%s)", link_listener_addr(lh->ln));
    return 1;
}

/* ---- module functions ----------------------------------------------------------- */

static int valid_name(const char *s, size_t n)
{
    if (n < 1 || n > LINK_NAME_MAX)
        return 0;
    for (size_t i = 0; i < n; i++) {
        unsigned char ch = (unsigned char)s[i];
        if (!((ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') ||
              (ch >= '0' && ch <= '9') || ch == '.' || ch == '_' || ch == '-'))
            return 0;
    }
    return 1;
}

/* A positive number of seconds at t[field], or dflt. [-0, +0, v] */
static double opt_seconds(lua_State *L, int t, const char *field, double dflt)
{
    double v = dflt;

    if (lua_getfield(L, t, field) != LUA_TNIL) {
        if (!lua_isnumber(L, -1))
            luaL_error(L, "link.init: '%s' must be a number of seconds", field);
        v = lua_tonumber(L, -1);
        if (!(v > 0))
            luaL_error(L, "link.init: '%s' must be positive", field);
    }
    lua_pop(L, 1);
    return v;
}

/* init{ name, incarnation?, keyfile, handshake_timeout?, dial_timeout?,
 *       source? (numeric IP to dial from) }
 * -> incarnation | nil, err. [-0, +(1|2), v] */
static int l_init(lua_State *L)
{
    struct module *m = module_of(L);
    struct link_setup s;
    size_t n;
    char err[512];

    luaL_checktype(L, 1, LUA_TTABLE);
    if (link_ctx_busy(m->ctx))
        return luaL_error(L, "link.init: links or listeners are open; call "
                          "link.shutdown first");
    lua_getfield(L, 1, "name");
    s.name = lua_tolstring(L, -1, &n);
    if (s.name == NULL || !valid_name(s.name, n))
        return luaL_error(L, "link.init: 'name' must be 1..%d characters of "
                          "A-Z a-z 0-9 . _ -", LINK_NAME_MAX);
    lua_getfield(L, 1, "keyfile");
    s.keyfile = lua_tostring(L, -1);
    if (s.keyfile == NULL)
        return luaL_error(L, "link.init: 'keyfile' must be a path");
    s.handshake_timeout = opt_seconds(L, 1, "handshake_timeout",
                                      DEFAULT_HANDSHAKE_TIMEOUT);
    s.dial_timeout = opt_seconds(L, 1, "dial_timeout", DEFAULT_DIAL_TIMEOUT);
    lua_getfield(L, 1, "source");
    s.source = lua_tostring(L, -1);     /* stays on the stack until return */
    if (crypto_setup() < 0) {
        lua_pushnil(L);
        lua_pushliteral(L, "libsodium failed to initialise");
        return 2;
    }
    if (lua_getfield(L, 1, "incarnation") == LUA_TNIL) {
        /* 63 bits: a non-negative Lua integer, and never 0. */
        do
            randombytes_buf(&s.incarnation, sizeof s.incarnation);
        while ((s.incarnation &= INT64_MAX) == 0);
    } else {
        int isint;
        lua_Integer inc = lua_tointegerx(L, -1, &isint);
        if (!isint || inc <= 0)
            return luaL_error(L, "link.init: 'incarnation' must be a positive "
                              "integer");
        s.incarnation = (uint64_t)inc;
    }
    lua_pop(L, 1);
    if (link_ctx_setup(m->ctx, &s, err, sizeof err) < 0) {
        lua_pushnil(L);
        lua_pushstring(L, err);
        return 2;
    }
    lua_pushinteger(L, (lua_Integer)s.incarnation);
    return 1;
}

/* reload_keys() -> true | nil, err. [-0, +(1|2), v] */
static int l_reload_keys(lua_State *L)
{
    struct module *m = module_of(L);
    char err[512];

    if (m->ctx == NULL || link_ctx_reload_keys(m->ctx, err, sizeof err) < 0) {
        lua_pushnil(L);
        lua_pushstring(L, m->ctx ? err : "link: not initialised");
        return 2;
    }
    lua_pushboolean(L, 1);
    return 1;
}

/* *ref = a ref to t[field], or LUA_NOREF if nil. [-0, +0, v] */
static void set_callback(lua_State *L, int t, const char *field, int *ref)
{
    luart_unref(L, ref);
    lua_getfield(L, t, field);
    if (!lua_isnil(L, -1)) {
        if (!lua_isfunction(L, -1))
            luaL_error(L, "link.on: '%s' must be a function", field);
        *ref = luart_ref(L, -1);
    }
    lua_pop(L, 1);
}

/* on{ up, message, down, failed }: replaces every callback. [-0, +0, v] */
static int l_on(lua_State *L)
{
    struct module *m = module_of(L);

    luaL_checktype(L, 1, LUA_TTABLE);
    static const char *const fields[] = {"up", "message", "down", "failed"};
    for (int i = 0; i < 4; i++) {
        lua_getfield(L, 1, fields[i]);
        int ok = lua_isnil(L, -1) || lua_isfunction(L, -1);
        lua_pop(L, 1);
        if (!ok)                    /* checked first: all or nothing */
            return luaL_error(L, "link.on: '%s' must be a function", fields[i]);
    }
    set_callback(L, 1, "up", &m->on_up);
    set_callback(L, 1, "message", &m->on_message);
    set_callback(L, 1, "down", &m->on_down);
    set_callback(L, 1, "failed", &m->on_failed);
    return 0;
}

/* [-0, +0, v] */
static int check_port(lua_State *L, int idx, int allow_zero)
{
    lua_Integer port = luaL_checkinteger(L, idx);
    luaL_argcheck(L, port >= (allow_zero ? 0 : 1) && port <= 65535, idx,
                  "port out of range");
    return (int)port;
}

/* listen(host, port) -> listener | nil, err, code. [-0, +(1|3), v] */
static int l_listen(lua_State *L)
{
    struct module *m = ready_module(L);
    const char *host = luaL_checkstring(L, 1);
    int port = check_port(L, 2, 1);
    char err[256];

    struct lhandle *lh = lua_newuserdatauv(L, sizeof *lh, 0);
    memset(lh, 0, sizeof *lh);
    lh->anchor = LUA_NOREF;
    luaL_setmetatable(L, LISTENER_T);
    lh->ln = link_listen(m->ctx, host, port, err, sizeof err);
    if (lh->ln == NULL)
        return luart_oserror(L, errno, err);
    /* Anchored while open: a listener nobody holds keeps listening until
     * closed or link.shutdown. */
    lh->anchor = luart_ref(L, -1);
    lh->m = m;
    lh->next = m->listeners;
    if (m->listeners)
        m->listeners->prev = lh;
    m->listeners = lh;
    return 1;
}

/* dial(host, port) -> link | nil, err, code. [-0, +(1|3), v] */
static int l_dial(lua_State *L)
{
    struct module *m = ready_module(L);
    const char *host = luaL_checkstring(L, 1);
    int port = check_port(L, 2, 0);
    char err[256];

    struct handle *h = new_handle(L);
    h->l = link_dial(m->ctx, host, port, h, err, sizeof err);
    if (h->l == NULL)
        return luart_oserror(L, errno, err);
    h->anchor = luart_ref(L, -1);   /* until up/failed/down has been reported */
    return 1;
}

/* links() -> { link, ... } up, oldest first. [-0, +1, m] */
static int l_links(lua_State *L)
{
    struct module *m = module_of(L);
    int i = 0;

    lua_newtable(L);
    if (m->ctx == NULL)
        return 1;
    for (struct link *l = link_first_up(m->ctx); l; l = link_next_up(l)) {
        struct handle *h = link_owner(l);
        luart_push_ref(L, h->anchor);
        lua_rawseti(L, -2, ++i);
    }
    return 1;
}

/* shutdown(): every listener and link closed; no callback after this.
 * [-0, +0, -] */
static int l_shutdown(lua_State *L)
{
    struct module *m = module_of(L);

    while (m->listeners)
        listener_close(L, m->listeners);
    if (m->ctx)
        link_ctx_shutdown(m->ctx);
    return 0;
}

/* The module's __gc, at the end of the state. [-0, +0, -] */
static int l_module_gc(lua_State *L)
{
    struct module *m = luaL_checkudata(L, 1, MODULE_T);

    while (m->listeners)
        listener_close(L, m->listeners);
    link_ctx_free(m->ctx);      /* owned links get closed(QUIET): unref'd */
    m->ctx = NULL;
    luart_unref(L, &m->on_up);
    luart_unref(L, &m->on_message);
    luart_unref(L, &m->on_down);
    luart_unref(L, &m->on_failed);
    buf_free(&m->enc);
    return 0;
}

/* [-0, +1, m] */
int luaopen_pogo_link(lua_State *L)
{
    static const luaL_Reg link_m[] = {
        {"send", l_send},
        {"close", l_close},
        {"stats", l_stats},
        {"__index", l_index},
        {"__tostring", l_tostring},
        {"__gc", l_gc},
        {NULL, NULL},
    };
    static const luaL_Reg listener_m[] = {
        {"port", l_listener_port},
        {"addr", l_listener_addr},
        {"close", l_listener_close},
        {"__tostring", l_listener_tostring},
        {"__gc", l_listener_close},
        {"__close", l_listener_close},
        {NULL, NULL},
    };
    static const luaL_Reg fns[] = {
        {"init", l_init},
        {"reload_keys", l_reload_keys},
        {"on", l_on},
        {"listen", l_listen},
        {"dial", l_dial},
        {"links", l_links},
        {"shutdown", l_shutdown},
        {NULL, NULL},
    };
    static const struct link_handlers handlers = {
        .up = h_up, .message = h_message, .closed = h_closed,
    };

    /* The module state first: finalizers run in reverse order of creation,
     * so at the end of the state every handle goes before it. */
    struct module *m = lua_newuserdatauv(L, sizeof *m, 0);   /* [m] */
    memset(m, 0, sizeof *m);
    m->L = L;
    m->on_up = m->on_message = m->on_down = m->on_failed = LUA_NOREF;
    buf_init(&m->enc);
    luaL_newmetatable(L, MODULE_T);
    lua_pushcfunction(L, l_module_gc);
    lua_setfield(L, -2, "__gc");
    lua_setmetatable(L, -2);
    m->ctx = link_ctx_new(luart_loop(L), &handlers, m);
    if (m->ctx == NULL)
        return luaL_error(L, "link: out of memory");

    luaL_newmetatable(L, LINK_T);                              /* [m, mt] */
    lua_pushvalue(L, -2);
    luaL_setfuncs(L, link_m, 1);
    lua_pop(L, 1);
    luaL_newmetatable(L, LISTENER_T);
    lua_pushvalue(L, -2);
    luaL_setfuncs(L, listener_m, 1);
    lua_pushvalue(L, -1);
    lua_setfield(L, -2, "__index");
    lua_pop(L, 1);

    luaL_newlibtable(L, fns);                                  /* [m, lib] */
    lua_pushvalue(L, -2);
    luaL_setfuncs(L, fns, 1);
    lua_remove(L, -2);                                         /* [lib] */
    return 1;
}
