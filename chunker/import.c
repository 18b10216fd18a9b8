/* chunkify import: source -> flattened image -> sealed chunks -> store.
 *
 * Four kinds of thread, so fetching, tar parsing, crypto and I/O overlap:
 *   - layer openers: up to |jobs| layers at once are opened (a registry
 *     layer is downloaded whole) and their first megabytes read, checked
 *     and decompressed (flatten.c's layer_reader, which then keeps reading
 *     ahead of the parser), so the next layer's download runs while an
 *     earlier one is still being flattened;
 *   - the caller's thread parses the layers' tars strictly in layer order
 *     and fills 512 KiB chunk buffers (flatten.c), then hands each to the
 *     work queue; layer order is what keeps the image deterministic;
 *   - |workers| seal threads drop zero chunks and encrypt the rest;
 *   - one upload thread takes sealed chunks in batches, records them in the
 *     import's lease, checks which names the store lacks in one pipelined
 *     request and uploads only those.
 * Buffers come from a fixed pool, so memory stays bounded however large the
 * image is, and a slow store slows the reader instead of filling memory.
 *
 * Publishing order is what makes a failed import invisible: every chunk,
 * then the manifest, then the ref.  The lease (leases/<id>.<n>) names the chunks
 * this import relies on before it checks they exist, which is how a
 * concurrent `chunkify gc` knows not to delete them (see gc.c).
 */
#include "internal.h"

#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#define POOL_BUFFERS_PER_WORKER 2
#define DEFAULT_LAYER_JOBS 2
#define MAX_WORKERS 16
/* How far a layer opened ahead is read before it waits for its turn.  A
 * 32 MiB read-ahead imported no faster (bench/results/2026-12-07-import/),
 * and it makes the parser read buffers that have left the CPU cache.  What
 * a layer opened ahead saves is the open itself, which for a registry is
 * the whole download. */
#define LAYER_READ_AHEAD (4u << 20)
#define UPLOAD_BATCH 32
#define GC_WAIT_SECONDS 600

struct job {
	uint64_t index;
	uint8_t *buf; /* plain in [0, CHUNK_SIZE), cipher in [CHUNK_SIZE, 2*CHUNK_SIZE); NULL for zero */
	const uint8_t *plain; /* lent plaintext (sink_emit_lent) in place of buf's first half, or NULL */
	bool zero;
	uint8_t key[CHUNK_KEY_LEN];
	char name[CHUNK_NAME_HEX_LEN + 1];
};

/* A bounded FIFO of jobs. */
struct queue {
	struct job *items;
	size_t cap, head, len;
};

struct chunk_slot {
	bool present; /* non-zero chunk */
	uint8_t key[CHUNK_KEY_LEN];
	char name[CHUNK_NAME_HEX_LEN + 1];
};

struct pipeline {
	struct chunkify_ctx *c;
	pthread_mutex_t mu;
	pthread_cond_t changed;
	uint8_t **pool;
	size_t pool_len, pool_cap;
	struct queue work, sealed;
	bool input_done;   /* no more work will be queued */
	unsigned workers_running;
	int err;	   /* first error; stops everything */

	/* owned by the upload thread until it exits */
	struct chunk_slot *slots;
	uint64_t n_slots;
	char lease_id[17];	/* leases/<id>.<n>: one part per batch */
	unsigned lease_parts;
	char lease_header[1024];
	uint64_t chunks_new, chunks_dedup, chunks_zero, bytes_uploaded;

	/* progress, read by the caller's thread */
	uint64_t chunks_done;
};

static int queue_init(struct queue *q, size_t cap)
{
	q->items = calloc(cap, sizeof(*q->items));
	q->cap = cap;
	q->head = q->len = 0;
	return q->items ? 0 : -ENOMEM;
}

static void queue_push(struct queue *q, const struct job *j)
{
	q->items[(q->head + q->len) % q->cap] = *j;
	q->len++;
}

static struct job queue_pop(struct queue *q)
{
	struct job j = q->items[q->head];
	q->head = (q->head + 1) % q->cap;
	q->len--;
	return j;
}

static void fail_locked(struct pipeline *p, int err)
{
	if (!p->err)
		p->err = err;
	pthread_cond_broadcast(&p->changed);
}

static bool cancelled(const struct pipeline *p)
{
	return p->c->cancel && *p->c->cancel;
}

/* ---- chunk_sink, called from the flattening thread ------------------------- */

