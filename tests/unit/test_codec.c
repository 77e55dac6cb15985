/* test_codec.c - Lua values <-> MessagePack. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <lualib.h>

#include "pogo.h"
#include "unit.h"

/* same(a, b): deep equality that also tells integers from floats and
 * compares floats bit for bit (so -0.0 ~= 0.0 and NaN == NaN). */
static const char prelude[] =
    "function same(a, b)\n"
    "  if type(a) ~= type(b) then return false end\n"
    "  if type(a) == 'number' then\n"
    "    if math.type(a) ~= math.type(b) then return false end\n"
    "    if math.type(a) == 'float' then\n"
    "      return string.pack('<d', a) == string.pack('<d', b)\n"
    "    end\n"
    "    return a == b\n"
    "  end\n"
    "  if type(a) ~= 'table' then return a == b end\n"
    "  for k, v in pairs(a) do\n"
    "    if not same(v, rawget(b, k)) then return false end\n"
    "  end\n"
    "  for k in pairs(b) do\n"
    "    if rawget(a, k) == nil then return false end\n"
    "  end\n"
    "  return true\n"
    "end\n"
    "function nest(n, leaf)\n"
    "  local t = leaf\n"
    "  for _ = 1, n do t = { t } end\n"
    "  return t\n"
    "end\n";

static lua_State *new_state(void)
{
    lua_State *L = luaL_newstate();

    REQUIRE(L != NULL);
    luaL_openlibs(L);
    if (luaL_dostring(L, prelude) != LUA_OK) {
        FAIL("prelude: %s", lua_tostring(L, -1));
        REQUIRE(0);
    }
    return L;
}

/* Pushes the value of a Lua expression. [-0, +1, -] */
static void eval(lua_State *L, const char *expr)
{
    char code[4096];

    snprintf(code, sizeof code, "return %s", expr);
    if (luaL_loadstring(L, code) != LUA_OK || lua_pcall(L, 0, 1, 0) != LUA_OK) {
        FAIL("eval %s: %s", expr, lua_tostring(L, -1));
        REQUIRE(0);
    }
}

/* Whether the values at a and b are the same per same(). [-0, +0, -] */
static int same(lua_State *L, int a, int b)
{
    a = lua_absindex(L, a);
    b = lua_absindex(L, b);
    lua_getglobal(L, "same");
    lua_pushvalue(L, a);
    lua_pushvalue(L, b);
    REQUIRE_EQ_INT(lua_pcall(L, 2, 1, 0), LUA_OK);
    int r = lua_toboolean(L, -1);
    lua_pop(L, 1);
    return r;
}

/* Encodes expr, decodes the bytes and compares. */
static int roundtrip(lua_State *L, const char *expr)
{
    struct buf b;
    char err[256];
    int top = lua_gettop(L), ok = 1;

    buf_init(&b);
    eval(L, expr);
    if (codec_encode(L, -1, &b, err, sizeof err) != 0) {
        FAIL("encode %s: %s", expr, err);
        ok = 0;
    } else if (lua_gettop(L) != top + 1) {
        FAIL("encode %s: stack %d, expected %d", expr, lua_gettop(L), top + 1);
        ok = 0;
    } else if (codec_decode(L, b.data, b.len, err, sizeof err) != 0) {
        FAIL("decode %s: %s", expr, err);
        ok = 0;
    } else if (!same(L, -1, -2)) {
        FAIL("roundtrip %s: decoded value differs", expr);
        ok = 0;
    }
    lua_settop(L, top);
    buf_free(&b);
    return ok;
}

/* Encodes expr and compares the bytes. */
static int encodes_as(lua_State *L, const char *expr, const char *bytes,
                      size_t len)
{
    struct buf b;
    char err[256];
    int ok;

    buf_init(&b);
    eval(L, expr);
    if (codec_encode(L, -1, &b, err, sizeof err) != 0) {
        FAIL("encode %s: %s", expr, err);
        ok = 0;
    } else {
        ok = CHECK_MEM_EQ(b.data, b.len, bytes, len);
        if (!ok)
            FAIL("... for %s", expr);
    }
    lua_pop(L, 1);
    buf_free(&b);
    return ok;
}

#define ENCODES_AS(L, expr, lit) encodes_as(L, expr, lit, sizeof lit - 1)

/* Encodes the value on top (popping it) expecting a refusal; err gets the
 * message. Also checks the stack is left as it was. */
static int encode_refused(lua_State *L, char *err, size_t errlen)
{
    struct buf b;
    int top = lua_gettop(L);

    buf_init(&b);
    int rc = codec_encode(L, -1, &b, err, errlen);
    CHECK_EQ_INT(lua_gettop(L), top);
    lua_pop(L, 1);
    buf_free(&b);
    return rc == -1;
}

