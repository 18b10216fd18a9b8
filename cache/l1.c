/* L1: the per-host disk cache.
 *
 * One file per chunk, <dir>/<name>, holding the ciphertext (encrypted at
 * rest) behind an 8 KiB header:
 *
 *   0     magic "KNDLL1\0\0", u32 version (1), u32 chunk length (LE)
 *   16    name (32 bytes, binary SHA-256 of the ciphertext)
 *   48    key check: SHA-256("kindling-l1-key" || key), so a read with a
 *         different key is a miss, not garbage
 *   80    table MAC: HMAC-SHA-256(chunk key, bytes 0..80 || the block table),
 *         checked on the first read (which brings the key); the start-up
 *         scan checks the structure only
 *   4096  block table: SHA-256 of each 4 KiB block of the ciphertext
 *   8192  the ciphertext
 *
 * The block table is computed from a chunk_whole, whose ciphertext was
 * checked against its name (chunk_whole_make) and is immutable, so it is as
 * trustworthy as the name.  A read of any range hashes only the 4 KiB blocks it touches and
 * compares them with the table before decrypting just those blocks
 * (AES-256-CTR seeks: counter = offset / 16).  A flipped bit anywhere is
 * found before a byte is returned; the entry is then dropped and the read
 * goes down to L2/L3, which refills it.
 *
 * Files are written under ".tmp-<name>.<n>" and renamed into place, so a
 * reader never sees half a file.  There is no fsync: L1 is soft state and a
 * file torn by a crash fails its header check at start or a block check on
 * read, and is refetched.  At cache_new the directory is scanned: temporary
 * files are removed, every header is checked, and the index is rebuilt
 * (oldest first by mtime).  One process uses a directory at a time (flock
 * on <dir>/.lock).
 *
 * Eviction is a segmented LRU (the 2Q/SLRU family): new entries go into a
 * probationary segment; a hit that is not correlated with the previous one
 * (some other chunk was read in between, so a sequential pass over one
 * chunk's 4 KiB blocks counts once) promotes an entry into the protected
 * segment, capped at 80% of the size bound; its overflow falls back to the
 * head of probation.  Victims come from the tail of probation first.  A
 * one-pass scan therefore only churns probation and the hot set survives.
 *
 * Inserts are off the reader's critical path: l1_insert only queues the
 * verified chunk (bounded, L1_QUEUE_MAX; a full queue drops the insert and
 * counts it) and a background thread computes the block table and writes
 * the file.  While queued, the chunk is served from its verified plaintext
 * (a "pending" entry, found by l1_try like a file); the thread publishes the
 * index entry and drops the pending one under the same lock, so the chunk
 * is never in neither.  Accesses to a pending entry are recorded, so a
 * promotion earned while queued is kept.  l1_close drains the queue.  See
 * flight.c for why this keeps single flight exact.
 *
 * Hot entries keep their file open and their block table in memory (an LRU
 * of at most L1_MAX_FDS), so a 4 KiB hit is one pread, one 4 KiB hash and
 * one 4 KiB decrypt.
 */
#include "cache.h"
#include "internal.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>

#define L1_MAGIC "KNDLL1\0\0"
#define L1_VERSION 1u
#define L1_HDR 8192u
#define L1_TABLE_OFF 4096u
#define L1_SIGNED_LEN 80u
#define L1_MAX_FDS 256u
#define L1_PROTECTED_PCT 80u
#define L1_QUEUE_MAX 32u	/* chunks waiting to be written (each pins ~1 MiB) */

struct l1_entry {
	char name[CHUNK_NAME_HEX_LEN + 1];
	uint8_t keycheck[SHA256_LEN];
	uint32_t len;
	uint64_t disk_bytes;
	struct l1_entry *hnext;
	struct l1_entry *prev, *next;	/* in probation or protected, MRU at head */
	struct l1_entry *fprev, *fnext;	/* open-fd LRU */
	bool prot, dead;
	uint64_t last_seq;
	int refs;			/* readers using fd/table; the index holds none */
	int fd;				/* -1 when closed */
	uint8_t (*table)[SHA256_LEN];	/* with fd */
	double mtime;			/* start-up ordering only */
};

struct seg {
	struct l1_entry *head, *tail;
	uint64_t bytes, count;
};

/* A verified chunk waiting to be written (see the top). */
struct l1_pending {
	struct l1_pending *next;	/* queue order */
	struct chunk_whole *w;		/* a reference */
	uint8_t keycheck[SHA256_LEN];
	uint64_t last_seq;		/* accesses while queued, as touch() */
	bool prot;
	bool busy;			/* being written */
	bool cancelled;			/* evicted while queued: not served, not published */
};