static uint8_t *sink_get_buffer(void *ctx)
{
	struct pipeline *p = ctx;
	pthread_mutex_lock(&p->mu);
	while (p->pool_len == 0 && !p->err)
		pthread_cond_wait(&p->changed, &p->mu);
	uint8_t *b = p->err ? NULL : p->pool[--p->pool_len];
	pthread_mutex_unlock(&p->mu);
	return b;
}

static void sink_put_buffer(void *ctx, uint8_t *buf)
{
	struct pipeline *p = ctx;
	pthread_mutex_lock(&p->mu);
	p->pool[p->pool_len++] = buf;
	pthread_cond_broadcast(&p->changed);
	pthread_mutex_unlock(&p->mu);
}

static int queue_job(struct pipeline *p, const struct job *jp)
{
	struct job j = *jp;
	uint8_t *data = j.buf;
	pthread_mutex_lock(&p->mu);
	if (cancelled(p))
		fail_locked(p, -EINTR);
	while (p->work.len == p->work.cap && !p->err)
		pthread_cond_wait(&p->changed, &p->mu);
	int err = p->err;
	if (!err) {
		queue_push(&p->work, &j);
		pthread_cond_broadcast(&p->changed);
	}
	pthread_mutex_unlock(&p->mu);
	if (err && data)
		sink_put_buffer(p, data);
	return err;
}

static int sink_emit(void *ctx, uint64_t index, uint8_t *data)
{
	return queue_job(ctx, &(struct job){.index = index, .buf = data, .zero = data == NULL});
}

/* The plaintext stays where the layer stream lent it; the buffer only takes
 * the ciphertext, so the chunk is never copied before it is sealed. */
static int sink_emit_lent(void *ctx, uint64_t index, const uint8_t *plain)
{
	struct pipeline *p = ctx;
	uint8_t *buf = sink_get_buffer(p);
	if (!buf) {
		pthread_mutex_lock(&p->mu);
		int err = p->err;
		pthread_mutex_unlock(&p->mu);
		return err ? err : -ENOMEM;
	}
	return queue_job(p, &(struct job){.index = index, .buf = buf, .plain = plain});
}

/* ---- seal workers ------------------------------------------------------------ */

static void *seal_worker(void *arg)
{
	struct pipeline *p = arg;
	pthread_mutex_lock(&p->mu);
	for (;;) {
		while (p->work.len == 0 && !p->input_done && !p->err)
			pthread_cond_wait(&p->changed, &p->mu);
		if (p->err || (p->work.len == 0 && p->input_done))
			break;
		struct job j = queue_pop(&p->work);
		pthread_cond_broadcast(&p->changed);
		pthread_mutex_unlock(&p->mu);

		int r = 0;
		const uint8_t *plain = j.plain ? j.plain : j.buf;
		if (j.buf && is_all_zero(plain, CHUNK_SIZE)) {
			sink_put_buffer(p, j.buf);
			j.buf = NULL;
			j.plain = NULL;
			j.zero = true;
		}
		if (j.buf)
			r = chunk_seal(p->c->env.salt, p->c->env.salt_len, plain, CHUNK_SIZE, j.key, j.buf + CHUNK_SIZE, j.name);

		pthread_mutex_lock(&p->mu);
		/* Zero chunks hold no buffer, so a long hole can outrun the
		 * uploader: wait for room rather than assume it. */
		while (r == 0 && p->sealed.len == p->sealed.cap && !p->err)
			pthread_cond_wait(&p->changed, &p->mu);
		if (r < 0 || p->err) {
			if (r < 0)
				fail_locked(p, r);
			if (j.buf)
				p->pool[p->pool_len++] = j.buf;
			break;
		}
		queue_push(&p->sealed, &j);
		pthread_cond_broadcast(&p->changed);
	}
	p->workers_running--;
	pthread_cond_broadcast(&p->changed);
	pthread_mutex_unlock(&p->mu);
	return NULL;
}

/* ---- upload thread ------------------------------------------------------------ */

static int record_slot(struct pipeline *p, const struct job *j)
{
	if (j->index >= p->n_slots) {
		uint64_t n = p->n_slots ? p->n_slots : 1024;
		while (n <= j->index)
			n *= 2;
		struct chunk_slot *s = realloc(p->slots, n * sizeof(*s));
		if (!s)
			return -ENOMEM;
		memset(s + p->n_slots, 0, (n - p->n_slots) * sizeof(*s));
		p->slots = s;
		p->n_slots = n;
	}
	if (j->zero) {
		p->chunks_zero++;
		return 0;
	}
	struct chunk_slot *s = &p->slots[j->index];
	s->present = true;
	memcpy(s->key, j->key, CHUNK_KEY_LEN);
	memcpy(s->name, j->name, sizeof(s->name));
	return 0;
}

