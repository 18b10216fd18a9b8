/* blockd's read-only NBD server.
 *
 * Layout of this file:
 *   1. protocol constants and the checked parsers (nbd_parse_*),
 *   2. the session: a pure state machine, no I/O of its own.  It is fed
 *      the client's bytes in pieces of any size and sends its replies
 *      through an emit callback; it reads the export through the blockdev.
 *      The server and the fuzz target drive the same code,
 *   3. the server: one listening socket, an accept thread, one thread per
 *      client that moves bytes between its socket and its session.
 *
 * Protocol coverage (doc/proto.md of the reference implementation):
 *   - fixed newstyle handshake only; handshake flags FIXED_NEWSTYLE and
 *     NO_ZEROES; a client flag we do not know, or a client that does not
 *     set C_FIXED_NEWSTYLE, ends the connection;
 *   - options GO, INFO (INFO_EXPORT always; INFO_NAME, INFO_DESCRIPTION on
 *     request; INFO_BLOCK_SIZE always, as the spec allows), LIST, ABORT,
 *     EXPORT_NAME; everything else (STRUCTURED_REPLY, STARTTLS, meta
 *     contexts, ...) gets NBD_REP_ERR_UNSUP, so only simple replies exist;
 *   - transmission flags HAS_FLAGS | READ_ONLY | SEND_FLUSH | CAN_MULTI_CONN
 *     | SEND_CACHE; READ, FLUSH (a no-op), CACHE (reads the range through
 *     the blockdev to fill the lazy image's caches), DISC; WRITE, TRIM and
 *     WRITE_ZEROES get NBD_EPERM (a WRITE's payload is read and dropped);
 *     anything else NBD_EINVAL.
 *
 * Limits: option data at most NBD_MAX_OPTION_DATA (64 KiB), checked before
 * any allocation; export names at most 4096 bytes (the spec's limit);
 * block sizes advertised as min 1, preferred 4096, max NBD_MAX_BLOCK
 * (32 MiB, qemu's buffer size).  A READ is answered from one buffer of its
 * length (so a read error can still be reported as NBD_EIO): the worst
 * case is NBD_MAX_BLOCK of memory per client.  At most NBD_MAX_CLIENTS (64)
 * connections at once; more are closed at once with a log line.  A client
 * must make handshake progress every NBD_HANDSHAKE_TIMEOUT (30) seconds;
 * once in transmission it may idle.  Requests on one connection are
 * answered in order; connections run in parallel (CAN_MULTI_CONN).
 *
 * Access (sock.c): NBD has no authentication, so who may connect is decided
 * by the socket.  A unix socket is 0600 (0660 with the configured group) and
 * each client's credentials are checked on accept; a tcp address that is
 * not loopback is refused unless the caller allows it explicitly.
 */
#include "internal.h"
#include "common/bytes.h"

#include <arpa/inet.h>
#include <errno.h>
#include <inttypes.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <sys/un.h>
#include <unistd.h>

/* ---- 1. protocol constants and parsers ----------------------------------- */

#define NBD_MAGIC UINT64_C(0x4e42444d41474943)	/* "NBDMAGIC" */
#define NBD_IHAVEOPT UINT64_C(0x49484156454f5054) /* "IHAVEOPT" */
#define NBD_REP_MAGIC UINT64_C(0x0003e889045565a9)
#define NBD_REQUEST_MAGIC UINT32_C(0x25609513)
#define NBD_SIMPLE_REPLY_MAGIC UINT32_C(0x67446698)

#define NBD_FLAG_FIXED_NEWSTYLE (1u << 0)
#define NBD_FLAG_NO_ZEROES (1u << 1)
#define NBD_FLAG_C_FIXED_NEWSTYLE (1u << 0)
#define NBD_FLAG_C_NO_ZEROES (1u << 1)

#define NBD_FLAG_HAS_FLAGS (1u << 0)
#define NBD_FLAG_READ_ONLY (1u << 1)
#define NBD_FLAG_SEND_FLUSH (1u << 2)
#define NBD_FLAG_CAN_MULTI_CONN (1u << 8)
#define NBD_FLAG_SEND_CACHE (1u << 10)
#define NBD_TRANSMISSION_FLAGS                                                                                         \
	(NBD_FLAG_HAS_FLAGS | NBD_FLAG_READ_ONLY | NBD_FLAG_SEND_FLUSH | NBD_FLAG_CAN_MULTI_CONN | NBD_FLAG_SEND_CACHE)

#define NBD_OPT_EXPORT_NAME 1
#define NBD_OPT_ABORT 2
#define NBD_OPT_LIST 3
#define NBD_OPT_INFO 6
#define NBD_OPT_GO 7

#define NBD_REP_ACK 1u
#define NBD_REP_SERVER 2u
#define NBD_REP_INFO 3u
#define NBD_REP_ERR(n) ((1u << 31) | (n))
#define NBD_REP_ERR_UNSUP NBD_REP_ERR(1)
#define NBD_REP_ERR_INVALID NBD_REP_ERR(3)
#define NBD_REP_ERR_UNKNOWN NBD_REP_ERR(6)

