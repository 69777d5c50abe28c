#!/usr/bin/env bash
# SPDX-License-Identifier: MPL-2.0
#
# Builds linux/mlsdisk.ko against the guest kernel (scripts/env.sh's KDIR).
# With MLSDISK_KERNEL_VARIANT=debug it builds against the debug kernel, in a
# copy of linux/ under build/module-debug/linux (MLSDISK_MODULE_DIR), so the
# two builds never mix objects: build/module-debug/linux/mlsdisk.ko.
#
#   scripts/build-module.sh [make arguments...]
#     e.g. scripts/build-module.sh CLIPPY=1     (lint the module's Rust with clippy)
#          scripts/build-module.sh clean
#
# Steps: check that the kernel is built; unit-test the table-line parser in
# userspace (linux/table.rs has no kernel dependency); run Kbuild. Any
# compiler, bindgen, objtool or modpost warning fails the build (set
# MLSDISK_ALLOW_WARNINGS=1 to only report them). Prints the path of the .ko.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# shellcheck source=scripts/env.sh
. "$ROOT/scripts/env.sh"

die() {
	echo "build-module: $*" >&2
	exit 1
}

[ -d "$KSRC" ] || die "kernel source not found at $KSRC: run 'make toolchain' (scripts/install-toolchain.sh) first"
if [ ! -f "$KDIR/vmlinux" ] || [ ! -f "$KDIR/Module.symvers" ] || [ ! -f "$KDIR/rust/libkernel.rmeta" ]; then
	die "the guest kernel is not built in $KDIR (no vmlinux, Module.symvers or rust/libkernel.rmeta): run 'make kernel' first"
fi
grep -q '^CONFIG_RUST=y' "$KDIR/.config" || die "$KDIR/.config has no CONFIG_RUST=y: the kernel cannot take a Rust module"
grep -q '^CONFIG_BLK_DEV_DM=[ym]' "$KDIR/.config" || die "$KDIR/.config has no CONFIG_BLK_DEV_DM: the target needs device-mapper"
[ -f "$RUST_LIB_SRC/alloc/src/lib.rs" ] || die "no Rust library source at RUST_LIB_SRC=$RUST_LIB_SRC: run 'make toolchain'"
# alloc must come from the library source the kernel's core came from.
if ! grep -qF "$RUST_LIB_SRC/core/src/lib.rs" "$KDIR/rust/.core.o.cmd"; then
	die "the kernel's core was not built from RUST_LIB_SRC=$RUST_LIB_SRC (see $KDIR/rust/.core.o.cmd): rebuild the kernel with 'make kernel'"
fi
command -v "${BINDGEN:-bindgen}" >/dev/null || die "bindgen not on PATH ($MLSDISK_BINDGEN_ROOT/bin): run 'make toolchain'"

if [ "${1:-}" != clean ]; then
	echo "build-module: unit tests of linux/table.rs (userspace)"
	tmp="$(mktemp -d)"
	trap 'rm -rf "$tmp"' EXIT
	rustc --edition 2021 --test -o "$tmp/table-test" "$ROOT/linux/table.rs" ||
		die "linux/table.rs does not build as a userspace test"
	"$tmp/table-test" -q || die "linux/table.rs unit tests failed"
fi

# The folder Kbuild builds in: linux/ itself, or (debug kernel) a copy of
# its sources next to a link to core/ (Kbuild finds the engine at
# $(src)/../core). rsync keeps the times, so the copy's rebuilds stay
# incremental; build outputs are not copied.
moddir="$MLSDISK_MODULE_DIR"
if [ "$moddir" != "$ROOT/linux" ]; then
	mkdir -p "$moddir"
	rsync -a --delete \
		--exclude='*.o' --exclude='*.ko' --exclude='*.mod' --exclude='*.mod.c' \
		--exclude='.*.cmd' --exclude='*.rmeta' --exclude='modules.order' \
		--exclude='Module.symvers' --exclude='mlsdisk_bindings_generated.rs' \
		--exclude='.*.d' --exclude='*.tmp' \
		"$ROOT/linux/" "$moddir/" || die "could not copy linux/ to $moddir"
	ln -sfn "$ROOT/core" "$(dirname "$moddir")/core"
	echo "build-module: building in $moddir (kernel variant ${MLSDISK_KERNEL_VARIANT:-default}, $KDIR)"
fi

log="$(mktemp)"
# shellcheck disable=SC2086 # KMAKE is a command prefix
if ! $KMAKE M="$moddir" "${@:-modules}" 2>&1 | tee "$log"; then
	rm -f "$log"
	die "Kbuild failed (see above)"
fi
# A pipeline's status is tee's without pipefail; pipefail is set, so a make
# failure ends above. Now the warnings.
warnings="$(grep -iE '(^|[^a-z_])warning([: ]|$)' "$log" | grep -v '^make' || true)"
rm -f "$log"

