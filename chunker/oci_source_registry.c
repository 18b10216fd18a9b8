/* OCI image source: docker://HOST[:PORT]/REPO[:TAG|@DIGEST], a registry
 * speaking the OCI distribution API v2.
 *
 * Manifests come from /v2/REPO/manifests/REF, the config and layers from
 * /v2/REPO/blobs/DIGEST; oci_source.c walks from the first document to the
 * config.  A 401 is answered once per request with a bearer token from the
 * realm the challenge names (with basic credentials when we have them) or
 * with basic auth.  Plain http is for loopback registries and --insecure.
 *
 * Every response is untrusted: headers are cut to fixed buffers, bodies are
 * bounded before they are stored (the declared size of what was asked for,
 * 64 KiB of an error body, 1 MiB of a token reply), every size is added with
 * checked arithmetic, and the parsers of headers, challenges, error bodies
 * and token replies are plain functions a fuzz target drives
 * (chunker/fuzz/fuzz_oci_registry.c).
 *
 * Registry state lives in the handle; the only process-wide state is
 * libcurl's global init, done once.  A source serialises its own registry
 * requests, so layers may be opened from several threads.
 */
#include "oci_source_ops.h"

#include <arpa/inet.h>
#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

#include <curl/curl.h>
#include <jansson.h>

struct registry {
	char *host;	/* as given, "127.0.0.1:5000", for messages and URLs */
	char *base;	/* "https://host" */
	char *repo;
	char *ref;	/* tag or "sha256:..." */
	bool ref_is_digest;
	bool plain_http_ok; /* http allowed for the token realm and redirects */
	char *user, *pass;
	char *bearer;	/* "Authorization: Bearer ..." once a token is held */
	bool use_basic;	/* the registry asked for basic auth */
	char *tmp_dir;
	CURL *curl;	/* kept for connection reuse; guarded by |lock| */
	pthread_mutex_t lock;
	bool lock_init;
};

static pthread_once_t curl_once = PTHREAD_ONCE_INIT;
static CURLcode curl_init_rc;
static void curl_init_once(void) { curl_init_rc = curl_global_init(CURL_GLOBAL_DEFAULT); }

#define MANIFEST_ACCEPT                                                                                        \
	"Accept: application/vnd.oci.image.manifest.v1+json, application/vnd.oci.image.index.v1+json, "           \
	"application/vnd.docker.distribution.manifest.v2+json, "                                                \
	"application/vnd.docker.distribution.manifest.list.v2+json"
#define ERROR_BODY_MAX (64u << 10)

/* Loopback registries (tests, local caches) may speak plain http. */
static bool host_is_loopback(const char *hostport)
{
	char h[256];
	const char *end;
	if (hostport[0] == '[') {
		end = strchr(hostport, ']');
		if (!end)
			return false;
		snprintf(h, sizeof(h), "%.*s", (int)(end - hostport - 1), hostport + 1);
	} else {
		end = strchr(hostport, ':');
		snprintf(h, sizeof(h), "%.*s", end ? (int)(end - hostport) : (int)strlen(hostport), hostport);
	}
	if (strcasecmp(h, "localhost") == 0)
		return true;
	struct in_addr a4;
	struct in6_addr a6;
	if (inet_pton(AF_INET, h, &a4) == 1)
		return (ntohl(a4.s_addr) >> 24) == 127;
	if (inet_pton(AF_INET6, h, &a6) == 1)
		return IN6_IS_ADDR_LOOPBACK(&a6);
	return false;
}

static bool valid_repo(const char *r)
{
	if (!*r || strlen(r) > 255)
		return false;
	for (const char *p = r; *p; p++)
		if (!(islower((unsigned char)*p) || isdigit((unsigned char)*p) || strchr("._-/", *p)))
			return false;
	return r[0] != '/' && r[strlen(r) - 1] != '/' && !strstr(r, "//");
}

static bool valid_tag(const char *t)
{
	size_t n = strlen(t);
	if (n == 0 || n > 128 || t[0] == '.' || t[0] == '-')
		return false;
	for (const char *p = t; *p; p++)
		if (!(isalnum((unsigned char)*p) || strchr("_.-", *p)))
			return false;
	return true;
}

