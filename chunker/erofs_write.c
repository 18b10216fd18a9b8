/* EROFS writer: serialise the flattened tree as the image's metadata region.
 *
 * The image is: block 0 (superblock at byte 1024), the layers' regular-file
 * data (placed by the caller below meta_off), then the metadata region this
 * file produces at meta_off.  See DESIGN.md, "Flattened image".
 *
 * Layout of the metadata region, all decided here and deterministic:
 *  - Traversal is depth-first over directories, each directory's entries in
 *    byte order of their names: a directory's entries get their inodes
 *    together, then each subdirectory among them is expanded the same way,
 *    in name order, before the next one.  The first time an inode is reached
 *    it gets the next ino (root = 1) and the next inode slot, so the root
 *    sits at offset 32 (nid 1: the superblock's root_nid has only 16 bits,
 *    and nid 0 would be inode number 0), siblings sit next to each other,
 *    and a whole subtree's inodes are contiguous: a path lookup or an import
 *    of many modules of one package touches few metadata blocks.  A
 *    hard-linked inode is emitted once.
 *  - Every inode is the 64-byte extended form (32-bit ids, own mtime), 32-byte
 *    aligned, followed by its inline xattrs.  Inode + xattrs never straddle a
 *    block boundary when they fit in one block (we pad to the next block).
 *  - Directories and symlinks whose last partial block ("tail") fits in the
 *    inode's block are FLAT_INLINE: the tail follows the xattrs.  When the
 *    tail would cross the block boundary at the current position we either
 *    pad to a fresh block or store the tail as a plain block, whichever
 *    wastes fewer bytes (ties pad).  A directory's full blocks (and a
 *    non-inlined tail) go on the next block boundary just before the inodes
 *    of its entries, so a lookup reads its blocks and then the entry's
 *    inode from one neighbourhood.  A symlink's data blocks (targets longer
 *    than a block's free room) go in a data area after all the inodes.
 *  - Regular files are FLAT_PLAIN at data_off; empty ones have raw_blkaddr 0
 *    (what mkfs.erofs 1.5 writes; nothing ever maps a zero-length file).
 *  - The superblock carries crc32c (feature_compat SB_CRC), uuid = the first
 *    16 bytes of SHA-256(meta), build_time = newest mtime.
 */
#include "internal.h"
#include "common/erofs_format.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#define BLK EROFS_BLOCK_SIZE
#define INODE_SIZE ((uint32_t)sizeof(struct erofs_disk_inode_ext))
#define DIRENT_SIZE ((uint32_t)sizeof(struct erofs_disk_dirent))
#define SYMLINK_MAX 4095u  /* PATH_MAX - 1: the longest target readlink(2) returns */
#define DIR_MAX_BYTES 0xffffffffull /* the kernel walks directories with 32-bit block indexes */

/* One inode to emit, in traversal order. */
struct wnode {
	struct fs_inode *fi;
	size_t parent;		/* node of the directory that first named it (root: 0) */
	const char *name;	/* that entry's name (root: "") */
	uint32_t nlink;
	size_t dent_start, n_dents; /* directories: sorted entries in writer.dents */
	uint64_t size;		/* i_size */
	uint32_t xattr_bytes;	/* inline xattr area: 0 or header + entries */
	uint8_t layout;		/* EROFS_LAYOUT_* */
	uint32_t tail;		/* bytes of data stored inline after the xattrs */
	uint64_t off;		/* byte offset of the inode in meta[] */
	uint64_t data_blk;	/* meta-relative first block of the data area part */
	uint64_t n_data_blocks;
};

/* One directory entry, "." and ".." included. */
struct wdent {
	const char *name;
	size_t len;
	struct fs_inode *fi;	/* NULL for "." and ".." */
	size_t target;		/* node index */
};

/* One directory expansion, in traversal order: directory |dir| named its
 * entries, and the nodes it created for them start at |first|. */
struct wexp {
	size_t dir;
	size_t first;
};

struct writer {
	uint64_t meta_off;
	struct wexp *exps;
	size_t n_exps, cap_exps;
	struct wnode *nodes;
	size_t n_nodes, cap_nodes;
	struct wdent *dents;
	size_t n_dents, cap_dents;
	size_t *map;		/* open addressing: fs_inode -> node index + 1 */
	size_t map_cap;
	char path[4096];	/* scratch for error messages */
};

/* ---- helpers ------------------------------------------------------------------ */

