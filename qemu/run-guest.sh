#!/usr/bin/env bash
# Boot the MlsDisk test guest under QEMU and judge the result.
#
#   qemu/run-guest.sh [--mode test|demo] [--module PATH|--no-module]
#                     [--tests "name ..."] [--kvm] [--timeout SECONDS]
#                     [--disk-size SIZE] [--run-dir DIR]
#                     [--throttle IOPS:BYTES_PER_S] [--bench-env "K=V ..."]
#                     [--disk-image FILE] [--guest-script FILE]
#                     [--kmemleak on|off] [--guest-env "K=V ..."]
#
# --disk-image uses an existing FILE as the test disk vdb (kept, not
# recreated: tests/host/powercut.sh boots one image several times);
# --guest-script runs only FILE as the guest's one test instead of
# tests/guest/*.sh. QEMU's pid is in <run-dir>/qemu.pid while it runs.
# --kmemleak on boots with kmemleak=on (the kernel has kmemleak built in
# but off by default; MLSDISK_KMEMLEAK=on sets the default), for the tests
# marked "# needs: kmemleak=on" (make guest-test-kmemleak); the guest runner
# reports those as SKIP in a boot without it.
# --guest-env exports REPLAY_* variables to the guest tests (e.g.
# REPLAY_SEED for tests/guest/mlsdisk-crash-replay.sh).
#
# MLSDISK_KERNEL_VARIANT=debug boots the debug kernel (scripts/env.sh,
# qemu/kernel-debug.config: lockdep, KASAN, ...) with the module built for it
# (build/module-debug/linux/mlsdisk.ko), a larger kernel log buffer, 2 GiB
# (MLSDISK_GUEST_MEM) and every timeout, QEMU's and each test's, multiplied
# by MLSDISK_TIMEOUT_SCALE (default 1, debug 4; also exported to the tests
# as TIMEOUT_SCALE). The judge then also requires the checkers' end state
# (the runner's "debug-state:" lines): on, and never switched off.
#
# demo mode runs qemu/guest/demo.sh, the fio benchmark (BENCH_* variables
# from --bench-env, see demo.sh); scripts/guest-bench.sh drives it per
# device model and makes the tables. --throttle puts QEMU's I/O throttling
# on the test disk (a per-request and a per-byte limit: an SSD model).
#
# The guest gets the cached base initramfs plus a small per-run cpio with
# /init, the guest runner, the tests (tests/guest/*.sh), mlsdisk.ko and the
# mlsdisk CLI as /usr/sbin/mlsdisk (built here with cargo; MLSDISK_CLI=PATH
# takes a prebuilt one instead).
# Disks are fresh sparse files per run: vda (spare, 64 MiB) and vdb (the
# test disk). The serial console goes to <run-dir>/console.log.
# Exit status 0 only when the guest printed its final "N passed, 0 failed"
# line, no test failed, and the kernel log shows no BUG/WARNING/Oops/panic/
# Call Trace.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=scripts/env.sh
. "$here/../scripts/env.sh"

die() {
	printf '[guest] ERROR: %s\n' "$*" >&2
	exit 2
}
usage() {
	sed -n '2,42p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'
	exit 2
}

mode="test"
module=""
no_module=0
tests=""
accel="${MLSDISK_ACCEL:-tcg}"
timeout_s=""
disk_size=1G
run_dir=""
throttle=""
bench_env=""
disk_image=""
guest_script=""
kmemleak=""
guest_env=""
while (($#)); do
	case "$1" in
	--mode) mode="${2:?}"; shift 2 ;;
	--module) module="${2:?}"; shift 2 ;;
	--no-module) no_module=1; shift ;;
	--tests) tests="${2:?}"; shift 2 ;;
	--kvm) accel=kvm; shift ;;
	--tcg) accel=tcg; shift ;;
	--timeout) timeout_s="${2:?}"; shift 2 ;;
	--disk-size) disk_size="${2:?}"; shift 2 ;;
	--run-dir) run_dir="${2:?}"; shift 2 ;;
	--throttle) throttle="${2:?}"; shift 2 ;;
	--bench-env) bench_env="${2?}"; shift 2 ;;
	--disk-image) disk_image="${2:?}"; shift 2 ;;
	--guest-script) guest_script="${2:?}"; shift 2 ;;
	--kmemleak) kmemleak="${2:?}"; shift 2 ;;
	--guest-env) guest_env="${2?}"; shift 2 ;;
	-h | --help) usage ;;
	*) die "unknown argument: $1 (see --help)" ;;
	esac