struct l1 {
	struct cache *cache;
	char *dir;
	int dir_fd, lock_fd;
	uint64_t max_bytes, prot_max;
	pthread_mutex_t lock;
	struct l1_entry **buckets;
	size_t mask;
	struct seg prob, prot;
	struct l1_entry *fhead, *ftail;
	unsigned n_fds;
	uint64_t seq, tmp_counter;
	/* the insert queue, under lock */
	struct l1_pending *q_head, *q_tail;
	unsigned q_len;
	bool q_stop, q_started;
	uint64_t q_dropped;
	pthread_cond_t q_cv;		/* work for the writer */
	pthread_cond_t q_idle;		/* a job finished */
	pthread_t q_thread;
};

/* ---- index ------------------------------------------------------------------ */

static size_t name_hash(const struct l1 *l, const char *name)
{
	uint64_t h = 1469598103934665603ull;
	for (int i = 0; i < 16; i++)
		h = (h ^ (uint8_t)name[i]) * 1099511628211ull;
	return (size_t)(h & l->mask);
}

static struct l1_entry **slot_of(struct l1 *l, const char *name)
{
	struct l1_entry **p = &l->buckets[name_hash(l, name)];
	while (*p && strcmp((*p)->name, name) != 0)
		p = &(*p)->hnext;
	return p;
}

static void seg_unlink(struct seg *s, struct l1_entry *e)
{
	if (e->prev)
		e->prev->next = e->next;
	else
		s->head = e->next;
	if (e->next)
		e->next->prev = e->prev;
	else
		s->tail = e->prev;
	e->prev = e->next = NULL;
	s->bytes -= e->disk_bytes;
	s->count--;
}

static void seg_push(struct seg *s, struct l1_entry *e)
{
	e->prev = NULL;
	e->next = s->head;
	if (s->head)
		s->head->prev = e;
	s->head = e;
	if (!s->tail)
		s->tail = e;
	s->bytes += e->disk_bytes;
	s->count++;
}

static void fd_unlink(struct l1 *l, struct l1_entry *e)
{
	if (e->fprev)
		e->fprev->fnext = e->fnext;
	else
		l->fhead = e->fnext;
	if (e->fnext)
		e->fnext->fprev = e->fprev;
	else
		l->ftail = e->fprev;
	e->fprev = e->fnext = NULL;
}

static void fd_push(struct l1 *l, struct l1_entry *e)
{
	e->fprev = NULL;
	e->fnext = l->fhead;
	if (l->fhead)
		l->fhead->fprev = e;
	l->fhead = e;
	if (!l->ftail)
		l->ftail = e;
}

static void entry_close_fd(struct l1 *l, struct l1_entry *e)
{
	if (e->fd < 0)
		return;
	fd_unlink(l, e);
	close(e->fd);
	free(e->table);
	e->fd = -1;
	e->table = NULL;
	l->n_fds--;
}

/* Close the least recently used idle fds beyond the limit; lock held. */
static void fd_trim(struct l1 *l)
{
	for (struct l1_entry *e = l->ftail, *p; e && l->n_fds > L1_MAX_FDS; e = p) {
		p = e->fprev;
		if (e->refs == 0)
			entry_close_fd(l, e);
	}
}

static void entry_free(struct l1 *l, struct l1_entry *e)
{
	entry_close_fd(l, e);
	free(e);
}

/* Take |e| out of the index and, if |unlink_file|, delete its file; the
 * entry itself goes when its last reader lets go.  Lock held. */
static void entry_remove(struct l1 *l, struct l1_entry *e, bool unlink_file)
{
	struct l1_entry **slot = slot_of(l, e->name);
	if (*slot == e)
		*slot = e->hnext;
	seg_unlink(e->prot ? &l->prot : &l->prob, e);
	if (unlink_file && unlinkat(l->dir_fd, e->name, 0) < 0 && errno != ENOENT)
		log_warn("L1: cannot remove %s/%s: %s", l->dir, e->name, strerror(errno));
	e->dead = true;
	if (e->refs == 0)
		entry_free(l, e);
}

static void entry_unref(struct l1 *l, struct l1_entry *e)
{
	pthread_mutex_lock(&l->lock);
	if (--e->refs == 0 && e->dead)
		entry_free(l, e);
	pthread_mutex_unlock(&l->lock);
}

/* Make room for |need| more bytes; lock held. */
static void make_room(struct l1 *l, uint64_t need)
{
	while (l->prob.bytes + l->prot.bytes + need > l->max_bytes) {
		struct l1_entry *v = l->prob.tail ? l->prob.tail : l->prot.tail;
		if (!v)
			break;
		entry_remove(l, v, true);
	}
}

