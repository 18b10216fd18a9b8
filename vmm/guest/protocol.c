/* The invocation channel's codec (see protocol.h).  libc only: the static
 * guest init links this file as it is. */
#include "vmm/guest/protocol.h"
#include "common/bytes.h"
#include "common/common.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/uio.h>
#include <unistd.h>

static bool type_known(enum guest_direction dir, uint8_t type)
{
	if (dir == GUEST_DIR_HOST_TO_GUEST)
		return type == GUEST_FRAME_ARG || type == GUEST_FRAME_ENV || type == GUEST_FRAME_WORKDIR ||
		       type == GUEST_FRAME_USER || type == GUEST_FRAME_API || type == GUEST_FRAME_GO ||
		       type == GUEST_FRAME_RESTORED;
	return type == GUEST_FRAME_STDOUT || type == GUEST_FRAME_STDERR || type == GUEST_FRAME_FAIL ||
	       type == GUEST_FRAME_EXIT;
}

static bool is_text(uint8_t type)
{
	return type == GUEST_FRAME_ARG || type == GUEST_FRAME_ENV || type == GUEST_FRAME_WORKDIR ||
	       type == GUEST_FRAME_USER || type == GUEST_FRAME_FAIL;
}

/* What the header alone decides: the type, the length limit, and the lengths
 * some types must have.  Checked before a payload is buffered, so a hostile
 * peer cannot make us allocate for a frame we would refuse anyway. */
static int check_header(enum guest_direction dir, uint8_t type, size_t len, const char **why)
{
	if (!type_known(dir, type)) {
		*why = dir == GUEST_DIR_HOST_TO_GUEST ? "unknown frame type (host to guest: A E W U P G S)"
						      : "unknown frame type (guest to host: O R F X)";
		return -EPROTO;
	}
	if (len > GUEST_FRAME_MAX) {
		*why = "frame longer than 1 MiB";
		return -EMSGSIZE;
	}
	switch (type) {
	case GUEST_FRAME_GO:
		if (len != 0) {
			*why = "'G' frame with a payload";
			return -EPROTO;
		}
		break;
	case GUEST_FRAME_EXIT:
		if (len != GUEST_EXIT_LEN) {
			*why = "'X' frame not 8 bytes long";
			return -EPROTO;
		}
		break;
	case GUEST_FRAME_API:
		if (len != GUEST_API_LEN) {
			*why = "'P' frame not 6 bytes long";
			return -EPROTO;
		}
		break;
	case GUEST_FRAME_RESTORED:
		if (len != GUEST_RESTORE_LEN) {
			*why = "'S' frame not 40 bytes long";
			return -EPROTO;
		}
		break;
	case GUEST_FRAME_USER:
	case GUEST_FRAME_FAIL:
	case GUEST_FRAME_WORKDIR:
	case GUEST_FRAME_ENV:
	case GUEST_FRAME_STDOUT:
	case GUEST_FRAME_STDERR:
		if (len == 0) {
			*why = "empty frame of a type that needs a payload";
			return -EPROTO;
		}
		break;
	default:
		break;
	}
	return 0;
}

int guest_frame_check(enum guest_direction dir, uint8_t type, const uint8_t *payload, size_t len, const char **why)
{
	const char *dummy;
	if (!why)
		why = &dummy;
	*why = "";
	int r = check_header(dir, type, len, why);
	if (r < 0)
		return r;
	if (type == GUEST_FRAME_API) {
		struct guest_api api;
		if (guest_api_decode(payload, len, &api) < 0) {
			*why = "'P' frame with port 0 or a vsock port one cannot connect to";
			return -EPROTO;
		}
		return 0;
	}
	if (type == GUEST_FRAME_RESTORED) {
		struct guest_restore rs;
		if (guest_restore_decode(payload, len, &rs) < 0) {
			*why = "'S' frame with generation 0 or an all-zero seed";
			return -EPROTO;
		}
		return 0;
	}
	if (!is_text(type))
		return 0;
	if (len && memchr(payload, '\0', len)) {
		*why = "NUL byte inside a text frame";
		return -EPROTO;
	}
	if (type == GUEST_FRAME_ENV) {
		const uint8_t *eq = memchr(payload, '=', len);
		if (!eq || eq == payload) {
			*why = "'E' frame is not NAME=VALUE";
			return -EPROTO;
		}
	}
	if (type == GUEST_FRAME_WORKDIR && payload[0] != '/') {
		*why = "'W' frame is not an absolute path";
		return -EPROTO;
	}
	return 0;
}

