#!/bin/bash
# kvmm's VM core on a real KVM: inside a TCG guest with a working /dev/kvm
# (tests/nested/run.sh), kvmm --no-api --config-file boots Debian's kernel with
# a busybox initramfs on 2 vCPUs and
#  - ends with status 0 when the guest powers off (ACPI S5 on the sleep port)
#    and when it reboots (reboot=k: the i8042 reset line);
#  - runs a shell on the serial console: a command piped into kvmm's stdin
#    reaches the guest's shell and its output comes back;
#  - serves two virtio-blk drives, the EROFS root first as /dev/vda: the guest
#    loads virtio_mmio, virtio_blk and erofs, mounts the root and its file
#    hashes match the host's, and /dev/vdb reads back byte for byte;
#  - keeps its own resident memory (all but guest RAM) under 5 MiB.
# ctest-labels: no-asan (a QEMU guest running kvmm: minutes under emulation); no-tsan (as no-asan)
. "$(dirname "$0")/lib.sh"
. "$KINDLING_SOURCE_DIR/tests/nested/kernel.sh"

for tool in qemu-system-x86_64 cpio gzip mkfs.erofs sha256sum objcopy; do
  command -v "$tool" >/dev/null || die "$tool is missing (scripts/apt-packages.txt: qemu-system-x86, cpio, erofs-utils, binutils)"
done
[ -x /bin/busybox ] && ! ldd /bin/busybox >/dev/null 2>&1 || die "a static /bin/busybox is needed (busybox-static)"
KVMM=$KINDLING_BUILD_DIR/kvmm
[ -x "$KVMM" ] || die "kvmm not built at $KVMM"

rc=0
kroot=$(kernel_pkg_dir) || rc=$?
[ $rc = 2 ] && skip "apt does not know linux-image-amd64 here"
[ $rc = 0 ] || die "cannot get Debian's kernel package"
vmlinuz=$(ls "$kroot"/boot/vmlinuz-* | head -1)

# ---- the inner guest: busybox, the block and EROFS modules, an init per test ----
I=$T/inner P=$T/payload
mkdir -p "$P"
# libcrc32c finds its algorithm at run time, so the closure misses crc32c.
kernel_inner_root "$kroot" "$I" virtio_mmio virtio_blk crc32c_generic erofs || die "cannot set up the guest's root and modules"
cat >"$I/init" <<'EOF'
#!/bin/sh
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
echo "GUEST: up, $(grep -c ^processor /proc/cpuinfo) cpus"
case "$(cat /proc/cmdline)" in
*kvmm.test=poweroff*) poweroff -f ;;
*kvmm.test=reboot*) reboot -f ;;
*kvmm.test=erofs*)
	while read -r m; do insmod "$m" || echo "GUEST: insmod $m failed"; done </modules.order
	i=0; while [ ! -b /dev/vdb ] && [ $i -lt 100 ]; do sleep 0.1; i=$((i+1)); done
	mount -t erofs -o ro /dev/vda /mnt && echo "GUEST: mounted $(cat /mnt/hello.txt)"
	echo "GUEST: big $(sha256sum </mnt/big.bin)"
	echo "GUEST: vdb $(sha256sum </dev/vdb)"
	poweroff -f ;;
esac
echo "GUEST: shell ready"
exec sh
EOF
chmod 755 "$I/init"
(cd "$I" && find . -print0 | cpio --null -o -H newc --quiet | gzip) >"$P/initrd.gz" || die "cpio failed"

mkdir -p "$T/src"
echo "hello from the EROFS root" >"$T/src/hello.txt"
head -c 3000000 /dev/urandom >"$T/src/big.bin"
mkfs.erofs --quiet "$P/root.erofs" "$T/src" || die "mkfs.erofs failed"
head -c 1048576 /dev/urandom >"$P/data.img"
big_sum=$(sha256sum <"$T/src/big.bin")
vdb_sum=$(sha256sum <"$P/data.img")
cp "$vmlinuz" "$P/vmlinuz"
cp "$KVMM" "$P/kvmm"

