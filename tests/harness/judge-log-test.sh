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

# The debug kernel's reports (make test-debug). The first line of each real
# report, as the kernel prints it, then the distinctive line alone: each
# pattern must catch its report even without a BUG:/WARNING: line next to it.
# debug NAME LINE: a log that passed every test but has LINE in its dmesg.
debug() {
	expect "$1" 1 0 <<EOF2
$boot
PASS a
=== dmesg begin
[    3.2] $2
=== dmesg end
1 passed, 0 failed
EOF2
}
debug lockdep-circular 'WARNING: possible circular locking dependency detected'
debug lockdep-circular-bare 'possible circular locking dependency detected'
debug lockdep-inconsistent 'WARNING: inconsistent lock state'
debug lockdep-inconsistent-bare 'inconsistent lock state'
debug lockdep-recursive-bare 'possible recursive locking detected'
debug lockdep-off 'turning off the locking correctness validator.'
debug lockdep-taint-off 'Disabling lock debugging due to kernel taint'
debug lockdep-warn-on 'DEBUG_LOCKS_WARN_ON(1)'
debug rcu-bare 'suspicious RCU usage'
debug atomic-sleep 'BUG: sleeping function called from invalid context at mm/slub.c:4217'
debug atomic-sleep-bare 'sleeping function called from invalid context at kernel/locking/mutex.c:580'
debug kasan 'BUG: KASAN: slab-out-of-bounds in mlsdisk_main+0x12/0x40 [mlsdisk]'
debug kasan-bare 'KASAN: use-after-free in kfree+0x10/0x20'
debug odebug 'ODEBUG: free active (active state 0) object: 00000000deadbeef object type: work_struct hint: 0x0'
debug slub-bug 'BUG kmalloc-64 (Tainted: G           O       ): Right Redzone overwritten'
debug slub-bug-cache 'BUG dm_bufio_buffer (Not tainted): Object already free'
debug slub-redzone 'INFO: 0x00000000aa-0x00000000bb @offset=72. First byte 0x0 instead of 0xcc; Redzone overwritten'
debug slub-poison 'Poison overwritten'
debug slub-padding 'Padding overwritten. 0x0000000012345678-0x0000000012345680 @offset=4000'
debug slub-freepointer 'Freepointer corrupt'

# JUDGE_REQUIRE: every regex must match a line (the debug run requires the
# checkers' "debug-state:" lines). require NAME WANT REGEXES <<< LOG
require() {
	local name=$1 want=$2 got=0
	cat >"$tmp/$name.txt"
	JUDGE_REQUIRE="$3" "$judge" "$tmp/$name.txt" 0 60 >"$tmp/$name.out" 2>&1 || got=$?
	if [[ "$got" -ne "$want" ]]; then
		echo "FAIL judge-log: case '$name' exited $got, expected $want:"
		sed 's/^/    /' "$tmp/$name.out"
		failures=$((failures + 1))
	else
		echo "ok   judge-log: $name"
	fi
}
want_debug='^debug-state: lockdep debug_locks=1$
^debug-state: odebug warnings=0$'
require debug-state-ok 0 "$want_debug" <<EOF2
$boot
PASS a
debug-state: lockdep debug_locks=1
debug-state: odebug warnings=0
1 passed, 0 failed
EOF2
require debug-state-lockdep-off 1 "$want_debug" <<EOF2
$boot
PASS a
debug-state: lockdep debug_locks=0
debug-state: odebug warnings=0
1 passed, 0 failed
EOF2
require debug-state-odebug-warned 1 "$want_debug" <<EOF2
$boot
PASS a
debug-state: lockdep debug_locks=1
debug-state: odebug warnings=2
1 passed, 0 failed
EOF2
require debug-state-missing 1 "$want_debug" <<EOF2
$boot
PASS a
1 passed, 0 failed
EOF2

if ((failures)); then
	echo "judge-log self-test: $failures case(s) wrong"
	exit 1
fi
echo "judge-log self-test: all cases ok"
