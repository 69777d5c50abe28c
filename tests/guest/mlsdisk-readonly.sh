# A read-only table (dmsetup create --readonly: dm_table_get_mode without
# BLK_OPEN_WRITE) never writes the backing device: writes and discards are
# refused with an I/O error, a flush completes without a sync, the 'sync'
# message is refused (EROFS), suspend and removal do not sync, and no
# background work runs. 'create' on a read-only table is refused.
# Checked by the raw contents of the backing device (sha256 of all of it)
# before the read-only table is made and after it is gone, with reads,
# refused writes, a flush, suspend/resume and an idle pause in between; and
# by the device's write counter in /sys/block/vda/stat. The engine of a
# read-only table opens its devices read-only and refuses any write below
# itself: a table whose open would write (a blank rollback anchor to
# start) is refused and writes nothing; a writable reload onto a disk a
# read-only table opened is refused.
# shellcheck shell=sh
# shellcheck source=qemu/guest/lib.sh
. /mlsdisk/lib.sh

load_module
D=/dev/vda
run dd if=/dev/zero of=$D bs=4096 count=2 conv=fsync
len=16384
# A disk with data, written through a writable table.
run dmsetup create mlsdisk_rw --table "0 $len mlsdisk $D $KEY 1 create"
run dd if=/dev/urandom of=/tmp/ro.bin bs=4096 count=64
run dd if=/tmp/ro.bin of=/dev/mapper/mlsdisk_rw bs=4096 oflag=direct conv=fsync
want=$(md5sum </tmp/ro.bin)
run dmsetup remove mlsdisk_rw

# 'create' on a read-only table.
n0=$(dmesg | wc -l)
must_fail dmsetup create --readonly mlsdisk_ro --table "0 $len mlsdisk $D $KEY 1 force_create"
dmesg | tail -n +$((n0 + 1)) | grep -q "'create' needs a writable table" ||
	fail "no \"'create' needs a writable table\" in dmesg"

run blockdev --flushbufs $D
before=$(sha256sum <$D)
w0=$(awk '{print $5}' /sys/block/vda/stat)
run dmsetup create --readonly mlsdisk_ro --table "0 $len mlsdisk $D $KEY"
got=$(dd if=/dev/mapper/mlsdisk_ro bs=4096 count=64 iflag=direct 2>/dev/null | md5sum)
[ "$got" = "$want" ] || fail "the read-only table reads other data"
# Writes: refused (the 7.3 block layer already refuses them on the
# read-only mapped device; the target refuses any that reach it).
echo "+ (must fail) dd to the read-only table"
if dd if=/dev/urandom of=/dev/mapper/mlsdisk_ro bs=4096 count=4 oflag=direct 2>/dev/null; then
	fail "a write to a read-only table succeeded"
fi
must_fail blkdiscard -o 0 -l 65536 /dev/mapper/mlsdisk_ro
n0=$(dmesg | wc -l)
must_fail dmsetup message mlsdisk_ro 0 sync
dmesg | tail -n +$((n0 + 1)) | grep -q "sync refused: the table is read-only" ||
	fail "no 'sync refused: the table is read-only' in dmesg"
run blockdev --flushbufs /dev/mapper/mlsdisk_ro
run dmsetup suspend mlsdisk_ro
run dmsetup resume mlsdisk_ro
# Time for background work, were any to run.
sleep 3
st=$(dmsetup status mlsdisk_ro)
echo "+ dmsetup status: $st"
status_tokens_ok "$st"
got=$(dd if=/dev/mapper/mlsdisk_ro bs=4096 count=64 iflag=direct 2>/dev/null | md5sum)
[ "$got" = "$want" ] || fail "the read-only table reads other data after the refused writes"
run dmsetup remove mlsdisk_ro
w1=$(awk '{print $5}' /sys/block/vda/stat)
run blockdev --flushbufs $D
after=$(sha256sum <$D)
echo "  vda writes completed: $w0 before, $w1 after the read-only table"
[ "$before" = "$after" ] || fail "the backing device changed under a read-only table"
[ "$w0" = "$w1" ] || fail "the read-only table wrote to the backing device ($w0 -> $w1 writes)"

# The engine of a read-only table opens its devices read-only and refuses
# every write below itself, so an open that would write is refused instead
# of writing. A blank rollback anchor is started on first use by a write:
# with a read-only table the table is refused (EROFS, named in dmesg) and
# both the backing device and the anchor device stay as they were.
anc=$DISK
run dd if=/dev/zero of=$anc bs=4096 count=2 conv=fsync
run blockdev --flushbufs $anc
anc_before=$(dd if=$anc bs=4096 count=2 2>/dev/null | sha256sum)
n0=$(dmesg | wc -l)
must_fail dmsetup create --readonly mlsdisk_ro --table "0 $len mlsdisk $D $KEY 1 anchor=dev:$anc"
dmesg | tail -n +$((n0 + 1)) | grep -q "read-only table: the rollback anchor needs a write" ||
	fail "no 'read-only table: the rollback anchor needs a write' in dmesg"
dmsetup info mlsdisk_ro >/dev/null 2>&1 && fail "the refused read-only table is there"
run blockdev --flushbufs $anc
anc_after=$(dd if=$anc bs=4096 count=2 2>/dev/null | sha256sum)
[ "$anc_before" = "$anc_after" ] || fail "a read-only table wrote its rollback anchor device"

# A writable table may not join a disk a read-only table opened (its
# devices are open read-only): a writable reload of the read-only mapped
# device is refused (EROFS, named in dmesg), the read-only table stays.
run dmsetup create --readonly mlsdisk_ro --table "0 $len mlsdisk $D $KEY"
n0=$(dmesg | wc -l)
must_fail dmsetup reload mlsdisk_ro --table "0 $len mlsdisk $D $KEY"
dmesg | tail -n +$((n0 + 1)) | grep -q "is open read-only (by a read-only table)" ||
	fail "no 'is open read-only (by a read-only table)' in dmesg"
got=$(dd if=/dev/mapper/mlsdisk_ro bs=4096 count=64 iflag=direct 2>/dev/null | md5sum)
[ "$got" = "$want" ] || fail "the read-only table reads other data after the refused reload"
run dmsetup remove mlsdisk_ro
w2=$(awk '{print $5}' /sys/block/vda/stat)
run blockdev --flushbufs $D
after=$(sha256sum <$D)
echo "  vda writes completed: $w1 before, $w2 after the refused tables"
[ "$before" = "$after" ] || fail "the backing device changed under the refused read-only tables"
[ "$w1" = "$w2" ] || fail "the refused read-only tables wrote to the backing device ($w1 -> $w2 writes)"

# The same disk opens writable again with its data.
run dmsetup create mlsdisk_rw --table "0 $len mlsdisk $D $KEY"
got=$(dd if=/dev/mapper/mlsdisk_rw bs=4096 count=64 iflag=direct 2>/dev/null | md5sum)
[ "$got" = "$want" ] || fail "the disk reads other data after the read-only table"
run dmsetup remove mlsdisk_rw
unload_module
run dd if=/dev/zero of=$D bs=1M count=$(($(disk_sectors $D) / 2048)) conv=fsync
run dd if=/dev/zero of=$anc bs=4096 count=2 conv=fsync
