# A suspended table does not touch its backing device (someone may be
# snapshotting it): `dmsetup message <name> 0 sync` is refused with EBUSY
# and the cause in dmesg, the sync counter and the device's metadata
# blocks stay as the suspend left them; after resume the message syncs.
# shellcheck shell=sh
# shellcheck source=qemu/guest/lib.sh
. /mlsdisk/lib.sh

load_module
n0=$(dmesg | wc -l)
dmsetup create mlsdisk_s --table "0 $(disk_sectors "$DISK") mlsdisk $DISK $KEY 1 force_create" 2>/dev/null &&
	fail "an over-long table was accepted"
max=$(dmesg | tail -n +$((n0 + 1)) | sed -n 's/.*the maximum is \([0-9]*\) sectors.*/\1/p' | tail -n 1)
[ -n "$max" ] || fail "no 'the maximum is N sectors' in dmesg"
run dmsetup create mlsdisk_s --table "0 $((max / 8 * 8)) mlsdisk $DISK $KEY 1 force_create"
run dd if=/dev/urandom of=/dev/mapper/mlsdisk_s bs=4096 count=256 oflag=direct
counter() {
	dmsetup status mlsdisk_s | sed -n 's/.* sync=\([0-9]*\) .*/\1/p'
}
run dmsetup suspend mlsdisk_s
c0=$(counter)
[ -n "$c0" ] || fail "no sync= in the status: $(dmsetup status mlsdisk_s)"
h0=$(dd if="$DISK" bs=1M count=16 iflag=direct 2>/dev/null | md5sum)
n0=$(dmesg | wc -l)
echo "+ (must fail) dmsetup message mlsdisk_s 0 sync"
if out=$(dmsetup message mlsdisk_s 0 sync 2>&1); then
	fail "sync message accepted by a suspended table"
fi
echo "  $out"
echo "$out" | grep -qi busy || fail "the refused message is not EBUSY: $out"
dmesg | tail -n +$((n0 + 1)) | grep -q "sync refused: the table is suspended" ||
	fail "no cause in dmesg for the refused message"
[ "$(counter)" = "$c0" ] || fail "the sync counter moved while suspended: $c0 -> $(counter)"
h1=$(dd if="$DISK" bs=1M count=16 iflag=direct 2>/dev/null | md5sum)
[ "$h0" = "$h1" ] || fail "the backing device's metadata changed while the table was suspended"
run dmsetup message mlsdisk_s 0 stats
run dmsetup resume mlsdisk_s
run dmsetup message mlsdisk_s 0 sync
c1=$(counter)
[ "$c1" -gt "$c0" ] || fail "the sync after resume did not advance the counter: $c0 -> $c1"
run dmsetup remove mlsdisk_s
