/* The environment every kindling program builds the same way: KINDLING_HOME,
 * where the deployment salt, the tenant key and the default file store live. */
#include "internal.h"

#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <openssl/crypto.h>
#include <stdio.h>

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
	/* The file may hold exactly the 64 digits, with no room for a NUL. */
	char hex[65];
	memcpy(hex, buf, 64);
	hex[64] = 0;
	free(buf);
	r = hex_decode(hex, out, 32);
	if (r < 0)
		log_err("%s %s: expected 64 hex digits", what, path);
	return r;
}

/* KINDLING_SALT: 32 to 128 hex digits.  Returns 0, -ENOENT when unset, or
 * -EINVAL (logged). */
static int salt_from_variable(struct kindling_env *env)
{
	const char *hex = getenv("KINDLING_SALT");
	if (!hex || !*hex)
		return -ENOENT;
	size_t n = strlen(hex);
	if (n % 2 || n < 32 || n > 128 || hex_decode(hex, env->salt, n / 2) < 0) {
		log_err("KINDLING_SALT must be 32 to 128 hex digits (it is the deployment salt every importer shares)");
		return -EINVAL;
	}
	env->salt_len = n / 2;
	return 0;
}

static int load_salt(struct kindling_env *env, unsigned flags)
{
	int r = salt_from_variable(env);
	if (r != -ENOENT)
		return r;
	char *path = kindling_env_path(env, "salt");
	if (!path)
		return -ENOMEM;
	if ((flags & KINDLING_ENV_READ_ONLY) && access(path, F_OK) != 0) {
		free(path);
		return 0;
	}
	r = load_or_create_secret(path, "deployment salt", env->salt);
	free(path);
	if (r == 0)
		env->salt_len = 32;
	return r;
}

static int load_tenant_key(struct kindling_env *env)
{
	const char *named = getenv("KINDLING_TENANT_KEY");
	char *path = named && *named ? strdup(named) : kindling_env_path(env, "tenant.key");
	if (!path)
		return -ENOMEM;
	int r = load_or_create_secret(path, "tenant key", env->tenant_key);
	if (r == 0) {
		struct stat st;
		if (stat(path, &st) == 0 && (st.st_mode & 077))
			log_warn("tenant key %s is readable by group or others; chmod 600 it", path);
		env->have_tenant_key = true;
	}
	free(path);
	return r;
}

char *kindling_home_dir(void)
{
	const char *home = getenv("KINDLING_HOME");
	if (home && *home)
		return strdup(home);
	const char *h = getenv("HOME");
	return xasprintf("%s/.kindling", h && *h ? h : "/root");
}

int kindling_env_load(struct kindling_env *env, unsigned flags)
{
	memset(env, 0, sizeof(*env));
	env->home = kindling_home_dir();
	int r = env->home ? 0 : -ENOMEM;
	if (r == 0 && (r = mkdir_p(env->home, 0700)) < 0)
		log_err("cannot create KINDLING_HOME %s: %s", env->home, strerror(-r));
	/* The salt is deployment-wide: every importer of one deployment must use
	 * the same salt or identical chunks stop deduplicating. */
	if (r == 0)
		r = load_salt(env, flags);
	if (r == 0 && !(flags & KINDLING_ENV_READ_ONLY))
		r = load_tenant_key(env);
	if (r == 0 && !(env->default_store_uri = kindling_env_path(env, "store")))
		r = -ENOMEM;
	if (r < 0)
		kindling_env_cleanup(env);
	return r;
}

void kindling_env_cleanup(struct kindling_env *env)
{
	free(env->home);
	free(env->default_store_uri);
	OPENSSL_cleanse(env, sizeof(*env));
}

char *kindling_env_path(const struct kindling_env *env, const char *name)
{
	return xasprintf("%s/%s", env->home, name);
}
