/* AWS Signature Version 4 (common/sigv4.c): AWS's published test-suite
 * vectors, S3 vectors, sign->verify round trips, every way the verifier
 * refuses a request, and the credentials-file parser.  The cross-check
 * against botocore is tests/integration/72-sigv4-botocore.sh. */
#include "common/sigv4.h"
#include "tests/check.h"

#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/* ---- AWS's SigV4 test suite (aws-sig-v4-test-suite, 2015-08-30) ----------------------- */

#define SUITE_ID "AKIDEXAMPLE"
#define SUITE_SECRET "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY"
#define SUITE_DATE "20150830T123600Z"
#define SUITE_TIME 1440938160 /* 2015-08-30T12:36:00Z */
#define STS_TOKEN                                                                                                      \
	"AQoDYXdzEPT//////////wEXAMPLEtc764bNrC9SAPBSM22wDOk4x4HIZ8j4FZTwdQWLWsKWHGBuFqwAeMicRXmxfpSPfIeoIYRqTflfKD8YUu" \
	"wthAx7mSEI/qkPpKPi/kMcGdQrmGdeehM4IC1NtBmUpp2wUE8phUZampKsburEDy0KPkyQDYwT7WZ0wq5VSXDvp75YU9HFvlRd8Tx6q6fE8Y" \
	"QcHNVXAkiY9q6d+xo0rKwT38xVqr7ZD0u0iPPkUL64lIZbqBAz+scqKmlzm8FDrypNC9Yjc8fPOLn9FX9KSYvKTr4rvx3iSIlTJabIQwj2I" \
	"CCR/oLxBA=="

struct vector {
	const char *name;
	const char *method, *path, *query;
	const char *headers; /* "Name:value" lines, in request order */
	const char *body;
	const char *signed_headers; /* what the suite signs */
	const char *signature;
};

/* Every header of the request is signed, except where |signed_headers|
 * says otherwise (post-sts-header-after adds the token after signing). */
static const struct vector suite[] = {
	{"get-header-key-duplicate", "GET", "/", "",
	 "Host:example.amazonaws.com\nMy-Header1:value2\nMy-Header1:value2\nMy-Header1:value1\nX-Amz-Date:" SUITE_DATE,
	 "", "host;my-header1;x-amz-date", "c9d5ea9f3f72853aea855b47ea873832890dbdd183b4468f858259531a5138ea"},
	{"get-header-value-multiline", "GET", "/", "",
	 "Host:example.amazonaws.com\nMy-Header1:value1\nMy-Header1:  value2\nMy-Header1:     value3\nX-Amz-Date:" SUITE_DATE,
	 "", "host;my-header1;x-amz-date", "ba17b383a53190154eb5fa66a1b836cc297cc0a3d70a5d00705980573d8ff790"},
	{"get-header-value-order", "GET", "/", "",
	 "Host:example.amazonaws.com\nMy-Header1:value4\nMy-Header1:value1\nMy-Header1:value3\nMy-Header1:value2\n"
	 "X-Amz-Date:" SUITE_DATE,
	 "", "host;my-header1;x-amz-date", "08c7e5a9acfcfeb3ab6b2185e75ce8b1deb5e634ec47601a50643f830c755c01"},
	{"get-header-value-trim", "GET", "/", "",
	 "Host:example.amazonaws.com\nMy-Header1: value1\nMy-Header2: \"a   b   c\"\nX-Amz-Date:" SUITE_DATE, "",
	 "host;my-header1;my-header2;x-amz-date", "acc3ed3afb60bb290fc8d2dd0098b9911fcaa05412b367055dee359757a9c736"},
	{"get-unreserved", "GET", "/-._~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz", "",
	 "Host:example.amazonaws.com\nX-Amz-Date:" SUITE_DATE, "", "host;x-amz-date",
	 "07ef7494c76fa4850883e2b006601f940f8a34d404d0cfa977f52a65bbf5f24f"},
	{"get-utf8", "GET", "/\xe1\x88\xb4", "", "Host:example.amazonaws.com\nX-Amz-Date:" SUITE_DATE, "",
	 "host;x-amz-date", "8318018e0b0f223aa2bbf98705b62bb787dc9c0e678f255a891fd03141be5d85"},
	{"get-vanilla", "GET", "/", "", "Host:example.amazonaws.com\nX-Amz-Date:" SUITE_DATE, "", "host;x-amz-date",
	 "5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf31"},
	{"get-vanilla-empty-query-key", "GET", "/", "Param1=value1", "Host:example.amazonaws.com\nX-Amz-Date:" SUITE_DATE,
	 "", "host;x-amz-date", "a67d582fa61cc504c4bae71f336f98b97f1ea3c7a6bfe1b6e45aec72011b9aeb"},
	{"get-vanilla-query-order-key", "GET", "/", "Param1=value2&Param1=Value1",
	 "Host:example.amazonaws.com\nX-Amz-Date:" SUITE_DATE, "", "host;x-amz-date",
	 "eedbc4e291e521cf13422ffca22be7d2eb8146eecf653089df300a15b2382bd1"},
	{"get-vanilla-query-order-key-case", "GET", "/", "Param2=value2&Param1=value1",
	 "Host:example.amazonaws.com\nX-Amz-Date:" SUITE_DATE, "", "host;x-amz-date",
	 "b97d918cfa904a5beff61c982a1b6f458b799221646efd99d3219ec94cdf2500"},
	{"get-vanilla-query-order-value", "GET", "/", "Param1=value2&Param1=value1",
	 "Host:example.amazonaws.com\nX-Amz-Date:" SUITE_DATE, "", "host;x-amz-date",
	 "5772eed61e12b33fae39ee5e7012498b51d56abc0abb7c60486157bd471c4694"},
	{"get-vanilla-query-unreserved", "GET", "/",
	 "-._~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz="
	 "-._~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz",
	 "Host:example.amazonaws.com\nX-Amz-Date:" SUITE_DATE, "", "host;x-amz-date",
	 "9c3e54bfcdf0b19771a7f523ee5669cdf59bc7cc0884027167c21bb143a40197"},
	{"get-vanilla-utf8-query", "GET", "/", "\xe1\x88\xb4=bar", "Host:example.amazonaws.com\nX-Amz-Date:" SUITE_DATE,
	 "", "host;x-amz-date", "2cdec8eed098649ff3a119c94853b13c643bcf08f8b0a1d91e12c9027818dd04"},
	{"post-header-key-case", "POST", "/", "", "Host:example.amazonaws.com\nX-Amz-Date:" SUITE_DATE, "",
	 "host;x-amz-date", "5da7c1a2acd57cee7505fc6676e4e544621c30862966e37dddb68e92efbe5d6b"},
	{"post-header-key-sort", "POST", "/", "",
	 "Host:example.amazonaws.com\nMy-Header1:value1\nX-Amz-Date:" SUITE_DATE, "", "host;my-header1;x-amz-date",
	 "c5410059b04c1ee005303aed430f6e6645f61f4dc9e1461ec8f8916fdf18852c"},
	{"post-header-value-case", "POST", "/", "",
	 "Host:example.amazonaws.com\nMy-Header1:VALUE1\nX-Amz-Date:" SUITE_DATE, "", "host;my-header1;x-amz-date",
	 "cdbc9802e29d2942e5e10b5bccfdd67c5f22c7c4e8ae67b53629efa58b974b7d"},
	{"post-vanilla-query", "POST", "/", "Param1=value1", "Host:example.amazonaws.com\nX-Amz-Date:" SUITE_DATE, "",
	 "host;x-amz-date", "28038455d6de14eafc1f9222cf5aa6f1a96197d7deb8263271d420d138af7f11"},
	{"post-x-www-form-urlencoded", "POST", "/", "",
	 "Content-Type:application/x-www-form-urlencoded\nHost:example.amazonaws.com\nX-Amz-Date:" SUITE_DATE,
	 "Param1=value1", "content-type;host;x-amz-date",
	 "ff11897932ad3f4e8b18135d722051e5ac45fc38421b1da7b9d196a0fe09473a"},
	{"post-x-www-form-urlencoded-parameters", "POST", "/", "",
	 "Content-Type:application/x-www-form-urlencoded; charset=utf8\nHost:example.amazonaws.com\n"
	 "X-Amz-Date:" SUITE_DATE,
	 "Param1=value1", "content-type;host;x-amz-date",
	 "1a72ec8f64bd914b0e42e42607c7fbce7fb2c7465f63e3092b3b0d39fa77a6fe"},
	/* normalize-path */
	{"get-relative", "GET", "/example/..", "", "Host:example.amazonaws.com\nX-Amz-Date:" SUITE_DATE, "",
	 "host;x-amz-date", "5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf31"},
	{"get-relative-relative", "GET", "/example1/example2/../..", "",
	 "Host:example.amazonaws.com\nX-Amz-Date:" SUITE_DATE, "", "host;x-amz-date",
	 "5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf31"},
	{"get-slash", "GET", "//", "", "Host:example.amazonaws.com\nX-Amz-Date:" SUITE_DATE, "", "host;x-amz-date",
	 "5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf31"},
	{"get-slash-dot-slash", "GET", "/./", "", "Host:example.amazonaws.com\nX-Amz-Date:" SUITE_DATE, "",
	 "host;x-amz-date", "5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf31"},
	{"get-slash-pointless-dot", "GET", "/./example", "", "Host:example.amazonaws.com\nX-Amz-Date:" SUITE_DATE, "",
	 "host;x-amz-date", "ef75d96142cf21edca26f06005da7988e4f8dc83a165a80865db7089db637ec5"},
	{"get-slashes", "GET", "//example//", "", "Host:example.amazonaws.com\nX-Amz-Date:" SUITE_DATE, "",
	 "host;x-amz-date", "9a624bd73a37c9a373b5312afbebe7a714a789de108f0bdfe846570885f57e84"},
	{"get-space", "GET", "/example space/", "", "Host:example.amazonaws.com\nX-Amz-Date:" SUITE_DATE, "",
	 "host;x-amz-date", "652487583200325589f1fba4c7e578f72c47cb61beeca81406b39ddec1366741"},
	/* post-sts-token */
	{"post-sts-header-before", "POST", "/", "",
	 "Host:example.amazonaws.com\nX-Amz-Date:" SUITE_DATE "\nX-Amz-Security-Token:" STS_TOKEN, "",
	 "host;x-amz-date;x-amz-security-token", "85d96828115b5dc0cfc3bd16ad9e210dd772bbebba041836c64533a82be05ead"},
	{"post-sts-header-after", "POST", "/", "",
	 "Host:example.amazonaws.com\nX-Amz-Date:" SUITE_DATE "\nX-Amz-Security-Token:" STS_TOKEN, "",
	 "host;x-amz-date", "5da7c1a2acd57cee7505fc6676e4e544621c30862966e37dddb68e92efbe5d6b"},
};

