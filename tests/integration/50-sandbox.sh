#!/bin/bash
# The process sandbox (vmm/): an OCI image built with umoci around a static
# busybox, imported and exported by chunkify, run from the EROFS file by
# sandbox_run.  Checks output streaming, exit codes, the image's env/workdir/
# user, the tmpfs overlay, the pid/net/uts/mount namespaces, the seccomp
# filter's EPERM list, a uid outside the user namespace refused clearly, cgroup memory and pids limits (or the notice where the host has
# none), timings, and that no mount, loop device or cgroup is left behind.
# Long-lived sandboxes (sandbox.h's runtime_api_port, on_ready, stop_fd,
# memory_peak): busybox wget and nc inside reach the Runtime API endpoint that
# sandbox_run serves on the descriptor on_ready hands it (bodies byte for
# byte both ways, a half-close), while a host process cannot connect to that
# port on the host's 127.0.0.1; a workload that loops forever is ended
# through stop_fd with nothing left running; on_ready can refuse; the peak
# memory is at least what a workload touched.
# ctest-labels: no-tsan (the sandbox is a process tree, not threads)
. "$(dirname "$0")/lib.sh"

for tool in umoci gcc jq sha256sum mount; do
  command -v "$tool" >/dev/null || die "$tool is missing (scripts/apt-packages.txt)"
done
[ -x /bin/busybox ] || die "/bin/busybox is missing (Debian package busybox-static)"
file -b /bin/busybox 2>/dev/null | grep -q 'statically linked' || ldd /bin/busybox 2>&1 | grep -q 'not a dynamic' ||
  die "/bin/busybox is not static (install busybox-static)"
[ "$(id -u)" = 0 ] || die "the process sandbox needs root"
[ -x "$CHUNKIFY" ] || die "chunkify not built at $CHUNKIFY"
SBX=$TOOLS_DIR/sandbox_run
[ -x "$SBX" ] || die "sandbox_run not built at $SBX"

# ---- the image --------------------------------------------------------------
R=$T/rootfs
mkdir -p "$R"/{bin,etc,app,data,tmp,proc,dev,usr/bin,usr/local/bin}
cp /bin/busybox "$R/bin/busybox"
for a in $(/bin/busybox --list); do
  [ "$a" = busybox ] || ln -sf busybox "$R/bin/$a"
done
cat >"$R/etc/passwd" <<'EOF'
root:x:0:0:root:/root:/bin/sh
app:x:1234:2345:the app:/home/app:/bin/sh
nobody:x:65534:65534:nobody:/nonexistent:/bin/false
EOF
cat >"$R/etc/group" <<'EOF'
root:x:0:
appgrp:x:2345:
extra:x:3456:app,someone
nogroup:x:65534:
EOF
mkdir -p "$R/home/app"
echo "image data" >"$R/data/file.txt"
cat >"$R/app/entry.sh" <<'EOF'
#!/bin/sh
echo "entry: hello from $(id -u):$(id -g) in $(pwd) greeting=$GREETING args=$*"
exit 7
EOF
chmod 755 "$R/app/entry.sh"
# Syscalls busybox has no applet for: each prints "NAME errno" after the call.
cat >"$T/probe.c" <<'EOF'
#define _GNU_SOURCE
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <sched.h>
#include <sys/syscall.h>
#include <unistd.h>
static void p(const char *n, long r) { printf("%s %s\n", n, r < 0 ? strerrorname_np(errno) : "OK"); }
int main(void)
{
	p("kexec_load", syscall(SYS_kexec_load, 0, 0, 0, 0));
	p("init_module", syscall(SYS_init_module, "", 0, ""));
	p("finit_module", syscall(SYS_finit_module, 0, "", 0));
	p("bpf", syscall(SYS_bpf, 0, 0, 0));
	p("perf_event_open", syscall(SYS_perf_event_open, 0, 0, -1, -1, 0));
	p("keyctl", syscall(SYS_keyctl, 0, 0, 0, 0, 0));
	p("ptrace", syscall(SYS_ptrace, 16 /* ATTACH */, 1, 0, 0));
	p("userfaultfd", syscall(SYS_userfaultfd, 0));
	p("unshare_user", syscall(SYS_unshare, CLONE_NEWUSER));
	p("clone_newuser", syscall(SYS_clone, CLONE_NEWUSER | 17 /* SIGCHLD */, 0, 0, 0, 0));
	p("setns", syscall(SYS_setns, 0, 0));
	p("iopl", syscall(SYS_iopl, 3));
	p("open_by_handle_at", syscall(SYS_open_by_handle_at, 0, 0, 0));
	p("getpid", syscall(SYS_getpid));
	return 0;
}
EOF
gcc -static -O1 -o "$R/usr/bin/probe" "$T/probe.c" || die "gcc -static of the syscall probe failed (libc6-dev?)"
# Memory hog: touches N MiB, then says so.
cat >"$T/hog.c" <<'EOF'
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
int main(int argc, char **argv)
{
	size_t mib = (size_t)atol(argv[1]);
	for (size_t i = 0; i < mib; i++) {
		char *p = malloc(1 << 20);
		if (!p) { printf("malloc failed at %zu MiB\n", i); return 3; }
		memset(p, 1, 1 << 20);
	}
	printf("touched %zu MiB\n", mib);
	return 0;
}
EOF
gcc -static -O1 -o "$R/usr/bin/hog" "$T/hog.c" || die "gcc -static of the memory hog failed"

