# The rollback anchor on a second block device (anchor=dev:<device>,
# docs/security.md, irreversibility). The disk lives on the 64 MiB spare disk vda
# (small enough to copy into memory); the anchor on the first 8 KiB of the
# test disk vdb, which stands in for a device the host cannot roll back.
#
# 1. A whole-image rollback of the backing device, with the anchor intact,
#    fails the constructor ("older than its rollback anchor"); the current
#    image put back opens with its data.
# 2. A tampered anchor, another disk's anchor, a non-anchor device, the
#    backing device as anchor, a too-small or missing anchor device and an
#    unknown anchor kind each fail with their own message.
# 3. A blank anchor device starts an anchor for an existing disk (trusted
#    on first use: the status says anchor=dev-tofu until the first sync
#    the anchor stores); anchor=none still opens and says the disk is
#    unprotected.
# shellcheck shell=sh
# shellcheck source=qemu/guest/lib.sh
. /mlsdisk/lib.sh

load_module
back=/dev/vda
anc=$DISK
len=8192
dev=/dev/mapper/mlsdisk_a
A1="2 force_create anchor=dev:$anc"
A="1 anchor=dev:$anc"

# refused LABEL WANT TABLE: dmsetup create fails, leaves nothing behind,
# and the kernel log names WANT.
refused() {
	n1=$(dmesg | wc -l)
	must_fail dmsetup create mlsdisk_bad --table "$3"
	! dm_exists mlsdisk_bad || fail "$1: device left behind"
	new=$(dmesg | tail -n +$((n1 + 1)))
	echo "$new" | sed 's/^/    dmesg: /'
	echo "$new" | grep -q "mlsdisk: .*$2" || fail "$1: no 'mlsdisk: ...$2' in dmesg"
}

# put FILE DEVICE: writes an image back onto a device, past any cache.
put() {
	run dd if="$1" of="$2" bs=1M conv=fsync 2>/dev/null
	run blockdev --flushbufs "$2"
}

write_block5() {
	printf '%s' "$1" | dd of=$dev bs=4096 seek=5 conv=sync,fsync 2>/dev/null || fail "write $1"
}

block5() {
	dd if=$dev bs=4096 skip=5 count=1 iflag=direct 2>/dev/null | tr -d '\000'
}

status_has_anchor() {
	st=$(dmsetup status mlsdisk_a)
	echo "+ dmsetup status: $st"
	case "$st" in
	*" anchor=none "*) fail "status says anchor=none with an anchor: $st" ;;
	*" anchor=dev "*) ;;
	*) fail "status does not name the anchor (or says tofu): $st" ;;
	esac
}

status_has_anchor_tofu() {
	st=$(dmsetup status mlsdisk_a)
	echo "+ dmsetup status: $st"
	case "$st" in
	*" anchor=none "*) fail "status says anchor=none with an anchor: $st" ;;
	*" anchor=dev-tofu "*) ;;
	*) fail "status does not say the image was trusted on first use: $st" ;;
	esac
}

run dd if=/dev/zero of=$anc bs=4096 count=2 conv=fsync 2>/dev/null
run dmsetup create mlsdisk_a --table "0 $len mlsdisk $back $KEY $A1"
status_has_anchor
tbl=$(dmsetup table mlsdisk_a)
case "$tbl" in
*" - 2 open anchor=dev:$anc") ;;
*) fail "dmsetup table does not show the anchor (or reformats on reload): $tbl" ;;
esac
write_block5 version-one
run dmsetup remove mlsdisk_a
run dd if=$back of=/tmp/image-v1 bs=1M 2>/dev/null

for v in two three; do
	run dmsetup create mlsdisk_a --table "0 $len mlsdisk $back $KEY $A"
	write_block5 "version-$v"
	run dmsetup message mlsdisk_a 0 sync
	run dmsetup remove mlsdisk_a
done
run dd if=$back of=/tmp/image-v3 bs=1M 2>/dev/null
run dd if=$anc of=/tmp/anchor-3 bs=4096 count=2 iflag=direct 2>/dev/null

# 1. The whole backing device rolled back; the anchor is intact.
put /tmp/image-v1 $back
refused "whole-image rollback" "older than its rollback anchor" "0 $len mlsdisk $back $KEY $A"
# ... and the same image with anchor=none opens (what the anchor adds).
run dmsetup create mlsdisk_a --table "0 $len mlsdisk $back $KEY 1 anchor=none"
st=$(dmsetup status mlsdisk_a)
case "$st" in
*" anchor=none "*) ;;
*) fail "the status does not say anchor=none (unprotected): $st" ;;
esac
[ "$(block5)" = "version-one" ] || fail "the old image without anchor did not read as itself"
# No sync reached the anchor: removing syncs the old image, which must not
# lower the anchor (the anchor device is unchanged).
run dmsetup remove mlsdisk_a
run dd if=$anc of=/tmp/anchor-now bs=4096 count=2 iflag=direct 2>/dev/null
cmp -s /tmp/anchor-3 /tmp/anchor-now || fail "a disk without anchor wrote the anchor device"

