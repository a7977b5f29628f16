#!/usr/bin/env python3
"""Fails when modules inside a crate import each other in a cycle.

Rule: at every level of a crate's module tree, the sibling modules form a directed acyclic graph.
An edge A -> B between siblings exists when any file under A names anything under B through a
`crate::`, `super::` or `self::` path (in `use` trees, inline paths and intra-doc links),
following `pub use` re-exports to the module that defines the name. A parent and its own children may use each other
(that is what `mod` and `pub use` are for); the check is about siblings.

Usage: scripts/check_module_cycles.py [CRATE_DIR ...]   (default: every crate under crates/)
Prints each cycle with one file and path per edge as evidence, and exits 1 if there is any.
"""
import re
import sys
from pathlib import Path

IDENT = r"[A-Za-z_][A-Za-z0-9_]*"
PATH_RE = re.compile(rf"\b(crate|super|self)((?:\s*::\s*{IDENT})+)")
USE_RE = re.compile(r"\b(?:pub(?:\([^)]*\))?\s+)?use\s+([^;]+);", re.S)
MOD_RE = re.compile(rf"^\s*(?:pub(?:\([^)]*\))?\s+)?mod\s+({IDENT})\s*;", re.M)


def strip_comments_and_strings(src: str) -> str:
    # Doc comments stay: their intra-doc links (`[`x`](crate::m::X)`) are dependencies too.
    src = re.sub(r"//(?![/!])[^\n]*", "", src)
    src = re.sub(r"/\*.*?\*/", "", src, flags=re.S)
    src = re.sub(r'r#*"(?:.|\n)*?"#*', '""', src)
    return re.sub(r'"(?:\\.|[^"\\])*"', '""', src)


def expand_use_tree(tree: str) -> list[str]:
    """`a::{b, c::{d, e}}` -> ['a::b', 'a::c::d', 'a::c::e'] (aliases and globs dropped)."""
    tree = re.sub(r"\s+", "", tree)
    out: list[str] = []

    def walk(prefix: str, s: str) -> None:
        depth, start, parts = 0, 0, []
        for i, ch in enumerate(s):
            if ch == "{":
                depth += 1
            elif ch == "}":
                depth -= 1
            elif ch == "," and depth == 0:
                parts.append(s[start:i])
                start = i + 1
        parts.append(s[start:])
        for part in filter(None, parts):
            brace = part.find("{")
            if brace >= 0:
                walk(prefix + part[:brace], part[brace + 1 : part.rfind("}")])
            else:
                part = part.split("as")[0] if re.search(r"\bas\b", part) else part
                part = re.sub(r"(::)?\*$", "", part)
                if part == "self":
                    part = ""
                out.append((prefix + part).rstrip(":"))

    walk("", tree)
    return out


