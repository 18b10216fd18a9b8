/* chunker: the s3 store, "s3://bucket/prefix".
 *
 * Requests go to ENDPOINT/bucket/prefix/key (path-style addressing, which
 * every S3 implementation accepts), signed with AWS Signature Version 4:
 * https://docs.aws.amazon.com/IAM/latest/UserGuide/reference_sigv-create-signed-request.html
 * The payload is hashed into x-amz-content-sha256 and signed with it, so a
 * body corrupted in transit is rejected by S3.
 *
 * The endpoint is store_options.s3_endpoint, else KINDLING_S3_ENDPOINT, else
 * AWS_ENDPOINT_URL, else https://s3.<region>.amazonaws.com.  Credentials come
 * from AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY and (optional)
 * AWS_SESSION_TOKEN; the region from store_options.s3_region, AWS_REGION or
 * us-east-1.  A put is a single PutObject, which S3 makes atomic.
 */
#include "store_ops.h"

#include "common/sigv4.h"

#include <errno.h>
#include <openssl/crypto.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

/* A ListObjectsV2 page is at most 1000 keys of at most 1 KiB. */
#define LIST_XML_MAX (8u << 20)

struct s3_store {
	char *bucket;
	char *prefix;	      /* "" or ending in '/' */
	char *endpoint;	      /* "http://127.0.0.1:4568", no trailing '/' */
	char *host_header;    /* the endpoint's authority, signed as "host" */
	char *region;
	char *access_key;
	char *secret_key;
	char *session_token;  /* NULL if none */
	char *hint;	      /* operator hint for transport errors */
	struct store_http_client *client;
};

/* ---- requests ------------------------------------------------------------------ */

/* Prepare |x| as a signed |method| on |object_key| (the full S3 key,
 * store prefix included; NULL for the bucket itself) with |n_query| raw
 * query parameters and the body |<body, body_len>|.  Returns 0 or -errno. */
static int s3_xfer_prepare(struct s3_store *ss, struct store_xfer *x, const char *method, const char *object_key,
			   const char *const *query_names, const char *const *query_values, size_t n_query,
			   const void *body, size_t body_len)
{
	store_xfer_init(x);
	x->method = method;
	x->body = body;
	x->body_len = body_len;
	int r = -ENOMEM;
	char *bucket = http_uri_encode(ss->bucket, strlen(ss->bucket), false);
	char *key = object_key ? http_uri_encode(object_key, strlen(object_key), true) : NULL;
	/* Encoded and sorted: sent as it is signed. */
	char *query = sigv4_query_encode(query_names, query_values, n_query);
	char *uri = NULL, *auth = NULL;
	if (!bucket || (object_key && !key) || !query)
		goto out;
	/* The path is encoded once and sent exactly as signed. */
	uri = key ? xasprintf("/%s/%s", bucket, key) : xasprintf("/%s", bucket);
	if (!uri)
		goto out;
	x->url = xasprintf("%s%s%s%s", ss->endpoint, uri, *query ? "?" : "", query);
	if (!x->url)
		goto out;

	char payload_hash[SHA256_HEX_LEN + 1];
	if (body_len) {
		uint8_t digest[SHA256_LEN];
		sha256_buf(body, body_len, digest);
		hex_encode(digest, sizeof(digest), payload_hash);
	} else {
		memcpy(payload_hash, SIGV4_EMPTY_SHA256, sizeof(payload_hash));
	}
	char amz_date[17];
	sigv4_amz_date(time(NULL), amz_date);

	const struct http_header signed_headers[4] = {
		{"host", ss->host_header},
		{"x-amz-content-sha256", payload_hash},
		{"x-amz-date", amz_date},
		{"x-amz-security-token", ss->session_token},
	};
	const struct sigv4_request req = {method, uri, query, signed_headers, ss->session_token ? 4 : 3, payload_hash};
	const struct sigv4_key sk = {ss->access_key, ss->secret_key};
	r = sigv4_sign(&req, amz_date, ss->region, "s3", &sk, &auth);
	if (r < 0)
		goto out;
	r = -ENOMEM;
	if (store_xfer_add_header(x, "Host: %s", ss->host_header) < 0 ||
	    store_xfer_add_header(x, "x-amz-content-sha256: %s", payload_hash) < 0 ||
	    store_xfer_add_header(x, "x-amz-date: %s", amz_date) < 0 ||
	    (ss->session_token && store_xfer_add_header(x, "x-amz-security-token: %s", ss->session_token) < 0) ||
	    store_xfer_add_header(x, "Authorization: %s", auth) < 0)
		goto out;
	if (!strcmp(method, "PUT") &&
	    (store_xfer_add_header(x, "Expect:") < 0 || store_xfer_add_header(x, "Content-Type:") < 0))
		goto out;
	r = 0;
out:
	free(bucket);
	free(key);
	free(query);
	free(uri);
	free(auth);
	return r;
}

