#!/bin/bash
# Registry and docker-archive import (issue 2, "What must hold": Registry).
# The fidelity image is pushed by skopeo to Debian's docker-registry on
# 127.0.0.1 and saved by skopeo as a docker-archive.  Imported from
# docker://, from docker-archive: and from oci: directly, it must flatten to
# the same bytes (cmp of the three exports), and the run configuration that
# `chunkify inspect --json` shows must equal what make-images.sh set with
# umoci config, for every source.
# ctest-labels: no-asan (the registry client is covered by the oci_json fuzz replay and 15 under the release build); no-tsan (one import at a time over HTTP; 11 covers the pipeline)
. "$(dirname "$0")/lib.sh"

for tool in docker-registry skopeo umoci python3 jq cmp; do
  command -v "$tool" >/dev/null || die "$tool is missing (see scripts/apt-packages.txt)"
done
[ -x "$CHUNKIFY" ] || die "chunkify not built at $CHUNKIFY"
IMAGES=$KINDLING_SOURCE_DIR/tests/images

timeout 300 "$IMAGES/make-images.sh" "$T/img" fidelity >"$T/make-images.log" 2>&1 ||
  { cat "$T/make-images.log" >&2; die "make-images.sh failed"; }

. "$IMAGES/registry.sh"
start_registry
PORT=${REGISTRY#127.0.0.1:}

timeout 120 skopeo copy --quiet --dest-tls-verify=false "oci:$T/img/fidelity:1" "docker://127.0.0.1:$PORT/fid:1" ||
  { cat "$T/registry.log" >&2; die "skopeo copy to the registry failed"; }
timeout 120 skopeo copy --quiet "oci:$T/img/fidelity:1" "docker-archive:$T/fid.tar:fid:1" ||
  die "skopeo copy to docker-archive failed"
pass "skopeo pushed to 127.0.0.1:$PORT and wrote a docker-archive"

declare -A src=(
  [oci]="oci:$T/img/fidelity:1"
  [reg]="docker://127.0.0.1:$PORT/fid:1"
  [arch]="docker-archive:$T/fid.tar"
)
for k in oci reg arch; do
  timeout 300 "$CHUNKIFY" import "${src[$k]}" --name "fid:$k" --json >"$T/$k.json" 2>"$T/$k.err" ||
    { cat "$T/$k.err" >&2; die "chunkify import ${src[$k]} failed"; }
  [ "$(jq -r .ref "$T/$k.json")" = "fid:$k" ] || die "import of ${src[$k]}: --json ref is not fid:$k"
  timeout 300 "$CHUNKIFY" export "fid:$k" "$T/$k.erofs" || die "chunkify export fid:$k failed"
  "$CHUNKIFY" inspect "fid:$k" --json >"$T/$k.inspect" || die "chunkify inspect fid:$k --json failed"
  # the run configuration umoci config set in make-images.sh
  jq -e '.config.entrypoint == ["/bin/app"] and .config.cmd == ["--serve", "8080"] and
         .config.env == ["FOO=bar", "EMPTY="] and .config.working_dir == "/srv" and
         .config.user == "1000:1000"' "$T/$k.inspect" >/dev/null ||
    { jq .config "$T/$k.inspect" >&2; die "fid:$k: run configuration differs from the image's"; }
  pass "import from ${src[$k]%%:*}: run configuration kept"
done

cmp "$T/oci.erofs" "$T/reg.erofs" || die "import from the registry flattens to other bytes than from oci:"
pass "registry import == oci import, byte for byte"
cmp "$T/oci.erofs" "$T/arch.erofs" || die "import from docker-archive flattens to other bytes than from oci:"
pass "docker-archive import == oci import, byte for byte"
