"""Imports go one way: handlers never import pulumi, components never import boto3, and the
embedded AWS never imports the handlers it runs."""

from __future__ import annotations

import ast
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
