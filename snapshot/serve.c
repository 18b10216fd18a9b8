/* The lazy memory server: guest memory from convergent chunks, on demand.
 *
 * One VMM connects to the socket and sends its regions and userfaultfd
 * (uffd_msg.c).  The caller's thread then polls the userfaultfd, the VMM's
 * connection (EOF ends serving) and an eventfd the prefetch thread rings on
 * a fatal error:
 *   - UFFD_EVENT_PAGEFAULT: the address's region and memory offset give the
 *     512 KiB chunk; the chunk is read through the cache (verified at every
 *     tier) and UFFDIO_COPY fills its whole span in every region it meets
 *     (an unstored, all-zero chunk: UFFDIO_ZEROPAGE, nothing fetched).
 *     Pages that are already there (EEXIST: the prefetcher, or the guest
 *     after a zero fill, got there first) are skipped one by one.
 *   - UFFD_EVENT_REMOVE / UNMAP: the VMM dropped those pages (a balloon's
 *     MADV_DONTNEED, or an munmap); they are marked removed and, if the
 *     guest touches them again, filled with zeros, never with the snapshot's
 *     old bytes.
 * A chunk is filled once, under |lock|, so the fault path and the prefetch
 * thread never both copy it; cache reads happen outside the lock.
 *
 * With the host memory tier (hostmem.c), a chunk it holds whole is filled
 * from there (a read and a CRC, no fetch, no SHA-256, no AES), and a chunk
 * fetched through the cache is kept there once the guest has it, so the
 * next restore of the snapshot on this host finds it.
 *
 * The first serve records which chunks faults filled, in order, and stores
 * that as the snapshot's startup trace (image.h, traces/<digest>); later
 * serves prefetch the trace in order from a background thread.
 */
#include "internal.h"

#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <linux/userfaultfd.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#define EXISTS_BATCH 256

struct snapshot_server {
	struct cache *cache;
	struct store *store;
	const struct manifest *m;
	char digest[65];
	char *name;
	char *socket_path;
	int listen_fd, wake_fd;
	uint64_t mem_chunks;
	bool recording;
	uint64_t *plan;			/* the stored trace, when prefetching */
	size_t n_plan;
	struct snapshot_hostmem *hostmem; /* the host memory tier, or NULL */

	/* while serving */
	int uffd;
	struct snapshot_uffd_region *regions;
	size_t n_regions;
	_Atomic bool stop;
	pthread_t prefetcher;
	bool prefetcher_started;

	pthread_mutex_t lock;		/* everything below */
	uint8_t *filled;		/* per chunk: its spans were filled */
	uint8_t *removed;		/* per page of memory: the VMM dropped it */
	uint64_t *rec;			/* recorded trace */
	size_t n_rec, cap_rec;
	int fatal;			/* the prefetch thread's fatal error */
	uint64_t faults, chunks_faulted, chunks_prefetched, chunks_zero, pages_removed, pages_raced;
	uint64_t tier_chunks[CACHE_TIER_COUNT];
	uint64_t host_chunks, host_damaged; /* filled from the host tier; found damaged there */
	double seconds;
};

/* ---- filling guest memory ------------------------------------------------------ */

/* Fill |len| bytes at |addr| from |src|, or with zeros when |src| is NULL.
 * Pages already present are skipped.  Returns 0, or -errno: -ENOENT/-ESRCH
 * when the range or the VMM is gone. */
