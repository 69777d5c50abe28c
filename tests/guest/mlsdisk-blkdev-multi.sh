# Several blk-mq disks from the module parameters (comma lists), on two
# 64 MiB dm-linear halves of the test disk vdb (one named by path, one by
# major:minor), with the rollback anchor of the blk-mq disks on the first
# 8 KiB of the spare disk vda.
#
# 1. Bad lists fail insmod with a message and leave no disk: a count
#    mismatch, a device used twice, more than 8 disks, the anchor on the
#    backing device.
# 2. Two disks at once: create, ext4 on each, write, checksum; rmmod
#    refused while one of them is mounted; rmmod; insmod disk_mode=open on
#    both: the checksums match, per disk.
# 3. A wrong key for the second disk fails insmod naming mlsdisk1, after
#    the first engine was opened: it is closed again without its disk ever
#    having been added, no /dev/mlsdisk0 is left, and both still open with
#    the right keys (tests/guest/mlsdisk-insmod-fail.sh probes for it).
# 4. disk_anchor=none,/dev/vda: a rollback of the second disk's backing
#    device is refused at insmod ("older than its rollback anchor", naming
#    mlsdisk1); without the anchor the old image opens; the current image
#    opens with the anchor and its newest data.
# shellcheck shell=sh
# shellcheck source=qemu/guest/lib.sh
. /mlsdisk/lib.sh

need_module
KEY2=1f1e1d1c1b1a191817161514131211100f0e0d0c0b0a09080706050403020100
half=131072
H0=/dev/mapper/mlsdisk_h0
ANC=/dev/vda
m0=/mnt/mlsdisk_m0
m1=/mnt/mlsdisk_m1

if grep -q '^mlsdisk ' /proc/modules; then
	run rmmod mlsdisk
fi
run insmod /mlsdisk.ko
engine=0
if dmesg | grep -q 'mlsdisk: dm target registered (engine'; then
	engine=1
fi
run rmmod mlsdisk

run dmsetup create mlsdisk_h0 --table "0 $half linear $DISK 0"
run dmsetup create mlsdisk_h1 --table "0 $half linear $DISK $half"
H1=$(dmsetup info -c --noheadings -o major,minor --separator : mlsdisk_h1 | tr -d ' ') ||
	fail "no major:minor for mlsdisk_h1"
case "$H1" in
[0-9]*:[0-9]*) ;;
*) fail "no major:minor for mlsdisk_h1: '$H1'" ;;
esac
echo "  disks on $H0 and $H1 (major:minor of /dev/mapper/mlsdisk_h1)"
BOTH="disk_backing=$H0,$H1"

# none_left: no module, no /dev/mlsdisk0 or 1.
none_left() {
	! grep -q '^mlsdisk ' /proc/modules || fail "$1: module loaded"
	[ ! -e /dev/mlsdisk0 ] || fail "$1: /dev/mlsdisk0 left behind"
	[ ! -e /dev/mlsdisk1 ] || fail "$1: /dev/mlsdisk1 left behind"
}

# refused LABEL WANT PARAMS...: insmod fails, leaves nothing, and the new
# kernel log lines name WANT.
refused() {
	label=$1
	want=$2
	shift 2
	n1=$(dmesg | wc -l)
	must_fail insmod /mlsdisk.ko "$@"
	new=$(dmesg | tail -n +$((n1 + 1)))
	echo "$new" | grep 'mlsdisk' | sed 's/^/    dmesg: /'
	echo "$new" | grep -q "mlsdisk: .*$want" || fail "$label: no 'mlsdisk: ...$want' in dmesg"
	none_left "$label"
}

# 1. Bad lists.
refused "three keys for two disks" "3 items for 2 disks" "$BOTH" disk_key=$KEY,$KEY2,$KEY disk_mode=create
refused "one device twice" "mlsdisk0 and mlsdisk1 use the same device" \
	disk_backing=$H0,$H0 disk_key=$KEY disk_mode=create
refused "nine disks" "at most 8" disk_backing=$H0,$H0,$H0,$H0,$H0,$H0,$H0,$H0,$H0 disk_key=$KEY
refused "anchor on the backing device" "mlsdisk1: the anchor device is the backing device" \
	"$BOTH" disk_key=$KEY,$KEY2 disk_mode=create disk_anchor=none,"$H1"
refused "bad mode of the second disk" "mlsdisk1: disk_mode 'format'" \
	"$BOTH" disk_key=$KEY,$KEY2 disk_mode=create,format
if dmesg | grep -q -e "$KEY" -e "$KEY2"; then
	fail "a key is in the kernel log"
fi

