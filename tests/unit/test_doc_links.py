"""Every relative link in the README, BENCHMARKS.md, RELIABILITY.md and docs/*.md resolves inside
the repository (the file, and the heading of an `#anchor`); http(s) links are not followed, a
link that leaves the repository fails. And the README stays one screen: at most 150 lines."""

from __future__ import annotations

import re
from pathlib import Path
from urllib.parse import unquote

import pytest

ROOT = Path(__file__).resolve().parents[2]
README_MAX_LINES = 150  # the issue "README of one screen"; the rest lives in docs/

FENCE = re.compile(r"^(```|~~~).*?^\1[^\n]*$", re.MULTILINE | re.DOTALL)
INLINE_CODE = re.compile(r"(`+)(?:(?!\1).)+?\1", re.DOTALL)
# [text](target) and ![alt](target), with an optional "title"; reference definitions [x]: target.
INLINE_LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\]]*\])*\]\(\s*<?([^)\s>]*)>?(?:\s+\"[^\"]*\")?\s*\)")
REFERENCE = re.compile(r"^ {0,3}\[[^\]]+\]:\s*<?(\S+?)>?(?:\s+.*)?$", re.MULTILINE)
HEADING = re.compile(r"^ {0,3}(#{1,6})\s+(.*?)\s*#*\s*$", re.MULTILINE)
EXTERNAL = ("http://", "https://")


def documents() -> list[Path]:
    return [
        ROOT / "README.md",
        ROOT / "BENCHMARKS.md",
        ROOT / "RELIABILITY.md",
        *sorted((ROOT / "docs").glob("*.md")),
    ]


def prose(text: str) -> str:
    """The text without fenced code blocks, where `[x](y)` and `# x` are code, not links."""
    return FENCE.sub("", text)


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: the rendered text, lower case, without punctuation other
    than hyphens and underscores, spaces made hyphens."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link's text is what renders
    text = re.sub(r"[^\w\- ]", "", text.lower())
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    """Every heading's anchor, with GitHub's -1, -2 suffixes for repeated headings."""
    seen: dict[str, int] = {}
    found: set[str] = set()
    for match in HEADING.finditer(prose(path.read_text())):
        base = slug(match.group(2))
        count = seen.get(base, 0)
        seen[base] = count + 1
        found.add(base if count == 0 else f"{base}-{count}")
    return found


def link_targets(text: str) -> list[str]:
    body = INLINE_CODE.sub("", prose(text))
    return [m.group(1) for m in INLINE_LINK.finditer(body)] + [m.group(1) for m in REFERENCE.finditer(body)]


def broken_links(doc: Path, root: Path = ROOT) -> list[str]:
    """Each relative link of `doc` that does not resolve inside `root`, with the reason."""
    problems: list[str] = []
    for target in link_targets(doc.read_text()):
        if target.startswith(EXTERNAL):
            continue
        where = f"{doc.relative_to(root)}: ({target})"
        if re.match(r"^[A-Za-z][A-Za-z0-9+.-]*:", target) or target.startswith(("/", "\\")):
            problems.append(f"{where} is not a relative link inside the repository")
            continue
        path_part, _, anchor = target.partition("#")
        file = (doc.parent / unquote(path_part)).resolve() if path_part else doc
        if not file.is_relative_to(root.resolve()):
            problems.append(f"{where} leaves the repository")
        elif not file.exists():
            problems.append(f"{where}: no such file")
        elif anchor and (file.suffix != ".md" or unquote(anchor) not in anchors(file)):
            problems.append(f"{where}: no heading with anchor #{anchor} in {file.name}")
    return problems


@pytest.mark.parametrize("doc", documents(), ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_resolves_inside_the_repository(doc: Path) -> None:
    assert broken_links(doc) == []


def test_the_documents_are_there() -> None:
    names = {p.relative_to(ROOT).as_posix() for p in documents()}
    assert {"README.md", "BENCHMARKS.md", "docs/configuration.md", "docs/limits.md"} <= names


def test_the_readme_fits_on_one_screen() -> None:
    lines = (ROOT / "README.md").read_text().splitlines()
    assert len(lines) <= README_MAX_LINES, f"README.md has {len(lines)} lines; move detail to docs/"


# ---- the checker itself, on a throwaway repository: each kind of broken link is caught ----


@pytest.mark.parametrize(
    ("link", "problem"),
    [
        ("[ok](docs/a.md)", None),
        ("[ok](docs/a.md#a-calls-per-second-limit-callspersecond)", None),
        ("[ok](docs/a.md#repeated-1)", None),
        ("[ok](#top)", None),
        ("![ok](docs/a.png)", None),
        ("[ok](https://example.com/x.md)", None),
        ("[ok]: docs/a.md", None),
        ("`[code, not a link](nowhere.md)`", None),
        ("```\n[code, not a link](nowhere.md)\n```", None),
        ("[missing](docs/b.md)", "no such file"),
        ("[missing]: docs/b.md", "no such file"),
        ("[missing anchor](docs/a.md#nowhere)", "no heading with anchor #nowhere"),
        ("[anchor in code](docs/a.md#not-a-heading)", "no heading with anchor"),
        ("[outside](../shared/LOCAL_AWS.md)", "leaves the repository"),
        ("[absolute](/etc/passwd)", "not a relative link"),
        ("[file url](file:///etc/passwd)", "not a relative link"),
    ],
)
def test_the_checker_catches_broken_links(tmp_path: Path, link: str, problem: str | None) -> None:
    root = tmp_path / "repo"
    (root / "docs").mkdir(parents=True)
    (root / "docs" / "a.png").write_bytes(b"")
    (root / "docs" / "a.md").write_text(
        "# A calls-per-second limit (`callsPerSecond`)\n\n## Repeated\n\n## Repeated\n\n"
        "```sh\n# not a heading\n```\n"
    )
    (tmp_path / "shared").mkdir()
    (tmp_path / "shared" / "LOCAL_AWS.md").write_text("# outside\n")
    readme = root / "README.md"
    readme.write_text(f"# Top\n\n{link}\n")
    found = broken_links(readme, root)
    if problem is None:
        assert found == []
    else:
        assert len(found) == 1
        assert problem in found[0]
