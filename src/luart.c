/*
 * luart.c - the Lua runtime: one state per process, the guarded call path
 * from C into Lua, and the budget that bounds how long user code may run.
 *
 * The budget is an instruction-count hook that reads a coarse monotonic
 * clock. Once the deadline passes, the hook raises on every instruction
 * until the guarded call returns, so user code cannot swallow the error
 * with pcall and keep looping.
 */
#include <assert.h>
#include <errno.h>
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <lualib.h>

#include "pogo.h"

#define BUDGET_CHECK_EVERY 1000   /* VM instructions between clock reads */

static const char LOOP_KEY = 'L'; /* registry key: the ev loop */

/* One budget at a time is enforced: nested calls take the earlier deadline. */
static struct {
    double deadline;   /* monotonic seconds; 0 when no budget is active */
    double length;     /* the budget being enforced, for the message */
    int expired;
    int interruptible; /* a REPL evaluation: SIGUSR2 interrupts it */
} budget;

/* Set by SIGUSR2 (a REPL client's Ctrl-C), read by the budget hook. */
static volatile sig_atomic_t interrupt_pending;

static void on_sigusr2(int sig)
{
    (void)sig;
    interrupt_pending = 1;
}

static double now_coarse(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC_COARSE, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void budget_hook(lua_State *L, lua_Debug *ar)
{
    (void)ar;
    if (budget.deadline == 0)
        return;
    if (budget.interruptible && interrupt_pending) {
        interrupt_pending = 0;
        luaL_where(L, 0);
        lua_pushliteral(L, "interrupted (Ctrl-C)");
        lua_concat(L, 2);
        lua_error(L);
    }
    if (!budget.expired && now_coarse() < budget.deadline)
        return;
    if (!budget.expired) {
        budget.expired = 1;
        lua_sethook(L, budget_hook, LUA_MASKCOUNT, 1);
    }
    /* Level 0 in a hook is the function that was running: blame its line. */
    luaL_where(L, 0);
    lua_pushfstring(L, "interrupted: ran past its budget of %d ms",
                    (int)lround(budget.length * 1000));
    lua_concat(L, 2);
    lua_error(L);
}

/* Message handler: the error text plus a traceback. [-1, +1, m] */
static int msgh(lua_State *L)
{
    const char *msg = lua_tostring(L, 1);
    if (msg == NULL) {
        if (luaL_callmeta(L, 1, "__tostring") && lua_type(L, -1) == LUA_TSTRING)
            return 1;
        msg = lua_pushfstring(L, "(error object is a %s value)",
                              luaL_typename(L, 1));
    }
    luaL_traceback(L, L, msg, 1);
    return 1;
}

/* The slowest outermost call while timing is on (see luart_time_calls). */
static struct {
    int on;
    int depth;          /* guarded calls on the C stack */
    int base;           /* the depth of the loop's callbacks */
    double ms;
    char where[160];
} slowest;

/* Called from Lua code that a loop callback runs, so the callbacks'
 * depth is one less than the current one. */
void luart_time_calls(int on)
{
    slowest.on = on;
    slowest.base = slowest.depth > 0 ? slowest.depth - 1 : 0;
    slowest.ms = 0;
    slowest.where[0] = '\0';
}

double luart_slowest(char *where, size_t len)
{
    double ms = slowest.ms;
    snprintf(where, len, "%s", slowest.where);
    slowest.ms = 0;
    slowest.where[0] = '\0';
    return ms;
}

int luart_call(lua_State *L, int nargs, int nres, const char *what)
{
    int base = lua_gettop(L) - nargs;
    lua_Debug ar = {0};
    int timed = slowest.on && slowest.depth == slowest.base;
    double t0 = 0;
    if (timed) {
        lua_pushvalue(L, base);
        lua_getinfo(L, ">S", &ar);
        t0 = clock_ms(CLOCK_THREAD_CPUTIME_ID);
    }
    slowest.depth++;
    lua_pushcfunction(L, msgh);
    lua_insert(L, base);
    int rc = lua_pcall(L, nargs, nres, base);
    lua_remove(L, base);
    slowest.depth--;
    double took = timed ? clock_ms(CLOCK_THREAD_CPUTIME_ID) - t0 : 0;
    if (took > slowest.ms) {
        slowest.ms = took;
        snprintf(slowest.where, sizeof slowest.where, "%s (%s:%d)", what,
                 ar.short_src, ar.linedefined);
    }
    if (rc != LUA_OK) {
        log_error("lua", "%s: %s", what, lua_tostring(L, -1));
        lua_pop(L, 1);
    }
#ifdef POGO_DEBUG
    /* Every callback leaves the stack as it found it, bar its results. */
    assert(nres < 0 || lua_gettop(L) == base - 1 + (rc == LUA_OK ? nres : 0));
#endif
    return rc;
}

/* runtime.call(budget_seconds, fn, ...) -> true, ... | false, message
 * Runs fn under a traceback handler and a budget (0 or nil: none beyond an
 * enclosing one). [-(n), +r, -] */
static int l_call(lua_State *L)
{
    double len = luaL_optnumber(L, 1, 0);
    luaL_checktype(L, 2, LUA_TFUNCTION);
    int saved_expired = budget.expired;
    double saved_deadline = budget.deadline, saved_length = budget.length;
    if (len > 0) {
        double deadline = now_coarse() + len;
        if (budget.deadline == 0 || deadline < budget.deadline) {
            budget.deadline = deadline;
            budget.length = len;
        }
        lua_sethook(L, budget_hook, LUA_MASKCOUNT, BUDGET_CHECK_EVERY);
    }
    lua_pushcfunction(L, msgh);
    lua_replace(L, 1);          /* [msgh, fn, args...] */
    int rc = lua_pcall(L, lua_gettop(L) - 2, LUA_MULTRET, 1);
    budget.deadline = saved_deadline;
    budget.length = saved_length;
    budget.expired = saved_expired;
    if (budget.deadline == 0)
        lua_sethook(L, NULL, 0, 0);
    else if (!budget.expired)
        lua_sethook(L, budget_hook, LUA_MASKCOUNT, BUDGET_CHECK_EVERY);
    lua_pushboolean(L, rc == LUA_OK);
    lua_replace(L, 1);
    return lua_gettop(L);
}

/* runtime.call_interruptible(budget_seconds, fn, ...): runtime.call whose
 * code a SIGUSR2 to the agent interrupts (a REPL's Ctrl-C), as it would
 * run past its budget. A SIGUSR2 outside such a call is forgotten. */
static int l_call_interruptible(lua_State *L)
{
    int saved = budget.interruptible;
    interrupt_pending = 0;
    budget.interruptible = 1;
    int n = l_call(L);
    budget.interruptible = saved;
    interrupt_pending = 0;
    return n;
}

/* runtime.catch_interrupts(): SIGUSR2 from now on marks a pending interrupt. */
static int l_catch_interrupts(lua_State *L)
{
    (void)L;
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_sigusr2;
    sigemptyset(&sa.sa_mask);
    sa.sa_flags = SA_RESTART;
    sigaction(SIGUSR2, &sa, NULL);
    return 0;
}

/* runtime.budget() -> seconds left in the enforced budget, or nil. */
static int l_budget(lua_State *L)
{
    if (budget.deadline == 0)
        return 0;
    lua_pushnumber(L, fmax(0, budget.deadline - now_coarse()));
    return 1;
}

int luaopen_pogo_runtime(lua_State *L)
{
    static const luaL_Reg fns[] = {
        {"call", l_call},
        {"call_interruptible", l_call_interruptible},
        {"catch_interrupts", l_catch_interrupts},
        {"budget", l_budget},
        {NULL, NULL},
    };
    luaL_newlib(L, fns);
    lua_pushliteral(L, POGO_VERSION);
    lua_setfield(L, -2, "version");
    return 1;
}

int luart_ref(lua_State *L, int idx)
{
    lua_pushvalue(L, idx);
    return luaL_ref(L, LUA_REGISTRYINDEX);
}

void luart_unref(lua_State *L, int *ref)
{
    if (*ref != LUA_NOREF && *ref != LUA_REFNIL)
        luaL_unref(L, LUA_REGISTRYINDEX, *ref);
    *ref = LUA_NOREF;
}

void luart_push_ref(lua_State *L, int ref)
{
    lua_rawgeti(L, LUA_REGISTRYINDEX, ref);
}

void luart_newtype(lua_State *L, const char *name, const luaL_Reg *methods,
                   lua_CFunction index)
{
    luaL_newmetatable(L, name);
    luaL_setfuncs(L, methods, 0);
    if (index)
        lua_pushcfunction(L, index);
    else
        lua_pushvalue(L, -1);
    lua_setfield(L, -2, "__index");
    lua_pop(L, 1);
}

const char *errno_name(int err)
{
    const char *name = strerrorname_np(err);
    return name ? name : "EUNKNOWN";
}

int luart_oserror(lua_State *L, int err, const char *what)
{
    lua_pushnil(L);
    if (what)
        lua_pushfstring(L, "%s: %s: %s", errno_name(err), what, strerror(err));
    else
        lua_pushfstring(L, "%s: %s", errno_name(err), strerror(err));
    lua_pushstring(L, errno_name(err));
    return 3;
}

struct ev_loop *luart_loop(lua_State *L)
{
    lua_rawgetp(L, LUA_REGISTRYINDEX, &LOOP_KEY);
    struct ev_loop *loop = lua_touserdata(L, -1);
    lua_pop(L, 1);
    return loop;
}

lua_State *luart_new(const char *lua_dir)
{
    static const luaL_Reg core[] = {
        {"pogo.core.runtime", luaopen_pogo_runtime},
        {"pogo.core.log", luaopen_pogo_log},
        {"pogo.core.loop", luaopen_pogo_loop},
        {"pogo.core.sys", luaopen_pogo_sys},
        {"pogo.core.control", luaopen_pogo_control},
        {"pogo.core.codec", luaopen_pogo_codec},
        {"pogo.core.proc", luaopen_pogo_proc},
        {"pogo.core.net", luaopen_pogo_net},
        {"pogo.core.fswatch", luaopen_pogo_fswatch},
        {"pogo.core.link", luaopen_pogo_link},
        {"pogo.core.edit", luaopen_pogo_edit},
        {NULL, NULL},
    };
    lua_State *L = luaL_newstate();
    if (L == NULL)
        return NULL;
    luaL_openlibs(L);

    /* The default loop: the only one libev lets watch SIGCHLD. */
    lua_pushlightuserdata(L, ev_default_loop(EVFLAG_AUTO | EVFLAG_NOENV));
    lua_rawsetp(L, LUA_REGISTRYINDEX, &LOOP_KEY);

    luaL_getsubtable(L, LUA_REGISTRYINDEX, LUA_PRELOAD_TABLE);
    for (const luaL_Reg *m = core; m->name; m++) {
        lua_pushcfunction(L, m->func);
        lua_setfield(L, -2, m->name);
    }
    lua_pop(L, 1);

    lua_getglobal(L, "package");
    lua_getfield(L, -1, "path");
    lua_pushfstring(L, "%s/?.lua;%s/?/init.lua;%s", lua_dir, lua_dir,
                    lua_tostring(L, -1));
    lua_setfield(L, -3, "path");
    lua_pop(L, 2);
    return L;
}
