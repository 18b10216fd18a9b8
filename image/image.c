/* Naming images: NAME[:TAG] through refs/, or a manifest digest. */
#include "internal.h"
#include "common/bytes.h"

#include <ctype.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>

#define MAX_MANIFEST (256u << 20)

static bool valid_name_char(char ch)
{
	return (ch >= 'a' && ch <= 'z') || (ch >= '0' && ch <= '9') || ch == '.' || ch == '_' || ch == '-' || ch == '/';
}

int image_parse_name_tag(const char *s, char *out, size_t out_len)
{
	/* The tag is after the last ':' unless a '/' follows it (a registry port). */
	const char *colon = strrchr(s, ':');
	if (colon && strchr(colon, '/'))
		colon = NULL;
	size_t name_len = colon ? (size_t)(colon - s) : strlen(s);
	const char *tag = colon ? colon + 1 : "latest";
	if (name_len == 0 || name_len > 255 || s[0] == '/' || s[name_len - 1] == '/' || strstr(s, "//") ||
	    strstr(s, "..")) {
		log_err("image name \"%s\": expected NAME[:TAG] with NAME of lower-case letters, digits, '.', '_', '-' "
			"and '/'",
			s);
		return -EINVAL;
	}
	for (size_t i = 0; i < name_len; i++)
		if (!valid_name_char(s[i])) {
			log_err("image name \"%s\": character '%c' is not allowed in NAME", s, s[i]);
			return -EINVAL;
		}
	size_t tag_len = strlen(tag);
	if (tag_len == 0 || tag_len > 128 || tag[0] == '.' || tag[0] == '-') {
		log_err("image name \"%s\": the tag must be 1 to 128 characters, not starting with '.' or '-'", s);
		return -EINVAL;
	}
	for (const char *t = tag; *t; t++)
		if (!isalnum((unsigned char)*t) && *t != '.' && *t != '_' && *t != '-') {
			log_err("image name \"%s\": character '%c' is not allowed in TAG", s, *t);
			return -EINVAL;
		}
	int n = snprintf(out, out_len, "%.*s/%s", (int)name_len, s, tag);
	return n > 0 && (size_t)n < out_len ? 0 : -ENAMETOOLONG;
}

/* A ref binds NAME:TAG to a manifest digest under the tenant key, so nobody
 * without the key can point a tag at another of the tenant's manifests:
 *
 *   <64 hex digits of the manifest digest>\n
 *   kindling-ref-v1 <HMAC-SHA256 in hex>\n
 *
 * The HMAC key is SHA-256("kindling ref key" || tenant key), so it is never
 * the tenant key itself, and the message is "kindling-ref-v1", NAME/TAG and
 * the digest, NUL-separated.  The bytes depend only on their inputs, so the
 * same import gives the same ref in every store. */
#define REF_FORMAT "kindling-ref-v1"
#define REF_LEN (SHA256_HEX_LEN + 1 + sizeof(REF_FORMAT) + SHA256_HEX_LEN + 1)

static int ref_mac(const uint8_t tenant_key[32], const char *name_tag, const char *digest,
		   char out[SHA256_HEX_LEN + 1])
{
	static const char label[] = "kindling ref key";
	uint8_t seed[sizeof(label) + 32], mac_key[SHA256_LEN], mac[SHA256_LEN];
	memcpy(seed, label, sizeof(label));
	memcpy(seed + sizeof(label), tenant_key, 32);
	sha256_buf(seed, sizeof(seed), mac_key);
	OPENSSL_cleanse(seed, sizeof(seed));
	char *msg = xasprintf("%s%c%s%c%s", REF_FORMAT, 0, name_tag, 0, digest);
	if (!msg)
		return -ENOMEM;
	size_t msg_len = sizeof(REF_FORMAT) + strlen(name_tag) + 1 + strlen(digest);
	unsigned mac_len = 0;
	bool ok = HMAC(EVP_sha256(), mac_key, sizeof(mac_key), (const unsigned char *)msg, msg_len, mac, &mac_len) &&
		  mac_len == SHA256_LEN;
	OPENSSL_cleanse(mac_key, sizeof(mac_key));
	free(msg);
	if (!ok) {
		log_err("HMAC-SHA256 failed (OpenSSL); is libcrypto working?");
		return -EIO;
	}
	hex_encode(mac, SHA256_LEN, out);
	return 0;
}

int image_ref_put(struct store *s, const uint8_t tenant_key[32], const char *image, const char *digest)
{
	char nt[512], key[600], mac[SHA256_HEX_LEN + 1];
	int r = image_parse_name_tag(image, nt, sizeof(nt));
	if (r < 0)
		return r;
	if (!is_sha256_hex(digest)) {
		log_err("tag %s: \"%s\" is not a manifest digest (64 lower-case hex digits)", image, digest);
		return -EINVAL;
	}
	if ((r = ref_mac(tenant_key, nt, digest, mac)) < 0)
		return r;
	char *val = xasprintf("%s\n%s %s\n", digest, REF_FORMAT, mac);
	if (!val)
		return -ENOMEM;
	snprintf(key, sizeof(key), "refs/%s", nt);
	r = store_put(s, key, val, strlen(val));
	free(val);
	if (r < 0)
		log_err("cannot write ref %s to %s: %s", key, store_describe(s), strerror(-r));
	return r;
}