/* The store prefix joined with |key|, malloc'd; NULL on allocation failure. */
static char *full_key(const struct s3_store *ss, const char *key) { return xasprintf("%s%s", ss->prefix, key); }

/* Map a finished S3 transfer to 0 / -errno, logging anything other than a
 * missing key.  A 404 about the bucket, not the key, is a configuration
 * error and must not read as "absent". */
static int s3_result(struct s3_store *ss, const struct store_xfer *x)
{
	int r = store_xfer_errno(x);
	if (r == -ENOENT && x->resp_len && memmem(x->resp, x->resp_len, "<Code>NoSuchBucket</Code>", 25)) {
		log_err("%s %s: bucket \"%s\" does not exist at %s (create it, or check the s3:// URI)", x->method, x->url,
			ss->bucket, ss->endpoint);
		return -EIO;
	}
	if (r < 0 && r != -ENOENT)
		store_xfer_log(x, r, r == -EACCES ? "check AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY and the clock" : ss->hint);
	return r;
}

/* Prepare and run one request on |key| (a store key); see s3_xfer_prepare.
 * |x| is left for the caller to read and clean up. */
static int s3_run_one(struct s3_store *ss, struct store_xfer *x, const char *method, const char *key, const void *body,
		      size_t body_len, size_t max_len)
{
	char *object = full_key(ss, key);
	if (!object) {
		store_xfer_init(x);
		return -ENOMEM;
	}
	int r = s3_xfer_prepare(ss, x, method, object, NULL, NULL, 0, body, body_len);
	free(object);
	x->max_len = max_len;
	if (r == 0)
		r = store_http_client_run(ss->client, x, 1);
	return r < 0 ? r : s3_result(ss, x);
}

/* ---- open ---------------------------------------------------------------------- */

static const char *env_nonempty(const char *name)
{
	const char *v = getenv(name);
	return v && *v ? v : NULL;
}

static bool bucket_name_valid(const char *b, size_t len)
{
	if (len < 3 || len > 63)
		return false;
	for (size_t i = 0; i < len; i++)
		if (!((b[i] >= 'a' && b[i] <= 'z') || (b[i] >= '0' && b[i] <= '9') || b[i] == '-' || b[i] == '.'))
			return false;
	return true;
}

static void s3_close(void *state)
{
	struct s3_store *ss = state;
	store_http_client_free(ss->client);
	free(ss->bucket);
	free(ss->prefix);
	free(ss->endpoint);
	free(ss->host_header);
	free(ss->region);
	free(ss->access_key);
	if (ss->secret_key) {
		OPENSSL_cleanse(ss->secret_key, strlen(ss->secret_key));
		free(ss->secret_key);
	}
	free(ss->session_token);
	free(ss->hint);
	free(ss);
}

