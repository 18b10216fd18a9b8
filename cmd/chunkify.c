/* chunkify: import OCI images into kindling's chunk store, and look after it. */
#define LOG_COMPONENT "chunkify"
#include "blockd/blockd.h"
#include "cache/cache.h"
#include "chunker/chunker.h"
#include "common/common.h"
#include "image/image.h"
#include "snapshot/snapshot.h"

#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <jansson.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static volatile sig_atomic_t interrupted;

/* The signal that asked us to stop, so we exit as a shell expects (128 + it). */
static void on_signal(int sig)
{
	interrupted = sig;
}

static void usage(FILE *out)
{
	fprintf(out,
		"usage: chunkify [--store URI] [--json] COMMAND ...\n"
		"\n"
		"  import SOURCE [--name NAME[:TAG]] [--insecure] [--workers N] [--jobs N] [--layout-trace TRACE]...\n"
		"        SOURCE: oci:DIR[:TAG] | docker-archive:FILE | docker://HOST[:PORT]/REPO[:TAG|@DIGEST]\n"
		"        --workers N: seal threads (default one per core); --jobs N: layers opened\n"
		"        (downloaded) and read at once (default 2; 1 = one layer at a time);\n"
		"        neither changes the image\n"
		"        TRACE: a startup trace recorded on an earlier import of the image (the store's\n"
		"        traces/<manifest digest>): the files that start read go first in their layers;\n"
		"        with several (up to 16), the first trace's files, then each next one's others\n"
		"  snapshot-import NAME[:TAG] --mem FILE --vmstate FILE --from IMAGE\n"
		"                               store a micro-VM snapshot (kvmm's or Firecracker's\n"
		"                               /snapshot/create files) as convergent chunks; IMAGE is the\n"
		"                               image the VM ran and must be in the store\n"
		"  ls                           list the images and snapshots in the store\n"
		"  inspect IMAGE [--chunks]     show an image's or a snapshot's manifest\n"
		"  verify IMAGE                 fetch, check and decrypt every chunk\n"
		"  export IMAGE FILE [--vmstate VMSTATE]\n"
		"                               write the flattened EROFS image to FILE; for a snapshot, its\n"
		"                               memory file to FILE and its vmstate to VMSTATE (if given)\n"
		"  tag IMAGE NAME[:TAG]         point NAME[:TAG] at IMAGE, signed with the tenant key\n"
		"  rm IMAGE                     remove an image's ref (and its manifest if unreferenced)\n"
		"  gc [--dry-run]               delete chunks that no image references\n"
		"\n"
		"IMAGE is NAME[:TAG] or a manifest digest.  Options:\n"
		"  --store URI        file:///dir, a path, http://host:port/prefix or s3://bucket/prefix\n"
		"                     (default: $KINDLING_HOME/store, KINDLING_HOME defaults to ~/.kindling)\n"
		"  --s3-endpoint URL  S3 endpoint (also KINDLING_S3_ENDPOINT or AWS_ENDPOINT_URL)\n"
		"  --s3-region NAME   S3 region (also AWS_REGION; default us-east-1)\n"
		"  --json             machine-readable output\n"
		"  -v, --verbose      log progress details (KINDLING_DEBUG=1 for everything)\n");
}

struct cli {
	const char *store_uri;
	struct store_options sopt;
	bool json, chunks, dry_run, insecure;
	const char *name;
	unsigned workers;
	unsigned jobs;		/* import: layers opened and read at once */
	char *l2;		/* prime: "host:port,..." */
	unsigned k, m;
	bool m_set;
	const char *mem, *vmstate, *from; /* snapshot-import, export */
	/* import: --layout-trace files, in the order given (their merge order) */
	const char *layout_traces[MANIFEST_MAX_LAYOUT_TRACES];
	size_t n_layout_traces;
};

/* ---- import ---------------------------------------------------------------- */

static int collect_file(void *arg, const char *path, uint64_t data_off, uint64_t data_len)
{
	return layout_files_add(arg, path, data_off, data_len);
}

/* What the layout traces said, for the import's report. */
struct layout_summary {
	char traced_digest[MANIFEST_MAX_LAYOUT_TRACES][65]; /* per trace, the image it was recorded on */
	size_t files, layers;				      /* of the merged plan */
};

/* Turn the trace file |path| into a layout plan: parse it, open the image it
 * was recorded on from the store (through blockd's EROFS reader, fetching
 * only the metadata), and map its block runs to that image's files.  A
 * trace whose image the store no longer holds, or whose runs lie past that
 * image's end, is refused.  |traced_digest| gets the image it was recorded
 * on. */
static int load_layout_plan(struct chunkify_ctx *c, const struct cli *cli, const char *path,
			    struct layout_plan **out, char traced_digest[65])
{
	uint8_t *buf = NULL;
	size_t len = 0;
	int r = read_file_all(path, IMAGE_TRACE_MAX_BYTES, &buf, &len);
	if (r < 0) {
		fprintf(stderr, "chunkify import: cannot read the layout trace %s: %s\n", path,
			r == -EFBIG ? "larger than a trace may be (16 MiB)" : strerror(-r));
		return r;
	}
	struct layout_trace t;
	r = layout_trace_parse(buf, len, path, &t);
	free(buf);
	if (r < 0)
		return r;