# Fork bomb: tries to hold N processes at once; says how many it got and why it stopped.
cat >"$T/forker.c" <<'EOF'
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
int main(int argc, char **argv)
{
	int n = atoi(argv[1]), got = 0, err = 0;
	for (int i = 0; i < n; i++) {
		pid_t p = fork();
		if (p == 0) { pause(); _exit(0); }
		if (p < 0) { err = errno; break; }
		got++;
	}
	printf("forked=%d stopped=%s\n", got, err ? strerror(err) : "no");
	fflush(stdout);
	kill(0, SIGKILL);
	return 0;
}
EOF
gcc -static -O1 -o "$R/usr/bin/forker" "$T/forker.c" || die "gcc -static of the fork bomb failed"

L=$T/layout
umoci init --layout "$L" >/dev/null
umoci new --image "$L:1" >/dev/null
umoci unpack --image "$L:1" "$T/bundle" >/dev/null
rm -rf "$T/bundle/rootfs"
mv "$R" "$T/bundle/rootfs"
umoci repack --image "$L:1" "$T/bundle" >/dev/null
umoci config --image "$L:1" --os linux --architecture amd64 \
  --config.entrypoint /app/entry.sh --config.cmd one --config.cmd two \
  --config.env GREETING=hi-from-image --config.env PATH=/usr/local/bin:/usr/bin:/bin \
  --config.workingdir /data --config.user app >/dev/null

"$CHUNKIFY" import "oci:$L:1" --name sbx:1 >/dev/null 2>"$T/import.err" ||
  { cat "$T/import.err" >&2; die "chunkify import failed"; }
"$CHUNKIFY" inspect sbx:1 --json >"$T/inspect.json" || die "chunkify inspect failed"
[ "$(jq -r .config.user "$T/inspect.json")" = app ] || die "inspect: user is not app: $(cat "$T/inspect.json")"
IMG=$T/sbx.erofs
"$CHUNKIFY" export sbx:1 "$IMG" || die "chunkify export failed"
SUM=$(sha256sum "$IMG" | cut -d' ' -f1)
pass "image built (busybox, probe, hog), imported, exported ($(stat -c %s "$IMG") bytes)"

# Host state the sandbox must not change: mounts of (or loop devices on) our
# files.  Only ours: other tests may mount and unmount on this host meanwhile.
host_state() { echo "mounts=$(grep -c -e "$T" -e kindling-scratch /proc/self/mountinfo || true) loops=$(losetup -j "$IMG" | wc -l)"; }
BEFORE=$(host_state)

# run OUTFILE ARGS...: sandbox_run with the image config; stdout to OUTFILE,
# stderr to OUTFILE.err; returns the sandbox's exit status.
run() {
  local out=$1
  shift
  local rc=0
  timeout 120 "$SBX" "$IMG" --config "$T/inspect.json" "$@" >"$out" 2>"$out.err" || rc=$?
  return $rc
}

# ---- entrypoint, output, exit code, env, workdir, user ----------------------
rc=0; run "$T/e.out" --json || rc=$?
[ "$rc" = 7 ] || { cat "$T/e.out" "$T/e.out.err" >&2; die "entrypoint exit code: got $rc, want 7"; }
grep -qx "entry: hello from 1234:2345 in /data greeting=hi-from-image args=one two" "$T/e.out" ||
  { cat "$T/e.out" "$T/e.out.err" >&2; die "entrypoint output wrong"; }
J=$(tail -1 "$T/e.out.err")
echo "$J" | jq -e '.status == 7 and .exit_code == 7 and .first_output_s > 0 and .exit_s >= .first_output_s and .out_bytes > 0' \
  >/dev/null || die "summary wrong: $J"