static int s3_open(const char *uri, const struct store_options *opt, void **out_state, char **out_description)
{
	int r = store_curl_global_init();
	if (r < 0)
		return r;
	const char *rest = uri + 5; /* after "s3://" (store.c matched the scheme) */
	const char *slash = strchr(rest, '/');
	size_t bucket_len = slash ? (size_t)(slash - rest) : strlen(rest);
	if (!bucket_name_valid(rest, bucket_len)) {
		log_err("open store %s: \"%.*s\" is not a bucket name (3-63 of a-z 0-9 . -)", uri, (int)bucket_len, rest);
		return -EINVAL;
	}
	/* "s3://b/p", "s3://b/p/" and "s3://b/p//" all mean prefix "p/". */
	const char *prefix = slash ? slash + 1 : "";
	size_t prefix_len = strlen(prefix);
	while (prefix_len && prefix[prefix_len - 1] == '/')
		prefix_len--;
	char prefix_buf[STORE_MAX_KEY + 1];
	if (prefix_len > STORE_MAX_KEY / 2) {
		log_err("open store %s: prefix too long", uri);
		return -EINVAL;
	}
	memcpy(prefix_buf, prefix, prefix_len);
	prefix_buf[prefix_len] = 0;
	if (prefix_len && !store_key_valid(prefix_buf, false)) {
		log_err("open store %s: invalid prefix \"%s\" (no empty, '.' or '..' components)", uri, prefix_buf);
		return -EINVAL;
	}

	const char *access_key = env_nonempty("AWS_ACCESS_KEY_ID"), *secret_key = env_nonempty("AWS_SECRET_ACCESS_KEY");
	if (!access_key || !secret_key) {
		log_err("open store %s: no S3 credentials; set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (and "
			"AWS_SESSION_TOKEN for temporary credentials)",
			uri);
		return -EINVAL;
	}
	const char *region = opt->s3_region ? opt->s3_region : env_nonempty("AWS_REGION");
	if (!region)
		region = "us-east-1";
	for (const char *p = region; *p; p++)
		if (!((*p >= 'a' && *p <= 'z') || (*p >= '0' && *p <= '9') || *p == '-')) {
			log_err("open store %s: \"%s\" is not a region name", uri, region);
			return -EINVAL;
		}

	struct s3_store *ss = calloc(1, sizeof(*ss));
	if (!ss)
		return -ENOMEM;
	const char *endpoint = opt->s3_endpoint;
	if (!endpoint)
		endpoint = env_nonempty("KINDLING_S3_ENDPOINT");
	if (!endpoint)
		endpoint = env_nonempty("AWS_ENDPOINT_URL");
	if (endpoint) {
		size_t len = strlen(endpoint);
		while (len && endpoint[len - 1] == '/')
			len--;
		ss->endpoint = xasprintf("%.*s", (int)len, endpoint);
	} else {
		ss->endpoint = xasprintf("https://s3.%s.amazonaws.com", region);
	}
	r = -ENOMEM;
	if (!ss->endpoint)
		goto fail;
	/* Path-style needs a bare origin: the bucket is the first path part. */
	const char *authority = strstr(ss->endpoint, "://");
	if (!authority || strchr(authority + 3, '/')) {
		log_err("open store %s: endpoint %s must be scheme://host[:port] without a path", uri, ss->endpoint);
		r = -EINVAL;
		goto fail;
	}
	r = store_url_check(ss->endpoint, opt->insecure, "open store: S3 endpoint", NULL);
	if (r < 0)
		goto fail;
	r = -ENOMEM;
	ss->host_header = strdup(authority + 3);
	ss->bucket = strndup(rest, bucket_len);
	ss->prefix = xasprintf("%s%s", prefix_buf, prefix_len ? "/" : "");
	ss->region = strdup(region);
	ss->access_key = strdup(access_key);
	ss->secret_key = strdup(secret_key);
	const char *token = env_nonempty("AWS_SESSION_TOKEN");
	ss->session_token = token ? strdup(token) : NULL;
	ss->hint = xasprintf("is the S3 endpoint %s running and reachable?", ss->endpoint);
	if (!ss->host_header || !ss->bucket || !ss->prefix || !ss->region || !ss->access_key || !ss->secret_key ||
	    (token && !ss->session_token) || !ss->hint)
		goto fail;
	/* Host names are case-insensitive; SigV4 signs them lower-cased. */
	for (char *p = ss->host_header; *p; p++)
		if (*p >= 'A' && *p <= 'Z')
			*p = (char)(*p - 'A' + 'a');
	r = store_http_client_new(opt->parallel, opt->timeout_ms, &ss->client);
	if (r < 0)
		goto fail;
	*out_description = xasprintf("s3://%s/%s at %s", ss->bucket, ss->prefix, ss->endpoint);
	if (!*out_description) {
		r = -ENOMEM;
		goto fail;
	}
	*out_state = ss;
	return 0;
fail:
	s3_close(ss);
	return r;
}

/* ---- operations ---------------------------------------------------------------- */

