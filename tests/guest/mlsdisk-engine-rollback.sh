# Whole-image rollback without a trusted anchor (anchor=none, the only
# anchor in the kernel so far): the host puts back an older copy of the
# entire backing device. The disk cannot detect this without an anchor
# (docs/security.md, irreversibility) and must say so: it opens at the older
# synced state and its status says it is unprotected. Replaying an older
# copy of only the superblock blocks, with newer metadata elsewhere, is
# refused.
# shellcheck shell=sh
# shellcheck source=qemu/guest/lib.sh
. /mlsdisk/lib.sh

load_module
back=/dev/vda   # the 64 MiB spare disk: small enough to copy into memory
len=8192
dev=/dev/mapper/mlsdisk_r
run dmsetup create mlsdisk_r --table "0 $len mlsdisk $back $KEY 1 force_create"
printf 'version-one' | dd of=$dev bs=4096 seek=5 conv=sync,fsync 2>/dev/null || fail "write v1"
run dmsetup remove mlsdisk_r
run dd if=$back of=/tmp/image-v1 bs=1M
run dd if=$back of=/tmp/sb-v1 bs=4096 count=2

run dmsetup create mlsdisk_r --table "0 $len mlsdisk $back $KEY"
printf 'version-two' | dd of=$dev bs=4096 seek=5 conv=sync,fsync 2>/dev/null || fail "write v2"
s2=$(dmsetup status mlsdisk_r | sed -n 's/.* sync=\([0-9]*\).*/\1/p')
run dmsetup remove mlsdisk_r

# 1. Only the superblock slots put back (the rest is newer): refused, or
#    opened at the newest state; never the old data.
run dd if=/tmp/sb-v1 of=$back bs=4096 count=2 conv=notrunc,fsync
run blockdev --flushbufs $back
if dmsetup create mlsdisk_r --table "0 $len mlsdisk $back $KEY"; then
	got=$(dd if=$dev bs=4096 skip=5 count=1 iflag=direct 2>/dev/null | tr -d '\000')
	echo "  superblock replay opened; block 5 reads '$got'"
	[ "$got" = "version-one" ] && fail "an old superblock over newer metadata gave old data"
	run dmsetup remove mlsdisk_r
else
	echo "  superblock replay refused"
	dmesg | tail -n 5 | grep -q 'mlsdisk: cannot open the disk' || fail "the refusal is not named in dmesg"
fi

# 2. The whole image put back: opens at the older synced state (not
#    detectable without an anchor), and the status says unprotected.
run dd if=/tmp/image-v1 of=$back bs=1M conv=fsync
run blockdev --flushbufs $back
run dmsetup create mlsdisk_r --table "0 $len mlsdisk $back $KEY"
st=$(dmsetup status mlsdisk_r)
echo "+ dmsetup status: $st"
case "$st" in
*" anchor=none "*) ;;
*) fail "the status does not say the disk is unprotected: $st" ;;
esac
s1=$(echo "$st" | sed -n 's/.* sync=\([0-9]*\).*/\1/p')
got=$(dd if=$dev bs=4096 skip=5 count=1 iflag=direct 2>/dev/null | tr -d '\000')
echo "  rolled-back image: sync counter $s2 -> $s1, block 5 reads '$got'"
[ "$got" = "version-one" ] || fail "the rolled-back image did not open at its own synced state: '$got'"
[ "$s1" -lt "$s2" ] || fail "the sync counter did not go back with the image ($s2 -> $s1)"
run dmsetup remove mlsdisk_r
rm -f /tmp/image-v1 /tmp/sb-v1
# Leave the spare disk blank for the tests after this one.
run dd if=/dev/zero of=$back bs=1M count=8 conv=fsync
unload_module
