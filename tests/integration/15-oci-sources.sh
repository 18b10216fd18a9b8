#!/bin/bash
# The three image sources of `chunkify import` against real tools: an image
# built with umoci, copied by skopeo into a docker-archive and into Debian's
# docker-registry (open, htpasswd basic auth, and token auth with a real
# RS256 token server), read back through oci_dump.  Also gzip and zstd
# layers, a tampered blob, malformed JSON, and registry errors.
# ctest-labels: no-asan (starts three registries; its parsers are fuzz-replayed under ASan); no-tsan (one import at a time; 11 covers the pipeline)
. "$(dirname "$0")/lib.sh"

for tool in umoci skopeo docker-registry htpasswd node openssl jq python3 sha256sum; do
  command -v "$tool" >/dev/null || die "$tool is not installed (see scripts/apt-packages.txt)"
done
DUMP=$TOOLS_DIR/oci_dump
[ -x "$DUMP" ] || die "$DUMP is not built"

# summary of an oci_dump: what must agree across source kinds
summary() { jq -c '{config_digest, diff_ids: [.layers[].diff_id], tars: [.layers[].tar_sha256], config}' "$1"; }

# ---- an image made with umoci ------------------------------------------------
cd "$T"
mkdir -p src1/bin src2/etc
printf '#!/bin/sh\necho hello\n' >src1/bin/app
chmod 755 src1/bin/app
echo 'answer=42' >src2/etc/app.conf
head -c 300000 /dev/urandom >src2/etc/random.bin
umoci init --layout img
umoci new --image img:v1
umoci insert --image img:v1 src1/bin /bin
umoci insert --image img:v1 src2/etc /etc
umoci config --image img:v1 --config.entrypoint /bin/app --config.entrypoint --serve \
  --config.env FOO=bar --config.env PATH=/bin --config.workingdir /srv --config.user 1000:1000
umoci config --image img:v1 --tag v2 --config.cmd extra   # a second tag in the same layout

# ---- oci: layout -------------------------------------------------------------
"$DUMP" "oci:$T/img:v1" >oci.json || die "oci_dump of the layout failed"
[ "$(jq -r '.config.entrypoint|join(" ")' oci.json)" = "/bin/app --serve" ] || die "entrypoint: $(cat oci.json)"
[ "$(jq -r '.config.working_dir' oci.json)" = /srv ] || die "working dir"
[ "$(jq -r '.config.user' oci.json)" = 1000:1000 ] || die "user"
[ "$(jq -r '.config.env|join(",")' oci.json)" = "FOO=bar,PATH=/bin" ] || die "env"
[ "$(jq '.layers|length' oci.json)" = 2 ] || die "layer count"
jq -e 'all(.layers[]; .diff_id == .tar_sha256)' oci.json >/dev/null || die "tar sha256 != diff_id"
jq -e 'all(.layers[]; .media_type == "application/vnd.oci.image.layer.v1.tar+gzip")' oci.json >/dev/null \
  || die "umoci layers are not gzip"
[ "$(jq -r .manifest_digest oci.json)" = "$(jq -r '.manifests[] | select(.annotations["org.opencontainers.image.ref.name"]=="v1") | .digest' img/index.json)" ] \
  || die "manifest digest is not the one index.json names"
pass "oci layout"

expect_fail "$DUMP" "oci:$T/img"
grep -q "v1" "$T/last.err" && grep -q "v2" "$T/last.err" || die "no tag, two tags: error should list them: $(cat "$T/last.err")"
expect_fail "$DUMP" "oci:$T/img:nope"
grep -q "no manifest tagged 'nope'" "$T/last.err" || die "unknown tag: $(cat "$T/last.err")"
pass "oci layout tag selection"

# ---- docker-archive -----------------------------------------------------------
skopeo copy -q "oci:$T/img:v1" "docker-archive:$T/img.tar:kindling/test:v1"
"$DUMP" "docker-archive:$T/img.tar" >archive.json || die "oci_dump of the docker-archive failed"
[ "$(summary oci.json)" = "$(summary archive.json)" ] || die "docker-archive differs: $(summary archive.json) vs $(summary oci.json)"
want=$(tar -xOf img.tar manifest.json | sha256sum | cut -d' ' -f1)
[ "$(jq -r .manifest_digest archive.json)" = "sha256:$want" ] || die "docker-archive manifest digest is not sha256(manifest.json)"
pass "docker-archive"

