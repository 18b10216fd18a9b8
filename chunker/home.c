/* KINDLING_HOME: where the deployment salt, the tenant key and the default
 * file store live. */
#include "internal.h"

#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <openssl/crypto.h>

/* Load a secret of 32 bytes stored as 64 hex digits in |path|, creating it
 * (0600, O_EXCL so two first imports cannot both create one) if absent. */
static int load_or_create_secret(const char *path, const char *what, uint8_t out[32])
{
	uint8_t *buf = NULL;
	size_t len = 0;
	int r = read_file_all(path, 4096, &buf, &len);
	if (r == -ENOENT) {
		uint8_t fresh[32];
		char hex[65];
		if ((r = random_bytes(fresh, sizeof(fresh))) < 0)
			return r;
		hex_encode(fresh, 32, hex);
		hex[64] = '\n';
		int fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
		if (fd >= 0) {
			ssize_t w = write(fd, hex, 65);
			int sync_r = fsync(fd);
			close(fd);
			if (w != 65 || sync_r < 0) {
				unlink(path);
				log_err("cannot write the %s %s: %s", what, path, strerror(errno));
				return -EIO;
			}
			log_info("created the %s %s", what, path);
		} else if (errno != EEXIST) {
			r = -errno;
			log_err("cannot create the %s %s: %s", what, path, strerror(-r));
			return r;
		}
		r = read_file_all(path, 4096, &buf, &len);
	}
	if (r < 0) {
		log_err("cannot read the %s %s: %s", what, path, strerror(-r));
		return r;
	}
	while (len && (buf[len - 1] == '\n' || buf[len - 1] == ' '))
		len--;
	if (len != 64) {
		free(buf);
		log_err("%s %s: expected 64 hex digits", what, path);
		return -EINVAL;
	}
	buf[len] = 0;
	r = hex_decode((char *)buf, out, 32);
	free(buf);
	if (r < 0)
		log_err("%s %s: expected 64 hex digits", what, path);
	return r;
}

int ctx_init(struct chunkify_ctx *c, const char *store_uri, const struct store_options *sopt)
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
	const char *home = getenv("KINDLING_HOME");
	if (home && *home)
		c->home = strdup(home);
	else {
		const char *h = getenv("HOME");
		c->home = xasprintf("%s/.kindling", h && *h ? h : "/root");
	}
	if (!c->home)
		return -ENOMEM;
	int r = mkdir_p(c->home, 0700);
	if (r < 0) {
		log_err("cannot create KINDLING_HOME %s: %s", c->home, strerror(-r));
		goto fail;
	}

	/* The salt is deployment-wide: every importer of one deployment must use
	 * the same salt or identical chunks stop deduplicating. */
	const char *salt_hex = getenv("KINDLING_SALT");
	if (salt_hex && *salt_hex) {
		size_t n = strlen(salt_hex);
		if (n % 2 || n < 32 || n > 128 || hex_decode(salt_hex, c->salt, n / 2) < 0) {
			log_err("KINDLING_SALT must be 32 to 128 hex digits");
			r = -EINVAL;
			goto fail;
		}
		c->salt_len = n / 2;
	} else {
		char *path = xasprintf("%s/salt", c->home);
		r = path ? load_or_create_secret(path, "deployment salt", c->salt) : -ENOMEM;
		free(path);
		if (r < 0)
			goto fail;
		c->salt_len = 32;
	}

	const char *key_path = getenv("KINDLING_TENANT_KEY");
	char *kp = key_path && *key_path ? strdup(key_path) : xasprintf("%s/tenant.key", c->home);
	r = kp ? load_or_create_secret(kp, "tenant key", c->tenant_key) : -ENOMEM;
	if (r == 0) {
		struct stat st;
		if (stat(kp, &st) == 0 && (st.st_mode & 077))
			log_warn("tenant key %s is readable by group or others; chmod 600 it", kp);
	}
	free(kp);
	if (r < 0)
		goto fail;

	char *default_store = NULL;
	if (!store_uri) {
		default_store = xasprintf("%s/store", c->home);
		if (!default_store) {
			r = -ENOMEM;
			goto fail;
		}
		store_uri = default_store;
	}
	r = store_open(store_uri, sopt, &c->store);
	free(default_store);
	if (r < 0)
		goto fail;
	return 0;
fail:
	ctx_cleanup(c);
	return r;
}

void ctx_cleanup(struct chunkify_ctx *c)
{
	store_free(c->store);
	free(c->home);
	OPENSSL_cleanse(c->tenant_key, sizeof(c->tenant_key));
	memset(c, 0, sizeof(*c));
}
