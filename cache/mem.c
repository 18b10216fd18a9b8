/* The memory tier: an LRU of verified plaintext 4 KiB pages.
 *
 * Pages, not whole chunks, so that small reads of an L1 chunk warm the tier
 * without decrypting 512 KiB, and memory is spent on the pages actually
 * read.  A page only gets here from a layer below that verified it (an L1
 * block against its digest, or a whole chunk against its name), so a hit
 * needs no hashing: one lookup and a copy per page.  A page remembers the
 * key it was decrypted with; a read with another key misses.
 *
 * The pages live in one mapping made at the start (reserved, filled as
 * pages are used) and marked MADV_DONTFORK, as does the hash table: a
 * process sandbox is forked from the process that serves its image, and its
 * monitor lives as long as the sandbox.  Memory the tier reuses that the
 * fork shared would cost a copy-on-write fault and a TLB shootdown for every
 * page the tier writes while any sandbox runs (measured in `kindling serve`
 * with a full tier: most of its copy-on-write faults during a cold start).
 * Page data is 4 KiB aligned, so a page is one page of memory.
 */
#include "cache.h"
#include "internal.h"

#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

struct mem_page {
	uint8_t name[SHA256_LEN];
	uint32_t idx;
	uint8_t key[CHUNK_KEY_LEN];
	struct mem_page *hnext;
	struct mem_page *prev, *next; /* LRU, most recent at head */
};

struct mem_tier {
	pthread_mutex_t lock;
	struct mem_page **buckets;
	size_t mask;
	struct mem_page *head, *tail;
	size_t n_pages, max_pages;
	struct mem_page *meta; /* max_pages of them */
	uint8_t *data;	       /* max_pages * CACHE_BLOCK bytes; page i's data at i * CACHE_BLOCK */
	size_t n_used;	       /* meta[0..n_used) have been handed out */
	struct mem_page *free; /* evicted pages, through hnext */
};

/* Zeroed memory that a fork does not share, or NULL.  Unmapped with
 * munmap(|len|). */
static void *dontfork_alloc(size_t len)
{
	void *p = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
	if (p == MAP_FAILED)
		return NULL;
	if (madvise(p, len, MADV_DONTFORK) < 0) {
		munmap(p, len);
		return NULL;
	}
	return p;
}

static uint8_t *page_data(struct mem_tier *m, const struct mem_page *p)
{
	return m->data + (size_t)(p - m->meta) * CACHE_BLOCK;
}

/* A page not in use, or NULL when all max_pages are.  Locked. */
static struct mem_page *page_take(struct mem_tier *m)
{
	struct mem_page *p = m->free;
	if (p)
		m->free = p->hnext;
	else if (m->n_used < m->max_pages)
		p = &m->meta[m->n_used++];
	return p;
}

static size_t page_hash(const struct mem_tier *m, const uint8_t name[SHA256_LEN], uint32_t idx)
{
	uint64_t h;
	memcpy(&h, name, sizeof(h)); /* names are SHA-256 digests: already uniform */
	return (size_t)((h ^ ((uint64_t)idx * 0x9e3779b97f4a7c15ull)) & m->mask);
}

static struct mem_page **page_slot(struct mem_tier *m, const uint8_t name[SHA256_LEN], uint32_t idx)
{
	struct mem_page **p = &m->buckets[page_hash(m, name, idx)];
	while (*p && ((*p)->idx != idx || memcmp((*p)->name, name, SHA256_LEN) != 0))
		p = &(*p)->hnext;
	return p;
}

static void lru_unlink(struct mem_tier *m, struct mem_page *p)
{
	if (p->prev)
		p->prev->next = p->next;
	else
		m->head = p->next;
	if (p->next)
		p->next->prev = p->prev;
	else
		m->tail = p->prev;
	p->prev = p->next = NULL;
}

static void lru_push(struct mem_tier *m, struct mem_page *p)
{
	p->prev = NULL;
	p->next = m->head;
	if (m->head)
		m->head->prev = p;
	m->head = p;
	if (!m->tail)
		m->tail = p;
}

