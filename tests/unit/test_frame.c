/* test_frame.c - struct buf and length-prefixed frames. */
#include <stdlib.h>
#include <string.h>

#include "pogo.h"
#include "unit.h"

/* Three frames back to back, one of them empty, one long enough to cross
 * the buffer's first allocation. */
struct stream {
    struct buf wire;
    const char *body[3];
    size_t len[3];
    char big[300];
};

static void stream_init(struct stream *s)
{
    for (size_t i = 0; i < sizeof s->big; i++)
        s->big[i] = (char)(i * 7 + 1);
    s->body[0] = "hello";
    s->len[0] = 5;
    s->body[1] = "";
    s->len[1] = 0;
    s->body[2] = s->big;
    s->len[2] = sizeof s->big;
    buf_init(&s->wire);
    for (int i = 0; i < 3; i++)
        REQUIRE_EQ_INT(frame_put(&s->wire, s->body[i], s->len[i]), 0);
}

/* Takes every complete frame off b, checking each against the next
 * expected one; returns how many were taken. */
static int drain(struct buf *b, const struct stream *s, int next)
{
    const char *body;
    size_t len;
    int got = 0;
    enum frame_status st;

    while ((st = frame_next(b, 1024, &body, &len)) == FRAME_READY) {
        REQUIRE(next + got < 3);
        CHECK_MEM_EQ(body, len, s->body[next + got], s->len[next + got]);
        buf_consume(b, FRAME_HEADER + len);
        got++;
    }
    CHECK_EQ_INT(st, FRAME_NEED_MORE);
    return got;
}

TEST(buf_init_is_empty)
{
    struct buf b;

    buf_init(&b);
    CHECK(b.data == NULL);
    CHECK_EQ_INT(buf_avail(&b), 0);
    CHECK_EQ_INT(buf_append(&b, NULL, 0), 0);
    CHECK(b.data == NULL);
    buf_free(&b);
    buf_free(&b);   /* twice is harmless */
    CHECK(b.data == NULL);
}

TEST(buf_append_and_consume)
{
    struct buf b;

    buf_init(&b);
    REQUIRE_EQ_INT(buf_append(&b, "abcdef", 6), 0);
    CHECK_EQ_INT(buf_avail(&b), 6);
    buf_consume(&b, 2);
    CHECK_EQ_INT(buf_avail(&b), 4);
    CHECK_MEM_EQ(buf_head(&b), 4, "cdef", 4);
    REQUIRE_EQ_INT(buf_append(&b, "gh", 2), 0);
    CHECK_MEM_EQ(buf_head(&b), buf_avail(&b), "cdefgh", 6);
    buf_consume(&b, 6);
    CHECK_EQ_INT(buf_avail(&b), 0);
    /* Drained: the next append starts at the front again. */
    CHECK_EQ_INT(b.off, 0);
    CHECK_EQ_INT(b.len, 0);
    buf_consume(&b, 10);    /* over-consuming clamps */
    CHECK_EQ_INT(buf_avail(&b), 0);
    buf_free(&b);
}

TEST(buf_overflowing_append_fails_cleanly)
{
    struct buf b;

    buf_init(&b);
    REQUIRE_EQ_INT(buf_append(&b, "xyz", 3), 0);
    char *data = b.data;
    CHECK_EQ_INT(buf_append(&b, "", SIZE_MAX), -1);
    CHECK_EQ_INT(buf_append(&b, "", SIZE_MAX - 2), -1);
    CHECK(b.data == data);
    CHECK_MEM_EQ(buf_head(&b), buf_avail(&b), "xyz", 3);
    buf_free(&b);
}

/* A partial frame always pending while whole ones come and go: the buffer
 * must recycle its consumed front instead of growing without bound. */
TEST(buf_steady_stream_stays_small)
{
    struct buf b;
    char chunk[100];
    size_t max_cap = 0;

    buf_init(&b);
    memset(chunk, 'x', sizeof chunk);
    REQUIRE_EQ_INT(buf_append(&b, chunk, 37), 0);
    for (int i = 0; i < 10000; i++) {
        for (size_t k = 0; k < sizeof chunk; k++)
            chunk[k] = (char)(i + k);
        REQUIRE_EQ_INT(buf_append(&b, chunk, sizeof chunk), 0);
        buf_consume(&b, sizeof chunk);
        if (b.cap > max_cap)
            max_cap = b.cap;
        REQUIRE_EQ_INT(buf_avail(&b), 37);
    }
    CHECK(max_cap <= 1024);
    /* What is left is the tail of the last chunk. */
    CHECK_MEM_EQ(buf_head(&b), buf_avail(&b), chunk + sizeof chunk - 37, 37);
    buf_free(&b);
}