/* ---- response parsing: every byte here comes from the network ------------- */

/* Trim |<v, n>| (spaces and tabs before, CR, LF and spaces after) into
 * |<dst, cap>|, cut to fit. */
static void copy_header_value(char *dst, size_t cap, const char *v, size_t n)
{
	while (n && (*v == ' ' || *v == '\t')) {
		v++;
		n--;
	}
	while (n && (v[n - 1] == '\r' || v[n - 1] == '\n' || v[n - 1] == ' '))
		n--;
	snprintf(dst, cap, "%.*s", (int)(n < cap ? n : cap - 1), v);
}

/* Contract in oci_source_ops.h. */
void registry_header_line(struct registry_headers *h, const char *p, size_t n)
{
	/* Each response of a redirect or auth exchange starts afresh. */
	if (n >= 5 && strncmp(p, "HTTP/", 5) == 0) {
		h->content_type[0] = h->docker_digest[0] = h->www_auth[0] = 0;
		return;
	}
	const struct {
		const char *name;
		char *dst;
		size_t cap;
	} want[] = {
		{"content-type:", h->content_type, sizeof(h->content_type)},
		{"docker-content-digest:", h->docker_digest, sizeof(h->docker_digest)},
		{"www-authenticate:", h->www_auth, sizeof(h->www_auth)},
	};
	for (size_t i = 0; i < sizeof(want) / sizeof(want[0]); i++) {
		size_t l = strlen(want[i].name);
		if (n >= l && strncasecmp(p, want[i].name, l) == 0)
			copy_header_value(want[i].dst, want[i].cap, p + l, n - l);
	}
}

/* Contract in oci_source_ops.h. */
void registry_describe_error(long status, const uint8_t *body, size_t len, char *out, size_t cap)
{
	int n = snprintf(out, cap, "%ld", status);
	json_t *root = body ? json_loadb((const char *)body, len, 0, NULL) : NULL;
	json_t *errs = json_object_get(root, "errors"), *e0 = json_array_get(errs, 0);
	json_t *code = json_object_get(e0, "code"), *msg = json_object_get(e0, "message");
	if (n > 0 && (size_t)n < cap && json_is_string(code))
		snprintf(out + n, cap - (size_t)n, " %.64s%s%.160s", json_string_value(code),
			 json_is_string(msg) ? ": " : "", json_is_string(msg) ? json_string_value(msg) : "");
	json_decref(root);
}

/* Copy one challenge parameter value starting at |v| (quoted with
 * backslash escapes, or bare up to ',' or ' ') into |<out, cap>|, cutting
 * what does not fit.  Returns the first byte after the value. */
static const char *challenge_value(const char *v, char *out, size_t cap)
{
	size_t n = 0;
	if (*v == '"') {
		v++;
		while (*v && *v != '"') {
			if (*v == '\\' && v[1])
				v++;
			if (n + 1 < cap)
				out[n++] = *v;
			v++;
		}
		if (*v == '"')
			v++;
	} else {
		while (*v && *v != ',' && *v != ' ') {
			if (n + 1 < cap)
				out[n++] = *v;
			v++;
		}
	}
	out[n] = 0;
	return v;
}

/* Contract in oci_source_ops.h. */
void registry_parse_challenge(const char *v, struct registry_challenge *c)
{
	c->realm[0] = c->service[0] = c->scope[0] = 0;
	size_t i = 0;
	while (*v && *v != ' ' && i + 1 < sizeof(c->scheme))
		c->scheme[i++] = *v++;
	c->scheme[i] = 0;
	while (*v) {
		while (*v == ' ' || *v == ',')
			v++;
		const char *k = v;
		while (*v && *v != '=' && *v != ',')
			v++;
		size_t kl = (size_t)(v - k);
		if (*v != '=')
			continue;
		v++;
		char skip[1], *dst = skip; /* other parameters are read and dropped */
		size_t cap = sizeof(skip);
		if (kl == 5 && strncasecmp(k, "realm", 5) == 0) {
			dst = c->realm;
			cap = sizeof(c->realm);
		} else if (kl == 7 && strncasecmp(k, "service", 7) == 0) {
			dst = c->service;
			cap = sizeof(c->service);
		} else if (kl == 5 && strncasecmp(k, "scope", 5) == 0) {
			dst = c->scope;
			cap = sizeof(c->scope);
		}
		v = challenge_value(v, dst, cap);
	}
}

