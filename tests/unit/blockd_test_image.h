/* A sealed image for blockd's unit tests, made without the chunker: the
 * chunks uploaded to a store, the manifest sealed with the tenant key, and
 * the ref unit:1 pointing at it. */
#ifndef KINDLING_TESTS_BLOCKD_TEST_IMAGE_H
#define KINDLING_TESTS_BLOCKD_TEST_IMAGE_H

#include "common/common.h"
#include "image/image.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

/* Sleep |ms| milliseconds (the poll step of WAIT_FOR). */
static inline void pause_ms(long ms)
{
	struct timespec ts = { .tv_sec = ms / 1000, .tv_nsec = (ms % 1000) * 1000000L };
	nanosleep(&ts, NULL);
}

/* Poll |cond| until it holds or WAIT_LIMIT_S (the including test defines it)
 * passed: a hang guard; what happens is asserted by the caller, never how
 * long it took. */
#define WAIT_FOR(cond)                                                                                                 \
	do {                                                                                                           \
		double until_ = now_seconds() + WAIT_LIMIT_S;                                                          \
		while (!(cond) && now_seconds() < until_)                                                              \
			pause_ms(1);                                                                                   \
	} while (0)

/* Seal chunk i of |plain| (|n_indexes| chunks of CHUNK_SIZE) for every i
 * with |stored[i]| (|stored| NULL: every chunk; the others are holes) with
 * |env|'s salt, upload it to |st|, and record its name in |names[i]|.  Then
 * store the manifest sealed with |env|'s tenant key, its digest in
 * |digest|, and point refs/unit/1 at it, signed with the tenant key
 * (image_ref_put).  Returns 0 or -errno. */
static int test_image_make(struct store *st, const struct kindling_env *env, const uint8_t *plain, size_t n_indexes,
			   const bool *stored, char (*names)[CHUNK_NAME_HEX_LEN + 1], char digest[SHA256_HEX_LEN + 1])
{
	struct manifest m = { 0 };
	snprintf(m.source_manifest_digest, sizeof(m.source_manifest_digest), "sha256:%064d", 1);
	snprintf(m.source_config_digest, sizeof(m.source_config_digest), "sha256:%064d", 2);
	m.image_size = (uint64_t)n_indexes * CHUNK_SIZE;
	m.chunk_size = CHUNK_SIZE;
	m.chunks = calloc(n_indexes ? n_indexes : 1, sizeof(*m.chunks));
	uint8_t *cipher = malloc(CHUNK_SIZE);
	int r = m.chunks && cipher ? 0 : -ENOMEM;
	for (size_t i = 0; r == 0 && i < n_indexes; i++) {
		if (stored && !stored[i])
			continue;
		struct manifest_chunk *mc = &m.chunks[m.n_chunks++];
		mc->index = i;
		r = chunk_seal(env->salt, env->salt_len, plain + i * CHUNK_SIZE, CHUNK_SIZE, mc->key, cipher, mc->name);
		if (r < 0)
			break;
		memcpy(names[i], mc->name, CHUNK_NAME_HEX_LEN + 1);
		char key[128];
		snprintf(key, sizeof(key), "chunks/%s", mc->name);
		r = store_put(st, key, cipher, CHUNK_SIZE);
	}
	m.keys_present = true;
	uint8_t *buf = NULL;
	size_t len = 0;
	if (r == 0)
		r = manifest_encode(&m, env->tenant_key, &buf, &len);
	free(m.chunks);
	free(cipher);
	if (r < 0)
		return r;
	uint8_t d[SHA256_LEN];
	char key[128];
	sha256_buf(buf, len, d);
	hex_encode(d, SHA256_LEN, digest);
	snprintf(key, sizeof(key), "manifests/%s", digest);
	r = store_put(st, key, buf, len);
	free(buf);
	if (r == 0)
		r = image_ref_put(st, env->tenant_key, "unit:1", digest);
	return r;
}

#endif