static int refused_with(lua_State *L, const char *expr, const char *msg)
{
    char err[256];

    eval(L, expr);
    if (!encode_refused(L, err, sizeof err)) {
        FAIL("encode %s succeeded", expr);
        return 0;
    }
    if (strcmp(err, msg) != 0) {
        FAIL("encode %s: \"%s\", expected \"%s\"", expr, err, msg);
        return 0;
    }
    return 1;
}

/* Decodes bytes expecting failure; err gets the message. Checks nothing
 * was left on the stack. */
static int decode_fails(lua_State *L, const char *data, size_t len, char *err,
                        size_t errlen)
{
    int top = lua_gettop(L);
    int rc = codec_decode(L, data, len, err, errlen);

    if (rc == 0) {
        lua_pop(L, 1);
        return 0;
    }
    CHECK_EQ_INT(lua_gettop(L), top);
    return rc == -1;
}

static int decode_fails_with(lua_State *L, const char *data, size_t len,
                             const char *msg)
{
    char err[256];

    if (!decode_fails(L, data, len, err, sizeof err)) {
        FAIL("decode of %zu bytes succeeded, expected \"%s\"", len, msg);
        return 0;
    }
    if (strstr(err, msg) == NULL) {
        FAIL("decode: \"%s\", expected \"%s\"", err, msg);
        return 0;
    }
    return 1;
}

#define DECODE_FAILS(L, lit, msg) decode_fails_with(L, lit, sizeof lit - 1, msg)

/* Decodes bytes and compares with a Lua expression. */
static int decodes_to(lua_State *L, const char *data, size_t len,
                      const char *expr)
{
    char err[256];
    int top = lua_gettop(L), ok = 1;

    if (codec_decode(L, data, len, err, sizeof err) != 0) {
        FAIL("decode for %s: %s", expr, err);
        return 0;
    }
    eval(L, expr);
    if (!same(L, -1, -2)) {
        FAIL("decoded value is not %s", expr);
        ok = 0;
    }
    lua_settop(L, top);
    return ok;
}

#define DECODES_TO(L, lit, expr) decodes_to(L, lit, sizeof lit - 1, expr)

/* ---- encoding: wire form ---------------------------------------------- */

TEST(codec_encode_scalar_bytes)
{
    lua_State *L = new_state();

    CHECK(ENCODES_AS(L, "nil", "\xc0"));
    CHECK(ENCODES_AS(L, "true", "\xc3"));
    CHECK(ENCODES_AS(L, "false", "\xc2"));
    CHECK(ENCODES_AS(L, "0", "\x00"));
    CHECK(ENCODES_AS(L, "127", "\x7f"));
    CHECK(ENCODES_AS(L, "128", "\xcc\x80"));
    CHECK(ENCODES_AS(L, "-1", "\xff"));
    CHECK(ENCODES_AS(L, "-32", "\xe0"));
    CHECK(ENCODES_AS(L, "-33", "\xd0\xdf"));
    CHECK(ENCODES_AS(L, "65536", "\xce\x00\x01\x00\x00"));
    CHECK(ENCODES_AS(L, "math.maxinteger",
                     "\xcf\x7f\xff\xff\xff\xff\xff\xff\xff"));
    CHECK(ENCODES_AS(L, "math.mininteger",
                     "\xd3\x80\x00\x00\x00\x00\x00\x00\x00"));
    /* Floats stay floats, even when integral. */
    CHECK(ENCODES_AS(L, "1.5", "\xcb\x3f\xf8\x00\x00\x00\x00\x00\x00"));
    CHECK(ENCODES_AS(L, "1.0", "\xcb\x3f\xf0\x00\x00\x00\x00\x00\x00"));
    CHECK(ENCODES_AS(L, "-0.0", "\xcb\x80\x00\x00\x00\x00\x00\x00\x00"));
    CHECK(ENCODES_AS(L, "''", "\xa0"));
    CHECK(ENCODES_AS(L, "'a\\0b'", "\xa3" "a\0b"));
    CHECK(ENCODES_AS(L, "string.rep('x', 32)",
                     "\xd9\x20xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"));
    lua_close(L);
}

