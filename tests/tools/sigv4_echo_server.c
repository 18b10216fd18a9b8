/* sigv4_echo_server: an HTTP server (common/http_server) that checks every
 * request's AWS Signature Version 4 (common/sigv4) against a credentials
 * file and answers what it found, so that real AWS clients can be checked
 * against kindling's verifier.  Driven by
 * tests/integration/72-sigv4-botocore.sh.
 *
 *   sigv4_echo_server --credentials FILE [--service lambda] [--region R]
 *
 * It listens on 127.0.0.1 on a free port, prints "listening HOST:PORT" and
 * serves until SIGTERM or SIGINT.  An accepted request gets 200 and a JSON
 * object {"accepted":true, "key", "profile", "region", "session_token",
 * "method", "raw_path", "path", "query", "body_sha256"}; a refused one gets
 * Lambda's answer: 403, x-amzn-ErrorType and {"message": ...}.
 */
#include "common/http_server.h"
#include "common/sigv4.h"

#include <errno.h>
#include <jansson.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

struct echo {
	struct sigv4_keys *keys;
	struct sigv4_verifier verifier;
};

static int reply_json(struct http_response *resp, json_t *obj)
{
	char *text = obj ? json_dumps(obj, JSON_COMPACT) : NULL;
	json_decref(obj);
	if (!text)
		return -ENOMEM;
	http_response_take_body(resp, text, strlen(text));
	return http_response_add_header(resp, "Content-Type", "application/json");
}

static int handle(void *arg, const struct http_request *req, struct http_response *resp)
{
	struct echo *e = arg;
	struct sigv4_request sreq = {req->method, req->raw_path, req->query, req->headers, req->n_headers, NULL};
	struct sigv4_verdict v;
	int r = sigv4_verify(&e->verifier, &sreq, req->body, req->body_len, time(NULL), &v);
	if (r < 0) {
		sigv4_verdict_cleanup(&v);
		return r;
	}
	if (v.status != SIGV4_ACCEPTED) {
		resp->status = (unsigned)v.http_status;
		r = http_response_add_header(resp, "x-amzn-ErrorType", v.error_type);
		if (r == 0)
			r = reply_json(resp, json_pack("{s:s}", "message", v.message));
		fprintf(stderr, "sigv4_echo_server: %s %s refused: %s: %s\n", req->method, req->raw_path, v.error_type,
			v.message);
		sigv4_verdict_cleanup(&v);
		return r;
	}
	uint8_t d[SHA256_LEN];
	char sha[SHA256_HEX_LEN + 1];
	sha256_buf(req->body, req->body_len, d);
	hex_encode(d, sizeof(d), sha);
	const char *profile = sigv4_keys_profile(e->keys, v.access_key_id);
	r = reply_json(resp, json_pack("{s:b,s:s,s:s,s:s,s:b,s:s,s:s,s:s,s:s,s:s}", "accepted", 1, "key",
				       v.access_key_id, "profile", profile ? profile : "", "region", v.region,
				       "session_token", v.session_token, "method", req->method, "raw_path",
				       req->raw_path, "path", req->path, "query", req->query, "body_sha256", sha));
	sigv4_verdict_cleanup(&v);
	return r;
}

static const struct http_server_ops ops = {.handle = handle};

int main(int argc, char **argv)
{
	const char *creds = NULL, *service = "lambda", *region = NULL;
	for (int i = 1; i + 1 < argc; i += 2) {
		if (!strcmp(argv[i], "--credentials"))
			creds = argv[i + 1];
		else if (!strcmp(argv[i], "--service"))
			service = argv[i + 1];
		else if (!strcmp(argv[i], "--region"))
			region = argv[i + 1];
	}
	if (!creds || argc % 2 == 0) {
		fprintf(stderr, "usage: %s --credentials FILE [--service NAME] [--region REGION]\n", argv[0]);
		return 2;
	}
	struct echo e = {0};
	char err[512];
	if (sigv4_keys_load(creds, &e.keys, err, sizeof(err)) < 0) {
		fprintf(stderr, "sigv4_echo_server: %s\n", err);
		return 1;
	}
	e.verifier = (struct sigv4_verifier){.service = service, .region = region, .lookup = sigv4_keys_lookup,
					      .lookup_arg = e.keys};

	/* Block the stop signals in every thread; main waits for them. */
	sigset_t stop;
	sigemptyset(&stop);
	sigaddset(&stop, SIGTERM);
	sigaddset(&stop, SIGINT);
	pthread_sigmask(SIG_BLOCK, &stop, NULL);

	struct http_server_config cfg = {.ops = &ops, .arg = &e, .name = "sigv4 echo"};
	struct http_server *s = NULL;
	if (http_server_start(&cfg, "127.0.0.1:0", &s) < 0) {
		sigv4_keys_free(e.keys);
		return 1;
	}
	printf("listening %s\n", http_server_address(s));
	fflush(stdout);
	int sig;
	sigwait(&stop, &sig);
	http_server_free(s);
	sigv4_keys_free(e.keys);
	return 0;
}
