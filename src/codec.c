/*
 * codec.c - Lua values <-> MessagePack.
 *
 * Encoding walks the Lua value and feeds msgpack-c's packer, which picks the
 * smallest wire form of each integer and length. Decoding is a small reader
 * of our own that pushes straight onto the Lua stack: msgpack-c's unpacker
 * cannot nest deeper than 32 (its compiled-in MSGPACK_EMBED_STACK_SIZE, so
 * depth 33..64 would encode but not decode), and it allocates a container's
 * elements from the count in its header before any of them arrive, so a
 * 5-byte "array of 4 billion" asks malloc for about 100 GB. Here every count
 * is checked against the bytes actually left, and nothing is allocated
 * outside Lua, so an error raised half way (out of memory) leaks nothing.
 */
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include <msgpack.h>

#include "pogo.h"

#define STR_(x) #x
#define STR(x) STR_(x)

_Static_assert(sizeof(lua_Integer) == sizeof(int64_t),
               "pogo needs 64-bit Lua integers");

/* ---- encoding ---------------------------------------------------------- */

struct enc {
    lua_State *L;
    msgpack_packer pk;
    int depth;                          /* tables open on the current path */
    const void *path[CODEC_MAX_DEPTH];  /* their identities, outermost first */
    char why[96];                       /* the reason for refusing, if any */
    /* The key path to the refused value, written right to left while the
     * recursion unwinds, so the success path never formats a key. */
    char where[160];
    size_t wstart;                      /* path is where[wstart..] */
    int wcut;                           /* path too long; its head is lost */
};

static int enc_value(struct enc *e, int idx);

