/* chunker: the http store, "http(s)://host:port/prefix", and the libcurl
 * transfer engine it shares with the s3 store.
 *
 * Objects are plain resources under the prefix: GET reads, PUT writes,
 * HEAD checks (and gives Last-Modified for store_age), DELETE removes.  The
 * server must make a PUT atomic; nginx's WebDAV module does (it writes to
 * client_body_temp_path and renames).
 *
 * Listing requires the server to serve directory indexes as JSON the way
 * nginx does with
 *
 *     autoindex on;
 *     autoindex_format json;
 *
 * A GET of "<prefix>/<dir>/" then returns [{"name": "x", "type": "file" |
 * "directory" | "other", ...}, ...], which store_list walks recursively.
 * A typical origin location:
 *
 *     location / { dav_methods PUT DELETE; create_full_put_path on;
 *                  autoindex on; autoindex_format json; }
 *
 * Batched checks and uploads run through one curl multi handle with at most
 * store_options.parallel transfers in flight.
 */
#include "store_ops.h"

#include "common/http_util.h"

#include <arpa/inet.h>
#include <errno.h>
#include <jansson.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

/* Error bodies are kept only for the log message. */
#define ERROR_BODY_MAX 4096
/* An index of a directory of a million chunks is about 100 MiB of JSON. */
#define LIST_JSON_MAX (512u << 20)
#define LIST_MAX_DEPTH 64
/* Idle multi handles (each with its connection cache) kept for reuse. */
#define CLIENT_POOL_MAX 8

/* ---- curl setup ------------------------------------------------------------ */

static pthread_once_t curl_once = PTHREAD_ONCE_INIT;
static CURLcode curl_init_result;

static void curl_init_once(void) { curl_init_result = curl_global_init(CURL_GLOBAL_ALL); }

int store_curl_global_init(void)
{
	pthread_once(&curl_once, curl_init_once);
	if (curl_init_result != CURLE_OK) {
		log_err("initialise libcurl: %s", curl_easy_strerror(curl_init_result));
		return -EIO;
	}
	return 0;
}

void store_xfer_init(struct store_xfer *x)
{
	memset(x, 0, sizeof(*x));
	x->filetime = -1;
}

void store_xfer_cleanup(struct store_xfer *x)
{
	if (!x)
		return;
	free(x->url);
	curl_slist_free_all(x->headers);
	free(x->resp);
	if (x->easy)
		curl_easy_cleanup(x->easy);
	store_xfer_init(x);
}

int store_xfer_add_header(struct store_xfer *x, const char *fmt, ...)
{
	char *line = NULL;
	va_list ap;
	va_start(ap, fmt);
	int n = vasprintf(&line, fmt, ap);
	va_end(ap);
	if (n < 0)
		return -ENOMEM;
	struct curl_slist *l = curl_slist_append(x->headers, line);
	free(line);
	if (!l)
		return -ENOMEM;
	x->headers = l;
	return 0;
}

int store_xfer_errno(const struct store_xfer *x)
{
	if (x->too_big)
		return -EFBIG;
	if (x->curl_code != CURLE_OK)
		return x->curl_code == CURLE_OUT_OF_MEMORY ? -ENOMEM : -EIO;
	if (x->status >= 200 && x->status < 300)
		return 0;
	if (x->status == 404 || x->dir_redirect)
		return -ENOENT;
	if (x->status == 413)
		return -EFBIG;
	if (x->status == 401 || x->status == 403)
		return -EACCES;
	return -EIO;
}