#define NBD_INFO_EXPORT 0
#define NBD_INFO_NAME 1
#define NBD_INFO_DESCRIPTION 2
#define NBD_INFO_BLOCK_SIZE 3

#define NBD_CMD_READ 0
#define NBD_CMD_WRITE 1
#define NBD_CMD_DISC 2
#define NBD_CMD_FLUSH 3
#define NBD_CMD_TRIM 4
#define NBD_CMD_CACHE 5
#define NBD_CMD_WRITE_ZEROES 6

#define NBD_CMD_FLAG_FUA (1u << 0)

#define NBD_EPERM 1u
#define NBD_EIO 5u
#define NBD_EINVAL 22u

#define NBD_OPTION_HEADER_LEN 16
#define NBD_REQUEST_LEN 28
#define NBD_SIMPLE_REPLY_LEN 16
#define NBD_MAX_OPTION_DATA (64u * 1024)
#define NBD_MAX_STRING 4096
#define NBD_MAX_INFO_REQS 64
#define NBD_MIN_BLOCK 1u
#define NBD_PREF_BLOCK 4096u
#define NBD_MAX_BLOCK (32u * 1024 * 1024)
#define NBD_KEEP_BUF (1u * 1024 * 1024) /* read buffers up to this size are reused */
#define NBD_CACHE_PIECE (256u * 1024)

int nbd_parse_request(const uint8_t *buf, size_t len, struct nbd_request *out)
{
	if (len < NBD_REQUEST_LEN)
		return -EAGAIN;
	struct byte_cursor c = cur_init(buf, NBD_REQUEST_LEN);
	if (cur_be32(&c) != NBD_REQUEST_MAGIC)
		return -EPROTO;
	out->flags = cur_be16(&c);
	out->type = cur_be16(&c);
	out->cookie = cur_be64(&c);
	out->offset = cur_be64(&c);
	out->length = cur_be32(&c);
	return 0;
}

/* The option data length is checked against NBD_MAX_OPTION_DATA here, so a
 * caller may allocate |out->length| bytes. */
int nbd_parse_option_header(const uint8_t *buf, size_t len, struct nbd_option *out)
{
	if (len < NBD_OPTION_HEADER_LEN)
		return -EAGAIN;
	struct byte_cursor c = cur_init(buf, NBD_OPTION_HEADER_LEN);
	if (cur_be64(&c) != NBD_IHAVEOPT)
		return -EPROTO;
	uint32_t option = cur_be32(&c), length = cur_be32(&c);
	if (length > NBD_MAX_OPTION_DATA)
		return -EPROTO;
	out->option = option;
	out->length = length;
	return 0;
}

/* |<data, len>| is the whole option data: u32 name length, name, u16 count,
 * count u16 info types.  Anything short, trailing or too long is -EPROTO
 * (never -EAGAIN: the option framing already delivered every byte).  The
 * name is copied NUL-terminated into |name| (it must fit with its NUL and
 * contain none); up to |info_cap| requests go to |info_reqs|, more is
 * -EPROTO. */
int nbd_parse_go(const uint8_t *data, size_t len, char *name, size_t name_cap, uint16_t *info_reqs,
		 size_t info_cap, size_t *n_info)
{
	struct byte_cursor c = cur_init(data, len);
	uint32_t name_len = cur_be32(&c);
	if (name_len > NBD_MAX_STRING || (size_t)name_len >= name_cap)
		return -EPROTO;
	const uint8_t *name_p = cur_take(&c, name_len);
	uint16_t n = cur_be16(&c);
	if (!cur_ok(&c) || memchr(name_p, 0, name_len) || n > info_cap || cur_left(&c) != (size_t)n * 2)
		return -EPROTO;
	memcpy(name, name_p, name_len);
	name[name_len] = '\0';
	for (uint16_t i = 0; i < n; i++)
		info_reqs[i] = cur_be16(&c);
	*n_info = n;
	return 0;
}

/* ---- 2. the session state machine (declared in internal.h) ----------------- */

enum nbd_state { ST_CLIENT_FLAGS, ST_OPT_HEADER, ST_OPT_DATA, ST_REQUEST, ST_DISCARD, ST_DONE };

struct nbd_session {
	const struct nbd_export *exports;
	size_t n_exports;
	char *peer;
	nbd_emit_fn emit;
	void *emit_ctx;

	enum nbd_state state;
	bool no_zeroes;
	const struct nbd_export *exp; /* chosen export, in transmission */

	uint8_t *in;	/* partial message: header, or option data */
	size_t in_len;	/* bytes in |in| */
	size_t need;	/* bytes the current state wants in |in| */
	struct nbd_option opt;
	struct nbd_request discard_req; /* the WRITE whose payload is dropped */
	uint64_t discard_left;

	uint8_t *rbuf;	/* reply header + read data */
	size_t rbuf_cap;
};

static int violation(struct nbd_session *s, const char *why)
{
	log_warn("nbd client %s: protocol violation: %s; closing the connection", s->peer, why);
	s->state = ST_DONE;
	return -EPROTO;
}

