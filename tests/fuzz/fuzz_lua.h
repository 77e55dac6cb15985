/*
 * fuzz_lua.h - what the libFuzzer targets of pogo's Lua code share.
 *
 * A target is a C file that includes this header and says
 * FUZZ_LUA_TARGET("NAME"), and a driver script tests/fuzz/NAME.lua, run
 * with the checkout's path (and the target's own argument, if any), that
 * returns function(input): it runs one input through the real library and
 * raises when an oracle breaks. A target with more to do in C than pass
 * the input calls fuzz_lua_open and fuzz_lua_call itself. The state is the
 * agent's (luart_new over the checkout's lua/, so `require "lpeg"` and the
 * pogo.core.* modules resolve as in the agent), made once per process.
 *
 * libFuzzer only sees edges of instrumented C, and the Lua VM is the
 * system's liblua: it would be blind to which lines of lua/ ran. So a line
 * hook feeds (line, previous line) pairs of lua/ files into libFuzzer's
 * extra counters. A state has one hook and luart.c's budget already uses
 * it, so this file interposes lua_sethook: the budget's count hook and the
 * line hook share the one installed hook, and luart.c runs unchanged.
 *
 * POGO_LUA_DIR overrides where lua/ is; the drivers are found under
 * FUZZ_ROOT (the checkout, from the Makefile), or POGO_FUZZ_ROOT.
 */
#ifndef POGO_FUZZ_LUA_H
#define POGO_FUZZ_LUA_H

#include <dlfcn.h>
#include <limits.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "pogo.h"

#ifndef FUZZ_ROOT
#define FUZZ_ROOT "."
#endif

#define LUA_COUNTERS (1u << 16)

/* Counters libFuzzer reads as coverage features beside its own. */
__attribute__((section("__libfuzzer_extra_counters"), used))
static uint8_t lua_counters[LUA_COUNTERS];

static char lua_prefix[PATH_MAX + 1];   /* "@" lua_dir: chunks of lua/ */
static size_t lua_prefix_len;
static uint32_t lua_prev;               /* previous line's key: edges */
static lua_Hook budget_fn;              /* the hook luart.c asked for */

/* Whether source names a file of lua/ (a plain loop: this runs for every
 * line, and ASan's strncmp interceptor costs more than the compare). */
static int in_lua_dir(const char *source)
{
    for (size_t i = 0; i < lua_prefix_len; i++)
        if (source[i] != lua_prefix[i])
            return 0;
    return 1;
}

static void cover_line(lua_State *L, lua_Debug *ar)
{
    if (!lua_getinfo(L, "S", ar) || !in_lua_dir(ar->source))
        return;                 /* user chunks: their lines are the input's */
    uint32_t key = (uint32_t)((uintptr_t)ar->source * 2654435761u) ^
                   (uint32_t)ar->currentline * 40503u;
    lua_counters[(key ^ lua_prev) % LUA_COUNTERS]++;
    lua_prev = key >> 1;
}

static void fuzz_hook(lua_State *L, lua_Debug *ar)
{
    if (ar->event == LUA_HOOKLINE)
        cover_line(L, ar);
    else if (budget_fn)
        budget_fn(L, ar);
}

typedef void (*sethook_fn)(lua_State *, lua_Hook, int, int);

/* Interposed for luart.c's budget: its hook runs from fuzz_hook. */
void lua_sethook(lua_State *L, lua_Hook f, int mask, int count)
{
    static sethook_fn real;
    if (real == NULL)
        real = (sethook_fn)dlsym(RTLD_NEXT, "lua_sethook");
    if (f != NULL && mask != 0)
        budget_fn = f;
    real(L, fuzz_hook, (f != NULL ? mask & ~LUA_MASKLINE : 0) | LUA_MASKLINE,
         count);
}

/* The agent's Lua state with the driver NAME.lua loaded, given arg (if not
 * NULL) after the checkout's path; its function is at the registry ref
 * *driver. Any failure here is fatal. */
static lua_State *fuzz_lua_open(const char *name, const char *arg, int *driver)
{
    const char *root = getenv("POGO_FUZZ_ROOT");
    const char *dir = getenv("POGO_LUA_DIR");
    char lua_dir[PATH_MAX], path[PATH_MAX];

    if (root == NULL || *root == '\0')
        root = FUZZ_ROOT;
    if (dir != NULL && *dir != '\0')
        snprintf(lua_dir, sizeof lua_dir, "%s", dir);
    else
        snprintf(lua_dir, sizeof lua_dir, "%s/lua", root);
    snprintf(lua_prefix, sizeof lua_prefix, "@%s", lua_dir);
    lua_prefix_len = strlen(lua_prefix);

    lua_State *L = luart_new(lua_dir);
    if (L == NULL)
        abort();
    lua_sethook(L, NULL, 0, 0);         /* line coverage from here on */
    snprintf(path, sizeof path, "%s/tests/fuzz/%s.lua", root, name);
    if (luaL_loadfile(L, path) != LUA_OK) {
        fprintf(stderr, "%s: %s (set POGO_FUZZ_ROOT to the checkout)\n", name,
                lua_tostring(L, -1));
        abort();
    }
    lua_pushstring(L, root);            /* the chunk's `...` */
    if (arg != NULL)
        lua_pushstring(L, arg);
    if (luart_call(L, arg != NULL ? 2 : 1, 1, name) != LUA_OK ||
        !lua_isfunction(L, -1)) {
        fprintf(stderr, "%s: %s does not return a function\n", name, path);
        abort();
    }
    *driver = luaL_ref(L, LUA_REGISTRYINDEX);
    return L;
}

/* Calls the driver with the nargs values on top of the stack, at the end
 * of an input; a raised error is a broken oracle. [-nargs, +0, -] */
static void fuzz_lua_call(lua_State *L, int driver, int nargs)
{
    luart_push_ref(L, driver);
    lua_insert(L, -nargs - 1);
    if (luart_call(L, nargs, 0, "fuzz driver") != LUA_OK)
        abort();
    lua_prev = 0;                       /* no edge across two inputs */
    /* Garbage of this input freed now: libFuzzer suspects a leak in every
     * input that mallocs more than it frees, and each LeakSanitizer scan
     * costs more than a full collection of this small heap. */
    lua_gc(L, LUA_GCCOLLECT);
}

/* The whole of a target whose work is done by its driver script. */
#define FUZZ_LUA_TARGET(name)                                                \
    int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);            \
    int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)             \
    {                                                                        \
        static lua_State *L;                                                 \
        static int driver;                                                   \
        if (L == NULL)                                                       \
            L = fuzz_lua_open(name, NULL, &driver);                          \
        lua_pushlstring(L, (const char *)data, size);                        \
        fuzz_lua_call(L, driver, 1);                                         \
        return 0;                                                            \
    }

#endif
