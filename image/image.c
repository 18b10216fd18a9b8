/* Naming images: NAME[:TAG] through refs/, or a manifest digest. */
#include "internal.h"

#include <ctype.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

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

int image_resolve(struct store *s, const char *image, char digest[65])
{
	const char *hex = strncmp(image, "sha256:", 7) == 0 ? image + 7 : image;
	if (is_sha256_hex(hex)) {
		strcpy(digest, hex);
		return 0;
	}
	char nt[512];
	int r = image_parse_name_tag(image, nt, sizeof(nt));
	if (r < 0)
		return r;
	char key[600];
	snprintf(key, sizeof(key), "refs/%s", nt);
	uint8_t *buf;
	size_t len;
	r = store_get(s, key, 256, &buf, &len);
	if (r == -ENOENT) {
		log_err("no image \"%s\" in %s (try `chunkify ls`)", image, store_describe(s));
		return r;
	}
	if (r < 0)
		return r;
	while (len && (buf[len - 1] == '\n' || buf[len - 1] == ' '))
		len--;
	if (len != SHA256_HEX_LEN) {
		free(buf);
		log_err("ref %s in %s is corrupt (expected a manifest digest)", key, store_describe(s));
		return -EBADMSG;
	}
	memcpy(digest, buf, SHA256_HEX_LEN);
	digest[SHA256_HEX_LEN] = 0;
	free(buf);
	if (!is_sha256_hex(digest)) {
		log_err("ref %s in %s is corrupt (expected a manifest digest)", key, store_describe(s));
		return -EBADMSG;
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
