/* blockd: attached images as lazily filled block devices.
 *
 * A read maps byte offsets to chunk indexes.  An index the manifest does not
 * list is a hole and reads as zeros without any fetch; a stored chunk is read
 * through cache_read, which verifies it and makes concurrent readers of one
 * chunk share one fetch.  Readahead within a chunk is implicit (the cache
 * tiers hold whole chunks); readahead into the next chunks runs on a small
 * pool of background threads when an image is read sequentially.  A read of
 * a chunk not yet resident counts as a demand fetch while it runs; trace
 * prefetch (prefetch.c) starts nothing while any is in flight.
 *
 * Lifetime: the image table holds one reference per attached image; FUSE
 * handles, background jobs and prefetch threads hold their own, so a
 * detached image is freed only after the last reader is done with it.
 */
#include "internal.h"
#include "common/erofs_format.h"

#include <errno.h>
#include <jansson.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* ---- images ------------------------------------------------------------------------------------------------ */

void blockd_image_ref(struct blockd_image *img) { atomic_fetch_add(&img->refs, 1); }

static void image_free(struct blockd_image *img)
{
	if (img->fs)
		erofs_close(img->fs);
	pthread_mutex_destroy(&img->fs_lock);
	trace_free(img->trace);
	manifest_cleanup(&img->m);
	free((void *)img->chunk_state);
	free(img->name);
	free(img->given);
	free(img);
}

void blockd_image_unref(struct blockd_image *img)
{
	if (img && atomic_fetch_sub(&img->refs, 1) == 1)
		image_free(img);
}

static int chunk_cmp(const void *key, const void *elem)
{
	uint64_t k = *(const uint64_t *)key;
	uint64_t i = ((const struct manifest_chunk *)elem)->index;
	return k < i ? -1 : k > i;
}

const struct manifest_chunk *blockd_image_chunk(const struct blockd_image *img, uint64_t index)
{
	if (img->m.n_chunks == 0)
		return NULL; /* never bsearch a NULL array */
	return bsearch(&index, img->m.chunks, img->m.n_chunks, sizeof(img->m.chunks[0]), chunk_cmp);
}

uint64_t blockd_image_size(const struct blockd_image *img) { return img->m.image_size; }
const struct manifest *blockd_image_manifest(const struct blockd_image *img) { return &img->m; }
const char *blockd_image_name(const struct blockd_image *img) { return img->name; }
const char *blockd_image_digest(const struct blockd_image *img) { return img->digest; }

/* Mark chunk |index| as read by a reader; the first time, count it and tell
 * the trace recorder. */
static void note_read(struct blockd_image *img, uint64_t index)
{
	uint8_t old = atomic_fetch_or(&img->chunk_state[index], CHUNK_READ | CHUNK_RESIDENT);
	if (old & CHUNK_READ)
		return;
	atomic_fetch_add(&img->c.chunks_read, 1);
	if (!(old & CHUNK_RESIDENT))
		atomic_fetch_add(&img->c.chunks_resident, 1);
	if (old & CHUNK_PREFETCHED)
		atomic_fetch_add(&img->c.prefetch_used, 1);
	trace_note_first_read(img, index);
}

/* A read or prefetch of chunk |index| served by L2 or L3 brought the whole
 * chunk in; count it once.  Returns true if this was the first time. */
static bool count_fetch(struct blockd_image *img, uint64_t index, enum cache_tier t)
{
	if (t != CACHE_TIER_L2 && t != CACHE_TIER_L3)
		return false;
	if (atomic_fetch_or(&img->chunk_state[index], CHUNK_FETCHED) & CHUNK_FETCHED)
		return false;
	atomic_fetch_add(&img->c.fetched[t], 1);
	return true;
}

static void count_tier(struct blockd_image *img, uint64_t index, enum cache_tier t)
{
	if (t >= CACHE_TIER_COUNT)
		t = CACHE_TIER_NONE;
	atomic_fetch_add(&img->c.chunk_reads[t], 1);
	count_fetch(img, index, t);
}

/* ---- demand reads before prefetch ---------------------------------------------------------------------------- */

static void demand_begin(struct blockd *b)
{
	pthread_mutex_lock(&b->demand_lock);
	b->demand_fetching++;
	pthread_mutex_unlock(&b->demand_lock);
}

static void demand_end(struct blockd *b)
{
	pthread_mutex_lock(&b->demand_lock);
	if (--b->demand_fetching == 0)
		pthread_cond_broadcast(&b->demand_idle);
	pthread_mutex_unlock(&b->demand_lock);
}

