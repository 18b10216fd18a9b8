#!/usr/bin/env bash
# chunkify gc: deletes exactly the unreferenced chunks, keeps shared ones,
# and never races an import running at the same time.
# ctest-labels: no-asan (gc and imports in a loop: long under ASan; TSan covers its races)
. "$(dirname "$0")/lib.sh"

# Two images sharing a base layer: A = base + a, B = base + b.
mkdir -p "$T/src/base/usr/lib" "$T/src/a/app" "$T/src/b/app"
cp -a /usr/lib/python3.11/email /usr/lib/python3.11/json /usr/lib/python3.11/asyncio "$T/src/base/usr/lib/"
head -c 3000000 /dev/urandom > "$T/src/a/app/a.bin"
head -c 3000000 /dev/urandom > "$T/src/b/app/b.bin"
for l in base a b; do tar -C "$T/src/$l" -cf "$T/$l.tar" .; done
python3 "$KINDLING_SOURCE_DIR/bench/make_layout.py" "$T/A" a "$T/base.tar" "$T/a.tar"
python3 "$KINDLING_SOURCE_DIR/bench/make_layout.py" "$T/B" b "$T/base.tar" "$T/b.tar"
store=$T/store
ck() { "$CHUNKIFY" --store "$store" "$@"; }
nchunks() { find "$store/chunks" -type f ! -name '.tmp-*' | wc -l; }
names() { ck inspect "$1" --chunks --json | jq -r '.chunks[].name' | sort -u; }

ck import "oci:$T/A:a" --name a:1 >/dev/null
ck import "oci:$T/B:b" --name b:1 >/dev/null
all=$(nchunks)
only_a=$(comm -23 <(names a:1) <(names b:1) | wc -l)
[ "$only_a" -gt 0 ] || die "test images share every chunk"

# Nothing is garbage yet.
out=$(ck gc --json)
[ "$(jq .chunks_deleted <<<"$out")" -eq 0 ] || die "gc deleted referenced chunks: $out"
[ "$(nchunks)" -eq "$all" ] || die "chunk count changed"
pass "gc with everything referenced deletes nothing"

# Remove A: --dry-run reports, gc deletes exactly A's own chunks; B intact.
ck rm a:1 >/dev/null
out=$(ck gc --dry-run --json)
[ "$(jq .chunks_deleted <<<"$out")" -eq "$only_a" ] || die "dry run counted $(jq .chunks_deleted <<<"$out"), expected $only_a"
[ "$(nchunks)" -eq "$all" ] || die "dry run deleted chunks"
out=$(ck gc --json)
[ "$(jq .chunks_deleted <<<"$out")" -eq "$only_a" ] || die "gc deleted $(jq .chunks_deleted <<<"$out"), expected $only_a"
[ "$(nchunks)" -eq $((all - only_a)) ] || die "store holds $(nchunks) chunks, expected $((all - only_a))"
ck verify b:1 >/dev/null || die "B broken after gc"
ck ls | grep -q '^a:1' && die "a:1 still listed"
pass "gc deletes exactly the unreferenced chunks and keeps shared ones"

# A gc marker that is live makes an import wait; the import finishes once
# the marker goes away.
mkdir -p "$store/gc" && echo "kindling-gc/1 test" > "$store/gc/running"
ck import "oci:$T/A:a" --name a:2 > "$T/wait.out" 2>"$T/wait.err" &
imp=$!; track_pid $imp
sleep 2
kill -0 $imp 2>/dev/null || die "import did not wait for the running gc: $(cat "$T/wait.err")"
grep -q "waiting for a running" "$T/wait.err" || die "import did not say why it waits"
rm -f "$store/gc/running"
wait $imp || die "import failed after the gc marker went away"
ck verify a:2 >/dev/null || die "a:2 broken"

pass "an import waits while a gc runs"

# A second gc refuses to run while one is marked as running.
echo "kindling-gc/1 test" > "$store/gc/running"
expect_fail ck gc
grep -q "another gc is running" "$T/last.err" || die "no clear message for a concurrent gc"
rm -f "$store/gc/running"
pass "concurrent gc refused"

# Leases: a live one (written by an import that is still running) keeps the
# chunks it names; one whose newest part is older than the TTL belongs to a
# dead import and is ignored.
ck rm a:2 >/dev/null
mkdir -p "$store/leases"
ck import "oci:$T/A:a" --name a:3 >/dev/null
{ echo "kindling-lease/1 host=test pid=1 ref=a:3"; names a:3; } > "$store/leases/00000000deadbeef.0"
ck rm a:3 >/dev/null
out=$(ck gc --json)
[ "$(jq .chunks_deleted <<<"$out")" -eq 0 ] || die "gc deleted chunks a live lease names: $out"
[ "$(jq .live_leases <<<"$out")" -eq 1 ] || die "gc did not count the live lease: $out"
touch -d '2 hours ago' "$store/leases/00000000deadbeef.0"
out=$(ck gc --json)
[ "$(jq .expired_leases <<<"$out")" -eq 1 ] || die "gc did not see the lease as expired: $out"
[ "$(jq .chunks_deleted <<<"$out")" -eq "$only_a" ] || die "gc kept chunks only a dead lease names: $out"
out=$(KINDLING_LEASE_TTL=86400 ck gc --json)
[ "$(jq .live_leases <<<"$out")" -eq 1 ] || die "KINDLING_LEASE_TTL not honoured: $out"
rm -f "$store/leases/00000000deadbeef.0"
ck import "oci:$T/A:a" --name a:2 >/dev/null
pass "live leases protect their chunks; expired leases are ignored"

# The race: chunks exist but are unreferenced (image removed), an import of
# the same image finds them present (dedup) while gc runs in a loop.  Without
# the lease protocol gc deletes them under the import and the published
# image is missing chunks.
for round in 1 2 3 4 5; do
  ck rm a:2 >/dev/null 2>&1 || true
  ck rm "a:r$((round - 1))" >/dev/null 2>&1 || true
  ( for i in $(seq 1 40); do ck gc >/dev/null 2>&1 || true; done ) &
  gcloop=$!; track_pid $gcloop
  ck import "oci:$T/A:a" --name "a:r$round" --workers 2 --json > "$T/race.json"
  wait $gcloop || true
  ck verify "a:r$round" >/dev/null || die "round $round: image published with chunks gc deleted"
done
pass "imports racing a gc loop always publish complete images (5 rounds)"
assert_no_tmp "$store"
