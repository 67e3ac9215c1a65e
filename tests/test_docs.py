"""Every pointer into the project's docs names a page and a heading that exist.

Code points at the design as ``docs/<page>.md#<anchor>`` (docs/README.md); the pages link to
each other with relative Markdown links. A renamed heading or page must fail here, not leave a
newcomer at a dead end.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from conftest import REPO

DOCS = REPO / "docs"
#: where code and text point into docs/ (the virtual environment and caches are not ours)
SOURCES = ("madis", "ray_jobs", "tests", "benchmarks", "configs", "scripts", "shards", "docs")
SUFFIXES = {".py", ".md", ".yaml", ".yml", ".sh", ".html", ".toml"}
CODE_POINTER = re.compile(r"docs/([A-Za-z0-9_.-]+\.md)(?:#([A-Za-z0-9_-]+))?")
MD_LINK = re.compile(r"\]\(([^)\s]+)\)")


def slug(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation dropped, spaces as hyphens."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def anchors(page: Path) -> set[str]:
    """Anchors of every heading of a Markdown page (repeats get GitHub's -1, -2 suffixes)."""
    seen: dict[str, int] = {}
    out = set()
    in_code = False
    for line in page.read_text(encoding="utf-8").splitlines():
        if line.startswith("```"):
            in_code = not in_code
        if in_code or not re.match(r"#{1,6} ", line):
            continue
        base = slug(line.lstrip("#"))
        n = seen.get(base, 0)
        seen[base] = n + 1
        out.add(base if n == 0 else f"{base}-{n}")
    return out


def source_files() -> list[Path]:
    files = [REPO / "README.md"]
    for top in SOURCES:
        files += [p for p in (REPO / top).rglob("*")
                  if p.is_file() and p.suffix in SUFFIXES and "__pycache__" not in p.parts]
    return files


def pointers() -> list[tuple[str, Path, str | None]]:
    """``(where, page, anchor)`` of every pointer into the docs: ``docs/<page>.md#<anchor>`` in
    code and configs, and relative Markdown links between pages."""
    found = []
    for f in source_files():
        if f.name == "test_docs.py":
            continue
        text = f.read_text(encoding="utf-8", errors="replace")
        rel = f.relative_to(REPO).as_posix()
        for m in CODE_POINTER.finditer(text):
            found.append((rel, DOCS / m.group(1), m.group(2)))
        if f.suffix != ".md":
            continue
        for m in MD_LINK.finditer(text):
            path, _, anchor = m.group(1).partition("#")
            if "://" in path or not (path.endswith(".md") or not path):
                continue
            found.append((rel, (f.parent / path) if path else f, anchor or None))
    return found


def test_the_docs_exist_and_the_readme_links_them():
    for page in ("README.md", "design.md", "architecture.md", "data-formats.md", "operations.md"):
        assert (DOCS / page).is_file(), page
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    assert "docs/README.md" in readme or "(docs/)" in readme


def test_every_pointer_names_an_existing_page_and_heading():
    found = pointers()
    assert len(found) > 40  # the code's pointers are found at all
    bad = []
    for where, page, anchor in found:
        if not page.is_file():
            bad.append(f"{where}: no page {page.relative_to(REPO)}")
        elif anchor and anchor not in anchors(page):
            bad.append(f"{where}: {page.relative_to(REPO)} has no heading #{anchor}")
    assert not bad, "\n".join(bad)


def test_no_pointer_to_a_design_file_outside_the_repository():
    """The old pointers ("SPEC ...", "STACK-NOTES", "ARCHITECTURE.md") named files that are not
    part of the project."""
    old = re.compile(r"\bSPEC\b|STACK-NOTES|ARCHITECTURE\.md")
    hits = [f"{f.relative_to(REPO)}:{i}" for f in source_files() if f.name != "test_docs.py"
            for i, line in enumerate(f.read_text(encoding="utf-8", errors="replace").splitlines(), 1)
            if old.search(line)]
    assert not hits, hits


@pytest.mark.parametrize("heading, anchor", [
    ("Forward process (eq. 1)", "forward-process-eq-1"),
    ("Unmasking orders (eq. 6, 7)", "unmasking-orders-eq-6-7"),
    ("Where a profile's runs live", "where-a-profiles-runs-live"),
    ("DTW-JPE", "dtw-jpe"),
])
def test_slug_is_githubs(heading, anchor):
    assert slug(heading) == anchor