# 2. Two disks: create, ext4, write.
run insmod /mlsdisk.ko "$BOTH" disk_key=$KEY,$KEY2 disk_mode=force_create
for i in 0 1; do
	[ -b /dev/mlsdisk$i ] || fail "/dev/mlsdisk$i is not a block device after insmod"
	echo "+ dmesg: $(dmesg | grep "mlsdisk: mlsdisk$i: created on" | tail -n 1)"
done
[ ! -e /dev/mlsdisk2 ] || fail "/dev/mlsdisk2 exists with two backing devices"
dmesg | grep -q "mlsdisk: mlsdisk1: created on $H1 " || fail "no 'mlsdisk1: created on $H1'"
[ -e /sys/module/mlsdisk/parameters/disk_key ] && fail "disk_key is visible in sysfs"
if grep -rqs -e "$KEY" -e "$KEY2" /sys/module/mlsdisk/; then
	fail "a key is readable under /sys/module/mlsdisk"
fi
run mkdir -p $m0 $m1
for d in 0 1; do
	# (write_files uses $i.)
	mnt=/mnt/mlsdisk_m$d
	run mkfs.ext4 -q -F /dev/mlsdisk$d
	run mount -t ext4 /dev/mlsdisk$d $mnt
	write_files $mnt
	echo "this is mlsdisk$d" >$mnt/whoami || fail "write $mnt/whoami"
	run sync
	checksum_tree $mnt >/tmp/multi$d.sums || fail "checksumming $mnt"
	[ "$(wc -l </tmp/multi$d.sums)" -eq 67 ] || fail "expected 67 files in $mnt"
done
# The two disks hold different data (random.bin, whoami).
cmp -s /tmp/multi0.sums /tmp/multi1.sums && fail "the two disks hold the same files"

# rmmod refused while either disk is mounted.
run umount $m0
must_fail rmmod mlsdisk
grep -q '^mlsdisk ' /proc/modules || fail "rmmod removed the module under a mounted mlsdisk1"
[ -b /dev/mlsdisk0 ] || fail "a refused rmmod removed /dev/mlsdisk0"
[ "$(cat $m1/whoami)" = "this is mlsdisk1" ] || fail "mlsdisk1 unreadable after a refused rmmod"
run umount $m1
run e2fsck -fn /dev/mlsdisk0
run e2fsck -fn /dev/mlsdisk1
run rmmod mlsdisk
none_left "rmmod"
for i in 0 1; do
	dmesg | grep -q "mlsdisk: mlsdisk$i: removed (synced and closed)" ||
		fail "no 'mlsdisk$i: removed (synced and closed)' at rmmod"
	counts=$(dmesg | grep "mlsdisk: mlsdisk$i: closing: " | tail -n 1)
	echo "+ dmesg: $counts"
	case "$counts" in
	*" errors=0"*) ;;
	*) fail "requests of mlsdisk$i failed: '$counts'" ;;
	esac
done

# Open both (one disk_mode for all): the same files on each.
reopen_and_check() {
	run insmod /mlsdisk.ko "$BOTH" disk_key=$KEY,$KEY2 disk_mode=open
	for i in 0 1; do
		mnt=/mnt/mlsdisk_m$i
		run mount -t ext4 -o ro /dev/mlsdisk$i $mnt
		checksum_tree $mnt >/tmp/multi$i.sums2 || fail "checksumming $mnt after open"
		if ! cmp -s /tmp/multi$i.sums /tmp/multi$i.sums2; then
			diff /tmp/multi$i.sums /tmp/multi$i.sums2 | head -n 10
			fail "mlsdisk$i: checksums differ after $1"
		fi
		[ "$(cat $mnt/whoami)" = "this is mlsdisk$i" ] || fail "mlsdisk$i holds another disk's files"
		run umount $mnt
	done
	echo "  checksums of both disks match after $1"
	run rmmod mlsdisk
	none_left "rmmod after $1"
}
reopen_and_check "rmmod + insmod disk_mode=open"

if [ $engine = 0 ]; then
	echo "  (pass-through build: no key check and no anchor; steps 3 and 4 need the engine (the default build))"