TEST(codec_encode_table_bytes)
{
    lua_State *L = new_state();

    CHECK(ENCODES_AS(L, "{}", "\x80"));
    CHECK(ENCODES_AS(L, "{1, 2, 3}", "\x93\x01\x02\x03"));
    CHECK(ENCODES_AS(L, "{a = 1}", "\x81\xa1" "a\x01"));
    CHECK(ENCODES_AS(L, "{{}}", "\x91\x80"));
    CHECK(ENCODES_AS(L, "{[1.0] = 'x'}", "\x91\xa1x"));  /* 1.0 is key 1 */
    /* Anything but keys 1..n is a map. */
    CHECK(ENCODES_AS(L, "{[2] = 7}", "\x81\x02\x07"));
    CHECK(ENCODES_AS(L, "{[0] = 7}", "\x81\x00\x07"));
    CHECK(ENCODES_AS(L, "{[-1] = 7}", "\x81\xff\x07"));
    CHECK(ENCODES_AS(L, "{[true] = 7}", "\x81\xc3\x07"));
    CHECK(ENCODES_AS(L, "{[1000000] = 1}", "\x81\xce\x00\x0f\x42\x40\x01"));
    lua_close(L);
}

TEST(codec_sparse_and_mixed_tables_are_maps)
{
    lua_State *L = new_state();
    struct buf b;
    char err[256];

    const char *maps[] = {"{1, nil, 3}", "{1, 2, n = 2}", "{[1] = 1, [3] = 3}",
                          "{nil, 2}"};
    for (size_t i = 0; i < sizeof maps / sizeof *maps; i++) {
        buf_init(&b);
        eval(L, maps[i]);
        REQUIRE_EQ_INT(codec_encode(L, -1, &b, err, sizeof err), 0);
        if (!CHECK_EQ_INT((unsigned char)b.data[0] & 0xf0, 0x80))
            FAIL("%s is not a map", maps[i]);
        lua_pop(L, 1);
        buf_free(&b);
        CHECK(roundtrip(L, maps[i]));
    }
    lua_close(L);
}

TEST(codec_encode_index_forms)
{
    lua_State *L = new_state();
    struct buf b;
    char err[64];

    buf_init(&b);
    lua_pushinteger(L, 5);
    lua_pushstring(L, "other");
    REQUIRE_EQ_INT(codec_encode(L, -2, &b, err, sizeof err), 0);
    REQUIRE_EQ_INT(codec_encode(L, 1, &b, err, sizeof err), 0);
    CHECK_MEM_EQ(b.data, b.len, "\x05\x05", 2);
    CHECK_EQ_INT(lua_gettop(L), 2);
    buf_free(&b);
    lua_close(L);
}

/* ---- round trips ------------------------------------------------------ */

TEST(codec_roundtrip_integers)
{
    lua_State *L = new_state();
    const char *vals[] = {
        "0", "1", "-1", "31", "-32", "-33", "127", "128", "255", "256",
        "-128", "-129", "32767", "32768", "-32768", "-32769", "65535",
        "65536", "1 << 31", "-(1 << 31)", "-(1 << 31) - 1",
        "4294967295", "4294967296", "math.maxinteger", "math.mininteger",
        "math.maxinteger - 1", "math.mininteger + 1",
    };

    for (size_t i = 0; i < sizeof vals / sizeof *vals; i++)
        if (!CHECK(roundtrip(L, vals[i])))
            FAIL("... for %s", vals[i]);
    lua_close(L);
}

TEST(codec_roundtrip_floats)
{
    lua_State *L = new_state();
    const char *vals[] = {
        "0.0", "-0.0", "1.5", "-1.5", "1.0", "math.pi", "1e300", "-1e-300",
        "4.9e-324", "2^53", "2^63", "-2^63", "math.huge", "-math.huge",
        "0/0", "-(0/0)", "0.1",
    };

    for (size_t i = 0; i < sizeof vals / sizeof *vals; i++)
        if (!CHECK(roundtrip(L, vals[i])))
            FAIL("... for %s", vals[i]);
    lua_close(L);
}

TEST(codec_roundtrip_strings)
{
    lua_State *L = new_state();

    CHECK(roundtrip(L, "''"));
    CHECK(roundtrip(L, "'a\\0b'"));
    CHECK(roundtrip(L, "'\\0'"));
    CHECK(roundtrip(L, "string.rep('x', 31)"));
    CHECK(roundtrip(L, "string.rep('x', 255)"));
    CHECK(roundtrip(L, "string.rep('x', 256)"));
    CHECK(roundtrip(L, "string.rep('x', 65536)"));
    CHECK(roundtrip(L, "(function() local t = {} for i = 0, 255 do "
                       "t[#t + 1] = string.char(i) end "
                       "return table.concat(t) end)()"));
    CHECK(roundtrip(L, "'h\\xc3\\xa9llo \\xff\\xfe'"));
    lua_close(L);
}

