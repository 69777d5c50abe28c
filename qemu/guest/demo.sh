# The benchmark inside the guest (make demo, make bench): first ext4 with
# one fio job on each encrypted target (mkfs.ext4, mount, fio, e2fsck -fn),
# then fio with direct=1 on raw block devices (no file system) for three targets on the
# same virtual disk, each on its own region of it:
#   raw       dm-linear (the device itself, through device-mapper)
#   dm-crypt  aes-xts-plain64, the encrypt-only baseline
#   mlsdisk   the mlsdisk target (on a dm-linear region as its backing device;
#             a larger region: the engine keeps metadata and a reserve, and
#             needs free space for its log over three repetitions)
#   ublk      the same engine from userspace, `mlsdisk serve` (/dev/ublkbN),
#             on the same backing region and disk as the mlsdisk target
#             (they take turns: one format for both); left out, with a
#             BENCHINFO note, when the kernel has no /dev/ublk-control
# The eight columns of the seed's table, each a fixed-size working set at
# the start of the mapped device, time-based, repeated; the repetitions
# interleave the targets (rep 1: raw, dm-crypt, mlsdisk; rep 2: ...) so a
# change in the host's load hits all of them alike. Between its turns a
# target is removed (mlsdisk syncs and stops its background work) and opened
# again, so nothing of one target runs during another's jobs.
#
# Prints two lines per measurement, parsed on the host by
# scripts/bench-report.py (the guest has no JSON parser, so it reads no
# numbers out of fio's output; the host takes MiB/s, IOPS and the
# completion-latency percentiles p50/p99 from the JSON):
#   FIOJSON <target> <column> <rep> {...}
# (fio's --output-format=json report of the job, on one line: each line of
# fio's pretty-printed JSON without its indentation, joined; about 4 KB)
#   BENCH <target> <column> <rep> dev_r=.. dev_r_kib=.. dev_w=.. dev_w_kib=..
# (the dev_* fields: requests and KiB the virtual disk served during the job,
# ramp included: the backing-device traffic behind the target's I/O)
#   BENCHINFO <key> <value...>
# The ext4 job's report is "FIOJSON ext4/<target> rnd-write-4k 1 {...}".
# shellcheck shell=sh
# shellcheck source=qemu/guest/lib.sh
. /mlsdisk/lib.sh

ACCEL=${ACCEL:-unknown}
RUNTIME=${BENCH_RUNTIME:-5}     # seconds measured per job
RAMP=${BENCH_RAMP:-1}           # seconds of warm-up per job, not measured
SIZE_MB=${BENCH_SIZE_MB:-256}   # working set per target
REPEATS=${BENCH_REPEATS:-3}
IODEPTH=${BENCH_IODEPTH:-16}
SEQ_BS=${BENCH_SEQ_BS:-256k}
REGION_MB=${BENCH_REGION_MB:-1024}         # disk space of raw and dm-crypt
MLS_REGION_MB=${BENCH_MLS_REGION_MB:-2048} # disk space of mlsdisk
MODEL=${BENCH_MODEL:-plain}
# The layout the read columns read: "sequential" (default) rewrites the
# working set sequentially, unmeasured, before a target's first read column,
# so reads find the data as a sequential write leaves it (as when each of
# the seed's fio jobs runs on its own); "as-written" reads what the random
# write columns left (on mlsdisk: scattered over the log).
READ_LAYOUT=${BENCH_READ_LAYOUT:-sequential}
# A subset of targets or columns (words separated by ':', as --bench-env
# carries them), e.g. BENCH_COLUMNS=seq-read:rnd-read-4k; the default is all.
TARGETS=$(echo "${BENCH_TARGETS:-raw:dm-crypt:mlsdisk:ublk}" | tr ':' ' ')
COLUMNS=$(echo "${BENCH_COLUMNS:-seq-write:rnd-write-4k:rnd-write-32k:rnd-write-256k:seq-read:rnd-read-4k:rnd-read-32k:rnd-read-256k}" | tr ':' ' ')

sectors=$(disk_sectors "$DISK")
region=$((REGION_MB * 2048))
mls_region=$((MLS_REGION_MB * 2048))
[ $((2 * region + mls_region)) -le "$sectors" ] ||
	fail "$DISK has $sectors sectors; regions of ${REGION_MB}+${REGION_MB}+${MLS_REGION_MB} MiB do not fit"
