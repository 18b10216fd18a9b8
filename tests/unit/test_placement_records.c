/* What the placement service parses (placement/records.c): place requests,
 * host registrations (a malformed one names its field), reservation lists
 * with expiry.
 *
 * ctest-labels: no-tsan (pure functions: nothing for ThreadSanitizer to check) */
#include "placement/placement.h"
#include "tests/check.h"

#include <errno.h>
#include <string.h>

static int place(const char *json, struct placement_place_request *r)
{
	const char *why;
	int rc = placement_place_request_parse(json, strlen(json), r, &why);
	CHECK(rc == 0 || why != NULL);
	return rc;
}

static int host(const char *json, struct placement_host_record *h, const char **why)
{
	return placement_host_record_parse(json, strlen(json), 2, h, why);
}

int main(void)
{
	struct placement_place_request r;
	CHECK(place("{\"function\":\"f-1\",\"memory_mb\":512}", &r) == 0);
	CHECK(strcmp(r.function, "f-1") == 0 && strcmp(r.version, "$LATEST") == 0 && r.memory_mb == 512 &&
	      r.count == 1 && r.n_exclude == 0 && r.image[0] == 0);
	placement_place_request_cleanup(&r);
	CHECK(place("{\"function\":\"f\",\"version\":\"3\",\"memory_mb\":128,\"count\":4,\"exclude\":[\"a\",\"b\"],"
		    "\"image\":\"sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef\"}",
		    &r) == 0);
	CHECK(r.count == 4 && r.n_exclude == 2 && strcmp(r.exclude[1], "b") == 0 && strcmp(r.version, "3") == 0);
	CHECK(strcmp(r.image, "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef") == 0);
	placement_place_request_cleanup(&r);
	const char *bad[] = {
		"", "[]", "{\"memory_mb\":1}", "{\"function\":\"a/b\",\"memory_mb\":1}",
		"{\"function\":\"f\"}", "{\"function\":\"f\",\"memory_mb\":0}", "{\"function\":\"f\",\"memory_mb\":1.5}",
		"{\"function\":\"f\",\"memory_mb\":1,\"count\":65}", "{\"function\":\"f\",\"memory_mb\":1,\"exclude\":[1]}",
		"{\"function\":\"f\",\"memory_mb\":1,\"image\":\"abc\"}", "{\"function\":\"f\",\"memory_mb\":1,\"version\":\"\"}",
		"{\"function\":\"f\",\"function\":\"g\",\"memory_mb\":1}",
	};
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		CHECK(place(bad[i], &r) == -EINVAL);
		CHECK(r.function == NULL);
		placement_place_request_cleanup(&r);
	}

	struct placement_host_record h;
	const char *why;
	CHECK(host("{\"id\":\"h1\",\"url\":\"http://127.0.0.1:9101\",\"cell\":\"cell-1\",\"memory_total_mb\":4096,"
		   "\"memory_used_mb\":512,\"slots_total\":32,\"slots_used\":3,\"warm\":[{\"function\":\"f\",\"version\":"
		   "\"$LATEST\",\"revision\":\"x\",\"image\":\"d\",\"idle\":1,\"busy\":2,\"provisioned\":0}],"
		   "\"l1\":\"64:2:1:AAAAAAAAAAA=\",\"l1_bytes\":5,\"started\":1,\"updated\":2}",
		   &h, &why) == 0);
	CHECK(strcmp(h.id, "h1") == 0 && h.cell == 1 && h.memory_total_mb == 4096 && h.memory_used_mb == 512);
	CHECK(h.slots_total == 32 && h.slots_used == 3 && h.n_warm == 1 && h.warm[0].idle == 1 && h.warm[0].busy == 2);
	CHECK(h.l1.map && h.l1.bits == 64 && h.l1.entries == 1);
	placement_host_record_cleanup(&h);
	/* No cell, no warm, no l1: cell 0, nothing known. */
	CHECK(host("{\"id\":\"h2\",\"url\":\"https://x\",\"memory_total_mb\":1,\"memory_used_mb\":0,\"slots_total\":1,"
		   "\"slots_used\":0}",
		   &h, &why) == 0);
	CHECK(h.cell == 0 && h.n_warm == 0 && h.l1.map == NULL);
	placement_host_record_cleanup(&h);
	const struct {
		const char *json, *field;
	} badh[] = {
		{ "{}", "\"id\"" },
		{ "{\"id\":\"h 1\",\"url\":\"http://x\"}", "\"id\"" },
		{ "{\"id\":\"h\",\"url\":\"x\"}", "\"url\"" },
		{ "{\"id\":\"h\",\"url\":\"http://x\",\"cell\":\"cell-2\"}", "\"cell\"" },
		{ "{\"id\":\"h\",\"url\":\"http://x\",\"memory_total_mb\":0,\"memory_used_mb\":0}", "\"memory_total_mb\"" },
		{ "{\"id\":\"h\",\"url\":\"http://x\",\"memory_total_mb\":1,\"memory_used_mb\":0,\"slots_total\":\"3\","
		  "\"slots_used\":0}",
		  "\"slots_total\"" },
		{ "{\"id\":\"h\",\"url\":\"http://x\",\"memory_total_mb\":1,\"memory_used_mb\":0,\"slots_total\":3,"
		  "\"slots_used\":0,\"warm\":[{\"function\":\"f\"}]}",
		  "\"warm\"" },
		{ "{\"id\":\"h\",\"url\":\"http://x\",\"memory_total_mb\":1,\"memory_used_mb\":0,\"slots_total\":3,"
		  "\"slots_used\":0,\"l1\":\"64:2:1:AA\"}",
		  "\"l1\"" },
	};
	for (size_t i = 0; i < sizeof(badh) / sizeof(badh[0]); i++) {
		why = NULL;
		CHECK(host(badh[i].json, &h, &why) == -EINVAL);
		CHECK(why && strstr(why, badh[i].field));
		CHECK(h.id == NULL);
		placement_host_record_cleanup(&h);
	}

	uint64_t mem;
	uint32_t cnt, fn;
	const char *load = "{\"reservations\":[{\"id\":\"a\",\"function\":\"f\",\"memory_mb\":128,\"until\":200},"
			   "{\"id\":\"b\",\"function\":\"g\",\"memory_mb\":256,\"until\":300},"
			   "{\"id\":\"c\",\"function\":\"f\",\"memory_mb\":512,\"until\":100}]}";
	CHECK(placement_load_parse(load, strlen(load), 150, "f", &mem, &cnt, &fn) == 0);
	CHECK(mem == 384 && cnt == 2 && fn == 1);
	CHECK(placement_load_parse(load, strlen(load), 300, "f", &mem, &cnt, &fn) == 0 && mem == 0 && cnt == 0);
	CHECK(placement_load_parse("{}", 2, 0, NULL, &mem, &cnt, NULL) == -EINVAL);
	CHECK(placement_load_parse("{\"reservations\":[{\"id\":\"a\"}]}", 29, 0, NULL, &mem, &cnt, NULL) == -EINVAL);
	return check_report();
}
