/*
 * test_crypto.c - the keyring, the handshake and sealed frames, with the
 * real libsodium.
 *
 * Two parties run in memory: each frame body one appends to its out buffer
 * is handed to the other's hs_recv, optionally cut, extended or altered on
 * the way. Some tests recompute the key id, the MACs, the session keys and
 * the nonce from the description at the top of crypto.c alone, so that the
 * description stays true.
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "pogo.h"
#include "unit.h"

#define K1 "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f"
#define K2 "f0e1d2c3b4a5968778695a4b3c2d1e0ff0e1d2c3b4a5968778695a4b3c2d1e0f"
#define K3 "a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5"

static const struct hs_identity ID_A = {"alpha", 0x1111222233334444ull, 0x5};
static const struct hs_identity ID_B = {"beta.2_x-Y", 0x9999888877776666ull,
                                        0xa0000001u};

/* ---- files ---------------------------------------------------------------- */

/* A fresh directory under /tmp; dir gets its path. */
static void tmp_dir(char dir[64])
{
    strcpy(dir, "/tmp/pogo-crypto-XXXXXX");
    REQUIRE(mkdtemp(dir) != NULL);
}

static void tmp_clean(const char *dir)
{
    DIR *d = opendir(dir);
    struct dirent *e;
    char path[512];

    if (d == NULL)
        return;
    while ((e = readdir(d)) != NULL) {
        if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0)
            continue;
        snprintf(path, sizeof path, "%s/%s", dir, e->d_name);
        if (unlink(path) < 0)
            rmdir(path);
    }
    closedir(d);
    rmdir(dir);
}

/* Writes text to dir/name with exactly mode; path gets the file's path. */
static void write_file(char path[256], const char *dir, const char *name,
                       const char *text, mode_t mode)
{
    snprintf(path, 256, "%s/%s", dir, name);
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    REQUIRE(fd >= 0);
    REQUIRE(write(fd, text, strlen(text)) == (ssize_t)strlen(text));
    REQUIRE(fchmod(fd, mode) == 0);
    close(fd);
}

/* Loads text as a key file; returns keyring_load's result, err filled. */
static int load_text(struct keyring *kr, const char *text, mode_t mode,
                     char *err, size_t errlen)
{
    char dir[64], path[256];

    tmp_dir(dir);
    write_file(path, dir, "cluster.key", text, mode);
    int rc = keyring_load(kr, path, err, errlen);
    tmp_clean(dir);
    return rc;
}

static void ring(struct keyring *kr, const char *text)
{
    char err[256] = "";

    memset(kr, 0, sizeof *kr);
    if (load_text(kr, text, 0600, err, sizeof err) != 0)
        unit_fail(__FILE__, __LINE__, 1, "keyring: %s", err);
}

static void unhex(uint8_t *out, const char *hex)
{
    REQUIRE(sodium_hex2bin(out, 32, hex, 64, NULL, NULL, NULL) == 0);
}

/* ---- keyring ----------------------------------------------------------- */

TEST(keyring_loads_one_key)
{
    struct keyring kr;
    uint8_t k[32];

    REQUIRE_EQ_INT(crypto_setup(), 0);
    ring(&kr, K1 "\n");
    CHECK_EQ_INT(kr.n, 1);
    unhex(k, K1);
    CHECK_MEM_EQ(kr.keys[0], 32, k, 32);
}

TEST(keyring_key_id_is_the_documented_kdf)
{
    struct keyring kr;
    uint8_t k[32], sub[32], full[32];
    unsigned char personal[16] = "pogo-kid";

    ring(&kr, K1 "\n");
    unhex(k, K1);
    REQUIRE_EQ_INT(crypto_kdf_derive_from_key(sub, 32, 0, "pogo-kid", k), 0);
    CHECK_MEM_EQ(kr.ids[0], 8, sub, 8);
    crypto_generichash_blake2b_salt_personal(full, 32, NULL, 0, k, 32, NULL,
                                             personal);
    CHECK_MEM_EQ(kr.ids[0], 8, full, 8);
}

TEST(keyring_comments_blanks_crlf_and_several_keys)
{
    struct keyring kr;
    uint8_t k1[32], k2[32], k3[32];
    char upper[65];

    strcpy(upper, K2);
    for (char *p = upper; *p; p++)
        if (*p >= 'a' && *p <= 'f')
            *p = (char)(*p - 'a' + 'A');
    char text[512];
    snprintf(text, sizeof text,
             "# pogo cluster key\n\n   \t\n  # indented comment\n"
             "\t%s  \r\n"
             "#old keys below\n%s\n%s", K1, upper, K3);   /* no final \n */
    ring(&kr, text);
    REQUIRE_EQ_INT(kr.n, 3);
    unhex(k1, K1);
    unhex(k2, K2);
    unhex(k3, K3);
    CHECK_MEM_EQ(kr.keys[0], 32, k1, 32);     /* first key: primary */
    CHECK_MEM_EQ(kr.keys[1], 32, k2, 32);
    CHECK_MEM_EQ(kr.keys[2], 32, k3, 32);
    CHECK(memcmp(kr.ids[0], kr.ids[1], 8) != 0);
    CHECK(memcmp(kr.ids[1], kr.ids[2], 8) != 0);
}

TEST(keyring_refuses_bad_hex_with_the_line_number)
{
    struct keyring kr;
    char err[256] = "";
    char bad[65];

    strcpy(bad, K1);
    bad[40] = 'g';
    char text[256];
    snprintf(text, sizeof text, "# c\n%s\n%s\n", K2, bad);
    CHECK_EQ_INT(load_text(&kr, text, 0600, err, sizeof err), -1);
    CHECK_CONTAINS(err, "line 3");
    CHECK_CONTAINS(err, "hex digit");
    CHECK(strstr(err, "0a0b0c") == NULL);     /* never echoes key material */
}

TEST(keyring_refuses_wrong_length)
{
    struct keyring kr;
    char err[256] = "";

    CHECK_EQ_INT(load_text(&kr, K1 "0\n", 0600, err, sizeof err), -1);
    CHECK_CONTAINS(err, "line 1");
    CHECK_CONTAINS(err, "65 characters");
    err[0] = '\0';
    CHECK_EQ_INT(load_text(&kr, "\n" K1 "\n" "0102", 0600, err, sizeof err),
                 -1);
    CHECK_CONTAINS(err, "line 3");
    err[0] = '\0';
    /* A comment after a key is not a key line. */
    CHECK_EQ_INT(load_text(&kr, K1 " # primary\n", 0600, err, sizeof err), -1);
    CHECK_CONTAINS(err, "line 1");
    err[0] = '\0';
    CHECK_EQ_INT(load_text(&kr, "0x" K1 "\n", 0600, err, sizeof err), -1);
    CHECK_CONTAINS(err, "line 1");
}

