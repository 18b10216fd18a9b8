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
 * Files are written under ".tmp-<name>.<pid>.<n>" and renamed into place
 * without replacing (renameat2 RENAME_NOREPLACE, or link + unlink where the
 * filesystem lacks it), so a reader never sees half a file.  There is no
 * fsync: L1 is soft state and a file torn by a crash fails its header check
 * at start or a block check on read, and is refetched.
 *
 * Sharing.  Several processes (four `kindling run` of one image, blockd and
 * cachectl) may use one directory at once.  Entries are content-addressed
 * and every byte is checked on read, so reads need no lock: a file is
 * either absent or complete, an open fd keeps reading its inode after
 * another process unlinks the name, and a file another process wrote after
 * our scan is found on a miss (one openat) and taken into our index
 * ("adopted") once its header and MAC check out.  Each process keeps its own
 * index and LRU; what they share is the accounting, a small file
 * <dir>/.usage mapped by all of them, whose bytes and entries counters are
 * changed with atomic adds: + by whoever renames a file into place, - by
 * whoever's unlink of it succeeds (only one can), so the bound holds across
 * processes.  A writer reserves its entry's bytes, evicts from its own LRU
 * tail while the shared total is over the bound (when its own index is empty
 * it rescans the directory, taking in the others' files and resetting the
 * counters to what is on disk), then renames.  Eviction is therefore
 * approximate LRU across processes: each evicts its own coldest entries, and
 * a load of an entry touches its mtime so that scans order it as recent.
 * <dir>/.lock is held LOCK_SH by every user; the first user takes it
 * LOCK_EX|LOCK_NB for its start-up scan, which alone may remove temporary
 * files of any age and recount the directory (later scans remove only
 * temporary files over an hour old, left by a crash).  A user that cannot get
 * the lock within L1_LOCK_WAIT_MS, or cannot create or open the directory,
 * makes cache_new run without L1 (cache.c logs one notice).
 *
 * A full L1.  Reaching the size bound evicts; so does a write that fails
 * with ENOSPC or EDQUOT (the filesystem is full before the bound is reached),
 * which evicts two entries' worth, retries once, and from then on keeps this
 * process's L1 within what had fitted (fs_bound), so later writes evict
 * instead of failing.  Either logs a warning saying how to size L1, at most
 * once per L1_WARN_INTERVAL_S per cache; the count of evictions is in the
 * stats.
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

#include "common/bytes.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/mman.h>
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
#define L1_LOCK_WAIT_MS 10000	/* for another process's start-up scan (one header read per entry) */
#define L1_WARN_INTERVAL_S 60.0	/* the "L1 is full" warning, per cache */
#define L1_TMP_STALE_S 3600	/* a temporary file this old was left by a crash */
#define L1_SHARED_MAGIC "KNDLL1U1"
#define L1_SHARED_SIZE 4096u

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

/* <dir>/.usage, mapped MAP_SHARED by every process using the directory;
 * the counters change only by atomic adds (see the top). */
struct l1_shared {
	char magic[8];
	uint64_t bytes;			/* of the named (not temporary) files */
	uint64_t entries;
};