/* Contract in oci_source_ops.h. */
bool registry_realm_allowed(const char *realm, bool plain_http_ok)
{
	if (strncmp(realm, "https://", 8) == 0)
		return true;
	if (strncmp(realm, "http://", 7) != 0)
		return false;
	const char *hp = realm + 7;
	char host[256];
	size_t hl = strcspn(hp, "/?#");
	snprintf(host, sizeof(host), "%.*s", (int)(hl < sizeof(host) ? hl : sizeof(host) - 1), hp);
	return plain_http_ok || host_is_loopback(host);
}

/* Contract in oci_source_ops.h. */
int registry_parse_token(const uint8_t *buf, size_t len, char **out_header)
{
	*out_header = NULL;
	json_t *root = buf ? json_loadb((const char *)buf, len, 0, NULL) : NULL;
	json_t *tok = json_object_get(root, "token");
	if (!json_is_string(tok) || !json_string_length(tok))
		tok = json_object_get(root, "access_token");
	const char *ts = json_is_string(tok) ? json_string_value(tok) : NULL;
	bool ok = ts && *ts && strlen(ts) == json_string_length(tok) && strlen(ts) < 16384;
	for (const char *p = ts; ok && *p; p++)
		ok = *p > ' ' && *p < 127; /* no header injection */
	int r = -EBADMSG;
	if (ok) {
		*out_header = xasprintf("Authorization: Bearer %s", ts);
		r = *out_header ? 0 : -ENOMEM;
	}
	json_decref(root);
	return r;
}

/* ---- one response ---------------------------------------------------------- */

struct http_resp {
	long status;
	struct registry_headers hdr;
	/* body sinks: memory (buf) or a file (fd >= 0) */
	int fd;
	uint8_t *buf;
	size_t len, cap, max;
	bool too_big;
	int write_err;
	uint8_t *err_body;
	size_t err_len;
	CURL *curl;
};

static size_t on_header(char *p, size_t size, size_t nmemb, void *arg)
{
	struct http_resp *h = arg;
	size_t n;
	if (!ck_mul_size(size, nmemb, &n))
		return 0; /* aborts the transfer */
	registry_header_line(&h->hdr, p, n);
	return n;
}

/* Keep a bounded prefix of an error body: it only feeds the message. */
static void keep_error_body(struct http_resp *h, const char *p, size_t n)
{
	size_t room = h->err_len < ERROR_BODY_MAX ? ERROR_BODY_MAX - h->err_len : 0, k = n < room ? n : room, nl;
	if (!k || !ck_add_size(h->err_len, k + 1, &nl))
		return;
	uint8_t *nb = realloc(h->err_body, nl);
	if (!nb)
		return;
	memcpy(nb + h->err_len, p, k);
	h->err_len += k;
	nb[h->err_len] = 0;
	h->err_body = nb;
}

/* Make the memory sink hold |total| bytes (total <= h->max), doubling from
 * 16 KiB and never past h->max.  Returns 0 or -ENOMEM. */
static int reserve_body(struct http_resp *h, size_t total)
{
	if (total <= h->cap)
		return 0;
	size_t nc = h->cap ? h->cap : 16384;
	while (nc < total)
		if (nc > h->max / 2 || !ck_mul_size(nc, 2, &nc))
			nc = h->max;
	uint8_t *nb = realloc(h->buf, nc);
	if (!nb)
		return -ENOMEM;
	h->buf = nb;
	h->cap = nc;
	return 0;
}

