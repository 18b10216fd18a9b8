/* Flattening: layer tar streams -> one file tree + the layer data regions.
 *
 * Each layer's regular-file data is laid out in a region that starts on a
 * 512 KiB chunk boundary, every file on a 4 KiB boundary: first the files a
 * start is likely to read, in tar order, then, from a chunk boundary on, the
 * files it almost never reads ("hot and cold data" below says which).  The
 * region depends on nothing but that layer's tar (and, when the import is
 * given one, the files a layout plan from a recorded startup trace lists in
 * it, which go first), so the same layer produces the same chunks in every
 * image that contains it, at any depth.
 * Whiteouts and opaque directories only change the tree; data an upper layer
 * hides stays where it is (its chunk is shared, so it costs nothing).
 *
 * The tar parser is libarchive: it handles ustar, pax (long names, xattrs,
 * 64-bit sizes), GNU long names and all three GNU sparse formats, and it is
 * fuzzed continuously upstream.  Everything it hands us is still treated as
 * hostile: every path is split and checked here, sizes are bounded, and a
 * write through a symlink is refused.
 */
#include "internal.h"

#include <archive.h>
#include <archive_entry.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <unistd.h>

#define WHITEOUT_PREFIX ".wh."
#define OPAQUE_MARKER ".wh..wh..opq"

/* ---- the image byte stream, cut into chunks ------------------------------ */

static int flush_chunk(struct flattener *f)
{
	int r = f->sink->emit(f->sink->ctx, f->chunk_index, f->buf);
	f->buf = NULL;
	f->chunk_index++;
	return r;
}

/* Make sure a buffer for the chunk holding |f->pos| exists.  It is not
 * cleared: every byte of a chunk is either written or skipped, and skipping
 * zeroes exactly the gap, which saves clearing 512 KiB per chunk. */
static int ensure_buffer(struct flattener *f)
{
	if (f->buf)
		return 0;
	f->buf = f->sink->get_buffer(f->sink->ctx);
	return f->buf ? 0 : -ENOMEM;
}

/* Write |<data, len>| at f->pos.  With |lent| the bytes stay valid until the
 * sink is done (see chunk_sink.emit_lent): every whole chunk among them is
 * handed over in place, which saves copying most of a large file. */
static int image_write_from(struct flattener *f, const void *data, size_t len, bool lent)
{
	const uint8_t *p = data;
	while (len) {
		if (lent && f->sink->emit_lent && !f->buf && f->pos % CHUNK_SIZE == 0 && len >= CHUNK_SIZE) {
			int r = f->sink->emit_lent(f->sink->ctx, f->chunk_index, p);
			if (r < 0)
				return r;
			f->chunk_index++;
			f->pos += CHUNK_SIZE;
			p += CHUNK_SIZE;
			len -= CHUNK_SIZE;
			continue;
		}
		int r = ensure_buffer(f);
		if (r < 0)
			return r;
		size_t in_chunk = (size_t)(f->pos % CHUNK_SIZE);
		size_t n = CHUNK_SIZE - in_chunk;
		if (n > len)
			n = len;
		memcpy(f->buf + in_chunk, p, n);
		p += n;
		len -= n;
		f->pos += n;
		if (f->pos % CHUNK_SIZE == 0 && (r = flush_chunk(f)) < 0)
			return r;
	}
	return 0;
}

static int image_write(struct flattener *f, const void *data, size_t len)
{
	return image_write_from(f, data, len, false);
}

/* Advance to |off| leaving zeros.  Whole chunks in a hole are emitted as
 * known-zero without touching memory, so a sparse 1 TiB file costs nothing. */
static int image_skip_to(struct flattener *f, uint64_t off)
{
	if (off < f->pos)
		return -EINVAL;
	if (off > f->max_image_size)
		return -EFBIG;
	while (f->pos < off) {
		int r;
		if (f->pos % CHUNK_SIZE == 0 && off - f->pos >= CHUNK_SIZE && !f->buf) {
			if ((r = f->sink->emit(f->sink->ctx, f->chunk_index, NULL)) < 0)
				return r;
			f->chunk_index++;
			f->pos += CHUNK_SIZE;
			continue;
		}
		if ((r = ensure_buffer(f)) < 0)
			return r;
		uint64_t chunk_end = f->pos - f->pos % CHUNK_SIZE + CHUNK_SIZE;
		uint64_t stop = off < chunk_end ? off : chunk_end;
		memset(f->buf + f->pos % CHUNK_SIZE, 0, (size_t)(stop - f->pos));
		f->pos = stop;
		if (f->pos % CHUNK_SIZE == 0 && (r = flush_chunk(f)) < 0)
			return r;
	}
	return 0;
}

static int image_align(struct flattener *f, uint64_t align)
{
	uint64_t to;
	if (!ck_align_up_u64(f->pos, align, &to))
		return -EFBIG;
	return image_skip_to(f, to);
}

int flattener_init(struct flattener *f, const struct chunk_sink *sink, uint64_t max_image_size)
{
	memset(f, 0, sizeof(*f));
	f->sink = sink;
	f->max_image_size = max_image_size;
	/* Chunk 0 is reserved for the superblock, written last. */
	f->pos = CHUNK_SIZE;
	f->chunk_index = 1;
	f->root = fs_inode_new(S_IFDIR | 0755);
	return f->root ? 0 : -ENOMEM;
}

void flattener_cleanup(struct flattener *f)
{
	if (f->buf && f->sink && f->sink->put_buffer)
		f->sink->put_buffer(f->sink->ctx, f->buf);
	f->buf = NULL;
	fs_inode_unref(f->root);
	f->root = NULL;
	if (f->spooling)
		close(f->spool_fd);
	f->spooling = false;
}

/* ---- paths ---------------------------------------------------------------- */

struct stream_reader;
static bool reader_clean_end(struct stream_reader *sr);
static bool reader_lends(const struct stream_reader *sr, const void *p, size_t len);

