/* The placement service (placement/service.c) in-process against a real
 * three-member etcd (Debian's etcd-server) on loopback: 503 with no host
 * registered; a malformed registration skipped; placement with count > 1
 * and exclusions; reservations in kindling/load/HOST counting as used
 * memory until no host has room; the burst bucket's 429; a host that filled
 * up behind a stale cache is passed over; 503 when every etcd member is
 * gone.
 *
 * Two services and eight threads racing for the same hosts: conflicting
 * reservations retried, no host reserved past its memory.  With etcd
 * stopped (SIGSTOP) under one request, the other, waiting its turn longer
 * than max_wait_ms, is answered Overloaded.
 *
 * Ports: etcd clients 25711-25713, peers 25721-25723 (outside
 * tests/tools/etcd.sh's 24100-24900). */
#include "common/common.h"
#include "common/etcd.h"
#include "common/http_server.h"
#include "image/image.h"
#include "placement/placement.h"
#include "tests/check.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <jansson.h>
#include <signal.h>
#include <sys/prctl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define MEMBERS 3
#define CLIENT_PORT 25711
#define PEER_PORT 25721

static pid_t pids[MEMBERS];
static char dir[] = "/tmp/kindling-placement-svc-XXXXXX";

static void start_etcd(void)
{
	char cluster[512] = "";
	for (int i = 0; i < MEMBERS; i++)
		snprintf(cluster + strlen(cluster), sizeof(cluster) - strlen(cluster), "%sm%d=http://127.0.0.1:%d",
			 i ? "," : "", i, PEER_PORT + i);
	for (int i = 0; i < MEMBERS; i++) {
		char name[16], data[256], client[64], peer[64], log[256];
		snprintf(name, sizeof(name), "m%d", i);
		snprintf(data, sizeof(data), "%s/m%d", dir, i);
		snprintf(client, sizeof(client), "http://127.0.0.1:%d", CLIENT_PORT + i);
		snprintf(peer, sizeof(peer), "http://127.0.0.1:%d", PEER_PORT + i);
		snprintf(log, sizeof(log), "%s/m%d.log", dir, i);
		pid_t p = fork();
		if (p == 0) {
			prctl(PR_SET_PDEATHSIG, SIGKILL); /* never outlive the test */
			int fd = open(log, O_WRONLY | O_CREAT | O_TRUNC, 0644);
			if (fd >= 0) {
				dup2(fd, 1);
				dup2(fd, 2);
			}
			execlp("etcd", "etcd", "--name", name, "--data-dir", data, "--listen-client-urls", client,
			       "--advertise-client-urls", client, "--listen-peer-urls", peer,
			       "--initial-advertise-peer-urls", peer, "--initial-cluster", cluster,
			       "--initial-cluster-state", "new", "--initial-cluster-token", "kindling-placement-test",
			       (char *)NULL);
			_exit(127);
		}
		pids[i] = p;
	}
}

static void stop_etcd(void)
{
	for (int i = 0; i < MEMBERS; i++)
		if (pids[i] > 0) {
			kill(pids[i], SIGKILL);
			waitpid(pids[i], NULL, 0);
			pids[i] = 0;
		}
}

struct answer {
	unsigned status;
	json_t *json;
};

/* One request through |s|: placement_service_handle's result in |*rc|, the
 * status and the body's JSON (NULL if none) in the answer.  No CHECK, so
 * threads may call it: the check counters are not thread-safe. */
static struct answer exchange(struct placement_service *s, const char *method, const char *path, const char *body,
			      int *rc)
{
	struct http_request req = { .method = method, .version = "HTTP/1.1", .raw_path = path, .path = path,
				    .query = "", .body = (const uint8_t *)(body ? body : ""),
				    .body_len = body ? strlen(body) : 0, .peer = "127.0.0.1:1" };
	req.body_total = req.body_len;
	struct http_response resp = { .status = 200 };
	struct answer a = { 0 };
	*rc = placement_service_handle(s, &req, &resp);
	a.status = resp.status;
	json_error_t err;
	a.json = resp.body ? json_loadb((const char *)resp.body, resp.body_len, 0, &err) : NULL;
	if (*rc == 0 && !a.json)
		fprintf(stderr, "%s %s: %u, body not JSON: %.*s\n", method, path, resp.status, (int)resp.body_len,
			resp.body ? (const char *)resp.body : "");
	for (size_t i = 0; i < resp.n_headers; i++) {
		free((char *)resp.headers[i].name);
		free((char *)resp.headers[i].value);
	}
	free(resp.headers);
	free(resp.body);
	return a;
}