/* A request built from test text; owns its strings. */
struct built {
	struct http_header h[16];
	size_t n;
	char *buf;
	char hash[SHA256_HEX_LEN + 1];
	struct sigv4_request req;
};

static void build(struct built *b, const char *method, const char *path, const char *query, const char *headers,
		  const char *body)
{
	memset(b, 0, sizeof(*b));
	b->buf = strdup(headers);
	for (char *save = NULL, *line = strtok_r(b->buf, "\n", &save); line && b->n < 16;
	     line = strtok_r(NULL, "\n", &save)) {
		char *colon = strchr(line, ':');
		*colon = 0;
		b->h[b->n++] = (struct http_header){line, colon + 1};
	}
	uint8_t d[SHA256_LEN];
	sha256_buf(body, strlen(body), d);
	hex_encode(d, sizeof(d), b->hash);
	b->req = (struct sigv4_request){method, path, query, b->h, b->n, b->hash};
}

static int suite_lookup(void *arg, const char *id, char *secret, size_t size)
{
	(void)arg;
	if (strcmp(id, SUITE_ID))
		return -ENOENT;
	snprintf(secret, size, "%s", SUITE_SECRET);
	return 0;
}

static void test_suite_vectors(void)
{
	const struct sigv4_key key = {SUITE_ID, SUITE_SECRET};
	const struct sigv4_verifier v = {.service = "service", .lookup = suite_lookup};
	for (size_t i = 0; i < sizeof(suite) / sizeof(suite[0]); i++) {
		const struct vector *t = &suite[i];
		struct built b;
		build(&b, t->method, t->path, t->query, t->headers, t->body);
		/* The signature through the steps, signing what the suite signs. */
		char *creq = NULL, *sts = NULL, sig[SHA256_HEX_LEN + 1] = "", err[256];
		uint8_t k[SHA256_LEN];
		CHECK(sigv4_canonical_request(&b.req, "service", t->signed_headers, &creq, err, sizeof(err)) == 0);
		CHECK(creq && sigv4_string_to_sign(SUITE_DATE, "us-east-1", "service", creq, &sts) == 0);
		CHECK(sigv4_signing_key(SUITE_SECRET, SUITE_DATE, "us-east-1", "service", k) == 0);
		CHECK(sts && sigv4_signature(k, sts, sig) == 0);
		if (strcmp(sig, t->signature))
			fprintf(stderr, "%s: signature %s, want %s\ncanonical request:\n%s\n", t->name, sig, t->signature,
				creq ? creq : "(none)");
		CHECK(!strcmp(sig, t->signature));

		/* The whole Authorization header from sigv4_sign, where the
		 * suite signs every header it sends. */
		if (strcmp(t->name, "post-sts-header-after") != 0) {
			char *auth = NULL;
			CHECK(sigv4_sign(&b.req, SUITE_DATE, "us-east-1", "service", &key, &auth) == 0);
			char want[512];
			snprintf(want, sizeof(want),
				 "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/service/aws4_request, "
				 "SignedHeaders=%s, Signature=%s",
				 t->signed_headers, t->signature);
			CHECK(auth && !strcmp(auth, want));
			free(auth);
		}

		/* The verifier accepts the suite's signed request. */
		char auth_hdr[512];
		snprintf(auth_hdr, sizeof(auth_hdr),
			 "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/service/aws4_request, "
			 "SignedHeaders=%s, Signature=%s",
			 t->signed_headers, t->signature);
		b.h[b.n++] = (struct http_header){"Authorization", auth_hdr};
		b.req.n_headers = b.n;
		b.req.payload_hash = NULL;
		struct sigv4_verdict vd;
		CHECK(sigv4_verify(&v, &b.req, t->body, strlen(t->body), SUITE_TIME + 60, &vd) == 0);
		if (vd.status != SIGV4_ACCEPTED)
			fprintf(stderr, "%s: refused: %s\n", t->name, vd.message ? vd.message : "");
		CHECK(vd.status == SIGV4_ACCEPTED && vd.http_status == 0 && !vd.error_type && !vd.message);
		CHECK(!strcmp(vd.access_key_id, SUITE_ID) && !strcmp(vd.region, "us-east-1"));
		CHECK(vd.session_token == (strstr(t->name, "sts") != NULL));
		sigv4_verdict_cleanup(&vd);
		free(creq);
		free(sts);
		free(b.buf);
	}
}