TEST(codec_roundtrip_tables)
{
    lua_State *L = new_state();

    CHECK(roundtrip(L, "{}"));
    CHECK(roundtrip(L, "{{}, {{}}}"));
    CHECK(roundtrip(L, "{1, 2.5, 'three', true, false}"));
    CHECK(roundtrip(L, "{a = 1, b = {c = {d = 'deep'}}, [7] = -7}"));
    CHECK(roundtrip(L, "{1, {2, {3, {4}}}, {a = {b = {c = true}}}}"));
    CHECK(roundtrip(L, "{[true] = 'yes', [false] = 'no', [0] = 0, "
                       "[-5] = -5, [math.maxinteger] = 1, "
                       "[math.mininteger] = 2, ['1'] = 'string one'}"));
    CHECK(roundtrip(L, "{1, nil, 3}"));
    CHECK(roundtrip(L, "{x = -0.0, y = 0/0}"));
    /* Shared (not cyclic) tables are copied, not refused. */
    CHECK(roundtrip(L, "(function() local s = {1} "
                       "return {s, s, {s, k = s}} end)()"));
    /* 16- and 32-bit counts. */
    CHECK(roundtrip(L, "(function() local t = {} for i = 1, 70000 do "
                       "t[i] = i end return t end)()"));
    CHECK(roundtrip(L, "(function() local t = {} for i = 1, 70000 do "
                       "t['k' .. i] = i end return t end)()"));
    CHECK(roundtrip(L, "(function() local t = {} for i = 1, 20 do "
                       "t[i * 2] = i end return t end)()"));
    lua_close(L);
}

TEST(codec_depth_limit_is_exact)
{
    lua_State *L = new_state();

    CHECK(roundtrip(L, "nest(64, 1)"));
    CHECK(roundtrip(L, "nest(63, {k = 1})"));
    CHECK(roundtrip(L, "nest(63, {})"));
    /* The path is 64 "[1]"s; too long to show whole, so its tail. */
    const char *deep[] = {"nest(65, 1)", "nest(64, {k = 1})",
                          "nest(64, {})", "nest(100, {})"};
    for (size_t i = 0; i < sizeof deep / sizeof *deep; i++) {
        char err[256];
        eval(L, deep[i]);
        REQUIRE(encode_refused(L, err, sizeof err));
        CHECK(strncmp(err, "cannot encode tables nested deeper than 64 "
                           "(at key '...[1][1]", 61) == 0);
        CHECK(strcmp(err + strlen(err) - 8, "[1][1]')") == 0);
    }
    lua_close(L);
}

/* ---- encoding: refusals ----------------------------------------------- */

TEST(codec_refuses_functions_with_path)
{
    lua_State *L = new_state();

    CHECK(refused_with(L, "print", "cannot encode a function"));
    CHECK(refused_with(L, "{x = {y = print}}",
                       "cannot encode a function (at key 'x.y')"));
    CHECK(refused_with(L, "{1, {2, print}}",
                       "cannot encode a function (at key '[2][2]')"));
    CHECK(refused_with(L, "{list = {{}, {name = print}}}",
                       "cannot encode a function (at key 'list[2].name')"));
    CHECK(refused_with(L, "{['a b'] = {print}}",
                       "cannot encode a function (at key '[\"a b\"][1]')"));
    CHECK(refused_with(L, "{[true] = {[-3] = print}}",
                       "cannot encode a function (at key '[true][-3]')"));
    CHECK(refused_with(L, "{[string.rep('z', 40)] = print}",
                       "cannot encode a function (at key "
                       "'[\"zzzzzzzzzzzzzzzzzzzzzzzz...\"]')"));
    CHECK(refused_with(L, "{['\\n\\0'] = print}",
                       "cannot encode a function (at key '[\"??\"]')"));
    lua_close(L);
}

TEST(codec_refuses_other_types)
{
    lua_State *L = new_state();
    char err[256];

    CHECK(refused_with(L, "io.stdout", "cannot encode a userdata"));
    CHECK(refused_with(L, "{f = io.stdout}",
                       "cannot encode a userdata (at key 'f')"));
    CHECK(refused_with(L, "coroutine.create(print)",
                       "cannot encode a thread"));
    lua_pushlightuserdata(L, err);
    CHECK(encode_refused(L, err, sizeof err));
    CHECK_STR_EQ(err, "cannot encode a light userdata");
    lua_createtable(L, 0, 1);
    lua_pushlightuserdata(L, err);
    lua_setfield(L, -2, "p");
    CHECK(encode_refused(L, err, sizeof err));
    CHECK_STR_EQ(err, "cannot encode a light userdata (at key 'p')");
    CHECK_EQ_INT(lua_gettop(L), 0);
    lua_close(L);
}

TEST(codec_refuses_bad_keys)
{
    lua_State *L = new_state();

    CHECK(refused_with(L, "{[{}] = 1}",
                       "cannot encode a table key of type table"));
    CHECK(refused_with(L, "{[print] = 1}",
                       "cannot encode a table key of type function"));
    CHECK(refused_with(L, "{[1.5] = 1}",
                       "cannot encode a float table key (1.5)"));
    CHECK(refused_with(L, "{a = {[math.huge] = 1}}",
                       "cannot encode a float table key (inf) (at key 'a')"));
    lua_close(L);
}