/* A file whose data waits in the spool for the end of its layer. */
struct deferred_file {
	struct fs_inode *ino;	/* a reference, dropped when the layer ends */
	uint64_t spool_off, size;
	char *stem;		/* a Python source's path without ".py"; else NULL */
	bool cold;		/* goes after the chunk boundary */
	bool traced;		/* the layout plan lists it: goes first, by |rank| */
	uint64_t rank;
	bool hot;		/* deferred only so that traced files can go first */
};

struct layer_ctx {
	struct flattener *f;
	unsigned layer;
	const char *what;	/* "layer 2 (sha256:ab12cd34ef56)" */
	const char *entry;	/* current entry's path as in the tar */
	struct archive_entry *entry_ae;
	uint64_t region_start;
	uint64_t region_files;
	struct stream_reader *reader;
	bool ended_early;	/* the tar stopped right after complete file data */
	struct deferred_file *deferred; /* in tar order */
	size_t n_deferred, cap_deferred;
	struct str_list pyc_stems; /* "D/X" for each D/__pycache__/X.*.pyc in the layer */
	const struct layout_layer *layout; /* the plan's files in this layer, or NULL */
};

#define entry_err(lc, ...) entry_err_((lc), __VA_ARGS__)
__attribute__((format(printf, 2, 3))) static void entry_err_(const struct layer_ctx *lc, const char *fmt, ...)
{
	char msg[1024];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	log_err("%s: entry \"%s\": %s", lc->what, lc->entry ? lc->entry : "?", msg);
}

/* Split |path| into checked components in |comps| (pointers into |buf|).
 * "./" prefixes and "." components are dropped; ".." and absolute paths are
 * refused because a layer must never name anything outside the image. */
static int split_path(const struct layer_ctx *lc, const char *path, char *buf, size_t bufsz, char **comps,
		      size_t max_comps, size_t *out_n)
{
	size_t len = strlen(path);
	if (len == 0) {
		entry_err(lc, "empty path");
		return -EBADMSG;
	}
	if (len >= bufsz) {
		entry_err(lc, "path longer than %zu bytes", bufsz - 1);
		return -EBADMSG;
	}
	if (path[0] == '/') {
		entry_err(lc, "absolute path; layer entries must be relative to the image root");
		return -EBADMSG;
	}
	memcpy(buf, path, len + 1);
	size_t n = 0;
	char *save = NULL;
	for (char *c = strtok_r(buf, "/", &save); c; c = strtok_r(NULL, "/", &save)) {
		if (strcmp(c, ".") == 0)
			continue;
		if (strcmp(c, "..") == 0) {
			entry_err(lc, "path escapes the image root through \"..\"");
			return -EBADMSG;
		}
		if (strlen(c) > 255) {
			entry_err(lc, "a path component is longer than 255 bytes");
			return -EBADMSG;
		}
		if (n == max_comps) {
			entry_err(lc, "path deeper than %zu components", max_comps);
			return -EBADMSG;
		}
		comps[n++] = c;
	}
	*out_n = n;
	return 0;
}

#define MAX_DEPTH 256
#define MAX_PATH 8192

/* Walk to the directory holding the last of |n| components, creating missing
 * parents as plain root-owned directories (tar streams may omit them).  A
 * parent that is a symlink is refused: following it would let a layer write
 * outside the directory it names. */
static int walk_parents(struct layer_ctx *lc, char **comps, size_t n, struct fs_inode **out_dir)
{
	struct fs_inode *dir = lc->f->root;
	for (size_t i = 0; i + 1 < n; i++) {
		struct fs_dirent *d = fs_dir_lookup(dir, comps[i]);
		if (!d) {
			struct fs_inode *nd = fs_inode_new(S_IFDIR | 0755);
			if (!nd)
				return -ENOMEM;
			int r = fs_dir_add(dir, comps[i], nd, lc->layer);
			fs_inode_unref(nd);
			if (r < 0)
				return r;
			d = fs_dir_lookup(dir, comps[i]);
		} else if (S_ISLNK(d->inode->mode)) {
			entry_err(lc, "parent \"%s\" is a symlink (to \"%s\"); writing through a symlink is refused",
				  comps[i], d->inode->symlink ? d->inode->symlink : "");
			return -EBADMSG;
		} else if (!S_ISDIR(d->inode->mode)) {
			entry_err(lc, "parent \"%s\" is not a directory", comps[i]);
			return -EBADMSG;
		}
		dir = d->inode;
	}
	*out_dir = dir;
	return 0;
}

/* Resolve a complete path (for hard-link targets); NULL if absent. */
static struct fs_inode *resolve(struct layer_ctx *lc, char **comps, size_t n)
{
	struct fs_inode *cur = lc->f->root;
	for (size_t i = 0; i < n; i++) {
		if (!S_ISDIR(cur->mode))
			return NULL;
		struct fs_dirent *d = fs_dir_lookup(cur, comps[i]);
		if (!d)
			return NULL;
		cur = d->inode;
	}
	return cur;
}

/* ---- whiteouts ------------------------------------------------------------ */

/* Hide everything below |dir| that came from a lower layer: the opaque
 * directory's own layer keeps what it wrote, including directories it
 * re-declared, whose lower-layer children are hidden in turn. */
static int make_opaque(struct fs_inode *dir, unsigned layer)
{
	for (size_t i = 0; i < dir->n_children;) {
		struct fs_dirent *d = &dir->children[i];
		if (d->layer < layer) {
			int r = fs_dir_remove(dir, d->name);
			if (r < 0)
				return r;
			continue; /* the slot now holds another entry */
		}
		if (S_ISDIR(d->inode->mode)) {
			int r = make_opaque(d->inode, layer);
			if (r < 0)
				return r;
		}
		i++;
	}
	return 0;
}

/* ---- one entry ------------------------------------------------------------ */