static bool is_dir(const struct fs_inode *fi) { return S_ISDIR(fi->mode); }

/* Write "/a/b/<leaf>" for node |idx| (plus |leaf| if non-NULL) into w->path
 * and return it; an over-long path keeps its end, after "...". */
static const char *node_path(struct writer *w, size_t idx, const char *leaf)
{
	char *buf = w->path;
	size_t pos = sizeof(w->path) - 1;
	buf[pos] = '\0';
	/* Fill from the end: the parent chain is only known leaf-first. */
	const char *name = leaf ? leaf : (idx ? w->nodes[idx].name : NULL);
	if (!leaf && idx)
		idx = w->nodes[idx].parent;
	while (name) {
		size_t n = strlen(name);
		if (n + 1 + 3 > pos) {
			pos -= 3;
			memcpy(buf + pos, "...", 3);
			return buf + pos;
		}
		pos -= n;
		memcpy(buf + pos, name, n);
		buf[--pos] = '/';
		name = idx ? w->nodes[idx].name : NULL;
		idx = idx ? w->nodes[idx].parent : 0;
	}
	if (!buf[pos])
		buf[--pos] = '/';
	return buf + pos;
}

static size_t ptr_hash(const void *p, size_t cap)
{
	uint64_t h = (uint64_t)(uintptr_t)p * 0x9E3779B97F4A7C15ull;
	return (size_t)(h >> 32) & (cap - 1);
}

/* Look |fi| up; returns node index + 1 or 0. */
static size_t map_find(const struct writer *w, const struct fs_inode *fi)
{
	for (size_t i = ptr_hash(fi, w->map_cap);; i = (i + 1) & (w->map_cap - 1)) {
		size_t v = w->map[i];
		if (!v || w->nodes[v - 1].fi == fi)
			return v;
	}
}

static int map_grow(struct writer *w)
{
	size_t cap = w->map_cap ? w->map_cap * 2 : 1024;
	size_t *m = calloc(cap, sizeof(*m));
	if (!m)
		return -ENOMEM;
	for (size_t i = 0; i < w->map_cap; i++) {
		size_t v = w->map[i];
		if (!v)
			continue;
		size_t j = ptr_hash(w->nodes[v - 1].fi, cap);
		while (m[j])
			j = (j + 1) & (cap - 1);
		m[j] = v;
	}
	free(w->map);
	w->map = m;
	w->map_cap = cap;
	return 0;
}

/* Append a node for |fi| (not yet present) and index it. */
static int add_node(struct writer *w, struct fs_inode *fi, size_t parent, const char *name, size_t *out_idx)
{
	if (w->n_nodes == w->cap_nodes) {
		size_t cap = w->cap_nodes ? w->cap_nodes * 2 : 256;
		size_t bytes;
		if (!ck_mul_size(cap, sizeof(*w->nodes), &bytes))
			return -ENOMEM;
		struct wnode *n = realloc(w->nodes, bytes);
		if (!n)
			return -ENOMEM;
		w->nodes = n;
		w->cap_nodes = cap;
	}
	/* Keep the map at most half full so probes stay short. */
	if ((w->n_nodes + 1) * 2 > w->map_cap) {
		int r = map_grow(w);
		if (r < 0)
			return r;
	}
	size_t idx = w->n_nodes++;
	w->nodes[idx] = (struct wnode){.fi = fi, .parent = parent, .name = name};
	size_t j = ptr_hash(fi, w->map_cap);
	while (w->map[j])
		j = (j + 1) & (w->map_cap - 1);
	w->map[j] = idx + 1;
	*out_idx = idx;
	return 0;
}

static int push_dent(struct writer *w, const char *name, size_t len, struct fs_inode *fi, size_t target)
{
	if (w->n_dents == w->cap_dents) {
		size_t cap = w->cap_dents ? w->cap_dents * 2 : 1024;
		size_t bytes;
		if (!ck_mul_size(cap, sizeof(*w->dents), &bytes))
			return -ENOMEM;
		struct wdent *d = realloc(w->dents, bytes);
		if (!d)
			return -ENOMEM;
		w->dents = d;
		w->cap_dents = cap;
	}
	w->dents[w->n_dents++] = (struct wdent){.name = name, .len = len, .fi = fi, .target = target};
	return 0;
}

/* Strict byte order, a shorter name before its extensions: what the kernel's
 * binary search in a directory expects. */
