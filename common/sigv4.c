#define LOG_COMPONENT "sigv4"
#include "sigv4.h"

#include <errno.h>
#include <fcntl.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <unistd.h>

#define CREDENTIALS_MAX (1u << 20)

/* ---- a growable string ----------------------------------------------------------- */

struct sb {
	char *p;
	size_t len, cap;
	bool failed; /* an allocation failed: every later add is a no-op */
};

static void sb_add(struct sb *b, const char *s, size_t n)
{
	if (b->failed)
		return;
	size_t need;
	if (!ck_add_size(b->len, n, &need) || !ck_add_size(need, 1, &need)) {
		b->failed = true;
		return;
	}
	if (need > b->cap) {
		size_t cap = b->cap ? b->cap : 256;
		while (cap < need)
			if (!ck_mul_size(cap, 2, &cap)) {
				b->failed = true;
				return;
			}
		char *np = realloc(b->p, cap);
		if (!np) {
			b->failed = true;
			return;
		}
		b->p = np;
		b->cap = cap;
	}
	memcpy(b->p + b->len, s, n);
	b->len += n;
	b->p[b->len] = 0;
}

static void sb_puts(struct sb *b, const char *s) { sb_add(b, s, strlen(s)); }

static void sb_putc(struct sb *b, char c) { sb_add(b, &c, 1); }

/* Hand the string over to |*out| (0), or free it and return -ENOMEM. */
static int sb_finish(struct sb *b, char **out)
{
	if (!b->p)
		sb_add(b, "", 0);
	if (b->failed) {
		free(b->p);
		b->p = NULL;
		return -ENOMEM;
	}
	*out = b->p;
	b->p = NULL;
	return 0;
}

/* ---- canonical URI and query ------------------------------------------------------ */

int sigv4_canonical_uri(const char *raw_path, const char *service, char **out)
{
	const char *path = raw_path && *raw_path ? raw_path : "/";
	if (!strcmp(service, "s3")) {
		*out = strdup(path);
		return *out ? 0 : -ENOMEM;
	}
	/* botocore's remove_dot_segments: drop empty and "." segments, let
	 * ".." drop the segment before it, keep a leading '/' and (if any
	 * segment is left) a trailing one. */
	size_t len = strlen(path);
	char *joined = malloc(len + 1);
	size_t *starts = calloc(len / 2 + 2, sizeof(*starts));
	if (!joined || !starts) {
		free(joined);
		free(starts);
		return -ENOMEM;
	}
	size_t jlen = 0, nseg = 0;
	for (const char *p = path; *p;) {
		size_t seg = strcspn(p, "/");
		if (seg == 2 && p[0] == '.' && p[1] == '.') {
			if (nseg)
				jlen = starts[--nseg];
		} else if (seg && !(seg == 1 && p[0] == '.')) {
			starts[nseg++] = jlen;
			if (jlen)
				joined[jlen++] = '/';
			memcpy(joined + jlen, p, seg);
			jlen += seg;
		}
		p += seg;
		if (*p == '/')
			p++;
	}
	struct sb b = {0};
	if (path[0] == '/')
		sb_putc(&b, '/');
	char *enc = http_uri_encode(joined, jlen, true);
	if (!enc)
		b.failed = true;
	else
		sb_puts(&b, enc);
	if (nseg && path[len - 1] == '/')
		sb_putc(&b, '/');
	free(enc);
	free(joined);
	free(starts);
	return sb_finish(&b, out);
}

struct qparam {
	char *name, *value; /* encoded */
};

static int compare_qparams(const void *a, const void *b)
{
	const struct qparam *pa = a, *pb = b;
	int c = strcmp(pa->name, pb->name);
	return c ? c : strcmp(pa->value, pb->value);
}

/* Sort |<params, n>| and join them as name=value&...; frees the params. */
static int join_qparams(struct qparam *params, size_t n, char **out)
{
	qsort(params, n, sizeof(*params), compare_qparams);
	struct sb b = {0};
	for (size_t i = 0; i < n; i++) {
		if (i)
			sb_putc(&b, '&');
		sb_puts(&b, params[i].name);
		sb_putc(&b, '=');
		sb_puts(&b, params[i].value);
	}
	for (size_t i = 0; i < n; i++) {
		free(params[i].name);
		free(params[i].value);
	}
	free(params);
	return sb_finish(&b, out);
}

/* Decode |<s, len>| and encode it again into |*out|. */
static int reencode(const char *s, size_t len, char **out)
{
	char *dec;
	size_t dlen;
	int r = http_pct_decode(s, len, &dec, &dlen);
	if (r < 0)
		return r;
	*out = http_uri_encode(dec, dlen, false);
	free(dec);
	return *out ? 0 : -ENOMEM;
}

int sigv4_canonical_query(const char *raw_query, char **out)
{
	const char *q = raw_query ? raw_query : "";
	size_t n = 0, cap = 1;
	for (const char *p = q; *p; p++)
		cap += *p == '&';
	struct qparam *params = calloc(cap, sizeof(*params));
	if (!params)
		return -ENOMEM;
	int r = 0;
	for (const char *p = q; *p;) {
		size_t len = strcspn(p, "&");
		if (len) {
			const char *eq = memchr(p, '=', len);
			size_t name_len = eq ? (size_t)(eq - p) : len;
			n++;
			if ((r = reencode(p, name_len, &params[n - 1].name)) < 0 ||
			    (r = reencode(eq ? eq + 1 : "", eq ? len - name_len - 1 : 0, &params[n - 1].value)) < 0)
				break;
		}
		p += len;
		if (*p == '&')
			p++;
	}
	if (r < 0) {
		for (size_t i = 0; i < n; i++) {
			free(params[i].name);
			free(params[i].value);
		}
		free(params);
		return r;
	}
	return join_qparams(params, n, out);
}

