#!/usr/bin/env bash
# The fio benchmark in the QEMU guest: mlsdisk vs dm-crypt vs the raw device,
# the eight columns of the seed's table, on two device models:
#   plain  a file-backed virtio disk
#   ssd    the same with QEMU throttling: a per-request limit (IOPS) and a
#          per-byte limit (bytes/s), as on an SSD, so that the number of
#          requests, not only the bytes, costs
# One guest boot per model (qemu/run-guest.sh --mode demo, which runs
# qemu/guest/demo.sh, fio's JSON report of each job on one console line);
# then scripts/bench-report.py prints tables per model (medians of MiB/s,
# IOPS and completion latency p50/p99, mlsdisk/dm-crypt ratios, the seed
# prototype's ratios) and writes <out>/results.md, <out>/results.json and
# <out>/chart.svg.
#
#   scripts/guest-bench.sh [--quick | --large] [--models "plain ssd"] [--out DIR]
#                          [--throttle IOPS:BYTES_PER_S] [--module FILE.ko]
#                          [run-guest.sh args, e.g. --kvm]
#
# Full (make bench): 256 MiB working set, 5 s + 1 s warm-up per job, 3
# repetitions, about 10 min per model under TCG. --quick (make demo):
# 128 MiB, 2 s + 1 s, one repetition, about 2 min per model. --large:
# an 8 GiB mlsdisk backing device and a 2 GiB working set (2.25 GiB
# regions for raw and dm-crypt, a 13 GiB sparse virtual disk), one
# repetition; each target's 2 GiB fill takes minutes under TCG.
# Every run reports the module's memory after each mlsdisk pass
# (BENCHINFO mlsdisk_mem: /proc/meminfo deltas, open and after removal).
# Environment: BENCH_RUNTIME, BENCH_RAMP, BENCH_SIZE_MB, BENCH_REPEATS,
# BENCH_IODEPTH override the chosen profile; BENCH_READ_LAYOUT=as-written
# reads what the write columns left instead of a sequential refill
# (qemu/guest/demo.sh); BENCH_TARGETS and BENCH_COLUMNS
# (words separated by spaces or ':') run a subset, e.g.
#   BENCH_TARGETS="dm-crypt mlsdisk" BENCH_COLUMNS="seq-read rnd-read-4k" \
#     scripts/guest-bench.sh --models ssd
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/.." && pwd)"

die() {
	printf '[bench] ERROR: %s\n' "$*" >&2
	exit 2
}

quick=0
large=0
models="plain ssd"
out=""
# The SSD model: 250 requests/s and 10 MB/s, an SSD (~100k IOPS, ~3 GB/s)
# scaled down by about as much as TCG slows the guest's CPU, so that the
# device, not the emulated CPU, sets the pace wherever the request pattern
# matters: under TCG dm-crypt alone reaches ~4000 4 KiB IOPS and ~50 MiB/s,
# the engine ~10-20 MiB/s. Small requests are bound by the request limit,
# large ones by the byte limit (break-even at 40 KB, as on the real device).
throttle="250:10000000"
# The module to measure (default: linux/mlsdisk.ko), e.g. an older build.
module="$root/linux/mlsdisk.ko"
pass=()
while (($#)); do
	case "$1" in
	--quick) quick=1; shift ;;
	--large) large=1; shift ;;
	--models) models="${2:?}"; shift 2 ;;
	--out) out="${2:?}"; shift 2 ;;
	--throttle) throttle="${2:?}"; shift 2 ;;
	--module) module="${2:?}"; shift 2 ;;
	-h | --help) sed -n '2,33p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; exit 0 ;;
	*) pass+=("$1"); shift ;;
	esac
done

disk_size=4G
regions=""
fill_s=0
if ((quick && large)); then
	die "--quick and --large exclude each other"
elif ((quick)); then
	runtime=${BENCH_RUNTIME:-2} ramp=${BENCH_RAMP:-1} size=${BENCH_SIZE_MB:-128} reps=${BENCH_REPEATS:-1}
	out="${out:-$root/build/bench/demo}"
elif ((large)); then
	runtime=${BENCH_RUNTIME:-5} ramp=${BENCH_RAMP:-1} size=${BENCH_SIZE_MB:-2048} reps=${BENCH_REPEATS:-1}
	out="${out:-$root/build/bench/large}"
	disk_size=13G
	regions=" BENCH_REGION_MB=2304 BENCH_MLS_REGION_MB=8192"
	# A fill and a refill per target and repetition, at 5 MiB/s or more.
	fill_s=$((2 * 4 * (reps + 1) * size / 5))
else
	runtime=${BENCH_RUNTIME:-5} ramp=${BENCH_RAMP:-1} size=${BENCH_SIZE_MB:-256} reps=${BENCH_REPEATS:-3}
	out="${out:-$root/build/bench}"
fi
iodepth=${BENCH_IODEPTH:-16}
subset=""
if [[ -n "${BENCH_TARGETS:-}" ]]; then
	subset+=" BENCH_TARGETS=$(tr ' ' ':' <<<"$BENCH_TARGETS")"
fi
if [[ -n "${BENCH_READ_LAYOUT:-}" ]]; then
	subset+=" BENCH_READ_LAYOUT=$BENCH_READ_LAYOUT"
fi
if [[ -n "${BENCH_COLUMNS:-}" ]]; then
	subset+=" BENCH_COLUMNS=$(tr ' ' ':' <<<"$BENCH_COLUMNS")"
fi
command -v python3 >/dev/null || die "python3 not found (needed for the report)"

mkdir -p "$out"
# One module for every model, even if linux/ is rebuilt meanwhile.
mod_args=()
if [[ -f "$module" ]]; then
	cp "$module" "$out/mlsdisk.ko"
	mod_args=(--module "$out/mlsdisk.ko")
else
	echo "[bench] no linux/mlsdisk.ko (make module): the table will have no mlsdisk row"
	mod_args=(--no-module)
fi

# Guest budget per model: 24 jobs per repetition plus the fill, with room
# for a slow (busy) host; QEMU is killed at this bound.
jobs=$((24 * reps))
timeout_s=$((300 + 3 * jobs * (runtime + ramp + 3) + fill_s))

reports=()
t_all=$SECONDS
for model in $models; do
	case "$model" in
	plain) thr=() ;;
	ssd) thr=(--throttle "$throttle") ;;
	*) die "unknown device model $model (plain or ssd)" ;;
	esac
	echo "[bench] ==== device model: $model (timeout ${timeout_s}s) ===="
	t0=$SECONDS
	rc=0
	"$root/qemu/run-guest.sh" --mode demo "${mod_args[@]}" --run-dir "$out/$model" \
		--disk-size "$disk_size" --timeout "$timeout_s" "${thr[@]}" \
		--bench-env "BENCH_MODEL=$model BENCH_RUNTIME=$runtime BENCH_RAMP=$ramp BENCH_SIZE_MB=$size BENCH_REPEATS=$reps BENCH_IODEPTH=$iodepth$regions$subset" \
		"${pass[@]}" || rc=$?
	echo "[bench] model $model: $((SECONDS - t0)) s, run-guest.sh status $rc"
	((rc == 0)) || die "the $model run failed (see $out/$model/console.txt)"
	reports+=("$model=$out/$model/console.txt")
done

echo
python3 "$root/scripts/bench-report.py" --out-dir "$out" "${reports[@]}"
echo "[bench] total $((SECONDS - t_all)) s"
