/* The NBD server's checked parsers (accept and reject cases), then a few
 * round trips against a real server on a unix socket: handshake, reads,
 * refused writes, range errors, a read error that leaves the connection
 * up, a hostile client that does not disturb another, two servers in one
 * process, and a stop with idle clients still connected. */
#include "blockd/internal.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include "common/bytes.h"
#include "tests/check.h"

#define IHAVEOPT UINT64_C(0x49484156454f5054)

static void test_request(void)
{
	uint8_t b[28];
	struct nbd_request q;
	put_be32(b, 0x25609513);
	put_be16(b + 4, 0x0001);
	put_be16(b + 6, 0);
	put_be64(b + 8, 0x1122334455667788ull);
	put_be64(b + 16, 4096);
	put_be32(b + 24, 512);
	CHECK(nbd_parse_request(b, sizeof(b), &q) == 0);
	CHECK(q.flags == 1 && q.type == 0 && q.cookie == 0x1122334455667788ull && q.offset == 4096 &&
	      q.length == 512);
	for (size_t n = 0; n < sizeof(b); n++)
		CHECK(nbd_parse_request(b, n, &q) == -EAGAIN);
	CHECK(nbd_parse_request(b, sizeof(b) + 0, &q) == 0);
	b[0] ^= 1;
	CHECK(nbd_parse_request(b, sizeof(b), &q) == -EPROTO);
	b[0] ^= 1;
	put_be64(b + 16, UINT64_MAX); /* range checks belong to the command, not the parser */
	put_be32(b + 24, UINT32_MAX);
	CHECK(nbd_parse_request(b, sizeof(b), &q) == 0 && q.offset == UINT64_MAX && q.length == UINT32_MAX);
}

static void test_option_header(void)
{
	uint8_t b[16];
	struct nbd_option o;
	put_be64(b, IHAVEOPT);
	put_be32(b + 8, 7);
	put_be32(b + 12, 10);
	CHECK(nbd_parse_option_header(b, sizeof(b), &o) == 0 && o.option == 7 && o.length == 10);
	for (size_t n = 0; n < sizeof(b); n++)
		CHECK(nbd_parse_option_header(b, n, &o) == -EAGAIN);
	put_be32(b + 12, 64 * 1024);
	CHECK(nbd_parse_option_header(b, sizeof(b), &o) == 0 && o.length == 64 * 1024);
	put_be32(b + 12, 64 * 1024 + 1);
	CHECK(nbd_parse_option_header(b, sizeof(b), &o) == -EPROTO);
	put_be32(b + 12, UINT32_MAX);
	CHECK(nbd_parse_option_header(b, sizeof(b), &o) == -EPROTO);
	put_be32(b + 12, 0);
	b[7] ^= 0x20;
	CHECK(nbd_parse_option_header(b, sizeof(b), &o) == -EPROTO);
}

/* GO data: name, then |n| info types. */
static size_t go_data(uint8_t *b, const char *name, const uint16_t *infos, size_t n)
{
	size_t l = strlen(name);
	put_be32(b, (uint32_t)l);
	memcpy(b + 4, name, l);
	put_be16(b + 4 + l, (uint16_t)n);
	for (size_t i = 0; i < n; i++)
		put_be16(b + 6 + l + 2 * i, infos[i]);
	return 6 + l + 2 * n;
}

