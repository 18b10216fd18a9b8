/* EROFS reader: blockd's own view of the file tree in an image.
 *
 * Reads any uncompressed EROFS image, not only what kindling's writer makes:
 * compact (32-byte) and extended (64-byte) inodes; FLAT_PLAIN, FLAT_INLINE
 * and CHUNK_BASED data (block-map and chunk-index forms, EROFS_NULL_ADDR
 * holes); inline and shared xattrs.  Refused with -EOPNOTSUPP: compressed
 * inodes, long xattr name prefixes, extra devices, directory block sizes
 * other than the block size, block sizes above 4 KiB, unknown incompat
 * features.
 *
 * The image is hostile input.  Every position is computed with checked
 * arithmetic and every read is checked against the device's size before it
 * is issued (dev_read).  A bad image gives -EUCLEAN with one logged reason
 * (corrupt()); after the first few reports further ones go to debug level so
 * a broken image cannot flood the log.
 *
 * Nothing is cached but the parsed superblock, which never changes after
 * erofs_open, so any number of threads may call in at once.  Every call
 * works in fixed-size stack buffers: no allocation after erofs_open.  The
 * API is nid based, so a directory cycle in a hostile image cannot make this
 * code recurse; each call does work bounded by the sizes it reads.
 */
#include "internal.h"
#include "common/erofs_format.h"

#include <errno.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- format pieces beyond what kindling's writer emits --------------------------- */

#define SB_SIZE 128u
#define COMPAT_SB_CHKSUM EROFS_COMPAT_SB_CRC

/* feature_incompat bits this reader understands.  Compression-only bits are
 * accepted: compressed inodes are refused one by one, the rest of the tree
 * stays readable. */
#define INCOMPAT_ZERO_PADDING 0x01u	/* compression only */
#define INCOMPAT_COMPR_CFGS 0x02u	/* compression only (also BIG_PCLUSTER) */
#define INCOMPAT_CHUNKED_FILE 0x04u
#define INCOMPAT_DEVICE_TABLE 0x08u	/* also COMPR_HEAD2; extra devices refused */
#define INCOMPAT_ZTAILPACKING 0x10u	/* compression only */
#define INCOMPAT_FRAGMENTS 0x20u	/* compression only (also DEDUPE) */
#define INCOMPAT_XATTR_PREFIXES 0x40u	/* long prefixes refused per entry */
#define INCOMPAT_KNOWN 0x7fu

/* Superblock fields past kindling's struct (in its reserved[] area). */
#define SB_OFF_EXTRA_DEVICES 86u	/* le16 */
#define SB_OFF_DIRBLKBITS 90u		/* u8 */

#define LAYOUT_COMPRESSED_FULL 1u
#define LAYOUT_COMPRESSED_COMPACT 3u
#define LAYOUT_CHUNK_BASED 4u
#define IFMT_KNOWN_BITS 0x0fu		/* version bit + 3 layout bits */

/* The 32-byte compact inode: field offsets. */
#define COMPACT_SIZE 32u
#define CI_FORMAT 0u
#define CI_XATTR_ICOUNT 2u
#define CI_MODE 4u
#define CI_NLINK 6u
#define CI_SIZE 8u
#define CI_U 16u
#define CI_UID 24u
#define CI_GID 26u
#define CI_MTIME 28u			/* seconds after the superblock's build_time */
#define EXTENDED_SIZE ((uint32_t)sizeof(struct erofs_disk_inode_ext))

/* CHUNK_BASED: i_u's low 16 bits. */
#define CHUNK_FORMAT_BLKBITS_MASK 0x1fu
#define CHUNK_FORMAT_INDEXES 0x20u
#define CHUNK_FORMAT_ALL 0x3fu
#define CHUNK_INDEX_SIZE 8u		/* le16 advise, le16 device_id, le32 blkaddr */
#define BLOCK_MAP_ENTRY_SIZE 4u		/* le32 blkaddr */
#define NULL_ADDR 0xffffffffu		/* a hole: reads as zeros */

#define XATTR_LONG_PREFIX 0x80u
#define XATTR_IBODY_HDR ((uint32_t)sizeof(struct erofs_disk_xattr_ibody))
#define XATTR_ENTRY_HDR ((uint32_t)sizeof(struct erofs_disk_xattr_entry))
#define XATTR_IDX_LUSTRE 5u

#define DIRENT_SIZE ((uint32_t)sizeof(struct erofs_disk_dirent))
#define MAX_BLKBITS 12u			/* stack buffers hold one block */
#define MAX_BLKSZ (1u << MAX_BLKBITS)
#define MIN_BLKBITS 9u
#define DIR_MAX_SIZE (1ull << 40)	/* far above anything real; keeps cookies in range */
#define SYMLINK_MAX 4095u		/* PATH_MAX - 1 */
#define REPORTS_AT_ERR 16u		/* corruption reports logged at LOG_ERR */

struct erofs_fs {
	const struct blockdev *dev;
	uint64_t dev_size;
	unsigned blkbits;
	uint32_t blksz;
	uint64_t meta_base;	/* byte offset of nid 0 */
	uint64_t xattr_base;	/* byte offset of the shared xattr area */
	uint64_t root_nid;
	uint64_t nid_limit;	/* nids at or above this start past the device end */
	uint64_t build_time;
	uint32_t build_time_nsec;
	atomic_uint n_reports;
};

