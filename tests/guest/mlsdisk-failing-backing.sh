# A failing backing device: the disk sits on a dm device whose table is
# swapped, while the disk is live, for device-mapper's "error" target.
# Reads of blocks not in memory (the first one a read of scattered blocks,
# many device reads in flight at once) and syncs then fail with EIO, the kernel log
# names the cause (rate-limited), the status counts the errors, nothing
# oopses or hangs; with the device healthy again, the disk reopens to its
# last synced state.
# shellcheck shell=sh
# shellcheck source=qemu/guest/lib.sh
. /mlsdisk/lib.sh

load_module
sectors=$(disk_sectors "$DISK")
len=$((sectors / 2 / 8 * 8))
run dmsetup create mlsdisk_flaky --table "0 $sectors linear $DISK 0"
back=/dev/mapper/mlsdisk_flaky
run dmsetup create mlsdisk_f --table "0 $len mlsdisk $back $KEY 1 force_create"
dev=/dev/mapper/mlsdisk_f

# Data, synced.
run dd if=/dev/urandom of=/tmp/good bs=4096 count=16
run dd if=/tmp/good of=$dev bs=4096 seek=10 count=16 oflag=direct
run dmsetup message mlsdisk_f 0 sync
run dd if=$dev of=/tmp/back bs=4096 skip=10 count=16 iflag=direct
cmp -s /tmp/good /tmp/back || fail "data did not read back"

# Scattered data: the even blocks of 64..79 in one sync, the odd ones in
# the next, so no two neighbours are neighbours on the backing device and
# a read of all 16 is 16 device reads, which the module hands to the
# device at once (chained bios).
run dd if=/dev/urandom of=/tmp/scat bs=4096 count=16
for parity in 0 1; do
	i=$parity
	while [ "$i" -lt 16 ]; do
		dd if=/tmp/scat of=$dev bs=4096 skip=$i seek=$((64 + i)) count=1 oflag=direct 2>/dev/null ||
			fail "scattered write of block $((64 + i)) failed"
		i=$((i + 2))
	done
	run dmsetup message mlsdisk_f 0 sync
done
# One 64 KiB request (dd's bs is the request size).
run dd if=$dev of=/tmp/scat_back bs=65536 skip=4 count=1 iflag=direct
cmp -s /tmp/scat /tmp/scat_back || fail "scattered data did not read back"

# The backing device fails from now on. The first read to fail is the
# scattered one: every bio of its chain fails, and the read with them.
run dmsetup suspend mlsdisk_flaky
run dmsetup reload mlsdisk_flaky --table "0 $sectors error"
run dmsetup resume mlsdisk_flaky
n0=$(dmesg | wc -l)
must_fail dd if=$dev of=/dev/null bs=65536 skip=4 count=1 iflag=direct
must_fail dd if=$dev of=/dev/null bs=4096 skip=10 count=1 iflag=direct
dd if=/tmp/good of=$dev bs=4096 seek=40 count=1 oflag=direct || echo "  (the write failed too: the disk stopped after the read error)"
must_fail dmsetup message mlsdisk_f 0 sync
new=$(dmesg | tail -n +$((n0 + 1)))
echo "$new" | sed 's/^/    dmesg: /'
echo "$new" | grep -q "mlsdisk: backing device dm-0: read of 65536 bytes at sector .* failed: error -5" ||
	fail "the failed read of 16 ranges at once is not named in dmesg"
echo "$new" | grep -q "mlsdisk: read at block 64 failed: Io" ||
	fail "the failed bio is not named in dmesg"
echo "$new" | grep -q "mlsdisk: sync at message failed" ||
	fail "the failed sync is not named in dmesg"
st=$(dmsetup status mlsdisk_f)
echo "+ dmsetup status: $st"
case "$st" in
*" errors=0"*) fail "status counts no errors: $st" ;;
esac

# Healthy again: remove (its sync fails, logged) and reopen: the synced
# data is there.
run dmsetup suspend mlsdisk_flaky
run dmsetup reload mlsdisk_flaky --table "0 $sectors linear $DISK 0"
run dmsetup resume mlsdisk_flaky
run dmsetup remove mlsdisk_f
run dmsetup create mlsdisk_f --table "0 $len mlsdisk $back $KEY"
run dd if=$dev of=/tmp/back bs=4096 skip=10 count=16 iflag=direct
cmp -s /tmp/good /tmp/back || fail "the synced data did not survive the failure"
run dd if=$dev of=/tmp/scat_back bs=65536 skip=4 count=1 iflag=direct
cmp -s /tmp/scat /tmp/scat_back || fail "the scattered data did not survive the failure"
run dmsetup remove mlsdisk_f
run dmsetup remove mlsdisk_flaky
unload_module