void guest_frame_header(uint8_t out[GUEST_FRAME_HDR_LEN], uint8_t type, uint32_t len)
{
	out[0] = type;
	put_le32(out + 1, len);
}

int guest_frame_send(int fd, uint8_t type, const void *payload, size_t len)
{
	if (len > GUEST_FRAME_MAX)
		return -EMSGSIZE;
	uint8_t hdr[GUEST_FRAME_HDR_LEN];
	guest_frame_header(hdr, type, (uint32_t)len);
	struct iovec iov[2] = {
		{ .iov_base = hdr, .iov_len = sizeof(hdr) },
		{ .iov_base = (void *)payload, .iov_len = len },
	};
	int i = 0, n = len ? 2 : 1;
	/* One writev in the common case, so a frame is usually one vsock packet. */
	while (i < n) {
		ssize_t w = writev(fd, iov + i, n - i);
		if (w < 0) {
			if (errno == EINTR)
				continue;
			return -errno;
		}
		size_t left = (size_t)w;
		while (i < n && left >= iov[i].iov_len) {
			left -= iov[i].iov_len;
			i++;
		}
		if (i < n) {
			iov[i].iov_base = (uint8_t *)iov[i].iov_base + left;
			iov[i].iov_len -= left;
		}
	}
	return 0;
}

void guest_decoder_init(struct guest_decoder *d, enum guest_direction dir)
{
	memset(d, 0, sizeof(*d));
	d->dir = dir;
	d->why = "";
}

void guest_decoder_cleanup(struct guest_decoder *d)
{
	free(d->buf);
	d->buf = NULL;
	d->cap = d->have = 0;
}

static int decoder_fail(struct guest_decoder *d, int err, const char *why)
{
	d->err = err;
	d->why = why;
	return err;
}

int guest_decoder_feed(struct guest_decoder *d, const uint8_t *p, size_t len, size_t *used, struct guest_frame *out)
{
	size_t pos = 0;
	*used = 0;
	if (d->err)
		return d->err;
	if (d->hdr_have < GUEST_FRAME_HDR_LEN) {
		size_t take = GUEST_FRAME_HDR_LEN - d->hdr_have;
		if (take > len)
			take = len;
		memcpy(d->hdr + d->hdr_have, p, take);
		d->hdr_have += take;
		pos += take;
		if (d->hdr_have < GUEST_FRAME_HDR_LEN) {
			*used = pos;
			return 0;
		}
		d->type = d->hdr[0];
		d->len = get_le32(d->hdr + 1);
		d->have = 0;
		const char *why = "";
		int r = check_header(d->dir, d->type, d->len, &why);
		if (r < 0) {
			*used = pos;
			return decoder_fail(d, r, why);
		}
		if (d->len > d->cap) {
			uint8_t *nb = realloc(d->buf, d->len);
			if (!nb) {
				*used = pos;
				return decoder_fail(d, -ENOMEM, "out of memory for a frame");
			}
			d->buf = nb;
			d->cap = d->len;
		}
	}
	size_t take = d->len - d->have;
	if (take > len - pos)
		take = len - pos;
	if (take)
		memcpy(d->buf + d->have, p + pos, take);
	d->have += take;
	pos += take;
	*used = pos;
	if (d->have < d->len)
		return 0;
	const char *why = "";
	int r = guest_frame_check(d->dir, d->type, d->buf, d->len, &why);
	if (r < 0)
		return decoder_fail(d, r, why);
	out->type = d->type;
	out->payload = d->buf;
	out->len = d->len;
	d->hdr_have = 0;
	d->have = 0;
	return 1;
}

bool guest_decoder_idle(const struct guest_decoder *d)
{
	return !d->err && d->hdr_have == 0;
}

const char *guest_decoder_error(const struct guest_decoder *d)
{
	return d->why;
}

void guest_exit_encode(uint8_t out[GUEST_EXIT_LEN], int32_t code, int32_t sig)
{
	put_le32(out, (uint32_t)code);
	put_le32(out + 4, (uint32_t)sig);
}

int guest_exit_decode(const uint8_t *payload, size_t len, int32_t *code, int32_t *sig)
{
	if (len != GUEST_EXIT_LEN)
		return -EPROTO;
	*code = (int32_t)get_le32(payload);
	*sig = (int32_t)get_le32(payload + 4);
	return 0;
}

void guest_api_encode(uint8_t out[GUEST_API_LEN], const struct guest_api *api)
{
	put_le16(out, api->tcp_port);
	put_le32(out + 2, api->vsock_port);
}

