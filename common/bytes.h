/* bytes: fixed-width integers in wire byte order, and a bounds-checked cursor
 * for reading untrusted bytes.
 *
 * Every parser of bytes that come from outside the process (NBD requests,
 * L2 fragments and memcached replies, manifests, guest frames, virtio
 * descriptors, EROFS metadata) reads through these, so byte order is written
 * once and no read can run past the end of its buffer.
 */
#ifndef KINDLING_COMMON_BYTES_H
#define KINDLING_COMMON_BYTES_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

/* ---- loads and stores at a pointer the caller has bounds-checked ------------ */

static inline uint16_t get_le16(const uint8_t *p) { return (uint16_t)(p[0] | p[1] << 8); }
static inline uint32_t get_le32(const uint8_t *p)
{
	return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}
static inline uint64_t get_le64(const uint8_t *p) { return (uint64_t)get_le32(p) | (uint64_t)get_le32(p + 4) << 32; }
static inline uint16_t get_be16(const uint8_t *p) { return (uint16_t)(p[0] << 8 | p[1]); }
static inline uint32_t get_be32(const uint8_t *p)
{
	return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | (uint32_t)p[3];
}
static inline uint64_t get_be64(const uint8_t *p) { return (uint64_t)get_be32(p) << 32 | get_be32(p + 4); }

static inline void put_le16(uint8_t *p, uint16_t v)
{
	p[0] = (uint8_t)v;
	p[1] = (uint8_t)(v >> 8);
}
static inline void put_le32(uint8_t *p, uint32_t v)
{
	put_le16(p, (uint16_t)v);
	put_le16(p + 2, (uint16_t)(v >> 16));
}
static inline void put_le64(uint8_t *p, uint64_t v)
{
	put_le32(p, (uint32_t)v);
	put_le32(p + 4, (uint32_t)(v >> 32));
}
static inline void put_be16(uint8_t *p, uint16_t v)
{
	p[0] = (uint8_t)(v >> 8);
	p[1] = (uint8_t)v;
}
static inline void put_be32(uint8_t *p, uint32_t v)
{
	put_be16(p, (uint16_t)(v >> 16));
	put_be16(p + 2, (uint16_t)v);
}
static inline void put_be64(uint8_t *p, uint64_t v)
{
	put_be32(p, (uint32_t)(v >> 32));
	put_be32(p + 4, (uint32_t)v);
}

/* ---- a cursor over untrusted bytes ------------------------------------------ */

/* Reads advance |off|; a read that would pass |len| reads nothing, returns
 * false (or zero) and marks the cursor failed, and every later read fails
 * too, so a parser may read a whole header and check cur_ok() once. */
struct byte_cursor {
	const uint8_t *p;
	size_t len;
	size_t off;
	bool failed;
};

static inline struct byte_cursor cur_init(const void *p, size_t len)
{
	return (struct byte_cursor){ .p = p, .len = len };
}

/* True while no read has run past the end. */
static inline bool cur_ok(const struct byte_cursor *c) { return !c->failed; }

/* Bytes not yet read (0 once failed). */
static inline size_t cur_left(const struct byte_cursor *c) { return c->failed ? 0 : c->len - c->off; }

/* Take |n| bytes: a pointer to them, or NULL (and the cursor fails). */
static inline const uint8_t *cur_take(struct byte_cursor *c, size_t n)
{
	if (c->failed || n > c->len - c->off) {
		c->failed = true;
		return NULL;
	}
	const uint8_t *at = c->p + c->off;
	c->off += n;
	return at;
}

/* Copy |n| bytes into |out|.  False (and |out| untouched) past the end. */
static inline bool cur_copy(struct byte_cursor *c, void *out, size_t n)
{
	const uint8_t *at = cur_take(c, n);
	if (at && n)
		memcpy(out, at, n);
	return at != NULL;
}

static inline bool cur_skip(struct byte_cursor *c, size_t n) { return cur_take(c, n) != NULL; }

static inline uint8_t cur_u8(struct byte_cursor *c)
{
	const uint8_t *at = cur_take(c, 1);
	return at ? at[0] : 0;
}
static inline uint16_t cur_le16(struct byte_cursor *c)
{
	const uint8_t *at = cur_take(c, 2);
	return at ? get_le16(at) : 0;
}
static inline uint32_t cur_le32(struct byte_cursor *c)
{
	const uint8_t *at = cur_take(c, 4);
	return at ? get_le32(at) : 0;
}
static inline uint64_t cur_le64(struct byte_cursor *c)
{
	const uint8_t *at = cur_take(c, 8);
	return at ? get_le64(at) : 0;
}
static inline uint16_t cur_be16(struct byte_cursor *c)
{
	const uint8_t *at = cur_take(c, 2);
	return at ? get_be16(at) : 0;
}
static inline uint32_t cur_be32(struct byte_cursor *c)
{
	const uint8_t *at = cur_take(c, 4);
	return at ? get_be32(at) : 0;
}
static inline uint64_t cur_be64(struct byte_cursor *c)
{
	const uint8_t *at = cur_take(c, 8);
	return at ? get_be64(at) : 0;
}

#endif
