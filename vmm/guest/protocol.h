/* The invocation channel between a micro-VM's guest init and the host.
 *
 * The guest init (vmm/guest/init.c) connects AF_VSOCK to the host (CID 2) on
 * port GUEST_PROTO_PORT; kvmm hands the connection to the unix socket
 * "{uds_path}_1024", where the host side listens.  Both directions carry
 * frames:
 *
 *   1 byte type | 4 bytes payload length, little-endian (<= GUEST_FRAME_MAX) | payload
 *
 *   host -> guest   'A' one argv element    'E' one "K=V"     'W' working dir (absolute)
 *                   'U' OCI user ("uid", "uid:gid", "name", "name:group")
 *                   'P' the Runtime API endpoint: uint16 LE TCP port, uint32 LE
 *                       vsock port (neither 0, the vsock port not 0xffffffff)
 *                   'G' go: the invocation is complete (empty)
 *                   'S' restored: uint64 LE restore generation (not 0), then
 *                       32 bytes of fresh host randomness (not all zero)
 *   guest -> host   'O' stdout bytes        'R' stderr bytes
 *                   'F' a failure message from the init (text)
 *                   'X' exit: int32 LE exit code (-1 if killed by a signal), int32 LE signal
 *
 * After 'X' the init syncs and powers the VM off.
 *
 * Restore.  A VM running the init and its command may be snapshotted and
 * restored, any number of times.  Host-side vsock connections are not part
 * of a snapshot: after a restore the VMM resets the vsock transport and every
 * guest socket breaks.  When the channel breaks while the command runs, the
 * init reconnects to port GUEST_PROTO_PORT (backoff as guest_backoff_next()
 * says) and waits for 'S', which the host sends as the first frame on the new
 * connection; then it reseeds the kernel's RNG with the 32 bytes, records the
 * generation for the workload, runs the image's after-restore hook, and goes
 * on sending 'O', 'R' and 'X' there.  'S' is the only frame the host sends
 * after 'G': once, as the first frame of each connection the init makes after
 * a break (never on the first connection), and each one's generation is above
 * the last one the init applied (guest_restore_take()).  vmm/guest/init.c
 * says what the init does with it.
 * The host side of a restore: listen on "{uds_path}_1024" before the VM
 * resumes, accept the init's new connection, send 'S' (guest_restore_send())
 * and read frames from it as from the first one.
 *
 * With 'P', the init listens on 127.0.0.1:TCP-port inside the guest before it
 * starts the command, and carries each connection accepted there over a vsock
 * stream of its own that it opens to the host (CID 2) on the vsock port:
 * kvmm connects that to the host's unix socket "{uds_path}_{vsock port}".
 * Bytes pass unchanged both ways, a half-close is passed on, and every such
 * connection ends when the command does (vmm/guest/relay.h).
 *
 * This file is the one codec both ends use: plain C and libc only, so the
 * static guest init links it too.  Nothing here logs; failures come back as
 * -errno with a static reason string for the caller's message.
 */
#ifndef KINDLING_GUEST_PROTOCOL_H
#define KINDLING_GUEST_PROTOCOL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define GUEST_PROTO_HOST_CID 2u
#define GUEST_PROTO_PORT 1024u
#define GUEST_FRAME_HDR_LEN 5
#define GUEST_FRAME_MAX (1u << 20)
#define GUEST_EXIT_LEN 8
#define GUEST_API_LEN 6
#define GUEST_SEED_LEN 32
#define GUEST_RESTORE_LEN (8 + GUEST_SEED_LEN)

enum guest_frame_type {
	GUEST_FRAME_ARG = 'A',
	GUEST_FRAME_ENV = 'E',
	GUEST_FRAME_WORKDIR = 'W',
	GUEST_FRAME_USER = 'U',
	GUEST_FRAME_API = 'P',
	GUEST_FRAME_GO = 'G',
	GUEST_FRAME_RESTORED = 'S',
	GUEST_FRAME_STDOUT = 'O',
	GUEST_FRAME_STDERR = 'R',
	GUEST_FRAME_FAIL = 'F',
	GUEST_FRAME_EXIT = 'X',
};

/* Which way frames flow: each end decodes only the types sent to it. */
enum guest_direction {
	GUEST_DIR_HOST_TO_GUEST, /* A E W U P G S */
	GUEST_DIR_GUEST_TO_HOST, /* O R F X */
};

/* One decoded frame.  |payload| belongs to the decoder and stays valid until
 * the next guest_decoder_feed() or guest_decoder_cleanup(). */
struct guest_frame {
	uint8_t type;
	const uint8_t *payload;
	uint32_t len;
};

