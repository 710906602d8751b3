"""The package layout, read from the source with `ast` (nothing is imported):

- no import cycle between harness modules (imports inside functions count: a lazy import
  hides a cycle, it does not remove it);
- no module imports another module's private name (`from harness.a import _x`, `a._x`);
- harness/klp (the converter users embed) imports nothing of harness but itself and errors;
- the module build fingerprint still covers the converter's source.

Each failure lists every offending import as `file:line`, one per line.
"""

from __future__ import annotations

import ast
import itertools
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "harness"
KLP_ALLOWED = ("harness.klp", "harness.errors")


@dataclass(frozen=True)
class Import:
    source: str  # importing module
    target: str  # imported harness module
    where: str  # file:line, "(lazy)" when inside a function (runs at call time)
    lazy: bool
    names: tuple[str, ...]  # names taken from `target` by `from target import ...`


class Layout:
    """The modules of the package at `root/<package>` and their imports of one another."""

    def __init__(self, root: Path, package: str = "harness") -> None:
        self.root, self.package = root, package
        self.modules = {self._name(p): p for p in sorted((root / package).rglob("*.py"))}
        self.trees = {m: ast.parse(p.read_text(), str(p)) for m, p in self.modules.items()}
        self.imports = [imp for module in self.modules for imp in self._imports(module)]

    def _name(self, path: Path) -> str:
        parts = list(path.relative_to(self.root).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        return ".".join(parts)

    def _ours(self, name: str) -> bool:
        return name == self.package or name.startswith(self.package + ".")

    def _resolve(self, module: str, level: int, name: str | None) -> str:
        """The absolute name of a (possibly relative) `from` import's module."""
        if not level:
            return name or ""
        package = module.split(".")
        if self.modules[module].name != "__init__.py":
            package.pop()
        base = package[: len(package) - (level - 1)]
        return ".".join(base + ([name] if name else []))

    def _imports(self, module: str) -> Iterator[Import]:
        tree = self.trees[module]
        lazy = _inside_functions(tree)
        path = self.modules[module].relative_to(self.root)
        for node in ast.walk(tree):
            if not isinstance(node, ast.Import | ast.ImportFrom):
                continue
            inside = lazy[id(node)]
            where = f"{path}:{node.lineno}{' (lazy)' if inside else ''}"
            if isinstance(node, ast.Import):
                for alias in node.names:
                    if self._ours(alias.name):
                        yield Import(module, alias.name, where, inside, ())
                continue
            base = self._resolve(module, node.level, node.module)
            if not self._ours(base):
                continue
            names: list[str] = []
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                if sub in self.modules:  # `from harness.klp import convert`: a module
                    yield Import(module, sub, where, inside, ())
                else:
                    names.append(alias.name)
            if names:
                yield Import(module, base, where, inside, tuple(names))

    def private_uses(self) -> list[str]:
        """`from a import _x`, an import of a private module, and `a._x` on a module `a`
        bound by an import (import harness.a.b [as m], from harness.a import b)."""
        found = [
            f"{imp.where}: from {imp.target} import {name}"
            for imp in self.imports
            for name in imp.names
            if _is_private(name) and imp.target != imp.source
        ]
        found += [
            f"{imp.where}: import of private module {imp.target}"
            for imp in self.imports
            if any(_is_private(part) for part in imp.target.split("."))
        ]
        for module, tree in self.trees.items():
            bound: dict[str, str] = {}
            for node in ast.walk(tree):
                if isinstance(node, ast.Import):
                    for alias in node.names:
                        if alias.name in self.modules:
                            bound[alias.asname or alias.name] = alias.name
                elif isinstance(node, ast.ImportFrom):
                    base = self._resolve(module, node.level, node.module)
                    for alias in node.names:
                        if f"{base}.{alias.name}" in self.modules:
                            bound[alias.asname or alias.name] = f"{base}.{alias.name}"
            path = self.modules[module].relative_to(self.root)
            for node in ast.walk(tree):
                if isinstance(node, ast.Attribute) and _is_private(node.attr):
                    target = bound.get(_dotted(node.value) or "")
                    if target and target != module:
                        found.append(f"{path}:{node.lineno}: {target}.{node.attr}")
        return found

    def cycles(self) -> list[list[str]]:
        """One concrete cycle per strongly connected component of more than one module."""
        graph: dict[str, set[str]] = {m: set() for m in self.modules}
        for imp in self.imports:
            if imp.target in self.modules and imp.target != imp.source:
                graph[imp.source].add(imp.target)
        return [_one_cycle(graph, set(c), c[0]) for c in _components(graph)]

    def cycle_listing(self) -> list[str]:
        listing = []
        for cycle in self.cycles():
            listing.append("cycle: " + " -> ".join(cycle))
            for a, b in itertools.pairwise(cycle):
                found = [i.where for i in self.imports if i.source == a and i.target == b]
                listing.append(f"    {a} -> {b}   [{', '.join(found)}]")
        return listing


def _is_private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def _inside_functions(tree: ast.AST) -> dict[int, bool]:
    """id(node) -> whether the node sits inside a function body."""
    inside: dict[int, bool] = {}

    def visit(node: ast.AST, nested: bool) -> None:
        inside[id(node)] = nested
        nested = nested or isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda)
        for child in ast.iter_child_nodes(node):
            visit(child, nested)

    visit(tree, False)
    return inside