/* The suite's intermediate results for a few requests, byte for byte. */
static void test_suite_steps(void)
{
	struct built b;
	char *creq = NULL, *sts = NULL, err[128];
	build(&b, "GET", "/", "", "Host:example.amazonaws.com\nX-Amz-Date:" SUITE_DATE, "");
	CHECK(sigv4_canonical_request(&b.req, "service", "host;x-amz-date", &creq, err, sizeof(err)) == 0);
	CHECK(creq && !strcmp(creq, "GET\n/\n\nhost:example.amazonaws.com\nx-amz-date:20150830T123600Z\n\nhost;x-amz-date\n"
				     "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"));
	CHECK(creq && sigv4_string_to_sign(SUITE_DATE, "us-east-1", "service", creq, &sts) == 0);
	CHECK(sts && !strcmp(sts, "AWS4-HMAC-SHA256\n20150830T123600Z\n20150830/us-east-1/service/aws4_request\n"
				  "bb579772317eb040ac9ed261061d46c1f17a8133879d6129b6e1c25292927e63"));
	free(creq);
	free(sts);
	free(b.buf);

	build(&b, "GET", "/", "", "Host:example.amazonaws.com\nMy-Header1: value1\nMy-Header2: \"a   b   c\"\nX-Amz-Date:" SUITE_DATE,
	      "");
	CHECK(sigv4_canonical_request(&b.req, "service", "host;my-header1;my-header2;x-amz-date", &creq, err,
				      sizeof(err)) == 0);
	CHECK(creq && strstr(creq, "\nmy-header1:value1\nmy-header2:\"a b c\"\n"));
	free(creq);
	free(b.buf);

	/* The signing key from AWS's "derive a signing key" examples. */
	uint8_t k[SHA256_LEN];
	char hex[SHA256_HEX_LEN + 1];
	CHECK(sigv4_signing_key(SUITE_SECRET, "20150830", "us-east-1", "iam", k) == 0);
	hex_encode(k, sizeof(k), hex);
	CHECK(!strcmp(hex, "c4afb1cc5771d871763a393e44b703571b55cc28424d1a5e86da6ed3c154a4b9"));
	CHECK(sigv4_signing_key(SUITE_SECRET, "20120215", "us-east-1", "iam", k) == 0);
	hex_encode(k, sizeof(k), hex);
	CHECK(!strcmp(hex, "f4780e2d9f65fa895f9c67b32ce1baf0b0d8a43505a000a1a9e090d414db404d"));
}

/* Canonical URIs: S3 signs the path as sent, other services encode it once
 * more after removing dot and empty segments (botocore's rules). */
static void test_canonical_uri(void)
{
	static const struct {
		const char *path, *service, *want;
	} cases[] = {
		{"/2015-03-31/functions/my%3Afn/invocations", "lambda", "/2015-03-31/functions/my%253Afn/invocations"},
		{"/2015-03-31/functions/my%3Afn/invocations", "s3", "/2015-03-31/functions/my%3Afn/invocations"},
		{"/a%20b/c", "lambda", "/a%2520b/c"},
		{"/k/sp ace+plus~x", "s3", "/k/sp ace+plus~x"},
		{"/k/a//b/./c/../d/", "s3", "/k/a//b/./c/../d/"},
		{"/k/a//b/./c/../d/", "lambda", "/k/a/b/d/"},
		{"", "lambda", "/"},
		{"", "s3", "/"},
		{"/..", "lambda", "/"},
		{"/a/%2E%2E/b", "lambda", "/a/%252E%252E/b"},
		{"/\xc3\xa9", "lambda", "/%C3%A9"},
		{"/a:b/c", "lambda", "/a%3Ab/c"},
	};
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		char *out = NULL;
		CHECK(sigv4_canonical_uri(cases[i].path, cases[i].service, &out) == 0);
		if (!out || strcmp(out, cases[i].want))
			fprintf(stderr, "canonical uri of %s for %s: %s, want %s\n", cases[i].path, cases[i].service,
				out ? out : "(null)", cases[i].want);
		CHECK(out && !strcmp(out, cases[i].want));
		free(out);
	}
}

static void test_canonical_query(void)
{
	static const struct {
		const char *raw, *want;
	} cases[] = {
		{"", ""},
		{"b=2&a=1", "a=1&b=2"},
		{"a=2&a=1&a=10", "a=1&a=10&a=2"},
		{"flag", "flag="},
		{"flag=&x=1", "flag=&x=1"},
		{"&&a=1&", "a=1"},
		{"k=a%2fb%20c", "k=a%2Fb%20c"},
		{"k=a+b", "k=a%2Bb"},
		{"k=%7e%41", "k=~A"},
		{"Marker=abc%3D%3D&MaxItems=5", "Marker=abc%3D%3D&MaxItems=5"},
		{"k=%00", "k=%00"},
	};
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		char *out = NULL;
		CHECK(sigv4_canonical_query(cases[i].raw, &out) == 0);
		CHECK(out && !strcmp(out, cases[i].want));
		free(out);
	}
	char *out = NULL;
	CHECK(sigv4_canonical_query("k=%zz", &out) == -EINVAL && !out);
	CHECK(sigv4_canonical_query("k=%4", &out) == -EINVAL && !out);
	CHECK(sigv4_canonical_query(NULL, &out) == 0 && out && !*out);
	free(out);

	static const char *const names[] = {"prefix", "list-type", "continuation-token"};
	static const char *const values[] = {"t0/refs/", "2", "a/b== c"};
	char *q = sigv4_query_encode(names, values, 3);
	CHECK(q && !strcmp(q, "continuation-token=a%2Fb%3D%3D%20c&list-type=2&prefix=t0%2Frefs%2F"));
	free(q);
	q = sigv4_query_encode(NULL, NULL, 0);
	CHECK(q && !*q);
	free(q);
}

/* ---- S3 ------------------------------------------------------------------------------- */

static void s3_case(const char *method, const char *path, const char *query, const char *host, const char *extra,
		    const char *body, const char *want)
{
	char headers[512];
	uint8_t d[SHA256_LEN];
	char hash[SHA256_HEX_LEN + 1];
	sha256_buf(body, strlen(body), d);
	hex_encode(d, sizeof(d), hash);
	snprintf(headers, sizeof(headers), "host:%s\n%sx-amz-content-sha256:%s\nx-amz-date:20130524T000000Z", host,
		 extra, hash);
	struct built b;
	build(&b, method, path, query, headers, body);
	const struct sigv4_key key = {"AKIAIOSFODNN7EXAMPLE", "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"};
	char *auth = NULL;
	CHECK(sigv4_sign(&b.req, "20130524T000000Z", "us-east-1", "s3", &key, &auth) == 0);
	const char *sig = auth ? strstr(auth, "Signature=") : NULL;
	if (!sig || strcmp(sig + 10, want))
		fprintf(stderr, "s3 %s %s?%s: %s, want %s\n", method, path, query, sig ? sig + 10 : "(none)", want);
	CHECK(sig && !strcmp(sig + 10, want));
	free(auth);
	free(b.buf);
}

