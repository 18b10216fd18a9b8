/* image: the private side of the origin store layer (store*.c only).
 *
 * store.c parses a URI, picks a backend from its one registration array and
 * calls it through the wrappers declared in image.h.  Nothing outside
 * store*.c touches an ops table.  Keys reach a backend already checked by
 * store_key_valid(), and options already have their defaults filled in.
 *
 * The http and s3 backends share one libcurl transfer engine (store_http.c):
 * a store_xfer describes one request and its response, and
 * store_http_client_run() runs a batch of them with a bounded number in
 * flight.
 */
#ifndef KINDLING_IMAGE_STORE_OPS_H
#define KINDLING_IMAGE_STORE_OPS_H

#include "internal.h"

#include <curl/curl.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define STORE_MAX_KEY 512
#define STORE_DEFAULT_PARALLEL 16u
#define STORE_MAX_PARALLEL 256u
#define STORE_DEFAULT_TIMEOUT_MS 30000u
/* Name prefix of an in-progress put's temporary object; never listed. */
#define STORE_TMP_PREFIX ".tmp-"

/* One backend.  |state| is whatever the backend's open returned. */
struct store_ops {
	/* required: short name for messages ("file", "http", "s3") */
	const char *name;
	/* required: URI schemes this backend opens, NULL-terminated.  The
	 * file backend also gets every URI without "://" (a plain path). */
	const char *const *schemes;
	/* required: parse |uri| and set up.  |opt| has defaults filled in.
	 * On success |*out_state| and |*out_description| (malloc'd) belong
	 * to the store.  Returns 0, -EINVAL (logged, naming the URI) or
	 * -errno. */
	int (*open)(const char *uri, const struct store_options *opt, void **out_state, char **out_description);
	/* required: release everything open made; never NULL |state|. */
	void (*close)(void *state);
	/* required: as store_get. */
	int (*get)(void *state, const char *key, size_t max_len, uint8_t **out, size_t *out_len);
	/* required: as store_put. */
	int (*put)(void *state, const char *key, const void *buf, size_t len);
	/* optional: as store_put_batch; store.c falls back to a loop of put. */
	int (*put_batch)(void *state, const char *const *keys, const void *const *bufs, const size_t *lens, size_t n);
	/* required: as store_exists_batch (n >= 1). */
	int (*exists_batch)(void *state, const char *const *keys, size_t n, bool *out_exists);
	/* required: as store_delete (absent is success). */
	int (*del)(void *state, const char *key);
	/* required: as store_list; |prefix| is "" or a checked key prefix. */
	int (*list)(void *state, const char *prefix, store_list_cb cb, void *arg);
	/* required: as store_age. */
	int (*age)(void *state, const char *key, double *out_seconds);
	/* optional: as store_undo_create; absent means there is nothing to undo. */
	int (*undo_create)(void *state);
};

extern const struct store_ops store_file_ops;
extern const struct store_ops store_http_ops;
extern const struct store_ops store_s3_ops;

/* True if |key| is a usable object key: 1..STORE_MAX_KEY bytes, no leading
 * "/", no empty, "." or ".." component, no component starting with
 * STORE_TMP_PREFIX, no control characters.  With |allow_partial| the last
 * component may be empty or partial (a list prefix such as "chunks/" or
 * "chunks/ab"), and "" is accepted. */
bool store_key_valid(const char *key, bool allow_partial);

/* ---- shared libcurl engine (store_http.c) ------------------------------- */

/* Call curl_global_init exactly once per process (pthread_once).  Returns 0
 * or -EIO (logged). */
int store_curl_global_init(void);

/* One HTTP request and, after store_http_client_run, its outcome.  The
 * caller fills the request part (store_xfer_init zeroes it first) and frees
 * everything with store_xfer_cleanup. */
