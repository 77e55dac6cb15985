/*
 * lua_fswatch.c - pogo.core.fswatch: directory watches through inotify.
 *
 * One inotify fd per agent, one ev_io on it. A watch is on a directory, so
 * every editor's save pattern (write in place, truncate + write, write a
 * temp file + rename, delete + create) shows up as events on an entry
 * name; callers debounce and compare contents. ev_stat is not enough here:
 * it compares stat fields at one-second granularity and misses a same-size
 * rewrite within a second.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/inotify.h>
#include <unistd.h>

#include "pogo.h"

#define WATCH_T "pogo.fswatch"

#define WATCH_MASK (IN_CLOSE_WRITE | IN_MODIFY | IN_MOVED_TO | IN_MOVED_FROM | \
                    IN_CREATE | IN_DELETE | IN_ATTRIB | IN_DELETE_SELF | \
                    IN_MOVE_SELF | IN_ONLYDIR)

struct fswatch {
    lua_State *L;          /* NULL once closed */
    int wd;                /* inotify watch descriptor */
    int callback;          /* registry ref: fn(name, event) */
    int anchor;            /* registry ref of the userdata while open */
    struct fswatch *next;  /* every open watch, for dispatch */
};

static struct {
    int fd;                /* -1 until the first watch */
    ev_io io;
    struct fswatch *watches;
} infy = {.fd = -1};

static const char *event_name(uint32_t mask)
{
    if (mask & (IN_DELETE | IN_MOVED_FROM)) return "removed";
    if (mask & (IN_CREATE | IN_MOVED_TO)) return "created";
    if (mask & (IN_DELETE_SELF | IN_MOVE_SELF | IN_IGNORED)) return "gone";
    return "changed";
}

/* Runs fn(name, event) of every watch on wd. Watches of the same directory
 * share a wd (inotify returns the existing one). The matching watches are
 * pinned on the stack first, so a callback may close any watch. */
static void dispatch(lua_State *L, const struct inotify_event *ev)
{
    int base = lua_gettop(L), n = 0;
    for (struct fswatch *w = infy.watches; w; w = w->next) {
        if (w->wd == ev->wd && w->L != NULL && lua_checkstack(L, 4)) {
            luart_push_ref(L, w->anchor);
            n++;
        }
    }
    for (int i = 1; i <= n; i++) {
        struct fswatch *w = lua_touserdata(L, base + i);
        if (w->L == NULL)
            continue;
        luart_push_ref(L, w->callback);
        if (ev->len > 0)
            lua_pushstring(L, ev->name);
        else
            lua_pushnil(L);
        lua_pushstring(L, event_name(ev->mask));
        luart_call(L, 2, 0, "fswatch callback");
    }
    lua_settop(L, base);
}

static void on_inotify(struct ev_loop *loop, ev_io *io, int revents)
{
    (void)loop; (void)revents;
    lua_State *L = io->data;
    char buf[16384] __attribute__((aligned(__alignof__(struct inotify_event))));
    for (;;) {
        ssize_t n = read(infy.fd, buf, sizeof buf);
        if (n <= 0) {
            if (n < 0 && errno != EAGAIN && errno != EINTR)
                log_warn("fswatch", "read inotify: %s", strerror(errno));
            return;
        }
        for (char *p = buf; p < buf + n;) {
            const struct inotify_event *ev = (const struct inotify_event *)p;
            if (ev->mask & IN_Q_OVERFLOW) {
                /* Lost events: tell everyone to rescan. */
                for (struct fswatch *w = infy.watches; w; w = w->next) {
                    struct inotify_event fake = {.wd = w->wd, .mask = IN_MODIFY};
                    dispatch(L, &fake);
                }
            } else {
                dispatch(L, ev);
            }
            p += sizeof *ev + ev->len;
        }
    }
}

static int ensure_inotify(lua_State *L)
{
    if (infy.fd >= 0)
        return 0;
    infy.fd = inotify_init1(IN_NONBLOCK | IN_CLOEXEC);
    if (infy.fd < 0)
        return -1;
    ev_io_init(&infy.io, on_inotify, infy.fd, EV_READ);
    infy.io.data = L;
    ev_io_start(luart_loop(L), &infy.io);
    return 0;
}

/* dir(path, fn) -> watch | nil, err, code. fn(name, event) runs for every
 * change of an entry of the directory; event is "created", "removed",
 * "changed", or "gone" (the directory itself went away; name is nil). */
static int l_dir(lua_State *L)
{
    const char *path = luaL_checkstring(L, 1);
    luaL_checktype(L, 2, LUA_TFUNCTION);
    struct fswatch *w = lua_newuserdatauv(L, sizeof *w, 0);
    memset(w, 0, sizeof *w);
    w->callback = w->anchor = LUA_NOREF;
    w->wd = -1;
    luaL_setmetatable(L, WATCH_T);
    if (ensure_inotify(L) < 0)
        return luart_oserror(L, errno, "inotify");
    int wd = inotify_add_watch(infy.fd, path, WATCH_MASK);
    if (wd < 0)
        return luart_oserror(L, errno, path);
    w->wd = wd;
    w->L = L;
    w->callback = luart_ref(L, 2);
    w->anchor = luart_ref(L, -1);
    w->next = infy.watches;
    infy.watches = w;
    return 1;
}

static int l_close(lua_State *L)
{
    struct fswatch *w = luaL_checkudata(L, 1, WATCH_T);
    if (w->L == NULL)
        return 0;
    w->L = NULL;
    int shared = 0;
    for (struct fswatch **pp = &infy.watches; *pp;) {
        if (*pp == w) {
            *pp = w->next;
            continue;
        }
        if ((*pp)->wd == w->wd)
            shared = 1;
        pp = &(*pp)->next;
    }
    if (!shared)
        inotify_rm_watch(infy.fd, w->wd);
    luart_unref(L, &w->callback);
    luart_unref(L, &w->anchor);
    if (infy.watches == NULL && infy.fd >= 0) {
        ev_io_stop(luart_loop(L), &infy.io);
        close(infy.fd);
        infy.fd = -1;
    }
    return 0;
}

int luaopen_pogo_fswatch(lua_State *L)
{
    static const luaL_Reg methods[] = {
        {"close", l_close},
        {"__gc", l_close},
        {"__close", l_close},
        {NULL, NULL},
    };
    luart_newtype(L, WATCH_T, methods, NULL);
    static const luaL_Reg fns[] = {
        {"dir", l_dir},
        {NULL, NULL},
    };
    luaL_newlib(L, fns);
    return 1;
}
