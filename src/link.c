/*
 * link.c - authenticated TCP links between agents, on the agent's loop.
 *
 * Mechanism only: listening sockets, outgoing dials, the handshake
 * (crypto.c), sealed frames (frame.c + crypto.c), one output queue per
 * link, and the rule that keeps exactly one link per pair of node names.
 * What to dial, when to retry, heartbeats and membership are Lua's; the
 * binding is lua_link.c.
 *
 * A link's life is an explicit state machine:
 *
 *   state       event                          next       effect
 *   connecting  connected                      handshake  HELLO out (initiator)
 *   connecting  refused, unreachable, timer    closed     failed
 *   handshake   handshake frame: continue      handshake  reply out
 *   handshake   handshake frame: done          confirm    our verdict out: ACCEPT,
 *                                                         or REFUSE and closed
 *   handshake   bad frame, EOF, error, timer   closed     one warn line; failed
 *   confirm     the peer's ACCEPT              up         up()
 *   confirm     the peer's REFUSE              closed     one line; failed
 *   confirm     EOF, error, timer, bad frame   closed     one warn line; failed
 *   up          MSG                            up         message()
 *   up          GOODBYE, EOF, error, bad frame closed     down
 *   any         link_close()                   closed     GOODBYE if up; down
 *
 * "failed" is reported only for links we dialled; an incoming link that
 * never came up only leaves its log line. A dial that reaches our own
 * listener is recognised by its addresses and fails as "connected to
 * itself", before any handshake. Closing hands the socket to a
 * lingerer when a last frame (GOODBYE, REFUSE) must reach the peer, so the
 * link itself is gone at once.
 *
 * Wire format after the handshake: every frame body is sealed
 * (session_seal); its plain text is one type byte and a payload:
 *
 *   1 MSG      a MessagePack value (the binding encodes and decodes it)
 *   2 ACCEPT   empty: the sender keeps this link
 *   3 REFUSE   a kind byte (1 duplicate link, 2 node name in use) and a
 *              line of text for the refused side's log
 *   4 GOODBYE  the reason the sender closed the link, as text
 *
 * One link per pair of names. After the handshake each side sends a
 * verdict and a link comes up only once both sides said ACCEPT:
 *   - a name held by a live link of another incarnation is refused by the
 *     side holding that link; a peer using our own name is refused by the
 *     side that was dialled (both ends see that clash; one must speak).
 *     The refuser logs its line, the refused side logs "refused by N: ..."
 *     from the REFUSE it receives;
 *   - two links between the same two incarnations (a simultaneous dial, or
 *     a redial racing the old link's close) are decided by the node with
 *     the smaller name alone: it accepts the first link whose handshake
 *     completes there and refuses the others as duplicates. The larger
 *     node accepts every such link and waits for the smaller one's
 *     verdict. Both ends therefore agree on the survivor, and no link that
 *     is later dropped as a duplicate ever fires up. If the smaller node
 *     accepts a link while the larger still has an older one up, the older
 *     one is stale (the smaller node no longer holds it) and is replaced:
 *     its down is delivered before the new up.
 *
 * Callbacks into the binding: up() and message() run from the loop as
 * events happen; closed() is deferred to an ev_prepare (before the loop
 * next blocks) so it never runs inside a call the binding made, and any
 * pending closed() calls are delivered before an up(), keeping the order
 * in which things happened. The same prepare writes every link's queued
 * output, so the frames sent during one loop iteration leave in one
 * write(2) per link.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <inttypes.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "pogo.h"


/* Bytes read per link per wakeup; the rest waits in the kernel for the
 * next iteration, after timers and other links have had their turn. */
#define LINK_READ_BUDGET (64u << 10)
/* Frames are handed to the owner for at most this long per loop iteration,
 * over all links; the rest wait in their buffers for the next one. 64 KiB
 * of small pg members is some 3,000 joins, 10 ms of Lua: a snapshot
 * streaming in must not hold timers and heartbeats for that long. */
#define LINK_DELIVER_MS 1.0
#define LINK_MAX_QUEUE (64u << 20)      /* output past this: peer too slow */
#define LINK_ACCEPT_BURST 64            /* accepts per wakeup */
#define LINK_MAX_PENDING 512            /* incoming links in handshake */
#define LINK_LINGER 2.0                 /* seconds to deliver a last frame */
#define LINK_ACCEPT_PAUSE 0.1           /* after EMFILE and the like */
#define ADDR_MAX 64                     /* "[v6 address]:port" */
#define REASON_MAX 320

enum { T_MSG = 1, T_ACCEPT = 2, T_REFUSE = 3, T_GOODBYE = 4 };
enum { REFUSE_DUPLICATE = 1, REFUSE_NAME = 2 };

/* CONFIRM is LINK_HANDSHAKE seen from outside: authenticated, verdicts
 * being exchanged. */
enum lstate { S_CONNECTING, S_HANDSHAKE, S_CONFIRM, S_UP, S_CLOSED };

/* A keyring shared by the handshakes that started under it: a reload
 * swaps the ctx's ring without pulling it from under them. */
struct ring {
    int refs;
    struct keyring kr;
};

struct link {
    ev_io rio, wio;
    ev_timer timer;             /* connect, then handshake deadline */
    ev_timer resume;            /* frames left in `in` by the delivery budget */
    struct link_ctx *ctx;       /* not touched once closed and not noted */
    struct link *prev, *next;   /* ctx->links while not closed */
    struct link *note_next;     /* ctx->notes while closed() is due */
    enum lstate state;
    int fd;                     /* -1 once closed */
    int initiator;
    int dirty;                  /* output queued since the last flush */
    int local;                  /* closed by the owner */
    int noted;                  /* on ctx->notes */
    int busy;                   /* link.c frames on the stack use it */
    int got_bytes;              /* anything received (for EOF messages) */
    int connect_err;            /* connect() failed at once: from the loop */
    enum link_end end;          /* for the pending closed() */
    void *owner;                /* the binding's handle; NULL: ours */
    uint64_t id;
    uint16_t version;           /* negotiated by the handshake */
    char addr[ADDR_MAX];        /* remote "host:port" */
    char host[ADDR_MAX];        /* as dialled; "" for incoming */
    char laddr[ADDR_MAX];       /* our end, dialled links only */
    int port;
    struct hs_identity peer;    /* from the end of the handshake on */
    struct ring *ring;          /* during the handshake */
    struct handshake hs;
    struct session session;
    struct buf in, out;
    struct link_stats st;
    char reason[REASON_MAX];
};

/* Delivers a last frame after its link has closed: writes it, half-closes,
 * and discards input until the peer closes too (so closing does not reset
 * the connection under the frame), or LINK_LINGER passes. */