/* Record an access; lock held.  See the policy at the top. */
static void touch(struct l1 *l, struct l1_entry *e)
{
	uint64_t seq = ++l->seq;
	if (e->prot) {
		seg_unlink(&l->prot, e);
		seg_push(&l->prot, e);
	} else if (e->last_seq + 1 < seq) {
		seg_unlink(&l->prob, e);
		e->prot = true;
		seg_push(&l->prot, e);
		while (l->prot.bytes > l->prot_max && l->prot.tail != e) {
			struct l1_entry *d = l->prot.tail;
			seg_unlink(&l->prot, d);
			d->prot = false;
			seg_push(&l->prob, d);
		}
	} else {
		seg_unlink(&l->prob, e);
		seg_push(&l->prob, e);
	}
	e->last_seq = seq;
}

/* ---- the file format ------------------------------------------------------------ */

static void key_check(const uint8_t key[CHUNK_KEY_LEN], uint8_t out[SHA256_LEN])
{
	uint8_t b[15 + CHUNK_KEY_LEN];
	memcpy(b, "kindling-l1-key", 15);
	memcpy(b + 15, key, CHUNK_KEY_LEN);
	sha256_buf(b, sizeof(b), out);
}

static void put_le32(uint8_t *p, uint32_t v)
{
	for (int i = 0; i < 4; i++)
		p[i] = (uint8_t)(v >> (8 * i));
}

static uint32_t get_le32(const uint8_t *p)
{
	return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

static size_t n_blocks(uint32_t len)
{
	return (len + CACHE_BLOCK - 1) / CACHE_BLOCK;
}

/* The table MAC: HMAC-SHA-256 keyed with the chunk key over bytes 0..80 and
 * the block table.  Only a holder of the key can make a table that
 * verifies, so a file planted in the directory is refused too, not only
 * one that rotted.  With |key| NULL (the start-up scan has no keys) this is
 * skipped; the first read with a key checks it. */
static void table_mac(const uint8_t *key, const uint8_t *hdr, uint32_t len, uint8_t out[SHA256_LEN])
{
	uint8_t *tmp = malloc(L1_SIGNED_LEN + n_blocks(len) * SHA256_LEN);
	unsigned out_len = 0;
	if (tmp) {
		memcpy(tmp, hdr, L1_SIGNED_LEN);
		memcpy(tmp + L1_SIGNED_LEN, hdr + L1_TABLE_OFF, n_blocks(len) * SHA256_LEN);
		if (HMAC(EVP_sha256(), key, CHUNK_KEY_LEN, tmp, L1_SIGNED_LEN + n_blocks(len) * SHA256_LEN, out,
			 &out_len) && out_len == SHA256_LEN) {
			free(tmp);
			return;
		}
	}
	free(tmp);
	memset(out, 0xff, SHA256_LEN); /* never matches a real MAC by chance */
}

/* Check a header read from file |fname|; fill |len| and |keycheck|, and
 * |table| if non-NULL.  With |key|, also the table MAC.  Returns 0 or
 * -EBADMSG. */
static int header_check(const uint8_t *hdr, const char *fname, const uint8_t *key, uint32_t *len,
			uint8_t keycheck[SHA256_LEN], uint8_t (*table)[SHA256_LEN])
{
	if (memcmp(hdr, L1_MAGIC, 8) != 0 || get_le32(hdr + 8) != L1_VERSION)
		return -EBADMSG;
	uint32_t n = get_le32(hdr + 12);
	if (n == 0 || n > CHUNK_SIZE)
		return -EBADMSG;
	char hex[SHA256_HEX_LEN + 1];
	hex_encode(hdr + 16, SHA256_LEN, hex);
	if (strcmp(hex, fname) != 0)
		return -EBADMSG;
	uint8_t d[SHA256_LEN];
	if (key) {
		table_mac(key, hdr, n, d);
		if (CRYPTO_memcmp(d, hdr + 80, SHA256_LEN) != 0)
			return -EBADMSG;
	}
	*len = n;
	memcpy(keycheck, hdr + 48, SHA256_LEN);
	if (table)
		memcpy(table, hdr + L1_TABLE_OFF, n_blocks(n) * SHA256_LEN);
	return 0;
}

static ssize_t pread_full(int fd, void *buf, size_t len, off_t off)
{
	size_t got = 0;
	while (got < len) {
		ssize_t n = pread(fd, (uint8_t *)buf + got, len - got, off + (off_t)got);
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0)
			return -errno;
		if (n == 0)
			break;
		got += (size_t)n;
	}
	return (ssize_t)got;
}

static ssize_t l1_write_full(int fd, const void *buf, size_t len)
{
	size_t done = 0;
	while (done < len) {
		ssize_t n = write(fd, (const uint8_t *)buf + done, len - done);
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0)
			return -errno;
		done += (size_t)n;
	}
	return (ssize_t)done;
}

