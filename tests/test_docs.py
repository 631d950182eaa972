"""The documentation stays true to the repository: a short front page, citations that resolve,
links and code-map paths that exist. Fast: reads text files only, loads no model."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCS = ROOT / "docs"
REFERENCE = DOCS / "reference.md"

MAX_README_BYTES = 12 * 1024
# A citation: "REFERENCE §4.2"; further sections cited on the same line ("REFERENCE §2.4 / §3.2")
# must resolve too.
CITED_LINE = re.compile(r"REFERENCE\s*§")
SECTION = re.compile(r"§(\d+(?:\.\d+)*)")
HEADING = re.compile(r"^#{1,6}\s+§(\d+(?:\.\d+)*)\b", re.MULTILINE)
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
FENCE = re.compile(r"^```.*?^```", re.MULTILINE | re.DOTALL)
INLINE_CODE = re.compile(r"`([^`\n]+)`")
REPO_PATH = re.compile(r"^(promptrl|conf|scripts|tests|docs)/[\w./-]*$")


def markdown_files() -> list[Path]:
    return [README, *sorted(DOCS.glob("*.md"))]


def citations() -> dict[str, list[str]]:
    """Section number -> the places (file:line) that cite it."""
    found: dict[str, list[str]] = {}
    files = [p for d in ("promptrl", "conf", "scripts", "tests", "docs")
             for ext in ("*.py", "*.yaml", "*.md") for p in (ROOT / d).rglob(ext)]
    for path in files:
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if CITED_LINE.search(line):
                for section in SECTION.findall(line[CITED_LINE.search(line).start():]):
                    found.setdefault(section, []).append(f"{path.relative_to(ROOT)}:{n}")
    return found


def test_readme_is_a_front_page():
    size = README.stat().st_size
    assert size <= MAX_README_BYTES, f"README.md is {size} bytes; keep it to {MAX_README_BYTES} and move detail into docs/"
    assert "## Code map" in README.read_text(encoding="utf-8")


def test_the_reference_has_numbered_section_headings():
    sections = set(HEADING.findall(REFERENCE.read_text(encoding="utf-8")))
    # The top-level sections of the method reference, as the code cites them.
    assert {str(i) for i in range(10)} <= sections, sorted(sections)


def test_every_reference_citation_resolves_to_a_heading():
    cited = citations()
    assert len(cited) >= 10, "the citation scan found almost nothing; is the pattern still right?"
    sections = set(HEADING.findall(REFERENCE.read_text(encoding="utf-8")))
    missing = {s: places for s, places in cited.items() if s not in sections}
    assert not missing, f"REFERENCE § citations without a heading in docs/reference.md: {missing}"


@pytest.mark.parametrize("doc", markdown_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_point_to_files_that_exist(doc):
    text = FENCE.sub("", doc.read_text(encoding="utf-8"))
    broken = []
    for target in LINK.findall(text):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target) or target.startswith("#"):
            continue  # http(s), mailto and in-page anchors
        path = target.split("#", 1)[0]
        if not (doc.parent / path).exists():
            broken.append(target)
    assert not broken, f"{doc.relative_to(ROOT)} links to missing files: {broken}"


def test_every_repository_path_named_in_the_readme_exists():
    text = FENCE.sub("", README.read_text(encoding="utf-8"))
    paths = {t for t in INLINE_CODE.findall(text) if REPO_PATH.match(t)}
    assert any(p.startswith("promptrl/") for p in paths), "found no code-map paths in README.md"
    missing = sorted(p for p in paths if not (ROOT / p).exists())
    assert not missing, f"README.md names paths that do not exist: {missing}"


def test_the_main_commands_include_your_own_data():
    text = README.read_text(encoding="utf-8")
    section = text.split("## Main commands", 1)[1].split("\n## ", 1)[0]
    commands = FENCE.findall(section)[0]
    for needle in ("promptrl check task=custom", "promptrl train task=custom", "promptrl predict task=custom"):
        assert needle in commands, needle
    assert "docs/custom_task.md" in section
