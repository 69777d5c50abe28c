# `mlsdisk serve`: the engine as a ublk block device (issue 13), on the
# test disk vdb with its rollback anchor on the first 8 KiB of vda.
#
# 1. format; serve: /dev/ublkbN has the capacity `mlsdisk size` gives and
#    4 KiB logical blocks; mkfs.ext4, mount, write, umount, e2fsck -fn; a
#    second serve of the same disk refused (in use); `serve --stop N`;
#    serve again: checksums match; SIGTERM stops the server cleanly.
# 2. kill -9 of the server in the middle of writes, after a file was
#    fsynced: `serve --stop N` deletes the dead device; serve again: the
#    fsynced file is intact, e2fsck -fn clean.
# 3. A wrong key and a garbage backing file refused with a clear message.
# 4. The same disk opened by the module (mlsdisk open, dm target) and by
#    serve in turn: each reads what the other wrote.
# 5. Tampering with the backing device while no one serves it (as the host
#    can between boots): the first 8 blocks of every data segment
#    overwritten; serve either refuses to start with a reason, or the file
#    system does not mount, or every file reads as it was written or fails
#    with an I/O error (at least one does, logged by the server as an
#    authentication failure), never as other data.
# Every wait is bounded; a failure names its cause.
# shellcheck shell=sh
# shellcheck source=qemu/guest/lib.sh
. /mlsdisk/lib.sh

command -v mlsdisk >/dev/null || fail "mlsdisk is not in the guest image (qemu/run-guest.sh installs it)"
[ -e /dev/ublk-control ] || fail "no /dev/ublk-control: the guest kernel has no ublk driver (CONFIG_BLK_DEV_UBLK)"
ANC=/dev/vda
mnt=/mnt/ublk
run mkdir -p $mnt
printf '%s\n' "$KEY" >/tmp/key.hex
run dd if=/dev/zero of=$ANC bs=4096 count=2 conv=fsync status=none

# alive PID: the process runs (a zombie does not).
alive() {
	[ -e "/proc/$1" ] && ! grep -q ') Z ' "/proc/$1/stat" 2>/dev/null
}

# SERVE_ARGS: more options of the servers serve_try starts (none by
# default; the second serve of 1., the killed one of 2. and those of 4.
# and 5. run with --threads 2, the engine's runner that the module has
# too).
SERVE_ARGS=""

# serve_try: starts the server on $DISK in the background and waits (at
# most 120 s) for its ready file; sets SRV (its pid) and BDEV. Returns 1
# when the server exits before its device is ready.
serve_try() {
	rm -f /tmp/ublk.ready
	echo "+ mlsdisk serve $DISK --key-file /tmp/key.hex --anchor $ANC --ready-file /tmp/ublk.ready $SERVE_ARGS &"
	# shellcheck disable=SC2086 # SERVE_ARGS holds separate options
	mlsdisk serve $DISK --key-file /tmp/key.hex --anchor $ANC --ready-file /tmp/ublk.ready $SERVE_ARGS \
		>/tmp/serve.out 2>/tmp/serve.err &
	SRV=$!
	i=0
	while [ ! -s /tmp/ublk.ready ]; do
		if ! alive $SRV; then
			sed 's/^/    /' /tmp/serve.err
			return 1
		fi
		i=$((i + 1))
		[ $i -le 240 ] || fail "mlsdisk serve: no device after 120 s"
		sleep 0.5
	done
	BDEV=$(cat /tmp/ublk.ready)
	echo "  serving $BDEV (pid $SRV)"
	[ -b "$BDEV" ] || fail "$BDEV (from the ready file) is not a block device"
	grep -qx "$BDEV" /tmp/serve.out || fail "mlsdisk serve did not print $BDEV on standard output"
}

# serve_start: serve_try, which must succeed.
serve_start() {
	serve_try || fail "mlsdisk serve exited before its device was ready: $(tail -n 1 /tmp/serve.err)"
}

# server_gone: waits (at most 120 s) for the server to exit; its status in RC.
server_gone() {
	i=0
	while alive $SRV; do
		i=$((i + 1))
		[ $i -le 240 ] || fail "mlsdisk serve (pid $SRV) still running 120 s after it was stopped"
		sleep 0.5
	done
	RC=0
	wait $SRV || RC=$?
	sed 's/^/    server: /' /tmp/serve.err
}

