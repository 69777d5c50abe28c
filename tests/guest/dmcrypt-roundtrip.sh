# Baseline: the e2e file system flow on a dm-crypt target (aes-xts-plain64)
# over the test disk. Proves the harness and gives the benchmarks their baseline.
# shellcheck shell=sh
# shellcheck source=qemu/guest/lib.sh
. /mlsdisk/lib.sh

[ -b "$DISK" ] || fail "$DISK is not a block device"
sectors=$(disk_sectors "$DISK")
fs_roundtrip crypt_test "0 $sectors crypt aes-xts-plain64 $XTS_KEY 0 $DISK 0"