done
case "$mode" in test | demo) ;; *) die "--mode must be test or demo, not $mode" ;; esac
kmemleak="${kmemleak:-${MLSDISK_KMEMLEAK:-off}}"
case "$kmemleak" in on | off) ;; *) die "--kmemleak (or MLSDISK_KMEMLEAK) must be on or off, not $kmemleak" ;; esac
kernel_args="console=ttyS0 panic=-1 loglevel=4"
[[ "$kmemleak" == off ]] || kernel_args+=" kmemleak=on"
variant="${MLSDISK_KERNEL_VARIANT:-default}"
judge_require=""
if [[ "$variant" == debug ]]; then
	# A debug boot logs much more: keep all of it for the final dmesg dump.
	# pci=noacpi: under TCG the debug kernel is so slow that ACPI's _PRT
	# method (PCI interrupt routing) hits AE_AML_LOOP_TIMEOUT and the boot
	# hangs with no disks; the PCI BIOS routing needs no AML.
	kernel_args+=" log_buf_len=8M pci=noacpi"
	scale="${MLSDISK_TIMEOUT_SCALE:-4}"
	guest_mem="${MLSDISK_GUEST_MEM:-2G}"
else
	scale="${MLSDISK_TIMEOUT_SCALE:-1}"
	guest_mem="${MLSDISK_GUEST_MEM:-1G}"
fi
[[ "$scale" =~ ^[1-9][0-9]*$ ]] || die "MLSDISK_TIMEOUT_SCALE must be a positive integer, not $scale"
timeout_s="${timeout_s:-$((${MLSDISK_GUEST_TIMEOUT:-1500} * scale))}"
test_timeout=$((600 * scale))
disk_opts=""
if [[ -n "$throttle" ]]; then
	[[ "$throttle" =~ ^([0-9]+):([0-9]+)$ ]] || die "--throttle wants IOPS:BYTES_PER_S, not $throttle"
	disk_opts=",throttling.iops-total=${BASH_REMATCH[1]},throttling.bps-total=${BASH_REMATCH[2]}"
fi
for kv in $bench_env; do
	[[ "$kv" =~ ^BENCH_[A-Z_]+=[A-Za-z0-9._:-]*$ ]] || die "--bench-env: not a BENCH_NAME=value word: $kv"
done
for kv in $guest_env; do
	[[ "$kv" =~ ^REPLAY_[A-Z_]+=[A-Za-z0-9._:-]*$ ]] || die "--guest-env: not a REPLAY_NAME=value word: $kv"
done
run_dir="${run_dir:-$MLSDISK_ROOT/build/guest-$mode}"

bzimage="$KDIR/arch/x86/boot/bzImage"
if [[ "$variant" == debug ]]; then kernel_target=kernel-debug; else kernel_target=kernel; fi
[[ -f "$KDIR/.mlsdisk-built" && -f "$bzimage" ]] || die "no guest kernel at $KDIR; run make $kernel_target"
command -v qemu-system-x86_64 >/dev/null || die "qemu-system-x86_64 not found; run make toolchain"

if ((no_module == 0)) && [[ -z "$module" && -f "$MLSDISK_MODULE_DIR/mlsdisk.ko" ]]; then
	module="$MLSDISK_MODULE_DIR/mlsdisk.ko"
