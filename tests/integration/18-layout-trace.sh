#!/bin/bash
# Layout from a recorded startup trace (`chunkify import --layout-trace`):
#   - a first `kindling run` records a trace with block runs;
#   - re-imported with it, the image holds the same tree (fsck.erofs, and the
#     kernel's mount compared file by file with the first import's), a start
#     of the same command fetches fewer bytes (the four scattered files it
#     reads now sit together), the import report names the trace, and the
#     manifest records the trace's digest and the image it was recorded on
#     (chunkify inspect);
#   - the same tar and trace give the same manifest;
#   - two traces (two commands of one image) merge in the order given: the
#     manifest names both, the same order gives the same image, another
#     order another one, and the first command's start still fetches less;
#   - a layer the start read nothing of is byte for byte the same region;
#   - a trace of another image (foreign: none of its files are in these
#     layers) gives exactly the plain import's layers and chunks;
#   - bad trace files are refused naming the file and the fault, and nothing
#     is published.
# Missing tools are a failure, not a skip.
# ctest-labels: no-tsan (kindling run end to end, as 51; blockd threads are covered by 40-42 and test_blockd_prefetch)
. "$(dirname "$0")/lib.sh"
need_kindling_run jq python3 tar fsck.erofs mount umount cmp
[ -x "$CHUNKIFY" ] || die "chunkify not built at $CHUNKIFY"

# ---- the image: busybox; 64 data files of 64 KiB of which the entrypoint
# reads four far apart; a layer nothing reads ----------------------------------
mkdir -p "$T/l1/bin" "$T/l1/etc" "$T/l2/app" "$T/l2/data" "$T/l3/opt"
cp /bin/busybox "$T/l1/bin/busybox"
for a in sh cat md5sum; do ln -s busybox "$T/l1/bin/$a"; done
echo 'root:x:0:0:root:/root:/bin/sh' >"$T/l1/etc/passwd"
for i in $(seq -w 0 63); do head -c 65536 /dev/urandom >"$T/l2/data/d$i"; done
cat >"$T/l2/app/entry.sh" <<'EOF'
#!/bin/sh
cat /data/d03 /data/d17 /data/d42 /data/d60 | md5sum
EOF
cat >"$T/l2/app/other.sh" <<'EOF'
#!/bin/sh
cat /data/d10 /data/d03 /data/d51 | md5sum
EOF
chmod 755 "$T/l2/app/entry.sh" "$T/l2/app/other.sh"
head -c 1500000 /dev/urandom >"$T/l3/opt/unread.bin"
for l in l1 l2 l3; do tar -C "$T/$l" --sort=name --mtime=@1700000000 -cf "$T/$l.tar" .; done
python3 "$KINDLING_SOURCE_DIR/bench/make_layout.py" "$T/layout" 1 "$T/l1.tar" "$T/l2.tar" "$T/l3.tar" >/dev/null
python3 "$KINDLING_SOURCE_DIR/bench/make_layout.py" "$T/layout-other" 1 "$T/l3.tar" >/dev/null
want=$(cat "$T/l2/data/d03" "$T/l2/data/d17" "$T/l2/data/d42" "$T/l2/data/d60" | md5sum | cut -d' ' -f1)
want_other=$(cat "$T/l2/data/d10" "$T/l2/data/d03" "$T/l2/data/d51" | md5sum | cut -d' ' -f1)

export KINDLING_HOME=$T/home
ck() { timeout 120 "$CHUNKIFY" "$@"; }
ck --json import "oci:$T/layout:1" --name app:1 >"$T/import1.json" 2>"$T/import1.err" ||
  { cat "$T/import1.err" >&2; die "import of the test image failed"; }
D1=$(jq -r .manifest "$T/import1.json")

# run NAME IMAGE ARGS...: one cold start of the entrypoint; its report in $T/NAME.json.
run() {
  local name=$1 img=$2
  shift 2
  rm -rf "$T/l1-$name"
  kr "$name" "$img" --json --isolation process --l1-dir "$T/l1-$name" "$@" -- /app/entry.sh ||
    { cat "$T/$name.err" >&2; die "kindling run $img ($name) failed"; }
  grep -q "$want" "$T/$name.out" || die "kindling run $img ($name) printed $(cat "$T/$name.out"), not $want"
  tail -1 "$T/$name.err" >"$T/$name.json"
}

# ---- record, re-import ---------------------------------------------------------
run record app:1
TRACE=$KINDLING_HOME/store/traces/$D1
[ -s "$TRACE" ] || die "the first run stored no trace at $TRACE"
jq -e '.block_size == 4096 and (.blocks | length > 0) and all(.blocks[]; length == 2 and .[1] >= 1)' "$TRACE" >/dev/null ||
  die "the trace has no block runs: $(head -c 300 "$TRACE")"
cp "$TRACE" "$T/app.trace"
pass "a start records block runs in its trace"

ck --json import "oci:$T/layout:1" --name app:traced --layout-trace "$T/app.trace" >"$T/import2.json" 2>"$T/import2.err" ||
  { cat "$T/import2.err" >&2; die "import with --layout-trace failed"; }
