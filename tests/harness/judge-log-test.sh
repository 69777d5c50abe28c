#!/usr/bin/env bash
# Self-test of qemu/judge-log.sh: it must accept a clean log and reject every
# kind of bad one. Runs on the host in a fraction of a second.
set -euo pipefail

judge="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)/qemu/judge-log.sh"
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
failures=0

boot='[    0.000000] Command line: console=ttyS0 panic=-1 loglevel=4
mlsdisk-guest: kernel 7.3.4, 2 CPUs'
# expect NAME WANT_STATUS QEMU_STATUS <<< LOG
expect() {
	local name=$1 want=$2 qrc=$3 got=0
	cat >"$tmp/$name.txt"
	"$judge" "$tmp/$name.txt" "$qrc" 60 >"$tmp/$name.out" 2>&1 || got=$?
	if [[ "$got" -ne "$want" ]]; then
		echo "FAIL judge-log: case '$name' exited $got, expected $want:"
		sed 's/^/    /' "$tmp/$name.out"
		failures=$((failures + 1))
	else
		echo "ok   judge-log: $name"
	fi
}

expect clean 0 0 <<EOF2
$boot
PASS a
PASS b
=== dmesg begin
[    1.0] device-mapper: ioctl: 4.50.0-ioctl initialised
=== dmesg end
2 passed, 0 failed
EOF2
expect failed-test 1 0 <<EOF2
$boot
PASS a
FAIL b checksums differ
1 passed, 1 failed
EOF2
expect fail-line-but-zero-count 1 0 <<EOF2
$boot
FAIL b checksums differ
PASS a
1 passed, 0 failed
EOF2
expect no-final-line 1 0 <<EOF2
$boot
PASS a
EOF2
expect nothing-ran 1 0 <<EOF2
$boot
0 passed, 0 failed
EOF2
expect warning 1 0 <<EOF2
$boot
PASS a
[    2.1] WARNING: CPU: 1 PID: 77 at mm/slub.c:123 foo+0x1/0x2
1 passed, 0 failed
EOF2
expect bug 1 0 <<EOF2
$boot
[    2.1] BUG: kernel NULL pointer dereference, address: 0000000000000000
1 passed, 0 failed
EOF2
expect oops 1 0 <<EOF2
$boot
[    2.1] Oops: general protection fault: 0000 [#1] SMP
1 passed, 0 failed
EOF2
expect call-trace 1 0 <<EOF2
$boot
[    2.1] Call Trace:
1 passed, 0 failed
EOF2
expect panic 1 0 <<EOF2
$boot
[    2.1] Kernel panic - not syncing: Fatal exception
EOF2
expect rust-panic 1 0 <<EOF2
$boot
[    2.1] rust_kernel: panicked at core/src/x.rs:1:1
1 passed, 0 failed
EOF2
expect timeout 1 124 <<EOF2
$boot
PASS a
1 passed, 0 failed
EOF2
expect qemu-error 1 1 <<EOF2
$boot
1 passed, 0 failed
EOF2

if ((failures)); then
	echo "judge-log self-test: $failures case(s) wrong"
	exit 1
fi
echo "judge-log self-test: all cases ok"