void store_xfer_log(const struct store_xfer *x, int err, const char *hint)
{
	if (err == -EFBIG && x->too_big) {
		log_err("%s %s: object is larger than the %zu bytes allowed", x->method, x->url, x->max_len);
		return;
	}
	if (x->curl_code != CURLE_OK) {
		const char *why = x->curl_error[0] ? x->curl_error : curl_easy_strerror(x->curl_code);
		log_err("%s %s: %s (%s)", x->method, x->url, why, hint);
		return;
	}
	/* Quote the start of the server's explanation (an S3 <Code>, an nginx
	 * page) with anything unprintable replaced. */
	char said[201];
	size_t n = 0;
	for (size_t i = 0; i < x->resp_len && n < sizeof(said) - 1; i++) {
		uint8_t c = x->resp[i];
		if (c == '\n' || c == '\r' || c == '\t')
			c = ' ';
		if (c < 0x20 || c >= 0x7f)
			c = '?';
		if (c == ' ' && n && said[n - 1] == ' ')
			continue;
		said[n++] = (char)c;
	}
	said[n] = 0;
	const char *why = err == -EACCES ? "check the credentials and permissions" : x->status >= 500 ? hint : "";
	log_err("%s %s: HTTP %ld%s%s%s%s", x->method, x->url, x->status, n ? ": " : "", said, *why ? " - " : "", why);
}

/* ---- the transfer engine ------------------------------------------------------ */

struct store_http_client {
	pthread_mutex_t lock;
	CURLM *idle[CLIENT_POOL_MAX]; /* guarded by lock */
	size_t n_idle;
	unsigned parallel;
	unsigned timeout_ms;
};

int store_http_client_new(unsigned parallel, unsigned timeout_ms, struct store_http_client **out)
{
	struct store_http_client *c = calloc(1, sizeof(*c));
	if (!c)
		return -ENOMEM;
	pthread_mutex_init(&c->lock, NULL);
	c->parallel = parallel ? parallel : STORE_DEFAULT_PARALLEL;
	c->timeout_ms = timeout_ms ? timeout_ms : STORE_DEFAULT_TIMEOUT_MS;
	*out = c;
	return 0;
}

void store_http_client_free(struct store_http_client *c)
{
	if (!c)
		return;
	for (size_t i = 0; i < c->n_idle; i++)
		curl_multi_cleanup(c->idle[i]);
	pthread_mutex_destroy(&c->lock);
	free(c);
}

/* A multi handle for one run: a pooled one (whose connections are still
 * open) or a new one.  NULL on allocation failure. */
static CURLM *client_take_multi(struct store_http_client *c)
{
	CURLM *m = NULL;
	pthread_mutex_lock(&c->lock);
	if (c->n_idle)
		m = c->idle[--c->n_idle];
	pthread_mutex_unlock(&c->lock);
	if (!m) {
		m = curl_multi_init();
		if (m)
			curl_multi_setopt(m, CURLMOPT_MAXCONNECTS, (long)c->parallel);
	}
	return m;
}

static void client_return_multi(struct store_http_client *c, CURLM *m)
{
	pthread_mutex_lock(&c->lock);
	if (c->n_idle < CLIENT_POOL_MAX) {
		c->idle[c->n_idle++] = m;
		m = NULL;
	}
	pthread_mutex_unlock(&c->lock);
	if (m)
		curl_multi_cleanup(m);
}

/* Keep a response body: all of a 2xx body up to max_len (beyond that the
 * transfer aborts with too_big, before the object is read whole), and the
 * first ERROR_BODY_MAX bytes of anything else for the log. */