D2=$(jq -r .manifest "$T/import2.json")
jq -e --arg f "$T/app.trace" --arg d "$D1" '.layout_trace.file == $f and .layout_trace.recorded_on == $d and
  .layout_trace.files >= 5' "$T/import2.json" >/dev/null || die "the import report does not name the trace: $(cat "$T/import2.json")"
[ "$D2" != "$D1" ] || die "the traced layout is the same image as the plain one"
ck import "oci:$T/layout:1" --name app:text --layout-trace "$T/app.trace" >"$T/import-text.out" 2>&1 ||
  die "the text import failed"
grep -q "layout .* files first in .* layers, from trace $T/app.trace (recorded on sha256:$D1)" "$T/import-text.out" ||
  die "the text report does not name the trace: $(cat "$T/import-text.out")"
pass "re-import with --layout-trace; the report names the trace and the image it was recorded on"

ck --json import "oci:$T/layout:1" --name app:again --layout-trace "$T/app.trace" >"$T/import3.json" 2>/dev/null ||
  die "the second traced import failed"
[ "$(jq -r .manifest "$T/import3.json")" = "$D2" ] || die "the same tar and trace gave another manifest"
pass "the same tar and trace give the same manifest"

# ---- several traces: another command of the same image, merged in the order given --------
rm "$TRACE"
kr other app:1 --json --isolation process --l1-dir "$T/l1-other" -- /app/other.sh ||
  { cat "$T/other.err" >&2; die "kindling run app:1 /app/other.sh failed"; }
grep -q "$want_other" "$T/other.out" || die "/app/other.sh printed $(cat "$T/other.out")"
[ -s "$TRACE" ] || die "the start of /app/other.sh stored no trace"
cp "$TRACE" "$T/other.trace"
ck --json import "oci:$T/layout:1" --name app:merged --layout-trace "$T/app.trace" --layout-trace "$T/other.trace" \
  >"$T/merged.json" 2>"$T/merged.err" || { cat "$T/merged.err" >&2; die "import with two --layout-trace failed"; }
jq -e --arg a "$T/app.trace" --arg o "$T/other.trace" '.layout_trace.traces | map(.file) == [$a, $o]' "$T/merged.json" \
  >/dev/null || die "the import report does not list both traces in order: $(cat "$T/merged.json")"
ck --json inspect app:merged >"$T/inspect-merged.json" || die "inspect app:merged failed"
jq -e --arg a "$(sha256sum <"$T/app.trace" | cut -d' ' -f1)" --arg o "$(sha256sum <"$T/other.trace" | cut -d' ' -f1)" \
  '.layout == "trace" and (.layout_traces | map(.trace)) == [$a, $o]' "$T/inspect-merged.json" >/dev/null ||
  die "the merged image's manifest does not name both traces in order: $(cat "$T/inspect-merged.json")"
ck --json import "oci:$T/layout:1" --name app:merged2 --layout-trace "$T/app.trace" --layout-trace "$T/other.trace" \
  >"$T/merged2.json" 2>/dev/null || die "the second merged import failed"
[ "$(jq -r .manifest "$T/merged2.json")" = "$(jq -r .manifest "$T/merged.json")" ] ||
  die "the same traces in the same order gave another manifest"
ck --json import "oci:$T/layout:1" --name app:swapped --layout-trace "$T/other.trace" --layout-trace "$T/app.trace" \
  >"$T/swapped.json" 2>/dev/null || die "the swapped merged import failed"
[ "$(jq -r .manifest "$T/swapped.json")" != "$(jq -r .manifest "$T/merged.json")" ] ||
  die "the order of the traces made no difference, though the first trace's files go first"
pass "two traces merge in the order given: the manifest names both, the same order gives the same image"

# ---- the same tree; the untouched layer's region unchanged -------------------------
ck export app:1 "$T/plain.erofs" && ck export app:traced "$T/traced.erofs" || die "export failed"
timeout 300 fsck.erofs --extract "$T/traced.erofs" >"$T/fsck.out" 2>&1 ||
  { cat "$T/fsck.out" >&2; die "fsck.erofs rejects the traced image"; }
for n in plain traced; do
  mkdir -p "$T/mnt-$n"
  mount -t erofs -o ro "$T/$n.erofs" "$T/mnt-$n" 2>/dev/null || mount -t erofs -o ro,loop "$T/$n.erofs" "$T/mnt-$n" ||
    die "cannot mount the $n export"
  track_mount "$T/mnt-$n"
done
python3 "$(dirname "$0")/treecmp.py" "$T/mnt-plain" "$T/mnt-traced" >"$T/treecmp.out" 2>&1 ||
  { cat "$T/treecmp.out" >&2; die "the traced image's tree differs from the plain one's"; }
pass "the traced image passes fsck.erofs and holds the same tree"

