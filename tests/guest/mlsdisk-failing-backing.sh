# A failing backing device: the target sits on a dm device whose second
# half is device-mapper's "error" target. I/O to the good half works; I/O to
# the failing half ends with EIO, the kernel log names the cause
# (rate-limited), the status counts the errors, and nothing oopses or hangs.
# shellcheck shell=sh
# shellcheck source=qemu/guest/lib.sh
. /mlsdisk/lib.sh

load_module
sectors=$(disk_sectors "$DISK")
half=$((sectors / 2 / 8 * 8))
printf '0 %s linear %s 0\n%s %s error\n' "$half" "$DISK" "$half" "$half" |
	dmsetup create mlsdisk_flaky || fail "cannot build the half-failing backing device"
len=$((half * 2))
run dmsetup create mlsdisk_f --table "0 $len mlsdisk /dev/mapper/mlsdisk_flaky $KEY"
dev=/dev/mapper/mlsdisk_f

# The good half.
run dd if=/dev/urandom of=/tmp/good bs=4096 count=16
run dd if=/tmp/good of=$dev bs=4096 seek=10 count=16 oflag=direct conv=fsync
run dd if=$dev of=/tmp/back bs=4096 skip=10 count=16 iflag=direct
cmp -s /tmp/good /tmp/back || fail "data in the good half did not read back"

# The failing half: reads and writes fail with an I/O error.
n0=$(dmesg | wc -l)
blk=$((half / 8 + 5))
must_fail dd if=$dev of=/dev/null bs=4096 skip=$blk count=1 iflag=direct
must_fail dd if=/tmp/good of=$dev bs=4096 seek=$blk count=1 oflag=direct
new=$(dmesg | tail -n +$((n0 + 1)))
echo "$new" | sed 's/^/    dmesg: /'
echo "$new" | grep -q "mlsdisk: backing device .*: read of 4096 bytes at sector $((blk * 8)) failed" ||
	fail "the failed backing read is not named in dmesg"
echo "$new" | grep -q "mlsdisk: read at block $blk failed: Io" ||
	fail "the failed bio is not named in dmesg"
echo "$new" | grep -q "mlsdisk: write at block $blk failed: Io" ||
	fail "the failed write bio is not named in dmesg"
st=$(dmsetup status mlsdisk_f)
echo "+ dmsetup status: $st"
case "$st" in
*" errors=0"*) fail "status counts no errors: $st" ;;
esac

# The good half still works after the errors; removal is clean.
run dd if=$dev of=/tmp/back bs=4096 skip=10 count=16 iflag=direct
cmp -s /tmp/good /tmp/back || fail "the good half changed after errors"
run dmsetup remove mlsdisk_f
run dmsetup remove mlsdisk_flaky
unload_module