/* Add a part to this import's lease naming the batch's chunks.  One part
 * per batch keeps the lease writes linear in the image size. */
static int write_lease(struct pipeline *p, const struct job *batch, size_t n)
{
	size_t hl = strlen(p->lease_header);
	char *text = malloc(hl + n * (CHUNK_NAME_HEX_LEN + 1) + 1);
	if (!text)
		return -ENOMEM;
	memcpy(text, p->lease_header, hl);
	char *w = text + hl;
	for (size_t i = 0; i < n; i++) {
		if (batch[i].zero)
			continue;
		memcpy(w, batch[i].name, CHUNK_NAME_HEX_LEN);
		w[CHUNK_NAME_HEX_LEN] = '\n';
		w += CHUNK_NAME_HEX_LEN + 1;
	}
	char key[64];
	snprintf(key, sizeof(key), LEASE_PREFIX "%s.%u", p->lease_id, p->lease_parts);
	int r = store_put(p->c->store, key, text, (size_t)(w - text));
	free(text);
	if (r == 0)
		p->lease_parts++;
	return r;
}

/* Delete every part of this import's lease. */
static void drop_lease(struct pipeline *p)
{
	for (unsigned i = 0; i < p->lease_parts; i++) {
		char key[64];
		snprintf(key, sizeof(key), LEASE_PREFIX "%s.%u", p->lease_id, i);
		store_delete(p->c->store, key);
	}
	p->lease_parts = 0;
}

/* Wait while a garbage collection runs: it may be about to delete a chunk we
 * are going to find present.  Our lease is written first, so a collection
 * that starts after this check sees it (gc.c). */
static int wait_for_gc(struct pipeline *p)
{
	double start = now_seconds();
	bool told = false;
	for (;;) {
		int r = gc_marker_active(p->c);
		if (r <= 0)
			return r;
		if (cancelled(p))
			return -EINTR;
		if (now_seconds() - start > GC_WAIT_SECONDS) {
			log_err("a garbage collection has held %s in %s for over %d s; retry later, or delete that object "
				"if no gc is running",
				GC_MARKER, store_describe(p->c->store), GC_WAIT_SECONDS);
			return -EBUSY;
		}
		if (!told)
			log_warn("waiting for a running `chunkify gc` to finish");
		told = true;
		usleep(200 * 1000);
	}
}

static int upload_batch(struct pipeline *p, struct job *batch, size_t n)
{
	int r = write_lease(p, batch, n);
	if (r < 0)
		return r;
	if ((r = wait_for_gc(p)) < 0)
		return r;

	char keys[UPLOAD_BATCH][7 + CHUNK_NAME_HEX_LEN + 1];
	const char *key_ptrs[UPLOAD_BATCH];
	bool exists[UPLOAD_BATCH];
	size_t m = 0;
	size_t map[UPLOAD_BATCH];
	for (size_t i = 0; i < n; i++) {
		if (batch[i].zero)
			continue;
		/* The same chunk twice in one batch is uploaded once. */
		bool dup = false;
		for (size_t k = 0; k < m && !dup; k++)
			dup = strcmp(batch[map[k]].name, batch[i].name) == 0;
		if (dup) {
			p->chunks_dedup++;
			continue;
		}
		snprintf(keys[m], sizeof(keys[m]), "chunks/%s", batch[i].name);
		key_ptrs[m] = keys[m];
		map[m++] = i;
	}
	if (m == 0)
		return 0;
	if ((r = store_exists_batch(p->c->store, key_ptrs, m, exists)) < 0)
		return r;
	const char *put_keys[UPLOAD_BATCH];
	const void *put_bufs[UPLOAD_BATCH];
	size_t put_lens[UPLOAD_BATCH];
	size_t np = 0;
	for (size_t k = 0; k < m; k++) {
		if (exists[k]) {
			p->chunks_dedup++;
			continue;
		}
		put_keys[np] = key_ptrs[k];
		put_bufs[np] = batch[map[k]].buf + CHUNK_SIZE;
		put_lens[np] = CHUNK_SIZE;
		np++;
	}
	if (np && (r = store_put_batch(p->c->store, put_keys, put_bufs, put_lens, np)) < 0)
		return r;
	p->chunks_new += np;
	p->bytes_uploaded += (uint64_t)np * CHUNK_SIZE;
	return 0;
}