K="console=ttyS0 reboot=k panic=1 pci=off i8042.noaux i8042.nomux i8042.dumbkbd"
for t in poweroff reboot shell erofs; do
  drives=""
  [ $t = erofs ] && drives='"drives":[{"drive_id":"data","path_on_host":"data.img","is_root_device":false,"is_read_only":true},
    {"drive_id":"rootfs","path_on_host":"root.erofs","is_root_device":true,"is_read_only":true}],'
  cat >"$P/cfg-$t.json" <<EOF
{"boot-source":{"kernel_image_path":"vmlinuz","initrd_path":"initrd.gz","boot_args":"$K kvmm.test=$t"},
 $drives "machine-config":{"vcpu_count":2,"mem_size_mib":256}}
EOF
done

# Runs inside the outer guest; prints "RESULT <test> <kvmm status>" per run.
cat >"$P/run.sh" <<'EOF'
#!/bin/sh
for t in poweroff reboot erofs; do
	timeout -k 15 240 ./kvmm --no-api --config-file cfg-$t.json </dev/null >out-$t.txt 2>&1
	rc=$?
	sed "s/^/$t| /" out-$t.txt
	echo "RESULT $t $rc"
done
mkfifo in
timeout -k 15 240 ./kvmm --no-api --config-file cfg-shell.json <in >out-shell.txt 2>&1 &
pid=$!
exec 3>in
i=0
while [ $i -lt 900 ] && ! grep -q "shell ready" out-shell.txt; do sleep 0.1; i=$((i+1)); done
sleep 1
# The monitor's own memory: everything resident but guest RAM (the one
# mapping of mem_size_mib, 262144 kB here).
awk '/^[0-9a-f]+-[0-9a-f]+ / {ram = 0} /^Size:/ {ram = ($2 == 262144)} /^Rss:/ && !ram {rss += $2}
	END {print "MONITOR-RSS-KB", rss}' /proc/$pid/smaps
grep -E '^(VmRSS|RssAnon|RssFile)' /proc/$pid/status | tr -s ' \t' ' ' | sed 's/^/STATUS /'
echo 'echo SHELL-$((6*7)); poweroff -f' >&3
wait $pid
rc=$?
exec 3>&-
sed "s/^/shell| /" out-shell.txt
echo "RESULT shell $rc"
EOF
chmod 755 "$P/run.sh"

NESTED_LOG=$T/nested.log bash "$KINDLING_SOURCE_DIR/tests/nested/run.sh" --timeout 1100 "$P" run.sh >"$T/run.out" 2>&1 ||
  { tail -80 "$T/run.out" >&2; die "the nested run failed"; }
L=$T/nested.log
result() { grep -a "^RESULT $1 " "$L" | awk '{print $3}' | tr -d '\r'; }
for t in poweroff reboot erofs shell; do
  [ "$(result $t)" = 0 ] || { grep -a "^$t| " "$L" | tail -40 >&2; die "kvmm $t run ended with status '$(result $t)', want 0"; }
done
grep -aq "^poweroff| .*GUEST: up, 2 cpus" "$L" || die "the poweroff guest did not come up with 2 vCPUs"
pass "the guest boots on 2 vCPUs; poweroff (ACPI S5) ends kvmm with 0"
grep -aq "^reboot| .*GUEST: up" "$L" || die "the reboot guest did not come up"
pass "reboot (i8042 reset line) ends kvmm with 0"
grep -aq "^shell| SHELL-42" "$L" || { grep -a "^shell| " "$L" | tail -20 >&2; die "the shell's output did not come back through the console"; }
pass "a command sent on kvmm's stdin runs in the guest's shell on ttyS0 and its output comes back"
rss=$(grep -a "^MONITOR-RSS-KB " "$L" | awk '{print $2}' | tr -d '\r')
[ -n "$rss" ] || die "no measurement of kvmm's memory"
grep -a "^STATUS " "$L" || true
[ "$rss" -lt 5120 ] || die "kvmm holds $rss KiB besides guest RAM; the budget is 5 MiB"
pass "kvmm's resident memory besides guest RAM, guest at a shell prompt: $rss KiB (< 5 MiB)"
grep -aq "^erofs| GUEST: mounted hello from the EROFS root" "$L" || { grep -a "^erofs| " "$L" | tail -30 >&2; die "the EROFS root was not mounted from /dev/vda"; }
grep -aq "^erofs| GUEST: big $big_sum" "$L" || die "a file on the EROFS root does not hash as on the host"
grep -aq "^erofs| GUEST: vdb $vdb_sum" "$L" || die "/dev/vdb does not read back as data.img"
pass "virtio-blk: the EROFS root is /dev/vda and mounts; file and raw-disk hashes match the host"