TEST(keyring_at_most_max_keys)
{
    struct keyring kr;
    char text[2048] = "";
    char err[256] = "";
    char line[80];

    for (int i = 0; i < CRYPTO_MAX_KEYS + 1; i++) {
        snprintf(line, sizeof line, "%02x%s\n", i + 1, K3 + 2);
        strcat(text, line);
        if (i == CRYPTO_MAX_KEYS - 1) {
            ring(&kr, text);
            CHECK_EQ_INT(kr.n, CRYPTO_MAX_KEYS);
        }
    }
    CHECK_EQ_INT(load_text(&kr, text, 0600, err, sizeof err), -1);
    CHECK_CONTAINS(err, "more than 8 keys");
    CHECK_CONTAINS(err, "line 9");
}

TEST(keyring_refuses_a_file_others_can_read)
{
    struct keyring kr;
    char err[256] = "";
    char dir[64], path[256], expect[300];
    const mode_t bad[] = {0644, 0640, 0604, 0620, 0601, 0660};

    tmp_dir(dir);
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        write_file(path, dir, "k", K1 "\n", bad[i]);
        err[0] = '\0';
        CHECK_EQ_INT(keyring_load(&kr, path, err, sizeof err), -1);
        snprintf(expect, sizeof expect, "chmod 600 %s", path);
        CHECK_CONTAINS(err, expect);
    }
    write_file(path, dir, "k", K1 "\n", 0400);
    CHECK_EQ_INT(keyring_load(&kr, path, err, sizeof err), 0);
    tmp_clean(dir);
}

TEST(keyring_missing_file_and_directory)
{
    struct keyring kr;
    char err[256] = "";
    char dir[64], path[300];

    tmp_dir(dir);
    snprintf(path, sizeof path, "%s/nope.key", dir);
    CHECK_EQ_INT(keyring_load(&kr, path, err, sizeof err), -1);
    CHECK_CONTAINS(err, path);
    CHECK_CONTAINS(err, "No such file");
    REQUIRE(chmod(dir, 0700) == 0);
    err[0] = '\0';
    CHECK_EQ_INT(keyring_load(&kr, dir, err, sizeof err), -1);
    CHECK_CONTAINS(err, "not a regular file");
    tmp_clean(dir);
}

TEST(keyring_refuses_empty_and_zero_keys)
{
    struct keyring kr;
    char err[256] = "";

    CHECK_EQ_INT(load_text(&kr, "", 0600, err, sizeof err), -1);
    CHECK_CONTAINS(err, "no key");
    err[0] = '\0';
    CHECK_EQ_INT(load_text(&kr, "# only a comment\n\n", 0600, err, sizeof err),
                 -1);
    CHECK_CONTAINS(err, "no key");
    err[0] = '\0';
    CHECK_EQ_INT(load_text(&kr, K1 "\n"
                           "0000000000000000000000000000000000000000000000000000000000000000\n",
                           0600, err, sizeof err), -1);
    CHECK_CONTAINS(err, "line 2");
    CHECK_CONTAINS(err, "all-zero");
}

TEST(keyring_error_leaves_the_ring_untouched)
{
    struct keyring kr, before;
    char err[256] = "";

    ring(&kr, K2 "\n" K3 "\n");
    memcpy(&before, &kr, sizeof kr);
    CHECK_EQ_INT(load_text(&kr, K1 "\nnot a key\n", 0600, err, sizeof err), -1);
    CHECK_MEM_EQ(&kr, sizeof kr, &before, sizeof before);
}

TEST(keyring_repeated_key_counts_once)
{
    struct keyring kr;

    ring(&kr, K1 "\n" K2 "\n" K1 "\n");
    CHECK_EQ_INT(kr.n, 2);
}

TEST(keygen_writes_a_0600_key_that_loads)
{
    struct keyring kr;
    struct stat st;
    char dir[64], path[300], err[256] = "", text[128];
    mode_t old = umask(0);

    tmp_dir(dir);
    snprintf(path, sizeof path, "%s/cluster.key", dir);
    int rc = keyring_generate(path);
    umask(old);
    REQUIRE_EQ_INT(rc, 0);
    REQUIRE(stat(path, &st) == 0);
    CHECK_EQ_INT(st.st_mode & 07777, 0600);
    CHECK_EQ_INT(st.st_size, 65);
    FILE *f = fopen(path, "r");
    REQUIRE(f != NULL);
    size_t n = fread(text, 1, sizeof text - 1, f);
    fclose(f);
    text[n] = '\0';
    CHECK_EQ_INT(n, 65);
    CHECK_EQ_INT(strspn(text, "0123456789abcdef"), 64);
    CHECK_EQ_INT(text[64], '\n');
    CHECK_EQ_INT(keyring_load(&kr, path, err, sizeof err), 0);
    CHECK_EQ_INT(kr.n, 1);

    /* A second key is another key. */
    char path2[300];
    snprintf(path2, sizeof path2, "%s/other.key", dir);
    REQUIRE_EQ_INT(keyring_generate(path2), 0);
    struct keyring kr2;
    CHECK_EQ_INT(keyring_load(&kr2, path2, err, sizeof err), 0);
    CHECK(memcmp(kr.keys[0], kr2.keys[0], 32) != 0);
    tmp_clean(dir);
}

TEST(keygen_never_overwrites)
{
    char dir[64], path[256], text[32] = "";

    tmp_dir(dir);
    write_file(path, dir, "cluster.key", "precious\n", 0600);
    errno = 0;
    CHECK_EQ_INT(keyring_generate(path), -1);
    CHECK_EQ_INT(errno, EEXIST);
    FILE *f = fopen(path, "r");
    REQUIRE(f != NULL);
    CHECK(fgets(text, sizeof text, f) != NULL);
    fclose(f);
    CHECK_STR_EQ(text, "precious\n");
    /* Nor through a dangling symlink. */
    char link_path[300];
    snprintf(link_path, sizeof link_path, "%s/dangling", dir);
    char target[300];
    snprintf(target, sizeof target, "%s/target", dir);
    REQUIRE(symlink(target, link_path) == 0);
    CHECK_EQ_INT(keyring_generate(link_path), -1);
    CHECK(access(target, F_OK) != 0);
    tmp_clean(dir);
}

/* ---- handshake harness -------------------------------------------------- */

struct party {
    struct handshake h;
    struct buf out;
    struct session s;
    enum hs_result r;
    char err[256];
};

/* What to do to one message on its way. */
enum mut_kind { MUT_NONE, MUT_CUT, MUT_EXTEND, MUT_XOR, MUT_SET };
struct mutation {
    int msg;                  /* 1 HELLO_I, 2 HELLO_R, 3 AUTH; 0 none */
    enum mut_kind kind;
    size_t pos;               /* CUT: new length; XOR/SET: the byte */
    uint8_t val;              /* XOR mask, SET value, EXTEND byte */
};

/* The messages of the last run, as sent (before any mutation). */
struct transcript {
    uint8_t m[4][512];
    size_t len[4];
};

