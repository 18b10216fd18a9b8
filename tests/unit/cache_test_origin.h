/* What the cache's unit tests share: a scratch directory holding a file
 * origin of sealed chunks with known plaintext, a cache over it with a test
 * layer above L3, and a look at what an L1 directory holds on disk. */
#ifndef KINDLING_TESTS_CACHE_TEST_ORIGIN_H
#define KINDLING_TESTS_CACHE_TEST_ORIGIN_H

#include "cache/internal.h"
#include "common/common.h"
#include "image/image.h"

#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

struct test_chunk {
	char name[CHUNK_NAME_HEX_LEN + 1];
	uint8_t key[CHUNK_KEY_LEN];
	uint8_t *plain; /* len bytes, malloc'd */
	size_t len;
};

/* A scratch directory and the places in it. */
struct test_scratch {
	char dir[256];
	char origin_uri[300];	/* file://dir/origin */
	char l1_dir[300];	/* dir/l1 */
};

/* Make |sc|->dir = $TMPDIR/|prefix|.XXXXXX and fill in the rest; logs
 * silent unless KINDLING_DEBUG is set.  Exits on failure. */
static inline void test_scratch_make(const char *prefix, struct test_scratch *sc)
{
	const char *tmp = getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp";
	snprintf(sc->dir, sizeof(sc->dir), "%.200s/%.40s.XXXXXX", tmp, prefix);
	if (!mkdtemp(sc->dir)) {
		perror("mkdtemp");
		exit(1);
	}
	snprintf(sc->origin_uri, sizeof(sc->origin_uri), "file://%s/origin", sc->dir);
	snprintf(sc->l1_dir, sizeof(sc->l1_dir), "%s/l1", sc->dir);
	log_set_level(getenv("KINDLING_DEBUG") ? LOG_DEBUG : LOG_SILENT);
}

/* Remove |path| and everything below it. */
static inline void test_rm_rf(const char *path)
{
	char cmd[700];
	snprintf(cmd, sizeof(cmd), "rm -rf '%s'", path);
	if (system(cmd) != 0)
		fprintf(stderr, "could not remove %s\n", path);
}

/* Fill |chunks[0..n)| with pseudo-random plaintext (seeded by |seed| and
 * the index; chunk i is |len| bytes, the last one |last_len|), seal each
 * with |<salt, salt_len>| and put it into the store |origin_uri|.  Exits on
 * failure. */
static inline void test_chunks_make(const char *origin_uri, const uint8_t *salt, size_t salt_len,
				    struct test_chunk *chunks, int n, size_t len, size_t last_len, uint64_t seed)
{
	struct store *s;
	uint8_t *cipher = malloc(CHUNK_SIZE);
	if (!cipher || store_open(origin_uri, NULL, &s) < 0) {
		fprintf(stderr, "cannot open %s\n", origin_uri);
		exit(1);
	}
	for (int i = 0; i < n; i++) {
		struct test_chunk *c = &chunks[i];
		c->len = i == n - 1 ? last_len : len;
		c->plain = malloc(c->len);
		uint64_t x = seed * (uint64_t)(i + 1);
		for (size_t o = 0; c->plain && o < c->len; o += 8) {
			x ^= x << 13, x ^= x >> 7, x ^= x << 17;
			memcpy(c->plain + o, &x, c->len - o < 8 ? c->len - o : 8);
		}
		char key[100] = "chunks/";
		if (!c->plain || chunk_seal(salt, salt_len, c->plain, c->len, c->key, cipher, c->name) < 0)
			exit(1);
		memcpy(key + 7, c->name, CHUNK_NAME_HEX_LEN + 1);
		if (store_put(s, key, cipher, c->len) < 0)
			exit(1);
	}
	free(cipher);
	store_free(s);
}

static inline void test_chunks_free(struct test_chunk *chunks, int n)
{
	for (int i = 0; i < n; i++)
		free(chunks[i].plain);
}

/* cache_new(|cfg|), with |ops| (if not NULL; state |state|) put in above
 * L3.  Returns the cache, or NULL. */
static inline struct cache *test_cache_open(const struct cache_config *cfg, const struct cache_layer_ops *ops,
					    void *state)
{
	struct cache *c;
	if (cache_new(cfg, &c) < 0)
		return NULL;
	if (ops && cache_insert_layer(c, "l3", ops, state) < 0) {
		cache_free(c);
		return NULL;
	}
	return c;
}

/* What the L1 directory |l1_dir| holds: the bytes and count of its chunk
 * files (|files|) and the count of temporary files (|tmps|). */
static inline uint64_t test_l1_usage(const char *l1_dir, unsigned *files, unsigned *tmps)
{
	uint64_t total = 0;
	*files = *tmps = 0;
	DIR *d = opendir(l1_dir);
	struct dirent *de;
	while (d && (de = readdir(d))) {
		char p[600];
		snprintf(p, sizeof(p), "%s/%s", l1_dir, de->d_name);
		struct stat st;
		if (strncmp(de->d_name, ".tmp-", 5) == 0)
			(*tmps)++;
		else if (is_sha256_hex(de->d_name) && stat(p, &st) == 0) {
			total += (uint64_t)st.st_size;
			(*files)++;
		}
	}
	if (d)
		closedir(d);
	return total;
}

#endif