/* One inode as read by read_inode: one device read of at most 64 bytes. */
struct inode {
	uint64_t nid;
	uint64_t pos;		/* byte offset of the inode on the device */
	uint32_t isize;		/* 32 or 64 */
	uint32_t xattr_isize;	/* bytes of the inline xattr area */
	unsigned layout;
	uint32_t mode, uid, gid, nlink;
	uint64_t size;
	uint32_t iu;		/* raw_blkaddr, rdev or chunk format */
	int64_t mtime;
	uint32_t mtime_nsec;
	unsigned chunkbits;	/* CHUNK_BASED only */
};

/* ---- errors and device access ------------------------------------------------------- */

__attribute__((format(printf, 2, 3))) static int corrupt(struct erofs_fs *fs, const char *fmt, ...)
{
	unsigned n = atomic_fetch_add_explicit(&fs->n_reports, 1, memory_order_relaxed);
	char msg[320];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	log_msg(n < REPORTS_AT_ERR ? LOG_ERR : LOG_DEBUG, LOG_COMPONENT, "erofs: corrupt image: %s%s", msg,
		n + 1 == REPORTS_AT_ERR ? " (further reports at debug level)" : "");
	return -EUCLEAN;
}

/* Read |len| bytes at |off|, which came from the image: -EUCLEAN (naming
 * |what| of |nid|) if any of it lies past the device's end. */
static int dev_read(struct erofs_fs *fs, uint64_t off, void *buf, size_t len, const char *what, uint64_t nid)
{
	uint64_t end;
	if (!ck_add_u64(off, len, &end) || end > fs->dev_size)
		return corrupt(fs, "%s of nid %llu: %zu bytes at %llu lie past the end of the %llu-byte image", what,
			       (unsigned long long)nid, len, (unsigned long long)off,
			       (unsigned long long)fs->dev_size);
	if (!len)
		return 0;
	int r = blockdev_read(fs->dev, off, buf, len);
	if (r < 0)
		log_debug("erofs: read %zu bytes at %llu (%s of nid %llu): %s", len, (unsigned long long)off, what,
			  (unsigned long long)nid, strerror(-r));
	return r;
}

/* ---- inodes ------------------------------------------------------------------------- */

static bool is_compressed(unsigned layout)
{
	return layout == LAYOUT_COMPRESSED_FULL || layout == LAYOUT_COMPRESSED_COMPACT;
}

static int read_inode(struct erofs_fs *fs, uint64_t nid, struct inode *ino)
{
	if (nid >= fs->nid_limit)
		return corrupt(fs, "nid %llu lies past the end of the image", (unsigned long long)nid);
	/* nid < nid_limit: no overflow, and at least 32 bytes remain. */
	uint64_t pos = fs->meta_base + nid * EROFS_SLOT_SIZE;
	uint64_t avail = fs->dev_size - pos;
	size_t want = avail < EXTENDED_SIZE ? (size_t)avail : EXTENDED_SIZE;
	uint8_t raw[EXTENDED_SIZE];
	int r = dev_read(fs, pos, raw, want, "inode", nid);
	if (r < 0)
		return r;

	uint16_t ifmt = get_le16(raw + CI_FORMAT);
	if (ifmt & ~IFMT_KNOWN_BITS) {
		log_warn("erofs: nid %llu: unsupported i_format %#x", (unsigned long long)nid, ifmt);
		return -EOPNOTSUPP;
	}
	memset(ino, 0, sizeof(*ino));
	ino->nid = nid;
	ino->pos = pos;
	ino->layout = (ifmt >> EROFS_IFMT_LAYOUT_SHIFT) & EROFS_IFMT_LAYOUT_MASK;
	uint16_t icount = get_le16(raw + CI_XATTR_ICOUNT);
	ino->xattr_isize = erofs_xattr_ibody_bytes(icount);
	ino->mode = get_le16(raw + CI_MODE);

	if (ifmt & EROFS_IFMT_EXTENDED) {
		if (want < EXTENDED_SIZE)
			return corrupt(fs, "extended inode nid %llu is cut off by the end of the image",
				       (unsigned long long)nid);
		ino->isize = EXTENDED_SIZE;
		ino->size = get_le64(raw + offsetof(struct erofs_disk_inode_ext, i_size));
		ino->iu = get_le32(raw + offsetof(struct erofs_disk_inode_ext, i_u));
		ino->uid = get_le32(raw + offsetof(struct erofs_disk_inode_ext, i_uid));
		ino->gid = get_le32(raw + offsetof(struct erofs_disk_inode_ext, i_gid));
		ino->mtime = (int64_t)get_le64(raw + offsetof(struct erofs_disk_inode_ext, i_mtime));
		ino->mtime_nsec = get_le32(raw + offsetof(struct erofs_disk_inode_ext, i_mtime_nsec));
		ino->nlink = get_le32(raw + offsetof(struct erofs_disk_inode_ext, i_nlink));
	} else {
		ino->isize = COMPACT_SIZE;
		ino->size = get_le32(raw + CI_SIZE);
		ino->iu = get_le32(raw + CI_U);
		ino->uid = get_le16(raw + CI_UID);
		ino->gid = get_le16(raw + CI_GID);
		/* Compact inodes inherit the build time; newer formats add a
		 * per-inode offset here (older writers leave it 0). */
		ino->mtime = (int64_t)(fs->build_time + get_le32(raw + CI_MTIME));
		ino->mtime_nsec = fs->build_time_nsec;
		ino->nlink = get_le16(raw + CI_NLINK);
	}
	if (ino->mtime_nsec > 999999999u)
		ino->mtime_nsec = 0; /* nonsense, but harmless to show */

	switch (ino->mode & S_IFMT) {
	case S_IFREG:
	case S_IFDIR:
	case S_IFLNK:
		break;
	case S_IFCHR:
	case S_IFBLK:
	case S_IFIFO:
	case S_IFSOCK:
		return 0; /* no data: the layout does not matter */
	default:
		return corrupt(fs, "nid %llu: bogus i_mode %#o", (unsigned long long)nid, ino->mode);
	}
	if (ino->layout > LAYOUT_CHUNK_BASED) {
		log_warn("erofs: nid %llu: unsupported data layout %u", (unsigned long long)nid, ino->layout);
		return -EOPNOTSUPP;
	}
	if (ino->layout == LAYOUT_CHUNK_BASED) {
		uint32_t cfmt = ino->iu & 0xffffu;
		if (cfmt & ~CHUNK_FORMAT_ALL) {
			log_warn("erofs: nid %llu: unsupported chunk format %#x", (unsigned long long)nid, cfmt);
			return -EOPNOTSUPP;
		}
		/* At most 12 + 31 bits: shifts stay in range. */
		ino->chunkbits = fs->blkbits + (cfmt & CHUNK_FORMAT_BLKBITS_MASK);
	}
	if (ino->size > (uint64_t)INT64_MAX)
		return corrupt(fs, "nid %llu: size %llu is negative as an off_t", (unsigned long long)nid,
			       (unsigned long long)ino->size);
	if (S_ISDIR(ino->mode) && ino->size > DIR_MAX_SIZE)
		return corrupt(fs, "directory nid %llu claims %llu bytes", (unsigned long long)nid,
			       (unsigned long long)ino->size);
	return 0;
}

