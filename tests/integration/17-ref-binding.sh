#!/bin/bash
# Tags are bound to the tenant key, and a mistyped store is not created:
#   - a tag repointed by someone who can write the store (but lacks the
#     tenant key) is refused by `chunkify inspect` and `kindling run`, with a
#     message naming the tag and saying how to re-tag; the image still runs
#     by digest; `chunkify tag` by the key holder fixes the tag;
#   - an unsigned ref (the pre-signing format) is refused the same way, and
#     `chunkify ls` marks it; `chunkify rm` still removes it;
#   - another tenant key cannot use this tenant's tags;
#   - `kindling run` and `chunkify inspect` on a store that does not exist say
#     so and create nothing; a first import that fails leaves no store behind;
#   - an interrupted import exits 130 and prints one message.
# ctest-labels: no-tsan (single-threaded commands; the ref code runs under ASan here)
. "$(dirname "$0")/lib.sh"
KINDLING=$KINDLING_BUILD_DIR/kindling
[ -x "$KINDLING" ] || die "kindling not built at $KINDLING (build the project first)"
for tool in jq python3 tar; do
  command -v $tool >/dev/null || die "$tool is not installed (see scripts/apt-packages.txt)"
done
[ -x /bin/busybox ] || die "/bin/busybox is missing (Debian package busybox-static)"
[ "$(id -u)" = 0 ] || die "the process sandbox needs root"
[ -e /dev/fuse ] || die "/dev/fuse is missing"

# Two small images whose entrypoints say which one ran.
for v in one two; do
  R=$T/rootfs-$v
  mkdir -p "$R"/{bin,etc}
  cp /bin/busybox "$R/bin/busybox"
  ln -s busybox "$R/bin/sh"
  printf '#!/bin/sh\necho "this is image %s"\n' "$v" >"$R/bin/which"
  chmod 755 "$R/bin/which"
  tar -C "$R" -cf "$T/$v.tar" .
  python3 "$KINDLING_SOURCE_DIR/bench/make_layout.py" "$T/layout-$v" 1 "$T/$v.tar"
done
S=$T/store
ck() { "$CHUNKIFY" --store "$S" "$@"; }
ck import "oci:$T/layout-one:1" --name app:prod >/dev/null 2>"$T/imp1.err" || { cat "$T/imp1.err" >&2; die "import one"; }
ck import "oci:$T/layout-two:1" --name app:old >/dev/null 2>"$T/imp2.err" || { cat "$T/imp2.err" >&2; die "import two"; }
d1=$(ck inspect app:prod --json | jq -r .manifest)
d2=$(ck inspect app:old --json | jq -r .manifest)
[ -n "$d1" ] && [ -n "$d2" ] && [ "$d1" != "$d2" ] || die "the two images did not get two digests ($d1, $d2)"

export TMPDIR=$T/tmp
mkdir -p "$TMPDIR"
run() { timeout 120 "$KINDLING" run "$1" --store "$S" -- /bin/which >"$T/run.out" 2>"$T/run.err"; }
run app:prod || { cat "$T/run.err" >&2; die "kindling run app:prod failed"; }
grep -q "this is image one" "$T/run.out" || die "app:prod did not run image one: $(cat "$T/run.out")"
pass "signed tags resolve for chunkify and kindling run"

# ---- a store writer without the key repoints app:prod at the other image ---------------------------------------------
ref=$S/refs/app/prod
[ -f "$ref" ] || die "no ref file at $ref"
cp "$ref" "$T/prod.ref"
python3 - "$ref" "$d2" <<'PY'
import sys
path, new = sys.argv[1], sys.argv[2]
lines = open(path).read().split("\n")
lines[0] = new            # keep the old signature line, swap the digest
open(path, "w").write("\n".join(lines))
PY
expect_fail ck inspect app:prod
grep -q "app:prod" "$T/last.err" || die "inspect's refusal does not name the tag: $(cat "$T/last.err")"
grep -q "chunkify tag sha256:$d2 app:prod" "$T/last.err" || die "inspect's refusal does not say how to re-tag: $(cat "$T/last.err")"
[ "$(wc -l <"$T/last.err")" = 1 ] || die "more than one message for one failure: $(cat "$T/last.err")"
rc=0; run app:prod || rc=$?
[ $rc != 0 ] || die "kindling run ran a repointed tag: $(cat "$T/run.out")"
grep -q "this is image" "$T/run.out" && die "kindling run ran a workload through a repointed tag"
grep -q "app:prod" "$T/run.err" || die "kindling run's refusal does not name the tag: $(cat "$T/run.err")"
pass "a repointed tag is refused by chunkify inspect and kindling run (exit $rc)"

run "sha256:$d2" || { cat "$T/run.err" >&2; die "running by digest failed"; }
grep -q "this is image two" "$T/run.out" || die "the digest did not run image two"
ck tag "sha256:$d2" app:prod >/dev/null 2>"$T/tag.err" || { cat "$T/tag.err" >&2; die "chunkify tag failed"; }
run app:prod || { cat "$T/run.err" >&2; die "kindling run failed after re-tagging"; }
grep -q "this is image two" "$T/run.out" || die "the re-tagged app:prod does not run image two"
pass "the image runs by digest, and chunkify tag by the key holder repoints the tag"

