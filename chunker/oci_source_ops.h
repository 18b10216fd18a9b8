/* chunker: the private side of the OCI image sources (oci_source*.c only).
 *
 * oci_source.c picks a source by the prefix of SOURCE from its one
 * registration array and drives it through the wrappers declared in
 * internal.h; nothing outside oci_source*.c touches an ops table.
 *
 * A source that serves documents by digest (a layout, a registry) only
 * fetches them: oci_source.c walks from the first document through nested
 * indexes to the manifest, fetches the config and checks its digest, so the
 * walk and its limits are written once.  A source that has no such documents
 * (a docker-archive) fills the image itself in open.  Every source hands back
 * a layer as its raw stored bytes, and oci_source.c wraps them in the stream
 * that checks the blob digest and the diff_id (blob.c).
 */
#ifndef KINDLING_CHUNKER_OCI_SOURCE_OPS_H
#define KINDLING_CHUNKER_OCI_SOURCE_OPS_H

#include "internal.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* One JSON document as a source fetched it. */
struct oci_doc {
	uint8_t *buf;		/* malloc'd; oci_doc_cleanup frees it */
	size_t len;
	char digest[80];	/* fetch_manifest: "sha256:..." the bytes hash to */
	char content_type[256]; /* as the source declared it, "" if it has none */
	char what[600];		/* names the document in messages */
	char index_what[600];	/* fetch_manifest: names it once it has turned out to be an index */
};

/* Free |d|'s bytes and clear every field.  |d| may hold nothing. */
void oci_doc_cleanup(struct oci_doc *d);

/* Where the walk to the manifest starts; open fills it. */
struct oci_root {
	char ref[160];	 /* what to fetch first: a digest, or a registry tag */
	char digest[80]; /* what it must hash to; "" when only a tag names it */
	uint64_t size;	 /* its declared size, or the bound OCI_MAX_JSON */
};

/* One kind of source.  |state| is whatever the source's open returned. */
struct oci_source_ops {
	/* required: short name for debug messages ("oci", "docker-archive",
	 * "docker") */
	const char *name;
	/* required: the SOURCE prefix this source takes, such as "oci:" */
	const char *prefix;
	/* required: true if a SOURCE that ends right after |prefix| is still
	 * this source's (open then says what is missing); false makes such a
	 * SOURCE unknown. */
	bool empty_ok;
	/* required: parse |rest| (SOURCE after the prefix) and set up.  A
	 * source with fetch_manifest fills |*out_root|; one without fills all
	 * of |img| (manifest and config digests computed from the bytes read,
	 * layers, run config).  |img->source_ref| is set and outlives the
	 * state.  On success |*out_state| belongs to the source and close
	 * releases it; on failure open has released what it made.  Returns 0
	 * or -errno (logged, naming img->source_ref). */
	int (*open)(const char *rest, const struct oci_source_options *opt, struct oci_image *img, void **out_state,
		    struct oci_root *out_root);
	/* optional, with fetch_config and max_nested: fetch the manifest or
	 * index |ref| (a digest, or the tag in out_root) into |out|, refusing
	 * more than |size| bytes (a source that knows the exact size checks
	 * it), and check that the bytes hash to |digest| unless it is "".
	 * Fills buf, len, digest, what and index_what, and content_type if the
	 * source has one.  Returns 0 or -errno (logged). */
	int (*fetch_manifest)(void *state, const char *ref, const char *digest, uint64_t size, struct oci_doc *out);
	/* with fetch_manifest: fetch the config blob |digest| (at most
	 * OCI_MAX_JSON bytes) into out's buf, len and what; oci_source.c checks
	 * its digest.  Returns 0 or -errno (logged). */
	int (*fetch_config)(void *state, const char *digest, struct oci_doc *out);
	/* with fetch_manifest: how many fetched documents in a row may be
	 * indexes before the walk gives up ("indexes nested too deeply"). */
	unsigned max_nested;
	/* required: open layer |i| of |img| as its raw stored bytes, either a
	 * file descriptor at offset 0 in |*out_fd| or a stream in |*out_raw|,
	 * exactly one of them, owned by the caller.  |what| names the layer in
	 * messages.  May run in several threads at once.  Returns 0 or -errno
	 * (logged). */
	int (*open_layer)(void *state, const struct oci_image *img, size_t i, const char *what, int *out_fd,
			  struct byte_stream **out_raw);
	/* required: release everything open made; never NULL |state|. */
	void (*close)(void *state);
};

extern const struct oci_source_ops oci_layout_ops;
extern const struct oci_source_ops oci_archive_ops;
extern const struct oci_source_ops oci_registry_ops;

/* ---- shared helpers (oci_source.c) ----------------------------------------- */

/* "sha256:<hex>" of |<p, n>| into |out|. */
void oci_digest_str(const void *p, size_t n, char out[80]);

/* Check |<buf, len>| against the digest |want| that named it.  Returns 0 or
 * -EBADMSG (logged with |what|). */
int oci_verify_digest(const char *what, const uint8_t *buf, size_t len, const char *want);

/* ---- registry responses (oci_source_registry.c), exposed for the fuzz target */

/* The response headers the registry client uses, each NUL-terminated and cut
 * to its buffer. */
struct registry_headers {
	char content_type[256];
	char docker_digest[80];
	char www_auth[1024];
};

/* Take one raw header line |<p, n>| as libcurl delivers it (not
 * NUL-terminated, CRLF included).  A status line ("HTTP/...") starts a new
 * response of a redirect or auth exchange and clears |h|. */
void registry_header_line(struct registry_headers *h, const char *p, size_t n);

/* A WWW-Authenticate challenge: `Bearer realm="..",service="..",scope=".."`
 * or `Basic realm=".."`; absent parameters are "". */
struct registry_challenge {
	char scheme[32];
	char realm[1024];
	char service[1024];
	char scope[1024];
};

/* Parse the NUL-terminated header value |v|; never fails, cuts what does
 * not fit. */
void registry_parse_challenge(const char *v, struct registry_challenge *out);

/* True if a bearer token may be fetched from |realm|: https, or plain http
 * when |plain_http_ok| or the realm's host is loopback. */
bool registry_realm_allowed(const char *realm, bool plain_http_ok);

/* "404 MANIFEST_UNKNOWN: manifest unknown": |status| and the first error of
 * the registry's JSON error body |<body, len>| (may be NULL) when it has
 * one, into |<out, cap>|. */
void registry_describe_error(long status, const uint8_t *body, size_t len, char *out, size_t cap);

/* The token of a token server's JSON reply ("token", else "access_token")
 * as a malloc'd "Authorization: Bearer <token>" header line.  Returns 0,
 * -EBADMSG if there is no usable token (missing, empty, too long, or with
 * bytes a header must not carry), or -ENOMEM. */
int registry_parse_token(const uint8_t *buf, size_t len, char **out_header);

#endif