static int dent_cmp(const void *a, const void *b)
{
	const struct wdent *x = a, *y = b;
	int c = memcmp(x->name, y->name, x->len < y->len ? x->len : y->len);
	if (c)
		return c;
	return (x->len > y->len) - (x->len < y->len);
}

static uint8_t file_type(uint32_t mode)
{
	switch (mode & S_IFMT) {
	case S_IFREG: return EROFS_FT_REG_FILE;
	case S_IFDIR: return EROFS_FT_DIR;
	case S_IFCHR: return EROFS_FT_CHRDEV;
	case S_IFBLK: return EROFS_FT_BLKDEV;
	case S_IFIFO: return EROFS_FT_FIFO;
	case S_IFSOCK: return EROFS_FT_SOCK;
	case S_IFLNK: return EROFS_FT_SYMLINK;
	default: return EROFS_FT_UNKNOWN;
	}
}

/* ---- pass 1: traversal ---------------------------------------------------------- */

/* Sort directory |idx|'s entries, create nodes for inodes seen the first time
 * and count links. */
static int expand_dir(struct writer *w, size_t idx)
{
	struct fs_inode *fi = w->nodes[idx].fi;
	size_t start = w->n_dents;
	int r;

	if (w->n_exps == w->cap_exps) {
		size_t cap = w->cap_exps ? w->cap_exps * 2 : 256;
		size_t bytes;
		if (!ck_mul_size(cap, sizeof(*w->exps), &bytes))
			return -ENOMEM;
		struct wexp *e = realloc(w->exps, bytes);
		if (!e)
			return -ENOMEM;
		w->exps = e;
		w->cap_exps = cap;
	}
	w->exps[w->n_exps++] = (struct wexp){.dir = idx, .first = w->n_nodes};

	if ((r = push_dent(w, ".", 1, NULL, idx)) < 0 || (r = push_dent(w, "..", 2, NULL, w->nodes[idx].parent)) < 0)
		return r;
	for (size_t i = 0; i < fi->n_children; i++) {
		const struct fs_dirent *d = &fi->children[i];
		size_t len = d->name ? strlen(d->name) : 0;
		if (len > EROFS_NAME_MAX) {
			log_err("%s: name is %zu bytes, EROFS allows %u", node_path(w, idx, d->name), len,
				EROFS_NAME_MAX);
			return -EFBIG;
		}
		if (!len || strchr(d->name, '/') || !strcmp(d->name, ".") || !strcmp(d->name, "..") || !d->inode) {
			log_err("%s: invalid directory entry name \"%s\"", node_path(w, idx, NULL),
				d->name ? d->name : "(null)");
			return -EINVAL;
		}
		if ((r = push_dent(w, d->name, len, d->inode, 0)) < 0)
			return r;
	}
	size_t n = w->n_dents - start;
	qsort(w->dents + start, n, sizeof(*w->dents), dent_cmp);

	/* Nodes are created in sorted order, which makes ino and nid
	 * assignment independent of the children array's order. */
	for (size_t i = start; i < start + n; i++) {
		struct wdent *e = &w->dents[i];
		if (i > start && !dent_cmp(e - 1, e)) {
			log_err("%s: duplicate directory entry", node_path(w, idx, e->name));
			return -EINVAL;
		}
		if (!e->fi)
			continue; /* "." or ".." */
		size_t v = map_find(w, e->fi);
		size_t child;
		if (v) {
			child = v - 1;
			if (is_dir(e->fi)) {
				log_err("%s: directory is reachable twice (a directory hard link or a loop)",
					node_path(w, idx, e->name));
				return -EINVAL;
			}
		} else {
			if ((r = add_node(w, e->fi, idx, e->name, &child)) < 0)
				return r;
			w->nodes[child].nlink = is_dir(e->fi) ? 2 : 0;
		}
		e->target = child;
		if (is_dir(e->fi))
			w->nodes[idx].nlink++; /* the child's ".." */
		else
			w->nodes[child].nlink++;
	}
	w->nodes[idx].dent_start = start;
	w->nodes[idx].n_dents = n;
	return 0;
}

/* Expand the tree from |root| depth-first over directories: each
 * directory's entries get their nodes together (expand_dir), then each
 * subdirectory first named there is expanded, in name order, with its whole
 * subtree before the next.  An explicit stack, so a deep tree cannot
 * overflow the C stack. */