static size_t on_body(char *p, size_t size, size_t nmemb, void *arg)
{
	struct http_resp *h = arg;
	size_t n, total;
	if (!ck_mul_size(size, nmemb, &n))
		return 0;
	long code = 0;
	curl_easy_getinfo(h->curl, CURLINFO_RESPONSE_CODE, &code);
	if (code < 200 || code >= 300) {
		keep_error_body(h, p, n);
		return n;
	}
	if (!ck_add_size(h->len, n, &total) || total > h->max) {
		h->too_big = true;
		return 0; /* aborts the transfer */
	}
	if (h->fd >= 0) {
		size_t off = 0;
		while (off < n) {
			ssize_t w = write(h->fd, p + off, n - off);
			if (w < 0 && errno == EINTR)
				continue;
			if (w <= 0) {
				h->write_err = w < 0 ? errno : EIO;
				return 0;
			}
			off += (size_t)w;
		}
	} else {
		if (reserve_body(h, total) < 0) {
			h->write_err = ENOMEM;
			return 0;
		}
		memcpy(h->buf + h->len, p, n);
	}
	h->len = total;
	return n;
}

/* One HTTP GET with the registry's current credentials. */
static int http_get_once(struct registry *reg, const char *url, const char *accept, bool send_auth,
			 struct http_resp *h)
{
	CURL *c = reg->curl;
	char errbuf[CURL_ERROR_SIZE] = "";
	struct curl_slist *hdrs = NULL, *t;
	curl_easy_reset(c);
	h->curl = c;
	if (accept && (t = curl_slist_append(hdrs, accept)))
		hdrs = t;
	if (send_auth && reg->bearer && (t = curl_slist_append(hdrs, reg->bearer)))
		hdrs = t;
	curl_easy_setopt(c, CURLOPT_URL, url);
	curl_easy_setopt(c, CURLOPT_HTTPHEADER, hdrs);
	curl_easy_setopt(c, CURLOPT_USERAGENT, "kindling-chunkify/1");
	curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
	curl_easy_setopt(c, CURLOPT_ERRORBUFFER, errbuf);
	curl_easy_setopt(c, CURLOPT_FOLLOWLOCATION, 1L);
	curl_easy_setopt(c, CURLOPT_MAXREDIRS, 5L);
	curl_easy_setopt(c, CURLOPT_PROTOCOLS_STR, "http,https");
	/* Blob redirects (to object stores) must not downgrade to http. */
	curl_easy_setopt(c, CURLOPT_REDIR_PROTOCOLS_STR, reg->plain_http_ok ? "http,https" : "https");
	curl_easy_setopt(c, CURLOPT_CONNECTTIMEOUT, 30L);
	curl_easy_setopt(c, CURLOPT_LOW_SPEED_LIMIT, 1L);
	curl_easy_setopt(c, CURLOPT_LOW_SPEED_TIME, 60L);
	curl_easy_setopt(c, CURLOPT_HEADERFUNCTION, on_header);
	curl_easy_setopt(c, CURLOPT_HEADERDATA, h);
	curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, on_body);
	curl_easy_setopt(c, CURLOPT_WRITEDATA, h);
	if (send_auth && reg->use_basic && reg->user) {
		curl_easy_setopt(c, CURLOPT_HTTPAUTH, CURLAUTH_BASIC);
		curl_easy_setopt(c, CURLOPT_USERNAME, reg->user);
		curl_easy_setopt(c, CURLOPT_PASSWORD, reg->pass ? reg->pass : "");
	}
	CURLcode cr = curl_easy_perform(c);
	curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &h->status);
	curl_slist_free_all(hdrs);
	curl_easy_setopt(c, CURLOPT_ERRORBUFFER, NULL);
	if (h->too_big)
		return -EFBIG;
	if (h->write_err)
		return -h->write_err;
	if (cr != CURLE_OK) {
		log_err("registry %s: GET %s: %s (is the registry running and reachable?)", reg->host, url,
			*errbuf ? errbuf : curl_easy_strerror(cr));
		return -EIO;
	}
	return 0;
}

