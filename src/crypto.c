/*
 * crypto.c - the cluster keyring, the link handshake and sealed frames.
 *
 * Every primitive is libsodium's; what is ours is only the layout of three
 * small handshake messages and the order in which things are hashed. All of
 * it is written down here, byte for byte, so that it can be checked (the
 * unit tests recompute the key id, the MACs, the session keys and the nonce
 * from this description alone).
 *
 * Notation: a || b is concatenation; u16/u32/u64 are big-endian (network
 * order, like the frame header); P("label") is a 16-byte BLAKE2b
 * personalisation, the label zero-padded; BLAKE2b-n(key; personal; msg) is
 * crypto_generichash_blake2b_salt_personal with an n-bit output, an all-zero
 * salt, and no key where none is written.
 *
 * ---- Key file -------------------------------------------------------------
 *
 * Text, one key per line as 64 hex digits (either case). Blank lines and
 * lines whose first non-blank character is '#' are ignored; blanks around a
 * key and a '\r' before the '\n' are tolerated; anything else is an error
 * naming the line (the line itself is never echoed: it may be a key). The
 * first key is the primary, used for the links we open; every key is
 * accepted on the links others open. At most CRYPTO_MAX_KEYS keys, at most
 * 64 KiB; the file must be a regular file with no permission for group or
 * others (mode & 077 == 0). An all-zero key is refused; a repeated key is
 * kept once.
 *
 *   key id = first 8 bytes of BLAKE2b-256(key = K; P("pogo-kid"); empty)
 *          (= crypto_kdf_derive_from_key(32 bytes, subkey 0, "pogo-kid", K))
 *
 * The id is public: it tells the responder which key the initiator uses,
 * so a ring can hold the old and the new key during a rotation. Rotation on
 * a live cluster: (1) add the new key as a second line everywhere; (2) make
 * it the first line everywhere, in any order; (3) drop the old line. Every
 * pair of nodes shares an accepted key at every step.
 *
 * ---- Handshake messages (frame bodies; frame.c adds the length) -----------
 *
 *   HELLO  offset  size
 *          0       4    magic "POGO"
 *          4       1    type: 1 = initiator's HELLO, 2 = responder's HELLO
 *          5       2    u16 lowest protocol version spoken
 *          7       2    u16 highest protocol version spoken
 *          9       4    u32 capability flags
 *          13      8    u64 incarnation
 *          21      32   ephemeral X25519 public key
 *          53      16   random nonce
 *          69      8    key id (the initiator's primary; the responder echoes it)
 *          77      1    name length n, 1..63
 *          78      n    node name, bytes of [A-Za-z0-9._-]
 *          78+n    32   MAC_R (type 2 only)
 *          = 78 + n bytes (type 1), 110 + n bytes (type 2); at most 173.
 *
 *   AUTH   0       4    magic "POGO"
 *          4       1    type 3
 *          5       32   MAC_I
 *          = 37 bytes.
 *
 *   Every message is far below LINK_PREAUTH_MAX. Parsing is strict: exact
 *   length for the name length given, name length 1..63, name characters,
 *   lowest <= highest version; nothing may follow the last field. Magic,
 *   type and version range (the first 9 bytes of a HELLO) are the same in
 *   every protocol version and are checked first, so a peer from a later
 *   version with a different layout gets the version message, not
 *   "malformed". The negotiated version is the highest one both ranges
 *   hold; when there is none the handshake fails with "protocol versions
 *   A..B and C..D have nothing in common" (the peer's range first).
 *
 * ---- Transcript and MACs --------------------------------------------------
 *
 *   A chained hash, as Noise's MixHash: th starts as 32 zero bytes and
 *   mix(th, seg) = BLAKE2b-256(P("pogo-th"); th || seg) is applied to, in
 *   order:
 *     1. HELLO_I, whole
 *     2. HELLO_R without its MAC                  -> th_R
 *     3. MAC_R
 *     4. AUTH without its MAC ("POGO" 0x03)       -> th_I
 *     5. MAC_I                                    -> th_F
 *   so every byte of every handshake message is in th_F.
 *
 *   MAC_R = BLAKE2b-256(key = K; P("pogo-mac"); th_R || "responder")
 *   MAC_I = BLAKE2b-256(key = K; P("pogo-mac"); th_I || "initiator")
 *
 *   K is the key whose id HELLO_I names: the initiator's primary, found by
 *   id in the responder's ring (no such id: "wrong cluster key (key id
 *   ...)"). MACs are compared with sodium_memcmp; a MAC that does not
 *   verify fails with "wrong cluster key". The role labels and the message
 *   types keep a MAC from one role being replayed as the other's; the
 *   ephemeral keys and nonces in the transcript keep one handshake's MAC
 *   from verifying in another. A HELLO carrying our own name and incarnation
 *   is a handshake reflected back at us and fails.
 *
 * ---- Session keys -----------------------------------------------------------
 *
 *   dh  = X25519(own ephemeral secret, peer's ephemeral public key)
 *         (crypto_scalarmult; an all-zero result, i.e. a low-order point,
 *         fails the handshake)
 *   okm = BLAKE2b-512(key = K; P("pogo-session"); dh || th_F)
 *   initiator -> responder key = okm[0..32], responder -> initiator key =
 *   okm[32..64]. The initiator's tx is the responder's rx and vice versa.
 *   Ephemeral secrets are wiped as soon as the keys exist, so a cluster key
 *   that leaks later does not open recorded traffic.
 *
 * ---- Sealed frames ------------------------------------------------------------
 *
 *   body  = ChaCha20-Poly1305-IETF(key, nonce, plain, no additional data)
 *         = ciphertext (len plain) || 16-byte tag
 *   nonce = 4 zero bytes || u64 LITTLE-endian frame counter (12 bytes,
 *           WireGuard's layout); counters start at 0 in each direction and
 *           are never sent.
 *
 *   ChaCha20-Poly1305-IETF rather than the XChaCha20 variant: the nonce is a
 *   counter under a key used by one link in one direction only, so it can
 *   never repeat and 96 bits are plenty; XChaCha's extended nonce exists for
 *   random nonces and costs an extra HChaCha20 per frame for nothing here.
 *   This is the construction WireGuard and TLS 1.3 use with counters.
 *
 *   A frame opens only under the next expected counter, so a replayed,
 *   reordered, dropped, truncated or altered frame fails; the counter then
 *   stays where it was and the caller drops the link. The counter value
 *   2^64 - 1 is never used: sealing refuses instead of wrapping.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "pogo.h"

#define HS_MAGIC "POGO"
#define HS_T_HELLO_I 1
#define HS_T_HELLO_R 2
#define HS_T_AUTH 3

#define HS_HEAD 5                       /* magic + type */
#define HS_HELLO_HEAD 9                 /* + version range: every version */
#define HS_HELLO_FIXED 78               /* a HELLO up to its name */
#define HS_MAC_BYTES 32
#define HS_AUTH_BYTES (HS_HEAD + HS_MAC_BYTES)
#define HS_HELLO_MAX (HS_HELLO_FIXED + LINK_NAME_MAX + HS_MAC_BYTES)