static void test_s3_vectors(void)
{
	/* The S3 API reference's "GET Object" example. */
	s3_case("GET", "/test.txt", "", "examplebucket.s3.amazonaws.com", "range:bytes=0-9\n", "",
		"f0e8bdb87c964420e857bd35b5d6ed310bd44f0170aba48dd91039c6036bdb41");
	/* Computed by botocore's S3SigV4Auth: an encoded key with a space, '+'
	 * and '~'; ListObjectsV2 with a token that needs encoding; a PUT. */
	s3_case("GET", "/kindling-test/t0/odd/sp%20ace%2Bplus~x", "", "127.0.0.1:4568", "", "",
		"22fb8f7446c5cd5095ae32965b7acee4d6a329ed65618835aa9ee892dcf3a019");
	s3_case("GET", "/kindling-test", "continuation-token=a%2Fb%3D%3D%20c&list-type=2&prefix=t0%2Frefs%2F",
		"127.0.0.1:4568", "", "", "5ee96a030e8e2499c812e4d0ef421abd0a31f9c44a6fafb85c2af96c56b575b9");
	s3_case("PUT", "/test%24file.text", "", "examplebucket.s3.amazonaws.com", "", "Welcome to Amazon S3.",
		"1e15d288c066d54cc20d8f664ade3fa96e6744b2861304671f6eb633045a2d4a");
}

/* The IAM documentation's ListUsers example. */
static void test_iam_example(void)
{
	struct built b;
	build(&b, "GET", "/", "Action=ListUsers&Version=2010-05-08",
	      "Content-Type:application/x-www-form-urlencoded; charset=utf-8\nHost:iam.amazonaws.com\n"
	      "X-Amz-Date:" SUITE_DATE,
	      "");
	const struct sigv4_key key = {SUITE_ID, SUITE_SECRET};
	char *auth = NULL;
	CHECK(sigv4_sign(&b.req, SUITE_DATE, "us-east-1", "iam", &key, &auth) == 0);
	CHECK(auth && !strcmp(auth, "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/iam/aws4_request, "
				    "SignedHeaders=content-type;host;x-amz-date, "
				    "Signature=5d672d79c15b13162d9279b0855cfba6789a8edb4c82c400e06b5924a6f2b5d7"));
	free(auth);
	free(b.buf);
}

/* ---- round trips and refusals ------------------------------------------------------------ */

#define LAMBDA_ID "AKIAKINDLINGTEST0001"
#define LAMBDA_SECRET "kindling/test+secret0123456789abcdefABCDEF"
#define NOW ((time_t)1700000000) /* 2023-11-14T22:13:20Z */

static int lambda_lookup(void *arg, const char *id, char *secret, size_t size)
{
	int *calls = arg;
	if (calls)
		(*calls)++;
	if (!strcmp(id, "AKIAFAILINGLOOKUP000"))
		return -EIO;
	if (strcmp(id, LAMBDA_ID))
		return -ENOENT;
	snprintf(secret, size, "%s", LAMBDA_SECRET);
	return 0;
}

/* A signed Lambda request that tests change before verifying. */
struct signed_req {
	struct http_header h[16];
	size_t n;
	char date[17];
	char hash[SHA256_HEX_LEN + 1];
	char *auth;
	const char *body;
	struct sigv4_request req;
};

/* Sign |method| |path|?|query| with |body| at |t| as botocore would for
 * Lambda: host, x-amz-date and content headers signed. */
static void sign_lambda(struct signed_req *s, const char *method, const char *path, const char *query,
			const char *body, time_t t, const char *secret)
{
	memset(s, 0, sizeof(*s));
	sigv4_amz_date(t, s->date);
	uint8_t d[SHA256_LEN];
	sha256_buf(body, strlen(body), d);
	hex_encode(d, sizeof(d), s->hash);
	s->body = body;
	s->h[s->n++] = (struct http_header){"Host", "127.0.0.1:9000"};
	s->h[s->n++] = (struct http_header){"X-Amz-Date", s->date};
	s->h[s->n++] = (struct http_header){"Content-Type", "application/json"};
	s->h[s->n++] = (struct http_header){"X-Amz-Invocation-Type", "RequestResponse"};
	s->req = (struct sigv4_request){method, path, query, s->h, s->n, s->hash};
	const struct sigv4_key key = {LAMBDA_ID, secret};
	CHECK(sigv4_sign(&s->req, s->date, "us-east-1", "lambda", &key, &s->auth) == 0);
	s->h[s->n++] = (struct http_header){"User-Agent", "aws-cli/2.9.19 (unsigned)"};
	s->h[s->n++] = (struct http_header){"Authorization", s->auth};
	s->req.n_headers = s->n;
	s->req.payload_hash = NULL;
}

static struct sigv4_verifier lambda_verifier(int *calls)
{
	return (struct sigv4_verifier){.service = "lambda", .lookup = lambda_lookup, .lookup_arg = calls};
}

/* Verify |s| at |now| and check the status, error type and that the
 * message contains |msg|. */
static void expect(struct signed_req *s, const struct sigv4_verifier *v, time_t now, enum sigv4_status want,
		   const char *type, const char *msg)
{
	struct sigv4_verdict vd;
	int r = sigv4_verify(v, &s->req, s->body, strlen(s->body), now, &vd);
	CHECK(r == 0);
	if (vd.status != want || (msg && (!vd.message || !strstr(vd.message, msg))))
		fprintf(stderr, "verdict %d (%s: %s), want %d with \"%s\"\n", vd.status, vd.error_type ? vd.error_type : "-",
			vd.message ? vd.message : "-", want, msg ? msg : "");
	CHECK(vd.status == want);
	if (want == SIGV4_ACCEPTED) {
		CHECK(!vd.error_type && !vd.message && vd.http_status == 0);
	} else {
		CHECK(vd.http_status == 403 && vd.error_type && !strcmp(vd.error_type, type));
		CHECK(!msg || (vd.message && strstr(vd.message, msg)));
	}
	sigv4_verdict_cleanup(&vd);
	sigv4_verdict_cleanup(&vd);
}

/* |s| must fail only on its signature. */
static void expect_mismatch(struct signed_req *s, const struct sigv4_verifier *v)
{
	expect(s, v, NOW, SIGV4_BAD_SIGNATURE, "InvalidSignatureException",
	       "does not match the signature you provided");
}

/* Replace the value of header |name| in |s|. */
static void set_header(struct signed_req *s, const char *name, const char *value)
{
	for (size_t i = 0; i < s->n; i++)
		if (!strcasecmp(s->h[i].name, name)) {
			s->h[i].value = value;
			return;
		}
	s->h[s->n++] = (struct http_header){name, value};
	s->req.n_headers = s->n;
}

static void drop_header(struct signed_req *s, const char *name)
{
	for (size_t i = 0; i < s->n; i++)
		if (!strcasecmp(s->h[i].name, name)) {
			memmove(&s->h[i], &s->h[i + 1], (s->n - i - 1) * sizeof(s->h[0]));
			s->n--;
			s->req.n_headers = s->n;
			return;
		}
}