static int refuse(struct enc *e, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

static int refuse(struct enc *e, const char *fmt, ...)
{
    va_list ap;

    va_start(ap, fmt);
    vsnprintf(e->why, sizeof e->why, fmt, ap);
    va_end(ap);
    return -1;
}

/* The packer's result: its write callback only fails on OOM. */
static int packed(struct enc *e, int rc)
{
    return rc == 0 ? 0 : refuse(e, "out of memory");
}

/* msgpack_packer_write: appends to the struct buf given as data. */
static int enc_write(void *data, const char *p, size_t n)
{
    return buf_append(data, p, n);
}

static void where_prepend(struct enc *e, const char *seg, size_t n)
{
    if (e->wcut)
        return;
    if (n > e->wstart) {
        e->wcut = 1;
        return;
    }
    e->wstart -= n;
    memcpy(e->where + e->wstart, seg, n);
}

static int is_identifier(const char *s, size_t n)
{
    if (n == 0 || (s[0] >= '0' && s[0] <= '9'))
        return 0;
    for (size_t i = 0; i < n; i++) {
        char c = s[i];
        if (!(c == '_' || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
              (c >= '0' && c <= '9')))
            return 0;
    }
    return 1;
}

/* Records the key at idx as the next segment (to the left) of the path:
 * ".name", "[3]", "[true]" or ["some key"], long or odd strings shortened.
 * [-0, +0, -] */
static void where_key(struct enc *e, int idx)
{
    lua_State *L = e->L;
    char seg[64];
    int n = 0;

    switch (lua_type(L, idx)) {
    case LUA_TSTRING: {
        size_t len;
        const char *s = lua_tolstring(L, idx, &len);
        if (len <= 32 && is_identifier(s, len)) {
            n = snprintf(seg, sizeof seg, ".%.*s", (int)len, s);
            break;
        }
        char clean[33];
        size_t m = len < 24 ? len : 24;
        for (size_t i = 0; i < m; i++)
            clean[i] = s[i] >= 0x20 && s[i] < 0x7f && s[i] != '"' &&
                       s[i] != '\'' ? s[i] : '?';
        n = snprintf(seg, sizeof seg, "[\"%.*s%s\"]", (int)m, clean,
                     len > m ? "..." : "");
        break;
    }
    case LUA_TNUMBER:
        if (lua_isinteger(L, idx))
            n = snprintf(seg, sizeof seg, "[%lld]",
                         (long long)lua_tointeger(L, idx));
        else
            n = snprintf(seg, sizeof seg, "[%.14g]",
                         (double)lua_tonumber(L, idx));
        break;
    case LUA_TBOOLEAN:
        n = snprintf(seg, sizeof seg, "[%s]",
                     lua_toboolean(L, idx) ? "true" : "false");
        break;
    default:
        n = snprintf(seg, sizeof seg, "[%s]", luaL_typename(L, idx));
        break;
    }
    if (n > 0)
        where_prepend(e, seg,
                      (size_t)n < sizeof seg ? (size_t)n : sizeof seg - 1);
}

/* Counts the entries of the table at idx and says whether its keys are
 * exactly 1..count, i.e. whether it goes on the wire as an array.
 * [-0, +0, -] */
static int enc_is_array(lua_State *L, int idx, size_t *count)
{
    size_t n = 0;
    lua_Integer max = 0;
    int seq = 1;

    lua_pushnil(L);
    while (lua_next(L, idx)) {
        lua_pop(L, 1);
        n++;
        if (seq && lua_isinteger(L, -1)) {
            lua_Integer k = lua_tointeger(L, -1);
            if (k < 1)
                seq = 0;
            else if (k > max)
                max = k;
        } else {
            seq = 0;
        }
    }
    *count = n;
    /* Keys are distinct, so n integers within 1..n are exactly 1..n. */
    return seq && n > 0 && (lua_Unsigned)max == n;
}

/* [-0, +0, -] */
static int enc_array(struct enc *e, int idx, size_t n)
{
    lua_State *L = e->L;

    if (packed(e, msgpack_pack_array(&e->pk, n)) < 0)
        return -1;
    for (size_t i = 1; i <= n; i++) {
        lua_rawgeti(L, idx, (lua_Integer)i);
        int rc = enc_value(e, lua_gettop(L));
        lua_pop(L, 1);
        if (rc < 0) {
            char seg[32];
            int m = snprintf(seg, sizeof seg, "[%zu]", i);
            where_prepend(e, seg, (size_t)m);
            return -1;
        }
    }
    return 0;
}

/* Keys are limited to what codec_decode accepts, so whatever we send can be
 * read back. [-0, +0, -] */
static int enc_key(struct enc *e, int idx)
{
    lua_State *L = e->L;

    switch (lua_type(L, idx)) {
    case LUA_TSTRING:
    case LUA_TBOOLEAN:
        return enc_value(e, idx);
    case LUA_TNUMBER:
        if (lua_isinteger(L, idx))
            return enc_value(e, idx);
        return refuse(e, "cannot encode a float table key (%.14g)",
                      (double)lua_tonumber(L, idx));
    default:
        return refuse(e, "cannot encode a table key of type %s",
                      luaL_typename(L, idx));
    }
}

/* [-0, +0, -] */
static int enc_map(struct enc *e, int idx, size_t n)
{
    lua_State *L = e->L;

    if (packed(e, msgpack_pack_map(&e->pk, n)) < 0)
        return -1;
    lua_pushnil(L);
    while (lua_next(L, idx)) {
        int key = lua_gettop(L) - 1;
        if (enc_key(e, key) < 0) {
            lua_pop(L, 2);
            return -1;
        }
        if (enc_value(e, key + 1) < 0) {
            where_key(e, key);
            lua_pop(L, 2);
            return -1;
        }
        lua_pop(L, 1);
    }
    return 0;
}

/* [-0, +0, -] */
static int enc_table(struct enc *e, int idx)
{
    lua_State *L = e->L;
    const void *id = lua_topointer(L, idx);

    for (int i = 0; i < e->depth; i++)
        if (e->path[i] == id)
            return refuse(e, "cannot encode a table that contains itself");
    if (e->depth >= CODEC_MAX_DEPTH)
        return refuse(e, "cannot encode tables nested deeper than %d",
                      CODEC_MAX_DEPTH);
    /* A key and a value per level, plus one spare. */
    if (!lua_checkstack(L, 3))
        return refuse(e, "cannot encode: Lua stack exhausted");

    size_t n;
    int array = enc_is_array(L, idx, &n);

    e->path[e->depth++] = id;
    int rc = array ? enc_array(e, idx, n) : enc_map(e, idx, n);
    e->depth--;
    return rc;
}

/* idx is absolute. [-0, +0, -] */
static int enc_value(struct enc *e, int idx)
{
    lua_State *L = e->L;
    msgpack_packer *pk = &e->pk;

    switch (lua_type(L, idx)) {
    case LUA_TNIL:
        return packed(e, msgpack_pack_nil(pk));
    case LUA_TBOOLEAN:
        return packed(e, lua_toboolean(L, idx) ? msgpack_pack_true(pk)
                                               : msgpack_pack_false(pk));
    case LUA_TNUMBER:
        if (lua_isinteger(L, idx))
            return packed(e, msgpack_pack_int64(pk, lua_tointeger(L, idx)));
        return packed(e, msgpack_pack_double(pk, (double)lua_tonumber(L, idx)));
    case LUA_TSTRING: {
        size_t n;
        const char *s = lua_tolstring(L, idx, &n);
        if (n > UINT32_MAX)
            return refuse(e, "cannot encode a string of %zu bytes", n);
        if (packed(e, msgpack_pack_str(pk, n)) < 0)
            return -1;
        return packed(e, msgpack_pack_str_body(pk, s, n));
    }
    case LUA_TTABLE:
        return enc_table(e, idx);
    case LUA_TLIGHTUSERDATA:
        return refuse(e, "cannot encode a light userdata");
    default:
        return refuse(e, "cannot encode a %s", luaL_typename(L, idx));
    }
}

int codec_encode(lua_State *L, int idx, struct buf *out, char *err,
                 size_t errlen)
{
    struct enc e;
    int top = lua_gettop(L);

    e.L = L;
    e.depth = 0;
    e.why[0] = '\0';
    e.wstart = sizeof e.where;
    e.wcut = 0;
    msgpack_packer_init(&e.pk, out, enc_write);

    int rc = enc_value(&e, lua_absindex(L, idx));
    lua_settop(L, top);
    if (rc == 0)
        return 0;

    const char *path = e.where + e.wstart;
    size_t plen = sizeof e.where - e.wstart;
    if (plen > 0 && path[0] == '.') {
        path++;
        plen--;
    }
    if (plen == 0)
        snprintf(err, errlen, "%s", e.why);
    else
        snprintf(err, errlen, "%s (at key '%s%.*s')", e.why,
                 e.wcut ? "..." : "", (int)plen, path);
    return -1;
}

/* ---- decoding ---------------------------------------------------------- */

struct dec {
    lua_State *L;
    const unsigned char *start, *p, *end;
    const char *why;    /* the reason for failing; a static string */
    size_t at;          /* offset of the item that failed */
};

static int dec_value(struct dec *d, int depth);

static int dec_fail(struct dec *d, const unsigned char *item, const char *why)
{
    d->why = why;
    d->at = (size_t)(item - d->start);
    return -1;
}

static size_t dec_left(const struct dec *d)
{
    return (size_t)(d->end - d->p);
}

/* Reads an n-byte big-endian unsigned integer. */
static int dec_uint(struct dec *d, const unsigned char *item, int n,
                    uint64_t *v)
{
    if (dec_left(d) < (size_t)n)
        return dec_fail(d, item, "truncated input");
    *v = 0;
    for (int i = 0; i < n; i++)
        *v = *v << 8 | d->p[i];
    d->p += n;
    return 0;
}

/* Two's complement of the low bits of u, without implementation-defined
 * conversions. */
static int64_t dec_signed(uint64_t u, int bits)
{
    uint64_t mask = bits == 64 ? UINT64_MAX : ((uint64_t)1 << bits) - 1;
    uint64_t sign = (uint64_t)1 << (bits - 1);

    u &= mask;
    if (!(u & sign))
        return (int64_t)u;
    return -(int64_t)(~u & mask) - 1;
}

/* [-0, +1, m] */
static int dec_str(struct dec *d, const unsigned char *item, uint64_t n)
{
    if (dec_left(d) < n)
        return dec_fail(d, item, "truncated input");
    lua_pushlstring(d->L, (const char *)d->p, (size_t)n);
    d->p += n;
    return 0;
}

/* [-0, +1, m] */
static int dec_array(struct dec *d, const unsigned char *item, uint64_t n,
                     int depth)
{
    lua_State *L = d->L;

    if (depth >= CODEC_MAX_DEPTH)
        return dec_fail(d, item, "nested deeper than " STR(CODEC_MAX_DEPTH));
    /* Every element takes at least one byte: a larger count cannot be
     * honest, and must not size an allocation. */
    if (n > dec_left(d))
        return dec_fail(d, item, "truncated input");
    if (!lua_checkstack(L, 3))
        return dec_fail(d, item, "Lua stack exhausted");
    lua_createtable(L, n > INT_MAX ? INT_MAX : (int)n, 0);
    for (uint64_t i = 1; i <= n; i++) {
        if (dec_value(d, depth + 1) < 0)
            return -1;
        lua_rawseti(L, -2, (lua_Integer)i);
    }
    return 0;
}

/* Map keys may be strings, integers or booleans: what a Lua table key
 * written by codec_encode can be, and never nil or NaN. [-0, +1, m] */
static int dec_key(struct dec *d, int depth)
{
    const unsigned char *item = d->p;

    if (dec_left(d) < 1)
        return dec_fail(d, item, "truncated input");
    unsigned c = *item;
    if (!(c <= 0x7f || c >= 0xe0 || (c >= 0xa0 && c <= 0xbf) || c == 0xc2 ||
          c == 0xc3 || (c >= 0xcc && c <= 0xd3) || (c >= 0xd9 && c <= 0xdb)))
        return dec_fail(d, item,
                        "map key must be a string, integer or boolean");
    if (dec_value(d, depth) < 0)
        return -1;
    if (lua_type(d->L, -1) == LUA_TNUMBER && !lua_isinteger(d->L, -1)) {
        lua_pop(d->L, 1);
        return dec_fail(d, item, "map key is an integer beyond int64");
    }
    return 0;
}

/* [-0, +1, m] */
static int dec_map(struct dec *d, const unsigned char *item, uint64_t n,
                   int depth)
{
    lua_State *L = d->L;

    if (depth >= CODEC_MAX_DEPTH)
        return dec_fail(d, item, "nested deeper than " STR(CODEC_MAX_DEPTH));
    if (n > dec_left(d) / 2)
        return dec_fail(d, item, "truncated input");
    if (!lua_checkstack(L, 4))
        return dec_fail(d, item, "Lua stack exhausted");
    lua_createtable(L, 0, n > INT_MAX ? INT_MAX : (int)n);
    for (uint64_t i = 0; i < n; i++) {
        if (dec_key(d, depth + 1) < 0 || dec_value(d, depth + 1) < 0)
            return -1;
        lua_rawset(L, -3);
    }
    return 0;
}

/* Pushes the value at d->p; depth counts the containers around it. On
 * failure it may leave partial values, which codec_decode drops.
 * [-0, +1, m] */
static int dec_value(struct dec *d, int depth)
{
    lua_State *L = d->L;
    const unsigned char *item = d->p;
    uint64_t u;

    if (dec_left(d) < 1)
        return dec_fail(d, item, "truncated input");
    unsigned c = *d->p++;

    if (c <= 0x7f) {
        lua_pushinteger(L, (lua_Integer)c);
        return 0;
    }
    if (c >= 0xe0) {
        lua_pushinteger(L, (lua_Integer)c - 0x100);
        return 0;
    }
    if (c <= 0x8f)
        return dec_map(d, item, c & 0x0f, depth);
    if (c <= 0x9f)
        return dec_array(d, item, c & 0x0f, depth);
    if (c <= 0xbf)
        return dec_str(d, item, c & 0x1f);

    switch (c) {
    case 0xc0:
        lua_pushnil(L);
        return 0;
    case 0xc2:
    case 0xc3:
        lua_pushboolean(L, c == 0xc3);
        return 0;
    case 0xc4: /* bin 8/16/32: a Lua string is bytes anyway */
    case 0xc5:
    case 0xc6:
        if (dec_uint(d, item, 1 << (c - 0xc4), &u) < 0)
            return -1;
        return dec_str(d, item, u);
    case 0xca: {
        float f;
        uint32_t bits;
        if (dec_uint(d, item, 4, &u) < 0)
            return -1;
        bits = (uint32_t)u;
        memcpy(&f, &bits, sizeof f);
        lua_pushnumber(L, (lua_Number)f);
        return 0;
    }
    case 0xcb: {
        double f;
        if (dec_uint(d, item, 8, &u) < 0)
            return -1;
        memcpy(&f, &u, sizeof f);
        lua_pushnumber(L, (lua_Number)f);
        return 0;
    }
    case 0xcc: /* uint 8/16/32/64 */
    case 0xcd:
    case 0xce:
    case 0xcf:
        if (dec_uint(d, item, 1 << (c - 0xcc), &u) < 0)
            return -1;
        /* Beyond int64 a float is the closest Lua value. */
        if (u > (uint64_t)INT64_MAX)
            lua_pushnumber(L, (lua_Number)u);
        else
            lua_pushinteger(L, (lua_Integer)u);
        return 0;
    case 0xd0: /* int 8/16/32/64 */
    case 0xd1:
    case 0xd2:
    case 0xd3: {
        int n = 1 << (c - 0xd0);
        if (dec_uint(d, item, n, &u) < 0)
            return -1;
        lua_pushinteger(L, (lua_Integer)dec_signed(u, n * 8));
        return 0;
    }
    case 0xd9: /* str 8/16/32 */
    case 0xda:
    case 0xdb:
        if (dec_uint(d, item, 1 << (c - 0xd9), &u) < 0)
            return -1;
        return dec_str(d, item, u);
    case 0xdc: /* array 16/32 */
    case 0xdd:
        if (dec_uint(d, item, c == 0xdc ? 2 : 4, &u) < 0)
            return -1;
        return dec_array(d, item, u, depth);
    case 0xde: /* map 16/32 */
    case 0xdf:
        if (dec_uint(d, item, c == 0xde ? 2 : 4, &u) < 0)
            return -1;
        return dec_map(d, item, u, depth);
    case 0xc7: /* ext 8/16/32, fixext 1..16 */
    case 0xc8:
    case 0xc9:
    case 0xd4:
    case 0xd5:
    case 0xd6:
    case 0xd7:
    case 0xd8:
        return dec_fail(d, item, "ext values are not supported");
    default: /* 0xc1, never used */
        return dec_fail(d, item, "invalid type byte 0xc1");
    }
}

int codec_decode(lua_State *L, const char *data, size_t len, char *err,
                 size_t errlen)
{
    int top = lua_gettop(L);
    struct dec d = {
        .L = L,
        .start = (const unsigned char *)data,
        .p = (const unsigned char *)data,
        .end = (const unsigned char *)data + len,
        .why = NULL,
        .at = 0,
    };

    if (!lua_checkstack(L, 3)) {
        snprintf(err, errlen, "cannot decode: Lua stack exhausted");
        return -1;
    }
    if (dec_value(&d, 0) == 0) {
        if (d.p == d.end)
            return 0;
        dec_fail(&d, d.p, "trailing bytes after the value");
    }
    lua_settop(L, top);
    snprintf(err, errlen, "cannot decode: %s (at byte %zu of %zu)", d.why,
             d.at, len);
    return -1;
}

/* ---- Lua binding: pogo.core.codec ------------------------------------- */

#define CODEC_BUF_MT "pogo.codec.buf"

/* __gc and __close of the buffer encode() works in, so a Lua error raised
 * while it holds memory (OOM pushing the result) cannot leak it.
 * [-0, +0, -] */
static int l_buf_gc(lua_State *L)
{
    buf_free(luaL_checkudata(L, 1, CODEC_BUF_MT));
    return 0;
}

/* encode(v) -> string; raises on a value that cannot be sent: that is a
 * bug in the caller, not a condition to handle. [-1, +1, e] */
static int l_encode(lua_State *L)
{
    char err[256];

    luaL_checkany(L, 1);
    lua_settop(L, 1);
    struct buf *b = lua_newuserdatauv(L, sizeof *b, 0);
    buf_init(b);
    luaL_setmetatable(L, CODEC_BUF_MT);
    if (codec_encode(L, 1, b, err, sizeof err) < 0) {
        buf_free(b);
        return luaL_error(L, "%s", err);
    }
    lua_pushlstring(L, b->data ? b->data : "", b->len);
    buf_free(b);
    return 1;
}

/* decode(s) -> value | nil, message: bytes come from peers, so malformed
 * input is an expected failure, not an error. [-1, +(1|2), m] */
static int l_decode(lua_State *L)
{
    char err[256];
    size_t len;
    const char *s = luaL_checklstring(L, 1, &len);

    if (codec_decode(L, s, len, err, sizeof err) == 0)
        return 1;
    lua_pushnil(L);
    lua_pushstring(L, err);
    return 2;
}

static const luaL_Reg codec_funcs[] = {
    {"encode", l_encode},
    {"decode", l_decode},
    {NULL, NULL},
};

/* [-0, +1, m] */
int luaopen_pogo_codec(lua_State *L)
{
    luaL_newmetatable(L, CODEC_BUF_MT);
    lua_pushcfunction(L, l_buf_gc);
    lua_setfield(L, -2, "__gc");
    lua_pushcfunction(L, l_buf_gc);
    lua_setfield(L, -2, "__close");
    lua_pop(L, 1);

    luaL_newlib(L, codec_funcs);
    lua_pushinteger(L, CODEC_MAX_DEPTH);
    lua_setfield(L, -2, "max_depth");
    return 1;
}