	struct blockd_config cfg = {
		.cache = { .origin_uri = cli->store_uri ? cli->store_uri : c->env.default_store_uri,
			   .origin_options = &cli->sopt },
	};
	struct blockd *b = NULL;
	struct blockd_image *img = NULL;
	struct layout_files files = { 0 };
	if ((r = blockd_new(&cfg, &b)) < 0)
		goto out;
	if ((r = blockd_attach(b, t.manifest_digest, &img)) < 0) {
		fprintf(stderr,
			"chunkify import: the layout trace %s was recorded on image sha256:%s, which the store %s "
			"does not hold (%s): import without --layout-trace, or run the image once to record a "
			"new trace\n",
			path, t.manifest_digest, cfg.cache.origin_uri, strerror(-r));
		goto out;
	}
	uint64_t image_blocks = blockd_image_size(img) / IMAGE_TRACE_BLOCK_SIZE;
	for (size_t i = 0; i < t.n_extents; i++)
		if (t.extents[i].block + t.extents[i].count > image_blocks) {
			fprintf(stderr,
				"chunkify import: the layout trace %s: blocks[%zu] (%llu blocks from block %llu) lies "
				"past the end of image sha256:%s (%llu blocks): not a trace of that image\n",
				path, i, (unsigned long long)t.extents[i].count,
				(unsigned long long)t.extents[i].block, t.manifest_digest,
				(unsigned long long)image_blocks);
			r = -EBADMSG;
			goto out;
		}
	if ((r = blockd_image_walk_files(img, collect_file, &files)) != 0) {
		fprintf(stderr, "chunkify import: cannot list the files of image sha256:%s for the layout trace %s: %s\n",
			t.manifest_digest, path, strerror(r < 0 ? -r : EIO));
		r = r < 0 ? r : -EIO;
		goto out;
	}
	r = layout_plan_build(&t, blockd_image_manifest(img), files.v, files.n, out);
	if (r == 0) {
		snprintf(traced_digest, 65, "%s", t.manifest_digest);
		log_info("layout trace %s (recorded on sha256:%s): %zu files read, in %zu layers", path,
			 t.manifest_digest, layout_plan_files(*out), layout_plan_layers_with_files(*out));
	}
out:
	layout_files_cleanup(&files);
	blockd_free(b);
	layout_trace_cleanup(&t);
	return r;
}

/* The plan of every --layout-trace, merged in the order given
 * (layout_plan_merge) when there are several. */
static int load_layout_plans(struct chunkify_ctx *c, const struct cli *cli, struct layout_plan **out,
			     struct layout_summary *sum)
{
	struct layout_plan *plans[MANIFEST_MAX_LAYOUT_TRACES] = { 0 };
	int r = 0;
	for (size_t i = 0; r == 0 && i < cli->n_layout_traces; i++)
		r = load_layout_plan(c, cli, cli->layout_traces[i], &plans[i], sum->traced_digest[i]);
	if (r == 0 && cli->n_layout_traces == 1) {
		*out = plans[0];
		plans[0] = NULL;
	} else if (r == 0) {
		r = layout_plan_merge((const struct layout_plan *const *)plans, cli->n_layout_traces, out);
		if (r < 0)
			log_err("merging %zu layout traces: %s", cli->n_layout_traces, strerror(-r));
	}
	for (size_t i = 0; i < cli->n_layout_traces; i++)
		layout_plan_free(plans[i]);
	if (r == 0) {
		sum->files = layout_plan_files(*out);
		sum->layers = layout_plan_layers_with_files(*out);
	}
	return r;
}

static int cmd_import(struct chunkify_ctx *c, const struct cli *cli, const char *source)
{
	struct import_options opt = {
		.name_tag = cli->name,
		.progress = !cli->json && isatty(STDERR_FILENO),
		.insecure = cli->insecure,
		.workers = cli->workers,
		.jobs = cli->jobs,
	};
	struct layout_plan *plan = NULL;
	struct layout_summary sum = { 0 };
	int r = cli->n_layout_traces ? load_layout_plans(c, cli, &plan, &sum) : 0;
	if (r < 0)
		return r;
	opt.layout = plan;
	struct import_report rep;
	r = chunkify_import(c, source, &opt, &rep);
	layout_plan_free(plan);
	if (r < 0)
		return r;
	double mbps = rep.seconds > 0 ? (double)rep.image_size / 1e6 / rep.seconds : 0;
	if (cli->json) {
		json_t *j = json_pack("{s:s,s:s,s:I,s:I,s:I,s:I,s:I,s:I,s:f,s:f,s:i}", "manifest", rep.manifest_digest,
				      "ref", rep.ref, "chunks_total", (json_int_t)rep.chunks_total, "chunks_new",
				      (json_int_t)rep.chunks_new, "chunks_dedup", (json_int_t)rep.chunks_dedup,
				      "chunks_zero", (json_int_t)rep.chunks_zero, "bytes_uploaded",
				      (json_int_t)rep.bytes_uploaded, "image_size", (json_int_t)rep.image_size,
				      "seconds", rep.seconds, "mb_per_s", mbps, "workers", (int)rep.workers);
		if (j && cli->n_layout_traces) {
			/* "file" and "recorded_on" are the first trace's, whose
			 * order goes first; "traces" lists every one. */
			json_t *traces = json_array();
			for (size_t i = 0; traces && i < cli->n_layout_traces; i++)
				json_array_append_new(traces, json_pack("{s:s,s:s}", "file", cli->layout_traces[i],
									"recorded_on", sum.traced_digest[i]));
			json_object_set_new(j, "layout_trace",
					    json_pack("{s:s,s:s,s:I,s:I,s:o}", "file", cli->layout_traces[0],
						      "recorded_on", sum.traced_digest[0], "files", (json_int_t)sum.files,
						      "layers", (json_int_t)sum.layers, "traces", traces));
		}
		char *s = json_dumps(j, JSON_COMPACT);
		printf("%s\n", s);
		free(s);
		json_decref(j);
		return 0;
	}
	uint64_t nonzero = rep.chunks_new + rep.chunks_dedup;
	printf("imported %s as %s\n", source, rep.ref);
	printf("  manifest      sha256:%s\n", rep.manifest_digest);
	printf("  image size    %.1f MiB (%llu chunks of 512 KiB)\n", (double)rep.image_size / (1 << 20),
	       (unsigned long long)rep.chunks_total);
	printf("  chunks        %llu new, %llu deduplicated, %llu zero (not stored)\n",
	       (unsigned long long)rep.chunks_new, (unsigned long long)rep.chunks_dedup,
	       (unsigned long long)rep.chunks_zero);
	printf("  dedup         %.1f%% of non-zero chunks were already in the store\n",
	       nonzero ? 100.0 * (double)rep.chunks_dedup / (double)nonzero : 0.0);
	printf("  uploaded      %.1f MiB\n", (double)rep.bytes_uploaded / (1 << 20));
	printf("  time          %.2f s, %.0f MB/s\n", rep.seconds, mbps);
	if (cli->n_layout_traces) {
		printf("  layout        %zu files first in %zu layers, from ", sum.files, sum.layers);
		for (size_t i = 0; i < cli->n_layout_traces; i++)
			printf("%strace %s (recorded on sha256:%s)", i ? ", " : "", cli->layout_traces[i],
			       sum.traced_digest[i]);
		printf("\n");
	}
	return 0;
}

