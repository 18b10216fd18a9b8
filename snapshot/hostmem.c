/* The host memory tier: a snapshot's verified, decrypted memory kept on the
 * host, so a later restore there fills faults from it with no fetch, no
 * SHA-256 and no AES.
 *
 * One sparse file per snapshot, <dir>/<manifest digest>.mem:
 *   [0, 4096)            header: magic, version, entry size, memory size,
 *                        chunk count, data offset, the manifest digest
 *   [4096, data_off)     one 16-byte entry per memory chunk: CRC-64 of its
 *                        bytes (ECMA, ISA-L), their length, a present mark
 *   [data_off, +mem)     the memory at its own offsets (holes where absent)
 *
 * Only bytes the cache verified (name, and key when a salt is set) are
 * written, and a chunk's entry is written after its bytes: a writer that
 * dies between the two leaves the chunk absent.  Every read checks the
 * CRC, so a torn, truncated or damaged chunk is detected and fetched again
 * instead.  The CRC detects damage, not an attacker: the directory is 0700
 * and the files 0600, owned by the server's user, and a file owned by anyone
 * else, or not a regular file, is not used.
 *
 * The header is written before the file gets its name (a temporary file
 * linked into place), so a file under that name is whole or foreign; a
 * header that differs from the expected one is replaced.  Concurrent users
 * of one snapshot write identical bytes (the memory is convergent), so no
 * lock is needed between them.  Space: the directory's files are kept
 * under a bound by evicting the least recently opened ones.  It is all soft
 * state: deleting the directory costs the next restore its speed, nothing
 * else.
 */
#include "internal.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <isa-l/crc64.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common/bytes.h"

#define HOSTMEM_MAGIC "kindling-snapmem"
#define HOSTMEM_VERSION 1u
#define HOSTMEM_HEADER_SIZE 4096u
#define HOSTMEM_ENTRY_SIZE 16u
#define HOSTMEM_PRESENT 0x50524553u /* "SERP": the chunk's bytes are whole */
#define HOSTMEM_SUFFIX ".mem"
/* A creator's temporary file older than this was left by a crash. */
#define HOSTMEM_STALE_TMP_SECONDS 600

struct snapshot_hostmem {
	int fd;
	char *path;
	uint64_t mem_size, n_chunks, data_off;
};

static void build_header(uint8_t h[HOSTMEM_HEADER_SIZE], const char *digest, uint64_t mem_size, uint64_t n_chunks,
			 uint64_t data_off)
{
	memset(h, 0, HOSTMEM_HEADER_SIZE);
	memcpy(h, HOSTMEM_MAGIC, 16);
	put_le32(h + 16, HOSTMEM_VERSION);
	put_le32(h + 20, HOSTMEM_ENTRY_SIZE);
	put_le64(h + 24, mem_size);
	put_le64(h + 32, n_chunks);
	put_le64(h + 40, data_off);
	memcpy(h + 48, digest, 64);
}

char *snapshot_hostmem_default_dir(void)
{
	const char *xdg = getenv("XDG_RUNTIME_DIR");
	if (xdg && xdg[0] == '/')
		return xasprintf("%s/kindling/snapshot-mem", xdg);
	return xasprintf("/dev/shm/kindling-%u/snapshot-mem", (unsigned)geteuid());
}

/* |path| must be a directory we own that nobody else can write into: the
 * files in it are trusted to hold verified bytes. */