char *sigv4_query_encode(const char *const *names, const char *const *values, size_t n)
{
	struct qparam *params = calloc(n ? n : 1, sizeof(*params));
	if (!params)
		return NULL;
	for (size_t i = 0; i < n; i++) {
		params[i].name = http_uri_encode(names[i], strlen(names[i]), false);
		params[i].value = http_uri_encode(values[i], strlen(values[i]), false);
		if (!params[i].name || !params[i].value) {
			for (size_t j = 0; j <= i; j++) {
				free(params[j].name);
				free(params[j].value);
			}
			free(params);
			errno = ENOMEM;
			return NULL;
		}
	}
	char *out;
	if (join_qparams(params, n, &out) < 0) {
		errno = ENOMEM;
		return NULL;
	}
	return out;
}

/* ---- canonical headers and request -------------------------------------------------- */

/* RFC 9110 token characters, which is what a header name is made of. */
static bool is_tchar(unsigned char c)
{
	return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || strchr("!#$%&'*+-.^_`|~", c);
}

static bool is_space(char c) { return c == ' ' || c == '\t' || c == '\r' || c == '\n' || c == '\v' || c == '\f'; }

/* Append |value| trimmed, with each run of white space as one space. */
static void add_trimmed(struct sb *b, const char *value)
{
	bool pending_space = false, any = false;
	for (const char *p = value; *p; p++) {
		if (is_space(*p)) {
			pending_space = any;
			continue;
		}
		if (pending_space)
			sb_putc(b, ' ');
		pending_space = false;
		any = true;
		sb_putc(b, *p);
	}
}

/* Append the canonical headers block for |signed_headers|.  Returns 0 or
 * -EINVAL with a reason in |<err, errlen>|. */
static int add_canonical_headers(struct sb *b, const struct sigv4_request *req, const char *signed_headers, char *err,
				 size_t errlen)
{
	if (!*signed_headers)
		return err_set(err, errlen, -EINVAL, "SignedHeaders is empty");
	for (const char *p = signed_headers; *p;) {
		size_t len = strcspn(p, ";");
		if (len == 0 || len > 256)
			return err_set(err, errlen, -EINVAL, "SignedHeaders '%s' has an empty or overlong name",
				       signed_headers);
		for (size_t i = 0; i < len; i++)
			if (!is_tchar((unsigned char)p[i]) || (p[i] >= 'A' && p[i] <= 'Z'))
				return err_set(err, errlen, -EINVAL,
					       "SignedHeaders '%s' must list lower-case header names separated by ';'",
					       signed_headers);
		char name[257];
		memcpy(name, p, len);
		name[len] = 0;
		sb_puts(b, name);
		sb_putc(b, ':');
		bool found = false;
		for (size_t i = 0; i < req->n_headers; i++) {
			if (strcasecmp(req->headers[i].name, name))
				continue;
			if (found)
				sb_putc(b, ',');
			add_trimmed(b, req->headers[i].value);
			found = true;
		}
		if (!found)
			return err_set(err, errlen, -EINVAL,
				       "Header '%s' is named in SignedHeaders but is not in the request", name);
		sb_putc(b, '\n');
		p += len;
		if (*p == ';') {
			p++;
			if (!*p)
				return err_set(err, errlen, -EINVAL, "SignedHeaders '%s' ends with ';'", signed_headers);
		}
	}
	return 0;
}

int sigv4_canonical_request(const struct sigv4_request *req, const char *service, const char *signed_headers,
			    char **out, char *err, size_t errlen)
{
	char *uri = NULL, *query = NULL;
	int r = sigv4_canonical_uri(req->path, service, &uri);
	if (r < 0)
		return r;
	r = sigv4_canonical_query(req->query, &query);
	if (r < 0) {
		free(uri);
		return r == -EINVAL ? err_set(err, errlen, r, "The query string has a malformed percent escape") : r;
	}
	struct sb b = {0};
	sb_puts(&b, req->method);
	sb_putc(&b, '\n');
	sb_puts(&b, uri);
	sb_putc(&b, '\n');
	sb_puts(&b, query);
	sb_putc(&b, '\n');
	r = add_canonical_headers(&b, req, signed_headers, err, errlen);
	sb_putc(&b, '\n');
	sb_puts(&b, signed_headers);
	sb_putc(&b, '\n');
	sb_puts(&b, req->payload_hash);
	free(uri);
	free(query);
	if (r < 0) {
		free(b.p);
		return r;
	}
	return sb_finish(&b, out);
}

int sigv4_string_to_sign(const char *amz_date, const char *region, const char *service, const char *canonical_request,
			 char **out)
{
	uint8_t digest[SHA256_LEN];
	char hex[SHA256_HEX_LEN + 1];
	sha256_buf(canonical_request, strlen(canonical_request), digest);
	hex_encode(digest, sizeof(digest), hex);
	*out = xasprintf(SIGV4_ALGORITHM "\n%s\n%.8s/%s/%s/aws4_request\n%s", amz_date, amz_date, region, service, hex);
	return *out ? 0 : -ENOMEM;
}

static int hmac_sha256(const void *key, size_t key_len, const char *msg, uint8_t out[SHA256_LEN])
{
	unsigned int out_len = 0;
	if (!HMAC(EVP_sha256(), key, (int)key_len, (const unsigned char *)msg, strlen(msg), out, &out_len) ||
	    out_len != SHA256_LEN) {
		log_err("HMAC-SHA256 failed in OpenSSL (is libcrypto usable?)");
		return -EIO;
	}
	return 0;
}

