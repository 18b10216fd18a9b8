/* A byte relay between pairs of stream sockets, for the guest init.
 *
 * The init listens for the Runtime API on 127.0.0.1 inside the VM and carries
 * each connection accepted there over a vsock stream of its own to the host
 * (vmm/guest/protocol.h, 'P').  This joins the two.  It is a piece of the
 * init's poll loop, not a thread: the caller asks for the descriptors to
 * poll, polls them together with its own, and hands the results back.
 *
 * Each connection joins two sockets, A (the accepted client) and B (the
 * stream to the host, possibly still connecting):
 *  - bytes pass unchanged in both directions through one buffer of
 *    GUEST_RELAY_BUF bytes per direction: a side that does not read stops the
 *    other side's reads; memory never grows;
 *  - an end of stream from one side (its shutdown(SHUT_WR) or close) is
 *    passed on as shutdown(SHUT_WR) to the other once the buffered bytes are
 *    written, and the other direction keeps flowing (half-close);
 *  - the connection ends, both sockets closed, once both directions have
 *    ended; or at once when either side fails (a reset, a write to a side that
 *    is gone, B's connect refused), which the peers see as a reset or an end
 *    of stream.
 *
 * Restore.  After the VM is restored from a snapshot every vsock stream (B)
 * is gone, while the clients' TCP connections (A) inside the guest are not.
 * With a way to open streams (guest_relay_set_reopen()), the relay keeps, for
 * each connection, the bytes its client sent since the last byte that came
 * back from the host (at most GUEST_RELAY_REPLAY_MAX), and
 * guest_relay_restart() gives a connection whose request has had no answer
 * yet (say the runtime's long-poll for its next invocation, pending when the
 * snapshot was taken) a new stream and sends those bytes again, byte for
 * byte, then the client's end of stream if it had sent one.  A connection
 * that was answered in part (or in full: the relay cannot tell an idle
 * keep-alive connection from one in the middle of a response) or whose
 * request was longer than the bound is reset, as any broken connection is.
 * A client that sends several requests before reading the answers
 * (pipelining) gets only the bytes since the last answer byte replayed: HTTP
 * runtimes do not pipeline.
 *
 * libc only: the static guest init links it.  Nothing here logs.
 */
#ifndef KINDLING_GUEST_RELAY_H
#define KINDLING_GUEST_RELAY_H

#include <poll.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define GUEST_RELAY_BUF (64u << 10) /* per direction and connection */
#define GUEST_RELAY_MAX 32	    /* connections at once */
#define GUEST_RELAY_POLLFDS (2 * GUEST_RELAY_MAX)
#define GUEST_RELAY_REPLAY_MAX GUEST_RELAY_BUF /* client bytes kept for a replay, per connection */

/* One direction: bytes read from one socket, not yet written to the other. */
struct guest_relay_half {
	uint8_t *buf; /* GUEST_RELAY_BUF bytes */
	size_t off, len; /* the buffered bytes are buf[off, off + len) */
	bool eof;	 /* the source ended its stream */
	bool shut;	 /* ... and that was passed on with shutdown(SHUT_WR) */
};

struct guest_relay_conn {
	int fd[2];			 /* A, B */
	bool connecting;		 /* B's non-blocking connect is under way */
	bool dead;			 /* ended; removed at the end of guest_relay_service() */
	struct guest_relay_half half[2]; /* half[i]: from fd[i] to fd[1 - i] */
	int pf[2];			 /* where fd[i] is in the last poll set, or -1 */
	/* For guest_relay_restart(), with a reopen callback only: */
	uint8_t *replay;   /* GUEST_RELAY_REPLAY_MAX bytes: what A sent since the last byte from B */
	size_t replay_len;
	bool replay_over;  /* A sent more than GUEST_RELAY_REPLAY_MAX since then */
	bool answered;	   /* a byte came from B after A's last byte */
};

/* Open a new stream to the host for a replay: a connected (or, with
 * |*out_connecting|, a non-blocking connect under way) socket in |*out_fd|,
 * which the relay takes.  Returns 0 or -errno. */
typedef int (*guest_relay_reopen_fn)(void *arg, int *out_fd, bool *out_connecting);

/* Every connection; one per init, on its stack or in its state. */
struct guest_relay {
	struct guest_relay_conn conns[GUEST_RELAY_MAX];
	size_t n;
	uint64_t bytes[2]; /* written so far over all connections: A to B, B to A */
	uint64_t ended, failed; /* connections ended cleanly, and cut short */
	uint64_t replayed;	/* connections given a new stream by guest_relay_restart() */
	guest_relay_reopen_fn reopen; /* NULL: no replays */
	void *reopen_arg;
};

/* An empty relay. */
void guest_relay_init(struct guest_relay *r);

/* Join |a| and |b|, taking both descriptors (they become non-blocking);
 * |b_connecting| says B's non-blocking connect() returned EINPROGRESS, so the
 * relay waits for it (and ends the connection if it fails) before writing to
 * B; A's bytes are buffered meanwhile.  Returns 0; -EBUSY when
 * GUEST_RELAY_MAX connections are open, -ENOMEM: then both are closed. */
int guest_relay_add(struct guest_relay *r, int a, int b, bool b_connecting);

/* Let guest_relay_restart() open new streams with |fn(arg)|; call before the
 * first guest_relay_add(), as only connections added afterwards keep what a
 * replay needs. */
void guest_relay_set_reopen(struct guest_relay *r, guest_relay_reopen_fn fn, void *arg);

/* The host side of every connection is gone (the VM was restored): close
 * each B.  A connection that no byte came back to since its client last sent
 * (and whose bytes since then fit GUEST_RELAY_REPLAY_MAX) gets a new stream
 * from the reopen callback, and those bytes, and then the client's end of
 * stream if it sent one, are written to it as if new; any other connection,
 * or one the callback fails for, is reset: the client's socket is closed
 * with SO_LINGER 0 (a TCP client sees ECONNRESET).  Without a reopen
 * callback every connection is reset.  Call it before guest_relay_service()
 * sees the broken streams, which would end them as failed; the poll set from
 * before the call is stale. */
void guest_relay_restart(struct guest_relay *r);

/* True when no other connection fits. */
bool guest_relay_full(const struct guest_relay *r);

/* The connections open now. */
size_t guest_relay_count(const struct guest_relay *r);

/* True while some bytes wait in a buffer, or an end of stream waits to be
 * passed on. */
bool guest_relay_pending(const struct guest_relay *r);

/* Write the descriptors to poll into |pf| (room for GUEST_RELAY_POLLFDS);
 * returns how many.  Only descriptors the relay can act on are listed, so a
 * hung-up socket it waits on for nothing never wakes poll.  Call
 * guest_relay_service() with the same |pf| after poll() and before anything
 * else changes |r|. */
size_t guest_relay_poll_set(struct guest_relay *r, struct pollfd *pf);

/* After poll(): move what can be moved without blocking, pass on ends of
 * stream, end the connections that are done or failed. */
void guest_relay_service(struct guest_relay *r, const struct pollfd *pf);

/* End every connection (both sockets closed; what is buffered is dropped).
 * |r| is empty afterwards and may be used again. */
void guest_relay_cleanup(struct guest_relay *r);

#endif
