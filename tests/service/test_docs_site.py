"""The README leads and the documentation site holds the reference: the README stays short,
and every relative link in it and in docs/ reaches a file, and a heading, that exists
(mkdocs build --strict checks docs/ alone; the README is outside the site)."""

from __future__ import annotations

import re
import unicodedata
from pathlib import Path

import pytest

from tests.support.paths import ROOT

PAGES = sorted((ROOT / "docs").glob("*.md"))
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")


def prose(markdown: str) -> str:
    """The text outside code: a link written inside a code block or span is not a link."""
    without_blocks = re.sub(r"^```.*?^```", "", markdown, flags=re.MULTILINE | re.DOTALL)
    return re.sub(r"`[^`\n]*`", "", without_blocks)


def anchor(heading: str) -> str:
    """A heading's id as Python-Markdown's toc (mkdocs) and GitHub both make it here."""
    text = re.sub(r"[`*_]", "", heading)
    text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode()
    text = re.sub(r"[^\w\s-]", "", text).strip().lower()
    return re.sub(r"[-\s]+", "-", text)


def anchors(path: Path) -> set[str]:
    headings = re.findall(r"^#{1,6} (.+)$", prose(path.read_text()), flags=re.MULTILINE)
    return {anchor(heading) for heading in headings}


def broken_links(path: Path) -> list[str]:
    broken = []
    for target in LINK.findall(prose(path.read_text())):
        if re.match(r"[a-z]+:", target):  # https:, mailto:: not this repository's files
            continue
        file, _, fragment = target.partition("#")
        linked = (path.parent / file).resolve() if file else path
        if not linked.is_file():
            broken.append(f"{target}: no such file")
        elif fragment and linked.suffix == ".md" and fragment not in anchors(linked):
            broken.append(f"{target}: no such heading")
    return broken


def test_the_readme_is_at_most_250_lines() -> None:
    lines = (ROOT / "README.md").read_text().splitlines()

    assert len(lines) <= 250, f"README.md has {len(lines)} lines: move the rest to docs/"


def test_the_readme_links_every_page_of_the_site() -> None:
    readme = (ROOT / "README.md").read_text()

    unlinked = [
        page.name
        for page in PAGES
        if page.name != "index.md" and f"](docs/{page.name}" not in readme
    ]
    assert unlinked == []


@pytest.mark.parametrize("path", [ROOT / "README.md", *PAGES], ids=lambda path: path.name)
def test_every_relative_link_reaches_a_file_and_heading_that_exist(path: Path) -> None:
    assert broken_links(path) == []


def test_a_link_to_a_missing_file_or_heading_is_found(tmp_path: Path) -> None:
    (tmp_path / "other.md").write_text("# Other\n\n## A part: of it\n")
    page = tmp_path / "page.md"
    page.write_text(
        "[ok](other.md#a-part-of-it) [also](#here) `[in code](nowhere.md)`\n\n# Here\n\n"
        "[gone](missing.md) [no such part](other.md#elsewhere) [site](https://example.org/x)\n"
    )

    assert broken_links(page) == ["missing.md: no such file", "other.md#elsewhere: no such heading"]
