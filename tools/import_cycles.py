#!/usr/bin/env python3
"""Print the import cycles between the modules of a package (imports at any depth, inside functions too).

    python tools/import_cycles.py [PKG_DIR=autolite] [--count]

Prints one line per cycle (its modules joined by " <-> ") and exits 1 when there is any. ``--count`` also
prints how many imports of the package itself sit inside functions, per file (they should only import
optional dependencies lazily, each with a ``# lazy: <reason>`` comment; the total without one is printed).
"""
from __future__ import annotations

import ast
import sys
from pathlib import Path


def modules(root: Path) -> dict[str, tuple[Path, bool]]:
    """Module name -> (file, is_package) for every ``.py`` file under ``root``."""
    found = {}
    for path in sorted(root.rglob("*.py")):
        parts = list(path.relative_to(root.parent).with_suffix("").parts)
        is_pkg = parts[-1] == "__init__"
        found[".".join(parts[:-1] if is_pkg else parts)] = (path, is_pkg)
    return found


def imported_names(node: ast.AST, package: str) -> list[str]:
    """Fully qualified names an ``import`` / ``from ... import`` statement refers to."""
    if isinstance(node, ast.Import):
        return [a.name for a in node.names]
    if not isinstance(node, ast.ImportFrom):
        return []
    base = node.module or ""
    if node.level:
        parts = package.split(".")
        base = ".".join(parts[: len(parts) - node.level + 1] + ([base] if base else []))
    return [base] + [f"{base}.{a.name}" for a in node.names]


def resolve(name: str, mods: dict) -> str:
    while name and name not in mods:
        name = name.rpartition(".")[0]
    return name


def edges(root: Path) -> dict[str, set[str]]:
    """Module -> the package modules it imports (a module importing its own ancestor package not counted)."""
    mods = modules(root)
    graph: dict[str, set[str]] = {m: set() for m in mods}
    for mod, (path, is_pkg) in mods.items():
        package = mod if is_pkg else mod.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text())):
            for name in imported_names(node, package):
                target = resolve(name, mods)
                if target and target != mod and not mod.startswith(target + "."):
                    graph[mod].add(target)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    for start in graph:
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return sorted(found)


def in_function_imports(root: Path, unexplained: bool = False) -> dict[str, int]:
    """File -> number of imports of the package itself made inside a function body (``unexplained``: only
    those without a ``# lazy: <reason>`` comment on the statement or the line above it)."""
    counts = {}
    for mod, (path, is_pkg) in modules(root).items():
        package = mod if is_pkg else mod.rpartition(".")[0]
        source = path.read_text()
        lines = source.splitlines()
        found = set()
        for func in ast.walk(ast.parse(source)):
            if isinstance(func, (ast.FunctionDef, ast.AsyncFunctionDef)):
                for node in ast.walk(func):
                    names = imported_names(node, package)
                    if any(n.split(".")[0] == root.name for n in names):
                        found.add((node.lineno, node.end_lineno))
        if unexplained:
            found = {(a, b) for a, b in found if not any("# lazy:" in line for line in lines[max(a - 2, 0):b])}
        if found:
            counts[str(path)] = len(found)
    return counts


def main(argv: list[str]) -> int:
    args = [a for a in argv if not a.startswith("--")]
    root = Path(args[0] if args else "autolite")
    found = cycles(edges(root))
    for component in found:
        print(" <-> ".join(component))
    if "--count" in argv:
        counts = in_function_imports(root)
        for path, count in sorted(counts.items(), key=lambda kv: -kv[1]):
            print(f"{count:4d} {path}")
        unexplained = sum(in_function_imports(root, unexplained=True).values())
        print(f"{sum(counts.values())} in-function imports of {root.name} in {len(counts)} files "
              f"({unexplained} without a '# lazy: <reason>' comment); {len(found)} cycles")
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
