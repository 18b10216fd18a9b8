#!/bin/bash
# The process sandbox's hardening, against real runtimes.  The root is this
# host's own root directory, given to sandbox_run as a rootfs directory (read
# only, under the usual tmpfs overlay), so Debian's python3, Node.js, OpenJDK
# 17 and bash run exactly as installed, under the seccomp allowlist, in the
# user namespace, with the minimal capability set:
#   - each runtime runs a small program that uses threads, subprocesses,
#     files, a TCP server and client on 127.0.0.1 and the interface list;
#   - sockets: AF_PACKET and AF_VSOCK fail with EAFNOSUPPORT, AF_NETLINK only
#     opens NETLINK_ROUTE (other protocols EAFNOSUPPORT), and a route change
#     over it is refused (EPERM): the sandbox's root has no CAP_NET_ADMIN;
#   - devices: mknod of a block or character device fails, /dev holds only
#     null zero full random urandom tty ptmx (pts), every writable mount is
#     nodev, the capability sets are exactly the documented ones;
#   - user namespace: root inside is host uid 1000000000, yet the image's
#     root-only files still read as root-owned inside;
#   - descriptors: the sandbox's monitor and init hold none of the caller's
#     other descriptors, and the workload sees only 0, 1 and 2.
# ctest-labels: no-tsan (a process tree, as 50)
. "$(dirname "$0")/lib.sh"

[ "$(id -u)" = 0 ] || die "the process sandbox needs root"
SBX=$TOOLS_DIR/sandbox_run
[ -x "$SBX" ] || die "sandbox_run not built at $SBX"
for tool in python3 node java bash jq; do
  [ -x "/usr/bin/$tool" ] || die "/usr/bin/$tool is missing (scripts/apt-packages.txt: python3, nodejs, openjdk-17-jdk-headless, bash, jq)"
done

# run NAME ARGS...: sandbox_run over the host's root; stdout to $T/NAME.out,
# stderr to $T/NAME.err.
run() {
  local name=$1 rc=0
  shift
  timeout 300 "$SBX" / --json --mem $((1024 << 20)) --pids 512 "$@" >"$T/$name.out" 2>"$T/$name.err" || rc=$?
  return $rc
}

# ---- the runtimes -------------------------------------------------------------------------------------------------
run py -- /usr/bin/python3 -c '
import os, socket, subprocess, threading, tempfile
srv = socket.socket(); srv.bind(("127.0.0.1", 0)); srv.listen()
def serve():
    c, _ = srv.accept(); c.sendall(c.recv(100).upper()); c.close()
t = threading.Thread(target=serve); t.start()
c = socket.create_connection(srv.getsockname()); c.sendall(b"ping"); got = c.recv(100); t.join()
out = subprocess.run(["/bin/sh", "-c", "echo child"], capture_output=True, text=True).stdout.strip()
with tempfile.NamedTemporaryFile("w+") as f:
    f.write("file"); f.flush(); f.seek(0); data = f.read()
print("python", got.decode(), out, data, socket.if_nameindex()[0][1])' ||
  die "python3 failed in the sandbox: $(cat "$T/py.out" "$T/py.err")"
[ "$(cat "$T/py.out")" = "python PING child file lo" ] || die "python3 output: $(cat "$T/py.out" "$T/py.err")"

run node -- /usr/bin/node -e '
const http = require("http"), cp = require("child_process"), fs = require("fs"), os = require("os");
const { Worker } = require("worker_threads");
const srv = http.createServer((q, r) => r.end("pong")).listen(0, "127.0.0.1", () => {
  http.get({ host: "127.0.0.1", port: srv.address().port }, (res) => {
    let b = ""; res.on("data", (d) => (b += d)); res.on("end", () => {
      srv.close();
      fs.writeFileSync("/tmp/n", "file");
      const w = new Worker("require(\"worker_threads\").parentPort.postMessage(6*7)", { eval: true });
      w.on("message", (m) => {
        console.log("node", b, cp.execSync("echo child").toString().trim(), fs.readFileSync("/tmp/n", "utf8"),
                    m, Object.keys(os.networkInterfaces()).join(","));
      });
    });
  });
});' || die "node failed in the sandbox: $(cat "$T/node.out" "$T/node.err")"
[ "$(cat "$T/node.out")" = "node pong child file 42 lo" ] || die "node output: $(cat "$T/node.out" "$T/node.err")"