bool blockd_demand_wait_idle(struct blockd *b, _Atomic bool *stop, _Atomic uint64_t *yield_count)
{
	pthread_mutex_lock(&b->demand_lock);
	bool counted = false;
	/* Ends when the last demand fetch lands (every fetch returns: the
	 * tiers time out) or when |*stop| is set and blockd_demand_wake runs. */
	while (b->demand_fetching > 0 && !atomic_load(stop)) {
		if (!counted && yield_count)
			atomic_fetch_add(yield_count, 1);
		counted = true;
		pthread_cond_wait(&b->demand_idle, &b->demand_lock);
	}
	bool stopped = atomic_load(stop);
	pthread_mutex_unlock(&b->demand_lock);
	return stopped;
}

void blockd_demand_wake(struct blockd *b)
{
	pthread_mutex_lock(&b->demand_lock);
	pthread_cond_broadcast(&b->demand_idle);
	pthread_mutex_unlock(&b->demand_lock);
}

/* Sequential readers get the next chunks fetched in the background.  A read
 * that starts where a recent stream ended extends it; one that starts
 * anywhere else begins a new stream in the least recently used slot.
 * Readahead starts only when a read continues a stream that has already
 * read cfg.readahead_min_run contiguous bytes, so the short adjacent reads
 * the kernel makes over neighbouring small files (two 128 KiB windows)
 * fetch nothing extra.  While a startup trace covers the start, chunks it
 * does not list are not read ahead (trace_allows_readahead).  Races between
 * readers only cost a missed or an extra readahead. */
static void maybe_readahead(struct blockd_image *img, uint64_t off, uint64_t end)
{
	struct blockd *b = img->b;
	uint64_t clock = atomic_fetch_add(&img->stream_clock, 1) + 1;
	size_t slot = BLOCKD_STREAMS, oldest = 0;
	for (size_t i = 0; i < BLOCKD_STREAMS && slot == BLOCKD_STREAMS; i++) {
		if (atomic_load(&img->stream_end[i]) == off)
			slot = i;
		else if (atomic_load(&img->stream_used[i]) < atomic_load(&img->stream_used[oldest]))
			oldest = i;
	}
	bool seq = slot < BLOCKD_STREAMS;
	uint64_t before = 0; /* contiguous bytes the stream read before this read */
	if (seq)
		before = atomic_load(&img->stream_run[slot]);
	else
		slot = oldest; /* a new stream replaces the least recently used */
	atomic_store(&img->stream_used[slot], clock);
	atomic_store(&img->stream_run[slot], before + (end - off));
	atomic_store(&img->stream_end[slot], end);
	uint64_t min_run = b->cfg.readahead_min_run ? b->cfg.readahead_min_run : BLOCKD_READAHEAD_MIN_RUN;
	if (!seq || before < min_run || b->cfg.no_readahead)
		return;
	unsigned want = b->cfg.readahead_chunks ? b->cfg.readahead_chunks : 1;
	uint64_t idx = (end - 1) / CHUNK_SIZE + 1;
	for (unsigned got = 0; got < want && idx < img->n_indexes; idx++) {
		if (!blockd_image_chunk(img, idx))
			continue; /* holes need no fetch */
		got++;
		uint8_t st = atomic_load(&img->chunk_state[idx]);
		if (st & (CHUNK_QUEUED | CHUNK_RESIDENT))
			continue;
		if (!trace_allows_readahead(img, idx)) {
			if (!(atomic_fetch_or(&img->chunk_state[idx], CHUNK_UNTRACED) & CHUNK_UNTRACED))
				atomic_fetch_add(&img->c.readahead_untraced, 1);
			continue;
		}
		st = atomic_fetch_or(&img->chunk_state[idx], CHUNK_QUEUED);
		if (st & (CHUNK_QUEUED | CHUNK_RESIDENT))
			continue;
		if (blockd_queue_fetch(img, idx, false))
			atomic_fetch_add(&img->c.readahead_issued, 1);
		else
			atomic_fetch_and(&img->chunk_state[idx], (uint8_t)~CHUNK_QUEUED);
	}
}