static int s3_get(void *state, const char *key, size_t max_len, uint8_t **out, size_t *out_len)
{
	struct store_xfer x;
	int r = s3_run_one(state, &x, "GET", key, NULL, 0, max_len);
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

struct s3_batch {
	struct s3_store *ss;
	const char *method;
	const char *const *keys;
	const void *const *bufs;
	const size_t *lens;
	char where[512];
};

static int s3_batch_prepare(void *ctx, size_t i, struct store_xfer *x)
{
	struct s3_batch *b = ctx;
	char *object = full_key(b->ss, b->keys[i]);
	int r = object ? s3_xfer_prepare(b->ss, x, b->method, object, NULL, NULL, 0, b->bufs ? b->bufs[i] : NULL,
					 b->bufs ? b->lens[i] : 0)
		       : -ENOMEM;
	free(object);
	return r;
}

static int s3_batch_failure(void *ctx, const struct store_xfer *x)
{
	return s3_result(((struct s3_batch *)ctx)->ss, x);
}

static const struct store_xfer_batch_ops s3_batch_ops = {
	.prepare = s3_batch_prepare,
	.failure = s3_batch_failure,
};

static int s3_batch_run(struct s3_batch *b, size_t n, bool *out_ok, const char *what)
{
	snprintf(b->where, sizeof(b->where), "%s/%s", b->ss->endpoint, b->ss->bucket);
	return store_xfer_batch(b->ss->client, n, &s3_batch_ops, b, out_ok != NULL, out_ok, what, b->where);
}

static int s3_put_batch(void *state, const char *const *keys, const void *const *bufs, const size_t *lens, size_t n)
{
	struct s3_batch b = {.ss = state, .method = "PUT", .keys = keys, .bufs = bufs, .lens = lens};
	return s3_batch_run(&b, n, NULL, "put");
}

static int s3_put(void *state, const char *key, const void *buf, size_t len)
{
	return s3_put_batch(state, &key, &buf, &len, 1);
}

static int s3_exists_batch(void *state, const char *const *keys, size_t n, bool *out_exists)
{
	struct s3_batch b = {.ss = state, .method = "HEAD", .keys = keys};
	return s3_batch_run(&b, n, out_exists, "check objects");
}

static int s3_del(void *state, const char *key)
{
	struct store_xfer x;
	int r = s3_run_one(state, &x, "DELETE", key, NULL, 0, 0);
	store_xfer_cleanup(&x);
	return r == -ENOENT ? 0 : r;
}

static int s3_age(void *state, const char *key, double *out_seconds)
{
	struct s3_store *ss = state;
	struct store_xfer x;
	int r = s3_run_one(ss, &x, "HEAD", key, NULL, 0, 0);
	if (r == 0 && x.filetime < 0) {
		log_err("age of %s in %s/%s: no Last-Modified header in the reply", key, ss->endpoint, ss->bucket);
		r = -EIO;
	}
	if (r == 0) {
		double age = difftime(time(NULL), (time_t)x.filetime);
		*out_seconds = age < 0 ? 0 : age; /* whole seconds: never the future */
	}
	store_xfer_cleanup(&x);
	return r;
}

/* ---- ListObjectsV2 XML ------------------------------------------------------------ */

/* A bounds-checked view of an untrusted XML reply.  Only the few flat
 * elements S3 puts in ListBucketResult are looked for, so this scans for
 * "<Name>...</Name>" pairs rather than parsing XML in general. */
struct xml_cursor {
	const char *buf;
	size_t len;
	size_t pos;
};

/* Find the next <|tag|>value</|tag|> at or after the cursor and advance past
 * it.  |*out_val| points into the buffer (|*out_len| bytes, not decoded).
 * Returns 1 if found, 0 if there is none, -EBADMSG if an opening tag has no
 * closing one or the value contains markup. */
static int xml_next(struct xml_cursor *c, const char *tag, const char **out_val, size_t *out_len)
{
	char open[40], close[40];
	int ol = snprintf(open, sizeof(open), "<%s>", tag), cl = snprintf(close, sizeof(close), "</%s>", tag);
	if (ol <= 0 || cl <= 0 || (size_t)ol >= sizeof(open) || (size_t)cl >= sizeof(close))
		return -EBADMSG;
	if (c->pos > c->len)
		return -EBADMSG;
	const char *start = memmem(c->buf + c->pos, c->len - c->pos, open, (size_t)ol);
	if (!start)
		return 0;
	size_t val_off = (size_t)(start - c->buf) + (size_t)ol;
	const char *end = memmem(c->buf + val_off, c->len - val_off, close, (size_t)cl);
	if (!end)
		return -EBADMSG;
	size_t val_len = (size_t)(end - (c->buf + val_off));
	if (memchr(c->buf + val_off, '<', val_len))
		return -EBADMSG;
	*out_val = c->buf + val_off;
	*out_len = val_len;
	c->pos = val_off + val_len + (size_t)cl;
	return 1;
}

/* Append code point |cp| as UTF-8.  |o| must have 4 bytes free. */
static size_t utf8_put(char *o, uint32_t cp)
{
	if (cp < 0x80) {
		o[0] = (char)cp;
		return 1;
	}
	if (cp < 0x800) {
		o[0] = (char)(0xc0 | (cp >> 6));
		o[1] = (char)(0x80 | (cp & 0x3f));
		return 2;
	}
	if (cp < 0x10000) {
		o[0] = (char)(0xe0 | (cp >> 12));
		o[1] = (char)(0x80 | ((cp >> 6) & 0x3f));
		o[2] = (char)(0x80 | (cp & 0x3f));
		return 3;
	}
	o[0] = (char)(0xf0 | (cp >> 18));
	o[1] = (char)(0x80 | ((cp >> 12) & 0x3f));
	o[2] = (char)(0x80 | ((cp >> 6) & 0x3f));
	o[3] = (char)(0x80 | (cp & 0x3f));
	return 4;
}

/* Decode XML character data |<val, len>| (the five named entities and
 * numeric references) into a malloc'd NUL-terminated string.  Returns 0,
 * -EBADMSG for a bad or unknown reference or a NUL, or -ENOMEM. */
static int xml_decode(const char *val, size_t len, char **out)
{
	/* Decoding never grows the text: "&#x10FFFF;" is longer than its 4
	 * UTF-8 bytes, and every other reference shrinks too. */
	char *s = malloc(len + 1), *o = s;
	if (!s)
		return -ENOMEM;
	static const struct {
		const char *name;
		char ch;
	} named[] = { { "lt;", '<' }, { "gt;", '>' }, { "amp;", '&' }, { "quot;", '"' }, { "apos;", '\'' } };
	for (size_t i = 0; i < len;) {
		if (val[i] == 0)
			goto bad;
		if (val[i] != '&') {
			*o++ = val[i++];
			continue;
		}
		const char *semi = memchr(val + i, ';', len - i);
		if (!semi)
			goto bad;
		size_t ref_len = (size_t)(semi - (val + i)) + 1; /* "&...;" */
		const char *ref = val + i + 1;
		bool done = false;
		for (size_t k = 0; k < sizeof(named) / sizeof(named[0]) && !done; k++)
			if (ref_len - 1 == strlen(named[k].name) && !memcmp(ref, named[k].name, ref_len - 1)) {
				*o++ = named[k].ch;
				done = true;
			}
		if (!done) {
			/* "#123" or "#x1F": the text between '&' and ';'. */
			size_t content_len = ref_len - 2;
			if (content_len < 2 || ref[0] != '#')
				goto bad;
			bool hex = ref[1] == 'x';
			size_t digits_start = hex ? 2 : 1;
			if (content_len <= digits_start || content_len - digits_start > 8)
				goto bad;
			uint32_t cp = 0;
			for (size_t d = digits_start; d < content_len; d++) {
				char ch = ref[d];
				uint32_t v;
				if (ch >= '0' && ch <= '9')
					v = (uint32_t)(ch - '0');
				else if (hex && ch >= 'a' && ch <= 'f')
					v = (uint32_t)(ch - 'a' + 10);
				else if (hex && ch >= 'A' && ch <= 'F')
					v = (uint32_t)(ch - 'A' + 10);
				else
					goto bad;
				cp = cp * (hex ? 16 : 10) + v;
			}
			if (cp == 0 || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff))
				goto bad;
			o += utf8_put(o, cp);
		}
		i += ref_len;
	}
	*o = 0;
	*out = s;
	return 0;
bad:
	free(s);
	return -EBADMSG;
}