_Static_assert(HS_HELLO_MAX <= LINK_PREAUTH_MAX,
               "a handshake message must fit the pre-auth frame cap");
_Static_assert(CRYPTO_KEY_BYTES == crypto_generichash_blake2b_KEYBYTES,
               "cluster keys key BLAKE2b directly");
_Static_assert(SESSION_OVERHEAD == crypto_aead_chacha20poly1305_ietf_ABYTES,
               "session overhead is the AEAD tag");

#define KEYFILE_MAX (64 * 1024)

/* Where a handshake stands. Negative: failed; hs_init failures keep their
 * reason until hs_recv can report it. */
enum {
    STEP_I_HELLO = 1,           /* initiator: HELLO sent, awaiting HELLO */
    STEP_R_HELLO,               /* responder: awaiting HELLO */
    STEP_R_AUTH,                /* responder: HELLO sent, awaiting AUTH */
    STEP_DONE,
    STEP_FAILED = -1,
    STEP_BAD_NAME = -2,
    STEP_NO_KEY = -3,
    STEP_NO_MEM = -4,
    STEP_NO_SODIUM = -5,
};

static const unsigned char P_KID[16] = "pogo-kid";
static const unsigned char P_TH[16] = "pogo-th";
static const unsigned char P_MAC[16] = "pogo-mac";
static const unsigned char P_SESSION[16] = "pogo-session";
static const unsigned char NO_SALT[16];

/* ---- primitives ------------------------------------------------------- */

int crypto_setup(void)
{
    static int ready;

    if (!ready) {
        if (sodium_init() < 0)
            return -1;
        ready = 1;
    }
    return 0;
}

/* BLAKE2b of a || b, keyed with key if keylen > 0, personalised. */
static void blake2b(uint8_t *out, size_t outlen, const uint8_t *key,
                    size_t keylen, const unsigned char personal[16],
                    const void *a, size_t alen, const void *b, size_t blen)
{
    crypto_generichash_blake2b_state st;

    crypto_generichash_blake2b_init_salt_personal(&st, keylen ? key : NULL,
                                                  keylen, outlen, NO_SALT,
                                                  personal);
    if (alen > 0)
        crypto_generichash_blake2b_update(&st, a, alen);
    if (blen > 0)
        crypto_generichash_blake2b_update(&st, b, blen);
    crypto_generichash_blake2b_final(&st, out, outlen);
    sodium_memzero(&st, sizeof st);
}