MOUNT_KIND=$(echo "$J" | jq -r .mount)
[ "$MOUNT_KIND" = file ] || [ "$MOUNT_KIND" = loop ] || die "mount kind: $J"
pass "entrypoint+cmd ran as app (1234:2345) in /data with image env; exit 7; first output $(echo "$J" | jq .first_output_s) s, exit $(echo "$J" | jq .exit_s) s; mount: $MOUNT_KIND"

for code in 0 3 42; do
  rc=0; run "$T/x.out" -- sh -c "exit $code" || rc=$?
  [ "$rc" = "$code" ] || die "exit code $code came back as $rc"
done
rc=0; run "$T/x.out" -- sh -c 'kill -TERM $$' || rc=$?
[ "$rc" = $((128 + 15)) ] || die "a SIGTERM death came back as $rc, want 143"
rc=0; run "$T/x.out" -- no-such-command || rc=$?
[ "$rc" = 127 ] || die "a missing command came back as $rc, want 127"
grep -q 'not found in the image' "$T/x.out.err" || die "missing command: no clear error: $(cat "$T/x.out.err")"
pass "exit codes 0/3/42, signal (143) and missing command (127) propagate"

run "$T/id.out" --env EXTRA=override -- sh -c 'id -u; id -g; id -G; id -un; echo HOME=$HOME; pwd; echo $GREETING; echo $EXTRA'
[ "$(cat "$T/id.out")" = "$(printf '1234\n2345\n2345 3456\napp\nHOME=/home/app\n/data\nhi-from-image\noverride')" ] ||
  { cat "$T/id.out" "$T/id.out.err" >&2; die "user/group/env/workdir inside are wrong"; }
run "$T/u.out" --user nobody --workdir /tmp -- sh -c 'id -u; id -g; pwd'
[ "$(cat "$T/u.out")" = "$(printf '65534\n65534\n/tmp')" ] || die "--user nobody --workdir /tmp: $(cat "$T/u.out")"
run "$T/u.out" --user 4321:appgrp -- sh -c 'id -u; id -g'
[ "$(cat "$T/u.out")" = "$(printf '4321\n2345')" ] || die "--user 4321:appgrp: $(cat "$T/u.out")"
run "$T/u.out" --user 0 -- id -u
[ "$(cat "$T/u.out")" = 0 ] || die "--user 0: $(cat "$T/u.out")"
rc=0; run "$T/u.out" --user 70000 -- id -u || rc=$?
[ "$rc" = 125 ] && grep -q "outside the sandbox's user namespace" "$T/u.out.err" ||
  die "a uid beyond the user namespace's 65536 ids: rc $rc, $(cat "$T/u.out.err")"
rc=0; run "$T/u.out" --userns off --user 70000 -- id -u || rc=$?
[ "$rc" = 0 ] && [ "$(cat "$T/u.out")" = 70000 ] || die "--userns off --user 70000: rc $rc, $(cat "$T/u.out" "$T/u.out.err")"
rc=0; run "$T/u.out" --user no-such-user -- id -u || rc=$?
[ "$rc" != 0 ] && grep -q "not in the image's /etc/passwd" "$T/u.out.err" || die "unknown user was not refused clearly"
# The host's users are never consulted: a host-only name does not resolve.
grep -q '^daemon:' /etc/passwd && { rc=0; run "$T/u.out" --user daemon -- id -u || rc=$?; [ "$rc" != 0 ] ||
  die "user daemon resolved from the host's /etc/passwd"; }
pass "image user by name (app -> 1234, groups 2345 3456), numeric, uid:group, unknown refused, HOME, env override"

# ---- writes go to the overlay ---------------------------------------------
run "$T/w.out" --user 0 -- sh -c 'echo scribble >/data/file.txt; echo new >/etc/newfile; rm /bin/ls; cat /data/file.txt; ls /etc/newfile'
[ "$(cat "$T/w.out")" = "$(printf 'scribble\n/etc/newfile')" ] || die "writes inside failed: $(cat "$T/w.out" "$T/w.out.err")"
run "$T/w.out" --user 0 -- sh -c 'cat /data/file.txt; ls /etc/newfile 2>&1; ls /bin/ls'
grep -qx "image data" "$T/w.out" || die "a write leaked into the next run: $(cat "$T/w.out")"
grep -q "No such file" "$T/w.out" || die "a created file survived into the next run"
grep -qx "/bin/ls" "$T/w.out" || die "a deleted file stayed deleted in the next run"
[ "$(sha256sum "$IMG" | cut -d' ' -f1)" = "$SUM" ] || die "the image file changed"
pass "writes land in the tmpfs overlay: gone on the next run, image sha256 unchanged"

