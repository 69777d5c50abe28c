# Module-specific behaviour of mlsdisk.ko:
# the core engine self-test at load (alloc + BTreeMap + kvmalloc bridge),
# the kernel crypto provider's known-answer test and structure round trip,
# status/table output (never the key), option parsing, keyring references,
# bio remapping with a non-zero target start, and the module reference
# held by a live target.
# shellcheck shell=sh
# shellcheck source=qemu/guest/lib.sh
. /mlsdisk/lib.sh

n0=$(dmesg | wc -l)
load_module

# 1. The core crate ran in the kernel and agreed with userspace.
line=$(dmesg | grep 'mlsdisk: core selftest' | tail -n 1)
echo "+ dmesg: $line"
case "$line" in
*"core selftest ok checksum="????????????????" (matches userspace)"*) ;;
*) fail "no 'core selftest ok' line at module load: '$line'" ;;
esac

# 1b. The kernel crypto provider (crypto API gcm(aes) transform pool, SHA-256
#     and HMAC library, kernel RNG) gave the same known answers as the
#     userspace provider, and the AuthBlob + MacChain round trip on it gave
#     the userspace checksum.
line=$(dmesg | grep 'mlsdisk: kernel crypto selftest ok: gcm(aes)' | tail -n 1)
echo "+ dmesg: $line"
case "$line" in
*"gcm(aes) by "*" transforms), AES-GCM, SHA-256, HMAC-SHA256, HKDF known answers match userspace"*) ;;
*) fail "no kernel crypto known-answer line at module load: '$line'" ;;
esac
line=$(dmesg | grep 'mlsdisk: kernel crypto selftest ok: AuthBlob' | tail -n 1)
echo "+ dmesg: $line"
case "$line" in
*"AuthBlob + MacChain round trip checksum="????????????????" (matches userspace)"*) ;;
*) fail "no AuthBlob + MacChain round-trip line at module load: '$line'" ;;
esac
! dmesg | grep -q 'mlsdisk: .*selftest failed' || fail "a selftest failure is in dmesg"

sectors=$(disk_sectors "$DISK")
len=$((sectors / 2 / 8 * 8))
KEY128=00112233445566778899aabbccddeeff

# 2. Options, table and status output. A created disk is shown as 'open'
#    (reloading the shown line must never reformat).
run dmsetup create mlsdisk_mod --table "0 $len mlsdisk $DISK $KEY 2 force_create anchor=none"
tbl=$(dmsetup table mlsdisk_mod) || fail "dmsetup table failed"
echo "+ dmsetup table: $tbl"
case "$tbl" in
*"$KEY"*) fail "dmsetup table prints the key" ;;
"0 $len mlsdisk "*":"*" - 2 open anchor=none") ;;
*) fail "unexpected table line: $tbl" ;;
esac
st=$(dmsetup status mlsdisk_mod) || fail "dmsetup status failed"
echo "+ dmsetup status: $st"
case "$st" in
"0 $len mlsdisk health=ok sync="*" anchor=none reads="*) ;;
*) fail "status does not report health, sync counter and the missing anchor: $st" ;;
esac
status_tokens_ok "$st"
keys=$(echo "$st" | cut -d' ' -f4- | tr ' ' '\n' | cut -d= -f1 | tr '\n' ' ')
want="health sync capacity logical mapped free pending wa cleaned anchor reads writes flushes fua discards errors reread "
[ "$keys" = "$want" ] || fail "status fields '$keys', linux/README.md documents '$want'"
cap=$(echo "$st" | sed -n 's/.* capacity=\([0-9]*\) .*/\1/p')
logical=$(echo "$st" | sed -n 's/.* logical=\([0-9]*\) .*/\1/p')
[ -n "$cap" ] && [ "$cap" = "$((logical * 8))" ] || fail "capacity=$cap sectors is not logical=$logical blocks x 8"
[ "$cap" -ge "$len" ] || fail "capacity=$cap sectors is below the table length $len"

# 2b. The worker path: 4 KiB logical blocks, messages, suspend syncs.
ss=$(blockdev --getss /dev/mapper/mlsdisk_mod) || fail "blockdev --getss failed"
[ "$ss" = 4096 ] || fail "logical block size of the mapped device is $ss, not 4096"
run dmsetup message mlsdisk_mod 0 sync
# A sync is a real cache flush of the backing device: its flush counter
# (field 16 of /sys/block/<dev>/stat) moves.
if [ "$(cat /sys/block/vdb/queue/write_cache 2>/dev/null)" = "write back" ]; then
	f0=$(awk '{print $16}' /sys/block/vdb/stat)
	run dd if=/dev/urandom of=/dev/mapper/mlsdisk_mod bs=4096 seek=7 count=1 oflag=direct
	run dmsetup message mlsdisk_mod 0 sync
	f1=$(awk '{print $16}' /sys/block/vdb/stat)
	echo "  backing device flushes: $f0 -> $f1"
	[ "$f1" -gt "$f0" ] || fail "'sync' did not flush the backing device ($f0 -> $f1)"