struct lingerer {
    ev_io io;
    ev_timer timer;
    struct link_ctx *ctx;
    struct lingerer *prev, *next;
    int fd;
    int draining;               /* output written, reading to EOF */
    struct buf out;
};

struct link_listener {
    ev_io io;
    ev_timer pause;             /* accepts paused after EMFILE and the like */
    struct link_ctx *ctx;
    struct link_listener *prev, *next;
    int fd;                     /* -1 once closed */
    int port;
    char addr[ADDR_MAX];
};

struct link_ctx {
    struct ev_loop *loop;
    struct link_handlers h;
    void *ud;
    ev_prepare prepare;         /* flush output, deliver closed() */
    unsigned int budget_iteration;   /* the loop iteration deliver_until is for */
    double deliver_until;       /* CLOCK_MONOTONIC ms: the budget runs out */
    int ready;                  /* set up and not shut down */
    struct hs_identity self;
    double hs_timeout, dial_timeout;
    char *keyfile;              /* owned */
    struct sockaddr_storage source;  /* bound before connect() if set */
    socklen_t source_len;       /* 0: let the kernel pick */
    struct ring *ring;          /* for new handshakes */
    struct link *head, *tail;   /* links not yet closed, oldest first */
    struct link *notes, *notes_tail;
    struct link_listener *listeners;
    struct lingerer *lingerers;
    int pending_in;             /* incoming links not yet up */
    uint64_t next_id;
    struct buf tx;              /* scratch: plain text being sealed */
    struct buf rx;              /* scratch: plain text just opened */
    struct buf hsout;           /* scratch: a handshake message */
};

static void on_readable(struct ev_loop *loop, ev_io *w, int revents);
static void on_writable(struct ev_loop *loop, ev_io *w, int revents);
static void on_timer(struct ev_loop *loop, ev_timer *w, int revents);
static void on_resume(struct ev_loop *loop, ev_timer *w, int revents);
static void deliver_notes(struct link_ctx *c);

/* ---- helpers ------------------------------------------------------------ */


static struct ring *ring_ref(struct ring *r)
{
    r->refs++;
    return r;
}

static void ring_unref(struct ring **rp)
{
    struct ring *r = *rp;

    *rp = NULL;
    if (r && --r->refs == 0) {
        sodium_memzero(r, sizeof *r);
        free(r);
    }
}

static void format_addr(const struct sockaddr *sa, char *out, size_t len)
{
    char ip[INET6_ADDRSTRLEN];

    if (sa->sa_family == AF_INET6) {
        const struct sockaddr_in6 *s6 = (const struct sockaddr_in6 *)sa;
        inet_ntop(AF_INET6, &s6->sin6_addr, ip, sizeof ip);
        snprintf(out, len, "[%s]:%u", ip, ntohs(s6->sin6_port));
    } else if (sa->sa_family == AF_INET) {
        const struct sockaddr_in *s4 = (const struct sockaddr_in *)sa;
        inet_ntop(AF_INET, &s4->sin_addr, ip, sizeof ip);
        snprintf(out, len, "%s:%u", ip, ntohs(s4->sin_port));
    } else {
        snprintf(out, len, "(address family %d)", sa->sa_family);
    }
}

/* A numeric host and a port into *ss. getaddrinfo with AI_NUMERICHOST
 * never touches DNS, so it cannot block the loop. 0, or -1 with errno. */
static int parse_addr(const char *host, int port, int passive,
                      struct sockaddr_storage *ss, socklen_t *sslen,
                      char *err, size_t errlen)
{
    char h[ADDR_MAX], ps[8];
    size_t n = strlen(host);

    if (passive && (n == 0 || strcmp(host, "*") == 0))
        host = "0.0.0.0";
    else if (n >= 2 && host[0] == '[' && host[n - 1] == ']' && n - 2 < sizeof h) {
        memcpy(h, host + 1, n - 2);     /* "[::1]" as addresses print */
        h[n - 2] = '\0';
        host = h;
    }
    snprintf(ps, sizeof ps, "%d", port);
    struct addrinfo hints = {
        .ai_socktype = SOCK_STREAM,
        .ai_flags = AI_NUMERICHOST | AI_NUMERICSERV | (passive ? AI_PASSIVE : 0),
    };
    struct addrinfo *res;
    int rc = getaddrinfo(host, ps, &hints, &res);
    if (rc != 0) {
        set_error(err, errlen, "'%s' is not a numeric IP address (%s)", host,
               gai_strerror(rc));
        errno = EINVAL;
        return -1;
    }
    memcpy(ss, res->ai_addr, res->ai_addrlen);
    *sslen = res->ai_addrlen;
    freeaddrinfo(res);
    return 0;
}

/* Small frames (heartbeats, pg changes) leave at once; batching is done by
 * flushing once per loop iteration instead. Best effort: a socket without
 * it still works. */
static void set_nodelay(int fd)
{
    int one = 1;
    (void)setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
}

/* The length announced by the frame header at the head of b. */
static size_t header_len(const struct buf *b)
{
    const unsigned char *h = (const unsigned char *)buf_head(b);
    return (size_t)h[0] << 24 | (size_t)h[1] << 16 | (size_t)h[2] << 8 | h[3];
}

static const char *direction(const struct link *l)
{
    return l->initiator ? "to" : "from";
}

/* ---- lingerers ------------------------------------------------------------- */

static void linger_end(struct lingerer *g)
{
    struct link_ctx *c = g->ctx;

    ev_io_stop(c->loop, &g->io);
    ev_timer_stop(c->loop, &g->timer);
    close(g->fd);
    buf_free(&g->out);
    if (g->prev) g->prev->next = g->next; else c->lingerers = g->next;
    if (g->next) g->next->prev = g->prev;
    free(g);
}

/* Writes what is left; once all is out, half-closes and waits for EOF.
 * Returns 0 while lingering, -1 once g is gone. */
static int linger_step(struct lingerer *g)
{
    struct ev_loop *loop = g->ctx->loop;

    if (!g->draining) {
        while (buf_avail(&g->out) > 0) {
            ssize_t n = send(g->fd, buf_head(&g->out), buf_avail(&g->out),
                             MSG_NOSIGNAL);
            if (n > 0) {
                buf_consume(&g->out, (size_t)n);
                continue;
            }
            if (n < 0 && errno == EINTR)
                continue;
            if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
                return 0;
            linger_end(g);          /* the peer is gone: nothing to deliver */
            return -1;
        }
        g->draining = 1;
        if (shutdown(g->fd, SHUT_WR) < 0) {
            linger_end(g);
            return -1;
        }
        ev_io_stop(loop, &g->io);
        ev_io_set(&g->io, g->fd, EV_READ);
        ev_io_start(loop, &g->io);
        return 0;
    }
    char sink[4096];
    for (int i = 0; i < 16; i++) {      /* bounded: a chatty peer waits */
        ssize_t n = recv(g->fd, sink, sizeof sink, 0);
        if (n > 0)
            continue;
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
            return 0;
        linger_end(g);              /* EOF or error: done */
        return -1;
    }
    return 0;
}

