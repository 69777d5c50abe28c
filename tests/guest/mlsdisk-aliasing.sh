# One disk serves one target of one mapped device. dm tables all claim
# their devices with device-mapper's one holder, so the exclusive open does
# not keep two mapped devices (or two targets of one table) off one
# backing device; the target's registry of open disks does: each would
# map LBA 0.. of the same engine (two file systems on one disk).
# 1. A second mapped device on the backing device of a live one is
#    refused (same key, open), with the cause in dmesg.
# 2. A table with two mlsdisk targets on one backing device is refused.
# 3. A reload of the same mapped device still shares the open disk (the
#    new table is built while the old one is live), and the data written
#    before is read back through it.
# shellcheck shell=sh
# shellcheck source=qemu/guest/lib.sh
. /mlsdisk/lib.sh

load_module
D=/dev/vda
n0=$(dmesg | wc -l)
dmsetup create mlsdisk_probe --table "0 $(disk_sectors $D) mlsdisk $D $KEY 1 force_create" 2>/dev/null &&
	fail "an over-long table was accepted"
max=$(dmesg | tail -n +$((n0 + 1)) | sed -n 's/.*the maximum is \([0-9]*\) sectors.*/\1/p' | tail -n 1)
[ -n "$max" ] || fail "no 'the maximum is N sectors' for $D"
len=$((max / 8 * 8))
half=$((len / 2 / 8 * 8))
run dmsetup create mlsdisk_a --table "0 $len mlsdisk $D $KEY 1 force_create"
run dd if=/dev/urandom of=/tmp/alias.bin bs=4096 count=16
run dd if=/tmp/alias.bin of=/dev/mapper/mlsdisk_a bs=4096 oflag=direct conv=fsync
want=$(md5sum </tmp/alias.bin)

# 1. A second mapped device on the same backing device.
n0=$(dmesg | wc -l)
must_fail dmsetup create mlsdisk_b --table "0 $len mlsdisk $D $KEY 1 open"
dm_exists mlsdisk_b && fail "a second mapped device on the backing device of mlsdisk_a was created"
dmesg | tail -n +$((n0 + 1)) | grep -q "in use by another mapped device" ||
	fail "no 'in use by another mapped device' in dmesg"
must_fail dmsetup create mlsdisk_b --table "0 $half mlsdisk $D $KEY"
dm_exists mlsdisk_b && fail "a second (shorter) mapped device on the same backing device was created"
run dmsetup remove mlsdisk_a

# 2. Two targets of one table on one backing device.
n0=$(dmesg | wc -l)
printf '0 %s mlsdisk %s %s\n%s %s mlsdisk %s %s\n' $half $D $KEY $half $half $D $KEY >/tmp/two.table
must_fail dmsetup create mlsdisk_two /tmp/two.table
dm_exists mlsdisk_two && fail "a table with two mlsdisk targets on one device was created"
dmesg | tail -n +$((n0 + 1)) | grep -q "two mlsdisk targets of one table" ||
	fail "no 'two mlsdisk targets of one table' in dmesg"

# 3. A reload of one mapped device shares the disk; the data is intact.
run dmsetup create mlsdisk_a --table "0 $len mlsdisk $D $KEY"
got=$(dd if=/dev/mapper/mlsdisk_a bs=4096 count=16 iflag=direct 2>/dev/null | md5sum)
[ "$got" = "$want" ] || fail "mlsdisk_a reads other data after the refused tables"
run dmsetup reload mlsdisk_a --table "0 $half mlsdisk $D $KEY"
run dmsetup resume mlsdisk_a
[ "$(disk_sectors /dev/mapper/mlsdisk_a)" = "$half" ] || fail "the reload did not take effect"
got=$(dd if=/dev/mapper/mlsdisk_a bs=4096 count=16 iflag=direct 2>/dev/null | md5sum)
[ "$got" = "$want" ] || fail "mlsdisk_a reads other data after a reload"
run dmsetup remove mlsdisk_a
unload_module
# Leave the spare disk blank, as the other tests expect it.
run dd if=/dev/zero of=$D bs=1M count=$(($(disk_sectors $D) / 2048)) conv=fsync