static int traverse(struct writer *w, size_t root)
{
	struct frame {
		size_t dir, pos; /* pos: the next of dir's entries to look at, in w->dents */
	};
	struct frame *stack = NULL;
	size_t depth = 0, cap = 0, next = root; /* next: a directory to expand, or SIZE_MAX */
	int r = 0;
	for (;;) {
		if (next != SIZE_MAX) {
			if ((r = expand_dir(w, next)) < 0)
				break;
			if (depth == cap) {
				size_t ncap = cap ? cap * 2 : 64, bytes;
				struct frame *ns = ck_mul_size(ncap, sizeof(*ns), &bytes) ? realloc(stack, bytes) : NULL;
				if (!ns) {
					r = -ENOMEM;
					break;
				}
				stack = ns;
				cap = ncap;
			}
			stack[depth++] = (struct frame){.dir = next, .pos = w->nodes[next].dent_start};
			next = SIZE_MAX;
		}
		if (!depth)
			break;
		struct frame *f = &stack[depth - 1];
		const struct wnode *d = &w->nodes[f->dir];
		/* A directory has one name (expand_dir refuses a second), so the
		 * entry that named it expands it; "." and ".." have no fi. */
		for (; f->pos < d->dent_start + d->n_dents && next == SIZE_MAX; f->pos++) {
			const struct wdent *de = &w->dents[f->pos];
			if (de->fi && is_dir(de->fi) && w->nodes[de->target].parent == f->dir)
				next = de->target;
		}
		if (next == SIZE_MAX)
			depth--;
	}
	free(stack);
	return r;
}

/* ---- pass 2: sizes ------------------------------------------------------------------ */

/* Pack entries into blocks: greedily as many as fit, names after the dirent
 * array.  With |buf| NULL only returns the size; otherwise writes the
 * directory's |size| bytes into buf (zeroed by the caller). */
static uint64_t dir_pack(const struct writer *w, const struct wdent *d, size_t n, uint8_t *buf)
{
	uint64_t blk_start = 0, size = 0;
	size_t i = 0;
	while (i < n) {
		size_t k = 0, used = 0;
		while (i + k < n && used + DIRENT_SIZE + d[i + k].len <= BLK) {
			used += DIRENT_SIZE + d[i + k].len;
			k++;
		}
		if (buf) {
			uint8_t *b = buf + blk_start;
			size_t nameoff = k * DIRENT_SIZE;
			for (size_t j = 0; j < k; j++) {
				const struct wdent *e = &d[i + j];
				const struct wnode *t = &w->nodes[e->target];
				uint8_t *de = b + j * DIRENT_SIZE;
				put_le64(de + offsetof(struct erofs_disk_dirent, nid), t->off / EROFS_SLOT_SIZE);
				put_le16(de + offsetof(struct erofs_disk_dirent, nameoff), (uint16_t)nameoff);
				de[offsetof(struct erofs_disk_dirent, file_type)] = file_type(t->fi->mode);
				memcpy(b + nameoff, e->name, e->len);
				nameoff += e->len;
			}
		}
		size = blk_start + used;
		blk_start += BLK;
		i += k;
	}
	return size;
}

struct xattr_prefix {
	const char *prefix;
	uint8_t index;
	bool exact; /* the whole name, with an empty suffix */
};

static const struct xattr_prefix xattr_prefixes[] = {
	{"user.", EROFS_XATTR_IDX_USER, false},
	{"trusted.", EROFS_XATTR_IDX_TRUSTED, false},
	{"security.", EROFS_XATTR_IDX_SECURITY, false},
	{"system.posix_acl_access", EROFS_XATTR_IDX_POSIX_ACL_ACCESS, true},
	{"system.posix_acl_default", EROFS_XATTR_IDX_POSIX_ACL_DEFAULT, true},
};

/* Split |name| into a prefix index and suffix.  Returns 0 or -EINVAL. */
static int xattr_split(const char *name, uint8_t *out_index, const char **out_suffix)
{
	for (size_t i = 0; i < sizeof(xattr_prefixes) / sizeof(xattr_prefixes[0]); i++) {
		const struct xattr_prefix *p = &xattr_prefixes[i];
		size_t pl = strlen(p->prefix);
		if (p->exact ? strcmp(name, p->prefix) != 0 : (strncmp(name, p->prefix, pl) != 0 || !name[pl]))
			continue;
		*out_index = p->index;
		*out_suffix = name + pl;
		return 0;
	}
	return -EINVAL;
}

