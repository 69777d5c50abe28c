# The blk-mq disk /dev/mlsdisk0, made by module parameters (no dmsetup) on
# the second virtual disk: create, 4 KiB blocks, write cache + FUA and
# discard advertised, the key not readable back; mkfs.ext4, mount, write,
# sync, fstrim, unload refused while mounted, umount, e2fsck -fn clean,
# rmmod (flushes and discards reached the engine, no request failed);
# insmod again with disk_mode=open, mount, checksums match, rmmod.
# The create and the open both run with disk_cache_mib=8 (a small cache
# budget, shown in the open line); disk_cache_mib=3 (below the table's
# cache_mib= range) fails insmod.
# Bad parameters fail insmod with a message; with the engine built in, a
# wrong key on open fails insmod with "wrong key" and no disk appears.
# shellcheck shell=sh
# shellcheck source=qemu/guest/lib.sh
. /mlsdisk/lib.sh

need_module
# The spare disk (vda): the dm tests use $DISK (vdb).
BDISK=/dev/vda
BDEV=/dev/mlsdisk0
mnt=/mnt/mlsdisk_blk

# This test loads the module with its own parameters.
if grep -q '^mlsdisk ' /proc/modules; then
	run rmmod mlsdisk
fi

# 1. Without parameters there is no disk.
run insmod /mlsdisk.ko
[ ! -e $BDEV ] || fail "$BDEV exists without disk_backing"
engine=0
if dmesg | grep -q 'mlsdisk: dm target registered (engine'; then
	engine=1
fi
echo "  engine built in: $engine"
run rmmod mlsdisk

# 2. Bad parameters fail insmod with a named cause.
n0=$(dmesg | wc -l)
must_fail insmod /mlsdisk.ko disk_backing=$BDISK disk_key=0011zz disk_mode=create
dmesg | tail -n +$((n0 + 1)) | grep -q 'mlsdisk: mlsdisk0: disk_key' || fail "no disk_key message for a malformed key"
must_fail insmod /mlsdisk.ko disk_backing=$BDISK disk_key=$KEY disk_mode=format
dmesg | tail -n +$((n0 + 1)) | grep -q "disk_mode 'format'" || fail "no disk_mode message"
must_fail insmod /mlsdisk.ko disk_backing=$BDISK disk_key=$KEY disk_mode=create disk_cache_mib=3
msg=$(dmesg | tail -n +$((n0 + 1)) | grep "mlsdisk0: disk_cache_mib '3'" | tail -n 1)
echo "+ dmesg: $msg"
case "$msg" in
*"from 4 to 16384"*) ;;
*) fail "no disk_cache_mib message naming the range for disk_cache_mib=3: '$msg'" ;;
esac
must_fail insmod /mlsdisk.ko disk_backing=/dev/nonexistent disk_key=$KEY
dmesg | tail -n +$((n0 + 1)) | grep -q "cannot find the backing device '/dev/nonexistent'" || fail "no message for a missing backing device"
! grep -q '^mlsdisk ' /proc/modules || fail "module loaded after a failed insmod"
[ ! -e $BDEV ] || fail "$BDEV left behind by a failed insmod"
if dmesg | grep -q "$KEY"; then
	fail "the key is in the kernel log"
fi

# 3. Create, with an 8 MiB cache budget (everything below writes through it).
run insmod /mlsdisk.ko disk_backing=$BDISK disk_key=$KEY disk_mode=force_create disk_cache_mib=8
[ -b $BDEV ] || fail "$BDEV is not a block device after insmod"
msg=$(dmesg | grep 'mlsdisk: mlsdisk0: created' | tail -n 1)
echo "+ dmesg: $msg"
case "$msg" in
*"cache budget 8 MiB"*) ;;
*) fail "the created line does not show disk_cache_mib=8: '$msg'" ;;
esac
if [ -e /sys/module/mlsdisk/parameters/disk_key ]; then
	fail "disk_key is visible under /sys/module/mlsdisk/parameters"
fi
if grep -rqs "$KEY" /sys/module/mlsdisk/; then
	fail "the key is readable under /sys/module/mlsdisk"
fi
[ "$(blockdev --getss $BDEV)" = 4096 ] || fail "logical block size $(blockdev --getss $BDEV), expected 4096"
pbs=$(cat /sys/block/mlsdisk0/queue/physical_block_size)
[ "$pbs" = 4096 ] || fail "physical block size $pbs, expected 4096"
sectors=$(disk_sectors $BDEV)
backing=$(disk_sectors $BDISK)
echo "  $BDEV: $sectors sectors on $backing"
if [ "$sectors" -le 0 ] || [ "$sectors" -gt "$backing" ]; then
	fail "capacity $sectors sectors is not in (0, $backing]"