/* Check one frame against the rules of |dir|: a known type for that
 * direction, |len| <= GUEST_FRAME_MAX, and the payload rules: A, E, W, U and
 * F are text without NUL bytes; E has a '=' after a non-empty name; W starts
 * with '/'; U and F are not empty; G is empty; X is exactly GUEST_EXIT_LEN; P
 * is exactly GUEST_API_LEN with ports guest_api_decode() accepts; S is
 * exactly GUEST_RESTORE_LEN with a payload guest_restore_decode() accepts; O
 * and R are not empty.  Returns 0, -EPROTO (|*why| says what is wrong; |why|
 * may be NULL) or -EMSGSIZE. */
int guest_frame_check(enum guest_direction dir, uint8_t type, const uint8_t *payload, size_t len, const char **why);

/* The 5-byte header for a frame of |type| and |len| bytes into |out|. */
void guest_frame_header(uint8_t out[GUEST_FRAME_HDR_LEN], uint8_t type, uint32_t len);

/* Write one whole frame to |fd| (blocking; short writes and EINTR retried).
 * The frame is not checked against a direction; |len| must be at most
 * GUEST_FRAME_MAX.  Returns 0, -EMSGSIZE, or -errno from write (-EPIPE when
 * the peer is gone, if SIGPIPE is ignored). */
int guest_frame_send(int fd, uint8_t type, const void *payload, size_t len);

/* A strict incremental decoder: bytes go in as they arrive, in any split;
 * whole, checked frames come out. */
struct guest_decoder {
	enum guest_direction dir;
	uint8_t hdr[GUEST_FRAME_HDR_LEN];
	size_t hdr_have;
	uint8_t type;
	uint32_t len;
	uint8_t *buf; /* the payload being collected, malloc'd, grown to the largest frame */
	size_t cap, have;
	int err;	   /* sticky: once a stream is bad, it stays bad */
	const char *why;   /* what was wrong with it */
};

/* Start |d| for frames travelling in |dir|. */
void guest_decoder_init(struct guest_decoder *d, enum guest_direction dir);

/* Free what |d| holds; |d| may be fed again only after guest_decoder_init(). */
void guest_decoder_cleanup(struct guest_decoder *d);

/* Consume bytes from |<p, len>| up to the end of at most one frame; |*used|
 * says how many were taken.  Returns
 *   1        a frame is complete in |*out| (call again with the rest of |p|);
 *   0        all of |p| was consumed and no frame is complete yet;
 *   -EPROTO  an unknown type for the direction or a payload that breaks its
 *            type's rules (guest_decoder_error() says which);
 *   -EMSGSIZE a length over GUEST_FRAME_MAX;
 *   -ENOMEM.
 * The type and length are checked as soon as the header is in, before any
 * payload is buffered.  After an error every later call returns it again. */
int guest_decoder_feed(struct guest_decoder *d, const uint8_t *p, size_t len, size_t *used, struct guest_frame *out);

/* True when |d| is between frames, so an end of stream here is clean. */
bool guest_decoder_idle(const struct guest_decoder *d);

/* Why the stream was refused; "" if it was not. */
const char *guest_decoder_error(const struct guest_decoder *d);

/* The 'X' payload: |code| (the exit status, or -1 after a signal) and
 * |sig| (the signal, 0 if none). */
void guest_exit_encode(uint8_t out[GUEST_EXIT_LEN], int32_t code, int32_t sig);

/* Parse an 'X' payload.  Returns 0, or -EPROTO when |len| is not
 * GUEST_EXIT_LEN. */
int guest_exit_decode(const uint8_t *payload, size_t len, int32_t *code, int32_t *sig);

/* Where the Runtime API endpoint lives: the TCP port inside the guest and the
 * vsock port on the host.  tcp_port 0 means there is none. */
struct guest_api {
	uint16_t tcp_port;
	uint32_t vsock_port;
};

/* The 'P' payload for |api|. */
void guest_api_encode(uint8_t out[GUEST_API_LEN], const struct guest_api *api);

/* Parse a 'P' payload.  Returns 0, or -EPROTO when |len| is not
 * GUEST_API_LEN, the TCP port is 0, or the vsock port is 0 or 0xffffffff
 * (VMADDR_PORT_ANY, nothing one can connect to). */
int guest_api_decode(const uint8_t *payload, size_t len, struct guest_api *api);

/* What 'S' carries: which restore this is, and randomness for the guest's
 * kernel RNG, fresh for every restore, so that two VMs restored from one
 * snapshot do not share random state. */
struct guest_restore {
	uint64_t generation; /* 1 for the first restore; grows with every later one */
	uint8_t seed[GUEST_SEED_LEN];
};

