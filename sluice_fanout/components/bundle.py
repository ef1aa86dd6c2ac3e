"""The Lambda deployment archive: Sluice's handlers, their dependencies, and the user's target."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pulumi

import sluice_fanout.handlers

PACKAGE = "sluice_fanout"
# The Lambda code needs the handlers only: the package's own __init__ names the Pulumi
# components, which have no place (and no pulumi to import) in a function.
PACKAGE_INIT = '"""Sluice\'s Lambda handlers (sluice_fanout.handlers)."""\n'

# Pure-Python packages the handlers import that the Lambda Python runtime does not promise.
# Powertools is bundled from the environment running the Pulumi program, which installs the
# version pinned in requirements.txt: the deployed code is exactly what the tests ran against,
# with no dependency on a public layer's version numbering per region.
BUNDLED_PACKAGES = ("aws_lambda_powertools", "jmespath", "typing_extensions")
SKIPPED_NAMES = {"__pycache__", ".DS_Store"}


def _module_path(name: str) -> Path:
    spec = importlib.util.find_spec(name)
    if spec is None or spec.origin is None:
        raise RuntimeError(f"{name} is not installed; run `make venv` (it is in requirements.txt)")
    origin = Path(spec.origin)
    return origin.parent if origin.name == "__init__.py" else origin


def _entry(path: Path) -> pulumi.Asset | pulumi.Archive:
    if path.is_dir():
        # Enumerate files so stray bytecode caches do not change the archive's hash.
        return pulumi.AssetArchive(
            {
                child.name: _entry(child)
                for child in sorted(path.iterdir())
                if child.name not in SKIPPED_NAMES and child.suffix != ".pyc"
            }
        )
    return pulumi.FileAsset(str(path))


def handler_archive(target_dir: str | None = None) -> pulumi.AssetArchive:
    """sluice_fanout/handlers/, the bundled packages, and the top level of `target_dir` at the
    archive root."""
    handlers_dir = Path(sluice_fanout.handlers.__file__).parent
    entries: dict[str, pulumi.Asset | pulumi.Archive] = {
        PACKAGE: pulumi.AssetArchive(
            {"__init__.py": pulumi.StringAsset(PACKAGE_INIT), "handlers": _entry(handlers_dir)}
        )
    }
    for package in BUNDLED_PACKAGES:
        path = _module_path(package)
        entries[path.name] = _entry(path)
    if target_dir is not None:
        for child in sorted(Path(target_dir).iterdir()):
            if child.name in SKIPPED_NAMES:
                continue
            if child.name in entries:
                raise ValueError(
                    f"target_dir {target_dir!r} contains {child.name!r}, which would shadow "
                    "Sluice's own bundle; rename it"
                )
            entries[child.name] = _entry(child)
    return pulumi.AssetArchive(entries)
