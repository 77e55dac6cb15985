/*
 * fuzz_frame.c - libFuzzer target for the frame reader: the input is a
 * byte stream split into reads of fuzz-chosen sizes. Oracle: frames come
 * out whole and in order, a declared length over the cap is refused from
 * the header alone, and the buffer never holds more than one frame's
 * worth beyond the cap.
 */
#include <stdint.h>
#include <stdlib.h>

#include "pogo.h"

#define CAP 4096

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    size_t step = (size_t)data[0] % 64 + 1;   /* read size */
    data++, size--;
    struct buf in;
    buf_init(&in);
    size_t fed = 0, consumed = 0;
    while (fed < size) {
        size_t n = size - fed < step ? size - fed : step;
        if (buf_append(&in, data + fed, n) < 0)
            abort();
        fed += n;
        for (;;) {
            const char *body;
            size_t len;
            enum frame_status st = frame_next(&in, CAP, &body, &len);
            if (st == FRAME_NEED_MORE)
                break;
            if (st == FRAME_TOO_BIG)
                goto done;
            if (len > CAP || body != buf_head(&in) + FRAME_HEADER)
                abort();
            buf_consume(&in, FRAME_HEADER + len);
            consumed += FRAME_HEADER + len;
        }
        if (buf_avail(&in) > CAP + FRAME_HEADER + step)
            abort();                      /* buffered past one capped frame */
    }
    if (consumed + buf_avail(&in) != fed)
        abort();
done:
    buf_free(&in);
    return 0;
}