int blockd_image_read(struct blockd_image *img, uint64_t off, void *buf, size_t len)
{
	uint64_t size = img->m.image_size;
	if (off > size || len > size - off)
		return -EINVAL;
	uint64_t end = off + len;
	uint8_t *p = buf;
	uint64_t pos = off;
	while (pos < end) {
		uint64_t index = pos / CHUNK_SIZE;
		uint32_t coff = (uint32_t)(pos % CHUNK_SIZE);
		size_t n = (size_t)(end - pos < CHUNK_SIZE - coff ? end - pos : CHUNK_SIZE - coff);
		const struct manifest_chunk *mc = blockd_image_chunk(img, index);
		if (!mc) {
			memset(p, 0, n);
			atomic_fetch_add(&img->c.hole_bytes, n);
		} else {
			enum cache_tier tier = CACHE_TIER_NONE;
			/* A chunk not yet resident is (likely) a fetch: trace prefetch
			 * holds back until it is done.  Resident chunks take no lock. */
			bool demand = !(atomic_load(&img->chunk_state[index]) & CHUNK_RESIDENT);
			if (demand)
				demand_begin(img->b);
			int r = cache_read(img->b->cache, mc->name, mc->key, coff, p, n, &tier);
			if (demand)
				demand_end(img->b);
			if (r < 0) {
				atomic_fetch_add(&img->c.read_errors, 1);
				atomic_fetch_or(&img->chunk_state[index], CHUNK_FAILED);
				log_err("image %s: read at offset %llu: chunk %llu (%s) is unavailable from every tier: "
					"%s; only reads of this chunk fail (is the origin reachable, and was the chunk "
					"garbage-collected?)",
					img->name, (unsigned long long)pos, (unsigned long long)index, mc->name,
					strerror(-r));
				return -EIO;
			}
			count_tier(img, index, tier);
			note_read(img, index);
		}
		p += n;
		pos += n;
	}
	atomic_fetch_add(&img->c.bytes_read, len);
	trace_note_read_range(img, off, len);
	maybe_readahead(img, off, end);
	atomic_fetch_add(&img->c.reads, 1);
	return 0;
}

static int dev_read_at(void *ctx, uint64_t off, void *buf, size_t len)
{
	return blockd_image_read(ctx, off, buf, len);
}

int blockd_image_fs(struct blockd_image *img, struct erofs_fs **out)
{
	pthread_mutex_lock(&img->fs_lock);
	/* A failure is remembered only for a bad image: an EIO from a chunk that
	 * could not be fetched may go away when the origin comes back. */
	if (!img->fs && img->fs_err != -EUCLEAN) {
		img->fs_err = erofs_open(&img->dev, &img->fs);
		if (img->fs_err < 0)
			log_err("image %s: cannot open its EROFS tree for rootfs/: %s", img->name,
				strerror(-img->fs_err));
	}
	int r = img->fs ? 0 : img->fs_err;
	*out = img->fs;
	pthread_mutex_unlock(&img->fs_lock);
	return r;
}

/* ---- walking the file tree ---------------------------------------------------------------------------------- */

#define WALK_MAX_DEPTH 256
#define WALK_MAX_PATH 8192

struct walk_entry {
	char *name;
	uint64_t nid;
	unsigned type;
};

struct walk_list {
	struct walk_entry *v;
	size_t n, cap;
	int err;
};

static int walk_collect(void *arg, const char *name, size_t name_len, uint64_t nid, unsigned file_type,
			uint64_t next_cookie)
{
	(void)next_cookie;
	struct walk_list *l = arg;
	if ((name_len == 1 && name[0] == '.') || (name_len == 2 && name[0] == '.' && name[1] == '.'))
		return 0;
	if (file_type != EROFS_FT_DIR && file_type != EROFS_FT_REG_FILE)
		return 0;
	if (l->n == l->cap) {
		size_t cap = l->cap ? l->cap * 2 : 32;
		struct walk_entry *v = realloc(l->v, cap * sizeof(*v));
		if (!v) {
			l->err = -ENOMEM;
			return 1;
		}
		l->v = v;
		l->cap = cap;
	}
	char *copy = strndup(name, name_len);
	if (!copy) {
		l->err = -ENOMEM;
		return 1;
	}
	l->v[l->n++] = (struct walk_entry){ .name = copy, .nid = nid, .type = file_type };
	return 0;
}

/* Walk directory |dir| whose path (|len| bytes, "" for the root) is in
 * |path|. */
static int walk_dir(struct blockd_image *img, struct erofs_fs *fs, uint64_t dir, char *path, size_t len,
		    unsigned depth, blockd_file_cb cb, void *arg)
{
	if (depth > WALK_MAX_DEPTH) {
		log_err("image %s: directories nest deeper than %u at \"%s\": a corrupt image", img->name,
			WALK_MAX_DEPTH, path);
		return -EUCLEAN;
	}
	struct walk_list l = { 0 };
	int r = erofs_readdir(fs, dir, 0, walk_collect, &l);
	if (r == 0)
		r = l.err;
	for (size_t i = 0; r == 0 && i < l.n; i++) {
		const struct walk_entry *e = &l.v[i];
		size_t nl = strlen(e->name);
		if (len + 1 + nl >= WALK_MAX_PATH) {
			log_err("image %s: a path under \"%s\" is longer than %d bytes: a corrupt image", img->name,
				path, WALK_MAX_PATH - 1);
			r = -EUCLEAN;
			break;
		}
		size_t at = len ? len + 1 : 0;
		if (len)
			path[len] = '/';
		memcpy(path + at, e->name, nl + 1);
		if (e->type == EROFS_FT_DIR) {
			r = walk_dir(img, fs, e->nid, path, at + nl, depth + 1, cb, arg);
		} else {
			uint64_t off, dlen;
			r = erofs_data_extent(fs, e->nid, &off, &dlen);
			if (r == 0 && dlen)
				r = cb(arg, path, off, dlen);
		}
		path[len] = '\0';
	}
	for (size_t i = 0; i < l.n; i++)
		free(l.v[i].name);
	free(l.v);
	return r;
}

