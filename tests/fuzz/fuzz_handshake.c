/*
 * fuzz_handshake.c - libFuzzer target for the handshake and sealed frames.
 *
 *   clang -g -O1 -fsanitize=fuzzer,address,undefined -Isrc \
 *       $(pkg-config --cflags lua5.4 libsodium msgpack) \
 *       tests/fuzz/fuzz_handshake.c src/crypto.c src/frame.c src/log.c \
 *       -lsodium -o build/fuzz_handshake
 *   build/fuzz_handshake -max_total_time=60
 *
 * Input: one mode byte, then chunks, each a length byte L and L bytes (the
 * last chunk may be short).
 *
 *   mode 0  every chunk is a frame body for a responder;
 *   mode 1  every chunk is a frame body for an initiator (after its HELLO);
 *           neither may ever reach HS_DONE (that would need a MAC under a
 *           key the input does not have) nor write more than
 *           LINK_PREAUTH_MAX bytes.
 *   mode 2  a genuine handshake in which chunk k patches message k on its
 *           way: op, position, then bytes to XOR in, or a cut, or bytes to
 *           append. A handshake completes exactly when no message changed.
 *   mode 3  a genuine handshake, then each chunk is one step of traffic:
 *           a raw body offered to session_open, a genuine frame, or a
 *           genuine frame altered in flight. A body opens only if it is
 *           byte for byte the frame the peer would seal for that counter.
 *
 * randombytes is replaced by a deterministic stream restarted for every
 * input, so a crash reproduces from its input alone. Any broken oracle
 * abort()s.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "pogo.h"

#define K1 "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f"
#define K2 "f0e1d2c3b4a5968778695a4b3c2d1e0ff0e1d2c3b4a5968778695a4b3c2d1e0f"

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* ---- deterministic randomness ------------------------------------------ */

static uint64_t rng_counter;

static const char *rng_name(void)
{
    return "pogo-fuzz";
}

static void rng_buf(void *buf, size_t n)
{
    unsigned char seed[randombytes_SEEDBYTES] = {0};

    memcpy(seed, &rng_counter, sizeof rng_counter);
    rng_counter++;
    randombytes_buf_deterministic(buf, n, seed);
}

static uint32_t rng_random(void)
{
    uint32_t v;

    rng_buf(&v, sizeof v);
    return v;
}

static struct randombytes_implementation rng_impl = {
    .implementation_name = rng_name,
    .random = rng_random,
    .buf = rng_buf,
};

/* ---- setup ------------------------------------------------------------------ */

static struct keyring ring_a;     /* K1 */
static struct keyring ring_b;     /* K2, then K1: a ring mid-rotation */
static const struct hs_identity id_a = {"alpha", 1, 3};
static const struct hs_identity id_b = {"beta", 2, 5};

static void load_ring(struct keyring *kr, const char *text)
{
    char path[] = "/tmp/pogo-fuzz-key-XXXXXX";
    char err[256];
    int fd = mkstemp(path);

    if (fd < 0 || fchmod(fd, 0600) < 0 ||
        write(fd, text, strlen(text)) != (ssize_t)strlen(text)) {
        perror("fuzz_handshake: key file");
        abort();
    }
    close(fd);
    if (keyring_load(kr, path, err, sizeof err) < 0) {
        fprintf(stderr, "fuzz_handshake: %s\n", err);
        abort();
    }
    unlink(path);
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    randombytes_set_implementation(&rng_impl);
    if (crypto_setup() < 0)
        abort();
    load_ring(&ring_a, K1 "\n");
    load_ring(&ring_b, K2 "\n" K1 "\n");
    return 0;
}

