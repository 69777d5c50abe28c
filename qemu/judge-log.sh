#!/usr/bin/env bash
# Judge a guest console log (already stripped of \r).
#   qemu/judge-log.sh CONSOLE_TXT [QEMU_EXIT_STATUS] [TIMEOUT_SECONDS]
# Prints the PASS/FAIL lines, the final line and every problem found.
# Exit 0 only when: QEMU exited 0, the final "N passed, 0 failed" line is
# there with N > 0, no FAIL line, and no BUG:/WARNING:/Oops/panic/Call Trace
# anywhere in the log (the guest runner dumps the whole kernel log at the end),
# and none of the reports of the debug kernel's checkers (make test-debug):
# lockdep, sleeping in atomic context, KASAN, ODEBUG, SLUB debug, whether or
# not they come with a BUG:/WARNING: line.
# JUDGE_REQUIRE: extra extended regexes, one per line, each of which must
# match some line of the log (run-guest.sh requires the debug kernel's
# "debug-state:" lines, so a checker that was off or switched itself off
# fails the run instead of passing silently).
set -euo pipefail

txt="${1:?usage: judge-log.sh CONSOLE_TXT [QEMU_EXIT_STATUS] [TIMEOUT_SECONDS]}"
qrc="${2:-0}"
timeout_s="${3:-?}"
[[ -f "$txt" ]] || {
	echo "[judge] no log file $txt" >&2
	exit 2
}

problems=()
if ((qrc == 124 || qrc == 137)); then
	problems+=("QEMU timed out after ${timeout_s}s")
elif ((qrc != 0)); then
	problems+=("QEMU exited with status $qrc")
fi
# "panic=-1" on the kernel command line is not a panic.
kernel_bad='BUG:|WARNING:|Oops|[Pp]anic([^=]|$)|Call Trace'
if grep -nE "$kernel_bad" "$txt" >/dev/null; then
	problems+=("the guest kernel log reports problems:")
	while IFS= read -r l; do problems+=("    $l"); done < <(grep -nE "$kernel_bad" "$txt" | head -n 20)
fi
# The debug checkers' own words (some print no BUG:/WARNING: line: SLUB's
# "BUG kmalloc-64 (...)", a bare "ODEBUG:", lockdep switching itself off).
debug_bad='BUG: KASAN|KASAN: |possible circular locking|inconsistent lock state|possible recursive locking|'
debug_bad+='suspicious RCU usage|sleeping function called from invalid context|DEBUG_LOCKS_WARN_ON|'
debug_bad+='turning off the locking correctness validator|Disabling lock debugging|'
debug_bad+='ODEBUG:|BUG [^ :]+ \(|Redzone overwritten|Poison overwritten|Padding overwritten|'
debug_bad+='Object already free|Freepointer corrupt'
if grep -nE "$debug_bad" "$txt" >/dev/null; then
	problems+=("the guest kernel's debug checkers report problems:")
	while IFS= read -r l; do problems+=("    $l"); done < <(grep -nE "$debug_bad" "$txt" | head -n 20)
fi
if [[ -n "${JUDGE_REQUIRE:-}" ]]; then
	while IFS= read -r re; do
		[[ -n "$re" ]] || continue
		grep -qE "$re" "$txt" || problems+=("no line matches the required /$re/ (a debug checker was off or switched itself off)")
	done <<<"$JUDGE_REQUIRE"
fi
final="$(grep -E '^[0-9]+ passed, [0-9]+ failed$' "$txt" | tail -n 1 || true)"
if [[ -z "$final" ]]; then
	problems+=("no final 'N passed, N failed' line (the guest crashed, hung or timed out)")
else
	npass="${final%% *}"
	nfail="$(echo "$final" | awk '{print $3}')"
	((nfail == 0)) || problems+=("$nfail guest test(s) failed")
	((npass > 0)) || problems+=("no guest test passed")
fi
if grep -qE '^FAIL ' "$txt" && ! printf '%s\n' "${problems[@]}" | grep -q 'failed$'; then
	problems+=("FAIL lines in the log")
fi

grep -E '^(PASS|FAIL|SKIP|debug-state:) ' "$txt" || true
[[ -z "$final" ]] || echo "$final"
if ((${#problems[@]})); then
	printf '[judge] FAILED: %s\n' "${problems[0]}"
	if ((${#problems[@]} > 1)); then printf '[judge] %s\n' "${problems[@]:1}"; fi
	exit 1
fi
echo "[judge] OK"