static int check_dir(const char *path)
{
	struct stat st;
	if (lstat(path, &st) < 0)
		return -errno;
	if (!S_ISDIR(st.st_mode) || st.st_uid != geteuid() || (st.st_mode & 0077)) {
		log_warn("snapshot memory tier %s is not a directory of uid %u with mode 0700 (mode %o, uid %u); "
			 "restoring without it (remove it, or give another directory)",
			 path, (unsigned)geteuid(), (unsigned)(st.st_mode & 07777), (unsigned)st.st_uid);
		return -EPERM;
	}
	/* Whoever can rename entries of the parent can swap the tier for a
	 * directory of their own: the parent must be ours or root's, and
	 * writable by others only if sticky (/dev/shm, /tmp). */
	char *parent = strdup(path), *slash = parent ? strrchr(parent, '/') : NULL;
	if (!parent)
		return -ENOMEM;
	if (slash)
		*slash = 0;
	int r = lstat(slash == parent ? "/" : slash ? parent : ".", &st) < 0 ? -errno : 0;
	if (r == 0 && ((st.st_uid != geteuid() && st.st_uid != 0) || ((st.st_mode & 0022) && !(st.st_mode & S_ISVTX)))) {
		log_warn("snapshot memory tier %s: its parent %s can be written by another user (mode %o, uid %u); "
			 "restoring without it (give a directory under one only this user and root can change)",
			 path, slash == parent ? "/" : slash ? parent : ".", (unsigned)(st.st_mode & 07777),
			 (unsigned)st.st_uid);
		r = -EPERM;
	}
	free(parent);
	return r;
}

/* Make |dir| and its parent (0700); the parent of a default under
 * /dev/shm is per-user, and checked like the tier itself. */
static int prepare_dir(const char *dir)
{
	int r = mkdir_p(dir, 0700);
	if (r < 0) {
		log_warn("cannot create the snapshot memory tier %s: %s; restoring without it", dir, strerror(-r));
		return r;
	}
	return check_dir(dir);
}

struct hostmem_file {
	char name[80];
	uint64_t bytes;
	struct timespec used;
};

static int by_use(const void *a, const void *b)
{
	const struct hostmem_file *x = a, *y = b;
	if (x->used.tv_sec != y->used.tv_sec)
		return x->used.tv_sec < y->used.tv_sec ? -1 : 1;
	return x->used.tv_nsec < y->used.tv_nsec ? -1 : x->used.tv_nsec > y->used.tv_nsec;
}

/* Evict the least recently used files of |dir| other than |keep| until
 * they and |reserve| bytes fit in |max_bytes|; remove creators' temporary
 * files a crash left.  Returns 0, or -ENOSPC when |reserve| alone does not
 * fit. */
static int make_room(const char *dir, const char *keep, uint64_t reserve, uint64_t max_bytes)
{
	if (reserve > max_bytes)
		return -ENOSPC;
	DIR *d = opendir(dir);
	if (!d)
		return -errno;
	struct hostmem_file *files = NULL;
	size_t n = 0, cap = 0;
	uint64_t total = 0;
	double now = now_seconds();
	struct dirent *e;
	while ((e = readdir(d))) {
		struct stat st;
		if (fstatat(dirfd(d), e->d_name, &st, AT_SYMLINK_NOFOLLOW) < 0 || !S_ISREG(st.st_mode))
			continue;
		if (strstr(e->d_name, ".tmp.")) {
			if (now - (double)st.st_mtim.tv_sec > HOSTMEM_STALE_TMP_SECONDS)
				unlinkat(dirfd(d), e->d_name, 0);
			continue;
		}
		size_t len = strlen(e->d_name);
		if (len != 64 + strlen(HOSTMEM_SUFFIX) || strcmp(e->d_name + 64, HOSTMEM_SUFFIX) != 0 ||
		    strcmp(e->d_name, keep) == 0)
			continue;
		if (n == cap) {
			size_t ncap = cap ? cap * 2 : 16;
			struct hostmem_file *v = realloc(files, ncap * sizeof(*v));
			if (!v)
				break;
			files = v, cap = ncap;
		}
		memcpy(files[n].name, e->d_name, len + 1); /* len was checked: a digest and the suffix */
		files[n].bytes = (uint64_t)st.st_blocks * 512;
		files[n].used = st.st_mtim;
		total += files[n].bytes;
		n++;
	}
	if (n)
		qsort(files, n, sizeof(*files), by_use);
	for (size_t i = 0; i < n && total + reserve > max_bytes; i++) {
		if (unlinkat(dirfd(d), files[i].name, 0) == 0 || errno == ENOENT) {
			log_info("snapshot memory tier %s: evicted %s (%llu bytes, least recently used)", dir,
				 files[i].name, (unsigned long long)files[i].bytes);
			total -= files[i].bytes;
		}
	}
	closedir(d);
	free(files);
	return 0;
}

