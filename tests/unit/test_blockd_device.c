/* blockd's lazy device through the in-process API (blockd.h), against a
 * file store holding an image this test seals itself (blockd_test_image.h,
 * in the chunker library's store and keys): chunks 0, 2, 3, 5, 7 stored
 * (random bytes), 1, 4, 6 holes.
 * Checked: every byte (whole image, random ranges across chunk boundaries,
 * four threads at once) equals the plaintext and `chunkify export`; holes
 * read as zeros with no fetch; counters; a chunk missing from every tier
 * gives -EIO for that chunk only; bad ranges give -EINVAL. */
#include "blockd/internal.h"
#include "chunker/chunker.h"
#include "tests/check.h"
#include "tests/unit/blockd_test_image.h"

#include <errno.h>
#include <jansson.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define N_INDEXES 8
static const bool stored[N_INDEXES] = { 1, 0, 1, 1, 0, 1, 0, 1 };

static uint8_t *plain; /* the whole image */
static char names[N_INDEXES][CHUNK_NAME_HEX_LEN + 1];

static json_t *stats(struct blockd_image *img)
{
	char *s = blockd_image_stats_json(img);
	json_t *j = s ? json_loads(s, 0, NULL) : NULL;
	free(s);
	return j;
}

static long long jint(json_t *j, const char *a, const char *b)
{
	json_t *v = json_object_get(j, a);
	if (b)
		v = json_object_get(v, b);
	return json_is_integer(v) ? (long long)json_integer_value(v) : -1;
}

struct reader {
	struct blockd_image *img;
	unsigned seed;
	int bad;
};

static void *reader_main(void *arg)
{
	struct reader *r = arg;
	uint8_t *buf = malloc(3 * CHUNK_SIZE);
	for (int i = 0; buf && i < 200; i++) {
		uint64_t off = (uint64_t)rand_r(&r->seed) % ((uint64_t)N_INDEXES * CHUNK_SIZE);
		size_t len = (size_t)rand_r(&r->seed) % (3 * CHUNK_SIZE);
		if (off + len > (uint64_t)N_INDEXES * CHUNK_SIZE)
			len = (size_t)((uint64_t)N_INDEXES * CHUNK_SIZE - off);
		if (blockd_image_read(r->img, off, buf, len) != 0 || memcmp(buf, plain + off, len) != 0)
			r->bad++;
	}
	free(buf);
	return NULL;
}