int blockd_image_walk_files(struct blockd_image *img, blockd_file_cb cb, void *arg)
{
	struct erofs_fs *fs;
	int r = blockd_image_fs(img, &fs);
	if (r < 0)
		return r;
	char *path = calloc(WALK_MAX_PATH, 1);
	if (!path)
		return -ENOMEM;
	r = walk_dir(img, fs, erofs_root(fs), path, 0, 0, cb, arg);
	free(path);
	return r;
}

/* ---- background fetches ------------------------------------------------------------------------------------ */

int blockd_fetch_chunk(struct blockd_image *img, uint64_t index, bool prefetch)
{
	const struct manifest_chunk *mc = blockd_image_chunk(img, index);
	if (!mc)
		return 0;
	enum cache_tier tier = CACHE_TIER_NONE;
	int r = cache_prefetch(img->b->cache, mc->name, mc->key, &tier);
	if (r < 0) {
		atomic_fetch_and(&img->chunk_state[index], (uint8_t)~CHUNK_QUEUED);
		if (prefetch)
			atomic_fetch_add(&img->c.prefetch_errors, 1);
		log_warn("image %s: %s of chunk %llu failed: %s", img->name, prefetch ? "prefetch" : "readahead",
			 (unsigned long long)index, strerror(-r));
		return r;
	}
	if (count_fetch(img, index, tier))
		atomic_fetch_add(prefetch ? &img->c.prefetch_fetched : &img->c.readahead_fetched, 1);
	uint8_t old = atomic_fetch_or(&img->chunk_state[index], CHUNK_RESIDENT);
	if (!(old & CHUNK_RESIDENT))
		atomic_fetch_add(&img->c.chunks_resident, 1);
	return 0;
}

bool blockd_queue_fetch(struct blockd_image *img, uint64_t index, bool prefetch)
{
	struct blockd *b = img->b;
	bool ok = false;
	pthread_mutex_lock(&b->q_lock);
	if (!b->q_stop && b->q_len < b->q_cap) {
		blockd_image_ref(img);
		b->q[(b->q_head + b->q_len) % b->q_cap] = (struct bg_job){ .img = img, .index = index, .prefetch = prefetch };
		b->q_len++;
		pthread_cond_signal(&b->q_cond);
		ok = true;
	}
	pthread_mutex_unlock(&b->q_lock);
	return ok;
}

static void *worker_main(void *arg)
{
	struct blockd *b = arg;
	for (;;) {
		pthread_mutex_lock(&b->q_lock);
		while (!b->q_stop && b->q_len == 0)
			pthread_cond_wait(&b->q_cond, &b->q_lock);
		if (b->q_stop) {
			pthread_mutex_unlock(&b->q_lock);
			return NULL;
		}
		struct bg_job j = b->q[b->q_head];
		b->q_head = (b->q_head + 1) % b->q_cap;
		b->q_len--;
		pthread_mutex_unlock(&b->q_lock);
		/* A chunk a reader got to first needs no background fetch. */
		if (!atomic_load(&j.img->detached) && !(atomic_load(&j.img->chunk_state[j.index]) & CHUNK_RESIDENT))
			blockd_fetch_chunk(j.img, j.index, j.prefetch);
		blockd_image_unref(j.img);
	}
}

static void stop_workers(struct blockd *b)
{
	pthread_mutex_lock(&b->q_lock);
	b->q_stop = true;
	pthread_cond_broadcast(&b->q_cond);
	pthread_mutex_unlock(&b->q_lock);
	for (size_t i = 0; i < b->n_workers; i++)
		pthread_join(b->workers[i], NULL);
	b->n_workers = 0;
	while (b->q_len) {
		blockd_image_unref(b->q[b->q_head].img);
		b->q_head = (b->q_head + 1) % b->q_cap;
		b->q_len--;
	}
}

/* ---- the image table ------------------------------------------------------------------------------------- */

struct blockd_image *blockd_image_by_serial(struct blockd *b, uint16_t serial)
{
	pthread_mutex_lock(&b->lock);
	struct blockd_image *img = b->images[serial % BLOCKD_MAX_IMAGES];
	if (img && img->serial == serial)
		blockd_image_ref(img);
	else
		img = NULL;
	pthread_mutex_unlock(&b->lock);
	return img;
}

