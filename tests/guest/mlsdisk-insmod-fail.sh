# needs: kmemleak=on
# A failed insmod leaves nothing anyone could have used. Module init opens
# every blk-mq disk's engine before it adds any disk, and registers the dm
# target last: a module whose init fails is freed even while something
# (udev, blkid, a dmsetup create) holds a reference it took during init,
# so nothing may be visible before the last failable step.
#
# 1. Two disks are created on dm-linear halves of vdb, then insmod with a
#    wrong key for the second one (its engine open fails after the first
#    engine is open) while a prober loops: it reads /dev/mlsdisk0 and
#    /sys/block/mlsdisk0 whenever they exist and records any sighting of
#    them or of the mlsdisk dm target. insmod must fail, the prober must
#    have seen nothing, the kernel log must say that the first engine was
#    closed without its disk being added and that no target was
#    registered, and no module, disk or target remains.
# 2. A later good insmod opens both disks with their data.
# 3. After rmmod, kmemleak finds no object allocated through mlsdisk.
# shellcheck shell=sh
# shellcheck source=qemu/guest/lib.sh
. /mlsdisk/lib.sh

need_module
KEY2=1f1e1d1c1b1a191817161514131211100f0e0d0c0b0a09080706050403020100
KML=/sys/kernel/debug/kmemleak
if [ ! -e $KML ]; then
	grep -q ' /sys/kernel/debug debugfs' /proc/mounts || run mount -t debugfs debugfs /sys/kernel/debug
fi
[ -e $KML ] || fail "no $KML: the guest kernel lacks CONFIG_DEBUG_KMEMLEAK"
echo scan >$KML 2>/dev/null || fail "kmemleak is off (boot with kmemleak=on) or disabled itself"
if grep -q '^mlsdisk ' /proc/modules; then
	run rmmod mlsdisk
fi
half=131072
run dmsetup create mlsdisk_f0 --table "0 $half linear $DISK 0"
run dmsetup create mlsdisk_f1 --table "0 $half linear $DISK $half"
BOTH=disk_backing=/dev/mapper/mlsdisk_f0,/dev/mapper/mlsdisk_f1

# Make both disks, with one distinct block each.
run insmod /mlsdisk.ko "$BOTH" disk_key=$KEY,$KEY2 disk_mode=force_create
for i in 0 1; do
	printf 'block of mlsdisk%s' $i | run dd of=/dev/mlsdisk$i bs=4096 conv=sync,fsync 2>/dev/null
done
run rmmod mlsdisk

# 1. A wrong key for disk 1, with a prober running.
rm -f /tmp/seen /tmp/prober.stop
(
	while [ ! -e /tmp/prober.stop ]; do
		if [ -e /sys/block/mlsdisk0 ] || [ -e /dev/mlsdisk0 ]; then
			echo "mlsdisk0 visible" >>/tmp/seen
			dd if=/dev/mlsdisk0 of=/dev/null bs=4096 count=1 iflag=direct 2>/dev/null
			blkid /dev/mlsdisk0 >/dev/null 2>&1
		fi
		if grep -q '^mlsdisk ' /proc/modules 2>/dev/null && dmsetup targets 2>/dev/null | grep -q '^mlsdisk '; then
			echo "dm target registered" >>/tmp/seen
		fi
	done
) &
prober=$!
# Let the prober run before and during the whole insmod.
sleep 1
n0=$(dmesg | wc -l)
must_fail insmod /mlsdisk.ko "$BOTH" disk_key=$KEY,ff${KEY2#??} disk_mode=open
sleep 1
touch /tmp/prober.stop
wait $prober
new=$(dmesg | tail -n +$((n0 + 1)))
echo "$new" | grep mlsdisk | sed 's/^/    dmesg: /'
if [ -s /tmp/seen ]; then
	sort /tmp/seen | uniq -c | sed 's/^/    prober: /'
	fail "the prober saw mlsdisk0 or the dm target during an insmod that failed"
fi
echo "$new" | grep -q 'mlsdisk: mlsdisk0: opened on' || fail "mlsdisk0's engine was not opened before mlsdisk1 failed"
echo "$new" | grep -q 'mlsdisk: mlsdisk1: wrong key' || fail "no 'mlsdisk1: wrong key'"
echo "$new" | grep -q 'mlsdisk1: cannot open the disk on .*closing the 1 engine(s) opened before it (no disk was added)' ||
	fail "no 'closing the 1 engine(s) opened before it (no disk was added)'"
echo "$new" | grep -q 'mlsdisk: mlsdisk0: engine closed (synced); the disk was never added' ||
	fail "mlsdisk0's engine was not closed unadded"
if echo "$new" | grep -q 'dm target registered'; then
	fail "the dm target was registered during an insmod that failed"
fi
! grep -q '^mlsdisk ' /proc/modules || fail "module loaded after a failed insmod"
[ ! -e /dev/mlsdisk0 ] && [ ! -e /sys/block/mlsdisk0 ] || fail "mlsdisk0 left behind"
[ ! -e /dev/mlsdisk1 ] && [ ! -e /sys/block/mlsdisk1 ] || fail "mlsdisk1 left behind"

# 2. A good insmod: both open with their data.
run insmod /mlsdisk.ko "$BOTH" disk_key=$KEY,$KEY2 disk_mode=open
dmsetup targets | grep -q '^mlsdisk ' || fail "no mlsdisk dm target after a good insmod"
for i in 0 1; do
	got=$(dd if=/dev/mlsdisk$i bs=4096 count=1 iflag=direct 2>/dev/null | tr -d '\000')
	[ "$got" = "block of mlsdisk$i" ] || fail "mlsdisk$i reads '$got' after the failed insmod"
done
echo "  both disks open with their data after the failed insmod"
awk '$NF == "[mlsdisk]" && ($2 == "t" || $2 == "T") {print $1, $3}' /proc/kallsyms | sort >/tmp/mlsdisk.syms
run rmmod mlsdisk
run dmsetup remove mlsdisk_f1
run dmsetup remove mlsdisk_f0

# 3. kmemleak (as mlsdisk-unload-leaks.sh): an unreferenced object with a
# frame in mlsdisk, named or a bare address in the module area.
sleep 6
run sh -c "echo scan >$KML"
sleep 2
run sh -c "echo scan >$KML"
cat $KML >/tmp/kmemleak.txt || fail "cannot read $KML"
awk '
	function flush() { if (entry != "" && hit) { print entry } }
	/^unreferenced object/ { flush(); entry = ""; hit = 0; bt = 0 }
	/^  backtrace/ { bt = 1 }
	bt && /\[mlsdisk\]$/ { hit = 1 }
	bt && /^ +0xffffffff[a-f][0-9a-f]+$/ { hit = 1 }
	{ entry = entry $0 "\n" }
	END { flush() }
' /tmp/kmemleak.txt >/tmp/kmemleak.ours
ours=$(grep -c '^unreferenced object' /tmp/kmemleak.ours || true)
echo "  kmemleak: ${ours:-0} unreferenced object(s) with a backtrace in mlsdisk"
if [ "${ours:-0}" -gt 0 ]; then
	head -n 120 /tmp/kmemleak.ours | sed 's/^/  /'
	fail "kmemleak: $ours object(s) allocated through mlsdisk leaked"
fi
# Leave vdb's start blank for the next test.
run dd if=/dev/zero of=$DISK bs=1M count=128 conv=fsync