/* Create the file for |digest| under a temporary name, header and size
 * first, and link it into place; a file that appeared there meanwhile (a
 * concurrent restore of the same snapshot) is kept.  |replace| renames over
 * a bad file instead. */
static int create_file(const char *dir, const char *path, const uint8_t *header, uint64_t file_size, bool replace)
{
	char *tmp = xasprintf("%s/.tmp.XXXXXX", dir);
	if (!tmp)
		return -ENOMEM;
	int fd = mkostemp(tmp, O_CLOEXEC);
	int r = fd < 0 ? -errno : 0;
	if (r == 0 && (fchmod(fd, 0600) < 0 || ftruncate(fd, (off_t)file_size) < 0))
		r = -errno;
	if (r == 0)
		r = write_full(fd, header, HOSTMEM_HEADER_SIZE);
	if (fd >= 0)
		close(fd);
	if (r == 0) {
		if (replace)
			r = rename(tmp, path) < 0 ? -errno : 0;
		else
			r = link(tmp, path) < 0 && errno != EEXIST ? -errno : 0;
	}
	if (fd >= 0)
		unlink(tmp);
	if (r < 0)
		log_warn("cannot create the snapshot memory file %s: %s; restoring without it", path, strerror(-r));
	free(tmp);
	return r;
}

/* Open |path| and check it is ours and holds |header| over |file_size|
 * bytes.  Returns the descriptor, -ENOENT, or -EBADMSG (foreign or
 * incomplete: logged). */
static int open_checked(const char *path, const uint8_t *header, uint64_t file_size)
{
	int fd = open(path, O_RDWR | O_CLOEXEC | O_NOFOLLOW);
	if (fd < 0)
		return errno == ELOOP ? -EBADMSG : -errno;
	struct stat st;
	uint8_t got[HOSTMEM_HEADER_SIZE];
	const char *why = NULL;
	if (fstat(fd, &st) < 0 || !S_ISREG(st.st_mode))
		why = "not a regular file";
	else if (st.st_uid != geteuid() || (st.st_mode & 0077))
		why = "not owned by this user with mode 0600";
	else if ((uint64_t)st.st_size != file_size)
		why = "its size is not the snapshot's";
	else if (pread(fd, got, sizeof(got), 0) != (ssize_t)sizeof(got) || memcmp(got, header, sizeof(got)) != 0)
		why = "its header is not this snapshot's";
	if (why) {
		log_warn("snapshot memory file %s is not used: %s; replacing it", path, why);
		close(fd);
		return -EBADMSG;
	}
	return fd;
}

int snapshot_hostmem_open(const struct snapshot_hostmem_options *o, const char *digest, uint64_t mem_size,
			  struct snapshot_hostmem **out)
{
	*out = NULL;
	if (!o->dir || !is_sha256_hex(digest) || mem_size == 0 || mem_size % SNAPSHOT_PAGE) {
		log_err("snapshot memory tier: needs a directory, a manifest digest and a memory size in pages");
		return -EINVAL;
	}
	uint64_t n_chunks = (mem_size + CHUNK_SIZE - 1) / CHUNK_SIZE, data_off, file_size;
	if (!ck_align_up_u64(HOSTMEM_HEADER_SIZE + n_chunks * HOSTMEM_ENTRY_SIZE, SNAPSHOT_PAGE, &data_off) ||
	    !ck_add_u64(data_off, mem_size, &file_size))
		return -EOVERFLOW;
	uint64_t max_bytes = o->max_bytes ? o->max_bytes : SNAPSHOT_HOSTMEM_DEFAULT_MAX;
	int r = prepare_dir(o->dir);
	if (r < 0)
		return r;
	char name[80];
	snprintf(name, sizeof(name), "%s%s", digest, HOSTMEM_SUFFIX);
	if ((r = make_room(o->dir, name, file_size, max_bytes)) < 0) {
		log_info("snapshot %s: %llu bytes of memory do not fit the memory tier's %llu; restoring without it",
			 digest, (unsigned long long)file_size, (unsigned long long)max_bytes);
		return r;
	}
	uint8_t header[HOSTMEM_HEADER_SIZE];
	build_header(header, digest, mem_size, n_chunks, data_off);
	char *path = xasprintf("%s/%s", o->dir, name);
	if (!path)
		return -ENOMEM;
	int fd = open_checked(path, header, file_size);
	for (int attempt = 0; fd < 0 && attempt < 2; attempt++) {
		if (fd != -ENOENT && fd != -EBADMSG)
			break;
		if ((r = create_file(o->dir, path, header, file_size, fd == -EBADMSG)) < 0)
			break;
		fd = open_checked(path, header, file_size);
	}
	struct snapshot_hostmem *h = fd >= 0 ? calloc(1, sizeof(*h)) : NULL;
	if (!h) {
		if (fd >= 0)
			close(fd);
		free(path);
		return fd >= 0 ? -ENOMEM : r < 0 ? r : fd;
	}
	futimens(fd, NULL); /* the LRU's clock: last opened */
	h->fd = fd, h->path = path;
	h->mem_size = mem_size, h->n_chunks = n_chunks, h->data_off = data_off;
	*out = h;
	return 0;
}