/* Where the bytes after the inode and its inline xattrs start. */
static int inode_tail_pos(struct erofs_fs *fs, const struct inode *ino, uint64_t *out)
{
	if (!ck_add_u64(ino->pos, (uint64_t)ino->isize + ino->xattr_isize, out))
		return corrupt(fs, "nid %llu: inline area overflows", (unsigned long long)ino->nid);
	return 0;
}

static int refuse_compressed(const struct inode *ino)
{
	log_debug("erofs: nid %llu is compressed: not supported", (unsigned long long)ino->nid);
	return -EOPNOTSUPP;
}

/* ---- file data ------------------------------------------------------------------------- */

/* FLAT_PLAIN / FLAT_INLINE: the device position of logical offset |off|
 * (< size) and how many bytes from there are contiguous. */
static int map_flat(struct erofs_fs *fs, const struct inode *ino, uint64_t off, uint64_t *out_pa,
		    uint64_t *out_len)
{
	uint64_t nblocks = (ino->size >> fs->blkbits) + ((ino->size & (fs->blksz - 1)) != 0);
	uint64_t raw_blocks = nblocks - (nblocks && ino->layout == EROFS_LAYOUT_FLAT_INLINE);
	uint64_t raw_bytes = raw_blocks << fs->blkbits; /* <= size rounded up: no overflow */
	uint64_t base = (uint64_t)ino->iu << fs->blkbits;

	if (off < raw_bytes) {
		if (!ck_add_u64(base, off, out_pa))
			return corrupt(fs, "nid %llu: block address overflows", (unsigned long long)ino->nid);
		*out_len = raw_bytes - off;
		return 0;
	}
	/* The inline tail: after the inode and xattrs, inside one block. */
	uint64_t tail_pos;
	int r = inode_tail_pos(fs, ino, &tail_pos);
	if (r < 0)
		return r;
	uint64_t tail_len = ino->size - raw_bytes;
	if ((tail_pos & (fs->blksz - 1)) + tail_len > fs->blksz)
		return corrupt(fs, "nid %llu: %llu bytes of inline data cross a block boundary",
			       (unsigned long long)ino->nid, (unsigned long long)tail_len);
	*out_pa = tail_pos + (off - raw_bytes);
	*out_len = ino->size - off;
	return 0;
}

#define CHUNK_BATCH 64u

/* CHUNK_BASED: read [off, off + len) chunk by chunk, reading the index table
 * in batches and merging physically adjacent chunks into one device read. */