int blockd_list_images(struct blockd *b, struct blockd_image ***out, size_t *out_n)
{
	pthread_mutex_lock(&b->lock);
	size_t n = 0;
	for (size_t i = 0; i < BLOCKD_MAX_IMAGES; i++)
		n += b->images[i] != NULL;
	struct blockd_image **v = calloc(n ? n : 1, sizeof(*v));
	if (!v) {
		pthread_mutex_unlock(&b->lock);
		return -ENOMEM;
	}
	n = 0;
	for (size_t i = 0; i < BLOCKD_MAX_IMAGES; i++)
		if (b->images[i]) {
			blockd_image_ref(b->images[i]);
			v[n++] = b->images[i];
		}
	pthread_mutex_unlock(&b->lock);
	*out = v;
	*out_n = n;
	return 0;
}

/* Caller holds b->lock. */
static struct blockd_image *find_locked(struct blockd *b, const char *image, const char *digest)
{
	for (size_t i = 0; i < BLOCKD_MAX_IMAGES; i++) {
		struct blockd_image *img = b->images[i];
		if (img && (strcmp(img->name, image) == 0 || strcmp(img->given, image) == 0 ||
			    strcmp(img->digest, image) == 0 ||
			    (digest && strcmp(img->digest, digest) == 0)))
			return img;
	}
	return NULL;
}

struct blockd_image *blockd_find(struct blockd *b, const char *image)
{
	const char *hex = strncmp(image, "sha256:", 7) == 0 ? image + 7 : image;
	pthread_mutex_lock(&b->lock);
	struct blockd_image *img = find_locked(b, image, hex);
	pthread_mutex_unlock(&b->lock);
	return img;
}

/* Restart the NBD server with the current export list.  Caller holds
 * b->lock.  Images being detached are out of the table already; stopping the
 * old server joins its client threads, so no NBD read of them remains. */
static void nbd_refresh_locked(struct blockd *b)
{
	if (!b->nbd_address)
		return;
	nbd_server_stop(b->nbd);
	b->nbd = NULL;
	struct nbd_export ex[BLOCKD_MAX_IMAGES];
	size_t n = 0;
	for (size_t i = 0; i < BLOCKD_MAX_IMAGES; i++)
		if (b->images[i])
			ex[n++] = (struct nbd_export){ .name = b->images[i]->name, .dev = &b->images[i]->dev,
						       .description = b->images[i]->digest };
	if (n == 0)
		return;
	int r = nbd_server_start(b->nbd_address, ex, n, &b->access, &b->nbd);
	if (r < 0)
		log_err("nbd: cannot restart the server on %s after the attached set changed: %s", b->nbd_address,
			strerror(-r));
}

/* The directory name of an image under the mount: what was given to attach,
 * with '/' (legal in image names, not in file names) as '_'. */
static char *display_name(const char *image)
{
	char *s = strdup(image);
	for (char *p = s; p && *p; p++)
		if (*p == '/')
			*p = '_';
	return s;
}

