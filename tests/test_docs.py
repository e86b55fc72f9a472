"""The docs' examples work on the embedded data: every search query they show is in the scenes'
language (the caption parser reads it), and every file they link exists."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

from aladin.data.parser import parse

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def text_queries(path: Path) -> list[str]:
    return re.findall(r'aladin-search text "([^"]+)"', path.read_text())


def test_the_readme_shows_search_examples():
    assert text_queries(ROOT / "README.md")


@pytest.mark.parametrize("path", DOCS, ids=lambda p: p.name)
def test_search_examples_use_the_datasets_words(path):
    for query in text_queries(path):
        assert parse(query), f"{path.name}: {query!r} says nothing the scenes' parser reads"


@pytest.mark.parametrize("path", DOCS, ids=lambda p: p.name)
def test_relative_links_exist(path):
    for target in re.findall(r"\]\(([^)#:]+)(?:#[^)]*)?\)", path.read_text()):
        assert (path.parent / target).exists(), f"{path.name}: link to missing {target}"


def test_parse_rejects_words_outside_the_scenes_language():
    with pytest.raises(ValueError, match="cube"):
        parse("a red cube to the left of a blue ball")