static int read_chunked(struct erofs_fs *fs, const struct inode *ino, uint64_t off, uint8_t *buf, size_t len)
{
	unsigned unit = (ino->iu & CHUNK_FORMAT_INDEXES) ? CHUNK_INDEX_SIZE : BLOCK_MAP_ENTRY_SIZE;
	uint64_t chunk = 1ull << ino->chunkbits;
	uint64_t table;
	int r = inode_tail_pos(fs, ino, &table);
	if (r < 0)
		return r;
	if (!ck_align_up_u64(table, unit, &table))
		return corrupt(fs, "nid %llu: chunk table position overflows", (unsigned long long)ino->nid);

	uint64_t run_pa = 0, run_len = 0; /* pending contiguous device read */
	uint8_t *run_buf = buf;
	while (len) {
		uint64_t first = off >> ino->chunkbits;
		uint64_t last = (off + len - 1) >> ino->chunkbits; /* off + len <= size: no overflow */
		uint64_t n = last - first + 1;
		if (n > CHUNK_BATCH)
			n = CHUNK_BATCH;
		uint8_t idx[CHUNK_BATCH * CHUNK_INDEX_SIZE];
		uint64_t at;
		if (!ck_mul_u64(first, unit, &at) || !ck_add_u64(at, table, &at))
			return corrupt(fs, "nid %llu: chunk index position overflows", (unsigned long long)ino->nid);
		if ((r = dev_read(fs, at, idx, (size_t)(n * unit), "chunk index", ino->nid)) < 0)
			return r;
		for (uint64_t i = 0; i < n && len; i++) {
			uint64_t in_chunk = off & (chunk - 1);
			uint64_t piece = chunk - in_chunk;
			if (piece > len)
				piece = len;
			uint32_t blkaddr = get_le32(idx + i * unit + (unit == CHUNK_INDEX_SIZE ? 4 : 0));
			if (blkaddr == NULL_ADDR) {
				if (run_len && (r = dev_read(fs, run_pa, run_buf, run_len, "chunk", ino->nid)) < 0)
					return r;
				run_len = 0;
				memset(buf, 0, piece);
			} else {
				uint64_t pa = ((uint64_t)blkaddr << fs->blkbits) + in_chunk; /* < 2^44 + 2^43 */
				if (run_len && run_pa + run_len != pa) {
					if ((r = dev_read(fs, run_pa, run_buf, run_len, "chunk", ino->nid)) < 0)
						return r;
					run_len = 0;
				}
				if (!run_len) {
					run_pa = pa;
					run_buf = buf;
				}
				run_len += piece;
			}
			buf += piece;
			off += piece;
			len -= piece;
		}
	}
	if (run_len && (r = dev_read(fs, run_pa, run_buf, run_len, "chunk", ino->nid)) < 0)
		return r;
	return 0;
}

/* Read [off, off + len) of |ino|'s data; the caller keeps it inside size. */
static int read_data(struct erofs_fs *fs, const struct inode *ino, uint64_t off, void *buf, size_t len)
{
	if (is_compressed(ino->layout))
		return refuse_compressed(ino);
	if (ino->layout == LAYOUT_CHUNK_BASED)
		return read_chunked(fs, ino, off, buf, len);
	uint8_t *p = buf;
	while (len) {
		uint64_t pa = 0, n = 0;
		int r = map_flat(fs, ino, off, &pa, &n);
		if (r < 0)
			return r;
		if (n > len)
			n = len;
		if ((r = dev_read(fs, pa, p, (size_t)n, "data", ino->nid)) < 0)
			return r;
		p += n;
		off += n;
		len -= n;
	}
	return 0;
}

/* ---- directories ------------------------------------------------------------------------ */

struct dirblock {
	uint8_t data[MAX_BLKSZ];
	uint32_t len;		/* bytes of this block in the directory */
	uint32_t n;		/* entries */
};

static uint64_t dir_blocks(const struct erofs_fs *fs, const struct inode *dir)
{
	return (dir->size >> fs->blkbits) + ((dir->size & (fs->blksz - 1)) != 0);
}

/* Read directory block |blk| (< dir_blocks) and check its header. */
static int dir_read_block(struct erofs_fs *fs, const struct inode *dir, uint64_t blk, struct dirblock *b)
{
	uint64_t off = blk << fs->blkbits;
	uint64_t left = dir->size - off;
	b->len = left < fs->blksz ? (uint32_t)left : fs->blksz;
	int r = read_data(fs, dir, off, b->data, b->len);
	if (r < 0)
		return r;
	if (b->len < DIRENT_SIZE)
		return corrupt(fs, "directory nid %llu: block %llu is only %u bytes", (unsigned long long)dir->nid,
			       (unsigned long long)blk, b->len);
	uint32_t nameoff0 = get_le16(b->data + offsetof(struct erofs_disk_dirent, nameoff));
	if (nameoff0 < DIRENT_SIZE || nameoff0 >= b->len)
		return corrupt(fs, "directory nid %llu: block %llu: first name offset %u outside [12, %u)",
			       (unsigned long long)dir->nid, (unsigned long long)blk, nameoff0, b->len);
	b->n = nameoff0 / DIRENT_SIZE;
	return 0;
}

struct dent {
	uint64_t nid;
	unsigned file_type;
	const char *name;	/* inside the dirblock, not terminated */
	uint32_t len;
};

/* Entry |i| (< b->n) of a block read by dir_read_block. */
static int dir_entry(struct erofs_fs *fs, const struct inode *dir, const struct dirblock *b, uint32_t i,
		     struct dent *out)
{
	const uint8_t *de = b->data + (size_t)i * DIRENT_SIZE; /* n * 12 <= nameoff0 < len */
	uint32_t start = get_le16(de + offsetof(struct erofs_disk_dirent, nameoff));
	uint32_t end;
	if (start < b->n * DIRENT_SIZE || start >= b->len)
		return corrupt(fs, "directory nid %llu: entry %u: name offset %u outside [%u, %u)",
			       (unsigned long long)dir->nid, i, start, b->n * DIRENT_SIZE, b->len);
	if (i + 1 < b->n)
		end = get_le16(de + DIRENT_SIZE + offsetof(struct erofs_disk_dirent, nameoff));
	else
		end = start + (uint32_t)strnlen((const char *)b->data + start, b->len - start);
	if (end <= start || end > b->len || end - start > EROFS_NAME_MAX)
		return corrupt(fs, "directory nid %llu: entry %u: name [%u, %u) is empty, too long or outside the "
				   "%u-byte block",
			       (unsigned long long)dir->nid, i, start, end, b->len);
	/* A NUL or '/' in a name would change what the name means to
	 * every caller that passes it on as a C string or a path. */
	const uint8_t *name = b->data + start;
	if (memchr(name, '\0', end - start) || memchr(name, '/', end - start))
		return corrupt(fs, "directory nid %llu: entry %u: name contains a NUL or '/'",
			       (unsigned long long)dir->nid, i);
	out->nid = get_le64(de + offsetof(struct erofs_disk_dirent, nid));
	out->file_type = de[offsetof(struct erofs_disk_dirent, file_type)];
	out->name = (const char *)b->data + start;
	out->len = end - start;
	return 0;
}

