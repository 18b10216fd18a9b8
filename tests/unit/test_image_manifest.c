/* Chunk sealing and sealed manifests: round trips, determinism, and that
 * every kind of tampering is refused. */
/* ctest-labels: no-tsan (single-threaded: nothing for ThreadSanitizer to check) */
#include "common/common.h"
#include "image/image.h"
#include "tests/check.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void test_chunks(void)
{
	uint8_t salt[32] = {1, 2, 3};
	uint8_t *plain = malloc(CHUNK_SIZE), *cipher = malloc(CHUNK_SIZE), *back = malloc(CHUNK_SIZE);
	for (size_t i = 0; i < CHUNK_SIZE; i++)
		plain[i] = (uint8_t)(i * 7 + (i >> 12));
	uint8_t key[CHUNK_KEY_LEN], key2[CHUNK_KEY_LEN];
	char name[CHUNK_NAME_HEX_LEN + 1], name2[CHUNK_NAME_HEX_LEN + 1];
	CHECK(chunk_seal(salt, sizeof(salt), plain, CHUNK_SIZE, key, cipher, name) == 0);
	CHECK(is_sha256_hex(name));
	CHECK(memcmp(cipher, plain, 4096) != 0);
	/* Convergent: the same plaintext seals to the same name. */
	uint8_t *cipher2 = malloc(CHUNK_SIZE);
	CHECK(chunk_seal(salt, sizeof(salt), plain, CHUNK_SIZE, key2, cipher2, name2) == 0);
	CHECK(strcmp(name, name2) == 0 && memcmp(key, key2, CHUNK_KEY_LEN) == 0);
	/* A different salt gives a different key and name. */
	salt[0] ^= 1;
	CHECK(chunk_seal(salt, sizeof(salt), plain, CHUNK_SIZE, key2, cipher2, name2) == 0);
	CHECK(strcmp(name, name2) != 0);
	salt[0] ^= 1;
	CHECK(chunk_open(name, key, salt, sizeof(salt), cipher, CHUNK_SIZE, back) == 0);
	CHECK(memcmp(back, plain, CHUNK_SIZE) == 0);
	cipher[12345] ^= 0x10;
	CHECK(chunk_open(name, key, salt, sizeof(salt), cipher, CHUNK_SIZE, back) == -EBADMSG);
	cipher[12345] ^= 0x10;
	key[3] ^= 1; /* the name matches but the key is wrong: plaintext check fails */
	CHECK(chunk_open(name, key, salt, sizeof(salt), cipher, CHUNK_SIZE, back) == -EBADMSG);
	key[3] ^= 1;
	/* Decrypting piece by piece at any offset, in any order, gives what one
	 * pass gives (the L2 read decrypts fragments as they land, and a
	 * fragment of a short chunk need not start on a 16-byte block). */
	static const size_t cuts[] = {CHUNK_SIZE / 2, 7, 131072 + 5, 16, 1, CHUNK_SIZE - 3, 300000, 0};
	struct chunk_ctr *ctr;
	CHECK(chunk_ctr_new(key, &ctr) == 0);
	memset(back, 0, CHUNK_SIZE);
	for (size_t i = 0; i + 1 < sizeof(cuts) / sizeof(cuts[0]); i++) {
		size_t a = cuts[i] < cuts[i + 1] ? cuts[i] : cuts[i + 1], b = cuts[i] < cuts[i + 1] ? cuts[i + 1] : cuts[i];
		CHECK(chunk_ctr_run(ctr, a, cipher + a, b - a, back + a) == 0);
	}
	CHECK(chunk_ctr_run(ctr, CHUNK_SIZE - 3, cipher + CHUNK_SIZE - 3, 3, back + CHUNK_SIZE - 3) == 0);
	CHECK(memcmp(back, plain, CHUNK_SIZE) == 0);
	CHECK(chunk_ctr_at(key, 12345, cipher + 12345, 1000, back) == 0);
	CHECK(memcmp(back, plain + 12345, 1000) == 0);
	chunk_ctr_free(ctr);
	chunk_ctr_free(NULL);
	free(plain);
	free(cipher);
	free(cipher2);
	free(back);
}

static void fill_manifest(struct manifest *m)
{
	memset(m, 0, sizeof(*m));
	strcpy(m->source_manifest_digest, "sha256:0000000000000000000000000000000000000000000000000000000000000001");
	strcpy(m->source_config_digest, "sha256:0000000000000000000000000000000000000000000000000000000000000002");
	m->source_ref = strdup("oci:/tmp/x:1");
	m->config.entrypoint = calloc(3, sizeof(char *));
	m->config.entrypoint[0] = strdup("/bin/sh");
	m->config.entrypoint[1] = strdup("-c");
	m->config.env = calloc(2, sizeof(char *));
	m->config.env[0] = strdup("PATH=/usr/bin");
	m->config.working_dir = strdup("/app");
	m->image_size = 8ull * CHUNK_SIZE;
	m->chunk_size = CHUNK_SIZE;
	m->metadata_offset = 6ull * CHUNK_SIZE;
	m->n_layers = 1;
	m->layers = calloc(1, sizeof(*m->layers));
	strcpy(m->layers[0].digest, "sha256:0000000000000000000000000000000000000000000000000000000000000003");
	m->layers[0].offset = CHUNK_SIZE;
	m->layers[0].length = 5ull * CHUNK_SIZE;
	m->n_chunks = 3;
	m->chunks = calloc(3, sizeof(*m->chunks));
	uint64_t idx[3] = {0, 1, 6};
	for (int i = 0; i < 3; i++) {
		m->chunks[i].index = idx[i];
		memset(m->chunks[i].key, 0x40 + i, CHUNK_KEY_LEN);
		memset(m->chunks[i].name, 'a' + i, CHUNK_NAME_HEX_LEN);
	}
}