static void party_init(struct party *p, int initiator,
                       const struct keyring *kr, const struct hs_identity *id)
{
    memset(p, 0, sizeof *p);
    buf_init(&p->out);
    p->r = HS_CONTINUE;
    hs_init(&p->h, initiator, kr, id, &p->out);
}

static void party_free(struct party *p)
{
    hs_clear(&p->h);
    buf_free(&p->out);
}

/* Hands what from sent to to, mutated if m says so. */
static void deliver(struct party *from, struct party *to, int msgno,
                    const struct mutation *m, struct transcript *t)
{
    uint8_t body[600];
    size_t len = buf_avail(&from->out);

    REQUIRE(len > 0 && len <= 512);
    memcpy(body, buf_head(&from->out), len);
    buf_consume(&from->out, len);
    if (t != NULL) {
        memcpy(t->m[msgno], body, len);
        t->len[msgno] = len;
    }
    if (m != NULL && m->msg == msgno) {
        switch (m->kind) {
        case MUT_CUT: len = m->pos; break;
        case MUT_EXTEND: body[len++] = m->val; break;
        case MUT_XOR: body[m->pos] ^= m->val; break;
        case MUT_SET: body[m->pos] = m->val; break;
        case MUT_NONE: break;
        }
    }
    to->r = hs_recv(&to->h, (const char *)body, len, &to->out, &to->s, to->err,
                    sizeof to->err);
}

/* Runs a whole handshake between i and r (already initialised). */
static void converse(struct party *i, struct party *r,
                     const struct mutation *m, struct transcript *t)
{
    deliver(i, r, 1, m, t);
    if (r->r != HS_CONTINUE)
        return;
    CHECK_EQ_INT(buf_avail(&i->out), 0);
    deliver(r, i, 2, m, t);
    if (i->r != HS_DONE)
        return;
    deliver(i, r, 3, m, t);
}

/* A fresh pair with rings ri/rr and identities A (initiator) and B. */
static void handshake(struct party *i, struct party *r,
                      const struct keyring *ri, const struct keyring *rr,
                      const struct mutation *m, struct transcript *t)
{
    party_init(i, 1, ri, &ID_A);
    party_init(r, 0, rr, &ID_B);
    converse(i, r, m, t);
}

/* Seals on a, opens on b, n frames of growing sizes. */
static void cross(struct session *a, struct session *b, int n)
{
    struct buf wire, got;
    uint8_t plain[3000];
    uint64_t tx0 = a->tx_n, rx0 = b->rx_n;

    buf_init(&wire);
    buf_init(&got);
    for (int k = 0; k < n; k++) {
        size_t len = (size_t)(k * 37) % sizeof plain;
        for (size_t j = 0; j < len; j++)
            plain[j] = (uint8_t)(j * 13 + k);
        REQUIRE_EQ_INT(session_seal(a, plain, len, &wire), 0);
        REQUIRE_EQ_INT(buf_avail(&wire), len + SESSION_OVERHEAD);
        if (len > 16)   /* sealed, not copied */
            CHECK(memcmp(buf_head(&wire), plain, 16) != 0);
        REQUIRE_EQ_INT(session_open(b, buf_head(&wire), buf_avail(&wire),
                                    &got), 0);
        REQUIRE_MEM_EQ(buf_head(&got), buf_avail(&got), plain, len);
        buf_consume(&wire, buf_avail(&wire));
        buf_consume(&got, buf_avail(&got));
    }
    CHECK(a->tx_n == tx0 + (uint64_t)n);
    CHECK(b->rx_n == rx0 + (uint64_t)n);
    buf_free(&wire);
    buf_free(&got);
}

/* ---- handshake --------------------------------------------------------- */

TEST(hs_completes_and_exchanges_identities)
{
    struct keyring kr;
    struct party i, r;
    struct transcript t;

    ring(&kr, K1 "\n");
    handshake(&i, &r, &kr, &kr, NULL, &t);
    REQUIRE_EQ_INT(i.r, HS_DONE);
    REQUIRE_EQ_INT(r.r, HS_DONE);
    CHECK_EQ_INT(buf_avail(&r.out), 0);
    CHECK_STR_EQ(i.h.peer.name, ID_B.name);
    CHECK_STR_EQ(r.h.peer.name, ID_A.name);
    CHECK_EQ_INT(i.h.peer.incarnation, ID_B.incarnation);
    CHECK_EQ_INT(r.h.peer.incarnation, ID_A.incarnation);
    CHECK_EQ_INT(i.h.peer.caps, ID_B.caps);
    CHECK_EQ_INT(r.h.peer.caps, ID_A.caps);
    CHECK_EQ_INT(i.h.version, LINK_PROTO_MAX);
    CHECK_EQ_INT(r.h.version, LINK_PROTO_MAX);
    CHECK_EQ_INT(t.len[1], 78 + strlen(ID_A.name));
    CHECK_EQ_INT(t.len[2], 110 + strlen(ID_B.name));
    CHECK_EQ_INT(t.len[3], 37);
    /* Both hold the same two keys, crossed. */
    CHECK_MEM_EQ(i.s.tx, 32, r.s.rx, 32);
    CHECK_MEM_EQ(i.s.rx, 32, r.s.tx, 32);
    CHECK(memcmp(i.s.tx, i.s.rx, 32) != 0);
    /* The ephemeral secrets are gone. */
    CHECK(sodium_is_zero(i.h.eph_sk, 32));
    CHECK(sodium_is_zero(r.h.eph_sk, 32));
    party_free(&i);
    party_free(&r);
}

TEST(hs_sessions_cross_match_both_ways)
{
    struct keyring kr;
    struct party i, r;

    ring(&kr, K1 "\n");
    handshake(&i, &r, &kr, &kr, NULL, NULL);
    REQUIRE_EQ_INT(r.r, HS_DONE);
    cross(&i.s, &r.s, 500);
    cross(&r.s, &i.s, 500);
    cross(&i.s, &r.s, 10);

    /* A 1 MiB frame. */
    struct buf wire, got;
    size_t big = 1u << 20;
    char *plain = malloc(big);
    REQUIRE(plain != NULL);
    randombytes_buf(plain, big);
    buf_init(&wire);
    buf_init(&got);
    REQUIRE_EQ_INT(session_seal(&r.s, plain, big, &wire), 0);
    REQUIRE_EQ_INT(session_open(&i.s, buf_head(&wire), buf_avail(&wire), &got),
                   0);
    CHECK_MEM_EQ(buf_head(&got), buf_avail(&got), plain, big);
    free(plain);
    buf_free(&wire);
    buf_free(&got);
    party_free(&i);
    party_free(&r);
}