ck --json inspect app:1 >"$T/inspect1.json" && ck --json inspect app:traced >"$T/inspect2.json" || die "inspect failed"
jq -e '.layout == "usual" and (has("layout_traces") | not)' "$T/inspect1.json" >/dev/null ||
  die "the plain import's manifest names a layout trace: $(cat "$T/inspect1.json")"
TD=$(sha256sum "$T/app.trace" | cut -d' ' -f1)
jq -e --arg t "$TD" --arg d "$D1" '.layout == "trace" and .layout_traces == [{trace: $t, recorded_on: $d}]' \
  "$T/inspect2.json" >/dev/null || die "inspect does not name the trace $TD recorded on $D1: $(cat "$T/inspect2.json")"
pass "the traced image's manifest records the trace's digest and the image it was recorded on"
region() { jq -r ".layers[$2] | \"\(.offset) \(.length)\"" "$1"; }
read -r o1 n1 < <(region "$T/inspect1.json" 2)
read -r o2 n2 < <(region "$T/inspect2.json" 2)
[ "$n1" = "$n2" ] && [ "$n1" -gt 0 ] || die "layer 3's region is $n1 bytes plain, $n2 traced"
cmp <(tail -c +$((o1 + 1)) "$T/plain.erofs" | head -c "$n1") <(tail -c +$((o2 + 1)) "$T/traced.erofs" | head -c "$n2") ||
  die "layer 3, which the start never read, has other bytes in the traced image"
pass "a layer the start read nothing of keeps its bytes"

# ---- the start fetches less ------------------------------------------------------------------------
run plain app:1 --no-prefetch --readahead 0
run traced app:traced --no-prefetch --readahead 0
run merged app:merged --no-prefetch --readahead 0
f1=$(jq .bytes_fetched "$T/plain.json")
f2=$(jq .bytes_fetched "$T/traced.json")
f3=$(jq .bytes_fetched "$T/merged.json")
[ "$f2" -lt "$f1" ] || die "the traced image's start fetched $f2 bytes, the plain one's $f1"
[ "$f3" -lt "$f1" ] || die "on the image merged from two traces the start fetched $f3 bytes, on the plain one $f1"
pass "the same start fetches $f2 bytes instead of $f1 ($f3 on the image merged from its trace and another)"

# ---- a foreign trace changes nothing ----------------------------------------------------------------
ck --json import "oci:$T/layout-other:1" --name other:1 >"$T/other1.json" 2>/dev/null || die "import of other failed"
ck --json import "oci:$T/layout-other:1" --name other:traced --layout-trace "$T/app.trace" >"$T/other2.json" 2>"$T/other2.err" ||
  { cat "$T/other2.err" >&2; die "import of other with a foreign trace failed"; }
# The manifests differ only in naming the trace: the same layers and chunks.
ck --json inspect other:1 --chunks >"$T/other1-inspect.json" && ck --json inspect other:traced --chunks >"$T/other2-inspect.json" ||
  die "inspect of other failed"
layout_of() { jq -c '{image_size, metadata_offset, layers, chunks}' "$1"; }
[ "$(layout_of "$T/other1-inspect.json")" = "$(layout_of "$T/other2-inspect.json")" ] ||
  die "a trace of another image changed the layout of layers it read nothing of"
jq -e '.layout == "trace"' "$T/other2-inspect.json" >/dev/null || die "the foreign-traced import does not name its trace"
pass "a foreign trace gives the plain import's layers and chunks (its manifest names the trace)"

# ---- bad traces are refused ---------------------------------------------------------------------------
# bad NAME EXPECT: write the trace file $T/NAME.trace first; the import must
# fail, name the file and say EXPECT, and publish nothing.
bad() {
  local name=$1 expect=$2
  if ck import "oci:$T/layout:1" --name "bad:$name" --layout-trace "$T/$name.trace" >"$T/bad-$name.out" 2>&1; then
    die "a trace that is $name was accepted"
  fi
  grep -q "$T/$name.trace" "$T/bad-$name.out" || die "the error for $name does not name the file: $(cat "$T/bad-$name.out")"
  grep -q "$expect" "$T/bad-$name.out" || die "the error for $name does not say \"$expect\": $(cat "$T/bad-$name.out")"
  ! ck ls | grep -q "^bad:$name " || die "the refused import of $name published bad:$name"
}
echo 'not json' >"$T/garbage.trace"
bad garbage "not valid JSON"
jq -c 'del(.blocks, .block_size)' "$T/app.trace" >"$T/chunks-only.trace"
bad chunks-only 'no "blocks"'
jq -c '.blocks += [[1000000000, 1]]' "$T/app.trace" >"$T/past-end.trace"
bad past-end "lies past the end of image"
jq -c '.manifest = "0000000000000000000000000000000000000000000000000000000000000000"' "$T/app.trace" >"$T/gone.trace"
bad gone "does not hold"
bad missing "cannot read the layout trace"
jq -c '.blocks[0] = [1, 0]' "$T/app.trace" >"$T/empty-run.trace"
bad empty-run "blocks\[0\]"
pass "bad traces are refused, naming the file and the fault; nothing is published"
