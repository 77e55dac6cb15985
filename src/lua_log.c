/*
 * lua_log.c - pogo.core.log: the agent's log sink, seen from Lua.
 */
#include <errno.h>

#include "pogo.h"

static enum log_level check_level(lua_State *L, int idx)
{
    const char *name = luaL_checkstring(L, idx);
    int level = log_level_parse(name);
    if (level < 0)
        luaL_argerror(L, idx, lua_pushfstring(L,
            "unknown log level '%s' (debug, info, warn, error)", name));
    return (enum log_level)level;
}

/* write(level, subsystem, message) [-0, +0, v] */
static int l_write(lua_State *L)
{
    enum log_level level = check_level(L, 1);
    const char *subsys = luaL_checkstring(L, 2);
    const char *msg = luaL_checkstring(L, 3);
    log_msg(level, subsys, "%s", msg);
    return 0;
}

/* enabled(level) -> boolean: lets Lua skip formatting dropped lines. */
static int l_enabled(lua_State *L)
{
    lua_pushboolean(L, check_level(L, 1) >= log_get_level());
    return 1;
}

/* setup{node=, level=, file=} -> true | nil, err, code. file is a path,
 * or false for stderr; nil leaves the sink alone. A file that cannot be
 * opened leaves the previous sink in place. [-0, +(1|3), v] */
static int l_setup(lua_State *L)
{
    luaL_checktype(L, 1, LUA_TTABLE);
    if (lua_getfield(L, 1, "level") != LUA_TNIL)
        log_set_level(check_level(L, -1));
    if (lua_getfield(L, 1, "node") != LUA_TNIL)
        log_set_node(luaL_checkstring(L, -1));
    int t = lua_getfield(L, 1, "file");
    if (t != LUA_TNIL) {
        const char *path = t == LUA_TSTRING ? lua_tostring(L, -1) : NULL;
        if (log_set_file(path) < 0)
            return luart_oserror(L, errno, path);
    }
    lua_pushboolean(L, 1);
    return 1;
}

/* level() -> current level name */
static int l_level(lua_State *L)
{
    lua_pushstring(L, log_level_name(log_get_level()));
    return 1;
}

int luaopen_pogo_log(lua_State *L)
{
    static const luaL_Reg fns[] = {
        {"write", l_write},
        {"enabled", l_enabled},
        {"setup", l_setup},
        {"level", l_level},
        {NULL, NULL},
    };
    luaL_newlib(L, fns);
    return 1;
}
