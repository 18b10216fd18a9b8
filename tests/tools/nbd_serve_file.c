/* nbd_serve_file FILE ADDRESS [EXPORT_NAME]
 *
 * Serves FILE read-only through blockd's NBD server on ADDRESS
 * ("unix:/path" or "tcp:127.0.0.1:0"), so integration tests can point real
 * NBD clients at it.  Prints the bound address on stdout once listening,
 * runs until SIGTERM or SIGINT, then stops the server and exits 0.
 * KINDLING_NBD_FAIL_AT=OFFSET makes reads covering that byte fail with
 * -EIO (a fault layer for tests of the error path).
 */
#include "blockd/internal.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

struct file_dev {
	int fd;
	uint64_t size;
	bool fail;
	uint64_t fail_at;
};

static int file_read_at(void *ctx, uint64_t off, void *buf, size_t len)
{
	struct file_dev *f = ctx;
	uint64_t end;
	if (!ck_add_u64(off, len, &end) || end > f->size)
		return -EINVAL;
	if (f->fail && f->fail_at >= off && f->fail_at < end)
		return -EIO;
	uint8_t *p = buf;
	while (len > 0) {
		ssize_t n = pread(f->fd, p, len, (off_t)off);
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0)
			return -errno;
		if (n == 0)
			return -EIO; /* the file shrank under us */
		p += n;
		len -= (size_t)n;
		off += (uint64_t)n;
	}
	return 0;
}

int main(int argc, char **argv)
{
	if (argc < 3 || argc > 4) {
		fprintf(stderr, "usage: %s FILE ADDRESS [EXPORT_NAME]\n", argv[0]);
		return 2;
	}
	struct file_dev f = { .fd = open(argv[1], O_RDONLY | O_CLOEXEC) };
	struct stat st;
	if (f.fd < 0 || fstat(f.fd, &st) < 0) {
		fprintf(stderr, "nbd_serve_file: %s: %s\n", argv[1], strerror(errno));
		return 1;
	}
	f.size = (uint64_t)st.st_size;
	const char *fail = getenv("KINDLING_NBD_FAIL_AT");
	if (fail && *fail) {
		f.fail = true;
		f.fail_at = strtoull(fail, NULL, 0);
	}
	struct blockdev dev = { .read_at = file_read_at, .size = f.size, .ctx = &f };
	char *desc = xasprintf("file %s", argv[1]);
	struct nbd_export exp = { .name = argc > 3 ? argv[3] : "", .dev = &dev, .description = desc };

	/* Block the signals before any thread exists, so all inherit the mask
	 * and sigwait() below is the only place they arrive. */
	sigset_t set;
	sigemptyset(&set);
	sigaddset(&set, SIGTERM);
	sigaddset(&set, SIGINT);
	pthread_sigmask(SIG_BLOCK, &set, NULL);

	struct nbd_server *srv;
	int r = nbd_server_start(argv[2], &exp, 1, NULL, &srv);
	if (r < 0) {
		fprintf(stderr, "nbd_serve_file: cannot serve on %s: %s\n", argv[2], strerror(-r));
		free(desc);
		close(f.fd);
		return 1;
	}
	printf("%s\n", nbd_server_address(srv));
	fflush(stdout);
	int sig = 0;
	sigwait(&set, &sig);
	nbd_server_stop(srv);
	free(desc);
	close(f.fd);
	fprintf(stderr, "nbd_serve_file: stopped on signal %d\n", sig);
	return 0;
}
