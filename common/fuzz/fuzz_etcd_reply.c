/* Fuzz target for the etcd range reply parser (common/etcd.c,
 * etcd_parse_range_reply): the JSON an etcd member's gateway sends for
 * /v3/kv/range, which a client must not trust.
 *
 * Input: the reply body as received.  Properties checked:
 *   - the parser returns 0 or -EPROTO (or -ENOMEM), never anything else, and
 *     leaves a zeroed result when it fails;
 *   - on success every key is a non-empty C string, every value has a NUL
 *     after its length, and no revision is negative;
 *   - the result, written back as a reply in the gateway's own form (base64
 *     by OpenSSL, an encoder independent of the parser's decoder, int64s as
 *     strings), parses to the same keys, values and numbers.
 * Seeds: real replies of etcd 3.4 (a range with two keys, one cut short by
 * a limit, one key under a lease, nothing found, an error body) and hand-made
 * bad ones (numbers where strings are usual, a revision past int64, bad
 * base64, a NUL in a key, no header, wrong types).
 */
#include "common/common.h"
#include "common/etcd.h"
#include "tests/fuzz_target.h"

#include <errno.h>
#include <inttypes.h>
#include <openssl/evp.h>
#include <string.h>

static bool all_zero(const struct etcd_kvs *k) { return !k->kvs && !k->n && !k->revision && !k->more; }

/* Base64 of |<p, n>| as a JSON string literal, appended at |*o|. */
static void put_b64(char **o, const uint8_t *p, size_t n)
{
	*(*o)++ = '"';
	*o += EVP_EncodeBlock((unsigned char *)*o, p, (int)n);
	*(*o)++ = '"';
}

/* |k| written back as the gateway would: malloc'd, NUL-terminated. */
static char *write_back(const struct etcd_kvs *k)
{
	size_t cap = 256;
	for (size_t i = 0; i < k->n; i++)
		cap += 256 + (strlen(k->kvs[i].key) + k->kvs[i].value_len) / 3 * 4 + 8;
	char *buf = malloc(cap), *o = buf;
	if (!buf)
		return NULL;
	o += sprintf(o, "{\"header\":{\"revision\":\"%" PRId64 "\"},\"kvs\":[", k->revision);
	for (size_t i = 0; i < k->n; i++) {
		const struct etcd_kv *kv = &k->kvs[i];
		o += sprintf(o, "%s{\"key\":", i ? "," : "");
		put_b64(&o, (const uint8_t *)kv->key, strlen(kv->key));
		o += sprintf(o, ",\"value\":");
		put_b64(&o, kv->value, kv->value_len);
		o += sprintf(o,
			     ",\"create_revision\":\"%" PRId64 "\",\"mod_revision\":\"%" PRId64
			     "\",\"version\":\"%" PRId64 "\",\"lease\":\"%" PRId64 "\"}",
			     kv->create_revision, kv->mod_revision, kv->version, kv->lease);
	}
	sprintf(o, "],\"more\":%s}", k->more ? "true" : "false");
	return buf;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct etcd_kvs k;
	int r = etcd_parse_range_reply((const char *)data, size, &k);
	MUST(r == 0 || r == -EPROTO || r == -ENOMEM);
	if (r < 0) {
		MUST(all_zero(&k));
		return 0;
	}
	MUST(k.revision >= 0 && (k.n == 0) == (k.kvs == NULL));
	for (size_t i = 0; i < k.n; i++) {
		const struct etcd_kv *kv = &k.kvs[i];
		MUST(kv->key && kv->key[0] && kv->value && kv->value[kv->value_len] == 0);
		MUST(kv->create_revision >= 0 && kv->mod_revision >= 0 && kv->version >= 0);
	}
	char *again = write_back(&k);
	if (again) {
		struct etcd_kvs k2;
		int r2 = etcd_parse_range_reply(again, strlen(again), &k2);
		MUST(r2 == 0 || r2 == -ENOMEM);
		if (r2 == 0) {
			MUST(k2.n == k.n && k2.revision == k.revision && k2.more == k.more);
			for (size_t i = 0; i < k.n; i++) {
				const struct etcd_kv *a = &k.kvs[i], *b = &k2.kvs[i];
				MUST(!strcmp(a->key, b->key) && a->value_len == b->value_len &&
				     !memcmp(a->value, b->value, a->value_len));
				MUST(a->create_revision == b->create_revision && a->mod_revision == b->mod_revision &&
				     a->version == b->version && a->lease == b->lease);
			}
			etcd_kvs_cleanup(&k2);
		}
		free(again);
	}
	etcd_kvs_cleanup(&k);
	return 0;
}
