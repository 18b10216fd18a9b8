/* A userfaultfd page-fault handler for kvmm's Uffd snapshot backend, serving
 * guest RAM from a memory file: the role of Firecracker's example handler,
 * for tests.  kindling's real handler serves the pages from convergent chunks
 * through the cache; both speak the same protocol (vmm/kvmm/README.md, "The
 * Uffd handshake").
 *
 *   uffd_file_handler SOCKET MEM_FILE
 *
 * Listens on the unix socket SOCKET, takes ONE connection from kvmm and its
 * one message: a JSON array of regions [{"base_host_virt_addr", "size",
 * "offset", "page_size"}] with the userfaultfd attached (SCM_RIGHTS).  Then
 * each missing-page fault in a region is served from MEM_FILE at the
 * region's offset: UFFDIO_COPY of the page, or UFFDIO_ZEROPAGE when the page
 * is all zeros (a hole in a sparse file); EEXIST (another thread's fault on
 * the same page won) only needs a wake.  When kvmm closes the connection
 * (it exits) the handler prints "uffd_file_handler: served N pages (C
 * copied, Z zero)" and exits 0; any protocol or system error exits 1 with a
 * message. */
#define LOG_COMPONENT "uffd_file_handler"
#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <linux/userfaultfd.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include "common/common.h"

#define MAX_REGIONS 8

struct region {
	uint64_t base, size, offset, page_size;
};

struct handler {
	int uffd;
	const uint8_t *mem; /* the memory file, mapped read-only */
	uint64_t mem_size;
	struct region r[MAX_REGIONS];
	size_t n;
	uint64_t copied, zeroed;
};

static int fail(const char *what)
{
	fprintf(stderr, "uffd_file_handler: %s\n", what);
	return 1;
}

/* The one message: the regions as JSON, the userfaultfd as SCM_RIGHTS. */
static int handshake(struct handler *h, int conn)
{
	char buf[4096];
	union {
		char c[CMSG_SPACE(sizeof(int))];
		struct cmsghdr align;
	} ctl;
	struct iovec iov = { .iov_base = buf, .iov_len = sizeof(buf) - 1 };
	struct msghdr mh = { .msg_iov = &iov, .msg_iovlen = 1, .msg_control = ctl.c, .msg_controllen = sizeof(ctl.c) };
	ssize_t n = recvmsg(conn, &mh, MSG_CMSG_CLOEXEC);
	if (n <= 0)
		return fail("no message from kvmm");
	buf[n] = 0;
	struct cmsghdr *cm = CMSG_FIRSTHDR(&mh);
	if (!cm || cm->cmsg_level != SOL_SOCKET || cm->cmsg_type != SCM_RIGHTS || cm->cmsg_len != CMSG_LEN(sizeof(int)))
		return fail("the message carries no userfaultfd");
	memcpy(&h->uffd, CMSG_DATA(cm), sizeof(int));
	json_error_t je;
	json_t *a = json_loads(buf, 0, &je);
	if (!json_is_array(a) || json_array_size(a) == 0 || json_array_size(a) > MAX_REGIONS) {
		fprintf(stderr, "uffd_file_handler: the regions are not a JSON array of 1..%d: %s\n", MAX_REGIONS, buf);
		json_decref(a);
		return 1;
	}
	size_t i;
	json_t *o;
	json_array_foreach(a, i, o)
	{
		json_int_t base, size, off, ps;
		if (json_unpack_ex(o, &je, JSON_STRICT, "{s:I, s:I, s:I, s:I}", "base_host_virt_addr", &base, "size",
				   &size, "offset", &off, "page_size", &ps) < 0 ||
		    base < 0 || size <= 0 || off < 0 || ps != 4096) {
			fprintf(stderr, "uffd_file_handler: region %zu: %s\n", i, je.text);
			json_decref(a);
			return 1;
		}
		h->r[i] = (struct region){ (uint64_t)base, (uint64_t)size, (uint64_t)off, (uint64_t)ps };
		if (h->r[i].offset + h->r[i].size > h->mem_size) {
			json_decref(a);
			return fail("a region reaches past the end of the memory file");
		}
	}
	h->n = json_array_size(a);
	json_decref(a);
	printf("uffd_file_handler: %zu regions: %s\n", h->n, buf);
	fflush(stdout);
	return 0;
}

