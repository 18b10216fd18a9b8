/* kindling snapshot-serve: restore a micro-VM's memory lazily.
 *
 *   kindling snapshot-serve NAME[:TAG] --socket PATH --vmstate-out FILE
 *            [--store URI] [--l2 HOST:PORT,...] [--l1-dir DIR] [--l1-size BYTES]
 *            [--no-prefetch] [--record] [--host-mem] [--host-mem-dir DIR]
 *            [--host-mem-size BYTES] [--key-check] [-v]
 *
 * Writes the snapshot's vmstate to FILE (verified), checks every memory chunk
 * is in the origin, then listens on PATH for one VMM speaking Firecracker's
 * Uffd handshake and serves its guest memory from the chunks (snapshot/
 * snapshot.h) until the VMM hangs up.  Every chunk's name is checked before
 * it is decrypted (the manifest, sealed with the tenant key, names it); the
 * key check (key == SHA-256(salt || plaintext): a second hash over every
 * chunk) only with --key-check, since a restore stalls the guest on each
 * chunk it serves.  A JSON summary goes to stdout.  Exit
 * status: 0 when the VMM hung up, 1 for a refused snapshot or a chunk that
 * failed verification at every tier, 2 for bad usage.
 */
#define LOG_COMPONENT "kindling"
#include <errno.h>
#include <malloc.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cmd/commands.h"
#include "common/common.h"
#include "snapshot/snapshot.h"

static volatile int snapshot_serve_cancel;

static void on_stop_signal(int sig)
{
	snapshot_serve_cancel = sig;
}

static void snapshot_serve_usage(FILE *f)
{
	fprintf(f,
		"usage: kindling snapshot-serve NAME[:TAG] --socket PATH --vmstate-out FILE [options]\n"
		"\n"
		"Serve a micro-VM snapshot's memory lazily to a VMM over Firecracker's Uffd handshake:\n"
		"the vmstate is written to FILE first (verified), then one VMM connects to PATH and its\n"
		"guest memory is filled chunk by chunk as it faults, through memory, L1, L2 and origin.\n"
		"The first serve records the chunks faulted in order; later serves prefetch them.\n"
		"\n"
		"  --store URI           origin store [$KINDLING_HOME/store]\n"
		"  --l2 HOST:PORT,...    memcached L2 nodes, Reed-Solomon 4+1 [no L2]\n"
		"  --l1-dir DIR          L1 disk cache [$KINDLING_HOME/l1]\n"
		"  --l1-size BYTES       L1 size, K/M/G suffixes [4G]\n"
		"  --no-prefetch         neither record a trace nor prefetch from one\n"
		"  --record              record a new trace (replacing the stored one); no prefetch\n"
		"  --host-mem            keep the verified, decrypted memory in this host's memory tier\n"
		"                        and fill faults from it on later restores (no fetch, no crypto)\n"
		"                        [$XDG_RUNTIME_DIR/kindling/snapshot-mem, else\n"
		"                        /dev/shm/kindling-UID/snapshot-mem]\n"
		"  --host-mem-dir DIR    the same, in DIR (0700)\n"
		"  --host-mem-size BYTES bound on the tier's files, K/M/G suffixes; the least recently\n"
		"                        used snapshots are evicted [2G]\n"
		"  --key-check           also check each chunk's key against its plaintext (with the\n"
		"                        deployment salt), as blockd does; costs a SHA-256 per chunk\n"
		"  -v                    log progress\n"
		"A JSON summary goes to stdout when the VMM hangs up.\n");
}

