/* Fuzz target for SigV4 (common/sigv4.c): the Authorization header parser,
 * the canonical URI and query, the credentials-file parser, and the whole
 * verifier on hostile requests.
 *
 * Input: up to five fields separated by NUL bytes:
 *   Authorization value, raw path, raw query, X-Amz-Date value, credentials file.
 * Missing fields are empty.  Besides not crashing: a refusal always
 * carries a 403, an error type and a message, and whatever the path, query
 * and header value, a request signed by sigv4_sign is accepted by
 * sigv4_verify with the same key.
 */
#include "common/sigv4.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define KEY_ID "AKIDFUZZ"
#define SECRET "fuzz/secret+key"

static int lookup(void *arg, const char *id, char *secret, size_t size)
{
	(void)arg;
	if (strcmp(id, KEY_ID))
		return -ENOENT;
	snprintf(secret, size, "%s", SECRET);
	return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	log_set_level(LOG_SILENT);
	char *copy = malloc(size + 1);
	if (!copy)
		return 0;
	memcpy(copy, data, size);
	copy[size] = 0;
	const char *field[5] = {"", "", "", "", ""};
	const char *p = copy, *end = copy + size;
	size_t creds_len = 0;
	for (int i = 0; i < 5 && p <= end; i++) {
		field[i] = p;
		/* The credentials file is the rest, NULs and all. */
		if (i == 4)
			creds_len = (size_t)(end - p);
		p += strlen(p) + 1;
	}
	const char *creds = field[4];

	struct sigv4_auth a;
	char err[512];
	if (sigv4_auth_parse(field[0], &a, err, sizeof(err)) == 0) {
		if (!a.access_key_id || !a.date || strlen(a.date) != 8 || !a.region || !a.service || !a.signed_headers ||
		    !a.signature)
			abort();
		sigv4_auth_cleanup(&a);
	}
	char *out = NULL;
	if (sigv4_canonical_uri(field[1], "lambda", &out) == 0) {
		if (out[0] != '/' && field[1][0] == '/')
			abort();
		free(out);
	}
	if (sigv4_canonical_uri(field[1], "s3", &out) == 0)
		free(out);
	out = NULL;
	bool query_ok = sigv4_canonical_query(field[2], &out) == 0;
	free(out);

	struct sigv4_keys *keys = NULL;
	if (sigv4_keys_parse(creds, creds_len, "fuzz", &keys, err, sizeof(err)) == 0) {
		/* Key ids never hold spaces. */
		char secret[SIGV4_MAX_SECRET];
		if (sigv4_keys_lookup(keys, "no such key", secret, sizeof(secret)) != -ENOENT ||
		    sigv4_keys_profile(keys, "no such key"))
			abort();
		sigv4_keys_free(keys);
	}

	/* The hostile header against the verifier. */
	const struct sigv4_verifier v = {.service = "lambda", .lookup = lookup};
	const time_t now = 1700000000;
	char date[17];
	sigv4_amz_date(now, date);
	struct http_header h[4] = {
		{"Host", "127.0.0.1:9000"},
		{"X-Amz-Date", *field[3] ? field[3] : date},
		{"Authorization", field[0]},
	};
	struct sigv4_request req = {"POST", field[1], field[2], h, 3, NULL};
	struct sigv4_verdict vd;
	if (sigv4_verify(&v, &req, "body", 4, now, &vd) == 0 && vd.status != SIGV4_ACCEPTED &&
	    (!vd.message || !vd.error_type || vd.http_status != 403))
		abort();
	sigv4_verdict_cleanup(&vd);

	/* Sign the same request properly: it must verify. */
	if (query_ok && field[1][0]) {
		uint8_t d[SHA256_LEN];
		char hash[SHA256_HEX_LEN + 1];
		sha256_buf("body", 4, d);
		hex_encode(d, sizeof(d), hash);
		struct http_header sh[3] = {{"Host", "127.0.0.1:9000"}, {"X-Amz-Date", date}, {"X-Fuzz", field[3]}};
		struct sigv4_request sreq = {"POST", field[1], field[2], sh, 3, hash};
		const struct sigv4_key key = {KEY_ID, SECRET};
		char *auth = NULL;
		if (sigv4_sign(&sreq, date, "us-east-1", "lambda", &key, &auth) == 0) {
			struct http_header vh[4] = {sh[0], sh[1], sh[2], {"Authorization", auth}};
			sreq.headers = vh;
			sreq.n_headers = 4;
			sreq.payload_hash = NULL;
			if (sigv4_verify(&v, &sreq, "body", 4, now, &vd) != 0 || vd.status != SIGV4_ACCEPTED)
				abort();
			sigv4_verdict_cleanup(&vd);
			free(auth);
		}
	}
	free(copy);
	return 0;
}
