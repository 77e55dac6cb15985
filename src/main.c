/*
 * main.c - the pogo binary: find the Lua library, start the runtime and
 * hand the command line to pogo.cli, which owns every subcommand.
 */
#include <libgen.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "pogo.h"

#ifndef POGO_PREFIX
#define POGO_PREFIX "/usr/local"
#endif

/* The Lua library sits next to the binary in the source tree (./pogo,
 * build/asan/pogo) or under the install prefix; POGO_LUA_DIR overrides. */
static int find_lua_dir(char *out, size_t len)
{
    const char *env = getenv("POGO_LUA_DIR");
    if (env && *env) {
        snprintf(out, len, "%s", env);
        return 0;
    }
    char exe[PATH_MAX];
    ssize_t n = readlink("/proc/self/exe", exe, sizeof exe - 1);
    if (n > 0) {
        exe[n] = '\0';
        const char *dir = dirname(exe);
        static const char *const rel[] = {"lua", "../../lua", "../share/pogo/lua"};
        for (size_t i = 0; i < sizeof rel / sizeof *rel; i++) {
            char probe[PATH_MAX + 32];
            snprintf(out, len, "%s/%s", dir, rel[i]);
            snprintf(probe, sizeof probe, "%s/pogo/cli.lua", out);
            if (access(probe, R_OK) == 0)
                return 0;
        }
    }
    snprintf(out, len, "%s/share/pogo/lua", POGO_PREFIX);
    return access(out, R_OK);
}

int main(int argc, char **argv)
{
    char lua_dir[PATH_MAX];
    if (find_lua_dir(lua_dir, sizeof lua_dir) < 0) {
        fprintf(stderr, "pogo: cannot find the pogo Lua library "
                        "(looked next to the binary and in %s; set POGO_LUA_DIR)\n",
                lua_dir);
        return 1;
    }
    /* A client that goes away must cost us a write error, not our life. */
    signal(SIGPIPE, SIG_IGN);

    lua_State *L = luart_new(lua_dir);
    if (L == NULL) {
        fprintf(stderr, "pogo: cannot create a Lua state\n");
        return 1;
    }
    int status = 1;
    lua_getglobal(L, "require");
    lua_pushliteral(L, "pogo.cli");
    if (luart_call(L, 1, 1, "loading pogo.cli") == LUA_OK) {
        lua_getfield(L, -1, "main");
        lua_createtable(L, argc, 0);
        for (int i = 1; i < argc; i++) {
            lua_pushstring(L, argv[i]);
            lua_rawseti(L, -2, i);
        }
        if (luart_call(L, 1, 1, "pogo") == LUA_OK) {
            status = (int)lua_tointeger(L, -1);
            lua_pop(L, 1);
        }
        lua_pop(L, 1);
    }
    lua_close(L);
    ev_loop_destroy(EV_DEFAULT);
    return status;
}
