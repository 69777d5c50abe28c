# 'create' never reformats a device that holds an mlsdisk: the table's
# 'create' and disk_mode=create refuse a backing device whose block 0 or 1
# starts with the superblock's AuthBlob magic ("MDAB", docs/format.md),
# naming 'force_create', which formats it anyway.
# 1. dm: create on a blank device works; write a block; create again is
#    refused (EEXIST, the cause in dmesg) and the disk still opens with the
#    block; with only slot B (block 1) left it is still refused;
#    force_create formats it (the block reads as zeros) and 'dmsetup
#    table' shows 'open', never 'force_create'.
# 2. blk-mq: disk_mode=create on that disk fails insmod with the cause;
#    disk_mode=force_create formats it.
# shellcheck shell=sh
# shellcheck source=qemu/guest/lib.sh
. /mlsdisk/lib.sh

need_module
D=/dev/vda
if grep -q '^mlsdisk ' /proc/modules; then
	run rmmod mlsdisk
fi
run dd if=/dev/zero of=$D bs=4096 count=2 conv=fsync
run insmod /mlsdisk.ko
if ! dmesg | grep -q 'mlsdisk: dm target registered (engine'; then
	fail "the pass-through build has no 'create' to refuse: build the engine (the default)"
fi
len=8192
block0() {
	dd if=/dev/mapper/mlsdisk_c bs=4096 count=1 iflag=direct 2>/dev/null | tr -d '\000'
}
# refused_create TABLE-OPTS: a create refused with the cause in dmesg.
refused_create() {
	n0=$(dmesg | wc -l)
	echo "+ (must fail) dmsetup create mlsdisk_c ... $1"
	if out=$(dmsetup create mlsdisk_c --table "0 $len mlsdisk $D $KEY $1" 2>&1); then
		fail "'$1' on a device holding an mlsdisk was accepted"
	fi
	echo "  $out"
	dm_exists mlsdisk_c && fail "a refused table is listed"
	dmesg | tail -n +$((n0 + 1)) | grep -q "holds an mlsdisk superblock (block 0 or 1): 'create' refused; give 'force_create'" ||
		fail "no 'holds an mlsdisk superblock ... give force_create' in dmesg"
	dmesg | tail -n +$((n0 + 1)) | grep -q "refusing 'create' (use 'force_create')" ||
		fail "no ti->error naming force_create"
}

# 1. dm.
run dmsetup create mlsdisk_c --table "0 $len mlsdisk $D $KEY 1 create"
printf 'precious data' | run dd of=/dev/mapper/mlsdisk_c bs=4096 conv=sync,fsync 2>/dev/null
run dmsetup remove mlsdisk_c
refused_create "1 create"
refused_create "2 create anchor=none"
run dmsetup create mlsdisk_c --table "0 $len mlsdisk $D $KEY"
[ "$(block0)" = "precious data" ] || fail "the disk lost its data after a refused create: '$(block0)'"
run dmsetup remove mlsdisk_c
# Slot A gone, slot B left: still a disk.
run dd if=/dev/zero of=$D bs=4096 count=1 conv=fsync
refused_create "1 create"
run dmsetup create mlsdisk_c --table "0 $len mlsdisk $D $KEY 1 force_create"
tbl=$(dmsetup table mlsdisk_c)
echo "+ dmsetup table: $tbl"
case "$tbl" in
*force_create* | *" create"*) fail "dmsetup table shows a create option after the disk was made: $tbl" ;;
*" 1 open") ;;
*) fail "dmsetup table does not show the disk as 'open': $tbl" ;;
esac
[ -z "$(block0)" ] || fail "force_create left the old data: '$(block0)'"
run dmsetup remove mlsdisk_c
run rmmod mlsdisk

# 2. blk-mq.
n0=$(dmesg | wc -l)
must_fail insmod /mlsdisk.ko disk_backing=$D disk_key=$KEY disk_mode=create
dmesg | tail -n +$((n0 + 1)) | grep -q "mlsdisk0: the backing device holds an mlsdisk: refusing 'create' (use 'force_create')" ||
	fail "no 'mlsdisk0: ... refusing create (use force_create)' in dmesg"
! grep -q '^mlsdisk ' /proc/modules || fail "module loaded after a refused disk_mode=create"
run insmod /mlsdisk.ko disk_backing=$D disk_key=$KEY disk_mode=force_create
[ -b /dev/mlsdisk0 ] || fail "/dev/mlsdisk0 missing after disk_mode=force_create"
run rmmod mlsdisk
# Leave the spare disk blank, as the other tests expect it.
run dd if=/dev/zero of=$D bs=1M count=$(($(disk_sectors $D) / 2048)) conv=fsync
