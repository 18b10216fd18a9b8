/* Buffer pools (contract in internal.h).
 *
 * Why: a chunk read needs two 512 KiB buffers (ciphertext and plaintext)
 * and an L2 read a few fragment-sized ones.  Taken from malloc, a buffer
 * that size is either a fresh mmap or the top of the heap, which glibc
 * trims on free once more than its trim threshold sits there; either way
 * the next read touches fresh pages and takes a minor fault per 4 KiB, 128
 * per chunk buffer.  Those faults were what put the L2 hit's p99 over 2 ms
 * (bench/cache.sh counts faults per read).  A few buffers kept between
 * reads are touched once and stay mapped.
 */
#include "internal.h"

#include <stdlib.h>

void buf_pool_init(struct buf_pool *p, size_t len, unsigned keep)
{
	pthread_mutex_init(&p->mu, NULL);
	p->len = len;
	p->keep = keep < BUF_POOL_KEEP_MAX ? keep : BUF_POOL_KEEP_MAX;
	p->n = 0;
}

void *buf_pool_get(struct buf_pool *p)
{
	pthread_mutex_lock(&p->mu);
	void *b = p->n ? p->free[--p->n] : NULL;
	pthread_mutex_unlock(&p->mu);
	return b ? b : malloc(p->len);
}

void buf_pool_put(struct buf_pool *p, void *b)
{
	if (!b)
		return;
	pthread_mutex_lock(&p->mu);
	if (p->n < p->keep) {
		p->free[p->n++] = b;
		b = NULL;
	}
	pthread_mutex_unlock(&p->mu);
	free(b);
}

void buf_pool_cleanup(struct buf_pool *p)
{
	for (unsigned i = 0; i < p->n; i++)
		free(p->free[i]);
	p->n = 0;
	pthread_mutex_destroy(&p->mu);
}