/* Open |e|'s file and load its checked table (no lock held).  Returns the
 * fd and the table, or -EBADMSG / -errno. */
static int entry_load(struct l1 *l, const struct l1_entry *e, const uint8_t *key, int *out_fd, uint8_t (**out_table)[SHA256_LEN])
{
	int fd = openat(l->dir_fd, e->name, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return -errno;
	uint8_t *hdr = malloc(L1_HDR);
	uint8_t(*table)[SHA256_LEN] = malloc(CACHE_BLOCKS_PER_CHUNK * SHA256_LEN);
	int r = hdr && table ? 0 : -ENOMEM;
	uint32_t len = 0;
	uint8_t kc[SHA256_LEN];
	struct stat st;
	if (r == 0 && (fstat(fd, &st) < 0 || pread_full(fd, hdr, L1_HDR, 0) != (ssize_t)L1_HDR))
		r = -EBADMSG;
	if (r == 0 && (header_check(hdr, e->name, key, &len, kc, table) < 0 || len != e->len ||
		       (uint64_t)st.st_size != L1_HDR + (uint64_t)len || memcmp(kc, e->keycheck, SHA256_LEN) != 0))
		r = -EBADMSG;
	free(hdr);
	if (r < 0) {
		free(table);
		close(fd);
		return r;
	}
	*out_fd = fd;
	*out_table = table;
	return 0;
}

/* ---- reads ------------------------------------------------------------------------ */

/* Read, verify and decrypt blocks [b, b + n) of |e| into |dst|.  Returns 0,
 * -EBADMSG (a block does not match its digest) or -errno. */
static int read_blocks(struct l1_entry *e, const uint8_t *key, size_t b, size_t n, uint8_t *dst)
{
	uint64_t off = (uint64_t)b * CACHE_BLOCK;
	size_t want = n * CACHE_BLOCK;
	if (off + want > e->len)
		want = e->len - off;
	ssize_t got = pread_full(e->fd, dst, want, (off_t)(L1_HDR + off));
	if (got < 0)
		return (int)got;
	if ((size_t)got != want)
		return -EBADMSG; /* truncated under us */
	for (size_t i = 0; i < n; i++) {
		size_t bl = want - i * CACHE_BLOCK < CACHE_BLOCK ? want - i * CACHE_BLOCK : CACHE_BLOCK;
		uint8_t d[SHA256_LEN];
		sha256_buf(dst + i * CACHE_BLOCK, bl, d);
		if (memcmp(d, e->table[b + i], SHA256_LEN) != 0)
			return -EBADMSG;
	}
	return chunk_ctr_at(key, off, dst, want, dst);
}

/* The queued insert of |name| for key check |kc|, or NULL; lock held. */
static struct l1_pending *pending_find(struct l1 *l, const char *name, const uint8_t kc[SHA256_LEN])
{
	for (struct l1_pending *p = l->q_head; p; p = p->next)
		if (!p->cancelled && strcmp(p->w->name, name) == 0 && memcmp(p->keycheck, kc, SHA256_LEN) == 0)
			return p;
	return NULL;
}

/* Serve |rq| from L1 if it is there.  Returns 0 (served), -ENOENT (not
 * there, or there for another key), -EBADMSG (there but corrupt: dropped). */
static int l1_try(struct l1 *l, struct chunk_req *rq)
{
	struct cache *c = l->cache;
	uint8_t kc[SHA256_LEN];
	key_check(rq->key, kc);
	pthread_mutex_lock(&l->lock);
	struct l1_entry *e = *slot_of(l, rq->name);
	if (!e || memcmp(e->keycheck, kc, SHA256_LEN) != 0) {
		struct l1_pending *p = pending_find(l, rq->name, kc);
		struct chunk_whole *w = p ? p->w : NULL;
		if (p) {
			chunk_whole_ref(w);
			uint64_t seq = ++l->seq;
			if (p->last_seq + 1 < seq)
				p->prot = true;
			p->last_seq = seq;
		}
		pthread_mutex_unlock(&l->lock);
		if (!w)
			return -ENOENT;
		chunk_whole_copy(w, rq); /* verified when it was made */
		CACHE_COUNT(c, CACHE_TIER_L1, hits, 1);
		CACHE_COUNT(c, CACHE_TIER_L1, bytes, rq->len);
		rq->tier = CACHE_TIER_L1;
		if (rq->whole)
			chunk_whole_unref(w);
		else
			rq->whole = w;
		return 0;
	}
	e->refs++;
	touch(l, e);
	bool load = e->fd < 0;
	if (!load) {
		fd_unlink(l, e);
		fd_push(l, e);
	}
	pthread_mutex_unlock(&l->lock);

	int r = 0;
	if (load) {
		int fd = -1;
		uint8_t(*table)[SHA256_LEN] = NULL;
		r = entry_load(l, e, rq->key, &fd, &table);
		pthread_mutex_lock(&l->lock);
		if (r == 0 && e->fd < 0) {
			e->fd = fd;
			e->table = table;
			fd_push(l, e);
			l->n_fds++;
			fd_trim(l);
		} else if (r == 0) {
			close(fd);
			free(table);
		}
		pthread_mutex_unlock(&l->lock);
	}

	if (r == 0 && rq->buf && rq->len) {
		uint32_t end = (uint32_t)(rq->off + rq->len);
		uint32_t valid_end = end < e->len ? end : e->len;
		uint8_t tmp[CACHE_BLOCK];
		size_t b = rq->off / CACHE_BLOCK;
		while (r == 0 && (uint64_t)b * CACHE_BLOCK < valid_end) {
			uint32_t bs = (uint32_t)(b * CACHE_BLOCK);
			if (bs >= rq->off && bs + CACHE_BLOCK <= end && bs + CACHE_BLOCK <= e->len) {
				/* a run of whole blocks: straight into the caller's buffer */
				size_t n = 1;
				while ((b + n + 1) * CACHE_BLOCK <= end && (b + n + 1) * CACHE_BLOCK <= e->len)
					n++;
				r = read_blocks(e, rq->key, b, n, rq->buf + (bs - rq->off));
				b += n;
			} else {
				if ((r = read_blocks(e, rq->key, b, 1, tmp)) < 0)
					break;
				uint32_t from = bs < rq->off ? rq->off : bs;
				uint32_t to = bs + CACHE_BLOCK < valid_end ? bs + CACHE_BLOCK : valid_end;
				memcpy(rq->buf + (from - rq->off), tmp + (from - bs), to - from);
				b++;
			}
		}
		if (r == 0 && valid_end < end)
			memset(rq->buf + (valid_end > rq->off ? valid_end - rq->off : 0), 0,
			       end - (valid_end > rq->off ? valid_end : rq->off));
	}

	if (r < 0) {
		CACHE_COUNT(c, CACHE_TIER_L1, corrupt, 1);
		log_warn("L1: %s/%s failed its check (%s); dropping it and reading from the next tier "
			 "(a disk going bad, or something writing into %s?)",
			 l->dir, e->name, r == -EBADMSG ? "digest mismatch" : strerror(-r), l->dir);
		pthread_mutex_lock(&l->lock);
		if (!e->dead)
			entry_remove(l, e, true);
		pthread_mutex_unlock(&l->lock);
		entry_unref(l, e);
		return -EBADMSG;
	}
	entry_unref(l, e);
	CACHE_COUNT(c, CACHE_TIER_L1, hits, 1);
	CACHE_COUNT(c, CACHE_TIER_L1, bytes, rq->len);
	rq->tier = CACHE_TIER_L1;
	return 0;
}

static int l1_lookup_hook(void *arg, struct chunk_req *rq)
{
	return l1_try(arg, rq);
}

/* Write |p|'s chunk into L1 unless it is there already: the block table
 * (from the verified ciphertext), the file under a temporary name, then the
 * rename and the index entry, which replaces the pending entry under the
 * lock.  Runs on the writer thread; takes |p| off the queue in every case. */
static void l1_write(struct l1 *l, struct l1_pending *p)
{
	const struct chunk_whole *w = p->w;
	const uint8_t *kc = p->keycheck;
	pthread_mutex_lock(&l->lock);
	uint64_t tmpno = ++l->tmp_counter;
	pthread_mutex_unlock(&l->lock);
	uint64_t need = L1_HDR + (uint64_t)w->len;

	uint8_t *hdr = calloc(1, L1_HDR);
	char tmp[96];
	snprintf(tmp, sizeof(tmp), ".tmp-%s.%llu", w->name, (unsigned long long)tmpno);
	int fd = -1, r = hdr ? 0 : -ENOMEM;
	if (r == 0) {
		memcpy(hdr, L1_MAGIC, 8);
		put_le32(hdr + 8, L1_VERSION);
		put_le32(hdr + 12, (uint32_t)w->len);
		hex_decode(w->name, hdr + 16, SHA256_LEN);
		memcpy(hdr + 48, kc, SHA256_LEN);
		uint8_t(*table)[SHA256_LEN] = (uint8_t(*)[SHA256_LEN])(hdr + L1_TABLE_OFF);
		for (size_t b = 0, o = 0; o < w->len; b++, o += CACHE_BLOCK)
			sha256_buf(w->cipher + o, w->len - o < CACHE_BLOCK ? w->len - o : CACHE_BLOCK, table[b]);
		table_mac(w->key, hdr, (uint32_t)w->len, hdr + 80);
		fd = openat(l->dir_fd, tmp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
		r = fd < 0 ? -errno : 0;
	}
	if (r == 0) {
		ssize_t x = l1_write_full(fd, hdr, L1_HDR);
		if (x >= 0)
			x = l1_write_full(fd, w->cipher, w->len);
		if (x < 0)
			r = (int)x;
	}
	if (fd >= 0 && close(fd) < 0 && r == 0)
		r = -errno;
	free(hdr);
	if (r < 0) {
		CACHE_COUNT(l->cache, CACHE_TIER_L1, errors, 1);
		log_warn("L1: cannot write chunk %s into %s: %s (is the disk full? L1 is skipped for it)", w->name,
			 l->dir, strerror(-r));
		unlinkat(l->dir_fd, tmp, 0);
	}

	struct l1_entry *e = r == 0 ? calloc(1, sizeof(*e)) : NULL;
	pthread_mutex_lock(&l->lock);
	struct l1_entry *old = *slot_of(l, w->name);
	bool publish = e && !p->cancelled && !(old && memcmp(old->keycheck, kc, SHA256_LEN) == 0);
	if (publish) {
		if (old)
			entry_remove(l, old, false); /* replaced by the rename below */
		make_room(l, need);
		if (renameat(l->dir_fd, tmp, l->dir_fd, w->name) < 0) {
			log_warn("L1: cannot rename %s in %s: %s", tmp, l->dir, strerror(errno));
			publish = false;
		}
	}
	if (publish) {
		memcpy(e->name, w->name, sizeof(e->name));
		memcpy(e->keycheck, kc, SHA256_LEN);
		e->len = (uint32_t)w->len;
		e->disk_bytes = need;
		e->fd = -1;
		struct l1_entry **slot = slot_of(l, e->name);
		e->hnext = *slot;
		*slot = e;
		seg_push(&l->prob, e);
		/* the accesses it had while queued */
		if (p->prot) {
			e->last_seq = 0;
			touch(l, e);
		} else {
			e->last_seq = p->last_seq;
		}
		e = NULL;
	}
	/* off the queue: from here on readers find the file (or nothing) */
	for (struct l1_pending **pp = &l->q_head; *pp; pp = &(*pp)->next)
		if (*pp == p) {
			*pp = p->next;
			break;
		}
	l->q_tail = NULL;
	for (struct l1_pending *q = l->q_head; q; q = q->next)
		l->q_tail = q;
	l->q_len--;
	pthread_cond_broadcast(&l->q_idle);
	pthread_mutex_unlock(&l->lock);
	if (r == 0 && !publish)
		unlinkat(l->dir_fd, tmp, 0);
	free(e);
	chunk_whole_unref(p->w);
	free(p);
}

static void *l1_writer(void *arg)
{
	struct l1 *l = arg;
	pthread_mutex_lock(&l->lock);
	for (;;) {
		struct l1_pending *p = l->q_head;
		while (p && p->busy)
			p = p->next;
		if (!p) {
			if (l->q_stop)
				break; /* stopping drains the queue first */
			pthread_cond_wait(&l->q_cv, &l->lock);
			continue;
		}
		p->busy = true;
		pthread_mutex_unlock(&l->lock);
		l1_write(l, p);
		pthread_mutex_lock(&l->lock);
	}
	pthread_mutex_unlock(&l->lock);
	return NULL;
}

/* Queue |w| for writing into L1 unless it is there or queued already; never
 * blocks on I/O.  A full queue drops the insert and counts it. */
static void l1_insert(struct l1 *l, struct chunk_whole *w)
{
	uint8_t kc[SHA256_LEN];
	key_check(w->key, kc);
	if (L1_HDR + (uint64_t)w->len > l->max_bytes)
		return;
	struct l1_pending *p = calloc(1, sizeof(*p));
	pthread_mutex_lock(&l->lock);
	struct l1_entry *old = *slot_of(l, w->name);
	bool have = (old && memcmp(old->keycheck, kc, SHA256_LEN) == 0) || pending_find(l, w->name, kc);
	bool full = !have && (l->q_len >= L1_QUEUE_MAX || !l->q_started || !p);
	if (!have && !full) {
		chunk_whole_ref(w);
		p->w = w;
		memcpy(p->keycheck, kc, SHA256_LEN);
		p->last_seq = ++l->seq; /* as an insert: the next correlated access does not promote */
		if (l->q_tail)
			l->q_tail->next = p;
		else
			l->q_head = p;
		l->q_tail = p;
		l->q_len++;
		pthread_cond_signal(&l->q_cv);
		p = NULL;
	} else if (full) {
		l->q_dropped++;
	}
	pthread_mutex_unlock(&l->lock);
	if (full)
		log_debug("L1: insert queue full, not caching chunk %s", w->name);
	free(p);
}

static void l1_insert_hook(void *arg, struct chunk_req *rq, struct chunk_whole *w)
{
	(void)rq;
	l1_insert(arg, w);
}

void l1_layer_wait(void *state)
{
	struct l1 *l = state;
	pthread_mutex_lock(&l->lock);
	while (l->q_len > 0)
		pthread_cond_wait(&l->q_idle, &l->lock);
	pthread_mutex_unlock(&l->lock);
}

static int l1_read(struct cache_layer *layer, struct chunk_req *rq)
{
	struct l1 *l = layer->state;
	int r = l1_try(l, rq);
	if (r == 0)
		return 0;
	CACHE_COUNT(l->cache, CACHE_TIER_L1, misses, 1);
	rq->upper_lookup = l1_lookup_hook;
	rq->upper_insert = l1_insert_hook;
	rq->upper_arg = l;
	r = cache_layer_next(layer, rq);
	rq->upper_lookup = NULL;
	rq->upper_insert = NULL;
	if (r == 0 && rq->whole)
		l1_insert(l, rq->whole); /* a no-op if the flight leader did it */
	return r;
}

static void l1_evict(struct cache_layer *layer, const char *name)
{
	struct l1 *l = layer->state;
	pthread_mutex_lock(&l->lock);
	struct l1_entry *e = *slot_of(l, name);
	if (e)
		entry_remove(l, e, true);
	for (struct l1_pending *p = l->q_head; p; p = p->next)
		if (strcmp(p->w->name, name) == 0)
			p->cancelled = true;
	pthread_mutex_unlock(&l->lock);
}

static void l1_close(struct cache_layer *layer)
{
	struct l1 *l = layer->state;
	pthread_mutex_lock(&l->lock);
	l->q_stop = true;
	pthread_cond_broadcast(&l->q_cv);
	pthread_mutex_unlock(&l->lock);
	if (l->q_started)
		pthread_join(l->q_thread, NULL); /* writes what is queued, then exits */
	pthread_cond_destroy(&l->q_cv);
	pthread_cond_destroy(&l->q_idle);
	for (struct seg *s = &l->prob;; s = &l->prot) {
		for (struct l1_entry *e = s->head, *n; e; e = n) {
			n = e->next;
			entry_free(l, e);
		}
		if (s == &l->prot)
			break;
	}
	free(l->buckets);
	close(l->dir_fd);
	if (l->lock_fd >= 0)
		close(l->lock_fd); /* releases the flock */
	pthread_mutex_destroy(&l->lock);
	free(l->dir);
	free(l);
}

static const struct cache_layer_ops l1_ops = {
	.name = "l1",
	.read = l1_read,
	.evict = l1_evict,
	.close = l1_close,
};

/* ---- start-up scan ------------------------------------------------------------------ */

static int cmp_mtime(const void *a, const void *b)
{
	const struct l1_entry *x = *(struct l1_entry *const *)a, *y = *(struct l1_entry *const *)b;
	return x->mtime < y->mtime ? -1 : x->mtime > y->mtime;
}

static int l1_scan(struct l1 *l)
{
	int dfd = dup(l->dir_fd);
	DIR *d = dfd >= 0 ? fdopendir(dfd) : NULL;
	if (!d) {
		if (dfd >= 0)
			close(dfd);
		return -errno;
	}
	struct l1_entry **found = NULL;
	size_t n = 0, cap = 0, dropped = 0;
	uint8_t *hdr = malloc(L1_HDR);
	int r = hdr ? 0 : -ENOMEM;
	struct dirent *de;
	while (r == 0 && (de = readdir(d))) {
		if (strncmp(de->d_name, ".tmp-", 5) == 0) {
			unlinkat(l->dir_fd, de->d_name, 0); /* a write cut short by a crash */
			continue;
		}
		if (!is_sha256_hex(de->d_name))
			continue; /* ".", "..", ".lock" */
		struct l1_entry *e = calloc(1, sizeof(*e));
		if (!e) {
			r = -ENOMEM;
			break;
		}
		int fd = openat(l->dir_fd, de->d_name, O_RDONLY | O_CLOEXEC);
		struct stat st;
		bool ok = fd >= 0 && fstat(fd, &st) == 0 && pread_full(fd, hdr, L1_HDR, 0) == (ssize_t)L1_HDR &&
			  header_check(hdr, de->d_name, NULL, &e->len, e->keycheck, NULL) == 0 &&
			  (uint64_t)st.st_size == L1_HDR + (uint64_t)e->len;
		if (fd >= 0)
			close(fd);
		if (!ok) {
			log_warn("L1: dropping %s/%s: not a valid cache file (torn by a crash, or foreign)", l->dir,
				 de->d_name);
			unlinkat(l->dir_fd, de->d_name, 0);
			dropped++;
			free(e);
			continue;
		}
		memcpy(e->name, de->d_name, CHUNK_NAME_HEX_LEN + 1);
		e->disk_bytes = L1_HDR + (uint64_t)e->len;
		e->fd = -1;
		e->mtime = (double)st.st_mtim.tv_sec + (double)st.st_mtim.tv_nsec * 1e-9;
		if (n == cap) {
			cap = cap ? cap * 2 : 256;
			struct l1_entry **a = realloc(found, cap * sizeof(*a));
			if (!a) {
				free(e);
				r = -ENOMEM;
				break;
			}
			found = a;
		}
		found[n++] = e;
	}
	closedir(d);
	free(hdr);
	if (n)
		qsort(found, n, sizeof(*found), cmp_mtime);
	for (size_t i = 0; i < n; i++) {
		if (r < 0) {
			free(found[i]);
			continue;
		}
		struct l1_entry **slot = slot_of(l, found[i]->name);
		found[i]->hnext = *slot;
		*slot = found[i];
		seg_push(&l->prob, found[i]); /* newest ends at the head */
	}
	free(found);
	if (r == 0) {
		make_room(l, 0); /* the bound may have shrunk since the last run */
		log_info("L1: %s: %llu entries (%llu MiB) kept from an earlier run, %zu invalid dropped", l->dir,
			 (unsigned long long)l->prob.count, (unsigned long long)(l->prob.bytes >> 20), dropped);
	}
	return r;
}

int l1_layer_new(struct cache *c, const char *dir, uint64_t max_bytes, const struct cache_layer_ops **ops,
		 void **state)
{
	int r = mkdir_p(dir, 0700);
	if (r < 0) {
		log_err("L1: cannot create directory %s: %s", dir, strerror(-r));
		return r;
	}
	struct l1 *l = calloc(1, sizeof(*l));
	if (!l)
		return -ENOMEM;
	l->cache = c;
	l->lock_fd = -1;
	l->max_bytes = max_bytes;
	l->prot_max = max_bytes / 100 * L1_PROTECTED_PCT;
	pthread_mutex_init(&l->lock, NULL);
	pthread_cond_init(&l->q_cv, NULL);
	pthread_cond_init(&l->q_idle, NULL);
	size_t nb = 1024;
	while (nb < max_bytes / CHUNK_SIZE && nb < (1u << 24))
		nb <<= 1;
	l->mask = nb - 1;
	l->dir = strdup(dir);
	l->buckets = calloc(nb, sizeof(*l->buckets));
	l->dir_fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (!l->dir || !l->buckets || l->dir_fd < 0) {
		r = l->dir_fd < 0 && l->dir && l->buckets ? -errno : -ENOMEM;
		log_err("L1: cannot open %s: %s", dir, strerror(-r));
		goto fail;
	}
	l->lock_fd = openat(l->dir_fd, ".lock", O_RDWR | O_CREAT | O_CLOEXEC, 0600);
	if (l->lock_fd < 0 || flock(l->lock_fd, LOCK_EX | LOCK_NB) < 0) {
		r = errno == EWOULDBLOCK ? -EBUSY : -errno;
		if (r == -EBUSY)
			log_err("L1: %s is in use by another process; give each process its own L1 directory "
				"(--l1-dir), or stop the other one",
				dir);
		else
			log_err("L1: cannot lock %s/.lock: %s", dir, strerror(-r));
		goto fail;
	}
	if ((r = l1_scan(l)) < 0) {
		log_err("L1: cannot scan %s: %s", dir, strerror(-r));
		goto fail;
	}
	if ((r = -pthread_create(&l->q_thread, NULL, l1_writer, l)) < 0) {
		log_err("L1: cannot start the writer thread: %s", strerror(-r));
		goto fail;
	}
	l->q_started = true;
	*ops = &l1_ops;
	*state = l;
	return 0;
fail:
	if (l->dir_fd >= 0)
		close(l->dir_fd);
	if (l->lock_fd >= 0)
		close(l->lock_fd);
	pthread_mutex_destroy(&l->lock);
	pthread_cond_destroy(&l->q_cv);
	pthread_cond_destroy(&l->q_idle);
	free(l->buckets);
	free(l->dir);
	free(l);
	return r;
}

void l1_layer_usage(void *state, struct l1_usage *out)
{
	struct l1 *l = state;
	pthread_mutex_lock(&l->lock);
	out->bytes = l->prob.bytes + l->prot.bytes;
	out->max_bytes = l->max_bytes;
	out->entries = l->prob.count + l->prot.count;
	out->protected_entries = l->prot.count;
	out->open_fds = l->n_fds;
	out->queued = l->q_len;
	out->insert_dropped = l->q_dropped;
	pthread_mutex_unlock(&l->lock);
}