static void page_remove(struct mem_tier *m, struct mem_page *p)
{
	struct mem_page **slot = page_slot(m, p->name, p->idx);
	if (*slot == p)
		*slot = p->hnext;
	lru_unlink(m, p);
	m->n_pages--;
}

/* Insert or refresh a page; caller holds the lock. */
static void page_put(struct mem_tier *m, const uint8_t name[SHA256_LEN], uint32_t idx, const uint8_t *key,
		     const uint8_t *data)
{
	struct mem_page **slot = page_slot(m, name, idx), *p = *slot;
	if (p) {
		lru_unlink(m, p);
	} else {
		if (m->n_pages >= m->max_pages && m->tail) {
			p = m->tail;
			page_remove(m, p); /* reuse the least recently used page */
		} else if (!(p = page_take(m))) {
			return;
		}
		memcpy(p->name, name, SHA256_LEN);
		p->idx = idx;
		slot = page_slot(m, name, idx);
		p->hnext = *slot;
		*slot = p;
		m->n_pages++;
	}
	memcpy(p->key, key, CHUNK_KEY_LEN);
	memcpy(page_data(m, p), data, CACHE_BLOCK);
	lru_push(m, p);
}

static int mem_read(struct cache_layer *l, struct chunk_req *rq)
{
	struct mem_tier *m = l->state;
	struct cache *c = l->cache;
	uint8_t name[SHA256_LEN];
	if (hex_decode(rq->name, name, SHA256_LEN) < 0)
		return -EINVAL;
	uint32_t a0 = rq->off & ~(CACHE_BLOCK - 1);
	uint32_t a1 = (uint32_t)((rq->off + rq->len + CACHE_BLOCK - 1) & ~(size_t)(CACHE_BLOCK - 1));
	if (rq->buf && rq->len) {
		pthread_mutex_lock(&m->lock);
		bool all = true;
		for (uint32_t o = a0; o < a1 && all; o += CACHE_BLOCK) {
			struct mem_page *p = *page_slot(m, name, o / CACHE_BLOCK);
			all = p && memcmp(p->key, rq->key, CHUNK_KEY_LEN) == 0;
		}
		if (all) {
			for (uint32_t o = a0; o < a1; o += CACHE_BLOCK) {
				struct mem_page *p = *page_slot(m, name, o / CACHE_BLOCK);
				uint32_t from = o < rq->off ? rq->off - o : 0;
				uint32_t to = o + CACHE_BLOCK > rq->off + rq->len ? (uint32_t)(rq->off + rq->len - o)
										   : CACHE_BLOCK;
				memcpy(rq->buf + (o + from - rq->off), page_data(m, p) + from, to - from);
				lru_unlink(m, p);
				lru_push(m, p);
			}
			pthread_mutex_unlock(&m->lock);
			CACHE_COUNT(c, CACHE_TIER_MEM, hits, 1);
			CACHE_COUNT(c, CACHE_TIER_MEM, bytes, rq->len);
			rq->tier = CACHE_TIER_MEM;
			return 0;
		}
		pthread_mutex_unlock(&m->lock);
	}
	CACHE_COUNT(c, CACHE_TIER_MEM, misses, 1);

	/* Ask below for whole pages, so they can be kept. */
	struct chunk_req sub = *rq;
	uint8_t *tmp = NULL;
	if (rq->buf && rq->len && (a0 != rq->off || a1 != rq->off + rq->len)) {
		if (!(tmp = malloc(a1 - a0)))
			return -ENOMEM;
		sub.off = a0;
		sub.len = a1 - a0;
		sub.buf = tmp;
	}
	int r = cache_layer_next(l, &sub);
	if (r < 0) {
		free(tmp);
		return r;
	}
	rq->tier = sub.tier;
	rq->whole = sub.whole;
	pthread_mutex_lock(&m->lock);
	if (rq->once) {
		/* cache_read_once: the reader keeps the bytes itself */
	} else if (sub.buf && sub.len) {
		for (uint32_t o = 0; o < sub.len; o += CACHE_BLOCK)
			page_put(m, name, (sub.off + o) / CACHE_BLOCK, rq->key, sub.buf + o);
	} else if (sub.whole) { /* prefetch: keep the whole chunk */
		uint8_t page[CACHE_BLOCK];
		for (uint32_t o = 0; o < sub.whole->len; o += CACHE_BLOCK) {
			if (sub.whole->len - o < CACHE_BLOCK)
				break; /* a short tail page is read through next time */
			const uint8_t *src = sub.whole->plain ? sub.whole->plain + o : page;
			if (!sub.whole->plain && chunk_whole_read(sub.whole, o, page, CACHE_BLOCK) < 0)
				break;
			page_put(m, name, o / CACHE_BLOCK, rq->key, src);
		}
	}
	pthread_mutex_unlock(&m->lock);
	if (tmp) {
		memcpy(rq->buf, tmp + (rq->off - a0), rq->len);
		free(tmp);
	}
	return 0;
}