static void on_linger_io(struct ev_loop *loop, ev_io *w, int revents)
{
    (void)loop; (void)revents;
    linger_step((struct lingerer *)w);
}

static void on_linger_timer(struct ev_loop *loop, ev_timer *w, int revents)
{
    (void)loop; (void)revents;
    linger_end((struct lingerer *)((char *)w - offsetof(struct lingerer, timer)));
}

/* Takes ownership of fd and of the bytes in out (out is left empty). */
static void linger_start(struct link_ctx *c, int fd, struct buf *out)
{
    struct lingerer *g = calloc(1, sizeof *g);

    if (g == NULL) {                /* the last frame is a courtesy */
        close(fd);
        buf_free(out);
        return;
    }
    g->ctx = c;
    g->fd = fd;
    g->out = *out;
    buf_init(out);
    g->next = c->lingerers;
    if (c->lingerers)
        c->lingerers->prev = g;
    c->lingerers = g;
    ev_io_init(&g->io, on_linger_io, fd, EV_WRITE);
    ev_timer_init(&g->timer, on_linger_timer, LINK_LINGER, 0);
    ev_timer_start(c->loop, &g->timer);
    if (linger_step(g) == 0 && !g->draining)
        ev_io_start(c->loop, &g->io);
}

/* ---- link life ------------------------------------------------------------- */

static void link_maybe_free(struct link *l)
{
    if (l->state == S_CLOSED && l->owner == NULL && l->busy == 0 && !l->noted)
        free(l);
}

static void mark_dirty(struct link *l)
{
    if (!l->dirty) {
        l->dirty = 1;
        ev_prepare_start(l->ctx->loop, &l->ctx->prepare);
    }
}

static struct link *link_new(struct link_ctx *c, int fd, int initiator)
{
    struct link *l = calloc(1, sizeof *l);

    if (l == NULL)
        return NULL;
    l->ctx = c;
    l->fd = fd;
    l->initiator = initiator;
    l->id = ++c->next_id;
    l->state = S_CONNECTING;
    buf_init(&l->in);
    buf_init(&l->out);
    ev_io_init(&l->rio, on_readable, fd, EV_READ);
    ev_io_init(&l->wio, on_writable, fd, EV_WRITE);
    ev_init(&l->timer, on_timer);
    ev_timer_init(&l->resume, on_resume, 0, 0);
    l->prev = c->tail;
    if (c->tail) c->tail->next = l; else c->head = l;
    c->tail = l;
    if (!initiator)
        c->pending_in++;
    return l;
}

/* Closes the socket side: watchers, fd (to a lingerer if linger and output
 * is queued), buffers, secrets, the ctx's list. The peer's identity and the
 * stats stay readable. */
static void link_shut(struct link *l, int linger)
{
    struct link_ctx *c = l->ctx;

    if (l->state == S_CLOSED)
        return;
    if (!l->initiator && l->state != S_UP)
        c->pending_in--;
    ev_io_stop(c->loop, &l->rio);
    ev_io_stop(c->loop, &l->wio);
    ev_timer_stop(c->loop, &l->timer);
    ev_timer_stop(c->loop, &l->resume);
    if (linger && buf_avail(&l->out) > 0)
        linger_start(c, l->fd, &l->out);
    else
        close(l->fd);
    l->fd = -1;
    l->st.queued = buf_avail(&l->out);
    buf_free(&l->in);
    buf_free(&l->out);
    hs_clear(&l->hs);
    sodium_memzero(&l->session, sizeof l->session);
    ring_unref(&l->ring);
    if (l->prev) l->prev->next = l->next; else c->head = l->next;
    if (l->next) l->next->prev = l->prev; else c->tail = l->prev;
    l->prev = l->next = NULL;
    l->dirty = 0;
    l->state = S_CLOSED;
}

/* Queues the owner's closed() call, or frees a link nobody owns. */
static void link_notify(struct link *l, enum link_end end, const char *reason)
{
    struct link_ctx *c = l->ctx;

    if (l->owner == NULL) {
        link_maybe_free(l);
        return;
    }
    l->end = end;
    snprintf(l->reason, sizeof l->reason, "%s", reason);
    l->noted = 1;
    l->note_next = NULL;
    if (c->notes_tail) c->notes_tail->note_next = l; else c->notes = l;
    c->notes_tail = l;
    ev_prepare_start(c->loop, &c->prepare);
}

/* Ends l with one log line; a link that never came up is logged at level
 * ("link from ADDR: REASON, dropped"), one that was up at info ("... down:
 * REASON"). linger: deliver the queued output first. */
static void drop(struct link *l, enum log_level level, int linger,
                 const char *fmt, ...) __attribute__((format(printf, 4, 5)));

static void drop(struct link *l, enum log_level level, int linger,
                 const char *fmt, ...)
{
    char reason[REASON_MAX];
    va_list ap;

    if (l->state == S_CLOSED)       /* one end, one line */
        return;
    va_start(ap, fmt);
    vsnprintf(reason, sizeof reason, fmt, ap);
    va_end(ap);
    int was_up = l->state == S_UP;
    enum link_end end = was_up ? LINK_END_DOWN
                      : l->local || !l->initiator ? LINK_END_QUIET
                      : LINK_END_FAILED;
    if (was_up)
        log_info("link", "link %s %s (%s) down: %s", direction(l), l->addr,
                 l->peer.name, reason);
    else if (l->state == S_CONNECTING)
        log_msg(level, "link", "link to %s: %s", l->addr, reason);
    else
        log_msg(level, "link", "link %s %s: %s, dropped", direction(l),
                l->addr, reason);
    link_shut(l, linger);
    link_notify(l, end, reason);
}

/* Seals [type, payload] as one frame onto l->out. 0, or -1 (ENOMEM). The
 * header is written after sealing, in place, to avoid copying the body. */
