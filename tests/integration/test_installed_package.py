"""Sluice as another team gets it: `pip install`ed, imported by name from a program of their own.

The package is built from a copy of the sources (pip writes build files next to them) and
installed into a directory of its own; a throwaway Pulumi program in another temporary directory
imports it from there, never from this repository, and runs under Pulumi mocks in a fresh
interpreter. No network: the build uses the pinned setuptools already installed.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]

PROGRAM = """
import json
import sys

import pulumi


class Mocks(pulumi.runtime.Mocks):
    def new_resource(self, args):
        return f"{args.name}-id", {**args.inputs, "arn": f"arn:aws:mock:::{args.name}", "url": args.name}

    def call(self, args):
        return {}


pulumi.runtime.set_mocks(Mocks(), project="adopter", stack="dev", preview=False)

import sluice_fanout
from sluice_fanout import ThrottledFanOut

seen = []


@pulumi.runtime.test
def build():
    fan_out = ThrottledFanOut("orders", {"concurrency": 2, "http_target": {"url": "https://erp.example"}})
    return fan_out.state_machine_arn.apply(lambda arn: seen.append(arn))


build()
print(json.dumps({"package": sluice_fanout.__file__, "path": sys.path, "state_machine": seen}))
"""


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    source = tmp_path_factory.mktemp("source")
    shutil.copy(ROOT / "pyproject.toml", source)
    shutil.copytree(
        ROOT / "sluice_fanout", source / "sluice_fanout", ignore=shutil.ignore_patterns("__pycache__")
    )
    target = tmp_path_factory.mktemp("site")
    subprocess.run(  # noqa: S603 - our own interpreter and paths
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--quiet",
            "--no-deps",
            "--no-build-isolation",
            "--no-index",
            "--target",
            str(target),
            str(source),
        ],
        check=True,
        timeout=120,
    )
    return target


def test_only_the_distinctive_package_lands_in_site_packages(site: Path) -> None:
    # `--target` puts console scripts in bin/ beside the packages; a real install puts them in
    # the environment's bin/, outside site-packages.
    top_level = sorted(p.name for p in site.iterdir() if p.name != "bin")
    assert top_level == ["sluice_fanout", "sluice_fanout-0.1.0.dist-info"]
    assert sorted(p.name for p in (site / "bin").iterdir()) == ["sluice"]
    # The whole package, nothing less: the wheel is built from the package directory as it is.
    installed = sorted(p.name for p in (site / "sluice_fanout").iterdir() if p.name != "__pycache__")
    source = sorted(p.name for p in (ROOT / "sluice_fanout").iterdir() if p.name != "__pycache__")
    assert installed == source
    assert {"__init__.py", "components", "handlers"} <= set(installed)


def test_a_program_of_its_own_builds_the_component_from_the_installed_package(
    site: Path, tmp_path: Path
) -> None:
    program = tmp_path / "adopter"
    program.mkdir()
    (program / "__main__.py").write_text(PROGRAM)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"} | {"PYTHONPATH": str(site)}
    done = subprocess.run(  # noqa: S603 - our own interpreter and paths
        [sys.executable, str(program / "__main__.py")],
        cwd=program,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert Path(report["package"]).is_relative_to(site)
    assert str(ROOT) not in report["path"]
    assert report["state_machine"] == ["arn:aws:mock:::orders-workflow-state-machine"]