static int uffd_fill(struct snapshot_server *s, uint64_t addr, const uint8_t *src, uint64_t len)
{
	unsigned retries = 0;
	while (len > 0) {
		long done;
		int rc;
		if (src) {
			struct uffdio_copy c = {.dst = addr, .src = (uintptr_t)src, .len = len, .mode = 0};
			rc = ioctl(s->uffd, UFFDIO_COPY, &c);
			done = (long)c.copy;
		} else {
			struct uffdio_zeropage z = {.range = {.start = addr, .len = len}, .mode = 0};
			rc = ioctl(s->uffd, UFFDIO_ZEROPAGE, &z);
			done = (long)z.zeropage;
		}
		if (rc == 0)
			return 0;
		int e = errno;
		if (e == EAGAIN && done > 0) { /* partial: stopped at a present page, or the mm changed */
			addr += (uint64_t)done;
			len -= (uint64_t)done;
			if (src)
				src += done;
			continue;
		}
		if (e == EEXIST) { /* the first page is there already */
			s->pages_raced++;
			addr += SNAPSHOT_PAGE;
			len -= SNAPSHOT_PAGE;
			if (src)
				src += SNAPSHOT_PAGE;
			continue;
		}
		if (e == EAGAIN && ++retries < 1000)
			continue;
		return -e;
	}
	return 0;
}

/* Fill every span of chunk |index| from |plain| (NULL: zeros), pages the VMM
 * removed with zeros.  Called with |lock| held. */
static int fill_spans(struct snapshot_server *s, uint64_t index, const uint8_t *plain)
{
	uint64_t mem_size = s->m->snapshot.mem_size;
	for (size_t i = 0; i < s->n_regions; i++) {
		uint64_t addr;
		uint32_t off, len;
		if (!snapshot_uffd_chunk_span(&s->regions[i], index, mem_size, &addr, &off, &len))
			continue;
		/* Runs of pages with the same removed state. */
		uint64_t page0 = (index * CHUNK_SIZE + off) / SNAPSHOT_PAGE;
		uint32_t pages = len / SNAPSHOT_PAGE;
		for (uint32_t p = 0; p < pages;) {
			bool rm = s->removed[page0 + p];
			uint32_t q = p + 1;
			while (q < pages && (bool)s->removed[page0 + q] == rm)
				q++;
			int r = uffd_fill(s, addr + (uint64_t)p * SNAPSHOT_PAGE,
					  plain && !rm ? plain + off + (size_t)p * SNAPSHOT_PAGE : NULL,
					  (uint64_t)(q - p) * SNAPSHOT_PAGE);
			if (r == -ENOENT) /* that range was unmapped: nothing to fill there */
				break;
			if (r < 0)
				return r;
			p = q;
		}
	}
	return 0;
}

/* Chunk |index|'s bytes into |buf| (CHUNK_SIZE): from the host memory
 * tier when it holds them whole, else through the cache (verified), with
 * |*out_from_host| saying which.  Returns 0 or -EIO (logged). */
static int read_chunk(struct snapshot_server *s, uint64_t index, const struct manifest_chunk *mc, uint8_t *buf,
		      enum cache_tier *out_tier, bool *out_from_host)
{
	*out_from_host = false;
	if (s->hostmem) {
		int r = snapshot_hostmem_get(s->hostmem, index, buf, CHUNK_SIZE);
		if (r == 0) {
			*out_from_host = true;
			return 0;
		}
		if (r == -EBADMSG) {
			log_warn("snapshot %s: memory chunk %llu in %s is damaged (its CRC differs); fetching it again",
				 s->name, (unsigned long long)index, snapshot_hostmem_path(s->hostmem));
			pthread_mutex_lock(&s->lock);
			s->host_damaged++;
			pthread_mutex_unlock(&s->lock);
		}
	}
	int r = cache_read_once(s->cache, mc->name, mc->key, 0, buf, CHUNK_SIZE, out_tier);
	if (r < 0) {
		log_err("snapshot %s: memory chunk %llu (%s) failed verification at every tier (or is missing): "
			"%s; stopping: the VM cannot continue honestly (restore the chunk to the origin, or "
			"re-import the snapshot)",
			s->name, (unsigned long long)index, mc->name, strerror(-r));
		return -EIO;
	}
	return 0;
}

/* Make chunk |index| present in every region, reading it (read_chunk) into
 * |buf| (CHUNK_SIZE) unless it is all zero, and keeping fetched bytes in the
 * host tier after the guest has them.  |by_fault| says who asked (counters,
 * the recording).  Returns 0, -EIO when no tier has verified bytes (logged:
 * the VM cannot go on), or -errno from the userfaultfd. */
