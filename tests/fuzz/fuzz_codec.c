/*
 * fuzz_codec.c - libFuzzer target for MessagePack -> Lua (codec_decode),
 * the decoder every frame body from a peer or a control client goes
 * through. Oracle: whatever decodes must encode again, and decode to the
 * same bytes a second time (decode . encode is the identity on its image).
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <lualib.h>

#include "pogo.h"

static lua_State *L;

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (L == NULL)
        L = luaL_newstate();
    char err[256];
    int top = lua_gettop(L);
    if (codec_decode(L, (const char *)data, size, err, sizeof err) == 0) {
        struct buf once, twice;
        buf_init(&once);
        buf_init(&twice);
        if (codec_encode(L, -1, &once, err, sizeof err) != 0)
            abort();                      /* decoded values must encode */
        if (codec_decode(L, buf_head(&once), buf_avail(&once), err, sizeof err) != 0)
            abort();
        if (codec_encode(L, -1, &twice, err, sizeof err) != 0)
            abort();
        /* Map order may differ between encodings; sizes may not. */
        if (buf_avail(&once) != buf_avail(&twice))
            abort();
        buf_free(&once);
        buf_free(&twice);
    }
    lua_settop(L, top);
    return 0;
}