/* The 'S' payload for |rs|. */
void guest_restore_encode(uint8_t out[GUEST_RESTORE_LEN], const struct guest_restore *rs);

/* Parse an 'S' payload into |*rs|.  Returns 0, or -EPROTO when |len| is not
 * GUEST_RESTORE_LEN, the generation is 0 (that is "never restored"), or the
 * seed is all zero bytes (a host that did not fill it). */
int guest_restore_decode(const uint8_t *payload, size_t len, struct guest_restore *rs);

/* The guest's side, once 'G' has arrived: take one decoded host -> guest
 * frame |f| while the command runs.  |*generation| is the last generation
 * applied (0 before any restore); on success it becomes the frame's, and
 * |*rs| holds the restore to apply.  Returns 0, or -EPROTO for anything but
 * 'S', an 'S' guest_restore_decode() refuses, or a generation not above
 * |*generation| (|*generation| unchanged); |*why| (if |why| is not NULL) says
 * what was wrong. */
int guest_restore_take(uint64_t *generation, const struct guest_frame *f, struct guest_restore *rs, const char **why);

/* The host's side: send 'S' for |rs| to |fd|, the init's new connection
 * after a restore.  Returns 0, -EINVAL when guest_restore_decode() would
 * refuse |rs| (generation 0, an all-zero seed), or what guest_frame_send()
 * returns. */
int guest_restore_send(int fd, const struct guest_restore *rs);

/* The init's reconnect schedule after its channel broke: waits that double
 * from GUEST_RECONNECT_FIRST_MS up to GUEST_RECONNECT_STEP_MS each, until they
 * add up to GUEST_RECONNECT_TOTAL_MS.  Only the sleeps are counted: each
 * connect attempt is bounded by the vsock connect timeout on top. */
#define GUEST_RECONNECT_FIRST_MS 10u
#define GUEST_RECONNECT_STEP_MS 500u
#define GUEST_RECONNECT_TOTAL_MS 10000u

struct guest_backoff {
	unsigned attempts; /* waits handed out so far */
	unsigned waited_ms; /* their sum */
};

/* A fresh schedule, for one outage. */
void guest_backoff_init(struct guest_backoff *b);

/* After a failed attempt: how long to wait before the next one, in
 * |*delay_ms| (the last wait is cut so the sum is exactly
 * GUEST_RECONNECT_TOTAL_MS).  Returns 0, or -ETIMEDOUT when the waits already
 * add up to the total: give up. */
int guest_backoff_next(struct guest_backoff *b, unsigned *delay_ms);

/* ---- the invocation, as the init collects it ------------------------------------------------------------------ */

#define GUEST_INV_MAX_ARGS 4096
#define GUEST_INV_MAX_ENV 4096
#define GUEST_INV_MAX_BYTES (8u << 20) /* all strings together */

/* What to run.  argv and envp are NULL-terminated; all strings malloc'd. */
struct guest_invocation {
	char **argv;
	size_t argc;
	char **envp;
	size_t envc;
	char *workdir; /* NULL = the image's "/" */
	char *user;    /* NULL = root */
	struct guest_api api; /* api.tcp_port 0: no Runtime API endpoint */
	size_t bytes;
	bool complete; /* 'G' arrived */
};

/* An empty invocation. */
void guest_invocation_init(struct guest_invocation *inv);

/* Free every string; |inv| is empty again. */
void guest_invocation_cleanup(struct guest_invocation *inv);

/* Add one host -> guest frame (already checked by the decoder).  Returns 1
 * when 'G' completed the invocation, 0 when more frames are wanted, -EPROTO
 * for a second 'W', 'U' or 'P', any frame after 'G', 'G' before any 'A', a
 * 'P' guest_api_decode() refuses, an 'S' (only a running command is restored:
 * see guest_restore_take()), or a guest -> host type; -E2BIG past the GUEST_INV_MAX_* limits; -ENOMEM.
 * |*why| (if |why| is not NULL) says what was wrong. */
int guest_invocation_add(struct guest_invocation *inv, const struct guest_frame *f, const char **why);

/* Send an invocation to |fd|: one 'A' per element of the NULL-terminated
 * |argv| (at least one), one 'E' per element of |envp| (may be NULL), 'W'
 * and 'U' when not NULL, 'P' when |api| is not NULL, then 'G'.  Returns 0,
 * -EINVAL (no argv, or an element or port the guest would refuse), or what
 * guest_frame_send() returns. */
int guest_invocation_send(int fd, const char *const *argv, const char *const *envp, const char *workdir,
			  const char *user, const struct guest_api *api);

#endif
