#!/bin/bash
# Check that the nested harness gives a working /dev/kvm: run kvm_smoke
# (tests/tools/kvm_smoke.c) inside the TCG guest.
#   tests/nested/smoke.sh [BUILD_DIR]        (default $KINDLING_BUILD_DIR, else build/)
# Exits with kvm_smoke's status, or run.sh's (124 timeout, 125 harness).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
build=${1:-${KINDLING_BUILD_DIR:-$here/../../build}}
[ -x "$build/kvm_smoke" ] || { echo "smoke: $build/kvm_smoke is not built" >&2; exit 125; }
export KINDLING_BUILD_DIR=$build
p=$(mktemp -d "${TMPDIR:-/tmp}/kindling-smoke.XXXXXX")
trap 'rm -rf "$p"' EXIT
cp "$build/kvm_smoke" "$p/"
printf '#!/bin/sh\nexec /payload/kvm_smoke /dev/kvm\n' >"$p/smoke"
chmod 755 "$p/smoke"
"$here/run.sh" --timeout 240 "$p" smoke