int blockd_attach(struct blockd *b, const char *image, struct blockd_image **out)
{
	if (!image || !*image || strlen(image) > 400 || strcmp(image, ".") == 0 || strcmp(image, "..") == 0) {
		log_err("attach: bad image name \"%s\" (expected NAME[:TAG] or a manifest digest)", image ? image : "");
		return -EINVAL;
	}
	char digest[SHA256_HEX_LEN + 1];
	pthread_mutex_lock(&b->store_lock);
	int r = image_resolve(b->store, image, b->env.tenant_key, digest);
	pthread_mutex_unlock(&b->store_lock);
	if (r < 0)
		return r;
	char *name = display_name(image);
	if (!name)
		return -ENOMEM;
	pthread_mutex_lock(&b->lock);
	struct blockd_image *img = find_locked(b, name, digest);
	pthread_mutex_unlock(&b->lock);
	if (img) {
		free(name);
		if (out)
			*out = img;
		return 0;
	}

	img = calloc(1, sizeof(*img));
	if (!img) {
		free(name);
		return -ENOMEM;
	}
	img->b = b;
	img->name = name;
	img->given = strdup(image);
	if (!img->given) {
		image_free(img);
		return -ENOMEM;
	}
	memcpy(img->digest, digest, sizeof(digest));
	atomic_init(&img->refs, 1);
	pthread_mutex_init(&img->fs_lock, NULL);
	pthread_mutex_lock(&b->store_lock);
	r = image_load(b->store, digest, b->env.tenant_key, &img->m);
	pthread_mutex_unlock(&b->store_lock);
	if (r < 0) {
		log_err("attach %s: cannot load manifest %s from %s", image, digest, store_describe(b->store));
		image_free(img);
		return r;
	}
	if (img->m.kind != MANIFEST_KIND_IMAGE) {
		log_err("attach %s: manifest %s is a micro-VM %s, not an image: it has no filesystem to serve; "
			"restore it with `kindling snapshot-serve %s`", image, digest, manifest_kind_name(img->m.kind),
			image);
		image_free(img);
		return -EMEDIUMTYPE;
	}
	img->n_indexes = img->m.image_size / CHUNK_SIZE;
	img->chunk_state = calloc(img->n_indexes ? img->n_indexes : 1, 1);
	if (!img->chunk_state) {
		image_free(img);
		return -ENOMEM;
	}
	img->dev = (struct blockdev){ .read_at = dev_read_at, .size = img->m.image_size, .ctx = img };
	img->attached_at = now_seconds();
	if (trace_init(img) < 0) {
		image_free(img);
		return -ENOMEM;
	}

	pthread_mutex_lock(&b->lock);
	struct blockd_image *other = find_locked(b, name, digest);
	if (other) { /* attached by a concurrent caller meanwhile */
		pthread_mutex_unlock(&b->lock);
		image_free(img);
		if (out)
			*out = other;
		return 0;
	}
	unsigned serial = 0;
	for (unsigned tries = 0; tries < 65535 && !serial; tries++) {
		unsigned s = b->next_serial;
		b->next_serial = b->next_serial >= 65535 ? 1 : b->next_serial + 1;
		if (!b->images[s % BLOCKD_MAX_IMAGES])
			serial = s;
	}
	if (!serial) {
		pthread_mutex_unlock(&b->lock);
		log_err("attach %s: %u images are attached already; detach some first", image, BLOCKD_MAX_IMAGES);
		image_free(img);
		return -ENOSPC;
	}
	img->serial = (uint16_t)serial;
	b->images[serial % BLOCKD_MAX_IMAGES] = img;
	nbd_refresh_locked(b);
	pthread_mutex_unlock(&b->lock);

	/* Starting a trace recording or prefetch is best effort: the image is
	 * served either way. */
	trace_attach(img);
	if (b->fuse)
		fuse_notify_root_change(b->fuse, img->name);
	log_info("attached %s (manifest %s, %llu bytes, %zu of %llu chunks stored)", img->name, digest,
		 (unsigned long long)img->m.image_size, img->m.n_chunks, (unsigned long long)img->n_indexes);
	if (out)
		*out = img;
	return 0;
}

int blockd_detach(struct blockd *b, const char *image)
{
	const char *hex = strncmp(image, "sha256:", 7) == 0 ? image + 7 : image;
	pthread_mutex_lock(&b->lock);
	struct blockd_image *img = find_locked(b, image, hex);
	if (!img) {
		pthread_mutex_unlock(&b->lock);
		return -ENOENT;
	}
	b->images[img->serial % BLOCKD_MAX_IMAGES] = NULL;
	atomic_store(&img->detached, true);
	nbd_refresh_locked(b);
	pthread_mutex_unlock(&b->lock);
	trace_detach(img);
	if (b->fuse)
		fuse_notify_root_change(b->fuse, img->name);
	log_info("detached %s", img->name);
	blockd_image_unref(img);
	return 0;
}

/* ---- stats ------------------------------------------------------------------------------------------------- */

static double ratio(uint64_t a, uint64_t b) { return b ? (double)a / (double)b : 0.0; }