int sigv4_signing_key(const char *secret, const char *date, const char *region, const char *service,
		      uint8_t out[SHA256_LEN])
{
	char date8[9];
	snprintf(date8, sizeof(date8), "%.8s", date);
	char *k0 = xasprintf("AWS4%s", secret);
	if (!k0)
		return -ENOMEM;
	int r = hmac_sha256(k0, strlen(k0), date8, out);
	if (!r)
		r = hmac_sha256(out, SHA256_LEN, region, out);
	if (!r)
		r = hmac_sha256(out, SHA256_LEN, service, out);
	if (!r)
		r = hmac_sha256(out, SHA256_LEN, "aws4_request", out);
	OPENSSL_cleanse(k0, strlen(k0));
	free(k0);
	return r;
}

int sigv4_signature(const uint8_t key[SHA256_LEN], const char *string_to_sign, char out_hex[SHA256_HEX_LEN + 1])
{
	uint8_t sig[SHA256_LEN];
	int r = hmac_sha256(key, SHA256_LEN, string_to_sign, sig);
	if (r == 0)
		hex_encode(sig, sizeof(sig), out_hex);
	return r;
}

/* Parse "YYYYMMDDTHHMMSSZ" (exactly) into Unix seconds. */
static bool parse_amz_date(const char *s, time_t *out)
{
	static const char shape[] = "dddddddd?dddddd?";
	if (strlen(s) != 16)
		return false;
	for (size_t i = 0; i < 16; i++)
		if (shape[i] == 'd' ? (s[i] < '0' || s[i] > '9') : 0)
			return false;
	if (s[8] != 'T' || s[15] != 'Z')
		return false;
	struct tm tm = {0};
	int v[6];
	static const int at[6] = {0, 4, 6, 9, 11, 13}, width[6] = {4, 2, 2, 2, 2, 2};
	for (int i = 0; i < 6; i++) {
		v[i] = 0;
		for (int j = 0; j < width[i]; j++)
			v[i] = v[i] * 10 + (s[at[i] + j] - '0');
	}
	tm.tm_year = v[0] - 1900;
	tm.tm_mon = v[1] - 1;
	tm.tm_mday = v[2];
	tm.tm_hour = v[3];
	tm.tm_min = v[4];
	tm.tm_sec = v[5];
	time_t t = timegm(&tm);
	struct tm back;
	if (!gmtime_r(&t, &back) || back.tm_year != v[0] - 1900 || back.tm_mon != v[1] - 1 || back.tm_mday != v[2] ||
	    back.tm_hour != v[3] || back.tm_min != v[4] || back.tm_sec != v[5])
		return false;
	*out = t;
	return true;
}

/* Parse an RFC 7231 IMF-fixdate, "Sun, 06 Nov 1994 08:49:37 GMT", also with
 * the zone written "UTC", "+0000" or "-0000" (Python's email.utils, which
 * botocore uses, writes "-0000"). */
static bool parse_http_date(const char *s, time_t *out)
{
	static const char months[] = "JanFebMarAprMayJunJulAugSepOctNovDec";
	char wday[4], mon[4], zone[8];
	int day, year, hh, mm, ss, used = 0;
	if (sscanf(s, "%3[A-Za-z], %2d %3[A-Za-z] %4d %2d:%2d:%2d %7s%n", wday, &day, mon, &year, &hh, &mm, &ss, zone,
		   &used) != 8 ||
	    s[used] != 0)
		return false;
	if (strcmp(zone, "GMT") && strcmp(zone, "UTC") && strcmp(zone, "+0000") && strcmp(zone, "-0000"))
		return false;
	const char *m = strstr(months, mon);
	if (!m || strlen(mon) != 3 || (m - months) % 3)
		return false;
	char amz[32];
	snprintf(amz, sizeof(amz), "%04d%02d%02dT%02d%02d%02dZ", year, (int)(m - months) / 3 + 1, day, hh, mm, ss);
	return parse_amz_date(amz, out);
}

void sigv4_amz_date(time_t t, char out[17])
{
	struct tm tm;
	gmtime_r(&t, &tm);
	strftime(out, 17, "%Y%m%dT%H%M%SZ", &tm);
}

/* ---- signing ----------------------------------------------------------------------- */

static int compare_str_ptrs(const void *a, const void *b) { return strcmp(*(char *const *)a, *(char *const *)b); }

/* The SignedHeaders value for all of |<headers, n>|: lower-case names,
 * sorted, each once. */
static int signed_headers_of(const struct http_header *headers, size_t n, char **out)
{
	char **names = calloc(n ? n : 1, sizeof(*names));
	if (!names)
		return -ENOMEM;
	int r = 0;
	for (size_t i = 0; i < n && r == 0; i++) {
		size_t len = strlen(headers[i].name);
		if (!(names[i] = strdup(headers[i].name))) {
			r = -ENOMEM;
			break;
		}
		for (size_t j = 0; j < len; j++) {
			unsigned char c = (unsigned char)names[i][j];
			if (!is_tchar(c)) {
				log_err("sign request: header name \"%s\" is not a valid HTTP token", headers[i].name);
				r = -EINVAL;
				break;
			}
			if (c >= 'A' && c <= 'Z')
				names[i][j] = (char)(c + 'a' - 'A');
		}
		if (len == 0) {
			log_err("sign request: a header has an empty name");
			r = -EINVAL;
		}
	}
	struct sb b = {0};
	if (r == 0) {
		qsort(names, n, sizeof(*names), compare_str_ptrs);
		for (size_t i = 0; i < n; i++) {
			if (i && !strcmp(names[i], names[i - 1]))
				continue;
			if (b.len)
				sb_putc(&b, ';');
			sb_puts(&b, names[i]);
		}
		r = sb_finish(&b, out);
	}
	for (size_t i = 0; i < n; i++)
		free(names[i]);
	free(names);
	return r;
}

