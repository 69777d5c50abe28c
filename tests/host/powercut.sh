#!/usr/bin/env bash
# Host-side power-cut and between-boots tamper tests: one backing image
# (the guest's vdb) kept across several QEMU boots of the test guest.
#
#   tests/host/powercut.sh            (make host-test; part of make test)
#
# Env: POWERCUT_SEED    seed of the random cut delays (default: a fresh one;
#                       printed at the start, with the delays, for replay)
#      POWERCUT_DELAYS  cut delays in seconds after the marker, e.g. "1 3 6"
#                       (overrides the random ones)
#      POWERCUT_DIR     work directory (default build/powercut)
#
# The random delays: three, one early (0-1.9 s), one middle (2-4.4 s), one
# late (4.5-7.4 s), in 0.1 s steps and in a random order (10 s in all on
# average, as the former fixed "1 3 6"), from a small LCG so that one seed
# gives the same delays on any host: POWERCUT_SEED=<seed> make host-test
# replays a run.
#
# 1. Power cut, once per delay: the guest opens the disk (creates it and
#    runs mkfs.ext4 on the first boot), checks everything synced so far
#    (rw mount + umount replays the ext4 journal, e2fsck -fn clean, all
#    checksums), writes a new file set, syncs, prints "MARKER synced" and
#    keeps writing; the host SIGKILLs QEMU <delay> seconds later.
# 2. A last clean boot checks all the sets and syncs.
# 3. Between boots, on copies of that image: bytes flipped in the data log,
#    in the journal (the blocks after the superblock) and in the chunk
#    region (the index) -> the open fails or
#    reads fail with EIO, never different data; an older copy of the whole
#    image (taken after the second cut) -> opens at that older synced
#    state, status says unprotected, the newer set is absent.
# The guest side is tests/guest-host/powercut.sh. Every boot's kernel log
# must be free of BUG/WARNING/Oops/panic (the killed boots: all but the
# cut-off last line). Prints PASS/FAIL lines and "N passed, N failed".
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
# shellcheck source=scripts/env.sh
. "$root/scripts/env.sh"
guest_side="$root/tests/guest-host/powercut.sh"
work="${POWERCUT_DIR:-$root/build/powercut}"