static int cmd_snapshot_import(struct chunkify_ctx *c, const struct cli *cli, const char *name_tag)
{
	struct snapshot_import_options opt = {
		.name_tag = name_tag,
		.mem_path = cli->mem,
		.vmstate_path = cli->vmstate,
		.from_image = cli->from,
		.progress = !cli->json && isatty(STDERR_FILENO),
		.workers = cli->workers,
	};
	if (!cli->mem || !cli->vmstate || !cli->from) {
		fprintf(stderr, "chunkify snapshot-import: --mem FILE, --vmstate FILE and --from IMAGE are required\n");
		return -EINVAL;
	}
	struct import_report rep;
	int r = snapshot_import(c, &opt, &rep);
	if (r < 0)
		return r;
	if (cli->json) {
		json_t *j = json_pack("{s:s,s:s,s:s,s:I,s:I,s:I,s:I,s:I,s:I,s:f}", "manifest", rep.manifest_digest, "ref",
				      rep.ref, "kind", "snapshot", "chunks_total", (json_int_t)rep.chunks_total,
				      "chunks_new", (json_int_t)rep.chunks_new, "chunks_dedup",
				      (json_int_t)rep.chunks_dedup, "chunks_zero", (json_int_t)rep.chunks_zero,
				      "bytes_uploaded", (json_int_t)rep.bytes_uploaded, "image_size",
				      (json_int_t)rep.image_size, "seconds", rep.seconds);
		char *s = json_dumps(j, JSON_COMPACT);
		printf("%s\n", s);
		free(s);
		json_decref(j);
		return 0;
	}
	printf("imported snapshot %s (memory %s, vmstate %s, from %s)\n", rep.ref, cli->mem, cli->vmstate, cli->from);
	printf("  manifest      sha256:%s\n", rep.manifest_digest);
	printf("  chunks        %llu new, %llu deduplicated, %llu zero (not stored) of %llu\n",
	       (unsigned long long)rep.chunks_new, (unsigned long long)rep.chunks_dedup,
	       (unsigned long long)rep.chunks_zero, (unsigned long long)rep.chunks_total);
	printf("  uploaded      %.1f MiB in %.2f s\n", (double)rep.bytes_uploaded / (1 << 20), rep.seconds);
	return 0;
}

/* ---- ls ---------------------------------------------------------------------- */

static int add_key(void *arg, const char *key)
{
	return str_list_add(arg, key);
}

static int cmp_str(const void *a, const void *b)
{
	return strcmp(*(char *const *)a, *(char *const *)b);
}

/* "refs/a/b/tag" -> "a/b:tag" */
static void ref_to_name(const char *key, char *out, size_t len)
{
	snprintf(out, len, "%s", key + strlen("refs/"));
	char *slash = strrchr(out, '/');
	if (slash)
		*slash = ':';
}

static int read_ref(struct chunkify_ctx *c, const char *key, char digest[SHA256_HEX_LEN + 1])
{
	uint8_t *buf;
	size_t len;
	int r = store_get(c->store, key, 256, &buf, &len);
	if (r < 0)
		return r;
	r = len >= SHA256_HEX_LEN ? 0 : -EBADMSG;
	if (r == 0) {
		memcpy(digest, buf, SHA256_HEX_LEN);
		digest[SHA256_HEX_LEN] = 0;
		if (!is_sha256_hex(digest))
			r = -EBADMSG;
	}
	free(buf);
	return r;
}

