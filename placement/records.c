/* placement: the JSON the service parses (placement.h): POST /v1/place's
 * body, host registrations and reservation lists.  All of it is untrusted
 * (from clients, or from whatever is in etcd) and checked field by field. */
#include "placement/internal.h"
#include "placement/placement.h"

#include "common/common.h"

#include <errno.h>
#include <jansson.h>
#include <stdlib.h>
#include <string.h>

/* |s| is 1..|max| characters, each a letter, digit or one of |extra|. */
static bool token_ok(const char *s, size_t max, const char *extra)
{
	size_t n = strlen(s);
	if (n == 0 || n > max)
		return false;
	for (; *s; s++) {
		char c = *s;
		if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || strchr(extra, c)))
			return false;
	}
	return true;
}

/* An optional integer field |k| of |o| in |lo| .. |hi| into |*out|
 * (|*out| unchanged if absent).  False if present but not such an
 * integer, or absent while |required|. */
static bool get_int(json_t *o, const char *k, bool required, int64_t lo, int64_t hi, int64_t *out)
{
	json_t *v = json_object_get(o, k);
	if (!v)
		return !required;
	if (!json_is_integer(v))
		return false;
	json_int_t x = json_integer_value(v);
	if (x < lo || x > hi)
		return false;
	*out = x;
	return true;
}

static char *dup_or_fail(const char *s, int *rc)
{
	char *d = strdup(s);
	if (!d)
		*rc = -ENOMEM;
	return d;
}

void placement_place_request_cleanup(struct placement_place_request *r)
{
	free(r->function);
	free(r->version);
	for (size_t i = 0; i < r->n_exclude; i++)
		free(r->exclude[i]);
	free(r->exclude);
	memset(r, 0, sizeof(*r));
}

int placement_place_request_parse(const void *body, size_t len, struct placement_place_request *out,
				  const char **why)
{
	memset(out, 0, sizeof(*out));
	*why = NULL;
	json_error_t err;
	json_t *j = json_loadb(body, len, JSON_REJECT_DUPLICATES, &err);
	if (!j || !json_is_object(j)) {
		*why = "the body is not a JSON object";
		json_decref(j);
		return -EINVAL;
	}
	int rc = 0;
	const char *fn = json_string_value(json_object_get(j, "function"));
	json_t *ver = json_object_get(j, "version"), *img = json_object_get(j, "image"),
	       *ex = json_object_get(j, "exclude");
	int64_t mem = 0, count = 1;
	if (!fn || !token_ok(fn, 170, "-_.:")) {
		*why = "\"function\" must be a function name (1 to 170 letters, digits, '-', '_', '.', ':')";
	} else if (ver && (!json_is_string(ver) || !token_ok(json_string_value(ver), 128, "$-_."))) {
		*why = "\"version\" must be a version (\"$LATEST\", \"3\", an alias)";
	} else if (img && !json_is_string(img)) {
		*why = "\"image\" must be a manifest digest (64 hex digits, optionally after \"sha256:\")";
	} else if (!get_int(j, "memory_mb", true, 1, 1 << 20, &mem)) {
		*why = "\"memory_mb\" must be an integer 1 .. 1048576";
	} else if (!get_int(j, "count", false, 1, PLACEMENT_MAX_COUNT, &count)) {
		*why = "\"count\" must be an integer 1 .. 64";
	} else if (ex && (!json_is_array(ex) || json_array_size(ex) > PLACEMENT_MAX_EXCLUDE)) {
		*why = "\"exclude\" must be an array of at most 1024 host ids";
	}
	if (!*why && img) {
		const char *d = json_string_value(img);
		if (strncmp(d, "sha256:", 7) == 0)
			d += 7;
		if (!is_sha256_hex(d))
			*why = "\"image\" must be a manifest digest (64 hex digits, optionally after \"sha256:\")";
		else
			memcpy(out->image, d, 65);
	}
	if (!*why && ex) {
		size_t n = json_array_size(ex);
		out->exclude = calloc(n ? n : 1, sizeof(char *));
		if (!out->exclude)
			rc = -ENOMEM;
		for (size_t i = 0; i < n && !rc && !*why; i++) {
			const char *h = json_string_value(json_array_get(ex, i));
			if (!h || !*h || strlen(h) > 253)
				*why = "\"exclude\" must hold host ids (strings of 1 to 253 characters)";
			else if ((out->exclude[out->n_exclude] = dup_or_fail(h, &rc)))
				out->n_exclude++;
		}
	}
	if (!*why && !rc) {
		out->function = dup_or_fail(fn, &rc);
		out->version = dup_or_fail(ver ? json_string_value(ver) : "$LATEST", &rc);
		out->memory_mb = (uint64_t)mem;
		out->count = (unsigned)count;
	}
	json_decref(j);
	if (*why || rc) {
		placement_place_request_cleanup(out);
		return rc ? rc : -EINVAL;
	}
	return 0;
}

void placement_host_record_cleanup(struct placement_host_record *h)
{
	free(h->id);
	free(h->url);
	for (size_t i = 0; i < h->n_warm; i++) {
		free(h->warm[i].function);
		free(h->warm[i].version);
	}
	free(h->warm);
	placement_bloom_cleanup(&h->l1);
	memset(h, 0, sizeof(*h));
}

#define MAX_WARM 4096