class Crate:
    def __init__(self, root: Path):
        self.root = root
        self.files: dict[tuple[str, ...], Path] = {}
        self.reexports: dict[tuple[str, ...], dict[str, tuple[str, ...]]] = {}
        for entry in ("lib.rs", "main.rs"):
            if (root / "src" / entry).exists():
                self._collect((), root / "src" / entry)

    def _collect(self, module: tuple[str, ...], file: Path) -> None:
        self.files[module] = file
        src = strip_comments_and_strings(file.read_text())
        directory = file.parent if file.name in ("lib.rs", "main.rs", "mod.rs") else file.with_suffix("")
        for name in MOD_RE.findall(src):
            for candidate in (directory / f"{name}.rs", directory / name / "mod.rs"):
                if candidate.exists():
                    self._collect(module + (name,), candidate)
                    break

    def module_of(self, path: tuple[str, ...]) -> tuple[tuple[str, ...], list[str]]:
        for cut in range(len(path), -1, -1):
            if path[:cut] in self.files:
                return path[:cut], list(path[cut:])
        return (), list(path)

    def absolute(self, here: tuple[str, ...], head: str, rest: list[str]) -> tuple[str, ...]:
        base = () if head == "crate" else here
        while rest and rest[0] == "super":
            base = base[:-1]
            rest = rest[1:]
        if head == "super":
            base = base[:-1]
        return base + tuple(rest)

    def paths_in(self, module: tuple[str, ...]) -> list[tuple[str, ...]]:
        src = strip_comments_and_strings(self.files[module].read_text())
        found = []
        for tree in USE_RE.findall(src):
            for path in expand_use_tree(tree):
                segs = path.split("::")
                if segs[0] in ("crate", "super", "self"):
                    found.append(self.absolute(module, segs[0], segs[1:]))
        for head, rest in PATH_RE.findall(src):
            found.append(self.absolute(module, head, re.sub(r"\s", "", rest).split("::")[1:]))
        return found

    def resolve(self, path: tuple[str, ...], seen: int = 0) -> tuple[str, ...]:
        """The module that defines what `path` names, following `pub use` re-exports."""
        module, rest = self.module_of(path)
        if rest and seen < 8:
            target = self.reexports_of(module).get(rest[0])
            if target is not None:
                return self.resolve(target + tuple(rest[1:]), seen + 1)
        return module

    def reexports_of(self, module: tuple[str, ...]) -> dict[str, tuple[str, ...]]:
        if module not in self.reexports:
            self.reexports[module] = {}
            src = strip_comments_and_strings(self.files[module].read_text())
            for tree in re.findall(r"\bpub(?:\([^)]*\))?\s+use\s+([^;]+);", src, re.S):
                for path in expand_use_tree(tree):
                    segs = path.split("::")
                    if segs[0] in ("crate", "super", "self"):
                        absolute = self.absolute(module, segs[0], segs[1:])
                    else:  # 2018-style relative path: a child module of this one
                        absolute = module + tuple(segs)
                    if absolute:
                        self.reexports[module][absolute[-1]] = absolute
        return self.reexports[module]

    def sibling_edges(self) -> dict[tuple[str, ...], dict[tuple[str, str], str]]:
        """parent -> {(child_a, child_b): evidence}."""
        edges: dict[tuple[str, ...], dict[tuple[str, str], str]] = {}
        for module, file in self.files.items():
            for path in self.paths_in(module):
                target = self.resolve(path)
                common = 0
                while common < min(len(module), len(target)) and module[common] == target[common]:
                    common += 1
                if common == len(module) or common == len(target):
                    continue  # ancestor and descendant
                parent = module[:common]
                key = (module[common], target[common])
                evidence = f"{file.relative_to(self.root)} uses {'::'.join(path)}"
                edges.setdefault(parent, {}).setdefault(key, evidence)
        return edges


def find_cycles(edges: dict[tuple[str, str], str]) -> list[list[str]]:
    graph: dict[str, list[str]] = {}
    for a, b in edges:
        graph.setdefault(a, []).append(b)
    index, low, stack, on_stack, sccs, counter = {}, {}, [], set(), [], [0]

    def strongconnect(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, []):
            if w not in index:
                strongconnect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                sccs.append(sorted(component))

    sys.setrecursionlimit(10000)
    for v in list(graph):
        if v not in index:
            strongconnect(v)
    return sccs


def main() -> int:
    repo = Path(__file__).resolve().parent.parent
    crates = [Path(p) for p in sys.argv[1:]] or sorted(p.parent for p in repo.glob("crates/*/Cargo.toml"))
    failed = False
    for crate_dir in crates:
        crate = Crate(crate_dir)
        for parent, edges in sorted(crate.sibling_edges().items()):
            for component in find_cycles(edges):
                failed = True
                where = "::".join(("crate",) + parent)
                print(f"{crate_dir.name}: cycle among the modules of {where}: {', '.join(component)}")
                members = set(component)
                for (a, b), evidence in sorted(edges.items()):
                    if a in members and b in members:
                        print(f"    {a} -> {b}: {evidence}")
        print(f"{crate_dir.name}: {len(crate.files)} modules checked")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
