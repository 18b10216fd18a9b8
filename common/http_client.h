/* common: a small HTTP/1.1 client on libcurl, for kindling's own services
 * (etcd's JSON gateway, the placement service, remote host agents).
 *
 * A client is one libcurl easy handle, so its connection is kept alive
 * between requests; it is NOT thread-safe (use one per thread, or a pool).
 * Replies are read into memory up to a limit the caller gives, so a peer
 * cannot make a client allocate without bound.  The stores (image/) have
 * their own transfer code with retries and batching; this is the plain
 * request-and-answer path.
 */
#ifndef KINDLING_COMMON_HTTP_CLIENT_H
#define KINDLING_COMMON_HTTP_CLIENT_H

#include "common/http_util.h"

#include <stddef.h>
#include <stdint.h>

struct http_client;

struct http_client_response {
	long status;			/* 200, 404, ... */
	char *body;			/* malloc'd, NUL-terminated (not counted in body_len) */
	size_t body_len;
	struct http_header *headers;	/* malloc'd copies, in arrival order */
	size_t n_headers;
};

/* Free what |r| owns; safe on a zeroed struct. */
void http_client_response_cleanup(struct http_client_response *r);

/* The value of |r|'s first header named |name| (case-insensitive), or NULL. */
const char *http_client_response_header(const struct http_client_response *r, const char *name);

/* Make a client.  0 with |*out| (http_client_free), or -ENOMEM. */
int http_client_new(struct http_client **out);

/* Free; NULL is fine. */
void http_client_free(struct http_client *c);

/* Send every later request of |c| over the unix stream socket |path| (a
 * copy is kept) instead of the TCP address in the URL, whose host then only
 * fills the Host header: how a client talks to a daemon's API socket, as
 * `curl --unix-socket` does.  NULL goes back to TCP.  Returns 0, -EINVAL for
 * a path longer than a unix socket address takes, or -ENOMEM. */
int http_client_set_unix_socket(struct http_client *c, const char *path);

/* End every later request of |c| early, with -ECANCELED, once |fd| is
 * readable (a pipe or eventfd someone writes to say "give up"); the fd is
 * only polled, never read, so its owner still sees the signal.  libcurl
 * looks at it at least about once a second while it waits for the server,
 * which bounds how long a cancelled request lingers.  -1 turns it off. */
void http_client_set_cancel_fd(struct http_client *c, int fd);

/* Send |method| |url| with |headers| and |<body, body_len>| (body may be
 * NULL), and read the whole answer, at most |max_body| bytes of body, the
 * whole exchange within |timeout_ms| (connecting within the same bound).
 * Any status is a success: 0 with |*out| filled (cleanup in every case).
 * A request other than GET or HEAD goes out at most once: when the
 * connection breaks after it was sent and before any answer, the call fails
 * with -ECONNRESET (the server may have acted on it) where libcurl would
 * quietly send it again; a GET is resent on a fresh connection.
 * Returns -ECONNREFUSED (nothing listens), -ECONNRESET, -ETIMEDOUT, -EMSGSIZE (the body
 * passed |max_body|), -EPROTO (not HTTP), -ECANCELED (the cancel fd of
 * http_client_set_cancel_fd became readable), -EIO for another transport error,
 * -EINVAL for an empty |method|, a malformed |url| or |timeout_ms| 0, or
 * -ENOMEM.  No "Expect: 100-continue" is sent, and no Content-Type unless
 * |headers| has one.  Transport errors are not logged here: the caller knows
 * whether one matters. */
int http_client_request(struct http_client *c, const char *method, const char *url, const struct http_header *headers,
			size_t n_headers, const void *body, size_t body_len, unsigned timeout_ms, size_t max_body,
			struct http_client_response *out);

#endif