fi
if [[ "$variant" == debug ]]; then
	# What the debug kernel's checkers must say at the end of the run: each
	# one that the kernel has, on and never switched off.
	cfg="$KDIR/.config"
	want() { grep -qx "$1=y" "$cfg"; }
	want CONFIG_PROVE_LOCKING && judge_require+='^debug-state: lockdep debug_locks=1$'$'\n'
	want CONFIG_DEBUG_OBJECTS && judge_require+='^debug-state: odebug warnings=0$'$'\n'
	want CONFIG_SLUB_DEBUG_ON && judge_require+='^debug-state: slub kmalloc-64 sanity_checks=1 red_zone=1 poison=1 store_user=1$'$'\n'
	want CONFIG_KASAN_GENERIC && judge_require+='^debug-state: kasan generic$'$'\n'
	[[ -n "$judge_require" ]] || die "MLSDISK_KERNEL_VARIANT=debug but $cfg has none of the debug checkers"
fi
if [[ -n "$module" ]]; then
	[[ -f "$module" ]] || die "module $module does not exist"
fi

case "$accel" in
kvm | KVM)
	[[ -r /dev/kvm && -w /dev/kvm ]] || die "--kvm given but /dev/kvm is not usable"
	accel_name=KVM
	accel_args=(-accel kvm -cpu host)
	;;
tcg | TCG)
	accel_name=TCG
	accel_args=(-accel "tcg,thread=multi" -cpu max)
	;;
*) die "MLSDISK_ACCEL must be tcg or kvm, not $accel" ;;
esac

base="$("$here/build-initramfs.sh")"

rm -rf "$run_dir"
mkdir -p "$run_dir/overlay/mlsdisk/tests"
ov="$run_dir/overlay"
install -m 0755 "$here/guest/init" "$ov/init"
install -m 0644 "$here/guest/runner.sh" "$here/guest/lib.sh" "$here/guest/demo.sh" "$ov/mlsdisk/"
# The mlsdisk CLI (tools/), built here so that every run has the current
# one, with the shared libraries ldd lists (as build-initramfs.sh does).
cli="${MLSDISK_CLI:-}"
if [[ -z "$cli" ]]; then
	echo "[guest] building the mlsdisk CLI (cargo build --release -p mlsdisk-tools --bin mlsdisk)"
	cargo build -q --release --manifest-path "$MLSDISK_ROOT/Cargo.toml" -p mlsdisk-tools --bin mlsdisk ||
		die "cargo build of the mlsdisk CLI failed"
	cli="$MLSDISK_ROOT/target/release/mlsdisk"
fi
[[ -x "$cli" ]] || die "the mlsdisk CLI $cli does not exist"
mkdir -p "$ov/usr/sbin"
install -m 0755 "$cli" "$ov/usr/sbin/mlsdisk"
while read -r lib; do
	mkdir -p "$ov$(dirname "$lib")"
	cp -L "$lib" "$ov$lib"
done < <(ldd "$cli" | awk '/=> \//{print $3} /^[[:space:]]*\/[^ ]+ \(/{print $1}')
if [[ -n "$guest_script" ]]; then
	[[ -f "$guest_script" ]] || die "--guest-script $guest_script does not exist"
	install -m 0644 "$guest_script" "$ov/mlsdisk/tests/"