static size_t xfer_write(char *data, size_t size, size_t nmemb, void *userdata)
{
	struct store_xfer *x = userdata;
	size_t n = size * nmemb;
	long status = 0;
	curl_easy_getinfo(x->easy, CURLINFO_RESPONSE_CODE, &status);
	bool success = status >= 200 && status < 300;
	size_t limit = success ? x->max_len : ERROR_BODY_MAX;
	if (x->resp_cap == 0 && success) {
		curl_off_t announced = -1;
		curl_easy_getinfo(x->easy, CURLINFO_CONTENT_LENGTH_DOWNLOAD_T, &announced);
		if (announced >= 0 && (uint64_t)announced > limit) {
			x->too_big = true;
			return 0; /* aborts the transfer */
		}
		/* Allocate the announced size once instead of doubling. */
		if (announced > 0) {
			x->resp = malloc((size_t)announced);
			if (!x->resp)
				return 0;
			x->resp_cap = (size_t)announced;
		}
	}
	size_t keep = n;
	if (x->resp_len + n > limit || x->resp_len + n < n) {
		if (success) {
			x->too_big = true;
			return 0;
		}
		keep = limit - x->resp_len;
	}
	if (x->resp_len + keep > x->resp_cap) {
		size_t cap = x->resp_cap ? x->resp_cap : 16384;
		while (cap < x->resp_len + keep)
			if (!ck_mul_size(cap, 2, &cap))
				return 0;
		if (cap > limit && limit >= x->resp_len + keep)
			cap = limit ? limit : 1;
		uint8_t *p = realloc(x->resp, cap);
		if (!p)
			return 0;
		x->resp = p;
		x->resp_cap = cap;
	}
	memcpy(x->resp + x->resp_len, data, keep);
	x->resp_len += keep;
	return n;
}

static size_t xfer_read(char *buf, size_t size, size_t nitems, void *userdata)
{
	struct store_xfer *x = userdata;
	size_t left = x->body_len - x->body_off;
	size_t n = size * nitems < left ? size * nitems : left;
	memcpy(buf, x->body + x->body_off, n);
	x->body_off += n;
	return n;
}

/* curl rewinds an upload when it retries on a fresh connection (a reused
 * keep-alive connection the server had closed); without this it fails. */
static int xfer_seek(void *userdata, curl_off_t offset, int origin)
{
	struct store_xfer *x = userdata;
	if (origin != SEEK_SET || offset < 0 || (uint64_t)offset > x->body_len)
		return CURL_SEEKFUNC_FAIL;
	x->body_off = (size_t)offset;
	return CURL_SEEKFUNC_OK;
}

/* Make |x|'s easy handle.  Returns 0 or -ENOMEM. */
static int xfer_setup(struct store_http_client *c, struct store_xfer *x)
{
	x->easy = curl_easy_init();
	if (!x->easy)
		return -ENOMEM;
	CURL *e = x->easy;
	x->curl_error[0] = 0;
	x->body_off = 0;
	curl_easy_setopt(e, CURLOPT_URL, x->url);
	curl_easy_setopt(e, CURLOPT_PRIVATE, x);
	curl_easy_setopt(e, CURLOPT_ERRORBUFFER, x->curl_error);
	curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L);
	curl_easy_setopt(e, CURLOPT_PROTOCOLS_STR, "http,https");
	curl_easy_setopt(e, CURLOPT_FOLLOWLOCATION, 0L);
	curl_easy_setopt(e, CURLOPT_TIMEOUT_MS, (long)c->timeout_ms);
	curl_easy_setopt(e, CURLOPT_CONNECTTIMEOUT_MS, (long)(c->timeout_ms < 10000 ? c->timeout_ms : 10000));
	curl_easy_setopt(e, CURLOPT_FILETIME, 1L);
	curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, xfer_write);
	curl_easy_setopt(e, CURLOPT_WRITEDATA, x);
	if (!strcmp(x->method, "HEAD")) {
		curl_easy_setopt(e, CURLOPT_NOBODY, 1L);
	} else if (!strcmp(x->method, "PUT")) {
		curl_easy_setopt(e, CURLOPT_UPLOAD, 1L);
		curl_easy_setopt(e, CURLOPT_READFUNCTION, xfer_read);
		curl_easy_setopt(e, CURLOPT_READDATA, x);
		curl_easy_setopt(e, CURLOPT_SEEKFUNCTION, xfer_seek);
		curl_easy_setopt(e, CURLOPT_SEEKDATA, x);
		curl_easy_setopt(e, CURLOPT_INFILESIZE_LARGE, (curl_off_t)x->body_len);
	} else if (strcmp(x->method, "GET") != 0) {
		curl_easy_setopt(e, CURLOPT_CUSTOMREQUEST, x->method);
	}
	if (x->headers)
		curl_easy_setopt(e, CURLOPT_HTTPHEADER, x->headers);
	return 0;
}

