# shellcheck shell=bash
# Source this file (". scripts/env.sh"): it only sets and exports variables.
#
#   MLSDISK_CACHE  cache root (default ~/.cache/mlsdisk)
#   KSRC           unpacked kernel source tree
#   KDIR           kernel build output (O=) dir, keyed by kernel version,
#                  config fragment hash and rustc version
#   MLSDISK_KERNEL_VARIANT  "" (default) or "debug": debug adds the fragment
#                  qemu/kernel-debug.config on top of qemu/kernel.config
#                  (lockdep, KASAN, ...), in its own KDIR with its own key;
#                  the default key and KDIR do not depend on this variable
#   MLSDISK_KERNEL_FRAGMENTS  the fragments merged, in order
#   MLSDISK_MODULE_DIR  the Kbuild M= folder where build-module.sh builds
#                  mlsdisk.ko: linux/ itself for the default kernel; for the
#                  debug one a copy of linux/ in build/module-debug/linux (so
#                  neither build clobbers the other's objects)
#   RUST_LIB_SRC   Rust library source matching rustc (for the kernel's core/alloc)
#   LIBCLANG_PATH, LLVM, PATH (with the cache's bindgen)
#   KMAKE          make prefix for the kernel, e.g. "$KMAKE M=$PWD/linux modules"

MLSDISK_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# shellcheck source=scripts/versions.sh
. "$MLSDISK_ROOT/scripts/versions.sh"

MLSDISK_CACHE="${MLSDISK_CACHE:-$HOME/.cache/mlsdisk}"
KSRC="$MLSDISK_CACHE/src/linux-source-$MLSDISK_KERNEL_SERIES"
RUST_LIB_SRC="$MLSDISK_CACHE/rust-src-$MLSDISK_RUST_SRC_DEBVER/usr/src/$MLSDISK_RUST_SRC_DIR/library"
LIBCLANG_PATH="/usr/lib/llvm-$MLSDISK_LLVM_MAJOR/lib"
LLVM="-$MLSDISK_LLVM_MAJOR"
MLSDISK_BINDGEN_ROOT="$MLSDISK_CACHE/bindgen-$MLSDISK_BINDGEN_VERSION"

# The kernel's Rust side must be built by exactly the rustc that matches
# rust-src: pin rustup's toolchain for everything that sources this file.
if command -v rustup >/dev/null 2>&1; then
	RUSTUP_TOOLCHAIN="${RUSTUP_TOOLCHAIN:-$MLSDISK_RUSTC_VERSION}"
	export RUSTUP_TOOLCHAIN
fi

MLSDISK_KERNEL_VARIANT="${MLSDISK_KERNEL_VARIANT:-}"
case "$MLSDISK_KERNEL_VARIANT" in
"" | default)
	MLSDISK_KERNEL_VARIANT=""
	MLSDISK_KERNEL_FRAGMENTS="$MLSDISK_ROOT/qemu/kernel.config"
	MLSDISK_MODULE_DIR="$MLSDISK_ROOT/linux"
	;;
debug)
	MLSDISK_KERNEL_FRAGMENTS="$MLSDISK_ROOT/qemu/kernel.config $MLSDISK_ROOT/qemu/kernel-debug.config"
	MLSDISK_MODULE_DIR="$MLSDISK_ROOT/build/module-debug/linux"
	;;
*)
	echo "scripts/env.sh: MLSDISK_KERNEL_VARIANT must be empty or debug, not '$MLSDISK_KERNEL_VARIANT'" >&2
	return 1 2>/dev/null || exit 1
	;;
esac

# Cache key of the kernel build: fragment contents + kernel + rustc + bindgen + llvm.
# The default variant's input is exactly what it was before variants existed
# (its cached kernel stays valid); a variant adds its fragment and its name.
MLSDISK_RUSTC_ID="$(rustc --version 2>/dev/null || echo no-rustc)"
MLSDISK_KERNEL_KEY="$( {
	cat "$MLSDISK_ROOT/qemu/kernel.config" 2>/dev/null || echo no-fragment
	if [[ -n "$MLSDISK_KERNEL_VARIANT" ]]; then
		echo "variant $MLSDISK_KERNEL_VARIANT"
		cat "$MLSDISK_ROOT/qemu/kernel-$MLSDISK_KERNEL_VARIANT.config" 2>/dev/null || echo no-variant-fragment
	fi
	echo "$MLSDISK_LINUX_SOURCE_DEBVER"
	echo "$MLSDISK_RUST_SRC_DEBVER"
	echo "$MLSDISK_RUSTC_ID"
	echo "bindgen $MLSDISK_BINDGEN_VERSION llvm $MLSDISK_LLVM_MAJOR"
} | sha256sum | cut -c1-12)"
KDIR="$MLSDISK_CACHE/kernel/$MLSDISK_KERNEL_VERSION${MLSDISK_KERNEL_VARIANT:+-$MLSDISK_KERNEL_VARIANT}-$MLSDISK_KERNEL_KEY"

case ":$PATH:" in
*":$MLSDISK_BINDGEN_ROOT/bin:"*) ;;
*) PATH="$MLSDISK_BINDGEN_ROOT/bin:$PATH" ;;
esac

KMAKE="make -C $KSRC O=$KDIR LLVM=$LLVM RUST_LIB_SRC=$RUST_LIB_SRC"

export MLSDISK_ROOT MLSDISK_CACHE KSRC KDIR RUST_LIB_SRC LIBCLANG_PATH LLVM PATH KMAKE
export MLSDISK_KERNEL_KEY MLSDISK_BINDGEN_ROOT
export MLSDISK_KERNEL_VARIANT MLSDISK_KERNEL_FRAGMENTS MLSDISK_MODULE_DIR
