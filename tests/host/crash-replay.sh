#!/usr/bin/env bash
# Crash replay: a guest boot records every write the mlsdisk target makes
# to its backing device with dm-log-writes while ext4 runs a seeded
# workload on it (tests/guest/mlsdisk-crash-replay.sh); then, on the host,
# tools' mlsdisk-replay rebuilds the backing image at crash points of that
# log, at every flush/FUA/mark point and at random points with unflushed
# writes dropped and reordered, and checks each with the userspace engine
# (open, sync counter, every block reads), e2fsck -fn and the checksums of
# the fsynced files (debugfs). Then its --self-test: corrupted states
# (a flushed write dropped, a wrong checksum) must all be detected.
#
#   tests/host/crash-replay.sh          (make crash-replay)
#
# Env: REPLAY_SEED    seed of the workload and of the states (default: a
#                     fresh one, printed; the block-level log still differs
#                     run to run: replay one log with the printed command)
#      REPLAY_STATES  crash states to check (default 200; more: long mode)
#      REPLAY_OPS     workload operations (default 300)
#      REPLAY_DIR     work directory (default build/crash-replay)
# Prints PASS/FAIL lines and "N passed, N failed".
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
# shellcheck source=scripts/env.sh
. "$root/scripts/env.sh"
work="${REPLAY_DIR:-$root/build/crash-replay}"
seed=${REPLAY_SEED:-$(od -An -N4 -tu4 /dev/urandom | tr -d ' ')}
states=${REPLAY_STATES:-200}
ops=${REPLAY_OPS:-300}
for v in seed states ops; do
	[[ "${!v}" =~ ^[0-9]+$ ]] || {
		echo "crash-replay: REPLAY_${v^^} must be a non-negative integer, not '${!v}'" >&2
		exit 2
	}
done

passed=0
failed=0
pass() {
	echo "PASS $*"
	passed=$((passed + 1))
}
failure() {
	echo "FAIL $*"
	failed=$((failed + 1))
}
finish() {
	echo "crash replay took $((SECONDS - t0))s; logs in $work"
	echo "$passed passed, $failed failed"
	((failed == 0 && passed > 0))
	exit
}

t0=$SECONDS
echo "crash-replay: seed $seed, $ops operations, $states states (replay: REPLAY_SEED=$seed make crash-replay)"
[[ -f "$root/linux/mlsdisk.ko" ]] || {
	failure crash-replay "no linux/mlsdisk.ko (run make module)"
	finish
}
command -v e2fsck >/dev/null && command -v debugfs >/dev/null || {
	failure crash-replay "e2fsck and debugfs are needed on the host (e2fsprogs; make toolchain)"
	finish
}
rm -rf "$work"
mkdir -p "$work"
cargo build -q --release --manifest-path "$root/Cargo.toml" -p mlsdisk-tools --bin mlsdisk-replay
tool="$root/target/release/mlsdisk-replay"

# 1. The guest: the workload over dm-log-writes.
t1=$SECONDS
rc=0
"$root/qemu/run-guest.sh" --tests mlsdisk-crash-replay --run-dir "$work/guest" \
	--guest-env "REPLAY_SEED=$seed REPLAY_OPS=$ops" --timeout 900 >"$work/guest.out" 2>&1 || rc=$?
guest_s=$((SECONDS - t1))
if ((rc != 0)) || ! grep -q '^PASS mlsdisk-crash-replay' "$work/guest.out"; then
	failure "crash-replay-guest the guest workload failed or was skipped (rc $rc): $(grep -E '^(FAIL|SKIP) |\[judge\]|ERROR' "$work/guest.out" | head -n 3 | tr '\n' ' ')"
	finish
fi
sed -n 's/^  | REPLAY //p' "$work/guest/console.txt" >"$work/manifest"
marks=$(grep -c '^mark ' "$work/manifest" || true)
pass "crash-replay-guest $ops operations, $marks marks logged, e2fsck -fn clean in the guest (${guest_s}s)"

# 2. The host: replay the crash states.
cmd=("$tool" --image "$work/guest/disk.img" --manifest "$work/manifest" --seed "$seed" --states "$states" --work "$work/states")
echo "crash-replay: ${cmd[*]}"
t1=$SECONDS
rc=0
"${cmd[@]}" | tee "$work/replay.out" || rc=$?
summary=$(grep '^mlsdisk-replay: [0-9]* crash states' "$work/replay.out" | sed 's/^mlsdisk-replay: //' || true)
if ((rc == 0)); then
	pass "crash-replay $summary ($((SECONDS - t1))s)"
else
	failure "crash-replay ${summary:-the replay stopped (rc $rc), see $work/replay.out}"
fi

# 3. The checks can fail: corrupted states must be caught.
t1=$SECONDS
rc=0
"$tool" --image "$work/guest/disk.img" --manifest "$work/manifest" --self-test --work "$work/self-test" |
	tee "$work/self-test.out" || rc=$?
line=$(grep 'self-test: [0-9]* of' "$work/self-test.out" | sed 's/^mlsdisk-replay: //' || true)
if ((rc == 0)); then
	pass "crash-replay-self-test $line ($((SECONDS - t1))s)"
else
	failure "crash-replay-self-test ${line:-stopped (rc $rc)}"
fi
finish
