#!/usr/bin/env bash
# Copy this machine's Debian python3 interpreter into a rootfs, with the
# dynamic loader and every shared library that it and its extension modules
# (lib-dynload) link, so `python3 SCRIPT` runs inside a sandbox on that tree.
# The standard library itself (/usr/lib/python3.11) is NOT copied: the demo
# and the benchmark put it in a layer of its own.
#
#   scripts/python-rootfs.sh DEST
#
# Layout is merged-/usr, as on Debian 12: libraries in /usr/lib/x86_64-linux-gnu,
# /lib -> usr/lib, the loader at /lib64/ld-linux-x86-64.so.2.
set -euo pipefail
dest=$1
py=/usr/bin/python3.11
[ -x "$py" ] || { echo "python-rootfs: $py is missing (apt-get install python3.11-minimal)" >&2; exit 1; }
mkdir -p "$dest/usr/bin" "$dest/usr/lib/x86_64-linux-gnu" "$dest/lib64" "$dest/etc" "$dest/tmp"
[ -e "$dest/lib" ] || ln -s usr/lib "$dest/lib"
cp -L "$py" "$dest/usr/bin/python3.11"
ln -sf python3.11 "$dest/usr/bin/python3"
cp -L /lib64/ld-linux-x86-64.so.2 "$dest/lib64/ld-linux-x86-64.so.2"
{ ldd "$py"; for so in /usr/lib/python3.11/lib-dynload/*.so; do ldd "$so"; done; } 2>/dev/null |
  awk '/=> \// { print $3 }' | sort -u | while read -r lib; do
    cp -L "$lib" "$dest/usr/lib/x86_64-linux-gnu/$(basename "$lib")"
  done
[ -e "$dest/etc/passwd" ] || echo 'root:x:0:0:root:/root:/bin/sh' >"$dest/etc/passwd"
[ -e "$dest/etc/group" ] || echo 'root:x:0:' >"$dest/etc/group"