static void test_round_trips(void)
{
	const struct sigv4_verifier v = lambda_verifier(NULL);
	static const struct {
		const char *method, *path, *query, *body;
	} cases[] = {
		{"GET", "/2015-03-31/functions/", "", ""},
		{"GET", "/2015-03-31/functions/", "MaxItems=10&Marker=abc%3D%3D", ""},
		{"POST", "/2015-03-31/functions/my-function/invocations", "", "{\"key\": \"value\"}"},
		{"POST", "/2015-03-31/functions/arn%3Aaws%3Alambda%3Aus-east-1%3A123456789012%3Afunction%3Afn%3A1/invocations",
		 "", "{}"},
		{"GET", "/2015-03-31/functions/fn%3A%24LATEST", "Qualifier=%24LATEST", ""},
		{"PUT", "/2017-10-31/functions/fn/concurrency", "", "{\"ReservedConcurrentExecutions\": 5}"},
		{"DELETE", "/2015-03-31/functions/caf%C3%A9", "", ""},
		{"POST", "/a/./b/../c//d", "x=%E1%88%B4&y", "\xe1\x88\xb4 unicode body"},
	};
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		struct signed_req s;
		sign_lambda(&s, cases[i].method, cases[i].path, cases[i].query, cases[i].body, NOW, LAMBDA_SECRET);
		expect(&s, &v, NOW, SIGV4_ACCEPTED, NULL, NULL);
		/* A caller that hashed the body already gets the same answer. */
		s.req.payload_hash = s.hash;
		expect(&s, &v, NOW, SIGV4_ACCEPTED, NULL, NULL);
		s.req.payload_hash = NULL;
		/* The body hash carried in X-Amz-Content-Sha256, signed. */
		free(s.auth);
		struct signed_req t;
		sign_lambda(&t, cases[i].method, cases[i].path, cases[i].query, cases[i].body, NOW, LAMBDA_SECRET);
		free(t.auth);
		t.n -= 2;
		t.h[t.n++] = (struct http_header){"X-Amz-Content-Sha256", t.hash};
		t.req.n_headers = t.n;
		t.req.payload_hash = t.hash;
		const struct sigv4_key key = {LAMBDA_ID, LAMBDA_SECRET};
		CHECK(sigv4_sign(&t.req, t.date, "us-east-1", "lambda", &key, &t.auth) == 0);
		t.h[t.n++] = (struct http_header){"Authorization", t.auth};
		t.req.n_headers = t.n;
		t.req.payload_hash = NULL;
		expect(&t, &v, NOW, SIGV4_ACCEPTED, NULL, NULL);
		t.body = "tampered";
		expect(&t, &v, NOW, SIGV4_BAD_SIGNATURE, "InvalidSignatureException",
		       "The provided 'x-amz-content-sha256' header does not match what was computed.");
		free(t.auth);
	}
}