static void resp_reset(struct http_resp *h)
{
	free(h->err_body);
	h->err_body = NULL;
	h->err_len = 0;
	h->len = 0;
	h->too_big = false;
	h->write_err = 0;
	h->status = 0;
	if (h->fd >= 0) {
		if (ftruncate(h->fd, 0) < 0 || lseek(h->fd, 0, SEEK_SET) < 0)
			h->write_err = errno;
	}
}

/* Free what a response holds (not its fd) and make it a fresh memory
 * response of at most |max| bytes. */
static void resp_restart(struct http_resp *h, size_t max)
{
	free(h->buf);
	free(h->err_body);
	*h = (struct http_resp){.fd = -1, .max = max};
}

/* Fetch a bearer token as the challenge asks, with basic credentials if we
 * have them. */
static int fetch_token(struct registry *reg, const char *realm, const char *service, const char *scope)
{
	if (!registry_realm_allowed(realm, reg->plain_http_ok)) {
		log_err("registry %s: refusing token realm '%.200s' (not https; use --insecure to allow)", reg->host,
			realm);
		return -EACCES;
	}
	char *esc_service = curl_easy_escape(reg->curl, service, 0);
	char *esc_scope = curl_easy_escape(reg->curl, scope, 0);
	char *url = NULL;
	if (esc_service && esc_scope)
		url = xasprintf("%s%cservice=%s&scope=%s", realm, strchr(realm, '?') ? '&' : '?', esc_service,
				esc_scope);
	curl_free(esc_service);
	curl_free(esc_scope);
	if (!url)
		return -ENOMEM;
	struct http_resp h = {.fd = -1, .max = 1u << 20};
	bool basic = reg->use_basic;
	reg->use_basic = reg->user != NULL;
	int r = http_get_once(reg, url, NULL, true, &h);
	reg->use_basic = basic;
	if (r == -EFBIG)
		log_err("registry %s: token reply from %s is too large", reg->host, realm);
	if (r < 0)
		goto out;
	if (h.status != 200) {
		char st[256];
		registry_describe_error(h.status, h.err_body, h.err_len, st, sizeof(st));
		log_err("registry %s: token server %s refused: %s%s", reg->host, realm, st,
			reg->user ? " (check KINDLING_REGISTRY_USER / KINDLING_REGISTRY_PASSWORD)"
				  : " (credentials may be needed: set KINDLING_REGISTRY_USER / KINDLING_REGISTRY_PASSWORD)");
		r = h.status == 401 || h.status == 403 ? -EACCES : -EIO;
		goto out;
	}
	char *bearer;
	if ((r = registry_parse_token(h.buf, h.len, &bearer)) == -EBADMSG)
		log_err("registry %s: token server %s sent no usable \"token\" or \"access_token\"", reg->host, realm);
	if (r < 0)
		goto out;
	if (reg->bearer)
		explicit_bzero(reg->bearer, strlen(reg->bearer));
	free(reg->bearer);
	reg->bearer = bearer;
out:
	free(url);
	resp_restart(&h, 0);
	return r;
}

/* GET |path| below the registry's /v2/, authenticating when challenged.
 * The body goes to |h| (memory or fd) bounded by h->max.  |what| names the
 * object for messages.  Returns 0 on a 2xx, or -errno (logged). */
