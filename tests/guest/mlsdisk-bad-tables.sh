# Bad table lines for the mlsdisk target: each must be refused, leave no
# device behind, and explain itself in the kernel log.
# shellcheck shell=sh
# shellcheck source=qemu/guest/lib.sh
. /mlsdisk/lib.sh

load_module
sectors=$(disk_sectors "$DISK")
len=$((sectors / 2 / 8 * 8))

# bad_table LABEL TABLE
bad_table() {
	label=$1
	table=$2
	echo "--- case: $label"
	n0=$(dmesg | wc -l)
	must_fail dmsetup create mlsdisk_bad --table "$table"
	if dm_exists mlsdisk_bad; then
		fail "$label: mlsdisk_bad left behind after a refused table"
	fi
	for node in /dev/mapper/*; do
		[ "$node" = /dev/mapper/control ] || fail "$label: $node left behind in /dev/mapper"
	done
	new=$(dmesg | tail -n +$((n0 + 1)) | grep -i mlsdisk || true)
	[ -n "$new" ] || fail "$label: no mlsdisk error in the kernel log"
	echo "$new" | sed 's/^/    dmesg: /'
	case "$new" in
	*"Unknown error"*) fail "$label: the target set no error message (dmesg says 'Unknown error')" ;;
	esac
	case "$new" in
	*"$KEY"*) fail "$label: the key appears in the kernel log" ;;
	esac
}

bad_table "no arguments" "0 $len mlsdisk"
bad_table "missing key" "0 $len mlsdisk $DISK"
bad_table "unknown device" "0 $len mlsdisk /dev/nonexistent $KEY"
bad_table "malformed key (not hex)" "0 $len mlsdisk $DISK zz0102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f"
bad_table "malformed key (bad length)" "0 $len mlsdisk $DISK 0001020304"
bad_table "length beyond the device" "0 $((sectors + 8)) mlsdisk $DISK $KEY"
bad_table "unknown option" "0 $len mlsdisk $DISK $KEY 1 no_such_option"
bad_table "option count beyond the arguments" "0 $len mlsdisk $DISK $KEY 3 a"
bad_table "cache budget below the minimum" "0 $len mlsdisk $DISK $KEY 2 force_create cache_mib=3"
bad_table "cache budget not a number" "0 $len mlsdisk $DISK $KEY 2 force_create cache_mib=8M"

# The target still works after all that, with a cache budget given; the
# table shows the budget (and 'open' in place of 'force_create').
run dmsetup create mlsdisk_ok --table "0 $len mlsdisk $DISK $KEY 2 force_create cache_mib=8"
line=$(dmsetup table mlsdisk_ok) || fail "dmsetup table failed"
echo "    table: $line"
case "$line" in
*" 2 open cache_mib=8") ;;
*) fail "the table line does not end in '2 open cache_mib=8': $line" ;;
esac
run dmsetup remove mlsdisk_ok
unload_module
