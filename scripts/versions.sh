# shellcheck shell=bash
# shellcheck disable=SC2034  # sourced: these are used by the scripts that source it
# Every pinned version of the MlsDisk guest toolchain, in one place.
# Sourced by scripts/env.sh and scripts/install-toolchain.sh; only assignments.
# They were chosen to fit together: Debian trixie-backports ships linux-source-7.3 and
# rust-src 1.95.0, which match rustup's rustc 1.95.0 and clang-19 (scripts/install-toolchain.sh).

# Guest kernel: Debian's linux-source package from trixie-backports.
MLSDISK_KERNEL_VERSION=7.3.4
MLSDISK_KERNEL_SERIES=7.3
MLSDISK_LINUX_SOURCE_PKG=linux-source-7.3
MLSDISK_LINUX_SOURCE_DEBVER=7.3.4-1~bpo13+1

# Rust library source matching rustc (RUST_LIB_SRC), from trixie-backports.
MLSDISK_RUST_SRC_PKG=rust-src
MLSDISK_RUST_SRC_DEBVER=1.95.0+dfsg1-2~bpo13+1
MLSDISK_RUST_SRC_DIR=rustc-1.95.0

# The Debian suite both of the above come from (same archive as the system's).
MLSDISK_BACKPORTS_SUITE=trixie-backports

# rustc (from rustup; must match rust-src's version).
MLSDISK_RUSTC_VERSION=1.95.0

# bindgen (crates.io bindgen-cli, installed into the cache).
MLSDISK_BINDGEN_VERSION=0.73.2

# clang / lld / llvm / libclang major version (bookworm). Kernel builds use LLVM=-19.
MLSDISK_LLVM_MAJOR=19

# Host packages from the configured bookworm suites (versions: whatever bookworm ships).
MLSDISK_HOST_PACKAGES=(
	qemu-system-x86 busybox-static e2fsprogs fio dmsetup keyutils
	"clang-${MLSDISK_LLVM_MAJOR}" "lld-${MLSDISK_LLVM_MAJOR}" "llvm-${MLSDISK_LLVM_MAJOR}"
	"libclang-${MLSDISK_LLVM_MAJOR}-dev"
	make gcc libc6-dev flex bison bc cpio libelf-dev libssl-dev kmod xz-utils
	python3 rsync file coreutils util-linux
)

# cargo-fuzz (crates.io), for `make fuzz` only (scripts/install-fuzz.sh).
MLSDISK_CARGO_FUZZ_VERSION=0.13.2