fi
wc=$(cat /sys/block/mlsdisk0/queue/write_cache)
[ "$wc" = "write back" ] || fail "write_cache is '$wc': flushes would not reach the engine"
[ "$(cat /sys/block/mlsdisk0/queue/fua)" = 1 ] || fail "FUA not advertised"
[ "$(cat /sys/block/mlsdisk0/queue/discard_max_bytes)" -gt 0 ] || fail "discard not advertised"

run mkdir -p $mnt
run mkfs.ext4 -q -F $BDEV
run mount -t ext4 $BDEV $mnt
write_files $mnt
checksum_tree $mnt >/tmp/blk.sums || fail "checksumming $mnt"
[ "$(wc -l </tmp/blk.sums)" -eq 66 ] || fail "expected 66 files in $mnt, found $(wc -l </tmp/blk.sums)"
run rm -f $mnt/big/zero.bin
run sync
run fstrim -v $mnt
checksum_tree $mnt >/tmp/blk.sums || fail "checksumming $mnt after fstrim"

# 4. Unload refused while the disk is mounted.
must_fail rmmod mlsdisk
grep -q '^mlsdisk ' /proc/modules || fail "rmmod removed the module under a mounted disk"

run umount $mnt
run e2fsck -fn $BDEV
run rmmod mlsdisk
[ ! -e $BDEV ] || fail "$BDEV still exists after rmmod"
dmesg | grep -q 'mlsdisk: mlsdisk0: removed (synced and closed)' || fail "no 'removed (synced and closed)' at rmmod"
# Flushes (sync, umount, journal commits) and fstrim's discards reached
# the engine, and nothing failed. The line has the dm status line's
# request counters (one counter type for both devices) plus the syncs.
counts=$(dmesg | grep 'mlsdisk: mlsdisk0: closing: ' | tail -n 1)
echo "+ dmesg: $counts"
case "$counts" in
*": closing: reads="*" writes="*" flushes="*" fua="*" discards="*" errors="*" syncs="*" reread="*) ;;
*) fail "the closing line lacks the request counters: '$counts'" ;;
esac
for field in flushes syncs discards writes reads; do
	n=$(echo "$counts" | sed -n "s/.* $field=\([0-9]*\).*/\1/p")
	if [ -z "$n" ] || [ "$n" -le 0 ]; then
		fail "no $field reached the engine: '$counts'"
	fi
done
case "$counts" in
*" errors=0"*) ;;
*) fail "requests failed: '$counts'" ;;
esac

# 5. Open again (disk_mode=open, still disk_cache_mib=8): the same files.
run insmod /mlsdisk.ko disk_backing=$BDISK disk_key=$KEY disk_mode=open disk_cache_mib=8
[ -b $BDEV ] || fail "$BDEV missing after insmod disk_mode=open"
dmesg | grep 'mlsdisk: mlsdisk0: opened' | tail -n 1 | grep -q 'cache budget 8 MiB' ||
	fail "the opened line does not show disk_cache_mib=8"
[ "$(disk_sectors $BDEV)" = "$sectors" ] || fail "capacity changed after open"
run mount -t ext4 -o ro $BDEV $mnt
checksum_tree $mnt >/tmp/blk.sums2 || fail "checksumming $mnt after open"
if ! cmp -s /tmp/blk.sums /tmp/blk.sums2; then
	diff /tmp/blk.sums /tmp/blk.sums2 | head -n 10
	fail "checksums differ after rmmod + insmod disk_mode=open"
fi
echo "  checksums of $(wc -l </tmp/blk.sums) files match after open"
run umount $mnt
run e2fsck -fn $BDEV
run rmmod mlsdisk

# 6. A wrong key on open fails insmod (only the engine checks keys).
if [ $engine = 1 ]; then
	n0=$(dmesg | wc -l)
	must_fail insmod /mlsdisk.ko disk_backing=$BDISK disk_key=ff${KEY#??} disk_mode=open
	msg=$(dmesg | tail -n +$((n0 + 1)) | grep 'mlsdisk: mlsdisk0: wrong key' | tail -n 1)
	echo "+ dmesg: $msg"
	[ -n "$msg" ] || fail "no 'mlsdisk0: wrong key' in dmesg after a wrong key"
	! grep -q '^mlsdisk ' /proc/modules || fail "module loaded with a wrong key"
	[ ! -e $BDEV ] || fail "$BDEV exists after a wrong key"
	# The right key still opens it.
	run insmod /mlsdisk.ko disk_backing=$BDISK disk_key=$KEY
	run e2fsck -fn $BDEV
	run rmmod mlsdisk
else
	echo "  (pass-through build: no key check; the wrong-key step needs the engine (the default build))"
fi

# 7. Leave the spare disk as the other tests expect it: blank (some of them
#    check that a blank device holds no mlsdisk).
run dd if=/dev/zero of=$BDISK bs=1M count=$(($(disk_sectors $BDISK) / 2048)) conv=fsync