static void set_state(struct nbd_session *s, enum nbd_state st)
{
	s->state = st;
	s->in_len = 0;
	switch (st) {
	case ST_CLIENT_FLAGS:
		s->need = 4;
		break;
	case ST_OPT_HEADER:
		s->need = NBD_OPTION_HEADER_LEN;
		break;
	case ST_REQUEST:
		s->need = NBD_REQUEST_LEN;
		break;
	default:
		s->need = 0;
		break;
	}
}

static int opt_reply(struct nbd_session *s, uint32_t option, uint32_t type, const void *data, size_t len)
{
	uint8_t h[20];
	put_be64(h, NBD_REP_MAGIC);
	put_be32(h + 8, option);
	put_be32(h + 12, type);
	put_be32(h + 16, (uint32_t)len);
	int r = s->emit(s->emit_ctx, h, sizeof(h));
	if (r == 0 && len)
		r = s->emit(s->emit_ctx, data, len);
	return r;
}

static int opt_error(struct nbd_session *s, uint32_t option, uint32_t type, const char *msg)
{
	log_info("nbd client %s: option %u refused: %s", s->peer, option, msg);
	return opt_reply(s, option, type, msg, strlen(msg));
}

/* Find the export called |<name, len>|.  "" names the export called "" if
 * there is one, else the first export (the default). */
static const struct nbd_export *find_export(const struct nbd_session *s, const char *name, size_t len)
{
	for (size_t i = 0; i < s->n_exports; i++) {
		const char *n = s->exports[i].name;
		if (strlen(n) == len && (len == 0 || memcmp(n, name, len) == 0))
			return &s->exports[i];
	}
	if (len == 0 && s->n_exports > 0)
		return &s->exports[0];
	return NULL;
}

static int info_reply(struct nbd_session *s, uint32_t option, uint16_t type, const void *payload, size_t len)
{
	uint8_t buf[2 + NBD_MAX_STRING];
	put_be16(buf, type);
	memcpy(buf + 2, payload, len);
	return opt_reply(s, option, NBD_REP_INFO, buf, 2 + len);
}

static int do_info_go(struct nbd_session *s, uint32_t option, const uint8_t *data, size_t len)
{
	char name[NBD_MAX_STRING + 1];
	uint16_t reqs[NBD_MAX_INFO_REQS];
	size_t n_reqs = 0;
	if (nbd_parse_go(data, len, name, sizeof(name), reqs, NBD_MAX_INFO_REQS, &n_reqs) < 0)
		return opt_error(s, option, NBD_REP_ERR_INVALID, "malformed NBD_OPT_INFO/NBD_OPT_GO data");
	const struct nbd_export *e = find_export(s, name, strlen(name));
	if (!e) {
		char msg[NBD_MAX_STRING];
		snprintf(msg, sizeof(msg), "unknown export '%.200s'", name);
		return opt_error(s, option, NBD_REP_ERR_UNKNOWN, msg);
	}

	uint8_t ex[10];
	put_be64(ex, e->dev->size);
	put_be16(ex + 8, NBD_TRANSMISSION_FLAGS);
	int r = info_reply(s, option, NBD_INFO_EXPORT, ex, sizeof(ex));
	bool sent_name = false, sent_desc = false;
	for (size_t i = 0; r == 0 && i < n_reqs; i++) {
		if (reqs[i] == NBD_INFO_NAME && !sent_name) {
			sent_name = true;
			r = info_reply(s, option, NBD_INFO_NAME, e->name, strlen(e->name));
		} else if (reqs[i] == NBD_INFO_DESCRIPTION && !sent_desc && e->description) {
			sent_desc = true;
			r = info_reply(s, option, NBD_INFO_DESCRIPTION, e->description, strlen(e->description));
		}
	}
	if (r == 0) {
		uint8_t bs[12];
		put_be32(bs, NBD_MIN_BLOCK);
		put_be32(bs + 4, NBD_PREF_BLOCK);
		put_be32(bs + 8, NBD_MAX_BLOCK);
		r = info_reply(s, option, NBD_INFO_BLOCK_SIZE, bs, sizeof(bs));
	}
	if (r == 0)
		r = opt_reply(s, option, NBD_REP_ACK, NULL, 0);
	if (r == 0 && option == NBD_OPT_GO) {
		s->exp = e;
		log_debug("nbd client %s: serving export '%s'", s->peer, e->name);
		set_state(s, ST_REQUEST);
	}
	return r;
}