# One known objtool false positive, checked rather than trusted. Without IBT,
# objtool checks each object and must know which functions never return.
# Its Rust list (tools/objtool/check.c, is_rust_noreturn) matches
# `panic_const24panic_const_*` by the mangled name's length prefix, so the
# 23-character `panic_const_div_by_zero` and `panic_const_rem_by_zero` are
# missed, and a function whose last instruction calls one of them "falls
# through to next function". The same holds for rustc 1.95's
# `core::slice::copy_from_slice_impl::len_mismatch_fail` (a `-> !` function
# objtool knows only under its older path, `copy_from_slice::len_mismatch_fail`).
# Such a warning is dropped only after objdump shows that the function's
# last relocation is exactly one of those calls.
objdump_bin="$(command -v objdump || command -v "llvm-objdump$LLVM" || true)"
ends_in_missed_noreturn() {
	local sym last
	sym="$(sed -n 's/.*objtool: \(_R[A-Za-z0-9_]*\)() falls through to next function.*/\1/p' <<<"$1")"
	[ -n "$sym" ] && [ -n "$objdump_bin" ] || return 1
	# By address range from nm: objdump's --disassemble=<symbol> misses
	# some long mangled names.
	local start size
	read -r start size < <(nm -S "$moddir/mlsdisk.o" 2>/dev/null |
		awk -v s="$sym" '$4 == s { print $1, $2; exit }')
	[ -n "${start:-}" ] && [ -n "${size:-}" ] || return 1
	last="$("$objdump_bin" -dr --start-address=$((16#$start)) \
		--stop-address=$((16#$start + 16#$size)) "$moddir/mlsdisk.o" 2>/dev/null |
		grep -E 'R_X86_64_[A-Z0-9]+' | tail -n 1)"
	[[ "$last" =~ R_X86_64_PLT32[[:space:]]+_R[A-Za-z0-9_]*(4core9panicking11panic_const23panic_const_(div|rem)_by_zero|4core5slice20copy_from_slice_impl17len_mismatch_fail)- ]]
}
if [ -n "$warnings" ] && [ "${1:-}" != clean ]; then
	kept=""
	dropped=0
	while IFS= read -r line; do
		if ends_in_missed_noreturn "$line"; then
			dropped=$((dropped + 1))
		else
			kept+="$line"$'\n'
		fi
	done <<<"$warnings"
	warnings="${kept%$'\n'}"
	if [ "$dropped" -gt 0 ]; then
		echo "build-module: $dropped objtool 'falls through' note(s) on functions ending in a call to core's panic_const_{div,rem}_by_zero or copy_from_slice_impl::len_mismatch_fail (noreturn, missing from objtool's list): checked with objdump and ignored"
	fi
fi
if [ -n "$warnings" ]; then
	echo "build-module: the build printed warnings:" >&2
	echo "$warnings" >&2
	[ "${MLSDISK_ALLOW_WARNINGS:-0}" = 1 ] || die "warnings are errors here (MLSDISK_ALLOW_WARNINGS=1 to continue)"
fi

if [ "${1:-}" = clean ]; then
	exit 0
fi
ko="$moddir/mlsdisk.ko"
[ -f "$ko" ] || die "Kbuild finished but $ko is missing"
# Stack frames: the kernel's stacks are 16 KiB and the engine's open and
# read paths nest a dozen calls deep under a worker, so no single function
# may take more than MLSDISK_MAX_FRAME bytes (rustc has no -Wframe-larger-than
# for Rust code; this reads each function's `sub $N,%rsp` instead).
max_frame="${MLSDISK_MAX_FRAME:-4096}"
if [ -n "$objdump_bin" ]; then
	big="$("$objdump_bin" -d --no-show-raw-insn "$moddir/mlsdisk.o" | awk -v max="$max_frame" '
		/^[0-9a-f]+ <.*>:$/ { fn = $2; next }
		/sub +\$0x[0-9a-f]+,%rsp/ {
			match($0, /\$0x[0-9a-f]+/)
			hex = substr($0, RSTART + 3, RLENGTH - 3)
			n = 0
			for (i = 1; i <= length(hex); i++) n = n * 16 + index("0123456789abcdef", substr(hex, i, 1)) - 1
			if (n > max) print n, fn
		}')"
	if [ -n "$big" ]; then
		echo "build-module: stack frames larger than $max_frame bytes:" >&2
		echo "$big" >&2
		die "a function's stack frame is too large for a kernel stack (box the large values)"
	fi
	echo "build-module: largest stack frame within $max_frame bytes"
fi
echo "build-module: built $ko ($(stat -c %s "$ko") bytes)"
