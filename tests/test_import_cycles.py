"""The package has no import cycles: no module imports, even lazily inside a function, a module that imports it
back (directly or through others). Read from the source with ``ast``, so function-level imports count too."""

from __future__ import annotations

import ast
from pathlib import Path

import router

PACKAGE = Path(router.__file__).resolve().parent


def module_names(root: Path = PACKAGE) -> dict[str, tuple[Path, bool]]:
    """``router.x.y`` -> (file, is a package ``__init__``) for every module of the package."""
    names: dict[str, tuple[Path, bool]] = {}
    for file in root.rglob("*.py"):
        parts = list(file.relative_to(root.parent).with_suffix("").parts)
        is_package = parts[-1] == "__init__"
        if is_package:
            parts.pop()
        names[".".join(parts)] = (file, is_package)
    return names


def import_graph(root: Path = PACKAGE) -> dict[str, set[str]]:
    """Each module's imports of other modules of the package, wherever in the file they are written.

    ``from .a import b`` counts as importing ``a`` (and ``a.b`` when that is a module); a parent package that
    Python imports on the way is not counted, since importing ``x.y`` does not make ``x`` import anything back."""
    names = module_names(root)
    graph: dict[str, set[str]] = {name: set() for name in names}
    for name, (file, is_package) in names.items():
        here = name.split(".") if is_package else name.split(".")[:-1]
        for node in ast.walk(ast.parse(file.read_text(encoding="utf-8"), str(file))):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = here[: len(here) - node.level + 1] if node.level else []
                module = ".".join(base + ([node.module] if node.module else []))
                targets = [module, *(f"{module}.{alias.name}" for alias in node.names)]
            else:
                continue
            graph[name].update(t for t in targets if t in names and t != name)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan's algorithm, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    for start in sorted(graph):
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
    return found


def test_the_detector_finds_a_cycle_through_a_lazy_import(tmp_path: Path) -> None:
    package = tmp_path / "pkg"
    (package / "sub").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "sub" / "__init__.py").write_text("")
    (package / "a.py").write_text("from .sub.b import thing\n")
    (package / "sub" / "b.py").write_text("def thing():\n    from .. import c\n")
    (package / "c.py").write_text("import pkg.a\n")
    (package / "d.py").write_text("from . import c\n")
    assert cycles(import_graph(package)) == [["pkg.a", "pkg.c", "pkg.sub.b"]]


def test_the_package_has_no_import_cycles() -> None:
    graph = import_graph()
    assert cycles(graph) == []
    assert "router.energy.base" in graph["router.energy.nvml"]  # the graph sees real imports
    assert "router.training.embeddings" in graph["router.training.sentiment"]  # including lazy ones