TEST(codec_refuses_cycles)
{
    lua_State *L = new_state();

    CHECK(refused_with(L, "(function() local t = {} t.self = t return t end)()",
                       "cannot encode a table that contains itself "
                       "(at key 'self')"));
    CHECK(refused_with(L, "(function() local a = {b = {c = {}}} "
                          "a.b.c.back = a return a end)()",
                       "cannot encode a table that contains itself "
                       "(at key 'b.c.back')"));
    CHECK(refused_with(L, "(function() local t = {} t[1] = t return t end)()",
                       "cannot encode a table that contains itself "
                       "(at key '[1]')"));
    /* A table as a key of itself is refused as a key first. */
    CHECK(refused_with(L, "(function() local t = {} t[t] = 1 return t end)()",
                       "cannot encode a table key of type table"));
    lua_close(L);
}

TEST(codec_error_message_bounds)
{
    lua_State *L = new_state();
    char err[256];
    char tiny[16];

    /* A path longer than the message can hold keeps its tail. */
    eval(L, "(function() local t = print "
            "for i = 1, 60 do t = {abcdefghij = t} end return t end)()");
    lua_pushvalue(L, -1);
    REQUIRE(encode_refused(L, err, sizeof err));
    CHECK(strncmp(err, "cannot encode a function (at key '...", 37) == 0);
    CHECK(strstr(err, ".abcdefghij.abcdefghij')") != NULL);
    CHECK(strlen(err) < sizeof err - 1);
    /* A small err buffer truncates, never overflows. */
    REQUIRE(encode_refused(L, tiny, sizeof tiny));
    CHECK_STR_EQ(tiny, "cannot encode a");
    CHECK_EQ_INT(lua_gettop(L), 0);
    lua_close(L);
}

/* ---- decoding --------------------------------------------------------- */

TEST(codec_decode_every_type)
{
    lua_State *L = new_state();

    CHECK(DECODES_TO(L, "\xc0", "nil"));
    CHECK(DECODES_TO(L, "\xc2", "false"));
    CHECK(DECODES_TO(L, "\xc3", "true"));
    CHECK(DECODES_TO(L, "\x7f", "127"));
    CHECK(DECODES_TO(L, "\xe0", "-32"));
    CHECK(DECODES_TO(L, "\xcc\xff", "255"));
    CHECK(DECODES_TO(L, "\xcd\xff\xff", "65535"));
    CHECK(DECODES_TO(L, "\xce\xff\xff\xff\xff", "4294967295"));
    CHECK(DECODES_TO(L, "\xcf\x7f\xff\xff\xff\xff\xff\xff\xff",
                     "math.maxinteger"));
    /* Beyond int64 the closest Lua value is a float. */
    CHECK(DECODES_TO(L, "\xcf\xff\xff\xff\xff\xff\xff\xff\xff", "2.0^64"));
    CHECK(DECODES_TO(L, "\xcf\x80\x00\x00\x00\x00\x00\x00\x00", "2.0^63"));
    CHECK(DECODES_TO(L, "\xd0\x80", "-128"));
    CHECK(DECODES_TO(L, "\xd0\x7f", "127"));
    CHECK(DECODES_TO(L, "\xd0\xff", "-1"));
    CHECK(DECODES_TO(L, "\xd1\x80\x00", "-32768"));
    CHECK(DECODES_TO(L, "\xd2\x80\x00\x00\x00", "-2147483648"));
    CHECK(DECODES_TO(L, "\xd2\x7f\xff\xff\xff", "2147483647"));
    CHECK(DECODES_TO(L, "\xd3\x80\x00\x00\x00\x00\x00\x00\x00",
                     "math.mininteger"));
    CHECK(DECODES_TO(L, "\xd3\xff\xff\xff\xff\xff\xff\xff\xfe", "-2"));
    CHECK(DECODES_TO(L, "\xca\x3f\xc0\x00\x00", "1.5"));
    CHECK(DECODES_TO(L, "\xca\x80\x00\x00\x00", "-0.0"));
    CHECK(DECODES_TO(L, "\xcb\x7f\xf0\x00\x00\x00\x00\x00\x00", "math.huge"));
    /* Non-minimal forms are fine. */
    CHECK(DECODES_TO(L, "\xd9\x01" "a", "'a'"));
    CHECK(DECODES_TO(L, "\xda\x00\x01" "a", "'a'"));
    CHECK(DECODES_TO(L, "\xdb\x00\x00\x00\x01" "a", "'a'"));
    CHECK(DECODES_TO(L, "\xdc\x00\x01\x01", "{1}"));
    CHECK(DECODES_TO(L, "\xdd\x00\x00\x00\x01\x01", "{1}"));
    CHECK(DECODES_TO(L, "\xde\x00\x01\xa1" "a\x01", "{a = 1}"));
    CHECK(DECODES_TO(L, "\xdf\x00\x00\x00\x01\xa1" "a\x01", "{a = 1}"));
    CHECK(DECODES_TO(L, "\xdc\x00\x00", "{}"));
    CHECK(DECODES_TO(L, "\x90", "{}"));
    /* bin is bytes: a Lua string. */
    CHECK(DECODES_TO(L, "\xc4\x03" "a\0b", "'a\\0b'"));
    CHECK(DECODES_TO(L, "\xc5\x00\x01" "z", "'z'"));
    CHECK(DECODES_TO(L, "\xc6\x00\x00\x00\x00", "''"));
    /* nil elements leave holes; a repeated key keeps the last value. */
    CHECK(DECODES_TO(L, "\x93\x01\xc0\x03", "{1, nil, 3}"));
    CHECK(DECODES_TO(L, "\x82\xa1" "a\x01\xa1" "a\x02", "{a = 2}"));
    CHECK(DECODES_TO(L, "\x81\xa1" "a\xc0", "{}"));
    lua_close(L);
}

