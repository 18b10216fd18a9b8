/* EROFS on-disk format: the subset kindling writes and reads.
 *
 * kindling's own definitions of the structures described by the kernel's
 * Documentation/filesystems/erofs.rst.  Every multi-byte field is
 * little-endian on disk; the structs are packed and only ever filled or read
 * through the erofs_le*() helpers below, so the code is correct on any host.
 * Shared by the writer (erofs_write.c) and kindling's EROFS reader.
 *
 * What kindling's images use: uncompressed, 4 KiB blocks, extended (64-byte)
 * inodes only, flat-plain or flat-inline data layouts, inline (in-inode)
 * xattrs only, no shared xattrs, optional superblock crc32c.
 */
#ifndef KINDLING_EROFS_FORMAT_H
#define KINDLING_EROFS_FORMAT_H

#include <endian.h>
#include <stdint.h>
#include <string.h>

#include "common/bytes.h"

#define EROFS_MAGIC 0xE0F5E1E2u
#define EROFS_SB_OFFSET 1024u	/* byte offset of the superblock in block 0 */
#define EROFS_BLKSZ_BITS 12u	/* 4 KiB blocks, the only size kindling uses */
#define EROFS_NAME_MAX 255u	/* longest directory entry name */
#define EROFS_SLOT_BITS 5u	/* nid = (byte offset from meta_blkaddr) >> 5 */
#define EROFS_SLOT_SIZE (1u << EROFS_SLOT_BITS)

/* feature_compat: the superblock carries crc32c of bytes [1024, 4096) of
 * block 0 (checksum field zeroed, seed ~0, no final inversion). */
#define EROFS_COMPAT_SB_CRC 0x00000001u

/* ---- superblock (128 bytes at EROFS_SB_OFFSET) ---------------------------- */

struct erofs_disk_super {
	uint32_t magic;		 /* EROFS_MAGIC */
	uint32_t checksum;	 /* crc32c, see EROFS_COMPAT_SB_CRC */
	uint32_t feature_compat;
	uint8_t blkszbits;	 /* log2 of the block size */
	uint8_t sb_extslots;	 /* extra 16-byte slots after the 128 bytes (0) */
	uint16_t root_nid;	 /* 16 bits: the root inode must sit early */
	uint64_t inos;		 /* number of inodes */
	uint64_t build_time;	 /* timestamp for compact inodes (unused by us) */
	uint32_t build_time_nsec;
	uint32_t blocks;	 /* total image blocks, for statfs */
	uint32_t meta_blkaddr;	 /* block where nid 0 lives */
	uint32_t xattr_blkaddr;	 /* shared xattr area (unused, 0) */
	uint8_t uuid[16];
	uint8_t volume_name[16]; /* zero padded, not necessarily terminated */
	uint32_t feature_incompat;
	uint16_t compr_info;	 /* compression algorithms (unused, 0) */
	uint8_t reserved[42];
} __attribute__((packed));

/* ---- inodes ---------------------------------------------------------------- */

/* i_format: bit 0 is the inode version, bits 1..3 the data layout. */
#define EROFS_IFMT_EXTENDED 1u
#define EROFS_IFMT_LAYOUT_SHIFT 1u
#define EROFS_IFMT_LAYOUT_MASK 0x7u

/* Data layouts.  FLAT_PLAIN: ceil(size / 4096) contiguous blocks from
 * raw_blkaddr.  FLAT_INLINE: all blocks but the last from raw_blkaddr; the
 * last, partial block ("tail") is stored right after the inode and its inline
 * xattrs, and must not cross a block boundary. */
enum erofs_layout {
	EROFS_LAYOUT_FLAT_PLAIN = 0,
	EROFS_LAYOUT_FLAT_INLINE = 2,
};

/* The 64-byte extended inode: 32-bit ids, 64-bit size, its own mtime. */
struct erofs_disk_inode_ext {
	uint16_t i_format;	 /* EROFS_IFMT_EXTENDED | layout << 1 */
	uint16_t i_xattr_icount; /* 0, or 1 + (bytes of inline xattr entries) / 4 */
	uint16_t i_mode;
	uint16_t i_reserved;	 /* must be 0 (high bits of the start block in newer formats) */
	uint64_t i_size;
	uint32_t i_u;		 /* raw_blkaddr for data, rdev for devices */
	uint32_t i_ino;		 /* stat ino on 32-bit hosts */
	uint32_t i_uid;
	uint32_t i_gid;
	uint64_t i_mtime;	 /* seconds, two's complement */
	uint32_t i_mtime_nsec;
	uint32_t i_nlink;
	uint8_t i_reserved2[16];
} __attribute__((packed));

/* ---- inline xattrs -------------------------------------------------------- */

/* Directly after the inode when i_xattr_icount != 0: this header, then
 * h_shared_count 4-byte shared xattr ids (kindling: none), then entries. */
