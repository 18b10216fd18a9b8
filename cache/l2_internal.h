/* L2 client internals, shared by the files of the L2 client and the L2
 * layer of the read chain (l2_layer.c, for l2_get_open); the rest of cache/
 * uses the L2 API in internal.h:
 *
 *   l2.c         the overview, the client's lifecycle, stats and flush
 *   l2_place.c   placement: which node holds which fragment, under which key
 *   l2_health.c  node health: marking down, backoff, probes, latency
 *   l2_pool.c    read connections: the per-node pool and the drainer
 *   l2_read.c    the read state machine (l2_get)
 *   l2_write.c   the libmemcached write workers, the background thread, repair
 *
 * Locks: a node's |mu| guards its write queue, its idle read connections,
 * its health and its counters; |bg_mu| the background queue; |drain_mu|
 * the drainer's list; the scratch pool's own |mu| its buffers.  No code takes
 * one of these while it holds another.
 */
#ifndef KINDLING_CACHE_L2_INTERNAL_H
#define KINDLING_CACHE_L2_INTERNAL_H

#include "internal.h"

#include <pthread.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>
#include <unistd.h>

#define L2_WORKERS_PER_NODE 4	/* concurrent background writes per node */
#define L2_IDLE_MAX 16		/* idle read connections kept per node */
#define L2_SCRATCH_KEPT 8	/* idle scratch buffers kept (l->scratch) */
#define L2_BACKOFF_MAX_MS 30000u
#define L2_SLOW_FACTOR 4	/* a node this many times slower than the median is left out of reads */
#define L2_SLOW_MIN_MS 2.0	/* ... if its average is above this too */
#define L2_SLOW_PROBE_EVERY 16	/* a left-out node is still asked on every this-many-th read */
#define L2_KEY_MAX 160
#define L2_PREFIX_MAX 64

struct l2_req;	 /* a queued write or delete (l2_write.c) */
struct bg_job;	 /* a job for the background thread (l2_write.c) */
struct l2_drain; /* a connection parked with the drainer (l2_pool.c) */
struct memcached_st;

struct l2_node;
struct l2_worker {
	struct l2_node *node;
	unsigned idx;
	pthread_t thread;
	bool started;
};

struct l2_node {
	struct l2 *l;
	char addr[64], host[64];
	unsigned port;
	uint64_t seed; /* rendezvous hash of addr */
	pthread_mutex_t mu;
	pthread_cond_t cv; /* CLOCK_MONOTONIC */
	struct l2_req *lo_head, *lo_tail;
	bool stop;
	/* read connections (l2_get) */
	struct sockaddr_storage sa;
	socklen_t sa_len;
	int idle_fd[L2_IDLE_MAX];
	unsigned idle_gen[L2_IDLE_MAX];
	unsigned n_idle;
	/* health */
	bool down, probing;
	unsigned gen; /* bumped when the node goes down: workers drop their old connections */
	unsigned backoff_ms;
	double retry_at;
	/* reads that left this node out as slow since it was last asked */
	unsigned slow_skips;
	/* counters (addr and up are filled in by l2_stats) */
	struct l2_node_stats st;
	struct l2_worker workers[L2_WORKERS_PER_NODE];
};

struct l2 {
	unsigned k, m, timeout_ms, down_backoff_ms;
	char prefix[L2_PREFIX_MAX + 1];
	struct l2_codec codec;
	size_t n_nodes;
	struct l2_node *nodes;

	/* the background thread (l2_write.c) */
	pthread_mutex_t bg_mu;
	pthread_cond_t bg_cv, bg_idle;
	struct bg_job *bg_head, *bg_tail;
	unsigned bg_len, bg_active;
	uint8_t *bg_buf; /* CHUNK_SIZE, the background thread's, for re-checks */