TEST(codec_decode_map_keys)
{
    lua_State *L = new_state();
    const char *bad = "map key must be a string, integer or boolean";

    CHECK(DECODES_TO(L, "\x81\x01\x02", "{[1] = 2}"));
    CHECK(DECODES_TO(L, "\x81\xff\x02", "{[-1] = 2}"));
    CHECK(DECODES_TO(L, "\x81\xd3\x80\x00\x00\x00\x00\x00\x00\x00\x02",
                     "{[math.mininteger] = 2}"));
    CHECK(DECODES_TO(L, "\x82\xc3\x01\xc2\x00", "{[true] = 1, [false] = 0}"));
    CHECK(DECODES_TO(L, "\x81\xd9\x01k\x02", "{k = 2}"));
    CHECK(DECODE_FAILS(L, "\x81\xc0\x01", bad));
    CHECK(DECODE_FAILS(L, "\x81\x91\x01\x01", bad));
    CHECK(DECODE_FAILS(L, "\x81\x80\x01", bad));
    CHECK(DECODE_FAILS(L, "\x81\xc4\x01" "a\x01", bad));
    CHECK(DECODE_FAILS(L, "\x81\xca\x3f\xc0\x00\x00\x01", bad));
    /* NaN would be an invalid Lua key: refused like any float. */
    CHECK(DECODE_FAILS(L, "\x81\xcb\x7f\xf8\x00\x00\x00\x00\x00\x00\x01", bad));
    CHECK(DECODE_FAILS(L, "\x81\xcb\xff\xf8\x00\x00\x00\x00\x00\x01\x01", bad));
    CHECK(DECODE_FAILS(L, "\x81\xd4\x01\x00\x01", bad));
    CHECK(DECODE_FAILS(L, "\x81\xcf\xff\xff\xff\xff\xff\xff\xff\xff\x01",
                       "map key is an integer beyond int64"));
    /* The failing offset is reported. */
    CHECK(DECODE_FAILS(L, "\x91\x81\xc0\x01", "(at byte 2 of 4)"));
    lua_close(L);
}

TEST(codec_decode_refuses_ext_and_c1)
{
    lua_State *L = new_state();

    CHECK(DECODE_FAILS(L, "\xc1", "invalid type byte 0xc1"));
    CHECK(DECODE_FAILS(L, "\x91\xc1", "invalid type byte 0xc1"));
    CHECK(DECODE_FAILS(L, "\xd4\x01\x00", "ext values are not supported"));
    CHECK(DECODE_FAILS(L, "\xd5\x01\x00\x00", "ext values are not supported"));
    CHECK(DECODE_FAILS(L, "\xd6\xff\x00\x00\x00\x00", "ext"));
    CHECK(DECODE_FAILS(L, "\xd7\xff\x00\x00\x00\x00\x00\x00\x00\x00", "ext"));
    CHECK(DECODE_FAILS(L, "\xd8\x01" "0123456789abcdef", "ext"));
    CHECK(DECODE_FAILS(L, "\xc7\x01\x01\x00", "ext"));
    CHECK(DECODE_FAILS(L, "\xc8\x00\x01\x01\x00", "ext"));
    CHECK(DECODE_FAILS(L, "\xc9\x00\x00\x00\x01\x01\x00", "ext"));
    CHECK(DECODE_FAILS(L, "\x81\xa1k\xd4\x01\x00", "ext"));
    lua_close(L);
}