else
	for t in "$MLSDISK_ROOT"/tests/guest/*.sh; do
		install -m 0644 "$t" "$ov/mlsdisk/tests/"
	done
fi
{
	printf 'MODE=%s\n' "$mode"
	printf 'TESTS="%s"\n' "$tests"
	printf 'ACCEL=%s\n' "$accel_name"
	printf 'export ACCEL\n'
	printf 'TIMEOUT_SCALE=%s\n' "$scale"
	printf 'export TIMEOUT_SCALE\n'
	for kv in $bench_env $guest_env; do
		printf 'export %s\n' "$kv"
	done
	if [[ -n "$throttle" ]]; then
		printf 'export BENCH_THROTTLE=%s\n' "$throttle"
	fi
	# The benchmark is one long "test": give it the whole guest budget.
	if [[ "$mode" == demo ]]; then
		printf 'TEST_TIMEOUT=%s\n' "$((timeout_s > 120 ? timeout_s - 60 : timeout_s))"
	else
		printf 'TEST_TIMEOUT=%s\n' "$test_timeout"
	fi
} >"$ov/mlsdisk/run.conf"
if [[ -n "$module" ]]; then
	install -m 0644 "$module" "$ov/mlsdisk.ko"
fi
(cd "$ov" && find . -mindepth 1 | LC_ALL=C sort | cpio --quiet -o -H newc -R 0:0) >"$run_dir/overlay.cpio"
cat "$base" "$run_dir/overlay.cpio" >"$run_dir/initramfs.cpio"

truncate -s 64M "$run_dir/spare.img"
disk="$run_dir/disk.img"
if [[ -n "$disk_image" ]]; then
	[[ -f "$disk_image" ]] || die "--disk-image $disk_image does not exist"
	disk="$disk_image"
else
	truncate -s "$disk_size" "$disk"
fi

log="$run_dir/console.log"
: >"$log"
echo "[guest] mode=$mode accel=$accel_name kmemleak=$kmemleak kernel=$bzimage (variant $variant, memory $guest_mem, timeouts x$scale)"
echo "[guest] module: ${module:-none (tests that need mlsdisk.ko will FAIL)}"
echo "[guest] console log: $log (timeout ${timeout_s}s)"
[[ -z "$throttle" ]] || echo "[guest] test disk throttled: iops-total=${throttle%%:*} bps-total=${throttle##*:}"
if [[ "$accel_name" == TCG ]]; then
	echo "[guest] TCG: the CPU is emulated in software; timings are for comparison within one run only"
fi

t0=$SECONDS
set +e
timeout -k 10 "$timeout_s" qemu-system-x86_64 "${accel_args[@]}" -m "$guest_mem" -smp 2 \
	-nographic -no-reboot -monitor none -serial "file:$log" \
	-kernel "$bzimage" -initrd "$run_dir/initramfs.cpio" \
	-append "$kernel_args" \
	-drive "file=$run_dir/spare.img,if=virtio,format=raw" \
	-drive "file=$disk,if=virtio,format=raw$disk_opts" \
	-pidfile "$run_dir/qemu.pid" \
	</dev/null >"$run_dir/qemu.out" 2>&1 &
qpid=$!
# Show the guest's output live, without the final kernel log dump.
tail -n +1 -F --pid="$qpid" "$log" 2>/dev/null |
	awk '/^=== dmesg begin/{skip=1} !skip{print; fflush()} /^=== dmesg end/{skip=0}' &
tpid=$!
wait "$qpid"
qrc=$?
wait "$tpid"
set -e
elapsed=$((SECONDS - t0))

tr -d '\r' <"$log" >"$run_dir/console.txt"
txt="$run_dir/console.txt"
if [[ "$mode" == demo ]] && grep -q '^  | BENCH ' "$txt"; then
	echo
	python3 "$MLSDISK_ROOT/scripts/bench-report.py" --text-only "run=$txt" || true
	echo
fi
echo "[guest] ---- results ($accel_name, ${elapsed}s wall) ----"
if ((qrc != 0)) && [[ -s "$run_dir/qemu.out" ]]; then
	echo "[guest] QEMU said:"
	tail -n 5 "$run_dir/qemu.out" | sed 's/^/[guest]   /'
	if [[ "$accel_name" == KVM ]]; then
		echo "[guest] hint: on nested hosts whose /dev/kvm lacks VMX/SVM, KVM cannot run this guest; use TCG (no --kvm, MLSDISK_ACCEL=tcg)"
	fi
fi
if ! JUDGE_REQUIRE="$judge_require" "$here/judge-log.sh" "$txt" "$qrc" "$timeout_s"; then
	echo "[guest] full log: $txt; QEMU output: $run_dir/qemu.out"
	exit 1
fi
