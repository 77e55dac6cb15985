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
#include <fcntl.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <sodium.h>

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

/* random(n) -> n bytes from the kernel's CSPRNG */
static int l_random(lua_State *L)
{
    lua_Integer n = luaL_checkinteger(L, 1);
    luaL_argcheck(L, n >= 0 && n <= 4096, 1, "0..4096 bytes");
    unsigned char buf[4096];
    for (lua_Integer got = 0; got < n;) {
        ssize_t r = getrandom(buf + got, (size_t)(n - got), 0);
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0)
            return luart_oserror(L, errno, "getrandom");
        got += r;
    }
    lua_pushlstring(L, (const char *)buf, (size_t)n);
    return 1;
}

/* write_private(path, data[, exclusive]) -> true | nil, err, code
 * Writes a file only its owner can read (0600) atomically: a temp file in
 * the same directory, fsync, rename. With exclusive, an existing path is
 * an error (EEXIST) rather than replaced. */
static int l_write_private(lua_State *L)
{
    const char *path = luaL_checkstring(L, 1);
    size_t len;
    const char *data = luaL_checklstring(L, 2, &len);
    int exclusive = lua_toboolean(L, 3);
    if (exclusive && access(path, F_OK) == 0)
        return luart_oserror(L, EEXIST, path);
    char tmp[PATH_MAX];
    if (snprintf(tmp, sizeof tmp, "%s.tmp.%d", path, (int)getpid()) >= (int)sizeof tmp)
        return luart_oserror(L, ENAMETOOLONG, path);
    int fd = open(tmp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
    if (fd < 0)
        return luart_oserror(L, errno, tmp);
    size_t off = 0;
    while (off < len) {
        ssize_t w = write(fd, data + off, len - off);
        if (w < 0 && errno == EINTR)
            continue;
        if (w < 0) {
            int err = errno;
            close(fd);
            unlink(tmp);
            return luart_oserror(L, err, tmp);
        }
        off += (size_t)w;
    }
    int rc = fsync(fd);
    int err = errno;
    close(fd);
    if (rc < 0 || (exclusive ? link(tmp, path) : rename(tmp, path)) < 0) {
        err = rc < 0 ? err : errno;
        unlink(tmp);
        return luart_oserror(L, err, path);
    }
    if (exclusive)
        unlink(tmp);
    lua_pushboolean(L, 1);
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

/* digest(s) -> 32 hex digits: BLAKE2b-128 of s. The same on every node,
 * for content addresses and spec fingerprints. */
static int l_digest(lua_State *L)
{
    size_t len;
    const char *s = luaL_checklstring(L, 1, &len);
    unsigned char h[16];
    crypto_generichash(h, sizeof h, (const unsigned char *)s, len, NULL, 0);
    char hex[2 * sizeof h + 1];
    sodium_bin2hex(hex, sizeof hex, h, sizeof h);
    lua_pushlstring(L, hex, 2 * sizeof h);
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
        {"random", l_random},
        {"digest", l_digest},
        {"write_private", l_write_private},
        {NULL, NULL},
    };
    luaL_newlib(L, fns);
    return 1;
}
