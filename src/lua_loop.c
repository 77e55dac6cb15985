/*
 * lua_loop.c - pogo.core.loop: the agent's one libev loop, seen from Lua.
 *
 * Timers and signals are full userdata handles (file watches are in
 * lua_fswatch.c). A started watcher is anchored in the registry so the GC
 * cannot free memory libev still points to; stopping or closing it drops the anchor, and __gc /
 * __close stop it if the script forgot to.
 */
#include <signal.h>
#include <time.h>
#include <string.h>

#include "pogo.h"

enum watcher_kind { W_TIMER, W_SIGNAL };

static const char *const type_names[] = {"pogo.timer", "pogo.signal"};

struct watcher {
    union {
        ev_watcher any;
        ev_timer timer;
        ev_signal signal;
    } w;
    enum watcher_kind kind;
    lua_State *L;
    int callback;     /* registry ref of the Lua function, or LUA_NOREF */
    int anchor;       /* registry ref of the userdata while started */
};

static struct watcher *check_watcher(lua_State *L, int idx)
{
    for (int k = W_TIMER; k <= W_SIGNAL; k++) {
        struct watcher *w = luaL_testudata(L, idx, type_names[k]);
        if (w)
            return w;
    }
    luaL_typeerror(L, idx, "pogo watcher");
    return NULL;
}

static void watcher_stop(struct watcher *w)
{
    struct ev_loop *loop = luart_loop(w->L);
    switch (w->kind) {
    case W_TIMER: ev_timer_stop(loop, &w->w.timer); break;
    case W_SIGNAL: ev_signal_stop(loop, &w->w.signal); break;
    }
    luart_unref(w->L, &w->anchor);
}

static void watcher_start(lua_State *L, struct watcher *w, int idx)
{
    struct ev_loop *loop = luart_loop(L);
    switch (w->kind) {
    case W_TIMER: ev_timer_start(loop, &w->w.timer); break;
    case W_SIGNAL: ev_signal_start(loop, &w->w.signal); break;
    }
    if (w->anchor == LUA_NOREF)
        w->anchor = luart_ref(L, idx);
}

/* Every libev callback of this file: run the Lua callback with the handle. */
static void on_event(struct ev_loop *loop, ev_watcher *ew, int revents)
{
    (void)loop; (void)revents;
    struct watcher *w = (struct watcher *)ew;
    lua_State *L = w->L;
    if (w->kind == W_TIMER && w->w.timer.repeat == 0)
        luart_unref(L, &w->anchor);     /* one-shot timers stop by themselves */
    if (w->callback == LUA_NOREF)
        return;
    luart_push_ref(L, w->callback);
    luart_call(L, 0, 0, type_names[w->kind]);
}

static void on_timer(struct ev_loop *loop, ev_timer *w, int revents)
{
    on_event(loop, (ev_watcher *)w, revents);
}

static void on_signal(struct ev_loop *loop, ev_signal *w, int revents)
{
    on_event(loop, (ev_watcher *)w, revents);
}

/* A handle in a safe closed state, before anything is started. [-0, +1, m] */
static struct watcher *new_watcher(lua_State *L, enum watcher_kind kind,
                                   int fn_idx)
{
    luaL_checktype(L, fn_idx, LUA_TFUNCTION);
    struct watcher *w = lua_newuserdatauv(L, sizeof *w, 0);
    memset(w, 0, sizeof *w);
    w->kind = kind;
    w->L = L;
    w->callback = LUA_NOREF;
    w->anchor = LUA_NOREF;
    luaL_setmetatable(L, type_names[kind]);
    w->callback = luart_ref(L, fn_idx);
    return w;
}

/* timer(after, repeat, fn) -> timer, started. Seconds; repeat 0: once. */
static int l_timer(lua_State *L)
{
    double after = luaL_checknumber(L, 1);
    double repeat = luaL_optnumber(L, 2, 0);
    luaL_argcheck(L, after >= 0, 1, "negative delay");
    luaL_argcheck(L, repeat >= 0, 2, "negative repeat");
    struct watcher *w = new_watcher(L, W_TIMER, 3);
    ev_timer_init(&w->w.timer, on_timer, after, repeat);
    watcher_start(L, w, -1);
    return 1;
}

