/* Fuzz target for blockd's EROFS reader: the input is an image.
 *
 * Opens it and walks the tree breadth-first from the root (bounded: at most
 * MAX_NODES inodes and MAX_DEPTH levels), calling every entry point on every
 * inode: getattr, readdir (whole and resumed from a cookie), lookup of each
 * listed name and of names that are not there, read, readlink,
 * listxattr and getxattr of each listed name.
 *
 * kindling's writer puts metadata at 512 KiB or more, too far for a small
 * seed, so an input may start with a gap header: "KNDLGAP1", le64 |at|, le64
 * |len|; the image is then the rest of the input with |len| zero bytes
 * inserted at offset |at| (|len| at most 64 MiB).
 */
/* ctest-labels: no-tsan (a single-threaded parser: nothing for ThreadSanitizer to check) */
#include "blockd/internal.h"
#include "common/bytes.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MAX_NODES 10000u
#define MAX_DEPTH 64u
#define MAX_DIRENTS 4096u	/* entries listed per directory */
#define MAX_LOOKUPS 512u	/* names looked up per directory */
#define MAX_GAP (64ull << 20)
#define MAX_TOTAL_DIRENTS 100000u /* per input, so a cyclic image stays fast */
#define MAX_TOTAL_LOOKUPS 20000u

struct image {
	const uint8_t *data;
	size_t len;
	uint64_t gap_at, gap_len;
};

static int image_read(void *ctx, uint64_t off, void *buf, size_t len)
{
	const struct image *im = ctx;
	uint64_t size = im->len + im->gap_len;
	if (off > size || len > size - off)
		return -EINVAL;
	uint8_t *p = buf;
	while (len) {
		size_t n;
		if (off < im->gap_at) {
			n = (size_t)(im->gap_at - off) < len ? (size_t)(im->gap_at - off) : len;
			memcpy(p, im->data + off, n);
		} else if (off < im->gap_at + im->gap_len) {
			n = (size_t)(im->gap_at + im->gap_len - off) < len ? (size_t)(im->gap_at + im->gap_len - off)
									    : len;
			memset(p, 0, n);
		} else {
			n = len;
			memcpy(p, im->data + (off - im->gap_len), n);
		}
		p += n;
		off += n;
		len -= n;
	}
	return 0;
}

struct node {
	uint64_t nid;
	unsigned depth;
};

struct walk {
	struct erofs_fs *fs;
	struct node *queue;
	size_t head, tail;
	/* names of the directory being listed, NUL-separated */
	char names[MAX_DIRENTS * 16];
	size_t names_len;
	unsigned n_listed;
	unsigned depth;
	unsigned long total_listed, total_lookups;
	uint64_t mid_cookie;
	uint8_t buf[65536];
};

static int list_cb(void *arg, const char *name, size_t name_len, uint64_t nid, unsigned file_type,
		   uint64_t next_cookie)
{
	struct walk *w = arg;
	(void)file_type;
	if (strlen(name) != name_len)
		abort(); /* the reader promises a terminated copy */
	if (w->n_listed == MAX_DIRENTS / 2)
		w->mid_cookie = next_cookie;
	if (++w->n_listed > MAX_DIRENTS || ++w->total_listed > MAX_TOTAL_DIRENTS)
		return 1;
	if (w->names_len + name_len + 1 <= sizeof(w->names)) {
		memcpy(w->names + w->names_len, name, name_len + 1);
		w->names_len += name_len + 1;
	}
	bool dot = !strcmp(name, ".") || !strcmp(name, "..");
	if (!dot && w->tail < MAX_NODES && w->depth + 1 < MAX_DEPTH)
		w->queue[w->tail++] = (struct node){nid, w->depth + 1};
	return 0;
}

static int count_cb(void *arg, const char *name, size_t name_len, uint64_t nid, unsigned file_type,
		    uint64_t next_cookie)
{
	(void)name, (void)name_len, (void)nid, (void)file_type, (void)next_cookie;
	return ++*(unsigned *)arg >= 64;
}

static void visit_dir(struct walk *w, uint64_t nid)
{
	struct erofs_stat st;
	w->names_len = 0;
	w->n_listed = 0;
	w->mid_cookie = 0;
	(void)erofs_readdir(w->fs, nid, 0, list_cb, w);
	if (w->mid_cookie) {
		unsigned n = 0;
		(void)erofs_readdir(w->fs, nid, w->mid_cookie, count_cb, &n);
	}
	unsigned n = 0;
	for (size_t off = 0; off < w->names_len && n < MAX_LOOKUPS && w->total_lookups < MAX_TOTAL_LOOKUPS;
	     n++, w->total_lookups++) {
		const char *name = w->names + off;
		(void)erofs_lookup(w->fs, nid, name, &st);
		off += strlen(name) + 1;
	}
	(void)erofs_lookup(w->fs, nid, "\x01", &st);
	(void)erofs_lookup(w->fs, nid, "zzzz-not-there", &st);
	(void)erofs_lookup(w->fs, nid, "m", &st);
}