static uint32_t xattr_entry_bytes(size_t suffix_len, size_t value_len)
{
	/* Both bounded by the checks in xattr_area (255 and 65535). */
	return (uint32_t)((sizeof(struct erofs_disk_xattr_entry) + suffix_len + value_len + 3) & ~(size_t)3);
}

/* Validate node |idx|'s xattrs and size its inline xattr area. */
static int xattr_area(struct writer *w, size_t idx)
{
	const struct fs_inode *fi = w->nodes[idx].fi;
	uint64_t total = 0;
	for (size_t i = 0; i < fi->n_xattrs; i++) {
		const struct fs_xattr *x = &fi->xattrs[i];
		uint8_t index;
		const char *suffix;
		if (!x->name || xattr_split(x->name, &index, &suffix) < 0) {
			log_err("%s: xattr \"%s\" has no name prefix EROFS can store (user., trusted., security., "
				"system.posix_acl_*)",
				node_path(w, idx, NULL), x->name ? x->name : "(null)");
			return -EINVAL;
		}
		size_t sl = strlen(suffix);
		if (sl > 255 || x->len > UINT16_MAX) {
			log_err("%s: xattr \"%s\" is too large for EROFS (name %zu bytes, value %zu bytes)",
				node_path(w, idx, NULL), x->name, sl, x->len);
			return -EFBIG;
		}
		total += xattr_entry_bytes(sl, x->len);
	}
	if (!fi->n_xattrs) {
		w->nodes[idx].xattr_bytes = 0;
		return 0;
	}
	/* i_xattr_icount is 16 bits: 1 + entries / 4. */
	if (total / 4 + 1 > UINT16_MAX) {
		log_err("%s: %zu xattrs take %llu bytes, more than an EROFS inode holds", node_path(w, idx, NULL),
			fi->n_xattrs, (unsigned long long)total);
		return -EFBIG;
	}
	w->nodes[idx].xattr_bytes = (uint32_t)(sizeof(struct erofs_disk_xattr_ibody) + total);
	return 0;
}

/* Compute node |idx|'s i_size and check what the format needs of it. */
static int size_node(struct writer *w, size_t idx)
{
	struct wnode *n = &w->nodes[idx];
	const struct fs_inode *fi = n->fi;
	int r = xattr_area(w, idx);
	if (r < 0)
		return r;
	if (fi->mtime_nsec > 999999999u) {
		log_err("%s: mtime nanoseconds %u out of range", node_path(w, idx, NULL), fi->mtime_nsec);
		return -EINVAL;
	}

	switch (fi->mode & S_IFMT) {
	case S_IFREG: {
		uint64_t end;
		n->size = fi->size;
		bool bad = fi->data_off % BLK || fi->data_off < BLK || !ck_add_u64(fi->data_off, fi->size, &end) ||
			   end > w->meta_off;
		if (fi->size && bad) {
			log_err("%s: data at %llu+%llu is not block aligned inside [4096, %llu)",
				node_path(w, idx, NULL), (unsigned long long)fi->data_off,
				(unsigned long long)fi->size, (unsigned long long)w->meta_off);
			return -EINVAL;
		}
		break;
	}
	case S_IFDIR:
		n->size = dir_pack(w, w->dents + n->dent_start, n->n_dents, NULL);
		if (n->size > DIR_MAX_BYTES) {
			log_err("%s: directory of %zu entries needs %llu bytes, more than EROFS allows",
				node_path(w, idx, NULL), n->n_dents - 2, (unsigned long long)n->size);
			return -EFBIG;
		}
		break;
	case S_IFLNK:
		if (!fi->symlink || strlen(fi->symlink) != fi->size || !fi->size) {
			log_err("%s: symlink target missing or not %llu bytes", node_path(w, idx, NULL),
				(unsigned long long)fi->size);
			return -EINVAL;
		}
		if (fi->size > SYMLINK_MAX) {
			log_err("%s: symlink target is %llu bytes, longer than Linux allows (%u)",
				node_path(w, idx, NULL), (unsigned long long)fi->size, SYMLINK_MAX);
			return -EFBIG;
		}
		n->size = fi->size;
		break;
	case S_IFCHR:
	case S_IFBLK:
		if (fi->rdev_major > 0xfff || fi->rdev_minor > 0xfffff) {
			log_err("%s: device %u:%u does not fit Linux's 12:20-bit encoding", node_path(w, idx, NULL),
				fi->rdev_major, fi->rdev_minor);
			return -EINVAL;
		}
		n->size = 0;
		break;
	case S_IFIFO:
	case S_IFSOCK:
		n->size = 0;
		break;
	default:
		log_err("%s: unsupported file type (mode %o)", node_path(w, idx, NULL), fi->mode);
		return -EINVAL;
	}
	return 0;
}