	/* the drainer: late replies of reads that already had k fragments */
	pthread_mutex_t drain_mu;
	pthread_cond_t drain_empty;
	struct l2_drain *drains;
	unsigned n_drains;
	int drain_ep, drain_wake;
	bool drain_stop, drain_started;
	pthread_t drain_thread;
	bool bg_stop, bg_started;
	pthread_t bg_thread;
	/* scratch for parity fragments (and a data fragment that runs past
	 * CHUNK_SIZE) of reads in flight, and for the late replies the
	 * drainer reads: (m + 1) * max fragment length each */
	struct buf_pool scratch;

	/* global counters, atomics */
	uint64_t gets, hits, misses, decodes, repairs_queued, repairs_done, puts, bg_dropped, crc_rereads;
};

#define COUNT(l, field) __atomic_fetch_add(&(l)->field, 1, __ATOMIC_RELAXED)

static inline void close_fd(int fd)
{
	if (fd >= 0)
		close(fd);
}

/* ---- placement (l2_place.c) ---------------------------------------------------- */

/* The rendezvous-hash seed of the node "host:port" |addr|. */
uint64_t l2_node_seed(const char *addr);

/* The k+m nodes of |name|, best first (rendezvous hashing): |order| (k+m
 * entries) gets, for each fragment index, the index in l->nodes of the node
 * that holds it.  Health plays no part. */
void l2_rank_nodes(const struct l2 *l, const char *name, unsigned *order);

/* The memcached key of fragment |index| of chunk |name|,
 * "<prefix><name>.<index>", into |<key, cap>|, with its length in |*out_len|
 * (may be NULL).  Returns 0 or -ENAMETOOLONG. */
int l2_make_key(const struct l2 *l, const char *name, unsigned index, char *key, size_t cap, size_t *out_len);

/* ---- node health (l2_health.c) ------------------------------------------------- */

/* Fold a reply that took |ms| into |nd|'s latency average.  The caller holds
 * nd->mu. */
void l2_node_latency(struct l2_node *nd, double ms);

/* Account a failed request to |nd|: a timeout if |timeout|, else an error;
 * |what| ("get", "set", ...) and |detail| go into the log.  A
 * connection-level failure (|fatal|) marks the node down for its backoff,
 * closes its idle read connections, bumps its generation and wakes worker
 * 0, which probes it afterwards.  Takes nd->mu. */
void l2_node_failed(struct l2_node *nd, bool timeout, bool fatal, const char *what, const char *detail);

/* Worker 0 of a down node: one probe, on its libmemcached handle |mc|, when
 * the backoff has expired.  An answer marks the node up; a failure doubles
 * the backoff (up to L2_BACKOFF_MAX_MS).  The caller set nd->probing; this
 * clears it.  Takes nd->mu. */
void l2_node_probe(struct l2_node *nd, struct memcached_st *mc);

/* ---- read connections and the drainer (l2_pool.c) ------------------------------ */

/* Take a pooled connection of |nd|, or return -1 to dial a new one.  Sets
 * |*gen| to the node's generation, to give back with the connection. */
int l2_conn_take(struct l2_node *nd, unsigned *gen);

/* Give a connection whose last reply ended cleanly back to its node's pool.
 * It is closed instead if the node went down after |gen|, is stopping, or
 * already keeps L2_IDLE_MAX. */
void l2_conn_put(struct l2_node *nd, int fd, unsigned gen);

/* Open a non-blocking TCP_NODELAY connection to |nd|.  Returns the fd, with
 * |*connecting| set while the connect is still in progress (wait for
 * POLLOUT), or -errno. */
int l2_conn_dial(struct l2_node *nd, bool *connecting);

/* Close |nd|'s idle read connections; the caller holds nd->mu (or every
 * thread is gone).  They may be from before the node failed. */
void l2_conn_drop_idle_locked(struct l2_node *nd);

/* Move whatever has arrived on |fd| into the reply |rp|: value bytes
 * straight into their window, the rest through a small stage.  |place| is
 * called when the reply needs a destination for its value.  Returns 1 when
 * the reply is complete (bytes past it make it L2R_PROTO: the stream is out
 * of step), 0 when nothing more has arrived, or -errno (-EPIPE for EOF). */