# rand_below N: the next number of the seeded LCG in 0..N-1, in $r.
rand_below() {
	rng=$(((rng * 1103515245 + 12345) % 2147483648))
	r=$(((rng >> 8) % $1))
}
# random_delays SEED: three delays (seconds, one decimal) in $delays.
random_delays() {
	local bins=(0:20 20:45 45:75) t=() i lo hi tmp
	rng=$(($1 % 2147483648))
	for i in "${!bins[@]}"; do
		lo=${bins[i]%%:*}
		hi=${bins[i]##*:}
		rand_below $((hi - lo))
		t+=($((lo + r)))
	done
	for ((i = ${#t[@]} - 1; i > 0; i--)); do
		rand_below $((i + 1))
		tmp=${t[i]}
		t[i]=${t[r]}
		t[r]=$tmp
	done
	delays=()
	for i in "${t[@]}"; do
		delays+=("$((i / 10)).$((i % 10))")
	done
}
if [[ -n "${POWERCUT_DELAYS:-}" ]]; then
	read -r -a delays <<<"$POWERCUT_DELAYS"
	for d in "${delays[@]}"; do
		[[ "$d" =~ ^[0-9]+(\.[0-9]+)?$ ]] || {
			echo "powercut: POWERCUT_DELAYS: '$d' is not a number of seconds" >&2
			exit 2
		}
	done
	echo "powercut: cut delays ${delays[*]} s (from POWERCUT_DELAYS)"
else
	seed=${POWERCUT_SEED:-$(od -An -N4 -tu4 /dev/urandom | tr -d ' ')}
	[[ "$seed" =~ ^[0-9]+$ ]] || {
		echo "powercut: POWERCUT_SEED must be a non-negative integer, not '$seed'" >&2
		exit 2
	}
	random_delays "$seed"
	echo "powercut: seed $seed, cut delays ${delays[*]} s (replay: POWERCUT_SEED=$seed make host-test)"
fi
img_size=512M
kernel_bad='BUG:|WARNING:|Oops|[Pp]anic([^=]|$)|Call Trace'

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
	echo "host tests took $((SECONDS - t0))s; logs in $work"
	echo "$passed passed, $failed failed"
	((failed == 0 && passed > 0))
	exit
}

t0=$SECONDS
[[ -f "$root/linux/mlsdisk.ko" ]] || {
	failure powercut "no linux/mlsdisk.ko (run make module)"
	finish
}
rm -rf "$work"
mkdir -p "$work"
img="$work/disk.img"
truncate -s "$img_size" "$img"
: >"$work/expected"

# mkscript NAME EXPECTED VAR=VALUE...: the guest-side script with its
# variables and the expected checksums in front; prints its path.
mkscript() {
	local out="$work/scripts/powercut-$1.sh" expected=$2
	shift 2
	mkdir -p "$work/scripts"
	{
		printf '%s\n' "$@"
		printf "cat >/tmp/expected <<'EOF_EXPECTED'\n"
		cat "$expected"
		printf 'EOF_EXPECTED\n'
		cat "$guest_side"
	} >"$out"
	echo "$out"
}

# boot NAME SCRIPT IMAGE [CUT_DELAY]: one guest boot; with CUT_DELAY,
# SIGKILL QEMU that many seconds after "MARKER synced". Sets boot_rc and
# log (the console text).
boot() {
	local name=$1 script=$2 image=$3 delay=${4:-} rd="$work/run-$1" rpid waited=0
	mkdir -p "$rd"
	"$root/qemu/run-guest.sh" --run-dir "$rd" --guest-script "$script" --disk-image "$image" \
		--timeout 300 >"$work/$name.out" 2>&1 &
	rpid=$!
	if [[ -n "$delay" ]]; then
		until grep -aq '^MARKER synced' "$rd/console.log" 2>/dev/null; do
			if ! kill -0 "$rpid" 2>/dev/null || ((waited > 2400)); then
				break
			fi
			sleep 0.1
			waited=$((waited + 1))
		done
		if grep -aq '^MARKER synced' "$rd/console.log" 2>/dev/null; then
			sleep "$delay"
			kill -KILL "$(cat "$rd/qemu.pid")" 2>/dev/null || true
		fi
	fi
	boot_rc=0
	wait "$rpid" || boot_rc=$?
	log="$rd/console.txt"
	[[ -f "$log" ]] || tr -d '\r' <"$rd/console.log" >"$log" 2>/dev/null || : >"$log"
}

# why_failed NAME: the guest's failure reason or the judge's verdict.
why_failed() {
	{ grep -a -E '^FAIL |fail: |\[judge\]|ERROR' "$work/$1.out" || tail -n 3 "$work/$1.out"; } | head -n 3 | tr '\n' ' '
}

# tamper IMAGE data|journal|chunks: flip a byte in blocks in use of the
# region (every 32nd of the data log, every one of the metadata regions;
# layout as in docs/format.md "Disk layout", default LayoutConfig).
tamper() {
	python3 - "$@" <<'PY'
import os, sys
path, region = sys.argv[1], sys.argv[2]
B, S = 4096, 256
total = os.path.getsize(path) // B
j = min(max(total // 1024, 128), 16384)
c = max(total // 100 * 6, 1024)
data0 = 2 + j + c
nseg = (total - data0) // S
lo, hi, every = {
    "journal": (2, 2 + j, 1),
    "chunks": (2 + j, data0, 1),
    "data": (data0, data0 + nseg * S, 32),
}[region]
zero = bytes(B)
used = []
with open(path, "r+b") as f:
    f.seek(lo * B)
    for b in range(lo, hi):
        if f.read(B) != zero:
            used.append(b)
    hit = used[::every]
    for b in hit:
        off = b * B + 1234
        f.seek(off)
        x = f.read(1)[0]
        f.seek(off)
        f.write(bytes([x ^ 0x5A]))
print(f"{region}: blocks {lo}..{hi}: {len(used)} in use, flipped a byte in {len(hit)}")
sys.exit(0 if hit else 1)
PY
}

# 1. Power cuts.
len=""
cycle=0
for d in "${delays[@]}"; do
	cycle=$((cycle + 1))
	name="cut$cycle"
	create=0
	[[ -n "$len" ]] || create=1
	script=$(mkscript "$name" "$work/expected" PHASE=cycle "CREATE=$create" "LEN=$len" "NEW=s$cycle")
	boot "$name" "$script" "$img" "$d"
	if ! grep -aq '^MARKER synced' "$log"; then
		failure "$name no 'MARKER synced' (verification of the earlier sets or the writes failed): $(why_failed "$name")"
		finish
	fi
	if ((create)); then
		len=$(sed -n 's/^LEN \([0-9]*\)$/\1/p' "$log" | head -n 1)
		[[ -n "$len" ]] || {
			failure "$name no LEN line"
			finish
		}
	fi
	if ((cycle > 1)); then
		grep -aq "^RESULT verified $(wc -l <"$work/expected") files" "$log" ||
			failure "$name the sets synced before cut$((cycle - 1)) were not all verified"
	fi
	sed -n 's/^SUM \([0-9a-f]\{64\}\) \(\.\/s[0-9]*\/[^ ]*\)$/\1 \2/p' "$log" >"$work/new.sums"
	nsums=$(sed -n 's/^SUMS \([0-9]*\)$/\1/p' "$log" | head -n 1)
	if [[ -z "$nsums" || "$(wc -l <"$work/new.sums")" -ne "$nsums" ]]; then
		failure "$name the checksum lines are incomplete ($(wc -l <"$work/new.sums") of ${nsums:-?})"
		finish
	fi
	cat "$work/new.sums" >>"$work/expected"
	bad=$(head -n -1 "$log" | grep -aE "$kernel_bad" | head -n 3 || true)
	late=""
	grep -aq '^LOOP done' "$log" && late=" (note: the write loop had ended before the cut)"
	if [[ -n "$bad" ]]; then
		failure "$name kernel log: $bad"
	elif grep -aq 'fail: ' "$log"; then
		failure "$name the guest failed before the cut: $(grep -a 'fail: ' "$log" | head -n 1)"
	else
		before=""
		((cycle == 1)) || before=" (at boot s1..s$((cycle - 1)) verified: journal replay, e2fsck -fn clean, checksums)"
		pass "$name QEMU killed ${d}s after the fsync marker, $nsums files of s$cycle synced$late$before"
	fi
	if ((cycle == 2)); then
		cp --sparse=always "$img" "$work/older.img"
		cp "$work/expected" "$work/expected-older"
	fi
done

# 2. A clean boot: everything synced before each marker is intact.
script=$(mkscript final "$work/expected" PHASE=final "LEN=$len")
boot final "$script" "$img"
sync_newer=$(sed -n 's/^SYNC \([0-9]*\)$/\1/p' "$log" | head -n 1)
if ((boot_rc == 0)) && [[ -n "$sync_newer" ]]; then
	pass "after-cuts open, journal replay, e2fsck -fn clean, status ok, $(wc -l <"$work/expected") synced files intact (sync=$sync_newer)"
else
	failure "after-cuts $(why_failed final)"
	finish
fi

# 3. Tampering between boots, on copies of the image.
for region in data journal chunks; do
	cp --sparse=always "$img" "$work/$region.img"
	if ! what=$(tamper "$work/$region.img" "$region"); then
		failure "tamper-$region nothing to flip: $what"
		continue
	fi
	script=$(mkscript "tamper-$region" "$work/expected" PHASE=tampered "LEN=$len")
	boot "tamper-$region" "$script" "$work/$region.img"
	if ((boot_rc == 0)); then
		pass "tamper-$region $what -> $(sed -n 's/^RESULT //p' "$log" | tr '\n' ';' | sed 's/;$//'), never wrong data"
	else
		failure "tamper-$region ($what) $(why_failed "tamper-$region")"
	fi
done
if [[ -f "$work/older.img" ]]; then
	script=$(mkscript rollback "$work/expected-older" PHASE=rollback "LEN=$len" ABSENT=s3 "SYNC_NEWER=$sync_newer")
	boot rollback "$script" "$work/older.img"
	if ((boot_rc == 0)); then
		pass "rollback the older whole image opens at its synced state ($(sed -n 's/^RESULT rollback //p' "$log") < $sync_newer), status says unprotected, s3 absent, e2fsck clean"
	else
		failure "rollback $(why_failed rollback)"
	fi
else
	failure "rollback no older image (needs at least two cut delays)"
fi
finish