/* timer:again(after[, repeat]): restart from now. */
static int l_timer_again(lua_State *L)
{
    struct watcher *w = luaL_checkudata(L, 1, "pogo.timer");
    double after = luaL_checknumber(L, 2);
    double repeat = luaL_optnumber(L, 3, w->w.timer.repeat);
    ev_timer_stop(luart_loop(L), &w->w.timer);
    ev_timer_set(&w->w.timer, after, repeat);
    watcher_start(L, w, 1);
    return 0;
}

static int signal_number(lua_State *L, int idx)
{
    static const struct { const char *name; int no; } sigs[] = {
        {"TERM", SIGTERM}, {"INT", SIGINT}, {"HUP", SIGHUP},
        {"USR1", SIGUSR1}, {"USR2", SIGUSR2}, {"QUIT", SIGQUIT},
        {"CHLD", SIGCHLD}, {"WINCH", SIGWINCH},
    };
    if (lua_type(L, idx) == LUA_TNUMBER)
        return (int)luaL_checkinteger(L, idx);
    const char *name = luaL_checkstring(L, idx);
    if (strncmp(name, "SIG", 3) == 0)
        name += 3;
    for (size_t i = 0; i < sizeof sigs / sizeof *sigs; i++)
        if (strcmp(name, sigs[i].name) == 0)
            return sigs[i].no;
    return luaL_argerror(L, idx, lua_pushfstring(L, "unknown signal '%s'", name));
}

/* signal(name, fn) -> signal handle, started. fn runs inside the loop. */
static int l_signal(lua_State *L)
{
    int signo = signal_number(L, 1);
    struct watcher *w = new_watcher(L, W_SIGNAL, 2);
    ev_signal_init(&w->w.signal, on_signal, signo);
    watcher_start(L, w, -1);
    return 1;
}

static int l_stop(lua_State *L)
{
    watcher_stop(check_watcher(L, 1));
    return 0;
}

static int l_active(lua_State *L)
{
    lua_pushboolean(L, ev_is_active(&check_watcher(L, 1)->w.any));
    return 1;
}

/* __gc and __close: stop, drop the callback, free what we own. */
static int l_close(lua_State *L)
{
    struct watcher *w = check_watcher(L, 1);
    if (w->L == NULL)
        return 0;
    watcher_stop(w);
    luart_unref(L, &w->callback);
    w->L = NULL;
    return 0;
}

static int l_tostring(lua_State *L)
{
    struct watcher *w = check_watcher(L, 1);
    lua_pushfstring(L, "%s (%s): %p", type_names[w->kind],
                    w->L && ev_is_active(&w->w.any) ? "active" : "stopped", w);
    return 1;
}

static int l_run(lua_State *L)
{
    ev_run(luart_loop(L), 0);
    return 0;
}

static int l_break(lua_State *L)
{
    ev_break(luart_loop(L), EVBREAK_ALL);
    return 0;
}

static double mono_ms(void) { return clock_ms(CLOCK_MONOTONIC); }

/* ---- how long the loop is busy ------------------------------------------
 *
 * One iteration's busy time runs from waking up (an ev_check of the highest
 * priority, the first callback after the poll) to going back to sleep (an
 * ev_prepare of the lowest, after the collector's slice). It is measured
 * twice: in wall-clock time, which includes being preempted by other
 * processes, and in this thread's CPU time, which is the work the loop
 * itself did. The longest single step of the collector is kept too: a step
 * cannot be cut, so it is the floor of what pacing can achieve. Off until
 * first asked for: the CPU clock is a system call. */
static struct {
    ev_check wake;
    ev_prepare sleep;
    double wall0, cpu0;         /* clocks at the last wake-up, ms */
    double iterations, sum_ms;  /* since the last read */
    double max_ms, max_cpu_ms, max_gc_step_ms;
} busy;

static void on_wake(struct ev_loop *loop, ev_check *w, int revents)
{
    busy.wall0 = mono_ms();
    busy.cpu0 = clock_ms(CLOCK_THREAD_CPUTIME_ID);
}