static int serve_fault(struct handler *h, uint64_t addr)
{
	for (size_t i = 0; i < h->n; i++) {
		const struct region *r = &h->r[i];
		if (addr < r->base || addr - r->base >= r->size)
			continue;
		uint64_t page = (addr - r->base) & ~(r->page_size - 1);
		const uint8_t *src = h->mem + r->offset + page;
		int rc;
		if (is_all_zero(src, r->page_size)) {
			struct uffdio_zeropage z = { .range = { .start = r->base + page, .len = r->page_size } };
			rc = ioctl(h->uffd, UFFDIO_ZEROPAGE, &z);
			if (rc == 0)
				h->zeroed++;
		} else {
			struct uffdio_copy c = { .dst = r->base + page, .src = (uint64_t)(uintptr_t)src, .len = r->page_size };
			rc = ioctl(h->uffd, UFFDIO_COPY, &c);
			if (rc == 0)
				h->copied++;
		}
		if (rc < 0 && errno == EEXIST) {
			/* Already there (another fault on it won): wake whoever waits. */
			struct uffdio_range w = { .start = r->base + page, .len = r->page_size };
			rc = ioctl(h->uffd, UFFDIO_WAKE, &w);
		}
		if (rc < 0) {
			fprintf(stderr, "uffd_file_handler: serving 0x%llx: %s\n", (unsigned long long)addr,
				strerror(errno));
			return -1;
		}
		return 0;
	}
	fprintf(stderr, "uffd_file_handler: a fault at 0x%llx is in no region\n", (unsigned long long)addr);
	return -1;
}

int main(int argc, char **argv)
{
	if (argc != 3) {
		fprintf(stderr, "usage: uffd_file_handler SOCKET MEM_FILE\n");
		return 2;
	}
	struct handler h = { .uffd = -1 };
	int fd = open(argv[2], O_RDONLY | O_CLOEXEC);
	struct stat st;
	if (fd < 0 || fstat(fd, &st) < 0 || st.st_size == 0)
		return fail("cannot open the memory file");
	h.mem_size = (uint64_t)st.st_size;
	h.mem = mmap(NULL, (size_t)h.mem_size, PROT_READ, MAP_PRIVATE, fd, 0);
	close(fd);
	if (h.mem == MAP_FAILED)
		return fail("cannot map the memory file");

	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	snprintf(sa.sun_path, sizeof(sa.sun_path), "%s", argv[1]);
	unlink(argv[1]);
	int ls = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (ls < 0 || bind(ls, (struct sockaddr *)&sa, sizeof(sa)) < 0 || listen(ls, 1) < 0)
		return fail("cannot listen on the socket");
	int conn = accept4(ls, NULL, NULL, SOCK_CLOEXEC);
	close(ls);
	unlink(argv[1]);
	if (conn < 0)
		return fail("accept failed");
	if (handshake(&h, conn) != 0)
		return 1;

	for (;;) {
		struct pollfd p[2] = { { .fd = h.uffd, .events = POLLIN }, { .fd = conn, .events = POLLIN } };
		if (poll(p, 2, -1) < 0) {
			if (errno == EINTR)
				continue;
			return fail("poll failed");
		}
		if (p[0].revents & POLLIN) {
			struct uffd_msg m;
			ssize_t n = read(h.uffd, &m, sizeof(m));
			if (n < 0 && (errno == EAGAIN || errno == EINTR))
				continue;
			if (n != (ssize_t)sizeof(m))
				return fail("short read from the userfaultfd");
			if (m.event == UFFD_EVENT_PAGEFAULT && serve_fault(&h, m.arg.pagefault.address) < 0)
				return 1;
			continue;
		}
		if (p[1].revents) {
			char b;
			if (recv(conn, &b, 1, MSG_DONTWAIT) > 0)
				continue; /* nothing more is expected; ignore */
			break; /* EOF: kvmm exited */
		}
		if (p[0].revents & (POLLERR | POLLHUP))
			break;
	}
	printf("uffd_file_handler: served %llu pages (%llu copied, %llu zero)\n",
	       (unsigned long long)(h.copied + h.zeroed), (unsigned long long)h.copied, (unsigned long long)h.zeroed);
	return 0;
}