int sigv4_sign(const struct sigv4_request *req, const char *amz_date, const char *region, const char *service,
	       const struct sigv4_key *key, char **out_authorization)
{
	time_t t;
	if (!parse_amz_date(amz_date, &t)) {
		log_err("sign request: \"%s\" is not a date of the form YYYYMMDDTHHMMSSZ", amz_date);
		return -EINVAL;
	}
	if (!req->payload_hash) {
		log_err("sign %s %s: no payload hash given", req->method, req->path);
		return -EINVAL;
	}
	char *signed_headers = NULL, *creq = NULL, *sts = NULL;
	char err[256];
	int r = signed_headers_of(req->headers, req->n_headers, &signed_headers);
	if (r == 0) {
		r = sigv4_canonical_request(req, service, signed_headers, &creq, err, sizeof(err));
		if (r == -EINVAL)
			log_err("sign %s %s: %s", req->method, req->path, err);
	}
	if (r == 0)
		r = sigv4_string_to_sign(amz_date, region, service, creq, &sts);
	uint8_t k[SHA256_LEN];
	char sig[SHA256_HEX_LEN + 1];
	if (r == 0)
		r = sigv4_signing_key(key->secret_access_key, amz_date, region, service, k);
	if (r == 0)
		r = sigv4_signature(k, sts, sig);
	OPENSSL_cleanse(k, sizeof(k));
	if (r == 0) {
		*out_authorization = xasprintf(SIGV4_ALGORITHM " Credential=%s/%.8s/%s/%s/aws4_request, "
						     "SignedHeaders=%s, Signature=%s",
					       key->access_key_id, amz_date, region, service, signed_headers, sig);
		if (!*out_authorization)
			r = -ENOMEM;
	}
	free(signed_headers);
	free(creq);
	free(sts);
	return r;
}

/* ---- parsing the Authorization header ---------------------------------------------- */

void sigv4_auth_cleanup(struct sigv4_auth *a)
{
	free(a->buf);
	memset(a, 0, sizeof(*a));
}

static char *trim(char *s)
{
	while (*s == ' ' || *s == '\t')
		s++;
	size_t n = strlen(s);
	while (n && (s[n - 1] == ' ' || s[n - 1] == '\t'))
		s[--n] = 0;
	return s;
}

int sigv4_auth_parse(const char *header, struct sigv4_auth *out, char *err, size_t errlen)
{
	memset(out, 0, sizeof(*out));
	const char *h = header;
	while (*h == ' ' || *h == '\t')
		h++;
	size_t alg_len = strcspn(h, " \t");
	if (alg_len != strlen(SIGV4_ALGORITHM) || strncmp(h, SIGV4_ALGORITHM, alg_len)) {
		if (!strncmp(h, "AWS4-", 5))
			return err_set(err, errlen, -EINVAL,
				       "Unsupported AWS 'algorithm': '%.*s'. This service accepts only " SIGV4_ALGORITHM ".",
				       (int)alg_len, h);
		return err_set(err, errlen, -EINVAL,
			       "Authorization header requires 'Credential' parameter. Authorization header requires "
			       "'Signature' parameter. Authorization header requires 'SignedHeaders' parameter. "
			       "Authorization=%s",
			       header);
	}
	char *buf = strdup(h + alg_len);
	if (!buf)
		return -ENOMEM;
	char *credential = NULL, *signed_headers = NULL, *signature = NULL;
	int r = 0;
	for (char *save = NULL, *piece = strtok_r(buf, ",", &save); piece; piece = strtok_r(NULL, ",", &save)) {
		piece = trim(piece);
		if (!*piece)
			continue;
		char *eq = strchr(piece, '=');
		if (!eq) {
			r = err_set(err, errlen, -EINVAL,
				    "'%s' not a valid key=value pair (missing equal-sign) in Authorization header: '%s'.",
				    piece, header);
			goto fail;
		}
		*eq = 0;
		char **slot = !strcmp(piece, "Credential")	? &credential
			      : !strcmp(piece, "SignedHeaders") ? &signed_headers
			      : !strcmp(piece, "Signature")	? &signature
								: NULL;
		if (!slot)
			continue; /* AWS ignores parameters it does not know */
		if (*slot) {
			r = err_set(err, errlen, -EINVAL, "Authorization header has more than one '%s' parameter: '%s'.",
				    piece, header);
			goto fail;
		}
		*slot = trim(eq + 1);
	}
	if (!credential || !signed_headers || !signature) {
		r = err_set(err, errlen, -EINVAL, "%s%s%sAuthorization=%s",
			    credential ? "" : "Authorization header requires 'Credential' parameter. ",
			    signature ? "" : "Authorization header requires 'Signature' parameter. ",
			    signed_headers ? "" : "Authorization header requires 'SignedHeaders' parameter. ", header);
		goto fail;
	}
	/* Credential = keyid/YYYYMMDD/region/service/aws4_request */
	char given[256];
	snprintf(given, sizeof(given), "%s", credential);
	char *part[6];
	size_t n = 0;
	bool empty = false;
	for (char *p = credential; n < 6;) {
		part[n++] = p;
		empty |= *p == '/' || !*p;
		char *slash = strchr(p, '/');
		if (!slash)
			break;
		*slash = 0;
		p = slash + 1;
	}
	if (n != 5 || empty) {
		r = err_set(err, errlen, -EINVAL,
			    "Credential must have exactly 5 slash-delimited elements, e.g. keyid/date/region/service/term, "
			    "got '%s'",
			    given);
		goto fail;
	}
	if (strcmp(part[4], "aws4_request")) {
		r = err_set(err, errlen, -EINVAL,
			    "Credential should be scoped with a valid terminator: 'aws4_request', not '%s'. ", part[4]);
		goto fail;
	}
	bool date_ok = strlen(part[1]) == 8;
	for (size_t i = 0; date_ok && i < 8; i++)
		date_ok = part[1][i] >= '0' && part[1][i] <= '9';
	if (!date_ok) {
		r = err_set(err, errlen, -EINVAL, "Credential date '%s' is not of the form YYYYMMDD", part[1]);
		goto fail;
	}
	out->buf = buf;
	out->access_key_id = part[0];
	out->date = part[1];
	out->region = part[2];
	out->service = part[3];
	out->signed_headers = signed_headers;
	out->signature = signature;
	return 0;
fail:
	free(buf);
	return r;
}