static void key_id(uint8_t id[CRYPTO_KEY_ID_BYTES],
                   const uint8_t key[CRYPTO_KEY_BYTES])
{
    uint8_t full[32];

    blake2b(full, sizeof full, key, CRYPTO_KEY_BYTES, P_KID, NULL, 0, NULL,
            0);
    memcpy(id, full, CRYPTO_KEY_ID_BYTES);
}

/* th = mix(th, seg) */
static void th_mix(uint8_t th[32], const void *seg, size_t len)
{
    uint8_t next[32];

    blake2b(next, sizeof next, NULL, 0, P_TH, th, 32, seg, len);
    memcpy(th, next, sizeof next);
}

static void hs_mac(uint8_t mac[HS_MAC_BYTES], const uint8_t *key,
                   const uint8_t th[32], const char *role)
{
    blake2b(mac, HS_MAC_BYTES, key, CRYPTO_KEY_BYTES, P_MAC, th, 32, role,
            strlen(role));
}

static void put16(uint8_t *p, uint16_t v)
{
    p[0] = (uint8_t)(v >> 8);
    p[1] = (uint8_t)v;
}

static void put32(uint8_t *p, uint32_t v)
{
    for (int i = 0; i < 4; i++)
        p[i] = (uint8_t)(v >> (24 - 8 * i));
}

static void put64(uint8_t *p, uint64_t v)
{
    for (int i = 0; i < 8; i++)
        p[i] = (uint8_t)(v >> (56 - 8 * i));
}

static uint16_t get16(const uint8_t *p)
{
    return (uint16_t)(p[0] << 8 | p[1]);
}

static uint32_t get32(const uint8_t *p)
{
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 |
           (uint32_t)p[2] << 8 | p[3];
}

static uint64_t get64(const uint8_t *p)
{
    uint64_t v = 0;

    for (int i = 0; i < 8; i++)
        v = v << 8 | p[i];
    return v;
}


/* ---- keyring ------------------------------------------------------------ */