/* ---- pass 3: placement ---------------------------------------------------------------- */

/* Place node |n|'s inode at or after |*cur| and decide its data layout. */
static void place_node(struct wnode *n, uint64_t *cur)
{
	uint64_t head = (uint64_t)INODE_SIZE + n->xattr_bytes;
	uint64_t c = *cur;
	bool inl = false;

	n->layout = EROFS_LAYOUT_FLAT_PLAIN;
	n->tail = 0;
	n->n_data_blocks = 0;
	if (S_ISDIR(n->fi->mode) || S_ISLNK(n->fi->mode)) {
		uint64_t tail = n->size % BLK;
		if (tail && head + tail <= BLK) {
			uint64_t in_blk = c % BLK;
			if (in_blk + head + tail <= BLK) {
				inl = true;
			} else if (BLK - in_blk <= BLK - tail) {
				/* Padding to a fresh block wastes less than a plain tail block would. */
				c += BLK - in_blk;
				inl = true;
			}
		}
		if (inl) {
			n->layout = EROFS_LAYOUT_FLAT_INLINE;
			n->tail = (uint32_t)tail;
			n->n_data_blocks = n->size / BLK;
		} else {
			n->n_data_blocks = (n->size + BLK - 1) / BLK;
		}
	}
	if (!inl && head <= BLK && c % BLK + head > BLK)
		c += BLK - c % BLK; /* keep the inode and its xattrs in one block */
	n->off = c;
	/* 32-byte slots: nid = offset / 32. */
	*cur = c + ((head + n->tail + EROFS_SLOT_SIZE - 1) & ~(uint64_t)(EROFS_SLOT_SIZE - 1));
}

/* Place directory |n|'s data blocks (none when it all fits inline) on the
 * next block boundary at |*cur|. */
static void place_dir_blocks(struct wnode *n, uint64_t *cur)
{
	if (!n->n_data_blocks)
		return;
	uint64_t blk = (*cur + BLK - 1) / BLK;
	n->data_blk = blk;
	*cur = (blk + n->n_data_blocks) * BLK; /* no overflow: bounded by sizes checked in size_node */
}

/* ---- pass 4: serialisation -------------------------------------------------------------- */

static void write_xattrs(const struct fs_inode *fi, uint8_t *p)
{
	/* Header: no shared xattrs, no name filter. */
	memset(p, 0, sizeof(struct erofs_disk_xattr_ibody));
	p += sizeof(struct erofs_disk_xattr_ibody);
	for (size_t i = 0; i < fi->n_xattrs; i++) {
		const struct fs_xattr *x = &fi->xattrs[i];
		uint8_t index = 0;
		const char *suffix = "";
		(void)xattr_split(x->name, &index, &suffix); /* validated in xattr_area */
		size_t sl = strlen(suffix);
		p[0] = (uint8_t)sl;
		p[1] = index;
		put_le16(p + 2, (uint16_t)x->len);
		memcpy(p + 4, suffix, sl);
		if (x->len)
			memcpy(p + 4 + sl, x->value, x->len);
		p += xattr_entry_bytes(sl, x->len);
	}
}