struct store_xfer {
	/* request */
	const char *method;	      /* "GET", "PUT", "HEAD" or "DELETE" (static) */
	char *url;		      /* owned, fully encoded */
	struct curl_slist *headers;   /* owned, may be NULL */
	const uint8_t *body;	      /* PUT: borrowed until the run ends */
	size_t body_len;
	size_t max_len;		      /* a 2xx body larger than this aborts with too_big */
	/* response */
	CURLcode curl_code;	      /* CURLE_OK if an HTTP response arrived */
	long status;		      /* HTTP status, 0 if none */
	uint8_t *resp;		      /* 2xx: the body; otherwise the first few KiB of it */
	size_t resp_len;
	int64_t filetime;	      /* Last-Modified as Unix seconds, -1 if absent */
	bool too_big;		      /* the body exceeded max_len */
	bool dir_redirect;	      /* a 3xx to url + "/": a directory, not an object */
	char curl_error[CURL_ERROR_SIZE];
	/* engine private */
	size_t resp_cap;
	size_t body_off;
	CURL *easy;
};

void store_xfer_init(struct store_xfer *x);
void store_xfer_cleanup(struct store_xfer *x);

/* Append "Name: value" to |x|'s headers.  Returns 0 or -ENOMEM. */
int store_xfer_add_header(struct store_xfer *x, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* Map a finished transfer to 0 (2xx), -ENOENT (404, or a redirect to the
 * same URL with a '/' added: the key names a directory of other keys),
 * -EFBIG (too_big or 413), -EACCES (401/403) or -EIO (transport failure,
 * 5xx, anything else). */
int store_xfer_errno(const struct store_xfer *x);

/* Log why |x| failed with |err| (from store_xfer_errno): the method, URL,
 * curl's or the server's words, and |hint| (an operator suggestion such as
 * "is the origin at http://... running?") for transport errors and 5xx. */
void store_xfer_log(const struct store_xfer *x, int err, const char *hint);

/* A pool of curl multi handles so connections are reused across calls; safe
 * to share between threads (each run takes its own multi handle). */
struct store_http_client;

/* |parallel| >= 1 transfers in flight at most; |timeout_ms| per transfer.
 * Returns 0 or -ENOMEM. */
int store_http_client_new(unsigned parallel, unsigned timeout_ms, struct store_http_client **out);
void store_http_client_free(struct store_http_client *c);

/* Run |<xfers, n>| with at most |parallel| in flight, never one round trip
 * after another.  Each transfer's outcome lands in its response fields; a
 * transfer that could not even be set up gets curl_code CURLE_OUT_OF_MEMORY.
 * Returns 0, or -ENOMEM / -EIO if the multi handle itself failed (logged). */
int store_http_client_run(struct store_http_client *c, struct store_xfer *xfers, size_t n);

/* How store_xfer_batch builds and judges the requests of one batch. */
struct store_xfer_batch_ops {
	/* Fill |x| (store_xfer_init'ed) for item |i| of the batch; 0 or -errno. */
	int (*prepare)(void *ctx, size_t i, struct store_xfer *x);
	/* The -errno for |x|, whose transfer failed, logged with what to do.
	 * Called for the first failure of a batch only. */
	int (*failure)(void *ctx, const struct store_xfer *x);
};

/* Build |n| requests with |ops->prepare|, run them all at once on |c| and
 * judge them: |out_ok[i]| (may be NULL) says whether item i succeeded; with
 * |absent_ok| a 404 is not a failure (an existence check).  More than one
 * failure adds one line "|what| in |where|: F of N failed".  Returns 0, the
 * first failure's -errno (-EIO for a PUT answered 404: the server would not
 * create the path), or -errno if the batch could not be built or run. */
int store_xfer_batch(struct store_http_client *c, size_t n, const struct store_xfer_batch_ops *ops, void *ctx,
		     bool absent_ok, bool *out_ok, const char *what, const char *where);

/* Check the transport of |url| (http or https, host present).  Plain http is
 * refused unless the host is loopback (127.0.0.0/8, ::1, localhost) or
 * |insecure|.  |*out_host| (optional) gets the malloc'd host name.  Returns 0,
 * -EINVAL (malformed, logged with |what|) or -EPERM (insecure, logged). */
int store_url_check(const char *url, bool insecure, const char *what, char **out_host);

#endif