static void *upload_thread(void *arg)
{
	struct pipeline *p = arg;
	struct job batch[UPLOAD_BATCH];
	for (;;) {
		size_t n = 0;
		pthread_mutex_lock(&p->mu);
		while (p->sealed.len == 0 && p->workers_running > 0 && !p->err)
			pthread_cond_wait(&p->changed, &p->mu);
		if (p->err || (p->sealed.len == 0 && p->workers_running == 0)) {
			pthread_mutex_unlock(&p->mu);
			break;
		}
		while (n < UPLOAD_BATCH && p->sealed.len)
			batch[n++] = queue_pop(&p->sealed);
		pthread_cond_broadcast(&p->changed);
		pthread_mutex_unlock(&p->mu);

		int r = 0;
		for (size_t i = 0; i < n && r == 0; i++)
			r = record_slot(p, &batch[i]);
		if (r == 0)
			r = upload_batch(p, batch, n);
		if (r == 0 && cancelled(p))
			r = -EINTR;

		pthread_mutex_lock(&p->mu);
		for (size_t i = 0; i < n; i++)
			if (batch[i].buf)
				p->pool[p->pool_len++] = batch[i].buf;
		p->chunks_done += n;
		if (r < 0)
			fail_locked(p, r);
		pthread_cond_broadcast(&p->changed);
		pthread_mutex_unlock(&p->mu);
		if (r < 0)
			break;
	}
	return NULL;
}

/* ---- progress ------------------------------------------------------------------- */

static void draw_progress(struct pipeline *p, size_t layer, size_t n_layers, double start, bool final)
{
	pthread_mutex_lock(&p->mu);
	uint64_t done = p->chunks_done;
	pthread_mutex_unlock(&p->mu);
	double mib = (double)done * CHUNK_SIZE / (1 << 20);
	double secs = now_seconds() - start;
	unsigned width = 30, fill = n_layers ? (unsigned)(width * layer / n_layers) : width;
	char bar[64];
	for (unsigned i = 0; i < width; i++)
		bar[i] = i < fill ? '=' : (i == fill ? '>' : ' ');
	bar[width] = 0;
	fprintf(stderr, "\r[%s] layer %zu/%zu  %.0f MiB  %.0f MB/s ", bar, layer, n_layers, mib,
		secs > 0 ? mib * 1.048576 / secs : 0.0);
	if (final)
		fputc('\n', stderr);
	fflush(stderr);
}

/* ---- the import ----------------------------------------------------------------- */

static int derive_name_tag(const char *source, char *out, size_t out_len)
{
	/* Last path component of the source, without tag or digest. */
	const char *s = strchr(source, ':') ? strchr(source, ':') + 1 : source;
	while (*s == '/')
		s++;
	char tmp[512];
	snprintf(tmp, sizeof(tmp), "%s", s);
	char *at = strchr(tmp, '@');
	if (at)
		*at = 0;
	char *slash = strrchr(tmp, '/');
	char *base = slash ? slash + 1 : tmp;
	char *colon = strchr(base, ':');
	const char *tag = "latest";
	if (colon) {
		*colon = 0;
		tag = colon + 1;
	}
	char *dot = strstr(base, ".tar");
	if (dot)
		*dot = 0;
	for (char *q = base; *q; q++)
		if (*q >= 'A' && *q <= 'Z')
			*q = (char)(*q - 'A' + 'a');
	char nt[600];
	snprintf(nt, sizeof(nt), "%s:%s", *base ? base : "image", *tag ? tag : "latest");
	return image_parse_name_tag(nt, out, out_len);
}

/* Publish |tmpl| (everything but the chunk table, which comes from the
 * pipeline's slots) as rep->ref: the manifest, then the ref. */
