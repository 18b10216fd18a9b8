/* Snapshot import: memory and vmstate files -> convergent chunks -> a
 * manifest of kind snapshot, through the chunker's import pipeline. */
#include "internal.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

struct snapshot_files {
	int mem_fd, vmstate_fd;
	const char *mem_path, *vmstate_path;
	uint64_t mem_size, vmstate_size;
	uint64_t vmstate_first_chunk;
};

/* Read |len| bytes at |off| of |fd| into |buf|; a short file is an error
 * (it changed under us). */
static int read_full(int fd, const char *path, uint8_t *buf, size_t len, uint64_t off)
{
	size_t done = 0;
	while (done < len) {
		ssize_t n = pread(fd, buf + done, len - done, (off_t)(off + done));
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0) {
			int e = n < 0 ? errno : EIO;
			log_err("reading %s at %llu: %s", path, (unsigned long long)(off + done),
				n < 0 ? strerror(e) : "the file shrank during the import");
			return -e;
		}
		done += (size_t)n;
	}
	return 0;
}

/* True when |[off, off + len)| of |fd| is a hole (SEEK_DATA finds no data
 * in it), so the chunk is zero without reading it. */
static bool is_hole(int fd, uint64_t off, uint64_t len)
{
	off_t data = lseek(fd, (off_t)off, SEEK_DATA);
	if (data < 0)
		return errno == ENXIO; /* no data after |off| */
	return (uint64_t)data >= off + len;
}

static int read_snapshot_chunk(void *ctx, uint64_t index, uint8_t *buf, bool *out_zero)
{
	struct snapshot_files *f = ctx;
	int fd;
	const char *path;
	uint64_t off, size;
	if (index < f->vmstate_first_chunk) {
		fd = f->mem_fd, path = f->mem_path, size = f->mem_size;
		off = index * CHUNK_SIZE;
	} else {
		fd = f->vmstate_fd, path = f->vmstate_path, size = f->vmstate_size;
		off = (index - f->vmstate_first_chunk) * CHUNK_SIZE;
	}
	uint64_t len = size - off < CHUNK_SIZE ? size - off : CHUNK_SIZE;
	if (off >= size || is_hole(fd, off, len)) {
		*out_zero = true;
		return 0;
	}
	if (len < CHUNK_SIZE)
		memset(buf + len, 0, CHUNK_SIZE - len);
	return read_full(fd, path, buf, (size_t)len, off);
}

static int open_sized(const char *path, const char *what, int *out_fd, uint64_t *out_size)
{
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	struct stat st;
	if (fd < 0 || fstat(fd, &st) < 0 || !S_ISREG(st.st_mode)) {
		int e = fd < 0 ? errno : (S_ISREG(st.st_mode) ? errno : EINVAL);
		log_err("%s %s: %s", what, path, fd >= 0 && e == EINVAL ? "not a regular file" : strerror(e));
		if (fd >= 0)
			close(fd);
		return -e;
	}
	*out_fd = fd;
	*out_size = (uint64_t)st.st_size;
	return 0;
}