# The JVM: a single-file program, compiled in the sandbox by the launcher.
run java -- /bin/sh -c 'cat >/tmp/H.java <<EOF
import java.io.*; import java.net.*; import java.util.*;
public class H {
  public static void main(String[] a) throws Exception {
    ServerSocket s = new ServerSocket(0, 1, InetAddress.getLoopbackAddress());
    Thread t = new Thread(() -> { try (Socket c = s.accept()) { c.getOutputStream().write(c.getInputStream().read() + 1); } catch (IOException e) { throw new UncheckedIOException(e); } });
    t.start();
    int got;
    try (Socket c = new Socket(InetAddress.getLoopbackAddress(), s.getLocalPort())) { c.getOutputStream().write(41); got = c.getInputStream().read(); }
    t.join();
    Process p = new ProcessBuilder("/bin/echo", "child").start();
    String child = new BufferedReader(new InputStreamReader(p.getInputStream())).readLine(); p.waitFor();
    String ifs = Collections.list(NetworkInterface.getNetworkInterfaces()).get(0).getName();
    System.out.println("java " + got + " " + child + " " + ifs);
  }
}
EOF
exec /usr/bin/java -Xmx256m /tmp/H.java' || die "java failed in the sandbox: $(cat "$T/java.out" "$T/java.err")"
[ "$(cat "$T/java.out")" = "java 42 child lo" ] || die "java output: $(cat "$T/java.out" "$T/java.err")"

run bash -- /bin/bash -c 'set -e; x=$(echo sub | tr a-z A-Z); read -r y < <(echo procsub); wait; echo "bash $x $y $(( $(nproc) > 0 ))"' ||
  die "bash failed in the sandbox: $(cat "$T/bash.out" "$T/bash.err")"
[ "$(cat "$T/bash.out")" = "bash SUB procsub 1" ] || die "bash output: $(cat "$T/bash.out" "$T/bash.err")"
for n in py node java bash; do
  jq -e '.userns == true' <(tail -1 "$T/$n.err") >/dev/null || die "$n did not run in a user namespace: $(tail -1 "$T/$n.err")"
done
pass "python3, Node.js $(node --version), OpenJDK 17 and bash run threads, subprocesses, files and 127.0.0.1 TCP under the seccomp allowlist, in a user namespace"

# ---- sockets ------------------------------------------------------------------------------------------------------
run sock --user 0 -- /usr/bin/python3 -c '
import errno, socket, struct
def try_(name, *a):
    try:
        s = socket.socket(*a); s.close(); print(name, "OK")
    except OSError as e:
        print(name, errno.errorcode[e.errno])
try_("packet", socket.AF_PACKET, socket.SOCK_RAW, 0)
try_("packet_dgram", socket.AF_PACKET, socket.SOCK_DGRAM, 0)
try_("vsock", socket.AF_VSOCK, socket.SOCK_STREAM, 0)
try_("netlink_route", socket.AF_NETLINK, socket.SOCK_RAW, socket.NETLINK_ROUTE)
try_("netlink_audit", socket.AF_NETLINK, socket.SOCK_RAW, 9)
try_("netlink_uevent", socket.AF_NETLINK, socket.SOCK_RAW, 15)
try_("raw_inet", socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
try_("key", 15, socket.SOCK_RAW, 2)
# A route change over NETLINK_ROUTE: RTM_NEWADDR 10.9.9.9/32 on lo (index 1).
s = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, socket.NETLINK_ROUTE)
attr = struct.pack("HH4s", 8, 2, socket.inet_aton("10.9.9.9"))  # IFA_LOCAL
body = struct.pack("BBBBI", socket.AF_INET, 32, 0, 0, 1) + attr
msg = struct.pack("IHHII", 16 + len(body), 20, 0x5 | 0x400 | 0x200, 1, 0) + body  # NEWADDR, REQUEST|ACK|CREATE|EXCL
s.send(msg)
reply = s.recv(4096)
err = struct.unpack("i", reply[16:20])[0]
print("netlink_newaddr", "OK" if err == 0 else errno.errorcode[-err])' ||
  die "the socket probe failed: $(cat "$T/sock.out" "$T/sock.err")"