static int publish(struct chunkify_ctx *c, struct pipeline *p, const struct manifest *tmpl, struct import_report *rep)
{
	struct manifest m = *tmpl;
	int r = 0;
	m.chunk_size = CHUNK_SIZE;
	uint64_t n_total = m.image_size / CHUNK_SIZE;
	m.n_chunks = 0;
	m.chunks = calloc(n_total ? n_total : 1, sizeof(*m.chunks));
	if (!m.chunks)
		return -ENOMEM;
	for (uint64_t i = 0; i < n_total && i < p->n_slots; i++) {
		if (!p->slots[i].present)
			continue;
		struct manifest_chunk *mc = &m.chunks[m.n_chunks++];
		mc->index = i;
		memcpy(mc->key, p->slots[i].key, CHUNK_KEY_LEN);
		memcpy(mc->name, p->slots[i].name, sizeof(mc->name));
	}

	uint8_t *enc;
	size_t enc_len;
	if ((r = manifest_encode(&m, c->env.tenant_key, &enc, &enc_len)) < 0)
		goto out;
	uint8_t d[SHA256_LEN];
	sha256_buf(enc, enc_len, d);
	hex_encode(d, SHA256_LEN, rep->manifest_digest);
	char key[600];
	snprintf(key, sizeof(key), "manifests/%s", rep->manifest_digest);
	r = store_put(c->store, key, enc, enc_len);
	free(enc);
	if (r < 0)
		goto out;
	rep->bytes_uploaded += enc_len;

	if ((r = image_ref_put(c->store, c->env.tenant_key, rep->ref, rep->manifest_digest)) < 0) {
		/* A manifest no ref names is garbage; do not leave it behind. */
		store_delete(c->store, key);
		goto out;
	}
out:
	free(m.chunks);
	return r;
}

/* One run of the pipeline: the seal workers, the upload thread and the
 * buffer pool, whatever produces the chunks. */
struct import_run {
	struct pipeline p;
	pthread_t *threads;
	unsigned started;
	pthread_t uploader;
	bool uploader_started;
	uint8_t *pool_mem;
	size_t pool_bytes;
};

/* Set up |run| and start its threads; rep->ref names the import in its
 * lease.  On failure run_stop and run_cleanup still apply. */
static int run_start(struct chunkify_ctx *c, const struct import_options *opt, struct import_report *rep,
		     struct import_run *run)
{
	struct pipeline *p = &run->p;
	long ncpu = sysconf(_SC_NPROCESSORS_ONLN);
	/* One seal worker per core: the readers, the parser and the uploader
	 * block often enough (on their queues, on I/O) that keeping a core back
	 * for them left it idle; bench/README.md has the measurements. */
	unsigned workers = opt->workers ? opt->workers : (unsigned)(ncpu < 1 ? 1 : ncpu > MAX_WORKERS ? MAX_WORKERS : ncpu);
	rep->workers = workers;
	p->c = c;
	pthread_mutex_init(&p->mu, NULL);
	pthread_cond_init(&p->changed, NULL);
	p->pool_cap = (size_t)workers * POOL_BUFFERS_PER_WORKER + UPLOAD_BATCH + 2;
	p->pool = calloc(p->pool_cap, sizeof(*p->pool));
	run->threads = calloc(workers, sizeof(*run->threads));
	if (!p->pool || !run->threads || queue_init(&p->work, p->pool_cap) < 0 ||
	    queue_init(&p->sealed, p->pool_cap * 2) < 0)
		return -ENOMEM;
	/* One populated mapping for every buffer: faulting pages in one at a
	 * time on first use costs more than sealing them on some hosts. */
	run->pool_bytes = p->pool_cap * 2 * (size_t)CHUNK_SIZE;
	run->pool_mem = mmap(NULL, run->pool_bytes, PROT_READ | PROT_WRITE,
			     MAP_PRIVATE | MAP_ANONYMOUS | MAP_POPULATE, -1, 0);
	if (run->pool_mem == MAP_FAILED) {
		run->pool_mem = NULL;
		return -ENOMEM;
	}
	for (; p->pool_len < p->pool_cap; p->pool_len++)
		p->pool[p->pool_len] = run->pool_mem + p->pool_len * 2 * (size_t)CHUNK_SIZE;

	uint8_t lease_id[8];
	char host[64] = "";
	random_bytes(lease_id, sizeof(lease_id));
	hex_encode(lease_id, sizeof(lease_id), p->lease_id);
	gethostname(host, sizeof(host) - 1);
	snprintf(p->lease_header, sizeof(p->lease_header), "kindling-lease/1 host=%s pid=%d ref=%s\n", host,
		 (int)getpid(), rep->ref);

	p->workers_running = workers;
	for (; run->started < workers; run->started++)
		if (pthread_create(&run->threads[run->started], NULL, seal_worker, p) != 0) {
			pthread_mutex_lock(&p->mu);
			p->workers_running -= workers - run->started;
			fail_locked(p, -EAGAIN);
			pthread_mutex_unlock(&p->mu);
			return -EAGAIN;
		}
	if (pthread_create(&run->uploader, NULL, upload_thread, p) != 0)
		return -EAGAIN;
	run->uploader_started = true;
	return 0;
}