/* Byte order, a name before its extensions: the order EROFS sorts in. */
static int name_cmp(const char *a, size_t alen, const char *b, size_t blen)
{
	int c = memcmp(a, b, alen < blen ? alen : blen);
	if (c)
		return c;
	return (alen > blen) - (alen < blen);
}

static int read_dir_inode(struct erofs_fs *fs, uint64_t nid, struct inode *dir)
{
	int r = read_inode(fs, nid, dir);
	if (r < 0)
		return r;
	if (!S_ISDIR(dir->mode))
		return -ENOTDIR;
	if (is_compressed(dir->layout))
		return refuse_compressed(dir);
	return 0;
}

/* ---- stat ---------------------------------------------------------------------------------- */

static void fill_stat(const struct erofs_fs *fs, const struct inode *ino, struct erofs_stat *st)
{
	memset(st, 0, sizeof(*st));
	st->nid = ino->nid;
	/* The kernel reports the nid; nid 0 would be inode number 0, which
	 * readdir(3) callers skip, so it gets a number no nid can have. */
	st->ino = ino->nid ? ino->nid : fs->nid_limit;
	st->mode = ino->mode;
	st->uid = ino->uid;
	st->gid = ino->gid;
	st->nlink = ino->nlink;
	st->size = ino->size;
	st->mtime = ino->mtime;
	st->mtime_nsec = ino->mtime_nsec;
	if (S_ISCHR(ino->mode) || S_ISBLK(ino->mode))
		erofs_decode_dev(ino->iu, &st->rdev_major, &st->rdev_minor);
}

/* ---- public API ------------------------------------------------------------------------------ */

int erofs_open(const struct blockdev *dev, struct erofs_fs **out)
{
	if (!dev || !out || !dev->read_at)
		return -EINVAL;
	*out = NULL;
	struct erofs_fs *fs = calloc(1, sizeof(*fs));
	if (!fs)
		return -ENOMEM;
	fs->dev = dev;
	fs->dev_size = dev->size;
	atomic_init(&fs->n_reports, 0);

	uint8_t sb[SB_SIZE];
	int r;
	if (fs->dev_size < (uint64_t)EROFS_SB_OFFSET + SB_SIZE) {
		r = corrupt(fs, "%llu bytes is too small to hold a superblock", (unsigned long long)fs->dev_size);
		goto fail;
	}
	if ((r = dev_read(fs, EROFS_SB_OFFSET, sb, sizeof(sb), "superblock", 0)) < 0)
		goto fail;
	uint32_t magic = get_le32(sb + offsetof(struct erofs_disk_super, magic));
	if (magic != EROFS_MAGIC) {
		r = corrupt(fs, "bad superblock magic %#x (is this an EROFS image?)", magic);
		goto fail;
	}
	unsigned blkbits = sb[offsetof(struct erofs_disk_super, blkszbits)];
	if (blkbits < MIN_BLKBITS || blkbits > MAX_BLKBITS) {
		if (blkbits < MIN_BLKBITS || blkbits > 16) {
			r = corrupt(fs, "block size 2^%u is invalid", blkbits);
		} else {
			log_err("erofs: block size %u is not supported (at most %u)", 1u << blkbits, MAX_BLKSZ);
			r = -EOPNOTSUPP;
		}
		goto fail;
	}
	fs->blkbits = blkbits;
	fs->blksz = 1u << blkbits;

	uint32_t incompat = get_le32(sb + offsetof(struct erofs_disk_super, feature_incompat));
	if (incompat & ~INCOMPAT_KNOWN) {
		log_err("erofs: unsupported incompatible features %#x", incompat & ~INCOMPAT_KNOWN);
		r = -EOPNOTSUPP;
		goto fail;
	}
	if (get_le16(sb + SB_OFF_EXTRA_DEVICES)) {
		log_err("erofs: image uses %u extra devices: not supported", get_le16(sb + SB_OFF_EXTRA_DEVICES));
		r = -EOPNOTSUPP;
		goto fail;
	}
	if (sb[SB_OFF_DIRBLKBITS]) {
		log_err("erofs: directory block size differs from the block size: not supported");
		r = -EOPNOTSUPP;
		goto fail;
	}

	uint32_t compat = get_le32(sb + offsetof(struct erofs_disk_super, feature_compat));
	if (compat & COMPAT_SB_CHKSUM) {
		/* crc32c of the superblock's block from the superblock on
		 * (the whole block if it is 1 KiB or smaller). */
		uint32_t len = fs->blksz > EROFS_SB_OFFSET ? fs->blksz - EROFS_SB_OFFSET : fs->blksz;
		uint8_t blk[MAX_BLKSZ];
		if ((r = dev_read(fs, EROFS_SB_OFFSET, blk, len, "superblock checksum area", 0)) < 0)
			goto fail;
		uint32_t want = get_le32(blk + offsetof(struct erofs_disk_super, checksum));
		put_le32(blk + offsetof(struct erofs_disk_super, checksum), 0);
		uint32_t got = erofs_crc32c(0xffffffffu, blk, len);
		if (got != want) {
			r = corrupt(fs, "superblock checksum %#x, expected %#x", got, want);
			goto fail;
		}
	}

	fs->meta_base = (uint64_t)get_le32(sb + offsetof(struct erofs_disk_super, meta_blkaddr)) << blkbits;
	fs->xattr_base = (uint64_t)get_le32(sb + offsetof(struct erofs_disk_super, xattr_blkaddr)) << blkbits;
	fs->root_nid = get_le16(sb + offsetof(struct erofs_disk_super, root_nid));
	fs->build_time = get_le64(sb + offsetof(struct erofs_disk_super, build_time));
	fs->build_time_nsec = get_le32(sb + offsetof(struct erofs_disk_super, build_time_nsec));
	if (fs->meta_base >= fs->dev_size) {
		r = corrupt(fs, "metadata starts at %llu, past the end of the %llu-byte image",
			    (unsigned long long)fs->meta_base, (unsigned long long)fs->dev_size);
		goto fail;
	}
	/* nid n is valid only if its 32-byte slot ends inside the device. */
	fs->nid_limit = (fs->dev_size - fs->meta_base) / EROFS_SLOT_SIZE;

	struct inode root;
	if ((r = read_inode(fs, fs->root_nid, &root)) < 0)
		goto fail;
	if (!S_ISDIR(root.mode)) {
		r = corrupt(fs, "root nid %llu is not a directory (mode %#o)", (unsigned long long)fs->root_nid,
			    root.mode);
		goto fail;
	}
	*out = fs;
	return 0;
fail:
	free(fs);
	return r;
}

