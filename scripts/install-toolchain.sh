#!/usr/bin/env bash
# Install everything the guest kernel, the module and the QEMU harness need.
# Idempotent: each finished step leaves a stamp in $MLSDISK_CACHE/stamps and is
# skipped next time. Does not change the system's apt configuration: the
# trixie-backports packages are fetched with a private sources file.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=scripts/env.sh
. "$here/env.sh"

STAMPS="$MLSDISK_CACHE/stamps"
mkdir -p "$STAMPS"

log() { printf '[toolchain] %s\n' "$*"; }
# fail STEP PACKAGE FIX
fail() {
	printf '[toolchain] ERROR in step "%s" (package: %s)\n[toolchain] fix: %s\n' "$1" "$2" "$3" >&2
	exit 1
}
done_stamp() { [[ -f "$STAMPS/$1" ]]; }
stamp() { date -u +%FT%TZ >"$STAMPS/$1"; }

SUDO=()
if [[ $(id -u) -ne 0 ]]; then
	command -v sudo >/dev/null || fail "privileges" "sudo" "run as root or install sudo"
	SUDO=(sudo)
fi

t0=$SECONDS

# --- 1. host packages from the configured (bookworm) suites -------------------
step_host_packages() {
	local key missing=()
	key="host-packages-$(printf '%s\n' "${MLSDISK_HOST_PACKAGES[@]}" | sha256sum | cut -c1-12)"
	if done_stamp "$key"; then
		log "host packages: already installed"
		return
	fi
	local p
	for p in "${MLSDISK_HOST_PACKAGES[@]}"; do
		dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
	done
	if ((${#missing[@]})); then
		log "host packages: installing ${missing[*]}"
		DEBIAN_FRONTEND=noninteractive "${SUDO[@]}" apt-get update -q ||
			fail "host packages: apt-get update" "-" "check network access and /etc/apt/sources.list.d/"
		DEBIAN_FRONTEND=noninteractive "${SUDO[@]}" apt-get install -y -q --no-install-recommends "${missing[@]}" ||
			fail "host packages: apt-get install" "${missing[*]}" \
				"check that these exist in bookworm (apt-cache policy <pkg>); if a name changed, edit MLSDISK_HOST_PACKAGES in scripts/versions.sh"
	fi
	for p in "${MLSDISK_HOST_PACKAGES[@]}"; do
		dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" ||
			fail "host packages: verify" "$p" "apt-get install $p"
	done
	command -v "clang-$MLSDISK_LLVM_MAJOR" >/dev/null ||
		fail "host packages: verify" "clang-$MLSDISK_LLVM_MAJOR" "apt-get install clang-$MLSDISK_LLVM_MAJOR"
	stamp "$key"
}

# --- 2. rustc (rustup) ---------------------------------------------------------
step_rustc() {
	local have
	if command -v rustup >/dev/null 2>&1 && ! rustup run "$MLSDISK_RUSTC_VERSION" rustc --version >/dev/null 2>&1; then
		log "rustc: rustup toolchain install $MLSDISK_RUSTC_VERSION"
		rustup toolchain install "$MLSDISK_RUSTC_VERSION" --profile minimal --component clippy,rustfmt ||
			fail "rustc" "rust $MLSDISK_RUSTC_VERSION (rustup)" "check network access; run: rustup toolchain install $MLSDISK_RUSTC_VERSION"
	fi
	have="$(rustc --version 2>/dev/null | awk '{print $2}')" || true
	if [[ "$have" != "$MLSDISK_RUSTC_VERSION" ]]; then
		fail "rustc" "rustc $MLSDISK_RUSTC_VERSION" \
			"install rustup (https://rustup.rs), then run: rustup toolchain install $MLSDISK_RUSTC_VERSION --component clippy,rustfmt (found: '${have:-none}')"
	fi
	cargo clippy --version >/dev/null 2>&1 ||
		fail "rustc" "clippy" "rustup component add clippy"
	cargo fmt --version >/dev/null 2>&1 ||
		fail "rustc" "rustfmt" "rustup component add rustfmt"
	log "rustc $have (with clippy, rustfmt): ok"
}

# --- 3. trixie-backports packages, fetched without touching the system apt ----
step_backports() {
	local key="backports-$MLSDISK_LINUX_SOURCE_DEBVER-$MLSDISK_RUST_SRC_DEBVER"
	if done_stamp "$key"; then
		log "linux-source + rust-src: already unpacked"
		return
	fi
	local apt_dir="$MLSDISK_CACHE/apt" debs="$MLSDISK_CACHE/debs" uri
	mkdir -p "$apt_dir/lists/partial" "$debs"
	uri="$(grep -hE '^URIs:.*debian/?$' /etc/apt/sources.list.d/*.sources 2>/dev/null | head -n1 | awk '{print $2}')" || true
	[[ -n "$uri" ]] || uri="$(grep -hE '^deb .*debian/? ' /etc/apt/sources.list 2>/dev/null | head -n1 | awk '{print $2}')" || true
	[[ -n "$uri" ]] || uri="http://deb.debian.org/debian"
	cat >"$apt_dir/sources" <<SRC
deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] $uri $MLSDISK_BACKPORTS_SUITE main
SRC
	local apt=(-o "Dir::Etc::sourcelist=$apt_dir/sources" -o Dir::Etc::sourceparts=/dev/null
		-o "Dir::State::Lists=$apt_dir/lists" -o "Dir::Cache=$apt_dir/cache" -o APT::Get::List-Cleanup=0)
	# The private folders belong to the caller; as root, do not hand them to _apt.
	if [[ $(id -u) -eq 0 ]]; then apt+=(-o APT::Sandbox::User=root); fi
	mkdir -p "$apt_dir/cache/archives/partial"
	log "backports: apt-get update ($MLSDISK_BACKPORTS_SUITE from $uri, private lists in $apt_dir)"
	apt-get "${apt[@]}" update -q ||
		fail "backports: apt-get update" "$MLSDISK_BACKPORTS_SUITE index" \
			"check network access to $uri and that /usr/share/keyrings/debian-archive-keyring.gpg exists (apt-get install debian-archive-keyring)"
	local pkg ver
	for pkg in "$MLSDISK_LINUX_SOURCE_PKG=$MLSDISK_LINUX_SOURCE_DEBVER" "$MLSDISK_RUST_SRC_PKG=$MLSDISK_RUST_SRC_DEBVER"; do
		if ! ls "$debs/${pkg%%=*}_"*.deb >/dev/null 2>&1; then
			log "backports: downloading $pkg"
			(cd "$debs" && apt-get "${apt[@]}" download "$pkg") || {
				ver="$(apt-cache "${apt[@]}" policy "${pkg%%=*}" 2>/dev/null | awk '/Candidate:/{print $2}')" || true
				fail "backports: apt-get download" "$pkg" \
					"the pinned version may be gone from $MLSDISK_BACKPORTS_SUITE (candidate now: ${ver:-none}); update the version in scripts/versions.sh (and check it still builds)"
			}
		fi
	done
	log "backports: unpacking rust-src"
	local rs="$MLSDISK_CACHE/rust-src-$MLSDISK_RUST_SRC_DEBVER"
	rm -rf "$rs.tmp" && mkdir -p "$rs.tmp"
	dpkg -x "$debs/${MLSDISK_RUST_SRC_PKG}_"*.deb "$rs.tmp" ||
		fail "backports: dpkg -x" "$MLSDISK_RUST_SRC_PKG" "delete $debs/${MLSDISK_RUST_SRC_PKG}_*.deb and run again"
	[[ -f "$rs.tmp/usr/src/$MLSDISK_RUST_SRC_DIR/library/core/src/lib.rs" ]] ||
		fail "backports: unpack" "$MLSDISK_RUST_SRC_PKG" "the package layout changed: set MLSDISK_RUST_SRC_DIR in scripts/versions.sh"
	rm -rf "$rs" && mv "$rs.tmp" "$rs"

	log "backports: unpacking linux-source (about 1.8 GB)"
	local ks="$MLSDISK_CACHE/src" tmp="$MLSDISK_CACHE/src/.tmp"
	rm -rf "$tmp" "$KSRC" && mkdir -p "$tmp"
	dpkg -x "$debs/${MLSDISK_LINUX_SOURCE_PKG}_"*.deb "$tmp/deb" ||
		fail "backports: dpkg -x" "$MLSDISK_LINUX_SOURCE_PKG" "delete $debs/${MLSDISK_LINUX_SOURCE_PKG}_*.deb and run again"
	tar -xJf "$tmp/deb/usr/src/$MLSDISK_LINUX_SOURCE_PKG.tar.xz" -C "$ks" ||
		fail "backports: untar kernel" "$MLSDISK_LINUX_SOURCE_PKG" "check free disk space in $MLSDISK_CACHE (needs ~2 GB)"
	rm -rf "$tmp"
	[[ -f "$KSRC/Makefile" ]] ||
		fail "backports: unpack" "$MLSDISK_LINUX_SOURCE_PKG" "expected $KSRC/Makefile; the tarball layout changed"
	stamp "$key"
}

# --- 4. bindgen ----------------------------------------------------------------
step_bindgen() {
	local key="bindgen-$MLSDISK_BINDGEN_VERSION"
	if done_stamp "$key" && [[ -x "$MLSDISK_BINDGEN_ROOT/bin/bindgen" ]]; then
		log "bindgen $MLSDISK_BINDGEN_VERSION: already installed"
		return
	fi
	log "bindgen: cargo install bindgen-cli $MLSDISK_BINDGEN_VERSION"
	cargo install --locked bindgen-cli --version "$MLSDISK_BINDGEN_VERSION" --root "$MLSDISK_BINDGEN_ROOT" ||
		fail "bindgen: cargo install" "bindgen-cli $MLSDISK_BINDGEN_VERSION" \
			"check network access to crates.io; if the version was yanked pick another >= 0.71.1 in scripts/versions.sh"
	"$MLSDISK_BINDGEN_ROOT/bin/bindgen" --version | grep -q "$MLSDISK_BINDGEN_VERSION" ||
		fail "bindgen: verify" "bindgen-cli" "remove $MLSDISK_BINDGEN_ROOT and run again"
	stamp "$key"
}

step_host_packages
step_rustc
step_backports
step_bindgen
log "done in $((SECONDS - t0)) s (cache: $MLSDISK_CACHE)"