[ "$SIZE_MB" -lt "$REGION_MB" ] || fail "working set ${SIZE_MB} MiB must be smaller than the region ${REGION_MB} MiB"

echo "BENCHINFO model $MODEL"
echo "BENCHINFO accel $ACCEL"
echo "BENCHINFO throttle ${BENCH_THROTTLE:-none}"
echo "BENCHINFO params runtime=${RUNTIME}s ramp=${RAMP}s size=${SIZE_MB}MiB repeats=$REPEATS iodepth=$IODEPTH seq_bs=$SEQ_BS regions=${REGION_MB}/${REGION_MB}/${MLS_REGION_MB}MiB"
echo "BENCHINFO guest $(uname -r) $(nproc) CPUs"
echo "BENCHINFO read_layout $READ_LAYOUT"
echo "BENCHINFO subset targets=$(echo "$TARGETS" | tr ' ' ':') columns=$(echo "$COLUMNS" | tr ' ' ':')"

# without TARGET: TARGETS less TARGET.
without() {
	echo "$TARGETS" | tr ' ' '\n' | grep -vx "$1" | tr '\n' ' '
}
have_mls=0
if [ -f /mlsdisk.ko ]; then
	load_module
	have_mls=1
else
	echo "BENCHINFO note mlsdisk.ko not provided: no mlsdisk column"
	TARGETS=$(without mlsdisk)
fi
if [ ! -e /dev/ublk-control ]; then
	echo "BENCHINFO note no /dev/ublk-control (CONFIG_BLK_DEV_UBLK): no ublk column"
	TARGETS=$(without ublk)
fi
# The engine's backing region serves the mlsdisk target and mlsdisk serve.
case " $TARGETS " in
*" mlsdisk "* | *" ublk "*) need_backing=1 ;;
*) need_backing=0 ;;
esac

# The mlsdisk backing device: the third region of the disk.
if [ $need_backing = 1 ]; then
	run dmsetup create bench_mls_backing --table "0 $mls_region linear $DISK $((2 * region))"
fi
mls_backing=/dev/mapper/bench_mls_backing
mls_created=0

# Format the mlsdisk backing device and learn its logical capacity with the
# CLI, as a user would (`mlsdisk format`, `mlsdisk size`; docs/admin-guide.md).
if [ $need_backing = 1 ]; then
	run mlsdisk format "$mls_backing" --key "$KEY" --batch --force
	mls_len=$(mlsdisk size "$mls_backing" --key "$KEY") || fail "mlsdisk size $mls_backing failed"
	case "$mls_len" in '' | *[!0-9]*) fail "mlsdisk size printed '$mls_len', not a number of sectors" ;; esac
	mls_created=1
	echo "BENCHINFO mlsdisk_capacity_mib $((mls_len / 2048)) of $MLS_REGION_MB"
	[ $((mls_len / 2048)) -gt "$SIZE_MB" ] || fail "mlsdisk capacity $((mls_len / 2048)) MiB is below the working set ${SIZE_MB} MiB"
fi

# The device the jobs run on (setup sets it).
BDEV=/dev/mapper/bench

# ublk_start: `mlsdisk serve` on the backing region, BDEV its device.
ublk_start() {
	rm -f /tmp/bench-ublk.ready
	echo "+ mlsdisk serve $mls_backing --key ... --ready-file /tmp/bench-ublk.ready &"
	mlsdisk serve "$mls_backing" --key "$KEY" --ready-file /tmp/bench-ublk.ready \
		>/tmp/bench-ublk.out 2>/tmp/bench-ublk.err &
	ublk_pid=$!
	i=0
	while [ ! -s /tmp/bench-ublk.ready ]; do
		[ -e /proc/$ublk_pid ] && ! grep -q ') Z ' /proc/$ublk_pid/stat 2>/dev/null ||
			fail "mlsdisk serve exited before its device was ready: $(tail -n 3 /tmp/bench-ublk.err)"
		i=$((i + 1))
		[ $i -le 240 ] || fail "mlsdisk serve: no device after 120 s"
		sleep 0.5
	done
	BDEV=$(cat /tmp/bench-ublk.ready)
	[ -b "$BDEV" ] || fail "mlsdisk serve: $BDEV is not a block device"
}