int placement_host_record_parse(const void *json, size_t len, uint32_t cells, struct placement_host_record *out,
				const char **why)
{
	memset(out, 0, sizeof(*out));
	*why = NULL;
	json_error_t err;
	json_t *j = json_loadb(json, len, JSON_REJECT_DUPLICATES, &err);
	if (!j || !json_is_object(j)) {
		*why = "the registration is not a JSON object";
		json_decref(j);
		return -EINVAL;
	}
	int rc = 0;
	const char *id = json_string_value(json_object_get(j, "id"));
	const char *url = json_string_value(json_object_get(j, "url"));
	json_t *cell = json_object_get(j, "cell"), *warm = json_object_get(j, "warm"), *l1 = json_object_get(j, "l1");
	int64_t mt = 0, mu = 0, st = 0, su = 0;
	if (!id || !token_ok(id, 253, "-_.:"))
		*why = "\"id\" is missing or not a host id (letters, digits, '-', '_', '.', ':')";
	else if (!url || strlen(url) > 512 || (strncmp(url, "http://", 7) != 0 && strncmp(url, "https://", 8) != 0))
		*why = "\"url\" is missing or not an http(s) URL";
	else if (cell && (!json_is_string(cell) || placement_cell_parse(json_string_value(cell), cells, &out->cell) < 0))
		*why = "\"cell\" is not \"cell-N\" with N below the configured number of cells";
	else if (!get_int(j, "memory_total_mb", true, 1, INT64_C(1) << 40, &mt) ||
		 !get_int(j, "memory_used_mb", true, 0, INT64_C(1) << 40, &mu))
		*why = "\"memory_total_mb\" / \"memory_used_mb\" are missing or out of range";
	else if (!get_int(j, "slots_total", true, 1, 1 << 20, &st) || !get_int(j, "slots_used", true, 0, 1 << 20, &su))
		*why = "\"slots_total\" / \"slots_used\" are missing or out of range";
	else if (warm && (!json_is_array(warm) || json_array_size(warm) > MAX_WARM))
		*why = "\"warm\" is not an array (of at most 4096 entries)";
	else if (l1 && (!json_is_string(l1) || placement_bloom_decode(json_string_value(l1), &out->l1) < 0))
		*why = "\"l1\" is not a Bloom summary BITS:HASHES:ENTRIES:BASE64";
	if (!*why && warm) {
		size_t n = json_array_size(warm);
		out->warm = calloc(n ? n : 1, sizeof(*out->warm));
		if (!out->warm)
			rc = -ENOMEM;
		for (size_t i = 0; i < n && !rc && !*why; i++) {
			json_t *w = json_array_get(warm, i);
			const char *f = json_string_value(json_object_get(w, "function"));
			const char *v = json_string_value(json_object_get(w, "version"));
			int64_t idle = 0, busy = 0;
			if (!json_is_object(w) || !f || !*f || !v || !*v || !get_int(w, "idle", false, 0, 1 << 20, &idle) ||
			    !get_int(w, "busy", false, 0, 1 << 20, &busy)) {
				*why = "a \"warm\" entry lacks function/version or has a bad idle/busy count";
				break;
			}
			struct placement_host_warm *e = &out->warm[out->n_warm];
			e->function = dup_or_fail(f, &rc);
			e->version = dup_or_fail(v, &rc);
			e->idle = (uint32_t)idle;
			e->busy = (uint32_t)busy;
			out->n_warm++;
		}
	}
	if (!*why && !rc) {
		out->id = dup_or_fail(id, &rc);
		out->url = dup_or_fail(url, &rc);
		out->memory_total_mb = (uint64_t)mt;
		out->memory_used_mb = (uint64_t)mu;
		out->slots_total = (uint32_t)st;
		out->slots_used = (uint32_t)su;
	}
	json_decref(j);
	if (*why || rc) {
		placement_host_record_cleanup(out);
		return rc ? rc : -EINVAL;
	}
	return 0;
}

int placement_load_parse(const void *json, size_t len, int64_t now, const char *function, uint64_t *memory_mb,
			 uint32_t *count, uint32_t *fn_count)
{
	*memory_mb = 0;
	*count = 0;
	if (fn_count)
		*fn_count = 0;
	json_error_t err;
	json_t *j = json_loadb(json, len, 0, &err);
	json_t *a = json_object_get(j, "reservations");
	int rc = 0;
	if (!json_is_array(a)) {
		rc = -EINVAL;
		goto out;
	}
	for (size_t i = 0; i < json_array_size(a); i++) {
		json_t *r = json_array_get(a, i);
		const char *f = json_string_value(json_object_get(r, "function"));
		int64_t mem = -1, until = -1;
		if (!f || !json_is_string(json_object_get(r, "id")) || !get_int(r, "memory_mb", true, 0, 1 << 20, &mem) ||
		    !get_int(r, "until", true, 0, INT64_MAX, &until)) {
			rc = -EINVAL;
			goto out;
		}
		if (until <= now)
			continue;
		*memory_mb += (uint64_t)mem;
		(*count)++;
		if (fn_count && function && strcmp(f, function) == 0)
			(*fn_count)++;
	}
out:
	if (rc) {
		*memory_mb = 0;
		*count = 0;
		if (fn_count)
			*fn_count = 0;
	}
	json_decref(j);
	return rc;
}