/* BLAKE2b of a || b with an optional key and a personalisation. */
static void b2(uint8_t *out, size_t outlen, const uint8_t *key,
               const char *personal, const void *a, size_t alen,
               const void *b, size_t blen)
{
    uint8_t msg[1024];
    unsigned char p[16] = {0};

    memcpy(p, personal, strlen(personal));
    memcpy(msg, a, alen);
    memcpy(msg + alen, b, blen);
    crypto_generichash_blake2b_salt_personal(out, outlen, msg, alen + blen,
                                             key, key ? 32 : 0, NULL, p);
}

TEST(hs_follows_the_documented_layout)
{
    struct keyring kr;
    struct party i, r;
    struct transcript t;
    uint8_t eph_sk_i[32], th[32], th2[32], mac[32], dh[32], okm[64];

    ring(&kr, K1 "\n");
    party_init(&i, 1, &kr, &ID_A);
    party_init(&r, 0, &kr, &ID_B);
    memcpy(eph_sk_i, i.h.eph_sk, 32);
    converse(&i, &r, NULL, &t);
    REQUIRE_EQ_INT(r.r, HS_DONE);

    const uint8_t *m1 = t.m[1], *m2 = t.m[2], *m3 = t.m[3];
    size_t n1 = t.len[1], n2 = t.len[2];
    size_t na = strlen(ID_A.name), nb = strlen(ID_B.name);

    /* HELLO_I, field by field. */
    CHECK_MEM_EQ(m1, 4, "POGO", 4);
    CHECK_EQ_INT(m1[4], 1);
    CHECK_EQ_INT(m1[5] << 8 | m1[6], LINK_PROTO_MIN);
    CHECK_EQ_INT(m1[7] << 8 | m1[8], LINK_PROTO_MAX);
    CHECK_EQ_INT((uint32_t)m1[9] << 24 | m1[10] << 16 | m1[11] << 8 | m1[12],
                 ID_A.caps);
    uint64_t inc = 0;
    for (int k = 0; k < 8; k++)
        inc = inc << 8 | m1[13 + k];
    CHECK(inc == ID_A.incarnation);
    uint8_t pk[32];
    crypto_scalarmult_base(pk, eph_sk_i);
    CHECK_MEM_EQ(m1 + 21, 32, pk, 32);
    CHECK_MEM_EQ(m1 + 69, 8, kr.ids[0], 8);
    CHECK_EQ_INT(m1[77], na);
    CHECK_MEM_EQ(m1 + 78, na, ID_A.name, na);

    /* HELLO_R: the same, then the MAC. */
    CHECK_MEM_EQ(m2, 4, "POGO", 4);
    CHECK_EQ_INT(m2[4], 2);
    CHECK_EQ_INT(m2[77], nb);
    CHECK_MEM_EQ(m2 + 78, nb, ID_B.name, nb);
    CHECK_MEM_EQ(m2 + 69, 8, kr.ids[0], 8);
    CHECK(memcmp(m1 + 53, m2 + 53, 16) != 0);     /* two random nonces */

    /* The transcript chain and the two MACs. */
    memset(th, 0, 32);
    b2(th2, 32, NULL, "pogo-th", th, 32, m1, n1);
    b2(th, 32, NULL, "pogo-th", th2, 32, m2, n2 - 32);         /* th_R */
    b2(mac, 32, kr.keys[0], "pogo-mac", th, 32, "responder", 9);
    CHECK_MEM_EQ(m2 + n2 - 32, 32, mac, 32);
    b2(th2, 32, NULL, "pogo-th", th, 32, mac, 32);
    b2(th, 32, NULL, "pogo-th", th2, 32, "POGO\x03", 5);       /* th_I */
    CHECK_MEM_EQ(m3, 5, "POGO\x03", 5);
    b2(mac, 32, kr.keys[0], "pogo-mac", th, 32, "initiator", 9);
    CHECK_MEM_EQ(m3 + 5, 32, mac, 32);
    b2(th2, 32, NULL, "pogo-th", th, 32, mac, 32);             /* th_F */

    /* Session keys. */
    REQUIRE_EQ_INT(crypto_scalarmult(dh, eph_sk_i, m2 + 21), 0);
    b2(okm, 64, kr.keys[0], "pogo-session", dh, 32, th2, 32);
    CHECK_MEM_EQ(i.s.tx, 32, okm, 32);
    CHECK_MEM_EQ(i.s.rx, 32, okm + 32, 32);
    CHECK_MEM_EQ(r.s.tx, 32, okm + 32, 32);
    CHECK_MEM_EQ(r.s.rx, 32, okm, 32);
    party_free(&i);
    party_free(&r);
}

TEST(hs_longest_messages_fit_before_auth)
{
    struct keyring kr;
    struct party i, r;
    struct transcript t;
    struct hs_identity a = ID_A, b = ID_B;

    memset(a.name, 'a', LINK_NAME_MAX);
    a.name[LINK_NAME_MAX] = '\0';
    memset(b.name, 'b', LINK_NAME_MAX);
    b.name[LINK_NAME_MAX] = '\0';
    ring(&kr, K1 "\n");
    party_init(&i, 1, &kr, &a);
    party_init(&r, 0, &kr, &b);
    converse(&i, &r, NULL, &t);
    REQUIRE_EQ_INT(r.r, HS_DONE);
    CHECK_EQ_INT(t.len[2], 173);
    for (int k = 1; k <= 3; k++)
        CHECK(t.len[k] <= LINK_PREAUTH_MAX);
    CHECK_STR_EQ(r.h.peer.name, a.name);
    CHECK_STR_EQ(i.h.peer.name, b.name);
    party_free(&i);
    party_free(&r);
}

TEST(hs_wrong_key_fails_on_both_sides)
{
    struct keyring k1, k3, forged;
    struct party i, r;

    ring(&k1, K1 "\n");
    ring(&k3, K3 "\n");

    /* The responder does not know the initiator's key id. */
    handshake(&i, &r, &k3, &k1, NULL, NULL);
    CHECK_EQ_INT(r.r, HS_FAIL);
    CHECK_CONTAINS(r.err, "wrong cluster key");
    char hex[17];
    sodium_bin2hex(hex, sizeof hex, k3.ids[0], 8);
    CHECK_CONTAINS(r.err, hex);
    CHECK_EQ_INT(buf_avail(&r.out), 0);
    party_free(&i);
    party_free(&r);

    /* Same id, other key: the initiator rejects the responder's MAC. */
    memcpy(&forged, &k3, sizeof forged);
    memcpy(forged.ids[0], k1.ids[0], 8);
    handshake(&i, &r, &forged, &k1, NULL, NULL);
    CHECK_EQ_INT(r.r, HS_CONTINUE);
    CHECK_EQ_INT(i.r, HS_FAIL);
    CHECK_CONTAINS(i.err, "wrong cluster key");
    CHECK_EQ_INT(buf_avail(&i.out), 0);          /* no AUTH sent */
    party_free(&i);
    party_free(&r);

    /* The responder holds the forged ring: its MAC does not verify either. */
    handshake(&i, &r, &k1, &forged, NULL, NULL);
    CHECK_EQ_INT(i.r, HS_FAIL);
    CHECK_CONTAINS(i.err, "wrong cluster key");
    party_free(&i);
    party_free(&r);

    /* An AUTH whose MAC is not the initiator's: the responder rejects it. */
    struct mutation m = {3, MUT_XOR, 20, 0x40};
    handshake(&i, &r, &k1, &k1, &m, NULL);
    CHECK_EQ_INT(i.r, HS_DONE);
    CHECK_EQ_INT(r.r, HS_FAIL);
    CHECK_CONTAINS(r.err, "wrong cluster key");
    party_free(&i);
    party_free(&r);
}