static void test_go(void)
{
	uint8_t b[9000];
	char name[64];
	uint16_t infos[8], want[3] = {3, 1, 2};
	size_t n = 99;
	size_t len = go_data(b, "disk", want, 3);
	CHECK(nbd_parse_go(b, len, name, sizeof(name), infos, 8, &n) == 0);
	CHECK(strcmp(name, "disk") == 0 && n == 3 && infos[0] == 3 && infos[1] == 1 && infos[2] == 2);
	/* Empty name, no infos: the smallest valid message. */
	len = go_data(b, "", NULL, 0);
	CHECK(len == 6 && nbd_parse_go(b, len, name, sizeof(name), infos, 8, &n) == 0 && name[0] == 0 && n == 0);
	/* Every truncation is -EPROTO (the option data is complete). */
	len = go_data(b, "disk", want, 3);
	for (size_t l = 0; l < len; l++)
		CHECK(nbd_parse_go(b, l, name, sizeof(name), infos, 8, &n) == -EPROTO);
	/* Trailing bytes. */
	CHECK(nbd_parse_go(b, len + 1, name, sizeof(name), infos, 8, &n) == -EPROTO);
	/* Name length beyond the data, and a huge one that would wrap. */
	put_be32(b, 100);
	CHECK(nbd_parse_go(b, len, name, sizeof(name), infos, 8, &n) == -EPROTO);
	put_be32(b, UINT32_MAX);
	CHECK(nbd_parse_go(b, len, name, sizeof(name), infos, 8, &n) == -EPROTO);
	put_be32(b, UINT32_MAX - 3);
	CHECK(nbd_parse_go(b, len, name, sizeof(name), infos, 8, &n) == -EPROTO);
	/* A NUL inside the name. */
	len = go_data(b, "di\001k", NULL, 0);
	b[6] = 0;
	CHECK(nbd_parse_go(b, len, name, sizeof(name), infos, 8, &n) == -EPROTO);
	/* Name too long for the caller's buffer, exactly fitting, and over
	 * the protocol's 4096-byte limit. */
	char longname[5000];
	memset(longname, 'a', sizeof(longname));
	longname[64] = 0;
	len = go_data(b, longname, NULL, 0);
	CHECK(nbd_parse_go(b, len, name, sizeof(name), infos, 8, &n) == -EPROTO);
	longname[64] = 'a';
	longname[63] = 0;
	len = go_data(b, longname, NULL, 0);
	CHECK(nbd_parse_go(b, len, name, sizeof(name), infos, 8, &n) == 0 && strlen(name) == 63);
	char *big = malloc(5001);
	longname[63] = 'a';
	longname[4096] = 0; /* 4096 bytes: allowed */
	len = go_data(b, longname, NULL, 0);
	CHECK(nbd_parse_go(b, len, big, 5001, infos, 8, &n) == 0 && strlen(big) == 4096);
	longname[4096] = 'a';
	longname[4097] = 0; /* 4097 bytes: over the limit */
	len = go_data(b, longname, NULL, 0);
	CHECK(nbd_parse_go(b, len, big, 5001, infos, 8, &n) == -EPROTO);
	free(big);
	/* More info requests than the caller has room for. */
	uint16_t many[9] = {0};
	len = go_data(b, "x", many, 9);
	CHECK(nbd_parse_go(b, len, name, sizeof(name), infos, 8, &n) == -EPROTO);
	CHECK(nbd_parse_go(b, len - 2, name, sizeof(name), infos, 8, &n) == -EPROTO); /* odd count */
	len = go_data(b, "x", many, 8);
	CHECK(nbd_parse_go(b, len, name, sizeof(name), infos, 8, &n) == 0 && n == 8);
}

/* ---- round trips against a real server ---------------------------------- */

#define DEV_SIZE (1u << 20)
#define BAD_OFF (600u * 1024) /* reads covering this byte fail */

static int mem_read(void *ctx, uint64_t off, void *buf, size_t len)
{
	const uint8_t *img = ctx;
	if (off > DEV_SIZE || len > DEV_SIZE - off)
		return -EINVAL;
	if (BAD_OFF >= off && BAD_OFF < off + len)
		return -EIO;
	memcpy(buf, img + off, len);
	return 0;
}