static int fill_chunk(struct snapshot_server *s, uint64_t index, bool by_fault, uint8_t *buf)
{
	pthread_mutex_lock(&s->lock);
	bool done = s->filled[index];
	pthread_mutex_unlock(&s->lock);
	if (done)
		return 0;
	const struct manifest_chunk *mc = snapshot_chunk(s->m, index);
	enum cache_tier tier = CACHE_TIER_NONE;
	bool from_host = false;
	if (mc && read_chunk(s, index, mc, buf, &tier, &from_host) < 0)
		return -EIO;
	pthread_mutex_lock(&s->lock);
	int r = 0;
	bool filled_here = !s->filled[index];
	if (filled_here) {
		r = fill_spans(s, index, mc ? buf : NULL);
		if (r == 0) {
			s->filled[index] = 1;
			if (!mc)
				s->chunks_zero++;
			else if (from_host)
				s->host_chunks++;
			else
				s->tier_chunks[tier]++;
			if (by_fault)
				s->chunks_faulted++;
			else
				s->chunks_prefetched++;
			if (by_fault && s->recording && mc) {
				if (s->n_rec == s->cap_rec) {
					size_t cap = s->cap_rec ? s->cap_rec * 2 : 256;
					uint64_t *v = realloc(s->rec, cap * sizeof(*v));
					if (v)
						s->rec = v, s->cap_rec = cap;
				}
				if (s->n_rec < s->cap_rec)
					s->rec[s->n_rec++] = index;
			}
		}
	}
	pthread_mutex_unlock(&s->lock);
	/* The guest runs on (UFFDIO_COPY woke it) while the bytes are kept. */
	if (r == 0 && filled_here && mc && !from_host && s->hostmem)
		snapshot_hostmem_put(s->hostmem, index, buf, CHUNK_SIZE);
	return r;
}

/* A fault at |addr|. */
static int on_fault(struct snapshot_server *s, uint64_t addr, uint8_t *buf)
{
	size_t ri;
	uint64_t mem_off;
	pthread_mutex_lock(&s->lock);
	s->faults++;
	pthread_mutex_unlock(&s->lock);
	if (snapshot_uffd_locate(s->regions, s->n_regions, addr, &ri, &mem_off) < 0) {
		log_err("snapshot %s: a fault at 0x%llx lies in no region the VMM registered; stopping", s->name,
			(unsigned long long)addr);
		return -EFAULT;
	}
	uint64_t index = mem_off / CHUNK_SIZE;
	int r = fill_chunk(s, index, true, buf);
	if (r < 0)
		return r;
	/* The chunk was filled before: this page was removed since, or a fill
	 * raced the fault.  Zero a removed page; wake the faulting thread. */
	uint64_t page_addr = addr & ~(uint64_t)(SNAPSHOT_PAGE - 1);
	pthread_mutex_lock(&s->lock);
	if (s->removed[mem_off / SNAPSHOT_PAGE])
		r = uffd_fill(s, page_addr, NULL, SNAPSHOT_PAGE);
	pthread_mutex_unlock(&s->lock);
	struct uffdio_range wake = {.start = page_addr, .len = SNAPSHOT_PAGE};
	ioctl(s->uffd, UFFDIO_WAKE, &wake);
	return r == -ENOENT ? 0 : r;
}

/* The VMM dropped host range [start, end): mark those memory pages removed.
 * Called with |lock| held. */
static void mark_removed(struct snapshot_server *s, uint64_t start, uint64_t end)
{
	for (size_t i = 0; i < s->n_regions; i++) {
		const struct snapshot_uffd_region *g = &s->regions[i];
		uint64_t a = start > g->base_host_virt_addr ? start : g->base_host_virt_addr;
		uint64_t b = end < g->base_host_virt_addr + g->size ? end : g->base_host_virt_addr + g->size;
		for (uint64_t x = a & ~(uint64_t)(SNAPSHOT_PAGE - 1); x < b; x += SNAPSHOT_PAGE) {
			uint64_t page = (g->offset + (x - g->base_host_virt_addr)) / SNAPSHOT_PAGE;
			if (!s->removed[page])
				s->pages_removed++;
			s->removed[page] = 1;
		}
	}
}