/* ---- verifying ---------------------------------------------------------------------- */

void sigv4_verdict_cleanup(struct sigv4_verdict *v)
{
	free(v->message);
	v->message = NULL;
}

/* Record a refusal in |out|; returns 0, or -ENOMEM if the message could
 * not be formatted. */
__attribute__((format(printf, 3, 4))) static int refuse(struct sigv4_verdict *out, enum sigv4_status status,
							const char *fmt, ...)
{
	static const char *const types[] = {
		[SIGV4_MISSING_TOKEN] = "MissingAuthenticationTokenException",
		[SIGV4_INCOMPLETE] = "IncompleteSignatureException",
		[SIGV4_UNKNOWN_KEY] = "UnrecognizedClientException",
		[SIGV4_BAD_SIGNATURE] = "InvalidSignatureException",
		[SIGV4_EXPIRED] = "InvalidSignatureException",
	};
	out->status = status;
	out->http_status = 403;
	out->error_type = types[status];
	va_list ap;
	va_start(ap, fmt);
	int n = vasprintf(&out->message, fmt, ap);
	va_end(ap);
	if (n < 0) {
		out->message = NULL;
		return -ENOMEM;
	}
	return 0;
}

/* True if the ';'-separated |list| holds |name| exactly. */
static bool list_has(const char *list, const char *name)
{
	size_t n = strlen(name);
	for (const char *p = list; *p;) {
		size_t len = strcspn(p, ";");
		if (len == n && !strncmp(p, name, n))
			return true;
		p += len;
		if (*p)
			p++;
	}
	return false;
}

static bool is_hex64(const char *s)
{
	size_t i = 0;
	for (; s[i]; i++)
		if (!((s[i] >= '0' && s[i] <= '9') || (s[i] >= 'a' && s[i] <= 'f') || (s[i] >= 'A' && s[i] <= 'F')))
			return false;
	return i == SHA256_HEX_LEN;
}

/* "5 min." or "90 sec.", as AWS words the allowed skew. */
static void skew_words(unsigned s, char *buf, size_t len)
{
	if (s % 60 == 0)
		snprintf(buf, len, "%u min.", s / 60);
	else
		snprintf(buf, len, "%u sec.", s);
}

/* The part of sigv4_verify after the header parsed; |a| is the parsed
 * header. */