static int copy_metadata(struct layer_ctx *lc, struct fs_inode *ino, struct archive_entry *e)
{
	int64_t uid = archive_entry_uid(e), gid = archive_entry_gid(e);
	if (uid < 0 || uid > UINT32_MAX || gid < 0 || gid > UINT32_MAX) {
		entry_err(lc, "uid/gid %lld/%lld out of range", (long long)uid, (long long)gid);
		return -EBADMSG;
	}
	ino->uid = (uint32_t)uid;
	ino->gid = (uint32_t)gid;
	ino->mode = (ino->mode & S_IFMT) | (archive_entry_perm(e) & 07777);
	ino->mtime = archive_entry_mtime(e);
	long ns = archive_entry_mtime_is_set(e) ? archive_entry_mtime_nsec(e) : 0;
	ino->mtime_nsec = ns >= 0 && ns < 1000000000 ? (uint32_t)ns : 0;

	/* Entries replace xattrs wholesale, as unpacking the layer would. */
	for (size_t i = 0; i < ino->n_xattrs; i++) {
		free(ino->xattrs[i].name);
		free(ino->xattrs[i].value);
	}
	free(ino->xattrs);
	ino->xattrs = NULL;
	ino->n_xattrs = 0;
	archive_entry_xattr_reset(e);
	const char *name;
	const void *value;
	size_t size;
	while (archive_entry_xattr_next(e, &name, &value, &size) == ARCHIVE_OK) {
		if (size > 65535 || strlen(name) > 255) {
			entry_err(lc, "xattr \"%s\" too large for the image format", name);
			return -EBADMSG;
		}
		int r = fs_inode_set_xattr(ino, name, value, size);
		if (r < 0)
			return r;
	}
	return 0;
}

/* True when libarchive stopped because the stream ended, and the stream did
 * end cleanly (no read error, digests fine so far). */
static bool tail_missing(struct layer_ctx *lc, struct archive *a)
{
	const char *msg = archive_error_string(a);
	return msg && strstr(msg, "Truncated input file") && reader_clean_end(lc->reader);
}

/* ---- hot and cold data ---------------------------------------------------- */

/* A start reads a few of an image's files, and a reader fetches whole 512 KiB
 * chunks, so a chunk that mixes a file the start reads with files it never
 * reads is fetched for nothing.  Tar order already keeps one package's files
 * together (builders walk directories depth-first), so most data stays in
 * it.  What a start almost never reads, where tar order mixes it file by
 * file with what a start does read, goes to the end of its layer's region
 * instead, from a chunk boundary on, so that no chunk holds both:
 *  - a Python source D/X.py whose bytecode D/__pycache__/X.*.pyc the same
 *    layer holds: Python only stats the source and reads the bytecode;
 *  - static libraries, *.a, which sit beside the shared libraries;
 *  - Python test suites: a tests/ directory inside site-packages or
 *    dist-packages, beside each package's modules.
 * None of these was opened by the starts of the benchmark suite's workloads
 * (bench/results/2026-12-07-fetch-amp/ has the numbers); a start that does
 * read one just fetches one more chunk.  Whole directories a start never
 * reads (usr/share/doc, usr/include) stay where they are: a tar lists each
 * as one run already, and moving them changed no fetch there.  Every rule
 * looks only at paths in the layer's own tar, so the region still depends
 * on that tar alone.
 *
 * The data arrives in tar order, and whether a source has bytecode is known
 * only when the tar ends, so deferred files wait in a spool file and are
 * copied into the image when the layer ends: sources without bytecode right
 * after the other hot data, then the cold files.  Sparse files stay in place
 * (the spool would fill their holes).
 *
 * With a layout plan from a recorded startup trace (layout_trace.c) that
 * lists files of this layer, those files go first instead, in the order the
 * traced start first read them, and the group ends on a chunk boundary: the
 * chunks a start fetches then hold what it reads and little else, which no
 * rule on paths can achieve (it cannot tell the bytecode a handler imports
 * from the rest of the stdlib).  Every other file of such a layer waits in
 * the spool too, so that the traced ones can go first, and keeps the order
 * above.  A layer the plan lists nothing of never sees this, so it stays
 * byte for byte what it is without a plan, and its chunks dedup as before. */

static bool has_suffix(const char *s, const char *suffix)
{
	size_t n = strlen(s), m = strlen(suffix);
	return n >= m && memcmp(s + n - m, suffix, m) == 0;
}

static bool is_cold_path(char **comps, size_t n)
{
	if (has_suffix(comps[n - 1], ".a"))
		return true;
	for (size_t k = 1; k + 1 < n; k++)
		if (strcmp(comps[k], "tests") == 0)
			for (size_t j = 0; j < k; j++)
				if (has_suffix(comps[j], "-packages"))
					return true;
	return false;
}

/* Join the first |n| components with '/' into |<out, outsz>|.  Returns the
 * length, or -ENAMETOOLONG. */
static int join_comps(char **comps, size_t n, char *out, size_t outsz)
{
	size_t len = 0;
	out[0] = '\0';
	for (size_t i = 0; i < n; i++) {
		int w = snprintf(out + len, outsz - len, "%s%s", i ? "/" : "", comps[i]);
		if (w < 0 || (size_t)w >= outsz - len)
			return -ENAMETOOLONG;
		len += (size_t)w;
	}
	return (int)len;
}

/* If the path is D/__pycache__/X.<tag>.pyc, remember "D/X": the bytecode of
 * D/X.py.  Module names hold no '.', so X ends at the first one. */
static int note_bytecode(struct layer_ctx *lc, char **comps, size_t n)
{
	const char *base = comps[n - 1];
	const char *dot = strchr(base, '.');
	if (n < 2 || strcmp(comps[n - 2], "__pycache__") != 0 || !has_suffix(base, ".pyc") || dot == base)
		return 0;
	char stem[MAX_PATH];
	int len = join_comps(comps, n - 2, stem, sizeof(stem));
	if (len < 0 || (size_t)len + 1 + (size_t)(dot - base) >= sizeof(stem))
		return 0; /* longer than any path split_path accepts: no source matches */
	snprintf(stem + len, sizeof(stem) - (size_t)len, "%s%.*s", len ? "/" : "", (int)(dot - base), base);
	return str_list_add(&lc->pyc_stems, stem);
}

