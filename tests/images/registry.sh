# A local OCI registry for integration tests: Debian's docker-registry on
# 127.0.0.1, and pushing OCI layouts to it with skopeo.  Source it after
# tests/integration/lib.sh (it uses T, track_pid, free_port, wait_port, die):
#   . "$KINDLING_SOURCE_DIR/tests/images/registry.sh"
#   start_registry                      # sets REGISTRY (127.0.0.1:PORT)
#   push_layout "$T/img/lambda-node" 1 lambda-node:1
#   "$CHUNKIFY" import "docker://$REGISTRY/lambda-node:1"
# The registry stores under $T/registry, serves plain http (kindling and
# skopeo speak plain http to loopback hosts) and is killed at the test's exit.

# start_registry: start docker-registry on a free port of 127.0.0.1 and wait
# (at most 20 s) until it answers; REGISTRY is then "127.0.0.1:PORT".
start_registry() {
  command -v docker-registry >/dev/null || die "docker-registry is missing (Debian package docker-registry)"
  local port
  port=$(free_port)
  mkdir -p "$T/registry"
  cat >"$T/registry.yml" <<EOF
version: 0.1
log:
  level: warn
storage:
  filesystem:
    rootdirectory: $T/registry
  delete:
    enabled: true
http:
  addr: 127.0.0.1:$port
EOF
  docker-registry serve "$T/registry.yml" >"$T/registry.log" 2>&1 &
  track_pid $!
  wait_port "$port" 20
  REGISTRY=127.0.0.1:$port
}

# push_layout LAYOUT TAG REPO:TAG: copy the image LAYOUT:TAG (an OCI layout
# directory) to $REGISTRY/REPO:TAG with skopeo, within 120 s.
push_layout() {
  command -v skopeo >/dev/null || die "skopeo is missing (Debian package skopeo)"
  [ -n "${REGISTRY:-}" ] || die "push_layout: no registry (call start_registry first)"
  timeout 120 skopeo copy --quiet --dest-tls-verify=false "oci:$1:$2" "docker://$REGISTRY/$3" ||
    { cat "$T/registry.log" >&2; die "skopeo copy oci:$1:$2 docker://$REGISTRY/$3 failed"; }
}