static int verify_parsed(const struct sigv4_verifier *v, const struct sigv4_request *req, const void *body,
			 size_t body_len, time_t now, const struct sigv4_auth *a, struct sigv4_verdict *out)
{
	const struct http_header *h = req->headers;
	size_t nh = req->n_headers;
	/* The date: X-Amz-Date, else Date; whichever it is must be signed. */
	const char *amz = http_header_get(h, nh, "x-amz-date");
	const char *date_hdr = amz ? "x-amz-date" : "date";
	const char *date_val = amz ? amz : http_header_get(h, nh, "date");
	if (!date_val)
		return refuse(out, SIGV4_INCOMPLETE,
			      "Authorization header requires existence of either a 'X-Amz-Date' or a 'Date' header. "
			      "Authorization=%s",
			      http_header_get(h, nh, "authorization"));
	time_t t;
	bool date_ok = amz ? parse_amz_date(amz, &t) : parse_http_date(date_val, &t);
	if (!date_ok)
		return amz ? refuse(out, SIGV4_INCOMPLETE,
				    "Date must be in ISO-8601 'basic format'. Got '%s'. See "
				    "http://en.wikipedia.org/wiki/ISO_8601",
				    amz)
			   : refuse(out, SIGV4_INCOMPLETE,
				    "Date header '%s' is not an HTTP date such as 'Sun, 06 Nov 1994 08:49:37 GMT'; send "
				    "X-Amz-Date: YYYYMMDDTHHMMSSZ instead",
				    date_val);
	char amz_date[17];
	sigv4_amz_date(t, amz_date);

	if (strcmp(a->service, v->service))
		return refuse(out, SIGV4_BAD_SIGNATURE, "Credential should be scoped to correct service: '%s'. ",
			      v->service);
	if (v->region && strcmp(a->region, v->region))
		return refuse(out, SIGV4_BAD_SIGNATURE,
			      "Credential should be scoped to a valid region, not '%s'. This endpoint serves '%s'.",
			      a->region, v->region);
	if (strncmp(a->date, amz_date, 8))
		return refuse(out, SIGV4_BAD_SIGNATURE,
			      "Date in Credential scope does not match YYYYMMDD from ISO-8601 version of date from HTTP: "
			      "'%s' != '%.8s', from '%s'.",
			      a->date, amz_date, amz_date);
	if (!list_has(a->signed_headers, "host"))
		return refuse(out, SIGV4_INCOMPLETE,
			      "'Host' or ':authority' must be a 'SignedHeader' in the AWS Authorization.");
	if (!list_has(a->signed_headers, date_hdr))
		return refuse(out, SIGV4_INCOMPLETE, "'%s' must be a 'SignedHeader' in the AWS Authorization.",
			      amz ? "X-Amz-Date" : "Date");

	unsigned skew = v->max_skew_s ? v->max_skew_s : SIGV4_DEFAULT_SKEW_S;
	char skew_s[32], now_s[17], edge_s[17];
	skew_words(skew, skew_s, sizeof(skew_s));
	sigv4_amz_date(now, now_s);
	if (t < now - (time_t)skew) {
		sigv4_amz_date(now - (time_t)skew, edge_s);
		return refuse(out, SIGV4_EXPIRED, "Signature expired: %s is now earlier than %s (%s - %s)", amz_date,
			      edge_s, now_s, skew_s);
	}
	if (t > now + (time_t)skew) {
		sigv4_amz_date(now + (time_t)skew, edge_s);
		return refuse(out, SIGV4_EXPIRED, "Signature not yet current: %s is still later than %s (%s + %s)",
			      amz_date, edge_s, now_s, skew_s);
	}

	char secret[SIGV4_MAX_SECRET];
	int r = v->lookup(v->lookup_arg, a->access_key_id, secret, sizeof(secret));
	if (r == -ENOENT)
		return refuse(out, SIGV4_UNKNOWN_KEY, "The security token included in the request is invalid.");
	if (r < 0)
		return r;

	/* The payload line: the client's X-Amz-Content-Sha256 if it sent
	 * one (which must then match the body), else the body's hash. */
	char actual[SHA256_HEX_LEN + 1];
	if (req->payload_hash) {
		snprintf(actual, sizeof(actual), "%s", req->payload_hash);
	} else {
		uint8_t d[SHA256_LEN];
		sha256_buf(body_len ? body : "", body_len, d);
		hex_encode(d, sizeof(d), actual);
	}
	const char *claimed = http_header_get(h, nh, "x-amz-content-sha256");
	if (claimed && !strcmp(claimed, SIGV4_UNSIGNED_PAYLOAD)) {
		if (!v->allow_unsigned_payload)
			r = refuse(out, SIGV4_BAD_SIGNATURE,
				   "This service requires a signed payload; x-amz-content-sha256: " SIGV4_UNSIGNED_PAYLOAD
				   " is not accepted.");
	} else if (claimed && !is_hex64(claimed)) {
		r = refuse(out, SIGV4_BAD_SIGNATURE, "x-amz-content-sha256 '%s' is not supported; send the hex SHA-256 of the body.",
			   claimed);
	} else if (claimed && strcasecmp(claimed, actual)) {
		r = refuse(out, SIGV4_BAD_SIGNATURE,
			   "The provided 'x-amz-content-sha256' header does not match what was computed.");
	}
	if (r < 0 || out->status != SIGV4_ACCEPTED) {
		OPENSSL_cleanse(secret, sizeof(secret));
		return r;
	}

	struct sigv4_request canon = *req;
	canon.payload_hash = claimed ? claimed : actual;
	char *creq = NULL, *sts = NULL, err[512];
	uint8_t key[SHA256_LEN];
	char sig[SHA256_HEX_LEN + 1];
	r = sigv4_canonical_request(&canon, v->service, a->signed_headers, &creq, err, sizeof(err));
	if (r == -EINVAL) {
		r = refuse(out, SIGV4_INCOMPLETE, "%s.", err);
		goto out;
	}
	if (r == 0)
		r = sigv4_string_to_sign(amz_date, a->region, a->service, creq, &sts);
	if (r == 0)
		r = sigv4_signing_key(secret, amz_date, a->region, a->service, key);
	if (r == 0)
		r = sigv4_signature(key, sts, sig);
	if (r < 0)
		goto out;
	if (strlen(a->signature) != SHA256_HEX_LEN || CRYPTO_memcmp(sig, a->signature, SHA256_HEX_LEN) != 0)
		r = refuse(out, SIGV4_BAD_SIGNATURE,
			   "The request signature we calculated does not match the signature you provided. Check your "
			   "AWS Secret Access Key and signing method. Consult the service documentation for details.\n\n"
			   "The Canonical String for this request should have been\n'%s'\n\n"
			   "The String-to-Sign should have been\n'%s'\n",
			   creq, sts);
out:
	OPENSSL_cleanse(secret, sizeof(secret));
	OPENSSL_cleanse(key, sizeof(key));
	free(creq);
	free(sts);
	return r;
}

int sigv4_verify(const struct sigv4_verifier *v, const struct sigv4_request *req, const void *body, size_t body_len,
		 time_t now, struct sigv4_verdict *out)
{
	memset(out, 0, sizeof(*out));
	const struct http_header *h = req->headers;
	size_t nh = req->n_headers;
	out->session_token = http_header_get(h, nh, "x-amz-security-token") != NULL;
	const char *auth = http_header_get(h, nh, "authorization");
	if (!auth) {
		const char *q = req->query ? req->query : "";
		if (strstr(q, "X-Amz-Signature=") || strstr(q, "X-Amz-Credential="))
			return refuse(out, SIGV4_INCOMPLETE,
				      "Presigned URLs (query-string authentication) are not supported by this service; "
				      "sign the request with an Authorization header.");
		return refuse(out, SIGV4_MISSING_TOKEN, "Missing Authentication Token");
	}
	struct sigv4_auth a;
	char err[1024];
	int r = sigv4_auth_parse(auth, &a, err, sizeof(err));
	if (r == -EINVAL)
		return refuse(out, SIGV4_INCOMPLETE, "%s", err);
	if (r < 0)
		return r;
	if (strlen(a.access_key_id) > SIGV4_MAX_KEY_ID || strlen(a.region) > SIGV4_MAX_REGION) {
		r = refuse(out, SIGV4_INCOMPLETE, "The access key id or region in the Credential is too long.");
	} else {
		snprintf(out->access_key_id, sizeof(out->access_key_id), "%s", a.access_key_id);
		snprintf(out->region, sizeof(out->region), "%s", a.region);
		r = verify_parsed(v, req, body, body_len, now, &a, out);
	}
	sigv4_auth_cleanup(&a);
	return r;
}

