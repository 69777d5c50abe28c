# Guest-side runner: runs each test in /mlsdisk/tests (or the demo), prints
#   PASS <name>
#   FAIL <name> <reason>
#   SKIP <name> <why>    (neither passed nor failed: a test whose header
#                         has "# needs: kmemleak=on" in a boot without it,
#                         or "# needs: dm-target=NAME" in a kernel whose
#                         device mapper lacks that target, or "# needs:
#                         named" when TESTS does not name it)
# then the kernel log between markers, then the final line
#   <N> passed, <N> failed
# which the host (qemu/run-guest.sh) parses.
# shellcheck shell=sh
MODE="test"
TESTS=
TEST_TIMEOUT=600
# shellcheck source=/dev/null
[ -f /mlsdisk/run.conf ] && . /mlsdisk/run.conf

passed=0
failed=0

pass() {
	echo "PASS $1"
	passed=$((passed + 1))
}
failure() {
	echo "FAIL $1 $2"
	failed=$((failed + 1))
}

# Remove leftovers of a test so the next one starts clean; report them.
cleanup_after() {
	left=""
	# shellcheck disable=SC2013  # mount points under /mnt have no spaces
	for m in $(awk '$2 ~ "^/mnt/" {print $2}' /proc/mounts); do
		left="$left mount:$m"
		umount "$m" 2>/dev/null || umount -l "$m" 2>/dev/null
	done
	for d in $(dmsetup ls 2>/dev/null | awk '$1 != "No" {print $1}'); do
		left="$left dm:$d"
		dmsetup remove --force "$d" >/dev/null 2>&1
	done
	echo "$left"
}

# Bits of /proc/sys/kernel/tainted that mean the kernel warned or oopsed:
# 7 (D, died/oops), 9 (W, warning), 5 (B, bad page), 14 (L, soft lockup).
taint_bad() {
	t=$(cat /proc/sys/kernel/tainted 2>/dev/null || echo 0)
	echo $((t & ((1 << 5) | (1 << 7) | (1 << 9) | (1 << 14))))
}

run_one() {
	file=$1
	name=$(basename "$file" .sh)
	echo "=== test $name"
	rm -f /tmp/reason
	before=$(taint_bad)
	rm -f /tmp/rc
	{
		REASON_FILE=/tmp/reason timeout "$TEST_TIMEOUT" sh -eu "$file"
		echo $? >/tmp/rc
	} 2>&1 | sed 's/^/  | /'
	rc=$(cat /tmp/rc 2>/dev/null || echo 1)
	left=$(cleanup_after)
	after=$(taint_bad)
	if [ "$rc" -eq 0 ] && [ -z "$left" ] && [ "$after" = "$before" ]; then
		pass "$name"
	elif [ "$rc" -ne 0 ]; then
		if [ -s /tmp/reason ]; then
			failure "$name" "$(head -n 1 /tmp/reason)"
		elif [ "$rc" -eq 124 ] || [ "$rc" -eq 143 ]; then
			failure "$name" "timed out after ${TEST_TIMEOUT}s"
		else
			failure "$name" "exited with status $rc (see the lines above)"
		fi
	elif [ -n "$left" ]; then
		failure "$name" "left behind:$left"
	else
		failure "$name" "kernel taint changed from $before to $after (warning or oops, see dmesg)"
	fi
}

case "$MODE" in
test)
	for f in /mlsdisk/tests/*.sh; do
		[ -f "$f" ] || continue
		n=$(basename "$f" .sh)
		if [ -n "$TESTS" ]; then
			case " $TESTS " in
			*" $n "*) ;;
			*) continue ;;
			esac
		fi
		if grep -q '^# needs: kmemleak=on' "$f" && ! grep -qw 'kmemleak=on' /proc/cmdline; then
			echo "SKIP $n needs a boot with kmemleak=on (make guest-test-kmemleak)"
			continue
		fi
		if grep -q '^# needs: named' "$f" && [ -z "$TESTS" ]; then
			echo "SKIP $n runs only when named (qemu/run-guest.sh --tests $n)"
			continue
		fi
		want=$(sed -n 's/^# needs: dm-target=\([a-z0-9_-]*\)$/\1/p' "$f" | head -n 1)
		if [ -n "$want" ] && ! dmsetup targets 2>/dev/null | grep -q "^$want "; then
			echo "SKIP $n needs the dm target $want (not in this kernel: qemu/kernel.config, make kernel)"
			continue
		fi
		run_one "$f"
	done
	;;
demo)
	run_one /mlsdisk/demo.sh
	;;
*)
	failure runner "unknown MODE=$MODE in /mlsdisk/run.conf"
	;;
esac
if [ $((passed + failed)) -eq 0 ]; then
	failure runner "no test ran (TESTS='$TESTS')"
fi

# The debug kernel's checkers (make test-debug, qemu/kernel-debug.config):
# their state after the tests, so the host's judge can require that they
# were on and stayed on (lockdep switches itself off after its first report).
# A kernel without them prints none of these lines.
if [ -r /proc/lockdep_stats ]; then
	echo "debug-state: lockdep debug_locks=$(awk '$1 == "debug_locks:" {print $2}' /proc/lockdep_stats)"
fi
if [ -r /sys/kernel/debug/debug_objects/stats ]; then
	echo "debug-state: odebug warnings=$(awk -F: '$1 ~ /^warnings/ {gsub(/ /, "", $2); print $2}' /sys/kernel/debug/debug_objects/stats)"
fi
slab=/sys/kernel/slab/kmalloc-64
if [ -r "$slab/red_zone" ]; then
	echo "debug-state: slub kmalloc-64 sanity_checks=$(cat "$slab/sanity_checks") red_zone=$(cat "$slab/red_zone") poison=$(cat "$slab/poison") store_user=$(cat "$slab/store_user")"
fi
if dmesg | grep -q 'KernelAddressSanitizer initialized'; then
	echo "debug-state: kasan $(dmesg | sed -n 's/.*KernelAddressSanitizer initialized (\([^)]*\)).*/\1/p' | head -n 1)"
fi

echo "=== dmesg begin"
dmesg
echo "=== dmesg end"
echo "$passed passed, $failed failed"