int main(void)
{
	char tmpl[] = "/tmp/test_blockd_device.XXXXXX";
	char *dir = mkdtemp(tmpl);
	if (!dir)
		return 1;
	char *home = xasprintf("%s/home", dir), *store = xasprintf("file://%s/store", dir);
	char *l1 = xasprintf("%s/l1", dir);
	setenv("KINDLING_HOME", home, 1);
	unsetenv("KINDLING_TENANT_KEY");
	unsetenv("KINDLING_SALT");

	size_t size = (size_t)N_INDEXES * CHUNK_SIZE;
	plain = calloc(1, size);
	CHECK(plain != NULL);
	if (!plain)
		return 1;
	for (size_t i = 0; i < N_INDEXES; i++)
		if (stored[i])
			CHECK(random_bytes(plain + i * CHUNK_SIZE, CHUNK_SIZE) == 0);
	memset(plain + 3 * CHUNK_SIZE + 1000, 0, 5000); /* zeros inside a stored chunk read as data */

	struct chunkify_ctx c;
	CHECK(chunkify_ctx_init(&c, store, NULL) == 0);
	char digest[SHA256_HEX_LEN + 1];
	CHECK(test_image_make(c.store, &c.env, plain, N_INDEXES, stored, names, digest) == 0);

	struct blockd_config cfg = { .cache = { .origin_uri = store, .l1_dir = l1 }, .no_readahead = true };
	struct blockd *b = NULL;
	CHECK(blockd_new(&cfg, &b) == 0);
	if (!b)
		return check_report();
	struct blockd_image *img = NULL, *again = NULL;
	CHECK(blockd_attach(b, "nosuch:1", &img) == -ENOENT);
	CHECK(blockd_attach(b, "unit:1", &img) == 0);
	CHECK(blockd_attach(b, "unit:1", &again) == 0 && again == img);
	CHECK(blockd_find(b, "unit:1") == img);
	CHECK(blockd_find(b, blockd_image_digest(img)) == img);
	CHECK(blockd_image_size(img) == size);
	CHECK(strcmp(blockd_image_name(img), "unit:1") == 0);
	CHECK(blockd_image_manifest(img)->n_chunks == 5);

	/* Holes: zeros, no fetch. */
	uint8_t *buf = malloc(size);
	CHECK(buf != NULL);
	memset(buf, 0xaa, CHUNK_SIZE);
	CHECK(blockd_image_read(img, 1 * CHUNK_SIZE, buf, CHUNK_SIZE) == 0);
	CHECK(is_all_zero(buf, CHUNK_SIZE));
	json_t *j = stats(img);
	CHECK(jint(j, "chunks_fetched", NULL) == 0);
	CHECK(jint(j, "hole_bytes_read", NULL) == CHUNK_SIZE);
	CHECK(jint(j, "bytes_read", NULL) == CHUNK_SIZE);
	json_decref(j);

	/* One small read of a stored chunk fetches that chunk only. */
	CHECK(blockd_image_read(img, 2 * CHUNK_SIZE + 4096, buf, 100) == 0);
	CHECK(memcmp(buf, plain + 2 * CHUNK_SIZE + 4096, 100) == 0);
	j = stats(img);
	CHECK(jint(j, "chunks_fetched", NULL) == 1);
	CHECK(jint(j, "fetched_by_tier", "l3") == 1);
	CHECK(jint(j, "chunks_read", NULL) == 1);
	CHECK(jint(j, "bytes_fetched", NULL) == CHUNK_SIZE);
	json_decref(j);

	/* Across boundaries: stored -> hole -> stored, hole -> stored. */
	CHECK(blockd_image_read(img, CHUNK_SIZE - 10, buf, CHUNK_SIZE + 30) == 0);
	CHECK(memcmp(buf, plain + CHUNK_SIZE - 10, CHUNK_SIZE + 30) == 0);
	CHECK(blockd_image_read(img, 4 * CHUNK_SIZE - 1, buf, 2 * CHUNK_SIZE + 2) == 0);
	CHECK(memcmp(buf, plain + 4 * CHUNK_SIZE - 1, 2 * CHUNK_SIZE + 2) == 0);

	/* The whole image. */
	memset(buf, 0x55, size);
	CHECK(blockd_image_read(img, 0, buf, size) == 0);
	CHECK(memcmp(buf, plain, size) == 0);
	j = stats(img);
	CHECK(jint(j, "chunks_fetched", NULL) == 5);
	CHECK(jint(j, "chunks_read", NULL) == 5);
	CHECK(jint(j, "chunks_resident", NULL) == 5);
	CHECK(jint(j, "read_errors", NULL) == 0);
	json_decref(j);

	/* Ranges. */
	CHECK(blockd_image_read(img, size, buf, 0) == 0);
	CHECK(blockd_image_read(img, size, buf, 1) == -EINVAL);
	CHECK(blockd_image_read(img, size - 1, buf, 2) == -EINVAL);
	CHECK(blockd_image_read(img, UINT64_MAX, buf, 1) == -EINVAL);

	/* Four threads of random reads at once. */
	struct reader rd[4];
	pthread_t th[4];
	for (int i = 0; i < 4; i++) {
		rd[i] = (struct reader){ .img = img, .seed = 17u * (unsigned)i + 1 };
		pthread_create(&th[i], NULL, reader_main, &rd[i]);
	}
	for (int i = 0; i < 4; i++) {
		pthread_join(th[i], NULL);
		CHECK(rd[i].bad == 0);
	}

	/* `chunkify export` of the same image, byte for byte. */
	const char *bdir = getenv("KINDLING_BUILD_DIR");
	if (bdir) {
		char *cmd = xasprintf("'%s/chunkify' --store '%s' export unit:1 '%s/export.raw'", bdir, store, dir);
		char *out = xasprintf("%s/export.raw", dir);
		CHECK(system(cmd) == 0);
		uint8_t *ex = NULL;
		size_t ex_len = 0;
		CHECK(read_file_all(out, size + 1, &ex, &ex_len) == 0);
		CHECK(ex_len == size && ex && memcmp(ex, buf, size) == 0);
		free(ex);
		free(cmd);
		free(out);
	} else
		fprintf(stderr, "KINDLING_BUILD_DIR unset: skipping the chunkify export comparison\n");

	/* A chunk gone from every tier: a second blockd with no L1 and no memory
	 * tier, chunk 5 deleted from the origin. */
	char key[128];
	snprintf(key, sizeof(key), "chunks/%s", names[5]);
	CHECK(store_delete(c.store, key) == 0);
	struct blockd_config cfg2 = { .cache = { .origin_uri = store, .mem_disable = true }, .no_readahead = true };
	struct blockd *b2 = NULL;
	CHECK(blockd_new(&cfg2, &b2) == 0);
	struct blockd_image *img2 = NULL;
	if (b2)
		CHECK(blockd_attach(b2, "unit:1", &img2) == 0);
	if (img2) {
		CHECK(blockd_image_read(img2, 5 * CHUNK_SIZE + 10, buf, 10) == -EIO);
		CHECK(blockd_image_read(img2, 4 * CHUNK_SIZE, buf, 2 * CHUNK_SIZE) == -EIO);
		CHECK(blockd_image_read(img2, 7 * CHUNK_SIZE, buf, CHUNK_SIZE) == 0);
		CHECK(memcmp(buf, plain + 7 * CHUNK_SIZE, CHUNK_SIZE) == 0);
		CHECK(blockd_image_read(img2, 0, buf, 5 * CHUNK_SIZE) == 0);
		CHECK(memcmp(buf, plain, 5 * CHUNK_SIZE) == 0);
		j = stats(img2);
		CHECK(jint(j, "read_errors", NULL) == 2);
		json_decref(j);
	}
	blockd_free(b2);

	/* The first blockd still has chunk 5 in L1. */
	CHECK(blockd_image_read(img, 5 * CHUNK_SIZE, buf, CHUNK_SIZE) == 0);
	CHECK(memcmp(buf, plain + 5 * CHUNK_SIZE, CHUNK_SIZE) == 0);

	CHECK(blockd_detach(b, "unit:1") == 0);
	CHECK(blockd_detach(b, "unit:1") == -ENOENT);
	CHECK(blockd_find(b, "unit:1") == NULL);
	blockd_free(b);
	chunkify_ctx_cleanup(&c);

	char *rm = xasprintf("rm -rf '%s'", dir);
	if (system(rm) != 0)
		fprintf(stderr, "cannot remove %s\n", dir);
	free(rm);
	free(buf);
	free(plain);
	free(home);
	free(store);
	free(l1);
	return check_report();
}
