# needs: kmemleak=on
# No memory leak after the module is unloaded (kmemleak: the guest kernel
# has CONFIG_DEBUG_KMEMLEAK, off unless booted with kmemleak=on: make
# guest-test-kmemleak boots with it for this test alone; the runner SKIPs
# it in a boot without it).
#
# Loads the module with a blk-mq disk (module parameters, on the spare disk
# vda), uses it (write, read back, discard, flush); makes a dm disk on vdb
# next to it and uses it (write, sync and stats messages, status,
# suspend/resume); lets constructors fail before the engine (unknown
# option, keyring key not found, length beyond the device); removes
# everything, rmmods, waits past kmemleak's minimum object age, scans twice
# and fails when an unreferenced object has a backtrace in mlsdisk: a frame
# named [mlsdisk] or, once the module is gone, a frame that no longer
# resolves to a symbol and lies in the module area (only mlsdisk is ever
# loaded as a module in the guest). Prints kmemleak's report either way.
#
# Also opens the existing disk again, with the right key and with a wrong
# one (the engine's whole open path, and a failed open, allocate a lot).
# shellcheck shell=sh
# shellcheck source=qemu/guest/lib.sh
. /mlsdisk/lib.sh

need_module
KML=/sys/kernel/debug/kmemleak
if [ ! -e $KML ]; then
	grep -q ' /sys/kernel/debug debugfs' /proc/mounts || run mount -t debugfs debugfs /sys/kernel/debug
fi
[ -e $KML ] || fail "no $KML: the guest kernel lacks CONFIG_DEBUG_KMEMLEAK (qemu/kernel.config)"
# Off (EPERM) unless booted with kmemleak=on, or when kmemleak disabled
# itself (its object pool ran out: see dmesg).
echo scan >$KML 2>/dev/null ||
	fail "kmemleak is off (boot with kmemleak=on: qemu/run-guest.sh --kmemleak on; make guest-test-kmemleak) or disabled itself: $(dmesg | grep -i kmemleak | tail -n 1)"

if grep -q '^mlsdisk ' /proc/modules; then
	run rmmod mlsdisk
fi
BDISK=/dev/vda
BDEV=/dev/mlsdisk0

# 1. The blk-mq disk.
run insmod /mlsdisk.ko disk_backing=$BDISK disk_key=$KEY disk_mode=force_create
[ -b $BDEV ] || fail "$BDEV missing after insmod"
dmsetup targets | grep -q '^mlsdisk ' || fail "dmsetup targets does not list mlsdisk"
# The module's text symbols, to name the frames of the report once the
# module is gone (kmemleak then prints bare addresses).
awk '$NF == "[mlsdisk]" && ($2 == "t" || $2 == "T") {print $1, $3}' /proc/kallsyms | sort >/tmp/mlsdisk.syms
echo "  mlsdisk: $(wc -l </tmp/mlsdisk.syms) text symbols, $(head -n 1 /tmp/mlsdisk.syms | cut -d' ' -f1) to $(tail -n 1 /tmp/mlsdisk.syms | cut -d' ' -f1)"
run dd if=/dev/urandom of=/tmp/leak.data bs=1M count=2
want=$(sha256sum </tmp/leak.data | cut -d' ' -f1)
run dd if=/tmp/leak.data of=$BDEV bs=1M oflag=direct conv=fsync
got=$(dd if=$BDEV bs=1M count=2 iflag=direct 2>/dev/null | sha256sum | cut -d' ' -f1)
[ "$got" = "$want" ] || fail "$BDEV read back other data"
run blkdiscard -o 1048576 -l 1048576 $BDEV
run blockdev --flushbufs $BDEV