for want in "packet EAFNOSUPPORT" "packet_dgram EAFNOSUPPORT" "vsock EAFNOSUPPORT" "netlink_route OK" \
  "netlink_audit EAFNOSUPPORT" "netlink_uevent EAFNOSUPPORT" "key EAFNOSUPPORT" "netlink_newaddr EPERM"; do
  grep -qx "$want" "$T/sock.out" || die "sockets: want \"$want\": $(cat "$T/sock.out")"
done
grep -Eqx "raw_inet (EPERM|EACCES)" "$T/sock.out" || die "a raw IP socket opened: $(cat "$T/sock.out")"
pass "sockets as root inside: AF_PACKET, AF_VSOCK, AF_KEY and non-route netlink -> EAFNOSUPPORT; NETLINK_ROUTE opens but cannot change addresses (EPERM); raw IP refused"

# ---- devices, mounts, capabilities --------------------------------------------------------------------------------
run dev --user 0 -- /bin/bash -c '
mknod /tmp/sda b 8 0 2>/dev/null && echo "mknod block OK" || echo "mknod block refused"
mknod /tmp/mem c 1 1 2>/dev/null && echo "mknod char OK" || echo "mknod char refused"
mknod /dev/sda b 8 0 2>/dev/null && echo "mknod dev OK" || echo "mknod dev refused"
mknod /tmp/fifo p && echo "mkfifo OK"
ls /dev | tr "\n" " "; echo
ls /dev/pts | tr "\n" " "; echo
# The standard nodes are bind mounts of the host'"'"'s (so not nodev); /proc'"'"'s masks too.
awk "\$3 != \"proc\" && \$3 != \"devpts\" && \$2 !~ /^\/(dev\/(null|zero|full|random|urandom|tty)|proc\/.*)\$/ && \$4 ~ /(^|,)rw(,|\$)/ && \$4 !~ /nodev/ {print \"writable without nodev:\", \$2}" /proc/mounts
grep -E "^(CapInh|CapPrm|CapEff|CapBnd|CapAmb)" /proc/self/status
cat /proc/self/uid_map
stat -c "%U %a" /etc/shadow; head -c 5 /etc/shadow | wc -c
grep -E "^[0-9]+:(devices|memory|pids):" /proc/self/cgroup' || die "the device probe failed: $(cat "$T/dev.out" "$T/dev.err")"
for want in "mknod block refused" "mknod char refused" "mknod dev refused" "mkfifo OK"; do
  grep -qx "$want" "$T/dev.out" || die "devices: want \"$want\": $(cat "$T/dev.out")"
done
[ "$(sed -n 5p "$T/dev.out")" = "core fd full null ptmx pts random shm stderr stdin stdout tty urandom zero " ] ||
  die "/dev holds more than the standard set: $(sed -n 5p "$T/dev.out")"
[ "$(sed -n 6p "$T/dev.out")" = "ptmx " ] || die "/dev/pts is not the sandbox's own: $(sed -n 6p "$T/dev.out")"
grep -q "writable without nodev" "$T/dev.out" && die "$(grep "writable without nodev" "$T/dev.out")"
# CHOWN 0, DAC_OVERRIDE 1, FOWNER 3, FSETID 4, KILL 5, SETGID 6, SETUID 7, NET_BIND_SERVICE 10: 0x4fb.
for set in CapPrm CapEff CapBnd; do
  grep -qx "$set:	00000000000004fb" "$T/dev.out" || die "$set is not the documented set 0x4fb: $(grep "^$set" "$T/dev.out")"
done
grep -qx "CapInh:	0000000000000000" "$T/dev.out" && grep -qx "CapAmb:	0000000000000000" "$T/dev.out" ||
  die "inheritable or ambient capabilities left: $(grep -E "^Cap(Inh|Amb)" "$T/dev.out")"
