# The e2e file system flow on the mlsdisk target:
# insmod; format (create); dmsetup create from a table line (open); mkfs.ext4;
# mount; write; sync; umount; e2fsck -fn; remove; create again (open);
# mount; checksums match; rmmod.
# shellcheck shell=sh
# shellcheck source=qemu/guest/lib.sh
. /mlsdisk/lib.sh

load_module
[ -b "$DISK" ] || fail "$DISK is not a block device"
sectors=$(disk_sectors "$DISK")
# Half the backing device: the logical capacity of an mlsdisk is smaller
# than its backing device (over-provisioning and metadata), so a full-length
# table may rightly be refused. Multiple of 8 sectors (4 KiB blocks).
len=$((sectors / 2 / 8 * 8))
table="0 $len mlsdisk $DISK $KEY"

n0=$(dmesg | wc -l)
# Format the disk once ('create'); the round trip then opens it (the
# default) both times, so its second create really reopens the disk.
run dmsetup create mlsdisk_test --table "$table 1 force_create"
run dmsetup remove mlsdisk_test
fs_roundtrip mlsdisk_test "$table"

# The key must never be shown: not by dmsetup table, not in the kernel log.
run dmsetup create mlsdisk_test --table "$table"
tbl=$(dmsetup table mlsdisk_test) || fail "dmsetup table failed"
echo "+ dmsetup table: $tbl"
case "$tbl" in
*"$KEY"*) fail "dmsetup table prints the key" ;;
"0 $len mlsdisk "*) ;;
*) fail "dmsetup table does not show an mlsdisk target: $tbl" ;;
esac
st=$(dmsetup status mlsdisk_test) || fail "dmsetup status failed"
echo "+ dmsetup status: $st"
case "$st" in
"0 $len mlsdisk health=ok sync="*) ;;
*) fail "unexpected dmsetup status line: $st" ;;
esac
status_tokens_ok "$st"
run dmsetup remove mlsdisk_test
if dmesg | tail -n +$((n0 + 1)) | grep -qi "$KEY"; then
	fail "the key appears in the kernel log"
fi

unload_module
