# Debian's kernel package for this release, and its modules, for the nested
# KVM harness (tests/nested/run.sh), the guest initramfs
# (scripts/guest-initramfs.sh) and 60-kvmm-acpi.sh.  Source it; it defines
# functions only and changes no shell options.
#
#   kernel_cache_dir          where downloads are kept: $KINDLING_CACHE_DIR, else
#                             $KINDLING_BUILD_DIR/cache, else <source>/build/cache
#   kernel_pkg_dir            download and unpack linux-image-<abi>-amd64 once
#                             (apt-get download + dpkg-deb -x) and print the
#                             unpacked root; 1 with a message if that fails,
#                             2 if apt does not know the package (no archive)
#   kernel_version ROOT       the version directory under ROOT/lib/modules
#   kernel_config ROOT OPT    y, m or n for CONFIG_OPT in the package's config
#   kernel_mod_closure ROOT MOD...
#                             print the module files (relative to
#                             lib/modules/<ver>/) that MOD... need, each after
#                             its dependencies, each once; modules that are
#                             built in (modules.builtin) are skipped
#   kernel_mod_install ROOT REL DEST
#                             copy module REL to the file DEST, decompressed
#                             (.ko.xz, .ko.zst, .ko.gz), because busybox insmod
#                             and finit_module without MODULE_INIT_COMPRESSED_FILE
#                             want a plain ELF
#   kernel_inner_root ROOT DIR MOD...
#                             a busybox root in DIR (the nested harness's
#                             guest, or a guest of kvmm inside it): static
#                             /bin/busybox and /bin/sh, empty proc, sys, dev,
#                             mnt, and MOD... with their dependencies in
#                             DIR/lib/modules, listed in load order in
#                             DIR/modules.order (the init loads them)

_kn_src=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)

kernel_cache_dir() {
	if [ -n "${KINDLING_CACHE_DIR:-}" ]; then
		echo "$KINDLING_CACHE_DIR"
	elif [ -n "${KINDLING_BUILD_DIR:-}" ]; then
		echo "$KINDLING_BUILD_DIR/cache"
	else
		echo "$_kn_src/build/cache"
	fi
}

kernel_pkg_dir() {
	local pkg ver cache dir tmp deb
	for t in apt-cache apt-get dpkg-deb; do
		command -v "$t" >/dev/null || { echo "kernel_pkg_dir: $t is missing (Debian packages apt, dpkg)" >&2; return 1; }
	done
	pkg=$(apt-cache depends linux-image-amd64 2>/dev/null | awk '/Depends: linux-image-[0-9]/ && !found {print $2; found = 1}')
	if [ -z "$pkg" ]; then
		echo "kernel_pkg_dir: apt-cache does not know linux-image-amd64 (is the Debian archive in sources.list? run apt-get update)" >&2
		return 2
	fi
	ver=$(apt-cache policy "$pkg" 2>/dev/null | awk '/Candidate:/ && !found {print $2; found = 1}')
	cache=$(kernel_cache_dir)
	dir=$cache/kernel/${pkg}_${ver:-unknown}
	if [ -d "$dir/root/boot" ]; then
		echo "$dir/root"
		return 0
	fi
	mkdir -p "$cache/kernel" || return 1
	tmp=$(mktemp -d "$cache/kernel/.tmp-XXXXXX") || return 1
	# apt drops privileges to _apt for downloads; a private directory it cannot
	# write only costs a warning, so say nothing unless the download fails.
	if ! (cd "$tmp" && timeout 300 apt-get download "$pkg" >"$tmp/download.log" 2>&1); then
		cat "$tmp/download.log" >&2
		echo "kernel_pkg_dir: apt-get download $pkg failed (no archive access?)" >&2
		rm -rf "$tmp"
		return 1
	fi
	deb=$(ls "$tmp"/*.deb 2>/dev/null | head -1)
	if [ -z "$deb" ] || ! dpkg-deb -x "$deb" "$tmp/root"; then
		echo "kernel_pkg_dir: dpkg-deb -x of $pkg failed (disk full?)" >&2
		rm -rf "$tmp"
		return 1
	fi
	rm -f "$deb"
	if ! ls "$tmp"/root/boot/vmlinuz-* >/dev/null 2>&1; then
		echo "kernel_pkg_dir: $pkg has no /boot/vmlinuz-*" >&2
		rm -rf "$tmp"
		return 1
	fi
	# Another test may have unpacked the same package meanwhile: first one wins.
	if ! mv -T "$tmp" "$dir" 2>/dev/null; then
		rm -rf "$tmp"
		[ -d "$dir/root/boot" ] || { echo "kernel_pkg_dir: cannot create $dir" >&2; return 1; }
	fi
	echo "$dir/root"
}

kernel_version() {
	local d
	d=$(ls -d "$1"/lib/modules/*/ 2>/dev/null | head -1)
	[ -n "$d" ] || { echo "kernel_version: no lib/modules/<version> under $1" >&2; return 1; }
	basename "$d"
}

