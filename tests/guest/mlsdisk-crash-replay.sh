# needs: dm-target=log-writes
# needs: named
# The guest half of the crash replay (make crash-replay; the host half is
# tests/host/crash-replay.sh, which runs tools' mlsdisk-replay on what this
# test leaves on vdb). Runs only when named (--tests mlsdisk-crash-replay):
# a plain make guest-test SKIPs it (it takes about 2 min under TCG and is
# worth it only with the host replay).
#
# vdb is split with dm-linear into a 64 MiB data device (sectors 0..) and a
# log device (from 64 MiB to the end). dm-log-writes over the two records
# every write, flush, FUA and discard that reaches the data device, in the
# order the data device made them durable, plus our marks. An mlsdisk dm
# target is created on the log-writes device (the data device is zeroed
# first: the replay starts from an all-zero image), then ext4 on it, then a
# seeded workload of REPLAY_OPS operations (default 300): create, overwrite
# and append with and without fsync, rename, unlink, mkdir, fsync of
# directories. After every operation that fsyncs, the test reads the
# mlsdisk sync counter, puts a mark in the log and prints what is now
# durable. At the end: umount, e2fsck -fn clean, remove both targets (the
# log gets its end mark).
#
# Lines for the host (on the console, with the runner's "  | " in front):
#   REPLAY key <hex>                     the mlsdisk key (the test key)
#   REPLAY layout <data_start> <data_sectors> <log_start> <log_sectors>
#                                        on vdb, in 512-byte sectors
#   REPLAY add <sha256> <path>           a file made durable (path in the fs)
#   REPLAY del <path>                    a durable file renamed or removed
#   REPLAY mark <name> <sync counter>    after the adds/dels it completes
#   REPLAY final <sha256 of the data device at the end>
# Seeded by REPLAY_SEED (default 1): the same operations and file contents
# for a seed; the block-level log differs run to run (timing).
# shellcheck shell=sh
# shellcheck source=qemu/guest/lib.sh
. /mlsdisk/lib.sh

: "${REPLAY_SEED:=1}" "${REPLAY_OPS:=300}"
DATA_SECTORS=131072 # 64 MiB
data=replay_data
logd=replay_log
logw=replay_logw
name=replay_md
mnt=/mnt/replay
out() { echo "REPLAY $*"; }

load_module
total=$(disk_sectors "$DISK")
log_sectors=$((total - DATA_SECTORS))
[ "$log_sectors" -ge 262144 ] || fail "$DISK is too small for a 64 MiB data device and a 128 MiB log ($total sectors)"

run dmsetup create $data --table "0 $DATA_SECTORS linear $DISK 0"
run dmsetup create $logd --table "0 $log_sectors linear $DISK $DATA_SECTORS"
# The replay starts from zeros; the log's super block gets rewritten.
run dd if=/dev/zero of=/dev/mapper/$data bs=1M count=64 oflag=direct status=none
run dd if=/dev/zero of=/dev/mapper/$logd bs=1M count=1 oflag=direct status=none
run dmsetup create $logw --table "0 $DATA_SECTORS log-writes /dev/mapper/$data /dev/mapper/$logd"
out "key $KEY"
out "layout 0 $DATA_SECTORS $DATA_SECTORS $log_sectors"

mark() {
	run dmsetup message $logw 0 mark "$1"
}
# sync_mark NAME: the sync counter now (every sync up to it has completed,
# so its writes are in the log before the mark), then the mark.
nmark=0
sync_mark() {
	s=$(dmsetup status $name | sed -n 's/.* sync=\([0-9]*\).*/\1/p')
	[ -n "$s" ] || fail "no sync counter in the status of $name"
	mark "$1"
	out "mark $1 $s"
	nmark=$((nmark + 1))
}

# The largest length the engine accepts on this device.
n0=$(dmesg | wc -l)
must_fail dmsetup create $name --table "0 $DATA_SECTORS mlsdisk /dev/mapper/$logw $KEY 1 force_create"
max=$(dmesg | tail -n +$((n0 + 1)) | sed -n 's/.*the maximum is \([0-9]*\) sectors.*/\1/p' | tail -n 1)
[ -n "$max" ] || fail "no maximum length in dmesg"
len=$((max / 8 * 8))
run dmsetup create $name --table "0 $len mlsdisk /dev/mapper/$logw $KEY 1 force_create"
sync_mark created
run mkfs.ext4 -q -F -b 4096 -E nodiscard,lazy_itable_init=0,lazy_journal_init=0 /dev/mapper/$name
run dmsetup message $name 0 sync
sync_mark mkfs
run mkdir -p $mnt
run mount -t ext4 /dev/mapper/$name $mnt
for d in d0 d1 d2 d3; do
	run mkdir $mnt/$d
	run sync $mnt/$d
done
run sync $mnt
sync_mark setup