static int cmd_ls(struct chunkify_ctx *c, const struct cli *cli)
{
	struct str_list refs = {0};
	int r = store_list(c->store, "refs/", add_key, &refs);
	if (r < 0) {
		str_list_clear(&refs);
		return r;
	}
	if (refs.n) /* qsort(NULL, 0) is undefined */
		qsort(refs.items, refs.n, sizeof(*refs.items), cmp_str);
	json_t *arr = json_array();
	if (!cli->json)
		printf("%-40s %-8s %-20s %12s %8s\n", "IMAGE", "KIND", "MANIFEST", "SIZE", "CHUNKS");
	for (size_t i = 0; i < refs.n; i++) {
		char name[600], digest[SHA256_HEX_LEN + 1];
		ref_to_name(refs.items[i], name, sizeof(name));
		int rr = image_resolve(c->store, name, c->env.tenant_key, digest);
		if (rr == -EKEYREJECTED) { /* logged, with what to do */
			if (!cli->json)
				printf("%-40s %-8s %-20s %12s %8s\n", name, "?", "-", "?", "refused");
			continue;
		}
		if (rr < 0) {
			log_warn("ref %s is unreadable; skipping it", refs.items[i]);
			continue;
		}
		struct manifest m;
		if (image_load(c->store, digest, NULL, &m) < 0) {
			printf("%-40s %-8s %.19s %12s %8s\n", name, "?", digest, "?", "broken");
			continue;
		}
		if (cli->json)
			json_array_append_new(arr, json_pack("{s:s,s:s,s:s,s:I,s:I}", "image", name, "kind",
							     manifest_kind_name(m.kind), "manifest", digest, "image_size",
							     (json_int_t)m.image_size, "chunks", (json_int_t)m.n_chunks));
		else
			printf("%-40s %-8s %.19s %9.1f MiB %8zu\n", name, manifest_kind_name(m.kind), digest,
			       (double)m.image_size / (1 << 20), m.n_chunks);
		manifest_cleanup(&m);
	}
	if (cli->json) {
		char *s = json_dumps(arr, JSON_COMPACT);
		printf("%s\n", s);
		free(s);
	}
	json_decref(arr);
	str_list_clear(&refs);
	return 0;
}

/* ---- inspect ------------------------------------------------------------------ */

static json_t *strv_json(char **v)
{
	if (!v)
		return json_null();
	json_t *a = json_array();
	for (; *v; v++)
		json_array_append_new(a, json_string(*v));
	return a;
}

static int cmd_inspect(struct chunkify_ctx *c, const struct cli *cli, const char *image)
{
	char digest[SHA256_HEX_LEN + 1];
	int r = image_resolve(c->store, image, c->env.tenant_key, digest);
	struct manifest m;
	if (r < 0 || (r = image_load(c->store, digest, NULL, &m)) < 0)
		return r;
	const struct run_config *rc = &m.config;
	json_t *layers = json_array();
	for (size_t i = 0; i < m.n_layers; i++)
		json_array_append_new(layers, json_pack("{s:s,s:I,s:I}", "digest", m.layers[i].digest, "offset",
							(json_int_t)m.layers[i].offset, "length",
							(json_int_t)m.layers[i].length));
	json_t *j = json_pack(
		"{s:s,s:s,s:s,s:s,s:I,s:I,s:I,s:I,s:I,s:o,s:{s:o,s:o,s:o,s:o,s:o}}", "manifest", digest, "source",
		m.source_ref ? m.source_ref : "", "source_manifest_digest", m.source_manifest_digest,
		"source_config_digest", m.source_config_digest, "image_size", (json_int_t)m.image_size, "chunk_size",
		(json_int_t)m.chunk_size, "chunks_total", (json_int_t)(m.image_size / CHUNK_SIZE), "chunks_stored",
		(json_int_t)m.n_chunks, "metadata_offset", (json_int_t)m.metadata_offset, "layers", layers, "config",
		"entrypoint", strv_json(rc->entrypoint), "cmd", strv_json(rc->cmd), "env", strv_json(rc->env),
		"working_dir", rc->working_dir ? json_string(rc->working_dir) : json_null(), "user",
		rc->user ? json_string(rc->user) : json_null());
	json_object_set_new(j, "kind", json_string(manifest_kind_name(m.kind)));
	if (m.kind == MANIFEST_KIND_SNAPSHOT)
		json_object_set_new(j, "snapshot",
				    json_pack("{s:s,s:I,s:I,s:I,s:I}", "image", m.snapshot.image_digest, "memory_size",
					      (json_int_t)m.snapshot.mem_size, "memory_chunks",
					      (json_int_t)((m.snapshot.mem_size + CHUNK_SIZE - 1) / CHUNK_SIZE),
					      "vmstate_offset", (json_int_t)m.snapshot.vmstate_offset, "vmstate_size",
					      (json_int_t)m.snapshot.vmstate_size));
	if (m.kind == MANIFEST_KIND_IMAGE)
		json_object_set_new(j, "layout", json_string(m.n_layout_traces ? "trace" : "usual"));
	if (m.n_layout_traces) {
		json_t *traces = json_array();
		for (size_t i = 0; traces && i < m.n_layout_traces; i++)
			json_array_append_new(traces, json_pack("{s:s,s:s}", "trace", m.layout_traces[i].trace_digest,
								"recorded_on", m.layout_traces[i].recorded_on));
		json_object_set_new(j, "layout_traces", traces);
	}
	if (cli->chunks) {
		json_t *chunks = json_array();
		for (size_t i = 0; i < m.n_chunks; i++)
			json_array_append_new(chunks, json_pack("{s:I,s:s}", "index", (json_int_t)m.chunks[i].index,
								"name", m.chunks[i].name));
		json_object_set_new(j, "chunks", chunks);
	}
	if (cli->json) {
		char *s = json_dumps(j, JSON_COMPACT);
		printf("%s\n", s);
		free(s);
	} else {
		char *s = json_dumps(j, JSON_INDENT(2) | JSON_PRESERVE_ORDER);
		printf("%s\n", s);
		free(s);
	}
	json_decref(j);
	manifest_cleanup(&m);
	return 0;
}

