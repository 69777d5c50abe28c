# Guest side of tests/host/powercut.sh (NOT run by the normal guest runner:
# qemu/run-guest.sh --guest-script gets a copy with these variables set
# in front by the host):
#   PHASE   cycle | final | tampered | rollback
#   LEN     the dm table length in sectors (empty: cycle with CREATE=1 finds it)
#   CREATE  1: format the disk (first boot) and mkfs.ext4
#   NEW     cycle: the name of the file set to write before the marker
#   ABSENT  rollback: a set that must not exist in the older image
#   SYNC_NEWER rollback: the sync counter of the newer image
# /tmp/expected holds "sha256 path" lines of everything synced so far.
# Lines the host parses go straight to /dev/console (not through the
# runner's pipe, which may hold them when QEMU is killed):
#   LEN <n>, SUM <sha256> <path>, SUMS <count>, MARKER synced, SYNC <n>,
#   RESULT <what>.
# shellcheck shell=sh
# shellcheck source=qemu/guest/lib.sh
. /mlsdisk/lib.sh

: "${PHASE:?}" "${CREATE:=0}" "${NEW:=}" "${ABSENT:=}" "${SYNC_NEWER:=}" "${LEN:=}"
name=mlsdisk_p
dev=/dev/mapper/$name
mnt=/mnt/$name
con() { echo "$*" >/dev/console; }

load_module
run mkdir -p $mnt

# status_sync: the sync counter in the status line.
status_sync() {
	dmsetup status $name | sed -n 's/.* sync=\([0-9]*\).*/\1/p'
}
check_healthy() {
	st=$(dmsetup status $name) || fail "dmsetup status failed"
	echo "+ dmsetup status: $st"
	case "$st" in
	*" mlsdisk health=ok "*) ;;
	*) fail "status is not healthy: $st" ;;
	esac
}

open_disk() {
	[ -n "$LEN" ] || fail "no LEN given"
	run dmsetup create $name --table "0 $LEN mlsdisk $DISK $KEY"
	check_healthy
}

# verify_expected: replay the journal (rw mount + umount), e2fsck -fn
# clean, then every file of /tmp/expected has its checksum.
verify_expected() {
	run mount -t ext4 $dev $mnt
	run umount $mnt
	run e2fsck -fn $dev
	run mount -t ext4 -o ro $dev $mnt
	n=0
	while read -r sum path; do
		got=$(cd $mnt && sha256sum "$path") || fail "reading $path failed"
		[ "${got%% *}" = "$sum" ] || fail "WRONG DATA: $path has checksum ${got%% *}, synced $sum"
		n=$((n + 1))
	done </tmp/expected
	[ "$n" -gt 0 ] || fail "no expected files"
	echo "  $n synced files present with their checksums"
	con "RESULT verified $n files"
	if [ -n "$ABSENT" ] && [ -e "$mnt/$ABSENT" ]; then
		fail "$ABSENT exists in the rolled-back image (a mix of old and new state)"
	fi
	run umount $mnt
}

case "$PHASE" in
cycle)
	[ -n "$NEW" ] || fail "cycle without NEW"
	if [ "$CREATE" = 1 ]; then
		sectors=$(disk_sectors "$DISK")
		n0=$(dmesg | wc -l)
		must_fail dmsetup create $name --table "0 $sectors mlsdisk $DISK $KEY 1 force_create"
		max=$(dmesg | tail -n +$((n0 + 1)) | sed -n 's/.*the maximum is \([0-9]*\) sectors.*/\1/p' | tail -n 1)
		[ -n "$max" ] || fail "no maximum in dmesg"
		LEN=$((max / 8 * 8))
		con "LEN $LEN"
		run dmsetup create $name --table "0 $LEN mlsdisk $DISK $KEY 1 force_create"
		check_healthy
		run mkfs.ext4 -q -F $dev
	else
		open_disk
		verify_expected
	fi
	run mount -t ext4 $dev $mnt
	run mkdir -p "$mnt/$NEW/small" "$mnt/$NEW/loop"
	i=0
	while [ $i -lt 16 ]; do
		echo "set $NEW file $i $(seq -s, 1 $((i * 7)))" >"$mnt/$NEW/small/f$i" || fail "write small file $i"
		i=$((i + 1))
	done
	run dd if=/dev/urandom of="$mnt/$NEW/random.bin" bs=64k count=32 status=none
	run sync
	(cd $mnt && find "./$NEW" -type f | sort | xargs sha256sum) >/tmp/new.sums || fail "checksumming $NEW"
	while read -r sum path; do con "SUM $sum $path"; done </tmp/new.sums
	con "SUMS $(wc -l </tmp/new.sums)"
	con "MARKER synced"
	# Keep writing (some files fsync'd, some synced, some left dirty)
	# until the host kills QEMU.
	i=0
	while [ $i -lt 400 ]; do
		f="$mnt/$NEW/loop/f$i"
		case $((i % 4)) in
		0) dd if=/dev/urandom of="$f" bs=64k count=2 conv=fsync status=none ;;
		1) dd if=/dev/urandom of="$f" bs=4k count=3 status=none && sync ;;
		*) dd if=/dev/urandom of="$f" bs=64k count=4 status=none ;;
		esac || fail "loop write $i failed"
		i=$((i + 1))
	done
	con "LOOP done"
	sleep 600
	fail "QEMU was not killed"
	;;
