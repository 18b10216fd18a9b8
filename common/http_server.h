/* common: an HTTP/1.1 server for kindling's APIs (the Lambda-compatible
 * frontend and the per-sandbox Runtime API), on Debian's libmicrohttpd.
 *
 * One thread per connection: a handler may block for as long as it likes
 * (a long-poll for the next invocation, a synchronous invoke waiting for its
 * function), and only its own connection waits.  The server keeps the rest
 * of a connection's life bounded:
 *
 *   - at most |max_connections| connections are served at once; one beyond
 *     that gets "503 Service Unavailable" (Connection: close) as soon as its
 *     request line and headers arrive, and past a further margin
 *     (HTTP_SERVER_OVERFLOW_SLOTS) libmicrohttpd closes new connections
 *     without an answer;
 *   - request line and headers together may not exceed about
 *     |max_header_bytes| (libmicrohttpd answers 431 or 414);
 *   - the body limit is decided per request, from the method, path and
 *     headers, before any of the body is read: a Content-Length over it is
 *     answered 413 at once and the connection closed without reading the
 *     body; a chunked body is read and dropped once it passes the limit,
 *     then answered 413;
 *   - the server waits on a client for at most |io_timeout_ms| at a time:
 *     from the connection's start, or the end of its previous response, to
 *     the end of the next request (so idling between keep-alive requests
 *     counts too), and from the handler's return to the end of sending the
 *     response.  A connection over its time is shut down, so a client that
 *     trickles bytes cannot hold a thread.  Time in the handler does not
 *     count.
 *
 * Handlers get the path exactly as it came on the request line (SigV4 signs
 * that), and a percent-decoded copy for routing.
 */
#ifndef KINDLING_COMMON_HTTP_SERVER_H
#define KINDLING_COMMON_HTTP_SERVER_H

#include "common/http_util.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define HTTP_SERVER_DEFAULT_CONNECTIONS 256u
#define HTTP_SERVER_DEFAULT_HEADER_BYTES (32u << 10)
#define HTTP_SERVER_DEFAULT_MAX_BODY (6u << 20) /* Lambda's synchronous payload limit */
#define HTTP_SERVER_DEFAULT_IO_TIMEOUT_MS 30000u
/* Connections beyond max_connections that still get a 503 instead of being
 * dropped unanswered. */
#define HTTP_SERVER_OVERFLOW_SLOTS 16u

/* One request, as a handler sees it.  Everything is owned by the server and
 * valid until the handler returns. */
struct http_request {
	const char *method;   /* "GET", "POST", ... */
	const char *version;  /* "HTTP/1.1" */
	const char *raw_path; /* exactly as on the request line, up to '?': "/a%3Ab/c" */
	const char *path;     /* raw_path percent-decoded: "/a:b/c"; never holds NUL,
			       * not normalised ("." and ".." stay) */
	const char *query;    /* the raw query after '?' ("" if none); see http_query_parse */
	const struct http_header *headers; /* in arrival order, duplicates kept */
	size_t n_headers;
	const uint8_t *body;  /* NULL while the body limit is being decided; then the
			       * whole body, NUL-terminated (not counted in body_len) */
	size_t body_len;
	/* The size of the body in bytes: body_len, except in ops->error for a
	 * 413, where it is the size of the body refused: its Content-Length
	 * (none of it was read), or for a chunked body every byte that came
	 * (the server reads such a body to its end, dropping it, before it
	 * answers; UINT64_MAX if that overflowed). */
	uint64_t body_total;
	const char *peer;     /* "127.0.0.1:40522" or "[::1]:40522" */
};

/* The value of |req|'s first header named |name| (case-insensitive), or
 * NULL. */
const char *http_request_header(const struct http_request *req, const char *name);

/* A response, filled by a handler.  It starts as 200 with no headers and an
 * empty body; the server frees what it holds after sending it. */
struct http_response {
	unsigned status;
	struct http_header *headers; /* owned copies */
	size_t n_headers, cap_headers;
	uint8_t *body; /* owned, malloc'd */
	size_t body_len;
};

/* Add the header |name|: |value| to |resp|.  Content-Length and
 * Transfer-Encoding are the server's to set.  Returns 0, -EINVAL for an
 * empty or non-token name, a CR, LF or NUL in the value, or one of those two
 * names, or -ENOMEM. */
int http_response_add_header(struct http_response *resp, const char *name, const char *value);

/* Set |resp|'s body to a copy of |<data, len>|, replacing any earlier one.
 * Returns 0 or -ENOMEM (the old body stays). */
int http_response_set_body(struct http_response *resp, const void *data, size_t len);