/* ---- verify / export ----------------------------------------------------------- */

/* Fetch, check and decrypt every stored chunk of |image|; write the image to
 * |fd| when it is not -1 (zero chunks become holes).  For a snapshot |fd|
 * gets the memory file and |vmstate_fd| (when not -1) the vmstate. */
static int read_image(struct chunkify_ctx *c, const char *image, int fd, int vmstate_fd, uint64_t *out_size,
		      size_t *out_bad)
{
	char digest[SHA256_HEX_LEN + 1];
	int r = image_resolve(c->store, image, c->env.tenant_key, digest);
	struct manifest m;
	if (r < 0 || (r = image_load(c->store, digest, c->env.tenant_key, &m)) < 0)
		return r;
	uint8_t *plain = malloc(CHUNK_SIZE);
	size_t bad = 0;
	if (!plain) {
		manifest_cleanup(&m);
		return -ENOMEM;
	}
	bool snap = m.kind == MANIFEST_KIND_SNAPSHOT;
	uint64_t out_len = snap ? m.snapshot.mem_size : m.image_size;
	if (fd >= 0 && ftruncate(fd, (off_t)out_len) < 0) {
		r = -errno;
		log_err("cannot size the output to %llu bytes: %s", (unsigned long long)out_len, strerror(errno));
	}
	if (r == 0 && snap && vmstate_fd >= 0 && ftruncate(vmstate_fd, (off_t)m.snapshot.vmstate_size) < 0) {
		r = -errno;
		log_err("cannot size the vmstate output: %s", strerror(errno));
	}
	if (!snap && vmstate_fd >= 0) {
		log_err("%s is an image: it has no vmstate (--vmstate is for snapshots)", image);
		r = -EINVAL;
	}
	for (size_t i = 0; r == 0 && i < m.n_chunks; i++) {
		if (interrupted) {
			r = -EINTR;
			break;
		}
		const struct manifest_chunk *mc = &m.chunks[i];
		char key[80];
		snprintf(key, sizeof(key), "chunks/%s", mc->name);
		uint8_t *cipher;
		size_t len;
		int g = store_get(c->store, key, CHUNK_SIZE, &cipher, &len);
		if (g < 0) {
			log_err("chunk %llu (%s): %s", (unsigned long long)mc->index, mc->name,
				g == -ENOENT ? "missing from the store" : strerror(-g));
			bad++;
			if (fd >= 0)
				r = g;
			continue;
		}
		int o = len == CHUNK_SIZE ? chunk_open(mc->name, mc->key, c->env.salt, c->env.salt_len, cipher, len, plain)
					  : -EBADMSG;
		free(cipher);
		if (o < 0) {
			log_err("chunk %llu (%s): corrupt: its bytes do not match its name or key", (unsigned long long)mc->index,
				mc->name);
			bad++;
			if (fd >= 0)
				r = o;
			continue;
		}
		/* Where this chunk goes: the image, or a snapshot's memory or vmstate. */
		uint64_t at = mc->index * CHUNK_SIZE, end = out_len;
		int out_fd = fd;
		if (snap && at >= m.snapshot.vmstate_offset) {
			at -= m.snapshot.vmstate_offset;
			end = m.snapshot.vmstate_size;
			out_fd = vmstate_fd;
		}
		size_t n = end - at < CHUNK_SIZE ? (size_t)(end - at) : CHUNK_SIZE;
		if (out_fd >= 0 && at < end && pwrite(out_fd, plain, n, (off_t)at) != (ssize_t)n) {
			r = errno ? -errno : -EIO;
			log_err("writing the output: %s", strerror(errno));
		}
	}
	*out_size = out_len;
	*out_bad = bad;
	free(plain);
	manifest_cleanup(&m);
	return r;
}

static int cmd_verify(struct chunkify_ctx *c, const struct cli *cli, const char *image)
{
	uint64_t size = 0;
	size_t bad = 0;
	double t0 = now_seconds();
	int r = read_image(c, image, -1, -1, &size, &bad);
	if (r < 0)
		return r;
	if (cli->json)
		printf("{\"image\":\"%s\",\"ok\":%s,\"bad_chunks\":%zu,\"seconds\":%.3f}\n", image, bad ? "false" : "true",
		       bad, now_seconds() - t0);
	else if (bad)
		printf("%s: %zu bad chunks\n", image, bad);
	else
		printf("%s: ok, every chunk matches its name and key (%.1f MiB image)\n", image,
		       (double)size / (1 << 20));
	return bad ? -EBADMSG : 0;
}