# ---- namespaces -------------------------------------------------------------
run "$T/ns.out" -- sh -c 'echo pid=$$; ls /proc | grep -c "^[0-9]"; ps -o pid,comm | tail -n +2; hostname; ls /sys/class/net 2>/dev/null || ip -o link | cut -d: -f2; cat /proc/1/cmdline | tr "\0" " "'
cat "$T/ns.out" >"$T/ns.log"
PID=$(sed -n 's/^pid=//p' "$T/ns.out")
[ "$PID" -le 3 ] || die "the workload is pid $PID in its namespace, want <= 3"
NPROC=$(sed -n 2p "$T/ns.out")
[ "$NPROC" -le 6 ] || die "/proc lists $NPROC processes: host processes visible? $(cat "$T/ns.out")"
grep -q "^kindling$" "$T/ns.out" || die "hostname is not kindling: $(cat "$T/ns.out")"
IFACES=$(run "$T/if.out" -- ip -o link && cut -d: -f2 "$T/if.out" | tr -d ' ' | sort | tr '\n' ' ')
[ "$IFACES" = "lo " ] || die "network interfaces inside: '$IFACES', want only lo"
grep -q "state UP\|UP" "$T/if.out" || die "lo is not up: $(cat "$T/if.out")"
run "$T/h.out" --hostname other -- hostname
[ "$(cat "$T/h.out")" = other ] || die "--hostname other gave $(cat "$T/h.out")"
pass "pid namespace (workload pid $PID, $NPROC processes in /proc), net namespace (only lo, up), hostname kindling"

# A mount made on the host stays invisible inside, and nothing of the host's tree shows.
mkdir -p "$T/hostmnt"
mount -t tmpfs hostsecret "$T/hostmnt"
track_mount "$T/hostmnt"
echo secret >"$T/hostmnt/s"
run "$T/m.out" -- sh -c 'cat /proc/mounts; ls /'
grep -q hostsecret "$T/m.out" && die "a host mount is visible inside"
grep -q "$T" "$T/m.out" && die "host paths are visible in the sandbox's mounts"
grep -q ' / overlay ro\| / overlay rw' "$T/m.out" || die "/ is not the overlay: $(cat "$T/m.out")"
grep -q ' /proc proc ' "$T/m.out" || die "/proc not mounted"
grep -q ' /tmp tmpfs ' "$T/m.out" || die "/tmp not a tmpfs"
grep -q ' /proc/sys proc ro' "$T/m.out" || die "/proc/sys is not read-only"
umount "$T/hostmnt"
run "$T/d.out" -- sh -c 'ls /dev; head -c 4 /dev/zero | od -An -tx1; head -c 8 /dev/urandom | wc -c; echo x >/dev/null && echo null-ok'
for n in null zero random urandom tty; do grep -qx "$n" "$T/d.out" || die "/dev/$n missing: $(cat "$T/d.out")"; done
grep -q "00 00 00 00" "$T/d.out" && grep -qx 8 "$T/d.out" && grep -qx null-ok "$T/d.out" || die "/dev nodes do not work"
rc=0; run "$T/s.out" --user 0 -- sh -c 'echo 1 >/proc/sys/kernel/sysrq' || rc=$?
[ "$rc" != 0 ] || die "/proc/sys is writable inside"
pass "mount namespace: host mounts invisible, / is the overlay, /proc (sys read-only), /tmp tmpfs, minimal /dev"

# ---- seccomp: the EPERM list -------------------------------------------------------
run "$T/p.out" --user 0 -- probe
for s in kexec_load init_module finit_module bpf perf_event_open keyctl ptrace userfaultfd unshare_user clone_newuser setns iopl open_by_handle_at; do
  grep -qx "$s EPERM" "$T/p.out" || die "seccomp: $s was not refused with EPERM: $(grep "^$s " "$T/p.out")"