struct l1 {
	struct cache *cache;
	char *dir;
	int dir_fd, lock_fd;
	struct l1_shared *sh;		/* mapped; NULL until opened */
	uint64_t evictions;		/* under lock */
	uint64_t fs_bound;		/* 0, or what fitted when the filesystem was full; under lock */
	double full_warned;		/* now_seconds() of the last "full" warning; under lock */
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

/* ---- the shared accounting (see the top) ---------------------------------------- */

static uint64_t shared_bytes(const struct l1 *l)
{
	return __atomic_load_n(&l->sh->bytes, __ATOMIC_RELAXED);
}

static void shared_add(struct l1 *l, uint64_t bytes, uint64_t entries)
{
	__atomic_fetch_add(&l->sh->bytes, bytes, __ATOMIC_RELAXED);
	__atomic_fetch_add(&l->sh->entries, entries, __ATOMIC_RELAXED);
}

/* Subtract, stopping at 0: the counters may lag the directory (a process
 * killed between its rename and its add), and a rescan puts them right. */
static void counter_sub(uint64_t *p, uint64_t v)
{
	uint64_t cur = __atomic_load_n(p, __ATOMIC_RELAXED);
	while (!__atomic_compare_exchange_n(p, &cur, cur > v ? cur - v : 0, true, __ATOMIC_RELAXED, __ATOMIC_RELAXED))
		;
}

static void shared_sub(struct l1 *l, uint64_t bytes, uint64_t entries)
{
	counter_sub(&l->sh->bytes, bytes);
	counter_sub(&l->sh->entries, entries);
}

static void shared_set(struct l1 *l, uint64_t bytes, uint64_t entries)
{
	__atomic_store_n(&l->sh->bytes, bytes, __ATOMIC_RELAXED);
	__atomic_store_n(&l->sh->entries, entries, __ATOMIC_RELAXED);
}

/* Unlink the file |name| of |bytes|; the one process whose unlink succeeds
 * takes it off the shared counters.  Returns 0 or -errno (-ENOENT: someone
 * else removed it). */
static int file_remove(struct l1 *l, const char *name, uint64_t bytes)
{
	if (unlinkat(l->dir_fd, name, 0) < 0)
		return -errno;
	shared_sub(l, bytes, 1);
	return 0;
}

/* Whether the rate-limited "L1 is full" warning is due; lock held. */
static bool full_warning_due(struct l1 *l)
{
	double now = now_seconds();
	if (l->full_warned > 0 && now - l->full_warned < L1_WARN_INTERVAL_S)
		return false;
	l->full_warned = now;
	return true;
}

/* Take |e| out of the index and, if |unlink_file|, delete its file; the
 * entry itself goes when its last reader lets go.  Lock held. */
static void entry_remove(struct l1 *l, struct l1_entry *e, bool unlink_file)
{
	struct l1_entry **slot = slot_of(l, e->name);
	if (*slot == e)
		*slot = e->hnext;
	seg_unlink(e->prot ? &l->prot : &l->prob, e);
	int r = unlink_file ? file_remove(l, e->name, e->disk_bytes) : 0;
	if (r < 0 && r != -ENOENT)
		log_warn("L1: cannot remove %s/%s: %s", l->dir, e->name, strerror(-r));
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

enum scan_mode { SCAN_EXCLUSIVE, SCAN_SHARED, SCAN_RESCAN };
static int l1_scan(struct l1 *l, enum scan_mode mode, uint64_t reserved);

/* Evict until the directory's shared total is within the bound.  |reserved|
 * bytes of it belong to a file about to be renamed in (not in any index
 * yet).  When our own index runs out first, the rest is other processes'
 * files: rescan once (|may_rescan|) to take them in and put the counters
 * right.  Lock held. */
static void make_room(struct l1 *l, uint64_t reserved, bool may_rescan)
{
	uint64_t evicted = 0;
	uint64_t bound = l->fs_bound && l->fs_bound < l->max_bytes ? l->fs_bound : l->max_bytes;
	while (shared_bytes(l) > bound) {
		struct l1_entry *v = l->prob.tail ? l->prob.tail : l->prot.tail;
		if (!v) {
			if (!may_rescan || l1_scan(l, SCAN_RESCAN, reserved) < 0)
				break;
			may_rescan = false;
			continue;
		}
		entry_remove(l, v, true);
		evicted++;
	}
	l->evictions += evicted;
	if (evicted && full_warning_due(l))
		log_warn("L1: %s is full (bound %llu MiB): evicting the least recently used chunks.  If reads keep "
			 "missing L1, give it more room with --l1-size (this warning repeats at most once a minute)",
			 l->dir, (unsigned long long)(l->max_bytes >> 20));
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
	futimens(fd, NULL); /* recently used, for the mtime order of later scans; best effort */
	*out_fd = fd;
	*out_table = table;
	return 0;
}

/* A chunk another process wrote after our scan: if <dir>/|name| is there
 * for key check |kc|, check its header and MAC with |key| and take it into
 * the index, fd and table loaded, with a reference for the caller.  Returns
 * the entry, or NULL: not there, there for another key, or invalid (then
 * dropped and counted corrupt).  Lock not held. */
static struct l1_entry *entry_adopt(struct l1 *l, const char *name, const uint8_t *key, const uint8_t kc[SHA256_LEN])
{
	int fd = openat(l->dir_fd, name, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return NULL;
	uint8_t *hdr = malloc(L1_HDR);
	uint8_t(*table)[SHA256_LEN] = malloc(CACHE_BLOCKS_PER_CHUNK * SHA256_LEN);
	struct l1_entry *e = calloc(1, sizeof(*e));
	struct stat st;
	bool ok = hdr && table && e && fstat(fd, &st) == 0;
	bool valid = ok && pread_full(fd, hdr, L1_HDR, 0) == (ssize_t)L1_HDR &&
		     header_check(hdr, name, NULL, &e->len, e->keycheck, NULL) == 0 &&
		     (uint64_t)st.st_size == L1_HDR + (uint64_t)e->len;
	bool ours = valid && memcmp(e->keycheck, kc, SHA256_LEN) == 0;
	if (ours)
		valid = header_check(hdr, name, key, &e->len, e->keycheck, table) == 0;
	free(hdr);
	if (ok && !valid) {
		CACHE_COUNT(l->cache, CACHE_TIER_L1, corrupt, 1);
		log_warn("L1: %s/%s failed its check (header or MAC); dropping it and reading from the next tier "
			 "(a disk going bad, or something writing into %s?)",
			 l->dir, name, l->dir);
		file_remove(l, name, (uint64_t)st.st_size);
	}
	if (!(valid && ours)) {
		free(table);
		free(e);
		close(fd);
		return NULL;
	}
	futimens(fd, NULL);
	memcpy(e->name, name, CHUNK_NAME_HEX_LEN + 1);
	e->disk_bytes = L1_HDR + (uint64_t)e->len;
	e->fd = fd;
	e->table = table;
	e->refs = 1;
	pthread_mutex_lock(&l->lock);
	struct l1_entry **slot = slot_of(l, name);
	if (*slot) {
		/* another thread took it in (or wrote it) meanwhile: use that one */
		struct l1_entry *o = *slot;
		bool same = memcmp(o->keycheck, kc, SHA256_LEN) == 0;
		if (same) {
			o->refs++;
			touch(l, o);
		}
		pthread_mutex_unlock(&l->lock);
		close(fd);
		free(table);
		free(e);
		return same ? o : NULL;
	}
	e->hnext = NULL;
	*slot = e;
	e->last_seq = ++l->seq; /* as an insert: the next correlated access does not promote */
	seg_push(&l->prob, e);
	fd_push(l, e);
	l->n_fds++;
	fd_trim(l);
	pthread_mutex_unlock(&l->lock);
	return e;
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

/* Serve |rq| from the queued insert of its chunk, if there is one.  Returns
 * 0 (served) or -ENOENT; lock held on entry, released on return. */
static int serve_pending(struct l1 *l, struct chunk_req *rq, const uint8_t kc[SHA256_LEN])
{
	struct cache *c = l->cache;
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
	int r = chunk_whole_copy(w, rq); /* verified when it was made */
	CACHE_COUNT(c, CACHE_TIER_L1, hits, 1);
	CACHE_COUNT(c, CACHE_TIER_L1, bytes, rq->len);
	rq->tier = CACHE_TIER_L1;
	if (rq->whole)
		chunk_whole_unref(w);
	else
		rq->whole = w;
	return r < 0 ? -EIO : 0;
}

/* Serve |rq| from L1 if it is there: in our index, queued for writing, or
 * written by another process since our scan.  Returns 0 (served), -ENOENT
 * (not there, there for another key, or removed by another process),
 * -EBADMSG (there but corrupt: dropped). */
static int l1_try(struct l1 *l, struct chunk_req *rq)
{
	struct cache *c = l->cache;
	uint8_t kc[SHA256_LEN];
	key_check(rq->key, kc);
	pthread_mutex_lock(&l->lock);
	struct l1_entry *e = *slot_of(l, rq->name);
	bool load = false;
	if (!e || memcmp(e->keycheck, kc, SHA256_LEN) != 0) {
		bool other_key = e != NULL;
		if (serve_pending(l, rq, kc) == 0)
			return 0;
		if (other_key || !(e = entry_adopt(l, rq->name, rq->key, kc)))
			return -ENOENT;
	} else {
		e->refs++;
		touch(l, e);
		load = e->fd < 0;
		if (!load) {
			fd_unlink(l, e);
			fd_push(l, e);
		}
		pthread_mutex_unlock(&l->lock);
	}

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
	bool gone = r == -ENOENT; /* another process evicted it: a miss, not damage */

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
		if (!gone) {
			CACHE_COUNT(c, CACHE_TIER_L1, corrupt, 1);
			log_warn("L1: %s/%s failed its check (%s); dropping it and reading from the next tier "
				 "(a disk going bad, or something writing into %s?)",
				 l->dir, e->name, r == -EBADMSG ? "digest mismatch" : strerror(-r), l->dir);
		}
		pthread_mutex_lock(&l->lock);
		if (!e->dead)
			entry_remove(l, e, !gone);
		pthread_mutex_unlock(&l->lock);
		entry_unref(l, e);
		return gone ? -ENOENT : -EBADMSG;
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

/* Write |<hdr, L1_HDR>| and |w|'s ciphertext to the new file |tmp|.
 * Returns 0, or -errno with |tmp| removed. */
static int write_tmp(struct l1 *l, const char *tmp, const uint8_t *hdr, const struct chunk_whole *w)
{
	int fd = openat(l->dir_fd, tmp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
	if (fd < 0)
		return -errno;
	ssize_t x = l1_write_full(fd, hdr, L1_HDR);
	if (x >= 0)
		x = l1_write_full(fd, w->cipher, w->len);
	int r = x < 0 ? (int)x : 0;
	if (close(fd) < 0 && r == 0)
		r = -errno;
	if (r < 0)
		unlinkat(l->dir_fd, tmp, 0);
	return r;
}

/* Rename |from| to |to| in |dfd| unless |to| exists.  Returns 0, -EEXIST
 * (another process put it there first) or -errno. */
static int rename_noreplace(int dfd, const char *from, const char *to)
{
	if (renameat2(dfd, from, dfd, to, RENAME_NOREPLACE) == 0)
		return 0;
	if (errno != EINVAL && errno != ENOSYS)
		return -errno;
	/* a filesystem without RENAME_NOREPLACE: link fails on an existing name too */
	if (linkat(dfd, from, dfd, to, 0) < 0)
		return -errno;
	unlinkat(dfd, from, 0);
	return 0;
}

/* The filesystem under L1 is full before L1's bound is: from now on keep
 * L1 within what fitted, evict our least recently used entries for |want|
 * bytes, and say so (rate-limited). */
static void make_space_on_disk(struct l1 *l, uint64_t want, int err)
{
	pthread_mutex_lock(&l->lock);
	uint64_t fitted = shared_bytes(l);
	if (fitted < want)
		fitted = want;
	if (!l->fs_bound || fitted < l->fs_bound)
		l->fs_bound = fitted;
	uint64_t freed = 0, evicted = 0;
	while (freed < want) {
		struct l1_entry *v = l->prob.tail ? l->prob.tail : l->prot.tail;
		if (!v)
			break;
		freed += v->disk_bytes;
		entry_remove(l, v, true);
		evicted++;
	}
	l->evictions += evicted;
	bool warn = full_warning_due(l);
	uint64_t have = shared_bytes(l);
	pthread_mutex_unlock(&l->lock);
	if (warn)
		log_warn("L1: the filesystem of %s is full (%s) with %llu MiB in L1, below its bound of %llu MiB: "
			 "evicting the least recently used chunks and keeping L1 within what fitted.  Set --l1-size "
			 "below the space that filesystem has for L1 (this warning repeats at most once a minute)",
			 l->dir, strerror(err), (unsigned long long)(have >> 20),
			 (unsigned long long)(l->max_bytes >> 20));
}

/* Write |p|'s chunk into L1 unless it is there already: the block table
 * (from the verified ciphertext), the file under a temporary name, then,
 * under the lock, room made within the bound, the rename and the index
 * entry, which replaces the pending entry.  Runs on the writer thread;
 * takes |p| off the queue in every case. */
static void l1_write(struct l1 *l, struct l1_pending *p)
{
	const struct chunk_whole *w = p->w;
	const uint8_t *kc = p->keycheck;
	pthread_mutex_lock(&l->lock);
	uint64_t tmpno = ++l->tmp_counter;
	pthread_mutex_unlock(&l->lock);
	uint64_t need = L1_HDR + (uint64_t)w->len;

	uint8_t *hdr = calloc(1, L1_HDR);
	char tmp[128];
	snprintf(tmp, sizeof(tmp), ".tmp-%s.%ld.%llu", w->name, (long)getpid(), (unsigned long long)tmpno);
	int r = hdr ? 0 : -ENOMEM;
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
		r = write_tmp(l, tmp, hdr, w);
		if (r == -ENOSPC || r == -EDQUOT) {
			make_space_on_disk(l, 2 * need, -r);
			r = write_tmp(l, tmp, hdr, w);
		}
	}
	free(hdr);
	if (r < 0) {
		CACHE_COUNT(l->cache, CACHE_TIER_L1, errors, 1);
		if (r == -ENOSPC || r == -EDQUOT)
			log_debug("L1: no space for chunk %s in %s even after evicting; not caching it", w->name,
				  l->dir);
		else
			log_warn("L1: cannot write chunk %s into %s: %s (L1 is skipped for it)", w->name, l->dir,
				 strerror(-r));
	}

	struct l1_entry *e = r == 0 ? calloc(1, sizeof(*e)) : NULL;
	bool tmp_left = r == 0;
	pthread_mutex_lock(&l->lock);
	struct l1_entry *old = *slot_of(l, w->name);
	bool publish = e && !p->cancelled && !(old && memcmp(old->keycheck, kc, SHA256_LEN) == 0);
	if (publish) {
		if (old)
			entry_remove(l, old, true); /* another key's file, replaced by ours */
		shared_add(l, need, 1);		    /* reserved before evicting, so racing writers see it */
		make_room(l, need, true);
		int rr = rename_noreplace(l->dir_fd, tmp, w->name);
		struct l1_entry *now = *slot_of(l, w->name);
		if (rr == 0) {
			tmp_left = false;
			if (now) /* taken in by make_room's rescan, then removed by another process */
				entry_remove(l, now, false);
		} else {
			shared_sub(l, need, 1);
			/* -EEXIST: another process wrote this chunk meanwhile; index its
			 * file, unless make_room's rescan has just done so */
			if (rr != -EEXIST) {
				log_warn("L1: cannot rename %s in %s: %s", tmp, l->dir, strerror(-rr));
				publish = false;
			} else if (now) {
				publish = false;
			}
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
	if (tmp_left)
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
	struct stat st;
	if (e)
		entry_remove(l, e, true);
	else if (is_sha256_hex(name) && fstatat(l->dir_fd, name, &st, 0) == 0)
		file_remove(l, name, (uint64_t)st.st_size); /* another process's entry */
	for (struct l1_pending *p = l->q_head; p; p = p->next)
		if (strcmp(p->w->name, name) == 0)
			p->cancelled = true;
	pthread_mutex_unlock(&l->lock);
}

/* Free |l| and everything it holds; its writer thread is not running. */
static void l1_destroy(struct l1 *l)
{
	for (struct seg *s = &l->prob;; s = &l->prot) {
		for (struct l1_entry *e = s->head, *n; e; e = n) {
			n = e->next;
			entry_free(l, e);
		}
		if (s == &l->prot)
			break;
	}
	free(l->buckets);
	if (l->sh)
		munmap(l->sh, L1_SHARED_SIZE);
	if (l->dir_fd >= 0)
		close(l->dir_fd);
	if (l->lock_fd >= 0)
		close(l->lock_fd); /* releases the flock */
	pthread_cond_destroy(&l->q_cv);
	pthread_cond_destroy(&l->q_idle);
	pthread_mutex_destroy(&l->lock);
	free(l->dir);
	free(l);
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
	l1_destroy(l);
}

static const struct cache_layer_ops l1_ops = {
	.name = "l1",
	.read = l1_read,
	.evict = l1_evict,
	.close = l1_close,
};

/* ---- scans and start-up ---------------------------------------------------------------- */

static int cmp_mtime(const void *a, const void *b)
{
	const struct l1_entry *x = *(struct l1_entry *const *)a, *y = *(struct l1_entry *const *)b;
	return x->mtime < y->mtime ? -1 : x->mtime > y->mtime;
}

/* Scan the directory: check every entry's header, take the valid ones that
 * are not in the index yet into probation (newest at the head), drop the
 * invalid ones, and remove temporary files (all of them with
 * SCAN_EXCLUSIVE, where no other process is writing; otherwise only those
 * left by a crash).  SCAN_EXCLUSIVE and SCAN_RESCAN set the shared counters
 * to what is on disk plus |reserved| (a file about to be renamed in).  Lock
 * held, except at start-up where nothing else runs yet.  Returns 0 or
 * -errno. */
static int l1_scan(struct l1 *l, enum scan_mode mode, uint64_t reserved)
{
	int dfd = openat(l->dir_fd, ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	DIR *d = dfd >= 0 ? fdopendir(dfd) : NULL;
	if (!d) {
		int r = -errno;
		if (dfd >= 0)
			close(dfd);
		return r;
	}
	struct l1_entry **found = NULL;
	size_t n = 0, cap = 0, dropped = 0;
	uint64_t disk_bytes = 0, disk_entries = 0;
	double now = now_seconds();
	uint8_t *hdr = malloc(L1_HDR);
	int r = hdr ? 0 : -ENOMEM;
	struct dirent *de;
	while (r == 0 && (de = readdir(d))) {
		struct stat st;
		if (strncmp(de->d_name, ".tmp-", 5) == 0) {
			/* a write cut short by a crash (or, shared, one in progress) */
			if (mode == SCAN_EXCLUSIVE ||
			    (fstatat(l->dir_fd, de->d_name, &st, 0) == 0 && now - (double)st.st_mtim.tv_sec > L1_TMP_STALE_S))
				unlinkat(l->dir_fd, de->d_name, 0);
			continue;
		}
		if (!is_sha256_hex(de->d_name))
			continue; /* ".", "..", ".lock", ".usage" */
		struct l1_entry *known = *slot_of(l, de->d_name);
		if (known) {
			disk_bytes += known->disk_bytes;
			disk_entries++;
			continue;
		}
		struct l1_entry *e = calloc(1, sizeof(*e));
		if (!e) {
			r = -ENOMEM;
			break;
		}
		int fd = openat(l->dir_fd, de->d_name, O_RDONLY | O_CLOEXEC);
		if (fd < 0) {
			free(e); /* removed by another process since readdir */
			continue;
		}
		bool ok = fstat(fd, &st) == 0 && pread_full(fd, hdr, L1_HDR, 0) == (ssize_t)L1_HDR &&
			  header_check(hdr, de->d_name, NULL, &e->len, e->keycheck, NULL) == 0 &&
			  (uint64_t)st.st_size == L1_HDR + (uint64_t)e->len;
		close(fd);
		if (!ok) {
			log_warn("L1: dropping %s/%s: not a valid cache file (torn by a crash, or foreign)", l->dir,
				 de->d_name);
			if (unlinkat(l->dir_fd, de->d_name, 0) == 0 && mode == SCAN_SHARED)
				shared_sub(l, (uint64_t)st.st_size, 1);
			dropped++;
			free(e);
			continue;
		}
		memcpy(e->name, de->d_name, CHUNK_NAME_HEX_LEN + 1);
		e->disk_bytes = L1_HDR + (uint64_t)e->len;
		e->fd = -1;
		e->mtime = (double)st.st_mtim.tv_sec + (double)st.st_mtim.tv_nsec * 1e-9;
		disk_bytes += e->disk_bytes;
		disk_entries++;
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
	if (r < 0)
		return r;
	if (mode != SCAN_SHARED || memcmp(l->sh->magic, L1_SHARED_MAGIC, 8) != 0) {
		shared_set(l, disk_bytes + reserved, disk_entries + (reserved ? 1 : 0));
		memcpy(l->sh->magic, L1_SHARED_MAGIC, 8);
	}
	if (mode == SCAN_RESCAN)
		log_debug("L1: rescanned %s: %zu entries of other processes taken in, %llu MiB on disk", l->dir, n,
			  (unsigned long long)(disk_bytes >> 20));
	else
		log_info("L1: %s: %zu entries (%llu MiB) kept from earlier or other processes, %zu invalid dropped",
			 l->dir, n, (unsigned long long)(disk_bytes >> 20), dropped);
	return 0;
}

/* flock |fd| with |how| (LOCK_SH or LOCK_EX), waiting at most
 * L1_LOCK_WAIT_MS.  Returns 0, -EBUSY (still held by another) or -errno. */
static int flock_bounded(int fd, int how)
{
	for (unsigned waited = 0;; waited += 10) {
		if (flock(fd, how | LOCK_NB) == 0)
			return 0;
		if (errno != EWOULDBLOCK && errno != EINTR)
			return -errno;
		if (waited >= L1_LOCK_WAIT_MS)
			return -EBUSY;
		usleep(10 * 1000);
	}
}

/* Map <dir>/.usage, creating it.  Returns 0 or -errno. */
static int shared_open(struct l1 *l)
{
	int fd = openat(l->dir_fd, ".usage", O_RDWR | O_CREAT | O_CLOEXEC, 0600);
	if (fd < 0)
		return -errno;
	struct stat st;
	int r = fstat(fd, &st) < 0 ? -errno : 0;
	/* growing only: two processes racing here both set the same size */
	if (r == 0 && st.st_size < (off_t)L1_SHARED_SIZE && ftruncate(fd, L1_SHARED_SIZE) < 0)
		r = -errno;
	void *m = r == 0 ? mmap(NULL, L1_SHARED_SIZE, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0) : MAP_FAILED;
	if (r == 0 && m == MAP_FAILED)
		r = -errno;
	close(fd);
	if (r == 0)
		l->sh = m;
	return r;
}

int l1_layer_new(struct cache *c, const char *dir, uint64_t max_bytes, const struct cache_layer_ops **ops,
		 void **state, char *why, size_t why_len)
{
	int r = mkdir_p(dir, 0700);
	if (r < 0) {
		snprintf(why, why_len, "cannot create the directory %s: %s", dir, strerror(-r));
		return r;
	}
	struct l1 *l = calloc(1, sizeof(*l));
	if (!l) {
		snprintf(why, why_len, "out of memory");
		return -ENOMEM;
	}
	l->cache = c;
	l->dir_fd = l->lock_fd = -1;
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
		snprintf(why, why_len, "cannot open %s: %s", dir, strerror(-r));
		goto fail;
	}
	/* The first user scans alone (LOCK_EX); every user then holds LOCK_SH. */
	bool exclusive = false;
	l->lock_fd = openat(l->dir_fd, ".lock", O_RDWR | O_CREAT | O_CLOEXEC, 0600);
	if (l->lock_fd < 0) {
		r = -errno;
	} else if (flock(l->lock_fd, LOCK_EX | LOCK_NB) == 0) {
		exclusive = true;
	} else {
		r = errno == EWOULDBLOCK ? flock_bounded(l->lock_fd, LOCK_SH) : -errno;
	}
	if (r < 0) {
		if (r == -EBUSY)
			snprintf(why, why_len,
				 "another process has held %s/.lock exclusively for over %u s (a kindling from before "
				 "L1 was shared, still running?)",
				 dir, L1_LOCK_WAIT_MS / 1000);
		else
			snprintf(why, why_len, "cannot lock %s/.lock: %s", dir, strerror(-r));
		goto fail;
	}
	if ((r = shared_open(l)) < 0) {
		snprintf(why, why_len, "cannot map %s/.usage: %s", dir, strerror(-r));
		goto fail;
	}
	if ((r = l1_scan(l, exclusive ? SCAN_EXCLUSIVE : SCAN_SHARED, 0)) < 0) {
		snprintf(why, why_len, "cannot scan %s: %s", dir, strerror(-r));
		goto fail;
	}
	make_room(l, 0, false); /* the bound may have shrunk since the last run */
	if (exclusive && (flock(l->lock_fd, LOCK_UN) < 0 || (r = flock_bounded(l->lock_fd, LOCK_SH)) < 0)) {
		r = r < 0 ? r : -errno;
		snprintf(why, why_len, "cannot share %s/.lock: %s", dir, strerror(-r));
		goto fail;
	}
	if ((r = -pthread_create(&l->q_thread, NULL, l1_writer, l)) < 0) {
		snprintf(why, why_len, "cannot start the writer thread: %s", strerror(-r));
		goto fail;
	}
	l->q_started = true;
	*ops = &l1_ops;
	*state = l;
	return 0;
fail:
	l1_destroy(l);
	return r;
}

void l1_layer_usage(void *state, struct l1_usage *out)
{
	struct l1 *l = state;
	pthread_mutex_lock(&l->lock);
	out->bytes = shared_bytes(l);
	out->max_bytes = l->max_bytes;
	out->entries = __atomic_load_n(&l->sh->entries, __ATOMIC_RELAXED);
	out->indexed = l->prob.count + l->prot.count;
	out->evictions = l->evictions;
	out->protected_entries = l->prot.count;
	out->open_fds = l->n_fds;
	out->queued = l->q_len;
	out->insert_dropped = l->q_dropped;
	pthread_mutex_unlock(&l->lock);
}
