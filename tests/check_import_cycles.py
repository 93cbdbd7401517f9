"""Fail (exit 1) when modules of ``newsletter/`` import each other in a circle.

Usage: ``python tests/check_import_cycles.py [PACKAGE_DIR]`` (default: the
``newsletter`` folder beside ``tests/``).  Run by ``tests/test_import_cycles.py``
and by ``.ci/run``.

What counts as an import (read with :mod:`ast`, nothing is executed):

* every ``import`` / ``from ... import`` anywhere in a module, at module level or
  inside a function: a function-level import only postpones a circle to the first
  call, it does not remove the two modules' dependence on each other;
* except what sits under ``if TYPE_CHECKING:``, which never runs.

A name taken from a package surface (``from ..mail import build_issue``) is
followed to the module that defines it: the surfaces load their names lazily
through a ``_SURFACE = {"name": "module"}`` table, and the real dependency is on
that module, not on the ``__init__``.  Importing ``a.b.c`` also runs ``a`` and
``a.b``, so those packages' own imports count for the importer too.
"""

from __future__ import annotations

import ast
import sys
from collections.abc import Iterator
from pathlib import Path


def module_name(root: Path, path: Path) -> str:
    parts = [root.name, *path.relative_to(root).with_suffix("").parts]
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _is_type_checking(test: ast.expr) -> bool:
    if isinstance(test, ast.Name):
        return test.id == "TYPE_CHECKING"
    return isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"


def _imports(tree: ast.AST) -> Iterator[ast.Import | ast.ImportFrom]:
    """Every import node outside ``if TYPE_CHECKING:`` blocks (their ``else`` counts)."""
    stack: list[ast.AST] = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, ast.Import | ast.ImportFrom):
            yield node
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            stack.extend(node.orelse)
            continue
        stack.extend(ast.iter_child_nodes(node))


def _surface(tree: ast.Module) -> dict[str, str]:
    """A lazy package surface's ``_SURFACE`` table (name -> submodule), if any."""
    for node in tree.body:
        if (
            isinstance(node, ast.Assign)
            and any(isinstance(t, ast.Name) and t.id == "_SURFACE" for t in node.targets)
            and isinstance(node.value, ast.Dict)
        ):
            return {
                k.value: v.value
                for k, v in zip(node.value.keys, node.value.values, strict=True)
                if isinstance(k, ast.Constant) and isinstance(v, ast.Constant)
            }
    return {}


class Graph:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.trees: dict[str, ast.Module] = {}
        self.packages: set[str] = set()
        for path in sorted(root.rglob("*.py")):
            name = module_name(root, path)
            self.trees[name] = ast.parse(path.read_text(encoding="utf-8"), str(path))
            if path.name == "__init__.py":
                self.packages.add(name)
        self.surfaces = {name: _surface(self.trees[name]) for name in self.packages}
        self.edges: dict[str, set[str]] = {name: set() for name in self.trees}
        for name, tree in self.trees.items():
            for node in _imports(tree):
                for target in self._targets(name, node):
                    self._add(name, target)

    def _base(self, importer: str, node: ast.ImportFrom) -> str:
        if not node.level:
            return node.module or ""
        package = importer if importer in self.packages else importer.rpartition(".")[0]
        parts = package.split(".")
        if node.level > 1:
            parts = parts[: len(parts) - (node.level - 1)]
        return ".".join([*parts, node.module] if node.module else parts)

    def _targets(self, importer: str, node: ast.Import | ast.ImportFrom) -> Iterator[str]:
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name
            return
        base = self._base(importer, node)
        yield base
        for alias in node.names:
            submodule = f"{base}.{alias.name}"
            if submodule in self.trees:
                yield submodule
            elif alias.name in self.surfaces.get(base, {}):
                yield f"{base}.{self.surfaces[base][alias.name]}"

    def _add(self, importer: str, target: str) -> None:
        """An edge to ``target`` and to the packages that importing it runs first.

        The packages around the importer itself are left out of the second kind:
        they ran before the importer did, whatever it imports.
        """
        if target in self.trees and target != importer:
            self.edges[importer].add(target)
        parts = target.split(".")
        for end in range(1, len(parts)):
            name = ".".join(parts[:end])
            if name in self.trees and name != importer and not importer.startswith(name + "."):
                self.edges[importer].add(name)

    def cycles(self) -> list[list[str]]:
        """Strongly connected groups of more than one module (Tarjan, iterative)."""
        index: dict[str, int] = {}
        low: dict[str, int] = {}
        on_stack: set[str] = set()
        stack: list[str] = []
        found: list[list[str]] = []
        counter = 0
        for start in sorted(self.edges):
            if start in index:
                continue
            work = [(start, iter(sorted(self.edges[start])))]
            index[start] = low[start] = counter
            counter += 1
            stack.append(start)
            on_stack.add(start)
            while work:
                node, children = work[-1]
                child = next(children, None)
                if child is not None:
                    if child not in index:
                        index[child] = low[child] = counter
                        counter += 1
                        stack.append(child)
                        on_stack.add(child)
                        work.append((child, iter(sorted(self.edges[child]))))
                    elif child in on_stack:
                        low[node] = min(low[node], index[child])
                    continue
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
                if low[node] == index[node]:
                    group = []
                    while True:
                        member = stack.pop()
                        on_stack.discard(member)
                        group.append(member)
                        if member == node:
                            break
                    if len(group) > 1:
                        found.append(sorted(group))
        return found

    def path(self, group: list[str]) -> list[str]:
        """One concrete circle inside ``group``, for the error message."""
        members = set(group)
        start = group[0]
        previous: dict[str, str] = {}
        frontier = [start]
        while frontier:
            node = frontier.pop(0)
            for child in sorted(self.edges[node] & members):
                if child == start:
                    trail = [node]
                    while trail[-1] != start:
                        trail.append(previous[trail[-1]])
                    return [*reversed(trail), start]
                if child not in previous:
                    previous[child] = node
                    frontier.append(child)
        return group


def main(argv: list[str]) -> int:
    root = Path(argv[1]) if len(argv) > 1 else Path(__file__).resolve().parents[1] / "newsletter"
    graph = Graph(root.resolve())
    groups = graph.cycles()
    for group in groups:
        print("import circle: " + " -> ".join(graph.path(group)), file=sys.stderr)
    if groups:
        return 1
    print(f"no import circles among {len(graph.trees)} modules of {root.name}/")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
