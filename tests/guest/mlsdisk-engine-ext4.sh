# The full ext4 flow on the real engine: create (format), mkfs, mount,
# write, sync, umount, e2fsck -fn clean, remove, open again (the default
# option), mount, checksums match; the table never shows the key; status
# shows health, sync counter, free space, write amplification and that no
# rollback anchor protects the disk; messages; unload refused while open.
# shellcheck shell=sh
# shellcheck source=qemu/guest/lib.sh
. /mlsdisk/lib.sh

load_module
sectors=$(disk_sectors "$DISK")

# 1. A length beyond the logical capacity is refused, naming the maximum.
n0=$(dmesg | wc -l)
must_fail dmsetup create mlsdisk_e --table "0 $sectors mlsdisk $DISK $KEY 1 force_create"
msg=$(dmesg | tail -n +$((n0 + 1)) | grep 'exceeds the logical capacity' | tail -n 1)
echo "+ dmesg: $msg"
max=$(echo "$msg" | sed -n 's/.*the maximum is \([0-9]*\) sectors.*/\1/p')
if [ -z "$max" ] || [ "$max" -le 0 ] || [ "$max" -ge "$sectors" ]; then
	fail "no 'the maximum is N sectors' with 0 < N < $sectors in dmesg: '$msg'"
fi
len=$((max / 8 * 8))

# 2. Create, file system, checksums.
mnt=/mnt/mlsdisk_e
run mkdir -p $mnt
run dmsetup create mlsdisk_e --table "0 $len mlsdisk $DISK $KEY 1 force_create"
tbl=$(dmsetup table mlsdisk_e)
echo "+ dmsetup table: $tbl"
case "$tbl" in
*"$KEY"*) fail "dmsetup table prints the key" ;;
"0 $len mlsdisk "*" - 1 open") ;;
*) fail "a created disk must be shown (and reloaded) as 'open': $tbl" ;;
esac
st=$(dmsetup status mlsdisk_e)
echo "+ dmsetup status: $st"
status_tokens_ok "$st"
for field in " health=ok " " sync=" " capacity=" " free=" " wa=" " anchor=none "; do
	case "$st" in
	*"$field"*) ;;
	*) fail "status lacks '$field': $st" ;;
	esac
done
run mkfs.ext4 -q -F /dev/mapper/mlsdisk_e
run mount -t ext4 /dev/mapper/mlsdisk_e $mnt
write_files $mnt
checksum_tree $mnt >/tmp/e.sums || fail "checksumming $mnt"

# 3. Unload refused while the device is open (mounted).
must_fail rmmod mlsdisk
grep -q '^mlsdisk ' /proc/modules || fail "rmmod removed the module under a mounted device"

run umount $mnt
run e2fsck -fn /dev/mapper/mlsdisk_e
s1=$(dmsetup status mlsdisk_e | sed -n 's/.* sync=\([0-9]*\).*/\1/p')
run dmsetup message mlsdisk_e 0 sync
out=$(dmsetup message mlsdisk_e 0 stats) || fail "stats message failed"
echo "+ stats: $out"
run dmsetup remove mlsdisk_e

# 4. Open again (default option): same files, sync counter kept.
run dmsetup create mlsdisk_e --table "0 $len mlsdisk $DISK $KEY"
st=$(dmsetup status mlsdisk_e)
echo "+ dmsetup status after open: $st"
s2=$(echo "$st" | sed -n 's/.* sync=\([0-9]*\).*/\1/p')
if [ -z "$s1" ] || [ -z "$s2" ] || [ "$s2" -lt "$s1" ]; then
	fail "sync counter went backwards or is missing: $s1 -> $s2"
fi
run mount -t ext4 -o ro /dev/mapper/mlsdisk_e $mnt
checksum_tree $mnt >/tmp/e.sums2 || fail "checksumming $mnt after open"
cmp -s /tmp/e.sums /tmp/e.sums2 || fail "checksums differ after remove + open"
echo "  checksums of $(wc -l </tmp/e.sums) files match after open"
run umount $mnt
run e2fsck -fn /dev/mapper/mlsdisk_e
run dmsetup remove mlsdisk_e

# 5. Nothing on the backing device is plaintext: a marker string written
#    through the target is not found on it.
run dmsetup create mlsdisk_e --table "0 $len mlsdisk $DISK $KEY"
marker=mlsdisk-plaintext-marker-0123456789
i=0
while [ $i -lt 64 ]; do echo "$marker"; i=$((i + 1)); done >/tmp/marker
run dd if=/tmp/marker of=/dev/mapper/mlsdisk_e bs=4096 seek=100 conv=sync,fsync
run dmsetup remove mlsdisk_e
# Scan the first 256 MiB (metadata and the start of the data log, where a
# fresh disk's data goes) one MiB at a time, so that grep never holds more
# than a MiB (unwritten space is zeros: one endless "line").
i=0
while [ $i -lt 256 ]; do
	if dd if="$DISK" bs=1M skip=$i count=1 2>/dev/null | grep -a -q -F "$marker"; then
		fail "the marker written through the target is readable on the backing device (MiB $i)"
	fi
	i=$((i + 1))
done
echo "  the marker is not on the backing device in plaintext"
unload_module