static void on_sleep(struct ev_loop *loop, ev_prepare *w, int revents)
{
    if (busy.wall0 == 0)
        return;     /* started between a wake-up and this sleep */
    double wall = mono_ms() - busy.wall0;
    double cpu = clock_ms(CLOCK_THREAD_CPUTIME_ID) - busy.cpu0;
    busy.iterations++;
    busy.sum_ms += wall;
    if (wall > busy.max_ms)
        busy.max_ms = wall;
    if (cpu > busy.max_cpu_ms)
        busy.max_cpu_ms = cpu;
}

static int busy_measuring(void) { return ev_is_active(&busy.wake); }

/* busy() -> { iterations, mean_ms, max_ms, max_cpu_ms, max_gc_step_ms,
 * slowest_call_ms, slowest_call } since the last call; the first call
 * starts measuring, busy(false) stops. [-0, +(0|1), m] */
static int l_busy(lua_State *L)
{
    struct ev_loop *loop = luart_loop(L);
    if (lua_isboolean(L, 1) && !lua_toboolean(L, 1)) {
        if (busy_measuring()) {
            ev_ref(loop);
            ev_ref(loop);
            ev_check_stop(loop, &busy.wake);
            ev_prepare_stop(loop, &busy.sleep);
            luart_time_calls(0);
        }
        return 0;
    }
    if (!busy_measuring()) {
        memset(&busy, 0, sizeof busy);
        ev_check_init(&busy.wake, on_wake);
        ev_set_priority(&busy.wake, EV_MAXPRI);
        ev_check_start(loop, &busy.wake);
        ev_prepare_init(&busy.sleep, on_sleep);
        ev_set_priority(&busy.sleep, EV_MINPRI);
        ev_prepare_start(loop, &busy.sleep);
        ev_unref(loop);     /* measuring alone does not keep the loop running */
        ev_unref(loop);
        luart_time_calls(1);
    }
    char where[160];
    double slowest_ms = luart_slowest(where, sizeof where);
    lua_createtable(L, 0, 7);
    lua_pushnumber(L, slowest_ms);
    lua_setfield(L, -2, "slowest_call_ms");
    lua_pushstring(L, where);
    lua_setfield(L, -2, "slowest_call");
    lua_pushinteger(L, (lua_Integer)busy.iterations);
    lua_setfield(L, -2, "iterations");
    lua_pushnumber(L, busy.iterations > 0 ? busy.sum_ms / busy.iterations : 0);
    lua_setfield(L, -2, "mean_ms");
    lua_pushnumber(L, busy.max_ms);
    lua_setfield(L, -2, "max_ms");
    lua_pushnumber(L, busy.max_cpu_ms);
    lua_setfield(L, -2, "max_cpu_ms");
    lua_pushnumber(L, busy.max_gc_step_ms);
    lua_setfield(L, -2, "max_gc_step_ms");
    busy.iterations = busy.sum_ms = 0;
    busy.max_ms = busy.max_cpu_ms = busy.max_gc_step_ms = 0;
    return 1;
}

/* ---- the collector, paced by the loop ------------------------------------
 *
 * Lua's incremental collector runs in steps paid for by allocation, and a
 * step can finish a whole cycle: on a heap of some 40 MB of small tables
 * (a pg snapshot of 100,000 members) that is 20-40 ms in one go, inside
 * whatever happened to allocate. Paced, the automatic collector is off and,
 * once the heap has grown by half since the last cycle ended (Lua's own
 * pause, so an idle agent does not collect in every iteration), every loop
 * iteration, before it waits for events, spends at most pace.step_ms on
 * collection steps, four times that while the heap is
 * past twice its size after the last cycle (plus pace.slack_kb). A heap
 * past four times that turns the automatic collector back on until a
 * cycle completes, so memory stays bounded however fast the loop
 * allocates. */
#define PACE_STEP_LOG2 10     /* log2 of the bytes' worth of work per step */

static struct {
    ev_prepare w;
    lua_State *L;
    double step_ms;
    int base_kb;      /* heap after the last completed cycle */
    int slack_kb;
    int automatic;    /* the safety valve is open */
    int resting;      /* a cycle ended; the next waits for the heap to grow */
} pace;

static void cycle_done(lua_State *L)
{
    pace.base_kb = lua_gc(L, LUA_GCCOUNT);
    pace.resting = 1;
    if (pace.automatic) {
        pace.automatic = 0;
        lua_gc(L, LUA_GCSTOP);
    }
}

