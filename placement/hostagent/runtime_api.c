/* The Lambda Runtime API (2018-06-01) as the agent parses it, and the error
 * payloads and messages Lambda gives: pure functions, fuzzed
 * (fuzz/fuzz_runtime_api.c).  Everything here reads bytes a runtime inside a
 * sandbox sent, so nothing trusts a length or a terminator it did not check.
 *
 * The behaviours follow the Runtime Interface Emulator
 * (github.com/aws/aws-lambda-runtime-interface-emulator, internal/lambda/rapi
 * and interop) and AWS's Runtime API reference. */
#include "placement/hostagent/internal.h"

#include <errno.h>
#include <jansson.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define API_PREFIX "/2018-06-01/runtime/"

void rapi_route_parse(const char *method, const char *path, struct rapi_target *out)
{
	memset(out, 0, sizeof(*out));
	if (!method || !path || strncmp(path, API_PREFIX, strlen(API_PREFIX)) != 0)
		return;
	const char *rest = path + strlen(API_PREFIX);
	bool get = strcmp(method, "GET") == 0, post = strcmp(method, "POST") == 0;
	if (strcmp(rest, "invocation/next") == 0) {
		out->route = get ? RAPI_ROUTE_NEXT : RAPI_ROUTE_BAD_METHOD;
		return;
	}
	if (strcmp(rest, "init/error") == 0) {
		out->route = post ? RAPI_ROUTE_INIT_ERROR : RAPI_ROUTE_BAD_METHOD;
		return;
	}
	static const char inv[] = "invocation/";
	if (strncmp(rest, inv, strlen(inv)) != 0)
		return;
	const char *id = rest + strlen(inv), *slash = strchr(id, '/');
	if (!slash)
		return;
	enum rapi_route route;
	if (strcmp(slash, "/response") == 0)
		route = RAPI_ROUTE_RESPONSE;
	else if (strcmp(slash, "/error") == 0)
		route = RAPI_ROUTE_ERROR;
	else
		return;
	if (!post) {
		out->route = RAPI_ROUTE_BAD_METHOD;
		return;
	}
	out->route = route;
	size_t n = (size_t)(slash - id);
	if (n == 0 || n > HA_REQUEST_ID_MAX) {
		out->id_invalid = true;
		return;
	}
	memcpy(out->request_id, id, n);
	out->request_id[n] = '\0';
}

/* Does |s| contain "Runtime." or "Function." followed by a capital and at
 * least one more letter?  (Lambda's filter is the regular expression
 * (Runtime|Function)\.[A-Z][a-zA-Z]+, matched anywhere in the value.) */
static bool has_lambda_type(const char *s)
{
	static const char *const prefixes[] = { "Runtime.", "Function." };
	for (const char *p = s; *p; p++)
		for (size_t i = 0; i < 2; i++) {
			size_t n = strlen(prefixes[i]);
			if (strncmp(p, prefixes[i], n) != 0)
				continue;
			const char *q = p + n;
			if (q[0] >= 'A' && q[0] <= 'Z' &&
			    ((q[1] >= 'A' && q[1] <= 'Z') || (q[1] >= 'a' && q[1] <= 'z')))
				return true;
		}
	return false;
}

void rapi_error_type(const char *value, char *out, size_t len)
{
	const char *type = "Runtime.Unknown";
	bool printable = value != NULL;
	for (const char *p = value; printable && *p; p++)
		printable = (unsigned char)*p >= 0x20 && (unsigned char)*p < 0x7f;
	if (printable && strlen(value) <= HA_ERROR_TYPE_MAX && has_lambda_type(value))
		type = value;
	else if (value && strncmp(value, "Function.", 9) == 0)
		type = "Function.Unknown";
	snprintf(out, len, "%s", type);
}

/* A copy of |<s, n>| that is valid UTF-8 without NUL: each NUL and each
 * byte that does not start a well-formed sequence becomes U+FFFD.  NUL-terminated; |*out_len| excludes
 * the NUL.  NULL on allocation failure. */
static char *utf8_clean(const uint8_t *s, size_t n, size_t *out_len)
{
	static const uint32_t min[4] = { 0, 0x80, 0x800, 0x10000 };
	size_t cap;
	if (!ck_mul_size(n, 3, &cap) || !ck_add_size(cap, 1, &cap))
		return NULL;
	char *o = malloc(cap);
	if (!o)
		return NULL;
	size_t j = 0;
	for (size_t i = 0; i < n;) {
		uint8_t c = s[i];
		size_t need;
		uint32_t cp;
		if (c == 0)
			goto bad; /* valid, but C consumers of the payload would cut it short there */
		if (c < 0x80)
			need = 0, cp = c;
		else if ((c & 0xe0) == 0xc0)
			need = 1, cp = c & 0x1f;
		else if ((c & 0xf0) == 0xe0)
			need = 2, cp = c & 0x0f;
		else if ((c & 0xf8) == 0xf0)
			need = 3, cp = c & 0x07;
		else
			goto bad;
		if (need > n - i - 1)
			goto bad;
		for (size_t k = 1; k <= need; k++) {
			if ((s[i + k] & 0xc0) != 0x80)
				goto bad;
			cp = cp << 6 | (s[i + k] & 0x3f);
		}
		/* No overlong forms, no surrogates, nothing past U+10FFFF. */
		if (cp < min[need] || (cp >= 0xd800 && cp <= 0xdfff) || cp > 0x10ffff)
			goto bad;
		memcpy(o + j, s + i, need + 1);
		j += need + 1;
		i += need + 1;
		continue;
	bad:
		memcpy(o + j, "\xef\xbf\xbd", 3);
		j += 3;
		i++;
	}
	o[j] = '\0';
	*out_len = j;
	return o;
}