# serve_stop: `mlsdisk serve --stop N`; the server exits 0, the device goes.
serve_stop() {
	run timeout 180 mlsdisk serve --stop "${BDEV#/dev/ublkb}"
	server_gone
	[ "$RC" -eq 0 ] || fail "mlsdisk serve exited with $RC after --stop"
	[ ! -e "$BDEV" ] || fail "$BDEV still exists after mlsdisk serve --stop"
}

# 1. The ext4 flow.
run mlsdisk format $DISK --key-file /tmp/key.hex --anchor $ANC --batch --force
sectors=$(mlsdisk size $DISK --key-file /tmp/key.hex) || fail "mlsdisk size failed"
serve_start
[ "$(blockdev --getsz "$BDEV")" = "$sectors" ] ||
	fail "$BDEV has $(blockdev --getsz "$BDEV") sectors, mlsdisk size said $sectors"
[ "$(blockdev --getss "$BDEV")" = 4096 ] || fail "$BDEV logical block size $(blockdev --getss "$BDEV"), not 4096"
run mkfs.ext4 -q -F "$BDEV"
run mount -t ext4 "$BDEV" $mnt
write_files $mnt
checksum_tree $mnt >/tmp/ublk.sums || fail "checksumming $mnt"
[ "$(wc -l </tmp/ublk.sums)" -eq 66 ] || fail "expected 66 files in $mnt, found $(wc -l </tmp/ublk.sums)"
run umount $mnt
run e2fsck -fn "$BDEV"
expect_fail "in use" mlsdisk serve $DISK --key-file /tmp/key.hex --anchor $ANC
alive $SRV || fail "the first server died when a second one was refused"
serve_stop

SERVE_ARGS="--threads 2"
serve_start
run mount -t ext4 -o ro "$BDEV" $mnt
checksum_tree $mnt >/tmp/ublk.sums2 || fail "checksumming $mnt after serving again"
cmp -s /tmp/ublk.sums /tmp/ublk.sums2 || fail "checksums differ after stop and serve again"
echo "  checksums of 66 files match after serve --stop and serve"
run umount $mnt
echo "+ kill -TERM $SRV"
kill -TERM $SRV
server_gone
[ "$RC" -eq 0 ] || fail "mlsdisk serve exited with $RC after SIGTERM"
[ ! -e "$BDEV" ] || fail "$BDEV still exists after SIGTERM to its server"
grep -q "stopped" /tmp/serve.err || fail "the server did not report its stop"

# 2. kill -9 in the middle of writes, after an fsync.
serve_start
run mount -t ext4 "$BDEV" $mnt
run dd if=/dev/urandom of=$mnt/marker bs=64k count=16 conv=fsync status=none
run sync
sha256sum $mnt/marker | cut -d' ' -f1 >/tmp/marker.sum
echo "+ dd if=/dev/urandom of=$mnt/unsynced bs=64k count=4000 &"
dd if=/dev/urandom of=$mnt/unsynced bs=64k count=4000 status=none 2>/dev/null &
writer=$!
sleep 2
echo "+ kill -9 $SRV (writer $writer running)"
kill -9 $SRV
server_gone
kill -9 $writer 2>/dev/null || true
wait $writer 2>/dev/null || true
# The device's requests now fail; let go of the file system.
timeout 60 umount -l $mnt || fail "umount -l of the dead device hung"
run timeout 180 mlsdisk serve --stop "${BDEV#/dev/ublkb}"
[ ! -e "$BDEV" ] || fail "$BDEV still exists after serve --stop of a killed server"
SERVE_ARGS=""
serve_start
run mount -t ext4 "$BDEV" $mnt
[ "$(sha256sum $mnt/marker | cut -d' ' -f1)" = "$(cat /tmp/marker.sum)" ] ||
	fail "the fsynced marker file differs after kill -9 and serve"
echo "  the fsynced marker survived kill -9 of the server"
run umount $mnt
run e2fsck -fn "$BDEV"
serve_stop