static int put_sealed(struct link *l, int type, const void *payload, size_t n)
{
    struct link_ctx *c = l->ctx;
    struct buf *out = &l->out;
    unsigned char t = (unsigned char)type, hdr[FRAME_HEADER] = {0};

    buf_consume(&c->tx, buf_avail(&c->tx));
    if (buf_append(&c->tx, &t, 1) < 0 || buf_append(&c->tx, payload, n) < 0)
        goto oom;
    /* Positions relative to the head survive a realloc of out. */
    size_t pos = buf_avail(out);
    if (buf_append(out, hdr, sizeof hdr) < 0)
        goto oom;
    if (session_seal(&l->session, buf_head(&c->tx), buf_avail(&c->tx), out) < 0) {
        out->len = out->off + pos;
        goto oom;
    }
    size_t len = buf_avail(out) - pos - FRAME_HEADER;
    unsigned char *h = (unsigned char *)buf_head(out) + pos;
    h[0] = (unsigned char)(len >> 24);
    h[1] = (unsigned char)(len >> 16);
    h[2] = (unsigned char)(len >> 8);
    h[3] = (unsigned char)len;
    buf_consume(&c->tx, buf_avail(&c->tx));
    l->st.frames_out++;
    mark_dirty(l);
    return 0;
oom:
    buf_consume(&c->tx, buf_avail(&c->tx));
    errno = ENOMEM;
    return -1;
}

/* Refuses the peer after the handshake: a REFUSE it can log, then closed.
 * The caller has logged our side's line. */
static void refuse(struct link *l, int kind, const char *text)
{
    char body[REASON_MAX + 1];
    size_t n = strlen(text);

    if (n > REASON_MAX - 1)
        n = REASON_MAX - 1;
    body[0] = (char)kind;
    memcpy(body + 1, text, n);
    put_sealed(l, T_REFUSE, body, n + 1);   /* a courtesy if out of memory */
    link_shut(l, 1);
    link_notify(l, l->initiator ? LINK_END_FAILED : LINK_END_QUIET, text);
}

/* A socket error. To the owner of an up link, a peer that reset the
 * connection (it died with unread input, or closed under our write) went
 * away like one that closed it. */
static void drop_errno(struct link *l, int e)
{
    if (l->state == S_UP && (e == ECONNRESET || e == EPIPE))
        drop(l, LOG_INFO, 0, "closed by peer (connection reset)");
    else
        drop(l, LOG_WARN, 0, "%s: %s", errno_name(e), strerror(e));
}

/* Writes l->out until the socket is full; the rest waits for writability. */
static void flush(struct link *l)
{
    struct ev_loop *loop = l->ctx->loop;

    l->dirty = 0;
    while (buf_avail(&l->out) > 0) {
        ssize_t n = send(l->fd, buf_head(&l->out), buf_avail(&l->out),
                         MSG_NOSIGNAL);
        if (n > 0) {
            l->st.bytes_out += (uint64_t)n;
            buf_consume(&l->out, (size_t)n);
            continue;
        }
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            ev_io_start(loop, &l->wio);
            return;
        }
        drop_errno(l, n < 0 ? errno : EPIPE);
        return;
    }
    ev_io_stop(loop, &l->wio);
}

/* ---- the handshake and the verdicts --------------------------------------- */

/* Frames what the handshake wants sent. 0, or -1 once l was dropped. */
static int put_hs_out(struct link *l)
{
    struct link_ctx *c = l->ctx;
    size_t n = buf_avail(&c->hsout);

    if (n == 0)
        return 0;
    int rc = frame_put(&l->out, buf_head(&c->hsout), n);
    buf_consume(&c->hsout, n);
    if (rc < 0) {
        drop(l, LOG_WARN, 0, "out of memory");
        return -1;
    }
    l->st.frames_out++;
    mark_dirty(l);
    return 0;
}

static void start_handshake(struct link *l)
{
    struct link_ctx *c = l->ctx;

    l->state = S_HANDSHAKE;
    l->ring = ring_ref(c->ring);
    hs_init(&l->hs, l->initiator, &l->ring->kr, &c->self, &c->hsout);
    ev_io_start(c->loop, &l->rio);
    ev_timer_stop(c->loop, &l->timer);
    ev_timer_set(&l->timer, c->hs_timeout, 0);
    ev_timer_start(c->loop, &l->timer);
    put_hs_out(l);
}

/* Another authenticated link (verdict sent, or up) to the node named. */
static struct link *find_peer(struct link_ctx *c, const char *name,
                              const struct link *except)
{
    for (struct link *o = c->head; o; o = o->next)
        if (o != except && (o->state == S_CONFIRM || o->state == S_UP) &&
            strcmp(o->peer.name, name) == 0)
            return o;
    return NULL;
}

/* Both sides said ACCEPT. */
static void go_up(struct link *l)
{
    struct link_ctx *c = l->ctx;

    if (strcmp(l->peer.name, c->self.name) == 0) {
        /* The peer should have refused (see handshake_done). */
        drop(l, LOG_ERROR, 0, "node name '%s' is this node's own name, and "
             "the peer accepted the link", l->peer.name);
        return;
    }
    for (struct link *o = c->head, *next; o; o = next) {
        next = o->next;
        /* Only the smaller-named node's ACCEPT gets here with an older
         * link up, and it accepts one link at a time: ours is stale. */
        if (o != l && o->state == S_UP && strcmp(o->peer.name, l->peer.name) == 0)
            drop(o, LOG_INFO, 1, "replaced by a newer link to the same node");
    }
    deliver_notes(c);               /* a replaced link's down before our up */
    if (l->state != S_CONFIRM)
        return;                     /* closed by a callback meanwhile */
    ev_timer_stop(c->loop, &l->timer);
    if (!l->initiator)
        c->pending_in--;
    l->state = S_UP;
    log_info("link", "link %s %s up: %s, incarnation %" PRIu64 ", protocol %u",
             direction(l), l->addr, l->peer.name, l->peer.incarnation,
             (unsigned)l->version);
    if (c->h.up)
        c->h.up(c->ud, l);
}

/* The handshake authenticated the peer: check its identity against our
 * links and send our verdict. */
static void handshake_done(struct link *l)
{
    struct link_ctx *c = l->ctx;
    char text[REASON_MAX];

    l->peer = l->hs.peer;
    l->peer.name[LINK_NAME_MAX] = '\0';
    l->version = l->hs.version;
    hs_clear(&l->hs);
    ring_unref(&l->ring);
    l->state = S_CONFIRM;

    const char *name = l->peer.name;
    if (strcmp(name, c->self.name) == 0 && !l->initiator) {
        /* Another process with our name (our own incarnation never gets
         * this far: the handshake refuses a reflection). The side that was
         * dialled refuses, so the one that came to it, the newcomer, is
         * told why; the dialler waits for that verdict. */
        log_warn("link", "node name '%s' is this node's own name; refused "
                 "the newcomer from %s", name, l->addr);
        snprintf(text, sizeof text, "node name '%s' is already in use in "
                 "the cluster", name);
        refuse(l, REFUSE_NAME, text);
        return;
    }
    struct link *o = find_peer(c, name, l);
    if (o && o->peer.incarnation != l->peer.incarnation &&
        strcmp(name, c->self.name) != 0) {
        log_warn("link", "node name '%s' is already in use by incarnation %"
                 PRIu64 " (%s); refused the newcomer from %s", name,
                 o->peer.incarnation, o->addr, l->addr);
        snprintf(text, sizeof text, "node name '%s' is already in use in "
                 "the cluster", name);
        refuse(l, REFUSE_NAME, text);
        return;
    }
    if (o && strcmp(c->self.name, name) < 0) {
        log_debug("link", "link %s %s: a second link to %s (a simultaneous "
                  "dial); keeping link %" PRIu64, direction(l), l->addr, name,
                  o->id);
        snprintf(text, sizeof text, "duplicate: already linked to '%s'", name);
        refuse(l, REFUSE_DUPLICATE, text);
        return;
    }
    if (put_sealed(l, T_ACCEPT, NULL, 0) < 0)
        drop(l, LOG_WARN, 0, "out of memory");
}