# ---- an unsigned ref, as an older kindling wrote it -------------------------------------------------------------------
printf '%s\n' "$d1" >"$S/refs/app/legacy"
expect_fail ck inspect app:legacy
grep -q "unsigned" "$T/last.err" || die "the unsigned ref's refusal does not say unsigned: $(cat "$T/last.err")"
ck ls >"$T/ls.out" 2>&1 || { cat "$T/ls.out" >&2; die "chunkify ls failed with an unsigned ref present"; }
grep "app:legacy" "$T/ls.out" | grep -q "refused" || die "chunkify ls does not mark app:legacy refused: $(cat "$T/ls.out")"
ck rm app:legacy >/dev/null 2>"$T/rm.err" || { cat "$T/rm.err" >&2; die "chunkify rm cannot remove an unsigned tag"; }
[ ! -e "$S/refs/app/legacy" ] || die "chunkify rm left the unsigned ref"
pass "an unsigned ref is refused, marked by ls and removable by rm"

# ---- another tenant key ----------------------------------------------------------------------------------------------
other=$T/other.key
head -c 32 /dev/urandom | od -An -tx1 | tr -d " \n" >"$other"
chmod 600 "$other"
rc=0; KINDLING_TENANT_KEY=$other "$CHUNKIFY" --store "$S" inspect app:old >/dev/null 2>"$T/other.err" || rc=$?
[ $rc != 0 ] || die "another tenant key resolved this tenant's tag"
grep -q "app:old" "$T/other.err" || die "the refusal does not name the tag: $(cat "$T/other.err")"
pass "another tenant key cannot use the tag"

# ---- a store that does not exist -------------------------------------------------------------------------------------
nowhere=$T/no-such-store
rc=0; run2=$(timeout 120 "$KINDLING" run app:prod --store "$nowhere" 2>&1) || rc=$?
[ $rc != 0 ] || die "kindling run succeeded on a missing store"
[ ! -e "$nowhere" ] || die "kindling run created the store directory $nowhere"
grep -q "no store at $nowhere" <<<"$run2" || die "kindling run does not say the store is missing: $run2"
rc=0; out=$("$CHUNKIFY" --store "$nowhere" inspect app:prod 2>&1) || rc=$?
[ $rc != 0 ] || die "chunkify inspect succeeded on a missing store"
[ ! -e "$nowhere" ] || die "chunkify inspect created the store directory $nowhere"
grep -q "no store at $nowhere" <<<"$out" || die "chunkify inspect does not say the store is missing: $out"
rc=0; "$CHUNKIFY" --store "$nowhere" import "oci:$T/no-such-layout:1" --name x:1 >/dev/null 2>"$T/bad.err" || rc=$?
[ $rc != 0 ] || die "importing a missing layout succeeded"
[ ! -e "$nowhere" ] || die "a failed first import left the store directory $nowhere"
pass "a missing store is named, not created; a failed first import leaves none"

# ---- an interrupted import ------------------------------------------------------------------------------------------
# A layer large enough that the import is still running when the signal lands;
# the exit status and the message are what is checked, not the timing.
mkdir -p "$T/big"
head -c 400000000 /dev/urandom >"$T/big/blob"
tar -C "$T/big" -cf "$T/big.tar" .
python3 "$KINDLING_SOURCE_DIR/bench/make_layout.py" "$T/layout-big" 1 "$T/big.tar"
rm -rf "$T/big" "$T/big.tar"
"$CHUNKIFY" --store "$S" import "oci:$T/layout-big:1" --name big:1 >/dev/null 2>"$T/int.err" &
imp=$!
track_pid $imp
for ((i = 0; i < 100; i++)); do
  [ -d "$S/leases" ] && [ -n "$(ls -A "$S/leases" 2>/dev/null)" ] && break
  kill -0 $imp 2>/dev/null || break
  sleep 0.1
done
kill -INT $imp 2>/dev/null || true
rc=0; wait $imp || rc=$?
if [ $rc = 0 ]; then
  # The import won the race; it must then be complete and usable.
  ck verify big:1 >/dev/null || die "an import that finished before SIGINT is not verifiable"
  pass "the import finished before SIGINT arrived (nothing to interrupt)"
else
  [ $rc = 130 ] || die "an interrupted import exited $rc, not 130: $(cat "$T/int.err")"
  n=$(grep -c . "$T/int.err" || true)
  [ "$n" -le 2 ] || die "an interrupted import printed $n lines: $(cat "$T/int.err")"
  grep -q "interrupted" "$T/int.err" || die "the message does not say interrupted: $(cat "$T/int.err")"
  expect_fail ck inspect big:1
  pass "an interrupted import exits 130 with one message and publishes nothing"
fi