#define CHECK(cond)                                                          \
    do {                                                                     \
        if (!(cond)) {                                                       \
            fprintf(stderr, "fuzz_handshake: %s:%d: %s\n", __FILE__,         \
                    __LINE__, #cond);                                        \
            abort();                                                         \
        }                                                                    \
    } while (0)

/* ---- input chunks ------------------------------------------------------------ */

struct reader {
    const uint8_t *p;
    size_t left;
};

/* Next chunk; 0 when the input is used up. */
static int next_chunk(struct reader *rd, const uint8_t **chunk, size_t *len)
{
    if (rd->left == 0)
        return 0;
    size_t n = rd->p[0];

    rd->p++;
    rd->left--;
    if (n > rd->left)
        n = rd->left;
    *chunk = rd->p;
    *len = n;
    rd->p += n;
    rd->left -= n;
    return 1;
}

/* ---- parties --------------------------------------------------------------------- */

struct party {
    struct handshake h;
    struct buf out;
    struct session s;
    enum hs_result r;
    char err[256];
};

static void party_init(struct party *p, int initiator,
                       const struct keyring *kr, const struct hs_identity *id)
{
    memset(p, 0, sizeof *p);
    buf_init(&p->out);
    p->r = HS_CONTINUE;
    hs_init(&p->h, initiator, kr, id, &p->out);
    CHECK(buf_avail(&p->out) <= LINK_PREAUTH_MAX);
}

static void party_free(struct party *p)
{
    hs_clear(&p->h);
    buf_free(&p->out);
}

static void feed(struct party *p, const uint8_t *body, size_t len)
{
    buf_consume(&p->out, buf_avail(&p->out));
    p->r = hs_recv(&p->h, (const char *)body, len, &p->out, &p->s, p->err,
                   sizeof p->err);
    CHECK(buf_avail(&p->out) <= LINK_PREAUTH_MAX);
    CHECK(p->r != HS_FAIL || p->err[0] != '\0');
    CHECK(p->r != HS_FAIL || buf_avail(&p->out) == 0);
}

/* Modes 0 and 1: raw frames into one party. */
static void raw_frames(struct reader *rd, int initiator)
{
    struct party p;
    const uint8_t *chunk;
    size_t len;

    party_init(&p, initiator, initiator ? &ring_a : &ring_b,
               initiator ? &id_a : &id_b);
    while (p.r == HS_CONTINUE && next_chunk(rd, &chunk, &len)) {
        feed(&p, chunk, len);
        CHECK(p.r != HS_DONE);
    }
    /* Once failed, it stays failed. */
    if (p.r == HS_FAIL) {
        feed(&p, (const uint8_t *)"POGO", 4);
        CHECK(p.r == HS_FAIL);
    }
    party_free(&p);
}

/* Mode 2: patches one message as a chunk says. Returns 1 if it changed. */
static int patch(uint8_t *msg, size_t *len, const uint8_t *chunk, size_t clen)
{
    uint8_t before[512];
    size_t blen = *len;

    if (clen < 2)
        return 0;
    memcpy(before, msg, blen);
    size_t pos = chunk[1];
    const uint8_t *v = chunk + 2;
    size_t vn = clen - 2;

    switch (chunk[0] % 3) {
    case 0:     /* XOR bytes in from pos */
        for (size_t k = 0; k < vn && pos + k < *len; k++)
            msg[pos + k] ^= v[k];
        break;
    case 1:     /* cut to pos */
        if (pos < *len)
            *len = pos;
        break;
    case 2:     /* append */
        memcpy(msg + *len, v, vn);
        *len += vn;
        break;
    }
    return *len != blen || memcmp(before, msg, blen) != 0;
}

/* Hands what from sent to to, patched by the next chunk if there is one. */
static int deliver(struct party *from, struct party *to, struct reader *rd)
{
    uint8_t msg[1024];
    size_t len = buf_avail(&from->out);
    const uint8_t *chunk;
    size_t clen;
    int changed = 0;

    CHECK(len > 0 && len <= 512);
    memcpy(msg, buf_head(&from->out), len);
    buf_consume(&from->out, len);
    if (next_chunk(rd, &chunk, &clen))
        changed = patch(msg, &len, chunk, clen);
    feed(to, msg, len);
    return changed;
}

static void check_sessions(struct session *a, struct session *b)
{
    struct buf w, got;

    buf_init(&w);
    buf_init(&got);
    CHECK(session_seal(a, "ping", 4, &w) == 0);
    CHECK(session_open(b, buf_head(&w), buf_avail(&w), &got) == 0);
    CHECK(buf_avail(&got) == 4 && memcmp(buf_head(&got), "ping", 4) == 0);
    buf_free(&w);
    buf_free(&got);
}

static void patched_handshake(struct reader *rd)
{
    struct party i, r;
    int changed12 = 0, changed3 = 0;

    party_init(&i, 1, &ring_a, &id_a);
    party_init(&r, 0, &ring_b, &id_b);
    changed12 |= deliver(&i, &r, rd);
    if (r.r == HS_CONTINUE) {
        changed12 |= deliver(&r, &i, rd);
        if (i.r == HS_DONE)
            changed3 = deliver(&i, &r, rd);
    }
    if (changed12) {
        CHECK(i.r != HS_DONE && r.r != HS_DONE);
    } else if (changed3) {
        CHECK(i.r == HS_DONE && r.r == HS_FAIL);
    } else {
        CHECK(i.r == HS_DONE && r.r == HS_DONE);
        CHECK(strcmp(i.h.peer.name, "beta") == 0);
        CHECK(strcmp(r.h.peer.name, "alpha") == 0);
        check_sessions(&i.s, &r.s);
        check_sessions(&r.s, &i.s);
    }
    party_free(&i);
    party_free(&r);
}

/* Mode 3, one direction: from seals, to opens. */
static void traffic_step(struct session *from, struct session *to,
                         const uint8_t *chunk, size_t len)
{
    struct buf w, got;
    uint8_t op = chunk[0];
    const uint8_t *payload = chunk + 1;
    size_t plen = len - 1;

    buf_init(&w);
    buf_init(&got);
    switch (op % 3) {
    case 0: {   /* a raw body: opens only if it is the genuine frame */
        uint64_t n = to->rx_n;

        if (session_open(to, (const char *)payload, plen, &got) == 0) {
            struct session twin = *from;

            CHECK(to->rx_n == n + 1);
            twin.tx_n = n;
            CHECK(session_seal(&twin, buf_head(&got), buf_avail(&got),
                               &w) == 0);
            CHECK(buf_avail(&w) == plen &&
                  memcmp(buf_head(&w), payload, plen) == 0);
            from->tx_n = to->rx_n;      /* keep the two in step */
        } else {
            CHECK(to->rx_n == n && buf_avail(&got) == 0);
        }
        break;
    }
    case 1:     /* a genuine frame */
        CHECK(session_seal(from, payload, plen, &w) == 0);
        CHECK(buf_avail(&w) == plen + SESSION_OVERHEAD);
        CHECK(session_open(to, buf_head(&w), buf_avail(&w), &got) == 0);
        CHECK(buf_avail(&got) == plen &&
              (plen == 0 || memcmp(buf_head(&got), payload, plen) == 0));
        break;
    case 2: {   /* a genuine frame, altered: op's high bits pick how */
        uint8_t frame[300];
        size_t flen;

        CHECK(session_seal(from, payload, plen, &w) == 0);
        flen = buf_avail(&w);
        memcpy(frame, buf_head(&w), flen);
        size_t pos = (op >> 2) % flen;
        if (op & 0x80) {
            flen = pos;                         /* cut */
        } else {
            frame[pos] ^= (uint8_t)(1u << (op >> 5 & 3));     /* flip */
        }
        uint64_t n = to->rx_n;
        CHECK(session_open(to, (const char *)frame, flen, &got) != 0);
        CHECK(to->rx_n == n && buf_avail(&got) == 0);
        /* The unaltered frame still opens: nothing moved. */
        CHECK(session_open(to, buf_head(&w), buf_avail(&w), &got) == 0);
        break;
    }
    }
    buf_free(&w);
    buf_free(&got);
}

static void traffic(struct reader *rd)
{
    struct party i, r;
    const uint8_t *chunk;
    size_t len;
    int k = 0;

    party_init(&i, 1, &ring_a, &id_a);
    party_init(&r, 0, &ring_b, &id_b);
    feed(&r, (const uint8_t *)buf_head(&i.out), buf_avail(&i.out));
    CHECK(r.r == HS_CONTINUE);
    feed(&i, (const uint8_t *)buf_head(&r.out), buf_avail(&r.out));
    CHECK(i.r == HS_DONE);
    feed(&r, (const uint8_t *)buf_head(&i.out), buf_avail(&i.out));
    CHECK(r.r == HS_DONE);
    while (next_chunk(rd, &chunk, &len)) {
        if (len == 0)
            continue;
        if (k++ % 2 == 0)
            traffic_step(&i.s, &r.s, chunk, len);
        else
            traffic_step(&r.s, &i.s, chunk, len);
    }
    party_free(&i);
    party_free(&r);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct reader rd = {data + 1, size ? size - 1 : 0};

    if (size == 0)
        return 0;
    rng_counter = 0;
    switch (data[0] % 4) {
    case 0: raw_frames(&rd, 0); break;
    case 1: raw_frames(&rd, 1); break;
    case 2: patched_handshake(&rd); break;
    case 3: traffic(&rd); break;
    }
    return 0;
}
