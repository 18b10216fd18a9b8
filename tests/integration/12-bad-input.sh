#!/bin/bash
# Bad input (issue 2, "What must hold"): for every case built by
# tests/images/make-bad-inputs.sh, `chunkify import` into a fresh store
#   - exits non-zero (and not by a signal: a crash is not a clear error),
#     within 60 s;
#   - says on stderr which layer (the word "layer" and the layer's digest
#     prefix or its index) and which entry or JSON field is at fault (the
#     needles listed in cases.tsv); a layer number, where one is printed,
#     is 1-based, as in 'layer 2 (sha256:...): entry "x"' for the second
#     layer, so every message about a layer gives the same number;
#   - publishes nothing: `chunkify ls` prints no image, refs/ and manifests/
#     are empty;
#   - leaves no temporary files in the store or in KINDLING_HOME.
# The control image, built the same way without a fault, must import.
# ctest-labels: no-tsan (the same single-threaded parsers as 10; 11 covers the pipeline)
. "$(dirname "$0")/lib.sh"

command -v python3 >/dev/null || die "python3 is missing"
[ -x "$CHUNKIFY" ] || die "chunkify not built at $CHUNKIFY"
IMAGES=$KINDLING_SOURCE_DIR/tests/images
B=$T/bad
"$IMAGES/make-bad-inputs.sh" "$B" || die "make-bad-inputs.sh failed"

timeout 60 "$CHUNKIFY" import "oci:$B/control:1" --name control:1 --store "$T/store-control" >/dev/null 2>"$T/control.err" ||
  { cat "$T/control.err" >&2; die "the control image (no fault) does not import"; }
pass "control image imports"

# no_tmp DIR: nothing that looks like a temporary file under DIR.
no_tmp() {
  assert_no_tmp "$1"
  local left
  left=$(find "$1" \( -name '*.tmp*' -o -name '.tmp*' -o -name '*.part' -o -name '*~' \) 2>/dev/null | head -5)
  [ -z "$left" ] || die "temporary files left behind in $1: $left"
  # KINDLING_HOME/tmp may exist, but must be empty after a failed import.
  if [ -d "$1/tmp" ] && [ -n "$(ls -A "$1/tmp")" ]; then
    die "files left behind in $1/tmp: $(ls -A "$1/tmp" | head -5)"
  fi
}

failed=0
n=0
while IFS=$'\t' read -r name layer digest needles; do
  n=$((n + 1))
  S=$T/store-$name
  rc=0
  timeout 60 "$CHUNKIFY" import "oci:$B/$name:1" --name bad:1 --store "$S" >"$T/$name.out" 2>"$T/$name.err" || rc=$?
  problems=()
  if [ $rc = 0 ]; then
    problems+=("import succeeded")
  elif [ $rc = 124 ]; then
    problems+=("import did not finish within 60 s")
  elif [ $rc -ge 126 ]; then
    problems+=("import died with status $rc (signal or crash)")
  fi
  err=$(cat "$T/$name.err")
  [ -n "$err" ] || problems+=("nothing on stderr")
  if [ "$layer" != - ]; then
    hex=${digest#sha256:}
    grep -qi 'layer' <<<"$err" || problems+=("stderr does not say \"layer\"")
    # the layer by digest prefix, or by index (1-based or 0-based)
    if ! grep -q "${hex:0:8}" <<<"$err" && ! grep -Eqi "layer[ #]*($layer|$((layer - 1)))([^0-9]|\$)" <<<"$err"; then
      problems+=("stderr names neither layer $layer's digest (${hex:0:8}...) nor its index")
    fi
    # where a layer number is given, it is the one the other messages use:
    # 1-based, as in 'layer 2 (sha256:...): entry "..."' for the second layer
    for k in $(grep -Eoi 'layer[ #]*[0-9]+' <<<"$err" | grep -Eo '[0-9]+$' | sort -u); do
      [ "$k" = "$layer" ] || problems+=("stderr calls layer $layer (1-based) \"layer $k\"")
    done
  fi
  if [ -n "$needles" ]; then
    IFS=';' read -ra groups <<<"$needles"
    for g in "${groups[@]}"; do
      IFS='|' read -ra alts <<<"$g"
      found=0
      for a in "${alts[@]}"; do grep -qF -- "$a" <<<"$err" && found=1; done
      [ $found = 1 ] || problems+=("stderr does not mention ${alts[*]}")
    done
  fi
  # nothing published
  # a failed import leaves no store it created; where one exists, it lists nothing new
  if [ -d "$S" ]; then
    listing=$("$CHUNKIFY" ls --store "$S" 2>&1) || problems+=("chunkify ls failed on the store: $listing")
    if grep -q 'bad' <<<"$listing"; then problems+=("chunkify ls shows an image: $listing"); fi
  fi
  for d in refs manifests; do
    if [ -d "$S/$d" ] && [ -n "$(find "$S/$d" -type f)" ]; then
      problems+=("$d/ is not empty: $(find "$S/$d" -type f | head -3 | tr '\n' ' ')")
    fi
  done
  leftover=$( (no_tmp "$S" && no_tmp "$KINDLING_HOME") 2>&1) || problems+=("$leftover")

  if [ ${#problems[@]} -gt 0 ]; then
    failed=$((failed + 1))
    echo "FAIL: $name:" >&2
    for p in "${problems[@]}"; do echo "    $p" >&2; done
    echo "    exit status $rc; stderr:" >&2
    sed 's/^/      | /' "$T/$name.err" >&2
  else
    pass "$name: $(head -1 "$T/$name.err")"
  fi
done <"$B/cases.tsv"

[ $n -ge 18 ] || die "only $n cases in cases.tsv"
[ $failed = 0 ] || die "$failed of $n bad inputs not handled as required"
pass "all $n bad inputs refused cleanly"

# A host without libcrypto (common/crypto_lazy.c opens it on first use): the
# control image's import stops at its first hash with exit status 127 and a
# line naming the library and its Debian package, and publishes nothing.
# The library is hidden by a bind mount in a mount namespace of its own.
lib=$(ldconfig -p | awk '$1 == "libcrypto.so.3" && /x86-64/ && !found {print $NF; found = 1}')
[ -n "$lib" ] || die "libcrypto.so.3 not found (ldconfig -p)"
rc=0
timeout 60 unshare -m sh -c 'mount --bind /dev/null "$1" && exec "$2" import "oci:$3/control:1" --name nolib:1 --store "$4"' \
  sh "$lib" "$CHUNKIFY" "$B" "$T/store-nolib" >/dev/null 2>"$T/nolib.err" || rc=$?
[ $rc = 127 ] && grep -q "cannot load libcrypto.so.3: .*install Debian's libssl3" "$T/nolib.err" ||
  { cat "$T/nolib.err" >&2; die "without libcrypto: exit status $rc (want 127 and a line naming libcrypto.so.3 and libssl3)"; }
[ -z "$(ls -A "$T/store-nolib/refs" "$T/store-nolib/manifests" 2>/dev/null)" ] || die "without libcrypto, something was published"
pass "without libcrypto: exit 127, $(grep -m1 'cannot load' "$T/nolib.err" | cut -c1-120)"
