# The main job inside the guest: the same fio jobs on an ext4 file system
# over dm-crypt and over mlsdisk, on the same virtual disk, then a table.
# shellcheck shell=sh
# shellcheck source=qemu/guest/lib.sh
. /mlsdisk/lib.sh

ACCEL=${ACCEL:-unknown}
RUNTIME=${FIO_RUNTIME:-3}
FILE_SIZE=${FIO_SIZE:-128M}
JOBS="seq-read-4k seq-read-256k seq-write-4k seq-write-256k rand-read-4k rand-read-256k rand-write-4k rand-write-256k"

sectors=$(disk_sectors "$DISK")
len=$((sectors / 2 / 8 * 8))

# bench TARGET TABLE: mkfs.ext4 + mount on a fresh device, run every job.
bench() {
	target=$1
	table=$2
	mnt=/mnt/bench
	run mkdir -p "$mnt"
	run dmsetup create bench --table "$table"
	run mkfs.ext4 -q -F /dev/mapper/bench
	run mount -t ext4 /dev/mapper/bench "$mnt"
	for job in $JOBS; do
		pattern=${job%-*}
		bs=${job##*-}
		case "$pattern" in
		seq-read) rw="read" ;;
		seq-write) rw="write" ;;
		rand-read) rw=randread ;;
		rand-write) rw=randwrite ;;
		esac
		out=$(fio --name="$job" --filename="$mnt/fio.dat" --size="$FILE_SIZE" --rw="$rw" --bs="$bs" \
			--direct=1 --ioengine=libaio --iodepth=16 --runtime="$RUNTIME" --time_based \
			--minimal 2>&1) || fail "fio $job on $target failed: $out"
		# terse v3: field 7/8 = read KiB/s / IOPS, 48/49 = write KiB/s / IOPS
		case "$rw" in
		*read) res=$(echo "$out" | awk -F';' '$1 == "3" {printf "%.1f %d", $7 / 1024, $8}') ;;
		*) res=$(echo "$out" | awk -F';' '$1 == "3" {printf "%.1f %d", $48 / 1024, $49}') ;;
		esac
		[ -n "$res" ] || fail "no fio result for $job on $target: $out"
		echo "$res" >"/tmp/bench.$target.$job"
		echo "  $target $job: $res (MiB/s IOPS)"
	done
	run rm -f "$mnt/fio.dat"
	run umount "$mnt"
	run dmsetup remove bench
}

bench linear "0 $len linear $DISK 0"
bench dm-crypt "0 $len crypt aes-xts-plain64 $XTS_KEY 0 $DISK 0"
mls_status=""
if [ -f /mlsdisk.ko ]; then
	load_module
	# Record the target's own account of itself (e.g. its stage) for the table.
	run dmsetup create bench --table "0 $len mlsdisk $DISK $KEY"
	mls_status=$(dmsetup status bench)
	run dmsetup remove bench
	bench mlsdisk "0 $len mlsdisk $DISK $KEY"
	unload_module
fi

echo "=== demo table begin"
echo "fio on ext4, O_DIRECT, libaio QD16, ${RUNTIME}s per job, ${FILE_SIZE} file; each target in turn on the same"
echo "virtual disk ($((len / 2048)) MiB mapped); linear = no encryption (the raw disk through device-mapper)"
echo
printf '%-16s %10s %7s %10s %7s %10s %7s\n' "" linear "" dm-crypt "" mlsdisk ""
printf '%-16s %10s %7s %10s %7s %10s %7s\n' job MiB/s IOPS MiB/s IOPS MiB/s IOPS
for job in $JOBS; do
	# shellcheck disable=SC2046  # two words per file: MiB/s and IOPS
	set -- $(cat "/tmp/bench.linear.$job") $(cat "/tmp/bench.dm-crypt.$job") \
		$(cat "/tmp/bench.mlsdisk.$job" 2>/dev/null || echo "n/a n/a")
	printf '%-16s %10s %7s %10s %7s %10s %7s\n' "$job" "$1" "$2" "$3" "$4" "$5" "$6"
done
echo
echo "mlsdisk status: ${mls_status:-module not provided}"
case "$mls_status" in
*passthrough*) echo "NOTE: mlsdisk is at its pass-through stage: it does not encrypt yet, so its column is not a like-for-like comparison with dm-crypt." ;;
esac
case "$ACCEL" in
TCG) echo "Accelerator: TCG (software CPU emulation, AES-NI emulated): compare the columns of this run only; these are not absolute performance numbers." ;;
KVM) echo "Accelerator: KVM (hardware virtualization): closer to native, but still a file-backed virtual disk: compare the columns, not absolute numbers." ;;
*) echo "Accelerator: $ACCEL" ;;
esac
echo "=== demo table end"
need_module