/* ---- reading ------------------------------------------------------------- */

static void on_hs_frame(struct link *l, const char *body, size_t len)
{
    struct link_ctx *c = l->ctx;
    char err[REASON_MAX];

    enum hs_result r = hs_recv(&l->hs, body, len, &c->hsout, &l->session,
                               err, sizeof err);
    buf_consume(&l->in, FRAME_HEADER + len);
    if (put_hs_out(l) < 0)
        return;
    if (r == HS_FAIL)
        drop(l, LOG_WARN, 0, "%s", err);
    else if (r == HS_DONE)
        handshake_done(l);
}

/* A line of text from the peer, fit for our log: at most 200 bytes, no
 * control characters (a newline would forge a log line). */
static void peer_text(char *out, size_t outlen, const char *p, size_t n)
{
    size_t i;

    if (n > 200)
        n = 200;
    for (i = 0; i < n && i + 1 < outlen; i++)
        out[i] = (unsigned char)p[i] < 0x20 || p[i] == 0x7f ? '?' : p[i];
    out[i] = '\0';
}

static void on_refuse(struct link *l, const char *p, size_t n)
{
    int kind = n > 0 ? (unsigned char)p[0] : 0;
    char text[208];

    peer_text(text, sizeof text, p + 1, n > 0 ? n - 1 : 0);
    if (kind == REFUSE_DUPLICATE)
        drop(l, LOG_DEBUG, 0, "duplicate: already linked to '%s'", l->peer.name);
    else
        drop(l, LOG_ERROR, 0, "refused by %s: %s", l->peer.name, text);
}

static void on_sealed_frame(struct link *l, const char *body, size_t len)
{
    struct link_ctx *c = l->ctx;
    struct buf *rx = &c->rx;

    buf_consume(rx, buf_avail(rx));
    int rc = session_open(&l->session, body, len, rx);
    buf_consume(&l->in, FRAME_HEADER + len);
    if (rc < 0) {
        drop(l, LOG_WARN, 0, "authentication failed on a frame");
        return;
    }
    const char *p = buf_head(rx);
    size_t n = buf_avail(rx);
    int type = n > 0 ? (unsigned char)p[0] : 0;
    p++;
    n = n > 0 ? n - 1 : 0;
    switch (type) {
    case T_MSG:
        if (l->state != S_UP) {
            drop(l, LOG_WARN, 0, "protocol error: a message before the link "
                 "was accepted");
        } else if (c->h.message) {
            char err[REASON_MAX];
            if (c->h.message(c->ud, l, p, n, err, sizeof err) < 0 &&
                l->state == S_UP)
                drop(l, LOG_WARN, 0, "malformed message (%s)", err);
        }
        break;
    case T_ACCEPT:
        if (l->state != S_CONFIRM)
            drop(l, LOG_WARN, 0, "protocol error: ACCEPT on a link already up");
        else
            go_up(l);
        break;
    case T_REFUSE:
        if (l->state != S_CONFIRM)
            drop(l, LOG_WARN, 0, "protocol error: REFUSE on a link already up");
        else
            on_refuse(l, p, n);
        break;
    case T_GOODBYE: {
        char text[208];
        peer_text(text, sizeof text, p, n);
        drop(l, LOG_WARN, 0, "closed by peer%s%s", n ? ": " : "", text);
        break;
    }
    default:
        drop(l, LOG_WARN, 0, "protocol error: unknown frame type %d", type);
        break;
    }
    buf_consume(rx, buf_avail(rx));
}

/* Whether this loop iteration has used up its LINK_DELIVER_MS; the first
 * call in an iteration starts the clock. */
static int delivery_spent(struct link_ctx *c)
{
    double now = clock_ms(CLOCK_MONOTONIC);
    unsigned int it = ev_iteration(c->loop);

    if (it != c->budget_iteration || c->deliver_until == 0) {
        c->budget_iteration = it;
        c->deliver_until = now + LINK_DELIVER_MS;
        return 0;
    }
    return now >= c->deliver_until;
}

/* Hands the complete frames in l->in to the handshake or the owner, in
 * order. Bounded: stops at the delivery budget and resumes in the next
 * iteration; unbounded for the last frames before the peer's EOF. */
static void process(struct link *l, int bounded)
{
    while (l->state == S_HANDSHAKE || l->state == S_CONFIRM || l->state == S_UP) {
        size_t max = l->state == S_HANDSHAKE ? LINK_PREAUTH_MAX : LINK_FRAME_MAX;
        const char *body;
        size_t len;
        enum frame_status st = frame_next(&l->in, max, &body, &len);
        if (st == FRAME_NEED_MORE)
            return;
        if (st == FRAME_READY && bounded && delivery_spent(l->ctx)) {
            /* Read nothing more until these are out, so that a fast
             * sender meets TCP's flow control instead of our memory. */
            ev_io_stop(l->ctx->loop, &l->rio);
            ev_timer_start(l->ctx->loop, &l->resume);   /* the next iteration */
            return;
        }
        if (st == FRAME_TOO_BIG) {
            drop(l, LOG_WARN, 0, "frame of %zu bytes over the %zu-byte limit",
                 header_len(&l->in), max);
            return;
        }
        l->st.frames_in++;
        if (l->state == S_HANDSHAKE)
            on_hs_frame(l, body, len);
        else
            on_sealed_frame(l, body, len);
    }
}

static void drop_eof(struct link *l)
{
    switch (l->state) {
    case S_UP:
        drop(l, LOG_INFO, 0, "closed by peer");
        break;
    case S_CONFIRM:
        drop(l, LOG_WARN, 0, "closed by the peer before it accepted the link");
        break;
    default:
        if (l->initiator)
            drop(l, LOG_WARN, 0, "closed by the peer during the handshake "
                 "(a wrong cluster key?)");
        else if (!l->got_bytes)
            drop(l, LOG_WARN, 0, "closed by the peer before the handshake");
        else
            drop(l, LOG_WARN, 0, "closed by the peer during the handshake");
        break;
    }
}