# The seeded generator (an LCG, as tests/host/powercut.sh): rnd N sets r.
rng=$((REPLAY_SEED % 2147483648))
rnd() {
	rng=$(((rng * 1103515245 + 12345) % 2147483648))
	r=$(((rng >> 8) % $1))
}
# content FILE TAG: 1-48 KiB of text made from the seed and TAG.
content() {
	rnd 48
	awk -v tag="$2" -v n=$((r + 1)) -v s="$rng" 'BEGIN {
		srand(s); line = 0
		for (k = 0; k < n * 16; k++) {
			printf "%s %06d %08x %-40s\n", tag, k, int(rand() * 2147483647), substr("mlsdisk-crash-replay-payload-0123456789", 1, 1 + int(rand() * 40))
		}
	}' >"$1" || fail "writing $1"
}
sum_of() {
	s=$(sha256sum "$1") || fail "checksumming $1"
	echo "${s%% *}"
}
# The durable files (paths relative to $mnt) and the scratch ones.
: >/tmp/durable
: >/tmp/scratch
pick() { # pick LISTFILE: a random line of it in $p (empty if none)
	n=$(wc -l <"$1")
	p=""
	[ "$n" -gt 0 ] || return 0
	rnd "$n"
	p=$(sed -n "$((r + 1))p" "$1")
}
drop_line() { # drop_line LISTFILE LINE
	grep -v -x -F "$2" "$1" >"$1.new" || true
	mv "$1.new" "$1"
}

t0=$(date +%s)
i=0
nfsync=0
while [ $i -lt "$REPLAY_OPS" ]; do
	rnd 4
	dir=d$r
	rnd 100
	op=$r
	if [ $op -lt 25 ]; then
		# A new file made durable: write, fsync it and its directory.
		f=$dir/f$i
		content "$mnt/$f" "op$i"
		run sync "$mnt/$f" "$mnt/$dir"
		echo "$f" >>/tmp/durable
		out "add $(sum_of "$mnt/$f") $f"
		sync_mark "m$i"
	elif [ $op -lt 45 ]; then
		# Scratch writes, never fsynced.
		f=$dir/s$i
		content "$mnt/$f" "scratch$i"
		echo "$f" >>/tmp/scratch
	elif [ $op -lt 55 ]; then
		# Overwrite a durable file in place and fsync it.
		pick /tmp/durable
		if [ -n "$p" ]; then
			content /tmp/c "over$i"
			run dd if=/tmp/c of="$mnt/$p" conv=notrunc status=none
			run sync "$mnt/$p"
			out "del $p"
			out "add $(sum_of "$mnt/$p") $p"
			sync_mark "m$i"
		fi
	elif [ $op -lt 62 ]; then
		# Append to a durable file without fsync: no longer checked.
		pick /tmp/durable
		if [ -n "$p" ]; then
			echo "appended by op $i" >>"$mnt/$p" || fail "append to $p"
			drop_line /tmp/durable "$p"
			echo "$p" >>/tmp/scratch
			out "del $p"
		fi
	elif [ $op -lt 72 ]; then
		# Rename a durable file to another directory, fsync both.
		pick /tmp/durable
		if [ -n "$p" ]; then
			rnd 4
			q=d$r/r$i
			run mv "$mnt/$p" "$mnt/$q"
			run sync "$mnt/${p%/*}" "$mnt/d$r"
			drop_line /tmp/durable "$p"
			echo "$q" >>/tmp/durable
			out "del $p"
			out "add $(sum_of "$mnt/$q") $q"
			sync_mark "m$i"
		fi
	elif [ $op -lt 80 ]; then
		# Unlink a durable file, fsync its directory.
		pick /tmp/durable
		if [ -n "$p" ]; then
			run rm "$mnt/$p"
			run sync "$mnt/${p%/*}"
			drop_line /tmp/durable "$p"
			out "del $p"
			sync_mark "m$i"
		fi
	elif [ $op -lt 88 ]; then
		# Unlink or rename a scratch file, no fsync.
		pick /tmp/scratch
		if [ -n "$p" ]; then
			drop_line /tmp/scratch "$p"
			if [ $((i % 2)) -eq 0 ]; then
				run rm "$mnt/$p"
			else
				run mv "$mnt/$p" "$mnt/$dir/t$i"
				echo "$dir/t$i" >>/tmp/scratch
			fi
		fi
	elif [ $op -lt 94 ]; then
		# fsync a scratch file: it becomes durable.
		pick /tmp/scratch
		if [ -n "$p" ]; then
			run sync "$mnt/$p" "$mnt/${p%/*}"
			drop_line /tmp/scratch "$p"
			echo "$p" >>/tmp/durable
			out "add $(sum_of "$mnt/$p") $p"
			sync_mark "m$i"
		fi
	else
		# A new directory with a durable file in it.
		sub=$dir/sub$i
		run mkdir "$mnt/$sub"
		content "$mnt/$sub/g$i" "sub$i"
		run sync "$mnt/$sub/g$i" "$mnt/$sub" "$mnt/$dir"
		echo "$sub/g$i" >>/tmp/durable
		out "add $(sum_of "$mnt/$sub/g$i") $sub/g$i"
		sync_mark "m$i"
	fi
	i=$((i + 1))
done
echo "  $REPLAY_OPS operations, $nmark marks, $(wc -l </tmp/durable) durable and $(wc -l </tmp/scratch) scratch files, $(($(date +%s) - t0)) s"

run umount $mnt
run e2fsck -fn /dev/mapper/$name
run dmsetup remove $name
st=$(dmsetup status $logw) || fail "status of $logw"
echo "+ dmsetup status $logw: $st"
run dmsetup remove $logw
set -- $st
[ "${4:-0}" -gt "$nmark" ] || fail "the log has ${4:-no} entries, fewer than the $nmark marks"
out "final $(sum_of /dev/mapper/$data)"
run dmsetup remove $logd
run dmsetup remove $data
unload_module