/* ---- prefetch ------------------------------------------------------------------ */

static void *prefetch_main(void *arg)
{
	struct snapshot_server *s = arg;
	uint8_t *buf = malloc(CHUNK_SIZE);
	size_t i = 0;
	for (; buf && i < s->n_plan && !atomic_load(&s->stop); i++) {
		int r = fill_chunk(s, s->plan[i], false, buf);
		if (r == -EIO) {
			pthread_mutex_lock(&s->lock);
			s->fatal = r;
			pthread_mutex_unlock(&s->lock);
			uint64_t one = 1;
			if (write(s->wake_fd, &one, sizeof(one)) < 0)
				log_warn("snapshot %s: cannot wake the server: %s", s->name, strerror(errno));
			break;
		}
		if (r < 0) { /* the VMM went away: nothing left to prefetch into */
			log_debug("snapshot %s: prefetch stopped: %s", s->name, strerror(-r));
			break;
		}
	}
	if (i == s->n_plan) {
		pthread_mutex_lock(&s->lock);
		uint64_t prefetched = s->chunks_prefetched;
		pthread_mutex_unlock(&s->lock);
		log_info("snapshot %s: trace prefetched: %llu of its %zu chunks filled ahead of the guest", s->name,
			 (unsigned long long)prefetched, s->n_plan);
	}
	free(buf);
	return NULL;
}

/* ---- setup --------------------------------------------------------------------- */

/* Every stored chunk of the snapshot must be in the origin. */
static int check_chunks_exist(struct snapshot_server *s)
{
	const struct manifest *m = s->m;
	char (*keys)[7 + CHUNK_NAME_HEX_LEN + 1] = malloc(EXISTS_BATCH * sizeof(*keys));
	const char **ptrs = malloc(EXISTS_BATCH * sizeof(*ptrs));
	bool *exists = malloc(EXISTS_BATCH * sizeof(*exists));
	int r = keys && ptrs && exists ? 0 : -ENOMEM;
	for (size_t i = 0; r == 0 && i < m->n_chunks; i += EXISTS_BATCH) {
		size_t n = m->n_chunks - i < EXISTS_BATCH ? m->n_chunks - i : EXISTS_BATCH;
		for (size_t k = 0; k < n; k++) {
			snprintf(keys[k], sizeof(keys[k]), "chunks/%s", m->chunks[i + k].name);
			ptrs[k] = keys[k];
		}
		if ((r = store_exists_batch(s->store, ptrs, n, exists)) < 0) {
			log_err("snapshot %s: cannot check its chunks in %s: %s", s->name, store_describe(s->store),
				strerror(-r));
			break;
		}
		for (size_t k = 0; k < n; k++)
			if (!exists[k]) {
				log_err("snapshot %s: chunk %llu (%s) is missing from the origin %s; refusing to serve a "
					"VM that would stop at it (re-import the snapshot, or run `chunkify verify %s`)",
					s->name, (unsigned long long)m->chunks[i + k].index, m->chunks[i + k].name,
					store_describe(s->store), s->name);
				r = -ENOENT;
				break;
			}
	}
	free(keys);
	free(ptrs);
	free(exists);
	return r;
}

static void load_trace(struct snapshot_server *s, const struct snapshot_serve_options *opt)
{
	if (!opt->prefetch && !opt->record)
		return;
	if (opt->record) {
		s->recording = true;
		return;
	}
	char key[128];
	image_trace_key(s->digest, key, sizeof(key));
	uint8_t *buf = NULL;
	size_t len = 0;
	int r = store_get(s->store, key, IMAGE_TRACE_MAX_BYTES, &buf, &len);
	if (r == -ENOENT) {
		s->recording = true;
		log_info("snapshot %s: no trace yet; recording one", s->name);
		return;
	}
	if (r == 0)
		r = image_trace_parse(buf, len, s->mem_chunks, &s->plan, &s->n_plan);
	free(buf);
	if (r < 0)
		log_warn("snapshot %s: cannot use its trace %s (%s); serving without prefetch", s->name, key,
			 strerror(-r));
}

