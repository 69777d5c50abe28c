#!/usr/bin/env bash
# Run every fuzz target of fuzz/ for FUZZ_SECONDS each, one after the other
# (one libFuzzer process at a time). See fuzz/README.md.
#
#   FUZZ_SECONDS    seconds per target (default 30)
#   FUZZ_RUNS       instead of a time: this many inputs per target with a
#                   fixed seed (deterministic; `make fuzz-smoke` in make test)
#   FUZZ_TARGETS    space-separated targets (default: all, `cargo fuzz list`)
#   FUZZ_SANITIZER  none (default, stable rustc) or address (needs
#                   RUSTC_BOOTSTRAP=1 or a nightly toolchain)
#   FUZZ_ARGS       extra libFuzzer arguments
#
# Corpora: fuzz/corpus/<target> (committed seeds, read only) and
# fuzz/work/corpus/<target> (what the fuzzer finds, not committed). A crash
# is copied to fuzz/regressions/<target>/ and fails the run: fix it in the
# engine, keep the file (tests/fuzz_regressions.rs runs it in `make test`).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=scripts/env.sh
. "$here/env.sh"
cd "$MLSDISK_ROOT/fuzz"

root="$MLSDISK_CACHE/cargo-fuzz-$MLSDISK_CARGO_FUZZ_VERSION"
[[ -x "$root/bin/cargo-fuzz" ]] && PATH="$root/bin:$PATH"

secs="${FUZZ_SECONDS:-30}"
if [[ -n "${FUZZ_RUNS:-}" ]]; then
	[[ "$FUZZ_RUNS" =~ ^[0-9]+$ ]] || { echo "[fuzz] FUZZ_RUNS must be a number, not '$FUZZ_RUNS'" >&2; exit 2; }
	budget=(-runs="$FUZZ_RUNS" -seed=1)
else
	budget=(-max_total_time="$secs")
fi
san="${FUZZ_SANITIZER:-none}"
read -r -a targets <<<"${FUZZ_TARGETS:-$(cargo fuzz list | tr '\n' ' ')}"
# -a: debug assertions and overflow checks on, so an overflow is a finding.
build=(-s "$san" -a)

# Inputs larger than libFuzzer's default 4 KiB: whole blocks and trees.
max_len() {
	case "$1" in
	lsm_tree) echo 131072 ;;
	superblock_slot | block_anchor | lsm_table | journal_chain) echo 40960 ;;
	merkle_node | lsm_wal) echo 8192 ;;
	*) echo 4096 ;;
	esac
}

echo "[fuzz] building ${#targets[@]} targets (sanitizer: $san)"
if [[ -n "${FUZZ_TARGETS:-}" ]]; then
	for t in "${targets[@]}"; do cargo fuzz build "${build[@]}" "$t"; done
else
	cargo fuzz build "${build[@]}"
fi

summary="work/summary-$(date -u +%Y%m%dT%H%M%SZ).txt"
mkdir -p work
printf '%-20s %10s %8s %8s %8s\n' target execs "exec/s" cov ft | tee "$summary"
failed=()
for t in "${targets[@]}"; do
	mkdir -p "work/corpus/$t" "artifacts/$t" "regressions/$t"
	log="work/$t.log"
	set +e
	cargo fuzz run "${build[@]}" "$t" "work/corpus/$t" "corpus/$t" -- \
		"${budget[@]}" -max_len="$(max_len "$t")" -timeout=20 -rss_limit_mb=2048 \
		-artifact_prefix="artifacts/$t/" -print_final_stats=1 ${FUZZ_ARGS:-} >"$log" 2>&1
	rc=$?
	set -e
	execs="$(LC_ALL=C awk '/stat::number_of_executed_units/{print $2}' "$log" | tail -1)"
	rate="$(awk '/stat::average_exec_per_sec/{print $2}' "$log" | tail -1)"
	cov="$(grep -aoE 'cov: [0-9]+' "$log" | tail -1 | awk '{print $2}')"
	ft="$(grep -aoE 'ft: [0-9]+' "$log" | tail -1 | awk '{print $2}')"
	printf '%-20s %10s %8s %8s %8s\n' "$t" "${execs:-?}" "${rate:-?}" "${cov:-?}" "${ft:-?}" | tee -a "$summary"
	if ((rc != 0)); then
		failed+=("$t")
		for a in "artifacts/$t"/*; do
			[[ -f "$a" ]] && cp "$a" "regressions/$t/" && echo "[fuzz] $t: finding $a -> regressions/$t/"
		done
		echo "[fuzz] $t failed (exit $rc); log: fuzz/$log" >&2
		tail -n 30 "$log" >&2
	fi
done
echo "[fuzz] summary: fuzz/$summary"
if ((${#failed[@]})); then
	echo "[fuzz] FAILED: ${failed[*]} (inputs in fuzz/regressions/<target>/)" >&2
	exit 1
fi