int guest_api_decode(const uint8_t *payload, size_t len, struct guest_api *api)
{
	if (len != GUEST_API_LEN)
		return -EPROTO;
	api->tcp_port = get_le16(payload);
	api->vsock_port = get_le32(payload + 2);
	if (api->tcp_port == 0 || api->vsock_port == 0 || api->vsock_port == 0xffffffffu)
		return -EPROTO;
	return 0;
}

void guest_restore_encode(uint8_t out[GUEST_RESTORE_LEN], const struct guest_restore *rs)
{
	put_le64(out, rs->generation);
	memcpy(out + 8, rs->seed, GUEST_SEED_LEN);
}

int guest_restore_decode(const uint8_t *payload, size_t len, struct guest_restore *rs)
{
	if (len != GUEST_RESTORE_LEN)
		return -EPROTO;
	rs->generation = get_le64(payload);
	memcpy(rs->seed, payload + 8, GUEST_SEED_LEN);
	if (rs->generation == 0 || is_all_zero(rs->seed, GUEST_SEED_LEN))
		return -EPROTO;
	return 0;
}

int guest_restore_take(uint64_t *generation, const struct guest_frame *f, struct guest_restore *rs, const char **why)
{
	const char *dummy;
	if (!why)
		why = &dummy;
	*why = "";
	if (f->type != GUEST_FRAME_RESTORED) {
		*why = "a frame other than 'S' after 'G'";
		return -EPROTO;
	}
	struct guest_restore got;
	if (guest_restore_decode(f->payload, f->len, &got) < 0) {
		*why = "'S' frame with generation 0 or an all-zero seed";
		return -EPROTO;
	}
	if (got.generation <= *generation) {
		*why = "'S' frame whose generation is not above the last one";
		return -EPROTO;
	}
	*generation = got.generation;
	*rs = got;
	return 0;
}

int guest_restore_send(int fd, const struct guest_restore *rs)
{
	uint8_t p[GUEST_RESTORE_LEN];
	struct guest_restore check;
	guest_restore_encode(p, rs);
	if (guest_restore_decode(p, sizeof(p), &check) < 0)
		return -EINVAL;
	return guest_frame_send(fd, GUEST_FRAME_RESTORED, p, sizeof(p));
}

void guest_backoff_init(struct guest_backoff *b)
{
	memset(b, 0, sizeof(*b));
}

int guest_backoff_next(struct guest_backoff *b, unsigned *delay_ms)
{
	if (b->waited_ms >= GUEST_RECONNECT_TOTAL_MS)
		return -ETIMEDOUT;
	unsigned d = GUEST_RECONNECT_FIRST_MS;
	for (unsigned i = 0; i < b->attempts && d < GUEST_RECONNECT_STEP_MS; i++)
		d *= 2;
	if (d > GUEST_RECONNECT_STEP_MS)
		d = GUEST_RECONNECT_STEP_MS;
	if (d > GUEST_RECONNECT_TOTAL_MS - b->waited_ms)
		d = GUEST_RECONNECT_TOTAL_MS - b->waited_ms;
	b->attempts++;
	b->waited_ms += d;
	*delay_ms = d;
	return 0;
}

void guest_invocation_init(struct guest_invocation *inv)
{
	memset(inv, 0, sizeof(*inv));
}

static void free_vec(char **v, size_t n)
{
	if (!v)
		return;
	for (size_t i = 0; i < n; i++)
		free(v[i]);
	free(v);
}

void guest_invocation_cleanup(struct guest_invocation *inv)
{
	free_vec(inv->argv, inv->argc);
	free_vec(inv->envp, inv->envc);
	free(inv->workdir);
	free(inv->user);
	guest_invocation_init(inv);
}

static char *dup_payload(const struct guest_frame *f)
{
	char *s = malloc((size_t)f->len + 1);
	if (!s)
		return NULL;
	if (f->len)
		memcpy(s, f->payload, f->len);
	s[f->len] = '\0';
	return s;
}

/* A vector holding |slots| pointers has room for the smallest power of two
 * >= max(4, slots): the capacity follows from the count, so the struct needs
 * no field for it and growth stays amortised O(1). */
static size_t vec_cap(size_t slots)
{
	size_t cap = 4;
	while (cap < slots)
		cap *= 2;
	return cap;
}