int snapshot_import(struct chunkify_ctx *c, const struct snapshot_import_options *opt, struct import_report *rep)
{
	memset(rep, 0, sizeof(*rep));
	if (!opt->name_tag || !opt->mem_path || !opt->vmstate_path || !opt->from_image) {
		log_err("snapshot import needs a NAME[:TAG], --mem FILE, --vmstate FILE and --from IMAGE");
		return -EINVAL;
	}
	char image_digest[65];
	struct manifest img = {0};
	int r = image_resolve(c->store, opt->from_image, c->env.tenant_key, image_digest);
	if (r == 0)
		r = image_load(c->store, image_digest, c->env.tenant_key, &img);
	if (r < 0) {
		log_err("snapshot %s: --from %s is not an image in %s; import the image the VM ran first", opt->name_tag,
			opt->from_image, store_describe(c->store));
		return r;
	}
	if (img.kind != MANIFEST_KIND_IMAGE) {
		log_err("snapshot %s: --from %s is a %s, not the image the VM ran", opt->name_tag, opt->from_image,
			manifest_kind_name(img.kind));
		manifest_cleanup(&img);
		return -EMEDIUMTYPE;
	}
	struct snapshot_files f = {.mem_fd = -1, .vmstate_fd = -1, .mem_path = opt->mem_path,
				   .vmstate_path = opt->vmstate_path};
	if ((r = open_sized(opt->mem_path, "memory file", &f.mem_fd, &f.mem_size)) < 0 ||
	    (r = open_sized(opt->vmstate_path, "vmstate file", &f.vmstate_fd, &f.vmstate_size)) < 0)
		goto out;
	if (f.mem_size == 0 || f.mem_size % SNAPSHOT_PAGE || f.mem_size > (1ull << 40)) {
		log_err("memory file %s: %llu bytes is not a positive multiple of %u up to 1 TiB; is it a guest memory "
			"file from /snapshot/create?", opt->mem_path, (unsigned long long)f.mem_size, SNAPSHOT_PAGE);
		r = -EINVAL;
		goto out;
	}
	if (f.vmstate_size == 0 || f.vmstate_size > (1ull << 30)) {
		log_err("vmstate file %s: %llu bytes; expected 1 byte to 1 GiB", opt->vmstate_path,
			(unsigned long long)f.vmstate_size);
		r = -EINVAL;
		goto out;
	}
	f.vmstate_first_chunk = (f.mem_size + CHUNK_SIZE - 1) / CHUNK_SIZE;
	uint64_t vmstate_chunks = (f.vmstate_size + CHUNK_SIZE - 1) / CHUNK_SIZE;

	struct manifest tmpl = {
		.kind = MANIFEST_KIND_SNAPSHOT,
		.image_size = (f.vmstate_first_chunk + vmstate_chunks) * CHUNK_SIZE,
		.chunk_size = CHUNK_SIZE,
		.metadata_offset = 0,
		.source_ref = img.source_ref,
		.config = opt->config ? *opt->config : img.config,
	};
	snprintf(tmpl.snapshot.image_digest, sizeof(tmpl.snapshot.image_digest), "%s", image_digest);
	tmpl.snapshot.mem_size = f.mem_size;
	tmpl.snapshot.vmstate_offset = f.vmstate_first_chunk * CHUNK_SIZE;
	tmpl.snapshot.vmstate_size = f.vmstate_size;
	/* The OCI identity is the source image's: the snapshot runs its code. */
	memcpy(tmpl.source_manifest_digest, img.source_manifest_digest, sizeof(tmpl.source_manifest_digest));
	memcpy(tmpl.source_config_digest, img.source_config_digest, sizeof(tmpl.source_config_digest));

	struct import_options io = {.name_tag = opt->name_tag, .progress = opt->progress, .workers = opt->workers};
	const struct chunk_reader reader = {.read = read_snapshot_chunk, .ctx = &f};
	r = chunkify_import_chunks(c, &reader, &tmpl, &io, rep);
out:
	if (f.mem_fd >= 0)
		close(f.mem_fd);
	if (f.vmstate_fd >= 0)
		close(f.vmstate_fd);
	manifest_cleanup(&img);
	return r;
}

int snapshot_load(struct store *s, const char *ref, const uint8_t *tenant_key, char digest[65], struct manifest *m)
{
	int r = image_resolve(s, ref, tenant_key, digest);
	if (r == 0)
		r = image_load(s, digest, tenant_key, m);
	if (r < 0)
		return r;
	if (m->kind != MANIFEST_KIND_SNAPSHOT) {
		log_err("%s is an %s, not a micro-VM snapshot; run it with `kindling run %s`", ref,
			manifest_kind_name(m->kind), ref);
		manifest_cleanup(m);
		return -EMEDIUMTYPE;
	}
	return 0;
}

const struct manifest_chunk *snapshot_chunk(const struct manifest *m, uint64_t index)
{
	size_t lo = 0, hi = m->n_chunks;
	while (lo < hi) {
		size_t mid = lo + (hi - lo) / 2;
		if (m->chunks[mid].index == index)
			return &m->chunks[mid];
		if (m->chunks[mid].index < index)
			lo = mid + 1;
		else
			hi = mid;
	}
	return NULL;
}

int snapshot_read_vmstate(struct cache *cache, const struct manifest *m, const char *what, uint8_t **out,
			  size_t *out_len)
{
	const struct manifest_snapshot *sn = &m->snapshot;
	uint8_t *buf = malloc(sn->vmstate_size ? sn->vmstate_size : 1);
	if (!buf)
		return -ENOMEM;
	uint64_t first = sn->vmstate_offset / CHUNK_SIZE;
	for (uint64_t off = 0; off < sn->vmstate_size; off += CHUNK_SIZE) {
		uint64_t index = first + off / CHUNK_SIZE;
		size_t len = sn->vmstate_size - off < CHUNK_SIZE ? (size_t)(sn->vmstate_size - off) : CHUNK_SIZE;
		const struct manifest_chunk *mc = snapshot_chunk(m, index);
		if (!mc) {
			memset(buf + off, 0, len);
			continue;
		}
		int r = cache_read(cache, mc->name, mc->key, 0, buf + off, len, NULL);
		if (r < 0) {
			log_err("snapshot %s: vmstate chunk %llu (%s) cannot be read verified from any tier: %s; the "
				"snapshot cannot be restored (re-import it, or restore its chunk to the origin)",
				what, (unsigned long long)index, mc->name, strerror(-r));
			free(buf);
			return r == -ENOMEM ? r : -EIO;
		}
	}
	*out = buf;
	*out_len = (size_t)sn->vmstate_size;
	return 0;
}
