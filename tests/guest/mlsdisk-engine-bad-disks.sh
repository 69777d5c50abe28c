# The real engine against bad backing devices: a wrong key, garbage, zeros,
# a truncated device, and the host's tampering (data region and
# superblock) between two openings. Each gives a clear error (ctr fails
# with its cause in dmesg, or reads fail with EIO), never wrong data, never
# an oops.
# shellcheck shell=sh
# shellcheck source=qemu/guest/lib.sh
. /mlsdisk/lib.sh

KEY2=ff0102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f
load_module
sectors=$(disk_sectors "$DISK")

# refused LABEL WANT TABLE: the table is refused and dmesg names WANT.
refused() {
	n1=$(dmesg | wc -l)
	must_fail dmsetup create mlsdisk_b --table "$3"
	! dm_exists mlsdisk_b || fail "$1: device left behind"
	new=$(dmesg | tail -n +$((n1 + 1)))
	echo "$new" | sed 's/^/    dmesg: /'
	echo "$new" | grep -q "mlsdisk: .*$2" || fail "$1: no '$2' in dmesg"
}

# The capacity of a disk on the whole device (see mlsdisk-engine-ext4).
n0=$(dmesg | wc -l)
must_fail dmsetup create mlsdisk_b --table "0 $sectors mlsdisk $DISK $KEY 1 force_create"
max=$(dmesg | tail -n +$((n0 + 1)) | sed -n 's/.*the maximum is \([0-9]*\) sectors.*/\1/p' | tail -n 1)
[ -n "$max" ] || fail "no capacity in dmesg"
len=$((max / 8 * 8))

# 1. Garbage and zeros: not an mlsdisk; the message names 'create'.
run dd if=/dev/urandom of="$DISK" bs=1M count=8 conv=fsync
refused "garbage device" "no mlsdisk on the backing device (give the 'create' option" "0 $len mlsdisk $DISK $KEY"
run dd if=/dev/zero of="$DISK" bs=1M count=8 conv=fsync
refused "zeroed device" "no mlsdisk on the backing device" "0 $len mlsdisk $DISK $KEY"

# 2. A disk with files; the wrong key.
mnt=/mnt/mlsdisk_b
run mkdir -p $mnt
run dmsetup create mlsdisk_b --table "0 $len mlsdisk $DISK $KEY 1 force_create"
run mkfs.ext4 -q -F /dev/mapper/mlsdisk_b
run mount -t ext4 /dev/mapper/mlsdisk_b $mnt
write_files $mnt
checksum_tree $mnt >/tmp/b.sums || fail "checksumming $mnt"
run umount $mnt
run dmsetup remove mlsdisk_b
refused "wrong key" "wrong key" "0 $len mlsdisk $DISK $KEY2"

# 3. Truncated: the same disk seen through a shorter device.
short=$((sectors / 2))
run dmsetup create mlsdisk_short --table "0 $short linear $DISK 0"
n1=$(dmesg | wc -l)
must_fail dmsetup create mlsdisk_b --table "0 8 mlsdisk /dev/mapper/mlsdisk_short $KEY"
dmesg | tail -n +$((n1 + 1)) | sed 's/^/    dmesg: /'
dmesg | tail -n +$((n1 + 1)) | grep -q 'mlsdisk: .*smaller than the disk on it (truncated)' ||
	fail "truncated device: not named as truncated in dmesg"
run dmsetup remove mlsdisk_short

# 4. Tamper with the data region (one byte in every 64 KiB of the first
#    32 MiB after the metadata regions, where the log-structured data of a
#    fresh disk lies). Every file then reads back either exactly as written
#    or fails with an I/O error; at least one read fails.
# Where the data region starts, from the disk's own geometry (the index
# region before it is sized for the tree's shape: docs/format.md).
data_blk=$(mlsdisk info "$DISK" --key "$KEY" | sed -n 's/^data log *from block \([0-9]*\):.*/\1/p')
[ -n "$data_blk" ] || fail "mlsdisk info gave no start of the data log"
data_mib=$((data_blk * 4096 / 1048576 + 1))
echo "  data log from block $data_blk: tampering from $data_mib MiB"

i=0
while [ $i -lt 512 ]; do
	printf '\377' | dd of="$DISK" bs=1 seek=$(((data_mib * 1048576) + i * 65536 + 100)) conv=notrunc 2>/dev/null ||
		fail "tampering with $DISK"
	i=$((i + 1))
done
run sync
run blockdev --flushbufs "$DISK"
run dmsetup create mlsdisk_b --table "0 $len mlsdisk $DISK $KEY"
bad=0
if mount -t ext4 -o ro /dev/mapper/mlsdisk_b $mnt; then
	while read -r sum path; do
		# (The status of sha256sum itself: a pipeline would report cut's.)
		if out=$(sha256sum "$mnt/$path" 2>/dev/null); then
			got=${out%% *}
			[ "$got" = "$sum" ] || fail "tampered disk returned wrong data for $path"
		else
			bad=$((bad + 1))
		fi
	done </tmp/b.sums
	run umount $mnt
else
	echo "  mount failed on the tampered disk (metadata hit)"
	bad=1
fi
echo "  reads that failed on the tampered disk: $bad"
[ "$bad" -gt 0 ] || fail "no read failed after tampering with the data region"
dmesg | grep -q 'mlsdisk: read at block .*Integrity' || fail "no Integrity read error named in dmesg"
run dmsetup remove mlsdisk_b

# 5. Tamper with both superblock slots (blocks 0 and 1): open fails.
printf '\377' | dd of="$DISK" bs=1 seek=200 conv=notrunc 2>/dev/null
printf '\377' | dd of="$DISK" bs=1 seek=$((4096 + 200)) conv=notrunc 2>/dev/null
run sync
run blockdev --flushbufs "$DISK"
refused "tampered superblock" "cannot open the disk" "0 $len mlsdisk $DISK $KEY"
unload_module