static int write_node(struct writer *w, size_t idx, uint8_t *meta, uint32_t meta_blkaddr)
{
	const struct wnode *n = &w->nodes[idx];
	const struct fs_inode *fi = n->fi;
	uint8_t *p = meta + n->off;
	struct erofs_disk_inode_ext di;
	uint32_t iu = 0;

	switch (fi->mode & S_IFMT) {
	case S_IFREG:
		iu = fi->size ? (uint32_t)(fi->data_off / BLK) : 0;
		break;
	case S_IFDIR:
	case S_IFLNK:
		iu = n->n_data_blocks ? meta_blkaddr + (uint32_t)n->data_blk : 0;
		break;
	case S_IFCHR:
	case S_IFBLK:
		iu = erofs_encode_dev(fi->rdev_major, fi->rdev_minor);
		break;
	default:
		break;
	}

	memset(&di, 0, sizeof(di));
	unsigned layout_bits = (unsigned)n->layout << EROFS_IFMT_LAYOUT_SHIFT;
	di.i_format = erofs_le16((uint16_t)(EROFS_IFMT_EXTENDED | layout_bits));
	/* icount counts the 12-byte header as one 4-byte unit. */
	uint32_t entry_bytes = n->xattr_bytes ? n->xattr_bytes - (uint32_t)sizeof(struct erofs_disk_xattr_ibody) : 0;
	di.i_xattr_icount = erofs_le16(n->xattr_bytes ? (uint16_t)(entry_bytes / 4 + 1) : 0);
	di.i_mode = erofs_le16((uint16_t)fi->mode);
	di.i_size = erofs_le64(n->size);
	di.i_u = erofs_le32(iu);
	di.i_ino = erofs_le32((uint32_t)(idx + 1));
	di.i_uid = erofs_le32(fi->uid);
	di.i_gid = erofs_le32(fi->gid);
	di.i_mtime = erofs_le64((uint64_t)fi->mtime);
	di.i_mtime_nsec = erofs_le32(fi->mtime_nsec);
	di.i_nlink = erofs_le32(n->nlink);
	memcpy(p, &di, sizeof(di));
	if (n->xattr_bytes)
		write_xattrs(fi, p + INODE_SIZE);

	uint8_t *tail = p + INODE_SIZE + n->xattr_bytes;
	uint8_t *blocks = meta + n->data_blk * BLK;
	if (S_ISLNK(fi->mode)) {
		if (n->tail)
			memcpy(tail, fi->symlink, n->size);
		else
			memcpy(blocks, fi->symlink, n->size);
	} else if (S_ISDIR(fi->mode)) {
		if (!n->tail) {
			dir_pack(w, w->dents + n->dent_start, n->n_dents, blocks);
		} else {
			/* Build the whole directory, then split full blocks and the tail. */
			uint8_t *tmp = calloc(1, n->size);
			if (!tmp)
				return -ENOMEM;
			dir_pack(w, w->dents + n->dent_start, n->n_dents, tmp);
			if (n->n_data_blocks)
				memcpy(blocks, tmp, n->n_data_blocks * BLK);
			memcpy(tail, tmp + n->n_data_blocks * BLK, n->tail);
			free(tmp);
		}
	}
	return 0;
}

static void write_superblock(const struct writer *w, const uint8_t *meta, size_t meta_len, uint64_t image_size,
			     uint8_t *block0)
{
	struct erofs_disk_super sb;
	int64_t newest = 0;
	uint8_t digest[SHA256_LEN];

	for (size_t i = 0; i < w->n_nodes; i++)
		if (w->nodes[i].fi->mtime > newest)
			newest = w->nodes[i].fi->mtime;
	sha256_buf(meta, meta_len, digest);

	memset(&sb, 0, sizeof(sb));
	sb.magic = erofs_le32(EROFS_MAGIC);
	sb.feature_compat = erofs_le32(EROFS_COMPAT_SB_CRC);
	sb.blkszbits = EROFS_BLKSZ_BITS;
	sb.root_nid = erofs_le16((uint16_t)(w->nodes[0].off / EROFS_SLOT_SIZE));
	sb.inos = erofs_le64(w->n_nodes);
	sb.build_time = erofs_le64((uint64_t)newest);
	sb.blocks = erofs_le32((uint32_t)(image_size / BLK));
	sb.meta_blkaddr = erofs_le32((uint32_t)(w->meta_off / BLK));
	memcpy(sb.uuid, digest, sizeof(sb.uuid));
	memcpy(sb.volume_name, "kindling", 8);

	memset(block0, 0, BLK);
	memcpy(block0 + EROFS_SB_OFFSET, &sb, sizeof(sb));
	uint32_t crc = erofs_crc32c(0xffffffffu, block0 + EROFS_SB_OFFSET, BLK - EROFS_SB_OFFSET);
	put_le32(block0 + EROFS_SB_OFFSET + offsetof(struct erofs_disk_super, checksum), crc);
}

/* ---- entry point ------------------------------------------------------------------------- */

