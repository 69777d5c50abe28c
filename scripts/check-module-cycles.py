#!/usr/bin/env python3
"""Fails when the modules of a Rust source tree depend on each other in a
cycle (issue 12: "no circular module dependency in linux/ or core/").

    scripts/check-module-cycles.py core/src linux
    scripts/check-module-cycles.py --self-test

Reads every `.rs` file below each root as text: the module path comes from
the file's place (`a/b.rs` and `a/b/mod.rs` are `a::b`; `lib.rs`, `mod.rs`
and `mlsdisk_main.rs` at the root are the crate), and its dependencies
from the `crate::`, `super::` and `self::` paths in its code (comments and
`#[cfg(test)] mod tests` blocks left out). A dependency of `a::x::y` on
`a::z` is an edge between the siblings `a::x` and `a::z`; any cycle among
siblings is reported with the files that make it. Paths named only in
macros or through `use` of a re-export are seen as written, which is what
a reader follows too.
"""

import os
import re
import sys

ROOT_FILES = {"lib", "mod", "mlsdisk_main"}
PATH = re.compile(r"\b((?:crate|super|self)(?:::[A-Za-z_][A-Za-z0-9_]*)+)")
TESTS = re.compile(r"#\[cfg\(test\)\]\s*mod tests\s*\{.*", re.S)
LINE_COMMENT = re.compile(r"//[^\n]*")


def modules(root):
    """Module path (tuple) -> file."""
    out = {}
    for d, _, files in os.walk(root):
        for f in files:
            if not f.endswith(".rs"):
                continue
            p = os.path.join(d, f)
            parts = tuple(os.path.relpath(p, root)[:-3].split(os.sep))
            if parts[-1] in ROOT_FILES:
                parts = parts[:-1]
            out[parts] = p
    return out


def resolve(mods, cur, path):
    """The module a `crate::`/`super::`/`self::` path in module `cur`
    names (its longest prefix that is a module), or None."""
    parts = path.split("::")
    if parts[0] == "crate":
        base, parts = (), parts[1:]
    else:
        base = cur
        while parts and parts[0] in ("super", "self"):
            if parts[0] == "super":
                base = base[:-1]
            parts = parts[1:]
    full = base + tuple(parts)
    for n in range(len(full), -1, -1):
        if full[:n] in mods:
            return full[:n]
    return None


def sibling_edges(mods):
    """(a, b) -> example file, for sibling modules a, b where code in a
    uses b."""
    edges = {}
    for m, p in mods.items():
        with open(p, encoding="utf-8") as fh:
            text = LINE_COMMENT.sub("", TESTS.sub("", fh.read()))
        for path in PATH.findall(text):
            t = resolve(mods, m, path)
            if t is None:
                continue
            n = 0
            while n < min(len(m), len(t)) and m[n] == t[n]:
                n += 1
            if n >= len(m) or n >= len(t):
                continue  # an ancestor or a descendant, not a sibling
            edges.setdefault((m[: n + 1], t[: n + 1]), p)
    return edges


def cycles(edges):
    """Every elementary cycle's node list, found by depth-first search
    (each reported once, from its smallest node)."""
    graph = {}
    for a, b in edges:
        graph.setdefault(a, set()).add(b)
    found = []

    def walk(start, node, path, seen):
        for nxt in sorted(graph.get(node, ())):
            if nxt == start:
                found.append(path[:])
            elif nxt not in seen and nxt > start:
                seen.add(nxt)
                path.append(nxt)
                walk(start, nxt, path, seen)
                path.pop()
                seen.discard(nxt)

    for s in sorted(graph):
        walk(s, s, [s], {s})
    return found


def check(root):
    edges = sibling_edges(modules(root))
    bad = cycles(edges)
    for c in bad:
        ring = c + [c[0]]
        steps = [
            "{} -> {} ({})".format(
                "::".join(a) or "crate", "::".join(b), edges[(a, b)]
            )
            for a, b in zip(ring, ring[1:])
        ]
        print("cycle in {}: {}".format(root, "; ".join(steps)))
    return not bad


def self_test():
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        os.makedirs(os.path.join(d, "a"))
        files = {
            "lib.rs": "mod a;\nmod b;\n",
            "a/mod.rs": "mod x;\nmod y;\n",
            "a/x.rs": "use super::y::Y; // crate::b in a comment\n",
            "a/y.rs": "use crate::b::B;\n",
            "b.rs": "use crate::a::x::X;\n#[cfg(test)]\nmod tests {\n use crate::a::y;\n}\n",
        }
        for name, text in files.items():
            with open(os.path.join(d, name), "w", encoding="utf-8") as fh:
                fh.write(text)
        # a -> b (a::y uses b) and b -> a (b uses a::x): one cycle.
        edges = sibling_edges(modules(d))
        assert (("a",), ("b",)) in edges and (("b",), ("a",)) in edges, edges
        assert (("a", "x"), ("a", "y")) in edges, edges
        assert len(cycles(edges)) == 1, cycles(edges)
        assert not check(d)
        with open(os.path.join(d, "b.rs"), "w", encoding="utf-8") as fh:
            fh.write("pub struct B;\n")
        assert check(d)
    print("check-module-cycles: self-test ok")
    return True


def main(args):
    if args == ["--self-test"]:
        return 0 if self_test() else 1
    if not args:
        print(__doc__.strip().splitlines()[0])
        return 2
    ok = all([check(r) for r in args])
    if ok:
        print("check-module-cycles: no cycle in " + ", ".join(args))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