static void test_refusals(void)
{
	int calls = 0;
	const struct sigv4_verifier v = lambda_verifier(&calls);
	struct signed_req s;
	const char *path = "/2015-03-31/functions/my%3Afn/invocations";
	const char *body = "{\"a\":1}";
#define FRESH() (free(s.auth), sign_lambda(&s, "POST", path, "", body, NOW, LAMBDA_SECRET))
	sign_lambda(&s, "POST", path, "", body, NOW, LAMBDA_SECRET);
	expect(&s, &v, NOW, SIGV4_ACCEPTED, NULL, NULL);

	/* No Authorization at all. */
	drop_header(&s, "Authorization");
	expect(&s, &v, NOW, SIGV4_MISSING_TOKEN, "MissingAuthenticationTokenException", "Missing Authentication Token");
	s.req.query = "X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=a%2Fb&X-Amz-Signature=00";
	expect(&s, &v, NOW, SIGV4_INCOMPLETE, "IncompleteSignatureException", "Presigned URLs");

	/* Authorization headers that are not whole SigV4 ones. */
	static const struct {
		const char *value, *msg;
	} bad[] = {
		{"Bearer abc.def", "Authorization header requires 'Credential' parameter. Authorization header requires "
				   "'Signature' parameter. Authorization header requires 'SignedHeaders' parameter. "
				   "Authorization=Bearer abc.def"},
		{"", "Authorization="},
		{"AWS4-ECDSA-P256-SHA256 Credential=x", "Unsupported AWS 'algorithm': 'AWS4-ECDSA-P256-SHA256'"},
		{"AWS4-HMAC-SHA256 Credential=" LAMBDA_ID "/20231114/us-east-1/lambda/aws4_request, SignedHeaders",
		 "'SignedHeaders' not a valid key=value pair (missing equal-sign) in Authorization header"},
		{"AWS4-HMAC-SHA256 Credential=" LAMBDA_ID "/20231114/us-east-1/lambda/aws4_request, SignedHeaders=host",
		 "Authorization header requires 'Signature' parameter. Authorization="},
		{"AWS4-HMAC-SHA256 SignedHeaders=host, Signature=00",
		 "Authorization header requires 'Credential' parameter."},
		{"AWS4-HMAC-SHA256 Credential=" LAMBDA_ID "/20231114/us-east-1/lambda, SignedHeaders=host, Signature=00",
		 "Credential must have exactly 5 slash-delimited elements, e.g. keyid/date/region/service/term, got '" LAMBDA_ID
		 "/20231114/us-east-1/lambda'"},
		{"AWS4-HMAC-SHA256 Credential=" LAMBDA_ID "/20231114/us-east-1/lambda/aws4_request/x, SignedHeaders=host, "
		 "Signature=00",
		 "exactly 5 slash-delimited elements"},
		{"AWS4-HMAC-SHA256 Credential=" LAMBDA_ID "//us-east-1/lambda/aws4_request, SignedHeaders=host, Signature=00",
		 "exactly 5 slash-delimited elements"},
		{"AWS4-HMAC-SHA256 Credential=" LAMBDA_ID "/20231114/us-east-1/lambda/aws5_request, SignedHeaders=host, "
		 "Signature=00",
		 "Credential should be scoped with a valid terminator: 'aws4_request', not 'aws5_request'."},
		{"AWS4-HMAC-SHA256 Credential=" LAMBDA_ID "/2023111x/us-east-1/lambda/aws4_request, SignedHeaders=host, "
		 "Signature=00",
		 "is not of the form YYYYMMDD"},
		{"AWS4-HMAC-SHA256 Credential=" LAMBDA_ID "/20231114/us-east-1/lambda/aws4_request, Credential=x, "
		 "SignedHeaders=host, Signature=00",
		 "more than one 'Credential'"},
	};
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		FRESH();
		set_header(&s, "Authorization", bad[i].value);
		expect(&s, &v, NOW, SIGV4_INCOMPLETE, "IncompleteSignatureException", bad[i].msg);
	}

	/* Dates. */
	FRESH();
	drop_header(&s, "X-Amz-Date");
	expect(&s, &v, NOW, SIGV4_INCOMPLETE, "IncompleteSignatureException",
	       "Authorization header requires existence of either a 'X-Amz-Date' or a 'Date' header.");
	FRESH();
	set_header(&s, "X-Amz-Date", "2023-11-14T22:13:20Z");
	expect(&s, &v, NOW, SIGV4_INCOMPLETE, "IncompleteSignatureException",
	       "Date must be in ISO-8601 'basic format'. Got '2023-11-14T22:13:20Z'.");
	FRESH();
	set_header(&s, "X-Amz-Date", "20231131T221320Z"); /* no 31 November */
	expect(&s, &v, NOW, SIGV4_INCOMPLETE, "IncompleteSignatureException", "ISO-8601");
	FRESH();
	set_header(&s, "X-Amz-Date", "20231115T221320Z");
	expect(&s, &v, NOW + 86400, SIGV4_BAD_SIGNATURE, "InvalidSignatureException",
	       "Date in Credential scope does not match YYYYMMDD from ISO-8601 version of date from HTTP: '20231114' != "
	       "'20231115', from '20231115T221320Z'.");

	/* Skew: 5 minutes either way is fine, a second more is not. */
	FRESH();
	expect(&s, &v, NOW + 300, SIGV4_ACCEPTED, NULL, NULL);
	expect(&s, &v, NOW - 300, SIGV4_ACCEPTED, NULL, NULL);
	expect(&s, &v, NOW + 301, SIGV4_EXPIRED, "InvalidSignatureException",
	       "Signature expired: 20231114T221320Z is now earlier than 20231114T221321Z (20231114T221821Z - 5 min.)");
	expect(&s, &v, NOW - 301, SIGV4_EXPIRED, "InvalidSignatureException",
	       "Signature not yet current: 20231114T221320Z is still later than 20231114T221319Z (20231114T220819Z + 5 "
	       "min.)");
	struct sigv4_verifier tight = v;
	tight.max_skew_s = 90;
	expect(&s, &tight, NOW + 91, SIGV4_EXPIRED, "InvalidSignatureException", "(20231114T221451Z - 90 sec.)");

	/* Scope. */
	struct sigv4_verifier other = v;
	other.service = "s3";
	expect(&s, &other, NOW, SIGV4_BAD_SIGNATURE, "InvalidSignatureException",
	       "Credential should be scoped to correct service: 's3'. ");
	struct sigv4_verifier regional = v;
	regional.region = "eu-west-1";
	expect(&s, &regional, NOW, SIGV4_BAD_SIGNATURE, "InvalidSignatureException",
	       "Credential should be scoped to a valid region, not 'us-east-1'.");
	regional.region = "us-east-1";
	expect(&s, &regional, NOW, SIGV4_ACCEPTED, NULL, NULL);

	/* Host and the date must be signed, and every signed header sent. */
	{
		static const struct {
			const char *from, *to, *msg;
		} edits[] = {
			{";host;", ";xost;", "'Host' or ':authority' must be a 'SignedHeader' in the AWS Authorization."},
			{";x-amz-date;", ";x-amz-datf;", "'X-Amz-Date' must be a 'SignedHeader' in the AWS Authorization."},
			{"=content-type;", "=content-typf;",
			 "Header 'content-typf' is named in SignedHeaders but is not in the request."},
			{"=content-type;", "=Content-type;", "must list lower-case header names"},
			{"=content-type;", "=content-type;;", "has an empty or overlong name"},
		};
		for (size_t i = 0; i < sizeof(edits) / sizeof(edits[0]); i++) {
			FRESH();
			char auth[512];
			const char *at = strstr(s.auth, edits[i].from);
			CHECK(at != NULL);
			if (!at)
				continue;
			snprintf(auth, sizeof(auth), "%.*s%s%s", (int)(at - s.auth), s.auth, edits[i].to,
				 at + strlen(edits[i].from));
			set_header(&s, "Authorization", auth);
			expect(&s, &v, NOW, SIGV4_INCOMPLETE, "IncompleteSignatureException", edits[i].msg);
		}
	}

	/* Keys and signatures. */
	FRESH();
	calls = 0;
	{
		char auth[512];
		snprintf(auth, sizeof(auth), "%s", s.auth);
		memcpy(strstr(auth, LAMBDA_ID), "AKIAUNKNOWNKEY000000", 20);
		set_header(&s, "Authorization", auth);
		expect(&s, &v, NOW, SIGV4_UNKNOWN_KEY, "UnrecognizedClientException",
		       "The security token included in the request is invalid.");
		CHECK(calls == 1);
		snprintf(auth, sizeof(auth), "%s", s.auth);
		memcpy(strstr(auth, LAMBDA_ID), "AKIAFAILINGLOOKUP000", 20);
		set_header(&s, "Authorization", auth);
		struct sigv4_verdict vd;
		CHECK(sigv4_verify(&v, &s.req, body, strlen(body), NOW, &vd) == -EIO);
		sigv4_verdict_cleanup(&vd);
	}
	free(s.auth);
	sign_lambda(&s, "POST", path, "", body, NOW, "wrong secret");
	expect(&s, &v, NOW, SIGV4_BAD_SIGNATURE, "InvalidSignatureException",
	       "The request signature we calculated does not match the signature you provided. Check your AWS Secret "
	       "Access Key and signing method. Consult the service documentation for details.\n\nThe Canonical String "
	       "for this request should have been\n'POST\n/2015-03-31/functions/my%253Afn/invocations\n\n");
	expect(&s, &v, NOW, SIGV4_BAD_SIGNATURE, "InvalidSignatureException",
	       "The String-to-Sign should have been\n'AWS4-HMAC-SHA256\n20231114T221320Z\n20231114/us-east-1/lambda/aws4_request\n");
	FRESH();
	{
		char auth[512];
		snprintf(auth, sizeof(auth), "%s0", s.auth);
		set_header(&s, "Authorization", auth);
		expect_mismatch(&s, &v);
		snprintf(auth, sizeof(auth), "%s", s.auth);
		auth[strlen(auth) - 1] = auth[strlen(auth) - 1] == '0' ? '1' : '0';
		set_header(&s, "Authorization", auth);
		expect_mismatch(&s, &v);
		snprintf(auth, sizeof(auth), "%s", s.auth);
		for (char *p = strstr(auth, "Signature=") + 10; *p; p++)
			*p = (char)(*p >= 'a' ? *p - 'a' + 'A' : *p);
		set_header(&s, "Authorization", auth);
		expect_mismatch(&s, &v);
	}

	/* Tampering with anything signed. */
	FRESH();
	s.body = "{\"a\":2}";
	expect_mismatch(&s, &v);
	FRESH();
	s.req.path = "/2015-03-31/functions/my:fn/invocations";
	expect_mismatch(&s, &v);
	FRESH();
	s.req.method = "PUT";
	expect_mismatch(&s, &v);
	FRESH();
	s.req.query = "Qualifier=1";
	expect_mismatch(&s, &v);
	FRESH();
	s.req.query = "Qualifier=%zz";
	expect(&s, &v, NOW, SIGV4_INCOMPLETE, "IncompleteSignatureException", "malformed percent escape");
	FRESH();
	set_header(&s, "X-Amz-Invocation-Type", "Event");
	expect_mismatch(&s, &v);
	FRESH();
	set_header(&s, "Host", "127.0.0.1:9001");
	expect_mismatch(&s, &v);
	/* ... but not with what is not signed, nor with white space. */
	FRESH();
	set_header(&s, "User-Agent", "something else");
	set_header(&s, "X-Amz-Invocation-Type", "  RequestResponse\t ");
	expect(&s, &v, NOW, SIGV4_ACCEPTED, NULL, NULL);

	/* Payload hashes the verifier will not take. */
	FRESH();
	set_header(&s, "X-Amz-Content-Sha256", SIGV4_UNSIGNED_PAYLOAD);
	expect(&s, &v, NOW, SIGV4_BAD_SIGNATURE, "InvalidSignatureException", "requires a signed payload");
	FRESH();
	set_header(&s, "X-Amz-Content-Sha256", "STREAMING-AWS4-HMAC-SHA256-PAYLOAD");
	expect(&s, &v, NOW, SIGV4_BAD_SIGNATURE, "InvalidSignatureException", "is not supported");
	free(s.auth);
