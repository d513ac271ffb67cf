"""Layering rules of DESIGN.md's spine, checked on the source: no import circles, no private imports.

Every ``import`` counts, including those inside functions (a circle that only
closes at call time still ties two modules together). Imports under
``if TYPE_CHECKING:`` do not run and are left out.
"""

from __future__ import annotations

import ast
from pathlib import Path

import relcomp

ROOT = Path(relcomp.__file__).parent


def _module_name(path: Path) -> str:
    parts = ["relcomp", *path.relative_to(ROOT).with_suffix("").parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, Path]:
    return {_module_name(path): path for path in sorted(ROOT.rglob("*.py"))}


def _type_checking_only(tree: ast.Module) -> set[int]:
    """Line numbers of imports inside ``if TYPE_CHECKING:`` blocks."""
    lines: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for child in node.body:
                for inner in ast.walk(child):
                    lines.add(getattr(inner, "lineno", -1))
    return lines


def _imports(name: str, path: Path, modules: set[str]) -> list[tuple[str, str]]:
    """``(module imported, name imported)`` pairs of one module, package-relative imports resolved."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    skipped = _type_checking_only(tree)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: list[tuple[str, str]] = []
    for node in ast.walk(tree):
        if getattr(node, "lineno", None) in skipped:
            continue
        if isinstance(node, ast.Import):
            found += [(alias.name, "") for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            for alias in node.names:
                # `from package import submodule` imports the submodule
                target = f"{base}.{alias.name}"
                found.append((target, "") if target in modules else (base, alias.name))
    return [(module, imported) for module, imported in found if module.split(".")[0] == "relcomp"]


def _reexports(modules: dict[str, Path]) -> dict[tuple[str, str], str]:
    """``(package, name) -> module``: where each name a package re-exports is defined."""
    found: dict[tuple[str, str], str] = {}
    for name, path in modules.items():
        if path.name == "__init__.py":
            for module, imported in _imports(name, path, set(modules)):
                if imported:
                    found[(name, imported)] = module
    return found


def _graph() -> dict[str, set[str]]:
    """Module → the modules it imports; a name taken from a package counts against its module."""
    modules = _modules()
    reexports = _reexports(modules)

    def resolve(module: str, imported: str) -> str:
        seen = set()
        while (module, imported) in reexports and (module, imported) not in seen:
            seen.add((module, imported))
            module = reexports[(module, imported)]
        return module

    return {
        name: {
            target
            for module, imported in _imports(name, path, set(modules))
            if (target := resolve(module, imported)) != name
        }
        for name, path in modules.items()
    }


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for successor in graph.get(node, ()):
            if successor not in index:
                visit(successor)
                low[node] = min(low[node], low[successor])
            elif successor in on_stack:
                low[node] = min(low[node], index[successor])
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

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def _without_packages(graph: dict[str, set[str]]) -> dict[str, set[str]]:
    """The graph between modules, packages' ``__init__`` left out.

    A package's ``__init__`` re-exports its modules' names, so it imports them all;
    a name taken from a package is resolved to the module that defines it
    (:func:`_graph`), so leaving the re-export hubs out hides no circle between modules.
    """
    packages = {name for name, path in _modules().items() if path.name == "__init__.py"}
    return {
        name: {target for target in targets if target not in packages}
        for name, targets in graph.items()
        if name not in packages
    }


def test_relcomp_has_no_import_circles() -> None:
    cycles = _cycles(_without_packages(_graph()))
    assert cycles == [], "import circles: " + "; ".join(" ↔ ".join(c) for c in cycles)


def test_no_module_imports_another_modules_private_name() -> None:
    modules = _modules()
    offences = [
        f"{name} imports {imported} from {module}"
        for name, path in modules.items()
        for module, imported in _imports(name, path, set(modules))
        if imported.startswith("_") and not imported.startswith("__") and module != name
    ]
    assert offences == []