static int listen_on(const char *path)
{
	struct sockaddr_un sa = {.sun_family = AF_UNIX};
	if (strlen(path) >= sizeof(sa.sun_path)) {
		log_err("socket path %s is too long (at most %zu bytes)", path, sizeof(sa.sun_path) - 1);
		return -ENAMETOOLONG;
	}
	strcpy(sa.sun_path, path);
	struct stat st;
	if (lstat(path, &st) == 0 && S_ISSOCK(st.st_mode))
		unlink(path);
	int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (fd < 0 || bind(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0 || listen(fd, 1) < 0) {
		int e = errno;
		log_err("cannot listen on %s: %s", path, strerror(e));
		if (fd >= 0)
			close(fd);
		return -e;
	}
	return fd;
}

int snapshot_server_new(struct cache *cache, struct store *store, const struct manifest *m, const char *digest,
			const char *name, const struct snapshot_serve_options *opt, struct snapshot_server **out)
{
	if (m->kind != MANIFEST_KIND_SNAPSHOT || !m->keys_present || !opt->socket_path || !opt->vmstate_out) {
		log_err("snapshot %s: needs a snapshot manifest opened with the tenant key, a socket and a vmstate path",
			name);
		return -EINVAL;
	}
	struct snapshot_server *s = calloc(1, sizeof(*s));
	if (!s)
		return -ENOMEM;
	s->cache = cache, s->store = store, s->m = m;
	s->listen_fd = s->wake_fd = s->uffd = -1;
	snprintf(s->digest, sizeof(s->digest), "%s", digest);
	pthread_mutex_init(&s->lock, NULL);
	s->mem_chunks = (m->snapshot.mem_size + CHUNK_SIZE - 1) / CHUNK_SIZE;
	s->name = strdup(name);
	s->socket_path = strdup(opt->socket_path);
	s->filled = calloc(s->mem_chunks, 1);
	s->removed = calloc(m->snapshot.mem_size / SNAPSHOT_PAGE, 1);
	int r = s->name && s->socket_path && s->filled && s->removed ? 0 : -ENOMEM;
	uint8_t *vmstate = NULL;
	size_t vmstate_len = 0;
	if (r == 0 && (r = snapshot_read_vmstate(cache, m, name, &vmstate, &vmstate_len)) == 0) {
		if ((r = write_file_atomic(opt->vmstate_out, vmstate, vmstate_len, 0600)) < 0)
			log_err("cannot write the vmstate to %s: %s", opt->vmstate_out, strerror(-r));
		free(vmstate);
	}
	if (r == 0)
		r = check_chunks_exist(s);
	if (r == 0 && opt->host_mem.dir &&
	    snapshot_hostmem_open(&opt->host_mem, digest, m->snapshot.mem_size, &s->hostmem) == 0)
		log_info("snapshot %s: host memory tier %s", name, snapshot_hostmem_path(s->hostmem));
	if (r == 0) {
		load_trace(s, opt);
		s->wake_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
		r = s->wake_fd < 0 ? -errno : 0;
	}
	if (r == 0 && (s->listen_fd = listen_on(opt->socket_path)) < 0)
		r = s->listen_fd;
	if (r < 0) {
		if (s->listen_fd >= 0)
			unlink(s->socket_path);
		snapshot_server_free(s);
		return r;
	}
	*out = s;
	return 0;
}

void snapshot_server_free(struct snapshot_server *s)
{
	if (!s)
		return;
	if (s->listen_fd >= 0) {
		close(s->listen_fd);
		unlink(s->socket_path);
	}
	if (s->wake_fd >= 0)
		close(s->wake_fd);
	if (s->uffd >= 0)
		close(s->uffd);
	snapshot_hostmem_close(s->hostmem);
	pthread_mutex_destroy(&s->lock);
	free(s->regions);
	free(s->filled);
	free(s->removed);
	free(s->rec);
	free(s->plan);
	free(s->name);
	free(s->socket_path);
	free(s);
}

/* ---- serving ------------------------------------------------------------------- */

/* Receive the VMM's one message: the regions and the userfaultfd. */
static int handshake(struct snapshot_server *s, int conn)
{
	uint8_t *body = malloc(SNAPSHOT_UFFD_MAX_MSG);
	if (!body)
		return -ENOMEM;
	union {
		struct cmsghdr align;
		char buf[CMSG_SPACE(sizeof(int))];
	} control;
	struct iovec iov = {.iov_base = body, .iov_len = SNAPSHOT_UFFD_MAX_MSG};
	struct msghdr msg = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = control.buf,
			     .msg_controllen = sizeof(control.buf)};
	ssize_t n;
	do
		n = recvmsg(conn, &msg, MSG_CMSG_CLOEXEC);
	while (n < 0 && errno == EINTR);
	int r = 0, fd = -1;
	for (struct cmsghdr *c = n > 0 ? CMSG_FIRSTHDR(&msg) : NULL; c; c = CMSG_NXTHDR(&msg, c))
		if (c->cmsg_level == SOL_SOCKET && c->cmsg_type == SCM_RIGHTS && c->cmsg_len == CMSG_LEN(sizeof(int)))
			memcpy(&fd, CMSG_DATA(c), sizeof(int));
	if (n <= 0) {
		log_err("snapshot %s: the VMM closed the socket before its handshake", s->name);
		r = n < 0 ? -errno : -EPIPE;
	} else if (fd < 0 || (msg.msg_flags & (MSG_CTRUNC | MSG_TRUNC))) {
		log_err("snapshot %s: the VMM's handshake carries no userfaultfd (SCM_RIGHTS)", s->name);
		r = -EBADMSG;
	} else {
		char link[64] = "", path[64];
		snprintf(path, sizeof(path), "/proc/self/fd/%d", fd);
		ssize_t l = readlink(path, link, sizeof(link) - 1);
		if (l < 0 || strcmp(link, "anon_inode:[userfaultfd]") != 0) {
			log_err("snapshot %s: the descriptor the VMM sent is not a userfaultfd (%s)", s->name,
				l < 0 ? strerror(errno) : link);
			r = -EBADMSG;
		}
	}
	if (r == 0)
		r = snapshot_uffd_parse_regions(body, (size_t)n, s->m->snapshot.mem_size, &s->regions, &s->n_regions);
	free(body);
	if (r < 0) {
		if (fd >= 0)
			close(fd);
		return r;
	}
	int fl = fcntl(fd, F_GETFL);
	if (fl < 0 || fcntl(fd, F_SETFL, fl | O_NONBLOCK) < 0) {
		r = -errno;
		close(fd);
		return r;
	}
	s->uffd = fd;
	return 0;
}