# ---- registries ---------------------------------------------------------------
# start_registry NAME AUTH_YAML: a docker-registry on a free loopback port,
# killed at exit; sets REGISTRY_PORT.  Call it directly, never in $(...): a
# subshell's track_pid does not reach the cleanup trap, and the registry
# would outlive the test.
start_registry() {
  local name=$1 auth=$2 port
  port=$(free_port)
  mkdir -p "$T/$name-data"
  cat >"$T/$name.yml" <<EOF
version: 0.1
log:
  level: warn
storage:
  filesystem:
    rootdirectory: $T/$name-data
http:
  addr: 127.0.0.1:$port
  secret: kindling-test-secret
$auth
EOF
  docker-registry serve "$T/$name.yml" >"$T/$name.log" 2>&1 &
  track_pid $!
  wait_port "$port"
  REGISTRY_PORT=$port
}

start_registry open ""
REG=$REGISTRY_PORT
skopeo copy -q --dest-tls-verify=false "oci:$T/img:v1" "docker://127.0.0.1:$REG/kindling/test:v1"
"$DUMP" "docker://127.0.0.1:$REG/kindling/test:v1" >reg.json || die "oci_dump of the registry failed"
[ "$(summary oci.json)" = "$(summary reg.json)" ] || die "registry differs: $(summary reg.json)"
[ "$(jq -r .manifest_digest reg.json)" = "$(jq -r .manifest_digest oci.json)" ] || die "registry manifest digest"
digest=$(jq -r .manifest_digest reg.json)
"$DUMP" "docker://127.0.0.1:$REG/kindling/test@$digest" >reg2.json || die "pull by digest failed"
[ "$(summary reg.json)" = "$(summary reg2.json)" ] || die "pull by digest differs"
pass "registry (plain http on loopback)"

expect_fail "$DUMP" "docker://127.0.0.1:$REG/kindling/test:missing"
grep -q "registry 127.0.0.1:$REG: manifest for kindling/test:missing: 404 MANIFEST_UNKNOWN" "$T/last.err" \
  || die "unknown tag: $(cat "$T/last.err")"
expect_fail "$DUMP" "docker://127.0.0.1:$REG/kindling/nothere:v1"
grep -q "404 NAME_UNKNOWN\|404 MANIFEST_UNKNOWN" "$T/last.err" || die "unknown repo: $(cat "$T/last.err")"
dead=$(free_port)
expect_fail "$DUMP" "docker://127.0.0.1:$dead/kindling/test:v1"
grep -q "registry 127.0.0.1:$dead" "$T/last.err" || die "dead registry: $(cat "$T/last.err")"
pass "registry errors"

# No blob downloads may be left behind in the temporary directory.
mkdir -p "$T/stage"
"$DUMP" "docker://127.0.0.1:$REG/kindling/test:v1" --tmp-dir "$T/stage" >/dev/null
[ -z "$(ls -A "$T/stage")" ] || die "files left in the staging directory: $(ls -A "$T/stage")"
pass "no staged blobs left behind"