/* No more input: wait for the threads, fill |rep|'s counters, and return
 * |r|, or the pipeline's own error, which was logged where it happened. */
static int run_stop(struct import_run *run, int r, struct import_report *rep)
{
	struct pipeline *p = &run->p;
	if (!p->pool)
		return r;
	pthread_mutex_lock(&p->mu);
	if (r < 0)
		fail_locked(p, r);
	p->input_done = true;
	pthread_cond_broadcast(&p->changed);
	pthread_mutex_unlock(&p->mu);
	for (unsigned i = 0; i < run->started; i++)
		pthread_join(run->threads[i], NULL);
	run->started = 0;
	if (!run->uploader_started) {
		/* No uploader: the workers' output has nowhere to go. */
		pthread_mutex_lock(&p->mu);
		fail_locked(p, r ? r : -EAGAIN);
		pthread_mutex_unlock(&p->mu);
	} else
		pthread_join(run->uploader, NULL);
	run->uploader_started = false;
	if (r == 0 && p->err)
		r = p->err;
	/* A failure inside the pipeline may have stopped the producer early;
	 * report the pipeline's reason. */
	if (r < 0 && p->err && r != p->err)
		r = p->err;
	rep->chunks_new = p->chunks_new;
	rep->chunks_dedup = p->chunks_dedup;
	rep->bytes_uploaded = p->bytes_uploaded;
	rep->chunks_zero = p->chunks_zero;
	return r;
}

/* Drop the lease and free everything run_start set up (after run_stop). */
static void run_cleanup(struct import_run *run)
{
	struct pipeline *p = &run->p;
	drop_lease(p);
	/* After a failure, buffers may still sit in the queues. */
	while (p->work.items && p->work.len) {
		struct job j = queue_pop(&p->work);
		if (j.buf)
			p->pool[p->pool_len++] = j.buf;
	}
	while (p->sealed.items && p->sealed.len) {
		struct job j = queue_pop(&p->sealed);
		if (j.buf)
			p->pool[p->pool_len++] = j.buf;
	}
	if (run->pool_mem)
		munmap(run->pool_mem, run->pool_bytes);
	free(p->pool);
	free(p->work.items);
	free(p->sealed.items);
	free(p->slots);
	free(run->threads);
	if (p->c) {
		pthread_mutex_destroy(&p->mu);
		pthread_cond_destroy(&p->changed);
	}
}

static void log_failure(const char *what, int r, uint64_t chunks_new)
{
	if (chunks_new)
		log_err("import of %s %s; nothing was published (%llu chunks it uploaded stay in the store until "
			"`chunkify gc` collects them)",
			what, r == -EINTR ? "interrupted" : "failed", (unsigned long long)chunks_new);
	else
		log_err("import of %s %s; nothing was published", what, r == -EINTR ? "interrupted" : "failed");
}

/* rep->ref from |name_tag| (NAME[:TAG]), or derived from |source|. */
static int set_ref(const char *name_tag, const char *source, struct import_report *rep)
{
	char key[512];
	int r = name_tag ? image_parse_name_tag(name_tag, key, sizeof(key)) : derive_name_tag(source, key, sizeof(key));
	if (r < 0)
		return r;
	snprintf(rep->ref, sizeof(rep->ref), "%s", key);
	char *slash = strrchr(rep->ref, '/');
	if (slash)
		*slash = ':';
	return 0;
}

/* One layer opened, and read ahead, before the flattener gets to it. */
struct layer_ahead {
	struct oci_source *src;
	size_t index;
	pthread_t thread;
	bool thread_started;	/* an opener thread runs or ran: join it */
	bool opened;		/* open_layer_ahead has run */
	struct byte_stream *stream;
	struct layer_reader *reader;
	int err;		/* 0 or the -errno the open failed with (logged) */
};

static void *open_layer_ahead(void *arg)
{
	struct layer_ahead *la = arg;
	la->stream = oci_source_open_layer(la->src, la->index);
	if (!la->stream)
		la->err = errno ? -errno : -EIO;
	else
		la->err = layer_reader_start(la->stream, LAYER_READ_AHEAD, &la->reader);
	return NULL;
}

/* Start opening layer |la| on a thread of its own; where no thread can be
 * had, the layer is opened when its turn comes instead. */
static void layer_ahead_start(struct layer_ahead *la)
{
	if (la->thread_started || la->opened)
		return;
	la->thread_started = pthread_create(&la->thread, NULL, open_layer_ahead, la) == 0;
}