static int hexval(int c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

/* Parses the text of a key file into kr. 0, or -1 with a message. */
static int keyring_parse(struct keyring *kr, const char *path,
                         const char *text, size_t size, char *err,
                         size_t errlen)
{
    uint8_t key[CRYPTO_KEY_BYTES];
    int lineno = 0;
    int rc = -1;

    for (size_t pos = 0; pos < size;) {
        const char *line = text + pos;
        const char *nl = memchr(line, '\n', size - pos);
        size_t len = nl ? (size_t)(nl - line) : size - pos;

        pos += len + (nl != NULL);
        lineno++;
        while (len > 0 && (line[len - 1] == ' ' || line[len - 1] == '\t' ||
                           line[len - 1] == '\r'))
            len--;
        while (len > 0 && (line[0] == ' ' || line[0] == '\t')) {
            line++;
            len--;
        }
        if (len == 0 || line[0] == '#')
            continue;
        if (len != 2 * CRYPTO_KEY_BYTES) {
            set_error(err, errlen,
                   "%s line %d: a key is 64 hex digits, this line has %zu "
                   "characters", path, lineno, len);
            goto out;
        }
        for (size_t i = 0; i < CRYPTO_KEY_BYTES; i++) {
            int hi = hexval((unsigned char)line[2 * i]);
            int lo = hexval((unsigned char)line[2 * i + 1]);

            if (hi < 0 || lo < 0) {
                set_error(err, errlen,
                       "%s line %d: not a hex digit at column %zu", path,
                       lineno, 2 * i + (hi < 0 ? 1 : 2));
                goto out;
            }
            key[i] = (uint8_t)(hi << 4 | lo);
        }
        if (sodium_is_zero(key, sizeof key)) {
            set_error(err, errlen, "%s line %d: an all-zero key is not a key",
                   path, lineno);
            goto out;
        }
        uint8_t id[CRYPTO_KEY_ID_BYTES];
        int dup = 0;

        key_id(id, key);
        for (int i = 0; i < kr->n && !dup; i++)
            dup = sodium_memcmp(kr->keys[i], key, sizeof key) == 0;
        if (dup)
            continue;
        for (int i = 0; i < kr->n; i++) {
            if (memcmp(kr->ids[i], id, sizeof id) == 0) {
                /* 2^-64 by chance; refuse rather than pick one. */
                set_error(err, errlen, "%s line %d: key id collides with an "
                       "earlier key", path, lineno);
                goto out;
            }
        }
        if (kr->n == CRYPTO_MAX_KEYS) {
            set_error(err, errlen, "%s line %d: more than %d keys", path, lineno,
                   CRYPTO_MAX_KEYS);
            goto out;
        }
        memcpy(kr->keys[kr->n], key, sizeof key);
        memcpy(kr->ids[kr->n], id, sizeof id);
        kr->n++;
    }
    if (kr->n == 0) {
        set_error(err, errlen, "%s: no key in the file", path);
        goto out;
    }
    rc = 0;
out:
    sodium_memzero(key, sizeof key);
    return rc;
}

int keyring_load(struct keyring *kr, const char *path, char *err, size_t errlen)
{
    struct keyring tmp;
    struct stat st;
    char *text = NULL;
    size_t size = 0;
    int rc = -1;

    memset(&tmp, 0, sizeof tmp);
    if (crypto_setup() < 0) {
        set_error(err, errlen, "libsodium failed to initialise");
        return -1;
    }
    int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOCTTY);
    if (fd < 0) {
        set_error(err, errlen, "%s: %s", path, strerror(errno));
        return -1;
    }
    /* Checked on the open file, so the file judged is the file read. */
    if (fstat(fd, &st) < 0) {
        set_error(err, errlen, "%s: %s", path, strerror(errno));
        goto out;
    }
    if (!S_ISREG(st.st_mode)) {
        set_error(err, errlen, "%s: not a regular file", path);
        goto out;
    }
    if (st.st_mode & 077) {
        set_error(err, errlen,
               "%s: key file is open to group or others (mode %03o): "
               "chmod 600 %s", path, (unsigned)(st.st_mode & 0777), path);
        goto out;
    }
    text = malloc(KEYFILE_MAX + 1);
    if (text == NULL) {
        set_error(err, errlen, "%s: out of memory", path);
        goto out;
    }
    for (;;) {
        ssize_t r = read(fd, text + size, KEYFILE_MAX + 1 - size);

        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0) {
            set_error(err, errlen, "%s: %s", path, strerror(errno));
            goto out;
        }
        if (r == 0)
            break;
        size += (size_t)r;
        if (size > KEYFILE_MAX) {
            set_error(err, errlen, "%s: larger than %d KiB; not a key file",
                   path, KEYFILE_MAX / 1024);
            goto out;
        }
    }
    if (keyring_parse(&tmp, path, text, size, err, errlen) < 0)
        goto out;
    memcpy(kr, &tmp, sizeof tmp);
    rc = 0;
out:
    if (text != NULL) {
        sodium_memzero(text, KEYFILE_MAX + 1);
        free(text);
    }
    sodium_memzero(&tmp, sizeof tmp);
    close(fd);
    return rc;
}

int keyring_generate(const char *path)
{
    uint8_t key[CRYPTO_KEY_BYTES];
    char line[2 * CRYPTO_KEY_BYTES + 2];
    int err = 0;

    if (crypto_setup() < 0) {
        errno = EIO;
        return -1;
    }
    int fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC | O_NOCTTY,
                  0600);
    if (fd < 0)
        return -1;
    randombytes_buf(key, sizeof key);
    sodium_bin2hex(line, sizeof line - 1, key, sizeof key);
    line[2 * CRYPTO_KEY_BYTES] = '\n';
    for (size_t off = 0; off < sizeof line - 1 && err == 0;) {
        ssize_t w = write(fd, line + off, sizeof line - 1 - off);

        if (w < 0 && errno != EINTR)
            err = errno;
        else if (w > 0)
            off += (size_t)w;
    }
    if (err == 0 && fsync(fd) < 0)
        err = errno;
    if (close(fd) < 0 && err == 0)
        err = errno;
    sodium_memzero(key, sizeof key);
    sodium_memzero(line, sizeof line);
    if (err != 0) {
        unlink(path);           /* ours: O_EXCL created it */
        errno = err;
        return -1;
    }
    return 0;
}

/* ---- handshake ------------------------------------------------------------ */

static int name_valid(const char *name, size_t len)
{
    if (len < 1 || len > LINK_NAME_MAX)
        return 0;
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)name[i];

        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
              (c >= '0' && c <= '9') || c == '.' || c == '_' || c == '-'))
            return 0;
    }
    return 1;
}

static const char *msg_name(int type)
{
    switch (type) {
    case HS_T_HELLO_I: return "initiator's HELLO";
    case HS_T_HELLO_R: return "responder's HELLO";
    case HS_T_AUTH: return "AUTH";
    default: return "unknown message";
    }
}