static int do_option(struct nbd_session *s, const uint8_t *data, size_t len)
{
	uint32_t option = s->opt.option;
	set_state(s, ST_OPT_HEADER); /* the default next state */
	switch (option) {
	case NBD_OPT_EXPORT_NAME: {
		const struct nbd_export *e = len <= NBD_MAX_STRING ? find_export(s, (const char *)data, len) : NULL;
		if (!e || (len > 0 && memchr(data, 0, len)))
			/* The spec leaves no way to refuse but hanging up. */
			return violation(s, "NBD_OPT_EXPORT_NAME for an unknown export");
		uint8_t rep[10 + 124];
		memset(rep, 0, sizeof(rep));
		put_be64(rep, e->dev->size);
		put_be16(rep + 8, NBD_TRANSMISSION_FLAGS);
		int r = s->emit(s->emit_ctx, rep, s->no_zeroes ? 10 : sizeof(rep));
		if (r == 0) {
			s->exp = e;
			set_state(s, ST_REQUEST);
		}
		return r;
	}
	case NBD_OPT_ABORT: {
		int r = opt_reply(s, option, NBD_REP_ACK, NULL, 0);
		set_state(s, ST_DONE);
		return r ? r : 1;
	}
	case NBD_OPT_LIST: {
		if (len != 0)
			return opt_error(s, option, NBD_REP_ERR_INVALID, "NBD_OPT_LIST carries no data");
		int r = 0;
		for (size_t i = 0; r == 0 && i < s->n_exports; i++) {
			uint8_t buf[4 + NBD_MAX_STRING];
			size_t n = strlen(s->exports[i].name);
			put_be32(buf, (uint32_t)n);
			memcpy(buf + 4, s->exports[i].name, n);
			r = opt_reply(s, option, NBD_REP_SERVER, buf, 4 + n);
		}
		return r ? r : opt_reply(s, option, NBD_REP_ACK, NULL, 0);
	}
	case NBD_OPT_INFO:
	case NBD_OPT_GO:
		return do_info_go(s, option, data, len);
	default:
		return opt_error(s, option, NBD_REP_ERR_UNSUP, "option not supported by this server");
	}
}

static int simple_reply(struct nbd_session *s, uint64_t cookie, uint32_t error)
{
	uint8_t h[NBD_SIMPLE_REPLY_LEN];
	put_be32(h, NBD_SIMPLE_REPLY_MAGIC);
	put_be32(h + 4, error);
	put_be64(h + 8, cookie);
	return s->emit(s->emit_ctx, h, sizeof(h));
}

static bool in_range(const struct nbd_session *s, const struct nbd_request *q)
{
	uint64_t end;
	return ck_add_u64(q->offset, q->length, &end) && end <= s->exp->dev->size;
}

/* A buffer of at least |len| bytes in s->rbuf; large ones are dropped after
 * use by drop_big_rbuf(). */
static int want_rbuf(struct nbd_session *s, size_t len)
{
	if (s->rbuf_cap >= len)
		return 0;
	uint8_t *b = malloc(len);
	if (!b)
		return -ENOMEM;
	free(s->rbuf);
	s->rbuf = b;
	s->rbuf_cap = len;
	return 0;
}

static void drop_big_rbuf(struct nbd_session *s)
{
	if (s->rbuf_cap > NBD_SIMPLE_REPLY_LEN + NBD_KEEP_BUF) {
		free(s->rbuf);
		s->rbuf = NULL;
		s->rbuf_cap = 0;
	}
}

static int do_read(struct nbd_session *s, const struct nbd_request *q)
{
	if (q->flags & ~NBD_CMD_FLAG_FUA)
		return simple_reply(s, q->cookie, NBD_EINVAL);
	if (q->length > NBD_MAX_BLOCK || !in_range(s, q)) {
		log_info("nbd client %s: read of %u bytes at %" PRIu64 " is out of range", s->peer, q->length,
			 q->offset);
		return simple_reply(s, q->cookie, NBD_EINVAL);
	}
	size_t total = NBD_SIMPLE_REPLY_LEN + (size_t)q->length;
	if (want_rbuf(s, total) < 0) {
		log_err("nbd client %s: no memory for a read of %u bytes", s->peer, q->length);
		return simple_reply(s, q->cookie, NBD_EIO);
	}
	int r = q->length ? blockdev_read(s->exp->dev, q->offset, s->rbuf + NBD_SIMPLE_REPLY_LEN, q->length) : 0;
	if (r < 0) {
		log_warn("nbd client %s: read of %u bytes at %" PRIu64 " from export '%s': %s", s->peer, q->length,
			 q->offset, s->exp->name, strerror(-r));
		drop_big_rbuf(s);
		return simple_reply(s, q->cookie, NBD_EIO);
	}
	put_be32(s->rbuf, NBD_SIMPLE_REPLY_MAGIC);
	put_be32(s->rbuf + 4, 0);
	put_be64(s->rbuf + 8, q->cookie);
	r = s->emit(s->emit_ctx, s->rbuf, total);
	drop_big_rbuf(s);
	return r;
}

/* NBD_CMD_CACHE: read the range through the blockdev so a lazy image
 * fetches it; the data goes nowhere. */
static int do_cache(struct nbd_session *s, const struct nbd_request *q)
{
	if (q->flags || !in_range(s, q))
		return simple_reply(s, q->cookie, NBD_EINVAL);
	size_t piece = q->length < NBD_CACHE_PIECE ? q->length : NBD_CACHE_PIECE;
	if (piece && want_rbuf(s, piece) < 0)
		return simple_reply(s, q->cookie, NBD_EIO);
	for (uint64_t done = 0; done < q->length; done += piece) {
		size_t n = q->length - done < piece ? (size_t)(q->length - done) : piece;
		int r = blockdev_read(s->exp->dev, q->offset + done, s->rbuf, n);
		if (r < 0) {
			log_warn("nbd client %s: cache of %u bytes at %" PRIu64 ": %s", s->peer, q->length,
				 q->offset, strerror(-r));
			return simple_reply(s, q->cookie, NBD_EIO);
		}
	}
	return simple_reply(s, q->cookie, 0);
}