static void on_prepare(struct ev_loop *loop, ev_prepare *w, int revents)
{
    (void)loop;
    (void)w;
    (void)revents;
    lua_State *L = pace.L;
    int kb = lua_gc(L, LUA_GCCOUNT);
    if (pace.resting) {
        if (kb < pace.base_kb + pace.base_kb / 2)
            return;
        pace.resting = 0;
    }
    double budget = pace.step_ms;
    if (kb > 2 * pace.base_kb + pace.slack_kb)
        budget *= 4;    /* behind: catch up, still in bounded slices */
    if (!pace.automatic && kb > 4 * pace.base_kb + 4 * pace.slack_kb) {
        pace.automatic = 1;
        lua_gc(L, LUA_GCRESTART);
    }
    double until = mono_ms() + budget;
    do {
        double t0 = busy_measuring() ? clock_ms(CLOCK_THREAD_CPUTIME_ID) : 0;
        int done = lua_gc(L, LUA_GCSTEP, 0);
        if (t0 > 0) {
            double step = clock_ms(CLOCK_THREAD_CPUTIME_ID) - t0;
            if (step > busy.max_gc_step_ms)
                busy.max_gc_step_ms = step;
        }
        if (done) {
            cycle_done(L);
            break;
        }
    } while (mono_ms() < until);
}

/* pace_gc(step_ms[, slack_kb]): pace the collector by the loop (see
 * above); pace_gc(false) gives it back to Lua's automatic stepping. */
static int l_pace_gc(lua_State *L)
{
    if (lua_isboolean(L, 1) && !lua_toboolean(L, 1)) {
        if (ev_is_active(&pace.w)) {
            ev_ref(luart_loop(L));
            ev_prepare_stop(luart_loop(L), &pace.w);
        }
        lua_gc(L, LUA_GCRESTART);
        return 0;
    }
    pace.step_ms = luaL_checknumber(L, 1);
    pace.slack_kb = (int)luaL_optinteger(L, 2, 32 * 1024);
    pace.L = L;
    pace.base_kb = lua_gc(L, LUA_GCCOUNT);
    pace.automatic = 0;
    pace.resting = 0;
    lua_gc(L, LUA_GCSTOP);
    /* A basic step of Lua's default size (2^13 bytes' worth of work) marks
     * some 50,000 slots: 1-2.5 ms on a heap of 100,000 pg members, too
     * coarse for a 0.5 ms slice. Steps of 2^10 stay under 0.4 ms and the
     * slice just takes more of them. */
    lua_gc(L, LUA_GCINC, 0, 0, PACE_STEP_LOG2);
    if (!ev_is_active(&pace.w)) {
        ev_prepare_init(&pace.w, on_prepare);
        ev_prepare_start(luart_loop(L), &pace.w);
        ev_unref(luart_loop(L));    /* pacing alone does not keep the loop running */
    }
    return 0;
}

/* now() -> the loop's cached time (seconds, wall clock based). */
static int l_now(lua_State *L)
{
    lua_pushnumber(L, ev_now(luart_loop(L)));
    return 1;
}

int luaopen_pogo_loop(lua_State *L)
{
    static const luaL_Reg methods[] = {
        {"stop", l_stop},
        {"close", l_close},
        {"active", l_active},
        {NULL, NULL},
    };
    static const luaL_Reg meta[] = {
        {"__gc", l_close},
        {"__close", l_close},
        {"__tostring", l_tostring},
        {NULL, NULL},
    };
    for (int k = W_TIMER; k <= W_SIGNAL; k++) {
        luaL_newmetatable(L, type_names[k]);
        luaL_setfuncs(L, meta, 0);
        luaL_newlib(L, methods);
        if (k == W_TIMER) {
            lua_pushcfunction(L, l_timer_again);
            lua_setfield(L, -2, "again");
        }
        lua_setfield(L, -2, "__index");
        lua_pop(L, 1);
    }
    static const luaL_Reg fns[] = {
        {"timer", l_timer},
        {"signal", l_signal},
        {"run", l_run},
        {"stop", l_break},
        {"now", l_now},
        {"pace_gc", l_pace_gc},
        {"busy", l_busy},
        {NULL, NULL},
    };
    luaL_newlib(L, fns);
    return 1;
}
