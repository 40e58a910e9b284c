#!/usr/bin/env python3
"""Draw which top-level module of `observer/src` uses which, and find cycles.

Reads every `.rs` file under `observer/src`, attributes it to its top-level
module (`cli/flows.rs` -> `cli`, `state.rs` -> `state`), and collects the
top-level names it reaches through `crate::` paths, including the ones inside
`use crate::{a::b, c::{d, e}}` groups. Test code counts too (a `#[cfg(test)]`
module importing upward is still a cycle to a reader).

With `--within MOD` (a directory module such as `lab`), the same for the
files of MOD, through `super::` and `crate::MOD::` paths.

Usage: scripts/imports.py [--dot] [--files] [--within MOD]   (run from the repository root)
  --files  also list, per edge, the files that make it
  --dot    print Graphviz instead of text
Exits 1 if there is a cycle between top-level modules.
"""

import re
import sys
from collections import defaultdict
from pathlib import Path

SRC = Path("observer/src")


def top_module(path: Path) -> str | None:
    rel = path.relative_to(SRC)
    if rel.parts[0] == "bin" or rel.name in ("lib.rs", "main.rs"):
        return None
    return rel.parts[0].removesuffix(".rs")


def strip_comments(text: str) -> str:
    text = re.sub(r"/\*.*?\*/", "", text, flags=re.S)
    return re.sub(r"//[^\n]*", "", text)


def group_heads(body: str) -> list[str]:
    """The first path segment of each item of a `{...}` use group."""
    heads, depth, item = [], 0, ""
    for ch in body + ",":
        if ch == "{":
            depth += 1
        elif ch == "}":
            depth -= 1
        if ch == "," and depth == 0:
            name = re.match(r"\s*([A-Za-z_][A-Za-z0-9_]*)", item)
            if name:
                heads.append(name.group(1))
            item = ""
        else:
            item += ch
    return heads


def uses(text: str, prefix: str = "crate::") -> set[str]:
    text = strip_comments(text)
    found = set()
    i = 0
    while True:
        i = text.find(prefix, i)
        if i < 0:
            return found
        if prefix == "super::" and text[max(0, i - 7) : i].endswith("super::"):
            i += len(prefix)
            continue
        i += len(prefix)
        if text.startswith("{", i):
            depth, j = 0, i
            while True:
                if text[j] == "{":
                    depth += 1
                elif text[j] == "}":
                    depth -= 1
                    if depth == 0:
                        break
                j += 1
            found.update(group_heads(text[i + 1 : j]))
            i = j
        else:
            name = re.match(r"[A-Za-z_][A-Za-z0-9_]*", text[i:])
            if name:
                found.add(name.group(0))


def main() -> int:
    edges = defaultdict(lambda: defaultdict(set))
    if "--within" in sys.argv:
        parent = sys.argv[sys.argv.index("--within") + 1]
        files = sorted((SRC / parent).glob("*.rs"))
        modules = {p.stem for p in files} - {"mod"}
        for path in files:
            src = path.stem
            text = path.read_text()
            found = uses(text, f"crate::{parent}::")
            if src == "mod":
                found |= uses(text, "self::")
            else:
                found |= uses(text, "super::")
            for dst in found:
                if dst in modules and dst != src:
                    edges[src][dst].add(path.name)
        modules |= {"mod"}
    else:
        modules = {top_module(p) for p in SRC.rglob("*.rs")} - {None}
        for path in sorted(SRC.rglob("*.rs")):
            src = top_module(path)
            if src is None:
                continue
            for dst in uses(path.read_text()):
                if dst in modules and dst != src:
                    edges[src][dst].add(str(path.relative_to(SRC)))

    if "--dot" in sys.argv:
        print("digraph imports {")
        for src in sorted(edges):
            for dst in sorted(edges[src]):
                print(f'  "{src}" -> "{dst}";')
        print("}")
    else:
        for src in sorted(modules):
            print(f"{src:9} -> {', '.join(sorted(edges[src])) or '(nothing)'}")
            if "--files" in sys.argv:
                for dst in sorted(edges[src]):
                    print(f"{'':13}{dst}: {', '.join(sorted(edges[src][dst]))}")

    # Cycles: strongly connected components with more than one module.
    index, low, stack, on, sccs, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in edges[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                sccs.append(sorted(comp))

    for v in sorted(modules):
        if v not in index:
            visit(v)
    for comp in sccs:
        print("cycle among:", ", ".join(comp), file=sys.stderr)
    if not sccs:
        print("no cycles", file=sys.stderr)
    return 1 if sccs else 0


if __name__ == "__main__":
    sys.exit(main())
