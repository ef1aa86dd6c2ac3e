"""Imports go one way: handlers never import pulumi, components never import boto3, and the
embedded AWS never imports the handlers it runs."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
FORBIDDEN = {
    "handlers": {"pulumi", "pulumi_aws", "components"},
    "components": {"boto3", "botocore", "aws_lambda_powertools", "moto"},
    # The embedded AWS runs handlers from their deployed zips, never from an import of its own.
    "localcloud": {"handlers"},
}


def imported_roots(path: Path) -> set[str]:
    roots = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            roots.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            roots.add(node.module.split(".")[0])
    return roots


@pytest.mark.parametrize("layer", sorted(FORBIDDEN))
def test_layer_imports_go_one_way(layer: str) -> None:
    files = sorted((ROOT / layer).rglob("*.py"))
    assert files, f"no Python files under {layer}/"
    offenders = {
        str(path.relative_to(ROOT)): sorted(imported_roots(path) & FORBIDDEN[layer]) for path in files
    }
    assert {k: v for k, v in offenders.items() if v} == {}


def test_the_checker_sees_imports(tmp_path: Path) -> None:
    sample = tmp_path / "sample.py"
    sample.write_text("import boto3.session\nfrom pulumi_aws import sqs\nif True:\n    import pulumi\n")
    assert imported_roots(sample) == {"boto3", "pulumi_aws", "pulumi"}