/* The spool: an unlinked file in f->spool_dir, opened when a layer first
 * defers a file and emptied when each layer ends. */
static int spool_open(struct layer_ctx *lc)
{
	struct flattener *f = lc->f;
	if (f->spooling)
		return 0;
	const char *dir = f->spool_dir ? f->spool_dir : getenv("TMPDIR");
	if (!dir || !*dir)
		dir = "/tmp";
	int fd = open(dir, O_TMPFILE | O_RDWR | O_EXCL | O_CLOEXEC, 0600);
	if (fd < 0) {
		/* No O_TMPFILE on this filesystem: a name unlinked at once. */
		char *path = xasprintf("%s/.tmp-kindling-spool-XXXXXX", dir);
		if (!path)
			return -ENOMEM;
		fd = mkostemp(path, O_CLOEXEC);
		if (fd >= 0)
			unlink(path);
		free(path);
	}
	if (fd < 0) {
		int e = errno;
		log_err("%s: cannot create a spool file in %s: %s (is it a writable directory? set TMPDIR)", lc->what,
			dir, strerror(e));
		return -e;
	}
	f->spool_fd = fd;
	f->spooling = true;
	f->spool_len = 0;
	return 0;
}

static int spool_pwrite(struct layer_ctx *lc, const uint8_t *buf, size_t len, uint64_t off)
{
	while (len) {
		ssize_t w = pwrite(lc->f->spool_fd, buf, len, (off_t)off);
		if (w < 0 && errno == EINTR)
			continue;
		if (w <= 0) {
			int e = w < 0 ? errno : EIO;
			log_err("%s: entry \"%s\": writing the spool file: %s", lc->what, lc->entry, strerror(e));
			return -e;
		}
		buf += w;
		len -= (size_t)w;
		off += (uint64_t)w;
	}
	return 0;
}

/* Copy the current entry's |size| bytes of data from the tar: into the image
 * at f->pos (holes of sparse files skipped as zeros), or, with |spool|, to
 * the end of the spool.  |*out_start| is where byte 0 went. */
static int copy_file_data(struct layer_ctx *lc, struct archive *a, uint64_t size, bool spool, uint64_t *out_start)
{
	struct flattener *f = lc->f;
	uint64_t start = spool ? f->spool_len : f->pos, end;
	/* The spool holds at most what the image could. */
	if (!ck_add_u64(start, size, &end) || end > f->max_image_size) {
		entry_err(lc, "declared size %llu bytes exceeds the image size limit of %llu bytes",
			  (unsigned long long)size, (unsigned long long)f->max_image_size);
		return -EFBIG;
	}
	uint64_t delivered = 0, next = start;
	bool sparse = archive_entry_sparse_count(lc->entry_ae) > 0;
	int r;
	for (;;) {
		const void *buf;
		size_t len;
		la_int64_t off;
		int ar = archive_read_data_block(a, &buf, &len, &off);
		if (ar == ARCHIVE_EOF)
			break;
		if (ar < ARCHIVE_WARN) {
			if (tail_missing(lc, a) && delivered == size && !sparse) {
				/* All of the data arrived; only the block padding and the
				 * end-of-archive marker are missing, as in layers some
				 * umoci versions write.  Nothing is lost: accept it. */
				log_info("%s: entry \"%s\": the tar ends without padding; accepted", lc->what, lc->entry);
				lc->ended_early = true;
				break;
			}
			entry_err(lc, "reading file data: %s", archive_error_string(a));
			return -EBADMSG;
		}
		uint64_t at, stop;
		if (off < 0 || !ck_add_u64(start, (uint64_t)off, &at) || !ck_add_u64(at, len, &stop) || stop > end) {
			entry_err(lc, "file data beyond its declared size %llu", (unsigned long long)size);
			return -EBADMSG;
		}
		if (at < next) {
			entry_err(lc, "sparse map goes backwards");
			return -EBADMSG;
		}
		if (spool)
			r = spool_pwrite(lc, buf, len, at);
		else if ((r = image_skip_to(f, at)) == 0)
			r = image_write_from(f, buf, len, reader_lends(lc->reader, buf, len));
		if (r < 0)
			return r;
		next = stop;
		delivered += len;
	}
	if (spool) {
		/* A short delivery leaves zeros, as in the image; the length makes
		 * the tail read back as zeros too. */
		if (next < end && ftruncate(f->spool_fd, (off_t)end) < 0) {
			int e = errno;
			log_err("%s: entry \"%s\": extending the spool file: %s", lc->what, lc->entry, strerror(e));
			return -e;
		}
		f->spool_len = end;
	} else if ((r = image_skip_to(f, end)) < 0) {
		return r;
	}
	*out_start = start;
	return 0;
}

/* Read a regular file's data (|size| > 0): into the image now, or into the
 * spool if it is cold or a Python source (see above). */
