#!/bin/bash
# kvmm's ACPI tables and boot protocol against independent tools and a real
# kernel (no /dev/kvm needed):
#  - kvmm_acpi_dump writes the tables for 2 vCPUs and 3 virtio-mmio devices;
#    iasl (acpica-tools) disassembles XSDT, FADT, MADT and DSDT cleanly, the
#    DSDT listing shows each LNRO0005 device with its window and IRQ, and the
#    listing compiles back without errors.  iasl of this Debian release does
#    not disassemble a bare RSDP, so its checksums and pointer are checked here.
#  - Debian's current kernel package for this release is downloaded and
#    unpacked once (apt-get download, dpkg-deb -x; cached, see
#    tests/nested/kernel.sh), and test_kvmm_boot parses its
#    bzImage and sets up a zero page for it (KINDLING_TEST_BZIMAGE).
# ctest-labels: no-asan (iasl disassembles the tables; the table builder is unit-tested under ASan); no-tsan (single-threaded)
. "$(dirname "$0")/lib.sh"

for tool in iasl python3 apt-get apt-cache dpkg-deb; do
  command -v "$tool" >/dev/null || die "$tool is missing (scripts/apt-packages.txt: acpica-tools, apt, dpkg)"
done
DUMP=$TOOLS_DIR/kvmm_acpi_dump
BOOT=$TOOLS_DIR/test_kvmm_boot
[ -x "$DUMP" ] || die "kvmm_acpi_dump not built at $DUMP"
[ -x "$BOOT" ] || die "test_kvmm_boot not built at $BOOT"

# ---- ACPI -----------------------------------------------------------------------
A=$T/acpi
"$DUMP" "$A" 2 3 0x600 >"$T/dump.out" || die "kvmm_acpi_dump failed"
cd "$A"
for t in xsdt facp apic dsdt; do
  iasl -d "$t.dat" >"$t.log" 2>&1 || { cat "$t.log" >&2; die "iasl -d $t.dat failed"; }
  [ -s "$t.dsl" ] || die "iasl wrote no $t.dsl"
  if grep -Eiq 'error|warning|invalid|incorrect' "$t.log" "$t.dsl"; then
    grep -Ei 'error|warning|invalid|incorrect' "$t.log" "$t.dsl" >&2
    die "iasl complains about $t"
  fi
done
pass "iasl disassembles XSDT, FADT, MADT and DSDT cleanly"

iasl -p recompiled dsdt.dsl >recompile.log 2>&1 || { cat recompile.log >&2; die "the DSDT listing does not compile back"; }
grep -q 'Compilation successful. 0 Errors, 0 Warnings' recompile.log || { cat recompile.log >&2; die "recompiling the DSDT: not clean"; }
pass "the DSDT listing compiles back with 0 errors and 0 warnings"

# The listing and the tables, against what the dump tool says it built.
python3 - "$T/dump.out" <<'PY' || die "table contents do not match"
import re, struct, sys
out = open(sys.argv[1]).read()
devs = [tuple(int(x, 0) for x in m) for m in re.findall(r"dev \d+ base (\S+) size (\S+) gsi (\d+)", out)]
tables = {n: (int(g, 16), int(l)) for n, g, l in re.findall(r"table (\w+) gpa (\S+) len (\d+)", out)}
assert len(devs) == 3, devs
bad = []

dsl = open("dsdt.dsl").read()
blocks = re.findall(r"Device \((\w+)\)\s*\{(.*?)\n        \}", dsl, re.S)
if len(blocks) != len(devs):
    bad.append(f"DSDT lists {len(blocks)} devices, want {len(devs)}")
for i, ((name, body), (base, size, gsi)) in enumerate(zip(blocks, devs)):
    if 'Name (_HID, "LNRO0005")' not in body:
        bad.append(f"{name}: no _HID LNRO0005")
    uid = re.search(r"Name \(_UID, (\w+)\)", body)
    if not uid or {"Zero": 0, "One": 1}.get(uid.group(1), None if not uid.group(1).startswith("0x") else int(uid.group(1), 16)) != i:
        bad.append(f"{name}: _UID {uid and uid.group(1)}, want {i}")
    m = re.search(r"Memory32Fixed \(ReadWrite,\s*0x([0-9A-F]+),\s*// Address Base\s*0x([0-9A-F]+),", body)
    if not m or (int(m.group(1), 16), int(m.group(2), 16)) != (base, size):
        bad.append(f"{name}: Memory32Fixed {m and m.groups()}, want {hex(base)}+{hex(size)}")
    m = re.search(r"Interrupt \(ResourceConsumer, Edge, ActiveHigh, Exclusive, ,, \)\s*\{\s*0x([0-9A-F]+),", body)
    if not m or int(m.group(1), 16) != gsi:
        bad.append(f"{name}: Interrupt {m and m.group(1)}, want {gsi}")