/* Parse one ListObjectsV2 page: call |cb| for every key (store prefix
 * stripped), set |*out_truncated| and, if truncated, |*out_token| (malloc'd).
 * Returns 0, the callback's value, -EBADMSG (logged) or -ENOMEM. */
static int s3_parse_list_page(struct s3_store *ss, const char *url, const uint8_t *body, size_t len,
			      const char *user_prefix, store_list_cb cb, void *arg, bool *out_truncated, char **out_token)
{
	struct xml_cursor c = { (const char *)body, len, 0 };
	const char *why = NULL;
	const char *val;
	size_t val_len;
	int r = 0;
	*out_truncated = false;
	*out_token = NULL;
	if (!memmem(body, len, "<ListBucketResult", 17)) {
		why = "no <ListBucketResult>";
		goto bad;
	}
	struct xml_cursor t = c;
	if (xml_next(&t, "IsTruncated", &val, &val_len) != 1) {
		why = "no <IsTruncated>";
		goto bad;
	}
	if (val_len == 4 && !memcmp(val, "true", 4))
		*out_truncated = true;
	else if (!(val_len == 5 && !memcmp(val, "false", 5))) {
		why = "<IsTruncated> is neither true nor false";
		goto bad;
	}
	if (*out_truncated) {
		t = c;
		if (xml_next(&t, "NextContinuationToken", &val, &val_len) != 1 || val_len == 0) {
			why = "truncated without a <NextContinuationToken>";
			goto bad;
		}
		r = xml_decode(val, val_len, out_token);
		if (r < 0) {
			why = "bad <NextContinuationToken>";
			goto bad;
		}
	}
	size_t store_prefix_len = strlen(ss->prefix), user_prefix_len = strlen(user_prefix);
	for (;;) {
		int found = xml_next(&c, "Key", &val, &val_len);
		if (found == 0)
			break;
		char *key = NULL;
		if (found < 0 || xml_decode(val, val_len, &key) < 0) {
			why = "bad <Key>";
			goto bad;
		}
		if (strncmp(key, ss->prefix, store_prefix_len) ||
		    strncmp(key + store_prefix_len, user_prefix, user_prefix_len)) {
			free(key);
			why = "a <Key> outside the requested prefix";
			goto bad;
		}
		const char *store_key = key + store_prefix_len;
		/* Objects this store could not have written (another tool's
		 * "a//b") are not keys of it. */
		if (store_key_valid(store_key, false))
			r = cb(arg, store_key);
		else
			log_debug("list %s: ignoring object \"%s\", not a valid key", url, key);
		free(key);
		if (r)
			break;
	}
	if (r) {
		free(*out_token);
		*out_token = NULL;
	}
	return r;
bad:
	free(*out_token);
	*out_token = NULL;
	log_err("list %s: malformed ListObjectsV2 reply: %s", url, why);
	return r == -ENOMEM ? r : -EBADMSG;
}