static int build(struct writer *w, struct fs_inode *root, struct erofs_image_layout *out)
{
	size_t ridx;
	int r;

	if ((r = add_node(w, root, 0, "", &ridx)) < 0)
		return r;
	w->nodes[ridx].nlink = 2;
	if ((r = traverse(w, ridx)) < 0)
		return r;
	if (w->n_nodes > UINT32_MAX - 1) {
		log_err("%zu inodes: more than EROFS's 32-bit inode numbers allow", w->n_nodes);
		return -EFBIG;
	}
	for (size_t i = 0; i < w->n_nodes; i++)
		if ((r = size_node(w, i)) < 0)
			return r;

	/* Slot 0 stays empty: the kernel reports nid as the inode number, and an
	 * inode number of 0 makes readdir(3) drop the entry (".." of every
	 * top-level directory would vanish). */
	uint64_t cur = EROFS_SLOT_SIZE;
	size_t e = 0;
	for (size_t i = 0; i < w->n_nodes; i++) {
		/* A directory's blocks just before its entries' inodes (its own
		 * inode, among its parent's entries, is placed already). */
		for (; e < w->n_exps && w->exps[e].first == i; e++)
			place_dir_blocks(&w->nodes[w->exps[e].dir], &cur);
		place_node(&w->nodes[i], &cur);
	}
	for (; e < w->n_exps; e++)
		place_dir_blocks(&w->nodes[w->exps[e].dir], &cur);
	if (w->nodes[0].off / EROFS_SLOT_SIZE > UINT16_MAX) {
		log_err("/: root nid %llu does not fit the superblock's 16 bits",
			(unsigned long long)(w->nodes[0].off / EROFS_SLOT_SIZE));
		return -EFBIG;
	}
	uint64_t blk = (cur + BLK - 1) / BLK;
	for (size_t i = 0; i < w->n_nodes; i++) {
		struct wnode *n = &w->nodes[i];
		if (S_ISDIR(n->fi->mode))
			continue; /* placed with its entries */
		n->data_blk = blk;
		blk += n->n_data_blocks; /* no overflow: bounded by sizes checked above */
	}

	uint64_t meta_blocks = blk, meta_len64, image_size, image_blocks;
	if (!ck_mul_u64(meta_blocks, BLK, &meta_len64) || meta_len64 > SIZE_MAX ||
	    !ck_add_u64(w->meta_off, meta_len64, &image_size) ||
	    !ck_align_up_u64(image_size, CHUNK_SIZE, &image_size) || (image_blocks = image_size / BLK) > UINT32_MAX) {
		log_err("%zu inodes need %llu metadata blocks after block %llu: the image would exceed EROFS's 2^32 "
			"blocks",
			w->n_nodes, (unsigned long long)meta_blocks, (unsigned long long)(w->meta_off / BLK));
		return -EFBIG;
	}

	uint8_t *meta = calloc(1, (size_t)meta_len64);
	if (!meta)
		return -ENOMEM;
	uint32_t meta_blkaddr = (uint32_t)(w->meta_off / BLK);
	for (size_t i = 0; i < w->n_nodes; i++) {
		if ((r = write_node(w, i, meta, meta_blkaddr)) < 0) {
			free(meta);
			return r;
		}
	}

	memset(out, 0, sizeof(*out));
	out->meta_off = w->meta_off;
	out->meta = meta;
	out->meta_len = (size_t)meta_len64;
	out->image_size = image_size;
	out->inode_count = w->n_nodes;
	write_superblock(w, meta, out->meta_len, image_size, out->superblock);

	for (size_t i = 0; i < w->n_nodes; i++) {
		struct wnode *n = &w->nodes[i];
		n->fi->nid = n->off / EROFS_SLOT_SIZE;
		n->fi->ino = (uint32_t)(i + 1);
		n->fi->nlink = n->nlink;
	}
	return 0;
}

int erofs_write_metadata(struct fs_inode *root, uint64_t meta_off, struct erofs_image_layout *out)
{
	if (!root || !out || !is_dir(root)) {
		log_err("erofs: the root of the tree must be a directory");
		return -EINVAL;
	}
	if (meta_off < CHUNK_SIZE || meta_off % CHUNK_SIZE) {
		log_err("erofs: metadata offset %llu is not a positive multiple of %u", (unsigned long long)meta_off,
			CHUNK_SIZE);
		return -EINVAL;
	}
	struct writer *w = calloc(1, sizeof(*w));
	if (!w)
		return -ENOMEM;
	w->meta_off = meta_off;
	int r = build(w, root, out);
	if (r == -ENOMEM)
		log_err("erofs: out of memory writing metadata for %zu inodes", w->n_nodes);
	free(w->nodes);
	free(w->dents);
	free(w->exps);
	free(w->map);
	free(w);
	return r;
}

void erofs_layout_cleanup(struct erofs_image_layout *l)
{
	if (!l)
		return;
	free(l->meta);
	l->meta = NULL;
	l->meta_len = 0;
}