/* Record how |x| ended and release its easy handle (the connection stays in
 * the multi handle's cache). */
static void xfer_finish(CURLM *m, struct store_xfer *x, CURLcode code)
{
	x->curl_code = code;
	curl_easy_getinfo(x->easy, CURLINFO_RESPONSE_CODE, &x->status);
	curl_off_t filetime = -1;
	if (curl_easy_getinfo(x->easy, CURLINFO_FILETIME_T, &filetime) == CURLE_OK)
		x->filetime = filetime;
	/* nginx answers a GET or HEAD of "refs/app" with a redirect to
	 * "refs/app/" when that is a directory; any other redirect (say, to
	 * https) stays an error. */
	char *location = NULL;
	bool redirect = x->status >= 300 && x->status < 400;
	if (redirect && curl_easy_getinfo(x->easy, CURLINFO_REDIRECT_URL, &location) == CURLE_OK && location) {
		size_t url_len = strlen(x->url);
		x->dir_redirect = strlen(location) == url_len + 1 && !strncmp(location, x->url, url_len) &&
				  location[url_len] == '/';
	}
	/* A write callback that refused a too-large body shows up as a write
	 * error; too_big is the real reason. */
	if (x->too_big)
		x->curl_code = CURLE_OK;
	curl_multi_remove_handle(m, x->easy);
	curl_easy_cleanup(x->easy);
	x->easy = NULL;
}

int store_http_client_run(struct store_http_client *c, struct store_xfer *xfers, size_t n)
{
	CURLM *m = client_take_multi(c);
	if (!m)
		return -ENOMEM;
	size_t next = 0, in_flight = 0, done = 0;
	int r = 0;
	while (done < n) {
		while (in_flight < c->parallel && next < n) {
			struct store_xfer *x = &xfers[next++];
			if (xfer_setup(c, x) < 0 || curl_multi_add_handle(m, x->easy) != CURLM_OK) {
				if (x->easy)
					curl_easy_cleanup(x->easy);
				x->easy = NULL;
				x->curl_code = CURLE_OUT_OF_MEMORY;
				done++;
				continue;
			}
			in_flight++;
		}
		if (done == n)
			break;
		int running = 0;
		CURLMcode mc = curl_multi_perform(m, &running);
		if (mc != CURLM_OK) {
			log_err("run HTTP transfers: %s", curl_multi_strerror(mc));
			r = -EIO;
			break;
		}
		bool finished_some = false;
		CURLMsg *msg;
		int queued;
		while ((msg = curl_multi_info_read(m, &queued))) {
			if (msg->msg != CURLMSG_DONE)
				continue;
			struct store_xfer *x = NULL;
			curl_easy_getinfo(msg->easy_handle, CURLINFO_PRIVATE, (char **)&x);
			xfer_finish(m, x, msg->data.result);
			in_flight--;
			done++;
			finished_some = true;
		}
		/* Wait for socket activity only when nothing finished: a
		 * finished slot is refilled at once. */
		if (!finished_some && running) {
			mc = curl_multi_poll(m, NULL, 0, 1000, NULL);
			if (mc != CURLM_OK) {
				log_err("wait for HTTP transfers: %s", curl_multi_strerror(mc));
				r = -EIO;
				break;
			}
		}
	}
	if (r < 0) {
		/* Abandon whatever is still in flight; callers see an error. */
		for (size_t i = 0; i < next; i++) {
			if (!xfers[i].easy)
				continue;
			curl_multi_remove_handle(m, xfers[i].easy);
			curl_easy_cleanup(xfers[i].easy);
			xfers[i].easy = NULL;
			xfers[i].curl_code = CURLE_ABORTED_BY_CALLBACK;
		}
		curl_multi_cleanup(m);
		return r;
	}
	client_return_multi(c, m);
	return 0;
}