def _dotted(node: ast.expr) -> str | None:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        head = _dotted(node.value)
        return f"{head}.{node.attr}" if head else None
    return None


def _components(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one node, sorted (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    components: list[list[str]] = []

    def connect(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for nxt in sorted(graph[node]):
            if nxt not in index:
                connect(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                components.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            connect(node)
    return sorted(components)


def _one_cycle(graph: dict[str, set[str]], members: set[str], start: str) -> list[str]:
    """A shortest path start -> ... -> start inside one component (breadth first)."""
    previous: dict[str, str] = {}
    queue = [start]
    while queue:
        node = queue.pop(0)
        for nxt in sorted(graph[node] & members):
            if nxt == start:
                path = [node]
                while path[-1] != start:
                    path.append(previous[path[-1]])
                return [*reversed(path), start]
            if nxt not in previous:
                previous[nxt] = node
                queue.append(nxt)
    return [start]


LAYOUT = Layout(ROOT)


def test_modules_are_found() -> None:
    assert {"harness.klp.convert", "harness.cli.main", "harness"} <= set(LAYOUT.modules)
    assert any(imp.lazy for imp in LAYOUT.imports), "lazy imports are part of the graph"


def test_no_import_cycles() -> None:
    listing = LAYOUT.cycle_listing()
    print(f"{len(LAYOUT.modules)} modules, {len(LAYOUT.imports)} imports between them")
    print("\n".join(listing) or "no import cycles")
    assert not listing, "import cycles between harness modules:\n" + "\n".join(listing)


def test_no_private_names_across_modules() -> None:
    found = LAYOUT.private_uses()
    print("\n".join(found) or "no private names used across modules")
    assert not found, "private names used outside their module:\n" + "\n".join(found)


def test_klp_imports_only_itself_and_errors() -> None:
    found = [
        f"{imp.where}: {imp.target}"
        for imp in LAYOUT.imports
        if imp.source.startswith("harness.klp")
        and not any(imp.target == ok or imp.target.startswith(ok + ".") for ok in KLP_ALLOWED)
    ]
    print("\n".join(found) or "harness/klp imports only harness/klp and harness/errors")
    assert not found, "harness/klp imports outside harness/klp and harness/errors:\n" + (
        "\n".join(found)
    )


def test_the_checks_see_lazy_cycles_and_private_names(tmp_path: Path) -> None:
    """The checker itself, on a small package with each kind of fault."""
    pkg = tmp_path / "harness"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from harness.sub.b import helper\n_hidden = 1\n")
    (pkg / "sub" / "b.py").write_text(
        "def helper() -> None:\n    from harness.a import _hidden  # lazy\n"
    )
    (pkg / "sub" / "c.py").write_text(
        "from . import b\nimport harness.a as alias\nx = b._private, alias._hidden, alias.public\n"
    )
    (pkg / "sub" / "d.py").write_text("from .. import a\nfrom harness.sub import c\n")
    layout = Layout(tmp_path)
    assert layout.cycles() == [["harness.a", "harness.sub.b", "harness.a"]]
    assert layout.cycle_listing()[1:] == [
        "    harness.a -> harness.sub.b   [harness/a.py:1]",
        "    harness.sub.b -> harness.a   [harness/sub/b.py:2 (lazy)]",
    ]
    assert sorted(layout.private_uses()) == [
        "harness/sub/b.py:2 (lazy): from harness.a import _hidden",
        "harness/sub/c.py:3: harness.a._hidden",
        "harness/sub/c.py:3: harness.sub.b._private",
    ]
    d_targets = {i.target for i in layout.imports if i.source == "harness.sub.d"}
    assert d_targets == {"harness.a", "harness.sub.c"}


def test_build_fingerprint_covers_the_converter() -> None:
    """Converted modules are cached under a fingerprint of the converter's source: if it
    stopped covering harness/klp, a converter change would reuse stale conversions."""
    from harness.paths import CONVERTER_DIR, PACKAGE_DIR

    assert CONVERTER_DIR == PACKAGE_DIR / "klp" == PACKAGE / "klp"
    assert (CONVERTER_DIR / "convert.py").is_file() and (CONVERTER_DIR / "rewrite.py").is_file()
    # the fingerprint globs *.py in that one directory: no converter code may sit deeper
    assert not [p for p in CONVERTER_DIR.rglob("*.py") if p.parent != CONVERTER_DIR]
    tree = ast.parse((PACKAGE / "build" / "modules.py").read_text())
    fingerprint = next(
        node
        for node in ast.walk(tree)
        if isinstance(node, ast.FunctionDef) and node.name == "_fingerprint"
    )
    globs = [
        node
        for node in ast.walk(fingerprint)
        if isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute)
        and node.func.attr == "glob"
        and _dotted(node.func.value) == "CONVERTER_DIR"
    ]
    assert globs and all(
        isinstance(g.args[0], ast.Constant) and g.args[0].value == "*.py" for g in globs
    ), "harness/build/modules.py _fingerprint no longer hashes CONVERTER_DIR/*.py"