struct erofs_disk_xattr_ibody {
	uint32_t h_reserved;	 /* name filter in newer formats; 0 */
	uint8_t h_shared_count;
	uint8_t h_reserved2[7];
} __attribute__((packed));

/* One entry: this header, the name suffix (after the prefix selected by
 * e_name_index), then the value, padded to a multiple of 4 bytes. */
struct erofs_disk_xattr_entry {
	uint8_t e_name_len;
	uint8_t e_name_index;
	uint16_t e_value_size;
} __attribute__((packed));

/* Name prefixes, by index. */
#define EROFS_XATTR_IDX_USER 1u		     /* "user." */
#define EROFS_XATTR_IDX_POSIX_ACL_ACCESS 2u  /* "system.posix_acl_access", empty suffix */
#define EROFS_XATTR_IDX_POSIX_ACL_DEFAULT 3u /* "system.posix_acl_default", empty suffix */
#define EROFS_XATTR_IDX_TRUSTED 4u	     /* "trusted." */
#define EROFS_XATTR_IDX_SECURITY 6u	     /* "security." */

/* Bytes of inline xattrs an inode with |icount| carries. */
static inline uint32_t erofs_xattr_ibody_bytes(uint16_t icount)
{
	return icount ? (uint32_t)sizeof(struct erofs_disk_xattr_ibody) + 4u * ((uint32_t)icount - 1u) : 0;
}

/* ---- directories ------------------------------------------------------------ */

/* A directory is a sequence of blocks (the last one may be short).  Each
 * block starts with an array of these, sorted by name in byte order across
 * the whole directory; dirent[0].nameoff / 12 is the count in that block.
 * Names follow the array, without terminators: a name ends at the next
 * entry's nameoff, and the block's last name ends at a NUL or the end of the
 * block (or of the directory). */
struct erofs_disk_dirent {
	uint64_t nid;
	uint16_t nameoff;	 /* byte offset of the name within the block */
	uint8_t file_type;	 /* EROFS_FT_* */
	uint8_t reserved;
} __attribute__((packed));

enum erofs_file_type {
	EROFS_FT_UNKNOWN = 0,
	EROFS_FT_REG_FILE = 1,
	EROFS_FT_DIR = 2,
	EROFS_FT_CHRDEV = 3,
	EROFS_FT_BLKDEV = 4,
	EROFS_FT_FIFO = 5,
	EROFS_FT_SOCK = 6,
	EROFS_FT_SYMLINK = 7,
};

/* Device numbers use Linux's "new" encoding: 12-bit major, 20-bit minor. */
static inline uint32_t erofs_encode_dev(uint32_t major, uint32_t minor)
{
	return (minor & 0xffu) | (major << 8) | ((minor & ~0xffu) << 12);
}

static inline void erofs_decode_dev(uint32_t dev, uint32_t *out_major, uint32_t *out_minor)
{
	*out_major = (dev & 0xfff00u) >> 8;
	*out_minor = (dev & 0xffu) | ((dev >> 12) & 0xfff00u);
}

/* ---- byte order ---------------------------------------------------------------- */

/* Conversions for struct fields (the structs hold on-disk byte order). */
static inline uint16_t erofs_le16(uint16_t v) { return htole16(v); }
static inline uint32_t erofs_le32(uint32_t v) { return htole32(v); }
static inline uint64_t erofs_le64(uint64_t v) { return htole64(v); }
static inline uint16_t erofs_cpu16(uint16_t v) { return le16toh(v); }
static inline uint32_t erofs_cpu32(uint32_t v) { return le32toh(v); }
static inline uint64_t erofs_cpu64(uint64_t v) { return le64toh(v); }

/* Unaligned loads and stores: get_le32() and friends in common/bytes.h. */

_Static_assert(sizeof(struct erofs_disk_super) == 128, "superblock is 128 bytes");
_Static_assert(sizeof(struct erofs_disk_inode_ext) == 64, "extended inode is 64 bytes");
_Static_assert(sizeof(struct erofs_disk_xattr_ibody) == 12, "xattr ibody header is 12 bytes");
_Static_assert(sizeof(struct erofs_disk_xattr_entry) == 4, "xattr entry header is 4 bytes");
_Static_assert(sizeof(struct erofs_disk_dirent) == 12, "dirent is 12 bytes");

/* crc32c (Castagnoli, reflected), seeded by the caller, no final inversion:
 * the form of the superblock checksum.  Used on 3 KiB once per image, so a
 * bitwise loop is plenty. */
static inline uint32_t erofs_crc32c(uint32_t crc, const uint8_t *p, size_t n)
{
	while (n--) {
		crc ^= *p++;
		for (int k = 0; k < 8; k++)
			crc = (crc >> 1) ^ (0x82F63B78u & (0u - (crc & 1u)));
	}
	return crc;
}

#endif
