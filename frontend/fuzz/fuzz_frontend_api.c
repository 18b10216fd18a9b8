/* Fuzz target for the Lambda API's routing and request parsing
 * (frontend/api.c, invoke.c): an HTTP request as libmicrohttpd hands it to
 * the frontend, answered by a frontend with authentication off, no host
 * agent and its state in a private temporary directory.
 *
 * Input: "METHOD RAW-PATH[?QUERY]\n", then header lines "Name: value\n" up
 * to an empty line, then the body.  Every answer must be a well-formed
 * Lambda answer: a status from 200 to 599, and for an error a JSON body with
 * "message" and an x-amzn-ErrorType header. */
/* ctest-labels: no-tsan (one request at a time: the frontend's threads run under TSan in test_frontend_api) */
#include "frontend/internal.h"

#include <ftw.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static struct frontend *fe;
static void *st;
static char tmpl[] = "/tmp/kindling-fuzz-frontend.XXXXXX";

static int rm_one(const char *path, const struct stat *sb, int flag, struct FTW *ftw)
{
	(void)sb;
	(void)flag;
	(void)ftw;
	remove(path);
	return 0;
}

/* At exit: stop the frontend's threads and remove its directory. */
static void teardown(void)
{
	frontend_free(fe);
	frontend_state_dir_close(st);
	nftw(tmpl, rm_one, 16, FTW_DEPTH | FTW_PHYS);
}

static void setup(void)
{
	char *dir = mkdtemp(tmpl);
	if (!dir)
		abort();
	char *home = xasprintf("%s/home", dir), *fns = xasprintf("%s/functions", dir);
	setenv("KINDLING_HOME", home, 1);
	log_set_level(LOG_ERR);
	if (frontend_state_dir_open(fns, &st) < 0)
		abort();
	struct frontend_config cfg = {
		.no_agent = true,
		.state_ops = &frontend_state_dir_ops,
		.state_arg = st,
		.state_dir = dir,
		.async_workers = 1,
		.retry_delay_ms = 10,
	};
	if (frontend_new(&cfg, &fe) < 0)
		abort();
	free(home);
	free(fns);
	atexit(teardown);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	if (!fe)
		setup();
	char *text = malloc(size + 1);
	if (!text)
		abort();
	memcpy(text, data, size);
	text[size] = '\0';
	/* The request line. */
	char *line_end = strchr(text, '\n');
	char *rest = line_end ? line_end + 1 : text + strlen(text);
	if (line_end)
		*line_end = '\0';
	char *sp = strchr(text, ' ');
	if (!sp) {
		free(text);
		return 0;
	}
	*sp = '\0';
	const char *method = text;
	char *target = sp + 1, *q = strchr(target, '?');
	const char *query = "";
	if (q) {
		*q = '\0';
		query = q + 1;
	}
	char *path = NULL;
	if (http_path_decode(target, &path) < 0) {
		free(text);
		return 0;
	}
	/* Headers. */
	struct http_header headers[32];
	size_t nh = 0;
	while (*rest && *rest != '\n' && nh < 32) {
		char *e = strchr(rest, '\n');
		if (e)
			*e = '\0';
		char *colon = strchr(rest, ':');
		if (colon && colon != rest) {
			*colon = '\0';
			char *v = colon + 1;
			while (*v == ' ')
				v++;
			headers[nh].name = rest;
			headers[nh].value = v;
			nh++;
		}
		rest = e ? e + 1 : rest + strlen(rest);
	}
	if (*rest == '\n')
		rest++;
	size_t body_len = size - (size_t)(rest - text);
	struct http_request req = {
		.method = method,
		.version = "HTTP/1.1",
		.raw_path = target,
		.path = path,
		.query = query,
		.headers = headers,
		.n_headers = nh,
		.body = NULL,
		.body_len = 0,
		.peer = "127.0.0.1:1",
	};
	struct http_response resp = { .status = 200 };
	size_t limit = frontend_http_ops.body_limit(fe, &req);
	if (body_len > limit) {
		resp.status = 413;
		frontend_http_ops.error(fe, &req, 413, "too large", limit, &resp);
	} else {
		req.body = (const uint8_t *)rest;
		req.body_len = body_len;
		if (frontend_http_ops.handle(fe, &req, &resp) < 0)
			abort();
	}
	if (resp.status < 200 || resp.status > 599)
		abort();
	if (resp.status >= 400) {
		const char *type = NULL;
		for (size_t i = 0; i < resp.n_headers; i++)
			if (strcasecmp(resp.headers[i].name, "x-amzn-ErrorType") == 0)
				type = resp.headers[i].value;
		json_t *j = json_loadb((const char *)resp.body, resp.body_len, 0, NULL);
		if (!type || !*type || !json_is_string(json_object_get(j, "message")))
			abort();
		json_decref(j);
	}
	for (size_t i = 0; i < resp.n_headers; i++) {
		free((char *)resp.headers[i].name);
		free((char *)resp.headers[i].value);
	}
	free(resp.headers);
	free(resp.body);
	free(path);
	free(text);
	return 0;
}