/* "app/prod" -> "app:prod", for messages. */
static void name_tag_display(const char *nt, char *out, size_t len)
{
	snprintf(out, len, "%s", nt);
	char *slash = strrchr(out, '/');
	if (slash)
		*slash = ':';
}

int image_resolve(struct store *s, const char *image, const uint8_t tenant_key[32], char digest[65])
{
	const char *hex = strncmp(image, "sha256:", 7) == 0 ? image + 7 : image;
	if (is_sha256_hex(hex)) {
		strcpy(digest, hex);
		return 0;
	}
	char nt[512], shown[512];
	int r = image_parse_name_tag(image, nt, sizeof(nt));
	if (r < 0)
		return r;
	name_tag_display(nt, shown, sizeof(shown));
	char key[600];
	snprintf(key, sizeof(key), "refs/%s", nt);
	uint8_t *buf;
	size_t len;
	r = store_get(s, key, 1024, &buf, &len);
	if (r == -ENOENT) {
		log_err("no image \"%s\" in %s (try `chunkify ls`)", shown, store_describe(s));
		return r;
	}
	if (r < 0) {
		log_err("cannot read ref %s from %s: %s", key, store_describe(s), strerror(-r));
		return r;
	}
	/* The digest line, then the signature line. */
	struct byte_cursor c = cur_init(buf, len);
	const uint8_t *dig = cur_take(&c, SHA256_HEX_LEN);
	bool nl = cur_u8(&c) == '\n';
	if (!dig || !nl) {
		free(buf);
		log_err("ref %s in %s is corrupt (expected a manifest digest)", key, store_describe(s));
		return -EBADMSG;
	}
	memcpy(digest, dig, SHA256_HEX_LEN);
	digest[SHA256_HEX_LEN] = 0;
	const uint8_t *rest = cur_take(&c, cur_left(&c));
	size_t rest_len = len - SHA256_HEX_LEN - 1;
	char want[SHA256_HEX_LEN + 1], line[sizeof(REF_FORMAT) + SHA256_HEX_LEN + 2];
	snprintf(line, sizeof(line), "%s ", REF_FORMAT);
	bool signed_ref = rest && rest_len == strlen(line) + SHA256_HEX_LEN + 1 &&
			  memcmp(rest, line, strlen(line)) == 0 && rest[rest_len - 1] == '\n';
	r = is_sha256_hex(digest) ? ref_mac(tenant_key, nt, digest, want) : -EBADMSG;
	bool good = r == 0 && signed_ref && CRYPTO_memcmp(rest + strlen(line), want, SHA256_HEX_LEN) == 0;
	free(buf);
	if (r == -EBADMSG)
		log_err("ref %s in %s is corrupt (expected a manifest digest)", key, store_describe(s));
	if (r < 0)
		return r;
	if (!good) {
		log_err("tag %s in %s is %s: it points at sha256:%.12s, but this tenant key did not tag that image as %s. "
			"Someone with write access to the store may have repointed it, or it was tagged with another tenant "
			"key (KINDLING_HOME, KINDLING_TENANT_KEY). If sha256:%.12s is the image you mean, run it by digest or "
			"re-tag it with `chunkify tag sha256:%s %s`",
			shown, store_describe(s), signed_ref ? "not signed by this tenant key" : "unsigned", digest, shown,
			digest, digest, shown);
		return -EKEYREJECTED;
	}
	return 0;
}

int image_load(struct store *s, const char *digest, const uint8_t *tenant_key, struct manifest *m)
{
	char key[128];
	snprintf(key, sizeof(key), "manifests/%s", digest);
	uint8_t *buf;
	size_t len;
	int r = store_get(s, key, MAX_MANIFEST, &buf, &len);
	if (r == -ENOENT)
		log_err("manifest %s is missing from %s", digest, store_describe(s));
	if (r < 0)
		return r;
	uint8_t d[SHA256_LEN];
	char hex[SHA256_HEX_LEN + 1];
	sha256_buf(buf, len, d);
	hex_encode(d, SHA256_LEN, hex);
	if (strcmp(hex, digest) != 0) {
		log_err("manifest %s in %s is corrupt or was modified: its bytes hash to %s", digest,
			store_describe(s), hex);
		free(buf);
		return -EBADMSG;
	}
	r = manifest_decode(buf, len, tenant_key, m);
	free(buf);
	if (r < 0)
		log_err("manifest %s: refused", digest);
	return r;
}