static uint32_t chunk_len(const struct snapshot_hostmem *h, uint64_t index)
{
	uint64_t left = h->mem_size - index * CHUNK_SIZE;
	return left < CHUNK_SIZE ? (uint32_t)left : CHUNK_SIZE;
}

int snapshot_hostmem_get(struct snapshot_hostmem *h, uint64_t index, uint8_t *buf, size_t len)
{
	if (index >= h->n_chunks || len < chunk_len(h, index))
		return -EINVAL;
	uint8_t e[HOSTMEM_ENTRY_SIZE];
	if (pread(h->fd, e, sizeof(e), (off_t)(HOSTMEM_HEADER_SIZE + index * HOSTMEM_ENTRY_SIZE)) != (ssize_t)sizeof(e))
		return -EIO;
	uint32_t want = chunk_len(h, index);
	if (get_le32(e + 12) != HOSTMEM_PRESENT)
		return -ENOENT;
	if (get_le32(e + 8) != want)
		return -EBADMSG;
	ssize_t n = pread(h->fd, buf, want, (off_t)(h->data_off + index * CHUNK_SIZE));
	if (n != (ssize_t)want || crc64_ecma_refl(0, buf, want) != get_le64(e))
		return -EBADMSG;
	return 0;
}

int snapshot_hostmem_put(struct snapshot_hostmem *h, uint64_t index, const uint8_t *plain, size_t len)
{
	if (index >= h->n_chunks || len < chunk_len(h, index))
		return -EINVAL;
	uint32_t want = chunk_len(h, index);
	uint8_t e[HOSTMEM_ENTRY_SIZE];
	put_le64(e, crc64_ecma_refl(0, plain, want));
	put_le32(e + 8, want);
	put_le32(e + 12, HOSTMEM_PRESENT);
	ssize_t n = pwrite(h->fd, plain, want, (off_t)(h->data_off + index * CHUNK_SIZE));
	if (n == (ssize_t)want)
		n = pwrite(h->fd, e, sizeof(e), (off_t)(HOSTMEM_HEADER_SIZE + index * HOSTMEM_ENTRY_SIZE)) ==
				    (ssize_t)sizeof(e)
			    ? (ssize_t)want
			    : -1;
	if (n != (ssize_t)want) {
		int err = n < 0 ? errno : ENOSPC;
		log_warn("snapshot memory file %s: cannot keep chunk %llu: %s (later restores fetch it again; is its "
			 "file system full?)",
			 h->path, (unsigned long long)index, strerror(err));
		return -err;
	}
	return 0;
}

const char *snapshot_hostmem_path(const struct snapshot_hostmem *h)
{
	return h->path;
}

void snapshot_hostmem_close(struct snapshot_hostmem *h)
{
	if (!h)
		return;
	close(h->fd);
	free(h->path);
	free(h);
}