static int handle_uffd(struct snapshot_server *s, uint8_t *buf)
{
	struct uffd_msg msgs[16];
	for (;;) {
		/* Removals are marked under the lock in the same hold as the read:
		 * reading a REMOVE event lets the VMM's madvise go on and drop the
		 * pages, and a prefetch copy that landed after that drop, before
		 * the mark, would bring the snapshot's old bytes back. */
		pthread_mutex_lock(&s->lock);
		ssize_t n = read(s->uffd, msgs, sizeof(msgs));
		int e = errno;
		for (size_t i = 0; n > 0 && i < (size_t)n / sizeof(msgs[0]); i++)
			if (msgs[i].event == UFFD_EVENT_REMOVE || msgs[i].event == UFFD_EVENT_UNMAP)
				mark_removed(s, msgs[i].arg.remove.start, msgs[i].arg.remove.end);
		pthread_mutex_unlock(&s->lock);
		if (n < 0 && e == EINTR)
			continue;
		if (n < 0 && e == EAGAIN)
			return 0;
		if (n < 0) {
			log_err("snapshot %s: reading the userfaultfd: %s", s->name, strerror(e));
			return -e;
		}
		for (size_t i = 0; i < (size_t)n / sizeof(msgs[0]); i++) {
			const struct uffd_msg *u = &msgs[i];
			int r = 0;
			switch (u->event) {
			case UFFD_EVENT_PAGEFAULT: r = on_fault(s, u->arg.pagefault.address, buf); break;
			case UFFD_EVENT_REMOVE:
			case UFFD_EVENT_UNMAP: break; /* marked above */
			default:
				log_warn("snapshot %s: ignoring userfaultfd event %u (the VMM remapped or forked)", s->name,
					 (unsigned)u->event);
			}
			if (r < 0)
				return r;
		}
	}
}