/* {"errorType": |type|, "errorMessage": <|<msg, n>| made valid UTF-8>}
 * (the emulator's field order), malloc'd; NULL with errno set. */
static char *error_json_n(const char *type, const uint8_t *msg, size_t n)
{
	size_t clean_len = 0;
	char *clean = utf8_clean(msg, n, &clean_len);
	json_t *j = json_object();
	char *s = NULL;
	if (clean && j && json_object_set_new(j, "errorType", json_string(type)) == 0 &&
	    json_object_set_new(j, "errorMessage", json_stringn(clean, clean_len)) == 0)
		s = json_dumps(j, JSON_COMPACT | JSON_PRESERVE_ORDER);
	json_decref(j);
	free(clean);
	if (!s)
		errno = ENOMEM;
	return s;
}

char *ha_error_json(const char *type, const char *message)
{
	return error_json_n(type, (const uint8_t *)message, strlen(message));
}

int rapi_error_payload(const uint8_t *body, size_t len, const char *type, uint8_t **out, size_t *out_len)
{
	json_error_t err;
	json_t *j = len ? json_loadb((const char *)body, len, 0, &err) : NULL;
	bool object = json_is_object(j);
	json_decref(j);
	uint8_t *s = object ? malloc(len + 1) : (uint8_t *)error_json_n(type, body, len);
	if (!s)
		return -ENOMEM;
	if (object) {
		memcpy(s, body, len);
		s[len] = '\0';
	} else {
		len = strlen((char *)s);
	}
	*out = s;
	*out_len = len;
	return 0;
}

void ha_format_timestamp(int64_t epoch_ms, char *buf, size_t len)
{
	time_t t = (time_t)(epoch_ms / 1000);
	struct tm tm;
	gmtime_r(&t, &tm);
	snprintf(buf, len, "%04d-%02d-%02dT%02d:%02d:%02d.%03dZ", tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday,
		 tm.tm_hour, tm.tm_min, tm.tm_sec, (int)(epoch_ms % 1000));
}

char *ha_err_timeout(const char *request_id, uint32_t timeout_s, int64_t epoch_ms)
{
	char ts[32], msg[HA_REQUEST_ID_MAX + 96];
	ha_format_timestamp(epoch_ms, ts, sizeof(ts));
	snprintf(msg, sizeof(msg), "%s %s Task timed out after %u.00 seconds", ts, request_id, timeout_s);
	return ha_error_json("Sandbox.Timedout", msg);
}

const char *ha_signal_name(int sig, char *buf, size_t len)
{
	const char *d = sig > 0 && sig < NSIG ? sigdescr_np(sig) : NULL;
	if (!d) {
		snprintf(buf, len, "signal %d", sig);
		return buf;
	}
	/* glibc's descriptions are Go's names with a capital first letter
	 * ("Killed"), except where the first word is an acronym ("CPU time
	 * limit exceeded"). */
	snprintf(buf, len, "%s", d);
	if (buf[0] >= 'A' && buf[0] <= 'Z' && !(buf[1] >= 'A' && buf[1] <= 'Z'))
		buf[0] = (char)(buf[0] - 'A' + 'a');
	return buf;
}

char *ha_err_exit(const char *type, const char *request_id, int exit_code, int term_signal)
{
	char how[96], sig[64], msg[HA_REQUEST_ID_MAX + 160];
	if (term_signal > 0)
		snprintf(how, sizeof(how), "Runtime exited with error: signal: %s",
			 ha_signal_name(term_signal, sig, sizeof(sig)));
	else if (exit_code != 0)
		snprintf(how, sizeof(how), "Runtime exited with error: exit status %d", exit_code);
	else
		snprintf(how, sizeof(how), "Runtime exited without providing a reason");
	snprintf(msg, sizeof(msg), "RequestId: %s Error: %s", request_id, how);
	return ha_error_json(type, msg);
}

char *ha_err_entrypoint(const char *request_id, const char *path, int err)
{
	/* Go's exec error, which Lambda shows: "fork/exec /x: no such file or
	 * directory". */
	char why[64];
	snprintf(why, sizeof(why), "%s", strerror(err));
	if (why[0] >= 'A' && why[0] <= 'Z')
		why[0] = (char)(why[0] - 'A' + 'a');
	char *msg = xasprintf("RequestId: %s Error: fork/exec %s: %s", request_id, path ? path : "", why);
	if (!msg)
		return NULL;
	char *j = ha_error_json("Runtime.InvalidEntrypoint", msg);
	free(msg);
	return j;
}

char *ha_err_oversize(uint64_t size)
{
	char msg[160];
	snprintf(msg, sizeof(msg), "Response payload size (%llu bytes) exceeded maximum allowed payload size (%u bytes).",
		 (unsigned long long)size, HA_MAX_PAYLOAD);
	return ha_error_json("Function.ResponseSizeTooLarge", msg);
}

char *ha_err_shutdown(const char *request_id)
{
	char msg[HA_REQUEST_ID_MAX + 80];
	snprintf(msg, sizeof(msg), "RequestId: %s Error: the host agent is shutting down", request_id);
	return ha_error_json("Sandbox.Failure", msg);
}