char *blockd_image_stats_json(struct blockd_image *img)
{
	struct blockd_counters *c = &img->c;
	json_t *o = json_object();
	json_t *served = json_object(), *hit = json_object(), *fetched = json_object();
	json_t *ra = json_object();
	if (!o || !served || !hit || !fetched || !ra) {
		json_decref(o);
		json_decref(served);
		json_decref(hit);
		json_decref(fetched);
		json_decref(ra);
		return NULL;
	}
	uint64_t total = 0, nfetched = 0;
	for (int t = CACHE_TIER_MEM; t < CACHE_TIER_COUNT; t++)
		total += atomic_load(&c->chunk_reads[t]);
	for (int t = CACHE_TIER_MEM; t < CACHE_TIER_COUNT; t++) {
		uint64_t v = atomic_load(&c->chunk_reads[t]);
		json_object_set_new(served, cache_tier_name(t), json_integer((json_int_t)v));
		json_object_set_new(hit, cache_tier_name(t), json_real(ratio(v, total)));
	}
	for (int t = CACHE_TIER_L2; t <= CACHE_TIER_L3; t++) {
		uint64_t v = atomic_load(&c->fetched[t]);
		nfetched += v;
		json_object_set_new(fetched, cache_tier_name(t), json_integer((json_int_t)v));
	}
	json_object_set_new(o, "image", json_string(img->name));
	json_object_set_new(o, "digest", json_string(img->digest));
	json_object_set_new(o, "source_ref", json_string(img->m.source_ref ? img->m.source_ref : ""));
	json_object_set_new(o, "image_size", json_integer((json_int_t)img->m.image_size));
	json_object_set_new(o, "chunk_size", json_integer(CHUNK_SIZE));
	json_object_set_new(o, "chunks_total", json_integer((json_int_t)img->n_indexes));
	json_object_set_new(o, "chunks_stored", json_integer((json_int_t)img->m.n_chunks));
	json_object_set_new(o, "chunks_read", json_integer((json_int_t)atomic_load(&c->chunks_read)));
	json_object_set_new(o, "chunks_resident", json_integer((json_int_t)atomic_load(&c->chunks_resident)));
	json_object_set_new(o, "chunks_fetched", json_integer((json_int_t)nfetched));
	json_object_set_new(o, "fetched_by_tier", fetched);
	json_object_set_new(o, "bytes_fetched", json_integer((json_int_t)(nfetched * CHUNK_SIZE)));
	json_object_set_new(o, "reads", json_integer((json_int_t)atomic_load(&c->reads)));
	json_object_set_new(o, "bytes_read", json_integer((json_int_t)atomic_load(&c->bytes_read)));
	json_object_set_new(o, "hole_bytes_read", json_integer((json_int_t)atomic_load(&c->hole_bytes)));
	json_object_set_new(o, "read_errors", json_integer((json_int_t)atomic_load(&c->read_errors)));
	json_object_set_new(o, "served_by_tier", served);
	json_object_set_new(o, "hit_rate", hit);
	json_object_set_new(ra, "issued", json_integer((json_int_t)atomic_load(&c->readahead_issued)));
	json_object_set_new(ra, "fetched", json_integer((json_int_t)atomic_load(&c->readahead_fetched)));
	json_object_set_new(ra, "untraced", json_integer((json_int_t)atomic_load(&c->readahead_untraced)));
	json_object_set_new(o, "readahead", ra);
	trace_stats(img, o);
	json_object_set_new(o, "attached_seconds", json_real(now_seconds() - img->attached_at));
	char *s = json_dumps(o, JSON_INDENT(2) | JSON_PRESERVE_ORDER);
	json_decref(o);
	if (!s)
		return NULL;
	/* A trailing newline, as a file a human cats should have. */
	char *t = xasprintf("%s\n", s);
	free(s);
	return t;
}

/* ---- the service ------------------------------------------------------------------------------------------- */

int blockd_new(const struct blockd_config *cfg, struct blockd **out)
{
	if (!cfg || !cfg->cache.origin_uri) {
		log_err("blockd: no origin store configured (--store URI)");
		return -EINVAL;
	}
	struct blockd *b = calloc(1, sizeof(*b));
	if (!b)
		return -ENOMEM;
	b->cfg = *cfg;
	b->cfg.socket_group = NULL; /* not kept: resolved into b->access */
	/* Prefetch keeps at most half the origin's parallel fetches, so a
	 * demand read always finds a free one. */
	unsigned origin_par = cfg->cache.origin_parallel ? cfg->cache.origin_parallel : 8;
	unsigned pf_max = origin_par / 2 ? origin_par / 2 : 1;
	if (!b->cfg.prefetch_parallel)
		b->cfg.prefetch_parallel = 4;
	if (b->cfg.prefetch_parallel > pf_max)
		b->cfg.prefetch_parallel = pf_max;
	b->next_serial = 1;
	pthread_mutex_init(&b->lock, NULL);
	pthread_mutex_init(&b->store_lock, NULL);
	pthread_mutex_init(&b->q_lock, NULL);
	pthread_cond_init(&b->q_cond, NULL);
	pthread_mutex_init(&b->demand_lock, NULL);
	pthread_cond_init(&b->demand_idle, NULL);
	int r = sock_access_init(&b->access, cfg->socket_group, cfg->nbd_allow_remote);
	if (r < 0) { /* logged, naming the group */
		blockd_free(b);
		return r;
	}
	if ((r = kindling_env_load(&b->env, 0)) < 0)
		goto fail;
	if ((r = store_open(cfg->cache.origin_uri, cfg->cache.origin_options, &b->store)) < 0)
		goto fail;
	struct cache_config cc = cfg->cache;
	if (!cc.salt) { /* check keys with the deployment salt chunkify uses */
		cc.salt = b->env.salt;
		cc.salt_len = b->env.salt_len;
	}
	r = cache_new(&cc, &b->cache);
	if (r < 0)
		goto fail;
	b->cfg.cache = (struct cache_config){ 0 }; /* its strings were borrowed */
	b->q_cap = 1024;
	b->q = calloc(b->q_cap, sizeof(*b->q));
	size_t nw = cfg->fetch_threads ? cfg->fetch_threads : 4;
	b->workers = calloc(nw, sizeof(*b->workers));
	if (!b->q || !b->workers) {
		r = -ENOMEM;
		goto fail;
	}
	for (; b->n_workers < nw; b->n_workers++) {
		int e = pthread_create(&b->workers[b->n_workers], NULL, worker_main, b);
		if (e) {
			r = -e;
			goto fail;
		}
	}
	*out = b;
	return 0;
fail:
	log_err("blockd: cannot start: %s", strerror(-r));
	blockd_free(b);
	return r;
}

