# One user of a backing device at a time. The module's one registry of
# open disks (both devices consult it) refuses a second mlsdisk user, and
# the engine claims its backing device exclusively (a blk-mq disk with a
# holder of its own, a dm table's engine with device-mapper's, next to the
# table's dm_get_device claim), so that two engines never run on one
# device (each ignoring the other's writes: blocks synced through one read
# as zeros after a reopen through the other, as happened when both were
# accepted):
# 1. blk-mq disk first: a dm table on the same device is refused naming
#    the disk; a mount and mkfs of the backing device are refused (EBUSY);
#    the disk's data is intact.
# 2. dm table first: a mount and mkfs of the backing device are refused;
#    the data written through the blk-mq disk reads back through the table
#    before and after; insmod with a blk-mq disk on a device a dm table
#    holds fails with the cause in dmesg.
# 3. After the first user is gone, the device opens again.
# shellcheck shell=sh
# shellcheck source=qemu/guest/lib.sh
. /mlsdisk/lib.sh

need_module
D=/dev/vda
BDEV=/dev/mlsdisk0
mnt=/mnt/mlsdisk_x
run mkdir -p $mnt
if grep -q '^mlsdisk ' /proc/modules; then
	run rmmod mlsdisk
fi

# mount_busy: a mount of the backing device must fail because the device
# is in use (not only because it holds no ext4).
mount_busy() {
	echo "+ (must fail: busy) mount -t ext4 $D $mnt"
	if out=$(mount -t ext4 $D $mnt 2>&1); then
		umount $mnt
		fail "the backing device was mounted while a disk uses it"
	fi
	echo "  $out"
	echo "$out" | grep -qi busy || fail "mount failed, but not as busy: $out"
}

# The logical capacity of a disk on $D, from the refused over-long table.
capacity_sectors() {
	n0=$(dmesg | wc -l)
	dmsetup create mlsdisk_probe --table "0 $(disk_sectors $D) mlsdisk $D $KEY 1 open" 2>/dev/null &&
		fail "an over-long table was accepted"
	dmesg | tail -n +$((n0 + 1)) | sed -n 's/.*the maximum is \([0-9]*\) sectors.*/\1/p' | tail -n 1
}

# 1. blk-mq disk first.
run insmod /mlsdisk.ko disk_backing=$D disk_key=$KEY disk_mode=force_create
[ -b $BDEV ] || fail "$BDEV missing after insmod"
run dd if=/dev/urandom of=/tmp/x.bin bs=4096 count=64
run dd if=/tmp/x.bin of=$BDEV bs=4096 count=64 oflag=direct conv=fsync
want=$(md5sum </tmp/x.bin)
n0=$(dmesg | wc -l)
must_fail dmsetup create mlsdisk_x --table "0 8192 mlsdisk $D $KEY 1 open"
dm_exists mlsdisk_x && fail "a dm table on a device a blk-mq disk holds was created"
dmesg | tail -n +$((n0 + 1)) | grep -q "cannot open backing device" ||
	fail "no 'cannot open backing device' in dmesg for the refused table"
dmesg | tail -n +$((n0 + 1)) | grep -q "in use by the blk-mq disk /dev/mlsdisk0" ||
	fail "the refused table's message does not name the blk-mq disk holding the device"
mount_busy
must_fail mkfs.ext4 -q -F $D
got=$(dd if=$BDEV bs=4096 count=64 iflag=direct 2>/dev/null | md5sum)
[ "$got" = "$want" ] || fail "the blk-mq disk's data changed after the refused users"
run rmmod mlsdisk

# 2. dm table first (the disk made above opens with the same key).
run insmod /mlsdisk.ko
max=$(capacity_sectors)
[ -n "$max" ] || fail "no 'the maximum is N sectors' for $D"
len=$((max / 8 * 8))
run dmsetup create mlsdisk_x --table "0 $len mlsdisk $D $KEY 1 open"
got=$(dd if=/dev/mapper/mlsdisk_x bs=4096 count=64 iflag=direct 2>/dev/null | md5sum)
[ "$got" = "$want" ] || fail "the dm table reads other data than the blk-mq disk wrote"
mount_busy
must_fail mkfs.ext4 -q -F $D
got=$(dd if=/dev/mapper/mlsdisk_x bs=4096 count=64 iflag=direct 2>/dev/null | md5sum)
[ "$got" = "$want" ] || fail "the dm table's data changed after the refused users"
run dmsetup remove mlsdisk_x
run rmmod mlsdisk

# A blk-mq disk on a device a dm table holds: the module cannot be loaded
# a second time while its own table exists, so a dm linear table holds
# the device (the same dm_get_device claim) while the module loads with a
# blk-mq disk on it.
run dmsetup create mlsdisk_hold --table "0 8 linear $D 0"
n0=$(dmesg | wc -l)
must_fail insmod /mlsdisk.ko disk_backing=$D disk_key=$KEY disk_mode=open
! grep -q '^mlsdisk ' /proc/modules || fail "module loaded although its disk's device is held"
dmesg | tail -n +$((n0 + 1)) | grep -q "mlsdisk0: cannot open the backing device (in use" ||
	fail "no 'in use' cause in dmesg for the refused blk-mq disk"
run dmsetup remove mlsdisk_hold

# 3. Free again: the blk-mq disk opens and reads what was written.
run insmod /mlsdisk.ko disk_backing=$D disk_key=$KEY disk_mode=open
got=$(dd if=$BDEV bs=4096 count=64 iflag=direct 2>/dev/null | md5sum)
[ "$got" = "$want" ] || fail "data lost across the refused users"
run rmmod mlsdisk
