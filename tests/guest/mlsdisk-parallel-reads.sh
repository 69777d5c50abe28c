# Reads run on many threads at once (the target's parallel read path:
# planned under the engine's lock, fetched and decrypted without it): many
# readers in flight (direct, 4 KiB and 256 KiB) while a writer rewrites the
# very blocks they read with the same bytes (their plans go stale: the
# blocks move to new places under new keys), another writer churns the
# rest of the disk, and syncs run. Every read must return exactly the data
# written, and no bio may fail; the count of reads repeated under the lock
# is printed (`reread=`). Then the same data after remove + open.
# shellcheck shell=sh
# shellcheck source=qemu/guest/lib.sh
. /mlsdisk/lib.sh

load_module
name=mlsdisk_par
dev=/dev/mapper/$name
# A 160 MiB backing device: small, so the churn wraps the data log and the
# cleaner runs (this size once ran the index region out of chunks: the
# core's disk_index_space test keeps that fixed).
back_len=$((160 * 2048))
run dmsetup create par_backing --table "0 $back_len linear $DISK 0"
back=/dev/mapper/par_backing

# The logical capacity: a length beyond it is refused with the maximum.
n0=$(dmesg | wc -l)
if dmsetup create $name --table "0 $back_len mlsdisk $back $KEY 1 force_create" >/dev/null 2>&1; then
	len=$back_len
else
	max=$(dmesg | tail -n +$((n0 + 1)) | sed -n 's/.*the maximum is \([0-9]*\) sectors.*/\1/p' | tail -n 1)
	[ -n "$max" ] || fail "the table was refused and names no maximum: $(dmesg | tail -n 3)"
	len=$((max / 8 * 8))
	run dmsetup create $name --table "0 $len mlsdisk $back $KEY 1 force_create"
fi
echo "+ capacity $((len / 2048)) MiB"
[ $((len / 2048)) -ge 64 ] || fail "capacity $((len / 2048)) MiB is too small for the test"

# Region A: 16 MiB of random bytes, the data every reader checks.
run dd if=/dev/urandom of=/tmp/a bs=1M count=16
want=$(md5sum </tmp/a | cut -d' ' -f1)
run dd if=/tmp/a of=$dev bs=1M oflag=direct
run dmsetup message $name 0 sync

# check_a TAG BS: reads region A (direct, BS-sized reads) and compares.
check_a() {
	got=$(dd if=$dev bs="$2" count=$((16 * 1048576 / $2)) iflag=direct 2>/dev/null | md5sum | cut -d' ' -f1)
	if [ "$got" != "$want" ]; then
		echo "$1: got $got want $want" >>/tmp/par.bad
	fi
}

rm -f /tmp/par.bad /tmp/par.stop
# Rewrites region A with the same bytes, 4 KiB at a time, then syncs
# (frees the old segments), until told to stop.
(
	while [ ! -e /tmp/par.stop ]; do
		dd if=/tmp/a of=$dev bs=4k oflag=direct conv=notrunc 2>/dev/null || echo "rewrite failed" >>/tmp/par.bad
		dmsetup message $name 0 sync || echo "sync failed" >>/tmp/par.bad
	done
) &
rewriter=$!
# Churns the rest of the disk (random 4 KiB writes, a sync every 256), so
# that the log wraps and the cleaner moves region A's blocks.
fio --name=churn --filename=$dev --offset=16m --size=$(((len / 2048) - 16))m --rw=randwrite \
	--bs=4k --direct=1 --ioengine=psync --fsync=256 --time_based --runtime=25 \
	--output-format=terse --minimal >/tmp/par.churn 2>&1 &
churn=$!

round=1
while [ $round -le 4 ]; do
	pids=""
	for r in 1 2 3 4 5 6; do
		check_a "round $round reader $r (256k)" 262144 &
		pids="$pids $!"
	done
	check_a "round $round reader 7 (4k)" 4096 &
	pids="$pids $!"
	for p in $pids; do
		wait "$p"
	done
	echo "+ round $round: 7 readers done"
	round=$((round + 1))
done
wait $churn || fail "the churning writer failed: $(cat /tmp/par.churn)"
touch /tmp/par.stop
wait $rewriter
if [ -s /tmp/par.bad ]; then
	fail "reads under concurrent writes: $(head -n 3 /tmp/par.bad)"
fi

st=$(dmsetup status $name)
echo "+ dmsetup status: $st"
case "$st" in
*" errors=0 "*) ;;
*) fail "the target ended bios with errors: $st" ;;
esac
case "$st" in
*" reread="*) ;;
*) fail "the status has no reread count: $st" ;;
esac

# The same data after remove + open.
run dmsetup remove $name
run dmsetup create $name --table "0 $len mlsdisk $back $KEY"
check_a "after reopen" 262144
[ ! -s /tmp/par.bad ] || fail "after remove + open: $(cat /tmp/par.bad)"
run dmsetup remove $name
run dmsetup remove par_backing
unload_module