int store_xfer_batch(struct store_http_client *c, size_t n, const struct store_xfer_batch_ops *ops, void *ctx,
		     bool absent_ok, bool *out_ok, const char *what, const char *where)
{
	struct store_xfer *xs = calloc(n ? n : 1, sizeof(*xs));
	if (!xs)
		return -ENOMEM;
	int r = 0;
	for (size_t i = 0; i < n && r == 0; i++) {
		store_xfer_init(&xs[i]);
		r = ops->prepare(ctx, i, &xs[i]);
	}
	if (r == 0)
		r = store_http_client_run(c, xs, n);
	size_t failed = 0;
	for (size_t i = 0; i < n && r == 0; i++) {
		int e = store_xfer_errno(&xs[i]);
		if (out_ok)
			out_ok[i] = e == 0;
		if (e == 0 || (absent_ok && e == -ENOENT))
			continue;
		if (failed++ == 0) {
			e = ops->failure(ctx, &xs[i]);
			if (e == -ENOENT && strcmp(xs[i].method, "PUT") == 0)
				e = -EIO;
			r = e < 0 ? e : -EIO;
		}
	}
	if (failed > 1)
		log_err("%s in %s: %zu of %zu failed", what, where, failed, n);
	for (size_t i = 0; i < n; i++)
		store_xfer_cleanup(&xs[i]);
	free(xs);
	return r;
}

/* ---- URLs ---------------------------------------------------------------------- */

/* True for names that resolve to this host only: localhost, 127.0.0.0/8,
 * ::1 (and ::ffff:127.x.y.z).  |host| may be a bracketed IPv6 literal. */
static bool host_is_loopback(const char *host)
{
	if (!strcasecmp(host, "localhost"))
		return true;
	struct in_addr a4;
	if (inet_pton(AF_INET, host, &a4) == 1)
		return (ntohl(a4.s_addr) >> 24) == 127;
	char buf[64];
	size_t len = strlen(host);
	if (len >= 2 && len < sizeof(buf) && host[0] == '[' && host[len - 1] == ']') {
		memcpy(buf, host + 1, len - 2);
		buf[len - 2] = 0;
		char *zone = strchr(buf, '%');
		if (zone)
			*zone = 0;
		struct in6_addr a6;
		if (inet_pton(AF_INET6, buf, &a6) == 1)
			return IN6_IS_ADDR_LOOPBACK(&a6) || (IN6_IS_ADDR_V4MAPPED(&a6) && a6.s6_addr[12] == 127);
	}
	return false;
}

int store_url_check(const char *url, bool insecure, const char *what, char **out_host)
{
	CURLU *u = curl_url();
	if (!u)
		return -ENOMEM;
	char *scheme = NULL, *host = NULL, *query = NULL, *fragment = NULL;
	int r = 0;
	CURLUcode uc = curl_url_set(u, CURLUPART_URL, url, 0);
	if (uc != CURLUE_OK) {
		log_err("%s %s: %s", what, url, curl_url_strerror(uc));
		r = -EINVAL;
		goto out;
	}
	curl_url_get(u, CURLUPART_SCHEME, &scheme, 0);
	curl_url_get(u, CURLUPART_HOST, &host, 0);
	curl_url_get(u, CURLUPART_QUERY, &query, 0);
	curl_url_get(u, CURLUPART_FRAGMENT, &fragment, 0);
	if (!scheme || (strcmp(scheme, "http") && strcmp(scheme, "https"))) {
		log_err("%s %s: only http:// and https:// are supported", what, url);
		r = -EINVAL;
	} else if (!host || !*host) {
		log_err("%s %s: no host name", what, url);
		r = -EINVAL;
	} else if (query || fragment) {
		log_err("%s %s: a query or fragment is not allowed here", what, url);
		r = -EINVAL;
	} else if (!strcmp(scheme, "http") && !insecure && !host_is_loopback(host)) {
		log_err("%s %s: refusing plain http to non-loopback host %s (objects would cross the network "
			"unprotected); use https, or allow it explicitly with the insecure option",
			what, url, host);
		r = -EPERM;
	}
	if (!r && out_host) {
		*out_host = strdup(host);
		if (!*out_host)
			r = -ENOMEM;
	}
out:
	curl_free(scheme);
	curl_free(host);
	curl_free(query);
	curl_free(fragment);
	curl_url_cleanup(u);
	return r;
}