/* The frames the delivery budget left over, in order, before any new ones. */
static void on_resume(struct ev_loop *loop, ev_timer *w, int revents)
{
    struct link *l = (struct link *)((char *)w - offsetof(struct link, resume));

    l->busy++;
    process(l, 1);
    if (l->state != S_CLOSED && !ev_is_active(&l->resume))
        ev_io_start(loop, &l->rio);     /* caught up */
    l->busy--;
    link_maybe_free(l);
}

static void on_readable(struct ev_loop *loop, ev_io *w, int revents)
{
    (void)loop; (void)revents;
    struct link *l = (struct link *)w;
    size_t budget = LINK_READ_BUDGET;
    int eof = 0, err = 0;
    char chunk[64 << 10];

    l->busy++;
    while (budget > 0) {
        size_t want = budget < sizeof chunk ? budget : sizeof chunk;
        ssize_t n = recv(l->fd, chunk, want, 0);
        if (n > 0) {
            if (buf_append(&l->in, chunk, (size_t)n) < 0) {
                drop(l, LOG_WARN, 0, "out of memory");
                goto out;
            }
            l->got_bytes = 1;
            l->st.bytes_in += (uint64_t)n;
            budget -= (size_t)n;
            if ((size_t)n < want)
                break;
            continue;
        }
        if (n == 0) {
            eof = 1;
            break;
        }
        if (errno == EINTR)
            continue;
        if (errno != EAGAIN && errno != EWOULDBLOCK)
            err = errno;
        break;
    }
    /* Frames that arrived before an EOF still count (a REFUSE, a GOODBYE). */
    process(l, !eof && !err);
    if (l->state != S_CLOSED && err)
        drop_errno(l, err);
    else if (l->state != S_CLOSED && eof)
        drop_eof(l);
out:
    l->busy--;
    link_maybe_free(l);
}

/* ---- writing, connecting, deadlines ----------------------------------------- */

static void on_writable(struct ev_loop *loop, ev_io *w, int revents)
{
    (void)revents;
    struct link *l = (struct link *)((char *)w - offsetof(struct link, wio));

    if (l->state != S_CONNECTING) {
        flush(l);
        return;
    }
    int err = 0;
    socklen_t elen = sizeof err;
    if (getsockopt(l->fd, SOL_SOCKET, SO_ERROR, &err, &elen) < 0)
        err = errno;
    if (err) {
        drop(l, LOG_INFO, 0, "cannot connect: %s: %s", errno_name(err),
             strerror(err));
        return;
    }
    ev_io_stop(loop, &l->wio);
    start_handshake(l);
}

static void on_timer(struct ev_loop *loop, ev_timer *w, int revents)
{
    (void)loop; (void)revents;
    struct link *l = (struct link *)((char *)w - offsetof(struct link, timer));
    struct link_ctx *c = l->ctx;

    if (l->state == S_CONNECTING && l->connect_err)
        drop(l, LOG_INFO, 0, "cannot connect: %s: %s",
             errno_name(l->connect_err), strerror(l->connect_err));
    else if (l->state == S_CONNECTING)
        drop(l, LOG_INFO, 0, "cannot connect: timed out after %g s",
             c->dial_timeout);
    else
        drop(l, LOG_WARN, 0, "handshake timed out after %g s", c->hs_timeout);
}

/* Runs before the loop blocks: closed() calls first (they may queue
 * output), then every link's output in one write each. */
static void on_prepare(struct ev_loop *loop, ev_prepare *w, int revents)
{
    (void)revents;
    struct link_ctx *c = (struct link_ctx *)((char *)w -
                                             offsetof(struct link_ctx, prepare));
    do {
        deliver_notes(c);
        for (struct link *l = c->head, *next; l; l = next) {
            next = l->next;         /* flush may close and free l */
            if (l->dirty && l->state != S_CONNECTING)
                flush(l);
        }
    } while (c->notes);
    ev_prepare_stop(loop, w);
}

static void deliver_notes(struct link_ctx *c)
{
    while (c->notes) {
        struct link *l = c->notes;
        c->notes = l->note_next;
        if (c->notes == NULL)
            c->notes_tail = NULL;
        l->note_next = NULL;
        l->noted = 0;
        if (l->owner && c->h.closed) {
            l->busy++;
            c->h.closed(c->ud, l, l->end, l->end == LINK_END_QUIET ? NULL : l->reason);
            l->busy--;
        }
        link_maybe_free(l);
    }
}

/* Parses host:port and opens a non-blocking TCP socket of its family.
 * Returns the fd, or -1 with err set and errno kept. */
static int tcp_socket(const char *host, int port, int passive,
                      struct sockaddr_storage *ss, socklen_t *sl, char *err,
                      size_t errlen)
{
    if (parse_addr(host, port, passive, ss, sl, err, errlen) < 0)
        return -1;
    int fd = socket(ss->ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        int e = errno;
        set_error(err, errlen, "socket");
        errno = e;
    }
    return fd;
}

/* ---- listening ------------------------------------------------------------- */

/* Our own dial arriving at our own listener (a seed list that names this
 * node): both ends are ours, so the accepted end's remote address is the
 * dialled end's local one. The handshake would refuse it as a reflection,
 * with a warning on each end; this says what it is, once. */
static int self_connection(struct link_ctx *c, int fd, const char *addr)
{
    for (struct link *o = c->head; o; o = o->next) {
        if (o->initiator && o->state != S_UP && strcmp(o->laddr, addr) == 0) {
            close(fd);
            drop(o, LOG_INFO, 0, "connected to itself (%s is this node's "
                 "address)", o->addr);
            return 1;
        }
    }
    return 0;
}

static void incoming(struct link_ctx *c, int fd, const struct sockaddr *sa)
{
    char addr[ADDR_MAX];

    format_addr(sa, addr, sizeof addr);
    if (self_connection(c, fd, addr))
        return;
    if (c->pending_in >= LINK_MAX_PENDING) {
        log_warn("link", "link from %s: %d connections already in the "
                 "handshake, dropped", addr, LINK_MAX_PENDING);
        close(fd);
        return;
    }
    struct link *l = link_new(c, fd, 0);
    if (l == NULL) {
        log_warn("link", "link from %s: out of memory, dropped", addr);
        close(fd);
        return;
    }
    memcpy(l->addr, addr, sizeof addr);
    set_nodelay(fd);
    start_handshake(l);
}