/* Wait until |la| is open (opening it here if no thread did).  Returns 0 or
 * the open's -errno. */
static int layer_ahead_wait(struct layer_ahead *la)
{
	if (la->thread_started) {
		pthread_join(la->thread, NULL);
		la->thread_started = false;
	} else if (!la->opened) {
		open_layer_ahead(la);
	}
	la->opened = true;
	return la->err;
}

/* Stop |la|'s reader and close its stream; an opener still running is waited
 * for (a registry download in progress finishes first). */
static void layer_ahead_cleanup(struct layer_ahead *la)
{
	if (la->thread_started)
		pthread_join(la->thread, NULL);
	la->thread_started = false;
	layer_reader_free(la->reader);
	la->reader = NULL;
	byte_stream_close(la->stream);
	la->stream = NULL;
}

static int import_image(struct chunkify_ctx *c, const char *source, const struct import_options *opt,
			struct import_report *rep, uint64_t *chunks_uploaded)
{
	double start = now_seconds();
	int r = set_ref(opt->name_tag, source, rep);
	if (r < 0)
		return r;

	char *tmp_dir = kindling_env_path(&c->env, "tmp");
	if (!tmp_dir)
		return -ENOMEM;
	mkdir_p(tmp_dir, 0700);
	struct oci_source_options so = {.insecure = opt->insecure, .tmp_dir = tmp_dir};
	struct oci_source *src = NULL;
	const struct oci_image *img = NULL;
	r = oci_source_open(source, &so, &src, &img);
	if (r < 0) {
		free(tmp_dir);
		return r;
	}

	struct import_run run = {0};
	struct pipeline *p = &run.p;
	struct layer_region *regions = calloc(img->n_layers ? img->n_layers : 1, sizeof(*regions));
	struct flattener f = {0};
	struct erofs_image_layout layout = {0};
	r = regions ? run_start(c, opt, rep, &run) : -ENOMEM;
	const struct chunk_sink sink = {.get_buffer = sink_get_buffer,
					.put_buffer = sink_put_buffer,
					.emit = sink_emit,
					.emit_lent = sink_emit_lent,
					.ctx = p};
	if (r == 0)
		r = flattener_init(&f, &sink, opt->max_image_size ? opt->max_image_size : (1ull << 40));
	f.spool_dir = tmp_dir; /* cold file data waits beside the staged blobs */

	size_t jobs = opt->jobs ? opt->jobs : DEFAULT_LAYER_JOBS;
	struct layer_ahead *ahead = calloc(img->n_layers ? img->n_layers : 1, sizeof(*ahead));
	if (!ahead && r == 0)
		r = -ENOMEM;
	for (size_t i = 0; ahead && i < img->n_layers; i++)
		ahead[i] = (struct layer_ahead){.src = src, .index = i};
	for (size_t i = 0; i < img->n_layers && r == 0; i++) {
		char what[160];
		snprintf(what, sizeof(what), "layer %zu (%.19s)", i + 1, img->layers[i].digest);
		if (opt->progress)
			draw_progress(p, i, img->n_layers, start, false);
		/* Layers i+1 .. i+jobs-1 open and read ahead while layer i is
		 * flattened; with one job, each opens in its turn. */
		for (size_t k = i + 1; jobs > 1 && k < img->n_layers && k < i + jobs; k++)
			layer_ahead_start(&ahead[k]);
		r = layer_ahead_wait(&ahead[i]);
		f.layer_layout = layout_plan_layer(opt->layout, img->layers[i].digest);
		if (r == 0)
			r = flatten_layer_read(&f, ahead[i].reader, (unsigned)i, what, &regions[i]);
		/* A stream that lent bytes stays open until the pipeline stops
		 * (sink_emit_lent); any other is done with. */
		if (ahead[i].stream && ahead[i].stream->read_ref) {
			layer_reader_free(ahead[i].reader);
			ahead[i].reader = NULL;
		} else {
			layer_ahead_cleanup(&ahead[i]);
		}
		if (r == 0 && cancelled(p))
			r = -EINTR;
	}
	if (r == 0)
		r = flattener_finish(&f, &layout);
	r = run_stop(&run, r, rep);
	/* Only now that no seal worker runs: chunks may still have pointed
	 * into a layer's stream (sink_emit_lent). */
	for (size_t i = 0; ahead && i < img->n_layers; i++)
		layer_ahead_cleanup(&ahead[i]);
	free(ahead);
	if (opt->progress)
		draw_progress(p, r == 0 ? img->n_layers : 0, img->n_layers, start, true);