else
	echo "  (backing disk has no volatile write cache: flush not checked)"
fi
out=$(dmsetup message mlsdisk_mod 0 stats) || fail "dmsetup message stats failed"
echo "+ dmsetup message stats: $out"
case "$out" in
"reads="*" writes="*" flushes="*" errors=0") ;;
*) fail "unexpected 'stats' message output: $out" ;;
esac
n1=$(dmesg | wc -l)
must_fail dmsetup message mlsdisk_mod 0 no_such_message
dmesg | tail -n +$((n1 + 1)) | grep -q "mlsdisk: unknown message 'no_such_message'" ||
	fail "an unknown message is not named in dmesg"
printf 'worker-path-check' | dd of=/dev/mapper/mlsdisk_mod bs=4096 seek=3 conv=sync,fsync 2>/dev/null ||
	fail "write through the worker failed"
run dmsetup suspend mlsdisk_mod
run dmsetup resume mlsdisk_mod
got=$(dd if=/dev/mapper/mlsdisk_mod bs=4096 skip=3 count=1 iflag=direct 2>/dev/null | tr -d '\000')
[ "$got" = "worker-path-check" ] || fail "read back through the worker gave '$got'"

# 3. A live target pins the module.
must_fail rmmod mlsdisk
grep -q '^mlsdisk ' /proc/modules || fail "rmmod removed the module under a live target"

# 4. Table swap: load a new table while the old target is live, suspend,
#    resume (the old instance is destroyed, the new one takes over).
run dmsetup reload mlsdisk_mod --table "0 $len mlsdisk $DISK $KEY 1 open"
run dmsetup suspend mlsdisk_mod
run dmsetup resume mlsdisk_mod
tbl=$(dmsetup table mlsdisk_mod)
echo "+ dmsetup table after reload: $tbl"
case "$tbl" in
*" - 1 open") ;;
*) fail "reloaded table not in effect: $tbl" ;;
esac
# A refused reload leaves the live table alone.
must_fail dmsetup reload mlsdisk_mod --table "0 $len mlsdisk $DISK $KEY 1 bogus"
run dmsetup resume mlsdisk_mod
# A reload takes over the live disk (one engine per backing device): it
# must give the same key, and may not 'create' (reformat) it.
n1=$(dmesg | wc -l)
must_fail dmsetup reload mlsdisk_mod --table "0 $len mlsdisk $DISK $KEY128 1 open"
must_fail dmsetup reload mlsdisk_mod --table "0 $len mlsdisk $DISK $KEY 1 create"
new=$(dmesg | tail -n +$((n1 + 1)))
echo "$new" | sed 's/^/    dmesg: /'
echo "$new" | grep -q "mlsdisk: wrong key: the disk on device .* is open with another key" ||
	fail "a reload with another key is not refused as 'wrong key'"
echo "$new" | grep -q "mlsdisk: the disk on device .* is in use by a live table: 'create' would destroy it" ||
	fail "a reload with 'create' on a live disk is not refused"
run dmsetup resume mlsdisk_mod
[ "$(dmsetup table mlsdisk_mod)" = "$tbl" ] || fail "a refused reload changed the live table"
run dmsetup remove mlsdisk_mod

# 5. AES-128 root key; the explicit 'open' option.
run dmsetup create mlsdisk_mod --table "0 $len mlsdisk $DISK $KEY128 1 force_create"
run dmsetup remove mlsdisk_mod
run dmsetup create mlsdisk_mod --table "0 $len mlsdisk $DISK $KEY128 1 open"
tbl=$(dmsetup table mlsdisk_mod)
echo "+ dmsetup table: $tbl"
case "$tbl" in
*"$KEY128"*) fail "dmsetup table prints the 128-bit key" ;;
*" - 1 open") ;;
*) fail "unexpected table line: $tbl" ;;
esac
run dmsetup remove mlsdisk_mod

