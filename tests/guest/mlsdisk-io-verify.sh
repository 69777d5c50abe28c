# The target's bio path under load, verified by fio: random writes of
# 4 KiB to 2 MiB (multi-page bios, bios split at the target's max_io_len,
# several in flight), direct and buffered, each block's checksum read back;
# then discards of random ranges; then all of it again after remove +
# open (the data is on the backing device, not in a cache of the target).
# shellcheck shell=sh
# shellcheck source=qemu/guest/lib.sh
. /mlsdisk/lib.sh

load_module
sectors=$(disk_sectors "$DISK")
len=$((sectors / 2 / 8 * 8))
name=mlsdisk_io
dev=/dev/mapper/$name
run dmsetup create $name --table "0 $len mlsdisk $DISK $KEY 1 force_create"

# Direct, several in flight (io_uring), sizes 4 KiB .. 2 MiB, verified
# after each write phase; a second pass with buffered I/O.
run fio --name=direct --filename=$dev --direct=1 --ioengine=io_uring --iodepth=8 \
	--rw=randwrite --bsrange=4k-2m --size=48m --verify=crc32c --verify_fatal=1 \
	--do_verify=1 --randseed=1234 --output-format=terse --minimal >/tmp/fio1.txt
run fio --name=buffered --filename=$dev --offset=64m --direct=0 --ioengine=psync \
	--rw=randwrite --bsrange=4k-256k --size=32m --verify=md5 --verify_fatal=1 \
	--do_verify=1 --randseed=99 --fsync=16 --output-format=terse --minimal >/tmp/fio2.txt

# Discards of random ranges reach the target and complete without error.
run fio --name=trim --filename=$dev --offset=128m --direct=1 --ioengine=psync \
	--rw=randtrim --bsrange=4k-1m --size=16m --output-format=terse --minimal >/tmp/fio3.txt

st=$(dmsetup status $name)
echo "+ dmsetup status: $st"
case "$st" in
*" errors=0"*) ;;
*) fail "the target ended bios with errors: $st" ;;
esac
case "$st" in
*" discards=0 "*) fail "no discard reached the target: $st" ;;
esac

# The same data after remove + create: verify only (fio --verify_only).
run dmsetup remove $name
run dmsetup create $name --table "0 $len mlsdisk $DISK $KEY"
run fio --name=direct --filename=$dev --direct=1 --ioengine=io_uring --iodepth=8 \
	--rw=randwrite --bsrange=4k-2m --size=48m --verify=crc32c --verify_fatal=1 \
	--verify_only=1 --randseed=1234 --output-format=terse --minimal >/tmp/fio4.txt
run dmsetup remove $name
unload_module