/* ---- the http backend -------------------------------------------------------- */

struct http_store {
	char *base;	/* "http://host:port/prefix/": always ends in '/' */
	char *hint;	/* "is the origin at ... running?" */
	struct store_http_client *client;
};

static int http_open(const char *uri, const struct store_options *opt, void **out_state, char **out_description)
{
	int r = store_curl_global_init();
	if (r < 0)
		return r;
	r = store_url_check(uri, opt->insecure, "open store", NULL);
	if (r < 0)
		return r;
	struct http_store *hs = calloc(1, sizeof(*hs));
	if (!hs)
		return -ENOMEM;
	size_t len = strlen(uri);
	while (len && uri[len - 1] == '/')
		len--;
	/* "http://host" alone has a path of "/"; keep exactly one slash. */
	hs->base = xasprintf("%.*s/", (int)len, uri);
	hs->hint = hs->base ? xasprintf("is the origin at %s running and reachable?", hs->base) : NULL;
	*out_description = hs->base ? strdup(hs->base) : NULL;
	if (!hs->base || !hs->hint || !*out_description ||
	    store_http_client_new(opt->parallel, opt->timeout_ms, &hs->client) < 0) {
		free(*out_description);
		*out_description = NULL;
		free(hs->base);
		free(hs->hint);
		free(hs);
		return -ENOMEM;
	}
	*out_state = hs;
	return 0;
}

static void http_close(void *state)
{
	struct http_store *hs = state;
	store_http_client_free(hs->client);
	free(hs->base);
	free(hs->hint);
	free(hs);
}

/* Prepare |x| as |method| on the object |key| ("" or ending in '/' for a
 * directory index).  Returns 0 or -ENOMEM. */
static int http_xfer_prepare(struct http_store *hs, struct store_xfer *x, const char *method, const char *key)
{
	store_xfer_init(x);
	x->method = method;
	char *path = http_uri_encode(key, strlen(key), true);
	if (!path)
		return -ENOMEM;
	x->url = xasprintf("%s%s", hs->base, path);
	free(path);
	if (!x->url)
		return -ENOMEM;
	/* Without this curl waits for "100 Continue" before large bodies. */
	if (!strcmp(method, "PUT") && store_xfer_add_header(x, "Expect:") < 0)
		return -ENOMEM;
	return 0;
}

/* Run one prepared transfer and map its outcome; logs failures other than
 * -ENOENT. */
static int http_run_one(struct http_store *hs, struct store_xfer *x)
{
	int r = store_http_client_run(hs->client, x, 1);
	if (r < 0)
		return r;
	r = store_xfer_errno(x);
	if (r < 0 && r != -ENOENT)
		store_xfer_log(x, r, hs->hint);
	return r;
}

static int http_get(void *state, const char *key, size_t max_len, uint8_t **out, size_t *out_len)
{
	struct http_store *hs = state;
	struct store_xfer x;
	int r = http_xfer_prepare(hs, &x, "GET", key);
	if (r == 0) {
		x.max_len = max_len;
		r = http_run_one(hs, &x);
	}
	if (r == 0) {
		*out = x.resp ? x.resp : malloc(1);
		*out_len = x.resp_len;
		x.resp = NULL;
		if (!*out)
			r = -ENOMEM;
	}
	store_xfer_cleanup(&x);
	return r;
}