void erofs_close(struct erofs_fs *fs)
{
	free(fs);
}

uint64_t erofs_root(const struct erofs_fs *fs)
{
	return fs->root_nid;
}

int erofs_getattr(struct erofs_fs *fs, uint64_t nid, struct erofs_stat *out)
{
	struct inode ino;
	int r = read_inode(fs, nid, &ino);
	if (r < 0)
		return r;
	fill_stat(fs, &ino, out);
	return 0;
}

int erofs_lookup(struct erofs_fs *fs, uint64_t dirnid, const char *name, struct erofs_stat *out)
{
	size_t nlen = strlen(name);
	if (!nlen || nlen > EROFS_NAME_MAX)
		return -ENOENT;
	struct inode dir;
	int r = read_dir_inode(fs, dirnid, &dir);
	if (r < 0)
		return r;

	/* Find the last block whose first name is <= |name|.  Each probe
	 * halves [lo, hi), so a hostile order costs at most log2(blocks)
	 * reads; it can hide names but cannot loop. */
	struct dirblock bufs[2];
	struct dirblock *cand = NULL;
	unsigned cur = 0;
	uint64_t lo = 0, hi = dir_blocks(fs, &dir);
	struct dent d;
	while (lo < hi) {
		uint64_t mid = lo + (hi - lo) / 2;
		struct dirblock *b = &bufs[cur];
		if ((r = dir_read_block(fs, &dir, mid, b)) < 0 || (r = dir_entry(fs, &dir, b, 0, &d)) < 0)
			return r;
		int c = name_cmp(name, nlen, d.name, d.len);
		if (!c)
			goto found;
		if (c > 0) {
			cand = b;
			cur ^= 1; /* keep the candidate's buffer */
			lo = mid + 1;
		} else {
			hi = mid;
		}
	}
	if (!cand)
		return -ENOENT;
	/* Within the candidate block, entries 1..n-1. */
	uint32_t elo = 1, ehi = cand->n;
	while (elo < ehi) {
		uint32_t mid = elo + (ehi - elo) / 2;
		if ((r = dir_entry(fs, &dir, cand, mid, &d)) < 0)
			return r;
		int c = name_cmp(name, nlen, d.name, d.len);
		if (!c)
			goto found;
		if (c > 0)
			elo = mid + 1;
		else
			ehi = mid;
	}
	return -ENOENT;
found:
	return erofs_getattr(fs, d.nid, out);
}

int erofs_readdir(struct erofs_fs *fs, uint64_t dirnid, uint64_t cookie, erofs_dirent_cb cb, void *arg)
{
	struct inode dir;
	int r = read_dir_inode(fs, dirnid, &dir);
	if (r < 0)
		return r;
	uint64_t nblocks = dir_blocks(fs, &dir);
	uint64_t blk = cookie >> fs->blkbits;
	uint32_t first = (uint32_t)(cookie & (fs->blksz - 1)) / DIRENT_SIZE;
	struct dirblock b;
	char name[EROFS_NAME_MAX + 1];

	for (; blk < nblocks; blk++, first = 0) {
		if ((r = dir_read_block(fs, &dir, blk, &b)) < 0)
			return r;
		for (uint32_t i = first; i < b.n; i++) {
			struct dent d;
			if ((r = dir_entry(fs, &dir, &b, i, &d)) < 0)
				return r;
			/* Cookies are directory byte offsets: of the next
			 * dirent, or of the next block after the last one
			 * (< 2^41: directories are at most DIR_MAX_SIZE). */
			uint64_t next = i + 1 < b.n ? (blk << fs->blkbits) + (uint64_t)(i + 1) * DIRENT_SIZE
						    : (blk + 1) << fs->blkbits;
			memcpy(name, d.name, d.len);
			name[d.len] = '\0';
			if (cb(arg, name, d.len, d.nid, d.file_type, next))
				return 0;
		}
	}
	return 0;
}

