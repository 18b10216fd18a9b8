/* frontend: small helpers (UUIDs, times, base64, Lambda's error answers). */
#include "frontend/internal.h"

#include <errno.h>
#include <fcntl.h>
#include <openssl/evp.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

int fe_fsync_dir(const char *dir)
{
	int fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (fd < 0)
		return -errno;
	int r = fsync(fd) < 0 ? -errno : 0;
	close(fd);
	return r;
}

void fe_uuid(char out[37])
{
	uint8_t b[16];
	if (random_bytes(b, sizeof(b)) < 0) {
		/* The OS random source does not fail on Linux; fall back to
		 * time and pid so an id is still unique enough. */
		uint64_t t = (uint64_t)(now_seconds() * 1e9);
		memcpy(b, &t, 8);
		uint64_t p = (uint64_t)getpid();
		memcpy(b + 8, &p, 8);
	}
	b[6] = (uint8_t)((b[6] & 0x0f) | 0x40);
	b[8] = (uint8_t)((b[8] & 0x3f) | 0x80);
	snprintf(out, 37, "%02x%02x%02x%02x-%02x%02x-%02x%02x-%02x%02x-%02x%02x%02x%02x%02x%02x", b[0], b[1], b[2],
		 b[3], b[4], b[5], b[6], b[7], b[8], b[9], b[10], b[11], b[12], b[13], b[14], b[15]);
}

void fe_timestamp(char out[40])
{
	struct timespec ts;
	clock_gettime(CLOCK_REALTIME, &ts);
	struct tm tm;
	gmtime_r(&ts.tv_sec, &tm);
	snprintf(out, 40, "%04d-%02d-%02dT%02d:%02d:%02d.%03d+0000", (tm.tm_year + 1900) % 10000, (tm.tm_mon + 1) % 100,
		 tm.tm_mday % 100, tm.tm_hour % 100, tm.tm_min % 100, tm.tm_sec % 100, (int)(ts.tv_nsec / 1000000) % 1000);
}

bool fe_wait_unless_stopped(pthread_mutex_t *lock, pthread_cond_t *cond, const bool *stop, unsigned ms)
{
	struct timespec ts;
	clock_gettime(CLOCK_REALTIME, &ts);
	ts.tv_sec += ms / 1000u;
	ts.tv_nsec += (long)(ms % 1000u) * 1000000L;
	ts.tv_sec += ts.tv_nsec / 1000000000L;
	ts.tv_nsec %= 1000000000L;
	pthread_mutex_lock(lock);
	if (!*stop)
		pthread_cond_timedwait(cond, lock, &ts);
	bool stopped = *stop;
	pthread_mutex_unlock(lock);
	return stopped;
}

char *fe_base64(const void *data, size_t len)
{
	if (len > (SIZE_MAX / 4) * 3 - 3 || len > INT32_MAX) {
		errno = EOVERFLOW;
		return NULL;
	}
	char *out = malloc(4 * ((len + 2) / 3) + 1);
	if (!out)
		return NULL;
	EVP_EncodeBlock((unsigned char *)out, data, (int)len);
	return out;
}

int fe_unbase64(const char *s, uint8_t **out, size_t *out_len)
{
	size_t n = strlen(s);
	if (n % 4 || n > INT32_MAX)
		return -EINVAL;
	uint8_t *buf = malloc(n / 4 * 3 + 1);
	if (!buf)
		return -ENOMEM;
	int got = n ? EVP_DecodeBlock(buf, (const unsigned char *)s, (int)n) : 0;
	if (got < 0) {
		free(buf);
		return -EINVAL;
	}
	size_t len = (size_t)got;
	/* EVP_DecodeBlock counts the padding as zero bytes. */
	for (size_t i = n; i > 0 && s[i - 1] == '=' && len > 0; i--)
		len--;
	*out = buf;
	*out_len = len;
	return 0;
}

void fe_set_error(struct fe_error *e, unsigned status, const char *type, const char *fmt, ...)
{
	e->status = status;
	e->type = type;
	e->reason = NULL;
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(e->message, sizeof(e->message), fmt, ap);
	va_end(ap);
}

