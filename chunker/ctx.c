/* The builder's context: the environment plus the store it writes to. */
#include "internal.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

int chunkify_ctx_init(struct chunkify_ctx *c, const char *store_uri, const struct store_options *sopt)
{
	memset(c, 0, sizeof(*c));
	c->lease_ttl = DEFAULT_LEASE_TTL;
	const char *ttl = getenv("KINDLING_LEASE_TTL");
	if (ttl && *ttl) {
		char *end;
		double v = strtod(ttl, &end);
		if (*end || v < 1 || v > 7 * 86400) {
			log_err("KINDLING_LEASE_TTL must be a number of seconds from 1 to 604800");
			return -EINVAL;
		}
		c->lease_ttl = v;
	}
	int r = kindling_env_load(&c->env, 0);
	if (r < 0)
		return r;
	r = store_open(store_uri ? store_uri : c->env.default_store_uri, sopt, &c->store);
	if (r < 0)
		chunkify_ctx_cleanup(c);
	return r;
}

void chunkify_ctx_cleanup(struct chunkify_ctx *c)
{
	store_free(c->store);
	kindling_env_cleanup(&c->env);
	memset(c, 0, sizeof(*c));
}