static void on_accept(struct ev_loop *loop, ev_io *w, int revents)
{
    (void)revents;
    struct link_listener *ln = (struct link_listener *)w;

    for (int i = 0; i < LINK_ACCEPT_BURST; i++) {
        struct sockaddr_storage ss;
        socklen_t sl = sizeof ss;
        int fd = accept4(ln->fd, (struct sockaddr *)&ss, &sl,
                         SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd >= 0) {
            incoming(ln->ctx, fd, (struct sockaddr *)&ss);
            continue;
        }
        if (errno == EINTR || errno == ECONNABORTED)
            continue;
        if (errno == EAGAIN || errno == EWOULDBLOCK)
            return;
        /* Out of descriptors or memory: the connection stays queued and the
         * socket readable, so stop watching for a moment instead of
         * spinning on it. */
        log_warn("link", "accept on %s: %s; pausing accepts for %g s",
                 ln->addr, strerror(errno), LINK_ACCEPT_PAUSE);
        ev_io_stop(loop, &ln->io);
        ev_timer_set(&ln->pause, LINK_ACCEPT_PAUSE, 0);
        ev_timer_start(loop, &ln->pause);
        return;
    }
}

static void on_accept_pause(struct ev_loop *loop, ev_timer *w, int revents)
{
    (void)revents;
    struct link_listener *ln = (struct link_listener *)((char *)w -
                                   offsetof(struct link_listener, pause));
    ev_io_start(loop, &ln->io);
}

struct link_listener *link_listen(struct link_ctx *c, const char *host,
                                  int port, char *err, size_t errlen)
{
    struct sockaddr_storage ss;
    socklen_t sl;
    int one = 1;

    int fd = tcp_socket(host, port, 1, &ss, &sl, err, errlen);
    if (fd < 0)
        return NULL;
    char addr[ADDR_MAX];
    format_addr((struct sockaddr *)&ss, addr, sizeof addr);
    /* SO_REUSEADDR: a restarted agent can take its port back while the old
     * connections sit in TIME_WAIT. */
    if (setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one) < 0 ||
        bind(fd, (struct sockaddr *)&ss, sl) < 0 || listen(fd, SOMAXCONN) < 0) {
        int e = errno;
        close(fd);
        set_error(err, errlen, "listen on %s", addr);
        errno = e;
        return NULL;
    }
    sl = sizeof ss;
    if (getsockname(fd, (struct sockaddr *)&ss, &sl) < 0) {
        int e = errno;
        close(fd);
        set_error(err, errlen, "getsockname");
        errno = e;
        return NULL;
    }
    struct link_listener *ln = calloc(1, sizeof *ln);
    if (ln == NULL) {
        close(fd);
        set_error(err, errlen, "listen");
        errno = ENOMEM;
        return NULL;
    }
    ln->ctx = c;
    ln->fd = fd;
    format_addr((struct sockaddr *)&ss, ln->addr, sizeof ln->addr);
    ln->port = ss.ss_family == AF_INET6
                   ? ntohs(((struct sockaddr_in6 *)&ss)->sin6_port)
                   : ntohs(((struct sockaddr_in *)&ss)->sin_port);
    ev_io_init(&ln->io, on_accept, fd, EV_READ);
    ev_init(&ln->pause, on_accept_pause);
    ev_io_start(c->loop, &ln->io);
    ln->next = c->listeners;
    if (c->listeners)
        c->listeners->prev = ln;
    c->listeners = ln;
    log_info("link", "listening on %s", ln->addr);
    return ln;
}

int link_listener_port(const struct link_listener *ln) { return ln->port; }
const char *link_listener_addr(const struct link_listener *ln) { return ln->addr; }
int link_listener_open(const struct link_listener *ln) { return ln->fd >= 0; }

void link_listener_close(struct link_listener *ln)
{
    struct link_ctx *c = ln->ctx;

    if (ln->fd < 0)
        return;
    ev_io_stop(c->loop, &ln->io);
    ev_timer_stop(c->loop, &ln->pause);
    close(ln->fd);
    ln->fd = -1;
    if (ln->prev) ln->prev->next = ln->next; else c->listeners = ln->next;
    if (ln->next) ln->next->prev = ln->prev;
    ln->prev = ln->next = NULL;
}

void link_listener_free(struct link_listener *ln)
{
    if (ln) {
        link_listener_close(ln);
        free(ln);
    }
}

/* ---- dialling and the owner's calls ------------------------------------------ */

struct link *link_dial(struct link_ctx *c, const char *host, int port,
                       void *owner, char *err, size_t errlen)
{
    struct sockaddr_storage ss;
    socklen_t sl;

    int fd = tcp_socket(host, port, 0, &ss, &sl, err, errlen);
    if (fd < 0)
        return NULL;
    struct link *l = link_new(c, fd, 1);
    if (l == NULL) {
        close(fd);
        set_error(err, errlen, "dial");
        errno = ENOMEM;
        return NULL;
    }
    l->owner = owner;
    format_addr((struct sockaddr *)&ss, l->addr, sizeof l->addr);
    snprintf(l->host, sizeof l->host, "%s", host);
    l->port = port;
    set_nodelay(fd);
    /* Dial from our own address, so peers (and firewall rules) see the
     * address we listen on, not whatever the route prefers. */
    if (c->source_len > 0 && c->source.ss_family == ss.ss_family &&
        bind(fd, (struct sockaddr *)&c->source, c->source_len) < 0)
        log_warn("link", "cannot dial %s from our listen address: %s", host,
                 strerror(errno));
    int rc = connect(fd, (struct sockaddr *)&ss, sl);
    int e = errno;
    /* The kernel picks our end's address in connect(), even in progress. */
    struct sockaddr_storage me;
    socklen_t melen = sizeof me;
    if (getsockname(fd, (struct sockaddr *)&me, &melen) == 0)
        format_addr((struct sockaddr *)&me, l->laddr, sizeof l->laddr);
    if (rc == 0) {
        start_handshake(l);
        return l;
    }
    errno = e;
    if (errno == EINPROGRESS) {
        ev_io_start(c->loop, &l->wio);
        ev_timer_set(&l->timer, c->dial_timeout, 0);
    } else {
        /* Refused at once: say so from the loop, like every other failure,
         * so the owner sees one calling convention. */
        l->connect_err = errno;
        ev_timer_set(&l->timer, 0, 0);
    }
    ev_timer_start(c->loop, &l->timer);
    return l;
}

int link_send(struct link *l, const void *body, size_t len, char *err,
              size_t errlen)
{
    if (l->state != S_UP) {
        set_error(err, errlen, l->state == S_CLOSED ? "link closed"
                                                 : "link not up yet");
        errno = l->state == S_CLOSED ? EPIPE : ENOTCONN;
        return -1;
    }
    if (len > LINK_FRAME_MAX - SESSION_OVERHEAD - 1) {
        set_error(err, errlen, "message of %zu bytes over the %u-byte limit",
               len, LINK_FRAME_MAX - SESSION_OVERHEAD - 1);
        errno = EMSGSIZE;
        return -1;
    }
    if (put_sealed(l, T_MSG, body, len) < 0) {
        set_error(err, errlen, "queueing a message");
        return -1;
    }
    size_t queued = buf_avail(&l->out);
    if (queued > LINK_MAX_QUEUE) {
        drop(l, LOG_WARN, 0, "peer too slow: %zu MiB queued", queued >> 20);
        set_error(err, errlen, "the peer reads too slowly (%zu MiB queued); "
               "link dropped", queued >> 20);
        errno = ENOBUFS;
        return -1;
    }
    return 0;
}