TEST(hs_key_rotation)
{
    struct keyring old, both_new_first, both_old_first, only_new, stranger;
    struct party i, r;

    ring(&old, K1 "\n");
    ring(&both_new_first, K2 "\n" K1 "\n");
    ring(&both_old_first, K1 "\n" K2 "\n");
    ring(&only_new, K2 "\n");
    ring(&stranger, K3 "\n" K2 "\n");

    /* The initiator's primary is the responder's second key. */
    handshake(&i, &r, &both_new_first, &both_old_first, NULL, NULL);
    CHECK_EQ_INT(i.r, HS_DONE);
    CHECK_EQ_INT(r.r, HS_DONE);
    CHECK_EQ_INT(r.h.key, 1);
    cross(&i.s, &r.s, 3);
    cross(&r.s, &i.s, 3);
    party_free(&i);
    party_free(&r);

    /* The initiator still uses the old key, which the responder accepts. */
    handshake(&i, &r, &old, &both_new_first, NULL, NULL);
    CHECK_EQ_INT(i.r, HS_DONE);
    CHECK_EQ_INT(r.r, HS_DONE);
    CHECK_EQ_INT(r.h.key, 1);
    cross(&i.s, &r.s, 3);
    party_free(&i);
    party_free(&r);

    /* Done rotating: the new key alone meets a ring that has it first. */
    handshake(&i, &r, &only_new, &both_new_first, NULL, NULL);
    CHECK_EQ_INT(r.r, HS_DONE);
    CHECK_EQ_INT(r.h.key, 0);
    party_free(&i);
    party_free(&r);

    /* A key not in the ring fails, even with a common key further down. */
    handshake(&i, &r, &stranger, &old, NULL, NULL);
    CHECK_EQ_INT(r.r, HS_FAIL);
    CHECK_CONTAINS(r.err, "wrong cluster key");
    party_free(&i);
    party_free(&r);
    handshake(&i, &r, &old, &only_new, NULL, NULL);
    CHECK_EQ_INT(r.r, HS_FAIL);
    CHECK_CONTAINS(r.err, "wrong cluster key");
    party_free(&i);
    party_free(&r);
}

TEST(hs_disjoint_versions_fail_with_both_ranges)
{
    struct keyring kr;
    struct party i, r;
    char expect[128];

    ring(&kr, K1 "\n");
    /* The initiator speaks 7..9: the responder refuses. */
    party_init(&i, 1, &kr, &ID_A);
    party_init(&r, 0, &kr, &ID_B);
    uint8_t *p = (uint8_t *)buf_head(&i.out);
    p[6] = 7;
    p[8] = 9;
    converse(&i, &r, NULL, NULL);
    CHECK_EQ_INT(r.r, HS_FAIL);
    snprintf(expect, sizeof expect,
             "protocol versions 7..9 and %d..%d have nothing in common",
             LINK_PROTO_MIN, LINK_PROTO_MAX);
    CHECK_STR_EQ(r.err, expect);
    party_free(&i);
    party_free(&r);

    /* A responder that answers with 7..9 anyway: the initiator refuses,
     * with the version message (checked before the MAC). */
    party_init(&i, 1, &kr, &ID_A);
    party_init(&r, 0, &kr, &ID_B);
    deliver(&i, &r, 1, NULL, NULL);
    REQUIRE_EQ_INT(r.r, HS_CONTINUE);
    p = (uint8_t *)buf_head(&r.out);
    p[6] = 7;
    p[8] = 9;
    deliver(&r, &i, 2, NULL, NULL);
    CHECK_EQ_INT(i.r, HS_FAIL);
    CHECK_STR_EQ(i.err, expect);
    party_free(&i);
    party_free(&r);

    /* A range altered in flight that still overlaps: the MAC catches it. */
    struct mutation widen = {2, MUT_SET, 8, 9};           /* 1..9 */
    handshake(&i, &r, &kr, &kr, &widen, NULL);
    CHECK_EQ_INT(i.r, HS_FAIL);
    CHECK_CONTAINS(i.err, "wrong cluster key");
    party_free(&i);
    party_free(&r);

    /* A reversed range is malformed, not "nothing in common". */
    struct mutation rev = {1, MUT_SET, 6, 2};     /* 2..1 */
    handshake(&i, &r, &kr, &kr, &rev, NULL);
    CHECK_EQ_INT(r.r, HS_FAIL);
    CHECK_CONTAINS(r.err, "malformed");
    party_free(&i);
    party_free(&r);
}

TEST(hs_overlapping_versions_pick_the_highest_common)
{
    struct keyring kr;
    struct party i, r;

    ring(&kr, K1 "\n");
    party_init(&i, 1, &kr, &ID_A);
    party_init(&r, 0, &kr, &ID_B);
    uint8_t *p = (uint8_t *)buf_head(&i.out);
    p[5] = 0;
    p[6] = 0;               /* 0..300 */
    p[7] = 1;
    p[8] = 44;
    deliver(&i, &r, 1, NULL, NULL);
    CHECK_EQ_INT(r.r, HS_CONTINUE);
    CHECK_EQ_INT(r.h.version, LINK_PROTO_MAX);
    party_free(&i);
    party_free(&r);
}

/* Runs one handshake with m and checks that it failed where it must. */
static void expect_refused(const struct keyring *kr, const struct mutation *m,
                           int *fails)
{
    struct party i, r;

    handshake(&i, &r, kr, kr, m, NULL);
    if (r.r == HS_DONE || (m->msg < 3 && i.r == HS_DONE)) {
        FAIL("message %d, mutation %d at %zu (0x%02x): handshake completed",
             m->msg, m->kind, m->pos, m->val);
    } else if (r.r != HS_FAIL && i.r != HS_FAIL) {
        FAIL("message %d, mutation %d at %zu: nobody failed", m->msg, m->kind,
             m->pos);
    } else {
        const char *e = r.r == HS_FAIL ? r.err : i.err;
        if (e[0] == '\0')
            FAIL("message %d: HS_FAIL without a reason", m->msg);
        (*fails)++;
    }
    party_free(&i);
    party_free(&r);
}

static size_t msg_len(int msg)
{
    return msg == 1 ? 78 + strlen(ID_A.name)
         : msg == 2 ? 110 + strlen(ID_B.name)
                    : 37;
}