/* Set |resp|'s body to |<data, len>|, which must come from malloc and now
 * belongs to the response (also on a later failure), replacing any earlier
 * body. */
void http_response_take_body(struct http_response *resp, void *data, size_t len);

/* What the application does with requests.  |arg| is
 * http_server_config.arg.  Every callback may run in many threads at once. */
struct http_server_ops {
	/* required: answer |req| by filling |resp|.  May block.  Return 0 to
	 * send |resp|, or -errno to have the server answer 500 (through
	 * |error| if set). */
	int (*handle)(void *arg, const struct http_request *req, struct http_response *resp);
	/* optional: the largest body accepted for |req| (whose body is still
	 * NULL), decided from its method, path and headers.  Default:
	 * http_server_config.max_body for every request. */
	size_t (*body_limit)(void *arg, const struct http_request *req);
	/* optional: fill |resp| (status already set to |status|) for an answer
	 * the server gives itself: 400 (a path that does not decode), 413 (a
	 * body over |limit| bytes; req->body_total says how big), 500 (the
	 * handler failed), 503 (over the connection cap, or stopping).
	 * |reason| says why, for a log or the body.  |req| has no body.  Must
	 * not block.  It may set another status (200 to 599) where the
	 * application answers such a request itself, for example an API that
	 * accepts a report whose oversized body it ignores; the connection is
	 * closed after the answer all the same, unless |status| was 500.
	 * Default: a text/plain body of |reason|. */
	void (*error)(void *arg, const struct http_request *req, unsigned status, const char *reason, size_t limit,
		      struct http_response *resp);
	/* optional: called once by http_server_stop after the server stopped
	 * accepting connections and before it waits for running handlers:
	 * wake every handler that waits for an event, so that it answers. */
	void (*stopping)(void *arg);
};

struct http_server_config {
	const struct http_server_ops *ops; /* required */
	void *arg;			   /* passed to every op */
	unsigned max_connections;	   /* 0: HTTP_SERVER_DEFAULT_CONNECTIONS */
	size_t max_header_bytes;	   /* 0: HTTP_SERVER_DEFAULT_HEADER_BYTES */
	size_t max_body;		   /* 0: HTTP_SERVER_DEFAULT_MAX_BODY */
	unsigned io_timeout_ms;		   /* 0: HTTP_SERVER_DEFAULT_IO_TIMEOUT_MS */
	const char *name;		   /* for log messages ("lambda api"); NULL: "http" */
};

struct http_server;

/* Start a server listening on |hostport| ("127.0.0.1:9000", "[::1]:0",
 * "localhost:8080"; port 0 picks a free one, see http_server_address).
 * Returns 0 with |*out|, -EINVAL for a malformed address, -EADDRINUSE,
 * -EACCES or another -errno from bind/listen, or -EIO if libmicrohttpd
 * would not start; each failure is logged with what to do. */
int http_server_start(const struct http_server_config *cfg, const char *hostport, struct http_server **out);

/* Start a server on |fd|, a TCP (or unix) stream socket that is already
 * bound and listening, for example one made inside another network
 * namespace.  The server takes |fd| in every case: it closes it when
 * stopped, or before returning an error.  Returns 0, -EINVAL if |fd| is not
 * a listening stream socket, or -EIO / -errno (logged). */
int http_server_start_fd(const struct http_server_config *cfg, int fd, struct http_server **out);

/* The address the server listens on: "127.0.0.1:41234", "[::1]:41234", or
 * "unix:PATH". */
const char *http_server_address(const struct http_server *s);

/* The TCP port the server listens on (0 for a unix socket). */
uint16_t http_server_port(const struct http_server *s);

/* Counters, for tests and status pages. */
struct http_server_stats {
	unsigned connections;	/* open now */
	unsigned in_flight;	/* requests between their headers and the end of their response */
	uint64_t requests;	/* requests whose headers arrived */
	uint64_t rejected_busy; /* answered 503 over the connection cap */
	uint64_t too_large;	/* bodies refused over their limit (answered 413 unless ops->error chose otherwise) */
	uint64_t timed_out;	/* connections shut down by io_timeout_ms */
};

void http_server_get_stats(struct http_server *s, struct http_server_stats *out);

/* Stop |s|: stop accepting connections, call ops->stopping, wait for every
 * request already received to be answered and sent (new requests on open
 * connections get 503 meanwhile), then close all connections and join their
 * threads.  Must not be called from a handler, nor from two threads at
 * once; calling it again afterwards does nothing. */
void http_server_stop(struct http_server *s);

/* Stop |s| if it still runs and free it; NULL is fine. */
void http_server_free(struct http_server *s);

#endif
