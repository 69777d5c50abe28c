#!/usr/bin/env bash
# Whole-image rollback against the block-device anchor, on the host with
# the userspace tool (no guest boot): `mlsdisk --anchor-dev` uses the same
# anchor format as the kernel's anchor=dev:<device> (core disk::BlockAnchor).
#
#   tests/host/anchor-tool.sh
#
# 1. An older copy of the image put back, anchor intact -> Rollback; the
#    current image -> opens with its data.
# 2. The anchor's two slots damaged -> Integrity; another image's anchor
#    -> WrongKey; junk in the anchor -> Corrupted.
# 3. The anchor rolled back together with the image -> opens at the old
#    state: what the anchor's documentation says it cannot catch.
# 4. A fork: the anchor write of a sync is lost (the host kept that image),
#    the previous image is booted and a new sync completes; the kept image,
#    with the anchor's counter but another commit -> Rollback.
# Prints PASS/FAIL lines and "N passed, N failed".
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
work="${ANCHOR_TOOL_DIR:-$root/build/anchor-tool}"
key=000102030405060708090a0b0c0d0e0f
cargo build -q --manifest-path "$root/Cargo.toml" -p mlsdisk-tools --bin mlsdisk
tool="$root/target/debug/mlsdisk"
rm -rf "$work"
mkdir -p "$work"
cd "$work"

passed=0
failed=0
ok() { echo "PASS $*"; passed=$((passed + 1)); }
bad() { echo "FAIL $*"; failed=$((failed + 1)); }

m() { "$tool" "$@" 2>&1; }
# expect_err LABEL WORDS CMD...: the command fails (exit 1, or 8 for
# check: could not check) with "mlsdisk: img: WORDS (...)".
expect_err() {
	local label=$1 kind=$2 out rc=0
	shift 2
	out=$(m "$@") || rc=$?
	if ((rc == 1 || rc == 8)) && grep -q "^mlsdisk: img: $kind (" <<<"$out"; then
		ok "$label -> $(tail -n 1 <<<"$out")"
	else
		bad "$label: expected exit 1 with $kind, got rc=$rc: $out"
	fi
}

head -c 4096 /dev/urandom >v1
head -c 4096 /dev/urandom >v2
m format img --size-mib 64 --key $key --anchor-dev anc >/dev/null
m write img --key $key --anchor-dev anc 5 v1 >/dev/null
cp img old.img
cp anc old.anc
m write img --key $key --anchor-dev anc 5 v2 >/dev/null
cp img new.img
cp anc good.anc

# 1.
cp old.img img
expect_err "rollback of the whole image, anchor intact" "refused as a rollback" check img --key $key --anchor-dev anc
cp new.img img
if m read img --key $key --anchor-dev anc 5 1 got >/dev/null && cmp -s got v2; then
	ok "the current image opens with its newest data"
else
	bad "the current image does not open with its newest data"
fi

# 2.
cp good.anc anc
printf '\xff\xff\xff\xff' | dd of=anc bs=1 seek=300 conv=notrunc status=none
printf '\xff\xff\xff\xff' | dd of=anc bs=1 seek=$((4096 + 300)) conv=notrunc status=none
if cmp -s anc good.anc; then
	bad "tampering did not change the anchor"
else
	expect_err "both anchor slots damaged" "authentication failed: tampered or damaged" check img --key $key --anchor-dev anc
fi
m format other.img --size-mib 64 --key $key --anchor-dev other.anc >/dev/null
expect_err "another image's anchor" "wrong key" check img --key $key --anchor-dev other.anc
head -c 8192 /dev/urandom >anc
expect_err "junk as anchor" "damaged or not an MlsDisk image" check img --key $key --anchor-dev anc

# 3.
cp old.img img
cp old.anc anc
if m read img --key $key --anchor-dev anc 5 1 got >/dev/null && cmp -s got v1; then
	ok "image and anchor rolled back together open at the old state (the documented limit)"
else
	bad "image and anchor rolled back together did not open at the old state"
fi

# 4. State s: image and anchor. Sync s+1 (v1 at block 6) reaches the image,
#    not the anchor: the host keeps that image and puts the anchor back.
cp new.img img
cp good.anc anc
cp img fork-s.img
cp anc fork-s.anc
m write img --key $key --anchor-dev anc 6 v1 >/dev/null
cp img fork-i1.img
cp fork-s.anc anc
# The host boots the image at s; the user's sync (v2 at block 6) completes.
cp fork-s.img img
m write img --key $key --anchor-dev anc 6 v2 >/dev/null
cp img fork-c.img
cp fork-i1.img img
expect_err "forked image with the anchor's counter" "refused as a rollback" check img --key $key --anchor-dev anc
cp fork-c.img img
if m read img --key $key --anchor-dev anc 6 1 got >/dev/null && cmp -s got v2; then
	ok "the completed sync opens after the refused fork"
else
	bad "the completed sync does not open with its data"
fi
echo "$passed passed, $failed failed"
((failed == 0 && passed > 0))
