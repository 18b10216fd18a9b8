/* The in-memory file tree that flattening builds and the EROFS writer
 * serialises.  Directories can hold tens of thousands of entries (/usr/lib,
 * /usr/share/doc), so lookups go through an open-addressing hash index built
 * once a directory grows past a handful of entries. */
#include "internal.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

struct fs_child_index {
	size_t cap;	 /* power of two */
	size_t *slots;	 /* child position + 1; 0 = empty */
};

#define INDEX_MIN_CHILDREN 16

static uint64_t name_hash(const char *s)
{
	uint64_t h = 1469598103934665603ull; /* FNV-1a: cheap, good enough for names */
	for (; *s; s++) {
		h ^= (uint8_t)*s;
		h *= 1099511628211ull;
	}
	return h;
}

struct fs_inode *fs_inode_new(uint32_t mode)
{
	struct fs_inode *ino = calloc(1, sizeof(*ino));
	if (!ino) {
		errno = ENOMEM;
		return NULL;
	}
	ino->mode = mode;
	ino->refs = 1;
	return ino;
}

static void free_index(struct fs_child_index *idx)
{
	if (idx) {
		free(idx->slots);
		free(idx);
	}
}

void fs_inode_unref(struct fs_inode *ino)
{
	if (!ino || --ino->refs > 0)
		return;
	for (size_t i = 0; i < ino->n_children; i++) {
		free(ino->children[i].name);
		fs_inode_unref(ino->children[i].inode);
	}
	free(ino->children);
	free_index(ino->index);
	for (size_t i = 0; i < ino->n_xattrs; i++) {
		free(ino->xattrs[i].name);
		free(ino->xattrs[i].value);
	}
	free(ino->xattrs);
	free(ino->symlink);
	free(ino);
}

static int index_insert(struct fs_child_index *idx, const char *name, size_t pos)
{
	size_t mask = idx->cap - 1;
	for (size_t h = name_hash(name) & mask;; h = (h + 1) & mask) {
		if (!idx->slots[h]) {
			idx->slots[h] = pos + 1;
			return 0;
		}
	}
}

/* Rebuild the index at a capacity that keeps the load under one half. */
static int index_rebuild(struct fs_inode *dir)
{
	size_t cap = 64;
	while (cap < dir->n_children * 2 + 2)
		cap *= 2;
	struct fs_child_index *idx = calloc(1, sizeof(*idx));
	if (!idx)
		return -ENOMEM;
	idx->cap = cap;
	idx->slots = calloc(cap, sizeof(*idx->slots));
	if (!idx->slots) {
		free(idx);
		return -ENOMEM;
	}
	for (size_t i = 0; i < dir->n_children; i++)
		index_insert(idx, dir->children[i].name, i);
	free_index(dir->index);
	dir->index = idx;
	return 0;
}

static ssize_t find_child(struct fs_inode *dir, const char *name)
{
	if (!dir->index) {
		for (size_t i = 0; i < dir->n_children; i++)
			if (strcmp(dir->children[i].name, name) == 0)
				return (ssize_t)i;
		return -1;
	}
	size_t mask = dir->index->cap - 1;
	for (size_t h = name_hash(name) & mask;; h = (h + 1) & mask) {
		size_t s = dir->index->slots[h];
		if (!s)
			return -1;
		if (strcmp(dir->children[s - 1].name, name) == 0)
			return (ssize_t)(s - 1);
	}
}

struct fs_dirent *fs_dir_lookup(struct fs_inode *dir, const char *name)
{
	ssize_t i = find_child(dir, name);
	return i < 0 ? NULL : &dir->children[i];
}

int fs_dir_add(struct fs_inode *dir, const char *name, struct fs_inode *child, unsigned layer)
{
	if (dir->n_children == dir->cap_children) {
		size_t ncap = dir->cap_children ? dir->cap_children * 2 : 8;
		struct fs_dirent *n = realloc(dir->children, ncap * sizeof(*n));
		if (!n)
			return -ENOMEM;
		dir->children = n;
		dir->cap_children = ncap;
	}
	char *copy = strdup(name);
	if (!copy)
		return -ENOMEM;
	size_t pos = dir->n_children++;
	dir->children[pos] = (struct fs_dirent){.name = copy, .inode = child, .layer = layer};
	child->refs++;
	if (dir->index && dir->n_children * 2 + 2 <= dir->index->cap)
		return index_insert(dir->index, copy, pos);
	if (dir->n_children >= INDEX_MIN_CHILDREN)
		return index_rebuild(dir);
	return 0;
}

int fs_dir_remove(struct fs_inode *dir, const char *name)
{
	ssize_t i = find_child(dir, name);
	if (i < 0)
		return -ENOENT;
	free(dir->children[i].name);
	fs_inode_unref(dir->children[i].inode);
	/* Move the last entry into the hole; order does not matter until the
	 * writer sorts. */
	dir->children[i] = dir->children[--dir->n_children];
	if (dir->index)
		return index_rebuild(dir);
	return 0;
}

int fs_inode_set_xattr(struct fs_inode *ino, const char *name, const void *value, size_t len)
{
	uint8_t *v = malloc(len ? len : 1);
	if (!v)
		return -ENOMEM;
	memcpy(v, value, len);
	size_t pos = 0;
	while (pos < ino->n_xattrs && strcmp(ino->xattrs[pos].name, name) < 0)
		pos++;
	if (pos < ino->n_xattrs && strcmp(ino->xattrs[pos].name, name) == 0) {
		free(ino->xattrs[pos].value);
		ino->xattrs[pos].value = v;
		ino->xattrs[pos].len = len;
		return 0;
	}
	char *n = strdup(name);
	struct fs_xattr *arr = realloc(ino->xattrs, (ino->n_xattrs + 1) * sizeof(*arr));
	if (!n || !arr) {
		free(n);
		free(v);
		if (arr)
			ino->xattrs = arr;
		return -ENOMEM;
	}
	ino->xattrs = arr;
	memmove(&arr[pos + 1], &arr[pos], (ino->n_xattrs - pos) * sizeof(*arr));
	arr[pos] = (struct fs_xattr){.name = n, .value = v, .len = len};
	ino->n_xattrs++;
	return 0;
}