static int s3_list(void *state, const char *prefix, store_list_cb cb, void *arg)
{
	struct s3_store *ss = state;
	char *s3_prefix = full_key(ss, prefix);
	if (!s3_prefix)
		return -ENOMEM;
	char *token = NULL;
	int r = 0;
	for (;;) {
		const char *names[3] = { "list-type", "prefix", "continuation-token" };
		const char *values[3] = { "2", s3_prefix, token };
		struct store_xfer x;
		r = s3_xfer_prepare(ss, &x, "GET", NULL, names, values, token ? 3 : 2, NULL, 0);
		x.max_len = LIST_XML_MAX;
		if (r == 0)
			r = store_http_client_run(ss->client, &x, 1);
		if (r == 0) {
			r = s3_result(ss, &x);
			if (r == -ENOENT) /* a 404 on a bucket listing is always the bucket */
				r = -EIO;
		}
		bool truncated = false;
		char *next = NULL;
		if (r == 0)
			r = s3_parse_list_page(ss, x.url, x.resp ? x.resp : (const uint8_t *)"", x.resp_len, prefix, cb, arg,
					       &truncated, &next);
		if (r == 0 && truncated && token && !strcmp(next, token)) {
			log_err("list %s: the server repeated continuation token \"%.40s\"", x.url, token);
			r = -EBADMSG;
		}
		store_xfer_cleanup(&x);
		free(token);
		token = next;
		if (r || !truncated)
			break;
	}
	free(token);
	free(s3_prefix);
	return r;
}

static const char *const s3_schemes[] = { "s3", NULL };

const struct store_ops store_s3_ops = {
	.name = "s3",
	.schemes = s3_schemes,
	.open = s3_open,
	.close = s3_close,
	.get = s3_get,
	.put = s3_put,
	.put_batch = s3_put_batch,
	.exists_batch = s3_exists_batch,
	.del = s3_del,
	.list = s3_list,
	.age = s3_age,
};