#undef FRESH
}

/* UNSIGNED-PAYLOAD where allowed, the Date header instead of X-Amz-Date,
 * and a signed session token. */
static void test_variants(void)
{
	struct sigv4_verifier v = lambda_verifier(NULL);
	const struct sigv4_key key = {LAMBDA_ID, LAMBDA_SECRET};
	struct http_header h[8];
	char *auth = NULL;

	h[0] = (struct http_header){"Host", "localhost:9000"};
	h[1] = (struct http_header){"X-Amz-Date", "20231114T221320Z"};
	h[2] = (struct http_header){"X-Amz-Content-Sha256", SIGV4_UNSIGNED_PAYLOAD};
	struct sigv4_request req = {"PUT", "/x", "", h, 3, SIGV4_UNSIGNED_PAYLOAD};
	CHECK(sigv4_sign(&req, "20231114T221320Z", "us-east-1", "lambda", &key, &auth) == 0);
	h[3] = (struct http_header){"Authorization", auth};
	req.n_headers = 4;
	req.payload_hash = NULL;
	struct sigv4_verdict vd;
	CHECK(sigv4_verify(&v, &req, "anything", 8, NOW, &vd) == 0 && vd.status == SIGV4_BAD_SIGNATURE);
	sigv4_verdict_cleanup(&vd);
	v.allow_unsigned_payload = true;
	CHECK(sigv4_verify(&v, &req, "anything", 8, NOW, &vd) == 0 && vd.status == SIGV4_ACCEPTED);
	sigv4_verdict_cleanup(&vd);
	v.allow_unsigned_payload = false;
	free(auth);

	/* botocore signs with Date when the request has one, written by
	 * Python's email.utils.formatdate with a "-0000" zone. */
	static const char *const dates[] = {"Tue, 14 Nov 2023 22:13:20 -0000", "Tue, 14 Nov 2023 22:13:20 GMT"};
	for (size_t i = 0; i < 2; i++) {
		h[0] = (struct http_header){"Host", "localhost:9000"};
		h[1] = (struct http_header){"Date", dates[i]};
		req = (struct sigv4_request){"GET", "/2015-03-31/functions/", "", h, 2, SIGV4_EMPTY_SHA256};
		CHECK(sigv4_sign(&req, "20231114T221320Z", "us-east-1", "lambda", &key, &auth) == 0);
		h[2] = (struct http_header){"Authorization", auth};
		req.n_headers = 3;
		req.payload_hash = NULL;
		CHECK(sigv4_verify(&v, &req, "", 0, NOW, &vd) == 0 && vd.status == SIGV4_ACCEPTED);
		sigv4_verdict_cleanup(&vd);
		CHECK(sigv4_verify(&v, &req, "", 0, NOW + 3600, &vd) == 0 && vd.status == SIGV4_EXPIRED);
		sigv4_verdict_cleanup(&vd);
		free(auth);
	}
	h[1] = (struct http_header){"Date", "14 Nov 2023 22:13:20"};
	h[2] = (struct http_header){"Authorization", "AWS4-HMAC-SHA256 Credential=" LAMBDA_ID
						      "/20231114/us-east-1/lambda/aws4_request, SignedHeaders=date;host, "
						      "Signature=00"};
	CHECK(sigv4_verify(&v, &req, "", 0, NOW, &vd) == 0 && vd.status == SIGV4_INCOMPLETE && vd.message &&
	      strstr(vd.message, "is not an HTTP date"));
	sigv4_verdict_cleanup(&vd);

	h[0] = (struct http_header){"Host", "localhost:9000"};
	h[1] = (struct http_header){"X-Amz-Date", "20231114T221320Z"};
	h[2] = (struct http_header){"X-Amz-Security-Token", STS_TOKEN};
	req = (struct sigv4_request){"GET", "/", "", h, 3, SIGV4_EMPTY_SHA256};
	CHECK(sigv4_sign(&req, "20231114T221320Z", "us-east-1", "lambda", &key, &auth) == 0);
	CHECK(auth && strstr(auth, "SignedHeaders=host;x-amz-date;x-amz-security-token,"));
	h[3] = (struct http_header){"Authorization", auth};
	req.n_headers = 4;
	req.payload_hash = NULL;
	CHECK(sigv4_verify(&v, &req, "", 0, NOW, &vd) == 0 && vd.status == SIGV4_ACCEPTED && vd.session_token);
	sigv4_verdict_cleanup(&vd);
	free(auth);

	/* The signer refuses what it cannot sign. */
	h[0] = (struct http_header){"Bad Name", "x"};
	req = (struct sigv4_request){"GET", "/", "", h, 1, SIGV4_EMPTY_SHA256};
	auth = NULL;
	CHECK(sigv4_sign(&req, "20231114T221320Z", "us-east-1", "lambda", &key, &auth) == -EINVAL && !auth);
	h[0] = (struct http_header){"Host", "x"};
	CHECK(sigv4_sign(&req, "2023-11-14", "us-east-1", "lambda", &key, &auth) == -EINVAL && !auth);
	req.query = "a=%G0";
	CHECK(sigv4_sign(&req, "20231114T221320Z", "us-east-1", "lambda", &key, &auth) == -EINVAL && !auth);

	char date[17];
	sigv4_amz_date(NOW, date);
	CHECK(!strcmp(date, "20231114T221320Z"));
}

static void test_auth_parse(void)
{
	struct sigv4_auth a;
	char err[256];
	CHECK(sigv4_auth_parse("  AWS4-HMAC-SHA256   Credential=AK/20231114/eu-west-1/lambda/aws4_request,"
			       "SignedHeaders=host;x-amz-date ,  Signature=abc, Extra=ignored",
			       &a, err, sizeof(err)) == 0);
	CHECK(!strcmp(a.access_key_id, "AK") && !strcmp(a.date, "20231114") && !strcmp(a.region, "eu-west-1") &&
	      !strcmp(a.service, "lambda") && !strcmp(a.signed_headers, "host;x-amz-date") && !strcmp(a.signature, "abc"));
	sigv4_auth_cleanup(&a);
	CHECK(sigv4_auth_parse("AWS4-HMAC-SHA256", &a, err, sizeof(err)) == -EINVAL);
	CHECK(strstr(err, "requires 'Credential'") != NULL);
	CHECK(sigv4_auth_parse("AWS4-HMAC-SHA256 ,,,", &a, err, sizeof(err)) == -EINVAL);
	CHECK(sigv4_auth_parse("AWS4-HMAC-SHA256X Credential=a", &a, err, sizeof(err)) == -EINVAL);
	CHECK(strstr(err, "Unsupported AWS 'algorithm'") != NULL);
}

/* ---- the credentials file ------------------------------------------------------------ */

