/* chunkify gc: delete chunks that nothing references, without racing imports.
 *
 * The protocol needs nothing from a store but put, get, list and delete, so
 * it works the same on a directory, an HTTP origin and S3:
 *
 *   import, per batch of chunks:      gc:
 *     1. write leases/<id>.<n> naming   1. write gc/running
 *        every chunk it relies on       2. read every live lease
 *     2. read gc/running; while it        (their names are protected)
 *        exists, wait                   3. read every manifest
 *     3. check existence, upload        4. list chunks/, delete the rest
 *   at the end: manifest, ref, then     5. delete gc/running
 *   delete the lease
 *
 * Each side writes its own record before reading the other's, so for any
 * batch either the import sees the marker (and waits until the collection is
 * over, then finds deleted chunks missing and uploads them) or the
 * collection sees the lease (and keeps those chunks).  Leases are read
 * before manifests: a lease that is gone by then belonged to an import whose
 * manifest was already published, so the manifest read sees it.  A lease or
 * marker older than the TTL belongs to a process that died, and is ignored.
 */
#include "internal.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

int gc_marker_active(struct chunkify_ctx *c)
{
	double age;
	int r = store_age(c->store, GC_MARKER, &age);
	if (r == -ENOENT)
		return 0;
	if (r < 0)
		return r;
	return age < c->lease_ttl ? 1 : 0;
}

struct name_set {
	uint8_t (*names)[SHA256_LEN];
	size_t n, cap;
};

static int set_add_hex(struct name_set *s, const char *hex)
{
	if (s->n == s->cap) {
		size_t cap = s->cap ? s->cap * 2 : 1024;
		void *a = realloc(s->names, cap * sizeof(*s->names));
		if (!a)
			return -ENOMEM;
		s->names = a;
		s->cap = cap;
	}
	if (hex_decode(hex, s->names[s->n], SHA256_LEN) < 0)
		return -EINVAL;
	s->n++;
	return 0;
}

static int cmp_name(const void *a, const void *b)
{
	return memcmp(a, b, SHA256_LEN);
}

struct gc_walk {
	struct chunkify_ctx *c;
	struct name_set live;
	struct gc_report *rep;
	struct str_list keys;
};

static int collect_key(void *arg, const char *key)
{
	struct gc_walk *w = arg;
	return str_list_add(&w->keys, key);
}

/* "leases/<id>.<n>" -> length of "leases/<id>" */
static size_t lease_id_len(const char *key)
{
	const char *dot = strrchr(key, '.');
	return dot ? (size_t)(dot - key) : strlen(key);
}

/* An import writes one lease part per batch, so a lease is alive while its
 * newest part is younger than the TTL, however long the import runs. */
static bool lease_alive(const struct gc_walk *w, const double *ages, size_t i)
{
	size_t idl = lease_id_len(w->keys.items[i]);
	for (size_t k = 0; k < w->keys.n; k++)
		if (ages[k] >= 0 && ages[k] < w->c->lease_ttl && lease_id_len(w->keys.items[k]) == idl &&
		    memcmp(w->keys.items[k], w->keys.items[i], idl) == 0)
			return true;
	return false;
}

static int protect_leases(struct gc_walk *w)
{
	int r = store_list(w->c->store, LEASE_PREFIX, collect_key, w);
	double *ages = r == 0 ? calloc(w->keys.n ? w->keys.n : 1, sizeof(*ages)) : NULL;
	if (r == 0 && !ages)
		r = -ENOMEM;
	for (size_t i = 0; r == 0 && i < w->keys.n; i++) {
		r = store_age(w->c->store, w->keys.items[i], &ages[i]);
		if (r == -ENOENT) { /* its import finished meanwhile: the manifest covers it */
			ages[i] = -1;
			r = 0;
		}
	}
	for (size_t i = 0; r == 0 && i < w->keys.n; i++) {
		if (ages[i] < 0)
			continue;
		if (!lease_alive(w, ages, i)) {
			log_warn("ignoring lease %s: %.0f s old, its import must have died", w->keys.items[i], ages[i]);
			w->rep->leases_expired++;
			continue;
		}
		uint8_t *buf;
		size_t len;
		r = store_get(w->c->store, w->keys.items[i], 64u << 20, &buf, &len);
		if (r == -ENOENT) {
			r = 0;
			continue;
		}
		if (r < 0)
			break;
		w->rep->leases_live++;
		/* Header line, then one chunk name per line. */
		const char *text = (const char *)buf;
		size_t pos = 0;
		while (pos < len && text[pos] != '\n')
			pos++;
		pos++;
		while (r == 0 && pos + CHUNK_NAME_HEX_LEN < len + 1) {
			char name[CHUNK_NAME_HEX_LEN + 1];
			memcpy(name, text + pos, CHUNK_NAME_HEX_LEN);
			name[CHUNK_NAME_HEX_LEN] = 0;
			if (is_sha256_hex(name))
				r = set_add_hex(&w->live, name);
			pos += CHUNK_NAME_HEX_LEN + 1;
		}
		free(buf);
	}
	free(ages);
	str_list_clear(&w->keys);
	return r;
}