int l2_conn_pump(int fd, struct l2_reply *rp, void (*place)(void *ctx), void *ctx);

/* Hand a connection whose reply is still on its way to the drainer, which
 * owns |fd| from then on (and closes it if it cannot take it).  The request
 * for fragment |index| of chunk |name| under memcached key |key| went out
 * at |t0| on a connection of generation |gen|; |rp| is its reply so far,
 * with the header bytes in |hdr|.  The value bytes already received (into
 * the reader's buffer, which it is about to release) are copied so the
 * fragment can still be judged. */
void l2_conn_park(struct l2 *l, struct l2_node *nd, int fd, unsigned gen, unsigned index, double t0,
		  const struct l2_reply *rp, const char *key, const uint8_t *hdr, const char *name);

/* Set up the drainer's lock and epoll set (for l2_new; l->drain_ep and
 * l->drain_wake are -1 before).  Returns 0 or -errno (logged). */
int l2_drain_init(struct l2 *l);

/* The drainer thread, |arg| the struct l2: reads the late replies of parked
 * connections, judges them and recycles the connections, until
 * l->drain_stop. */
void *l2_drain_main(void *arg);

/* Stop and join the drainer (for l2_free, after the background thread,
 * which the drainer feeds), close the connections it still holds and its
 * epoll set.  Its lock and condition stay for l2_free to destroy. */
void l2_drain_stop(struct l2 *l);

/* ---- reads (l2_read.c) --------------------------------------------------------- */

/* What l2_get_open decrypts with: the chunk's |key|, the host's |salt|
 * (NULL: no key check, only the name is checked), and |plain|, CHUNK_SIZE
 * bytes for the plaintext. */
struct l2_open {
	const uint8_t *key;
	const uint8_t *salt;
	size_t salt_len;
	uint8_t *plain;
};

/* l2_get, and also decrypt: each data fragment is decrypted into
 * |op->plain| as soon as it is in (a rebuilt one after the decode), and
 * with a salt the key is checked too, so the L2 layer has nothing left to
 * do but serve the chunk.  |cipher| gets the ciphertext as l2_get's |out|
 * (CHUNK_SIZE bytes).  Returns as l2_get; -EBADMSG also when the chunk
 * matches its name but not the key (the caller should l2_report_bad() it);
 * on any failure |op->plain| is zeroed. */
int l2_get_open(struct l2 *l, const char *name, const struct l2_open *op, uint8_t *cipher, size_t *out_len);

/* l2_get or l2_get_open (|op| non-NULL) without the argument checks and the
 * count of gets; also the background re-check (|op| NULL), which waits for
 * every node's answer (|wait_all|) so that it sees every missing fragment.
 * Queues the repair of the missing and corrupt fragments of a chunk it
 * rebuilt and verified.  Returns as l2_get_open. */
int l2_read(struct l2 *l, const char *name, const struct l2_open *op, uint8_t *out, size_t *out_len, bool wait_all);

/* ---- writes and the background thread (l2_write.c) ----------------------------- */

/* A write worker thread of a node, |arg| its struct l2_worker: runs the
 * node's queued sets and deletes on its own libmemcached handle (failing
 * them without I/O while the node is down), and worker 0 probes the node
 * when it is down.  Returns once nd->stop is set and the queue is empty. */
void *l2_node_worker(void *arg);

/* The background thread, |arg| the struct l2: runs queued puts, repairs,
 * deletes and re-checks one at a time until l->bg_stop, then drops what is
 * still queued. */
void *l2_bg_main(void *arg);

/* Queue a rewrite of the fragments in |mask| of the verified chunk
 * |<buf, len>| (copied).  Never waits: a full queue drops it (counted). */
void l2_bg_enqueue_repair(struct l2 *l, const char *name, const uint8_t *buf, size_t len, uint32_t mask);

/* Queue a re-read of chunk |name| that waits for every node (l2_read with
 * |wait_all|), so that it finds and repairs every missing or corrupt
 * fragment.  Never waits, as above. */
void l2_bg_enqueue_recheck(struct l2 *l, const char *name);

#endif
