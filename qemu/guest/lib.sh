# Helpers for the guest tests (sourced by each tests/guest/*.sh).
# A test fails by calling `fail <reason>` or by any helper failing;
# it passes only by reaching its end (exit 0).
# shellcheck shell=sh disable=SC2034  # sourced by the tests, which use these

# Where the runner expects the one-line failure reason.
REASON_FILE="${REASON_FILE:-/tmp/reason}"

# The virtual disk the tests may destroy.
DISK=/dev/vdb
# A fixed 256-bit test key (64 hex digits), never a real secret.
KEY=000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f
# 512-bit key for aes-xts-plain64 (two AES-256 keys).
XTS_KEY=${KEY}f0e1d2c3b4a5968778695a4b3c2d1e0f0123456789abcdeffedcba9876543210

fail() {
	echo "$*" >"$REASON_FILE"
	echo "  fail: $*"
	exit 1
}

# run CMD...: echo it, run it, fail the test when it fails.
run() {
	echo "+ $*"
	"$@" || fail "command failed (rc $?): $*"
}

# must_fail CMD...: the command must exit non-zero.
must_fail() {
	echo "+ (must fail) $*"
	if "$@"; then
		fail "command unexpectedly succeeded: $*"
	fi
}

# expect_fail WANT CMD...: CMD exits 1 (a CLI error, not usage or a crash)
# and its stderr contains WANT.
expect_fail() {
	want=$1
	shift
	echo "+ (must fail with '$want') $*"
	rc=0
	"$@" 2>/tmp/err || rc=$?
	sed 's/^/    /' /tmp/err
	[ "$rc" -eq 1 ] || fail "exit status $rc (want 1): $*"
	grep -qF "$want" /tmp/err || fail "no '$want' in the message of: $*"
}

disk_sectors() {
	blockdev --getsz "$1" || fail "blockdev --getsz $1"
}

need_module() {
	[ -f /mlsdisk.ko ] || fail "mlsdisk.ko was not provided to the guest (build it with make module)"
}

load_module() {
	need_module
	if ! grep -q '^mlsdisk ' /proc/modules; then
		run insmod /mlsdisk.ko
	fi
	grep -q '^mlsdisk ' /proc/modules || fail "mlsdisk not in /proc/modules after insmod"
	dmsetup targets | grep -q '^mlsdisk ' || fail "dmsetup targets does not list mlsdisk"
}

unload_module() {
	run rmmod mlsdisk
	! grep -q '^mlsdisk ' /proc/modules || fail "mlsdisk still loaded after rmmod"
}

# status_tokens_ok LINE: every word of an mlsdisk `dmsetup status` line
# after "<start> <len> mlsdisk" is one key=value token (the fields are
# numbered in linux/README.md); fails the test otherwise.
status_tokens_ok() {
	# shellcheck disable=SC2086  # split into words on purpose
	set -- $1
	[ "$3" = mlsdisk ] || fail "not an mlsdisk status line: $*"
	shift 3
	for tok in "$@"; do
		case "$tok" in
		[a-z]*=?*) ;;
		*) fail "status token '$tok' is not key=value: $*" ;;
		esac
	done
}

dm_exists() {
	dmsetup ls 2>/dev/null | grep -q "^$1[[:space:]]"
}

# checksum_tree DIR: one line per regular file, "sha256  relative-path", sorted.
checksum_tree() {
	(cd "$1" && find . -type f ! -path './lost+found/*' | sort | xargs sha256sum)
}

# write_files DIR: a deterministic mix of small and large files.
write_files() {
	run mkdir -p "$1/small" "$1/big"
	i=0
	while [ $i -lt 64 ]; do
		echo "file $i of the mlsdisk e2e test $(seq -s, 1 $i)" >"$1/small/f$i" || fail "write $1/small/f$i"
		i=$((i + 1))
	done
	run dd if=/dev/urandom of="$1/big/random.bin" bs=64k count=64
	run dd if=/dev/zero of="$1/big/zero.bin" bs=1M count=8
	run sync
}

# fs_roundtrip NAME TABLE: the common flow over a dm device created from
# TABLE: mkfs.ext4, mount, write, sync, umount, e2fsck -fn, remove,
# create again, mount, compare checksums, umount, remove.
fs_roundtrip() {
	name=$1
	table=$2
	mnt=/mnt/$name
	run mkdir -p "$mnt"
	run dmsetup create "$name" --table "$table"
	dm_exists "$name" || fail "dmsetup ls does not list $name after create"
	echo "+ dmsetup table $name: $(dmsetup table "$name")"
	echo "+ dmsetup status $name: $(dmsetup status "$name")"
	run mkfs.ext4 -q -F "/dev/mapper/$name"
	run mount -t ext4 "/dev/mapper/$name" "$mnt"
	write_files "$mnt"
	checksum_tree "$mnt" >"/tmp/$name.sums" || fail "checksumming $mnt"
	[ "$(wc -l <"/tmp/$name.sums")" -eq 66 ] || fail "expected 66 files in $mnt, found $(wc -l <"/tmp/$name.sums")"
	run umount "$mnt"
	run e2fsck -fn "/dev/mapper/$name"
	run dmsetup remove "$name"
	! dm_exists "$name" || fail "$name still listed after dmsetup remove"

	run dmsetup create "$name" --table "$table"
	run mount -t ext4 -o ro "/dev/mapper/$name" "$mnt"
	checksum_tree "$mnt" >"/tmp/$name.sums2" || fail "checksumming $mnt after re-create"
	if ! cmp -s "/tmp/$name.sums" "/tmp/$name.sums2"; then
		diff "/tmp/$name.sums" "/tmp/$name.sums2" | head -n 10
		fail "checksums differ after remove + create"
	fi
	echo "  checksums of $(wc -l <"/tmp/$name.sums") files match after re-create"
	run umount "$mnt"
	run dmsetup remove "$name"
}
