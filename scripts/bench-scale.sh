#!/usr/bin/env bash
# The userspace benchmark at scale (issue 10's table): MlsDisk against
# CryptDisk (the encrypt-only baseline, same crypto) on this machine's disk
# with O_DIRECT, in one command. Each run prints mlsdisk-bench's tables;
# everything also goes to <out>/<run>.json and <out>/<run>.txt.
#
#   scripts/bench-scale.sh [--out DIR] [--file IMAGE] [--quick] [--only RUN]
#                          [-- MLSDISK-BENCH-ARGS...]
#
# Arguments after `--` go to every mlsdisk-bench run (for example
# `-- --async-writes`); --only runs one of the runs below.
#
# Runs, in order (sparse image files: a 100 GiB disk costs what is written):
#   fresh-1g     100 GiB disk, 1 GiB working set, the eight columns, QD1,
#                3 repetitions (each random-write column on a freshly
#                filled disk, the reads after a sequential refill)
#   fresh-1g-qd16  the same with 16 requests in flight, 1 repetition
#   read-16g     100 GiB disk, the first 16 GiB written, reads over all of
#                it (1 repetition), with MlsDisk's create, clean-open and
#                crash-recovery times on a disk of that size and fill
#   steady-8g    8 GiB disk, full, all columns back to back (the random
#                writes overwrite a full disk, the cleaner runs), uniform
#   steady-8g-skew  the same with 80 % of the random requests on 20 % of
#                the disk
# A steady 100 GiB disk would need 100+ GiB of free space written twice;
# the steady runs use 8 GiB (the write amplification depends on the fill
# and the over-provisioning, not on the size). About 15-20 minutes on a
# 2-CPU machine; --quick shrinks every run (a smoke test, ~2 min).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/.." && pwd)"
out="$root/build/bench-scale"
file="${TMPDIR:-/tmp}/mlsdisk-bench-scale.img"
quick=0
only=""
extra=()
while (($#)); do
	case "$1" in
	--out) out="${2:?}"; shift 2 ;;
	--file) file="${2:?}"; shift 2 ;;
	--quick) quick=1; shift ;;
	--only) only="${2:?}"; shift 2 ;;
	--) shift; extra=("$@"); break ;;
	-h | --help) sed -n '2,30p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; exit 0 ;;
	*) echo "bench-scale: unknown argument $1" >&2; exit 2 ;;
	esac
done

echo "[bench-scale] building mlsdisk-bench (release)"
cargo build -q --release --manifest-path "$root/Cargo.toml" -p mlsdisk-tools --bin mlsdisk-bench
bench="$root/target/release/mlsdisk-bench"
mkdir -p "$out"
rev="$(git -C "$root" rev-parse --short HEAD 2>/dev/null || echo unknown)"
dirty="$(git -C "$root" status --porcelain 2>/dev/null | grep -qv '^??' && echo ' (with local changes)' || true)"
echo "[bench-scale] commit $rev$dirty, $(nproc) CPUs, image $file, output $out"

if ((quick)); then
	big=2 ws1=64 ws16=256 steady=1 rnd=16 reps=1
else
	big=100 ws1=1024 ws16=16384 steady=8 rnd=256 reps=3
fi

# run NAME ARGS...: one mlsdisk-bench run, its tables on stdout and in
# <out>/NAME.txt, its JSON in <out>/NAME.json.
run() {
	local name="$1"
	shift
	if [[ -n "$only" && "$only" != "$name" ]]; then
		return 0
	fi
	set -- "$@" "${extra[@]}"
	ran=$((ran + 1))
	echo
	echo "[bench-scale] ==== $name: mlsdisk-bench $* ===="
	local t0=$SECONDS
	"$bench" --targets crypt,mls --file "$file" --json "$out/$name.json" "$@" | tee "$out/$name.txt"
	echo "[bench-scale] $name: $((SECONDS - t0)) s"
	rm -f "$file"
}

t_all=$SECONDS
ran=0
run fresh-1g --disk-gib "$big" --size-mib "$ws1" --rnd-mib "$rnd" --reps "$reps" --no-open-times
run fresh-1g-qd16 --disk-gib "$big" --size-mib "$ws1" --rnd-mib "$rnd" --reps 1 --iodepth 16 --no-open-times
run read-16g --disk-gib "$big" --size-mib "$ws16" --rnd-mib "$rnd" --reps 1 \
	--phases seq-read,rnd-read-4K,rnd-read-32K
run steady-8g --disk-gib "$steady" --size-mib $((steady * 1024)) --fill-pct 100 --steady \
	--rnd-mib "$rnd" --reps 1 --no-open-times
run steady-8g-skew --disk-gib "$steady" --size-mib $((steady * 1024)) --fill-pct 100 --steady \
	--skew 80/20 --rnd-mib "$rnd" --reps 1 --no-open-times
if ((ran == 0)); then
	echo "bench-scale: no run named '$only'" >&2
	exit 2
fi
echo
echo "[bench-scale] total $((SECONDS - t_all)) s; tables and JSON in $out"