static void test_manifest(void)
{
	uint8_t tk[32], other[32];
	memset(tk, 7, sizeof(tk));
	memset(other, 8, sizeof(other));
	struct manifest m, d;
	fill_manifest(&m);
	uint8_t *a, *b;
	size_t alen, blen;
	CHECK(manifest_encode(&m, tk, &a, &alen) == 0);
	CHECK(manifest_encode(&m, tk, &b, &blen) == 0);
	CHECK(alen == blen && memcmp(a, b, alen) == 0); /* deterministic */
	free(b);

	CHECK(manifest_decode(a, alen, tk, &d) == 0);
	CHECK(d.keys_present && d.n_chunks == 3 && d.chunks[2].index == 6);
	CHECK(memcmp(d.chunks[1].key, m.chunks[1].key, CHUNK_KEY_LEN) == 0);
	CHECK(strcmp(d.chunks[0].name, m.chunks[0].name) == 0);
	CHECK(d.config.entrypoint && strcmp(d.config.entrypoint[1], "-c") == 0 && !d.config.entrypoint[2]);
	CHECK(d.config.cmd == NULL && d.config.user == NULL);
	CHECK(strcmp(d.config.working_dir, "/app") == 0);
	CHECK(d.n_layers == 1 && d.layers[0].length == 5ull * CHUNK_SIZE);
	manifest_cleanup(&d);

	/* Without a key: the public part only. */
	CHECK(manifest_decode(a, alen, NULL, &d) == 0);
	CHECK(!d.keys_present && d.n_chunks == 3);
	manifest_cleanup(&d);

	CHECK(manifest_decode(a, alen, other, &d) == -EKEYREJECTED);

	/* Any single changed byte is refused with the key. */
	size_t refused = 0;
	for (size_t i = 0; i < alen; i++) {
		a[i] ^= 0x01;
		if (manifest_decode(a, alen, tk, &d) < 0)
			refused++;
		else
			manifest_cleanup(&d);
		a[i] ^= 0x01;
	}
	CHECK(refused == alen);
	CHECK(manifest_decode(a, alen - 1, tk, &d) < 0);
	free(a);
	manifest_cleanup(&m);
}

/* A snapshot: memory of 5 chunks minus a page, vmstate in chunk 5. */
static void fill_snapshot(struct manifest *m)
{
	fill_manifest(m);
	m->kind = MANIFEST_KIND_SNAPSHOT;
	m->image_size = 6ull * CHUNK_SIZE;
	m->metadata_offset = 0;
	m->chunks[2].index = 5;
	memset(m->snapshot.image_digest, 'e', 64);
	m->snapshot.mem_size = 5ull * CHUNK_SIZE - 4096;
	m->snapshot.vmstate_offset = 5ull * CHUNK_SIZE;
	m->snapshot.vmstate_size = 1000;
}

/* Encode |m|, decode it with the key; returns decode's result. */
static int round_trip(const struct manifest *m, const uint8_t tk[32], struct manifest *d)
{
	uint8_t *a;
	size_t alen;
	if (manifest_encode(m, tk, &a, &alen) < 0)
		return -ENOMEM;
	int r = manifest_decode(a, alen, tk, d);
	free(a);
	return r;
}

