# The user flow with the mlsdisk CLI only (docs/admin-guide.md): the disk
# on the test disk vdb, its rollback anchor on the first 8 KiB of the spare
# disk vda.
#
# 1. `mlsdisk format` the disk (with the anchor); `mlsdisk size` gives the
#    table length a hex key, a key file and the key on stdin agree on.
# 2. `mlsdisk open` with the hex key: /dev/mapper/NAME has that length;
#    mkfs.ext4, mount, write, umount; `mlsdisk status --json` has the
#    named fields; `mlsdisk format` refused while the disk is open (in
#    use); `mlsdisk close`.
# 3. `mlsdisk open` with a key file, then with a logon key in the keyring
#    (keyctl padd; --key-desc logon:NAME): mount, checksums match, e2fsck
#    clean, close. The key never shows in `dmsetup table`.
# 4. `mlsdisk format` on the closed disk refused without --force (the
#    disk still opens with its data); a second `mlsdisk open` of a mapped
#    device and a wrong key refused with a message.
# shellcheck shell=sh
# shellcheck source=qemu/guest/lib.sh
. /mlsdisk/lib.sh

command -v mlsdisk >/dev/null || fail "mlsdisk is not in the guest image (qemu/run-guest.sh installs it)"
command -v keyctl >/dev/null || fail "keyctl is not in the guest image"
load_module
run mlsdisk --version
ANC=/dev/vda
NAME=mlsdisk_cli
DEV=/dev/mapper/$NAME
mnt=/mnt/$NAME
run mkdir -p $mnt
printf '%s\n' "$KEY" >/tmp/key.hex
# The same key as 32 raw bytes.
echo "$KEY" | xxd -r -p >/tmp/key.bin
[ "$(wc -c </tmp/key.bin)" -eq 32 ] || fail "the raw key file is not 32 bytes"
# A blank anchor area (the spare disk may hold anything).
run dd if=/dev/zero of=$ANC bs=4096 count=2 conv=fsync status=none

# 1. Format and size.
run mlsdisk format $DISK --key "$KEY" --anchor $ANC --batch
sectors=$(mlsdisk size $DISK --key-file /tmp/key.hex) || fail "mlsdisk size failed"
echo "+ mlsdisk size: $sectors"
dev_sectors=$(disk_sectors $DISK)
if [ "$sectors" -le 0 ] || [ "$sectors" -ge "$dev_sectors" ] || [ $((sectors % 8)) -ne 0 ]; then
	fail "size $sectors is not a multiple of 8 in 0..$dev_sectors"
fi
[ "$(mlsdisk size $DISK --key "$KEY")" = "$sectors" ] || fail "size with --key differs"
[ "$(mlsdisk size $DISK --key-file - </tmp/key.bin)" = "$sectors" ] || fail "size with a raw key on stdin differs"

# open_check HOW...: opens with the key options HOW and checks the mapping.
open_check() {
	run mlsdisk open $DISK $NAME --anchor $ANC "$@"
	dm_exists $NAME || fail "dmsetup ls does not list $NAME after mlsdisk open"
	got=$(blockdev --getsz $DEV) || fail "blockdev --getsz $DEV"
	[ "$got" = "$sectors" ] || fail "$DEV has $got sectors, mlsdisk size said $sectors"
	tbl=$(dmsetup table $NAME)
	echo "+ dmsetup table: $tbl"
	case "$tbl" in
	*"$KEY"*) fail "dmsetup table shows the key" ;;
	"0 $sectors mlsdisk "*"anchor=dev:"*) ;;
	*) fail "unexpected table: $tbl" ;;
	esac
}

# 2. Hex key: file system, status, close.
open_check --key "$KEY"
run mkfs.ext4 -q -F $DEV
run mount -t ext4 $DEV $mnt
write_files $mnt
checksum_tree $mnt >/tmp/cli.sums || fail "checksumming $mnt"
[ "$(wc -l </tmp/cli.sums)" -eq 66 ] || fail "expected 66 files in $mnt"
run umount $mnt
json=$(mlsdisk status $NAME --json) || fail "mlsdisk status --json failed"
echo "+ mlsdisk status --json: $json"
for want in "\"name\":\"$NAME\"" "\"sectors\":$sectors" '"health":"ok"' '"sync":' '"mapped":' '"free":' '"anchor":"dev'; do
	case "$json" in
	*"$want"*) ;;
	*) fail "status --json lacks $want" ;;
	esac
done
run mlsdisk status $NAME
expect_fail "$DISK: in use" mlsdisk format $DISK --key "$KEY" --force --batch
expect_fail "$DISK: in use" mlsdisk open $DISK ${NAME}2 --key "$KEY"
run mlsdisk close $NAME
! dm_exists $NAME || fail "$NAME still mapped after mlsdisk close"
expect_fail "dmsetup table failed" mlsdisk close $NAME

# verify: mount, compare checksums, e2fsck, close.
verify() {
	run mount -t ext4 $DEV $mnt
	checksum_tree $mnt >/tmp/cli.sums2 || fail "checksumming $mnt"
	cmp -s /tmp/cli.sums /tmp/cli.sums2 || fail "checksums differ after re-open ($1)"
	run umount $mnt
	run e2fsck -fn $DEV
	run mlsdisk close $NAME
}

# 3. Key file, then the keyring.
open_check --key-file /tmp/key.hex
verify "key file"
run keyctl clear @u
kid=$(keyctl padd logon mlsdisk:cli @u </tmp/key.bin) || fail "keyctl padd logon failed"
echo "+ keyctl padd logon mlsdisk:cli @u = $kid"
open_check --key-desc logon:mlsdisk:cli
case "$(dmsetup table $NAME)" in
*":32:logon:mlsdisk:cli"*) ;;
*) fail "the table does not name the keyring key" ;;
esac
verify "keyring"
run keyctl unlink "$kid" @u

# 4. Refusals.
expect_fail "$DISK: holds an MlsDisk; formatting destroys it (--force to do so anyway)" \
	mlsdisk format $DISK --key "$KEY" --batch
expect_fail "$DISK: wrong key" mlsdisk open $DISK $NAME --key ffeeddccbbaa99887766554433221100
! dm_exists $NAME || fail "a refused open left $NAME behind"
open_check --key-file - </tmp/key.bin
verify "after the refused format"