struct http_batch {
	struct http_store *hs;
	const char *method;
	const char *const *keys;
	const void *const *bufs;
	const size_t *lens;
};

static int http_batch_prepare(void *ctx, size_t i, struct store_xfer *x)
{
	struct http_batch *b = ctx;
	int r = http_xfer_prepare(b->hs, x, b->method, b->keys[i]);
	if (b->bufs) {
		x->body = b->bufs[i];
		x->body_len = b->lens[i];
	}
	return r;
}

static int http_batch_failure(void *ctx, const struct store_xfer *x)
{
	struct http_batch *b = ctx;
	int e = store_xfer_errno(x);
	/* A 404 on PUT means the server refused to create the path. */
	store_xfer_log(x, e == -ENOENT && b->bufs ? -EIO : e, b->hs->hint);
	return e;
}

static const struct store_xfer_batch_ops http_batch_ops = {
	.prepare = http_batch_prepare,
	.failure = http_batch_failure,
};

static int http_put_batch(void *state, const char *const *keys, const void *const *bufs, const size_t *lens, size_t n)
{
	struct http_batch b = {.hs = state, .method = "PUT", .keys = keys, .bufs = bufs, .lens = lens};
	return store_xfer_batch(b.hs->client, n, &http_batch_ops, &b, false, NULL, "put", b.hs->base);
}

static int http_put(void *state, const char *key, const void *buf, size_t len)
{
	return http_put_batch(state, &key, &buf, &len, 1);
}

static int http_exists_batch(void *state, const char *const *keys, size_t n, bool *out_exists)
{
	struct http_batch b = {.hs = state, .method = "HEAD", .keys = keys};
	return store_xfer_batch(b.hs->client, n, &http_batch_ops, &b, true, out_exists, "check objects",
				b.hs->base);
}

static int http_del(void *state, const char *key)
{
	struct http_store *hs = state;
	struct store_xfer x;
	int r = http_xfer_prepare(hs, &x, "DELETE", key);
	if (r == 0)
		r = http_run_one(hs, &x);
	store_xfer_cleanup(&x);
	return r == -ENOENT ? 0 : r;
}

static int http_age(void *state, const char *key, double *out_seconds)
{
	struct http_store *hs = state;
	struct store_xfer x;
	int r = http_xfer_prepare(hs, &x, "HEAD", key);
	if (r == 0)
		r = http_run_one(hs, &x);
	if (r == 0 && x.filetime < 0) {
		log_err("age of %s%s: the server sent no Last-Modified header", hs->base, key);
		r = -EIO;
	}
	if (r == 0) {
		double age = difftime(time(NULL), (time_t)x.filetime);
		/* Last-Modified has whole seconds; never report the future. */
		*out_seconds = age < 0 ? 0 : age;
	}
	store_xfer_cleanup(&x);
	return r;
}

struct http_walk {
	struct http_store *hs;
	const char *prefix;
	size_t prefix_len;
	store_list_cb cb;
	void *arg;
};

/* List the directory |dir| ("" or ending in '/') from its JSON index and
 * report matching files, recursing into directories that can still match.
 * A missing directory lists as empty.  Returns 0, the callback's value,
 * -EBADMSG for an index that is not what nginx sends (logged), or -errno. */