/* Append |s| to the NULL-terminated vector |*v| of |*n| elements. */
static int vec_push(char ***v, size_t *n, char *s)
{
	if (!*v || vec_cap(*n + 2) != vec_cap(*n + 1)) {
		char **nv = realloc(*v, vec_cap(*n + 2) * sizeof(char *));
		if (!nv)
			return -ENOMEM;
		*v = nv;
	}
	(*v)[(*n)++] = s;
	(*v)[*n] = NULL;
	return 0;
}

int guest_invocation_add(struct guest_invocation *inv, const struct guest_frame *f, const char **why)
{
	const char *dummy;
	if (!why)
		why = &dummy;
	*why = "";
	if (inv->complete) {
		*why = "frame after 'G'";
		return -EPROTO;
	}
	if (f->type == GUEST_FRAME_GO) {
		if (inv->argc == 0) {
			*why = "'G' before any 'A': nothing to run";
			return -EPROTO;
		}
		inv->complete = true;
		return 1;
	}
	if (f->type == GUEST_FRAME_RESTORED) {
		*why = "'S' before 'G': only a running command is restored";
		return -EPROTO;
	}
	if (!type_known(GUEST_DIR_HOST_TO_GUEST, f->type)) {
		*why = "not a host to guest frame";
		return -EPROTO;
	}
	if (inv->bytes + f->len + 1 > GUEST_INV_MAX_BYTES) {
		*why = "invocation larger than 8 MiB";
		return -E2BIG;
	}
	if ((f->type == GUEST_FRAME_ARG && inv->argc >= GUEST_INV_MAX_ARGS) ||
	    (f->type == GUEST_FRAME_ENV && inv->envc >= GUEST_INV_MAX_ENV)) {
		*why = "more than 4096 arguments or environment entries";
		return -E2BIG;
	}
	if ((f->type == GUEST_FRAME_WORKDIR && inv->workdir) || (f->type == GUEST_FRAME_USER && inv->user) ||
	    (f->type == GUEST_FRAME_API && inv->api.tcp_port)) {
		*why = "a second 'W', 'U' or 'P' frame";
		return -EPROTO;
	}
	if (f->type == GUEST_FRAME_API) {
		if (guest_api_decode(f->payload, f->len, &inv->api) < 0) {
			inv->api = (struct guest_api){ 0 };
			*why = "'P' frame with port 0 or a vsock port one cannot connect to";
			return -EPROTO;
		}
		inv->bytes += f->len + 1;
		return 0;
	}
	char *s = dup_payload(f);
	if (!s)
		return -ENOMEM;
	int r = 0;
	switch (f->type) {
	case GUEST_FRAME_ARG:
		r = vec_push(&inv->argv, &inv->argc, s);
		break;
	case GUEST_FRAME_ENV:
		r = vec_push(&inv->envp, &inv->envc, s);
		break;
	case GUEST_FRAME_WORKDIR:
		inv->workdir = s;
		break;
	default: /* GUEST_FRAME_USER; the others returned above */
		inv->user = s;
		break;
	}
	if (r < 0) {
		free(s);
		return r;
	}
	inv->bytes += f->len + 1;
	return 0;
}

static int send_text(int fd, uint8_t type, const char *s)
{
	size_t len = strlen(s);
	if (guest_frame_check(GUEST_DIR_HOST_TO_GUEST, type, (const uint8_t *)s, len, NULL) < 0)
		return -EINVAL;
	return guest_frame_send(fd, type, s, len);
}

int guest_invocation_send(int fd, const char *const *argv, const char *const *envp, const char *workdir,
			  const char *user, const struct guest_api *api)
{
	uint8_t ap[GUEST_API_LEN];
	struct guest_api check;
	if (api)
		guest_api_encode(ap, api);
	if (!argv || !argv[0] || (api && guest_api_decode(ap, sizeof(ap), &check) < 0))
		return -EINVAL;
	int r;
	for (size_t i = 0; argv[i]; i++)
		if ((r = send_text(fd, GUEST_FRAME_ARG, argv[i])) < 0)
			return r;
	for (size_t i = 0; envp && envp[i]; i++)
		if ((r = send_text(fd, GUEST_FRAME_ENV, envp[i])) < 0)
			return r;
	if (workdir && (r = send_text(fd, GUEST_FRAME_WORKDIR, workdir)) < 0)
		return r;
	if (user && (r = send_text(fd, GUEST_FRAME_USER, user)) < 0)
		return r;
	if (api && (r = guest_frame_send(fd, GUEST_FRAME_API, ap, sizeof(ap))) < 0)
		return r;
	return guest_frame_send(fd, GUEST_FRAME_GO, NULL, 0);
}