TEST(hs_truncated_or_extended_messages_fail)
{
    struct keyring kr;
    int fails = 0, runs = 0;

    ring(&kr, K1 "\n");
    for (int msg = 1; msg <= 3; msg++) {
        for (size_t cut = 0; cut < msg_len(msg); cut++, runs++) {
            struct mutation m = {msg, MUT_CUT, cut, 0};
            expect_refused(&kr, &m, &fails);
        }
        for (int v = 0; v < 256; v += 85, runs++) {
            struct mutation m = {msg, MUT_EXTEND, 0, (uint8_t)v};
            expect_refused(&kr, &m, &fails);
        }
    }
    CHECK_EQ_INT(fails, runs);
}

TEST(hs_every_flipped_bit_fails)
{
    struct keyring kr;
    int fails = 0, runs = 0;

    ring(&kr, K1 "\n");
    for (int msg = 1; msg <= 3; msg++)
        for (size_t pos = 0; pos < msg_len(msg); pos++)
            for (int bit = 0; bit < 8; bit++, runs++) {
                struct mutation m = {msg, MUT_XOR, pos, (uint8_t)(1u << bit)};
                expect_refused(&kr, &m, &fails);
            }
    CHECK_EQ_INT(fails, runs);
}

TEST(hs_garbage_and_misplaced_messages_fail)
{
    struct keyring kr;
    struct party i, r;
    uint8_t junk[300];
    const char *http = "GET / HTTP/1.1\r\nHost: x\r\n\r\n";

    ring(&kr, K1 "\n");
    party_init(&r, 0, &kr, &ID_B);
    CHECK_EQ_INT(hs_recv(&r.h, http, strlen(http), &r.out, &r.s, r.err,
                         sizeof r.err), HS_FAIL);
    CHECK_CONTAINS(r.err, "not a pogo handshake");
    /* Once failed, always failed. */
    CHECK_EQ_INT(hs_recv(&r.h, http, strlen(http), &r.out, &r.s, r.err,
                         sizeof r.err), HS_FAIL);
    party_free(&r);

    party_init(&r, 0, &kr, &ID_B);
    CHECK_EQ_INT(hs_recv(&r.h, NULL, 0, &r.out, &r.s, r.err, sizeof r.err),
                 HS_FAIL);
    party_free(&r);

    for (int k = 0; k < 200; k++) {
        size_t n = (size_t)randombytes_uniform(sizeof junk);
        randombytes_buf(junk, n);
        if (k % 2)
            memcpy(junk, "POGO\x01", n < 5 ? n : 5);
        party_init(&r, 0, &kr, &ID_B);
        CHECK_EQ_INT(hs_recv(&r.h, (char *)junk, n, &r.out, &r.s, r.err,
                             sizeof r.err), HS_FAIL);
        CHECK_EQ_INT(buf_avail(&r.out), 0);
        party_free(&r);
        party_init(&i, 1, &kr, &ID_A);
        buf_consume(&i.out, buf_avail(&i.out));
        CHECK_EQ_INT(hs_recv(&i.h, (char *)junk, n, &i.out, &i.s, i.err,
                             sizeof i.err), HS_FAIL);
        CHECK_EQ_INT(buf_avail(&i.out), 0);
        party_free(&i);
    }

    /* The initiator's own HELLO sent back to it: wrong type. */
    party_init(&i, 1, &kr, &ID_A);
    uint8_t own[200];
    size_t n = buf_avail(&i.out);
    memcpy(own, buf_head(&i.out), n);
    CHECK_EQ_INT(hs_recv(&i.h, (char *)own, n, &i.out, &i.s, i.err,
                         sizeof i.err), HS_FAIL);
    CHECK_CONTAINS(i.err, "initiator's HELLO");
    party_free(&i);

    /* An AUTH where a HELLO is due, and a HELLO where AUTH is due. */
    party_init(&r, 0, &kr, &ID_B);
    memset(junk, 0, 37);
    memcpy(junk, "POGO\x03", 5);
    CHECK_EQ_INT(hs_recv(&r.h, (char *)junk, 37, &r.out, &r.s, r.err,
                         sizeof r.err), HS_FAIL);
    CHECK_CONTAINS(r.err, "AUTH");
    party_free(&r);
    party_init(&i, 1, &kr, &ID_A);
    party_init(&r, 0, &kr, &ID_B);
    n = buf_avail(&i.out);
    memcpy(own, buf_head(&i.out), n);
    deliver(&i, &r, 1, NULL, NULL);
    REQUIRE_EQ_INT(r.r, HS_CONTINUE);
    CHECK_EQ_INT(hs_recv(&r.h, (char *)own, n, &r.out, &r.s, r.err,
                         sizeof r.err), HS_FAIL);
    party_free(&i);
    party_free(&r);

    /* Anything after the handshake is not a handshake message. */
    handshake(&i, &r, &kr, &kr, NULL, NULL);
    REQUIRE_EQ_INT(r.r, HS_DONE);
    CHECK_EQ_INT(hs_recv(&r.h, "POGO", 4, &r.out, &r.s, r.err, sizeof r.err),
                 HS_FAIL);
    CHECK_EQ_INT(hs_recv(&i.h, "POGO", 4, &i.out, &i.s, i.err, sizeof i.err),
                 HS_FAIL);
    party_free(&i);
    party_free(&r);

    /* Over the pre-auth cap. */
    party_init(&r, 0, &kr, &ID_B);
    char *big = calloc(1, LINK_PREAUTH_MAX + 1);
    REQUIRE(big != NULL);
    memcpy(big, "POGO\x01", 5);
    CHECK_EQ_INT(hs_recv(&r.h, big, LINK_PREAUTH_MAX + 1, &r.out, &r.s, r.err,
                         sizeof r.err), HS_FAIL);
    free(big);
    party_free(&r);
}