static int read_file_data(struct layer_ctx *lc, struct archive *a, struct fs_inode *ino, uint64_t size,
			  char **comps, size_t n)
{
	struct flattener *f = lc->f;
	ino->size = size;
	bool sparse = archive_entry_sparse_count(lc->entry_ae) > 0;
	uint64_t rank = 0;
	bool traced = false;
	if (!sparse && lc->layout) {
		char path[MAX_PATH];
		int len = join_comps(comps, n, path, sizeof(path));
		if (len < 0)
			return len;
		traced = layout_layer_rank(lc->layout, path, &rank);
	}
	bool cold = !sparse && !traced && is_cold_path(comps, n);
	bool source = !sparse && !traced && !cold && has_suffix(comps[n - 1], ".py");
	bool hot = !sparse && lc->layout && !traced && !cold && !source;
	int r;
	if (!cold && !source && !traced && !hot) {
		if ((r = image_align(f, EROFS_BLOCK_SIZE)) < 0 ||
		    (r = copy_file_data(lc, a, size, false, &ino->data_off)) < 0)
			return r;
		lc->region_files++;
		return image_align(f, EROFS_BLOCK_SIZE);
	}

	char *stem = NULL;
	if (source) {
		char path[MAX_PATH];
		int len = join_comps(comps, n, path, sizeof(path));
		if (len < 0)
			return len;
		path[len - 3] = '\0'; /* drop ".py" */
		if (!(stem = strdup(path)))
			return -ENOMEM;
	}
	if (lc->n_deferred == lc->cap_deferred) {
		size_t cap = lc->cap_deferred ? 2 * lc->cap_deferred : 64;
		struct deferred_file *d = realloc(lc->deferred, cap * sizeof(*d));
		if (!d) {
			free(stem);
			return -ENOMEM;
		}
		lc->deferred = d;
		lc->cap_deferred = cap;
	}
	uint64_t spool_off;
	if ((r = spool_open(lc)) < 0 || (r = copy_file_data(lc, a, size, true, &spool_off)) < 0) {
		free(stem);
		return r;
	}
	ino->refs++;
	lc->deferred[lc->n_deferred++] = (struct deferred_file){.ino = ino,
								.spool_off = spool_off,
								.size = size,
								.stem = stem,
								.cold = cold,
								.traced = traced,
								.rank = rank,
								.hot = hot};
	lc->region_files++;
	return 0;
}

/* Copy one deferred file from the spool to f->pos, straight into the chunk
 * buffers. */
static int unspool(struct layer_ctx *lc, const struct deferred_file *d)
{
	struct flattener *f = lc->f;
	int r = image_align(f, EROFS_BLOCK_SIZE);
	uint64_t end;
	if (r < 0)
		return r;
	if (!ck_add_u64(f->pos, d->size, &end) || end > f->max_image_size)
		return -EFBIG;
	d->ino->data_off = f->pos;
	for (uint64_t done = 0; done < d->size;) {
		if ((r = ensure_buffer(f)) < 0)
			return r;
		size_t in_chunk = (size_t)(f->pos % CHUNK_SIZE);
		size_t n = CHUNK_SIZE - in_chunk;
		if (n > d->size - done)
			n = (size_t)(d->size - done);
		ssize_t got = pread(f->spool_fd, f->buf + in_chunk, n, (off_t)(d->spool_off + done));
		if (got < 0 && errno == EINTR)
			continue;
		if (got <= 0) {
			int e = got < 0 ? errno : EIO;
			log_err("%s: reading the spool file back: %s", lc->what, got < 0 ? strerror(e) : "short file");
			return -e;
		}
		f->pos += (uint64_t)got;
		done += (uint64_t)got;
		if (f->pos % CHUNK_SIZE == 0 && (r = flush_chunk(f)) < 0)
			return r;
	}
	return image_align(f, EROFS_BLOCK_SIZE);
}

static int cmp_str(const void *a, const void *b)
{
	return strcmp(*(char *const *)a, *(char *const *)b);
}

static int cmp_rank(const void *a, const void *b)
{
	uint64_t x = (*(const struct deferred_file *const *)a)->rank, y = (*(const struct deferred_file *const *)b)->rank;
	return x < y ? -1 : x > y;
}

/* The files the layout plan lists, by rank, then up to a chunk boundary. */
static int place_traced(struct layer_ctx *lc)
{
	size_t n = 0;
	for (size_t i = 0; i < lc->n_deferred; i++)
		n += lc->deferred[i].traced;
	if (!n)
		return 0;
	struct deferred_file **v = malloc(n * sizeof(*v));
	if (!v)
		return -ENOMEM;
	n = 0;
	uint64_t bytes = 0;
	for (size_t i = 0; i < lc->n_deferred; i++)
		if (lc->deferred[i].traced) {
			v[n++] = &lc->deferred[i];
			bytes += lc->deferred[i].size;
		}
	qsort(v, n, sizeof(*v), cmp_rank);
	int r = 0;
	for (size_t i = 0; i < n && r == 0; i++)
		r = unspool(lc, v[i]);
	free(v);
	if (r == 0)
		r = image_align(lc->f, CHUNK_SIZE);
	if (r == 0)
		log_info("%s: %zu files (%llu bytes) a recorded start read placed first, as the layout trace says",
			 lc->what, n, (unsigned long long)bytes);
	return r;
}

/* At the end of a layer: the files a layout plan lists first (when it lists
 * any here), then the hot files it made wait, then the sources without
 * bytecode, then, from a chunk boundary on, the cold files, each group but
 * the first in tar order. */
static int place_deferred(struct layer_ctx *lc)
{
	struct flattener *f = lc->f;
	if (!lc->n_deferred)
		return 0;
	size_t n_stems = lc->pyc_stems.n;
	if (n_stems)
		qsort(lc->pyc_stems.items, n_stems, sizeof(char *), cmp_str);
	bool any_cold = false;
	for (size_t i = 0; i < lc->n_deferred; i++) {
		struct deferred_file *d = &lc->deferred[i];
		if (d->stem && n_stems && bsearch(&d->stem, lc->pyc_stems.items, n_stems, sizeof(char *), cmp_str))
			d->cold = true;
		any_cold |= d->cold;
	}
	int r;
	if ((r = place_traced(lc)) < 0)
		return r;
	for (size_t i = 0; i < lc->n_deferred; i++)
		if (lc->deferred[i].hot && (r = unspool(lc, &lc->deferred[i])) < 0)
			return r;
	for (size_t i = 0; i < lc->n_deferred; i++)
		if (!lc->deferred[i].cold && !lc->deferred[i].traced && !lc->deferred[i].hot &&
		    (r = unspool(lc, &lc->deferred[i])) < 0)
			return r;
	if (any_cold && (r = image_align(f, CHUNK_SIZE)) < 0)
		return r;
	for (size_t i = 0; i < lc->n_deferred; i++)
		if (lc->deferred[i].cold && (r = unspool(lc, &lc->deferred[i])) < 0)
			return r;
	/* Give the disk space back before the next layer. */
	f->spool_len = 0;
	if (ftruncate(f->spool_fd, 0) < 0) {
		int e = errno;
		log_err("%s: emptying the spool file: %s", lc->what, strerror(e));
		return -e;
	}
	return 0;
}