static void test_snapshot_manifest(const char *seed_out)
{
	uint8_t tk[32];
	memset(tk, 7, sizeof(tk));
	struct manifest m, d;

	/* An image's body has no kind and decodes as an image. */
	fill_manifest(&m);
	CHECK(round_trip(&m, tk, &d) == 0 && d.kind == MANIFEST_KIND_IMAGE);
	manifest_cleanup(&d);
	manifest_cleanup(&m);

	fill_snapshot(&m);
	CHECK(round_trip(&m, tk, &d) == 0);
	CHECK(d.kind == MANIFEST_KIND_SNAPSHOT && strcmp(d.snapshot.image_digest, m.snapshot.image_digest) == 0);
	CHECK(d.snapshot.mem_size == m.snapshot.mem_size && d.snapshot.vmstate_offset == 5ull * CHUNK_SIZE &&
	      d.snapshot.vmstate_size == 1000);
	CHECK(strcmp(manifest_kind_name(d.kind), "snapshot") == 0);
	manifest_cleanup(&d);
	if (seed_out) { /* the fuzz corpus's valid-snapshot */
		uint8_t *a;
		size_t alen;
		FILE *f = fopen(seed_out, "wb");
		CHECK(f && manifest_encode(&m, tk, &a, &alen) == 0 && fwrite(a, 1, alen, f) == alen);
		if (f)
			fclose(f);
		free(a);
	}

	/* Each inconsistent snapshot section is refused. */
	struct manifest bad = m;
	bad.snapshot.mem_size = 5ull * CHUNK_SIZE - 100; /* not whole pages */
	CHECK(round_trip(&bad, tk, &d) == -EBADMSG);
	bad = m;
	bad.snapshot.vmstate_offset = 4ull * CHUNK_SIZE; /* inside the memory */
	CHECK(round_trip(&bad, tk, &d) == -EBADMSG);
	bad = m;
	bad.snapshot.vmstate_size = CHUNK_SIZE + 1; /* beyond the image */
	CHECK(round_trip(&bad, tk, &d) == -EBADMSG);
	bad = m;
	bad.snapshot.image_digest[3] = 'X';
	CHECK(round_trip(&bad, tk, &d) == -EBADMSG);
	bad = m;
	bad.snapshot.mem_size = 0;
	CHECK(round_trip(&bad, tk, &d) == -EBADMSG);
	manifest_cleanup(&m);
}

/* The optional layout_traces section: round trip, absent in the usual layout,
 * refused when malformed or on a snapshot, and authenticated like the rest. */
static void test_layout_trace_manifest(const char *seed_out)
{
	uint8_t tk[32];
	memset(tk, 7, sizeof(tk));
	struct manifest m, d;

	fill_manifest(&m);
	CHECK(round_trip(&m, tk, &d) == 0 && d.n_layout_traces == 0); /* the usual layout names no trace */
	manifest_cleanup(&d);
	m.n_layout_traces = 2;
	memset(m.layout_traces[0].trace_digest, 'f', 64);
	memset(m.layout_traces[0].recorded_on, '3', 64);
	memset(m.layout_traces[1].trace_digest, '9', 64);
	memset(m.layout_traces[1].recorded_on, '4', 64);
	CHECK(round_trip(&m, tk, &d) == 0 && d.n_layout_traces == 2);
	for (size_t i = 0; i < 2; i++) /* in the order given: it is the merge order */
		CHECK(strcmp(d.layout_traces[i].trace_digest, m.layout_traces[i].trace_digest) == 0 &&
		      strcmp(d.layout_traces[i].recorded_on, m.layout_traces[i].recorded_on) == 0);
	manifest_cleanup(&d);

	uint8_t *a;
	size_t alen;
	CHECK(manifest_encode(&m, tk, &a, &alen) == 0);
	if (seed_out) { /* the fuzz corpus's valid-layout-trace */
		FILE *f = fopen(seed_out, "wb");
		CHECK(f && fwrite(a, 1, alen, f) == alen);
		if (f)
			fclose(f);
	}
	/* Pointing the manifest at another trace breaks its authentication. */
	char *at = memmem(a, alen, m.layout_traces[0].trace_digest, 64);
	CHECK(at != NULL);
	if (at) {
		at[0] = 'e';
		CHECK(manifest_decode(a, alen, tk, &d) == -EBADMSG);
		CHECK(manifest_decode(a, alen, NULL, &d) == 0 && d.layout_traces[0].trace_digest[0] == 'e');
		manifest_cleanup(&d);
	}
	free(a);

	struct manifest bad = m;
	bad.layout_traces[1].trace_digest[5] = 'X'; /* not hex */
	CHECK(round_trip(&bad, tk, &d) == -EBADMSG);
	bad = m;
	bad.layout_traces[0].recorded_on[63] = '\0'; /* 63 digits */
	CHECK(round_trip(&bad, tk, &d) == -EBADMSG);
	manifest_cleanup(&m);

	/* A snapshot has no layout to come from a trace. */
	fill_snapshot(&m);
	m.n_layout_traces = 1;
	memset(m.layout_traces[0].trace_digest, 'f', 64);
	memset(m.layout_traces[0].recorded_on, '3', 64);
	CHECK(round_trip(&m, tk, &d) == -EBADMSG);
	manifest_cleanup(&m);
}

int main(int argc, char **argv)
{
	log_set_level(LOG_SILENT); /* the tamper loop would log thousands of refusals */
	test_chunks();
	test_manifest();
	/* test_image_manifest --write-snapshot-seed FILE writes the fuzz seed. */
	test_snapshot_manifest(argc == 3 && strcmp(argv[1], "--write-snapshot-seed") == 0 ? argv[2] : NULL);
	/* test_image_manifest --write-layout-trace-seed FILE writes that fuzz seed. */
	test_layout_trace_manifest(argc == 3 && strcmp(argv[1], "--write-layout-trace-seed") == 0 ? argv[2] : NULL);
	return check_report();
}