# ---- a multi-platform index: the linux/amd64 entry is chosen ---------------------
cp -a img imgidx
python3 - "$T/imgidx" <<'PY'
import hashlib, json, os, sys
dst = sys.argv[1]
b = lambda d: os.path.join(dst, "blobs", "sha256", d.split(":")[1])
idx = json.load(open(os.path.join(dst, "index.json")))
tag = lambda t: [m for m in idx["manifests"] if m["annotations"]["org.opencontainers.image.ref.name"] == t][0]
mt = "application/vnd.oci.image.manifest.v1+json"
arm = {"mediaType": mt, "digest": tag("v2")["digest"], "size": tag("v2")["size"], "platform": {"architecture": "arm64", "os": "linux"}}
amd = {"mediaType": mt, "digest": tag("v1")["digest"], "size": tag("v1")["size"], "platform": {"architecture": "amd64", "os": "linux"}}
inner = json.dumps({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json", "manifests": [arm, amd]}).encode()
d = "sha256:" + hashlib.sha256(inner).hexdigest()
open(b(d), "wb").write(inner)
idx["manifests"].append({"mediaType": "application/vnd.oci.image.index.v1+json", "digest": d, "size": len(inner),
                         "annotations": {"org.opencontainers.image.ref.name": "multi"}})
json.dump(idx, open(os.path.join(dst, "index.json"), "w"))
PY
"$DUMP" "oci:$T/imgidx:multi" >idx.json || die "nested index in a layout"
[ "$(summary idx.json)" = "$(summary oci.json)" ] || die "nested index did not pick linux/amd64"
skopeo copy -q --all --dest-tls-verify=false "oci:$T/imgidx:multi" "docker://127.0.0.1:$REG/kindling/multi:v1"
"$DUMP" "docker://127.0.0.1:$REG/kindling/multi:v1" >idxr.json || die "index from the registry"
[ "$(summary idxr.json)" = "$(summary oci.json)" ] || die "registry index did not pick linux/amd64"
[ "$(jq -r .manifest_digest idxr.json)" = "$(jq -r .manifest_digest oci.json)" ] || die "registry index: manifest digest"
pass "image index resolves to linux/amd64 (layout and registry)"

# ---- zstd and gzip layers --------------------------------------------------------
if skopeo copy --help 2>&1 | grep -q -- --dest-compress-format; then
  skopeo copy -q --dest-compress --dest-compress-format zstd "oci:$T/img:v1" "oci:$T/imgz:v1"
  skopeo copy -q --dest-tls-verify=false --dest-compress --dest-compress-format zstd \
    "oci:$T/img:v1" "docker://127.0.0.1:$REG/kindling/zstd:v1"
else
  die "this skopeo cannot write zstd layers (--dest-compress-format)"
fi
"$DUMP" "oci:$T/imgz:v1" >z.json || die "zstd layout"
jq -e 'all(.layers[]; .media_type == "application/vnd.oci.image.layer.v1.tar+zstd")' z.json >/dev/null \
  || die "skopeo did not write zstd layers: $(jq -c '[.layers[].media_type]' z.json)"
head -c 4 "imgz/blobs/sha256/$(jq -r '.layers[0].digest' z.json | cut -d: -f2)" | od -An -tx1 | grep -q '28 b5 2f fd' \
  || die "the zstd layer does not start with the zstd magic"
[ "$(jq -c '[.layers[].tar_sha256]' z.json)" = "$(jq -c '[.layers[].tar_sha256]' oci.json)" ] || die "zstd content"
"$DUMP" "docker://127.0.0.1:$REG/kindling/zstd:v1" >zr.json || die "zstd from the registry"
[ "$(jq -c '[.layers[].tar_sha256]' zr.json)" = "$(jq -c '[.layers[].tar_sha256]' oci.json)" ] || die "zstd registry content"
pass "zstd layers (layout and registry)"

# A hand-made multi-member gzip layer (pigz -i and concatenation) in a layout.
python3 - "$T/img" "$T/imgmm" <<'PY'
import gzip, hashlib, json, os, shutil, sys
src, dst = sys.argv[1], sys.argv[2]
shutil.copytree(src, dst)
b = lambda d: os.path.join(dst, "blobs", "sha256", d.split(":")[1])
idx = json.load(open(os.path.join(dst, "index.json")))
desc = [m for m in idx["manifests"] if m["annotations"]["org.opencontainers.image.ref.name"] == "v1"][0]
man = json.load(open(b(desc["digest"])))
layer = man["layers"][1]
raw = gzip.decompress(open(b(layer["digest"]), "rb").read())
half = len(raw) // 2
blob = gzip.compress(raw[:half]) + gzip.compress(raw[half:])
d = "sha256:" + hashlib.sha256(blob).hexdigest()
open(b(d), "wb").write(blob)
layer.update(digest=d, size=len(blob))
mb = json.dumps(man).encode()
md = "sha256:" + hashlib.sha256(mb).hexdigest()
open(b(md), "wb").write(mb)
desc.update(digest=md, size=len(mb))
json.dump(idx, open(os.path.join(dst, "index.json"), "w"))
PY
"$DUMP" "oci:$T/imgmm:v1" >mm.json || die "multi-member gzip layer"
[ "$(jq -c '[.layers[].tar_sha256]' mm.json)" = "$(jq -c '[.layers[].tar_sha256]' oci.json)" ] || die "multi-member content"
pass "multi-member gzip layer"

# ---- tampering and malformed JSON ------------------------------------------------
cp -a img imgbad
blob=imgbad/blobs/sha256/$(jq -r '.layers[1].digest' oci.json | cut -d: -f2)
chmod u+w "$blob"
python3 - "$blob" <<'PY'
import sys
p = sys.argv[1]; b = bytearray(open(p, "rb").read()); b[len(b) // 2] ^= 0x01; open(p, "wb").write(b)
PY
expect_fail "$DUMP" "oci:$T/imgbad:v1"
grep -q "layer 2 (sha256:" "$T/last.err" || die "tampered blob (the second layer): error does not name it: $(cat "$T/last.err")"
grep -q "digest mismatch\|corrupt gzip" "$T/last.err" || die "tampered blob: $(cat "$T/last.err")"
pass "tampered layer blob"

# rewrite_json DIR WHAT PYEXPR: edit the v1 manifest or config with a python
# expression on |doc| and re-link every digest, so only the shape is wrong.
rewrite_json() {
  python3 - "$1" "$2" "$3" <<'PY'
import hashlib, json, os, shutil, sys
dst, what, expr = sys.argv[1:4]
b = lambda d: os.path.join(dst, "blobs", "sha256", d.split(":")[1])
def put(doc):
    data = json.dumps(doc).encode(); d = "sha256:" + hashlib.sha256(data).hexdigest()
    open(b(d), "wb").write(data); return d, len(data)
idx = json.load(open(os.path.join(dst, "index.json")))
desc = [m for m in idx["manifests"] if m["annotations"]["org.opencontainers.image.ref.name"] == "v1"][0]
man = json.load(open(b(desc["digest"])))
if what == "config":
    doc = json.load(open(b(man["config"]["digest"]))); exec(expr)
    man["config"]["digest"], man["config"]["size"] = put(doc)
else:
    doc = man; exec(expr)
desc["digest"], desc["size"] = put(man)
json.dump(idx, open(os.path.join(dst, "index.json"), "w"))
PY
}
cp -a img imgj1
rewrite_json imgj1 config 'doc["config"]["Env"] = "FOO=bar"'
expect_fail "$DUMP" "oci:$T/imgj1:v1"
grep -q "config.Env: expected an array" "$T/last.err" || die "wrong type in config: $(cat "$T/last.err")"
cp -a img imgj2
rewrite_json imgj2 manifest 'doc["layers"][1]["digest"] = 12'
expect_fail "$DUMP" "oci:$T/imgj2:v1"
grep -q "layers\[1\].digest: expected a string" "$T/last.err" || die "wrong type in manifest: $(cat "$T/last.err")"
cp -a img imgj3
rewrite_json imgj3 config 'doc["rootfs"]["diff_ids"].pop()'
expect_fail "$DUMP" "oci:$T/imgj3:v1"
grep -q "rootfs.diff_ids: 1 entries but the manifest has 2 layers" "$T/last.err" || die "diff_ids count: $(cat "$T/last.err")"
cp -a img imgj4
rewrite_json imgj4 manifest 'doc["layers"][0]["digest"] = "sha512:" + "ab" * 64'
expect_fail "$DUMP" "oci:$T/imgj4:v1"
grep -q "layers\[0\].digest: unsupported digest algorithm 'sha512'" "$T/last.err" || die "sha512: $(cat "$T/last.err")"
pass "malformed JSON names the field"

# ---- basic auth (htpasswd) ---------------------------------------------------------
htpasswd -Bbc "$T/htpasswd" alice s3cret >/dev/null 2>&1
start_registry basic "auth:
  htpasswd:
    realm: kindling-basic
    path: $T/htpasswd"
BREG=$REGISTRY_PORT
skopeo copy -q --dest-tls-verify=false --dest-creds alice:s3cret "oci:$T/img:v1" "docker://127.0.0.1:$BREG/kindling/test:v1"
KINDLING_REGISTRY_USER=alice KINDLING_REGISTRY_PASSWORD=s3cret "$DUMP" "docker://127.0.0.1:$BREG/kindling/test:v1" \
  >basic.json || die "basic auth with credentials failed"
[ "$(summary oci.json)" = "$(summary basic.json)" ] || die "basic auth registry differs"
expect_fail env -u KINDLING_REGISTRY_USER -u KINDLING_REGISTRY_PASSWORD "$DUMP" "docker://127.0.0.1:$BREG/kindling/test:v1"
grep -q "401.*authentication required: set KINDLING_REGISTRY_USER" "$T/last.err" || die "no credentials: $(cat "$T/last.err")"
KINDLING_REGISTRY_USER=alice KINDLING_REGISTRY_PASSWORD=wrong expect_fail "$DUMP" "docker://127.0.0.1:$BREG/kindling/test:v1"
grep -q "credentials rejected" "$T/last.err" || die "wrong password: $(cat "$T/last.err")"
pass "registry basic auth"

# ---- bearer tokens: the registry's own `auth: token:` mode ---------------------------
openssl req -x509 -newkey rsa:2048 -nodes -keyout "$T/token.key" -out "$T/token.crt" -days 2 \
  -subj "/CN=kindling-test-token-issuer" >/dev/null 2>&1
cat >"$T/token-server.js" <<'JS'
// A minimal Docker registry token server: RS256 JWTs whose x5c header
// carries the signing certificate, granting what the scope asks for to one
// user with basic credentials.
const http = require("http"), crypto = require("crypto"), fs = require("fs");
const [port, keyFile, certFile, user, pass, logFile] = process.argv.slice(2);
const key = fs.readFileSync(keyFile, "utf8");
const der = fs.readFileSync(certFile, "utf8").replace(/-----[^-]+-----|\s/g, "");
const b64u = (b) => Buffer.from(b).toString("base64").replace(/=+$/, "").replace(/\+/g, "-").replace(/\//g, "_");
http.createServer((req, res) => {
  const url = new URL(req.url, "http://x");
  const auth = req.headers.authorization || "";
  const given = auth.startsWith("Basic ") ? Buffer.from(auth.slice(6), "base64").toString() : "";
  fs.appendFileSync(logFile, `${req.method} ${url.pathname} auth=${given ? given.split(":")[0] : "-"} scope=${url.searchParams.getAll("scope").join(" ")}\n`);
  if (url.pathname !== "/token") { res.writeHead(404); return res.end(); }
  if (given !== `${user}:${pass}`) {
    res.writeHead(401, { "Content-Type": "application/json", "WWW-Authenticate": 'Basic realm="tokens"' });
    return res.end(JSON.stringify({ errors: [{ code: "UNAUTHORIZED", message: "bad credentials" }] }));
  }
  const access = url.searchParams.getAll("scope").flatMap((s) => s.split(" ")).filter(Boolean).map((s) => {
    const [type, ...rest] = s.split(":"); const actions = rest.pop().split(","); return { type, name: rest.join(":"), actions };
  });
  const now = Math.floor(Date.now() / 1000);
  const header = { alg: "RS256", typ: "JWT", x5c: [der] };
  const claims = { iss: "kindling-test-issuer", sub: user, aud: url.searchParams.get("service"),
                   exp: now + 300, nbf: now - 10, iat: now, jti: crypto.randomBytes(8).toString("hex"), access };
  const input = b64u(JSON.stringify(header)) + "." + b64u(JSON.stringify(claims));
  const sig = crypto.createSign("RSA-SHA256").update(input).sign(key);
  const token = input + "." + b64u(sig);
  res.writeHead(200, { "Content-Type": "application/json" });
  // Alternate the field name: clients must accept "token" and "access_token".
  res.end(JSON.stringify(url.searchParams.get("scope")?.includes("push") ? { token } : { access_token: token, expires_in: 300 }));
}).listen(Number(port), "127.0.0.1");
JS
TPORT=$(free_port)
node "$T/token-server.js" "$TPORT" "$T/token.key" "$T/token.crt" bob t0ken-pass "$T/token-requests.log" >"$T/token-server.log" 2>&1 &
track_pid $!
wait_port "$TPORT"
start_registry tokreg "auth:
  token:
    realm: http://127.0.0.1:$TPORT/token
    service: kindling-registry
    issuer: kindling-test-issuer
    rootcertbundle: $T/token.crt"
TREG=$REGISTRY_PORT
skopeo copy -q --dest-tls-verify=false --dest-creds bob:t0ken-pass "oci:$T/img:v1" \
  "docker://127.0.0.1:$TREG/kindling/test:v1" || die "skopeo push through the token flow failed: $(cat "$T/token-requests.log")"
: >"$T/token-requests.log"
KINDLING_REGISTRY_USER=bob KINDLING_REGISTRY_PASSWORD=t0ken-pass "$DUMP" "docker://127.0.0.1:$TREG/kindling/test:v1" \
  >token.json || die "bearer token flow failed: $(cat "$T/token-requests.log")"
[ "$(summary oci.json)" = "$(summary token.json)" ] || die "token registry differs"
grep -q "GET /token auth=bob scope=repository:kindling/test:pull" "$T/token-requests.log" \
  || die "the token server did not see our request: $(cat "$T/token-requests.log")"
expect_fail env -u KINDLING_REGISTRY_USER -u KINDLING_REGISTRY_PASSWORD "$DUMP" "docker://127.0.0.1:$TREG/kindling/test:v1"
grep -q "registry 127.0.0.1:$TREG: token server http://127.0.0.1:$TPORT/token refused: 401" "$T/last.err" \
  || die "token flow without credentials: $(cat "$T/last.err")"
pass "registry bearer token auth (RS256 JWT, x5c)"

echo "all OCI source checks passed"
