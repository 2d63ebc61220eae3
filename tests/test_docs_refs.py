"""The project documents itself: code, --help and docs cite files of this repository, and those exist."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from pipelines.cli import build_parser

REPO = Path(__file__).resolve().parents[1]
# Documents outside the repository that older code cited; nothing may cite them again.
OUTSIDE = re.compile(r"\bDESIGN\b|pipelines\.registry")


def _help_texts() -> list[str]:
    parser = build_parser()
    texts = [parser.format_help()]
    stack = [parser]
    while stack:
        for action in stack.pop()._actions:
            for sub in (
                getattr(action, "choices", None).values()
                if isinstance(getattr(action, "choices", None), dict)
                else []
            ):
                texts.append(sub.format_help())
                stack.append(sub)
    return texts


def test_code_and_help_cite_nothing_outside_the_repository():
    sources = [
        p
        for d in ("unlearn_core", "pipelines", "bench", "tune_spaces")
        for p in (REPO / d).rglob("*")
        if p.suffix in (".py", ".yaml", ".md")
    ]
    cited = [
        f"{p.relative_to(REPO)}:{i}"
        for p in sources
        for i, line in enumerate(p.read_text().splitlines(), 1)
        if OUTSIDE.search(line)
    ]
    assert cited == []
    helps = _help_texts()
    assert len(helps) > 10  # every subcommand's help was rendered
    assert not [h for h in helps if OUTSIDE.search(h)]


@pytest.mark.parametrize("doc", ["README.md", *sorted(p.name for p in (REPO / "docs").glob("*.md"))])
def test_files_the_docs_name_exist(doc: str):
    path = REPO / doc if doc == "README.md" else REPO / "docs" / doc
    text = path.read_text()
    links = {(path.parent / m).resolve() for m in re.findall(r"\]\(([^)#:]+\.md)\)", text)}
    named = {
        (REPO / m).resolve()
        for m in re.findall(r"`((?:unlearn_core|pipelines|tests|bench|docs)/[\w/.-]+\.(?:py|md|yaml))`", text)
    }
    missing = sorted(str(p.relative_to(REPO)) for p in links | named if not p.exists())
    assert missing == []