final)
	open_disk
	verify_expected
	run dmsetup message $name 0 sync
	s=$(status_sync)
	con "SYNC $s"
	run dmsetup remove $name
	;;
tampered)
	# Reads fail with EIO or the open fails; never wrong data.
	n0=$(dmesg | wc -l)
	if ! dmsetup create $name --table "0 $LEN mlsdisk $DISK $KEY"; then
		msg=$(dmesg | tail -n +$((n0 + 1)) | grep 'mlsdisk' | tail -n 1)
		echo "  open refused: $msg"
		[ -n "$msg" ] || fail "the open was refused without a kernel message"
		con "RESULT open-refused"
		exit 0
	fi
	echo "+ dmsetup status: $(dmsetup status $name)"
	detected=0
	if dd if=$dev of=/dev/null bs=1M iflag=direct 2>/tmp/dd.err; then
		echo "  the whole device read without an error"
	else
		cat /tmp/dd.err
		grep -qi 'Input/output error\|I/O error' /tmp/dd.err || fail "raw read failed, but not with EIO: $(head -n 1 /tmp/dd.err)"
		detected=$((detected + 1))
		con "RESULT raw-read-EIO"
	fi
	if mount -t ext4 -o ro $dev $mnt 2>/tmp/mount.err; then
		ok=0
		eio=0
		while read -r sum path; do
			if got=$(cd $mnt && sha256sum "$path" 2>/tmp/sum.err); then
				[ "${got%% *}" = "$sum" ] || fail "WRONG DATA: $path has checksum ${got%% *}, synced $sum"
				ok=$((ok + 1))
			else
				grep -qi 'Input/output error\|I/O error' /tmp/sum.err ||
					fail "reading $path failed, but not with EIO: $(head -n 1 /tmp/sum.err)"
				eio=$((eio + 1))
			fi
		done </tmp/expected
		echo "  files: $ok intact, $eio read errors, no wrong data"
		[ $eio -eq 0 ] || detected=$((detected + 1))
		con "RESULT files ok=$ok eio=$eio"
		run umount $mnt
	else
		echo "  mount refused: $(cat /tmp/mount.err)"
		con "RESULT mount-refused"
		detected=$((detected + 1))
	fi
	# ext4 finding a bad checksum or magic would mean wrong data got through.
	bad=$(dmesg | tail -n +$((n0 + 1)) | grep -E 'EXT4-fs.*([Cc]hecksum|[Cc]orrupt|bad magic|[Ii]nvalid)' | head -n 1)
	[ -z "$bad" ] || fail "WRONG DATA reached ext4: $bad"
	run dmsetup remove $name
	[ $detected -gt 0 ] || fail "the tampering was not detected (the open worked and every read succeeded)"
	;;
rollback)
	open_disk
	st=$(dmsetup status $name)
	case "$st" in
	*" anchor=none "*) ;;
	*) fail "the status does not say the disk is unprotected: $st" ;;
	esac
	s=$(status_sync)
	echo "  sync counter of the older image: $s (newer image: $SYNC_NEWER)"
	if [ -z "$s" ] || [ -z "$SYNC_NEWER" ] || [ "$s" -ge "$SYNC_NEWER" ]; then
		fail "the sync counter is not older than the newer image's ($s vs $SYNC_NEWER)"
	fi
	verify_expected
	con "RESULT rollback sync=$s"
	run dmsetup remove $name
	;;
*) fail "unknown PHASE=$PHASE" ;;
esac
unload_module