static struct answer call(struct placement_service *s, const char *method, const char *path, const char *body)
{
	int rc;
	struct answer a = exchange(s, method, path, body, &rc);
	CHECK(rc == 0);
	return a;
}

/* Concurrent placements from two services: each thread places until it
 * gets no 200, counting them. */
struct racer {
	struct placement_service *s;
	unsigned ok, other;
};

static void *race(void *arg)
{
	struct racer *r = arg;
	for (int i = 0; i < 12; i++) {
		int rc;
		struct answer a = exchange(r->s, "POST", "/v1/place", "{\"function\":\"race\",\"memory_mb\":512}", &rc);
		if (rc == 0 && a.status == 200)
			r->ok++;
		else
			r->other++;
		json_decref(a.json);
	}
	return NULL;
}

/* One place request in a thread, for the Overloaded check. */
struct one_place {
	struct placement_service *s;
	struct answer a;
};

static void *place_once(void *arg)
{
	struct one_place *p = arg;
	int rc;
	p->a = exchange(p->s, "POST", "/v1/place", "{\"function\":\"w\",\"memory_mb\":128}", &rc);
	if (rc != 0)
		p->a.status = 0;
	return NULL;
}

static const char *jstr(json_t *o, const char *k) { return json_string_value(json_object_get(o, k)); }

static void put_host(struct etcd *e, const char *id, unsigned mem)
{
	char key[64], val[512];
	snprintf(key, sizeof(key), "kindling/hosts/%s", id);
	int n = snprintf(val, sizeof(val),
			 "{\"id\":\"%s\",\"url\":\"http://127.0.0.1:1/%s\",\"cell\":\"cell-0\",\"memory_total_mb\":%u,"
			 "\"memory_used_mb\":0,\"slots_total\":8,\"slots_used\":0,\"warm\":[],\"started\":1,"
			 "\"updated\":2}",
			 id, id, mem);
	CHECK(etcd_put(e, key, val, (size_t)n, 0, NULL) == 0);
}

