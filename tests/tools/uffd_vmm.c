/* uffd_vmm: plays the VMM side of a snapshot restore exactly as kvmm does,
 * without KVM: the guest memory is two anonymous mappings (RAM split around a
 * hole), registered MISSING with a userfaultfd that goes to the memory server
 * in Firecracker's Uffd handshake; then pages are read, which faults them in
 * through the server, and compared byte for byte with the memory file.
 *
 *   uffd_vmm --socket PATH --mem-file FILE [--split BYTES] [--touch all|R,R,...]
 *            [--remove OFF+LEN] [--page-size-kib] [--hold-ms N] [--go-file PATH]
 *
 * R is OFF (one page) or OFF+LEN, byte offsets in the memory file (0x... ok).
 * --remove drops that range (MADV_DONTNEED, as a balloon does) after the
 * touches and checks it reads back as zeros.  --page-size-kib sends the older
 * Firecracker field.  --go-file makes it wait, after the handshake, until
 * PATH exists before touching anything (a test's way to let the server's
 * prefetch finish first without guessing a delay).  Prints one JSON line; exit 0 if every byte matched. */
#include <errno.h>
#include <fcntl.h>
#include <linux/userfaultfd.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/un.h>
#include <unistd.h>

#define PAGE 4096ull

struct region {
	uint8_t *base;
	uint64_t size, offset;
};

static struct region regions[2];
static int mem_fd;
static uint64_t pages_checked, mismatches;

static uint8_t *host_of(uint64_t off)
{
	for (int i = 0; i < 2; i++)
		if (off >= regions[i].offset && off < regions[i].offset + regions[i].size)
			return regions[i].base + (off - regions[i].offset);
	return NULL;
}

/* Read the page at |off| through the mapping (faulting it in) and compare. */
static void check_page(uint64_t off, bool want_zero)
{
	uint8_t want[PAGE], got[PAGE];
	uint8_t *p = host_of(off);
	if (!p) {
		fprintf(stderr, "uffd_vmm: offset %llu is outside the memory\n", (unsigned long long)off);
		mismatches++;
		return;
	}
	memcpy(got, p, PAGE); /* the fault happens here */
	if (want_zero)
		memset(want, 0, PAGE);
	else if (pread(mem_fd, want, PAGE, (off_t)off) != (ssize_t)PAGE) {
		fprintf(stderr, "uffd_vmm: cannot read the memory file at %llu\n", (unsigned long long)off);
		exit(2);
	}
	pages_checked++;
	if (memcmp(want, got, PAGE) != 0) {
		if (mismatches < 5)
			fprintf(stderr, "uffd_vmm: page at %llu differs from the %s\n", (unsigned long long)off,
				want_zero ? "zeros a removed page must read as" : "memory file");
		mismatches++;
	}
}

static void check_range(uint64_t off, uint64_t len, uint64_t mem_size, bool want_zero)
{
	off &= ~(PAGE - 1);
	for (uint64_t o = off; o < off + len && o < mem_size; o += PAGE)
		check_page(o, want_zero);
}

static int parse_range(const char *s, uint64_t *off, uint64_t *len)
{
	char *end;
	*off = strtoull(s, &end, 0);
	*len = PAGE;
	if (*end == '+')
		*len = strtoull(end + 1, &end, 0);
	return *end == 0 || *end == ',' ? 0 : -1;
}