	if (r == 0) {
		rep->image_size = layout.image_size;
		rep->chunks_total = layout.image_size / CHUNK_SIZE;
		struct manifest m = {
			.kind = MANIFEST_KIND_IMAGE,
			.image_size = layout.image_size,
			.metadata_offset = layout.meta_off,
			/* The run config and source ref stay |img|'s. */
			.source_ref = img->source_ref,
			.config = img->config,
			.n_layers = img->n_layers,
			.layers = calloc(img->n_layers ? img->n_layers : 1, sizeof(*m.layers)),
		};
		snprintf(m.source_manifest_digest, sizeof(m.source_manifest_digest), "%s", img->manifest_digest);
		snprintf(m.source_config_digest, sizeof(m.source_config_digest), "%s", img->config_digest);
		m.n_layout_traces = layout_plan_sources(opt->layout, m.layout_traces);
		for (size_t i = 0; m.layers && i < img->n_layers; i++) {
			snprintf(m.layers[i].digest, sizeof(m.layers[i].digest), "%s", img->layers[i].digest);
			m.layers[i].offset = regions[i].offset;
			m.layers[i].length = regions[i].length;
		}
		r = m.layers ? publish(c, p, &m, rep) : -ENOMEM;
		free(m.layers);
	}
	/* Chunks already uploaded stay: they are content, and another import may
	 * rely on them; `chunkify gc` frees them if nothing does. */
	if (r < 0)
		log_failure(source, r, p->chunks_new);
	*chunks_uploaded = p->chunks_new;
	/* The flattener hands its unfinished buffer back to the pool: first. */
	flattener_cleanup(&f);
	run_cleanup(&run);
	erofs_layout_cleanup(&layout);
	free(regions);
	oci_source_free(src);
	free(tmp_dir);
	rep->seconds = now_seconds() - start;
	return r;
}

int chunkify_import(struct chunkify_ctx *c, const char *source, const struct import_options *opt,
		    struct import_report *rep)
{
	memset(rep, 0, sizeof(*rep));
	uint64_t chunks_uploaded = 0;
	int r = import_image(c, source, opt, rep, &chunks_uploaded);
	/* A first import that failed before storing anything leaves no store
	 * behind, so a typo in --store does not plant an empty one. */
	if (r < 0 && !chunks_uploaded)
		store_undo_create(c->store);
	return r;
}

int chunkify_import_chunks(struct chunkify_ctx *c, const struct chunk_reader *reader, const struct manifest *tmpl,
			   const struct import_options *opt, struct import_report *rep)
{
	memset(rep, 0, sizeof(*rep));
	double start = now_seconds();
	const char *what = opt->name_tag ? opt->name_tag : "chunks";
	if (!opt->name_tag || tmpl->image_size == 0 || tmpl->image_size % CHUNK_SIZE) {
		log_err("import of %s: needs a NAME[:TAG] and a positive size in whole chunks", what);
		return -EINVAL;
	}
	int r = set_ref(opt->name_tag, NULL, rep);
	if (r < 0)
		return r;
	struct import_run run = {0};
	struct pipeline *p = &run.p;
	uint64_t n_total = tmpl->image_size / CHUNK_SIZE;
	r = run_start(c, opt, rep, &run);
	for (uint64_t i = 0; r == 0 && i < n_total; i++) {
		uint8_t *buf = sink_get_buffer(p);
		if (!buf) {
			r = p->err ? p->err : -ENOMEM;
			break;
		}
		bool zero = false;
		r = reader->read(reader->ctx, i, buf, &zero);
		if (r < 0 || zero) {
			sink_put_buffer(p, buf);
			buf = NULL;
		}
		if (r == 0)
			r = sink_emit(p, i, buf);
		if (r == 0 && opt->progress && i % 64 == 0)
			draw_progress(p, (size_t)i, (size_t)n_total, start, false);
	}
	r = run_stop(&run, r, rep);
	if (opt->progress)
		draw_progress(p, r == 0 ? (size_t)n_total : 0, (size_t)n_total, start, true);
	if (r == 0) {
		rep->image_size = tmpl->image_size;
		rep->chunks_total = n_total;
		r = publish(c, p, tmpl, rep);
	}
	if (r < 0)
		log_failure(what, r, p->chunks_new);
	uint64_t chunks_uploaded = p->chunks_new;
	run_cleanup(&run);
	if (r < 0 && !chunks_uploaded)
		store_undo_create(c->store);
	rep->seconds = now_seconds() - start;
	return r;
}