# ublk_stop: SIGTERM (the server syncs and deletes its device), bounded.
ublk_stop() {
	kill -TERM $ublk_pid
	i=0
	while [ -e /proc/$ublk_pid ] && ! grep -q ') Z ' /proc/$ublk_pid/stat 2>/dev/null; do
		i=$((i + 1))
		[ $i -le 600 ] || fail "mlsdisk serve still running 300 s after SIGTERM"
		sleep 0.5
	done
	rc=0
	wait $ublk_pid || rc=$?
	[ $rc = 0 ] || fail "mlsdisk serve exited with $rc: $(tail -n 3 /tmp/bench-ublk.err)"
	echo "BENCHINFO ublk_status $(tail -n 1 /tmp/bench-ublk.err)"
	BDEV=/dev/mapper/bench
}

# The kernel memory an open mlsdisk holds, from /proc/meminfo (kB):
# "MemFree Slab SUnreclaim VmallocUsed" (large kmallocs and page
# allocations show in MemFree only).
meminfo_kb() {
	awk '/^(MemFree|Slab|SUnreclaim|VmallocUsed):/ {v[$1] = $2}
		END {print v["MemFree:"], v["Slab:"], v["SUnreclaim:"], v["VmallocUsed:"]}' /proc/meminfo
}
# mem_delta BEFORE AFTER: what the kernel holds more in AFTER, in KiB.
mem_delta() {
	echo "$1 $2" | awk '{printf "used_kib=%d slab_kib=%+d sunreclaim_kib=%+d vmalloc_kib=%+d", $1 - $5, $6 - $2, $7 - $3, $8 - $4}'
}
mem_open=""

# setup TARGET: create the device BDEV for TARGET.
setup() {
	BDEV=/dev/mapper/bench
	case "$1" in
	raw) run dmsetup create bench --table "0 $region linear $DISK 0" ;;
	dm-crypt) run dmsetup create bench --table "0 $region crypt aes-xts-plain64 $XTS_KEY 0 $DISK $region" ;;
	mlsdisk)
		opts=""
		[ $mls_created = 1 ] || opts=" 1 force_create"
		mem_open=$(meminfo_kb)
		run dmsetup create bench --table "0 $mls_len mlsdisk $mls_backing $KEY$opts"
		mls_created=1
		echo "BENCHINFO mlsdisk_status_open $(dmsetup status bench)"
		;;
	ublk) ublk_start ;;
	esac
}

teardown() {
	if [ "$1" = ublk ]; then
		ublk_stop
		return
	fi
	if [ "$1" = mlsdisk ]; then
		echo "BENCHINFO mlsdisk_status $(dmsetup status bench)"
		# The module's memory after the jobs, against before the table was
		# created, and again after its removal (what it left behind).
		echo "BENCHINFO mlsdisk_mem open $(mem_delta "$mem_open" "$(meminfo_kb)")"
	fi
	run dmsetup remove bench
	if [ "$1" = mlsdisk ]; then
		echo "BENCHINFO mlsdisk_mem removed $(mem_delta "$mem_open" "$(meminfo_kb)")"
	fi
}

# The completion-latency percentiles fio reports (clat_ns.percentile in
# its JSON, keys "50.000000" and "99.000000").
PERCENTILES=50:99
FIO_OUT=/tmp/fio.json

# fio_json FIO_ARGS...: run one fio job with its JSON report in $FIO_OUT;
# prints the report on one line (fails the benchmark when fio fails or
# leaves no JSON object). Anything fio writes before the JSON (notes,
# warnings) is dropped: the object starts at the first line "{".
fio_json() {
	rm -f "$FIO_OUT"
	err=$(timeout $((RUNTIME + RAMP + 120)) fio "$@" --output-format=json \
		--percentile_list="$PERCENTILES" --output="$FIO_OUT" 2>&1) ||
		fail "fio $1 failed: $err $(cat "$FIO_OUT" 2>/dev/null)"
	one=$(awk 'started || /^\{$/ {started = 1; sub(/^[ \t]+/, ""); printf "%s", $0}' "$FIO_OUT")
	case "$one" in
	"{"*"}") ;;
	*) fail "fio $1 left no JSON report: $err $(head -c 400 "$FIO_OUT" 2>/dev/null)" ;;
	esac
	echo "$one"
}