void blockd_free(struct blockd *b)
{
	if (!b)
		return;
	/* Unmount first so no new FUSE request arrives, then stop the NBD
	 * server, then the background pool, then detach. */
	if (b->fuse) {
		fuse_stop(b->fuse);
		b->fuse = NULL;
	}
	pthread_mutex_lock(&b->lock);
	nbd_server_stop(b->nbd);
	b->nbd = NULL;
	free(b->nbd_address);
	b->nbd_address = NULL;
	pthread_mutex_unlock(&b->lock);
	stop_workers(b);
	for (size_t i = 0; i < BLOCKD_MAX_IMAGES; i++) {
		struct blockd_image *img = b->images[i];
		if (!img)
			continue;
		b->images[i] = NULL;
		atomic_store(&img->detached, true);
		trace_detach(img);
		blockd_image_unref(img);
	}
	cache_free(b->cache);
	store_free(b->store);
	kindling_env_cleanup(&b->env);
	free(b->q);
	free(b->workers);
	pthread_cond_destroy(&b->q_cond);
	pthread_mutex_destroy(&b->q_lock);
	pthread_cond_destroy(&b->demand_idle);
	pthread_mutex_destroy(&b->demand_lock);
	pthread_mutex_destroy(&b->store_lock);
	pthread_mutex_destroy(&b->lock);
	free(b);
}

int blockd_nbd_start(struct blockd *b, const char *address)
{
	pthread_mutex_lock(&b->lock);
	if (b->nbd_address) {
		pthread_mutex_unlock(&b->lock);
		log_err("nbd: already serving on %s", b->nbd_address);
		return -EBUSY;
	}
	int r = 0;
	/* Bind now even with nothing attached, to fail early on a bad address
	 * and to fix a tcp port 0 for the restarts to come. */
	size_t n = 0;
	struct nbd_export ex[BLOCKD_MAX_IMAGES];
	for (size_t i = 0; i < BLOCKD_MAX_IMAGES; i++)
		if (b->images[i])
			ex[n++] = (struct nbd_export){ .name = b->images[i]->name, .dev = &b->images[i]->dev,
						       .description = b->images[i]->digest };
	struct blockdev empty = { .read_at = dev_read_at, .size = 0, .ctx = NULL };
	struct nbd_export placeholder = { .name = "", .dev = &empty, .description = NULL };
	r = nbd_server_start(address, n ? ex : &placeholder, n ? n : 1, &b->access, &b->nbd);
	bool remote = false;
	if (r == 0 && nbd_server_is_tcp(b->nbd, &remote) && remote)
		log_warn("nbd: serving on %s, which other hosts can reach (--nbd-allow-remote): NBD has no "
			 "authentication or encryption, so anyone who can connect reads every attached image; "
			 "firewall the port",
			 nbd_server_address(b->nbd));
	else if (r == 0 && nbd_server_is_tcp(b->nbd, &remote))
		log_warn("nbd: serving on %s: every local user can connect and read the attached images (TCP "
			 "carries no credentials to check); use --nbd unix:PATH to limit NBD to root and uid %u%s%s",
			 nbd_server_address(b->nbd), (unsigned)geteuid(),
			 b->access.has_group ? " and group " : "", b->access.has_group ? b->access.group : "");
	if (r == 0) {
		b->nbd_address = strdup(nbd_server_address(b->nbd));
		if (!b->nbd_address)
			r = -ENOMEM;
		if (n == 0 || r < 0) {
			/* The placeholder lives on this stack: stop it now. */
			nbd_server_stop(b->nbd);
			b->nbd = NULL;
		}
	}
	pthread_mutex_unlock(&b->lock);
	return r;
}

const char *blockd_nbd_address(struct blockd *b) { return b->nbd_address; }

int blockd_mount(struct blockd *b, const char *mountpoint, const struct blockd_mount_options *opt)
{
	if (b->fuse) {
		log_err("blockd: already mounted");
		return -EBUSY;
	}
	return fuse_start(b, mountpoint, opt, &b->fuse);
}

const char *blockd_mountpoint(const struct blockd *b) { return b->fuse ? fuse_mountpoint(b->fuse) : NULL; }