static void visit_xattrs(struct walk *w, uint64_t nid)
{
	char list[4096];
	size_t len = 0, vlen;
	if (erofs_listxattr(w->fs, nid, NULL, 0, &len) < 0)
		return;
	(void)erofs_listxattr(w->fs, nid, list, 8, &len);
	if (erofs_listxattr(w->fs, nid, list, sizeof(list), &len) < 0 || len > sizeof(list))
		return;
	for (size_t off = 0; off < len;) {
		const char *name = list + off;
		size_t n = strnlen(name, len - off);
		if (n == len - off)
			abort(); /* the list must be NUL-terminated */
		(void)erofs_getxattr(w->fs, nid, name, NULL, 0, &vlen);
		(void)erofs_getxattr(w->fs, nid, name, w->buf, 3, &vlen);
		(void)erofs_getxattr(w->fs, nid, name, w->buf, sizeof(w->buf), &vlen);
		off += n + 1;
	}
	(void)erofs_getxattr(w->fs, nid, "user.not-there", w->buf, sizeof(w->buf), &vlen);
}

static void visit(struct walk *w, uint64_t nid)
{
	struct erofs_stat st;
	size_t n;
	int r = erofs_getattr(w->fs, nid, &st);
#ifdef FUZZ_EROFS_TRACE /* -DFUZZ_EROFS_TRACE: show what a seed reaches */
	fprintf(stderr, "nid %llu depth %u: %d mode %o size %llu\n", (unsigned long long)nid, w->depth, r, st.mode,
		(unsigned long long)st.size);
#endif
	if (r < 0)
		return;
	visit_xattrs(w, nid);
	switch (st.mode & S_IFMT) {
	case S_IFDIR:
		visit_dir(w, nid);
		(void)erofs_read(w->fs, nid, 0, w->buf, 16, &n);
		break;
	case S_IFREG:
		(void)erofs_read(w->fs, nid, 0, w->buf, sizeof(w->buf), &n);
		if (st.size > 1) {
			(void)erofs_read(w->fs, nid, st.size / 2 - 1, w->buf, 4099, &n);
			(void)erofs_read(w->fs, nid, st.size - 1, w->buf, sizeof(w->buf), &n);
		}
		(void)erofs_read(w->fs, nid, st.size, w->buf, 1, &n);
		(void)erofs_readlink(w->fs, nid, (char *)w->buf, 4096);
		break;
	case S_IFLNK:
		(void)erofs_readlink(w->fs, nid, (char *)w->buf, 4096);
		(void)erofs_readlink(w->fs, nid, (char *)w->buf, 2);
		break;
	default:
		(void)erofs_read(w->fs, nid, 0, w->buf, 16, &n);
		break;
	}
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static bool quiet;
	if (!quiet) {
		log_set_level(LOG_SILENT);
		quiet = true;
	}
	struct image im = {.data = data, .len = size};
	if (size >= 24 && !memcmp(data, "KNDLGAP1", 8)) {
		im.data = data + 24;
		im.len = size - 24;
		im.gap_at = get_le64(data + 8);
		im.gap_len = get_le64(data + 16);
		if (im.gap_at > im.len)
			im.gap_at = im.len;
		if (im.gap_len > MAX_GAP)
			im.gap_len = MAX_GAP;
	}
	struct blockdev dev = {.read_at = image_read, .size = im.len + im.gap_len, .ctx = &im};
	struct walk *w = calloc(1, sizeof(*w));
	if (!w)
		return 0;
	w->queue = calloc(MAX_NODES, sizeof(*w->queue));
	if (!w->queue || erofs_open(&dev, &w->fs) < 0)
		goto out;

	(void)erofs_getattr(w->fs, UINT64_MAX, &(struct erofs_stat){0});
	w->queue[w->tail++] = (struct node){erofs_root(w->fs), 0};
	while (w->head < w->tail) {
		struct node nd = w->queue[w->head++];
		w->depth = nd.depth;
		visit(w, nd.nid);
	}
	erofs_close(w->fs);
out:
	free(w->queue);
	free(w);
	return 0;
}