void link_close(struct link *l, const char *why)
{
    if (l->state == S_CLOSED)
        return;
    l->local = 1;
    if (l->state == S_UP)
        put_sealed(l, T_GOODBYE, why, strlen(why));
    drop(l, LOG_INFO, 1, "closed locally%s%s", *why ? ": " : "", why);
}

void link_release(struct link *l)
{
    l->owner = NULL;
    /* An up link is anchored by its owner, so this is the end of the Lua
     * state: the agent is going away. */
    if (l->state == S_UP)
        put_sealed(l, T_GOODBYE, "shutting down", 13);
    link_shut(l, 1);
    link_maybe_free(l);         /* a pending note frees it when delivered */
}

void *link_owner(const struct link *l) { return l->owner; }
void link_set_owner(struct link *l, void *owner) { l->owner = owner; }
uint64_t link_id(const struct link *l) { return l->id; }
const char *link_addr(const struct link *l) { return l->addr; }
int link_initiator(const struct link *l) { return l->initiator; }
const char *link_host(const struct link *l) { return l->initiator ? l->host : NULL; }
int link_port(const struct link *l) { return l->port; }

enum link_state link_state(const struct link *l)
{
    switch (l->state) {
    case S_CONNECTING: return LINK_CONNECTING;
    case S_HANDSHAKE:
    case S_CONFIRM: return LINK_HANDSHAKE;
    case S_UP: return LINK_UP;
    default: return LINK_CLOSED;
    }
}

const char *link_peer(const struct link *l)
{
    return l->peer.name[0] ? l->peer.name : NULL;
}

uint64_t link_peer_incarnation(const struct link *l)
{
    return l->peer.incarnation;
}

void link_get_stats(const struct link *l, struct link_stats *st)
{
    *st = l->st;
    if (l->state != S_CLOSED)
        st->queued = buf_avail(&l->out);
}

struct link *link_first_up(struct link_ctx *c)
{
    struct link *l = c->head;
    while (l && l->state != S_UP)
        l = l->next;
    return l;
}

struct link *link_next_up(struct link *l)
{
    do
        l = l->next;
    while (l && l->state != S_UP);
    return l;
}

/* ---- the context ------------------------------------------------------------- */

struct link_ctx *link_ctx_new(struct ev_loop *loop,
                              const struct link_handlers *h, void *ud)
{
    struct link_ctx *c = calloc(1, sizeof *c);

    if (c == NULL)
        return NULL;
    c->loop = loop;
    c->h = *h;
    c->ud = ud;
    buf_init(&c->tx);
    buf_init(&c->rx);
    buf_init(&c->hsout);
    ev_prepare_init(&c->prepare, on_prepare);
    return c;
}

int link_ctx_ready(const struct link_ctx *c) { return c->ready; }

int link_ctx_busy(const struct link_ctx *c)
{
    return c->head != NULL || c->listeners != NULL;
}

static struct ring *load_ring(const char *path, char *err, size_t errlen)
{
    struct ring *r = calloc(1, sizeof *r);

    if (r == NULL) {
        set_error(err, errlen, "out of memory");
        return NULL;
    }
    if (keyring_load(&r->kr, path, err, errlen) < 0) {
        free(r);
        return NULL;
    }
    r->refs = 1;
    return r;
}

int link_ctx_setup(struct link_ctx *c, const struct link_setup *s, char *err,
                   size_t errlen)
{
    if (link_ctx_busy(c)) {
        set_error(err, errlen, "links or listeners are open: shut down first");
        return -1;
    }
    if (crypto_setup() < 0) {
        set_error(err, errlen, "libsodium failed to initialise");
        return -1;
    }
    struct ring *r = load_ring(s->keyfile, err, errlen);
    if (r == NULL)
        return -1;
    char *keyfile = strdup(s->keyfile);
    if (keyfile == NULL) {
        ring_unref(&r);
        set_error(err, errlen, "out of memory");
        return -1;
    }
    ring_unref(&c->ring);
    c->ring = r;
    free(c->keyfile);
    c->keyfile = keyfile;
    memset(&c->self, 0, sizeof c->self);
    snprintf(c->self.name, sizeof c->self.name, "%s", s->name);
    c->self.incarnation = s->incarnation;
    c->hs_timeout = s->handshake_timeout;
    c->dial_timeout = s->dial_timeout;
    c->source_len = 0;
    if (s->source && *s->source &&
        parse_addr(s->source, 0, 0, &c->source, &c->source_len, err, errlen) < 0)
        return -1;
    c->ready = 1;
    return 0;
}

int link_ctx_reload_keys(struct link_ctx *c, char *err, size_t errlen)
{
    if (c->keyfile == NULL) {
        set_error(err, errlen, "no key file loaded yet");
        return -1;
    }
    struct ring *r = load_ring(c->keyfile, err, errlen);
    if (r == NULL)
        return -1;
    ring_unref(&c->ring);
    c->ring = r;
    return 0;
}

void link_ctx_shutdown(struct link_ctx *c)
{
    c->ready = 0;
    while (c->listeners)
        link_listener_close(c->listeners);
    /* Closed links whose closed() is still due: now, quietly. */
    while (c->notes) {
        struct link *l = c->notes;
        c->notes = l->note_next;
        l->note_next = NULL;
        l->noted = 0;
        if (l->owner && c->h.closed)
            c->h.closed(c->ud, l, LINK_END_QUIET, NULL);
        link_maybe_free(l);
    }
    c->notes_tail = NULL;
    while (c->head) {
        struct link *l = c->head;
        if (l->state == S_UP)       /* best effort: the loop may not run again */
            put_sealed(l, T_GOODBYE, "shutting down", 13);
        link_shut(l, 1);
        if (l->owner && c->h.closed)
            c->h.closed(c->ud, l, LINK_END_QUIET, NULL);
        link_maybe_free(l);
    }
    ev_prepare_stop(c->loop, &c->prepare);
}

void link_ctx_free(struct link_ctx *c)
{
    if (c == NULL)
        return;
    link_ctx_shutdown(c);
    while (c->lingerers)
        linger_end(c->lingerers);
    ring_unref(&c->ring);
    free(c->keyfile);
    buf_free(&c->tx);
    buf_free(&c->rx);
    buf_free(&c->hsout);
    free(c);
}