# fio_job NAME RW BS: one measured job on BDEV; prints its
# JSON report on one line.
fio_job() {
	fio_json --name="$1" --filename="$BDEV" \
		--size="${SIZE_MB}m" --rw="$2" --bs="$3" --direct=1 --ioengine=libaio \
		--iodepth="$IODEPTH" --runtime="$RUNTIME" --ramp_time="$RAMP" --time_based \
		--norandommap --randrepeat=0
}

# What the virtual disk itself saw: "<read requests> <read KiB> <write
# requests> <write KiB>" from /sys/block/<disk>/stat (the requests QEMU
# serves, which its throttling counts).
disk_stat() {
	awk '{print $1, $3 / 2, $5, $7 / 2}' "/sys/block/${DISK#/dev/}/stat"
}
disk_stat_delta() {
	echo "$1 $2" | awk '{printf "dev_r=%d dev_r_kib=%d dev_w=%d dev_w_kib=%d", $5 - $1, $6 - $2, $7 - $3, $8 - $4}'
}

# The mission's flow on each encrypted target before the raw-device table:
# mkfs.ext4, mount, one short fio job on a file (random 4 KiB writes,
# direct, fsync at the end), umount, e2fsck -fn (must be clean). Printed
# as "BENCHINFO ext4 ..."; BENCH_EXT4=0 skips it.
if [ "${BENCH_EXT4:-1}" = 1 ]; then
	for target in $TARGETS; do
		[ "$target" != raw ] || continue
		setup "$target"
		run mkfs.ext4 -q -F "$BDEV"
		run mkdir -p /mnt/bench
		run mount -t ext4 "$BDEV" /mnt/bench
		json=$(fio_json --name=ext4 --directory=/mnt/bench \
			--size=64m --rw=randwrite --bs=4k --direct=1 --ioengine=libaio \
			--iodepth="$IODEPTH" --runtime="$RUNTIME" --ramp_time="$RAMP" --time_based \
			--end_fsync=1)
		run umount /mnt/bench
		run e2fsck -fn "$BDEV"
		# The report adds the job's MiB/s, IOPS and p50/p99 from the JSON.
		echo "FIOJSON ext4/$target rnd-write-4k 1 $json"
		echo "BENCHINFO ext4 $target: rnd-write-4K on a 64 MiB file, e2fsck -fn clean"
		teardown "$target"
	done
fi

# Precondition: every target's working set written once (sequential, not
# measured), so that the reads read written data everywhere.
t0=$(date +%s)
for target in $TARGETS; do
	setup "$target"
	run timeout 600 fio --name=fill --filename="$BDEV" --size="${SIZE_MB}m" \
		--rw=write --bs=1m --direct=1 --ioengine=libaio --iodepth=8 --minimal >/dev/null
	teardown "$target"
done
echo "BENCHINFO fill_seconds $(($(date +%s) - t0))"

rep=1
while [ $rep -le "$REPEATS" ]; do
	for target in $TARGETS; do
		setup "$target"
		wrote=0
		for col in $COLUMNS; do
			case "$col" in
			*write*) wrote=1 ;;
			*read*)
				if [ "$READ_LAYOUT" = sequential ] && [ $wrote = 1 ]; then
					run timeout 600 fio --name=refill --filename="$BDEV" \
						--size="${SIZE_MB}m" --rw=write --bs=1m --direct=1 \
						--ioengine=libaio --iodepth=8 --minimal >/dev/null
					wrote=0
				fi
				;;
			esac
			case "$col" in
			seq-write) rw=write bs=$SEQ_BS ;;
			seq-read) rw=read bs=$SEQ_BS ;;
			rnd-write-*) rw=randwrite bs=${col#rnd-write-} ;;
			rnd-read-*) rw=randread bs=${col#rnd-read-} ;;
			esac
			s0=$(disk_stat)
			json=$(fio_job "$col" "$rw" "$bs")
			echo "FIOJSON $target $col $rep $json"
			echo "BENCH $target $col $rep $(disk_stat_delta "$s0" "$(disk_stat)")"
		done
		teardown "$target"
	done
	rep=$((rep + 1))
done
echo "BENCHINFO total_seconds $(($(date +%s) - t0))"

if [ $need_backing = 1 ]; then
	run dmsetup remove bench_mls_backing
fi
if [ $have_mls = 1 ]; then
	unload_module
fi
