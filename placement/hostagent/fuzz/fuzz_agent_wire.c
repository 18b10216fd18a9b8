/* Fuzz target for what a frontend (or anything that reaches the agent's
 * port) sends the host agent's HTTP API (placement/hostagent/wire.c): the
 * function spec of POST /v1/invoke's Kindling-Function header, the bodies
 * of POST /v1/provision, /v1/drain and /v1/snapshot, and what a client reads
 * from the agent's answers: the JSON strings of its headers, the snapshot's
 * answer and GET /v1/info.  The HTTP framing is libmicrohttpd's.
 *
 * Input: byte 0 picks the parser (modulo 7), the rest is its input. */
/* ctest-labels: no-tsan (single-threaded parsers: nothing for ThreadSanitizer to check) */
#include "placement/hostagent/internal.h"

#include <jansson.h>
#include <stdlib.h>
#include <string.h>

#include "tests/fuzz_target.h"

/* Every parsed function must pass the checks its fields promise, and
 * encode to JSON that parses back to the same function. */
static void check_function(const struct hostagent_function *f)
{
	MUST(ha_wire_name_ok(f->name));
	MUST(is_sha256_hex(f->image_digest));
	MUST(f->memory_mb >= 128 && f->memory_mb <= 10240 && f->timeout_s >= 1 && f->timeout_s <= 900);
	char *j = ha_wire_function_json(f);
	MUST(j != NULL);
	MUST(!strchr(j, '\n') && !strchr(j, '\r'));
	struct ha_wire_function w;
	char err[256];
	MUST(ha_wire_function_parse(j, &w, err, sizeof(err)) == 0);
	MUST(strcmp(w.f.name, f->name) == 0 && strcmp(w.f.version, f->version) == 0);
	MUST(w.f.memory_mb == f->memory_mb && w.f.mode == f->mode);
	MUST(!f->snapshot == !w.f.snapshot && (!f->snapshot || strcmp(f->snapshot, w.f.snapshot) == 0));
	MUST(!f->snapshot || ha_wire_store_name_ok(f->snapshot));
	ha_wire_function_cleanup(&w);
	free(j);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	if (size == 0)
		return 0;
	const uint8_t *p = data + 1;
	size_t n = size - 1;
	char *s = malloc(n + 1);
	MUST(s != NULL);
	memcpy(s, p, n);
	s[n] = '\0';
	char err[256];
	switch (data[0] % 7) {
	case 0: {
		struct ha_wire_function w;
		if (ha_wire_function_parse(s, &w, err, sizeof(err)) == 0)
			check_function(&w.f);
		else
			MUST(err[0] != '\0');
		ha_wire_function_cleanup(&w);
		break;
	}
	case 1: {
		struct ha_wire_function w;
		unsigned k = 0;
		if (ha_wire_provision_parse(p, n, &w, &k, err, sizeof(err)) == 0) {
			check_function(&w.f);
			MUST(k <= 10000);
		}
		ha_wire_function_cleanup(&w);
		break;
	}
	case 2: {
		void *root = NULL;
		const char *name = NULL, *version = NULL, *keep = NULL;
		if (ha_wire_drain_parse(p, n, &root, &name, &version, &keep, err, sizeof(err)) == 0)
			MUST(ha_wire_name_ok(name));
		json_decref(root);
		break;
	}
	case 4: {
		struct ha_wire_function w;
		const char *name = NULL;
		if (ha_wire_snapshot_parse(p, n, &w, &name, err, sizeof(err)) == 0) {
			check_function(&w.f);
			MUST(ha_wire_store_name_ok(name) && !w.f.snapshot && w.f.mode == HOSTAGENT_MODE_RUNTIME_API);
		} else {
			MUST(err[0] != '\0');
		}
		ha_wire_function_cleanup(&w);
		break;
	}
	case 5: {
		char digest[65];
		if (ha_wire_snapshot_answer_parse(p, n, digest, err, sizeof(err)) == 0)
			MUST(is_sha256_hex(digest));
		break;
	}
	case 6: {
		bool snap = true;
		char why[128];
		if (ha_wire_info_parse(p, n, &snap, why, sizeof(why), err, sizeof(err)) == 0)
			MUST(snap || why[0] != '\0');
		else
			MUST(!snap);
		break;
	}
	default:
		free(ha_wire_json_string(s));
		(void)ha_wire_errno(s);
		break;
	}
	free(s);
	return 0;
}