static void layer_ctx_cleanup(struct layer_ctx *lc)
{
	for (size_t i = 0; i < lc->n_deferred; i++) {
		fs_inode_unref(lc->deferred[i].ino);
		free(lc->deferred[i].stem);
	}
	free(lc->deferred);
	lc->deferred = NULL;
	lc->n_deferred = lc->cap_deferred = 0;
	str_list_clear(&lc->pyc_stems);
}

static int flatten_entry(struct layer_ctx *lc, struct archive *a, struct archive_entry *e)
{
	char buf[MAX_PATH];
	char *comps[MAX_DEPTH];
	size_t n;
	int r = split_path(lc, lc->entry, buf, sizeof(buf), comps, MAX_DEPTH, &n);
	if (r < 0)
		return r;
	const char *hardlink = archive_entry_hardlink(e);
	if (!hardlink)
		hardlink = archive_entry_hardlink_utf8(e);
	mode_t type = archive_entry_filetype(e);

	if (n == 0) { /* "./": the root directory's own metadata */
		if (hardlink || type != AE_IFDIR) {
			entry_err(lc, "the image root must be a directory");
			return -EBADMSG;
		}
		return copy_metadata(lc, lc->f->root, e);
	}

	const char *base = comps[n - 1];
	if (strncmp(base, WHITEOUT_PREFIX, strlen(WHITEOUT_PREFIX)) == 0) {
		/* A whiteout hides lower-layer content only.  One whose parent is
		 * gone, or no longer a directory (replaced earlier in this very
		 * layer, as umoci writes it), has nothing left to hide; nor does
		 * one for a name that does not exist. */
		struct fs_inode *parent = resolve(lc, comps, n - 1);
		if (!parent || !S_ISDIR(parent->mode))
			return 0;
		if (strcmp(base, OPAQUE_MARKER) == 0)
			return make_opaque(parent, lc->layer);
		const char *victim = base + strlen(WHITEOUT_PREFIX);
		struct fs_dirent *d = fs_dir_lookup(parent, victim);
		if (d && d->layer < lc->layer)
			return fs_dir_remove(parent, victim);
		return 0;
	}

	struct fs_inode *dir;
	if ((r = walk_parents(lc, comps, n, &dir)) < 0)
		return r;
	if ((hardlink || type == AE_IFREG) && (r = note_bytecode(lc, comps, n)) < 0)
		return r;

	struct fs_inode *ino = NULL;
	if (hardlink) {
		char tbuf[MAX_PATH];
		char *tcomps[MAX_DEPTH];
		size_t tn;
		if ((r = split_path(lc, hardlink, tbuf, sizeof(tbuf), tcomps, MAX_DEPTH, &tn)) < 0)
			return r;
		struct fs_inode *target = resolve(lc, tcomps, tn);
		if (!target) {
			entry_err(lc, "hard link to missing target \"%s\"", hardlink);
			return -EBADMSG;
		}
		if (S_ISDIR(target->mode)) {
			entry_err(lc, "hard link to directory \"%s\"", hardlink);
			return -EBADMSG;
		}
		struct fs_dirent *existing = fs_dir_lookup(dir, base);
		if (existing && existing->inode == target)
			return 0;
		target->refs++; /* keep it alive while the old name goes */
		if (existing && (r = fs_dir_remove(dir, base)) < 0) {
			fs_inode_unref(target);
			return r;
		}
		r = fs_dir_add(dir, base, target, lc->layer);
		fs_inode_unref(target);
		return r;
	}

	struct fs_dirent *existing = fs_dir_lookup(dir, base);
	if (type == AE_IFDIR && existing && S_ISDIR(existing->inode->mode)) {
		/* Re-declaring a directory updates its metadata and keeps its
		 * children. */
		existing->layer = lc->layer;
		return copy_metadata(lc, existing->inode, e);
	}

	switch (type) {
	case AE_IFREG:
	case AE_IFDIR:
	case AE_IFLNK:
	case AE_IFCHR:
	case AE_IFBLK:
	case AE_IFIFO:
	case AE_IFSOCK:
		break;
	default:
		entry_err(lc, "unsupported tar entry type 0%o", (unsigned)type);
		return -EBADMSG;
	}
	ino = fs_inode_new((uint32_t)type);
	if (!ino)
		return -ENOMEM;
	if ((r = copy_metadata(lc, ino, e)) < 0)
		goto out;
	if (type == AE_IFLNK) {
		const char *target = archive_entry_symlink(e);
		if (!target)
			target = archive_entry_symlink_utf8(e);
		if (!target || !*target || strlen(target) >= 4096) {
			entry_err(lc, "symlink with an empty or over-long target");
			r = -EBADMSG;
			goto out;
		}
		if (!(ino->symlink = strdup(target))) {
			r = -ENOMEM;
			goto out;
		}
		ino->size = strlen(target);
	} else if (type == AE_IFCHR || type == AE_IFBLK) {
		ino->rdev_major = (uint32_t)archive_entry_rdevmajor(e);
		ino->rdev_minor = (uint32_t)archive_entry_rdevminor(e);
	} else if (type == AE_IFREG) {
		la_int64_t size = archive_entry_size(e);
		if (size < 0) {
			entry_err(lc, "negative file size");
			r = -EBADMSG;
			goto out;
		}
		if (size > 0 && (r = read_file_data(lc, a, ino, (uint64_t)size, comps, n)) < 0)
			goto out;
	}
	if (existing && (r = fs_dir_remove(dir, base)) < 0)
		goto out;
	r = fs_dir_add(dir, base, ino, lc->layer);
out:
	fs_inode_unref(ino);
	return r;
}