done
grep -qx "getpid OK" "$T/p.out" || die "seccomp denied getpid"
rc=0; run "$T/b.out" --user 0 -- sh -c 'unshare -m true' || rc=$?
[ "$rc" != 0 ] && grep -qiE "not permitted|permission denied" "$T/b.out.err" || die "busybox unshare was not refused: $(cat "$T/b.out.err")"
rc=0; run "$T/b.out" --user 0 -- sh -c 'mount -t tmpfs x /mnt' || rc=$?
[ "$rc" != 0 ] && grep -qiE "not permitted|permission denied" "$T/b.out.err" || die "busybox mount was not refused: $(cat "$T/b.out.err")"
rc=0; run "$T/b.out" --user 0 -- sh -c 'umount /proc' || rc=$?
[ "$rc" != 0 ] || die "busybox umount /proc succeeded"
rc=0; run "$T/b.out" --user 0 -- sh -c 'insmod /data/file.txt' || rc=$?
[ "$rc" != 0 ] && grep -qiE "not permitted|permission denied" "$T/b.out.err" || die "busybox insmod was not refused: $(cat "$T/b.out.err")"
rc=0; run "$T/b.out" --user 0 -- sh -c 'swapoff -a; swapon /data/file.txt' || rc=$?
grep -qiE "not permitted|permission denied" "$T/b.out.err" || die "busybox swapon was not refused with EPERM: $(cat "$T/b.out.err")"
run "$T/c.out" --user 0 -- sh -c 'grep -E "^(CapBnd|CapEff|Seccomp|NoNewPrivs)" /proc/self/status'
grep -q "Seccomp:.*2" "$T/c.out" || die "the workload runs without a seccomp filter: $(cat "$T/c.out")"
grep -q "NoNewPrivs:.*1" "$T/c.out" || die "no_new_privs is not set"
BND=$(sed -n 's/^CapBnd:\s*//p' "$T/c.out")
# CAP_SYS_ADMIN is bit 21.
(( (16#$BND >> 21) & 1 )) && die "CAP_SYS_ADMIN is still in the bounding set ($BND)"
pass "seccomp: kexec/init_module/bpf/perf/keyctl/ptrace/userfaultfd/user-ns/setns/iopl/open_by_handle_at, busybox unshare/mount/umount/insmod/swapon -> EPERM; CAP_SYS_ADMIN dropped (CapBnd $BND)"

# ---- cgroup limits ----------------------------------------------------------
CG=none
if [ -r /sys/fs/cgroup/cgroup.controllers ] && grep -qw memory /sys/fs/cgroup/cgroup.controllers &&
  grep -qw pids /sys/fs/cgroup/cgroup.controllers; then
  CG=v2
elif [ -d /sys/fs/cgroup/memory ] && [ -d /sys/fs/cgroup/pids ] && [ -w /sys/fs/cgroup/pids ]; then
  CG=v1
fi
echo "host cgroups: $CG (/sys/fs/cgroup/cgroup.controllers: $(cat /sys/fs/cgroup/cgroup.controllers 2>/dev/null || echo absent))"
rc=0; run "$T/mem.out" --json --mem $((64 << 20)) -- hog 256 || rc=$?
J=$(tail -1 "$T/mem.out.err")
if [ "$CG" = none ]; then
  grep -q "notice: no usable cgroup" "$T/mem.out.err" || die "no cgroups here, but no notice: $(cat "$T/mem.out.err")"
  [ "$rc" = 0 ] || die "without cgroups the hog should finish: rc $rc"
  pass "memory limit: this host has no usable cgroup; the notice is printed"
else
  [ "$(echo "$J" | jq -r .cgroup)" = "$CG" ] || die "cgroup kind: $J (want $CG)"
  [ "$rc" = 137 ] && echo "$J" | jq -e '.oom_killed' >/dev/null ||
    die "a 256 MiB hog under a 64 MiB limit was not OOM-killed: rc $rc, $J, $(cat "$T/mem.out")"
  grep -q "touched 256" "$T/mem.out" && die "the hog finished under the limit"
  [ "$CG" = v1 ] && { grep -q "notice: cgroup v2 not usable" "$T/mem.out.err" || die "v1 fallback without a notice"; }
  run "$T/mem2.out" --mem $((64 << 20)) -- hog 16
  grep -q "touched 16" "$T/mem2.out" || die "a 16 MiB hog failed under a 64 MiB limit"
  pass "memory limit (cgroup $CG): 256 MiB hog OOM-killed under 64 MiB (exit 137), 16 MiB fine"
fi
# A fork bomb: with pids.max it is bounded (the sandbox is killed at its end,
# so the bomb's children never outlive the run either way).
rc=0; run "$T/pids.out" --pids 32 -- forker 2000 || rc=$?
N=$(sed -n 's/^forked=\([0-9]*\).*/\1/p' "$T/pids.out")
if [ "$CG" = none ]; then
  grep -q "notice: no usable cgroup" "$T/pids.out.err" || die "no cgroups here, but no notice for --pids"
  pass "pids limit: no usable cgroup here; notice printed"
else
  [ -n "$N" ] && [ "$N" -lt 32 ] && grep -q "stopped=Resource temporarily unavailable" "$T/pids.out" ||
    die "fork bomb under --pids 32: $(cat "$T/pids.out" "$T/pids.out.err" | tail -5)"
  pass "pids limit (cgroup $CG): a 2000-process fork bomb stopped at $N forks (EAGAIN) under --pids 32"
fi
if [ "$CG" != none ]; then
  # The cgroup a run used (named after its monitor's pid) is gone afterwards.
  run "$T/cg.out" --mem $((64 << 20)) --pids 32 -- cat /proc/self/cgroup
  NAME=$(grep -o 'kindling-sandbox-[0-9]*' "$T/cg.out" | sort -u)
  [ "$(echo "$NAME" | wc -w)" = 1 ] || die "the workload is not in one sandbox cgroup: $(cat "$T/cg.out")"
  # find exits 1 when another test's cgroup vanishes under it mid-walk; what
  # it printed is still the answer, so only its output is judged.
  left=$({ find /sys/fs/cgroup -maxdepth 6 -type d -name "$NAME" 2>/dev/null || true; } | head -3)
  [ -z "$left" ] || die "sandbox cgroup left behind: $left"
  pass "the workload ran in cgroup $NAME, removed afterwards"
fi

# ---- loop device path, timeouts, isolation choice --------------------------
run "$T/l.out" --json --mount loop -- cat /data/file.txt
[ "$(cat "$T/l.out")" = "image data" ] && [ "$(tail -1 "$T/l.out.err" | jq -r .mount)" = loop ] ||
  die "--mount loop failed: $(cat "$T/l.out" "$T/l.out.err")"
rc=0; run "$T/t.out" --timeout 1 -- sleep 30 || rc=$?
[ "$rc" = 137 ] || die "--timeout 1 on sleep 30 gave $rc"
rc=0; run "$T/i.out" --isolation microvm -- true || rc=$?
# Refused, naming why: no /dev/kvm, or no guest kernel (microvm_refusal).
[ "$rc" = 125 ] && grep -qF "$(microvm_refusal)" "$T/i.out.err" ||
  die "--isolation microvm was not refused clearly: $(cat "$T/i.out.err")"
run "$T/i.out" --isolation auto -- true
grep -qF "$(microvm_auto_fallback)" "$T/i.out.err" ||
  die "auto gave no notice: $(cat "$T/i.out.err")"
pass "loop-device mount works, --timeout kills, microvm refused honestly, auto -> process with a notice"

# ---- a plain directory as the root (rootfs_dir: the eager baseline's path) ---
D=$T/bundle/rootfs # the tree the image was built from, unpacked on the host
rc=0; timeout 120 "$SBX" "$D" --config "$T/inspect.json" --json >"$T/dir.out" 2>"$T/dir.out.err" || rc=$?
[ "$rc" = 7 ] && grep -qx "entry: hello from 1234:2345 in /data greeting=hi-from-image args=one two" "$T/dir.out" &&
  [ "$(tail -1 "$T/dir.out.err" | jq -r .mount)" = dir ] || die "rootfs dir run: rc $rc, $(cat "$T/dir.out" "$T/dir.out.err")"
timeout 120 "$SBX" "$D" --user 0 -- sh -c 'echo scribble >/data/file.txt; cat /data/file.txt; grep -c " / overlay " /proc/mounts' \
  >"$T/dir.out" 2>"$T/dir.out.err" || die "rootfs dir write: $(cat "$T/dir.out.err")"
[ "$(cat "$T/dir.out")" = "$(printf 'scribble\n1')" ] || die "rootfs dir write inside: $(cat "$T/dir.out")"
[ "$(cat "$D/data/file.txt")" = "image data" ] || die "a write inside reached the host directory"
pass "a plain rootfs directory runs the same entrypoint (mount kind dir); writes stay in the overlay"

# A root the kernel cannot idmap (a directory on overlayfs): the workload
# still runs, without a user namespace, and a notice says so.
mkdir -p "$T/ovl/upper" "$T/ovl/work" "$T/ovl/merged"
mount -t overlay kindling-test-ovl -o "lowerdir=$D,upperdir=$T/ovl/upper,workdir=$T/ovl/work" "$T/ovl/merged" ||
  die "cannot mount an overlayfs for the fallback test"
track_mount "$T/ovl/merged"
rc=0; timeout 120 "$SBX" "$T/ovl/merged" --json --user 0 -- sh -c 'id -u; cat /data/file.txt' \
  >"$T/ovl.out" 2>"$T/ovl.out.err" || rc=$?
umount "$T/ovl/merged"
[ "$rc" = 0 ] && [ "$(cat "$T/ovl.out")" = "$(printf '0\nimage data')" ] &&
  [ "$(grep -c "notice: cannot map the image's owners into the sandbox's user namespace" "$T/ovl.out.err")" = 1 ] &&
  tail -1 "$T/ovl.out.err" | jq -e '.userns == false' >/dev/null ||
  die "the no-idmap fallback: rc $rc, $(cat "$T/ovl.out" "$T/ovl.out.err")"
pass "a root the kernel cannot idmap (overlayfs) runs without a user namespace, with one notice"

# ---- long-lived sandboxes: the Runtime API endpoint, on_ready, stop_fd, peak memory ----
API_PORT=$(free_port) # free on the host, so nothing of the host's answers there either
head -c 300000 /dev/urandom >"$T/api-body"
BODY_SUM=$(sha256sum "$T/api-body" | cut -d' ' -f1)
run "$T/api.out" --json --env AWS_LAMBDA_RUNTIME_API=10.0.0.1:1 --runtime-api "$API_PORT" \
  --runtime-api-body-file "$T/api-body" --runtime-api-log "$T/api.log" -- sh -c '
    api=$AWS_LAMBDA_RUNTIME_API
    echo "api=$api"
    wget -qO- "http://$api/2018-06-01/runtime/invocation/next" | sha256sum
    wget -qO- --post-data=response-from-workload "http://$api/2018-06-01/runtime/invocation/id-1/response" | wc -c
    head -c 125000 /dev/urandom | od -An -tx1 | tr -d " \n" >/tmp/upload # text: wget posts up to a NUL
    sha256sum /tmp/upload | cut -d" " -f1
    wget -qO /dev/null --post-file=/tmp/upload "http://$api/2018-06-01/runtime/invocation/id-2/response"
    printf "GET /half-close HTTP/1.0\r\n\r\nsent-before-shutdown" | nc 127.0.0.1 "${api#*:}" | tail -c 300000 | sha256sum' ||
  die "the Runtime API run failed: $(cat "$T/api.out" "$T/api.out.err")"
[ "$(sed -n 1p "$T/api.out")" = "api=127.0.0.1:$API_PORT" ] || die "AWS_LAMBDA_RUNTIME_API inside: $(cat "$T/api.out")"
[ "$(sed -n 2p "$T/api.out" | cut -d' ' -f1)" = "$BODY_SUM" ] || die "GET through the endpoint: body differs: $(cat "$T/api.out")"
[ "$(sed -n 3p "$T/api.out" | tr -d ' ')" = 300000 ] || die "POST through the endpoint: answer length: $(cat "$T/api.out")"
UP_SUM=$(sed -n 4p "$T/api.out")
grep -qxF "body-sha256: $UP_SUM 250000" "$T/api.log" || die "a 250000-byte POST body did not reach the host intact: $(cat "$T/api.log")"
[ "$(sed -n 5p "$T/api.out" | cut -d' ' -f1)" = "$BODY_SUM" ] || die "the half-closed exchange: body differs: $(cat "$T/api.out")"
for want in "request: GET /2018-06-01/runtime/invocation/next HTTP/1.1" "body: response-from-workload" \
  "request: POST /2018-06-01/runtime/invocation/id-1/response HTTP/1.1" "request: GET /half-close HTTP/1.0" \
  "body: sent-before-shutdown"; do
  grep -qxF "$want" "$T/api.log" || die "the host side did not read \"$want\": $(cat "$T/api.log")"
done
tail -1 "$T/api.out.err" | jq -e '.api_served == 4 and .stopped == false' >/dev/null || die "summary: $(tail -1 "$T/api.out.err")"
pass "Runtime API endpoint in the sandbox's netns: AWS_LAMBDA_RUNTIME_API=127.0.0.1:$API_PORT (over --env); 300000 bytes to the workload and 250000 from it, byte for byte; a half-closed request answered"

# A long-lived sandbox: it holds the endpoint while the host tries the same
# port, then loops forever until stop_fd (SIGUSR1 to sandbox_run) ends it.
"$SBX" "$IMG" --config "$T/inspect.json" --json --timeout 300 --mem $((256 << 20)) --runtime-api "$API_PORT" \
  --stop-on-signal -- sh -c 'wget -qO- "http://$AWS_LAMBDA_RUNTIME_API/next"; echo ready; while :; do :; done' \
  >"$T/ll.out" 2>"$T/ll.out.err" &
LL=$!
track_pid "$LL"
for ((i = 0; i < 1200; i++)); do grep -qx ready "$T/ll.out" && break; sleep 0.1; done
[ "$(cat "$T/ll.out")" = "$(printf 'kindling-runtime-api\nready')" ] || die "the long-lived sandbox did not get going: $(cat "$T/ll.out" "$T/ll.out.err")"
if (exec 3<>"/dev/tcp/127.0.0.1/$API_PORT") 2>/dev/null; then
  die "a host process connected to 127.0.0.1:$API_PORT while the sandbox listens there"
fi
M_PID=$(sed -n 's/^sandbox_run: ready: pid \([0-9]*\), memory peak file .*/\1/p' "$T/ll.out.err")
PEAK_FILE=$(sed -n 's/^sandbox_run: ready: pid [0-9]*, memory peak file //p' "$T/ll.out.err")
[ -n "$M_PID" ] || die "on_ready did not report: $(cat "$T/ll.out.err")"
PROCS=$M_PID CGDIR=""
if [ "$CG" != none ]; then
  [ -r "$PEAK_FILE" ] || die "on_ready's memory peak file is not readable: $PEAK_FILE"
  CGDIR=$(dirname "$PEAK_FILE")
  PROCS=$(cat "$CGDIR/cgroup.procs")
  [ "$(echo "$PROCS" | wc -l)" -ge 3 ] || die "the sandbox's cgroup lists $(echo $PROCS): want monitor, init and workload"
fi
kill -USR1 "$LL"
rc=0; wait "$LL" || rc=$?
J=$(tail -1 "$T/ll.out.err")
[ "$rc" = 137 ] && echo "$J" | jq -e '.stopped and (.timed_out | not) and .term_signal == 9' >/dev/null ||
  die "stop_fd did not end the sandbox as a stop: rc $rc, $J"
for pid in $PROCS; do
  state=$(awk '{print $3}' "/proc/$pid/stat" 2>/dev/null || true)
  [ -z "$state" ] || [ "$state" = Z ] || die "pid $pid of the stopped sandbox is still running (state $state)"
done
[ -z "$CGDIR" ] || [ ! -d "$CGDIR" ] || die "the stopped sandbox's cgroup $CGDIR is still there"
pass "a host process cannot reach 127.0.0.1:$API_PORT while the sandbox listens there; stop_fd ended a busy loop (stopped, 137); its $(echo $PROCS | wc -w) processes and its cgroup are gone"

# on_ready refusing: the workload never runs.
rc=0; run "$T/ref.out" --json --ready-refuse -- sh -c 'echo ran' || rc=$?
[ "$rc" = 125 ] && [ ! -s "$T/ref.out" ] && tail -1 "$T/ref.out.err" | jq -e '.error == "Operation canceled"' >/dev/null ||
  die "a refusing on_ready: rc $rc, $(cat "$T/ref.out" "$T/ref.out.err")"
# The peak memory: at least what the workload touched, read from its cgroup.
if [ "$CG" != none ]; then
  run "$T/peak.out" --json --mem $((256 << 20)) -- hog 64
  PEAK=$(tail -1 "$T/peak.out.err" | jq .memory_peak)
  [ "$PEAK" -ge $((64 << 20)) ] && [ "$PEAK" -le $((256 << 20)) ] || die "memory_peak $PEAK after touching 64 MiB under a 256 MiB limit"
  run "$T/peak.out" --json -- true
  [ "$(tail -1 "$T/peak.out.err" | jq .memory_peak)" = 0 ] || die "memory_peak without a memory cgroup should be 0"
  pass "on_ready can refuse (the workload never ran); memory_peak $PEAK bytes after a 64 MiB hog (cgroup $CG)"
else
  pass "on_ready can refuse (the workload never ran); no cgroups here, so no memory_peak to check"
fi

# ---- nothing left behind ------------------------------------------------------
sleep 0.2
AFTER=$(host_state)
[ "$BEFORE" = "$AFTER" ] || die "host mounts/loop devices changed: before $BEFORE, after $AFTER"
[ "$(sha256sum "$IMG" | cut -d' ' -f1)" = "$SUM" ] || die "the image file changed"
pass "no mounts, loop devices or cgroups left on the host; mount used: $MOUNT_KIND, cgroups: $CG"
