#!/usr/bin/env bash
# Install what `make fuzz` needs: cargo-fuzz (crates.io, pinned in
# scripts/versions.sh) and a C++ compiler for libFuzzer, which the
# libfuzzer-sys crate compiles. Idempotent: a cargo-fuzz of the pinned
# version already on PATH or in the cache is kept. Nothing here needs a
# nightly toolchain: the targets are built with `-s none` (see fuzz/README.md).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=scripts/env.sh
. "$here/env.sh"

log() { printf '[install-fuzz] %s\n' "$*"; }
fail() {
	printf '[install-fuzz] ERROR: %s\n[install-fuzz] fix: %s\n' "$1" "$2" >&2
	exit 1
}

root="$MLSDISK_CACHE/cargo-fuzz-$MLSDISK_CARGO_FUZZ_VERSION"

# 1. A C++ compiler (libFuzzer is C++).
if ! command -v c++ >/dev/null 2>&1; then
	log "installing g++ (apt)"
	SUDO=()
	[[ $(id -u) -eq 0 ]] || SUDO=(sudo)
	DEBIAN_FRONTEND=noninteractive "${SUDO[@]}" apt-get update -q ||
		fail "apt-get update" "check network access to the Debian archive"
	DEBIAN_FRONTEND=noninteractive "${SUDO[@]}" apt-get install -y -q --no-install-recommends g++ ||
		fail "apt-get install g++" "install a C++ compiler (g++ or clang++) by hand"
fi

# 2. cargo-fuzz of the pinned version.
have() { "$1" fuzz --version 2>/dev/null | awk '{print $2}'; }
if [[ "$(have cargo)" == "$MLSDISK_CARGO_FUZZ_VERSION" ]]; then
	log "cargo-fuzz $MLSDISK_CARGO_FUZZ_VERSION: already on PATH"
elif [[ -x "$root/bin/cargo-fuzz" ]]; then
	log "cargo-fuzz $MLSDISK_CARGO_FUZZ_VERSION: already in $root"
else
	log "cargo install cargo-fuzz $MLSDISK_CARGO_FUZZ_VERSION (into $root)"
	cargo install --locked cargo-fuzz --version "$MLSDISK_CARGO_FUZZ_VERSION" --root "$root" ||
		fail "cargo install cargo-fuzz" "check network access to crates.io; pick another version in scripts/versions.sh"
	"$root/bin/cargo-fuzz" fuzz --version | grep -q "$MLSDISK_CARGO_FUZZ_VERSION" ||
		fail "cargo-fuzz does not run" "remove $root and run again"
fi
log "done"