int main(void)
{
	if (!mkdtemp(dir)) {
		perror("mkdtemp");
		return 1;
	}
	start_etcd();
	char endpoints[256];
	snprintf(endpoints, sizeof(endpoints), "http://127.0.0.1:%d,http://127.0.0.1:%d,http://127.0.0.1:%d",
		 CLIENT_PORT, CLIENT_PORT + 1, CLIENT_PORT + 2);
	struct etcd *e = NULL;
	struct etcd_config ec = { .endpoints = endpoints };
	CHECK(etcd_new(&ec, &e) == 0);
	/* Wait (bounded, generously) for the cluster to take a write. */
	int r = -1;
	for (int i = 0; i < 600 && r != 0; i++) {
		r = etcd_put(e, "kindling/test", "1", 1, 0, NULL);
		if (r != 0)
			usleep(100000);
	}
	CHECK(r == 0);
	if (r != 0) {
		fprintf(stderr, "etcd did not come up: see %s/m*.log\n", dir);
		stop_etcd();
		return 1;
	}

	struct placement_service_config cfg = { .etcd_endpoints = endpoints,
						.hosts_cache_ms = 1,
						.burst_initial = 10,
						.burst_per_minute = 0.001,
						.reservation_ttl_s = 3600,
						.seed = 42 };
	placement_config_init(&cfg.placement);
	struct placement_service *s = NULL;
	CHECK(placement_service_new(&cfg, &s) == 0);

	struct answer a = call(s, "GET", "/healthz", NULL);
	CHECK(a.status == 200);
	json_decref(a.json);
	a = call(s, "GET", "/nowhere", NULL);
	CHECK(a.status == 404);
	json_decref(a.json);
	a = call(s, "GET", "/v1/place", NULL);
	CHECK(a.status == 405);
	json_decref(a.json);
	a = call(s, "POST", "/v1/place", "{\"function\":\"f\"}");
	CHECK(a.status == 400 && jstr(a.json, "message") && strstr(jstr(a.json, "message"), "memory_mb"));
	json_decref(a.json);

	/* No host registered: 503. */
	a = call(s, "POST", "/v1/place", "{\"function\":\"f\",\"memory_mb\":1024}");
	CHECK(a.status == 503 && jstr(a.json, "message") && strstr(jstr(a.json, "message"), "no host"));
	json_decref(a.json);

	/* Four hosts of 2 GiB, and a malformed registration that is skipped. */
	const char *ids[] = { "h0", "h1", "h2", "h3" };
	for (int i = 0; i < 4; i++)
		put_host(e, ids[i], 2048);
	CHECK(etcd_put(e, "kindling/hosts/bad", "{\"id\":\"bad\"}", 12, 0, NULL) == 0);
	a = call(s, "GET", "/v1/hosts", NULL);
	CHECK(a.status == 200 && json_array_size(json_object_get(a.json, "hosts")) == 4);
	json_decref(a.json);

	/* count 2: two placements (tokens: 2). */
	a = call(s, "POST", "/v1/place", "{\"function\":\"f\",\"memory_mb\":1024,\"count\":2}");
	CHECK(a.status == 200 && json_is_array(a.json) && json_array_size(a.json) == 2);
	for (size_t i = 0; i < json_array_size(a.json); i++) {
		json_t *p = json_array_get(a.json, i);
		const char *h = jstr(p, "host"), *rid = jstr(p, "reservation"), *url = jstr(p, "url");
		CHECK(h && rid && url && strstr(url, h));
		/* The reservation is in etcd. */
		char key[64];
		snprintf(key, sizeof(key), "kindling/load/%s", h ? h : "?");
		struct etcd_kv kv = { 0 };
		CHECK(etcd_get(e, key, &kv) == 0);
		CHECK(kv.value && rid && strstr((const char *)kv.value, rid));
		etcd_kv_cleanup(&kv);
	}
	json_decref(a.json);
	/* Excluding three hosts: the fourth (tokens: 3). */
	a = call(s, "POST", "/v1/place", "{\"function\":\"g\",\"memory_mb\":1024,\"exclude\":[\"h0\",\"h1\",\"h2\"]}");
	CHECK(a.status == 200 && jstr(a.json, "host") && strcmp(jstr(a.json, "host"), "h3") == 0);
	json_decref(a.json);
	/* Five more fill every host's 2048 MB with reservations (tokens: 8). */
	for (int i = 0; i < 5; i++) {
		a = call(s, "POST", "/v1/place", "{\"function\":\"g\",\"memory_mb\":1024}");
		CHECK(a.status == 200);
		json_decref(a.json);
	}
	a = call(s, "GET", "/v1/hosts", NULL);
	json_t *hosts = json_object_get(a.json, "hosts");
	for (size_t i = 0; i < json_array_size(hosts); i++)
		CHECK(json_integer_value(json_object_get(json_array_get(hosts, i), "memory_pending_mb")) == 2048);
	json_decref(a.json);
	/* No room anywhere: 503 (tokens: 9). */
	a = call(s, "POST", "/v1/place", "{\"function\":\"g\",\"memory_mb\":1024}");
	CHECK(a.status == 503 && jstr(a.json, "message") && strstr(jstr(a.json, "message"), "room") &&
	      jstr(a.json, "reason") && strcmp(jstr(a.json, "reason"), "NoCapacity") == 0);
	json_decref(a.json);

	/* The burst bucket: one token left (tokens: 10), then 429. */
	a = call(s, "POST", "/v1/place", "{\"function\":\"g\",\"memory_mb\":1024}");
	CHECK(a.status == 503);
	json_decref(a.json);
	a = call(s, "POST", "/v1/place", "{\"function\":\"g\",\"memory_mb\":1024}");
	CHECK(a.status == 429 && jstr(a.json, "reason") && jstr(a.json, "message"));
	json_decref(a.json);
	CHECK(etcd_delete(e, "kindling/burst", false, NULL) == 0);

	/* A new host, filled behind a service that does not re-read the hosts:
	 * it is chosen, found full on reserving, and passed over. */
	put_host(e, "h4", 4096);
	put_host(e, "h5", 4096);
	struct placement_service_config cfg2 = cfg;
	cfg2.hosts_cache_ms = 3600 * 1000;
	cfg2.burst_initial = 1000;
	struct placement_service *s2 = NULL;
	CHECK(placement_service_new(&cfg2, &s2) == 0);
	a = call(s2, "GET", "/v1/hosts", NULL); /* caches h0..h5 */
	CHECK(json_array_size(json_object_get(a.json, "hosts")) == 6);
	json_decref(a.json);
	const char *full = "{\"reservations\":[{\"id\":\"x\",\"function\":\"o\",\"memory_mb\":4096,\"until\":9999999999}]}";
	CHECK(etcd_put(e, "kindling/load/h4", full, strlen(full), 0, NULL) == 0);
	for (int i = 0; i < 3; i++) {
		a = call(s2, "POST", "/v1/place", "{\"function\":\"k\",\"memory_mb\":2048}");
		if (i < 2)
			CHECK(a.status == 200 && jstr(a.json, "host") && strcmp(jstr(a.json, "host"), "h5") == 0);
		else
			CHECK(a.status == 503);
		json_decref(a.json);
	}
	placement_service_free(s2);


	/* Code locality through a real store: an image of 20 chunks whose
	 * manifest is in a file store, and two fresh hosts of which one holds
	 * the chunks in its L1 (by its Bloom summary): every placement of
	 * that image goes there while it has room. */
	{
		char store_dir[256];
		snprintf(store_dir, sizeof(store_dir), "%s/store", dir);
		struct store *st = NULL;
		CHECK(store_open(store_dir, NULL, &st) == 0);
		struct manifest m;
		memset(&m, 0, sizeof(m));
		strcpy(m.source_manifest_digest, "sha256:0000000000000000000000000000000000000000000000000000000000000001");
		strcpy(m.source_config_digest, "sha256:0000000000000000000000000000000000000000000000000000000000000002");
		m.image_size = 20ull * CHUNK_SIZE;
		m.chunk_size = CHUNK_SIZE;
		m.metadata_offset = 19ull * CHUNK_SIZE;
		m.n_chunks = 20;
		m.chunks = calloc(20, sizeof(*m.chunks));
		struct placement_bloom warm_l1;
		CHECK(placement_bloom_init(&warm_l1, 1 << 12, 0) == 0);
		for (unsigned i = 0; i < 20; i++) {
			uint8_t d[32];
			char seed[16];
			snprintf(seed, sizeof(seed), "chunk-%u", i);
			sha256_buf(seed, strlen(seed), d);
			m.chunks[i].index = i;
			hex_encode(d, 32, m.chunks[i].name);
			placement_bloom_add_digest(&warm_l1, d);
		}
		uint8_t tk[32], *enc = NULL;
		size_t enc_len = 0;
		memset(tk, 9, sizeof(tk));
		CHECK(manifest_encode(&m, tk, &enc, &enc_len) == 0);
		uint8_t md[32];
		char digest[65], key[128];
		sha256_buf(enc, enc_len, md);
		hex_encode(md, 32, digest);
		snprintf(key, sizeof(key), "manifests/%s", digest);
		CHECK(store_put(st, key, enc, enc_len) == 0);
		free(enc);
		manifest_cleanup(&m);
		store_free(st);
		char *bloom = placement_bloom_encode(&warm_l1);
		placement_bloom_cleanup(&warm_l1);
		const char *lids[] = { "l-cold", "l-warm" };
		for (int i = 0; i < 2; i++) {
			char hkey[64], val[8192];
			snprintf(hkey, sizeof(hkey), "kindling/hosts/%s", lids[i]);
			int n = snprintf(val, sizeof(val),
					 "{\"id\":\"%s\",\"url\":\"http://127.0.0.1:1/%s\",\"memory_total_mb\":4096,"
					 "\"memory_used_mb\":0,\"slots_total\":8,\"slots_used\":0%s%s%s}",
					 lids[i], lids[i], i ? ",\"l1\":\"" : "", i ? bloom : "", i ? "\"" : "");
			CHECK(n > 0 && (size_t)n < sizeof(val));
			CHECK(etcd_put(e, hkey, val, (size_t)n, 0, NULL) == 0);
		}
		free(bloom);
		struct placement_service_config cl = cfg;
		cl.store_uri = store_dir;
		cl.burst_initial = 1000;
		struct placement_service *sl = NULL;
		CHECK(placement_service_new(&cl, &sl) == 0);
		char body[256];
		snprintf(body, sizeof(body), "{\"function\":\"loc\",\"memory_mb\":512,\"image\":\"sha256:%s\"}", digest);
		/* With the default weights the L1 outweighs the load of the first
		 * three 512 MB sandboxes (score 3.75, 2.5, 0.96 against -0.24 on
		 * the empty host, gaps beyond the draw's epsilon); by the fourth
		 * the load term sends it to the other host. */
		const char *where[4] = { "l-warm", "l-warm", "l-warm", "l-cold" };
		for (int i = 0; i < 4; i++) {
			a = call(sl, "POST", "/v1/place", body);
			CHECK(a.status == 200 && jstr(a.json, "host") && strcmp(jstr(a.json, "host"), where[i]) == 0);
			json_decref(a.json);
		}
		placement_service_free(sl);
		CHECK(etcd_delete(e, "kindling/burst", false, NULL) == 0);
		for (int i = 0; i < 2; i++) {
			char hkey[64];
			snprintf(hkey, sizeof(hkey), "kindling/hosts/%s", lids[i]);
			CHECK(etcd_delete(e, hkey, false, NULL) == 0);
		}
	}

	/* Two services, four threads each, racing for four fresh hosts of
	 * 4096 MB (32 sandboxes of 512 MB in all): conflicting reservations
	 * are retried, and no host is ever reserved past its memory. */
	const char *cids[] = { "c0", "c1", "c2", "c3" };
	for (int i = 0; i < 4; i++)
		put_host(e, cids[i], 4096);
	struct placement_service_config cfg3 = cfg;
	cfg3.burst_initial = 100000;
	cfg3.burst_per_minute = 100000;
	struct placement_service *sa = NULL, *sb = NULL;
	CHECK(placement_service_new(&cfg3, &sa) == 0);
	cfg3.seed = 7;
	CHECK(placement_service_new(&cfg3, &sb) == 0);
	struct racer racers[8];
	pthread_t th[8];
	for (int i = 0; i < 8; i++) {
		racers[i] = (struct racer){ .s = i % 2 ? sb : sa };
		CHECK(pthread_create(&th[i], NULL, race, &racers[i]) == 0);
	}
	unsigned placed = 0;
	for (int i = 0; i < 8; i++) {
		pthread_join(th[i], NULL);
		placed += racers[i].ok;
	}
	unsigned reserved = 0;
	for (int i = 0; i < 4; i++) {
		char key[64];
		snprintf(key, sizeof(key), "kindling/load/%s", cids[i]);
		struct etcd_kv kv = { 0 };
		CHECK(etcd_get(e, key, &kv) == 0);
		uint64_t mem = 0;
		uint32_t n = 0;
		CHECK(placement_load_parse(kv.value, kv.value_len, time(NULL), NULL, &mem, &n, NULL) == 0);
		CHECK(mem <= 4096 && mem == 512ull * n);
		reserved += n;
		etcd_kv_cleanup(&kv);
	}
	fprintf(stderr, "race: %u placed, %u reserved\n", placed, reserved);
	CHECK(placed == reserved);
	CHECK(placed >= 16 && placed <= 32);
	placement_service_free(sa);
	placement_service_free(sb);

	/* Every member stopped, not gone: one request sits in etcd calls until
	 * they time out, holding the service; the other waits its turn longer
	 * than max_wait_ms (1 ms) and is answered Overloaded at once, whichever
	 * of the two came first. */
	struct placement_service_config cfg4 = cfg;
	cfg4.max_wait_ms = 1;
	struct placement_service *sc = NULL;
	CHECK(placement_service_new(&cfg4, &sc) == 0);
	for (int i = 0; i < MEMBERS; i++)
		kill(pids[i], SIGSTOP);
	struct one_place op[2] = { { .s = sc }, { .s = sc } };
	pthread_t pt[2];
	for (int i = 0; i < 2; i++)
		CHECK(pthread_create(&pt[i], NULL, place_once, &op[i]) == 0);
	int overloaded = 0, etcd_down = 0;
	for (int i = 0; i < 2; i++) {
		pthread_join(pt[i], NULL);
		const char *reason = jstr(op[i].a.json, "reason"), *msg = jstr(op[i].a.json, "message");
		if (op[i].a.status == 503 && reason && !strcmp(reason, "Overloaded"))
			overloaded++;
		else if (op[i].a.status == 503 && !reason && msg && strstr(msg, "etcd"))
			etcd_down++;
		json_decref(op[i].a.json);
	}
	CHECK(overloaded == 1 && etcd_down == 1);
	for (int i = 0; i < MEMBERS; i++)
		kill(pids[i], SIGCONT);
	placement_service_free(sc);

	/* Every member gone: 503 naming etcd. */
	stop_etcd();
	a = call(s, "POST", "/v1/place", "{\"function\":\"g\",\"memory_mb\":128}");
	CHECK(a.status == 503 && jstr(a.json, "message") && strstr(jstr(a.json, "message"), "etcd"));
	json_decref(a.json);
	a = call(s, "GET", "/v1/hosts", NULL);
	CHECK(a.status == 503);
	json_decref(a.json);

	placement_service_free(s);
	etcd_free(e);
	char cmd[128];
	snprintf(cmd, sizeof(cmd), "rm -rf %s", dir);
	if (system(cmd) != 0)
		fprintf(stderr, "could not remove %s\n", dir);
	return check_report();
}
