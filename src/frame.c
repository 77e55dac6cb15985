/*
 * frame.c - a growable byte buffer and 4-byte length-prefixed frames.
 *
 * A link reads whatever the socket gives into a struct buf, then takes whole
 * frames off its head with frame_next()/buf_consume(). The buffer never
 * copies consumed bytes: they are dropped by moving the live tail to the
 * front only when that is cheaper than growing, so a long stream of small
 * frames costs amortised O(1) per byte.
 */
#include <stdlib.h>
#include <string.h>

#include "pogo.h"

/* First allocation; small enough for an idle link, big enough for a
 * heartbeat or a handshake without a second realloc. */
#define BUF_MIN_CAP 256

/* A fully drained buffer larger than this gives its memory back, so one
 * 16 MiB frame does not pin 16 MiB per link for ever. */
#define BUF_KEEP_CAP (64u * 1024)

void buf_init(struct buf *b)
{
    b->data = NULL;
    b->len = 0;
    b->cap = 0;
    b->off = 0;
}

void buf_free(struct buf *b)
{
    free(b->data);
    buf_init(b);
}

/* Makes room for n more bytes after len. Either the live bytes move to the
 * front (when at least as many bytes are consumed as are live, so each byte
 * is moved at most once per time it was consumed over) or a new block
 * receives only the live bytes. Returns 0, or -1 with b unchanged. */
static int buf_reserve(struct buf *b, size_t n)
{
    size_t avail = b->len - b->off;

    if (n <= b->cap - b->len)
        return 0;
    if (n > SIZE_MAX - avail)
        return -1;
    size_t need = avail + n;

    if (need <= b->cap && b->off >= avail) {
        memmove(b->data, b->data + b->off, avail);
        b->len = avail;
        b->off = 0;
        return 0;
    }

    size_t cap = b->cap ? b->cap : BUF_MIN_CAP;
    while (cap < need)
        cap = cap > SIZE_MAX / 2 ? need : cap * 2;

    char *data = malloc(cap);
    if (data == NULL)
        return -1;
    if (avail > 0)
        memcpy(data, b->data + b->off, avail);
    free(b->data);
    b->data = data;
    b->len = avail;
    b->off = 0;
    b->cap = cap;
    return 0;
}

int buf_append(struct buf *b, const void *p, size_t n)
{
    if (n == 0)
        return 0;
    if (buf_reserve(b, n) < 0)
        return -1;
    memcpy(b->data + b->len, p, n);
    b->len += n;
    return 0;
}

void buf_consume(struct buf *b, size_t n)
{
    size_t avail = b->len - b->off;

    /* Consuming more than there is would be a caller bug; clamp rather
     * than let off run past len and make buf_avail() wrap around. */
    if (n > avail)
        n = avail;
    b->off += n;
    if (b->off < b->len)
        return;
    /* Drained: restart at the front for free instead of moving anything
     * later, and give back memory a burst left behind. */
    b->off = 0;
    b->len = 0;
    if (b->cap > BUF_KEEP_CAP)
        buf_free(b);
}

enum frame_status frame_next(struct buf *b, size_t max, const char **body,
                             size_t *len)
{
    size_t avail = buf_avail(b);

    if (avail < FRAME_HEADER)
        return FRAME_NEED_MORE;

    const unsigned char *h = (const unsigned char *)buf_head(b);
    size_t n = (size_t)h[0] << 24 | (size_t)h[1] << 16 | (size_t)h[2] << 8 |
               (size_t)h[3];

    /* Decided from the header alone: a peer announcing a huge body is
     * refused before we buffer a single byte of it. */
    if (n > max)
        return FRAME_TOO_BIG;
    if (avail - FRAME_HEADER < n)
        return FRAME_NEED_MORE;
    *body = (const char *)h + FRAME_HEADER;
    *len = n;
    return FRAME_READY;
}

int frame_put(struct buf *out, const void *body, size_t len)
{
    if (len > UINT32_MAX)
        return -1;
    /* Reserve header and body together so a failure leaves out as it was,
     * never holding a header without its body. */
    if (len > SIZE_MAX - FRAME_HEADER ||
        buf_reserve(out, FRAME_HEADER + len) < 0)
        return -1;

    unsigned char h[FRAME_HEADER] = {
        (unsigned char)(len >> 24), (unsigned char)(len >> 16),
        (unsigned char)(len >> 8), (unsigned char)len,
    };
    memcpy(out->data + out->len, h, FRAME_HEADER);
    if (len > 0)
        memcpy(out->data + out->len + FRAME_HEADER, body, len);
    out->len += FRAME_HEADER + len;
    return 0;
}