void fe_answer_json(struct http_response *resp, unsigned status, json_t *j)
{
	resp->status = status;
	if (!j)
		return;
	char *s = json_dumps(j, JSON_COMPACT);
	json_decref(j);
	if (!s) {
		resp->status = 500;
		return;
	}
	http_response_add_header(resp, "Content-Type", "application/json");
	http_response_take_body(resp, s, strlen(s));
}

void fe_answer_error(struct http_response *resp, const struct fe_error *e)
{
	/* Lambda's error body: "Type" (User or Service), "message"; the SDKs
	 * take the error's name from x-amzn-ErrorType. */
	json_t *j = json_pack("{s:s,s:s}", "Type", e->status >= 500 ? "Service" : "User", "message", e->message);
	if (j && e->reason)
		json_object_set_new(j, "Reason", json_string(e->reason));
	http_response_add_header(resp, "x-amzn-ErrorType", e->type);
	fe_answer_json(resp, e->status, j);
	if (e->status == 429)
		http_response_add_header(resp, "Retry-After", "1");
}

char *fe_function_arn(const struct frontend *fe, const char *name, const char *qualifier)
{
	if (qualifier && *qualifier)
		return xasprintf("arn:aws:lambda:%s:%s:function:%s:%s", fe->region, fe->account_id, name, qualifier);
	return xasprintf("arn:aws:lambda:%s:%s:function:%s", fe->region, fe->account_id, name);
}

bool frontend_valid_function_name(const char *name)
{
	size_t n = 0;
	for (; name[n]; n++) {
		char c = name[n];
		if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '-' || c == '_'))
			return false;
	}
	return n >= 1 && n <= 64;
}

static bool valid_qualifier(const char *q)
{
	if (strcmp(q, "$LATEST") == 0)
		return true;
	size_t n = 0;
	for (; q[n]; n++) {
		char c = q[n];
		if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '-' || c == '_'))
			return false;
	}
	return n >= 1 && n <= 128;
}

int frontend_parse_function_name(const char *in, char *name, size_t name_size, char *qual, size_t qual_size)
{
	if (!in || strlen(in) > 256)
		return -EINVAL;
	/* Split on ':' into at most 8 parts. */
	char buf[257];
	snprintf(buf, sizeof(buf), "%s", in);
	char *parts[8];
	size_t n = 0;
	for (char *p = buf;;) {
		if (n == 8)
			return -EINVAL;
		parts[n++] = p;
		char *c = strchr(p, ':');
		if (!c)
			break;
		*c = '\0';
		p = c + 1;
	}
	const char *nm, *q = "";
	size_t i = 0;
	if (strcmp(parts[0], "arn") == 0) {
		/* arn:aws:lambda:REGION:ACCOUNT:function:NAME[:QUALIFIER] */
		if (n < 7 || n > 8 || strncmp(parts[1], "aws", 3) != 0 || strcmp(parts[2], "lambda") != 0 ||
		    strcmp(parts[5], "function") != 0 || !*parts[3])
			return -EINVAL;
		i = 4;
	}
	if (n - i >= 3 && strcmp(parts[i + 1], "function") == 0) {
		/* ACCOUNT:function:NAME[:QUALIFIER] */
		const char *acct = parts[i];
		if (strlen(acct) != 12 || strspn(acct, "0123456789") != 12)
			return -EINVAL;
		i += 2;
	} else if (i) {
		return -EINVAL;
	}
	if (n - i == 1) {
		nm = parts[i];
	} else if (n - i == 2) {
		nm = parts[i];
		q = parts[i + 1];
		if (!valid_qualifier(q))
			return -EINVAL;
	} else {
		return -EINVAL;
	}
	if (!frontend_valid_function_name(nm) || strlen(nm) >= name_size || strlen(q) >= qual_size)
		return -EINVAL;
	strcpy(name, nm);
	strcpy(qual, q);
	return 0;
}