if "Name (\\_S5, Package (0x02)" not in dsl:
    bad.append("no \\_S5 package for the poweroff path")

facp = open("facp.dsl").read()
if not re.search(r"Hardware Reduced \(V5\) : 1", facp):
    bad.append("FADT is not hardware-reduced")
m = re.search(r"\] +DSDT Address : ([0-9A-F]{16})", facp)
if not m or int(m.group(1), 16) != tables["dsdt"][0]:
    bad.append(f"FADT X_DSDT {m and m.group(1)} != {tables['dsdt'][0]:#x}")
if not re.search(r"Sleep Control Register[\s\S]*?Address : 0000000000000600", facp):
    bad.append("FADT sleep control register is not port 0x600")

apic = open("apic.dsl").read()
if apic.count("[Processor Local APIC]") != 2 or apic.count("[I/O APIC]") != 1 or "Address : FEC00000" not in apic:
    bad.append("MADT: want 2 local APICs and an I/O APIC at FEC00000")
if "Local Apic Address : FEE00000" not in apic:
    bad.append("MADT: local APIC address")

xsdt = open("xsdt.dsl").read()
addrs = [int(a, 16) for a in re.findall(r"ACPI Table Address +\d+ : ([0-9A-F]+)", xsdt)]
if addrs != [tables["facp"][0], tables["apic"][0]]:
    bad.append(f"XSDT points at {[hex(a) for a in addrs]}")

rsdp = open("rsdp.dat", "rb").read()
if len(rsdp) != 36 or rsdp[:8] != b"RSD PTR " or sum(rsdp[:20]) % 256 or sum(rsdp) % 256 or rsdp[15] != 2:
    bad.append("RSDP signature, revision or checksums")
if struct.unpack_from("<Q", rsdp, 24)[0] != tables["xsdt"][0]:
    bad.append("RSDP does not point at the XSDT")

for b in bad:
    print("mismatch:", b, file=sys.stderr)
sys.exit(1 if bad else 0)
PY
pass "DSDT lists 3 LNRO0005 devices with their windows and IRQs; FADT, MADT, XSDT, RSDP agree"
cd "$T"

# ---- a real kernel ----------------------------------------------------------------
# The package is cached and shared with the nested harness (tests/nested/kernel.sh).
. "$KINDLING_SOURCE_DIR/tests/nested/kernel.sh"
rc=0
kroot=$(kernel_pkg_dir) || rc=$?
[ $rc = 2 ] && skip "apt-cache does not know linux-image-amd64 here (is the Debian archive in sources.list?)"
[ $rc = 0 ] || die "cannot get Debian's kernel package (see above)"
pkg=linux-image-$(kernel_version "$kroot")
vmlinuz=$(ls "$kroot"/boot/vmlinuz-* 2>/dev/null | head -1)
[ -n "$vmlinuz" ] || die "no /boot/vmlinuz-* in $kroot"
KINDLING_TEST_BZIMAGE=$vmlinuz "$BOOT" >"$T/boot.out" 2>&1 || { cat "$T/boot.out" >&2; die "test_kvmm_boot fails on $vmlinuz"; }
line=$(grep '^bzimage:' "$T/boot.out") || die "test_kvmm_boot did not report on the real kernel"
echo "$line"
ver=${pkg#linux-image-}
python3 - "$line" "$ver" <<'PY' || die "the real kernel's header is not what a 64-bit boot needs"
import re, sys
line, ver = sys.argv[1], sys.argv[2]
f = dict(re.findall(r'(\w+) ("[^"]*"|\S+)', line.split(":", 1)[1]))
major, minor = (int(x) for x in f["protocol"].split("."))
ok = True
def want(cond, what):
    global ok
    if not cond:
        print("real kernel:", what, file=sys.stderr)
        ok = False
want((major, minor) >= (2, 12), f"protocol {f['protocol']} < 2.12")
want(f["kernel_64"] == "1", "no XLF_KERNEL_64")
want(int(f["xloadflags"], 16) & 1, "xloadflags lacks XLF_KERNEL_64")
want(f["relocatable"] == "1", "not relocatable")
init = int(f["init_size"], 16)
want(16 << 20 <= init <= 512 << 20, f"init_size {init:#x} implausible for a distribution kernel")
want(int(f["entry64"], 16) == 0x1000200, f"entry64 {f['entry64']}")
want(f["kernel"].strip('"').startswith(ver), f"kernel version {f['kernel']} is not {ver}")
sys.exit(0 if ok else 1)
PY
pass "Debian's $pkg bzImage parses: 64-bit entry, protocol, init_size"