static int registry_get(struct registry *reg, const char *what, const char *path, const char *accept,
			struct http_resp *h)
{
	char *url = xasprintf("%s/v2/%s", reg->base, path);
	if (!url)
		return -ENOMEM;
	int r = 0;
	bool tried_bearer = false, tried_basic = false;
	for (int attempt = 0;; attempt++) {
		resp_reset(h);
		if (h->write_err) {
			r = -h->write_err;
			break;
		}
		r = http_get_once(reg, url, accept, true, h);
		if (r == -EFBIG)
			log_err("registry %s: %s: the response is larger than the %zu bytes expected", reg->host, what,
				h->max);
		else if (r < 0 && h->write_err)
			log_err("registry %s: %s: writing the download: %s", reg->host, what, strerror(h->write_err));
		if (r < 0)
			break;
		if (h->status >= 200 && h->status < 300)
			break;
		if (h->status == 401 && attempt < 3) {
			struct registry_challenge ch;
			registry_parse_challenge(h->hdr.www_auth, &ch);
			if (strcasecmp(ch.scheme, "Bearer") == 0 && *ch.realm && !tried_bearer) {
				if (!*ch.scope)
					snprintf(ch.scope, sizeof(ch.scope), "repository:%s:pull", reg->repo);
				tried_bearer = true;
				if ((r = fetch_token(reg, ch.realm, ch.service, ch.scope)) < 0)
					break;
				continue;
			}
			if (strcasecmp(ch.scheme, "Basic") == 0 && reg->user && !tried_basic) {
				tried_basic = true;
				reg->use_basic = true;
				continue;
			}
		}
		char st[256];
		registry_describe_error(h->status, h->err_body, h->err_len, st, sizeof(st));
		const char *hint = "";
		if (h->status == 401)
			hint = reg->user ? " (credentials rejected; check KINDLING_REGISTRY_USER / KINDLING_REGISTRY_PASSWORD)"
					 : " (authentication required: set KINDLING_REGISTRY_USER and "
					   "KINDLING_REGISTRY_PASSWORD)";
		log_err("registry %s: %s: %s%s", reg->host, what, st, hint);
		r = h->status == 404 ? -ENOENT : (h->status == 401 || h->status == 403) ? -EACCES : -EIO;
		break;
	}
	free(url);
	return r;
}

/* GET /v2/REPO/|kind|/|ref| into memory, at most |max| bytes, into a fresh
 * |h| (resp_restart frees it). */
static int registry_get_doc(struct registry *reg, const char *what, const char *kind, const char *ref,
			    const char *accept, size_t max, struct http_resp *h)
{
	*h = (struct http_resp){.fd = -1, .max = max};
	char *path = xasprintf("%s/%s/%s", reg->repo, kind, ref);
	if (!path)
		return -ENOMEM;
	int r = registry_get(reg, what, path, accept, h);
	free(path);
	return r;
}

/* Move a fetched body into |out| (its buf and len). */
static void take_body(struct http_resp *h, struct oci_doc *out)
{
	out->buf = h->buf;
	out->len = h->len;
	h->buf = NULL;
	h->len = 0;
}

/* The manifest or index |ref| (a tag, or the digest |digest| names), at
 * most |size| bytes.  By tag, a Docker-Content-Digest header must match the
 * bytes when the registry sends one. */
static int registry_fetch_manifest(void *state, const char *ref, const char *digest, uint64_t size,
				   struct oci_doc *out)
{
	struct registry *reg = state;
	char what[512];
	snprintf(what, sizeof(what), "manifest for %s%c%s", reg->repo, strncmp(ref, "sha256:", 7) ? ':' : '@', ref);
	snprintf(out->what, sizeof(out->what), "registry %s: %s", reg->host, what);
	snprintf(out->index_what, sizeof(out->index_what), "%s", out->what);
	struct http_resp h;
	int r = registry_get_doc(reg, what, "manifests", ref, MANIFEST_ACCEPT, (size_t)size, &h);
	if (r < 0)
		goto out;
	oci_digest_str(h.buf, h.len, out->digest);
	if (*digest && strcmp(out->digest, digest) != 0) {
		log_err("%s: digest mismatch: expected %s, got %s", out->what, digest, out->digest);
		r = -EBADMSG;
		goto out;
	}
	if (!*digest && strncmp(h.hdr.docker_digest, "sha256:", 7) == 0 &&
	    strcmp(h.hdr.docker_digest, out->digest) != 0) {
		log_err("%s: digest mismatch: Docker-Content-Digest says %s, content hashes to %s", out->what,
			h.hdr.docker_digest, out->digest);
		r = -EBADMSG;
		goto out;
	}
	snprintf(out->content_type, sizeof(out->content_type), "%s", h.hdr.content_type);
	take_body(&h, out);
out:
	resp_restart(&h, 0);
	return r;
}