static int do_request(struct nbd_session *s, const uint8_t *hdr)
{
	struct nbd_request q;
	if (nbd_parse_request(hdr, NBD_REQUEST_LEN, &q) < 0)
		return violation(s, "bad request magic");
	set_state(s, ST_REQUEST);
	switch (q.type) {
	case NBD_CMD_READ:
		return do_read(s, &q);
	case NBD_CMD_WRITE:
		if (q.length == 0)
			return simple_reply(s, q.cookie, NBD_EPERM);
		/* Drop the payload, then refuse: the stream stays in step. */
		s->discard_req = q;
		s->discard_left = q.length;
		s->state = ST_DISCARD;
		return 0;
	case NBD_CMD_TRIM:
	case NBD_CMD_WRITE_ZEROES:
		return simple_reply(s, q.cookie, NBD_EPERM);
	case NBD_CMD_FLUSH:
		return simple_reply(s, q.cookie, 0);
	case NBD_CMD_CACHE:
		return do_cache(s, &q);
	case NBD_CMD_DISC:
		log_debug("nbd client %s: disconnect", s->peer);
		set_state(s, ST_DONE);
		return 1;
	default:
		return simple_reply(s, q.cookie, NBD_EINVAL);
	}
}

/* The state's message is complete in s->in. */
static int step(struct nbd_session *s)
{
	switch (s->state) {
	case ST_CLIENT_FLAGS: {
		uint32_t f = get_be32(s->in);
		if (f & ~(uint32_t)(NBD_FLAG_C_FIXED_NEWSTYLE | NBD_FLAG_C_NO_ZEROES))
			return violation(s, "unknown client flags");
		if (!(f & NBD_FLAG_C_FIXED_NEWSTYLE))
			return violation(s, "client does not speak fixed newstyle");
		s->no_zeroes = f & NBD_FLAG_C_NO_ZEROES;
		set_state(s, ST_OPT_HEADER);
		return 0;
	}
	case ST_OPT_HEADER: {
		int r = nbd_parse_option_header(s->in, s->in_len, &s->opt);
		if (r < 0)
			return violation(s, get_be64(s->in) != NBD_IHAVEOPT ? "bad option magic"
									: "option data longer than 64 KiB");
		if (s->opt.length == 0)
			return do_option(s, NULL, 0);
		s->state = ST_OPT_DATA;
		s->in_len = 0;
		s->need = s->opt.length;
		return 0;
	}
	case ST_OPT_DATA:
		return do_option(s, s->in, s->in_len);
	case ST_REQUEST:
		return do_request(s, s->in);
	default:
		return violation(s, "internal: bad state");
	}
}

int nbd_session_feed(struct nbd_session *s, const uint8_t *buf, size_t len)
{
	while (len > 0) {
		if (s->state == ST_DONE)
			return 1;
		if (s->state == ST_DISCARD) {
			size_t n = s->discard_left < len ? (size_t)s->discard_left : len;
			s->discard_left -= n;
			buf += n;
			len -= n;
			if (s->discard_left == 0) {
				set_state(s, ST_REQUEST);
				int r = simple_reply(s, s->discard_req.cookie, NBD_EPERM);
				if (r)
					return r;
			}
			continue;
		}
		size_t n = s->need - s->in_len;
		if (n > len)
			n = len;
		memcpy(s->in + s->in_len, buf, n);
		s->in_len += n;
		buf += n;
		len -= n;
		if (s->in_len == s->need) {
			int r = step(s);
			if (r)
				return r;
		}
	}
	return s->state == ST_DONE ? 1 : 0;
}

/* True once the session is in the transmission phase. */
static bool session_transmitting(const struct nbd_session *s)
{
	return s->state == ST_REQUEST || s->state == ST_DISCARD;
}

int nbd_session_new(const struct nbd_export *exports, size_t n_exports, const char *peer, nbd_emit_fn emit,
		    void *emit_ctx, struct nbd_session **out)
{
	struct nbd_session *s = calloc(1, sizeof(*s));
	if (!s)
		return -ENOMEM;
	s->exports = exports;
	s->n_exports = n_exports;
	s->emit = emit;
	s->emit_ctx = emit_ctx;
	s->peer = strdup(peer ? peer : "?");
	s->in = malloc(NBD_MAX_OPTION_DATA > NBD_REQUEST_LEN ? NBD_MAX_OPTION_DATA : NBD_REQUEST_LEN);
	if (!s->peer || !s->in) {
		nbd_session_free(s);
		return -ENOMEM;
	}
	set_state(s, ST_CLIENT_FLAGS);
	uint8_t greet[18];
	put_be64(greet, NBD_MAGIC);
	put_be64(greet + 8, NBD_IHAVEOPT);
	put_be16(greet + 16, NBD_FLAG_FIXED_NEWSTYLE | NBD_FLAG_NO_ZEROES);
	int r = emit(emit_ctx, greet, sizeof(greet));
	if (r < 0) {
		nbd_session_free(s);
		return r;
	}
	*out = s;
	return 0;
}

void nbd_session_free(struct nbd_session *s)
{
	if (!s)
		return;
	free(s->in);
	free(s->rbuf);
	free(s->peer);
	free(s);
}