# 2. The dm target on vdb, next to the blk-mq disk.
sectors=$(disk_sectors "$DISK")
len=$((sectors / 2 / 8 * 8))
run dmsetup create mlsdisk_leak --table "0 $len mlsdisk $DISK $KEY 1 force_create"
run dd if=/tmp/leak.data of=/dev/mapper/mlsdisk_leak bs=1M oflag=direct conv=fsync
got=$(dd if=/dev/mapper/mlsdisk_leak bs=1M count=2 iflag=direct 2>/dev/null | sha256sum | cut -d' ' -f1)
[ "$got" = "$want" ] || fail "the dm disk read back other data"
run dmsetup message mlsdisk_leak 0 sync
run dmsetup message mlsdisk_leak 0 stats
echo "+ dmsetup status: $(dmsetup status mlsdisk_leak)"
run dmsetup suspend mlsdisk_leak
run dmsetup resume mlsdisk_leak
# Constructors that fail before the engine, with a live target on the
# device and without.
must_fail dmsetup create mlsdisk_leak_bad --table "0 $len mlsdisk $DISK $KEY 1 no_such_option"
run dmsetup remove mlsdisk_leak
# Re-open (the data is still there) and a wrong key.
run dmsetup create mlsdisk_leak --table "0 $len mlsdisk $DISK $KEY"
got=$(dd if=/dev/mapper/mlsdisk_leak bs=1M count=2 iflag=direct 2>/dev/null | sha256sum | cut -d' ' -f1)
[ "$got" = "$want" ] || fail "the re-opened dm disk read back other data"
run dmsetup remove mlsdisk_leak
must_fail dmsetup create mlsdisk_leak_bad --table "0 $len mlsdisk $DISK ff0102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f"
must_fail dmsetup create mlsdisk_leak_bad --table "0 $len mlsdisk $DISK $KEY 1 no_such_option"
must_fail dmsetup create mlsdisk_leak_bad --table "0 $len mlsdisk $DISK :32:logon:mlsdisk:no-such-key"
must_fail dmsetup create mlsdisk_leak_bad --table "0 $((sectors + 8)) mlsdisk $DISK $KEY"

# 3. Unload, then scan.
run rmmod mlsdisk
! grep -q '^mlsdisk ' /proc/modules || fail "mlsdisk still loaded after rmmod"
# Objects younger than 5 s are never reported; scan twice (an object in
# flight during one scan is not reported as a leak).
sleep 6
run sh -c "echo scan >$KML"
sleep 2
run sh -c "echo scan >$KML"
cat $KML >/tmp/kmemleak.txt || fail "cannot read $KML"
total=$(grep -c '^unreferenced object' /tmp/kmemleak.txt || true)
# One line per suspect object: "<index> <mlsdisk?>" by the rule above.
# The suspects with a backtrace frame in mlsdisk go to /tmp/kmemleak.ours
# (whole entries), the others to /tmp/kmemleak.other.
awk '
	function flush() { if (entry != "") { print entry > (hit ? ours : other) } }
	/^unreferenced object/ { flush(); entry = ""; hit = 0; bt = 0 }
	/^  backtrace/ { bt = 1 }
	bt && /\[mlsdisk\]$/ { hit = 1 }
	bt && /^ +0xffffffff[a-f][0-9a-f]+$/ { hit = 1 }
	{ entry = entry $0 "\n" }
	END { flush() }
' ours=/tmp/kmemleak.ours other=/tmp/kmemleak.other /tmp/kmemleak.txt
ours=$(grep -c '^unreferenced object' /tmp/kmemleak.ours 2>/dev/null || true)
echo "  kmemleak: $total unreferenced object(s), ${ours:-0} with a backtrace in mlsdisk"
# name_frames: a bare address of the unloaded module gets the name it had
# ("<addr> (was <symbol>+0x<off> [mlsdisk])"), from the saved symbols
# (16-digit addresses compare as strings; the offset from the low 32 bits).
name_frames() {
	while IFS= read -r line; do
		case "$line" in
		*[[:space:]]0xffffffff[a-f]???????)
			a=${line##*0x}
			sym=$(awk -v a="$a" '$1 <= a {s = $0} END {print s}' /tmp/mlsdisk.syms)
			if [ -n "$sym" ]; then
				off=$((0x${a#????????} - 0x$(echo "$sym" | cut -c9-16)))
				line="$line (was ${sym#* }+0x$(printf %x "$off") [mlsdisk])"
			fi
			;;
		esac
		echo "$line"
	done
}
if [ "${ours:-0}" -gt 0 ]; then
	echo "  ---- kmemleak: the objects with a backtrace in mlsdisk (first 200 lines) ----"
	head -n 200 /tmp/kmemleak.ours | name_frames | sed 's/^/  /'
fi
if [ -s /tmp/kmemleak.other ]; then
	echo "  ---- kmemleak: the other objects, not counted (first 60 lines) ----"
	head -n 60 /tmp/kmemleak.other | sed 's/^/  /'
fi

# Leave the spare disk blank, as the other tests expect it.
run dd if=/dev/zero of=$BDISK bs=1M count=$(($(disk_sectors $BDISK) / 2048)) conv=fsync
[ "${ours:-0}" -eq 0 ] || fail "kmemleak: $ours unreferenced object(s) allocated through mlsdisk after rmmod (report above)"