int erofs_read(struct erofs_fs *fs, uint64_t nid, uint64_t off, void *buf, size_t len, size_t *out_n)
{
	struct inode ino;
	*out_n = 0;
	int r = read_inode(fs, nid, &ino);
	if (r < 0)
		return r;
	if (S_ISDIR(ino.mode))
		return -EISDIR;
	if (!S_ISREG(ino.mode))
		return -EINVAL;
	if (off >= ino.size || !len)
		return 0;
	uint64_t left = ino.size - off;
	size_t n = left < len ? (size_t)left : len;
	if ((r = read_data(fs, &ino, off, buf, n)) < 0)
		return r;
	*out_n = n;
	return 0;
}

int erofs_data_extent(struct erofs_fs *fs, uint64_t nid, uint64_t *out_off, uint64_t *out_len)
{
	struct inode ino;
	int r = read_inode(fs, nid, &ino);
	if (r < 0)
		return r;
	*out_off = *out_len = 0;
	if (!S_ISREG(ino.mode) || !ino.size ||
	    (ino.layout != EROFS_LAYOUT_FLAT_PLAIN && ino.layout != EROFS_LAYOUT_FLAT_INLINE))
		return 0;
	/* Only block-mapped data: an inline tail lives with the metadata. */
	uint64_t nblocks = (ino.size >> fs->blkbits) + ((ino.size & (fs->blksz - 1)) != 0);
	uint64_t raw_blocks = nblocks - (ino.layout == EROFS_LAYOUT_FLAT_INLINE);
	if (!raw_blocks)
		return 0;
	uint64_t pa, len;
	if ((r = map_flat(fs, &ino, 0, &pa, &len)) < 0)
		return r;
	uint64_t end;
	if (!ck_add_u64(pa, len, &end) || end > fs->dev_size)
		return corrupt(fs, "nid %llu: %llu bytes of data at %llu lie past the end of the image",
			       (unsigned long long)nid, (unsigned long long)len, (unsigned long long)pa);
	*out_off = pa;
	*out_len = len;
	return 0;
}

int erofs_readlink(struct erofs_fs *fs, uint64_t nid, char *buf, size_t cap)
{
	struct inode ino;
	int r = read_inode(fs, nid, &ino);
	if (r < 0)
		return r;
	if (!S_ISLNK(ino.mode))
		return -EINVAL;
	if (!ino.size || ino.size > SYMLINK_MAX)
		return corrupt(fs, "symlink nid %llu: target of %llu bytes", (unsigned long long)nid,
			       (unsigned long long)ino.size);
	if (cap < ino.size + 1)
		return -ERANGE;
	if ((r = read_data(fs, &ino, 0, buf, (size_t)ino.size)) < 0)
		return r;
	buf[ino.size] = '\0';
	return 0;
}

/* ---- xattrs ------------------------------------------------------------------------------------- */

static const char *const xattr_prefix[] = {
	[EROFS_XATTR_IDX_USER] = "user.",
	[EROFS_XATTR_IDX_POSIX_ACL_ACCESS] = "system.posix_acl_access",
	[EROFS_XATTR_IDX_POSIX_ACL_DEFAULT] = "system.posix_acl_default",
	[EROFS_XATTR_IDX_TRUSTED] = "trusted.",
	[XATTR_IDX_LUSTRE] = NULL, /* the kernel does not show these either */
	[EROFS_XATTR_IDX_SECURITY] = "security.",
};
#define N_PREFIXES (sizeof(xattr_prefix) / sizeof(xattr_prefix[0]))

/* One xattr entry, its name read, its value left on the device. */
struct xent {
	uint8_t index;
	uint8_t name_len;
	uint16_t value_size;
	uint64_t value_pos;
	char name[256];
};

/* Visit one entry: return 0 to go on, 1 to stop, or -errno. */
typedef int (*xattr_visit)(struct erofs_fs *fs, const struct inode *ino, const struct xent *e, void *arg);

/* Read the entry header and name at |pos|, which must end by |end|;
 * |*out_size| is the aligned size of the whole entry. */
static int xattr_entry_at(struct erofs_fs *fs, const struct inode *ino, uint64_t pos, uint64_t end, struct xent *e,
			  uint64_t *out_size)
{
	uint8_t hdr[XATTR_ENTRY_HDR];
	if (end - pos < XATTR_ENTRY_HDR)
		return corrupt(fs, "nid %llu: xattr entry header at %llu is cut off", (unsigned long long)ino->nid,
			       (unsigned long long)pos);
	int r = dev_read(fs, pos, hdr, sizeof(hdr), "xattr entry", ino->nid);
	if (r < 0)
		return r;
	e->name_len = hdr[0];
	e->index = hdr[1];
	e->value_size = get_le16(hdr + 2);
	uint64_t size = ((uint64_t)XATTR_ENTRY_HDR + e->name_len + e->value_size + 3) & ~3ull;
	if (size > end - pos)
		return corrupt(fs, "nid %llu: xattr entry of %llu bytes at %llu overruns its area",
			       (unsigned long long)ino->nid, (unsigned long long)size, (unsigned long long)pos);
	if ((r = dev_read(fs, pos + XATTR_ENTRY_HDR, e->name, e->name_len, "xattr name", ino->nid)) < 0)
		return r;
	e->name[e->name_len] = '\0';
	e->value_pos = pos + XATTR_ENTRY_HDR + e->name_len;
	*out_size = size;
	return 0;
}

