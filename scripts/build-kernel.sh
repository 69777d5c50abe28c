#!/usr/bin/env bash
# Build the guest kernel (bzImage + the state out-of-tree modules need) into
# $KDIR, which is keyed by kernel version + config fragment + rustc version.
# MLSDISK_KERNEL_VARIANT=debug builds the debug kernel instead: the fragment
# qemu/kernel-debug.config merged after qemu/kernel.config, in its own KDIR
# (scripts/env.sh).
# A warm run with the same key does nothing: the stamp is written only after
# a successful build.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=scripts/env.sh
. "$here/env.sh"

JOBS="${JOBS:-$(nproc)}"
read -r -a FRAGMENTS <<<"$MLSDISK_KERNEL_FRAGMENTS"
STAMP="$KDIR/.mlsdisk-built"

log() { printf '[kernel] %s\n' "$*"; }
die() {
	printf '[kernel] ERROR: %s\n' "$*" >&2
	exit 1
}

if [[ -f "$STAMP" && -f "$KDIR/arch/x86/boot/bzImage" ]]; then
	log "cached: $KDIR (key $MLSDISK_KERNEL_KEY), nothing to do"
	exit 0
fi

[[ -f "$KSRC/Makefile" ]] || die "no kernel source at $KSRC; run scripts/install-toolchain.sh (or make toolchain)"
[[ -d "$RUST_LIB_SRC/core" ]] || die "no Rust library source at $RUST_LIB_SRC; run scripts/install-toolchain.sh"
command -v bindgen >/dev/null || die "bindgen not found (expected in $MLSDISK_BINDGEN_ROOT/bin); run scripts/install-toolchain.sh"
command -v "clang$LLVM" >/dev/null || die "clang$LLVM not found; run scripts/install-toolchain.sh"

mkdir -p "$KDIR"
kmake() { make -C "$KSRC" O="$KDIR" LLVM="$LLVM" RUST_LIB_SRC="$RUST_LIB_SRC" "$@"; }

t0=$SECONDS
names=""
for f in "${FRAGMENTS[@]}"; do
	[[ -f "$f" ]] || die "config fragment $f does not exist"
	names+=" + $(basename "$f")"
done
log "configuring in $KDIR (tinyconfig$names)"
kmake -s tinyconfig
(cd "$KDIR" && KCONFIG_CONFIG="$KDIR/.config" "$KSRC/scripts/kconfig/merge_config.sh" -m -O "$KDIR" "$KDIR/.config" "${FRAGMENTS[@]}") >"$KDIR/merge_config.log" 2>&1 ||
	die "merge_config.sh failed, see $KDIR/merge_config.log"
kmake -s olddefconfig

kmake -s rustavailable || die "Rust is not available to the kernel build (see the message above); check rustc, bindgen, LIBCLANG_PATH=$LIBCLANG_PATH and RUST_LIB_SRC"

# Every option set in the fragments must survive olddefconfig, with its
# value; when two fragments set one option, the later one's line is wanted
# (merge_config.sh gives the later fragment the last word too).
declare -A wanted=()
order=()
while IFS= read -r line; do
	case "$line" in
	CONFIG_*=*) opt="${line%%=*}" ;;
	"# CONFIG_"*" is not set")
		opt="${line#\# }"
		opt="${opt%% *}"
		;;
	*) continue ;;
	esac
	[[ -n "${wanted[$opt]+set}" ]] || order+=("$opt")
	wanted[$opt]="$line"
done < <(cat "${FRAGMENTS[@]}")
missing=0
for opt in "${order[@]}"; do
	line="${wanted[$opt]}"
	case "$line" in
	CONFIG_*=*)
		opt="${line%%=*}"
		if ! grep -qxF "$line" "$KDIR/.config"; then
			got="$(grep -E "^(# )?${opt}[= ]" "$KDIR/.config" || echo "absent")"
			printf '[kernel] MISSING: %s (want "%s", got "%s")\n' "$opt" "$line" "$got" >&2
			missing=$((missing + 1))
		fi
		;;
	"# CONFIG_"*" is not set")
		opt="${line#\# }"
		opt="${opt%% *}"
		if grep -qE "^$opt=" "$KDIR/.config"; then
			printf '[kernel] UNWANTED: %s is set, the fragment says not set\n' "$opt" >&2
			missing=$((missing + 1))
		fi
		;;
	esac
done
((missing == 0)) || die "$missing option(s) of the fragments did not survive olddefconfig (a dependency is missing or the option was renamed); fix$names"
log "config ok: all fragment options present (CONFIG_RUST=y) after $((SECONDS - t0)) s"

t1=$SECONDS
log "building bzImage + modules with -j$JOBS (a cold build takes 7-15 min)"
kmake -j"$JOBS" all
log "build took $((SECONDS - t1)) s"

[[ -f "$KDIR/vmlinux" && -f "$KDIR/arch/x86/boot/bzImage" ]] || die "build finished but vmlinux/bzImage are missing"
[[ -f "$KDIR/rust/libkernel.rmeta" ]] || die "build finished but rust/libkernel.rmeta is missing (Rust support not built)"
date -u +%FT%TZ >"$STAMP"
log "done: $KDIR/arch/x86/boot/bzImage (total $((SECONDS - t0)) s)"
