/* kvmm: the device event loop (loop.c).
 *
 * One epoll loop that runs every device-side callback of a VM on one thread:
 * ioeventfd notifications, vsock's unix sockets, the serial console's input.
 * A registration may name a mutex that the loop holds around its callback,
 * so a device's state is shared safely with the vCPU threads that take the
 * same mutex around their MMIO exits. */
#ifndef KINDLING_KVMM_LOOP_H
#define KINDLING_KVMM_LOOP_H

#include <pthread.h>
#include <stdint.h>

#define KVMM_LOOP_MAX_FDS 128

typedef void (*kvmm_fd_fn)(void *ctx, int fd, uint32_t events);

struct kvmm_loop_entry {
	int fd; /* -1 = free slot */
	kvmm_fd_fn fn;
	void *ctx;
	pthread_mutex_t *lock; /* may be NULL */
};

struct kvmm_loop {
	int epfd;
	int stop_fd; /* an eventfd: kvmm_loop_stop() makes kvmm_loop_run() return */
	struct kvmm_loop_entry entries[KVMM_LOOP_MAX_FDS];
};

/* Create the epoll set.  Returns 0 or -errno (logged). */
int kvmm_loop_init(struct kvmm_loop *l);

/* Close the loop's own descriptors (not the registered ones). */
void kvmm_loop_destroy(struct kvmm_loop *l);

/* Watch |fd| for |events| (EPOLLIN, EPOLLOUT, ...): fn(ctx, fd, events) runs on
 * the loop thread, under |lock| when it is not NULL.  Returns 0, -EEXIST if
 * |fd| is already watched, -ENOSPC past KVMM_LOOP_MAX_FDS, or -errno. */
int kvmm_loop_add(struct kvmm_loop *l, int fd, uint32_t events, kvmm_fd_fn fn, void *ctx, pthread_mutex_t *lock);

/* Change the events watched on |fd|.  Returns 0, -ENOENT or -errno. */
int kvmm_loop_mod(struct kvmm_loop *l, int fd, uint32_t events);

/* Stop watching |fd| (does not close it); safe from inside a callback,
 * including the callback of |fd| itself.  Returns 0 or -ENOENT. */
int kvmm_loop_del(struct kvmm_loop *l, int fd);

/* Dispatch events until kvmm_loop_stop().  Returns 0, or -errno if epoll
 * itself fails. */
int kvmm_loop_run(struct kvmm_loop *l);

/* Make kvmm_loop_run() return after its current callback; any thread. */
void kvmm_loop_stop(struct kvmm_loop *l);

#endif