/* Visit inline entries, then shared ones (the kernel's order). */
static int xattr_foreach(struct erofs_fs *fs, const struct inode *ino, xattr_visit visit, void *arg)
{
	if (!ino->xattr_isize)
		return 0;
	uint64_t start = ino->pos + ino->isize, end; /* pos + 64 fits: read_inode read it */
	if (!ck_add_u64(start, ino->xattr_isize, &end) || end > fs->dev_size)
		return corrupt(fs, "nid %llu: %u bytes of inline xattrs run past the end of the image",
			       (unsigned long long)ino->nid, ino->xattr_isize);
	uint8_t hdr[XATTR_IBODY_HDR];
	int r = dev_read(fs, start, hdr, sizeof(hdr), "xattr header", ino->nid);
	if (r < 0)
		return r;
	uint32_t shared = hdr[offsetof(struct erofs_disk_xattr_ibody, h_shared_count)];
	uint64_t ids = start + XATTR_IBODY_HDR;
	if ((uint64_t)XATTR_IBODY_HDR + 4ull * shared > ino->xattr_isize)
		return corrupt(fs, "nid %llu: %u shared xattrs do not fit %u bytes of xattrs",
			       (unsigned long long)ino->nid, shared, ino->xattr_isize);

	struct xent e;
	uint64_t size;
	for (uint64_t pos = ids + 4ull * shared; pos < end; pos += size) {
		if ((r = xattr_entry_at(fs, ino, pos, end, &e, &size)) < 0)
			return r;
		if ((r = visit(fs, ino, &e, arg)) != 0)
			return r < 0 ? r : 0;
	}

	uint8_t idbuf[4 * 255];
	if (shared && (r = dev_read(fs, ids, idbuf, 4u * shared, "shared xattr ids", ino->nid)) < 0)
		return r;
	for (uint32_t i = 0; i < shared; i++) {
		uint32_t id = get_le32(idbuf + 4 * i);
		uint64_t pos = fs->xattr_base + 4ull * id; /* < 2^44 + 2^34 */
		if (pos >= fs->dev_size)
			return corrupt(fs, "nid %llu: shared xattr %u lies past the end of the image",
				       (unsigned long long)ino->nid, id);
		if ((r = xattr_entry_at(fs, ino, pos, fs->dev_size, &e, &size)) < 0)
			return r;
		if ((r = visit(fs, ino, &e, arg)) != 0)
			return r < 0 ? r : 0;
	}
	return 0;
}

struct list_ctx {
	char *buf;
	size_t cap, len;
};

static int list_visit(struct erofs_fs *fs, const struct inode *ino, const struct xent *e, void *arg)
{
	(void)fs;
	struct list_ctx *c = arg;
	if (e->index & XATTR_LONG_PREFIX) {
		log_debug("erofs: nid %llu has a long xattr name prefix: not supported", (unsigned long long)ino->nid);
		return -EOPNOTSUPP;
	}
	const char *prefix = e->index < N_PREFIXES ? xattr_prefix[e->index] : NULL;
	if (!prefix)
		return 0; /* unknown namespace: not shown, like the kernel */
	size_t plen = strlen(prefix), n = plen + e->name_len + 1; /* small: no overflow */
	if (c->cap) {
		if (c->cap - c->len < n)
			return -ERANGE;
		memcpy(c->buf + c->len, prefix, plen);
		memcpy(c->buf + c->len + plen, e->name, e->name_len);
		c->buf[c->len + n - 1] = '\0';
	}
	c->len += n;
	return 0;
}

int erofs_listxattr(struct erofs_fs *fs, uint64_t nid, char *buf, size_t cap, size_t *out_len)
{
	struct inode ino;
	*out_len = 0;
	int r = read_inode(fs, nid, &ino);
	if (r < 0)
		return r;
	struct list_ctx c = {.buf = buf, .cap = cap};
	if ((r = xattr_foreach(fs, &ino, list_visit, &c)) < 0)
		return r;
	*out_len = c.len;
	return 0;
}

struct get_ctx {
	const char *name;
	size_t name_len;
	void *buf;
	size_t cap, *out_len;
	bool found, saw_long;
};

static int get_visit(struct erofs_fs *fs, const struct inode *ino, const struct xent *e, void *arg)
{
	struct get_ctx *c = arg;
	if (e->index & XATTR_LONG_PREFIX) {
		c->saw_long = true;
		return 0;
	}
	const char *prefix = e->index < N_PREFIXES ? xattr_prefix[e->index] : NULL;
	if (!prefix)
		return 0;
	size_t plen = strlen(prefix);
	if (c->name_len != plen + e->name_len || memcmp(c->name, prefix, plen) ||
	    memcmp(c->name + plen, e->name, e->name_len))
		return 0;
	c->found = true;
	*c->out_len = e->value_size;
	if (!c->cap)
		return 1;
	if (c->cap < e->value_size)
		return -ERANGE;
	int r = dev_read(fs, e->value_pos, c->buf, e->value_size, "xattr value", ino->nid);
	return r < 0 ? r : 1;
}

int erofs_getxattr(struct erofs_fs *fs, uint64_t nid, const char *name, void *buf, size_t cap, size_t *out_len)
{
	struct inode ino;
	*out_len = 0;
	int r = read_inode(fs, nid, &ino);
	if (r < 0)
		return r;
	struct get_ctx c = {.name = name, .name_len = strlen(name), .buf = buf, .cap = cap, .out_len = out_len};
	if ((r = xattr_foreach(fs, &ino, get_visit, &c)) < 0)
		return r;
	if (c.found)
		return 0;
	return c.saw_long ? -EOPNOTSUPP : -ENODATA;
}