/* ---- the credentials file ------------------------------------------------------------ */

struct key_entry {
	char *id, *secret, *profile;
};

struct sigv4_keys {
	struct key_entry *e; /* sorted by id */
	size_t n, cap;
};

static void entry_free(struct key_entry *e)
{
	if (e->secret)
		OPENSSL_cleanse(e->secret, strlen(e->secret));
	free(e->id);
	free(e->secret);
	free(e->profile);
}

void sigv4_keys_free(struct sigv4_keys *k)
{
	if (!k)
		return;
	for (size_t i = 0; i < k->n; i++)
		entry_free(&k->e[i]);
	free(k->e);
	free(k);
}

size_t sigv4_keys_count(const struct sigv4_keys *k) { return k->n; }

static int compare_entries(const void *a, const void *b)
{
	return strcmp(((const struct key_entry *)a)->id, ((const struct key_entry *)b)->id);
}

static const struct key_entry *find_entry(const struct sigv4_keys *k, const char *id)
{
	struct key_entry probe = {.id = (char *)id};
	if (!k->n)
		return NULL;
	return bsearch(&probe, k->e, k->n, sizeof(*k->e), compare_entries);
}

const char *sigv4_keys_profile(const struct sigv4_keys *k, const char *access_key_id)
{
	const struct key_entry *e = find_entry(k, access_key_id);
	return e ? e->profile : NULL;
}

int sigv4_keys_lookup(void *keys, const char *access_key_id, char *secret, size_t secret_size)
{
	const struct key_entry *e = find_entry(keys, access_key_id);
	if (!e)
		return -ENOENT;
	size_t n = strlen(e->secret);
	if (n >= secret_size)
		return -ERANGE;
	memcpy(secret, e->secret, n + 1);
	return 0;
}

/* The section being read. */
struct section {
	char *name;
	unsigned line;
	char *id, *secret;
	unsigned id_line, secret_line;
};

static void section_clear(struct section *s)
{
	if (s->secret)
		OPENSSL_cleanse(s->secret, strlen(s->secret));
	free(s->name);
	free(s->id);
	free(s->secret);
	memset(s, 0, sizeof(*s));
}

/* Close section |s|: check it and move its key pair into |k|. */
static int section_finish(struct sigv4_keys *k, struct section *s, const char *name, char *err, size_t errlen)
{
	if (!s->name || (!s->id && !s->secret))
		return 0;
	if (!s->id || !s->secret)
		return err_set(err, errlen, -EINVAL, "%s:%u: profile [%s] has %s but no %s", name, s->line, s->name,
			       s->id ? "aws_access_key_id" : "aws_secret_access_key",
			       s->id ? "aws_secret_access_key" : "aws_access_key_id");
	size_t idlen = strlen(s->id);
	bool id_ok = idlen <= SIGV4_MAX_KEY_ID;
	for (size_t i = 0; id_ok && i < idlen; i++)
		id_ok = s->id[i] > ' ' && s->id[i] < 0x7f && s->id[i] != '/';
	if (!id_ok)
		return err_set(err, errlen, -EINVAL,
			       "%s:%u: aws_access_key_id must be at most %d printable characters without '/' or spaces",
			       name, s->id_line, SIGV4_MAX_KEY_ID);
	if (strlen(s->secret) >= SIGV4_MAX_SECRET)
		return err_set(err, errlen, -EINVAL, "%s:%u: aws_secret_access_key is longer than %d characters", name,
			       s->secret_line, SIGV4_MAX_SECRET - 1);
	for (size_t i = 0; i < k->n; i++) {
		if (strcmp(k->e[i].id, s->id))
			continue;
		if (!strcmp(k->e[i].secret, s->secret))
			return 0; /* the same pair twice: harmless */
		return err_set(err, errlen, -EINVAL,
			       "%s:%u: access key id %s in [%s] is already in [%s] with a different secret", name,
			       s->id_line, s->id, s->name, k->e[i].profile);
	}
	if (k->n == k->cap) {
		size_t cap = k->cap ? k->cap * 2 : 8;
		struct key_entry *ne = realloc(k->e, cap * sizeof(*ne));
		if (!ne)
			return -ENOMEM;
		k->e = ne;
		k->cap = cap;
	}
	k->e[k->n].id = s->id;
	k->e[k->n].secret = s->secret;
	k->e[k->n].profile = strdup(s->name);
	s->id = s->secret = NULL;
	if (!k->e[k->n].profile) {
		entry_free(&k->e[k->n]);
		return -ENOMEM;
	}
	k->n++;
	return 0;
}

/* Handle "name = value" on line |lineno| of section |s|.  |*cur| is set to
 * which credential the line set (for continuation lines). */