TEST(hs_bad_names_fail)
{
    struct keyring kr;
    struct party i, r;
    const char *bad[] = {"has space", "uni\xc3\xa9", "a/b", "a:b", "nul\x01"};

    ring(&kr, K1 "\n");
    for (size_t k = 0; k < sizeof bad / sizeof bad[0]; k++) {
        struct hs_identity a = ID_A;
        snprintf(a.name, sizeof a.name, "%s", bad[k]);
        /* Our own name: refused before anything is sent. */
        party_init(&i, 1, &kr, &a);
        CHECK_EQ_INT(buf_avail(&i.out), 0);
        CHECK_EQ_INT(hs_recv(&i.h, "x", 1, &i.out, &i.s, i.err, sizeof i.err),
                     HS_FAIL);
        CHECK_CONTAINS(i.err, "node name");
        party_free(&i);
    }
    struct hs_identity empty = ID_A;
    empty.name[0] = '\0';
    party_init(&i, 1, &kr, &empty);
    CHECK_EQ_INT(buf_avail(&i.out), 0);
    party_free(&i);

    /* A peer's name with a bad byte, fixed up in flight. */
    struct mutation m = {1, MUT_SET, 78, ' '};
    handshake(&i, &r, &kr, &kr, &m, NULL);
    CHECK_EQ_INT(r.r, HS_FAIL);
    CHECK_CONTAINS(r.err, "node name");
    party_free(&i);
    party_free(&r);
    struct mutation zero = {1, MUT_SET, 77, 0};
    handshake(&i, &r, &kr, &kr, &zero, NULL);
    CHECK_EQ_INT(r.r, HS_FAIL);
    CHECK_CONTAINS(r.err, "name length 0");
    party_free(&i);
    party_free(&r);

    /* An empty keyring cannot start a handshake. */
    struct keyring none;
    memset(&none, 0, sizeof none);
    party_init(&i, 1, &none, &ID_A);
    CHECK_EQ_INT(buf_avail(&i.out), 0);
    CHECK_EQ_INT(hs_recv(&i.h, "x", 1, &i.out, &i.s, i.err, sizeof i.err),
                 HS_FAIL);
    CHECK_CONTAINS(i.err, "no key");
    party_free(&i);
}

TEST(hs_reflection_fails)
{
    struct keyring kr;
    struct party i, r;

    ring(&kr, K1 "\n");
    /* Our HELLO comes back to our own listening side. */
    party_init(&i, 1, &kr, &ID_A);
    party_init(&r, 0, &kr, &ID_A);
    deliver(&i, &r, 1, NULL, NULL);
    CHECK_EQ_INT(r.r, HS_FAIL);
    CHECK_CONTAINS(r.err, "reflected");
    CHECK_EQ_INT(buf_avail(&r.out), 0);
    party_free(&i);
    party_free(&r);

    /* The initiator checks too: a responder claiming to be us. */
    party_init(&i, 1, &kr, &ID_A);
    party_init(&r, 0, &kr, &ID_B);
    deliver(&i, &r, 1, NULL, NULL);
    REQUIRE_EQ_INT(r.r, HS_CONTINUE);
    i.h.self = ID_B;      /* as if the HELLO it got carried its own identity */
    deliver(&r, &i, 2, NULL, NULL);
    CHECK_EQ_INT(i.r, HS_FAIL);
    CHECK_CONTAINS(i.err, "reflected");
    CHECK_EQ_INT(buf_avail(&i.out), 0);
    party_free(&i);
    party_free(&r);

    /* Same name with another incarnation, or same incarnation with another
     * name, is not a reflection (the name clash is the link layer's). */
    struct hs_identity other = ID_A;
    other.incarnation++;
    party_init(&i, 1, &kr, &ID_A);
    party_init(&r, 0, &kr, &other);
    converse(&i, &r, NULL, NULL);
    CHECK_EQ_INT(r.r, HS_DONE);
    party_free(&i);
    party_free(&r);
    other = ID_B;
    other.incarnation = ID_A.incarnation;
    party_init(&i, 1, &kr, &ID_A);
    party_init(&r, 0, &kr, &other);
    converse(&i, &r, NULL, NULL);
    CHECK_EQ_INT(r.r, HS_DONE);
    party_free(&i);
    party_free(&r);
}

TEST(hs_low_order_points_fail)
{
    /* Curve25519 points of small order (libsodium's blocklist). */
    static const uint8_t bad[][32] = {
        {0},
        {1},
        {0xe0, 0xeb, 0x7a, 0x7c, 0x3b, 0x41, 0xb8, 0xae, 0x16, 0x56, 0xe3,
         0xfa, 0xf1, 0x9f, 0xc4, 0x6a, 0xda, 0x09, 0x8d, 0xeb, 0x9c, 0x32,
         0xb1, 0xfd, 0x86, 0x62, 0x05, 0x16, 0x5f, 0x49, 0xb8, 0x00},
        {0x5f, 0x9c, 0x95, 0xbc, 0xa3, 0x50, 0x8c, 0x24, 0xb1, 0xd0, 0xb1,
         0x55, 0x9c, 0x83, 0xef, 0x5b, 0x04, 0x44, 0x5c, 0xc4, 0x58, 0x1c,
         0x8e, 0x86, 0xd8, 0x22, 0x4e, 0xdd, 0xd0, 0x9f, 0x11, 0x57},
        {0xec, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
         0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
         0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f},
    };
    struct keyring kr;
    struct party i, r;

    ring(&kr, K1 "\n");
    for (size_t k = 0; k < sizeof bad / sizeof bad[0]; k++) {
        party_init(&i, 1, &kr, &ID_A);
        party_init(&r, 0, &kr, &ID_B);
        memcpy(buf_head(&i.out) + 21, bad[k], 32);
        deliver(&i, &r, 1, NULL, NULL);
        CHECK_EQ_INT(r.r, HS_FAIL);
        CHECK_CONTAINS(r.err, "low-order");
        party_free(&i);
        party_free(&r);
    }
}

TEST(hs_clear_wipes)
{
    struct keyring kr;
    struct party i;
    uint8_t zero[sizeof i.h];

    ring(&kr, K1 "\n");
    party_init(&i, 1, &kr, &ID_A);
    CHECK(!sodium_is_zero(i.h.eph_sk, 32));
    hs_clear(&i.h);
    memset(zero, 0, sizeof zero);
    i.h.step = 0;
    CHECK_MEM_EQ(&i.h, sizeof i.h, zero, sizeof zero);
    buf_free(&i.out);
}

/* ---- sessions -------------------------------------------------------------- */

/* A completed pair: a = initiator, b = responder. */
static void session_pair(struct session *a, struct session *b)
{
    struct keyring kr;
    struct party i, r;

    ring(&kr, K1 "\n");
    handshake(&i, &r, &kr, &kr, NULL, NULL);
    REQUIRE_EQ_INT(r.r, HS_DONE);
    *a = i.s;
    *b = r.s;
    party_free(&i);
    party_free(&r);
}

/* Opens body on s; returns the result and checks that a failure changed
 * neither the counter nor out. */
static int try_open(struct session *s, const void *body, size_t len,
                    struct buf *out)
{
    uint64_t n = s->rx_n;
    size_t avail = buf_avail(out);
    int rc = session_open(s, body, len, out);

    if (rc != 0) {
        CHECK_EQ_INT(s->rx_n, n);
        CHECK_EQ_INT(buf_avail(out), avail);
    } else {
        CHECK_EQ_INT(s->rx_n, n + 1);
    }
    return rc;
}

TEST(session_replay_fails)
{
    struct session a, b;
    struct buf w, got;

    session_pair(&a, &b);
    buf_init(&w);
    buf_init(&got);
    REQUIRE_EQ_INT(session_seal(&a, "ping", 4, &w), 0);
    CHECK_EQ_INT(try_open(&b, buf_head(&w), buf_avail(&w), &got), 0);
    CHECK_EQ_INT(try_open(&b, buf_head(&w), buf_avail(&w), &got), -1);
    CHECK_MEM_EQ(buf_head(&got), buf_avail(&got), "ping", 4);
    buf_free(&w);
    buf_free(&got);
}