/* Which tier served a restore's memory, in one word for the report:
 * "host" (all from the host memory tier), "cache" (all fetched through the
 * cache), "host+cache", or "none" (nothing faulted).  |s->lock| held. */
static const char *served_by(const struct snapshot_server *s, uint64_t fetched)
{
	if (s->host_chunks && fetched)
		return "host+cache";
	return s->host_chunks ? "host" : fetched ? "cache" : "none";
}

static uint64_t chunks_fetched(const struct snapshot_server *s)
{
	uint64_t fetched = 0;
	for (int t = CACHE_TIER_MEM; t < CACHE_TIER_COUNT; t++)
		fetched += s->tier_chunks[t];
	return fetched;
}

/* One line saying where the memory came from, so an operator sees from the
 * log alone whether the host memory tier served the restore. */
static void log_served(struct snapshot_server *s)
{
	pthread_mutex_lock(&s->lock);
	uint64_t fetched = chunks_fetched(s);
	log_info("snapshot %s: memory served by %s: %llu chunks from the host memory tier (%s), %llu through the "
		 "cache (mem %llu, l1 %llu, l2 %llu, l3 %llu)",
		 s->name, served_by(s, fetched), (unsigned long long)s->host_chunks,
		 s->hostmem ? snapshot_hostmem_path(s->hostmem) : "off", (unsigned long long)fetched,
		 (unsigned long long)s->tier_chunks[CACHE_TIER_MEM], (unsigned long long)s->tier_chunks[CACHE_TIER_L1],
		 (unsigned long long)s->tier_chunks[CACHE_TIER_L2], (unsigned long long)s->tier_chunks[CACHE_TIER_L3]);
	pthread_mutex_unlock(&s->lock);
}

int snapshot_server_run(struct snapshot_server *s, volatile int *cancel)
{
	double t0 = now_seconds();
	int conn = -1, r = 0;
	struct pollfd lp = {.fd = s->listen_fd, .events = POLLIN};
	while (conn < 0) {
		if (cancel && *cancel)
			return -EINTR;
		int pr = poll(&lp, 1, 200);
		if (pr < 0 && errno != EINTR)
			return -errno;
		if (pr > 0 && (conn = accept4(s->listen_fd, NULL, NULL, SOCK_CLOEXEC)) < 0 && errno != EINTR &&
		    errno != EAGAIN)
			return -errno;
	}
	uint8_t *buf = malloc(CHUNK_SIZE);
	if (!buf)
		r = -ENOMEM;
	if (r == 0)
		r = handshake(s, conn);
	if (r == 0 && s->n_plan) {
		if (pthread_create(&s->prefetcher, NULL, prefetch_main, s) == 0)
			s->prefetcher_started = true;
		else
			log_warn("snapshot %s: cannot start the prefetch thread; serving faults only", s->name);
	}
	while (r == 0) {
		struct pollfd p[3] = {{.fd = s->uffd, .events = POLLIN},
				      {.fd = conn, .events = POLLIN},
				      {.fd = s->wake_fd, .events = POLLIN}};
		if (cancel && *cancel) {
			r = -EINTR;
			break;
		}
		int pr = poll(p, 3, 200);
		if (pr < 0 && errno == EINTR)
			continue;
		if (pr < 0) {
			r = -errno;
			break;
		}
		if (p[0].revents & (POLLIN | POLLERR))
			r = handle_uffd(s, buf);
		if (r == 0 && (p[2].revents & POLLIN)) {
			pthread_mutex_lock(&s->lock);
			r = s->fatal;
			pthread_mutex_unlock(&s->lock);
		}
		if (r == 0 && (p[1].revents & (POLLIN | POLLHUP | POLLERR))) {
			char junk[256];
			ssize_t n = recv(conn, junk, sizeof(junk), MSG_DONTWAIT);
			if (n == 0 || (n < 0 && errno != EAGAIN && errno != EINTR))
				break; /* the VMM is gone: the VM's life is over */
		}
	}
	atomic_store(&s->stop, true);
	if (s->prefetcher_started) {
		pthread_join(s->prefetcher, NULL);
		s->prefetcher_started = false;
	}
	pthread_mutex_lock(&s->lock);
	if (r == 0 && s->fatal)
		r = s->fatal;
	pthread_mutex_unlock(&s->lock);
	close(conn);
	free(buf);
	if (r == 0 && s->recording && s->n_rec) {
		char *doc = NULL, key[128];
		image_trace_key(s->digest, key, sizeof(key));
		int tr = image_trace_encode(s->digest, now_seconds() - t0, s->rec, s->n_rec, &doc);
		if (tr == 0)
			tr = store_put(s->store, key, doc, strlen(doc));
		free(doc);
		if (tr < 0)
			log_warn("snapshot %s: cannot store its trace at %s: %s (the next serve records again)", s->name,
				 key, strerror(-tr));
		else
			log_info("snapshot %s: stored a trace of %zu chunks at %s", s->name, s->n_rec, key);
	}
	s->seconds = now_seconds() - t0;
	log_served(s);
	return r;
}