# 6. Refused lines name their cause (the harness's bad-table test covers the
#    common ones; these are the module's own).
refused() {
	label=$1
	want=$2
	table=$3
	n1=$(dmesg | wc -l)
	must_fail dmsetup create mlsdisk_bad --table "$table"
	! dm_exists mlsdisk_bad || fail "$label: device left behind"
	new=$(dmesg | tail -n +$((n1 + 1)))
	echo "$new" | sed 's/^/    dmesg: /'
	echo "$new" | grep -q "mlsdisk: .*$want" || fail "$label: no 'mlsdisk: ...$want' in dmesg"
}
refused "keyring key missing" "keyring key ':32:logon:mlsdisk:test' not found" "0 $len mlsdisk $DISK :32:logon:mlsdisk:test"
refused "keyring key type" "only 'logon' and 'user'" "0 $len mlsdisk $DISK :32:encrypted:mlsdisk:test"
refused "conflicting options" "conflict" "0 $len mlsdisk $DISK $KEY 2 create open"
refused "duplicate option" "twice" "0 $len mlsdisk $DISK $KEY 2 create create"
refused "count not a number" "not a number" "0 $len mlsdisk $DISK $KEY create"
refused "length beyond the device" "maximum is $sectors sectors" "0 $((sectors + 8)) mlsdisk $DISK $KEY"
refused "empty anchor" "bad anchor" "0 $len mlsdisk $DISK $KEY 1 anchor="
refused "file anchor" "unknown anchor 'file:/run/anchor'" "0 $len mlsdisk $DISK $KEY 1 anchor=file:/run/anchor"
run dd if=/dev/zero of=/dev/vda bs=1M count=8 conv=fsync
refused "open a blank device" "give the 'create' option" "0 8 mlsdisk /dev/vda $KEY"
refused "length not whole 4 KiB blocks" "not a whole number of 4 KiB blocks" "0 $((len - 1)) mlsdisk $DISK $KEY"

# 7. Bios are mapped relative to the target start: an mlsdisk target that
#    starts at sector 2048 of the mapped device (after a linear target on
#    the spare disk) maps its first sector to block 0 of the disk, as a
#    table of the disk alone reads back. (Two mlsdisk targets of one table
#    on one device are refused: tests/guest/mlsdisk-aliasing.sh.)
run dmsetup create mlsdisk_mod --table "0 $len mlsdisk $DISK $KEY 1 force_create"
run dmsetup remove mlsdisk_mod
printf '0 2048 linear /dev/vda 0\n2048 2048 mlsdisk %s %s\n' "$DISK" "$KEY" |
	dmsetup create mlsdisk_two || fail "two-target table refused"
printf 'mlsdisk-remap-check' | dd of=/dev/mapper/mlsdisk_two bs=4096 seek=256 conv=sync,fsync 2>/dev/null ||
	fail "write through the second target failed"
got=$(dd if=/dev/mapper/mlsdisk_two bs=4096 skip=256 count=1 iflag=direct 2>/dev/null | tr -d '\000')
[ "$got" = "mlsdisk-remap-check" ] || fail "the second target does not read back its write (got '$got')"

# 8. Flushes and discards reach the target (num_flush_bios/num_discard_bios):
#    the status counters of the second target show them.
st=$(dmsetup status mlsdisk_two | tail -n 1)
echo "+ dmsetup status (second target): $st"
case "$st" in
*" writes=0 "*) fail "no write reached the second target: $st" ;;
esac
if [ "$(cat /sys/block/vdb/queue/write_cache 2>/dev/null)" = "write back" ]; then
	case "$st" in
	*" flushes=0 "*) fail "fsync on a write-back disk sent no flush to the target: $st" ;;
	esac
else
	echo "  (backing disk has no volatile write cache: flushes are not expected)"
fi
if [ "$(cat /sys/block/vdb/queue/discard_max_bytes 2>/dev/null || echo 0)" -gt 0 ]; then
	# Not block 0 of the disk, which is read back below.
	run blkdiscard -o $((2056 * 512)) -l $((1024 * 512)) /dev/mapper/mlsdisk_two
	st=$(dmsetup status mlsdisk_two | tail -n 1)
	echo "+ dmsetup status (second target): $st"
	case "$st" in
	*" discards=0"*) fail "blkdiscard sent no discard to the target: $st" ;;
	esac
else
	echo "  (backing disk does not discard: discard not tested)"
fi
run dmsetup remove mlsdisk_two
run dmsetup create mlsdisk_mod --table "0 $len mlsdisk $DISK $KEY"
got=$(dd if=/dev/mapper/mlsdisk_mod bs=4096 count=1 iflag=direct 2>/dev/null | tr -d '\000')
[ "$got" = "mlsdisk-remap-check" ] || fail "the second target's sector 0 is not block 0 of the disk (got '$got')"
run dmsetup remove mlsdisk_mod

# 9. The key never reached the kernel log.
if dmesg | tail -n +$((n0 + 1)) | grep -qi -e "$KEY" -e "$KEY128"; then
	fail "a key appears in the kernel log"
fi
unload_module