int main(int argc, char **argv)
{
	const char *sock = NULL, *file = NULL, *touch = "all", *remove_spec = NULL, *go_file = NULL;
	uint64_t split = 0;
	bool kib = false;
	long hold_ms = 0;
	for (int i = 1; i < argc; i++) {
		const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
		if (!strcmp(a, "--page-size-kib"))
			kib = true;
		else if (v && !strcmp(a, "--socket"))
			sock = v, i++;
		else if (v && !strcmp(a, "--mem-file"))
			file = v, i++;
		else if (v && !strcmp(a, "--split"))
			split = strtoull(v, NULL, 0), i++;
		else if (v && !strcmp(a, "--touch"))
			touch = v, i++;
		else if (v && !strcmp(a, "--remove"))
			remove_spec = v, i++;
		else if (v && !strcmp(a, "--go-file"))
			go_file = v, i++;
		else if (v && !strcmp(a, "--hold-ms"))
			hold_ms = atol(v), i++;
		else {
			fprintf(stderr, "usage: uffd_vmm --socket PATH --mem-file FILE [--split BYTES] "
					"[--touch all|R,R,...] [--remove OFF+LEN] [--page-size-kib] [--hold-ms N]\n");
			return 2;
		}
	}
	if (!sock || !file)
		return 2;
	struct stat st;
	if ((mem_fd = open(file, O_RDONLY)) < 0 || fstat(mem_fd, &st) < 0) {
		perror(file);
		return 2;
	}
	uint64_t mem_size = (uint64_t)st.st_size;
	if (!split)
		split = ((mem_size / 2) & ~(PAGE - 1)) + 3 * PAGE; /* not on a chunk boundary */
	if (split >= mem_size)
		split = mem_size / 2 & ~(PAGE - 1);
	regions[0] = (struct region){.size = split, .offset = 0};
	regions[1] = (struct region){.size = mem_size - split, .offset = split};

	int uffd = (int)syscall(SYS_userfaultfd, O_CLOEXEC | O_NONBLOCK);
	if (uffd < 0) {
		fprintf(stderr, "uffd_vmm: userfaultfd: %s (needs root or vm.unprivileged_userfaultfd=1)\n",
			strerror(errno));
		return 77;
	}
	struct uffdio_api api = {.api = UFFD_API, .features = UFFD_FEATURE_EVENT_REMOVE};
	if (ioctl(uffd, UFFDIO_API, &api) < 0) {
		perror("UFFDIO_API");
		return 2;
	}
	char json[1024];
	size_t jl = 0;
	jl += (size_t)snprintf(json + jl, sizeof(json) - jl, "[");
	for (int i = 0; i < 2; i++) {
		/* A guard page between the two, like RAM around the MMIO hole. */
		uint8_t *m = mmap(NULL, regions[i].size + PAGE, PROT_READ | PROT_WRITE,
				  MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
		if (m == MAP_FAILED) {
			perror("mmap");
			return 2;
		}
		munmap(m + regions[i].size, PAGE);
		regions[i].base = m;
		struct uffdio_register reg = {.range = {.start = (uintptr_t)m, .len = regions[i].size},
					      .mode = UFFDIO_REGISTER_MODE_MISSING};
		if (ioctl(uffd, UFFDIO_REGISTER, &reg) < 0) {
			perror("UFFDIO_REGISTER");
			return 2;
		}
		jl += (size_t)snprintf(json + jl, sizeof(json) - jl,
				       "%s{\"base_host_virt_addr\":%llu,\"size\":%llu,\"offset\":%llu,%s}", i ? "," : "",
				       (unsigned long long)(uintptr_t)m, (unsigned long long)regions[i].size,
				       (unsigned long long)regions[i].offset,
				       kib ? "\"page_size_kib\":4" : "\"page_size\":4096");
	}
	jl += (size_t)snprintf(json + jl, sizeof(json) - jl, "]");

	int s = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	struct sockaddr_un sa = {.sun_family = AF_UNIX};
	snprintf(sa.sun_path, sizeof(sa.sun_path), "%s", sock);
	if (s < 0 || connect(s, (struct sockaddr *)&sa, sizeof(sa)) < 0) {
		fprintf(stderr, "uffd_vmm: connect %s: %s\n", sock, strerror(errno));
		return 2;
	}
	union {
		struct cmsghdr align;
		char buf[CMSG_SPACE(sizeof(int))];
	} control;
	memset(&control, 0, sizeof(control));
	struct iovec iov = {.iov_base = json, .iov_len = jl};
	struct msghdr msg = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = control.buf,
			     .msg_controllen = sizeof(control.buf)};
	struct cmsghdr *c = CMSG_FIRSTHDR(&msg);
	c->cmsg_level = SOL_SOCKET;
	c->cmsg_type = SCM_RIGHTS;
	c->cmsg_len = CMSG_LEN(sizeof(int));
	memcpy(CMSG_DATA(c), &uffd, sizeof(int));
	if (sendmsg(s, &msg, 0) != (ssize_t)jl) {
		perror("sendmsg");
		return 2;
	}

	while (go_file && access(go_file, F_OK) != 0)
		usleep(10 * 1000);
	if (!strcmp(touch, "all"))
		check_range(0, mem_size, mem_size, false);
	else
		for (const char *p = touch; p && *p;) {
			uint64_t off, len;
			if (parse_range(p, &off, &len) < 0) {
				fprintf(stderr, "uffd_vmm: bad --touch entry at \"%s\"\n", p);
				return 2;
			}
			check_range(off, len, mem_size, false);
			p = strchr(p, ',');
			p = p ? p + 1 : NULL;
		}
	uint64_t removed = 0;
	if (remove_spec) {
		uint64_t off, len;
		if (parse_range(remove_spec, &off, &len) < 0)
			return 2;
		off &= ~(PAGE - 1);
		len = (len + PAGE - 1) & ~(PAGE - 1);
		for (uint64_t o = off; o < off + len && o < mem_size; o += PAGE) {
			uint8_t *h = host_of(o);
			if (h && madvise(h, PAGE, MADV_DONTNEED) == 0)
				removed++;
		}
		check_range(off, len, mem_size, true);
	}
	if (hold_ms > 0)
		usleep((useconds_t)hold_ms * 1000);
	printf("{\"memory_size\":%llu,\"split\":%llu,\"pages_checked\":%llu,\"pages_removed\":%llu,\"mismatches\":%llu}\n",
	       (unsigned long long)mem_size, (unsigned long long)split, (unsigned long long)pages_checked,
	       (unsigned long long)removed, (unsigned long long)mismatches);
	fflush(stdout);
	close(s);
	close(uffd);
	return mismatches ? 1 : 0;
}