/* ---- 3. the server ------------------------------------------------------------ */

#define NBD_MAX_CLIENTS 64
#define NBD_RECV_BUF (64u * 1024)
#define NBD_HANDSHAKE_TIMEOUT 30 /* seconds */

struct nbd_client {
	struct nbd_server *srv;
	pthread_t thread;
	int fd;			/* closed by whoever joins the thread */
	bool used;		/* slot holds a thread that is not joined yet */
	bool finished;		/* the thread has returned (under srv->lock) */
	unsigned long id;
};

struct nbd_server {
	struct nbd_export *exports; /* copies of the names */
	size_t n_exports;
	char *address;		/* as bound, e.g. tcp:127.0.0.1:40123 */
	char *unix_path;	/* to unlink on stop, NULL for tcp */
	dev_t unix_dev;
	ino_t unix_ino;
	struct sock_access access;
	bool tcp, remote;	/* listening on tcp; on an address other hosts reach */
	bool failure_logged;	/* start: the listen step logged why it failed */
	struct sock_refusals refusals; /* accept thread only */
	int listen_fd;
	pthread_t accept_thread;
	pthread_mutex_t lock;
	bool stopping;
	unsigned long next_id;
	struct nbd_client clients[NBD_MAX_CLIENTS];
};

static int send_all(void *ctx, const void *buf, size_t len)
{
	int fd = *(const int *)ctx;
	const uint8_t *p = buf;
	while (len > 0) {
		ssize_t n = send(fd, p, len, MSG_NOSIGNAL);
		if (n < 0) {
			if (errno == EINTR)
				continue;
			return -errno;
		}
		p += n;
		len -= (size_t)n;
	}
	return 0;
}

static void *client_main(void *arg)
{
	struct nbd_client *c = arg;
	struct nbd_server *srv = c->srv;
	char peer[64];
	snprintf(peer, sizeof(peer), "#%lu", c->id);
	uint8_t *buf = malloc(NBD_RECV_BUF);
	struct nbd_session *s = NULL;
	int r = buf ? nbd_session_new(srv->exports, srv->n_exports, peer, send_all, &c->fd, &s) : -ENOMEM;
	if (r < 0)
		log_msg(r == -EPIPE || r == -ECONNRESET ? LOG_INFO : LOG_WARN, LOG_COMPONENT,
			"nbd client %s on %s: cannot start the session: %s", peer, srv->address, strerror(-r));
	/* A client gets NBD_HANDSHAKE_TIMEOUT seconds between bytes until it
	 * reaches transmission, so idle connections cannot hold every slot. */
	bool handshake = true;
	struct timeval tv = { .tv_sec = NBD_HANDSHAKE_TIMEOUT };
	setsockopt(c->fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
	while (r == 0) {
		ssize_t n = recv(c->fd, buf, NBD_RECV_BUF, 0);
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0 && handshake && (errno == EAGAIN || errno == EWOULDBLOCK)) {
			log_warn("nbd client %s: no handshake progress in %d s; closing the connection", peer,
				 NBD_HANDSHAKE_TIMEOUT);
			break;
		}
		if (n < 0) {
			log_info("nbd client %s: receive: %s", peer, strerror(errno));
			break;
		}
		if (n == 0) {
			log_debug("nbd client %s: end of stream", peer);
			break;
		}
		r = nbd_session_feed(s, buf, (size_t)n);
		if (r < 0 && r != -EPROTO)
			log_info("nbd client %s: send: %s", peer, strerror(-r));
		if (r == 0 && handshake && session_transmitting(s)) {
			handshake = false;
			tv.tv_sec = 0;
			setsockopt(c->fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
		}
	}
	nbd_session_free(s);
	free(buf);
	/* Tell the peer we are done now; the fd itself is closed by the
	 * thread that joins this one, so stop() never shuts down a reused fd. */
	shutdown(c->fd, SHUT_RDWR);
	pthread_mutex_lock(&srv->lock);
	c->finished = true;
	pthread_mutex_unlock(&srv->lock);
	return NULL;
}

/* Join finished client threads and free their slots.  Called by the accept
 * thread only (and by stop() after the accept thread is gone). */
static void reap_clients(struct nbd_server *srv, bool all)
{
	for (size_t i = 0; i < NBD_MAX_CLIENTS; i++) {
		struct nbd_client *c = &srv->clients[i];
		pthread_mutex_lock(&srv->lock);
		bool join = c->used && (all || c->finished);
		pthread_mutex_unlock(&srv->lock);
		if (!join)
			continue;
		pthread_join(c->thread, NULL);
		close(c->fd);
		pthread_mutex_lock(&srv->lock);
		c->used = false;
		c->finished = false;
		c->fd = -1;
		pthread_mutex_unlock(&srv->lock);
	}
}

static void *accept_main(void *arg)
{
	struct nbd_server *srv = arg;
	for (;;) {
		int fd = accept4(srv->listen_fd, NULL, NULL, SOCK_CLOEXEC);
		int err = errno;
		pthread_mutex_lock(&srv->lock);
		bool stopping = srv->stopping;
		pthread_mutex_unlock(&srv->lock);
		if (stopping) {
			if (fd >= 0)
				close(fd);
			break;
		}
		if (fd < 0) {
			if (err == EINTR || err == ECONNABORTED)
				continue;
			if (err == EMFILE || err == ENFILE || err == ENOBUFS || err == ENOMEM) {
				log_err("nbd server %s: accept: %s; retrying", srv->address, strerror(err));
				usleep(100 * 1000);
				reap_clients(srv, false);
				continue;
			}
			log_err("nbd server %s: accept: %s; no longer accepting", srv->address, strerror(err));
			break;
		}
		reap_clients(srv, false);
		if (srv->unix_path) {
			struct ucred cr = { .pid = 0 };
			int pr = sock_peer_check(fd, &srv->access, &cr);
			if (pr < 0) {
				char what[160];
				snprintf(what, sizeof(what), "nbd server %.140s", srv->address);
				sock_log_refusal(&srv->refusals, what, &cr, &srv->access, pr);
				close(fd);
				continue;
			}
		}
		int one = 1;
		setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one)); /* fails harmlessly on unix */

		pthread_mutex_lock(&srv->lock);
		struct nbd_client *c = NULL;
		for (size_t i = 0; i < NBD_MAX_CLIENTS && !c; i++)
			if (!srv->clients[i].used)
				c = &srv->clients[i];
		if (c) {
			c->used = true;
			c->finished = false;
			c->fd = fd;
			c->srv = srv;
			c->id = ++srv->next_id;
		}
		pthread_mutex_unlock(&srv->lock);
		if (!c) {
			log_warn("nbd server %s: %d clients already connected; refusing another", srv->address,
				 NBD_MAX_CLIENTS);
			close(fd);
			continue;
		}
		log_debug("nbd server %s: client #%lu connected", srv->address, c->id);
		int r = pthread_create(&c->thread, NULL, client_main, c);
		if (r != 0) {
			log_err("nbd server %s: start a client thread: %s", srv->address, strerror(r));
			close(fd);
			pthread_mutex_lock(&srv->lock);
			c->used = false;
			c->fd = -1;
			pthread_mutex_unlock(&srv->lock);
		}
	}
	return NULL;
}