/* ---- one layer ---------------------------------------------------------- */

/* Layer bytes are read, hashed and decompressed on a thread of their own,
 * ahead of the tar parser: digest checking and inflating a layer cost as much
 * CPU as parsing it, and this way they overlap.  An import also starts the
 * readers of the next layers while it still flattens an earlier one
 * (import.c), which is why the read-ahead can be larger than the few
 * megabytes the layer being parsed needs.  The parser gets pointers straight
 * into the read-ahead buffers, without a copy. */
#define READ_BUF (1u << 20)
/* A lending stream's spans cost no memory, and a chunk whose bytes straddle
 * two spans is copied (libarchive hands out each span's part separately),
 * so they are larger: one such chunk per 8 MiB instead of one per 1 MiB. */
#define LEND_SPAN (8u << 20)
#define READ_SLOTS_MIN 4

struct read_slot {
	uint8_t *buf;	   /* the slot's own buffer; NULL when the stream lends */
	const void *data;  /* the bytes: |buf| or the stream's own (read_ref) */
	ssize_t len; /* bytes, 0 at the end, -errno on error */
	bool full;
};

struct stream_reader {
	struct byte_stream *s;
	pthread_t thread;
	bool thread_started;
	pthread_mutex_t mu;
	pthread_cond_t changed;
	struct read_slot *slots;
	unsigned n_slots;
	unsigned next_fill, next_take;
	int held;	/* slot the parser is reading, or -1 */
	bool stop;	/* the parser is done: the reader thread must exit */
	/* The bytes of the held slot when the stream lends them (read_ref),
	 * else NULL: the parser's own copy, read without the lock. */
	const uint8_t *lent;
	size_t lent_len;
	bool at_end;	/* the stream returned 0 or an error */
	int err;
};

static void *read_ahead(void *arg)
{
	struct stream_reader *sr = arg;
	for (;;) {
		pthread_mutex_lock(&sr->mu);
		struct read_slot *slot = &sr->slots[sr->next_fill];
		while ((slot->full || (int)sr->next_fill == sr->held) && !sr->stop)
			pthread_cond_wait(&sr->changed, &sr->mu);
		bool stop = sr->stop;
		pthread_mutex_unlock(&sr->mu);
		if (stop)
			return NULL;
		/* A stream that lends its bytes (a mapped file) is only hashed
		 * here; the parser reads them where they are. */
		const void *data = slot->buf;
		ssize_t n = sr->s->read_ref ? sr->s->read_ref(sr->s, &data, LEND_SPAN)
					    : byte_stream_read(sr->s, slot->buf, READ_BUF);
		pthread_mutex_lock(&sr->mu);
		slot->data = data;
		slot->len = n;
		slot->full = true;
		sr->next_fill = (sr->next_fill + 1) % sr->n_slots;
		pthread_cond_broadcast(&sr->changed);
		pthread_mutex_unlock(&sr->mu);
		if (n <= 0)
			return NULL;
	}
}

/* Give back the slot the parser held and take the next one.  Returns its
 * length (0 at the end, -errno on error) and the bytes in |*out|. */
static ssize_t reader_next(struct stream_reader *sr, const void **out)
{
	pthread_mutex_lock(&sr->mu);
	if (sr->held >= 0) {
		sr->slots[sr->held].full = false;
		sr->held = -1;
		pthread_cond_broadcast(&sr->changed);
	}
	sr->lent = NULL;
	sr->lent_len = 0;
	if (sr->at_end) {
		pthread_mutex_unlock(&sr->mu);
		return sr->err;
	}
	struct read_slot *slot = &sr->slots[sr->next_take];
	while (!slot->full)
		pthread_cond_wait(&sr->changed, &sr->mu);
	ssize_t n = slot->len;
	if (n <= 0) {
		sr->at_end = true;
		sr->err = (int)n;
		slot->full = false;
	} else {
		sr->held = (int)sr->next_take;
		sr->next_take = (sr->next_take + 1) % sr->n_slots;
		*out = slot->data;
		if (sr->s->read_ref) {
			sr->lent = slot->data;
			sr->lent_len = (size_t)n;
		}
	}
	pthread_mutex_unlock(&sr->mu);
	return n;
}

/* Contract in internal.h. */
int layer_reader_start(struct byte_stream *tar, size_t ahead, struct layer_reader **out)
{
	*out = NULL;
	struct stream_reader *sr = calloc(1, sizeof(*sr));
	if (!sr)
		return -ENOMEM;
	sr->s = tar;
	sr->held = -1;
	size_t n = ahead / READ_BUF + (ahead % READ_BUF != 0);
	sr->n_slots = n < READ_SLOTS_MIN ? READ_SLOTS_MIN : n > UINT_MAX ? UINT_MAX : (unsigned)n;
	sr->slots = calloc(sr->n_slots, sizeof(*sr->slots));
	bool ok = sr->slots != NULL;
	for (unsigned i = 0; ok && !tar->read_ref && i < sr->n_slots; i++)
		ok = (sr->slots[i].buf = malloc(READ_BUF)) != NULL;
	if (!ok) {
		layer_reader_free((struct layer_reader *)sr);
		return -ENOMEM;
	}
	pthread_mutex_init(&sr->mu, NULL);
	pthread_cond_init(&sr->changed, NULL);
	if (pthread_create(&sr->thread, NULL, read_ahead, sr) != 0) {
		pthread_mutex_destroy(&sr->mu);
		pthread_cond_destroy(&sr->changed);
		layer_reader_free((struct layer_reader *)sr);
		return -EAGAIN;
	}
	sr->thread_started = true;
	*out = (struct layer_reader *)sr;
	return 0;
}