else
	# 3. A wrong key for the second disk: the first engine was opened, then
	# closed.
	n1=$(dmesg | wc -l)
	must_fail insmod /mlsdisk.ko "$BOTH" disk_key=$KEY,ff${KEY2#??} disk_mode=open
	new=$(dmesg | tail -n +$((n1 + 1)))
	echo "$new" | grep 'mlsdisk' | sed 's/^/    dmesg: /'
	echo "$new" | grep -q 'mlsdisk: mlsdisk0: opened on' || fail "mlsdisk0 was not opened before mlsdisk1 failed"
	echo "$new" | grep -q 'mlsdisk: mlsdisk1: wrong key' || fail "no 'mlsdisk1: wrong key'"
	echo "$new" | grep -q "mlsdisk: mlsdisk1: cannot open the disk on '$H1'" ||
		fail "no 'mlsdisk1: cannot open the disk on ...' naming the device"
	echo "$new" | grep -q 'mlsdisk: mlsdisk0: engine closed (synced); the disk was never added' ||
		fail "mlsdisk0's engine not closed (unadded) after mlsdisk1 failed"
	none_left "wrong key of mlsdisk1"
	reopen_and_check "a failed insmod"

	# 4. The rollback anchor of mlsdisk1 on vda's first 8 KiB (blank: it is
	#    taken up at the first open).
	A="disk_anchor=none,$ANC"
	run dd if=/dev/zero of=$ANC bs=4096 count=2 conv=fsync 2>/dev/null
	put_block5() {
		printf '%s' "$1" | dd of=/dev/mlsdisk1 bs=4096 seek=5 conv=sync,fsync 2>/dev/null ||
			fail "write $1"
	}
	block5() {
		dd if=/dev/mlsdisk1 bs=4096 skip=5 count=1 iflag=direct 2>/dev/null | tr -d '\000'
	}
	put_image() {
		run dd if="$1" of=/dev/mapper/mlsdisk_h1 bs=1M conv=fsync 2>/dev/null
		run blockdev --flushbufs /dev/mapper/mlsdisk_h1
	}
	run insmod /mlsdisk.ko "$BOTH" disk_key=$KEY,$KEY2 "$A"
	dmesg | grep -q "mlsdisk: mlsdisk1: opened on $H1 .*rollback anchor on $ANC" ||
		fail "no 'mlsdisk1: opened ... rollback anchor on $ANC'"
	dmesg | grep "mlsdisk: mlsdisk0: opened on" | tail -n 1 | grep -q "no rollback anchor" ||
		fail "mlsdisk0 does not say 'no rollback anchor'"
	put_block5 version-one
	run rmmod mlsdisk
	n=$(dd if=$ANC bs=4096 count=2 iflag=direct 2>/dev/null | tr -d '\000' | wc -c)
	[ "$n" -gt 0 ] || fail "the blank anchor was not started"
	run dd if=/dev/mapper/mlsdisk_h1 of=/tmp/image-v1 bs=1M 2>/dev/null
	run insmod /mlsdisk.ko "$BOTH" disk_key=$KEY,$KEY2 "$A"
	[ "$(block5)" = "version-one" ] || fail "mlsdisk1 does not read version-one"
	put_block5 version-two
	run rmmod mlsdisk
	run dd if=/dev/mapper/mlsdisk_h1 of=/tmp/image-v2 bs=1M 2>/dev/null

	# The whole backing device of mlsdisk1 rolled back, the anchor intact.
	put_image /tmp/image-v1
	refused "whole-image rollback" "mlsdisk1: the disk image is older than its rollback anchor" \
		"$BOTH" disk_key=$KEY,$KEY2 "$A"
	dmesg | tail -n 20 | grep -q 'mlsdisk: mlsdisk0: engine closed (synced); the disk was never added' ||
		fail "mlsdisk0's engine not closed (unadded) after the rollback of mlsdisk1 was refused"
	# Without the anchor the old image opens (what the anchor adds).
	run insmod /mlsdisk.ko "$BOTH" disk_key=$KEY,$KEY2
	[ "$(block5)" = "version-one" ] || fail "the old image without anchor does not read version-one"
	run rmmod mlsdisk
	# The current image opens with the anchor, with its newest data.
	put_image /tmp/image-v2
	rm -f /tmp/image-v1 /tmp/image-v2
	run insmod /mlsdisk.ko "$BOTH" disk_key=$KEY,$KEY2 "$A"
	got=$(block5)
	[ "$got" = "version-two" ] || fail "the current image reads '$got'"
	run e2fsck -fn /dev/mlsdisk0
	run rmmod mlsdisk
	none_left "the end"
fi

# Leave the disks blank for the tests after this one.
run dd if=/dev/zero of=$ANC bs=4096 count=2 conv=fsync 2>/dev/null
run dmsetup remove mlsdisk_h0
run dmsetup remove mlsdisk_h1
run dd if=/dev/zero of=$DISK bs=1M count=$((2 * half / 2048)) conv=fsync
rm -f /tmp/multi0.sums /tmp/multi1.sums /tmp/multi0.sums2 /tmp/multi1.sums2
