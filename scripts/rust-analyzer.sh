#!/usr/bin/env bash
# SPDX-License-Identifier: MPL-2.0
#
# Writes linux/rust-project.json, so that rust-analyzer understands the
# kernel module: the kernel's own generator (`make M=linux rust-analyzer`,
# scripts/generate_rust_analyzer.py) lists the kernel crates and the
# module's root, linux/mlsdisk_main.rs; it does not know the crates our
# Kbuild links in itself, so this adds them: the engine, `mlsdisk_core`
# (core/src/lib.rs, no_std + alloc, the workspace's edition), and `alloc`
# as a dependency of the module (see linux/Kbuild for why the module
# builds its own `alloc`).
#
#   scripts/rust-analyzer.sh          (make rust-analyzer)
#
# Needs the guest kernel built (make kernel). Open linux/ in an editor
# with rust-analyzer, or run `rust-analyzer diagnostics linux/`.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# shellcheck source=scripts/env.sh
. "$ROOT/scripts/env.sh"

die() {
	echo "rust-analyzer: $*" >&2
	exit 1
}

[ -f "$KDIR/rust/libkernel.rmeta" ] || die "the guest kernel is not built in $KDIR: run 'make kernel' first"

out="$ROOT/linux/rust-project.json"
rm -f "$out"
# shellcheck disable=SC2086 # KMAKE is a command prefix
$KMAKE M="$ROOT/linux" rust-analyzer >/dev/null || die "the kernel's rust-analyzer target failed"
[ -s "$out" ] || die "the kernel's generator wrote no $out"

edition="$(sed -n 's/^edition *= *"\([0-9]*\)".*/\1/p' "$ROOT/Cargo.toml" | head -n 1)"
python3 - "$out" "$ROOT/core/src/lib.rs" "${edition:-2021}" <<'EOF'
import json
import sys

path, core_root, edition = sys.argv[1:4]
with open(path, encoding="utf-8") as fh:
    project = json.load(fh)
crates = project["crates"]
index = {c.get("display_name"): i for i, c in enumerate(crates)}


def need(name):
    if name not in index:
        sys.exit(f"rust-analyzer: the kernel's project has no crate '{name}'")
    return index[name]


module = need("mlsdisk_main")
deps = [{"crate": need("core"), "name": "core"}, {"crate": need("alloc"), "name": "alloc"}]
if "mlsdisk_core" in index:
    engine = index["mlsdisk_core"]
else:
    crates.append(
        {
            "display_name": "mlsdisk_core",
            "root_module": core_root,
            "is_workspace_member": True,
            "deps": deps,
            "cfg": [],
            "edition": edition,
            "env": {},
        }
    )
    engine = len(crates) - 1
have = {d["name"] for d in crates[module]["deps"]}
for crate, name in ((need("alloc"), "alloc"), (engine, "mlsdisk_core")):
    if name not in have:
        crates[module]["deps"].append({"crate": crate, "name": name})
with open(path, "w", encoding="utf-8") as fh:
    json.dump(project, fh, indent=2)
    fh.write("\n")
print(f"rust-analyzer: wrote {path} ({len(crates)} crates, the module and the engine included)")
EOF
