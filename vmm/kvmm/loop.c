/* The device event loop: epoll over a fixed table of registrations, so a
 * callback can delete itself or others without use-after-free (a deleted slot
 * is marked free and its stale events are ignored by fd and slot). */
#include <errno.h>
#include <string.h>
#include <stdint.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include "common/common.h"
#include "vmm/kvmm/loop.h"

int kvmm_loop_init(struct kvmm_loop *l)
{
	for (size_t i = 0; i < KVMM_LOOP_MAX_FDS; i++)
		l->entries[i].fd = -1;
	l->epfd = epoll_create1(EPOLL_CLOEXEC);
	if (l->epfd < 0) {
		int e = errno;
		log_err("kvmm: epoll_create1: %s", strerror(e));
		return -e;
	}
	l->stop_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
	if (l->stop_fd < 0) {
		int e = errno;
		log_err("kvmm: eventfd: %s", strerror(e));
		close(l->epfd);
		return -e;
	}
	struct epoll_event ev = { .events = EPOLLIN, .data.u64 = UINT64_MAX };
	if (epoll_ctl(l->epfd, EPOLL_CTL_ADD, l->stop_fd, &ev) < 0) {
		int e = errno;
		log_err("kvmm: epoll_ctl: %s", strerror(e));
		close(l->stop_fd);
		close(l->epfd);
		return -e;
	}
	return 0;
}

void kvmm_loop_destroy(struct kvmm_loop *l)
{
	if (l->epfd >= 0)
		close(l->epfd);
	if (l->stop_fd >= 0)
		close(l->stop_fd);
	l->epfd = l->stop_fd = -1;
}

static struct kvmm_loop_entry *find(struct kvmm_loop *l, int fd)
{
	for (size_t i = 0; i < KVMM_LOOP_MAX_FDS; i++)
		if (l->entries[i].fd == fd)
			return &l->entries[i];
	return NULL;
}

int kvmm_loop_add(struct kvmm_loop *l, int fd, uint32_t events, kvmm_fd_fn fn, void *ctx, pthread_mutex_t *lock)
{
	if (fd < 0 || !fn)
		return -EINVAL;
	if (find(l, fd))
		return -EEXIST;
	struct kvmm_loop_entry *e = find(l, -1);
	if (!e) {
		log_err("kvmm: more than %d descriptors on the device loop", KVMM_LOOP_MAX_FDS);
		return -ENOSPC;
	}
	/* The slot index and the fd both travel in the event, so an event that
	 * was queued for a slot before it was freed and reused is recognised. */
	struct epoll_event ev = { .events = events,
				  .data.u64 = (uint64_t)(e - l->entries) << 32 | (uint32_t)fd };
	if (epoll_ctl(l->epfd, EPOLL_CTL_ADD, fd, &ev) < 0) {
		int err = errno;
		log_err("kvmm: watching descriptor %d: %s", fd, strerror(err));
		return -err;
	}
	*e = (struct kvmm_loop_entry){ .fd = fd, .fn = fn, .ctx = ctx, .lock = lock };
	return 0;
}

int kvmm_loop_mod(struct kvmm_loop *l, int fd, uint32_t events)
{
	struct kvmm_loop_entry *e = find(l, fd);
	if (!e)
		return -ENOENT;
	struct epoll_event ev = { .events = events,
				  .data.u64 = (uint64_t)(e - l->entries) << 32 | (uint32_t)fd };
	if (epoll_ctl(l->epfd, EPOLL_CTL_MOD, fd, &ev) < 0)
		return -errno;
	return 0;
}

int kvmm_loop_del(struct kvmm_loop *l, int fd)
{
	struct kvmm_loop_entry *e = find(l, fd);
	if (!e)
		return -ENOENT;
	epoll_ctl(l->epfd, EPOLL_CTL_DEL, fd, NULL);
	e->fd = -1;
	return 0;
}

int kvmm_loop_run(struct kvmm_loop *l)
{
	struct epoll_event evs[32];
	for (;;) {
		int n = epoll_wait(l->epfd, evs, 32, -1);
		if (n < 0) {
			if (errno == EINTR)
				continue;
			int e = errno;
			log_err("kvmm: epoll_wait: %s", strerror(e));
			return -e;
		}
		for (int i = 0; i < n; i++) {
			if (evs[i].data.u64 == UINT64_MAX) {
				uint64_t v;
				if (read(l->stop_fd, &v, sizeof v) < 0 && errno != EAGAIN)
					log_debug("kvmm: reading the stop eventfd: %s", strerror(errno));
				return 0;
			}
			size_t slot = (size_t)(evs[i].data.u64 >> 32);
			int fd = (int)(uint32_t)evs[i].data.u64;
			if (slot >= KVMM_LOOP_MAX_FDS)
				continue;
			struct kvmm_loop_entry e = l->entries[slot];
			if (e.fd != fd)
				continue; /* deleted (and maybe reused) since the event was queued */
			if (e.lock)
				pthread_mutex_lock(e.lock);
			e.fn(e.ctx, fd, evs[i].events);
			if (e.lock)
				pthread_mutex_unlock(e.lock);
		}
	}
}

void kvmm_loop_stop(struct kvmm_loop *l)
{
	uint64_t one = 1;
	if (write(l->stop_fd, &one, sizeof one) < 0)
		log_warn("kvmm: cannot stop the device loop: %s", strerror(errno));
}