TEST(buf_compaction_keeps_content)
{
    struct buf b;
    char expect[4096];
    size_t elen = 0, eoff = 0;
    unsigned seed = 1;

    buf_init(&b);
    /* Random appends and consumes, compared with a flat model. */
    for (int i = 0; i < 5000; i++) {
        seed = seed * 1103515245u + 12345u;
        size_t n = (seed >> 16) % 200;
        if ((seed >> 8) & 1) {
            if (elen + n > sizeof expect) {
                memmove(expect, expect + eoff, elen - eoff);
                elen -= eoff;
                eoff = 0;
            }
            if (elen + n > sizeof expect)
                continue;
            char tmp[200];
            for (size_t k = 0; k < n; k++)
                tmp[k] = (char)(seed + k);
            memcpy(expect + elen, tmp, n);
            elen += n;
            REQUIRE_EQ_INT(buf_append(&b, tmp, n), 0);
        } else {
            if (n > elen - eoff)
                n = elen - eoff;
            eoff += n;
            buf_consume(&b, n);
        }
        REQUIRE_EQ_INT(buf_avail(&b), elen - eoff);
        if (elen > eoff)
            REQUIRE_MEM_EQ(buf_head(&b), buf_avail(&b), expect + eoff,
                           elen - eoff);
        REQUIRE(b.len <= b.cap);
        REQUIRE(b.off <= b.len);
    }
    buf_free(&b);
}

TEST(buf_big_burst_is_released)
{
    struct buf b;
    size_t n = 1u << 20;
    char *big = calloc(1, n);

    REQUIRE(big != NULL);
    buf_init(&b);
    REQUIRE_EQ_INT(buf_append(&b, big, n), 0);
    CHECK(b.cap >= n);
    buf_consume(&b, n - 1);
    CHECK(b.cap >= n);          /* one byte still live */
    buf_consume(&b, 1);
    CHECK(b.cap < n);           /* drained: the burst's memory goes back */
    CHECK_EQ_INT(buf_append(&b, "a", 1), 0);
    CHECK_MEM_EQ(buf_head(&b), buf_avail(&b), "a", 1);
    buf_free(&b);
    free(big);
}

TEST(frame_put_writes_big_endian_header)
{
    struct buf b;

    buf_init(&b);
    REQUIRE_EQ_INT(frame_put(&b, "abc", 3), 0);
    CHECK_MEM_EQ(b.data, b.len, "\0\0\0\3abc", 7);
    REQUIRE_EQ_INT(frame_put(&b, NULL, 0), 0);
    CHECK_MEM_EQ(b.data, b.len, "\0\0\0\3abc\0\0\0\0", 11);
    buf_free(&b);

    char *body = calloc(1, 0x10203);
    REQUIRE(body != NULL);
    buf_init(&b);
    REQUIRE_EQ_INT(frame_put(&b, body, 0x10203), 0);
    CHECK_MEM_EQ(b.data, 4, "\x00\x01\x02\x03", 4);
    CHECK_EQ_INT(b.len, 4 + 0x10203);
    buf_free(&b);
    free(body);
}

TEST(frame_put_refuses_unrepresentable_length)
{
    struct buf b;

    buf_init(&b);
    REQUIRE_EQ_INT(frame_put(&b, "x", 1), 0);
    /* The length is checked before the body is touched. */
    CHECK_EQ_INT(frame_put(&b, "x", (size_t)UINT32_MAX + 1), -1);
    CHECK_EQ_INT(frame_put(&b, "x", SIZE_MAX), -1);
    CHECK_MEM_EQ(b.data, b.len, "\0\0\0\1x", 5);
    buf_free(&b);
}

TEST(frame_next_empty_and_partial_header)
{
    struct buf b;
    const char *body = NULL;
    size_t len = 99;

    buf_init(&b);
    CHECK_EQ_INT(frame_next(&b, 100, &body, &len), FRAME_NEED_MORE);
    REQUIRE_EQ_INT(buf_append(&b, "\0\0\0", 3), 0);
    CHECK_EQ_INT(frame_next(&b, 100, &body, &len), FRAME_NEED_MORE);
    REQUIRE_EQ_INT(buf_append(&b, "\0", 1), 0);
    REQUIRE_EQ_INT(frame_next(&b, 100, &body, &len), FRAME_READY);
    CHECK_EQ_INT(len, 0);
    CHECK(body == buf_head(&b) + FRAME_HEADER);
    buf_free(&b);
}