TEST(session_reordered_or_dropped_frames_fail)
{
    struct session a, b;
    struct buf f[3], got;

    session_pair(&a, &b);
    buf_init(&got);
    for (int k = 0; k < 3; k++) {
        buf_init(&f[k]);
        REQUIRE_EQ_INT(session_seal(&a, "frame", 5, &f[k]), 0);
    }
    CHECK_EQ_INT(try_open(&b, buf_head(&f[1]), buf_avail(&f[1]), &got), -1);
    CHECK_EQ_INT(try_open(&b, buf_head(&f[2]), buf_avail(&f[2]), &got), -1);
    CHECK_EQ_INT(buf_avail(&got), 0);
    /* The counter did not move, so the frame due still opens. */
    CHECK_EQ_INT(try_open(&b, buf_head(&f[0]), buf_avail(&f[0]), &got), 0);
    CHECK_EQ_INT(try_open(&b, buf_head(&f[2]), buf_avail(&f[2]), &got), -1);
    for (int k = 0; k < 3; k++)
        buf_free(&f[k]);
    buf_free(&got);
}

TEST(session_any_flipped_bit_or_cut_fails)
{
    struct session a, b;
    struct buf w, got;
    uint8_t frame[64 + SESSION_OVERHEAD], bad[sizeof frame + 1];
    const char *plain = "a sixty-four byte message, more or less; the tag follows it.....";

    session_pair(&a, &b);
    buf_init(&w);
    buf_init(&got);
    REQUIRE_EQ_INT(buf_append(&got, "kept", 4), 0);
    REQUIRE_EQ_INT(session_seal(&a, plain, 64, &w), 0);
    REQUIRE_EQ_INT(buf_avail(&w), sizeof frame);
    memcpy(frame, buf_head(&w), sizeof frame);
    for (size_t pos = 0; pos < sizeof frame; pos++)
        for (int bit = 0; bit < 8; bit++) {
            memcpy(bad, frame, sizeof frame);
            bad[pos] ^= (uint8_t)(1u << bit);
            CHECK_EQ_INT(try_open(&b, bad, sizeof frame, &got), -1);
        }
    for (size_t len = 0; len < sizeof frame; len++)
        CHECK_EQ_INT(try_open(&b, frame, len, &got), -1);
    memcpy(bad, frame, sizeof frame);
    bad[sizeof frame] = 0;
    CHECK_EQ_INT(try_open(&b, bad, sizeof frame + 1, &got), -1);
    CHECK_EQ_INT(try_open(&b, NULL, 0, &got), -1);
    CHECK_MEM_EQ(buf_head(&got), buf_avail(&got), "kept", 4);
    /* Nothing of that touched the session: the real frame opens. */
    CHECK_EQ_INT(try_open(&b, frame, sizeof frame, &got), 0);
    CHECK_EQ_INT(buf_avail(&got), 4 + 64);
    CHECK_MEM_EQ(buf_head(&got) + 4, 64, plain, 64);
    buf_free(&w);
    buf_free(&got);
}

TEST(session_frame_sent_back_fails)
{
    struct session a, b;
    struct buf w, got;

    session_pair(&a, &b);
    buf_init(&w);
    buf_init(&got);
    REQUIRE_EQ_INT(session_seal(&a, "to b", 4, &w), 0);
    /* Reflected to its sender, which expects frames of the other key. */
    CHECK_EQ_INT(try_open(&a, buf_head(&w), buf_avail(&w), &got), -1);
    CHECK_EQ_INT(try_open(&b, buf_head(&w), buf_avail(&w), &got), 0);
    buf_free(&w);
    buf_free(&got);
}

TEST(session_counter_never_wraps)
{
    struct session a, b;
    struct buf w, got;

    session_pair(&a, &b);
    buf_init(&w);
    buf_init(&got);
    a.tx_n = b.rx_n = UINT64_MAX - 1;
    REQUIRE_EQ_INT(session_seal(&a, "last", 4, &w), 0);
    CHECK_EQ_INT(try_open(&b, buf_head(&w), buf_avail(&w), &got), 0);
    CHECK(a.tx_n == UINT64_MAX);
    CHECK(b.rx_n == UINT64_MAX);
    buf_consume(&w, buf_avail(&w));
    CHECK_EQ_INT(session_seal(&a, "one more", 8, &w), -1);
    CHECK_EQ_INT(buf_avail(&w), 0);
    CHECK(a.tx_n == UINT64_MAX);
    /* A spent receive counter opens nothing, not even the frame due. */
    struct session c = a;
    c.tx_n = UINT64_MAX - 1;
    REQUIRE_EQ_INT(session_seal(&c, "x", 1, &w), 0);
    CHECK_EQ_INT(try_open(&b, buf_head(&w), buf_avail(&w), &got), -1);
    b.rx_n = UINT64_MAX - 1;
    CHECK_EQ_INT(try_open(&b, buf_head(&w), buf_avail(&w), &got), 0);
    buf_free(&w);
    buf_free(&got);
}

TEST(session_nonce_is_the_documented_counter)
{
    struct session a, b;
    struct buf w;
    uint8_t nonce[12] = {0}, plain[16];
    unsigned long long mlen = 0;

    session_pair(&a, &b);
    buf_init(&w);
    a.tx_n = 0x0102030405060708ull;
    REQUIRE_EQ_INT(session_seal(&a, "hello", 5, &w), 0);
    for (int k = 0; k < 8; k++)
        nonce[4 + k] = (uint8_t)(0x0102030405060708ull >> (8 * k));
    CHECK_EQ_INT(crypto_aead_chacha20poly1305_ietf_decrypt(
                     plain, &mlen, NULL, (const unsigned char *)buf_head(&w),
                     buf_avail(&w), NULL, 0, nonce, b.rx), 0);
    CHECK_MEM_EQ(plain, (size_t)mlen, "hello", 5);
    buf_free(&w);
}

TEST(session_keys_differ_per_handshake)
{
    struct session a1, b1, a2, b2s;
    struct buf w, got;

    session_pair(&a1, &b1);
    session_pair(&a2, &b2s);
    CHECK(memcmp(a1.tx, a2.tx, 32) != 0);
    CHECK(memcmp(a1.rx, a2.rx, 32) != 0);
    buf_init(&w);
    buf_init(&got);
    REQUIRE_EQ_INT(session_seal(&a1, "secret", 6, &w), 0);
    CHECK_EQ_INT(try_open(&b2s, buf_head(&w), buf_avail(&w), &got), -1);
    CHECK_EQ_INT(try_open(&b1, buf_head(&w), buf_avail(&w), &got), 0);
    buf_free(&w);
    buf_free(&got);
}