int cmd_snapshot_serve(int argc, char **argv)
{
	const char *ref = NULL, *socket_path = NULL, *vmstate_out = NULL, *store_uri = NULL, *l1_dir = NULL;
	const char *host_mem_dir = NULL;
	bool host_mem = false, key_check = false;
	uint64_t l1_size = 0;
	struct str_list l2 = {0};
	struct snapshot_serve_options so = {.prefetch = true};
	int verbose = 0;
	for (int i = 0; i < argc; i++) {
		const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
		if (strcmp(a, "-h") == 0 || strcmp(a, "--help") == 0) {
			snapshot_serve_usage(stdout);
			str_list_clear(&l2);
			return 0;
		} else if (strcmp(a, "--no-prefetch") == 0) {
			so.prefetch = false;
		} else if (strcmp(a, "--record") == 0) {
			so.record = true;
		} else if (strcmp(a, "--host-mem") == 0) {
			host_mem = true;
		} else if (strcmp(a, "--key-check") == 0) {
			key_check = true;
		} else if (strcmp(a, "-v") == 0 || strcmp(a, "--verbose") == 0) {
			verbose++;
		} else if (a[0] == '-' && v) {
			i++;
			if (strcmp(a, "--socket") == 0)
				socket_path = v;
			else if (strcmp(a, "--vmstate-out") == 0)
				vmstate_out = v;
			else if (strcmp(a, "--store") == 0)
				store_uri = v;
			else if (strcmp(a, "--l1-dir") == 0)
				l1_dir = v;
			else if (strcmp(a, "--l1-size") == 0 && parse_size(v, &l1_size) == 0)
				;
			else if (strcmp(a, "--host-mem-dir") == 0)
				host_mem_dir = v, host_mem = true;
			else if (strcmp(a, "--host-mem-size") == 0 && parse_size(v, &so.host_mem.max_bytes) == 0 &&
				 so.host_mem.max_bytes > 0)
				host_mem = true;
			else if (strcmp(a, "--l2") == 0) {
				char *dup = strdup(v), *save = NULL;
				for (char *t = dup ? strtok_r(dup, ",", &save) : NULL; t; t = strtok_r(NULL, ",", &save))
					str_list_add(&l2, t);
				free(dup);
			} else {
				fprintf(stderr, "kindling snapshot-serve: bad option %s %s\n", a, v);
				str_list_clear(&l2);
				return 2;
			}
		} else if (a[0] == '-') {
			fprintf(stderr, "kindling snapshot-serve: unknown option %s (or it needs a value)\n", a);
			str_list_clear(&l2);
			return 2;
		} else if (!ref) {
			ref = a;
		} else {
			fprintf(stderr, "kindling snapshot-serve: one snapshot only (got %s and %s)\n", ref, a);
			str_list_clear(&l2);
			return 2;
		}
	}
	if (!ref || !socket_path || !vmstate_out) {
		fprintf(stderr, "kindling snapshot-serve: needs a snapshot (NAME[:TAG]), --socket PATH and "
				"--vmstate-out FILE\n");
		snapshot_serve_usage(stderr);
		str_list_clear(&l2);
		return 2;
	}
	so.socket_path = socket_path;
	so.vmstate_out = vmstate_out;
	log_set_level(verbose > 1 ? LOG_DEBUG : verbose ? LOG_INFO : LOG_WARN);

	struct sigaction sa = {.sa_handler = on_stop_signal};
	sigemptyset(&sa.sa_mask);
	sigaction(SIGINT, &sa, NULL);
	sigaction(SIGTERM, &sa, NULL);
	signal(SIGPIPE, SIG_IGN);
	/* Every chunk fetched passes through 512 KiB buffers (the ciphertext,
	 * the plaintext, L1's write): keep them on the heap and keep the heap's
	 * freed pages, so each fetch reuses memory already mapped instead of
	 * glibc mapping, faulting in and unmapping fresh pages for every one. */
	mallopt(M_MMAP_THRESHOLD, 4 * CHUNK_SIZE);
	mallopt(M_TRIM_THRESHOLD, 64 * CHUNK_SIZE);

	struct kindling_env env;
	struct store *store = NULL;
	struct cache *cache = NULL;
	struct snapshot_server *srv = NULL;
	struct manifest m = {0};
	char digest[65];
	char *store_s = NULL, *l1_s = NULL, *host_mem_s = NULL;
	int r = kindling_env_load(&env, 0);
	if (r < 0) {
		str_list_clear(&l2);
		return 1;
	}
	store_s = store_uri ? strdup(store_uri) : strdup(env.default_store_uri);
	l1_s = l1_dir ? strdup(l1_dir) : kindling_env_path(&env, "l1");
	struct store_options sopt = {.must_exist = true};
	if (host_mem)
		host_mem_s = host_mem_dir ? strdup(host_mem_dir) : snapshot_hostmem_default_dir();
	so.host_mem.dir = host_mem_s;
	if (!store_s || !l1_s || (host_mem && !host_mem_s))
		r = -ENOMEM;
	if (r == 0)
		r = store_open(store_s, &sopt, &store);
	if (r == 0)
		r = snapshot_load(store, ref, env.tenant_key, digest, &m);
	if (r == 0) {
		struct cache_config cc = {
			.origin_uri = store_s,
			.origin_options = &sopt,
			.l1_dir = l1_s,
			.l1_max_bytes = l1_size,
			.l2_nodes = (const char *const *)l2.items,
			.n_l2_nodes = l2.n,
			/* The name check is always made; the key check on request. */
			.salt = key_check ? env.salt : NULL,
			.salt_len = key_check ? env.salt_len : 0,
		};
		r = cache_new(&cc, &cache);
	}
	if (r == 0)
		r = snapshot_server_new(cache, store, &m, digest, ref, &so, &srv);
	if (r == 0) {
		fprintf(stderr, "kindling snapshot-serve: %s: vmstate in %s; waiting for the VMM on %s\n", ref,
			vmstate_out, socket_path);
		r = snapshot_server_run(srv, &snapshot_serve_cancel);
		char *report = snapshot_server_report(srv);
		if (report)
			printf("%s\n", report);
		free(report);
	}
	if (r < 0 && !log_errors_logged())
		fprintf(stderr, "kindling snapshot-serve: %s: %s\n", ref, strerror(-r));
	snapshot_server_free(srv);
	cache_free(cache);
	manifest_cleanup(&m);
	store_free(store);
	kindling_env_cleanup(&env);
	free(store_s);
	free(l1_s);
	free(host_mem_s);
	str_list_clear(&l2);
	return r < 0 ? 1 : 0;
}
