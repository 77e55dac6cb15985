/*
 * lua_sys.c - pogo.core.sys: the few POSIX calls the Lua runtime needs that
 * Lua's own libraries lack (host name, directories, stat, clocks).
 * OS failures return nil, "ENAME: path: message", "ENAME".
 */
#include <dirent.h>
#include <errno.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "pogo.h"

static int l_hostname(lua_State *L)
{
    char name[HOST_NAME_MAX + 1];
    if (gethostname(name, sizeof name) < 0)
        return luart_oserror(L, errno, NULL);
    name[HOST_NAME_MAX] = '\0';
    lua_pushstring(L, name);
    return 1;
}

static int l_pid(lua_State *L)
{
    lua_pushinteger(L, getpid());
    return 1;
}

static int l_uid(lua_State *L)
{
    lua_pushinteger(L, geteuid());
    return 1;
}

/* monotonic() -> seconds since an arbitrary point, for durations. */
static int l_monotonic(lua_State *L)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    lua_pushnumber(L, (double)ts.tv_sec + (double)ts.tv_nsec / 1e9);
    return 1;
}

static int l_realpath(lua_State *L)
{
    const char *path = luaL_checkstring(L, 1);
    char *real = realpath(path, NULL);
    if (real == NULL)
        return luart_oserror(L, errno, path);
    lua_pushstring(L, real);
    free(real);
    return 1;
}

static const char *file_type(mode_t m)
{
    if (S_ISREG(m)) return "file";
    if (S_ISDIR(m)) return "directory";
    if (S_ISLNK(m)) return "link";
    if (S_ISSOCK(m)) return "socket";
    if (S_ISFIFO(m)) return "fifo";
    return "other";
}

/* stat(path) -> {type=, mode=, size=, mtime=, uid=} | nil, err, code */
static int l_stat(lua_State *L)
{
    const char *path = luaL_checkstring(L, 1);
    struct stat st;
    if (stat(path, &st) < 0)
        return luart_oserror(L, errno, path);
    lua_createtable(L, 0, 5);
    lua_pushstring(L, file_type(st.st_mode));
    lua_setfield(L, -2, "type");
    lua_pushinteger(L, st.st_mode & 07777);
    lua_setfield(L, -2, "mode");
    lua_pushinteger(L, st.st_size);
    lua_setfield(L, -2, "size");
    lua_pushnumber(L, (double)st.st_mtim.tv_sec + st.st_mtim.tv_nsec / 1e9);
    lua_setfield(L, -2, "mtime");
    lua_pushinteger(L, st.st_uid);
    lua_setfield(L, -2, "uid");
    return 1;
}

static int cmp_str(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

/* dir(path) -> sorted list of entry names without "." and ".." */
static int l_dir(lua_State *L)
{
    const char *path = luaL_checkstring(L, 1);
    DIR *d = opendir(path);
    if (d == NULL)
        return luart_oserror(L, errno, path);
    lua_newtable(L);
    lua_Integer n = 0;
    struct dirent *e;
    while ((e = readdir(d)) != NULL) {
        if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0)
            continue;
        lua_pushstring(L, e->d_name);
        lua_rawseti(L, -2, ++n);
    }
    closedir(d);
    /* Sort in C so the order never depends on the file system. */
    const char **names = lua_newuserdatauv(L, (size_t)n * sizeof *names + 1, 0);
    for (lua_Integer i = 1; i <= n; i++) {
        lua_rawgeti(L, -2, i);
        names[i - 1] = lua_tostring(L, -1);
        lua_pop(L, 1);          /* still referenced by the table */
    }
    qsort(names, (size_t)n, sizeof *names, cmp_str);
    lua_createtable(L, (int)n, 0);
    for (lua_Integer i = 1; i <= n; i++) {
        lua_pushstring(L, names[i - 1]);
        lua_rawseti(L, -2, i);
    }
    return 1;
}

/* mkdir(path, mode) -> true | nil, err: creates missing parents too. */
static int l_mkdir(lua_State *L)
{
    const char *path = luaL_checkstring(L, 1);
    mode_t mode = (mode_t)luaL_optinteger(L, 2, 0755);
    char buf[PATH_MAX];
    if (strlen(path) >= sizeof buf)
        return luart_oserror(L, ENAMETOOLONG, path);
    strcpy(buf, path);
    for (char *p = buf + 1; ; p++) {
        if (*p == '/' || *p == '\0') {
            char c = *p;
            *p = '\0';
            if (mkdir(buf, mode) < 0 && errno != EEXIST)
                return luart_oserror(L, errno, buf);
            *p = c;
            if (c == '\0')
                break;
        }
    }
    lua_pushboolean(L, 1);
    return 1;
}

static int l_unlink(lua_State *L)
{
    const char *path = luaL_checkstring(L, 1);
    if (unlink(path) < 0)
        return luart_oserror(L, errno, path);
    lua_pushboolean(L, 1);
    return 1;
}

/* getpgid(pid) -> pgid | nil, err */
static int l_getpgid(lua_State *L)
{
    pid_t pg = getpgid((pid_t)luaL_checkinteger(L, 1));
    if (pg < 0)
        return luart_oserror(L, errno, NULL);
    lua_pushinteger(L, pg);
    return 1;
}

extern char **environ;

/* environ() -> map of the agent's environment */
static int l_environ(lua_State *L)
{
    lua_newtable(L);
    for (char **e = environ; *e; e++) {
        const char *eq = strchr(*e, '=');
        if (eq == NULL || eq == *e)
            continue;
        lua_pushlstring(L, *e, (size_t)(eq - *e));
        lua_pushstring(L, eq + 1);
        lua_rawset(L, -3);
    }
    return 1;
}

static int l_isatty(lua_State *L)
{
    lua_pushboolean(L, isatty((int)luaL_checkinteger(L, 1)));
    return 1;
}

int luaopen_pogo_sys(lua_State *L)
{
    static const luaL_Reg fns[] = {
        {"hostname", l_hostname},
        {"pid", l_pid},
        {"uid", l_uid},
        {"monotonic", l_monotonic},
        {"realpath", l_realpath},
        {"stat", l_stat},
        {"dir", l_dir},
        {"mkdir", l_mkdir},
        {"unlink", l_unlink},
        {"isatty", l_isatty},
        {"environ", l_environ},
        {"getpgid", l_getpgid},
        {NULL, NULL},
    };
    luaL_newlib(L, fns);
    return 1;
}