static int section_set(struct section *s, char *line, unsigned lineno, const char *name, int *cur, char *err,
		       size_t errlen)
{
	size_t sep = strcspn(line, "=:");
	if (!line[sep])
		return err_set(err, errlen, -EINVAL,
			       "%s:%u: expected a [profile] header, a 'name = value' setting or a comment", name,
			       lineno);
	if (!s->name)
		return err_set(err, errlen, -EINVAL, "%s:%u: a setting before the first [profile] header", name,
			       lineno);
	line[sep] = 0;
	char *key = trim(line), *value = trim(line + sep + 1);
	*cur = !strcasecmp(key, "aws_access_key_id") ? 1 : !strcasecmp(key, "aws_secret_access_key") ? 2 : 0;
	if (*cur == 0)
		return 0; /* region, aws_session_token, ...: not ours */
	char **slot = *cur == 1 ? &s->id : &s->secret;
	if (*slot)
		return err_set(err, errlen, -EINVAL, "%s:%u: %s is set twice in [%s]", name, lineno, key, s->name);
	if (!*value)
		return err_set(err, errlen, -EINVAL, "%s:%u: %s is empty", name, lineno, key);
	if (!(*slot = strdup(value)))
		return -ENOMEM;
	*(*cur == 1 ? &s->id_line : &s->secret_line) = lineno;
	return 0;
}

int sigv4_keys_parse(const char *text, size_t len, const char *name, struct sigv4_keys **out, char *err,
		     size_t errlen)
{
	struct sigv4_keys *k = calloc(1, sizeof(*k));
	char *copy = malloc(len + 1);
	char **seen = NULL; /* section names so far */
	size_t n_seen = 0;
	struct section s = {0};
	int r = 0;
	if (!k || !copy) {
		r = -ENOMEM;
		goto out;
	}
	memcpy(copy, text, len);
	copy[len] = 0;
	if (strlen(copy) != len) {
		r = err_set(err, errlen, -EINVAL, "%s: contains a NUL byte; is it really a credentials file?", name);
		goto out;
	}
	unsigned lineno = 0;
	int cur = -1; /* what the last setting line set: -1 none yet, 0 not ours, 1 id, 2 secret */
	for (char *line = copy, *next; line; line = next) {
		lineno++;
		next = strchr(line, '\n');
		if (next)
			*next++ = 0;
		size_t n = strlen(line);
		if (n && line[n - 1] == '\r')
			line[--n] = 0;
		char *t = trim(line);
		if (!*t || *t == '#' || *t == ';')
			continue;
		if (t != line && cur >= 0) {
			/* An indented line continues the setting above it. */
			if (cur == 0)
				continue;
			r = err_set(err, errlen, -EINVAL, "%s:%u: %s must be on one line", name, lineno,
				    cur == 1 ? "aws_access_key_id" : "aws_secret_access_key");
			break;
		}
		if (*t != '[') {
			if ((r = section_set(&s, t, lineno, name, &cur, err, errlen)) < 0)
				break;
			continue;
		}
		cur = -1;
		size_t tl = strlen(t);
		char *sec = t[tl - 1] == ']' ? (t[tl - 1] = 0, trim(t + 1)) : NULL;
		if (!sec || !*sec || strpbrk(sec, "[]")) {
			r = err_set(err, errlen, -EINVAL, "%s:%u: malformed section header (expected [name])", name,
				    lineno);
			break;
		}
		for (size_t i = 0; i < n_seen && r == 0; i++)
			if (!strcmp(seen[i], sec))
				r = err_set(err, errlen, -EINVAL, "%s:%u: section [%s] appears twice", name, lineno, sec);
		if (r == 0)
			r = section_finish(k, &s, name, err, errlen);
		if (r < 0)
			break;
		section_clear(&s);
		char **ns = realloc(seen, (n_seen + 1) * sizeof(*ns));
		if (ns)
			seen = ns;
		if (!ns || !(seen[n_seen] = strdup(sec))) {
			r = -ENOMEM;
			break;
		}
		n_seen++;
		if (!(s.name = strdup(sec))) {
			r = -ENOMEM;
			break;
		}
		s.line = lineno;
	}
	if (r == 0)
		r = section_finish(k, &s, name, err, errlen);
	if (r == 0 && k->n)
		qsort(k->e, k->n, sizeof(*k->e), compare_entries);
out:
	if (r == -ENOMEM)
		err_set(err, errlen, r, "%s: out of memory", name);
	section_clear(&s);
	for (size_t i = 0; i < n_seen; i++)
		free(seen[i]);
	free(seen);
	if (copy) {
		OPENSSL_cleanse(copy, len);
		free(copy);
	}
	if (r < 0) {
		sigv4_keys_free(k);
		return r;
	}
	*out = k;
	return 0;
}

int sigv4_keys_load(const char *path, struct sigv4_keys **out, char *err, size_t errlen)
{
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0) {
		int e = -errno;
		return err_set(err, errlen, e, "%s: %s", path, strerror(-e));
	}
	struct stat st;
	if (fstat(fd, &st) < 0) {
		int e = -errno;
		close(fd);
		return err_set(err, errlen, e, "%s: %s", path, strerror(-e));
	}
	close(fd);
	if (!S_ISREG(st.st_mode))
		return err_set(err, errlen, -EINVAL, "%s: not a regular file", path);
	if (st.st_mode & (S_IRWXG | S_IRWXO))
		log_warn("credentials file %s can be read or written by other users (mode %04o), so its secrets are "
			 "not private: run chmod 600 %s",
			 path, (unsigned)(st.st_mode & 07777), path);
	uint8_t *buf;
	size_t len;
	int r = read_file_all(path, CREDENTIALS_MAX, &buf, &len);
	if (r == -EFBIG)
		return err_set(err, errlen, r, "%s: larger than %u bytes; is it really a credentials file?", path,
			       CREDENTIALS_MAX);
	if (r < 0)
		return err_set(err, errlen, r, "%s: %s", path, strerror(-r));
	r = sigv4_keys_parse((const char *)buf, len, path, out, err, errlen);
	OPENSSL_cleanse(buf, len);
	free(buf);
	return r;
}
