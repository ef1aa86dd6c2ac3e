"""Imports go one way: handlers never import pulumi, components never import boto3, the
embedded AWS never imports the handlers it runs, and no modules import each other in a circle."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
FORBIDDEN = {
    "sluice_fanout/handlers": {"pulumi", "pulumi_aws", "sluice_fanout.components"},
    "sluice_fanout/components": {"boto3", "botocore", "aws_lambda_powertools", "moto"},
    # The embedded AWS runs handlers from their deployed zips, never from an import of its own.
    "localcloud": {"sluice_fanout.handlers"},
}


def imported_modules(path: Path) -> set[str]:
    modules = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            modules.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            modules.add(node.module)
    return modules


def forbidden_in(path: Path, forbidden: set[str]) -> list[str]:
    return sorted(
        m for m in imported_modules(path) if any(m == f or m.startswith(f + ".") for f in forbidden)
    )


@pytest.mark.parametrize("layer", sorted(FORBIDDEN))
def test_layer_imports_go_one_way(layer: str) -> None:
    files = sorted((ROOT / layer).rglob("*.py"))
    assert files, f"no Python files under {layer}/"
    offenders = {str(path.relative_to(ROOT)): forbidden_in(path, FORBIDDEN[layer]) for path in files}
    assert {k: v for k, v in offenders.items() if v} == {}


def test_the_checker_sees_imports(tmp_path: Path) -> None:
    sample = tmp_path / "sample.py"
    sample.write_text(
        "import boto3.session\nfrom pulumi_aws import sqs\nif True:\n    import pulumi\n"
        "from sluice_fanout.components.bundle import x\n"
    )
    assert forbidden_in(sample, {"boto3", "pulumi", "sluice_fanout.components"}) == [
        "boto3.session",
        "pulumi",
        "sluice_fanout.components.bundle",
    ]


PACKAGES = ("sluice_fanout", "localcloud")


def module_name(path: Path, root: Path = ROOT) -> str:
    parts = path.relative_to(root).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def internal_imports(path: Path, known: set[str], root: Path = ROOT) -> set[str]:
    """The project's modules `path` imports, type-only imports included: a circle through
    `if TYPE_CHECKING:` is still two modules that each need the other to be read."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            # `from pkg import module` imports that module (its package's __init__ runs first, as
            # any submodule import's does, which is not a dependency of design); `from module
            # import name` imports the module.
            submodules = [f"{node.module}.{alias.name}" for alias in node.names]
            names = [m for m in submodules if m in known] or [node.module]
        else:
            continue
        found.update(name for name in names if name in known)
    found.discard(module_name(path, root))
    return found


def import_graph(root: Path = ROOT) -> dict[str, set[str]]:
    files = [p for package in PACKAGES for p in sorted((root / package).rglob("*.py"))]
    known = {module_name(p, root) for p in files}
    return {module_name(p, root): internal_imports(p, known, root) for p in files}


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected groups of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph.get(node, ())):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
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

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_no_import_circle() -> None:
    graph = import_graph()
    assert len(graph) > 40
    assert circles(graph) == []


def test_the_circle_finder_finds_a_type_only_circle(tmp_path: Path) -> None:
    package = tmp_path / "localcloud"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "a.py").write_text("from localcloud.b import thing\n")
    (package / "b.py").write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from localcloud import a\n"
    )
    (package / "c.py").write_text("import localcloud.a\n")
    (tmp_path / "sluice_fanout").mkdir()
    assert circles(import_graph(tmp_path)) == [["localcloud.a", "localcloud.b"]]


PURE_HANDLERS = {"contract", "settings", "limits", "rate", "controller", "fair"}
"""The handler modules the components may import: standard library only, so deploy time never
pulls in boto3 or Powertools (docs/architecture.md)."""


def test_components_import_only_the_pure_handler_modules() -> None:
    graph = import_graph()
    prefix = "sluice_fanout.handlers."
    pure = {prefix + m for m in PURE_HANDLERS}
    reached = {
        module: sorted(m for m in imports if m.startswith(prefix) and m not in pure)
        for module, imports in graph.items()
        if module.startswith(("sluice_fanout.components", *pure))
    }
    assert {k: v for k, v in reached.items() if v} == {}
    outside = {
        module: sorted(
            m
            for path in [ROOT / (module.replace(".", "/") + ".py")]
            for m in imported_modules(path)
            if m.split(".")[0] not in sys.stdlib_module_names
            and not m.startswith(prefix)
            and m != "sluice_fanout.handlers"
        )
        for module in pure
    }
    assert {k: v for k, v in outside.items() if v} == {}