TEST(codec_decode_truncated_at_every_prefix)
{
    lua_State *L = new_state();
    struct buf b;
    char err[256];

    buf_init(&b);
    eval(L, "{1, -200, 70000, math.mininteger, 2.0^70, 1.5, "
            "string.rep('s', 40), string.rep('m', 300), true, false, "
            "{k = {1, {}}, [5] = 'five', [true] = -0.0}, {}, "
            "(function() local t = {} for i = 1, 20 do t[i] = i end "
            "return t end)(), "
            "(function() local t = {} for i = 1, 20 do t['k' .. i] = i end "
            "return t end)()}");
    REQUIRE_EQ_INT(codec_encode(L, -1, &b, err, sizeof err), 0);
    for (size_t n = 0; n < b.len; n++) {
        if (!decode_fails(L, b.data, n, err, sizeof err)) {
            FAIL("prefix of %zu bytes decoded", n);
            continue;
        }
        if (!CHECK_CONTAINS(err, "truncated input"))
            FAIL("... for prefix %zu", n);
    }
    REQUIRE_EQ_INT(codec_decode(L, b.data, b.len, err, sizeof err), 0);
    CHECK(same(L, -1, -2));
    lua_pop(L, 2);
    buf_free(&b);
    CHECK(DECODE_FAILS(L, "", "truncated input"));
    CHECK_EQ_INT(lua_gettop(L), 0);
    lua_close(L);
}

TEST(codec_decode_trailing_bytes)
{
    lua_State *L = new_state();

    CHECK(DECODE_FAILS(L, "\xc0\xc0", "trailing bytes after the value "
                                      "(at byte 1 of 2)"));
    CHECK(DECODE_FAILS(L, "\x91\x01\x02", "trailing bytes"));
    CHECK(DECODE_FAILS(L, "\x80\x00", "trailing bytes"));
    CHECK(DECODE_FAILS(L, "\xa1xyz", "trailing bytes"));
    lua_close(L);
}

TEST(codec_decode_huge_counts_do_not_allocate)
{
    lua_State *L = new_state();

    /* Counts the remaining bytes cannot hold fail at once as truncated,
     * with no allocation sized from the header. */
    CHECK(DECODE_FAILS(L, "\xdd\xff\xff\xff\xff", "truncated input"));
    CHECK(DECODE_FAILS(L, "\xdf\xff\xff\xff\xff", "truncated input"));
    CHECK(DECODE_FAILS(L, "\xdb\xff\xff\xff\xff", "truncated input"));
    CHECK(DECODE_FAILS(L, "\xc6\xff\xff\xff\xff", "truncated input"));
    CHECK(DECODE_FAILS(L, "\xdc\x00\x03\x01\x02", "truncated input"));
    CHECK(DECODE_FAILS(L, "\xde\x00\x02\x01\x02\x03", "truncated input"));
    CHECK(DECODE_FAILS(L, "\x92\xdd\x7f\xff\xff\xff\x01", "truncated input"));
    lua_close(L);
}

/* 0x91 (array of one) n times around nil, or 0x81 0xa1 'k' for maps. */
static size_t nested_bytes(char *out, int n, int maps)
{
    size_t len = 0;

    for (int i = 0; i < n; i++) {
        if (maps) {
            out[len++] = (char)0x81;
            out[len++] = (char)0xa1;
            out[len++] = 'k';
        } else {
            out[len++] = (char)0x91;
        }
    }
    out[len++] = (char)0xc0;
    return len;
}

TEST(codec_decode_depth_limit)
{
    lua_State *L = new_state();
    char data[1024], err[256];

    for (int maps = 0; maps <= 1; maps++) {
        size_t len = nested_bytes(data, 64, maps);
        REQUIRE_EQ_INT(codec_decode(L, data, len, err, sizeof err), 0);
        lua_pop(L, 1);
        len = nested_bytes(data, 65, maps);
        CHECK(decode_fails_with(L, data, len, "nested deeper than 64"));
        len = nested_bytes(data, 300, maps);
        CHECK(decode_fails_with(L, data, len, "nested deeper than 64"));
    }
    /* Mixed 16-bit array headers around a map. */
    size_t len = 0;
    for (int i = 0; i < 64; i++) {
        memcpy(data + len, "\xdc\x00\x01", 3);
        len += 3;
    }
    memcpy(data + len, "\x81\x01\xc0", 3);
    CHECK(decode_fails_with(L, data, len + 3, "nested deeper than 64"));
    memcpy(data + len, "\x01", 1);
    CHECK(decodes_to(L, data, len + 1, "nest(64, 1)"));
    CHECK_EQ_INT(lua_gettop(L), 0);
    lua_close(L);
}

/* ---- hostile input ---------------------------------------------------- */

