#!/usr/bin/env bash
# Build the base guest initramfs (uncompressed newc cpio) from the host's
# Debian packages: busybox-static for the shell and small tools, plus dmsetup,
# mke2fs/e2fsck, fio and keyctl (keyutils) with the shared libraries ldd lists.
# Cached under $MLSDISK_CACHE/initramfs/, rebuilt only when its inputs change
# (this script, the package versions). The per-run files (/init, the test
# scripts, mlsdisk.ko) go into a second small cpio appended by run-guest.sh.
# Prints the path of the base cpio on stdout.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=scripts/env.sh
. "$here/../scripts/env.sh"

log() { printf '[initramfs] %s\n' "$*" >&2; }
die() {
	printf '[initramfs] ERROR: %s\n' "$*" >&2
	exit 1
}

# binary in the guest <- binary on the host
BINARIES=(/sbin/dmsetup /sbin/mke2fs /sbin/e2fsck /usr/bin/fio /usr/bin/keyctl)
# The Debian package of each binary (for the message when one is missing).
declare -A PACKAGE_OF=([/bin/busybox]=busybox-static [/sbin/dmsetup]=dmsetup [/sbin/mke2fs]=e2fsprogs
	[/sbin/e2fsck]=e2fsprogs [/usr/bin/fio]=fio [/usr/bin/keyctl]=keyutils)
PACKAGES=(busybox-static dmsetup e2fsprogs fio keyutils libkeyutils1 libc6)

for b in /bin/busybox "${BINARIES[@]}"; do
	[[ -x "$b" ]] || die "$b not found (Debian package ${PACKAGE_OF[$b]}); run scripts/install-toolchain.sh (make toolchain), or apt-get install ${PACKAGE_OF[$b]}"
done
command -v cpio >/dev/null || die "cpio not found; run scripts/install-toolchain.sh"

key="$( {
	cat "${BASH_SOURCE[0]}"
	dpkg-query -W "${PACKAGES[@]}"
} | sha256sum | cut -c1-12)"
out_dir="$MLSDISK_CACHE/initramfs"
out="$out_dir/base-$key.cpio"
if [[ -f "$out" ]]; then
	log "cached: $out"
	echo "$out"
	exit 0
fi

t0=$SECONDS
mkdir -p "$out_dir"
root="$(mktemp -d "$out_dir/root.XXXXXX")"
trap 'rm -rf "$root"' EXIT

mkdir -p "$root"/{bin,sbin,usr/bin,usr/sbin,dev,proc,sys,tmp,mnt,etc,lib64,root,run}
cp /bin/busybox "$root/bin/busybox"

# Real binaries first, then busybox applets wherever no real binary sits.
for b in "${BINARIES[@]}"; do
	cp -L "$b" "$root$b"
	# Every shared library ldd lists, at the same path (plus the loader).
	while read -r lib; do
		[[ -e "$root$lib" ]] && continue
		mkdir -p "$root$(dirname "$lib")"
		cp -L "$lib" "$root$lib"
	done < <(ldd "$b" | awk '/=> \//{print $3} /^[[:space:]]*\/[^ ]+ \(/{print $1}')
done
ln -s mke2fs "$root/sbin/mkfs.ext4"
ln -s e2fsck "$root/sbin/fsck.ext4"
[[ -f /etc/mke2fs.conf ]] && cp /etc/mke2fs.conf "$root/etc/mke2fs.conf"

while read -r applet; do
	[[ -e "$root/$applet" || -L "$root/$applet" ]] && continue
	mkdir -p "$root/$(dirname "$applet")"
	ln -s /bin/busybox "$root/$applet"
done < <(/bin/busybox --list-full)

printf 'root:x:0:0:root:/root:/bin/sh\n' >"$root/etc/passwd"
printf 'root:x:0:\n' >"$root/etc/group"

# Check every binary's loader and libraries resolve inside the image.
for b in "${BINARIES[@]}"; do
	while read -r lib; do
		[[ -e "$root$lib" ]] || die "library $lib of $b missing from the image"
	done < <(ldd "$b" | awk '/=> \//{print $3} /^[[:space:]]*\/[^ ]+ \(/{print $1}')
done

(cd "$root" && find . -mindepth 1 | LC_ALL=C sort | cpio --quiet -o -H newc -R 0:0) >"$out.tmp"
mv "$out.tmp" "$out"
log "built $out ($(du -h "$out" | cut -f1)) in $((SECONDS - t0)) s"
echo "$out"