static int http_walk_dir(struct http_walk *w, const char *dir, int depth)
{
	struct store_xfer x;
	int r = http_xfer_prepare(w->hs, &x, "GET", dir);
	if (r == 0) {
		x.max_len = LIST_JSON_MAX;
		r = http_run_one(w->hs, &x);
	}
	if (r < 0) {
		store_xfer_cleanup(&x);
		return r == -ENOENT ? 0 : r;
	}
	json_error_t jerr;
	json_t *index = json_loadb((const char *)(x.resp ? x.resp : (uint8_t *)""), x.resp_len, 0, &jerr);
	if (!index || !json_is_array(index)) {
		log_err("list %s: the directory index is not a JSON array (%s); the origin needs \"autoindex on; "
			"autoindex_format json;\"",
			x.url, index ? "wrong type" : jerr.text);
		json_decref(index);
		store_xfer_cleanup(&x);
		return -EBADMSG;
	}
	size_t dir_len = strlen(dir);
	size_t i;
	json_t *entry;
	json_array_foreach(index, i, entry)
	{
		json_t *jname = json_object_get(entry, "name"), *jtype = json_object_get(entry, "type");
		if (!json_is_object(entry) || !json_is_string(jname) || !json_is_string(jtype)) {
			log_err("list %s: entry %zu lacks a string \"name\" and \"type\"", x.url, i);
			r = -EBADMSG;
			break;
		}
		const char *name = json_string_value(jname), *type = json_string_value(jtype);
		size_t name_len = json_string_length(jname);
		if (name_len == 0 || name_len != strlen(name) || strchr(name, '/') || !strcmp(name, ".") ||
		    !strcmp(name, "..")) {
			log_err("list %s: entry %zu has an impossible name", x.url, i);
			r = -EBADMSG;
			break;
		}
		if (!strncmp(name, STORE_TMP_PREFIX, strlen(STORE_TMP_PREFIX)) || dir_len + name_len + 1 > STORE_MAX_KEY)
			continue;
		char key[STORE_MAX_KEY + 2];
		memcpy(key, dir, dir_len);
		memcpy(key + dir_len, name, name_len + 1);
		size_t key_len = dir_len + name_len;
		if (!strcmp(type, "file")) {
			if (key_len >= w->prefix_len && !memcmp(key, w->prefix, w->prefix_len) && store_key_valid(key, false)) {
				r = w->cb(w->arg, key);
				if (r)
					break;
			}
		} else if (!strcmp(type, "directory")) {
			key[key_len] = '/';
			key[key_len + 1] = 0;
			size_t cmp = key_len + 1 < w->prefix_len ? key_len + 1 : w->prefix_len;
			if (memcmp(key, w->prefix, cmp) != 0)
				continue;
			if (depth >= LIST_MAX_DEPTH) {
				log_warn("list %s%s: nested too deeply, skipped", w->hs->base, key);
				continue;
			}
			r = http_walk_dir(w, key, depth + 1);
			if (r)
				break;
		} else if (strcmp(type, "other") != 0) {
			log_err("list %s: entry %zu has unknown type \"%.40s\"", x.url, i, type);
			r = -EBADMSG;
			break;
		}
	}
	json_decref(index);
	store_xfer_cleanup(&x);
	return r;
}

static int http_list(void *state, const char *prefix, store_list_cb cb, void *arg)
{
	struct http_walk w = { .hs = state, .prefix = prefix, .prefix_len = strlen(prefix), .cb = cb, .arg = arg };
	/* Start at the deepest directory the prefix names completely. */
	char dir[STORE_MAX_KEY + 1];
	const char *slash = strrchr(prefix, '/');
	size_t dir_len = slash ? (size_t)(slash - prefix) + 1 : 0;
	memcpy(dir, prefix, dir_len);
	dir[dir_len] = 0;
	return http_walk_dir(&w, dir, 0);
}

static const char *const http_schemes[] = { "http", "https", NULL };

const struct store_ops store_http_ops = {
	.name = "http",
	.schemes = http_schemes,
	.open = http_open,
	.close = http_close,
	.get = http_get,
	.put = http_put,
	.put_batch = http_put_batch,
	.exists_batch = http_exists_batch,
	.del = http_del,
	.list = http_list,
	.age = http_age,
};