/* Listen on a unix socket at |path| with the server's mode and group
 * (sock.c); a socket file nobody listens on is stale and replaced. */
static int listen_unix(struct nbd_server *srv, const char *path)
{
	int r = sock_listen_unix(path, &srv->access, 64, "nbd server", &srv->listen_fd, &srv->unix_dev,
				 &srv->unix_ino);
	if (r < 0) {
		srv->failure_logged = r != -ENOMEM;
		return r;
	}
	srv->unix_path = strdup(path);
	srv->address = xasprintf("unix:%s", path);
	if (!srv->unix_path || !srv->address)
		return -ENOMEM;
	return 0;
}

static int listen_tcp(struct nbd_server *srv, const char *address)
{
	const char *hostport = address; /* |address| stays whole for log lines */
	const char *colon = strrchr(hostport, ':');
	if (!colon || colon == hostport)
		return -EINVAL;
	char host[256];
	size_t hlen = (size_t)(colon - hostport);
	if (hostport[0] == '[' && hlen >= 2 && hostport[hlen - 1] == ']') {
		hostport++;
		hlen -= 2;
	}
	if (hlen == 0 || hlen >= sizeof(host))
		return -EINVAL;
	memcpy(host, hostport, hlen);
	host[hlen] = '\0';
	const char *port = colon + 1;
	if (!*port || strlen(port) > 5 || strspn(port, "0123456789") != strlen(port) || atoi(port) > 65535)
		return -EINVAL;

	struct addrinfo hints = { .ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM,
				  .ai_flags = AI_NUMERICSERV | AI_PASSIVE };
	struct addrinfo *ai = NULL;
	int g = getaddrinfo(host, port, &hints, &ai);
	if (g != 0) {
		log_err("nbd server tcp:%s: resolve %s: %s", address, host, gai_strerror(g));
		srv->failure_logged = true;
		return -EADDRNOTAVAIL;
	}
	srv->tcp = true;
	srv->remote = !sock_addr_is_loopback(ai->ai_addr, ai->ai_addrlen);
	if (srv->remote && !srv->access.allow_remote) {
		log_err("nbd server tcp:%s: not a loopback address, so other hosts could connect, and NBD has no "
			"authentication or encryption: anyone who reaches it reads every attached image; use "
			"unix:/path or tcp:127.0.0.1:PORT, or pass --nbd-allow-remote to serve it anyway",
			address);
		freeaddrinfo(ai);
		srv->failure_logged = true;
		return -EPERM;
	}
	int fd = socket(ai->ai_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
	int one = 1;
	int err = 0;
	if (fd < 0 || setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one)) < 0 ||
	    bind(fd, ai->ai_addr, ai->ai_addrlen) < 0)
		err = -errno;
	freeaddrinfo(ai);
	if (err) {
		log_err("nbd server tcp:%s: cannot bind: %s%s", address, strerror(-err),
			err == -EADDRINUSE ? " (another server has the port; choose another, or port 0 for any)" : "");
		srv->failure_logged = true;
		if (fd >= 0)
			close(fd);
		return err;
	}
	srv->listen_fd = fd;
	struct sockaddr_storage ss;
	socklen_t sl = sizeof(ss);
	char h[INET6_ADDRSTRLEN], p[8];
	if (getsockname(fd, (struct sockaddr *)&ss, &sl) < 0)
		return -errno;
	if ((g = getnameinfo((struct sockaddr *)&ss, sl, h, sizeof(h), p, sizeof(p), NI_NUMERICHOST | NI_NUMERICSERV)))
		return -EINVAL;
	srv->address = ss.ss_family == AF_INET6 ? xasprintf("tcp:[%s]:%s", h, p) : xasprintf("tcp:%s:%s", h, p);
	return srv->address ? 0 : -ENOMEM;
}

