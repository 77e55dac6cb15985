/*
 * fuzz_control.c - libFuzzer target for the control socket: the bytes a
 * hostile local client sends, through the real server (pogo.core.control
 * listening on a Unix socket, its frame reader, the MessagePack decoder)
 * into the agent's request handler (pogo.control.handle), which
 * tests/fuzz/fuzz_control.lua sets up as the agent does.
 *
 * Input: a mode byte, then
 *   even  the raw byte stream the client writes;
 *   odd   chunks, each a length byte L and L bytes, each sent as one
 *         well-framed body (so that mutations explore the bodies).
 * A fresh client connects, writes it all, half-closes and reads until the
 * agent closes the connection.
 *
 * Oracles: the agent closes the connection (a hang is a libFuzzer
 * timeout); exactly the frames before the first one it must drop (too big,
 * not MessagePack, not a table; counted here with frame.c and codec.c)
 * reach the handler; every answer is a whole frame of MessagePack. The
 * driver checks what the answers hold and that the handler never raised.
 */
#include <errno.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include "fuzz_lua.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static lua_State *L;
static int driver;      /* fn(answers, requests): checks one connection */
static struct sockaddr_un addr;

static void fail(const char *what)
{
    fprintf(stderr, "fuzz_control: %s: %s\n", what, strerror(errno));
    abort();
}

/* What the client sends, built from the input. */
static void build_stream(const uint8_t *data, size_t size, struct buf *out)
{
    if (data[0] % 2 == 0) {
        if (buf_append(out, data + 1, size - 1) < 0)
            abort();
        return;
    }
    for (size_t i = 1; i < size;) {
        size_t n = data[i++];
        if (n > size - i)
            n = size - i;
        if (frame_put(out, data + i, n) < 0)
            abort();
        i += n;
    }
}

/* Requests the server must hand to Lua: the frames before the first one
 * it must drop. */
static int count_requests(const struct buf *stream)
{
    struct buf b;
    char err[256];
    int n = 0;

    buf_init(&b);
    if (buf_append(&b, buf_head(stream), buf_avail(stream)) < 0)
        abort();
    for (;;) {
        const char *body;
        size_t len;
        if (frame_next(&b, CONTROL_MAX_FRAME, &body, &len) != FRAME_READY)
            break;
        int top = lua_gettop(L);
        int table = codec_decode(L, body, len, err, sizeof err) == 0 &&
                    lua_istable(L, -1);
        lua_settop(L, top);
        if (!table)
            break;
        n++;
        buf_consume(&b, FRAME_HEADER + len);
    }
    buf_free(&b);
    return n;
}

/* One connection: sends stream, half-closes, collects the answers until
 * the agent closes, running the agent's loop meanwhile. */
static void converse(const struct buf *stream, struct buf *answers)
{
    struct ev_loop *loop = luart_loop(L);
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    size_t sent = 0, len = buf_avail(stream);
    int shut = 0;

    if (fd < 0 || connect(fd, (struct sockaddr *)&addr, sizeof addr) < 0)
        fail("connect");
    for (;;) {
        if (sent < len) {
            ssize_t n = send(fd, buf_head(stream) + sent, len - sent,
                             MSG_NOSIGNAL);
            if (n > 0)
                sent += (size_t)n;
            else if (errno == EPIPE || errno == ECONNRESET)
                sent = len;             /* dropped: the rest is moot */
            else if (errno != EAGAIN)
                fail("send");
        }
        if (sent == len && !shut) {
            shutdown(fd, SHUT_WR);
            shut = 1;
        }
        ev_run(loop, EVRUN_NOWAIT);
        char chunk[65536];
        ssize_t n;
        while ((n = read(fd, chunk, sizeof chunk)) > 0)
            if (buf_append(answers, chunk, (size_t)n) < 0)
                abort();
        if (n == 0 || (n < 0 && errno == ECONNRESET))
            break;                      /* the agent closed */
        if (errno != EAGAIN)
            fail("read");
        if (shut)
            ev_run(loop, EVRUN_ONCE);   /* the agent's next step */
    }
    close(fd);
}

/* Pushes the answers as a list; each must be a whole MessagePack frame. */
static void push_answers(struct buf *answers)
{
    char err[256];
    int n = 0;

    lua_newtable(L);
    for (;;) {
        const char *body;
        size_t len;
        enum frame_status st = frame_next(answers, CONTROL_MAX_FRAME, &body,
                                          &len);
        if (st == FRAME_NEED_MORE && buf_avail(answers) == 0)
            return;
        if (st != FRAME_READY) {
            fprintf(stderr, "fuzz_control: a cut or oversized answer\n");
            abort();
        }
        if (codec_decode(L, body, len, err, sizeof err) < 0) {
            fprintf(stderr, "fuzz_control: an answer does not decode: %s\n",
                    err);
            abort();
        }
        lua_rawseti(L, -2, ++n);
        buf_consume(answers, FRAME_HEADER + len);
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct buf stream, answers;

    if (L == NULL) {
        const char *root = getenv("POGO_FUZZ_ROOT");
        addr.sun_family = AF_UNIX;
        if ((size_t)snprintf(addr.sun_path, sizeof addr.sun_path,
                             "%s/build/fuzz/fuzz_control.sock",
                             root && *root ? root : FUZZ_ROOT) >=
            sizeof addr.sun_path) {
            fprintf(stderr, "fuzz_control: the checkout's path is too long "
                            "for a socket path\n");
            abort();
        }
        L = fuzz_lua_open("fuzz_control", addr.sun_path, &driver);
    }
    if (size == 0)
        return 0;
    buf_init(&stream);
    buf_init(&answers);
    build_stream(data, size, &stream);
    int requests = count_requests(&stream);
    converse(&stream, &answers);
    push_answers(&answers);
    lua_pushinteger(L, requests);
    fuzz_lua_call(L, driver, 2);
    buf_free(&stream);
    buf_free(&answers);
    return 0;
}