static int registry_fetch_config(void *state, const char *digest, struct oci_doc *out)
{
	struct registry *reg = state;
	char what[512];
	snprintf(what, sizeof(what), "config %s of %s", digest, reg->repo);
	snprintf(out->what, sizeof(out->what), "registry %s: %s", reg->host, what);
	struct http_resp h;
	int r = registry_get_doc(reg, what, "blobs", digest, NULL, OCI_MAX_JSON, &h);
	if (r == 0)
		take_body(&h, out);
	resp_restart(&h, 0);
	return r;
}

static int registry_parse_spec(struct registry *reg, const char *spec, const char *rest)
{
	const char *slash = strchr(rest, '/');
	if (!slash || slash == rest || !slash[1]) {
		log_err("%s: expected docker://HOST[:PORT]/REPO[:TAG|@DIGEST]", spec);
		return -EINVAL;
	}
	reg->host = strndup(rest, (size_t)(slash - rest));
	char *repo = strdup(slash + 1);
	if (!reg->host || !repo) {
		free(repo);
		return -ENOMEM;
	}
	char *at = strchr(repo, '@'), *ref = NULL;
	if (at) {
		*at = 0;
		ref = at + 1;
		if (strncmp(ref, "sha256:", 7) != 0 || !is_sha256_hex(ref + 7)) {
			log_err("%s: '%s' is not a sha256 digest", spec, ref);
			free(repo);
			return -EINVAL;
		}
		reg->ref_is_digest = true;
	} else {
		char *colon = strrchr(repo, ':');
		if (colon && !strchr(colon, '/')) {
			*colon = 0;
			ref = colon + 1;
		}
		if (ref && !valid_tag(ref)) {
			log_err("%s: '%s' is not a valid tag", spec, ref);
			free(repo);
			return -EINVAL;
		}
	}
	if (!valid_repo(repo)) {
		log_err("%s: '%s' is not a valid repository name (lower-case letters, digits, . _ - /)", spec, repo);
		free(repo);
		return -EINVAL;
	}
	/* Docker Hub's registry lives elsewhere and puts official images under
	 * library/. */
	if (strcmp(reg->host, "docker.io") == 0) {
		free(reg->host);
		reg->host = strdup("registry-1.docker.io");
	}
	if (strcmp(reg->host ? reg->host : "", "registry-1.docker.io") == 0 && !strchr(repo, '/'))
		reg->repo = xasprintf("library/%s", repo);
	else
		reg->repo = strdup(repo);
	reg->ref = strdup(ref ? ref : "latest");
	free(repo);
	return reg->host && reg->repo && reg->ref ? 0 : -ENOMEM;
}

static void registry_close(void *state)
{
	struct registry *reg = state;
	if (reg->curl)
		curl_easy_cleanup(reg->curl);
	free(reg->host);
	free(reg->base);
	free(reg->repo);
	free(reg->ref);
	free(reg->user);
	if (reg->pass)
		explicit_bzero(reg->pass, strlen(reg->pass));
	free(reg->pass);
	if (reg->bearer)
		explicit_bzero(reg->bearer, strlen(reg->bearer));
	free(reg->bearer);
	free(reg->tmp_dir);
	if (reg->lock_init)
		pthread_mutex_destroy(&reg->lock);
	free(reg);
}

/* Parse the spec, pick the transport and credentials, and say where the
 * walk starts. */
static int registry_setup(struct registry *reg, const char *spec, const char *rest,
			  const struct oci_source_options *opt, struct oci_root *root)
{
	int r;
	if ((r = registry_parse_spec(reg, spec, rest)) < 0)
		return r;
	bool loop = host_is_loopback(reg->host), insecure = opt && opt->insecure;
	reg->plain_http_ok = loop || insecure;
	reg->base = xasprintf("%s://%s", reg->plain_http_ok ? "http" : "https", reg->host);
	const char *u = opt && opt->username ? opt->username : getenv("KINDLING_REGISTRY_USER");
	const char *p = opt && opt->username ? opt->password : getenv("KINDLING_REGISTRY_PASSWORD");
	if (u && *u) {
		reg->user = strdup(u);
		reg->pass = strdup(p ? p : "");
		if (!reg->user || !reg->pass)
			return -ENOMEM;
	}
	const char *td = opt && opt->tmp_dir ? opt->tmp_dir : getenv("TMPDIR");
	reg->tmp_dir = strdup(td && *td ? td : "/tmp");
	reg->curl = curl_easy_init();
	if (!reg->base || !reg->tmp_dir || !reg->curl)
		return -ENOMEM;
	snprintf(root->ref, sizeof(root->ref), "%s", reg->ref);
	snprintf(root->digest, sizeof(root->digest), "%s", reg->ref_is_digest ? reg->ref : "");
	root->size = OCI_MAX_JSON;
	return 0;
}