static int protect_manifests(struct gc_walk *w)
{
	int r = store_list(w->c->store, "manifests/", collect_key, w);
	for (size_t i = 0; r == 0 && i < w->keys.n; i++) {
		const char *digest = w->keys.items[i] + strlen("manifests/");
		if (!is_sha256_hex(digest))
			continue;
		struct manifest m;
		r = image_load(w->c->store, digest, NULL, &m);
		if (r < 0) {
			log_err("gc: cannot read manifest %s, so cannot tell which chunks it needs; nothing was deleted. "
				"Fix or remove that manifest, then run gc again",
				digest);
			break;
		}
		for (size_t k = 0; r == 0 && k < m.n_chunks; k++)
			r = set_add_hex(&w->live, m.chunks[k].name);
		manifest_cleanup(&m);
		w->rep->manifests++;
	}
	str_list_clear(&w->keys);
	return r;
}

#define MARKER_REFRESH_SECONDS 60.0

static int sweep(struct gc_walk *w, bool dry_run, const char *marker)
{
	int r = store_list(w->c->store, "chunks/", collect_key, w);
	double refreshed = now_seconds();
	for (size_t i = 0; r == 0 && i < w->keys.n; i++) {
		/* Keep the marker fresh on a long sweep, or imports would take it
		 * for a dead collection's and stop waiting. */
		if (now_seconds() - refreshed > MARKER_REFRESH_SECONDS) {
			if ((r = store_put(w->c->store, GC_MARKER, marker, strlen(marker))) < 0)
				break;
			refreshed = now_seconds();
		}
		const char *name = w->keys.items[i] + strlen("chunks/");
		uint8_t bin[SHA256_LEN];
		w->rep->chunks_seen++;
		if (!is_sha256_hex(name) || hex_decode(name, bin, SHA256_LEN) < 0)
			continue; /* not ours to judge */
		if (w->live.n && bsearch(bin, w->live.names, w->live.n, SHA256_LEN, cmp_name))
			continue;
		if (!dry_run && (r = store_delete(w->c->store, w->keys.items[i])) < 0)
			break;
		w->rep->chunks_deleted++;
	}
	str_list_clear(&w->keys);
	return r;
}

int chunkify_gc(struct chunkify_ctx *c, bool dry_run, struct gc_report *rep)
{
	memset(rep, 0, sizeof(*rep));
	int r = gc_marker_active(c);
	if (r < 0)
		return r;
	if (r > 0) {
		log_err("another gc is running on %s (%s exists); if none is, delete that object or wait for it to "
			"expire",
			store_describe(c->store), GC_MARKER);
		return -EBUSY;
	}
	char marker[256], host[128] = "";
	gethostname(host, sizeof(host) - 1);
	snprintf(marker, sizeof(marker), "kindling-gc/1 host=%s pid=%d\n", host, (int)getpid());
	if ((r = store_put(c->store, GC_MARKER, marker, strlen(marker))) < 0)
		return r;

	struct gc_walk w = {.c = c, .rep = rep};
	r = protect_leases(&w);
	if (r == 0)
		r = protect_manifests(&w);
	if (r == 0) {
		if (w.live.n) /* qsort(NULL, 0) is undefined */
			qsort(w.live.names, w.live.n, SHA256_LEN, cmp_name);
		rep->live_chunks = w.live.n;
		r = sweep(&w, dry_run, marker);
	}
	free(w.live.names);
	int dr = store_delete(c->store, GC_MARKER);
	if (dr < 0)
		log_warn("could not remove %s; imports will wait until it expires", GC_MARKER);
	return r;
}