grep -Eqx " *0 +1000000000 +65536" "$T/dev.out" || die "uid_map: $(cat "$T/dev.out")"
grep -qx "root 640" "$T/dev.out" && grep -qx 5 "$T/dev.out" ||
  die "a root-only file of the image does not read as root's inside: $(tail -2 "$T/dev.out")"
DEVCG=absent
if grep -qw devices /proc/self/cgroup && [ -d /sys/fs/cgroup/devices ]; then
  # cgroup v1 with the devices controller: the workload is in the sandbox's
  # allowlist cgroup.
  grep -Eq "^[0-9]+:devices:.*/kindling-sandbox-[0-9]+$" "$T/dev.out" ||
    die "the workload is not in the sandbox's device cgroup: $(grep devices "$T/dev.out")"
  DEVCG=v1
fi
if [ -d /sys/fs/cgroup/memory ] && [ -d /sys/fs/cgroup/pids ] &&
  ! grep -qw memory /sys/fs/cgroup/cgroup.controllers 2>/dev/null; then
  # cgroup v1 limits: the workload runs in the sandbox's memory and pids
  # cgroups, which the monitor joined before it forked anything.
  for ctl in memory pids; do
    grep -Eq "^[0-9]+:$ctl:.*/kindling-sandbox-[0-9]+$" "$T/dev.out" ||
      die "the workload is not in the sandbox's $ctl cgroup: $(grep -E ":(memory|pids):" "$T/dev.out")"
  done
fi
pass "device cgroup: $DEVCG; mknod of block/char devices refused (fifo fine), /dev standard set only with a private devpts, writable mounts nodev, capabilities exactly 0x4fb, root inside = host 1000000000 still reads the image's root-only /etc/shadow"

# ---- descriptors ---------------------------------------------------------------------------------------------------
# Extra descriptors in the caller (inherited by sandbox_run from this shell,
# standing in for a multi-threaded agent's sockets and files): none may reach
# the sandbox's monitor, its init or the workload.
echo leak >"$T/leak"
: >"$T/fd.out"
"$SBX" / --json --timeout 300 --stop-on-signal --runtime-api "$(free_port)" -- /bin/sh -c \
  'ls /proc/self/fd | tr "\n" " "; echo; echo ready; while :; do sleep 1; done' \
  >"$T/fd.out" 2>"$T/fd.err" 7<"$T/leak" 8<"$T/leak" 9>>"$T/leak" &
FDP=$!
track_pid "$FDP"
for ((i = 0; i < 1200; i++)); do grep -qx ready "$T/fd.out" && break; sleep 0.1; done
grep -qx ready "$T/fd.out" || die "the descriptor probe did not start: $(cat "$T/fd.out" "$T/fd.err")"
M_PID=$(sed -n 's/^sandbox_run: ready: pid \([0-9]*\),.*/\1/p' "$T/fd.err")
[ -n "$M_PID" ] || die "no monitor pid: $(cat "$T/fd.err")"
I_PID=$(cat "/proc/$M_PID/task/$M_PID/children" | tr -d ' ')
[ -n "$I_PID" ] || die "the monitor $M_PID has no child"
for pid in "$M_PID" "$I_PID"; do
  n=0
  for fd in /proc/$pid/fd/*; do
    [ "$(readlink "$fd")" = "$T/leak" ] && die "pid $pid holds the caller's $fd -> $T/leak: $(ls -l /proc/$pid/fd)"
    n=$((n + 1))
  done
  [ "$n" -le 12 ] || die "pid $pid holds $n descriptors: $(ls -l /proc/$pid/fd)"
done
M_FDS=$(ls "/proc/$M_PID/fd" | wc -l)
# ls itself holds one more, its directory.
[ "$(sed -n 1p "$T/fd.out")" = "0 1 2 3 " ] || die "the workload sees descriptors beyond 0-2: $(sed -n 1p "$T/fd.out")"
kill -USR1 "$FDP"
rc=0; wait "$FDP" || rc=$?
[ "$rc" = 137 ] || die "stopping the descriptor probe: rc $rc, $(cat "$T/fd.err")"
pass "the monitor ($M_FDS fds) and init hold none of the caller's descriptors; the workload sees only 0, 1, 2"