/* Create |file|'s temporary sibling for an atomic export; |*tmp| is malloc'd. */
static int open_tmp(const char *file, char **tmp)
{
	*tmp = xasprintf("%s.tmp-%d", file, (int)getpid());
	if (!*tmp)
		return -ENOMEM;
	int fd = open(*tmp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
	if (fd < 0) {
		int e = -errno;
		log_err("cannot create %s: %s", *tmp, strerror(errno));
		free(*tmp);
		*tmp = NULL;
		return e;
	}
	return fd;
}

/* fsync and close |fd|, then rename |tmp| to |file| if |r| is still 0;
 * otherwise remove |tmp|.  Returns the outcome. */
static int finish_tmp(int fd, char *tmp, const char *file, int r)
{
	if (fd < 0)
		return r;
	if (r == 0 && fsync(fd) < 0)
		r = -errno;
	close(fd);
	if (r == 0 && rename(tmp, file) < 0) {
		r = -errno;
		log_err("cannot rename %s to %s: %s", tmp, file, strerror(errno));
	}
	if (r < 0)
		unlink(tmp);
	free(tmp);
	return r;
}

static int cmd_export(struct chunkify_ctx *c, const struct cli *cli, const char *image, const char *file)
{
	char *tmp = NULL, *vtmp = NULL;
	int fd = open_tmp(file, &tmp);
	if (fd < 0)
		return fd;
	int vfd = -1;
	if (cli->vmstate && (vfd = open_tmp(cli->vmstate, &vtmp)) < 0) {
		finish_tmp(fd, tmp, file, vfd);
		return vfd;
	}
	uint64_t size = 0;
	size_t bad = 0;
	int r = read_image(c, image, fd, vfd, &size, &bad);
	if (r == 0 && bad)
		r = -EBADMSG;
	if (vfd >= 0)
		r = finish_tmp(vfd, vtmp, cli->vmstate, r);
	r = finish_tmp(fd, tmp, file, r);
	if (r < 0)
		log_err("export of %s failed; %s was not written", image, file);
	return r;
}

/* ---- rm / gc ---------------------------------------------------------------------- */

/* The first snapshot manifest in the store taken from image |digest|, into
 * |snapshot| (65 bytes); 1 if there is one, 0 if not, or -errno. */
static int find_snapshot_of(struct chunkify_ctx *c, const char *digest, char *snapshot)
{
	struct str_list keys = {0};
	int r = store_list(c->store, "manifests/", add_key, &keys);
	for (size_t i = 0; r == 0 && i < keys.n; i++) {
		const char *d = keys.items[i] + strlen("manifests/");
		struct manifest m;
		if (!is_sha256_hex(d) || image_load(c->store, d, NULL, &m) < 0)
			continue;
		if (m.kind == MANIFEST_KIND_SNAPSHOT && strcmp(m.snapshot.image_digest, digest) == 0) {
			snprintf(snapshot, 65, "%s", d);
			r = 1;
		}
		manifest_cleanup(&m);
	}
	str_list_clear(&keys);
	return r;
}

/* Removing works on a tag whatever it points at, signed or not: a tag that
 * was repointed behind the tenant's back must be removable. */
static int cmd_rm(struct chunkify_ctx *c, const char *image)
{
	char digest[SHA256_HEX_LEN + 1];
	bool by_digest = is_sha256_hex(strncmp(image, "sha256:", 7) == 0 ? image + 7 : image);
	char own[600] = "";
	int r = 0;
	if (by_digest)
		r = image_resolve(c->store, image, c->env.tenant_key, digest);
	else {
		char nt[512];
		if ((r = image_parse_name_tag(image, nt, sizeof(nt))) < 0)
			return r;
		snprintf(own, sizeof(own), "refs/%s", nt);
		if ((r = read_ref(c, own, digest)) == -ENOENT)
			log_err("no image \"%s\" in %s (try `chunkify ls`)", image, store_describe(c->store));
		else if (r < 0)
			log_err("ref %s in %s is unreadable: %s", own, store_describe(c->store), strerror(-r));
	}
	if (r < 0)
		return r;
	struct str_list refs = {0};
	if ((r = store_list(c->store, "refs/", add_key, &refs)) < 0)
		goto out;
	size_t others = 0;
	for (size_t i = 0; i < refs.n; i++) {
		char d[SHA256_HEX_LEN + 1];
		if (read_ref(c, refs.items[i], d) < 0 || strcmp(d, digest) != 0)
			continue;
		/* Removing by digest removes every name for it. */
		if (by_digest || strcmp(refs.items[i], own) == 0) {
			if ((r = store_delete(c->store, refs.items[i])) < 0)
				goto out;
		} else
			others++;
	}
	/* A snapshot's source image stays live: its manifest is kept while a
	 * snapshot names it, so gc keeps the image's chunks too. */
	char snap[SHA256_HEX_LEN + 1] = "";
	int snapshots = others ? 0 : find_snapshot_of(c, digest, snap);
	if (snapshots < 0) {
		r = snapshots;
		goto out;
	}
	if (!others && !snapshots) {
		char key[128];
		snprintf(key, sizeof(key), "manifests/%s", digest);
		r = store_delete(c->store, key);
	}
	if (r == 0 && snapshots)
		printf("removed %s; its manifest stays, since snapshot sha256:%.12s was taken from it (remove the "
		       "snapshots first to free its chunks)\n", image, snap);
	else if (r == 0)
		printf("removed %s%s; run `chunkify gc` to free its chunks\n", image,
		       others ? " (the manifest stays: other names use it)" : "");
out:
	str_list_clear(&refs);
	return r;
}

/* ---- tag ------------------------------------------------------------------------- */

static int cmd_tag(struct chunkify_ctx *c, const char *image, const char *name_tag)
{
	char digest[SHA256_HEX_LEN + 1];
	struct manifest m = {0};
	int r = image_resolve(c->store, image, c->env.tenant_key, digest);
	/* Opening it with the key proves it is this tenant's image. */
	if (r == 0 && (r = image_load(c->store, digest, c->env.tenant_key, &m)) == 0)
		r = image_ref_put(c->store, c->env.tenant_key, name_tag, digest);
	manifest_cleanup(&m);
	if (r == 0)
		printf("tagged sha256:%s as %s\n", digest, name_tag);
	return r;
}

static int cmd_gc(struct chunkify_ctx *c, const struct cli *cli)
{
	struct gc_report rep;
	int r = chunkify_gc(c, cli->dry_run, &rep);
	if (r < 0)
		return r;
	if (cli->json)
		printf("{\"manifests\":%llu,\"live_leases\":%llu,\"expired_leases\":%llu,\"chunks_seen\":%llu,"
		       "\"chunks_deleted\":%llu,\"dry_run\":%s}\n",
		       (unsigned long long)rep.manifests, (unsigned long long)rep.leases_live,
		       (unsigned long long)rep.leases_expired, (unsigned long long)rep.chunks_seen,
		       (unsigned long long)rep.chunks_deleted, cli->dry_run ? "true" : "false");
	else
		printf("gc: %llu manifests, %llu live imports; %llu of %llu chunks %s\n",
		       (unsigned long long)rep.manifests, (unsigned long long)rep.leases_live,
		       (unsigned long long)rep.chunks_deleted, (unsigned long long)rep.chunks_seen,
		       cli->dry_run ? "would be deleted" : "deleted");
	return 0;
}

/* ---- prime ------------------------------------------------------------------------ */

static int cmd_prime(struct chunkify_ctx *c, const struct cli *cli, const char *image)
{
	const char *nodes[64];
	size_t n = 0;
	for (char *save = NULL, *t = cli->l2 ? strtok_r(cli->l2, ",", &save) : NULL; t && n < 64;
	     t = strtok_r(NULL, ",", &save))
		nodes[n++] = t;
	if (!n) {
		fprintf(stderr, "chunkify prime: --l2 HOST:PORT,... is required\n");
		return -EINVAL;
	}
	char digest[SHA256_HEX_LEN + 1];
	struct manifest m = {0};
	int r = image_resolve(c->store, image, c->env.tenant_key, digest);
	if (r == 0)
		r = image_load(c->store, digest, c->env.tenant_key, &m);
	char *uri = cli->store_uri ? strdup(cli->store_uri) : strdup(c->env.default_store_uri);
	struct cache_config cfg = {
		.origin_uri = uri,
		.l2_nodes = nodes,
		.n_l2_nodes = n,
		.l2_k = cli->k ? cli->k : cli->m_set ? 4 : 0,
		.l2_m = cli->m_set ? cli->m : 1,
		.mem_disable = true,
		.origin_options = &cli->sopt,
	};
	struct cache *cache = NULL;
	uint64_t written = 0;
	double t0 = now_seconds();
	if (r == 0 && !uri)
		r = -ENOMEM;
	if (r == 0)
		r = cache_new(&cfg, &cache);
	if (r == 0)
		r = cache_prime_l2(cache, &m, &written);
	cache_free(cache);
	free(uri);
	if (r == 0 && cli->json)
		printf("{\"image\":\"%s\",\"chunks\":%zu,\"written\":%llu,\"seconds\":%.3f}\n", image, m.n_chunks,
		       (unsigned long long)written, now_seconds() - t0);
	else if (r == 0)
		printf("primed %s: %llu of %zu chunks written to L2 (the rest were there), %.2f s\n", image,
		       (unsigned long long)written, m.n_chunks, now_seconds() - t0);
	manifest_cleanup(&m);
	return r;
}

/* ---- main --------------------------------------------------------------------------- */

/* |arg| as a count from 1 to |max| into |*out|; otherwise says what option
 * |opt| takes and returns -EINVAL. */
static int parse_count(const char *opt, const char *arg, long max, unsigned *out)
{
	char *end;
	errno = 0;
	long v = strtol(arg, &end, 10);
	if (errno || end == arg || *end || v < 1 || v > max) {
		fprintf(stderr, "chunkify: %s must be 1 to %ld, not \"%s\"\n", opt, max, arg);
		return -EINVAL;
	}
	*out = (unsigned)v;
	return 0;
}

int main(int argc, char **argv)
{
	log_set_program("chunkify");
	struct cli cli = {0};
	enum { OPT_STORE = 256, OPT_JSON, OPT_NAME, OPT_INSECURE, OPT_CHUNKS, OPT_DRY, OPT_WORKERS, OPT_S3E, OPT_S3R,
	       OPT_L2, OPT_K, OPT_M, OPT_MEM, OPT_VMSTATE, OPT_FROM, OPT_LAYOUT_TRACE, OPT_JOBS };
	static const struct option longopts[] = {
		{"store", required_argument, NULL, OPT_STORE},	   {"json", no_argument, NULL, OPT_JSON},
		{"name", required_argument, NULL, OPT_NAME},	   {"insecure", no_argument, NULL, OPT_INSECURE},
		{"chunks", no_argument, NULL, OPT_CHUNKS},	   {"dry-run", no_argument, NULL, OPT_DRY},
		{"workers", required_argument, NULL, OPT_WORKERS}, {"s3-endpoint", required_argument, NULL, OPT_S3E},
		{"s3-region", required_argument, NULL, OPT_S3R},   {"verbose", no_argument, NULL, 'v'},
		{"help", no_argument, NULL, 'h'},		   {"l2", required_argument, NULL, OPT_L2},
		{"k", required_argument, NULL, OPT_K},		   {"m", required_argument, NULL, OPT_M},
		{"mem", required_argument, NULL, OPT_MEM},	   {"vmstate", required_argument, NULL, OPT_VMSTATE},
		{"from", required_argument, NULL, OPT_FROM},	   {"layout-trace", required_argument, NULL, OPT_LAYOUT_TRACE},
		{"jobs", required_argument, NULL, OPT_JOBS},
		{NULL, 0, NULL, 0},
	};
	/* Options may come before or after the command ("+" is not used). */
	int ch;
	while ((ch = getopt_long(argc, argv, "vh", longopts, NULL)) != -1) {
		switch (ch) {
		case OPT_STORE: cli.store_uri = optarg; break;
		case OPT_JSON: cli.json = true; break;
		case OPT_NAME: cli.name = optarg; break;
		case OPT_INSECURE: cli.insecure = cli.sopt.insecure = true; break;
		case OPT_CHUNKS: cli.chunks = true; break;
		case OPT_DRY: cli.dry_run = true; break;
		case OPT_WORKERS:
			if (parse_count("--workers", optarg, 64, &cli.workers) < 0)
				return 2;
			break;
		case OPT_JOBS:
			if (parse_count("--jobs", optarg, 16, &cli.jobs) < 0)
				return 2;
			break;
		case OPT_S3E: cli.sopt.s3_endpoint = optarg; break;
		case OPT_S3R: cli.sopt.s3_region = optarg; break;
		case OPT_L2: cli.l2 = optarg; break;
		case OPT_MEM: cli.mem = optarg; break;
		case OPT_VMSTATE: cli.vmstate = optarg; break;
		case OPT_FROM: cli.from = optarg; break;
		case OPT_LAYOUT_TRACE:
			if (cli.n_layout_traces == MANIFEST_MAX_LAYOUT_TRACES) {
				fprintf(stderr, "chunkify: at most %u --layout-trace files (one layout merges them)\n",
					MANIFEST_MAX_LAYOUT_TRACES);
				return 2;
			}
			cli.layout_traces[cli.n_layout_traces++] = optarg;
			break;
		case OPT_K:
		case OPT_M: {
			char *end;
			long v = strtol(optarg, &end, 10);
			if (*end || v < (ch == OPT_K ? 1 : 0) || v > 32) {
				fprintf(stderr, "chunkify: --k must be 1 to 32 and --m 0 to 32\n");
				return 2;
			}
			if (ch == OPT_K)
				cli.k = (unsigned)v;
			else
				cli.m = (unsigned)v, cli.m_set = true;
			break;
		}
		case 'v': log_set_level(LOG_INFO); break;
		case 'h': usage(stdout); return 0;
		default: usage(stderr); return 2;
		}
	}
	if (optind >= argc) {
		usage(stderr);
		return 2;
	}
	const char *cmd = argv[optind];
	int nargs = argc - optind - 1;
	char **args = argv + optind + 1;
	static const struct {
		const char *name;
		int nargs;
	} commands[] = {{"import", 1}, {"ls", 0}, {"inspect", 1}, {"verify", 1}, {"export", 2}, {"tag", 2}, {"rm", 1}, {"gc", 0}, {"prime", 1},
		      {"snapshot-import", 1}};
	int want = -1;
	for (size_t i = 0; i < sizeof(commands) / sizeof(commands[0]); i++)
		if (strcmp(cmd, commands[i].name) == 0)
			want = commands[i].nargs;
	if (want < 0) {
		fprintf(stderr, "chunkify: unknown command \"%s\"\n", cmd);
		usage(stderr);
		return 2;
	}
	if (nargs != want) {
		fprintf(stderr, "chunkify %s: expected %d argument%s, got %d\n", cmd, want, want == 1 ? "" : "s", nargs);
		usage(stderr);
		return 2;
	}

	if (cli.n_layout_traces && strcmp(cmd, "import") != 0) {
		fprintf(stderr, "chunkify %s: --layout-trace applies to import only\n", cmd);
		return 2;
	}
	struct sigaction sa = {.sa_handler = on_signal};
	sigemptyset(&sa.sa_mask);
	sigaction(SIGINT, &sa, NULL);
	sigaction(SIGTERM, &sa, NULL);
	signal(SIGPIPE, SIG_IGN);

	/* Only an import may create the store; every other command reads an
	 * existing one, and a mistyped --store should say so, not plant a
	 * new empty directory. */
	cli.sopt.must_exist = strcmp(cmd, "import") != 0 && strcmp(cmd, "snapshot-import") != 0;
	struct chunkify_ctx c;
	int r = chunkify_ctx_init(&c, cli.store_uri, &cli.sopt);
	if (r < 0)
		return 1;
	c.cancel = &interrupted;
	if (strcmp(cmd, "import") == 0)
		r = cmd_import(&c, &cli, args[0]);
	else if (strcmp(cmd, "ls") == 0)
		r = cmd_ls(&c, &cli);
	else if (strcmp(cmd, "inspect") == 0)
		r = cmd_inspect(&c, &cli, args[0]);
	else if (strcmp(cmd, "verify") == 0)
		r = cmd_verify(&c, &cli, args[0]);
	else if (strcmp(cmd, "export") == 0)
		r = cmd_export(&c, &cli, args[0], args[1]);
	else if (strcmp(cmd, "tag") == 0)
		r = cmd_tag(&c, args[0], args[1]);
	else if (strcmp(cmd, "rm") == 0)
		r = cmd_rm(&c, args[0]);
	else if (strcmp(cmd, "snapshot-import") == 0)
		r = cmd_snapshot_import(&c, &cli, args[0]);
	else if (strcmp(cmd, "prime") == 0)
		r = cmd_prime(&c, &cli, args[0]);
	else
		r = cmd_gc(&c, &cli);
	chunkify_ctx_cleanup(&c);
	/* One failure, one message: what failed said why where it failed. */
	if (r < 0 && !log_errors_logged())
		fprintf(stderr, "chunkify: %s failed: %s\n", cmd, strerror(-r));
	if (interrupted)
		return 128 + interrupted;
	return r < 0 ? 1 : 0;
}