static int connect_unix(const char *address)
{
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	snprintf(sa.sun_path, sizeof(sa.sun_path), "%s", address + 5);
	int fd = socket(AF_UNIX, SOCK_STREAM, 0);
	if (fd >= 0 && connect(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0) {
		close(fd);
		return -1;
	}
	struct timeval tv = { .tv_sec = 10 };
	setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
	return fd;
}

static bool xsend(int fd, const void *b, size_t n) { return send(fd, b, n, MSG_NOSIGNAL) == (ssize_t)n; }

static bool xrecv(int fd, void *b, size_t n)
{
	uint8_t *p = b;
	while (n > 0) {
		ssize_t r = recv(fd, p, n, 0);
		if (r <= 0)
			return false;
		p += r;
		n -= (size_t)r;
	}
	return true;
}

/* True once the server closed the connection (EOF). */
static bool closed(int fd)
{
	uint8_t b[256];
	for (;;) {
		ssize_t r = recv(fd, b, sizeof(b), 0);
		if (r == 0)
			return true;
		if (r < 0)
			return false;
	}
}

/* Greeting, client flags, GO for |name|; returns the option replies' last
 * type (1 = ACK). */
static uint32_t handshake_go(int fd, const char *name, uint64_t *size, uint16_t *tflags)
{
	uint8_t b[256];
	if (!xrecv(fd, b, 18) || get_be64(b) != UINT64_C(0x4e42444d41474943) || get_be64(b + 8) != IHAVEOPT ||
	    b[17] != 3)
		return 0;
	put_be32(b, 3);
	put_be64(b + 4, IHAVEOPT);
	put_be32(b + 12, 7);
	uint16_t infos[2] = {3, 1};
	size_t dl = go_data(b + 20, name, infos, 2);
	put_be32(b + 16, (uint32_t)dl);
	if (!xsend(fd, b, 20 + dl))
		return 0;
	for (;;) {
		uint8_t h[20], d[4096 + 2];
		if (!xrecv(fd, h, 20) || get_be64(h) != UINT64_C(0x0003e889045565a9) || get_be32(h + 8) != 7)
			return 0;
		uint32_t type = get_be32(h + 12), len = get_be32(h + 16);
		if (len > sizeof(d) || !xrecv(fd, d, len))
			return 0;
		if (type == 3 && len == 12 && d[1] == 0) {
			*size = get_be64(d + 2);
			*tflags = (uint16_t)(d[10] << 8 | d[11]);
		}
		if (type != 3)
			return type;
	}
}

static bool request(int fd, uint16_t type, uint64_t cookie, uint64_t off, uint32_t len)
{
	uint8_t b[28];
	put_be32(b, 0x25609513);
	put_be16(b + 4, 0);
	put_be16(b + 6, type);
	put_be64(b + 8, cookie);
	put_be64(b + 16, off);
	put_be32(b + 24, len);
	return xsend(fd, b, 28);
}

/* Reads a simple reply for |cookie|; returns its error or -1. */
static int64_t reply(int fd, uint64_t cookie)
{
	uint8_t h[16];
	if (!xrecv(fd, h, 16) || get_be32(h) != 0x67446698 || get_be64(h + 8) != cookie)
		return -1;
	return get_be32(h + 4);
}

static void test_server(const uint8_t *img)
{
	char dir[] = "/tmp/test_nbd.XXXXXX";
	CHECK(mkdtemp(dir) != NULL);
	struct blockdev dev = { .read_at = mem_read, .size = DEV_SIZE, .ctx = (void *)img };
	struct nbd_export exp[2] = { { .name = "disk", .dev = &dev, .description = "test disk" },
				     { .name = "other", .dev = &dev } };
	char addr[256], addr2[256];
	snprintf(addr, sizeof(addr), "unix:%s/a.sock", dir);
	snprintf(addr2, sizeof(addr2), "unix:%s/b.sock", dir);
	struct nbd_server *s1 = NULL, *s2 = NULL, *s3 = NULL;
	CHECK(nbd_server_start(addr, exp, 2, NULL, &s1) == 0);
	CHECK(nbd_server_start(addr2, exp, 1, NULL, &s2) == 0);
	CHECK(s1 && strcmp(nbd_server_address(s1), addr) == 0);
	/* A live socket is not replaced. */
	CHECK(nbd_server_start(addr, exp, 1, NULL, &s3) == -EADDRINUSE);
	CHECK(nbd_server_start("bogus:x", exp, 1, NULL, &s3) == -EINVAL);
	CHECK(nbd_server_start("tcp:127.0.0.1:99999", exp, 1, NULL, &s3) == -EINVAL);
	CHECK(nbd_server_start("tcp:127.0.0.1:0", exp, 1, NULL, &s3) == 0);
	CHECK(s3 && strncmp(nbd_server_address(s3), "tcp:127.0.0.1:", 14) == 0 &&
	      strcmp(nbd_server_address(s3), "tcp:127.0.0.1:0") != 0);
	nbd_server_stop(s3);

	int a = connect_unix(addr), hostile = connect_unix(addr), idle = connect_unix(addr);
	CHECK(a >= 0 && hostile >= 0 && idle >= 0);
	uint64_t size = 0;
	uint16_t tf = 0;
	CHECK(handshake_go(a, "disk", &size, &tf) == 1);
	CHECK(size == DEV_SIZE && (tf & 0x3) == 3); /* HAS_FLAGS | READ_ONLY */

	/* The hostile client sends garbage mid-handshake: its connection
	 * closes, the other one carries on. */
	uint8_t junk[64];
	memset(junk, 'j', sizeof(junk));
	CHECK(xsend(hostile, junk, sizeof(junk)));
	CHECK(closed(hostile));

	uint8_t *buf = malloc(65536);
	CHECK(request(a, 0, 1, 4096, 65536) && reply(a, 1) == 0 && xrecv(a, buf, 65536) &&
	      memcmp(buf, img + 4096, 65536) == 0);
	CHECK(request(a, 0, 2, DEV_SIZE - 10, 11) && reply(a, 2) == 22);	/* past the end */
	CHECK(request(a, 0, 3, UINT64_MAX - 5, 10) && reply(a, 3) == 22);	/* wraps */
	CHECK(request(a, 0, 4, BAD_OFF - 100, 200) && reply(a, 4) == 5);	/* EIO, still up */
	CHECK(request(a, 3, 5, 0, 0) && reply(a, 5) == 0);			/* flush */
	CHECK(request(a, 5, 6, 0, 4096) && reply(a, 6) == 0);			/* cache */
	CHECK(request(a, 4, 7, 0, 4096) && reply(a, 7) == 1);			/* trim: EPERM */
	CHECK(request(a, 99, 8, 0, 0) && reply(a, 8) == 22);			/* unknown */
	/* A write: its payload is swallowed, then EPERM; the stream stays in step. */
	CHECK(request(a, 1, 9, 0, 1000) && xsend(a, junk, 64));
	for (int i = 0; i < 14; i++)
		CHECK(xsend(a, junk, 64));
	CHECK(xsend(a, junk, 1000 - 15 * 64));
	CHECK(reply(a, 9) == 1);
	CHECK(request(a, 0, 10, DEV_SIZE - 512, 512) && reply(a, 10) == 0 && xrecv(a, buf, 512) &&
	      memcmp(buf, img + DEV_SIZE - 512, 512) == 0);
	/* A bad request magic ends this connection. */
	CHECK(xsend(a, junk, 28));
	CHECK(closed(a));
	close(a);
	close(hostile);

	/* Unknown export: NBD_REP_ERR_UNKNOWN, the connection stays usable. */
	int b = connect_unix(addr2);
	CHECK(b >= 0 && handshake_go(b, "nope", &size, &tf) == ((1u << 31) | 6));
	close(b);
	/* The default export ("" -> the first). */
	b = connect_unix(addr2);
	CHECK(b >= 0 && handshake_go(b, "", &size, &tf) == 1 && size == DEV_SIZE);
	CHECK(request(b, 2, 11, 0, 0)); /* disc */
	CHECK(closed(b));
	close(b);

	free(buf);

	/* 64 clients at once; the 65th is closed without a greeting; once
	 * some leave, new ones are served again. */
	int many[64];
	uint8_t greet[18];
	for (int i = 0; i < 64; i++) {
		many[i] = connect_unix(addr2);
		CHECK(many[i] >= 0 && xrecv(many[i], greet, sizeof(greet)));
	}
	int extra = connect_unix(addr2);
	CHECK(extra >= 0 && closed(extra));
	close(extra);
	for (int i = 0; i < 64; i++)
		close(many[i]);
	bool served = false;
	for (int i = 0; i < 100 && !served; i++) {
		extra = connect_unix(addr2);
		served = extra >= 0 && xrecv(extra, greet, sizeof(greet));
		close(extra);
		if (!served)
			usleep(20 * 1000);
	}
	CHECK(served);

	/* |idle| is still connected, mid-handshake: stop must not hang. */
	nbd_server_stop(s1);
	nbd_server_stop(s2);
	CHECK(closed(idle));
	close(idle);
	char path[300];
	snprintf(path, sizeof(path), "%s/a.sock", dir);
	CHECK(access(path, F_OK) != 0); /* the socket file is gone */
	rmdir(dir);
}

int main(void)
{
	log_set_level(LOG_SILENT);
	test_request();
	test_option_header();
	test_go();
	uint8_t *img = malloc(DEV_SIZE);
	for (size_t i = 0; i < DEV_SIZE; i++)
		img[i] = (uint8_t)(i * 131 + (i >> 9));
	test_server(img);
	free(img);
	return check_report();
}