# 3. Refusals.
expect_fail "wrong key" mlsdisk serve $DISK --key ffeeddccbbaa99887766554433221100ffeeddccbbaa99887766554433221100 --anchor $ANC
run dd if=/dev/urandom of=/tmp/garbage.img bs=1M count=16 status=none
expect_fail "not an MlsDisk image" mlsdisk serve /tmp/garbage.img --key-file /tmp/key.hex
[ -z "$(ls /dev/ublkb* 2>/dev/null)" ] || fail "a refused serve left a device behind: $(ls /dev/ublkb*)"

# 4. One format for the module and serve.
load_module
run mlsdisk open $DISK ublk_md --key-file /tmp/key.hex --anchor $ANC
run mount -t ext4 /dev/mapper/ublk_md $mnt
[ "$(sha256sum $mnt/marker | cut -d' ' -f1)" = "$(cat /tmp/marker.sum)" ] ||
	fail "the module reads the marker file written by serve differently"
run dd if=/dev/urandom of=$mnt/from-module bs=64k count=8 conv=fsync status=none
sha256sum $mnt/from-module | cut -d' ' -f1 >/tmp/module.sum
run umount $mnt
run mlsdisk close ublk_md
SERVE_ARGS="--threads 2"
serve_start
run mount -t ext4 -o ro "$BDEV" $mnt
[ "$(sha256sum $mnt/from-module | cut -d' ' -f1)" = "$(cat /tmp/module.sum)" ] ||
	fail "serve reads the file written by the module differently"
echo "  serve reads what the module wrote, and the module what serve wrote"
run umount $mnt
run e2fsck -fn "$BDEV"
serve_stop

# 5. Tampering between two serves.
cat /tmp/ublk.sums >/tmp/all.sums
echo "$(cat /tmp/marker.sum)  ./marker" >>/tmp/all.sums
echo "$(cat /tmp/module.sum)  ./from-module" >>/tmp/all.sums
# The data log's place: "data log  from block S: N segments of B blocks".
set -- $(mlsdisk info $DISK --key-file /tmp/key.hex --anchor $ANC | awk '$1 == "data" && $2 == "log" {print $5, $6, $9}')
data_start=${1%:} nseg=${2:-} seg_blocks=${3:-}
case "$data_start$nseg$seg_blocks" in '' | *[!0-9]*) fail "no data log layout in mlsdisk info: '$*'" ;; esac
# Where the allocator put the files is not known here: the first 8 blocks
# of every segment get random bytes.
echo "+ overwriting the first 8 blocks of each of $nseg segments of $seg_blocks blocks from block $data_start of $DISK"
seg=0
while [ $seg -lt "$nseg" ]; do
	dd if=/dev/urandom of=$DISK bs=4096 seek=$((data_start + seg * seg_blocks)) count=8 conv=notrunc status=none ||
		fail "dd into segment $seg of $DISK"
	seg=$((seg + 1))
done
run sync
if serve_try; then
	if mount -t ext4 -o ro "$BDEV" $mnt; then
		good=0 bad=0
		while read -r sum path; do
			if got=$(sha256sum "$mnt/$path" 2>/dev/null); then
				[ "${got%% *}" = "$sum" ] || fail "$path read as OTHER data after tampering (not an I/O error)"
				good=$((good + 1))
			else
				bad=$((bad + 1))
			fi
		done </tmp/all.sums
		echo "  after tampering: $good files intact, $bad failed with an I/O error, none wrong"
		[ "$bad" -gt 0 ] || fail "the tampering hit no file: this part checks nothing"
		grep -q "failed: authentication failed" /tmp/serve.err ||
			fail "the server logged no authentication failure for the I/O errors"
		umount $mnt || true
	else
		echo "  after tampering: the file system does not mount (I/O errors on its metadata)"
	fi
	serve_stop
else
	grep -qE "authentication failed|damaged|I/O error" /tmp/serve.err ||
		fail "serve refused the tampered disk without a reason: $(tail -n 1 /tmp/serve.err)"
	echo "  after tampering: serve refused to start: $(tail -n 1 /tmp/serve.err)"
fi