/* A parsed HELLO; pointers into the received body. */
struct hello {
    uint16_t vmin, vmax;
    uint32_t caps;
    uint64_t incarnation;
    const uint8_t *eph_pk, *nonce, *key_id, *mac;
    const char *name;
    size_t name_len;
};

static enum hs_result hs_fail(struct handshake *h, char *err, size_t errlen,
                              const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

/* Ends the handshake: no secret survives a failure. */
static enum hs_result hs_fail(struct handshake *h, char *err, size_t errlen,
                              const char *fmt, ...)
{
    va_list ap;

    if (err != NULL && errlen > 0) {
        va_start(ap, fmt);
        vsnprintf(err, errlen, fmt, ap);
        va_end(ap);
    }
    sodium_memzero(h->eph_sk, sizeof h->eph_sk);
    h->step = STEP_FAILED;
    return HS_FAIL;
}

/* Magic and type, common to every message of every version. */
static int check_head(struct handshake *h, const uint8_t *p, size_t len,
                      int type, char *err, size_t errlen)
{
    if (len < HS_HEAD || memcmp(p, HS_MAGIC, 4) != 0) {
        hs_fail(h, err, errlen, "not a pogo handshake (%zu bytes without "
                "the POGO magic)", len);
        return -1;
    }
    if (p[4] != type) {
        hs_fail(h, err, errlen, "unexpected %s (type %u) where the %s was due",
                msg_name(p[4]), p[4], msg_name(type));
        return -1;
    }
    return 0;
}

/* Parses a HELLO of the given type strictly and negotiates the version. */
static int parse_hello(struct handshake *h, const uint8_t *p, size_t len,
                       int type, struct hello *m, char *err, size_t errlen)
{
    const char *what = msg_name(type);
    size_t tail = type == HS_T_HELLO_R ? HS_MAC_BYTES : 0;

    if (check_head(h, p, len, type, err, errlen) < 0)
        return -1;
    if (len < HS_HELLO_HEAD) {
        hs_fail(h, err, errlen, "malformed %s: %zu bytes", what, len);
        return -1;
    }
    m->vmin = get16(p + 5);
    m->vmax = get16(p + 7);
    if (m->vmin > m->vmax) {
        hs_fail(h, err, errlen, "malformed %s: version range %u..%u", what,
                m->vmin, m->vmax);
        return -1;
    }
    unsigned lo = m->vmin > LINK_PROTO_MIN ? m->vmin : LINK_PROTO_MIN;
    unsigned hi = m->vmax < LINK_PROTO_MAX ? m->vmax : LINK_PROTO_MAX;
    if (lo > hi) {
        hs_fail(h, err, errlen, "protocol versions %u..%u and %u..%u have "
                "nothing in common", m->vmin, m->vmax, LINK_PROTO_MIN,
                LINK_PROTO_MAX);
        return -1;
    }
    /* Version 1 is the only layout so far. */
    if (len < HS_HELLO_FIXED) {
        hs_fail(h, err, errlen, "malformed %s: %zu bytes", what, len);
        return -1;
    }
    m->name_len = p[77];
    if (m->name_len < 1 || m->name_len > LINK_NAME_MAX) {
        hs_fail(h, err, errlen, "malformed %s: name length %zu", what,
                m->name_len);
        return -1;
    }
    if (len != HS_HELLO_FIXED + m->name_len + tail) {
        hs_fail(h, err, errlen, "malformed %s: %zu bytes, expected %zu", what,
                len, HS_HELLO_FIXED + m->name_len + tail);
        return -1;
    }
    m->name = (const char *)p + HS_HELLO_FIXED;
    if (!name_valid(m->name, m->name_len)) {
        hs_fail(h, err, errlen, "malformed %s: the node name has a byte "
                "outside A-Z a-z 0-9 . _ -", what);
        return -1;
    }
    m->caps = get32(p + 9);
    m->incarnation = get64(p + 13);
    m->eph_pk = p + 21;
    m->nonce = p + 53;
    m->key_id = p + 69;
    m->mac = tail ? p + len - HS_MAC_BYTES : NULL;
    h->version = (uint16_t)hi;
    return 0;
}

/* Writes our HELLO (without MAC) into out; returns its length. */
static size_t build_hello(const struct handshake *h, uint8_t *out)
{
    size_t n = strlen(h->self.name);

    memcpy(out, HS_MAGIC, 4);
    out[4] = h->initiator ? HS_T_HELLO_I : HS_T_HELLO_R;
    put16(out + 5, LINK_PROTO_MIN);
    put16(out + 7, LINK_PROTO_MAX);
    put32(out + 9, h->self.caps);
    put64(out + 13, h->self.incarnation);
    memcpy(out + 21, h->eph_pk, 32);
    memcpy(out + 53, h->nonce, 16);
    memcpy(out + 69, h->kr->ids[h->key], CRYPTO_KEY_ID_BYTES);
    out[77] = (uint8_t)n;
    memcpy(out + HS_HELLO_FIXED, h->self.name, n);
    return HS_HELLO_FIXED + n;
}

static void take_peer(struct handshake *h, const struct hello *m)
{
    memset(&h->peer, 0, sizeof h->peer);
    memcpy(h->peer.name, m->name, m->name_len);
    h->peer.incarnation = m->incarnation;
    h->peer.caps = m->caps;
    memcpy(h->peer_eph_pk, m->eph_pk, 32);
    memcpy(h->peer_nonce, m->nonce, 16);
}

static int is_reflection(const struct handshake *h, const struct hello *m)
{
    return m->incarnation == h->self.incarnation &&
           m->name_len == strlen(h->self.name) &&
           memcmp(m->name, h->self.name, m->name_len) == 0;
}

/* X25519 with our ephemeral secret and the peer's public key; -1 for a
 * low-order point (all-zero result). */
static int hs_dh(const struct handshake *h, uint8_t dh[32])
{
    if (crypto_scalarmult(dh, h->eph_sk, h->peer_eph_pk) != 0 ||
        sodium_is_zero(dh, 32)) {
        sodium_memzero(dh, 32);
        return -1;
    }
    return 0;
}

/* Session keys from dh and th_F (in h->th); wipes dh and the secret. */
static void hs_session(struct handshake *h, uint8_t dh[32], struct session *s)
{
    uint8_t okm[64];

    blake2b(okm, sizeof okm, h->kr->keys[h->key], CRYPTO_KEY_BYTES,
            P_SESSION, dh, 32, h->th, 32);
    memcpy(s->tx, h->initiator ? okm : okm + 32, 32);
    memcpy(s->rx, h->initiator ? okm + 32 : okm, 32);
    s->tx_n = 0;
    s->rx_n = 0;
    sodium_memzero(okm, sizeof okm);
    sodium_memzero(dh, 32);
    sodium_memzero(h->eph_sk, sizeof h->eph_sk);
    h->step = STEP_DONE;
}

void hs_init(struct handshake *h, int initiator, const struct keyring *kr,
             const struct hs_identity *self, struct buf *out)
{
    memset(h, 0, sizeof *h);
    h->initiator = initiator != 0;
    h->kr = kr;
    h->key = 0;
    h->self = *self;
    h->self.name[LINK_NAME_MAX] = '\0';
    h->step = h->initiator ? STEP_I_HELLO : STEP_R_HELLO;
    if (crypto_setup() < 0) {
        h->step = STEP_NO_SODIUM;
        return;
    }
    if (!name_valid(h->self.name, strlen(h->self.name))) {
        h->step = STEP_BAD_NAME;
        return;
    }
    if (kr == NULL || kr->n < 1) {
        h->step = STEP_NO_KEY;
        return;
    }
    if (!h->initiator)
        return;         /* the responder's ephemeral key waits for a HELLO */
    crypto_kx_keypair(h->eph_pk, h->eph_sk);
    randombytes_buf(h->nonce, sizeof h->nonce);

    uint8_t msg[HS_HELLO_MAX];
    size_t n = build_hello(h, msg);

    if (buf_append(out, msg, n) < 0) {
        sodium_memzero(h->eph_sk, sizeof h->eph_sk);
        h->step = STEP_NO_MEM;
        return;
    }
    th_mix(h->th, msg, n);
}

/* Responder: the initiator's HELLO. Answers with ours. */
static enum hs_result recv_hello_i(struct handshake *h, const uint8_t *p,
                                   size_t len, struct buf *out, char *err,
                                   size_t errlen)
{
    struct hello m;
    uint8_t dh[32];
    uint8_t msg[HS_HELLO_MAX];

    if (parse_hello(h, p, len, HS_T_HELLO_I, &m, err, errlen) < 0)
        return HS_FAIL;
    h->key = -1;
    for (int i = 0; i < h->kr->n && h->key < 0; i++)
        if (memcmp(h->kr->ids[i], m.key_id, CRYPTO_KEY_ID_BYTES) == 0)
            h->key = i;
    if (h->key < 0) {
        char hex[2 * CRYPTO_KEY_ID_BYTES + 1];

        sodium_bin2hex(hex, sizeof hex, m.key_id, CRYPTO_KEY_ID_BYTES);
        h->key = 0;
        return hs_fail(h, err, errlen, "wrong cluster key (key id %s is not "
                       "in our keyring)", hex);
    }
    if (is_reflection(h, &m))
        return hs_fail(h, err, errlen, "handshake reflected back at us (the "
                       "peer claims our own name and incarnation)");
    take_peer(h, &m);
    crypto_kx_keypair(h->eph_pk, h->eph_sk);
    randombytes_buf(h->nonce, sizeof h->nonce);
    if (hs_dh(h, dh) < 0)
        return hs_fail(h, err, errlen, "bad ephemeral key from the peer "
                       "(low-order point)");
    sodium_memzero(dh, sizeof dh);      /* recomputed once AUTH is in */

    th_mix(h->th, p, len);
    size_t n = build_hello(h, msg);
    th_mix(h->th, msg, n);                                  /* th_R */
    hs_mac(msg + n, h->kr->keys[h->key], h->th, "responder");
    th_mix(h->th, msg + n, HS_MAC_BYTES);
    if (buf_append(out, msg, n + HS_MAC_BYTES) < 0)
        return hs_fail(h, err, errlen, "out of memory");
    h->step = STEP_R_AUTH;
    return HS_CONTINUE;
}

/* Initiator: the responder's HELLO. Answers with AUTH; done. */
static enum hs_result recv_hello_r(struct handshake *h, const uint8_t *p,
                                   size_t len, struct buf *out,
                                   struct session *s, char *err,
                                   size_t errlen)
{
    struct hello m;
    uint8_t th[32], mac[HS_MAC_BYTES], dh[32];
    uint8_t auth[HS_AUTH_BYTES];

    if (parse_hello(h, p, len, HS_T_HELLO_R, &m, err, errlen) < 0)
        return HS_FAIL;
    if (memcmp(m.key_id, h->kr->ids[h->key], CRYPTO_KEY_ID_BYTES) != 0)
        return hs_fail(h, err, errlen, "malformed responder's HELLO: not "
                       "the key id we sent");
    memcpy(th, h->th, sizeof th);
    th_mix(th, p, len - HS_MAC_BYTES);                      /* th_R */
    hs_mac(mac, h->kr->keys[h->key], th, "responder");
    if (sodium_memcmp(mac, m.mac, HS_MAC_BYTES) != 0)
        return hs_fail(h, err, errlen, "wrong cluster key (the responder's "
                       "MAC does not verify)");
    if (is_reflection(h, &m))
        return hs_fail(h, err, errlen, "handshake reflected back at us (the "
                       "peer claims our own name and incarnation)");
    take_peer(h, &m);
    if (hs_dh(h, dh) < 0)
        return hs_fail(h, err, errlen, "bad ephemeral key from the peer "
                       "(low-order point)");

    th_mix(th, m.mac, HS_MAC_BYTES);
    memcpy(auth, HS_MAGIC, 4);
    auth[4] = HS_T_AUTH;
    th_mix(th, auth, HS_HEAD);                              /* th_I */
    hs_mac(auth + HS_HEAD, h->kr->keys[h->key], th, "initiator");
    th_mix(th, auth + HS_HEAD, HS_MAC_BYTES);               /* th_F */
    if (buf_append(out, auth, sizeof auth) < 0) {
        sodium_memzero(dh, sizeof dh);
        return hs_fail(h, err, errlen, "out of memory");
    }
    memcpy(h->th, th, sizeof th);
    hs_session(h, dh, s);
    return HS_DONE;
}

/* Responder: the initiator's AUTH; done. */
static enum hs_result recv_auth(struct handshake *h, const uint8_t *p,
                                size_t len, struct session *s, char *err,
                                size_t errlen)
{
    uint8_t th[32], mac[HS_MAC_BYTES], dh[32];

    if (check_head(h, p, len, HS_T_AUTH, err, errlen) < 0)
        return HS_FAIL;
    if (len != HS_AUTH_BYTES)
        return hs_fail(h, err, errlen, "malformed AUTH: %zu bytes, expected "
                       "%d", len, HS_AUTH_BYTES);
    memcpy(th, h->th, sizeof th);
    th_mix(th, p, HS_HEAD);                                 /* th_I */
    hs_mac(mac, h->kr->keys[h->key], th, "initiator");
    if (sodium_memcmp(mac, p + HS_HEAD, HS_MAC_BYTES) != 0)
        return hs_fail(h, err, errlen, "wrong cluster key (the initiator's "
                       "MAC does not verify)");
    if (hs_dh(h, dh) < 0)
        return hs_fail(h, err, errlen, "bad ephemeral key from the peer "
                       "(low-order point)");
    th_mix(th, p + HS_HEAD, HS_MAC_BYTES);                  /* th_F */
    memcpy(h->th, th, sizeof th);
    hs_session(h, dh, s);
    return HS_DONE;
}

enum hs_result hs_recv(struct handshake *h, const char *body, size_t len,
                       struct buf *out, struct session *s, char *err,
                       size_t errlen)
{
    const uint8_t *p = (const uint8_t *)body;

    if (p == NULL)
        len = 0;
    if (len > LINK_PREAUTH_MAX)
        return hs_fail(h, err, errlen, "handshake message of %zu bytes, over "
                       "the %d-byte limit", len, LINK_PREAUTH_MAX);
    switch (h->step) {
    case STEP_I_HELLO:
        return recv_hello_r(h, p, len, out, s, err, errlen);
    case STEP_R_HELLO:
        return recv_hello_i(h, p, len, out, err, errlen);
    case STEP_R_AUTH:
        return recv_auth(h, p, len, s, err, errlen);
    case STEP_DONE:
        return hs_fail(h, err, errlen, "handshake message after the "
                       "handshake was complete");
    case STEP_BAD_NAME:
        return hs_fail(h, err, errlen, "our node name is not 1..%d bytes of "
                       "A-Z a-z 0-9 . _ -", LINK_NAME_MAX);
    case STEP_NO_KEY:
        return hs_fail(h, err, errlen, "the keyring holds no key");
    case STEP_NO_MEM:
        return hs_fail(h, err, errlen, "out of memory");
    case STEP_NO_SODIUM:
        return hs_fail(h, err, errlen, "libsodium failed to initialise");
    default:
        return hs_fail(h, err, errlen, "handshake already failed");
    }
}

void hs_clear(struct handshake *h)
{
    sodium_memzero(h, sizeof *h);
    h->step = STEP_FAILED;
}

/* ---- sessions ---------------------------------------------------------- */

static void session_nonce(uint8_t nonce[12], uint64_t n)
{
    memset(nonce, 0, 4);
    for (int i = 0; i < 8; i++)
        nonce[4 + i] = (uint8_t)(n >> (8 * i));
}

/* Gives back what a failed seal or open appended to out: struct buf keeps
 * its live bytes at data[off..len], and an append never reorders them. */
static void buf_truncate(struct buf *out, size_t avail)
{
    out->len = out->off + avail;
}

int session_seal(struct session *s, const void *plain, size_t len,
                 struct buf *out)
{
    uint8_t nonce[12], tag[SESSION_OVERHEAD];
    size_t keep = buf_avail(out);

    if (s->tx_n == UINT64_MAX ||
        len > crypto_aead_chacha20poly1305_ietf_MESSAGEBYTES_MAX)
        return -1;
    /* In place: the plain text is copied to out and encrypted there. */
    if (buf_append(out, plain, len) < 0)
        return -1;
    unsigned char *c = len > 0 ? (unsigned char *)out->data + out->len - len
                               : tag;
    session_nonce(nonce, s->tx_n);
    crypto_aead_chacha20poly1305_ietf_encrypt_detached(c, tag, NULL, c, len,
                                                       NULL, 0, NULL, nonce,
                                                       s->tx);
    if (buf_append(out, tag, sizeof tag) < 0) {
        buf_truncate(out, keep);
        return -1;
    }
    s->tx_n++;
    return 0;
}

int session_open(struct session *s, const char *body, size_t len,
                 struct buf *out)
{
    uint8_t nonce[12];
    size_t keep = buf_avail(out);

    if (body == NULL || len < SESSION_OVERHEAD || s->rx_n == UINT64_MAX)
        return -1;
    size_t mlen = len - SESSION_OVERHEAD;
    const unsigned char *tag = (const unsigned char *)body + mlen;
    unsigned char scratch[1];

    /* In place: the cipher text is copied to out and decrypted there; the
     * tag is checked before a byte is decrypted. */
    if (buf_append(out, body, mlen) < 0)
        return -1;
    unsigned char *m = mlen > 0 ? (unsigned char *)out->data + out->len - mlen
                                : scratch;
    session_nonce(nonce, s->rx_n);
    if (crypto_aead_chacha20poly1305_ietf_decrypt_detached(
            m, NULL, m, mlen, tag, NULL, 0, nonce, s->rx) != 0) {
        sodium_memzero(m, mlen);
        buf_truncate(out, keep);
        return -1;
    }
    s->rx_n++;
    return 0;
}