/* Contract in internal.h; NULL is allowed. */
void layer_reader_free(struct layer_reader *lr)
{
	struct stream_reader *sr = (struct stream_reader *)lr;
	if (!sr)
		return;
	if (sr->thread_started) {
		pthread_mutex_lock(&sr->mu);
		sr->stop = true;
		pthread_cond_broadcast(&sr->changed);
		pthread_mutex_unlock(&sr->mu);
		pthread_join(sr->thread, NULL);
		pthread_mutex_destroy(&sr->mu);
		pthread_cond_destroy(&sr->changed);
	}
	for (unsigned i = 0; sr->slots && i < sr->n_slots; i++)
		free(sr->slots[i].buf);
	free(sr->slots);
	free(sr);
}

/* Whether |<p, len>| lies in bytes the stream lent, which stay valid until
 * it is closed; libarchive hands out either those or a copy of its own
 * (a header or a block that straddled two reads). */
static bool reader_lends(const struct stream_reader *sr, const void *p, size_t len)
{
	const uint8_t *b = p;
	return sr && sr->lent && b >= sr->lent && len <= sr->lent_len && (size_t)(b - sr->lent) <= sr->lent_len - len;
}

static bool reader_clean_end(struct stream_reader *sr)
{
	pthread_mutex_lock(&sr->mu);
	bool clean = sr->at_end && sr->err == 0;
	pthread_mutex_unlock(&sr->mu);
	return clean;
}

static la_ssize_t archive_read_cb(struct archive *a, void *arg, const void **out)
{
	struct stream_reader *sr = arg;
	ssize_t n = reader_next(sr, out);
	if (n < 0) {
		archive_set_error(a, (int)-n, "%s", strerror((int)-n));
		return -1;
	}
	return n;
}

int flatten_layer(struct flattener *f, struct byte_stream *tar, unsigned layer, const char *what,
		  struct layer_region *out_region)
{
	struct layer_reader *lr;
	int r = layer_reader_start(tar, 0, &lr);
	if (r < 0)
		return r;
	r = flatten_layer_read(f, lr, layer, what, out_region);
	layer_reader_free(lr);
	return r;
}

/* Contract in internal.h. */
int flatten_layer_read(struct flattener *f, struct layer_reader *lr, unsigned layer, const char *what,
		       struct layer_region *out_region)
{
	struct stream_reader *sr = (struct stream_reader *)lr;
	int r = image_align(f, CHUNK_SIZE);
	if (r < 0)
		return r;
	struct layer_ctx lc = {.f = f, .layer = layer, .what = what, .region_start = f->pos, .layout = f->layer_layout};
	struct archive *a = archive_read_new();
	if (!a) {
		r = -ENOMEM;
		goto out;
	}
	lc.reader = sr;
	archive_read_support_format_tar(a);
	if (archive_read_open(a, sr, NULL, archive_read_cb, NULL) != ARCHIVE_OK) {
		r = sr->err ? sr->err : -EBADMSG;
		if (!sr->err)
			log_err("%s: not a tar stream: %s", what, archive_error_string(a));
		goto out;
	}
	char prev[MAX_PATH] = "";
	uint64_t count = 0;
	for (;;) {
		struct archive_entry *e;
		int ar = archive_read_next_header(a, &e);
		if (ar == ARCHIVE_EOF)
			break;
		if (ar < ARCHIVE_WARN && count > 0 && tail_missing(&lc, a)) {
			log_info("%s: the tar ends without its end-of-archive marker; accepted", what);
			break;
		}
		if (ar < ARCHIVE_WARN) {
			r = sr->err ? sr->err : -EBADMSG;
			if (!sr->err)
				log_err("%s: entry %llu (after \"%s\"): bad tar header: %s", what,
					(unsigned long long)count + 1, prev[0] ? prev : "start of layer",
					archive_error_string(a));
			goto out;
		}
		const char *path = archive_entry_pathname(e);
		if (!path)
			path = archive_entry_pathname_utf8(e);
		if (!path) {
			log_err("%s: entry %llu (after \"%s\"): unreadable path name", what,
				(unsigned long long)count + 1, prev);
			r = -EBADMSG;
			goto out;
		}
		lc.entry = path;
		lc.entry_ae = e;
		if ((r = flatten_entry(&lc, a, e)) < 0) {
			if (sr->err)
				r = sr->err;
			goto out;
		}
		snprintf(prev, sizeof(prev), "%s", path);
		count++;
		if (lc.ended_early)
			break;
	}
	/* Drain to the end so the stream checks its digests: trailing bytes after
	 * the end-of-archive marker still belong to the blob. */
	ssize_t n;
	const void *ignored;
	while ((n = reader_next(sr, &ignored)) > 0)
		;
	if (n < 0) {
		r = (int)n;
		goto out;
	}
	if ((r = place_deferred(&lc)) < 0)
		goto out;
	out_region->offset = lc.region_start;
	out_region->length = f->pos - lc.region_start;
	out_region->files = lc.region_files;
	r = 0;
out:
	if (a)
		archive_read_free(a);
	layer_ctx_cleanup(&lc);
	return r;
}

int flattener_finish(struct flattener *f, struct erofs_image_layout *layout)
{
	int r = image_align(f, CHUNK_SIZE);
	if (r < 0)
		return r;
	uint64_t meta_off = f->pos;
	if ((r = erofs_write_metadata(f->root, meta_off, layout)) < 0)
		return r;
	if ((r = image_write(f, layout->meta, layout->meta_len)) < 0 || (r = image_skip_to(f, layout->image_size)) < 0)
		return r;
	/* Chunk 0: the superblock block and zeros up to the first region. */
	uint8_t *c0 = f->sink->get_buffer(f->sink->ctx);
	if (!c0)
		return -ENOMEM;
	memset(c0, 0, CHUNK_SIZE);
	memcpy(c0, layout->superblock, EROFS_BLOCK_SIZE);
	return f->sink->emit(f->sink->ctx, 0, c0);
}