static uint32_t rng_next(uint32_t *s)
{
    /* xorshift32: deterministic, so a failure reproduces. */
    *s ^= *s << 13;
    *s ^= *s >> 17;
    *s ^= *s << 5;
    return *s;
}

/* If data decodes, the value must encode again and come back the same. */
static void check_reencodes(lua_State *L, const char *data, size_t len)
{
    char err[256];
    int top = lua_gettop(L);

    if (codec_decode(L, data, len, err, sizeof err) != 0) {
        REQUIRE_EQ_INT(lua_gettop(L), top);
        return;
    }
    struct buf b;
    buf_init(&b);
    if (codec_encode(L, -1, &b, err, sizeof err) != 0) {
        FAIL("decoded value does not encode: %s", err);
    } else {
        REQUIRE_EQ_INT(codec_decode(L, b.data, b.len, err, sizeof err), 0);
        CHECK(same(L, -1, -2));
    }
    buf_free(&b);
    lua_settop(L, top);
}

TEST(codec_decode_random_bytes)
{
    lua_State *L = new_state();
    uint32_t seed = 0x9e3779b9u;
    char data[64];

    for (int i = 0; i < 20000; i++) {
        size_t len = rng_next(&seed) % sizeof data;
        for (size_t k = 0; k < len; k++)
            data[k] = (char)rng_next(&seed);
        /* Bias towards containers so structure gets exercised. */
        if (len > 0 && (i & 1))
            data[0] = (char)(0x80 | (rng_next(&seed) & 0x1f));
        check_reencodes(L, data, len);
    }
    CHECK_EQ_INT(lua_gettop(L), 0);
    lua_close(L);
}

TEST(codec_decode_mutated_values)
{
    lua_State *L = new_state();
    struct buf b;
    char err[256];
    uint32_t seed = 12345;

    buf_init(&b);
    eval(L, "{1, -200, 70000, 1.5, 'str', {k = {1, {}}, [true] = -0.0}, "
            "{a = 'b', c = {d = {e = {}}}}, nest(10, 'x')}");
    REQUIRE_EQ_INT(codec_encode(L, -1, &b, err, sizeof err), 0);
    lua_pop(L, 1);
    char *copy = malloc(b.len);
    REQUIRE(copy != NULL);
    for (int i = 0; i < 20000; i++) {
        memcpy(copy, b.data, b.len);
        int flips = 1 + (int)(rng_next(&seed) % 4);
        for (int f = 0; f < flips; f++)
            copy[rng_next(&seed) % b.len] = (char)rng_next(&seed);
        check_reencodes(L, copy, rng_next(&seed) % 8 ? b.len
                                                     : rng_next(&seed) % b.len);
    }
    free(copy);
    buf_free(&b);
    CHECK_EQ_INT(lua_gettop(L), 0);
    lua_close(L);
}

/* ---- the Lua binding -------------------------------------------------- */

TEST(codec_lua_binding)
{
    lua_State *L = new_state();
    static const char code[] =
        "local c = ...\n"
        "assert(c.max_depth == 64)\n"
        "local v = c.decode(c.encode({1, 'two', {three = 3.0}}))\n"
        "assert(v[1] == 1 and v[2] == 'two', 'array')\n"
        "assert(math.type(v[3].three) == 'float', 'float')\n"
        "assert(same(c.decode(c.encode(nest(64, 1))), nest(64, 1)))\n"
        "local ok, err = pcall(c.encode, {f = print})\n"
        "assert(not ok and err == \"cannot encode a function (at key 'f')\","
        "       err)\n"
        "ok, err = pcall(c.encode)\n"
        "assert(not ok and err:find('bad argument #1'), err)\n"
        "local x, msg = c.decode('\\xc1')\n"
        "assert(x == nil and msg:find('invalid type byte'), msg)\n"
        "x, msg = c.decode(c.encode(nil))\n"
        "assert(x == nil and msg == nil)\n"
        "assert(select('#', c.decode(c.encode(false))) == 1)\n"
        "assert(select('#', c.decode('')) == 2)\n"
        "ok, err = pcall(c.decode, {})\n"
        "assert(not ok, 'decode needs a string')\n"
        "return true\n";

    luaL_requiref(L, "pogo.core.codec", luaopen_pogo_codec, 0);
    if (luaL_loadstring(L, code) != LUA_OK) {
        FAIL("load: %s", lua_tostring(L, -1));
        REQUIRE(0);
    }
    lua_insert(L, -2);
    if (lua_pcall(L, 1, 1, 0) != LUA_OK)
        FAIL("%s", lua_tostring(L, -1));
    lua_pop(L, 1);
    CHECK_EQ_INT(lua_gettop(L), 0);
    lua_close(L);
}
