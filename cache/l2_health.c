/* L2 node health: when a memcached node counts as down, and when it is
 * asked again.
 *
 * Health.  A connection error or timeout (memcached_fatal) marks a node down
 * for down_backoff_ms; worker 0 of that node probes it (a get of a key that is
 * never stored) when the backoff expires, and each failed probe doubles the
 * backoff up to 30 s.  Requests to a down node fail at once without touching
 * the network; nothing is ever retried in a loop.
 *
 * Going down also bumps the node's generation: connections opened before
 * the failure, pooled for reads (l2_pool.c) or held by the write workers
 * (l2_write.c), are dropped rather than reused.
 */
#include "l2_internal.h"

#include <libmemcached/memcached.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define L2_PROBE_KEY "l2-probe.never-stored"

void l2_node_latency(struct l2_node *nd, double ms)
{
	/* caller holds nd->mu */
	if (nd->st.latency_ewma_ms == 0)
		nd->st.latency_ewma_ms = ms;
	else
		nd->st.latency_ewma_ms = 0.8 * nd->st.latency_ewma_ms + 0.2 * ms;
}

void l2_node_failed(struct l2_node *nd, bool timeout, bool fatal, const char *what, const char *detail)
{
	pthread_mutex_lock(&nd->mu);
	if (timeout)
		nd->st.timeouts++;
	else
		nd->st.errors++;
	bool newly_down = false;
	if (fatal && !nd->down) {
		nd->down = true;
		nd->gen++;
		newly_down = true;
		nd->backoff_ms = nd->l->down_backoff_ms;
		nd->retry_at = now_seconds() + nd->backoff_ms / 1000.0;
		l2_conn_drop_idle_locked(nd);
		pthread_cond_broadcast(&nd->cv); /* worker 0 schedules the probe */
	}
	unsigned backoff = nd->backoff_ms;
	pthread_mutex_unlock(&nd->mu);
	if (newly_down)
		log_warn("l2: %s on %s failed: %s; node marked down, probing again in %u ms (is memcached running on %s?)",
			 what, nd->addr, detail, backoff, nd->addr);
	else if (!fatal)
		log_warn("l2: %s on %s failed: %s (is memcached on %s started with -I 2m and enough memory?)", what,
			 nd->addr, detail, nd->addr);
}

void l2_node_probe(struct l2_node *nd, memcached_st *mc)
{
	size_t vlen;
	uint32_t flags;
	memcached_return_t rc;
	char key[L2_KEY_MAX];
	snprintf(key, sizeof(key), "%s%s", nd->l->prefix, L2_PROBE_KEY);
	char *v = memcached_get(mc, key, strlen(key), &vlen, &flags, &rc);
	free(v);
	bool ok = rc == MEMCACHED_SUCCESS || rc == MEMCACHED_NOTFOUND;
	pthread_mutex_lock(&nd->mu);
	nd->probing = false;
	if (ok) {
		nd->down = false;
		nd->backoff_ms = 0;
	} else {
		nd->backoff_ms = nd->backoff_ms * 2 > L2_BACKOFF_MAX_MS ? L2_BACKOFF_MAX_MS : nd->backoff_ms * 2;
		nd->retry_at = now_seconds() + nd->backoff_ms / 1000.0;
	}
	unsigned backoff = nd->backoff_ms;
	pthread_mutex_unlock(&nd->mu);
	if (ok)
		log_info("l2: node %s answers again, marked up", nd->addr);
	else
		log_debug("l2: probe of %s failed (%s); next probe in %u ms", nd->addr, memcached_strerror(mc, rc),
			  backoff);
}