static int registry_open(const char *rest, const struct oci_source_options *opt, struct oci_image *img,
			 void **out_state, struct oci_root *root)
{
	pthread_once(&curl_once, curl_init_once);
	if (curl_init_rc != CURLE_OK) {
		log_err("libcurl init failed: %s", curl_easy_strerror(curl_init_rc));
		return -EIO;
	}
	struct registry *reg = calloc(1, sizeof(*reg));
	if (!reg)
		return -ENOMEM;
	if (pthread_mutex_init(&reg->lock, NULL) != 0) {
		free(reg);
		return -ENOMEM;
	}
	reg->lock_init = true;
	int r = registry_setup(reg, img->source_ref, rest, opt, root);
	if (r < 0) {
		registry_close(reg);
		return r;
	}
	*out_state = reg;
	return 0;
}

/* A file for one downloaded blob that disappears by itself: O_TMPFILE where
 * the filesystem has it, else a name unlinked at once. */
static int open_tmp_blob(const char *dir)
{
	int fd = open(dir, O_TMPFILE | O_RDWR | O_EXCL | O_CLOEXEC, 0600);
	if (fd >= 0)
		return fd;
	char *path = xasprintf("%s/.tmp-kindling-blob-XXXXXX", dir);
	if (!path)
		return -1;
	fd = mkostemp(path, O_CLOEXEC);
	if (fd >= 0)
		unlink(path);
	int e = errno;
	free(path);
	errno = e;
	return fd;
}

/* Download layer |i| whole into a temporary file: exactly its declared size,
 * or the download fails. */
static int registry_open_layer(void *state, const struct oci_image *img, size_t i, const char *what, int *out_fd,
			       struct byte_stream **out_raw)
{
	struct registry *reg = state;
	const struct oci_layer *l = &img->layers[i];
	(void)out_raw;
	int fd = open_tmp_blob(reg->tmp_dir);
	if (fd < 0) {
		int e = errno;
		log_err("%s: cannot create a temporary file in %s: %s (set TMPDIR to a writable directory)", what,
			reg->tmp_dir, strerror(e));
		return -e;
	}
	char *path = xasprintf("%s/blobs/%s", reg->repo, l->digest);
	char *msg = xasprintf("blob %s (%s)", l->digest, what);
	struct http_resp h = {.fd = fd, .max = (size_t)l->size};
	int r = path && msg ? 0 : -ENOMEM;
	if (!r) {
		pthread_mutex_lock(&reg->lock);
		r = registry_get(reg, msg, path, NULL, &h);
		pthread_mutex_unlock(&reg->lock);
	}
	if (!r && h.len != l->size) {
		log_err("registry %s: %s: got %zu bytes, the manifest says %llu", reg->host, msg, h.len,
			(unsigned long long)l->size);
		r = -EBADMSG;
	}
	if (!r && lseek(fd, 0, SEEK_SET) < 0)
		r = -errno;
	free(path);
	free(msg);
	free(h.err_body);
	if (r < 0) {
		close(fd);
		return r;
	}
	*out_fd = fd;
	return 0;
}

const struct oci_source_ops oci_registry_ops = {
	.name = "docker",
	.prefix = "docker://",
	.empty_ok = true,
	.open = registry_open,
	.fetch_manifest = registry_fetch_manifest,
	.fetch_config = registry_fetch_config,
	.max_nested = 2,
	.open_layer = registry_open_layer,
	.close = registry_close,
};