kernel_config() {
	local root=$1 opt=$2 cfg v
	cfg=$(ls "$root"/boot/config-* 2>/dev/null | head -1)
	[ -n "$cfg" ] || { echo "kernel_config: no /boot/config-* under $root" >&2; return 1; }
	v=$(sed -n "s/^CONFIG_${opt}=\\(.*\\)/\\1/p" "$cfg")
	echo "${v:-n}"
}

# The "depends=" field of a module's .modinfo section, comma-separated names.
_kn_mod_depends() {
	local f=$1 tmp
	tmp=$(mktemp) || return 1
	case $f in
	*.xz) xz -dc "$f" >"$tmp" ;;
	*.zst) zstd -qdc "$f" >"$tmp" ;;
	*.gz) gzip -dc "$f" >"$tmp" ;;
	*) cp "$f" "$tmp" ;;
	esac || { rm -f "$tmp"; echo "kernel: cannot decompress $f" >&2; return 1; }
	objcopy -O binary -j .modinfo "$tmp" "$tmp.mi" || { rm -f "$tmp" "$tmp.mi"; echo "kernel: objcopy cannot read $f" >&2; return 1; }
	tr '\0' '\n' <"$tmp.mi" | sed -n 's/^depends=//p' | head -1
	rm -f "$tmp" "$tmp.mi"
}

kernel_mod_closure() {
	local root=$1 kver mdir f rel name
	shift
	command -v objcopy >/dev/null || { echo "kernel_mod_closure: objcopy is missing (binutils)" >&2; return 1; }
	kver=$(kernel_version "$root") || return 1
	mdir=$root/lib/modules/$kver
	# name (dashes as underscores, as the kernel compares them) -> file.
	declare -A file=() state=()
	# No subshell per line: the tree has thousands of modules.
	while IFS= read -r rel; do
		name=${rel##*/}
		name=${name%%.ko*}
		file[${name//-/_}]=$rel
	done < <(cd "$mdir" && find kernel \( -name '*.ko' -o -name '*.ko.xz' -o -name '*.ko.zst' -o -name '*.ko.gz' \) -print)
	declare -A builtin=()
	if [ -f "$mdir/modules.builtin" ]; then
		while IFS= read -r rel; do
			name=${rel##*/}
			name=${name%.ko}
			builtin[${name//-/_}]=1
		done <"$mdir/modules.builtin"
	fi
	local -a out=()
	# Depth-first, dependencies first; state 1 = on the stack (a cycle is an error).
	_kn_visit() {
		local n=${1//-/_} deps d
		[ "${state[$n]:-0}" = 2 ] && return 0
		[ "${state[$n]:-0}" = 1 ] && { echo "kernel_mod_closure: dependency cycle at $n" >&2; return 1; }
		if [ -z "${file[$n]:-}" ]; then
			[ -n "${builtin[$n]:-}" ] && { state[$n]=2; return 0; }
			echo "kernel_mod_closure: module $n is neither in $mdir/kernel nor built in" >&2
			return 1
		fi
		state[$n]=1
		deps=$(_kn_mod_depends "$mdir/${file[$n]}") || return 1
		for d in ${deps//,/ }; do
			_kn_visit "$d" || return 1
		done
		state[$n]=2
		out+=("${file[$n]}")
	}
	for name in "$@"; do
		_kn_visit "$name" || return 1
	done
	printf '%s\n' "${out[@]}"
}

kernel_mod_install() {
	local root=$1 rel=$2 dest=$3 kver src
	kver=$(kernel_version "$root") || return 1
	src=$root/lib/modules/$kver/$rel
	mkdir -p "$(dirname "$dest")" || return 1
	case $src in
	*.xz) xz -dc "$src" >"$dest" ;;
	*.zst) zstd -qdc "$src" >"$dest" ;;
	*.gz) gzip -dc "$src" >"$dest" ;;
	*) cp "$src" "$dest" ;;
	esac || { echo "kernel_mod_install: cannot copy $src" >&2; return 1; }
}

kernel_inner_root() {
	local root=$1 dir=$2 mods rel name
	shift 2
	mkdir -p "$dir"/{bin,proc,sys,dev,mnt,lib/modules} || return 1
	cp /bin/busybox "$dir/bin/busybox" && ln -sf busybox "$dir/bin/sh" || return 1
	: >"$dir/modules.order"
	mods=$(kernel_mod_closure "$root" "$@") || return 1
	for rel in $mods; do
		name=$(basename "$rel")
		name=${name%%.ko*}.ko
		kernel_mod_install "$root" "$rel" "$dir/lib/modules/$name" || return 1
		echo "/lib/modules/$name" >>"$dir/modules.order"
	done
}