# The current image put back opens, with its newest data.
put /tmp/image-v3 $back
run dmsetup create mlsdisk_a --table "0 $len mlsdisk $back $KEY $A"
status_has_anchor
got=$(block5)
[ "$got" = "version-three" ] || fail "the current image reads '$got'"
run dmsetup remove mlsdisk_a
run dd if=$anc of=/tmp/anchor-good bs=4096 count=2 iflag=direct 2>/dev/null
cmp -s /tmp/anchor-3 /tmp/anchor-good && fail "the anchor did not advance at the sync of removal"

# 2. The anchor device tampered with: 16 random bytes in the payload area
#    of both slots (header is 128 bytes).
for slot in 0 1; do
	run dd if=/dev/urandom of=$anc bs=1 seek=$((slot * 4096 + 300)) count=16 conv=notrunc 2>/dev/null
done
run blockdev --flushbufs $anc
refused "tampered anchor" "anchor device fails authentication" "0 $len mlsdisk $back $KEY $A"
put /tmp/anchor-good $anc
run dmsetup create mlsdisk_a --table "0 $len mlsdisk $back $KEY $A"
run dmsetup remove mlsdisk_a
# The pair as it is now: the current image and its anchor.
run dd if=$anc of=/tmp/anchor-good bs=4096 count=2 iflag=direct 2>/dev/null
run dd if=$back of=/tmp/image-v3 bs=1M 2>/dev/null

# Not an anchor at all (but not blank either).
run dd if=/dev/urandom of=$anc bs=4096 count=2 conv=fsync 2>/dev/null
refused "not an anchor" "holds no anchor and is not blank" "0 $len mlsdisk $back $KEY $A"

# Another disk's anchor: a second disk created on the same devices, then
# the first disk's image put back with the second disk's anchor.
run dmsetup create mlsdisk_a --table "0 $len mlsdisk $back $KEY $A1"
run dmsetup remove mlsdisk_a
put /tmp/image-v3 $back
refused "another disk's anchor" "another disk's anchor" "0 $len mlsdisk $back $KEY $A"

# The backing device as its own anchor, a missing device, a too-small
# device (a 4 KiB dm-linear slice), an unknown kind.
put /tmp/anchor-good $anc
refused "anchor on the backing device" "must not be the backing device" \
	"0 $len mlsdisk $back $KEY 1 anchor=dev:$back"
refused "missing anchor device" "cannot open the anchor device" \
	"0 $len mlsdisk $back $KEY 1 anchor=dev:/dev/nonexistent"
run dmsetup create mlsdisk_tiny --table "0 8 linear $anc 64"
refused "too small anchor device" "anchor device is too small" \
	"0 $len mlsdisk $back $KEY 1 anchor=dev:/dev/mapper/mlsdisk_tiny"
run dmsetup remove mlsdisk_tiny
refused "unknown anchor kind" "unknown anchor" "0 $len mlsdisk $back $KEY 1 anchor=tpm"
# None of the refusals changed the anchor: the disk still opens.
run dmsetup create mlsdisk_a --table "0 $len mlsdisk $back $KEY $A"
[ "$(block5)" = "version-three" ] || fail "the disk does not open after the refusals"
run dmsetup remove mlsdisk_a

# 3. A blank anchor device takes up an existing disk (major:minor form),
#    and from then on protects it.
run dd if=/dev/zero of=$anc bs=4096 count=2 conv=fsync 2>/dev/null
mm=$(cat "/sys/class/block/${anc#/dev/}/dev") || fail "no major:minor for $anc"
run dmsetup create mlsdisk_a --table "0 $len mlsdisk $back $KEY 1 anchor=dev:$mm"
status_has_anchor_tofu
write_block5 version-four
run dmsetup message mlsdisk_a 0 sync
status_has_anchor
run dmsetup remove mlsdisk_a
n=$(dd if=$anc bs=4096 count=2 iflag=direct 2>/dev/null | tr -d '\000' | wc -c)
[ "$n" -gt 0 ] || fail "the blank anchor was not started"
put /tmp/image-v3 $back
refused "rollback after taking up" "older than its rollback anchor" \
	"0 $len mlsdisk $back $KEY 1 anchor=dev:$mm"

rm -f /tmp/image-v1 /tmp/image-v3 /tmp/anchor-3 /tmp/anchor-now /tmp/anchor-good
# Leave both disks blank for the tests after this one.
run dd if=/dev/zero of=$back bs=1M count=8 conv=fsync 2>/dev/null
run dd if=/dev/zero of=$anc bs=4096 count=2 conv=fsync 2>/dev/null
unload_module