static void mem_evict(struct cache_layer *l, const char *hexname)
{
	struct mem_tier *m = l->state;
	uint8_t name[SHA256_LEN];
	if (hex_decode(hexname, name, SHA256_LEN) < 0)
		return;
	pthread_mutex_lock(&m->lock);
	for (uint32_t i = 0; i < CACHE_BLOCKS_PER_CHUNK; i++) {
		struct mem_page *p = *page_slot(m, name, i);
		if (p) {
			page_remove(m, p);
			p->hnext = m->free;
			m->free = p;
		}
	}
	pthread_mutex_unlock(&m->lock);
}

static void mem_close(struct cache_layer *l)
{
	struct mem_tier *m = l->state;
	munmap(m->meta, m->max_pages * sizeof(*m->meta));
	munmap(m->data, m->max_pages * CACHE_BLOCK);
	munmap(m->buckets, (m->mask + 1) * sizeof(*m->buckets));
	pthread_mutex_destroy(&m->lock);
	free(m);
}

static const struct cache_layer_ops mem_ops = {
	.name = "mem",
	.read = mem_read,
	.evict = mem_evict,
	.close = mem_close,
};

int mem_layer_new(uint64_t max_bytes, const struct cache_layer_ops **ops, void **state)
{
	struct mem_tier *m = calloc(1, sizeof(*m));
	if (!m)
		return -ENOMEM;
	m->max_pages = (size_t)(max_bytes / CACHE_BLOCK);
	if (m->max_pages < 1)
		m->max_pages = 1;
	size_t nb = 64;
	while (nb < m->max_pages)
		nb <<= 1;
	m->mask = nb - 1;
	m->buckets = dontfork_alloc(nb * sizeof(*m->buckets));
	m->meta = dontfork_alloc(m->max_pages * sizeof(*m->meta));
	m->data = dontfork_alloc(m->max_pages * CACHE_BLOCK);
	if (!m->buckets || !m->meta || !m->data) {
		int r = -errno;
		log_err("cannot reserve %zu MiB for the memory tier: %s (lower the memory tier's size)",
			m->max_pages * CACHE_BLOCK >> 20, strerror(errno));
		if (m->buckets)
			munmap(m->buckets, nb * sizeof(*m->buckets));
		if (m->meta)
			munmap(m->meta, m->max_pages * sizeof(*m->meta));
		if (m->data)
			munmap(m->data, m->max_pages * CACHE_BLOCK);
		free(m);
		return r;
	}
	pthread_mutex_init(&m->lock, NULL);
	*ops = &mem_ops;
	*state = m;
	return 0;
}

void mem_layer_usage(void *state, uint64_t *out_bytes)
{
	struct mem_tier *m = state;
	pthread_mutex_lock(&m->lock);
	*out_bytes = (uint64_t)m->n_pages * CACHE_BLOCK;
	pthread_mutex_unlock(&m->lock);
}