static void server_free(struct nbd_server *s)
{
	if (s->listen_fd >= 0)
		close(s->listen_fd);
	if (s->unix_path) { /* set once the socket is in place */
		sock_unlink_if_ours(s->unix_path, s->unix_dev, s->unix_ino);
		free(s->unix_path);
	}
	for (size_t i = 0; s->exports && i < s->n_exports; i++) {
		free((char *)s->exports[i].name);
		free((char *)s->exports[i].description);
	}
	free(s->exports);
	free(s->address);
	pthread_mutex_destroy(&s->lock);
	free(s);
}

int nbd_server_start(const char *address, const struct nbd_export *exports, size_t n_exports,
		     const struct sock_access *acc, struct nbd_server **out)
{
	if (!address || !exports || n_exports == 0) {
		log_err("nbd server: no address or no exports");
		return -EINVAL;
	}
	for (size_t i = 0; i < n_exports; i++)
		if (!exports[i].name || strlen(exports[i].name) > NBD_MAX_STRING || !exports[i].dev ||
		    !exports[i].dev->read_at ||
		    (exports[i].description && strlen(exports[i].description) > NBD_MAX_STRING)) {
			log_err("nbd server %s: export %zu is incomplete or its name is too long", address, i);
			return -EINVAL;
		}
	struct nbd_server *s = calloc(1, sizeof(*s));
	if (!s)
		return -ENOMEM;
	s->listen_fd = -1;
	if (acc)
		s->access = *acc;
	pthread_mutex_init(&s->lock, NULL);
	for (size_t i = 0; i < NBD_MAX_CLIENTS; i++)
		s->clients[i].fd = -1;
	int r = 0;
	s->exports = calloc(n_exports, sizeof(*s->exports));
	if (!s->exports)
		r = -ENOMEM;
	for (size_t i = 0; r == 0 && i < n_exports; i++) {
		s->n_exports = i + 1;
		s->exports[i].dev = exports[i].dev;
		s->exports[i].name = strdup(exports[i].name);
		s->exports[i].description = exports[i].description ? strdup(exports[i].description) : NULL;
		if (!s->exports[i].name || (exports[i].description && !s->exports[i].description))
			r = -ENOMEM;
	}
	if (r == 0) {
		if (strncmp(address, "unix:", 5) == 0)
			r = listen_unix(s, address + 5);
		else if (strncmp(address, "tcp:", 4) == 0)
			r = listen_tcp(s, address + 4);
		else
			r = -EINVAL;
	}
	if (r == 0 && s->tcp && listen(s->listen_fd, 64) < 0) /* a unix socket listens already */
		r = -errno;
	if (r == 0) {
		/* Log before the first thread exists: log_msg()'s lazy setup
		 * is not thread-safe on its first call. */
		log_info("nbd server listening on %s", s->address);
		int e = pthread_create(&s->accept_thread, NULL, accept_main, s);
		if (e)
			r = -e;
	}
	if (r < 0 && !s->failure_logged)
		log_err("nbd server %s: cannot listen: %s%s", address, strerror(-r),
			r == -EINVAL ? " (addresses look like unix:/path or tcp:127.0.0.1:10809)" : "");
	if (r < 0) {
		server_free(s);
		return r;
	}
	*out = s;
	return 0;
}

const char *nbd_server_address(const struct nbd_server *s) { return s->address; }

bool nbd_server_is_tcp(const struct nbd_server *s, bool *out_remote)
{
	*out_remote = s->remote;
	return s->tcp;
}

void nbd_server_stop(struct nbd_server *s)
{
	if (!s)
		return;
	pthread_mutex_lock(&s->lock);
	s->stopping = true;
	pthread_mutex_unlock(&s->lock);
	/* On Linux, shutdown() of a listening socket wakes accept() up. */
	shutdown(s->listen_fd, SHUT_RDWR);
	pthread_join(s->accept_thread, NULL);
	/* Only this thread changes the slots now; their threads only set
	 * |finished|.  Wake every client out of recv()/send(). */
	pthread_mutex_lock(&s->lock);
	for (size_t i = 0; i < NBD_MAX_CLIENTS; i++)
		if (s->clients[i].used)
			shutdown(s->clients[i].fd, SHUT_RDWR);
	pthread_mutex_unlock(&s->lock);
	reap_clients(s, true);
	log_info("nbd server %s stopped", s->address);
	server_free(s);
}
