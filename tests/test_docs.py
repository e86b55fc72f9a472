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


@pytest.mark.parametrize("path", DOCS, ids=lambda p: p.name)
def test_results_blocks_are_the_committed_metrics(path):
    """Every `<!-- results:NAME -->` block is what scripts/results_table.py renders from metrics/."""
    from scripts.results_table import render_blocks, sections

    text = path.read_text()
    tables = sections(ROOT / "metrics", ROOT / "plots" / "latency_scaling.csv")
    assert render_blocks(text, tables) == text, \
        f"{path.name}: results tables differ from metrics/; run python scripts/results_table.py --update {path.name}"


def test_render_blocks_on_a_hand_built_case():
    from scripts.results_table import render_blocks

    text = "a\n<!-- results:t -->\nold\n<!-- /results:t -->\nb\n"
    assert render_blocks(text, {"t": ["x", "y"]}) == "a\n<!-- results:t -->\nx\ny\n<!-- /results:t -->\nb\n"


def test_code_map_names_every_package_folder():
    """docs/CONTRACTS.md's layer table and the README name every folder of the package."""
    contracts, readme = (ROOT / "docs" / "CONTRACTS.md").read_text(), (ROOT / "README.md").read_text()
    folders = sorted(p.name for p in (ROOT / "aladin").iterdir() if p.is_dir() and (p / "__init__.py").exists())
    assert [f for f in folders if f"aladin/{f}/" not in contracts] == []
    assert [f for f in folders if f"`{f}`" not in readme and f"aladin/{f}" not in readme] == []