char *snapshot_server_report(struct snapshot_server *s)
{
	pthread_mutex_lock(&s->lock);
	uint64_t fetched = chunks_fetched(s);
	uint64_t bytes = fetched * CHUNK_SIZE, mem = s->m->snapshot.mem_size;
	const char *trace = s->recording ? (s->n_rec ? "recorded" : "recording (nothing faulted)")
					 : s->n_plan ? "prefetched" : "off";
	json_t *j = json_pack("{s:s,s:s,s:I,s:I,s:{s:I,s:I,s:I,s:I,s:I},s:I,s:f,s:I,s:I,s:I,s:I,s:I,s:s,s:I,s:I,s:f}",
			      "snapshot", s->name, "manifest", s->digest, "memory_size", (json_int_t)mem, "faults",
			      (json_int_t)s->faults, "chunks", "host", (json_int_t)s->host_chunks, "mem", (json_int_t)s->tier_chunks[CACHE_TIER_MEM], "l1",
			      (json_int_t)s->tier_chunks[CACHE_TIER_L1], "l2", (json_int_t)s->tier_chunks[CACHE_TIER_L2],
			      "l3", (json_int_t)s->tier_chunks[CACHE_TIER_L3], "bytes_fetched", (json_int_t)bytes,
			      "fraction_fetched", mem ? (double)bytes / (double)mem : 0.0, "chunks_faulted",
			      (json_int_t)s->chunks_faulted, "chunks_prefetched", (json_int_t)s->chunks_prefetched,
			      "chunks_zero", (json_int_t)s->chunks_zero, "pages_removed", (json_int_t)s->pages_removed,
			      "pages_already_present", (json_int_t)s->pages_raced, "trace", trace, "trace_recorded",
			      (json_int_t)s->n_rec, "trace_planned", (json_int_t)s->n_plan, "seconds", s->seconds);
	if (j && json_object_set_new(j, "host_mem", json_string(s->hostmem ? snapshot_hostmem_path(s->hostmem)
									     : "off")) == 0)
		json_object_set_new(j, "host_mem_damaged", json_integer((json_int_t)s->host_damaged));
	if (j)
		json_object_set_new(j, "served_by", json_string(served_by(s, fetched)));
	pthread_mutex_unlock(&s->lock);
	char *out = j ? json_dumps(j, JSON_COMPACT | JSON_PRESERVE_ORDER) : NULL;
	json_decref(j);
	return out;
}