static void test_keys_parse(void)
{
	static const char good[] = "# kindling's keys\r\n"
				   "; another comment style\n"
				   "\n"
				   "[default]\n"
				   "\t aws_access_key_id = AKIDDEFAULT\n"
				   "aws_secret_access_key=secret/default+1\r\n"
				   "region = us-east-1\n"
				   "s3 =\n"
				   "    max_concurrent_requests = 10\n"
				   "[ ci ]  \n"
				   "AWS_ACCESS_KEY_ID: AKIDCI\n"
				   "AWS_Secret_Access_Key :  secret with spaces # not a comment  \n"
				   "aws_session_token = IQoJb3JpZ2luX2VjE\n"
				   "[empty]\n"
				   "[same-again]\n"
				   "aws_access_key_id = AKIDCI\n"
				   "aws_secret_access_key = secret with spaces # not a comment\n";
	struct sigv4_keys *k = NULL;
	char err[256] = "", secret[64];
	CHECK(sigv4_keys_parse(good, strlen(good), "creds", &k, err, sizeof(err)) == 0);
	if (!k) {
		fprintf(stderr, "parse: %s\n", err);
		return;
	}
	CHECK(sigv4_keys_count(k) == 2);
	CHECK(sigv4_keys_lookup(k, "AKIDDEFAULT", secret, sizeof(secret)) == 0 && !strcmp(secret, "secret/default+1"));
	CHECK(sigv4_keys_lookup(k, "AKIDCI", secret, sizeof(secret)) == 0 &&
	      !strcmp(secret, "secret with spaces # not a comment"));
	CHECK(sigv4_keys_lookup(k, "AKIDNONE", secret, sizeof(secret)) == -ENOENT);
	CHECK(sigv4_keys_lookup(k, "AKIDDEFAULT", secret, 8) == -ERANGE);
	CHECK(!strcmp(sigv4_keys_profile(k, "AKIDDEFAULT"), "default"));
	CHECK(!strcmp(sigv4_keys_profile(k, "AKIDCI"), "ci"));
	CHECK(sigv4_keys_profile(k, "nope") == NULL);
	sigv4_keys_free(k);
	sigv4_keys_free(NULL);

	CHECK(sigv4_keys_parse("", 0, "creds", &k, err, sizeof(err)) == 0 && sigv4_keys_count(k) == 0);
	sigv4_keys_free(k);

	static const struct {
		const char *text, *msg;
	} bad[] = {
		{"aws_access_key_id = A\n", "creds:1: a setting before the first [profile] header"},
		{"[default\naws_access_key_id = A\n", "creds:1: malformed section header"},
		{"[]\n", "creds:1: malformed section header"},
		{"[a]\nnot a setting\n", "creds:2: expected a [profile] header, a 'name = value' setting or a comment"},
		{"[a]\n[b]\n[a]\n", "creds:3: section [a] appears twice"},
		{"[a]\naws_access_key_id = A\naws_access_key_id = B\n", "creds:3: aws_access_key_id is set twice in [a]"},
		{"\n[a]\naws_access_key_id = A\n[b]\n", "creds:2: profile [a] has aws_access_key_id but no aws_secret_access_key"},
		{"[a]\naws_secret_access_key = S\n", "creds:1: profile [a] has aws_secret_access_key but no aws_access_key_id"},
		{"[a]\naws_access_key_id =\n", "creds:2: aws_access_key_id is empty"},
		{"[a]\naws_access_key_id = A\n  B\naws_secret_access_key = S\n", "creds:3: aws_access_key_id must be on one line"},
		{"[a]\naws_access_key_id = A/B\naws_secret_access_key = S\n", "creds:2: aws_access_key_id must be"},
		{"[a]\naws_access_key_id = A\naws_secret_access_key = S\n[b]\naws_access_key_id = A\n"
		 "aws_secret_access_key = T\n",
		 "creds:5: access key id A in [b] is already in [a] with a different secret"},
	};
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		k = NULL;
		err[0] = 0;
		CHECK(sigv4_keys_parse(bad[i].text, strlen(bad[i].text), "creds", &k, err, sizeof(err)) == -EINVAL);
		if (!strstr(err, bad[i].msg))
			fprintf(stderr, "credentials case %zu: \"%s\", want \"%s\"\n", i, err, bad[i].msg);
		CHECK(!k && strstr(err, bad[i].msg));
	}
	CHECK(sigv4_keys_parse("[a]\0x", 5, "creds", &k, err, sizeof(err)) == -EINVAL && strstr(err, "NUL byte"));
}

/* Run sigv4_keys_load on |path| with stderr captured into |<log, loglen>|. */
static int load_capturing(const char *path, struct sigv4_keys **k, char *err, size_t errlen, char *log, size_t loglen)
{
	char tmpl[] = "/tmp/kindling-test-sigv4-log.XXXXXX";
	int lfd = mkstemp(tmpl);
	int saved = dup(2);
	fflush(stderr);
	dup2(lfd, 2);
	int r = sigv4_keys_load(path, k, err, errlen);
	fflush(stderr);
	dup2(saved, 2);
	close(saved);
	ssize_t n = pread(lfd, log, loglen - 1, 0);
	log[n > 0 ? n : 0] = 0;
	close(lfd);
	unlink(tmpl);
	return r;
}

static void test_keys_load(void)
{
	char dir[] = "/tmp/kindling-test-sigv4.XXXXXX";
	if (!mkdtemp(dir)) {
		CHECK(0);
		return;
	}
	char path[256], err[256], log[1024];
	snprintf(path, sizeof(path), "%s/credentials", dir);
	static const char text[] = "[default]\naws_access_key_id = AKIDLOAD\naws_secret_access_key = s3cret\n";
	int fd = open(path, O_WRONLY | O_CREAT | O_EXCL, 0600);
	CHECK(fd >= 0 && write(fd, text, strlen(text)) == (ssize_t)strlen(text));
	close(fd);

	struct sigv4_keys *k = NULL;
	CHECK(load_capturing(path, &k, err, sizeof(err), log, sizeof(log)) == 0 && k && sigv4_keys_count(k) == 1);
	CHECK(!strstr(log, "chmod"));
	sigv4_keys_free(k);

	chmod(path, 0644);
	k = NULL;
	CHECK(load_capturing(path, &k, err, sizeof(err), log, sizeof(log)) == 0 && k);
	CHECK(strstr(log, "warning") && strstr(log, path) && strstr(log, "mode 0644") && strstr(log, "chmod 600"));
	sigv4_keys_free(k);
	chmod(path, 0600);

	char missing[300];
	snprintf(missing, sizeof(missing), "%s/nope", dir);
	CHECK(sigv4_keys_load(missing, &k, err, sizeof(err)) == -ENOENT && strstr(err, missing));
	CHECK(sigv4_keys_load(dir, &k, err, sizeof(err)) == -EINVAL && strstr(err, "not a regular file"));

	static const char broken[] = "[default]\naws_access_key_id = A\n";
	fd = open(path, O_WRONLY | O_TRUNC);
	CHECK(fd >= 0 && write(fd, broken, strlen(broken)) == (ssize_t)strlen(broken));
	close(fd);
	char want[300];
	snprintf(want, sizeof(want), "%s:1: profile [default]", path);
	CHECK(sigv4_keys_load(path, &k, err, sizeof(err)) == -EINVAL && strstr(err, want));

	unlink(path);
	rmdir(dir);
}

int main(void)
{
	log_set_level(LOG_WARN);
	test_suite_vectors();
	test_suite_steps();
	test_canonical_uri();
	test_canonical_query();
	test_s3_vectors();
	test_iam_example();
	test_round_trips();
	test_refusals();
	test_variants();
	test_auth_parse();
	test_keys_parse();
	test_keys_load();
	return check_report();
}
