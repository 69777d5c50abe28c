# Keyring keys for the mlsdisk dm target (`:<size>:logon:<desc>` and
# `:<size>:user:<desc>`, read by the constructor with request_key): a 32-byte
# logon key and a user key with the same bytes go into the user keyring
# (@u, which request_key searches for a process without its own session
# keyring, as here); a disk created with the logon reference holds data
# whose checksum is kept; after remove it opens with the same key given as
# hex, again with the logon reference and with the user reference, and
# reads the same data each time. Refused: a missing description, keys of
# another size (both ways), a keyring key with other bytes (wrong key), a
# revoked key. `dmsetup table` shows the reference, never the key bytes;
# neither does the kernel log.
# shellcheck shell=sh
# shellcheck source=qemu/guest/lib.sh
. /mlsdisk/lib.sh

command -v keyctl >/dev/null || fail "keyctl is not in the guest image (qemu/build-initramfs.sh copies it from keyutils)"
load_module
sectors=$(disk_sectors "$DISK")
len=$((sectors / 2 / 8 * 8))
n0=$(dmesg | wc -l)

LOGON=mlsdisk:keyring-test
USER=mlsdisk-keyring-user
OTHER=mlsdisk:other-bytes
SHORT=mlsdisk:sixteen-bytes
REVOKED=mlsdisk:revoked
KEY2=ff0102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f
KEY128=00112233445566778899aabbccddeeff

# add_key TYPE DESC HEX: the key's id on stdout.
add_key() {
	id=$(keyctl add -x "$1" "$2" "$3" @u) || fail "keyctl add $1 $2 failed"
	echo "+ keyctl add -x $1 $2 <$((${#3} / 2)) bytes> @u = $id" >&2
	echo "$id"
}

# Leftovers of an earlier run (none in a fresh guest).
keyctl clear @u || fail "keyctl clear @u failed"
id_logon=$(add_key logon $LOGON $KEY)
id_user=$(add_key user $USER $KEY)
add_key logon $OTHER $KEY2 >/dev/null
add_key logon $SHORT $KEY128 >/dev/null
id_rev=$(add_key logon $REVOKED $KEY)
echo "+ keyctl show @u"
keyctl show @u | sed 's/^/    /'
# The user key reads back (user type), the logon key does not (logon keys
# are for the kernel only): both are the bytes given.
[ "$(keyctl pipe "$id_user" | xxd -p | tr -d '\n')" = "$KEY" ] || fail "the user key does not read back as the bytes added"
must_fail keyctl pipe "$id_logon"

# refused LABEL WANT TABLE: ctr fails, no device, WANT in the new dmesg lines.
refused() {
	echo "--- refused: $1"
	n1=$(dmesg | wc -l)
	must_fail dmsetup create mlsdisk_kr_bad --table "$3"
	! dm_exists mlsdisk_kr_bad || fail "$1: device left behind"
	new=$(dmesg | tail -n +$((n1 + 1)))
	echo "$new" | sed 's/^/    dmesg: /'
	echo "$new" | grep -q "mlsdisk: .*$2" || fail "$1: no 'mlsdisk: ...$2' in dmesg"
}

# read_sum: sha256 of the first 4 MiB of the mapped device.
read_sum() {
	dd if=/dev/mapper/mlsdisk_kr bs=1M count=4 iflag=direct 2>/dev/null | sha256sum | cut -d' ' -f1
}

# 1. Create with the logon reference; the table shows the reference only.
ref=":32:logon:$LOGON"
run dmsetup create mlsdisk_kr --table "0 $len mlsdisk $DISK $ref 1 force_create"
tbl=$(dmsetup table mlsdisk_kr) || fail "dmsetup table failed"
echo "+ dmsetup table: $tbl"
case "$tbl" in
*"$KEY"* | *"$(echo "$KEY" | tr a-f A-F)"*) fail "dmsetup table shows the key bytes" ;;
"0 $len mlsdisk "*" $ref 1 open") ;;
*) fail "dmsetup table does not show the keyring reference in the key's place: $tbl" ;;
esac
run dd if=/dev/urandom of=/tmp/kr.data bs=1M count=4
want=$(sha256sum </tmp/kr.data | cut -d' ' -f1)
run dd if=/tmp/kr.data of=/dev/mapper/mlsdisk_kr bs=1M oflag=direct conv=fsync
[ "$(read_sum)" = "$want" ] || fail "data read back differs before remove"
run dmsetup remove mlsdisk_kr

# 2. The same key as hex opens it: the keyring held exactly those bytes.
run dmsetup create mlsdisk_kr --table "0 $len mlsdisk $DISK $KEY"
[ "$(read_sum)" = "$want" ] || fail "data differs after re-open with the key as hex"
run dmsetup remove mlsdisk_kr

# 3. The logon reference again, then the user key with the same bytes.
run dmsetup create mlsdisk_kr --table "0 $len mlsdisk $DISK $ref"
[ "$(read_sum)" = "$want" ] || fail "data differs after re-open with $ref"
run dmsetup remove mlsdisk_kr
uref=":32:user:$USER"
run dmsetup create mlsdisk_kr --table "0 $len mlsdisk $DISK $uref"
tbl=$(dmsetup table mlsdisk_kr) || fail "dmsetup table failed"
echo "+ dmsetup table: $tbl"
case "$tbl" in
*"$KEY"*) fail "dmsetup table shows the key bytes (user key)" ;;
*" $uref"*) ;;
*) fail "dmsetup table does not show the user key reference: $tbl" ;;
esac
[ "$(read_sum)" = "$want" ] || fail "data differs after re-open with $uref"
run dmsetup remove mlsdisk_kr

# 4. Refused references.
refused "missing description" "keyring key ':32:logon:mlsdisk:no-such-key' not found" \
	"0 $len mlsdisk $DISK :32:logon:mlsdisk:no-such-key"
refused "missing user key" "keyring key ':32:user:$LOGON' not found" \
	"0 $len mlsdisk $DISK :32:user:$LOGON"
refused "16-byte key given as 32" "keyring key ':32:logon:$SHORT' not of the size given" \
	"0 $len mlsdisk $DISK :32:logon:$SHORT"
refused "32-byte key given as 16" "keyring key ':16:logon:$LOGON' not of the size given" \
	"0 $len mlsdisk $DISK :16:logon:$LOGON"
refused "keyring key with other bytes" "wrong key" \
	"0 $len mlsdisk $DISK :32:logon:$OTHER"
run keyctl revoke "$id_rev"
refused "revoked key" "keyring key ':32:logon:$REVOKED' revoked or expired" \
	"0 $len mlsdisk $DISK :32:logon:$REVOKED"

# 5. After all that the right reference still opens the same data.
run dmsetup create mlsdisk_kr --table "0 $len mlsdisk $DISK $ref"
[ "$(read_sum)" = "$want" ] || fail "data differs after the refused tables"
run dmsetup remove mlsdisk_kr

# 6. No key bytes in the kernel log.
if dmesg | tail -n +$((n0 + 1)) | grep -qi -e "$KEY" -e "$KEY2" -e "$KEY128"; then
	fail "a key appears in the kernel log"
fi
run keyctl clear @u
unload_module