TEST(frame_several_in_one_buffer)
{
    struct stream s;

    stream_init(&s);
    CHECK_EQ_INT(drain(&s.wire, &s, 0), 3);
    CHECK_EQ_INT(buf_avail(&s.wire), 0);
    buf_free(&s.wire);
}

TEST(frame_split_at_every_byte)
{
    struct stream s;

    stream_init(&s);
    size_t total = s.wire.len;
    for (size_t cut = 0; cut <= total; cut++) {
        struct buf b;
        int got;

        buf_init(&b);
        REQUIRE_EQ_INT(buf_append(&b, s.wire.data, cut), 0);
        got = drain(&b, &s, 0);
        REQUIRE_EQ_INT(buf_append(&b, s.wire.data + cut, total - cut), 0);
        got += drain(&b, &s, got);
        CHECK_EQ_INT(got, 3);
        CHECK_EQ_INT(buf_avail(&b), 0);
        buf_free(&b);
    }
    buf_free(&s.wire);
}

TEST(frame_byte_by_byte)
{
    struct stream s;
    struct buf b;
    int got = 0;

    stream_init(&s);
    buf_init(&b);
    for (size_t i = 0; i < s.wire.len; i++) {
        REQUIRE_EQ_INT(buf_append(&b, s.wire.data + i, 1), 0);
        got += drain(&b, &s, got);
    }
    CHECK_EQ_INT(got, 3);
    CHECK_EQ_INT(buf_avail(&b), 0);
    buf_free(&b);
    buf_free(&s.wire);
}

TEST(frame_too_big_from_header_alone)
{
    struct buf b;
    const char *body;
    size_t len;

    buf_init(&b);
    /* max + 1 announced, nothing of the body sent yet. */
    REQUIRE_EQ_INT(buf_append(&b, "\0\0\0\x65", 4), 0);
    CHECK_EQ_INT(frame_next(&b, 100, &body, &len), FRAME_TOO_BIG);
    buf_free(&b);

    buf_init(&b);
    REQUIRE_EQ_INT(buf_append(&b, "\xff\xff\xff\xff", 4), 0);
    CHECK_EQ_INT(frame_next(&b, CONTROL_MAX_FRAME, &body, &len),
                 FRAME_TOO_BIG);
    CHECK_EQ_INT(frame_next(&b, 0, &body, &len), FRAME_TOO_BIG);
    /* A cap beyond the header's range lets anything through. */
    CHECK_EQ_INT(frame_next(&b, SIZE_MAX, &body, &len), FRAME_NEED_MORE);
    buf_free(&b);
}

TEST(frame_exactly_max_is_accepted)
{
    struct buf b;
    const char *body;
    size_t len;
    char payload[100];

    memset(payload, 'p', sizeof payload);
    buf_init(&b);
    REQUIRE_EQ_INT(frame_put(&b, payload, 100), 0);
    CHECK_EQ_INT(frame_next(&b, 99, &body, &len), FRAME_TOO_BIG);
    REQUIRE_EQ_INT(frame_next(&b, 100, &body, &len), FRAME_READY);
    CHECK_MEM_EQ(body, len, payload, 100);
    buf_free(&b);

    /* Empty frames pass even a zero cap. */
    buf_init(&b);
    REQUIRE_EQ_INT(frame_put(&b, NULL, 0), 0);
    CHECK_EQ_INT(frame_next(&b, 0, &body, &len), FRAME_READY);
    buf_free(&b);
}

TEST(frame_too_big_after_good_frames)
{
    struct buf b;
    const char *body;
    size_t len;

    buf_init(&b);
    REQUIRE_EQ_INT(frame_put(&b, "ok", 2), 0);
    REQUIRE_EQ_INT(buf_append(&b, "\x01\0\0\0", 4), 0);
    REQUIRE_EQ_INT(frame_next(&b, 1000, &body, &len), FRAME_READY);
    CHECK_MEM_EQ(body, len, "ok", 2);
    buf_consume(&b, FRAME_HEADER + len);
    CHECK_EQ_INT(frame_next(&b, 1000, &body, &len), FRAME_TOO_BIG);
    buf_free(&b);
}
